//! Log retention: what each run's log holds, and removing the logs of runs the site's
//! retention policy (decided by the caller) lets go.

use std::collections::BTreeMap;
use std::sync::Arc;

use tinyci_store::records::key_run;
use tinyci_store::tables::LOG_CHUNKS;

use crate::read::off_thread;
use crate::{LogError, Logs};

/// What one run's stored log holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogUsage {
    /// Stored chunks.
    pub chunks: u64,
    /// Bytes of log text in them.
    pub bytes: u64,
}

impl Logs {
    /// Every run that has a stored log, with what it holds.
    pub async fn usage(&self) -> Result<BTreeMap<u64, LogUsage>, LogError> {
        let store = self.store().clone();
        off_thread(
            move || {
                store
                    .read(|txn| {
                        let mut usage: BTreeMap<u64, LogUsage> = BTreeMap::new();
                        for entry in txn.iter_range(LOG_CHUNKS, &..)? {
                            let (key, chunk) = entry?;
                            if let Some(run) = key_run(key) {
                                let run = usage.entry(run).or_default();
                                run.chunks += 1;
                                run.bytes += chunk.data.len() as u64;
                            }
                        }
                        Ok(usage)
                    })
                    .map_err(|source| LogError::Scan {
                        source: Arc::new(source),
                    })
            },
            |source| LogError::Scan {
                source: Arc::new(source),
            },
        )
        .await
    }

    /// Deletes the whole stored log of each of `runs`, durably. The caller removes only logs
    /// of finished runs: nothing is writing them.
    pub async fn remove(&self, runs: Vec<u64>) -> Result<(), LogError> {
        if runs.is_empty() {
            return Ok(());
        }
        let count = runs.len();
        self.committer()
            .write(move |txn| {
                for run in runs {
                    let keys: Vec<Vec<u8>> = txn
                        .iter_prefix(LOG_CHUNKS, &run.to_be_bytes()[..])?
                        .map(|entry| entry.map(|(key, _)| key.to_vec()))
                        .collect::<Result<_, _>>()?;
                    for key in keys {
                        txn.delete(LOG_CHUNKS, &key[..])?;
                    }
                }
                Ok(())
            })
            .await
            .map_err(|source| LogError::Remove {
                runs: count,
                source: Arc::new(source),
            })
    }
}
