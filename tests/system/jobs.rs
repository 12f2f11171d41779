//! Jobs end to end with real processes: a site, runners, `tinyci submit`, `tinyci cancel`.

use std::path::Path;

use nix::sys::signal::Signal;

use crate::support::{
    SiteProcess, git_repo, init_site, run_in, serve_site, serve_site_at, wait_for_file, wait_until,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads `submit --wait` progress until run `id` reports `state` (e.g. "running on r1").
pub(crate) fn wait_for_run(submit: &mut SiteProcess, id: &str, state: &str) {
    while !submit.wait_for(&format!("  {id} ")).contains(state) {}
}

/// Starts `tinyci runner --bundle <name>.bundle` (shell executor: on the host, so only
/// `local` work) and waits until it runs.
pub(crate) fn start_runner(dir: &Path, name: &str) -> SiteProcess {
    start_runner_with(dir, name, "shell")
}

/// Starts `tinyci runner --bundle <name>.bundle --executor <executor>` and waits until it
/// runs.
pub(crate) fn start_runner_with(dir: &Path, name: &str, executor: &str) -> SiteProcess {
    start_runner_args(dir, name, &["--executor", executor])
}

/// Starts `tinyci runner --bundle <name>.bundle <extra…>` and waits until it runs.
fn start_runner_args(dir: &Path, name: &str, extra: &[&str]) -> SiteProcess {
    let bundle = format!("{name}.bundle");
    let mut args = vec!["runner", "--bundle", &bundle];
    args.extend_from_slice(extra);
    let mut runner = SiteProcess::spawn(dir, &args);
    runner.wait_for(&format!("runner {name} of site alpha"));
    runner
}

/// Starts `tinyci submit <repo> --wait` against `addr`, to follow its progress lines.
pub(crate) fn start_submit_wait(dir: &Path, repo: &Path, addr: &str) -> SiteProcess {
    SiteProcess::spawn(
        dir,
        &["submit", repo.to_str().unwrap(), "--wait", "--addr", addr],
    )
}

/// A repository with three task directories of two runs each; `c/fails` exits 3.
fn three_tasks(dir: &Path) {
    let task = |first: &str, second: &str| {
        format!(
            "mountpoint: /src\nruns:\n  first:\n    command: [\"sh\", \"-c\", \"{first}\"]\n  second:\n    command: [\"sh\", \"-c\", \"{second}\"]\n"
        )
    };
    git_repo(
        dir,
        &[
            ("tinyci.yml", "queue: default\n"),
            ("a/task.yml", &task("echo a1", "echo a2")),
            ("b/task.yml", &task("echo b1", "echo b2 >&2")),
            ("c/task.yml", &task("echo c1", "echo failing; exit 3")),
        ],
    );
}

#[test]
fn the_hello_example_passes_on_the_embedded_runner() {
    let dir = tempfile::tempdir().unwrap();
    let mut site = SiteProcess::start(dir.path(), &["--listen", "127.0.0.1:0"]);
    let addr = site.wait_for("listening on ").trim().to_owned();
    site.wait_for("local runner attached");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let submit = run_in(
        dir.path(),
        &[
            "submit",
            example.to_str().unwrap(),
            "--all",
            "--wait",
            "--addr",
            &addr,
        ],
    );
    let out = text(&submit.stdout);
    assert!(submit.status.success(), "{out}\n{}", text(&submit.stderr));
    assert!(out.contains("submission s-1: 3 runs"), "{out}");
    assert!(
        out.contains(".:say-hello  queue default  passed (exit code 0) on local"),
        "{out}"
    );
    assert!(
        out.contains("greet:shout  queue default  passed (exit code 0) on local"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("submission s-1 passed"), "{out}");
    let (clean, _) = site.terminate();
    assert!(clean);
}

#[test]
fn two_runners_run_three_tasks_and_a_failure_fails_the_submission() {
    let dir = tempfile::tempdir().unwrap();
    init_site(dir.path(), "");
    let repo = tempfile::tempdir().unwrap();
    three_tasks(repo.path());
    let (site, addr) = serve_site(dir.path());
    let mut runners = Vec::new();
    for name in ["r1", "r2"] {
        let added = run_in(
            dir.path(),
            &["runner", "add", name, "--queue", "default", "--addr", &addr],
        );
        assert!(added.status.success(), "{}", text(&added.stderr));
        runners.push(start_runner(dir.path(), name));
    }
    let submit = run_in(
        dir.path(),
        &[
            "submit",
            repo.path().to_str().unwrap(),
            "--all",
            "--wait",
            "--addr",
            &addr,
            "--repo",
            "org/three",
        ],
    );
    let out = text(&submit.stdout);
    assert_eq!(submit.status.code(), Some(4), "{out}");
    assert!(out.contains("submission s-1: 6 runs"), "{out}");
    assert!(
        text(&submit.stderr).contains("error: submission s-1 failed"),
        "{}",
        text(&submit.stderr)
    );

    let runs = run_in(
        dir.path(),
        &["admin", "runs", "--repo", "org/three", "--addr", &addr],
    );
    let listed = text(&runs.stdout);
    assert_eq!(listed.lines().count(), 6, "{listed}");
    assert_eq!(
        listed
            .lines()
            .filter(|l| l.contains(" passed (exit code 0)"))
            .count(),
        5,
        "{listed}"
    );
    let failed = listed.lines().find(|l| l.contains("c:second")).unwrap();
    assert!(failed.contains("failed (exit code 3)"), "{failed}");
    // Its log was streamed and stored; `tinyci logs` prints it and exits non-zero.
    let run_id = failed.split_whitespace().nth(2).unwrap();
    let log = run_in(dir.path(), &["logs", run_id, "--addr", &addr]);
    assert_eq!(text(&log.stdout), "failing\n");
    assert_eq!(log.status.code(), Some(4));
    assert!(text(&log.stderr).contains(&format!("run {run_id} failed")));
    let passed = listed.lines().find(|l| l.contains("b:second")).unwrap();
    let log = run_in(
        dir.path(),
        &[
            "logs",
            passed.split_whitespace().nth(2).unwrap(),
            "--addr",
            &addr,
        ],
    );
    assert_eq!(text(&log.stdout), "b2\n", "stderr is kept in the log too");
    assert!(log.status.success());
    // Both runners took work, each run once.
    for runner in ["r1", "r2"] {
        assert!(
            listed.contains(&format!("on {runner}")),
            "{runner} ran nothing:\n{listed}"
        );
    }
    // Both runners are back to waiting, and the queue is empty.
    let listed = text(&run_in(dir.path(), &["admin", "runners", "--addr", &addr]).stdout);
    for runner in ["r1", "r2"] {
        let row = listed
            .lines()
            .find(|l| l.starts_with(runner))
            .unwrap_or_else(|| panic!("{listed}"));
        assert!(
            row.contains("default") && row.trim_end().ends_with('-'),
            "{row}"
        );
    }
    let queues = text(&run_in(dir.path(), &["admin", "queues", "--addr", &addr]).stdout);
    assert!(
        queues
            .lines()
            .any(|l| l.starts_with("default") && l.split_whitespace().nth(1) == Some("0")),
        "{queues}"
    );
    for runner in runners {
        let (clean, _) = runner.terminate();
        assert!(clean);
    }
    let (clean, _) = site.terminate();
    assert!(clean);
}

#[test]
fn cancel_reaches_a_running_job() {
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    // The embedded runner sandboxes its jobs: the job is found by a sleep no other process
    // on the machine does, not by a file it writes on the host.
    let sleep = format!("sleep 1000.{}", std::process::id());
    git_repo(
        repo.path(),
        &[
            ("tinyci.yml", ""),
            (
                "task.yml",
                &format!(
                    "mountpoint: /src\nruns:\n  forever:\n    command: [\"sh\", \"-c\", \"{sleep}\"]\n"
                ),
            ),
        ],
    );
    let mut site = SiteProcess::start(dir.path(), &["--listen", "127.0.0.1:0"]);
    let addr = site.wait_for("listening on ").trim().to_owned();
    site.wait_for("local runner attached");
    let mut submit = start_submit_wait(dir.path(), repo.path(), &addr);
    wait_for_run(&mut submit, "r-2", "running on local");
    let canceled = run_in(
        dir.path(),
        &[
            "cancel",
            "r-2",
            "--reason",
            "testing cancel",
            "--addr",
            &addr,
        ],
    );
    assert!(canceled.status.success(), "{}", text(&canceled.stderr));
    assert_eq!(text(&canceled.stdout), "canceled 1 run\n");
    let (code, lines) = submit.wait();
    assert_eq!(code, Some(4), "{lines:#?}");
    let last_run = lines.iter().rev().find(|l| l.contains("r-2 ")).unwrap();
    assert!(last_run.contains("canceled"), "{lines:#?}");
    // The job's processes are gone (the run is final, so nothing is left to wait for but
    // the kernel finishing the kill).
    crate::support::wait_until("the job's sleep survived the cancel", || {
        !crate::isolation::any_process_with(&sleep)
    });
    let (clean, _) = site.terminate();
    assert!(clean);
}

/// Whether any live process's command line holds `needle`.
fn a_process_mentions(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|line| String::from_utf8_lossy(&line).contains(needle))
    })
}

#[test]
fn a_run_whose_runner_is_killed_is_retried_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    // Short leases so the lost one expires quickly.
    init_site(dir.path(), "\n[queue]\nlease_seconds = 2\n");
    let repo = tempfile::tempdir().unwrap();
    let marker = repo.path().join("first-attempt");
    let pidfile = repo.path().join("first.pid");
    // The first attempt hangs (its runner is killed under it); the second passes.
    let command = format!(
        "if [ -e {m} ]; then echo second attempt; else touch {m}; echo $$ > {p}; sleep 1000; fi",
        m = marker.display(),
        p = pidfile.display()
    );
    git_repo(
        repo.path(),
        &[
            ("tinyci.yml", ""),
            (
                "task.yml",
                &format!(
                    "mountpoint: /src\nruns:\n  flaky:\n    command: [\"sh\", \"-c\", \"{command}\"]\n"
                ),
            ),
        ],
    );
    let (site, addr) = serve_site(dir.path());
    for name in ["r1", "r2"] {
        assert!(
            run_in(
                dir.path(),
                &["runner", "add", name, "--queue", "default", "--addr", &addr]
            )
            .status
            .success()
        );
    }
    // The two runners share a work root, as two runners on one host may.
    let work = dir.path().join("work");
    let work_arg = work.to_str().unwrap();
    let shared = ["--executor", "shell", "--work-dir", work_arg];
    let r1 = start_runner_args(dir.path(), "r1", &shared);
    let mut submit = start_submit_wait(dir.path(), repo.path(), &addr);
    wait_for_run(&mut submit, "r-2", "running on r1");
    // "running" is reported when the runner starts the command; kill it only once the
    // command has really begun (it writes the marker first thing).
    wait_for_file(&pidfile, "the first attempt never started");
    let first_attempt_dirs = || {
        std::fs::read_dir(&work)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("r-2-1-"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        first_attempt_dirs().len(),
        1,
        "the first attempt's work directory"
    );
    r1.kill9();
    let r2 = start_runner_args(dir.path(), "r2", &shared);
    // r1 could not clean up after itself; r2, starting in the same root, does, and says so.
    assert_eq!(first_attempt_dirs(), Vec::<String>::new());
    assert!(
        r2.stdout
            .iter()
            .any(|l| l.starts_with("removed 1 work directory left in")),
        "{:#?}",
        r2.stdout
    );
    let (code, lines) = submit.wait();
    assert_eq!(code, Some(0), "{lines:#?}");
    let last = lines.iter().rev().find(|l| l.contains("r-2 ")).unwrap();
    assert!(
        last.contains("passed (exit code 0) on r2, attempt 2"),
        "{lines:#?}"
    );
    // The first attempt died with its runner: nothing runs its command line any more (the
    // second attempt, with the same line, has ended).
    let marker = marker.display().to_string();
    wait_until(
        "the first attempt outlived its runner, killed with SIGKILL",
        || !a_process_mentions(&marker),
    );
    let (clean, _) = r2.terminate();
    assert!(clean);
    let (clean, _) = site.terminate();
    assert!(clean);
}

#[test]
fn a_killed_site_loses_no_acknowledged_run() {
    let dir = tempfile::tempdir().unwrap();
    init_site(dir.path(), "");
    let repo = tempfile::tempdir().unwrap();
    let mut task = String::from("mountpoint: /src\nruns:\n");
    for i in 0..200 {
        task.push_str(&format!("  run{i:03}:\n    command: [\"true\"]\n"));
    }
    git_repo(repo.path(), &[("tinyci.yml", ""), ("task.yml", &task)]);
    let (site, addr) = serve_site(dir.path());
    let submit = run_in(
        dir.path(),
        &["submit", repo.path().to_str().unwrap(), "--addr", &addr],
    );
    assert!(submit.status.success(), "{}", text(&submit.stderr));
    assert!(text(&submit.stdout).contains("submission s-1: 200 runs"));
    // Acknowledged: now crash the site.
    site.kill9();

    let mut site = SiteProcess::start(
        dir.path(),
        &["--config", "site.toml", "--listen", "127.0.0.1:0"],
    );
    let addr = site.wait_for("listening on ").trim().to_owned();
    site.wait_for("local runner attached");
    // Follow the submission the crash interrupted until it ends.
    let waited = run_in(dir.path(), &["wait", "s-1", "--addr", &addr]);
    assert!(
        waited.status.success(),
        "{}\n{}",
        text(&waited.stdout),
        text(&waited.stderr)
    );
    let runs = run_in(
        dir.path(),
        &["admin", "runs", "--limit", "1000", "--addr", &addr],
    );
    let listed = text(&runs.stdout);
    assert_eq!(
        listed.lines().filter(|l| l.contains(" passed ")).count(),
        200,
        "{listed}"
    );
    assert_eq!(listed.lines().count(), 200, "{listed}");
    let mut names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 200, "a run was recorded twice or lost");
    let (clean, _) = site.terminate();
    assert!(clean);
}

/// A free loopback port (bound and released; the site binds it again right away).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn runners_reconnect_after_a_site_restart_drain_on_sigterm_and_cancel_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    init_site(dir.path(), "");
    let addr = format!("127.0.0.1:{}", free_port());
    let site = serve_site_at(dir.path(), &addr);
    assert!(
        run_in(
            dir.path(),
            &["runner", "add", "r1", "--queue", "default", "--addr", &addr]
        )
        .status
        .success()
    );
    let mut runner = start_runner(dir.path(), "r1");

    // The site goes away and comes back: the runner reconnects by itself.
    let (clean, _) = site.terminate();
    assert!(clean);
    let site = serve_site_at(dir.path(), &addr);
    let repo = tempfile::tempdir().unwrap();
    let gate = repo.path().join("gate");
    git_repo(
        repo.path(),
        &[
            ("tinyci.yml", ""),
            (
                "task.yml",
                &format!(
                    "mountpoint: /src\nruns:\n  gated:\n    command: [\"sh\", \"-c\", \"echo waiting; while [ ! -e {g} ]; do sleep 0.05; done; echo released\"]\n",
                    g = gate.display()
                ),
            ),
        ],
    );
    let mut submit = start_submit_wait(dir.path(), repo.path(), &addr);
    wait_for_run(&mut submit, "r-2", "running on r1");

    // SIGTERM drains: the running job finishes (we release it), nothing new is taken.
    runner.signal(Signal::SIGTERM);
    runner.wait_for("SIGTERM: finishing current runs");
    std::fs::write(&gate, "go").unwrap();
    let (code, lines) = submit.wait();
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("r-2 ") && l.contains("passed")),
        "{lines:#?}"
    );
    let (code, _) = runner.wait();
    assert_eq!(code, Some(0));

    // SIGINT stops what is running, hands it back to the queue, and exits.
    std::fs::remove_file(&gate).unwrap();
    let runner = start_runner(dir.path(), "r1");
    let mut submit = start_submit_wait(dir.path(), repo.path(), &addr);
    wait_for_run(&mut submit, "r-4", "running on r1");
    // SIGINT stops the running job and exits; the run goes back on its queue for another
    // runner rather than failing.
    runner.signal(Signal::SIGINT);
    let (code, _) = runner.wait();
    assert_eq!(code, Some(0));
    wait_for_run(&mut submit, "r-4", "queued");
    let canceled = run_in(dir.path(), &["cancel", "s-3", "--addr", &addr]);
    assert!(canceled.status.success(), "{}", text(&canceled.stderr));
    let (code, lines) = submit.wait();
    assert_eq!(code, Some(4), "{lines:#?}");
    let (clean, _) = site.terminate();
    assert!(clean);
}

/// A job waiting for its gate file, running on runner `r1` of the site at `addr`. Holds the
/// repository the gate lives in: a retry of the job needs the gate too.
struct GatedRun {
    runner: SiteProcess,
    gate: std::path::PathBuf,
    /// Created by the job as its last step.
    ended: std::path::PathBuf,
    _repo: tempfile::TempDir,
}

/// Provisions runner `r1` at `addr`, starts it and submits a job that waits for its gate
/// file, then runs `after_gate`, prints its last line and touches its `ended` file; returns
/// once the run (`r-2`) is running, with the `submit --wait` following it.
fn start_gated_run(dir: &Path, addr: &str, after_gate: &str) -> (GatedRun, SiteProcess) {
    assert!(
        run_in(
            dir,
            &["runner", "add", "r1", "--queue", "default", "--addr", addr]
        )
        .status
        .success()
    );
    let runner = start_runner(dir, "r1");
    let repo = tempfile::tempdir().unwrap();
    let (gate, ended) = (repo.path().join("gate"), repo.path().join("ended"));
    git_repo(
        repo.path(),
        &[
            ("tinyci.yml", ""),
            (
                "task.yml",
                &format!(
                    "mountpoint: /src\nruns:\n  gated:\n    command: [\"sh\", \"-c\", \"echo waiting; while [ ! -e {g} ]; do sleep 0.05; done; {after_gate} echo released; touch {e}\"]\n",
                    g = gate.display(),
                    e = ended.display()
                ),
            ),
        ],
    );
    let mut submit = start_submit_wait(dir, repo.path(), addr);
    wait_for_run(&mut submit, "r-2", "running on r1");
    let run = GatedRun {
        runner,
        gate,
        ended,
        _repo: repo,
    };
    (run, submit)
}

/// Stops `site` for good while `run` runs, then lets the run end during the outage.
fn end_run_while_site_is_down(site: SiteProcess, submit: SiteProcess, run: &GatedRun) {
    let (clean, _) = site.terminate();
    assert!(clean);
    drop(submit);
    std::fs::write(&run.gate, "go").unwrap();
    wait_for_file(&run.ended, "the gated job to end");
}

/// A run that ends during an outage long enough for its heartbeat to fail is reported once the
/// site is back. The failed heartbeat waited for the site holding the lease's reattach lock,
/// and the run's last output needed that lock to be flushed: the slot hung for good.
#[test]
fn a_run_that_ends_during_an_outage_is_reported_when_the_site_returns() {
    let dir = tempfile::tempdir().unwrap();
    // A heartbeat every second.
    init_site(dir.path(), "\n[queue]\nlease_seconds = 3\n");
    let addr = format!("127.0.0.1:{}", free_port());
    let site = serve_site_at(dir.path(), &addr);
    // After the gate opens the job outlives a heartbeat or two (so one fails and waits for
    // the site), then prints its last line: output that can only be flushed once the site
    // is back.
    let (run, submit) = start_gated_run(dir.path(), &addr, "sleep 2;");
    end_run_while_site_is_down(site, submit, &run);

    let site = serve_site_at(dir.path(), &addr);
    let wait = SiteProcess::spawn(dir.path(), &["wait", "s-1", "--addr", &addr]);
    let (code, lines) = wait.wait_patiently();
    assert_eq!(code, Some(0), "{lines:#?}");
    let (clean, _) = site.terminate();
    assert!(clean);
}

/// A run that ends while its site is down cannot be reported until the site is back; SIGINT
/// must still stop the runner rather than leave it waiting for a site that may never return.
#[test]
fn sigint_stops_a_runner_whose_run_ended_while_its_site_was_down() {
    let dir = tempfile::tempdir().unwrap();
    init_site(dir.path(), "");
    let (site, addr) = serve_site(dir.path());
    let (run, submit) = start_gated_run(dir.path(), &addr, "");
    end_run_while_site_is_down(site, submit, &run);
    run.runner.signal(Signal::SIGINT);
    let (code, lines) = run.runner.wait_patiently();
    assert_eq!(code, Some(0), "{lines:#?}");
}

#[test]
fn a_runner_can_join_with_a_site_address_and_a_token() {
    let dir = tempfile::tempdir().unwrap();
    init_site(dir.path(), "");
    let repo = tempfile::tempdir().unwrap();
    git_repo(
        repo.path(),
        &[
            ("tinyci.yml", ""),
            (
                "task.yml",
                "mountpoint: /src\nruns:\n  hi:\n    command: [\"echo\", \"hi\"]\n",
            ),
        ],
    );
    let (site, addr) = serve_site(dir.path());
    // A grant held by this site itself: the runner connects with the site's own identity.
    let granted = run_in(
        dir.path(),
        &[
            "grant",
            "--to",
            "site:alpha",
            "--right",
            "queue:take",
            "--queue",
            "default",
            "--right",
            "logs:write",
            "--repo",
            "*",
            "--ttl",
            "1h",
            "--out",
            "self.token",
        ],
    );
    assert!(granted.status.success(), "{}", text(&granted.stderr));
    let mut runner = SiteProcess::spawn(
        dir.path(),
        &[
            "runner",
            "--site",
            &addr,
            "--token",
            "self.token",
            "--config",
            "site.toml",
            "--executor",
            "shell",
        ],
    );
    runner.wait_for("runner alpha-runner of site alpha: 1 slot(s) on default");
    let submit = run_in(
        dir.path(),
        &[
            "submit",
            repo.path().to_str().unwrap(),
            "--wait",
            "--addr",
            &addr,
        ],
    );
    let out = text(&submit.stdout);
    assert!(submit.status.success(), "{out}\n{}", text(&submit.stderr));
    assert!(
        out.contains("passed (exit code 0) on alpha-runner"),
        "{out}"
    );
    let (clean, _) = runner.terminate();
    assert!(clean);
    let (clean, _) = site.terminate();
    assert!(clean);
}
