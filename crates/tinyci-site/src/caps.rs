//! The capabilities a session hands out. Each is bound to the scope it was authorized for and
//! to its session's [`Liveness`], which it checks first on every call; none of them ever sees
//! a token. The services behind submitters, workers and log readers arrive with the jobs and
//! logs work; until then these objects exist, are scoped, and die on revocation or expiry.

use std::rc::Rc;

use tinyci_core::{RunId, RunStatus, SubmissionId};
use tinyci_pki::PeerIdentity;
use tinyci_schema::{admin, log_reader, submitter};
use tracing::info;

use crate::access::{ActingUser, Want};
use crate::denied::Denied;
use crate::jobs::{TicketCap, fill_run_info};
use crate::membrane::Liveness;
use crate::rpc::read_text;
use crate::session::len;
use crate::{RunHandles, Services};

/// `Submitter` for one repository.
pub(crate) struct SubmitterCap {
    handles: RunHandles,
    repo: String,
    /// Who submits (the peer's identity), recorded on each submission.
    submitted_by: String,
    /// Where the work comes from, established from that identity.
    tier: tinyci_core::TrustTier,
    /// Whether the holder has `runs:cancel` on the repository (else why not): its
    /// submissions supersede older ones, and its tickets cancel, only then.
    cancel: Result<(), Denied>,
    /// A site user's submitter: each submission asks again whether they hold `submit` and
    /// GitHub lets them push ([`crate::access`]), so losing either applies at once.
    user: Option<ActingUser>,
    liveness: Rc<Liveness>,
}

impl SubmitterCap {
    pub(crate) fn new(
        handles: RunHandles,
        repo: String,
        submitted_by: String,
        tier: tinyci_core::TrustTier,
        cancel: Result<(), Denied>,
        user: Option<ActingUser>,
        liveness: Rc<Liveness>,
    ) -> Self {
        Self {
            handles,
            repo,
            submitted_by,
            tier,
            cancel,
            user,
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
        let (place, limit) = self
            .handles
            .uploads
            .begin(&self.submitted_by, self.handles.now_ms())
            .map_err(|e| crate::rpc::failed_as("source upload refused", &e))?;
        let upload = self
            .handles
            .sources
            .upload_at_most(limit)
            .map_err(|e| crate::rpc::failed(&e))?;
        results.get().set_sink(crate::rpc::observed(
            &self.handles.metrics,
            crate::sources::Upload::new(
                upload,
                place,
                self.liveness.clone(),
                self.handles.clock.clone(),
            ),
        ));
        Ok(())
    }

    async fn submit(
        self: Rc<Self>,
        params: submitter::SubmitParams,
        mut results: submitter::SubmitResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let mut supersede = self.cancel.is_ok();
        if let Some(user) = &self.user {
            user.may(tinyci_users::Capability::Submit, &self.repo, Want::Write)
                .await
                .map_err(|why| {
                    crate::rpc::failed_as(
                        &format!("denied queue:submit on repo {}", self.repo),
                        &why,
                    )
                })?;
            supersede = supersede
                && user
                    .may(tinyci_users::Capability::Cancel, &self.repo, Want::Write)
                    .await
                    .is_ok();
        }
        let submission = crate::jobs::submit(
            &self.handles,
            &self.repo,
            &self.submitted_by,
            &self.tier,
            supersede,
            params.get()?,
        )
        .await?;
        let ticket = TicketCap::new(
            self.handles.clone(),
            submission.id,
            self.cancel.clone(),
            self.submitted_by.clone(),
            self.user.clone(),
            self.liveness.clone(),
        );
        results
            .get()
            .set_ticket(crate::rpc::observed(&self.handles.metrics, ticket));
        Ok(())
    }

    async fn ticket(
        self: Rc<Self>,
        params: submitter::TicketParams,
        mut results: submitter::TicketResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let id = read_text(params.get()?.get_submission_id(), "submissionId")?;
        let not_found =
            || capnp::Error::failed(format!("no submission {id:?} in repository {}", self.repo));
        let parsed: SubmissionId = id.parse().map_err(|_| not_found())?;
        // A submitter for one repository sees only that repository's submissions.
        match self.handles.queue.submission(parsed) {
            Ok(Some(s)) if s.repo == self.repo => {}
            _ => return Err(not_found()),
        }
        let ticket = TicketCap::new(
            self.handles.clone(),
            parsed,
            self.cancel.clone(),
            self.submitted_by.clone(),
            self.user.clone(),
            self.liveness.clone(),
        );
        results
            .get()
            .set_ticket(crate::rpc::observed(&self.handles.metrics, ticket));
        Ok(())
    }
}

/// `LogReader` for one repository (`*` for every repository, for operators).
pub(crate) struct LogReaderCap {
    handles: RunHandles,
    repo: String,
    /// Whether the holder has `assets:read` on the repository (else why not): artifact
    /// lists and downloads need it; logs do not.
    assets: Result<(), Denied>,
    /// A site user's reader: each run is shown only if they may read its repository now
    /// ([`crate::access`], as on the pages).
    user: Option<ActingUser>,
    /// `runs:cancel` of the holder's grant, on a repository: the tickets this reader hands
    /// out cancel only with it.
    cancel: crate::session::RightCheck,
    /// Who holds it (a peer identity), recorded on what its tickets retry.
    holder: String,
    liveness: Rc<Liveness>,
}

/// Most log bytes one `read` returns: one stored record. Small, because it is also the
/// largest reply a connection's unanswered calls can each make us hold
/// (`NetLimits::max_outstanding_calls` of them).
const MAX_READ: u32 = 64 * 1024;

impl LogReaderCap {
    pub(crate) fn new(
        handles: RunHandles,
        repo: String,
        assets: Result<(), Denied>,
        user: Option<ActingUser>,
        cancel: crate::session::RightCheck,
        holder: String,
        liveness: Rc<Liveness>,
    ) -> Self {
        Self {
            handles,
            repo,
            assets,
            user,
            cancel,
            holder,
            liveness,
        }
    }

    /// Refuses artifact access to a holder without `assets:read`.
    fn check_assets(&self) -> Result<(), capnp::Error> {
        self.assets.clone().map_err(|denied| denied.to_rpc())
    }

    /// The run, if it exists, belongs to this reader's repository and (for a site user)
    /// GitHub lets them read that repository now. Anything else is "no run", alike.
    async fn find_run(&self, id: &str) -> Result<tinyci_queue::StoredRun, capnp::Error> {
        let not_found =
            || capnp::Error::failed(format!("no run {id:?} in repository {}", self.repo));
        let parsed: RunId = id.parse().map_err(|_| not_found())?;
        let run = match self.handles.queue.run(parsed) {
            Ok(Some(run)) if self.repo == "*" || run.repo == self.repo => run,
            Ok(_) => return Err(not_found()),
            Err(e) => return Err(capnp::Error::failed(e.to_string())),
        };
        let readable = self
            .user_may(tinyci_users::Capability::Logs, &run.repo, Want::Read)
            .await;
        if let Err(why) = readable {
            info!(run = %parsed, reason = %crate::rpc::chain(&why), "log reader refused a run");
            return Err(not_found());
        }
        Ok(run)
    }

    /// For a site user's reader: whether they may exercise `capability` with `want` on
    /// `repo` now ([`crate::access`], as on the pages). Anyone else: yes.
    async fn user_may(
        &self,
        capability: tinyci_users::Capability,
        repo: &str,
        want: Want,
    ) -> Result<(), Denied> {
        match &self.user {
            None => Ok(()),
            Some(user) => user.may(capability, repo, want).await,
        }
    }
}

impl log_reader::Server for LogReaderCap {
    async fn read(
        self: Rc<Self>,
        params: log_reader::ReadParams,
        mut results: log_reader::ReadResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let id = read_text(params.get_run(), "run")?;
        let run = self.find_run(&id).await?;
        let from = params.get_from();
        let max = params.get_max().clamp(1, MAX_READ) as usize;
        let run_id = run.id().get();
        let logs = &self.handles.logs;
        let chunks = logs
            .read(run_id, from, max)
            .await
            .map_err(|e| crate::rpc::failed(&e))?;
        let status = run.state.status();
        let returned: u64 = chunks.iter().map(|(_, c)| c.data.len() as u64).sum();
        // Done once the run is over and this read reached the end of what was stored.
        let stored_end = logs
            .stored_length(run_id)
            .await
            .map_err(|e| crate::rpc::failed(&e))?;
        let done = status.is_final() && from + returned >= stored_end;
        let mut out = results.get();
        out.set_done(done);
        out.set_status(crate::jobs::wire_status(status));
        let mut list = out.init_chunks(len(chunks.len()));
        for (i, (offset, chunk)) in chunks.iter().enumerate() {
            let mut c = list.reborrow().get(len(i));
            c.set_offset(*offset);
            c.set_stream(crate::logs::wire_stream(chunk.stream));
            c.set_timestamp_micros(chunk.timestamp_micros);
            c.set_data(&chunk.data);
        }
        Ok(())
    }

    async fn follow(
        self: Rc<Self>,
        params: log_reader::FollowParams,
        mut results: log_reader::FollowResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let id = read_text(params.get_run(), "run")?;
        let run = self.find_run(&id).await?;
        let from = params.get_from();
        let observer = params.get_observer()?;
        let services = self.handles.clone();
        let run_id = run.id();
        let liveness = self.liveness.clone();
        let task = tokio::task::spawn_local(async move {
            let follow = crate::logs::follow(&services, &run, from, observer);
            // A revoked or expired grant ends the follow too.
            tokio::select! {
                result = follow => {
                    if let Err(e) = result {
                        tracing::debug!(run = %run_id, error = %crate::rpc::chain(&e), "follow ended");
                    }
                }
                why = liveness.dead() => {
                    tracing::debug!(run = %run_id, error = %why, "follow ended");
                }
            }
        });
        results.get().set_handle(crate::rpc::observed(
            &self.handles.metrics,
            crate::jobs::WatchHandle(task),
        ));
        Ok(())
    }

    async fn artifacts(
        self: Rc<Self>,
        params: log_reader::ArtifactsParams,
        mut results: log_reader::ArtifactsResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        self.check_assets()?;
        let id = read_text(params.get()?.get_run(), "run")?;
        // The same repository scoping as `read`: another repository's run is "no run".
        let run = self.find_run(&id).await?;
        let records = self
            .handles
            .artifacts
            .list(run.id().get())
            .map_err(|e| crate::rpc::failed(&e))?;
        crate::assets::fill_list(results.get().init_artifacts(len(records.len())), &records);
        Ok(())
    }

    async fn download(
        self: Rc<Self>,
        params: log_reader::DownloadParams,
        _: log_reader::DownloadResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        self.check_assets()?;
        let params = params.get()?;
        let id = read_text(params.get_run(), "run")?;
        let name = read_text(params.get_name(), "name")?;
        let sink = params.get_sink()?;
        let run = self.find_run(&id).await?;
        crate::assets::download(&self.handles.artifacts, run.id(), &name, sink).await
    }

    async fn run(
        self: Rc<Self>,
        params: log_reader::RunParams,
        mut results: log_reader::RunResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let id = read_text(params.get()?.get_id(), "id")?;
        let run = self.find_run(&id).await?;
        fill_run_info(results.get().init_run(), &run, &self.handles.queue);
        Ok(())
    }

    async fn ticket(
        self: Rc<Self>,
        params: log_reader::TicketParams,
        mut results: log_reader::TicketResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let id = read_text(params.get()?.get_submission_id(), "submissionId")?;
        let not_found =
            || capnp::Error::failed(format!("no submission {id:?} in repository {}", self.repo));
        let parsed: SubmissionId = id.parse().map_err(|_| not_found())?;
        let submission = match self.handles.queue.submission(parsed) {
            Ok(Some(s)) if self.repo == "*" || s.repo == self.repo => s,
            Ok(_) => return Err(not_found()),
            Err(e) => return Err(capnp::Error::failed(e.to_string())),
        };
        // A site user sees only what GitHub lets them read, and cancels only where it lets
        // them push.
        let repo = &submission.repo;
        if self
            .user_may(tinyci_users::Capability::Logs, repo, Want::Read)
            .await
            .is_err()
        {
            return Err(not_found());
        }
        let mut cancel = (self.cancel)(repo);
        if cancel.is_ok() {
            cancel = self
                .user_may(tinyci_users::Capability::Cancel, repo, Want::Write)
                .await;
        }
        let ticket = TicketCap::new(
            self.handles.clone(),
            parsed,
            cancel,
            self.holder.clone(),
            self.user.clone(),
            self.liveness.clone(),
        );
        results
            .get()
            .set_ticket(crate::rpc::observed(&self.handles.metrics, ticket));
        Ok(())
    }
}

/// `Admin` for the whole site.
pub(crate) struct AdminCap {
    services: Rc<Services>,
    peer: PeerIdentity,
    liveness: Rc<Liveness>,
}

impl AdminCap {
    pub(crate) fn new(services: Rc<Services>, peer: PeerIdentity, liveness: Rc<Liveness>) -> Self {
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

    async fn runs(
        self: Rc<Self>,
        params: admin::RunsParams,
        mut results: admin::RunsResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let filter = params.get()?.get_filter()?;
        let repo = read_text(filter.get_repo(), "filter.repo")?;
        let git_ref = read_text(filter.get_ref(), "filter.ref")?;
        let status = read_text(filter.get_status(), "filter.status")?;
        let limit = match filter.get_limit() {
            0 => 100,
            n => n.min(10_000) as usize,
        };
        let status = match status.as_str() {
            "" => None,
            word => Some(RunStatus::from_word(word).ok_or_else(|| {
                capnp::Error::failed(format!(
                    "unknown run status {word:?} in the filter: one of {}",
                    RunStatus::WORDS.join(", ")
                ))
            })?),
        };
        let filter = tinyci_queue::RunFilter {
            repo: (!repo.is_empty()).then_some(repo),
            git_ref: (!git_ref.is_empty()).then_some(git_ref),
            status,
        };
        // Newest first through the store's indexes: older matches are found however many
        // runs came after them, at the cost of what is returned.
        let selected = self
            .services
            .queue
            .runs_matching(&filter, limit)
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        let mut list = results.get().init_runs(len(selected.len()));
        for (i, run) in selected.iter().enumerate() {
            fill_run_info(list.reborrow().get(len(i)), run, &self.services.queue);
        }
        Ok(())
    }

    async fn runners(
        self: Rc<Self>,
        _: admin::RunnersParams,
        mut results: admin::RunnersResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let mut runners = self.services.queue.runners();
        let held = self.services.queue.held_runners();
        // Runners an operator paused or drained show while away too: that is how to find one
        // to resume.
        for name in held.keys() {
            runners.entry(name.clone()).or_default();
        }
        let mut list = results.get().init_runners(len(runners.len()));
        for (i, (name, activity)) in runners.iter().enumerate() {
            let mut r = list.reborrow().get(len(i));
            let mut info = r.reborrow().init_info();
            info.set_name(name);
            if let Some(profile) = &activity.profile {
                info.set_hostname(&profile.hostname);
                info.set_version(&profile.version);
                info.set_slots(profile.slots);
                let mut executors = info.reborrow().init_executors(len(profile.executors.len()));
                for (j, e) in profile.executors.iter().enumerate() {
                    executors.set(len(j), e.as_str());
                }
            }
            if let Some(offer) = &activity.offer {
                info.set_allow_privileged(offer.privileged);
                let mut labels = info.init_labels(len(offer.labels.len()));
                for (j, l) in offer.labels.iter().enumerate() {
                    labels.set(len(j), l.as_str());
                }
                r.set_isolation(offer.to_string());
            }
            if let Some(profile) = &activity.profile {
                r.set_connected_at(i64::try_from(profile.connected_at).unwrap_or(i64::MAX));
                r.set_identity(&profile.identity);
            }
            let mode = held.get(name);
            r.set_paused(mode == Some(&tinyci_queue::RunnerMode::Paused));
            r.set_draining(mode == Some(&tinyci_queue::RunnerMode::Draining));
            let mut queues = r.reborrow().init_queues(len(activity.waiting_on.len()));
            for (j, q) in activity.waiting_on.iter().enumerate() {
                queues.set(len(j), q.as_str());
            }
            let mut runs = r.reborrow().init_active_runs(len(activity.holding.len()));
            for (j, run) in activity.holding.iter().enumerate() {
                runs.set(len(j), run.to_string());
            }
        }
        Ok(())
    }

    async fn queues(
        self: Rc<Self>,
        _: admin::QueuesParams,
        mut results: admin::QueuesResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let queues = self.services.queue.queues();
        let mut list = results.get().init_queues(len(queues.len()));
        for (i, (name, stats)) in queues.iter().enumerate() {
            let mut q = list.reborrow().get(len(i));
            q.set_name(name);
            q.set_depth(len(stats.depth));
            q.set_leased(len(stats.active));
            q.set_paused(stats.paused);
            let mut groups = q.init_groups(len(stats.groups.len()));
            for (j, (group, g)) in stats.groups.iter().enumerate() {
                let mut out = groups.reborrow().get(len(j));
                out.set_group(group);
                out.set_weight(g.weight);
                out.set_queued(len(g.queued));
                out.set_active(len(g.active));
                out.set_leased(g.leased);
            }
        }
        Ok(())
    }

    async fn retry(
        self: Rc<Self>,
        params: admin::RetryParams,
        mut results: admin::RetryResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let id = read_text(params.get()?.get_run_id(), "runId")?;
        let run = parse_run_id(&id)?;
        let retried = crate::jobs::retry_run(&self.services.queue, run, &self.peer.to_string())
            .await
            .map_err(|e| crate::rpc::failed(&e))?;
        fill_run_info(results.get().init_run(), &retried, &self.services.queue);
        Ok(())
    }

    async fn retry_failed(
        self: Rc<Self>,
        params: admin::RetryFailedParams,
        mut results: admin::RetryFailedResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let id = read_text(params.get()?.get_submission_id(), "submissionId")?;
        let submission: tinyci_core::SubmissionId = id
            .parse()
            .map_err(|_| capnp::Error::failed(format!("{id:?} is not a submission id (s-N)")))?;
        let retried =
            crate::jobs::retry_failed(&self.services.queue, submission, &self.peer.to_string())
                .await
                .map_err(|e| crate::rpc::failed(&e))?;
        let mut list = results.get().init_runs(len(retried.len()));
        for (i, run) in retried.iter().enumerate() {
            fill_run_info(list.reborrow().get(len(i)), run, &self.services.queue);
        }
        Ok(())
    }

    async fn status(
        self: Rc<Self>,
        _: admin::StatusParams,
        mut results: admin::StatusResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let mut status = results.get().init_status();
        crate::gateway::fill_site_info(
            status.reborrow().init_info(),
            &self.services.facts,
            &self.peer,
        );
        let queue = &self.services.queue;
        status.set_runners_connected(len(queue.runners().len()));
        let (queued, active) = queue
            .queues()
            .values()
            .fold((0, 0), |(q, a), s| (q + s.depth, a + s.active));
        status.set_runs_queued(len(queued));
        status.set_runs_active(len(active));
        Ok(())
    }

    async fn secrets(
        self: Rc<Self>,
        params: admin::SecretsParams,
        mut results: admin::SecretsResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let repo = read_text(params.get()?.get_repo(), "repo")?;
        tinyci_grant::vocab::validate_repo(&repo)
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        let cap = crate::secrets::SecretStoreCap::new(
            self.services.secrets.clone(),
            repo,
            (self.peer.to_string(), None),
            self.services.clock.clone(),
            self.liveness.clone(),
        );
        results
            .get()
            .set_secrets(crate::rpc::observed(&self.services.metrics, cap));
        Ok(())
    }

    async fn secret_deliveries(
        self: Rc<Self>,
        params: admin::SecretDeliveriesParams,
        mut results: admin::SecretDeliveriesResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let id = read_text(params.get()?.get_run_id(), "runId")?;
        let run = parse_run_id(&id)?;
        let deliveries = self
            .services
            .secrets
            .deliveries(run)
            .map_err(|e| crate::rpc::failed(&e))?;
        crate::secrets::fill_deliveries(
            results.get().init_deliveries(len(deliveries.len())),
            &deliveries,
        );
        Ok(())
    }

    async fn run(
        self: Rc<Self>,
        params: admin::RunParams,
        mut results: admin::RunResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let id = read_text(params.get()?.get_id(), "id")?;
        let run = parse_run_id(&id)?;
        let stored = self
            .services
            .queue
            .run(run)
            .map_err(|e| capnp::Error::failed(e.to_string()))?
            .ok_or_else(|| capnp::Error::failed(format!("no run {id}")))?;
        fill_run_info(results.get().init_run(), &stored, &self.services.queue);
        Ok(())
    }

    async fn set_runner(
        self: Rc<Self>,
        params: admin::SetRunnerParams,
        _: admin::SetRunnerResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let name = read_text(params.get_name(), "name")?;
        // Both survive a restart. A paused runner stays connected; a draining one finishes
        // what it holds, then its workers are told it is drained and it disconnects.
        let mode = match (params.get_drain(), params.get_paused()) {
            (true, _) => tinyci_queue::RunnerMode::Draining,
            (false, true) => tinyci_queue::RunnerMode::Paused,
            (false, false) => tinyci_queue::RunnerMode::Active,
        };
        self.services
            .queue
            .set_runner_mode(&name, mode)
            .await
            .map_err(|e| crate::rpc::failed(&e))?;
        info!(runner = %name, ?mode, by = %self.peer, "runner mode set");
        Ok(())
    }

    async fn set_queue(
        self: Rc<Self>,
        params: admin::SetQueueParams,
        _: admin::SetQueueResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let name = read_text(params.get_name(), "name")?;
        self.services
            .queue
            .set_paused(&name, params.get_paused())
            .await
            .map_err(|e| crate::rpc::failed(&e))?;
        Ok(())
    }

    async fn cancel(
        self: Rc<Self>,
        params: admin::CancelParams,
        mut results: admin::CancelResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let id = read_text(params.get_id(), "id")?;
        let reason = read_text(params.get_reason(), "reason")?;
        let reason = if reason.is_empty() {
            format!("canceled by {}", self.peer)
        } else {
            reason
        };
        let queue = &self.services.queue;
        let canceled = if let Ok(run) = id.parse::<RunId>() {
            if queue
                .run(run)
                .map_err(|e| capnp::Error::failed(e.to_string()))?
                .is_none()
            {
                return Err(capnp::Error::failed(format!("no run {id}")));
            }
            u32::from(
                queue
                    .cancel_run(run, &reason)
                    .await
                    .map_err(|e| capnp::Error::failed(e.to_string()))?,
            )
        } else if let Ok(submission) = id.parse::<SubmissionId>() {
            queue
                .cancel_submission(submission, &reason)
                .await
                .map_err(|e| capnp::Error::failed(e.to_string()))?
        } else {
            return Err(capnp::Error::failed(format!(
                "{id:?} is neither a run (r-N) nor a submission (s-N)"
            )));
        };
        results.get().set_canceled(canceled);
        Ok(())
    }

    async fn submitter(
        self: Rc<Self>,
        params: admin::SubmitterParams,
        mut results: admin::SubmitterResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let repo = read_text(params.get()?.get_repo(), "repo")?;
        tinyci_grant::vocab::validate_repo(&repo)
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        crate::jobs::one_repository(&repo)?;
        // Even an admin capability does not choose the tier: the certificate does.
        let tier = crate::tiers::tier_of_peer(&self.peer, self.services.grants.site())
            .map_err(|e| crate::rpc::failed(&e))?;
        let cap = SubmitterCap::new(
            self.services.run_handles(),
            repo,
            self.peer.to_string(),
            tier,
            // The admin right covers every run of the site.
            Ok(()),
            None,
            self.liveness.clone(),
        );
        results
            .get()
            .set_submitter(crate::rpc::observed(&self.services.metrics, cap));
        Ok(())
    }

    async fn logs(
        self: Rc<Self>,
        params: admin::LogsParams,
        mut results: admin::LogsResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let repo = read_text(params.get()?.get_repo(), "repo")?;
        tinyci_grant::vocab::validate_repo(&repo)
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        let cap = LogReaderCap::new(
            self.services.run_handles(),
            repo,
            Ok(()),
            None,
            // The admin right covers every run of the site.
            Rc::new(|_: &str| Ok(())),
            self.peer.to_string(),
            self.liveness.clone(),
        );
        results
            .get()
            .set_reader(crate::rpc::observed(&self.services.metrics, cap));
        Ok(())
    }

    async fn ticket(
        self: Rc<Self>,
        params: admin::TicketParams,
        mut results: admin::TicketResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let id = read_text(params.get()?.get_submission_id(), "submissionId")?;
        let parsed: SubmissionId = id
            .parse()
            .map_err(|_| capnp::Error::failed(format!("{id:?} is not a submission id (s-N)")))?;
        if self
            .services
            .queue
            .submission(parsed)
            .map_err(|e| capnp::Error::failed(e.to_string()))?
            .is_none()
        {
            return Err(capnp::Error::failed(format!("no submission {id}")));
        }
        let ticket = TicketCap::new(
            self.services.run_handles(),
            parsed,
            Ok(()),
            self.peer.to_string(),
            None,
            self.liveness.clone(),
        );
        results
            .get()
            .set_ticket(crate::rpc::observed(&self.services.metrics, ticket));
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

    async fn users(
        self: Rc<Self>,
        _: admin::UsersParams,
        mut results: admin::UsersResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let users = self.services.users.list().map_err(users_error)?;
        fill_user_list(results.get().init_users(len(users.len())), &users);
        Ok(())
    }

    async fn add_user(
        self: Rc<Self>,
        params: admin::AddUserParams,
        mut results: admin::AddUserResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let name = read_text(params.get_name(), "name")?;
        let user = crate::settings::add_user(
            &self.services.settings_handles(),
            &self.peer,
            &name,
            params.get_capabilities()?,
        )
        .await?;
        fill_user_info(results.get().init_user(), &user);
        Ok(())
    }

    async fn set_user_capability(
        self: Rc<Self>,
        params: admin::SetUserCapabilityParams,
        mut results: admin::SetUserCapabilityResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let user = crate::settings::set_capability(
            &self.services.settings_handles(),
            &self.peer,
            &read_text(params.get_name(), "name")?,
            &read_text(params.get_capability(), "capability")?,
            params.get_granted(),
        )
        .await?;
        fill_user_info(results.get().init_user(), &user);
        Ok(())
    }

    async fn repos(
        self: Rc<Self>,
        _: admin::ReposParams,
        mut results: admin::ReposResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let repos = tinyci_github::known_repos(&self.services.store).map_err(github_error)?;
        fill_repo_list(results.get().init_repos(len(repos.len())), &repos);
        Ok(())
    }

    async fn enable_repo(
        self: Rc<Self>,
        params: admin::EnableRepoParams,
        mut results: admin::EnableRepoResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let repo = crate::settings::enable_repo(
            &self.services.settings_handles(),
            &self.peer,
            None,
            &read_text(params.get_name(), "name")?,
            &read_text(params.get_github_user(), "githubUser")?,
            params.get_public(),
        )
        .await?;
        fill_repo_info(results.get().init_repo(), &repo);
        Ok(())
    }

    async fn disable_repo(
        self: Rc<Self>,
        params: admin::DisableRepoParams,
        mut results: admin::DisableRepoResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let name = read_text(params.get()?.get_name(), "name")?;
        let repo = crate::settings::disable_repo(
            &self.services.settings_handles(),
            &self.peer,
            None,
            &name,
        )
        .await?;
        fill_repo_info(results.get().init_repo(), &repo);
        Ok(())
    }

    async fn reload_federation(
        self: Rc<Self>,
        _: admin::ReloadFederationParams,
        mut results: admin::ReloadFederationResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let partners = self
            .services
            .trust
            .reload()
            .map_err(|e| capnp::Error::failed(format!("federation not reloaded: {e}")))?;
        info!(by = %self.peer, partners = partners.len(), "federation reloaded");
        let names: Vec<String> = partners.iter().map(|p| p.site.to_string()).collect();
        set_list(results.get().init_partners(len(names.len())), &names);
        Ok(())
    }
}

pub(crate) fn users_error(e: tinyci_users::UsersError) -> capnp::Error {
    capnp::Error::failed(e.to_string())
}

pub(crate) fn github_error(e: tinyci_github::GitHubError) -> capnp::Error {
    capnp::Error::failed(e.to_string())
}

pub(crate) fn parse_user(name: &str) -> Result<tinyci_users::UserName, capnp::Error> {
    name.parse().map_err(users_error)
}

pub(crate) fn parse_capability(name: &str) -> Result<tinyci_users::Capability, capnp::Error> {
    name.parse().map_err(users_error)
}

/// Fills `list` (initialised to `users.len()`) with one `UserInfo` per user.
pub(crate) fn fill_user_list(
    mut list: capnp::struct_list::Builder<'_, tinyci_schema::user_info::Owned>,
    users: &[tinyci_users::User],
) {
    for (i, user) in users.iter().enumerate() {
        fill_user_info(list.reborrow().get(len(i)), user);
    }
}

/// Fills `list` (initialised to `repos.len()`) with one `RepoInfo` per repository.
pub(crate) fn fill_repo_list(
    mut list: capnp::struct_list::Builder<'_, tinyci_schema::repo_info::Owned>,
    repos: &[tinyci_store::records::RepoRecord],
) {
    for (i, repo) in repos.iter().enumerate() {
        fill_repo_info(list.reborrow().get(len(i)), repo);
    }
}

pub(crate) fn fill_user_info(
    mut info: tinyci_schema::user_info::Builder<'_>,
    user: &tinyci_users::User,
) {
    info.set_name(user.name.as_str());
    info.set_github(user.github.as_ref().map_or("", |(login, _)| login.as_str()));
    let caps: Vec<String> = user.capabilities.iter().map(ToString::to_string).collect();
    set_list(info.init_capabilities(len(caps.len())), &caps);
}

pub(crate) fn fill_repo_info(
    mut info: tinyci_schema::repo_info::Builder<'_>,
    repo: &tinyci_store::records::RepoRecord,
) {
    info.set_name(&repo.name);
    info.set_enabled(repo.enabled);
    info.set_public(repo.public);
    info.set_hook_id(repo.hook_id.unwrap_or(0));
    info.set_enabled_by(&repo.enabled_by);
    info.set_github_user(repo.github_user.as_deref().unwrap_or_default());
}

fn set_list(mut list: capnp::text_list::Builder<'_>, items: &[String]) {
    for (i, item) in items.iter().enumerate() {
        list.set(len(i), item.as_str());
    }
}

fn secs_to_millis(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// A run id (`r-N`) an admin typed; the error says what was expected.
fn parse_run_id(id: &str) -> Result<RunId, capnp::Error> {
    id.parse()
        .map_err(|_| capnp::Error::failed(format!("{id:?} is not a run id (r-N)")))
}
