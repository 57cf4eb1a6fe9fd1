//! The pipeline benchmark: fetch → store → event → commit, end to end, against the simulator's
//! bare GET rate, in one run.
//!
//! For each backend pair (SQLite + folder; SQLite + folder with `OBJECT_STORE_FOLDER_METADATA=tree`,
//! which costs what the old sidecars did; PostgreSQL + the loopback `s3-test-server`) and each
//! stream count (1,000 and 10,000; `--quick`: 100 and 1,000), fresh real processes: `iqair-sim`
//! (rate limits off, no faults), `data-streams` and one `worker`. The streams are created through
//! the HTTP API with the shortest interval the API accepts (1 s) and no call budget, before the
//! worker connects, so the worker receives them all in one assignment. After a warm-up, over a
//! fixed window:
//!
//! - `results_per_s`: rows committed in `results` per second (counted in the database itself
//!   before and after the window);
//! - `lag_p50_ms`, `lag_p99_ms`: schedule lag, `started_at - scheduled_at` of the rows stored
//!   during the window;
//! - `fetch_p50_ms`, `fetch_p99_ms`: `fetched_at - started_at` of the same rows (the fetch);
//! - `fetched_to_commit_p50_ms`, `fetched_to_commit_p99_ms`: `created_at - fetched_at` (the
//!   put and its wait for a put permit, then the event's wait for the send window and the
//!   commit);
//! - `failures`: failed runs recorded during the window (a healthy run has none);
//! - `cpu_pct_<process>`: CPU of each process over the window (100 = one core), to show what
//!   bounds the rate;
//! - `restart_to_all_running_s`: after the window, the worker is SIGKILLed and a new one with
//!   the same id started; the time from its spawn until it has started all N streams again,
//!   restarted by the real supervisor from its database.
//!
//! The ceiling, `sim_bare_get get_per_s`: a fresh simulator (before and again after the pipeline
//! runs; the better of the two) answering plain keep-alive GETs of the same endpoint from
//! `min(largest N, 256)` concurrent loops. The worker itself has up to N fetches in flight (every
//! stream of a tick at once); 256 loops already saturate the simulator on a small machine, and
//! more only add scheduling noise to the ceiling.
//!
//! Knobs for profiling: `BENCH_PIPELINE_ONLY=sqlite_folder_10000,...` runs only the named runs;
//! `BENCH_OBJECTS_ROOT=/dev/shm/x` puts the folder store there (e.g. a tmpfs, to see what the
//! disk's fsyncs and inode allocation cost).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures::stream::{self, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, PgPool, SqlitePool};

use crate::procs::{cpu_seconds, Context, Proc};
use crate::report::{figure, note, pct, ratio};

/// The API key every stream uses; the simulator accepts it.
pub(crate) const SIM_KEY: &str = "bench-key";
/// The shortest interval the API accepts (`domain::MIN_INTERVAL_MS`).
pub(crate) const INTERVAL_MS: u64 = 1_000;
/// Each run's deadline: longer than the interval, so a run that waits behind a backlog still
/// completes (its next tick is skipped) instead of being dropped and redone.
pub(crate) const TIMEOUT_MS: u64 = 10_000;
/// Shared secret of the worker link in these runs.
pub(crate) const WORKER_TOKEN: &str = "bench-worker-token";
/// Most concurrent loops of the bare GET ceiling (and of API calls while creating streams).
const BARE_MAX_CONCURRENCY: usize = 256;
const CREATE_CONCURRENCY: usize = 16;

/// Which database and object store a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// SQLite + the folder store, metadata in each object's extended attribute (the default).
    SqliteFolder,
    /// The same with `OBJECT_STORE_FOLDER_METADATA=tree`: one more file and fsync per object,
    /// as the sidecars in the partitions cost before (the choice the warehouse layout made).
    SqliteFolderTree,
    PostgresS3,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::SqliteFolder => "sqlite_folder",
            Backend::SqliteFolderTree => "sqlite_folder_tree",
            Backend::PostgresS3 => "postgres_s3",
        }
    }
}

/// How long each phase lasts.
struct Timing {
    warmup: Duration,
    window: Duration,
}

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_all(ctx))
}

async fn run_all(ctx: &Context) -> anyhow::Result<()> {
    let counts: [usize; 2] = if ctx.quick {
        [100, 1_000]
    } else {
        [1_000, 10_000]
    };
    let timing = if ctx.quick {
        Timing {
            warmup: Duration::from_secs(3),
            window: Duration::from_secs(5),
        }
    } else {
        Timing {
            warmup: Duration::from_secs(10),
            window: Duration::from_secs(20),
        }
    };
    let largest = counts[1];

    let concurrency = largest.min(BARE_MAX_CONCURRENCY);
    figure("sim_bare_get", "concurrency", concurrency as f64);
    let bare_before = bare_get(ctx, "sim_bare_get_before", concurrency, &timing)
        .await
        .context("the bare simulator GET loop")?;
    figure("sim_bare_get", "get_per_s_before", bare_before);

    let mut backends = vec![Backend::SqliteFolder, Backend::SqliteFolderTree];
    match std::env::var("BENCH_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => backends.push(Backend::PostgresS3),
        _ => note(
            "BENCH_POSTGRES_URL is not set: PostgreSQL + S3 skipped (scripts/bench.sh sets it)",
        ),
    }
    // BENCH_PIPELINE_ONLY=sqlite_folder_10000,... runs only the named runs (for profiling).
    let only: Option<Vec<String>> = std::env::var("BENCH_PIPELINE_ONLY")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let mut rates = Vec::new();
    for backend in backends {
        for n in counts {
            let run_name = format!("{}_{n}", backend.name());
            if only.as_ref().is_some_and(|only| !only.contains(&run_name)) {
                continue;
            }
            let system = format!("pipeline_{run_name}");
            note(format!("{system}: starting"));
            let rate = pipeline(ctx, backend, n, &timing, &system)
                .await
                .with_context(|| format!("{system} failed"))?;
            rates.push((backend, n, rate));
        }
    }
    // Measured again after the pipeline runs: on a small shared machine one measurement can be
    // depressed by background work (other processes, the file system's writeback); the ceiling
    // is the better of the two, which makes the ratio the harder to meet.
    let bare_after = bare_get(ctx, "sim_bare_get_after", concurrency, &timing)
        .await
        .context("the bare simulator GET loop")?;
    figure("sim_bare_get", "get_per_s_after", bare_after);
    let bare = bare_before.max(bare_after);
    figure("sim_bare_get", "get_per_s", bare);
    for (backend, n, rate) in rates {
        if n == largest {
            ratio(
                &format!("results_per_s {}_{n}/sim_bare_get", backend.name()),
                rate / bare,
                0.3,
                true,
            );
        }
    }
    Ok(())
}

/// Starts `iqair-sim` with every limit off; returns it and its `host:port`.
pub(crate) fn start_sim(ctx: &Context, name: &str, logs: &Path) -> anyhow::Result<(Proc, String)> {
    let (proc, line) = Proc::start(
        name,
        &ctx.bin("iqair-sim")?,
        &[],
        &[
            ("IQAIR_SIM_ADDR", "127.0.0.1:0".to_owned()),
            ("IQAIR_SIM_KEYS", SIM_KEY.to_owned()),
            ("IQAIR_SIM_LIMITS", "off".to_owned()),
        ],
        "listening on",
        logs,
    )?;
    let addr = after(&line, "listening on http://")
        .ok_or_else(|| anyhow!("cannot read the simulator's address from {line:?}"))?;
    Ok((proc, addr))
}

/// The word following `marker` in `line`.
pub(crate) fn after(line: &str, marker: &str) -> Option<String> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split_whitespace().next().map(str::to_owned)
}

/// The simulator's own rate: `concurrency` keep-alive GET loops over `timing.window`, after a
/// short warm-up. Answers other than 200 count as failures and fail the run.
async fn bare_get(
    ctx: &Context,
    name: &str,
    concurrency: usize,
    timing: &Timing,
) -> anyhow::Result<f64> {
    let logs = ctx.dir(name)?;
    let (sim, addr) = start_sim(ctx, "iqair-sim", &logs)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + timing.warmup.min(Duration::from_secs(3)) + timing.window;
    let mut loops = Vec::new();
    for i in 0..concurrency {
        let (client, ok, bad) = (client.clone(), ok.clone(), bad.clone());
        let (lat, lon) = point(i);
        let url = format!("http://{addr}/v2/nearest_city?lat={lat}&lon={lon}&key={SIM_KEY}");
        loops.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match client.get(&url).send().await {
                    Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => bad.fetch_add(1, Ordering::Relaxed),
                    },
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(timing.warmup.min(Duration::from_secs(3))).await;
    let (start, cpu_start) = (Instant::now(), cpu_seconds(sim.pid())?);
    let before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(timing.window).await;
    let done = ok.load(Ordering::Relaxed) - before;
    let elapsed = start.elapsed().as_secs_f64();
    let sim_cpu = (cpu_seconds(sim.pid())? - cpu_start) / elapsed * 100.0;
    for handle in loops {
        handle.await?;
    }
    drop(sim);
    figure(name, "cpu_pct_iqair-sim", sim_cpu);
    let failed = bad.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} bare GETs failed; see {}", logs.display());
    }
    Ok(done as f64 / elapsed)
}

/// A point on the map for stream `i`: different coordinates, so the simulator's answers differ.
fn point(i: usize) -> (f64, f64) {
    let lat = -60.0 + (i % 120) as f64;
    let lon = -170.0 + ((i / 120) % 340) as f64;
    (lat, lon)
}

/// The supervisor's database as the benchmark reads it.
pub(crate) enum BenchDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The same statement on whichever pool: the queries are plain SQL both backends take.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            BenchDb::Sqlite($pool) => $body,
            BenchDb::Postgres($pool) => $body,
        }
    };
}

impl BenchDb {
    pub(crate) async fn count_results(&self) -> anyhow::Result<i64> {
        let sql = "SELECT COUNT(*) FROM results";
        Ok(on_pool!(self, pool => sqlx::query_scalar(sql).fetch_one(pool).await?))
    }

    /// Schedule lags (ms) of the rows stored in `[from, to)` (epoch ms).
    pub(crate) async fn lags(&self, from: i64, to: i64) -> anyhow::Result<Vec<i64>> {
        let sql = "SELECT started_at - scheduled_at FROM results \
                   WHERE created_at >= $1 AND created_at < $2 AND scheduled_at IS NOT NULL";
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(from).bind(to).fetch_all(pool).await?
        }))
    }

    /// Where the time of the rows stored in `[from, to)` went (ms): `fetched_at - started_at`
    /// (the fetch) and `created_at - fetched_at` (the put, its wait for a put permit, the
    /// event's wait for the send window, the commit).
    pub(crate) async fn run_times(&self, from: i64, to: i64) -> anyhow::Result<Vec<(i64, i64)>> {
        let sql = "SELECT fetched_at - started_at, created_at - fetched_at FROM results \
                   WHERE created_at >= $1 AND created_at < $2 AND started_at IS NOT NULL";
        Ok(on_pool!(self, pool => {
            sqlx::query_as(sql).bind(from).bind(to).fetch_all(pool).await?
        }))
    }

    /// Failed runs recorded in `[from, to)`, by class.
    pub(crate) async fn failures(&self, from: i64, to: i64) -> anyhow::Result<Vec<(String, i64)>> {
        let sql = "SELECT class, COUNT(*) FROM run_failures \
                   WHERE at >= $1 AND at < $2 GROUP BY class ORDER BY class";
        Ok(on_pool!(self, pool => {
            sqlx::query_as(sql).bind(from).bind(to).fetch_all(pool).await?
        }))
    }

    pub(crate) async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// The S3 test server on a free port with its root in `dir/s3`, and the environment that points
/// a process's `OBJECT_STORE_URL=s3://` store at it.
pub(crate) fn start_s3(
    ctx: &Context,
    dir: &Path,
) -> anyhow::Result<(Proc, Vec<(&'static str, String)>)> {
    let (s3, line) = Proc::start(
        "s3-test-server",
        &ctx.bin("s3-test-server")?,
        &[
            "--addr",
            "127.0.0.1:0",
            "--root",
            &dir.join("s3").display().to_string(),
        ],
        &[],
        "s3-test-server listening on",
        dir,
    )?;
    let field = |marker: &str| {
        after(&line, marker).ok_or_else(|| anyhow!("cannot read {marker} from {line:?}"))
    };
    let env = vec![
        ("OBJECT_STORE_URL", "s3://".to_owned()),
        ("AWS_ENDPOINT_URL", field("listening on ")?),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", field("access_key=")?),
        ("AWS_SECRET_ACCESS_KEY", field("secret_key=")?),
        ("S3_FORCE_PATH_STYLE", "true".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ];
    Ok((s3, env))
}

/// A fresh PostgreSQL database in the server of `BENCH_POSTGRES_URL`, dropped by [`drop_pg`].
pub(crate) async fn create_pg() -> anyhow::Result<(String, String)> {
    let admin = std::env::var("BENCH_POSTGRES_URL")?;
    let name = format!("ds_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .context("connecting to BENCH_POSTGRES_URL")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok((with_database(&admin, &name)?, name))
}

pub(crate) async fn drop_pg(name: &str) -> anyhow::Result<()> {
    let admin = std::env::var("BENCH_POSTGRES_URL")?;
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// `url` with its database path replaced by `name` (query string kept).
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base
        .find("://")
        .ok_or_else(|| anyhow!("not a URL: {url:?}"))?
        + 3;
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// One pipeline run; prints its figures and returns `results_per_s`.
async fn pipeline(
    ctx: &Context,
    backend: Backend,
    n: usize,
    timing: &Timing,
    system: &str,
) -> anyhow::Result<f64> {
    let dir = ctx.dir(system)?;
    let mut pg_name = None;
    let outcome = async {
        let mut procs: Vec<Proc> = Vec::new();
        let (sim, sim_addr) = start_sim(ctx, "iqair-sim", &dir)?;
        procs.push(sim);

        let mut store_env: Vec<(&str, String)> = Vec::new();
        let database_url = match backend {
            Backend::SqliteFolder | Backend::SqliteFolderTree => {
                // BENCH_OBJECTS_ROOT puts the folder store elsewhere (e.g. a tmpfs, to see
                // what the disk's fsyncs cost).
                let objects = match std::env::var("BENCH_OBJECTS_ROOT") {
                    Ok(root) if !root.is_empty() => Path::new(&root).join(system),
                    _ => dir.join("objects"),
                };
                store_env.push(("OBJECT_STORE_URL", format!("file://{}", objects.display())));
                if backend == Backend::SqliteFolderTree {
                    store_env.push(("OBJECT_STORE_FOLDER_METADATA", "tree".to_owned()));
                }
                format!("sqlite://{}", dir.join("ds.db").display())
            }
            Backend::PostgresS3 => {
                let (url, name) = create_pg().await?;
                pg_name = Some(name);
                let (s3, env) = start_s3(ctx, &dir)?;
                procs.push(s3);
                store_env.extend(env);
                url
            }
        };

        let (supervisor, http, worker_addr) =
            start_supervisor(ctx, &dir, &database_url, &store_env)?;
        procs.push(supervisor);
        let api = format!("http://{http}");
        let client = reqwest::Client::new();

        // Created running while no worker is connected: each POST stores the stream, and the
        // worker gets them all in one assignment when it connects.
        let created = Instant::now();
        create_streams(&client, &api, &sim_addr, n).await?;
        note(format!(
            "{system}: {n} streams created in {:.1} s",
            created.elapsed().as_secs_f64()
        ));

        let worker_env = worker_env(&worker_addr, n, &store_env);
        let (worker, _) = Proc::start(
            "worker",
            &ctx.bin("worker")?,
            &[],
            &worker_env,
            "worker starting",
            &dir,
        )?;
        procs.push(worker);

        let assigned = Instant::now();
        wait_assigned(&client, &api, n).await?;
        note(format!(
            "{system}: all {n} streams assigned in {:.1} s; warming up {} s",
            assigned.elapsed().as_secs_f64(),
            timing.warmup.as_secs()
        ));

        let db = match backend {
            Backend::SqliteFolder | Backend::SqliteFolderTree => BenchDb::Sqlite(
                SqlitePool::connect_with(
                    SqliteConnectOptions::new()
                        .filename(dir.join("ds.db"))
                        .read_only(true),
                )
                .await?,
            ),
            Backend::PostgresS3 => BenchDb::Postgres(PgPool::connect(&database_url).await?),
        };
        tokio::time::sleep(timing.warmup).await;

        // Every process of the run (s3-test-server too, on that backend).
        let pids: Vec<(String, u32)> = procs.iter().map(|p| (p.name.clone(), p.pid())).collect();
        let cpu_before: Vec<f64> = pids
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid))
            .collect::<anyhow::Result<_>>()?;
        let count_before = db.count_results().await?;
        let (from, start) = (chrono::Utc::now().timestamp_millis(), Instant::now());
        tokio::time::sleep(timing.window).await;
        let count_after = db.count_results().await?;
        let (to, elapsed) = (
            chrono::Utc::now().timestamp_millis(),
            start.elapsed().as_secs_f64(),
        );
        let cpu_after: Vec<f64> = pids
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid))
            .collect::<anyhow::Result<_>>()?;

        let rate = (count_after - count_before) as f64 / elapsed;
        let mut lags = Histogram::<u64>::new(3)?;
        for lag in db.lags(from, to).await? {
            lags.record(lag.max(0) as u64)?;
        }
        let (mut fetches, mut commits) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
        for (fetch, commit) in db.run_times(from, to).await? {
            fetches.record(fetch.max(0) as u64)?;
            commits.record(commit.max(0) as u64)?;
        }
        let failures = db.failures(from, to).await?;
        db.close().await;

        figure(system, "results_per_s", rate);
        figure(system, "lag_p50_ms", pct(&lags, 50.0));
        figure(system, "lag_p99_ms", pct(&lags, 99.0));
        figure(system, "fetch_p50_ms", pct(&fetches, 50.0));
        figure(system, "fetch_p99_ms", pct(&fetches, 99.0));
        figure(system, "fetched_to_commit_p50_ms", pct(&commits, 50.0));
        figure(system, "fetched_to_commit_p99_ms", pct(&commits, 99.0));
        figure(
            system,
            "failures",
            failures.iter().map(|(_, c)| *c).sum::<i64>() as f64,
        );
        if !failures.is_empty() {
            note(format!("{system}: failed runs in the window: {failures:?}"));
        }
        for (i, (name, _)) in pids.iter().enumerate() {
            figure(
                system,
                &format!("cpu_pct_{name}"),
                (cpu_after[i] - cpu_before[i]) / elapsed * 100.0,
            );
        }
        // Restart through the real supervisor: SIGKILL the worker, start a new process with the
        // same id, and time from its spawn until it has started every stream again (it logs
        // each `stream started` of a `worker:start`, and once per `worker:start_many` how many
        // it started; the supervisor restarts them from the database on `worker_available`).
        if let Some(old) = procs.iter_mut().find(|p| p.name == "worker") {
            old.kill();
        }
        let restarted = Instant::now();
        let (worker, _) = Proc::start(
            "worker-restarted",
            &ctx.bin("worker")?,
            &[],
            &worker_env,
            "",
            &dir,
        )?;
        let log = worker.log.clone();
        procs.push(worker);
        let deadline = restarted + Duration::from_secs(120);
        // Read only what the log gained since the last look, complete lines only.
        let (mut read, mut started) = (0u64, 0usize);
        loop {
            let mut fresh = Vec::new();
            if let Ok(mut file) = std::fs::File::open(&log) {
                use std::io::{Read, Seek, SeekFrom};
                if file.seek(SeekFrom::Start(read)).is_ok() {
                    let _ = file.read_to_end(&mut fresh);
                }
            }
            if let Some(end) = fresh.iter().rposition(|b| *b == b'\n') {
                started += String::from_utf8_lossy(&fresh[..=end])
                    .lines()
                    .map(started_in_line)
                    .sum::<usize>();
                read += end as u64 + 1;
            }
            if started >= n {
                figure(
                    system,
                    "restart_to_all_running_s",
                    restarted.elapsed().as_secs_f64(),
                );
                break;
            }
            if Instant::now() >= deadline {
                bail!("the restarted worker started {started} of {n} streams within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Stop the worker first, so the supervisor does not log its loss at shutdown.
        while let Some(mut proc) = procs.pop() {
            proc.kill();
        }
        anyhow::Ok(rate)
    }
    .await;
    if let Some(name) = pg_name {
        if let Err(err) = drop_pg(&name).await {
            note(format!("could not drop database {name}: {err:#}"));
        }
    }
    outcome
}

/// How many streams one line of the worker's log says it started: one for a `worker:start`
/// (`stream started every …`), `started=N` for a `worker:start_many` (`streams started in one
/// call started=N refused=M`), none for any other line.
fn started_in_line(line: &str) -> usize {
    if line.contains("streams started in one call") {
        line.split_whitespace()
            .find_map(|field| field.strip_prefix("started="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    } else {
        usize::from(line.contains("stream started"))
    }
}

/// `data-streams` on `database_url` and the store in `store_env`, both ports chosen by the
/// system; returns it, its API address and its worker address.
pub(crate) fn start_supervisor(
    ctx: &Context,
    dir: &Path,
    database_url: &str,
    store_env: &[(&'static str, String)],
) -> anyhow::Result<(Proc, String, String)> {
    let mut env = vec![
        ("DATA_STREAMS_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("DATA_STREAMS_WORKER_ADDR", "127.0.0.1:0".to_owned()),
        ("DATA_STREAMS_WORKER_TOKEN", WORKER_TOKEN.to_owned()),
        ("DATABASE_URL", database_url.to_owned()),
    ];
    env.extend(store_env.iter().cloned());
    let (supervisor, line) = Proc::start(
        "data-streams",
        &ctx.bin("data-streams")?,
        &[],
        &env,
        "data-streams listening",
        dir,
    )?;
    let http = after(&line, "listening: http://")
        .ok_or_else(|| anyhow!("cannot read the API address from {line:?}"))?;
    let worker_addr = after(&line, "(API), ")
        .ok_or_else(|| anyhow!("cannot read the worker address from {line:?}"))?;
    Ok((supervisor, http, worker_addr))
}

/// The environment of the one bench worker, with room for `n` streams; it logs at info (its
/// readiness line and `stream started` are read), everything else at warn.
pub(crate) fn worker_env(
    worker_addr: &str,
    n: usize,
    store_env: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("DATA_STREAMS_WORKER_ADDR", worker_addr.to_owned()),
        ("DATA_STREAMS_WORKER_TOKEN", WORKER_TOKEN.to_owned()),
        ("WORKER_ID", "bench-worker".to_owned()),
        ("WORKER_CAPACITY", (n + 1_000).to_string()),
        ("RUST_LOG", "warn,worker=info".to_owned()),
    ];
    env.extend(store_env.iter().cloned());
    env
}

/// `n` running streams on the simulator at `sim_addr`, created 16 at a time; their ids.
pub(crate) async fn create_streams(
    client: &reqwest::Client,
    api: &str,
    sim_addr: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let endpoint = format!("http://{sim_addr}/v2/nearest_city");
    stream::iter(0..n)
        .map(|i| create_stream(client, api, &endpoint, i))
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect()
        .await
}

pub(crate) async fn create_stream(
    client: &reqwest::Client,
    api: &str,
    endpoint: &str,
    i: usize,
) -> anyhow::Result<String> {
    let (lat, lon) = point(i);
    let body = json!({
        "adapter": "IQAIR_DAILY",
        "endpoint": endpoint,
        "secret_key": SIM_KEY,
        "interval": INTERVAL_MS,
        "timeout": TIMEOUT_MS,
        "bucket_name": "bench",
        "params": {"lat": lat, "lon": lon},
        "rate_limit": {"per_minute": 0, "per_day": 0, "per_month": 0},
    });
    post_stream(client, api, &body).await
}

/// `POST /streams` with `body`; the new stream's id, or why there is none.
pub(crate) async fn post_stream(
    client: &reqwest::Client,
    api: &str,
    body: &Value,
) -> anyhow::Result<String> {
    let resp = client
        .post(format!("{api}/streams"))
        .json(body)
        .send()
        .await?;
    let status = resp.status();
    if status.as_u16() != 201 {
        bail!("POST /streams answered {status}: {}", resp.text().await?);
    }
    let stream: Value = resp.json().await?;
    stream["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("POST /streams answered without an id: {stream}"))
}

/// Waits (at most 120 s) until the worker holds all `n` streams.
pub(crate) async fn wait_assigned(
    client: &reqwest::Client,
    api: &str,
    n: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(resp) = client.get(format!("{api}/workers")).send().await {
            if let Ok(workers) = resp.json::<Value>().await {
                let held = workers
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|w| w["connected"] == true)
                    .filter_map(|w| w["streams"].as_u64())
                    .sum::<u64>();
                if held as usize >= n {
                    return Ok(());
                }
                last = workers;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("the worker did not get all {n} streams within 120 s: {last}")
}

#[cfg(test)]
mod tests {
    use super::started_in_line;

    #[test]
    fn started_streams_are_read_from_single_and_batched_start_lines() {
        let single = "2026-12-06T09:54:09.262604Z  INFO worker::calls: stream started every \
                      1000 ms stream_id=6f1c adapter=IQAIR_DAILY started=Started";
        let batch = "2026-12-06T09:54:09.262604Z  INFO worker::calls: streams started in one \
                     call started=1000 refused=0";
        let other = "2026-12-06T09:54:09.262604Z  INFO worker::link: connected to the supervisor";
        assert_eq!(started_in_line(single), 1);
        assert_eq!(started_in_line(batch), 1000);
        assert_eq!(started_in_line(other), 0);
    }
}
