//! Moving logs stored the old way, as LMDB records, into their files: once, when the logs
//! open. Each run's file is written whole and synced before its records are deleted, so a
//! crash in between leaves the records, and the next start writes the file again.

use std::io::Write as _;
use std::sync::Arc;

use tinyci_store::records::{key_run, log_key_offset};
use tinyci_store::tables::LOG_CHUNKS;
use tinyci_store::{Store, StoreError};

use crate::LogError;
use crate::segment::{LogFiles, encode_record};

/// Moves every log in `LOG_CHUNKS` into its file; returns how many runs' logs moved.
pub(crate) fn migrate_records(store: &Store, files: &LogFiles) -> Result<usize, LogError> {
    let runs = runs_with_records(store)?;
    for &run in &runs {
        let failed =
            |source: Arc<dyn std::error::Error + Send + Sync>| LogError::Migrate { run, source };
        // A file left by a move that crashed is written again from the records.
        files.remove(run).map_err(|e| failed(Arc::new(e)))?;
        let file = files
            .open_for_append(run)
            .map_err(|e| failed(Arc::new(e)))?;
        let mut out = std::io::BufWriter::new(file);
        store
            .read(|txn| {
                let mut frame = Vec::new();
                for entry in txn.iter_prefix(LOG_CHUNKS, &run.to_be_bytes()[..])? {
                    let (key, record) = entry?;
                    frame.clear();
                    encode_record(log_key_offset(key), &record, &mut frame);
                    out.write_all(&frame).map_err(|e| StoreError::Aborted {
                        reason: e.to_string().into(),
                    })?;
                }
                Ok(())
            })
            .map_err(|e| failed(Arc::new(e)))?;
        let file = out
            .into_inner()
            .map_err(|e| failed(Arc::new(e.into_error())))?;
        file.sync_all().map_err(|e| failed(Arc::new(e)))?;
        store
            .write(|txn| {
                let keys: Vec<Vec<u8>> = txn
                    .iter_prefix(LOG_CHUNKS, &run.to_be_bytes()[..])?
                    .map(|entry| entry.map(|(key, _)| key.to_vec()))
                    .collect::<Result<_, _>>()?;
                for key in keys {
                    txn.delete(LOG_CHUNKS, &key[..])?;
                }
                Ok(())
            })
            .map_err(|e| failed(Arc::new(e)))?;
    }
    Ok(runs.len())
}

/// The runs that still have records in `LOG_CHUNKS`, skipping from one run's keys to the
/// next's rather than reading every record.
fn runs_with_records(store: &Store) -> Result<Vec<u64>, LogError> {
    let scan_failed = |source: StoreError| LogError::Migrate {
        run: 0,
        source: Arc::new(source),
    };
    let mut runs = Vec::new();
    let mut next = 0u64;
    loop {
        let start = next.to_be_bytes();
        let found = store
            .read(|txn| {
                let range = (
                    std::ops::Bound::Included(&start[..]),
                    std::ops::Bound::Unbounded,
                );
                match txn.iter_range(LOG_CHUNKS, &range)?.next() {
                    Some(entry) => Ok(key_run(entry?.0)),
                    None => Ok(None),
                }
            })
            .map_err(scan_failed)?;
        let Some(run) = found else {
            return Ok(runs);
        };
        runs.push(run);
        match run.checked_add(1) {
            Some(after) => next = after,
            None => return Ok(runs),
        }
    }
}
