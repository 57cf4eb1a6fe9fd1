//! The reconciler: the object store is the source of truth for what was fetched, the database is
//! the index. For each stream it lists the recent `dt=` partitions and inserts every reference the
//! database lacks (a worker that died between storing and reporting loses nothing), and it counts
//! references whose object is gone. It owns its loop ([`Reconciler::run`]: every period, and
//! soon after a worker (re)connects) and the findings of its last pass.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use objects::{Layout, ObjectInfo, ObjectKey, ObjectStore, StoreError};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::{Db, DbError, ReconciledRef};
use crate::stream::StreamRow;

/// What one pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Findings {
    /// Streams whose partitions were listed.
    pub streams: u64,
    /// Objects seen in the listed partitions.
    pub objects: u64,
    /// References that were missing and are now inserted.
    pub inserted: u64,
    /// Objects whose name is not a result id (left alone, counted).
    pub foreign: u64,
    /// Streams whose bucket could not be listed (missing bucket, store down).
    pub unlisted: u64,
    /// References in the listed window whose object is missing from the store.
    pub dangling: u64,
    /// Objects of pushes whose reference never committed (the server stopped between the two),
    /// now deleted.
    pub push_orphans_removed: u64,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The last pass: when it ended (epoch ms) and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastPass {
    pub at_ms: i64,
    pub findings: Findings,
}

/// Reconciles one database against one object store. Cheap to clone; clones share the trigger
/// and the last findings.
#[derive(Clone)]
pub struct Reconciler {
    db: Db,
    store: Arc<dyn ObjectStore>,
    /// How many days back (UTC, today included) the partitions are listed.
    days: u32,
    soon: Arc<Notify>,
    last: Arc<Mutex<Option<LastPass>>>,
    /// How old a push's intent must be before its object counts as abandoned.
    push_orphan_age: Duration,
}

impl Reconciler {
    pub fn new(db: Db, store: Arc<dyn ObjectStore>, days: u32) -> Self {
        Reconciler {
            db,
            store,
            days: days.max(1),
            soon: Arc::new(Notify::new()),
            last: Arc::default(),
            push_orphan_age: Duration::from_secs(15 * 60),
        }
    }

    /// How old a push's intent must be before its object is deleted as abandoned (default 15
    /// min: far longer than a batch takes to store and commit).
    pub fn with_push_orphan_age(mut self, age: Duration) -> Self {
        self.push_orphan_age = age;
        self
    }

    /// Notified when a pass should come soon (a worker (re)connected).
    pub fn trigger(&self) -> Arc<Notify> {
        self.soon.clone()
    }

    /// The last pass, if one ran.
    pub fn last_pass(&self) -> Option<LastPass> {
        self.last.lock().map(|l| l.clone()).unwrap_or(None)
    }

    /// Pass every `every`, and 2 s after each trigger (so a reconnected worker's replay lands
    /// first and its events are not mistaken for losses), until `shutdown`.
    pub async fn run(self, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.soon.notified() => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
                _ = tokio::time::sleep(every) => {}
            }
            match self.run_once().await {
                Ok(findings) => {
                    tracing::debug!(?findings, "reconciler pass");
                    if let Ok(mut last) = self.last.lock() {
                        *last = Some(LastPass {
                            at_ms: common::now_ms(),
                            findings,
                        });
                    }
                }
                Err(err) => tracing::warn!("reconciler pass failed: {err}"),
            }
        }
    }

    /// One pass over every stream.
    pub async fn run_once(&self) -> Result<Findings, ReconcileError> {
        let mut findings = Findings::default();
        for stream in self.db.list_streams().await? {
            // A push stream's objects are referenced by the server that stores them, in the
            // same request; one without a reference is an abandoned push (below), not news.
            if !stream.spec.is_push() {
                self.stream(&stream, &mut findings).await?;
            }
        }
        findings.push_orphans_removed = self.remove_push_orphans().await?;
        if findings.inserted > 0 {
            tracing::warn!(
                inserted = findings.inserted,
                "reconciler indexed objects that were stored but never reported"
            );
        }
        metrics::counter!("ds_reconciler_inserted_total").increment(findings.inserted);
        metrics::gauge!("ds_reconciler_last_objects").set(findings.objects as f64);
        metrics::gauge!("ds_reconciler_last_dangling").set(findings.dangling as f64);
        Ok(findings)
    }

    /// Deletes the objects of pushes whose reference never committed: intents older than the
    /// orphan age without a reference. Returns how many were deleted.
    async fn remove_push_orphans(&self) -> Result<u64, DbError> {
        let age = i64::try_from(self.push_orphan_age.as_millis()).unwrap_or(i64::MAX);
        let intents = self.db.stale_push_intents(common::now_ms() - age).await?;
        let ids: Vec<Uuid> = intents.iter().map(|(id, _, _)| *id).collect();
        let referenced = self.db.existing_result_ids(&ids).await?;
        let mut removed = 0;
        for (id, bucket, key) in intents {
            if !referenced.contains(&id) {
                match self.store.delete(&bucket, &key).await {
                    Ok(()) | Err(StoreError::NoSuchBucket { .. }) => removed += 1,
                    Err(err) => {
                        tracing::warn!(%id, "cannot delete the abandoned push object {bucket}/{key}: {err}");
                        continue;
                    }
                }
            }
            self.db.forget_push_intent(id).await?;
        }
        if removed > 0 {
            tracing::warn!(
                removed,
                "deleted pushed objects whose reference never committed"
            );
        }
        Ok(removed)
    }

    async fn stream(&self, stream: &StreamRow, findings: &mut Findings) -> Result<(), DbError> {
        findings.streams += 1;
        let today = Utc::now().date_naive();
        let mut listed: Vec<ObjectInfo> = Vec::new();
        // Both layouts: objects stored before the warehouse layout are found until
        // `data-streams migrate-layout` has moved them.
        let days = (0..self.days).map(|back| today - ChronoDuration::days(back as i64));
        for (day, layout) in days.flat_map(|day| Layout::ALL.map(|layout| (day, layout))) {
            let prefix = ObjectKey::day_prefix(layout, stream.spec.adapter(), stream.id, day);
            match self.store.list(stream.spec.bucket_name(), &prefix).await {
                Ok(mut objects) => listed.append(&mut objects),
                Err(StoreError::NoSuchBucket { .. }) => return Ok(()),
                Err(err) => {
                    findings.unlisted += 1;
                    tracing::warn!(stream_id = %stream.id, "reconciler cannot list {}/{prefix}: {err}", stream.spec.bucket_name());
                    return Ok(());
                }
            }
        }
        findings.objects += listed.len() as u64;
        let listed_keys: HashSet<String> = listed.iter().map(|o| o.key.clone()).collect();
        let window_start_ms = (today - ChronoDuration::days(self.days as i64 - 1))
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis())
            .unwrap_or(0);
        findings.dangling += self.dangling(stream, &listed_keys, window_start_ms).await?;
        let mut by_id = Vec::with_capacity(listed.len());
        for object in listed {
            match ObjectKey::parse(&object.key) {
                Some(key) => by_id.push((key.result_id(), object)),
                None => findings.foreign += 1,
            }
        }
        for chunk in by_id.chunks(500) {
            let ids: Vec<Uuid> = chunk.iter().map(|(id, _)| *id).collect();
            let known: HashSet<Uuid> = self.db.existing_result_ids(&ids).await?;
            let mut missing = Vec::new();
            for (id, object) in chunk.iter().filter(|(id, _)| !known.contains(id)) {
                match self.reference(stream, *id, object).await {
                    Ok(r) => missing.push(r),
                    Err(err) => {
                        tracing::warn!(stream_id = %stream.id, key = %object.key, "reconciler cannot read the object: {err}")
                    }
                }
            }
            if !missing.is_empty() {
                findings.inserted += self.db.insert_reconciled(&missing).await?;
            }
        }
        Ok(())
    }

    /// References of the window whose object is not in the listing. A candidate is checked once
    /// more with `head`, since its object may have landed after the listing was taken.
    async fn dangling(
        &self,
        stream: &StreamRow,
        listed: &HashSet<String>,
        window_start_ms: i64,
    ) -> Result<u64, DbError> {
        let mut dangling = 0;
        let mut after = None;
        'pages: loop {
            let (page, next) = self.db.list_results(stream.id, 1000, after).await?;
            for r in page {
                if r.fetched_at < window_start_ms {
                    break 'pages;
                }
                if listed.contains(&r.key) {
                    continue;
                }
                if let Err(StoreError::NoSuchKey { .. }) = self.store.head(&r.bucket, &r.key).await
                {
                    dangling += 1;
                    tracing::error!(
                        stream_id = %stream.id,
                        result_id = %r.id,
                        "reference without its object: {}/{} is missing from the store",
                        r.bucket,
                        r.key
                    );
                }
            }
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        Ok(dangling)
    }

    /// A reference for an unreported object: size and SHA-256 from the store's metadata when it
    /// has them, else from the bytes; the fetch time from the UUIDv7.
    async fn reference(
        &self,
        stream: &StreamRow,
        id: Uuid,
        object: &ObjectInfo,
    ) -> Result<ReconciledRef, StoreError> {
        let bucket = stream.spec.bucket_name();
        let meta = match &object.meta {
            Some(m) => Some(m.clone()),
            None => self.store.head(bucket, &object.key).await?.meta,
        };
        let sha256 = match meta.map(|m| m.sha256).filter(|s| s.len() == 64) {
            Some(sha) => sha,
            None => {
                let bytes = self.store.get(bucket, &object.key).await?;
                objects::sha256_hex(&bytes)
            }
        };
        let fetched_at = objects::uuid_time_ms(id).unwrap_or_else(common::now_ms);
        Ok(ReconciledRef {
            id,
            stream_id: stream.id,
            bucket: bucket.to_owned(),
            key: object.key.clone(),
            fetched_at,
            size: object.size as i64,
            sha256,
        })
    }
}

/// A full comparison of the object store with the references: every partition of every stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Audit {
    /// Objects in the streams' prefixes.
    pub objects: u64,
    /// References in the database.
    pub references: u64,
    /// Objects without a reference (the reconciler's work).
    pub orphans: u64,
    /// References whose object is missing.
    pub dangling: u64,
    /// References beyond the first that point at the same object.
    pub duplicates: u64,
    /// Streams whose bucket could not be listed.
    pub unlisted: u64,
}

impl Reconciler {
    /// Compare everything: slow on big buckets, meant for operators and the chaos check.
    pub async fn audit(&self) -> Result<Audit, ReconcileError> {
        let mut audit = Audit::default();
        'streams: for stream in self.db.list_streams().await? {
            let bucket = stream.spec.bucket_name();
            let mut objects: HashSet<String> = HashSet::new();
            for layout in Layout::ALL {
                let prefix = ObjectKey::stream_prefix(layout, stream.spec.adapter(), stream.id);
                match self.store.list(bucket, &prefix).await {
                    Ok(list) => objects.extend(list.into_iter().map(|o| o.key)),
                    Err(StoreError::NoSuchBucket { .. }) => {}
                    Err(err) => {
                        audit.unlisted += 1;
                        tracing::warn!(stream_id = %stream.id, "audit cannot list {bucket}/{prefix}: {err}");
                        continue 'streams;
                    }
                }
            }
            let mut keys: HashSet<String> = HashSet::new();
            let mut after = None;
            loop {
                let (page, next) = self.db.list_results(stream.id, 1000, after).await?;
                for r in page {
                    audit.references += 1;
                    if !keys.insert(r.key.clone()) {
                        audit.duplicates += 1;
                    } else if !objects.contains(&r.key) {
                        audit.dangling += 1;
                    }
                }
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            audit.objects += objects.len() as u64;
            audit.orphans += objects.iter().filter(|k| !keys.contains(*k)).count() as u64;
        }
        Ok(audit)
    }
}
