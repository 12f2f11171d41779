//! Backpressure on a served connection, by pausing reads rather than buffering:
//!
//! - while the peer is not taking our replies (the socket will not accept more of what we
//!   write), we stop reading its requests. A peer that pipelines calls without reading the
//!   answers then holds at most the calls read before its replies backed up, plus the socket
//!   buffers, instead of growing our reply queue without bound;
//! - while the peer has `max_outstanding` calls we have read and not yet answered, we stop
//!   reading, so the calls (and the replies they will make) one connection holds are bounded
//!   by count, not only by how fast the socket drains.
//!
//! Calls and answers are counted from the frames themselves (a `Call` or `Bootstrap` read, a
//! `Return` written), so every capability is covered without its code taking part. A peer
//! that reads as it goes and keeps a sane number of calls in flight never notices.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures::{AsyncRead, AsyncWrite};

/// Why a connection's reading paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pause {
    /// The socket would not take more of our replies.
    RepliesUnread,
    /// The peer has as many unanswered calls as it may.
    CallsOutstanding,
}

/// Whether writing is stuck, how many calls await their answer, and the reader to wake when
/// it may go on.
struct Gate {
    blocked: bool,
    outstanding: usize,
    max_outstanding: usize,
    reader: Option<Waker>,
    /// Told of each change of `outstanding` (+1 read, -1 answered), for the listener's total.
    on_count: Box<dyn Fn(i64)>,
}

impl Gate {
    fn pause(&self) -> Option<Pause> {
        if self.blocked {
            Some(Pause::RepliesUnread)
        } else if self.outstanding >= self.max_outstanding {
            Some(Pause::CallsOutstanding)
        } else {
            None
        }
    }

    fn wake_reader_if_free(&mut self) {
        if self.pause().is_none()
            && let Some(reader) = self.reader.take()
        {
            reader.wake();
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // The connection is gone: its unanswered calls leave the listener's total.
        if self.outstanding > 0 {
            (self.on_count)(-i64::try_from(self.outstanding).unwrap_or(i64::MAX));
        }
    }
}

/// Pairs a connection's read and write halves so reading pauses while writing is stuck or
/// while `max_outstanding` calls await their answer. `on_pause` is called each time reading
/// pauses, `on_count` with each change of the number of calls awaiting an answer.
pub(crate) fn pace<R, W>(
    read: R,
    write: W,
    max_outstanding: usize,
    on_pause: impl Fn(Pause) + 'static,
    on_count: impl Fn(i64) + 'static,
) -> (PacedRead<R>, WatchedWrite<W>) {
    let gate = Rc::new(RefCell::new(Gate {
        blocked: false,
        outstanding: 0,
        max_outstanding: max_outstanding.max(1),
        reader: None,
        on_count: Box::new(on_count),
    }));
    (
        PacedRead {
            inner: read,
            gate: gate.clone(),
            on_pause: Box::new(on_pause),
            paused: false,
            frames: Frames::default(),
        },
        WatchedWrite {
            inner: write,
            gate,
            frames: Frames::default(),
        },
    )
}

/// The read half: pending while the write half is stuck or too many calls are unanswered.
pub(crate) struct PacedRead<R> {
    inner: R,
    gate: Rc<RefCell<Gate>>,
    on_pause: Box<dyn Fn(Pause)>,
    paused: bool,
    /// The peer's messages, to count its calls.
    frames: Frames,
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
            if let Some(why) = gate.pause() {
                gate.reader = Some(cx.waker().clone());
                if !this.paused {
                    this.paused = true;
                    (this.on_pause)(why);
                }
                return Poll::Pending;
            }
        }
        this.paused = false;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            let mut calls = 0usize;
            this.frames.feed(&buf[..*n], |kind| {
                // A message we cannot place counts as a call: only a peer hand-crafting
                // frames sends one, and the cap then binds it sooner, not later.
                if matches!(kind, None | Some(CALL | BOOTSTRAP)) {
                    calls += 1;
                }
            });
            if calls > 0 {
                let mut gate = this.gate.borrow_mut();
                gate.outstanding += calls;
                (gate.on_count)(i64::try_from(calls).unwrap_or(i64::MAX));
            }
        }
        result
    }
}

/// The write half: notes when the socket will not take more, and when it takes some again;
/// counts the answers it carries.
pub(crate) struct WatchedWrite<W> {
    inner: W,
    gate: Rc<RefCell<Gate>>,
    /// Our messages, to count the answers.
    frames: Frames,
}

impl<W> WatchedWrite<W> {
    fn note<T>(&self, result: &Poll<T>) {
        let mut gate = self.gate.borrow_mut();
        gate.blocked = result.is_pending();
        gate.wake_reader_if_free();
    }

    /// Counts the answers among `bytes`, which the socket has taken.
    fn answered(&mut self, bytes: &[u8]) {
        let mut returns = 0usize;
        self.frames.feed(bytes, |kind| {
            if kind == Some(RETURN) {
                returns += 1;
            }
        });
        if returns > 0 {
            let mut gate = self.gate.borrow_mut();
            let answered = returns.min(gate.outstanding);
            gate.outstanding -= answered;
            (gate.on_count)(-i64::try_from(answered).unwrap_or(i64::MAX));
            gate.wake_reader_if_free();
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
        if let Poll::Ready(Ok(n)) = &result {
            this.answered(&buf[..*n]);
        }
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

/// `rpc.capnp`'s `Message` union discriminants this module counts.
const CALL: u16 = 2;
const RETURN: u16 = 3;
const BOOTSTRAP: u16 = 8;

/// Most segments a frame may have before we stop following the stream (the reader options
/// refuse far fewer; the connection ends on such a frame anyway).
const MAX_SEGMENTS: usize = 512;

/// Follows Cap'n Proto's stream framing over arbitrary byte slices and names each complete
/// message's `rpc.capnp` `Message` discriminant: the segment table is read, the first 16
/// bytes of the first segment kept (the root pointer and the struct's first data word, where
/// the discriminant lives), and the rest skipped, so it holds at most one segment table.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    /// The frame's segment table, while incomplete.
    header: Vec<u8>,
    /// Bytes of the frame's segments still to pass, once the table is complete.
    body_left: u64,
    /// The first bytes of the first segment, and how many of them the frame has.
    head: [u8; 16],
    head_len: usize,
    head_want: usize,
    in_body: bool,
    /// The stream stopped making sense; nothing more is reported.
    lost: bool,
}

impl Frames {
    /// Consumes `bytes`, calling `message` with each completed message's discriminant (`None`
    /// when its root is not laid out as our peers lay it out).
    pub(crate) fn feed(&mut self, mut bytes: &[u8], mut message: impl FnMut(Option<u16>)) {
        while !bytes.is_empty() && !self.lost {
            if self.in_body {
                if self.head_len < self.head_want {
                    let take = (self.head_want - self.head_len).min(bytes.len());
                    self.head[self.head_len..self.head_len + take].copy_from_slice(&bytes[..take]);
                    self.head_len += take;
                }
                let take = usize::try_from(self.body_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.body_left -= take as u64;
                bytes = &bytes[take..];
                if self.body_left == 0 {
                    message(self.discriminant());
                    self.in_body = false;
                }
                continue;
            }
            let need = self.header_len().unwrap_or(4);
            let take = need.saturating_sub(self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            match self.header_len() {
                None if self.header.len() >= 4 => self.lost = true,
                Some(len) if self.header.len() == len => self.start_body(&mut message),
                _ => {}
            }
        }
    }

    /// The segment table's length in bytes, once its first word is known.
    fn header_len(&self) -> Option<usize> {
        let count = self.header.get(..4)?;
        let segments = u32::from_le_bytes([count[0], count[1], count[2], count[3]]) as usize + 1;
        if segments > MAX_SEGMENTS {
            return None;
        }
        // The count and one size per segment, padded to a whole word.
        Some((4 + 4 * segments).div_ceil(8) * 8)
    }

    fn start_body(&mut self, message: &mut impl FnMut(Option<u16>)) {
        let word = |i: usize| {
            let w = &self.header[i * 4..i * 4 + 4];
            u32::from_le_bytes([w[0], w[1], w[2], w[3]])
        };
        let segments = word(0) as usize + 1;
        let words: u64 = (1..=segments).map(|i| u64::from(word(i))).sum();
        let first = u64::from(word(1));
        self.header.clear();
        self.body_left = words.saturating_mul(8);
        self.head_len = 0;
        self.head_want = usize::try_from(first.saturating_mul(8)).map_or(16, |b| b.min(16));
        if self.body_left == 0 {
            message(None);
        } else {
            self.in_body = true;
        }
    }

    /// The `Message` discriminant, if the root is a struct pointer to the word right after
    /// it with a data section (how capnp lays out every message it builds).
    fn discriminant(&self) -> Option<u16> {
        if self.head_len < 16 {
            return None;
        }
        let root = u64::from_le_bytes(self.head[..8].try_into().ok()?);
        let is_struct = root & 3 == 0;
        let offset = (root as u32) >> 2;
        let data_words = (root >> 32) & 0xffff;
        (is_struct && offset == 0 && data_words >= 1)
            .then(|| u16::from_le_bytes([self.head[8], self.head[9]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capnp_rpc::rpc_capnp::message;

    fn frame(build: impl FnOnce(message::Builder<'_>)) -> Vec<u8> {
        let mut msg = capnp::message::Builder::new_default();
        build(msg.init_root());
        capnp::serialize::write_message_to_words(&msg)
    }

    fn kinds(bytes: &[u8], step: usize) -> Vec<Option<u16>> {
        let mut frames = Frames::default();
        let mut seen = Vec::new();
        for piece in bytes.chunks(step) {
            frames.feed(piece, |kind| seen.push(kind));
        }
        seen
    }

    #[test]
    fn calls_and_returns_are_named_however_the_bytes_are_cut() {
        let mut stream = frame(|m| {
            m.init_call().set_question_id(1);
        });
        stream.extend(frame(|m| {
            m.init_return().set_answer_id(1);
        }));
        stream.extend(frame(|m| {
            m.init_bootstrap().set_question_id(2);
        }));
        stream.extend(frame(|m| {
            m.init_finish().set_question_id(1);
        }));
        for step in [1, 3, 7, 8, 64, stream.len()] {
            assert_eq!(
                kinds(&stream, step),
                vec![Some(CALL), Some(RETURN), Some(BOOTSTRAP), Some(4)],
                "cut every {step} bytes"
            );
        }
    }

    #[test]
    fn a_root_laid_out_otherwise_is_not_placed() {
        // One segment of two words: a far pointer as the root (kind 2), then a word.
        let mut bytes = vec![0, 0, 0, 0, 2, 0, 0, 0];
        bytes.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(kinds(&bytes, 5), vec![None]);
        // A segment table claiming too many segments: nothing more is reported.
        let huge = [0xff, 0xff, 0, 0, 1, 0, 0, 0];
        assert_eq!(kinds(&huge, 8), Vec::<Option<u16>>::new());
    }
}
