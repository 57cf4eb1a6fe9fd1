//! A framed connection: one socket (TCP or TLS), reading and writing whole [`Frame`]s.

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::codec::FrameCodec;
use crate::error::ProtocolError;
use crate::message::Frame;

/// A socket that speaks frames. `read_frame` returns `Ok(None)` on a clean close between frames
/// and [`ProtocolError::Truncated`] when the peer hangs up in the middle of one.
#[derive(Debug)]
pub struct Connection<T> {
    framed: Framed<T, FrameCodec>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    /// Wrap a socket, refusing frames over `max_frame` bytes.
    pub fn new(io: T, max_frame: usize) -> Self {
        Connection {
            framed: Framed::new(io, FrameCodec::new(max_frame)),
        }
    }

    /// The next frame, or `None` when the peer closed cleanly. Cancel-safe.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        self.framed.next().await.transpose()
    }

    /// Write one frame and flush it.
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), ProtocolError> {
        self.framed.send(frame).await
    }

    /// Queue a frame without flushing (to batch several frames into one write).
    pub async fn feed_frame(&mut self, frame: &Frame) -> Result<(), ProtocolError> {
        self.framed.feed(frame).await
    }

    /// Flush queued frames.
    pub async fn flush(&mut self) -> Result<(), ProtocolError> {
        SinkExt::<&Frame>::flush(&mut self.framed).await
    }

    /// Split into the two halves the link actor drives concurrently.
    pub(crate) fn into_framed(self) -> Framed<T, FrameCodec> {
        self.framed
    }

    /// The underlying socket.
    pub fn get_ref(&self) -> &T {
        self.framed.get_ref()
    }
}
