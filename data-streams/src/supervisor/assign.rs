//! Handing streams out to workers, taking them back, and telling the workers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::now_ms;
use futures::StreamExt;
use protocol::{Call, CallError, Reply, RunningStream, StreamConfig};
use uuid::Uuid;

use super::placement::{self, PendingStream, WorkerSlot};
use super::sessions::Session;
use super::Supervisor;
use crate::db::DbError;
use crate::stream::{StreamRow, StreamSpec, StreamState};

/// How many `worker:start`/`worker:stop` calls are in flight at once during a sweep.
const CALL_CONCURRENCY: usize = 256;
/// How many pending streams one sweep assigns before it looks again.
const ASSIGN_BATCH: i64 = 10_000;
/// Most streams in one `worker:start_many`, and most (estimated) config bytes: a call stays
/// well under the 1 MiB frame limit whatever the sources say.
const START_MANY_STREAMS: usize = 1_000;
const START_MANY_BYTES: usize = 512 * 1024;
/// `worker:start_many` calls in flight to one worker at once.
const START_MANY_CONCURRENCY: usize = 4;
/// Batches in a row that place nothing (streams whose adapter no worker runs, budgeted keys
/// waiting for room) before a sweep stops reading: a sweep's work stays bounded.
const FRUITLESS_BATCHES: usize = 5;

/// A stream as placement sees it. A key with a call budget (a `rate_limit` other than all
/// zeros) is held by one worker at a time.
pub(super) fn pending_of(spec: &StreamSpec) -> PendingStream<'_> {
    PendingStream {
        adapter: spec.adapter(),
        key: spec.secret_key().fingerprint(),
        budgeted: spec.rate_limit() != protocol::RateLimit::UNLIMITED,
    }
}

/// What placement left: the budgeted keys whose home was full (by fingerprint), and each
/// worker's streams as the sweep counted them, for [`Supervisor::move_keys`].
struct Waiting {
    keys: HashMap<u64, WaitingKey>,
    counts: HashMap<String, i64>,
}

/// A budgeted key with streams waiting because its home is full.
struct WaitingKey {
    /// The key itself, to find its streams at home.
    secret_key: String,
    home: String,
    /// Adapters of the waiting streams (the key's streams at home add theirs).
    adapters: HashSet<String>,
    /// Streams waiting.
    streams: i64,
}

/// The connected workers as placement sees them, each with its assigned streams in `counts`.
pub(super) fn worker_slots<'a>(
    sessions: &'a [(String, Session)],
    counts: &HashMap<String, i64>,
) -> Vec<WorkerSlot<'a>> {
    sessions
        .iter()
        .map(|(id, s)| WorkerSlot {
            id,
            adapters: &s.adapters,
            capacity: s.capacity,
            load: counts.get(id).copied().unwrap_or(0),
        })
        .collect()
}

/// One assignment sweep: what it placed, where its time went, and its calls in flight.
#[derive(Default)]
struct Sweep {
    placed: usize,
    batches: usize,
    keys: Duration,
    read: Duration,
    write: Duration,
    send_wait: Duration,
    sending: Option<tokio::task::JoinHandle<()>>,
}

/// One `worker:start_many` call: its streams (id, generation) and how it went.
type StartManyOutcome = (Vec<(Uuid, u64)>, Result<Reply, CallError>);

/// A config's size on the wire, roughly (its variable parts and a margin for the rest).
fn config_bytes(config: &StreamConfig) -> usize {
    let params: usize = config
        .params
        .iter()
        .map(|(k, v)| k.len() + v.len() + 16)
        .sum();
    256 + config.adapter.len()
        + config.endpoint.len()
        + config.secret_key.expose().len()
        + config.bucket_name.len()
        + config.source.len()
        + params
}

/// Splits configs into `worker:start_many` batches by count and size.
fn start_batches(configs: Vec<StreamConfig>) -> Vec<Vec<StreamConfig>> {
    let mut batches: Vec<Vec<StreamConfig>> = Vec::new();
    let mut bytes = 0;
    for config in configs {
        let size = config_bytes(&config);
        match batches.last_mut() {
            Some(batch) if batch.len() < START_MANY_STREAMS && bytes + size <= START_MANY_BYTES => {
                bytes += size;
                batch.push(config);
            }
            _ => {
                bytes = size;
                batches.push(vec![config]);
            }
        }
    }
    batches
}

impl Supervisor {
    /// Assign running streams that have no worker to connected workers (see [`placement`]).
    pub async fn assign_pending(&self) {
        self.as_leader(self.assign_pending_now()).await;
    }

    /// [`Supervisor::assign_pending`] as the leader.
    async fn assign_pending_now(&self) {
        let _guard = self.inner.assign_lock.lock().await;
        let mut sweep = Sweep::default();
        let started = Instant::now();
        let outcome = self.assign_pending_locked(&mut sweep).await;
        // The last batch's calls are answered before the lock goes: a worker that reconnects
        // meanwhile is brought in line with what it was told.
        if let Some(sending) = sweep.sending.take() {
            let waited = Instant::now();
            let _ = sending.await;
            sweep.send_wait += waited.elapsed();
        }
        if let Err(err) = outcome {
            tracing::error!("assignment sweep failed: {err}");
        }
        if sweep.placed > 0 {
            // Where a sweep's time goes, for the million-stream benchmark's profile.
            tracing::info!(
                placed = sweep.placed,
                batches = sweep.batches,
                total_ms = started.elapsed().as_millis() as u64,
                keys_ms = sweep.keys.as_millis() as u64,
                read_ms = sweep.read.as_millis() as u64,
                write_ms = sweep.write.as_millis() as u64,
                send_wait_ms = sweep.send_wait.as_millis() as u64,
                "assignment sweep"
            );
        }
    }

    async fn assign_pending_locked(&self, sweep: &mut Sweep) -> Result<(), DbError> {
        let waiting = self.place_pending(sweep).await?;
        if waiting.keys.is_empty() {
            return Ok(());
        }
        // A key's starts at home are answered before its streams are stopped there.
        if let Some(sending) = sweep.sending.take() {
            let waited = Instant::now();
            let _ = sending.await;
            sweep.send_wait += waited.elapsed();
        }
        if self.move_keys(waiting).await? == 0 {
            return Ok(());
        }
        // Keys moved whole: their waiting streams follow them to their new home.
        self.place_pending(sweep).await?;
        Ok(())
    }

    /// Places pending streams batch by batch; returns the budgeted keys left waiting because
    /// their home is full, with the workers' loads as placed (a start refused meanwhile still
    /// counts: a move may then wait for the next sweep, never overfill a worker).
    async fn place_pending(&self, sweep: &mut Sweep) -> Result<Waiting, DbError> {
        let db = &self.inner.db;
        // Read once per sweep and kept up to date in memory as streams are placed: a sweep over
        // a million streams does not count every assignment again for each batch.
        let mut counts: Option<HashMap<String, i64>> = None;
        let mut homes: HashMap<u64, String> = HashMap::new();
        let mut waiting: HashMap<u64, WaitingKey> = HashMap::new();
        let mut after: Option<(i64, Uuid)> = None;
        let mut fruitless = 0;
        loop {
            let sessions = self.inner.sessions.snapshot();
            if sessions.is_empty() {
                break;
            }
            let read = Instant::now();
            let pending = db.assignable_streams_after(after, ASSIGN_BATCH).await?;
            sweep.read += read.elapsed();
            let Some(last) = pending.last() else {
                break;
            };
            after = Some((last.created_at, last.id));
            let counts = match &mut counts {
                Some(counts) => counts,
                None => {
                    let keys = Instant::now();
                    let (read, read_homes) = self.placement_state(&sessions).await?;
                    homes = read_homes;
                    sweep.keys += keys.elapsed();
                    counts.insert(read)
                }
            };
            let mut slots = worker_slots(&sessions, counts);
            let wanted: Vec<PendingStream<'_>> =
                pending.iter().map(|row| pending_of(&row.spec)).collect();
            let decisions = placement::place(&wanted, &mut slots, &mut homes);
            for ((row, stream), slot) in pending.iter().zip(&wanted).zip(&decisions) {
                let home = homes.get(&stream.key);
                if let (None, true, Some(home)) = (slot, stream.budgeted, home) {
                    let key = waiting.entry(stream.key).or_insert_with(|| WaitingKey {
                        secret_key: row.spec.secret_key().expose().to_owned(),
                        home: home.clone(),
                        adapters: HashSet::new(),
                        streams: 0,
                    });
                    key.adapters.insert(stream.adapter.to_owned());
                    key.streams += 1;
                }
            }
            let room = slots.iter().any(|w| w.load < i64::from(w.capacity));
            let chosen: Vec<(Uuid, &str)> = pending
                .iter()
                .zip(&decisions)
                .filter_map(|(row, slot)| slot.map(|slot| (row.id, sessions[slot].0.as_str())))
                .collect();
            // One statement per batch; streams stopped or deleted since they were read are
            // left out of what it returns.
            let write = Instant::now();
            let assigned: HashMap<Uuid, i64> = db.assign_many(&chosen).await?.into_iter().collect();
            sweep.write += write.elapsed();
            let mut per_worker: HashMap<&str, Vec<StreamConfig>> = HashMap::new();
            let worker_of: HashMap<Uuid, &str> = chosen.iter().copied().collect();
            for row in &pending {
                let (Some(&generation), Some(&worker_id)) =
                    (assigned.get(&row.id), worker_of.get(&row.id))
                else {
                    continue;
                };
                let mut row = row.clone();
                row.generation = generation;
                row.worker_id = Some(worker_id.to_owned());
                *counts.entry(worker_id.to_owned()).or_insert(0) += 1;
                per_worker
                    .entry(worker_id)
                    .or_default()
                    .push(StreamConfig::from(&row));
                self.announce(&row);
            }
            let placed = assigned.len();
            sweep.placed += placed;
            sweep.batches += 1;
            let sends: Vec<(String, Session, Vec<StreamConfig>)> = per_worker
                .into_iter()
                .filter_map(|(worker_id, configs)| {
                    let session = sessions.iter().find(|(id, _)| id == worker_id)?.1.clone();
                    tracing::debug!(worker_id, streams = configs.len(), "assigning streams");
                    Some((worker_id.to_owned(), session, configs))
                })
                .collect();
            // One batch's calls in flight while the next batch is read and written: wait for
            // the last one's before sending this one's.
            if let Some(sending) = sweep.sending.take() {
                let waited = Instant::now();
                let _ = sending.await;
                sweep.send_wait += waited.elapsed();
            }
            sweep.sending = Some(self.start_in_background(sends));
            // The last batch, no room left anywhere, or batch after batch of streams nobody
            // can take (no worker runs their adapter): stop looking.
            fruitless = if placed == 0 { fruitless + 1 } else { 0 };
            if (pending.len() as i64) < ASSIGN_BATCH || !room || fruitless >= FRUITLESS_BATCHES {
                break;
            }
        }
        Ok(Waiting {
            keys: waiting,
            counts: counts.unwrap_or_default(),
        })
    }

    /// Moves each waiting budgeted key whole (its streams at home and those waiting) to a
    /// worker with room for all of it, so the key stays on one worker and within one budget:
    /// stops at home first, then the assignment and the starts. A key no worker has room for
    /// waits at home. Returns the streams moved.
    async fn move_keys(&self, waiting: Waiting) -> Result<usize, DbError> {
        let db = &self.inner.db;
        let sessions = self.inner.sessions.snapshot();
        let mut slots = worker_slots(&sessions, &waiting.counts);
        let mut moved_streams = 0;
        for (fingerprint, key) in waiting.keys {
            let at_home = db.key_streams_on(&key.home, &key.secret_key).await?;
            let mut adapters: HashSet<&str> = key.adapters.iter().map(String::as_str).collect();
            adapters.extend(at_home.iter().map(|row| row.spec.adapter()));
            let adapters: Vec<&str> = adapters.into_iter().collect();
            let whole = at_home.len() as i64 + key.streams;
            let Some(target) = placement::move_target(&slots, &key.home, &adapters, whole) else {
                tracing::debug!(
                    key = format!("{fingerprint:016x}"),
                    home = key.home,
                    waiting = key.streams,
                    "a budgeted key waits: its worker is full and no other has room for all of it"
                );
                metrics::counter!("ds_budgeted_key_waits_total").increment(1);
                continue;
            };
            slots[target].load += whole;
            let target_id = sessions[target].0.clone();
            if let Some(home) = self.inner.sessions.get(&key.home) {
                let stops = at_home
                    .iter()
                    .map(|row| Call::Stop {
                        stream_id: row.id,
                        generation: row.generation as u64,
                    })
                    .collect();
                self.call_many(&key.home, &home, stops).await;
            }
            let from: Vec<(Uuid, i64)> = at_home.iter().map(|r| (r.id, r.generation)).collect();
            let moved: HashMap<Uuid, i64> = db
                .move_streams(&from, &key.home, &target_id)
                .await?
                .into_iter()
                .collect();
            let mut configs = Vec::with_capacity(moved.len());
            for row in &at_home {
                let Some(&generation) = moved.get(&row.id) else {
                    continue;
                };
                let mut row = row.clone();
                row.generation = generation;
                row.worker_id = Some(target_id.clone());
                configs.push(StreamConfig::from(&row));
                self.announce(&row);
            }
            tracing::info!(
                key = format!("{fingerprint:016x}"),
                from = key.home,
                to = target_id,
                streams = configs.len(),
                waiting = key.streams,
                "a budgeted key moved whole: its worker was full"
            );
            moved_streams += configs.len();
            let session = sessions[target].1.clone();
            self.start_many(&target_id, &session, configs).await;
        }
        Ok(moved_streams)
    }

    /// What placement starts from: each worker's assigned streams, and each key's home among
    /// the connected `sessions` (read once per sweep or bulk create, then kept up to date in
    /// memory as streams are placed).
    pub(super) async fn placement_state(
        &self,
        sessions: &[(String, Session)],
    ) -> Result<(HashMap<String, i64>, HashMap<u64, String>), DbError> {
        let db = &self.inner.db;
        let connected: HashSet<&str> = sessions.iter().map(|(id, _)| id.as_str()).collect();
        let homes = placement::key_homes(
            db.assigned_keys()
                .await?
                .into_iter()
                .map(|(worker, key, count)| (worker, key.fingerprint(), count)),
            &connected,
        );
        Ok((db.assigned_counts().await?, homes))
    }

    /// Starts configs on their workers in the background (a task per call): the caller does
    /// not wait for the workers' replies. A failed or refused start is unassigned, as always.
    pub(super) fn start_in_background(
        &self,
        sends: Vec<(String, Session, Vec<StreamConfig>)>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        crate::cluster::spawn_in_term(async move {
            let calls = sends.into_iter().map(|(worker_id, session, configs)| {
                let this = this.clone();
                async move { this.start_many(&worker_id, &session, configs).await }
            });
            futures::future::join_all(calls).await;
        })
    }

    /// Take every stream away from a worker that is gone, and hand them to the others.
    pub(super) async fn release_worker(&self, worker_id: &str) {
        self.as_leader(self.release_worker_now(worker_id)).await;
    }

    async fn release_worker_now(&self, worker_id: &str) {
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
            // What it stored but had not reported went with it: the reconciler lists these
            // streams next pass.
            self.inner.reconcile.mark(released.iter().copied());
            self.inner.reconcile.soon();
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
    /// (re)start what it should run, then assign pending streams. Its streams are read in
    /// chunks, and each chunk's `worker:start_many` calls go out while the next is read.
    pub(super) async fn bring_in_line(&self, worker_id: &str, running: Vec<RunningStream>) {
        let Some(session) = self.inner.sessions.get(worker_id) else {
            return;
        };
        let running_now: HashSet<(Uuid, u64)> = running
            .iter()
            .map(|r| (r.stream_id, r.generation))
            .collect();
        let runs: HashSet<Uuid> = running.iter().map(|r| r.stream_id).collect();
        let mut own: HashMap<Uuid, i64> = HashMap::new();
        let mut lost: Vec<Uuid> = Vec::new();
        let mut started = 0usize;
        {
            let _guard = self.inner.assign_lock.lock().await;
            let (sends, mut to_send) =
                tokio::sync::mpsc::channel::<Vec<StreamConfig>>(START_MANY_CONCURRENCY);
            let sender = {
                let this = self.clone();
                let worker_id = worker_id.to_owned();
                let session = session.clone();
                crate::cluster::spawn_in_term(async move {
                    let batches = futures::stream::poll_fn(move |cx| to_send.poll_recv(cx));
                    batches
                        .for_each_concurrent(START_MANY_CONCURRENCY, |configs| {
                            let (this, worker_id, session) = (&this, &worker_id, &session);
                            async move { this.start_many(worker_id, session, configs).await }
                        })
                        .await;
                })
            };
            let mut chunks = self
                .inner
                .db
                .streams_of_worker_chunks(worker_id, START_MANY_STREAMS);
            let mut failed = None;
            while let Some(chunk) = chunks.recv().await {
                let rows = match chunk {
                    Ok(rows) => rows,
                    Err(err) => {
                        failed = Some(err);
                        break;
                    }
                };
                let mut configs = Vec::new();
                for row in &rows {
                    own.insert(row.id, row.generation);
                    // A stream it held and no longer runs at all: its process restarted, and
                    // what that process stored but had not reported is gone with its outbox.
                    if !runs.contains(&row.id) {
                        lost.push(row.id);
                    }
                    if !running_now.contains(&(row.id, row.generation as u64)) {
                        configs.push(StreamConfig::from(row));
                    }
                }
                started += configs.len();
                if !configs.is_empty() && sends.send(configs).await.is_err() {
                    break;
                }
            }
            drop(sends);
            let _ = sender.await;
            if let Some(err) = failed {
                // What was started stays started; the rest waits for the worker's next
                // connection (or its release).
                tracing::error!(worker_id, "cannot read the worker's streams: {err}");
                return;
            }
        }
        // The reconciler lists them in its next pass (a process that lived on replays its
        // outbox instead).
        self.inner.reconcile.mark(lost);
        let stale: Vec<Call> = running
            .iter()
            .filter(|r| own.get(&r.stream_id) != Some(&(r.generation as i64)))
            .map(|r| Call::Stop {
                stream_id: r.stream_id,
                generation: r.generation,
            })
            .collect();
        if !stale.is_empty() || started > 0 {
            tracing::info!(
                worker_id,
                stop = stale.len(),
                start = started,
                "brought the worker in line with its assignment"
            );
        }
        self.call_many(worker_id, &session, stale).await;
        self.assign_pending().await;
    }

    /// Stop a stream wherever it was assigned and clear the assignment.
    /// A follower leaves this to the leader, which finds the stream stopped but assigned.
    pub(super) async fn stop_on_worker(&self, row: &StreamRow) {
        self.as_leader(self.stop_on_worker_now(row)).await;
    }

    async fn stop_on_worker_now(&self, row: &StreamRow) {
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
        self.as_leader(self.reconfigure_now(row)).await;
    }

    async fn reconfigure_now(&self, row: &StreamRow) {
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

    /// Start streams on one worker with `worker:start_many` calls (a few in flight); the
    /// streams it refused, and every stream of a call that failed, are unassigned (if still
    /// that worker's, under that generation) so the next sweep can place them elsewhere.
    async fn start_many(&self, worker_id: &str, session: &Session, configs: Vec<StreamConfig>) {
        if configs.is_empty() {
            return;
        }
        let results: Vec<StartManyOutcome> = futures::stream::iter(start_batches(configs))
            .map(|batch| {
                let link = session.link.clone();
                let timeout = self.inner.call_timeout;
                async move {
                    let ids = batch.iter().map(|c| (c.stream_id, c.generation)).collect();
                    (ids, link.call(Call::StartMany(batch), timeout).await)
                }
            })
            .buffer_unordered(START_MANY_CONCURRENCY)
            .collect()
            .await;
        let mut undo: Vec<(Uuid, &str, i64)> = Vec::new();
        for (ids, reply) in results {
            match reply {
                Ok(reply) if reply.success => {}
                Ok(reply) if !reply.refused.is_empty() => {
                    for refused in reply.refused {
                        tracing::warn!(worker_id, stream_id = %refused.stream_id, "start refused: {}", refused.message);
                        undo.push((refused.stream_id, worker_id, refused.generation as i64));
                    }
                }
                Ok(reply) => {
                    tracing::warn!(
                        worker_id,
                        streams = ids.len(),
                        "worker:start_many failed: {}",
                        reply.message
                    );
                    undo.extend(
                        ids.iter()
                            .map(|&(id, generation)| (id, worker_id, generation as i64)),
                    );
                }
                Err(err) => {
                    tracing::warn!(
                        worker_id,
                        streams = ids.len(),
                        "worker:start_many failed: {err}"
                    );
                    undo.extend(
                        ids.iter()
                            .map(|&(id, generation)| (id, worker_id, generation as i64)),
                    );
                }
            }
        }
        if let Err(err) = self.inner.db.unassign_many(&undo).await {
            tracing::warn!(
                worker_id,
                streams = undo.len(),
                "could not unassign refused streams: {err}"
            );
        }
    }

    /// Send calls to one worker, bounded concurrency; a failed or refused start is unassigned
    /// (if it is still that worker's, under that generation) so the next sweep can place it
    /// elsewhere.
    pub(super) async fn call_many(&self, worker_id: &str, session: &Session, calls: Vec<Call>) {
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
