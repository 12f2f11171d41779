//! `tinyci site init|up|status`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::util::InputError;
use crate::util::say;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tinyci_pki::SiteName;
use tinyci_site::config::parse_listen;
use tinyci_site::init::{InitOptions, identity_exists, init_site, write_default_config};
use tinyci_site::{Site, SiteConfig, connect_admin};

use crate::util::{config_path, local_runtime};

#[derive(Debug, Subcommand)]
pub(crate) enum SiteCommand {
    /// Create a site identity: CA, site certificate, admin certificate, Biscuit root key, and
    /// site.toml if none exists.
    ///
    /// Refuses to replace an existing identity unless --force is given: replacing it
    /// invalidates every certificate and token issued so far.
    Init(InitArgs),
    /// Run a site until Ctrl-C or SIGTERM.
    ///
    /// With no --config and no ./site.toml, initializes a site named `local` in the current
    /// directory (./certs, ./data, ./site.toml) and listens on 127.0.0.1:7433.
    Up(UpArgs),
    /// Ask a running site who it is, using the admin certificate from site.toml.
    Status(StatusArgs),
    /// Validate a site.toml and every file it names, without starting anything.
    ///
    /// Certificates and keys must parse and belong to the site, key files must be mode 0600,
    /// partner pins must be valid, GitHub secret files readable. Exits 3 on the first problem,
    /// naming the key and file.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The site configuration [default: $TINYCI_CONFIG, else ./site.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// The site's name (lowercase letters, digits, inner hyphens).
    #[arg(long, default_value = "local")]
    name: String,
    /// The site directory: certs/ and site.toml are written here.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Replace an existing identity.
    #[arg(long)]
    force: bool,
    /// Extra DNS name or IP address for the site certificate (repeatable).
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// The site configuration [default: $TINYCI_CONFIG, else ./site.toml, which alone is
    /// created with the embedded defaults if missing].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this address instead of site.listen (port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen)]
    listen: Option<SocketAddr>,
    /// Serve HTTP (webhooks, login) on this address instead of [http] listen.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen)]
    http_listen: Option<SocketAddr>,
    /// Do not start the embedded runner (shell executor, queue `default`).
    #[arg(long)]
    no_local_runner: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The site configuration [default: $TINYCI_CONFIG, else ./site.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Dial this address instead of site.listen.
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<SocketAddr>,
    /// Print JSON: `{"site", "version", "uptime_millis", "ca_fingerprint", "address",
    /// "you_are"}` (the fingerprint: the CA certificate's SHA-256, colon-separated hex).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(command: SiteCommand) -> Result<()> {
    match command {
        SiteCommand::Init(args) => init(args),
        SiteCommand::Up(args) => up(args),
        SiteCommand::Status(args) => status(args),
        SiteCommand::Check(args) => check(args),
    }
}

fn check(args: CheckArgs) -> Result<()> {
    let path = config_path(args.config);
    let config = SiteConfig::load(&path)?;
    let report = tinyci_site::check(&config)?;
    println!("{} is valid for site {}", path.display(), config.name);
    for line in report.checked {
        println!("  ok  {line}");
    }
    Ok(())
}

fn init(args: InitArgs) -> Result<()> {
    let name = SiteName::new(&args.name).map_err(|e| InputError(format!("--name: {e}")))?;
    let report = init_site(&InitOptions {
        dir: args.dir.clone(),
        name: name.clone(),
        force: args.force,
        hosts: args.hosts,
    })?;
    say!("initialized site {name} in {}", args.dir.display());
    for file in &report.files {
        say!("  wrote {}", file.display());
    }
    if report.wrote_config {
        say!("  wrote {}", report.config.display());
    } else {
        say!("  kept existing {}", report.config.display());
    }
    say!("CA fingerprint: sha256 {}", report.ca_fingerprint);
    say!("next: tinyci site up --config {}", report.config.display());
    Ok(())
}

/// With no config anywhere, make the embedded default site in the current directory.
fn ensure_default_site(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let dir = Path::new(".");
    if identity_exists(dir) {
        // Keys are here but the config is gone: name the site after its CA and rewrite it.
        let ca_pem = tinyci_pki::read_text_file(&dir.join("certs/ca.crt"), false)?;
        let ca = tinyci_pki::tls::parse_cert_pem(&ca_pem)?;
        let identity = tinyci_pki::tls::identity_from_der(&ca)?;
        let written = write_default_config(dir, identity.site_name())?;
        say!(
            "wrote {} for the existing site {}",
            written.display(),
            identity.site_name()
        );
        return Ok(());
    }
    let name = SiteName::new("local")?;
    say!("no site.toml here: initializing site {name} in ./certs and ./data");
    init_site(&InitOptions {
        dir: dir.to_owned(),
        name,
        force: false,
        hosts: Vec::new(),
    })?;
    Ok(())
}

fn up(args: UpArgs) -> Result<()> {
    // Only ./site.toml is created on demand: a configuration named (by flag or by
    // TINYCI_CONFIG) that is missing is an error, never a fresh site somewhere else.
    let embedded =
        args.config.is_none() && crate::util::env_value(crate::util::CONFIG_ENV).is_none();
    let path = config_path(args.config);
    if embedded {
        ensure_default_site(&path)?;
    }
    let config = SiteConfig::load(&path)?;
    local_runtime()?.block_on(async move {
        let mut site = Site::open(config)
            .await
            .context("failed to start the site")?;
        say!(
            "site {} opened its store at {}",
            site.config().name,
            site.config().data_dir.display()
        );
        let listener = site.bind(args.listen).await?;
        let addr = listener.local_addr()?;
        say!("listening on {addr}");
        if let Some(http) = site.bind_http(args.http_listen).await? {
            say!("http listening on {http}");
        }
        say!("CA fingerprint: sha256 {}", site.ca_fingerprint());
        let status_hint = if args.listen.is_some() || site.config().listen.port() == 0 {
            format!(" --addr {addr}")
        } else {
            String::new()
        };
        let config_hint = if embedded {
            String::new()
        } else {
            format!(" --config {}", path.display())
        };
        say!("next: tinyci site status{config_hint}{status_hint}   (Ctrl-C stops the site)");
        let local_runner = if args.no_local_runner {
            None
        } else {
            match local_runner(&site, addr).await {
                Ok(config) => {
                    let (_stopper, control) = tinyci_runner::agent_control();
                    let executors = &config.executors;
                    if executors.isolation() == tinyci_runner::Isolation::Host {
                        say!(
                            "local runner attached (queue default): no Docker engine and no working bubblewrap, so it runs jobs as processes on this host and takes only local work; install bubblewrap or Docker to run others' work"
                        );
                    } else {
                        say!(
                            "local runner attached (queue default; executors: {}; work in {})",
                            executors.describe(),
                            config.work_root.path().display()
                        );
                    }
                    Some(tokio::task::spawn_local(tinyci_runner::run_agent(
                        config, control,
                    )))
                }
                Err(e) => {
                    say!("no local runner: {e:#}");
                    None
                }
            }
        };
        // On shutdown the local runner goes first, so its connection does not hold the
        // site's grace period; the runs it held are requeued at the next start.
        let local_runner = local_runner.map(|task| task.abort_handle());
        let shutdown = async move {
            shutdown_signal().await;
            if let Some(runner) = local_runner {
                runner.abort();
            }
        };
        let stats = site.run(listener, shutdown).await;
        say!(
            "site stopped ({} connections served)",
            stats.accepted.load(std::sync::atomic::Ordering::Relaxed)
        );
        Ok(())
    })
}

fn status(args: StatusArgs) -> Result<()> {
    let path = config_path(args.config);
    let config = SiteConfig::load(&path)?;
    local_runtime()?.block_on(async move {
        let (client, info) = connect_admin(&config, args.addr).await?;
        if args.json {
            return crate::jobs::print_json(&serde_json::json!({
                "site": info.site_id,
                "version": info.version,
                "uptime_millis": info.uptime_millis,
                "ca_fingerprint": info.ca_fingerprint,
                "address": client.addr.to_string(),
                "you_are": info.peer,
            }));
        }
        say!("site         {}", info.site_id);
        say!("version      {}", info.version);
        say!(
            "uptime       {}",
            human_duration(Duration::from_millis(info.uptime_millis))
        );
        say!("fingerprint  sha256 {}", info.ca_fingerprint);
        say!("address      {}", client.addr);
        say!("you are      {}", info.peer);
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the site");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m {seconds}s"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// The embedded runner: provisioned once into `<data>/local-runner.bundle`, then pointed at
/// the address the site actually bound. It runs jobs in containers and the sandbox when this
/// host has them, and unpacks them outside the site's directories.
async fn local_runner(site: &Site, addr: SocketAddr) -> Result<tinyci_runner::AgentConfig> {
    use tinyci_site::bundle::{NewRunner, RunnerBundle};
    let config = site.config();
    let path = config.data_dir.join("local-runner.bundle");
    // A bundle this version cannot use (an older format) is the site's own to replace.
    let existing =
        path.exists()
            .then(|| RunnerBundle::load(&path))
            .and_then(|loaded| match loaded {
                Ok(bundle) => Some(bundle),
                Err(e) => {
                    tracing::warn!(error = %e, "re-provisioning the embedded runner");
                    None
                }
            });
    let mut bundle = if let Some(bundle) = existing {
        bundle
    } else {
        let bundle = RunnerBundle::issue_recording_in(
            config,
            &NewRunner {
                name: tinyci_site::bundle::EMBEDDED_RUNNER.into(),
                queues: vec!["default".into()],
                addresses: vec![addr.to_string()],
                expires_at: None,
                single_use: false,
            },
            site.store(),
        )?;
        bundle.write(&path)?;
        bundle
    };
    let dial = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    bundle.addresses = vec![dial.to_string()];
    let work_root = local_work_root(config)?;
    let mut hidden: Vec<std::path::PathBuf> = config
        .private_paths()
        .into_iter()
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .collect();
    hidden.push(work_root.clone());
    let work_root = crate::runner::claim_work_root(&work_root)?;
    let (executors, _) = tinyci_runner::Executors::detect(tinyci_runner::DetectOptions {
        hidden,
        limits: tinyci_runner::ContainerLimits::default(),
        pull: tinyci_runner::PullPolicy::default(),
        registry_auth: tinyci_runner::RegistryAuth::from_docker_config()?,
    })
    .await;
    Ok(tinyci_runner::AgentConfig {
        site: config.name.clone(),
        addresses: bundle.addresses.clone(),
        tls: bundle.client_tls()?,
        token: bundle.token.clone(),
        name: bundle.runner.clone(),
        queues: bundle.queues.clone(),
        slots: 2,
        labels: Vec::new(),
        once: false,
        executors,
        work_root,
        limits: tinyci_net::NetLimits::default(),
        max_backoff: std::time::Duration::from_secs(5),
        stats: std::rc::Rc::default(),
    })
}

/// Where the embedded runner unpacks jobs: under the system's temporary directory, never in
/// the site's `certs/` or `data/` (a job on the host walks up from its directory), one per
/// data directory, private to the site's user.
fn local_work_root(config: &tinyci_site::SiteConfig) -> Result<std::path::PathBuf> {
    use std::hash::{Hash, Hasher};
    let data = std::path::absolute(&config.data_dir)?;
    let mut hasher = std::hash::DefaultHasher::new();
    data.hash(&mut hasher);
    let root = std::env::temp_dir().join(format!(
        "tinyci-{}-runner-{:016x}",
        config.name,
        hasher.finish()
    ));
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_secs(12)), "12s");
        assert_eq!(human_duration(Duration::from_secs(250)), "4m 10s");
        assert_eq!(human_duration(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(
            human_duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d 4h"
        );
    }
}
