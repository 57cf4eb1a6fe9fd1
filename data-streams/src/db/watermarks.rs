//! The reconciler's side of the database: the streams it visits, a page at a time in id order,
//! each with its watermarks (how far its timeline of objects is indexed), and the watermarks
//! moved forward a batch of streams at a time (`reconcile_watermarks`).

use sqlx::QueryBuilder;
use uuid::Uuid;

use super::{dispatch, leader_write, Db, DbError};

/// Watermark rows per `INSERT`: four values each, so 4,000 parameters, under SQLite's 32,766
/// and PostgreSQL's 65,535; a reconciler batch of 1,000 streams is one statement.
const WATERMARK_ROWS: usize = 1_000;

/// How far a stream's objects are indexed, per layout: the key of the last object (after the
/// stream's prefix, `dt=YYYY-MM-DD/<result_id>.json`) up to which everything listed has a
/// reference. `None`: nothing yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// The current layout, `<adapter>/stream_id=<id>/…`.
    pub hive: Option<String>,
    /// The first layout, `<adapter>/<id>/…`.
    pub legacy: Option<String>,
}

/// A stream as the reconciler visits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileTarget {
    pub id: Uuid,
    pub adapter: String,
    pub bucket: String,
    /// Per-run timeout (fetch, retries and upload), ms: how late one of its objects may land.
    pub timeout_ms: i64,
    /// Whether a pass has visited it before (it has a row, its watermarks maybe still `None`).
    pub visited: bool,
    pub watermarks: Watermarks,
}

type TargetTuple = (
    Uuid,
    String,
    String,
    i64,
    bool,
    Option<String>,
    Option<String>,
);

fn target(
    (id, adapter, bucket, timeout_ms, visited, hive, legacy): TargetTuple,
) -> ReconcileTarget {
    ReconcileTarget {
        id,
        adapter,
        bucket,
        timeout_ms,
        visited,
        watermarks: Watermarks { hive, legacy },
    }
}

impl Db {
    /// Up to `limit` streams whose objects the reconciler indexes (every adapter but `PUSH`,
    /// whose objects are referenced in the request that stores them), with id after `after`
    /// (from the first when `None`), by id, each with its watermarks.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn reconcile_targets(
        &self,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<ReconcileTarget>, DbError> {
        // Stream ids are v4/v7 UUIDs, never nil: `> nil` is every stream.
        let after = after.unwrap_or(Uuid::nil());
        let sql = "SELECT s.id, s.adapter, s.bucket_name, s.timeout_ms, w.stream_id IS NOT NULL, \
                   w.hive_after, w.legacy_after \
                   FROM streams s LEFT JOIN reconcile_watermarks w ON w.stream_id = s.id \
                   WHERE s.id > $1 AND s.adapter <> $2 ORDER BY s.id LIMIT $3";
        let rows: Vec<TargetTuple> = dispatch!(Db, self, |pool| sqlx::query_as(sql)
            .bind(after)
            .bind(catalogue::push::NAME)
            .bind(limit)
            .fetch_all(pool)
            .await?);
        Ok(rows.into_iter().map(target).collect())
    }

    /// The streams of `ids` the reconciler indexes, by id, each with its watermarks (deleted
    /// ones and `PUSH` streams left out). At most 1,000 ids a call.
    #[tracing::instrument(level = "debug", skip_all, fields(ids = ids.len()))]
    pub async fn reconcile_targets_of(
        &self,
        ids: &[Uuid],
    ) -> Result<Vec<ReconcileTarget>, DbError> {
        // Looked up by id (SQLite, unhinted, may walk the adapter index instead).
        let streams = match self {
            Db::Sqlite(_) => "streams AS s INDEXED BY sqlite_autoindex_streams_1",
            Db::Postgres(_) => "streams AS s",
        };
        let mut targets = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(WATERMARK_ROWS) {
            let rows: Vec<TargetTuple> = dispatch!(Db, self, |pool, DB| {
                let mut query = QueryBuilder::<DB>::new(format!(
                    "SELECT s.id, s.adapter, s.bucket_name, s.timeout_ms, \
                     w.stream_id IS NOT NULL, w.hive_after, w.legacy_after \
                     FROM {streams} \
                     LEFT JOIN reconcile_watermarks w ON w.stream_id = s.id \
                     WHERE s.adapter <> "
                ));
                query
                    .push_bind(catalogue::push::NAME)
                    .push(" AND s.id IN (");
                let mut list = query.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                query.push(") ORDER BY s.id");
                query.build_query_as().fetch_all(pool).await?
            });
            targets.extend(rows.into_iter().map(target));
        }
        Ok(targets)
    }

    /// How many streams the reconciler indexes (every adapter but `PUSH`).
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn count_reconcile_targets(&self) -> Result<u64, DbError> {
        let count: i64 = dispatch!(Db, self, |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM streams WHERE adapter <> $1")
                .bind(catalogue::push::NAME)
                .fetch_one(pool)
                .await?
        });
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Moves the watermarks of many streams forward, one statement per 1,000 streams, and marks
    /// them visited (a row, even with both `None`). Each one only ever moves forward (a pass
    /// that read an older one cannot set it back); a `None` leaves that layout's as it is; a
    /// stream deleted meanwhile is skipped.
    #[tracing::instrument(level = "debug", skip_all, fields(streams = advances.len()))]
    pub async fn advance_watermarks(
        &self,
        advances: &[(Uuid, Watermarks)],
        now_ms: i64,
    ) -> Result<(), DbError> {
        for chunk in advances.chunks(WATERMARK_ROWS) {
            leader_write!(self, |pool, DB| {
                // `VALUES` names its columns column1…column4 on both backends.
                let mut query = QueryBuilder::<DB>::new(
                    "INSERT INTO reconcile_watermarks \
                     (stream_id, hive_after, legacy_after, updated_at) \
                     SELECT v.column1, v.column2, v.column3, v.column4 FROM (",
                );
                query.push_values(chunk, |mut row, (id, marks)| {
                    row.push_bind(*id)
                        .push_bind(marks.hive.as_deref())
                        .push_bind(marks.legacy.as_deref())
                        .push_bind(now_ms);
                });
                // The WHERE also keeps SQLite from reading `ON CONFLICT` as a join constraint.
                query.push(
                    ") AS v WHERE EXISTS (SELECT 1 FROM streams s WHERE s.id = v.column1) \
                     ON CONFLICT (stream_id) DO UPDATE SET \
                     hive_after = CASE WHEN reconcile_watermarks.hive_after IS NULL \
                         OR excluded.hive_after > reconcile_watermarks.hive_after \
                         THEN excluded.hive_after ELSE reconcile_watermarks.hive_after END, \
                     legacy_after = CASE WHEN reconcile_watermarks.legacy_after IS NULL \
                         OR excluded.legacy_after > reconcile_watermarks.legacy_after \
                         THEN excluded.legacy_after ELSE reconcile_watermarks.legacy_after END, \
                     updated_at = excluded.updated_at",
                );
                query.build().execute(pool).await?;
            });
        }
        Ok(())
    }

    /// One stream's watermarks; `None` before its first pass.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn watermarks(&self, stream_id: Uuid) -> Result<Option<Watermarks>, DbError> {
        let row: Option<(Option<String>, Option<String>)> = dispatch!(Db, self, |pool| {
            sqlx::query_as(
                "SELECT hive_after, legacy_after FROM reconcile_watermarks WHERE stream_id = $1",
            )
            .bind(stream_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(|(hive, legacy)| Watermarks { hive, legacy }))
    }
}
