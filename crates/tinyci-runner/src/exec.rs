//! What executors are given and what they report, shared by every executor.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

/// Largest chunk of output an executor emits (the log protocol's chunk limit).
pub const MAX_CHUNK: usize = 64 * 1024;

/// One run, as an executor needs it.
#[derive(Clone, Debug)]
pub struct ExecSpec {
    /// A label for logs and container names (`r-42`).
    pub label: String,
    /// argv; a single element is a shell command line run by `sh -c`.
    pub command: Vec<String>,
    /// The unpacked source tree on the runner host.
    pub source_dir: PathBuf,
    /// Working directory relative to the source root (shell) or the mountpoint (docker).
    pub workdir: String,
    /// Where the source is mounted inside a container.
    pub mountpoint: String,
    /// Container image (docker executor only).
    pub image: String,
    /// When to pull the image, as the run's queue says; `None` leaves it to the executor's
    /// own policy.
    pub pull: Option<tinyci_core::PullPolicy>,
    /// Whether a pull may use the runner host's registry credentials: only for the site's
    /// own and its repositories' writers' work. A fork's or a partner's run pulls
    /// anonymously, so it cannot name a private image and print what is in it.
    pub registry_credentials: bool,
    /// Environment variables, on top of a minimal base (the runner's own environment is
    /// never passed through: it may hold the runner's credentials).
    pub env: BTreeMap<String, String>,
    /// Kill the run after this long.
    pub timeout: Duration,
    /// Run the container privileged (docker only, and only on a runner started with
    /// `--allow-privileged`; the site grants it only by its own policy).
    pub privileged: bool,
    /// Whether the run may reach the network; otherwise it gets a network namespace with
    /// loopback only (shell with bubblewrap, sandbox) or no network (Docker).
    pub network: bool,
    /// CPU hint from the task's `resources.cpu` (cores, e.g. `2` or `0.5`); Docker limits to
    /// it, else to the runner's default.
    pub cpu: Option<String>,
    /// Memory hint from the task's `resources.memory` (`512m`, `2g`, `1Gi`, bytes); Docker
    /// limits to it, else to the runner's default.
    pub memory: Option<String>,
    /// After asking a run to stop (cancel, timeout), how long before it is killed.
    pub grace: Duration,
    /// Secrets given as variables (they win over `env`); `Debug` shows names only.
    pub secret_env: SecretEnv,
    /// The run's secrets directory on the runner host, when it was given secret files:
    /// shown to the job (read-only in a sandbox or container) and named in
    /// `TINYCI_SECRETS_DIR`.
    pub secrets_dir: Option<PathBuf>,
}

/// Secret variables of a run. Its `Debug` lists their names, never their values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretEnv(BTreeMap<String, String>);

impl SecretEnv {
    /// Adds (or replaces) a variable.
    pub fn insert(&mut self, name: String, value: String) {
        self.0.insert(name, value);
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Removes a variable; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }

    /// Each variable and its value.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }
}

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Which stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
    /// Lines written by tinyci itself.
    System,
}

/// A piece of a run's output, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputChunk {
    /// Which stream.
    pub stream: Stream,
    /// When the executor read it.
    pub at: SystemTime,
    /// At most [`MAX_CHUNK`] bytes.
    pub data: Vec<u8>,
}

/// Where executors send output. Bounded: when the consumer (the log stream to the site) is
/// slow, the executor stops reading the process's pipes and the process blocks on write,
/// so memory stays bounded end to end.
pub type OutputSink = mpsc::Sender<OutputChunk>;

/// Asks a run to stop; the executor stops it (gracefully, then by force) and reports
/// [`Verdict::Canceled`].
#[derive(Clone, Debug)]
pub struct StopHandle(watch::Sender<Option<String>>);

/// The executor's side of a [`StopHandle`].
#[derive(Clone, Debug)]
pub struct StopSignal(watch::Receiver<Option<String>>);

/// A connected stop handle and signal.
pub fn stop_pair() -> (StopHandle, StopSignal) {
    let (tx, rx) = watch::channel(None);
    (StopHandle(tx), StopSignal(rx))
}

impl StopHandle {
    /// Requests a stop with a reason (the first reason wins).
    pub fn stop(&self, reason: &str) {
        self.0.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason.to_owned());
                true
            } else {
                false
            }
        });
    }
}

impl StopSignal {
    /// Resolves with the reason once a stop is requested. Never resolves if every handle is
    /// dropped without asking.
    pub async fn requested(&mut self) -> String {
        loop {
            if let Some(reason) = self.0.borrow_and_update().clone() {
                return reason;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Exit code 0.
    Passed,
    /// Non-zero exit code.
    Failed,
    /// Killed at its timeout.
    TimedOut,
    /// Stopped on request.
    Canceled,
    /// Could not run (no such image, spawn failed, executor error).
    Errored,
}

impl Verdict {
    /// The verdict as metrics label it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::TimedOut => "timed_out",
            Verdict::Canceled => "canceled",
            Verdict::Errored => "errored",
        }
    }
}

/// What an executor reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutcome {
    /// How it ended.
    pub verdict: Verdict,
    /// The exit code, if the command exited (128 + signal number if it was killed).
    pub exit_code: Option<i32>,
    /// For people: "exit code 2", "timed out after 600s", "canceled: superseded".
    pub message: String,
}

impl ExecOutcome {
    pub(crate) fn errored(message: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Errored,
            exit_code: None,
            message: message.into(),
        }
    }

    /// The outcome of a command that exited with `code`.
    pub(crate) fn exited(code: i32) -> Self {
        Self {
            verdict: if code == 0 {
                Verdict::Passed
            } else {
                Verdict::Failed
            },
            exit_code: Some(code),
            message: format!("exit code {code}"),
        }
    }
}

/// Why a run was stopped early, decided by whichever came first.
#[derive(Clone, Debug)]
pub(crate) enum Interruption {
    Timeout(Duration),
    Stop(String),
}

impl Interruption {
    /// The outcome to report once the interrupted run is gone.
    pub(crate) fn outcome(&self, exit_code: Option<i32>) -> ExecOutcome {
        match self {
            Interruption::Timeout(after) => ExecOutcome {
                verdict: Verdict::TimedOut,
                exit_code,
                message: format!("timed out after {}", human(*after)),
            },
            Interruption::Stop(reason) => ExecOutcome {
                verdict: Verdict::Canceled,
                exit_code,
                message: format!("canceled: {reason}"),
            },
        }
    }
}

impl std::fmt::Display for Interruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interruption::Timeout(after) => write!(f, "timed out after {}", human(*after)),
            Interruption::Stop(reason) => write!(f, "canceled ({reason})"),
        }
    }
}

/// `300ms`, `42s`: timeouts are usually whole seconds, tests use less.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// Sends a line written by tinyci itself into the run's output.
pub(crate) async fn system_line(out: &OutputSink, line: String) {
    let _ = out
        .send(OutputChunk {
            stream: Stream::System,
            at: SystemTime::now(),
            data: format!("{line}\n").into_bytes(),
        })
        .await;
}

/// Base environment for every run: enough to find programs and behave like a CI. Secret
/// variables are not in it: each executor hands them over its own way, never on a command
/// line (which every user of the host may read).
pub(crate) fn base_env(spec: &ExecSpec) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    );
    env.insert("CI".into(), "true".into());
    env.insert("TINYCI".into(), "true".into());
    env.insert("TINYCI_RUN".into(), spec.label.clone());
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(dir) = &spec.secrets_dir {
        env.insert(
            crate::secrets::SECRETS_DIR_VARIABLE.into(),
            dir.display().to_string(),
        );
    }
    env
}
