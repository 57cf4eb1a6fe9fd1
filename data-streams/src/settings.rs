//! The supervisor's settings: every one a flag with an environment fallback and a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use common::SecretKey;

/// Settings of the `data-streams` binary. Secrets are [`SecretKey`]s (`***` in `Debug`); the
/// database URL, which may hold a password, too; [`Settings::describe`] is the start-up line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "data-streams",
    version,
    about = "data-streams supervisor: streams, HTTP API, worker link"
)]
pub struct Settings {
    /// A one-shot command instead of serving (none: run the supervisor).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address of the HTTP API.
    #[arg(long, env = "DATA_STREAMS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// Address workers dial.
    #[arg(
        long,
        env = "DATA_STREAMS_WORKER_ADDR",
        default_value = "127.0.0.1:7070"
    )]
    pub worker_addr: String,
    /// Shared secret of the worker link.
    #[arg(long, env = "DATA_STREAMS_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<SecretKey>,
    /// PEM certificate chain (leaf first) of the worker port; with `WORKER_TLS_KEY`, the port
    /// accepts TLS only.
    #[arg(long, env = "WORKER_TLS_CERT")]
    pub worker_tls_cert: Option<PathBuf>,
    /// PEM private key of `WORKER_TLS_CERT`.
    #[arg(long, env = "WORKER_TLS_KEY")]
    pub worker_tls_key: Option<PathBuf>,
    /// Bearer token for the HTTP API; unset leaves the API open (with a warning).
    #[arg(long, env = "DATA_STREAMS_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<SecretKey>,
    /// `sqlite://path` (created if missing) or `postgres://...`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/data-streams.db"
    )]
    pub database_url: SecretKey,
    /// How long to keep trying to reach the database at start before exiting non-zero, in s.
    #[arg(long, env = "DATABASE_CONNECT_RETRY_SECS", default_value_t = 30)]
    pub database_connect_retry_secs: u64,
    #[command(flatten)]
    pub store: objects::StoreSettings,
    /// Heartbeat period on the worker link, in ms.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 2_000)]
    pub heartbeat_interval_ms: u64,
    /// A worker silent this long is gone and loses its streams, in ms.
    #[arg(long, env = "HEARTBEAT_TIMEOUT_MS", default_value_t = 10_000)]
    pub heartbeat_timeout_ms: u64,
    /// How long a `worker:start`/`worker:stop` call waits for its reply, in ms.
    #[arg(long, env = "CALL_TIMEOUT_MS", default_value_t = 10_000)]
    pub call_timeout_ms: u64,
    /// A new worker connection must finish the handshake within this, in ms.
    #[arg(long, env = "HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Most worker connections at once (handshakes included).
    #[arg(long, env = "MAX_WORKER_CONNECTIONS", default_value_t = 1024)]
    pub max_worker_connections: usize,
    /// Largest frame accepted on the worker link, in bytes.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = protocol::codec::DEFAULT_MAX_FRAME)]
    pub max_frame_bytes: usize,
    /// Largest HTTP request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Largest body of a bulk request (`POST /streams` with an array or NDJSON,
    /// `POST /streams/start|stop`), in bytes.
    #[arg(long, env = "BULK_MAX_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub bulk_max_bytes: usize,
    /// Most streams (or ids) one bulk request may name.
    #[arg(long, env = "BULK_MAX_STREAMS", default_value_t = 100_000)]
    pub bulk_max_streams: usize,
    /// How long a bulk request may take before it is abandoned (408, rolled back), in ms.
    /// Other requests have 30 s.
    #[arg(long, env = "BULK_TIMEOUT_MS", default_value_t = 600_000)]
    pub bulk_timeout_ms: u64,
    /// Push ingestion: the longest line (record) accepted, in bytes.
    #[arg(long, env = "INGEST_MAX_LINE_BYTES", default_value_t = 1024 * 1024)]
    pub ingest_max_line_bytes: usize,
    /// Push ingestion: the largest JSON (not NDJSON) body, in bytes; it is parsed whole.
    #[arg(long, env = "INGEST_MAX_JSON_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub ingest_max_json_bytes: usize,
    /// Push ingestion: bytes the requests of one stream may hold in memory at once.
    #[arg(long, env = "INGEST_STREAM_INFLIGHT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub ingest_stream_inflight_bytes: usize,
    /// Push ingestion: bytes all requests may hold in memory at once.
    #[arg(long, env = "INGEST_TOTAL_INFLIGHT_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub ingest_total_inflight_bytes: usize,
    /// Serve `POST /ingest/void`, which reads a body and discards it: the ceiling of
    /// `scripts/bench.sh ingest`. Never needed in production.
    #[arg(long, env = "INGEST_BENCH_VOID_ROUTE", default_value_t = false)]
    pub ingest_bench_void_route: bool,
    /// Push ingestion: how old (ms) an object stored for a push whose reference never
    /// committed must be before the reconciler deletes it.
    #[arg(long, env = "PUSH_ORPHAN_AGE_MS", default_value_t = 15 * 60 * 1000)]
    pub push_orphan_age_ms: u64,
    /// How often running streams without a worker are assigned, in ms.
    #[arg(long, env = "ASSIGN_INTERVAL_MS", default_value_t = 5_000)]
    pub assign_interval_ms: u64,
    /// How often the reconciler indexes stored objects that were never reported, in ms.
    #[arg(long, env = "RECONCILE_INTERVAL_MS", default_value_t = 60_000)]
    pub reconcile_interval_ms: u64,
    /// How many days of `dt=` partitions (UTC, today included) the reconciler lists.
    #[arg(long, env = "RECONCILE_DAYS", default_value_t = 2)]
    pub reconcile_days: u32,
    /// How long the reconciler's periodic passes take to list every stream once, in ms: each
    /// pass lists the streams of workers that restarted or went away, and its share of the
    /// rest. 0: every pass lists every stream.
    #[arg(long, env = "RECONCILE_ROTATION_MS", default_value_t = 3_600_000)]
    pub reconcile_rotation_ms: u64,
    /// Most raw objects a re-parse job reads per second (0: no limit), so the event path keeps
    /// its pace.
    #[arg(long, env = "REPARSE_OBJECTS_PER_SECOND", default_value_t = 50)]
    pub reparse_objects_per_second: u32,
    /// How often the warehouse tables' compactor writes the stale closed days, in ms (0: never;
    /// `POST /tables/compact` still works).
    #[arg(long, env = "TABLES_INTERVAL_MS", default_value_t = 600_000)]
    pub tables_interval_ms: u64,
    /// How many closed days (UTC, before today) the compactor keeps up to date.
    #[arg(long, env = "TABLES_DAYS", default_value_t = 3)]
    pub tables_days: u32,
    /// The HTTP address the other supervisors and `GET /cluster` show for this one (default:
    /// the address the API is bound to; set it when that is `0.0.0.0` or behind NAT).
    #[arg(long, env = "DATA_STREAMS_ADVERTISE_HTTP_ADDR")]
    pub advertise_http_addr: Option<String>,
    /// The worker address shown for this supervisor (default: where the worker port is bound).
    #[arg(long, env = "DATA_STREAMS_ADVERTISE_WORKER_ADDR")]
    pub advertise_worker_addr: Option<String>,
    /// PostgreSQL, several supervisors: how often the leader renews its lease (and every
    /// supervisor heartbeats and, without the lease, looks whether it is free), in ms.
    #[arg(long, env = "LEADER_RENEW_MS", default_value_t = 5_000)]
    pub leader_renew_ms: u64,
    /// How long the leader lease lasts after a renewal, by the database's clock, in ms: a
    /// leader that stops renewing is replaced after this.
    #[arg(long, env = "LEADER_TTL_MS", default_value_t = 15_000)]
    pub leader_ttl_ms: u64,
    /// How long before its lease would expire the leader stops trusting it, counted from the
    /// start of the last renewal that worked, in ms (covers clock drift against the database).
    /// `LEADER_RENEW_MS + LEADER_TRUST_MARGIN_MS` must stay below `LEADER_TTL_MS`.
    #[arg(long, env = "LEADER_TRUST_MARGIN_MS", default_value_t = 2_000)]
    pub leader_trust_margin_ms: u64,
    /// Connect and statement timeout of the leader elector's own two connections, in ms.
    #[arg(long, env = "LEADER_DB_TIMEOUT_MS", default_value_t = 5_000)]
    pub leader_db_timeout_ms: u64,
}

/// One-shot commands of the `data-streams` binary, on the same database and object store
/// settings as the supervisor.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Move raw objects of the first key layout (`<adapter>/<stream_id>/dt=…`) to the
    /// warehouse layout (`<adapter>/stream_id=<stream_id>/dt=…`) and point their references at
    /// the new keys. Idempotent and resumable: run it again after a kill or a failure; safe
    /// beside a running supervisor. Prints what it did as JSON (the last line of
    /// stdout); exits 1 when an object could not be moved.
    MigrateLayout {
        /// Most objects moved per second (0: no limit), so a migration beside a running
        /// pipeline leaves the store its pace.
        #[arg(long, env = "MIGRATE_LAYOUT_OBJECTS_PER_SECOND", default_value_t = 0)]
        objects_per_second: u32,
    },
}

impl Settings {
    /// The worker token, and whether it is the development fallback.
    pub fn worker_token(&self) -> (SecretKey, bool) {
        protocol::handshake::token_or_dev(self.worker_token.as_ref())
    }

    /// The API token, if one is configured.
    pub fn api_token(&self) -> Option<SecretKey> {
        self.api_token.clone().filter(|t| !t.is_empty())
    }

    /// The database URL, its password removed: what logs and errors may show.
    pub fn database_target(&self) -> String {
        crate::db::redact_url(self.database_url.expose())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(10))
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms.max(30))
    }

    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms.max(1))
    }

    /// The worker port's certificate and key files: both or neither (an empty value is unset).
    pub fn worker_tls(&self) -> Result<Option<(&Path, &Path)>, &'static str> {
        fn set(path: &Option<PathBuf>) -> Option<&Path> {
            path.as_deref().filter(|p| !p.as_os_str().is_empty())
        }
        match (set(&self.worker_tls_cert), set(&self.worker_tls_key)) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) => Ok(None),
            (Some(_), None) => Err("WORKER_TLS_KEY"),
            (None, Some(_)) => Err("WORKER_TLS_CERT"),
        }
    }

    /// How the leader lease is kept, if the three numbers leave room to renew in time.
    pub fn lease_timing(
        &self,
    ) -> Result<crate::cluster::LeaseTiming, crate::cluster::InvalidLeaseTiming> {
        crate::cluster::LeaseTiming::new(
            Duration::from_millis(self.leader_renew_ms),
            Duration::from_millis(self.leader_ttl_ms),
            Duration::from_millis(self.leader_trust_margin_ms),
        )
    }

    /// How the leader elector runs, on `timing` ([`Settings::lease_timing`]).
    pub fn elector(&self, timing: crate::cluster::LeaseTiming) -> crate::cluster::ElectorSettings {
        crate::cluster::ElectorSettings {
            db_timeout: Duration::from_millis(self.leader_db_timeout_ms.max(1)),
            ..crate::cluster::ElectorSettings::new(timing)
        }
    }

    /// The bounds of push ingestion.
    pub fn ingest_limits(&self) -> crate::ingest::IngestLimits {
        crate::ingest::IngestLimits {
            max_line_bytes: self.ingest_max_line_bytes.max(1),
            max_json_body_bytes: self.ingest_max_json_bytes.max(1),
            stream_bytes: self.ingest_stream_inflight_bytes.max(1024),
            total_bytes: self.ingest_total_inflight_bytes.max(1024),
            void_route: self.ingest_bench_void_route,
            ..crate::ingest::IngestLimits::default()
        }
    }

    /// One line of settings, secrets and database password redacted, for the start-up log.
    pub fn describe(&self) -> String {
        let (_, dev) = self.worker_token();
        format!(
            "http_addr={} worker_addr={} worker_tls={} worker_token={} api_token={} database_url={} \
             object_store_url={} create_buckets={} heartbeat_interval_ms={} heartbeat_timeout_ms={} \
             call_timeout_ms={} handshake_timeout_ms={} max_worker_connections={} max_frame_bytes={} max_body_bytes={} \
             bulk_max_bytes={} bulk_max_streams={} bulk_timeout_ms={} \
             assign_interval_ms={} reconcile_interval_ms={} reconcile_days={} reconcile_rotation_ms={} \
             reparse_objects_per_second={} ingest_max_line_bytes={} ingest_max_json_bytes={} \
             ingest_stream_inflight_bytes={} ingest_total_inflight_bytes={} \
             advertise_http_addr={} advertise_worker_addr={} leader_renew_ms={} leader_ttl_ms={} \
             leader_trust_margin_ms={} leader_db_timeout_ms={}",
            self.http_addr,
            self.worker_addr,
            match self.worker_tls() {
                Ok(Some((cert, _))) => format!("on(cert={})", cert.display()),
                Ok(None) => "off".to_owned(),
                Err(missing) => format!("<{missing} missing>"),
            },
            if dev { "<dev token>" } else { "***" },
            if self.api_token().is_some() { "***" } else { "<none: API open>" },
            self.database_target(),
            self.store.object_store_url,
            self.store.create_buckets,
            self.heartbeat_interval_ms,
            self.heartbeat_timeout_ms,
            self.call_timeout_ms,
            self.handshake_timeout_ms,
            self.max_worker_connections,
            self.max_frame_bytes,
            self.max_body_bytes,
            self.bulk_max_bytes,
            self.bulk_max_streams,
            self.bulk_timeout_ms,
            self.assign_interval_ms,
            self.reconcile_interval_ms,
            self.reconcile_days,
            self.reconcile_rotation_ms,
            self.reparse_objects_per_second,
            self.ingest_max_line_bytes,
            self.ingest_max_json_bytes,
            self.ingest_stream_inflight_bytes,
            self.ingest_total_inflight_bytes,
            self.advertise_http_addr.as_deref().unwrap_or("<bound>"),
            self.advertise_worker_addr.as_deref().unwrap_or("<bound>"),
            self.leader_renew_ms,
            self.leader_ttl_ms,
            self.leader_trust_margin_ms,
            self.leader_db_timeout_ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_describe_never_print_the_tokens() {
        let s = Settings::parse_from([
            "data-streams",
            "--worker-token=worker-canary-123",
            "--api-token=api-canary-456",
            "--database-url=postgres://u:db-canary-789@localhost/x",
        ]);
        for text in [format!("{s:?}"), s.describe()] {
            for canary in ["worker-canary-123", "api-canary-456", "db-canary-789"] {
                assert!(!text.contains(canary), "{canary} leaked: {text}");
            }
        }
    }
}
