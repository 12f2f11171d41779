//! The runner agent: connects to a site, redeems its grant for one `Worker` per queue, and
//! runs jobs as the site pushes them (`Worker.next` resolves when a job is leased to it).
//! Each job: fetch the spec and the source archive, stream output to the job's `LogSink`
//! with capnp flow control, heartbeat the lease, obey `JobControl.cancel`, and report the
//! outcome exactly once. Reconnects with backoff when the site goes away.
//!
//! Everything here is `!Send` (capnp): run it inside a `LocalSet`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::{Either, select_all};
use tinyci_net::{ClientConfig, NetLimits};
use tinyci_pki::SiteName;
use tinyci_schema::{RunStatus, gateway, job, job_control, log_sink, worker};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::exec::{ExecOutcome, ExecSpec, OutputChunk, StopHandle, Stream, Verdict, stop_pair};
use crate::source::{SourceSink, unpack};
use crate::{DockerExecutor, ShellExecutor};

/// How a runner executes jobs.
#[derive(Clone, Debug)]
pub enum Executor {
    /// Local processes.
    Shell(ShellExecutor),
    /// Containers through the Docker API.
    Docker(DockerExecutor),
}

impl Executor {
    /// The Docker executor if a Docker API answers, else the shell executor (with the reason).
    pub async fn detect() -> (Self, Option<String>) {
        match DockerExecutor::connect().await {
            Ok(docker) => (Executor::Docker(docker), None),
            Err(e) => (Executor::Shell(ShellExecutor), Some(e.to_string())),
        }
    }

    /// `shell` or `docker`.
    pub fn name(&self) -> &'static str {
        match self {
            Executor::Shell(_) => "shell",
            Executor::Docker(_) => "docker",
        }
    }

    async fn run(
        &self,
        spec: &ExecSpec,
        out: &crate::OutputSink,
        stop: crate::StopSignal,
    ) -> ExecOutcome {
        match self {
            Executor::Shell(shell) => shell.run(spec, out, stop).await,
            Executor::Docker(docker) => docker.run(spec, out, stop).await,
        }
    }
}

/// Everything an agent needs; usually read from a runner bundle.
#[derive(Clone)]
pub struct AgentConfig {
    /// The site to serve.
    pub site: SiteName,
    /// Its addresses, tried in order.
    pub addresses: Vec<String>,
    /// mTLS client config with the runner's certificate and the pinned site CA.
    pub tls: Arc<ClientConfig>,
    /// The runner's grant (Biscuit text). Never logged.
    pub token: String,
    /// The runner's name (as in its certificate).
    pub name: String,
    /// Queues to take from.
    pub queues: Vec<String>,
    /// Runs executed at once.
    pub slots: usize,
    /// How jobs are executed.
    pub executor: Executor,
    /// Where job sources are unpacked (one directory per run, removed afterwards).
    pub work_root: PathBuf,
    /// Transport limits.
    pub limits: NetLimits,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("site", &self.site)
            .field("addresses", &self.addresses)
            .field("name", &self.name)
            .field("queues", &self.queues)
            .field("slots", &self.slots)
            .field("executor", &self.executor.name())
            .finish_non_exhaustive()
    }
}

/// How the agent is asked to stop: `drain` finishes current runs and takes no new ones
/// (SIGTERM); `cancel` also stops current runs and hands their leases back (SIGINT).
#[derive(Clone, Debug)]
pub struct AgentControl {
    drain: watch::Receiver<bool>,
    cancel: watch::Receiver<bool>,
}

/// The stopping side of an [`AgentControl`].
#[derive(Clone, Debug)]
pub struct AgentStopper {
    drain: Arc<watch::Sender<bool>>,
    cancel: Arc<watch::Sender<bool>>,
}

/// A connected stopper and control.
pub fn agent_control() -> (AgentStopper, AgentControl) {
    let (drain_tx, drain) = watch::channel(false);
    let (cancel_tx, cancel) = watch::channel(false);
    (
        AgentStopper {
            drain: Arc::new(drain_tx),
            cancel: Arc::new(cancel_tx),
        },
        AgentControl { drain, cancel },
    )
}

impl AgentStopper {
    /// Finish current runs, take no new ones, then exit.
    pub fn drain(&self) {
        self.drain.send_replace(true);
    }

    /// Cancel current runs and exit.
    pub fn cancel(&self) {
        self.drain.send_replace(true);
        self.cancel.send_replace(true);
    }
}

impl AgentControl {
    /// Resolves once a drain is asked for. A dropped stopper asks for nothing: the agent
    /// then runs until its task is dropped.
    async fn drained(&mut self) {
        if self.drain.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    async fn canceled(&mut self) {
        if self.cancel.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }
}

/// Why a session with the site ended.
enum SessionEnd {
    /// Asked to stop; everything finished.
    Stopped,
    /// The connection or the grant failed.
    Lost(String),
}

/// Runs the agent until drained or canceled. Connection failures are retried with backoff;
/// a refused grant is retried too (an operator may fix it), and logged each time.
pub async fn run_agent(config: AgentConfig, mut control: AgentControl) {
    let config = Rc::new(config);
    let mut backoff = Duration::from_millis(200);
    loop {
        if control.is_draining() {
            return;
        }
        match serve_session(config.clone(), control.clone()).await {
            SessionEnd::Stopped => return,
            SessionEnd::Lost(why) => {
                warn!(error = %why, retry_in = ?backoff, "lost the site; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = control.drained() => return,
                }
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
}

/// One connection: dial, confirm, redeem, get workers, run slots until stopped or lost.
async fn serve_session(config: Rc<AgentConfig>, control: AgentControl) -> SessionEnd {
    let mut last_error = String::from("no site address");
    let mut connected = None;
    for addr in &config.addresses {
        match tinyci_net::dial::<gateway::Client>(
            addr,
            config.tls.clone(),
            &config.site,
            &config.limits,
        )
        .await
        {
            Ok(pair) => {
                connected = Some((addr.clone(), pair));
                break;
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    let Some((addr, (gateway, mut connection))) = connected else {
        return SessionEnd::Lost(last_error);
    };
    // TLS 1.3 reports a refused client certificate only on the first call.
    if let Err(e) = gateway.info_request().send().promise.await {
        return SessionEnd::Lost(format!("site {addr} refused the connection: {e}"));
    }
    let mut redeem = gateway.redeem_request();
    redeem.get().set_token(&config.token);
    let session = redeem.send().pipeline.get_session();
    let mut workers = Vec::new();
    for queue in &config.queues {
        let mut request = session.worker_request();
        request.get().set_queue(queue);
        let mut info = request.get().init_runner();
        info.set_name(&config.name);
        info.set_version(env!("CARGO_PKG_VERSION"));
        info.set_hostname(hostname());
        info.set_slots(u32::try_from(config.slots).unwrap_or(u32::MAX));
        info.init_executors(1).set(0, config.executor.name());
        // Await each worker now, so a refused grant is reported clearly and once.
        let worker = match request.send().promise.await {
            Ok(response) => match response.get().and_then(|r| r.get_worker()) {
                Ok(worker) => worker,
                Err(e) => return SessionEnd::Lost(format!("malformed worker from {addr}: {e}")),
            },
            Err(e) => {
                return SessionEnd::Lost(format!(
                    "site {addr} refused a worker for queue {queue}: {e}"
                ));
            }
        };
        workers.push(worker);
    }
    info!(%addr, queues = ?config.queues, slots = config.slots, executor = config.executor.name(), "connected; waiting for jobs");
    let workers = Rc::new(workers);
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..config.slots.max(1) {
        let span = info_span!("slot", slot);
        slots.spawn_local(
            run_slot(config.clone(), workers.clone(), control.clone()).instrument(span),
        );
    }
    let lost = tokio::select! {
        ended = connection.closed() => Some(match ended {
            Ok(()) => "the site closed the connection".to_owned(),
            Err(e) => e.to_string(),
        }),
        () = async { while slots.join_next().await.is_some() {} } => None,
    };
    match lost {
        None if control.is_draining() => SessionEnd::Stopped,
        None => SessionEnd::Lost("the site stopped handing out jobs".into()),
        Some(why) => {
            // Runs in flight lost their leases with the connection; stop them.
            slots.shutdown().await;
            SessionEnd::Lost(why)
        }
    }
}

/// One slot: wait for a job on any queue, run it, repeat; stop when drained.
async fn run_slot(
    config: Rc<AgentConfig>,
    workers: Rc<Vec<worker::Client>>,
    mut control: AgentControl,
) {
    let current: Rc<RefCell<Option<StopHandle>>> = Rc::default();
    let job_control: job_control::Client = capnp_rpc::new_client(Control {
        current: current.clone(),
    });
    loop {
        if control.is_draining() {
            return;
        }
        let waits = workers.iter().map(|w| {
            let mut next = w.next_request();
            next.get().set_control(job_control.clone());
            next.send().promise.boxed_local()
        });
        let first = select_all(waits);
        let job = tokio::select! {
            // Dropping the other pending calls cancels them; a job the site leased in the
            // race is dropped too, which returns its lease.
            (result, _, _) = first => match result {
                Ok(response) => match response.get().and_then(|r| r.get_job()) {
                    Ok(job) => job,
                    Err(e) => { warn!(error = %e, "malformed job"); continue; }
                },
                Err(e) => {
                    warn!(error = %e, "the site stopped giving jobs");
                    return;
                }
            },
            () = control.drained() => return,
        };
        let (stop, signal) = stop_pair();
        *current.borrow_mut() = Some(stop.clone());
        let mut cancel_all = control.clone();
        let run = run_job(&config, &job, signal);
        tokio::pin!(run);
        let outcome = tokio::select! {
            outcome = &mut run => outcome,
            () = cancel_all.canceled() => {
                // The operator stopped this runner, not the run: stop the process, report
                // nothing, and let the dropped Job hand the lease back so the run is retried
                // on another runner.
                stop.stop("the runner is shutting down");
                let _ = run.await;
                None
            }
        };
        *current.borrow_mut() = None;
        if let Some(outcome) = outcome {
            complete(&job, &outcome).await;
        }
        if control.is_draining() {
            return;
        }
    }
}

/// Runs one job; `None` if the lease was lost before it could run.
async fn run_job(
    config: &AgentConfig,
    job: &job::Client,
    signal: crate::StopSignal,
) -> Option<ExecOutcome> {
    let spec = match job.spec_request().send().promise.await {
        Ok(response) => response,
        Err(e) => {
            warn!(error = %e, "could not read the job spec; the lease is returned");
            return None;
        }
    };
    let spec = match spec.get().and_then(|r| r.get_spec()) {
        Ok(spec) => spec,
        Err(e) => return Some(ExecOutcome::errored(format!("malformed job spec: {e}"))),
    };
    let (label, exec) = match exec_spec(&spec, &config.work_root) {
        Ok(pair) => pair,
        Err(e) => return Some(ExecOutcome::errored(e)),
    };
    let lease_expires = spec.get_lease_expires_at();
    let artifacts: Vec<String> = spec
        .get_artifacts()
        .map(|list| {
            list.iter()
                .filter_map(|a| a.ok().and_then(|a| a.to_string().ok()))
                .collect()
        })
        .unwrap_or_default();
    let span = info_span!("run", run = %label);
    async move {
        info!("leased");
        let workdir = exec.source_dir.clone();
        let outcome = run_leased(
            job,
            exec,
            lease_expires,
            signal,
            &config.executor,
            &artifacts,
        )
        .await;
        if let Err(e) = std::fs::remove_dir_all(workdir.parent().unwrap_or(&workdir)) {
            warn!(error = %e, "failed to remove the run's directory");
        }
        info!(verdict = ?outcome.verdict, message = %outcome.message, "finished");
        Some(outcome)
    }
    .instrument(span)
    .await
}

async fn run_leased(
    job: &job::Client,
    exec: ExecSpec,
    lease_expires: i64,
    signal: crate::StopSignal,
    executor: &Executor,
    artifacts: &[String],
) -> ExecOutcome {
    // Source: the site streams the archive into our sink; then we unpack it.
    let archive = exec.source_dir.with_extension("tar");
    let sink = SourceSink::create(&archive);
    let sink = match sink {
        Ok(sink) => sink,
        Err(e) => return ExecOutcome::errored(format!("cannot store the source: {e}")),
    };
    let mut request = job.source_request();
    request.get().set_sink(capnp_rpc::new_client(sink));
    if let Err(e) = request.send().promise.await {
        return ExecOutcome::errored(format!("failed to fetch the source: {e}"));
    }
    if let Err(e) = unpack(&archive, &exec.source_dir) {
        return ExecOutcome::errored(format!("failed to unpack the source: {e}"));
    }
    let log = job.log_request().send().pipeline.get_sink();
    if let Err(e) = job.started_request().send().promise.await {
        return ExecOutcome::errored(format!("the site refused the start: {e}"));
    }

    let (out_tx, out_rx) = mpsc::channel::<OutputChunk>(16);
    let forward = forward_output(log.clone(), out_rx);
    let heartbeat = heartbeat(job.clone(), lease_expires);
    tokio::pin!(heartbeat);
    let (lost_tx, lost_rx) = stop_pair();
    let work = async {
        let mut lost = false;
        let outcome = {
            let run = async {
                // Stop when cancelled by the site or when the lease is lost.
                let merged = merge_stops(signal, lost_rx);
                executor.run(&exec, &out_tx, merged).await
            };
            tokio::pin!(run);
            tokio::select! {
                outcome = &mut run => outcome,
                Err(why) = &mut heartbeat => {
                    warn!(error = %why, "stopping the run");
                    lost = true;
                    lost_tx.stop(&why);
                    run.await
                }
            }
        };
        if !lost && !artifacts.is_empty() {
            let upload = crate::upload_run_artifacts(job, &exec, artifacts);
            tokio::pin!(upload);
            let report = tokio::select! {
                report = &mut upload => Some(report),
                Err(why) = &mut heartbeat => {
                    warn!(error = %why, "lost the lease while uploading artifacts");
                    None
                }
            };
            for chunk in report.iter().flat_map(crate::ArtifactReport::log_chunks) {
                let _ = out_tx.send(chunk).await;
            }
        }
        drop(out_tx);
        outcome
    };
    let (outcome, ()) = tokio::join!(work, forward);
    let _ = log.close_request().send().promise.await;
    outcome
}

/// One stop signal that fires when either input does.
fn merge_stops(mut a: crate::StopSignal, mut b: crate::StopSignal) -> crate::StopSignal {
    let (handle, signal) = stop_pair();
    tokio::task::spawn_local(async move {
        let reason =
            match futures::future::select(Box::pin(a.requested()), Box::pin(b.requested())).await {
                Either::Left((r, _)) | Either::Right((r, _)) => r,
            };
        handle.stop(&reason);
    });
    signal
}

/// Extends the lease at a third of its length until it fails.
async fn heartbeat(job: job::Client, mut expires_at_ms: i64) -> Result<(), String> {
    loop {
        let now = now_millis();
        let left = expires_at_ms.saturating_sub(now).max(300);
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(left / 3).unwrap_or(100),
        ))
        .await;
        match job.heartbeat_request().send().promise.await {
            Ok(response) => {
                expires_at_ms = response
                    .get()
                    .map(|r| r.get_lease_expires_at())
                    .map_err(|e| format!("lease lost: {e}"))?;
            }
            Err(e) => return Err(format!("lease lost: {e}")),
        }
    }
}

/// Streams output chunks to the site's log sink; capnp streaming applies backpressure, which
/// reaches the process through the bounded channel. Starts where the site's stored log ends,
/// so a retried run's log continues after the earlier attempt's instead of colliding with it.
async fn forward_output(log: log_sink::Client, mut rx: mpsc::Receiver<OutputChunk>) {
    let start = match log.acknowledged_request().send().promise.await {
        Ok(response) => response.get().map(|r| r.get_offset()),
        Err(e) => Err(e),
    };
    let mut offset = match start {
        // The log was cut at its size limit: the site discards whatever follows.
        Ok(u64::MAX) => {
            while rx.recv().await.is_some() {}
            return;
        }
        Ok(offset) => offset,
        Err(e) => {
            warn!(error = %e, "the site's log is unavailable; output is being dropped");
            while rx.recv().await.is_some() {}
            return;
        }
    };
    while let Some(chunk) = rx.recv().await {
        let len = chunk.data.len() as u64;
        let mut request = log.write_request();
        {
            let mut c = request.get().init_chunk();
            c.set_offset(offset);
            c.set_stream(match chunk.stream {
                Stream::Stdout => tinyci_schema::LogStream::Stdout,
                Stream::Stderr => tinyci_schema::LogStream::Stderr,
                Stream::System => tinyci_schema::LogStream::System,
            });
            c.set_timestamp_micros(micros(chunk.at));
            c.set_data(&chunk.data);
        }
        if let Err(e) = request.send().await {
            // Keep draining so the job is not blocked on a dead log.
            warn!(error = %e, "log stream failed; output is being dropped");
            while rx.recv().await.is_some() {}
            return;
        }
        offset += len;
    }
}

async fn complete(job: &job::Client, outcome: &ExecOutcome) {
    let mut request = job.complete_request();
    {
        let mut o = request.get().init_outcome();
        o.set_status(match outcome.verdict {
            Verdict::Passed => RunStatus::Passed,
            Verdict::Failed => RunStatus::Failed,
            Verdict::TimedOut => RunStatus::TimedOut,
            Verdict::Canceled => RunStatus::Canceled,
            Verdict::Errored => RunStatus::Errored,
        });
        o.set_exit_code(outcome.exit_code.unwrap_or(-1));
        o.set_message(&outcome.message);
    }
    if let Err(e) = request.send().promise.await {
        warn!(error = %e, "the site did not take the outcome; it will retry the run");
    }
}

/// Converts the wire spec to an executor spec with a fresh directory for the source.
fn exec_spec(
    spec: &tinyci_schema::job_spec::Reader<'_>,
    work_root: &Path,
) -> Result<(String, ExecSpec), String> {
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, String> {
        t.and_then(|t| t.to_string().map_err(Into::into))
            .map_err(|e| format!("malformed job spec: {e}"))
    };
    let run = spec.get_run().map_err(|e| e.to_string())?;
    let label = text(run.get_id())?;
    let attempt = run.get_attempt();
    let command = spec
        .get_command()
        .map_err(|e| e.to_string())?
        .iter()
        .map(&text)
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = BTreeMap::new();
    for kv in spec.get_env().map_err(|e| e.to_string())?.iter() {
        env.insert(text(kv.get_key())?, text(kv.get_value())?);
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!("malformed run id {label:?}"));
    }
    // Unique per process and run: two runners may share a work root (same name on one host,
    // or runners of two sites whose run ids coincide), and must never share a directory.
    static NEXT_DIR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = work_root.join(format!("{label}-{attempt}-{}-{serial}", std::process::id()));
    std::fs::create_dir_all(work_root)
        .map_err(|e| format!("cannot create {}: {e}", work_root.display()))?;
    // `create_dir`, not `create_dir_all`: an existing directory is someone else's.
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let source_dir = dir.join("src");
    std::fs::create_dir(&source_dir)
        .map_err(|e| format!("cannot create {}: {e}", source_dir.display()))?;
    let exec = ExecSpec {
        label: label.clone(),
        command,
        source_dir,
        workdir: text(spec.get_workdir())?,
        mountpoint: text(spec.get_mountpoint())?,
        image: text(spec.get_image())?,
        env,
        timeout: Duration::from_secs(u64::from(spec.get_timeout_seconds().max(1))),
        privileged: spec.get_privileged(),
        grace: Duration::from_secs(10),
    };
    Ok((label, exec))
}

/// `JobControl`: the site calls it to cancel the slot's current run.
struct Control {
    current: Rc<RefCell<Option<StopHandle>>>,
}

impl job_control::Server for Control {
    async fn cancel(
        self: Rc<Self>,
        params: job_control::CancelParams,
        _: job_control::CancelResults,
    ) -> Result<(), capnp::Error> {
        let reason = params
            .get()?
            .get_reason()?
            .to_string()
            .unwrap_or_else(|_| "canceled".into());
        if let Some(stop) = self.current.borrow().as_ref() {
            info!(%reason, "cancel requested by the site");
            stop.stop(&reason);
        }
        Ok(())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn micros(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
