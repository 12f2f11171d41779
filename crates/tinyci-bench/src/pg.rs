//! The PostgreSQL the dispatch baseline runs against: a server the caller names
//! (`--postgres-url`), or a throwaway cluster this harness initializes in a temp dir and
//! starts on a free loopback port (`--install-postgres`, installing Debian's `postgresql`
//! package first if its server binaries are missing), stopped again when dropped.
//!
//! Fairness: the cluster keeps PostgreSQL's durability defaults (`fsync = on`,
//! `synchronous_commit = on`, the platform's `wal_sync_method`) and lives on the same
//! filesystem as the LMDB store it is compared with (both under the system temp dir), so both
//! pay the same disk's flush. The settings actually in force are read back from the server
//! and printed, not assumed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Where Debian puts each installed server version's binaries.
const DEBIAN_LIB: &str = "/usr/lib/postgresql";

/// The OS user the server runs as: PostgreSQL refuses to run as root.
const PG_USER: &str = "postgres";

/// A server to connect to, and (when we started it) the cluster to stop afterwards.
#[derive(Debug)]
pub(crate) struct Postgres {
    /// `host=… port=… user=… dbname=…`, as tokio-postgres takes it.
    pub(crate) url: String,
    /// What the harness did to get it, for the report.
    pub(crate) origin: String,
    cluster: Option<Cluster>,
}

/// A cluster this harness started: its temp dir (removed on drop) and how to stop it.
#[derive(Debug)]
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    /// Kept for its Drop: removes the cluster's files after the server stopped.
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Fast shutdown: the data is thrown away, so there is nothing to wait for.
        let stopped = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match stopped {
            Ok(status) if status.success() => {
                println!("  stopped the throwaway PostgreSQL cluster")
            }
            Ok(status) => eprintln!("  pg_ctl stop exited with {status}"),
            Err(e) => eprintln!("  could not run pg_ctl stop: {e}"),
        }
    }
}

impl Postgres {
    /// A server the caller runs; nothing is started or stopped.
    pub(crate) fn existing(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            origin: "an existing server (--postgres-url)".to_owned(),
            cluster: None,
        }
    }

    /// Installs PostgreSQL from Debian's packages if its server is missing, then initializes
    /// and starts a throwaway cluster. Says what it does as it does it.
    pub(crate) fn start_throwaway() -> Result<Self> {
        let bin = match server_bin()? {
            Some(bin) => {
                println!(
                    "  PostgreSQL server already installed from Debian packages ({}); not running apt-get",
                    bin.display()
                );
                bin
            }
            None => {
                install()?;
                server_bin()?.context(
                    "apt-get installed postgresql, but no server binaries appeared under /usr/lib/postgresql",
                )?
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("tinyci-bench-pg-")
            .tempdir()
            .context("failed to make a temp dir for the PostgreSQL cluster")?;
        let (uid, gid) = postgres_ids()?;
        // The server runs as `postgres`, which must own its data and socket directory.
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
            .with_context(|| format!("failed to give {} to {PG_USER}", dir.path().display()))?;
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        println!(
            "  initdb a throwaway cluster in {} (as {PG_USER})",
            data.display()
        );
        let init = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", PG_USER, "-E", "UTF8"])
            .output()
            .context("failed to run initdb")?;
        if !init.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&init.stderr).trim()
            );
        }
        let port = free_port()?;
        // Durability settings are left at their defaults (fsync, synchronous_commit on);
        // only where to listen and how many may connect are set: 64 workers overlapping their
        // steps on two connections each need 129 with the harness's own, over the default 100.
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c max_connections=160 -k {}",
            dir.path().display()
        );
        println!("  starting it on 127.0.0.1:{port}");
        let start = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .output()
            .context("failed to run pg_ctl start")?;
        // From here on the cluster is stopped on every path, including errors.
        let cluster = Cluster {
            bin: bin.clone(),
            data,
            _dir: dir,
        };
        if !start.status.success() {
            let server_log = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "pg_ctl start failed: {}\n{server_log}",
                String::from_utf8_lossy(&start.stderr).trim()
            );
        }
        Ok(Self {
            url: format!("host=127.0.0.1 port={port} user={PG_USER} dbname=postgres"),
            origin: format!(
                "a throwaway cluster started by this harness from {}",
                bin.display()
            ),
            cluster: Some(cluster),
        })
    }

    /// Whether this harness started the server (and will stop it).
    pub(crate) fn is_throwaway(&self) -> bool {
        self.cluster.is_some()
    }
}

/// `apt-get install -y postgresql`, as root without prompts; `apt-get update` first if the
/// package lists are too old to find it.
fn install() -> Result<()> {
    println!(
        "  installing PostgreSQL from Debian packages: DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql"
    );
    let apt = |args: &[&str]| -> Result<bool> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("failed to run apt-get {}", args.join(" ")))?;
        Ok(status.success())
    };
    if apt(&["install", "-y", "postgresql"])? {
        return Ok(());
    }
    println!("  apt-get install failed; running apt-get update and trying again");
    if !apt(&["update"])? || !apt(&["install", "-y", "postgresql"])? {
        bail!("apt-get install -y postgresql failed");
    }
    Ok(())
}

/// The newest installed server's `bin` directory, if any.
fn server_bin() -> Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(DEBIAN_LIB) else {
        return Ok(None);
    };
    let mut versions: Vec<(u32, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("failed to list {DEBIAN_LIB}"))?;
        let bin = entry.path().join("bin");
        let version = entry.file_name().to_string_lossy().parse::<u32>().ok();
        if let Some(version) = version
            && bin.join("postgres").exists()
            && bin.join("initdb").exists()
        {
            versions.push((version, bin));
        }
    }
    versions.sort();
    Ok(versions.pop().map(|(_, bin)| bin))
}

/// `program`, to be run as the `postgres` OS user.
fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", PG_USER, "--"]).arg(program);
    // Its cwd must be readable by postgres; ours (root's) may not be.
    command.current_dir("/");
    command
}

/// The uid and gid of the `postgres` user (created by the Debian package).
fn postgres_ids() -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("failed to read /etc/passwd")?;
    let line = passwd
        .lines()
        .find(|l| l.split(':').next() == Some(PG_USER))
        .with_context(|| format!("no {PG_USER} user; is the postgresql package installed?"))?;
    let fields: Vec<&str> = line.split(':').collect();
    let uid = fields
        .get(2)
        .and_then(|f| f.parse().ok())
        .context("malformed /etc/passwd entry for postgres")?;
    let gid = fields
        .get(3)
        .and_then(|f| f.parse().ok())
        .context("malformed /etc/passwd entry for postgres")?;
    Ok((uid, gid))
}

/// A loopback port nobody listens on now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("failed to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Connects, spawning the connection's driver on the current runtime.
pub(crate) async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let mut last = None;
    // A just-started server may still refuse for a moment.
    for _ in 0..50 {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        eprintln!("  postgres connection ended: {e}");
                    }
                });
                return Ok(client);
            }
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(anyhow::anyhow!(
        "failed to connect to PostgreSQL at {url}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// The server's version and the settings that decide what a commit costs.
pub(crate) async fn describe(client: &tokio_postgres::Client) -> Result<String> {
    let mut parts = Vec::new();
    for setting in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "wal_sync_method",
        "full_page_writes",
        "commit_delay",
        "shared_buffers",
        "max_connections",
    ] {
        let row = client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .with_context(|| format!("SHOW {setting}"))?;
        let value: String = row.try_get(0)?;
        parts.push(format!("{setting}={value}"));
    }
    Ok(parts.join(", "))
}
