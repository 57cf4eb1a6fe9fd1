//! The worker's settings: every one a flag with an environment fallback and a default.

use std::time::Duration;

use clap::Parser;
use common::SecretKey;

/// Settings of the `worker` binary; the token is a [`SecretKey`] (`***` in `Debug`).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "worker",
    version,
    about = "data-streams worker: runs streams on schedule"
)]
pub struct Settings {
    /// The supervisor's worker port to dial, or several separated by commas (supervisor
    /// replicas): tried in turn; a follower sends the worker on to the leader.
    #[arg(
        long,
        env = "DATA_STREAMS_WORKER_ADDR",
        default_value = "127.0.0.1:7070"
    )]
    pub supervisor_addr: String,
    /// Shared secret of the worker link (never sent: it signs a challenge).
    #[arg(long, env = "DATA_STREAMS_WORKER_TOKEN", hide_env_values = true)]
    pub token: Option<SecretKey>,
    /// PEM file of the CA (or certificate) to trust; when set, the worker dials TLS.
    #[arg(long, env = "WORKER_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Name the supervisor's certificate must carry; defaults to the host part of the address.
    #[arg(long, env = "WORKER_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    #[command(flatten)]
    pub store: objects::StoreSettings,
    /// Stable identity across restarts; defaults to the host name.
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,
    /// Most streams this worker runs.
    #[arg(long, env = "WORKER_CAPACITY", default_value_t = 10_000)]
    pub capacity: u32,
    /// Most unacknowledged events kept while the supervisor is away.
    #[arg(long, env = "WORKER_OUTBOX_LIMIT", default_value_t = 100_000)]
    pub outbox_limit: usize,
    /// Longest wait between reconnect attempts, in ms.
    #[arg(long, env = "WORKER_RECONNECT_MAX_MS", default_value_t = 5_000)]
    pub reconnect_max_ms: u64,
    /// Largest frame accepted on the link, in bytes.
    #[arg(long, env = "WORKER_MAX_FRAME_BYTES", default_value_t = protocol::codec::DEFAULT_MAX_FRAME)]
    pub max_frame_bytes: usize,
    /// How long shutdown waits for runs in flight, in ms.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE_MS", default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,
    /// Connect timeout for external API calls, in ms.
    #[arg(long, env = "WORKER_HTTP_CONNECT_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_connect_timeout_ms: u64,
    /// Interval streams start after a stable per-stream offset below min(interval, this), in
    /// ms, so streams handed over together (a restart, a failover) do not call the API together.
    /// 0 starts every stream at once.
    #[arg(long, env = "WORKER_START_SPREAD_MS", default_value_t = 10_000)]
    pub start_spread_ms: u64,
    /// Most object-store puts in flight at once; runs beyond it wait for their turn (their put's
    /// time starts then), so an overloaded store slows runs down instead of failing them.
    #[arg(long, env = "WORKER_STORE_CONCURRENCY", default_value_t = crate::runner::DEFAULT_STORE_CONCURRENCY)]
    pub store_concurrency: usize,
    /// Most events sent to the supervisor and not yet acknowledged. Replies to its calls share
    /// the connection, so what is in flight is what a reply may wait behind.
    #[arg(long, env = "WORKER_SEND_WINDOW", default_value_t = crate::link::DEFAULT_SEND_WINDOW)]
    pub send_window: usize,
}

impl Settings {
    /// The token to use, and whether it is the development fallback.
    pub fn token(&self) -> (SecretKey, bool) {
        protocol::handshake::token_or_dev(self.token.as_ref())
    }

    /// The worker id to use.
    pub fn worker_id(&self) -> String {
        self.worker_id
            .clone()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(host_name)
    }

    /// The CA file to trust, when the link is TLS (an empty value is unset).
    pub fn tls_ca(&self) -> Option<&std::path::Path> {
        self.tls_ca.as_deref().filter(|p| !p.as_os_str().is_empty())
    }

    /// The name every supervisor's certificate must carry, when set; otherwise each address's
    /// own host.
    pub fn explicit_tls_server_name(&self) -> Option<&str> {
        self.tls_server_name.as_deref().filter(|n| !n.is_empty())
    }

    /// The name the supervisor's certificate must carry, as shown at start-up.
    pub fn tls_server_name(&self) -> String {
        match self.explicit_tls_server_name() {
            Some(name) => name.to_owned(),
            None => crate::link::addresses(&self.supervisor_addr)
                .iter()
                .map(|addr| protocol::tls::host_of(addr))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// Shutdown grace as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// One line per setting, secrets redacted, for the start-up log.
    pub fn describe(&self) -> String {
        let (_, dev) = self.token();
        format!(
            "supervisor_addr={} tls={} token={} object_store_url={} create_buckets={} worker_id={} \
             capacity={} outbox_limit={} reconnect_max_ms={} max_frame_bytes={} \
             shutdown_grace_ms={} http_connect_timeout_ms={} start_spread_ms={} \
             store_concurrency={}",
            self.supervisor_addr,
            match self.tls_ca() {
                Some(ca) => format!(
                    "on(ca={}, server_name={})",
                    ca.display(),
                    self.tls_server_name()
                ),
                None => "off".to_owned(),
            },
            if dev { "<dev token>" } else { "***" },
            self.store.object_store_url,
            self.store.create_buckets,
            self.worker_id(),
            self.capacity,
            self.outbox_limit,
            self.reconnect_max_ms,
            self.max_frame_bytes,
            self.shutdown_grace_ms,
            self.http_connect_timeout_ms,
            self.start_spread_ms,
            self.store_concurrency,
        )
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_describe_never_print_the_token() {
        let s = Settings::parse_from(["worker", "--token=worker-canary-123"]);
        for text in [format!("{s:?}"), s.describe()] {
            assert!(!text.contains("worker-canary-123"), "token leaked: {text}");
        }
    }
}
