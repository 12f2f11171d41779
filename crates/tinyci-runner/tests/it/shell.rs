//! The shell executor on real processes.

use std::time::Duration;

use tinyci_runner::{ShellExecutor, Verdict, stop_pair};
use tokio::sync::mpsc;

use crate::support::{collect, spec, wait_for_stdout};

#[tokio::test]
async fn exit_codes_decide_pass_and_fail_and_output_is_kept_per_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel(16);
    let (_stop, signal) = stop_pair();
    let job = spec(dir.path(), &["echo out; echo err >&2; echo out2; exit 3"]);
    let outcome = ShellExecutor::default().run(&job, &tx, signal).await;
    drop(tx);
    let output = collect(rx).await;
    assert_eq!(outcome.verdict, Verdict::Failed);
    assert_eq!(outcome.exit_code, Some(3));
    assert_eq!(outcome.message, "exit code 3");
    assert_eq!(output.stdout, b"out\nout2\n");
    assert_eq!(output.stderr, b"err\n");

    let (tx, rx) = mpsc::channel(16);
    let (_stop, signal) = stop_pair();
    let job = spec(dir.path(), &["true"]);
    let outcome = ShellExecutor::default().run(&job, &tx, signal).await;
    drop(tx);
    collect(rx).await;
    assert_eq!(outcome.verdict, Verdict::Passed);
    assert_eq!(outcome.exit_code, Some(0));
}

#[tokio::test]
async fn large_output_arrives_complete_in_bounded_chunks() {
    let dir = tempfile::tempdir().unwrap();
    // Bounded channel of 2: the executor must wait for the reader, not buffer everything.
    let (tx, rx) = mpsc::channel(2);
    let (_stop, signal) = stop_pair();
    let job = spec(
        dir.path(),
        &["head -c 3000000 /dev/zero | tr '\\0' 'x'; head -c 1000000 /dev/zero | tr '\\0' 'y' >&2"],
    );
    let reader = tokio::spawn(collect(rx));
    let outcome = ShellExecutor::default().run(&job, &tx, signal).await;
    drop(tx);
    let output = reader.await.unwrap();
    assert_eq!(outcome.verdict, Verdict::Passed, "{outcome:?}");
    assert_eq!(output.stdout.len(), 3_000_000);
    assert!(output.stdout.iter().all(|b| *b == b'x'));
    assert_eq!(output.stderr.len(), 1_000_000);
    assert!(output.chunks >= 4_000_000 / tinyci_runner::MAX_CHUNK);
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[tokio::test]
async fn cancel_stops_the_whole_process_tree() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let (stop, signal) = stop_pair();
    // Two background sleepers and a foreground one, each ignoring nothing: all in the group.
    let job = spec(
        dir.path(),
        &[
            "sleep 1000 & echo bg1=$!; (sleep 1000 & echo bg2=$!; wait) & sleep 1 ; echo ready; wait",
        ],
    );
    let run = tokio::spawn(async move { ShellExecutor::default().run(&job, &tx, signal).await });
    let seen = wait_for_stdout(&mut rx, "ready").await;
    let pids: Vec<i32> = seen
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(_, pid)| pid.trim().parse().unwrap())
        })
        .collect();
    assert_eq!(pids.len(), 2, "{seen}");
    assert!(pids.iter().all(|p| alive(*p)));
    stop.stop("user asked");
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let outcome = run.await.unwrap();
    drain.await.unwrap();
    assert_eq!(outcome.verdict, Verdict::Canceled);
    assert_eq!(outcome.message, "canceled: user asked");
    for pid in pids {
        // Zombies are reaped by init shortly after; a killed process is never "alive" with
        // signal 0 once reaped, but may linger as a zombie briefly: check its state.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        assert!(
            matches!(state, None | Some("Z") | Some("X")),
            "process {pid} survived: {stat}"
        );
    }
}

#[tokio::test]
async fn a_process_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let (stop, signal) = stop_pair();
    let mut job = spec(
        dir.path(),
        &["trap '' TERM; echo ready; while true; do sleep 1; done"],
    );
    job.grace = Duration::from_millis(200);
    let run = tokio::spawn(async move { ShellExecutor::default().run(&job, &tx, signal).await });
    wait_for_stdout(&mut rx, "ready").await;
    stop.stop("now");
    let drain = tokio::spawn(async move {
        let mut system = Vec::new();
        while let Some(chunk) = rx.recv().await {
            if chunk.stream == tinyci_runner::Stream::System {
                system.extend(chunk.data);
            }
        }
        String::from_utf8(system).unwrap()
    });
    let outcome = run.await.unwrap();
    let system = drain.await.unwrap();
    assert_eq!(outcome.verdict, Verdict::Canceled);
    assert_eq!(outcome.exit_code, Some(128 + 9), "{outcome:?}");
    assert!(system.contains("sending SIGKILL"), "{system}");
}

#[tokio::test]
async fn timeouts_kill_and_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel(64);
    let (_stop, signal) = stop_pair();
    let mut job = spec(dir.path(), &["sleep 1000"]);
    job.timeout = Duration::from_millis(300);
    let outcome = ShellExecutor::default().run(&job, &tx, signal).await;
    drop(tx);
    let output = collect(rx).await;
    assert_eq!(outcome.verdict, Verdict::TimedOut);
    assert_eq!(outcome.message, "timed out after 300ms");
    assert!(String::from_utf8_lossy(&output.system).contains("timed out"));
}

#[tokio::test]
async fn the_runners_environment_does_not_leak_and_job_env_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel(16);
    let (_stop, signal) = stop_pair();
    let mut job = spec(
        dir.path(),
        &["echo \"home=$HOME ci=$CI run=$TINYCI_RUN mine=$MINE cargo=${CARGO:-unset}\""],
    );
    job.env.insert("MINE".into(), "yes".into());
    let outcome = ShellExecutor::default().run(&job, &tx, signal).await;
    drop(tx);
    let output = collect(rx).await;
    assert_eq!(outcome.verdict, Verdict::Passed);
    let line = String::from_utf8(output.stdout).unwrap();
    // cargo sets CARGO for this test process: the job must not see it.
    assert_eq!(
        line,
        format!(
            "home={} ci=true run=r-test mine=yes cargo=unset\n",
            dir.path().display()
        )
    );
}

#[tokio::test]
async fn a_workdir_outside_the_source_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::channel(16);
    let (_stop, signal) = stop_pair();
    let mut job = spec(dir.path(), &["true"]);
    job.workdir = "../..".into();
    let outcome = ShellExecutor::default().run(&job, &tx, signal).await;
    assert_eq!(outcome.verdict, Verdict::Errored);
    assert!(
        outcome.message.contains("leaves the source tree"),
        "{}",
        outcome.message
    );
}
