//! What installing tinyci gives an operator: shell completions, manual pages, and systemd units
//! that `systemd-analyze verify` accepts with this very binary in them.

use std::path::Path;

use crate::support::run_in;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn completions_are_generated_for_every_shell_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run_in(dir.path(), &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        // Flags as words: fish spells --json as `-l json`.
        for word in ["submit", "completions", "json", "profile"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    // The bash script is bash.
    let bash = run_in(dir.path(), &["completions", "bash"]);
    let file = dir.path().join("tinyci.bash");
    std::fs::write(&file, &bash.stdout).unwrap();
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .unwrap();
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let unknown = run_in(dir.path(), &["completions", "tcsh"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn manual_pages_cover_every_command_with_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let out = run_in(dir.path(), &["man", "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for page in [
        "tinyci.1",
        "tinyci-submit.1",
        "tinyci-site-up.1",
        "tinyci-admin-runs.1",
    ] {
        let roff =
            std::fs::read_to_string(out_dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(roff.contains(".TH tinyci"), "{page} has no title");
        assert!(
            roff.contains("runs did not pass"),
            "{page} lacks the exit codes"
        );
    }
    let top = std::fs::read_to_string(out_dir.join("tinyci.1")).unwrap();
    assert!(
        top.contains("TINYCI_TOKEN"),
        "tinyci.1 lacks the environment"
    );
    // clap's own help subcommand is not a page.
    assert!(!out_dir.join("tinyci-help.1").exists());
}

/// `packaging/verify-units.sh` runs `systemd-analyze verify` on the units with this binary at
/// their ExecStart path, and each ExecStart's arguments through the binary's own parser.
/// Required under CI (`TINYCI_REQUIRE_SYSTEMD=1`, systemd installed by `.ci/run`); elsewhere
/// skipped when systemd-analyze is missing.
#[test]
fn the_systemd_units_verify_with_this_binary() {
    let has_systemd = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_systemd {
        assert!(
            std::env::var_os("TINYCI_REQUIRE_SYSTEMD").is_none(),
            "TINYCI_REQUIRE_SYSTEMD is set but systemd-analyze is missing: apt-get install systemd"
        );
        eprintln!("SKIP: no systemd-analyze (apt-get install systemd)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new("bash")
        .arg(root.join("packaging/verify-units.sh"))
        .arg(env!("CARGO_BIN_EXE_tinyci"))
        .output()
        .unwrap();
    // Exit 2: the tools are too old (verify --root needs systemd 250) or missing.
    if out.status.code() == Some(2) && std::env::var_os("TINYCI_REQUIRE_SYSTEMD").is_none() {
        eprintln!("SKIP: {}", text(&out.stderr));
        return;
    }
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
