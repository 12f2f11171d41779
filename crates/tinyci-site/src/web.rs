//! What the site hands its web side ([`tinyci_web`]): read-only views of runs copied out of
//! the queue, the logs and the artifacts, and for a signed-in browser, its grant redeemed for
//! an in-process [`Session`](crate::session::Session), exactly as a connection's token is.
//! The pages decide nothing of their own beyond `[http] public_repos`: what a signed-in user
//! sees or does is what that session's capabilities return (the grant, the capability held
//! now, and GitHub's word on the repository, cached for [`crate::access::ACCESS_TTL`]).
//!
//! The GitHub webhook and the OAuth login steps are `tinyci-github`'s
//! ([`tinyci_github::Endpoints`]); the site mints the grant a login ends with
//! ([`LoginGrants`]).

use std::rc::Rc;
use std::time::SystemTime;

use http::Request;
use hyper::body::Incoming;
use tinyci_core::{RunId, SubmissionId};
use tinyci_github::{Endpoints, LoginGrants, MintError, oauth};
use tinyci_pki::PeerIdentity;
use tinyci_queue::{StoredRun, StoredSubmission};
use tinyci_schema::log_observer;
use tinyci_web::{
    ArtifactFile, ArtifactView, Backend, Follow, LogPages, Reply, RunChanges, RunView, SignedIn,
    SubmissionView, ViewError, Viewer, WebSettings,
};
use tracing::{debug, warn};

use crate::Services;

/// How much of a log one read of a raw log download takes from the store: about what a client
/// that stops reading makes the site hold (hyper may hold the page being written and the next),
/// besides the socket's buffers. One stored record, as artifact downloads read 64 KiB.
const RAW_LOG_PAGE_BYTES: usize = 64 * 1024;

/// The site behind its HTTP listener.
pub(crate) struct SiteWeb {
    services: Rc<Services>,
    /// The webhook and login endpoints, with the signed-in browsers.
    endpoints: Endpoints,
    pub(crate) settings: WebSettings,
}

impl SiteWeb {
    pub(crate) fn new(
        services: Rc<Services>,
        rpc_addr: String,
        login_ca: Option<Rc<oauth::LoginCa>>,
        config: Option<&crate::config::HttpConfig>,
    ) -> Self {
        let settings = WebSettings {
            public_repos: config.map(|c| c.public_repos.clone()).unwrap_or_default(),
            public_url: config.and_then(|c| c.public_url.clone()),
            limits: tinyci_web::WebLimits::default(),
        };
        let endpoints = Endpoints::new(
            services.github.clone(),
            login_ca,
            rpc_addr,
            settings.https(),
            services.clock.0.clone(),
        );
        Self {
            services,
            endpoints,
            settings,
        }
    }

    /// The signed-in browser holding `cookie` and its user's name, read afresh (a user
    /// removed since is signed out).
    fn web_session(&self, cookie: &str) -> Option<oauth::WebSession> {
        let session = self.endpoints.web_session(cookie)?;
        match self.services.users.get(&session.user) {
            Ok(Some(_)) => Some(session),
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "cannot read the signed-in user");
                None
            }
        }
    }
}

fn run_view(run: StoredRun) -> RunView {
    RunView {
        id: run.id(),
        submission: run.submission,
        status: run.state.status(),
        attempt: run.state.attempt(),
        max_attempts: run.state.max_attempts(),
        created_at: run.state.created_at(),
        updated_at: run.state.updated_at(),
        repo: run.repo,
        git_ref: run.git_ref,
        sha: run.sha,
        task_dir: run.spec.task_dir,
        name: run.spec.name,
        queue: run.spec.queue.to_string(),
        runner: run.runner,
        started_at: run.started_at,
        message: run.message,
    }
}

fn submission_view(submission: StoredSubmission) -> SubmissionView {
    SubmissionView {
        id: submission.id,
        repo: submission.repo,
        git_ref: submission.git_ref,
        sha: submission.sha,
        title: submission.title,
        submitted_by: submission.submitted_by,
        created_at: submission.created_at,
    }
}

impl Backend for SiteWeb {
    fn now_ms(&self) -> u64 {
        self.services.now_ms()
    }

    fn ready(&self) -> Result<(), ViewError> {
        let read = self.services.store.read(|txn| {
            txn.get(tinyci_store::tables::META, tinyci_store::SCHEMA_VERSION_KEY)
                .map(|v| v.is_some())
        });
        match read {
            Ok(true) => Ok(()),
            Ok(false) => Err(ViewError::new(NotReady::NoSchema)),
            Err(e) => Err(ViewError::new(NotReady::Unreadable(e))),
        }
    }

    fn metrics(&self) -> String {
        self.services
            .metrics
            .render(&self.services.queue, self.services.now_ms())
    }

    async fn endpoint(&self, request: Request<Incoming>) -> Option<Reply> {
        self.endpoints.route(self, request).await
    }

    fn viewer(&self, cookie: Option<&str>) -> Viewer {
        let Some(web) = cookie.and_then(|c| self.web_session(c)) else {
            return Viewer::default();
        };
        let signed_in = Some(SignedIn {
            user: web.user.to_string(),
            csrf: web.csrf.clone(),
        });
        let services = &self.services;
        let redeemed = web.token.as_deref().and_then(|token| {
            let identity = PeerIdentity::member(
                services.grants.site().clone(),
                tinyci_pki::Role::User,
                web.user.as_str(),
            )
            .ok()?;
            match services.grants.redeem(token, &identity, services.now()) {
                Ok(redeemed) => Some((redeemed, identity)),
                Err(e) => {
                    debug!(user = %web.user, error = %e, "the browser's grant is gone");
                    None
                }
            }
        });
        let Some((redeemed, identity)) = redeemed else {
            return Viewer {
                signed_in,
                ..Viewer::default()
            };
        };
        let may_cancel = redeemed
            .token
            .grant()
            .rights
            .contains(&tinyci_grant::Right::RunsCancel);
        let liveness = redeemed.liveness.clone();
        let peer = tinyci_net::Peer {
            identity,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let session = crate::session::Session::new(services.clone(), redeemed, peer);
        Viewer {
            signed_in,
            session: Some(capnp_rpc::new_client(session)),
            may_cancel,
            grant_end: Some(Box::pin(async move { liveness.dead().await.to_string() })),
        }
    }

    fn signed_in(&self, cookie: &str) -> Option<SignedIn> {
        self.web_session(cookie).map(|web| SignedIn {
            user: web.user.to_string(),
            csrf: web.csrf,
        })
    }

    fn sign_out(&self, cookie: &str) {
        self.endpoints.sign_out(cookie);
    }

    fn recent_submissions(
        &self,
        before: Option<SubmissionId>,
        limit: usize,
    ) -> Result<Vec<SubmissionView>, ViewError> {
        let submissions = self
            .services
            .queue
            .submissions_before(before, limit)
            .map_err(ViewError::new)?;
        Ok(submissions.into_iter().map(submission_view).collect())
    }

    fn run(&self, id: RunId) -> Result<Option<RunView>, ViewError> {
        let run = self.services.queue.run(id).map_err(ViewError::new)?;
        Ok(run.map(run_view))
    }

    fn submission(&self, id: SubmissionId) -> Result<Option<SubmissionView>, ViewError> {
        let submission = self.services.queue.submission(id).map_err(ViewError::new)?;
        Ok(submission.map(submission_view))
    }

    fn submission_runs(&self, id: SubmissionId) -> Result<Vec<RunView>, ViewError> {
        let runs = self
            .services
            .queue
            .submission_runs(id)
            .map_err(ViewError::new)?;
        Ok(runs.into_iter().map(run_view).collect())
    }

    fn tier(&self, run: &RunView) -> Option<String> {
        let stored = self.services.queue.run(run.id).ok().flatten()?;
        self.services.queue.tier(&stored).map(|t| t.to_string())
    }

    fn waiting_reason(&self, id: RunId) -> Option<String> {
        self.services.queue.waiting_reason(id)
    }

    fn watch(&self, submission: SubmissionId) -> RunChanges {
        let changes = self.services.queue.watch(submission);
        Box::pin(futures::stream::unfold(changes, |mut changes| async move {
            let run = changes.recv().await?;
            Some((run_view(run), changes))
        }))
    }

    async fn log_tail(&self, run: RunId, max: u64) -> Result<(u64, Vec<u8>), ViewError> {
        self.services
            .logs
            .tail(run.get(), max)
            .await
            .map_err(ViewError::new)
    }

    fn log(&self, run: RunId) -> LogPages {
        let logs = self.services.logs.clone();
        // `None` once the log is read to its end or a read failed.
        Box::pin(futures::stream::unfold(Some(0u64), move |from| {
            let logs = logs.clone();
            async move {
                let from = from?;
                match logs.read(run.get(), from, RAW_LOG_PAGE_BYTES).await {
                    Ok(chunks) if chunks.is_empty() => None,
                    Ok(chunks) => {
                        let page: Vec<u8> = chunks.into_iter().flat_map(|(_, c)| c.data).collect();
                        let next = from + page.len() as u64;
                        Some((Ok(page), Some(next)))
                    }
                    Err(e) => Some((Err(ViewError::new(e)), None)),
                }
            }
        }))
    }

    fn follow(&self, run: RunId, from: u64, observer: log_observer::Client) -> Follow {
        let handles = self.services.run_handles();
        let stored = self.services.queue.run(run);
        Box::pin(async move {
            let run = stored
                .map_err(ViewError::new)?
                .ok_or_else(|| ViewError::new(NoSuchRun(run)))?;
            crate::logs::follow(&handles, &run, from, observer)
                .await
                .map_err(ViewError::new)
        })
    }

    fn artifacts(&self, run: RunId) -> Result<Vec<ArtifactView>, ViewError> {
        let records = self
            .services
            .artifacts
            .list(run.get())
            .map_err(ViewError::new)?;
        Ok(records
            .into_iter()
            .map(|r| ArtifactView {
                name: r.name,
                size: r.size,
            })
            .collect())
    }

    fn artifact(&self, run: RunId, name: &str) -> Result<Option<ArtifactFile>, ViewError> {
        match self.services.artifacts.get(run.get(), name) {
            Ok(record) => Ok(Some(ArtifactFile {
                path: self.services.artifacts.blob(&record.sha256),
                size: record.size,
            })),
            Err(tinyci_assets::ArtifactError::Missing { .. }) => Ok(None),
            Err(e) => Err(ViewError::new(e)),
        }
    }
}

impl LoginGrants for SiteWeb {
    fn site(&self) -> String {
        self.services.grants.site().to_string()
    }

    async fn mint(
        &self,
        user: &tinyci_users::User,
        expires_at: SystemTime,
        issued_by: &'static str,
    ) -> Result<Option<String>, MintError> {
        let services = &self.services;
        let spec = match tinyci_users::grant_spec(
            &self.site(),
            &user.name,
            &user.capabilities,
            Some(expires_at),
        ) {
            Ok(spec) => spec,
            Err(tinyci_users::UsersError::NoCapabilities { .. }) => return Ok(None),
            Err(e) => return Err(MintError::new(e)),
        };
        let (token, grant) = services.grants.mint(&spec).map_err(MintError::new)?;
        let (key, record) =
            tinyci_identity::issued_record(&grant, issued_by, services.now_ms() / 1000);
        services
            .committer
            .write(move |txn| txn.put(tinyci_store::tables::GRANTS, key.as_str(), &record))
            .await
            .map_err(MintError::new)?;
        Ok(Some(token))
    }
}

/// Why `/readyz` says the site is not ready.
#[derive(Debug, thiserror::Error)]
enum NotReady {
    /// Not a tinyci store, or one being created.
    #[error("store has no schema version")]
    NoSchema,
    #[error("store unreadable")]
    Unreadable(#[source] tinyci_store::StoreError),
}

#[derive(Debug, thiserror::Error)]
#[error("run {0} is gone")]
struct NoSuchRun(RunId);
