//! `tinyci admin … --json`: the documented, stable shapes scripts rely on, as snapshots
//! (times, which vary, are replaced by 0 when set).

use expect_test::{Expect, expect};

use crate::jobs::start_runner;
use crate::support::{git_repo, run_in, start_site};

fn json_of(dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = run_in(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Replaces the values of time fields that are set with 0, so snapshots are stable.
fn without_times(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(list) = value.as_array_mut() {
        for item in list {
            for key in ["created_at", "started_at", "finished_at"] {
                if item.get(key).is_some_and(|v| v.as_i64() != Some(0)) {
                    item[key] = 0.into();
                }
            }
        }
    }
    value
}

/// A submission as `submit --json` and `wait --json` print it, with what varies (times, the
/// commit) fixed.
fn submission_without_variance(mut value: serde_json::Value) -> serde_json::Value {
    assert!(value["created_at"].as_i64().unwrap() > 0, "{value}");
    value["created_at"] = 0.into();
    assert_eq!(value["sha"].as_str().unwrap().len(), 40, "{value}");
    value["sha"] = "sha".into();
    value["runs"] = without_times(value["runs"].take());
    value
}

fn check(value: serde_json::Value, expected: Expect) {
    expected.assert_eq(&serde_json::to_string_pretty(&value).unwrap());
}

#[test]
fn admin_json_shapes_are_stable() {
    let dir = tempfile::tempdir().unwrap();
    let (_site, addr) = start_site(dir.path(), "");
    let added = run_in(
        dir.path(),
        &["runner", "add", "r1", "--queue", "default", "--addr", &addr],
    );
    assert!(added.status.success());
    let _runner = start_runner(dir.path(), "r1");
    let repo = tempfile::tempdir().unwrap();
    git_repo(
        repo.path(),
        &[
            ("tinyci.yml", "queue: default\n"),
            (
                "task.yml",
                "mountpoint: /src\nruns:\n  check:\n    command: [\"sh\", \"-c\", \"exit 2\"]\n",
            ),
        ],
    );
    let submitted = run_in(
        dir.path(),
        &[
            "submit",
            repo.path().to_str().unwrap(),
            "--all",
            "--wait",
            "--repo",
            "org/x",
            "--addr",
            &addr,
        ],
    );
    assert!(!submitted.status.success(), "the run fails on purpose");
    let user = run_in(
        dir.path(),
        &[
            "admin", "user", "add", "ana", "--cap", "submit", "--addr", &addr,
        ],
    );
    assert!(user.status.success());

    // `wait --json`: the submission once every run ended; exit 4, as its run failed.
    let waited = run_in(dir.path(), &["wait", "s-1", "--json", "--addr", &addr]);
    assert_eq!(
        waited.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    check(
        submission_without_variance(serde_json::from_slice(&waited.stdout).unwrap()),
        expect![[r#"
            {
              "created_at": 0,
              "ref": "refs/heads/main",
              "repo": "org/x",
              "runs": [
                {
                  "attempt": 1,
                  "created_at": 0,
                  "exit_code": 2,
                  "finished_at": 0,
                  "id": "r-2",
                  "message": "exit code 2",
                  "name": "check",
                  "queue": "default",
                  "ref": "refs/heads/main",
                  "repo": "org/x",
                  "runner": "r1",
                  "started_at": 0,
                  "status": "failed",
                  "submission": "s-1",
                  "task": ".",
                  "tier": "local",
                  "waiting": ""
                }
              ],
              "sha": "sha",
              "status": "failed",
              "submission": "s-1"
            }"#]],
    );
    check(
        json_of(dir.path(), &["artifacts", "r-2", "--json", "--addr", &addr]),
        expect!["[]"],
    );
    let mut status = json_of(dir.path(), &["site", "status", "--json", "--addr", &addr]);
    assert_eq!(status["address"], addr.as_str());
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    // SHA-256 as 32 colon-separated hex pairs, as `site up` prints it.
    assert_eq!(
        status["ca_fingerprint"].as_str().unwrap().len(),
        95,
        "{status}"
    );
    for (key, fixed) in [
        ("address", "127.0.0.1:port"),
        ("version", "version"),
        ("ca_fingerprint", "fingerprint"),
    ] {
        status[key] = fixed.into();
    }
    status["uptime_millis"] = 0.into();
    check(
        status,
        expect![[r#"
        {
          "address": "127.0.0.1:port",
          "ca_fingerprint": "fingerprint",
          "site": "alpha",
          "uptime_millis": 0,
          "version": "version",
          "you_are": "tinyci://alpha/admin/admin"
        }"#]],
    );
    // `--status` takes exactly the words `--json` prints, and the site knows each of them.
    for word in [
        "queued",
        "leased",
        "running",
        "passed",
        "failed",
        "canceled",
        "timed_out",
        "errored",
    ] {
        let listed = json_of(
            dir.path(),
            &["admin", "runs", "--status", word, "--json", "--addr", &addr],
        );
        let listed = listed.as_array().unwrap();
        assert!(
            listed.iter().all(|run| run["status"] == word),
            "{word}: {listed:?}"
        );
        assert_eq!(listed.len(), usize::from(word == "failed"), "{word}");
    }
    let mistyped = run_in(
        dir.path(),
        &["admin", "runs", "--status", "timed out", "--addr", &addr],
    );
    assert_eq!(mistyped.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&mistyped.stderr).contains("timed_out"),
        "the refusal lists the words: {}",
        String::from_utf8_lossy(&mistyped.stderr)
    );

    check(
        without_times(json_of(
            dir.path(),
            &["admin", "runs", "--json", "--addr", &addr],
        )),
        expect![[r#"
            [
              {
                "attempt": 1,
                "created_at": 0,
                "exit_code": 2,
                "finished_at": 0,
                "id": "r-2",
                "message": "exit code 2",
                "name": "check",
                "queue": "default",
                "ref": "refs/heads/main",
                "repo": "org/x",
                "runner": "r1",
                "started_at": 0,
                "status": "failed",
                "submission": "s-1",
                "task": ".",
                "tier": "local",
                "waiting": ""
              }
            ]"#]],
    );
    check(
        json_of(dir.path(), &["admin", "queues", "--json", "--addr", &addr]),
        expect![[r#"
            [
              {
                "active": 0,
                "depth": 0,
                "groups": [
                  {
                    "active": 0,
                    "group": "local",
                    "leased": 1,
                    "queued": 0,
                    "weight": 1
                  }
                ],
                "name": "default",
                "paused": false
              }
            ]"#]],
    );
    let mut runners = json_of(dir.path(), &["admin", "runners", "--json", "--addr", &addr]);
    // What varies by host and time: set, then fixed for the snapshot.
    for runner in runners.as_array_mut().unwrap() {
        assert!(runner["connected_at"].as_i64().unwrap() > 0, "{runner}");
        assert_eq!(runner["version"], env!("CARGO_PKG_VERSION"));
        runner["connected_at"] = 0.into();
        runner["hostname"] = "host".into();
        runner["version"] = "version".into();
    }
    check(
        runners,
        expect![[r#"
            [
              {
                "connected_at": 0,
                "draining": false,
                "executors": [
                  "shell"
                ],
                "hostname": "host",
                "identity": "tinyci://alpha/runner/r1",
                "isolation": "host",
                "labels": [],
                "name": "r1",
                "paused": false,
                "queues": [
                  "default"
                ],
                "runs": [],
                "slots": 1,
                "version": "version"
              }
            ]"#]],
    );
    check(
        json_of(
            dir.path(),
            &["admin", "user", "list", "--json", "--addr", &addr],
        ),
        expect![[r#"
            [
              {
                "capabilities": [
                  "submit"
                ],
                "github": "",
                "name": "ana"
              }
            ]"#]],
    );
    check(
        json_of(
            dir.path(),
            &["admin", "repo", "list", "--json", "--addr", &addr],
        ),
        expect!["[]"],
    );
    let paused = run_in(
        dir.path(),
        &["admin", "queues", "pause", "default", "--addr", &addr],
    );
    assert!(
        paused.status.success(),
        "{}",
        String::from_utf8_lossy(&paused.stderr)
    );
    let queues = json_of(dir.path(), &["admin", "queues", "--json", "--addr", &addr]);
    assert_eq!(queues[0]["paused"], true);

    // A paused runner is leased nothing; resumed, it takes the waiting run.
    for (args, field) in [
        (["admin", "queues", "resume", "default"], None),
        (["admin", "runners", "pause", "r1"], Some(true)),
    ] {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--addr", &addr]);
        let out = run_in(dir.path(), &full);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(paused) = field {
            let runners = json_of(dir.path(), &["admin", "runners", "--json", "--addr", &addr]);
            assert_eq!(runners[0]["paused"], paused);
        }
    }
    let queued = run_in(
        dir.path(),
        &[
            "submit",
            repo.path().to_str().unwrap(),
            "--all",
            "--repo",
            "org/y",
            "--json",
            "--addr",
            &addr,
        ],
    );
    assert!(queued.status.success());
    check(
        submission_without_variance(serde_json::from_slice(&queued.stdout).unwrap()),
        expect![[r#"
            {
              "created_at": 0,
              "ref": "refs/heads/main",
              "repo": "org/y",
              "runs": [
                {
                  "attempt": 0,
                  "created_at": 0,
                  "exit_code": -1,
                  "finished_at": 0,
                  "id": "r-4",
                  "message": "",
                  "name": "check",
                  "queue": "default",
                  "ref": "refs/heads/main",
                  "repo": "org/y",
                  "runner": "",
                  "started_at": 0,
                  "status": "queued",
                  "submission": "s-3",
                  "task": ".",
                  "tier": "local",
                  "waiting": ""
                }
              ],
              "sha": "sha",
              "status": "queued",
              "submission": "s-3"
            }"#]],
    );
    let queues = json_of(dir.path(), &["admin", "queues", "--json", "--addr", &addr]);
    assert_eq!(
        queues[0]["depth"], 1,
        "a paused runner took the run: {queues}"
    );
    let resumed = run_in(
        dir.path(),
        &["admin", "runners", "resume", "r1", "--addr", &addr],
    );
    assert!(resumed.status.success());
    let waited = run_in(dir.path(), &["wait", "s-3", "--addr", &addr]);
    let waited = String::from_utf8_lossy(&waited.stdout);
    assert!(
        waited.contains("failed"),
        "the resumed runner should run it: {waited}"
    );

    // Retrying a finished run makes its next attempt: the same run, in the same submission.
    let retried = run_in(
        dir.path(),
        &["admin", "runs", "retry", "r-2", "--addr", &addr],
    );
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&retried.stdout).trim(),
        "retrying r-2: attempt 2 queued (submission s-1)"
    );
    let waited = run_in(dir.path(), &["wait", "s-1", "--addr", &addr]);
    assert!(String::from_utf8_lossy(&waited.stdout).contains("failed"));
    let again = json_of(
        dir.path(),
        &["admin", "runs", "show", "r-2", "--json", "--addr", &addr],
    );
    assert_eq!(again["attempt"], 2, "{again}");
    assert_eq!(again["status"], "failed", "{again}");
    // --failed retries every failed run of a submission; one with none says so.
    let failed = run_in(
        dir.path(),
        &["admin", "runs", "retry", "--failed", "s-1", "--addr", &addr],
    );
    assert!(
        String::from_utf8_lossy(&failed.stdout).contains("r-2 .:check: attempt 3 queued"),
        "{}{}",
        String::from_utf8_lossy(&failed.stdout),
        String::from_utf8_lossy(&failed.stderr)
    );
    let waited = run_in(dir.path(), &["wait", "s-1", "--addr", &addr]);
    assert!(String::from_utf8_lossy(&waited.stdout).contains("failed"));
    let shown = json_of(
        dir.path(),
        &["admin", "runs", "show", "r-2", "--json", "--addr", &addr],
    );
    let listed = json_of(dir.path(), &["admin", "runs", "--json", "--addr", &addr]);
    let listed_r2 = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "r-2")
        .unwrap();
    // `show` is one element of the listing plus which secrets each attempt was given.
    let mut shown = shown;
    assert_eq!(shown["secrets"], serde_json::json!([]));
    shown.as_object_mut().unwrap().remove("secrets");
    assert_eq!(&shown, listed_r2);
    let status = json_of(dir.path(), &["admin", "status", "--json", "--addr", &addr]);
    assert_eq!(status["site"], "alpha");
    assert_eq!(status["you_are"], "tinyci://alpha/admin/admin");
    assert_eq!(status["runners_connected"], 1);
    assert_eq!(status["runs_queued"], 0);
    let mut keys: Vec<&String> = status.as_object().unwrap().keys().collect();
    keys.sort();
    expect![[r#"
        [
            "ca_fingerprint",
            "protocol",
            "runners_connected",
            "runs_active",
            "runs_queued",
            "site",
            "uptime_millis",
            "version",
            "you_are",
        ]
    "#]]
    .assert_debug_eq(&keys);
    let grants = json_of(dir.path(), &["token", "list", "--json", "--addr", &addr]);
    let admin_grant = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["holder"] == "admin:admin")
        .unwrap();
    let mut keys: Vec<&String> = admin_grant.as_object().unwrap().keys().collect();
    keys.sort();
    expect![[r#"
        [
            "expires",
            "holder",
            "issued_by",
            "revocation_id",
            "rights",
            "scope",
            "status",
        ]
    "#]]
    .assert_debug_eq(&keys);
    assert_eq!(admin_grant["status"], "active");
    let missing = run_in(
        dir.path(),
        &["admin", "runs", "retry", "r-99", "--addr", &addr],
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no run r-99"));
}
