//! The one way bulk bytes reach disk: a temporary file in the destination's directory,
//! hashed and counted as it is written, refused past a size limit, checked against the
//! SHA-256 the sender declares, fsynced, renamed into place, and the directory fsynced. A
//! sink dropped before it finished leaves nothing behind.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::warn;

/// Why bytes were not stored.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// More bytes arrived than the limit allows.
    #[error("more than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The bytes do not hash to what the sender declared.
    #[error("SHA-256 mismatch (corrupted in transit)")]
    Digest,
    /// The file could not be written, synced or moved. The message does not name the path
    /// (it reaches the sender); the value keeps it for the site's own log.
    #[error("the site could not write it to disk")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// A failure of the site's own disk: logged here with the path (the operator's to fix),
/// reported to the sender without it.
fn disk_error(path: &Path, source: std::io::Error) -> SinkError {
    warn!(path = %path.display(), error = %source, "cannot store incoming bytes");
    SinkError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a finished sink stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The content's SHA-256.
    pub sha256: [u8; 32],
    /// Its length.
    pub size: u64,
}

#[cfg(feature = "store")]
/// Creates `incoming` (where sinks write) if needed and removes the temporary files a
/// previous process left there unfinished: nothing that was acknowledged lives there.
pub(crate) fn fresh_incoming(incoming: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(incoming)?;
    for entry in std::fs::read_dir(incoming)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "part") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Bytes on their way to a file: see the module's documentation.
#[derive(Debug)]
pub struct HashingSink {
    file: File,
    tmp: PathBuf,
    hasher: Sha256,
    size: u64,
    limit: u64,
    /// Set once the temporary file was moved (or removed): nothing left to clean.
    done: bool,
}

impl HashingSink {
    /// A sink writing a temporary file in `dir` (which must exist and be on the same file
    /// system as the destination), taking at most `limit` bytes.
    pub fn create_in(dir: &Path, limit: u64) -> Result<Self, SinkError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{}-{n}.part", std::process::id()));
        let file = File::create(&tmp).map_err(|source| disk_error(&tmp, source))?;
        Ok(Self {
            file,
            tmp,
            hasher: Sha256::new(),
            size: 0,
            limit,
            done: false,
        })
    }

    /// Bytes taken so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `bytes`, refusing them (and everything after) past the limit.
    pub fn put(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        let size = self.size.saturating_add(bytes.len() as u64);
        if size > self.limit {
            return Err(SinkError::TooLarge { limit: self.limit });
        }
        self.file
            .write_all(bytes)
            .map_err(|source| disk_error(&self.tmp, source))?;
        self.hasher.update(bytes);
        self.size = size;
        Ok(())
    }

    /// The SHA-256 of what was taken so far.
    pub fn digest(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    /// Checks the content against `expected` (when the sender declared a digest), makes it
    /// durable and moves it to `dest(digest)`, replacing what is there atomically (for a
    /// content-addressed name, identical bytes; a reader of the old file keeps reading it).
    /// Blocking: call it off the async thread.
    pub fn finish(
        mut self,
        expected: Option<&[u8]>,
        dest: impl FnOnce(&[u8; 32]) -> PathBuf,
    ) -> Result<Stored, SinkError> {
        let stored = Stored {
            sha256: self.digest(),
            size: self.size,
        };
        if expected.is_some_and(|e| e != stored.sha256.as_slice()) {
            return Err(SinkError::Digest);
        }
        let dest = dest(&stored.sha256);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| disk_error(&path, source)
        };
        self.file.sync_all().map_err(io(&self.tmp))?;
        std::fs::rename(&self.tmp, &dest).map_err(io(&dest))?;
        self.done = true;
        let dir = dest.parent().unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(stored)
    }
}

/// For writers that produce the bytes themselves (an archive builder): the limit applies.
impl Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.put(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for HashingSink {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
