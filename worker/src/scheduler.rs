//! The streams a worker runs, keyed by stream id, each on its interval or cron schedule.
//!
//! One timer wheel ([`DelayQueue`]) holds the next tick of every stream, and one dispatcher task
//! takes due ticks off it and spawns a task per *run*. An idle stream costs a map entry, a wheel
//! slot and its shared config — no task, no channel, no timer of its own — so one worker holds a
//! million scheduled streams. When a run ends, the stream's next tick goes back on the wheel.
//!
//! `start` is idempotent: starting a running stream hands it the new config, which takes effect
//! at the end of the current interval (the tick already on the wheel runs with it). `stop` is
//! idempotent. Stopping or shutting down never interrupts a run in flight: the fetch and upload
//! finish and their event is queued; only the wait for the next tick is cut short.
//!
//! Interval streams start after a stable per-stream offset in `[0, min(interval, start_spread))`
//! (see [`Scheduler::with_start_spread`]), so a worker that is handed thousands of streams at
//! once — a restart, a failover — spreads their first calls instead of firing them together.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use protocol::packed::PackedConfig;
use protocol::schedule::{next_after, parse_cron};
use protocol::{RunningStream, Schedule, StreamConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::delay_queue::{self, DelayQueue};
use uuid::Uuid;

use crate::clock::Clock;
use crate::runner::{RunOutcome, Runner};

/// What `start` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// A new stream.
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
    #[error("config cannot be kept: {0}")]
    Unpackable(String),
}

/// What `stop` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Stopped,
    NotRunning,
    /// A newer generation runs here; a stop for an older one leaves it alone.
    NewerGenerationRunning,
}

/// Where a stream is between ticks.
enum Phase {
    /// On the wheel, due at the key's deadline.
    Waiting(delay_queue::Key),
    /// A run is in flight; its next tick is computed when it ends, from the config it ran with
    /// unless a `start` changed the config meanwhile.
    Running { config_changed: bool },
}

struct Entry {
    /// Tells this entry apart from a later start of the same stream.
    incarnation: u64,
    generation: u64,
    /// The config the next tick runs with, packed: a million of these must fit in memory.
    config: PackedConfig,
    phase: Phase,
}

/// The streams and the wheel of their next ticks, under one lock: every critical section is a
/// map and a wheel operation, never an await.
struct Table {
    streams: HashMap<Uuid, Entry>,
    wheel: DelayQueue<Uuid>,
}

struct Inner {
    table: Mutex<Table>,
    runner: Arc<Runner>,
    clock: Clock,
    capacity: usize,
    start_spread: Duration,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    incarnations: AtomicU64,
}

/// A cloneable handle to the worker's streams.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// A scheduler running at most `capacity` streams through `runner`, whose interval streams
    /// start right away. Spawns its dispatcher: call it inside a tokio runtime.
    pub fn new(runner: Arc<Runner>, clock: Clock, capacity: usize) -> Self {
        Self::with_start_spread(runner, clock, capacity, Duration::ZERO)
    }

    /// As [`Scheduler::new`], with interval streams starting after a stable per-stream offset
    /// below `min(interval, start_spread)`.
    pub fn with_start_spread(
        runner: Arc<Runner>,
        clock: Clock,
        capacity: usize,
        start_spread: Duration,
    ) -> Self {
        let scheduler = Scheduler {
            inner: Arc::new(Inner {
                table: Mutex::new(Table {
                    streams: HashMap::new(),
                    wheel: DelayQueue::new(),
                }),
                runner,
                clock,
                capacity,
                start_spread,
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                incarnations: AtomicU64::new(1),
            }),
        };
        tokio::spawn(scheduler.clone().dispatch());
        scheduler
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // No critical section can leave the table half-changed, so a poisoned lock is usable.
        self.inner.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run a stream, or hand a running one its new config (`worker:start`).
    pub fn start(&self, config: StreamConfig) -> Result<Started, StartError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(StartError::ShuttingDown);
        }
        if !self.inner.runner.has_adapter(&config.adapter) {
            return Err(StartError::UnknownAdapter(config.adapter));
        }
        if let Schedule::Cron { expr } = &config.schedule {
            parse_cron(expr).map_err(StartError::BadSchedule)?;
        }
        if let Schedule::Interval { millis: 0 } = config.schedule {
            return Err(StartError::BadSchedule("interval must be above 0".into()));
        }
        let first = self.first_tick(&config);
        let packed =
            PackedConfig::pack(&config).map_err(|e| StartError::Unpackable(e.to_string()))?;
        let mut table = self.table();
        if let Some(entry) = table.streams.get_mut(&config.stream_id) {
            entry.generation = entry.generation.max(config.generation);
            if entry.config == packed {
                return Ok(Started::Unchanged);
            }
            entry.config = packed;
            if let Phase::Running { config_changed } = &mut entry.phase {
                *config_changed = true;
            }
            return Ok(Started::Updated);
        }
        if table.streams.len() >= self.inner.capacity {
            return Err(StartError::AtCapacity(self.inner.capacity));
        }
        let Some(first) = first else {
            // A cron expression that parses but never matches again (e.g. a past year).
            return Err(StartError::BadSchedule(
                "schedule has no future tick".to_owned(),
            ));
        };
        let stream_id = config.stream_id;
        let key = table.wheel.insert_at(stream_id, first);
        let incarnation = self.inner.incarnations.fetch_add(1, Ordering::Relaxed);
        table.streams.insert(
            stream_id,
            Entry {
                incarnation,
                generation: config.generation,
                config: packed,
                phase: Phase::Waiting(key),
            },
        );
        Ok(Started::New)
    }

    /// Stop a stream (`worker:stop`). A generation of 0 stops whatever runs.
    pub fn stop(&self, stream_id: Uuid, generation: u64) -> Stopped {
        let mut table = self.table();
        let Table { streams, wheel } = &mut *table;
        match streams.get(&stream_id) {
            None => Stopped::NotRunning,
            Some(entry) if generation != 0 && entry.generation > generation => {
                Stopped::NewerGenerationRunning
            }
            Some(_) => {
                if let Some(Entry {
                    phase: Phase::Waiting(key),
                    ..
                }) = streams.remove(&stream_id)
                {
                    wheel.remove(&key);
                }
                // Its limit no longer counts towards its key's strictest.
                self.inner.runner.forget(stream_id);
                Stopped::Stopped
            }
        }
    }

    /// What runs here, with generations (for the hello and `worker_available`).
    pub fn running(&self) -> Vec<RunningStream> {
        self.table()
            .streams
            .iter()
            .map(|(id, e)| RunningStream {
                stream_id: *id,
                generation: e.generation,
            })
            .collect()
    }

    /// Whether this stream runs here.
    pub fn is_running(&self, stream_id: Uuid) -> bool {
        self.table().streams.contains_key(&stream_id)
    }

    /// How many streams run here.
    pub fn len(&self) -> usize {
        self.table().streams.len()
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

    /// Take due ticks off the wheel and spawn their runs, until shutdown.
    async fn dispatch(self) {
        loop {
            let due = tokio::select! {
                biased;
                _ = self.inner.shutdown.cancelled() => return,
                due = poll_fn(|cx| match self.table().wheel.poll_expired(cx) {
                    // An empty wheel keeps the waker: the next insert wakes this task.
                    Poll::Ready(None) => Poll::Pending,
                    other => other,
                }) => due,
            };
            let Some(expired) = due else { continue };
            let tick = expired.deadline();
            let stream_id = expired.into_inner();
            let mut table = self.table();
            let Some(entry) = table.streams.get_mut(&stream_id) else {
                continue;
            };
            let config = match entry.config.unpack() {
                Ok(config) => config,
                Err(err) => {
                    // Packed by `start` a moment ago: only a bug gets here. Say so, drop it.
                    tracing::error!(%stream_id, "stream dropped: {err}");
                    table.streams.remove(&stream_id);
                    continue;
                }
            };
            entry.phase = Phase::Running {
                config_changed: false,
            };
            let incarnation = entry.incarnation;
            drop(table);
            let this = self.clone();
            self.inner.tracker.spawn(async move {
                let lag = Instant::now().saturating_duration_since(tick);
                tracing::trace!(%stream_id, lag_us = lag.as_micros() as u64, "tick");
                let outcome = this.inner.runner.run(&config, tick).await;
                this.ran(stream_id, incarnation, tick, &config, &outcome);
            });
        }
    }

    /// A run ended: put the stream's next tick on the wheel, or let it go.
    fn ran(
        &self,
        stream_id: Uuid,
        incarnation: u64,
        tick: Instant,
        ran_with: &StreamConfig,
        outcome: &RunOutcome,
    ) {
        let mut table = self.table();
        let Table { streams, wheel } = &mut *table;
        let Some(entry) = streams.get_mut(&stream_id) else {
            // Stopped while the run was in flight, which registered the stream's budget again.
            self.inner.runner.forget(stream_id);
            return;
        };
        if entry.incarnation != incarnation {
            // Stopped and started again meanwhile: the new start has its own tick.
            return;
        }
        if outcome.stops_stream() {
            streams.remove(&stream_id);
            self.inner.runner.forget(stream_id);
            return;
        }
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        // The config as it is now: a change during the run decides the next tick. Unchanged
        // (the rule), the run's own config does, without unpacking it a second time.
        let next = match entry.phase {
            Phase::Running {
                config_changed: true,
            } => match entry.config.unpack() {
                Ok(config) => self.next_tick(&config, tick),
                Err(err) => {
                    tracing::error!(%stream_id, "stream dropped: {err}");
                    None
                }
            },
            _ => self.next_tick(ran_with, tick),
        };
        match next {
            Some(next) => entry.phase = Phase::Waiting(wheel.insert_at(stream_id, next)),
            None => {
                tracing::error!(%stream_id, "schedule has no further tick; stream ends");
                streams.remove(&stream_id);
                self.inner.runner.forget(stream_id);
            }
        }
    }

    fn first_tick(&self, config: &StreamConfig) -> Option<Instant> {
        match &config.schedule {
            Schedule::Interval { millis } => {
                let span = self.inner.start_spread.as_millis().min(*millis as u128) as u64;
                // The UUID's low 64 bits are random in v4 and v7 alike: a stable offset.
                let offset = match span {
                    0 => 0,
                    span => config.stream_id.as_u64_pair().1 % span,
                };
                Some(Instant::now() + Duration::from_millis(offset))
            }
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
}
