//! A network partition between sites, with Docker: alpha and beta run in containers on a
//! private network (an image imported locally from the `tinyci` binary under test, its shared
//! libraries and busybox: no registry is needed), beta's runner is cut off from alpha in the
//! middle of a run (`docker network disconnect`) and connected again. The run must complete
//! exactly once and its stored log must have no gap and no duplicate.

use std::path::Path;
use std::process::Command;

use crate::support::{git_repo, grant_queue_take, run_in, wait_for_file, wait_until};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker: {e}"))?;
    if out.status.success() {
        Ok(text(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            text(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Containers, the network and the image this test made; removed on drop.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    network: Option<String>,
    image: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = docker(&["rm", "-f", container]);
        }
        if let Some(network) = &self.network {
            let _ = docker(&["network", "rm", network]);
        }
        if let Some(image) = &self.image {
            let _ = docker(&["rmi", "-f", image]);
        }
    }
}

/// Imports an image holding the `tinyci` binary, the libraries it links and busybox (for
/// the shell executor's `sh`).
fn import_image(tag: &str) -> Result<(), String> {
    let binary = env!("CARGO_BIN_EXE_tinyci");
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let put = |from: &Path, to: &str| -> Result<(), String> {
        let dest = root.path().join(to.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::copy(from, &dest)
            .map(drop)
            .map_err(|e| format!("{}: {e}", from.display()))
    };
    put(Path::new(binary), "/usr/local/bin/tinyci")?;
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    for line in text(&ldd.stdout).lines() {
        let path = match line.split("=>").nth(1) {
            Some(rest) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            put(Path::new(path), path)?;
        }
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        return Err("no /bin/busybox (apt-get install busybox-static)".into());
    }
    put(busybox, "/bin/busybox")?;
    for applet in ["sh", "sleep", "touch", "seq", "cat"] {
        std::os::unix::fs::symlink("busybox", root.path().join("bin").join(applet))
            .map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(root.path().join("tmp")).map_err(|e| e.to_string())?;
    let imported = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -c . | docker import - '{tag}'",
            root.path().display()
        ))
        .output()
        .map_err(|e| e.to_string())?;
    if imported.status.success() {
        Ok(())
    } else {
        Err(format!("docker import: {}", text(&imported.stderr)))
    }
}

fn init(dir: &Path, name: &str) {
    let out = run_in(dir, &["site", "init", "--name", name, "--host", name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Inside its container the site listens on every address of its own network namespace.
    let config = dir.join("site.toml");
    let toml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("listen = \"127.0.0.1:7433\"", "listen = \"0.0.0.0:7433\"");
    std::fs::write(config, toml).unwrap();
}

#[test]
fn a_runner_cut_off_mid_run_finishes_it_exactly_once_with_a_whole_log() {
    let required = std::env::var_os("TINYCI_REQUIRE_DOCKER").is_some();
    if let Err(why) = docker(&["version", "--format", "{{.Server.Version}}"]) {
        assert!(!required, "TINYCI_REQUIRE_DOCKER is set but: {why}");
        println!("SKIP partition test: no Docker Engine ({why})");
        return;
    }
    let id = std::process::id();
    let mut cleanup = Cleanup::default();
    let image = format!("tinyci-partition-test:{id}");
    if let Err(why) = import_image(&image) {
        assert!(!required, "TINYCI_REQUIRE_DOCKER is set but: {why}");
        println!("SKIP partition test: cannot build the image ({why})");
        return;
    }
    cleanup.image = Some(image.clone());
    // A fixed subnet, so the runner gets its address back when reconnected (its TCP
    // connection is bound to it).
    let net = format!("tci-partition-{id}");
    let octet = 16 + id % 200;
    let subnet = format!("172.29.{octet}.0/24");
    let runner_ip = format!("172.29.{octet}.10");
    must(&["network", "create", "--subnet", &subnet, &net]);
    cleanup.network = Some(net.clone());

    let alpha = tempfile::tempdir().unwrap();
    let beta = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    init(alpha.path(), "alpha");
    init(beta.path(), "beta");
    let pin = |dir: &Path, other: &Path, name: &str, addr: Option<&str>| {
        let ca = other.join("certs/ca.crt");
        let mut args = vec!["federation", "add", name, "--ca", ca.to_str().unwrap()];
        if let Some(addr) = addr {
            args.extend_from_slice(&["--addr", addr]);
        }
        let out = run_in(dir, &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    pin(alpha.path(), beta.path(), "beta", None);
    pin(beta.path(), alpha.path(), "alpha", Some("alpha:7433"));
    let token = beta.path().join("gpu.token");
    grant_queue_take(alpha.path(), "beta", "gpu", &token);

    let volume = |dir: &Path, at: &str| format!("{}:{at}", dir.display());
    let run = |name: &str, extra: &[&str], command: &[&str]| {
        let container = format!("tci-{name}-{id}");
        let mut args = vec!["run", "-d", "--name", &container, "--network", &net];
        args.extend_from_slice(extra);
        args.push(&image);
        args.extend_from_slice(command);
        must(&args);
        container
    };
    let site_up = [
        "/usr/local/bin/tinyci",
        "site",
        "up",
        "--config",
        "/site/site.toml",
        "--no-local-runner",
    ];
    let alpha_site = run(
        "alpha",
        &[
            "--network-alias",
            "alpha",
            "-p",
            "127.0.0.1::7433",
            "-v",
            &volume(alpha.path(), "/site"),
        ],
        &site_up,
    );
    cleanup.containers.push(alpha_site.clone());
    let beta_site = run(
        "beta",
        &[
            "--network-alias",
            "beta",
            "-v",
            &volume(beta.path(), "/site"),
        ],
        &site_up,
    );
    cleanup.containers.push(beta_site);
    let published = must(&["port", &alpha_site, "7433/tcp"]);
    let alpha_addr = published.lines().next().unwrap().trim().to_owned();
    let runner = run(
        "beta-runner",
        &[
            "--ip",
            &runner_ip,
            "-v",
            &volume(beta.path(), "/site"),
            "-v",
            &volume(shared.path(), "/shared"),
        ],
        &[
            "/usr/local/bin/tinyci",
            "runner",
            "--site",
            "alpha",
            "--token",
            "/site/gpu.token",
            "--config",
            "/site/site.toml",
            "--executor",
            "shell",
            "--work-dir",
            "/tmp/work",
        ],
    );
    cleanup.containers.push(runner.clone());
    let admin = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--addr", &alpha_addr]);
        let out = run_in(alpha.path(), &full);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    wait_until("beta's runner should reach alpha", || {
        admin(&["admin", "runners"]).contains("beta-runner")
    });

    // 200 numbered lines; after line 50 the job waits for the test, which cuts the runner off.
    let repo = tempfile::tempdir().unwrap();
    let script = "i=0; while [ $i -lt 200 ]; do i=$((i+1)); echo line $i; \
                  if [ $i = 50 ]; then touch /shared/half; while [ ! -e /shared/go ]; do sleep 0.05; done; fi; \
                  done; touch /shared/done";
    git_repo(
        repo.path(),
        &[
            ("tinyci.yml", "queue: gpu\n"),
            (
                "task.yml",
                &format!(
                    "mountpoint: /src\nruns:\n  lines:\n    command: [\"sh\", \"-c\", {script:?}]\n"
                ),
            ),
        ],
    );
    let submitted = admin(&[
        "submit",
        repo.path().to_str().unwrap(),
        "--all",
        "--repo",
        "org/x",
    ]);
    let run_id = submitted
        .lines()
        .find_map(|l| l.trim().strip_prefix("r-"))
        .map(|rest| format!("r-{}", rest.split_whitespace().next().unwrap()))
        .unwrap();
    wait_for_file(&shared.path().join("half"), "the run never reached line 50");
    must(&["network", "disconnect", &net, &runner]);
    // The job finishes while its runner cannot reach alpha: its output waits in the runner.
    std::fs::write(shared.path().join("go"), b"").unwrap();
    wait_for_file(
        &shared.path().join("done"),
        "the job never finished while cut off",
    );
    must(&["network", "connect", "--ip", &runner_ip, &net, &runner]);

    let since = std::time::Instant::now();
    let line = loop {
        let runs = admin(&["admin", "runs"]);
        let line = runs
            .lines()
            .find(|l| l.contains(&run_id))
            .unwrap()
            .to_owned();
        if line.contains("passed") || line.contains("failed") || line.contains("errored") {
            break line;
        }
        assert!(
            since.elapsed().as_secs() < 180,
            "the run never ended: {line}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(line.contains("passed"), "{line}");
    let attempt2 = line.contains("attempt");
    println!(
        "partition: the run {} ({line})",
        if attempt2 {
            "was retried"
        } else {
            "completed on beta's runner, lease kept"
        }
    );
    let log = admin(&["logs", &run_id]);
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("line ")).collect();
    let expected: Vec<String> = (1..=200).map(|i| format!("line {i}")).collect();
    if attempt2 {
        // A retry re-runs the command after the first attempt's output: each attempt's
        // output must still be whole and in order.
        assert!(lines.len() >= 200, "{}", lines.len());
        assert_eq!(lines[lines.len() - 200..], expected[..]);
    } else {
        assert_eq!(lines, expected, "gap or duplicate in the stored log");
    }
}
