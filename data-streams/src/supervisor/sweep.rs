//! The periodic sweep: record that connected workers are alive, release the streams of workers
//! that went away while no session of this process was watching them (e.g. across a supervisor
//! restart), and assign pending streams.

use std::sync::Arc;
use std::time::Duration;

use common::now_ms;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use super::Supervisor;

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
                    supervisor.sweep(started_ms).await;
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
        self.assign_pending().await;
    }
}
