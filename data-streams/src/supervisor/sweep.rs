//! The periodic sweep: record that connected workers are alive, release the streams of workers
//! that went away while no session of this process was watching them (e.g. across a supervisor
//! restart), and assign pending streams.

use std::sync::Arc;
use std::time::Duration;

use common::now_ms;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use uuid::Uuid;

use super::Supervisor;
use crate::stream::StreamState;

/// The sweep's job on a `tokio-cron-scheduler` scheduler, until [`Housekeeping::stop`].
pub struct Housekeeping {
    scheduler: JobScheduler,
}

impl Housekeeping {
    /// Sweep about every `every` (at least a second apart).
    pub async fn start(supervisor: Supervisor, every: Duration) -> Result<Self, JobSchedulerError> {
        let scheduler = JobScheduler::new().await?;
        let started_ms = now_ms();
        // A cron job every second, sweeping when `every` has passed since the last sweep began.
        // Not `Job::new_repeated_async`: its next tick is the previous one plus the period, and
        // once that falls behind the scheduler's clock the job never runs again
        // (tokio-cron-scheduler issue #113, seen here as assignment stopping under load). A cron
        // job's next tick is computed from now. Sweeps are therefore at least a second apart.
        let last_sweep = Arc::new(tokio::sync::Mutex::new(None::<tokio::time::Instant>));
        let job = Job::new_async("* * * * * *", move |_id, _lock| {
            let supervisor = supervisor.clone();
            let last_sweep = last_sweep.clone();
            Box::pin(async move {
                // A sweep still running (a slow database) is not joined by another.
                let Ok(mut last) = last_sweep.try_lock() else {
                    return;
                };
                // Ticks come at whole seconds with up to half a second of jitter: allow for it.
                let due = last.is_none_or(|at| at.elapsed() + Duration::from_millis(500) >= every);
                if due {
                    *last = Some(tokio::time::Instant::now());
                    supervisor.as_leader(supervisor.sweep(started_ms)).await;
                }
            })
        })?;
        scheduler.add(job).await?;
        scheduler.start().await?;
        Ok(Housekeeping { scheduler })
    }

    /// Stop sweeping.
    pub async fn stop(mut self) {
        if let Err(err) = self.scheduler.shutdown().await {
            tracing::warn!("stopping the housekeeping scheduler: {err}");
        }
    }
}

impl Supervisor {
    /// One sweep. `started_ms`: when this process started; silence counts from then at the
    /// earliest, so after a long supervisor outage workers get one heartbeat timeout to
    /// reconnect before their streams move.
    async fn sweep(&self, started_ms: i64) {
        let db = &self.inner.db;
        let connected = self.connected_workers();
        // A live session is a sign of life (its link ends within the heartbeat timeout otherwise).
        let now = now_ms();
        for id in &connected {
            if let Err(err) = db.touch_worker(id, now).await {
                tracing::warn!(worker_id = %id, "cannot record the worker's last sign of life: {err}");
            }
        }
        match db.list_workers().await {
            Ok(rows) => {
                let cutoff = now_ms() - self.inner.grace.as_millis() as i64;
                for w in rows {
                    let silent_since = w.last_seen.max(started_ms);
                    if w.streams > 0 && !connected.contains(&w.id) && silent_since < cutoff {
                        self.release_worker(&w.id).await;
                    }
                }
            }
            Err(err) => tracing::warn!("housekeeping cannot read workers: {err}"),
        }
        self.stop_stopped().await;
        self.reconfigure_marked().await;
        self.assign_pending().await;
    }

    /// Hands their workers the config of streams changed on a follower (whose notification
    /// may have been lost), and clears the marks.
    pub(crate) async fn reconfigure_marked(&self) {
        match self.inner.db.streams_to_reconfigure(STOP_BATCH).await {
            Ok(rows) => {
                for row in rows {
                    self.reconfigure_and_clear(&row).await;
                }
            }
            Err(err) => tracing::warn!("housekeeping cannot read changed streams: {err}"),
        }
    }

    async fn reconfigure_and_clear(&self, row: &crate::stream::StreamRow) {
        self.reconfigure(row).await;
        if let Err(err) = self.inner.db.reconfigured(row.id, row.updated_at).await {
            tracing::warn!(stream_id = %row.id, "cannot clear the stream's reconfigure mark: {err}");
        }
    }

    /// Stops on their workers the streams that are desired stopped but still assigned (a
    /// replica that does not lead stored the stop; the leader applies it here, or at once on
    /// its notification), and clears their assignments.
    pub(crate) async fn stop_stopped(&self) {
        match self.inner.db.stopped_assigned(STOP_BATCH).await {
            Ok(rows) if !rows.is_empty() => {
                tracing::info!(streams = rows.len(), "stopping streams stopped elsewhere");
                self.stop_assigned(&rows).await;
            }
            Ok(_) => {}
            Err(err) => tracing::warn!("housekeeping cannot read stopped streams: {err}"),
        }
    }

    /// The leader applies what a replica that does not lead stored for `stream` (`None`: for
    /// many streams, or unknown which): its worker gets the new config, a stop, or it is
    /// placed. Nothing on a follower.
    pub async fn apply_desired(&self, stream: Option<Uuid>) {
        if !self.is_leader() {
            return;
        }
        let Some(id) = stream else {
            self.stop_stopped().await;
            self.reconfigure_marked().await;
            self.assign_soon();
            return;
        };
        match self.inner.db.get_stream(id).await {
            Ok(Some(row)) => match (row.state == StreamState::Running, row.worker_id.is_some()) {
                (true, true) => self.reconfigure_and_clear(&row).await,
                (true, false) => self.assign_soon(),
                (false, true) => self.stop_on_worker(&row).await,
                (false, false) => {}
            },
            Ok(None) => {}
            Err(err) => tracing::warn!(stream_id = %id, "cannot apply a desired state: {err}"),
        }
    }
}

/// Most stopped-but-assigned streams one sweep stops.
const STOP_BATCH: i64 = 10_000;
