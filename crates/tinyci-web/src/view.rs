//! What the site hands the pages: read-only views of its runs (copied out of its records, so
//! a page can hold no handle on the store or the queue), who is asking, and the one trait the
//! site implements to answer.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use futures::Stream;
use http::Request;
use hyper::body::Incoming;
use tinyci_core::{RunId, RunStatus, SubmissionId};
use tinyci_schema::{log_observer, session};

use crate::server::Reply;

/// One run, as a page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunView {
    pub id: RunId,
    pub submission: SubmissionId,
    /// `owner/name`.
    pub repo: String,
    pub git_ref: String,
    pub sha: String,
    /// The task's directory in the source tree.
    pub task_dir: String,
    /// The run's name in its task file.
    pub name: String,
    pub queue: String,
    /// The runner holding or last holding it.
    pub runner: Option<String>,
    pub status: RunStatus,
    pub attempt: u32,
    pub max_attempts: u32,
    /// Milliseconds since the epoch, as are the other times.
    pub created_at: u64,
    pub started_at: Option<u64>,
    /// When its state last changed: its end, once it is final.
    pub updated_at: u64,
    /// Why it ended as it did, for people.
    pub message: Option<String>,
}

/// One submission, as a page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmissionView {
    pub id: SubmissionId,
    pub repo: String,
    pub git_ref: String,
    pub sha: String,
    pub title: String,
    pub submitted_by: String,
    pub created_at: u64,
}

/// One artifact of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactView {
    /// Its path relative to the run's source tree.
    pub name: String,
    pub size: u64,
}

/// Where an artifact's bytes are, to stream them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactFile {
    pub path: PathBuf,
    /// The recorded size: the download sends exactly this much or fails.
    pub size: u64,
}

/// The site could not answer a page (its store failed): said on an "unavailable" page.
#[derive(Debug, thiserror::Error)]
#[error("{}", tinyci_core::error_chain(.0.as_ref()))]
pub struct ViewError(Box<dyn std::error::Error + 'static>);

impl ViewError {
    pub fn new(error: impl std::error::Error + 'static) -> Self {
        Self(Box::new(error))
    }
}

/// A browser signed in through GitHub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedIn {
    /// The site user it is signed in as.
    pub user: String,
    /// The session's anti-forgery token, which every form it posts must carry.
    pub csrf: String,
}

/// Resolves with why a grant ended, once it does.
pub type GrantEnd = Pin<Box<dyn Future<Output = String>>>;

/// Who is asking, as the site established it from the session cookie.
#[derive(Default)]
pub struct Viewer {
    /// The signed-in browser, if any.
    pub signed_in: Option<SignedIn>,
    /// The signed-in user's in-process session: their browser's grant, redeemed for this
    /// request exactly as a connection's token is. It is the pages' only authority over what
    /// is not public. `None`: anonymous, or a grant that is gone (revoked, expired).
    pub session: Option<session::Client>,
    /// Whether that grant holds `runs:cancel`, to decide which buttons to show (pressing one
    /// still goes through `session`).
    pub may_cancel: bool,
    /// Resolves when that grant dies: a live log stream ends with it, as an RPC follower's
    /// does.
    pub grant_end: Option<GrantEnd>,
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("signed_in", &self.signed_in)
            .field("session", &self.session.is_some())
            .field("may_cancel", &self.may_cancel)
            .finish_non_exhaustive()
    }
}

/// A run's changes, in order.
pub type RunChanges = Pin<Box<dyn Stream<Item = RunView>>>;

/// A stored log's bytes in order, read as they are taken.
pub type LogPages = Pin<Box<dyn Stream<Item = Result<Vec<u8>, ViewError>>>>;

/// A log follow in progress: resolves when the run is done and its observer told, or with
/// why it stopped.
pub type Follow = Pin<Box<dyn Future<Output = Result<(), ViewError>>>>;

/// What the site behind the web answers. Reads are views; authority is the [`Viewer`]'s
/// session capability. Runs on the site's thread (capabilities are `!Send`).
#[allow(async_fn_in_trait)]
pub trait Backend: 'static {
    /// Milliseconds since the epoch, on the site's clock.
    fn now_ms(&self) -> u64;
    /// `Ok` when the site's store answers a read.
    fn ready(&self) -> Result<(), ViewError>;
    /// The Prometheus text exposition of the site's metrics.
    fn metrics(&self) -> String;
    /// Answers an endpoint that is not a page (`/hooks/…`, `/oauth/…`), or `None` when
    /// there is none at that path.
    async fn endpoint(&self, request: Request<Incoming>) -> Option<Reply>;

    /// Who holds `cookie` (the session cookie's value, if sent).
    fn viewer(&self, cookie: Option<&str>) -> Viewer;
    /// The signed-in browser holding `cookie`, without redeeming its grant.
    fn signed_in(&self, cookie: &str) -> Option<SignedIn>;
    /// Forgets the browser session holding `cookie`.
    fn sign_out(&self, cookie: &str);

    /// Up to `limit` submissions older than `before` (from the newest, when `None`), newest
    /// first.
    fn recent_submissions(
        &self,
        before: Option<SubmissionId>,
        limit: usize,
    ) -> Result<Vec<SubmissionView>, ViewError>;
    fn run(&self, id: RunId) -> Result<Option<RunView>, ViewError>;
    fn submission(&self, id: SubmissionId) -> Result<Option<SubmissionView>, ViewError>;
    /// A submission's runs, in plan order.
    fn submission_runs(&self, id: SubmissionId) -> Result<Vec<RunView>, ViewError>;
    /// The trust tier `run`'s submission was given, in words (asked by the run page only: a
    /// finished run's tier is read from its submission's record).
    fn tier(&self, run: &RunView) -> Option<String>;
    /// Why a queued run is still waiting, when the queue can say.
    fn waiting_reason(&self, id: RunId) -> Option<String>;
    /// The changes of a submission's runs from now on.
    fn watch(&self, submission: SubmissionId) -> RunChanges;

    /// The last (at most) `max` bytes of a run's stored log and the offset they start at.
    async fn log_tail(&self, run: RunId, max: u64) -> Result<(u64, Vec<u8>), ViewError>;
    /// A run's whole stored log, a page at a time as the client takes it (never the whole log
    /// in memory: logs run to hundreds of MiB).
    fn log(&self, run: RunId) -> LogPages;
    /// Follows `run`'s log from `from` into `observer`, as `LogReader.follow` does.
    fn follow(&self, run: RunId, from: u64, observer: log_observer::Client) -> Follow;
    fn artifacts(&self, run: RunId) -> Result<Vec<ArtifactView>, ViewError>;
    /// Where an artifact's bytes are; `None` when the run has no artifact of that name.
    fn artifact(&self, run: RunId, name: &str) -> Result<Option<ArtifactFile>, ViewError>;
}

/// The settings the pages need.
#[derive(Clone, Debug, Default)]
pub struct WebSettings {
    /// `[http] public_repos`: readable by anyone.
    pub public_repos: BTreeSet<String>,
    /// `[http] public_url`, for checking where a form was posted from and whether cookies are
    /// `Secure`.
    pub public_url: Option<String>,
    /// What clients can make the listener hold.
    pub limits: crate::WebLimits,
}

impl WebSettings {
    /// Whether browsers reach the site over HTTPS (cookies are then `Secure`).
    pub fn https(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }
}
