//! Supervision, the one door into changing streams and workers: the HTTP API creates, changes,
//! deletes, starts and stops streams here; the worker port reports connections, what a worker
//! runs and what it stored here; the periodic sweep runs here. Nothing else writes a stream.
//!
//! The database holds each stream's desired state and assignment (worker, generation); the
//! [`sessions`] hold the connected workers, and this module makes the two match. Assignment
//! decisions are serialised by one lock so two triggers (a worker connecting, a stream started
//! over the API, the sweep) never hand the same stream out twice; [`placement`] decides where
//! each stream goes, as a pure function. Calls to workers run concurrently, bounded.
//!
//! - `mod.rs`: the stream commands of the API;
//! - `workers.rs`: what the worker port reports (connect, disconnect, what runs, events);
//! - `assign.rs`: handing streams out, taking them back, telling workers;
//! - `bulk.rs`: the bulk commands (create many, start or stop a selection);
//! - `placement.rs`: where each stream goes; `sweep.rs`: the periodic housekeeping job;
//! - `sessions.rs`: the connected workers.

mod assign;
mod bulk;
pub mod placement;
mod sessions;
mod sweep;
mod workers;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::now_ms;
use uuid::Uuid;

use crate::cluster::Term;
use crate::db::{Db, DbError};
use crate::live::{Live, LiveMessage};
use crate::reconcile::Suspects;
use crate::stream::{Invalid, StreamRow, StreamSpec, StreamState, StreamUpdate};
use sessions::Sessions;

pub use bulk::{BulkCreated, BulkItem};
pub use sweep::Housekeeping;

/// Why a stream command failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("stream {0} not found")]
    NotFound(Uuid),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A replica that does not lead stored the desired state, but the leader did not apply it
    /// in time (during a failover): try again.
    #[error("{0}")]
    NotApplied(String),
}

struct Inner {
    db: Db,
    sessions: Sessions,
    assign_lock: tokio::sync::Mutex<()>,
    /// An assignment sweep is queued ([`Supervisor::assign_soon`]).
    assign_queued: std::sync::atomic::AtomicBool,
    /// A refresh of the planner's statistics is queued ([`Supervisor::analyze_soon`]).
    analyze_queued: std::sync::atomic::AtomicBool,
    call_timeout: Duration,
    /// How long a disconnected worker keeps its streams (the heartbeat timeout).
    grace: Duration,
    /// The reconciler's plan: the streams of a worker that restarted or went away are listed
    /// in its next pass, which comes soon after a worker (re)connects.
    reconcile: Suspects,
    /// Where commits and status changes are announced (`GET /live`).
    live: Live,
    /// Whether this process leads; a follower sends workers to the leader.
    role: tokio::sync::watch::Sender<Role>,
    /// The term this process leads under on PostgreSQL (its leader-only writes are fenced by
    /// it); `None` while following, and when leading alone on SQLite.
    term: std::sync::RwLock<Option<Term>>,
    /// While following: the workers connected to the leader, as the database last said.
    leader_workers: std::sync::RwLock<HashSet<String>>,
}

/// Whether this process leads (takes workers, assigns, fails over, indexes) or follows. One
/// process on its own database leads from the start; with replicas the leader lease decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Leader,
    /// Another replica leads; workers that dial this one are sent to its worker address
    /// (`None` while no leader is known).
    Follower {
        leader_worker_addr: Option<String>,
    },
}

/// What [`Supervisor::create`] did.
#[derive(Debug)]
pub enum Created {
    New(StreamRow),
    /// The client's id names this stream already, with the same spec: a retry.
    Existing(StreamRow),
    /// The client's id names a stream with another spec.
    Conflict(Uuid),
}

/// The supervision core, shared by the worker port, the HTTP API and the sweep.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    /// A supervisor over `db`. A disconnected worker keeps its streams for `grace` (the heartbeat
    /// timeout) so a quick restart does not shuffle them; `reconcile` hears of the streams a
    /// worker may have stored unreported (it restarted or went away).
    pub fn new(
        db: Db,
        call_timeout: Duration,
        grace: Duration,
        reconcile: Suspects,
        live: Live,
    ) -> Self {
        Supervisor {
            inner: Arc::new(Inner {
                db,
                sessions: Sessions::default(),
                assign_lock: tokio::sync::Mutex::new(()),
                assign_queued: std::sync::atomic::AtomicBool::new(false),
                analyze_queued: std::sync::atomic::AtomicBool::new(false),
                call_timeout,
                grace,
                reconcile,
                live,
                role: tokio::sync::watch::Sender::new(Role::Leader),
                term: std::sync::RwLock::new(None),
                leader_workers: std::sync::RwLock::new(HashSet::new()),
            }),
        }
    }

    /// This process's role now.
    pub fn role(&self) -> Role {
        self.inner.role.borrow().clone()
    }

    /// Changes of role, for what only a leader does (the worker port closes its sessions when
    /// this process stops leading, so its workers go to the new leader).
    pub fn role_changes(&self) -> tokio::sync::watch::Receiver<Role> {
        self.inner.role.subscribe()
    }

    /// Takes on a role (from the leader lease). Unchanged roles notify nobody.
    pub fn set_role(&self, role: Role) {
        self.inner.role.send_if_modified(|current| {
            let changed = *current != role;
            if changed {
                tracing::info!(?role, "supervisor role");
                *current = role;
            }
            changed
        });
    }

    /// Leads from now on: under `term` on PostgreSQL (every leader-only write is fenced by
    /// it), or alone (`None`, SQLite).
    pub fn lead(&self, term: Option<Term>) {
        *self.inner.term.write().expect("term lock") = term;
        self.set_role(Role::Leader);
    }

    /// Follows from now on: leader-only work stops, workers are sent to `leader_worker_addr`.
    pub fn follow(&self, leader_worker_addr: Option<String>) {
        *self.inner.term.write().expect("term lock") = None;
        self.set_role(Role::Follower { leader_worker_addr });
    }

    /// The term this process leads under (PostgreSQL), if it leads.
    pub fn term(&self) -> Option<Term> {
        *self.inner.term.read().expect("term lock")
    }

    /// Whether this process leads now.
    pub fn is_leader(&self) -> bool {
        *self.inner.role.borrow() == Role::Leader
    }

    /// Runs `work` if this process leads, as leader-only work of its term (its writes fenced);
    /// `None` when it follows.
    pub(crate) async fn as_leader<F: std::future::Future>(&self, work: F) -> Option<F::Output> {
        Some(match self.leading()? {
            Some(term) => crate::cluster::in_term(term, work).await,
            None => work.await,
        })
    }

    /// `Some` while this process leads, with the term its writes are fenced by (`None` inside:
    /// alone on SQLite). On PostgreSQL a leader without a term (a moment of a change of role)
    /// does not lead.
    pub(crate) fn leading(&self) -> Option<Option<Term>> {
        if !self.is_leader() {
            return None;
        }
        match (self.term(), &self.inner.db) {
            (None, Db::Postgres(_)) => None,
            (term, _) => Some(term),
        }
    }

    /// On a follower (PostgreSQL): tells the leader that `stream`'s desired state changed
    /// (`None`: many streams). A lost notification is found by the leader's sweep.
    pub(crate) async fn tell_leader(&self, stream: Option<Uuid>) {
        if self.is_leader() {
            return;
        }
        if let Db::Postgres(pool) = &self.inner.db {
            if let Err(err) = crate::cluster::desired::announce(pool, stream).await {
                tracing::warn!("cannot notify the leader of a change (its sweep finds it): {err}");
            }
        }
    }

    /// While following: the leader's connected workers, as read from the database.
    pub fn set_leader_workers(&self, workers: HashSet<String>) {
        *self.inner.leader_workers.write().expect("workers lock") = workers;
    }

    /// Announce a stream's current shape and status on the live channel.
    fn announce(&self, row: &StreamRow) {
        let connected = self.connected_workers();
        self.inner.live.publish(
            Some(row.id),
            &LiveMessage::Stream {
                stream_id: row.id,
                stream: Some(Box::new(row.view(&connected))),
                deleted: false,
            },
        );
    }

    /// Ids of the connected workers: this process's sessions when it leads, else the leader's
    /// as last read from the database.
    pub fn connected_workers(&self) -> HashSet<String> {
        if self.is_leader() {
            self.inner.sessions.ids()
        } else {
            self.inner
                .leader_workers
                .read()
                .expect("workers lock")
                .clone()
        }
    }

    async fn stream(&self, id: Uuid) -> Result<StreamRow, SupervisorError> {
        self.inner
            .db
            .get_stream(id)
            .await?
            .ok_or(SupervisorError::NotFound(id))
    }

    /// `POST /streams`: store a validated stream, running (and placed at once when a worker
    /// can take it) or stopped, under `id` (the client's) or a new UUIDv7. A client's id that
    /// exists already with the same spec is a retry: the stream comes back as it is,
    /// [`Created::Existing`]; with another spec, [`Created::Conflict`].
    pub async fn create(
        &self,
        id: Option<Uuid>,
        spec: StreamSpec,
        start: bool,
    ) -> Result<Created, SupervisorError> {
        let item = BulkItem {
            id: id.unwrap_or_else(Uuid::now_v7),
            spec,
            start,
        };
        let created = match self
            .inner
            .db
            .insert_streams(
                &[crate::db::NewStream {
                    id: item.id,
                    spec: &item.spec,
                    state: if start {
                        StreamState::Running
                    } else {
                        StreamState::Stopped
                    },
                    worker: None,
                }],
                now_ms(),
            )
            .await?
        {
            crate::db::BulkInsert::Conflicts(_) => return Ok(Created::Conflict(item.id)),
            crate::db::BulkInsert::Done { created, .. } => created.contains(&item.id),
        };
        if !created {
            return Ok(Created::Existing(self.stream(item.id).await?));
        }
        tracing::info!(stream_id = %item.id, "stream created");
        if start {
            self.assign_pending().await;
            self.tell_leader(Some(item.id)).await;
        }
        let row = self.stream(item.id).await?;
        self.announce(&row);
        Ok(Created::New(row))
    }

    /// `PATCH /streams/{id}`: apply the update, validate the stream as a whole, store it, and
    /// hand its worker the new config (applied at the end of the current interval).
    pub async fn update(
        &self,
        id: Uuid,
        update: StreamUpdate,
    ) -> Result<StreamRow, SupervisorError> {
        let spec = self.stream(id).await?.spec.patched(update)?;
        let row = self
            .inner
            .db
            // On a follower, marked: the leader hands the worker the config.
            .update_stream_marked(id, &spec, now_ms(), !self.is_leader())
            .await?
            .ok_or(SupervisorError::NotFound(id))?;
        self.reconfigure(&row).await;
        self.tell_leader(Some(id)).await;
        self.announce(&row);
        Ok(row)
    }

    /// `DELETE /streams/{id}`: stop it on its worker, then delete it with its references,
    /// readings and failed runs. Its raw objects stay in the bucket.
    /// On a follower the leader stops it first: the delete waits (bounded) until the leader
    /// has cleared its assignment, and answers [`SupervisorError::NotApplied`] otherwise (the
    /// stream is left stopped).
    pub async fn delete(&self, id: Uuid) -> Result<(), SupervisorError> {
        let row = self.stream(id).await?;
        self.inner
            .db
            .set_state(id, StreamState::Stopped, None, false, now_ms())
            .await?;
        self.stop_on_worker(&row).await;
        // Read again after the stop: the leader may have placed it meanwhile, and a follower
        // leaves the worker to the leader.
        if self
            .inner
            .db
            .get_stream(id)
            .await?
            .is_some_and(|now| now.worker_id.is_some())
        {
            self.await_release(id).await?;
        }
        self.inner.db.delete_stream(id).await?;
        tracing::info!(stream_id = %id, "stream deleted (its objects stay in the bucket)");
        self.inner.live.publish(
            Some(id),
            &LiveMessage::Stream {
                stream_id: id,
                stream: None,
                deleted: true,
            },
        );
        Ok(())
    }

    /// A follower waits until the leader has stopped `id` on its worker and cleared the
    /// assignment: up to two call timeouts and a sweep.
    async fn await_release(&self, id: Uuid) -> Result<(), SupervisorError> {
        self.tell_leader(Some(id)).await;
        let deadline =
            tokio::time::Instant::now() + self.inner.call_timeout * 2 + Duration::from_secs(2);
        loop {
            match self.inner.db.get_stream(id).await? {
                Some(row) if row.worker_id.is_some() => {}
                _ => return Ok(()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SupervisorError::NotApplied(format!(
                    "stream {id} is stopped, but the leader has not yet taken it off its worker \
                     (a leader change may be under way); delete it again shortly"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `POST /streams/{id}/start`: desired state running (a past error is cleared), then run it
    /// somewhere. Idempotent.
    pub async fn start(&self, id: Uuid) -> Result<StreamRow, SupervisorError> {
        let row = self
            .inner
            .db
            .set_state(id, StreamState::Running, None, true, now_ms())
            .await?
            .ok_or(SupervisorError::NotFound(id))?;
        match row.worker_id.as_deref() {
            // Already placed on a connected worker: `worker:start` is idempotent there.
            Some(worker_id) if self.inner.sessions.get(worker_id).is_some() => {
                self.reconfigure(&row).await
            }
            _ => self.assign_pending().await,
        }
        self.tell_leader(Some(id)).await;
        let row = self.inner.db.get_stream(id).await?.unwrap_or(row);
        self.announce(&row);
        Ok(row)
    }

    /// `POST /streams/{id}/stop`: desired state stopped, and tell its worker. Idempotent.
    pub async fn stop(&self, id: Uuid) -> Result<StreamRow, SupervisorError> {
        let before = self.stream(id).await?;
        let row = self
            .inner
            .db
            .set_state(id, StreamState::Stopped, None, false, now_ms())
            .await?
            .ok_or(SupervisorError::NotFound(id))?;
        self.stop_on_worker(&before).await;
        self.tell_leader(Some(id)).await;
        let row = self.inner.db.get_stream(id).await?.unwrap_or(row);
        self.announce(&row);
        Ok(row)
    }
}
