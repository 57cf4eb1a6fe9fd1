//! Runs of several steps: many pages (`HTTP_JSON`), an async report job, a whole country's cities
//! (an IQAir sweep). The adapter drives the calls; the runner ([`crate::runner`]) owns what the
//! adapter must not decide for itself: the key's call budget, the object store, the events, and
//! the run's record. The adapter sees them through [`PagedRun`].
//!
//! Memory: an adapter hands each page to [`PageSink::store`] as soon as it has it and keeps
//! only counters, so no run ever holds all of its pages.

use bytes::Bytes;
use futures::future::BoxFuture;
use protocol::{JobState, Measurement, RunWindow, StreamConfig};
use tokio::time::Instant;
use uuid::Uuid;

use super::AdapterError;

/// Everything one paged run may use.
pub struct PagedRun<'a> {
    /// The stream's config (endpoint, key, params, and `source`: the adapter's own spec).
    pub cfg: &'a StreamConfig,
    /// This run's id (every page's reference carries it).
    pub run_id: Uuid,
    /// The slot (tick) this run is for, ms since the Unix epoch.
    pub slot_ms: i64,
    /// The incremental window: from the end of the last stored window (or the stream's
    /// `start_at`, or one period before the slot) to the slot.
    pub window: RunWindow,
    /// The run's timeout: every call, poll and store must end by then.
    pub deadline: Instant,
    /// The key's calls: take a permit before every call.
    pub budget: &'a dyn CallBudget,
    /// Where pages go.
    pub sink: &'a dyn PageSink,
}

/// How a paged run ended when it did not fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunEnd {
    /// More pages were there than `max_pages` allowed: what was fetched is stored, and the run
    /// is recorded `truncated`, with `note` saying what was left.
    pub truncated: bool,
    /// A sentence for the run's record (e.g. why it was truncated).
    pub note: Option<String>,
}

/// The key's call budget, as one run sees it.
pub trait CallBudget: Send + Sync {
    /// One permit for one call on the stream's key. When the key is blocked for a moment (a
    /// `Retry-After`, a used-up minute) this waits, as long as the wait ends before the run's
    /// deadline; otherwise it fails with class `rate_limited` (or `timeout`) and the run ends.
    /// Every permit counts as one of the run's attempts.
    fn permit(&self) -> BoxFuture<'_, Result<(), AdapterError>>;

    /// The API said so (`Retry-After`, or `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset`):
    /// no call on this key until `until`, for every stream on the key.
    fn block_until(&self, until: Instant);
}

/// Where a paged run's pages go.
pub trait PageSink: Send + Sync {
    /// Store one page's body raw, byte for byte, as its own object, and queue its reference
    /// (with the run id and `page`). `records` is how many records the page holds, where the
    /// source knows; `measurement` the reading parsed from it, where the source has one (an
    /// IQAir city). Resolves once stored; the store's transient errors are retried inside until
    /// the run's deadline. An error ends the run: pages stored before stay referenced.
    fn store(
        &self,
        page: u32,
        body: Bytes,
        records: Option<u64>,
        measurement: Option<Measurement>,
    ) -> BoxFuture<'_, Result<(), AdapterError>>;

    /// The run's async job reached `state` (shown on the run's record right away).
    fn job_state(&self, state: JobState);
}

/// A source whose runs take several steps.
pub trait PagedAdapter: Send + Sync {
    /// One run, start to end. Pages go to `run.sink` as they come; the error is the run's
    /// failure (pages stored before it stay referenced and are not fetched again by this run).
    fn run<'a>(&'a self, run: PagedRun<'a>) -> BoxFuture<'a, Result<RunEnd, AdapterError>>;
}
