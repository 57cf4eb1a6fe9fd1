//! The warehouse tables: each UTC day's readings of each adapter, per bucket, as one Parquet file
//! beside the raw objects, at
//! `<bucket>/_tables/measurements/adapter=<adapter>/dt=YYYY-MM-DD/part-0.parquet` (Hive
//! partitions: DuckDB, Athena, Trino and Spark read `adapter` and `dt` from the path).
//!
//! - *Which bucket*: a reading goes to the bucket of its stream, so a day of one adapter is a
//!   file in every bucket that has streams of that adapter with readings that day.
//! - *Atomic days*: a day is exactly one object, written with one `put` (atomic on both stores:
//!   readers see the old object or the new one), so a reader globbing `*.parquet` sees the old
//!   day or the new one, never both or half, whenever the writer is killed. Any other object in
//!   the day's folder (a part from another layout) is deleted after the new file is in place.
//! - *Staleness*: `table_files` records each file's rows and the sum of their parser versions;
//!   a closed day whose readings no longer match (late readings, a re-parse, a deleted stream)
//!   is written again. The open day (today, UTC) is written only on demand.
//! - One compaction at a time per process ([`Tables`] holds a lock): the loop and
//!   `POST /tables/compact` never write the same day concurrently.

pub mod parquet;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use catalogue::Source;
use chrono::{NaiveDate, Utc};
use objects::{ObjectMeta, ObjectStore, StoreError};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::{Db, DbError, TableFile, DAY_MS};
use parquet::DayFile;

/// The folder of the measurements table in every bucket.
pub const TABLE_PREFIX: &str = "_tables/measurements";
/// The one file of a day.
pub const PART_NAME: &str = "part-0.parquet";
/// Readings read from the database per query.
pub const PAGE_ROWS: i64 = 5_000;

/// Why a compaction failed.
#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("object store: {0}")]
    Store(#[from] StoreError),
    #[error("writing Parquet: {0}")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    #[error("{0} is not in the catalogue")]
    UnknownAdapter(String),
}

/// What one compaction did to one (bucket, adapter, day).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The day's file was written (replacing any earlier one).
    Written(TableFile),
    /// The day has no readings left in this bucket: its file was deleted.
    Removed {
        bucket: String,
        adapter: String,
        day: String,
        key: String,
    },
}

/// The folder of one day: `_tables/measurements/adapter=<a>/dt=<day>/`.
pub fn day_prefix(adapter: &str, day: NaiveDate) -> String {
    format!(
        "{TABLE_PREFIX}/adapter={adapter}/dt={}/",
        day.format("%Y-%m-%d")
    )
}

fn day_bounds(day: NaiveDate) -> (i64, i64) {
    let start = day
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or_default();
    (start, start + DAY_MS)
}

fn day_from_index(index: i64) -> Option<NaiveDate> {
    chrono::DateTime::from_timestamp_millis(index.checked_mul(DAY_MS)?).map(|t| t.date_naive())
}

/// The compactor: writes days, finds stale ones, lists what exists. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tables {
    db: Db,
    store: Arc<dyn ObjectStore>,
    lock: Arc<Mutex<()>>,
}

impl Tables {
    pub fn new(db: Db, store: Arc<dyn ObjectStore>) -> Tables {
        Tables {
            db,
            store,
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// The files that exist, newest day first.
    pub async fn list(&self) -> Result<Vec<TableFile>, DbError> {
        self.db.list_table_files(None, None).await
    }

    /// Writes `day` of `adapter` (of every catalogue source with readings when `None`) in every
    /// bucket that has its readings, and removes that day's files from buckets that no longer
    /// do.
    pub async fn compact_day(
        &self,
        adapter: Option<&str>,
        day: NaiveDate,
    ) -> Result<Vec<Outcome>, TablesError> {
        let sources: Vec<&'static dyn Source> = match adapter {
            Some(name) => {
                vec![catalogue::source(name)
                    .ok_or_else(|| TablesError::UnknownAdapter(name.to_owned()))?]
            }
            None => catalogue::SOURCES.to_vec(),
        };
        let _one_at_a_time = self.lock.lock().await;
        let mut outcomes = Vec::new();
        for source in sources {
            if source.reading_columns().is_empty() {
                continue;
            }
            match self.compact_source_day(source, day).await {
                Ok(mut done) => outcomes.append(&mut done),
                Err(err) => {
                    metrics::counter!("ds_tables_failures_total").increment(1);
                    return Err(err);
                }
            }
        }
        Ok(outcomes)
    }

    /// Writes every closed day of the last `days` (before today, UTC) whose file is missing or
    /// stale, and removes files of days that lost all their readings. A failed day is logged
    /// and counted; the others go on.
    pub async fn compact_stale(&self, days: u32, today: NaiveDate) -> Vec<Outcome> {
        let (today_start, _) = day_bounds(today);
        let from = today_start - i64::from(days) * DAY_MS;
        let stale = match self.stale_days(from, today_start).await {
            Ok(stale) => stale,
            Err(err) => {
                metrics::counter!("ds_tables_failures_total").increment(1);
                tracing::warn!(
                    "tables: cannot read the watermarks: {}",
                    common::error_chain(&err)
                );
                return Vec::new();
            }
        };
        let mut outcomes = Vec::new();
        for (adapter, day) in stale {
            match self.compact_day(Some(&adapter), day).await {
                Ok(mut done) => outcomes.append(&mut done),
                Err(err) => tracing::warn!(
                    %adapter, %day,
                    "tables: cannot compact the day: {}",
                    common::error_chain(&err)
                ),
            }
        }
        outcomes
    }

    /// (adapter, day) pairs in `from_ms..to_ms` whose files do not match the readings.
    async fn stale_days(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<BTreeSet<(String, NaiveDate)>, DbError> {
        let mut now: HashMap<(String, String, NaiveDate), (i64, i64)> = HashMap::new();
        for w in self.db.table_watermarks(from_ms, to_ms).await? {
            if let Some(day) = day_from_index(w.day) {
                now.insert((w.bucket, w.adapter, day), (w.rows, w.parser_version_sum));
            }
        }
        let (from, to) = match (
            day_from_index(from_ms / DAY_MS),
            day_from_index(to_ms / DAY_MS - 1),
        ) {
            (Some(from), Some(to)) => (
                from.format("%Y-%m-%d").to_string(),
                to.format("%Y-%m-%d").to_string(),
            ),
            _ => return Ok(BTreeSet::new()),
        };
        let mut written: HashMap<(String, String, NaiveDate), (i64, i64)> = HashMap::new();
        for f in self.db.list_table_files(None, Some((&from, &to))).await? {
            if let Ok(day) = NaiveDate::parse_from_str(&f.day, "%Y-%m-%d") {
                written.insert((f.bucket, f.adapter, day), (f.rows, f.parser_version_sum));
            }
        }
        let mut stale = BTreeSet::new();
        for (key, figures) in &now {
            if written.get(key) != Some(figures) {
                stale.insert((key.1.clone(), key.2));
            }
        }
        for key in written.keys() {
            if !now.contains_key(key) {
                stale.insert((key.1.clone(), key.2));
            }
        }
        Ok(stale)
    }

    async fn compact_source_day(
        &self,
        source: &'static dyn Source,
        day: NaiveDate,
    ) -> Result<Vec<Outcome>, TablesError> {
        let adapter = source.name();
        let day_text = day.format("%Y-%m-%d").to_string();
        let prefix = day_prefix(adapter, day);
        let key = format!("{prefix}{PART_NAME}");
        let before: BTreeSet<String> = self
            .db
            .list_table_files(Some(adapter), Some((&day_text, &day_text)))
            .await?
            .into_iter()
            .map(|f| f.bucket)
            .collect();

        // Every bucket's file is built in memory from pages of the day's readings.
        let mut files: BTreeMap<String, DayFile> = BTreeMap::new();
        let mut after: Option<(Uuid, String, i64)> = None;
        loop {
            let page = self
                .db
                .table_rows_page(
                    adapter,
                    source.reading_columns(),
                    day_bounds(day),
                    after
                        .as_ref()
                        .map(|(stream_id, place, ts)| (*stream_id, place.as_str(), *ts)),
                    PAGE_ROWS,
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = Some((last.stream_id, last.place.clone(), last.ts));
            let mut by_bucket: BTreeMap<&str, Vec<_>> = BTreeMap::new();
            for row in &page {
                by_bucket.entry(row.bucket.as_str()).or_default().push(row);
            }
            for (bucket, rows) in by_bucket {
                let file = match files.get_mut(bucket) {
                    Some(file) => file,
                    None => files
                        .entry(bucket.to_owned())
                        .or_insert(DayFile::new(source)?),
                };
                file.write(&rows)?;
            }
            if i64::try_from(page.len()).unwrap_or(i64::MAX) < PAGE_ROWS {
                break;
            }
        }

        let mut outcomes = Vec::new();
        for (bucket, file) in files {
            let (rows, parser_versions, parser_version_sum) = (
                file.rows,
                file.parser_versions.iter().copied().collect(),
                file.parser_version_sum,
            );
            let body = Bytes::from(file.finish()?);
            let bytes = i64::try_from(body.len()).unwrap_or(i64::MAX);
            let meta = ObjectMeta {
                stream_id: "_tables".to_owned(),
                fetched_at: common::rfc3339_ms(common::now_ms()).unwrap_or_default(),
                sha256: hex::encode(Sha256::digest(&body)),
            };
            // The one atomic step: readers see the old day or this one.
            self.store.put(&bucket, &key, body, &meta).await?;
            self.remove_others(&bucket, &prefix, Some(&key)).await?;
            let written = TableFile {
                bucket,
                adapter: adapter.to_owned(),
                day: day_text.clone(),
                key: key.clone(),
                rows,
                bytes,
                parser_versions,
                parser_version_sum,
                compacted_at: common::now_ms(),
            };
            self.db.record_table_file(&written).await?;
            metrics::counter!("ds_tables_files_written_total").increment(1);
            metrics::counter!("ds_tables_rows_written_total")
                .increment(u64::try_from(rows).unwrap_or_default());
            metrics::counter!("ds_tables_bytes_written_total")
                .increment(u64::try_from(bytes).unwrap_or_default());
            tracing::info!(bucket = %written.bucket, adapter, day = %day_text, rows, bytes, "tables: day written");
            outcomes.push(Outcome::Written(written));
        }
        let written: BTreeSet<&str> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Written(f) => Some(f.bucket.as_str()),
                Outcome::Removed { .. } => None,
            })
            .collect();
        let gone: Vec<String> = before
            .iter()
            .filter(|b| !written.contains(b.as_str()))
            .cloned()
            .collect();
        for bucket in gone {
            self.remove_others(&bucket, &prefix, None).await?;
            self.db
                .forget_table_file(&bucket, adapter, &day_text)
                .await?;
            tracing::info!(%bucket, adapter, day = %day_text, "tables: day removed (no readings left)");
            outcomes.push(Outcome::Removed {
                bucket,
                adapter: adapter.to_owned(),
                day: day_text.clone(),
                key: key.clone(),
            });
        }
        Ok(outcomes)
    }

    /// Deletes every object in the day's folder but `keep`.
    async fn remove_others(
        &self,
        bucket: &str,
        prefix: &str,
        keep: Option<&str>,
    ) -> Result<(), StoreError> {
        let objects = match self.store.list(bucket, prefix).await {
            Ok(objects) => objects,
            Err(StoreError::NoSuchBucket { .. }) => return Ok(()),
            Err(err) => return Err(err),
        };
        for object in objects {
            if Some(object.key.as_str()) != keep {
                self.store.delete(bucket, &object.key).await?;
            }
        }
        Ok(())
    }

    /// Every `interval`, writes the stale closed days of the last `days`; until `shutdown`.
    /// A compaction in flight at shutdown is dropped: the day keeps its old file (the put is
    /// atomic) and is found stale again next time.
    pub async fn run(self, interval: Duration, days: u32, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = self.compact_stale(days, Utc::now().date_naive()) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
