//! Webhook deliveries, in two steps so that none is lost and none is acted on twice:
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

use std::rc::Rc;
use std::time::Duration;

use tinyci_assets::PlanError;
use tinyci_core::{SubmissionId, TrustTier};
use tinyci_queue::NewSubmission;
use tinyci_repos::{CommitStatus, GitHub, PrAction, RepoName, StatusState, WebhookEvent};
use tinyci_store::records::{GitHubOrigin, InboxEntry, RepoRecord};
use tinyci_store::tables::{GITHUB_DELIVERIES, GITHUB_INBOX, GITHUB_SUBMISSIONS, META};
use tinyci_store::{StoreError, WriteTxn};
use tracing::{info, warn};

use crate::{
    GitHubError, GitHubService, SITE_CONTEXT, client_for, hook_secret_context, repo_record,
};

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

/// What the intake answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Intake {
    /// Stored for processing (202).
    Accepted,
    /// The delivery was seen before, by its id or its signed body (200).
    Duplicate,
    /// `ping`: verified, nothing to do (200).
    Pong,
    /// Not an event tinyci acts on (200, not stored).
    Ignored(String),
}

/// Why a delivery was refused at intake, with the HTTP status to answer.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// 400: a header or the body is malformed.
    #[error("{0}")]
    Malformed(String),
    /// 401: the signature is missing or does not verify.
    #[error("{0}")]
    Unauthorized(String),
    /// 503: the site cannot take it now.
    #[error("{0}")]
    Unavailable(String),
}

/// Checks a delivery and, if it is new and one tinyci acts on, stores it durably in the inbox.
pub(crate) async fn intake(
    github: &Rc<GitHubService>,
    event: Option<&str>,
    delivery: Option<&str>,
    signature: Option<&str>,
    body: Vec<u8>,
) -> Result<Intake, IntakeError> {
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
    let record = repo_record(github, &repo)
        .map_err(|e| IntakeError::Unavailable(e.to_string()))?
        .filter(|r| r.enabled);
    let Some(record) = record else {
        // Refused as a bad signature on an enabled repository is, with the same status and
        // words and after the same HMAC, so that an anonymous sender cannot learn which
        // repositories (private ones included) this site builds.
        let checked = tinyci_repos::verify_signature(b"not-enabled-here", &body, signature);
        let e = checked
            .err()
            .unwrap_or(tinyci_repos::WebhookError::SignatureMismatch);
        warn!(%repo, delivery, "webhook for a repository not enabled here refused");
        return Err(IntakeError::Unauthorized(format!(
            "signature check failed: {e}"
        )));
    };
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
    // The delivery id header is not signed: a signed body re-posted under a fresh id (by
    // anyone who saw it, e.g. on the repository's webhook page) would build an old push again
    // and supersede the current one. The body is remembered too, under a key no delivery id
    // can take (ids hold no spaces).
    let body_key = {
        use sha2::Digest as _;
        format!("body sha256:{}", hex::encode(sha2::Sha256::digest(&body)))
    };
    let entry = InboxEntry {
        delivery: delivery.to_owned(),
        event: event.to_owned(),
        body,
        received_at: github.now_ms(),
    };
    let stored = github
        .committer
        .write(move |txn| {
            for seen in [entry.delivery.as_str(), body_key.as_str()] {
                if txn.get(GITHUB_DELIVERIES, seen)?.is_some() {
                    return Ok(false);
                }
            }
            for key in [entry.delivery.as_str(), body_key.as_str()] {
                txn.put(GITHUB_DELIVERIES, key, &entry.received_at)?;
            }
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
pub(crate) async fn run_processor(github: Rc<GitHubService>) {
    crate::statuses::resume_reporting(&github);
    crate::statuses::report_retries(&github);
    loop {
        let next = github
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
            match process(&github, seq, &entry).await {
                Ok(()) => break,
                Err(e) if e.is_transient() && attempt < PROCESS_ATTEMPTS => {
                    warn!(delivery = %entry.delivery, attempt, error = %e, "webhook processing failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    warn!(delivery = %entry.delivery, error = %e, "webhook delivery dropped");
                    if let Err(e) = drop_entry(&github, seq).await {
                        warn!(error = %e, "cannot remove a webhook delivery from the inbox");
                        tokio::time::sleep(RETRY_DELAY).await;
                    }
                    break;
                }
            }
        }
    }
}

async fn drop_entry(github: &GitHubService, seq: u64) -> Result<(), StoreError> {
    github
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
    /// What the diff that selects tasks starts from (`base...sha`): the commit before a
    /// push, the default branch for a new branch, a pull request's base; `None`: every task.
    diff_base: Option<String>,
    /// For a pull request: its head branch (as `merge_options.ignore_refs` names it,
    /// `heads/<branch>`) and GitHub's test merge commit if the payload names one. The run
    /// builds that merge unless `merge_options` say not to.
    merge: Option<(String, Option<String>)>,
    /// Decided from the (signature-checked) payload: a push or a branch pull request is the
    /// repository's writers' code, a fork's pull request anyone's.
    tier: tinyci_core::TrustTier,
}

/// Acts on one delivery; removes it from the inbox when done (with the submission, if any).
async fn process(
    github: &Rc<GitHubService>,
    seq: u64,
    entry: &InboxEntry,
) -> Result<(), GitHubError> {
    let event = tinyci_repos::parse_event(&entry.event, &entry.body)
        .map_err(|e| GitHubError::Refused(format!("delivery {}: {e}", entry.delivery)))?;
    let build = match event {
        WebhookEvent::Push {
            repo,
            git_ref,
            before,
            after,
            deleted,
            default_branch,
            pusher,
            head_commit_message,
            ..
        } => {
            if deleted || !git_ref.starts_with("refs/heads/") || after.bytes().all(|b| b == b'0') {
                info!(%repo, %git_ref, "push deleted a branch or is not to a branch: nothing to build");
                return drop_entry(github, seq).await.map_err(Into::into);
            }
            let Some((repo, record)) = enabled(github, &repo)? else {
                return drop_entry(github, seq).await.map_err(Into::into);
            };
            // tinyCI's idea: run what the change touches. A new branch is compared with the
            // default branch; the first push of the default branch itself runs everything.
            let created = before.bytes().all(|b| b == b'0');
            let diff_base = match created {
                false => Some(before),
                true if git_ref == format!("refs/heads/{default_branch}") => None,
                true => Some(default_branch.clone()),
            };
            Build {
                repo,
                record,
                git_ref,
                diff_base,
                merge: None,
                sha: after,
                title: head_commit_message
                    .and_then(|m| m.lines().next().map(str::to_owned))
                    .unwrap_or_default(),
                submitted_by: format!("github:{pusher}"),
                default_branch,
                pull_request: None,
                tier: tier_of_push(),
            }
        }
        WebhookEvent::PullRequest {
            action,
            number,
            repo,
            head_sha,
            head_ref,
            head_repo,
            base_sha,
            merge_commit_sha,
            title,
            default_branch,
            ..
        } => {
            let Some((repo_name, record)) = enabled(github, &repo)? else {
                return drop_entry(github, seq).await.map_err(Into::into);
            };
            let git_ref = pull_ref(number);
            match action {
                PrAction::Opened | PrAction::Synchronize | PrAction::Reopened => {}
                PrAction::Closed => {
                    close_pull_request(github, &repo, &git_ref, number).await?;
                    return drop_entry(github, seq).await.map_err(Into::into);
                }
                PrAction::Other(action) => {
                    info!(%repo, number, %action, "pull request action not acted on");
                    return drop_entry(github, seq).await.map_err(Into::into);
                }
            }
            Build {
                repo: repo_name,
                record,
                git_ref,
                diff_base: Some(base_sha),
                merge: Some((format!("heads/{head_ref}"), merge_commit_sha)),
                sha: head_sha,
                title,
                submitted_by: format!("github:pull-request-{number}"),
                default_branch,
                pull_request: Some(number),
                tier: tier_of_pull_request(&repo, head_repo.as_deref()),
            }
        }
        WebhookEvent::Ping { .. } | WebhookEvent::Ignored { .. } => {
            return drop_entry(github, seq).await.map_err(Into::into);
        }
    };
    submit_build(github, seq, build).await
}

/// The ref a pull request's submissions carry, so a newer push to it supersedes the older.
fn pull_ref(number: u64) -> String {
    format!("refs/pull/{number}/head")
}

fn enabled(
    github: &GitHubService,
    repo: &str,
) -> Result<Option<(RepoName, RepoRecord)>, GitHubError> {
    let name: RepoName = repo
        .parse()
        .map_err(|e: tinyci_repos::InvalidName| GitHubError::Refused(e.to_string()))?;
    match repo_record(github, repo)? {
        Some(record) if record.enabled => Ok(Some((name, record))),
        _ => {
            info!(%repo, "delivery for a repository that is no longer enabled: dropped");
            Ok(None)
        }
    }
}

async fn close_pull_request(
    github: &Rc<GitHubService>,
    repo: &str,
    git_ref: &str,
    number: u64,
) -> Result<(), GitHubError> {
    let head = github
        .queue
        .branch_head(repo, git_ref)
        .map_err(|e| GitHubError::Refused(e.to_string()))?;
    if let Some(head) = head {
        let canceled = github
            .queue
            .cancel_submission(head, &format!("pull request #{number} closed"))
            .await
            .map_err(|e| GitHubError::Refused(e.to_string()))?;
        info!(%repo, number, submission = %head, canceled, "pull request closed: its runs were canceled");
    }
    Ok(())
}

async fn submit_build(
    github: &Rc<GitHubService>,
    seq: u64,
    build: Build,
) -> Result<(), GitHubError> {
    let client = client_for(github, &build.record)?;
    let repo = &build.repo;
    let config_text = client
        .get_file(repo, tinyci_core::REPO_CONFIG_FILE, &build.default_branch)
        .await?;
    let Some(config_text) = config_text else {
        info!(%repo, branch = %build.default_branch, "no tinyci.yml on the default branch: nothing to build");
        return drop_entry(github, seq).await.map_err(Into::into);
    };
    let run_sha = commit_to_run(&client, &build, &config_text).await?;
    let tarball = client
        .download_tarball(repo, &run_sha, tinyci_assets::MAX_SOURCE_BYTES)
        .await?;
    let sources = github.sources.clone();
    let source_sha256 =
        tokio::task::spawn_blocking(move || sources.import_github_tarball(&tarball))
            .await
            .map_err(|e| GitHubError::Refused(format!("source import failed: {e}")))?
            .map_err(|e| GitHubError::Refused(tinyci_core::error_chain(&e)))?;
    let archive = github
        .sources
        .path(&source_sha256)
        .ok_or_else(|| GitHubError::Refused("the imported source archive vanished".into()))?;
    let config_text = String::from_utf8(config_text).map_err(|_| {
        GitHubError::Refused(format!("{} is not UTF-8", tinyci_core::REPO_CONFIG_FILE))
    })?;
    let changed = match &build.diff_base {
        Some(base) => client.changed_paths(repo, base, &build.sha).await?,
        None => None,
    };
    match &changed {
        Some(paths) => {
            info!(%repo, sha = %build.sha, files = paths.len(), "tasks selected by the diff");
        }
        None => info!(%repo, sha = %build.sha, "no usable diff: every task runs"),
    }
    let all = changed.is_none();
    let planned =
        tinyci_assets::plan_archive(archive, Some(config_text), changed.unwrap_or_default(), all)
            .await;
    let runs = match planned {
        Ok(runs) => runs,
        Err(PlanError::Invalid(message)) => {
            report_invalid(&client, &build, NotBuilt::Invalid, &message).await?;
            return drop_entry(github, seq).await.map_err(Into::into);
        }
        Err(e) => return Err(GitHubError::Refused(tinyci_core::error_chain(&e))),
    };
    if runs.is_empty() {
        info!(%repo, sha = %build.sha, "no task selected: nothing to build");
        return drop_entry(github, seq).await.map_err(Into::into);
    }
    let policy = github.queue.dispatch_policy();
    let admitted = runs
        .iter()
        .try_for_each(|run| policy.admit(&repo.to_string(), &build.tier, run).map(drop));
    if let Err(refusal) = admitted {
        report_invalid(&client, &build, NotBuilt::Refused, &refusal.to_string()).await?;
        return drop_entry(github, seq).await.map_err(Into::into);
    }
    if let Err(over) = github.queue.storage().admit(&repo.to_string()) {
        report_invalid(&client, &build, NotBuilt::OverQuota, &over.to_string()).await?;
        return drop_entry(github, seq).await.map_err(Into::into);
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
    let (submission, queued) = github
        .queue
        .submit_with(
            NewSubmission {
                repo: repo.to_string(),
                git_ref: build.git_ref.clone(),
                sha: run_sha.clone(),
                title: build.title.clone(),
                submitted_by: build.submitted_by.clone(),
                source_sha256: source_sha256.to_vec(),
                runs,
                // A push selected by its own diff (before...after) re-runs only what it
                // touched: the older push's other tasks go on. A pull request's diff
                // (base...head) is whole, so it replaces its older runs outright.
                branch: if build.pull_request.is_none() && build.diff_base.is_some() {
                    tinyci_queue::OnBranch::SupersedeOverlap
                } else {
                    tinyci_queue::OnBranch::Supersede
                },
                tier: build.tier.clone(),
            },
            also,
        )
        .await
        .map_err(|e| GitHubError::Refused(e.to_string()))?;
    info!(%repo, submission = %submission.id, git_ref = %build.git_ref, "webhook became a submission");
    crate::statuses::start_reporting(github, submission.id, origin, queued);
    Ok(())
}

/// The commit a build runs: a pull request's test merge (its head merged into its base, as
/// GitHub keeps it) unless the repository's `merge_options` say not to merge this head, or
/// there is none (a conflict, or GitHub has not computed it); otherwise the pushed commit.
/// Statuses always go to the pushed commit.
async fn commit_to_run(
    client: &tinyci_repos::GitHub,
    build: &Build,
    config_text: &[u8],
) -> Result<String, GitHubError> {
    let (Some((head_ref, payload_merge)), Some(number)) = (&build.merge, build.pull_request) else {
        return Ok(build.sha.clone());
    };
    // An unreadable tinyci.yml is reported by planning; here it just means no merge.
    let merge_wanted = tinyci_core::RepoConfig::parse(tinyci_core::REPO_CONFIG_FILE, config_text)
        .is_ok_and(|config| config.merge_options.should_merge(head_ref));
    if !merge_wanted {
        return Ok(build.sha.clone());
    }
    let merge = match payload_merge {
        Some(sha) => Some(sha.clone()),
        None => {
            client
                .pull_request_merge_commit(&build.repo, number)
                .await?
        }
    };
    let Some(merge) = merge else {
        info!(repo = %build.repo, number, head = %build.sha, "no merge commit (a conflict, or not computed yet): building the head");
        return Ok(build.sha.clone());
    };
    // GitHub recomputes the test merge after each push, and a delivery may name the one of
    // an older head: build it only if it merges this head, or a pass would be reported for
    // code that was never run.
    let parents = client.commit_parents(&build.repo, &merge).await?;
    let merges_head = parents
        .as_ref()
        .is_some_and(|parents| parents.iter().any(|p| p == &build.sha));
    match merges_head.then_some(merge) {
        Some(sha) => {
            info!(repo = %build.repo, number, head = %build.sha, merge = %sha, "building the pull request's merge commit");
            Ok(sha)
        }
        None => {
            info!(repo = %build.repo, number, head = %build.sha, "the merge commit GitHub names does not merge this head (an older one's): building the head");
            Ok(build.sha.clone())
        }
    }
}

/// Why a build was not queued at all.
#[derive(Clone, Copy)]
enum NotBuilt {
    /// A task file does not parse.
    Invalid,
    /// The site's dispatch policy refuses it (a queue that does not take its tier, or
    /// privilege the site does not grant).
    Refused,
    /// The repository stores more than its quota.
    OverQuota,
}

impl NotBuilt {
    fn why(self) -> &'static str {
        match self {
            NotBuilt::Invalid => "task files do not parse",
            NotBuilt::Refused => "the site's policy refuses it",
            NotBuilt::OverQuota => "the repository is over its storage quota",
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
    github: &GitHubService,
) -> Result<Vec<(SubmissionId, GitHubOrigin)>, StoreError> {
    github.store.read(|txn| {
        txn.iter_range(GITHUB_SUBMISSIONS, &..)?
            .map(|entry| entry.map(|(id, origin)| (SubmissionId(id), origin)))
            .collect()
    })
}

/// Forgets delivery ids older than [`DELIVERY_MEMORY`] (the retention sweep calls this), so
/// the table does not grow for the site's lifetime.
pub(crate) async fn forget_old_deliveries(
    github: &GitHubService,
    now_ms: u64,
) -> Result<usize, StoreError> {
    let memory = u64::try_from(DELIVERY_MEMORY.as_millis()).unwrap_or(u64::MAX);
    let old: Vec<String> = github.store.read(|txn| {
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
        github
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

/// The tier of a GitHub push to an enabled repository: its writers' code.
pub(crate) fn tier_of_push() -> TrustTier {
    TrustTier::Repo
}

/// The tier of a pull request into `base_repo` whose head lives in `head_repo` (`None` when
/// GitHub no longer knows it, e.g. a deleted fork): `repo` only when the head is a branch of
/// the same repository, `fork` otherwise.
pub(crate) fn tier_of_pull_request(base_repo: &str, head_repo: Option<&str>) -> TrustTier {
    match head_repo {
        // GitHub compares owner and repository names without regard to case.
        Some(head) if head.eq_ignore_ascii_case(base_repo) => TrustTier::Repo,
        _ => TrustTier::Fork,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_are_repo_and_pull_requests_depend_on_where_the_head_lives() {
        assert_eq!(tier_of_push(), TrustTier::Repo);
        assert_eq!(tier_of_pull_request("o/r", Some("o/r")), TrustTier::Repo);
        assert_eq!(tier_of_pull_request("O/R", Some("o/r")), TrustTier::Repo);
        assert_eq!(
            tier_of_pull_request("o/r", Some("mallory/r")),
            TrustTier::Fork
        );
        // A fork named like the base's owner but another repository is still a fork.
        assert_eq!(
            tier_of_pull_request("o/r", Some("o/r-fork")),
            TrustTier::Fork
        );
        assert_eq!(tier_of_pull_request("o/r", None), TrustTier::Fork);
    }
}

/// Intake and delivery-id memory on a real store, with time moved by hand.
#[cfg(test)]
mod deliveries {
    #![allow(clippy::unwrap_used)]

    use std::cell::Cell;

    use hmac::{Hmac, Mac};
    use sha2::Sha256;
    use tinyci_store::tables::REPOS;
    use tinyci_store::{GroupCommitter, Store, StoreOptions};

    use super::*;
    use crate::{GitHubSettings, Handles, SecretsKey};

    const DAY_MS: u64 = 86_400_000;
    const SECRET: &str = "hook-secret";

    fn sign(body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    async fn service(dir: &std::path::Path, now: Rc<Cell<u64>>) -> Rc<GitHubService> {
        let store = Store::open(&dir.join("data"), StoreOptions::default()).unwrap();
        let (committer, _writer) = GroupCommitter::start(store.clone()).unwrap();
        let clock: tinyci_core::Clock = Rc::new(move || now.get());
        let queue = tinyci_queue::Queue::open(
            store.clone(),
            committer.clone(),
            tinyci_queue::QueueSetup {
                lease: tinyci_core::LeasePolicy::default(),
                dispatch: tinyci_core::DispatchPolicy::default(),
                site: "alpha".into(),
            },
            clock.clone(),
        )
        .await
        .unwrap();
        let settings = GitHubSettings {
            // Never reached: intake asks nothing of GitHub.
            api_url: "http://127.0.0.1:9".into(),
            web_url: "http://127.0.0.1:9".into(),
            token_file: None,
            client_id: None,
            client_secret_file: None,
            secrets_key: dir.join("secrets.key"),
            login_token_ttl: Duration::from_secs(3600),
            default_capabilities: Vec::new(),
            allow: Vec::new(),
        };
        let secrets = SecretsKey::load_or_create(&settings.secrets_key).unwrap();
        let record = RepoRecord {
            name: "o/r".into(),
            enabled: true,
            hook_id: Some(1),
            secret_sealed: secrets.seal(SECRET.as_bytes(), &hook_secret_context("o/r")),
            enabled_by: "admin:admin".into(),
            github_user: None,
            public: false,
            changed_at: 0,
        };
        committer
            .write(move |txn| txn.put(REPOS, "o/r", &record))
            .await
            .unwrap();
        let handles = Handles {
            store: store.clone(),
            committer: committer.clone(),
            queue,
            sources: tinyci_assets::SourceStore::open(&dir.join("data")).unwrap(),
            users: tinyci_users::Users::new(store, committer),
            clock,
        };
        Rc::new(GitHubService::new(settings, None, secrets, Default::default(), handles).unwrap())
    }

    fn local<F: std::future::Future>(test: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, test)
    }

    async fn deliver(github: &Rc<GitHubService>, id: &str) -> Intake {
        let body = br#"{"repository":{"full_name":"o/r"},"ref":"refs/heads/main"}"#.to_vec();
        let signature = sign(&body);
        github
            .intake(Some("push"), Some(id), Some(&signature), body)
            .await
            .unwrap()
    }

    /// Which repositories a site builds is not the business of whoever can reach its webhook
    /// URL: a delivery naming one that is not enabled is refused exactly as a delivery with
    /// a bad signature naming one that is.
    #[test]
    fn a_delivery_for_a_repository_not_enabled_here_is_refused_as_a_bad_signature_is() {
        local(async {
            let dir = tempfile::tempdir().unwrap();
            let github = service(dir.path(), Rc::new(Cell::new(DAY_MS))).await;
            let refusal = |name: &str, signature: Option<String>| {
                let body = format!(r#"{{"repository":{{"full_name":"{name}"}}}}"#).into_bytes();
                let github = github.clone();
                async move {
                    let error = github
                        .intake(Some("push"), Some("d-1"), signature.as_deref(), body)
                        .await
                        .unwrap_err();
                    (std::mem::discriminant(&error), error.to_string())
                }
            };
            let zeros = format!("sha256={}", "0".repeat(64));
            for signature in [None, Some("sha256=00".to_owned()), Some(zeros)] {
                assert_eq!(
                    refusal("o/r", signature.clone()).await,
                    refusal("o/secret", signature.clone()).await,
                    "signature {signature:?}"
                );
            }
        });
    }

    /// The delivery id is not signed: the same signed body under a fresh id is the same
    /// delivery, not a new push to build.
    #[test]
    fn a_signed_body_replayed_under_a_fresh_delivery_id_is_a_duplicate() {
        local(async {
            let dir = tempfile::tempdir().unwrap();
            let github = service(dir.path(), Rc::new(Cell::new(DAY_MS))).await;
            assert_eq!(deliver(&github, "d-1").await, Intake::Accepted);
            assert_eq!(deliver(&github, "d-2").await, Intake::Duplicate);
        });
    }

    #[test]
    fn a_delivery_id_is_remembered_for_a_week_of_site_time_then_forgotten() {
        local(async {
            let dir = tempfile::tempdir().unwrap();
            let now = Rc::new(Cell::new(1_000 * DAY_MS));
            let github = service(dir.path(), now.clone()).await;
            assert_eq!(deliver(&github, "d-1").await, Intake::Accepted);
            assert_eq!(deliver(&github, "d-1").await, Intake::Duplicate);

            // Six days on, GitHub could still redeliver it: remembered.
            now.set(now.get() + 6 * DAY_MS);
            assert_eq!(github.forget_old_deliveries(now.get()).await.unwrap(), 0);
            assert_eq!(deliver(&github, "d-1").await, Intake::Duplicate);

            // A week on, only the site's clock moved: forgotten (its id and its body), and the
            // table is empty.
            now.set(now.get() + DAY_MS);
            assert_eq!(github.forget_old_deliveries(now.get()).await.unwrap(), 2);
            assert_eq!(github.forget_old_deliveries(now.get()).await.unwrap(), 0);
        });
    }

    #[test]
    fn a_delivery_with_a_bad_signature_is_refused_before_anything_is_stored() {
        local(async {
            let dir = tempfile::tempdir().unwrap();
            let github = service(dir.path(), Rc::new(Cell::new(DAY_MS))).await;
            let body = br#"{"repository":{"full_name":"o/r"}}"#.to_vec();
            let forged = sign(b"another body");
            let refused = github
                .intake(Some("push"), Some("d-2"), Some(&forged), body)
                .await
                .unwrap_err();
            assert!(matches!(refused, IntakeError::Unauthorized(_)), "{refused}");
            // Nothing was recorded: the same id with a good signature is new.
            assert_eq!(deliver(&github, "d-2").await, Intake::Accepted);
        });
    }
}
