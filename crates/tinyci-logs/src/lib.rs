//! Run logs of a site: where a runner's output is stored, how it is cut at its size limit,
//! how writes are batched into few commits, how followers are fed, and how old logs go.
//!
//! Each run's log is one append-only file of checksummed frames (`segment.rs`); a batch of
//! writes costs one `fdatasync`, and a chunk is acknowledged only once it is on disk. LMDB
//! holds a sparse index into the files, never ahead of them. The files are the one source of
//! truth: followers read what they send from them, up to what is durable, never from a copy
//! in memory, so a follower that falls behind costs a file position, not a buffer, and every
//! follower sees the same bytes in the same order whatever moment it attached.
//!
//! [`Logs`] holds the live state of the logs being written or followed; a [`LogWriter`] is
//! one lease's right to append; [`Logs::follow`] feeds any [`Follower`]. Single-threaded
//! (`Rc`), living on the site's LocalSet. Must not depend on capnp, the queue or any
//! transport: the site wraps these in capabilities and says what a run's status is.

mod follow;
mod migrate;
mod read;
mod retention;
mod segment;
mod write;

use std::sync::Arc;

pub use follow::{FollowError, FollowSource, FollowStats, Follower, RunStatusSource};
pub use retention::LogUsage;
pub use tinyci_store::records::LogChunk;
pub use write::{LogWriter, Logs};

/// Largest chunk accepted (the wire contract's limit).
pub const MAX_LOG_CHUNK: usize = 64 * 1024;

/// The most one write of a chunk costs on disk beyond its bytes (a frame of its own), for
/// counting a repository's storage before the next retention sweep measures it.
pub const MAX_WRITE_OVERHEAD: u64 = segment::FRAME_COST;

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
/// once its chunk is queued for the log's committing task and at most this much is waiting, so
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
    /// Writing the log's file failed; the log refuses everything after.
    #[error("failed to store the log of run r-{run}")]
    Write {
        /// The run.
        run: u64,
        /// What the file system said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Reading the log's file failed.
    #[error("cannot read the log of run r-{run}")]
    ReadFile {
        /// The run.
        run: u64,
        /// What the file system said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Reading the log's index failed.
    #[error("cannot read the index of the log of run r-{run}")]
    Read {
        /// The run.
        run: u64,
        /// What the store said.
        #[source]
        source: Arc<tinyci_store::StoreError>,
    },
    /// Removing logs' index entries (for retention) failed; none of the logs was removed.
    #[error("cannot remove the logs of {runs} runs")]
    Remove {
        /// How many runs' logs were to go.
        runs: usize,
        /// What the store said.
        #[source]
        source: Arc<tinyci_store::StoreError>,
    },
    /// Removing a log's file (for retention) failed.
    #[error("cannot remove the log file of run r-{run}")]
    RemoveFile {
        /// The run.
        run: u64,
        /// What the file system said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Listing the stored logs (for retention) failed.
    #[error("cannot list the stored logs in {}", dir.display())]
    Scan {
        /// The logs' directory.
        dir: std::path::PathBuf,
        /// What the file system said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The logs' directory could not be opened or prepared.
    #[error("cannot open the logs directory {}", dir.display())]
    Open {
        /// The directory.
        dir: std::path::PathBuf,
        /// What the file system said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Moving a log stored the old way (LMDB records) into its file failed; the records stay
    /// where they were and the move is tried again at the next start.
    #[error("cannot move the stored log of run r-{run} into its file")]
    Migrate {
        /// The run.
        run: u64,
        /// What went wrong.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The log's state went away before the write was durable (the site is stopping).
    #[error("the log of run r-{run} closed unfinished")]
    Closed {
        /// The run.
        run: u64,
    },
}
