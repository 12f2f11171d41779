//! The capabilities a session hands out. Each is bound to the scope it was authorized for and
//! to its session's [`Liveness`], which it checks first on every call; none of them ever sees
//! a token. The services behind submitters, workers and log readers arrive with the jobs and
//! logs work; until then these objects exist, are scoped, and die on revocation or expiry.

use std::rc::Rc;

use tinyci_pki::PeerIdentity;
use tinyci_schema::{admin, log_reader, submitter, worker};
use tracing::info;

use crate::Services;
use crate::membrane::Liveness;
use crate::rpc::{not_yet, read_text};
use crate::session::len;

/// `Submitter` for one repository.
pub(crate) struct SubmitterCap {
    services: Rc<Services>,
    repo: String,
    liveness: Rc<Liveness>,
}

impl SubmitterCap {
    pub(crate) fn new(services: Rc<Services>, repo: String, liveness: Rc<Liveness>) -> Self {
        Self {
            services,
            repo,
            liveness,
        }
    }
}

impl submitter::Server for SubmitterCap {
    async fn upload(
        self: Rc<Self>,
        _: submitter::UploadParams,
        mut results: submitter::UploadResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let upload = self
            .services
            .sources
            .upload()
            .map_err(|e| capnp::Error::failed(format!("cannot start an upload: {e}")))?;
        results.get().set_sink(capnp_rpc::new_client(upload));
        Ok(())
    }

    async fn submit(
        self: Rc<Self>,
        _: submitter::SubmitParams,
        _: submitter::SubmitResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        Err(not_yet("Submitter.submit", "submitting runs"))
    }

    async fn ticket(
        self: Rc<Self>,
        params: submitter::TicketParams,
        _: submitter::TicketResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let id = read_text(params.get()?.get_submission_id(), "submissionId")?;
        Err(capnp::Error::failed(format!(
            "no submission {id:?} in repository {}",
            self.repo
        )))
    }
}

/// `Worker` for one queue and one runner.
pub(crate) struct WorkerCap {
    queue: String,
    runner: String,
    liveness: Rc<Liveness>,
}

impl WorkerCap {
    pub(crate) fn new(queue: String, runner: String, liveness: Rc<Liveness>) -> Self {
        Self {
            queue,
            runner,
            liveness,
        }
    }
}

impl worker::Server for WorkerCap {
    /// Parks until a job is leased to this worker. No queue feeds workers yet, so the call
    /// resolves only when the capability dies, with the reason.
    async fn next(
        self: Rc<Self>,
        _: worker::NextParams,
        _: worker::NextResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        info!(queue = %self.queue, runner = %self.runner, "worker waiting for a job");
        Err(self.liveness.dead().await)
    }
}

/// `LogReader` for one repository.
pub(crate) struct LogReaderCap {
    repo: String,
    liveness: Rc<Liveness>,
}

impl LogReaderCap {
    pub(crate) fn new(repo: String, liveness: Rc<Liveness>) -> Self {
        Self { repo, liveness }
    }

    fn unavailable(&self, method: &str) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        Err(not_yet(method, &format!("reading logs of {}", self.repo)))
    }
}

impl log_reader::Server for LogReaderCap {
    async fn read(
        self: Rc<Self>,
        _: log_reader::ReadParams,
        _: log_reader::ReadResults,
    ) -> Result<(), capnp::Error> {
        self.unavailable("LogReader.read")
    }

    async fn follow(
        self: Rc<Self>,
        _: log_reader::FollowParams,
        _: log_reader::FollowResults,
    ) -> Result<(), capnp::Error> {
        self.unavailable("LogReader.follow")
    }

    async fn artifacts(
        self: Rc<Self>,
        _: log_reader::ArtifactsParams,
        _: log_reader::ArtifactsResults,
    ) -> Result<(), capnp::Error> {
        self.unavailable("LogReader.artifacts")
    }

    async fn download(
        self: Rc<Self>,
        _: log_reader::DownloadParams,
        _: log_reader::DownloadResults,
    ) -> Result<(), capnp::Error> {
        self.unavailable("LogReader.download")
    }
}

/// `Admin` for the whole site.
pub(crate) struct AdminCap {
    services: Rc<Services>,
    peer: PeerIdentity,
    liveness: Rc<Liveness>,
}

impl AdminCap {
    pub(crate) fn new(
        services: Rc<Services>,
        peer: PeerIdentity,
        liveness: Rc<Liveness>,
    ) -> Self {
        Self {
            services,
            peer,
            liveness,
        }
    }
}

impl admin::Server for AdminCap {
    async fn grants(
        self: Rc<Self>,
        _: admin::GrantsParams,
        mut results: admin::GrantsResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let issued = self
            .services
            .grants
            .issued()
            .await
            .map_err(|e| capnp::Error::failed(format!("failed to read grants: {e}")))?;
        let mut list = results.get().init_grants(len(issued.len()));
        for (i, (record, revoked)) in issued.iter().enumerate() {
            let mut entry = list.reborrow().get(len(i));
            entry.set_issued_by(&record.issued_by);
            entry.set_issued_at(secs_to_millis(record.issued_at));
            entry.set_revoked(*revoked);
            let mut grant = entry.init_grant();
            grant.set_holder(&record.holder);
            set_list(
                grant.reborrow().init_rights(len(record.rights.len())),
                &record.rights,
            );
            set_list(
                grant.reborrow().init_repos(len(record.repos.len())),
                &record.repos,
            );
            set_list(
                grant.reborrow().init_queues(len(record.queues.len())),
                &record.queues,
            );
            grant.set_expires_at(record.expires_at.map_or(0, secs_to_millis));
            set_list(
                grant
                    .reborrow()
                    .init_revocation_ids(len(record.revocation_ids.len())),
                &record.revocation_ids,
            );
        }
        Ok(())
    }

    async fn revoke(
        self: Rc<Self>,
        params: admin::RevokeParams,
        mut results: admin::RevokeResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let target = read_text(params.get()?.get_token_or_id(), "tokenOrId")?;
        let (ids, killed) = self
            .services
            .grants
            .revoke(&target, &self.peer)
            .await
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        info!(ids = ?ids, live_sessions_cut = killed, "revoked");
        set_list(results.get().init_revoked_ids(len(ids.len())), &ids);
        Ok(())
    }
}

fn set_list(mut list: capnp::text_list::Builder<'_>, items: &[String]) {
    for (i, item) in items.iter().enumerate() {
        list.set(len(i), item.as_str());
    }
}

fn secs_to_millis(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}
