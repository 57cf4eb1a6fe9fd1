//! The event path: result references, readings and failed runs reported by workers (and
//! references found by the reconciler), written in one transaction per batch.
//!
//! Lock order, the same in every batch, so concurrent batches on PostgreSQL cannot deadlock:
//! streams (key share), results by id, measurements by (stream, ts), failures by run id, then
//! the streams' bookkeeping columns by id. Everything is deduplicated and sorted in Rust first.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use protocol::{Measurement, ResultRecord, RunFailure};
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::{
    in_transaction, now_ms, on_pool, parse_timestamp_ms, Db, DbError, PersistStats, ReconciledRef,
    CHUNK_ROWS,
};

/// Moves `last_result_at` forward to `$2`, `last_error_at` forward to `$3` (with `$4` as the
/// error), and clears `last_error` when the newest result is newer than the newest error. All
/// as expressions over the row's current values, so concurrent batches cannot lose an update.
macro_rules! newest_result_at {
    () => {
        "(CASE WHEN $2 IS NOT NULL AND (last_result_at IS NULL OR $2 > last_result_at) \
         THEN $2 ELSE last_result_at END)"
    };
}
macro_rules! failure_is_newer {
    () => {
        "($3 IS NOT NULL AND (last_error_at IS NULL OR $3 > last_error_at))"
    };
}
const BOOKKEEPING: &str = concat!(
    "UPDATE streams SET last_result_at = ",
    newest_result_at!(),
    ", last_error_at = CASE WHEN ",
    failure_is_newer!(),
    " THEN $3 ELSE last_error_at END",
    ", last_error = CASE WHEN ",
    newest_result_at!(),
    " > (CASE WHEN ",
    failure_is_newer!(),
    " THEN $3 ELSE last_error_at END) THEN NULL WHEN ",
    failure_is_newer!(),
    " THEN $4 ELSE last_error END WHERE id = $1"
);

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

/// A reading ready to insert.
struct ReadingRow<'a> {
    stream_id: Uuid,
    ts: i64,
    result_id: Uuid,
    weather_ts: Option<i64>,
    reading: &'a Measurement,
}

/// Per stream, what this batch says about its health.
#[derive(Default)]
struct Bookkeeping<'a> {
    newest_result_at: Option<i64>,
    newest_failure: Option<(i64, Uuid, &'a str)>,
}

/// Which of `ids` name an existing stream, locking them against deletion until commit where
/// the dialect needs that. Evaluates to a `HashSet<Uuid>`.
macro_rules! known_streams {
    ($tx:ident, $DB:ident, $dialect:ident, $ids:expr) => {{
        let mut known: HashSet<Uuid> = HashSet::new();
        for chunk in $ids.chunks(CHUNK_ROWS) {
            let mut query = QueryBuilder::<$DB>::new("SELECT id FROM streams WHERE id IN (");
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            query.push(")").push($dialect.lock_streams);
            let found: Vec<Uuid> = query.build_query_scalar().fetch_all(&mut *$tx).await?;
            known.extend(found);
        }
        known
    }};
}

/// Inserts `results` rows with `status`, skipping ids already stored. Evaluates to the number
/// inserted.
macro_rules! insert_refs {
    ($tx:ident, $DB:ident, $rows:expr, $status:expr, $now:expr) => {{
        let mut inserted = 0u64;
        for chunk in $rows.chunks(CHUNK_ROWS) {
            let mut query = QueryBuilder::<$DB>::new(
                "INSERT INTO results \
                 (id, stream_id, bucket, key, fetched_at, scheduled_at, started_at, size, \
                 sha256, status, created_at) ",
            );
            query.push_values(chunk, |mut row, r: &RefRow<'_>| {
                row.push_bind(r.id)
                    .push_bind(r.stream_id)
                    .push_bind(r.bucket)
                    .push_bind(r.key)
                    .push_bind(r.fetched_at)
                    .push_bind(r.scheduled_at)
                    .push_bind(r.started_at)
                    .push_bind(r.size)
                    .push_bind(r.sha256)
                    .push_bind($status)
                    .push_bind($now);
            });
            query.push(" ON CONFLICT (id) DO NOTHING");
            inserted += query.build().execute(&mut *$tx).await?.rows_affected();
        }
        inserted
    }};
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
            let Some(ts) = reading.pollution_ts.as_deref().and_then(parse_timestamp_ms) else {
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
                        weather_ts: reading.weather_ts.as_deref().and_then(parse_timestamp_ms),
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

impl Db {
    /// Persists a batch of worker events in ONE transaction: references (`status = ok`),
    /// readings (first per (stream, pollution ts) wins), failed runs, and each stream's
    /// `last_result_at`/`last_error` bookkeeping. Idempotent on result id and run id: a replayed
    /// batch inserts nothing and is not an error. Events for streams that no longer exist are
    /// counted in [`PersistStats::skipped_unknown_stream`] and dropped, so they never block the
    /// batch. A reading without a parsable pollution ts is not stored. A failure with
    /// `stream_stopped` is recorded like any other; moving the stream to `failed` (and telling
    /// whoever needs telling) is the caller's [`Db::set_state`].
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(results = results.len(), failures = failures.len())
    )]
    pub async fn persist_events(
        &self,
        results: &[ResultRecord],
        failures: &[RunFailure],
    ) -> Result<PersistStats, DbError> {
        let mut batch = PreparedBatch::new(results, failures);
        if batch.stream_ids.is_empty() {
            return Ok(batch.stats);
        }
        let now = now_ms();
        let stats = in_transaction!(self, |tx, DB, dialect| {
            let known = known_streams!(tx, DB, dialect, batch.stream_ids);
            batch.retain_known(&known);

            let refs_inserted = insert_refs!(tx, DB, batch.refs, "ok", now);

            let mut readings_inserted = 0u64;
            for chunk in batch.readings.chunks(CHUNK_ROWS) {
                let mut query = QueryBuilder::<DB>::new(
                    "INSERT INTO measurements (stream_id, ts, result_id, city, state, country, \
                     lat, lon, aqius, mainus, aqicn, maincn, weather_ts, tp, pr, hu, ws, wd, ic, \
                     heat_index) ",
                );
                query.push_values(chunk, |mut row, m: &ReadingRow<'_>| {
                    let r = m.reading;
                    row.push_bind(m.stream_id)
                        .push_bind(m.ts)
                        .push_bind(m.result_id)
                        .push_bind(r.city.as_deref())
                        .push_bind(r.state.as_deref())
                        .push_bind(r.country.as_deref())
                        .push_bind(r.lat)
                        .push_bind(r.lon)
                        .push_bind(r.aqius)
                        .push_bind(r.mainus.as_deref())
                        .push_bind(r.aqicn)
                        .push_bind(r.maincn.as_deref())
                        .push_bind(m.weather_ts)
                        .push_bind(r.tp)
                        .push_bind(r.pr)
                        .push_bind(r.hu)
                        .push_bind(r.ws)
                        .push_bind(r.wd)
                        .push_bind(r.ic.as_deref())
                        .push_bind(r.heat_index);
                });
                query.push(" ON CONFLICT (stream_id, ts) DO NOTHING");
                readings_inserted += query.build().execute(&mut *tx).await?.rows_affected();
            }

            let mut failures_inserted = 0u64;
            for chunk in batch.failures.chunks(CHUNK_ROWS) {
                let mut query = QueryBuilder::<DB>::new(
                    "INSERT INTO run_failures \
                     (run_id, stream_id, at, class, message, stream_stopped) ",
                );
                query.push_values(chunk, |mut row, f: &&RunFailure| {
                    row.push_bind(f.run_id)
                        .push_bind(f.stream_id)
                        .push_bind(f.at_ms)
                        .push_bind(f.class.as_str())
                        .push_bind(f.message.as_str())
                        .push_bind(f.stream_stopped);
                });
                query.push(" ON CONFLICT (run_id) DO NOTHING");
                failures_inserted += query.build().execute(&mut *tx).await?.rows_affected();
            }

            for (stream_id, book) in batch.bookkeeping() {
                let (failure_at, failure_message) = match book.newest_failure {
                    Some((at, _, message)) => (Some(at), Some(message)),
                    None => (None, None),
                };
                sqlx::query(BOOKKEEPING)
                    .bind(stream_id)
                    .bind(book.newest_result_at)
                    .bind(failure_at)
                    .bind(failure_message)
                    .execute(&mut *tx)
                    .await?;
            }

            let mut stats = batch.stats;
            stats.results_inserted = refs_inserted;
            stats.results_duplicate += batch.refs.len() as u64 - refs_inserted;
            stats.measurements_inserted = readings_inserted;
            stats.measurements_duplicate += batch.readings.len() as u64 - readings_inserted;
            stats.failures_inserted = failures_inserted;
            stats.failures_duplicate += batch.failures.len() as u64 - failures_inserted;
            stats
        });
        tracing::debug!(?stats, "events persisted");
        Ok(stats)
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
        let now = now_ms();
        let inserted = in_transaction!(self, |tx, DB, dialect| {
            let known = known_streams!(tx, DB, dialect, stream_ids);
            let rows: Vec<RefRow<'_>> = unique
                .into_values()
                .filter(|r| known.contains(&r.stream_id))
                .collect();
            insert_refs!(tx, DB, rows, "reconciled", now)
        });
        Ok(inserted)
    }

    /// Which of `ids` already have a reference.
    #[tracing::instrument(level = "debug", skip_all, fields(ids = ids.len()))]
    pub async fn existing_result_ids(&self, ids: &[Uuid]) -> Result<HashSet<Uuid>, DbError> {
        let mut existing = HashSet::new();
        for chunk in ids.chunks(CHUNK_ROWS) {
            let found: Vec<Uuid> = on_pool!(self, |pool, DB| {
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
}
