//! The event path: result references, readings and failed runs reported by workers (and
//! references found by the reconciler), written in one transaction per batch.
//!
//! Lock order, the same in every batch, so concurrent batches on PostgreSQL cannot deadlock:
//! streams (key share), results by id, measurements by (stream, ts), failures by run id, then
//! the streams' bookkeeping columns by id. Everything is deduplicated and sorted in Rust first.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use catalogue::Cell;
use protocol::{Measurement, ResultRecord, RunFailure};
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::{dispatch, Db, DbError, PersistStats, Persisted, ReconciledRef, Tx, CHUNK_ROWS};

/// Moves `last_result_at` forward to `$2`, `last_error_at` forward to `$3` (with `$4` as the
/// error), and clears `last_error` when the newest result is newer than the newest error. All
/// as expressions over the row's current values (every `SET` reads the row as it was), so
/// concurrent batches cannot lose an update; hence the repeated conditions.
const BOOKKEEPING: &str = "UPDATE streams SET \
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
       ELSE last_error END \
     WHERE id = $1";

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
}

/// A reading ready to insert: its identity (stream, pollution ts) and where it came from.
struct ReadingRow<'a> {
    stream_id: Uuid,
    ts: i64,
    result_id: Uuid,
    reading: &'a Measurement,
}

/// A reading to write: its stream, pollution ts, result, and the reading.
pub(super) type ReadingToWrite<'a> = (Uuid, i64, Uuid, &'a Measurement);

/// The catalogue's reading columns, in storage order.
pub(super) fn reading_columns() -> Vec<&'static str> {
    catalogue::iqair::COLUMNS.iter().map(|c| c.name).collect()
}

/// Per stream, what this batch says about its health.
#[derive(Default)]
struct Bookkeeping<'a> {
    newest_result_at: Option<i64>,
    newest_failure: Option<(i64, Uuid, &'a str)>,
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
    /// Every stream named by a result or a failure, ascending.
    stream_ids: Vec<Uuid>,
    stats: PersistStats,
}

impl<'a> PreparedBatch<'a> {
    fn new(results: &'a [ResultRecord], failures: &'a [RunFailure]) -> Self {
        let mut stats = PersistStats::default();

        let mut refs: BTreeMap<Uuid, &ResultRecord> = BTreeMap::new();
        let mut readings: BTreeMap<(Uuid, i64), ReadingRow<'a>> = BTreeMap::new();
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
            match readings.entry((record.stream_id, ts)) {
                Entry::Occupied(_) => {
                    stats.measurements_duplicate += 1;
                }
                Entry::Vacant(slot) => {
                    slot.insert(ReadingRow {
                        stream_id: record.stream_id,
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

        let stream_ids: BTreeSet<Uuid> = refs
            .values()
            .map(|r| r.stream_id)
            .chain(unique_failures.values().map(|f| f.stream_id))
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
                })
                .collect(),
            readings: readings.into_values().collect(),
            failures: unique_failures.into_values().collect(),
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
                     started_at, size, sha256, status, created_at) ",
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
                        .push_bind(now);
                });
                query.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
                query.build_query_scalar().fetch_all(&mut **tx).await?
            });
            inserted.extend(ids);
        }
        Ok(inserted)
    }

    /// Inserts readings, the first per (stream, ts) winning; returns the (stream, ts) of the new
    /// ones.
    async fn insert_readings(
        &mut self,
        rows: &[ReadingRow<'_>],
    ) -> Result<Vec<(Uuid, i64)>, DbError> {
        let rows: Vec<ReadingToWrite<'_>> = rows
            .iter()
            .map(|m| (m.stream_id, m.ts, m.result_id, m.reading))
            .collect();
        self.write_readings(
            &rows,
            i64::from(catalogue::iqair::PARSER_VERSION),
            " ON CONFLICT (stream_id, ts) DO NOTHING",
        )
        .await
    }

    /// Writes readings with `parser_version`: the identity, then the catalogue's columns bound
    /// from each reading's cells, `on_conflict` saying what a row already there gets (the event
    /// path keeps it, a re-parse replaces it when it owns it). Returns the (stream, ts) of the
    /// rows written. No (stream, ts) may repeat within `rows` (PostgreSQL refuses to touch a
    /// row twice in one statement).
    pub(super) async fn write_readings(
        &mut self,
        rows: &[ReadingToWrite<'_>],
        parser_version: i64,
        on_conflict: &str,
    ) -> Result<Vec<(Uuid, i64)>, DbError> {
        let head = format!(
            "INSERT INTO measurements (stream_id, ts, result_id, parser_version, {}) ",
            reading_columns().join(", ")
        );
        let mut written = Vec::new();
        for chunk in rows.chunks(CHUNK_ROWS) {
            let keys: Vec<(Uuid, i64)> = dispatch!(Tx, self, |tx, DB| {
                let mut query = QueryBuilder::<DB>::new(&head);
                query.push_values(chunk, |mut row, (stream_id, ts, result_id, reading)| {
                    row.push_bind(*stream_id)
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
                });
                query.push(on_conflict).push(" RETURNING stream_id, ts");
                query.build_query_as().fetch_all(&mut **tx).await?
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

    /// Moves each stream's `last_result_at`/`last_error` forward, streams in ascending order.
    async fn bookkeeping(
        &mut self,
        per_stream: BTreeMap<Uuid, Bookkeeping<'_>>,
    ) -> Result<(), DbError> {
        for (stream_id, book) in per_stream {
            let (failure_at, failure_message) = match book.newest_failure {
                Some((at, _, message)) => (Some(at), Some(message)),
                None => (None, None),
            };
            dispatch!(Tx, self, |tx| {
                sqlx::query(BOOKKEEPING)
                    .bind(stream_id)
                    .bind(book.newest_result_at)
                    .bind(failure_at)
                    .bind(failure_message)
                    .execute(&mut **tx)
                    .await?;
            });
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
        let mut batch = PreparedBatch::new(results, failures);
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
        let new_readings = tx.insert_readings(&batch.readings).await?;
        let new_failures = tx.insert_failures(&batch.failures).await?;
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
