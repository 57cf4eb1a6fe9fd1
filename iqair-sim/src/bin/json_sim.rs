//! `json-sim`: a generic paginated JSON API for tests, demos and benchmarks of the `HTTP_JSON`
//! adapter (see `iqair_sim::json` and docs/json-sim.md for routes, auth kinds, jobs,
//! rate limits, faults and the admin API).

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Parser;
use common::SecretKey;
use iqair_sim::json::{JsonSimConfig, RuntimeConfig};
use tracing_subscriber::EnvFilter;

/// A generic paginated JSON API: every pagination style behind every auth kind, report jobs,
/// rate limits and injected faults.
#[derive(Debug, Parser)]
#[command(name = "json-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "JSON_SIM_ADDR", default_value = "127.0.0.1:8091")]
    addr: String,
    /// The one credential of every auth kind (bearer token, X-Api-Key, api_key, Basic password
    /// for user `sim`, OAuth2 client secret for client `sim-client`).
    #[arg(
        long,
        env = "JSON_SIM_SECRET",
        default_value = "sim-secret",
        hide_env_values = true,
        hide_default_value = true
    )]
    secret: String,
    /// How many items the dataset holds.
    #[arg(long, env = "JSON_SIM_ITEMS", default_value_t = 1000)]
    items: u64,
    /// When item 0 was updated (RFC 3339, epoch seconds or milliseconds, or YYYY-MM-DD).
    #[arg(long, env = "JSON_SIM_EPOCH", default_value = "2026-01-01T00:00:00Z", value_parser = parse_epoch)]
    epoch: DateTime<Utc>,
    /// Milliseconds between two items' updated_at.
    #[arg(long, env = "JSON_SIM_ITEM_STEP_MS", default_value_t = 60_000)]
    item_step_ms: u64,
    /// How long every items page and job result page waits before answering.
    #[arg(long, env = "JSON_SIM_PAGE_DELAY_MS", default_value_t = 0)]
    page_delay_ms: u64,
    /// The lifetime of an OAuth2 access token, in seconds.
    #[arg(long, env = "JSON_SIM_TOKEN_TTL_S", default_value_t = 3600)]
    token_ttl_s: u64,
    /// A report job is queued for the first half of this, processing for the second half.
    #[arg(long, env = "JSON_SIM_JOB_DELAY_MS", default_value_t = 1000)]
    job_delay_ms: u64,
    /// Data requests per wall-clock minute, all credentials together (0 = no limit).
    #[arg(long, env = "JSON_SIM_RATE_PER_MINUTE", default_value_t = 0)]
    rate_per_minute: u64,
    /// How long a `slow_body` fault takes to finish an answer, in milliseconds.
    #[arg(long, env = "JSON_SIM_SLOW_BODY_MS", default_value_t = 3000)]
    slow_body_ms: u64,
}

fn parse_epoch(text: &str) -> Result<DateTime<Utc>, String> {
    iqair_sim::json::parse_instant(text)
}

impl Args {
    fn config(&self) -> anyhow::Result<JsonSimConfig> {
        let config = JsonSimConfig {
            secret: SecretKey::new(self.secret.trim()),
            items: self.items,
            epoch: self.epoch,
            item_step_ms: self.item_step_ms,
            runtime: RuntimeConfig {
                page_delay_ms: self.page_delay_ms,
                token_ttl_s: self.token_ttl_s,
                job_delay_ms: self.job_delay_ms,
                rate_per_minute: self.rate_per_minute,
            },
            slow_body: Duration::from_millis(self.slow_body_ms),
        };
        config.check()?;
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = args.config()?;
    println!("json-sim {}", config.describe());

    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "not on loopback: the admin API (/admin/*) has no authentication");
    }
    // Scripts wait for this exact line.
    println!("json-sim listening on http://{addr}");
    iqair_sim::json::serve(listener, config, async {
        common::shutdown_signal().await;
        tracing::info!("shutting down");
    })
    .await
    .context("serving")?;
    tracing::info!("json-sim stopped");
    Ok(())
}
