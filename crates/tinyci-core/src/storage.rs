//! What each repository's runs hold in storage (log and artifact bytes), against a
//! per-repository quota: the one place a new submission or artifact of a repository over its
//! quota is refused, whichever way it arrives (`tinyci submit`, GitHub, an upload).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Bytes each repository's runs store now, and the quota they are held to. Single-threaded,
/// like the site. Exact after each retention sweep (which counts everything, then takes off
/// what it removes); between sweeps it grows by what is written and never shrinks, so it errs
/// towards refusing.
#[derive(Debug, Default)]
pub struct RepoStorage {
    quota: Cell<Option<u64>>,
    used: RefCell<HashMap<String, u64>>,
}

/// A repository is over its storage quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "repository {repo} stores {used} bytes of logs and artifacts, over its quota of {quota} \
     bytes ([retention] max_repo_bytes): new runs and artifacts are refused until retention \
     or an operator frees space"
)]
pub struct OverQuota {
    /// The repository.
    pub repo: String,
    /// What it stores now.
    pub used: u64,
    /// Its quota.
    pub quota: u64,
}

impl RepoStorage {
    /// Holds every repository to `quota` bytes from now on (`None`: no quota).
    pub fn set_quota(&self, quota: Option<u64>) {
        self.quota.set(quota);
    }

    /// Counts `bytes` more stored for `repo`.
    pub fn add(&self, repo: &str, bytes: u64) {
        let mut used = self.used.borrow_mut();
        match used.get_mut(repo) {
            Some(n) => *n = n.saturating_add(bytes),
            None => {
                used.insert(repo.to_owned(), bytes);
            }
        }
    }

    /// Counts `bytes` fewer stored for `repo`: what a sweep removed.
    pub fn remove(&self, repo: &str, bytes: u64) {
        if let Some(n) = self.used.borrow_mut().get_mut(repo) {
            *n = n.saturating_sub(bytes);
        }
    }

    /// Replaces every count with `used`, as counted by a sweep.
    pub fn replace(&self, used: HashMap<String, u64>) {
        *self.used.borrow_mut() = used;
    }

    /// Bytes `repo` stores now, as far as this knows.
    pub fn used(&self, repo: &str) -> u64 {
        self.used.borrow().get(repo).copied().unwrap_or(0)
    }

    /// Whether `repo` may store more: refused once it has reached its quota.
    pub fn admit(&self, repo: &str) -> Result<(), OverQuota> {
        let Some(quota) = self.quota.get() else {
            return Ok(());
        };
        let used = self.used(repo);
        if used >= quota {
            return Err(OverQuota {
                repo: repo.to_owned(),
                used,
                quota,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_is_refused_at_its_quota_and_others_are_not() {
        let storage = RepoStorage::default();
        storage.add("org/a", 100);
        assert!(storage.admit("org/a").is_ok(), "no quota, no refusal");
        storage.set_quota(Some(100));
        let refusal = storage.admit("org/a").unwrap_err();
        assert_eq!(refusal.used, 100);
        assert!(refusal.to_string().contains("max_repo_bytes"), "{refusal}");
        assert!(storage.admit("org/b").is_ok());
        // A sweep that found less frees it.
        storage.replace(HashMap::from([("org/a".to_owned(), 140)]));
        assert!(storage.admit("org/a").is_err());
        // ...and what it then removes frees it.
        storage.remove("org/a", 100);
        assert_eq!(storage.used("org/a"), 40);
        assert!(storage.admit("org/a").is_ok());
        storage.remove("org/a", 100);
        assert_eq!(storage.used("org/a"), 0, "counts never go below nothing");
    }
}
