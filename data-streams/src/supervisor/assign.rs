//! Handing streams out to workers, taking them back, and telling the workers.

use std::collections::{HashMap, HashSet};

use common::now_ms;
use futures::StreamExt;
use protocol::{Call, CallError, Reply, RunningStream, StreamConfig};
use uuid::Uuid;

use super::placement::{self, PendingStream, WorkerSlot};
use super::sessions::Session;
use super::Supervisor;
use crate::db::DbError;
use crate::stream::{StreamRow, StreamState};

/// How many `worker:start`/`worker:stop` calls are in flight at once during a sweep.
const CALL_CONCURRENCY: usize = 256;
/// How many pending streams one sweep assigns before it looks again.
const ASSIGN_BATCH: i64 = 5_000;

impl Supervisor {
    /// Assign running streams that have no worker to connected workers (see [`placement`]).
    pub async fn assign_pending(&self) {
        let _guard = self.inner.assign_lock.lock().await;
        if let Err(err) = self.assign_pending_locked().await {
            tracing::error!("assignment sweep failed: {err}");
        }
    }

    async fn assign_pending_locked(&self) -> Result<(), DbError> {
        let db = &self.inner.db;
        loop {
            let sessions = self.inner.sessions.snapshot();
            if sessions.is_empty() {
                return Ok(());
            }
            let pending = db.assignable_streams(ASSIGN_BATCH).await?;
            if pending.is_empty() {
                return Ok(());
            }
            let counts = db.assigned_counts().await?;
            let connected: HashSet<&str> = sessions.iter().map(|(id, _)| id.as_str()).collect();
            let mut homes = placement::key_homes(
                db.assigned_keys()
                    .await?
                    .into_iter()
                    .map(|(worker, key, count)| (worker, key.fingerprint(), count)),
                &connected,
            );
            let mut slots: Vec<WorkerSlot<'_>> = sessions
                .iter()
                .map(|(id, s)| WorkerSlot {
                    id,
                    adapters: &s.adapters,
                    capacity: s.capacity,
                    load: counts.get(id).copied().unwrap_or(0),
                })
                .collect();
            let wanted: Vec<PendingStream<'_>> = pending
                .iter()
                .map(|row| PendingStream {
                    adapter: row.spec.adapter(),
                    key: row.spec.secret_key().fingerprint(),
                })
                .collect();
            let decisions = placement::place(&wanted, &mut slots, &mut homes);
            let mut per_worker: HashMap<&str, Vec<Call>> = HashMap::new();
            let mut placed = 0usize;
            for (stream, decision) in pending.iter().zip(decisions) {
                let Some(slot) = decision else { continue };
                let worker_id = sessions[slot].0.as_str();
                let Some(generation) = db.assign(stream.id, worker_id).await? else {
                    // Stopped or deleted since it was read.
                    continue;
                };
                let mut row = stream.clone();
                row.generation = generation;
                row.worker_id = Some(worker_id.to_owned());
                per_worker
                    .entry(worker_id)
                    .or_default()
                    .push(Call::Start(StreamConfig::from(&row)));
                self.announce(&row);
                placed += 1;
            }
            for (worker_id, calls) in per_worker {
                if let Some((_, session)) = sessions.iter().find(|(id, _)| id == worker_id) {
                    tracing::info!(worker_id, streams = calls.len(), "assigning streams");
                    self.call_many(worker_id, session, calls).await;
                }
            }
            // Nothing placeable (no capacity, no adapter) or the last batch: stop looking.
            if placed == 0 || (pending.len() as i64) < ASSIGN_BATCH {
                return Ok(());
            }
        }
    }

    /// Take every stream away from a worker that is gone, and hand them to the others.
    pub(super) async fn release_worker(&self, worker_id: &str) {
        let released = {
            let _guard = self.inner.assign_lock.lock().await;
            // It may have come back while we waited for the lock.
            if self.inner.sessions.get(worker_id).is_some() {
                return;
            }
            match self.inner.db.release_worker(worker_id).await {
                Ok(ids) => ids,
                Err(err) => {
                    tracing::error!(worker_id, "could not release the worker's streams: {err}");
                    return;
                }
            }
        };
        if !released.is_empty() {
            tracing::warn!(
                worker_id,
                streams = released.len(),
                "worker silent past the heartbeat timeout: its streams move to other workers"
            );
            metrics::counter!("ds_streams_released_total").increment(released.len() as u64);
        }
        self.assign_pending().await;
    }

    /// A worker said what it runs: stop what is no longer its own (stale generations),
    /// (re)start what it should run, then assign pending streams.
    pub(super) async fn bring_in_line(&self, worker_id: &str, running: Vec<RunningStream>) {
        let Some(session) = self.inner.sessions.get(worker_id) else {
            return;
        };
        let assigned = {
            let _guard = self.inner.assign_lock.lock().await;
            match self.inner.db.streams_of_worker(worker_id).await {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::error!(worker_id, "cannot read the worker's streams: {err}");
                    return;
                }
            }
        };
        let own: HashMap<Uuid, i64> = assigned.iter().map(|s| (s.id, s.generation)).collect();
        let stale = running
            .iter()
            .filter(|r| own.get(&r.stream_id) != Some(&(r.generation as i64)))
            .map(|r| Call::Stop {
                stream_id: r.stream_id,
                generation: r.generation,
            });
        let running_now: HashSet<(Uuid, u64)> = running
            .iter()
            .map(|r| (r.stream_id, r.generation))
            .collect();
        let to_start = assigned
            .iter()
            .filter(|s| !running_now.contains(&(s.id, s.generation as u64)))
            .map(|s| Call::Start(StreamConfig::from(s)));
        let calls: Vec<Call> = stale.chain(to_start).collect();
        if !calls.is_empty() {
            let stops = calls
                .iter()
                .filter(|c| matches!(c, Call::Stop { .. }))
                .count();
            tracing::info!(
                worker_id,
                stop = stops,
                start = calls.len() - stops,
                "bringing the worker in line with its assignment"
            );
        }
        self.call_many(worker_id, &session, calls).await;
        self.assign_pending().await;
    }

    /// Stop a stream wherever it was assigned and clear the assignment.
    pub(super) async fn stop_on_worker(&self, row: &StreamRow) {
        let Some(worker_id) = row.worker_id.as_deref() else {
            return;
        };
        if let Some(session) = self.inner.sessions.get(worker_id) {
            let call = Call::Stop {
                stream_id: row.id,
                generation: row.generation as u64,
            };
            self.call_many(worker_id, &session, vec![call]).await;
        }
        if let Err(err) = self
            .inner
            .db
            .unassign(row.id, worker_id, row.generation)
            .await
        {
            tracing::warn!(stream_id = %row.id, worker_id, "could not clear the assignment: {err}");
        }
    }

    /// A running stream's config changed (or it was started again): its connected worker gets
    /// the config, applied at the end of the current interval.
    pub(super) async fn reconfigure(&self, row: &StreamRow) {
        if row.state != StreamState::Running {
            return;
        }
        let Some(worker_id) = row.worker_id.as_deref() else {
            return;
        };
        if let Some(session) = self.inner.sessions.get(worker_id) {
            let call = Call::Start(StreamConfig::from(row));
            self.call_many(worker_id, &session, vec![call]).await;
        }
    }

    /// Send calls to one worker, bounded concurrency; a failed or refused start is unassigned
    /// (if it is still that worker's, under that generation) so the next sweep can place it
    /// elsewhere.
    async fn call_many(&self, worker_id: &str, session: &Session, calls: Vec<Call>) {
        let results: Vec<(Call, Result<Reply, CallError>)> = futures::stream::iter(calls)
            .map(|call| {
                let link = session.link.clone();
                let timeout = self.inner.call_timeout;
                async move {
                    let reply = link.call(call.clone(), timeout).await;
                    (call, reply)
                }
            })
            .buffer_unordered(CALL_CONCURRENCY)
            .collect()
            .await;
        for (call, reply) in results {
            let why = match reply {
                Ok(r) if r.success => continue,
                Ok(r) => r.message,
                Err(e) => e.to_string(),
            };
            tracing::warn!(worker_id, call = call.name(), "call failed: {why}");
            if let Call::Start(cfg) = call {
                let cleared = self
                    .inner
                    .db
                    .unassign(cfg.stream_id, worker_id, cfg.generation as i64)
                    .await;
                if let Err(err) = cleared {
                    tracing::warn!(stream_id = %cfg.stream_id, "could not unassign: {err}");
                }
            }
        }
    }

    /// A worker stopped a stream itself (bad or expired key): it waits for a person. Only the
    /// worker the stream is assigned to speaks for it: a failure from any other (a stale claim
    /// that was never told, or an old event replayed after a person fixed the key and the
    /// stream moved on) is history, not a reason to stop a stream that runs elsewhere.
    pub(super) async fn stream_failed(&self, id: Uuid, worker_id: &str, reason: &str) {
        match self.inner.db.get_stream(id).await {
            Ok(Some(row)) if row.worker_id.as_deref() == Some(worker_id) => {}
            Ok(Some(row)) => {
                tracing::info!(
                    stream_id = %id,
                    worker_id,
                    assigned_to = ?row.worker_id,
                    "ignoring a stream-stopping failure from a worker the stream is not assigned to: {reason}"
                );
                return;
            }
            Ok(None) => return,
            Err(err) => {
                tracing::error!(stream_id = %id, "could not read the stream to mark it failed: {err}");
                return;
            }
        }
        match self
            .inner
            .db
            .set_state(id, StreamState::Failed, Some(reason), false, now_ms())
            .await
        {
            Ok(row) => {
                tracing::warn!(stream_id = %id, worker_id, "stream failed and stopped: {reason}");
                if let Some(row) = row {
                    self.announce(&row);
                }
            }
            Err(err) => tracing::error!(stream_id = %id, "could not mark the stream failed: {err}"),
        }
    }
}
