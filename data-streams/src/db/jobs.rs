//! Background jobs (for now only `reparse`): the job rows, the references a re-parse walks, and
//! the one transaction per page that writes rebuilt readings together with the job's progress,
//! so a restart resumes exactly where the last committed page ended.

use std::collections::{BTreeMap, HashSet};

use protocol::Measurement;
use sqlx::{FromRow, QueryBuilder, Row};
use uuid::Uuid;

use super::error::CorruptRow;
use super::events::{reading_columns, ReadingToWrite};
use super::row::StoredRow;
use super::{dispatch, leader_write, Db, DbError};

/// What a re-parse covers: one stream, one adapter or everything (both `None`), and a window on
/// the results' `fetched_at` (epoch ms, `from_ms` inclusive, `to_ms` exclusive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobScope {
    pub stream_id: Option<Uuid>,
    pub adapter: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for the runner (one job runs at a time, oldest first).
    Queued,
    /// Being run, or interrupted by a restart (the runner resumes it first).
    Running,
    Done,
    /// Stopped by an error a retry would only repeat (`last_error` says which).
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            _ => return None,
        })
    }
}

/// One job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// A UUIDv7; results with a higher id were fetched after the job was made (and parsed by
    /// the event path with the current parser), so the job stops below it.
    pub id: Uuid,
    /// `reparse`.
    pub kind: String,
    pub scope: JobScope,
    /// The parser version the rebuilt rows get.
    pub parser_version: i64,
    pub state: JobState,
    /// The last result processed; the next page starts after it.
    pub cursor: Option<Uuid>,
    /// References in scope when the job was made.
    pub objects_total: i64,
    /// References processed (read, or counted under an error class).
    pub objects_read: i64,
    /// Readings inserted or replaced.
    pub rows_written: i64,
    /// Readings left alone: their (stream, ts) row belongs to another result (the first wins).
    pub rows_skipped: i64,
    /// Error class -> count.
    pub errors: BTreeMap<String, i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl<'r, R: Row + StoredRow<'r>> FromRow<'r, R> for JobRow {
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let id = row.uuid("id")?;
        let state_text = row.text("state")?;
        let state = JobState::parse(&state_text)
            .ok_or_else(|| CorruptRow::decode(format!("jobs.state of {id} is {state_text:?}")))?;
        let errors = serde_json::from_str(&row.text("errors")?).map_err(|e| {
            CorruptRow::decode(format!(
                "jobs.errors of {id} is not a JSON object of counts: {e}"
            ))
        })?;
        Ok(JobRow {
            id,
            kind: row.text("kind")?,
            scope: JobScope {
                stream_id: row.uuid_or_null("stream_id")?,
                adapter: row.text_or_null("adapter")?,
                from_ms: row.int_or_null("from_ms")?,
                to_ms: row.int_or_null("to_ms")?,
            },
            parser_version: row.int("parser_version")?,
            state,
            cursor: row.uuid_or_null("cursor")?,
            objects_total: row.int("objects_total")?,
            objects_read: row.int("objects_read")?,
            rows_written: row.int("rows_written")?,
            rows_skipped: row.int("rows_skipped")?,
            errors,
            last_error: row.text_or_null("last_error")?,
            created_at: row.int("created_at")?,
            updated_at: row.int("updated_at")?,
            finished_at: row.int_or_null("finished_at")?,
        })
    }
}

/// A reference a re-parse reads back: where its raw object is and which adapter wrote it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RefToParse {
    pub id: Uuid,
    pub stream_id: Uuid,
    pub adapter: String,
    pub bucket: String,
    pub key: String,
}

/// A reading rebuilt from a raw object, ready to write.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedReading {
    pub stream_id: Uuid,
    pub ts: i64,
    pub result_id: Uuid,
    pub reading: Measurement,
}

/// A page's progress, written in the same transaction as its readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageProgress<'a> {
    /// The last result processed.
    pub cursor: Uuid,
    /// References processed in this page.
    pub objects_read: i64,
    /// Every error count of the job so far (not only this page's).
    pub errors: &'a BTreeMap<String, i64>,
}

/// What a page wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageWritten {
    pub rows_written: i64,
    pub rows_skipped: i64,
}

/// Every column of `jobs`, for [`JobRow`].
const JOB_FIELDS: &str = "id, kind, stream_id, adapter, from_ms, to_ms, parser_version, state, \
     cursor, objects_total, objects_read, rows_written, rows_skipped, errors, last_error, \
     created_at, updated_at, finished_at";

/// `SELECT <every column> FROM jobs <tail>`, for [`JobRow`].
fn select_jobs(tail: &str) -> String {
    format!("SELECT {JOB_FIELDS} FROM jobs {tail}")
}

/// Appends the scope of a re-parse to a query over `results r JOIN streams s`: the references
/// of `scope` below the job's id (newer ones were parsed by the event path) and after `cursor`.
fn push_scope<'a, DB>(
    query: &mut QueryBuilder<'a, DB>,
    job_id: Uuid,
    scope: &'a JobScope,
    cursor: Option<Uuid>,
) where
    DB: sqlx::Database,
    Uuid: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    query.push(" WHERE r.id < ").push_bind(job_id);
    if let Some(cursor) = cursor {
        query.push(" AND r.id > ").push_bind(cursor);
    }
    if let Some(stream_id) = scope.stream_id {
        query.push(" AND r.stream_id = ").push_bind(stream_id);
    }
    if let Some(adapter) = scope.adapter.as_deref() {
        query.push(" AND s.adapter = ").push_bind(adapter);
    }
    if let Some(from_ms) = scope.from_ms {
        query.push(" AND r.fetched_at >= ").push_bind(from_ms);
    }
    if let Some(to_ms) = scope.to_ms {
        query.push(" AND r.fetched_at < ").push_bind(to_ms);
    }
}

impl Db {
    /// Records a queued `reparse` job of `scope` that will write `parser_version`, counting the
    /// references it covers.
    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %id))]
    pub async fn insert_reparse_job(
        &self,
        id: Uuid,
        scope: &JobScope,
        parser_version: i64,
        now: i64,
    ) -> Result<JobRow, DbError> {
        let total: i64 = dispatch!(Db, self, |pool, DB| {
            let mut query = QueryBuilder::<DB>::new(
                "SELECT COUNT(*) FROM results r JOIN streams s ON s.id = r.stream_id",
            );
            push_scope(&mut query, id, scope, None);
            query.build_query_scalar().fetch_one(pool).await?
        });
        let row = dispatch!(Db, self, |pool| {
            sqlx::query_as(&format!(
                "INSERT INTO jobs (id, kind, stream_id, adapter, from_ms, to_ms, parser_version, \
                 state, objects_total, created_at, updated_at) \
                 VALUES ($1, 'reparse', $2, $3, $4, $5, $6, 'queued', $7, $8, $8) \
                 RETURNING {JOB_FIELDS}"
            ))
            .bind(id)
            .bind(scope.stream_id)
            .bind(scope.adapter.as_deref())
            .bind(scope.from_ms)
            .bind(scope.to_ms)
            .bind(parser_version)
            .bind(total)
            .bind(now)
            .fetch_one(pool)
            .await?
        });
        Ok(row)
    }

    /// One job.
    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %id))]
    pub async fn get_job(&self, id: Uuid) -> Result<Option<JobRow>, DbError> {
        let row = dispatch!(Db, self, |pool| {
            sqlx::query_as(&select_jobs("WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// Jobs, newest first, `limit` (at least 1) per page after the job `after`; the second
    /// value is the cursor for the next page, `None` at the end.
    #[tracing::instrument(level = "debug", skip_all, fields(limit = limit, after = ?after))]
    pub async fn list_jobs(
        &self,
        limit: i64,
        after: Option<Uuid>,
    ) -> Result<(Vec<JobRow>, Option<Uuid>), DbError> {
        let limit = limit.max(1);
        let mut rows: Vec<JobRow> = dispatch!(Db, self, |pool| {
            match after {
                Some(after) => {
                    sqlx::query_as(&select_jobs("WHERE id < $2 ORDER BY id DESC LIMIT $1"))
                        .bind(limit.saturating_add(1))
                        .bind(after)
                        .fetch_all(pool)
                        .await?
                }
                None => {
                    sqlx::query_as(&select_jobs("ORDER BY id DESC LIMIT $1"))
                        .bind(limit.saturating_add(1))
                        .fetch_all(pool)
                        .await?
                }
            }
        });
        let page_len = usize::try_from(limit).unwrap_or(usize::MAX);
        if rows.len() <= page_len {
            return Ok((rows, None));
        }
        rows.truncate(page_len);
        let next = rows.last().map(|j| j.id);
        Ok((rows, next))
    }

    /// The job to run next: one left `running` (interrupted by a restart) first, then the
    /// oldest queued one.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn next_job(&self) -> Result<Option<JobRow>, DbError> {
        let row = dispatch!(Db, self, |pool| {
            sqlx::query_as(&select_jobs(
                "WHERE state IN ('running', 'queued') \
                 ORDER BY CASE state WHEN 'running' THEN 0 ELSE 1 END, id LIMIT 1",
            ))
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// Marks a queued or interrupted job running, writing `parser_version` from now on.
    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %id))]
    pub async fn start_job(&self, id: Uuid, parser_version: i64, now: i64) -> Result<(), DbError> {
        leader_write!(self, |pool| {
            sqlx::query(
                "UPDATE jobs SET state = 'running', parser_version = $2, updated_at = $3 \
                 WHERE id = $1 AND state IN ('queued', 'running')",
            )
            .bind(id)
            .bind(parser_version)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Ends a job as `done` or `failed`, with what stopped it.
    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %id))]
    pub async fn finish_job(
        &self,
        id: Uuid,
        state: JobState,
        last_error: Option<&str>,
        now: i64,
    ) -> Result<(), DbError> {
        leader_write!(self, |pool| {
            sqlx::query(
                "UPDATE jobs SET state = $2, last_error = COALESCE($3, last_error), \
                 updated_at = $4, finished_at = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(state.as_str())
            .bind(last_error)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Says why a running job waits (e.g. the object store is not reachable).
    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %id))]
    pub async fn note_job(&self, id: Uuid, last_error: &str, now: i64) -> Result<(), DbError> {
        leader_write!(self, |pool| {
            sqlx::query("UPDATE jobs SET last_error = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(last_error)
                .bind(now)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The next `limit` references of a re-parse job, in id order (a timeline: ids are
    /// UUIDv7), after its cursor; each with the adapter of its stream.
    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %job.id, limit = limit))]
    pub async fn reparse_refs(&self, job: &JobRow, limit: i64) -> Result<Vec<RefToParse>, DbError> {
        let rows = dispatch!(Db, self, |pool, DB| {
            let mut query = QueryBuilder::<DB>::new(
                "SELECT r.id, r.stream_id, s.adapter, r.bucket, r.key \
                 FROM results r JOIN streams s ON s.id = r.stream_id",
            );
            push_scope(&mut query, job.id, &job.scope, job.cursor);
            query.push(" ORDER BY r.id LIMIT ").push_bind(limit.max(1));
            query.build_query_as().fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Writes a page of a re-parse in ONE transaction: the readings (first per (stream, place, ts)
    /// wins: a row is inserted where none is, and replaced only when it came from the same
    /// result), then the job's cursor and counters. `readings` come in result order and may
    /// repeat a (stream, ts). Readings of streams deleted meanwhile are dropped and counted as
    /// skipped.
    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %job_id, readings = readings.len()))]
    pub async fn write_reparse_page(
        &self,
        job_id: Uuid,
        parser_version: i64,
        readings: &[ParsedReading],
        progress: PageProgress<'_>,
    ) -> Result<PageWritten, DbError> {
        let errors = serde_json::to_string(progress.errors).map_err(|e| DbError::Corrupt {
            what: format!("job {job_id}'s error counts cannot be written as JSON: {e}"),
        })?;
        let tail = format!(
            " ON CONFLICT (stream_id, place, ts) DO UPDATE SET parser_version = excluded.parser_version, {} \
             WHERE measurements.result_id = excluded.result_id",
            reading_columns()
                .iter()
                .map(|c| format!("{c} = excluded.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );

        let mut tx = self.begin_write().await?;
        let mut stream_ids: Vec<Uuid> = readings.iter().map(|r| r.stream_id).collect();
        stream_ids.sort_unstable();
        stream_ids.dedup();
        let known: HashSet<Uuid> = tx.known_streams(&stream_ids).await?;
        let kept: Vec<&ParsedReading> = readings
            .iter()
            .filter(|r| known.contains(&r.stream_id))
            .collect();
        // One statement cannot touch a row twice (PostgreSQL refuses), so a page whose results
        // repeat a (stream, ts) is written in rounds: every first occurrence, then every second,
        // and so on, each round in lock order; result order is kept within each key.
        let mut rounds: Vec<Vec<(&ParsedReading, String)>> = Vec::new();
        let mut seen: BTreeMap<(Uuid, String, i64), usize> = BTreeMap::new();
        for reading in kept {
            let place = super::events::place_of(&reading.reading);
            let n = seen
                .entry((reading.stream_id, place.clone(), reading.ts))
                .or_insert(0);
            if rounds.len() <= *n {
                rounds.push(Vec::new());
            }
            rounds[*n].push((reading, place));
            *n += 1;
        }
        let mut written = 0_i64;
        for mut round in rounds {
            round.sort_by(|(a, a_place), (b, b_place)| {
                (a.stream_id, a_place, a.ts).cmp(&(b.stream_id, b_place, b.ts))
            });
            let rows: Vec<ReadingToWrite<'_>> = round
                .iter()
                .map(|(r, place)| (r.stream_id, place.as_str(), r.ts, r.result_id, &r.reading))
                .collect();
            written += tx.write_readings(&rows, parser_version, &tail).await?.len() as i64;
        }
        let skipped = readings.len() as i64 - written;
        dispatch!(Tx, &mut tx, |tx| {
            sqlx::query(
                "UPDATE jobs SET cursor = $2, objects_read = objects_read + $3, \
                 rows_written = rows_written + $4, rows_skipped = rows_skipped + $5, \
                 errors = $6, last_error = NULL, updated_at = $7 WHERE id = $1",
            )
            .bind(job_id)
            .bind(progress.cursor)
            .bind(progress.objects_read)
            .bind(written)
            .bind(skipped)
            .bind(&errors)
            .bind(common::now_ms())
            .execute(&mut **tx)
            .await?;
        });
        tx.commit().await?;
        Ok(PageWritten {
            rows_written: written,
            rows_skipped: skipped,
        })
    }
}
