//! A runner's claim on its work root, and the sweep that removes what dead runners left there.
//!
//! A runner removes each run's directory when the run ends, but one killed with SIGKILL (by
//! an operator, or the OOM killer) cannot: its checkouts and build output would stay on disk
//! for good. Runners may share a root (two of one name on a host, or an operator's choice), so
//! a starting runner must tell a dead runner's directories from a live one's without trusting
//! process ids, which are reused and mean nothing across PID namespaces. Each runner process
//! therefore holds an exclusive `flock` on an owner file for as long as it lives, and names its
//! run directories after that owner: the kernel drops the lock when the process dies, however
//! it dies, so an owner file anyone can lock belongs to no one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::warn;

use crate::source::{private_work_root, remove_run_dir};

/// Owner files are `.owner-<owner>.lock`; run directories end in `-<owner>-<serial>`.
const OWNER_PREFIX: &str = ".owner-";
const OWNER_SUFFIX: &str = ".lock";

/// This process's claim on a work root: while it lives, no other runner's sweep removes the
/// directories it makes there.
#[derive(Debug)]
pub struct WorkRoot {
    path: PathBuf,
    /// Unique to this process for all time (process id and start time): never a dead
    /// runner's, even one that had this process id.
    owner: String,
    /// Held, never read: the lock is the claim.
    _claim: Flock<File>,
    /// Directories made so far, to name the next.
    made: AtomicU64,
}

/// What claiming a root removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Run directories of runners that are gone.
    pub removed: usize,
    /// Directories that could not be removed (logged, each with its reason).
    pub failed: usize,
}

impl WorkRoot {
    /// Makes `path` this runner's private work root ([`private_work_root`]), claims it, then
    /// removes every run directory a dead runner left in it. `started_ns` is this process's
    /// start time, which makes its owner name unique even where process ids are reused.
    pub fn claim(path: &Path, started_ns: u128) -> io::Result<(Self, Swept)> {
        private_work_root(path)?;
        let owner = format!("{}x{started_ns:x}", std::process::id());
        // Locked under a temporary name, then renamed into place: an owner file that other
        // runners can see is locked from its first moment, so no sweep can take it for a
        // dead runner's.
        let staging = path.join(format!(".staging-{owner}"));
        let file = File::create(&staging)?;
        let claim = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        std::fs::rename(&staging, owner_file(path, &owner))?;
        let root = WorkRoot {
            path: path.to_path_buf(),
            owner,
            _claim: claim,
            made: AtomicU64::new(0),
        };
        let swept = root.sweep()?;
        Ok((root, swept))
    }

    /// The root's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name this claim's run directories carry.
    #[cfg(test)]
    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// Makes a fresh directory for attempt `attempt` of run `label`, named for this owner.
    pub(crate) fn new_run_dir(&self, label: &str, attempt: u32) -> Result<PathBuf, String> {
        // `create_dir`, not `create_dir_all`: an existing directory is not ours to reuse.
        for _ in 0..1000 {
            let serial = self.made.fetch_add(1, Ordering::Relaxed);
            let candidate = self
                .path
                .join(format!("{label}-{attempt}-{}-{serial}", self.owner));
            match std::fs::create_dir(&candidate) {
                Ok(()) => return Ok(candidate),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create {}: {e}", candidate.display())),
            }
        }
        Err(format!(
            "cannot create a work directory for {label} in {}: 1000 names were taken",
            self.path.display()
        ))
    }

    /// Removes the run directories of every owner that holds no claim now, and its owner file.
    /// Each owner is judged after the listing, never from it: a live runner's owner file
    /// exists before its first directory, so an owner with a directory seen and no file now
    /// is gone (as are runners older than owner files, whose directories name a process id).
    fn sweep(&self) -> io::Result<Swept> {
        let mut runs: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(owner) = name
                .strip_prefix(OWNER_PREFIX)
                .and_then(|n| n.strip_suffix(OWNER_SUFFIX))
            {
                runs.entry(owner.to_owned()).or_default();
            } else if entry.file_type()?.is_dir()
                && let Some(owner) = run_dir_owner(name)
            {
                runs.entry(owner.to_owned()).or_default().push(entry.path());
            }
        }
        runs.remove(&self.owner);
        let mut swept = Swept::default();
        for (owner, dirs) in runs {
            let file = owner_file(&self.path, &owner);
            // Held until the owner's directories and file are gone.
            let _gone = match File::open(&file) {
                Ok(opened) => match Flock::lock(opened, FlockArg::LockExclusiveNonblock) {
                    Ok(lock) => Some(lock),
                    Err((_, Errno::EWOULDBLOCK)) => continue,
                    Err((_, errno)) => return Err(errno.into()),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            for dir in dirs {
                match remove_run_dir(&dir) {
                    Ok(()) => swept.removed += 1,
                    Err(e) => {
                        swept.failed += 1;
                        warn!(dir = %dir.display(), error = %e, "cannot remove a dead runner's work directory");
                    }
                }
            }
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(owner, error = %e, "cannot remove a dead runner's owner file"),
            }
        }
        Ok(swept)
    }
}

fn owner_file(root: &Path, owner: &str) -> PathBuf {
    root.join(format!("{OWNER_PREFIX}{owner}{OWNER_SUFFIX}"))
}

/// The owner a run directory's name (`<label>-<attempt>-<owner>-<serial>`) gives, if it is
/// one.
fn run_dir_owner(name: &str) -> Option<&str> {
    let mut parts = name.rsplitn(4, '-');
    let serial = parts.next()?;
    let owner = parts.next()?;
    let attempt = parts.next()?;
    let label = parts.next()?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(serial) && numeric(attempt) && !label.is_empty() && !owner.is_empty()).then_some(owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_name_gives_its_owner() {
        assert_eq!(run_dir_owner("r-2-1-4242x17ab-0"), Some("4242x17ab"));
        // Directories of runners from before owner files: a process id.
        assert_eq!(run_dir_owner("r-12-3-4242-7"), Some("4242"));
        assert_eq!(run_dir_owner("notes"), None);
        assert_eq!(run_dir_owner("a-b-c-d"), None);
    }

    #[test]
    fn a_claim_removes_only_what_dead_runners_left() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("work");
        let (live, swept) = WorkRoot::claim(&root, 1).unwrap();
        assert_eq!(swept, Swept::default());
        let live_run = live.new_run_dir("r-1", 1).unwrap();
        // A runner that died: its owner file is there, unlocked, and its directory has a
        // subdirectory the job made read-only.
        let (dead, _) = WorkRoot::claim(&root, 2).unwrap();
        let dead_run = dead.new_run_dir("r-2", 1).unwrap();
        std::fs::create_dir(dead_run.join("locked")).unwrap();
        std::fs::write(dead_run.join("locked/file"), "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dead_run.join("locked"),
            std::fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        let dead_owner = owner_file(&root, &dead.owner);
        drop(dead);
        // One from before owner files, and something that is no run directory.
        let old = root.join("r-3-1-99999-0");
        std::fs::create_dir(&old).unwrap();
        let stranger = root.join("keep-me");
        std::fs::create_dir(&stranger).unwrap();

        let (again, swept) = WorkRoot::claim(&root, 3).unwrap();
        assert_eq!(
            swept,
            Swept {
                removed: 2,
                failed: 0
            }
        );
        assert!(!dead_run.exists() && !old.exists() && !dead_owner.exists());
        assert!(
            live_run.exists(),
            "a live runner's run directory was removed"
        );
        assert!(stranger.exists());
        drop(again);
        drop(live);
    }
}
