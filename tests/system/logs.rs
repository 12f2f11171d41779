//! Logs end to end: what a command prints is what `tinyci logs` gives back, byte for byte and
//! stream by stream, and live followers see the same log as readers after the fact.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::jobs::{start_runner, start_submit_wait, wait_for_run};
use crate::support::{
    SiteProcess, git_repo, init_site, run_in, serve_site_at, start_site, wait_for_file,
};

/// A site (no embedded runner) and a shell runner `r1`; returns (site, runner, address).
pub(crate) fn site_with_runner(dir: &Path) -> (SiteProcess, SiteProcess, String) {
    let (site, addr) = start_site(dir, "");
    let added = run_in(
        dir,
        &["runner", "add", "r1", "--queue", "default", "--addr", &addr],
    );
    assert!(added.status.success());
    let runner = start_runner(dir, "r1");
    (site, runner, addr)
}

pub(crate) fn task(command: &str) -> String {
    format!("mountpoint: /src\nruns:\n  main:\n    command: [\"sh\", \"-c\", \"{command}\"]\n")
}

/// `tinyci logs args… --addr addr`.
pub(crate) fn logs(dir: &Path, addr: &str, args: &[&str]) -> std::process::Output {
    let mut full = vec!["logs", "--addr", addr];
    full.extend_from_slice(args);
    run_in(dir, &full)
}

#[test]
fn ten_megabytes_of_interleaved_stdout_and_stderr_come_back_exactly_per_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (site, runner, addr) = site_with_runner(dir.path());
    let out = tempfile::tempdir().unwrap();
    let d = out.path().display();
    // Random bytes (not lines), written to both streams at once so chunks interleave.
    let command = format!(
        "head -c 5242880 /dev/urandom > {d}/out.bin; head -c 5242880 /dev/urandom > {d}/err.bin; \
         cat {d}/out.bin & cat {d}/err.bin >&2 & wait"
    );
    let repo = tempfile::tempdir().unwrap();
    git_repo(
        repo.path(),
        &[("tinyci.yml", ""), ("task.yml", &task(&command))],
    );
    let (code, lines) = start_submit_wait(dir.path(), repo.path(), &addr).wait();
    assert_eq!(code, Some(0), "{lines:#?}");

    for (stream, file) in [("stdout", "out.bin"), ("stderr", "err.bin")] {
        // Random bytes hold terminal controls: --raw prints them as stored.
        let got = logs(dir.path(), &addr, &["r-2", "--stream", stream, "--raw"]);
        assert!(
            got.status.success(),
            "{}",
            String::from_utf8_lossy(&got.stderr)
        );
        let emitted = std::fs::read(out.path().join(file)).unwrap();
        assert_eq!(got.stdout.len(), emitted.len(), "{stream}");
        assert_eq!(
            Sha256::digest(&got.stdout),
            Sha256::digest(&emitted),
            "{stream} differs"
        );
    }
    // Both streams really were interleaved in the stored log, not one after the other.
    let all = logs(dir.path(), &addr, &["r-2", "--raw"]);
    assert_eq!(all.stdout.len(), 2 * 5_242_880);
    drop((runner, site));
}

#[test]
fn followers_during_and_after_a_run_print_the_same_complete_log_and_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let (site, runner, addr) = site_with_runner(dir.path());
    let gate = tempfile::tempdir().unwrap();
    let go = gate.path().join("go");
    // Prints a first line, waits for the test to open the gate, prints the rest, fails.
    let command = format!(
        "echo first; while [ ! -e {go} ]; do sleep 0.05; done; seq 1 20000; echo last >&2; exit 4",
        go = go.display()
    );
    let repo = tempfile::tempdir().unwrap();
    git_repo(
        repo.path(),
        &[("tinyci.yml", ""), ("task.yml", &task(&command))],
    );
    let mut submit = start_submit_wait(dir.path(), repo.path(), &addr);
    wait_for_run(&mut submit, "r-2", "running on r1");

    let mut during_early = SiteProcess::spawn(dir.path(), &["logs", "r-2", "-f", "--addr", &addr]);
    during_early.wait_for("first");
    let mut during_late = SiteProcess::spawn(dir.path(), &["logs", "-f", "r-2", "--addr", &addr]);
    during_late.wait_for("first");
    std::fs::write(&go, "").unwrap();
    let (code, lines) = submit.wait();
    assert_eq!(code, Some(4), "{lines:#?}");

    let after = logs(dir.path(), &addr, &["r-2", "-f"]);
    let stored = logs(dir.path(), &addr, &["r-2"]);
    let expected: Vec<String> = std::iter::once("first".to_owned())
        .chain((1..=20000).map(|n| n.to_string()))
        .chain(std::iter::once("last".to_owned()))
        .collect();
    for (name, (code, lines)) in [
        ("during (early)", during_early.wait()),
        ("during (late)", during_late.wait()),
    ] {
        assert_eq!(code, Some(4), "{name}: a failed run exits non-zero");
        assert_eq!(lines, expected, "{name}");
    }
    for (name, output) in [("after", &after), ("stored", &stored)] {
        assert_eq!(output.status.code(), Some(4), "{name}");
        let text = String::from_utf8_lossy(&output.stdout);
        assert_eq!(text.lines().collect::<Vec<_>>(), expected, "{name}");
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains("run r-2 failed"), "{name}: {err}");
    }
    drop((runner, site));
}

#[test]
fn a_site_killed_and_restarted_mid_stream_with_a_torn_log_keeps_it_whole_and_the_run_on_its_runner()
{
    let dir = tempfile::tempdir().unwrap();
    init_site(dir.path(), "");
    // The runner's bundle names this address, so the restarted site must listen there again.
    let addr = format!("127.0.0.1:{}", crate::jobs::free_port());
    let site = serve_site_at(dir.path(), &addr);
    let added = run_in(
        dir.path(),
        &["runner", "add", "r1", "--queue", "default", "--addr", &addr],
    );
    assert!(added.status.success());
    let runner = start_runner(dir.path(), "r1");

    let gate = tempfile::tempdir().unwrap();
    let (streaming, go) = (gate.path().join("streaming"), gate.path().join("go"));
    // Streams a first part, waits while the test kills the site, streams the rest (into the
    // runner's buffer while the site is down), and passes.
    let command = format!(
        "seq 1 20000; touch {s}; while [ ! -e {g} ]; do sleep 0.05; done; seq 20001 200000",
        s = streaming.display(),
        g = go.display()
    );
    let repo = tempfile::tempdir().unwrap();
    git_repo(
        repo.path(),
        &[("tinyci.yml", ""), ("task.yml", &task(&command))],
    );
    let submitted = run_in(
        dir.path(),
        &["submit", repo.path().to_str().unwrap(), "--addr", &addr],
    );
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    wait_for_file(&streaming, "the run never started");
    // A follower attached before the crash rides it out too.
    let mut early = SiteProcess::spawn(
        dir.path(),
        &["logs", "r-2", "-f", "--stream", "stdout", "--addr", &addr],
    );
    early.wait_for("1");

    site.kill9();
    // A crash mid-write leaves a torn frame where the log's file ends: the restarted site
    // must serve none of it and take the runner's resend from the last whole frame.
    let log_file = dir.path().join("data/logs/0000/2.log");
    let mut torn = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_file)
        .unwrap();
    std::io::Write::write_all(&mut torn, &[0x2a, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 7]).unwrap();
    drop(torn);
    std::fs::write(&go, "").unwrap();
    let site = serve_site_at(dir.path(), &addr);

    // Follow to the end: the runner resumes its lease and resends what was not stored.
    let followed = logs(dir.path(), &addr, &["r-2", "-f", "--stream", "stdout"]);
    assert!(
        followed.status.success(),
        "{}",
        String::from_utf8_lossy(&followed.stderr)
    );
    let expected: String = (1..=200_000).map(|n| format!("{n}\n")).collect();
    let got = String::from_utf8_lossy(&followed.stdout);
    assert!(
        got == expected,
        "the log has a gap or a duplicate: {} bytes, expected {}",
        got.len(),
        expected.len()
    );
    let (code, lines) = early.wait();
    assert_eq!(code, Some(0), "the early follower failed");
    let expected_lines: Vec<String> = (1..=200_000).map(|n| n.to_string()).collect();
    assert!(
        lines == expected_lines,
        "the early follower saw a gap or a duplicate: {} lines",
        lines.len()
    );
    // Still attempt 1 on r1: the run was resumed, not rerun.
    let runs = run_in(dir.path(), &["admin", "runs", "--addr", &addr]);
    let table = String::from_utf8_lossy(&runs.stdout);
    let line = table
        .lines()
        .find(|l| l.contains("r-2"))
        .unwrap_or_default();
    assert!(line.contains("passed (exit code 0) on r1"), "{table}");
    assert!(!line.contains("attempt"), "the run was rerun: {table}");
    drop(runner);
    let (clean, _) = site.terminate();
    assert!(clean);
}

/// A job's output is untrusted: `tinyci logs` shows the terminal controls it printed (a window
/// title, the clipboard, a cursor moved up to hide a line) as text, and keeps colours (unless
/// NO_COLOR).
#[test]
fn tinyci_logs_shows_a_jobs_terminal_controls_instead_of_obeying_them() {
    let dir = tempfile::tempdir().unwrap();
    let (site, runner, addr) = site_with_runner(dir.path());
    let repo = tempfile::tempdir().unwrap();
    // printf's octal escapes: ESC is \\033, BEL \\007 (doubled once for YAML, once here).
    let command = r"printf 'FAILED\\033[1A\\033[2Kpassed \\033]0;pwned\\007\\033]52;c;ZXZpbA==\\007\\033[32mgreen\\033[0m\\n'";
    git_repo(
        repo.path(),
        &[("tinyci.yml", ""), ("task.yml", &task(command))],
    );
    let (code, lines) = start_submit_wait(dir.path(), repo.path(), &addr).wait();
    assert_eq!(code, Some(0), "{lines:#?}");
    let shown = logs(dir.path(), &addr, &["r-2", "--stream", "stdout"]);
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert_eq!(
        shown,
        "FAILED^[[1A^[[2Kpassed ^[]0;pwned^G^[]52;c;ZXZpbA==^G\u{1b}[32mgreen\u{1b}[0m\n"
    );
    // NO_COLOR: the colours go too, the rest is shown as before.
    let plain = crate::support::tinyci()
        .current_dir(dir.path())
        .args(["logs", "r-2", "--stream", "stdout", "--addr", &addr])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(plain.stdout).unwrap(),
        "FAILED^[[1A^[[2Kpassed ^[]0;pwned^G^[]52;c;ZXZpbA==^Ggreen\n"
    );
    let raw = logs(dir.path(), &addr, &["r-2", "--stream", "stdout", "--raw"]);
    assert!(
        raw.stdout.windows(9).any(|w| w == b"\x1b]0;pwned"),
        "{raw:?}"
    );
    drop((runner, site));
}
