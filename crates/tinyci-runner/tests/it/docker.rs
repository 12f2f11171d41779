//! The Docker executor against the machine's Docker Engine, with a busybox image imported
//! locally (no registry). Skips, saying why, where no Docker API is reachable.

use std::time::Duration;

use tinyci_runner::{DockerExecutor, Verdict, stop_pair};
use tokio::sync::mpsc;

use crate::support::{collect, spec, wait_for_stdout};

pub(crate) const IMAGE: &str = "tinyci-test/busybox:1";

/// A root filesystem holding Debian's static busybox and the applets the tests use.
fn busybox_rootfs() -> Option<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox").ok()?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(busybox.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append_data(&mut header, "bin/busybox", busybox.as_slice())
        .ok()?;
    for applet in ["sh", "echo", "sleep", "cat", "ls", "true", "false"] {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        tar.append_link(&mut link, format!("bin/{applet}"), "busybox")
            .ok()?;
    }
    for dir in ["tmp", "src"] {
        let mut d = tar::Header::new_gnu();
        d.set_entry_type(tar::EntryType::Directory);
        d.set_size(0);
        d.set_mode(0o1777);
        tar.append_data(&mut d, dir, std::io::empty()).ok()?;
    }
    tar.into_inner().ok()
}

pub(crate) async fn executor() -> Option<DockerExecutor> {
    let docker = match DockerExecutor::connect().await {
        Ok(docker) => docker,
        Err(e) if std::env::var_os("TINYCI_REQUIRE_DOCKER").is_some() => {
            panic!("TINYCI_REQUIRE_DOCKER is set but no Docker engine answers: {e}")
        }
        Err(e) => {
            eprintln!("SKIP docker executor tests: {e}");
            return None;
        }
    };
    let Some(rootfs) = busybox_rootfs() else {
        eprintln!(
            "SKIP docker executor tests: /bin/busybox missing (Debian: apt-get install busybox-static)"
        );
        return None;
    };
    let (repo, tag) = IMAGE.split_once(':').unwrap();
    docker.import_image(rootfs, repo, tag).await.unwrap();
    Some(docker)
}

// One test, scenarios in sequence: they share the image and the "no container left" check.
#[tokio::test]
async fn containers_run_report_exit_status_obey_cancel_and_timeout_and_leave_nothing() {
    let Some(docker) = executor().await else {
        return;
    };
    // Its containers carry an owner of their own: other tests make and remove containers
    // meanwhile, so counting every labelled container on the host says nothing.
    let docker = docker.owned_by("docker-it-scenarios");
    // A run of this test that failed midway may have left its containers: start clean.
    for owner in ["docker-it-scenarios", "crashed-runner"] {
        docker
            .clone()
            .owned_by(owner)
            .remove_leftovers()
            .await
            .unwrap();
    }
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("hello.txt"), "from the source tree\n").unwrap();

    // Output from both streams, the mounted source, and a non-zero exit status.
    let (tx, rx) = mpsc::channel(64);
    let (_stop, signal) = stop_pair();
    let mut job = spec(source.path(), &["cat hello.txt; echo oops >&2; exit 7"]);
    job.image = IMAGE.into();
    // Imported, not pulled: the host has no registry.
    job.pull = Some(tinyci_runner::PullPolicy::Never);
    let outcome = docker.run(&job, &tx, signal).await;
    drop(tx);
    let output = collect(rx).await;
    assert_eq!(outcome.verdict, Verdict::Failed, "{outcome:?}");
    assert_eq!(outcome.exit_code, Some(7));
    assert_eq!(output.stdout, b"from the source tree\n");
    assert_eq!(output.stderr, b"oops\n");

    // Passing.
    let (tx, rx) = mpsc::channel(64);
    let (_stop, signal) = stop_pair();
    let mut job = spec(source.path(), &["true"]);
    job.image = IMAGE.into();
    // Imported, not pulled: the host has no registry.
    job.pull = Some(tinyci_runner::PullPolicy::Never);
    let outcome = docker.run(&job, &tx, signal).await;
    drop(tx);
    collect(rx).await;
    assert_eq!(outcome.verdict, Verdict::Passed, "{outcome:?}");

    // Cancel: stop then kill.
    let (tx, mut rx) = mpsc::channel(64);
    let (stop, signal) = stop_pair();
    let mut job = spec(source.path(), &["echo ready; sleep 1000"]);
    job.image = IMAGE.into();
    // Imported, not pulled: the host has no registry.
    job.pull = Some(tinyci_runner::PullPolicy::Never);
    job.grace = Duration::from_secs(1);
    let runner = docker.clone();
    let run = tokio::spawn(async move { runner.run(&job, &tx, signal).await });
    wait_for_stdout(&mut rx, "ready").await;
    stop.stop("superseded");
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let outcome = run.await.unwrap();
    drain.await.unwrap();
    assert_eq!(outcome.verdict, Verdict::Canceled, "{outcome:?}");
    assert_eq!(outcome.message, "canceled: superseded");

    // Timeout.
    let (tx, rx) = mpsc::channel(64);
    let (_stop, signal) = stop_pair();
    let mut job = spec(source.path(), &["sleep 1000"]);
    job.image = IMAGE.into();
    // Imported, not pulled: the host has no registry.
    job.pull = Some(tinyci_runner::PullPolicy::Never);
    job.timeout = Duration::from_millis(500);
    job.grace = Duration::from_secs(1);
    let outcome = docker.run(&job, &tx, signal).await;
    drop(tx);
    collect(rx).await;
    assert_eq!(outcome.verdict, Verdict::TimedOut, "{outcome:?}");

    // Hardened: no new privileges, Docker's default capabilities at most, a PID limit, the
    // memory limit the task asked for, and no network when its queue allows none.
    let (tx, rx) = mpsc::channel(64);
    let (_stop, signal) = stop_pair();
    let mut job = spec(
        source.path(),
        &["cat /proc/self/status; echo net: $(ls /sys/class/net); \
           echo pids: $(cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null); \
           echo memory: $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null)"],
    );
    job.image = IMAGE.into();
    // Imported, not pulled: the host has no registry.
    job.pull = Some(tinyci_runner::PullPolicy::Never);
    job.network = false;
    job.memory = Some("64m".into());
    let outcome = docker.run(&job, &tx, signal).await;
    drop(tx);
    let output = collect(rx).await;
    let seen = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(outcome.verdict, Verdict::Passed, "{outcome:?} {seen}");
    assert!(seen.contains("NoNewPrivs:\t1"), "{seen}");
    let caps = seen
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:\t"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap();
    // Docker's default set less NET_RAW (13), MKNOD (27), AUDIT_WRITE (29).
    assert_eq!(caps & !0xa804_25fb, 0, "{caps:#x}");
    assert_eq!(caps & (1 << 13 | 1 << 27 | 1 << 29), 0, "{caps:#x}");
    assert!(seen.contains("net: lo\n"), "{seen}");
    assert!(seen.contains("pids: 4096\n"), "{seen}");
    assert!(seen.contains(&format!("memory: {}\n", 64 << 20)), "{seen}");

    // A privileged run on a runner without --allow-privileged does not start.
    let (tx, _rx) = mpsc::channel(64);
    let (_stop, signal) = stop_pair();
    let mut job = spec(source.path(), &["true"]);
    job.image = IMAGE.into();
    // Imported, not pulled: the host has no registry.
    job.pull = Some(tinyci_runner::PullPolicy::Never);
    job.privileged = true;
    let outcome = docker.run(&job, &tx, signal).await;
    assert_eq!(outcome.verdict, Verdict::Errored, "{outcome:?}");
    assert!(
        outcome.message.contains("--allow-privileged"),
        "{outcome:?}"
    );

    // A missing image is an error of the run, not of the runner.
    let (tx, _rx) = mpsc::channel(64);
    let (_stop, signal) = stop_pair();
    let mut job = spec(source.path(), &["true"]);
    job.image = "tinyci-test/no-such-image:0".into();
    job.pull = Some(tinyci_runner::PullPolicy::Never);
    let outcome = docker.run(&job, &tx, signal).await;
    assert_eq!(outcome.verdict, Verdict::Errored, "{outcome:?}");

    // A runner that dies mid-run leaves its container; the same runner, started again,
    // removes it, and a different runner on the same host leaves it alone.
    let crashed = docker.clone().owned_by("crashed-runner");
    let (tx, mut rx) = mpsc::channel(64);
    let (_stop, signal) = stop_pair();
    let job = {
        let mut job = spec(source.path(), &["echo started; sleep 600"]);
        job.image = IMAGE.into();
        // Imported, not pulled: the host has no registry.
        job.pull = Some(tinyci_runner::PullPolicy::Never);
        job
    };
    let running = tokio::spawn(async move { crashed.run(&job, &tx, signal).await });
    wait_for_stdout(&mut rx, "started").await;
    // The runner process dies: nothing of it runs any more, its container does.
    running.abort();
    let _ = running.await;
    let other = docker.clone().owned_by("another-runner");
    assert!(other.remove_leftovers().await.unwrap().is_empty());
    // The dead runner's container outlived it; started again, the runner removes it.
    let restarted = docker.clone().owned_by("crashed-runner");
    assert_eq!(restarted.remove_leftovers().await.unwrap().len(), 1);

    assert_eq!(
        docker.remove_leftovers().await.unwrap(),
        Vec::<String>::new(),
        "a container was left behind"
    );
}

#[tokio::test]
async fn a_container_gets_its_secret_variables_and_its_secret_files_read_only() {
    let Some(docker) = executor().await else {
        return;
    };
    let run_dir = tempfile::tempdir().unwrap();
    let source = run_dir.path().join("src");
    let secrets = run_dir.path().join("secrets");
    std::fs::create_dir(&source).unwrap();
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("DEPLOY"), "file-secret-value-88").unwrap();
    // As the agent writes it: variables reach the container through its /bin/sh, never its
    // configuration.
    std::fs::write(
        secrets.join(".variables"),
        "TOKEN='variable-secret-value-77'\n",
    )
    .unwrap();
    let (tx, rx) = mpsc::channel(64);
    let (_stop, signal) = stop_pair();
    let mut job = spec(
        &source,
        &[
            "echo \"v=$TOKEN dir=$TINYCI_SECRETS_DIR\"; cat \"$TINYCI_SECRETS_DIR/DEPLOY\"; echo; \
           (echo x > \"$TINYCI_SECRETS_DIR/DEPLOY\") 2>/dev/null && echo WROTE || echo READ_ONLY",
        ],
    );
    job.image = IMAGE.into();
    // Imported, not pulled: the host has no registry.
    job.pull = Some(tinyci_runner::PullPolicy::Never);
    job.secret_env
        .insert("TOKEN".into(), "variable-secret-value-77".into());
    job.secrets_dir = Some(secrets.clone());
    let outcome = docker.run(&job, &tx, signal).await;
    drop(tx);
    let output = collect(rx).await;
    let out = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(outcome.verdict, Verdict::Passed, "{out}");
    assert!(
        out.contains("v=variable-secret-value-77 dir=/run/tinyci/secrets"),
        "{out}"
    );
    assert!(out.contains("file-secret-value-88"), "{out}");
    assert!(out.contains("READ_ONLY"), "{out}");
}
