//! Artifacts: files a run's command produced, stored content-addressed under
//! `<data>/artifacts/<sha256 hex>` (identical content is stored once) and described by one
//! row per (run, name) in the store. The bytes are made durable and put in place first; only
//! then is the row committed, so a listed artifact always has its bytes.
//!
//! Names are checked here, whatever the runner checked: relative, `/`-separated, no `..`,
//! `.` or empty components, no NUL, backslash or control characters, bounded in length. The
//! runner is the one that resolves paths; the site only ever sees names and bytes, and never
//! touches a path built from a name.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tinyci_store::records::{ArtifactRecord, artifact_key, key_run};
use tinyci_store::tables::ARTIFACTS;
use tinyci_store::{GroupCommitter, Store, StoreError};

use tracing::warn;

use crate::sink::{HashingSink, SinkError, Stored};

/// Largest artifact accepted unless `artifacts.max_bytes` in site.toml says otherwise: big
/// enough for a build's binaries, small enough that one run cannot fill a disk by itself.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 256 * 1024 * 1024;
/// Most bytes of artifacts one run may keep, all artifacts together (and so the highest
/// `artifacts.max_bytes` may go).
pub const MAX_RUN_ARTIFACT_BYTES: u64 = 1024 * 1024 * 1024;
/// Most artifacts one run may keep: a listing stays one reasonable message.
pub const MAX_ARTIFACTS_PER_RUN: usize = 1000;
/// Longest artifact name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest component of an artifact name, in bytes (the usual file name limit).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Why an artifact name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty.
    #[error("the name is empty")]
    Empty,
    /// Longer than [`MAX_NAME_BYTES`].
    #[error("the name is {len} bytes long; at most {MAX_NAME_BYTES} are allowed")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Starts with `/`.
    #[error(
        "the name is an absolute path; artifact names are relative to the run's working directory"
    )]
    Absolute,
    /// Holds `..`.
    #[error("the name holds a '..' component, which would leave the run's working directory")]
    ParentDir,
    /// Holds an empty or `.` component.
    #[error("the name holds an empty or '.' component; send it normalized (a/b, not ./a//b)")]
    NotNormal,
    /// Holds NUL.
    #[error("the name holds a NUL byte")]
    Nul,
    /// Holds a backslash.
    #[error("the name holds a backslash; directories are separated by '/'")]
    Backslash,
    /// Holds a control character.
    #[error("the name holds a control character")]
    Control,
    /// A component longer than [`MAX_COMPONENT_BYTES`].
    #[error(
        "a component of the name is {len} bytes long; at most {MAX_COMPONENT_BYTES} are allowed"
    )]
    ComponentTooLong {
        /// Its length.
        len: usize,
    },
}

/// Checks an artifact name: a normalized relative path that stays inside the workdir.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong { len: name.len() });
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    if name.contains('\\') {
        return Err(NameError::Backslash);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    for component in name.split('/') {
        match component {
            ".." => return Err(NameError::ParentDir),
            "" | "." => return Err(NameError::NotNormal),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(NameError::ComponentTooLong { len: c.len() });
            }
            _ => {}
        }
    }
    Ok(())
}

/// A name as it may appear in a message: quoted, and cut short if long.
pub fn shown(name: &str) -> String {
    const MAX: usize = 80;
    if name.len() <= MAX {
        return format!("{name:?}");
    }
    let mut end = MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &name[..end])
}

/// Why an artifact was refused or could not be stored or read. Messages name the run as
/// `r-N` and the artifact, quoted.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The name is not acceptable.
    #[error("artifact name {} refused", shown(name))]
    Name {
        /// The name sent.
        name: String,
        /// Why.
        #[source]
        why: NameError,
    },
    /// Larger than the site's per-artifact limit.
    #[error(
        "artifact {} refused: it is {size} bytes, over this site's limit of {max} bytes per \
         artifact (artifacts.max_bytes in site.toml)",
        shown(name)
    )]
    TooLarge {
        /// The artifact.
        name: String,
        /// Its declared size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The run keeps as many artifacts as it may.
    #[error(
        "artifact {} refused: run r-{run} already has {count} artifacts, the most a run may \
         keep is {MAX_ARTIFACTS_PER_RUN}",
        shown(name)
    )]
    TooMany {
        /// The run.
        run: u64,
        /// The artifact.
        name: String,
        /// What the run keeps (and has in flight).
        count: usize,
    },
    /// The run's artifacts would pass the per-run byte limit.
    #[error(
        "artifact {} refused: its {size} bytes would take run r-{run}'s artifacts to {total} \
         bytes, over the per-run limit of {MAX_RUN_ARTIFACT_BYTES} bytes",
        shown(name)
    )]
    RunFull {
        /// The run.
        run: u64,
        /// The artifact.
        name: String,
        /// Its size.
        size: u64,
        /// The run's total with it.
        total: u64,
    },
    /// The run has no artifact of this name.
    #[error("run r-{run} has no artifact {}", shown(name))]
    Missing {
        /// The run.
        run: u64,
        /// The name asked for.
        name: String,
    },
    /// The bytes could not be stored.
    #[error("failed to store artifact {}", shown(name))]
    Sink {
        /// The artifact.
        name: String,
        /// Why.
        #[source]
        source: SinkError,
    },
    /// The store failed.
    #[error("cannot read or record the artifacts of run r-{run}")]
    Store {
        /// The run.
        run: u64,
        /// What the store said.
        #[source]
        source: StoreError,
    },
}

/// Where a site keeps artifact bytes and rows, and its per-artifact limit.
#[derive(Debug)]
pub struct ArtifactStore {
    /// `<data>/artifacts`: blobs named by their SHA-256 in hex, `incoming/` for uploads in
    /// progress.
    dir: PathBuf,
    /// Largest artifact accepted (`artifacts.max_bytes`).
    max_bytes: u64,
    store: Store,
    committer: GroupCommitter,
    /// Blobs being put in place whose rows are not committed yet: collection must not take
    /// them for unreferenced.
    pending: Rc<RefCell<HashMap<[u8; 32], usize>>>,
}

/// Keeps a blob out of collection's hands while its row is being committed.
#[derive(Debug)]
pub struct PendingBlob {
    pending: Rc<RefCell<HashMap<[u8; 32], usize>>>,
    sha256: [u8; 32],
}

impl Drop for PendingBlob {
    fn drop(&mut self) {
        let mut pending = self.pending.borrow_mut();
        if let Some(count) = pending.get_mut(&self.sha256) {
            *count -= 1;
            if *count == 0 {
                pending.remove(&self.sha256);
            }
        }
    }
}

impl ArtifactStore {
    /// Creates `<data>/artifacts/incoming` if needed and clears uploads a previous process
    /// left unfinished. Call with the store open: its lock keeps other sites off `data_dir`.
    pub fn open(
        data_dir: &Path,
        max_bytes: u64,
        store: Store,
        committer: GroupCommitter,
    ) -> std::io::Result<Self> {
        let dir = data_dir.join("artifacts");
        crate::sink::fresh_incoming(&dir.join("incoming"))?;
        Ok(Self {
            dir,
            max_bytes,
            store,
            committer,
            pending: Rc::default(),
        })
    }

    /// The file holding the content with this digest.
    pub fn blob(&self, sha256: &[u8; 32]) -> PathBuf {
        self.dir.join(hex::encode(sha256))
    }

    /// Refuses `name` of `size` bytes before any byte arrives: a bad name, or over the
    /// per-artifact limit.
    pub fn admit(&self, name: &str, size: u64) -> Result<(), ArtifactError> {
        validate_name(name).map_err(|why| ArtifactError::Name {
            name: name.to_owned(),
            why,
        })?;
        if size > self.max_bytes {
            return Err(ArtifactError::TooLarge {
                name: name.to_owned(),
                size,
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    /// A sink for one artifact's bytes, taking at most `size`.
    pub fn upload(&self, name: &str, size: u64) -> Result<HashingSink, ArtifactError> {
        HashingSink::create_in(&self.dir.join("incoming"), size).map_err(|source| {
            ArtifactError::Sink {
                name: name.to_owned(),
                source,
            }
        })
    }

    /// Checks a finished upload against the SHA-256 the runner declared and puts its bytes
    /// in place, durably. The returned guard keeps the blob from collection until its row
    /// is committed ([`ArtifactStore::record`]). Runs its blocking part off the async thread.
    pub async fn store_blob(
        &self,
        name: &str,
        sink: HashingSink,
        expected: Vec<u8>,
    ) -> Result<(Stored, PendingBlob), ArtifactError> {
        let digest = sink.digest();
        let held = self.hold(digest);
        let dest = self.blob(&digest);
        let sink_error = |source| ArtifactError::Sink {
            name: name.to_owned(),
            source,
        };
        let stored = tokio::task::spawn_blocking(move || sink.finish(Some(&expected), |_| dest))
            .await
            .map_err(|e| {
                sink_error(SinkError::Io {
                    path: self.dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?
            .map_err(sink_error)?;
        Ok((stored, held))
    }

    fn hold(&self, sha256: [u8; 32]) -> PendingBlob {
        *self.pending.borrow_mut().entry(sha256).or_default() += 1;
        PendingBlob {
            pending: self.pending.clone(),
            sha256,
        }
    }

    /// A run's stored artifacts, in name order.
    pub fn list(&self, run: u64) -> Result<Vec<ArtifactRecord>, ArtifactError> {
        self.store
            .read(|txn| {
                txn.iter_prefix(ARTIFACTS, &run.to_be_bytes()[..])?
                    .map(|entry| entry.map(|(_, record)| record))
                    .collect()
            })
            .map_err(|source| ArtifactError::Store { run, source })
    }

    /// One stored artifact's row.
    pub fn get(&self, run: u64, name: &str) -> Result<ArtifactRecord, ArtifactError> {
        self.store
            .read(|txn| txn.get(ARTIFACTS, &artifact_key(run, name)[..]))
            .map_err(|source| ArtifactError::Store { run, source })?
            .ok_or_else(|| ArtifactError::Missing {
                run,
                name: name.to_owned(),
            })
    }

    /// The run's stored artifacts other than `name`: how many, and their bytes.
    pub fn usage_besides(&self, run: u64, name: &str) -> Result<(usize, u64), ArtifactError> {
        self.store
            .read(|txn| {
                let mut count = 0;
                let mut bytes = 0u64;
                for entry in txn.iter_prefix(ARTIFACTS, &run.to_be_bytes()[..])? {
                    let (_, record) = entry?;
                    if record.name != name {
                        count += 1;
                        bytes = bytes.saturating_add(record.size);
                    }
                }
                Ok((count, bytes))
            })
            .map_err(|source| ArtifactError::Store { run, source })
    }

    /// Commits `record` as an artifact of `run`, checking the run's limits again inside the
    /// transaction (another upload of the run may have committed since it was admitted).
    pub async fn record(&self, run: u64, record: ArtifactRecord) -> Result<(), ArtifactError> {
        let committed = self
            .committer
            .write(move |txn| {
                let mut count = 0;
                let mut bytes = 0u64;
                for entry in txn.iter_prefix(ARTIFACTS, &run.to_be_bytes()[..])? {
                    let (_, stored) = entry?;
                    if stored.name != record.name {
                        count += 1;
                        bytes = bytes.saturating_add(stored.size);
                    }
                }
                check_run_limits(run, &record.name, record.size, count, bytes).map_err(
                    |refused| StoreError::Aborted {
                        reason: Box::new(refused),
                    },
                )?;
                txn.put(ARTIFACTS, &artifact_key(run, &record.name)[..], &record)
            })
            .await;
        match committed {
            Ok(()) => Ok(()),
            Err(StoreError::Aborted { reason }) => match reason.downcast::<ArtifactError>() {
                Ok(refused) => Err(*refused),
                Err(reason) => Err(ArtifactError::Store {
                    run,
                    source: StoreError::Aborted { reason },
                }),
            },
            Err(source) => Err(ArtifactError::Store { run, source }),
        }
    }

    /// `(artifacts, bytes)` of every run that keeps artifacts (for retention).
    pub async fn usage(&self) -> Result<BTreeMap<u64, (u64, u64)>, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store.read(|txn| {
                let mut usage: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
                for entry in txn.iter_range(ARTIFACTS, &..)? {
                    let (key, record) = entry?;
                    if let Some(run) = key_run(key) {
                        let run = usage.entry(run).or_default();
                        run.0 += 1;
                        run.1 += record.size;
                    }
                }
                Ok(usage)
            })
        })
        .await
        .map_err(|e| StoreError::Aborted {
            reason: e.to_string().into(),
        })?
    }

    /// Deletes every artifact row of `runs`, durably; their blobs go at the next
    /// [`ArtifactStore::collect_blobs`] once nothing names them.
    pub async fn remove_runs(&self, runs: Vec<u64>) -> Result<(), StoreError> {
        if runs.is_empty() {
            return Ok(());
        }
        self.committer
            .write(move |txn| {
                for run in runs {
                    let keys: Vec<Vec<u8>> = txn
                        .iter_prefix(ARTIFACTS, &run.to_be_bytes()[..])?
                        .map(|entry| entry.map(|(key, _)| key.to_vec()))
                        .collect::<Result<_, _>>()?;
                    for key in keys {
                        txn.delete(ARTIFACTS, &key[..])?;
                    }
                }
                Ok(())
            })
            .await
    }

    /// Deletes blob files no artifact row names; returns how many. Does not await between
    /// reading the rows and deleting, so on the site's one thread no upload can commit a row
    /// in between; uploads still putting their blob in place are skipped. A blob that cannot
    /// be listed or removed is left for the next collection.
    pub fn collect_blobs(&self) -> Result<usize, StoreError> {
        let referenced: HashSet<[u8; 32]> = self.store.read(|txn| {
            txn.iter_range(ARTIFACTS, &..)?
                .map(|entry| entry.map(|(_, record)| record.sha256))
                .collect()
        })?;
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "cannot list artifact blobs");
                return Ok(0);
            }
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(sha) = name
                .to_str()
                .and_then(|n| hex::decode(n).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            else {
                // `incoming/` and anything that is not a blob.
                continue;
            };
            if referenced.contains(&sha) || self.pending.borrow().contains_key(&sha) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    warn!(blob = %entry.path().display(), error = %e, "cannot remove a blob nothing names");
                }
            }
        }
        Ok(removed)
    }
}

/// Refuses an artifact that would take the run past its count or byte limits, given what
/// the run already holds (`count`, `bytes`, the artifact itself not included).
pub fn check_run_limits(
    run: u64,
    name: &str,
    size: u64,
    count: usize,
    bytes: u64,
) -> Result<(), ArtifactError> {
    if count >= MAX_ARTIFACTS_PER_RUN {
        return Err(ArtifactError::TooMany {
            run,
            name: name.to_owned(),
            count,
        });
    }
    let total = bytes.saturating_add(size);
    if total > MAX_RUN_ARTIFACT_BYTES {
        return Err(ArtifactError::RunFull {
            run,
            name: name.to_owned(),
            size,
            total,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_that_stay_inside_the_workdir_are_accepted() {
        for name in [
            "report.txt",
            "out/a.bin",
            "deep/er/still.tar.gz",
            ".hidden",
            "a..b",
            "..a",
            "with space",
            "ünïcode/ファイル",
        ] {
            assert_eq!(validate_name(name), Ok(()), "{name:?}");
        }
        assert_eq!(validate_name(&"a".repeat(MAX_COMPONENT_BYTES)), Ok(()));
    }

    #[test]
    fn names_that_could_escape_or_mislead_are_refused_with_a_reason() {
        let long_component = "a".repeat(MAX_COMPONENT_BYTES + 1);
        let long_name = ["abc"; 300].join("/");
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("/etc/passwd", NameError::Absolute),
            ("..", NameError::ParentDir),
            ("../outside", NameError::ParentDir),
            ("out/../../outside", NameError::ParentDir),
            ("out/..", NameError::ParentDir),
            ("./a", NameError::NotNormal),
            ("a//b", NameError::NotNormal),
            ("a/", NameError::NotNormal),
            ("a\0b", NameError::Nul),
            ("..\\outside", NameError::Backslash),
            ("C:\\x", NameError::Backslash),
            ("line\nbreak", NameError::Control),
            (&long_component, NameError::ComponentTooLong { len: 256 }),
            (&long_name, NameError::TooLong { len: 1199 }),
        ];
        for (name, expected) in cases {
            assert_eq!(validate_name(name).as_ref(), Err(expected), "{name:?}");
        }
        assert_eq!(
            NameError::ParentDir.to_string(),
            "the name holds a '..' component, which would leave the run's working directory"
        );
    }

    #[test]
    fn long_names_are_cut_short_in_messages() {
        let long = "é".repeat(100);
        let shown = shown(&long);
        assert!(shown.ends_with('…') && shown.len() < 100, "{shown}");
        assert_eq!(super::shown("a.txt"), "\"a.txt\"");
    }

    #[test]
    fn run_limits_count_what_the_run_already_keeps() {
        let run = 7;
        assert!(check_run_limits(run, "a", 10, 0, 0).is_ok());
        let full = check_run_limits(run, "a", 1, MAX_ARTIFACTS_PER_RUN, 0)
            .unwrap_err()
            .to_string();
        assert!(
            full.contains("run r-7 already has 1000 artifacts"),
            "{full}"
        );
        let over = check_run_limits(run, "a", 2, 1, MAX_RUN_ARTIFACT_BYTES - 1)
            .unwrap_err()
            .to_string();
        assert!(
            over.contains("over the per-run limit of 1073741824 bytes"),
            "{over}"
        );
    }
}
