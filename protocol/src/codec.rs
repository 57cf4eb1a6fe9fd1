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
