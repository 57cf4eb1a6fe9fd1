//! Re-parse: rebuilds readings from the raw objects in the bucket with the current parser
//! (`POST /reparse`). A job walks the result references in its scope in id order (a timeline:
//! ids are UUIDv7), reads each object back, parses it with its adapter's parser and upserts the
//! reading with the current parser version, the first result per (stream, ts) winning as on the
//! event path. Each page of references is written in one transaction with the job's cursor and
//! counters, so a restart resumes after the last committed page and counts nothing twice.
//!
//! One job runs at a time ([`Reparse::run`]); the others wait `queued`. Reads are throttled to
//! `REPARSE_OBJECTS_PER_SECOND` so the event path keeps its pace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use objects::{ObjectStore, StoreError};
use protocol::Measurement;
use tokio::sync::Notify;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::{Db, DbError, JobRow, JobScope, JobState, PageProgress, ParsedReading, RefToParse};

/// References per page: small, so each transaction is short and progress is saved often.
pub const DEFAULT_PAGE_SIZE: i64 = 50;

/// How long the idle runner waits before looking for jobs again (a new job wakes it at once).
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Longest wait between attempts while the object store or the database is not reachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a reference gave no reading. Counted per job (`errors` in `GET /jobs/{id}`) and in the
/// `ds_reparse_errors_total{class}` metric; none of them stops the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The object (or its whole bucket) is gone from the store.
    ObjectMissing,
    /// The store refused the read for a reason a retry would only repeat.
    StoreError,
    /// The body is not a reading: garbage, a half-written file, an error envelope.
    Unparseable,
    /// A reading without a parsable `current.pollution.ts`: it has no identity, so no row.
    NoPollutionTs,
    /// The stream's adapter has no parser in this build's catalogue.
    NoParser,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::ObjectMissing => "object_missing",
            ErrorClass::StoreError => "store_error",
            ErrorClass::Unparseable => "unparseable",
            ErrorClass::NoPollutionTs => "no_pollution_ts",
            ErrorClass::NoParser => "no_parser",
        }
    }
}

/// Turns a raw object into its reading (`None`: there is none in it).
type Parser = fn(&[u8]) -> Option<Measurement>;

/// The parser of `adapter`'s raw objects, for the adapters whose readings are stored.
fn parser_for(adapter: &str) -> Option<Parser> {
    (catalogue::source(adapter)?.name() == catalogue::iqair::NAME)
        .then_some(catalogue::iqair::parse as Parser)
}

/// Spaces reads `1 / rate` seconds apart (no spacing for rate 0).
struct Throttle(Option<Interval>);

impl Throttle {
    fn new(objects_per_second: u32) -> Self {
        Throttle((objects_per_second > 0).then(|| {
            // A rate above a million a second would make a zero period, which tokio refuses.
            let period =
                (Duration::from_secs(1) / objects_per_second).max(Duration::from_micros(1));
            let mut interval = tokio::time::interval(period);
            // After a pause (store down) go on at the same pace, not in a burst.
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        }))
    }

    async fn wait(&mut self) {
        if let Some(interval) = &mut self.0 {
            interval.tick().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn throttle_spaces_reads_and_takes_any_rate() {
        let start = tokio::time::Instant::now();
        let mut throttle = Throttle::new(100);
        for _ in 0..11 {
            throttle.wait().await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(100),
            "10 gaps of 10 ms"
        );
        let mut unlimited = Throttle::new(0);
        unlimited.wait().await;
        let mut fastest = Throttle::new(u32::MAX);
        fastest.wait().await;
        fastest.wait().await;
    }

    #[test]
    fn only_adapters_with_readings_have_a_parser() {
        let parse = parser_for(catalogue::iqair::NAME).expect("IQAir's parser");
        assert!(parse(catalogue::iqair::examples::SUCCESS_2026.as_bytes()).is_some());
        assert!(parser_for("OPENAQ").is_none());
    }
}

/// What reading one page of references gave.
#[derive(Default)]
struct PageRead {
    /// Readings in result order; may repeat a (stream, ts).
    readings: Vec<ParsedReading>,
    /// References processed (read or counted under an error class).
    processed: i64,
    /// The last of them.
    cursor: Option<Uuid>,
    /// The store was not reachable at the reference after `cursor`: wait, then retry it.
    paused: Option<StoreError>,
}

/// The re-parse runner and its queue. Cheap to clone; clones share the wake-up.
#[derive(Clone)]
pub struct Reparse {
    db: Db,
    store: Arc<dyn ObjectStore>,
    objects_per_second: u32,
    page_size: i64,
    parser_version: Option<u32>,
    wake: Arc<Notify>,
}

impl Reparse {
    /// A runner reading at most `objects_per_second` objects a second (0: no limit).
    pub fn new(db: Db, store: Arc<dyn ObjectStore>, objects_per_second: u32) -> Self {
        Reparse {
            db,
            store,
            objects_per_second,
            page_size: DEFAULT_PAGE_SIZE,
            parser_version: None,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Writes `version` instead of the catalogue's parser version (to test a version bump
    /// without changing the parser).
    pub fn with_parser_version(mut self, version: u32) -> Self {
        self.parser_version = Some(version);
        self
    }

    /// References per page (at least 1).
    pub fn with_page_size(mut self, page_size: i64) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    /// The version rebuilt rows get: the stored readings are IQAir's (the one source with
    /// reading columns), so its parser's.
    pub fn parser_version(&self) -> u32 {
        self.parser_version
            .unwrap_or(catalogue::iqair::PARSER_VERSION)
    }

    /// Queues a job of `scope` and wakes the runner.
    pub async fn enqueue(&self, scope: JobScope) -> Result<JobRow, DbError> {
        let job = self
            .db
            .insert_reparse_job(
                Uuid::now_v7(),
                &scope,
                i64::from(self.parser_version()),
                common::now_ms(),
            )
            .await?;
        tracing::info!(job_id = %job.id, objects = job.objects_total, "re-parse job queued");
        self.wake.notify_one();
        Ok(job)
    }

    /// Runs jobs one at a time, oldest first (one left running by a restart before any), until
    /// `shutdown`. A page in flight is written before it returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match self.run_pending(&shutdown).await {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    IDLE_POLL
                }
                Err(err) => {
                    tracing::warn!(
                        "re-parse paused, the database is not reachable: {}",
                        common::error_chain(&err)
                    );
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    backoff
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Runs every job waiting, in order, until none is left or `shutdown` is cancelled (the
    /// job in hand then stays `running`, to be resumed). A job whose database error a retry
    /// would only repeat is marked `failed`; a transient one is returned (the job is resumed
    /// later).
    pub async fn run_pending(&self, shutdown: &CancellationToken) -> Result<(), DbError> {
        while !shutdown.is_cancelled() {
            let Some(job) = self.db.next_job().await? else {
                return Ok(());
            };
            let id = job.id;
            match self.run_job(job, shutdown).await {
                Ok(()) => {}
                Err(err) if err.is_transient() => return Err(err),
                Err(err) => {
                    let message = common::error_chain(&err);
                    tracing::error!(job_id = %id, "re-parse job failed: {message}");
                    self.db
                        .finish_job(id, JobState::Failed, Some(&message), common::now_ms())
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn run_job(&self, mut job: JobRow, shutdown: &CancellationToken) -> Result<(), DbError> {
        let version = i64::from(self.parser_version());
        if job.parser_version != version {
            // Rows written before a restart keep the version that wrote them; from here on the
            // job writes this binary's.
            tracing::info!(job_id = %job.id, from = job.parser_version, to = version,
                "re-parse job resumes with another parser version");
        }
        self.db.start_job(job.id, version, common::now_ms()).await?;
        job.parser_version = version;
        tracing::info!(job_id = %job.id, cursor = ?job.cursor, "re-parse job running");
        let mut throttle = Throttle::new(self.objects_per_second);
        let mut backoff = Duration::from_secs(1);
        while !shutdown.is_cancelled() {
            let refs = self.db.reparse_refs(&job, self.page_size).await?;
            if refs.is_empty() {
                self.db
                    .finish_job(job.id, JobState::Done, None, common::now_ms())
                    .await?;
                tracing::info!(job_id = %job.id, read = job.objects_read,
                    written = job.rows_written, errors = ?job.errors, "re-parse job done");
                return Ok(());
            }
            let page = self
                .read_page(&refs, &mut job.errors, &mut throttle, shutdown)
                .await;
            if let Some(cursor) = page.cursor {
                let written = self
                    .db
                    .write_reparse_page(
                        job.id,
                        version,
                        &page.readings,
                        PageProgress {
                            cursor,
                            objects_read: page.processed,
                            errors: &job.errors,
                        },
                    )
                    .await?;
                job.cursor = Some(cursor);
                job.objects_read += page.processed;
                job.rows_written += written.rows_written;
                job.rows_skipped += written.rows_skipped;
                metrics::counter!("ds_reparse_rows_written_total")
                    .increment(u64::try_from(written.rows_written).unwrap_or(0));
            }
            match page.paused {
                None => backoff = Duration::from_secs(1),
                Some(err) => {
                    let message = format!("waiting for the object store: {err}");
                    tracing::warn!(job_id = %job.id, "re-parse {message}");
                    self.db.note_job(job.id, &message, common::now_ms()).await?;
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        Ok(())
    }

    /// Reads and parses `refs` in order until the page ends, `shutdown`, or the store is not
    /// reachable; counts what gave no reading in `errors`.
    async fn read_page(
        &self,
        refs: &[RefToParse],
        errors: &mut BTreeMap<String, i64>,
        throttle: &mut Throttle,
        shutdown: &CancellationToken,
    ) -> PageRead {
        let mut page = PageRead::default();
        for reference in refs {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = throttle.wait() => {}
            }
            let outcome = match self.store.get(&reference.bucket, &reference.key).await {
                Ok(bytes) => self.parse(reference, &bytes),
                Err(StoreError::NoSuchKey { .. } | StoreError::NoSuchBucket { .. }) => {
                    Err(ErrorClass::ObjectMissing)
                }
                Err(err) if err.is_transient() => {
                    page.paused = Some(err);
                    break;
                }
                Err(err) => {
                    tracing::warn!(result_id = %reference.id, "re-parse cannot read the object: {err}");
                    Err(ErrorClass::StoreError)
                }
            };
            metrics::counter!("ds_reparse_objects_read_total").increment(1);
            match outcome {
                Ok(reading) => page.readings.push(reading),
                Err(class) => {
                    metrics::counter!("ds_reparse_errors_total", "class" => class.as_str())
                        .increment(1);
                    *errors.entry(class.as_str().to_owned()).or_insert(0) += 1;
                }
            }
            page.processed += 1;
            page.cursor = Some(reference.id);
        }
        page
    }

    /// The reading in one raw object.
    fn parse(&self, reference: &RefToParse, bytes: &[u8]) -> Result<ParsedReading, ErrorClass> {
        let parse = parser_for(&reference.adapter).ok_or(ErrorClass::NoParser)?;
        let reading = parse(bytes).ok_or(ErrorClass::Unparseable)?;
        let ts = reading.ts_ms().ok_or(ErrorClass::NoPollutionTs)?;
        Ok(ParsedReading {
            stream_id: reference.stream_id,
            ts,
            result_id: reference.id,
            reading,
        })
    }
}
