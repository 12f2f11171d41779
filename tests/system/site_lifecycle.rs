//! `site init`, `site up`, `site status` as a user runs them.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::{SiteProcess, run_in};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn site_up_on_a_fresh_directory_then_status_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut site = SiteProcess::start(dir.path(), &["--listen", "127.0.0.1:0"]);
    let addr = site.wait_for("listening on ").trim().to_owned();
    let fingerprint = site.wait_for("CA fingerprint: ").trim().to_owned();
    let hint = site.wait_for("next: ");
    assert!(hint.contains("tinyci site status"), "{hint}");
    // The embedded defaults were written where the issue says.
    for file in [
        "site.toml",
        "certs/ca.crt",
        "certs/admin.key",
        "certs/root.key",
    ] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
    assert!(dir.path().join("data").is_dir());

    let status = run_in(dir.path(), &["site", "status", "--addr", &addr]);
    let out = text(&status.stdout);
    assert!(
        status.status.success(),
        "status failed: {}",
        text(&status.stderr)
    );
    assert!(out.contains("site         local\n"), "{out}");
    assert!(
        out.contains(&format!("version      {}\n", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.contains("uptime       "), "{out}");
    assert!(
        out.contains(&format!("fingerprint  {fingerprint}\n")),
        "{out}"
    );
    assert!(
        out.contains("you are      tinyci://local/admin/admin\n"),
        "{out}"
    );

    let (clean, rest) = site.terminate();
    assert!(clean, "site did not exit cleanly on SIGTERM: {rest:?}");
    assert!(
        rest.iter().any(|l| l.starts_with("site stopped")),
        "{rest:?}"
    );

    // A second start reuses the identity and store.
    let mut again = SiteProcess::start(dir.path(), &["--listen", "127.0.0.1:0"]);
    again.wait_for("listening on ");
    assert_eq!(again.wait_for("CA fingerprint: ").trim(), fingerprint);
    assert!(
        !again.stdout.iter().any(|l| l.contains("initializing")),
        "{:?}",
        again.stdout
    );
}

#[test]
fn status_against_no_site_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let init = run_in(dir.path(), &["site", "init", "--name", "alpha"]);
    assert!(init.status.success(), "{}", text(&init.stderr));
    // Nothing listens on this port: bind one and drop it to find a free one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let status = run_in(dir.path(), &["site", "status", "--addr", &addr]);
    assert_eq!(status.status.code(), Some(1));
    let err = text(&status.stderr);
    assert!(
        err.contains(&format!("failed to connect to {addr}")),
        "{err}"
    );
    // The commands that follow runs exit 4 when runs did not pass; an unreachable site is
    // exit 1, never confused with it.
    let repo = tempfile::tempdir().unwrap();
    crate::support::git_repo(repo.path(), &[("tinyci.yml", "queue: default\n")]);
    let repo_arg = repo.path().to_str().unwrap();
    for args in [
        &["wait", "s-1", "--addr", &addr][..],
        &["logs", "r-1", "--addr", &addr],
        &["logs", "r-1", "-f", "--addr", &addr],
        &[
            "submit", repo_arg, "--all", "--wait", "--repo", "org/x", "--addr", &addr,
        ],
    ] {
        let out = run_in(dir.path(), args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("failed to connect"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

fn snapshot_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("certs")).unwrap() {
        let entry = entry.unwrap();
        files.insert(
            entry.file_name().to_string_lossy().into_owned(),
            std::fs::read(entry.path()).unwrap(),
        );
    }
    files
}

#[test]
fn init_twice_refuses_and_leaves_keys_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let first = run_in(dir.path(), &["site", "init", "--name", "alpha"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let before = snapshot_files(dir.path());
    assert_eq!(before.len(), 9, "{:?}", before.keys());

    // Every private key is 0600, and the directory holding them is 0700.
    for name in before
        .keys()
        .filter(|n| n.ends_with(".key") || n.ends_with(".token"))
    {
        let mode = std::fs::metadata(dir.path().join("certs").join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} has mode {:o}", mode & 0o777);
    }
    let dir_mode = std::fs::metadata(dir.path().join("certs"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);

    let second = run_in(dir.path(), &["site", "init", "--name", "alpha"]);
    assert_eq!(second.status.code(), Some(3));
    let err = text(&second.stderr);
    assert!(
        err.contains("refusing to overwrite existing site identity"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        snapshot_files(dir.path()),
        before,
        "a refused init changed files"
    );

    let forced = run_in(dir.path(), &["site", "init", "--name", "alpha", "--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    let after = snapshot_files(dir.path());
    assert_ne!(
        after["ca.key"], before["ca.key"],
        "--force did not replace the keys"
    );
    assert!(
        text(&forced.stdout).contains("kept existing"),
        "site.toml must be kept"
    );
}

#[test]
fn sigterm_during_a_burst_of_submissions_loses_no_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::init_site(dir.path(), "");
    let repo = tempfile::tempdir().unwrap();
    crate::support::git_repo(
        repo.path(),
        &[
            ("tinyci.yml", "queue: default\n"),
            (
                "task.yml",
                "mountpoint: /src\nruns:\n  one:\n    command: [\"true\"]\n",
            ),
        ],
    );
    let port = crate::jobs::free_port();
    let listen = format!("127.0.0.1:{port}");
    let up = [
        "--config",
        "site.toml",
        "--listen",
        listen.as_str(),
        "--no-local-runner",
    ];
    let mut site = SiteProcess::start(dir.path(), &up);
    site.wait_for("listening on ");

    // Twenty submitters at once; the site is stopped as soon as the first is acknowledged.
    let submitters: Vec<_> = (0..20)
        .map(|i| {
            crate::support::tinyci()
                .current_dir(dir.path())
                .args([
                    "submit",
                    repo.path().to_str().unwrap(),
                    "--all",
                    "--repo",
                    &format!("org/r{i}"),
                    "--addr",
                    &listen,
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut submitters: Vec<_> = submitters.into_iter().map(Some).collect();
    let mut site = Some(site);
    let mut acknowledged = Vec::new();
    while submitters.iter().any(Option::is_some) {
        for slot in &mut submitters {
            if slot
                .as_mut()
                .is_none_or(|child| child.try_wait().unwrap().is_none())
            {
                continue;
            }
            let out = slot.take().unwrap().wait_with_output().unwrap();
            let stdout = text(&out.stdout);
            // Printed only once the site said the submission is durable.
            if let Some(id) = stdout
                .lines()
                .find_map(|l| l.strip_prefix("submission "))
                .and_then(|rest| rest.split(':').next())
            {
                acknowledged.push(id.to_owned());
                // The first acknowledgement stops the site, with the rest in flight.
                if let Some(site) = site.take() {
                    let (clean, _) = site.terminate();
                    assert!(clean, "SIGTERM should stop the site cleanly");
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!acknowledged.is_empty());

    // Every acknowledged submission is there after the restart.
    let mut site = SiteProcess::start(dir.path(), &up);
    site.wait_for("listening on ");
    let runs = run_in(
        dir.path(),
        &["admin", "runs", "--limit", "1000", "--addr", &listen],
    );
    assert!(runs.status.success(), "{}", text(&runs.stderr));
    let runs = text(&runs.stdout);
    for id in &acknowledged {
        assert!(
            runs.lines().any(|l| l.starts_with(&format!("{id} "))),
            "acknowledged submission {id} is missing after the restart:\n{runs}"
        );
    }
    println!(
        "{} of 20 submissions were acknowledged around the SIGTERM; all are present",
        acknowledged.len()
    );
}

/// Only ./site.toml is made on demand: a configuration TINYCI_CONFIG names that is missing is
/// an error, not a fresh site (a new CA and keys) in the current directory.
#[test]
fn a_missing_config_named_by_the_environment_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::support::tinyci()
        .current_dir(dir.path())
        .args(["site", "up"])
        .env("TINYCI_CONFIG", dir.path().join("typo.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("typo.toml"),
        "{}",
        text(&out.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "site up left {left:?}");
    // A partner --site with no grant at all is a bad command line.
    let partner = run_in(dir.path(), &["logs", "r-1", "--site", "beta"]);
    assert_eq!(partner.status.code(), Some(2), "{}", text(&partner.stderr));
    assert!(
        text(&partner.stderr).contains("--site beta needs a grant"),
        "{}",
        text(&partner.stderr)
    );
}
