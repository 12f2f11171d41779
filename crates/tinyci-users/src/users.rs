//! Users in the store: reading them, and changing them through the group committer.

use std::collections::BTreeSet;

use tinyci_store::records::{GitHubLink, UserRecord};
use tinyci_store::tables::{USERS, USERS_BY_GITHUB};
use tinyci_store::{GroupCommitter, Store, WriteTxn};

use crate::{Capability, UserName, UsersError};

/// Who creates a user on their first GitHub login (`UserRecord::created_by`).
const CREATED_BY_GITHUB: &str = "github";

/// A site user, as this crate sees the stored record. The sealed GitHub token is not here
/// (see [`Users::github_token_sealed`]), so printing a `User` never shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user's name; their certificate names `tinyci://<site>/user/<name>`.
    pub name: UserName,
    /// What they may do.
    pub capabilities: BTreeSet<Capability>,
    /// The linked GitHub account as (login, GitHub's numeric id), if any. The login is as of
    /// the last link or refresh; the id is what identifies the account.
    pub github: Option<(String, u64)>,
    /// When the user was created (Unix ms).
    pub created_at: u64,
    /// Who created it (a peer identity, or `github` for a first GitHub login).
    pub created_by: String,
}

impl User {
    /// Whether the user has `cap`.
    pub fn has(&self, cap: Capability) -> bool {
        self.capabilities.contains(&cap)
    }

    /// The typed view of a stored record; refuses names and capabilities it does not know.
    fn from_record(record: &UserRecord) -> Result<Self, UsersError> {
        let corrupt = |reason: String| UsersError::Corrupt {
            name: record.name.clone(),
            reason,
        };
        let name = UserName::new(&record.name)
            .map_err(|e| corrupt(format!("its stored name is not valid ({e})")))?;
        let capabilities = record
            .capabilities
            .iter()
            .map(|c| {
                c.parse::<Capability>()
                    .map_err(|_| corrupt(format!("unknown capability {c:?}")))
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        Ok(Self {
            name,
            capabilities,
            github: record.github.as_ref().map(|g| (g.login.clone(), g.id)),
            created_at: record.created_at,
            created_by: record.created_by.clone(),
        })
    }
}

/// How [`Users::link_github`] matched a GitHub account to a site user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkOutcome {
    /// No user had this account or its login's name: one was created with the default
    /// capabilities.
    Created,
    /// An admin added the user with this account pinned ([`Users::add`]); this was its first
    /// login.
    Linked,
    /// The account was already linked; its login and sealed token were updated.
    Refreshed,
}

/// The site's users, over the store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Users {
    /// Reads: snapshots, no writer needed.
    store: Store,
    /// Every change goes through the group committer, so it is durable before it is reported.
    committer: GroupCommitter,
}

/// Capability names as stored: spellings, sorted, no duplicates.
fn stored_capabilities(caps: &BTreeSet<Capability>) -> Vec<String> {
    let names: BTreeSet<&str> = caps.iter().map(|c| c.as_str()).collect();
    names.into_iter().map(str::to_owned).collect()
}

fn put_user(txn: &mut WriteTxn<'_>, record: &UserRecord) -> Result<(), tinyci_store::StoreError> {
    txn.put(USERS, record.name.as_str(), record)
}

impl Users {
    /// Users in `store`, changed through `committer` (the store's one group committer).
    pub fn new(store: Store, committer: GroupCommitter) -> Self {
        Self { store, committer }
    }

    /// The user named `name`, if any.
    pub fn get(&self, name: &UserName) -> Result<Option<User>, UsersError> {
        let record = self.store.read(|txn| txn.get(USERS, name.as_str()))?;
        record.as_ref().map(User::from_record).transpose()
    }

    /// Every user, in name order.
    pub fn list(&self) -> Result<Vec<User>, UsersError> {
        let records: Vec<UserRecord> = self.store.read(|txn| {
            txn.iter_range(USERS, &..)?
                .map(|entry| entry.map(|(_, record)| record))
                .collect()
        })?;
        records.iter().map(User::from_record).collect()
    }

    /// The sealed GitHub token of `name`'s linked account: `None` if the user has no linked
    /// account, [`UsersError::NoSuchUser`] if there is no such user.
    pub fn github_token_sealed(&self, name: &UserName) -> Result<Option<Vec<u8>>, UsersError> {
        let record = self.store.read(|txn| txn.get(USERS, name.as_str()))?;
        match record {
            None => Err(UsersError::NoSuchUser {
                name: name.to_string(),
            }),
            // Pinned when added, never logged in: no token yet.
            Some(record) => Ok(record
                .github
                .map(|g| g.token_sealed)
                .filter(|t| !t.is_empty())),
        }
    }

    /// Creates the user `name` with `caps`, recording `created_by` (a peer identity) and
    /// `now_ms`, and pinning the GitHub account `github` (`(login, id)`) to it: only that
    /// account's login links to it later ([`Users::link_github`]), whatever login it has
    /// then. Without one, no GitHub login ever links to the user. Refuses a name already taken
    /// ([`UsersError::Exists`]) and an account already linked to a user
    /// ([`UsersError::AccountTaken`]). Returns once durable.
    pub async fn add(
        &self,
        name: &UserName,
        caps: BTreeSet<Capability>,
        github: Option<(String, u64)>,
        created_by: &str,
        now_ms: u64,
    ) -> Result<User, UsersError> {
        let record = UserRecord {
            name: name.to_string(),
            capabilities: stored_capabilities(&caps),
            // Pinned, not logged in: no token until the account signs in.
            github: github.map(|(login, id)| GitHubLink {
                login,
                id,
                token_sealed: Vec::new(),
                linked_at: now_ms,
            }),
            created_at: now_ms,
            created_by: created_by.to_owned(),
        };
        let written = self
            .committer
            .write(move |txn| {
                if txn.get(USERS, record.name.as_str())?.is_some() {
                    return Ok(Err(UsersError::Exists { name: record.name }));
                }
                if let Some(link) = &record.github {
                    if let Some(other) = txn.get(USERS_BY_GITHUB, &link.id)? {
                        return Ok(Err(UsersError::AccountTaken {
                            name: record.name.clone(),
                            login: link.login.clone(),
                            github_id: link.id,
                            user: other.to_owned(),
                        }));
                    }
                    txn.put(USERS_BY_GITHUB, &link.id, record.name.as_str())?;
                }
                put_user(txn, &record)?;
                Ok(Ok(record))
            })
            .await??;
        User::from_record(&written)
    }

    /// Grants (`granted`) or withdraws `cap` for `name`. Idempotent: asking for what already
    /// holds writes nothing. Returns the user as it now is, once durable.
    pub async fn set_capability(
        &self,
        name: &UserName,
        cap: Capability,
        granted: bool,
    ) -> Result<User, UsersError> {
        let name = name.clone();
        self.committer
            .write(move |txn| {
                let Some(mut record) = txn.get(USERS, name.as_str())? else {
                    return Ok(Err(UsersError::NoSuchUser {
                        name: name.to_string(),
                    }));
                };
                let mut user = match User::from_record(&record) {
                    Ok(user) => user,
                    Err(e) => return Ok(Err(e)),
                };
                let changed = if granted {
                    user.capabilities.insert(cap)
                } else {
                    user.capabilities.remove(&cap)
                };
                if changed {
                    record.capabilities = stored_capabilities(&user.capabilities);
                    put_user(txn, &record)?;
                }
                Ok(Ok(user))
            })
            .await?
    }

    /// Links the GitHub account `github_id` (currently `login`) to a site user and stores its
    /// sealed token, checking and writing in one transaction:
    ///
    /// 1. the account is already linked to a user: update that user's login and token
    ///    ([`LinkOutcome::Refreshed`]; the user keeps its name even if the login changed);
    /// 2. else a user named [`UserName::from_github_login`] exists: if an admin added it
    ///    without a GitHub account, refuse ([`UsersError::NotPinned`]): a login is a name
    ///    anyone may hold, and the account that holds it now need not be the one the admin
    ///    meant; if it is linked to another account, refuse ([`UsersError::NameTaken`]);
    /// 3. else create that user with `default_caps`, created by `github`
    ///    ([`LinkOutcome::Created`]).
    pub async fn link_github(
        &self,
        login: &str,
        github_id: u64,
        token_sealed: Vec<u8>,
        default_caps: &BTreeSet<Capability>,
        now_ms: u64,
    ) -> Result<(User, LinkOutcome), UsersError> {
        let link = GitHubLink {
            login: login.to_owned(),
            id: github_id,
            token_sealed,
            linked_at: now_ms,
        };
        let default_caps = stored_capabilities(default_caps);
        let (record, outcome) = self
            .committer
            .write(move |txn| link_in(txn, link, default_caps, now_ms))
            .await??;
        Ok((User::from_record(&record)?, outcome))
    }
}

/// The transaction of [`Users::link_github`]. Store failures abort it (`Err`); refusals are
/// `Ok(Err(_))`, having written nothing.
fn link_in(
    txn: &mut WriteTxn<'_>,
    link: GitHubLink,
    default_caps: Vec<String>,
    now_ms: u64,
) -> Result<Result<(UserRecord, LinkOutcome), UsersError>, tinyci_store::StoreError> {
    let github_id = link.id;
    let linked_name = txn.get(USERS_BY_GITHUB, &github_id)?.map(str::to_owned);
    if let Some(name) = linked_name {
        let Some(mut record) = txn.get(USERS, name.as_str())? else {
            return Ok(Err(UsersError::Corrupt {
                reason: format!(
                    "GitHub account {github_id} is linked to it, but it does not exist"
                ),
                name,
            }));
        };
        let linked_id = record.github.as_ref().map(|g| g.id);
        if linked_id != Some(github_id) {
            let has = linked_id.map_or("no GitHub account".to_owned(), |id| {
                format!("GitHub account {id}")
            });
            return Ok(Err(UsersError::Corrupt {
                name,
                reason: format!("GitHub account {github_id} is linked to it, but it has {has}"),
            }));
        }
        let first = record
            .github
            .as_ref()
            .is_some_and(|g| g.token_sealed.is_empty());
        record.github = Some(link);
        put_user(txn, &record)?;
        let outcome = if first {
            LinkOutcome::Linked
        } else {
            LinkOutcome::Refreshed
        };
        return Ok(Ok((record, outcome)));
    }

    let name = match UserName::from_github_login(&link.login) {
        Ok(name) => name,
        Err(e) => return Ok(Err(e)),
    };
    let existing = txn.get(USERS, name.as_str())?;
    let (record, outcome) = match existing {
        Some(mut record) => {
            let outcome = match &record.github {
                None => {
                    return Ok(Err(UsersError::NotPinned {
                        name: name.to_string(),
                        login: link.login,
                        github_id,
                    }));
                }
                // Linked in the record but missing from the index: restore the index.
                Some(g) if g.id == github_id => LinkOutcome::Refreshed,
                Some(g) => {
                    return Ok(Err(UsersError::NameTaken {
                        name: name.to_string(),
                        login: link.login,
                        github_id,
                        linked_id: g.id,
                    }));
                }
            };
            record.github = Some(link);
            (record, outcome)
        }
        None => (
            UserRecord {
                name: name.to_string(),
                capabilities: default_caps,
                github: Some(link),
                created_at: now_ms,
                created_by: CREATED_BY_GITHUB.to_owned(),
            },
            LinkOutcome::Created,
        ),
    };
    put_user(txn, &record)?;
    txn.put(USERS_BY_GITHUB, &github_id, record.name.as_str())?;
    Ok(Ok((record, outcome)))
}
