//! Reading a stored log: where it ends, and its chunks from an offset, through the sparse
//! index in LMDB and the run's file.

use std::ops::Bound;
use std::sync::Arc;

use tinyci_store::records::{LogChunk, log_key, log_key_offset};
use tinyci_store::tables::LOG_INDEX;
use tinyci_store::{Store, StoreError};

use crate::LogError;
use crate::segment::{FrameReader, LogFiles, Position, Scanned, scan};

/// The last indexed frame boundary of `run`'s log at or before log offset `at`, or the
/// file's start.
pub(crate) fn indexed_before(store: &Store, run: u64, at: u64) -> Result<Position, LogError> {
    let start = log_key(run, 0);
    let end = log_key(run, at);
    let bounds = (Bound::Included(&start[..]), Bound::Included(&end[..]));
    store
        .read(|txn| match txn.iter_range_rev(LOG_INDEX, &bounds)?.next() {
            Some(entry) => {
                let (key, pos) = entry?;
                Ok(Position {
                    offset: log_key_offset(key),
                    pos,
                })
            }
            None => Ok(Position::default()),
        })
        .map_err(|e| read_error(run, e))
}

/// Where `run`'s stored log ends: scanned from its last indexed frame, or from the start
/// when that entry does not lead to a valid frame.
pub(crate) fn stored_end(files: &LogFiles, store: &Store, run: u64) -> Result<Scanned, LogError> {
    let path = files.path(run);
    let file_error = |e| file_error(run, e);
    let from = indexed_before(store, run, u64::MAX)?;
    let scanned = scan(&path, from).map_err(file_error)?;
    if scanned.torn && scanned.end == from && from != Position::default() {
        return scan(&path, Position::default()).map_err(file_error);
    }
    Ok(scanned)
}

/// Up to `max` bytes of a run's log from byte `from`, and no byte at or past `durable` (when
/// given), as `(offset, chunk)` in order (the first chunk trimmed to start at `from`). At
/// least one chunk when any lies past `from`, even if it is longer than `max`. Reading starts
/// at `hint` when it is a frame boundary at or before `from` (where the last read stopped),
/// else at the index's nearest entry. Returns where the next read from the end of these
/// chunks may start.
pub(crate) fn read_chunks(
    files: &LogFiles,
    store: &Store,
    run: u64,
    range: ReadRange,
) -> Result<(Vec<(u64, LogChunk)>, Position), LogError> {
    let ReadRange {
        from,
        max,
        durable,
        hint,
    } = range;
    let (start, hinted) = match hint {
        Some(hint) if hint.offset <= from => (hint, true),
        _ => (indexed_before(store, run, from)?, false),
    };
    let file_error = |e| file_error(run, e);
    let path = files.path(run);
    let Some(mut reader) = FrameReader::open(&path, start).map_err(file_error)? else {
        return Ok((Vec::new(), start));
    };
    let mut first = reader.next_frame().map_err(file_error)?;
    // An index entry that leads to no valid frame (the file lost what it pointed at): the
    // file's start always leads to its valid frames. Not so a hint, where a frame being
    // appended right now reads as torn until it is whole: that is the end, for now.
    if first.is_none() && reader.torn() && !hinted && start != Position::default() {
        let Some(again) = FrameReader::open(&path, Position::default()).map_err(file_error)? else {
            return Ok((Vec::new(), Position::default()));
        };
        reader = again;
        first = reader.next_frame().map_err(file_error)?;
    }
    let mut out = Vec::new();
    let mut taken = 0usize;
    let mut resume = first.as_ref().map_or(reader.position(), |frame| frame.at);
    let mut next = first;
    while let Some(frame) = next.take() {
        if durable.is_some_and(|durable| frame.end.offset > durable) {
            break;
        }
        if frame.end.offset <= from {
            resume = frame.end;
            next = reader.next_frame().map_err(file_error)?;
            continue;
        }
        resume = frame.at;
        for (offset, chunk) in frame.record.into_chunks(frame.at.offset, from) {
            if taken > 0 && taken + chunk.data.len() > max {
                return Ok((out, resume));
            }
            taken += chunk.data.len();
            out.push((offset, chunk));
        }
        resume = frame.end;
        if taken >= max {
            break;
        }
        next = reader.next_frame().map_err(file_error)?;
    }
    Ok((out, resume))
}

/// What [`read_chunks`] reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadRange {
    pub(crate) from: u64,
    pub(crate) max: usize,
    /// The durable length, for a log being written: nothing past it is read.
    pub(crate) durable: Option<u64>,
    pub(crate) hint: Option<Position>,
}

pub(crate) fn read_error(run: u64, source: StoreError) -> LogError {
    LogError::Read {
        run,
        source: Arc::new(source),
    }
}

pub(crate) fn file_error(run: u64, source: std::io::Error) -> LogError {
    LogError::ReadFile {
        run,
        source: Arc::new(source),
    }
}

/// Runs blocking reads off the site's thread; `lost` names the failure if that thread dies.
pub(crate) async fn off_thread<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, LogError> + Send + 'static,
    lost: impl FnOnce(std::io::Error) -> LogError,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(read).await.map_err(|e| {
        lost(std::io::Error::other(format!(
            "the log reader thread failed: {e}"
        )))
    })?
}
