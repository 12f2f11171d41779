//! `tinyci runner add`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tinyci_site::SiteConfig;
use tinyci_site::bundle::{NewRunner, RunnerBundle};

use tinyci_runner::{
    AgentConfig, AgentStopper, Bubblewrap, ContainerLimits, Containment, DetectOptions,
    DockerExecutor, Executor, Executors, ShellExecutor, agent_control, run_agent,
};

use crate::util::say;
use crate::util::{InputError, config_path, local_runtime, parse_ttl, read_token_arg};

/// Run a runner, or provision one (`tinyci runner add`).
///
/// `tinyci runner --bundle r1.bundle` connects to the site named in the bundle, takes jobs
/// from the bundle's queues and runs them: in containers if a Docker API answers and in the
/// bubblewrap sandbox if it works here (the site leases each run only to a runner that
/// isolates it as its queue's policy requires); with neither, as processes on this host,
/// which a site gives only its own (`local`) work.
/// SIGTERM drains: current runs finish, no new ones start. SIGINT (Ctrl-C) stops current
/// runs and exits; their leases go back to the queue, so another runner retries them.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct RunnerArgs {
    #[command(subcommand)]
    command: Option<RunnerCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The runner bundle from `tinyci runner add`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["site", "token"])]
    bundle: Option<PathBuf>,
    /// Instead of a bundle: the site to join, with --token: its address, the name of a
    /// partner pinned under federation/ (dialed at the pin's addresses), or `auto` (found
    /// over mDNS, accepted only if it announces the CA pinned for it). The runner connects
    /// with this host's own site identity (certificate from --config), so the grant must be
    /// held by this site (`site:<name>`); a partner's server is accepted only with its pinned
    /// CA.
    #[arg(long, value_name = "HOST:PORT|SITE", requires = "token")]
    site: Option<String>,
    /// The grant to redeem (text, file, or - for standard input), with --site.
    #[arg(long, value_name = "TOKEN|FILE", requires = "site")]
    token: Option<String>,
    /// Queue to take from, with --site (repeatable) [default: the queues the grant names].
    #[arg(long = "queue", value_name = "QUEUE", requires = "site")]
    queues: Vec<String>,
    /// With --site auto: how long to listen for the site's announcement.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_ttl, requires = "site")]
    discovery_timeout: Duration,
    /// This host's site configuration, with --site [default: $TINYCI_CONFIG, else
    /// ./site.toml].
    #[arg(long, value_name = "FILE", requires = "site")]
    config: Option<PathBuf>,
    /// Runs executed at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: u16,
    /// Take one job, run it to its end, report it, and exit (0 whatever the job's verdict):
    /// for a fresh machine per job, as autoscalers start them. With a bundle from
    /// `runner add --ephemeral`, the site also revokes the grant when that job ends.
    #[arg(long, conflicts_with = "jobs")]
    once: bool,
    /// A label for this runner (repeatable): a run whose task files list `labels:` is leased
    /// only to a runner with every one of them (gpu, arch=arm64, zone/eu-1).
    #[arg(long = "label", value_name = "LABEL", value_parser = parse_label)]
    labels: Vec<String>,
    /// How to execute jobs.
    #[arg(long, value_enum, default_value_t = ExecutorChoice::Auto)]
    executor: ExecutorChoice,
    /// Run privileged containers when the site grants one (its `privileged_repos` policy
    /// for `local` or `repo` work). Without this flag the runner is never leased one.
    #[arg(long)]
    allow_privileged: bool,
    /// Memory limit of a container (512m, 4g, 1Gi): a task's `resources.memory` may ask for
    /// less, never more.
    #[arg(long, value_name = "SIZE", default_value = "4g", value_parser = tinyci_runner::parse_memory)]
    memory: i64,
    /// CPU limit of a container, in cores: a task's `resources.cpu` may ask for less, never
    /// more [default: all].
    #[arg(long, value_name = "CORES", value_parser = tinyci_runner::parse_cpus)]
    cpus: Option<i64>,
    /// Most processes and threads in one container.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(i64).range(16..=1_000_000))]
    pids_limit: i64,
    /// When to pull a container's image from its registry: always (before every run), missing
    /// (only when it is not on this host) or never (it must be here already). A queue's
    /// `pull` in the site's site.toml overrides it. Registry credentials are this host's,
    /// from $DOCKER_CONFIG/config.json or ~/.docker/config.json (`auths` entries).
    #[arg(long, value_name = "POLICY", default_value = "missing", value_parser = parse_pull)]
    pull: tinyci_runner::PullPolicy,
    /// Serve this runner's Prometheus metrics at http://ADDR/metrics (port 0 picks one).
    #[arg(long, value_name = "HOST:PORT", value_parser = tinyci_site::config::parse_listen)]
    metrics: Option<std::net::SocketAddr>,
    /// Where job sources are unpacked [default: a directory under the system temp dir].
    /// Runners may share one. When a runner starts, it removes the run directories
    /// (`r-<n>-<attempt>-<owner>-<serial>`) that runners which died left there; nothing else
    /// in it is touched.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExecutorChoice {
    /// Docker if a Docker API answers (DOCKER_HOST or the default socket) and the sandbox if
    /// bubblewrap works; processes on the host only when neither does.
    Auto,
    /// Processes on this host, as this user (each run in its own PID namespace when
    /// bubblewrap is installed). Sites lease it only `local` work by default.
    Shell,
    /// Processes in a bubblewrap sandbox (fails if bubblewrap cannot run here).
    Sandbox,
    /// Containers through the Docker API (fails if none answers).
    Docker,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RunnerCommand {
    /// Provision a runner: issue its certificate and a `queue:take` grant into one bundle file.
    ///
    /// The bundle (mode 0600) is all a runner host needs: copy it there and start the runner
    /// with it. It needs the site's CA key and root key (tls.ca_key, grants.root_key), not a
    /// running site. The grant is bound to the runner's certificate and can be revoked with
    /// `tinyci token revoke`.
    ///
    /// Example: tinyci runner add r1 --queue default --queue gpu --addr ci.example.org:7433
    Add(AddArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    /// The runner's name (lowercase letters, digits, '.', '_', '-').
    name: String,
    /// A queue the runner takes jobs from (repeatable).
    #[arg(long = "queue", value_name = "QUEUE", required = true)]
    queues: Vec<String>,
    /// An address runners dial to reach the site (repeatable) [default: site.listen].
    #[arg(long = "addr", value_name = "HOST:PORT")]
    addresses: Vec<String>,
    /// Expire the runner's grant after this long (90s, 30m, 12h, 7d, 2w) [default: never;
    /// revoke it to retire the runner].
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    ttl: Option<Duration>,
    /// Where to write the bundle [default: NAME.bundle].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// A single-use bundle, for a machine started for one job (an autoscaler's): the site
    /// leases its runner one run and revokes its grant when that run's lease ends (passed,
    /// failed, canceled or lost). Start it with `tinyci runner --once`. Without --ttl it
    /// expires after a day.
    #[arg(long)]
    ephemeral: bool,
    /// The site configuration [default: $TINYCI_CONFIG, else ./site.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub(crate) fn run(args: RunnerArgs) -> Result<()> {
    match args.command {
        Some(RunnerCommand::Add(add_args)) => add(add_args),
        None => serve(args.run),
    }
}

/// Where a runner joins and as whom.
struct Joining {
    site: tinyci_pki::SiteName,
    addresses: Vec<String>,
    tls: std::sync::Arc<tinyci_net::ClientConfig>,
    token: String,
    name: String,
    queues: Vec<String>,
    /// Files and directories sandboxed jobs must not see even inside a shown directory.
    hidden: Vec<PathBuf>,
}

/// `path` made absolute against the current directory (as the sandbox names mounts).
fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn from_bundle(path: &std::path::Path) -> Result<Joining> {
    let bundle = RunnerBundle::load(path).map_err(|e| InputError(e.to_string()))?;
    let tls = bundle.client_tls().map_err(|e| InputError(e.to_string()))?;
    Ok(Joining {
        site: tinyci_pki::SiteName::new(&bundle.site)?,
        addresses: bundle.addresses,
        tls,
        token: bundle.token,
        name: bundle.runner,
        queues: bundle.queues,
        hidden: vec![absolute(path)],
    })
}

/// Finds `site` over mDNS (then among static peers): only an announcement carrying the CA
/// fingerprint pinned for it counts. Returns its addresses.
fn discover(config: &SiteConfig, site: &str, patience: Duration) -> Result<Vec<String>> {
    let trust = crate::federation::Trust::load(config)?;
    let expected = trust.expected(site).ok_or_else(|| {
        InputError(format!(
            "the token is for site {site}, which is neither this site nor a pinned partner"
        ))
    })?;
    say!(
        "looking for site {site} over mDNS (up to {}s)",
        patience.as_secs()
    );
    let wanted = (site.to_owned(), expected.clone());
    let sightings =
        local_runtime()?.block_on(tinyci_net::discovery::browse(patience, move |seen| {
            // Resolution can report a loopback address before the routable ones: wait for
            // one another host could use (a loopback-only answer is still taken at the end).
            seen.iter().any(|s| {
                s.site == wanted.0
                    && s.ca_fingerprint == wanted.1
                    && s.addrs.iter().any(|a| !a.ip().is_loopback())
            })
        }))?;
    // Routable addresses first; loopback ones only help when the site is on this host.
    let addrs = |s: &tinyci_net::discovery::Sighting| {
        let mut addrs = s.addrs.clone();
        addrs.sort_by_key(|a| a.ip().is_loopback());
        addrs.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    if let Some(trusted) = sightings
        .iter()
        .find(|s| s.site == site && s.ca_fingerprint == expected)
    {
        say!("found site {site} at {}", addrs(trusted).join(", "));
        return Ok(addrs(trusted));
    }
    let impostors: Vec<String> = sightings
        .iter()
        .filter(|s| s.site == site)
        .map(|s| {
            format!(
                "{} announcing CA sha256 {}",
                addrs(s).join(", "),
                s.ca_fingerprint
            )
        })
        .collect();
    let statics = config.discovery.static_addrs(site);
    if !statics.is_empty() {
        say!("site {site} is not announced with its pinned CA; using its static peer address");
        return Ok(statics);
    }
    if impostors.is_empty() {
        Err(anyhow::anyhow!(
            "site {site} was not found over mDNS within {}s and has no static peer address",
            patience.as_secs()
        ))
    } else {
        Err(anyhow::anyhow!(
            "refusing to connect: only untrusted announcements of site {site} were found ({}); \
             the CA pinned for it is sha256 {expected}",
            impostors.join("; ")
        ))
    }
}

/// `--site ADDR --token FILE`: this host's site identity, the grant's site and queues.
fn from_token(
    addr: &str,
    token: &str,
    config: Option<PathBuf>,
    queues: Vec<String>,
    discovery_timeout: Duration,
) -> Result<Joining> {
    let config = SiteConfig::load(&config_path(config))?;
    let token = read_token_arg(token)?;
    let grant = tinyci_grant::UnverifiedToken::parse(&token)
        .and_then(|t| t.inspect())
        .map_err(|e| InputError(e.to_string()))?
        .grant;
    let target = tinyci_pki::SiteName::new(&grant.site)?;
    let discovered = if addr == "auto" {
        Some(discover(&config, target.as_str(), discovery_timeout)?)
    } else {
        None
    };
    let by_name = discovered.is_none() && !addr.contains(':');
    if by_name && addr != target.as_str() {
        return Err(InputError(format!(
            "--site {addr}: the token is for site {target}; give its address or --site {target}"
        ))
        .into());
    }
    let (ca, addresses) = if target == config.name {
        let addresses = if by_name {
            let own = config.dial_addr().ok_or_else(|| {
                InputError("site.listen has port 0; give --site HOST:PORT".into())
            })?;
            let mut addrs = vec![own.to_string()];
            addrs.extend(config.discovery.static_addrs(target.as_str()));
            addrs
        } else {
            discovered.unwrap_or_else(|| vec![addr.to_owned()])
        };
        (
            tinyci_pki::read_text_file(&config.ca_cert, false)?,
            addresses,
        )
    } else {
        let pin = tinyci_site::federation::find_partner(
            &config.federation_dir,
            &config.name,
            target.as_str(),
        )
        .map_err(|e| InputError(format!("the token is for site {target}: {e}")))?;
        let addresses = if by_name {
            let mut addrs = pin.addrs.clone();
            addrs.extend(config.discovery.static_addrs(target.as_str()));
            addrs
        } else {
            discovered.unwrap_or_else(|| vec![addr.to_owned()])
        };
        if addresses.is_empty() {
            return Err(InputError(format!(
                "partner {target} has no address in its pin; give --site HOST:PORT"
            ))
            .into());
        }
        (pin.ca_pem, addresses)
    };
    let cert = tinyci_pki::read_text_file(&config.cert, false)?;
    let key = tinyci_pki::read_text_file(&config.key, true)?;
    let creds = tinyci_pki::Credentials::from_pem(&cert, &key)?;
    let tls = tinyci_pki::tls::client_config(&creds, &ca, target.clone())?;
    let queues = if queues.is_empty() {
        grant.queues.iter().filter(|q| *q != "*").cloned().collect()
    } else {
        queues
    };
    if queues.is_empty() {
        return Err(InputError("the grant names no queue; pass --queue QUEUE".into()).into());
    }
    Ok(Joining {
        site: target,
        addresses,
        tls,
        token,
        name: format!("{}-runner", config.name),
        queues,
        hidden: config.private_paths().iter().map(|p| absolute(p)).collect(),
    })
}

fn serve(args: RunArgs) -> Result<()> {
    let joining = match (&args.bundle, &args.site, &args.token) {
        (Some(path), _, _) => from_bundle(path)?,
        (None, Some(addr), Some(token)) => from_token(
            addr,
            token,
            args.config.clone(),
            args.queues.clone(),
            args.discovery_timeout,
        )?,
        _ => {
            return Err(InputError(
                "give --bundle FILE (from `tinyci runner add`), or --site HOST:PORT --token FILE"
                    .into(),
            )
            .into());
        }
    };
    let work_root = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("tinyci-runner-{}", joining.name)));
    let claimed = claim_work_root(&work_root)?;
    let limits = ContainerLimits {
        pids: args.pids_limit,
        memory_bytes: Some(args.memory),
        nano_cpus: args.cpus,
        allow_privileged: args.allow_privileged,
    };
    let registry_auth = if matches!(args.executor, ExecutorChoice::Auto | ExecutorChoice::Docker) {
        tinyci_runner::RegistryAuth::from_docker_config()?
    } else {
        tinyci_runner::RegistryAuth::default()
    };
    let mut labels = args.labels.clone();
    labels.sort();
    labels.dedup();
    // The work root holds every run's tree; the sandbox shows a job only its own.
    let mut hidden = joining.hidden.clone();
    hidden.push(absolute(&work_root));
    local_runtime()?.block_on(async move {
        let mut executors = match args.executor {
            ExecutorChoice::Shell => {
                let contained = match Containment::detect().await {
                    Ok(containment) => Some(containment),
                    Err(e) => {
                        say!(
                            "warning: {e}; a job's processes that leave its process group \
                             (setsid, daemons) can outlive its run"
                        );
                        None
                    }
                };
                Executors::new(vec![Executor::Shell(ShellExecutor::host(contained))])
            }
            ExecutorChoice::Sandbox => Executors::new(vec![Executor::Shell(
                ShellExecutor::sandboxed(Bubblewrap::detect().await?.hiding(hidden)),
            )]),
            ExecutorChoice::Docker => Executors::new(vec![Executor::Docker(
                DockerExecutor::connect()
                    .await?
                    .with_limits(limits)
                    .with_pulls(args.pull, registry_auth),
            )]),
            ExecutorChoice::Auto => {
                let (executors, notes) = Executors::detect(DetectOptions {
                    hidden,
                    limits,
                    pull: args.pull,
                    registry_auth,
                })
                .await;
                for note in notes {
                    say!("not available: {note}");
                }
                executors
            }
        };
        if args.allow_privileged && !executors.allow_privileged() {
            return Err(InputError(
                "--allow-privileged needs the Docker executor (privileged means a privileged \
                 container)"
                    .into(),
            )
            .into());
        }
        // Containers a previous run of this runner left (it crashed or was killed) hold
        // resources and may still run a job: remove them before taking work.
        let removed = executors.claim_for(&joining.name).await?;
        if removed > 0 {
            say!(
                "removed {removed} container(s) a previous run of runner {} left behind",
                joining.name
            );
        }
        say!(
            "runner {} of site {}: {} on {}, executors: {} (isolation up to {}){}",
            joining.name,
            joining.site,
            if args.once {
                "one job, then exit,".to_owned()
            } else {
                format!("{} slot(s)", args.jobs)
            },
            joining.queues.join(", "),
            executors.describe(),
            executors.isolation(),
            if labels.is_empty() {
                String::new()
            } else {
                format!(", labels: {}", labels.join(" "))
            }
        );
        let stats = std::rc::Rc::new(tinyci_runner::AgentStats::default());
        if let Some(addr) = args.metrics {
            let bound =
                crate::runner_metrics::serve(addr, stats.clone(), joining.name.clone()).await?;
            say!("runner metrics on http://{bound}/metrics");
        }
        let config = AgentConfig {
            site: joining.site,
            addresses: joining.addresses,
            tls: joining.tls,
            token: joining.token,
            name: joining.name,
            queues: joining.queues,
            slots: usize::from(args.jobs),
            labels,
            once: args.once,
            executors,
            work_root: claimed,
            limits: tinyci_net::NetLimits::default(),
            max_backoff: Duration::from_secs(30),
            stats,
        };
        let (stopper, control) = agent_control();
        tokio::task::spawn_local(stop_on_signals(stopper));
        let stopped = run_agent(config, control).await;
        say!("runner stopped");
        Ok(stopped?)
    })
}

fn parse_label(text: &str) -> Result<String, String> {
    tinyci_runner::check_label(text).map(|()| text.to_owned())
}

fn parse_pull(text: &str) -> Result<tinyci_runner::PullPolicy, String> {
    text.parse::<tinyci_runner::PullPolicy>()
        .map_err(|e| e.to_string())
}

/// SIGTERM drains, SIGINT cancels.
async fn stop_on_signals(stopper: AgentStopper) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for signals; the runner stops only when killed");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {
                say!("SIGTERM: finishing current runs, taking no new ones");
                stopper.drain();
            }
            _ = int.recv() => {
                say!("SIGINT: stopping current runs; they go back to the queue");
                stopper.cancel();
            }
        }
    }
}

fn add(args: AddArgs) -> Result<()> {
    let config = SiteConfig::load(&config_path(args.config))?;
    for addr in &args.addresses {
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(InputError(format!("--addr {addr:?}: expected HOST:PORT")).into());
        }
    }
    if args.addresses.is_empty() && config.dial_addr().is_none() {
        return Err(InputError(
            "site.listen has port 0, so the bundle would have no address; pass --addr HOST:PORT"
                .into(),
        )
        .into());
    }
    if args.name == tinyci_site::bundle::EMBEDDED_RUNNER {
        return Err(InputError(format!(
            "the runner name {:?} is reserved for the runner `tinyci site up` embeds; pick another",
            args.name
        ))
        .into());
    }
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}.bundle", args.name)));
    if out.exists() {
        return Err(InputError(format!(
            "{} exists; refusing to overwrite a bundle (remove it or pass --out)",
            out.display()
        ))
        .into());
    }
    let bundle = RunnerBundle::issue(
        &config,
        &NewRunner {
            name: args.name.clone(),
            queues: args.queues,
            addresses: args.addresses,
            expires_at: match (args.ttl, args.ephemeral) {
                (Some(ttl), _) => Some(SystemTime::now() + ttl),
                // A machine started for one job that never got one must not hold a live
                // grant for ever.
                (None, true) => Some(SystemTime::now() + Duration::from_secs(86_400)),
                (None, false) => None,
            },
            single_use: args.ephemeral,
        },
    )
    .map_err(|e| -> anyhow::Error {
        use tinyci_site::bundle::BundleError;
        match e {
            BundleError::Grant(_) | BundleError::Pki(_) | BundleError::NoCaKey => {
                InputError(e.to_string()).into()
            }
            other => other.into(),
        }
    })?;
    bundle.write(&out)?;
    say!(
        "runner {} may take {} from {} at site {}",
        bundle.runner,
        if args.ephemeral {
            "one job (single-use: its grant is revoked when that job ends)"
        } else {
            "jobs"
        },
        bundle.queues.join(", "),
        bundle.site
    );
    say!(
        "wrote {} (mode 0600): copy it to the runner host; it holds the runner's key",
        out.display()
    );
    Ok(())
}

/// Claims `path` as this process's work root and removes what runners that died there left
/// (a runner killed with SIGKILL cannot clean up after itself), saying how much.
pub(crate) fn claim_work_root(path: &Path) -> Result<std::sync::Arc<tinyci_runner::WorkRoot>> {
    // The process's start time makes its claim unique even where its process id was a dead
    // runner's.
    let started_ns = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let (root, swept) = tinyci_runner::WorkRoot::claim(path, started_ns)
        .with_context(|| format!("cannot use {} as the work directory", path.display()))?;
    let left = |n: usize| {
        let noun = if n == 1 { "directory" } else { "directories" };
        format!(
            "{n} work {noun} left in {} by runners that died",
            path.display()
        )
    };
    if swept.removed > 0 {
        say!("removed {}", left(swept.removed));
    }
    if swept.failed > 0 {
        say!(
            "warning: {} could not be removed (see the log)",
            left(swept.failed)
        );
    }
    Ok(std::sync::Arc::new(root))
}
