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
