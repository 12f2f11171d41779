//! The shell executor: runs the command as a child process in its own process group, so that
//! stopping a run (cancel, timeout, or the command simply ending) reaches every process it
//! started. With bubblewrap it also runs in a PID namespace of its own, so even processes
//! that leave the group (`setsid`, daemons) die with the run; sandboxed, it sees nothing of
//! the host but system directories and its own source (see [`crate::sandbox`]).

use std::path::Component;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tracing::{debug, warn};

use crate::exec::{
    ExecOutcome, ExecSpec, Interruption, MAX_CHUNK, OutputChunk, OutputSink, StopSignal, Stream,
    base_env, system_line,
};
use crate::sandbox::{Bubblewrap, Confinement, Containment};

/// Runs jobs as local processes: on the host (for trusted work), or sandboxed.
#[derive(Clone, Debug, Default)]
pub struct ShellExecutor {
    mode: Mode,
}

#[derive(Clone, Debug, Default)]
enum Mode {
    /// Plain processes on the host, contained by their process group only (a process that
    /// calls `setsid` escapes it).
    #[default]
    Host,
    /// On the host, in a PID namespace of their own.
    Contained(Containment),
    /// In the bubblewrap sandbox.
    Sandboxed(Bubblewrap),
}

impl ShellExecutor {
    /// Processes on the host, in their own PID namespace when `containment` is given.
    pub fn host(containment: Option<Containment>) -> Self {
        Self {
            mode: containment.map_or(Mode::Host, Mode::Contained),
        }
    }

    /// Processes in the sandbox.
    pub fn sandboxed(bubblewrap: Bubblewrap) -> Self {
        Self {
            mode: Mode::Sandboxed(bubblewrap),
        }
    }

    /// Whether jobs run in the sandbox (rather than on the host).
    pub fn is_sandboxed(&self) -> bool {
        matches!(self.mode, Mode::Sandboxed(_))
    }

    /// Whether everything a job starts dies with it (a PID namespace), not just its process
    /// group.
    pub fn contains_processes(&self) -> bool {
        !matches!(self.mode, Mode::Host)
    }

    /// Runs `spec` to completion, streaming output into `out`, stopping early on `stop` or at
    /// the timeout.
    pub async fn run(
        &self,
        spec: &ExecSpec,
        out: &OutputSink,
        mut stop: StopSignal,
    ) -> ExecOutcome {
        let workdir = match resolve_workdir(spec) {
            Ok(dir) => dir,
            Err(e) => return ExecOutcome::errored(e),
        };
        let Some((program, args)) = argv(&spec.command) else {
            return ExecOutcome::errored("the run has no command");
        };
        let mut inner = vec![program.to_owned()];
        inner.extend(args.iter().map(|a| (*a).to_owned()));
        // A wrapper's command line is readable by every user of the host: secret variables
        // reach a wrapped job through a shell sourcing the run's variables file instead.
        if let Some(file) = crate::secrets::variables_file(spec) {
            inner = crate::secrets::sourcing(&file, inner);
        }
        let mut env = base_env(spec);
        env.insert("HOME".into(), workdir.display().to_string());
        // A wrapper (bwrap, unshare) runs on the host before any namespace exists: it starts
        // in `/` with no variables at all, and hands the job its own.
        let wrapped = |program: &std::path::Path, argv: Vec<std::ffi::OsString>| {
            let mut command = Command::new(program);
            command.args(argv).current_dir("/").env_clear();
            command
        };
        let mut command = match &self.mode {
            Mode::Host => {
                let mut command = Command::new(program);
                command
                    .args(args)
                    .current_dir(&workdir)
                    .env_clear()
                    .envs(&env)
                    .envs(spec.secret_env.iter());
                command
            }
            Mode::Contained(Containment::Bubblewrap(b)) => wrapped(
                b.program(),
                b.argv(
                    Confinement::Contained,
                    (&spec.source_dir, spec.secrets_dir.as_deref()),
                    &workdir,
                    spec.network,
                    &env,
                    &inner,
                ),
            ),
            Mode::Contained(Containment::Unshare(unshare)) => wrapped(
                unshare.program(),
                unshare.argv(spec.network, &workdir, &env, &inner),
            ),
            Mode::Sandboxed(b) => wrapped(
                b.program(),
                b.argv(
                    Confinement::Sandbox,
                    (&spec.source_dir, spec.secrets_dir.as_deref()),
                    &workdir,
                    spec.network,
                    &env,
                    &inner,
                ),
            ),
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: signals to the group reach the whole tree.
            .process_group(0)
            // If this future is dropped (runner shutting down), don't leave the leader behind.
            .kill_on_drop(true);
        harden_child(&mut command);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return ExecOutcome::errored(format!("failed to start {program:?}: {e}")),
        };
        let group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        let stdout = child
            .stdout
            .take()
            .map(|r| pump(r, Stream::Stdout, out.clone()));
        let stderr = child
            .stderr
            .take()
            .map(|r| pump(r, Stream::Stderr, out.clone()));

        let interruption = tokio::select! {
            status = child.wait() => {
                // The leader is gone; anything it left running in its group goes too.
                signal_group(group, Signal::SIGKILL);
                finish_pumps(stdout, stderr).await;
                return match status {
                    Ok(status) => ExecOutcome::exited(exit_code(status)),
                    Err(e) => ExecOutcome::errored(format!("failed to wait for the command: {e}")),
                };
            }
            () = tokio::time::sleep(spec.timeout) => Interruption::Timeout(spec.timeout),
            reason = stop.requested() => Interruption::Stop(reason),
        };
        system_line(
            out,
            format!("tinyci: {interruption}; stopping the process group"),
        )
        .await;
        let code = terminate(&mut child, group, spec.grace, out).await;
        finish_pumps(stdout, stderr).await;
        interruption.outcome(code)
    }
}

/// Prepares the job's child before it execs:
/// - Every descriptor above stderr closes at exec: whatever the runner's process holds without
///   close-on-exec (a jobserver pipe from its parent, a library's file) must not reach a job,
///   sandboxed or not. Rust and tokio open everything close-on-exec, but not everything in a
///   process is theirs.
/// - The child is killed when the runner dies (`PR_SET_PDEATHSIG`): a runner killed with
///   SIGKILL cannot stop its jobs, which would run on unwatched. A contained job's child is
///   `unshare --kill-child` (whose death kills the job's PID namespace) or bubblewrap with
///   `--die-with-parent`, so the whole job goes with it. The signal follows the thread that
///   spawned the child: the agent spawns jobs from its own thread, which lives as long as it.
#[allow(unsafe_code)]
fn harden_child(command: &mut Command) {
    let runner = std::process::id();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: it makes raw `close_range`/`fcntl`, `prctl` and `getppid` system
    // calls and allocates nothing (its errors are OS codes). Closing descriptors the child
    // does not use cannot break the parent, whose descriptor table is separate after fork;
    // std sets up stdin/stdout/stderr (0-2) before this runs and its own exec-error pipe is
    // close-on-exec (it reports spawn failures only and is unaffected: `close_range` with
    // CLOSE_RANGE_CLOEXEC only marks it).
    unsafe {
        command.pre_exec(move || {
            let marked = libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if marked != 0 {
                // Kernels before 5.11: mark them one by one instead.
                for fd in 3..4096 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The runner may have died before the line above took effect: then nothing
            // would ever send the signal.
            if u32::try_from(libc::getppid()).ok() != Some(runner) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// `sh -c LINE` for a single string, the argv itself otherwise.
fn argv(command: &[String]) -> Option<(&str, Vec<&str>)> {
    match command {
        [] => None,
        [line] => Some(("sh", vec!["-c", line.as_str()])),
        [program, args @ ..] => Some((program.as_str(), args.iter().map(String::as_str).collect())),
    }
}

/// The run's working directory inside the source tree. Refuses paths that leave it.
fn resolve_workdir(spec: &ExecSpec) -> Result<std::path::PathBuf, String> {
    let relative = std::path::Path::new(&spec.workdir);
    let escapes = relative.components().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    });
    if escapes {
        return Err(format!(
            "workdir {:?} leaves the source tree (the shell executor needs a relative path)",
            spec.workdir
        ));
    }
    // Join normal components only, so "." and "./x" give clean paths.
    let mut dir = spec.source_dir.clone();
    dir.extend(
        relative
            .components()
            .filter(|c| matches!(c, Component::Normal(_))),
    );
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!(
            "workdir {:?} does not exist in the source tree",
            spec.workdir
        ))
    }
}

/// SIGTERM to the group, SIGKILL after the grace period; returns the leader's exit code.
async fn terminate(
    child: &mut Child,
    group: Option<Pid>,
    grace: Duration,
    out: &OutputSink,
) -> Option<i32> {
    signal_group(group, Signal::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            system_line(
                out,
                format!(
                    "tinyci: still running {}s after SIGTERM; sending SIGKILL",
                    grace.as_secs()
                ),
            )
            .await;
            signal_group(group, Signal::SIGKILL);
            child.wait().await.ok()
        }
    };
    // Stragglers that ignored SIGTERM while the leader exited.
    signal_group(group, Signal::SIGKILL);
    status.map(exit_code)
}

fn signal_group(group: Option<Pid>, signal: Signal) {
    let Some(group) = group else { return };
    match killpg(group, signal) {
        // ESRCH: the group is already empty.
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => warn!(%group, ?signal, error = %e, "failed to signal process group"),
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(-1)
}

/// Forwards a pipe into the output sink in chunks of at most [`MAX_CHUNK`].
fn pump(
    mut reader: impl AsyncRead + Unpin + Send + 'static,
    stream: Stream,
    out: OutputSink,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = OutputChunk {
                        stream,
                        at: SystemTime::now(),
                        data: buf[..n].to_vec(),
                    };
                    if out.send(chunk).await.is_err() {
                        // Nobody is listening any more; keep draining so the process
                        // does not block on a full pipe.
                        debug!(?stream, "output receiver gone; discarding");
                    }
                }
                Err(e) => {
                    warn!(?stream, error = %e, "failed to read command output");
                    break;
                }
            }
        }
    })
}

async fn finish_pumps(
    stdout: Option<tokio::task::JoinHandle<()>>,
    stderr: Option<tokio::task::JoinHandle<()>>,
) {
    for pump in [stdout, stderr].into_iter().flatten() {
        let _ = pump.await;
    }
}
