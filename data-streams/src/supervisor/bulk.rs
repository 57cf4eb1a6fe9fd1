//! The bulk commands of the API: many streams created in one transaction, and a selection of
//! streams (ids or a filter) started or stopped with set-based writes. Assignment of what they
//! make runnable happens in the background ([`Supervisor::assign_soon`]), so a request for
//! 100,000 streams answers when they are stored, not when every worker has them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use common::now_ms;
use protocol::Call;
use uuid::Uuid;

use super::{Supervisor, SupervisorError};
use crate::db::{BulkInsert, Changed, NewStream, Selection};
use crate::stream::{StreamSpec, StreamState};

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
    /// Stores every item in one transaction, all or nothing, and has the running ones assigned
    /// in the background.
    pub async fn create_many(&self, items: &[BulkItem]) -> Result<BulkCreated, SupervisorError> {
        let streams: Vec<NewStream<'_>> = items
            .iter()
            .map(|item| NewStream {
                id: item.id,
                spec: &item.spec,
                state: if item.start {
                    StreamState::Running
                } else {
                    StreamState::Stopped
                },
            })
            .collect();
        match self.inner.db.insert_streams(&streams, now_ms()).await? {
            BulkInsert::Conflicts(at) => Ok(BulkCreated::Conflicts(at)),
            BulkInsert::Done { created, existing } => {
                tracing::info!(
                    created = created.len(),
                    existing = existing.len(),
                    "streams created in bulk"
                );
                if items.iter().any(|i| i.start && created.contains(&i.id)) {
                    self.assign_soon();
                }
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
        if !changed.is_empty() {
            self.assign_soon();
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
        self.stop_assigned(&changed).await;
        Ok(changed.len())
    }

    /// Tells each connected worker to stop its streams among `changed`, then clears their
    /// assignments (where still theirs and still stopped).
    async fn stop_assigned(&self, changed: &[Changed]) {
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

    /// Runs an assignment sweep in the background, soon; requests made while one is queued
    /// share it.
    pub(crate) fn assign_soon(&self) {
        if self.inner.assign_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let supervisor = self.clone();
        tokio::spawn(async move {
            supervisor
                .inner
                .assign_queued
                .store(false, Ordering::Release);
            supervisor.assign_pending().await;
        });
    }
}
