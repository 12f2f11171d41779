//! GitHub for a site: webhook intake and processing (deliveries become submissions),
//! commit statuses as runs change, enabling and disabling repositories (their webhooks),
//! sealed secrets at rest (users' GitHub tokens, webhook secrets), and the OAuth state
//! machines of logging in (browser sessions, `tinyci login`) with their HTTP endpoints
//! ([`Endpoints`]: the webhook and `/oauth/*`, answered for the site's listener). GitHub's
//! REST API is reached only through `tinyci-repos`.
//!
//! [`GitHubService`] holds exactly the handles this work uses (store, committer, queue,
//! sources, users, clock); what only the site can do for a login (mint a grant) it asks
//! through [`LoginGrants`]. Must not depend on capnp, the grant machinery or `tinyci-site`,
//! and serves no listener of its own: `tinyci-web` does, and the site's capabilities call the
//! repository methods.

mod endpoints;
mod intake;
pub mod oauth;
mod repos;
mod statuses;

use std::cell::RefCell;
use std::rc::Rc;

use tinyci_assets::SourceStore;
use tinyci_core::Clock;
use tinyci_queue::Queue;
use tinyci_repos::{ApiError, GitHub, GitHubConfig, OAuthApp};
use tinyci_store::records::RepoRecord;
use tinyci_store::tables::REPOS;
use tinyci_store::{GroupCommitter, Store, StoreError};
use tinyci_users::Users;
use tokio::sync::Notify;

pub use endpoints::{Endpoints, LoginGrants, MintError};
pub use intake::{Intake, IntakeError};
pub use repos::list as known_repos;
pub use tinyci_config::{GitHubAllow, GitHubSettings, NotAnAllowEntry};
/// The secrets box, which `tinyci-pki` owns; re-exported for the site's GitHub wiring.
pub use tinyci_pki::{SecretsError, SecretsKey};

/// The status context used for problems that belong to no run (an unreadable `tinyci.yml`).
pub const SITE_CONTEXT: &str = "tinyci";

/// Why GitHub work failed.
#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    /// GitHub answered with an error or could not be reached: worth retrying.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something about the repository or request is wrong and retrying will not help.
    #[error("{0}")]
    Refused(String),
}

impl GitHubError {
    fn is_transient(&self) -> bool {
        match self {
            GitHubError::Api(e) => e.status().is_none_or(|s| s >= 500 || s == 429),
            GitHubError::Store(_) | GitHubError::Refused(_) => false,
        }
    }
}

/// What the GitHub side works with, handed over by the site.
#[allow(missing_debug_implementations, reason = "holds the clock, a closure")]
pub struct Handles {
    /// The store, for reads.
    pub store: Store,
    /// The group committer, for durable writes.
    pub committer: GroupCommitter,
    /// Where deliveries become submissions.
    pub queue: Rc<Queue>,
    /// Where imported source archives go.
    pub sources: SourceStore,
    /// Site users (their sealed GitHub tokens).
    pub users: Users,
    /// The site's clock.
    pub clock: Clock,
}

/// The secrets the site read from its files for `[github]`.
#[derive(Default)]
pub struct Credentials {
    /// `[github] token_file`: the token the site acts with for repositories enabled without
    /// a user.
    pub site_token: Option<String>,
    /// `[github] client_secret_file`, with `client_id`: the OAuth app.
    pub client_secret: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "site_token",
                &self.site_token.as_ref().map(|_| "(redacted)"),
            )
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "(redacted)"),
            )
            .finish()
    }
}

/// The site's GitHub side: settings, the secrets box, the site's own API client, the inbox,
/// and the handles it works with.
pub struct GitHubService {
    /// `[github]`.
    pub settings: GitHubSettings,
    /// `[http] public_url`.
    pub public_url: Option<String>,
    /// Seals tokens and webhook secrets at rest.
    pub secrets: SecretsKey,
    /// Acting with `[github] token_file`; `None` without one.
    site_client: Option<GitHub>,
    /// The OAuth app, when login is configured.
    pub oauth_app: Option<OAuthApp>,
    /// Wakes the inbox processor.
    inbox: Notify,
    /// Status reporters and other GitHub tasks, aborted at shutdown (they hold the store).
    tasks: RefCell<tokio::task::JoinSet<()>>,
    /// Submissions a status reporter follows now.
    reporting: RefCell<std::collections::BTreeSet<tinyci_core::SubmissionId>>,
    store: Store,
    committer: GroupCommitter,
    queue: Rc<Queue>,
    sources: SourceStore,
    users: Users,
    clock: Clock,
}

impl std::fmt::Debug for GitHubService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubService")
            .field("api_url", &self.settings.api_url)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

fn client(settings: &GitHubSettings, token: Option<String>) -> Result<GitHub, ApiError> {
    GitHub::new(&GitHubConfig {
        api_base: settings.api_url.clone(),
        web_base: settings.web_url.clone(),
        token,
    })
}

/// The seal context of a user's GitHub token: bound to the GitHub account, so a sealed token
/// moved onto another record does not open.
pub fn token_context(github_id: u64) -> String {
    format!("github-token:{github_id}")
}

/// The seal context of a repository's webhook secret.
pub(crate) fn hook_secret_context(repo: &str) -> String {
    format!("webhook-secret:{repo}")
}

impl GitHubService {
    /// The GitHub side of a site with `settings`, the secrets read from its files, and the
    /// handles it works with. Fails only when the API base URL is unusable.
    pub fn new(
        settings: GitHubSettings,
        public_url: Option<String>,
        secrets: SecretsKey,
        credentials: Credentials,
        handles: Handles,
    ) -> Result<Self, ApiError> {
        let site_client = credentials
            .site_token
            .map(|token| client(&settings, Some(token)))
            .transpose()?;
        let oauth_app = match (&settings.client_id, credentials.client_secret) {
            (Some(id), Some(secret)) => Some(OAuthApp {
                client_id: id.clone(),
                client_secret: secret,
            }),
            _ => None,
        };
        let Handles {
            store,
            committer,
            queue,
            sources,
            users,
            clock,
        } = handles;
        Ok(Self {
            settings,
            public_url,
            secrets,
            site_client,
            oauth_app,
            inbox: Notify::new(),
            tasks: RefCell::default(),
            reporting: RefCell::default(),
            store,
            committer,
            queue,
            sources,
            users,
            clock,
        })
    }

    /// Now, in milliseconds since the Unix epoch, by the site's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// A client acting with `token` (or anonymously).
    pub fn client_with(&self, token: Option<String>) -> Result<GitHub, ApiError> {
        client(&self.settings, token)
    }

    /// The GitHub account named `login` now, as `(login, id)`; `None` if GitHub names none.
    /// Asked with the site's token when it has one (anonymous requests are rate-limited hard).
    pub async fn account_named(&self, login: &str) -> Result<Option<(String, u64)>, ApiError> {
        let client = match &self.site_client {
            Some(client) => client.clone(),
            None => self.client_with(None)?,
        };
        Ok(client.user_named(login).await?.map(|u| (u.login, u.id)))
    }

    /// Spawns a GitHub task the site aborts at shutdown.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + 'static) {
        let mut tasks = self.tasks.borrow_mut();
        // Reap finished ones so the set does not grow for the site's lifetime.
        while tasks.try_join_next().is_some() {}
        tasks.spawn_local(task);
    }

    /// Aborts every GitHub task and waits until they are gone (they hold the store open).
    pub async fn stop_tasks(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }

    /// Checks a webhook delivery and, if it is new and one tinyci acts on, stores it durably
    /// in the inbox for [`GitHubService::run_processor`].
    pub async fn intake(
        self: &Rc<Self>,
        event: Option<&str>,
        delivery: Option<&str>,
        signature: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Intake, IntakeError> {
        intake::intake(self, event, delivery, signature, body).await
    }

    /// Acts on inbox deliveries in arrival order until aborted; first resumes status
    /// reporting a previous process had not finished.
    pub async fn run_processor(self: Rc<Self>) {
        intake::run_processor(self).await;
    }

    /// Forgets delivery ids too old for GitHub to redeliver (the retention sweep calls this
    /// with the site clock's now), so the table does not grow for the site's lifetime.
    pub async fn forget_old_deliveries(&self, now_ms: u64) -> Result<usize, StoreError> {
        intake::forget_old_deliveries(self, now_ms).await
    }

    /// Creates the webhook and marks the repository enabled (one already enabled is returned
    /// as is). `github_user` acts for it on GitHub (else the site's token); `by` is recorded.
    pub async fn enable_repo(
        &self,
        name: &str,
        github_user: Option<String>,
        public: bool,
        by: &str,
    ) -> Result<RepoRecord, GitHubError> {
        repos::enable(self, name, github_user, public, by).await
    }

    /// Deletes the webhook (one GitHub already lost counts as deleted) and marks the
    /// repository disabled, recorded as done by `by`.
    pub async fn disable_repo(&self, name: &str, by: &str) -> Result<RepoRecord, GitHubError> {
        repos::disable(self, name, by).await
    }

    /// A site user's GitHub token, unsealed.
    pub fn user_token(&self, user: &str) -> Result<String, GitHubError> {
        let name: tinyci_users::UserName = user
            .parse()
            .map_err(|e: tinyci_users::UsersError| GitHubError::Refused(e.to_string()))?;
        let found = self
            .users
            .get(&name)
            .map_err(|e| GitHubError::Refused(e.to_string()))?
            .ok_or_else(|| GitHubError::Refused(format!("no site user {user}")))?;
        let (_, id) = found.github.clone().ok_or_else(|| {
            GitHubError::Refused(format!(
                "site user {user} has not logged in with GitHub, so there is no GitHub token to act with"
            ))
        })?;
        let sealed = self
            .users
            .github_token_sealed(&name)
            .map_err(|e| GitHubError::Refused(e.to_string()))?
            .ok_or_else(|| GitHubError::Refused(format!("site user {user} has no GitHub token")))?;
        let token = self
            .secrets
            .open(&sealed, &token_context(id))
            .map_err(|e| GitHubError::Refused(e.to_string()))?;
        String::from_utf8(token)
            .map_err(|_| GitHubError::Refused(format!("the GitHub token of {user} is not text")))
    }
}

/// The client to act on `repo` with: its enabling user's GitHub token, else the site's.
pub(crate) fn client_for(github: &GitHubService, repo: &RepoRecord) -> Result<GitHub, GitHubError> {
    match &repo.github_user {
        None => github.site_client.clone().ok_or_else(|| {
            GitHubError::Refused(format!(
                "{} has no GitHub token to act with: set [github] token_file, or enable it as a \
                 user who logged in with GitHub",
                repo.name
            ))
        }),
        Some(user) => {
            let token = github.user_token(user)?;
            Ok(github.client_with(Some(token))?)
        }
    }
}

/// The repository record, if the site knows it.
pub(crate) fn repo_record(
    github: &GitHubService,
    repo: &str,
) -> Result<Option<RepoRecord>, StoreError> {
    github.store.read(|txn| txn.get(REPOS, repo))
}
