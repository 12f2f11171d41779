//! The runner agent: connects to a site, redeems its grant for one `Worker` per queue, and
//! runs jobs as the site pushes them (`Worker.next` resolves when a job is leased to it).
//! Each job: fetch the spec and the source archive, stream output to the job's `LogSink`
//! with capnp flow control, heartbeat the lease, obey `JobControl.cancel`, and report the
//! outcome exactly once. Reconnects with backoff when the site goes away.
//!
//! Everything here is `!Send` (capnp): run it inside a `LocalSet`.

use std::cell::RefCell;
use std::collections::BTreeMap;
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
use crate::{Bubblewrap, ContainerLimits, DockerExecutor, ShellExecutor, WorkRoot};
use tinyci_core::Isolation;

/// One way a runner executes jobs.
#[derive(Clone, Debug)]
pub enum Executor {
    /// Local processes: on the host, or in the sandbox.
    Shell(ShellExecutor),
    /// Containers through the Docker API.
    Docker(DockerExecutor),
}

impl Executor {
    /// `shell` (on the host), `sandbox` or `docker`: what the runner tells its site.
    pub fn name(&self) -> &'static str {
        match self {
            Executor::Shell(shell) if shell.is_sandboxed() => "sandbox",
            Executor::Shell(_) => "shell",
            Executor::Docker(_) => "docker",
        }
    }

    /// How strongly it separates a job from the host.
    pub fn isolation(&self) -> Isolation {
        match self {
            Executor::Shell(shell) if shell.is_sandboxed() => Isolation::Sandbox,
            Executor::Shell(_) => Isolation::Host,
            Executor::Docker(_) => Isolation::Container,
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

/// Every executor a runner has; each job goes to one that isolates it as its site requires.
#[derive(Clone, Debug)]
pub struct Executors {
    list: Vec<Executor>,
}

/// What [`Executors::detect`] looks for and how it sets up what it finds.
#[derive(Clone, Debug, Default)]
pub struct DetectOptions {
    /// Paths sandboxed jobs must never see even where the sandbox shows their directory
    /// (the runner's bundle, the site's keys and data).
    pub hidden: Vec<std::path::PathBuf>,
    /// Limits for containers (and whether privileged ones may run).
    pub limits: ContainerLimits,
    /// When containers' images are pulled, unless a run's queue says otherwise.
    pub pull: tinyci_core::PullPolicy,
    /// Registry credentials for pulls (the host's Docker configuration).
    pub registry_auth: crate::RegistryAuth,
}

impl Executors {
    /// Exactly these executors.
    pub fn new(list: Vec<Executor>) -> Self {
        Self { list }
    }

    /// What this host can do: Docker if an engine answers, and the bubblewrap sandbox if it
    /// works; without the sandbox, also processes on the host, which a site's default policy
    /// gives only `local` work. Also returns, for people, why something was not found.
    pub async fn detect(options: DetectOptions) -> (Self, Vec<String>) {
        let mut list = Vec::new();
        let mut notes = Vec::new();
        match DockerExecutor::connect().await {
            Ok(docker) => list.push(Executor::Docker(
                docker
                    .with_limits(options.limits)
                    .with_pulls(options.pull, options.registry_auth),
            )),
            Err(e) => notes.push(e.to_string()),
        }
        match Bubblewrap::detect().await {
            Ok(bwrap) => list.push(Executor::Shell(ShellExecutor::sandboxed(
                bwrap.hiding(options.hidden),
            ))),
            Err(e) => notes.push(e.to_string()),
        }
        if !list.iter().any(|e| matches!(e, Executor::Shell(_))) {
            // Only `local` work may run here (the site's policy says so, and `choose` never
            // gives a run less isolation than its spec requires).
            let contained = match crate::Containment::detect().await {
                Ok(containment) => Some(containment),
                Err(e) => {
                    notes.push(format!(
                        "no PID namespace for jobs on the host ({e}): processes a job leaves \
                         behind with setsid can outlive its run"
                    ));
                    None
                }
            };
            list.push(Executor::Shell(ShellExecutor::host(contained)));
        }
        (Self { list }, notes)
    }

    /// The executors, in the order they are preferred.
    pub fn list(&self) -> &[Executor] {
        &self.list
    }

    /// `docker, sandbox`.
    pub fn describe(&self) -> String {
        self.list
            .iter()
            .map(Executor::name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The strongest isolation among them.
    pub fn isolation(&self) -> Isolation {
        self.list
            .iter()
            .map(Executor::isolation)
            .max()
            .unwrap_or_default()
    }

    /// Marks the containers its Docker executor creates as runner `name`'s, and removes what
    /// a previous run of that runner left behind (a crash, a kill -9, a lost host power).
    /// Returns how many containers were removed.
    pub async fn claim_for(&mut self, name: &str) -> Result<usize, crate::DockerError> {
        let mut removed = 0;
        for executor in &mut self.list {
            if let Executor::Docker(docker) = executor {
                *docker = docker.clone().owned_by(name);
                removed += docker.remove_leftovers().await?.len();
            }
        }
        Ok(removed)
    }

    /// Whether privileged containers may run (a Docker executor set up to allow them).
    pub fn allow_privileged(&self) -> bool {
        self.list
            .iter()
            .any(|e| matches!(e, Executor::Docker(d) if d.limits().allow_privileged))
    }

    /// The executor for a run that needs `needs` isolation: a container when it names an
    /// image or is privileged (never a process executor instead), a process executor that
    /// isolates enough when it names no image (a container needs one). Never one that
    /// isolates less than the site requires.
    fn choose(&self, spec: &ExecSpec, needs: Isolation) -> Result<&Executor, String> {
        let fits = |e: &&Executor| e.isolation() >= needs;
        let docker = self
            .list
            .iter()
            .filter(fits)
            .find(|e| matches!(e, Executor::Docker(_)));
        let shell = self
            .list
            .iter()
            .filter(fits)
            .find(|e| matches!(e, Executor::Shell(_)));
        if spec.privileged || !spec.image.is_empty() {
            // A shell would ignore the image (and `privileged`) and run the command on this
            // host: an image runs in a container or not at all.
            return docker.ok_or_else(|| {
                format!(
                    "this run names image {:?} and this runner has no container executor \
                     ({}); it will not run it on the host instead",
                    spec.image,
                    self.describe()
                )
            });
        }
        shell.ok_or_else(|| {
            format!(
                "the site requires {needs} isolation for this run and this runner offers only \
                 {} ({}); it will not run it with less",
                self.isolation(),
                self.describe()
            )
        })
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
    /// Operator-given labels (`--label`): runs that list labels go only to runners with
    /// every one of them.
    pub labels: Vec<String>,
    /// Take one job, finish it, and stop (`--once`, for single-use machines): the agent then
    /// runs one slot whatever `slots` says.
    pub once: bool,
    /// How jobs are executed.
    pub executors: Executors,
    /// Where job sources are unpacked (one directory per run, removed afterwards), claimed
    /// by this process.
    pub work_root: Arc<WorkRoot>,
    /// Transport limits.
    pub limits: NetLimits,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// What the agent has done so far (for `--metrics`).
    pub stats: Rc<AgentStats>,
}

/// What an agent has done so far, for its metrics endpoint. Single-threaded, like the agent.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Whether it is connected to its site now.
    pub connected: std::cell::Cell<bool>,
    /// Connections made (the first and every reconnection).
    pub connections: std::cell::Cell<u64>,
    /// Jobs leased to it.
    pub jobs_started: std::cell::Cell<u64>,
    /// Jobs finished, by verdict (`passed`, `failed`, …).
    pub jobs_finished: RefCell<BTreeMap<&'static str, u64>>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("site", &self.site)
            .field("addresses", &self.addresses)
            .field("name", &self.name)
            .field("queues", &self.queues)
            .field("slots", &self.slots)
            .field("labels", &self.labels)
            .field("once", &self.once)
            .field("executors", &self.executors.describe())
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

/// Bytes of output a job keeps until the site confirms them durable: what a runner buffers
/// while its site is unreachable. Past it the runner stops reading the command's output, so
/// the command blocks on its pipes (nothing is dropped) until the site is back.
pub const MAX_UNACKED_LOG_BYTES: u64 = 16 * 1024 * 1024;

/// How many bytes are sent between two `LogSink.acknowledged` calls that trim the buffer.
const ACK_EVERY: u64 = 1024 * 1024;
/// How long output waits to be joined by more of its stream before it is sent: a command
/// that prints a byte at a time is sent in chunks, not a write (and a stored record) per
/// byte, at the cost of this much delay on a live log.
const LOG_FLUSH_AFTER: Duration = Duration::from_millis(50);

/// The agent's current connection to its site: `None` while disconnected. Slots wait on it
/// for work; running jobs wait on it to resume their leases after an outage.
type SiteLink = watch::Sender<Option<Rc<Connected>>>;

/// One live connection: its serial number and one worker per queue.
struct Connected {
    serial: u64,
    workers: BTreeMap<String, worker::Client>,
    /// A slot whose worker was refused (revoked grant) asks for a fresh connection here,
    /// which re-redeems the grant and reports clearly why it fails.
    renew: Rc<tokio::sync::Notify>,
}

/// Why the agent stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The site answered and refused the grant (revoked, expired, not this holder's, or
    /// without the queue): no retry can change that, so the agent stops instead of knocking
    /// forever.
    #[error("{0}")]
    Refused(String),
}

/// Why one connection attempt failed.
enum ConnectError {
    /// The site could not be reached or the connection broke: retried with backoff.
    Unreachable(String),
    /// The site refused the grant: final.
    Refused(String),
}

/// Runs the agent until drained or canceled, or until the site refuses its grant for good.
/// Connection failures are retried with backoff. Jobs keep running while the site is away
/// and resume their leases when it is back.
pub async fn run_agent(config: AgentConfig, mut control: AgentControl) -> Result<(), AgentError> {
    let config = Rc::new(config);
    let link: Rc<SiteLink> = Rc::new(watch::channel(None).0);
    let mut slots = tokio::task::JoinSet::new();
    let slot_count = if config.once { 1 } else { config.slots.max(1) };
    for slot in 0..slot_count {
        let span = info_span!("slot", slot);
        slots.spawn_local(run_slot(config.clone(), link.clone(), control.clone()).instrument(span));
    }
    let mut backoff = tinyci_net::Backoff::new(Duration::from_millis(200), config.max_backoff);
    let mut serial = 0u64;
    loop {
        let ended = match connect(&config).await {
            Ok((workers, mut connection, addr)) => {
                serial += 1;
                config.stats.connected.set(true);
                config
                    .stats
                    .connections
                    .set(config.stats.connections.get() + 1);
                backoff.reset();
                let renew = Rc::new(tokio::sync::Notify::new());
                link.send_replace(Some(Rc::new(Connected {
                    serial,
                    workers,
                    renew: renew.clone(),
                })));
                info!(%addr, queues = ?config.queues, slots = config.slots, executors = %config.executors.describe(), "connected; waiting for jobs");
                let lost = tokio::select! {
                    ended = connection.closed() => Some(match ended {
                        Ok(()) => "the site closed the connection".to_owned(),
                        Err(e) => e.to_string(),
                    }),
                    () = renew.notified() => Some("the site stopped handing out jobs".to_owned()),
                    () = all_done(&mut slots) => None,
                };
                link.send_replace(None);
                config.stats.connected.set(false);
                match lost {
                    None => return Ok(()),
                    Some(why) => why,
                }
            }
            Err(ConnectError::Unreachable(why)) => why,
            Err(ConnectError::Refused(why)) => {
                // Running jobs were told to stop by the site when it took the grant back.
                link.send_replace(None);
                slots.abort_all();
                while slots.join_next().await.is_some() {}
                return Err(AgentError::Refused(why));
            }
        };
        let wait = backoff.next_delay();
        warn!(error = %ended, retry_in = ?wait, "lost the site; reconnecting");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = all_done(&mut slots) => return Ok(()),
            () = control.canceled() => {
                // Nothing to hand back without a site; stop what runs and leave.
                link.send_replace(None);
                all_done(&mut slots).await;
                return Ok(());
            }
        }
    }
}

/// Resolves once every slot has returned.
async fn all_done(slots: &mut tokio::task::JoinSet<()>) {
    while slots.join_next().await.is_some() {}
}

/// Dials the site, confirms it, redeems the grant and asks for one worker per queue.
async fn connect(
    config: &AgentConfig,
) -> Result<
    (
        BTreeMap<String, worker::Client>,
        tinyci_net::ClientConnection,
        String,
    ),
    ConnectError,
> {
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
    let Some((addr, (gateway, connection))) = connected else {
        return Err(ConnectError::Unreachable(last_error));
    };
    // TLS 1.3 reports a refused client certificate only on the first call. A refused
    // certificate may be let in again (a partner pinned anew): retried.
    if let Err(e) = gateway.info_request().send().promise.await {
        return Err(ConnectError::Unreachable(format!(
            "site {addr} refused the connection: {e}"
        )));
    }
    let mut redeem = gateway.redeem_request();
    redeem.get().set_token(&config.token);
    let session = redeem.send().pipeline.get_session();
    let mut workers = BTreeMap::new();
    for queue in &config.queues {
        let mut request = session.worker_request();
        request.get().set_queue(queue);
        let mut info = request.get().init_runner();
        info.set_name(&config.name);
        info.set_version(env!("CARGO_PKG_VERSION"));
        info.set_hostname(hostname());
        info.set_slots(u32::try_from(config.slots).unwrap_or(u32::MAX));
        let executors = config.executors.list();
        let mut names = info
            .reborrow()
            .init_executors(u32::try_from(executors.len()).unwrap_or(u32::MAX));
        for (i, executor) in executors.iter().enumerate() {
            names.set(u32::try_from(i).unwrap_or(u32::MAX), executor.name());
        }
        info.set_allow_privileged(config.executors.allow_privileged());
        let mut labels = info
            .reborrow()
            .init_labels(u32::try_from(config.labels.len()).unwrap_or(u32::MAX));
        for (i, label) in config.labels.iter().enumerate() {
            labels.set(u32::try_from(i).unwrap_or(u32::MAX), label);
        }
        // Await each worker now, so a refused grant is reported clearly and once.
        let worker = match request.send().promise.await {
            Ok(response) => response.get().and_then(|r| r.get_worker()).map_err(|e| {
                ConnectError::Unreachable(format!("malformed worker from {addr}: {e}"))
            })?,
            Err(e) if disconnected(&e) => {
                return Err(ConnectError::Unreachable(format!(
                    "lost site {addr} while asking for a worker: {e}"
                )));
            }
            Err(e) => {
                return Err(ConnectError::Refused(format!(
                    "site {addr} refused a worker for queue {queue}: {e}"
                )));
            }
        };
        workers.insert(queue.clone(), worker);
    }
    Ok((workers, connection, addr))
}

/// Whether a call failed because the connection went away (rather than being refused).
fn disconnected(e: &capnp::Error) -> bool {
    e.kind == capnp::ErrorKind::Disconnected
}

/// One slot: wait for a job on any queue, run it, repeat; stop when drained.
async fn run_slot(config: Rc<AgentConfig>, link: Rc<SiteLink>, control: AgentControl) {
    let mut reporting = None;
    take_jobs(config, link, control, &mut reporting).await;
    // Whatever ended the slot, the last run's outcome is still reported.
    if let Some(report) = reporting {
        report.finished().await;
    }
}

/// A run's outcome being reported beside the slot's next request. Aborted if the slot is
/// dropped (the agent stopping or its grant refused), as an inline report would be: a report
/// whose connection is gone would otherwise wait for a reconnection that never comes.
struct Report(tokio::task::JoinHandle<()>);

impl Report {
    async fn finished(mut self) {
        let _ = (&mut self.0).await;
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The slot's loop: asks for a run, runs it, and reports its outcome while asking for the
/// next one. The report of the last run is left in `reporting`.
async fn take_jobs(
    config: Rc<AgentConfig>,
    link: Rc<SiteLink>,
    mut control: AgentControl,
    reporting: &mut Option<Report>,
) {
    let secrets: Rc<RefCell<crate::secrets::SlotSecrets>> = Rc::default();
    let mut connection = link.subscribe();
    loop {
        if control.is_draining() {
            return;
        }
        let connected = tokio::select! {
            connected = connection.wait_for(Option::is_some) => match connected {
                Ok(c) => c.clone(),
                Err(_) => return,
            },
            () = control.drained() => return,
        };
        let Some(connected) = connected else { continue };
        // Each lease gets a control of its own: a cancel meant for the run whose outcome is
        // still being reported must not stop the run this slot takes next.
        let current: Rc<RefCell<Option<StopHandle>>> = Rc::default();
        let job_control: job_control::Client = capnp_rpc::new_client(Control {
            current: current.clone(),
            secrets: secrets.clone(),
        });
        let waits = connected.workers.iter().map(|(queue, w)| {
            let mut next = w.next_request();
            next.get().set_control(job_control.clone());
            let queue = queue.clone();
            next.send()
                .promise
                .map(move |result| (queue, result))
                .boxed_local()
        });
        let first = select_all(waits);
        let (queue, job) = tokio::select! {
            // Dropping the other pending calls cancels them; a job the site leased in the
            // race is dropped before it started, which hands it back at once.
            ((queue, result), _, _) = first => match result.and_then(|r| r.get()?.get_job()) {
                Ok(job) => (queue, job),
                Err(e) => {
                    if !disconnected(&e) {
                        // The refusal may follow from the last run's end (a drained runner, a
                        // spent single-use grant): its report lands before the reconnection.
                        if let Some(report) = reporting.take() {
                            report.finished().await;
                        }
                        warn!(error = %e, "the site stopped giving jobs; reconnecting");
                        connected.renew.notify_one();
                    }
                    // Either way this connection is done for: wait for the next one rather
                    // than asking the dead one again.
                    tokio::select! {
                        _ = connection.wait_for(|c| c.as_ref().is_none_or(|c| c.serial != connected.serial)) => continue,
                        () = control.drained() => return,
                    }
                }
            },
            () = control.drained() => return,
        };
        let serial = connected.serial;
        drop(connected);
        let (stop, signal) = stop_pair();
        *current.borrow_mut() = Some(stop.clone());
        let job = Rc::new(JobLink {
            queue,
            run: RefCell::default(),
            attempt: std::cell::Cell::new(0),
            control: job_control.clone(),
            job: RefCell::new(job),
            generation: std::cell::Cell::new(0),
            serial: std::cell::Cell::new(serial),
            link: link.clone(),
            reattaching: tokio::sync::Mutex::new(()),
            secrets: secrets.clone(),
            stopping: control.clone(),
        });
        let mut cancel_all = control.clone();
        let run = run_job(&config, &job, signal);
        tokio::pin!(run);
        let outcome = tokio::select! {
            outcome = &mut run => outcome,
            () = cancel_all.canceled() => {
                // The operator stopped this runner, not the run: stop the process, report
                // nothing, and hand the lease back so the run is retried elsewhere.
                stop.stop("the runner is shutting down");
                let _ = run.await;
                let _ = job.current().0.release_request().send().promise.await;
                None
            }
        };
        *current.borrow_mut() = None;
        // One report outstanding per slot: the previous one is done before this one starts.
        if let Some(previous) = reporting.take() {
            previous.finished().await;
        }
        if let Some(outcome) = outcome {
            // Reported while the slot asks for its next run: the site can commit the outcome
            // and the next lease together, and the slot does not wait out a commit between.
            let job = job.clone();
            *reporting = Some(Report(tokio::task::spawn_local(async move {
                complete(&job, &outcome).await;
            })));
        }
        if control.is_draining() || config.once {
            return;
        }
    }
}

/// A running job's handle on its lease, valid across reconnections: after the connection is
/// lost it waits for the agent's next one and resumes the lease there (`Worker.resume`).
struct JobLink {
    queue: String,
    run: RefCell<String>,
    attempt: std::cell::Cell<u32>,
    control: job_control::Client,
    job: RefCell<job::Client>,
    /// Bumped at each resume: a failure seen on an older `job` is already dealt with.
    generation: std::cell::Cell<u64>,
    /// The connection `job` lives on.
    serial: std::cell::Cell<u64>,
    link: Rc<SiteLink>,
    reattaching: tokio::sync::Mutex<()>,
    /// The running job's secrets, shared with the slot's `JobControl`, which deletes a
    /// withdrawn secret's file.
    secrets: Rc<RefCell<crate::secrets::SlotSecrets>>,
    /// The agent's control: a cancel (SIGINT) ends a wait for the site to come back.
    stopping: AgentControl,
}

impl JobLink {
    /// Whether a call that failed with `e` was cut by a lost connection rather than refused.
    /// A transport failure does not always arrive as `Disconnected` (a TLS stream cut
    /// without close_notify is `Failed`), so wait briefly for the agent to notice the
    /// connection closing too.
    async fn lost_connection(&self, e: &capnp::Error) -> bool {
        if disconnected(e) {
            return true;
        }
        let serial = self.serial.get();
        let mut link = self.link.subscribe();
        let moved = link.wait_for(|c| c.as_ref().is_none_or(|c| c.serial != serial));
        matches!(
            tokio::time::timeout(Duration::from_secs(2), moved).await,
            Ok(Ok(_))
        )
    }

    /// The job capability now, and its generation.
    fn current(&self) -> (job::Client, u64) {
        (self.job.borrow().clone(), self.generation.get())
    }

    /// After a call on generation `failed` was cut by a lost connection: waits for a newer
    /// connection and resumes the lease there. `Err` if the site refuses (the lease is lost)
    /// or the runner is canceled first: a drain waits for the site, so nothing is lost, but
    /// a cancel must not hang on a site that may never come back.
    async fn reattach(&self, failed: u64) -> Result<job::Client, String> {
        const CANCELED: &str = "the runner was canceled while the site was unreachable";
        let mut stopping = self.stopping.clone();
        let _one_at_a_time = tokio::select! {
            guard = self.reattaching.lock() => guard,
            () = stopping.canceled() => return Err(CANCELED.to_owned()),
        };
        if self.generation.get() != failed {
            return Ok(self.job.borrow().clone());
        }
        let mut link = self.link.subscribe();
        loop {
            let serial = self.serial.get();
            let connected = tokio::select! {
                // A connection that is already back wins over a cancel: the lease is resumed,
                // so the slot can hand it back at once rather than leave it to expire.
                biased;
                connected = link.wait_for(|c| c.as_ref().is_some_and(|c| c.serial != serial)) => {
                    connected.map_err(|_| "the runner is stopping".to_owned())?.clone()
                }
                () = stopping.canceled() => return Err(CANCELED.to_owned()),
            };
            let Some(connected) = connected else { continue };
            let Some(worker) = connected.workers.get(&self.queue) else {
                return Err(format!(
                    "the site no longer gives a worker for queue {}",
                    self.queue
                ));
            };
            let mut request = worker.resume_request();
            request.get().set_run(self.run.borrow().as_str());
            request.get().set_attempt(self.attempt.get());
            request.get().set_control(self.control.clone());
            match request.send().promise.await {
                Ok(response) => {
                    let job = response
                        .get()
                        .and_then(|r| r.get_job())
                        .map_err(|e| format!("malformed job from the site: {e}"))?;
                    *self.job.borrow_mut() = job.clone();
                    self.generation.set(self.generation.get() + 1);
                    self.serial.set(connected.serial);
                    info!("resumed the lease after reconnecting");
                    return Ok(job);
                }
                Err(e)
                    if disconnected(&e)
                        || self
                            .link
                            .borrow()
                            .as_ref()
                            .is_none_or(|c| c.serial != connected.serial) =>
                {
                    self.serial.set(connected.serial);
                }
                Err(e) => return Err(format!("the site would not resume the run: {e}")),
            }
        }
    }
}

/// Runs one job; `None` if the lease was lost before it could run.
async fn run_job(
    config: &AgentConfig,
    link: &Rc<JobLink>,
    signal: crate::StopSignal,
) -> Option<ExecOutcome> {
    let (job, _) = link.current();
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
    let (label, mut exec, needs) = match exec_spec(&spec, &config.work_root) {
        Ok(parts) => parts,
        Err(e) => return Some(ExecOutcome::errored(e)),
    };
    // Secrets come through the lease, straight into the run's own directory; an error
    // leaves nothing behind (the directory goes with the run).
    let attempt = spec.get_run().map(|r| r.get_attempt()).unwrap_or_default();
    link.secrets.borrow_mut().begin(&label, attempt);
    let forms = match crate::secrets::fetch(&job).await {
        Ok(secrets) => {
            crate::secrets::install(&mut exec, secrets, link.secrets.borrow().withdrawn())
        }
        Err(e) => Err(e),
    };
    let forms = match forms {
        Ok(forms) => forms,
        Err(e) => {
            if let Err(e) =
                crate::source::remove_run_dir(exec.source_dir.parent().unwrap_or(&exec.source_dir))
            {
                warn!(error = %e, "failed to remove the run's directory");
            }
            return Some(ExecOutcome::errored(e));
        }
    };
    link.secrets.borrow_mut().placed(&exec);
    *link.run.borrow_mut() = label.clone();
    link.attempt.set(attempt);
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
        config
            .stats
            .jobs_started
            .set(config.stats.jobs_started.get() + 1);
        let workdir = exec.source_dir.clone();
        let outcome = match config.executors.choose(&exec, needs) {
            Ok(executor) => {
                info!(executor = executor.name(), required = %needs, "running");
                run_leased(
                    link,
                    exec,
                    (lease_expires, &forms),
                    signal,
                    executor,
                    &artifacts,
                )
                .await
            }
            Err(why) => ExecOutcome::errored(why),
        };
        // The run's directory holds its secrets directory: both go now.
        link.secrets.borrow_mut().end();
        if let Err(e) = crate::source::remove_run_dir(workdir.parent().unwrap_or(&workdir)) {
            warn!(error = %e, "failed to remove the run's directory");
        }
        info!(verdict = ?outcome.verdict, message = %outcome.message, "finished");
        *config
            .stats
            .jobs_finished
            .borrow_mut()
            .entry(outcome.verdict.as_str())
            .or_default() += 1;
        Some(outcome)
    }
    .instrument(span)
    .await
}

async fn run_leased(
    link: &Rc<JobLink>,
    exec: ExecSpec,
    (lease_expires, forms): (i64, &[Vec<u8>]),
    signal: crate::StopSignal,
    executor: &Executor,
    artifacts: &[String],
) -> ExecOutcome {
    let (job, _) = link.current();
    // Source: the site streams the archive into our sink; then we unpack it.
    let archive = exec.source_dir.with_extension("tar");
    let sink = SourceSink::create(&archive);
    let sink = match sink {
        Ok(sink) => sink,
        Err(e) => {
            return ExecOutcome::errored(format!(
                "cannot store the source: {}",
                tinyci_core::error_chain(&e)
            ));
        }
    };
    let mut request = job.source_request();
    request.get().set_sink(capnp_rpc::new_client(sink));
    if let Err(e) = request.send().promise.await {
        return ExecOutcome::errored(format!("failed to fetch the source: {e}"));
    }
    if let Err(e) = unpack(&archive, &exec.source_dir) {
        return ExecOutcome::errored(format!("failed to unpack the source: {e}"));
    }
    if let Err(e) = job.started_request().send().promise.await {
        return ExecOutcome::errored(format!("the site refused the start: {e}"));
    }

    let (out_tx, out_rx) = mpsc::channel::<OutputChunk>(16);
    // Output is forwarded while the command runs (the channel is small: a command writing
    // more than it holds would otherwise block on its own output).
    // Secret values are masked here, before any output leaves the runner.
    let forward = forward_output(link, crate::secrets::MaskedOutput::new(out_rx, forms));
    let (lost_tx, lost_rx) = stop_pair();
    let work = async {
        // Owned by `work`, so it is dropped when the work ends: a heartbeat left waiting in
        // `reattach` through an outage would otherwise hold the lease's reattach lock while
        // `forward` needs it to flush the last output, and neither would ever finish.
        let heartbeat = keep_lease(link, lease_expires);
        tokio::pin!(heartbeat);
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
                why = &mut heartbeat => {
                    warn!(error = %why, "stopping the run");
                    lost = true;
                    lost_tx.stop(&why);
                    run.await
                }
            }
        };
        if !lost && !artifacts.is_empty() {
            let (job, _) = link.current();
            let upload = crate::upload_run_artifacts(&job, &exec, artifacts);
            tokio::pin!(upload);
            let report = tokio::select! {
                report = &mut upload => Some(report),
                why = &mut heartbeat => {
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

/// Extends the lease at a third of its length; through an outage it waits for the agent to
/// reconnect and resumes the lease. Returns why the lease was lost.
async fn keep_lease(link: &JobLink, mut expires_at_ms: i64) -> String {
    loop {
        let now = now_millis();
        let left = expires_at_ms.saturating_sub(now).max(300);
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(left / 3).unwrap_or(100),
        ))
        .await;
        let (job, generation) = link.current();
        match job.heartbeat_request().send().promise.await {
            Ok(response) => match response.get().map(|r| r.get_lease_expires_at()) {
                Ok(at) => expires_at_ms = at,
                Err(e) => return format!("lease lost: {e}"),
            },
            Err(e) if link.lost_connection(&e).await => {
                warn!("lost the site while running; the run goes on and resumes when it is back");
                if let Err(why) = link.reattach(generation).await {
                    return why;
                }
                // Renew right away on the new connection.
                expires_at_ms = now_millis();
            }
            Err(e) => return format!("lease lost: {e}"),
        }
    }
}

/// Joins to `chunk` the output of its stream that arrives within [`LOG_FLUSH_AFTER`], up to
/// [`MAX_CHUNK`]. Returns a chunk of the other stream that arrived meanwhile, to send next.
async fn gather(
    chunk: &mut OutputChunk,
    rx: &mut crate::secrets::MaskedOutput,
) -> Option<OutputChunk> {
    let deadline = tokio::time::Instant::now() + LOG_FLUSH_AFTER;
    while chunk.data.len() < crate::exec::MAX_CHUNK {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(more))
                if more.stream == chunk.stream
                    && chunk.data.len() + more.data.len() <= crate::exec::MAX_CHUNK =>
            {
                chunk.data.extend_from_slice(&more.data);
            }
            Ok(Some(other)) => return Some(other),
            // The command's output ended, or the deadline passed: send what there is.
            Ok(None) | Err(_) => return None,
        }
    }
    None
}

/// Output sent to the site but not yet confirmed durable, resent after an outage.
#[derive(Default)]
struct Unacked {
    chunks: std::collections::VecDeque<(u64, OutputChunk)>,
    bytes: u64,
}

impl Unacked {
    /// Forgets everything the site has stored (below `acknowledged`).
    fn trim(&mut self, acknowledged: u64) {
        while let Some((offset, chunk)) = self.chunks.front_mut() {
            let len = chunk.data.len() as u64;
            if *offset + len <= acknowledged {
                self.bytes -= len;
                self.chunks.pop_front();
            } else {
                if *offset < acknowledged {
                    // Straddles the acknowledged offset: keep the unstored tail.
                    let cut = usize::try_from(acknowledged - *offset).unwrap_or(usize::MAX);
                    chunk.data.drain(..cut.min(chunk.data.len()));
                    self.bytes -= acknowledged - *offset;
                    *offset = acknowledged;
                }
                break;
            }
        }
    }
}

/// Where a job's log stands on the site.
enum SinkState {
    /// Writing to this sink.
    Open(log_sink::Client),
    /// The log was cut at its size limit (or cannot be written): output is dropped.
    Discarding,
}

fn write_request(
    sink: &log_sink::Client,
    offset: u64,
    chunk: &OutputChunk,
) -> capnp::capability::StreamingRequest<log_sink::write_params::Owned> {
    let mut request = sink.write_request();
    let mut c = request.get().init_chunk();
    c.set_offset(offset);
    c.set_stream(match chunk.stream {
        Stream::Stdout => tinyci_schema::LogStream::Stdout,
        Stream::Stderr => tinyci_schema::LogStream::Stderr,
        Stream::System => tinyci_schema::LogStream::System,
    });
    c.set_timestamp_micros(micros(chunk.at));
    c.set_data(&chunk.data);
    request
}

async fn acknowledged(sink: &log_sink::Client) -> Result<u64, capnp::Error> {
    let response = sink.acknowledged_request().send().promise.await?;
    Ok(response.get()?.get_offset())
}

/// Gets a log sink on the current job (resuming the lease first if the connection is gone),
/// trims `unacked` to what the site stored, and resends the rest. Returns the sink and the
/// offset the site's log continues at.
async fn resync(link: &JobLink, unacked: &mut Unacked) -> Result<(SinkState, u64), String> {
    loop {
        let (job, generation) = link.current();
        let sink = job.log_request().send().pipeline.get_sink();
        let stored = match acknowledged(&sink).await {
            Ok(stored) => stored,
            Err(e) if link.lost_connection(&e).await => {
                link.reattach(generation).await?;
                continue;
            }
            Err(e) => return Err(format!("the site's log is unavailable: {e}")),
        };
        if stored == u64::MAX {
            // Cut at its size limit: the site takes nothing more.
            unacked.chunks.clear();
            unacked.bytes = 0;
            return Ok((SinkState::Discarding, u64::MAX));
        }
        unacked.trim(stored);
        let mut failed = None;
        for (offset, chunk) in &unacked.chunks {
            if let Err(e) = write_request(&sink, *offset, chunk).send().await {
                failed = Some(e);
                break;
            }
        }
        match failed {
            None => {
                let end = unacked
                    .chunks
                    .back()
                    .map_or(stored, |(o, c)| o + c.data.len() as u64);
                return Ok((SinkState::Open(sink), end));
            }
            Some(e) if link.lost_connection(&e).await => {
                link.reattach(generation).await?;
            }
            Some(e) => return Err(format!("the site refused the log: {e}")),
        }
    }
}

/// Streams output chunks to the job's log sink with capnp flow control (backpressure reaches
/// the process through the bounded channel). Keeps what the site has not confirmed durable,
/// up to [`MAX_UNACKED_LOG_BYTES`], and after an outage resumes at the site's acknowledged
/// offset: no gap, no duplicate. Starts where the stored log ends, so a retried run's log
/// continues after the earlier attempt's. Closes the log (all of it durable) at the end.
async fn forward_output(link: &JobLink, mut rx: crate::secrets::MaskedOutput) {
    let mut unacked = Unacked::default();
    let mut next = 0;
    let mut sink = reopen(link, &mut unacked, &mut next).await;
    let mut since_ack = 0u64;
    // A chunk of the other stream that ended a gathering, sent next.
    let mut held: Option<OutputChunk> = None;
    loop {
        if unacked.bytes >= MAX_UNACKED_LOG_BYTES {
            // Full: wait for the site to confirm some before reading more output.
            let SinkState::Open(open) = &sink else {
                unacked = Unacked::default();
                continue;
            };
            match acknowledged(open).await {
                Ok(u64::MAX) => {
                    unacked = Unacked::default();
                    sink = SinkState::Discarding;
                }
                Ok(stored) => {
                    let before = unacked.bytes;
                    unacked.trim(stored);
                    if unacked.bytes == before {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                // Typically the connection is gone: reopen waits for it and resends.
                Err(_) => sink = reopen(link, &mut unacked, &mut next).await,
            }
            continue;
        }
        let first = match held.take() {
            Some(chunk) => Some(chunk),
            None => rx.recv().await,
        };
        let Some(mut chunk) = first else { break };
        held = gather(&mut chunk, &mut rx).await;
        let SinkState::Open(open) = &sink else {
            continue;
        };
        let offset = next;
        let len = chunk.data.len() as u64;
        next += len;
        let sent = write_request(open, offset, &chunk).send().await;
        unacked.chunks.push_back((offset, chunk));
        unacked.bytes += len;
        since_ack += len;
        let mut cut = sent.err();
        if cut.is_none() && since_ack >= ACK_EVERY {
            since_ack = 0;
            match acknowledged(open).await {
                Ok(u64::MAX) => {
                    unacked = Unacked::default();
                    sink = SinkState::Discarding;
                    continue;
                }
                Ok(stored) => unacked.trim(stored),
                Err(e) => cut = Some(e),
            }
        }
        if let Some(e) = cut {
            sink = if link.lost_connection(&e).await {
                reopen(link, &mut unacked, &mut next).await
            } else {
                warn!(error = %e, "the site refused the log; output is being dropped");
                SinkState::Discarding
            };
        }
    }
    // Everything written: close, which resolves once all of it is durable.
    while let SinkState::Open(open) = &sink {
        match open.close_request().send().promise.await {
            Ok(_) => return,
            Err(e) if link.lost_connection(&e).await => {
                sink = reopen(link, &mut unacked, &mut next).await;
            }
            Err(e) => {
                warn!(error = %e, "the site could not store the end of the log");
                return;
            }
        }
    }
}

/// [`resync`], moving `next` to where the site's log continues; when the site will not take
/// the log any more, a discarding sink (and a warning).
async fn reopen(link: &JobLink, unacked: &mut Unacked, next: &mut u64) -> SinkState {
    match resync(link, unacked).await {
        Ok((SinkState::Open(sink), end)) => {
            *next = end;
            SinkState::Open(sink)
        }
        Ok((discarding, _)) => discarding,
        Err(why) => {
            warn!(error = %why, "output of this run is being dropped");
            SinkState::Discarding
        }
    }
}

/// Reports the outcome, resuming the lease first if the connection was lost meanwhile.
async fn complete(link: &JobLink, outcome: &ExecOutcome) {
    loop {
        let (job, generation) = link.current();
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
        match request.send().promise.await {
            Ok(_) => return,
            Err(e) if link.lost_connection(&e).await => {
                if let Err(why) = link.reattach(generation).await {
                    warn!(error = %why, "the outcome could not be reported; the site will retry the run");
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "the site did not take the outcome; it will retry the run");
                return;
            }
        }
    }
}

/// The environment variable a metadata key is given as: `TINYCI_META_` and the key in upper
/// case, each character other than an ASCII letter or digit made `_` (`release-channel` is
/// `TINYCI_META_RELEASE_CHANNEL`).
pub fn metadata_variable(key: &str) -> String {
    let mut name = String::from("TINYCI_META_");
    name.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name
}

/// Converts the wire spec to an executor spec with a fresh directory for the source.
fn exec_spec(
    spec: &tinyci_schema::job_spec::Reader<'_>,
    work_root: &WorkRoot,
) -> Result<(String, ExecSpec, Isolation), String> {
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
    let tier = text(spec.get_tier())?;
    // A site that names no isolation predates trust tiers and asked for none.
    let isolation = text(spec.get_isolation())?;
    let needs = if isolation.is_empty() {
        Isolation::Host
    } else {
        isolation
            .parse::<Isolation>()
            .map_err(|e| format!("malformed job spec: {e}"))?
    };
    let hint = |t: String| Some(t).filter(|t| !t.is_empty());
    // Empty: the queue leaves pulls to this runner's own policy.
    let pull_policy = |t: &str| -> Result<Option<tinyci_core::PullPolicy>, String> {
        hint(t.to_owned())
            .map(|t| t.parse().map_err(|e| format!("malformed job spec: {e}")))
            .transpose()
    };
    let mut env = BTreeMap::new();
    for kv in spec.get_env().map_err(|e| e.to_string())?.iter() {
        env.insert(text(kv.get_key())?, text(kv.get_value())?);
    }
    // The task files' metadata reaches the job as `TINYCI_META_<KEY>`; a variable the task
    // sets itself wins.
    for kv in spec.get_metadata().map_err(|e| e.to_string())?.iter() {
        env.entry(metadata_variable(&text(kv.get_key())?))
            .or_insert(text(kv.get_value())?);
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!("malformed run id {label:?}"));
    }
    let dir = work_root.new_run_dir(&label, attempt)?;
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
        pull: pull_policy(&text(spec.get_pull())?)?,
        registry_credentials: matches!(tier.as_str(), "local" | "repo"),
        env,
        timeout: Duration::from_secs(u64::from(spec.get_timeout_seconds().max(1))),
        privileged: spec.get_privileged(),
        network: spec.get_network(),
        cpu: hint(text(spec.get_cpu())?),
        memory: hint(text(spec.get_memory())?),
        grace: Duration::from_secs(10),
        secret_env: Default::default(),
        secrets_dir: None,
    };
    Ok((label, exec, needs))
}

/// `JobControl`: the site calls it to cancel the slot's current run.
struct Control {
    current: Rc<RefCell<Option<StopHandle>>>,
    /// The current run's secrets.
    secrets: Rc<RefCell<crate::secrets::SlotSecrets>>,
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

    async fn withdraw_secrets(
        self: Rc<Self>,
        params: job_control::WithdrawSecretsParams,
        _: job_control::WithdrawSecretsResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let run = params.get_run()?.to_string()?;
        let names = params
            .get_names()?
            .iter()
            .take(crate::secrets::MAX_WITHDRAWN)
            .map(|n| Ok(n?.to_string()?))
            .collect::<Result<Vec<String>, capnp::Error>>()?;
        self.secrets
            .borrow_mut()
            .withdraw(&run, params.get_attempt(), &names);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn output(stream: Stream, data: &[u8]) -> OutputChunk {
        OutputChunk {
            stream,
            at: std::time::SystemTime::UNIX_EPOCH,
            data: data.to_vec(),
        }
    }

    #[tokio::test]
    async fn output_is_gathered_per_stream_before_it_is_sent() {
        let (tx, rx) = mpsc::channel(16);
        for byte in [b"a", b"b", b"c"] {
            tx.send(output(Stream::Stdout, byte)).await.unwrap();
        }
        tx.send(output(Stream::Stderr, b"E")).await.unwrap();
        tx.send(output(Stream::Stdout, b"d")).await.unwrap();
        drop(tx);
        let mut rx = crate::secrets::MaskedOutput::new(rx, &[]);
        let mut first = rx.recv().await.unwrap();
        let held = gather(&mut first, &mut rx).await;
        assert_eq!(first.data, b"abc");
        let mut second = held.expect("the other stream's chunk is kept for next");
        assert_eq!(
            (second.stream, &second.data[..]),
            (Stream::Stderr, &b"E"[..])
        );
        assert!(gather(&mut second, &mut rx).await.is_some());
    }

    #[tokio::test]
    async fn gathering_stops_at_the_chunk_limit() {
        let (tx, rx) = mpsc::channel(16);
        let big = vec![0u8; crate::exec::MAX_CHUNK - 1];
        tx.send(output(Stream::Stdout, b"xy")).await.unwrap();
        drop(tx);
        let mut rx = crate::secrets::MaskedOutput::new(rx, &[]);
        let mut first = output(Stream::Stdout, &big);
        let held = gather(&mut first, &mut rx).await;
        assert_eq!(first.data.len(), crate::exec::MAX_CHUNK - 1);
        assert_eq!(held.map(|c| c.data), Some(b"xy".to_vec()));
    }

    /// A directory that already has the name a run's would get (someone else's) is skipped,
    /// not reused and not an error.
    #[test]
    fn a_work_directory_left_behind_is_skipped() {
        let mut message = capnp::message::Builder::new_default();
        {
            let mut spec = message.init_root::<tinyci_schema::job_spec::Builder<'_>>();
            spec.reborrow().init_run().set_id("r-9");
            spec.init_command(1).set(0, "true");
        }
        let tmp = tempfile::tempdir().unwrap();
        let (root, _) = WorkRoot::claim(&tmp.path().join("work"), 0).unwrap();
        let reader = message
            .get_root_as_reader::<tinyci_schema::job_spec::Reader<'_>>()
            .unwrap();
        // Every name this claim could pick next, taken.
        for serial in 0..64 {
            let taken = root.path().join(format!("r-9-0-{}-{serial}", root.owner()));
            std::fs::create_dir_all(&taken).unwrap();
            std::fs::write(taken.join("theirs"), "x").unwrap();
        }
        let (_, exec, _) = exec_spec(&reader, &root).unwrap();
        assert!(!exec.source_dir.parent().unwrap().join("theirs").exists());
        assert!(exec.source_dir.is_dir());
    }

    #[test]
    fn metadata_reaches_the_job_as_variables_and_the_tasks_own_win() {
        assert_eq!(
            metadata_variable("release-channel"),
            "TINYCI_META_RELEASE_CHANNEL"
        );
        assert_eq!(metadata_variable("ä b"), "TINYCI_META___B");
        let mut message = capnp::message::Builder::new_default();
        {
            let mut spec = message.init_root::<tinyci_schema::job_spec::Builder<'_>>();
            spec.reborrow().init_run().set_id("r-7");
            spec.reborrow().init_command(1).set(0, "true");
            {
                let mut env = spec.reborrow().init_env(1);
                env.reborrow().get(0).set_key("TINYCI_META_OWNER");
                env.reborrow().get(0).set_value("the task");
            }
            let mut metadata = spec.init_metadata(2);
            metadata.reborrow().get(0).set_key("owner");
            metadata.reborrow().get(0).set_value("the metadata");
            metadata.reborrow().get(1).set_key("release-channel");
            metadata.reborrow().get(1).set_value("beta");
        }
        let tmp = tempfile::tempdir().unwrap();
        let (root, _) = WorkRoot::claim(&tmp.path().join("work"), 0).unwrap();
        let reader = message
            .get_root_as_reader::<tinyci_schema::job_spec::Reader<'_>>()
            .unwrap();
        let (_, exec, _) = exec_spec(&reader, &root).unwrap();
        assert_eq!(exec.env["TINYCI_META_RELEASE_CHANNEL"], "beta");
        assert_eq!(exec.env["TINYCI_META_OWNER"], "the task");
    }

    fn job(image: &str, privileged: bool) -> ExecSpec {
        ExecSpec {
            label: "r-1".into(),
            command: vec!["true".into()],
            source_dir: std::path::PathBuf::from("/w/src"),
            workdir: ".".into(),
            mountpoint: "/src".into(),
            image: image.into(),
            pull: None,
            registry_credentials: false,
            env: BTreeMap::new(),
            timeout: Duration::from_secs(1),
            privileged,
            network: false,
            cpu: None,
            memory: None,
            grace: Duration::from_secs(1),
            secret_env: Default::default(),
            secrets_dir: None,
        }
    }

    #[test]
    fn a_runner_never_runs_a_job_with_less_isolation_than_its_site_requires() {
        let host = Executors::new(vec![Executor::Shell(ShellExecutor::host(None))]);
        assert_eq!(
            host.choose(&job("", false), Isolation::Host)
                .map(Executor::name),
            Ok("shell")
        );
        for needs in [Isolation::Sandbox, Isolation::Container] {
            let refused = host.choose(&job("", false), needs).unwrap_err();
            assert!(refused.contains("will not run it with less"), "{refused}");
        }
        assert_eq!(host.isolation(), Isolation::Host);
        assert!(!host.allow_privileged());
        assert_eq!(host.describe(), "shell");
        // An image never runs on the host instead of in a container.
        let refused = host
            .choose(&job("busybox:1", false), Isolation::Host)
            .unwrap_err();
        assert!(
            refused.contains("no container executor") && refused.contains("busybox:1"),
            "{refused}"
        );
    }
}
