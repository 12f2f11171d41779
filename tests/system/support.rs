//! Running the real `tinyci` binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Generous bound for a process to print an expected line. A hang guard, not a timing
/// assertion: on a loaded machine things are slow, never this slow.
const PATIENCE: Duration = Duration::from_secs(120);

/// The `tinyci` binary cargo built for these tests.
pub(crate) fn tinyci() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tinyci"));
    without_callers_environment(&mut command);
    command
}

/// Keeps diagnostics quiet and predictable whatever the caller's environment says, and acts
/// as the tests say: never as a profile or grant the caller's environment names, nor a login
/// profile under their home.
pub(crate) fn without_callers_environment(command: &mut Command) {
    for name in [
        "RUST_LOG",
        "TINYCI_CONFIG",
        "TINYCI_PROFILE",
        "TINYCI_TOKEN",
        "NO_COLOR",
    ] {
        command.env_remove(name);
    }
    command.env("XDG_CONFIG_HOME", "/nonexistent/tinyci-tests");
}

/// Runs `tinyci args…` in `dir` to completion.
pub(crate) fn run_in(dir: &Path, args: &[&str]) -> Output {
    tinyci().current_dir(dir).args(args).output().unwrap()
}

/// A `tinyci site up` process; killed on drop if still running.
pub(crate) struct SiteProcess {
    child: Child,
    lines: Receiver<String>,
    /// Everything it printed so far on stdout.
    pub(crate) stdout: Vec<String>,
}

impl SiteProcess {
    /// Starts `tinyci site up args…` in `dir`.
    pub(crate) fn start(dir: &Path, args: &[&str]) -> Self {
        let mut full = vec!["site", "up"];
        full.extend_from_slice(args);
        Self::spawn(dir, &full)
    }

    /// Starts `tinyci args…` in `dir` (any long-running command: a runner, `submit --wait`).
    pub(crate) fn spawn(dir: &Path, args: &[&str]) -> Self {
        let mut command = tinyci();
        command.current_dir(dir).args(args);
        Self::from_command(command)
    }

    /// Starts `command` (e.g. `tinyci` inside a network namespace) as a process to follow.
    pub(crate) fn from_command(command: Command) -> Self {
        Self::with_stderr(command, Stdio::inherit())
    }

    /// Starts `tinyci site up args…` in `dir` with diagnostics at every level
    /// (`RUST_LOG=trace`) written to `log`.
    pub(crate) fn start_logging(dir: &Path, args: &[&str], log: &Path) -> Self {
        let mut full = vec!["site", "up"];
        full.extend_from_slice(args);
        Self::spawn_logging(dir, &full, log)
    }

    /// Starts `tinyci args…` in `dir` with diagnostics at every level (`RUST_LOG=trace`)
    /// written to `log`.
    pub(crate) fn spawn_logging(dir: &Path, args: &[&str], log: &Path) -> Self {
        let mut command = tinyci();
        command.current_dir(dir).args(args).env("RUST_LOG", "trace");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Self::with_stderr(command, Stdio::from(log))
    }

    fn with_stderr(mut command: Command, stderr: Stdio) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            stdout: Vec::new(),
        }
    }

    /// Waits for a stdout line starting with `prefix` and returns the rest of it.
    pub(crate) fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line starting with {prefix:?}; got {:#?}", self.stdout)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().unwrap();
                    panic!(
                        "site exited ({status}) before printing {prefix:?}; got {:#?}",
                        self.stdout
                    )
                }
            }
        }
    }

    /// Sends a signal without waiting.
    ///
    /// Through `kill(2)`, never the `kill` command: procps-ng 4.0.2's `kill -9 -<pgid>`
    /// misparses the group and can signal `-1` (every process the user owns).
    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Kills the process with SIGKILL (a crash) and waits for it.
    pub(crate) fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; returns its exit code and the rest of its stdout.
    pub(crate) fn wait(mut self) -> (Option<i32>, Vec<String>) {
        let status = self.child.wait().unwrap();
        let mut rest = std::mem::take(&mut self.stdout);
        rest.extend(self.lines.iter());
        (status.code(), rest)
    }

    /// Waits for the process to exit like [`SiteProcess::wait`], but panics if it is still
    /// running after [`PATIENCE`]: for a test whose failure would be a process that hangs.
    pub(crate) fn wait_patiently(mut self) -> (Option<i32>, Vec<String>) {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut rest = std::mem::take(&mut self.stdout);
                rest.extend(self.lines.iter());
                return (status.code(), rest);
            }
            if std::time::Instant::now() >= deadline {
                self.stdout.extend(self.lines.try_iter());
                panic!(
                    "the process did not exit within {PATIENCE:?}; its output: {:#?}",
                    self.stdout
                );
            }
            // Polling: a child's exit has no other portable event to wait on here.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the process to exit, returning whether it exited 0 and the
    /// rest of its stdout.
    pub(crate) fn terminate(mut self) -> (bool, Vec<String>) {
        self.signal(Signal::SIGTERM);
        let status = self.child.wait().unwrap();
        let rest: Vec<String> = self.lines.try_iter().collect();
        (status.success(), rest)
    }
}

impl Drop for SiteProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes a git repository in `dir` holding `files`, committed on branch `main`.
pub(crate) fn git_repo(dir: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "test repository"]);
}

/// Initializes site `alpha` with `extra` config and starts it without a local runner; returns
/// it and its address.
pub(crate) fn start_site(dir: &Path, extra: &str) -> (SiteProcess, String) {
    init_site(dir, extra);
    serve_site(dir)
}

/// Starts the site initialized in `dir` on an ephemeral port without a local runner; returns
/// it and its address.
pub(crate) fn serve_site(dir: &Path) -> (SiteProcess, String) {
    let mut site = SiteProcess::start(
        dir,
        &[
            "--config",
            "site.toml",
            "--listen",
            "127.0.0.1:0",
            "--no-local-runner",
        ],
    );
    let addr = site.wait_for("listening on ").trim().to_owned();
    (site, addr)
}

/// Serves the site initialized in `dir` on `addr` (no local runner) and waits until it
/// listens: for a test that restarts the site where its runners' bundles point.
pub(crate) fn serve_site_at(dir: &Path, addr: &str) -> SiteProcess {
    let mut site = SiteProcess::start(
        dir,
        &[
            "--config",
            "site.toml",
            "--listen",
            addr,
            "--no-local-runner",
        ],
    );
    site.wait_for("listening on ");
    site
}

/// Starts the site initialized in `dir` (whose config has an `[http]` section) with both
/// listeners on ephemeral ports and no local runner; returns it, its capnp address and its
/// HTTP address.
pub(crate) fn serve_site_with_http(dir: &Path) -> (SiteProcess, String, String) {
    let mut site = SiteProcess::start(
        dir,
        &[
            "--config",
            "site.toml",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--no-local-runner",
        ],
    );
    let addr = site.wait_for("listening on ").trim().to_owned();
    let http = site.wait_for("http listening on ").trim().to_owned();
    (site, addr, http)
}

/// Waits until a job's command creates `path` (a marker it writes when it reaches a point
/// the test must wait for); panics naming `what` after [`PATIENCE`].
pub(crate) fn wait_for_file(path: &Path, what: &str) {
    wait_until(what, || path.exists());
}

/// Initializes site `alpha` in `dir`, optionally appending to its site.toml.
pub(crate) fn init_site(dir: &Path, extra_config: &str) {
    let init = run_in(dir, &["site", "init", "--name", "alpha"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    if !extra_config.is_empty() {
        let path = dir.join("site.toml");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(extra_config);
        std::fs::write(path, text).unwrap();
    }
}

/// Polls `done` (each poll a real request) until it holds; panics naming `what` after a
/// generous hang guard.
pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let since = Instant::now();
    while !done() {
        assert!(since.elapsed() < PATIENCE, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Mints, with the site in `dir`, a one-hour grant of `queue:take` on `queue` for partner
/// site `holder`, written to `out`.
pub(crate) fn grant_queue_take(dir: &Path, holder: &str, queue: &str, out: &Path) {
    let holder = format!("site:{holder}");
    let granted = run_in(
        dir,
        &[
            "grant",
            "--to",
            &holder,
            "--right",
            "queue:take",
            "--queue",
            queue,
            "--right",
            "logs:write",
            "--repo",
            "*",
            "--ttl",
            "1h",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
}
