//! `iqair-sim`: the local IQAir AirVisual v2 simulator (see the `iqair_sim` library for
//! endpoints, faults and the admin API).

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use iqair_sim::{Fault, FaultRule, Limits, SimConfig};
use tracing_subscriber::EnvFilter;

/// A local stand-in for the IQAir AirVisual v2 API (Community plan).
#[derive(Debug, Parser)]
#[command(name = "iqair-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "IQAIR_SIM_ADDR", default_value = "127.0.0.1:8090")]
    addr: String,
    /// Accepted API keys, comma separated.
    #[arg(
        long,
        env = "IQAIR_SIM_KEYS",
        default_value = "demo",
        value_delimiter = ',',
        hide_env_values = true
    )]
    keys: Vec<String>,
    /// Calls per key per second before `too_many_requests` (0 = off).
    #[arg(long, env = "IQAIR_SIM_PER_SECOND", default_value_t = 10)]
    per_second: u32,
    /// Calls per key per minute before `call_per_minute_limit_reached` (0 = off).
    #[arg(long, env = "IQAIR_SIM_PER_MINUTE", default_value_t = 5)]
    per_minute: u32,
    /// Calls per key per UTC day before `call_per_day_limit_reached` (0 = off).
    #[arg(long, env = "IQAIR_SIM_PER_DAY", default_value_t = 500)]
    per_day: u32,
    /// Calls per key per UTC month before `call_per_month_limit_reached` (0 = off).
    #[arg(long, env = "IQAIR_SIM_PER_MONTH", default_value_t = 10_000)]
    per_month: u32,
    /// `off` switches every rate limit off.
    #[arg(long, env = "IQAIR_SIM_LIMITS", value_enum, default_value_t = Switch::On)]
    limits: Switch,
    /// Faults on from the start, comma separated: `FAULT` for every key or `KEY=FAULT`.
    #[arg(long = "fault", env = "IQAIR_SIM_FAULTS", value_delimiter = ',')]
    faults: Vec<String>,
    /// How long a `slow_body` answer takes, in milliseconds.
    #[arg(long, env = "IQAIR_SIM_SLOW_BODY_MS", default_value_t = 3000)]
    slow_body_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

impl Args {
    fn config(&self) -> anyhow::Result<SimConfig> {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        anyhow::ensure!(!keys.is_empty(), "IQAIR_SIM_KEYS names no key");
        let limits = match self.limits {
            Switch::Off => Limits::off(),
            Switch::On => Limits {
                per_second: self.per_second,
                per_minute: self.per_minute,
                per_day: self.per_day,
                per_month: self.per_month,
                ..Limits::community()
            },
        };
        let mut faults = Vec::new();
        for spec in self
            .faults
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            let (key, name) = match spec.split_once('=') {
                Some((key, name)) => (Some(key.trim().to_string()), name.trim()),
                None => (None, spec),
            };
            let fault: Fault = name.parse()?;
            if let Some(key) = &key {
                anyhow::ensure!(
                    keys.contains(key),
                    "fault {fault} targets a key that is not in IQAIR_SIM_KEYS"
                );
            }
            faults.push(FaultRule {
                key,
                ..FaultRule::always(fault)
            });
        }
        Ok(SimConfig {
            keys,
            limits,
            faults,
            slow_body: Duration::from_millis(self.slow_body_ms),
        })
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
    println!("iqair-sim {}", config.describe());

    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "not on loopback: the admin API (/admin/*) has no authentication");
    }
    // Scripts wait for this exact line.
    println!("iqair-sim listening on http://{addr}");
    iqair_sim::serve(listener, config, async {
        common::shutdown_signal().await;
        tracing::info!("shutting down");
    })
    .await
    .context("serving")?;
    tracing::info!("iqair-sim stopped");
    Ok(())
}
