//! Why a session, or the site user behind it, may not do something: one typed answer for
//! grant checks ([`crate::session`]) and GitHub-backed access ([`crate::access`]), kept with
//! its cause until it becomes a refusal on the wire or a page.

use std::sync::Arc;

use tinyci_users::{Capability, UserName};

/// A refusal. Its message says what was denied and why; its source, when it has one, is the
/// failure that made the site unable to decide (and so refuse). Cheap to clone: a decision
/// made once is handed to every ticket a submitter opens.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Denied {
    /// The grant does not allow the right on the resource (the grant layer explains).
    #[error(transparent)]
    Grant(Arc<tinyci_grant::GrantError>),
    /// The user's record could not be read.
    #[error("cannot read site user {user}")]
    UserRecord {
        user: UserName,
        #[source]
        source: Arc<tinyci_users::UsersError>,
    },
    /// The certificate names a user the site does not have.
    #[error("{0} is not a site user (any more)")]
    NotAUser(UserName),
    /// The user no longer holds the capability.
    #[error("user {user} does not hold the {capability} capability")]
    LacksCapability {
        user: UserName,
        capability: Capability,
    },
    /// A site user asked about every repository at once.
    #[error(
        "a site user's access is per repository, as GitHub grants it: name one, not every \
         repository (*)"
    )]
    EveryRepository,
    /// No GitHub account to ask about the repository.
    #[error("user {user} has no linked GitHub account to ask about {repo}")]
    NoGitHubAccount { user: UserName, repo: String },
    /// GitHub says no.
    #[error("GitHub does not let {login} (user {user}) {verb} {repo}")]
    GitHubRefuses {
        login: String,
        user: UserName,
        verb: &'static str,
        repo: String,
    },
    /// GitHub could not be asked.
    #[error("cannot ask GitHub about {repo} for user {user}")]
    GitHubUnanswered {
        user: UserName,
        repo: String,
        #[source]
        source: Arc<tinyci_github::GitHubError>,
    },
}

impl Denied {
    /// The refusal as the caller of a capability sees it (message and causes).
    pub(crate) fn to_rpc(&self) -> capnp::Error {
        crate::rpc::failed(self)
    }
}
