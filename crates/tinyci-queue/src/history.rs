//! Finding runs in a long history: indexes kept with every stored run (unfinished, by
//! repository, by ref, by status) and listings that walk them newest first.
//!
//! Why: a listing filtered on a rare value used to read the run table from its newest end
//! until it had enough matches, which for a rare repository or status meant reading the
//! whole history; and opening the queue read every run ever stored to find the unfinished
//! ones. Each index key ends in the run id (big-endian), so one value's runs lie together,
//! newest last; a filter on several fields walks their indexes together (a leapfrog join),
//! so a listing costs what it returns and the seeks between matches, not the history.

use std::ops::Bound;

use tinyci_core::RunStatus;
use tinyci_store::tables::{
    META, RUNS, RUNS_BY_REF, RUNS_BY_REPO, RUNS_BY_STATUS, RUNS_UNFINISHED, Table,
};
use tinyci_store::{Bytes, ReadTxn, Store, StoreError, WriteTxn};
use tracing::info;

use crate::{
    NEXT_ID_KEY, QueueError, StoredRun, StoredSubmission, decode_run, put_run, store_error,
};

/// Set in `META` once every stored run is in the indexes (stores written before them are
/// indexed when the queue opens).
const INDEXED_KEY: &str = "queue.run_indexes";

/// Runs indexed per transaction when indexing a store written before the indexes.
const INDEX_BATCH: usize = 20_000;

/// Which runs a listing wants; every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// `owner/name`.
    pub repo: Option<String>,
    /// The git ref, e.g. `refs/heads/main`.
    pub git_ref: Option<String>,
    /// The run's status now.
    pub status: Option<RunStatus>,
}

impl RunFilter {
    /// Whether `run` matches.
    pub fn matches(&self, run: &StoredRun) -> bool {
        self.repo.as_ref().is_none_or(|repo| &run.repo == repo)
            && self.git_ref.as_ref().is_none_or(|r| &run.git_ref == r)
            && self
                .status
                .is_none_or(|status| run.state.status() == status)
    }

    /// The index prefixes the filter names.
    fn prefixes(&self) -> Vec<(Table<Bytes, Bytes>, Vec<u8>)> {
        let mut prefixes = Vec::new();
        if let Some(repo) = &self.repo {
            prefixes.push((RUNS_BY_REPO, prefix(repo.as_bytes())));
        }
        if let Some(git_ref) = &self.git_ref {
            prefixes.push((RUNS_BY_REF, prefix(git_ref.as_bytes())));
        }
        if let Some(status) = self.status {
            prefixes.push((RUNS_BY_STATUS, prefix(status.as_str().as_bytes())));
        }
        prefixes
    }
}

/// `value 0x00`: what every index key of `value` starts with. Names, refs and status words
/// hold no NUL, so one value's keys never run into another's.
fn prefix(value: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(value.len() + 9);
    key.extend_from_slice(value);
    key.push(0);
    key
}

fn index_key(value: &[u8], id: u64) -> Vec<u8> {
    let mut key = prefix(value);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// Keeps the indexes in step with `run` being stored: repository and ref when it is new,
/// the unfinished set as it starts and ends, and the status index for final statuses only
/// (unfinished runs are listed from memory). A lease or a start touches no index, and only a
/// retry (final back to queued) reads what was stored, to move its status key.
pub(crate) fn index_run(txn: &mut WriteTxn<'_>, run: &StoredRun) -> Result<(), StoreError> {
    let id = run.id().get();
    let existed = txn.get(RUNS, &id)?.is_some();
    let was_unfinished = existed && txn.get(RUNS_UNFINISHED, &id)?.is_some();
    let status = run.state.status();
    // A run's repository and ref never change.
    if !existed {
        index_origin(txn, run)?;
    }
    let was_final = existed && !was_unfinished;
    if was_final {
        // Stored final: its status key goes unless it stays, as it was.
        let old = txn
            .get(RUNS, &id)?
            .and_then(|bytes| decode_run(id, bytes).ok())
            .map(|old| old.state.status());
        if old == Some(status) {
            return Ok(());
        }
        if let Some(old) = old {
            txn.delete(RUNS_BY_STATUS, &index_key(old.as_str().as_bytes(), id)[..])?;
        }
    }
    if status.is_final() {
        index_status(txn, status, id)?;
        if was_unfinished {
            txn.delete(RUNS_UNFINISHED, &id)?;
        }
    } else if !was_unfinished {
        txn.put(RUNS_UNFINISHED, &id, &[][..])?;
    }
    Ok(())
}

/// Indexes every stored run, once, for a store written before the indexes existed.
pub(crate) fn index_history(store: &Store) -> Result<(), QueueError> {
    if store.read(|txn| Ok(txn.get(META, INDEXED_KEY)?.is_some()))? {
        return Ok(());
    }
    let mut after: Option<u64> = None;
    let mut indexed = 0usize;
    loop {
        let last = store.write(|txn| {
            let lower = match after {
                Some(id) => Bound::Excluded(id),
                None => Bound::Unbounded,
            };
            let batch: Vec<(u64, Vec<u8>)> = txn
                .iter_range(RUNS, &(lower, Bound::Unbounded))?
                .take(INDEX_BATCH)
                .map(|entry| entry.map(|(id, bytes)| (id, bytes.to_vec())))
                .collect::<Result<_, _>>()?;
            for (id, bytes) in &batch {
                let run = decode_run(*id, bytes).map_err(store_error)?;
                index_new(txn, &run)?;
            }
            if batch.len() < INDEX_BATCH {
                txn.put(META, INDEXED_KEY, &[1u8][..])?;
            }
            Ok((batch.len(), batch.last().map(|(id, _)| *id)))
        })?;
        indexed += last.0;
        if indexed > 0 && (last.0 == INDEX_BATCH || after.is_some()) {
            info!(runs = indexed, "indexing the run history for listings");
        }
        match last {
            (n, Some(id)) if n == INDEX_BATCH => after = Some(id),
            _ => return Ok(()),
        }
    }
}

/// Indexes a stored run as if it were new (for a store written before the indexes).
fn index_new(txn: &mut WriteTxn<'_>, run: &StoredRun) -> Result<(), StoreError> {
    index_origin(txn, run)?;
    let status = run.state.status();
    if status.is_final() {
        index_status(txn, status, run.id().get())
    } else {
        txn.put(RUNS_UNFINISHED, &run.id().get(), &[][..])
    }
}

/// A run's repository and ref keys.
fn index_origin(txn: &mut WriteTxn<'_>, run: &StoredRun) -> Result<(), StoreError> {
    let id = run.id().get();
    txn.put(
        RUNS_BY_REPO,
        &index_key(run.repo.as_bytes(), id)[..],
        &[][..],
    )?;
    txn.put(
        RUNS_BY_REF,
        &index_key(run.git_ref.as_bytes(), id)[..],
        &[][..],
    )
}

/// A finished run's status key.
fn index_status(txn: &mut WriteTxn<'_>, status: RunStatus, id: u64) -> Result<(), StoreError> {
    txn.put(
        RUNS_BY_STATUS,
        &index_key(status.as_str().as_bytes(), id)[..],
        &[][..],
    )
}

/// The ids of the runs not yet final.
pub(crate) fn unfinished(txn: &ReadTxn<'_>) -> Result<Vec<u64>, StoreError> {
    txn.iter_range(RUNS_UNFINISHED, &..)?
        .map(|entry| entry.map(|(id, _)| id))
        .collect()
}

/// Up to `limit` stored runs matching `filter`, newest first, leaving out the ids `skip`
/// names (runs whose newer state is in memory).
pub(crate) fn newest_matching(
    txn: &ReadTxn<'_>,
    filter: &RunFilter,
    limit: usize,
    skip: impl Fn(u64) -> bool,
) -> Result<Vec<StoredRun>, QueueError> {
    let mut found = Vec::new();
    if limit == 0 {
        return Ok(found);
    }
    if filter.status.is_some_and(|status| !status.is_final()) {
        // Unfinished runs are all in memory; the caller lists them from there.
        return Ok(found);
    }
    let prefixes = filter.prefixes();
    if prefixes.is_empty() {
        for entry in txn.iter_range_rev(RUNS, &..)? {
            let (id, bytes) = entry?;
            if skip(id) {
                continue;
            }
            found.push(decode_run(id, bytes)?);
            if found.len() == limit {
                break;
            }
        }
        return Ok(found);
    }
    let mut below = u64::MAX;
    while let Some(id) = leapfrog(txn, &prefixes, below)? {
        if !skip(id)
            && let Some(bytes) = txn.get(RUNS, &id)?
        {
            let run = decode_run(id, bytes)?;
            // The indexes are written with the run; checking again costs nothing.
            if filter.matches(&run) {
                found.push(run);
                if found.len() == limit {
                    break;
                }
            }
        }
        match id.checked_sub(1) {
            Some(next) => below = next,
            None => break,
        }
    }
    Ok(found)
}

/// The newest run id at or below `below` present under every prefix, or `None`.
fn leapfrog(
    txn: &ReadTxn<'_>,
    prefixes: &[(Table<Bytes, Bytes>, Vec<u8>)],
    below: u64,
) -> Result<Option<u64>, StoreError> {
    let mut candidate = below;
    loop {
        let mut moved = false;
        for (table, prefix) in prefixes {
            match newest_at_or_below(txn, *table, prefix, candidate)? {
                None => return Ok(None),
                Some(id) if id < candidate => {
                    candidate = id;
                    moved = true;
                }
                Some(_) => {}
            }
        }
        if !moved {
            return Ok(Some(candidate));
        }
    }
}

/// The newest id under `prefix` in `table` at or below `at`.
fn newest_at_or_below(
    txn: &ReadTxn<'_>,
    table: Table<Bytes, Bytes>,
    prefix: &[u8],
    at: u64,
) -> Result<Option<u64>, StoreError> {
    let mut low = prefix.to_vec();
    low.extend_from_slice(&0u64.to_be_bytes());
    let mut high = prefix.to_vec();
    high.extend_from_slice(&at.to_be_bytes());
    let range = (Bound::Included(&low[..]), Bound::Included(&high[..]));
    // Keys of this value are the prefix and 8 bytes of id; a longer one belongs to a value
    // that merely starts with this one and a NUL (refused at intake, skipped here).
    for entry in txn.iter_range_rev(table, &range)? {
        let (key, _) = entry?;
        if let Some(id) = key
            .get(prefix.len()..)
            .and_then(|id| <[u8; 8]>::try_from(id).ok())
        {
            return Ok(Some(u64::from_be_bytes(id)));
        }
    }
    Ok(None)
}

/// The runs with these ids, as stored.
pub(crate) fn load(txn: &ReadTxn<'_>, ids: &[u64]) -> Result<Vec<StoredRun>, QueueError> {
    let mut runs = Vec::with_capacity(ids.len());
    for &id in ids {
        if let Some(bytes) = txn.get(RUNS, &id)? {
            runs.push(decode_run(id, bytes)?);
        }
    }
    Ok(runs)
}

/// Writes submissions and their runs straight into `store`, in one transaction, indexed as
/// the queue indexes what it stores: a long history for benchmarks and tools without a
/// commit per run. Ids must be new; the queue's next id moves past them. Runs must be
/// finished (the queue is not told of them; open it afterwards).
pub fn import_history(
    store: &Store,
    submissions: &[(StoredSubmission, Vec<StoredRun>)],
) -> Result<(), QueueError> {
    index_history(store)?;
    store.write(|txn| {
        let mut next = txn
            .get(META, NEXT_ID_KEY)?
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(1, u64::from_be_bytes);
        for (submission, runs) in submissions {
            let bytes = tinyci_store::Record::<StoredSubmission>::encode(submission)
                .map_err(store_error)?;
            txn.put(
                tinyci_store::tables::SUBMISSIONS,
                &submission.id.get(),
                &bytes[..],
            )?;
            next = next.max(submission.id.get() + 1);
            for run in runs {
                put_run(txn, run)?;
                next = next.max(run.id().get() + 1);
            }
        }
        txn.put(META, NEXT_ID_KEY, &next.to_be_bytes()[..])?;
        Ok(())
    })?;
    Ok(())
}
