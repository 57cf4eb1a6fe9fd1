//! The worker's link to a supervisor that reads slowly: the supervisor's side is played with the
//! protocol's own handshake and framed connection over loopback TCP, so the test decides when
//! it reads; the worker is the real link, scheduler, adapters and folder store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use protocol::handshake;
use protocol::{
    Call, Connection, Event, FailureClass, Frame, RateLimit, Reply, RunFailure, Schedule,
    StreamConfig, Welcome,
};
use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use worker::clock::Clock;
use worker::link::LinkSettings;
use worker::outbox::Outbox;
use worker::runner::Runner;
use worker::scheduler::Scheduler;

const TOKEN: &str = "link-test-token";

/// The real worker link (scheduler, adapters, folder store) dialling `addr` with `outbox`'s
/// events, until `shutdown`.
struct SpawnedLink {
    scheduler: Scheduler,
    task: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
    /// The folder store; removed when the test ends.
    _folder: tempfile::TempDir,
}

async fn spawn_link(
    addr: std::net::SocketAddr,
    outbox: &Arc<Outbox>,
    worker_id: &str,
    capacity: u32,
    send_window: usize,
) -> SpawnedLink {
    let folder = tempfile::tempdir().unwrap();
    let store = objects::open(
        &format!("file://{}", folder.path().display()),
        objects::StoreOptions {
            create_buckets: true,
        },
    )
    .await
    .unwrap();
    let adapters = worker::adapters::registry(reqwest::Client::new());
    let scheduler = Scheduler::new(
        Arc::new(Runner::new(adapters.clone(), store, outbox.clone())),
        Clock::System,
        capacity as usize,
    );
    let settings = LinkSettings {
        supervisor_addr: addr.to_string(),
        token: TOKEN.into(),
        worker_id: worker_id.into(),
        capacity,
        adapters: adapters.names(),
        max_frame: protocol::codec::DEFAULT_MAX_FRAME,
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(5),
        tls: None,
        send_window,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker::link::run(
        settings,
        scheduler.clone(),
        outbox.clone(),
        shutdown.clone(),
    ));
    SpawnedLink {
        scheduler,
        task,
        shutdown,
        _folder: folder,
    }
}

/// A run failure of 32 KiB: a few of these fill the socket's buffers.
fn bulky_event() -> Event {
    Event::RunFailed(std::sync::Arc::new(RunFailure {
        run_id: Uuid::now_v7(),
        stream_id: Uuid::now_v7(),
        at_ms: 0,
        class: FailureClass::Storage,
        message: "x".repeat(32 * 1024),
        stream_stopped: false,
        scheduled_at_ms: 0,
        started_at_ms: 0,
        attempts: 1,
    }))
}

/// A stream that never comes due during the test (once a year, on 1 January).
fn yearly(stream_id: Uuid) -> StreamConfig {
    StreamConfig {
        stream_id,
        generation: 1,
        adapter: "IQAIR_DAILY".into(),
        endpoint: "http://127.0.0.1:9/v2/nearest_city".into(),
        secret_key: "key-1".into(),
        schedule: Schedule::Cron {
            expr: "0 0 0 1 1 *".into(),
        },
        timeout_ms: 1_000,
        bucket_name: "results".into(),
        params: BTreeMap::new(),
        rate_limit: RateLimit::UNLIMITED,
        source: String::new(),
        window_start_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_worker_answers_start_calls_ahead_of_its_queued_events() {
    // The supervisor's side: a small, fixed receive buffer (no autotuning), so a few events
    // fill the path while the test does not read.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap();

    // More unacknowledged events than the send window (2,048): a worker that ran while the
    // supervisor was away.
    const BACKLOG: usize = 2_100;
    let outbox = Arc::new(Outbox::new(10_000));
    for _ in 0..BACKLOG {
        outbox.push(bulky_event());
    }
    let SpawnedLink {
        scheduler,
        task: worker,
        shutdown,
        _folder,
    } = spawn_link(
        addr,
        &outbox,
        "worker-link-test",
        10_000,
        worker::link::DEFAULT_SEND_WINDOW,
    )
    .await;

    let (socket, _) = listener.accept().await.unwrap();
    let mut supervisor = Connection::new(socket, protocol::codec::DEFAULT_MAX_FRAME);
    let welcome = Welcome {
        heartbeat_interval_ms: 1_000,
        heartbeat_timeout_ms: 60_000,
    };
    let hello = handshake::accept(
        &mut supervisor,
        TOKEN.as_bytes(),
        welcome,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(hello.worker_id, "worker-link-test");
    // Not an assertion: time for the worker to queue its window of events behind the full
    // socket. Sooner, fewer events are ahead of the calls, and the test holds all the same.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A restart's worth of `worker:start` calls, in one write.
    const CALLS: u64 = 200;
    let streams: Vec<Uuid> = (0..CALLS).map(|_| Uuid::now_v7()).collect();
    for (id, stream_id) in (1..).zip(&streams) {
        let call = Call::Start(yearly(*stream_id));
        supervisor
            .feed_frame(&Frame::Call {
                id,
                call: Box::new(call),
            })
            .await
            .unwrap();
    }
    supervisor.flush().await.unwrap();

    // Read everything in the order it crossed, never acknowledging: the window stays full.
    let mut events = 0usize;
    let mut replies = 0u64;
    let mut events_before_last_reply = 0;
    while replies < CALLS {
        let frame = tokio::time::timeout(Duration::from_secs(30), supervisor.read_frame())
            .await
            .expect("the worker keeps sending")
            .unwrap()
            .expect("the worker keeps the link open");
        match frame {
            Frame::Event { seq: 0, .. } | Frame::Heartbeat => {}
            Frame::Event { .. } => events += 1,
            Frame::Reply { id, reply } => {
                assert!((1..=CALLS).contains(&id), "reply to an unknown call {id}");
                assert_eq!(
                    reply,
                    Reply::ok("Started fetching from adapter IQAIR_DAILY.")
                );
                replies += 1;
                events_before_last_reply = events;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    // The events ahead of the replies are only those already in the socket (its buffers hold
    // about 130 of these): the rest of the 2,048-event window waits behind the replies.
    assert!(
        events_before_last_reply < 1_024,
        "{events_before_last_reply} events crossed before the last of {CALLS} replies"
    );
    assert_eq!(scheduler.len(), CALLS as usize);
    assert_eq!(outbox.len(), BACKLOG, "nothing was acknowledged");

    shutdown.cancel();
    worker.await.unwrap();
}

/// A run failure of a few bytes.
fn small_event() -> Event {
    Event::RunFailed(Arc::new(RunFailure {
        run_id: Uuid::now_v7(),
        stream_id: Uuid::now_v7(),
        at_ms: 0,
        class: FailureClass::Storage,
        message: "small".into(),
        stream_stopped: false,
        scheduled_at_ms: 0,
        started_at_ms: 0,
        attempts: 1,
    }))
}

/// Numbered events that arrive until the link has been quiet for `quiet`.
async fn events_until_quiet(
    supervisor: &mut Connection<tokio::net::TcpStream>,
    quiet: Duration,
) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Ok(frame) = tokio::time::timeout(quiet, supervisor.read_frame()).await {
        match frame.unwrap().expect("the worker keeps the link open") {
            Frame::Event { seq: 0, .. } | Frame::Heartbeat => {}
            Frame::Event { seq, .. } => seqs.push(seq),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_send_window_bounds_events_in_flight_and_an_ack_opens_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    const BACKLOG: usize = 500;
    const WINDOW: usize = 100;
    let outbox = Arc::new(Outbox::new(10_000));
    for _ in 0..BACKLOG {
        outbox.push(small_event());
    }
    let SpawnedLink {
        task: worker,
        shutdown,
        _folder,
        ..
    } = spawn_link(addr, &outbox, "worker-window-test", 10, WINDOW).await;
    let (socket, _) = listener.accept().await.unwrap();
    let mut supervisor = Connection::new(socket, protocol::codec::DEFAULT_MAX_FRAME);
    let welcome = Welcome {
        heartbeat_interval_ms: 60_000,
        heartbeat_timeout_ms: 600_000,
    };
    handshake::accept(
        &mut supervisor,
        TOKEN.as_bytes(),
        welcome,
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    // Read everything, acknowledging nothing: the window's worth arrives, oldest first.
    let quiet = Duration::from_millis(500);
    let first = events_until_quiet(&mut supervisor, quiet).await;
    assert_eq!(first, (1..=WINDOW as u64).collect::<Vec<_>>());

    // Acknowledging the first 40 lets exactly 40 more go out.
    supervisor
        .feed_frame(&Frame::Ack { seq: 40 })
        .await
        .unwrap();
    supervisor.flush().await.unwrap();
    let second = events_until_quiet(&mut supervisor, quiet).await;
    assert_eq!(
        second,
        (WINDOW as u64 + 1..=WINDOW as u64 + 40).collect::<Vec<_>>()
    );
    assert_eq!(outbox.len(), BACKLOG - 40);

    shutdown.cancel();
    worker.await.unwrap();
}
