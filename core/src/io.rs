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
    /// A writer whose buffer is allocated by the first frame.
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
        }
    }

    /// Copies `frame` into the buffer when none of its chunks is too large to copy (the
    /// common case, which needs no waiting); false, copying nothing, otherwise.
    pub(crate) fn gather(&mut self, frame: &EncodedFrame) -> bool {
        let parts = frame.parts();
        if parts.iter().any(|p| p.len() >= COPY_LIMIT) {
            return false;
        }
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        true
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

/// Encoded frames waiting for a socket that is written without a task of its own: small
/// chunks are gathered into one buffer, large ones are queued as they are, and all of it
/// leaves in one vectored write when the socket takes it. Holds no memory while empty
/// (beyond what the gathering buffer grew to), so an idle connection costs little.
#[derive(Default)]
pub(crate) struct OutQueue {
    /// Chunks to write before `tail`, in order.
    chunks: std::collections::VecDeque<bytes::Bytes>,
    /// Small chunks gathered after `chunks`.
    tail: BytesMut,
    len: usize,
}

/// Slices handed to one vectored write.
const MAX_IOVECS: usize = 32;

impl OutQueue {
    /// Queues the chunks of `frame`.
    pub(crate) fn push(&mut self, frame: EncodedFrame) {
        for part in frame.into_parts() {
            self.len += part.len();
            if part.len() >= COPY_LIMIT {
                if !self.tail.is_empty() {
                    self.chunks.push_back(self.tail.split().freeze());
                }
                self.chunks.push_back(part);
            } else {
                self.tail.extend_from_slice(&part);
            }
        }
    }

    /// Bytes queued and not yet written.
    pub(crate) fn pending(&self) -> usize {
        self.len
    }

    /// Hands what is queued to `write` (a vectored write of up to [`MAX_IOVECS`] slices,
    /// in order) until all of it is written (ready with `Ok`), `write` is pending, or it
    /// fails.
    fn write_with(
        &mut self,
        mut write: impl FnMut(&[std::io::IoSlice<'_>]) -> std::task::Poll<std::io::Result<usize>>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while self.len > 0 {
            let n = {
                let mut slices = [std::io::IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for c in self.chunks.iter().take(MAX_IOVECS - 1) {
                    slices[count] = std::io::IoSlice::new(c);
                    count += 1;
                }
                // The tail follows the chunks: it goes only with the last of them.
                if count == self.chunks.len() && !self.tail.is_empty() {
                    slices[count] = std::io::IoSlice::new(&self.tail);
                    count += 1;
                }
                match write(&slices[..count]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            };
            self.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Writes what is queued until all of it is written (ready with `Ok`), the socket
    /// is full (pending; the task is woken when it drains) or the write fails.
    pub(crate) fn poll_write_to<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        mut w: std::pin::Pin<&mut W>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.write_with(|slices| match slices {
            [one] => w.as_mut().poll_write(cx, one),
            _ => w.as_mut().poll_write_vectored(cx, slices),
        })
    }

    /// Writes what is queued as far as the socket takes it now, from any task and
    /// without registering for the socket's readiness: `Ok(true)` when all of it left,
    /// `Ok(false)` when the socket is full and the rest stays queued.
    pub(crate) fn try_write_to(
        &mut self,
        w: &tokio::net::tcp::OwnedWriteHalf,
    ) -> std::io::Result<bool> {
        use std::task::Poll;
        let written = self.write_with(|slices| {
            let r = match slices {
                [one] => w.try_write(one),
                _ => w.try_write_vectored(slices),
            };
            match r {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Poll::Pending,
                r => Poll::Ready(r),
            }
        });
        match written {
            Poll::Ready(r) => r.map(|()| true),
            Poll::Pending => Ok(false),
        }
    }

    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            match self.chunks.front_mut() {
                Some(front) if front.len() <= n => {
                    n -= front.len();
                    self.chunks.pop_front();
                }
                Some(front) => {
                    front.advance(n);
                    return;
                }
                None => {
                    self.tail.advance(n);
                    return;
                }
            }
        }
        if self.len == 0 {
            // Writing from the start of the buffer again lets it be reused in place.
            self.tail.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(parts: &[&[u8]]) -> EncodedFrame {
        let mut f = EncodedFrame::new();
        for p in parts {
            f.push(Bytes::copy_from_slice(p));
        }
        f
    }

    /// Takes at most `max` bytes per write, from as many slices as it is given, and
    /// counts the writes: a small `max` takes every partial-write path.
    struct Sink {
        written: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl Sink {
        fn new(max: usize) -> Self {
            Self {
                written: Vec::new(),
                max,
                calls: 0,
            }
        }
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.written.extend_from_slice(&b[..take]);
                n += take;
            }
            std::task::Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_frames_are_gathered_at_once_and_large_chunks_wait_for_the_socket() {
        let mut w = FrameWriter::new(Sink::new(usize::MAX));
        assert!(w.gather(&frame(&[b"head ", b"body"])));
        let big = vec![b'x'; COPY_LIMIT];
        let large = frame(&[b"+", &big]);
        assert!(
            !w.gather(&large),
            "a frame with a large chunk is not copied"
        );
        assert_eq!(w.buf.len(), 9, "nothing of it was gathered");
        w.push(large).await.expect("writes");
        w.flush().await.expect("flushes");
        let mut expected = b"head body+".to_vec();
        expected.extend_from_slice(&big);
        assert_eq!(w.get_mut().written, expected);
    }

    #[test]
    fn more_large_chunks_than_one_write_takes_still_leave_before_the_tail() {
        let mut q = OutQueue::default();
        let mut expected = Vec::new();
        for i in 0..(MAX_IOVECS + 5) {
            let big = vec![i as u8; COPY_LIMIT];
            let small = [b'a' + (i % 26) as u8, b'.'];
            q.push(frame(&[&big, &small]));
            expected.extend_from_slice(&big);
            expected.extend_from_slice(&small);
        }
        let mut w = Sink::new(usize::MAX);
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let r = q.poll_write_to(&mut cx, std::pin::Pin::new(&mut w));
        assert!(matches!(r, std::task::Poll::Ready(Ok(()))));
        assert!(w.calls > 1, "more slices than one vectored write takes");
        assert_eq!(w.written.len(), expected.len());
        assert!(
            w.written == expected,
            "bytes left in the order they were queued"
        );
    }

    #[test]
    fn the_queue_writes_small_and_large_chunks_in_order_through_partial_writes() {
        let big_a = vec![b'a'; COPY_LIMIT];
        let big_b = vec![b'b'; COPY_LIMIT + 3];
        let mut q = OutQueue::default();
        q.push(frame(&[b"head1", &big_a, b"tail1"]));
        q.push(frame(&[b"x"]));
        q.push(frame(&[&big_b, b"end"]));
        let mut expected = Vec::new();
        for p in [&b"head1"[..], &big_a, b"tail1", b"x", &big_b, b"end"] {
            expected.extend_from_slice(p);
        }
        assert_eq!(q.pending(), expected.len());
        for max in [1, 7, 4096, usize::MAX] {
            let mut q2 = OutQueue::default();
            q2.push(frame(&[b"head1", &big_a, b"tail1"]));
            q2.push(frame(&[b"x"]));
            q2.push(frame(&[&big_b, b"end"]));
            let mut w = Sink::new(max);
            let waker = futures_util::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            let r = q2.poll_write_to(&mut cx, std::pin::Pin::new(&mut w));
            assert!(matches!(r, std::task::Poll::Ready(Ok(()))));
            assert_eq!(w.written, expected, "max {max}");
            assert_eq!(q2.pending(), 0);
        }
    }
}
