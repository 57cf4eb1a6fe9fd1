//! One run of a stream: fetch through the adapter (retrying transient errors inside the run's
//! timeout), store the raw bytes untouched, and queue the reference — or the classified failure —
//! for the supervisor.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use objects::{ObjectKey, ObjectMeta, ObjectStore, StoreError};
use protocol::{Event, FailureClass, ResultRecord, RunFailure, StreamConfig};
use rand::Rng;
use tokio::time::{timeout_at, Instant};
use uuid::Uuid;

use crate::adapters::{Adapters, FetchRequest, Retry};
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
}

impl RunOutcome {
    /// Whether the stream must stop (a bad or expired key waits for a person).
    pub fn stops_stream(&self) -> bool {
        matches!(self, RunOutcome::Failed(f) if f.stream_stopped)
    }
}

/// When a run was due and when it started, in ms since the Unix epoch.
#[derive(Debug, Clone, Copy)]
struct Tick {
    scheduled_at_ms: i64,
    started_at_ms: i64,
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
    fn delay(&self, attempt: u32) -> Duration {
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

/// Everything a run needs, shared by all streams of a worker.
pub struct Runner {
    adapters: Adapters,
    store: Arc<dyn ObjectStore>,
    outbox: Arc<Outbox>,
    /// Per-key call budgets and rate-limit backoff, shared by every stream on this worker.
    budgets: KeyBudgets,
    retry: RetryPolicy,
}

impl Runner {
    /// A runner writing events to `outbox`.
    pub fn new(adapters: Adapters, store: Arc<dyn ObjectStore>, outbox: Arc<Outbox>) -> Self {
        Runner {
            adapters,
            store,
            outbox,
            budgets: KeyBudgets::new(Clock::System),
            retry: RetryPolicy::default(),
        }
    }

    /// The same runner with budget windows on `clock` (tests: a clock following tokio's).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.budgets = KeyBudgets::new(clock);
        self
    }

    /// Whether this worker can run streams of `adapter`.
    pub fn has_adapter(&self, adapter: &str) -> bool {
        self.adapters.get(adapter).is_some()
    }

    /// The stream no longer runs here: its limit stops counting towards its key's budget.
    pub fn forget(&self, stream_id: Uuid) {
        self.budgets.forget_stream(stream_id);
    }

    /// Run once, for the tick due at `scheduled` (now, or a moment ago), and queue the
    /// outcome's event.
    pub async fn run(&self, cfg: &StreamConfig, scheduled: Instant) -> RunOutcome {
        let started_at_ms = Utc::now().timestamp_millis();
        let lag = Instant::now().saturating_duration_since(scheduled);
        let tick = Tick {
            scheduled_at_ms: started_at_ms - lag.as_millis() as i64,
            started_at_ms,
        };
        let outcome = self.attempt(cfg, tick).await;
        let event = match &outcome {
            RunOutcome::Stored(record) => Event::Results(record.clone()),
            RunOutcome::Failed(failure) => {
                tracing::warn!(
                    stream_id = %cfg.stream_id,
                    class = %failure.class,
                    stream_stopped = failure.stream_stopped,
                    "run failed: {}", failure.message
                );
                Event::RunFailed(failure.clone())
            }
        };
        self.outbox.push(event);
        outcome
    }

    async fn attempt(&self, cfg: &StreamConfig, tick: Tick) -> RunOutcome {
        let deadline = Instant::now() + Duration::from_millis(cfg.timeout_ms.max(1));
        let fail = |class, message: String, stream_stopped| {
            RunOutcome::Failed(RunFailure {
                run_id: Uuid::now_v7(),
                stream_id: cfg.stream_id,
                at_ms: Utc::now().timestamp_millis(),
                class,
                message,
                stream_stopped,
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

        // Store the bytes exactly as received. The UUIDv7 carries the fetch time.
        let result_id = Uuid::now_v7();
        let fetched_at = fetch_time(result_id);
        let key = ObjectKey::new(
            &cfg.adapter,
            cfg.stream_id,
            fetched_at.date_naive(),
            result_id,
        )
        .to_string();
        let sha256 = objects::sha256_hex(&fetched.body);
        let meta = ObjectMeta {
            stream_id: cfg.stream_id.to_string(),
            fetched_at: fetched_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sha256: sha256.clone(),
        };
        let size = fetched.body.len() as u64;
        if let Err(err) = self
            .put_with_retry(&cfg.bucket_name, &key, fetched.body, &meta, deadline)
            .await
        {
            return fail(FailureClass::Storage, err.to_string(), false);
        }
        RunOutcome::Stored(ResultRecord {
            result_id,
            stream_id: cfg.stream_id,
            adapter: cfg.adapter.clone(),
            bucket: cfg.bucket_name.clone(),
            key,
            fetched_at_ms: fetched_at.timestamp_millis(),
            scheduled_at_ms: tick.scheduled_at_ms,
            started_at_ms: tick.started_at_ms,
            size,
            sha256,
            measurement: fetched.measurement.map(Box::new),
        })
    }

    async fn put_with_retry(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
        deadline: Instant,
    ) -> Result<(), PutError> {
        let mut attempt = 0u32;
        let mut last: Option<StoreError> = None;
        loop {
            let err =
                match timeout_at(deadline, self.store.put(bucket, key, body.clone(), meta)).await {
                    Ok(Ok(())) => return Ok(()),
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

/// The wall-clock time embedded in a UUIDv7.
pub fn fetch_time(result_id: Uuid) -> DateTime<Utc> {
    objects::uuid_time_ms(result_id)
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(Utc::now)
}
