//! A tinyci site: reads `site.toml` and its identity, opens its store, and serves the
//! `Gateway` bootstrap over mTLS capnp-rpc (`site up`) with its HTTP side.
//!
//! This crate composes the layers and is the Cap'n Proto capability surface; it owns no wire
//! format, no crypto and no storage engine (those are `tinyci-schema`, `tinyci-pki`/
//! `tinyci-grant` and `tinyci-store`), and the configuration, run logs, bulk bytes and GitHub
//! are their own crates (`tinyci-config`, `tinyci-logs`, `tinyci-assets`, `tinyci-github`), as
//! are the identity on disk and the admin client (`tinyci-identity`, re-exported) and the web
//! side (`tinyci-web`), which this crate hands views and capabilities.
//! It must not know `anyhow` or `clap`: the CLI turns its typed errors into messages and exit
//! codes.

mod access;
mod assets;
mod caps;
pub use tinyci_config as config;
mod denied;
mod gateway;

mod grants;
mod jobs;
mod logs;
mod membrane;
mod metrics;
mod retention;
mod rpc;
mod secrets;
mod session;
mod settings;
mod sources;
mod tiers;
mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tinyci_identity::read_pem;
use tinyci_net::{Listener, NetLimits, ServerStats};
use tinyci_pki::Fingerprint;
use tinyci_schema::gateway as gateway_capnp;
use tinyci_store::Store;
use tracing::info;

pub use config::{ConfigError, SiteConfig};
pub use gateway::{PROTOCOL, SiteFacts};
pub use retention::RetentionPolicy;
pub use session::fill_grant_info;
pub use tinyci_identity::{
    CheckReport, IdentityError, SiteClient, SiteInfo, TrustPolicy, admin_capability, bundle,
    connect_admin, connect_as, connect_partner, federation, init, load_root_key,
    open_store_for_tool, record_issued, rpc_error,
};
pub use tinyci_logs::{DEFAULT_MAX_RUN_LOG_BYTES, FOLLOWER_BUFFER_BOUND, FollowStats};

/// Why a site could not start.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The site's identity (certificates, keys, partner pins) is unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] tinyci_store::StoreError),
    /// Listening failed.
    #[error(transparent)]
    Net(#[from] tinyci_net::NetError),
    /// The queue could not be loaded.
    #[error("cannot load the run queue")]
    Queue(#[source] tinyci_queue::QueueError),
    /// The run logs could not be opened (or those stored the old way moved into files).
    #[error(transparent)]
    Logs(#[from] tinyci_logs::LogError),
    /// A directory under the data dir could not be created.
    #[error("cannot create {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The HTTP listener could not be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    HttpBind {
        /// The address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
}

impl SiteError {
    /// Whether the error is the operator's to fix in `site.toml` or the files it names.
    pub fn is_configuration(&self) -> bool {
        match self {
            Self::Config(_) => true,
            Self::Identity(e) => e.is_configuration(),
            _ => false,
        }
    }
}

/// A site that has loaded its identity and opened its store, ready to listen.
#[derive(Debug)]
pub struct Site {
    config: SiteConfig,
    store: Store,
    tls: Arc<tinyci_net::ServerConfig>,
    ca_fingerprint: Fingerprint,
    services: Rc<Services>,
    /// Retention sweeps finished since start.
    sweeps: tokio::sync::watch::Sender<u64>,
    /// The store's writer thread, joined at shutdown: it holds the store open until every
    /// committer is gone.
    writer: tinyci_store::GroupWriterThread,
    /// The HTTP listener, once bound ([`Site::bind_http`]).
    http: Option<tokio::net::TcpListener>,
    /// Signs `tinyci login` certificates (OAuth configured and `tls.ca_key` present).
    login_ca: Option<Rc<tinyci_github::oauth::LoginCa>>,
}

/// The services every connection's gateway and sessions share. Single-threaded: it lives on
/// the site's LocalSet.
#[derive(Debug)]
pub(crate) struct Services {
    /// Redeeming and revoking grants.
    pub(crate) grants: Rc<grants::GrantAuthority>,
    /// Source archives.
    pub(crate) sources: tinyci_assets::SourceStore,
    /// Artifact bytes and the per-artifact limit.
    pub(crate) artifacts: Rc<tinyci_assets::ArtifactStore>,
    /// Uploaded archives not yet submitted, per holder.
    pub(crate) uploads: Rc<tinyci_assets::UploadLedger>,
    /// Submissions, runs, leases.
    pub(crate) queue: Rc<tinyci_queue::Queue>,
    /// The store, for reads.
    pub(crate) store: Store,
    /// The store's group-commit writer, for durable writes from the RPC thread.
    pub(crate) committer: tinyci_store::GroupCommitter,
    /// Run logs: written, read, followed, swept.
    pub(crate) logs: Rc<tinyci_logs::Logs>,
    /// Site users.
    pub(crate) users: tinyci_users::Users,
    /// GitHub, when `[github]` is configured.
    pub(crate) github: Option<Rc<tinyci_github::GitHubService>>,
    /// What site users may do with repositories (GitHub's word, cached): for pages and RPC.
    pub(crate) access: Rc<access::RepoAccess>,
    /// Which CAs the listener trusts; reloaded when partners change.
    pub(crate) trust: TrustPolicy,
    /// Prometheus metrics (`/metrics`).
    pub(crate) metrics: Rc<metrics::Metrics>,
    /// The site's public facts (`Gateway.info`, `Admin.status`).
    pub(crate) facts: Rc<SiteFacts>,
    /// The one clock (the queue's too): nothing in the site reads the OS clock for logic.
    pub(crate) clock: SiteClock,
    /// Job secrets: sealed rows, deliveries, the jobs that hold them.
    pub(crate) secrets: Rc<secrets::SecretBook>,
}

/// What capabilities over runs reach (a runner's `Worker`, `Job` and sinks; submitters,
/// log readers and tickets): the queue, run data, the clock and metrics, and nothing else of
/// the site. Cheap to clone: every field is shared.
#[derive(Clone)]
pub(crate) struct RunHandles {
    pub(crate) queue: Rc<tinyci_queue::Queue>,
    pub(crate) sources: tinyci_assets::SourceStore,
    pub(crate) logs: Rc<tinyci_logs::Logs>,
    pub(crate) artifacts: Rc<tinyci_assets::ArtifactStore>,
    pub(crate) metrics: Rc<metrics::Metrics>,
    pub(crate) clock: SiteClock,
    /// Uploaded archives not yet submitted, per holder.
    pub(crate) uploads: Rc<tinyci_assets::UploadLedger>,
    /// Job secrets, which a `Job` hands its lease and a log sink masks.
    pub(crate) secrets: Rc<secrets::SecretBook>,
}

impl RunHandles {
    /// Now, in milliseconds since the Unix epoch, by the site's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        (self.clock.0)()
    }
}

/// The site's [`tinyci_core::Clock`], shown in `Debug` output by name only.
#[derive(Clone)]
pub(crate) struct SiteClock(pub(crate) tinyci_core::Clock);

impl std::fmt::Debug for SiteClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SiteClock")
    }
}

/// The GitHub state, or why there is none.
fn configured_github(
    github: &Option<Rc<tinyci_github::GitHubService>>,
) -> Result<&Rc<tinyci_github::GitHubService>, tinyci_github::GitHubError> {
    github.as_ref().ok_or_else(|| {
        tinyci_github::GitHubError::Refused(
            "this site has no [github] section in its site.toml".into(),
        )
    })
}

impl Services {
    /// The handles managing users and repositories holds.
    pub(crate) fn settings_handles(&self) -> settings::SettingsHandles {
        settings::SettingsHandles {
            users: self.users.clone(),
            access: self.access.clone(),
            grants: self.grants.clone(),
            github: self.github.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
        }
    }

    /// Now, in milliseconds since the Unix epoch, by the site's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        (self.clock.0)()
    }

    /// The handles capabilities over runs hold.
    pub(crate) fn run_handles(&self) -> RunHandles {
        RunHandles {
            queue: self.queue.clone(),
            sources: self.sources.clone(),
            logs: self.logs.clone(),
            artifacts: self.artifacts.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            uploads: self.uploads.clone(),
            secrets: self.secrets.clone(),
        }
    }

    /// Now, by the site's clock.
    pub(crate) fn now(&self) -> std::time::SystemTime {
        tinyci_core::system_time(self.now_ms())
    }
}

impl Site {
    /// Loads certificates and keys named by `config`, opens the store and the queue (runs
    /// whose leases died with the previous process are requeued here). Must run inside a
    /// `LocalSet`.
    pub async fn open(config: SiteConfig) -> Result<Self, SiteError> {
        Self::open_with_clock(config, tinyci_queue::system_clock()).await
    }

    /// As [`Site::open`], on `clock`: tests move time by hand to see leases lapse, grants
    /// expire, retention sweep and old deliveries be forgotten.
    pub async fn open_with_clock(
        config: SiteConfig,
        clock: tinyci_core::Clock,
    ) -> Result<Self, SiteError> {
        let trust_policy = TrustPolicy::load(&config)?;
        let ca_pem = trust_policy.own_ca_pem.clone();
        let ca_der = tinyci_pki::tls::parse_cert_pem(&ca_pem).map_err(|source| {
            IdentityError::Credentials {
                key: "tls.ca_cert",
                path: config.ca_cert.clone(),
                source,
            }
        })?;
        let (tls, partners) = trust_policy.server_config()?;
        if !partners.is_empty() {
            info!(
                partners = ?partners.iter().map(|p| p.site.to_string()).collect::<Vec<_>>(),
                "trusting pinned partner sites"
            );
        }
        let root = load_root_key(&config)?;
        let store = Store::open(&config.data_dir, tinyci_identity::store_options(&config))?;
        let grants = Rc::new(grants::GrantAuthority::load(
            config.name.clone(),
            root,
            store.clone(),
            clock.clone(),
        )?);
        let sources = tinyci_assets::SourceStore::open(&config.data_dir).map_err(|source| {
            SiteError::DataDir {
                path: config.data_dir.join("sources"),
                source,
            }
        })?;
        let (committer, writer) = tinyci_store::GroupCommitter::start(store.clone())?;
        let artifacts = tinyci_assets::ArtifactStore::open(
            &config.data_dir,
            config.artifact_max_bytes,
            store.clone(),
            committer.clone(),
        )
        .map_err(|source| SiteError::DataDir {
            path: config.data_dir.join("artifacts"),
            source,
        })?;
        let setup = tinyci_queue::QueueSetup {
            lease: config.lease_policy,
            dispatch: config.dispatch.clone(),
            site: config.name.to_string(),
        };
        let queue =
            tinyci_queue::Queue::open(store.clone(), committer.clone(), setup, clock.clone())
                .await
                .map_err(SiteError::Queue)?;
        queue.storage().set_quota(config.retention.max_repo_bytes);
        // The embedded runner died with the last process: its leases need not wait.
        let released = queue.release_runner(bundle::EMBEDDED_RUNNER).await;
        if released > 0 {
            info!(runs = released, "requeued runs the embedded runner held");
        }
        let users = tinyci_users::Users::new(store.clone(), committer.clone());
        let github = config
            .github
            .clone()
            .map(|settings| {
                load_github(
                    settings,
                    config.http.as_ref().and_then(|h| h.public_url.clone()),
                    tinyci_github::Handles {
                        store: store.clone(),
                        committer: committer.clone(),
                        queue: queue.clone(),
                        sources: sources.clone(),
                        users: users.clone(),
                        clock: clock.clone(),
                    },
                )
                .map(Rc::new)
            })
            .transpose()?;
        let login_ca = match (&github, &config.ca_key) {
            (Some(g), Some(ca_key)) if g.oauth_app.is_some() => {
                let key_pem = read_pem(ca_key, "tls.ca_key", true)?;
                let ca = tinyci_pki::SiteCa::from_pem(&ca_pem, &key_pem).map_err(|source| {
                    IdentityError::Credentials {
                        key: "tls.ca_key",
                        path: ca_key.clone(),
                        source,
                    }
                })?;
                Some(Rc::new(tinyci_github::oauth::LoginCa {
                    ca,
                    ca_pem: ca_pem.clone(),
                }))
            }
            _ => None,
        };
        let metrics = Rc::new(metrics::Metrics::new());
        queue.observe({
            let metrics = metrics.clone();
            move |run| {
                let status = run.state.status();
                if status.is_final() {
                    metrics.run_ended(status.as_str());
                }
            }
        });
        let logs = Rc::new(
            tinyci_logs::Logs::open(
                &config.data_dir,
                store.clone(),
                committer.clone(),
                config.log_max_run_bytes,
            )?
            .on_stored({
                let metrics = metrics.clone();
                move |bytes| metrics.log_stored(bytes)
            }),
        );
        let access = Rc::new(access::RepoAccess::new(
            users.clone(),
            github.clone(),
            SiteClock(clock.clone()),
        ));
        let secrets_key = load_secrets_key(&config.secrets_key, "secrets.key")?;
        let secret_book = Rc::new(secrets::SecretBook::new(store.clone(), secrets_key));
        queue.observe({
            let book = secret_book.clone();
            move |run| {
                let status = run.state.status();
                if status.is_final() || status == tinyci_core::RunStatus::Queued {
                    book.run_released(run.id());
                }
            }
        });
        let services = Rc::new(Services {
            secrets: secret_book,
            facts: Rc::new(SiteFacts {
                name: config.name.clone(),
                ca_fingerprint: tinyci_pki::Fingerprint::of_der(&ca_der),
                started: Instant::now(),
            }),
            metrics,
            trust: trust_policy,
            users,
            github,
            access,
            grants,
            sources,
            artifacts: Rc::new(artifacts),
            uploads: Rc::default(),
            queue,
            store: store.clone(),
            committer,
            logs,
            clock: SiteClock(clock),
        });
        Ok(Self {
            store,
            tls,
            ca_fingerprint: tinyci_pki::Fingerprint::of_der(&ca_der),
            services,
            sweeps: tokio::sync::watch::channel(0).0,
            writer,
            http: None,
            login_ca,
            config,
        })
    }

    /// Binds the HTTP listener of `[http] listen` (`listen` overrides it). Returns the bound
    /// address, or `None` when the site serves no HTTP.
    pub async fn bind_http(
        &mut self,
        listen: Option<SocketAddr>,
    ) -> Result<Option<SocketAddr>, SiteError> {
        let Some(addr) = listen.or(self.config.http.as_ref().map(|h| h.listen)) else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SiteError::HttpBind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| SiteError::HttpBind { addr, source })?;
        self.http = Some(listener);
        Ok(Some(bound))
    }

    /// The configuration the site runs with.
    pub fn config(&self) -> &SiteConfig {
        &self.config
    }

    /// The site CA's fingerprint.
    pub fn ca_fingerprint(&self) -> Fingerprint {
        self.ca_fingerprint
    }

    /// Counts finished retention sweeps (the first runs at start).
    pub fn retention_sweeps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sweeps.subscribe()
    }

    /// What log followers cost the site (live counters).
    pub fn follow_stats(&self) -> Rc<FollowStats> {
        self.services.logs.stats()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Binds the listener (`listen` overrides the config's address).
    pub async fn bind(&self, listen: Option<SocketAddr>) -> Result<Listener, SiteError> {
        let limits = NetLimits {
            max_connections: self.config.max_connections,
            max_connections_per_address: self.config.max_connections_per_address,
            max_outstanding_calls: self.config.max_outstanding_calls,
            ..NetLimits::default()
        };
        Ok(Listener::bind(
            listen.unwrap_or(self.config.listen),
            self.tls.clone(),
            limits,
        )
        .await?)
    }

    /// Serves until `shutdown` resolves. Must run inside a `LocalSet`.
    pub async fn run(
        mut self,
        listener: Listener,
        shutdown: impl Future<Output = ()>,
    ) -> Arc<ServerStats> {
        let stats = listener.stats();
        self.services
            .trust
            .switch
            .replace(Some(listener.tls_switch()));
        // One stop signal for every background task, and one tracker to wait for them all:
        // they hold the store open through `services`.
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        // Lease expiry runs as long as the site serves.
        tasks.spawn_local(
            stop.clone()
                .run_until_cancelled_owned(self.services.queue.clone().run_expiry()),
        );
        // Single-use grants whose job ended while the site was down are retired now; the
        // queue tells of every later end.
        let grants = self.services.grants.clone();
        let queue = self.services.queue.clone();
        queue.observe({
            let grants = grants.clone();
            move |run| {
                let holding = matches!(
                    run.state.status(),
                    tinyci_core::RunStatus::Leased | tinyci_core::RunStatus::Running
                );
                if !holding && grants.spent_run(run.id()) {
                    let grants = grants.clone();
                    let id = run.id();
                    tokio::task::spawn_local(async move { grants.retire_spent(id).await });
                }
            }
        });
        tasks.spawn_local(async move {
            for run in grants.spent_runs() {
                let holding = queue.run(run).ok().flatten().is_some_and(|r| {
                    matches!(
                        r.state.status(),
                        tinyci_core::RunStatus::Leased | tinyci_core::RunStatus::Running
                    )
                });
                if !holding {
                    grants.retire_spent(run).await;
                }
            }
        });
        tasks.spawn_local(retention::run_sweeper(
            self.services.run_handles(),
            self.services.github.clone(),
            self.config.retention,
            self.sweeps.clone(),
            stop.clone(),
        ));
        let facts = self.services.facts.clone();
        let addr = listener.local_addr().ok();
        info!(site = %facts.name, ?addr, "serving");
        // Announced for as long as the site serves; dropped (a goodbye) when it stops.
        let _announcer = match (self.config.discovery.mdns, addr) {
            (true, Some(addr)) => match tinyci_net::discovery::Announcer::start(
                self.config.name.as_str(),
                addr.port(),
                &self.ca_fingerprint.to_string(),
            ) {
                Ok(announcer) => {
                    info!(port = addr.port(), "announcing this site over mDNS");
                    Some(announcer)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot announce over mDNS; static peers still work");
                    None
                }
            },
            _ => None,
        };
        if let Some(github) = &self.services.github {
            tasks.spawn_local(
                stop.clone()
                    .run_until_cancelled_owned(github.clone().run_processor()),
            );
        }
        if let Some(listener) = self.http.take() {
            let site_web = web::SiteWeb::new(
                self.services.clone(),
                addr.map(|a| a.to_string()).unwrap_or_default(),
                self.login_ca.clone(),
                self.config.http.as_ref(),
            );
            let settings = site_web.settings.clone();
            tasks.spawn_local(tinyci_web::serve(
                listener,
                Rc::new(site_web),
                settings,
                stop.clone().cancelled_owned(),
            ));
        }
        let services = self.services.clone();
        tinyci_net::serve(
            listener,
            move |peer| {
                rpc::observed::<gateway_capnp::Client, _>(
                    &services.metrics,
                    gateway::Gateway::new(facts.clone(), services.clone(), peer.clone()),
                )
                .client
            },
            shutdown,
        )
        .await;
        stop.cancel();
        tasks.close();
        // Wait until all are really gone: they hold the store open through `services`. The
        // inbox processor first: until it has stopped it may still start a status reporter.
        tasks.wait().await;
        if let Some(github) = &self.services.github {
            github.stop_tasks().await;
        }
        info!(site = %self.config.name, "stopped serving; closing store");
        let Self {
            config,
            store,
            services,
            mut writer,
            ..
        } = self;
        drop((store, services));
        // The writer exits once the last committer is dropped; tasks that still hold one
        // (aborted, not yet dropped) go as this thread yields. Until then the store stays
        // open and locked, so a restart in this process must wait for it. Never block here:
        // a task that outlives this wait is dropped only with the LocalSet, after we return.
        let stopped =
            tokio::time::timeout(std::time::Duration::from_secs(10), writer.stopped()).await;
        if stopped.is_ok() {
            writer.join();
        } else {
            tracing::warn!(site = %config.name, "the store writer is still held open; it closes when the process's tasks end");
        }
        stats
    }
}

/// Checks `config` and every file it names as `site up` would read them: the identity
/// ([`tinyci_identity::check`]), the secrets keys and the GitHub secret files (readable, not
/// empty), without
/// opening the store, binding anything or creating any file.
pub fn check(config: &SiteConfig) -> Result<CheckReport, SiteError> {
    let mut report = tinyci_identity::check(config)?;
    let checked = &mut report.checked;
    check_secrets_key(&config.secrets_key, "secrets.key", checked)?;
    if let Some(github) = &config.github {
        for (key, file) in [
            ("github.token_file", &github.token_file),
            ("github.client_secret_file", &github.client_secret_file),
        ] {
            if let Some(file) = file {
                let text = read_pem(file, key, true)?;
                if text.trim().is_empty() {
                    return Err(SiteError::Config(ConfigError::Value {
                        path: file.clone(),
                        key,
                        reason: "the file is empty".into(),
                    }));
                }
                checked.push(key.to_owned());
            }
        }
        check_secrets_key(&github.secrets_key, "github.secrets_key", checked)?;
    }
    Ok(report)
}

/// Loads the secrets key at `path` (created on first use); errors name the config `key`.
fn load_secrets_key(
    path: &std::path::Path,
    key: &'static str,
) -> Result<tinyci_pki::SecretsKey, SiteError> {
    tinyci_pki::SecretsKey::load_or_create(path).map_err(|e| {
        SiteError::Config(ConfigError::Value {
            path: path.to_owned(),
            key,
            reason: e.to_string(),
        })
    })
}

/// For `check`: a secrets key file that exists must load; a missing one is made at the
/// first start, which `check` leaves to it.
fn check_secrets_key(
    path: &std::path::Path,
    key: &'static str,
    checked: &mut Vec<String>,
) -> Result<(), SiteError> {
    if path.exists() {
        load_secrets_key(path, key)?;
        checked.push(key.into());
    } else {
        checked.push(format!("{key} (created at first start)"));
    }
    Ok(())
}

/// The GitHub side of `[github]`: the secrets key (created on first use), the site token
/// and the OAuth app's secret read from their files (mode 0600, not empty).
fn load_github(
    settings: tinyci_github::GitHubSettings,
    public_url: Option<String>,
    handles: tinyci_github::Handles,
) -> Result<tinyci_github::GitHubService, SiteError> {
    let invalid = |path: &std::path::Path, key: &'static str, reason: String| {
        SiteError::Config(ConfigError::Value {
            path: path.to_owned(),
            key,
            reason,
        })
    };
    let secrets = load_secrets_key(&settings.secrets_key, "github.secrets_key")?;
    let credentials = tinyci_github::Credentials {
        site_token: settings
            .token_file
            .as_deref()
            .map(|p| read_secret(p, "github.token_file"))
            .transpose()?,
        client_secret: match (&settings.client_id, &settings.client_secret_file) {
            (Some(_), Some(file)) => Some(read_secret(file, "github.client_secret_file")?),
            _ => None,
        },
    };
    let token_file = settings.token_file.clone().unwrap_or_default();
    tinyci_github::GitHubService::new(settings, public_url, secrets, credentials, handles)
        .map_err(|e| invalid(&token_file, "github.api_url", e.to_string()))
}

/// Reads a secret file (mode 0600), trimmed; errors name the config key.
fn read_secret(path: &std::path::Path, key: &'static str) -> Result<String, SiteError> {
    let text = read_pem(path, key, true)?;
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Err(SiteError::Config(ConfigError::Value {
            path: path.to_owned(),
            key,
            reason: "the file is empty".into(),
        }));
    }
    Ok(text)
}
