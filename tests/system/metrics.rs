//! The site's `/metrics`, `/healthz` and `/readyz` on its HTTP listener: the exposition parses
//! as Prometheus text format, and the counters move with calls, runs and denials.

use std::collections::BTreeMap;

use crate::github::http;
use crate::support::{SiteProcess, git_repo, init_site, run_in, serve_site_with_http};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses the Prometheus text exposition format strictly enough to catch a malformed line:
/// `# HELP`/`# TYPE` comments, and samples `name{label="value",…} number`. Returns every
/// sample keyed by its name and labels as written.
fn parse_exposition(body: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed = std::collections::BTreeSet::new();
    for line in body.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts
                .next()
                .unwrap_or_else(|| panic!("bare comment: {line}"));
            assert!(kind == "HELP" || kind == "TYPE", "unknown comment: {line}");
            if kind == "TYPE" {
                let ty = parts.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                    "{line}"
                );
                typed.insert(name.to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split(',') {
                let (key, quoted) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                assert!(
                    !key.is_empty() && quoted.starts_with('"') && quoted.ends_with('"'),
                    "{line}"
                );
            }
        }
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            typed.contains(family) || typed.contains(name),
            "sample before its TYPE: {line}"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

fn scrape(http_addr: &str) -> BTreeMap<String, f64> {
    let (status, headers, body) = http(http_addr, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200, "{body}");
    let content_type = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse_exposition(&body)
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[test]
fn metrics_parse_and_move_with_calls_runs_and_denials() {
    let dir = tempfile::tempdir().unwrap();
    init_site(dir.path(), "\n[http]\nlisten = \"127.0.0.1:0\"\n");
    let (_site, addr, http_addr) = serve_site_with_http(dir.path());
    for (path, answer) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let (status, _, body) = http(&http_addr, "GET", path, &[], b"");
        assert_eq!((status, body.trim()), (200, answer));
    }
    let before = scrape(&http_addr);

    // A call, a run that passes on a runner, and a refused token.
    let status = run_in(dir.path(), &["site", "status", "--addr", &addr]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let added = run_in(
        dir.path(),
        &["runner", "add", "r1", "--queue", "default", "--addr", &addr],
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    let mut runner = SiteProcess::spawn(
        dir.path(),
        &[
            "runner",
            "--bundle",
            "r1.bundle",
            "--executor",
            "shell",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let runner_metrics = runner
        .wait_for("runner metrics on http://")
        .trim()
        .trim_end_matches("/metrics")
        .to_owned();
    let repo = tempfile::tempdir().unwrap();
    git_repo(
        repo.path(),
        &[
            ("tinyci.yml", "queue: default\n"),
            (
                "task.yml",
                "mountpoint: /src\nruns:\n  say:\n    command: [\"sh\", \"-c\", \"echo hello metrics\"]\n",
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
            "--addr",
            &addr,
        ],
    );
    assert!(submitted.status.success(), "{}", text(&submitted.stderr));
    let refused = run_in(
        dir.path(),
        &[
            "logs",
            "r-2",
            "--token",
            "not-a-token",
            "--repo",
            "x/y",
            "--addr",
            &addr,
        ],
    );
    assert!(!refused.status.success());

    let after = scrape(&http_addr);
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert!(
        moved(r#"tinyci_rpc_calls_total{interface="Gateway",method="info",outcome="ok"}"#) >= 1.0
    );
    assert!(
        moved(r#"tinyci_rpc_calls_total{interface="Submitter",method="submit",outcome="ok"}"#)
            >= 1.0
    );
    assert!(
        moved(r#"tinyci_rpc_calls_total{interface="Gateway",method="redeem",outcome="failed"}"#)
            >= 1.0
    );
    assert!(moved(r#"tinyci_grants_redeemed_total{outcome="refused"}"#) >= 1.0);
    assert!(moved(r#"tinyci_grants_redeemed_total{outcome="ok"}"#) >= 1.0);
    assert!(moved(r#"tinyci_runs_total{status="passed"}"#) >= 1.0);
    assert!(moved("tinyci_log_bytes_total") >= "hello metrics\n".len() as f64);
    assert!(
        moved(r#"tinyci_rpc_duration_seconds_count{interface="Job",method="complete"}"#) >= 1.0
    );
    assert_eq!(value(&after, "tinyci_runners_connected"), 1.0);
    assert!(
        after.contains_key(r#"tinyci_queue_depth{queue="default"}"#),
        "{after:#?}"
    );

    // The runner's own endpoint.
    let runner_samples = scrape(&runner_metrics);
    assert_eq!(
        value(
            &runner_samples,
            r#"tinyci_runner_jobs_finished_total{verdict="passed",runner="r1"}"#
        ),
        1.0,
        "{runner_samples:#?}"
    );
    assert_eq!(
        value(&runner_samples, r#"tinyci_runner_connected{runner="r1"}"#),
        1.0
    );
    drop(runner);
}
