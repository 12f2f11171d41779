//! Receiving a job's source archive from the site and unpacking it.

use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tinyci_assets::{HashingSink, SinkError};
use tinyci_schema::byte_sink;

/// Largest source archive a runner accepts.
pub const MAX_SOURCE_BYTES: u64 = 512 * 1024 * 1024;

/// A `ByteSink` writing the archive beside `dest`, hashed as it arrives, and moving it to
/// `dest` once the site's SHA-256 matches. Dropped unfinished, it leaves nothing behind.
pub(crate) struct SourceSink {
    state: RefCell<Option<HashingSink>>,
    dest: PathBuf,
}

impl SourceSink {
    pub(crate) fn create(dest: &Path) -> Result<Self, SinkError> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        Ok(Self {
            state: RefCell::new(Some(HashingSink::create_in(dir, MAX_SOURCE_BYTES)?)),
            dest: dest.to_owned(),
        })
    }
}

fn refused(e: &SinkError) -> capnp::Error {
    match e {
        SinkError::TooLarge { limit } => capnp::Error::failed(format!(
            "source archive exceeds this runner's limit of {limit} bytes"
        )),
        SinkError::Digest => {
            capnp::Error::failed("source archive corrupted in transit (SHA-256 mismatch)".into())
        }
        SinkError::Io { path, source } => {
            capnp::Error::failed(format!("cannot write {}: {source}", path.display()))
        }
    }
}

impl byte_sink::Server for SourceSink {
    async fn write(self: Rc<Self>, params: byte_sink::WriteParams) -> Result<(), capnp::Error> {
        let chunk = params.get()?.get_chunk()?;
        let mut state = self.state.borrow_mut();
        let sink = state
            .as_mut()
            .ok_or_else(|| capnp::Error::failed("the source was already received".into()))?;
        sink.put(chunk).map_err(|e| {
            let error = refused(&e);
            *state = None;
            error
        })
    }

    async fn finish(
        self: Rc<Self>,
        params: byte_sink::FinishParams,
        mut results: byte_sink::FinishResults,
    ) -> Result<(), capnp::Error> {
        let expected = params.get()?.get_sha256()?.to_vec();
        let sink = self
            .state
            .borrow_mut()
            .take()
            .ok_or_else(|| capnp::Error::failed("the source was already received".into()))?;
        let dest = self.dest.clone();
        let stored = tokio::task::spawn_blocking(move || sink.finish(Some(&expected), |_| dest))
            .await
            .map_err(|e| capnp::Error::failed(format!("cannot store the source: {e}")))?
            .map_err(|e| refused(&e))?;
        results.get().set_size(stored.size);
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
