//! `tinyci submit`, `tinyci cancel`, `tinyci admin runs|queues`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};
use tinyci_schema::{RunStatus, log_observer, log_reader, run_info, run_observer, submission_info};
use tinyci_site::{SiteConfig, admin_capability, rpc_error};
use tokio::sync::oneshot;

use crate::github::with_admin;
use crate::gitsource;
use crate::util::{RunsDidNotPass, config_path, local_runtime};

/// Chunk size for uploads (the wire contract's limit).
const CHUNK: usize = 64 * 1024;
/// Uploads at least this big print progress.
const PROGRESS_FROM_BYTES: usize = 8 * 1024 * 1024;

/// Submit a local git checkout: upload its source and run the tasks its changes select.
///
/// Tasks are selected by diffing against the default branch (origin/HEAD, else main or
/// master); `--all` runs every task. Acts as --profile or --token says, else as
/// TINYCI_TOKEN or TINYCI_PROFILE say, else as the admin of site.toml (or, with none here, as
/// the one `tinyci login` profile).
#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// The checkout to submit [default: the current directory].
    #[arg(default_value = ".")]
    path: PathBuf,
    /// The revision to submit (a branch, tag or commit).
    #[arg(long = "ref", value_name = "REF", default_value = "HEAD")]
    git_ref: String,
    /// Run every task, not just those the diff selects.
    #[arg(long)]
    all: bool,
    /// Show each run's progress until all end; exit 4 unless every run passed.
    #[arg(long)]
    wait: bool,
    /// Print JSON instead of lines: `{"submission", "repo", "ref", "sha", "status",
    /// "created_at", "runs": [..]}`, each run as `admin runs --json` prints it. With
    /// --wait, printed once, when every run has ended.
    #[arg(long)]
    json: bool,
    /// The repository name [default: from the origin remote, else local/<directory>].
    #[arg(long, value_name = "OWNER/NAME")]
    repo: Option<String>,
    /// The site configuration [default: $TINYCI_CONFIG, else ./site.toml].
    #[arg(long, value_name = "FILE", conflicts_with = "profile")]
    config: Option<PathBuf>,
    /// Dial this address instead of site.listen.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "profile")]
    addr: Option<SocketAddr>,
    /// Submit as the user of a `tinyci login` profile directory instead of as the site's
    /// admin [env: TINYCI_PROFILE].
    #[arg(long, value_name = "DIR", conflicts_with_all = ["token", "site"])]
    profile: Option<PathBuf>,
    #[command(flatten)]
    grant: crate::remote::GrantArgs,
}

/// Cancel a run (r-N) or every unfinished run of a submission (s-N).
///
/// Queued runs end at once; running ones are stopped by their runner (SIGTERM to the process
/// group, SIGKILL after a grace period; containers are stopped then killed).
#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    /// A run (r-N) or submission (s-N) id.
    id: String,
    /// Why, recorded on the run.
    #[arg(long)]
    reason: Option<String>,
    /// The site configuration [default: $TINYCI_CONFIG, else ./site.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Dial this address instead of site.listen.
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<SocketAddr>,
    #[command(flatten)]
    acting: ActingArgs,
}

/// Who a command acts as, when not as the site's admin: a `tinyci login` profile (a site
/// user: they reach only what their capabilities and GitHub allow), or a grant.
#[derive(Debug, Args)]
pub(crate) struct ActingArgs {
    /// Act as the user of a `tinyci login` profile directory [env: TINYCI_PROFILE].
    #[arg(long, value_name = "DIR", conflicts_with_all = ["token", "site"])]
    profile: Option<PathBuf>,
    /// The run's repository [default: a grant's only repository; every repository the
    /// profile's user may read].
    #[arg(long, value_name = "OWNER/NAME")]
    repo: Option<String>,
    #[command(flatten)]
    grant: crate::remote::GrantArgs,
}

impl ActingArgs {
    /// Fills in who acts from the environment (or the sole login profile) where the flags
    /// name no one; `named_site`: the command line gave `--config` or `--addr`.
    fn resolved(mut self, named_site: bool) -> Result<Self> {
        (self.profile, self.grant.token) =
            crate::util::resolve_actor(self.profile, self.grant.token, named_site)?;
        self.grant.check_site()?;
        Ok(self)
    }

    /// Whether the command acts as someone other than the site's admin.
    fn acting(&self) -> bool {
        self.profile.is_some() || self.grant.token.is_some()
    }

    /// Where to read from: the profile's site, or this site's config with the grant.
    fn source(&self, config: Option<PathBuf>, addr: Option<SocketAddr>) -> Result<ReaderSource> {
        let (config, profile) = match &self.profile {
            Some(dir) => (None, Some(crate::github::load_profile(dir)?)),
            None => (Some(SiteConfig::load(&config_path(config))?), None),
        };
        Ok(ReaderSource {
            addr,
            site: self.grant.site.clone(),
            token: self.grant.token.clone(),
            repo: self.repo.clone(),
            config,
            profile,
        })
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// The site's state: identity, uptime, runners connected, runs queued and active.
    ///
    /// --json prints `{"site", "version", "ca_fingerprint", "uptime_millis", "protocol",
    /// "you_are", "runners_connected", "runs_queued", "runs_active"}`.
    Status(ListArgs),
    /// List runs, newest first.
    Runs(RunsArgs),
    /// List queues with their depth and active runs, or pause or resume one.
    ///
    /// --json prints `[{"name", "depth", "active", "paused"}]`.
    Queues(QueuesArgs),
    /// List connected runners (the queues they wait on, the runs they hold), or pause, drain
    /// or resume one.
    ///
    /// --json prints `[{"name", "queues": [..], "runs": [..], "paused"}]`.
    Runners(RunnersArgs),
    /// Manage site users and their capabilities.
    #[command(subcommand)]
    User(crate::github::UserCommand),
    /// Enable, disable and list GitHub repositories.
    #[command(subcommand)]
    Repo(crate::github::RepoCommand),
}

#[derive(Debug, Args)]
pub(crate) struct SiteArgs {
    /// The site configuration [default: $TINYCI_CONFIG, else ./site.toml].
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Dial this address instead of site.listen.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) addr: Option<SocketAddr>,
}

/// A listing, human or JSON.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Print JSON instead of a table (the shape is in this command's help).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    site: SiteArgs,
}

/// `admin runners [pause|drain|resume NAME]`.
#[derive(Debug, Args)]
pub(crate) struct RunnersArgs {
    #[command(subcommand)]
    action: Option<RunnerAction>,
    #[command(flatten)]
    list: ListArgs,
}

/// A named runner or queue at a site.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// Its name.
    name: String,
    #[command(flatten)]
    site: SiteArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RunnerAction {
    /// Lease nothing new to this runner until resumed; it stays connected and what it runs
    /// goes on. Survives a site restart.
    Pause(Target),
    /// Let this runner finish what it runs, lease it nothing new, then tell it to disconnect;
    /// it is refused until resumed. Survives a site restart.
    Drain(Target),
    /// Undo pause or drain: lease to this runner again.
    Resume(Target),
}

/// `admin queues [pause|resume NAME]`.
#[derive(Debug, Args)]
pub(crate) struct QueuesArgs {
    #[command(subcommand)]
    action: Option<QueueAction>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum QueueAction {
    /// Lease nothing from this queue until resumed (running runs go on).
    Pause(Target),
    /// Lease from this queue again.
    Resume(Target),
}

/// A run status as `--status` takes it: the words `--json` prints and the pages use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StatusArg {
    Queued,
    Leased,
    Running,
    Passed,
    Failed,
    Canceled,
    #[value(name = "timed_out")]
    TimedOut,
    Errored,
}

impl StatusArg {
    /// The word, as the site's filter and `--json` spell it.
    fn word(self) -> &'static str {
        status_word(Ok(match self {
            Self::Queued => RunStatus::Queued,
            Self::Leased => RunStatus::Leased,
            Self::Running => RunStatus::Running,
            Self::Passed => RunStatus::Passed,
            Self::Failed => RunStatus::Failed,
            Self::Canceled => RunStatus::Canceled,
            Self::TimedOut => RunStatus::TimedOut,
            Self::Errored => RunStatus::Errored,
        }))
    }
}

#[derive(Debug, Args)]
pub(crate) struct RunsArgs {
    /// Only this repository.
    #[arg(long, value_name = "OWNER/NAME")]
    repo: Option<String>,
    /// Only this ref.
    #[arg(long = "ref", value_name = "REF")]
    git_ref: Option<String>,
    /// Only runs with this status, spelled as `--json` prints it.
    #[arg(long, value_enum)]
    status: Option<StatusArg>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Print JSON: `[{"id", "submission", "repo", "ref", "task", "name", "queue", "status",
    /// "attempt", "runner", "exit_code", "created_at", "started_at", "finished_at",
    /// "message", "tier", "waiting"}]` (times in Unix ms, 0 when not yet; `tier` is local,
    /// repo, fork or partner:SITE; `waiting` says why a queued run has no runner that may
    /// take it, else empty).
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: Option<RunAction>,
    #[command(flatten)]
    site: SiteArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RunAction {
    /// One run, in full, and which secrets each attempt was given, to which runner, when
    /// (--json: the shape of one element of `admin runs --json`, plus `"secrets": [{"name",
    /// "attempt", "runner", "at"}]`).
    Show {
        /// The run (r-N).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        site: SiteArgs,
    },
    /// Run a finished run again as its next attempt: the same run (r-N), attempt one more,
    /// on the same source, if the queue's policy still admits it. A GitHub run reports the
    /// new attempt's statuses on its commit. With --failed s-N: every run of submission s-N
    /// that failed, timed out or errored.
    Retry {
        /// The run (r-N).
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        id: Option<String>,
        /// Retry every failed, timed-out or errored run of this submission (s-N).
        #[arg(long, value_name = "SUBMISSION")]
        failed: Option<String>,
        #[command(flatten)]
        site: SiteArgs,
    },
}

pub(crate) fn status_word(status: Result<RunStatus, capnp::NotInSchema>) -> &'static str {
    match status {
        Ok(RunStatus::Queued) => "queued",
        Ok(RunStatus::Leased) => "leased",
        Ok(RunStatus::Running) => "running",
        Ok(RunStatus::Passed) => "passed",
        Ok(RunStatus::Failed) => "failed",
        Ok(RunStatus::Canceled) => "canceled",
        Ok(RunStatus::TimedOut) => "timed_out",
        Ok(RunStatus::Errored) => "errored",
        Err(_) => "unknown",
    }
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> String {
    t.ok().and_then(|t| t.to_string().ok()).unwrap_or_default()
}

/// One line per run: `r-7  build:test  queue default  passed (exit code 0) on r1; tier fork`
/// (a queued run no connected runner may take says what it waits for in the parentheses).
fn run_line(run: run_info::Reader<'_>) -> String {
    let mut line = format!(
        "{:<8} {}:{}  queue {}  {}",
        text(run.get_id()),
        text(run.get_task()),
        text(run.get_name()),
        text(run.get_queue()),
        status_word(run.get_status())
    );
    let waiting = text(run.get_waiting());
    if !waiting.is_empty() {
        line.push_str(&format!(" ({waiting})"));
    }
    let message = text(run.get_message());
    if !message.is_empty() {
        line.push_str(&format!(" ({message})"));
    }
    let runner = text(run.get_runner());
    if !runner.is_empty() {
        line.push_str(&format!(" on {runner}"));
    }
    if run.get_attempt() > 1 {
        line.push_str(&format!(", attempt {}", run.get_attempt()));
    }
    let tier = text(run.get_tier());
    if !tier.is_empty() {
        line.push_str(&format!("; tier {tier}"));
    }
    line
}

pub(crate) fn submit(mut args: SubmitArgs) -> Result<()> {
    (args.profile, args.grant.token) = crate::util::resolve_actor(
        args.profile,
        args.grant.token,
        args.config.is_some() || args.addr.is_some(),
    )?;
    args.grant.check_site()?;
    let identity = match (&args.profile, &args.grant.token) {
        (Some(dir), _) => Identity::Profile(Box::new(crate::github::load_profile(dir)?)),
        (None, Some(token)) => Identity::Grant {
            config: Box::new(SiteConfig::load(&config_path(args.config.clone()))?),
            site: args.grant.site.clone(),
            token: token.clone(),
        },
        (None, None) => Identity::Admin(Box::new(SiteConfig::load(&config_path(
            args.config.clone(),
        ))?)),
    };
    let source = gitsource::read(&args.path, &args.git_ref, args.repo.as_deref())?;
    eprintln!(
        "submitting {} {} ({}), {} bytes of source",
        source.repo,
        source.git_ref,
        &source.sha[..source.sha.len().min(12)],
        source.archive.len()
    );
    let all = args.all || source.changed.is_none();
    local_runtime()?.block_on(async move {
        let (client, submitter) = match identity {
            Identity::Admin(config) => {
                let (client, admin) = admin_capability(&config, args.addr).await?;
                let mut get = admin.submitter_request();
                get.get().set_repo(&source.repo);
                (client, get.send().pipeline.get_submitter())
            }
            Identity::Grant {
                config,
                site,
                token,
            } => {
                let (client, session) =
                    crate::remote::session_with(&config, args.addr, site.as_deref(), &token)
                        .await?;
                let mut get = session.submitter_request();
                get.get().set_repo(&source.repo);
                (client, get.send().pipeline.get_submitter())
            }
            Identity::Profile(profile) => {
                let (client, session) = crate::github::profile_session(&profile).await?;
                let mut get = session.submitter_request();
                get.get().set_repo(&source.repo);
                (client, get.send().pipeline.get_submitter())
            }
        };
        let rpc = |e| rpc_error(&client, e);

        // Upload with flow control, then submit what was uploaded.
        // The sink is taken from the answer, not pipelined: capnp-rpc can deliver a call
        // queued on a pipelined capability after a later one sent straight to it once it
        // resolved (capnproto-rust#575), and an archive's chunks must arrive in order.
        let upload = submitter
            .upload_request()
            .send()
            .promise
            .await
            .map_err(rpc)?;
        let sink = upload.get().and_then(|r| r.get_sink()).map_err(rpc)?;
        let digest = Sha256::digest(&source.archive);
        // Big uploads report progress every tenth, on stderr.
        let total = source.archive.len();
        let mut next_report = total / 10;
        let mut sent = 0usize;
        for chunk in source.archive.chunks(CHUNK) {
            let mut write = sink.write_request();
            write.get().set_chunk(chunk);
            write.send().await.map_err(rpc)?;
            sent += chunk.len();
            if total >= PROGRESS_FROM_BYTES && sent >= next_report && sent < total {
                eprintln!("uploaded {}% ({sent} of {total} bytes)", sent * 100 / total);
                next_report += total / 10;
            }
        }
        let mut finish = sink.finish_request();
        finish.get().set_sha256(digest.as_slice());
        finish.send().promise.await.map_err(rpc)?;

        let mut request = submitter.submit_request();
        {
            let mut r = request.get().init_request();
            r.set_ref(&source.git_ref);
            r.set_sha(&source.sha);
            r.set_all(all);
            r.set_source_sha256(digest.as_slice());
            r.set_title(&source.title);
            let changed = source.changed.as_deref().unwrap_or_default();
            let mut list = r.init_changed_paths(u32::try_from(changed.len()).unwrap_or(u32::MAX));
            for (i, path) in changed.iter().enumerate() {
                list.set(u32::try_from(i).unwrap_or(u32::MAX), path.as_str());
            }
        }
        let ticket = request.send().pipeline.get_ticket();
        let runs = ticket.runs_request().send().promise.await.map_err(rpc)?;
        let runs = runs.get().and_then(|r| r.get_runs()).map_err(rpc)?;
        let info = ticket
            .submission_request()
            .send()
            .promise
            .await
            .map_err(rpc)?;
        let info = info.get().and_then(|r| r.get_submission()).map_err(rpc)?;
        let id = text(info.get_id());
        if !args.wait || runs.is_empty() {
            if args.json {
                print_json(&submission_json(info, runs))?;
            } else {
                println!("submission {id}: {}", plural(runs.len(), "run", "runs"));
                for run in runs.iter() {
                    println!("  {}", run_line(run));
                }
            }
            return Ok(());
        }
        if !args.json {
            println!("submission {id}: {}", plural(runs.len(), "run", "runs"));
        }
        follow(&ticket, &id, args.json)
            .await
            .map_err(|e| match e.downcast::<capnp::Error>() {
                Ok(e) => rpc(e).into(),
                Err(e) => e,
            })
    })
}

/// Who `tinyci submit` acts as.
enum Identity {
    /// The site's admin, from site.toml.
    Admin(Box<SiteConfig>),
    /// A user, from a `tinyci login` profile.
    Profile(Box<crate::github::LoadedProfile>),
    /// A grant, redeemed at this site or at partner `site`.
    Grant {
        config: Box<SiteConfig>,
        site: Option<String>,
        token: String,
    },
}

/// Prints every run change of a submission until it ends (or, as `json`, the submission
/// once it ended); fails unless it passed.
async fn follow(ticket: &tinyci_schema::ticket::Client, id: &str, json: bool) -> Result<()> {
    let (ended_tx, ended_rx) = oneshot::channel();
    let observer = Observer {
        ended: RefCell::new(Some(ended_tx)),
        quiet: json,
    };
    let mut watch = ticket.watch_request();
    watch.get().set_observer(capnp_rpc::new_client(observer));
    let handle = watch.send().promise.await?;
    let status = ended_rx
        .await
        .context("the site stopped reporting progress")?;
    drop(handle);
    if json {
        let info = ticket.submission_request().send().promise.await?;
        let runs = ticket.runs_request().send().promise.await?;
        print_json(&submission_json(
            info.get()?.get_submission()?,
            runs.get()?.get_runs()?,
        ))?;
    }
    if status == "passed" {
        if !json {
            println!("submission {id} passed");
        }
        Ok(())
    } else {
        Err(RunsDidNotPass(format!("submission {id} {status}")).into())
    }
}

/// Follow a submission until every run ends; exit 4 unless all passed.
#[derive(Debug, Args)]
pub(crate) struct WaitArgs {
    /// The submission (s-N).
    id: String,
    /// Print the submission as JSON once every run has ended, instead of lines as they
    /// change: the shape `submit --json` prints.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    site: SiteArgs,
    #[command(flatten)]
    acting: ActingArgs,
}

pub(crate) fn wait(mut args: WaitArgs) -> Result<()> {
    args.acting = args
        .acting
        .resolved(args.site.config.is_some() || args.site.addr.is_some())?;
    if args.acting.acting() {
        let source = args.acting.source(args.site.config, args.site.addr)?;
        return local_runtime()?.block_on(async move {
            let (client, reader) = log_reader_of(&source).await?;
            let mut request = reader.ticket_request();
            request.get().set_submission_id(&args.id);
            let ticket = request.send().pipeline.get_ticket();
            follow(&ticket, &args.id, args.json).await.map_err(|e| {
                match e.downcast::<capnp::Error>() {
                    Ok(e) => rpc_error(&client, e).into(),
                    Err(e) => e,
                }
            })
        });
    }
    let config = SiteConfig::load(&config_path(args.site.config))?;
    local_runtime()?.block_on(async move {
        let (client, admin) = admin_capability(&config, args.site.addr).await?;
        let mut request = admin.ticket_request();
        request.get().set_submission_id(&args.id);
        let ticket = request.send().pipeline.get_ticket();
        follow(&ticket, &args.id, args.json)
            .await
            .map_err(|e| match e.downcast::<capnp::Error>() {
                Ok(e) => rpc_error(&client, e).into(),
                Err(e) => e,
            })
    })
}

/// Prints run changes as the site pushes them (unless `quiet`) and says when all ended.
struct Observer {
    ended: RefCell<Option<oneshot::Sender<String>>>,
    quiet: bool,
}

impl run_observer::Server for Observer {
    async fn changed(
        self: Rc<Self>,
        params: run_observer::ChangedParams,
    ) -> Result<(), capnp::Error> {
        if !self.quiet {
            println!("  {}", run_line(params.get()?.get_run()?));
        }
        Ok(())
    }

    async fn ended(
        self: Rc<Self>,
        params: run_observer::EndedParams,
        _: run_observer::EndedResults,
    ) -> Result<(), capnp::Error> {
        let submission: submission_info::Reader<'_> = params.get()?.get_submission()?;
        let status = status_word(submission.get_status()).to_owned();
        if let Some(tx) = self.ended.borrow_mut().take() {
            let _ = tx.send(status);
        }
        Ok(())
    }
}

pub(crate) fn cancel(mut args: CancelArgs) -> Result<()> {
    args.acting = args
        .acting
        .resolved(args.config.is_some() || args.addr.is_some())?;
    if args.acting.acting() {
        let source = args.acting.source(args.config, args.addr)?;
        return local_runtime()?.block_on(async move {
            let (client, reader) = log_reader_of(&source).await?;
            let rpc = |e| rpc_error(&client, e);
            let reason = args.reason.as_deref().unwrap_or_default();
            let run = args.id.starts_with("r-");
            let submission = if run {
                let mut request = reader.run_request();
                request.get().set_id(&args.id);
                let response = request.send().promise.await.map_err(rpc)?;
                text(
                    response
                        .get()
                        .map_err(rpc)?
                        .get_run()
                        .map_err(rpc)?
                        .get_submission_id(),
                )
            } else {
                args.id.clone()
            };
            let mut request = reader.ticket_request();
            request.get().set_submission_id(&submission);
            let ticket = request.send().pipeline.get_ticket();
            if run {
                let mut cancel = ticket.cancel_run_request();
                cancel.get().set_run(&args.id);
                cancel.get().set_reason(reason);
                cancel.send().promise.await.map_err(rpc)?;
                println!("canceled run {}", args.id);
            } else {
                let mut cancel = ticket.cancel_request();
                cancel.get().set_reason(reason);
                cancel.send().promise.await.map_err(rpc)?;
                println!("canceled submission {submission}");
            }
            Ok(())
        });
    }
    let config = SiteConfig::load(&config_path(args.config))?;
    local_runtime()?.block_on(async move {
        let (client, admin) = admin_capability(&config, args.addr).await?;
        let mut request = admin.cancel_request();
        request.get().set_id(&args.id);
        request
            .get()
            .set_reason(args.reason.as_deref().unwrap_or_default());
        let response = request
            .send()
            .promise
            .await
            .map_err(|e| rpc_error(&client, e))?;
        let n = response
            .get()
            .map_err(|e| rpc_error(&client, e))?
            .get_canceled();
        println!("canceled {n} run{}", if n == 1 { "" } else { "s" });
        Ok(())
    })
}

pub(crate) fn admin(command: AdminCommand) -> Result<()> {
    match command {
        AdminCommand::Status(args) => status(args),
        AdminCommand::Runs(args) => runs(args),
        AdminCommand::Queues(args) => queues(args),
        AdminCommand::Runners(args) => runners(args),
        AdminCommand::User(command) => crate::github::user(command),
        AdminCommand::Repo(command) => crate::github::repo(command),
    }
}

fn runs(args: RunsArgs) -> Result<()> {
    match args.action {
        Some(RunAction::Retry {
            id: Some(id), site, ..
        }) => return retry(&id, site),
        Some(RunAction::Retry {
            failed: Some(submission),
            site,
            ..
        }) => return retry_failed(&submission, site),
        Some(RunAction::Retry { .. }) => {
            return Err(crate::util::InputError("give a run (r-N) or --failed s-N".into()).into());
        }
        Some(RunAction::Show { id, json, site }) => return show_run(&id, json, site),
        None => {}
    }
    let config = SiteConfig::load(&config_path(args.site.config))?;
    local_runtime()?.block_on(async move {
        let (client, admin) = admin_capability(&config, args.site.addr).await?;
        let mut request = admin.runs_request();
        {
            let mut filter = request.get().init_filter();
            filter.set_repo(args.repo.as_deref().unwrap_or_default());
            filter.set_ref(args.git_ref.as_deref().unwrap_or_default());
            filter.set_status(args.status.map(StatusArg::word).unwrap_or_default());
            filter.set_limit(args.limit);
        }
        let response = request
            .send()
            .promise
            .await
            .map_err(|e| rpc_error(&client, e))?;
        let runs = response
            .get()
            .and_then(|r| r.get_runs())
            .map_err(|e| rpc_error(&client, e))?;
        if args.json {
            let list: Vec<serde_json::Value> = runs.iter().map(run_json).collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
            return Ok(());
        }
        for run in runs.iter() {
            println!(
                "{} {}  {}",
                text(run.get_submission_id()),
                text(run.get_repo()),
                run_line(run)
            );
        }
        Ok(())
    })
}

/// Prints a JSON object's fields as `key  value` lines, keys padded to `width`.
fn print_fields(value: &serde_json::Value, width: usize) {
    for (key, field) in value.as_object().into_iter().flatten() {
        let shown = field
            .as_str()
            .map_or_else(|| field.to_string(), str::to_owned);
        println!("{key:<width$} {shown}");
    }
}

/// Prints `value` as pretty JSON, or as `key  value` lines padded to `width`.
fn print_value(value: &serde_json::Value, json: bool, width: usize) {
    if json {
        // Serializing a `Value` cannot fail.
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        print_fields(value, width);
    }
}

fn show_run(id: &str, json: bool, site: SiteArgs) -> Result<()> {
    with_admin(site, async move |admin| {
        let mut request = admin.run_request();
        request.get().set_id(id);
        let mut audit = admin.secret_deliveries_request();
        audit.get().set_run_id(id);
        // Both in flight at once.
        let (response, audit) = (request.send().promise, audit.send().promise);
        let (response, audit) = (response.await?, audit.await?);
        let mut value = run_json(response.get()?.get_run()?);
        let deliveries: Vec<serde_json::Value> = audit
            .get()?
            .get_deliveries()?
            .iter()
            .map(|d| {
                serde_json::json!({
                    "name": text(d.get_name()),
                    "attempt": d.get_attempt(),
                    "runner": text(d.get_runner()),
                    "at": d.get_at(),
                })
            })
            .collect();
        if json {
            if let Some(fields) = value.as_object_mut() {
                fields.insert("secrets".into(), deliveries.into());
            }
            print_value(&value, true, 12);
        } else {
            print_value(&value, false, 12);
            for d in &deliveries {
                let at = d["at"]
                    .as_i64()
                    .and_then(|ms| u64::try_from(ms).ok())
                    .unwrap_or(0);
                println!(
                    "{:<12} {} (attempt {}) given to {} at {}",
                    "secret",
                    d["name"].as_str().unwrap_or_default(),
                    d["attempt"],
                    d["runner"].as_str().unwrap_or_default(),
                    tinyci_grant::format_time(tinyci_core_time(at)),
                );
            }
        }
        Ok(())
    })
}

/// Unix milliseconds as a time.
fn tinyci_core_time(ms: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

fn status(args: ListArgs) -> Result<()> {
    with_admin(args.site, async move |admin| {
        let response = admin.status_request().send().promise.await?;
        let status = response.get()?.get_status()?;
        let info = status.get_info()?;
        let value = serde_json::json!({
            "site": text(info.get_site_id()),
            "version": text(info.get_version()),
            "ca_fingerprint": text(info.get_ca_fingerprint()),
            "uptime_millis": info.get_uptime_millis(),
            "protocol": info.get_protocol(),
            "you_are": text(info.get_peer()),
            "runners_connected": status.get_runners_connected(),
            "runs_queued": status.get_runs_queued(),
            "runs_active": status.get_runs_active(),
        });
        print_value(&value, args.json, 18);
        Ok(())
    })
}

fn retry(id: &str, site: SiteArgs) -> Result<()> {
    with_admin(site, async move |admin| {
        let mut request = admin.retry_request();
        request.get().set_run_id(id);
        let response = request.send().promise.await?;
        let run = response.get()?.get_run()?;
        println!(
            "retrying {id}: attempt {} queued (submission {})",
            run.get_attempt() + 1,
            text(run.get_submission_id())
        );
        Ok(())
    })
}

fn retry_failed(submission: &str, site: SiteArgs) -> Result<()> {
    with_admin(site, async move |admin| {
        let mut request = admin.retry_failed_request();
        request.get().set_submission_id(submission);
        let response = request.send().promise.await?;
        let runs = response.get()?.get_runs()?;
        for run in runs.iter() {
            println!(
                "retrying {} {}:{}: attempt {} queued",
                text(run.get_id()),
                text(run.get_task()),
                text(run.get_name()),
                run.get_attempt() + 1
            );
        }
        println!(
            "submission {submission}: {} retried",
            plural(runs.len(), "run", "runs")
        );
        Ok(())
    })
}

/// A submission and its runs as `submit --json` and `wait --json` print them.
fn submission_json(
    info: submission_info::Reader<'_>,
    runs: capnp::struct_list::Reader<'_, run_info::Owned>,
) -> serde_json::Value {
    serde_json::json!({
        "submission": text(info.get_id()),
        "repo": text(info.get_repo()),
        "ref": text(info.get_ref()),
        "sha": text(info.get_sha()),
        "status": status_word(info.get_status()),
        "created_at": info.get_created_at(),
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
    })
}

/// Prints `value` as pretty JSON on standard output.
pub(crate) fn print_json(value: &serde_json::Value) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// `1 run`, `2 runs`.
pub(crate) fn plural(count: impl Into<u64>, one: &str, many: &str) -> String {
    let count = count.into();
    format!("{count} {}", if count == 1 { one } else { many })
}

/// A run as `--json` prints it.
fn run_json(run: run_info::Reader<'_>) -> serde_json::Value {
    serde_json::json!({
        "id": text(run.get_id()),
        "submission": text(run.get_submission_id()),
        "repo": text(run.get_repo()),
        "ref": text(run.get_ref()),
        "task": text(run.get_task()),
        "name": text(run.get_name()),
        "queue": text(run.get_queue()),
        "status": status_word(run.get_status()),
        "attempt": run.get_attempt(),
        "runner": text(run.get_runner()),
        "exit_code": run.get_exit_code(),
        "created_at": run.get_created_at(),
        "started_at": run.get_started_at(),
        "finished_at": run.get_finished_at(),
        "message": text(run.get_message()),
        "tier": text(run.get_tier()),
        "waiting": text(run.get_waiting()),
    })
}

fn queues(args: QueuesArgs) -> Result<()> {
    let QueuesArgs { action, list } = args;
    let (site, action) = match action {
        Some(QueueAction::Pause(Target { name, site })) => (site, Some((name, true))),
        Some(QueueAction::Resume(Target { name, site })) => (site, Some((name, false))),
        None => (list.site, None),
    };
    let config = SiteConfig::load(&config_path(site.config))?;
    local_runtime()?.block_on(async move {
        let (client, admin) = admin_capability(&config, site.addr).await?;
        if let Some((name, paused)) = action {
            let mut request = admin.set_queue_request();
            request.get().set_name(&name);
            request.get().set_paused(paused);
            request
                .send()
                .promise
                .await
                .map_err(|e| rpc_error(&client, e))?;
            println!("queue {name} {}", if paused { "paused" } else { "resumed" });
            return Ok(());
        }
        let response = admin
            .queues_request()
            .send()
            .promise
            .await
            .map_err(|e| rpc_error(&client, e))?;
        let queues = response
            .get()
            .and_then(|r| r.get_queues())
            .map_err(|e| rpc_error(&client, e))?;
        if list.json {
            let out: Vec<serde_json::Value> = queues
                .iter()
                .map(|q| {
                    let groups: Vec<serde_json::Value> = q
                        .get_groups()
                        .map(|groups| {
                            groups
                                .iter()
                                .map(|g| {
                                    serde_json::json!({
                                        "group": text(g.get_group()),
                                        "weight": g.get_weight(),
                                        "queued": g.get_queued(),
                                        "active": g.get_active(),
                                        "leased": g.get_leased(),
                                    })
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    serde_json::json!({
                        "name": text(q.get_name()),
                        "depth": q.get_depth(),
                        "active": q.get_leased(),
                        "paused": q.get_paused(),
                        "groups": groups,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        println!("{:<20} {:>7} {:>7}  PAUSED", "QUEUE", "QUEUED", "ACTIVE");
        for q in queues.iter() {
            println!(
                "{:<20} {:>7} {:>7}  {}",
                text(q.get_name()),
                q.get_depth(),
                q.get_leased(),
                if q.get_paused() { "yes" } else { "no" }
            );
            // Each submitter group's share: its weight, what it has here, and its leases.
            for g in q.get_groups().iter().flat_map(|groups| groups.iter()) {
                println!(
                    "  {:<18} {:>7} {:>7}  weight {}, {} lease(s) since start",
                    text(g.get_group()),
                    g.get_queued(),
                    g.get_active(),
                    g.get_weight(),
                    g.get_leased()
                );
            }
        }
        Ok(())
    })
}

fn runners(args: RunnersArgs) -> Result<()> {
    let RunnersArgs { action, list: args } = args;
    let (site, action) = match action {
        Some(RunnerAction::Pause(Target { name, site })) => (site, Some((name, false, true))),
        Some(RunnerAction::Drain(Target { name, site })) => (site, Some((name, true, false))),
        Some(RunnerAction::Resume(Target { name, site })) => (site, Some((name, false, false))),
        None => (args.site, None),
    };
    let config = SiteConfig::load(&config_path(site.config))?;
    local_runtime()?.block_on(async move {
        let (client, admin) = admin_capability(&config, site.addr).await?;
        if let Some((name, drain, paused)) = action {
            let mut request = admin.set_runner_request();
            request.get().set_name(&name);
            request.get().set_drain(drain);
            request.get().set_paused(paused);
            request
                .send()
                .promise
                .await
                .map_err(|e| rpc_error(&client, e))?;
            let what = match (drain, paused) {
                (true, _) => {
                    "draining: it finishes what it holds, takes nothing new, then is told to \
                     disconnect (until resumed; this holds across site restarts)"
                }
                (_, true) => {
                    "paused: it stays connected and takes nothing new until resumed (this \
                     holds across site restarts)"
                }
                _ => "resumed",
            };
            println!("runner {name} {what}");
            return Ok(());
        }
        let response = admin
            .runners_request()
            .send()
            .promise
            .await
            .map_err(|e| rpc_error(&client, e))?;
        let runners = response
            .get()
            .and_then(|r| r.get_runners())
            .map_err(|e| rpc_error(&client, e))?;
        let items = |l: capnp::Result<capnp::text_list::Reader<'_>>| -> Vec<String> {
            l.map(|l| l.iter().map(text).collect()).unwrap_or_default()
        };
        let connected_since = |at: i64| {
            (at > 0).then(|| {
                let at = u64::try_from(at).unwrap_or_default();
                crate::util::utc_millis(at)
            })
        };
        if args.json {
            let out: Vec<serde_json::Value> = runners
                .iter()
                .map(|r| {
                    let info = r.get_info().ok();
                    let field = |f: fn(&tinyci_schema::runner_info::Reader<'_>) -> String| {
                        info.as_ref().map(f).unwrap_or_default()
                    };
                    serde_json::json!({
                        "name": field(|i| text(i.get_name())),
                        "identity": text(r.get_identity()),
                        "connected_at": r.get_connected_at(),
                        "hostname": field(|i| text(i.get_hostname())),
                        "version": field(|i| text(i.get_version())),
                        "executors": info.as_ref().map(|i| items(i.get_executors())).unwrap_or_default(),
                        "isolation": text(r.get_isolation()),
                        "labels": info.as_ref().map(|i| items(i.get_labels())).unwrap_or_default(),
                        "slots": info.as_ref().map(|i| i.get_slots()).unwrap_or_default(),
                        "paused": r.get_paused(),
                        "draining": r.get_draining(),
                        "queues": items(r.get_queues()),
                        "runs": items(r.get_active_runs()),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        let joined = |list: Vec<String>| {
            if list.is_empty() {
                "-".to_owned()
            } else {
                list.join(",")
            }
        };
        println!(
            "{:<16} {:<9} {:<20} {:<16} {:<9} {:<16} {:<14} {:>5} {:<12} {:<16} RUNS",
            "RUNNER",
            "STATE",
            "CONNECTED SINCE",
            "HOST",
            "VERSION",
            "EXECUTORS",
            "LABELS",
            "SLOTS",
            "QUEUES",
            "ISOLATION",
        );
        for r in runners.iter() {
            let info = r.get_info().ok();
            let name = info.as_ref().map(|i| text(i.get_name())).unwrap_or_default();
            let state = match (r.get_draining(), r.get_paused()) {
                (true, _) => "draining",
                (_, true) => "paused",
                _ => "active",
            };
            let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
            println!(
                "{:<16} {:<9} {:<20} {:<16} {:<9} {:<16} {:<14} {:>5} {:<12} {:<16} {}",
                crate::termsafe::line(&name),
                state,
                connected_since(r.get_connected_at()).unwrap_or_else(|| "-".into()),
                crate::termsafe::line(&dash(
                    info.as_ref().map(|i| text(i.get_hostname())).unwrap_or_default()
                )),
                crate::termsafe::line(&dash(
                    info.as_ref().map(|i| text(i.get_version())).unwrap_or_default()
                )),
                joined(info.as_ref().map(|i| items(i.get_executors())).unwrap_or_default()),
                joined(info.as_ref().map(|i| items(i.get_labels())).unwrap_or_default()),
                info.as_ref().map(|i| i.get_slots()).unwrap_or_default(),
                joined(items(r.get_queues())),
                dash(text(r.get_isolation())),
                joined(items(r.get_active_runs())),
            );
        }
        Ok(())
    })
}

/// Print a run's log (stdout, stderr and tinyci's own lines, in arrival order).
///
/// Without `-f`, prints what is stored now. With `-f`, keeps printing output as the runner
/// streams it and returns when the run ends; if the site goes away meanwhile it reconnects
/// (for up to 5 minutes) and goes on from the last byte printed. Exits 0 if the run passed
/// (or, without `-f`, is still going), 4 if it ended otherwise. Acts as `submit` does.
#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The run (r-N).
    run: String,
    /// Start at this byte offset of the log.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Follow: print live output until the run ends.
    #[arg(short, long)]
    follow: bool,
    /// Print only these streams (repeatable) [default: all].
    #[arg(long, value_enum, value_name = "STREAM")]
    stream: Vec<StreamArg>,
    /// Print the log's bytes as stored. Without it, colours pass but every other terminal
    /// control (titles, clipboard writes, cursor moves, bells) a job printed is shown as
    /// text rather than obeyed: job output is untrusted.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    acting: ActingArgs,
    #[command(flatten)]
    site: SiteArgs,
}

/// A stream of a run's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StreamArg {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
    /// Lines tinyci itself wrote (truncation, timeouts, attempts).
    System,
}

/// Which streams to print, and whether as stored (`--raw`) or made terminal-safe.
#[derive(Debug, Clone, Copy)]
struct StreamFilter {
    wanted: [bool; 3],
    raw: bool,
}

impl StreamFilter {
    fn new(streams: &[StreamArg], raw: bool) -> Self {
        let mut wanted = [streams.is_empty(); 3];
        for stream in streams {
            wanted[*stream as usize] = true;
        }
        Self { wanted, raw }
    }

    fn wants(self, stream: Result<tinyci_schema::LogStream, capnp::NotInSchema>) -> bool {
        match stream {
            Ok(tinyci_schema::LogStream::Stdout) => self.wanted[0],
            Ok(tinyci_schema::LogStream::Stderr) => self.wanted[1],
            Ok(tinyci_schema::LogStream::System) | Err(_) => self.wanted[2],
        }
    }

    /// A filter for terminal controls, unless `--raw`.
    fn terminal_safe(self) -> Option<crate::termsafe::TerminalSafe> {
        (!self.raw).then(|| {
            if crate::util::colour_wanted() {
                crate::termsafe::TerminalSafe::default()
            } else {
                crate::termsafe::TerminalSafe::without_colour()
            }
        })
    }
}

/// Writes `data` to `out`, through `safe` when given.
fn write_log(
    out: &mut impl std::io::Write,
    safe: Option<&mut crate::termsafe::TerminalSafe>,
    data: &[u8],
) -> std::io::Result<()> {
    match safe {
        None => out.write_all(data),
        Some(safe) => {
            let mut shown = Vec::with_capacity(data.len());
            safe.push(data, &mut shown);
            out.write_all(&shown)
        }
    }
}

pub(crate) fn logs(mut args: LogsArgs) -> Result<()> {
    args.acting = args
        .acting
        .resolved(args.site.config.is_some() || args.site.addr.is_some())?;
    // A profile carries its own site, certificate and token: no site.toml needed.
    let source = args
        .acting
        .source(args.site.config.clone(), args.site.addr)?;
    local_runtime()?.block_on(async move {
        let filter = StreamFilter::new(&args.stream, args.raw);
        let status = if args.follow {
            follow_across_restarts(&source, &args.run, args.from, filter).await?
        } else {
            let (client, reader) = log_reader_of(&source).await?;
            match print_stored_log(&client, &reader, &args.run, args.from, filter).await? {
                Some(status) => status,
                None => return Ok(()),
            }
        };
        let word = status_word(Ok(status));
        if status == RunStatus::Passed {
            Ok(())
        } else {
            Err(RunsDidNotPass(format!("run {} {word}", args.run)).into())
        }
    })
}

/// Prints the stored log; the run's final status once it ended and all was printed, `None`
/// while it is still going.
async fn print_stored_log(
    client: &tinyci_site::SiteClient,
    reader: &log_reader::Client,
    run: &str,
    mut from: u64,
    filter: StreamFilter,
) -> Result<Option<RunStatus>> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let mut safe = filter.terminal_safe();
    loop {
        let mut read = reader.read_request();
        read.get().set_run(run);
        read.get().set_from(from);
        read.get().set_max(1024 * 1024);
        let response = read
            .send()
            .promise
            .await
            .map_err(|e| rpc_error(client, e))?;
        let response = response.get().map_err(|e| rpc_error(client, e))?;
        let chunks = response.get_chunks().map_err(|e| rpc_error(client, e))?;
        let mut got = 0u64;
        for chunk in chunks.iter() {
            let data = chunk.get_data().map_err(|e| rpc_error(client, e))?;
            if filter.wants(chunk.get_stream()) {
                write_log(&mut stdout, safe.as_mut(), data)?;
            }
            got += data.len() as u64;
        }
        from += got;
        if response.get_done() {
            if let Some(safe) = safe.as_mut() {
                let mut rest = Vec::new();
                safe.finish(&mut rest);
                stdout.write_all(&rest)?;
            }
            stdout.flush()?;
            let status = response
                .get_status()
                .map_err(|e| anyhow::anyhow!("the site sent an unknown run status: {e}"))?;
            return Ok(Some(status));
        }
        if got == 0 {
            // Still running and nothing new stored: print what there is and stop.
            stdout.flush()?;
            return Ok(None);
        }
    }
}

/// Follows the log live through a `LogObserver` until the run ends; returns its status.
/// Where `tinyci logs` reads from, and with what authority.
struct ReaderSource {
    addr: Option<SocketAddr>,
    /// A partner site, with `token`.
    site: Option<String>,
    /// A grant instead of the admin token.
    token: Option<String>,
    repo: Option<String>,
    /// This site's configuration (absent when reading through a profile).
    config: Option<SiteConfig>,
    /// A `tinyci login` profile: its user's certificate and token.
    profile: Option<crate::github::LoadedProfile>,
}

/// Connects and opens a reader: with the admin token, of every repository; with a grant (at
/// this site or a partner), of the grant's repository; with a profile, of whatever runs its
/// user may read (`--repo`, else every repository, each run checked).
async fn log_reader_of(
    source: &ReaderSource,
) -> Result<(tinyci_site::SiteClient, log_reader::Client)> {
    if let Some(profile) = &source.profile {
        let (client, session) = crate::github::profile_session(profile).await?;
        let mut request = session.logs_request();
        request
            .get()
            .init_scope()
            .set_repo(source.repo.as_deref().unwrap_or("*"));
        return Ok((client, request.send().pipeline.get_reader()));
    }
    let config = source
        .config
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no site configuration to act with"))?;
    if let Some(token) = &source.token {
        let (client, session) =
            crate::remote::session_with(config, source.addr, source.site.as_deref(), token).await?;
        let reader =
            crate::remote::grant_log_reader(&client, &session, source.repo.as_deref()).await?;
        return Ok((client, reader));
    }
    let (client, admin) = admin_capability(config, source.addr).await?;
    let mut request = admin.logs_request();
    request.get().set_repo("*");
    let reader = request.send().pipeline.get_reader();
    Ok((client, reader))
}

/// How long `logs -f` keeps trying to reach a site that went away.
const FOLLOW_RECONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// Follows until the run ends, reconnecting (and continuing from the last byte printed) when
/// the site goes away, as runners do.
async fn follow_across_restarts(
    source: &ReaderSource,
    run: &str,
    from: u64,
    filter: StreamFilter,
) -> Result<RunStatus> {
    let next = Rc::new(std::cell::Cell::new(from));
    let (mut client, mut reader) = log_reader_of(source).await?;
    loop {
        let lost = match follow_log(&mut client, &reader, run, &next, filter).await {
            Followed::Ended(status) => return Ok(status),
            Followed::Failed(e) => return Err(e),
            Followed::Lost(why) => why,
        };
        eprintln!("following run {run}: {lost}; reconnecting");
        let deadline = std::time::Instant::now() + FOLLOW_RECONNECT_FOR;
        let mut backoff = tinyci_net::Backoff::new(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(5),
        );
        loop {
            tokio::time::sleep(backoff.next_delay()).await;
            match log_reader_of(source).await {
                Ok(pair) => {
                    (client, reader) = pair;
                    break;
                }
                Err(e) if std::time::Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "following run {run}: the site did not come back within {}s",
                        FOLLOW_RECONNECT_FOR.as_secs()
                    )));
                }
                Err(_) => {}
            }
        }
    }
}

/// How one follow ended.
enum Followed {
    /// The run ended with this status and all its log was printed.
    Ended(RunStatus),
    /// The connection went away (the site may come back).
    Lost(String),
    /// Refused or failed for good.
    Failed(anyhow::Error),
}

/// Follows the log live through a `LogObserver` from `next` (advanced as chunks print).
async fn follow_log(
    client: &mut tinyci_site::SiteClient,
    reader: &log_reader::Client,
    run: &str,
    next: &Rc<std::cell::Cell<u64>>,
    filter: StreamFilter,
) -> Followed {
    let (done_tx, done_rx) = oneshot::channel();
    let observer: log_observer::Client = capnp_rpc::new_client(LogPrinter {
        next: next.clone(),
        filter,
        safe: RefCell::new(filter.terminal_safe()),
        done: RefCell::new(Some(done_tx)),
    });
    let mut request = reader.follow_request();
    request.get().set_run(run);
    request.get().set_from(next.get());
    request.get().set_observer(observer);
    // Holding the handle keeps the follow going; dropping it (on return) ends it.
    let handle = match request.send().promise.await {
        Ok(response) => response.get().and_then(|r| r.get_handle()),
        Err(e) => Err(e),
    };
    let _handle = match handle {
        Ok(handle) => handle,
        Err(e) if e.kind == capnp::ErrorKind::Disconnected => return Followed::Lost(e.to_string()),
        Err(e) => return Followed::Failed(rpc_error(client, e).into()),
    };
    let site = client.addr.clone();
    tokio::select! {
        ended = done_rx => match ended {
            Ok(Ok(status)) => Followed::Ended(status),
            Ok(Err(why)) => Followed::Failed(anyhow::anyhow!("following run {run}: {why}")),
            Err(_) => Followed::Lost(format!("site {site} stopped sending")),
        },
        closed = client.connection.closed() => match closed {
            Ok(()) => Followed::Lost(format!("site {site} closed the connection")),
            Err(e) => Followed::Lost(format!("lost site {site}: {e}")),
        },
    }
}

/// `LogObserver`: prints each chunk as it arrives.
struct LogPrinter {
    /// Offset the next chunk should start at; repeats are skipped. Shared across reconnects.
    next: Rc<std::cell::Cell<u64>>,
    filter: StreamFilter,
    /// Terminal controls shown rather than obeyed (unless `--raw`).
    safe: RefCell<Option<crate::termsafe::TerminalSafe>>,
    done: RefCell<Option<oneshot::Sender<Result<RunStatus, String>>>>,
}

impl LogPrinter {
    fn finish(&self, result: Result<RunStatus, String>) {
        if let Some(tx) = self.done.borrow_mut().take() {
            let _ = tx.send(result);
        }
    }
}

impl log_observer::Server for LogPrinter {
    async fn chunk(self: Rc<Self>, params: log_observer::ChunkParams) -> Result<(), capnp::Error> {
        use std::io::Write as _;
        let chunk = params.get()?.get_chunk()?;
        let data = chunk.get_data()?;
        let offset = chunk.get_offset();
        let end = offset + data.len() as u64;
        let next = self.next.get();
        if end <= next {
            return Ok(());
        }
        if !self.filter.wants(chunk.get_stream()) {
            self.next.set(end);
            return Ok(());
        }
        let skip = usize::try_from(next.saturating_sub(offset)).unwrap_or(usize::MAX);
        let mut stdout = std::io::stdout().lock();
        let written = write_log(
            &mut stdout,
            self.safe.borrow_mut().as_mut(),
            data.get(skip..).unwrap_or_default(),
        )
        .and_then(|()| stdout.flush());
        if let Err(e) = written {
            // Nobody reads our output any more (`| head`): stop following.
            self.finish(Err(format!("cannot write the log: {e}")));
            return Err(capnp::Error::failed(format!("the follower stopped: {e}")));
        }
        self.next.set(end);
        Ok(())
    }

    async fn done(
        self: Rc<Self>,
        params: log_observer::DoneParams,
        _: log_observer::DoneResults,
    ) -> Result<(), capnp::Error> {
        match params.get()?.get_status() {
            Ok(status) => self.finish(Ok(status)),
            Err(e) => self.finish(Err(format!("the site sent an unknown run status: {e}"))),
        }
        Ok(())
    }
}
