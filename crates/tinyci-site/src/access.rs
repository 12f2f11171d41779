//! One authority for what a site user may do with a repository's runs, asked by the run pages
//! and by users' RPC sessions alike: the user must hold the capability now (read afresh from
//! the store, so a removed capability is refused at once), and GitHub must let their account
//! read the repository (to see its runs, logs and artifacts) or push to it (to submit or
//! cancel, or administer it to enable or disable it). GitHub is asked with the user's own
//! token; the access it grants is believed for [`ACCESS_TTL`]; a refusal or an error is never
//! cached.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tinyci_repos::RepoPermissions;
use tinyci_users::{Capability, UserName};

use crate::denied::Denied;
use tinyci_github::GitHubError;

/// How long GitHub's answer about a user and a repository is believed.
pub(crate) const ACCESS_TTL: Duration = Duration::from_secs(300);
/// Most cached answers; the cache is emptied past it.
const MAX_ENTRIES: usize = 10_000;

/// What the user wants to do with the repository's runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// See runs, logs and artifacts: GitHub's `pull`.
    Read,
    /// Submit, cancel, retry: GitHub's `push`.
    Write,
    /// Enable or disable the repository on the site (its webhook): GitHub's `admin`.
    Admin,
}

/// A site user acting through a capability, with the one authority that answers for them.
#[derive(Clone, Debug)]
pub(crate) struct ActingUser {
    pub(crate) name: UserName,
    pub(crate) access: Rc<RepoAccess>,
}

impl ActingUser {
    /// Whether they may exercise `capability` with `want` on `repo`'s runs now.
    pub(crate) async fn may(
        &self,
        capability: Capability,
        repo: &str,
        want: Want,
    ) -> Result<(), Denied> {
        self.access.check(&self.name, capability, repo, want).await
    }
}

/// What site users may do with repositories: the users' records, GitHub (when configured)
/// and its answers, cached.
#[derive(Debug)]
pub(crate) struct RepoAccess {
    users: tinyci_users::Users,
    github: Option<Rc<tinyci_github::GitHubService>>,
    clock: crate::SiteClock,
    /// (user, repo) → (what GitHub allows, when asked).
    cache: RefCell<HashMap<(String, String), (RepoPermissions, SystemTime)>>,
}

impl RepoAccess {
    pub(crate) fn new(
        users: tinyci_users::Users,
        github: Option<Rc<tinyci_github::GitHubService>>,
        clock: crate::SiteClock,
    ) -> Self {
        Self {
            users,
            github,
            clock,
            cache: RefCell::default(),
        }
    }

    /// Whether `user` may exercise `capability` with `want` on `repo`'s runs; why not, for
    /// people, if not.
    pub(crate) async fn check(
        &self,
        user: &UserName,
        capability: Capability,
        repo: &str,
        want: Want,
    ) -> Result<(), Denied> {
        let stored = self
            .users
            .get(user)
            .map_err(|source| Denied::UserRecord {
                user: user.clone(),
                source: Arc::new(source),
            })?
            .ok_or_else(|| Denied::NotAUser(user.clone()))?;
        if !stored.has(capability) {
            return Err(Denied::LacksCapability {
                user: user.clone(),
                capability,
            });
        }
        if repo == "*" {
            return Err(Denied::EveryRepository);
        }
        let Some((login, _)) = stored.github.as_ref() else {
            return Err(Denied::NoGitHubAccount {
                user: user.clone(),
                repo: repo.to_owned(),
            });
        };
        let permissions =
            self.permissions(user, repo)
                .await
                .map_err(|source| Denied::GitHubUnanswered {
                    user: user.clone(),
                    repo: repo.to_owned(),
                    source: Arc::new(source),
                })?;
        let (allowed, verb) = match want {
            Want::Read => (permissions.pull, "read"),
            Want::Write => (permissions.push, "push to"),
            Want::Admin => (permissions.admin, "administer"),
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied::GitHubRefuses {
                login: login.clone(),
                user: user.clone(),
                verb,
                repo: repo.to_owned(),
            })
        }
    }

    /// What GitHub lets `user` do with `repo`, cached.
    async fn permissions(
        &self,
        user: &UserName,
        repo: &str,
    ) -> Result<RepoPermissions, GitHubError> {
        let key = (user.to_string(), repo.to_owned());
        let now = tinyci_core::system_time((self.clock.0)());
        if let Some(&(answer, asked)) = self.cache.borrow().get(&key)
            && now.duration_since(asked).unwrap_or_default() < ACCESS_TTL
        {
            return Ok(answer);
        }
        let Ok(name) = repo.parse::<tinyci_repos::RepoName>() else {
            // Not a GitHub repository name: GitHub cannot vouch for anyone.
            return Ok(RepoPermissions::default());
        };
        let github = self.github.as_ref().ok_or_else(|| {
            GitHubError::Refused("this site has no [github] section in its site.toml".into())
        })?;
        let token = github.user_token(user.as_str())?;
        let answer = github.client_with(Some(token))?.permissions(&name).await?;
        // Only a grant of access is believed for a while; a refusal is asked again next time,
        // so access GitHub gives arrives at once (and one it takes away within ACCESS_TTL).
        if answer.pull {
            let mut cache = self.cache.borrow_mut();
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(key, (answer, now));
        }
        Ok(answer)
    }

    /// Forgets what GitHub said about `user` (their capabilities changed, or they logged in
    /// again).
    pub(crate) fn forget(&self, user: &UserName) {
        self.cache
            .borrow_mut()
            .retain(|(cached, _), _| cached != user.as_str());
    }
}
