//! The bubblewrap sandbox and PID-namespace containment, on real processes. Skips, saying
//! why, where bubblewrap cannot run, unless `TINYCI_REQUIRE_SANDBOX=1` (as in CI), where that
//! is a failure.

use std::path::Path;

use tinyci_runner::{Bubblewrap, Containment, ShellExecutor, Unshare, Verdict, stop_pair};
use tokio::sync::mpsc;

use crate::support::{collect, spec};

async fn bubblewrap() -> Option<Bubblewrap> {
    match Bubblewrap::detect().await {
        Ok(bwrap) => Some(bwrap),
        Err(e) if std::env::var_os("TINYCI_REQUIRE_SANDBOX").is_some() => {
            panic!("TINYCI_REQUIRE_SANDBOX is set but the sandbox is unavailable: {e}")
        }
        Err(e) => {
            eprintln!("SKIP sandbox tests: {e}");
            None
        }
    }
}

/// Runs `script` with `executor` in `source`; returns its stdout and verdict.
async fn run(
    executor: &ShellExecutor,
    source: &Path,
    script: &str,
    network: bool,
) -> (String, Verdict) {
    let (tx, rx) = mpsc::channel(16);
    let (_stop, signal) = stop_pair();
    let mut job = spec(source, &[script]);
    job.network = network;
    let reader = tokio::spawn(collect(rx));
    let outcome = executor.run(&job, &tx, signal).await;
    drop(tx);
    let output = reader.await.unwrap();
    (
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
        outcome.verdict,
    )
}

#[tokio::test]
async fn a_sandboxed_job_sees_its_own_tree_and_system_files_and_nothing_of_the_site() {
    let Some(bwrap) = bubblewrap().await else {
        return;
    };
    // A "site" in a directory the job could name, with a key in it, hidden explicitly too.
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir(site.path().join("certs")).unwrap();
    std::fs::write(site.path().join("certs/root.key"), "ROOT-KEY-MATERIAL").unwrap();
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("mine.txt"), "my own file\n").unwrap();
    let executor = ShellExecutor::sandboxed(bwrap.hiding([site.path().to_owned()]));
    let script = format!(
        "cat mine.txt; echo written > out.txt; \
         cat {key} 2>/dev/null || echo no-site-key; \
         ls /root /home /var /run 2>/dev/null | wc -l | sed 's/^/others: /'; \
         grep CapEff /proc/self/status; \
         mount -t tmpfs none /tmp 2>/dev/null && echo MOUNTED || echo mount-refused; \
         echo fds: $(ls /proc/self/fd | tr '\\n' ' '); \
         echo processes: $(ls /proc | grep -c '^[0-9]')",
        key = site.path().join("certs/root.key").display()
    );
    let (out, verdict) = run(&executor, source.path(), &script, false).await;
    assert_eq!(verdict, Verdict::Passed, "{out}");
    assert!(out.contains("my own file"), "{out}");
    assert_eq!(
        std::fs::read_to_string(source.path().join("out.txt")).unwrap(),
        "written\n"
    );
    assert!(out.contains("no-site-key"), "{out}");
    assert!(!out.contains("ROOT-KEY-MATERIAL"), "{out}");
    assert!(out.contains("others: 0"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("mount-refused"), "{out}");
    // Nothing of the runner's open files leaks in: stdin, stdout, stderr and ls's own.
    assert!(out.contains("fds: 0 1 2 3\n"), "{out}");
    // Its own PID namespace: bubblewrap's init, the shell, and what it runs.
    let processes: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("processes: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(processes <= 6, "{out}");
}

#[tokio::test]
async fn the_network_is_loopback_only_unless_allowed() {
    let Some(bwrap) = bubblewrap().await else {
        return;
    };
    let source = tempfile::tempdir().unwrap();
    // Interfaces in the job's network namespace, one per line of /proc/net/dev past the
    // two header lines.
    let script = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '";
    let unshare = Unshare::detect().await.unwrap();
    for executor in [
        ShellExecutor::sandboxed(bwrap.clone()),
        // (bubblewrap's containment rebinds the whole tree, which a mount Docker makes and
        // removes meanwhile can fail: hosts use unshare for it when they can, and so do
        // these tests.)
        ShellExecutor::host(Some(Containment::Unshare(unshare))),
    ] {
        let (isolated, _) = run(&executor, source.path(), script, false).await;
        assert_eq!(isolated.trim(), "lo", "{executor:?}");
    }
    let (shared, _) = run(
        &ShellExecutor::sandboxed(bwrap),
        source.path(),
        script,
        true,
    )
    .await;
    // The host's interfaces (Docker tests may add and remove some meanwhile: just more than
    // loopback).
    assert!(shared.split_whitespace().count() > 1, "{shared}");
}

/// Whether any process's command line holds `marker`.
fn any_process_with(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
    })
}

#[tokio::test]
async fn nothing_a_job_starts_outlives_it_even_when_it_leaves_its_process_group() {
    let Some(bwrap) = bubblewrap().await else {
        return;
    };
    let source = tempfile::tempdir().unwrap();
    // util-linux's unshare is on every Debian system: the host fallback without bubblewrap.
    let unshare = Unshare::detect().await.unwrap();
    for (name, executor) in [
        ("sandbox", ShellExecutor::sandboxed(bwrap.clone())),
        (
            "host-unshare",
            ShellExecutor::host(Some(Containment::Unshare(unshare))),
        ),
    ] {
        // A duration no other process on the machine sleeps for.
        let marker = format!("1000.{}{}", std::process::id(), name.len());
        let script =
            format!("setsid sleep {marker} & nohup sleep {marker} >/dev/null 2>&1 & echo started");
        let (out, verdict) = run(&executor, source.path(), &script, true).await;
        assert_eq!(verdict, Verdict::Passed, "{name}: {out}");
        assert!(out.contains("started"), "{name}: {out}");
        // The run is over: the namespace's init is gone, and the kernel killed the rest.
        assert!(
            !any_process_with(&format!("sleep {marker}")),
            "{name}: a process the job started outlived it"
        );
    }
}

#[tokio::test]
async fn a_jobs_own_variables_never_reach_the_sandbox_tools_on_the_host() {
    let Some(bwrap) = bubblewrap().await else {
        return;
    };
    // The attack: the job ships a library and names it in LD_PRELOAD. Were bwrap (or
    // unshare) started with the job's variables, the host loader would run the library
    // before any namespace existed, where it can write this file.
    let source = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let marker = outside.path().join("ran-on-the-host");
    std::fs::write(
        source.path().join("evil.c"),
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void evil(void) {{\n\
             FILE *f = fopen(\"{}\", \"w\"); if (f) {{ fputs(\"pwned\", f); fclose(f); }}\n}}\n",
            marker.display()
        ),
    )
    .unwrap();
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o", "evil.so", "evil.c"])
        .current_dir(source.path())
        .output();
    match built {
        Ok(out) if out.status.success() => {}
        _ => {
            eprintln!("SKIP LD_PRELOAD test: no C compiler");
            return;
        }
    }
    let unshare = Unshare::detect().await.unwrap();
    for (name, executor) in [
        ("sandbox", ShellExecutor::sandboxed(bwrap.clone())),
        (
            "host-unshare",
            ShellExecutor::host(Some(Containment::Unshare(unshare))),
        ),
    ] {
        let (tx, rx) = mpsc::channel(16);
        let (_stop, signal) = stop_pair();
        let mut job = spec(source.path(), &["echo job-ran"]);
        job.env.insert(
            "LD_PRELOAD".into(),
            source.path().join("evil.so").display().to_string(),
        );
        let reader = tokio::spawn(collect(rx));
        let outcome = executor.run(&job, &tx, signal).await;
        drop(tx);
        let output = reader.await.unwrap();
        assert_eq!(outcome.verdict, Verdict::Passed, "{name}: {outcome:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("job-ran"),
            "{name}"
        );
        if name == "sandbox" {
            // Inside the sandbox the job's own processes load it, but the host path it
            // writes to is not there: only a host-side loader could have written it.
            assert!(
                !marker.exists(),
                "{name}: the job's LD_PRELOAD ran on the host"
            );
        }
        let _ = std::fs::remove_file(&marker);
    }
}

#[tokio::test]
async fn work_roots_are_private_and_a_planted_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("work");
    tinyci_runner::private_work_root(&root).unwrap();
    let mode = std::fs::metadata(&root).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    // A symlink someone left where the work root goes is not followed.
    let planted = parent.path().join("planted");
    std::os::unix::fs::symlink(parent.path(), &planted).unwrap();
    let refused = tinyci_runner::private_work_root(&planted).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("not a directory owned by this user"),
        "{refused}"
    );
}

/// Every process's command line on this host that contains `needle`.
fn command_lines_holding(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .filter(|line| line.contains(needle))
        .collect()
}

#[tokio::test]
async fn secrets_reach_a_sandboxed_job_read_only_and_never_on_a_command_line() {
    let Some(bwrap) = bubblewrap().await else {
        return;
    };
    const VALUE: &str = "variable-secret-value-77";
    let run_dir = tempfile::tempdir().unwrap();
    let source = run_dir.path().join("src");
    let secrets = run_dir.path().join("secrets");
    std::fs::create_dir(&source).unwrap();
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("DEPLOY"), "file-secret-value-88").unwrap();
    // As the agent writes it for executors that wrap the job.
    std::fs::write(secrets.join(".variables"), format!("TOKEN='{VALUE}'\n")).unwrap();
    let executor = ShellExecutor::sandboxed(bwrap);
    let mut job = spec(
        &source,
        &[
            "touch ready; while [ ! -f go ]; do sleep 0.05; done; echo \"v=$TOKEN\"; \
           cat \"$TINYCI_SECRETS_DIR/DEPLOY\"; echo; \
           (echo x > \"$TINYCI_SECRETS_DIR/DEPLOY\") 2>/dev/null && echo WROTE || echo READ_ONLY",
        ],
    );
    job.secret_env.insert("TOKEN".into(), VALUE.into());
    job.secrets_dir = Some(secrets.clone());
    let (tx, rx) = mpsc::channel(16);
    let (_stop, signal) = stop_pair();
    let reader = tokio::spawn(collect(rx));
    let running = {
        let (executor, job, tx) = (executor.clone(), job.clone(), tx.clone());
        tokio::spawn(async move { executor.run(&job, &tx, signal).await })
    };
    drop(tx);
    while !source.join("ready").exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // While it runs, no process on the host shows the value in its command line.
    assert_eq!(command_lines_holding(VALUE), Vec::<String>::new());
    std::fs::write(source.join("go"), "").unwrap();
    let outcome = running.await.unwrap();
    let output = reader.await.unwrap();
    let out = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(outcome.verdict, Verdict::Passed, "{out}");
    assert!(out.contains(&format!("v={VALUE}")), "{out}");
    assert!(out.contains("file-secret-value-88"), "{out}");
    assert!(out.contains("READ_ONLY"), "{out}");
    assert_eq!(
        std::fs::read_to_string(secrets.join("DEPLOY")).unwrap(),
        "file-secret-value-88"
    );
}
