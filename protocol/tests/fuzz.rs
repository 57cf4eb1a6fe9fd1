//! Property-based fuzzing of the frame decoder and message decoding: whatever bytes arrive, the
//! decoder answers with a frame or an error — it never panics, never allocates what a frame merely
//! claims, and every valid frame survives a round trip.
//!
//! The number of cases per property is `PROTOCOL_FUZZ_CASES` (default 2 000, a few seconds);
//! a long run is e.g. `PROTOCOL_FUZZ_CASES=2000000 cargo test --release -p protocol --test fuzz`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use proptest::prelude::*;
use protocol::codec::{self, FrameCodec};
use protocol::{
    Call, Challenge, Event, FailureClass, Frame, Hello, Measurement, Refused, Reject, Reply,
    ResultRecord, RunFailure, RunningStream, Schedule, StreamConfig, Welcome,
};
use tokio_util::codec::Decoder;
use uuid::Uuid;

fn cases() -> u32 {
    std::env::var("PROTOCOL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn opt_f64() -> impl Strategy<Value = Option<f64>> {
    prop::option::of(any::<f64>().prop_filter("NaN never equals itself", |f| !f.is_nan()))
}

fn measurement() -> impl Strategy<Value = Box<Measurement>> {
    (
        prop::option::of(text()),
        opt_f64(),
        opt_f64(),
        prop::option::of(text()),
        opt_f64(),
        prop::option::of(text()),
    )
        .prop_map(|(city, lat, aqius, pollution_ts, ws, ic)| {
            Box::new(Measurement {
                city,
                lat,
                aqius,
                pollution_ts,
                ws,
                ic,
                ..Measurement::default()
            })
        })
}

fn stream_config() -> impl Strategy<Value = StreamConfig> {
    (
        uuid(),
        any::<u64>(),
        text(),
        text(),
        prop_oneof![
            any::<u64>().prop_map(|millis| Schedule::Interval { millis }),
            text().prop_map(|expr| Schedule::Cron { expr }),
        ],
        any::<u64>(),
        prop::collection::btree_map(text(), text(), 0..4),
    )
        .prop_map(
            |(stream_id, generation, endpoint, secret_key, schedule, timeout_ms, params)| {
                StreamConfig {
                    stream_id,
                    generation,
                    adapter: "IQAIR_DAILY".into(),
                    endpoint,
                    secret_key: secret_key.into(),
                    schedule,
                    timeout_ms,
                    bucket_name: "results".into(),
                    params: params.into_iter().collect::<BTreeMap<_, _>>(),
                    rate_limit: protocol::RateLimit::COMMUNITY,
                    source: String::new(),
                    window_start_ms: None,
                }
            },
        )
}

fn class() -> impl Strategy<Value = FailureClass> {
    prop_oneof![
        Just(FailureClass::Timeout),
        Just(FailureClass::Network),
        Just(FailureClass::Http),
        Just(FailureClass::InvalidBody),
        Just(FailureClass::Api),
        Just(FailureClass::RateLimited),
        Just(FailureClass::Auth),
        Just(FailureClass::Storage),
    ]
}

fn running() -> impl Strategy<Value = Vec<RunningStream>> {
    prop::collection::vec(
        (uuid(), any::<u64>()).prop_map(|(stream_id, generation)| RunningStream {
            stream_id,
            generation,
        }),
        0..4,
    )
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (
            uuid(),
            uuid(),
            text(),
            any::<i64>(),
            any::<u64>(),
            prop::option::of(measurement())
        )
            .prop_map(
                |(result_id, stream_id, key, fetched_at_ms, size, measurement)| {
                    Event::Results(Arc::new(ResultRecord {
                        result_id,
                        stream_id,
                        adapter: "IQAIR_DAILY".into(),
                        bucket: "results".into(),
                        key,
                        fetched_at_ms,
                        scheduled_at_ms: fetched_at_ms.wrapping_sub(1_000),
                        started_at_ms: fetched_at_ms.wrapping_sub(990),
                        size,
                        sha256: "0".repeat(64),
                        measurement,
                        run_id: uuid::Uuid::now_v7(),
                        page: 0,
                        records: None,
                        attempts: 1,
                        ends_run: true,
                    }))
                }
            ),
        (uuid(), uuid(), any::<i64>(), class(), text(), any::<bool>()).prop_map(
            |(run_id, stream_id, at_ms, class, message, stream_stopped)| {
                Event::RunFailed(Arc::new(RunFailure {
                    run_id,
                    stream_id,
                    at_ms,
                    class,
                    message,
                    stream_stopped,
                    scheduled_at_ms: at_ms,
                    started_at_ms: at_ms,
                    attempts: 1,
                }))
            }
        ),
        (running(), any::<bool>())
            .prop_map(|(running, last)| Event::WorkerAvailable { running, last }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u32>(), any::<[u8; 32]>()).prop_map(|(protocol_version, nonce)| {
            Frame::Challenge(Challenge {
                protocol_version,
                nonce,
            })
        }),
        (
            any::<u32>(),
            text(),
            any::<u32>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(protocol_version, worker_id, capacity, running, mac)| {
                Frame::Hello(Box::new(Hello {
                    protocol_version,
                    worker_id,
                    capacity,
                    adapters: vec!["IQAIR_DAILY".into()],
                    running,
                    mac,
                }))
            }),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Frame::Welcome(Welcome {
            heartbeat_interval_ms: a,
            heartbeat_timeout_ms: b
        })),
        text().prop_map(|reason| Frame::Reject(Reject { reason })),
        (any::<u64>(), stream_config()).prop_map(|(id, c)| Frame::Call {
            id,
            call: Box::new(Call::Start(c))
        }),
        (
            any::<u64>(),
            proptest::collection::vec(stream_config(), 0..4)
        )
            .prop_map(|(id, configs)| Frame::Call {
                id,
                call: Box::new(Call::StartMany(configs))
            }),
        (any::<u64>(), uuid(), any::<u64>()).prop_map(|(id, stream_id, generation)| {
            Frame::Call {
                id,
                call: Box::new(Call::Stop {
                    stream_id,
                    generation,
                }),
            }
        }),
        (any::<u64>(), any::<bool>(), text(), uuid(), any::<u64>()).prop_map(
            |(id, success, message, stream_id, generation)| Frame::Reply {
                id,
                reply: Reply {
                    success,
                    refused: vec![Refused {
                        stream_id,
                        generation,
                        message: message.clone(),
                    }],
                    message,
                }
            }
        ),
        (any::<u64>(), event()).prop_map(|(seq, event)| Frame::Event { seq, event }),
        any::<u64>().prop_map(|seq| Frame::Ack { seq }),
        Just(Frame::Heartbeat),
    ]
}

/// Feed bytes to a fresh codec, as a socket would, and drain every frame it yields.
fn decode_stream(bytes: &[u8], max_frame: usize) {
    let mut codec = FrameCodec::new(max_frame);
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
    let _ = codec.decode_eof(&mut buf);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bodies_never_panic_the_message_decoder(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode(&body);
    }

    #[test]
    fn arbitrary_streams_never_panic_the_frame_decoder(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        decode_stream(&bytes, 4096);
    }

    #[test]
    fn every_frame_round_trips(frame in frame()) {
        let body = codec::encode(&frame).unwrap();
        prop_assert_eq!(codec::decode(&body).unwrap(), frame);
    }

    #[test]
    fn mutated_valid_frames_decode_or_fail_cleanly(
        frame in frame(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body = codec::encode(&frame).unwrap();
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        let _ = codec::decode(&body);
        let _ = codec::decode(&body[..cut.index(body.len() + 1)]);
        // And framed, with a correct length prefix, through the stream decoder.
        let mut framed = (body.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        decode_stream(&framed, 1 << 20);
    }
}
