//! `data-streams migrate-layout`: moves raw objects stored under the first key layout
//! (`<adapter>/<stream_id>/dt=…/<id>.json`) to the warehouse layout
//! (`<adapter>/stream_id=<stream_id>/dt=…/<id>.json`, [`objects::ObjectKey`]) and points their
//! references at the new keys.
//!
//! Each object moves in three steps, in this order: copy it to its new key (skipped when the new
//! key already holds the same bytes), point its reference at the new key (only if it still
//! names the old one), delete the old key. A kill between any two steps leaves the object
//! readable through its reference (the old key until the reference moves, both keys until the
//! old one is deleted), and a re-run picks up exactly where the kill left it: the command is
//! idempotent and resumable, and safe beside a running supervisor (the reconciler matches
//! objects to references by result id, whatever the key).
//!
//! Every bucket a stream writes to is listed in full, so objects of deleted streams move too
//! (they have no reference to update).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use objects::{Layout, ObjectKey, ObjectMeta, ObjectStore, StoreError};
use serde::Serialize;

use crate::db::{Db, DbError};

/// Objects moved at once (each is a few store calls and one small update).
const CONCURRENCY: usize = 16;

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// Buckets listed.
    pub buckets: u64,
    /// Objects in the legacy layout found.
    pub legacy: u64,
    /// Objects moved (copied, reference updated, old key deleted) by this run.
    pub moved: u64,
    /// Of those, objects whose new key already held the same bytes (a run killed after the
    /// copy): not copied again.
    pub already_copied: u64,
    /// References pointed at the new key.
    pub references_moved: u64,
    /// Objects that could not be moved this time (each logged with its reason); a re-run
    /// retries them.
    pub failed: u64,
}

/// The migration could not run at all (it stops at the first bucket it cannot list).
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("cannot list bucket {bucket}: {source}")]
    List {
        bucket: String,
        #[source]
        source: StoreError,
    },
}

/// Moves every legacy-layout object of every bucket the streams name, at most
/// `objects_per_second` a second (0: no limit).
pub async fn migrate_layout(
    db: &Db,
    store: Arc<dyn ObjectStore>,
    objects_per_second: u32,
) -> Result<MigrationReport, MigrationError> {
    // One pace for all the moves in flight; missed ticks delay rather than burst.
    let pace = (objects_per_second > 0).then(|| {
        let mut interval = tokio::time::interval(Duration::from_secs(1) / objects_per_second);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::sync::Mutex::new(interval)
    });
    let mut buckets: Vec<String> = db
        .list_streams()
        .await?
        .iter()
        .map(|s| s.spec.bucket_name().to_owned())
        .collect();
    buckets.sort();
    buckets.dedup();
    let mut report = MigrationReport::default();
    for bucket in buckets {
        report.buckets += 1;
        let listed = match store.list(&bucket, "").await {
            Ok(listed) => listed,
            Err(StoreError::NoSuchBucket { .. }) => continue,
            Err(source) => return Err(MigrationError::List { bucket, source }),
        };
        let legacy: Vec<ObjectKey> = listed
            .iter()
            .filter_map(|o| ObjectKey::parse(&o.key))
            .filter(|k| k.layout() == Layout::Legacy)
            .collect();
        let total = legacy.len() as u64;
        report.legacy += total;
        tracing::info!(
            bucket,
            objects = total,
            "moving objects to the warehouse layout"
        );
        let done = AtomicU64::new(0);
        let outcomes: Vec<Result<Moved, MoveError>> = stream::iter(legacy)
            .map(|key| {
                let (store, bucket, done, pace) =
                    (store.clone(), bucket.as_str(), &done, pace.as_ref());
                async move {
                    if let Some(pace) = pace {
                        pace.lock().await.tick().await;
                    }
                    let outcome = move_one(db, &*store, bucket, &key).await;
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % 1_000 == 0 {
                        tracing::info!(bucket, "{n} of {total} objects handled");
                    }
                    if let Err(err) = &outcome {
                        tracing::warn!(bucket, key = %key, "not moved (a re-run retries it): {err}");
                    }
                    outcome
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for outcome in outcomes {
            match outcome {
                Ok(moved) => {
                    report.moved += 1;
                    report.already_copied += u64::from(moved.already_copied);
                    report.references_moved += u64::from(moved.reference_moved);
                }
                Err(_) => report.failed += 1,
            }
        }
    }
    tracing::info!(?report, "layout migration finished");
    Ok(report)
}

/// What moving one object took.
struct Moved {
    already_copied: bool,
    reference_moved: bool,
}

#[derive(Debug, thiserror::Error)]
enum MoveError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Db(#[from] DbError),
}

/// Copy, re-point, delete: see the module documentation for why this order survives a kill.
async fn move_one(
    db: &Db,
    store: &dyn ObjectStore,
    bucket: &str,
    old: &ObjectKey,
) -> Result<Moved, MoveError> {
    let (from, to) = (old.to_string(), old.in_current_layout().to_string());
    let body = store.get(bucket, &from).await?;
    let sha256 = objects::sha256_hex(&body);
    let already_copied = match store.head(bucket, &to).await {
        Ok(existing) => {
            existing.size == body.len() as u64
                && existing.meta.as_ref().is_some_and(|m| m.sha256 == sha256)
        }
        Err(StoreError::NoSuchKey { .. }) => false,
        Err(err) => return Err(err.into()),
    };
    if !already_copied {
        // The metadata it was stored with, or what the key and the UUIDv7 say (an object that
        // never had any).
        let meta = match store.head(bucket, &from).await?.meta {
            Some(meta) if meta.sha256.eq_ignore_ascii_case(&sha256) => meta,
            _ => ObjectMeta {
                stream_id: old.stream_id().to_string(),
                fetched_at: objects::uuid_time_ms(old.result_id())
                    .and_then(common::rfc3339_ms)
                    .or_else(|| common::rfc3339_ms(common::now_ms()))
                    .unwrap_or_default(),
                sha256,
            },
        };
        store.put(bucket, &to, body, &meta).await?;
    }
    let reference_moved = db.move_reference(old.result_id(), &from, &to).await?;
    store.delete(bucket, &from).await?;
    Ok(Moved {
        already_copied,
        reference_moved,
    })
}
