//! Run logs of a site: where a runner's output is stored, how it is cut at its size limit,
//! how writes are batched into few commits, how followers are fed, and how old logs go.
//!
//! Chunks are stored in LMDB through the store's group committer, keyed by run and byte
//! offset, so a log reads back in order and a chunk that is acknowledged is on disk. The
//! store is the one source of truth: followers read what they send from it, never from a copy
//! in memory, so a follower that falls behind costs a cursor, not a buffer, and every follower
//! sees the same bytes in the same order whatever moment it attached.
//!
//! [`Logs`] holds the live state of the logs being written or followed; a [`LogWriter`] is
//! one lease's right to append; [`Logs::follow`] feeds any [`Follower`]. Single-threaded
//! (`Rc`), living on the site's LocalSet. Must not depend on capnp, the queue or any
//! transport: the site wraps these in capabilities and says what a run's status is.

mod follow;
mod read;
mod retention;
mod write;

use std::sync::Arc;

pub use follow::{FollowError, FollowSource, FollowStats, Follower, RunStatusSource};
pub use retention::LogUsage;
pub use tinyci_store::records::LogChunk;
pub use write::{LogWriter, Logs};

/// Largest chunk accepted (the wire contract's limit).
pub const MAX_LOG_CHUNK: usize = 64 * 1024;

/// Default of `[logs] max_run_bytes`: a run's log is cut at 64 MiB.
pub const DEFAULT_MAX_RUN_LOG_BYTES: u64 = 64 * 1024 * 1024;

/// Most bytes a follower's pump reads from the store at once. With Cap'n Proto's stream
/// window this bounds what the site holds for one follower, however slowly it reads:
/// [`FOLLOWER_BUFFER_BOUND`].
pub const FOLLOW_BATCH: usize = 256 * 1024;

/// The most log bytes the site holds for one follower at any moment: one batch read from the
/// store and not yet passed to the transport. (The transport's own window comes on top.)
pub const FOLLOWER_BUFFER_BOUND: u64 = FOLLOW_BATCH as u64;

/// Most bytes of one run's log accepted from its runner but not yet durable. A write returns
/// once its chunk is queued for the group committer and at most this much is waiting, so
/// commits carry many chunks each (one fsync for up to this much) instead of one chunk per
/// fsync, which capped a log at about one chunk per commit latency (~8 MB/s on a disk whose
/// commit takes 8 ms). Durability is still what `acknowledged` and `close` report: the runner
/// keeps what is not durable and resends it after a reconnect.
pub const LOG_COMMIT_WINDOW: u64 = 8 * 1024 * 1024;

/// Which stream a chunk came from, as stored in [`LogChunk::stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
    /// A line tinyci itself wrote (truncation, a runner's notes).
    System,
}

impl Stream {
    /// The stored tag.
    pub fn tag(self) -> u8 {
        match self {
            Self::Stdout => 0,
            Self::Stderr => 1,
            Self::System => 2,
        }
    }

    /// The stream a stored tag names (unknown tags read as system lines).
    pub fn of_tag(tag: u8) -> Self {
        match tag {
            0 => Self::Stdout,
            1 => Self::Stderr,
            _ => Self::System,
        }
    }
}

/// Why a log could not be written or read. Messages name the run and what was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// A chunk is larger than [`MAX_LOG_CHUNK`].
    #[error("log chunk of {len} bytes refused: the limit is {MAX_LOG_CHUNK}")]
    ChunkTooLarge {
        /// The chunk's length.
        len: usize,
    },
    /// A newer attempt of the run took the log over.
    #[error("log of run r-{run} refused: attempt {lease} was superseded by attempt {by}")]
    Superseded {
        /// The run.
        run: u64,
        /// The writer's attempt.
        lease: u32,
        /// The attempt that writes now.
        by: u32,
    },
    /// A chunk does not continue the log where it stands.
    #[error("log chunk at offset {offset} refused: the log of run r-{run} continues at {expected}")]
    Gap {
        /// The run.
        run: u64,
        /// Where the chunk said it starts.
        offset: u64,
        /// Where the log continues.
        expected: u64,
    },
    /// Storing the log failed; it refuses everything after.
    #[error("failed to store the log of run r-{run}")]
    Store {
        /// The run.
        run: u64,
        /// What the store said.
        #[source]
        source: Arc<tinyci_store::StoreError>,
    },
    /// Reading the log failed.
    #[error("cannot read the log of run r-{run}")]
    Read {
        /// The run.
        run: u64,
        /// What the store said.
        #[source]
        source: Arc<tinyci_store::StoreError>,
    },
    /// Removing logs (for retention) failed; none of them was removed.
    #[error("cannot remove the logs of {runs} runs")]
    Remove {
        /// How many runs' logs were to go.
        runs: usize,
        /// What the store said.
        #[source]
        source: Arc<tinyci_store::StoreError>,
    },
    /// Scanning all stored logs (for retention) failed.
    #[error("cannot scan the stored logs")]
    Scan {
        /// What the store said.
        #[source]
        source: Arc<tinyci_store::StoreError>,
    },
    /// The log's state went away before the write was durable (the site is stopping).
    #[error("the log of run r-{run} closed unfinished")]
    Closed {
        /// The run.
        run: u64,
    },
}
