//! Source archives: uploaded by submitters, imported from GitHub tarballs, stored
//! content-addressed (`<data>/sources/<sha256>.tar`, durable before the upload is
//! acknowledged), read for task files when planning, streamed to runners. Runners never get
//! repository credentials; they get these bytes.
//!
//! Archives live as files beside the LMDB store rather than in it: they are large, written
//! once, and read sequentially, which files do well and a memory-mapped B-tree does not.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::sink::{HashingSink, SinkError, Stored};

/// Largest source archive a site accepts.
pub const MAX_SOURCE_BYTES: u64 = 256 * 1024 * 1024;
/// Largest `tinyci.yml` or `task.yml` read from an archive.
pub const MAX_TASK_FILE_BYTES: u64 = 1024 * 1024;
/// Most task files one archive may hold.
pub const MAX_TASK_FILES: usize = 10_000;

/// Where a site keeps source archives.
#[derive(Clone, Debug)]
pub struct SourceStore {
    dir: PathBuf,
}

/// One archive being uploaded: bytes go in with [`SourceUpload::put`], and
/// [`SourceUpload::finish`] checks and stores them. Dropped unfinished, it leaves nothing.
#[derive(Debug)]
pub struct SourceUpload {
    sink: HashingSink,
    dir: PathBuf,
}

/// Why a GitHub tarball was not imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The tarball could not be read (not gzip, not tar, truncated).
    #[error("cannot read the GitHub tarball")]
    Read(#[from] std::io::Error),
    /// An entry would land outside the repository's tree.
    #[error("archive entry {0} leaves the tree")]
    LeavesTree(String),
    /// A symlink entry names no target.
    #[error("archive entry {0} is a symlink without a target")]
    NoTarget(String),
    /// Storing the archive failed, or it is too large unpacked.
    #[error("cannot store the source archive")]
    Store(#[from] SinkError),
}

/// Why an archive's task files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive could not be read.
    #[error("cannot read the source archive")]
    Io(#[from] std::io::Error),
    /// A task file is too large.
    #[error("{path} is {size} bytes; task files are limited to {MAX_TASK_FILE_BYTES}")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// Too many task files.
    #[error("the archive holds more than {MAX_TASK_FILES} task files")]
    TooMany,
    /// A task file is not UTF-8.
    #[error("{path} is not UTF-8")]
    NotText {
        /// The file.
        path: String,
    },
}

impl SourceStore {
    /// Creates `<data>/sources/incoming` if needed and clears uploads a previous process
    /// left unfinished (none was acknowledged). Call with the store open: its lock keeps
    /// other sites off `data_dir`.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("sources");
        crate::sink::fresh_incoming(&dir.join("incoming"))?;
        Ok(Self { dir })
    }

    fn archive(&self, sha256: &[u8]) -> PathBuf {
        self.dir.join(format!("{}.tar", hex::encode(sha256)))
    }

    /// The stored archive with this digest, if any.
    pub fn path(&self, sha256: &[u8]) -> Option<PathBuf> {
        if sha256.len() != 32 {
            return None;
        }
        let path = self.archive(sha256);
        path.is_file().then_some(path)
    }

    /// Starts one upload of at most [`MAX_SOURCE_BYTES`].
    pub fn upload(&self) -> Result<SourceUpload, SinkError> {
        self.upload_at_most(MAX_SOURCE_BYTES)
    }

    /// Starts one upload of at most `limit` bytes (never more than [`MAX_SOURCE_BYTES`]):
    /// what is left of the uploader's quota.
    pub fn upload_at_most(&self, limit: u64) -> Result<SourceUpload, SinkError> {
        Ok(SourceUpload {
            sink: HashingSink::create_in(&self.dir.join("incoming"), limit.min(MAX_SOURCE_BYTES))?,
            dir: self.dir.clone(),
        })
    }

    /// Deletes every stored archive that `keep` does not name and that was last written
    /// before `cutoff` (uploaded and never submitted, or imported by a delivery that never
    /// became a submission). Returns how many went and their bytes. Blocking: call it off the
    /// async thread.
    pub fn remove_unreferenced(
        &self,
        keep: &std::collections::BTreeSet<Vec<u8>>,
        cutoff: std::time::SystemTime,
    ) -> std::io::Result<(usize, u64)> {
        let mut removed = (0, 0);
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".tar"))
                .and_then(|hex_digest| hex::decode(hex_digest).ok())
            else {
                continue; // `incoming/` and anything not an archive
            };
            if keep.contains(&digest) {
                continue;
            }
            let metadata = entry.metadata()?;
            if metadata.modified()? >= cutoff {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    removed.0 += 1;
                    removed.1 += metadata.len();
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// Stores a GitHub source tarball (gzipped, every path under one top directory
    /// `owner-repo-sha/`) as a plain archive of the repository's tree, paths relative to its
    /// root like `git archive` makes, durably; returns its SHA-256. Blocking: call it off the
    /// async thread. Refuses more than [`MAX_SOURCE_BYTES`] unpacked (a gzip bomb stops
    /// there) and entries outside the top directory.
    pub fn import_github_tarball(&self, gzipped: &[u8]) -> Result<[u8; 32], ImportError> {
        let unpacked = flate2::read::GzDecoder::new(gzipped).take(MAX_SOURCE_BYTES + 1);
        let mut input = tar::Archive::new(unpacked);
        let upload = self.upload()?;
        let mut output = tar::Builder::new(upload.sink);
        output.mode(tar::HeaderMode::Deterministic);
        for entry in input.entries()? {
            let mut entry = entry?;
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
                continue; // pax global headers (GitHub puts the commit id there) and the like
            }
            let path = entry.path()?.into_owned();
            let mut parts = path.components();
            parts.next(); // the `owner-repo-sha/` directory
            let inner = parts.as_path().to_owned();
            if inner.as_os_str().is_empty() {
                continue;
            }
            if inner
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(ImportError::LeavesTree(path.display().to_string()));
            }
            let mut header = entry.header().clone();
            if kind.is_symlink() {
                let target = entry
                    .link_name()?
                    .map(|t| t.into_owned())
                    .ok_or_else(|| ImportError::NoTarget(path.display().to_string()))?;
                output
                    .append_link(&mut header, &inner, target)
                    .map_err(recover)?;
            } else {
                output
                    .append_data(&mut header, &inner, &mut entry)
                    .map_err(recover)?;
            }
        }
        let sink = output.into_inner().map_err(recover)?;
        let stored = sink.finish(None, |digest| self.archive(digest))?;
        Ok(stored.sha256)
    }
}

/// The archive builder reports the sink's refusal (too large, a write failing) as an I/O
/// error: recover it, so the refusal says what it was.
fn recover(e: std::io::Error) -> ImportError {
    if !e.get_ref().is_some_and(|inner| inner.is::<SinkError>()) {
        return ImportError::Read(e);
    }
    match e.into_inner().map(|inner| inner.downcast::<SinkError>()) {
        Some(Ok(refused)) => ImportError::Store(*refused),
        _ => ImportError::Read(std::io::Error::other("cannot write the archive")),
    }
}

impl SourceUpload {
    /// Appends bytes; past [`MAX_SOURCE_BYTES`] the upload is refused.
    pub fn put(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.sink.put(bytes)
    }

    /// Checks the bytes against the SHA-256 the uploader declared and stores the archive
    /// durably under it. Blocking: call it off the async thread.
    pub fn finish(self, expected: &[u8]) -> Result<Stored, SinkError> {
        let Self { sink, dir } = self;
        sink.finish(Some(expected), |digest| {
            dir.join(format!("{}.tar", hex::encode(digest)))
        })
    }
}

/// Every `tinyci.yml` and `task.yml` in the archive, by path relative to the repository root
/// (`tinyci.yml`, `task.yml`, `build/task.yml`).
pub fn task_files(archive: &Path) -> Result<BTreeMap<String, String>, ArchiveError> {
    let mut tar = tar::Archive::new(File::open(archive)?);
    let mut files = BTreeMap::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./").to_owned();
        let name = path.rsplit('/').next().unwrap_or(&path);
        let wanted = name == "task.yml" || path == "tinyci.yml";
        if !wanted {
            continue;
        }
        let size = entry.header().size()?;
        if size > MAX_TASK_FILE_BYTES {
            return Err(ArchiveError::TooLarge { path, size });
        }
        if files.len() >= MAX_TASK_FILES {
            return Err(ArchiveError::TooMany);
        }
        let mut bytes = Vec::new();
        entry
            .by_ref()
            .take(MAX_TASK_FILE_BYTES)
            .read_to_end(&mut bytes)?;
        let text =
            String::from_utf8(bytes).map_err(|_| ArchiveError::NotText { path: path.clone() })?;
        files.insert(path, text);
    }
    Ok(files)
}
