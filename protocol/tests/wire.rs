//! The wire over real loopback TCP: round trips, hostile bytes, the handshake, calls and timeouts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use protocol::codec;
use protocol::handshake::{self, Admission, WorkerIdentity};
use protocol::link::{self, Incoming, LinkConfig};
use protocol::{
    Call, Challenge, Connection, Event, FailureClass, Frame, Hello, JobState, JobStep, Measurement,
    ProtocolError, Reject, Reply, ResultRecord, RunFailure, RunReport, RunStatus, RunWindow,
    RunningStream, Schedule, StreamConfig, Welcome, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

const TOKEN: &[u8] = b"test-token";

fn config() -> StreamConfig {
    let mut params = BTreeMap::new();
    params.insert("lat".into(), "52.52".into());
    params.insert("lon".into(), "13.4".into());
    StreamConfig {
        stream_id: Uuid::now_v7(),
        generation: 3,
        adapter: "IQAIR_DAILY".into(),
        endpoint: "http://api.airvisual.com/v2/nearest_city".into(),
        secret_key: "k".into(),
        schedule: Schedule::Cron {
            expr: "0 */15 * * * *".into(),
        },
        timeout_ms: 180_000,
        bucket_name: "results".into(),
        params,
        rate_limit: protocol::RateLimit::COMMUNITY,
        source: String::new(),
        window_start_ms: None,
    }
}

fn every_frame() -> Vec<Frame> {
    let stream_id = Uuid::now_v7();
    let result_id = Uuid::now_v7();
    let running = vec![RunningStream {
        stream_id,
        generation: 7,
    }];
    vec![
        Frame::Challenge(Challenge {
            protocol_version: PROTOCOL_VERSION,
            nonce: [7; 32],
        }),
        Frame::Hello(Box::new(Hello {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "worker-1".into(),
            capacity: 10_000,
            adapters: vec!["IQAIR_DAILY".into()],
            running: running.len() as u64,
            mac: vec![1, 2, 3],
        })),
        Frame::Welcome(Welcome {
            heartbeat_interval_ms: 5000,
            heartbeat_timeout_ms: 15000,
        }),
        Frame::Reject(Reject {
            reason: "authentication failed".into(),
        }),
        Frame::Call {
            id: 1,
            call: Box::new(Call::Start(config())),
        },
        Frame::Call {
            id: 2,
            call: Box::new(Call::Stop {
                stream_id,
                generation: 7,
            }),
        },
        Frame::Reply {
            id: 1,
            reply: Reply::ok("Started fetching from adapter IQAIR_DAILY."),
        },
        Frame::Event {
            seq: 1,
            event: Event::Results(Arc::new(ResultRecord {
                result_id,
                stream_id,
                adapter: "IQAIR_DAILY".into(),
                bucket: "results".into(),
                key: format!("IQAIR_DAILY/{stream_id}/dt=2026-11-22/{result_id}.json"),
                fetched_at_ms: 1_763_800_000_000,
                scheduled_at_ms: 1_763_799_999_000,
                started_at_ms: 1_763_799_999_012,
                size: 512,
                sha256: "ab".repeat(32),
                measurement: Some(Box::new(Measurement {
                    city: Some("Berlin".into()),
                    pollution_ts: Some("2026-11-22T13:00:00.000Z".into()),
                    aqius: Some(17.0),
                    ws: Some(4.54),
                    ..Measurement::default()
                })),
                run_id: result_id,
                page: 0,
                records: None,
                attempts: 1,
                ends_run: true,
            })),
        },
        Frame::Event {
            seq: 3,
            event: Event::Run(Box::new(RunReport {
                run_id: Uuid::now_v7(),
                stream_id,
                scheduled_at_ms: 1_763_799_999_000,
                started_at_ms: 1_763_799_999_012,
                finished_at_ms: Some(1_763_800_000_500),
                status: RunStatus::Truncated,
                attempts: 12,
                pages: 10,
                records: Some(500),
                bytes: 40_960,
                window: Some(RunWindow {
                    start_ms: 1_763_799_099_000,
                    end_ms: 1_763_799_999_000,
                }),
                job: vec![
                    JobStep {
                        state: JobState::Queued,
                        at_ms: 1_763_799_999_100,
                    },
                    JobStep {
                        state: JobState::Downloaded,
                        at_ms: 1_763_800_000_400,
                    },
                ],
                class: None,
                message: Some("max_pages (10) reached with more to fetch".into()),
                stream_stopped: false,
            })),
        },
        Frame::Event {
            seq: 2,
            event: Event::RunFailed(Arc::new(RunFailure {
                run_id: Uuid::now_v7(),
                stream_id,
                at_ms: 1,
                class: FailureClass::RateLimited,
                message: "call_per_minute_limit_reached".into(),
                stream_stopped: false,
                scheduled_at_ms: 1,
                started_at_ms: 1,
                attempts: 1,
            })),
        },
        Frame::Event {
            seq: 3,
            event: Event::WorkerAvailable {
                running,
                last: true,
            },
        },
        Frame::Ack { seq: 3 },
        Frame::Heartbeat,
    ]
}

#[test]
fn every_message_round_trips() {
    for frame in every_frame() {
        let bytes = codec::encode(&frame).unwrap();
        assert_eq!(codec::decode(&bytes).unwrap(), frame, "{}", frame.kind());
    }
}

#[test]
fn garbage_and_trailing_bytes_are_decode_errors() {
    assert!(matches!(
        codec::decode(&[0xff; 64]),
        Err(ProtocolError::Decode(_))
    ));
    let mut bytes = codec::encode(&Frame::Heartbeat).unwrap();
    bytes.push(0);
    assert!(matches!(
        codec::decode(&bytes),
        Err(ProtocolError::Decode(_))
    ));
    // A tiny frame claiming a huge vector must fail without allocating it.
    let mut claim = codec::encode(&Frame::Reject(Reject { reason: "x".into() })).unwrap();
    claim.truncate(1);
    claim.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(codec::decode(&claim).is_err());
}

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), server.unwrap().0)
}

#[tokio::test]
async fn frames_cross_a_real_socket_and_close_cleanly() {
    let (a, b) = pair().await;
    let mut a = Connection::new(a, codec::DEFAULT_MAX_FRAME);
    let mut b = Connection::new(b, codec::DEFAULT_MAX_FRAME);
    for frame in every_frame() {
        a.write_frame(&frame).await.unwrap();
        assert_eq!(b.read_frame().await.unwrap(), Some(frame));
    }
    drop(a);
    assert!(b.read_frame().await.unwrap().is_none());
}

#[tokio::test]
async fn oversize_frame_is_refused_before_its_body_is_read() {
    let (mut raw, b) = pair().await;
    let mut b = Connection::new(b, 1024);
    raw.write_all(&(10 * 1024 * 1024u32).to_be_bytes())
        .await
        .unwrap();
    let err = b.read_frame().await.unwrap_err();
    assert!(
        matches!(err, ProtocolError::FrameTooLarge { len, max: 1024 } if len == 10 * 1024 * 1024),
        "{err}"
    );
    // And the sender refuses to write one.
    let (a, _b2) = pair().await;
    let mut small = Connection::new(a, 64);
    let err = small
        .write_frame(&Frame::Reject(Reject {
            reason: "x".repeat(100),
        }))
        .await
        .unwrap_err();
    assert!(matches!(err, ProtocolError::FrameTooLarge { .. }), "{err}");
}

#[tokio::test]
async fn random_bytes_and_a_hang_up_mid_frame_are_errors_not_closes() {
    let (mut raw, b) = pair().await;
    let mut b = Connection::new(b, 1024);
    raw.write_all(&[0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef])
        .await
        .unwrap();
    assert!(matches!(
        b.read_frame().await,
        Err(ProtocolError::Decode(_))
    ));

    let (mut raw, b) = pair().await;
    let mut b = Connection::new(b, 1024);
    raw.write_all(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap();
    drop(raw);
    assert!(matches!(
        b.read_frame().await,
        Err(ProtocolError::Truncated)
    ));
}

fn identity() -> WorkerIdentity {
    WorkerIdentity {
        worker_id: "w1".into(),
        capacity: 5,
        adapters: vec!["IQAIR_DAILY".into()],
        running: 0,
    }
}

fn welcome() -> Welcome {
    Welcome {
        heartbeat_interval_ms: 1000,
        heartbeat_timeout_ms: 3000,
    }
}

#[tokio::test]
async fn handshake_accepts_the_right_token_and_rejects_a_wrong_one_with_a_reason() {
    let t = Duration::from_secs(5);
    let (a, b) = pair().await;
    let (mut w, mut s) = (Connection::new(a, 4096), Connection::new(b, 4096));
    let (worker, server) = tokio::join!(
        handshake::connect(&mut w, TOKEN, identity(), t),
        handshake::accept(&mut s, TOKEN, welcome(), t)
    );
    assert_eq!(worker.unwrap(), welcome());
    assert_eq!(server.unwrap().worker_id, "w1");

    let (a, b) = pair().await;
    let (mut w, mut s) = (Connection::new(a, 4096), Connection::new(b, 4096));
    let (worker, server) = tokio::join!(
        handshake::connect(&mut w, b"wrong", identity(), t),
        handshake::accept(&mut s, TOKEN, welcome(), t)
    );
    match worker.unwrap_err() {
        ProtocolError::Rejected(reason) => assert!(reason.contains("token"), "{reason}"),
        other => panic!("expected a rejection, got {other}"),
    }
    assert!(server.unwrap_err().to_string().contains("authentication"));
}

/// A follower verifies the hello, then sends the worker to the leader instead of welcoming it;
/// a wrong token still gets the rejection, never the leader's address.
#[tokio::test]
async fn a_follower_redirects_a_verified_worker_to_the_leader() {
    let t = Duration::from_secs(5);
    for leader in [Some("10.0.0.7:7070".to_owned()), None] {
        let (a, b) = pair().await;
        let (mut w, mut s) = (Connection::new(a, 4096), Connection::new(b, 4096));
        let (worker, server) = tokio::join!(
            handshake::connect(&mut w, TOKEN, identity(), t),
            handshake::accept(&mut s, TOKEN, Admission::Redirect(leader.clone()), t)
        );
        match worker.unwrap_err() {
            ProtocolError::Redirected(to) => assert_eq!(to, leader),
            other => panic!("expected a redirect, got {other}"),
        }
        match server.unwrap_err() {
            ProtocolError::Redirected(to) => assert_eq!(to, leader),
            other => panic!("the follower says it redirected, got {other}"),
        }
    }

    let (a, b) = pair().await;
    let (mut w, mut s) = (Connection::new(a, 4096), Connection::new(b, 4096));
    let (worker, _server) = tokio::join!(
        handshake::connect(&mut w, b"wrong", identity(), t),
        handshake::accept(
            &mut s,
            TOKEN,
            Admission::Redirect(Some("10.0.0.7:7070".into())),
            t
        )
    );
    match worker.unwrap_err() {
        ProtocolError::Rejected(reason) => assert!(!reason.contains("10.0.0.7"), "{reason}"),
        other => panic!("expected a rejection, got {other}"),
    }
}

#[tokio::test]
async fn handshake_rejects_a_wrong_protocol_version() {
    let (a, b) = pair().await;
    let (mut w, mut s) = (Connection::new(a, 4096), Connection::new(b, 4096));
    let server = tokio::spawn(async move {
        handshake::accept(&mut s, TOKEN, welcome(), Duration::from_secs(5)).await
    });
    let Some(Frame::Challenge(c)) = w.read_frame().await.unwrap() else {
        panic!("no challenge")
    };
    w.write_frame(&Frame::Hello(Box::new(Hello {
        protocol_version: PROTOCOL_VERSION + 1,
        worker_id: "w1".into(),
        capacity: 1,
        adapters: vec![],
        running: 0,
        mac: handshake::sign(TOKEN, &c.nonce, "w1"),
    })))
    .await
    .unwrap();
    let Some(Frame::Reject(r)) = w.read_frame().await.unwrap() else {
        panic!("no reject")
    };
    assert!(r.reason.contains("protocol version"), "{}", r.reason);
    assert!(server.await.unwrap().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_dropped_at_the_handshake_timeout() {
    let (_a, b) = pair().await;
    let mut s = Connection::new(b, 4096);
    let err = handshake::accept(&mut s, TOKEN, welcome(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no hello"), "{err}");
}

fn fast_link() -> LinkConfig {
    LinkConfig {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(400),
        ..LinkConfig::default()
    }
}

#[tokio::test]
async fn calls_get_their_replies_and_events_flow_with_acks() {
    let (a, b) = pair().await;
    let (sup, _sup_in, _t1) = link::spawn(Connection::new(a, 1 << 20), fast_link());
    let (wrk, mut wrk_in, _t2) = link::spawn(Connection::new(b, 1 << 20), fast_link());

    // The worker side answers every call.
    let responder = wrk.clone();
    tokio::spawn(async move {
        while let Some(msg) = wrk_in.recv().await {
            if let Incoming::Call { id, call } = msg {
                let text = format!("{} ok", call.name());
                responder.reply(id, Reply::ok(text)).await.unwrap();
            }
        }
    });
    let mut calls = Vec::new();
    for _ in 0..64 {
        let sup = sup.clone();
        calls.push(tokio::spawn(async move {
            sup.call(Call::Start(config()), Duration::from_secs(5))
                .await
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), Reply::ok("worker:start ok"));
    }
}

#[tokio::test]
async fn a_call_without_a_reply_times_out_with_an_error() {
    let (a, b) = pair().await;
    let (sup, _sup_in, _t1) = link::spawn(Connection::new(a, 1 << 20), fast_link());
    // The peer keeps the link alive (heartbeats) but never answers.
    let (_wrk, _wrk_in, _t2) = link::spawn(Connection::new(b, 1 << 20), fast_link());
    let err = sup
        .call(
            Call::Stop {
                stream_id: Uuid::nil(),
                generation: 0,
            },
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        protocol::CallError::Timeout {
            call: "worker:stop",
            timeout_ms: 200
        }
    );
    assert!(err.to_string().contains("worker:stop"));
}

#[tokio::test]
async fn events_arrive_in_order_and_acks_come_back() {
    let (a, b) = pair().await;
    let (sup, mut sup_in, _t1) = link::spawn(Connection::new(a, 1 << 20), fast_link());
    let (wrk, mut wrk_in, _t2) = link::spawn(Connection::new(b, 1 << 20), fast_link());
    for seq in 1..=1000u64 {
        wrk.event(
            seq,
            Event::WorkerAvailable {
                running: vec![],
                last: true,
            },
        )
        .await
        .unwrap();
    }
    for want in 1..=1000u64 {
        match sup_in.recv().await.unwrap() {
            Incoming::Event { seq, .. } => assert_eq!(seq, want),
            other => panic!("unexpected {other:?}"),
        }
    }
    sup.ack(1000).await.unwrap();
    assert_eq!(wrk_in.recv().await.unwrap(), Incoming::Ack { seq: 1000 });
}

#[tokio::test]
async fn a_silent_peer_ends_the_link_and_pending_calls_fail_fast() {
    let (a, b) = pair().await;
    let (sup, _sup_in, task) = link::spawn(Connection::new(a, 1 << 20), fast_link());
    // The other end is a bare socket that never sends a byte.
    let _silent = b;
    let call = tokio::spawn({
        let sup = sup.clone();
        async move {
            sup.call(Call::Start(config()), Duration::from_secs(30))
                .await
        }
    });
    let ended = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("link must end")
        .unwrap();
    assert!(
        matches!(ended, Err(ProtocolError::PeerSilent(_))),
        "{ended:?}"
    );
    let err = tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .expect("the waiting call must be released")
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err,
        protocol::CallError::LinkClosed {
            call: "worker:start"
        }
    );
    assert!(sup.is_closed());
}

#[test]
fn a_long_running_list_goes_out_in_parts_that_each_fit_a_frame() {
    // A million streams: about 20 MB of list, over a 1 MiB frame limit.
    let running: Vec<RunningStream> = (0..1_000_000u64)
        .map(|i| RunningStream {
            stream_id: uuid::Uuid::from_u64_pair(i, u64::MAX - i),
            generation: u64::MAX - i,
        })
        .collect();
    let max = protocol::codec::DEFAULT_MAX_FRAME;
    let parts = Event::worker_available(running.clone(), max);
    assert!(parts.len() > 1);
    let mut joined = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let frame = Frame::Event {
            seq: 0,
            event: part.clone(),
        };
        let body = protocol::codec::encode(&frame).unwrap();
        assert!(body.len() <= max, "part {i}: {} bytes", body.len());
        let Event::WorkerAvailable { running, last } = part else {
            panic!("not a worker_available part")
        };
        assert_eq!(*last, i + 1 == parts.len());
        joined.extend_from_slice(running);
    }
    assert_eq!(joined, running);
    // Nothing running is still one (empty, last) part.
    assert_eq!(
        Event::worker_available(vec![], max),
        vec![Event::WorkerAvailable {
            running: vec![],
            last: true
        }]
    );
}

/// An event of about a kilobyte: a run failure with a long message.
fn bulky_event(seq: u64) -> Event {
    Event::RunFailed(Arc::new(RunFailure {
        run_id: Uuid::now_v7(),
        stream_id: Uuid::nil(),
        at_ms: seq as i64,
        class: FailureClass::Storage,
        message: "x".repeat(1000),
        stream_stopped: false,
        scheduled_at_ms: 0,
        started_at_ms: 0,
        attempts: 1,
    }))
}

#[tokio::test]
async fn replies_and_acks_overtake_queued_events() {
    // A 4 KiB pipe the peer does not read yet: the link's writer stalls after one write batch of
    // events, as a saturated worker's does behind a supervisor busy committing.
    let (near, far) = tokio::io::duplex(4096);
    let config = LinkConfig {
        outgoing_capacity: 8192,
        ..LinkConfig::default()
    };
    let (link, mut incoming, _task) = link::spawn(Connection::new(near, 1 << 20), config);
    let mut peer = Connection::new(far, 1 << 20);
    const EVENTS: u64 = 4000;
    for seq in 1..=EVENTS {
        link.event(seq, bulky_event(seq)).await.unwrap();
    }

    // The peer calls; the link reads the call although its writes are stalled, and the reply
    // and an ack go out on the control lane.
    let call = Call::Stop {
        stream_id: Uuid::nil(),
        generation: 3,
    };
    peer.write_frame(&Frame::Call {
        id: 42,
        call: Box::new(call),
    })
    .await
    .unwrap();
    match incoming.recv().await.unwrap() {
        Incoming::Call { id, call } => {
            assert_eq!(id, 42);
            assert_eq!(call.name(), "worker:stop");
        }
        other => panic!("expected the call, got {other:?}"),
    }
    link.reply(42, Reply::ok("Stopped.")).await.unwrap();
    link.ack(7).await.unwrap();

    // Every frame, in the order it crossed.
    let mut events_before_reply = None;
    let mut events_before_ack = None;
    let mut next_seq = 1;
    while next_seq <= EVENTS || events_before_reply.is_none() || events_before_ack.is_none() {
        match peer
            .read_frame()
            .await
            .unwrap()
            .expect("the link stays open")
        {
            Frame::Event { seq, .. } => {
                assert_eq!(seq, next_seq, "events keep their order");
                next_seq += 1;
            }
            Frame::Reply { id, reply } => {
                assert_eq!((id, reply), (42, Reply::ok("Stopped.")));
                events_before_reply = Some(next_seq - 1);
            }
            Frame::Ack { seq } => {
                assert_eq!(seq, 7);
                events_before_ack = Some(next_seq - 1);
            }
            Frame::Heartbeat => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
    let before_reply = events_before_reply.expect("the reply crossed");
    let before_ack = events_before_ack.expect("the ack crossed");
    // At most what the writer had taken before it stalled: one 64 KiB write batch and the
    // pipe's 4 KiB, about 70 of these events. Behind the queue it would be all 4,000.
    assert!(
        before_reply < 200 && before_ack < 200,
        "{before_reply} and {before_ack} of {EVENTS} events went before the reply and the ack"
    );
}
