//! One run of a stream: fetch through the adapter (retrying transient errors inside the run's
//! timeout), store the raw bytes untouched, and queue the reference — or the classified failure —
//! for the supervisor.
//!
//! Object-store puts are bounded per worker ([`DEFAULT_STORE_CONCURRENCY`],
//! `WORKER_STORE_CONCURRENCY`): a run waits for a permit before its put, and the put's time
//! (the run's timeout, retries included) counts from when it starts, not from when it queued.
//! An overloaded store then means fewer, slower runs — a stream whose run waits skips its
//! missed ticks — instead of puts that all slow down together until they fail as `storage`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use objects::{Created, ObjectKey, ObjectMeta, ObjectStore, StoreError};
use protocol::{
    Event, FailureClass, JobState, JobStep, Measurement, ResultRecord, RunFailure, RunReport,
    RunStatus, RunWindow, Schedule, StreamConfig,
};
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};
use uuid::Uuid;

use crate::adapters::{
    AdapterError, Adapters, CallBudget, FetchRequest, PageSink, PagedAdapter, PagedRun, Retry,
};
use crate::clock::Clock;
use crate::outbox::Outbox;
use crate::ratelimit::KeyBudgets;

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// The raw object is stored and its reference queued.
    Stored(ResultRecord),
    /// No object; the failure is queued.
    Failed(RunFailure),
    /// A run of several steps ended (stored, truncated or failed); its report is queued.
    Paged(Box<RunReport>),
}

impl RunOutcome {
    /// Whether the stream must stop (a bad or expired key waits for a person).
    pub fn stops_stream(&self) -> bool {
        match self {
            RunOutcome::Failed(f) => f.stream_stopped,
            RunOutcome::Paged(report) => report.stream_stopped,
            RunOutcome::Stored(_) => false,
        }
    }
}

/// When a run was due and when it started, in ms since the Unix epoch, and the schedule's slot
/// it runs (when the scheduler gave one).
#[derive(Debug, Clone, Copy)]
struct Tick {
    scheduled_at_ms: i64,
    started_at_ms: i64,
    slot_ms: Option<i64>,
}

/// Backoff for transient errors inside one run.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with full jitter: a random wait in [d/2, d] for attempt n.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let half = exp / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }
}

/// Why the raw bytes could not be stored within the run's time.
#[derive(Debug, thiserror::Error)]
enum PutError {
    /// The store refused for good (a bad name, a missing bucket it may not create).
    #[error(transparent)]
    Refused(StoreError),
    /// Transient errors until the next retry would pass the deadline.
    #[error("{last} (gave up after {attempts} attempts)")]
    GaveUp { last: StoreError, attempts: u32 },
    /// The deadline passed during an attempt; the last earlier error says why it was slow.
    #[error("object store ({store}) did not take {bucket}/{key} before the run's timeout ({attempts} attempts){}", last.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    Deadline {
        store: String,
        bucket: String,
        key: String,
        attempts: u32,
        last: Option<StoreError>,
    },
}

/// Object-store puts in flight at once per worker, by default.
pub const DEFAULT_STORE_CONCURRENCY: usize = 64;

/// Everything a run needs, shared by all streams of a worker.
pub struct Runner {
    adapters: Adapters,
    store: Arc<dyn ObjectStore>,
    /// One permit per put in flight (retries included).
    puts: Semaphore,
    outbox: Arc<Outbox>,
    /// Per-key call budgets and rate-limit backoff, shared by every stream on this worker.
    budgets: KeyBudgets,
    retry: RetryPolicy,
    /// Where each paged stream's next window starts (ms): the end of its last stored window
    /// here. The supervisor's `window_start_ms` may be older (events in flight); the later wins.
    windows: Mutex<HashMap<Uuid, i64>>,
    /// Per paged stream whose last run failed: the window it started at and the SHA-256 of
    /// each page it stored. The next run covers that window again (a failed run stores no
    /// window); a page byte-identical to one stored then is not stored twice.
    carried: Mutex<HashMap<Uuid, Carried>>,
}

/// What a failed paged run leaves for the next run of its window.
#[derive(Debug, Clone, Default)]
struct Carried {
    window_start_ms: i64,
    pages: HashMap<u32, String>,
}

impl Runner {
    /// A runner writing events to `outbox`.
    pub fn new(adapters: Adapters, store: Arc<dyn ObjectStore>, outbox: Arc<Outbox>) -> Self {
        Runner {
            adapters,
            store,
            puts: Semaphore::new(DEFAULT_STORE_CONCURRENCY),
            outbox,
            budgets: KeyBudgets::new(Clock::System),
            retry: RetryPolicy::default(),
            windows: Mutex::new(HashMap::new()),
            carried: Mutex::new(HashMap::new()),
        }
    }

    /// The same runner with budget windows on `clock` (tests: a clock following tokio's).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.budgets = KeyBudgets::new(clock);
        self
    }

    /// The same runner with at most `puts` object-store puts in flight (at least one).
    pub fn with_store_concurrency(mut self, puts: usize) -> Self {
        self.puts = Semaphore::new(puts.max(1));
        self
    }

    /// Whether this worker can run streams of `adapter`.
    pub fn has_adapter(&self, adapter: &str) -> bool {
        self.adapters.get(adapter).is_some()
    }

    /// The stream no longer runs here: its limit stops counting towards its key's budget.
    pub fn forget(&self, stream_id: Uuid) {
        self.budgets.forget_stream(stream_id);
        self.windows().remove(&stream_id);
        self.carried().remove(&stream_id);
    }

    fn carried(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Carried>> {
        self.carried.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, i64>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The incremental window of a run of `cfg` for the slot at `slot_ms`: from the end of the
    /// last stored window (this worker's, or the supervisor's), else one schedule period
    /// before the slot, to the slot.
    pub fn window_for(&self, cfg: &StreamConfig, slot_ms: i64) -> RunWindow {
        let known = self.windows().get(&cfg.stream_id).copied();
        let start = match (known, cfg.window_start_ms) {
            (Some(a), Some(b)) => a.max(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => slot_ms - period_ms(&cfg.schedule, slot_ms),
        };
        RunWindow {
            start_ms: start.min(slot_ms),
            end_ms: slot_ms,
        }
    }

    /// Run once, for the tick due at `scheduled` (now, or a moment ago), outside the schedule's
    /// slots (its object gets a fresh result id), and queue the outcome's event.
    pub async fn run(&self, cfg: &StreamConfig, scheduled: Instant) -> RunOutcome {
        self.run_at(cfg, scheduled, None).await
    }

    /// Run the schedule's slot `slot_ms` (ms since the Unix epoch, the same on every worker),
    /// due at `scheduled`, and queue the outcome's event. A single fetch's object gets the
    /// slot's result id ([`objects::slot_result_id`]) and is stored only if the slot is not
    /// stored yet: a second fetch of the slot, by another worker or by this one, reports the
    /// object already there.
    pub async fn run_slot(
        &self,
        cfg: &StreamConfig,
        scheduled: Instant,
        slot_ms: i64,
    ) -> RunOutcome {
        self.run_at(cfg, scheduled, Some(slot_ms)).await
    }

    async fn run_at(
        &self,
        cfg: &StreamConfig,
        scheduled: Instant,
        slot_ms: Option<i64>,
    ) -> RunOutcome {
        let started_at_ms = Utc::now().timestamp_millis();
        let lag = Instant::now().saturating_duration_since(scheduled);
        let tick = Tick {
            scheduled_at_ms: started_at_ms - lag.as_millis() as i64,
            started_at_ms,
            slot_ms,
        };
        if let Some(paged) = self
            .adapters
            .get(&cfg.adapter)
            .as_deref()
            .and_then(|adapter| adapter.paged(cfg))
        {
            return self.run_paged(paged, cfg, tick).await;
        }
        let outcome = self.attempt(cfg, tick).await;
        let event = match &outcome {
            RunOutcome::Stored(record) => Event::Results(Arc::new(record.clone())),
            RunOutcome::Failed(failure) => {
                tracing::warn!(
                    stream_id = %cfg.stream_id,
                    class = %failure.class,
                    stream_stopped = failure.stream_stopped,
                    "run failed: {}", failure.message
                );
                Event::RunFailed(Arc::new(failure.clone()))
            }
            RunOutcome::Paged(report) => Event::Run(report.clone()),
        };
        self.outbox.push(event);
        outcome
    }

    async fn attempt(&self, cfg: &StreamConfig, tick: Tick) -> RunOutcome {
        let deadline = Instant::now() + Duration::from_millis(cfg.timeout_ms.max(1));
        let run_id = Uuid::now_v7();
        // Calls made: a permit taken is a call made.
        let calls = AtomicU32::new(0);
        let fail = |class, message: String, stream_stopped| {
            RunOutcome::Failed(RunFailure {
                run_id,
                stream_id: cfg.stream_id,
                at_ms: Utc::now().timestamp_millis(),
                class,
                message,
                stream_stopped,
                scheduled_at_ms: tick.scheduled_at_ms,
                started_at_ms: tick.started_at_ms,
                attempts: calls.load(Ordering::Relaxed),
            })
        };

        let Some(adapter) = self.adapters.get(&cfg.adapter) else {
            return fail(
                FailureClass::Api,
                format!("this worker has no adapter {:?}", cfg.adapter),
                false,
            );
        };

        // Fetch, retrying transient errors while the run's time lasts. Every call, a retry
        // too, takes a permit from the key's budget first; none left means no call.
        let mut attempt = 0u32;
        let mut previous: Option<String> = None;
        let fetched = loop {
            if let Err(denied) =
                self.budgets
                    .acquire(cfg.stream_id, &cfg.secret_key, cfg.rate_limit)
            {
                let message = match &previous {
                    None => denied.message(),
                    Some(err) => format!(
                        "{err}; no retry after {attempt} attempts: {}",
                        denied.message()
                    ),
                };
                return fail(FailureClass::RateLimited, message, false);
            }
            calls.fetch_add(1, Ordering::Relaxed);
            let request = FetchRequest {
                endpoint: &cfg.endpoint,
                secret_key: &cfg.secret_key,
                params: &cfg.params,
            };
            let err = match timeout_at(deadline, adapter.fetch(request)).await {
                Ok(Ok(fetched)) => break fetched,
                Ok(Err(err)) => err,
                Err(_) => {
                    return fail(
                        FailureClass::Timeout,
                        format!(
                            "no complete answer within {} ms (attempt {})",
                            cfg.timeout_ms,
                            attempt + 1
                        ),
                        false,
                    )
                }
            };
            match err.retry {
                Retry::Transient => {
                    let wait = self.retry.delay(attempt);
                    attempt += 1;
                    if Instant::now() + wait >= deadline {
                        return fail(
                            err.class,
                            format!("{} (gave up after {attempt} attempts)", err.message),
                            false,
                        );
                    }
                    previous = Some(err.message);
                    tokio::time::sleep(wait).await;
                }
                Retry::RateLimited(scope) => {
                    self.budgets.block(&cfg.secret_key, &scope);
                    return fail(err.class, err.message, false);
                }
                Retry::StopStream => return fail(err.class, err.message, true),
                Retry::NextTick => return fail(err.class, err.message, false),
            }
        };

        // Store the bytes exactly as received, under the slot's result id (a UUIDv7 of the
        // slot) or, outside the schedule, a UUIDv7 of the fetch time.
        let sha256 = objects::sha256_hex(&fetched.body);
        let object = NewObject::of(cfg, &sha256, tick.slot_ms);
        let put_time = Duration::from_millis(cfg.timeout_ms.max(1));
        let stored = match self
            .put_with_retry(
                &cfg.bucket_name,
                &object.key,
                fetched.body.clone(),
                &object.meta,
                put_time,
                None,
            )
            .await
        {
            Ok(created) => {
                self.stored_object(cfg, &object, &fetched.body, created)
                    .await
            }
            Err(err) => Err(err.to_string()),
        };
        let stored = match stored {
            Ok(stored) => stored,
            Err(message) => return fail(FailureClass::Storage, message, false),
        };
        let NewObject { result_id, key, .. } = object;
        RunOutcome::Stored(ResultRecord {
            result_id,
            stream_id: cfg.stream_id,
            adapter: cfg.adapter.clone(),
            bucket: cfg.bucket_name.clone(),
            key,
            fetched_at_ms: stored.fetched_at_ms,
            scheduled_at_ms: tick.scheduled_at_ms,
            started_at_ms: tick.started_at_ms,
            size: stored.size,
            sha256: stored.sha256,
            // A reading belongs to the bytes it was parsed from: when the stored object is
            // another fetch's, its reading comes with that fetch's report (or a re-parse).
            measurement: fetched.measurement.filter(|_| stored.ours).map(Box::new),
            run_id,
            page: 0,
            records: None,
            attempts: calls.load(Ordering::Relaxed),
            ends_run: true,
        })
    }

    /// A run of several steps: the adapter drives it through a [`PagedRun`]; this records it.
    async fn run_paged(
        &self,
        paged: &dyn PagedAdapter,
        cfg: &StreamConfig,
        tick: Tick,
    ) -> RunOutcome {
        let deadline = Instant::now() + Duration::from_millis(cfg.timeout_ms.max(1));
        let run_id = Uuid::now_v7();
        let window = self.window_for(cfg, tick.scheduled_at_ms);
        let report = RunReport {
            run_id,
            stream_id: cfg.stream_id,
            scheduled_at_ms: tick.scheduled_at_ms,
            started_at_ms: tick.started_at_ms,
            finished_at_ms: None,
            status: RunStatus::Running,
            attempts: 0,
            pages: 0,
            records: None,
            bytes: 0,
            window: Some(window),
            job: Vec::new(),
            class: None,
            message: None,
            stream_stopped: false,
        };
        self.outbox.push(Event::Run(Box::new(report.clone())));
        let known = self
            .carried()
            .remove(&cfg.stream_id)
            .filter(|c| c.window_start_ms == window.start_ms)
            .map(|c| c.pages)
            .unwrap_or_default();
        let record = RunRecord {
            runner: self,
            cfg,
            tick,
            deadline,
            report: Mutex::new(report),
            calls: AtomicU32::new(0),
            known,
            stored: Mutex::new(HashMap::new()),
            reused: AtomicU32::new(0),
            queued: QueueTime::default(),
        };
        let run = PagedRun {
            cfg,
            run_id,
            slot_ms: tick.scheduled_at_ms,
            window,
            deadline,
            budget: &record,
            sink: &record,
        };
        // The run's time does not count its pages' waits for a put permit.
        let running = paged.run(run);
        tokio::pin!(running);
        let ended = loop {
            match timeout_at(deadline + record.queued.total(), running.as_mut()).await {
                Ok(ended) => break ended,
                // A page waited for a permit meanwhile: the deadline moved.
                Err(_) if deadline + record.queued.total() > Instant::now() => continue,
                Err(_) => {
                    break Err(AdapterError::new(
                        FailureClass::Timeout,
                        format!("the run did not end within {} ms", cfg.timeout_ms),
                        Retry::NextTick,
                    ))
                }
            }
        };
        let mut report = record.report().clone();
        report.attempts = record.calls.load(Ordering::Relaxed);
        report.finished_at_ms = Some(Utc::now().timestamp_millis());
        let reused = record.reused.load(Ordering::Relaxed);
        let reused_note = (reused > 0).then(|| {
            format!(
                "{reused} page(s) identical to what the failed run of this window stored were \
                 not stored again"
            )
        });
        match ended {
            Ok(end) => {
                report.status = if end.truncated {
                    RunStatus::Truncated
                } else {
                    RunStatus::Stored
                };
                report.message = match (end.note, reused_note) {
                    (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                    (a, b) => a.or(b),
                };
                // The next run starts where this one ended, stored or truncated (a truncated
                // run says so on its record; fetching the same window again would truncate
                // again).
                let mut windows = self.windows();
                let next = windows.entry(cfg.stream_id).or_insert(window.end_ms);
                *next = (*next).max(window.end_ms);
            }
            Err(err) => {
                if let Retry::RateLimited(scope) = err.retry {
                    self.budgets.block(&cfg.secret_key, &scope);
                }
                tracing::warn!(
                    stream_id = %cfg.stream_id,
                    %run_id,
                    class = %err.class,
                    pages = report.pages,
                    "run failed: {}", err.message
                );
                report.status = RunStatus::Failed;
                report.stream_stopped = err.retry == Retry::StopStream;
                report.class = Some(err.class);
                report.message = Some(err.message);
                // The next run covers this window again: what was stored stays known.
                let mut pages = record.known.clone();
                pages.extend(record.stored_pages().drain());
                self.carried().insert(
                    cfg.stream_id,
                    Carried {
                        window_start_ms: window.start_ms,
                        pages,
                    },
                );
            }
        }
        let report = Box::new(report);
        self.outbox.push(Event::Run(report.clone()));
        RunOutcome::Paged(report)
    }

    /// What the store holds under `object`'s key once its put answered `created`: this
    /// fetch's bytes, or (the key was taken) the object already there, described by its own
    /// metadata. Its key was taken by another fetch of the same slot (another worker's during
    /// a partition, or this worker's before a restart), or by an earlier attempt of this put
    /// whose answer was lost. Either way the first stored wins and is what gets reported;
    /// nothing is stored twice. An object without metadata (written by hand, or caught between
    /// its link and its metadata in the folder store's tree mode) is read and hashed.
    async fn stored_object(
        &self,
        cfg: &StreamConfig,
        object: &NewObject,
        body: &Bytes,
        created: Created,
    ) -> Result<StoredObject, String> {
        let ours = StoredObject {
            size: body.len() as u64,
            sha256: object.meta.sha256.clone(),
            fetched_at_ms: object.fetched_at.timestamp_millis(),
            ours: true,
        };
        let info = match created {
            Created::New => return Ok(ours),
            Created::Existing(info) => info,
        };
        let (sha256, size, fetched_at_ms) = match info.meta {
            Some(meta) => {
                let fetched_at_ms = DateTime::parse_from_rfc3339(&meta.fetched_at)
                    .map_or(ours.fetched_at_ms, |at| at.timestamp_millis());
                (meta.sha256.to_ascii_lowercase(), info.size, fetched_at_ms)
            }
            None => {
                let read = self.store.get(&cfg.bucket_name, &object.key);
                let stored =
                    tokio::time::timeout(Duration::from_millis(cfg.timeout_ms.max(1)), read)
                        .await
                        .unwrap_or_else(|_| {
                            Err(StoreError::Unreachable {
                                endpoint: self.store.describe(),
                                detail: format!("no answer within {} ms", cfg.timeout_ms),
                                source: "timeout".into(),
                            })
                        })
                        .map_err(|err| {
                            format!(
                                "an object is stored under {} already, but cannot be read: {err}",
                                object.key
                            )
                        })?;
                let stored_size = stored.len() as u64;
                (
                    objects::sha256_hex(&stored),
                    stored_size,
                    ours.fetched_at_ms,
                )
            }
        };
        let same_bytes = sha256 == ours.sha256;
        if same_bytes {
            tracing::debug!(
                stream_id = %cfg.stream_id,
                key = %object.key,
                "stored already with the same bytes; reporting it"
            );
        } else {
            tracing::info!(
                stream_id = %cfg.stream_id,
                key = %object.key,
                "stored already by another fetch of the slot with other bytes; the first \
                 stored wins and is reported"
            );
        }
        Ok(StoredObject {
            size,
            sha256,
            fetched_at_ms,
            ours: same_bytes,
        })
    }

    /// Store `body` once a put permit is free, if its key holds nothing yet
    /// ([`ObjectStore::put_new`]), retrying transient errors for `put_time` from then; the time waiting for the permit goes
    /// to `queued` when given.
    async fn put_with_retry(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
        put_time: Duration,
        queued: Option<&QueueTime>,
    ) -> Result<Created, PutError> {
        let waiting = queued.map(QueueTime::start);
        let _permit = self
            .puts
            .acquire()
            .await
            .expect("the put semaphore is never closed");
        drop(waiting);
        let deadline = Instant::now() + put_time;
        let mut attempt = 0u32;
        let mut last: Option<StoreError> = None;
        loop {
            let err = match timeout_at(
                deadline,
                self.store.put_new(bucket, key, body.clone(), meta),
            )
            .await
            {
                Ok(Ok(created)) => return Ok(created),
                Ok(Err(err)) => err,
                Err(_) => {
                    // Say why the earlier attempts failed, not only that time ran out.
                    return Err(PutError::Deadline {
                        store: self.store.describe(),
                        bucket: bucket.to_owned(),
                        key: key.to_owned(),
                        attempts: attempt + 1,
                        last,
                    });
                }
            };
            if !err.is_transient() {
                return Err(PutError::Refused(err));
            }
            let wait = self.retry.delay(attempt);
            attempt += 1;
            if Instant::now() + wait >= deadline {
                return Err(PutError::GaveUp {
                    last: err,
                    attempts: attempt,
                });
            }
            last = Some(err);
            tokio::time::sleep(wait).await;
        }
    }
}

/// One schedule period before `slot_ms`: the interval, or the gap between the cron slot and
/// the one after it.
fn period_ms(schedule: &Schedule, slot_ms: i64) -> i64 {
    match schedule {
        Schedule::Interval { millis } => i64::try_from(*millis).unwrap_or(i64::MAX),
        Schedule::Cron { expr } => protocol::schedule::parse_cron(expr)
            .ok()
            .zip(DateTime::from_timestamp_millis(slot_ms))
            .and_then(|(cron, slot)| protocol::schedule::next_after(&cron, slot))
            .map_or(60_000, |next| (next.timestamp_millis() - slot_ms).max(1)),
    }
}

/// Time a run spent with at least one of its pages waiting for a put permit (pages may be
/// stored concurrently, so overlapping waits count once).
#[derive(Debug, Default)]
struct QueueTime {
    waits: Mutex<Waits>,
}

#[derive(Debug, Default)]
struct Waits {
    /// Finished time with a page waiting.
    done: Duration,
    /// Pages waiting now, and since when at least one has been.
    waiting: usize,
    since: Option<Instant>,
}

impl QueueTime {
    fn waits(&self) -> std::sync::MutexGuard<'_, Waits> {
        self.waits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A page starts waiting; it stops when the guard drops.
    fn start(&self) -> QueueWait<'_> {
        let mut waits = self.waits();
        waits.waiting += 1;
        waits.since.get_or_insert_with(Instant::now);
        QueueWait(self)
    }

    /// Every wait so far, the one going on included.
    fn total(&self) -> Duration {
        let waits = self.waits();
        waits.done + waits.since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// A page waiting for a put permit; dropping it ends its wait.
struct QueueWait<'a>(&'a QueueTime);

impl Drop for QueueWait<'_> {
    fn drop(&mut self) {
        let mut waits = self.0.waits();
        waits.waiting -= 1;
        if waits.waiting == 0 {
            if let Some(since) = waits.since.take() {
                waits.done += since.elapsed();
            }
        }
    }
}

/// A paged run as it goes: its record, its calls, and the sink and budget its adapter uses.
struct RunRecord<'a> {
    runner: &'a Runner,
    cfg: &'a StreamConfig,
    tick: Tick,
    deadline: Instant,
    report: Mutex<RunReport>,
    calls: AtomicU32,
    /// Pages the failed run before stored for the same window: page → SHA-256.
    known: HashMap<u32, String>,
    /// Pages this run stored: page → SHA-256.
    stored: Mutex<HashMap<u32, String>>,
    /// Pages not stored again because `known` had them byte for byte.
    reused: AtomicU32,
    /// Time its pages waited for put permits: added to the run's deadline.
    queued: QueueTime,
}

impl RunRecord<'_> {
    fn report(&self) -> std::sync::MutexGuard<'_, RunReport> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stored_pages(&self) -> std::sync::MutexGuard<'_, HashMap<u32, String>> {
        self.stored.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn store_page(
        &self,
        page: u32,
        body: Bytes,
        records: Option<u64>,
        measurement: Option<Measurement>,
    ) -> Result<(), AdapterError> {
        let cfg = self.cfg;
        let sha256 = objects::sha256_hex(&body);
        if self.known.get(&page) == Some(&sha256) {
            // Stored (and referenced) by the failed run of this window already.
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        // Pages keep ids of their fetch time, not of the slot: a page is one request of a
        // window that depends on what this worker stored before, so another worker's page of
        // the same number and slot need not be the same request.
        let object = NewObject::of(cfg, &sha256, None);
        let put_time = Duration::from_millis(cfg.timeout_ms.max(1));
        let storage =
            |message: String| AdapterError::new(FailureClass::Storage, message, Retry::NextTick);
        let created = self
            .runner
            .put_with_retry(
                &cfg.bucket_name,
                &object.key,
                body.clone(),
                &object.meta,
                put_time,
                Some(&self.queued),
            )
            .await
            .map_err(|err| storage(err.to_string()))?;
        let stored = self
            .runner
            .stored_object(cfg, &object, &body, created)
            .await
            .map_err(storage)?;
        let NewObject { result_id, key, .. } = object;
        let (size, sha256) = (stored.size, stored.sha256);
        // Known to the next run of this window should this one fail.
        self.stored_pages().insert(page, sha256.clone());
        let run_id = {
            let mut report = self.report();
            report.pages += 1;
            report.bytes += size;
            if let Some(n) = records {
                report.records = Some(report.records.unwrap_or(0) + n);
            }
            report.run_id
        };
        let record = ResultRecord {
            result_id,
            stream_id: cfg.stream_id,
            adapter: cfg.adapter.clone(),
            bucket: cfg.bucket_name.clone(),
            key,
            fetched_at_ms: stored.fetched_at_ms,
            scheduled_at_ms: self.tick.scheduled_at_ms,
            started_at_ms: self.tick.started_at_ms,
            size,
            sha256,
            measurement: measurement.filter(|_| stored.ours).map(Box::new),
            run_id,
            page,
            records,
            attempts: self.calls.load(Ordering::Relaxed),
            ends_run: false,
        };
        self.runner.outbox.push(Event::Results(Arc::new(record)));
        Ok(())
    }

    async fn take_permit(&self) -> Result<(), AdapterError> {
        let cfg = self.cfg;
        loop {
            let denied =
                match self
                    .runner
                    .budgets
                    .acquire(cfg.stream_id, &cfg.secret_key, cfg.rate_limit)
                {
                    Ok(()) => {
                        self.calls.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    Err(denied) => denied,
                };
            let until = match &denied {
                crate::ratelimit::Denied::Backoff { until } => *until,
                crate::ratelimit::Denied::Budget { next_at, .. } => {
                    let wait = (*next_at - Utc::now()).to_std().unwrap_or_default();
                    Instant::now() + wait
                }
            };
            if until >= self.deadline {
                return Err(AdapterError::new(
                    FailureClass::RateLimited,
                    format!("{}; the run's time ends first", denied.message()),
                    Retry::NextTick,
                ));
            }
            // Wake a little after the window frees, and look again.
            tokio::time::sleep_until(until + Duration::from_millis(5)).await;
        }
    }
}

impl CallBudget for RunRecord<'_> {
    fn permit(&self) -> BoxFuture<'_, Result<(), AdapterError>> {
        Box::pin(self.take_permit())
    }

    fn block_until(&self, until: Instant) {
        self.runner.budgets.block_until(&self.cfg.secret_key, until);
    }
}

impl PageSink for RunRecord<'_> {
    fn store(
        &self,
        page: u32,
        body: Bytes,
        records: Option<u64>,
        measurement: Option<Measurement>,
    ) -> BoxFuture<'_, Result<(), AdapterError>> {
        Box::pin(self.store_page(page, body, records, measurement))
    }

    fn job_state(&self, state: JobState) {
        let snapshot = {
            let mut report = self.report();
            report.job.push(JobStep {
                state,
                at_ms: Utc::now().timestamp_millis(),
            });
            report.status = match state {
                JobState::Queued | JobState::Resubmitted => RunStatus::Queued,
                JobState::Processing => RunStatus::Processing,
                // Downloading, or done downloading: the run's end says the rest.
                JobState::Success | JobState::Downloaded | JobState::Failed => RunStatus::Running,
            };
            report.attempts = self.calls.load(Ordering::Relaxed);
            report.clone()
        };
        self.runner.outbox.push(Event::Run(Box::new(snapshot)));
    }
}

/// A raw object about to be stored: its result id, its key in the current layout, and its
/// metadata.
struct NewObject {
    result_id: Uuid,
    fetched_at: DateTime<Utc>,
    key: String,
    meta: ObjectMeta,
}

/// The object a put left under its key: this fetch's (`ours`), or one with the same bytes, or
/// another fetch's (`ours` false), as its metadata describes it.
struct StoredObject {
    size: u64,
    sha256: String,
    fetched_at_ms: i64,
    ours: bool,
}

impl NewObject {
    /// The object of a fetch that ended now. In a slot, its result id is the slot's (a UUIDv7
    /// of the slot, the same on every worker; [`objects::slot_result_id`]); outside one, a
    /// UUIDv7 of now. Either way the key's day is the day in the id, so one stream's keys sort
    /// by time; the fetch time is in the metadata.
    fn of(cfg: &StreamConfig, sha256: &str, slot_ms: Option<i64>) -> Self {
        let (result_id, fetched_at) = match slot_ms {
            Some(slot_ms) => (
                objects::slot_result_id(cfg.stream_id, slot_ms),
                DateTime::from_timestamp_millis(Utc::now().timestamp_millis())
                    .unwrap_or_else(Utc::now),
            ),
            None => {
                let result_id = Uuid::now_v7();
                (result_id, fetch_time(result_id))
            }
        };
        let key = ObjectKey::for_result(&cfg.adapter, cfg.stream_id, result_id).to_string();
        let meta = ObjectMeta {
            stream_id: cfg.stream_id.to_string(),
            fetched_at: fetched_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sha256: sha256.to_owned(),
        };
        NewObject {
            result_id,
            fetched_at,
            key,
            meta,
        }
    }
}

/// The wall-clock time embedded in a UUIDv7.
pub fn fetch_time(result_id: Uuid) -> DateTime<Utc> {
    objects::uuid_time_ms(result_id)
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(Utc::now)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use objects::{FolderStore, StoreOptions};
    use protocol::RateLimit;

    use super::*;
    use crate::adapters::{Adapter, FetchRequest, Fetched};

    /// A source whose runs store one page: the run's time is all in the store.
    struct OnePage;

    impl Adapter for OnePage {
        fn name(&self) -> &'static str {
            "ONE_PAGE"
        }
        fn fetch<'a>(
            &'a self,
            _req: FetchRequest<'a>,
        ) -> BoxFuture<'a, Result<Fetched, AdapterError>> {
            Box::pin(async { unreachable!("runs of ONE_PAGE are paged") })
        }
        fn paged(&self, _cfg: &StreamConfig) -> Option<&dyn PagedAdapter> {
            Some(self)
        }
    }

    impl PagedAdapter for OnePage {
        fn run<'a>(
            &'a self,
            run: PagedRun<'a>,
        ) -> BoxFuture<'a, Result<crate::adapters::RunEnd, AdapterError>> {
            Box::pin(async move {
                run.sink
                    .store(0, Bytes::from_static(b"{\"page\":0}"), Some(1), None)
                    .await?;
                Ok(crate::adapters::RunEnd::default())
            })
        }
    }

    #[tokio::test]
    async fn a_page_waiting_for_a_put_permit_does_not_use_up_its_runs_time() {
        let folder = tempfile::tempdir().unwrap();
        let store = FolderStore::new(
            folder.path(),
            StoreOptions {
                create_buckets: true,
            },
        )
        .await
        .unwrap();
        let outbox = Arc::new(Outbox::new(100));
        let runner = Runner::new(
            Adapters::from_list(vec![Arc::new(OnePage) as Arc<dyn Adapter>]),
            Arc::new(store),
            outbox,
        )
        .with_store_concurrency(1);
        let cfg = StreamConfig {
            stream_id: Uuid::now_v7(),
            generation: 1,
            adapter: "ONE_PAGE".into(),
            endpoint: "http://api.example/items".into(),
            secret_key: "key-1".into(),
            schedule: Schedule::Interval { millis: 60_000 },
            timeout_ms: 1_000,
            bucket_name: "results".into(),
            params: BTreeMap::new(),
            rate_limit: RateLimit::UNLIMITED,
            source: String::new(),
            window_start_ms: None,
        };

        // Every put permit is taken (other runs' puts in flight).
        let taken = runner.puts.acquire().await.unwrap();
        let run = runner.run(&cfg, Instant::now());
        tokio::pin!(run);
        // Twice the run's timeout passes with its page waiting: the run is not over.
        let waited = tokio::time::timeout(Duration::from_millis(2_000), run.as_mut()).await;
        assert!(
            waited.is_err(),
            "the run ended while its page waited: {waited:?}"
        );
        drop(taken);
        match run.await {
            RunOutcome::Paged(report) => {
                assert_eq!(report.status, RunStatus::Stored, "{report:?}");
                assert_eq!(report.pages, 1);
            }
            other => panic!("expected a paged run, got {other:?}"),
        }
    }
}
