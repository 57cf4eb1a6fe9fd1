//! Reading back what the event path stored: references, readings and failed runs.

use uuid::Uuid;

use super::{dispatch, Db, DbError, FailureRow, MeasurementRow, ResultRow};

/// `SELECT <reference columns> FROM results <tail>`, for [`ResultRow`].
pub(super) fn select_results(tail: &str) -> String {
    format!(
        "SELECT id, stream_id, bucket, key, fetched_at, scheduled_at, started_at, size, sha256, \
         status, run_id, page FROM results {tail}"
    )
}

/// `SELECT` of a stream's readings in a time window, for [`MeasurementRow`]: the identity
/// columns and the catalogue's reading columns.
fn select_measurements() -> String {
    let columns: Vec<&str> = catalogue::iqair::COLUMNS.iter().map(|c| c.name).collect();
    format!(
        "SELECT stream_id, result_id, ts, {}, parser_version FROM measurements \
         WHERE stream_id = $1 AND ts >= $2 AND ts <= $3 ORDER BY ts LIMIT $4",
        columns.join(", ")
    )
}

/// A page of `limit` rows from `limit + 1` fetched, and the cursor for the next page (the last
/// row's id) when the extra row says there is one.
fn page<T>(mut rows: Vec<T>, limit: i64, id: impl Fn(&T) -> Uuid) -> (Vec<T>, Option<Uuid>) {
    let page_len = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() <= page_len {
        return (rows, None);
    }
    rows.truncate(page_len);
    let next = rows.last().map(id);
    (rows, next)
}

const COUNT_ALL_RESULTS: &str = "SELECT COUNT(*) FROM results";
const COUNT_STREAM_RESULTS: &str = "SELECT COUNT(*) FROM results WHERE stream_id = $1";

const FAILURE_COLUMNS: &str = "SELECT run_id, stream_id, at, class, message, stream_stopped \
     FROM run_failures WHERE stream_id = $1";
// Newest first by (at, run_id); the cursor is the last run id of the previous page.
const FAILURES_FIRST_PAGE: &str = " ORDER BY at DESC, run_id DESC LIMIT $2";
const FAILURES_AFTER: &str = " AND (at, run_id) < (SELECT at, run_id FROM run_failures \
     WHERE run_id = $3) ORDER BY at DESC, run_id DESC LIMIT $2";

impl Db {
    /// A stream's references, newest first, `limit` (at least 1) per page. `after` is the last
    /// id of the previous page; the second value is the cursor for the next page, `None` at
    /// the end.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %stream_id, limit = limit, after = ?after))]
    pub async fn list_results(
        &self,
        stream_id: Uuid,
        limit: i64,
        after: Option<Uuid>,
    ) -> Result<(Vec<ResultRow>, Option<Uuid>), DbError> {
        // Keyset pagination on the UUIDv7 id: rows inserted while a client pages are newer, so
        // they sort before the cursor and never shift the pages still to come. One row more
        // than asked tells whether there is a next page.
        let sql = select_results(if after.is_some() {
            "WHERE stream_id = $1 AND id < $3 ORDER BY id DESC LIMIT $2"
        } else {
            "WHERE stream_id = $1 ORDER BY id DESC LIMIT $2"
        });
        self.keyset_page(&sql, stream_id, limit, after, |row: &ResultRow| row.id)
            .await
    }

    /// One reference.
    #[tracing::instrument(level = "debug", skip_all, fields(result_id = %id))]
    pub async fn get_result(&self, id: Uuid) -> Result<Option<ResultRow>, DbError> {
        let row = dispatch!(Db, self, |pool| {
            sqlx::query_as(&select_results("WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// How many references a stream has, or all streams together.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = ?stream_id))]
    pub async fn count_results(&self, stream_id: Option<Uuid>) -> Result<i64, DbError> {
        let count = dispatch!(Db, self, |pool| {
            match stream_id {
                Some(stream_id) => {
                    sqlx::query_scalar(COUNT_STREAM_RESULTS)
                        .bind(stream_id)
                        .fetch_one(pool)
                        .await?
                }
                None => {
                    sqlx::query_scalar(COUNT_ALL_RESULTS)
                        .fetch_one(pool)
                        .await?
                }
            }
        });
        Ok(count)
    }

    /// A stream's readings with `from_ms <= ts <= to_ms` (either bound optional), oldest
    /// first, at most `limit`.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %stream_id, from_ms = ?from_ms, to_ms = ?to_ms, limit = limit))]
    pub async fn list_measurements(
        &self,
        stream_id: Uuid,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        limit: i64,
    ) -> Result<Vec<MeasurementRow>, DbError> {
        let rows = dispatch!(Db, self, |pool| {
            sqlx::query_as(&select_measurements())
                .bind(stream_id)
                .bind(from_ms.unwrap_or(i64::MIN))
                .bind(to_ms.unwrap_or(i64::MAX))
                .bind(limit.max(0))
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// A stream's failed runs, newest first, at most `limit` (none for 0).
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %stream_id, limit = limit))]
    pub async fn list_failures(
        &self,
        stream_id: Uuid,
        limit: i64,
    ) -> Result<Vec<FailureRow>, DbError> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        Ok(self.list_failures_page(stream_id, limit, None).await?.0)
    }

    /// A stream's failed runs, newest first, `limit` (at least 1) per page after the run
    /// `after`; the second value is the cursor for the next page, `None` at the end.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %stream_id, limit = limit, after = ?after))]
    pub async fn list_failures_page(
        &self,
        stream_id: Uuid,
        limit: i64,
        after: Option<Uuid>,
    ) -> Result<(Vec<FailureRow>, Option<Uuid>), DbError> {
        let tail = if after.is_some() {
            FAILURES_AFTER
        } else {
            FAILURES_FIRST_PAGE
        };
        let sql = format!("{FAILURE_COLUMNS}{tail}");
        self.keyset_page(&sql, stream_id, limit, after, |row: &FailureRow| row.run_id)
            .await
    }

    /// A page of a stream's newest-first list: `sql` binds the stream (`$1`), `limit + 1`
    /// (`$2`; the extra row tells whether there is a next page) and, after a cursor, the last
    /// id of the previous page (`$3`).
    pub(super) async fn keyset_page<R>(
        &self,
        sql: &str,
        stream_id: Uuid,
        limit: i64,
        after: Option<Uuid>,
        id: impl Fn(&R) -> Uuid,
    ) -> Result<(Vec<R>, Option<Uuid>), DbError>
    where
        R: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        // A page of nothing could never advance the cursor.
        let limit = limit.max(1);
        let rows: Vec<R> = dispatch!(Db, self, |pool| {
            let mut query = sqlx::query_as(sql)
                .bind(stream_id)
                .bind(limit.saturating_add(1));
            if let Some(after) = after {
                query = query.bind(after);
            }
            query.fetch_all(pool).await?
        });
        Ok(page(rows, limit, id))
    }
}
