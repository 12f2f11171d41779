//! Jobs over the wire: `Worker.next` parks on the queue until a run is leased to it (push),
//! the `Job` capability is the lease (dropping it returns the lease), `Submitter.submit`
//! plans and queues a submission, and a `Ticket` follows it.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

use tinyci_core::{LeaseId, Offer, RunId, RunStatus as CoreStatus, SubmissionId, TrustTier};
use tinyci_queue::{
    Leased, NewSubmission, OnBranch, QueueError, StoredRun, StoredSubmission, WorkerId,
};
use tinyci_schema::{
    RunStatus, handle, job, job_control, run_info, run_observer, submission_info, submitter,
    ticket, worker,
};
use tracing::{info, warn};

use crate::RunHandles;
use crate::access::ActingUser;
use crate::membrane::Liveness;
use crate::rpc::read_text;
use crate::session::len;

/// Maps the state machine's status to the wire's.
pub(crate) fn wire_status(status: CoreStatus) -> RunStatus {
    match status {
        CoreStatus::Queued => RunStatus::Queued,
        CoreStatus::Leased => RunStatus::Leased,
        CoreStatus::Running => RunStatus::Running,
        CoreStatus::Passed => RunStatus::Passed,
        CoreStatus::Failed => RunStatus::Failed,
        CoreStatus::Canceled => RunStatus::Canceled,
        CoreStatus::TimedOut => RunStatus::TimedOut,
        CoreStatus::Errored => RunStatus::Errored,
    }
}

pub(crate) fn core_status(status: RunStatus) -> CoreStatus {
    match status {
        RunStatus::Queued => CoreStatus::Queued,
        RunStatus::Leased => CoreStatus::Leased,
        RunStatus::Running => CoreStatus::Running,
        RunStatus::Passed => CoreStatus::Passed,
        RunStatus::Failed => CoreStatus::Failed,
        RunStatus::Canceled => CoreStatus::Canceled,
        RunStatus::TimedOut => CoreStatus::TimedOut,
        RunStatus::Errored => CoreStatus::Errored,
    }
}

fn millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Writes a run's description: the stored run, its tier and, while it waits for a runner it
/// cannot get, why.
pub(crate) fn fill_run_info(
    mut info: run_info::Builder<'_>,
    run: &StoredRun,
    queue: &tinyci_queue::Queue,
) {
    if let Some(tier) = queue.tier(run) {
        info.set_tier(tier.to_string());
    }
    if let Some(waiting) = queue.waiting_reason(run.id()) {
        info.set_waiting(waiting);
    }
    info.set_id(run.id().to_string());
    info.set_submission_id(run.submission.to_string());
    info.set_repo(&run.repo);
    info.set_ref(&run.git_ref);
    info.set_task(&run.spec.task_dir);
    info.set_name(&run.spec.name);
    info.set_queue(run.spec.queue.as_ref());
    info.set_status(wire_status(run.state.status()));
    info.set_attempt(run.state.attempt());
    info.set_runner(run.runner.as_deref().unwrap_or_default());
    let outcome = run.state.outcome();
    info.set_exit_code(outcome.and_then(|o| o.exit_code).unwrap_or(-1));
    info.set_created_at(millis(run.state.created_at()));
    info.set_started_at(run.started_at.map_or(0, millis));
    info.set_finished_at(outcome.map_or(0, |o| millis(o.finished_at)));
    let message = run
        .message
        .clone()
        .or_else(|| outcome.and_then(|o| o.message.clone()))
        .or_else(|| {
            outcome
                .and_then(|o| o.exit_code)
                .map(|c| format!("exit code {c}"))
        })
        .unwrap_or_default();
    info.set_message(message);
}

/// A cancel's reason as given, or the default when none was.
fn cancel_reason(given: String) -> String {
    if given.is_empty() {
        "canceled by request".to_owned()
    } else {
        given
    }
}

/// The status of a submission, by the one definition in core.
pub(crate) fn submission_status(runs: &[StoredRun]) -> CoreStatus {
    CoreStatus::of_submission(runs.iter().map(|r| r.state.status()))
}

pub(crate) fn fill_submission_info(
    mut info: submission_info::Builder<'_>,
    submission: &StoredSubmission,
    runs: &[StoredRun],
) {
    info.set_id(submission.id.to_string());
    info.set_repo(&submission.repo);
    info.set_ref(&submission.git_ref);
    info.set_sha(&submission.sha);
    info.set_status(wire_status(submission_status(runs)));
    info.set_created_at(millis(submission.created_at));
    info.set_submitted_by(&submission.submitted_by);
    info.set_run_count(len(submission.runs.len()));
    info.set_tier(submission.tier.to_string());
}

fn queue_error(e: QueueError) -> capnp::Error {
    capnp::Error::failed(e.to_string())
}

/// `Worker` for one queue and one runner.
pub(crate) struct WorkerCap {
    handles: RunHandles,
    queue: String,
    runner: String,
    /// What the runner's executors provide: it is leased only runs this satisfies.
    offer: Offer,
    /// Its entry among the queue's connected workers, removed when it is dropped.
    registered: WorkerId,
    /// `logs:write` of its grant, on a run's repository: a job's log sink needs it.
    logs_write: crate::session::RightCheck,
    liveness: Rc<Liveness>,
    /// Set when its grant is single-use: it is leased one run in all.
    single_use: Option<SingleUse>,
    /// The runner's verified identity, recorded with each secret its jobs are given.
    identity: String,
    /// Its certificate is this site's own.
    own_runner: bool,
}

/// A single-use grant behind a worker: its authority revocation id, and who counts its jobs.
pub(crate) struct SingleUse {
    pub(crate) grant: String,
    pub(crate) authority: Rc<crate::grants::GrantAuthority>,
}

/// The runner a worker serves, as the site established it: its name (from its certificate),
/// what it is credited with, what it said about itself, and its grant's single use.
pub(crate) struct WorkerRunner {
    pub(crate) name: String,
    pub(crate) offer: Offer,
    pub(crate) profile: tinyci_queue::RunnerProfile,
    pub(crate) single_use: Option<SingleUse>,
    /// Its certificate is this site's own (not a partner's).
    pub(crate) own_site: bool,
}

impl WorkerCap {
    pub(crate) fn new(
        handles: RunHandles,
        queue: String,
        runner: WorkerRunner,
        logs_write: crate::session::RightCheck,
        liveness: Rc<Liveness>,
    ) -> Self {
        let WorkerRunner {
            name: runner,
            offer,
            profile,
            single_use,
            own_site,
        } = runner;
        let identity = profile.identity.clone();
        let registered = handles
            .queue
            .connect_worker(&queue, &runner, offer.clone(), profile);
        info!(%queue, %runner, %offer, "worker connected");
        Self {
            handles,
            queue,
            runner,
            offer,
            registered,
            logs_write,
            liveness,
            single_use,
            identity,
            own_runner: own_site,
        }
    }
}

impl Drop for WorkerCap {
    fn drop(&mut self) {
        self.handles.queue.disconnect_worker(self.registered);
    }
}

/// What a drained runner is told, when its workers wait and when it asks for new ones.
/// A submission is work of one repository: `*` (every repository, as a grant's scope may
/// say) names none, and a run recorded under it would match every repository's scope.
pub(crate) fn one_repository(repo: &str) -> Result<(), capnp::Error> {
    if repo == "*" {
        return Err(capnp::Error::failed(
            "a submission names one repository (OWNER/NAME), not '*'".into(),
        ));
    }
    Ok(())
}

pub(crate) fn drained_refusal(runner: &str) -> capnp::Error {
    capnp::Error::failed(format!(
        "runner {runner} was drained by an operator: it takes no work until resumed \
         (tinyci admin runners resume {runner})"
    ))
}

impl worker::Server for WorkerCap {
    async fn next(
        self: Rc<Self>,
        params: worker::NextParams,
        mut results: worker::NextResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        // A single-use grant has one worker asking at a time: the others (more slots, more
        // connections) wait, as does every worker once its one job is taken, until the grant
        // dies with that job. So no run is leased to it only to be handed back.
        let _asking = match &self.single_use {
            Some(once) => match once.authority.claim(&once.grant) {
                Some(claim) => Some(claim),
                None => return Err(self.liveness.dead().await),
            },
            None => None,
        };
        let control: job_control::Client = params.get()?.get_control()?;
        let queue = &self.handles.queue;
        let mut pool = queue.pool_changes();
        let drained = async {
            // A draining runner is leased nothing; once it holds no run it is told to go.
            loop {
                if queue.drained(&self.runner) {
                    return;
                }
                if pool.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let leased = tokio::select! {
            leased = queue.next(&self.queue, &self.runner, &self.offer, cancel_hook(control.clone())) => leased.map_err(queue_error)?,
            dead = self.liveness.dead() => return Err(dead),
            () = drained => return Err(drained_refusal(&self.runner)),
        };
        if let Some(once) = &self.single_use
            && let Err(refused) = once.authority.spend(&once.grant, leased.run.id()).await
        {
            // The grant's job could not be recorded (the store failed): fail closed, and this
            // run goes to someone else.
            queue.release(leased.run.id(), leased.lease).await;
            info!(run = %leased.run.id(), runner = %self.runner, %refused, "single-use grant asked twice");
            return Err(self.liveness.dead().await);
        }
        info!(run = %leased.run.id(), runner = %self.runner, attempt = leased.run.state.attempt(), "job leased");
        let job = JobCap::new(
            self.handles.clone(),
            leased,
            self.logs_write.clone(),
            self.liveness.clone(),
            LeaseHolder {
                control,
                runner: self.identity.clone(),
                own_runner: self.own_runner,
                started: false,
            },
        );
        results
            .get()
            .set_job(crate::rpc::observed(&self.handles.metrics, job));
        Ok(())
    }

    async fn resume(
        self: Rc<Self>,
        params: worker::ResumeParams,
        mut results: worker::ResumeResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let id = read_text(params.get_run(), "run")?;
        let run: RunId = id
            .parse()
            .map_err(|_| capnp::Error::failed(format!("malformed run id {id:?}")))?;
        let control: job_control::Client = params.get_control()?;
        // The worker is bound to one queue: a run of another queue is not this worker's.
        match self.handles.queue.run(run).map_err(queue_error)? {
            Some(stored) if stored.spec.queue.as_ref() == self.queue.as_str() => {}
            _ => {
                return Err(capnp::Error::failed(format!(
                    "cannot resume {id}: no such run on queue {}",
                    self.queue
                )));
            }
        }
        // A runner that came back weaker (say, without its sandbox) cannot take the run back.
        if let Some((tier, needs)) = self.handles.queue.placement(run)
            && !self.offer.satisfies(&needs)
        {
            return Err(capnp::Error::failed(format!(
                "cannot resume {id}: {tier} work needs {needs}, and this runner offers {}",
                self.offer
            )));
        }
        let leased = self
            .handles
            .queue
            .resume(
                run,
                LeaseId(params.get_attempt()),
                &self.runner,
                cancel_hook(control.clone()),
            )
            .await
            .map_err(queue_error)?;
        self.handles
            .secrets
            .rebind(run, leased.lease.0, control.clone());
        let job = JobCap::new(
            self.handles.clone(),
            leased,
            self.logs_write.clone(),
            self.liveness.clone(),
            LeaseHolder {
                control,
                runner: self.identity.clone(),
                own_runner: self.own_runner,
                started: true,
            },
        );
        results
            .get()
            .set_job(crate::rpc::observed(&self.handles.metrics, job));
        Ok(())
    }
}

/// Forwards a run's cancel to the runner's `JobControl`.
fn cancel_hook(control: job_control::Client) -> tinyci_queue::CancelHook {
    Rc::new(move |reason: String| {
        let mut request = control.cancel_request();
        request.get().set_reason(&reason);
        let call = request.send().promise;
        tokio::task::spawn_local(async move {
            if let Err(e) = call.await {
                warn!(error = %e, "could not tell the runner to cancel");
            }
        });
    })
}

/// One lease of one run. Released (explicitly, or by being dropped before the run
/// started) it requeues the run at once; dropped after the start (typically: the runner's
/// connection died) it leaves the lease to run out, so the runner can `Worker.resume` it.
pub(crate) struct JobCap {
    handles: RunHandles,
    run: RunId,
    lease: LeaseId,
    leased: Leased,
    /// `logs:write` of the holder's grant (see [`WorkerCap`]).
    logs_write: crate::session::RightCheck,
    liveness: Rc<Liveness>,
    /// Completed or released: the lease is settled.
    settled: Rc<Cell<bool>>,
    /// The runner said it started the command.
    started: Cell<bool>,
    /// Requeues the run if the holder's grant dies while it holds the lease.
    on_revoke: tokio::task::AbortHandle,
    /// The runner's `JobControl` for this lease: a removed secret is withdrawn through it.
    control: job_control::Client,
    /// The runner's verified identity, for the secrets audit.
    runner: String,
    /// The runner's certificate is this site's (a partner's runner gets no secret).
    own_runner: bool,
    /// `Job.secrets` was called: a lease gets its secrets once.
    secrets_asked: Cell<bool>,
}

/// Who holds a lease: the runner's control for it, its identity, and whether the run had
/// started (a resumed lease).
pub(crate) struct LeaseHolder {
    pub(crate) control: job_control::Client,
    pub(crate) runner: String,
    pub(crate) own_runner: bool,
    pub(crate) started: bool,
}

impl JobCap {
    fn new(
        handles: RunHandles,
        leased: Leased,
        logs_write: crate::session::RightCheck,
        liveness: Rc<Liveness>,
        holder: LeaseHolder,
    ) -> Self {
        let LeaseHolder {
            control,
            runner,
            own_runner,
            started,
        } = holder;
        let settled = Rc::new(Cell::new(false));
        // A revoked (or expired) grant takes the lease with it: the runner is told to stop
        // and the run goes back to the queue now, not when the lease would have lapsed.
        let on_revoke = tokio::task::spawn_local({
            let (queue, liveness, settled, secrets) = (
                handles.queue.clone(),
                liveness.clone(),
                settled.clone(),
                handles.secrets.clone(),
            );
            let (run, lease) = (leased.run.id(), leased.lease);
            async move {
                let why = liveness.dead().await;
                // No secret goes to a lease whose grant died; its runner is told to stop,
                // and stopping deletes the run's secrets directory.
                secrets.release(run, lease.0);
                if !settled.replace(true) {
                    info!(%run, %lease, reason = %why, "the holder's grant died; requeuing its run");
                    queue
                        .revoke_lease(run, lease, &format!("the runner's grant ended: {why}"))
                        .await;
                }
            }
        })
        .abort_handle();
        Self {
            handles,
            run: leased.run.id(),
            lease: leased.lease,
            leased,
            logs_write,
            liveness,
            settled,
            started: Cell::new(started),
            on_revoke,
            control,
            runner,
            own_runner,
            secrets_asked: Cell::new(false),
        }
    }

    fn release_now(&self) {
        if self.settled.replace(true) {
            return;
        }
        let queue = self.handles.queue.clone();
        let (run, lease) = (self.run, self.lease);
        tokio::task::spawn_local(async move { queue.release(run, lease).await });
    }
}

impl Drop for JobCap {
    fn drop(&mut self) {
        self.on_revoke.abort();
        if self.settled.get() {
            self.handles.secrets.release(self.run, self.lease.0);
            return;
        }
        if self.started.get() {
            info!(run = %self.run, lease = %self.lease, "job dropped while running; its lease stays until it expires, for the runner to resume");
            self.handles.queue.detach(self.run, self.lease);
        } else {
            // Nothing ran: hand the run to the next runner now rather than at expiry.
            self.release_now();
        }
    }
}

impl job::Server for JobCap {
    async fn spec(
        self: Rc<Self>,
        _: job::SpecParams,
        mut results: job::SpecResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let run = &self.leased.run;
        let spec = &run.spec;
        let mut out = results.get().init_spec();
        fill_run_info(out.reborrow().init_run(), run, &self.handles.queue);
        out.set_sha(&run.sha);
        // The runner must isolate the run at least this much; the site leased it only to a
        // runner that offered it, and the runner checks again.
        let (tier, needs) =
            self.handles.queue.placement(self.run).ok_or_else(|| {
                capnp::Error::failed(format!("run {} is no longer live", self.run))
            })?;
        out.set_tier(tier.to_string());
        out.set_isolation(needs.isolation.as_str());
        out.set_network(needs.network);
        out.set_cpu(spec.resources.cpu.as_deref().unwrap_or_default());
        out.set_memory(spec.resources.memory.as_deref().unwrap_or_default());
        let mut command = out.reborrow().init_command(len(spec.command.len()));
        for (i, arg) in spec.command.iter().enumerate() {
            command.set(len(i), arg.as_str());
        }
        out.set_image(spec.image.as_deref().unwrap_or_default());
        if let Some(pull) = self
            .handles
            .queue
            .dispatch_policy()
            .queue(spec.queue.as_ref())
            .pull
        {
            out.set_pull(pull.as_str());
        }
        out.set_mountpoint(&spec.mountpoint);
        // The shell executor wants a path inside the source; send the workdir relative to
        // the mountpoint when it lies under it (the Docker executor accepts either).
        let workdir = spec
            .workdir
            .strip_prefix(&spec.mountpoint)
            .map(|rest| rest.trim_start_matches('/'))
            .map(|rest| if rest.is_empty() { "." } else { rest })
            .unwrap_or(&spec.workdir);
        out.set_workdir(workdir);
        let mut env = out.reborrow().init_env(len(spec.env.len()));
        for (i, (k, v)) in spec.env.iter().enumerate() {
            let mut kv = env.reborrow().get(len(i));
            kv.set_key(k);
            kv.set_value(v);
        }
        out.set_timeout_seconds(u32::try_from(spec.timeout_secs).unwrap_or(u32::MAX));
        out.set_privileged(needs.privileged);
        let mut metadata = out.reborrow().init_metadata(len(spec.metadata.len()));
        for (i, (k, v)) in spec.metadata.iter().enumerate() {
            let mut kv = metadata.reborrow().get(len(i));
            kv.set_key(k);
            kv.set_value(v);
        }
        let mut artifacts = out.reborrow().init_artifacts(len(spec.artifacts.len()));
        for (i, a) in spec.artifacts.iter().enumerate() {
            artifacts.set(len(i), a.as_str());
        }
        out.set_lease_expires_at(millis(self.leased.expires_at));
        Ok(())
    }

    async fn source(
        self: Rc<Self>,
        params: job::SourceParams,
        _: job::SourceResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let sink = params.get()?.get_sink()?;
        let path = source_of(&self.handles, self.leased.run.submission)
            .map_err(|e| crate::rpc::failed(&e))?;
        crate::sources::stream_to(&path, sink).await
    }

    async fn log(
        self: Rc<Self>,
        _: job::LogParams,
        mut results: job::LogResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        // Holding the lease is not enough: writing a repository's logs is a right of its own.
        (self.logs_write)(&self.leased.run.repo).map_err(|denied| denied.to_rpc())?;
        let sink = crate::logs::LogSinkCap::open(
            &self.handles.logs,
            self.handles.queue.clone(),
            (self.run.get(), &self.leased.run.repo),
            self.lease.0,
            self.liveness.clone(),
            self.handles.secrets.clone(),
        )
        .await?;
        results
            .get()
            .set_sink(crate::rpc::observed(&self.handles.metrics, sink));
        Ok(())
    }

    async fn artifacts(
        self: Rc<Self>,
        _: job::ArtifactsParams,
        mut results: job::ArtifactsResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let sink = crate::assets::AssetSinkCap::new(
            self.handles.clone(),
            self.run,
            self.lease,
            self.liveness.clone(),
        );
        results
            .get()
            .set_sink(crate::rpc::observed(&self.handles.metrics, sink));
        Ok(())
    }

    async fn heartbeat(
        self: Rc<Self>,
        _: job::HeartbeatParams,
        mut results: job::HeartbeatResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let expires = self
            .handles
            .queue
            .heartbeat(self.run, self.lease)
            .await
            .map_err(queue_error)?;
        results.get().set_lease_expires_at(millis(expires));
        Ok(())
    }

    async fn started(
        self: Rc<Self>,
        _: job::StartedParams,
        _: job::StartedResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        self.handles
            .queue
            .started(self.run, self.lease)
            .await
            .map_err(queue_error)?;
        self.started.set(true);
        Ok(())
    }

    async fn release(
        self: Rc<Self>,
        _: job::ReleaseParams,
        _: job::ReleaseResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        info!(run = %self.run, lease = %self.lease, "lease released by the runner");
        self.release_now();
        Ok(())
    }

    async fn complete(
        self: Rc<Self>,
        params: job::CompleteParams,
        _: job::CompleteResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let outcome = params.get()?.get_outcome()?;
        let status = core_status(
            outcome
                .get_status()
                .map_err(|_| capnp::Error::failed("unknown run status in outcome".into()))?,
        );
        let exit_code = Some(outcome.get_exit_code()).filter(|c| *c >= 0);
        let message = read_text(outcome.get_message(), "outcome.message")?;
        let recorded = self
            .handles
            .queue
            .complete(self.run, self.lease, status, exit_code, message)
            .await
            .map_err(queue_error)?;
        self.settled.set(true);
        info!(run = %self.run, status = %recorded.status, exit_code = ?recorded.exit_code, "run completed");
        Ok(())
    }
    async fn secrets(
        self: Rc<Self>,
        _: job::SecretsParams,
        mut results: job::SecretsResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        if self.settled.get() {
            return Err(capnp::Error::failed(format!(
                "no secrets for run {}: its lease {} has ended",
                self.run, self.lease
            )));
        }
        if self.secrets_asked.replace(true) {
            return Err(capnp::Error::failed(format!(
                "the secrets of run {} were already delivered to lease {}",
                self.run, self.lease
            )));
        }
        // Only a live lease gets secrets: this fails once the lease was lost or handed on.
        self.handles
            .queue
            .heartbeat(self.run, self.lease)
            .await
            .map_err(queue_error)?;
        let (tier, _) =
            self.handles.queue.placement(self.run).ok_or_else(|| {
                capnp::Error::failed(format!("run {} is no longer live", self.run))
            })?;
        let submission = self
            .handles
            .queue
            .submission(self.leased.run.submission)
            .map_err(queue_error)?
            .ok_or_else(|| {
                capnp::Error::failed(format!("run {}'s submission is gone", self.run))
            })?;
        // The site says which ref it ran only for its own admins' work and GitHub's signed
        // deliveries; anyone else's ref is their claim.
        let ref_verified =
            tier == tinyci_core::TrustTier::Local || submission.submitted_by.starts_with("github:");
        let facts = crate::secrets::LeaseFacts {
            run: self.run,
            attempt: self.lease.0,
            repo: &self.leased.run.repo,
            git_ref: &submission.git_ref,
            ref_verified,
            tier: &tier,
            runner: &self.runner,
        };
        let delivered = self
            .handles
            .secrets
            .deliver(&facts, self.handles.now_ms())
            .await
            .map_err(|e| crate::rpc::failed_as(&format!("secrets of run {}", self.run), &e))?;
        // A partner's runner may run this site's work; it never holds this site's secrets.
        if !self.own_runner && !delivered.is_empty() {
            let names: Vec<&str> = delivered.iter().map(|d| d.name.as_str()).collect();
            return Err(capnp::Error::failed(format!(
                "denied secrets of run {} ({}): runner {} belongs to another site, and this \
                 site's secrets go only to its own runners",
                self.run,
                names.join(", "),
                self.runner
            )));
        }
        self.handles.secrets.hold(
            self.run,
            self.lease.0,
            &self.leased.run.repo,
            delivered.iter().map(|d| d.name.clone()).collect(),
            self.control.clone(),
        );
        let delivered = self
            .handles
            .secrets
            .still_set(&self.leased.run.repo, delivered)
            .map_err(|e| crate::rpc::failed_as(&format!("secrets of run {}", self.run), &e))?;
        let mut out = results.get().init_secrets(len(delivered.len()));
        for (i, secret) in delivered.iter().enumerate() {
            let mut row = out.reborrow().get(len(i));
            row.set_name(&secret.name);
            row.set_value(&secret.value);
            row.set_as_file(secret.as_file);
        }
        Ok(())
    }
}

/// Plans and queues a submission from an uploaded archive.
pub(crate) async fn submit(
    handles: &RunHandles,
    repo: &str,
    submitted_by: &str,
    tier: &TrustTier,
    supersede: bool,
    request: submitter::submit_params::Reader<'_>,
) -> Result<StoredSubmission, capnp::Error> {
    let request = request.get_request()?;
    let source_sha256 = request.get_source_sha256()?.to_vec();
    let path = handles.sources.path(&source_sha256).ok_or_else(|| {
        capnp::Error::failed(
            "no uploaded source archive has that SHA-256; upload it with Submitter.upload first"
                .into(),
        )
    })?;
    let changed = request
        .get_changed_paths()?
        .iter()
        .map(|p| p.and_then(|p| Ok(p.to_string()?)))
        .collect::<Result<Vec<_>, _>>()?;
    let runs = tinyci_assets::plan_archive(path, None, changed, request.get_all())
        .await
        .map_err(|e| crate::rpc::failed(&e))?;
    admit(&handles.queue, repo, tier, &runs).map_err(|e| capnp::Error::failed(e.to_string()))?;
    let (submission, _) = handles
        .queue
        .submit(NewSubmission {
            repo: repo.to_owned(),
            git_ref: crate::rpc::read_short_text(request.get_ref(), "ref")?,
            sha: read_text(request.get_sha(), "sha")?,
            title: read_text(request.get_title(), "title")?,
            submitted_by: submitted_by.to_owned(),
            source_sha256,
            runs,
            // Superseding cancels the older submission's runs on this ref, whoever made them:
            // a cancel, so only for holders of `runs:cancel`. Others run alongside.
            branch: if supersede {
                OnBranch::Supersede
            } else {
                OnBranch::Join
            },
            tier: tier.clone(),
        })
        .await
        .map_err(queue_error)?;
    handles
        .uploads
        .submitted(submitted_by, &submission.source_sha256);
    Ok(submission)
}

/// Checks every planned run against the site's dispatch policy for `tier`: a queue that does
/// not take this tier, or privilege the site does not grant, refuses the whole submission
/// (with the reason) before anything is queued. What the archive's task files say can only
/// ask for privilege, never grant it.
pub(crate) fn admit(
    queue: &tinyci_queue::Queue,
    repo: &str,
    tier: &TrustTier,
    runs: &[tinyci_core::PlannedRun],
) -> Result<(), tinyci_core::Refusal> {
    let policy = queue.dispatch_policy();
    for run in runs {
        policy.admit(repo, tier, run)?;
    }
    Ok(())
}

/// `Ticket` for one submission.
pub(crate) struct TicketCap {
    handles: RunHandles,
    id: SubmissionId,
    /// Whether the holder has `runs:cancel` on the submission's repository (else why not).
    cancel: Result<(), crate::denied::Denied>,
    /// Who holds it (a peer identity), recorded on what it retries.
    holder: String,
    /// A site user's ticket: each cancel or retry asks again whether they hold `cancel` and
    /// GitHub lets them push ([`crate::access`]).
    user: Option<ActingUser>,
    liveness: Rc<Liveness>,
}

impl TicketCap {
    pub(crate) fn new(
        handles: RunHandles,
        id: SubmissionId,
        cancel: Result<(), crate::denied::Denied>,
        holder: String,
        user: Option<ActingUser>,
        liveness: Rc<Liveness>,
    ) -> Self {
        Self {
            handles,
            id,
            cancel,
            holder,
            user,
            liveness,
        }
    }

    /// Whether the holder may cancel or retry this submission's runs now: the grant's
    /// `runs:cancel`, and for a site user the capability and GitHub's write access.
    async fn may_cancel(&self) -> Result<(), capnp::Error> {
        self.cancel
            .as_ref()
            .map_err(crate::denied::Denied::to_rpc)?;
        let Some(user) = &self.user else {
            return Ok(());
        };
        let (submission, _) = self.load()?;
        user.may(
            tinyci_users::Capability::Cancel,
            &submission.repo,
            crate::access::Want::Write,
        )
        .await
        .map_err(|why| crate::rpc::failed_as("denied runs:cancel", &why))
    }

    /// Run `id` if it belongs to this submission.
    fn own_run(&self, id: &str) -> Result<RunId, capnp::Error> {
        let not_found = || capnp::Error::failed(format!("no run {id:?} in submission {}", self.id));
        let run: RunId = id.parse().map_err(|_| not_found())?;
        match self.handles.queue.run(run).map_err(queue_error)? {
            Some(stored) if stored.submission == self.id => Ok(run),
            _ => Err(not_found()),
        }
    }

    fn load(&self) -> Result<(StoredSubmission, Vec<StoredRun>), capnp::Error> {
        let queue = &self.handles.queue;
        let submission = queue
            .submission(self.id)
            .map_err(queue_error)?
            .ok_or_else(|| capnp::Error::failed(format!("no submission {}", self.id)))?;
        let runs = queue.submission_runs(self.id).map_err(queue_error)?;
        Ok((submission, runs))
    }
}

impl ticket::Server for TicketCap {
    async fn submission(
        self: Rc<Self>,
        _: ticket::SubmissionParams,
        mut results: ticket::SubmissionResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let (submission, runs) = self.load()?;
        fill_submission_info(results.get().init_submission(), &submission, &runs);
        Ok(())
    }

    async fn runs(
        self: Rc<Self>,
        _: ticket::RunsParams,
        mut results: ticket::RunsResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let (_, runs) = self.load()?;
        let mut list = results.get().init_runs(len(runs.len()));
        for (i, run) in runs.iter().enumerate() {
            fill_run_info(list.reborrow().get(len(i)), run, &self.handles.queue);
        }
        Ok(())
    }

    async fn cancel(
        self: Rc<Self>,
        params: ticket::CancelParams,
        _: ticket::CancelResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        self.may_cancel().await?;
        let reason = cancel_reason(read_text(params.get()?.get_reason(), "reason")?);
        self.handles
            .queue
            .cancel_submission(self.id, &reason)
            .await
            .map_err(queue_error)?;
        Ok(())
    }

    async fn cancel_run(
        self: Rc<Self>,
        params: ticket::CancelRunParams,
        _: ticket::CancelRunResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        self.may_cancel().await?;
        let params = params.get()?;
        let run = self.own_run(&read_text(params.get_run(), "run")?)?;
        let reason = cancel_reason(read_text(params.get_reason(), "reason")?);
        self.handles
            .queue
            .cancel_run(run, &reason)
            .await
            .map_err(queue_error)?;
        Ok(())
    }

    async fn retry_run(
        self: Rc<Self>,
        params: ticket::RetryRunParams,
        mut results: ticket::RetryRunResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        self.may_cancel().await?;
        let run = self.own_run(&read_text(params.get()?.get_run(), "run")?)?;
        let retried = retry_run(&self.handles.queue, run, &self.holder)
            .await
            .map_err(|e| crate::rpc::failed(&e))?;
        fill_run_info(results.get().init_run(), &retried, &self.handles.queue);
        Ok(())
    }

    async fn watch(
        self: Rc<Self>,
        params: ticket::WatchParams,
        mut results: ticket::WatchResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let observer: run_observer::Client = params.get()?.get_observer()?;
        let mut updates = self.handles.queue.watch(self.id);
        let (submission, runs) = self.load()?;
        let ticket = self.clone();
        let task = tokio::task::spawn_local(async move {
            let mut current: BTreeMap<RunId, StoredRun> =
                runs.into_iter().map(|r| (r.id(), r)).collect();
            for run in current.values() {
                if send_change(&observer, run, &ticket.handles.queue)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                if current.values().all(|r| r.state.status().is_final()) {
                    let runs: Vec<StoredRun> = current.values().cloned().collect();
                    let mut ended = observer.ended_request();
                    fill_submission_info(ended.get().init_submission(), &submission, &runs);
                    let _ = ended.send().promise.await;
                    return;
                }
                let Some(run) = updates.recv().await else {
                    return;
                };
                if ticket.liveness.check().is_err() {
                    return;
                }
                if send_change(&observer, &run, &ticket.handles.queue)
                    .await
                    .is_err()
                {
                    return;
                }
                current.insert(run.id(), run);
            }
        });
        results.get().set_handle(crate::rpc::observed(
            &self.handles.metrics,
            WatchHandle(task),
        ));
        Ok(())
    }
}

async fn send_change(
    observer: &run_observer::Client,
    run: &StoredRun,
    queue: &tinyci_queue::Queue,
) -> Result<(), capnp::Error> {
    let mut request = observer.changed_request();
    fill_run_info(request.get().init_run(), run, queue);
    request.send().await
}

/// Stops a watch or a follow when dropped.
pub(crate) struct WatchHandle(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl handle::Server for WatchHandle {}

/// Why a run's source archive cannot be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    #[error("could not read submission {submission} for the run's source")]
    Unreadable {
        submission: SubmissionId,
        #[source]
        source: QueueError,
    },
    #[error("submission {0} of this run is no longer recorded at the site")]
    Gone(SubmissionId),
    #[error("the run's source archive is missing at the site")]
    Missing,
}

/// The archive of `submission`'s source, looked up when a runner asks for it (never cached
/// from when the lease was made), so a store failure or a vanished submission is reported as
/// itself rather than as a missing archive.
pub(crate) fn source_of(
    handles: &RunHandles,
    submission: SubmissionId,
) -> Result<std::path::PathBuf, SourceError> {
    let sha256 = handles
        .queue
        .submission(submission)
        .map_err(|source| SourceError::Unreadable { submission, source })?
        .ok_or(SourceError::Gone(submission))?
        .source_sha256;
    handles.sources.path(&sha256).ok_or(SourceError::Missing)
}

/// Why a run was not retried.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RetryError {
    #[error("cannot retry run {run}")]
    Queue {
        run: RunId,
        #[source]
        source: tinyci_queue::QueueError,
    },
    #[error("no run {0}")]
    NoRun(RunId),
    #[error("run {run} is still {status}; only a finished run can be retried")]
    Unfinished { run: RunId, status: CoreStatus },
    #[error("no submission of run {0}")]
    NoSubmission(RunId),
    #[error("retrying run {run} refused")]
    Refused {
        run: RunId,
        #[source]
        source: tinyci_core::Refusal,
    },
    #[error("submission {0} has no failed, timed out or errored run to retry")]
    NothingFailed(SubmissionId),
    #[error("no submission {0}")]
    NoSuchSubmission(SubmissionId),
    #[error("cannot read the runs of submission {submission}")]
    Submission {
        submission: SubmissionId,
        #[source]
        source: tinyci_queue::QueueError,
    },
}

/// Queues a finished run again as its next attempt (same run id), if today's policy for its
/// submission's tier still admits it. `by` is who asked, for the log.
pub(crate) async fn retry_run(
    queue: &tinyci_queue::Queue,
    id: RunId,
    by: &str,
) -> Result<tinyci_queue::StoredRun, RetryError> {
    let failed = |source| RetryError::Queue { run: id, source };
    let stored = queue
        .run(id)
        .map_err(failed)?
        .ok_or(RetryError::NoRun(id))?;
    let status = stored.state.status();
    if !status.is_final() {
        return Err(RetryError::Unfinished { run: id, status });
    }
    let submission = queue
        .submission(stored.submission)
        .map_err(failed)?
        .ok_or(RetryError::NoSubmission(id))?;
    // Today's policy decides, not the one the run was first admitted under. A retry is the
    // same work: it keeps the tier it had, whoever asks.
    admit(
        queue,
        &stored.repo,
        &submission.tier,
        std::slice::from_ref(&stored.spec),
    )
    .map_err(|source| RetryError::Refused { run: id, source })?;
    let retried = queue.retry(id).await.map_err(failed)?;
    tracing::info!(run = %id, attempt = retried.state.attempt() + 1, %by, "run retried");
    Ok(retried)
}

/// Retries every run of `submission` that failed, timed out or errored.
pub(crate) async fn retry_failed(
    queue: &tinyci_queue::Queue,
    submission: SubmissionId,
    by: &str,
) -> Result<Vec<tinyci_queue::StoredRun>, RetryError> {
    let runs = queue
        .submission_runs(submission)
        .map_err(|source| RetryError::Submission { submission, source })?;
    if runs.is_empty() {
        return Err(RetryError::NoSuchSubmission(submission));
    }
    let failed: Vec<RunId> = runs
        .iter()
        .filter(|r| {
            matches!(
                r.state.status(),
                CoreStatus::Failed | CoreStatus::TimedOut | CoreStatus::Errored
            )
        })
        .map(tinyci_queue::StoredRun::id)
        .collect();
    if failed.is_empty() {
        return Err(RetryError::NothingFailed(submission));
    }
    let mut retried = Vec::new();
    for id in failed {
        retried.push(retry_run(queue, id, by).await?);
    }
    Ok(retried)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn local<F: std::future::Future>(test: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, test)
    }

    async fn handles(dir: &std::path::Path) -> RunHandles {
        let store = tinyci_store::Store::open(dir, tinyci_store::StoreOptions::default()).unwrap();
        let (committer, _writer) = tinyci_store::GroupCommitter::start(store.clone()).unwrap();
        let clock = tinyci_queue::system_clock();
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
        RunHandles {
            queue,
            sources: tinyci_assets::SourceStore::open(dir).unwrap(),
            logs: Rc::new(
                tinyci_logs::Logs::open(dir, store.clone(), committer.clone(), 1024).unwrap(),
            ),
            artifacts: Rc::new(
                tinyci_assets::ArtifactStore::open(dir, 1024, store.clone(), committer).unwrap(),
            ),
            metrics: Rc::new(crate::metrics::Metrics::new()),
            clock: crate::SiteClock(clock),
            uploads: Rc::default(),
            secrets: Rc::new(crate::secrets::SecretBook::new(
                store,
                tinyci_pki::SecretsKey::load_or_create(&dir.join("secrets.key")).unwrap(),
            )),
        }
    }

    fn new_submission(source_sha256: Vec<u8>) -> NewSubmission {
        NewSubmission {
            repo: "org/x".into(),
            git_ref: "refs/heads/main".into(),
            sha: "abc".into(),
            title: "t".into(),
            submitted_by: "admin:admin".into(),
            source_sha256,
            runs: Vec::new(),
            branch: OnBranch::Aside,
            tier: TrustTier::Local,
        }
    }

    /// The finding: a lease that read its source hash when it was made turned a failed or
    /// empty read into an empty hash, so every such case read as "archive missing". The
    /// lookup is now made on request, and each case says what it is.
    #[test]
    fn a_runs_source_failure_says_what_failed() {
        local(async {
            let dir = tempfile::tempdir().unwrap();
            let handles = handles(dir.path()).await;
            let gone = source_of(&handles, SubmissionId(404)).unwrap_err();
            assert!(
                matches!(gone, SourceError::Gone(SubmissionId(404))),
                "{gone}"
            );

            let (missing, _) = handles
                .queue
                .submit(new_submission(vec![7; 32]))
                .await
                .unwrap();
            let error = source_of(&handles, missing.id).unwrap_err();
            assert!(matches!(error, SourceError::Missing), "{error}");

            let mut upload = handles.sources.upload().unwrap();
            upload.put(b"an archive").unwrap();
            let digest = {
                use sha2::Digest as _;
                sha2::Sha256::digest(b"an archive").to_vec()
            };
            upload.finish(&digest).unwrap();
            let (present, _) = handles.queue.submit(new_submission(digest)).await.unwrap();
            let path = source_of(&handles, present.id).unwrap();
            assert_eq!(std::fs::read(path).unwrap(), b"an archive");
        });
    }
}
