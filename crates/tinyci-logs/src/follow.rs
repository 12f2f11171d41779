//! Following a log: backfill, then each chunk as it becomes durable, then the run's end.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;

use tinyci_core::RunStatus;
use tinyci_store::records::LogChunk;
use tokio::sync::{mpsc, watch};

use crate::read::ReadRange;
use crate::{FOLLOW_BATCH, LogError, Logs};

/// Where a follower's chunks go: a Cap'n Proto observer, a browser's event stream, a test.
pub trait Follower {
    /// Why the follower cannot take more (it went away).
    type Error;

    /// Delivers the chunk at `offset`. Resolves when the follower has room for more, so a slow
    /// follower holds its pump here and nowhere else.
    fn chunk(&self, offset: u64, chunk: &LogChunk)
    -> impl Future<Output = Result<(), Self::Error>>;

    /// The run ended with `status` and everything stored was delivered.
    fn done(&self, status: RunStatus) -> impl Future<Output = Result<(), Self::Error>>;
}

/// Why a follow ended early.
#[derive(Debug, thiserror::Error)]
pub enum FollowError<E> {
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The follower refused a delivery (it went away).
    #[error("the follower went away")]
    Follower(#[source] E),
}

/// How a follower learns whether its run ended: the run's status now.
pub type RunStatusSource = Rc<dyn Fn() -> Option<RunStatus>>;

/// What a follower follows: a run's log, how to learn its status, and a feed that wakes on
/// any change to it (then `status` is asked again).
#[allow(missing_debug_implementations, reason = "holds a closure")]
pub struct FollowSource<C> {
    /// The run.
    pub run: u64,
    /// The run's status now.
    pub status: RunStatusSource,
    /// Wakes on changes; when it closes (the queue stopping) only writes wake the follower.
    pub changes: mpsc::UnboundedReceiver<C>,
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

    /// The most bytes ever held for any one follower (at most
    /// [`FOLLOWER_BUFFER_BOUND`](crate::FOLLOWER_BUFFER_BOUND)).
    pub fn peak_buffered_bytes_per_follower(&self) -> u64 {
        self.peak_buffered.get()
    }

    /// Log bytes passed to followers so far.
    pub fn delivered_bytes(&self) -> u64 {
        self.delivered.get()
    }
}

impl Logs {
    /// Follows one run's log into `follower`: backfill from `from`, then each chunk as it
    /// becomes durable, then `done(status)` once the run is over and everything was sent.
    /// Returns when done or when the follower fails. The caller drops (aborts) it when the
    /// follower goes away some other way.
    pub async fn follow<C, F: Follower>(
        &self,
        source: FollowSource<C>,
        mut from: u64,
        follower: &F,
    ) -> Result<(), FollowError<F::Error>> {
        let FollowSource {
            run,
            status,
            changes,
        } = source;
        let mut changes = Some(changes);
        let stats = self.stats.clone();
        let log = self.live(run).await?;
        let mut durable = log.durable.subscribe();
        stats.active.send_modify(|n| *n += 1);
        let _active = ActiveGuard(stats.clone());
        // Where the last batch stopped in the file, so the next read starts there.
        let mut hint = None;
        loop {
            // Mark the current length seen *before* reading, so a write landing after the
            // read wakes the wait below; nothing past it is read, so only durable bytes go out.
            let length = *durable.borrow_and_update();
            let finished = status();
            let range = ReadRange {
                from,
                max: FOLLOW_BATCH,
                durable: Some(length),
                hint,
            };
            let (batch, next) = self.read_range(run, range).await?;
            hint = Some(next);
            if batch.is_empty() {
                if let Some(status) = finished.filter(|s| s.is_final()) {
                    // The status was read before the store: a final status means the runner
                    // closed its log first, so nothing more will come.
                    follower.done(status).await.map_err(FollowError::Follower)?;
                    return Ok(());
                }
                tokio::select! {
                    changed = durable.changed() => {
                        if changed.is_err() {
                            return Err(LogError::Closed { run }.into());
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
                follower
                    .chunk(offset, &chunk)
                    .await
                    .map_err(FollowError::Follower)?;
                held.release(len);
                stats.delivered.set(stats.delivered.get() + len);
                from = offset + len;
            }
        }
    }
}

async fn next_change<C>(changes: &mut Option<mpsc::UnboundedReceiver<C>>) -> Option<C> {
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
