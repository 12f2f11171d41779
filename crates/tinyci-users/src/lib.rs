//! Site users: who they are ([`UserName`], valid as a certificate member name), tinyCI's five
//! user capabilities and tinyci's `secrets` ([`Capability`]), the GitHub account each may be linked to, and how
//! capabilities map onto grants ([`grant_spec`]). [`Users`] reads users from the store's
//! `users` and `users_by_github` tables and changes them through the group committer, each
//! change checked and written in one transaction.
//!
//! A user's capabilities become the rights of the grant the site mints for `user:<name>`:
//!
//! | capability    | rights                     | scope                  |
//! |---------------|----------------------------|------------------------|
//! | `submit`      | `queue:submit`             | every repository (`*`) |
//! | `logs`        | `logs:read`, `assets:read` | every repository (`*`) |
//! | `cancel`      | `runs:cancel`              | every repository (`*`) |
//! | `modify:ci`   | `repos:modify`             | the site               |
//! | `modify:user` | `users:modify`             | the site               |
//! | `secrets`     | `secrets:manage`           | every repository (`*`) |
//!
//! A user with no capability gets no grant ([`UsersError::NoCapabilities`]): a grant needs at
//! least one right.
//!
//! This crate owns no storage engine or token format: it goes through `tinyci-store` and
//! `tinyci-grant`. It must not depend on capnp, octocrab or `tinyci-site`, and its API carries
//! no tokio types (its writes are plain `async fn`s). GitHub tokens arrive already sealed; this
//! crate stores and returns the sealed bytes and never shows them in `Debug` output.

#![forbid(unsafe_code)]

mod capability;
mod name;
mod users;

pub use capability::{Capability, grant_rights, grant_spec};
pub use name::UserName;
pub use users::{LinkOutcome, User, Users};

use tinyci_store::StoreError;

/// Everything that can go wrong with users. Messages name the user or capability involved.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// A user by that name already exists.
    #[error("user {name} already exists")]
    Exists {
        /// The name asked for.
        name: String,
    },
    /// No user by that name.
    #[error("no user named {name}")]
    NoSuchUser {
        /// The name asked for.
        name: String,
    },
    /// A GitHub login maps onto the name of a user linked to another GitHub account.
    #[error(
        "cannot link GitHub account {login} (id {github_id}) to user {name}: that user is \
         linked to another GitHub account (id {linked_id}); rename one of them or link by hand"
    )]
    NameTaken {
        /// The site user's name the login maps onto.
        name: String,
        /// The GitHub login asking.
        login: String,
        /// Its GitHub id.
        github_id: u64,
        /// The GitHub id the user is linked to.
        linked_id: u64,
    },
    /// The GitHub account to pin to a new user is already linked to another one.
    #[error(
        "cannot add user {name} for GitHub account {login} (id {github_id}): that account \
         is already user {user}'s; one account signs in as one user"
    )]
    AccountTaken {
        /// The user being added.
        name: String,
        /// The account's login.
        login: String,
        /// Its GitHub id.
        github_id: u64,
        /// The user it is linked to.
        user: String,
    },
    /// A GitHub login maps onto the name of a user an admin added without a GitHub account.
    #[error(
        "cannot link GitHub account {login} (id {github_id}) to user {name}: that user was \
         added without a GitHub account, so no GitHub login may claim it; to let one, an \
         admin removes the user and adds it again while the site has a [github] section, which \
         pins the account GitHub names {name} at that moment"
    )]
    NotPinned {
        /// The site user's name the login maps onto.
        name: String,
        /// The GitHub login asking.
        login: String,
        /// Its GitHub id.
        github_id: u64,
    },
    /// A user name (or a GitHub login turned into one) does not follow the rule.
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Not one of tinyCI's capabilities.
    #[error(
        "unknown capability {name:?}: expected one of submit, cancel, modify:ci, modify:user, logs, secrets"
    )]
    UnknownCapability {
        /// The offending name.
        name: String,
    },
    /// The user has no capability, so a grant for them would carry no right.
    #[error("user {name} has no capabilities, so there is nothing to grant")]
    NoCapabilities {
        /// The user.
        name: String,
    },
    /// A stored user (or the GitHub index) does not make sense.
    #[error("user {name} is corrupt in the store: {reason}")]
    Corrupt {
        /// The user (as stored).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The store failed; nothing was changed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}
