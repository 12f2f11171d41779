//! GitHub in the site: webhook deliveries become submissions, and runs report back as commit
//! statuses (`statuses.rs`). Repositories are enabled in `repos.rs`, users log in through
//! `oauth.rs`; the HTTP side is `http.rs`. GitHub's REST API is only reached through
//! `tinyci-repos`.
//!
//! A delivery is handled in two steps so that none is lost and none is acted on twice:
//!
//! 1. **Intake** (the HTTP request): check the signature with the repository's secret (before
//!    anything else is believed), then in one transaction record the delivery id and put the
//!    body into the inbox. Only then does GitHub get its 202; a repeated delivery id gets 200
//!    and changes nothing.
//! 2. **Processing** (one task, in arrival order): read `tinyci.yml` from the default branch,
//!    fetch the commit's source archive, plan, and queue the submission in the same
//!    transaction that removes the delivery from the inbox. A crash before that commit leaves
//!    the delivery in the inbox for the next start; after it, the delivery is gone and the
//!    submission exists: never both, never neither.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tinyci_core::SubmissionId;
use tinyci_queue::NewSubmission;
use tinyci_repos::{
    ApiError, CommitStatus, GitHub, GitHubConfig, OAuthApp, PrAction, RepoName, StatusState,
    WebhookEvent,
};
use tinyci_store::records::{GitHubOrigin, InboxEntry, RepoRecord};
use tinyci_store::tables::{GITHUB_DELIVERIES, GITHUB_INBOX, GITHUB_SUBMISSIONS, META, REPOS};
use tinyci_store::{StoreError, WriteTxn};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::Services;
use crate::config::GitHubSettings;
use crate::secrets::SecretsKey;

/// How often a delivery whose processing failed for a passing reason (GitHub unreachable) is
/// tried before it is dropped with an error in the log.
const PROCESS_ATTEMPTS: u32 = 4;
/// The first retry's delay; doubled each time.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a delivery id is remembered. GitHub redelivers (by hand or API) only deliveries
/// of the last three days; a week leaves margin.
const DELIVERY_MEMORY: Duration = Duration::from_secs(7 * 86_400);
/// The `meta` key holding the next inbox sequence number.
const INBOX_NEXT_KEY: &str = "github_inbox_next";
/// The status context used for problems that belong to no run (an unreadable `tinyci.yml`).
pub(crate) const SITE_CONTEXT: &str = "tinyci";

/// Why GitHub work failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GitHubError {
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

/// The site's GitHub state: settings, the secrets box, the site's own API client.
pub(crate) struct GitHubState {
    pub(crate) settings: GitHubSettings,
    /// `[http] public_url`.
    pub(crate) public_url: Option<String>,
    pub(crate) secrets: SecretsKey,
    /// Acting with `[github] token_file`; `None` without one.
    site_client: Option<GitHub>,
    /// The OAuth app, when login is configured.
    pub(crate) oauth_app: Option<OAuthApp>,
    /// Wakes the inbox processor.
    inbox: Notify,
    /// Status reporters and other GitHub tasks, aborted at shutdown (they hold the store).
    pub(crate) tasks: RefCell<tokio::task::JoinSet<()>>,
}

impl std::fmt::Debug for GitHubState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubState")
            .field("api_url", &self.settings.api_url)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// Reads a secret file (mode 0600), trimmed; errors name the config key.
fn read_secret(path: &std::path::Path, key: &'static str) -> Result<String, crate::SiteError> {
    let text = crate::read_pem(path, key, true)?;
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Err(crate::SiteError::Config(crate::ConfigError::Value {
            path: path.to_owned(),
            key,
            reason: "the file is empty".into(),
        }));
    }
    Ok(text)
}

impl GitHubState {
    /// Loads the secrets key (creating it on first use), the site token and the OAuth app.
    pub(crate) fn load(
        settings: GitHubSettings,
        public_url: Option<String>,
    ) -> Result<Self, crate::SiteError> {
        let secrets = SecretsKey::load_or_create(&settings.secrets_key).map_err(|e| {
            crate::SiteError::Config(crate::ConfigError::Value {
                path: settings.secrets_key.clone(),
                key: "github.secrets_key",
                reason: e.to_string(),
            })
        })?;
        let site_token = settings
            .token_file
            .as_deref()
            .map(|p| read_secret(p, "github.token_file"))
            .transpose()?;
        let site_client = site_token
            .map(|token| client(&settings, Some(token)))
            .transpose()
            .map_err(|e| {
                crate::SiteError::Config(crate::ConfigError::Value {
                    path: settings.token_file.clone().unwrap_or_default(),
                    key: "github.api_url",
                    reason: e.to_string(),
                })
            })?;
        let oauth_app = match (&settings.client_id, &settings.client_secret_file) {
            (Some(id), Some(file)) => Some(OAuthApp {
                client_id: id.clone(),
                client_secret: read_secret(file, "github.client_secret_file")?,
            }),
            _ => None,
        };
        Ok(Self {
            settings,
            public_url,
            secrets,
            site_client,
            oauth_app,
            inbox: Notify::new(),
            tasks: RefCell::default(),
        })
    }

    /// A client acting with `token` (or anonymously).
    pub(crate) fn client_with(&self, token: Option<String>) -> Result<GitHub, ApiError> {
        client(&self.settings, token)
    }

    /// Spawns a GitHub task the site aborts at shutdown.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + 'static) {
        let mut tasks = self.tasks.borrow_mut();
        // Reap finished ones so the set does not grow for the site's lifetime.
        while tasks.try_join_next().is_some() {}
        tasks.spawn_local(task);
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
pub(crate) fn token_context(github_id: u64) -> String {
    format!("github-token:{github_id}")
}

/// The seal context of a repository's webhook secret.
pub(crate) fn hook_secret_context(repo: &str) -> String {
    format!("webhook-secret:{repo}")
}

/// The client to act on `repo` with: its enabling user's GitHub token, else the site's.
pub(crate) fn client_for(services: &Services, repo: &RepoRecord) -> Result<GitHub, GitHubError> {
    let github = services.github()?;
    match &repo.github_user {
        None => github.site_client.clone().ok_or_else(|| {
            GitHubError::Refused(format!(
                "{} has no GitHub token to act with: set [github] token_file, or enable it as a \
                 user who logged in with GitHub",
                repo.name
            ))
        }),
        Some(user) => {
            let token = user_token(services, user)?;
            Ok(github.client_with(Some(token))?)
        }
    }
}

/// A site user's GitHub token, unsealed.
pub(crate) fn user_token(services: &Services, user: &str) -> Result<String, GitHubError> {
    let github = services.github()?;
    let name: tinyci_users::UserName = user
        .parse()
        .map_err(|e: tinyci_users::UsersError| GitHubError::Refused(e.to_string()))?;
    let found = services
        .users
        .get(&name)
        .map_err(|e| GitHubError::Refused(e.to_string()))?
        .ok_or_else(|| GitHubError::Refused(format!("no site user {user}")))?;
    let (_, id) = found.github.clone().ok_or_else(|| {
        GitHubError::Refused(format!(
            "site user {user} has not logged in with GitHub, so there is no GitHub token to act with"
        ))
    })?;
    let sealed = services
        .users
        .github_token_sealed(&name)
        .map_err(|e| GitHubError::Refused(e.to_string()))?
        .ok_or_else(|| GitHubError::Refused(format!("site user {user} has no GitHub token")))?;
    let token = github
        .secrets
        .open(&sealed, &token_context(id))
        .map_err(|e| GitHubError::Refused(e.to_string()))?;
    String::from_utf8(token)
        .map_err(|_| GitHubError::Refused(format!("the GitHub token of {user} is not text")))
}

/// The repository record, if the site knows it.
pub(crate) fn repo_record(
    services: &Services,
    repo: &str,
) -> Result<Option<RepoRecord>, StoreError> {
    services.store.read(|txn| txn.get(REPOS, repo))
}

/// What the intake answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Intake {
    /// Stored for processing (202).
    Accepted,
    /// The delivery id was seen before (200).
    Duplicate,
    /// `ping`: verified, nothing to do (200).
    Pong,
    /// Not an event tinyci acts on (200, not stored).
    Ignored(String),
}

/// Why a delivery was refused at intake, with the HTTP status to answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IntakeError {
    /// 400: a header or the body is malformed.
    #[error("{0}")]
    Malformed(String),
    /// 401: the signature is missing or does not verify.
    #[error("{0}")]
    Unauthorized(String),
    /// 404: the repository is not enabled here.
    #[error("{0}")]
    UnknownRepo(String),
    /// 503: the site cannot take it now.
    #[error("{0}")]
    Unavailable(String),
}

/// Checks a delivery and, if it is new and one tinyci acts on, stores it durably in the inbox.
pub(crate) async fn intake(
    services: &Rc<Services>,
    event: Option<&str>,
    delivery: Option<&str>,
    signature: Option<&str>,
    body: Vec<u8>,
) -> Result<Intake, IntakeError> {
    let github = services
        .github()
        .map_err(|e| IntakeError::Unavailable(e.to_string()))?;
    let event = event.ok_or_else(|| IntakeError::Malformed("no X-GitHub-Event header".into()))?;
    let delivery = delivery
        .filter(|d| !d.is_empty() && d.len() <= 128 && d.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            IntakeError::Malformed("missing or malformed X-GitHub-Delivery header".into())
        })?;
    // The repository only picks whose secret checks the signature; nothing else in the body is
    // believed before that check passes.
    let repo = tinyci_repos::repository_of(&body).ok_or_else(|| {
        IntakeError::Malformed("the body names no repository (repository.full_name)".into())
    })?;
    let record = repo_record(services, &repo)
        .map_err(|e| IntakeError::Unavailable(e.to_string()))?
        .filter(|r| r.enabled)
        .ok_or_else(|| {
            IntakeError::UnknownRepo(format!("repository {repo} is not enabled here"))
        })?;
    let secret = github
        .secrets
        .open(&record.secret_sealed, &hook_secret_context(&repo))
        .map_err(|e| IntakeError::Unavailable(format!("cannot check the signature: {e}")))?;
    tinyci_repos::verify_signature(&secret, &body, signature).map_err(|e| {
        warn!(%repo, delivery, error = %e, "webhook refused");
        IntakeError::Unauthorized(format!("signature check failed: {e}"))
    })?;
    match event {
        "ping" => return Ok(Intake::Pong),
        "push" | "pull_request" => {}
        other => return Ok(Intake::Ignored(format!("event {other} is not acted on"))),
    }
    let entry = InboxEntry {
        delivery: delivery.to_owned(),
        event: event.to_owned(),
        body,
        received_at: services.now_ms(),
    };
    let stored = services
        .committer
        .write(move |txn| {
            if txn
                .get(GITHUB_DELIVERIES, entry.delivery.as_str())?
                .is_some()
            {
                return Ok(false);
            }
            txn.put(
                GITHUB_DELIVERIES,
                entry.delivery.as_str(),
                &entry.received_at,
            )?;
            let next = txn
                .get(META, INBOX_NEXT_KEY)?
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            txn.put(META, INBOX_NEXT_KEY, &(next + 1).to_be_bytes()[..])?;
            txn.put(GITHUB_INBOX, &next, &entry)?;
            Ok(true)
        })
        .await
        .map_err(|e| IntakeError::Unavailable(format!("cannot store the delivery: {e}")))?;
    if !stored {
        info!(%repo, delivery, "repeated webhook delivery ignored");
        return Ok(Intake::Duplicate);
    }
    info!(%repo, delivery, event, "webhook delivery accepted");
    github.inbox.notify_one();
    Ok(Intake::Accepted)
}

/// Acts on inbox deliveries in arrival order until aborted. Also resumes status reporting for
/// submissions a previous process was still reporting on.
pub(crate) async fn run_processor(services: Rc<Services>) {
    let Ok(github) = services.github() else {
        return;
    };
    crate::statuses::resume_reporting(&services);
    loop {
        let next = services
            .store
            .read(|txn| txn.iter_range(GITHUB_INBOX, &..)?.next().transpose());
        let (seq, entry) = match next {
            Ok(Some(next)) => next,
            Ok(None) => {
                github.inbox.notified().await;
                continue;
            }
            Err(e) => {
                warn!(error = %e, "cannot read the webhook inbox; retrying");
                tokio::time::sleep(RETRY_DELAY).await;
                continue;
            }
        };
        let mut delay = RETRY_DELAY;
        for attempt in 1..=PROCESS_ATTEMPTS {
            match process(&services, seq, &entry).await {
                Ok(()) => break,
                Err(e) if e.is_transient() && attempt < PROCESS_ATTEMPTS => {
                    warn!(delivery = %entry.delivery, attempt, error = %e, "webhook processing failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    warn!(delivery = %entry.delivery, error = %e, "webhook delivery dropped");
                    if let Err(e) = drop_entry(&services, seq).await {
                        warn!(error = %e, "cannot remove a webhook delivery from the inbox");
                        tokio::time::sleep(RETRY_DELAY).await;
                    }
                    break;
                }
            }
        }
    }
}

async fn drop_entry(services: &Services, seq: u64) -> Result<(), StoreError> {
    services
        .committer
        .write(move |txn| txn.delete(GITHUB_INBOX, &seq).map(drop))
        .await
}

/// What a delivery asks for once decoded.
struct Build {
    repo: RepoName,
    record: RepoRecord,
    git_ref: String,
    sha: String,
    title: String,
    submitted_by: String,
    default_branch: String,
    pull_request: Option<u64>,
    /// Decided from the (signature-checked) payload: a push or a branch pull request is the
    /// repository's writers' code, a fork's pull request anyone's.
    tier: tinyci_core::TrustTier,
}

/// Acts on one delivery; removes it from the inbox when done (with the submission, if any).
async fn process(services: &Rc<Services>, seq: u64, entry: &InboxEntry) -> Result<(), GitHubError> {
    let event = tinyci_repos::parse_event(&entry.event, &entry.body)
        .map_err(|e| GitHubError::Refused(format!("delivery {}: {e}", entry.delivery)))?;
    let build = match event {
        WebhookEvent::Push {
            repo,
            git_ref,
            after,
            deleted,
            default_branch,
            pusher,
            head_commit_message,
            ..
        } => {
            if deleted || !git_ref.starts_with("refs/heads/") || after.bytes().all(|b| b == b'0') {
                info!(%repo, %git_ref, "push deleted a branch or is not to a branch: nothing to build");
                return drop_entry(services, seq).await.map_err(Into::into);
            }
            let Some((repo, record)) = enabled(services, &repo)? else {
                return drop_entry(services, seq).await.map_err(Into::into);
            };
            Build {
                repo,
                record,
                git_ref,
                sha: after,
                title: head_commit_message
                    .and_then(|m| m.lines().next().map(str::to_owned))
                    .unwrap_or_default(),
                submitted_by: format!("github:{pusher}"),
                default_branch,
                pull_request: None,
                tier: crate::tiers::tier_of_push(),
            }
        }
        WebhookEvent::PullRequest {
            action,
            number,
            repo,
            head_sha,
            head_repo,
            title,
            default_branch,
            ..
        } => {
            let Some((repo_name, record)) = enabled(services, &repo)? else {
                return drop_entry(services, seq).await.map_err(Into::into);
            };
            let git_ref = pull_ref(number);
            match action {
                PrAction::Opened | PrAction::Synchronize | PrAction::Reopened => {}
                PrAction::Closed => {
                    close_pull_request(services, &repo, &git_ref, number).await?;
                    return drop_entry(services, seq).await.map_err(Into::into);
                }
                PrAction::Other(action) => {
                    info!(%repo, number, %action, "pull request action not acted on");
                    return drop_entry(services, seq).await.map_err(Into::into);
                }
            }
            Build {
                repo: repo_name,
                record,
                git_ref,
                sha: head_sha,
                title,
                submitted_by: format!("github:pull-request-{number}"),
                default_branch,
                pull_request: Some(number),
                tier: crate::tiers::tier_of_pull_request(&repo, head_repo.as_deref()),
            }
        }
        WebhookEvent::Ping { .. } | WebhookEvent::Ignored { .. } => {
            return drop_entry(services, seq).await.map_err(Into::into);
        }
    };
    submit_build(services, seq, build).await
}

/// The ref a pull request's submissions carry, so a newer push to it supersedes the older.
fn pull_ref(number: u64) -> String {
    format!("refs/pull/{number}/head")
}

fn enabled(services: &Services, repo: &str) -> Result<Option<(RepoName, RepoRecord)>, GitHubError> {
    let name: RepoName = repo
        .parse()
        .map_err(|e: tinyci_repos::InvalidName| GitHubError::Refused(e.to_string()))?;
    match repo_record(services, repo)? {
        Some(record) if record.enabled => Ok(Some((name, record))),
        _ => {
            info!(%repo, "delivery for a repository that is no longer enabled: dropped");
            Ok(None)
        }
    }
}

async fn close_pull_request(
    services: &Rc<Services>,
    repo: &str,
    git_ref: &str,
    number: u64,
) -> Result<(), GitHubError> {
    let head = services
        .queue
        .branch_head(repo, git_ref)
        .map_err(|e| GitHubError::Refused(e.to_string()))?;
    if let Some(head) = head {
        let canceled = services
            .queue
            .cancel_submission(head, &format!("pull request #{number} closed"))
            .await
            .map_err(|e| GitHubError::Refused(e.to_string()))?;
        info!(%repo, number, submission = %head, canceled, "pull request closed: its runs were canceled");
    }
    Ok(())
}

async fn submit_build(services: &Rc<Services>, seq: u64, build: Build) -> Result<(), GitHubError> {
    let github = services.github()?;
    let client = client_for(services, &build.record)?;
    let repo = &build.repo;
    let config_text = client
        .get_file(repo, tinyci_core::REPO_CONFIG_FILE, &build.default_branch)
        .await?;
    let Some(config_text) = config_text else {
        info!(%repo, branch = %build.default_branch, "no tinyci.yml on the default branch: nothing to build");
        return drop_entry(services, seq).await.map_err(Into::into);
    };
    let tarball = client
        .download_tarball(repo, &build.sha, tinyci_assets::MAX_SOURCE_BYTES)
        .await?;
    let sources = services.sources.clone();
    let source_sha256 =
        tokio::task::spawn_blocking(move || sources.import_github_tarball(&tarball))
            .await
            .map_err(|e| GitHubError::Refused(format!("source import failed: {e}")))?
            .map_err(|e| GitHubError::Refused(crate::rpc::chain(&e)))?;
    let archive = services
        .sources
        .path(&source_sha256)
        .ok_or_else(|| GitHubError::Refused("the imported source archive vanished".into()))?;
    let config_text = String::from_utf8(config_text).map_err(|_| {
        GitHubError::Refused(format!("{} is not UTF-8", tinyci_core::REPO_CONFIG_FILE))
    })?;
    let planned = crate::jobs::plan_archive(archive, Some(config_text), Vec::new(), true).await;
    let runs = match planned {
        Ok(runs) => runs,
        Err(crate::jobs::PlanError::Invalid(message)) => {
            report_invalid(&client, &build, NotBuilt::Invalid, &message).await?;
            return drop_entry(services, seq).await.map_err(Into::into);
        }
        Err(crate::jobs::PlanError::Failed(message)) => return Err(GitHubError::Refused(message)),
    };
    if runs.is_empty() {
        info!(%repo, sha = %build.sha, "no task selected: nothing to build");
        return drop_entry(services, seq).await.map_err(Into::into);
    }
    if let Err(refusal) = crate::jobs::admit(services, &repo.to_string(), &build.tier, &runs) {
        report_invalid(&client, &build, NotBuilt::Refused, &refusal.to_string()).await?;
        return drop_entry(services, seq).await.map_err(Into::into);
    }
    let origin = GitHubOrigin {
        repo: repo.to_string(),
        sha: build.sha.clone(),
        pull_request: build.pull_request,
    };
    let record = origin.clone();
    let also: tinyci_queue::SubmitHook = Box::new(move |txn: &mut WriteTxn<'_>, submission| {
        txn.put(GITHUB_SUBMISSIONS, &submission.id.get(), &record)?;
        txn.delete(GITHUB_INBOX, &seq)?;
        Ok(())
    });
    let (submission, queued) = services
        .queue
        .submit_with(
            NewSubmission {
                repo: repo.to_string(),
                git_ref: build.git_ref.clone(),
                sha: build.sha.clone(),
                title: build.title.clone(),
                submitted_by: build.submitted_by.clone(),
                source_sha256: source_sha256.to_vec(),
                runs,
                branch: tinyci_queue::OnBranch::Supersede,
                tier: build.tier.clone(),
            },
            also,
        )
        .await
        .map_err(|e| GitHubError::Refused(e.to_string()))?;
    info!(%repo, submission = %submission.id, git_ref = %build.git_ref, "webhook became a submission");
    crate::statuses::start_reporting(services, github, submission.id, origin, queued);
    Ok(())
}

/// Why a build was not queued at all.
#[derive(Clone, Copy)]
enum NotBuilt {
    /// A task file does not parse.
    Invalid,
    /// The site's dispatch policy refuses it (a queue that does not take its tier, or
    /// privilege the site does not grant).
    Refused,
}

impl NotBuilt {
    fn why(self) -> &'static str {
        match self {
            NotBuilt::Invalid => "task files do not parse",
            NotBuilt::Refused => "the site's policy refuses it",
        }
    }
}

/// A build that was not queued: one PR comment quoting the reason (or, for a push, one error
/// status on the commit), and no runs.
async fn report_invalid(
    client: &GitHub,
    build: &Build,
    kind: NotBuilt,
    message: &str,
) -> Result<(), GitHubError> {
    let why = kind.why();
    warn!(repo = %build.repo, sha = %build.sha, error = %message, "{why}: nothing queued");
    match build.pull_request {
        Some(number) => {
            let body = format!(
                "tinyci cannot build {}: {why}, so nothing was run.\n\n```\n{}\n```",
                short(&build.sha),
                message.replace("```", "'''")
            );
            client.create_comment(&build.repo, number, &body).await?;
        }
        None => {
            let status = CommitStatus {
                state: StatusState::Error,
                context: SITE_CONTEXT.to_owned(),
                description: format!("{why}: {message}"),
                target_url: None,
            };
            client.set_status(&build.repo, &build.sha, &status).await?;
        }
    }
    Ok(())
}

pub(crate) fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Submission ids GitHub still waits to hear about.
pub(crate) fn reporting_submissions(
    services: &Services,
) -> Result<Vec<(SubmissionId, GitHubOrigin)>, StoreError> {
    services.store.read(|txn| {
        txn.iter_range(GITHUB_SUBMISSIONS, &..)?
            .map(|entry| entry.map(|(id, origin)| (SubmissionId(id), origin)))
            .collect()
    })
}

/// Forgets delivery ids older than [`DELIVERY_MEMORY`] (the retention sweep calls this), so
/// the table does not grow for the site's lifetime.
pub(crate) async fn forget_old_deliveries(
    services: &Services,
    now_ms: u64,
) -> Result<usize, StoreError> {
    let memory = u64::try_from(DELIVERY_MEMORY.as_millis()).unwrap_or(u64::MAX);
    let old: Vec<String> = services.store.read(|txn| {
        txn.iter_range(
            GITHUB_DELIVERIES,
            &(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
        )?
        .filter_map(|entry| match entry {
            Ok((id, at)) if at.saturating_add(memory) <= now_ms => Some(Ok(id.to_owned())),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect()
    })?;
    let count = old.len();
    if count > 0 {
        services
            .committer
            .write(move |txn| {
                for id in &old {
                    txn.delete(GITHUB_DELIVERIES, id.as_str())?;
                }
                Ok(())
            })
            .await?;
    }
    Ok(count)
}
