//! The live benchmark: does the live channel slow the pipeline down, and how soon after its
//! commit does a result reach a browser?
//!
//! One stack of real processes (`iqair-sim`, `data-streams` on SQLite + folder, one `worker`)
//! runs N streams (1,000; `--quick`: 200) at the shortest interval the API accepts. Over four
//! equal windows it counts the results committed per second: without clients; with N WebSocket
//! clients connected to `GET /live`, each subscribed to one stream (`live_clients`: N people
//! each on a stream page, N messages/s in all); with N clients each subscribed to every stream
//! (`live_clients_all`: N people on the streams list, N² messages/s in all); and without clients
//! again (the baseline is the mean of the first and last, so a drift of the machine does not
//! count against the clients). While clients are connected, each counts every `result` message
//! and samples (at most every 10 ms) now minus the message's `committed_at`: the
//! commit-to-client latency (the clock is the same machine's). The clients run in the bench's own process on the same two cores; its
//! CPU is shown as `cpu_pct_clients`.
//!
//! Figures per phase: `results_per_s`, `messages_per_s` (received by all clients together),
//! `latency_p50_ms`/`latency_p99_ms`/`latency_max_ms`, `lagged` (messages dropped and reported
//! to the clients), CPU per process; ratios: results with clients over the baseline (goal
//! ≥ 0.9), latency p99 (goal < 100 ms).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures::StreamExt;
use hdrhistogram::Histogram;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::SqlitePool;
use tokio_tungstenite::tungstenite::Message;

use crate::pipeline::{
    create_streams, start_sim, start_supervisor, wait_assigned, worker_env, BenchDb,
};
use crate::procs::{cpu_seconds, Context, Proc};
use crate::report::{figure, note, pct, ratio};

/// What the clients saw during the measured window.
struct Seen {
    latencies: Mutex<Histogram<u64>>,
    results: AtomicU64,
    lagged: AtomicU64,
    errors: AtomicU64,
}

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(live(ctx))
}

async fn live(ctx: &Context) -> anyhow::Result<()> {
    let (n, warmup, window) = if ctx.quick {
        (200, Duration::from_secs(3), Duration::from_secs(5))
    } else {
        (1_000, Duration::from_secs(10), Duration::from_secs(20))
    };
    let system = "live";
    let dir = ctx.dir(system)?;
    let mut procs: Vec<Proc> = Vec::new();
    let (sim, sim_addr) = start_sim(ctx, "iqair-sim", &dir)?;
    procs.push(sim);
    let store_env = vec![(
        "OBJECT_STORE_URL",
        format!("file://{}", dir.join("objects").display()),
    )];
    let database = format!("sqlite://{}", dir.join("ds.db").display());
    let (supervisor, http, worker_addr) = start_supervisor(ctx, &dir, &database, &store_env)?;
    procs.push(supervisor);
    let api = format!("http://{http}");
    let client = reqwest::Client::new();
    let ids = create_streams(&client, &api, &sim_addr, n).await?;
    let (worker, _) = Proc::start(
        "worker",
        &ctx.bin("worker")?,
        &[],
        &worker_env(&worker_addr, n, &store_env),
        "worker starting",
        &dir,
    )?;
    procs.push(worker);
    wait_assigned(&client, &api, n).await?;
    note(format!("{system}: {n} streams running; warming up"));
    let db = BenchDb::Sqlite(
        SqlitePool::connect_with(
            SqliteConnectOptions::new()
                .filename(dir.join("ds.db"))
                .read_only(true),
        )
        .await?,
    );
    tokio::time::sleep(warmup).await;

    // The bench's own process runs the clients; its CPU is shown beside the stack's.
    let mut pids: Vec<(String, u32)> = procs.iter().map(|p| (p.name.clone(), p.pid())).collect();
    pids.push(("clients".to_owned(), std::process::id()));

    let before = committed_per_s(&db, window).await?;
    // Each client one stream (N people, each on a stream page), then each client everything
    // (N people on the streams list, which follows every stream).
    let per_stream: Vec<String> = ids
        .iter()
        .map(|id| format!("ws://{http}/live?stream={id}"))
        .collect();
    let one = with_clients("live_clients", &per_stream, &db, window, &pids).await?;
    let everything = vec![format!("ws://{http}/live"); n];
    let all = with_clients("live_clients_all", &everything, &db, window, &pids).await?;
    // A backlog the clients caused drains first, so that it does not raise the baseline.
    tokio::time::sleep(warmup).await;
    let after_clients = committed_per_s(&db, window).await?;
    db.close().await;

    let baseline = (before + after_clients) / 2.0;
    figure("live_baseline", "streams", n as f64);
    figure("live_baseline", "results_per_s_before", before);
    figure("live_baseline", "results_per_s_after", after_clients);
    figure("live_baseline", "results_per_s", baseline);
    for (system, phase) in [("live_clients", &one), ("live_clients_all", &all)] {
        ratio(
            &format!("results_per_s {system}/live_baseline"),
            phase.results_per_s / baseline,
            0.9,
            true,
        );
        ratio(
            &format!("latency_p99_ms {system}"),
            phase.latency_p99_ms,
            100.0,
            false,
        );
    }
    while let Some(mut proc) = procs.pop() {
        proc.kill();
    }
    Ok(())
}

/// What one window with clients measured.
struct Phase {
    results_per_s: f64,
    latency_p99_ms: f64,
}

/// Connect one client per URL, let them settle, count the commits over `window` while each
/// client records its latencies, disconnect them; prints the figures of `system`.
async fn with_clients(
    system: &str,
    urls: &[String],
    db: &BenchDb,
    window: Duration,
    pids: &[(String, u32)],
) -> anyhow::Result<Phase> {
    note(format!(
        "{system}: connecting {} WebSocket clients",
        urls.len()
    ));
    let seen = Arc::new(Seen {
        latencies: Mutex::new(Histogram::new(3)?),
        results: AtomicU64::new(0),
        lagged: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::with_capacity(urls.len());
    for url in urls {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        clients.push(tokio::spawn(listen(
            socket,
            seen.clone(),
            measuring.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before: Vec<f64> = pids
        .iter()
        .map(|(_, pid)| cpu_seconds(*pid))
        .collect::<anyhow::Result<_>>()?;
    measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let results_per_s = committed_per_s(db, window).await?;
    measuring.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after: Vec<f64> = pids
        .iter()
        .map(|(_, pid)| cpu_seconds(*pid))
        .collect::<anyhow::Result<_>>()?;
    // Each client adds what it saw at its next message (per-stream clients get one a second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for client in &clients {
        client.abort();
    }

    let errors = seen.errors.load(Ordering::Relaxed);
    if errors > 0 {
        bail!("{system}: {errors} WebSocket clients failed");
    }
    let latency = seen
        .latencies
        .lock()
        .map_err(|_| anyhow!("a client panicked"))?
        .clone();
    figure(system, "clients", urls.len() as f64);
    figure(system, "results_per_s", results_per_s);
    figure(
        system,
        "messages_per_s",
        seen.results.load(Ordering::Relaxed) as f64 / elapsed,
    );
    figure(system, "latency_p50_ms", pct(&latency, 50.0));
    figure(system, "latency_p99_ms", pct(&latency, 99.0));
    figure(system, "latency_max_ms", latency.max() as f64);
    figure(system, "lagged", seen.lagged.load(Ordering::Relaxed) as f64);
    for (i, (name, _)) in pids.iter().enumerate() {
        figure(
            system,
            &format!("cpu_pct_{name}"),
            (cpu_after[i] - cpu_before[i]) / elapsed * 100.0,
        );
    }
    Ok(Phase {
        results_per_s,
        latency_p99_ms: pct(&latency, 99.0),
    })
}

/// Results committed per second over `window`, counted in the database.
async fn committed_per_s(db: &BenchDb, window: Duration) -> anyhow::Result<f64> {
    let (count, start) = (db.count_results().await?, Instant::now());
    tokio::time::sleep(window).await;
    let done = db.count_results().await? - count;
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// A `lagged` notice.
#[derive(serde::Deserialize)]
struct Lagged {
    dropped: u64,
}

/// Where a result message's commit time starts (the field is its last).
const COMMITTED_AT: &str = r#""committed_at":""#;

/// A client samples the latency at most this often.
const SAMPLE_MS: i64 = 10;

/// One client: read every message; while `measuring`, record each result's commit-to-here
/// latency in a histogram of its own, added to the shared one when the measuring ends (a lock
/// per message would cost more than the reading, at N² messages/s).
async fn listen(
    mut socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    seen: Arc<Seen>,
    measuring: Arc<std::sync::atomic::AtomicBool>,
) {
    let Ok(mut mine) = Histogram::<u64>::new(3) else {
        seen.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let (mut results, mut lagged, mut last_sample) = (0u64, 0u64, 0i64);
    while let Some(message) = socket.next().await {
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) => return,
            Ok(_) => continue,
            Err(_) => {
                seen.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let now = chrono::Utc::now().timestamp_millis();
        if !measuring.load(Ordering::Relaxed) {
            if results > 0 || lagged > 0 {
                if let Ok(mut all) = seen.latencies.lock() {
                    let _ = all.add(&mine);
                }
                seen.results.fetch_add(results, Ordering::Relaxed);
                seen.lagged.fetch_add(lagged, Ordering::Relaxed);
                mine.reset();
                (results, lagged) = (0, 0);
            }
            continue;
        }
        // The harness shares the machine's two cores with the stack, so a client reads as
        // little as it can: every result is counted from the message's head, its latency is
        // sampled at most once per SAMPLE_MS per client (every one at one message a second,
        // about 1 in 10 at a thousand), and only a `lagged` notice is parsed whole.
        if text.starts_with(r#"{"type":"result""#) {
            results += 1;
            if now - last_sample >= SAMPLE_MS {
                last_sample = now;
                let committed = text
                    .rfind(COMMITTED_AT)
                    .and_then(|i| text[i + COMMITTED_AT.len()..].split('"').next())
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp_millis());
                match committed {
                    Some(at) => {
                        let _ = mine.record((now - at).max(0) as u64);
                    }
                    None => {
                        seen.errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        } else if text.starts_with(r#"{"type":"lagged""#) {
            match serde_json::from_str::<Lagged>(&text) {
                Ok(notice) => lagged += notice.dropped,
                Err(_) => {
                    seen.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}
