//! Run logs: the `LogSink` a runner streams into and the followers that watch it.
//!
//! Chunks are stored in LMDB through the group committer, keyed by run and byte offset, so a
//! log reads back in order and a chunk that is acknowledged is on disk. The store is the one
//! source of truth: followers read what they send from it, never from a copy in memory, so
//! a follower that falls behind costs a cursor, not a buffer, and every follower sees the
//! same bytes in the same order whatever moment it attached.
//!
//! [`LogHub`] holds the live state of runs being written or followed: where the next chunk
//! goes, which lease may write it, and a watch of the durable length that followers wait on.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use tinyci_core::RunStatus;
use tinyci_schema::{log_observer, log_sink};
use tinyci_store::records::{LogChunk, log_key};
use tinyci_store::tables::LOG_CHUNKS;
use tinyci_store::{GroupCommitter, Store, StoreError};
use tokio::sync::watch;

use crate::membrane::Liveness;

/// Largest chunk accepted (the wire contract's limit).
pub(crate) const MAX_LOG_CHUNK: usize = 64 * 1024;

/// Default of `[logs] max_run_bytes`: a run's log is cut at 64 MiB.
pub const DEFAULT_MAX_RUN_LOG_BYTES: u64 = 64 * 1024 * 1024;

/// Most bytes a follower's pump reads from the store at once. With Cap'n Proto's stream
/// window (`NetLimits::stream_window`) this bounds what the site holds for one follower, however
/// slowly it reads: [`FOLLOWER_BUFFER_BOUND`].
pub(crate) const FOLLOW_BATCH: usize = 256 * 1024;

/// The most log bytes the site holds for one follower at any moment: one batch read from the
/// store and not yet passed to the transport. (Cap'n Proto's stream window adds at most 1 MiB
/// plus one chunk message in its own send queue.)
pub const FOLLOWER_BUFFER_BOUND: u64 = FOLLOW_BATCH as u64;

/// Most bytes of one run's log accepted from its runner but not yet durable. A write returns
/// once its chunk is queued for the group committer and at most this much is waiting, so
/// commits carry many chunks each (one fsync for up to this much) instead of one chunk per
/// fsync, which capped a log at about one chunk per commit latency (~8 MB/s on a disk whose
/// commit takes 8 ms). Durability is still what `acknowledged` and `close` report: the runner
/// keeps what is not durable and resends it after a reconnect.
pub(crate) const LOG_COMMIT_WINDOW: u64 = 8 * 1024 * 1024;

/// The system line that ends a log cut at its size limit.
fn truncation_marker(limit: u64) -> Vec<u8> {
    format!(
        "\n[tinyci] log truncated: it reached the limit of {limit} bytes ([logs] max_run_bytes); \
         further output of this run is discarded\n"
    )
    .into_bytes()
}

/// The length of a run's stored log: where the next chunk goes.
pub(crate) fn stored_length(store: &Store, run: u64) -> Result<u64, StoreError> {
    store.read(|txn| {
        let mut length = 0;
        for entry in txn.iter_prefix(LOG_CHUNKS, &run.to_be_bytes()[..])? {
            let (key, chunk) = entry?;
            length = length.max(chunk_offset(key) + chunk.data.len() as u64);
        }
        Ok(length)
    })
}

fn chunk_offset(key: &[u8]) -> u64 {
    key.get(8..16)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Up to `max` bytes of a run's log from byte `from`, as `(offset, chunk)` in order (the
/// first chunk trimmed to start at `from`).
pub(crate) fn read_chunks(
    store: &Store,
    run: u64,
    from: u64,
    max: usize,
) -> Result<Vec<(u64, LogChunk)>, StoreError> {
    // Start at the chunk holding `from`, not at the log's beginning: a follower reads a long
    // log in many batches, and scanning (and decoding) from offset 0 each time made following
    // quadratic in the log's length. No chunk is longer than MAX_LOG_CHUNK, so the chunk
    // holding `from` starts at most that far before it.
    let start = log_key(run, from.saturating_sub(MAX_LOG_CHUNK as u64));
    let end = log_key(run, u64::MAX);
    let range = (
        std::ops::Bound::Included(&start[..]),
        std::ops::Bound::Included(&end[..]),
    );
    store.read(|txn| {
        let mut out = Vec::new();
        let mut taken = 0usize;
        for entry in txn.iter_range(LOG_CHUNKS, &range)? {
            let (key, mut chunk) = entry?;
            let offset = chunk_offset(key);
            let end = offset + chunk.data.len() as u64;
            if end <= from {
                continue;
            }
            let skip = usize::try_from(from.saturating_sub(offset)).unwrap_or(usize::MAX);
            let start = offset.max(from);
            if skip > 0 {
                chunk.data.drain(..skip.min(chunk.data.len()));
            }
            if taken > 0 && taken + chunk.data.len() > max {
                break;
            }
            taken += chunk.data.len();
            out.push((start, chunk));
            if taken >= max {
                break;
            }
        }
        Ok(out)
    })
}

async fn load_length(store: &Store, run: u64) -> Result<u64, capnp::Error> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || stored_length(&store, run))
        .await
        .map_err(|e| capnp::Error::failed(e.to_string()))?
        .map_err(|e| capnp::Error::failed(format!("cannot read the log: {e}")))
}

async fn load_chunks(
    store: &Store,
    run: u64,
    from: u64,
    max: usize,
) -> Result<Vec<(u64, LogChunk)>, capnp::Error> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || read_chunks(&store, run, from, max))
        .await
        .map_err(|e| capnp::Error::failed(e.to_string()))?
        .map_err(|e| capnp::Error::failed(format!("cannot read the log: {e}")))
}

/// Counters of what followers cost the site, for operators and tests.
#[derive(Debug, Default)]
pub struct FollowStats {
    active: watch::Sender<u64>,
    buffered: Cell<u64>,
    peak_buffered: Cell<u64>,
    delivered: Cell<u64>,
}

impl FollowStats {
    /// Followers attached now.
    pub fn active(&self) -> u64 {
        *self.active.borrow()
    }

    /// Watches the number of attached followers.
    pub fn watch_active(&self) -> watch::Receiver<u64> {
        self.active.subscribe()
    }

    /// Log bytes held for all followers now.
    pub fn buffered_bytes(&self) -> u64 {
        self.buffered.get()
    }

    /// The most bytes ever held for any one follower (at most [`FOLLOWER_BUFFER_BOUND`]).
    pub fn peak_buffered_bytes_per_follower(&self) -> u64 {
        self.peak_buffered.get()
    }

    /// Log bytes passed to followers' transports so far.
    pub fn delivered_bytes(&self) -> u64 {
        self.delivered.get()
    }
}

/// Where a run's log stands, for its sinks and followers.
#[derive(Debug)]
pub(crate) struct RunLog {
    run: u64,
    state: RefCell<WriteState>,
    /// Bytes durably stored; followers wait on it.
    durable: watch::Sender<u64>,
}

#[derive(Debug)]
struct WriteState {
    /// Offset the next chunk from the runner must start at (writes in flight included).
    next_input: u64,
    /// Offset in the stored log the next chunk goes to. Equal to `next_input` until the log
    /// is truncated, after which input is discarded.
    next_stored: u64,
    /// The lease whose sink writes; a sink of an older lease is refused.
    writer: u32,
    /// Set once the log reached its size limit.
    truncated: bool,
    /// Set when a write failed: the log refuses everything after it.
    failed: Option<String>,
    /// Chunks accepted but not yet handed to the committer, in log order.
    queued: Vec<(u64, LogChunk)>,
    /// The stored log's end once `queued` is durable.
    queued_end: u64,
    /// Whether a task is committing this log's queue (one at a time keeps commits in order).
    committing: bool,
}

/// Live state of the logs being written or followed. One per site.
#[derive(Debug, Default)]
pub(crate) struct LogHub {
    runs: RefCell<HashMap<u64, Rc<RunLog>>>,
    pub(crate) stats: Rc<FollowStats>,
}

impl LogHub {
    /// The live state of `run`'s log, loaded from the store when nobody holds it.
    async fn get(
        &self,
        store: &Store,
        run: u64,
        max_bytes: u64,
    ) -> Result<Rc<RunLog>, capnp::Error> {
        if let Some(log) = self.runs.borrow().get(&run) {
            return Ok(log.clone());
        }
        let length = load_length(store, run).await?;
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
                    }),
                    durable: watch::channel(length).0,
                })
            })
            .clone())
    }

    /// A sink for `run` writing as `lease`. Takes the log over from any older lease.
    pub(crate) async fn sink(
        &self,
        services: &crate::Services,
        run: u64,
        lease: u32,
        liveness: Rc<Liveness>,
    ) -> Result<LogSinkCap, capnp::Error> {
        let max_bytes = services.log_max_run_bytes;
        let log = self.get(&services.store, run, max_bytes).await?;
        {
            let mut state = log.state.borrow_mut();
            if lease < state.writer {
                return Err(capnp::Error::failed(format!(
                    "log of run r-{run} refused: attempt {lease} was superseded by attempt {}",
                    state.writer
                )));
            }
            state.writer = lease;
        }
        Ok(LogSinkCap {
            log,
            lease,
            max_bytes,
            committer: services.committer.clone(),
            liveness,
            metrics: services.metrics.clone(),
        })
    }
}

/// A run's `LogSink` for one lease.
pub(crate) struct LogSinkCap {
    log: Rc<RunLog>,
    lease: u32,
    max_bytes: u64,
    committer: GroupCommitter,
    liveness: Rc<Liveness>,
    metrics: Rc<crate::metrics::Metrics>,
}

/// What one accepted write stores.
enum Accepted {
    /// Already stored (a runner resending after a reconnect), or discarded past the limit.
    Nothing,
    /// Store these chunks, ending the stored log at the given offset.
    Store(Vec<(u64, LogChunk)>, u64),
}

impl LogSinkCap {
    /// Checks a chunk against the log's state and reserves its place, so streamed writes in
    /// flight stay in order. Cuts the log at the size limit.
    fn accept(&self, offset: u64, chunk: LogChunk) -> Result<Accepted, capnp::Error> {
        let mut state = self.log.state.borrow_mut();
        if let Some(why) = &state.failed {
            return Err(capnp::Error::failed(format!(
                "log of run r-{} failed earlier: {why}",
                self.log.run
            )));
        }
        if state.writer != self.lease {
            return Err(capnp::Error::failed(format!(
                "log of run r-{} refused: attempt {} was superseded by attempt {}",
                self.log.run, self.lease, state.writer
            )));
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
            return Err(capnp::Error::failed(format!(
                "log chunk at offset {offset} refused: the log of run r-{} continues at {}",
                self.log.run, state.next_input
            )));
        }
        state.next_input = offset + len;
        let at = state.next_stored;
        let room = self.max_bytes.saturating_sub(at);
        if len <= room {
            state.next_stored = at + len;
            return Ok(Accepted::Store(vec![(at, chunk)], at + len));
        }
        // This chunk crosses the limit: keep what fits, then the marker, then nothing more.
        let mut kept = chunk.clone();
        kept.data
            .truncate(usize::try_from(room).unwrap_or(usize::MAX));
        let marker = LogChunk {
            stream: 2,
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
}

impl log_sink::Server for LogSinkCap {
    async fn write(self: Rc<Self>, params: log_sink::WriteParams) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let chunk = params.get()?.get_chunk()?;
        let data = chunk.get_data()?;
        if data.len() > MAX_LOG_CHUNK {
            return Err(capnp::Error::failed(format!(
                "log chunk of {} bytes refused: the limit is {MAX_LOG_CHUNK}",
                data.len()
            )));
        }
        let offset = chunk.get_offset();
        let record = LogChunk {
            stream: match chunk.get_stream() {
                Ok(tinyci_schema::LogStream::Stdout) => 0,
                Ok(tinyci_schema::LogStream::Stderr) => 1,
                _ => 2,
            },
            timestamp_micros: chunk.get_timestamp_micros(),
            data: data.to_vec(),
        };
        let Accepted::Store(chunks, end) = self.accept(offset, record)? else {
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
                    self.metrics.clone(),
                ));
            }
        }
        // Backpressure: return once at most LOG_COMMIT_WINDOW of this log awaits its commit.
        let mut durable = self.log.durable.subscribe();
        let failed = || self.log.state.borrow().failed.clone();
        let _ = durable
            .wait_for(|d| end.saturating_sub(*d) <= LOG_COMMIT_WINDOW || failed().is_some())
            .await;
        match failed() {
            None => Ok(()),
            Some(why) => Err(capnp::Error::failed(format!(
                "failed to store the log of run r-{}: {why}",
                self.log.run
            ))),
        }
    }

    async fn acknowledged(
        self: Rc<Self>,
        _: log_sink::AcknowledgedParams,
        mut results: log_sink::AcknowledgedResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let state = self.log.state.borrow();
        // A cut log takes (and discards) everything: tell the runner nothing needs resending.
        let offset = if state.truncated {
            u64::MAX
        } else {
            *self.log.durable.borrow()
        };
        results.get().set_offset(offset);
        Ok(())
    }

    /// Resolves once every chunk written before it is durable.
    async fn close(
        self: Rc<Self>,
        _: log_sink::CloseParams,
        _: log_sink::CloseResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let target = self.log.state.borrow().next_stored;
        let mut durable = self.log.durable.subscribe();
        let failed = || self.log.state.borrow().failed.clone();
        let reached = durable
            .wait_for(|d| *d >= target || failed().is_some())
            .await
            .map(|d| *d >= target);
        match (reached, failed()) {
            (Ok(true), _) => Ok(()),
            (_, Some(why)) => Err(capnp::Error::failed(format!(
                "failed to store the log of run r-{}: {why}",
                self.log.run
            ))),
            _ => Err(capnp::Error::failed("the log closed unfinished".into())),
        }
    }
}

/// Commits a log's queued chunks, everything queued at once, until the queue is empty; then
/// the next write starts it again. One per log at a time, so the durable length only grows
/// and never passes a chunk that is not stored.
async fn commit_queued(
    log: Rc<RunLog>,
    committer: GroupCommitter,
    metrics: Rc<crate::metrics::Metrics>,
) {
    loop {
        let (chunks, end) = {
            let mut state = log.state.borrow_mut();
            if state.queued.is_empty() || state.failed.is_some() {
                state.committing = false;
                state.queued.clear();
                return;
            }
            (std::mem::take(&mut state.queued), state.queued_end)
        };
        let run = log.run;
        let bytes: usize = chunks.iter().map(|(_, c)| c.data.len()).sum();
        let result = committer
            .write(move |txn| {
                for (at, chunk) in &chunks {
                    txn.put(LOG_CHUNKS, &log_key(run, *at)[..], chunk)?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                metrics.log_stored(bytes);
                log.durable.send_if_modified(|durable| {
                    let grew = end > *durable;
                    *durable = (*durable).max(end);
                    grew
                });
            }
            Err(e) => {
                {
                    let mut state = log.state.borrow_mut();
                    state.failed = Some(e.to_string());
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

/// How a follower learns whether its run ended: the run's status now.
pub(crate) type RunStatusSource = Rc<dyn Fn() -> Option<RunStatus>>;

/// Where a follower reads and how it learns of run changes.
pub(crate) struct FollowSource {
    /// The run's log.
    pub(crate) run: u64,
    /// `[logs] max_run_bytes`, for loading the log's state.
    pub(crate) max_bytes: u64,
    /// The run's status now.
    pub(crate) status: RunStatusSource,
    /// Wakes on any change to the run's submission (then `status` is asked again).
    pub(crate) changes: tokio::sync::mpsc::UnboundedReceiver<tinyci_queue::StoredRun>,
}

impl FollowSource {
    /// The source for following `run` on this site: its log, its status read afresh from the
    /// queue, and its submission's change feed.
    pub(crate) fn for_run(services: &crate::Services, run: &tinyci_queue::StoredRun) -> Self {
        let queue = services.queue.clone();
        let id = run.id();
        Self {
            run: id.get(),
            max_bytes: services.log_max_run_bytes,
            status: Rc::new(move || queue.run(id).ok().flatten().map(|r| r.state.status())),
            changes: services.queue.watch(run.submission),
        }
    }
}

/// Follows one run's log into `observer`: backfill from `from`, then each chunk as it
/// becomes durable, then `done(status)` once the run is over and everything was sent.
/// Returns when done or when the observer fails (it went away). The caller aborts it when
/// the follower drops its handle.
pub(crate) async fn follow(
    hub: Rc<LogHub>,
    store: Store,
    source: FollowSource,
    mut from: u64,
    observer: log_observer::Client,
) -> Result<(), capnp::Error> {
    let FollowSource {
        run,
        max_bytes,
        status,
        changes,
    } = source;
    let mut changes = Some(changes);
    let stats = hub.stats.clone();
    let log = hub.get(&store, run, max_bytes).await?;
    let mut durable = log.durable.subscribe();
    stats.active.send_modify(|n| *n += 1);
    let _active = ActiveGuard(stats.clone());
    loop {
        // Mark the current length seen *before* reading, so a write landing after the read
        // wakes the wait below.
        let _ = durable.borrow_and_update();
        let finished = status();
        let batch = load_chunks(&store, run, from, FOLLOW_BATCH).await?;
        if batch.is_empty() {
            if let Some(status) = finished.filter(|s| s.is_final()) {
                // The status was read before the store: a final status means the runner
                // closed its log first, so nothing more will come.
                let mut request = observer.done_request();
                request.get().set_status(crate::jobs::wire_status(status));
                request.send().promise.await?;
                return Ok(());
            }
            tokio::select! {
                changed = durable.changed() => {
                    if changed.is_err() {
                        return Err(capnp::Error::failed("the log went away".into()));
                    }
                }
                update = next_change(&mut changes) => {
                    if update.is_none() {
                        // The queue stopped reporting (shutting down): wait on writes only.
                        changes = None;
                    }
                }
            }
            continue;
        }
        let held = Held::new(&stats, batch.iter().map(|(_, c)| c.data.len() as u64).sum());
        for (offset, chunk) in batch {
            let len = chunk.data.len() as u64;
            let mut request = observer.chunk_request();
            {
                let mut c = request.get().init_chunk();
                c.set_offset(offset);
                c.set_stream(wire_stream(chunk.stream));
                c.set_timestamp_micros(chunk.timestamp_micros);
                c.set_data(&chunk.data);
            }
            // Streaming: resolves when the follower's window has room, so a slow follower
            // holds this pump here and nowhere else.
            request.send().await?;
            held.release(len);
            stats.delivered.set(stats.delivered.get() + len);
            from = offset + len;
        }
    }
}

async fn next_change(
    changes: &mut Option<tokio::sync::mpsc::UnboundedReceiver<tinyci_queue::StoredRun>>,
) -> Option<tinyci_queue::StoredRun> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Bytes a follower's pump holds, counted in [`FollowStats`] until sent.
struct Held {
    stats: Rc<FollowStats>,
    left: Cell<u64>,
}

impl Held {
    fn new(stats: &Rc<FollowStats>, bytes: u64) -> Self {
        stats.buffered.set(stats.buffered.get() + bytes);
        stats
            .peak_buffered
            .set(stats.peak_buffered.get().max(bytes));
        Self {
            stats: stats.clone(),
            left: Cell::new(bytes),
        }
    }

    fn release(&self, bytes: u64) {
        let bytes = bytes.min(self.left.get());
        self.left.set(self.left.get() - bytes);
        self.stats
            .buffered
            .set(self.stats.buffered.get().saturating_sub(bytes));
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release(self.left.get());
    }
}

/// Counts a follower out when its pump ends, however it ends.
struct ActiveGuard(Rc<FollowStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The wire form of a stored chunk's stream tag.
pub(crate) fn wire_stream(stream: u8) -> tinyci_schema::LogStream {
    match stream {
        0 => tinyci_schema::LogStream::Stdout,
        1 => tinyci_schema::LogStream::Stderr,
        _ => tinyci_schema::LogStream::System,
    }
}
