//! Log retention: what each run's log holds, and removing the logs of runs the site's
//! retention policy (decided by the caller) lets go.

use std::collections::BTreeMap;
use std::sync::Arc;

use tinyci_store::tables::LOG_INDEX;

use crate::read::off_thread;
use crate::{LogError, Logs};

/// What one run's stored log holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogUsage {
    /// Bytes its file takes: the log text and its frames.
    pub bytes: u64,
}

impl Logs {
    /// Every run that has a stored log, with what it holds.
    pub async fn usage(&self) -> Result<BTreeMap<u64, LogUsage>, LogError> {
        let files = self.files().clone();
        let failed = {
            let dir = files.dir().to_path_buf();
            move |source| LogError::Scan {
                dir,
                source: Arc::new(source),
            }
        };
        off_thread(
            {
                let failed = failed.clone();
                move || {
                    Ok(files
                        .list()
                        .map_err(failed)?
                        .into_iter()
                        .map(|(run, bytes)| (run, LogUsage { bytes }))
                        .collect())
                }
            },
            failed,
        )
        .await
    }

    /// Deletes the whole stored log of each of `runs`: its index entries (durably), then its
    /// file, so a crash in between leaves a file the next sweep finds and removes. The
    /// caller removes only logs of finished runs: nothing is writing them.
    pub async fn remove(&self, runs: Vec<u64>) -> Result<(), LogError> {
        if runs.is_empty() {
            return Ok(());
        }
        let count = runs.len();
        self.forget(&runs);
        let unindexed = runs.clone();
        self.committer()
            .write(move |txn| {
                for run in unindexed {
                    let keys: Vec<Vec<u8>> = txn
                        .iter_prefix(LOG_INDEX, &run.to_be_bytes()[..])?
                        .map(|entry| entry.map(|(key, _)| key.to_vec()))
                        .collect::<Result<_, _>>()?;
                    for key in keys {
                        txn.delete(LOG_INDEX, &key[..])?;
                    }
                }
                Ok(())
            })
            .await
            .map_err(|source| LogError::Remove {
                runs: count,
                source: Arc::new(source),
            })?;
        let files = self.files().clone();
        off_thread(
            move || {
                for run in runs {
                    files.remove(run).map_err(|source| LogError::RemoveFile {
                        run,
                        source: Arc::new(source),
                    })?;
                }
                Ok(())
            },
            |source| LogError::RemoveFile {
                run: 0,
                source: Arc::new(source),
            },
        )
        .await
    }
}
