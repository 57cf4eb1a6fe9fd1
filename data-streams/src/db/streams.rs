//! Streams: configuration, desired state, and the (worker, generation) assignment.

use std::collections::HashMap;

use common::SecretKey;
use protocol::{RateLimit, Schedule};
use sqlx::query::QueryAs;
use sqlx::{Database, Encode, FromRow, Row, Type};
use uuid::Uuid;

use super::error::CorruptRow;
use super::row::StoredRow;
use super::{dispatch, leader_write, Db, DbError};
use crate::stream::{StreamRow, StreamSpec, StreamState};

/// The columns [`StreamRow`]'s `FromRow` reads.
pub(super) const STREAM_COLUMNS: &str =
    "id, adapter, endpoint, secret_key, interval_ms, cron, timeout_ms, \
     bucket_name, params, rate_per_minute, rate_per_day, rate_per_month, state, worker_id, \
     generation, last_result_at, last_error, last_error_at, created_at, updated_at, source, \
     start_at, window_end";

/// `SELECT <stream columns> FROM streams <tail>`.
pub(super) fn select_streams(tail: &str) -> String {
    format!("SELECT {STREAM_COLUMNS} FROM streams {tail}")
}

// $2..$12 are the spec, bound by `bind_spec`.
const INSERT_STREAM: &str = "INSERT INTO streams (id, adapter, endpoint, secret_key, \
     interval_ms, cron, timeout_ms, bucket_name, params, rate_per_minute, rate_per_day, \
     rate_per_month, state, worker_id, generation, created_at, updated_at, source, start_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL, 0, $14, $14, $15, \
     $16) \
     RETURNING ";

// An update sets the whole spec: the API validated the patched stream as a whole. A new
// `start_at` starts the windows over from it (a backfill); otherwise they go on.
const UPDATE_STREAM: &str = "UPDATE streams SET adapter = $2, endpoint = $3, secret_key = $4, \
     interval_ms = $5, cron = $6, timeout_ms = $7, bucket_name = $8, params = $9, \
     rate_per_minute = $10, rate_per_day = $11, rate_per_month = $12, updated_at = $13, \
     source = $14, \
     window_end = CASE WHEN COALESCE(start_at, -1) <> COALESCE($15, -1) THEN NULL \
       ELSE window_end END, \
     start_at = $15, reconfigure = $16 \
     WHERE id = $1 RETURNING ";

// $3: error to record (or NULL); $4: clear last_error when no error is given.
// `failed` also drops the assignment: the worker stopped the stream itself.
const SET_STATE: &str = "UPDATE streams SET \
       state = $2, \
       worker_id = CASE WHEN $2 = 'failed' THEN NULL ELSE worker_id END, \
       last_error = CASE WHEN $3 IS NOT NULL THEN $3 WHEN $4 THEN NULL ELSE last_error END, \
       last_error_at = CASE WHEN $3 IS NOT NULL THEN $5 ELSE last_error_at END, \
       updated_at = $5 \
     WHERE id = $1 RETURNING ";

const ASSIGN: &str = "UPDATE streams SET worker_id = $2, generation = generation + 1 \
                      WHERE id = $1 AND state = 'running' RETURNING generation";

pub(super) const UNASSIGN: &str = "UPDATE streams SET worker_id = NULL \
                        WHERE id = $1 AND worker_id = $2 AND generation = $3";

const RELEASE_WORKER: &str =
    "UPDATE streams SET worker_id = NULL WHERE worker_id = $1 RETURNING id";

const ASSIGNED_KEYS: &str = "SELECT worker_id, secret_key, COUNT(*) FROM streams \
                             WHERE worker_id IS NOT NULL GROUP BY worker_id, secret_key";

const ASSIGNED_COUNTS: &str = "SELECT worker_id, COUNT(*) FROM streams \
                               WHERE worker_id IS NOT NULL GROUP BY worker_id";

/// The spec's columns, bound as `$2..$12` of `INSERT_STREAM` and `UPDATE_STREAM`.
pub(super) struct SpecColumns<'a> {
    pub(super) adapter: &'a str,
    pub(super) endpoint: &'a str,
    pub(super) secret_key: &'a str,
    pub(super) interval_ms: Option<i64>,
    pub(super) cron: Option<&'a str>,
    pub(super) timeout_ms: i64,
    pub(super) bucket_name: &'a str,
    pub(super) params: String,
    pub(super) rate: [i64; 3],
    pub(super) source: String,
    pub(super) start_at: Option<i64>,
}

impl<'a> SpecColumns<'a> {
    pub(super) fn of(spec: &'a StreamSpec) -> Self {
        let rate = spec.rate_limit();
        SpecColumns {
            adapter: spec.adapter(),
            endpoint: spec.endpoint(),
            secret_key: spec.secret_key().expose(),
            interval_ms: spec.interval_ms().and_then(|ms| i64::try_from(ms).ok()),
            cron: spec.cron(),
            timeout_ms: i64::try_from(spec.timeout_ms()).unwrap_or(i64::MAX),
            bucket_name: spec.bucket_name(),
            params: serde_json::Value::Object(spec.params().clone()).to_string(),
            rate: [rate.per_minute, rate.per_day, rate.per_month].map(i64::from),
            source: serde_json::Value::Object(spec.source().clone()).to_string(),
            start_at: spec.start_at_ms(),
        }
    }
}

/// Binds the spec's columns (`$2..$12`) after the id.
fn bind_spec<'q, DB: Database>(
    query: QueryAs<'q, DB, StreamRow, <DB as Database>::Arguments<'q>>,
    c: &'q SpecColumns<'q>,
) -> QueryAs<'q, DB, StreamRow, <DB as Database>::Arguments<'q>>
where
    &'q str: Encode<'q, DB> + Type<DB>,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
{
    query
        .bind(c.adapter)
        .bind(c.endpoint)
        .bind(c.secret_key)
        .bind(c.interval_ms)
        .bind(c.cron)
        .bind(c.timeout_ms)
        .bind(c.bucket_name)
        .bind(c.params.as_str())
        .bind(c.rate[0])
        .bind(c.rate[1])
        .bind(c.rate[2])
}

impl<'r, R: Row + StoredRow<'r>> FromRow<'r, R> for StreamRow {
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let id = row.uuid("id")?;
        let corrupt = |what: String| CorruptRow::decode(format!("streams.{what} of {id}"));
        let state = row
            .text("state")?
            .parse()
            .map_err(|e| corrupt(format!("state: {e}")))?;
        let params = serde_json::from_str(&row.text("params")?)
            .map_err(|e| corrupt(format!("params is not a JSON object: {e}")))?;
        let source = serde_json::from_str(&row.text("source")?)
            .map_err(|e| corrupt(format!("source is not a JSON object: {e}")))?;
        let window = |column: &'r str| -> Result<u32, sqlx::Error> {
            let value = row.int(column)?;
            u32::try_from(value)
                .map_err(|_| corrupt(format!("{column} is {value}, not a call count")))
        };
        let rate_limit = RateLimit {
            per_minute: window("rate_per_minute")?,
            per_day: window("rate_per_day")?,
            per_month: window("rate_per_month")?,
        };
        let interval_ms = row.int_or_null("interval_ms")?;
        // The schema's CHECKs hold exactly one, and a positive interval.
        let schedule = match (
            row.text_or_null("cron")?,
            interval_ms.and_then(|ms| u64::try_from(ms).ok()),
        ) {
            (Some(expr), _) => Schedule::Cron { expr },
            (None, Some(millis)) if millis > 0 => Schedule::Interval { millis },
            _ => return Err(corrupt("interval_ms/cron: no schedule".into())),
        };
        let spec = StreamSpec {
            adapter: row.text("adapter")?,
            endpoint: row.text("endpoint")?,
            secret_key: SecretKey::new(row.text("secret_key")?),
            schedule,
            timeout_ms: u64::try_from(row.int("timeout_ms")?).unwrap_or(1),
            bucket_name: row.text("bucket_name")?,
            params,
            rate_limit,
            source,
            start_at_ms: row.int_or_null("start_at")?,
        };
        Ok(StreamRow {
            id,
            spec,
            state,
            worker_id: row.text_or_null("worker_id")?,
            generation: row.int("generation")?,
            last_result_at: row.int_or_null("last_result_at")?,
            last_error: row.text_or_null("last_error")?,
            last_error_at: row.int_or_null("last_error_at")?,
            created_at: row.int("created_at")?,
            updated_at: row.int("updated_at")?,
            window_end_ms: row.int_or_null("window_end")?,
        })
    }
}

impl Db {
    /// Stores a new stream, unassigned, generation 0, created and updated at `now_ms`.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %id))]
    pub async fn insert_stream(
        &self,
        id: Uuid,
        spec: &StreamSpec,
        state: StreamState,
        now_ms: i64,
    ) -> Result<StreamRow, DbError> {
        let c = SpecColumns::of(spec);
        let sql = format!("{INSERT_STREAM}{STREAM_COLUMNS}");
        let row = dispatch!(Db, self, |pool| {
            bind_spec(sqlx::query_as(&sql).bind(id), &c)
                .bind(state.as_str())
                .bind(now_ms)
                .bind(c.source.as_str())
                .bind(c.start_at)
                .fetch_one(pool)
                .await?
        });
        self.record_state(id, state, now_ms).await?;
        Ok(row)
    }

    /// One stream, if it exists.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %id))]
    pub async fn get_stream(&self, id: Uuid) -> Result<Option<StreamRow>, DbError> {
        let sql = select_streams("WHERE id = $1");
        let row = dispatch!(Db, self, |pool| {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?
        });
        Ok(row)
    }

    /// Every stream, oldest first.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn list_streams(&self) -> Result<Vec<StreamRow>, DbError> {
        let sql = select_streams("ORDER BY created_at, id");
        let rows = dispatch!(Db, self, |pool| sqlx::query_as(&sql)
            .fetch_all(pool)
            .await?);
        Ok(rows)
    }

    /// Streams oldest first after (`created_at`, `id`), at most `limit`: [`Db::list_streams`] a
    /// page at a time (the unpaged `GET /streams` streams its answer from these).
    #[tracing::instrument(level = "debug", skip_all, fields(limit = limit))]
    pub async fn list_streams_after(
        &self,
        after: Option<(i64, Uuid)>,
        limit: i64,
    ) -> Result<Vec<StreamRow>, DbError> {
        let rows = match after {
            None => {
                let sql = select_streams("ORDER BY created_at, id LIMIT $1");
                dispatch!(Db, self, |pool| sqlx::query_as(&sql)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?)
            }
            Some((created_at, id)) => {
                let sql = select_streams(
                    "WHERE created_at > $1 OR (created_at = $1 AND id > $2) \
                     ORDER BY created_at, id LIMIT $3",
                );
                dispatch!(Db, self, |pool| sqlx::query_as(&sql)
                    .bind(created_at)
                    .bind(id)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?)
            }
        };
        Ok(rows)
    }

    /// Replaces the stream's spec; `None` if the stream does not exist. The assignment and
    /// generation stay: the supervisor sends the assigned worker the new configuration.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %id))]
    pub async fn update_stream(
        &self,
        id: Uuid,
        spec: &StreamSpec,
        now_ms: i64,
    ) -> Result<Option<StreamRow>, DbError> {
        self.update_stream_marked(id, spec, now_ms, false).await
    }

    /// [`Db::update_stream`], and with `reconfigure` marked for the leader: its worker needs
    /// the new config ([`Db::streams_to_reconfigure`]).
    pub async fn update_stream_marked(
        &self,
        id: Uuid,
        spec: &StreamSpec,
        now_ms: i64,
        reconfigure: bool,
    ) -> Result<Option<StreamRow>, DbError> {
        let c = SpecColumns::of(spec);
        let sql = format!("{UPDATE_STREAM}{STREAM_COLUMNS}");
        let row = dispatch!(Db, self, |pool| {
            bind_spec(sqlx::query_as(&sql).bind(id), &c)
                .bind(now_ms)
                .bind(c.source.as_str())
                .bind(c.start_at)
                .bind(reconfigure)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// Streams marked for a new config on their worker, at most `limit`, by id.
    pub async fn streams_to_reconfigure(&self, limit: i64) -> Result<Vec<StreamRow>, DbError> {
        let sql =
            format!("SELECT {STREAM_COLUMNS} FROM streams WHERE reconfigure ORDER BY id LIMIT $1");
        let rows = dispatch!(Db, self, |pool| {
            sqlx::query_as(&sql)
                .bind(limit.max(0))
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// Clears the mark of `id` if it was not changed again since `updated_at`.
    pub async fn reconfigured(&self, id: Uuid, updated_at: i64) -> Result<(), DbError> {
        leader_write!(self, |pool| {
            sqlx::query("UPDATE streams SET reconfigure = FALSE WHERE id = $1 AND updated_at = $2")
                .bind(id)
                .bind(updated_at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Deletes a stream with its references, readings and failed runs (the foreign keys
    /// cascade). Raw objects stay in the bucket. False if there was no such stream.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %id))]
    pub async fn delete_stream(&self, id: Uuid) -> Result<bool, DbError> {
        let deleted = dispatch!(Db, self, |pool| {
            sqlx::query("DELETE FROM streams WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    /// Sets the desired state. `error: Some` records it as `last_error` (with `last_error_at =
    /// now_ms`); otherwise `clear_error` clears `last_error` (its time stays, so a replayed older
    /// failure does not bring it back). `Failed` also clears the assignment: the worker stopped
    /// the stream itself. `None` if the stream does not exist.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %id, state = %state))]
    pub async fn set_state(
        &self,
        id: Uuid,
        state: StreamState,
        error: Option<&str>,
        clear_error: bool,
        now_ms: i64,
    ) -> Result<Option<StreamRow>, DbError> {
        let sql = format!("{SET_STATE}{STREAM_COLUMNS}");
        let row: Option<StreamRow> = leader_write!(self, |pool| {
            sqlx::query_as(&sql)
                .bind(id)
                .bind(state.as_str())
                .bind(error)
                .bind(clear_error)
                .bind(now_ms)
                .fetch_optional(pool)
                .await?
        });
        if row.is_some() {
            // The coverage ledger's history: a stop expects nothing from then on.
            self.record_state(id, state, now_ms).await?;
        }
        Ok(row)
    }

    /// Assigns a running stream to a worker and bumps its generation in one statement; returns
    /// the new generation, or `None` if the stream does not exist or is not running.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %stream_id, worker_id = worker_id))]
    pub async fn assign(&self, stream_id: Uuid, worker_id: &str) -> Result<Option<i64>, DbError> {
        let generation = leader_write!(self, |pool| {
            sqlx::query_scalar(ASSIGN)
                .bind(stream_id)
                .bind(worker_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(generation)
    }

    /// Clears the assignment if it is still (`worker_id`, `generation`); a stale clear is a
    /// no-op. Returns whether it cleared.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %stream_id, worker_id = worker_id, generation = generation))]
    pub async fn unassign(
        &self,
        stream_id: Uuid,
        worker_id: &str,
        generation: i64,
    ) -> Result<bool, DbError> {
        let cleared = leader_write!(self, |pool| {
            sqlx::query(UNASSIGN)
                .bind(stream_id)
                .bind(worker_id)
                .bind(generation)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(cleared > 0)
    }

    /// Clears every assignment of a worker (it went silent); returns the streams released.
    #[tracing::instrument(level = "debug", skip_all, fields(worker_id = worker_id))]
    pub async fn release_worker(&self, worker_id: &str) -> Result<Vec<Uuid>, DbError> {
        let released = leader_write!(self, |pool| {
            sqlx::query_scalar(RELEASE_WORKER)
                .bind(worker_id)
                .fetch_all(pool)
                .await?
        });
        Ok(released)
    }

    /// Running streams with no worker, oldest first, at most `limit`.
    pub async fn assignable_streams(&self, limit: i64) -> Result<Vec<StreamRow>, DbError> {
        self.assignable_streams_after(None, limit).await
    }

    /// Running streams with no worker, oldest first, at most `limit`, after the stream
    /// (created_at, id) `after` in that order: a sweep reads on past streams it could not
    /// place.
    #[tracing::instrument(level = "debug", skip_all, fields(limit = limit))]
    pub async fn assignable_streams_after(
        &self,
        after: Option<(i64, Uuid)>,
        limit: i64,
    ) -> Result<Vec<StreamRow>, DbError> {
        let table = match self {
            Db::Sqlite(_) => super::sqlite::STREAMS_UNASSIGNED,
            Db::Postgres(_) => super::postgres::STREAMS_UNASSIGNED,
        };
        let cursor = if after.is_some() {
            "AND (created_at, id) > ($2, $3) "
        } else {
            ""
        };
        let sql = format!(
            "SELECT {STREAM_COLUMNS} FROM {table} \
             WHERE state = 'running' AND worker_id IS NULL AND adapter <> 'PUSH' {cursor}\
             ORDER BY created_at, id LIMIT $1"
        );
        let rows = dispatch!(Db, self, |pool| {
            let mut query = sqlx::query_as(&sql).bind(limit.max(0));
            if let Some((created_at, id)) = after {
                query = query.bind(created_at).bind(id);
            }
            query.fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// The streams assigned to a worker, in no particular order.
    #[tracing::instrument(level = "debug", skip_all, fields(worker_id = worker_id))]
    pub async fn streams_of_worker(&self, worker_id: &str) -> Result<Vec<StreamRow>, DbError> {
        let mut all = Vec::new();
        let mut chunks = self.streams_of_worker_chunks(worker_id, 1_000);
        while let Some(chunk) = chunks.recv().await {
            all.extend(chunk?);
        }
        Ok(all)
    }

    /// The streams assigned to a worker, in chunks of at most `chunk` as they are read: a task
    /// reads them and the caller gets each chunk while the read goes on (a restarted worker's
    /// quarter of a million rows take seconds to decode; its starts need not wait for the
    /// last). An error ends the chunks.
    ///
    /// On SQLite, a worker that holds a large share of all streams (a restarted one of four
    /// holding a million) is read with one pass over the table: a quarter of a million lookups
    /// through the `worker_id` index cost 1.9 s against 0.3 s for the scan (the rows of one
    /// worker are spread over the whole table). A worker with a small share is read through the
    /// index. PostgreSQL's planner makes the same choice from its statistics.
    pub fn streams_of_worker_chunks(
        &self,
        worker_id: &str,
        chunk: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<Vec<StreamRow>, DbError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let db = self.clone();
        let worker_id = worker_id.to_owned();
        tokio::spawn(async move {
            if let Err(err) = db
                .read_streams_of_worker(&worker_id, chunk.max(1), &tx)
                .await
            {
                let _ = tx.send(Err(err)).await;
            }
        });
        rx
    }

    async fn read_streams_of_worker(
        &self,
        worker_id: &str,
        chunk: usize,
        tx: &tokio::sync::mpsc::Sender<Result<Vec<StreamRow>, DbError>>,
    ) -> Result<(), DbError> {
        use futures::TryStreamExt;
        let sql = match self {
            Db::Sqlite(pool) => {
                let (mine, all): (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT COUNT(*) FROM streams WHERE worker_id = $1), \
                     (SELECT COUNT(*) FROM streams)",
                )
                .bind(worker_id)
                .fetch_one(pool)
                .await?;
                let table = if mine.saturating_mul(20) > all {
                    "NOT INDEXED"
                } else {
                    "INDEXED BY streams_worker_id_idx"
                };
                select_streams(&format!("{table} WHERE worker_id = $1"))
            }
            Db::Postgres(_) => select_streams("WHERE worker_id = $1"),
        };
        let mut rows: futures::stream::BoxStream<'_, Result<StreamRow, sqlx::Error>> = match self {
            Db::Sqlite(pool) => sqlx::query_as(&sql).bind(worker_id).fetch(pool),
            Db::Postgres(pool) => sqlx::query_as(&sql).bind(worker_id).fetch(pool),
        };
        let mut batch = Vec::with_capacity(chunk);
        while let Some(row) = rows.try_next().await? {
            batch.push(row);
            if batch.len() == chunk && tx.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                return Ok(());
            }
        }
        if !batch.is_empty() {
            let _ = tx.send(Ok(batch)).await;
        }
        Ok(())
    }

    /// PostgreSQL: refreshes the planner's statistics of `streams` after a bulk change. Until
    /// autovacuum gets to it, a table that grew by a million rows in minutes is planned from
    /// its old statistics: `GET /streams?status=running&limit=100` was planned as a bitmap scan
    /// of an estimated 2,853 running streams (there were 1,000,000) and a sort, 5.6 s a page.
    /// SQLite keeps no statistics unless asked (its plans are pinned with `INDEXED BY` where it
    /// matters): nothing to do there.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn analyze_streams(&self) -> Result<(), DbError> {
        if let Db::Postgres(pool) = self {
            sqlx::query("ANALYZE streams").execute(pool).await?;
        }
        Ok(())
    }

    /// How many streams each worker has assigned per API key, as (worker id, key, count).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn assigned_keys(&self) -> Result<Vec<(String, SecretKey, i64)>, DbError> {
        let rows: Vec<(String, String, i64)> = dispatch!(Db, self, |pool| {
            sqlx::query_as(ASSIGNED_KEYS).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(worker, key, count)| (worker, SecretKey::new(key), count))
            .collect())
    }

    /// How many streams each worker has assigned; workers with none are absent.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn assigned_counts(&self) -> Result<HashMap<String, i64>, DbError> {
        let counts: Vec<(String, i64)> = dispatch!(Db, self, |pool| {
            sqlx::query_as(ASSIGNED_COUNTS).fetch_all(pool).await?
        });
        Ok(counts.into_iter().collect())
    }
}
