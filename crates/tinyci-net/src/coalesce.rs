//! The write half capnp-rpc writes to.
//!
//! capnp writes each message as several `write_all`s (segment table, then each segment) and
//! flushes after each message; straight into a TLS stream every one of those becomes its own
//! TLS record and its own `send` syscall. Buffering them makes a small message one record and
//! one syscall; a write larger than the buffer (a log chunk) still goes straight through.
//!
//! The buffer exists only while a message is being written: it is allocated by the first
//! write after a flush and given back once the flush has written it out. An idle connection
//! holds none. Held for a connection's life instead (as `futures::io::BufWriter` holds it),
//! 16 KiB per connection was the largest single cost of a site's idle runners.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::AsyncWrite;

/// Bytes gathered before they are written out; also the size from which a write bypasses the
/// buffer.
const CAPACITY: usize = 16 * 1024;

/// Gathers a message's writes into one; see the module docs.
#[derive(Debug)]
pub(crate) struct Coalesce<W> {
    inner: W,
    /// What has been gathered: empty, with no capacity, between messages.
    buf: Vec<u8>,
    /// How much of `buf` is already written to `inner`.
    written: usize,
}

impl<W: AsyncWrite + Unpin> Coalesce<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }

    /// Writes out what is gathered; then gives the buffer back if `release` (a message is
    /// done), or keeps it empty for the rest of a message larger than the buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>, release: bool) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if release {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Coalesce<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > CAPACITY {
            ready!(this.poll_drain(cx, false))?;
        }
        if data.len() >= CAPACITY {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if this.buf.capacity() == 0 {
            this.buf.reserve_exact(CAPACITY);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx, true))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx, true))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::AsyncWriteExt as _;

    use super::*;

    /// Records each write it is given; accepts at most `max` bytes a call.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        max: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = data.len().min(this.max);
            this.writes.push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn recorder(max: usize) -> Coalesce<Recorder> {
        Coalesce::new(Recorder {
            max,
            ..Recorder::default()
        })
    }

    #[test]
    fn a_small_message_is_one_write_and_no_buffer_is_held_after_it() {
        futures::executor::block_on(async {
            let mut out = recorder(usize::MAX);
            for part in [&b"table"[..], b"segment one", b"segment two"] {
                out.write_all(part).await.unwrap();
            }
            assert!(out.inner.writes.is_empty(), "written before the flush");
            out.flush().await.unwrap();
            assert_eq!(out.inner.writes, [b"tablesegment onesegment two".to_vec()]);
            assert_eq!(out.inner.flushes, 1);
            assert_eq!(out.buf.capacity(), 0, "an idle connection holds a buffer");
        });
    }

    #[test]
    fn a_large_write_goes_straight_through_after_what_was_gathered() {
        futures::executor::block_on(async {
            let mut out = recorder(usize::MAX);
            out.write_all(b"head").await.unwrap();
            let chunk = vec![7u8; CAPACITY + 1];
            out.write_all(&chunk).await.unwrap();
            out.flush().await.unwrap();
            assert_eq!(out.inner.writes, [b"head".to_vec(), chunk]);
        });
    }

    #[test]
    fn a_short_write_underneath_loses_nothing() {
        futures::executor::block_on(async {
            let mut out = recorder(3);
            out.write_all(b"abcdefgh").await.unwrap();
            out.close().await.unwrap();
            assert_eq!(out.inner.writes.concat(), b"abcdefgh");
            assert_eq!(out.buf.capacity(), 0);
        });
    }
}
