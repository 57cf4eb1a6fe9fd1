//! The message types of the control link. Pure data: no I/O and no encoding choices live here.
//!
//! One [`Frame`] enum travels in both directions. The names of the original design stay visible
//! through [`Call::name`] and [`Event::name`] (`worker:start`, `data-streams:results`, ...), which
//! is what logs and metrics print.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use common::SecretKey;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The reading a result carries: the catalogue's IQAir measurement.
pub use catalogue::iqair::Measurement;

/// Version of the wire format. A peer with another version is rejected during the handshake.
pub const PROTOCOL_VERSION: u32 = 6;

/// Everything that crosses the link, in either direction.
///
/// Frames are moved through the decoder and the link's queues by value, so the large payloads
/// sit behind a pointer (a `worker:start` config, a hello, a result record): a frame is a few
/// dozen bytes, not a few hundred. serde encodes a `Box` or an `Arc` exactly as what it holds,
/// so the wire does not change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// supervisor → worker, first frame on a new connection.
    Challenge(Challenge),
    /// worker → supervisor, the answer to the challenge.
    Hello(Box<Hello>),
    /// supervisor → worker: the hello was accepted.
    Welcome(Welcome),
    /// supervisor → worker: the hello was refused; the socket closes after this frame.
    Reject(Reject),
    /// A request that expects a [`Frame::Reply`] with the same id.
    Call { id: u64, call: Box<Call> },
    /// The answer to the call with the same id.
    Reply { id: u64, reply: Reply },
    /// worker → supervisor: a numbered event, kept by the worker until acknowledged.
    Event { seq: u64, event: Event },
    /// supervisor → worker: every event up to and including `seq` is committed.
    Ack { seq: u64 },
    /// Either way: "I am alive". Any frame counts as a sign of life; this one carries nothing.
    Heartbeat,
    /// supervisor → worker, instead of a welcome: this supervisor is not the leader; dial the
    /// leader's worker address (when known). The socket closes after this frame. Sent only
    /// after the hello is verified, so only a worker holding the token learns the address.
    Redirect(Redirect),
}

impl Frame {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Challenge(_) => "challenge",
            Frame::Hello(_) => "hello",
            Frame::Welcome(_) => "welcome",
            Frame::Reject(_) => "reject",
            Frame::Call { call, .. } => call.name(),
            Frame::Reply { .. } => "reply",
            Frame::Event { event, .. } => event.name(),
            Frame::Ack { .. } => "ack",
            Frame::Heartbeat => "heartbeat",
            Frame::Redirect(_) => "redirect",
        }
    }
}

/// The supervisor's opening move: a random nonce the worker must sign with the shared token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub protocol_version: u32,
    pub nonce: [u8; 32],
}

/// The worker's answer to the challenge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    /// Stable identity across restarts (`WORKER_ID`).
    pub worker_id: String,
    /// The most streams this worker will run.
    pub capacity: u32,
    /// Adapter names this worker can run, e.g. `IQAIR_DAILY`.
    pub adapters: Vec<String>,
    /// How many streams the worker runs right now (0 after a crash). The list itself follows
    /// in `worker_available` events: a million streams do not fit in one frame.
    pub running: u64,
    /// HMAC-SHA256 over the nonce and the worker id under the shared token.
    pub mac: Vec<u8>,
}

/// A stream a worker runs, with the assignment generation it was started under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunningStream {
    pub stream_id: Uuid,
    pub generation: u64,
}

/// The supervisor accepted the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// How often each side sends a heartbeat when otherwise idle.
    pub heartbeat_interval_ms: u64,
    /// After this long without any frame, a peer is declared gone.
    pub heartbeat_timeout_ms: u64,
}

/// A follower's answer to a verified hello: where the leader takes workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    /// The leader's worker address (`host:port`); `None` while no leader is known (an election
    /// in progress): the worker tries its other addresses.
    pub leader: Option<String>,
}

/// Why the supervisor refused a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    pub reason: String,
}

/// Requests from the supervisor to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Call {
    /// `worker:start` — run this stream (idempotent; a changed config applies at the end of the
    /// current interval).
    Start(StreamConfig),
    /// `worker:stop` — stop this stream (idempotent). `generation` of 0 stops whatever runs.
    Stop { stream_id: Uuid, generation: u64 },
    /// `worker:start_many` — `worker:start` for each stream, in order, answered once: the
    /// reply's `refused` lists the streams that could not start (protocol 5). The supervisor
    /// hands out thousands of streams this way without a round trip each.
    StartMany(Vec<StreamConfig>),
}

impl Call {
    /// The name from the original design.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Start(_) => "worker:start",
            Call::Stop { .. } => "worker:stop",
            Call::StartMany(_) => "worker:start_many",
        }
    }
}

/// The answer to a call, in the original shape `{"success": true, "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub success: bool,
    #[serde(deserialize_with = "text::deserialize")]
    pub message: String,
    /// `worker:start_many`: the streams that did not start and why (empty otherwise).
    pub refused: Vec<Refused>,
}

/// One stream of a `worker:start_many` that did not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub stream_id: Uuid,
    pub generation: u64,
    pub message: String,
}

impl Reply {
    pub fn ok(message: impl Into<String>) -> Self {
        Reply {
            success: true,
            message: message.into(),
            refused: Vec::new(),
        }
    }

    pub fn err(message: impl Into<String>) -> Self {
        Reply {
            success: false,
            message: message.into(),
            refused: Vec::new(),
        }
    }
}

/// When a stream runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schedule {
    /// Every `millis` milliseconds, at a fixed rate; the first run comes after a stable
    /// per-stream offset (the worker's start spread), not right away.
    Interval { millis: u64 },
    /// A cron expression with seconds, e.g. `0 */15 * * * *`, evaluated in UTC.
    Cron { expr: String },
}

/// Everything a worker needs to run one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamConfig {
    pub stream_id: Uuid,
    /// Settles stale claims: a worker's run of an older generation is stopped.
    pub generation: u64,
    /// e.g. `IQAIR_DAILY`.
    #[serde(deserialize_with = "text::deserialize")]
    pub adapter: String,
    /// e.g. `http://api.airvisual.com/v2/nearest_city`.
    #[serde(deserialize_with = "text::deserialize")]
    pub endpoint: String,
    /// The external API key; the one secret the wire carries on purpose.
    #[serde(with = "common::secret::expose")]
    pub secret_key: SecretKey,
    pub schedule: Schedule,
    /// Per-fetch timeout (fetch, retries and upload together).
    pub timeout_ms: u64,
    /// The bucket (or folder under the `file://` root) that raw objects go to.
    #[serde(deserialize_with = "text::deserialize")]
    pub bucket_name: String,
    /// Adapter parameters as strings, e.g. `lat`/`lon`, or `city`/`state`/`country`.
    pub params: BTreeMap<String, String>,
    /// The call budget of this stream's key. Every stream with the same key on one worker draws
    /// from one shared budget; when their configured limits differ, the strictest applies per
    /// window (the smallest non-zero limit).
    pub rate_limit: RateLimit,
    /// The source's own description of what to call, as JSON text (`HTTP_JSON`: `request`,
    /// `pagination`, `records`, `max_pages`, `page_concurrency`, `job`; see
    /// `catalogue::http_json::Spec`); empty for sources that need none (IQAir).
    #[serde(deserialize_with = "text::deserialize")]
    pub source: String,
    /// Where the next run's incremental window starts, ms since the Unix epoch: the end of the
    /// last window the supervisor has stored, or the stream's `start_at`. `None`: one schedule
    /// period before the slot. The worker keeps its own later value while it runs the stream.
    pub window_start_ms: Option<i64>,
}

/// Calls allowed per API key: in any 61 s (a sliding minute), per UTC calendar day and per UTC
/// calendar month (see the worker's `ratelimit`). 0 means no limit on that window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    pub per_minute: u32,
    pub per_day: u32,
    pub per_month: u32,
}

impl RateLimit {
    /// IQAir Community (free) plan: 5 per minute, 500 per day, 10 000 per month (IQAIR.md §7).
    pub const COMMUNITY: RateLimit = RateLimit {
        per_minute: 5,
        per_day: 500,
        per_month: 10_000,
    };
    /// No local limit at all (the API's own limit answers still back off).
    pub const UNLIMITED: RateLimit = RateLimit {
        per_minute: 0,
        per_day: 0,
        per_month: 0,
    };

    /// The stricter of two limits, window by window (0, no limit, loses to any number).
    pub fn strictest(self, other: RateLimit) -> RateLimit {
        fn min(a: u32, b: u32) -> u32 {
            match (a, b) {
                (0, x) | (x, 0) => x,
                (a, b) => a.min(b),
            }
        }
        RateLimit {
            per_minute: min(self.per_minute, other.per_minute),
            per_day: min(self.per_day, other.per_day),
            per_month: min(self.per_month, other.per_month),
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::COMMUNITY
    }
}

/// Events from a worker to the supervisor.
///
/// The records are shared (`Arc`): the worker keeps every event until it is acknowledged and
/// sends a copy, which then costs a reference count instead of the record's strings. A decoded
/// record is held once, so [`Arc::unwrap_or_clone`] takes it out without copying.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// `data-streams:results` — a raw object was stored; here is its reference and reading.
    Results(#[serde(with = "shared")] Arc<ResultRecord>),
    /// `data-streams:run_failed` — a run ended without an object.
    RunFailed(#[serde(with = "shared")] Arc<RunFailure>),
    /// `data-streams:worker_available` — sent on every (re)connect with what the worker runs,
    /// in as many parts as the frame size needs ([`Event::worker_available`]); the supervisor
    /// acts on the whole list, when the part with `last` arrives.
    WorkerAvailable {
        running: Vec<RunningStream>,
        last: bool,
    },
    /// `data-streams:run` — how a run of several steps (pages, an async job, a sweep) stands:
    /// sent when it starts, when its job changes state, and when it ends. A single-fetch run
    /// sends none: its one [`Event::Results`] (with `ends_run`) or [`Event::RunFailed`] says
    /// it all.
    Run(Box<RunReport>),
}

impl Event {
    /// The `worker_available` parts for `running`, each small enough for a frame of
    /// `max_frame` bytes; always at least one part (an empty list is one empty last part).
    pub fn worker_available(running: Vec<RunningStream>, max_frame: usize) -> Vec<Event> {
        // A RunningStream encodes in at most 26 bytes (16-byte id with its length, a u64
        // varint); keep 256 bytes for the frame's own fields.
        let per_part = (max_frame.saturating_sub(256) / 26).max(1);
        if running.is_empty() {
            return vec![Event::WorkerAvailable {
                running,
                last: true,
            }];
        }
        let parts = running.len().div_ceil(per_part);
        running
            .chunks(per_part)
            .enumerate()
            .map(|(i, part)| Event::WorkerAvailable {
                running: part.to_vec(),
                last: i + 1 == parts,
            })
            .collect()
    }

    /// The name from the original design.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Results(_) => "data-streams:results",
            Event::RunFailed(_) => "data-streams:run_failed",
            Event::WorkerAvailable { .. } => "data-streams:worker_available",
            Event::Run(_) => "data-streams:run",
        }
    }
}

/// An `Arc<T>` on the wire exactly as `T`. serde's own `rc` impl would decode through a `Box`
/// and copy into the `Arc`: two allocations where one does.
mod shared {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &Arc<T>, s: S) -> Result<S::Ok, S::Error> {
        T::serialize(value, s)
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<T>, D::Error> {
        T::deserialize(d).map(Arc::new)
    }
}

/// A `String` decoded in one copy. serde's own `String` asks the decoder for an owned string,
/// which bincode builds in a zeroed buffer (`calloc`, then a copy); asking for a `str` gets a
/// slice of the frame, copied once into an exact allocation. The bytes on the wire are the same.
/// For the strings of the frames that come by the thousand: results, `worker:start`, replies.
mod text {
    use std::fmt;

    use serde::de::{Deserializer, Error, Visitor};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        struct Text;

        impl Visitor<'_> for Text {
            type Value = String;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_owned())
            }

            fn visit_string<E: Error>(self, v: String) -> Result<String, E> {
                Ok(v)
            }
        }

        d.deserialize_str(Text)
    }
}

/// A reference to one stored raw object, plus the reading parsed from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// UUIDv7: time ordered, and the object's file name.
    pub result_id: Uuid,
    pub stream_id: Uuid,
    #[serde(deserialize_with = "text::deserialize")]
    pub adapter: String,
    #[serde(deserialize_with = "text::deserialize")]
    pub bucket: String,
    /// Object key inside the bucket (`objects::ObjectKey`).
    #[serde(deserialize_with = "text::deserialize")]
    pub key: String,
    /// Milliseconds since the Unix epoch, when the response arrived.
    pub fetched_at_ms: i64,
    /// When the schedule meant this run to start (the tick), ms since the Unix epoch.
    pub scheduled_at_ms: i64,
    /// When the run started; `started_at_ms - scheduled_at_ms` is the schedule lag.
    pub started_at_ms: i64,
    pub size: u64,
    /// Hex SHA-256 of the raw bytes.
    #[serde(deserialize_with = "text::deserialize")]
    pub sha256: String,
    /// The parsed reading; `None` when the response held no reading. Boxed: it is most of the
    /// record's size, and events are moved through channels and queues many times.
    pub measurement: Option<Box<Measurement>>,
    /// The run this object belongs to (UUIDv7, made when the run started).
    pub run_id: Uuid,
    /// The page of the run this object holds, from 0 (a single-fetch run has page 0 only).
    pub page: u32,
    /// How many records the page holds, where the source says where its records are.
    pub records: Option<u64>,
    /// Calls the run made up to and including this object's (retries count).
    pub attempts: u32,
    /// This object ends its run (a single-fetch run): the supervisor records the run as
    /// stored from this record alone.
    pub ends_run: bool,
}

/// A run that produced no object, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFailure {
    /// UUIDv7 of the run; persistence is idempotent on it.
    pub run_id: Uuid,
    pub stream_id: Uuid,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub class: FailureClass,
    /// Human-readable detail, e.g. `HTTP 502` or `call_per_minute_limit_reached`. Never a key.
    pub message: String,
    /// True when the worker stopped the stream because of it (bad or expired key).
    pub stream_stopped: bool,
    /// When the schedule meant the run to start, and when it did, ms since the Unix epoch.
    pub scheduled_at_ms: i64,
    pub started_at_ms: i64,
    /// Calls the run made (0: none, e.g. the key's budget was used up).
    pub attempts: u32,
}

/// How a run of several steps stands ([`Event::Run`]); the supervisor keeps one row per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// UUIDv7, made when the run started; every page's [`ResultRecord::run_id`].
    pub run_id: Uuid,
    pub stream_id: Uuid,
    /// The slot (tick) the run is for, and when it started, ms since the Unix epoch.
    pub scheduled_at_ms: i64,
    pub started_at_ms: i64,
    /// When it ended; `None` while it runs.
    pub finished_at_ms: Option<i64>,
    pub status: RunStatus,
    /// Calls made so far (pages, retries, job polls and token requests).
    pub attempts: u32,
    /// Pages stored so far, records in them (where the source says where records are) and
    /// their bytes.
    pub pages: u32,
    pub records: Option<u64>,
    pub bytes: u64,
    /// The incremental window the run covers: `[start, end)` in ms since the Unix epoch.
    pub window: Option<RunWindow>,
    /// The async job's states so far, oldest first.
    pub job: Vec<JobStep>,
    /// Why it failed (status `failed`) or was cut short (`truncated`). Never a key.
    pub class: Option<FailureClass>,
    pub message: Option<String>,
    /// True when the worker stopped the stream because of it (bad or expired key).
    pub stream_stopped: bool,
}

/// A run's `[start, end)` window, ms since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunWindow {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunStatus {
    /// Fetching pages (or sweeping cities).
    Running,
    /// Its async job is submitted and waits in the API's queue.
    Queued,
    /// Its async job is being worked on by the API.
    Processing,
    /// Done: every page is stored (and referenced).
    Stored,
    /// Ended without all of its data; the pages stored so far stay referenced.
    Failed,
    /// Stopped at `max_pages` with more to fetch: what was fetched is stored.
    Truncated,
}

impl RunStatus {
    /// The lower-case name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Queued => "queued",
            RunStatus::Processing => "processing",
            RunStatus::Stored => "stored",
            RunStatus::Failed => "failed",
            RunStatus::Truncated => "truncated",
        }
    }

    /// Whether the run is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Stored | RunStatus::Failed | RunStatus::Truncated
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state of an async report job, and when the worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStep {
    pub state: JobState,
    pub at_ms: i64,
}

/// The states of an async report job: `queued → processing → success | failed → downloaded`,
/// and `resubmitted` when the first submission passed its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Processing,
    Success,
    Failed,
    Downloaded,
    Resubmitted,
}

impl JobState {
    /// The lower-case name shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Processing => "processing",
            JobState::Success => "success",
            JobState::Failed => "failed",
            JobState::Downloaded => "downloaded",
            JobState::Resubmitted => "resubmitted",
        }
    }
}

/// The class of a failed run (DESIGN.md "Failures").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureClass {
    /// The fetch did not finish within the stream's timeout.
    Timeout,
    /// Connection refused, reset, DNS, TLS: the request never got an answer.
    Network,
    /// A non-success HTTP status without a recognisable API error body.
    Http,
    /// The body was not the JSON the adapter expects.
    InvalidBody,
    /// The API answered with an error message that is not one of the classes below.
    Api,
    /// A rate limit (`call_*_limit_reached`, `too_many_requests`, HTTP 429).
    RateLimited,
    /// The key is wrong, expired or lacks permission: the stream stops and waits for a person.
    Auth,
    /// The object store refused or could not be reached.
    Storage,
}

impl FailureClass {
    /// The lower-case name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Timeout => "timeout",
            FailureClass::Network => "network",
            FailureClass::Http => "http",
            FailureClass::InvalidBody => "invalid_body",
            FailureClass::Api => "api",
            FailureClass::RateLimited => "rate_limited",
            FailureClass::Auth => "auth",
            FailureClass::Storage => "storage",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_secret_key() {
        let cfg = StreamConfig {
            stream_id: Uuid::nil(),
            generation: 1,
            adapter: "IQAIR_DAILY".into(),
            endpoint: "http://x".into(),
            secret_key: "super-secret-value".into(),
            schedule: Schedule::Interval { millis: 1000 },
            timeout_ms: 1000,
            bucket_name: "results".into(),
            params: BTreeMap::new(),
            rate_limit: RateLimit::COMMUNITY,
            source: String::new(),
            window_start_ms: None,
        };
        let printed = format!("{:?} {:?}", cfg, Call::Start(cfg.clone()));
        assert!(!printed.contains("super-secret-value"), "{printed}");
        assert!(printed.contains("***"));
    }

    #[test]
    fn the_strictest_limit_wins_per_window_and_zero_is_no_limit() {
        let a = RateLimit {
            per_minute: 5,
            per_day: 0,
            per_month: 10_000,
        };
        let b = RateLimit {
            per_minute: 10,
            per_day: 100,
            per_month: 0,
        };
        assert_eq!(
            a.strictest(b),
            RateLimit {
                per_minute: 5,
                per_day: 100,
                per_month: 10_000
            }
        );
        assert_eq!(
            RateLimit::UNLIMITED.strictest(RateLimit::UNLIMITED),
            RateLimit::UNLIMITED
        );
    }
}
