//! Confinement for the shell executor through bubblewrap (`bwrap`, the sandbox Flatpak uses):
//! Linux namespaces, no daemon, works as root and unprivileged.
//!
//! Two shapes, one tool:
//! - [`Confinement::Sandbox`]: the job sees its own source directory (read-write), the
//!   system's program and library directories and a handful of `/etc` files (read-only), a
//!   fresh `/proc`, `/dev` and `/tmp`, and nothing else: not the site's or the runner's
//!   directories, keys, tokens or bundle, not other runs, not the Docker socket. It has no
//!   capabilities, its own PID, IPC, UTS and user namespaces, and a network namespace with
//!   loopback only unless its queue lets it reach the network.
//! - [`Confinement::Contained`]: a job on the host (trusted `local` work) sees the whole
//!   filesystem as the runner does, but in its own PID namespace, so nothing it starts,
//!   daemonized or `setsid`, outlives the run.
//!
//! In both, when the command exits (or is killed) bubblewrap's init exits and the kernel
//! kills every process left in the namespace; `--die-with-parent` ends the sandbox if the
//! runner itself dies.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Directories of programs and libraries a sandboxed job may read (when present): on a
/// merged-`/usr` system the top-level ones are symlinks into `/usr`, and stay symlinks.
const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// The parts of `/etc` programs need to run, resolve names and check certificates. `/etc` as
/// a whole is not shown: operators keep credentials there (and some keep a site's), and
/// `/etc/ssl` itself holds private keys (`/etc/ssl/private`) a root runner's job could read.
const ETC_FILES: [&str; 21] = [
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/pki/tls/certs",
    "/etc/pki/ca-trust",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/localtime",
    "/etc/os-release",
    "/etc/debian_version",
    "/etc/protocols",
    "/etc/services",
    "/etc/mime.types",
];

/// Why bubblewrap cannot be used here.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No `bwrap` on `PATH`.
    #[error("bubblewrap (bwrap) is not installed (Debian: apt-get install bubblewrap)")]
    NotInstalled,
    /// `bwrap` is there but cannot create the namespaces (a container without user
    /// namespaces, a kernel that forbids them).
    #[error("bubblewrap cannot create a sandbox here: {0}")]
    Unusable(String),
}

/// How a job is confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confinement {
    /// On the host's filesystem, in its own PID namespace.
    Contained,
    /// In the sandbox.
    Sandbox,
}

/// A `bwrap` binary proven to work on this host, and what must stay hidden from jobs.
#[derive(Clone, Debug)]
pub struct Bubblewrap {
    bwrap: PathBuf,
    hidden: Vec<PathBuf>,
}

impl Bubblewrap {
    /// Finds `bwrap` on `PATH` and runs a sandboxed `true` with it, so a host where it cannot
    /// work is found out at start rather than at the first job.
    pub async fn detect() -> Result<Self, SandboxError> {
        Self::detect_for(Confinement::Sandbox).await
    }

    /// [`Bubblewrap::detect`], proving `confinement` works.
    pub async fn detect_for(confinement: Confinement) -> Result<Self, SandboxError> {
        let bwrap = find_on_path("bwrap").ok_or(SandboxError::NotInstalled)?;
        let found = Self {
            bwrap,
            hidden: Vec::new(),
        };
        let probe_dir = std::env::temp_dir();
        let argv = found.argv(
            confinement,
            (&probe_dir, None),
            &probe_dir,
            false,
            &Default::default(),
            &["true".into()],
        );
        probe(&found.bwrap, argv)
            .await
            .map_err(SandboxError::Unusable)?;
        Ok(found)
    }

    /// Also hides `paths` from sandboxed jobs even where they lie inside a directory the
    /// sandbox shows (the site's and the runner's keys, data and bundle, wherever an
    /// operator put them): a directory is covered with an empty one, a file with an empty
    /// file.
    #[must_use]
    pub fn hiding(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Self {
        self.hidden.extend(paths);
        self
    }

    /// The `bwrap` program.
    pub fn program(&self) -> &Path {
        &self.bwrap
    }

    /// `bwrap`'s arguments to run `command` with `source` (the run's tree, the only writable
    /// host directory) and `secrets` (its secret files, read-only) mounted at the same paths, starting in `workdir`, with exactly `env`.
    ///
    /// bwrap itself must be started with an empty environment and `/` as its directory: it
    /// runs on the host before any namespace exists, so a job's variables (`LD_PRELOAD` of a
    /// library in its own tree) must never reach its loader. They go in as `--setenv`, for
    /// the job alone.
    pub fn argv(
        &self,
        confinement: Confinement,
        (source, secrets): (&Path, Option<&Path>),
        workdir: &Path,
        network: bool,
        env: &std::collections::BTreeMap<String, String>,
        command: &[String],
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push =
            |parts: &[&std::ffi::OsStr]| args.extend(parts.iter().map(|p| p.to_os_string()));
        push(&["--die-with-parent".as_ref(), "--new-session".as_ref()]);
        push(&["--clearenv".as_ref()]);
        for (key, value) in env {
            push(&["--setenv".as_ref(), key.as_ref(), value.as_ref()]);
        }
        match confinement {
            Confinement::Contained => {
                push(&["--dev-bind".as_ref(), "/".as_ref(), "/".as_ref()]);
                push(&[
                    "--unshare-pid".as_ref(),
                    "--proc".as_ref(),
                    "/proc".as_ref(),
                ]);
                if !network {
                    push(&["--unshare-net".as_ref()]);
                }
            }
            Confinement::Sandbox => {
                // Its own user namespace, in which it may not make another (no nested
                // namespaces to mount in, no kernel surface they open).
                push(&["--unshare-all".as_ref(), "--unshare-user".as_ref()]);
                push(&["--disable-userns".as_ref()]);
                if network {
                    push(&["--share-net".as_ref()]);
                }
                // Root outside keeps every capability unless told otherwise.
                push(&["--cap-drop".as_ref(), "ALL".as_ref()]);
                push(&["--hostname".as_ref(), "tinyci".as_ref()]);
                for dir in SYSTEM_DIRS {
                    let path = Path::new(dir);
                    match std::fs::read_link(path) {
                        Ok(target) => {
                            push(&["--symlink".as_ref(), target.as_os_str(), path.as_os_str()])
                        }
                        Err(_) if path.is_dir() => {
                            push(&["--ro-bind".as_ref(), path.as_os_str(), path.as_os_str()])
                        }
                        Err(_) => {}
                    }
                }
                for file in ETC_FILES {
                    push(&["--ro-bind-try".as_ref(), file.as_ref(), file.as_ref()]);
                }
                push(&[
                    "--proc".as_ref(),
                    "/proc".as_ref(),
                    "--dev".as_ref(),
                    "/dev".as_ref(),
                ]);
                push(&["--tmpfs".as_ref(), "/tmp".as_ref()]);
                push(&["--bind".as_ref(), source.as_os_str(), source.as_os_str()]);
                // The run's secret files, read-only, at the path TINYCI_SECRETS_DIR names.
                if let Some(secrets) = secrets {
                    push(&[
                        "--ro-bind".as_ref(),
                        secrets.as_os_str(),
                        secrets.as_os_str(),
                    ]);
                }
                // Masks last: they cover whatever an earlier bind showed.
                for hidden in &self.hidden {
                    if !is_shown(hidden, source) {
                        continue;
                    }
                    if hidden.is_dir() {
                        push(&["--tmpfs".as_ref(), hidden.as_os_str()]);
                    } else if hidden.exists() {
                        push(&[
                            "--ro-bind".as_ref(),
                            "/dev/null".as_ref(),
                            hidden.as_os_str(),
                        ]);
                    }
                }
            }
        }
        push(&["--chdir".as_ref(), workdir.as_os_str(), "--".as_ref()]);
        args.extend(command.iter().map(OsString::from));
        args
    }
}

/// Whether the sandbox would show `path`: it lies under a system directory, an `/etc` file
/// it binds, or the run's source.
fn is_shown(path: &Path, source: &Path) -> bool {
    SYSTEM_DIRS
        .iter()
        .chain(ETC_FILES.iter())
        .any(|shown| path.starts_with(shown))
        || path.starts_with(source)
}

/// A PID namespace from util-linux's `unshare`, for hosts without bubblewrap: jobs on the host
/// (trusted `local` work) still cannot leave anything running after their run.
#[derive(Clone, Debug)]
pub struct Unshare {
    program: PathBuf,
    /// Unprivileged: a user namespace maps the runner's user to itself.
    user_namespace: bool,
}

impl Unshare {
    /// Finds `unshare` and proves it can make a PID namespace here (as root, or through a
    /// user namespace).
    pub async fn detect() -> Result<Self, SandboxError> {
        let program = find_on_path("unshare").ok_or(SandboxError::NotInstalled)?;
        let mut last = String::new();
        for user_namespace in [false, true] {
            let found = Self {
                program: program.clone(),
                user_namespace,
            };
            let argv = found.argv(false, Path::new("/"), &Default::default(), &["true".into()]);
            match probe(&found.program, argv).await {
                Ok(()) => return Ok(found),
                Err(why) => last = why,
            }
        }
        Err(SandboxError::Unusable(format!("unshare: {last}")))
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// `unshare`'s arguments to run `command` in a new PID namespace whose processes all die
    /// when the command (its init) exits, in `workdir` with exactly `env`. As with bubblewrap,
    /// `unshare` itself gets no job variables: `env -i` applies them inside.
    pub fn argv(
        &self,
        network: bool,
        workdir: &Path,
        env: &std::collections::BTreeMap<String, String>,
        command: &[String],
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["--pid", "--fork", "--kill-child", "--mount-proc"]
            .iter()
            .map(OsString::from)
            .collect();
        if self.user_namespace {
            args.extend(["--user", "--map-current-user"].map(OsString::from));
        }
        if !network {
            args.push("--net".into());
        }
        args.extend(["--", "env", "-i", "-C"].map(OsString::from));
        args.push(workdir.as_os_str().to_owned());
        args.extend(env.iter().map(|(k, v)| OsString::from(format!("{k}={v}"))));
        args.extend(command.iter().map(OsString::from));
        args
    }
}

/// How jobs on the host are kept from outliving their runs.
#[derive(Clone, Debug)]
pub enum Containment {
    /// bubblewrap's PID namespace.
    Bubblewrap(Bubblewrap),
    /// util-linux's PID namespace.
    Unshare(Unshare),
}

impl Containment {
    /// `unshare` if it works here, else bubblewrap; the error says why neither does.
    /// `unshare` comes first: it only adds namespaces, where bubblewrap rebinds the whole
    /// filesystem tree, which fails on a mount that vanishes meanwhile (Docker making and
    /// removing a container's overlay).
    pub async fn detect() -> Result<Self, SandboxError> {
        match Unshare::detect().await {
            Ok(unshare) => Ok(Containment::Unshare(unshare)),
            Err(unshare_error) => Bubblewrap::detect_for(Confinement::Contained)
                .await
                .map(Containment::Bubblewrap)
                .map_err(|e| SandboxError::Unusable(format!("{unshare_error}; and {e}"))),
        }
    }
}

/// Runs `program argv` (a wrapper around `true`) as jobs will be run: from `/`, with no
/// variables. `Err`: what it printed, or how it ended.
async fn probe(program: &Path, argv: Vec<OsString>) -> Result<(), String> {
    let output = tokio::process::Command::new(program)
        .args(argv)
        .current_dir("/")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    Err(if why.is_empty() {
        format!("{} exited with {}", program.display(), output.status)
    } else {
        why
    })
}

/// The first executable `name` in `PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_sandbox_binds_only_the_source_writable_and_masks_hidden_paths_it_would_show() {
        // A secret directory and file that happen to lie inside a shown tree (here the
        // run's source), and one outside anything shown.
        let source = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let src = source.path().display().to_string();
        std::fs::create_dir(source.path().join("certs")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(source.path().join("root.key"), "k").unwrap_or_else(|e| panic!("{e}"));
        let bwrap = Bubblewrap {
            bwrap: "/usr/bin/bwrap".into(),
            hidden: vec![
                source.path().join("certs"),
                source.path().join("root.key"),
                "/var/lib/tinyci".into(),
            ],
        };
        let env = [("LD_PRELOAD".to_owned(), "./evil.so".to_owned())].into();
        let args = strings(&bwrap.argv(
            Confinement::Sandbox,
            (source.path(), None),
            &source.path().join("build"),
            false,
            &env,
            &["make".into()],
        ));
        let joined = args.join(" ");
        let writable: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "--bind" || w[0] == "--dev-bind")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(writable, [src.as_str()]);
        assert!(joined.contains("--cap-drop ALL"));
        assert!(joined.contains("--disable-userns"));
        // The job's variables reach the job, never bwrap's own loader.
        assert!(joined.contains("--clearenv --setenv LD_PRELOAD ./evil.so"));
        assert!(joined.contains("--unshare-all"));
        assert!(!joined.contains("--share-net"));
        assert!(!joined.contains("--ro-bind /etc /etc"));
        // Inside a shown tree, so covered; /var is never shown, so nothing to cover.
        assert!(joined.contains(&format!("--tmpfs {src}/certs")));
        assert!(joined.contains(&format!("--ro-bind /dev/null {src}/root.key")));
        assert!(!joined.contains("/var/lib/tinyci"));
        assert!(joined.ends_with(&format!("--chdir {src}/build -- make")));
    }

    #[test]
    fn contained_host_jobs_get_their_own_pid_namespace_and_network_only_when_allowed() {
        let bwrap = Bubblewrap {
            bwrap: "/usr/bin/bwrap".into(),
            hidden: Vec::new(),
        };
        let run = |network| {
            strings(&bwrap.argv(
                Confinement::Contained,
                (Path::new("/w"), None),
                Path::new("/w"),
                network,
                &Default::default(),
                &["true".into()],
            ))
            .join(" ")
        };
        assert!(run(true).contains("--dev-bind / / --unshare-pid --proc /proc"));
        assert!(!run(true).contains("--unshare-net"));
        assert!(run(false).contains("--unshare-net"));
    }
}
