//! Receiving a job's source archive from the site and unpacking it.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest, Sha256};
use tinyci_schema::byte_sink;

/// Largest source archive a runner accepts.
pub const MAX_SOURCE_BYTES: u64 = 512 * 1024 * 1024;

/// A `ByteSink` writing the archive to a file and hashing it as it arrives.
pub(crate) struct SourceSink {
    state: RefCell<Receiving>,
}

struct Receiving {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl SourceSink {
    pub(crate) fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            state: RefCell::new(Receiving {
                file: File::create(path)?,
                path: path.to_owned(),
                hasher: Sha256::new(),
                size: 0,
            }),
        })
    }
}

impl byte_sink::Server for SourceSink {
    async fn write(self: Rc<Self>, params: byte_sink::WriteParams) -> Result<(), capnp::Error> {
        let chunk = params.get()?.get_chunk()?;
        let mut state = self.state.borrow_mut();
        state.size += chunk.len() as u64;
        if state.size > MAX_SOURCE_BYTES {
            return Err(capnp::Error::failed(format!(
                "source archive exceeds this runner's limit of {MAX_SOURCE_BYTES} bytes"
            )));
        }
        state.hasher.update(chunk);
        state.file.write_all(chunk).map_err(|e| {
            capnp::Error::failed(format!("cannot write {}: {e}", state.path.display()))
        })
    }

    async fn finish(
        self: Rc<Self>,
        params: byte_sink::FinishParams,
        mut results: byte_sink::FinishResults,
    ) -> Result<(), capnp::Error> {
        let expected = params.get()?.get_sha256()?.to_vec();
        let mut state = self.state.borrow_mut();
        state.file.sync_all().map_err(|e| {
            capnp::Error::failed(format!("cannot write {}: {e}", state.path.display()))
        })?;
        let got = std::mem::take(&mut state.hasher).finalize();
        if got.as_slice() != expected.as_slice() {
            return Err(capnp::Error::failed(
                "source archive corrupted in transit (SHA-256 mismatch)".into(),
            ));
        }
        results.get().set_size(state.size);
        Ok(())
    }
}

/// Unpacks a tar archive into `dir`. The tar crate refuses entries that would land outside
/// `dir` (absolute paths, `..`, and writes through symlinks pointing out).
pub(crate) fn unpack(archive: &Path, dir: &Path) -> std::io::Result<()> {
    let file = File::open(archive)?;
    let mut tar = tar::Archive::new(file);
    tar.set_preserve_permissions(true);
    tar.set_overwrite(true);
    tar.unpack(dir)?;
    std::fs::remove_file(archive)
}

/// Makes `root` the runner's private work root: created if missing, then checked to be a
/// real directory (not a symlink someone planted in a shared `/tmp`) owned by this process's
/// user, and set to mode 0700. Every run's source lies under it, and a container's root can
/// leave set-user-id files there: no other local user may reach them.
pub fn private_work_root(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    match std::fs::create_dir_all(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(root)?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me {
        return Err(std::io::Error::other(format!(
            "{} is not a directory owned by this user (uid {me}); remove it or choose another \
             work directory",
            root.display()
        )));
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
}

/// Removes a run's directory whatever the job did to it: directories it made unwritable
/// (`chmod 555`) are made writable first, walking without following symlinks, so a job
/// cannot make its tree outlive the run (and fill the disk run after run).
pub(crate) fn remove_run_dir(dir: &Path) -> std::io::Result<()> {
    // A loop, not recursion: a job can nest directories deeper than any stack.
    fn unlock(top: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let mut pending = vec![top.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(entry.path());
                }
            }
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            unlock(dir);
            std::fs::remove_dir_all(dir)
        }
    }
}
