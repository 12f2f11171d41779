//! A real in-process site for the rpc, logs and grants figures, and the plumbing they share:
//! capnp threads, certificates and tokens of that site, and the tracing subscriber.
//!
//! The site is the product as `tinyci site up` runs it: `init_site` on a temp dir, `Site::open`
//! (real LMDB on disk, fsynced), `Site::bind` on 127.0.0.1:0 and `Site::run` on its own OS
//! thread (a current-thread runtime inside a `LocalSet`, as the CLI does). Clients run on
//! other OS threads and dial it with certificates its CA issued, through `tinyci_net::dial`.
//! Baselines get their TLS configs from the same CA through the same `tinyci-pki` functions,
//! so both sides of every comparison run the same cipher suite, certificates and verifiers.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow};
use tinyci_grant::{Grant, GrantSpec, RootKey};
use tinyci_net::{ClientConfig, ClientConnection, NetLimits, ServerConfig};
use tinyci_pki::{Credentials, Role, SiteCa, SiteName, TrustAnchors};
use tinyci_schema::gateway;
use tinyci_site::init::{InitOptions, init_site};
use tinyci_site::{Site, SiteConfig};
use tokio::sync::oneshot;

/// The site's name in every fixture.
pub(crate) const SITE: &str = "alpha";

/// Runs `f` on a fresh OS thread with a current-thread runtime inside a `LocalSet` (capnp is
/// `!Send`), and resolves with what it returned. The calling runtime is not blocked.
pub(crate) async fn on_thread<F, Fut, T>(name: &str, f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(block_on_local(f));
        })
        .with_context(|| format!("spawning thread {name}"))?;
    rx.await
        .map_err(|_| anyhow!("thread {name} panicked"))?
        .with_context(|| format!("on thread {name}"))
}

/// Runs a future to completion on a current-thread runtime inside a `LocalSet`, here.
pub(crate) fn block_on_local<F, Fut, T>(f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a current-thread runtime")?;
    tokio::task::LocalSet::new().block_on(&runtime, f())
}

/// Installs the tracing subscriber `tinyci site up` installs by default (`fmt`, compact,
/// `EnvFilter` at `info` unless `RUST_LOG` says otherwise), once per process. Its lines go to
/// a file rather than the terminal, as a site's stderr would go to a journal: the cost of
/// formatting and writing each line stays in the figures, the noise leaves the screen.
pub(crate) fn install_site_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::EnvFilter;
        let path = std::env::temp_dir().join(format!("tinyci-bench-{}.log", std::process::id()));
        let Ok(file) = std::fs::File::create(&path) else {
            eprintln!("cannot create {}; site logs go to stderr", path.display());
            return;
        };
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let installed = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .compact()
            .try_init();
        if installed.is_ok() {
            println!(
                "(site logs, at the level `tinyci site up` uses: {})",
                path.display()
            );
        }
    });
}

/// A running site in a temp dir. Dropping it stops the site and waits for it.
pub(crate) struct SiteFixture {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    ca: SiteCa,
    root: RootKey,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for SiteFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteFixture")
            .field("dir", &self.dir.path())
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SiteFixture {
    /// Initialises a site as `tinyci site init` does, appends `extra` to its `site.toml`, and
    /// serves it on 127.0.0.1:0 from its own thread.
    pub(crate) async fn start(extra_toml: &str) -> anyhow::Result<Self> {
        install_site_tracing();
        let dir = tempfile::Builder::new()
            .prefix("tinyci-bench-site")
            .tempdir()
            .context("creating the site's temp dir")?;
        init_site(&InitOptions {
            dir: dir.path().to_owned(),
            name: SiteName::new(SITE).context("site name")?,
            force: false,
            hosts: Vec::new(),
        })
        .context("initialising the site")?;
        let toml = dir.path().join("site.toml");
        if !extra_toml.is_empty() {
            let text = std::fs::read_to_string(&toml).context("reading site.toml")?;
            std::fs::write(&toml, format!("{text}\n{extra_toml}\n"))
                .context("writing site.toml")?;
        }
        let config = SiteConfig::load(&toml).context("loading site.toml")?;
        let read = |p: &Path| std::fs::read_to_string(p).with_context(|| p.display().to_string());
        let ca = SiteCa::from_pem(
            &read(&dir.path().join("certs/ca.crt"))?,
            &read(&dir.path().join("certs/ca.key"))?,
        )
        .context("loading the site CA")?;
        let root = tinyci_site::load_root_key(&config).context("loading the root key")?;

        let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<SocketAddr>>();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("site".into())
            .spawn(move || {
                let served = block_on_local(|| async move {
                    let site = Site::open(config).await.context("opening the site")?;
                    let listener = site
                        .bind(Some(SocketAddr::from(([127, 0, 0, 1], 0))))
                        .await
                        .context("binding the site")?;
                    let addr = listener.local_addr().context("listener address")?;
                    let _ = ready_tx.send(Ok(addr));
                    site.run(listener, async move {
                        let _ = stopped.await;
                    })
                    .await;
                    anyhow::Ok(())
                });
                if let Err(e) = served {
                    eprintln!("site thread: {e:#}");
                }
            })
            .context("spawning the site thread")?;
        let addr = ready_rx
            .await
            .map_err(|_| anyhow!("the site thread ended before serving"))??;
        Ok(Self {
            dir,
            addr,
            ca,
            root,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The site's directory (its data lives under it).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client TLS config for a fresh certificate of `role`/`name` at this site, pinned to
    /// its CA: what `tinyci` and runners build.
    pub(crate) fn client_tls(&self, role: Role, name: &str) -> anyhow::Result<Arc<ClientConfig>> {
        let leaf = self
            .ca
            .issue_member_cert(role, name)
            .context("issuing a member certificate")?;
        let creds =
            Credentials::from_pem(&leaf.cert_pem, &leaf.key_pem).context("member credentials")?;
        Ok(tinyci_pki::tls::client_config(
            &creds,
            self.ca.cert_pem(),
            SiteName::new(SITE).context("site name")?,
        )?)
    }

    /// A server TLS config exactly like the site's own: a fresh site certificate from the same
    /// CA, client certificates required and checked by the same verifier. For baselines.
    pub(crate) fn server_tls(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let leaf = self
            .ca
            .issue_site_cert(&[])
            .context("issuing a site certificate")?;
        let creds =
            Credentials::from_pem(&leaf.cert_pem, &leaf.key_pem).context("site credentials")?;
        let trust = TrustAnchors::new(SiteName::new(SITE)?, self.ca.cert_pem())?;
        Ok(tinyci_pki::tls::server_config(&creds, &trust)?)
    }

    /// Mints a token with the site's root key (what `tinyci grant` does), valid for a day.
    pub(crate) fn mint(
        &self,
        holder: &str,
        rights: &[&str],
        repos: &[&str],
        queues: &[&str],
    ) -> anyhow::Result<(String, Grant)> {
        let spec = GrantSpec {
            site: SITE.into(),
            holder: holder
                .parse()
                .map_err(|e| anyhow!("holder {holder}: {e}"))?,
            rights: rights
                .iter()
                .map(|r| r.parse().map_err(|e| anyhow!("right {r}: {e}")))
                .collect::<anyhow::Result<_>>()?,
            repos: repos.iter().map(|s| (*s).to_owned()).collect(),
            queues: queues.iter().map(|s| (*s).to_owned()).collect(),
            expires_at: Some(SystemTime::now() + Duration::from_secs(24 * 3600)),
            single_use: false,
        };
        Ok(tinyci_grant::mint(&self.root, &spec)?)
    }

    /// The site's Biscuit root key.
    pub(crate) fn root_key(&self) -> &RootKey {
        &self.root
    }

    /// Stops the site and waits until its store is closed.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .context("joining the site thread")?
                .map_err(|_| anyhow!("the site thread panicked"))?;
        }
        Ok(())
    }
}

impl Drop for SiteFixture {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Dials the site at `addr` with `tls` as `tinyci` does and confirms the connection with one
/// `Gateway.info`. Must run inside a `LocalSet`.
pub(crate) async fn connect(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
) -> anyhow::Result<(gateway::Client, ClientConnection)> {
    let (gateway, connection): (gateway::Client, _) = tinyci_net::dial(
        &addr.to_string(),
        tls,
        &SiteName::new(SITE)?,
        &NetLimits::default(),
    )
    .await
    .context("dialing the site")?;
    gateway
        .info_request()
        .send()
        .promise
        .await
        .context("Gateway.info")?;
    Ok((gateway, connection))
}

/// Redeems `token` and waits for the session (so a refusal shows here, not on first use).
pub(crate) async fn redeem(
    gateway: &gateway::Client,
    token: &str,
) -> anyhow::Result<tinyci_schema::session::Client> {
    let mut request = gateway.redeem_request();
    request.get().set_token(token);
    let response = request.send().promise.await.context("Gateway.redeem")?;
    Ok(response.get()?.get_session()?)
}

/// Median of a few rounds' figures.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A source archive with one task of one run (`true`), for benchmarks that submit work.
pub(crate) fn one_run_source() -> anyhow::Result<Vec<u8>> {
    source_with_task("mountpoint: /src\nruns:\n  build:\n    command: [\"true\"]\n")
}

/// A source archive of an empty `tinyci.yml` and this `task.yml`.
pub(crate) fn source_with_task(task_yml: &str) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    let mut builder = tar::Builder::new(Vec::new());
    for (path, text) in [("tinyci.yml", ""), ("task.yml", task_yml)] {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, text.as_bytes())
            .context("building the source archive")?;
    }
    builder.into_inner().context("building the source archive")
}

/// Uploads `source` through `submitter` in 64 KiB pieces, as `tinyci submit` does; returns
/// its SHA-256, which names it in a submission.
pub(crate) async fn upload(
    submitter: &tinyci_schema::submitter::Client,
    source: &[u8],
) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    use sha2::Digest as _;
    // The sink comes from the answer, not a pipeline, so the chunks and `finish` arrive in
    // order (see `tinyci submit`).
    let upload = submitter
        .upload_request()
        .send()
        .promise
        .await
        .context("starting the upload")?;
    let sink = upload
        .get()
        .and_then(|r| r.get_sink())
        .context("starting the upload")?;
    for piece in source.chunks(64 * 1024) {
        let mut write = sink.write_request();
        write.get().set_chunk(piece);
        write.send().await.context("uploading the source")?;
    }
    let sha = sha2::Sha256::digest(source).to_vec();
    let mut finish = sink.finish_request();
    finish.get().set_sha256(&sha);
    finish.send().promise.await.context("ByteSink.finish")?;
    Ok(sha)
}

/// Uploads `source` through `submitter` and submits it as `refs/heads/main`; returns the id
/// (`r-N`) of its one run, as `tinyci submit` would see it acknowledged.
pub(crate) async fn submit_source(
    submitter: &tinyci_schema::submitter::Client,
    source: &[u8],
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let sha = upload(submitter, source).await?;
    let mut submit = submitter.submit_request();
    {
        let mut r = submit.get().init_request();
        r.set_ref("refs/heads/main");
        r.set_sha("0123456789abcdef0123456789abcdef01234567");
        r.set_all(true);
        r.set_source_sha256(&sha);
    }
    let ticket = submit.send().pipeline.get_ticket();
    let runs = ticket
        .runs_request()
        .send()
        .promise
        .await
        .context("Ticket.runs")?;
    let runs = runs.get()?.get_runs()?;
    if runs.len() != 1 {
        anyhow::bail!("expected one run, got {}", runs.len());
    }
    Ok(runs.get(0).get_id()?.to_string()?)
}

/// Dials a `tinyci site up` process at `addr` with the site's admin certificate (`tls`) and
/// redeems its admin token: the site's `Admin` capability, as `tinyci admin` gets it. Keep the
/// connection for as long as the capability is used.
pub(crate) async fn admin_session(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    token: &str,
) -> anyhow::Result<(tinyci_schema::admin::Client, tinyci_net::ClientConnection)> {
    let (gateway, connection) = tinyci_net::dial::<tinyci_schema::gateway::Client>(
        &addr.to_string(),
        tls,
        &tinyci_pki::SiteName::new(crate::site_process::SITE)?,
        &tinyci_net::NetLimits::default(),
    )
    .await
    .context("dialing the site")?;
    let session = redeem(&gateway, token).await?;
    let admin = session.admin_request().send().pipeline.get_admin();
    Ok((admin, connection))
}
