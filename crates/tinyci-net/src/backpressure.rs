//! Backpressure on a served connection: while the peer is not taking our replies (the socket
//! will not accept more of what we write), we stop reading its requests. A peer that
//! pipelines calls without reading the answers then holds at most the calls read before its
//! replies backed up, plus the socket buffers, instead of growing our reply queue without
//! bound; a peer that reads as it goes never notices.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures::{AsyncRead, AsyncWrite};

/// Whether writing is stuck, and the reader to wake when it is not.
#[derive(Debug, Default)]
struct Gate {
    blocked: bool,
    reader: Option<Waker>,
}

/// Pairs a connection's read and write halves so reading pauses while writing is stuck.
/// `on_pause` is called each time reading pauses.
pub(crate) fn pace<R, W>(
    read: R,
    write: W,
    on_pause: impl Fn() + 'static,
) -> (PacedRead<R>, WatchedWrite<W>) {
    let gate = Rc::new(RefCell::new(Gate::default()));
    (
        PacedRead {
            inner: read,
            gate: gate.clone(),
            on_pause: Box::new(on_pause),
            paused: false,
        },
        WatchedWrite { inner: write, gate },
    )
}

/// The read half: pending while the write half is stuck.
pub(crate) struct PacedRead<R> {
    inner: R,
    gate: Rc<RefCell<Gate>>,
    on_pause: Box<dyn Fn()>,
    paused: bool,
}

impl<R: AsyncRead + Unpin> AsyncRead for PacedRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        {
            let mut gate = this.gate.borrow_mut();
            if gate.blocked {
                gate.reader = Some(cx.waker().clone());
                if !this.paused {
                    this.paused = true;
                    (this.on_pause)();
                }
                return Poll::Pending;
            }
        }
        this.paused = false;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// The write half: notes when the socket will not take more, and when it takes some again.
pub(crate) struct WatchedWrite<W> {
    inner: W,
    gate: Rc<RefCell<Gate>>,
}

impl<W> WatchedWrite<W> {
    fn note<T>(&self, result: &Poll<T>) {
        let mut gate = self.gate.borrow_mut();
        if result.is_pending() {
            gate.blocked = true;
        } else if gate.blocked {
            gate.blocked = false;
            if let Some(reader) = gate.reader.take() {
                reader.wake();
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WatchedWrite<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note(&result);
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.note(&result);
        result
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Closing: nothing more will be read that needs an answer.
        let result = Pin::new(&mut this.inner).poll_close(cx);
        this.note(&Poll::Ready(()));
        result
    }
}
