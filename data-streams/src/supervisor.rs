//! Desired state against actual state: which worker runs which stream.
//!
//! The database holds each stream's desired state and assignment (worker, generation); this
//! module holds the connected workers and makes them match. Assignment decisions are serialised
//! by one lock so two triggers (a worker connecting, a stream started over the API, the periodic
//! sweep) never hand the same stream out twice. Calls to workers run concurrently, bounded.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use protocol::{Call, CallError, LinkHandle, Reply, RunningStream, StreamConfig};
use uuid::Uuid;

use crate::db::{Db, DbError, StreamRow, StreamState};

/// How many `worker:start`/`worker:stop` calls are in flight at once during a sweep.
const CALL_CONCURRENCY: usize = 256;
/// How many pending streams one sweep assigns before it looks again.
const ASSIGN_BATCH: i64 = 5_000;

/// Failures of supervision.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("stream {0} not found")]
    NotFound(Uuid),
    #[error("worker {worker_id} refused {call}: {message}")]
    Refused {
        worker_id: String,
        call: &'static str,
        message: String,
    },
    #[error("worker {worker_id}: {source}")]
    Call {
        worker_id: String,
        #[source]
        source: CallError,
    },
}

/// A connected worker.
#[derive(Debug, Clone)]
struct Session {
    conn_id: u64,
    link: LinkHandle,
    capacity: u32,
    adapters: Vec<String>,
}

struct Inner {
    db: Db,
    sessions: Mutex<HashMap<String, Session>>,
    assign_lock: tokio::sync::Mutex<()>,
    next_conn: AtomicU64,
    call_timeout: Duration,
    grace: Duration,
    reconcile_soon: Arc<tokio::sync::Notify>,
}

/// The supervision core, shared by the worker listener, the HTTP API and the periodic sweep.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// Turn a stored stream into what a worker runs.
pub fn stream_config(row: &StreamRow) -> Option<StreamConfig> {
    let schedule = row.schedule()?;
    let params = row
        .params
        .iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect();
    Some(StreamConfig {
        stream_id: row.id,
        generation: row.generation as u64,
        adapter: row.adapter.clone(),
        endpoint: row.endpoint.clone(),
        secret_key: row.secret_key.clone(),
        schedule,
        timeout_ms: row.timeout_ms.max(1) as u64,
        bucket_name: row.bucket_name.clone(),
        params,
        rate_limit: row.rate_limit,
    })
}

/// A key's identity for placement: the first 8 bytes of its SHA-256. Keys are compared in
/// memory only, never logged.
fn key_hash(secret_key: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(secret_key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// For each key, the connected worker that runs most of its streams (ties: the smaller id).
fn key_homes(
    assigned: Vec<(String, String, i64)>,
    connected: &HashSet<&str>,
) -> HashMap<u64, String> {
    let mut best: HashMap<u64, (i64, String)> = HashMap::new();
    for (worker_id, key, count) in assigned {
        if !connected.contains(worker_id.as_str()) {
            continue;
        }
        let candidate = (count, worker_id);
        best.entry(key_hash(&key))
            .and_modify(|current| {
                if candidate.0 > current.0 || (candidate.0 == current.0 && candidate.1 < current.1)
                {
                    *current = candidate.clone();
                }
            })
            .or_insert_with(|| candidate.clone());
    }
    best.into_iter().map(|(k, (_, w))| (k, w)).collect()
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Supervisor {
    /// A supervisor over `db`. A disconnected worker keeps its streams for `grace` (the heartbeat
    /// timeout) so a quick restart does not shuffle them.
    pub fn new(db: Db, call_timeout: Duration, grace: Duration) -> Self {
        Supervisor {
            inner: Arc::new(Inner {
                db,
                sessions: Mutex::new(HashMap::new()),
                assign_lock: tokio::sync::Mutex::new(()),
                next_conn: AtomicU64::new(1),
                call_timeout,
                grace,
                reconcile_soon: Arc::new(tokio::sync::Notify::new()),
            }),
        }
    }

    /// Notified when the reconciler should run soon (a worker (re)connected).
    pub fn reconcile_trigger(&self) -> Arc<tokio::sync::Notify> {
        self.inner.reconcile_soon.clone()
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // Critical sections are single map operations; a poisoned map is still consistent.
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Ids of the connected workers.
    pub fn connected_workers(&self) -> HashSet<String> {
        self.sessions().keys().cloned().collect()
    }

    fn session(&self, worker_id: &str) -> Option<Session> {
        self.sessions().get(worker_id).cloned()
    }

    /// Register a worker that passed the handshake. An older session of the same worker is
    /// closed: the newest connection wins. Returns this connection's id.
    pub async fn worker_connected(
        &self,
        worker_id: &str,
        capacity: u32,
        adapters: Vec<String>,
        link: LinkHandle,
    ) -> Result<u64, DbError> {
        self.inner
            .db
            .upsert_worker(worker_id, capacity as i64, &adapters, now_ms())
            .await?;
        let conn_id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let previous = self.sessions().insert(
            worker_id.to_owned(),
            Session {
                conn_id,
                link,
                capacity,
                adapters,
            },
        );
        if let Some(old) = previous {
            tracing::warn!(
                worker_id,
                "worker connected again; closing its older connection"
            );
            old.link.close().await;
        }
        metrics::gauge!("ds_workers_connected").set(self.sessions().len() as f64);
        Ok(conn_id)
    }

    /// A worker's link ended. Its streams stay assigned for the grace period; if it has not come
    /// back by then, they go to the other workers.
    pub async fn worker_disconnected(&self, worker_id: &str, conn_id: u64) {
        let removed = {
            let mut sessions = self.sessions();
            match sessions.get(worker_id) {
                Some(s) if s.conn_id == conn_id => sessions.remove(worker_id).is_some(),
                _ => false,
            }
        };
        if !removed {
            return;
        }
        metrics::gauge!("ds_workers_connected").set(self.sessions().len() as f64);
        if let Err(err) = self
            .inner
            .db
            .set_worker_disconnected(worker_id, now_ms())
            .await
        {
            tracing::error!(worker_id, "could not record the disconnect: {err}");
        }
        let this = self.clone();
        let worker_id = worker_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(this.inner.grace).await;
            if this.session(&worker_id).is_some() {
                return;
            }
            this.release_worker(&worker_id).await;
        });
    }

    /// Take every stream away from a worker that is gone, and hand them to the others.
    pub async fn release_worker(&self, worker_id: &str) {
        let released = {
            let _guard = self.inner.assign_lock.lock().await;
            // It may have come back while we waited for the lock.
            if self.session(worker_id).is_some() {
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

    /// Answer `data-streams:worker_available`: stop what the worker runs that is no longer its
    /// own (stale generations), (re)start what it should run, then assign pending streams.
    pub async fn worker_available(&self, worker_id: &str, running: Vec<RunningStream>) {
        let Some(session) = self.session(worker_id) else {
            return;
        };
        // Whatever it stored but could not report before it went away gets indexed.
        self.inner.reconcile_soon.notify_one();
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
        let stale: Vec<RunningStream> = running
            .iter()
            .filter(|r| own.get(&r.stream_id) != Some(&(r.generation as i64)))
            .copied()
            .collect();
        let running_now: HashSet<(Uuid, u64)> = running
            .iter()
            .map(|r| (r.stream_id, r.generation))
            .collect();
        let to_start: Vec<StreamConfig> = assigned
            .iter()
            .filter(|s| !running_now.contains(&(s.id, s.generation as u64)))
            .filter_map(stream_config)
            .collect();
        if !stale.is_empty() || !to_start.is_empty() {
            tracing::info!(
                worker_id,
                stop = stale.len(),
                start = to_start.len(),
                "bringing the worker in line with its assignment"
            );
        }
        let calls = stale
            .into_iter()
            .map(|r| Call::Stop {
                stream_id: r.stream_id,
                generation: r.generation,
            })
            .chain(to_start.into_iter().map(Call::Start));
        self.call_many(worker_id, &session, calls).await;
        self.assign_pending().await;
    }

    /// Send calls to one worker, bounded concurrency; failed starts are unassigned so the next
    /// sweep can place them elsewhere.
    async fn call_many(
        &self,
        worker_id: &str,
        session: &Session,
        calls: impl Iterator<Item = Call>,
    ) {
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
            let ok = matches!(&reply, Ok(r) if r.success);
            if ok {
                continue;
            }
            let why = match &reply {
                Ok(r) => r.message.clone(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(worker_id, call = call.name(), "call failed: {why}");
            if let Call::Start(cfg) = call {
                let _ = self
                    .inner
                    .db
                    .unassign(cfg.stream_id, worker_id, cfg.generation as i64)
                    .await;
            }
        }
    }

    /// Assign running streams that have no worker to connected workers: least loaded first,
    /// within capacity, only workers that have the stream's adapter.
    pub async fn assign_pending(&self) {
        let _guard = self.inner.assign_lock.lock().await;
        if let Err(err) = self.assign_pending_locked().await {
            tracing::error!("assignment sweep failed: {err}");
        }
    }

    async fn assign_pending_locked(&self) -> Result<(), DbError> {
        loop {
            let sessions: Vec<(String, Session)> = self
                .sessions()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if sessions.is_empty() {
                return Ok(());
            }
            let pending = self.inner.db.assignable_streams(ASSIGN_BATCH).await?;
            if pending.is_empty() {
                return Ok(());
            }
            let counts = self.inner.db.assigned_counts().await?;
            let mut load: HashMap<String, i64> = sessions
                .iter()
                .map(|(id, _)| (id.clone(), counts.get(id).copied().unwrap_or(0)))
                .collect();
            // Key affinity: a stream goes where its key's streams already run, when that worker
            // has room, so one worker's budget covers the whole key (the API counts per key).
            let connected: HashSet<&str> = sessions.iter().map(|(id, _)| id.as_str()).collect();
            let mut homes = key_homes(self.inner.db.assigned_keys().await?, &connected);
            let mut per_worker: HashMap<String, Vec<Call>> = HashMap::new();
            let mut placed = 0usize;
            for stream in &pending {
                let fits = |id: &str, s: &Session| {
                    s.adapters.iter().any(|a| a == &stream.adapter) && load[id] < s.capacity as i64
                };
                let key = key_hash(&stream.secret_key);
                let home = homes
                    .get(&key)
                    .and_then(|home| sessions.iter().find(|(id, s)| id == home && fits(id, s)));
                let Some((worker_id, _)) = home.or_else(|| {
                    sessions
                        .iter()
                        .filter(|(id, s)| fits(id, s))
                        .min_by_key(|(id, _)| load[id.as_str()])
                }) else {
                    continue;
                };
                let Some(generation) = self.inner.db.assign(stream.id, worker_id).await? else {
                    continue;
                };
                let mut row = stream.clone();
                row.generation = generation;
                row.worker_id = Some(worker_id.clone());
                if let Some(cfg) = stream_config(&row) {
                    per_worker
                        .entry(worker_id.clone())
                        .or_default()
                        .push(Call::Start(cfg));
                    *load.entry(worker_id.clone()).or_default() += 1;
                    homes.entry(key).or_insert_with(|| worker_id.clone());
                    placed += 1;
                }
            }
            for (worker_id, calls) in per_worker {
                if let Some((_, session)) = sessions.iter().find(|(id, _)| *id == worker_id) {
                    tracing::info!(worker_id, streams = calls.len(), "assigning streams");
                    self.call_many(&worker_id, session, calls.into_iter()).await;
                }
            }
            // Nothing placeable (no capacity, no adapter) or the last batch: stop looking.
            if placed == 0 || (pending.len() as i64) < ASSIGN_BATCH {
                return Ok(());
            }
        }
    }

    /// `POST /streams/{id}/start`: desired state running, then run it somewhere.
    pub async fn start_stream(&self, id: Uuid) -> Result<StreamRow, SupervisorError> {
        let row = self
            .inner
            .db
            .set_state(id, StreamState::Running, None, true, now_ms())
            .await?
            .ok_or(SupervisorError::NotFound(id))?;
        match row.worker_id.as_deref().and_then(|w| self.session(w)) {
            // Already placed on a connected worker: `worker:start` is idempotent there.
            Some(session) => {
                if let (Some(cfg), Some(w)) = (stream_config(&row), row.worker_id.clone()) {
                    self.call_many(&w, &session, std::iter::once(Call::Start(cfg)))
                        .await;
                }
            }
            None => self.assign_pending().await,
        }
        Ok(self.inner.db.get_stream(id).await?.unwrap_or(row))
    }

    /// `POST /streams/{id}/stop`: desired state stopped, and tell its worker.
    pub async fn stop_stream(&self, id: Uuid) -> Result<StreamRow, SupervisorError> {
        let before = self
            .inner
            .db
            .get_stream(id)
            .await?
            .ok_or(SupervisorError::NotFound(id))?;
        let row = self
            .inner
            .db
            .set_state(id, StreamState::Stopped, None, false, now_ms())
            .await?
            .ok_or(SupervisorError::NotFound(id))?;
        self.stop_on_worker(&before).await;
        Ok(row)
    }

    /// Stop a stream wherever it was assigned and clear the assignment.
    pub async fn stop_on_worker(&self, row: &StreamRow) {
        let Some(worker_id) = row.worker_id.as_deref() else {
            return;
        };
        if let Some(session) = self.session(worker_id) {
            let call = Call::Stop {
                stream_id: row.id,
                generation: row.generation as u64,
            };
            self.call_many(worker_id, &session, std::iter::once(call))
                .await;
        }
        let _ = self
            .inner
            .db
            .unassign(row.id, worker_id, row.generation)
            .await;
    }

    /// A stream's config changed: its worker gets the new one (applied at the end of the
    /// current interval).
    pub async fn stream_updated(&self, row: &StreamRow) {
        if row.state != StreamState::Running {
            return;
        }
        if let Some(worker_id) = row.worker_id.as_deref() {
            if let (Some(session), Some(cfg)) = (self.session(worker_id), stream_config(row)) {
                self.call_many(worker_id, &session, std::iter::once(Call::Start(cfg)))
                    .await;
            }
        }
    }

    /// A worker stopped a stream itself (bad or expired key): it waits for a person. Only the
    /// worker the stream is assigned to speaks for it: a failure from any other (a stale claim
    /// that was never told, or an old event replayed after a person fixed the key and the
    /// stream moved on) is history, not a reason to stop a stream that runs elsewhere.
    pub async fn stream_failed(&self, id: Uuid, worker_id: &str, reason: &str) {
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
            Ok(_) => {
                tracing::warn!(stream_id = %id, worker_id, "stream failed and stopped: {reason}")
            }
            Err(err) => tracing::error!(stream_id = %id, "could not mark the stream failed: {err}"),
        }
    }
}
