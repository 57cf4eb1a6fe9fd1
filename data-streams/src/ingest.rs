//! Push ingestion (`PUSH` streams): records sent to `POST /streams/{id}/ingest` become raw
//! objects, references, readings and live messages, like fetched data.
//!
//! A request's body is read as it arrives and cut into lines (NDJSON), or, for a JSON object
//! or array, into its records. Lines gather into a batch; a batch becomes one object (its lines
//! byte for byte, each ended by `\n`) when it reaches the stream's `batch.max_records` or
//! `batch.max_bytes`, when its first line has waited `batch.max_ms`, and at the end of the
//! request. Each object is stored, then its reference (with its readings, and the request's
//! progress when it has an `Idempotency-Key`) is committed in one transaction; only then is it
//! acknowledged. One batch is stored and committed (by a task of its own) while the next is
//! read; the one after waits for it, so a slow store or database slows the client down through
//! TCP instead of filling memory.
//!
//! What a request may hold in memory is reserved when it starts (two batches' `max_bytes` plus
//! the longest line): from the stream's bound (else `429`) and from the server's (else `503`),
//! both with `Retry-After`.
//!
//! A malformed or oversized line ends the request: the lines before it are committed (their
//! result ids are in the answer), nothing after it is read. An object is written before its
//! reference, with an intent row first; an object whose reference never committed (the server
//! died between the two) is deleted by the reconciler once its intent is old.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use objects::{ObjectKey, ObjectMeta, ObjectStore, StoreError};
use protocol::Measurement;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use uuid::Uuid;

use crate::db::{Db, PushCommit, PushObject, PushProgress, ResultRow};
use crate::live::{Live, LiveMessage};
use crate::stream::{Rfc3339, StreamRow};

/// How an ingest server is bounded.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// The longest line (record) accepted, in bytes.
    pub max_line_bytes: usize,
    /// The most a JSON (not NDJSON) body may hold: it is parsed whole.
    pub max_json_body_bytes: usize,
    /// Bytes all requests of one stream may hold at once.
    pub stream_bytes: usize,
    /// Bytes all requests together may hold at once.
    pub total_bytes: usize,
    /// How long a store write may take, its retries included.
    pub put_deadline: Duration,
    /// Serve `POST /ingest/void` (reads a body and discards it): the ceiling the ingest
    /// benchmark compares with. Off unless `INGEST_BENCH_VOID_ROUTE=true`.
    pub void_route: bool,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_line_bytes: 1024 * 1024,
            max_json_body_bytes: 16 * 1024 * 1024,
            stream_bytes: 64 * 1024 * 1024,
            total_bytes: 256 * 1024 * 1024,
            put_deadline: Duration::from_secs(60),
            void_route: false,
        }
    }
}

/// Why a request stopped before its end, or could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("line {line} (byte offset {offset}) is not JSON: {detail}")]
    Malformed {
        line: u64,
        offset: u64,
        detail: String,
    },
    #[error("line {line} (byte offset {offset}) is longer than the {limit}-byte limit")]
    LineTooLong {
        line: u64,
        offset: u64,
        limit: usize,
    },
    #[error("the body is not a JSON object or array of records: {0}")]
    NotRecords(String),
    #[error("a JSON body may hold at most {0} bytes; send longer pushes as NDJSON (application/x-ndjson)")]
    JsonTooLarge(usize),
    #[error("the request body could not be read: {0}")]
    Body(String),
    #[error("the object store did not take a batch: {0}")]
    Store(String),
    #[error("the database did not take a batch: {0}")]
    Database(String),
    #[error("the stream was deleted while the request ran")]
    StreamGone,
    #[error("stream {0} already holds as much in flight as it may; retry shortly")]
    StreamBusy(Uuid),
    #[error("the server already holds as much in flight as it may; retry shortly")]
    ServerBusy,
}

impl IngestError {
    /// A short code for answers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Malformed { .. } => "malformed_line",
            IngestError::LineTooLong { .. } => "line_too_long",
            IngestError::NotRecords(_) => "not_records",
            IngestError::JsonTooLarge(_) => "payload_too_large",
            IngestError::Body(_) => "body_unreadable",
            IngestError::Store(_) => "store_unavailable",
            IngestError::Database(_) => "database_unavailable",
            IngestError::StreamGone => "not_found",
            IngestError::StreamBusy(_) => "stream_busy",
            IngestError::ServerBusy => "server_busy",
        }
    }

    /// The line and byte offset the error is at, for errors about one line.
    pub fn at(&self) -> Option<(u64, u64)> {
        match self {
            IngestError::Malformed { line, offset, .. }
            | IngestError::LineTooLong { line, offset, .. } => Some((*line, *offset)),
            _ => None,
        }
    }
}

/// What a request has had committed so far. Every field moves only after a commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Records committed (blank lines are not records).
    pub accepted: u64,
    /// The last line committed, counting from 1 (lines before it are all committed).
    pub acked_through_line: u64,
    /// Every object committed, in order.
    pub result_ids: Vec<Uuid>,
    /// Readings that were new.
    pub readings: u64,
}

/// A request's bytes in flight, reserved for as long as it runs.
pub struct Reservation {
    _stream: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

/// The push ingestion of one server: its bounds and the requests in flight.
#[derive(Clone)]
pub struct Ingest {
    db: Db,
    store: Arc<dyn ObjectStore>,
    live: Live,
    limits: IngestLimits,
    total: Arc<Semaphore>,
    per_stream: Arc<Mutex<HashMap<Uuid, Arc<Semaphore>>>>,
    idempotent: Arc<Mutex<HashSet<(Uuid, String)>>>,
}

/// Semaphore permits count KiB, so that the bounds fit in a `u32`.
const UNIT: usize = 1024;

fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

impl Ingest {
    pub fn new(db: Db, store: Arc<dyn ObjectStore>, live: Live, limits: IngestLimits) -> Self {
        Ingest {
            db,
            store,
            live,
            limits,
            total: Arc::new(Semaphore::new(units(limits.total_bytes) as usize)),
            per_stream: Arc::default(),
            idempotent: Arc::default(),
        }
    }

    pub fn limits(&self) -> IngestLimits {
        self.limits
    }

    /// Reserves what a request of `stream` may hold (two batches: the one being read and the
    /// one being stored; and a line), or says which bound is full.
    pub fn reserve(&self, stream: &StreamRow) -> Result<Reservation, IngestError> {
        let batch = catalogue::push::Batch::of(&stream.spec.source);
        // The batch being read, the batch in flight, and a line.
        let want = usize::try_from(batch.max_bytes)
            .unwrap_or(usize::MAX)
            .saturating_mul(2)
            .saturating_add(self.limits.max_line_bytes)
            .min(self.limits.stream_bytes)
            .min(self.limits.total_bytes);
        let semaphore = {
            let mut map = self.per_stream.lock().unwrap_or_else(|p| p.into_inner());
            // Streams without a request in flight hold no entry.
            map.retain(|_, s| s.available_permits() < units(self.limits.stream_bytes) as usize);
            map.entry(stream.id)
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(units(self.limits.stream_bytes) as usize))
                })
                .clone()
        };
        let stream_permit = semaphore
            .try_acquire_many_owned(units(want))
            .map_err(|_| IngestError::StreamBusy(stream.id))?;
        let total_permit = self
            .total
            .clone()
            .try_acquire_many_owned(units(want))
            .map_err(|_| IngestError::ServerBusy)?;
        Ok(Reservation {
            _stream: stream_permit,
            _total: total_permit,
        })
    }

    /// Marks an idempotent request as running; false when one with the same key already is.
    pub fn begin_idempotent(&self, stream_id: Uuid, key: &str) -> bool {
        self.idempotent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((stream_id, key.to_owned()))
    }

    pub fn end_idempotent(&self, stream_id: Uuid, key: &str) {
        self.idempotent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(stream_id, key.to_owned()));
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Reads `body` as NDJSON into `stream`'s objects until its end or the first bad line;
    /// `acked` hears of each commit. Lines up to `skip_lines` were committed by an earlier
    /// attempt of the same idempotent request and are passed over. Returns what was committed,
    /// and the error that ended the request early, if one did.
    pub async fn ndjson<S, E>(
        &self,
        stream: &StreamRow,
        body: S,
        resume: Resume,
        acked: &mut (dyn FnMut(&Progress) + Send),
    ) -> (Progress, Option<IngestError>)
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut run = Run::new(self, stream, resume);
        let error = run.ndjson(body, acked).await.err();
        (run.progress, error)
    }

    /// A JSON body (an object: one record; an array: one record per element), already read.
    pub async fn json(
        &self,
        stream: &StreamRow,
        body: &[u8],
        resume: Resume,
        acked: &mut (dyn FnMut(&Progress) + Send),
    ) -> (Progress, Option<IngestError>) {
        let mut run = Run::new(self, stream, resume);
        let error = run.json(body, acked).await.err();
        (run.progress, error)
    }
}

/// Where an idempotent request resumes: what its earlier attempts committed.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    pub idempotency_key: Option<String>,
    pub progress: Progress,
}

/// One request as it goes.
struct Run<'a> {
    ingest: &'a Ingest,
    stream: &'a StreamRow,
    batch_policy: catalogue::push::Batch,
    iqair: bool,
    key: Option<String>,
    skip_lines: u64,
    progress: Progress,
    batch: Batch,
    /// The batch being stored and committed while the next one is read (at most one).
    inflight: Option<tokio::task::JoinHandle<Result<Flushed, IngestError>>>,
}

/// What a stored and committed batch adds to its request's progress.
struct Flushed {
    result_id: Uuid,
    records: u64,
    last_line: u64,
    readings: u64,
    bytes: u64,
}

/// The lines waiting to become an object.
#[derive(Default)]
struct Batch {
    bytes: BytesMut,
    records: u64,
    readings: Vec<Measurement>,
    last_line: u64,
    first_at: Option<(Instant, i64)>,
}

impl<'a> Run<'a> {
    fn new(ingest: &'a Ingest, stream: &'a StreamRow, resume: Resume) -> Self {
        let skip_lines = resume.progress.acked_through_line;
        Run {
            ingest,
            stream,
            batch_policy: catalogue::push::Batch::of(&stream.spec.source),
            iqair: catalogue::push::schema(&stream.spec.source) == Some("iqair"),
            key: resume.idempotency_key,
            skip_lines,
            progress: resume.progress,
            batch: Batch::default(),
            inflight: None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.batch
            .first_at
            .map(|(at, _)| at + Duration::from_millis(self.batch_policy.max_ms))
    }

    async fn ndjson<S, E>(
        &mut self,
        mut body: S,
        acked: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<(), IngestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let max_line = self.ingest.limits.max_line_bytes;
        // The bytes of the line being read, its number (from 1) and its offset in the body.
        let mut pending = BytesMut::new();
        let mut line = 1u64;
        let mut offset = 0u64;
        loop {
            let deadline = self.deadline();
            let step = tokio::select! {
                chunk = body.next() => Step::Chunk(chunk),
                _ = sleep_until_some(deadline), if deadline.is_some() => Step::Due,
                done = async { self.inflight.as_mut().expect("checked").await },
                    if self.inflight.is_some() => Step::Settled(done),
            };
            let chunk = match step {
                // The batch's time is up.
                Step::Due => {
                    self.flush(acked).await?;
                    continue;
                }
                // The batch in flight is committed: acknowledged now, not at the next batch.
                Step::Settled(done) => {
                    self.inflight = None;
                    self.apply(joined(done), acked)?;
                    continue;
                }
                Step::Chunk(None) => break,
                Step::Chunk(Some(Err(err))) => {
                    // What arrived whole is kept; the line cut short is not.
                    self.finish(acked).await?;
                    return Err(IngestError::Body(err.to_string()));
                }
                Step::Chunk(Some(Ok(chunk))) => chunk,
            };
            let mut rest = chunk;
            while !rest.is_empty() {
                match memchr::memchr(b'\n', &rest) {
                    Some(end) => {
                        let head = rest.split_to(end + 1);
                        let text: Bytes = if pending.is_empty() {
                            head.slice(..end)
                        } else {
                            pending.extend_from_slice(&head[..end]);
                            pending.split().freeze()
                        };
                        if text.len() > max_line {
                            self.finish(acked).await?;
                            return Err(IngestError::LineTooLong {
                                line,
                                offset,
                                limit: max_line,
                            });
                        }
                        let len = text.len() as u64 + 1;
                        self.line(line, offset, text, acked).await?;
                        offset += len;
                        line += 1;
                    }
                    None => {
                        pending.extend_from_slice(&rest);
                        rest.clear();
                        if pending.len() > max_line {
                            self.finish(acked).await?;
                            return Err(IngestError::LineTooLong {
                                line,
                                offset,
                                limit: max_line,
                            });
                        }
                    }
                }
            }
        }
        // The last line may end without a newline.
        if !pending.is_empty() {
            let text = pending.split().freeze();
            self.line(line, offset, text, acked).await?;
        }
        self.finish(acked).await
    }

    async fn json(
        &mut self,
        body: &[u8],
        acked: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<(), IngestError> {
        if body.len() > self.ingest.limits.max_json_body_bytes {
            return Err(IngestError::JsonTooLarge(
                self.ingest.limits.max_json_body_bytes,
            ));
        }
        let start = body
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .ok_or_else(|| IngestError::NotRecords("the body is empty".into()))?;
        let records: Vec<&serde_json::value::RawValue> = match body[start] {
            b'[' => serde_json::from_slice(body).map_err(|e| json_error(body, &e))?,
            b'{' => vec![serde_json::from_slice(body).map_err(|e| json_error(body, &e))?],
            _ => {
                return Err(IngestError::NotRecords(
                    "it starts with neither { nor [".into(),
                ))
            }
        };
        for (index, record) in records.into_iter().enumerate() {
            let text = record.get().as_bytes();
            // A record that spans lines cannot be one NDJSON line: it is written compactly.
            let line = if text.contains(&b'\n') {
                let value: serde_json::Value = serde_json::from_str(record.get())
                    .map_err(|e| IngestError::NotRecords(e.to_string()))?;
                Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
            } else {
                Bytes::copy_from_slice(text)
            };
            let offset = (text.as_ptr() as usize).saturating_sub(body.as_ptr() as usize) as u64;
            self.line(index as u64 + 1, offset, line, acked).await?;
        }
        self.finish(acked).await
    }

    /// One line: checked, then added to the batch (which is stored first when the line would
    /// not fit).
    async fn line(
        &mut self,
        line: u64,
        offset: u64,
        text: Bytes,
        acked: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<(), IngestError> {
        if line <= self.skip_lines {
            return Ok(());
        }
        if text.len() > self.ingest.limits.max_line_bytes {
            self.finish(acked).await?;
            return Err(IngestError::LineTooLong {
                line,
                offset,
                limit: self.ingest.limits.max_line_bytes,
            });
        }
        if text.iter().all(u8::is_ascii_whitespace) {
            // A blank line holds no record; it still counts as read.
            self.batch.last_line = line;
            if self.batch.records == 0 {
                self.progress.acked_through_line = line;
            }
            return Ok(());
        }
        // One parse a line: checked only, or read for its reading where the schema has one.
        let checked = if self.iqair {
            serde_json::from_slice::<serde_json::Value>(&text).map(catalogue::push::iqair_reading)
        } else {
            serde_json::from_slice::<serde::de::IgnoredAny>(&text).map(|_| None)
        };
        let reading = match checked {
            Ok(reading) => reading,
            Err(err) => {
                self.finish(acked).await?;
                return Err(IngestError::Malformed {
                    line,
                    offset,
                    detail: err.to_string(),
                });
            }
        };
        let size = text.len() as u64 + 1;
        if self.batch.records > 0
            && self.batch.bytes.len() as u64 + size > self.batch_policy.max_bytes
        {
            self.flush(acked).await?;
        }
        if self.batch.first_at.is_none() {
            self.batch.first_at = Some((Instant::now(), common::now_ms()));
        }
        self.batch.readings.extend(reading);
        self.batch.bytes.extend_from_slice(&text);
        self.batch.bytes.extend_from_slice(b"\n");
        self.batch.records += 1;
        self.batch.last_line = line;
        if self.batch.records >= self.batch_policy.max_records
            || self.batch.bytes.len() as u64 >= self.batch_policy.max_bytes
        {
            self.flush(acked).await?;
        }
        Ok(())
    }

    /// Hands the batch to a task that stores it as one object and commits its reference, once
    /// the batch before it is committed (its acknowledgement first, so they stay in order).
    /// Reading goes on while the task runs; the next flush waits for it.
    async fn flush(
        &mut self,
        acked: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<(), IngestError> {
        self.settle(acked).await?;
        if self.batch.records == 0 {
            if self.batch.last_line > self.progress.acked_through_line {
                self.progress.acked_through_line = self.batch.last_line;
            }
            self.batch = Batch::default();
            return Ok(());
        }
        let job = FlushJob {
            ingest: self.ingest.clone(),
            stream_id: self.stream.id,
            bucket: self.stream.spec.bucket_name().to_owned(),
            key: self.key.clone(),
            accepted_before: self.progress.accepted,
            // Only a keyed request stores its ids with each commit.
            result_ids_before: if self.key.is_some() {
                self.progress.result_ids.clone()
            } else {
                Vec::new()
            },
            batch: std::mem::take(&mut self.batch),
        };
        self.inflight = Some(tokio::spawn(job.run()));
        Ok(())
    }

    /// Waits for the batch in flight, if any, and acknowledges it.
    async fn settle(
        &mut self,
        acked: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<(), IngestError> {
        match self.inflight.take() {
            Some(task) => self.apply(joined(task.await), acked),
            None => Ok(()),
        }
    }

    /// Flushes what is left and waits for it: everything read is committed (or the error says
    /// why not).
    async fn finish(
        &mut self,
        acked: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<(), IngestError> {
        self.flush(acked).await?;
        self.settle(acked).await
    }

    /// A committed batch moves the progress and is acknowledged.
    fn apply(
        &mut self,
        done: Result<Flushed, IngestError>,
        acked: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<(), IngestError> {
        let flushed = done?;
        self.progress.accepted += flushed.records;
        self.progress.acked_through_line = flushed.last_line;
        self.progress.result_ids.push(flushed.result_id);
        self.progress.readings += flushed.readings;
        metrics::counter!("ds_ingest_records_total").increment(flushed.records);
        metrics::counter!("ds_ingest_bytes_total").increment(flushed.bytes);
        metrics::counter!("ds_ingest_objects_total").increment(1);
        acked(&self.progress);
        Ok(())
    }
}

/// What the read loop waits for next.
enum Step<E> {
    Chunk(Option<Result<Bytes, E>>),
    Due,
    Settled(Result<Result<Flushed, IngestError>, tokio::task::JoinError>),
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A flush task's outcome; a task that panicked failed its batch.
fn joined(
    done: Result<Result<Flushed, IngestError>, tokio::task::JoinError>,
) -> Result<Flushed, IngestError> {
    done.unwrap_or_else(|err| {
        Err(IngestError::Database(format!(
            "the task storing a batch failed: {err}"
        )))
    })
}

/// One batch on its way to the store and the database.
struct FlushJob {
    ingest: Ingest,
    stream_id: Uuid,
    bucket: String,
    key: Option<String>,
    accepted_before: u64,
    result_ids_before: Vec<Uuid>,
    batch: Batch,
}

impl FlushJob {
    /// Intent, put, one commit (reference, readings, progress), then the live message.
    async fn run(self) -> Result<Flushed, IngestError> {
        let FlushJob {
            ingest,
            stream_id,
            bucket,
            key: idempotency_key,
            accepted_before,
            mut result_ids_before,
            batch,
        } = self;
        let result_id = Uuid::now_v7();
        let fetched_ms = objects::uuid_time_ms(result_id).unwrap_or_else(common::now_ms);
        let fetched_at = chrono::DateTime::from_timestamp_millis(fetched_ms).unwrap_or_default();
        let key = ObjectKey::new(
            catalogue::push::NAME,
            stream_id,
            fetched_at.date_naive(),
            result_id,
        )
        .to_string();
        let body = batch.bytes.freeze();
        let sha256 = objects::sha256_hex(&body);
        let meta = ObjectMeta {
            stream_id: stream_id.to_string(),
            fetched_at: fetched_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sha256: sha256.clone(),
        };
        let db = &ingest.db;
        db.push_intent(result_id, &bucket, &key, common::now_ms())
            .await
            .map_err(|e| IngestError::Database(e.to_string()))?;
        put(&ingest, &bucket, &key, body.clone(), &meta).await?;
        let object = PushObject {
            result_id,
            stream_id,
            bucket: bucket.clone(),
            key: key.clone(),
            fetched_at: fetched_ms,
            received_at: batch.first_at.map_or(fetched_ms, |(_, ms)| ms),
            size: body.len() as i64,
            sha256,
        };
        result_ids_before.push(result_id);
        let accepted = accepted_before + batch.records;
        let progress = idempotency_key.as_deref().map(|key| PushProgress {
            idempotency_key: key,
            lines: batch.last_line as i64,
            accepted: accepted as i64,
            result_ids: &result_ids_before,
        });
        let readings = match db.commit_push(&object, &batch.readings, progress).await {
            Ok(PushCommit::Stored { readings }) => readings,
            Ok(PushCommit::NoStream) => {
                forget(&ingest, &bucket, &key, result_id).await;
                return Err(IngestError::StreamGone);
            }
            Err(err) => {
                // Not referenced: the object must go too (or the reconciler removes it later).
                forget(&ingest, &bucket, &key, result_id).await;
                return Err(IngestError::Database(err.to_string()));
            }
        };
        announce(&ingest.live, &object);
        Ok(Flushed {
            result_id,
            records: batch.records,
            last_line: batch.last_line,
            readings,
            bytes: body.len() as u64,
        })
    }
}

/// The object goes out on the live channel like a fetched one.
fn announce(live: &Live, object: &PushObject) {
    if live.is_idle() {
        return;
    }
    let row = ResultRow::pushed(object);
    live.publish(
        Some(object.stream_id),
        &LiveMessage::Result {
            stream_id: object.stream_id,
            result: &row,
            measurement: None,
            committed_at: Rfc3339(common::now_ms()),
        },
    );
}

/// Stores an object, retrying transient failures until the put deadline; creates the bucket
/// once if it is missing.
async fn put(
    ingest: &Ingest,
    bucket: &str,
    key: &str,
    body: Bytes,
    meta: &ObjectMeta,
) -> Result<(), IngestError> {
    let store = &ingest.store;
    let deadline = Instant::now() + ingest.limits.put_deadline;
    let mut wait = Duration::from_millis(50);
    let mut bucket_checked = false;
    loop {
        let attempt = tokio::time::timeout_at(deadline, store.put(bucket, key, body.clone(), meta));
        let err = match attempt.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(StoreError::NoSuchBucket { .. })) if !bucket_checked => {
                bucket_checked = true;
                match store.ensure_bucket(bucket).await {
                    Ok(()) => continue,
                    Err(err) => err,
                }
            }
            Ok(Err(err)) => err,
            Err(_) => {
                return Err(IngestError::Store(format!(
                    "{} did not store {bucket}/{key} within {:?}",
                    store.describe(),
                    ingest.limits.put_deadline
                )))
            }
        };
        if !err.is_transient() || Instant::now() + wait >= deadline {
            return Err(IngestError::Store(err.to_string()));
        }
        tracing::warn!("push: storing {bucket}/{key} failed, retrying in {wait:?}: {err}");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// Deletes an object whose reference will not be committed; its intent is left to the
/// reconciler when the delete fails.
async fn forget(ingest: &Ingest, bucket: &str, key: &str, result_id: Uuid) {
    match ingest.store.delete(bucket, key).await {
        Ok(()) => {
            if let Err(err) = ingest.db.forget_push_intent(result_id).await {
                tracing::warn!(%result_id, "cannot forget the push intent: {err}");
            }
        }
        Err(err) => tracing::warn!(
            "cannot delete the uncommitted push object {bucket}/{key} (the reconciler will): {err}"
        ),
    }
}

/// A JSON body that does not parse: the line and byte offset serde_json reports.
fn json_error(body: &[u8], err: &serde_json::Error) -> IngestError {
    let line = err.line() as u64;
    let offset = body
        .split(|b| *b == b'\n')
        .take(err.line().saturating_sub(1))
        .map(|l| l.len() as u64 + 1)
        .sum::<u64>()
        + err.column().saturating_sub(1) as u64;
    IngestError::Malformed {
        line,
        offset,
        detail: err.to_string(),
    }
}
