//! The control link against the NestJS TCP peer it replaces, and against a bare length-delimited
//! echo (the ceiling of any framed protocol over loopback on this machine), with one workload:
//!
//! - calls: N `worker:start` round trips with C callers in flight on one connection (C = 1, 64);
//!   per second, p50 and p99 latency;
//! - events: M `data-streams:results` events one way; per second from the first send until the
//!   receiver counted the M-th (for our link: and acknowledged it, cumulatively, as the supervisor
//!   does after its commit).
//!
//! Warm-up first (5,000 calls at C = 16 and 20,000 events), as the peer does. `--quick` divides
//! every count by 10. For profiling one system: `BENCH_PROTOCOL_SYSTEMS` (a comma list of
//! `data_streams`, `nestjs_tcp`, `limit`; ratios print only for pairs that ran),
//! `BENCH_PROTOCOL_N` and `BENCH_PROTOCOL_M` (the measured counts), `BENCH_PROTOCOL_CONCS` (a
//! comma list of call concurrencies, `1,64` by default; ratios need both).
//!
//! Threads: the machine has 2 cores, and the peer runs as two single-threaded node processes
//! (client and server). Ours runs the same shape: each side of the link (and each side of the
//! echo) is a current-thread tokio runtime on its own OS thread, in this process, over loopback
//! TCP. The supervisor side (listens, makes the calls, receives and acks the events, measures)
//! runs on the calling thread; the worker side (dials, answers the calls, sends the events) on a
//! second thread. Timestamps from both threads come from one monotonic clock (`Instant`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use protocol::handshake::{self, WorkerIdentity};
use protocol::link::{self, Incoming, LinkConfig, LinkHandle};
use protocol::{
    codec, Call, Connection, Event, Frame, RateLimit, Reply, ResultRecord, Schedule, StreamConfig,
    Welcome,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use uuid::Uuid;

use crate::procs::{self, Context};
use crate::report::{figure, note, pct, ratio, ratio_info};

const DS: &str = "data_streams";
const NEST: &str = "nestjs_tcp";
const LIMIT: &str = "limit";

const TOKEN: &[u8] = b"bench-token";
const EXPECTED: &str = "Started fetching from adapter IQAIR_DAILY.";
/// Distinct events cycled through, as the peer does (1,024 distinct UUIDs).
const POOL: usize = 1024;
/// Every wait on the other side gives up after this long (a hang is a failed run).
const STUCK: Duration = Duration::from_secs(120);
/// Concurrency of the warm-up calls (the peer's).
const WARM_CONC: usize = 16;

#[derive(Debug, Clone)]
struct Workload {
    calls: usize,
    concs: Vec<usize>,
    events: usize,
    warm_calls: usize,
    warm_events: usize,
}

/// One system's figures, by the peer's metric names.
type Figures = HashMap<String, f64>;

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let div = if ctx.quick { 10 } else { 1 };
    // Development knobs (profiling one system with bigger counts); the defaults are the peer's.
    let env_count = |name: &str, default: usize| -> anyhow::Result<usize> {
        match std::env::var(name) {
            Ok(v) => v
                .parse()
                .with_context(|| format!("{name}={v:?} is not a count")),
            Err(_) => Ok(default),
        }
    };
    let w = Workload {
        calls: env_count("BENCH_PROTOCOL_N", 50_000 / div)?,
        concs: match std::env::var("BENCH_PROTOCOL_CONCS") {
            Ok(v) => v
                .split(',')
                .map(|c| c.trim().parse())
                .collect::<Result<_, _>>()
                .with_context(|| format!("BENCH_PROTOCOL_CONCS={v:?} is not a list of counts"))?,
            Err(_) => vec![1, 64],
        },
        events: env_count("BENCH_PROTOCOL_M", 200_000 / div)?,
        warm_calls: 5_000 / div,
        warm_events: 20_000 / div,
    };
    let systems =
        std::env::var("BENCH_PROTOCOL_SYSTEMS").unwrap_or_else(|_| format!("{DS},{NEST},{LIMIT}"));
    let wanted = |system: &str| systems.split(',').any(|s| s.trim() == system);
    note(format!(
        "protocol: N={} calls at C={:?}, M={} events, warm-up {} calls and {} events",
        w.calls, w.concs, w.events, w.warm_calls, w.warm_events
    ));

    // Ours first, the peer in the middle (its npm ci and tsc take a while), the ceiling last.
    let ds = if wanted(DS) {
        note("protocol: data_streams (protocol crate, loopback TCP, handshake, acks)");
        let ds = data_streams(&w).context("data_streams link benchmark")?;
        print_figures(DS, &ds);
        Some(ds)
    } else {
        None
    };
    let nest = if wanted(NEST) {
        note("protocol: nestjs_tcp (peer run.sh)");
        Some(nestjs(ctx, &w))
    } else {
        None
    };
    let lim = if wanted(LIMIT) {
        note("protocol: limit (bare length-delimited echo)");
        let lim = limit(&w).context("limit echo benchmark")?;
        print_figures(LIMIT, &lim);
        Some(lim)
    } else {
        None
    };
    let nest = nest.transpose()?;

    let get = |f: &Figures, system: &str, metric: &str| -> anyhow::Result<f64> {
        f.get(metric)
            .copied()
            .ok_or_else(|| anyhow!("{system} printed no {metric}"))
    };
    if let (Some(ds), Some(nest)) = (&ds, &nest) {
        for metric in ["call_c1_per_s", "call_c64_per_s", "events_per_s"] {
            let v = get(ds, DS, metric)? / get(nest, NEST, metric)?;
            ratio(&format!("{metric} {DS}/{NEST}"), v, 10.0, true);
        }
        for metric in ["call_c1_p99_us", "call_c64_p99_us"] {
            let v = get(ds, DS, metric)? / get(nest, NEST, metric)?;
            ratio(&format!("{metric} {DS}/{NEST}"), v, 0.1, false);
        }
    }
    if let (Some(ds), Some(lim)) = (&ds, &lim) {
        // For information: how close to the bare ceiling our encoding, actor and acks run.
        for metric in ["call_c1_per_s", "call_c64_per_s", "events_per_s"] {
            let v = get(ds, DS, metric)? / get(lim, LIMIT, metric)?;
            ratio_info(&format!("{metric} {DS}/{LIMIT}"), v);
        }
    }
    Ok(())
}

fn print_figures(system: &str, f: &Figures) {
    for metric in METRICS {
        if let Some(v) = f.get(*metric) {
            figure(system, metric, *v);
        }
    }
}

const METRICS: &[&str] = &[
    "call_c1_per_s",
    "call_c1_p50_us",
    "call_c1_p99_us",
    "call_c64_per_s",
    "call_c64_p50_us",
    "call_c64_p99_us",
    "events_per_s",
];

// ---------------------------------------------------------------------------------------------
// The workload's payloads.

/// The peer's seed `worker:start` payload as a stream config: adapter, endpoint, secret_key,
/// interval 300000, timeout 180000, bucket_name.
fn start_config() -> StreamConfig {
    StreamConfig {
        stream_id: Uuid::now_v7(),
        generation: 1,
        adapter: "IQAIR_DAILY".into(),
        endpoint: "http://api.airvisual.com/v2/nearest_city".into(),
        secret_key: "k".into(),
        schedule: Schedule::Interval { millis: 300_000 },
        timeout_ms: 180_000,
        bucket_name: "results".into(),
        params: BTreeMap::new(),
        rate_limit: RateLimit::COMMUNITY,
        source: String::new(),
        window_start_ms: None,
    }
}

/// The reference of one stored object, like the peer's `{adapter, payload:{id, filename},
/// timestamp}` (ours carries more: bucket, key, times, size, SHA-256), without a measurement.
fn result_pool() -> Vec<Event> {
    let stream_id = Uuid::now_v7();
    (0..POOL)
        .map(|i| {
            let result_id = Uuid::now_v7();
            Event::Results(Arc::new(ResultRecord {
                result_id,
                stream_id,
                adapter: "IQAIR_DAILY".into(),
                bucket: "results".into(),
                key: format!("IQAIR_DAILY/stream_id={stream_id}/dt=2022-03-05/{result_id}.json"),
                fetched_at_ms: 1_646_496_980_000 + i as i64,
                scheduled_at_ms: 1_646_496_979_000 + i as i64,
                started_at_ms: 1_646_496_979_010 + i as i64,
                size: 1_234,
                sha256: format!("{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15),
                measurement: None,
                run_id: uuid::Uuid::now_v7(),
                page: 0,
                records: None,
                attempts: 1,
                ends_run: true,
            }))
        })
        .collect()
}

fn histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("static bounds are valid")
}

fn call_figures(f: &mut Figures, c: usize, n: usize, elapsed: Duration, h: &Histogram<u64>) {
    f.insert(format!("call_c{c}_per_s"), n as f64 / elapsed.as_secs_f64());
    f.insert(format!("call_c{c}_p50_us"), pct(h, 50.0) / 1e3);
    f.insert(format!("call_c{c}_p99_us"), pct(h, 99.0) / 1e3);
}

/// Run `side` on a new OS thread with its own current-thread runtime.
fn spawn_side<F, Fut>(name: &str, side: F) -> std::thread::JoinHandle<anyhow::Result<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(side())
        })
        .expect("spawning a thread")
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn join_side(side: std::thread::JoinHandle<anyhow::Result<()>>, what: &str) -> anyhow::Result<()> {
    side.join()
        .map_err(|_| anyhow!("the {what} thread panicked"))?
        .with_context(|| format!("the {what} side failed"))
}

// ---------------------------------------------------------------------------------------------
// data_streams: the protocol crate with the real handshake, link actor and acks.

/// What the supervisor side asks the worker side to do.
enum Cmd {
    /// Send `count` events numbered from `first_seq`; say when the first one goes out.
    Events {
        first_seq: u64,
        count: usize,
        started: tokio::sync::oneshot::Sender<Instant>,
    },
}

fn data_streams(w: &Workload) -> anyhow::Result<Figures> {
    let rt = current_thread()?;
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel::<Cmd>();
    // The highest cumulative ack the worker side has received.
    let acked = Arc::new(AtomicU64::new(0));
    let worker = spawn_side("ds-worker", {
        let acked = acked.clone();
        move || worker_side(addr, cmd_rx, acked)
    });
    let result = rt.block_on(supervisor_side(listener, w, cmd_tx, &acked));
    // On success the worker side ends when the supervisor closes the link.
    let joined = join_side(worker, "data_streams worker");
    let figures = result?;
    joined?;
    Ok(figures)
}

/// The worker's part: dial, hello, answer every `worker:start` like worker/src/link.rs does, and
/// send numbered events on command, one `link.event` each like the worker's sender.
async fn worker_side(
    addr: std::net::SocketAddr,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let mut conn = Connection::new(socket, codec::DEFAULT_MAX_FRAME);
    let identity = WorkerIdentity {
        worker_id: "bench-worker".into(),
        capacity: 10_000,
        adapters: vec!["IQAIR_DAILY".into()],
        running: 0,
    };
    let welcome = handshake::connect(&mut conn, TOKEN, identity, Duration::from_secs(10)).await?;
    let config = LinkConfig {
        heartbeat_interval: Duration::from_millis(welcome.heartbeat_interval_ms),
        heartbeat_timeout: Duration::from_millis(welcome.heartbeat_timeout_ms),
        ..LinkConfig::default()
    };
    let (link, mut incoming, task) = link::spawn(conn, config);
    let pool = Arc::new(result_pool());
    let mut cmds_open = true;
    loop {
        tokio::select! {
            msg = incoming.recv() => match msg {
                Some(Incoming::Call { id, call }) => {
                    let reply = match *call {
                        Call::Start(config) => {
                            Reply::ok(format!("Started fetching from adapter {}.", config.adapter))
                        }
                        other => Reply::err(format!("unexpected call {}", other.name())),
                    };
                    let _ = link.reply(id, reply).await;
                }
                Some(Incoming::Ack { seq }) => acked.store(seq, Ordering::Release),
                Some(Incoming::Event { .. }) => bail!("the supervisor sent an event"),
                None => break,
            },
            cmd = cmds.recv(), if cmds_open => match cmd {
                Some(Cmd::Events { first_seq, count, started }) => {
                    tokio::spawn(send_events(link.clone(), pool.clone(), first_seq, count, started));
                }
                None => cmds_open = false,
            },
        }
    }
    match task.await? {
        Ok(()) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

async fn send_events(
    link: LinkHandle,
    pool: Arc<Vec<Event>>,
    first_seq: u64,
    count: usize,
    started: tokio::sync::oneshot::Sender<Instant>,
) {
    let _ = started.send(Instant::now());
    for i in 0..count {
        // A clone per event, as the worker's outbox hands out clones.
        let event = pool[i % POOL].clone();
        if link.event(first_seq + i as u64, event).await.is_err() {
            return;
        }
    }
}

/// The supervisor's part: accept, challenge, then the calls, then the events, acked cumulatively
/// after each drained batch (what data-streams/src/workers.rs does after its commit).
async fn supervisor_side(
    listener: TcpListener,
    w: &Workload,
    cmds: mpsc::UnboundedSender<Cmd>,
    acked: &AtomicU64,
) -> anyhow::Result<Figures> {
    let (socket, _) = tokio::time::timeout(STUCK, listener.accept()).await??;
    socket.set_nodelay(true)?;
    let mut conn = Connection::new(socket, codec::DEFAULT_MAX_FRAME);
    let welcome = Welcome {
        heartbeat_interval_ms: 5_000,
        heartbeat_timeout_ms: 15_000,
    };
    let hello = handshake::accept(&mut conn, TOKEN, welcome, Duration::from_secs(10)).await?;
    anyhow::ensure!(
        hello.worker_id == "bench-worker",
        "unexpected hello {hello:?}"
    );
    let (link, mut incoming, task) = link::spawn(
        conn,
        LinkConfig {
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            ..LinkConfig::default()
        },
    );
    let config = start_config();
    let mut figures = Figures::new();

    ds_calls(&link, &config, w.warm_calls, WARM_CONC).await?;
    let mut next_seq = 1u64;
    ds_events(&link, &mut incoming, &cmds, acked, next_seq, w.warm_events).await?;
    next_seq += w.warm_events as u64;
    for &c in &w.concs {
        let (elapsed, h) = ds_calls(&link, &config, w.calls, c).await?;
        call_figures(&mut figures, c, w.calls, elapsed, &h);
    }
    let elapsed = ds_events(&link, &mut incoming, &cmds, acked, next_seq, w.events).await?;
    figures.insert(
        "events_per_s".into(),
        w.events as f64 / elapsed.as_secs_f64(),
    );

    link.close().await;
    drop(cmds);
    tokio::time::timeout(STUCK, task)
        .await
        .map_err(|_| anyhow!("the link did not close"))???;
    Ok(figures)
}

/// `n` `worker:start` calls by `c` concurrent callers; the elapsed time and the latencies.
async fn ds_calls(
    link: &LinkHandle,
    config: &StreamConfig,
    n: usize,
    c: usize,
) -> anyhow::Result<(Duration, Histogram<u64>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let callers: Vec<_> = (0..c)
        .map(|_| {
            let link = link.clone();
            let config = config.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let s = Instant::now();
                    let reply = link.call(Call::Start(config.clone()), STUCK).await?;
                    h.record(s.elapsed().as_nanos() as u64)?;
                    if !reply.success || reply.message != EXPECTED {
                        bail!("wrong worker:start reply {reply:?}");
                    }
                }
                Ok::<_, anyhow::Error>(h)
            })
        })
        .collect();
    let mut h = histogram();
    for caller in callers {
        h.add(caller.await??)?;
    }
    Ok((t0.elapsed(), h))
}

/// Have the worker side send `count` events from `first_seq`; count them here, acking the
/// highest sequence number after every drained batch; the time from the first send to the
/// moment the last one was counted. Then wait (untimed) until the worker saw the final ack.
async fn ds_events(
    link: &LinkHandle,
    incoming: &mut mpsc::Receiver<Incoming>,
    cmds: &mpsc::UnboundedSender<Cmd>,
    acked: &AtomicU64,
    first_seq: u64,
    count: usize,
) -> anyhow::Result<Duration> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    cmds.send(Cmd::Events {
        first_seq,
        count,
        started: started_tx,
    })
    .map_err(|_| anyhow!("the worker side is gone"))?;
    let last_seq = first_seq + count as u64 - 1;
    let mut counted = 0usize;
    let mut expect = first_seq;
    let mut batch = Vec::with_capacity(1024);
    let done = loop {
        let n = tokio::time::timeout(STUCK, incoming.recv_many(&mut batch, 1024))
            .await
            .map_err(|_| anyhow!("no event for {STUCK:?} after {counted} of {count}"))?;
        if n == 0 {
            bail!("the link closed after {counted} of {count} events");
        }
        for msg in batch.drain(..) {
            match msg {
                Incoming::Event {
                    seq,
                    event: Event::Results(_),
                } => {
                    anyhow::ensure!(seq == expect, "event {seq} arrived, expected {expect}");
                    expect += 1;
                    counted += 1;
                }
                other => bail!("unexpected {other:?} during the events"),
            }
        }
        // Cumulative ack of everything counted so far (the supervisor acks after its commit).
        link.ack(expect - 1).await?;
        if counted == count {
            break Instant::now();
        }
    };
    // The last ack's arrival at the worker side (not timed).
    let started = started_rx.await?;
    let deadline = Instant::now() + STUCK;
    while acked.load(Ordering::Acquire) < last_seq {
        if Instant::now() > deadline {
            bail!("the worker never saw ack {last_seq}");
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(done.duration_since(started))
}

// ---------------------------------------------------------------------------------------------
// nestjs_tcp: the peer's own run.sh.

fn nestjs(ctx: &Context, w: &Workload) -> anyhow::Result<Figures> {
    let result = nestjs_inner(ctx, w);
    if let Err(err) = &result {
        note(format!("nestjs_tcp failed: {err:#}"));
    }
    result
}

fn nestjs_inner(ctx: &Context, w: &Workload) -> anyhow::Result<Figures> {
    let src = std::env::var_os("NESTJS_PEER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/peers/nestjs-tcp"));
    for tool in ["node", "npm"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            bail!("`{tool}` is not installed or not on PATH; the peer needs Node 20 and npm");
        }
    }
    if !src.join("run.sh").exists() {
        bail!(
            "no peer at {} (set NESTJS_PEER_DIR to the nestjs-tcp folder)",
            src.display()
        );
    }
    let dir = ctx.dir("nestjs-tcp")?;
    copy_tree(&src, &dir)?;
    let log = ctx.work.path().join("nestjs-tcp.log");
    let port = procs::free_addr()?.port();
    let stderr = std::fs::File::create(&log)?;
    let mut child = Command::new("bash")
        .arg("run.sh")
        .current_dir(&dir)
        .env("PORT", port.to_string())
        .env("N", w.calls.to_string())
        .env(
            "CONCS",
            w.concs
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .env("M", w.events.to_string())
        .env("WARM_CALLS", w.warm_calls.to_string())
        .env("WARM_EVENTS", w.warm_events.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("cannot start the peer's run.sh")?;
    let mut figures = Figures::new();
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(NEST), Some(metric), Some(value), None) => {
                // Passed through as printed; parsed for the ratios.
                println!("{line}");
                if let Ok(v) = value.parse::<f64>() {
                    figures.insert(metric.to_owned(), v);
                }
            }
            _ => note(format!("nestjs_tcp: {line}")),
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "the peer's run.sh exited with {status}; log {}:\n{}",
            log.display(),
            tail(&log, 20)
        );
    }
    for metric in METRICS {
        if !figures.contains_key(*metric) {
            bail!(
                "the peer printed no {metric}; log {}:\n{}",
                log.display(),
                tail(&log, 20)
            );
        }
    }
    Ok(figures)
}

/// Copy a folder, leaving out `node_modules` and `dist` (run.sh installs and builds afresh).
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "node_modules" || name == "dist" {
            continue;
        }
        let kind = entry.file_type()?;
        let target = to.join(&name);
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The last `n` lines of a log file (the temp folder is removed when the run ends).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// limit: a bare length-delimited echo, no encoding, the same sizes and counts.

fn limit(w: &Workload) -> anyhow::Result<Figures> {
    let config = start_config();
    let call_len = codec::encode(&Frame::Call {
        id: 1_000_000,
        call: Box::new(Call::Start(config)),
    })?
    .len();
    let pool = result_pool();
    let event_len = codec::encode(&Frame::Event {
        seq: 1_000_000,
        event: pool[0].clone(),
    })?
    .len();
    let call_body = Bytes::from(vec![0x5a; call_len]);
    let event_body = Bytes::from(vec![0xa5; event_len]);

    let rt = current_thread()?;
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    // When the server counted the last event of a run.
    let counted_at = Arc::new(Mutex::new(None));
    let server = spawn_side("limit-server", {
        let counted_at = counted_at.clone();
        move || echo_server(listener_std(listener), counted_at)
    });
    let result = rt.block_on(async {
        let socket = TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        let (rd, wr) = socket.into_split();
        let mut rd = FramedRead::new(rd, LengthDelimitedCodec::new());
        let mut wr = FramedWrite::new(wr, LengthDelimitedCodec::new());
        let mut f = Figures::new();
        echo_calls(&mut rd, &mut wr, &call_body, w.warm_calls, WARM_CONC).await?;
        echo_events(&mut rd, &mut wr, &event_body, w.warm_events, &counted_at).await?;
        for &c in &w.concs {
            let (elapsed, h) = echo_calls(&mut rd, &mut wr, &call_body, w.calls, c).await?;
            call_figures(&mut f, c, w.calls, elapsed, &h);
        }
        let elapsed = echo_events(&mut rd, &mut wr, &event_body, w.events, &counted_at).await?;
        f.insert(
            "events_per_s".into(),
            w.events as f64 / elapsed.as_secs_f64(),
        );
        SinkExt::<Bytes>::close(&mut wr).await?;
        Ok::<_, anyhow::Error>(f)
    });
    let joined = join_side(server, "limit echo server");
    let figures = result?;
    joined?;
    Ok(figures)
}

fn listener_std(listener: TcpListener) -> std::net::TcpListener {
    listener
        .into_std()
        .expect("a tokio listener converts to std")
}

type EchoRead = FramedRead<tokio::net::tcp::OwnedReadHalf, LengthDelimitedCodec>;
type EchoWrite = FramedWrite<tokio::net::tcp::OwnedWriteHalf, LengthDelimitedCodec>;

/// The echo's protocol: frames starting with 0x5a are calls, echoed as they are. An 8-byte frame
/// announces how many events follow; events (other frames) are counted, and when the count
/// reaches the announced number the server notes the time and answers with an 8-byte frame.
async fn echo_server(
    listener: std::net::TcpListener,
    counted_at: Arc<Mutex<Option<Instant>>>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let (socket, _) = tokio::time::timeout(STUCK, listener.accept()).await??;
    socket.set_nodelay(true)?;
    let (rd, wr) = socket.into_split();
    let mut rd = FramedRead::new(rd, LengthDelimitedCodec::new());
    let mut wr = FramedWrite::new(wr, LengthDelimitedCodec::new());
    let mut target = 0u64;
    let mut counted = 0u64;
    while let Some(frame) = rd.next().await {
        let mut frame = frame?;
        // Handle everything readable now, then flush once.
        loop {
            match frame.len() {
                8 => {
                    target = u64::from_be_bytes(frame[..8].try_into().expect("8 bytes"));
                    counted = 0;
                }
                _ if frame[0] == 0x5a => wr.feed(frame.freeze()).await?,
                _ => {
                    counted += 1;
                    if counted == target {
                        *counted_at.lock().expect("not poisoned") = Some(Instant::now());
                        wr.feed(Bytes::copy_from_slice(&counted.to_be_bytes()))
                            .await?;
                    }
                }
            }
            match rd.next().now_or_never() {
                Some(Some(more)) => frame = more?,
                _ => break,
            }
        }
        SinkExt::<Bytes>::flush(&mut wr).await?;
    }
    Ok(())
}

/// `n` echo round trips, `c` in flight (pipelined on the one connection; replies come in order).
async fn echo_calls(
    rd: &mut EchoRead,
    wr: &mut EchoWrite,
    body: &Bytes,
    n: usize,
    c: usize,
) -> anyhow::Result<(Duration, Histogram<u64>)> {
    let mut h = histogram();
    let mut sent_at = VecDeque::with_capacity(c);
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < c.min(n) {
        sent_at.push_back(Instant::now());
        wr.feed(body.clone()).await?;
        sent += 1;
    }
    SinkExt::<Bytes>::flush(wr).await?;
    let mut received = 0;
    while received < n {
        let frame = tokio::time::timeout(STUCK, rd.next())
            .await?
            .ok_or_else(|| anyhow!("echo closed"))??;
        let mut frame = frame;
        loop {
            anyhow::ensure!(frame.len() == body.len(), "short echo");
            let s = sent_at.pop_front().ok_or_else(|| anyhow!("extra echo"))?;
            h.record(s.elapsed().as_nanos() as u64)?;
            received += 1;
            if sent < n {
                sent_at.push_back(Instant::now());
                wr.feed(body.clone()).await?;
                sent += 1;
            }
            match rd.next().now_or_never() {
                Some(Some(more)) => frame = more?,
                _ => break,
            }
        }
        SinkExt::<Bytes>::flush(wr).await?;
    }
    Ok((t0.elapsed(), h))
}

/// `m` one-way frames; the time from the first send until the server counted the last one.
async fn echo_events(
    rd: &mut EchoRead,
    wr: &mut EchoWrite,
    body: &Bytes,
    m: usize,
    counted_at: &Mutex<Option<Instant>>,
) -> anyhow::Result<Duration> {
    wr.send(Bytes::copy_from_slice(&(m as u64).to_be_bytes()))
        .await?;
    let t0 = Instant::now();
    for _ in 0..m {
        wr.feed(body.clone()).await?;
    }
    SinkExt::<Bytes>::flush(wr).await?;
    let answer = tokio::time::timeout(STUCK, rd.next())
        .await?
        .ok_or_else(|| anyhow!("echo closed"))??;
    anyhow::ensure!(
        answer.len() == 8 && u64::from_be_bytes(answer[..8].try_into()?) == m as u64,
        "wrong count from the echo server"
    );
    let done = counted_at
        .lock()
        .expect("not poisoned")
        .take()
        .ok_or_else(|| anyhow!("the echo server noted no time"))?;
    Ok(done.duration_since(t0))
}
