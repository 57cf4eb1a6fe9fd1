//! The warehouse tables' side of the database ([`crate::tables`]): a day's readings of one
//! adapter page by page with the bucket of their stream, each day's watermark (how many
//! readings, and the sum of their parser versions), and the Parquet files written
//! (`table_files`).

use catalogue::{Column, ColumnKind};
use sqlx::{ColumnIndex, Decode, Row, Type};
use uuid::Uuid;

use super::{dispatch, leader_write, Db, DbError};

/// One UTC day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// One value of a reading's catalogue column, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum CellValue {
    Text(Option<String>),
    Real(Option<f64>),
    TimeMs(Option<i64>),
}

/// A reading as the tables write it: its identity, the bucket of its stream, and its
/// catalogue columns in catalogue order.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    pub bucket: String,
    pub stream_id: Uuid,
    /// The reading's place (`country/state/city`): with the stream and ts, its identity.
    pub place: String,
    pub ts: i64,
    pub result_id: Uuid,
    pub parser_version: i64,
    pub cells: Vec<CellValue>,
}

/// What the database holds for one (bucket, adapter, UTC day): compared with what the day's
/// file was written from, it says whether the file is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayWatermark {
    pub bucket: String,
    pub adapter: String,
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub rows: i64,
    pub parser_version_sum: i64,
}

/// One Parquet file written: a row of `table_files`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFile {
    pub bucket: String,
    pub adapter: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub key: String,
    pub rows: i64,
    pub bytes: i64,
    /// Distinct, ascending.
    pub parser_versions: Vec<i64>,
    pub parser_version_sum: i64,
    pub compacted_at: i64,
}

const FILE_COLUMNS: &str = "SELECT bucket, adapter, day, key, row_count, byte_count, \
     parser_versions, parser_version_sum, compacted_at FROM table_files";

type FileTuple = (String, String, String, String, i64, i64, String, i64, i64);

fn file_from(t: FileTuple) -> Result<TableFile, DbError> {
    let (bucket, adapter, day, key, rows, bytes, versions, parser_version_sum, compacted_at) = t;
    let parser_versions = versions
        .split(',')
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<i64>().map_err(|e| DbError::Corrupt {
                what: format!("table_files.parser_versions {versions:?}: {e}"),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(TableFile {
        bucket,
        adapter,
        day,
        key,
        rows,
        bytes,
        parser_versions,
        parser_version_sum,
        compacted_at,
    })
}

/// A reading of `columns` from a row of either backend: identity first (stream, ts, result,
/// parser version, bucket), then the catalogue columns in order.
fn decode_row<'r, R>(row: &'r R, columns: &[Column]) -> Result<TableRow, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    f64: Decode<'r, R::Database> + Type<R::Database>,
    Uuid: Decode<'r, R::Database> + Type<R::Database>,
{
    let cells = columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let at = i + 6;
            Ok(match column.kind {
                ColumnKind::Text => CellValue::Text(row.try_get(at)?),
                ColumnKind::Real => CellValue::Real(row.try_get(at)?),
                ColumnKind::TimeMs => CellValue::TimeMs(row.try_get(at)?),
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(TableRow {
        stream_id: row.try_get(0)?,
        ts: row.try_get(1)?,
        result_id: row.try_get(2)?,
        parser_version: row.try_get(3)?,
        bucket: row.try_get(4)?,
        place: row.try_get(5)?,
        cells,
    })
}

impl Db {
    /// Up to `limit` readings of `adapter`'s streams with `from_ms <= ts < to_ms`, in (stream,
    /// place, ts) order, after the reading `after` (stream, place, ts) when given: keyset pages
    /// over the primary key, so readings added meanwhile never shift the pages still to come.
    #[tracing::instrument(level = "debug", skip_all, fields(adapter = adapter, from_ms = from_ms))]
    pub async fn table_rows_page(
        &self,
        adapter: &str,
        columns: &[Column],
        (from_ms, to_ms): (i64, i64),
        after: Option<(Uuid, &str, i64)>,
        limit: i64,
    ) -> Result<Vec<TableRow>, DbError> {
        let names: Vec<String> = columns.iter().map(|c| format!("m.{}", c.name)).collect();
        let after_clause = if after.is_some() {
            "AND (m.stream_id > $4 OR (m.stream_id = $5 AND (m.place > $6 \
             OR (m.place = $7 AND m.ts > $8)))) "
        } else {
            ""
        };
        let limit_param = if after.is_some() { "$9" } else { "$4" };
        let sql = format!(
            "SELECT m.stream_id, m.ts, m.result_id, m.parser_version, s.bucket_name, m.place, {} \
             FROM measurements m JOIN streams s ON s.id = m.stream_id \
             WHERE s.adapter = $1 AND m.ts >= $2 AND m.ts < $3 {after_clause}\
             ORDER BY m.stream_id, m.place, m.ts LIMIT {limit_param}",
            names.join(", ")
        );
        let rows = dispatch!(Db, self, |pool| {
            let mut query = sqlx::query(&sql).bind(adapter).bind(from_ms).bind(to_ms);
            if let Some((stream_id, place, ts)) = after {
                query = query
                    .bind(stream_id)
                    .bind(stream_id)
                    .bind(place)
                    .bind(place)
                    .bind(ts);
            }
            query
                .bind(limit.max(1))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| decode_row(row, columns))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// The watermark of every (bucket, adapter, UTC day) with readings in `from_ms <= ts <
    /// to_ms` (whole days).
    #[tracing::instrument(level = "debug", skip_all, fields(from_ms = from_ms, to_ms = to_ms))]
    pub async fn table_watermarks(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<DayWatermark>, DbError> {
        // SUM of a BIGINT is NUMERIC on PostgreSQL: cast back.
        let sql = format!(
            "SELECT s.bucket_name, s.adapter, m.ts / {DAY_MS}, COUNT(*), \
             CAST(SUM(m.parser_version) AS BIGINT) \
             FROM measurements m JOIN streams s ON s.id = m.stream_id \
             WHERE m.ts >= $1 AND m.ts < $2 GROUP BY 1, 2, 3 ORDER BY 3, 1, 2"
        );
        let rows: Vec<(String, String, i64, i64, i64)> = dispatch!(Db, self, |pool| {
            sqlx::query_as(&sql)
                .bind(from_ms)
                .bind(to_ms)
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(bucket, adapter, day, rows, parser_version_sum)| DayWatermark {
                    bucket,
                    adapter,
                    day,
                    rows,
                    parser_version_sum,
                },
            )
            .collect())
    }

    /// The files written, newest day first; only those of `adapter` and days in `from..=to`
    /// (`YYYY-MM-DD`) when given.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn list_table_files(
        &self,
        adapter: Option<&str>,
        days: Option<(&str, &str)>,
    ) -> Result<Vec<TableFile>, DbError> {
        let (from, to) = days.unwrap_or(("", "9999-12-31"));
        let sql = format!(
            "{FILE_COLUMNS} WHERE ($1 = '' OR adapter = $2) AND day >= $3 AND day <= $4 \
             ORDER BY day DESC, bucket, adapter"
        );
        let adapter = adapter.unwrap_or("");
        let rows: Vec<FileTuple> = dispatch!(Db, self, |pool| {
            sqlx::query_as(&sql)
                .bind(adapter)
                .bind(adapter)
                .bind(from)
                .bind(to)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(file_from).collect()
    }

    /// Records a file written (replacing the record of the file it replaced).
    #[tracing::instrument(level = "debug", skip_all, fields(bucket = %file.bucket, adapter = %file.adapter, day = %file.day))]
    pub async fn record_table_file(&self, file: &TableFile) -> Result<(), DbError> {
        let versions: Vec<String> = file.parser_versions.iter().map(i64::to_string).collect();
        leader_write!(self, |pool| {
            sqlx::query(
                "INSERT INTO table_files (bucket, adapter, day, key, row_count, byte_count, \
                 parser_versions, parser_version_sum, compacted_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (bucket, adapter, day) DO UPDATE SET key = excluded.key, \
                 row_count = excluded.row_count, byte_count = excluded.byte_count, \
                 parser_versions = excluded.parser_versions, \
                 parser_version_sum = excluded.parser_version_sum, \
                 compacted_at = excluded.compacted_at",
            )
            .bind(&file.bucket)
            .bind(&file.adapter)
            .bind(&file.day)
            .bind(&file.key)
            .bind(file.rows)
            .bind(file.bytes)
            .bind(versions.join(","))
            .bind(file.parser_version_sum)
            .bind(file.compacted_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Forgets the file of (bucket, adapter, day), once its objects are gone.
    #[tracing::instrument(level = "debug", skip_all, fields(bucket = bucket, adapter = adapter, day = day))]
    pub async fn forget_table_file(
        &self,
        bucket: &str,
        adapter: &str,
        day: &str,
    ) -> Result<(), DbError> {
        leader_write!(self, |pool| {
            sqlx::query("DELETE FROM table_files WHERE bucket = $1 AND adapter = $2 AND day = $3")
                .bind(bucket)
                .bind(adapter)
                .bind(day)
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
