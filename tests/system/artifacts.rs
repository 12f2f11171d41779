//! Artifacts end to end: collected on a runner, streamed through `Job.artifacts`, stored
//! content-addressed by the site, listed and downloaded with `tinyci artifacts`, refused with
//! clear reasons when oversize or escaping the workdir, and scoped to `logs:read` on the
//! run's repository.

use std::path::Path;

use sha2::{Digest, Sha256};
use tinyci_schema::{RunStatus, gateway, job, job_control};

use crate::support::{SiteProcess, git_repo, init_site, run_in, start_site};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic bytes for artifact contents: `len` of them, seeded.
fn pattern_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) as u8)
        .collect()
}

/// Submits `repo` as repository `name`; returns the ids of its runs (`r-N`).
fn submit(dir: &Path, repo: &Path, name: &str, addr: &str, wait: bool) -> (Vec<String>, String) {
    let mut args = vec![
        "submit",
        repo.to_str().unwrap(),
        "--all",
        "--addr",
        addr,
        "--repo",
        name,
    ];
    if wait {
        args.push("--wait");
    }
    let out = run_in(dir, &args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let runs = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("r-"))
        .map(str::to_owned)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    (runs, stdout)
}

/// Parses `tinyci artifacts RUN` output into (size, sha256, name) rows.
fn listed(stdout: &str) -> Vec<(u64, String, String)> {
    let mut lines = stdout.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.contains("SIZE") && header.contains("SHA256") && header.contains("NAME"),
        "{stdout}"
    );
    lines
        .map(|l| {
            let mut parts = l.split_whitespace();
            let size = parts.next().unwrap().parse().unwrap();
            let sha = parts.next().unwrap().to_owned();
            let name = parts.collect::<Vec<_>>().join(" ");
            (size, sha, name)
        })
        .collect()
}

/// A `JobControl` for a test that never gets cancelled.
struct NoCancel;

impl job_control::Server for NoCancel {}

/// Runs `f` on a current-thread runtime inside a LocalSet (capnp is `!Send`).
fn local<F: std::future::Future>(f: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, f)
}

/// Connects as the runner in `bundle` and waits for a job on `default`. Returns the job and
/// the connection (keep it alive while using the job).
async fn take_job(bundle: &Path, addr: &str) -> (job::Client, tinyci_net::ClientConnection) {
    let bundle = tinyci_site::bundle::RunnerBundle::load(bundle).unwrap();
    let site = tinyci_pki::SiteName::new(&bundle.site).unwrap();
    let (gateway, connection) = tinyci_net::dial::<gateway::Client>(
        addr,
        bundle.client_tls().unwrap(),
        &site,
        &tinyci_net::NetLimits::default(),
    )
    .await
    .unwrap();
    let mut redeem = gateway.redeem_request();
    redeem.get().set_token(&bundle.token);
    let session = redeem.send().pipeline.get_session();
    let mut worker = session.worker_request();
    worker.get().set_queue("default");
    worker.get().init_runner().set_name(&bundle.runner);
    let worker = worker.send().pipeline.get_worker();
    let mut next = worker.next_request();
    next.get().set_control(capnp_rpc::new_client(NoCancel));
    let response = next.send().promise.await.unwrap();
    let job = response.get().unwrap().get_job().unwrap();
    (job, connection)
}

/// The message of an RPC error as the site wrote it.
fn said(e: capnp::Error) -> String {
    e.extra
        .strip_prefix("remote exception: ")
        .unwrap_or(&e.extra)
        .to_owned()
}

/// What `upload_artifacts` is tested with, without the agent: a runner connection made here,
/// a workdir made here. Needs no wiring in the agent.
#[test]
fn upload_artifacts_round_trips_and_refuses_oversize_and_escaping_files() {
    let dir = tempfile::tempdir().unwrap();
    let (site, addr) = start_site(dir.path(), "\n[artifacts]\nmax_bytes = 100000\n");
    let added = run_in(
        dir.path(),
        &["runner", "add", "r1", "--queue", "default", "--addr", &addr],
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    let task = "mountpoint: /src\nartifacts: [out/*.bin, report.txt]\nruns:\n  build:\n    command: [\"true\"]\n";
    let repo_a = tempfile::tempdir().unwrap();
    git_repo(
        repo_a.path(),
        &[("tinyci.yml", "queue: default\n"), ("task.yml", task)],
    );
    let (runs_a, _) = submit(dir.path(), repo_a.path(), "org/a", &addr, false);
    assert_eq!(runs_a.len(), 1, "{runs_a:?}");
    let run_a = runs_a[0].clone();
    let repo_b = tempfile::tempdir().unwrap();
    git_repo(
        repo_b.path(),
        &[("tinyci.yml", "queue: default\n"), ("task.yml", task)],
    );
    let (runs_b, _) = submit(dir.path(), repo_b.path(), "org/b", &addr, false);
    let run_b = runs_b[0].clone();

    // What the "command" left behind: two artifacts (one over a 64 KiB chunk), a report, one
    // over the site's 100000-byte limit, and a symlink out of the source tree.
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("src");
    std::fs::create_dir_all(root.join("out")).unwrap();
    let a_bin = pattern_bytes(70_000, 1);
    let b_bin = pattern_bytes(10, 2);
    let report_txt = b"all good\n".to_vec();
    std::fs::write(root.join("out/a.bin"), &a_bin).unwrap();
    std::fs::write(root.join("out/b.bin"), &b_bin).unwrap();
    std::fs::write(root.join("report.txt"), &report_txt).unwrap();
    std::fs::write(root.join("out/big.bin"), pattern_bytes(150_000, 3)).unwrap();
    std::fs::write(work.path().join("secret"), "not yours").unwrap();
    std::os::unix::fs::symlink(work.path().join("secret"), root.join("out/leak.bin")).unwrap();

    let report_lines = local(async {
        let (job, _connection) = take_job(&dir.path().join("r1.bundle"), &addr).await;
        let spec = job.spec_request().send().promise.await.unwrap();
        let spec = spec.get().unwrap().get_spec().unwrap();
        assert_eq!(
            spec.get_run().unwrap().get_id().unwrap().to_str().unwrap(),
            run_a
        );
        let mut patterns: Vec<String> = spec
            .get_artifacts()
            .unwrap()
            .iter()
            .map(|p| p.unwrap().to_string().unwrap())
            .collect();
        assert_eq!(patterns, ["out/*.bin", "report.txt"]);
        job.started_request().send().promise.await.unwrap();

        // task.yml refuses these at parse time; the runner refuses them too.
        patterns.extend([
            "../outside".into(),
            "/etc/passwd".into(),
            "logs/*.txt".into(),
        ]);
        let report = tinyci_runner::upload_artifacts(&job, &root, &root, &patterns).await;
        let uploaded: Vec<(String, u64, String)> = report
            .uploaded
            .iter()
            .map(|a| (a.name.clone(), a.size, hex(&a.sha256)))
            .collect();
        assert_eq!(
            uploaded,
            [
                ("out/a.bin".into(), 70_000, hex(&Sha256::digest(&a_bin))),
                ("out/b.bin".into(), 10, hex(&Sha256::digest(&b_bin))),
                ("report.txt".into(), 9, hex(&Sha256::digest(&report_txt))),
            ]
        );
        let reason = |name: &str| {
            report
                .refused
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.reason.clone())
                .unwrap_or_else(|| panic!("{name} was not refused: {report:#?}"))
        };
        assert_eq!(
            reason("out/big.bin"),
            "it is 150000 bytes, over this site's limit of 100000 bytes per artifact \
             (artifacts.max_bytes in site.toml)"
        );
        assert!(
            reason("out/leak.bin").contains("is a symlink to")
                && reason("out/leak.bin").contains("outside the run's source tree"),
            "{report:#?}"
        );
        assert!(reason("../outside").contains("'..' component"));
        assert!(reason("/etc/passwd").contains("absolute path"));
        assert_eq!(reason("logs/*.txt"), "nothing matches this pattern");
        assert_eq!(report.refused.len(), 5, "{report:#?}");

        // The AssetSink itself, spoken to directly, refuses what a runner must not send.
        let sink = job
            .artifacts_request()
            .send()
            .promise
            .await
            .unwrap()
            .get()
            .unwrap()
            .get_sink()
            .unwrap();
        let put = |name: &str, size: u64| {
            let mut put = sink.put_request();
            put.get().set_name(name);
            put.get().set_size(size);
            put.send().promise
        };
        for (name, why) in [
            ("../outside", "the name holds a '..' component"),
            ("/etc/passwd", "the name is an absolute path"),
            ("a\\b", "the name holds a backslash"),
            ("", "the name is empty"),
        ] {
            let error = said(put(name, 1).await.err().unwrap());
            assert!(
                error.starts_with(&format!("artifact name {name:?} refused: {why}")),
                "{error}"
            );
        }
        // More bytes than declared: refused, and said again at finish.
        let bytes = put("extra.bin", 3)
            .await
            .unwrap()
            .get()
            .unwrap()
            .get_sink()
            .unwrap();
        let mut write = bytes.write_request();
        write.get().set_chunk(b"abcd");
        let _ = write.send().await;
        let mut finish = bytes.finish_request();
        finish.get().set_sha256(&Sha256::digest(b"abcd"));
        let error = said(finish.send().promise.await.err().unwrap());
        assert_eq!(
            error,
            "artifact \"extra.bin\" refused: more than the 3 bytes declared at put arrived"
        );
        // A hash that does not match the bytes.
        let bytes = put("bad.bin", 3)
            .await
            .unwrap()
            .get()
            .unwrap()
            .get_sink()
            .unwrap();
        let mut write = bytes.write_request();
        write.get().set_chunk(b"abc");
        write.send().await.unwrap();
        let mut finish = bytes.finish_request();
        finish.get().set_sha256(&[0u8; 32]);
        let error = said(finish.send().promise.await.err().unwrap());
        assert_eq!(
            error,
            "artifact \"bad.bin\" refused: SHA-256 mismatch (corrupted in transit)"
        );

        let mut complete = job.complete_request();
        complete.get().init_outcome().set_status(RunStatus::Passed);
        complete.send().promise.await.unwrap();
        // Once the run ended, its lease takes no more artifacts.
        let error = said(put("late.bin", 1).await.err().unwrap());
        assert!(error.contains("the run already ended (passed)"), "{error}");
        report.lines()
    });
    assert!(
        report_lines
            .iter()
            .any(|l| l.starts_with("artifact \"out/a.bin\" uploaded: 70000 bytes, sha256 ")),
        "{report_lines:#?}"
    );

    // Listed, with sizes and hashes; the refused and failed uploads are not.
    let list = run_in(dir.path(), &["artifacts", &run_a, "--addr", &addr]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let rows = listed(&text(&list.stdout));
    assert_eq!(
        rows,
        [
            (70_000, hex(&Sha256::digest(&a_bin)), "out/a.bin".to_owned()),
            (10, hex(&Sha256::digest(&b_bin)), "out/b.bin".to_owned()),
            (
                9,
                hex(&Sha256::digest(&report_txt)),
                "report.txt".to_owned()
            ),
        ]
    );
    // Downloaded byte for byte, into a file and to standard output.
    let get = run_in(
        dir.path(),
        &[
            "artifacts",
            &run_a,
            "--get",
            "out/a.bin",
            "-o",
            "a.bin",
            "--addr",
            &addr,
        ],
    );
    assert!(get.status.success(), "{}", text(&get.stderr));
    let downloaded = std::fs::read(dir.path().join("a.bin")).unwrap();
    assert_eq!(Sha256::digest(&downloaded), Sha256::digest(&a_bin));
    assert!(
        text(&get.stderr).contains("wrote a.bin (70000 bytes, sha256 "),
        "{}",
        text(&get.stderr)
    );
    let piped = run_in(
        dir.path(),
        &[
            "artifacts",
            &run_a,
            "--get",
            "report.txt",
            "-o",
            "-",
            "--addr",
            &addr,
        ],
    );
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    assert_eq!(piped.stdout, report_txt);
    // Content-addressed: one blob per distinct content.
    let blobs = std::fs::read_dir(dir.path().join("data/artifacts"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_file())
        .count();
    assert_eq!(blobs, 3);

    let missing = run_in(
        dir.path(),
        &["artifacts", &run_a, "--get", "out/big.bin", "--addr", &addr],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains(&format!(
            "run {run_a} has no artifact \"out/big.bin\" (it has: out/a.bin, out/b.bin, report.txt)"
        )),
        "{}",
        text(&missing.stderr)
    );
    let none = run_in(dir.path(), &["artifacts", &run_b, "--addr", &addr]);
    assert!(none.status.success(), "{}", text(&none.stderr));
    assert_eq!(
        text(&none.stderr),
        format!("run {run_b} has no artifacts\n")
    );

    // assets:read is scoped to the run's repository: a grant for org/b cannot see org/a's run.
    for (repo, file) in [("org/a", "a.token"), ("org/b", "b.token")] {
        let minted = run_in(
            dir.path(),
            &[
                "grant",
                "--to",
                "admin:admin",
                "--right",
                "logs:read",
                "--right",
                "assets:read",
                "--repo",
                repo,
                "--no-expiry",
                "--out",
                file,
            ],
        );
        assert!(minted.status.success(), "{}", text(&minted.stderr));
    }
    let allowed = run_in(
        dir.path(),
        &["artifacts", &run_a, "--token", "a.token", "--addr", &addr],
    );
    assert!(allowed.status.success(), "{}", text(&allowed.stderr));
    assert_eq!(listed(&text(&allowed.stdout)), rows);
    let denied = run_in(
        dir.path(),
        &["artifacts", &run_a, "--token", "b.token", "--addr", &addr],
    );
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        text(&denied.stderr).contains(&format!("no run \"{run_a}\" in repository org/b")),
        "{}",
        text(&denied.stderr)
    );
    let denied_get = run_in(
        dir.path(),
        &[
            "artifacts",
            &run_a,
            "--get",
            "out/a.bin",
            "--token",
            "b.token",
            "--addr",
            &addr,
        ],
    );
    assert_eq!(denied_get.status.code(), Some(1));
    // Asking for the other repository by name is refused when the reader is made.
    let widened = run_in(
        dir.path(),
        &[
            "artifacts",
            &run_a,
            "--token",
            "b.token",
            "--repo",
            "org/a",
            "--addr",
            &addr,
        ],
    );
    assert_eq!(widened.status.code(), Some(1));
    assert!(
        text(&widened.stderr).contains("logs:read"),
        "{}",
        text(&widened.stderr)
    );
    let (clean, _) = site.terminate();
    assert!(clean);
}

/// The whole path through a real shell runner: the task's command writes the files, the
/// runner uploads them after the command exits and logs what it refused.
///
/// Needs the runner agent to call `upload_artifacts` after the command and write the
/// report's lines into the run log (crates/tinyci-runner/src/agent.rs).
#[test]
fn a_shell_runner_uploads_what_the_command_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let (site, addr) = start_site(dir.path(), "\n[artifacts]\nmax_bytes = 200000\n");
    let added = run_in(
        dir.path(),
        &["runner", "add", "r1", "--queue", "default", "--addr", &addr],
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    let command = "mkdir -p out && i=0; while [ $i -lt 10000 ]; do echo line $i; i=$((i+1)); \
                   done > out/one.bin && echo done > report.txt && \
                   head -c 300000 /dev/zero > out/huge.bin && ln -s /etc/passwd out/escape.bin";
    let repo = tempfile::tempdir().unwrap();
    git_repo(
        repo.path(),
        &[
            ("tinyci.yml", "queue: default\n"),
            (
                "task.yml",
                &format!(
                    "mountpoint: /src\nartifacts: [out/*.bin, report.txt]\nruns:\n  build:\n    command: [\"sh\", \"-c\", \"{command}\"]\n"
                ),
            ),
        ],
    );
    let mut runner = SiteProcess::spawn(
        dir.path(),
        &["runner", "--bundle", "r1.bundle", "--executor", "shell"],
    );
    runner.wait_for("runner r1 of site alpha");
    let (runs, out) = submit(dir.path(), repo.path(), "org/a", &addr, true);
    assert!(out.contains("passed"), "{out}");
    let run = runs[0].clone();

    let expected: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
    let list = run_in(dir.path(), &["artifacts", &run, "--addr", &addr]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert!(
        !text(&list.stderr).contains("has no artifacts"),
        "the runner uploaded nothing: does the agent call upload_run_artifacts after the \
         command?"
    );
    let rows = listed(&text(&list.stdout));
    assert_eq!(
        rows,
        [
            (
                expected.len() as u64,
                hex(&Sha256::digest(expected.as_bytes())),
                "out/one.bin".to_owned()
            ),
            (5, hex(&Sha256::digest(b"done\n")), "report.txt".to_owned()),
        ]
    );
    let get = run_in(
        dir.path(),
        &[
            "artifacts",
            &run,
            "--get",
            "out/one.bin",
            "-o",
            "one.bin",
            "--addr",
            &addr,
        ],
    );
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert_eq!(
        Sha256::digest(std::fs::read(dir.path().join("one.bin")).unwrap()),
        Sha256::digest(expected.as_bytes())
    );
    // The refusals are in the run's log, in words.
    let log = text(&run_in(dir.path(), &["logs", &run, "--addr", &addr]).stdout);
    assert!(
        log.contains(
            "artifact \"out/huge.bin\" refused: it is 300000 bytes, over this site's limit of \
             200000 bytes per artifact"
        ),
        "{log}"
    );
    assert!(
        log.contains("artifact \"out/escape.bin\" refused: it is a symlink to a path outside the run's source tree"),
        "{log}"
    );
    let (clean, _) = runner.terminate();
    assert!(clean);
    let (clean, _) = site.terminate();
    assert!(clean);
}

#[test]
fn an_artifact_limit_out_of_range_is_named() {
    let dir = tempfile::tempdir().unwrap();
    init_site(dir.path(), "\n[artifacts]\nmax_bytes = 0\n");
    let out = run_in(dir.path(), &["site", "up", "--config", "site.toml"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        text(&out.stderr),
        "error: invalid config site.toml: artifacts.max_bytes: 0 is out of range \
         (1-1073741824, the per-run total)\n"
    );
}
