//! Reading a stored log: its length and its chunks from an offset.

use std::ops::Bound;
use std::sync::Arc;

use tinyci_store::records::{LogChunk, log_key, log_key_offset};
use tinyci_store::tables::LOG_CHUNKS;
use tinyci_store::{Store, StoreError};

use crate::{LogError, MAX_LOG_CHUNK};

/// The length of a run's stored log: where the next chunk goes.
pub(crate) fn stored_length(store: &Store, run: u64) -> Result<u64, LogError> {
    // The log ends where its last record does: one lookup from the end of the run's keys,
    // not a scan of every record (a page view and every follower ask this).
    let start = log_key(run, 0);
    let end = run.checked_add(1).map(|next| log_key(next, 0));
    let bounds = (
        Bound::Included(&start[..]),
        end.as_ref()
            .map_or(Bound::Unbounded, |end| Bound::Excluded(&end[..])),
    );
    store
        .read(
            |txn| match txn.iter_range_rev(LOG_CHUNKS, &bounds)?.next() {
                Some(entry) => {
                    let (key, record) = entry?;
                    Ok(log_key_offset(key) + record.data.len() as u64)
                }
                None => Ok(0),
            },
        )
        .map_err(|e| read_error(run, e))
}

/// Up to `max` bytes of a run's log from byte `from`, as `(offset, chunk)` in order (the
/// first chunk trimmed to start at `from`). At least one chunk when any lies past `from`,
/// even if it is longer than `max`.
pub(crate) fn read_chunks(
    store: &Store,
    run: u64,
    from: u64,
    max: usize,
) -> Result<Vec<(u64, LogChunk)>, LogError> {
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
    store
        .read(|txn| {
            let mut out = Vec::new();
            let mut taken = 0usize;
            for entry in txn.iter_range(LOG_CHUNKS, &range)? {
                let (key, record) = entry?;
                let offset = log_key_offset(key);
                if offset + record.data.len() as u64 <= from {
                    continue;
                }
                for (start, chunk) in record.into_chunks(offset, from) {
                    if taken > 0 && taken + chunk.data.len() > max {
                        return Ok(out);
                    }
                    taken += chunk.data.len();
                    out.push((start, chunk));
                    if taken >= max {
                        return Ok(out);
                    }
                }
            }
            Ok(out)
        })
        .map_err(|e| read_error(run, e))
}

pub(crate) fn read_error(run: u64, source: StoreError) -> LogError {
    LogError::Read {
        run,
        source: Arc::new(source),
    }
}

/// Runs a blocking store read off the site's thread; `lost` names the failure if that
/// thread dies.
pub(crate) async fn off_thread<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, LogError> + Send + 'static,
    lost: impl FnOnce(StoreError) -> LogError,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(read).await.map_err(|e| {
        lost(StoreError::Aborted {
            reason: format!("the log reader thread failed: {e}").into(),
        })
    })?
}
