//! Job secrets end to end (issue 20): a secret reaches only the runs its scope names, never
//! shows in a log however the job prints it, leaves nothing on the site's disk or in the
//! runner's work tree, is audited per delivery, and is withdrawn from a running job when
//! removed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::github::http;
use crate::support::{SiteProcess, git_repo, init_site, run_in, wait_for_file};

/// The secret variable's value: `/` and `+` make its URL-encoded form differ from it.
const TOKEN: &str = "s3cr3t/Value+42-xyz";
/// The secret file's content.
const FILE_SECRET: &str = "file-secret-content-123";

/// What the job prints: the variable whole, split across two writes with a pause between,
/// on stderr, base64- and URL-encoded; and the file.
const PRINT_SECRETS: &str = r#"
echo "TOKEN_LEN=${#TOKEN}"
if [ -n "$TOKEN" ]; then
  echo "whole: $TOKEN"
  printf 'split: %s' "$(printf %s "$TOKEN" | cut -c1-7)"
  sleep 0.3
  printf '%s\n' "$(printf %s "$TOKEN" | cut -c8-)"
  echo "stderr: $TOKEN" >&2
  printf 'b64: %s\n' "$(printf %s "$TOKEN" | base64 -w0)"
  printf 'url: %s\n' "$(printf %s "$TOKEN" | sed 's#/#%2F#g; s#+#%2B#g')"
fi
if [ -n "$TINYCI_SECRETS_DIR" ] && [ -f "$TINYCI_SECRETS_DIR/FILESECRET" ]; then
  echo "file: $(cat "$TINYCI_SECRETS_DIR/FILESECRET")"
  echo FILE_PRESENT
else
  echo NO_FILE
fi
"#;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A repository whose one run executes `script`.
fn repo_running(dir: &Path, script: &str) {
    git_repo(
        dir,
        &[
            ("tinyci.yml", "global_timeout: 120\n"),
            (
                "task.yml",
                "mountpoint: /src\nruns:\n  main:\n    command: [\"sh\", \"ci.sh\"]\n",
            ),
            ("ci.sh", script),
        ],
    );
}

/// `tinyci submit PATH --wait --repo NAME [extra]`; returns the run id and whether it passed.
fn submit_wait(site: &Path, repo: &Path, name: &str, addr: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "submit",
        repo.to_str().unwrap(),
        "--wait",
        "--addr",
        addr,
        "--repo",
        name,
    ];
    args.extend_from_slice(extra);
    let out = run_in(site, &args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    stdout
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|w| w.starts_with("r-"))
        .unwrap_or_else(|| panic!("no run id in {stdout}"))
        .to_owned()
}

fn logs(site: &Path, addr: &str, run: &str) -> String {
    let out = run_in(site, &["logs", run, "--raw", "--addr", addr]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// The deliveries `admin runs show RUN --json` lists.
fn deliveries(site: &Path, addr: &str, run: &str) -> Vec<serde_json::Value> {
    let out = run_in(
        site,
        &["admin", "runs", "show", run, "--json", "--addr", addr],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    value["secrets"].as_array().cloned().unwrap_or_default()
}

fn set_secret(site: &Path, addr: &str, args: &[&str], value: &str) -> std::process::Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), value).unwrap();
    let mut full = vec!["secret", "set", "--addr", addr, "--file"];
    full.push(file.path().to_str().unwrap());
    full.extend_from_slice(args);
    run_in(site, &full)
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|path| {
            std::fs::read(path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

fn base64(value: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("printf %s '{value}' | base64 -w0")])
        .output()
        .unwrap();
    text(&out.stdout)
}

#[test]
fn a_secret_reaches_only_its_scope_is_masked_everywhere_audited_and_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let site_dir = dir.path();
    let http_addr = format!("127.0.0.1:{}", crate::jobs::free_port());
    init_site(
        site_dir,
        &format!(
            "\n[http]\nlisten = \"{http_addr}\"\npublic_url = \"http://{http_addr}\"\npublic_repos = [\"org/app\"]\n"
        ),
    );
    // Everything the site and the runner log, at every level, goes to files outside the
    // data directory, scanned for the values at the end.
    let logs_dir = tempfile::tempdir().unwrap();
    let mut site = SiteProcess::start_logging(
        site_dir,
        &[
            "--config",
            "site.toml",
            "--listen",
            "127.0.0.1:0",
            "--no-local-runner",
        ],
        &logs_dir.path().join("site.log"),
    );
    let addr = site.wait_for("listening on ").trim().to_owned();
    let added = run_in(
        site_dir,
        &["runner", "add", "r1", "--queue", "default", "--addr", &addr],
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    let work = tempfile::tempdir().unwrap();
    let mut runner = SiteProcess::spawn_logging(
        site_dir,
        &[
            "runner",
            "--bundle",
            "r1.bundle",
            "--executor",
            "shell",
            "--work-dir",
            work.path().to_str().unwrap(),
        ],
        &logs_dir.path().join("runner.log"),
    );
    runner.wait_for("runner r1 of site alpha");

    // Setting: too short a value is refused; the others are set, and nothing prints a value.
    let short = set_secret(site_dir, &addr, &["SHORT", "--repo", "org/app"], "abc");
    assert!(!short.status.success());
    assert!(
        text(&short.stderr).contains("at least 6 bytes"),
        "{}",
        text(&short.stderr)
    );
    let set = set_secret(
        site_dir,
        &addr,
        &["TOKEN", "--repo", "org/app", "--ref", "main"],
        TOKEN,
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    let set_file = set_secret(
        site_dir,
        &addr,
        &["FILESECRET", "--repo", "org/app", "--as-file"],
        FILE_SECRET,
    );
    assert!(set_file.status.success(), "{}", text(&set_file.stderr));
    for out in [&set, &set_file] {
        assert!(!text(&out.stdout).contains(TOKEN) && !text(&out.stdout).contains(FILE_SECRET));
    }
    for args in [
        &["secret", "list", "--addr", &addr][..],
        &["secret", "list", "--json", "--addr", &addr],
    ] {
        let out = run_in(site_dir, args);
        let listed = text(&out.stdout);
        assert!(
            listed.contains("TOKEN") && listed.contains("FILESECRET"),
            "{listed}{}",
            text(&out.stderr)
        );
        assert!(
            !listed.contains(TOKEN) && !listed.contains(FILE_SECRET),
            "{listed}"
        );
    }

    // A matching run: local work of org/app on main.
    let repo = tempfile::tempdir().unwrap();
    repo_running(repo.path(), PRINT_SECRETS);
    let run = submit_wait(site_dir, repo.path(), "org/app", &addr, &[]);
    let log = logs(site_dir, &addr, &run);
    assert!(log.contains(&format!("TOKEN_LEN={}", TOKEN.len())), "{log}");
    assert!(log.contains("FILE_PRESENT"), "{log}");
    for line in ["whole: ***", "split: ***", "stderr: ***", "file: ***"] {
        assert!(log.contains(line), "{line} missing from {log}");
    }
    let encoded_b64 = base64(TOKEN);
    let url = TOKEN.replace('/', "%2F").replace('+', "%2B");
    let forbidden = [TOKEN, FILE_SECRET, encoded_b64.as_str(), url.as_str()];
    let page = http(&http_addr, "GET", &format!("/runs/{run}"), &[], b"").2;
    let raw =
        crate::web::dechunk(&http(&http_addr, "GET", &format!("/runs/{run}/log"), &[], b"").2);
    assert!(raw.contains("whole: ***"), "{raw}");
    for (what, shown) in [
        ("tinyci logs", &log),
        ("the run page", &page),
        ("the raw log", &raw),
    ] {
        for value in forbidden {
            assert!(!shown.contains(value), "{what} shows {value:?}");
        }
    }
    // The audit: one delivery per secret, to r1's verified identity.
    let audit = deliveries(site_dir, &addr, &run);
    let mut names: Vec<&str> = audit.iter().filter_map(|d| d["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["FILESECRET", "TOKEN"], "{audit:?}");
    for d in &audit {
        assert_eq!(d["runner"], "tinyci://alpha/runner/r1");
        assert_eq!(d["attempt"], 1);
    }
    let shown = run_in(site_dir, &["admin", "runs", "show", &run, "--addr", &addr]);
    assert!(text(&shown.stdout).contains("TOKEN (attempt 1) given to tinyci://alpha/runner/r1"));

    // Another repository gets neither; another ref gets only the secret for every ref.
    let other = tempfile::tempdir().unwrap();
    repo_running(other.path(), PRINT_SECRETS);
    let elsewhere = submit_wait(site_dir, other.path(), "org/other", &addr, &[]);
    let log = logs(site_dir, &addr, &elsewhere);
    assert!(
        log.contains("TOKEN_LEN=0") && log.contains("NO_FILE"),
        "{log}"
    );
    assert!(deliveries(site_dir, &addr, &elsewhere).is_empty());
    let git = Command::new("git")
        .current_dir(repo.path())
        .args(["branch", "dev"])
        .output()
        .unwrap();
    assert!(git.status.success());
    let dev = submit_wait(site_dir, repo.path(), "org/app", &addr, &["--ref", "dev"]);
    let log = logs(site_dir, &addr, &dev);
    assert!(
        log.contains("TOKEN_LEN=0") && log.contains("FILE_PRESENT"),
        "{log}"
    );
    let audit = deliveries(site_dir, &addr, &dev);
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["name"], "FILESECRET");

    // Removing a secret deletes its file from a running job, and later runs do not get it.
    let gate = tempfile::tempdir().unwrap();
    let ready = gate.path().join("ready");
    let waiting = tempfile::tempdir().unwrap();
    repo_running(
        waiting.path(),
        &format!(
            "touch {ready}\nwhile [ -f \"$TINYCI_SECRETS_DIR/FILESECRET\" ]; do sleep 0.05; done\necho WITHDRAWN\n",
            ready = ready.display()
        ),
    );
    let submit = SiteProcess::spawn(
        site_dir,
        &[
            "submit",
            waiting.path().to_str().unwrap(),
            "--wait",
            "--addr",
            &addr,
            "--repo",
            "org/app",
        ],
    );
    wait_for_file(&ready, "the job to start with its secret file");
    // Without --repo: the one repository holding a secret of that name.
    let removed = run_in(site_dir, &["secret", "rm", "FILESECRET", "--addr", &addr]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert_eq!(
        text(&removed.stdout).trim(),
        "secret FILESECRET of org/app removed"
    );
    let again = run_in(site_dir, &["secret", "rm", "FILESECRET", "--addr", &addr]);
    assert!(
        text(&again.stderr).contains("no repository holds a secret named FILESECRET"),
        "{}",
        text(&again.stderr)
    );
    let (code, lines) = submit.wait();
    assert_eq!(code, Some(0), "{lines:#?}");
    let after = submit_wait(site_dir, repo.path(), "org/app", &addr, &[]);
    let log = logs(site_dir, &addr, &after);
    assert!(
        log.contains("NO_FILE") && log.contains("whole: ***"),
        "{log}"
    );
    let names: Vec<String> = deliveries(site_dir, &addr, &after)
        .iter()
        .filter_map(|d| d["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["TOKEN"]);

    // Revoking the runner's grant while a job holds a secret file stops the job, and its
    // secret file goes with its directory.
    let held = "held-file-secret-456";
    let set = set_secret(
        site_dir,
        &addr,
        &["HELD_FILE", "--repo", "org/app", "--as-file"],
        held,
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    let ready = gate.path().join("holding");
    let holding = tempfile::tempdir().unwrap();
    repo_running(
        holding.path(),
        &format!(
            "test -f \"$TINYCI_SECRETS_DIR/HELD_FILE\" && touch {ready}\nwhile true; do sleep 0.05; done\n",
            ready = ready.display()
        ),
    );
    let submitted = run_in(
        site_dir,
        &[
            "submit",
            holding.path().to_str().unwrap(),
            "--addr",
            &addr,
            "--repo",
            "org/app",
        ],
    );
    assert!(submitted.status.success(), "{}", text(&submitted.stderr));
    wait_for_file(&ready, "the job to hold its secret file");
    assert_eq!(files_holding(work.path(), held.as_bytes()).len(), 1);
    let grants = run_in(site_dir, &["token", "list", "--json", "--addr", &addr]);
    let grants: serde_json::Value = serde_json::from_slice(&grants.stdout).unwrap();
    let id = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["holder"] == "runner:r1")
        .and_then(|g| g["revocation_id"].as_str())
        .unwrap()
        .to_owned();
    let revoked = run_in(site_dir, &["token", "revoke", &id, "--addr", &addr]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    // The whole secrets directory goes, the file and the variables alike: waiting on the file
    // alone raced the rest of the clean-up against the runner's kill below.
    crate::support::wait_until(
        "the revoked runner's secret files should be deleted",
        || {
            files_holding(work.path(), held.as_bytes()).is_empty()
                && files_holding(work.path(), TOKEN.as_bytes()).is_empty()
        },
    );

    // Nothing on disk: neither the site's data directory (the LMDB file, blobs, sources) nor
    // the runner's work tree holds a value.
    drop(runner);
    let (stopped, _) = site.terminate();
    assert!(stopped);
    for value in [TOKEN, FILE_SECRET, held] {
        let on_site = files_holding(&site_dir.join("data"), value.as_bytes());
        assert!(on_site.is_empty(), "{value:?} in {on_site:?}");
        let on_runner = files_holding(work.path(), value.as_bytes());
        assert!(on_runner.is_empty(), "{value:?} in {on_runner:?}");
    }
    // Nor any diagnostic either process wrote, at any level.
    let logged = std::fs::read_to_string(logs_dir.path().join("site.log")).unwrap()
        + &std::fs::read_to_string(logs_dir.path().join("runner.log")).unwrap();
    assert!(
        logged.contains("secrets delivered"),
        "the logs were written"
    );
    for value in forbidden {
        assert!(!logged.contains(value), "a log holds {value:?}");
    }
    // The scan read the store itself, not an empty directory.
    let scanned = files_under(&site_dir.join("data"));
    assert!(
        scanned.iter().any(|p| p.ends_with("data.mdb")),
        "{scanned:?}"
    );
}
