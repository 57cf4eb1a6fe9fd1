//! The bulk commands of the API: many streams created in one transaction, and a selection of
//! streams (ids or a filter) started or stopped with set-based writes. Assignment of what they
//! make runnable happens in the background ([`Supervisor::assign_soon`]), so a request for
//! 100,000 streams answers when they are stored, not when every worker has them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use common::now_ms;
use protocol::Call;
use uuid::Uuid;

use protocol::StreamConfig;

use super::placement::{self, PendingStream};
use super::{Supervisor, SupervisorError};
use crate::db::{BulkInsert, Changed, NewStream, Selection};
use crate::stream::{StreamRow, StreamSpec, StreamState};

/// One stream of a bulk create: its id (the client's, or one derived from the request's
/// `Idempotency-Key`, or a new UUIDv7), its validated spec, and whether it starts.
#[derive(Debug, Clone)]
pub struct BulkItem {
    pub id: Uuid,
    pub spec: StreamSpec,
    pub start: bool,
}

/// What a bulk create did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkCreated {
    /// Stored: how many are new and how many were there already (a retried request).
    Done { created: usize, existing: usize },
    /// Nothing stored: these positions name ids that exist with another spec.
    Conflicts(Vec<usize>),
}

impl Supervisor {
    /// Stores every item in one transaction, all or nothing. The running ones are placed on
    /// the connected workers as they are stored (generation 1, in the same rows: no assignment
    /// write of their own), and their `worker:start_many` calls go out in the background; what
    /// no worker could take is left to an assignment sweep.
    pub async fn create_many(&self, items: &[BulkItem]) -> Result<BulkCreated, SupervisorError> {
        let placeable = |item: &BulkItem| item.start && !item.spec.is_push();
        // Placed under the assignment lock: no sweep hands out the same room meanwhile.
        let guard = if items.iter().any(placeable) {
            Some(self.inner.assign_lock.lock().await)
        } else {
            None
        };
        // Only the leader places (under its term); a follower stores the streams pending.
        let leading = self.leading();
        let sessions = if leading.is_some() {
            self.inner.sessions.snapshot()
        } else {
            Vec::new()
        };
        let mut placed: Vec<Option<usize>> = vec![None; items.len()];
        if guard.is_some() && !sessions.is_empty() {
            let (counts, mut homes) = self.placement_state(&sessions).await?;
            let mut slots = super::assign::worker_slots(&sessions, &counts);
            let at: Vec<usize> = (0..items.len()).filter(|&i| placeable(&items[i])).collect();
            let wanted: Vec<PendingStream<'_>> = at
                .iter()
                .map(|&i| super::assign::pending_of(&items[i].spec))
                .collect();
            for (i, slot) in at
                .into_iter()
                .zip(placement::place(&wanted, &mut slots, &mut homes))
            {
                placed[i] = slot;
            }
        }
        let streams: Vec<NewStream<'_>> = items
            .iter()
            .zip(&placed)
            .map(|(item, slot)| NewStream {
                id: item.id,
                spec: &item.spec,
                state: if item.start {
                    StreamState::Running
                } else {
                    StreamState::Stopped
                },
                worker: slot.map(|slot| sessions[slot].0.as_str()),
            })
            .collect();
        let now = now_ms();
        // Assignments are the leader's writes: fenced by its term.
        let insert = self.inner.db.insert_streams(&streams, now);
        let inserted = match (placed.iter().any(Option::is_some), leading.flatten()) {
            (true, Some(term)) => crate::cluster::in_term(term, insert).await?,
            _ => insert.await?,
        };
        match inserted {
            BulkInsert::Conflicts(at) => Ok(BulkCreated::Conflicts(at)),
            BulkInsert::Done { created, existing } => {
                let mut per_worker: HashMap<usize, Vec<StreamConfig>> = HashMap::new();
                let mut unplaced = false;
                let announce = !self.inner.live.is_idle();
                for (item, slot) in items.iter().zip(&placed) {
                    if !item.start || !created.contains(&item.id) {
                        continue;
                    }
                    let Some(slot) = *slot else {
                        unplaced |= placeable(item);
                        continue;
                    };
                    per_worker
                        .entry(slot)
                        .or_default()
                        .push(item.spec.config(item.id, 1, None));
                    if announce {
                        self.announce(&StreamRow {
                            id: item.id,
                            spec: item.spec.clone(),
                            state: StreamState::Running,
                            worker_id: Some(sessions[slot].0.clone()),
                            generation: 1,
                            last_result_at: None,
                            last_error: None,
                            last_error_at: None,
                            created_at: now,
                            updated_at: now,
                            window_end_ms: None,
                        });
                    }
                }
                let placed_count: usize = per_worker.values().map(Vec::len).sum();
                tracing::info!(
                    created = created.len(),
                    existing = existing.len(),
                    placed = placed_count,
                    "streams created in bulk"
                );
                if placed_count > 0 {
                    self.start_in_background(
                        per_worker
                            .into_iter()
                            .map(|(slot, configs)| {
                                let (worker_id, session) = sessions[slot].clone();
                                (worker_id, session, configs)
                            })
                            .collect(),
                    );
                }
                if unplaced {
                    self.assign_soon();
                    self.tell_leader(None).await;
                }
                self.analyze_soon(created.len());
                Ok(BulkCreated::Done {
                    created: created.len(),
                    existing: existing.len(),
                })
            }
        }
    }

    /// Desired state running for the selection (past errors cleared); assignment follows in
    /// the background. Returns how many streams changed.
    pub async fn start_selection(&self, selection: &Selection) -> Result<usize, SupervisorError> {
        let connected: Vec<String> = self.connected_workers().into_iter().collect();
        let changed = self
            .inner
            .db
            .set_state_many(selection, StreamState::Running, &connected, now_ms())
            .await?;
        tracing::info!(streams = changed.len(), "streams started in bulk");
        self.analyze_soon(changed.len());
        if !changed.is_empty() {
            self.assign_soon();
            self.tell_leader(None).await;
        }
        Ok(changed.len())
    }

    /// Desired state stopped for the selection; each worker gets its `worker:stop` calls and
    /// the assignments are cleared. Returns how many streams changed.
    pub async fn stop_selection(&self, selection: &Selection) -> Result<usize, SupervisorError> {
        let connected: Vec<String> = self.connected_workers().into_iter().collect();
        let changed = self
            .inner
            .db
            .set_state_many(selection, StreamState::Stopped, &connected, now_ms())
            .await?;
        tracing::info!(streams = changed.len(), "streams stopped in bulk");
        self.analyze_soon(changed.len());
        self.stop_assigned(&changed).await;
        if !changed.is_empty() {
            self.tell_leader(None).await;
        }
        Ok(changed.len())
    }

    /// Tells each connected worker to stop its streams among `changed`, then clears their
    /// assignments (where still theirs and still stopped).
    pub(super) async fn stop_assigned(&self, changed: &[Changed]) {
        self.as_leader(self.stop_assigned_now(changed)).await;
    }

    async fn stop_assigned_now(&self, changed: &[Changed]) {
        let mut per_worker: HashMap<&str, Vec<&Changed>> = HashMap::new();
        for c in changed {
            if let Some(worker_id) = c.worker_id.as_deref() {
                per_worker.entry(worker_id).or_default().push(c);
            }
        }
        let stops = per_worker.iter().map(|(worker_id, streams)| async move {
            if let Some(session) = self.inner.sessions.get(worker_id) {
                let calls = streams
                    .iter()
                    .map(|c| Call::Stop {
                        stream_id: c.id,
                        generation: u64::try_from(c.generation).unwrap_or(0),
                    })
                    .collect();
                self.call_many(worker_id, &session, calls).await;
            }
            let ids: Vec<Uuid> = streams.iter().map(|c| c.id).collect();
            if let Err(err) = self.inner.db.clear_stopped(worker_id, &ids).await {
                tracing::warn!(
                    worker_id,
                    streams = ids.len(),
                    "could not clear stopped streams' assignments: {err}"
                );
            }
        });
        futures::future::join_all(stops).await;
    }

    /// After a bulk change of at least this many streams, the planner's statistics are
    /// refreshed (PostgreSQL).
    const ANALYZE_AFTER: usize = 10_000;

    /// Refreshes the database's statistics of the streams in the background after a bulk change
    /// of `changed` streams (when that is many); requests made while one is queued share it.
    pub(crate) fn analyze_soon(&self, changed: usize) {
        if changed < Self::ANALYZE_AFTER || self.inner.analyze_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let supervisor = self.clone();
        crate::cluster::spawn_in_term(async move {
            supervisor
                .inner
                .analyze_queued
                .store(false, Ordering::Release);
            if let Err(err) = supervisor.inner.db.analyze_streams().await {
                tracing::warn!("cannot refresh the statistics of the streams: {err}");
            }
        });
    }

    /// Runs an assignment sweep in the background, soon; requests made while one is queued
    /// share it.
    pub(crate) fn assign_soon(&self) {
        if self.inner.assign_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let supervisor = self.clone();
        crate::cluster::spawn_in_term(async move {
            supervisor
                .inner
                .assign_queued
                .store(false, Ordering::Release);
            supervisor.assign_pending().await;
        });
    }
}
