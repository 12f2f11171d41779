//! Two real sites, alpha and beta, in separate processes on loopback, trusting each other
//! only through the CA pins under their `federation/` directories, and acting at each other
//! only through grants.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::jobs::start_runner_with;
use crate::support::{SiteProcess, git_repo, run_in, wait_for_file, wait_until};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A site initialized in its own directory and serving on an ephemeral port.
struct Site {
    name: &'static str,
    dir: tempfile::TempDir,
    /// Kept running for the test; killed on drop.
    process: Option<SiteProcess>,
    addr: String,
}

impl Site {
    fn start(name: &'static str) -> Self {
        Self::start_on(name, "127.0.0.1:0")
    }

    fn start_on(name: &'static str, listen: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let init = run_in(dir.path(), &["site", "init", "--name", name]);
        assert!(init.status.success(), "{}", text(&init.stderr));
        let (process, addr) = Self::serve(dir.path(), listen);
        Self {
            name,
            dir,
            process: Some(process),
            addr,
        }
    }

    fn serve(dir: &Path, listen: &str) -> (SiteProcess, String) {
        let mut process = SiteProcess::start(
            dir,
            &[
                "--config",
                "site.toml",
                "--listen",
                listen,
                "--no-local-runner",
            ],
        );
        let addr = process.wait_for("listening on ").trim().to_owned();
        (process, addr)
    }

    /// Kills the site (SIGKILL, a crash) and starts it again on the same address.
    fn crash_and_restart(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill9();
        }
        let (process, addr) = Self::serve(self.dir.path(), &self.addr);
        assert_eq!(addr, self.addr);
        self.process = Some(process);
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `tinyci args…` here, against this site's address where the command takes one.
    fn run(&self, args: &[&str]) -> std::process::Output {
        run_in(self.path(), args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tinyci {args:?} in {}: {}",
            self.name,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "tinyci {args:?} in {} should fail; printed {}",
            self.name,
            text(&out.stdout)
        );
        text(&out.stderr)
    }

    /// Pins `other` here (its CA and address) and tells this running site.
    fn pin(&self, other: &Site) {
        let ca = other.path().join("certs/ca.crt");
        let out = self.ok(&[
            "federation",
            "add",
            other.name,
            "--ca",
            ca.to_str().unwrap(),
            "--addr",
            &other.addr,
            "--site-addr",
            &self.addr,
        ]);
        assert!(
            out.contains(&format!("pinned partner {}", other.name)),
            "{out}"
        );
    }

    /// Starts this site's runner at partner `site` with `token`, as `tinyci runner --site`.
    fn runner_at(&self, site: &Site, token: &str) -> SiteProcess {
        let mut runner = SiteProcess::spawn(
            self.path(),
            &[
                "runner",
                "--site",
                site.name,
                "--token",
                token,
                "--executor",
                "shell",
            ],
        );
        runner.wait_for(&format!(
            "runner {}-runner of site {}",
            self.name, site.name
        ));
        runner
    }

    /// Grants `dest` (a partner) `queue:take` on queue gpu here, for `ttl`; the token is
    /// written as `gpu.token` in `dest`'s directory.
    fn grant_gpu(&self, dest: &Site, ttl: &str) -> PathBuf {
        let holder = format!("site:{}", dest.name);
        self.grant(
            dest,
            "gpu.token",
            &[
                "--to",
                &holder,
                "--right",
                "queue:take",
                "--queue",
                "gpu",
                // A runner streams the logs of what it takes.
                "--right",
                "logs:write",
                "--repo",
                "*",
                "--ttl",
                ttl,
            ],
        )
    }

    /// Mints a grant here for `holder`, written into `dest`'s directory; returns its path.
    fn grant(&self, dest: &Site, file: &str, args: &[&str]) -> PathBuf {
        let out = dest.path().join(file);
        let mut full = vec!["grant", "--out", out.to_str().unwrap()];
        full.extend_from_slice(args);
        self.ok(&full);
        out
    }
}

/// Alpha and beta, each pinning the other.
fn two_sites() -> (Site, Site) {
    let alpha = Site::start("alpha");
    let beta = Site::start("beta");
    alpha.pin(&beta);
    beta.pin(&alpha);
    (alpha, beta)
}

fn repo_with(dir: &Path, queue: &str, command: &str) {
    git_repo(
        dir,
        &[
            ("tinyci.yml", &format!("queue: {queue}\n")),
            (
                "task.yml",
                &format!(
                    "mountpoint: /src\nruns:\n  check:\n    command: [\"sh\", \"-c\", {command:?}]\n"
                ),
            ),
        ],
    );
}

/// The first run id a `submit` printed (`  r-2 …`).
fn first_run(submitted: &str) -> String {
    submitted
        .lines()
        .find_map(|l| l.trim().strip_prefix("r-"))
        .map(|rest| format!("r-{}", rest.split_whitespace().next().unwrap()))
        .unwrap_or_else(|| panic!("no run in {submitted}"))
}

#[test]
fn a_partner_submits_and_follows_logs_only_where_its_grant_allows() {
    let (alpha, beta) = two_sites();
    alpha.ok(&[
        "runner",
        "add",
        "r1",
        "--queue",
        "default",
        "--addr",
        &alpha.addr,
    ]);
    // Partner work needs a sandbox (or a container) by default.
    let _runner = start_runner_with(alpha.path(), "r1", "sandbox");
    let token = alpha.grant(
        &beta,
        "alpha.token",
        &[
            "--to",
            "site:beta",
            "--right",
            "queue:submit",
            "--right",
            "logs:read",
            "--repo",
            "org/x",
            "--ttl",
            "1h",
        ],
    );
    let token = token.to_str().unwrap();
    let repo = tempfile::tempdir().unwrap();
    repo_with(repo.path(), "default", "echo hello from beta");
    let repo_path = repo.path().to_str().unwrap();

    // Beta submits to alpha's org/x and follows the run's log there.
    let submitted = beta.ok(&[
        "submit", repo_path, "--all", "--repo", "org/x", "--site", "alpha", "--token", token,
    ]);
    let run = first_run(&submitted);
    let log = beta.ok(&["logs", &run, "-f", "--site", "alpha", "--token", token]);
    assert!(log.contains("hello from beta"), "{log}");

    // Any other repository: refused, for submitting and for reading.
    let denied = beta.fails(&[
        "submit", repo_path, "--all", "--repo", "org/y", "--site", "alpha", "--token", token,
    ]);
    assert!(denied.contains("org/y"), "{denied}");
    let other = alpha.ok(&[
        "submit",
        repo_path,
        "--all",
        "--repo",
        "org/y",
        "--addr",
        &alpha.addr,
    ]);
    let other_run = first_run(&other);
    let denied = beta.fails(&[
        "logs", &other_run, "--site", "alpha", "--token", token, "--repo", "org/y",
    ]);
    assert!(denied.contains("org/y"), "{denied}");
    let denied = beta.fails(&["logs", &other_run, "--site", "alpha", "--token", token]);
    assert!(denied.contains(&other_run), "{denied}");

    // Beta's token is bound to beta: alpha's own admin certificate cannot use it.
    let denied = alpha.fails(&[
        "submit",
        repo_path,
        "--all",
        "--repo",
        "org/x",
        "--token",
        token,
        "--addr",
        &alpha.addr,
    ]);
    assert!(denied.contains("bound to site:beta"), "{denied}");
}

#[test]
fn a_partners_work_is_never_privileged_and_runs_sandboxed() {
    let (mut alpha, beta) = two_sites();
    // Alpha lets org/x's own work be privileged on its default queue.
    let config = alpha.path().join("site.toml");
    let mut text_now = std::fs::read_to_string(&config).unwrap();
    text_now.push_str("\n[queues.default]\nprivileged_repos = [\"org/x\"]\n");
    std::fs::write(&config, text_now).unwrap();
    alpha.crash_and_restart();
    alpha.ok(&[
        "runner",
        "add",
        "r1",
        "--queue",
        "default",
        "--addr",
        &alpha.addr,
    ]);
    let _runner = start_runner_with(alpha.path(), "r1", "sandbox");
    let token = alpha.grant(
        &beta,
        "alpha.token",
        &[
            "--to",
            "site:beta",
            "--right",
            "queue:submit",
            "--right",
            "logs:read",
            "--repo",
            "org/x",
            "--ttl",
            "1h",
        ],
    );
    let token = token.to_str().unwrap();

    // Beta's archive says the repository allows privilege and a run asks for it: refused,
    // with the reason, and nothing is queued.
    let privileged = tempfile::tempdir().unwrap();
    git_repo(
        privileged.path(),
        &[
            ("tinyci.yml", "allow_privileged: true\n"),
            (
                "task.yml",
                "mountpoint: /src\nruns:\n  dind:\n    command: [\"dockerd\"]\n    privileged: true\n",
            ),
        ],
    );
    let path = privileged.path().to_str().unwrap();
    let refused = beta.fails(&[
        "submit", path, "--all", "--repo", "org/x", "--site", "alpha", "--token", token,
    ]);
    assert!(
        refused.contains("asks for a privileged container"),
        "{refused}"
    );
    assert!(refused.contains("partner:beta work of org/x"), "{refused}");
    // The very same archive from alpha's own admin is admitted (and waits for a runner that
    // allows privileged containers): the tier made the difference, not the archive.
    let local = alpha.ok(&[
        "submit",
        path,
        "--all",
        "--repo",
        "org/x",
        "--addr",
        &alpha.addr,
    ]);
    let waiting = first_run(&local);
    let shown = alpha.ok(&[
        "admin",
        "runs",
        "show",
        &waiting,
        "--json",
        "--addr",
        &alpha.addr,
    ]);
    assert!(shown.contains("--allow-privileged"), "{shown}");
    alpha.ok(&["cancel", &waiting, "--addr", &alpha.addr]);

    // Without the privileged run it runs, sandboxed: no capabilities, no mounts.
    let plain = tempfile::tempdir().unwrap();
    let probe = "echo \"capabilities: $(grep CapEff /proc/self/status)\"; \
                 if mount -t tmpfs none /tmp 2>/dev/null; then echo 'mount: allowed'; \
                 else echo 'mount: refused'; fi";
    git_repo(
        plain.path(),
        &[
            ("tinyci.yml", "allow_privileged: true\n"),
            (
                "task.yml",
                &format!(
                    "mountpoint: /src\nruns:\n  check:\n    command: [\"sh\", \"-c\", {probe:?}]\n"
                ),
            ),
        ],
    );
    let submitted = beta.ok(&[
        "submit",
        plain.path().to_str().unwrap(),
        "--all",
        "--repo",
        "org/x",
        "--site",
        "alpha",
        "--token",
        token,
    ]);
    let run = first_run(&submitted);
    let log = beta.ok(&["logs", &run, "-f", "--site", "alpha", "--token", token]);
    crate::isolation::assert_unprivileged(&log);
    assert!(log.contains("CapEff:\t0000000000000000"), "{log}");
    let shown = alpha.ok(&[
        "admin",
        "runs",
        "show",
        &run,
        "--json",
        "--addr",
        &alpha.addr,
    ]);
    assert!(shown.contains("\"tier\": \"partner:beta\""), "{shown}");
}

#[test]
fn a_partner_runner_takes_only_its_queue_and_stops_when_the_grant_is_revoked() {
    let (alpha, beta) = two_sites();
    let gpu = alpha.grant_gpu(&beta, "7d");
    // Beta narrows it to one hour, offline, before handing it to its runner.
    let narrowed = beta.path().join("gpu-1h.token");
    beta.ok(&[
        "token",
        "attenuate",
        gpu.to_str().unwrap(),
        "--ttl",
        "1h",
        "--out",
        narrowed.to_str().unwrap(),
    ]);
    let narrowed = narrowed.to_str().unwrap();

    // Another queue or someone's logs: refused.
    let denied = beta.fails(&[
        "runner", "--site", "alpha", "--token", narrowed, "--queue", "default",
    ]);
    assert!(
        denied.contains("queue:take") && denied.contains("default"),
        "{denied}"
    );

    let runner = beta.runner_at(&alpha, narrowed);

    // Alpha's gpu work runs on beta's runner.
    let repo = tempfile::tempdir().unwrap();
    let started = alpha.path().join("started");
    let release = alpha.path().join("release");
    repo_with(repo.path(), "gpu", "echo on gpu");
    let first = alpha.ok(&[
        "submit",
        repo.path().to_str().unwrap(),
        "--all",
        "--repo",
        "org/x",
        "--wait",
        "--addr",
        &alpha.addr,
    ]);
    assert!(first.contains("passed"), "{first}");
    let run = first_run(&first);
    let runs = alpha.ok(&["admin", "runs", "--addr", &alpha.addr]);
    let line = runs.lines().find(|l| l.contains(&run)).unwrap();
    assert!(line.contains("beta"), "{line}");
    let denied = beta.fails(&[
        "logs", &run, "--site", "alpha", "--token", narrowed, "--repo", "org/x",
    ]);
    assert!(denied.contains("logs:read"), "{denied}");

    // This site's secrets never go to a partner's runner: a run that has some errors, saying
    // why, and its secret is not delivered.
    set_secret(
        &alpha,
        "GPU_TOKEN",
        "gpu-token-value-3",
        &["--repo", "org/y"],
    );
    let out = alpha.run(&[
        "submit",
        repo.path().to_str().unwrap(),
        "--all",
        "--repo",
        "org/y",
        "--wait",
        "--addr",
        &alpha.addr,
    ]);
    assert!(!out.status.success());
    let secret_run = first_run(&text(&out.stdout));
    let shown = alpha.ok(&[
        "admin",
        "runs",
        "show",
        &secret_run,
        "--json",
        "--addr",
        &alpha.addr,
    ]);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["status"], "errored", "{shown}");
    let message = shown["message"].as_str().unwrap();
    assert!(
        message.contains("GPU_TOKEN") && message.contains("belongs to another site"),
        "{message}"
    );
    assert!(!message.contains("gpu-token-value-3"), "{message}");

    // A long run, then alpha revokes the grant beta's token was narrowed from.
    let slow = tempfile::tempdir().unwrap();
    repo_with(
        slow.path(),
        "gpu",
        &format!(
            "touch {}; while [ ! -e {} ]; do sleep 0.05; done",
            started.display(),
            release.display()
        ),
    );
    let submitted = alpha.ok(&[
        "submit",
        slow.path().to_str().unwrap(),
        "--all",
        "--repo",
        "org/x",
        "--addr",
        &alpha.addr,
    ]);
    let slow_run = first_run(&submitted);
    wait_for_file(&started, "beta's runner never started the run");
    let revoked_at = Instant::now();
    alpha.ok(&[
        "token",
        "revoke",
        gpu.to_str().unwrap(),
        "--addr",
        &alpha.addr,
    ]);
    // The run goes back to alpha's queue at once (not when its lease would lapse).
    wait_until("the revoked runner's run should be requeued", || {
        alpha
            .ok(&["admin", "runs", "--addr", &alpha.addr])
            .lines()
            .any(|l| l.contains(&slow_run) && l.contains("queued"))
    });
    eprintln!(
        "revocation to requeue: {} ms (reported, not asserted)",
        revoked_at.elapsed().as_millis()
    );
    // Beta's runner finds its grant gone and stops; a new redemption is refused too.
    let (code, _) = runner.wait();
    assert_eq!(code, Some(1));
    let denied = beta.fails(&[
        "runner", "--site", "alpha", "--token", narrowed, "--queue", "gpu",
    ]);
    assert!(denied.contains("revoked"), "{denied}");
}

#[test]
fn removing_a_partner_closes_its_connections_and_refuses_new_ones() {
    let (alpha, beta) = two_sites();
    let gpu = alpha.grant_gpu(&beta, "1h");
    let gpu = gpu.to_str().unwrap();
    let runner = beta.runner_at(&alpha, gpu);
    wait_until("beta's runner should connect to alpha", || {
        alpha
            .ok(&["admin", "runners", "--addr", &alpha.addr])
            .contains("beta")
    });

    let removed = alpha.ok(&["federation", "remove", "beta", "--site-addr", &alpha.addr]);
    assert!(removed.contains("now trusts: no partners"), "{removed}");
    // The live connection is closed: alpha no longer lists beta's runner.
    wait_until("alpha should drop beta's connection", || {
        !alpha
            .ok(&["admin", "runners", "--addr", &alpha.addr])
            .contains("beta")
    });
    // And a new connection is refused at the handshake.
    let refused = beta.fails(&[
        "logs", "r-1", "--site", "alpha", "--token", gpu, "--repo", "org/x",
    ]);
    assert!(refused.contains("alpha"), "{refused}");
    drop(runner);
}

#[test]
fn a_partner_runner_comes_back_by_itself_after_the_far_site_restarts() {
    let port = crate::jobs::free_port();
    let mut alpha = Site::start_on("alpha", &format!("127.0.0.1:{port}"));
    let beta = Site::start("beta");
    alpha.pin(&beta);
    beta.pin(&alpha);
    let gpu = alpha.grant_gpu(&beta, "1h");
    let _runner = beta.runner_at(&alpha, gpu.to_str().unwrap());
    let repo = tempfile::tempdir().unwrap();
    repo_with(repo.path(), "gpu", "echo on gpu");
    let submit = |alpha: &Site| {
        alpha.ok(&[
            "submit",
            repo.path().to_str().unwrap(),
            "--all",
            "--repo",
            "org/x",
            "--wait",
            "--addr",
            &alpha.addr,
        ])
    };
    assert!(submit(&alpha).contains("passed"));
    alpha.crash_and_restart();
    // No manual step: beta's runner reconnects with backoff and takes the next job.
    let after = submit(&alpha);
    assert!(after.contains("passed"), "{after}");
    assert!(after.contains("beta-runner"), "{after}");
}

/// Sets secret `name` of `repo` at `site` to `value` (`args`: its scope).
fn set_secret(site: &Site, name: &str, value: &str, args: &[&str]) {
    let file = site.path().join(format!("{name}.value"));
    std::fs::write(&file, value).unwrap();
    let mut full = vec![
        "secret",
        "set",
        name,
        "--file",
        file.to_str().unwrap(),
        "--addr",
        &site.addr,
    ];
    full.extend_from_slice(args);
    site.ok(&full);
    std::fs::remove_file(file).unwrap();
}

#[test]
fn a_partners_run_gets_only_the_secrets_that_name_partners() {
    let (alpha, beta) = two_sites();
    alpha.ok(&[
        "runner",
        "add",
        "r1",
        "--queue",
        "default",
        "--addr",
        &alpha.addr,
    ]);
    let _runner = start_runner_with(alpha.path(), "r1", "sandbox");
    // org/x's own secret (local and repo work by default), and one named for beta.
    set_secret(
        &alpha,
        "OWN_TOKEN",
        "own-token-value-1",
        &["--repo", "org/x"],
    );
    set_secret(
        &alpha,
        "BETA_TOKEN",
        "beta-token-value-2",
        &["--repo", "org/x", "--tier", "partner:beta", "--as-file"],
    );
    // For main only: beta's upload says it is main, which the site cannot know.
    set_secret(
        &alpha,
        "MAIN_ONLY",
        "main-only-value-4",
        &["--repo", "org/x", "--tier", "partner", "--ref", "main"],
    );
    let token = alpha.grant(
        &beta,
        "alpha.token",
        &[
            "--to",
            "site:beta",
            "--right",
            "queue:submit",
            "--right",
            "logs:read",
            "--repo",
            "org/x",
            "--ttl",
            "1h",
        ],
    );
    let token = token.to_str().unwrap();
    let repo = tempfile::tempdir().unwrap();
    repo_with(
        repo.path(),
        "default",
        "echo OWN_LEN=${#OWN_TOKEN} MAIN_LEN=${#MAIN_ONLY}; cat $TINYCI_SECRETS_DIR/BETA_TOKEN; echo; test -z \"$OWN_TOKEN\"",
    );
    let submitted = beta.ok(&[
        "submit",
        repo.path().to_str().unwrap(),
        "--all",
        "--repo",
        "org/x",
        "--site",
        "alpha",
        "--token",
        token,
    ]);
    let run = first_run(&submitted);
    let log = beta.ok(&["logs", &run, "-f", "--site", "alpha", "--token", token]);
    assert!(log.contains("OWN_LEN=0 MAIN_LEN=0"), "{log}");
    assert!(
        log.contains("***"),
        "the partner's file secret was delivered: {log}"
    );
    assert!(!log.contains("beta-token-value-2"), "{log}");
    let shown = alpha.ok(&[
        "admin",
        "runs",
        "show",
        &run,
        "--json",
        "--addr",
        &alpha.addr,
    ]);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let names: Vec<&str> = shown["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["BETA_TOKEN"], "{shown}");
}
