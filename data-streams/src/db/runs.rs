//! Runs as records: one row per run (`runs`), written by the event path
//! ([`Db::persist_runs`]), read here for `GET /streams/{id}/runs` and `GET /runs/{id}`.

use serde::Serialize;
use sqlx::{FromRow, Row};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::CorruptRow;
use super::reads::select_results;
use super::row::StoredRow;
use super::{dispatch, Db, DbError, ResultRow};

/// The statuses a run can have, as the API filters them.
pub const RUN_STATUSES: [&str; 6] = [
    "running",
    "queued",
    "processing",
    "stored",
    "failed",
    "truncated",
];

const RUN_COLUMNS: &str = "SELECT id, stream_id, scheduled_at, started_at, finished_at, status, \
     attempts, pages, records, bytes, window_start, window_end, job, class, message, \
     stream_stopped FROM runs";

/// One step of an async report job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct JobStepRow {
    /// `queued`, `processing`, `success`, `failed`, `downloaded` or `resubmitted`.
    pub state: String,
    /// Stored as epoch ms, shown as RFC 3339.
    #[serde(serialize_with = "crate::stream::rfc3339::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
}

/// A run as the API shows it: times in RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "019ad1f2-7c40-7a3e-9d6b-2f0c4e1a8b55",
    "stream_id": "019ad1f0-1b2c-7d4e-8f60-1a2b3c4d5e6f",
    "scheduled_at": "2026-11-28T13:00:00.000Z",
    "started_at": "2026-11-28T13:00:00.004Z",
    "finished_at": "2026-11-28T13:00:02.310Z",
    "duration_ms": 2306,
    "status": "stored",
    "attempts": 21,
    "pages": 20,
    "records": 1000,
    "bytes": 148230,
    "window_start": "2026-11-28T12:45:00.000Z",
    "window_end": "2026-11-28T13:00:00.000Z",
    "job": null,
    "class": null,
    "message": null,
    "stream_stopped": false
}))]
pub struct RunRow {
    /// The run id, a UUIDv7 (made when the run started).
    pub id: Uuid,
    pub stream_id: Uuid,
    /// The slot (tick) the run is for.
    #[serde(with = "crate::stream::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub scheduled_at: i64,
    #[serde(with = "crate::stream::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: i64,
    /// `null` while it runs.
    #[serde(with = "crate::stream::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    /// Milliseconds from start to end; `null` while it runs.
    pub duration_ms: Option<i64>,
    /// `running`, `queued`, `processing` (its async job's states), `stored`, `failed` or
    /// `truncated` (stopped at `max_pages` with more to fetch).
    pub status: String,
    /// Calls made: pages, retries, job polls, token requests.
    pub attempts: i64,
    /// Objects stored, one per page.
    pub pages: i64,
    /// Records in them, where the source says where its records are.
    pub records: Option<i64>,
    pub bytes: i64,
    /// The incremental window the run covers, `[window_start, window_end)`.
    #[serde(with = "crate::stream::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub window_start: Option<i64>,
    #[serde(with = "crate::stream::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub window_end: Option<i64>,
    /// The async job's states, oldest first; `null` without a job.
    pub job: Option<Vec<JobStepRow>>,
    /// The failure class (`failed`), e.g. `timeout`, `http`, `auth`.
    pub class: Option<String>,
    /// What went wrong, or why it was truncated.
    pub message: Option<String>,
    /// The worker stopped the stream because of it (a bad or expired key).
    pub stream_stopped: bool,
}

impl<'r, R: Row + StoredRow<'r>> FromRow<'r, R> for RunRow {
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let id = row.uuid("id")?;
        let job = match row.text_or_null("job")? {
            None => None,
            Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                CorruptRow::decode(format!("runs.job of {id} is not a list of states: {e}"))
            })?),
        };
        let started_at = row.int("started_at")?;
        let finished_at = row.int_or_null("finished_at")?;
        Ok(RunRow {
            id,
            stream_id: row.uuid("stream_id")?,
            scheduled_at: row.int("scheduled_at")?,
            started_at,
            finished_at,
            duration_ms: finished_at.map(|end| (end - started_at).max(0)),
            status: row.text("status")?,
            attempts: row.int("attempts")?,
            pages: row.int("pages")?,
            records: row.int_or_null("records")?,
            bytes: row.int("bytes")?,
            window_start: row.int_or_null("window_start")?,
            window_end: row.int_or_null("window_end")?,
            job,
            class: row.text_or_null("class")?,
            message: row.text_or_null("message")?,
            stream_stopped: row.flag("stream_stopped")?,
        })
    }
}

impl Db {
    /// A stream's runs, newest first, `limit` (at least 1) per page after the run `after`,
    /// only those with `status` when given (one of [`RUN_STATUSES`]; anything else matches
    /// nothing). The second value is the cursor for the next page, `None` at the end.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %stream_id, limit = limit, after = ?after))]
    pub async fn list_runs(
        &self,
        stream_id: Uuid,
        limit: i64,
        after: Option<Uuid>,
        status: Option<&str>,
    ) -> Result<(Vec<RunRow>, Option<Uuid>), DbError> {
        // The status is one of a fixed list, so it can be written into the statement.
        let status = match status {
            None => String::new(),
            Some(s) => match RUN_STATUSES.iter().find(|known| **known == s) {
                Some(known) => format!(" AND status = '{known}'"),
                None => return Ok((Vec::new(), None)),
            },
        };
        let tail = if after.is_some() {
            " AND id < $3 ORDER BY id DESC LIMIT $2"
        } else {
            " ORDER BY id DESC LIMIT $2"
        };
        let sql = format!("{RUN_COLUMNS} WHERE stream_id = $1{status}{tail}");
        self.keyset_page(&sql, stream_id, limit, after, |row: &RunRow| row.id)
            .await
    }

    /// One run, if it exists.
    #[tracing::instrument(level = "debug", skip_all, fields(run_id = %id))]
    pub async fn get_run(&self, id: Uuid) -> Result<Option<RunRow>, DbError> {
        let sql = format!("{RUN_COLUMNS} WHERE id = $1");
        let row = dispatch!(Db, self, |pool| {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?
        });
        Ok(row)
    }

    /// The references of a run's pages, in page order.
    #[tracing::instrument(level = "debug", skip_all, fields(run_id = %id))]
    pub async fn run_pages(&self, id: Uuid) -> Result<Vec<ResultRow>, DbError> {
        let sql = select_results("WHERE run_id = $1 ORDER BY page, id");
        let rows = dispatch!(Db, self, |pool| {
            sqlx::query_as(&sql).bind(id).fetch_all(pool).await?
        });
        Ok(rows)
    }
}
