//! The live state of logs and the writers that append to them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use tinyci_store::records::{LogChunk, LogRecord, LogSpan, log_key};
use tinyci_store::tables::LOG_CHUNKS;
use tinyci_store::{GroupCommitter, Store};
use tokio::sync::watch;

use crate::follow::FollowStats;
use crate::read::{off_thread, read_chunks, read_error, stored_length};
use crate::{LOG_COMMIT_WINDOW, LogError, MAX_LOG_CHUNK, Stream};

/// Called with the byte count of each commit of log chunks (for metrics).
type StoredHook = Rc<dyn Fn(usize)>;

/// The logs of one site: the live state of the logs being written or followed, and the way
/// to read any log. One per site.
pub struct Logs {
    store: Store,
    committer: GroupCommitter,
    /// `[logs] max_run_bytes`.
    max_run_bytes: u64,
    runs: RefCell<HashMap<u64, Rc<RunLog>>>,
    pub(crate) stats: Rc<FollowStats>,
    on_stored: StoredHook,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs")
            .field("max_run_bytes", &self.max_run_bytes)
            .field("live", &self.runs.borrow().len())
            .finish_non_exhaustive()
    }
}

/// Where a run's log stands, for its writers and followers.
#[derive(Debug)]
pub(crate) struct RunLog {
    pub(crate) run: u64,
    state: RefCell<WriteState>,
    /// Bytes durably stored; followers wait on it.
    pub(crate) durable: watch::Sender<u64>,
}

#[derive(Debug)]
struct WriteState {
    /// Offset the next chunk from the runner must start at (writes in flight included).
    next_input: u64,
    /// Offset in the stored log the next chunk goes to. Equal to `next_input` until the log
    /// is truncated, after which input is discarded.
    next_stored: u64,
    /// The lease whose writer writes; a writer of an older lease is refused.
    writer: u32,
    /// Set once the log reached its size limit.
    truncated: bool,
    /// Set when a commit failed: the log refuses everything after it.
    failed: Option<Arc<tinyci_store::StoreError>>,
    /// Chunks accepted but not yet handed to the committer, in log order.
    queued: Vec<(u64, LogChunk)>,
    /// The stored log's end once `queued` is durable.
    queued_end: u64,
    /// Whether a task is committing this log's queue (one at a time keeps commits in order).
    committing: bool,
    /// The last record this process stored for the log, while it can take more bytes: the
    /// next commit appends to it rather than adding a record (see [`merge_into_records`]).
    tail: Option<Tail>,
    /// The stream of the last chunk accepted, and what the switches of stream so far cost
    /// stored (counted against the limit with the bytes).
    last_stream: Option<u8>,
    span_bytes: u64,
}

/// A stored record that later output may be appended to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tail {
    /// Its key's offset.
    at: u64,
    len: usize,
}

impl Logs {
    /// The logs kept in `store`, written through `committer`, each cut at `max_run_bytes`.
    pub fn new(store: Store, committer: GroupCommitter, max_run_bytes: u64) -> Self {
        Self {
            store,
            committer,
            max_run_bytes,
            runs: RefCell::default(),
            stats: Rc::default(),
            on_stored: Rc::new(|_| {}),
        }
    }

    /// Calls `hook` with the byte count of every commit of log chunks.
    #[must_use]
    pub fn on_stored(mut self, hook: impl Fn(usize) + 'static) -> Self {
        self.on_stored = Rc::new(hook);
        self
    }

    /// What followers cost (live counters).
    pub fn stats(&self) -> Rc<FollowStats> {
        self.stats.clone()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn committer(&self) -> &GroupCommitter {
        &self.committer
    }

    /// The length of `run`'s stored log.
    pub async fn stored_length(&self, run: u64) -> Result<u64, LogError> {
        let store = self.store.clone();
        off_thread(move || stored_length(&store, run), |e| read_error(run, e)).await
    }

    /// Up to `max` bytes of `run`'s log from byte `from`, as `(offset, chunk)` in order (the
    /// first chunk trimmed to start at `from`; at least one chunk when any lies past `from`).
    pub async fn read(
        &self,
        run: u64,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, LogChunk)>, LogError> {
        let store = self.store.clone();
        off_thread(
            move || read_chunks(&store, run, from, max),
            |e| read_error(run, e),
        )
        .await
    }

    /// The last `max` bytes of `run`'s log (or all of it, when shorter) and the offset they
    /// start at.
    pub async fn tail(&self, run: u64, max: u64) -> Result<(u64, Vec<u8>), LogError> {
        let store = self.store.clone();
        off_thread(
            move || {
                let length = stored_length(&store, run)?;
                let from = length.saturating_sub(max);
                let chunks = read_chunks(
                    &store,
                    run,
                    from,
                    usize::try_from(max).unwrap_or(usize::MAX),
                )?;
                let mut bytes = Vec::new();
                for (_, chunk) in chunks {
                    bytes.extend_from_slice(&chunk.data);
                }
                Ok((from, bytes))
            },
            |e| read_error(run, e),
        )
        .await
    }

    /// The live state of `run`'s log, loaded from the store when nobody holds it.
    pub(crate) async fn live(&self, run: u64) -> Result<Rc<RunLog>, LogError> {
        if let Some(log) = self.runs.borrow().get(&run) {
            return Ok(log.clone());
        }
        let length = self.stored_length(run).await?;
        let max_bytes = self.max_run_bytes;
        let mut runs = self.runs.borrow_mut();
        // Forget logs nobody holds any more (the map's reference is the only one).
        runs.retain(|_, log| Rc::strong_count(log) > 1);
        // Another caller may have loaded it while we read the store.
        Ok(runs
            .entry(run)
            .or_insert_with(|| {
                Rc::new(RunLog {
                    run,
                    state: RefCell::new(WriteState {
                        next_input: length,
                        next_stored: length,
                        writer: 0,
                        // A log at or past the limit was cut (or written under a higher one).
                        truncated: length >= max_bytes,
                        failed: None,
                        queued: Vec::new(),
                        queued_end: length,
                        committing: false,
                        tail: None,
                        last_stream: None,
                        span_bytes: 0,
                    }),
                    durable: watch::channel(length).0,
                })
            })
            .clone())
    }

    /// A writer for `run` as attempt `lease`. Takes the log over from any older attempt, whose
    /// writer is refused from then on; a writer of an older attempt is refused at once.
    pub async fn writer(&self, run: u64, lease: u32) -> Result<LogWriter, LogError> {
        let log = self.live(run).await?;
        {
            let mut state = log.state.borrow_mut();
            if lease < state.writer {
                return Err(LogError::Superseded {
                    run,
                    lease,
                    by: state.writer,
                });
            }
            state.writer = lease;
        }
        Ok(LogWriter {
            log,
            lease,
            max_bytes: self.max_run_bytes,
            committer: self.committer.clone(),
            on_stored: self.on_stored.clone(),
        })
    }
}

/// One attempt's right to append to a run's log.
pub struct LogWriter {
    log: Rc<RunLog>,
    lease: u32,
    max_bytes: u64,
    committer: GroupCommitter,
    on_stored: StoredHook,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("run", &self.log.run)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// What one accepted write stores.
enum Accepted {
    /// Already stored (a runner resending after a reconnect), or discarded past the limit.
    Nothing,
    /// Store these chunks, ending the stored log at the given offset.
    Store(Vec<(u64, LogChunk)>, u64),
}

/// The system line that ends a log cut at its size limit.
fn truncation_marker(limit: u64) -> Vec<u8> {
    format!(
        "\n[tinyci] log truncated: it reached the limit of {limit} bytes ([logs] max_run_bytes); \
         further output of this run is discarded\n"
    )
    .into_bytes()
}

impl LogWriter {
    fn failure(&self, state: &WriteState) -> Option<LogError> {
        state.failed.as_ref().map(|source| LogError::Store {
            run: self.log.run,
            source: source.clone(),
        })
    }

    /// Checks a chunk against the log's state and reserves its place, so writes in flight
    /// stay in order. Cuts the log at the size limit.
    fn accept(&self, offset: u64, chunk: LogChunk) -> Result<Accepted, LogError> {
        let mut state = self.log.state.borrow_mut();
        if let Some(failed) = self.failure(&state) {
            return Err(failed);
        }
        if state.writer != self.lease {
            return Err(LogError::Superseded {
                run: self.log.run,
                lease: self.lease,
                by: state.writer,
            });
        }
        let len = chunk.data.len() as u64;
        if state.truncated {
            state.next_input = state.next_input.max(offset + len);
            return Ok(Accepted::Nothing);
        }
        if offset + len <= state.next_input && offset < state.next_input {
            return Ok(Accepted::Nothing);
        }
        if offset != state.next_input {
            return Err(LogError::Gap {
                run: self.log.run,
                offset,
                expected: state.next_input,
            });
        }
        state.next_input = offset + len;
        let at = state.next_stored;
        // A switch of stream costs a span stored: the limit counts it, so a log alternating
        // streams a byte at a time is cut sooner rather than stored at twice its size.
        if state.last_stream.is_some_and(|last| last != chunk.stream) {
            state.span_bytes += SPAN_COST;
        }
        state.last_stream = Some(chunk.stream);
        let room = self.max_bytes.saturating_sub(at + state.span_bytes);
        if len <= room {
            state.next_stored = at + len;
            return Ok(Accepted::Store(vec![(at, chunk)], at + len));
        }
        // This chunk crosses the limit: keep what fits, then the marker, then nothing more.
        let mut kept = chunk.clone();
        kept.data
            .truncate(usize::try_from(room).unwrap_or(usize::MAX));
        let marker = LogChunk {
            stream: Stream::System.tag(),
            timestamp_micros: chunk.timestamp_micros,
            data: truncation_marker(self.max_bytes),
        };
        let mut chunks = Vec::new();
        let mut end = at;
        if !kept.data.is_empty() {
            end += kept.data.len() as u64;
            chunks.push((at, kept));
        }
        let marker_at = end;
        end += marker.data.len() as u64;
        chunks.push((marker_at, marker));
        state.next_stored = end;
        state.truncated = true;
        Ok(Accepted::Store(chunks, end))
    }

    /// Appends `chunk` at input offset `offset`. A chunk already stored (a runner resending
    /// after a reconnect) is accepted and ignored; one that would leave a gap is refused.
    /// Returns once the chunk is queued for commit and at most [`LOG_COMMIT_WINDOW`] of this
    /// log awaits its commit: durability is what [`LogWriter::acknowledged`] and
    /// [`LogWriter::close`] report.
    pub async fn write(&self, offset: u64, chunk: LogChunk) -> Result<(), LogError> {
        if chunk.data.len() > MAX_LOG_CHUNK {
            return Err(LogError::ChunkTooLarge {
                len: chunk.data.len(),
            });
        }
        let Accepted::Store(chunks, end) = self.accept(offset, chunk)? else {
            return Ok(());
        };
        {
            let mut state = self.log.state.borrow_mut();
            state.queued.extend(chunks);
            state.queued_end = end;
            if !state.committing {
                state.committing = true;
                tokio::task::spawn_local(commit_queued(
                    self.log.clone(),
                    self.committer.clone(),
                    self.on_stored.clone(),
                ));
            }
        }
        // Backpressure: return once at most LOG_COMMIT_WINDOW of this log awaits its commit.
        let mut durable = self.log.durable.subscribe();
        let failed = || self.log.state.borrow().failed.is_some();
        let _ = durable
            .wait_for(|d| end.saturating_sub(*d) <= LOG_COMMIT_WINDOW || failed())
            .await;
        match self.failure(&self.log.state.borrow()) {
            None => Ok(()),
            Some(failed) => Err(failed),
        }
    }

    /// The input offset up to which everything is durable: where a resuming runner starts.
    /// A cut log takes (and discards) everything, so it answers `u64::MAX`: nothing to resend.
    pub fn acknowledged(&self) -> u64 {
        if self.log.state.borrow().truncated {
            u64::MAX
        } else {
            *self.log.durable.borrow()
        }
    }

    /// Resolves once every chunk written before it is durable.
    pub async fn close(&self) -> Result<(), LogError> {
        let target = self.log.state.borrow().next_stored;
        let mut durable = self.log.durable.subscribe();
        let failed = || self.log.state.borrow().failed.is_some();
        let reached = durable
            .wait_for(|d| *d >= target || failed())
            .await
            .is_ok_and(|d| *d >= target);
        // What this writer wrote is durable even if a later commit failed: that failure is
        // the next write's to report.
        if reached {
            return Ok(());
        }
        match self.failure(&self.log.state.borrow()) {
            Some(failed) => Err(failed),
            None => Err(LogError::Closed { run: self.log.run }),
        }
    }
}

/// Commits a log's queued chunks, everything queued at once, until the queue is empty; then
/// the next write starts it again. One per log at a time, so the durable length only grows
/// and never passes a chunk that is not stored.
async fn commit_queued(log: Rc<RunLog>, committer: GroupCommitter, on_stored: StoredHook) {
    loop {
        let (chunks, end, tail) = {
            let mut state = log.state.borrow_mut();
            if state.queued.is_empty() || state.failed.is_some() {
                state.committing = false;
                state.queued.clear();
                return;
            }
            (
                std::mem::take(&mut state.queued),
                state.queued_end,
                state.tail,
            )
        };
        let run = log.run;
        let bytes: usize = chunks.iter().map(|(_, c)| c.data.len()).sum();
        let (append, records, new_tail) = merge_into_records(tail, chunks);
        let result = committer
            .write(move |txn| {
                if let Some(Append {
                    tail_at,
                    at,
                    chunks,
                }) = append
                {
                    let key = log_key(run, tail_at);
                    // The tail record is this process's own last write: present unless the
                    // log was removed meanwhile, in which case the bytes start a record.
                    let (key, mut record) = match txn.get(LOG_CHUNKS, &key[..])? {
                        Some(record) => (key, record),
                        None => (log_key(run, at), empty_record(chunks.first())),
                    };
                    for chunk in &chunks {
                        push(&mut record, chunk);
                    }
                    txn.put(LOG_CHUNKS, &key[..], &record)?;
                }
                for (at, record) in &records {
                    txn.put(LOG_CHUNKS, &log_key(run, *at)[..], record)?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                log.state.borrow_mut().tail = new_tail;
                on_stored(bytes);
                log.durable.send_if_modified(|durable| {
                    let grew = end > *durable;
                    *durable = (*durable).max(end);
                    grew
                });
            }
            Err(e) => {
                {
                    let mut state = log.state.borrow_mut();
                    state.tail = None;
                    state.failed = Some(Arc::new(e));
                    state.committing = false;
                    state.queued.clear();
                }
                // Wake waiters in `write` and `close` so they see the failure.
                log.durable.send_modify(|_| {});
                return;
            }
        }
    }
}

/// Chunks a commit appends to the log's last stored record.
#[derive(Debug)]
struct Append {
    /// The record's key offset.
    tail_at: u64,
    /// Where these bytes start in the log.
    at: u64,
    chunks: Vec<LogChunk>,
}

/// What a switch of stream costs stored, at most, counted against the log's size limit: a
/// span is one varint (`len << 2 | stream`), one byte under 32 bytes and two up to 8 KiB.
const SPAN_COST: u64 = 2;

/// A record with no bytes yet, stamped with the time of the chunk that will start it.
fn empty_record(first: Option<&LogChunk>) -> LogRecord {
    LogRecord {
        timestamp_micros: first.map_or(0, |c| c.timestamp_micros),
        spans: Vec::new(),
        data: Vec::new(),
    }
}

/// Appends `chunk` to `record`: onto the last span when it continues that stream, else as a
/// span of its own. Every byte keeps its stream; a switch costs one or two bytes, which the
/// log's size limit counts (see [`LogWriter::accept`]).
fn push(record: &mut LogRecord, chunk: &LogChunk) {
    if chunk.data.is_empty() {
        return;
    }
    record.data.extend_from_slice(&chunk.data);
    let len = u32::try_from(chunk.data.len()).unwrap_or(u32::MAX);
    match record.spans.last_mut() {
        Some(last) if last.stream == chunk.stream => last.len = last.len.saturating_add(len),
        _ => record.spans.push(LogSpan {
            stream: chunk.stream,
            len,
        }),
    }
}

/// Turns a batch of chunks (in log order, contiguous) into what is stored: chunks to append
/// to the log's last record (`tail`), the records to add, and the new last record while it
/// can take more. Consecutive chunks share a record up to [`MAX_LOG_CHUNK`] bytes, so a job
/// that prints a byte at a time, on one stream or alternating, costs about what its bytes
/// do, not a record (a key, a timestamp and the B-tree's overhead) per write. A merged
/// record keeps its first chunk's timestamp.
fn merge_into_records(
    tail: Option<Tail>,
    chunks: Vec<(u64, LogChunk)>,
) -> (Option<Append>, Vec<(u64, LogRecord)>, Option<Tail>) {
    let mut append: Option<Append> = None;
    let mut records: Vec<(u64, LogRecord)> = Vec::new();
    let mut last = tail;
    for (at, chunk) in chunks {
        let fits =
            |t: &Tail| t.at + t.len as u64 == at && t.len + chunk.data.len() <= MAX_LOG_CHUNK;
        match last {
            Some(t) if fits(&t) => {
                last = Some(Tail {
                    len: t.len + chunk.data.len(),
                    ..t
                });
                match records.last_mut() {
                    // The tail is a record of this batch: grow it.
                    Some((record_at, record)) if *record_at == t.at => push(record, &chunk),
                    // The tail is stored already: append to it in the same transaction.
                    _ => match &mut append {
                        Some(pending) => pending.chunks.push(chunk),
                        None => {
                            append = Some(Append {
                                tail_at: t.at,
                                at,
                                chunks: vec![chunk],
                            });
                        }
                    },
                }
            }
            _ => {
                last = Some(Tail {
                    at,
                    len: chunk.data.len(),
                });
                let mut record = empty_record(Some(&chunk));
                push(&mut record, &chunk);
                records.push((at, record));
            }
        }
    }
    let last = last.filter(|t| t.len < MAX_LOG_CHUNK);
    (append, records, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(stream: u8, data: &[u8]) -> LogChunk {
        LogChunk {
            stream,
            timestamp_micros: 0,
            data: data.to_vec(),
        }
    }

    fn spans(record: &LogRecord) -> Vec<(u8, u32)> {
        record.spans.iter().map(|s| (s.stream, s.len)).collect()
    }

    #[test]
    fn single_bytes_share_records_and_streams_stay_apart() {
        let batch = vec![
            (0, chunk(0, b"a")),
            (1, chunk(0, b"b")),
            (2, chunk(1, b"E")),
            (3, chunk(0, b"c")),
        ];
        let (append, records, tail) = merge_into_records(None, batch);
        assert!(append.is_none());
        assert_eq!(records.len(), 1, "one record, whatever the streams");
        let (at, record) = &records[0];
        assert_eq!((*at, &record.data[..]), (0, &b"abEc"[..]));
        assert_eq!(spans(record), vec![(0, 2), (1, 1), (0, 1)]);
        assert_eq!(tail, Some(Tail { at: 0, len: 4 }));
        // The next batch appends to the stored tail.
        let (append, records, tail) =
            merge_into_records(tail, vec![(4, chunk(0, b"d")), (5, chunk(1, b"e"))]);
        let append = append.unwrap();
        assert_eq!((append.tail_at, append.at, append.chunks.len()), (0, 4, 2));
        assert!(records.is_empty());
        assert_eq!(tail, Some(Tail { at: 0, len: 6 }));
        // Read back, each span is a chunk of its stream.
        let mut stored = record.clone();
        for c in &append.chunks {
            push(&mut stored, c);
        }
        let read: Vec<(u64, u8, Vec<u8>)> = stored
            .into_chunks(0, 1)
            .into_iter()
            .map(|(at, c)| (at, c.stream, c.data))
            .collect();
        assert_eq!(
            read,
            vec![
                (1, 0, b"b".to_vec()),
                (2, 1, b"E".to_vec()),
                (3, 0, b"cd".to_vec()),
                (5, 1, b"e".to_vec())
            ]
        );
    }

    #[test]
    fn lines_alternating_streams_keep_every_switch() {
        let mut record = empty_record(None);
        let mut expected = Vec::new();
        while record.data.len() + 20 <= MAX_LOG_CHUNK {
            let stream = (expected.len() % 2) as u8;
            push(&mut record, &chunk(stream, b"+ make test -j 2 \n"));
            expected.push((stream, 18));
        }
        assert_eq!(spans(&record), expected);
    }

    #[test]
    fn every_byte_keeps_its_stream_and_a_switch_costs_a_span() {
        let mut record = empty_record(None);
        for i in 0..1000 {
            push(&mut record, &chunk((i % 2) as u8, b"x"));
        }
        assert_eq!(record.spans.len(), 1000);
        assert!(record.spans.iter().all(|s| s.len == 1));
        let stored = tinyci_store::tables::LogCodec::encode(&record)
            .unwrap()
            .len();
        assert!(stored <= 2 * 1000 + 16, "{stored} bytes stored");
    }

    #[test]
    fn a_record_stops_growing_at_the_chunk_limit() {
        let full = vec![0u8; MAX_LOG_CHUNK - 1];
        let (_, records, tail) = merge_into_records(
            None,
            vec![(0, chunk(0, &full)), (full.len() as u64, chunk(0, b"xy"))],
        );
        assert_eq!(records.len(), 2, "the second chunk would pass the limit");
        assert_eq!(tail.map(|t| t.len), Some(2));
        let (_, records, tail) = merge_into_records(
            None,
            vec![(0, chunk(0, &full)), (full.len() as u64, chunk(0, b"x"))],
        );
        assert_eq!(records.len(), 1);
        assert_eq!(tail, None, "a full record takes no more");
    }
}
