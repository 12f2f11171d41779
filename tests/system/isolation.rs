//! Untrusted code never runs beside the site's keys, tried as an attacker would: a submitted
//! job hunts the whole filesystem for the site's keys and a runner's bundle, on a fresh
//! `tinyci site up` with and without a Docker engine and on `tinyci runner --bundle`; a job
//! leaves processes behind with `setsid`; a run no connected runner may take waits and says
//! why. (Partner and fork work asking for privilege: `federation.rs` and `github.rs`.)
//!
//! The sandbox and Docker are skipped, saying why, where they are missing, unless
//! `TINYCI_REQUIRE_SANDBOX=1` / `TINYCI_REQUIRE_DOCKER=1` (as `.ci/run` sets), where that is a
//! failure.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::jobs::start_runner_with;
use crate::support::{
    SiteProcess, git_repo, init_site, run_in, serve_site, serve_site_with_http, tinyci, wait_until,
};

/// The busybox image jobs that need a container run in.
const IMAGE: &str = "tinyci-test/isolation:1";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether bubblewrap works here; panics if it must and does not.
fn sandbox_available() -> bool {
    let works = Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "--unshare-all", "--", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !works && std::env::var_os("TINYCI_REQUIRE_SANDBOX").is_some() {
        panic!("TINYCI_REQUIRE_SANDBOX is set but bubblewrap cannot run here");
    }
    if !works {
        eprintln!("SKIP: bubblewrap cannot run here (apt-get install bubblewrap)");
    }
    works
}

/// Whether a Docker engine answers; panics if it must and does not.
fn docker_available() -> bool {
    let works = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !works && std::env::var_os("TINYCI_REQUIRE_DOCKER").is_some() {
        panic!("TINYCI_REQUIRE_DOCKER is set but no Docker engine answers");
    }
    if !works {
        eprintln!("SKIP: no Docker engine answers");
    }
    works
}

/// Imports [`IMAGE`]: Debian's static busybox with every applet it has (no registry here).
fn import_busybox_image() {
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("/bin/busybox (apt-get install busybox-static)");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in text(&list.stdout).lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    for dir in ["tmp", "src", "mnt"] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    let imported = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -c . | docker import - '{IMAGE}'",
            root.path().display()
        ))
        .output()
        .unwrap();
    assert!(imported.status.success(), "{}", text(&imported.stderr));
}

/// A job that walks the whole filesystem, and every directory above its own, for the site's
/// keys and tokens and any runner bundle, and prints the SHA-256 of each it can read. Ends
/// with `hunt-done`, so a hunt that did not run cannot pass.
const HUNT: &str = r#"echo "pwd: $PWD"
find / \( -path /proc -o -path /sys \) -prune -o \( -name root.key -o -name ca.key -o -name admin.token -o -name secrets.key -o -name '*.bundle' -o -name site.key \) -print 2>/dev/null > /tmp/found
while read -r f; do echo "found $f"; sha256sum "$f" 2>/dev/null; done < /tmp/found
d="$PWD"
while [ "$d" != / ]; do
  d=$(dirname "$d")
  for f in "$d"/* "$d"/*/* "$d"/*/*/*; do
    case "$f" in *.key|*.token|*.bundle) sha256sum "$f" 2>/dev/null;; esac
  done
done
echo "capabilities: $(grep CapEff /proc/self/status)"
if mount -t tmpfs none /mnt 2>/dev/null; then echo "mount: allowed"; else echo "mount: refused"; fi
echo hunt-done
"#;

/// A repository whose runs hunt for keys: `.:sandboxed` with no image, and, with `image`,
/// `contained:hunt` in that container image.
fn hunting_repo(dir: &Path, image: Option<&str>) {
    let task = "mountpoint: /src\nruns:\n  hunt:\n    command: [\"sh\", \"hunt.sh\"]\n";
    let mut files = vec![
        ("tinyci.yml", String::new()),
        ("hunt.sh", HUNT.to_owned()),
        ("task.yml", task.replace("hunt:", "sandboxed:")),
    ];
    if let Some(image) = image {
        files.push(("contained/hunt.sh", HUNT.to_owned()));
        files.push((
            "contained/task.yml",
            format!("default_image: {image}\n{task}"),
        ));
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    git_repo(dir, &files);
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Submits `repo` to the site at `addr` from `dir`, waits for every run, and returns each
/// run's id with its whole log. Every run must pass.
fn submit_and_read_logs(dir: &Path, repo: &Path, addr: &str) -> Vec<(String, String)> {
    let submit = run_in(
        dir,
        &[
            "submit",
            repo.to_str().unwrap(),
            "--all",
            "--wait",
            "--addr",
            addr,
        ],
    );
    let out = text(&submit.stdout);
    assert!(submit.status.success(), "{out}\n{}", text(&submit.stderr));
    let runs: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("r-"))
        .map(|rest| format!("r-{}", rest.split_whitespace().next().unwrap()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(!runs.is_empty(), "{out}");
    runs.into_iter()
        .map(|run| {
            let logs = run_in(dir, &["logs", &run, "--addr", addr]);
            assert!(logs.status.success(), "{}", text(&logs.stderr));
            (run, text(&logs.stdout))
        })
        .collect()
}

/// Checks one hunt's log: it ran to the end, read none of `secrets` (by content hash), had no
/// capabilities and could not mount, and ran outside `site_dir`.
fn assert_found_nothing(log: &str, secrets: &[(String, String)], site_dir: &Path) {
    assert!(log.contains("hunt-done"), "the hunt did not finish:\n{log}");
    for (name, hash) in secrets {
        assert!(!log.contains(hash.as_str()), "the job read {name}:\n{log}");
    }
    assert_unprivileged(log);
    let pwd = log
        .lines()
        .find_map(|l| l.strip_prefix("pwd: "))
        .unwrap_or_default();
    assert!(
        !Path::new(pwd).starts_with(site_dir),
        "the job ran inside the site's directory ({pwd})"
    );
}

/// Docker's default capability set (chown, dac_override, fowner, fsetid, kill, setgid,
/// setuid, setpcap, net_bind_service, net_raw, sys_chroot, mknod, audit_write, setfcap).
const DOCKER_DEFAULT_CAPABILITIES: u64 = 0x0000_0000_a804_25fb;

/// Checks, from what a job printed about itself, that it held no capability beyond Docker's
/// default set (none at all in the sandbox) and could not mount a file system.
pub(crate) fn assert_unprivileged(log: &str) {
    let caps = log
        .lines()
        .find_map(|l| l.strip_prefix("capabilities: CapEff:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("the job printed no capabilities:\n{log}"));
    assert_eq!(
        caps & !DOCKER_DEFAULT_CAPABILITIES,
        0,
        "capabilities {caps:#x}:\n{log}"
    );
    assert!(log.contains("mount: refused"), "{log}");
}

/// Writes a secrets key where `[github]` would keep it, so the hunt has it to find too.
fn plant_secrets_key(site_dir: &Path) {
    tinyci_pki::write_secret_file(&site_dir.join("certs/secrets.key"), b"0123456789abcdef")
        .unwrap();
}

fn site_secrets(site_dir: &Path, extra: &[&str]) -> Vec<(String, String)> {
    [
        "certs/root.key",
        "certs/ca.key",
        "certs/admin.token",
        "certs/secrets.key",
        "certs/site.key",
        "certs/admin.key",
    ]
    .iter()
    .chain(extra)
    .map(|rel| (rel.to_string(), sha256_hex(&site_dir.join(rel))))
    .collect()
}

#[test]
fn a_job_on_a_fresh_site_up_without_docker_reads_none_of_the_sites_keys() {
    if !sandbox_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut command = tinyci();
    command
        .current_dir(dir.path())
        .args(["site", "up", "--listen", "127.0.0.1:0"])
        // No engine at this address: the embedded runner falls back to the sandbox.
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let mut site = SiteProcess::from_command(command);
    let addr = site.wait_for("listening on ").trim().to_owned();
    let attached = site.wait_for("local runner attached");
    assert!(attached.contains("executors: sandbox"), "{attached}");
    plant_secrets_key(dir.path());
    let secrets = site_secrets(dir.path(), &["data/local-runner.bundle"]);
    let repo = tempfile::tempdir().unwrap();
    hunting_repo(repo.path(), None);
    let logs = submit_and_read_logs(dir.path(), repo.path(), &addr);
    assert_eq!(logs.len(), 1);
    for (_, log) in &logs {
        assert_found_nothing(log, &secrets, dir.path());
    }
}

#[test]
fn jobs_on_a_fresh_site_up_with_docker_read_none_of_the_sites_keys_in_either_executor() {
    if !sandbox_available() || !docker_available() {
        return;
    }
    import_busybox_image();
    let dir = tempfile::tempdir().unwrap();
    let mut site = SiteProcess::start(dir.path(), &["--listen", "127.0.0.1:0"]);
    let addr = site.wait_for("listening on ").trim().to_owned();
    let attached = site.wait_for("local runner attached");
    assert!(
        attached.contains("executors: docker, sandbox"),
        "{attached}"
    );
    plant_secrets_key(dir.path());
    let secrets = site_secrets(dir.path(), &["data/local-runner.bundle"]);
    let repo = tempfile::tempdir().unwrap();
    hunting_repo(repo.path(), Some(IMAGE));
    let logs = submit_and_read_logs(dir.path(), repo.path(), &addr);
    assert_eq!(logs.len(), 2);
    for (_, log) in &logs {
        assert_found_nothing(log, &secrets, dir.path());
    }
    // The container really was one: its filesystem is busybox's, not the host's.
    assert!(
        logs.iter().any(|(_, log)| log.contains("pwd: /src")),
        "{logs:#?}"
    );
}

#[test]
fn a_job_on_a_bundle_runner_cannot_read_the_bundle_or_the_sites_keys() {
    if !sandbox_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    init_site(dir.path(), "");
    let (_site, addr) = serve_site(dir.path());
    let added = run_in(
        dir.path(),
        &["runner", "add", "r1", "--queue", "default", "--addr", &addr],
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    plant_secrets_key(dir.path());
    let secrets = site_secrets(dir.path(), &["r1.bundle"]);
    let mut command = tinyci();
    command
        .current_dir(dir.path())
        .args(["runner", "--bundle", "r1.bundle"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let mut runner = SiteProcess::from_command(command);
    let started = runner.wait_for("runner r1 of site alpha");
    assert!(started.contains("executors: sandbox"), "{started}");
    let repo = tempfile::tempdir().unwrap();
    hunting_repo(repo.path(), None);
    for (_, log) in submit_and_read_logs(dir.path(), repo.path(), &addr) {
        assert_found_nothing(&log, &secrets, dir.path());
    }
}

/// Whether any process's command line holds `marker`.
pub(crate) fn any_process_with(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
    })
}

#[test]
fn nothing_a_job_starts_survives_its_run_on_any_executor() {
    if !sandbox_available() {
        return;
    }
    let docker = docker_available();
    if docker {
        import_busybox_image();
    }
    let dir = tempfile::tempdir().unwrap();
    init_site(dir.path(), "");
    let (_site, addr) = serve_site(dir.path());
    let mut executors = vec!["shell", "sandbox"];
    if docker {
        executors.push("docker");
    }
    let mut runners = Vec::new();
    let mut tasks = vec![("tinyci.yml".to_owned(), String::new())];
    for executor in &executors {
        let name = format!("r-{executor}");
        let added = run_in(
            dir.path(),
            &["runner", "add", &name, "--queue", executor, "--addr", &addr],
        );
        assert!(added.status.success(), "{}", text(&added.stderr));
        runners.push(start_runner_with(dir.path(), &name, executor));
        // A duration no other process sleeps for: its own marker per executor.
        let marker = format!("sleep 1000.{}{}", std::process::id(), executor.len());
        let image = if *executor == "docker" {
            format!("default_image: {IMAGE}\n")
        } else {
            String::new()
        };
        tasks.push((
            format!("{executor}/task.yml"),
            format!(
                "{image}mountpoint: /src\nruns:\n  escape:\n    queue: {executor}\n    \
                 command: [\"sh\", \"-c\", \"setsid {marker} & nohup {marker} >/dev/null 2>&1 & echo left {marker} behind\"]\n"
            ),
        ));
    }
    let repo = tempfile::tempdir().unwrap();
    let files: Vec<(&str, &str)> = tasks
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    git_repo(repo.path(), &files);
    for (run, log) in submit_and_read_logs(dir.path(), repo.path(), &addr) {
        let marker = log
            .lines()
            .find_map(|l| l.strip_prefix("left "))
            .and_then(|l| l.strip_suffix(" behind"))
            .unwrap_or_else(|| panic!("{run} did not start its processes:\n{log}"))
            .to_owned();
        // The run is over. A process that escaped would sleep for 1000 s: far past this
        // wait, which only covers the kernel finishing the kill.
        wait_until(&format!("{run}: `{marker}` outlived its run"), || {
            !any_process_with(&marker)
        });
    }
}

#[test]
fn a_run_no_connected_runner_may_take_stays_queued_and_says_why() {
    if !sandbox_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // This site wants even its own work sandboxed; its run page is public.
    init_site(
        dir.path(),
        "\n[queues.default]\nisolation = { local = \"sandbox\" }\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\npublic_repos = [\"org/careful\"]\n",
    );
    let (_site, addr, http) = serve_site_with_http(dir.path());
    for name in ["host", "boxed"] {
        let added = run_in(
            dir.path(),
            &["runner", "add", name, "--queue", "default", "--addr", &addr],
        );
        assert!(added.status.success(), "{}", text(&added.stderr));
    }
    let _host = start_runner_with(dir.path(), "host", "shell");
    let repo = tempfile::tempdir().unwrap();
    git_repo(
        repo.path(),
        &[
            ("tinyci.yml", ""),
            (
                "task.yml",
                "mountpoint: /src\nruns:\n  careful:\n    command: [\"echo\", \"ran\"]\n",
            ),
        ],
    );
    let submitted = run_in(
        dir.path(),
        &[
            "submit",
            repo.path().to_str().unwrap(),
            "--all",
            "--repo",
            "org/careful",
            "--addr",
            &addr,
        ],
    );
    assert!(submitted.status.success(), "{}", text(&submitted.stderr));

    // The host runner is connected and idle, and never gets it.
    let reason = "waiting for a runner with the sandbox on queue default \
                  (local work; connected: host (host))";
    let mut listed = String::new();
    wait_until("the run should say what it waits for", || {
        let out = run_in(dir.path(), &["admin", "runs", "--json", "--addr", &addr]);
        listed = text(&out.stdout);
        listed.contains(reason)
    });
    let runs: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let run = &runs[0];
    assert_eq!(run["status"], "queued", "{run}");
    assert_eq!(run["tier"], "local", "{run}");
    assert_eq!(run["waiting"], reason, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    let human = text(&run_in(dir.path(), &["admin", "runs", "--addr", &addr]).stdout);
    assert!(
        human.contains(&format!("queued ({reason}); tier local")),
        "{human}"
    );
    let (status, _, page) = crate::github::http(&http, "GET", &format!("/runs/{id}"), &[], b"");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Trust tier</dt><dd>local"), "{page}");
    assert!(page.contains(reason), "{page}");

    // A sandboxed runner arrives and takes it.
    let _boxed = start_runner_with(dir.path(), "boxed", "sandbox");
    wait_until("the sandboxed runner should run it", || {
        let out = run_in(dir.path(), &["admin", "runs", "--json", "--addr", &addr]);
        let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        runs[0]["status"] == "passed" && runs[0]["runner"] == "boxed"
    });
}
