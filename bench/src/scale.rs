//! scale: 10,000 / 100,000 / 1,000,000 scheduled streams in one real `worker` process.
//!
//! The bench plays the supervisor's side of the link (our protocol crate: real handshake, calls,
//! acknowledged events), so the worker is measured alone: no database between the two. Per size:
//!
//! - `start_all_s`: time for the worker to accept all `worker:start` calls, sent 256 in flight
//!   as the supervisor's `call_many` does;
//! - `rss_mb`, `rss_per_stream_bytes`: the worker's resident memory once they all run, and its
//!   growth per stream over the connected-but-empty worker;
//! - `lag_p50_ms`, `lag_p99_ms`, `lag_max_ms`: schedule lag (a run's start minus its tick, as
//!   each result reports them) of every run that started in a window after the starts;
//! - `restart_to_all_running_s`: SIGKILL the worker, start a new process, and time from its
//!   spawn until it has accepted every stream again (connect, handshake, all start calls).
//!
//! Streams use a long interval (30 min) with first ticks spread over it
//! (`WORKER_START_SPREAD_MS`), so a million streams make ~560 real fetches per second against
//! iqair-sim, each stored in a folder and reported: the lag is measured under that load.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::StreamExt;
use protocol::connection::Connection;
use protocol::link::{self, Incoming, LinkConfig, LinkHandle};
use protocol::{Call, Event, RateLimit, Schedule, StreamConfig, Welcome};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::procs::{free_addr, Context, Proc};
use crate::report::{figure, note, pct, ratio};

const TOKEN: &str = "bench-scale-worker-token";
const SIM_KEY: &str = "bench-key";
const INTERVAL_MS: u64 = 30 * 60 * 1000;
/// Calls in flight, as the supervisor's `call_many`.
const CONCURRENCY: usize = 256;

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    // One thread for the bench: the worker under test gets the other core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_all(ctx))
}

struct Figures {
    n: usize,
    rss_bytes: u64,
    lag_p99_ms: f64,
    restart_s: f64,
}

async fn run_all(ctx: &Context) -> anyhow::Result<()> {
    let logs = ctx.dir("scale")?;
    let sim_addr = free_addr()?;
    let (_sim, _) = Proc::start(
        "iqair-sim",
        &ctx.bin("iqair-sim")?,
        &[],
        &[
            ("IQAIR_SIM_ADDR", sim_addr.to_string()),
            ("IQAIR_SIM_KEYS", SIM_KEY.to_owned()),
            ("IQAIR_SIM_LIMITS", "off".to_owned()),
        ],
        "listening",
        &logs,
    )?;
    let endpoint = format!("http://{sim_addr}/v2/nearest_city");
    let sizes: &[usize] = if ctx.quick {
        &[1_000, 10_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    let window = Duration::from_secs(if ctx.quick { 5 } else { 30 });
    let mut all = Vec::new();
    for &n in sizes {
        all.push(one_size(ctx, n, &endpoint, window, &logs).await?);
    }
    let largest = all.last().expect("at least one size");
    ratio(
        &format!("worker_rss_gib_at_{}_streams", largest.n),
        largest.rss_bytes as f64 / (1u64 << 30) as f64,
        1.0,
        false,
    );
    ratio(
        &format!("schedule_lag_p99_ms_at_{}_streams", largest.n),
        largest.lag_p99_ms,
        50.0,
        false,
    );
    if let Some(ten_k) = all.iter().find(|f| f.n == 10_000) {
        ratio(
            "restart_to_all_running_s_at_10000_streams",
            ten_k.restart_s,
            1.0,
            false,
        );
    }
    Ok(())
}

/// The config of stream `i` of this run: stable, so a restart hands out the same streams. Places
/// vary over a grid so the simulator's readings differ.
fn config(i: usize, endpoint: &str) -> StreamConfig {
    let mixed = splitmix64(i as u64);
    let lat = -60.0 + (i % 120) as f64;
    let lon = -180.0 + ((i / 120) % 360) as f64;
    StreamConfig {
        stream_id: Uuid::from_u64_pair(0x0bad_5ca1e << 16 | (i as u64 >> 48), mixed),
        generation: 1,
        adapter: "IQAIR_DAILY".to_owned(),
        endpoint: endpoint.to_owned(),
        secret_key: SIM_KEY.into(),
        schedule: Schedule::Interval {
            millis: INTERVAL_MS,
        },
        timeout_ms: 10_000,
        bucket_name: "results".to_owned(),
        params: [
            ("lat".to_owned(), format!("{lat:.2}")),
            ("lon".to_owned(), format!("{lon:.2}")),
        ]
        .into_iter()
        .collect(),
        rate_limit: RateLimit::UNLIMITED,
        source: String::new(),
        window_start_ms: None,
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What the event consumer saw.
struct Seen {
    /// Only runs that started at or after this (ms since the epoch) count towards the lag.
    from_ms: AtomicI64,
    lag_ms: Mutex<hdrhistogram::Histogram<u64>>,
    results: AtomicU64,
    failures: AtomicU64,
}

impl Seen {
    fn new() -> Arc<Self> {
        Arc::new(Seen {
            from_ms: AtomicI64::new(i64::MAX),
            lag_ms: Mutex::new(hdrhistogram::Histogram::new(3).expect("valid sigfig")),
            results: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }
}

/// Accept the worker's connection, run the handshake, and consume (and acknowledge) its events.
async fn accept(listener: &TcpListener, seen: Arc<Seen>) -> anyhow::Result<LinkHandle> {
    let (socket, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
        .await
        .context("the worker did not connect within 30 s")??;
    socket.set_nodelay(true)?;
    let mut conn = Connection::new(socket, protocol::codec::DEFAULT_MAX_FRAME);
    let config = LinkConfig::default();
    let welcome = Welcome {
        heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
        heartbeat_timeout_ms: config.heartbeat_timeout.as_millis() as u64,
    };
    protocol::handshake::accept(
        &mut conn,
        TOKEN.as_bytes(),
        welcome,
        Duration::from_secs(10),
    )
    .await
    .context("handshake with the worker")?;
    let (link, mut incoming, _task) = link::spawn(conn, config);
    let acks = link.clone();
    tokio::spawn(async move {
        while let Some(first) = incoming.recv().await {
            // Acknowledge once per batch of what is already queued, as the supervisor does.
            let mut last = None;
            let mut next = Some(first);
            while let Some(msg) = next {
                if let Incoming::Event { seq, event } = msg {
                    last = Some(seq);
                    match event {
                        Event::Results(r) => {
                            seen.results.fetch_add(1, Ordering::Relaxed);
                            if r.started_at_ms >= seen.from_ms.load(Ordering::Relaxed) {
                                let lag = (r.started_at_ms - r.scheduled_at_ms).max(0) as u64;
                                let mut h = seen.lag_ms.lock().unwrap_or_else(|p| p.into_inner());
                                let _ = h.record(lag);
                            }
                        }
                        Event::RunFailed(_) => {
                            seen.failures.fetch_add(1, Ordering::Relaxed);
                        }
                        // IQAir runs are single fetches: no run reports.
                        Event::WorkerAvailable { .. } | Event::Run(_) => {}
                    }
                }
                next = incoming.try_recv().ok();
            }
            if let Some(seq) = last {
                if acks.ack(seq).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(link)
}

/// Start streams `0..n` on the worker behind `link`; the number of refusals.
async fn start_all(link: &LinkHandle, n: usize, endpoint: &str) -> anyhow::Result<()> {
    let mut replies = futures::stream::iter(0..n)
        .map(|i| {
            let link = link.clone();
            let cfg = config(i, endpoint);
            async move { link.call(Call::Start(cfg), Duration::from_secs(120)).await }
        })
        .buffer_unordered(CONCURRENCY);
    let mut refused = 0usize;
    let mut first_refusal = None;
    while let Some(reply) = replies.next().await {
        let reply = reply.context("a worker:start call failed")?;
        if !reply.success {
            refused += 1;
            first_refusal.get_or_insert(reply.message);
        }
    }
    if refused > 0 {
        bail!(
            "the worker refused {refused} of {n} starts, first: {}",
            first_refusal.unwrap_or_default()
        );
    }
    Ok(())
}

fn worker_env(
    addr: std::net::SocketAddr,
    objects: &std::path::Path,
    n: usize,
) -> Vec<(&'static str, String)> {
    vec![
        ("DATA_STREAMS_WORKER_ADDR", addr.to_string()),
        ("DATA_STREAMS_WORKER_TOKEN", TOKEN.to_owned()),
        ("OBJECT_STORE_URL", format!("file://{}", objects.display())),
        ("WORKER_ID", "bench-scale-worker".to_owned()),
        ("WORKER_CAPACITY", n.to_string()),
        ("WORKER_START_SPREAD_MS", INTERVAL_MS.to_string()),
        ("RUST_LOG", "warn".to_owned()),
    ]
}

async fn one_size(
    ctx: &Context,
    n: usize,
    endpoint: &str,
    window: Duration,
    logs: &std::path::Path,
) -> anyhow::Result<Figures> {
    let system = format!("worker_{n}_streams");
    note(format!("scale: {n} streams"));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let objects = ctx.dir(&format!("scale-objects-{n}"))?;
    let env = worker_env(addr, &objects, n);
    let worker_bin = ctx.bin("worker")?;

    let seen = Seen::new();
    let (mut worker, _) = Proc::start(&format!("worker-{n}"), &worker_bin, &[], &env, "", logs)?;
    let link = accept(&listener, seen.clone()).await?;
    let baseline = worker.rss_bytes()?;

    let t = Instant::now();
    start_all(&link, n, endpoint).await?;
    let start_all_s = t.elapsed().as_secs_f64();
    figure(&system, "start_all_s", start_all_s);
    figure(&system, "starts_per_s", n as f64 / start_all_s);

    // Lag counts from here: runs that started after every stream was handed over.
    seen.from_ms
        .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    tokio::time::sleep(window).await;
    let rss = worker.rss_bytes()?;
    figure(&system, "rss_mb", rss as f64 / (1u64 << 20) as f64);
    figure(
        &system,
        "rss_per_stream_bytes",
        rss.saturating_sub(baseline) as f64 / n as f64,
    );
    let (ticks, p50, p99, max) = {
        let h = seen.lag_ms.lock().unwrap_or_else(|p| p.into_inner());
        (h.len(), pct(&h, 50.0), pct(&h, 99.0), h.max() as f64)
    };
    figure(&system, "ticks_in_window", ticks as f64);
    figure(&system, "lag_p50_ms", p50);
    figure(&system, "lag_p99_ms", p99);
    figure(&system, "lag_max_ms", max);
    figure(
        &system,
        "run_failures",
        seen.failures.load(Ordering::Relaxed) as f64,
    );
    if ticks == 0 {
        note(format!(
            "scale: no run started within {window:?} at {n} streams; the lag figures are empty"
        ));
    }

    // Restart: kill the worker, start a new one, hand it every stream again.
    link.close().await;
    worker.kill();
    let seen_again = Seen::new();
    let t = Instant::now();
    let (mut worker, _) = Proc::start(
        &format!("worker-{n}-restarted"),
        &worker_bin,
        &[],
        &env,
        "",
        logs,
    )?;
    let link = accept(&listener, seen_again).await?;
    start_all(&link, n, endpoint).await?;
    let restart_s = t.elapsed().as_secs_f64();
    figure(&system, "restart_to_all_running_s", restart_s);
    link.close().await;
    worker.stop(Duration::from_secs(5));
    // The objects of this size are not needed any more; a million streams leave many.
    let _ = std::fs::remove_dir_all(&objects);
    Ok(Figures {
        n,
        rss_bytes: rss,
        lag_p99_ms: p99,
        restart_s,
    })
}
