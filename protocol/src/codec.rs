//! The only module that names bincode: frames are length-delimited (4-byte big-endian length)
//! and their bodies are bincode 2 through serde. Keeping the encoding here means the format can
//! move to a bincode-compatible crate without touching the message types.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

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

/// A `tokio_util` codec turning a byte stream into [`Frame`]s and back.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max_frame: usize,
}

impl FrameCodec {
    /// A codec refusing frames larger than `max_frame` bytes in either direction.
    pub fn new(max_frame: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .big_endian()
            .max_frame_length(max_frame)
            .new_codec();
        FrameCodec { inner, max_frame }
    }

    fn map_err(&self, err: std::io::Error, pending: usize) -> ProtocolError {
        // LengthDelimitedCodec reports an oversize length as InvalidData before reading the body.
        if err.kind() == std::io::ErrorKind::InvalidData {
            ProtocolError::FrameTooLarge {
                len: pending,
                max: self.max_frame,
            }
        } else {
            ProtocolError::Io(err)
        }
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
        let announced = announced_len(src);
        match self.inner.decode(src) {
            Ok(Some(body)) => decode(&body).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(self.map_err(e, announced)),
        }
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
        let body = encode(frame)?;
        if body.len() > self.max_frame {
            return Err(ProtocolError::FrameTooLarge {
                len: body.len(),
                max: self.max_frame,
            });
        }
        self.inner
            .encode(Bytes::from(body), dst)
            .map_err(ProtocolError::Io)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        Encoder::<&Frame>::encode(self, &frame, dst)
    }
}

fn announced_len(src: &BytesMut) -> usize {
    match src.get(..4) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
        None => 0,
    }
}
