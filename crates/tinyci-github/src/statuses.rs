//! Commit statuses: every run of a GitHub-triggered submission reports its progress on the
//! commit as it happens: `pending` "queued", `pending` "started on RUNNER", then `success`,
//! `failure` (failed or timed out) or `error` (canceled, superseded, or the site gave up),
//! context `task:run`, target URL `<public_url>/runs/<id>`.
//!
//! One reporter task per submission follows the queue's change feed in order, so GitHub sees
//! each run's states in the order they happened. What was last posted per run is stored, so a
//! restarted site picks up each reporter where it stopped, neither repeating nor skipping the
//! latest state; the submission's entry is removed once every run's final status is posted.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use tinyci_core::{RunStatus, SubmissionId};
use tinyci_queue::StoredRun;
use tinyci_repos::{CommitStatus, GitHub, RepoName, StatusState};
use tinyci_store::records::{GitHubOrigin, PostedStatus};
use tinyci_store::tables::{GITHUB_REPORTED, GITHUB_STATUSES, GITHUB_SUBMISSIONS};
use tracing::{debug, warn};

use crate::{GitHubService, client_for, repo_record};

/// Attempts per status before giving up on it (GitHub unreachable for about a minute).
const POST_ATTEMPTS: u32 = 6;

/// The status a run's current state maps to.
pub(crate) fn status_of(run: &StoredRun, public_url: Option<&str>) -> CommitStatus {
    let message = || {
        run.message
            .clone()
            .or_else(|| run.state.outcome().and_then(|o| o.message.clone()))
    };
    let (state, description) = match run.state.status() {
        RunStatus::Queued => (StatusState::Pending, "queued".to_owned()),
        RunStatus::Leased | RunStatus::Running => (
            StatusState::Pending,
            format!("started on {}", run.runner.as_deref().unwrap_or("a runner")),
        ),
        RunStatus::Passed => (StatusState::Success, format!("passed{}", took(run))),
        RunStatus::Failed => (
            StatusState::Failure,
            match run.state.outcome().and_then(|o| o.exit_code) {
                Some(code) => format!("failed with exit code {code}{}", took(run)),
                None => format!("failed{}", took(run)),
            },
        ),
        RunStatus::TimedOut => (StatusState::Failure, format!("timed out{}", took(run))),
        RunStatus::Canceled => (
            StatusState::Error,
            match message() {
                Some(m) if m.starts_with("canceled") => m,
                Some(m) => format!("canceled: {m}"),
                None => "canceled".to_owned(),
            },
        ),
        RunStatus::Errored => (
            StatusState::Error,
            message().unwrap_or_else(|| "errored".to_owned()),
        ),
    };
    CommitStatus {
        state,
        context: context_of(run),
        description,
        target_url: public_url.map(|base| format!("{base}/runs/{}", run.id())),
    }
}

/// The status context of a run: `task:run`, as `tinyci` prints runs.
pub(crate) fn context_of(run: &StoredRun) -> String {
    format!("{}:{}", run.spec.task_dir, run.spec.name)
}

fn took(run: &StoredRun) -> String {
    match (run.started_at, run.state.outcome().map(|o| o.finished_at)) {
        (Some(start), Some(end)) if end >= start => {
            format!(" in {}s", (end - start).div_ceil(1000))
        }
        _ => String::new(),
    }
}

/// Starts reporting on a submission. Registers with the queue's change feed and reads the
/// runs' current states in the same turn, so no change falls between the two. `queued` are
/// the runs as the submission created them: posted first, so GitHub sees "queued" even when
/// a runner took a run before this reporter started.
pub(crate) fn start_reporting(
    github: &Rc<GitHubService>,
    submission: SubmissionId,
    origin: GitHubOrigin,
    queued: Vec<StoredRun>,
) {
    start(github, submission, origin, queued, Posted::Unknown);
}

/// What a new reporter may take as already on GitHub.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Posted {
    /// Nothing known beyond the stored last status per run: post every run's current state
    /// unless it is the one recorded.
    Unknown,
    /// Every finished run's final status (a reporter finished before a run was retried):
    /// post only what is unfinished.
    Finals,
}

fn start(
    github: &Rc<GitHubService>,
    submission: SubmissionId,
    origin: GitHubOrigin,
    queued: Vec<StoredRun>,
    posted: Posted,
) {
    if !github.reporting.borrow_mut().insert(submission) {
        return;
    }
    let feed = github.queue.watch(submission);
    let mut current = match github.queue.submission_runs(submission) {
        Ok(runs) => runs,
        Err(e) => {
            github.reporting.borrow_mut().remove(&submission);
            warn!(%submission, error = %e, "cannot read the submission's runs; statuses not reported");
            return;
        }
    };
    if posted == Posted::Finals {
        current.retain(|r| !r.state.status().is_final());
    }
    github.spawn(report(
        github.clone(),
        submission,
        origin,
        queued,
        current,
        feed,
    ));
}

/// Reports retried runs: when a run of a submission whose reporting had finished is queued
/// again (`admin runs retry`), a reporter starts on it again, so GitHub sees the new
/// attempt's statuses on the same commit.
pub(crate) fn report_retries(github: &Rc<GitHubService>) {
    let weak = Rc::downgrade(github);
    github.queue.observe(move |run| {
        let Some(github) = weak.upgrade() else {
            return;
        };
        if run.state.status() == RunStatus::Queued {
            report_again(&github, run.submission);
        }
    });
}

/// Starts a reporter again on a submission whose reporting had finished (a run of it was
/// retried), unless one follows it now.
fn report_again(github: &Rc<GitHubService>, submission: SubmissionId) {
    if github.reporting.borrow().contains(&submission) {
        return;
    }
    let origin = match github
        .store
        .read(|txn| txn.get(GITHUB_REPORTED, &submission.get()))
    {
        Ok(Some(origin)) => origin,
        Ok(None) => return,
        Err(e) => {
            warn!(%submission, error = %e, "cannot read where a retried run reports");
            return;
        }
    };
    // Marked before anything awaits, so a second retried run joins this reporter.
    start(
        github,
        submission,
        origin.clone(),
        Vec::new(),
        Posted::Finals,
    );
    let id = submission.get();
    let committer = github.committer.clone();
    github.spawn(async move {
        // Reporting again: a restart resumes it like any unfinished report.
        let moved = committer
            .write(move |txn| {
                txn.put(GITHUB_SUBMISSIONS, &id, &origin)?;
                txn.delete(GITHUB_REPORTED, &id).map(drop)
            })
            .await;
        if let Err(e) = moved {
            warn!(%submission, error = %e, "cannot record that a retried run reports to GitHub");
        }
    });
}

/// Resumes reporting for every submission a previous process had not finished reporting on.
pub(crate) fn resume_reporting(github: &Rc<GitHubService>) {
    match crate::intake::reporting_submissions(github) {
        Ok(pending) => {
            for (submission, origin) in pending {
                start_reporting(github, submission, origin, Vec::new());
            }
        }
        Err(e) => warn!(error = %e, "cannot read which submissions still report to GitHub"),
    }
}

async fn report(
    github: Rc<GitHubService>,
    submission: SubmissionId,
    origin: GitHubOrigin,
    queued: Vec<StoredRun>,
    current: Vec<StoredRun>,
    mut feed: tokio::sync::mpsc::UnboundedReceiver<StoredRun>,
) {
    let following = Following(github.clone(), submission);
    let Some(client) = reporter_client(&github, &origin) else {
        return;
    };
    let Ok(repo) = origin.repo.parse::<RepoName>() else {
        return;
    };
    let mut open: BTreeSet<_> = current
        .iter()
        .filter(|r| !r.state.status().is_final())
        .map(StoredRun::id)
        .collect();
    for run in queued.iter().chain(&current) {
        post(&github, &client, &repo, &origin, run).await;
    }
    while !open.is_empty() {
        let Some(run) = feed.recv().await else {
            return;
        };
        post(&github, &client, &repo, &origin, &run).await;
        if run.state.status().is_final() {
            open.remove(&run.id());
        } else {
            // A run retried while others still went on: follow it too.
            open.insert(run.id());
        }
    }
    drop(feed);
    let id = submission.get();
    let runs = match github.queue.submission_runs(submission) {
        Ok(runs) => runs.iter().map(|r| r.id().get()).collect::<Vec<_>>(),
        Err(_) => current.iter().map(|r| r.id().get()).collect(),
    };
    let done = github
        .committer
        .write(move |txn| {
            txn.delete(GITHUB_SUBMISSIONS, &id)?;
            txn.put(GITHUB_REPORTED, &id, &origin)?;
            for run in runs {
                txn.delete(GITHUB_STATUSES, &run)?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = done {
        warn!(%submission, error = %e, "cannot record that GitHub reporting finished");
    }
    // A run retried while this reporter was finishing found it still marked: look again now
    // that the record says reporting finished.
    drop(following);
    let retried = github
        .queue
        .submission_runs(submission)
        .is_ok_and(|runs| runs.iter().any(|r| !r.state.status().is_final()));
    if retried {
        report_again(&github, submission);
    }
    debug!(%submission, "every run's final status is on GitHub");
}

/// Marks a submission as followed by a reporter for as long as it lives.
struct Following(Rc<GitHubService>, SubmissionId);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.reporting.borrow_mut().remove(&self.1);
    }
}

fn reporter_client(github: &GitHubService, origin: &GitHubOrigin) -> Option<GitHub> {
    let record = match repo_record(github, &origin.repo) {
        Ok(Some(record)) => record,
        Ok(None) => {
            warn!(repo = %origin.repo, "repository no longer known: statuses not reported");
            return None;
        }
        Err(e) => {
            warn!(repo = %origin.repo, error = %e, "cannot read the repository: statuses not reported");
            return None;
        }
    };
    match client_for(github, &record) {
        Ok(client) => Some(client),
        Err(e) => {
            warn!(repo = %origin.repo, error = %e, "statuses not reported");
            None
        }
    }
}

/// Posts the run's status unless it is the one last posted; records it once GitHub took it.
async fn post(
    github: &GitHubService,
    client: &GitHub,
    repo: &RepoName,
    origin: &GitHubOrigin,
    run: &StoredRun,
) {
    let public_url = github.public_url.as_deref();
    let status = status_of(run, public_url);
    let posted = PostedStatus {
        state: status.state.as_str().to_owned(),
        description: status.description.clone(),
        attempt: run.state.attempt(),
    };
    let id = run.id().get();
    match github.store.read(|txn| txn.get(GITHUB_STATUSES, &id)) {
        Ok(Some(last)) if last == posted => return,
        Ok(_) => {}
        Err(e) => warn!(run = %run.id(), error = %e, "cannot read the last posted status"),
    }
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=POST_ATTEMPTS {
        match client.set_status(repo, &origin.sha, &status).await {
            Ok(()) => break,
            Err(e)
                if attempt < POST_ATTEMPTS && e.status().is_none_or(|s| s >= 500 || s == 429) =>
            {
                warn!(run = %run.id(), attempt, error = %e, "posting a commit status failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                warn!(run = %run.id(), error = %e, "commit status not posted");
                return;
            }
        }
    }
    if let Err(e) = github
        .committer
        .write(move |txn| txn.put(GITHUB_STATUSES, &id, &posted))
        .await
    {
        warn!(run = %run.id(), error = %e, "cannot record the posted status");
    }
}
