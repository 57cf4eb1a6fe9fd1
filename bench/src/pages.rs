//! The pages benchmark: one `HTTP_JSON` run of 1,000 pages against `json-sim` answering each
//! page after 20 ms, with `page_concurrency` 1, 4, 16 and 64, side by side in one run. Is the
//! parallel run ≥ 10× faster, and does the worker's memory stay flat (no run holds its pages)?
//!
//! Real processes: `json-sim` (1,000,000 items, 1,000 per page: 1,000 pages of about 88 KB,
//! about 84 MiB in all, each answered after `page_delay_ms` 20), `data-streams` on SQLite + the
//! folder store, and for each concurrency a fresh `worker` (so each run's memory starts from an
//! idle worker). The stream is created through `POST /streams` while the worker is connected
//! (bearer auth, `page` pagination with `total_pages_pointer`, so pages after the first go in
//! parallel; records at `/data`; an hour's interval, so the run is the stream's only one); the
//! worker starts it at once (`WORKER_START_SPREAD_MS=0`). The run's own record
//! (`GET /streams/{id}/runs`) gives its duration, pages, bytes and attempts.
//!
//! Figures per concurrency (`pages_c<N>`): `duration_ms` (the record's, start to end in the
//! worker), `ideal_ms` (the first page, then `ceil(999 / N)` rounds of 20 ms: the delay alone),
//! `pages_per_s`, `mb_per_s` (10^6 bytes), `speedup` (over concurrency 1), `sim_max_in_flight`
//! (`GET /admin/stats`: pages the simulator answered at once), the worker's RSS before the run,
//! its peak during it (`VmHWM`, reset before the run through `/proc/<pid>/clear_refs`, and the
//! peak of a 5 ms sampler; the larger), after it, `rss_growth_mib` (peak − before) and
//! `rss_late_growth_mib` (peak − the highest RSS in the run's first tenth: a run that held its
//! pages would keep growing to the end), and the CPU of the worker and the simulator over the
//! run. Ratios: the speed-up at 16 over 1 (goal ≥ 10), and each run's RSS growth (goal below
//! [`FLAT_MIB`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};

use crate::pipeline::{after, post_stream, start_supervisor, worker_env};
use crate::procs::{cpu_seconds, Context, Proc};
use crate::report::{figure, note, ratio};

/// The simulator's one credential (sent as a bearer token).
const SIM_SECRET: &str = "bench-pages-secret";
/// Items per page: the simulator's maximum, so that the pages are large.
const PER_PAGE: u64 = 1_000;
/// How long the simulator waits before answering each page.
const PAGE_DELAY_MS: u64 = 20;
/// The memory goal: a run's RSS growth (peak − before) stays below this. Holding all 1,000
/// pages' bytes alone would take about 84 MiB, more than five times as much.
const FLAT_MIB: f64 = 16.0;
/// Every run must end within this (the stream's timeout; the record says if it did not).
const RUN_TIMEOUT_MS: u64 = 120_000;
/// The stream's interval: an hour, so the bench sees exactly one run per stream.
const INTERVAL_MS: u64 = 3_600_000;
/// How often the sampler reads the worker's RSS.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

const MIB: f64 = 1024.0 * 1024.0;

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(pages(ctx))
}

/// What one run measured.
struct Measured {
    concurrency: u64,
    duration_ms: f64,
    rss_growth_mib: f64,
}

async fn pages(ctx: &Context) -> anyhow::Result<()> {
    // --quick: 100 pages and two concurrencies, to check the harness.
    let (page_count, concurrencies): (u64, &[u64]) = if ctx.quick {
        (100, &[1, 16])
    } else {
        (1_000, &[1, 4, 16, 64])
    };
    let dir = ctx.dir("pages")?;
    let (sim, sim_addr) = start_json_sim(ctx, &dir, page_count * PER_PAGE)?;
    let objects = dir.join("objects");
    let store_env = vec![("OBJECT_STORE_URL", format!("file://{}", objects.display()))];
    let database_url = format!("sqlite://{}", dir.join("ds.db").display());
    let (supervisor, http, worker_addr) = start_supervisor(ctx, &dir, &database_url, &store_env)?;
    let api = format!("http://{http}");
    let sim_base = format!("http://{sim_addr}");
    let client = reqwest::Client::new();

    let ideal = |c: u64| PAGE_DELAY_MS as f64 * (1 + (page_count - 1).div_ceil(c)) as f64;
    let mut measured = Vec::new();
    for &c in concurrencies {
        let system = format!("pages_c{c}");
        note(format!(
            "{system}: {page_count} pages, page_concurrency {c}"
        ));
        let mut worker_env = worker_env(&worker_addr, 10, &store_env);
        for (key, value) in worker_env.iter_mut() {
            if *key == "WORKER_ID" {
                *value = format!("bench-pages-c{c}");
            }
        }
        worker_env.push(("WORKER_START_SPREAD_MS", "0".to_owned()));
        let (mut worker, _) = Proc::start(
            &format!("worker-c{c}"),
            &ctx.bin("worker")?,
            &[],
            &worker_env,
            "worker starting",
            &dir,
        )?;
        wait_connected(&client, &api, &format!("bench-pages-c{c}")).await?;
        // Let the fresh worker settle (link, first acknowledgements) before "before".
        tokio::time::sleep(Duration::from_millis(500)).await;

        let run = one_run(
            &client,
            &api,
            &sim_base,
            &worker,
            sim.pid(),
            c,
            page_count,
            &system,
        )
        .await
        .with_context(|| format!("{system} failed"))?;
        worker.stop(Duration::from_secs(5));

        let speedup = measured
            .first()
            .map_or(1.0, |first: &Measured| first.duration_ms / run.duration_ms);
        figure(&system, "ideal_ms", ideal(c));
        figure(&system, "speedup", speedup);
        measured.push(run);
    }

    let one = measured.iter().find(|m| m.concurrency == 1);
    let sixteen = measured.iter().find(|m| m.concurrency == 16);
    if let (Some(one), Some(sixteen)) = (one, sixteen) {
        ratio(
            "duration_ms pages_c1/pages_c16",
            one.duration_ms / sixteen.duration_ms,
            10.0,
            true,
        );
    }
    for m in &measured {
        ratio(
            &format!("rss_growth_mib pages_c{}", m.concurrency),
            m.rss_growth_mib,
            FLAT_MIB,
            false,
        );
    }
    drop(supervisor);
    drop(sim);
    Ok(())
}

/// `json-sim` with `items` items and the page delay; returns it and its `host:port`.
fn start_json_sim(ctx: &Context, logs: &Path, items: u64) -> anyhow::Result<(Proc, String)> {
    let (proc, line) = Proc::start(
        "json-sim",
        &ctx.bin("json-sim")?,
        &[],
        &[
            ("JSON_SIM_ADDR", "127.0.0.1:0".to_owned()),
            ("JSON_SIM_SECRET", SIM_SECRET.to_owned()),
            ("JSON_SIM_ITEMS", items.to_string()),
            ("JSON_SIM_PAGE_DELAY_MS", PAGE_DELAY_MS.to_string()),
        ],
        "json-sim listening on",
        logs,
    )?;
    let addr = after(&line, "listening on http://")
        .ok_or_else(|| anyhow!("cannot read json-sim's address from {line:?}"))?;
    Ok((proc, addr))
}

/// One stream, one run of `page_count` pages at concurrency `c`; prints its figures.
#[allow(clippy::too_many_arguments)]
async fn one_run(
    client: &reqwest::Client,
    api: &str,
    sim_base: &str,
    worker: &Proc,
    sim_pid: u32,
    c: u64,
    page_count: u64,
    system: &str,
) -> anyhow::Result<Measured> {
    let pid = worker.pid();
    let admin = |path: &str| format!("{sim_base}/admin/{path}");
    ensure_ok(
        client.post(admin("reset")).send().await?,
        "POST /admin/reset",
    )
    .await?;

    let rss_before = status_kib(pid, "VmRSS")? as f64 * 1024.0;
    // Writing 5 resets the peak RSS (VmHWM) to the current RSS (Linux ≥ 4.0, own processes).
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    if !hwm_reset {
        note(format!(
            "{system}: cannot reset VmHWM; the peak is the sampler's"
        ));
    }
    let sampler = Sampler::start(pid);
    let (worker_cpu, sim_cpu) = (cpu_seconds(pid)?, cpu_seconds(sim_pid)?);

    let body = json!({
        "adapter": "HTTP_JSON",
        "endpoint": format!("{sim_base}/bearer/items/page"),
        "secret_key": SIM_SECRET,
        "interval": INTERVAL_MS,
        "timeout": RUN_TIMEOUT_MS,
        "bucket_name": "pages",
        "request": {"auth": {"kind": "bearer"}},
        "pagination": {
            "kind": "page",
            "param": "page",
            "size_param": "per_page",
            "size": PER_PAGE,
            "total_pages_pointer": "/meta/total_pages",
        },
        "records": "/data",
        "max_pages": page_count,
        "page_concurrency": c,
        "rate_limit": {"per_minute": 0, "per_day": 0, "per_month": 0},
    });
    let id = post_stream(client, api, &body).await?;

    let record = wait_run(client, api, &id).await?;
    let (worker_cpu, sim_cpu) = (
        cpu_seconds(pid)? - worker_cpu,
        cpu_seconds(sim_pid)? - sim_cpu,
    );
    let samples = sampler.stop();
    let hwm = if hwm_reset {
        status_kib(pid, "VmHWM")? as f64 * 1024.0
    } else {
        0.0
    };
    let rss_after = status_kib(pid, "VmRSS")? as f64 * 1024.0;
    let stats: Value = client.get(admin("stats")).send().await?.json().await?;
    // Stopped, so that nothing of this stream runs beside the next concurrency's.
    ensure_ok(
        client
            .post(format!("{api}/streams/{id}/stop"))
            .send()
            .await?,
        "POST /streams/{id}/stop",
    )
    .await?;

    let run_status = record["status"].as_str().unwrap_or("?");
    let field = |name: &str| -> anyhow::Result<f64> {
        record[name]
            .as_f64()
            .ok_or_else(|| anyhow!("the run record has no {name}: {record}"))
    };
    let duration_ms = field("duration_ms")?.max(1.0);
    let (pages, bytes, attempts) = (field("pages")?, field("bytes")?, field("attempts")?);
    if run_status != "stored" || pages as u64 != page_count {
        bail!("the run ended {run_status} with {pages} of {page_count} pages: {record}");
    }

    // The sampler's clock and the record's are the same machine's wall clock.
    let (started, finished) = (
        epoch_ms_of(&record["started_at"])?,
        epoch_ms_of(&record["finished_at"])?,
    );
    let first_tenth = started + (finished - started) / 10.0;
    let during: Vec<&(f64, u64)> = samples
        .iter()
        .filter(|(at, _)| *at >= started && *at <= finished)
        .collect();
    let sampled_peak = during.iter().map(|(_, b)| *b).max().unwrap_or(0) as f64;
    let early_peak = during
        .iter()
        .filter(|(at, _)| *at <= first_tenth)
        .map(|(_, b)| *b)
        .max()
        .map_or(rss_before, |b| b as f64);
    let peak = hwm.max(sampled_peak).max(rss_before);
    let seconds = duration_ms / 1_000.0;

    figure(system, "duration_ms", duration_ms);
    figure(system, "pages", pages);
    figure(system, "attempts", attempts);
    figure(system, "bytes", bytes);
    figure(system, "pages_per_s", pages / seconds);
    figure(system, "mb_per_s", bytes / 1e6 / seconds);
    figure(
        system,
        "sim_max_in_flight",
        stats["max_in_flight"].as_f64().unwrap_or(f64::NAN),
    );
    figure(system, "rss_before_mib", rss_before / MIB);
    figure(system, "rss_peak_mib", peak / MIB);
    figure(system, "rss_after_mib", rss_after / MIB);
    figure(system, "rss_growth_mib", (peak - rss_before) / MIB);
    figure(system, "rss_late_growth_mib", (peak - early_peak) / MIB);
    figure(system, "rss_samples", during.len() as f64);
    // CPU over the bench's view of the run (stream creation to the record's end, plus polling).
    figure(system, "cpu_s_worker", worker_cpu);
    figure(system, "cpu_s_json-sim", sim_cpu);
    Ok(Measured {
        concurrency: c,
        duration_ms,
        rss_growth_mib: (peak - rss_before) / MIB,
    })
}

/// Waits (at most 60 s) until the worker `id` is connected to the supervisor.
async fn wait_connected(client: &reqwest::Client, api: &str, id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(resp) = client.get(format!("{api}/workers")).send().await {
            if let Ok(workers) = resp.json::<Value>().await {
                let connected = workers
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|w| w["id"] == id && w["connected"] == true);
                if connected {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("worker {id} did not connect within 60 s")
}

/// Waits until the stream's first run has finished (at most the run's timeout and a margin);
/// returns its record.
async fn wait_run(client: &reqwest::Client, api: &str, id: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_millis(RUN_TIMEOUT_MS + 30_000);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let resp = client
            .get(format!("{api}/streams/{id}/runs?limit=1"))
            .send()
            .await?;
        if resp.status().is_success() {
            let page: Value = resp.json().await?;
            if let Some(run) = page["items"].get(0) {
                if !run["finished_at"].is_null() {
                    return Ok(run.clone());
                }
                last = run.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the run of stream {id} did not finish in time; last seen: {last}")
}

async fn ensure_ok(resp: reqwest::Response, what: &str) -> anyhow::Result<()> {
    let status = resp.status();
    if !status.is_success() {
        bail!("{what} answered {status}: {}", resp.text().await?);
    }
    Ok(())
}

/// An RFC 3339 time of a record, as epoch milliseconds.
fn epoch_ms_of(value: &Value) -> anyhow::Result<f64> {
    let text = value
        .as_str()
        .ok_or_else(|| anyhow!("not a time: {value}"))?;
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("not an RFC 3339 time: {text}"))?;
    Ok(at.timestamp_millis() as f64)
}

/// One `Vm…:` line of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .ok_or_else(|| anyhow!("no {field} for pid {pid}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad {field} line {line:?}"))?
        .parse()?)
}

/// A thread reading a process's RSS every [`SAMPLE_EVERY`]: (wall clock in epoch ms, bytes).
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(f64, u64)>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(kib) = status_kib(pid, "VmRSS") {
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs_f64()
                            * 1_000.0;
                        if let Ok(mut samples) = samples.lock() {
                            samples.push((now, kib * 1024));
                        }
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        Sampler {
            stop,
            samples,
            thread,
        }
    }

    fn stop(self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let mut samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        samples
    }
}
