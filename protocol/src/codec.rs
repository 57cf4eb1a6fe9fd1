//! The frame codec (with packed.rs, the only place that names bincode): frames are length-delimited (4-byte big-endian length)
//! and their bodies are bincode 2 through serde. Keeping the encoding here means the format can
//! move to a bincode-compatible crate without touching the message types.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::ProtocolError;
use crate::message::Frame;

/// Default largest frame either side accepts: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// bincode's own ceiling on what one decode may allocate. Frames are already bounded by the
/// length prefix; this stops a small frame from claiming a huge `Vec` length.
const DECODE_LIMIT: usize = 16 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encode a frame body (without the length prefix).
pub fn encode(frame: &Frame) -> Result<Vec<u8>, ProtocolError> {
    bincode::serde::encode_to_vec(frame, config()).map_err(|e| ProtocolError::Encode {
        kind: frame.kind(),
        reason: e.to_string(),
    })
}

/// Decode a frame body. Trailing bytes are an error: a frame is exactly one message.
pub fn decode(body: &[u8]) -> Result<Frame, ProtocolError> {
    let (frame, used) = bincode::serde::decode_from_slice::<Frame, _>(body, config())
        .map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(ProtocolError::Decode(format!(
            "{} trailing bytes after a {} frame",
            body.len() - used,
            frame.kind()
        )));
    }
    Ok(frame)
}

/// Length of the big-endian length prefix of every frame.
const PREFIX: usize = 4;

/// bincode writes straight into the codec's output buffer: no intermediate `Vec` per frame.
struct BufWriter<'a>(&'a mut BytesMut);

impl bincode::enc::write::Writer for BufWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// A `tokio_util` codec turning a byte stream into [`Frame`]s and back: a 4-byte big-endian
/// length, then the bincode body (the framing of `LengthDelimitedCodec`, done here so that a
/// frame is encoded in place in the write buffer and decoded in place from the read buffer).
#[derive(Debug)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    /// A codec refusing frames larger than `max_frame` bytes in either direction.
    pub fn new(max_frame: usize) -> Self {
        FrameCodec { max_frame }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        let Some(prefix) = src.get(..PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max_frame {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let end = PREFIX + len;
        if src.len() < end {
            // Room for the rest of this frame, so the next read can complete it.
            src.reserve(end - src.len());
            return Ok(None);
        }
        let frame = decode(&src[PREFIX..end]);
        src.advance(end);
        frame.map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtocolError::Truncated),
        }
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.put_u32(0);
        let written = bincode::serde::encode_into_writer(frame, BufWriter(dst), config());
        let len = dst.len() - start - PREFIX;
        if let Err(e) = written {
            dst.truncate(start);
            return Err(ProtocolError::Encode {
                kind: frame.kind(),
                reason: e.to_string(),
            });
        }
        // The prefix is 4 bytes, whatever `max_frame` says.
        if len > self.max_frame || len > u32::MAX as usize {
            dst.truncate(start);
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        dst[start..start + PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        Encoder::<&Frame>::encode(self, &frame, dst)
    }
}

#[cfg(test)]
mod tests {
    //! The boxed and shared payloads of `Frame` (protocol 5) must encode exactly as the inline
    //! ones did: `Old*` below are the types as they were, field for field.

    use std::sync::Arc;

    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    use super::*;
    use crate::message::*;

    #[derive(Serialize, Deserialize)]
    enum OldFrame {
        Challenge(Challenge),
        Hello(Hello),
        Welcome(Welcome),
        Reject(Reject),
        Call { id: u64, call: Call },
        Reply { id: u64, reply: Reply },
        Event { seq: u64, event: OldEvent },
        Ack { seq: u64 },
        Heartbeat,
    }

    #[derive(Serialize, Deserialize)]
    enum OldEvent {
        Results(ResultRecord),
        RunFailed(RunFailure),
        WorkerAvailable {
            running: Vec<RunningStream>,
            last: bool,
        },
        Run(Box<RunReport>),
    }

    fn old_encode(frame: &OldFrame) -> Vec<u8> {
        bincode::serde::encode_to_vec(frame, config()).unwrap()
    }

    fn config_sample() -> StreamConfig {
        StreamConfig {
            stream_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            generation: 300,
            adapter: "IQAIR_DAILY".into(),
            endpoint: "http://api.airvisual.com/v2/nearest_city".into(),
            secret_key: "k-123".into(),
            schedule: Schedule::Cron {
                expr: "0 */15 * * * *".into(),
            },
            timeout_ms: 180_000,
            bucket_name: "results".into(),
            params: [("lat".to_owned(), "52.52".to_owned())].into(),
            rate_limit: RateLimit::COMMUNITY,
            source: "{}".into(),
            window_start_ms: Some(-5),
        }
    }

    fn record() -> ResultRecord {
        let id = Uuid::from_u128(7 << 64 | 9);
        ResultRecord {
            result_id: id,
            stream_id: Uuid::from_u128(3),
            adapter: "IQAIR_DAILY".into(),
            bucket: "results".into(),
            key: format!("IQAIR_DAILY/stream_id=3/dt=2026-12-06/{id}.json"),
            fetched_at_ms: 1_765_000_000_000,
            scheduled_at_ms: 1_764_999_999_000,
            started_at_ms: 1_764_999_999_010,
            size: 1_234,
            sha256: "ab".repeat(32),
            measurement: Some(Box::new(Measurement {
                city: Some("Berlin".into()),
                aqius: Some(17.0),
                ..Measurement::default()
            })),
            run_id: Uuid::from_u128(11),
            page: 2,
            records: Some(40),
            attempts: 3,
            ends_run: false,
        }
    }

    fn failure() -> RunFailure {
        RunFailure {
            run_id: Uuid::from_u128(12),
            stream_id: Uuid::from_u128(3),
            at_ms: 1_765_000_000_000,
            class: FailureClass::RateLimited,
            message: "call_per_minute_limit_reached".into(),
            stream_stopped: true,
            scheduled_at_ms: 1,
            started_at_ms: 2,
            attempts: 0,
        }
    }

    fn hello() -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "worker-1".into(),
            capacity: 10_000,
            adapters: vec!["IQAIR_DAILY".into(), "HTTP_JSON".into()],
            running: 12,
            mac: vec![9; 32],
        }
    }

    /// Every reshaped variant, as it is now and as it was.
    fn pairs() -> Vec<(Frame, OldFrame)> {
        let start = Call::Start(config_sample());
        let many = Call::StartMany(vec![config_sample(), config_sample()]);
        vec![
            (Frame::Hello(Box::new(hello())), OldFrame::Hello(hello())),
            (
                Frame::Call {
                    id: 1 << 40,
                    call: Box::new(start.clone()),
                },
                OldFrame::Call {
                    id: 1 << 40,
                    call: start,
                },
            ),
            (
                Frame::Call {
                    id: 2,
                    call: Box::new(many.clone()),
                },
                OldFrame::Call { id: 2, call: many },
            ),
            (
                Frame::Event {
                    seq: 77,
                    event: Event::Results(Arc::new(record())),
                },
                OldFrame::Event {
                    seq: 77,
                    event: OldEvent::Results(record()),
                },
            ),
            (
                Frame::Event {
                    seq: 78,
                    event: Event::RunFailed(Arc::new(failure())),
                },
                OldFrame::Event {
                    seq: 78,
                    event: OldEvent::RunFailed(failure()),
                },
            ),
            (
                Frame::Event {
                    seq: 0,
                    event: Event::WorkerAvailable {
                        running: vec![RunningStream {
                            stream_id: Uuid::from_u128(5),
                            generation: 6,
                        }],
                        last: true,
                    },
                },
                OldFrame::Event {
                    seq: 0,
                    event: OldEvent::WorkerAvailable {
                        running: vec![RunningStream {
                            stream_id: Uuid::from_u128(5),
                            generation: 6,
                        }],
                        last: true,
                    },
                },
            ),
            (Frame::Ack { seq: 9 }, OldFrame::Ack { seq: 9 }),
            (Frame::Heartbeat, OldFrame::Heartbeat),
        ]
    }

    #[test]
    fn boxed_and_shared_payloads_encode_byte_for_byte_as_inline_ones() {
        for (frame, old) in pairs() {
            let bytes = encode(&frame).unwrap();
            assert_eq!(bytes, old_encode(&old), "{}", frame.kind());
            // And the codec's in-place encoding writes the same body after its prefix.
            let mut buf = BytesMut::new();
            FrameCodec::default().encode(&frame, &mut buf).unwrap();
            assert_eq!(&buf[PREFIX..], &bytes[..], "{}", frame.kind());
            assert_eq!(decode(&bytes).unwrap(), frame);
        }
    }

    #[test]
    fn a_decoded_record_is_held_once_and_taken_out_without_a_copy() {
        let frame = Frame::Event {
            seq: 1,
            event: Event::Results(Arc::new(record())),
        };
        let Frame::Event {
            event: Event::Results(decoded),
            ..
        } = decode(&encode(&frame).unwrap()).unwrap()
        else {
            panic!("not a results event");
        };
        assert_eq!(Arc::strong_count(&decoded), 1);
        let key_at = decoded.key.as_ptr();
        let owned = Arc::unwrap_or_clone(decoded);
        assert_eq!(owned.key.as_ptr(), key_at, "the record was copied");
        assert_eq!(owned, record());
    }

    #[test]
    fn the_codec_decodes_frames_from_the_read_buffer() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        for (frame, _) in pairs() {
            codec.encode(&frame, &mut buf).unwrap();
        }
        for (frame, _) in pairs() {
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame));
        }
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }
}
