//! Bad `site.toml` files: each exits 3 with a message naming the key or path. The messages
//! are snapshots; `$DIR` stands for the temporary directory.

use expect_test::{Expect, expect};

use crate::support::run_in;

/// Initializes a site in a temp dir, rewrites its site.toml with `edit`, runs `site up` on it
/// and checks the error message against `expected`.
fn check(edit: impl FnOnce(String) -> String, expected: Expect) {
    let dir = tempfile::tempdir().unwrap();
    let init = run_in(dir.path(), &["site", "init", "--name", "alpha"]);
    assert!(init.status.success());
    let config = dir.path().join("site.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, edit(text)).unwrap();
    let out = run_in(dir.path(), &["site", "up", "--config", "site.toml"]);
    assert_eq!(out.status.code(), Some(3), "expected exit code 3");
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(&dir.path().display().to_string(), "$DIR");
    expected.assert_eq(&stderr);
}

#[test]
fn unknown_key_is_named() {
    check(
        |t| t.replace("[site]\n", "[site]\ncolour = \"blue\"\n"),
        expect![[r#"
            error: invalid config site.toml: TOML parse error at line 5, column 1
              |
            5 | colour = "blue"
              | ^^^^^^
            unknown field `colour`, expected one of `name`, `listen`, `data_dir`, `max_connections`, `max_connections_per_address`, `max_outstanding_calls`
        "#]],
    );
}

#[test]
fn port_out_of_range_is_named() {
    check(
        |t| t.replace("127.0.0.1:7433", "127.0.0.1:70000"),
        expect![[r#"
            error: invalid config site.toml: TOML parse error at line 6, column 10
              |
            6 | listen = "127.0.0.1:70000"
              |          ^^^^^^^^^^^^^^^^^
            listen address "127.0.0.1:70000": port 70000 is out of range (0-65535; 0 picks a free port)
        "#]],
    );
}

#[test]
fn missing_cert_file_is_named() {
    check(
        |t| t.replace("certs/site.crt", "certs/nope.crt"),
        expect![[r#"
            error: invalid config site.toml: tls.cert: file not found: certs/nope.crt
        "#]],
    );
}

#[test]
fn bad_site_name_is_named() {
    check(
        |t| t.replace("name = \"alpha\"", "name = \"Alpha_1\""),
        expect![[r#"
            error: invalid config site.toml: site.name: invalid site name "Alpha_1": must be 1-63 lowercase letters, digits or inner hyphens
        "#]],
    );
}

#[test]
fn missing_section_is_named() {
    check(
        |t| t.replace("[grants]\nroot_key = \"certs/root.key\"\n", ""),
        expect![[r#"
            error: invalid config site.toml: TOML parse error at line 1, column 1
              |
            1 | # Written by `tinyci site init`. Every key is documented in site.toml.example.
              | ^
            missing field `grants`
        "#]],
    );
}

#[test]
fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["site", "up", "--config", "nowhere.toml"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot read config nowhere.toml: No such file or directory"),
        "{stderr}"
    );
}

#[test]
fn world_readable_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    assert!(run_in(dir.path(), &["site", "init"]).status.success());
    let key = dir.path().join("certs/site.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_in(dir.path(), &["site", "up", "--config", "site.toml"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls.key"), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

#[test]
fn github_login_without_a_public_url_is_named() {
    check(
        |t| {
            t + "\n[http]\nlisten = \"127.0.0.1:0\"\n\n[github]\nclient_id = \"app\"\n\
                 client_secret_file = \"certs/site.crt\"\n"
        },
        expect![[r#"
            error: invalid config site.toml: github.client_id: OAuth login needs [http] listen and public_url (GitHub redirects the browser back to public_url/oauth/callback)
        "#]],
    );
}

#[test]
fn unknown_user_capability_bad_public_url_and_public_repos_are_named() {
    check(
        |t| t + "\n[github]\ndefault_capabilities = [\"submit\", \"deploy\"]\n",
        expect![[r#"
            error: invalid config site.toml: github.default_capabilities: unknown capability "deploy": expected one of submit, cancel, modify:ci, modify:user, logs, secrets
        "#]],
    );
    check(
        |t| t + "\n[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"ci.example.com\"\n",
        expect![[r#"
            error: invalid config site.toml: http.public_url: "ci.example.com" is not an http:// or https:// URL
        "#]],
    );
    check(
        |t| t + "\n[http]\nlisten = \"127.0.0.1:0\"\npublic_repos = [\"octo\"]\n",
        expect![[r#"
            error: invalid config site.toml: http.public_repos: "octo": invalid repository name "octo": expected owner/name
        "#]],
    );
}

#[test]
fn site_check_validates_without_starting_and_names_the_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let init = run_in(dir.path(), &["site", "init", "--name", "alpha"]);
    assert!(init.status.success());
    let ok = run_in(dir.path(), &["site", "check"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.starts_with("site.toml is valid for site alpha"),
        "{out}"
    );
    assert!(out.contains("ok  grants.root_key"), "{out}");

    // A partner pin that is not a certificate: exit 3, naming the file.
    std::fs::create_dir_all(dir.path().join("federation")).unwrap();
    std::fs::write(
        dir.path().join("federation/beta.toml"),
        "site = \"beta\"\nca = \"not a certificate\"\n",
    )
    .unwrap();
    let bad = run_in(dir.path(), &["site", "check"]);
    assert_eq!(bad.status.code(), Some(3));
    let stderr =
        String::from_utf8_lossy(&bad.stderr).replace(&dir.path().display().to_string(), "$DIR");
    expect![[r#"
        error: federation/beta.toml: ca: bad certificate: not a PEM certificate: no items found
    "#]]
    .assert_eq(&stderr);
}

#[test]
fn bad_queue_policies_are_named() {
    check(
        |t| t + "\n[queues.default]\ntiers = [\"local\", \"forks\"]\n",
        expect![[r#"
            error: invalid config site.toml: queues: [queues.default] tiers: invalid trust tier "forks": expected local, repo, fork or partner:<site> (or partner for every partner)
        "#]],
    );
    check(
        |t| t + "\n[queues.gpu]\nisolation = { fork = \"vm\" }\n",
        expect![[r#"
            error: invalid config site.toml: queues: [queues.gpu] isolation.fork: invalid isolation "vm": expected host, sandbox or container
        "#]],
    );
    check(
        |t| t + "\n[queues.default]\nprivileged_repos = [\"not a repo\"]\n",
        expect![[r#"
            error: invalid config site.toml: queues: [queues.default] privileged_repos: invalid repository name "not a repo": expected owner/name
        "#]],
    );
    check(
        |t| t + "\n[queues.default]\npull = \"sometimes\"\n",
        expect![[r#"
            error: invalid config site.toml: queues: [queues.default] pull: invalid pull policy "sometimes": expected always, missing or never
        "#]],
    );
    check(
        |t| t + "\n[queues.default]\nshares = { \"partner:beta\" = 0 }\n",
        expect![[r#"
            error: invalid config site.toml: queues: [queues.default] shares.partner:beta: weight 0 is not 1-1000
        "#]],
    );
}

#[test]
fn a_malformed_secrets_key_is_named_and_never_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let init = run_in(dir.path(), &["site", "init", "--name", "alpha"]);
    assert!(init.status.success());
    tinyci_pki::write_secret_file(&dir.path().join("certs/jobs.key"), b"not-a-key-at-all\n")
        .unwrap();
    let config = dir.path().join("site.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text + "\n[secrets]\nkey = \"certs/jobs.key\"\n").unwrap();
    let out = run_in(dir.path(), &["site", "up", "--config", "site.toml"]);
    assert_eq!(out.status.code(), Some(3), "expected exit code 3");
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(&dir.path().display().to_string(), "$DIR");
    assert!(!stderr.contains("not-a-key-at-all"), "{stderr}");
    expect![[r#"
        error: failed to start the site
          caused by: invalid config certs/jobs.key: secrets.key: secrets key certs/jobs.key is malformed: the key line has 16 characters, expected 64 hex characters
    "#]].assert_eq(&stderr);
}

/// One duration grammar: what `--ttl` takes, site.toml's retention ages take (`2w` was once
/// refused there while the flag took it), and both refuse the same nonsense the same way.
#[test]
fn flags_and_site_toml_share_one_duration_grammar() {
    let dir = tempfile::tempdir().unwrap();
    let init = run_in(dir.path(), &["site", "init", "--name", "alpha"]);
    assert!(init.status.success());
    let config = dir.path().join("site.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[retention]\nlogs_max_age = \"2w\"\nsweep_every = \"90s\"\n"),
    )
    .unwrap();
    let ok = run_in(dir.path(), &["site", "check"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let grant_for = |ttl: &str| {
        run_in(
            dir.path(),
            &[
                "grant",
                "--to",
                "user:ana",
                "--right",
                "logs:read",
                "--repo",
                "org/x",
                "--ttl",
                ttl,
            ],
        )
    };
    let minted = grant_for("2w");
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );

    std::fs::write(
        &config,
        format!("{text}\n[retention]\nlogs_max_age = \"3y\"\n"),
    )
    .unwrap();
    let bad = run_in(dir.path(), &["site", "check"]);
    assert_eq!(bad.status.code(), Some(3));
    expect![[r#"
        error: invalid config site.toml: retention.logs_max_age: "3y" is not a duration: expected a whole number and a unit (s, m, h, d, w), e.g. 90s, 30m, 12h, 7d or 2w
    "#]]
    .assert_eq(&String::from_utf8_lossy(&bad.stderr));
    let bad_flag = grant_for("3y");
    assert_eq!(bad_flag.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_flag.stderr);
    assert!(
        stderr.contains(
            "\"3y\" is not a duration: expected a whole number and a unit (s, m, h, d, w), e.g. \
             90s, 30m, 12h, 7d or 2w"
        ),
        "{stderr}"
    );
}
