//! Push streams (`PUSH`): an object's reference, its readings and the request's progress
//! committed together; the intents that let a stored-but-never-committed object be removed;
//! idempotent requests; ingest tokens.

use std::collections::BTreeMap;

use protocol::Measurement;
use uuid::Uuid;

use super::events::{place_of, ReadingToWrite, BOOKKEEPING};
use super::{dispatch, Db, DbError};

/// One object a push stored, about to be referenced.
#[derive(Debug, Clone)]
pub struct PushObject {
    pub result_id: Uuid,
    pub stream_id: Uuid,
    pub bucket: String,
    pub key: String,
    /// When the object was stored (its result id's time).
    pub fetched_at: i64,
    /// When its first line arrived.
    pub received_at: i64,
    pub size: i64,
    pub sha256: String,
}

/// Where an idempotent request stands after an object: lines and records committed so far,
/// and every object's result id.
#[derive(Debug, Clone, Copy)]
pub struct PushProgress<'a> {
    pub idempotency_key: &'a str,
    pub lines: i64,
    pub accepted: i64,
    pub result_ids: &'a [Uuid],
}

/// What committing an object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushCommit {
    /// Referenced, with this many new readings.
    Stored { readings: u64 },
    /// The stream is gone (deleted while the request ran): nothing was written.
    NoStream,
}

/// An idempotent request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestRequest {
    pub lines: i64,
    pub accepted: i64,
    pub result_ids: Vec<Uuid>,
    /// The answer's status and body once the request ended.
    pub answer: Option<(u16, String)>,
}

/// An ingest token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TokenRow {
    pub id: Uuid,
    pub stream_id: Uuid,
    pub name: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl Db {
    /// Records that `bucket/key` is about to be stored for `result_id`, before the put: an
    /// object whose reference never commits can then be found and removed.
    pub async fn push_intent(
        &self,
        result_id: Uuid,
        bucket: &str,
        key: &str,
        now: i64,
    ) -> Result<(), DbError> {
        dispatch!(Db, self, |pool| {
            sqlx::query(
                "INSERT INTO push_intents (result_id, bucket, key, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (result_id) DO NOTHING",
            )
            .bind(result_id)
            .bind(bucket)
            .bind(key)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// In ONE transaction: the object's reference, its readings (the first per (stream, place,
    /// ts) wins, as on the event path), the end of its intent, the stream's `last_result_at`,
    /// and the request's progress when it has an `Idempotency-Key`.
    pub async fn commit_push(
        &self,
        object: &PushObject,
        readings: &[Measurement],
        progress: Option<PushProgress<'_>>,
    ) -> Result<PushCommit, DbError> {
        let now = common::now_ms();
        // Deduplicated, sorted into the event path's lock order.
        let mut unique: BTreeMap<(String, i64), &Measurement> = BTreeMap::new();
        for reading in readings {
            if let Some(ts) = reading.ts_ms() {
                unique.entry((place_of(reading), ts)).or_insert(reading);
            }
        }
        let rows: Vec<ReadingToWrite<'_>> = unique
            .iter()
            .map(|((place, ts), reading)| {
                (
                    object.stream_id,
                    place.as_str(),
                    *ts,
                    object.result_id,
                    *reading,
                )
            })
            .collect();
        let mut tx = self.begin_write().await?;
        if tx.known_streams(&[object.stream_id]).await?.is_empty() {
            return Ok(PushCommit::NoStream);
        }
        dispatch!(Tx, &mut tx, |tx| {
            sqlx::query(
                "INSERT INTO results (id, stream_id, bucket, key, fetched_at, scheduled_at, \
                 started_at, size, sha256, status, created_at) \
                 VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8, 'ok', $9) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(object.result_id)
            .bind(object.stream_id)
            .bind(&object.bucket)
            .bind(&object.key)
            .bind(object.fetched_at)
            .bind(object.received_at)
            .bind(object.size)
            .bind(&object.sha256)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        });
        let written = tx
            .write_readings(
                &rows,
                i64::from(catalogue::iqair::PARSER_VERSION),
                " ON CONFLICT (stream_id, place, ts) DO NOTHING",
            )
            .await?;
        dispatch!(Tx, &mut tx, |tx| {
            sqlx::query("DELETE FROM push_intents WHERE result_id = $1")
                .bind(object.result_id)
                .execute(&mut **tx)
                .await?;
            sqlx::query(BOOKKEEPING)
                .bind(object.stream_id)
                .bind(Some(object.fetched_at))
                .bind(None::<i64>)
                .bind(None::<String>)
                .bind(None::<i64>)
                .execute(&mut **tx)
                .await?;
        });
        if let Some(p) = progress {
            let ids = serde_json::to_string(p.result_ids).unwrap_or_else(|_| "[]".into());
            dispatch!(Tx, &mut tx, |tx| {
                sqlx::query(
                    "INSERT INTO ingest_requests (stream_id, idempotency_key, lines, accepted, \
                     result_ids, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
                     ON CONFLICT (stream_id, idempotency_key) DO UPDATE SET \
                     lines = excluded.lines, accepted = excluded.accepted, \
                     result_ids = excluded.result_ids, updated_at = excluded.updated_at",
                )
                .bind(object.stream_id)
                .bind(p.idempotency_key)
                .bind(p.lines)
                .bind(p.accepted)
                .bind(ids)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            });
        }
        tx.commit().await?;
        Ok(PushCommit::Stored {
            readings: written.len() as u64,
        })
    }

    /// The idempotent request `key` of `stream_id`, if one was seen.
    pub async fn ingest_request(
        &self,
        stream_id: Uuid,
        key: &str,
    ) -> Result<Option<IngestRequest>, DbError> {
        type Row = (i64, i64, String, Option<i32>, Option<String>);
        let row: Option<Row> = dispatch!(Db, self, |pool| {
            sqlx::query_as(
                "SELECT lines, accepted, result_ids, status, answer FROM ingest_requests \
                 WHERE stream_id = $1 AND idempotency_key = $2",
            )
            .bind(stream_id)
            .bind(key)
            .fetch_optional(pool)
            .await?
        });
        Ok(
            row.map(|(lines, accepted, ids, status, answer)| IngestRequest {
                lines,
                accepted,
                result_ids: serde_json::from_str(&ids).unwrap_or_default(),
                answer: status
                    .zip(answer)
                    .map(|(status, body)| (u16::try_from(status).unwrap_or(500), body)),
            }),
        )
    }

    /// Stores the answer an idempotent request ended with (a retry gets it again).
    pub async fn finish_ingest_request(
        &self,
        stream_id: Uuid,
        key: &str,
        progress: (i64, i64, &[Uuid]),
        status: u16,
        answer: &str,
    ) -> Result<(), DbError> {
        let now = common::now_ms();
        let (lines, accepted, result_ids) = progress;
        let ids = serde_json::to_string(result_ids).unwrap_or_else(|_| "[]".into());
        dispatch!(Db, self, |pool| {
            sqlx::query(
                "INSERT INTO ingest_requests (stream_id, idempotency_key, lines, accepted, \
                 result_ids, status, answer, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
                 ON CONFLICT (stream_id, idempotency_key) DO UPDATE SET \
                 lines = excluded.lines, accepted = excluded.accepted, \
                 result_ids = excluded.result_ids, status = excluded.status, \
                 answer = excluded.answer, updated_at = excluded.updated_at",
            )
            .bind(stream_id)
            .bind(key)
            .bind(lines)
            .bind(accepted)
            .bind(ids)
            .bind(i32::from(status))
            .bind(answer)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Intents older than `before` (epoch ms): objects stored for a commit that never came.
    pub async fn stale_push_intents(
        &self,
        before: i64,
    ) -> Result<Vec<(Uuid, String, String)>, DbError> {
        let rows = dispatch!(Db, self, |pool| {
            sqlx::query_as(
                "SELECT result_id, bucket, key FROM push_intents WHERE created_at < $1 \
                 ORDER BY created_at LIMIT 1000",
            )
            .bind(before)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Forgets an intent whose object was removed (or never stored). A reference committed
    /// under the same id keeps its object: the caller checks [`Db::existing_result_ids`] first.
    pub async fn forget_push_intent(&self, result_id: Uuid) -> Result<(), DbError> {
        dispatch!(Db, self, |pool| {
            sqlx::query("DELETE FROM push_intents WHERE result_id = $1")
                .bind(result_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Stores a new ingest token's hash for `stream_id`.
    pub async fn insert_ingest_token(&self, token: &TokenRow, hash: &str) -> Result<(), DbError> {
        dispatch!(Db, self, |pool| {
            sqlx::query(
                "INSERT INTO ingest_tokens (id, stream_id, hash, name, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(token.id)
            .bind(token.stream_id)
            .bind(hash)
            .bind(&token.name)
            .bind(token.created_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// A stream's tokens, oldest first, revoked ones included.
    pub async fn list_ingest_tokens(&self, stream_id: Uuid) -> Result<Vec<TokenRow>, DbError> {
        let rows = dispatch!(Db, self, |pool| {
            sqlx::query_as(
                "SELECT id, stream_id, name, created_at, revoked_at FROM ingest_tokens \
                 WHERE stream_id = $1 ORDER BY created_at, id",
            )
            .bind(stream_id)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Revokes a token of `stream_id`; false when the stream has no such token. Revoking twice
    /// keeps the first time.
    pub async fn revoke_ingest_token(
        &self,
        stream_id: Uuid,
        id: Uuid,
        now: i64,
    ) -> Result<bool, DbError> {
        let done = dispatch!(Db, self, |pool| {
            sqlx::query(
                "UPDATE ingest_tokens SET revoked_at = COALESCE(revoked_at, $3) \
                 WHERE stream_id = $1 AND id = $2",
            )
            .bind(stream_id)
            .bind(id)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done > 0)
    }

    /// The stream a live (not revoked) token with this hash may push to.
    pub async fn ingest_token_stream(&self, hash: &str) -> Result<Option<Uuid>, DbError> {
        let stream = dispatch!(Db, self, |pool| {
            sqlx::query_scalar(
                "SELECT stream_id FROM ingest_tokens WHERE hash = $1 AND revoked_at IS NULL",
            )
            .bind(hash)
            .fetch_optional(pool)
            .await?
        });
        Ok(stream)
    }
}
