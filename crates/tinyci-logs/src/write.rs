//! The live state of logs and the writers that append to them.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use tinyci_store::records::{LogChunk, log_key};
use tinyci_store::tables::LOG_INDEX;
use tinyci_store::{GroupCommitter, Store};
use tokio::sync::watch;

use crate::follow::FollowStats;
use crate::read::{ReadRange, file_error, off_thread, read_chunks, stored_end};
use crate::segment::{FRAME_COST, LogFiles, Position, SPAN_COST, append_durably, frame_shell};
use crate::{LOG_COMMIT_WINDOW, LogError, MAX_LOG_CHUNK, Stream};

/// A frame is indexed in LMDB when it starts at least this far into the file past the last
/// indexed one: a reader from any offset scans at most this much of the file, and a log
/// streaming at disk speed costs LMDB a commit only this often.
const INDEX_EVERY: u64 = 4 * 1024 * 1024;

/// Called with the byte count of each commit of log chunks (for metrics).
type StoredHook = Rc<dyn Fn(usize)>;

/// The logs of one site: the live state of the logs being written or followed, and the way
/// to read any log. One per site.
pub struct Logs {
    store: Store,
    committer: GroupCommitter,
    files: LogFiles,
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
    /// Bytes durably stored; followers wait on it, and read nothing past it.
    pub(crate) durable: watch::Sender<u64>,
    /// Where the durable frames end in the file: the next commit writes there.
    end: Cell<Position>,
    /// The file, once a commit opened it.
    file: RefCell<Option<Arc<File>>>,
    /// The file position of the last frame indexed in LMDB.
    indexed: Cell<u64>,
    /// Where the last durable frame starts: what `close` indexes, so a reload reads that
    /// frame (and whether it cut the log) rather than nothing.
    last_frame: Cell<Option<Position>>,
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
    failed: Option<LogError>,
    /// Chunks accepted but not yet handed to the committing task, in log order.
    queued: Vec<(u64, LogChunk)>,
    /// The stored log's end once `queued` is durable.
    queued_end: u64,
    /// `queued` ends with the line saying the log was cut.
    queued_cut: bool,
    /// Whether a task is committing this log's queue (one at a time keeps commits in order).
    committing: bool,
    /// What the frames of the log cost beyond its bytes so far, counted against the limit.
    overhead: u64,
    /// Log bytes in the last frame `queued` makes, and its last chunk's stream: whether the
    /// next chunk joins that frame (see [`merge_into_records`]) decides what it costs.
    frame_len: usize,
    last_stream: Option<u8>,
}

impl Logs {
    /// The logs of the site whose data directory is `data_dir` (files under `logs/`, index in
    /// `store`, written through `committer`), each cut at `max_run_bytes`. Moves any log
    /// stored the old way (LMDB records) into its file first.
    pub fn open(
        data_dir: &Path,
        store: Store,
        committer: GroupCommitter,
        max_run_bytes: u64,
    ) -> Result<Self, LogError> {
        let dir = data_dir.join("logs");
        let files = LogFiles::open(data_dir).map_err(|source| LogError::Open {
            dir,
            source: Arc::new(source),
        })?;
        crate::migrate::migrate_records(&store, &files)?;
        Ok(Self {
            store,
            committer,
            files,
            max_run_bytes,
            runs: RefCell::default(),
            stats: Rc::default(),
            on_stored: Rc::new(|_| {}),
        })
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

    pub(crate) fn files(&self) -> &LogFiles {
        &self.files
    }

    pub(crate) fn committer(&self) -> &GroupCommitter {
        &self.committer
    }

    /// The durable length of `run`'s log while a writer or follower holds its live state:
    /// frames past it may not be synced yet. Otherwise whatever its file holds is durable
    /// (each commit syncs before it returns, and opening the logs flushed what a crash left).
    fn durable_now(&self, run: u64) -> Option<u64> {
        self.runs
            .borrow()
            .get(&run)
            .filter(|log| Rc::strong_count(log) > 1)
            .map(|log| *log.durable.borrow())
    }

    /// The length of `run`'s stored log.
    pub async fn stored_length(&self, run: u64) -> Result<u64, LogError> {
        if let Some(durable) = self.durable_now(run) {
            return Ok(durable);
        }
        let (files, store) = (self.files.clone(), self.store.clone());
        off_thread(
            move || Ok(stored_end(&files, &store, run)?.end.offset),
            |e| file_error(run, e),
        )
        .await
    }

    /// Up to `max` bytes of `run`'s log from byte `from`, as `(offset, chunk)` in order (the
    /// first chunk trimmed to start at `from`; at least one chunk when any lies past `from`).
    pub async fn read(
        &self,
        run: u64,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, LogChunk)>, LogError> {
        let range = ReadRange {
            from,
            max,
            durable: self.durable_now(run),
            hint: None,
        };
        Ok(self.read_range(run, range).await?.0)
    }

    /// [`read_chunks`] off the site's thread.
    pub(crate) async fn read_range(
        &self,
        run: u64,
        range: ReadRange,
    ) -> Result<(Vec<(u64, LogChunk)>, Position), LogError> {
        let (files, store) = (self.files.clone(), self.store.clone());
        off_thread(
            move || read_chunks(&files, &store, run, range),
            |e| file_error(run, e),
        )
        .await
    }

    /// The last `max` bytes of `run`'s log (or all of it, when shorter) and the offset they
    /// start at.
    pub async fn tail(&self, run: u64, max: u64) -> Result<(u64, Vec<u8>), LogError> {
        let length = self.stored_length(run).await?;
        let from = length.saturating_sub(max);
        let range = ReadRange {
            from,
            max: usize::try_from(max).unwrap_or(usize::MAX),
            durable: Some(length),
            hint: None,
        };
        let (chunks, _) = self.read_range(run, range).await?;
        let mut bytes = Vec::new();
        for (_, chunk) in chunks {
            bytes.extend_from_slice(&chunk.data);
        }
        Ok((from, bytes))
    }

    /// Forgets the live state of `runs`' logs (being removed): whoever holds it keeps it,
    /// and the next use loads it afresh.
    pub(crate) fn forget(&self, runs: &[u64]) {
        self.runs.borrow_mut().retain(|run, _| !runs.contains(run));
    }

    /// The live state of `run`'s log, loaded from its file when nobody holds it.
    pub(crate) async fn live(&self, run: u64) -> Result<Rc<RunLog>, LogError> {
        let mut attempts = 0;
        let stored = loop {
            if let Some(log) = self.runs.borrow().get(&run) {
                return Ok(log.clone());
            }
            let (files, store) = (self.files.clone(), self.store.clone());
            let stored = off_thread(
                move || stored_end(&files, &store, run),
                |e| file_error(run, e),
            )
            .await?;
            // While this scan ran, another caller may have loaded the log, let a writer
            // append, and let it go: a scan from before that must not become the log's state
            // (its first commit would cut durable frames). The file's length says so.
            let now = std::fs::metadata(self.files.path(run)).map_or(0, |m| m.len());
            attempts += 1;
            if now == stored.file_len || attempts == 3 {
                break stored;
            }
        };
        let length = stored.end.offset;
        let max_bytes = self.max_run_bytes;
        let mut runs = self.runs.borrow_mut();
        // Forget logs nobody holds any more (the map's reference is the only one).
        runs.retain(|_, log| Rc::strong_count(log) > 1);
        // Another caller may have loaded it while we read the file.
        Ok(runs
            .entry(run)
            .or_insert_with(|| {
                Rc::new(RunLog {
                    run,
                    state: RefCell::new(WriteState {
                        next_input: length,
                        next_stored: length,
                        writer: 0,
                        // A log whose last frame cut it, or whose file reached the limit (the
                        // limit counts what the file takes), takes nothing more.
                        truncated: stored.cut || stored.end.pos >= max_bytes || length >= max_bytes,
                        failed: None,
                        queued: Vec::new(),
                        queued_end: length,
                        queued_cut: false,
                        committing: false,
                        // What the frames already stored cost beyond their bytes.
                        overhead: stored.end.pos.saturating_sub(length),
                        frame_len: 0,
                        last_stream: None,
                    }),
                    durable: watch::channel(length).0,
                    end: Cell::new(stored.end),
                    file: RefCell::new(None),
                    indexed: Cell::new(0),
                    last_frame: Cell::new(stored.last),
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
            files: self.files.clone(),
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
    files: LogFiles,
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
    /// Store these chunks, ending the stored log at the given offset; the last is what they
    /// will take on disk, at most.
    Store(Vec<(u64, LogChunk)>, u64, u64),
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
        state.failed.clone()
    }

    /// Checks a chunk against the log's state and reserves its place, so writes in flight
    /// stay in order. Cuts the log at the size limit, which counts what the log's frames
    /// cost on disk beyond its bytes: a run writing a byte at a time is cut sooner, never
    /// stored at many times its limit.
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
        let Some(input_end) = offset.checked_add(len) else {
            return Err(LogError::Gap {
                run: self.log.run,
                offset,
                expected: state.next_input,
            });
        };
        // An empty chunk stores nothing: it must not cost a frame either (a runner sending
        // them in a loop would grow the file without ever reaching the limit).
        if len == 0 {
            return Ok(Accepted::Nothing);
        }
        if state.truncated {
            state.next_input = state.next_input.max(input_end);
            return Ok(Accepted::Nothing);
        }
        if input_end <= state.next_input && offset < state.next_input {
            return Ok(Accepted::Nothing);
        }
        if offset != state.next_input {
            return Err(LogError::Gap {
                run: self.log.run,
                offset,
                expected: state.next_input,
            });
        }
        state.next_input = input_end;
        let at = state.next_stored;
        // What storing this chunk costs beyond its bytes: a frame when it starts one (the
        // queue is taken whole by the next commit, and a frame holds at most MAX_LOG_CHUNK),
        // a span when it switches stream within one, else nothing.
        let starts_frame =
            state.queued.is_empty() || state.frame_len + chunk.data.len() > MAX_LOG_CHUNK;
        let cost = if starts_frame {
            state.frame_len = 0;
            FRAME_COST
        } else if state.last_stream != Some(chunk.stream) {
            SPAN_COST
        } else {
            0
        };
        state.frame_len += chunk.data.len();
        state.last_stream = Some(chunk.stream);
        state.overhead += cost;
        let room = self.max_bytes.saturating_sub(at + state.overhead);
        if len <= room {
            state.next_stored = at + len;
            return Ok(Accepted::Store(vec![(at, chunk)], at + len, len + cost));
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
        let stored = end - at + cost + FRAME_COST;
        state.next_stored = end;
        state.truncated = true;
        state.queued_cut = true;
        Ok(Accepted::Store(chunks, end, stored))
    }

    /// Appends `chunk` at input offset `offset`. A chunk already stored (a runner resending
    /// after a reconnect) is accepted and ignored; one that would leave a gap is refused.
    /// Returns once the chunk is queued for commit and at most [`LOG_COMMIT_WINDOW`] of this
    /// log awaits its commit: durability is what [`LogWriter::acknowledged`] and
    /// [`LogWriter::close`] report. Says how many bytes of disk the write will take at most
    /// (none for a resend or output past the limit).
    pub async fn write(&self, offset: u64, chunk: LogChunk) -> Result<u64, LogError> {
        if chunk.data.len() > MAX_LOG_CHUNK {
            return Err(LogError::ChunkTooLarge {
                len: chunk.data.len(),
            });
        }
        let Accepted::Store(chunks, end, stored) = self.accept(offset, chunk)? else {
            return Ok(0);
        };
        {
            let mut state = self.log.state.borrow_mut();
            state.queued.extend(chunks);
            state.queued_end = end;
            if !state.committing {
                state.committing = true;
                tokio::task::spawn_local(commit_queued(
                    self.log.clone(),
                    self.files.clone(),
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
            None => Ok(stored),
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
            // Where the log's last frame starts is where a page view or a later attempt looks
            // first: reading it says where the log ends and whether it was cut.
            if let Some(last) = self.log.last_frame.get() {
                index_frame(&self.log, &self.committer, last);
            }
            return Ok(());
        }
        match self.failure(&self.log.state.borrow()) {
            Some(failed) => Err(failed),
            None => Err(LogError::Closed { run: self.log.run }),
        }
    }
}

/// Records in LMDB that a frame of `log` starts at `at` (durable already), unless it was the
/// last indexed. Not awaited: the index only spares readers a scan, and an entry lost in a
/// crash costs the next reader a longer one.
fn index_frame(log: &RunLog, committer: &GroupCommitter, at: Position) {
    if at.pos == 0 || at.pos == log.indexed.get() {
        return;
    }
    log.indexed.set(at.pos);
    let committer = committer.clone();
    let run = log.run;
    tokio::task::spawn_local(async move {
        let _ = committer
            .write(move |txn| txn.put(LOG_INDEX, &log_key(run, at.offset)[..], &at.pos))
            .await;
    });
}

/// Commits a log's queued chunks, everything queued at once, until the queue is empty; then
/// the next write starts it again. One per log at a time, so the durable length only grows
/// and never passes a chunk that is not stored: frames are appended where the durable ones
/// end and synced before the length moves.
async fn commit_queued(
    log: Rc<RunLog>,
    files: LogFiles,
    committer: GroupCommitter,
    on_stored: StoredHook,
) {
    loop {
        let (chunks, end, cut) = {
            let mut state = log.state.borrow_mut();
            if state.queued.is_empty() || state.failed.is_some() {
                state.committing = false;
                state.queued.clear();
                return;
            }
            let cut = std::mem::take(&mut state.queued_cut);
            (std::mem::take(&mut state.queued), state.queued_end, cut)
        };
        let run = log.run;
        let bytes: usize = chunks.iter().map(|(_, c)| c.data.len()).sum();
        let start = log.end.get();
        let file = log.file.borrow().clone();
        let files = files.clone();
        let written = tokio::task::spawn_blocking(move || {
            let file = match file {
                Some(file) => file,
                None => {
                    let file = files.open_for_append(run)?;
                    let len = file.metadata()?.len();
                    if len < start.pos {
                        return Err(std::io::Error::other(format!(
                            "the log file holds {len} bytes, fewer than the {} this log's \
                             durable frames take",
                            start.pos
                        )));
                    }
                    if len > start.pos {
                        // Past the durable frames lies a torn tail a crash left, to cut; but
                        // whole frames there mean this state is older than the file: never cut
                        // those.
                        if crate::segment::scan(&files.path(run), start)?.end != start {
                            return Err(std::io::Error::other(
                                "the log file holds frames past where this writer resumes",
                            ));
                        }
                        file.set_len(start.pos)?;
                    }
                    Arc::new(file)
                }
            };
            let groups = frame_groups(&chunks);
            let mut shells = Vec::with_capacity(groups.len());
            let mut at = start;
            let mut last_frame = None;
            let final_group = groups.len().saturating_sub(1);
            for (i, group) in groups.into_iter().enumerate() {
                let members = &chunks[group.clone()];
                let Some((offset, first)) = members.first() else {
                    continue;
                };
                let pieces = members.iter().map(|(_, c)| (c.stream, &c.data[..]));
                let shell = frame_shell(
                    *offset,
                    cut && i == final_group,
                    first.timestamp_micros,
                    pieces,
                );
                last_frame = Some(at);
                let data: usize = members.iter().map(|(_, c)| c.data.len()).sum();
                at = Position {
                    offset: offset + data as u64,
                    pos: at.pos + shell.len,
                };
                shells.push((group, shell));
            }
            // The chunks' bytes go to the file from where they lie: each frame is its head,
            // its chunks and its tail.
            let mut parts = Vec::with_capacity(chunks.len() + 2 * shells.len());
            for (group, shell) in &shells {
                parts.push(std::io::IoSlice::new(&shell.head));
                parts.extend(
                    chunks[group.clone()]
                        .iter()
                        .map(|(_, c)| std::io::IoSlice::new(&c.data)),
                );
                parts.push(std::io::IoSlice::new(&shell.tail));
            }
            if let Err(e) = append_durably(&file, start.pos, &mut parts) {
                // Leave no frame that was not synced for a reader to take as durable.
                let _ = file.set_len(start.pos);
                return Err(e);
            }
            Ok((file, at, last_frame))
        })
        .await
        .unwrap_or_else(|e| {
            Err(std::io::Error::other(format!(
                "the log writer thread failed: {e}"
            )))
        });
        match written {
            Ok((file, at, last_frame)) => {
                *log.file.borrow_mut() = Some(file);
                log.end.set(at);
                if last_frame.is_some() {
                    log.last_frame.set(last_frame);
                }
                if start.pos.saturating_sub(log.indexed.get()) >= INDEX_EVERY {
                    index_frame(&log, &committer, start);
                }
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
                    state.failed = Some(LogError::Write {
                        run,
                        source: Arc::new(e),
                    });
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

/// Splits a batch of chunks (in log order, contiguous) into the frames it is stored as:
/// consecutive chunks share a frame up to [`MAX_LOG_CHUNK`] bytes, so a job that prints a
/// byte at a time, on one stream or alternating, costs about what its bytes do, not a frame
/// per write. A frame keeps its first chunk's timestamp. [`LogWriter::accept`] predicts these
/// frames to count their cost: the two must cut at the same places.
fn frame_groups(chunks: &[(u64, LogChunk)]) -> Vec<std::ops::Range<usize>> {
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut len = 0usize;
    for (i, (_, chunk)) in chunks.iter().enumerate() {
        match groups.last_mut() {
            Some(group) if len + chunk.data.len() <= MAX_LOG_CHUNK => {
                group.end = i + 1;
                len += chunk.data.len();
            }
            _ => {
                groups.push(i..i + 1);
                len = chunk.data.len();
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(stream: u8, data: &[u8]) -> (u64, LogChunk) {
        (
            0,
            LogChunk {
                stream,
                timestamp_micros: 0,
                data: data.to_vec(),
            },
        )
    }

    #[test]
    fn single_bytes_share_a_frame_whatever_the_streams() {
        let batch = vec![
            chunk(0, b"a"),
            chunk(0, b"b"),
            chunk(1, b"E"),
            chunk(0, b"c"),
        ];
        assert_eq!(frame_groups(&batch), vec![0..4]);
    }

    #[test]
    fn a_frame_stops_growing_at_the_chunk_limit() {
        let full = vec![0u8; MAX_LOG_CHUNK - 1];
        let groups = frame_groups(&[chunk(0, &full), chunk(0, b"xy")]);
        assert_eq!(
            groups,
            vec![0..1, 1..2],
            "the second chunk would pass the limit"
        );
        let groups = frame_groups(&[chunk(0, &full), chunk(0, b"x"), chunk(1, b"y")]);
        assert_eq!(groups, vec![0..2, 2..3]);
    }
}
