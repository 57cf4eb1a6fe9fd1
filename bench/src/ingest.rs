//! The ingest benchmark: NDJSON pushed to a `PUSH` stream (`POST /streams/{id}/ingest`)
//! against the same server reading the same body and discarding it (`POST /ingest/void`, the
//! ceiling), side by side in one run.
//!
//! Real processes: `data-streams` on SQLite + the folder store, and on PostgreSQL + the S3 test
//! server when `BENCH_POSTGRES_URL` is set. One client (this process) sends each body as a
//! stream of 1 MiB chunks of whole lines over one connection. Records are small (200 bytes) or
//! large (10 KB); each size is pushed as 256 MiB (`--quick`: 32 MiB), then the same bytes go to
//! the void route. Figures per (backend, size): MB/s (10^6 bytes) and records/s of both, their
//! ratio, objects written, and the server's peak RSS during the push (sampled every 10 ms).
//! Last, one push of 1 GiB of large records on SQLite + folder gives the RSS under a long body.
//! Goals: the push ≥ 50% of the void route's MB/s on SQLite + folder; RSS < 200 MiB during the
//! 1 GiB push.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::pipeline::start_supervisor;
use crate::procs::{rss_bytes, Context, Proc};
use crate::report::{figure, note, ratio};

const MIB: u64 = 1024 * 1024;
/// The size of each chunk the client sends.
const CHUNK: usize = MIB as usize;

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(ingest(ctx))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    SqliteFolder,
    PostgresS3,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::SqliteFolder => "sqlite_folder",
            Backend::PostgresS3 => "postgres_s3",
        }
    }
}

async fn ingest(ctx: &Context) -> anyhow::Result<()> {
    let total = if ctx.quick { 32 * MIB } else { 256 * MIB };
    let long = if ctx.quick { 128 * MIB } else { 1024 * MIB };
    let mut backends = vec![Backend::SqliteFolder];
    match std::env::var("BENCH_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => backends.push(Backend::PostgresS3),
        _ => note("BENCH_POSTGRES_URL is not set: PostgreSQL + S3 skipped"),
    }
    for backend in backends {
        let system = format!("ingest_{}", backend.name());
        let dir = ctx.dir(&system)?;
        let server = Server::start(ctx, backend, &dir).await?;
        for (label, record) in [("small", 200usize), ("large", 10 * 1024)] {
            let chunk = chunk_of(record);
            let name = format!("{system}_{label}");
            let push = server.push(&chunk, total).await?;
            let void = server.void(&chunk, total).await?;
            let lines = (total as usize / chunk.len()
                * chunk.iter().filter(|b| **b == b'\n').count()) as f64;
            figure(&name, "record_bytes", record as f64);
            figure(&name, "mb", total as f64 / 1e6);
            figure(&name, "push_mb_per_s", total as f64 / 1e6 / push.seconds);
            figure(&name, "push_records_per_s", lines / push.seconds);
            figure(&name, "push_objects", push.objects as f64);
            figure(
                &name,
                "push_rss_peak_mib",
                push.rss_peak as f64 / MIB as f64,
            );
            figure(&name, "void_mb_per_s", total as f64 / 1e6 / void.seconds);
            figure(&name, "void_records_per_s", lines / void.seconds);
            figure(
                &name,
                "void_rss_peak_mib",
                void.rss_peak as f64 / MIB as f64,
            );
            let share = void.seconds / push.seconds;
            figure(&name, "push_over_void", share);
            if backend == Backend::SqliteFolder {
                ratio(&format!("mb_per_s {name}/void"), share, 0.5, true);
            }
        }
        if backend == Backend::SqliteFolder {
            let chunk = chunk_of(10 * 1024);
            let name = format!("{system}_long");
            note(format!("{name}: one push of {} MiB", long / MIB));
            let push = server.push(&chunk, long).await?;
            figure(&name, "mb", long as f64 / 1e6);
            figure(&name, "push_mb_per_s", long as f64 / 1e6 / push.seconds);
            figure(&name, "rss_before_mib", push.rss_before as f64 / MIB as f64);
            figure(&name, "rss_peak_mib", push.rss_peak as f64 / MIB as f64);
            ratio(
                &format!("rss_peak_mib {name}"),
                push.rss_peak as f64 / MIB as f64,
                200.0,
                false,
            );
        }
        server.stop().await;
    }
    Ok(())
}

/// About a MiB of whole NDJSON lines of `record` bytes each (`\n` included).
fn chunk_of(record: usize) -> Bytes {
    let head = "{\"device\":\"sensor-0042\",\"seq\":";
    let mut out = Vec::with_capacity(CHUNK + record);
    let mut seq = 0u64;
    while out.len() + record <= CHUNK {
        let start = format!("{head}{seq},\"pad\":\"");
        let pad = record.saturating_sub(start.len() + 3);
        out.extend_from_slice(start.as_bytes());
        out.extend(std::iter::repeat_n(b'x', pad));
        out.extend_from_slice(b"\"}\n");
        seq += 1;
    }
    Bytes::from(out)
}

struct Measured {
    seconds: f64,
    objects: u64,
    rss_before: u64,
    rss_peak: u64,
}

struct Server {
    proc: Proc,
    api: String,
    stream: String,
    client: reqwest::Client,
    _s3: Option<Proc>,
    pg: Option<String>,
}

impl Server {
    async fn start(ctx: &Context, backend: Backend, dir: &Path) -> anyhow::Result<Server> {
        let mut store_env: Vec<(&'static str, String)> = vec![
            ("INGEST_BENCH_VOID_ROUTE", "true".to_owned()),
            ("RUST_LOG", "warn,data_streams=info".to_owned()),
        ];
        let (database_url, s3, pg) = match backend {
            Backend::SqliteFolder => {
                store_env.push((
                    "OBJECT_STORE_URL",
                    format!("file://{}", dir.join("objects").display()),
                ));
                (
                    format!("sqlite://{}", dir.join("ds.db").display()),
                    None,
                    None,
                )
            }
            Backend::PostgresS3 => {
                let (url, name) = crate::pipeline::create_pg().await?;
                let (s3, env) = crate::pipeline::start_s3(ctx, dir)?;
                store_env.extend(env);
                (url, Some(s3), Some(name))
            }
        };
        let (proc, http, _) = start_supervisor(ctx, dir, &database_url, &store_env)?;
        let api = format!("http://{http}");
        let client = reqwest::Client::new();
        let stream = crate::pipeline::post_stream(
            &client,
            &api,
            &json!({"adapter": "PUSH", "bucket_name": "bench-push"}),
        )
        .await?;
        Ok(Server {
            proc,
            api,
            stream,
            client,
            _s3: s3,
            pg,
        })
    }

    async fn push(&self, chunk: &Bytes, total: u64) -> anyhow::Result<Measured> {
        let url = format!("{}/streams/{}/ingest", self.api, self.stream);
        let (measured, answer) = self.send(&url, chunk, total).await?;
        let objects = answer["result_ids"].as_array().map_or(0, Vec::len) as u64;
        if answer["accepted"].as_u64().is_none() {
            bail!("the push answered {answer}");
        }
        Ok(Measured {
            objects,
            ..measured
        })
    }

    async fn void(&self, chunk: &Bytes, total: u64) -> anyhow::Result<Measured> {
        let url = format!("{}/ingest/void", self.api);
        let (measured, answer) = self.send(&url, chunk, total).await?;
        if answer["bytes"].as_u64() != Some(total / chunk.len() as u64 * chunk.len() as u64) {
            bail!("the void route answered {answer}");
        }
        Ok(measured)
    }

    /// Sends `total` bytes (whole chunks) as one streamed NDJSON body; the time to the answer,
    /// the server's RSS before and at its peak, and the answer.
    async fn send(
        &self,
        url: &str,
        chunk: &Bytes,
        total: u64,
    ) -> anyhow::Result<(Measured, Value)> {
        let chunks = total / chunk.len() as u64;
        let pid = self.proc.pid();
        let rss_before = rss_bytes(pid)?;
        let peak = Arc::new(AtomicU64::new(rss_before));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if let Ok(rss) = rss_bytes(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let chunk = chunk.clone();
        let body = futures::stream::iter(
            (0..chunks).map(move |_| Ok::<Bytes, std::io::Error>(chunk.clone())),
        );
        let started = Instant::now();
        let response = self
            .client
            .post(url)
            .header("content-type", "application/x-ndjson")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let answer: Value = response.json().await?;
        let seconds = started.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        if !status.is_success() {
            bail!("POST {url} answered {status}: {answer}");
        }
        Ok((
            Measured {
                seconds,
                objects: 0,
                rss_before,
                rss_peak: peak.load(Ordering::Relaxed),
            },
            answer,
        ))
    }

    async fn stop(mut self) {
        self.proc.stop(Duration::from_secs(5));
        if let Some(name) = self.pg.take() {
            if let Err(err) = crate::pipeline::drop_pg(&name).await {
                note(format!("cannot drop the bench database {name}: {err}"));
            }
        }
    }
}
