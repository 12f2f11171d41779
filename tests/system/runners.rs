//! `tinyci runner add`: a bundle is all a runner host needs.

use std::os::unix::fs::PermissionsExt;

use tinyci_net::NetLimits;
use tinyci_pki::{Credentials, SiteName};
use tinyci_schema::{gateway, session};
use tinyci_site::bundle::RunnerBundle;

use crate::support::{SiteProcess, run_in, serve_site_at};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Dials the site with only what the bundle holds, redeems its token and asks for workers.
async fn ask_workers(bundle: &RunnerBundle, queues: &[&str]) -> Vec<Result<(), String>> {
    let site = SiteName::new(&bundle.site).unwrap();
    let creds = Credentials::from_pem(&bundle.cert, &bundle.key).unwrap();
    let tls = tinyci_pki::tls::client_config(&creds, &bundle.ca_cert, site.clone()).unwrap();
    let (gateway, _conn) = tinyci_net::dial::<gateway::Client>(
        &bundle.addresses[0],
        tls,
        &site,
        &NetLimits::default(),
    )
    .await
    .unwrap();
    let mut redeem = gateway.redeem_request();
    redeem.get().set_token(&bundle.token);
    let session: session::Client = redeem.send().pipeline.get_session();
    let mut out = Vec::new();
    for queue in queues {
        let mut ask = session.worker_request();
        ask.get().set_queue(queue);
        ask.get().init_runner().set_name(&bundle.runner);
        out.push(
            ask.send()
                .promise
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    }
    out
}

#[test]
fn a_bundle_is_all_a_runner_needs_and_only_reaches_its_queues() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        run_in(dir.path(), &["site", "init", "--name", "alpha"])
            .status
            .success()
    );
    let mut site = SiteProcess::start(
        dir.path(),
        &["--config", "site.toml", "--listen", "127.0.0.1:0"],
    );
    let addr = site.wait_for("listening on ").trim().to_owned();

    let added = run_in(
        dir.path(),
        &["runner", "add", "r1", "--queue", "a", "--addr", &addr],
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert!(text(&added.stdout).contains("runner r1 may take jobs from a at site alpha"));
    let path = dir.path().join("r1.bundle");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let again = run_in(
        dir.path(),
        &["runner", "add", "r1", "--queue", "a", "--addr", &addr],
    );
    assert_eq!(again.status.code(), Some(3));
    assert!(text(&again.stderr).contains("refusing to overwrite a bundle"));

    let bundle = RunnerBundle::load(&path).unwrap();
    assert_eq!(bundle.runner, "r1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results =
        tokio::task::LocalSet::new().block_on(&runtime, ask_workers(&bundle, &["a", "b"]));
    assert_eq!(results[0], Ok(()));
    let denied = results[1].as_ref().unwrap_err();
    assert!(
        denied.contains("denied queue:take on queue b: queue:take is limited to queue a"),
        "{denied}"
    );

    // The grant is listed like any other.
    let listed = run_in(dir.path(), &["token", "list", "--addr", &addr]);
    assert!(
        text(&listed.stdout)
            .lines()
            .any(|l| l.contains("runner:r1") && l.contains("tinyci runner add r1"))
    );
    let (clean, _) = site.terminate();
    assert!(clean);
}

fn json(dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = run_in(dir, args);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `tinyci runner add NAME --queue default` plus `extra`; returns what it printed.
fn add_runner(dir: &std::path::Path, addr: &str, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["runner", "add", name, "--queue", "default", "--addr", addr];
    args.extend_from_slice(extra);
    let added = run_in(dir, &args);
    assert!(added.status.success(), "{}", text(&added.stderr));
    text(&added.stdout)
}

/// Commits `files` to a new repository and submits every task of it to the site at `addr`.
fn submit_all(dir: &std::path::Path, addr: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    crate::support::git_repo(repo.path(), files);
    let submitted = run_in(
        dir,
        &[
            "submit",
            repo.path().to_str().unwrap(),
            "--all",
            "--addr",
            addr,
        ],
    );
    assert!(submitted.status.success(), "{}", text(&submitted.stderr));
    repo
}

/// A repository with one task of two runs that pass at once.
const TWO_RUNS: &[(&str, &str)] = &[
    ("tinyci.yml", "queue: default\n"),
    (
        "t/task.yml",
        "mountpoint: /src\nruns:\n  a:\n    command: [\"true\"]\n  b:\n    command: [\"true\"]\n",
    ),
];

/// Every run's status, sorted.
fn run_statuses(dir: &std::path::Path, addr: &str) -> Vec<String> {
    let runs = json(dir, &["admin", "runs", "--json", "--addr", addr]);
    let mut statuses: Vec<String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect();
    statuses.sort();
    statuses
}

/// Starts `tinyci runner --bundle BUNDLE --executor shell` plus `extra`.
fn spawn_runner(dir: &std::path::Path, bundle: &str, extra: &[&str]) -> SiteProcess {
    let mut args = vec!["runner", "--bundle", bundle, "--executor", "shell"];
    args.extend_from_slice(extra);
    SiteProcess::spawn(dir, &args)
}

/// Runs route by what runners advertise: an image needs a container executor (a shell runner
/// would run the command on its host, ignoring the image), and a task's `labels:` need a
/// runner with every one of them. A run no connected runner may take waits and says why.
#[test]
fn an_image_never_lands_on_a_shell_runner_and_labels_route() {
    let dir = tempfile::tempdir().unwrap();
    let (site, addr) = crate::support::start_site(dir.path(), "");
    for name in ["plain", "gpu"] {
        add_runner(dir.path(), &addr, name, &[]);
    }
    let plain = crate::jobs::start_runner(dir.path(), "plain");
    let mut gpu = spawn_runner(
        dir.path(),
        "gpu.bundle",
        &["--label", "gpu", "--label", "arch=amd64"],
    );
    assert!(
        gpu.wait_for("runner gpu of site alpha")
            .contains("labels: arch=amd64 gpu"),
        "the runner says its labels"
    );
    let run = |command: &str| format!("    command: [\"sh\", \"-c\", \"{command}\"]\n");
    let _repo = submit_all(
        dir.path(),
        &addr,
        &[
            ("tinyci.yml", "queue: default\n"),
            (
                "boxed/task.yml",
                &format!(
                    "mountpoint: /src\nruns:\n  in-image:\n{}    image: tinyci-test/busybox:1\n",
                    run("echo ran")
                ),
            ),
            (
                "train/task.yml",
                &format!(
                    "mountpoint: /src\nlabels: [gpu]\nruns:\n  fit:\n{}  cpu-only:\n{}    labels: []\n",
                    run("echo trained"),
                    run("echo anywhere")
                ),
            ),
            (
                "arm/task.yml",
                &format!(
                    "mountpoint: /src\nruns:\n  build:\n{}    labels: [gpu, arch=arm64]\n",
                    run("echo arm")
                ),
            ),
        ],
    );
    let runs = || json(dir.path(), &["admin", "runs", "--json", "--addr", &addr]);
    let by_name = |runs: &serde_json::Value, name: &str| {
        runs.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no run {name}: {runs}"))
            .clone()
    };
    crate::support::wait_until("the runs a runner may take finish", || {
        let runs = runs();
        ["fit", "cpu-only"]
            .iter()
            .all(|n| by_name(&runs, n)["status"] == "passed")
    });
    let runs = runs();
    assert_eq!(by_name(&runs, "fit")["runner"], "gpu", "{runs}");
    for (name, waits_for) in [
        (
            "in-image",
            "waiting for a runner with a container executor (the run names an image) on queue default",
        ),
        (
            "build",
            "waiting for any runner labelled arch=arm64, gpu on queue default",
        ),
    ] {
        let run = by_name(&runs, name);
        assert_eq!(run["status"], "queued", "{run}");
        let waiting = run["waiting"].as_str().unwrap();
        assert!(waiting.contains(waits_for), "{waiting}");
        assert!(
            waiting.contains("connected: gpu (host, labels: arch=amd64 gpu), plain (host)"),
            "{waiting}"
        );
    }

    // The pool as operators see it.
    let runners = json(dir.path(), &["admin", "runners", "--json", "--addr", &addr]);
    let gpu_row = runners
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "gpu")
        .unwrap();
    assert_eq!(gpu_row["labels"], serde_json::json!(["arch=amd64", "gpu"]));
    assert_eq!(gpu_row["executors"], serde_json::json!(["shell"]));
    assert_eq!(gpu_row["isolation"], "host, labels: arch=amd64 gpu");
    assert_eq!(gpu_row["identity"], "tinyci://alpha/runner/gpu");
    assert_eq!(gpu_row["slots"], 1);
    assert!(gpu_row["connected_at"].as_i64().unwrap() > 0, "{gpu_row}");
    assert!(
        !gpu_row["hostname"].as_str().unwrap().is_empty(),
        "{gpu_row}"
    );
    assert_eq!(gpu_row["version"], env!("CARGO_PKG_VERSION"));

    let canceled = run_in(dir.path(), &["cancel", "s-1", "--addr", &addr]);
    assert!(canceled.status.success(), "{}", text(&canceled.stderr));
    for process in [plain, gpu, site] {
        let (clean, _) = process.terminate();
        assert!(clean);
    }
}

/// `runner --once` takes one job, finishes it, and exits; the rest stays queued.
#[test]
fn a_once_runner_exits_after_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let (site, addr) = crate::support::start_site(dir.path(), "");
    add_runner(dir.path(), &addr, "one", &[]);
    let _repo = submit_all(dir.path(), &addr, TWO_RUNS);
    let mut once = spawn_runner(dir.path(), "one.bundle", &["--once"]);
    assert!(
        once.wait_for("runner one of site alpha")
            .contains("one job, then exit")
    );
    let (code, _) = once.wait();
    assert_eq!(code, Some(0), "a once runner exits cleanly after its job");
    assert_eq!(run_statuses(dir.path(), &addr), ["passed", "queued"]);
    let (clean, _) = site.terminate();
    assert!(clean);
}

/// Pause keeps a runner connected and leases it nothing; drain lets it finish what it holds,
/// leases it nothing, then tells it to go. Both survive a site restart, and resume undoes
/// them.
#[test]
fn drain_and_pause_are_distinct_and_survive_a_site_restart() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::init_site(dir.path(), "");
    let addr = format!("127.0.0.1:{}", crate::jobs::free_port());
    let site = serve_site_at(dir.path(), &addr);
    for name in ["held", "drained"] {
        add_runner(dir.path(), &addr, name, &[]);
    }
    let admin = |args: &[&str]| {
        let mut full = vec!["admin", "runners"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--addr", &addr]);
        let out = run_in(dir.path(), &full);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    };
    let row = |name: &str| {
        let runners = json(dir.path(), &["admin", "runners", "--json", "--addr", &addr]);
        runners
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no runner {name}: {runners}"))
    };
    // "drained" takes a run that holds until we let it go; then it is drained.
    let marks = tempfile::tempdir().unwrap();
    let (started, gate) = (marks.path().join("started"), marks.path().join("gate"));
    let held_task = format!(
        "mountpoint: /src\nruns:\n  held:\n    command: [\"sh\", \"-c\", \"touch {s}; while [ ! -e {g} ]; do sleep 0.05; done\"]\n",
        s = started.display(),
        g = gate.display()
    );
    let drained = crate::jobs::start_runner(dir.path(), "drained");
    let _repo = submit_all(
        dir.path(),
        &addr,
        &[
            ("tinyci.yml", "queue: default\n"),
            ("hold/task.yml", &held_task),
        ],
    );
    crate::support::wait_for_file(&started, "the held run starts on runner drained");
    admin(&["drain", "drained"]);
    let held_runner = crate::jobs::start_runner(dir.path(), "held");
    admin(&["pause", "held"]);
    assert_eq!(row("drained")["draining"], true);
    assert_eq!(row("drained")["runs"].as_array().unwrap().len(), 1);
    assert_eq!(row("held")["paused"], true);

    // The site restarts: both settings hold, and the draining runner resumes its run.
    let (clean, _) = site.terminate();
    assert!(clean);
    let site = serve_site_at(dir.path(), &addr);
    crate::support::wait_until("both runners are back", || {
        let runners = json(dir.path(), &["admin", "runners", "--json", "--addr", &addr]);
        runners
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["connected_at"].as_i64().unwrap_or(0) > 0)
            .count()
            == 2
    });
    assert_eq!(row("drained")["draining"], true);
    assert_eq!(row("held")["paused"], true);
    // New work goes to neither.
    let _more = submit_all(
        dir.path(),
        &addr,
        &[
            ("tinyci.yml", "queue: default\n"),
            (
                "t/task.yml",
                "mountpoint: /src\nruns:\n  later:\n    command: [\"true\"]\n",
            ),
        ],
    );
    let queues = json(dir.path(), &["admin", "queues", "--json", "--addr", &addr]);
    assert_eq!(queues[0]["depth"], 1, "{queues}");

    // The held run finishes; the drained runner is then told to go and exits.
    std::fs::write(&gate, "go").unwrap();
    let (code, lines) = drained.wait();
    assert_ne!(code, Some(0), "a drained runner stops: {lines:#?}");
    let runs = json(dir.path(), &["admin", "runs", "--json", "--addr", &addr]);
    let held_run = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "held")
        .unwrap();
    assert_eq!(held_run["status"], "passed", "{runs}");
    // Started again, it is refused until resumed.
    let again = spawn_runner(dir.path(), "drained.bundle", &[]);
    let (code, _) = again.wait();
    assert_ne!(code, Some(0));

    // Resumed, the paused runner takes the waiting run.
    admin(&["resume", "held"]);
    crate::support::wait_until("the resumed runner takes the waiting run", || {
        let runs = json(dir.path(), &["admin", "runs", "--json", "--addr", &addr]);
        runs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "later" && r["status"] == "passed")
    });
    for process in [held_runner, site] {
        let (clean, _) = process.terminate();
        assert!(clean);
    }
}

/// An ephemeral bundle's grant takes one job, even when its runner asks with two slots at
/// once, and is revoked when that job ends; `runner --once` with another one takes the next
/// job and exits cleanly.
#[test]
fn an_ephemeral_bundle_takes_one_job_and_its_grant_dies_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (site, addr) = crate::support::start_site(dir.path(), "");
    for name in ["eph1", "eph2"] {
        let said = add_runner(dir.path(), &addr, name, &["--ephemeral"]);
        assert!(said.contains("one job (single-use"), "{said}");
    }
    let _repo = submit_all(dir.path(), &addr, TWO_RUNS);
    let statuses = || run_statuses(dir.path(), &addr);
    let grant_status = |holder: &str| {
        let grants = json(dir.path(), &["token", "list", "--json", "--addr", &addr]);
        grants
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["holder"] == holder)
            .map(|g| g["status"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no grant of {holder}: {grants}"))
    };

    // Two slots asking at once get one job between them; when it ends, the grant is revoked
    // and the runner, refused, stops.
    let greedy = spawn_runner(dir.path(), "eph1.bundle", &["--jobs", "2"]);
    let (code, lines) = greedy.wait();
    assert_ne!(code, Some(0), "a runner whose grant was revoked stops");
    assert_eq!(statuses(), ["passed", "queued"], "{lines:#?}");
    assert_eq!(grant_status("runner:eph1"), "revoked");
    // The other slot never held the other run even for a moment: no attempt was spent on it.
    let runs = json(dir.path(), &["admin", "runs", "--json", "--addr", &addr]);
    let waiting = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "queued")
        .unwrap();
    assert_eq!(waiting["attempt"], 0, "{waiting}");
    let again = spawn_runner(dir.path(), "eph1.bundle", &["--once"]);
    let (code, _) = again.wait();
    assert_ne!(code, Some(0), "a spent single-use bundle is refused");
    assert_eq!(statuses(), ["passed", "queued"]);

    // The usual way: --once with a fresh ephemeral bundle takes the next job and exits 0.
    let once = spawn_runner(dir.path(), "eph2.bundle", &["--once"]);
    let (code, _) = once.wait();
    assert_eq!(code, Some(0));
    assert_eq!(statuses(), ["passed", "passed"]);
    crate::support::wait_until("the second grant is revoked once its job ended", || {
        grant_status("runner:eph2") == "revoked"
    });
    let (clean, _) = site.terminate();
    assert!(clean);
}
