//! The event path: result references, readings and failed runs reported by workers (and
//! references found by the reconciler), written in one transaction per batch.
//!
//! Lock order, the same in every batch, so concurrent batches on PostgreSQL cannot deadlock:
//! streams (key share), results by id, measurements by (stream, place, ts), failures by run id,
//! runs by id, then the streams' bookkeeping columns by id. Everything is deduplicated and
//! sorted in Rust first.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use catalogue::Cell;
use protocol::{Measurement, ResultRecord, RunFailure, RunReport, RunStatus};
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::{dispatch, Db, DbError, PersistStats, Persisted, ReconciledRef, Tx, CHUNK_ROWS};

/// Moves `last_result_at` forward to `$2`, `last_error_at` forward to `$3` (with `$4` as the
/// error), and clears `last_error` when the newest result is newer than the newest error. All
/// as expressions over the row's current values (every `SET` reads the row as it was), so
/// concurrent batches cannot lose an update; hence the repeated conditions.
pub(super) const BOOKKEEPING: &str = "UPDATE streams SET \
     last_result_at = CASE WHEN $2 IS NOT NULL AND (last_result_at IS NULL OR $2 > last_result_at) \
       THEN $2 ELSE last_result_at END, \
     last_error_at = CASE WHEN $3 IS NOT NULL AND (last_error_at IS NULL OR $3 > last_error_at) \
       THEN $3 ELSE last_error_at END, \
     last_error = CASE \
       WHEN (CASE WHEN $2 IS NOT NULL AND (last_result_at IS NULL OR $2 > last_result_at) \
               THEN $2 ELSE last_result_at END) \
          > (CASE WHEN $3 IS NOT NULL AND (last_error_at IS NULL OR $3 > last_error_at) \
               THEN $3 ELSE last_error_at END) THEN NULL \
       WHEN $3 IS NOT NULL AND (last_error_at IS NULL OR $3 > last_error_at) THEN $4 \
       ELSE last_error END, \
     window_end = CASE WHEN $5 IS NOT NULL AND (window_end IS NULL OR $5 > window_end) \
       THEN $5 ELSE window_end END \
     WHERE id = $1";

/// [`BOOKKEEPING`] for many streams at once, after `WITH v (id, result_at, error_at, message,
/// window_end) AS (VALUES …)`: the same rules, one statement.
const BOOKKEEPING_MANY: &str = "UPDATE streams SET \
     last_result_at = CASE WHEN v.result_at IS NOT NULL \
       AND (streams.last_result_at IS NULL OR v.result_at > streams.last_result_at) \
       THEN v.result_at ELSE streams.last_result_at END, \
     last_error_at = CASE WHEN v.error_at IS NOT NULL \
       AND (streams.last_error_at IS NULL OR v.error_at > streams.last_error_at) \
       THEN v.error_at ELSE streams.last_error_at END, \
     last_error = CASE \
       WHEN (CASE WHEN v.result_at IS NOT NULL \
               AND (streams.last_result_at IS NULL OR v.result_at > streams.last_result_at) \
               THEN v.result_at ELSE streams.last_result_at END) \
          > (CASE WHEN v.error_at IS NOT NULL \
               AND (streams.last_error_at IS NULL OR v.error_at > streams.last_error_at) \
               THEN v.error_at ELSE streams.last_error_at END) THEN NULL \
       WHEN v.error_at IS NOT NULL \
         AND (streams.last_error_at IS NULL OR v.error_at > streams.last_error_at) THEN v.message \
       ELSE streams.last_error END, \
     window_end = CASE WHEN v.window_end IS NOT NULL \
       AND (streams.window_end IS NULL OR v.window_end > streams.window_end) \
       THEN v.window_end ELSE streams.window_end END \
     FROM v WHERE streams.id = v.id";

/// A run's row from its report: inserted, or brought up to date while the stored row is not
/// final yet (a final row never goes back to running; a replayed report changes nothing).
const UPSERT_RUN: &str = " ON CONFLICT (id) DO UPDATE SET \
     finished_at = excluded.finished_at, status = excluded.status, \
     attempts = excluded.attempts, pages = excluded.pages, records = excluded.records, \
     bytes = excluded.bytes, window_start = excluded.window_start, \
     window_end = excluded.window_end, job = excluded.job, class = excluded.class, \
     message = excluded.message, stream_stopped = excluded.stream_stopped \
     WHERE runs.finished_at IS NULL";

/// A row of `results`, from a worker's report or from the reconciler.
struct RefRow<'a> {
    id: Uuid,
    stream_id: Uuid,
    bucket: &'a str,
    key: &'a str,
    fetched_at: i64,
    /// The run's tick and start (epoch ms); `None` for references the reconciler found.
    scheduled_at: Option<i64>,
    started_at: Option<i64>,
    size: i64,
    sha256: &'a str,
    /// The run the object belongs to and its page in it; `None` for references the reconciler
    /// found (the run is not known).
    run: Option<(Uuid, i64)>,
}

/// A reading ready to insert: its identity (stream, place, pollution ts) and where it came
/// from.
struct ReadingRow<'a> {
    stream_id: Uuid,
    place: String,
    ts: i64,
    result_id: Uuid,
    reading: &'a Measurement,
}

/// A reading to write: its stream, place, pollution ts, result, and the reading.
pub(super) type ReadingToWrite<'a> = (Uuid, &'a str, i64, Uuid, &'a Measurement);

/// Where a reading was taken, as its identity names it: `country/state/city` ('' for a part
/// the reading leaves out). One stream may read many places (an IQAir sweep).
pub(crate) fn place_of(reading: &Measurement) -> String {
    format!(
        "{}/{}/{}",
        reading.country.as_deref().unwrap_or(""),
        reading.state.as_deref().unwrap_or(""),
        reading.city.as_deref().unwrap_or("")
    )
}

/// The failure a failed run's report stands for (same run id: one failure per run).
pub fn failure_of(r: &RunReport) -> RunFailure {
    RunFailure {
        run_id: r.run_id,
        stream_id: r.stream_id,
        at_ms: r.finished_at_ms.unwrap_or(r.started_at_ms),
        class: r.class.unwrap_or(protocol::FailureClass::Api),
        message: r.message.clone().unwrap_or_default(),
        stream_stopped: r.stream_stopped,
        scheduled_at_ms: r.scheduled_at_ms,
        started_at_ms: r.started_at_ms,
        attempts: r.attempts,
    }
}

/// A run's row, from a single-fetch run's result or failure, or from a report.
struct RunRow<'a> {
    id: Uuid,
    stream_id: Uuid,
    scheduled_at: i64,
    started_at: i64,
    finished_at: Option<i64>,
    status: &'static str,
    attempts: i64,
    pages: i64,
    records: Option<i64>,
    bytes: i64,
    window: Option<(i64, i64)>,
    job: Option<String>,
    class: Option<&'static str>,
    message: Option<&'a str>,
    stream_stopped: bool,
}

impl<'a> RunRow<'a> {
    fn stored(r: &'a ResultRecord) -> Self {
        RunRow {
            id: r.run_id,
            stream_id: r.stream_id,
            scheduled_at: r.scheduled_at_ms,
            started_at: r.started_at_ms,
            finished_at: Some(r.fetched_at_ms),
            status: RunStatus::Stored.as_str(),
            attempts: i64::from(r.attempts),
            pages: 1,
            records: r.records.map(size_i64),
            bytes: size_i64(r.size),
            window: None,
            job: None,
            class: None,
            message: None,
            stream_stopped: false,
        }
    }

    fn failed(f: &'a RunFailure) -> Self {
        RunRow {
            id: f.run_id,
            stream_id: f.stream_id,
            scheduled_at: f.scheduled_at_ms,
            started_at: f.started_at_ms,
            finished_at: Some(f.at_ms),
            status: RunStatus::Failed.as_str(),
            attempts: i64::from(f.attempts),
            pages: 0,
            records: None,
            bytes: 0,
            window: None,
            job: None,
            class: Some(f.class.as_str()),
            message: Some(&f.message),
            stream_stopped: f.stream_stopped,
        }
    }

    fn reported(r: &'a RunReport) -> Self {
        let job = (!r.job.is_empty()).then(|| {
            let steps: Vec<serde_json::Value> = r
                .job
                .iter()
                .map(|step| serde_json::json!({"state": step.state.as_str(), "at": step.at_ms}))
                .collect();
            serde_json::Value::Array(steps).to_string()
        });
        RunRow {
            id: r.run_id,
            stream_id: r.stream_id,
            scheduled_at: r.scheduled_at_ms,
            started_at: r.started_at_ms,
            finished_at: r.finished_at_ms,
            status: r.status.as_str(),
            attempts: i64::from(r.attempts),
            pages: i64::from(r.pages),
            records: r.records.map(size_i64),
            bytes: size_i64(r.bytes),
            window: r.window.map(|w| (w.start_ms, w.end_ms)),
            job,
            class: r.class.map(|c| c.as_str()),
            message: r.message.as_deref(),
            stream_stopped: r.stream_stopped,
        }
    }
}

/// The catalogue's reading columns, in storage order.
pub(super) fn reading_columns() -> Vec<&'static str> {
    catalogue::iqair::COLUMNS.iter().map(|c| c.name).collect()
}

/// Per stream, what this batch says about its health.
#[derive(Default)]
struct Bookkeeping<'a> {
    newest_result_at: Option<i64>,
    newest_failure: Option<(i64, Uuid, &'a str)>,
    /// The end of the newest window a run stored (stored or truncated).
    window_end: Option<i64>,
}

/// An object size as stored; no object reaches 8 EiB, so the clamp never bites.
fn size_i64(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

/// The batch deduplicated (first occurrence wins) and sorted into lock order, with the
/// in-batch duplicates already counted.
struct PreparedBatch<'a> {
    refs: Vec<RefRow<'a>>,
    readings: Vec<ReadingRow<'a>>,
    failures: Vec<&'a RunFailure>,
    /// Runs: from single-fetch results and failures, and the newest report of each run.
    runs: Vec<RunRow<'a>>,
    /// Stored windows, per run: (stream, window end).
    windows: Vec<(Uuid, i64)>,
    /// Every stream named by a result, a failure or a run, ascending.
    stream_ids: Vec<Uuid>,
    stats: PersistStats,
}

impl<'a> PreparedBatch<'a> {
    fn new(
        results: &'a [ResultRecord],
        failures: &'a [RunFailure],
        reports: &'a [RunReport],
    ) -> Self {
        let mut stats = PersistStats::default();

        let mut refs: BTreeMap<Uuid, &ResultRecord> = BTreeMap::new();
        let mut readings: BTreeMap<(Uuid, String, i64), ReadingRow<'a>> = BTreeMap::new();
        for record in results {
            match refs.entry(record.result_id) {
                Entry::Occupied(_) => {
                    stats.results_duplicate += 1;
                    continue;
                }
                Entry::Vacant(slot) => {
                    slot.insert(record);
                }
            }
            let Some(reading) = &record.measurement else {
                continue;
            };
            let Some(ts) = reading.ts_ms() else {
                stats.measurements_without_ts += 1;
                continue;
            };
            let place = place_of(reading);
            match readings.entry((record.stream_id, place.clone(), ts)) {
                Entry::Occupied(_) => {
                    stats.measurements_duplicate += 1;
                }
                Entry::Vacant(slot) => {
                    slot.insert(ReadingRow {
                        stream_id: record.stream_id,
                        place,
                        ts,
                        result_id: record.result_id,
                        reading,
                    });
                }
            }
        }

        let mut unique_failures: BTreeMap<Uuid, &RunFailure> = BTreeMap::new();
        for failure in failures {
            match unique_failures.entry(failure.run_id) {
                Entry::Occupied(_) => stats.failures_duplicate += 1,
                Entry::Vacant(slot) => {
                    slot.insert(failure);
                }
            }
        }

        // A run's newest report wins, a final one over any that is not.
        let mut newest_reports: BTreeMap<Uuid, &RunReport> = BTreeMap::new();
        for report in reports {
            match newest_reports.entry(report.run_id) {
                Entry::Vacant(slot) => {
                    slot.insert(report);
                }
                Entry::Occupied(mut slot) => {
                    if report.status.is_final() || !slot.get().status.is_final() {
                        slot.insert(report);
                    }
                }
            }
        }
        let mut runs: BTreeMap<Uuid, RunRow<'a>> = BTreeMap::new();
        for r in refs.values().filter(|r| r.ends_run) {
            runs.insert(r.run_id, RunRow::stored(r));
        }
        for f in unique_failures.values() {
            runs.entry(f.run_id).or_insert_with(|| RunRow::failed(f));
        }
        let mut windows = Vec::new();
        for report in newest_reports.values() {
            if matches!(report.status, RunStatus::Stored | RunStatus::Truncated) {
                if let Some(window) = report.window {
                    windows.push((report.stream_id, window.end_ms));
                }
            }
            runs.insert(report.run_id, RunRow::reported(report));
        }

        let stream_ids: BTreeSet<Uuid> = refs
            .values()
            .map(|r| r.stream_id)
            .chain(unique_failures.values().map(|f| f.stream_id))
            .chain(runs.values().map(|r| r.stream_id))
            .collect();

        PreparedBatch {
            refs: refs
                .into_values()
                .map(|r| RefRow {
                    id: r.result_id,
                    stream_id: r.stream_id,
                    bucket: &r.bucket,
                    key: &r.key,
                    fetched_at: r.fetched_at_ms,
                    scheduled_at: Some(r.scheduled_at_ms),
                    started_at: Some(r.started_at_ms),
                    size: size_i64(r.size),
                    sha256: &r.sha256,
                    run: Some((r.run_id, i64::from(r.page))),
                })
                .collect(),
            readings: readings.into_values().collect(),
            failures: unique_failures.into_values().collect(),
            runs: runs.into_values().collect(),
            windows,
            stream_ids: stream_ids.into_iter().collect(),
            stats,
        }
    }

    /// Drops what belongs to streams outside `known`, counting the results and failures.
    fn retain_known(&mut self, known: &HashSet<Uuid>) {
        let before = self.refs.len() + self.failures.len();
        self.refs.retain(|r| known.contains(&r.stream_id));
        self.failures.retain(|f| known.contains(&f.stream_id));
        self.readings.retain(|m| known.contains(&m.stream_id));
        self.runs.retain(|r| known.contains(&r.stream_id));
        self.windows
            .retain(|(stream_id, _)| known.contains(stream_id));
        self.stream_ids.retain(|id| known.contains(id));
        let after = self.refs.len() + self.failures.len();
        self.stats.skipped_unknown_stream += (before - after) as u64;
    }

    /// Per stream (ascending), the newest result time and the newest failure in this batch.
    fn bookkeeping(&self) -> BTreeMap<Uuid, Bookkeeping<'a>> {
        let mut per_stream: BTreeMap<Uuid, Bookkeeping<'a>> = BTreeMap::new();
        for r in &self.refs {
            let entry = per_stream.entry(r.stream_id).or_default();
            entry.newest_result_at = entry.newest_result_at.max(Some(r.fetched_at));
        }
        for f in &self.failures {
            let entry = per_stream.entry(f.stream_id).or_default();
            let candidate = (f.at_ms, f.run_id, f.message.as_str());
            if entry
                .newest_failure
                .is_none_or(|(at, run_id, _)| (at, run_id) < (f.at_ms, f.run_id))
            {
                entry.newest_failure = Some(candidate);
            }
        }
        for &(stream_id, end) in &self.windows {
            let entry = per_stream.entry(stream_id).or_default();
            entry.window_end = entry.window_end.max(Some(end));
        }
        per_stream
    }
}

impl Tx {
    /// Which of `ids` name an existing stream, locking them against deletion until commit where
    /// the backend needs that.
    pub(super) async fn known_streams(&mut self, ids: &[Uuid]) -> Result<HashSet<Uuid>, DbError> {
        let lock = self.lock_streams_clause();
        let mut known = HashSet::new();
        for chunk in ids.chunks(CHUNK_ROWS) {
            let found: Vec<Uuid> = dispatch!(Tx, self, |tx, DB| {
                let mut query = QueryBuilder::<DB>::new("SELECT id FROM streams WHERE id IN (");
                let mut list = query.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                query.push(")").push(lock);
                query.build_query_scalar().fetch_all(&mut **tx).await?
            });
            known.extend(found);
        }
        Ok(known)
    }

    /// A worker's report of objects the reconciler indexed first (it listed them between the
    /// store and the report): their rows become the worker's, with the run, page and times the
    /// reconciler could not know, so a run lists every page it stored. Rows already reported
    /// (a replay) are left alone. One statement per such reference; this is the rare path.
    async fn complete_reconciled(
        &mut self,
        rows: &[RefRow<'_>],
        inserted: &[Uuid],
    ) -> Result<(), DbError> {
        if inserted.len() == rows.len() {
            return Ok(());
        }
        let inserted: HashSet<&Uuid> = inserted.iter().collect();
        for r in rows.iter().filter(|r| !inserted.contains(&r.id)) {
            dispatch!(Tx, self, |tx| {
                sqlx::query(
                    "UPDATE results SET status = 'ok', scheduled_at = $2, started_at = $3, \
                     run_id = $4, page = $5 WHERE id = $1 AND status = 'reconciled'",
                )
                .bind(r.id)
                .bind(r.scheduled_at)
                .bind(r.started_at)
                .bind(r.run.map(|(run_id, _)| run_id))
                .bind(r.run.map(|(_, page)| page))
                .execute(&mut **tx)
                .await?;
            });
        }
        Ok(())
    }

    /// Inserts `results` rows with `status`, skipping ids already stored; returns the new ids.
    async fn insert_refs(
        &mut self,
        rows: &[RefRow<'_>],
        status: &str,
        now: i64,
    ) -> Result<Vec<Uuid>, DbError> {
        let mut inserted = Vec::new();
        for chunk in rows.chunks(CHUNK_ROWS) {
            let ids: Vec<Uuid> = dispatch!(Tx, self, |tx, DB| {
                let mut query = QueryBuilder::<DB>::new(
                    "INSERT INTO results (id, stream_id, bucket, key, fetched_at, scheduled_at, \
                     started_at, size, sha256, status, created_at, run_id, page) ",
                );
                query.push_values(chunk, |mut row, r| {
                    row.push_bind(r.id)
                        .push_bind(r.stream_id)
                        .push_bind(r.bucket)
                        .push_bind(r.key)
                        .push_bind(r.fetched_at)
                        .push_bind(r.scheduled_at)
                        .push_bind(r.started_at)
                        .push_bind(r.size)
                        .push_bind(r.sha256)
                        .push_bind(status)
                        .push_bind(now)
                        .push_bind(r.run.map(|(run_id, _)| run_id))
                        .push_bind(r.run.map(|(_, page)| page));
                });
                query.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
                query.build_query_scalar().fetch_all(&mut **tx).await?
            });
            inserted.extend(ids);
        }
        Ok(inserted)
    }

    /// Inserts readings, the first per (stream, place, ts) winning; returns the result ids of
    /// the new ones.
    async fn insert_readings(&mut self, rows: &[ReadingRow<'_>]) -> Result<Vec<Uuid>, DbError> {
        let rows: Vec<ReadingToWrite<'_>> = rows
            .iter()
            .map(|m| (m.stream_id, m.place.as_str(), m.ts, m.result_id, m.reading))
            .collect();
        self.write_readings(
            &rows,
            i64::from(catalogue::iqair::PARSER_VERSION),
            " ON CONFLICT (stream_id, place, ts) DO NOTHING",
        )
        .await
    }

    /// Writes readings with `parser_version`: the identity, then the catalogue's columns bound
    /// from each reading's cells, `on_conflict` saying what a row already there gets (the event
    /// path keeps it, a re-parse replaces it when it owns it). Returns the result ids of the
    /// rows written. No (stream, place, ts) may repeat within `rows` (PostgreSQL refuses to
    /// touch a row twice in one statement).
    pub(super) async fn write_readings(
        &mut self,
        rows: &[ReadingToWrite<'_>],
        parser_version: i64,
        on_conflict: &str,
    ) -> Result<Vec<Uuid>, DbError> {
        let head = format!(
            "INSERT INTO measurements (stream_id, place, ts, result_id, parser_version, {}) ",
            reading_columns().join(", ")
        );
        let mut written = Vec::new();
        for chunk in rows.chunks(CHUNK_ROWS) {
            let keys: Vec<Uuid> = dispatch!(Tx, self, |tx, DB| {
                let mut query = QueryBuilder::<DB>::new(&head);
                query.push_values(
                    chunk,
                    |mut row, (stream_id, place, ts, result_id, reading)| {
                        row.push_bind(*stream_id)
                            .push_bind(*place)
                            .push_bind(*ts)
                            .push_bind(*result_id)
                            .push_bind(parser_version);
                        for cell in reading.cells() {
                            match cell {
                                Cell::Text(v) => row.push_bind(v),
                                Cell::Real(v) => row.push_bind(v),
                                Cell::TimeMs(v) => row.push_bind(v),
                            };
                        }
                    },
                );
                query.push(on_conflict).push(" RETURNING result_id");
                query.build_query_scalar().fetch_all(&mut **tx).await?
            });
            written.extend(keys);
        }
        Ok(written)
    }

    /// Records failed runs, idempotent on the run id; returns the new run ids.
    async fn insert_failures(&mut self, failures: &[&RunFailure]) -> Result<Vec<Uuid>, DbError> {
        let mut inserted = Vec::new();
        for chunk in failures.chunks(CHUNK_ROWS) {
            let ids: Vec<Uuid> = dispatch!(Tx, self, |tx, DB| {
                let mut query = QueryBuilder::<DB>::new(
                    "INSERT INTO run_failures \
                     (run_id, stream_id, at, class, message, stream_stopped) ",
                );
                query.push_values(chunk, |mut row, f| {
                    row.push_bind(f.run_id)
                        .push_bind(f.stream_id)
                        .push_bind(f.at_ms)
                        .push_bind(f.class.as_str())
                        .push_bind(f.message.as_str())
                        .push_bind(f.stream_stopped);
                });
                query.push(" ON CONFLICT (run_id) DO NOTHING RETURNING run_id");
                query.build_query_scalar().fetch_all(&mut **tx).await?
            });
            inserted.extend(ids);
        }
        Ok(inserted)
    }

    /// Records runs: single-fetch runs once (idempotent on the run id), reported runs brought
    /// up to date until they are final.
    async fn upsert_runs(&mut self, runs: &[RunRow<'_>]) -> Result<(), DbError> {
        // Rows per statement: 15 binds each, under SQLite's 32,766 and PostgreSQL's 65,535.
        for chunk in runs.chunks(1_000) {
            dispatch!(Tx, self, |tx, DB| {
                let mut query = QueryBuilder::<DB>::new(
                    "INSERT INTO runs (id, stream_id, scheduled_at, started_at, finished_at, \
                     status, attempts, pages, records, bytes, window_start, window_end, job, \
                     class, message, stream_stopped) ",
                );
                query.push_values(chunk, |mut row, r| {
                    row.push_bind(r.id)
                        .push_bind(r.stream_id)
                        .push_bind(r.scheduled_at)
                        .push_bind(r.started_at)
                        .push_bind(r.finished_at)
                        .push_bind(r.status)
                        .push_bind(r.attempts)
                        .push_bind(r.pages)
                        .push_bind(r.records)
                        .push_bind(r.bytes)
                        .push_bind(r.window.map(|w| w.0))
                        .push_bind(r.window.map(|w| w.1))
                        .push_bind(r.job.as_deref())
                        .push_bind(r.class)
                        .push_bind(r.message)
                        .push_bind(r.stream_stopped);
                });
                query.push(UPSERT_RUN);
                query.build().execute(&mut **tx).await?;
            });
        }
        Ok(())
    }

    /// Moves each stream's `last_result_at`/`last_error` forward, streams in ascending order.
    async fn bookkeeping(
        &mut self,
        per_stream: BTreeMap<Uuid, Bookkeeping<'_>>,
    ) -> Result<(), DbError> {
        let rows: Vec<(Uuid, Bookkeeping<'_>)> = per_stream.into_iter().collect();
        let failure = |book: &Bookkeeping<'_>| match book.newest_failure {
            Some((at, _, message)) => (Some(at), Some(message.to_owned())),
            None => (None, None),
        };
        match self {
            // In process, a prepared statement per stream costs microseconds, and SQLite (3.46+)
            // plans `UPDATE … FROM (VALUES …)` as a walk over every stream per statement.
            Tx::Sqlite(tx) => {
                for (stream_id, book) in &rows {
                    let (failure_at, failure_message) = failure(book);
                    sqlx::query(BOOKKEEPING)
                        .bind(*stream_id)
                        .bind(book.newest_result_at)
                        .bind(failure_at)
                        .bind(failure_message)
                        .bind(book.window_end)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            // Over the network every statement is a round trip: one per chunk of streams (5
            // binds each), joined to `streams` by its primary key.
            // Rows are locked in id order first (the map is sorted, see
            // `Tx::lock_in_id_order`), whatever join order the planner picks for the update.
            Tx::Postgres(_) => {
                let ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
                self.lock_in_id_order(&ids).await?;
                let Tx::Postgres(tx) = self else {
                    unreachable!("matched above")
                };
                for chunk in rows.chunks(CHUNK_ROWS) {
                    let mut query = QueryBuilder::<sqlx::Postgres>::new(
                        "WITH v (id, result_at, error_at, message, window_end) AS (",
                    );
                    query.push_values(chunk, |mut row, (stream_id, book)| {
                        let (failure_at, failure_message) = failure(book);
                        row.push_bind(*stream_id)
                            .push_bind(book.newest_result_at)
                            .push_bind(failure_at)
                            .push_bind(failure_message)
                            .push_bind(book.window_end);
                    });
                    query.push(") ").push(BOOKKEEPING_MANY);
                    query.build().execute(&mut **tx).await?;
                }
            }
        }
        Ok(())
    }
}

impl Db {
    /// Persists a batch of worker events in ONE transaction: references (`status = ok`),
    /// readings (first per (stream, pollution ts) wins), failed runs, and each stream's
    /// `last_result_at`/`last_error` bookkeeping. Idempotent on result id and run id: a replayed
    /// batch inserts nothing and is not an error. Events for streams that no longer exist are
    /// counted in [`PersistStats::skipped_unknown_stream`] and dropped, so they never block the
    /// batch. A reading without a parsable pollution ts is not stored. A failure with
    /// `stream_stopped` is recorded like any other; moving the stream to `failed` (and telling
    /// whoever needs telling) is the caller's [`Db::set_state`].
    pub async fn persist_events(
        &self,
        results: &[ResultRecord],
        failures: &[RunFailure],
    ) -> Result<PersistStats, DbError> {
        Ok(self.persist_batch(results, failures).await?.stats)
    }

    /// [`Db::persist_events`], also saying which rows are new (for the live channel: what a
    /// replay stored before is not news).
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(results = results.len(), failures = failures.len())
    )]
    pub async fn persist_batch(
        &self,
        results: &[ResultRecord],
        failures: &[RunFailure],
    ) -> Result<Persisted, DbError> {
        self.persist_runs(results, failures, &[]).await
    }

    /// [`Db::persist_batch`] with the reports of runs of several steps: each run's row is
    /// brought up to date (never back from final), and a stored run's window end moves the
    /// stream's `window_end` forward, in the same transaction.
    pub async fn persist_runs(
        &self,
        results: &[ResultRecord],
        failures: &[RunFailure],
        reports: &[RunReport],
    ) -> Result<Persisted, DbError> {
        // A run of several steps that failed is a failed run like any other: in the failures
        // (the coverage ledger, the stream's last error, the live channel) as well.
        let failed: Vec<RunFailure> = reports
            .iter()
            .filter(|r| r.status == RunStatus::Failed)
            .map(failure_of)
            .collect();
        let failures: std::borrow::Cow<'_, [RunFailure]> = if failed.is_empty() {
            std::borrow::Cow::Borrowed(failures)
        } else {
            std::borrow::Cow::Owned(failures.iter().cloned().chain(failed).collect())
        };
        let mut batch = PreparedBatch::new(results, &failures, reports);
        if batch.stream_ids.is_empty() {
            return Ok(Persisted {
                stats: batch.stats,
                ..Persisted::default()
            });
        }
        let now = common::now_ms();
        let mut tx = self.begin_write().await?;
        let known = tx.known_streams(&batch.stream_ids).await?;
        batch.retain_known(&known);
        let new_results = tx.insert_refs(&batch.refs, "ok", now).await?;
        tx.complete_reconciled(&batch.refs, &new_results).await?;
        let new_readings = tx.insert_readings(&batch.readings).await?;
        let new_failures = tx.insert_failures(&batch.failures).await?;
        tx.upsert_runs(&batch.runs).await?;
        tx.bookkeeping(batch.bookkeeping()).await?;
        tx.commit().await?;

        let mut stats = batch.stats;
        let count = |new: usize| new as u64;
        stats.results_inserted = count(new_results.len());
        stats.results_duplicate += count(batch.refs.len() - new_results.len());
        stats.measurements_inserted = count(new_readings.len());
        stats.measurements_duplicate += count(batch.readings.len() - new_readings.len());
        stats.failures_inserted = count(new_failures.len());
        stats.failures_duplicate += count(batch.failures.len() - new_failures.len());
        tracing::debug!(?stats, "events persisted");
        Ok(Persisted {
            stats,
            new_results: new_results.into_iter().collect(),
            new_readings: new_readings.into_iter().collect(),
            new_failures: new_failures.into_iter().collect(),
        })
    }

    /// Inserts references the reconciler found in the object store (`status = reconciled`),
    /// skipping ids already stored and streams that no longer exist; returns how many were new.
    #[tracing::instrument(level = "debug", skip_all, fields(refs = refs.len()))]
    pub async fn insert_reconciled(&self, refs: &[ReconciledRef]) -> Result<u64, DbError> {
        let mut unique: BTreeMap<Uuid, RefRow<'_>> = BTreeMap::new();
        for r in refs {
            unique.entry(r.id).or_insert(RefRow {
                run: None,
                id: r.id,
                stream_id: r.stream_id,
                bucket: &r.bucket,
                key: &r.key,
                fetched_at: r.fetched_at,
                scheduled_at: None,
                started_at: None,
                size: r.size,
                sha256: &r.sha256,
            });
        }
        let stream_ids: Vec<Uuid> = unique
            .values()
            .map(|r| r.stream_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if stream_ids.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let known = tx.known_streams(&stream_ids).await?;
        let rows: Vec<RefRow<'_>> = unique
            .into_values()
            .filter(|r| known.contains(&r.stream_id))
            .collect();
        let inserted = tx
            .insert_refs(&rows, "reconciled", common::now_ms())
            .await?;
        tx.commit().await?;
        Ok(inserted.len() as u64)
    }

    /// Which of `ids` already have a reference.
    #[tracing::instrument(level = "debug", skip_all, fields(ids = ids.len()))]
    pub async fn existing_result_ids(&self, ids: &[Uuid]) -> Result<HashSet<Uuid>, DbError> {
        let mut existing = HashSet::new();
        for chunk in ids.chunks(CHUNK_ROWS) {
            let found: Vec<Uuid> = dispatch!(Db, self, |pool, DB| {
                let mut query = QueryBuilder::<DB>::new("SELECT id FROM results WHERE id IN (");
                let mut list = query.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                query.push(")");
                query.build_query_scalar().fetch_all(pool).await?
            });
            existing.extend(found);
        }
        Ok(existing)
    }

    /// Points the reference `id` at `to` if it still points at `from` (the layout migration,
    /// after the object was copied to `to` and before `from` is deleted). `false` when there is
    /// no such reference or it already points elsewhere: a re-run, or an object never indexed.
    pub async fn move_reference(&self, id: Uuid, from: &str, to: &str) -> Result<bool, DbError> {
        let updated = dispatch!(Db, self, |pool| {
            sqlx::query("UPDATE results SET key = $1 WHERE id = $2 AND key = $3")
                .bind(to)
                .bind(id)
                .bind(from)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(updated > 0)
    }
}
