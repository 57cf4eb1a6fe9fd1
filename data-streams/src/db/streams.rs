//! Streams: configuration, desired state, and the (worker, generation) assignment.

use std::collections::HashMap;

use uuid::Uuid;

use super::model::{stream_columns, StreamRecord};
use super::{on_pool, Db, DbError, NewStream, StreamPatch, StreamRow, StreamState};

const INSERT_STREAM: &str = concat!(
    "INSERT INTO streams (id, adapter, endpoint, secret_key, interval_ms, cron, timeout_ms, \
     bucket_name, params, state, worker_id, generation, created_at, updated_at, \
     rate_per_minute, rate_per_day, rate_per_month) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, 0, $11, $11, $12, $13, $14) \
     RETURNING ",
    stream_columns!()
);

const GET_STREAM: &str = concat!("SELECT ", stream_columns!(), " FROM streams WHERE id = $1");

const LIST_STREAMS: &str = concat!(
    "SELECT ",
    stream_columns!(),
    " FROM streams ORDER BY created_at, id"
);

// The nullable schedule fields take a "change it" flag and a value, so a patch can set them
// to NULL; the others keep their value when the parameter is NULL.
const UPDATE_STREAM: &str = concat!(
    "UPDATE streams SET \
       adapter = COALESCE($2, adapter), \
       endpoint = COALESCE($3, endpoint), \
       secret_key = COALESCE($4, secret_key), \
       interval_ms = CASE WHEN $5 THEN $6 ELSE interval_ms END, \
       cron = CASE WHEN $7 THEN $8 ELSE cron END, \
       timeout_ms = COALESCE($9, timeout_ms), \
       bucket_name = COALESCE($10, bucket_name), \
       params = COALESCE($11, params), \
       updated_at = $12, \
       rate_per_minute = COALESCE($13, rate_per_minute), \
       rate_per_day = COALESCE($14, rate_per_day), \
       rate_per_month = COALESCE($15, rate_per_month) \
     WHERE id = $1 RETURNING ",
    stream_columns!()
);

// $3: error to record (or NULL); $4: clear last_error when no error is given.
// `failed` also drops the assignment: the worker stopped the stream itself.
const SET_STATE: &str = concat!(
    "UPDATE streams SET \
       state = $2, \
       worker_id = CASE WHEN $2 = 'failed' THEN NULL ELSE worker_id END, \
       last_error = CASE WHEN $3 IS NOT NULL THEN $3 WHEN $4 THEN NULL ELSE last_error END, \
       last_error_at = CASE WHEN $3 IS NOT NULL THEN $5 ELSE last_error_at END, \
       updated_at = $5 \
     WHERE id = $1 RETURNING ",
    stream_columns!()
);

const ASSIGN: &str = "UPDATE streams SET worker_id = $2, generation = generation + 1 \
                      WHERE id = $1 AND state = 'running' RETURNING generation";

const UNASSIGN: &str = "UPDATE streams SET worker_id = NULL \
                        WHERE id = $1 AND worker_id = $2 AND generation = $3";

const RELEASE_WORKER: &str =
    "UPDATE streams SET worker_id = NULL WHERE worker_id = $1 RETURNING id";

const ASSIGNABLE: &str = concat!(
    "SELECT ",
    stream_columns!(),
    " FROM streams WHERE state = 'running' AND worker_id IS NULL \
      ORDER BY created_at, id LIMIT $1"
);

const OF_WORKER: &str = concat!(
    "SELECT ",
    stream_columns!(),
    " FROM streams WHERE worker_id = $1 ORDER BY created_at, id"
);

const ASSIGNED_KEYS: &str = "SELECT worker_id, secret_key, COUNT(*) FROM streams \
                             WHERE worker_id IS NOT NULL GROUP BY worker_id, secret_key";

const ASSIGNED_COUNTS: &str = "SELECT worker_id, COUNT(*) FROM streams \
                               WHERE worker_id IS NOT NULL GROUP BY worker_id";

fn params_text(params: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::Value::Object(params.clone()).to_string()
}

fn decode_all(records: Vec<StreamRecord>) -> Result<Vec<StreamRow>, DbError> {
    records.into_iter().map(StreamRow::try_from).collect()
}

impl Db {
    /// Stores a new stream, unassigned, generation 0.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %stream.id))]
    pub async fn insert_stream(&self, stream: &NewStream) -> Result<StreamRow, DbError> {
        let params = params_text(&stream.params);
        let record: StreamRecord = on_pool!(self, |pool, DB| {
            sqlx::query_as(INSERT_STREAM)
                .bind(stream.id)
                .bind(&stream.adapter)
                .bind(&stream.endpoint)
                .bind(&stream.secret_key)
                .bind(stream.interval_ms)
                .bind(&stream.cron)
                .bind(stream.timeout_ms)
                .bind(&stream.bucket_name)
                .bind(&params)
                .bind(stream.state.as_str())
                .bind(stream.now_ms)
                .bind(i64::from(stream.rate_limit.per_minute))
                .bind(i64::from(stream.rate_limit.per_day))
                .bind(i64::from(stream.rate_limit.per_month))
                .fetch_one(pool)
                .await?
        });
        record.try_into()
    }

    /// One stream, if it exists.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %id))]
    pub async fn get_stream(&self, id: Uuid) -> Result<Option<StreamRow>, DbError> {
        let record: Option<StreamRecord> = on_pool!(self, |pool, DB| {
            sqlx::query_as(GET_STREAM)
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        record.map(StreamRow::try_from).transpose()
    }

    /// Every stream, oldest first.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn list_streams(&self) -> Result<Vec<StreamRow>, DbError> {
        let records: Vec<StreamRecord> = on_pool!(self, |pool, DB| {
            sqlx::query_as(LIST_STREAMS).fetch_all(pool).await?
        });
        decode_all(records)
    }

    /// Applies `patch`; `None` if the stream does not exist. The assignment and generation stay:
    /// the supervisor sends the assigned worker the new configuration.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %id))]
    pub async fn update_stream(
        &self,
        id: Uuid,
        patch: &StreamPatch,
    ) -> Result<Option<StreamRow>, DbError> {
        let params = patch.params.as_ref().map(params_text);
        let record: Option<StreamRecord> = on_pool!(self, |pool, DB| {
            sqlx::query_as(UPDATE_STREAM)
                .bind(id)
                .bind(&patch.adapter)
                .bind(&patch.endpoint)
                .bind(&patch.secret_key)
                .bind(patch.interval_ms.is_some())
                .bind(patch.interval_ms.flatten())
                .bind(patch.cron.is_some())
                .bind(patch.cron.as_ref().and_then(|cron| cron.as_deref()))
                .bind(patch.timeout_ms)
                .bind(&patch.bucket_name)
                .bind(&params)
                .bind(patch.now_ms)
                .bind(patch.rate_limit.map(|r| i64::from(r.per_minute)))
                .bind(patch.rate_limit.map(|r| i64::from(r.per_day)))
                .bind(patch.rate_limit.map(|r| i64::from(r.per_month)))
                .fetch_optional(pool)
                .await?
        });
        record.map(StreamRow::try_from).transpose()
    }

    /// Deletes a stream with its references, readings and failed runs (the foreign keys
    /// cascade). Raw objects stay in the bucket. False if there was no such stream.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %id))]
    pub async fn delete_stream(&self, id: Uuid) -> Result<bool, DbError> {
        let deleted = on_pool!(self, |pool, DB| {
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
        let record: Option<StreamRecord> = on_pool!(self, |pool, DB| {
            sqlx::query_as(SET_STATE)
                .bind(id)
                .bind(state.as_str())
                .bind(error)
                .bind(clear_error)
                .bind(now_ms)
                .fetch_optional(pool)
                .await?
        });
        record.map(StreamRow::try_from).transpose()
    }

    /// Assigns a running stream to a worker and bumps its generation in one statement; returns
    /// the new generation, or `None` if the stream does not exist or is not running.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %stream_id, worker_id = worker_id))]
    pub async fn assign(&self, stream_id: Uuid, worker_id: &str) -> Result<Option<i64>, DbError> {
        let generation = on_pool!(self, |pool, DB| {
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
        let cleared = on_pool!(self, |pool, DB| {
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
        let released = on_pool!(self, |pool, DB| {
            sqlx::query_scalar(RELEASE_WORKER)
                .bind(worker_id)
                .fetch_all(pool)
                .await?
        });
        Ok(released)
    }

    /// Running streams with no worker, oldest first, at most `limit`.
    #[tracing::instrument(level = "debug", skip_all, fields(limit = limit))]
    pub async fn assignable_streams(&self, limit: i64) -> Result<Vec<StreamRow>, DbError> {
        let records: Vec<StreamRecord> = on_pool!(self, |pool, DB| {
            sqlx::query_as(ASSIGNABLE)
                .bind(limit.max(0))
                .fetch_all(pool)
                .await?
        });
        decode_all(records)
    }

    /// The streams assigned to a worker, oldest first.
    #[tracing::instrument(level = "debug", skip_all, fields(worker_id = worker_id))]
    pub async fn streams_of_worker(&self, worker_id: &str) -> Result<Vec<StreamRow>, DbError> {
        let records: Vec<StreamRecord> = on_pool!(self, |pool, DB| {
            sqlx::query_as(OF_WORKER)
                .bind(worker_id)
                .fetch_all(pool)
                .await?
        });
        decode_all(records)
    }

    /// How many streams each worker has assigned per API key, as (worker id, key, count). The
    /// keys are secrets: callers compare them and never print them.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn assigned_keys(&self) -> Result<Vec<(String, String, i64)>, DbError> {
        let pairs: Vec<(String, String, i64)> = on_pool!(self, |pool, DB| {
            sqlx::query_as(ASSIGNED_KEYS).fetch_all(pool).await?
        });
        Ok(pairs)
    }

    /// How many streams each worker has assigned; workers with none are absent.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn assigned_counts(&self) -> Result<HashMap<String, i64>, DbError> {
        let counts: Vec<(String, i64)> = on_pool!(self, |pool, DB| {
            sqlx::query_as(ASSIGNED_COUNTS).fetch_all(pool).await?
        });
        Ok(counts.into_iter().collect())
    }
}
