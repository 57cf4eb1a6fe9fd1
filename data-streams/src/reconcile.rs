//! The reconciler: the object store is the source of truth for what was fetched, the database is
//! the index. It inserts every reference the database lacks (a worker that died between storing
//! and reporting loses nothing). It owns its loop ([`Reconciler::run`]: every period, and soon
//! after a worker (re)connects) and the findings of its last pass.
//!
//! A pass costs what is new, not what exists. Result ids are UUIDv7 and a stream's keys are
//! `…/dt=<day of the id>/<id>.json`, so one stream's listing is a timeline; each stream keeps a
//! watermark per layout (`reconcile_watermarks`): the last key up to which everything listed is
//! indexed. The periodic pass ([`Reconciler::run_once`], mode `watermark`) lists only what sorts
//! after it ([`ObjectStore::list_after`]). A watermark never passes an object it could not
//! index, nor one younger than the safety lag (max([`DEFAULT_SAFETY_LAG`], the stream's run
//! timeout)), since a worker with a slow put can store an older result id after a newer one:
//! such a late object is still listed by the next pass. Streams are visited in pages by id,
//! their listings a few at a time.
//!
//! Nor does a pass list every stream: what a worker stored but did not report is lost only
//! with its process (a process that lives on replays its outbox). So after the first pass of a
//! process (over every stream: nobody recorded what the workers of an earlier one left), a
//! periodic pass lists the *suspects* the supervisor names ([`Suspects`]: the streams of a
//! worker that went away, or that came back without running them, a restarted process) and its
//! share of a *rotation* through every stream (`elapsed / rotation` of them, in id order, going
//! on where the last pass stopped), which finds anything else (an overflowed outbox, a put that
//! landed after its worker was given up) within [`DEFAULT_ROTATION`].
//!
//! The audit pass ([`Reconciler::run_audit`], mode `audit`, `POST /reconciler/audit`) lists the
//! whole `RECONCILE_DAYS` window of every stream, as every pass once did: it also finds what
//! landed behind a watermark, and counts references whose object is gone (`dangling`).
//! [`Reconciler::audit`] compares everything without changing anything (`GET /audit`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Duration as ChronoDuration, NaiveDate, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use objects::{Layout, ObjectInfo, ObjectKey, ObjectStore, StoreError};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::{Db, DbError, ReconcileTarget, ReconciledRef, Watermarks};

/// The default safety lag: a watermark stays this far behind now (or a stream's run timeout
/// behind, if longer), so an object stored late, with an older result id than one already
/// listed, is still after it. Far longer than a put takes, retries included.
pub const DEFAULT_SAFETY_LAG: Duration = Duration::from_secs(10 * 60);

/// Streams read from the database at a time: a pass never holds every stream.
const STREAMS_PER_BATCH: usize = 1_000;

/// How long the periodic passes take to list every stream once (`RECONCILE_ROTATION_MS`): a
/// million streams and a pass a minute make 16,667 streams a pass. What a worker stored but
/// could not report is found sooner: the streams of a worker whose process restarted or went
/// away are listed in the next pass. The rotation finds the rest (an outbox that overflowed,
/// a put that landed after its worker was given up for lost) within this.
pub const DEFAULT_ROTATION: Duration = Duration::from_secs(60 * 60);

/// Listings (and object reads) in flight at once: enough to hide S3's round trips.
const LISTINGS_AT_ONCE: usize = 32;

/// Objects asked of the store per listing call (S3's page).
const OBJECTS_PER_PAGE: usize = 1_000;

/// Most objects a watermark pass lists for one stream and layout; the rest wait for the next
/// pass (the watermark moves past what was indexed). Bounds a batch's listings to 1,000 x this
/// after a long outage; a stream would have to store more than this within the safety lag to
/// be held up.
const OBJECTS_PER_STREAM_PASS: usize = 1_000;

/// Which kind of pass found what it found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The periodic pass: each stream listed after its watermark.
    #[default]
    Watermark,
    /// On demand: the whole window listed, dangling references counted.
    Audit,
}

/// Which streams a pass listed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every stream.
    #[default]
    All,
    /// The suspects (streams of a worker that restarted or went away) and the pass's share of
    /// the rotation through every stream.
    Due,
}

/// What the next periodic pass lists; shared with the supervisor through [`Suspects`].
#[derive(Debug)]
struct Plan {
    /// The next pass lists every stream: true after a start (sessions of an earlier process
    /// may have left objects unreported, and nobody recorded which), until a pass over all
    /// of them succeeds.
    whole: bool,
    /// Streams a worker held when it restarted or went away.
    suspects: HashSet<Uuid>,
    /// The last stream the rotation listed; it goes on after it, and wraps around.
    cursor: Option<Uuid>,
    /// When the last periodic pass started: a pass's share of the rotation is the streams for
    /// the time since.
    last_start: Option<Instant>,
}

/// The supervisor's handle on the reconciler's plan: it names the streams of a worker whose
/// process restarted or went away, and asks for a pass soon.
#[derive(Clone)]
pub struct Suspects {
    plan: Arc<Mutex<Plan>>,
    soon: Arc<Notify>,
}

impl Suspects {
    /// The next pass lists these streams (after their watermarks) whatever the rotation says.
    pub fn mark(&self, ids: impl IntoIterator<Item = Uuid>) {
        let mut plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        plan.suspects.extend(ids);
        metrics::gauge!("ds_reconciler_suspects").set(plan.suspects.len() as f64);
    }

    /// Asks for a pass soon (2 s from now, so a reconnected worker's replay lands first).
    pub fn soon(&self) {
        self.soon.notify_one();
    }

    /// How many streams wait for the next pass.
    pub fn len(&self) -> usize {
        let plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        plan.suspects.len()
    }

    /// Whether no stream waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a periodic pass lists, taken from the plan.
enum Due {
    All,
    Some {
        suspects: Vec<Uuid>,
        /// The time its share of the rotation covers.
        elapsed: Duration,
        cursor: Option<Uuid>,
    },
}

/// What one pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Findings {
    /// `watermark` (the periodic pass, listing what is newer than each stream's watermark) or
    /// `audit` (the whole window listed, on demand).
    pub mode: Mode,
    /// Which streams a `watermark` pass listed: `all` (the first pass after a start, or every
    /// pass with `RECONCILE_ROTATION_MS=0`), or `due` (the suspects and this pass's share of
    /// the rotation). An audit lists `all`.
    pub scope: Scope,
    /// Streams listed because the worker that held them restarted or went away (what it
    /// stored but had not reported is lost with it).
    pub suspects: u64,
    /// Streams whose partitions were listed.
    pub streams: u64,
    /// Objects listed: after the watermarks in a `watermark` pass, the whole window in an
    /// `audit`.
    pub objects: u64,
    /// References that were missing and are now inserted.
    pub inserted: u64,
    /// Objects whose name is not a result id (left alone, counted when listed).
    pub foreign: u64,
    /// Streams whose bucket could not be listed (missing bucket, store down).
    pub unlisted: u64,
    /// References in the listed window whose object is missing from the store. Counted by an
    /// `audit` only (a `watermark` pass does not list what is behind the watermarks): 0 there.
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

/// Reconciles one database against one object store. Cheap to clone; clones share the trigger,
/// the last findings, and take turns: one pass runs at a time.
#[derive(Clone)]
pub struct Reconciler {
    db: Db,
    store: Arc<dyn ObjectStore>,
    /// How many days back (UTC, today included) the partitions are listed.
    days: u32,
    soon: Arc<Notify>,
    last: Arc<Mutex<Option<LastPass>>>,
    /// Held through a pass: a periodic pass and an audit do not list the same streams at once.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// How old a push's intent must be before its object counts as abandoned.
    push_orphan_age: Duration,
    /// How far behind now a watermark stays at least.
    safety_lag: Duration,
    /// Streams read from the database at a time.
    streams_per_batch: usize,
    /// What the next periodic pass lists.
    plan: Arc<Mutex<Plan>>,
    /// How long the periodic passes take to list every stream once (each lists its share);
    /// zero: every pass lists every stream.
    rotation: Duration,
}

/// An unreported object read back.
enum Read {
    Reference(ReconciledRef),
    /// Deleted between the listing and the read.
    Gone(Uuid),
    /// Could not be read (logged): its stream's watermark stays before it, to try again.
    Failed,
}

/// One stream's listing, per layout in key order, or why there is none.
enum Listing {
    Listed(Vec<(Layout, Vec<ObjectInfo>)>),
    /// The bucket does not exist (yet): nothing was stored.
    NoBucket,
    /// The store failed; logged.
    Failed,
}

impl Reconciler {
    pub fn new(db: Db, store: Arc<dyn ObjectStore>, days: u32) -> Self {
        Reconciler {
            db,
            store,
            days: days.max(1),
            soon: Arc::new(Notify::new()),
            last: Arc::default(),
            turn: Arc::default(),
            push_orphan_age: Duration::from_secs(15 * 60),
            safety_lag: DEFAULT_SAFETY_LAG,
            streams_per_batch: STREAMS_PER_BATCH,
            plan: Arc::new(Mutex::new(Plan {
                whole: true,
                suspects: HashSet::new(),
                cursor: None,
                last_start: None,
            })),
            rotation: DEFAULT_ROTATION,
        }
    }

    /// How long the periodic passes take to list every stream once ([`DEFAULT_ROTATION`]):
    /// each pass lists the streams of a worker that restarted or went away, and its share of
    /// the rest, in id order, going on where the last one stopped. Zero: every pass lists every
    /// stream.
    pub fn with_rotation(mut self, rotation: Duration) -> Self {
        self.rotation = rotation;
        self
    }

    /// The supervisor's handle: streams to list next pass, and a pass soon.
    pub fn suspects(&self) -> Suspects {
        Suspects {
            plan: self.plan.clone(),
            soon: self.soon.clone(),
        }
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What this periodic pass lists; the suspects are taken (given back if the pass fails).
    fn take_due(&self, now: Instant) -> Due {
        let mut plan = self.plan();
        let since = plan.last_start.replace(now);
        if plan.whole || self.rotation.is_zero() {
            plan.suspects.clear();
            return Due::All;
        }
        let suspects: Vec<Uuid> = plan.suspects.drain().collect();
        metrics::gauge!("ds_reconciler_suspects").set(0.0);
        Due::Some {
            suspects,
            elapsed: since
                .map(|s| now.duration_since(s))
                .unwrap_or(self.rotation)
                .min(self.rotation),
            cursor: plan.cursor,
        }
    }

    /// How old a push's intent must be before its object is deleted as abandoned (default 15
    /// min: far longer than a batch takes to store and commit).
    pub fn with_push_orphan_age(mut self, age: Duration) -> Self {
        self.push_orphan_age = age;
        self
    }

    /// How far behind now a watermark stays at least ([`DEFAULT_SAFETY_LAG`]); a stream's run
    /// timeout, when longer, is its lag.
    pub fn with_safety_lag(mut self, lag: Duration) -> Self {
        self.safety_lag = lag;
        self
    }

    /// Streams read from the database at a time (default 1,000).
    pub fn with_streams_per_batch(mut self, streams: usize) -> Self {
        self.streams_per_batch = streams.max(1);
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
                Ok(findings) => tracing::debug!(?findings, "reconciler pass"),
                Err(err) => tracing::warn!("reconciler pass failed: {err}"),
            }
        }
    }

    /// One periodic pass: what is newer than each listed stream's watermark, for every stream
    /// (the first pass, or with a zero rotation) or for the suspects and this pass's share of
    /// the rotation.
    pub async fn run_once(&self) -> Result<Findings, ReconcileError> {
        self.pass(Mode::Watermark).await
    }

    /// One audit pass over every stream: the whole window listed, missing references inserted,
    /// dangling ones counted, watermarks moved forward as far as safe. Slower: meant for
    /// operators (`POST /reconciler/audit`) and checks.
    pub async fn run_audit(&self) -> Result<Findings, ReconcileError> {
        self.pass(Mode::Audit).await
    }

    async fn pass(&self, mode: Mode) -> Result<Findings, ReconcileError> {
        let _turn = self.turn.lock().await;
        let started = Instant::now();
        let mut findings = Findings {
            mode,
            ..Findings::default()
        };
        let first_day = Utc::now().date_naive() - ChronoDuration::days(i64::from(self.days) - 1);
        let due = match mode {
            Mode::Watermark => self.take_due(started),
            Mode::Audit => Due::All,
        };
        match due {
            Due::All => {
                self.all_streams(mode, first_day, &mut findings).await?;
                if mode == Mode::Watermark {
                    let mut plan = self.plan();
                    plan.whole = false;
                    plan.cursor = None;
                }
            }
            Due::Some {
                suspects,
                elapsed,
                cursor,
            } => {
                findings.scope = Scope::Due;
                if let Err(err) = self
                    .due_streams(&suspects, elapsed, cursor, first_day, &mut findings)
                    .await
                {
                    // Nothing is forgotten: they wait for the next pass.
                    self.plan().suspects.extend(suspects);
                    return Err(err.into());
                }
            }
        }
        findings.push_orphans_removed = self.remove_push_orphans().await?;
        if findings.inserted > 0 {
            tracing::warn!(
                inserted = findings.inserted,
                "reconciler indexed objects that were stored but never reported"
            );
        }
        let mode_label = match mode {
            Mode::Watermark => "watermark",
            Mode::Audit => "audit",
        };
        metrics::counter!("ds_reconciler_inserted_total").increment(findings.inserted);
        metrics::gauge!("ds_reconciler_last_objects").set(findings.objects as f64);
        metrics::gauge!("ds_reconciler_last_streams", "mode" => mode_label)
            .set(findings.streams as f64);
        metrics::gauge!("ds_reconciler_last_pass_seconds", "mode" => mode_label)
            .set(started.elapsed().as_secs_f64());
        if mode == Mode::Audit {
            metrics::gauge!("ds_reconciler_last_dangling").set(findings.dangling as f64);
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Some(LastPass {
                at_ms: common::now_ms(),
                findings: findings.clone(),
            });
        }
        Ok(findings)
    }

    /// Every stream, a page at a time by id, the next page read while this one is listed.
    async fn all_streams(
        &self,
        mode: Mode,
        first_day: NaiveDate,
        findings: &mut Findings,
    ) -> Result<(), DbError> {
        // An audit lists whole windows, without a cap: a few streams at a time bound its memory.
        let per_batch = match mode {
            Mode::Watermark => self.streams_per_batch,
            Mode::Audit => self.streams_per_batch.min(LISTINGS_AT_ONCE),
        };
        let limit = i64::try_from(per_batch).unwrap_or(i64::MAX);
        let mut next = self.db.reconcile_targets(None, limit).await?;
        while let Some(last) = next.last() {
            let after = Some(last.id);
            let targets = std::mem::take(&mut next);
            if targets.len() < per_batch {
                self.batch(targets, mode, first_day, findings).await?;
                break;
            }
            let (listed, page) = tokio::join!(
                self.batch(targets, mode, first_day, findings),
                self.db.reconcile_targets(after, limit)
            );
            listed?;
            next = page?;
        }
        Ok(())
    }

    /// The suspects, then this pass's share of the rotation: `elapsed / rotation` of every
    /// stream, going on after `cursor` in id order and wrapping around.
    async fn due_streams(
        &self,
        suspects: &[Uuid],
        elapsed: Duration,
        cursor: Option<Uuid>,
        first_day: NaiveDate,
        findings: &mut Findings,
    ) -> Result<(), DbError> {
        let per_batch = self.streams_per_batch;
        for chunk in suspects.chunks(per_batch) {
            // A suspect deleted meanwhile is not read back.
            let targets = self.db.reconcile_targets_of(chunk).await?;
            findings.suspects += targets.len() as u64;
            let unlisted = self
                .batch(targets, Mode::Watermark, first_day, findings)
                .await?;
            // One whose bucket could not be listed stays a suspect.
            if !unlisted.is_empty() {
                self.suspects().mark(unlisted);
            }
        }
        let total = self.db.count_reconcile_targets().await?;
        let share = (total as f64 * elapsed.as_secs_f64() / self.rotation.as_secs_f64()).ceil();
        let mut remaining = (share as u64).clamp(1, total.max(1));
        let mut after = cursor;
        let mut wrapped = after.is_none();
        while remaining > 0 {
            let limit = remaining.min(per_batch as u64) as i64;
            let targets = self.db.reconcile_targets(after, limit).await?;
            if targets.is_empty() {
                after = None;
                if wrapped {
                    break;
                }
                wrapped = true;
                continue;
            }
            remaining = remaining.saturating_sub(targets.len() as u64);
            after = targets.last().map(|t| t.id);
            self.batch(targets, Mode::Watermark, first_day, findings)
                .await?;
        }
        self.plan().cursor = after;
        Ok(())
    }

    /// One batch of streams: list each (a few at a time), look up every listed result id at
    /// once, insert the missing references, count dangling ones (audit), and move the
    /// watermarks forward in one statement. Returns the streams whose bucket could not be
    /// listed.
    async fn batch(
        &self,
        targets: Vec<ReconcileTarget>,
        mode: Mode,
        first_day: NaiveDate,
        findings: &mut Findings,
    ) -> Result<Vec<Uuid>, DbError> {
        findings.streams += targets.len() as u64;
        // The futures are made before they go into the stream (here and below): a closure
        // over borrowed tuples inside a spawned pass trips rustc's higher-ranked lifetime
        // inference ("FnOnce is not general enough").
        let listed: Vec<_> = targets
            .into_iter()
            .map(|target| self.list(target, mode, first_day))
            .collect();
        let listings: Vec<(ReconcileTarget, Listing)> = stream::iter(listed)
            .buffer_unordered(LISTINGS_AT_ONCE)
            .collect()
            .await;

        // What each listed object is, and which ones lack a reference.
        let mut ids = Vec::new();
        let mut parsed: HashMap<&str, Uuid> = HashMap::new();
        for (_, listing) in &listings {
            match listing {
                Listing::Listed(layouts) => {
                    for object in layouts.iter().flat_map(|(_, objects)| objects) {
                        findings.objects += 1;
                        match ObjectKey::parse(&object.key) {
                            Some(key) => {
                                ids.push(key.result_id());
                                parsed.insert(&object.key, key.result_id());
                            }
                            None => findings.foreign += 1,
                        }
                    }
                }
                Listing::Failed => findings.unlisted += 1,
                Listing::NoBucket => {}
            }
        }
        let mut indexed: HashSet<Uuid> = self.db.existing_result_ids(&ids).await?;
        let missing: Vec<(&ReconcileTarget, Uuid, &ObjectInfo)> = listings
            .iter()
            .flat_map(|(target, listing)| match listing {
                Listing::Listed(layouts) => layouts
                    .iter()
                    .flat_map(|(_, objects)| objects)
                    .filter_map(|object| {
                        let id = *parsed.get(object.key.as_str())?;
                        (!indexed.contains(&id)).then_some((target, id, object))
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        let reads: Vec<_> = missing
            .into_iter()
            .map(|(target, id, object)| self.reference(target, id, object))
            .collect();
        let read: Vec<Read> = stream::iter(reads)
            .buffer_unordered(LISTINGS_AT_ONCE)
            .collect()
            .await;
        let mut references = Vec::with_capacity(read.len());
        for r in read {
            match r {
                Read::Reference(r) => references.push(r),
                // Deleted since it was listed: nothing to index, nothing to wait for.
                Read::Gone(id) => {
                    indexed.insert(id);
                }
                Read::Failed => {}
            }
        }
        for chunk in references.chunks(500) {
            findings.inserted += self.db.insert_reconciled(chunk).await?;
            indexed.extend(chunk.iter().map(|r| r.id));
        }

        if mode == Mode::Audit {
            let window_start_ms = first_day
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc().timestamp_millis())
                .unwrap_or(0);
            let checks: Vec<_> = listings
                .iter()
                .filter_map(|(target, listing)| match listing {
                    Listing::Listed(layouts) => {
                        Some(self.dangling(target.id, layouts, window_start_ms))
                    }
                    _ => None,
                })
                .collect();
            let counts: Vec<u64> = stream::iter(checks)
                .buffer_unordered(LISTINGS_AT_ONCE)
                .try_collect()
                .await?;
            findings.dangling += counts.iter().sum::<u64>();
        }

        let now_ms = common::now_ms();
        let advances: Vec<(Uuid, Watermarks)> = listings
            .iter()
            .filter_map(|(target, listing)| {
                let Listing::Listed(layouts) = listing else {
                    return None;
                };
                let lag_ms = i64::try_from(self.safety_lag.as_millis())
                    .unwrap_or(i64::MAX)
                    .max(target.timeout_ms);
                let mut marks = Watermarks::default();
                for (layout, objects) in layouts {
                    let prefix = ObjectKey::stream_prefix(*layout, &target.adapter, target.id);
                    let current = watermark(&target.watermarks, *layout);
                    let through = settled_through(objects, &indexed, now_ms.saturating_sub(lag_ms))
                        .and_then(|key| key.strip_prefix(prefix.as_str()))
                        .filter(|suffix| current.is_none_or(|c| *suffix > c));
                    *watermark_mut(&mut marks, *layout) = through.map(str::to_owned);
                }
                // A first visit leaves a row even with nothing settled: it says the legacy
                // layout was looked at.
                (!target.visited || marks != Watermarks::default()).then_some((target.id, marks))
            })
            .collect();
        if !advances.is_empty() {
            // Not fatal: what is behind an unmoved watermark is indexed, and only listed again.
            if let Err(err) = self.db.advance_watermarks(&advances, now_ms).await {
                tracing::warn!("reconciler cannot move its watermarks forward: {err}");
            }
        }
        Ok(listings
            .iter()
            .filter(|(_, listing)| matches!(listing, Listing::Failed))
            .map(|(target, _)| target.id)
            .collect())
    }

    /// One stream's objects in both layouts (objects stored before the warehouse layout are found
    /// until `data-streams migrate-layout` has moved them): from the start of the window, and in
    /// a watermark pass from the watermark when it is later.
    async fn list(
        &self,
        target: ReconcileTarget,
        mode: Mode,
        first_day: NaiveDate,
    ) -> (ReconcileTarget, Listing) {
        let listing = self.list_layouts(&target, mode, first_day).await;
        (target, listing)
    }

    async fn list_layouts(
        &self,
        target: &ReconcileTarget,
        mode: Mode,
        first_day: NaiveDate,
    ) -> Listing {
        let mut layouts = Vec::with_capacity(Layout::ALL.len());
        for layout in Layout::ALL {
            // Nothing writes the first layout any more (workers of this protocol version write
            // the current one): a watermark pass lists it on a stream's first visit, then only
            // for streams where it found some. An audit pass lists it always.
            if layout == Layout::Legacy
                && mode == Mode::Watermark
                && target.visited
                && target.watermarks.legacy.is_none()
            {
                continue;
            }
            let prefix = ObjectKey::stream_prefix(layout, &target.adapter, target.id);
            // `…/dt=<first day>` sorts before that day's keys and after the days before.
            let window = format!("{prefix}dt={}", first_day.format("%Y-%m-%d"));
            let mut start = match (mode, watermark(&target.watermarks, layout)) {
                (Mode::Watermark, Some(mark)) => format!("{prefix}{mark}").max(window),
                _ => window,
            };
            let budget = match mode {
                Mode::Watermark => OBJECTS_PER_STREAM_PASS,
                Mode::Audit => usize::MAX,
            };
            let mut objects: Vec<ObjectInfo> = Vec::new();
            while objects.len() < budget {
                let want = OBJECTS_PER_PAGE.min(budget - objects.len());
                match self
                    .store
                    .list_after(&target.bucket, &prefix, &start, want)
                    .await
                {
                    Ok(page) => {
                        let more = page.len() == want;
                        objects.extend(page);
                        match objects.last() {
                            Some(last) if more => start = last.key.clone(),
                            _ => break,
                        }
                    }
                    Err(StoreError::NoSuchBucket { .. }) => return Listing::NoBucket,
                    Err(err) => {
                        tracing::warn!(stream_id = %target.id, "reconciler cannot list {}/{prefix}: {err}", target.bucket);
                        return Listing::Failed;
                    }
                }
            }
            layouts.push((layout, objects));
        }
        Listing::Listed(layouts)
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

    /// References of the window whose object is not in the listing. A candidate is checked once
    /// more with `head`, since its object may have landed after the listing was taken.
    async fn dangling(
        &self,
        stream_id: Uuid,
        layouts: &[(Layout, Vec<ObjectInfo>)],
        window_start_ms: i64,
    ) -> Result<u64, DbError> {
        let listed: HashSet<&str> = layouts
            .iter()
            .flat_map(|(_, objects)| objects)
            .map(|o| o.key.as_str())
            .collect();
        let mut dangling = 0;
        let mut after = None;
        'pages: loop {
            let (page, next) = self.db.list_results(stream_id, 1000, after).await?;
            for r in page {
                if r.fetched_at < window_start_ms {
                    break 'pages;
                }
                if listed.contains(r.key.as_str()) {
                    continue;
                }
                if let Err(StoreError::NoSuchKey { .. }) = self.store.head(&r.bucket, &r.key).await
                {
                    dangling += 1;
                    tracing::error!(
                        %stream_id,
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

    /// A reference for an unreported object, or what kept it from one (logged).
    async fn reference(&self, target: &ReconcileTarget, id: Uuid, object: &ObjectInfo) -> Read {
        match self.read_reference(target, id, object).await {
            Ok(r) => Read::Reference(r),
            Err(StoreError::NoSuchKey { .. }) => Read::Gone(id),
            Err(err) => {
                tracing::warn!(stream_id = %target.id, key = %object.key, "reconciler cannot read the object: {err}");
                Read::Failed
            }
        }
    }

    /// A reference for an unreported object: size and SHA-256 from the store's metadata when it
    /// has them, else from the bytes; the fetch time from the metadata, else from the UUIDv7
    /// (a slot's result id carries the slot, which the fetch followed).
    async fn read_reference(
        &self,
        target: &ReconcileTarget,
        id: Uuid,
        object: &ObjectInfo,
    ) -> Result<ReconciledRef, StoreError> {
        let bucket = target.bucket.as_str();
        let meta = match &object.meta {
            Some(m) => Some(m.clone()),
            None => self.store.head(bucket, &object.key).await?.meta,
        };
        let fetched_at = meta
            .as_ref()
            .and_then(|m| chrono::DateTime::parse_from_rfc3339(&m.fetched_at).ok())
            .map(|at| at.timestamp_millis())
            .or_else(|| objects::uuid_time_ms(id))
            .unwrap_or_else(common::now_ms);
        let sha256 = match meta.map(|m| m.sha256).filter(|s| s.len() == 64) {
            Some(sha) => sha,
            None => {
                let bytes = self.store.get(bucket, &object.key).await?;
                objects::sha256_hex(&bytes)
            }
        };
        Ok(ReconciledRef {
            id,
            stream_id: target.id,
            bucket: bucket.to_owned(),
            key: object.key.clone(),
            fetched_at,
            size: object.size as i64,
            sha256,
        })
    }
}

fn watermark(marks: &Watermarks, layout: Layout) -> Option<&str> {
    match layout {
        Layout::Hive => marks.hive.as_deref(),
        Layout::Legacy => marks.legacy.as_deref(),
    }
}

fn watermark_mut(marks: &mut Watermarks, layout: Layout) -> &mut Option<String> {
    match layout {
        Layout::Hive => &mut marks.hive,
        Layout::Legacy => &mut marks.legacy,
    }
}

/// The key up to which a watermark may move: the last result in `listed` (one stream's objects
/// in one layout, in key order) such that it and every result before it are `indexed` and
/// were stored at or before `cutoff_ms` (by their UUIDv7 time). It stops at the first result
/// without a reference (it could not be read: try again) and at the first one younger than the
/// cutoff (an older one may still land before it). Foreign names are passed over but never
/// the watermark themselves; a result id without a time (not a UUIDv7) cannot be judged by
/// time and only needs its reference.
fn settled_through<'a>(
    listed: &'a [ObjectInfo],
    indexed: &HashSet<Uuid>,
    cutoff_ms: i64,
) -> Option<&'a str> {
    let mut through = None;
    for object in listed {
        let Some(key) = ObjectKey::parse(&object.key) else {
            continue;
        };
        let id = key.result_id();
        let young = objects::uuid_time_ms(id).is_some_and(|at| at > cutoff_ms);
        if young || !indexed.contains(&id) {
            break;
        }
        through = Some(object.key.as_str());
    }
    through
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

#[cfg(test)]
mod tests {
    use super::*;

    fn object(stream: Uuid, at_ms: u64) -> (Uuid, ObjectInfo) {
        let id = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            at_ms / 1000,
            (at_ms % 1000) as u32 * 1_000_000,
        ));
        let key = ObjectKey::for_result("IQAIR_DAILY", stream, id).to_string();
        (
            id,
            ObjectInfo {
                key,
                size: 1,
                meta: None,
            },
        )
    }

    #[test]
    fn a_watermark_stops_before_the_young_and_the_unindexed() {
        let stream = Uuid::now_v7();
        let now: u64 = 1_780_000_000_000;
        let minute = 60_000;
        let listed: Vec<(Uuid, ObjectInfo)> = [30, 20, 12, 9, 5]
            .iter()
            .map(|m| object(stream, now - m * minute))
            .collect();
        let objects: Vec<ObjectInfo> = listed.iter().map(|(_, o)| o.clone()).collect();
        let all: HashSet<Uuid> = listed.iter().map(|(id, _)| *id).collect();
        let cutoff = (now - 10 * minute) as i64;
        // Everything indexed: up to the last one older than the lag (12 minutes ago).
        assert_eq!(
            settled_through(&objects, &all, cutoff),
            Some(objects[2].key.as_str())
        );
        // One that could not be indexed holds the watermark before it.
        let mut without = all.clone();
        without.remove(&listed[1].0);
        assert_eq!(
            settled_through(&objects, &without, cutoff),
            Some(objects[0].key.as_str())
        );
        // All young, or nothing listed: no watermark.
        assert_eq!(settled_through(&objects[3..], &all, cutoff), None);
        assert_eq!(settled_through(&[], &all, cutoff), None);
        // A foreign name is passed over, never the watermark itself.
        let mut with_foreign = objects[..2].to_vec();
        with_foreign.push(ObjectInfo {
            key: format!("IQAIR_DAILY/stream_id={stream}/dt=2099-01-01/notes.txt"),
            size: 1,
            meta: None,
        });
        assert_eq!(
            settled_through(&with_foreign, &all, cutoff),
            Some(objects[1].key.as_str())
        );
    }
}
