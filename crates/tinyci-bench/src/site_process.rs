//! A real `tinyci site up` in a process of its own, so what it costs can be read from the
//! kernel (VmRSS in `/proc/<pid>/status`) rather than estimated from inside, plus what runners
//! and submitters need to reach it: runner bundles (certificate + holder-bound grant each,
//! exactly what `tinyci runner add` issues) and the site's admin credentials.
//!
//! Fairness: the site is the shipped binary with its defaults (`--no-local-runner` only, so
//! no runner of its own is counted), started fresh for each measurement.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tinyci_net::ClientConfig;
use tinyci_pki::Credentials;
use tinyci_site::SiteConfig;
use tinyci_site::bundle::{NewRunner, RunnerBundle};

/// The site's name (its identities are `tinyci://bench/...`).
pub(crate) const SITE: &str = "bench";

/// How long the site may take to print that it listens.
const PATIENCE: Duration = Duration::from_secs(60);

/// The `tinyci` binary: `$TINYCI_BIN`, else built now with cargo when run through cargo (so a
/// stale binary is never measured), else the one beside this program.
pub(crate) fn tinyci_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TINYCI_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let beside = std::env::current_exe()
        .context("cannot find this program's path")?
        .with_file_name("tinyci");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let release = beside
            .parent()
            .is_some_and(|dir| dir.file_name().is_some_and(|n| n == "release"));
        let mut build = Command::new(cargo);
        build
            .arg("build")
            .arg("--manifest-path")
            .arg(&manifest)
            .args(["-j2", "-q", "-p", "tinyci-cli"]);
        if release {
            build.arg("--release");
        }
        println!(
            "  building the tinyci binary (cargo build{} -p tinyci-cli)",
            if release { " --release" } else { "" }
        );
        let status = build.status().context("failed to run cargo build")?;
        if !status.success() {
            bail!("cargo build -p tinyci-cli failed");
        }
    }
    if !beside.exists() {
        bail!(
            "no tinyci binary at {}; build it with `cargo build --release -j2 -p tinyci-cli` or set TINYCI_BIN",
            beside.display()
        );
    }
    Ok(beside)
}

/// An initialized site directory (identity, config, store), removed on drop.
#[derive(Debug)]
pub(crate) struct SiteDir {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) bin: PathBuf,
}

impl SiteDir {
    /// `tinyci site init --name bench` in a fresh temp dir.
    pub(crate) fn init(bin: PathBuf) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tinyci-bench-site-")
            .tempdir()
            .context("failed to make a temp dir for the site")?;
        let out = Command::new(&bin)
            .current_dir(dir.path())
            .args(["site", "init", "--name", SITE])
            .env_remove("RUST_LOG")
            .output()
            .context("failed to run tinyci site init")?;
        if !out.status.success() {
            bail!(
                "tinyci site init failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Self { dir, bin })
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("site.toml")
    }

    pub(crate) fn config(&self) -> Result<SiteConfig> {
        SiteConfig::load(&self.config_path()).context("loading the bench site's site.toml")
    }

    /// Issues `count` runner bundles (`runner-0` …) for queue `queue`, as
    /// `tinyci runner add` does: a certificate and a holder-bound grant each, the grant
    /// recorded in the site's store. Runs with the site stopped or running.
    pub(crate) fn issue_runners(&self, count: usize, queue: &str) -> Result<Vec<RunnerBundle>> {
        let config = self.config()?;
        let store = tinyci_site::open_store_for_tool(&config).context("opening the site store")?;
        (0..count)
            .map(|i| {
                let runner = NewRunner {
                    name: format!("runner-{i}"),
                    queues: vec![queue.to_owned()],
                    addresses: Vec::new(),
                    expires_at: None,
                    single_use: false,
                };
                RunnerBundle::issue_recording_in(&config, &runner, &store)
                    .with_context(|| format!("issuing runner-{i}"))
            })
            .collect()
    }

    /// The site's `[admin]` certificate as a client TLS config pinned to the site's CA: what
    /// the `tinyci` CLI dials the site with.
    pub(crate) fn admin_client_tls(&self) -> Result<Arc<ClientConfig>> {
        let config = self.config()?;
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let credentials =
            Credentials::from_pem(&read(&config.admin_cert)?, &read(&config.admin_key)?)
                .context("the site's admin credentials")?;
        tinyci_pki::tls::client_config(&credentials, &read(&config.ca_cert)?, config.name)
            .context("building the admin client TLS config")
    }

    /// `tinyci site up` on a free loopback port, without its embedded runner.
    pub(crate) fn start(&self) -> Result<SiteProcess> {
        self.launch(false)
    }

    /// As [`SiteDir::start`], and its HTTP listener (`--http-listen`) on a free loopback port
    /// too, with the listener's built-in limits (`[http]` needs no other key for that).
    pub(crate) fn start_with_http(&self) -> Result<SiteProcess> {
        self.launch(true)
    }

    fn launch(&self, http: bool) -> Result<SiteProcess> {
        let log = std::fs::File::create(self.dir.path().join("site.log"))
            .context("failed to create the site log")?;
        let mut command = Command::new(&self.bin);
        command.current_dir(self.dir.path()).args([
            "site",
            "up",
            "--config",
            "site.toml",
            "--listen",
            "127.0.0.1:0",
            "--no-local-runner",
        ]);
        if http {
            command.args(["--http-listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .context("failed to start tinyci site up")?;
        let stdout = child.stdout.take().context("no stdout from the site")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut site = SiteProcess {
            child,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: None,
        };
        let addr = site.wait_for("listening on ")?;
        site.addr = addr
            .trim()
            .parse()
            .with_context(|| format!("the site printed an unparsable address {addr:?}"))?;
        if http {
            let http_addr = site.wait_for("http listening on ")?;
            site.http_addr = Some(http_addr.trim().parse().with_context(|| {
                format!("the site printed an unparsable HTTP address {http_addr:?}")
            })?);
        }
        Ok(site)
    }
}

/// A running site; killed on drop.
#[derive(Debug)]
pub(crate) struct SiteProcess {
    child: Child,
    lines: Receiver<String>,
    pub(crate) addr: SocketAddr,
    /// The HTTP listener's address, when started with [`SiteDir::start_with_http`].
    pub(crate) http_addr: Option<SocketAddr>,
}

impl SiteProcess {
    fn wait_for(&mut self, prefix: &str) -> Result<String> {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.to_owned());
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!("the site never printed {prefix:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!("the site exited ({status}) before printing {prefix:?}")
                }
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The site's resident memory now, in KiB (VmRSS).
    pub(crate) fn rss_kib(&self) -> Result<u64> {
        status_field(self.pid(), "VmRSS:")
    }

    /// The site's threads now.
    pub(crate) fn threads(&self) -> Result<u64> {
        status_field(self.pid(), "Threads:")
    }

    /// Waits until RSS stops growing (two readings `settle` apart agree within 1%), so
    /// connections still being set up are counted; returns the last reading.
    pub(crate) async fn settled_rss_kib(&self, settle: Duration) -> Result<u64> {
        let mut last = self.rss_kib()?;
        for _ in 0..20 {
            tokio::time::sleep(settle).await;
            let now = self.rss_kib()?;
            if now.abs_diff(last) * 100 <= last {
                return Ok(now);
            }
            last = now;
        }
        Ok(last)
    }
}

impl Drop for SiteProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB`-valued (or plain count) field of `/proc/<pid>/status`.
fn status_field(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in {path}"))?;
    line[field.len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("malformed {line:?} in {path}"))
}
