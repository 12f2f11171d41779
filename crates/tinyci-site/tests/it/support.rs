//! Starting and stopping a site, connecting as anyone, minting tokens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tinyci_grant::{GrantSpec, RootKey};
use tinyci_net::{ClientConnection, NetLimits};
use tinyci_pki::{Credentials, Role, SiteCa, SiteName};
use tinyci_schema::gateway;
use tinyci_site::init::{InitOptions, init_site};
use tinyci_site::{Site, SiteConfig};
use tokio::sync::oneshot;

/// Runs `f` on a current-thread runtime inside a LocalSet.
pub(crate) fn local<F: std::future::Future>(f: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, f)
}

/// A site named `alpha` in a temp dir.
pub(crate) struct TestSite {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: SiteConfig,
    pub(crate) ca: SiteCa,
    pub(crate) root: RootKey,
    /// The site's clock, when the test moves time by hand.
    clock: Option<tinyci_core::Clock>,
    running: Option<Running>,
}

/// A clock a test moves by hand, starting at the real now.
#[derive(Clone)]
pub(crate) struct ManualClock(std::rc::Rc<std::cell::Cell<u64>>);

impl ManualClock {
    pub(crate) fn new() -> Self {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        Self(std::rc::Rc::new(std::cell::Cell::new(
            u64::try_from(now).unwrap(),
        )))
    }

    pub(crate) fn clock(&self) -> tinyci_core::Clock {
        let now = self.0.clone();
        std::rc::Rc::new(move || now.get())
    }

    pub(crate) fn advance(&self, by: std::time::Duration) {
        self.0
            .set(self.0.get() + u64::try_from(by.as_millis()).unwrap());
    }
}

struct Running {
    addr: SocketAddr,
    /// The capnp listener's counters.
    stats: std::sync::Arc<tinyci_net::ServerStats>,
    /// The HTTP listener's address, when `[http]` is configured.
    http: Option<SocketAddr>,
    follow_stats: std::rc::Rc<tinyci_site::FollowStats>,
    sweeps: tokio::sync::watch::Receiver<u64>,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl TestSite {
    pub(crate) async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A site whose clock only `clock` moves.
    pub(crate) async fn start_on(clock: &ManualClock) -> Self {
        Self::start_with(Some(clock.clock())).await
    }

    async fn start_with(clock: Option<tinyci_core::Clock>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        init_site(&InitOptions {
            dir: dir.path().to_owned(),
            name: SiteName::new("alpha").unwrap(),
            force: false,
            hosts: Vec::new(),
        })
        .unwrap();
        let config = SiteConfig::load(&dir.path().join("site.toml")).unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let ca = SiteCa::from_pem(
            &read(&dir.path().join("certs/ca.crt")),
            &read(&dir.path().join("certs/ca.key")),
        )
        .unwrap();
        let root = tinyci_site::load_root_key(&config).unwrap();
        let mut site = Self {
            dir,
            config,
            ca,
            root,
            clock,
            running: None,
        };
        site.up().await;
        site
    }

    /// Opens the store and serves (again, after [`TestSite::down`]).
    pub(crate) async fn up(&mut self) {
        self.up_at("127.0.0.1:0".parse().unwrap()).await;
    }

    /// Opens the store and serves on `addr` (a restart on the same port: runners come back).
    pub(crate) async fn up_at(&mut self, addr: SocketAddr) {
        let site = match &self.clock {
            Some(clock) => Site::open_with_clock(self.config.clone(), clock.clone()).await,
            None => Site::open(self.config.clone()).await,
        }
        .unwrap();
        let mut site = site;
        let http = if site.config().http.is_some() {
            site.bind_http(Some("127.0.0.1:0".parse().unwrap()))
                .await
                .unwrap()
        } else {
            None
        };
        let listener = site.bind(Some(addr)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = listener.stats();
        let follow_stats = site.follow_stats();
        let sweeps = site.retention_sweeps();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::task::spawn_local(async move {
            site.run(listener, async move {
                let _ = stopped.await;
            })
            .await;
        });
        self.running = Some(Running {
            addr,
            stats,
            http,
            follow_stats,
            sweeps,
            stop,
            done,
        });
    }

    /// Stops serving and closes the store, as a site shutdown does.
    pub(crate) async fn down(&mut self) {
        let running = self.running.take().unwrap();
        running.stop.send(()).unwrap();
        running.done.await.unwrap();
    }

    /// The running site's capnp listener counters.
    pub(crate) fn server_stats(&self) -> std::sync::Arc<tinyci_net::ServerStats> {
        self.running.as_ref().unwrap().stats.clone()
    }

    /// Sets `line` (`key = value`) in site.toml's `[site]` table, for the next start.
    pub(crate) fn set_site_option(&mut self, line: &str) {
        let toml = self.path("site.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        std::fs::write(
            &toml,
            text.replacen("[site]\n", &format!("[site]\n{line}\n"), 1),
        )
        .unwrap();
        self.config = tinyci_site::SiteConfig::load(&toml).unwrap();
    }

    /// The running site's follower counters.
    pub(crate) fn follow_stats(&self) -> std::rc::Rc<tinyci_site::FollowStats> {
        self.running.as_ref().unwrap().follow_stats.clone()
    }

    /// Waits until the running site finished `n` retention sweeps.
    pub(crate) async fn sweeps_done(&mut self, n: u64) {
        let sweeps = &mut self.running.as_mut().unwrap().sweeps;
        sweeps.wait_for(|done| *done >= n).await.unwrap();
    }

    /// Restarts the site with its site.toml as `init` wrote it plus `extra`.
    pub(crate) async fn restart_with(&mut self, extra: &str) {
        let toml = self.path("site.toml");
        let original = self.path("site.toml.orig");
        if !original.exists() {
            std::fs::copy(&toml, &original).unwrap();
        }
        let text = std::fs::read_to_string(&original).unwrap();
        std::fs::write(&toml, format!("{text}\n{extra}\n")).unwrap();
        self.down().await;
        self.config = tinyci_site::SiteConfig::load(&toml).unwrap();
        self.up().await;
    }

    /// The HTTP listener's address (the site must have `[http]`).
    pub(crate) fn http_addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().http.unwrap()
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().addr
    }

    /// Connects with a fresh certificate for `role`/`name` of this site (`Role::Site` for the
    /// site's own identity).
    pub(crate) async fn connect(
        &self,
        role: Role,
        name: &str,
    ) -> (gateway::Client, ClientConnection) {
        let leaf = if role == Role::Site {
            self.ca.issue_site_cert(&[]).unwrap()
        } else {
            self.ca.issue_member_cert(role, name).unwrap()
        };
        let creds = Credentials::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap();
        let tls = tinyci_pki::tls::client_config(
            &creds,
            self.ca.cert_pem(),
            SiteName::new("alpha").unwrap(),
        )
        .unwrap();
        tinyci_net::dial(
            &self.addr().to_string(),
            tls,
            &SiteName::new("alpha").unwrap(),
            &NetLimits::default(),
        )
        .await
        .unwrap()
    }

    /// Mints a token with this site's root key.
    pub(crate) fn mint(
        &self,
        holder: &str,
        rights: &[&str],
        repos: &[&str],
        queues: &[&str],
        expires_at: Option<SystemTime>,
    ) -> String {
        let spec = GrantSpec {
            site: "alpha".into(),
            holder: holder.parse().unwrap(),
            rights: rights.iter().map(|r| r.parse().unwrap()).collect(),
            repos: repos.iter().map(|s| s.to_string()).collect(),
            queues: queues.iter().map(|s| s.to_string()).collect(),
            expires_at,
            single_use: false,
        };
        tinyci_grant::mint(&self.root, &spec).unwrap().0
    }

    pub(crate) fn admin_token(&self) -> String {
        std::fs::read_to_string(self.path("certs/admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

/// The text of an RPC error, as a client sees it.
pub(crate) fn error_text(e: capnp::Error) -> String {
    e.to_string()
}

/// Redeems `token` on `gateway` and returns the session (pipelined: not awaited).
pub(crate) fn redeem(gateway: &gateway::Client, token: &str) -> tinyci_schema::session::Client {
    let mut request = gateway.redeem_request();
    request.get().set_token(token);
    request.send().pipeline.get_session()
}

/// Confirms a session works by asking what it may do; returns the summary or the error text.
pub(crate) async fn grant_summary(
    session: &tinyci_schema::session::Client,
) -> Result<String, String> {
    let response = session
        .grant_request()
        .send()
        .promise
        .await
        .map_err(error_text)?;
    let grant = response
        .get()
        .and_then(|r| r.get_grant())
        .map_err(error_text)?;
    Ok(grant.get_summary().unwrap().to_string().unwrap())
}
