//! `tinyci grant` and `tinyci token …` as a user runs them.

use expect_test::expect;

use crate::support::{SiteProcess, run_in};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Replaces 128-hex-digit revocation ids with a placeholder, so output is stable.
fn redact_ids(output: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in output.chars() {
        if c.is_ascii_hexdigit() && c.is_ascii_lowercase() || c.is_ascii_digit() {
            run.push(c);
            continue;
        }
        out.push_str(if run.len() == 128 {
            "<revocation-id>"
        } else {
            &run
        });
        run.clear();
        out.push(c);
    }
    out.push_str(if run.len() == 128 {
        "<revocation-id>"
    } else {
        &run
    });
    out
}

fn init(dir: &std::path::Path) {
    let init = run_in(dir, &["site", "init", "--name", "alpha"]);
    assert!(init.status.success(), "{}", text(&init.stderr));
}

#[test]
fn token_inspect_shows_every_block() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let minted = run_in(
        dir.path(),
        &[
            "grant",
            "--to",
            "site:beta",
            "--right",
            "queue:submit",
            "--right",
            "logs:read",
            "--repo",
            "org/x",
            "--no-expiry",
            "--out",
            "beta.token",
        ],
    );
    assert!(minted.status.success(), "{}", text(&minted.stderr));
    assert!(text(&minted.stderr).contains(
        "granted: site:beta may queue:submit, logs:read on repo org/x at site alpha, with no expiry"
    ));
    let narrowed = run_in(
        dir.path(),
        &[
            "token",
            "attenuate",
            "beta.token",
            "--right",
            "logs:read",
            "--out",
            "narrow.token",
        ],
    );
    assert!(narrowed.status.success(), "{}", text(&narrowed.stderr));

    let inspected = run_in(dir.path(), &["token", "inspect", "narrow.token"]);
    assert!(inspected.status.success(), "{}", text(&inspected.stderr));
    expect![[r#"
        summary: site:beta may queue:submit, logs:read on repo org/x at site alpha, with no expiry, narrowed by 1 attenuation block
        block 0 (authority, signed by the site), revocation id <revocation-id>:
            site("alpha");
            holder("site:beta");
            right("queue:submit");
            right("logs:read");
            repo("org/x");
        block 1 (attenuation), revocation id <revocation-id>:
            check if operation("logs:read");
    "#]]
    .assert_eq(&redact_ids(&text(&inspected.stdout)));

    // Token text works as well as a file, and is never needed to be secret for inspection.
    let token = std::fs::read_to_string(dir.path().join("beta.token")).unwrap();
    let inline = run_in(dir.path(), &["token", "inspect", token.trim()]);
    expect![[r#"
        summary: site:beta may queue:submit, logs:read on repo org/x at site alpha, with no expiry
        block 0 (authority, signed by the site), revocation id <revocation-id>:
            site("alpha");
            holder("site:beta");
            right("queue:submit");
            right("logs:read");
            repo("org/x");
    "#]]
    .assert_eq(&redact_ids(&text(&inline.stdout)));
}

#[test]
fn grant_input_errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let cases: [(&[&str], i32, &str); 6] = [
        (
            &[
                "grant",
                "--to",
                "site:beta",
                "--right",
                "queue:submit",
                "--repo",
                "org/x",
            ],
            2,
            "--ttl <DURATION>",
        ),
        (
            &["grant", "--to", "beta", "--right", "admin", "--ttl", "1h"],
            3,
            "error: invalid holder \"beta\": expected site:NAME, runner:NAME, admin:NAME or user:NAME",
        ),
        (
            &[
                "grant",
                "--to",
                "site:beta",
                "--right",
                "queue:fly",
                "--ttl",
                "1h",
            ],
            3,
            "error: invalid right \"queue:fly\"",
        ),
        (
            &[
                "grant",
                "--to",
                "site:beta",
                "--right",
                "queue:submit",
                "--ttl",
                "1h",
            ],
            3,
            "error: queue:submit needs at least one --repo (use --repo '*' to cover every repo)",
        ),
        (
            &[
                "grant",
                "--to",
                "site:beta",
                "--right",
                "queue:take",
                "--queue",
                "a",
                "--ttl",
                "7y",
            ],
            2,
            "\"7y\" is not a duration",
        ),
        (
            &["token", "attenuate", "not-a-token", "--queue", "a"],
            3,
            "error: token refused: not base64url token text",
        ),
    ];
    for (args, code, message) in cases {
        let out = run_in(dir.path(), args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in {stderr}"
        );
    }
}

#[test]
fn grants_minted_offline_are_listed_and_revoked_over_rpc() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let mut site = SiteProcess::start(
        dir.path(),
        &["--config", "site.toml", "--listen", "127.0.0.1:0"],
    );
    let addr = site.wait_for("listening on ").trim().to_owned();

    // Minting needs no running site, and works beside one.
    let minted = run_in(
        dir.path(),
        &[
            "grant",
            "--to",
            "runner:r1",
            "--right",
            "queue:take",
            "--queue",
            "gpu",
            "--ttl",
            "7d",
            "--out",
            "r1.token",
        ],
    );
    assert!(minted.status.success(), "{}", text(&minted.stderr));
    let id = text(&minted.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("revocation id: ").map(str::to_owned))
        .unwrap();

    let listed = run_in(dir.path(), &["token", "list", "--addr", &addr]);
    let out = text(&listed.stdout);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let row = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("runner:r1")
            && row.contains("queue:take")
            && row.contains("queue gpu")
            && row.contains("active"),
        "{row}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("admin:admin") && l.contains("never") && l.contains("site init")),
        "{out}"
    );

    let revoked = run_in(
        dir.path(),
        &["token", "revoke", "r1.token", "--addr", &addr],
    );
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    assert_eq!(text(&revoked.stdout), format!("revoked {id}\n"));

    let listed = run_in(dir.path(), &["token", "list", "--addr", &addr]);
    let out = text(&listed.stdout);
    let row = out.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(row.contains("revoked"), "{row}");

    // Revoking something that is not ours is an error, not a silent success.
    let bogus = run_in(
        dir.path(),
        &["token", "revoke", "nonsense", "--addr", &addr],
    );
    assert_eq!(bogus.status.code(), Some(1));
    assert!(
        text(&bogus.stderr).contains("cannot revoke: token refused"),
        "{}",
        text(&bogus.stderr)
    );
    let (clean, _) = site.terminate();
    assert!(clean);
}
