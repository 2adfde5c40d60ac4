//! Writing encoded frames to a socket: small chunks are gathered into one buffer so a
//! burst of replies costs one syscall; large chunks are written straight from the buffer
//! they were read into.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::codec::EncodedFrame;

/// Chunks at least this large are written without copying.
const COPY_LIMIT: usize = 16 * 1024;
/// Gathered bytes after which the buffer is flushed even if more frames are queued.
pub(crate) const FLUSH_AT: usize = 64 * 1024;

/// A socket writer that batches small frames.
pub(crate) struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Queues `frame`; writes at once whatever is too large to copy.
    pub(crate) async fn push(&mut self, frame: EncodedFrame) -> std::io::Result<()> {
        for mut part in frame.into_parts() {
            if part.len() >= COPY_LIMIT {
                self.flush().await?;
                while part.has_remaining() {
                    let n = self.inner.write(&part).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::WriteZero.into());
                    }
                    part.advance(n);
                }
            } else {
                self.buf.extend_from_slice(&part);
            }
        }
        Ok(())
    }

    /// The socket, for writing past the batching (tunnels); flush first.
    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Bytes gathered and not yet written.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything gathered.
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Flushes and shuts the write side down.
    pub(crate) async fn shutdown(&mut self) -> std::io::Result<()> {
        self.flush().await?;
        self.inner.shutdown().await
    }
}

/// Before a writer pays a syscall for what it gathered: lets the tasks that are about to
/// queue a frame on `rx` run first (one yield), and returns the next frame if one came.
/// Under load, the answers of many requests then leave in one write; an idle connection
/// pays one yield.
pub(crate) async fn gather<T>(rx: &mut tokio::sync::mpsc::Receiver<T>) -> Option<T> {
    tokio::task::yield_now().await;
    rx.try_recv().ok()
}
