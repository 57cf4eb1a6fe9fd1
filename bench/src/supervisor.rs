//! supervisor: the supervisor at a million streams, end to end over real processes.
//!
//! Per database (SQLite, then PostgreSQL when `BENCH_POSTGRES_URL` is set; a fresh database per
//! run, the folder store in both, so the database is what differs), fresh real processes:
//! `iqair-sim` (1,000 keys, limits off), `data-streams` and 4 `worker`s (`bench-worker-0..3`,
//! room for 30% of the streams each, first ticks spread over the interval). Then:
//!
//! 1. `create_s`: N streams (default 1,000,000; `--quick` 100,000; `SUPERVISOR_BENCH_STREAMS`
//!    overrides) on a 30-minute interval, created running through the bulk API: NDJSON, 100,000
//!    a request, one request at a time, over 1,000 keys with no call budget (`rate_limit` all 0),
//!    so key affinity spreads them over the workers. A request refused with 408/5xx is sent
//!    again with the same `Idempotency-Key`, up to 5 attempts (`create_retries` counts them).
//! 2. `all_running_s`: from the last create answer until `GET /streams/count` says
//!    `running == N` (assigned to a connected worker); `workers_started_s`: until the workers'
//!    own logs say they have started N streams (what `running` promises). Each waits at most
//!    15 min; a timeout prints `..._timeout_s` and the count reached instead.
//! 3. `supervisor_rss_peak_mb` over the whole run (sampled every 200 ms) and
//!    `supervisor_rss_steady_mb` at the end of the steady window.
//! 4. Over a steady window (60 s; `--quick` 30 s): `results_per_s` committed (rows counted in
//!    the database before and after), `lag_p50_ms`/`lag_p99_ms` (`started_at - scheduled_at` of
//!    the rows stored in the window), `failures`, and each process's CPU.
//! 5. `reconciler_pass_s`: the supervisor runs with `RECONCILE_INTERVAL_MS=30000` (and the
//!    default rotation, an hour); `GET /reconciler` is polled all along, and each new pass's
//!    time is read from `GET /metrics` (`ds_reconciler_last_pass_seconds`), or, without it,
//!    taken as the gap between its end and the previous pass's end less the pause between
//!    passes. The figure is the last periodic pass that began after all N were running (its
//!    suspects and its share of the rotation: `reconciler_pass_streams` says how many it
//!    listed); the bench waits for one (at most `SUPERVISOR_BENCH_RECONCILE_WAIT_S`, default
//!    600 s) and prints `reconciler_wait_timeout_s` otherwise.
//! 6. `list_p50_ms`/`list_p99_ms`: 200 `GET /streams?limit=100`, a quarter each: the first page,
//!    a page after a cursor deep in the list, `status=running`, and `status=running` after a
//!    cursor.
//! 7. SIGKILL `bench-worker-0`, start a new process with the same id: `restart_worker_started_s`
//!    until its log says it has started all its streams again, `restart_api_worker_running_s`
//!    until `GET /streams/count?worker=bench-worker-0` shows them running, and
//!    `restart_api_all_running_s` until all N are (both API figures only count once the API has
//!    shown the loss, or the worker has started them all). Then the reconciler pass that
//!    lists the restarted worker's streams (its suspects: what the killed process stored but
//!    had not reported): `restart_reconciler_suspects`, `restart_reconciler_pass_s`, and
//!    `restart_reconciler_done_after_restart_s`.
//!
//! Goals (`ratio` lines): all running < 60 s after the last create; supervisor RSS < 1 GiB;
//! lag p99 < 100 ms; reconciler pass < 10 s; list p99 < 50 ms; a killed worker's streams running
//! again < 10 s.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use serde_json::Value;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{PgPool, SqlitePool};

use crate::pipeline::{after, create_pg, drop_pg, start_supervisor, BenchDb, WORKER_TOKEN};
use crate::procs::{cpu_seconds, rss_bytes, Context, Proc};
use crate::report::{figure, note, pct, ratio};

/// Distinct API keys the streams use (the simulator accepts them all).
const KEYS: usize = 1_000;
const WORKERS: usize = 4;
const INTERVAL_MS: u64 = 30 * 60 * 1000;
/// Streams per bulk request (the server's `BULK_MAX_STREAMS`).
const PER_REQUEST: usize = 100_000;
/// The reconciler's pause between passes in these runs.
const RECONCILE_INTERVAL_MS: u64 = 30_000;
/// How long to wait for all streams to run (after the creates, and after a restart).
const RUNNING_WAIT: Duration = Duration::from_secs(15 * 60);
const LIST_REQUESTS: usize = 200;
/// Attempts of one bulk create request (the API answers 408 after 30 s; a retry with the same
/// `Idempotency-Key` creates nothing twice).
const CREATE_ATTEMPTS: u32 = 5;
/// The worker that is SIGKILLed and restarted.
const KILLED: &str = "bench-worker-0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    SqliteFolder,
    PostgresFolder,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::SqliteFolder => "sqlite_folder",
            Backend::PostgresFolder => "postgres_folder",
        }
    }
}

/// The figures a run's goals are judged on; `None` where the run timed out.
struct Figures {
    system: String,
    all_running_s: Option<f64>,
    rss_peak_bytes: u64,
    lag_p99_ms: f64,
    reconciler_pass_s: Option<f64>,
    list_p99_ms: f64,
    restart_s: Option<f64>,
}

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_all(ctx))
}

async fn run_all(ctx: &Context) -> anyhow::Result<()> {
    let n = match std::env::var("SUPERVISOR_BENCH_STREAMS") {
        Ok(v) if !v.is_empty() => v
            .parse::<usize>()
            .context("SUPERVISOR_BENCH_STREAMS is not a count")?,
        _ if ctx.quick => 100_000,
        _ => 1_000_000,
    };
    let window = Duration::from_secs(if ctx.quick { 30 } else { 60 });
    let mut backends = vec![Backend::SqliteFolder];
    match std::env::var("BENCH_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => backends.push(Backend::PostgresFolder),
        _ => note("BENCH_POSTGRES_URL is not set: PostgreSQL skipped (scripts/bench.sh sets it)"),
    }
    // SUPERVISOR_BENCH_ONLY=sqlite_folder (or postgres_folder) runs one database only.
    let only = std::env::var("SUPERVISOR_BENCH_ONLY").unwrap_or_default();
    let mut all = Vec::new();
    for backend in backends {
        if !only.is_empty() && only != backend.name() {
            continue;
        }
        let system = format!("supervisor_{}_{n}", backend.name());
        note(format!("{system}: starting"));
        let figures = one_run(ctx, backend, n, window, &system)
            .await
            .with_context(|| format!("{system} failed"))?;
        all.push(figures);
    }
    for f in &all {
        let s = &f.system;
        match f.all_running_s {
            Some(v) => ratio(&format!("all_running_s {s}"), v, 60.0, false),
            None => note(format!("{s}: all_running_s timed out: goal < 60 s NOT met")),
        }
        ratio(
            &format!("supervisor_rss_gib {s}"),
            f.rss_peak_bytes as f64 / (1u64 << 30) as f64,
            1.0,
            false,
        );
        ratio(&format!("lag_p99_ms {s}"), f.lag_p99_ms, 100.0, false);
        match f.reconciler_pass_s {
            Some(v) => ratio(&format!("reconciler_pass_s {s}"), v, 10.0, false),
            None => note(format!(
                "{s}: no periodic reconciler pass with all streams in place was timed: \
                 goal < 10 s NOT met"
            )),
        }
        ratio(&format!("list_p99_ms {s}"), f.list_p99_ms, 50.0, false);
        match f.restart_s {
            Some(v) => ratio(&format!("restart_worker_running_s {s}"), v, 10.0, false),
            None => note(format!(
                "{s}: the restarted worker's streams timed out: goal < 10 s NOT met"
            )),
        }
    }
    Ok(())
}

/// `iqair-sim` accepting every bench key, limits off; returns it and its `host:port`.
fn start_sim(ctx: &Context, logs: &Path) -> anyhow::Result<(Proc, String)> {
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let (proc, line) = Proc::start(
        "iqair-sim",
        &ctx.bin("iqair-sim")?,
        &[],
        &[
            ("IQAIR_SIM_ADDR", "127.0.0.1:0".to_owned()),
            ("IQAIR_SIM_KEYS", keys.join(",")),
            ("IQAIR_SIM_LIMITS", "off".to_owned()),
        ],
        "listening on",
        logs,
    )?;
    let addr = after(&line, "listening on http://")
        .ok_or_else(|| anyhow!("cannot read the simulator's address from {line:?}"))?;
    Ok((proc, addr))
}

fn key(i: usize) -> String {
    format!("bench-key-{i}")
}

/// The environment of bench worker `id`, with room for `capacity` streams; its first ticks are
/// spread over the whole interval (as `scale` does), so N streams make N / 1,800 fetches a
/// second. It logs at info: the `streams started in one call` lines are counted.
fn worker_env(
    worker_addr: &str,
    id: &str,
    capacity: usize,
    store_env: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("DATA_STREAMS_WORKER_ADDR", worker_addr.to_owned()),
        ("DATA_STREAMS_WORKER_TOKEN", WORKER_TOKEN.to_owned()),
        ("WORKER_ID", id.to_owned()),
        ("WORKER_CAPACITY", capacity.to_string()),
        ("WORKER_START_SPREAD_MS", INTERVAL_MS.to_string()),
        ("RUST_LOG", "warn,worker=info".to_owned()),
    ];
    env.extend(store_env.iter().cloned());
    env
}

/// How many streams a worker's log says it started (`worker:start_many` logs one line per call
/// with `started=<n>`; a single `worker:start` logs `stream started`).
fn started_in_log(log: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(log) else {
        return 0;
    };
    let mut started = 0;
    for line in text.lines() {
        if line.contains("streams started in one call") {
            if let Some(n) = after(line, "started=").and_then(|v| v.parse::<u64>().ok()) {
                started += n;
            }
        } else if line.contains("stream started every") {
            started += 1;
        }
    }
    started
}

/// NDJSON of streams `from..to`: stream `i` uses key `i % KEYS` and a point of its own.
fn ndjson(endpoint: &str, from: usize, to: usize) -> String {
    use std::fmt::Write;
    let mut body = String::with_capacity((to - from) * 320);
    for i in from..to {
        let lat = -60.0 + (i % 120) as f64 + (i / 40_800) as f64 * 0.001;
        let lon = -170.0 + ((i / 120) % 340) as f64;
        let _ = writeln!(
            body,
            r#"{{"adapter":"IQAIR_DAILY","endpoint":"{endpoint}","secret_key":"{}","interval":{INTERVAL_MS},"timeout":10000,"bucket_name":"bench","params":{{"lat":{lat:.3},"lon":{lon}}},"rate_limit":{{"per_minute":0,"per_day":0,"per_month":0}},"start":true}}"#,
            key(i % KEYS)
        );
    }
    body
}

/// `GET /streams/count` (with `query`): its answer.
async fn count(client: &reqwest::Client, api: &str, query: &str) -> anyhow::Result<Value> {
    let resp = client
        .get(format!("{api}/streams/count{query}"))
        .send()
        .await?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "GET /streams/count answered {status}: {}",
            resp.text().await?
        );
    }
    Ok(resp.json().await?)
}

/// Samples the supervisor's RSS every 200 ms until dropped; the peak.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let (peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Ok(rss) = rss_bytes(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        RssSampler { peak, stop }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One reconciler pass as `GET /reconciler` showed it.
#[derive(Debug, Clone)]
struct Pass {
    end_ms: i64,
    streams: u64,
    /// `all` (every stream) or `due` (the suspects and the pass's share of the rotation).
    scope: String,
    /// Streams listed because their worker restarted or went away.
    suspects: u64,
    duration_ms: Option<i64>,
}

/// Polls `GET /reconciler` every 250 ms until `stop`, recording every new pass.
fn watch_reconciler(
    client: reqwest::Client,
    api: String,
    stop: Arc<AtomicBool>,
) -> Arc<Mutex<Vec<Pass>>> {
    let passes: Arc<Mutex<Vec<Pass>>> = Arc::default();
    let out = passes.clone();
    tokio::spawn(async move {
        let mut last_end: Option<i64> = None;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(view) = async {
                client
                    .get(format!("{api}/reconciler"))
                    .send()
                    .await?
                    .json::<Value>()
                    .await
            }
            .await
            {
                let end = view["last_run_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp_millis());
                if let Some(end) = end.filter(|e| Some(*e) != last_end) {
                    let streams = view["findings"]["streams"].as_u64().unwrap_or(0);
                    let mode = view["findings"]["mode"].as_str().unwrap_or("watermark");
                    // The pass's own time, as the supervisor's metrics give it; else the gap
                    // since the last pass ended, less the pause between passes.
                    let reported = pass_seconds(&client, &api, mode)
                        .await
                        .map(|s| (s * 1000.0).round() as i64);
                    let duration_ms = reported.or(last_end
                        .map(|prev| end - prev - RECONCILE_INTERVAL_MS as i64)
                        .filter(|d| *d >= 0));
                    if let Ok(mut passes) = out.lock() {
                        passes.push(Pass {
                            end_ms: end,
                            streams,
                            scope: view["findings"]["scope"].as_str().unwrap_or("").to_owned(),
                            suspects: view["findings"]["suspects"].as_u64().unwrap_or(0),
                            duration_ms,
                        });
                    }
                    last_end = Some(end);
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    passes
}

/// `ds_reconciler_last_pass_seconds{mode="<mode>"}` from `GET /metrics`, if it is there.
async fn pass_seconds(client: &reqwest::Client, api: &str, mode: &str) -> Option<f64> {
    let text = client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let name = format!("ds_reconciler_last_pass_seconds{{mode=\"{mode}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(name.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until `done` says yes, polling every `every`; the time it took, or `None` after `wait`.
async fn time_until<F, Fut>(
    start: Instant,
    wait: Duration,
    every: Duration,
    mut done: F,
) -> Option<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if done().await {
            return Some(start.elapsed().as_secs_f64());
        }
        if start.elapsed() >= wait {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

async fn one_run(
    ctx: &Context,
    backend: Backend,
    n: usize,
    window: Duration,
    system: &str,
) -> anyhow::Result<Figures> {
    let dir = ctx.dir(system)?;
    let mut pg_name = None;
    let outcome = async {
        let mut procs: Vec<Proc> = Vec::new();
        let (sim, sim_addr) = start_sim(ctx, &dir)?;
        procs.push(sim);
        let objects = dir.join("objects");
        let store_env = vec![("OBJECT_STORE_URL", format!("file://{}", objects.display()))];
        let database_url = match backend {
            Backend::SqliteFolder => format!("sqlite://{}", dir.join("ds.db").display()),
            Backend::PostgresFolder => {
                let (url, name) = create_pg().await?;
                pg_name = Some(name);
                url
            }
        };
        // The supervisor logs its assignment batches (`assigning streams`) for the report.
        let mut supervisor_env = store_env.clone();
        supervisor_env.push(("RECONCILE_INTERVAL_MS", RECONCILE_INTERVAL_MS.to_string()));
        supervisor_env.push(("RUST_LOG", "warn,data_streams::supervisor=info".to_owned()));
        let (supervisor, http, worker_addr) =
            start_supervisor(ctx, &dir, &database_url, &supervisor_env)?;
        let supervisor_pid = supervisor.pid();
        let supervisor_log = supervisor.log.clone();
        procs.push(supervisor);
        let rss = RssSampler::start(supervisor_pid);
        let api = format!("http://{http}");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()?;
        let stop_watch = Arc::new(AtomicBool::new(false));
        let passes = watch_reconciler(client.clone(), api.clone(), stop_watch.clone());

        let capacity = (n * 3 / 10).max(1_000) + 1_000;
        let mut worker_logs: Vec<PathBuf> = Vec::new();
        for w in 0..WORKERS {
            let id = format!("bench-worker-{w}");
            let (worker, _) = Proc::start(
                &id,
                &ctx.bin("worker")?,
                &[],
                &worker_env(&worker_addr, &id, capacity, &store_env),
                "worker starting",
                &dir,
            )?;
            worker_logs.push(worker.log.clone());
            procs.push(worker);
        }
        // All four connected before the first create, so placement sees them all.
        let (c, a) = (&client, &api);
        let connected = time_until(
            Instant::now(),
            Duration::from_secs(60),
            Duration::from_millis(100),
            move || async move {
                let (client, api) = (c, a);
                match client.get(format!("{api}/workers")).send().await {
                    Ok(resp) => resp.json::<Value>().await.is_ok_and(|w| {
                        w.as_array().is_some_and(|a| {
                            a.iter().filter(|w| w["connected"] == true).count() == WORKERS
                        })
                    }),
                    Err(_) => false,
                }
            },
        )
        .await;
        if connected.is_none() {
            bail!("the {WORKERS} workers did not connect within 60 s");
        }

        // 1. Create, 100,000 a request, one request at a time.
        let endpoint = format!("http://{sim_addr}/v2/nearest_city");
        let mut sample_ids: Vec<String> = Vec::new();
        let mut retries = 0u32;
        let mut request_s = Vec::new();
        let cpu_create_before = cpu_seconds(supervisor_pid)?;
        let created_at = Instant::now();
        for (r, from) in (0..n).step_by(PER_REQUEST).enumerate() {
            let to = (from + PER_REQUEST).min(n);
            let body = ndjson(&endpoint, from, to);
            let idempotency = format!("{system}-{r}");
            let mut attempt = 0;
            let answer: Value = loop {
                attempt += 1;
                let sent = Instant::now();
                let resp = client
                    .post(format!("{api}/streams"))
                    .header("Content-Type", "application/x-ndjson")
                    .header("Idempotency-Key", &idempotency)
                    .body(body.clone())
                    .send()
                    .await;
                match resp {
                    Ok(resp) if resp.status().is_success() => {
                        request_s.push(sent.elapsed().as_secs_f64());
                        break resp.json().await?;
                    }
                    Ok(resp)
                        if attempt < CREATE_ATTEMPTS
                            && (resp.status().as_u16() == 408
                                || resp.status().is_server_error()) =>
                    {
                        note(format!(
                            "{system}: create request {r} answered {} after {:.1} s; again",
                            resp.status(),
                            sent.elapsed().as_secs_f64()
                        ));
                        retries += 1;
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        bail!(
                            "POST /streams (request {r}) answered {status}: {}",
                            resp.text().await?
                        )
                    }
                    Err(err) if attempt < CREATE_ATTEMPTS => {
                        note(format!("{system}: create request {r} failed: {err}; again"));
                        retries += 1;
                    }
                    Err(err) => return Err(err).context(format!("POST /streams (request {r})")),
                }
            };
            let ids = answer["ids"]
                .as_array()
                .ok_or_else(|| anyhow!("POST /streams answered without ids"))?;
            if ids.len() != to - from {
                bail!(
                    "POST /streams answered {} ids for {} streams",
                    ids.len(),
                    to - from
                );
            }
            sample_ids.extend(
                ids.iter()
                    .step_by(1_000)
                    .filter_map(|v| v.as_str().map(str::to_owned)),
            );
            note(format!(
                "{system}: {to} of {n} created ({:.1} s so far)",
                created_at.elapsed().as_secs_f64()
            ));
        }
        let create_s = created_at.elapsed().as_secs_f64();
        let last_create = Instant::now();
        figure(system, "streams", n as f64);
        figure(system, "create_s", create_s);
        figure(system, "create_per_s", n as f64 / create_s);
        if let Some(max) = request_s.iter().copied().reduce(f64::max) {
            figure(system, "create_request_max_s", max);
        }
        figure(system, "create_retries", retries as f64);

        // 2. Until all run: as the API says, and as the workers say.
        let mut last_counts = Value::Null;
        let mut api_running: Option<f64> = None;
        let mut workers_started: Option<f64> = None;
        loop {
            let elapsed = last_create.elapsed();
            if api_running.is_none() {
                if let Ok(c) = count(&client, &api, "").await {
                    if c["running"].as_u64() == Some(n as u64) {
                        api_running = Some(last_create.elapsed().as_secs_f64());
                    }
                    last_counts = c;
                }
            }
            if workers_started.is_none() {
                let started: u64 = worker_logs.iter().map(|l| started_in_log(l)).sum();
                if started >= n as u64 {
                    workers_started = Some(last_create.elapsed().as_secs_f64());
                }
            }
            if (api_running.is_some() && workers_started.is_some()) || elapsed >= RUNNING_WAIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let all_running_at_ms = chrono::Utc::now().timestamp_millis();
        let cpu_create = cpu_seconds(supervisor_pid)? - cpu_create_before;
        match api_running {
            Some(s) => figure(system, "all_running_s", s),
            None => {
                figure(system, "all_running_timeout_s", RUNNING_WAIT.as_secs_f64());
                note(format!(
                    "{system}: not all running after the wait: {last_counts}"
                ));
                figure(
                    system,
                    "running_at_timeout",
                    last_counts["running"].as_f64().unwrap_or(0.0),
                );
            }
        }
        match workers_started {
            Some(s) => figure(system, "workers_started_s", s),
            None => {
                figure(
                    system,
                    "workers_started_timeout_s",
                    RUNNING_WAIT.as_secs_f64(),
                );
                let started: u64 = worker_logs.iter().map(|l| started_in_log(l)).sum();
                figure(system, "workers_started_at_timeout", started as f64);
            }
        }
        figure(system, "supervisor_cpu_s_create_to_running", cpu_create);
        let assigning = std::fs::read_to_string(&supervisor_log)
            .map(|t| {
                t.lines()
                    .filter(|l| l.contains("assigning streams"))
                    .count()
            })
            .unwrap_or(0);
        note(format!(
            "{system}: {assigning} `assigning streams` batches in the supervisor's log"
        ));
        for w in 0..WORKERS {
            if let Ok(c) = count(&client, &api, &format!("?worker=bench-worker-{w}")).await {
                note(format!("{system}: bench-worker-{w}: {c}"));
            }
        }

        // 3–4. The steady window.
        let db = match backend {
            Backend::SqliteFolder => BenchDb::Sqlite(
                SqlitePool::connect_with(
                    SqliteConnectOptions::new()
                        .filename(dir.join("ds.db"))
                        .read_only(true),
                )
                .await?,
            ),
            Backend::PostgresFolder => BenchDb::Postgres(PgPool::connect(&database_url).await?),
        };
        let pids: Vec<(String, u32)> = procs.iter().map(|p| (p.name.clone(), p.pid())).collect();
        let cpu_before: Vec<f64> = pids
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid).unwrap_or(0.0))
            .collect();
        let count_before = db.count_results().await?;
        let (from, start) = (chrono::Utc::now().timestamp_millis(), Instant::now());
        tokio::time::sleep(window).await;
        let count_after = db.count_results().await?;
        let (to, elapsed) = (
            chrono::Utc::now().timestamp_millis(),
            start.elapsed().as_secs_f64(),
        );
        let rss_steady = rss_bytes(supervisor_pid)?;
        let cpu_after: Vec<f64> = pids
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid).unwrap_or(0.0))
            .collect();
        let mut lags = Histogram::<u64>::new(3)?;
        for lag in db.lags(from, to).await? {
            lags.record(lag.max(0) as u64)?;
        }
        let failures = db.failures(from, to).await?;
        db.close().await;
        figure(
            system,
            "results_per_s",
            (count_after - count_before) as f64 / elapsed,
        );
        figure(
            system,
            "expected_fetches_per_s",
            n as f64 / (INTERVAL_MS as f64 / 1000.0),
        );
        figure(system, "lag_p50_ms", pct(&lags, 50.0));
        figure(system, "lag_p99_ms", pct(&lags, 99.0));
        figure(system, "lag_max_ms", lags.max() as f64);
        figure(
            system,
            "failures",
            failures.iter().map(|(_, c)| *c).sum::<i64>() as f64,
        );
        if !failures.is_empty() {
            note(format!("{system}: failed runs in the window: {failures:?}"));
        }
        let mut workers_cpu = 0.0;
        for (i, (name, _)) in pids.iter().enumerate() {
            let pct = (cpu_after[i] - cpu_before[i]) / elapsed * 100.0;
            if name.starts_with("bench-worker-") {
                workers_cpu += pct;
            } else {
                figure(system, &format!("cpu_pct_{name}"), pct);
            }
        }
        figure(system, "cpu_pct_workers", workers_cpu);
        figure(
            system,
            "supervisor_rss_steady_mb",
            rss_steady as f64 / (1 << 20) as f64,
        );

        // 5. A periodic reconciler pass with all N streams in place: one that began after
        // they were all running (the suspects, if any, and its share of the rotation).
        let wait_s: u64 = std::env::var("SUPERVISOR_BENCH_RECONCILE_WAIT_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600);
        let steady_from_ms = all_running_at_ms;
        let steady_pass = |passes: &Arc<Mutex<Vec<Pass>>>| -> Option<Pass> {
            let passes = passes.lock().ok()?;
            passes
                .iter()
                .rev()
                .find(|p| {
                    p.duration_ms
                        .is_some_and(|d| p.end_ms - d >= steady_from_ms)
                })
                .cloned()
        };
        let waited = Instant::now();
        let mut pass = steady_pass(&passes);
        while pass.is_none() && waited.elapsed() < Duration::from_secs(wait_s) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            pass = steady_pass(&passes);
        }
        let reconciler_pass_s = pass
            .as_ref()
            .and_then(|p| p.duration_ms)
            .map(|d| d as f64 / 1000.0);
        match &pass {
            Some(p) => {
                figure(
                    system,
                    "reconciler_pass_s",
                    reconciler_pass_s.unwrap_or(0.0),
                );
                figure(system, "reconciler_pass_streams", p.streams as f64);
                note(format!(
                    "{system}: periodic reconciler pass (scope {}) over {} of {n} streams \
                     ({} suspects) ended at {}",
                    p.scope, p.streams, p.suspects, p.end_ms
                ));
            }
            None => {
                figure(
                    system,
                    "reconciler_wait_timeout_s",
                    waited.elapsed().as_secs_f64(),
                );
                let seen = passes.lock().map(|p| p.clone()).unwrap_or_default();
                note(format!("{system}: reconciler passes seen: {seen:?}"));
            }
        }
        let seen = passes.lock().map(|p| p.clone()).unwrap_or_default();
        // The cost per stream of the last timed pass, to tell what a larger N would take.
        if let Some(p) = seen
            .iter()
            .rev()
            .find(|p| p.streams > 0 && p.duration_ms.is_some())
        {
            figure(
                system,
                "reconciler_ms_per_1000_streams",
                p.duration_ms.unwrap_or(0) as f64 / p.streams as f64 * 1000.0,
            );
        }
        if let Ok(seen) = passes.lock() {
            figure(system, "reconciler_passes_seen", seen.len() as f64);
        }

        // 6. The paged list.
        let mut list = Histogram::<u64>::new(3)?;
        for i in 0..LIST_REQUESTS {
            let cursor = &sample_ids[(i * 7919) % sample_ids.len().max(1)];
            let query = match i % 4 {
                0 => "limit=100".to_owned(),
                1 => format!("limit=100&after={cursor}"),
                2 => "limit=100&status=running".to_owned(),
                _ => format!("limit=100&status=running&after={cursor}"),
            };
            let sent = Instant::now();
            let resp = client.get(format!("{api}/streams?{query}")).send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            let us = sent.elapsed().as_micros() as u64;
            if !status.is_success() {
                bail!(
                    "GET /streams?{query} answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            list.record(us)?;
        }
        let list_p99_ms = pct(&list, 99.0) / 1000.0;
        figure(system, "list_p50_ms", pct(&list, 50.0) / 1000.0);
        figure(system, "list_p99_ms", list_p99_ms);
        figure(system, "list_max_ms", list.max() as f64 / 1000.0);

        // 7. SIGKILL one worker, start it again with the same id.
        let held = count(&client, &api, &format!("?worker={KILLED}")).await?["running"]
            .as_u64()
            .unwrap_or(0);
        figure(system, "killed_worker_streams", held as f64);
        let index = procs
            .iter()
            .position(|p| p.name == KILLED)
            .ok_or_else(|| anyhow!("no {KILLED}"))?;
        procs[index].kill();
        let restarted = Instant::now();
        let (worker, _) = Proc::start(
            &format!("{KILLED}-restarted"),
            &ctx.bin("worker")?,
            &[],
            &worker_env(&worker_addr, KILLED, capacity, &store_env),
            "",
            &dir,
        )?;
        let log = worker.log.clone();
        procs.push(worker);
        let restarted_at_ms = chrono::Utc::now().timestamp_millis();
        let (mut saw_loss, mut worker_s, mut api_worker_s, mut api_all_s) =
            (false, None::<f64>, None::<f64>, None::<f64>);
        let restart_wait = Duration::from_secs(300);
        while restarted.elapsed() < restart_wait
            && (worker_s.is_none() || api_worker_s.is_none() || api_all_s.is_none())
        {
            let t = restarted.elapsed().as_secs_f64();
            if worker_s.is_none() && started_in_log(&log) >= held {
                worker_s = Some(t);
            }
            let done = saw_loss || worker_s.is_some();
            if api_worker_s.is_none() {
                if let Ok(c) = count(&client, &api, &format!("?worker={KILLED}")).await {
                    let running = c["running"].as_u64().unwrap_or(0);
                    if running < held {
                        saw_loss = true;
                    } else if done {
                        api_worker_s = Some(restarted.elapsed().as_secs_f64());
                    }
                }
            }
            if api_all_s.is_none() {
                if let Ok(c) = count(&client, &api, "").await {
                    let running = c["running"].as_u64().unwrap_or(0);
                    if running < n as u64 {
                        saw_loss = true;
                    } else if saw_loss || worker_s.is_some() {
                        api_all_s = Some(restarted.elapsed().as_secs_f64());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (metric, value) in [
            ("restart_worker_started_s", worker_s),
            ("restart_api_worker_running_s", api_worker_s),
            ("restart_api_all_running_s", api_all_s),
        ] {
            match value {
                Some(v) => figure(system, metric, v),
                None => figure(
                    system,
                    &format!("{metric}_timeout"),
                    restart_wait.as_secs_f64(),
                ),
            }
        }
        // The pass that lists the restarted worker's streams (its suspects): what it stored
        // but had not reported is indexed by it.
        let suspects_pass = |passes: &Arc<Mutex<Vec<Pass>>>| -> Option<Pass> {
            let passes = passes.lock().ok()?;
            passes
                .iter()
                .find(|p| p.end_ms > restarted_at_ms && p.suspects > 0 && p.duration_ms.is_some())
                .cloned()
        };
        let waited = Instant::now();
        let mut pass = suspects_pass(&passes);
        while pass.is_none() && waited.elapsed() < Duration::from_secs(wait_s) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            pass = suspects_pass(&passes);
        }
        match pass {
            Some(p) => {
                figure(system, "restart_reconciler_suspects", p.suspects as f64);
                figure(
                    system,
                    "restart_reconciler_pass_s",
                    p.duration_ms.unwrap_or(0) as f64 / 1000.0,
                );
                figure(
                    system,
                    "restart_reconciler_done_after_restart_s",
                    (p.end_ms - restarted_at_ms) as f64 / 1000.0,
                );
            }
            None => figure(
                system,
                "restart_reconciler_wait_timeout_s",
                waited.elapsed().as_secs_f64(),
            ),
        }
        figure(
            system,
            "supervisor_rss_peak_mb",
            rss.peak.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
        );
        let rss_peak_bytes = rss.peak.load(Ordering::Relaxed);
        drop(rss);
        stop_watch.store(true, Ordering::Relaxed);
        // Workers first, so the supervisor does not log their loss at shutdown.
        while let Some(mut proc) = procs.pop() {
            proc.kill();
        }
        // The restart figure is the later of the worker's and the API's: both must say so.
        let restart_s = match (worker_s, api_worker_s) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        anyhow::Ok(Figures {
            system: system.to_owned(),
            all_running_s: match (api_running, workers_started) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            },
            rss_peak_bytes,
            lag_p99_ms: pct(&lags, 99.0),
            reconciler_pass_s,
            list_p99_ms,
            restart_s,
        })
    }
    .await;
    if let Some(name) = pg_name {
        if let Err(err) = drop_pg(&name).await {
            note(format!("could not drop database {name}: {err:#}"));
        }
    }
    outcome
}
