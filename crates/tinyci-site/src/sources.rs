//! Source archives: uploaded by submitters through a `ByteSink`, stored content-addressed
//! (`<data>/sources/<sha256>.tar`, fsynced before the upload is acknowledged), read for task
//! files when planning, and streamed to runners through `Job.source`. Runners never get
//! repository credentials; they get these bytes.
//!
//! Archives live as files beside the LMDB store rather than in it: they are large, written
//! once, and read sequentially, which files do well and a memory-mapped B-tree does not.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest, Sha256};
use tinyci_schema::byte_sink;

/// Largest source archive a site accepts.
pub(crate) const MAX_SOURCE_BYTES: u64 = 256 * 1024 * 1024;
/// Largest `tinyci.yml` or `task.yml` read from an archive.
pub(crate) const MAX_TASK_FILE_BYTES: u64 = 1024 * 1024;
/// Most task files one archive may hold.
pub(crate) const MAX_TASK_FILES: usize = 10_000;
/// Chunk size when streaming archives to runners.
const CHUNK: usize = 64 * 1024;

/// Where a site keeps source archives.
#[derive(Clone, Debug)]
pub(crate) struct SourceStore {
    dir: PathBuf,
}

impl SourceStore {
    pub(crate) fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("sources");
        std::fs::create_dir_all(dir.join("incoming"))?;
        Ok(Self { dir })
    }

    /// The stored archive with this digest, if any.
    pub(crate) fn path(&self, sha256: &[u8]) -> Option<PathBuf> {
        if sha256.len() != 32 {
            return None;
        }
        let path = self.dir.join(format!("{}.tar", hex::encode(sha256)));
        path.is_file().then_some(path)
    }

    /// A sink for one upload.
    pub(crate) fn upload(&self) -> std::io::Result<Upload> {
        let incoming = self.dir.join("incoming");
        let tmp = tempfile_in(&incoming)?;
        Ok(Upload {
            state: RefCell::new(Some(Receiving {
                file: File::create(&tmp)?,
                tmp,
                hasher: Sha256::new(),
                size: 0,
            })),
            dir: self.dir.clone(),
        })
    }
}

impl SourceStore {
    /// Stores a GitHub source tarball (gzipped, every path under one top directory
    /// `owner-repo-sha/`) as a plain archive of the repository's tree, paths relative to its
    /// root like `git archive` makes, fsynced; returns its SHA-256. Blocking: call it from
    /// `spawn_blocking`. Refuses more than [`MAX_SOURCE_BYTES`] unpacked (a gzip bomb stops
    /// there) and entries outside the top directory.
    pub(crate) fn import_github_tarball(&self, gzipped: &[u8]) -> std::io::Result<Vec<u8>> {
        use std::io::{Error, ErrorKind};
        let unpacked = flate2::read::GzDecoder::new(gzipped).take(MAX_SOURCE_BYTES + 1);
        let mut input = tar::Archive::new(unpacked);
        let tmp = tempfile_in(&self.dir.join("incoming"))?;
        let result = (|| -> std::io::Result<Vec<u8>> {
            let mut output = tar::Builder::new(HashingWriter {
                file: File::create(&tmp)?,
                hasher: Sha256::new(),
                size: 0,
            });
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
                    return Err(Error::new(
                        ErrorKind::InvalidData,
                        format!("archive entry {} leaves the tree", path.display()),
                    ));
                }
                let mut header = entry.header().clone();
                if kind.is_symlink() {
                    let target = entry.link_name()?.map(|t| t.into_owned()).ok_or_else(|| {
                        Error::new(ErrorKind::InvalidData, "symlink without a target")
                    })?;
                    output.append_link(&mut header, &inner, target)?;
                } else {
                    output.append_data(&mut header, &inner, &mut entry)?;
                }
            }
            let writer = output.into_inner()?;
            if writer.size > MAX_SOURCE_BYTES {
                return Err(Error::new(
                    ErrorKind::InvalidData,
                    format!("source archive is more than {MAX_SOURCE_BYTES} bytes unpacked"),
                ));
            }
            writer.file.sync_all()?;
            let digest = writer.hasher.finalize().to_vec();
            std::fs::rename(&tmp, self.dir.join(format!("{}.tar", hex::encode(&digest))))?;
            File::open(&self.dir)?.sync_all()?;
            Ok(digest)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Writes through to a file while hashing and counting.
struct HashingWriter {
    file: File,
    hasher: Sha256,
    size: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(dir.join(format!("{}-{n}.part", std::process::id())))
}

/// `ByteSink` for one upload.
pub(crate) struct Upload {
    state: RefCell<Option<Receiving>>,
    dir: PathBuf,
}

struct Receiving {
    file: File,
    tmp: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl Drop for Upload {
    fn drop(&mut self) {
        // An upload abandoned before `finish` leaves nothing behind.
        if let Some(receiving) = self.state.get_mut().take() {
            let _ = std::fs::remove_file(&receiving.tmp);
        }
    }
}

impl byte_sink::Server for Upload {
    async fn write(self: Rc<Self>, params: byte_sink::WriteParams) -> Result<(), capnp::Error> {
        let chunk = params.get()?.get_chunk()?;
        let mut state = self.state.borrow_mut();
        let receiving = state
            .as_mut()
            .ok_or_else(|| capnp::Error::failed("upload already finished".into()))?;
        receiving.size += chunk.len() as u64;
        if receiving.size > MAX_SOURCE_BYTES {
            return Err(capnp::Error::failed(format!(
                "source archive refused: more than {MAX_SOURCE_BYTES} bytes"
            )));
        }
        receiving.hasher.update(chunk);
        receiving
            .file
            .write_all(chunk)
            .map_err(|e| capnp::Error::failed(format!("failed to store the upload: {e}")))
    }

    async fn finish(
        self: Rc<Self>,
        params: byte_sink::FinishParams,
        mut results: byte_sink::FinishResults,
    ) -> Result<(), capnp::Error> {
        let expected = params.get()?.get_sha256()?.to_vec();
        let receiving = self
            .state
            .borrow_mut()
            .take()
            .ok_or_else(|| capnp::Error::failed("upload already finished".into()))?;
        let Receiving {
            file,
            tmp,
            hasher,
            size,
        } = receiving;
        let digest = hasher.finalize();
        if digest.as_slice() != expected.as_slice() {
            let _ = std::fs::remove_file(&tmp);
            return Err(capnp::Error::failed(
                "upload refused: SHA-256 mismatch (corrupted in transit)".into(),
            ));
        }
        let dir = self.dir.clone();
        // fsync and rename off the RPC thread: acknowledging means it is on disk.
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            file.sync_all()?;
            let dest = dir.join(format!("{}.tar", hex::encode(digest)));
            std::fs::rename(&tmp, &dest)?;
            File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| capnp::Error::failed(format!("failed to store the upload: {e}")))?
        .map_err(|e| capnp::Error::failed(format!("failed to store the upload: {e}")))?;
        results.get().set_size(size);
        Ok(())
    }
}

/// Why an archive's task files could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArchiveError {
    #[error("cannot read the source archive: {0}")]
    Io(#[from] std::io::Error),
    #[error("{path} is {size} bytes; task files are limited to {MAX_TASK_FILE_BYTES}")]
    TooLarge { path: String, size: u64 },
    #[error("the archive holds more than {MAX_TASK_FILES} task files")]
    TooMany,
    #[error("{path} is not UTF-8")]
    NotText { path: String },
}

/// Every `tinyci.yml` and `task.yml` in the archive, by path relative to the repository root
/// (`tinyci.yml`, `task.yml`, `build/task.yml`).
pub(crate) fn task_files(archive: &Path) -> Result<BTreeMap<String, String>, ArchiveError> {
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

/// Streams the archive at `path` into `sink` with capnp flow control, then finishes it with
/// the archive's SHA-256.
pub(crate) async fn stream_to(path: &Path, sink: byte_sink::Client) -> Result<(), capnp::Error> {
    let io =
        |e: std::io::Error| capnp::Error::failed(format!("cannot read the source archive: {e}"));
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        use tokio::io::AsyncReadExt;
        let n = file.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        let mut request = sink.write_request();
        request.get().set_chunk(&buf[..n]);
        request.send().await?;
    }
    let mut finish = sink.finish_request();
    finish.get().set_sha256(hasher.finalize().as_slice());
    finish.send().promise.await?;
    Ok(())
}
