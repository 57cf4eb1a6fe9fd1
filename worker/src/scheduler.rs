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
//! Every tick runs a *slot* of the stream's schedule, a wall-clock time every worker computes
//! alike, and the slot names the run's object ([`Runner::run_slot`]): two workers running one
//! stream (a partition) store each slot once. A cron stream's slots are its fire times. An
//! interval stream's slots are a grid, `anchor + k × interval` ms since the epoch, with a stable
//! per-stream anchor in `[0, interval)` (from the stream id, so a worker's streams of one
//! interval are spread over it); its ticks land on the grid, not on a phase of its own.
//!
//! An interval stream's first tick comes after a stable per-stream offset in
//! `[0, min(interval, start_spread))` (see [`Scheduler::with_start_spread`]), so a worker that is
//! handed thousands of streams at once — a restart, a failover — spreads their first calls
//! instead of firing them together; that tick runs the slot it falls in (late), and the next
//! ticks are on the grid. A stream started again within a slot it has run runs that slot again:
//! one more call, and the object already stored is what it reports.

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
    /// The slot (wall-clock ms) of the tick on the wheel, or of the run in flight.
    slot_ms: i64,
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
        let key = table.wheel.insert_at(stream_id, first.at);
        let incarnation = self.inner.incarnations.fetch_add(1, Ordering::Relaxed);
        table.streams.insert(
            stream_id,
            Entry {
                incarnation,
                generation: config.generation,
                slot_ms: first.slot_ms,
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
            let slot_ms = entry.slot_ms;
            drop(table);
            let this = self.clone();
            self.inner.tracker.spawn(async move {
                let lag = Instant::now().saturating_duration_since(tick);
                tracing::trace!(%stream_id, slot_ms, lag_us = lag.as_micros() as u64, "tick");
                let outcome = this.inner.runner.run_slot(&config, tick, slot_ms).await;
                this.ran(stream_id, incarnation, (slot_ms, tick), &config, &outcome);
            });
        }
    }

    /// A run of the slot `slot_ms`, ticked at `tick`, ended: put the stream's next tick on the
    /// wheel, or let it go.
    fn ran(
        &self,
        stream_id: Uuid,
        incarnation: u64,
        (slot_ms, tick): (i64, Instant),
        ran_with: &StreamConfig,
        outcome: &RunOutcome,
    ) {
        let tick_ms =
            self.now_ms() - Instant::now().saturating_duration_since(tick).as_millis() as i64;
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
                Ok(config) => self.next_tick(&config, slot_ms, tick_ms),
                Err(err) => {
                    tracing::error!(%stream_id, "stream dropped: {err}");
                    None
                }
            },
            _ => self.next_tick(ran_with, slot_ms, tick_ms),
        };
        match next {
            Some(next) => {
                entry.slot_ms = next.slot_ms;
                entry.phase = Phase::Waiting(wheel.insert_at(stream_id, next.at));
            }
            None => {
                tracing::error!(%stream_id, "schedule has no further tick; stream ends");
                streams.remove(&stream_id);
                self.inner.runner.forget(stream_id);
            }
        }
    }

    /// A newly started stream's first tick: an interval stream's after its start offset, in
    /// the slot that offset falls in; a cron stream's at its next fire time.
    fn first_tick(&self, config: &StreamConfig) -> Option<Tick> {
        match &config.schedule {
            Schedule::Interval { millis } => {
                let span = self.inner.start_spread.as_millis().min(*millis as u128) as u64;
                // The UUID's low 64 bits are random in v4 and v7 alike: a stable offset.
                let offset = match span {
                    0 => 0,
                    span => config.stream_id.as_u64_pair().1 % span,
                };
                let at_ms = self.now_ms().saturating_add(offset as i64);
                let grid = Grid::of(config.stream_id, *millis);
                Some(Tick {
                    at: Instant::now() + Duration::from_millis(offset),
                    slot_ms: grid.slot_at_or_before(at_ms),
                })
            }
            Schedule::Cron { expr } => self.next_cron(expr, self.now_ms()),
        }
    }

    /// The tick after the slot `previous`: the next slot of the grid (of intervals) or the next
    /// fire time (of cron) that is not past. Slots missed while a run overran are skipped, not
    /// bunched.
    ///
    /// An interval stream's next tick also comes at least half an interval after the previous
    /// tick (`previous_tick_ms`): a first run late in its slot (a start's spread offset) is not
    /// followed at once by the next slot's, so two runs are never closer than half an interval
    /// (the coverage ledger reads two such runs as one slot, two workers in a partition).
    fn next_tick(
        &self,
        config: &StreamConfig,
        previous: i64,
        previous_tick_ms: i64,
    ) -> Option<Tick> {
        let now_ms = self.now_ms();
        match &config.schedule {
            Schedule::Interval { millis } => {
                let grid = Grid::of(config.stream_id, *millis);
                let half = i64::try_from(*millis / 2).unwrap_or(i64::MAX);
                let from = now_ms
                    .max(previous.saturating_add(1))
                    .max(previous_tick_ms.saturating_add(half));
                let slot_ms = grid.slot_at_or_after(from);
                Some(Tick {
                    at: self.instant_at_ms(slot_ms),
                    slot_ms,
                })
            }
            Schedule::Cron { expr } => self.next_cron(expr, now_ms.max(previous)),
        }
    }

    /// The first fire time of `expr` strictly after `after_ms`.
    fn next_cron(&self, expr: &str, after_ms: i64) -> Option<Tick> {
        let cron = parse_cron(expr).ok()?;
        let after = chrono::DateTime::from_timestamp_millis(after_ms)?;
        let at = next_after(&cron, after)?;
        Some(Tick {
            at: self.inner.clock.instant_at(at),
            slot_ms: at.timestamp_millis(),
        })
    }

    fn now_ms(&self) -> i64 {
        self.inner.clock.now().timestamp_millis()
    }

    /// The tokio instant at which the wall clock reads `ms` (now, when past).
    fn instant_at_ms(&self, ms: i64) -> Instant {
        match chrono::DateTime::from_timestamp_millis(ms) {
            Some(at) => self.inner.clock.instant_at(at),
            None => Instant::now(),
        }
    }
}

/// When a stream runs next: the instant, and the schedule's slot it runs.
#[derive(Debug, Clone, Copy)]
struct Tick {
    at: Instant,
    slot_ms: i64,
}

/// An interval stream's slots: `anchor + k × interval` ms since the Unix epoch, the same on
/// every worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    interval_ms: i64,
    anchor_ms: i64,
}

impl Grid {
    /// The grid of `stream_id` at `interval_ms`: its anchor is the stream id's low 64 bits
    /// (random in v4 and v7 ids alike) modulo the interval, so a worker's streams of one interval
    /// are spread over it.
    pub fn of(stream_id: Uuid, interval_ms: u64) -> Self {
        let interval_ms = i64::try_from(interval_ms.max(1)).unwrap_or(i64::MAX);
        let anchor_ms = (stream_id.as_u64_pair().1 % interval_ms as u64) as i64;
        Grid {
            interval_ms,
            anchor_ms,
        }
    }

    /// The latest slot at or before `ms`.
    pub fn slot_at_or_before(self, ms: i64) -> i64 {
        let k = (ms - self.anchor_ms).div_euclid(self.interval_ms);
        self.anchor_ms + k * self.interval_ms
    }

    /// The earliest slot at or after `ms`.
    pub fn slot_at_or_after(self, ms: i64) -> i64 {
        let before = self.slot_at_or_before(ms);
        if before == ms {
            ms
        } else {
            before.saturating_add(self.interval_ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_grid_is_the_streams_own_and_every_worker_finds_the_same_slots() {
        let stream = Uuid::from_u64_pair(0x0190_a1b2_c3d4_7000, 0x8000_0000_0000_2710 + 1_234);
        let grid = Grid::of(stream, 10_000);
        // 0x8000_0000_0000_2710 is a multiple of 10,000.
        let anchor = (0x8000_0000_0000_2710u64 % 10_000 + 1_234) as i64;
        assert_eq!(
            grid.slot_at_or_before(1_000_000 + anchor),
            1_000_000 + anchor
        );
        assert_eq!(
            grid.slot_at_or_before(1_009_999 + anchor),
            1_000_000 + anchor
        );
        assert_eq!(
            grid.slot_at_or_after(1_000_000 + anchor),
            1_000_000 + anchor
        );
        assert_eq!(
            grid.slot_at_or_after(1_000_001 + anchor),
            1_010_000 + anchor
        );
        // Before the anchor (and before the epoch) the grid goes on.
        assert_eq!(grid.slot_at_or_before(anchor - 1), anchor - 10_000);
        // The same stream and interval, whoever asks: the same grid.
        assert_eq!(Grid::of(stream, 10_000), grid);
        for ms in [0, 17, 9_999, 10_000, 1_714_557_600_123] {
            let slot = grid.slot_at_or_before(ms);
            assert!(slot <= ms && ms - slot < 10_000, "{ms}: {slot}");
            assert_eq!((slot - grid.anchor_ms).rem_euclid(10_000), 0);
        }
    }
}
