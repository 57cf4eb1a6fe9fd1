//! The streams a worker runs, keyed by stream id, each on its interval or cron schedule.
//!
//! Each stream is one task that sleeps until its next tick, runs, and computes the tick after.
//! `start` is idempotent: starting a running stream hands it the new config, which takes effect at
//! the end of the current interval (the task picks it up when it wakes). `stop` is idempotent.
//! Stopping or shutting down never interrupts a run in flight: the fetch and upload finish and
//! their event is queued; only the wait for the next tick is cut short.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::schedule::{next_after, parse_cron};
use protocol::{RunningStream, Schedule, StreamConfig};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::clock::Clock;
use crate::runner::{RunOutcome, Runner};

/// What `start` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// A new stream task.
    New,
    /// Already running; the new config applies from the next tick.
    Updated,
    /// Already running with exactly this config.
    Unchanged,
}

/// Why `start` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("worker is at capacity ({0} streams)")]
    AtCapacity(usize),
    #[error("this worker has no adapter {0:?}")]
    UnknownAdapter(String),
    #[error("{0}")]
    BadSchedule(String),
    #[error("worker is shutting down")]
    ShuttingDown,
}

/// What `stop` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Stopped,
    NotRunning,
    /// A newer generation runs here; a stop for an older one leaves it alone.
    NewerGenerationRunning,
}

struct Entry {
    /// Tells this entry's task apart from a later task of the same stream.
    incarnation: u64,
    generation: u64,
    config: watch::Sender<StreamConfig>,
    cancel: CancellationToken,
}

struct Inner {
    streams: Mutex<HashMap<Uuid, Entry>>,
    runner: Arc<Runner>,
    clock: Clock,
    capacity: usize,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    incarnations: std::sync::atomic::AtomicU64,
}

/// A cloneable handle to the worker's streams.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// A scheduler running at most `capacity` streams through `runner`.
    pub fn new(runner: Arc<Runner>, clock: Clock, capacity: usize) -> Self {
        Scheduler {
            inner: Arc::new(Inner {
                streams: Mutex::new(HashMap::new()),
                runner,
                clock,
                capacity,
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                incarnations: std::sync::atomic::AtomicU64::new(1),
            }),
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        // Each critical section is a single map operation, so a poisoned lock is consistent.
        self.inner.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run a stream, or hand a running one its new config (`worker:start`).
    pub fn start(&self, config: StreamConfig) -> Result<Started, StartError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(StartError::ShuttingDown);
        }
        if self.inner.runner.adapters.get(&config.adapter).is_none() {
            return Err(StartError::UnknownAdapter(config.adapter));
        }
        if let Schedule::Cron { expr } = &config.schedule {
            parse_cron(expr).map_err(StartError::BadSchedule)?;
        }
        if let Schedule::Interval { millis: 0 } = config.schedule {
            return Err(StartError::BadSchedule("interval must be above 0".into()));
        }
        let mut streams = self.streams();
        if let Some(entry) = streams.get_mut(&config.stream_id) {
            entry.generation = entry.generation.max(config.generation);
            let changed = entry.config.send_if_modified(|current| {
                if *current == config {
                    false
                } else {
                    *current = config;
                    true
                }
            });
            return Ok(if changed {
                Started::Updated
            } else {
                Started::Unchanged
            });
        }
        if streams.len() >= self.inner.capacity {
            return Err(StartError::AtCapacity(self.inner.capacity));
        }
        let stream_id = config.stream_id;
        let (tx, rx) = watch::channel(config.clone());
        let cancel = self.inner.shutdown.child_token();
        let incarnation = self
            .inner
            .incarnations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        streams.insert(
            stream_id,
            Entry {
                incarnation,
                generation: config.generation,
                config: tx,
                cancel: cancel.clone(),
            },
        );
        drop(streams);
        let this = self.clone();
        self.inner
            .tracker
            .spawn(async move { this.stream_loop(stream_id, incarnation, rx, cancel).await });
        Ok(Started::New)
    }

    /// Stop a stream (`worker:stop`). A generation of 0 stops whatever runs.
    pub fn stop(&self, stream_id: Uuid, generation: u64) -> Stopped {
        let mut streams = self.streams();
        match streams.get(&stream_id) {
            None => Stopped::NotRunning,
            Some(entry) if generation != 0 && entry.generation > generation => {
                Stopped::NewerGenerationRunning
            }
            Some(_) => {
                if let Some(entry) = streams.remove(&stream_id) {
                    entry.cancel.cancel();
                }
                // Its limit no longer counts towards its key's strictest.
                self.inner.runner.budgets.forget_stream(stream_id);
                Stopped::Stopped
            }
        }
    }

    /// What runs here, with generations (for the hello and `worker_available`).
    pub fn running(&self) -> Vec<RunningStream> {
        self.streams()
            .iter()
            .map(|(id, e)| RunningStream {
                stream_id: *id,
                generation: e.generation,
            })
            .collect()
    }

    /// Whether this stream runs here.
    pub fn is_running(&self, stream_id: Uuid) -> bool {
        self.streams().contains_key(&stream_id)
    }

    /// How many streams run here.
    pub fn len(&self) -> usize {
        self.streams().len()
    }

    /// Whether nothing runs here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stop taking ticks, let runs in flight finish (at most `grace`), then return.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_ok()
    }

    async fn stream_loop(
        &self,
        stream_id: Uuid,
        incarnation: u64,
        mut config_rx: watch::Receiver<StreamConfig>,
        cancel: CancellationToken,
    ) {
        let mut config = config_rx.borrow_and_update().clone();
        let Some(mut next) = self.first_tick(&config) else {
            tracing::error!(%stream_id, "schedule has no future tick; stream not run");
            self.forget(stream_id, incarnation);
            return;
        };
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    // A run that was in flight at the stop registered this stream again.
                    self.inner.runner.budgets.forget_stream(stream_id);
                    return;
                }
                _ = sleep_until(next) => {}
            }
            // A config that changed during the interval takes effect now, at its end.
            if config_rx.has_changed().unwrap_or(false) {
                config = config_rx.borrow_and_update().clone();
            }
            let lag = Instant::now().saturating_duration_since(next);
            tracing::trace!(%stream_id, lag_us = lag.as_micros() as u64, "tick");
            let outcome = self.inner.runner.run(&config).await;
            if let RunOutcome::Failed(failure) = &outcome {
                if failure.stream_stopped {
                    self.forget(stream_id, incarnation);
                    return;
                }
            }
            match self.next_tick(&config, next) {
                Some(t) => next = t,
                None => {
                    tracing::error!(%stream_id, "schedule has no further tick; stream ends");
                    self.forget(stream_id, incarnation);
                    return;
                }
            }
        }
    }

    fn first_tick(&self, config: &StreamConfig) -> Option<Instant> {
        match &config.schedule {
            Schedule::Interval { .. } => Some(Instant::now()),
            Schedule::Cron { expr } => self.next_cron(expr),
        }
    }

    /// The tick after `previous`: fixed-rate for intervals (ticks missed while a run overran are
    /// skipped, not bunched), the next matching time for cron.
    fn next_tick(&self, config: &StreamConfig, previous: Instant) -> Option<Instant> {
        match &config.schedule {
            Schedule::Interval { millis } => {
                let period = Duration::from_millis((*millis).max(1));
                let mut next = previous + period;
                let now = Instant::now();
                if next < now {
                    let behind = now.duration_since(next).as_nanos();
                    let skip = behind.div_ceil(period.as_nanos()) as u32;
                    next += period * skip;
                }
                Some(next)
            }
            Schedule::Cron { expr } => self.next_cron(expr),
        }
    }

    fn next_cron(&self, expr: &str) -> Option<Instant> {
        let cron = parse_cron(expr).ok()?;
        let at = next_after(&cron, self.inner.clock.now())?;
        Some(self.inner.clock.instant_at(at))
    }

    /// Remove the stream's entry if it is still the one this task runs.
    fn forget(&self, stream_id: Uuid, incarnation: u64) {
        let mut streams = self.streams();
        if streams
            .get(&stream_id)
            .is_some_and(|e| e.incarnation == incarnation)
        {
            streams.remove(&stream_id);
            self.inner.runner.budgets.forget_stream(stream_id);
        }
    }
}
