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

/// Owner files are `.owner-<owner>.lock`; run directories are
/// `r-<n>-<attempt>-<owner>-<serial>`.
const OWNER_PREFIX: &str = ".owner-";
const OWNER_SUFFIX: &str = ".lock";
/// Where an owner file is locked before it is renamed into place.
const STAGING_PREFIX: &str = ".staging-";

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
    /// A shared lock on the root directory itself, held for the same reason: cleaners of
    /// temporary directories (systemd-tmpfiles) skip a directory they cannot lock, so a root
    /// under `/tmp` keeps its owner file however long the runner lives.
    _root: Flock<File>,
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
        let root_lock = Flock::lock(File::open(path)?, FlockArg::LockShared)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        let owner = format!("{}x{started_ns:x}", std::process::id());
        // Locked under a temporary name, then renamed into place: an owner file that other
        // runners can see is locked from its first moment, so no sweep can take it for a
        // dead runner's.
        let staging = path.join(format!("{STAGING_PREFIX}{owner}"));
        let file = File::create(&staging)?;
        let claim = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        std::fs::rename(&staging, owner_file(path, &owner))?;
        let root = WorkRoot {
            path: path.to_path_buf(),
            owner,
            _claim: claim,
            _root: root_lock,
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
        let mut staged = Vec::new();
        // An entry that vanishes or cannot be read meanwhile (another runner sweeping) is
        // skipped, never a reason not to start.
        for entry in std::fs::read_dir(&self.path)?.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(owner) = name
                .strip_prefix(OWNER_PREFIX)
                .and_then(|n| n.strip_suffix(OWNER_SUFFIX))
            {
                runs.entry(owner.to_owned()).or_default();
            } else if name.starts_with(STAGING_PREFIX) {
                staged.push(entry.path());
            } else if entry.file_type().is_ok_and(|t| t.is_dir())
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
            let Some(_gone) = owner_gone(&file, &owner) else {
                continue;
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
        // A runner that died between making its owner file and renaming it into place.
        for path in staged {
            if let Ok(Ok(_unlocked)) =
                File::open(&path).map(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock))
            {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(swept)
    }
}

/// Whether `owner`'s runner is gone: `Some` (with its owner file's lock, if there is one) if
/// so, `None` if it lives or cannot be told, which leaves its directories alone.
fn owner_gone(file: &Path, owner: &str) -> Option<Option<Flock<File>>> {
    match File::open(file) {
        Ok(opened) => match Flock::lock(opened, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Some(Some(lock)),
            Err((_, Errno::EWOULDBLOCK)) => None,
            Err((_, errno)) => {
                warn!(owner, error = %errno, "cannot tell whether a runner sharing the work directory lives; leaving its directories");
                None
            }
        },
        // A live runner's owner file exists before its first directory. A runner from before
        // owner files named its directories with its process id: gone if no such process is.
        Err(e) if e.kind() == io::ErrorKind::NotFound => match owner.parse::<i32>() {
            Ok(pid) if pid > 0 => {
                let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None);
                matches!(alive, Err(Errno::ESRCH)).then_some(None)
            }
            _ => Some(None),
        },
        Err(e) => {
            warn!(owner, error = %e, "cannot tell whether a runner sharing the work directory lives; leaving its directories");
            None
        }
    }
}

fn owner_file(root: &Path, owner: &str) -> PathBuf {
    root.join(format!("{OWNER_PREFIX}{owner}{OWNER_SUFFIX}"))
}

/// The owner a run directory's name (`r-<n>-<attempt>-<owner>-<serial>`) gives, if it is
/// exactly that: an owner is `<pid>x<hex start time>`, or a process id alone for runners from
/// before owner files. Nothing else in the root is ever taken for a run's directory.
fn run_dir_owner(name: &str) -> Option<&str> {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = name.strip_prefix("r-")?.split('-');
    let (run, attempt, owner, serial) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let owner_ok = match owner.split_once('x') {
        Some((pid, started)) => {
            numeric(pid) && !started.is_empty() && started.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => numeric(owner),
    };
    (parts.next().is_none() && numeric(run) && numeric(attempt) && numeric(serial) && owner_ok)
        .then_some(owner)
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
        // An operator's directory that merely looks like one is never taken for a run's.
        assert_eq!(run_dir_owner("backup-2024-06-15"), None);
        assert_eq!(run_dir_owner("r-2-1-06-15-extra"), None);
        assert_eq!(run_dir_owner("r-2-1-4242xzz-0"), None);
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
        // One from before owner files whose process is gone, one whose process lives (this
        // test's), and things that are no run directory.
        let old = root.join(format!("r-3-1-{}-0", i32::MAX));
        std::fs::create_dir(&old).unwrap();
        let old_live = root.join(format!("r-4-1-{}-0", std::process::id()));
        std::fs::create_dir(&old_live).unwrap();
        let lookalike = root.join("backup-2024-06-15");
        std::fs::create_dir(&lookalike).unwrap();
        let staged = root.join(".staging-1x5");
        std::fs::write(&staged, "").unwrap();
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
        assert!(stranger.exists() && lookalike.exists());
        assert!(
            old_live.exists(),
            "a live old runner's run directory was removed"
        );
        assert!(!staged.exists(), "a dead runner's staging file was left");
        drop(again);
        drop(live);
    }
}
