//! GitHub end to end: a real site (HTTP listener, webhooks, OAuth) and real runners against
//! the fake GitHub of `tinyci-fakegithub`, which records every call.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tinyci_fakegithub::{FakeGitHub, Status};

use crate::jobs::start_runner;
use crate::support::{SiteProcess, git_repo, init_site, run_in};

const REPO: &str = "octo/hello";
pub(crate) const CLIENT_ID: &str = "tinyci-test-app";
pub(crate) const CLIENT_SECRET: &str = "app-secret-for-tests";
/// The site's own GitHub token; a log-capture test may look for it.
pub(crate) const SITE_TOKEN: &str = "ghp_site_token_for_tests";
/// A hang guard, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(120);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The fake, served from its own thread for the whole test.
pub(crate) fn fake_github() -> Arc<FakeGitHub> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            tx.send(Arc::new(FakeGitHub::start().await)).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let fake = rx.recv().unwrap();
    fake.add_repo(REPO);
    fake.add_user(SITE_TOKEN, "tinyci-bot", 1);
    fake
}

/// A site `alpha` wired to `fake`, serving HTTP; returns it with its capnp and HTTP addresses.
struct GitHubSite {
    dir: tempfile::TempDir,
    /// Kept alive for the test; killed on drop.
    site: Option<SiteProcess>,
    addr: String,
    http: String,
}

fn start_github_site(fake: &FakeGitHub) -> GitHubSite {
    start_github_site_on(fake, "127.0.0.1:0")
}

/// Runs `site up` in `dir` (diagnostics at every level, RUST_LOG=trace, into
/// `dir/site.log`); returns it with its capnp and HTTP addresses.
fn serve_github_site(dir: &Path, listen: &str) -> (SiteProcess, String, String) {
    let args = [
        "--config",
        "site.toml",
        "--listen",
        listen,
        "--http-listen",
        "127.0.0.1:0",
        "--no-local-runner",
    ];
    let mut site = SiteProcess::start_logging(dir, &args, &dir.join("site.log"));
    let addr = site.wait_for("listening on ").trim().to_owned();
    let http = site.wait_for("http listening on ").trim().to_owned();
    (site, addr, http)
}

fn start_github_site_on(fake: &FakeGitHub, listen: &str) -> GitHubSite {
    let dir = tempfile::tempdir().unwrap();
    // These tests are about GitHub's flows, run on a host shell runner (their jobs touch
    // marker files the test watches): the site's policy admits its repository's writers'
    // work on hosts, as an operator who trusts them may.
    let extra = format!(
        "\n[queues.default]\nisolation = {{ repo = \"host\" }}\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://ci.example.test\"\n\n\
         [github]\napi_url = \"{}\"\nweb_url = \"{}\"\ntoken_file = \"certs/github.token\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret_file = \"certs/github-oauth.secret\"\n\
         allow = [\"OctoCat\", \"@octo-crew\", \"@octo/core\"]\n\
         default_capabilities = [\"submit\", \"logs\"]\n",
        fake.api_url(),
        fake.web_url()
    );
    init_site(dir.path(), &extra);
    for (file, secret) in [
        ("certs/github.token", SITE_TOKEN),
        ("certs/github-oauth.secret", CLIENT_SECRET),
    ] {
        tinyci_pki::write_secret_file(&dir.path().join(file), secret.as_bytes()).unwrap();
    }
    let (site, addr, http) = serve_github_site(dir.path(), listen);
    GitHubSite {
        dir,
        site: Some(site),
        addr,
        http,
    }
}

impl GitHubSite {
    /// Fails if the site's log (every level, every process it ran as) holds any of
    /// `secrets`, or the admin token or the Biscuit root key. Also checks it logged at all.
    fn assert_no_secrets_logged(&self, secrets: &[&str]) {
        let log = std::fs::read_to_string(self.dir.path().join("site.log")).unwrap();
        assert!(
            log.contains("TRACE") || log.contains("DEBUG"),
            "nothing logged at trace level"
        );
        let admin_token =
            std::fs::read_to_string(self.dir.path().join("certs/admin.token")).unwrap();
        let root_key = std::fs::read_to_string(self.dir.path().join("certs/root.key")).unwrap();
        let root_line = root_key
            .lines()
            .find(|l| l.len() > 40 && !l.starts_with('#') && !l.starts_with("-----"))
            .unwrap_or_default()
            .to_owned();
        for secret in secrets
            .iter()
            .copied()
            .chain([admin_token.trim(), root_line.as_str()])
            .filter(|s| !s.is_empty())
        {
            // Long tokens may be split or wrapped; any 24-character piece is a leak.
            let piece = &secret[..secret.len().min(24)];
            assert!(
                !log.contains(piece),
                "a secret starting {:?} appears in the site's log",
                &secret[..4.min(secret.len())]
            );
        }
    }

    /// Kills the site with SIGKILL (a crash) and starts it again on the same capnp address.
    fn crash_and_restart(&mut self) {
        if let Some(site) = self.site.take() {
            site.kill9();
        }
        let (site, addr, http) = serve_github_site(self.dir.path(), &self.addr);
        assert_eq!(addr, self.addr);
        self.site = Some(site);
        self.http = http;
    }

    fn tinyci(&self, args: &[&str]) -> std::process::Output {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--addr", &self.addr]);
        run_in(self.dir.path(), &full)
    }

    /// Enables `REPO` and returns its webhook secret as GitHub holds it.
    fn enable(&self, fake: &FakeGitHub) -> String {
        let out = self.tinyci(&["admin", "repo", "enable", REPO]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let hooks = fake.hooks(REPO);
        assert_eq!(hooks.len(), 1, "{hooks:?}");
        assert_eq!(hooks[0].url, "https://ci.example.test/hooks/github");
        hooks[0].secret.clone()
    }

    fn start_runner(&self) -> SiteProcess {
        let out = self.tinyci(&["runner", "add", "r1", "--queue", "default"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        start_runner(self.dir.path(), "r1")
    }

    /// Every run the site has, as `admin runs` lines (`s-1 octo/hello  r-2 …`).
    fn runs(&self) -> Vec<String> {
        let out = self.tinyci(&["admin", "runs"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("s-"))
            .map(str::to_owned)
            .collect()
    }
}

/// An HTTP/1.1 exchange over a fresh connection: returns status, headers (lowercased
/// names) and body.
pub(crate) fn http(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = text(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

pub(crate) fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends a webhook delivery; `signature` None sends none.
fn deliver(
    site: &GitHubSite,
    event: &str,
    delivery: &str,
    signature: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut headers = vec![
        ("x-github-event", event),
        ("x-github-delivery", delivery),
        ("content-type", "application/json"),
    ];
    if let Some(signature) = signature {
        headers.push(("x-hub-signature-256", signature));
    }
    let (status, _, body) = http(&site.http, "POST", "/hooks/github", &headers, body);
    (status, body)
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// Makes a repository with `files`, publishes its tarball and `tinyci.yml` (on `main`, the
/// default branch) on the fake, and returns its commit id.
fn publish(fake: &FakeGitHub, files: &[(&str, &str)]) -> String {
    let repo = tempfile::tempdir().unwrap();
    git_repo(repo.path(), files);
    let sha = git(repo.path(), &["rev-parse", "HEAD"]);
    // GitHub's tarballs hold one top directory named after owner, repository and commit.
    let prefix = format!("octo-hello-{}/", &sha[..7]);
    let tarball = Command::new("git")
        .current_dir(repo.path())
        .args([
            "archive",
            "--format=tar.gz",
            &format!("--prefix={prefix}"),
            &sha,
        ])
        .output()
        .unwrap();
    assert!(tarball.status.success());
    fake.set_tarball(REPO, &sha, &tarball.stdout);
    if let Some((_, config)) = files.iter().find(|(p, _)| *p == "tinyci.yml") {
        fake.set_file(REPO, "main", "tinyci.yml", config.as_bytes());
    }
    sha
}

fn push_body(sha: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "deleted": false,
        "repository": {"full_name": REPO, "default_branch": "main"},
        "pusher": {"name": "octocat"},
        "head_commit": {"message": "Add tasks\n\nmore words"},
    }))
    .unwrap()
}

fn pull_request_body(action: &str, number: u64, sha: &str) -> Vec<u8> {
    pull_request_from(REPO, action, number, sha)
}

/// A pull request whose head branch lives in `head_repo` (a fork, unless it is `REPO`).
fn pull_request_from(head_repo: &str, action: &str, number: u64, sha: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "action": action,
        "number": number,
        "pull_request": {
            "title": "A change",
            "head": {"ref": "feature", "sha": sha, "repo": {"full_name": head_repo}},
            "base": {"ref": "main", "sha": "6113728f27ae82c7b1a177c8d03f9e96e0adf246"},
        },
        "repository": {"full_name": REPO, "default_branch": "main"},
    }))
    .unwrap()
}

/// Waits until `done` holds for the statuses on `sha`, then returns them.
fn wait_for_statuses(
    fake: &FakeGitHub,
    sha: &str,
    what: &str,
    done: impl Fn(&[Status]) -> bool,
) -> Vec<Status> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let statuses = fake.statuses(REPO, sha);
        if done(&statuses) {
            return statuses;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}; statuses so far: {statuses:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The statuses of one context, as `state: description`. A run leased in its submission's
/// commit (its runner was already waiting) never waited, so its first status is "started on";
/// the "pending: queued" a run that did wait gets first is put in front of such a sequence,
/// so sequences compare the same whichever way the run was leased.
fn sequence(statuses: &[Status], context: &str) -> Vec<String> {
    let mut sequence: Vec<String> = statuses
        .iter()
        .filter(|s| s.context == context)
        .map(|s| format!("{}: {}", s.state, s.description))
        .collect();
    if sequence
        .first()
        .is_some_and(|first| first.starts_with("pending: started on"))
    {
        sequence.insert(0, "pending: queued".to_owned());
    }
    sequence
}

fn is_final(status: &Status) -> bool {
    status.state != "pending"
}

const TASKS: &[(&str, &str)] = &[
    ("tinyci.yml", "queue: default\n"),
    (
        "task.yml",
        "mountpoint: /src\nruns:\n  passes:\n    command: [\"sh\", \"-c\", \"echo fine\"]\n  fails:\n    command: [\"sh\", \"-c\", \"echo broken; exit 4\"]\n",
    ),
];

#[test]
fn webhooks_are_verified_deduplicated_and_become_runs_that_report_statuses() {
    let fake = fake_github();
    let site = start_github_site(&fake);
    let secret = site.enable(&fake);
    let _runner = site.start_runner();
    let sha = publish(&fake, TASKS);
    let body = push_body(&sha);

    // Unsigned, wrongly signed, and signed over other bytes: 401, nothing queued.
    let (status, answer) = deliver(&site, "push", "d-1", None, &body);
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = deliver(&site, "push", "d-1", Some(&sign("wrong", &body)), &body);
    assert_eq!(status, 401, "{answer}");
    let (status, _) = deliver(&site, "push", "d-1", Some(&sign(&secret, b"{}")), &body);
    assert_eq!(status, 401);
    assert!(site.runs().is_empty(), "{:?}", site.runs());
    assert!(
        !fake.calls().iter().any(|c| c.path.contains("/tarball/")),
        "a refused delivery made the site fetch source"
    );

    // Signed: accepted; the same delivery again is acknowledged and ignored.
    let signature = sign(&secret, &body);
    let (status, answer) = deliver(&site, "push", "d-2", Some(&signature), &body);
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = deliver(&site, "push", "d-2", Some(&signature), &body);
    assert_eq!((status, answer.trim()), (200, "repeated delivery: ignored"));

    let statuses = wait_for_statuses(&fake, &sha, "both runs should end", |s| {
        s.iter().filter(|s| is_final(s)).count() == 2
    });
    let passes = sequence(&statuses, ".:passes");
    assert_eq!(passes.len(), 3, "{passes:?}");
    assert_eq!(passes[..2], ["pending: queued", "pending: started on r1"]);
    assert!(passes[2].starts_with("success: passed"), "{passes:?}");
    let fails = sequence(&statuses, ".:fails");
    assert_eq!(fails.len(), 3, "{fails:?}");
    assert_eq!(fails[..2], ["pending: queued", "pending: started on r1"]);
    assert!(
        fails[2].starts_with("failure: failed with exit code 4"),
        "{fails:?}"
    );
    for status in &statuses {
        let url = status.target_url.as_deref().unwrap_or_default();
        assert!(url.starts_with("https://ci.example.test/runs/r-"), "{url}");
    }
    // Exactly one submission's runs: the repeated delivery queued nothing.
    assert_eq!(site.runs().len(), 2, "{:?}", site.runs());
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.path.contains("/tarball/"))
            .count(),
        1
    );

    // Retrying the failed run makes its next attempt, which reports on the same commit; the
    // passed run's statuses are not repeated.
    let retried = site.tinyci(&["admin", "runs", "retry", "--failed", "s-1"]);
    assert!(retried.status.success(), "{}", text(&retried.stderr));
    assert!(
        text(&retried.stdout).contains(".:fails: attempt 2 queued"),
        "{}",
        text(&retried.stdout)
    );
    let statuses = wait_for_statuses(&fake, &sha, "the retried run should end again", |s| {
        s.iter().filter(|s| is_final(s)).count() == 3
    });
    let fails = sequence(&statuses, ".:fails");
    assert_eq!(fails.len(), 6, "{fails:?}");
    assert_eq!(fails[3..5], ["pending: queued", "pending: started on r1"]);
    assert!(
        fails[5].starts_with("failure: failed with exit code 4"),
        "{fails:?}"
    );
    assert_eq!(sequence(&statuses, ".:passes").len(), 3);
    assert_eq!(
        site.runs().len(),
        2,
        "a retry is the same run: {:?}",
        site.runs()
    );
    site.assert_no_secrets_logged(&[SITE_TOKEN, CLIENT_SECRET, &secret, &signature[7..]]);
}

/// A repository whose one run touches `marker`, then sleeps until canceled.
fn slow_tasks(marker: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("tinyci.yml", "queue: default\n".to_owned()),
        (
            "task.yml",
            format!(
                "mountpoint: /src\nruns:\n  slow:\n    command: [\"sh\", \"-c\", \"touch {}; sleep 600\"]\n",
                marker.display()
            ),
        ),
    ]
}

fn publish_owned(fake: &FakeGitHub, files: &[(&str, String)]) -> String {
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    publish(fake, &files)
}

#[test]
fn a_fork_gets_no_privilege_even_where_the_repository_and_the_site_grant_it() {
    let fake = fake_github();
    let mut site = start_github_site(&fake);
    // The site lets this repository's own work be privileged on the default queue.
    let config = site.dir.path().join("site.toml");
    let text_now = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text_now.replace(
            "isolation = { repo = \"host\" }",
            &format!("isolation = {{ repo = \"host\" }}\nprivileged_repos = [\"{REPO}\"]"),
        ),
    )
    .unwrap();
    site.crash_and_restart();
    let secret = site.enable(&fake);
    // The repository's default branch allows privilege too, and a run asks for it.
    let sha = publish(
        &fake,
        &[
            ("tinyci.yml", "allow_privileged: true\n"),
            (
                "task.yml",
                "mountpoint: /src\nruns:\n  dind:\n    command: [\"dockerd\"]\n    privileged: true\n",
            ),
        ],
    );

    // From a fork: refused, and the pull request is told why. Nothing is queued.
    let forked = pull_request_from("mallory/hello", "opened", 9, &sha);
    let (status, _) = deliver(
        &site,
        "pull_request",
        "fork-1",
        Some(&sign(&secret, &forked)),
        &forked,
    );
    assert_eq!(status, 202);
    crate::support::wait_until("the fork's pull request should get a comment", || {
        !fake.comments(REPO, 9).is_empty()
    });
    let comments = fake.comments(REPO, 9);
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(
        comments[0].contains("the site's policy refuses it"),
        "{}",
        comments[0]
    );
    assert!(
        comments[0].contains("fork work of octo/hello"),
        "{}",
        comments[0]
    );
    assert!(site.runs().is_empty(), "{:?}", site.runs());

    // The same commit pushed by the repository's writers is admitted, and waits for a runner
    // that allows privileged containers (there is none).
    let push = push_body(&sha);
    let (status, _) = deliver(&site, "push", "push-1", Some(&sign(&secret, &push)), &push);
    assert_eq!(status, 202);
    crate::support::wait_until("the push should be queued", || !site.runs().is_empty());
    let runs = site.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].contains("queued"), "{runs:?}");
    assert!(runs[0].contains("tier repo"), "{runs:?}");
    assert!(runs[0].contains("--allow-privileged"), "{runs:?}");
}

#[test]
fn pull_requests_supersede_and_cancel_their_runs_and_an_invalid_task_file_gets_one_comment() {
    let fake = fake_github();
    let site = start_github_site(&fake);
    let secret = site.enable(&fake);
    let _runner = site.start_runner();
    let pr = |action: &str, sha: &str, delivery: &str| {
        let body = pull_request_body(action, 7, sha);
        let (status, answer) = deliver(
            &site,
            "pull_request",
            delivery,
            Some(&sign(&secret, &body)),
            &body,
        );
        assert_eq!(status, 202, "{answer}");
    };

    // Opened, then a new commit pushed to it: the first run is superseded.
    let first_started = site.dir.path().join("first-started");
    let first = publish_owned(&fake, &slow_tasks(&first_started));
    pr("opened", &first, "pr-1");
    crate::support::wait_for_file(&first_started, "the pull request's run never started");
    let second_started = site.dir.path().join("second-started");
    let second = publish_owned(&fake, &slow_tasks(&second_started));
    pr("synchronize", &second, "pr-2");
    let statuses = wait_for_statuses(&fake, &first, "the first run should be superseded", |s| {
        s.iter().any(is_final)
    });
    let slow = sequence(&statuses, ".:slow");
    assert_eq!(slow[..2], ["pending: queued", "pending: started on r1"]);
    assert!(
        slow[2].starts_with("error: canceled: superseded by submission s-"),
        "{slow:?}"
    );

    // Closed: the current run is canceled.
    crate::support::wait_for_file(&second_started, "the second run never started");
    pr("closed", &second, "pr-3");
    let statuses = wait_for_statuses(&fake, &second, "the run should be canceled", |s| {
        s.iter().any(is_final)
    });
    let slow = sequence(&statuses, ".:slow");
    assert_eq!(
        slow,
        [
            "pending: queued",
            "pending: started on r1",
            "error: canceled: pull request #7 closed"
        ]
    );
    let runs = site.runs();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r.contains("canceled")), "{runs:?}");

    // A pull request whose task file does not parse: one comment quoting the error, no runs.
    let bad = publish(
        &fake,
        &[
            ("tinyci.yml", "queue: default\n"),
            (
                "task.yml",
                "mountpoint: /src\nruns:\n  broken:\n    comand: [\"true\"]\n",
            ),
        ],
    );
    let opened = pull_request_body("opened", 8, &bad);
    let (status, _) = deliver(
        &site,
        "pull_request",
        "pr-4",
        Some(&sign(&secret, &opened)),
        &opened,
    );
    assert_eq!(status, 202);
    // Deliveries are acted on in order: once a later one has run, this one is done.
    let good = publish(&fake, TASKS);
    let push = push_body(&good);
    let (status, _) = deliver(&site, "push", "push-1", Some(&sign(&secret, &push)), &push);
    assert_eq!(status, 202);
    wait_for_statuses(&fake, &good, "the later push should run", |s| {
        s.iter().filter(|s| is_final(s)).count() == 2
    });
    let comments = fake.comments(REPO, 8);
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(comments[0].contains("task.yml"), "{}", comments[0]);
    assert!(comments[0].contains("comand"), "{}", comments[0]);
    assert!(fake.statuses(REPO, &bad).is_empty());
    assert_eq!(site.runs().len(), 4, "{:?}", site.runs());
}

#[test]
fn enabling_then_disabling_a_repository_creates_then_deletes_one_webhook() {
    let fake = fake_github();
    let site = start_github_site(&fake);
    site.enable(&fake);
    // Enabling again changes nothing.
    let again = site.tinyci(&["admin", "repo", "enable", REPO]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let list = site.tinyci(&["admin", "repo", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["name"], REPO);
    assert_eq!(list[0]["enabled"], true);
    let disabled = site.tinyci(&["admin", "repo", "disable", REPO]);
    assert!(disabled.status.success(), "{}", text(&disabled.stderr));
    assert!(fake.hooks(REPO).is_empty());
    let hook_calls: Vec<String> = fake
        .calls()
        .iter()
        .filter(|c| c.path.contains("/hooks"))
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert_eq!(hook_calls.len(), 2, "{hook_calls:?}");
    assert!(hook_calls[0].starts_with("POST /repos/octo/hello/hooks"));
    assert!(hook_calls[1].starts_with("DELETE /repos/octo/hello/hooks/"));
    // The site's token acted, never shown.
    assert!(
        fake.calls()
            .iter()
            .all(|c| c.token.as_deref() == Some(SITE_TOKEN))
    );
    let out = site.tinyci(&["admin", "repo", "enable", "not a repo"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a repo"),
        "{}",
        text(&out.stderr)
    );
}

/// Starts a browser login: returns the session cookie and the state GitHub would get.
fn browser_login(site: &GitHubSite, target: &str, cookie: Option<&str>) -> (String, String) {
    let cookie_header = cookie.map(|c| format!("tinyci_session={c}"));
    let mut headers = Vec::new();
    if let Some(c) = &cookie_header {
        headers.push(("cookie", c.as_str()));
    }
    let (status, answer, _) = http(&site.http, "GET", target, &headers, b"");
    assert_eq!(status, 303);
    let location = header(&answer, "location").unwrap().to_owned();
    assert!(
        location.contains("code_challenge_method=S256"),
        "{location}"
    );
    assert!(
        location.contains(&format!("client_id={CLIENT_ID}")),
        "{location}"
    );
    let state = location
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .unwrap()
        .to_owned();
    let session = match cookie {
        Some(c) => c.to_owned(),
        None => header(&answer, "set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("tinyci_session=")
            .unwrap()
            .to_owned(),
    };
    (session, state)
}

/// Opens a `tinyci login` link in a fresh browser session and enters `code` in its form.
/// Returns the session, and the state GitHub would get if the code was right (else the
/// page's status and text).
fn cli_login_in_browser(
    site: &GitHubSite,
    target: &str,
    code: &str,
) -> (String, Result<String, (u16, String)>) {
    let (status, answer, page) = http(&site.http, "GET", target, &[], b"");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Enter the code"), "{page}");
    let session = header(&answer, "set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("tinyci_session=")
        .unwrap()
        .to_owned();
    cli_login_in_browser_with(site, target, code, &session)
}

/// [`cli_login_in_browser`] in an existing browser session `session`.
fn cli_login_in_browser_with(
    site: &GitHubSite,
    target: &str,
    code: &str,
    session: &str,
) -> (String, Result<String, (u16, String)>) {
    let cookie = format!("tinyci_session={session}");
    let (status, page_head, page) = http(&site.http, "GET", target, &[("cookie", &cookie)], b"");
    assert_eq!(status, 200, "{page}");
    let session = session.to_owned();
    let field = |name: &str| {
        let marker = format!("name=\"{name}\" value=\"");
        let start = page.find(&marker).unwrap() + marker.len();
        page[start..].split('"').next().unwrap().to_owned()
    };
    let (login, form) = (field("login"), field("form"));
    let body = format!("login={login}&form={form}&code={code}");
    let (status, answer, page) = http(
        &site.http,
        "POST",
        "/oauth/login",
        &[
            ("cookie", &cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    );
    if status != 303 {
        return (session, Err((status, page)));
    }
    let location = header(&answer, "location").unwrap();
    // The form's page lets it post here and be redirected on to GitHub, and nowhere else: a
    // browser holds a post's redirects to form-action too.
    let after_scheme = location.find("://").unwrap() + 3;
    let github = &location[..after_scheme + location[after_scheme..].find('/').unwrap()];
    let policy = header(&page_head, "content-security-policy").unwrap();
    assert!(
        policy.contains(&format!("form-action 'self' {github};")),
        "{policy}"
    );
    let state = location
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .unwrap()
        .to_owned();
    // The rest of the login runs in a fresh session (a planted cookie is worth nothing).
    let fresh = header(&answer, "set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("tinyci_session=")
        .unwrap()
        .to_owned();
    assert_ne!(fresh, session);
    (fresh, Ok(state))
}

fn callback(site: &GitHubSite, session: &str, state: &str, code: &str) -> (u16, String) {
    let cookie = format!("tinyci_session={session}");
    let (status, _, body) = http(
        &site.http,
        "GET",
        &format!("/oauth/callback?code={code}&state={state}"),
        &[("cookie", &cookie)],
        b"",
    );
    (status, body)
}

#[test]
fn oauth_refuses_reused_and_foreign_states_and_a_good_login_yields_a_working_profile() {
    let fake = fake_github();
    let site = start_github_site(&fake);
    fake.add_user("gho_user_token", "OctoCat", 583231);

    // A state from another browser session is refused (and used up).
    let (_alice, state) = browser_login(&site, "/oauth/login", None);
    let (mallory, _) = browser_login(&site, "/oauth/login", None);
    fake.add_oauth_code("code-1", CLIENT_ID, CLIENT_SECRET, "gho_user_token");
    let (status, page) = callback(&site, &mallory, &state, "code-1");
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("another browser session"), "{page}");

    // `tinyci login`: the browser side is played here.
    let profile = site.dir.path().join("profile");
    let mut login = SiteProcess::spawn(
        site.dir.path(),
        &[
            "login",
            "--url",
            &format!("http://{}", site.http),
            "--out",
            profile.to_str().unwrap(),
            "--no-browser",
        ],
    );
    fake.add_collaborator(REPO, "OctoCat", false, true);
    let user_code = login.wait_for("Your login code: ").trim().to_owned();
    let url = login.wait_for("Sign in with GitHub to finish: ");
    let target = url
        .trim()
        .strip_prefix("https://ci.example.test")
        .unwrap()
        .to_owned();
    // The code is typed as people do: lower case, without the dash.
    let typed = user_code.replace('-', "").to_lowercase();
    let (session, state) = cli_login_in_browser(&site, &target, &typed);
    let state = state.unwrap();
    let (status, page) = callback(&site, &session, &state, "code-1");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Signed in to tinyci site alpha as octocat"),
        "{page}"
    );
    let (code, output) = login.wait();
    assert_eq!(code, Some(0), "{output:?}");
    assert!(
        output
            .iter()
            .any(|l| l.starts_with("signed in to site alpha as octocat (GitHub OctoCat)")),
        "{output:?}"
    );

    // The same state again: refused.
    let (status, page) = callback(&site, &session, &state, "code-1");
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("unknown or already used"), "{page}");

    // The user exists, linked; the GitHub token is not in the store in plain text.
    let users = site.tinyci(&["admin", "user", "list", "--json"]);
    let users: serde_json::Value = serde_json::from_slice(&users.stdout).unwrap();
    assert_eq!(
        users,
        serde_json::json!([{"name": "octocat", "github": "OctoCat", "capabilities": ["submit", "logs"]}])
    );
    let store = std::fs::read(site.dir.path().join("data/data.mdb")).unwrap();
    assert!(
        !store.windows(14).any(|w| w == b"gho_user_token"),
        "the GitHub token is stored in the clear"
    );

    // The profile works: the user submits with their own certificate and token.
    let repo = tempfile::tempdir().unwrap();
    git_repo(repo.path(), TASKS);
    let submit = run_in(
        site.dir.path(),
        &[
            "submit",
            repo.path().to_str().unwrap(),
            "--all",
            "--repo",
            REPO,
            "--profile",
            profile.to_str().unwrap(),
        ],
    );
    assert!(submit.status.success(), "{}", text(&submit.stderr));
    assert!(
        text(&submit.stdout).contains("2 runs"),
        "{}",
        text(&submit.stdout)
    );
    let runs = site.tinyci(&["admin", "runs"]);
    assert!(text(&runs.stdout).contains("r-"), "{}", text(&runs.stdout));
    let user_token = std::fs::read_to_string(profile.join("user.token")).unwrap();
    site.assert_no_secrets_logged(&[
        "gho_user_token",
        CLIENT_SECRET,
        "code-1",
        user_token.trim(),
        &state,
        &session,
    ]);
}

/// `alice` pinned to her GitHub account, `ops` to none.
fn assert_pinned(site: &GitHubSite) {
    let list = site.tinyci(&["admin", "user", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        list,
        serde_json::json!([
            {"name": "alice", "github": "alice", "capabilities": ["submit"]},
            {"name": "ops", "github": "", "capabilities": ["modify:user"]},
        ])
    );
}

/// A login is a name anyone may hold. A user an admin added when GitHub had no account of
/// that name (a user meant for certificates only, or a handle not yet registered) cannot be
/// claimed by whoever registers the login later; a user whose account GitHub named at
/// `user add` is pinned to that account, which signs in as it.
#[test]
fn a_github_login_claims_only_the_user_its_account_was_pinned_to() {
    let fake = fake_github();
    let site = start_github_site(&fake);
    let added = site.tinyci(&["admin", "user", "add", "ops", "--cap", "modify:user"]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    fake.add_user("gho_alice_then", "alice", 500);
    let added = site.tinyci(&["admin", "user", "add", "alice", "--cap", "submit"]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert_pinned(&site);

    // Someone registers "ops" on GitHub and signs in: refused, and ops stays unlinked.
    let (exit, lines, _) = cli_login(&site, &fake, ("gho_mallory", "ops", 666, "code-ops"));
    // (Its stderr, shown with the test's, says: "that user was added without a GitHub account".)
    assert_ne!(exit, Some(0), "{lines:#?}");
    // Alice's account signs in as alice, holding what the admin gave her.
    let (exit, lines, _) = cli_login(&site, &fake, ("gho_alice", "alice", 500, "code-alice"));
    assert_eq!(exit, Some(0), "{lines:#?}");
    assert_pinned(&site);
}

#[test]
fn admins_add_users_and_change_their_capabilities() {
    let fake = fake_github();
    let site = start_github_site(&fake);
    let added = site.tinyci(&["admin", "user", "add", "alice", "--cap", "submit"]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    let again = site.tinyci(&["admin", "user", "add", "alice"]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("alice"),
        "{}",
        text(&again.stderr)
    );
    for (action, cap) in [
        ("add", "cancel"),
        ("add", "modify:ci"),
        ("remove", "submit"),
    ] {
        let out = site.tinyci(&["admin", "user", "cap", action, "alice", cap]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let unknown = site.tinyci(&["admin", "user", "cap", "add", "alice", "deploy"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("deploy"),
        "{}",
        text(&unknown.stderr)
    );
    let list = site.tinyci(&["admin", "user", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        list,
        serde_json::json!([{"name": "alice", "github": "", "capabilities": ["cancel", "modify:ci"]}])
    );
}

#[test]
fn statuses_resume_after_a_site_crash_without_repeats_or_gaps() {
    let fake = fake_github();
    let port = crate::jobs::free_port();
    let mut site = start_github_site_on(&fake, &format!("127.0.0.1:{port}"));
    let secret = site.enable(&fake);
    let _runner = site.start_runner();
    let started = site.dir.path().join("started");
    let release = site.dir.path().join("release");
    // The job waits for the test's go-ahead, so the crash falls while it runs.
    let task = format!(
        "mountpoint: /src\nruns:\n  waits:\n    command: [\"sh\", \"-c\", \"touch {}; while [ ! -e {} ]; do sleep 0.05; done\"]\n",
        started.display(),
        release.display()
    );
    let sha = publish(
        &fake,
        &[("tinyci.yml", "queue: default\n"), ("task.yml", &task)],
    );
    let body = push_body(&sha);
    let (status, _) = deliver(&site, "push", "crash-1", Some(&sign(&secret, &body)), &body);
    assert_eq!(status, 202);
    crate::support::wait_for_file(&started, "the run never started");
    wait_for_statuses(&fake, &sha, "started should be posted", |s| {
        s.iter().any(|s| s.description.starts_with("started on"))
    });

    site.crash_and_restart();
    std::fs::write(&release, b"").unwrap();
    let statuses = wait_for_statuses(&fake, &sha, "the run should end", |s| {
        s.iter().any(is_final)
    });
    let waits = sequence(&statuses, ".:waits");
    assert_eq!(waits.len(), 3, "{waits:?}");
    assert_eq!(waits[..2], ["pending: queued", "pending: started on r1"]);
    assert!(waits[2].starts_with("success: passed"), "{waits:?}");
    // The delivery was acted on once, before the crash.
    assert_eq!(site.runs().len(), 1, "{:?}", site.runs());
}

/// Runs `tinyci login` for GitHub user `login` (token `token`, OAuth code `code`), playing the
/// browser side: returns the command's exit code and output, and its profile directory.
fn cli_login(
    site: &GitHubSite,
    fake: &FakeGitHub,
    (token, login, id, code): (&str, &str, u64, &str),
) -> (Option<i32>, Vec<String>, std::path::PathBuf) {
    fake.add_user(token, login, id);
    fake.add_oauth_code(code, CLIENT_ID, CLIENT_SECRET, token);
    let profile = site.dir.path().join(format!("profile-{login}"));
    let mut command = SiteProcess::spawn(
        site.dir.path(),
        &[
            "login",
            "--url",
            &format!("http://{}", site.http),
            "--out",
            profile.to_str().unwrap(),
            "--no-browser",
        ],
    );
    let user_code = command.wait_for("Your login code: ").trim().to_owned();
    let url = command.wait_for("Sign in with GitHub to finish: ");
    let target = url.trim().strip_prefix("https://ci.example.test").unwrap();
    let (session, state) = cli_login_in_browser(site, target, &user_code);
    callback(site, &session, &state.unwrap(), code);
    let (exit, output) = command.wait();
    (exit, output, profile)
}

#[test]
fn a_forwarded_login_link_signs_no_one_in() {
    let fake = fake_github();
    let site = start_github_site(&fake);
    // The attacker starts a login and sends the link, without the code, to a victim.
    let mut attacker = SiteProcess::spawn(
        site.dir.path(),
        &[
            "login",
            "--url",
            &format!("http://{}", site.http),
            "--out",
            site.dir.path().join("stolen").to_str().unwrap(),
            "--no-browser",
        ],
    );
    let code = attacker.wait_for("Your login code: ").trim().to_owned();
    let url = attacker.wait_for("Sign in with GitHub to finish: ");
    let target = url
        .trim()
        .strip_prefix("https://ci.example.test")
        .unwrap()
        .to_owned();

    // Opening the link goes nowhere near GitHub: it asks for the terminal's code.
    let (status, answer, page) = http(&site.http, "GET", &target, &[], b"");
    assert_eq!(status, 200, "{page}");
    assert!(header(&answer, "location").is_none());
    assert!(page.contains("If someone sent you this link"), "{page}");

    // A page elsewhere posting the form for the victim (with the code the attacker knows)
    // has no form token of the victim's session: refused.
    let cookie = header(&answer, "set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let login = target.split("login=").nth(1).unwrap();
    let forged = format!("login={login}&form=guess&code={code}");
    let (status, _, page) = http(
        &site.http,
        "POST",
        "/oauth/login",
        &[
            ("cookie", &cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        forged.as_bytes(),
    );
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("not shown to this browser"), "{page}");
    // And from another origin, refused before anything is read.
    let (status, _, page) = http(
        &site.http,
        "POST",
        "/oauth/login",
        &[
            ("cookie", &cookie),
            ("origin", "https://evil.example"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        forged.as_bytes(),
    );
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("evil.example"), "{page}");

    // The victim, who does not know the code, guesses: every guess is refused and after five
    // the login is over; the attacker's terminal gets nothing.
    for attempt in 1..=5 {
        let (_, refused) = cli_login_in_browser(&site, &target, "BCDF-GHJK");
        let (status, page) = refused.unwrap_err();
        assert_eq!(status, 403, "{page}");
        if attempt < 5 {
            assert!(
                page.contains("not the code your terminal printed"),
                "{page}"
            );
        } else {
            assert!(page.contains("too many wrong codes"), "{page}");
        }
    }
    let (exit, output) = attacker.wait();
    assert_ne!(exit, Some(0), "{output:?}");
    assert!(!site.dir.path().join("stolen/user.token").exists());
}

#[test]
fn site_users_reach_only_what_github_lets_their_account_and_lose_it_at_once() {
    let fake = fake_github();
    let site = start_github_site(&fake);
    let secret_repo = "octo/secret";
    fake.add_repo(secret_repo);
    // OctoCat (in [github] allow) may read octo/hello, not push to it; octo/secret is not
    // theirs at all.
    fake.add_collaborator(REPO, "OctoCat", false, false);
    let repo = tempfile::tempdir().unwrap();
    git_repo(repo.path(), TASKS);
    let submit_as_admin = |name: &str| {
        let out = site.tinyci(&[
            "submit",
            repo.path().to_str().unwrap(),
            "--all",
            "--repo",
            name,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("r-"))
            .map(|rest| format!("r-{}", rest.split_whitespace().next().unwrap()))
            .unwrap()
    };
    let hello_run = submit_as_admin(REPO);
    let secret_run = submit_as_admin(secret_repo);

    let (exit, output, profile) = cli_login(&site, &fake, ("gho_octo", "OctoCat", 583231, "c-1"));
    assert_eq!(exit, Some(0), "{output:?}");
    let profile = profile.to_str().unwrap();
    let logs = |run: &str| run_in(site.dir.path(), &["logs", run, "--profile", profile]);
    assert!(
        logs(&hello_run).status.success(),
        "{}",
        text(&logs(&hello_run).stderr)
    );
    let refused = logs(&secret_run);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains(&format!("no run \"{secret_run}\"")),
        "{}",
        text(&refused.stderr)
    );
    let submitted = run_in(
        site.dir.path(),
        &[
            "submit",
            repo.path().to_str().unwrap(),
            "--all",
            "--repo",
            REPO,
            "--profile",
            profile,
        ],
    );
    assert!(!submitted.status.success());
    assert!(
        text(&submitted.stderr)
            .contains("GitHub does not let OctoCat (user octocat) push to octo/hello"),
        "{}",
        text(&submitted.stderr)
    );

    // `tinyci cancel` works for users too, with the cancel capability only: OctoCat has none.
    let denied = run_in(
        site.dir.path(),
        &["cancel", &hello_run, "--profile", profile],
    );
    assert!(!denied.status.success());
    assert!(
        text(&denied.stderr).contains("runs:cancel"),
        "{}",
        text(&denied.stderr)
    );
    // Managing users takes modify:user, which OctoCat does not hold.
    let listed = run_in(
        site.dir.path(),
        &["admin", "user", "list", "--profile", profile],
    );
    assert!(!listed.status.success());
    assert!(
        text(&listed.stderr).contains("users:modify"),
        "{}",
        text(&listed.stderr)
    );
    // `tinyci wait` follows what they may read: the admin cancels, the user sees it end.
    let number: u64 = hello_run.trim_start_matches("r-").parse().unwrap();
    let hello_submission = format!("s-{}", number - 1);
    let canceled = site.tinyci(&["cancel", &hello_submission]);
    assert!(canceled.status.success(), "{}", text(&canceled.stderr));
    let waited = run_in(
        site.dir.path(),
        &["wait", &hello_submission, "--profile", profile],
    );
    assert_eq!(waited.status.code(), Some(4), "{}", text(&waited.stderr));
    assert!(
        text(&waited.stdout).contains("canceled"),
        "{}",
        text(&waited.stdout)
    );
    let secret_number: u64 = secret_run.trim_start_matches("r-").parse().unwrap();
    let hidden = run_in(
        site.dir.path(),
        &[
            "wait",
            &format!("s-{}", secret_number - 1),
            "--profile",
            profile,
        ],
    );
    assert!(!hidden.status.success());
    assert!(
        text(&hidden.stderr).contains("no submission"),
        "{}",
        text(&hidden.stderr)
    );
    acting_from_the_environment(&site, profile, &hello_run, &secret_run);

    // A login [github] allow does not name signs in holding nothing, and is told so; members
    // of an organization or a team it names are let in.
    let (exit, output, _) = cli_login(&site, &fake, ("gho_mallory", "mallory", 666, "c-2"));
    assert_ne!(exit, Some(0), "{output:?}");
    fake.add_org_member("octo-crew", "crewmate");
    let (exit, output, _) = cli_login(&site, &fake, ("gho_crew", "crewmate", 667, "c-3"));
    assert_eq!(exit, Some(0), "{output:?}");
    fake.add_team_member("octo", "core", "teammate");
    let (exit, output, _) = cli_login(&site, &fake, ("gho_team", "teammate", 668, "c-4"));
    assert_eq!(exit, Some(0), "{output:?}");

    // Taking the capability away ends the user's token and sessions now.
    let removed = site.tinyci(&["admin", "user", "cap", "remove", "octocat", "logs"]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    let after = logs(&hello_run);
    assert!(!after.status.success());
    assert!(
        text(&after.stderr).contains("revoked"),
        "{}",
        text(&after.stderr)
    );
}

/// Session fixation: an attacker who planted their session cookie in a victim's browser and
/// confirmed their own login's code with it cannot have the victim finish it: the rest of the
/// login belongs to a fresh session the victim's browser does not have.
#[test]
fn a_planted_session_cookie_does_not_carry_a_login_through() {
    let fake = fake_github();
    let site = start_github_site(&fake);
    let mut attacker = SiteProcess::spawn(
        site.dir.path(),
        &[
            "login",
            "--url",
            &format!("http://{}", site.http),
            "--out",
            site.dir.path().join("fixated").to_str().unwrap(),
            "--no-browser",
        ],
    );
    let code = attacker.wait_for("Your login code: ").trim().to_owned();
    let url = attacker.wait_for("Sign in with GitHub to finish: ");
    let target = url.trim().strip_prefix("https://ci.example.test").unwrap();
    let (planted, state) = {
        // The attacker's own browser session: the cookie they plant in the victim's browser.
        let (_, answer, _) = http(&site.http, "GET", target, &[], b"");
        let planted = header(&answer, "set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("tinyci_session=")
            .unwrap()
            .to_owned();
        let (fresh, state) = cli_login_in_browser_with(&site, target, &code, &planted);
        assert_ne!(fresh, planted);
        (planted, state.unwrap())
    };
    fake.add_user("gho_victim", "victim", 777);
    fake.add_oauth_code("c-victim", CLIENT_ID, CLIENT_SECRET, "gho_victim");
    // The victim's browser, carrying the planted cookie, comes back from GitHub: refused.
    let (status, page) = callback(&site, &planted, &state, "c-victim");
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("another browser session"), "{page}");
    drop(attacker);
}

/// tinyCI's core idea on GitHub: a push runs the tasks its diff `before...after` touches (a
/// new branch: its diff from the default branch), a pull request the tasks of `base...head`,
/// on GitHub's test merge commit unless `merge_options` say not to merge; statuses go to the
/// pushed commit either way. A task directory with a non-ASCII name is selected by its diff.
#[test]
fn pushes_and_pull_requests_run_what_their_diff_touches_on_the_merge_commit() {
    let fake = fake_github();
    let site = start_github_site(&fake);
    let secret = site.enable(&fake);
    let _runner = site.start_runner();
    let task = |command: &str| {
        format!("mountpoint: /src\nruns:\n  check:\n    command: [\"sh\", \"-c\", \"{command}\"]\n")
    };
    let tree = |which: &str| {
        vec![
            ("tinyci.yml", "queue: default\n".to_owned()),
            ("api/task.yml", task("echo api")),
            ("web/task.yml", task("cat web/which")),
            ("web/which", format!("{which}\n")),
            ("dokumentë/task.yml", task("echo docs")),
        ]
    };
    let head = publish_owned(&fake, &tree("head"));
    let merge = publish_owned(&fake, &tree("merged"));
    let mut delivery = 0;
    let mut send = |event: &str, body: serde_json::Value| {
        delivery += 1;
        let body = serde_json::to_vec(&body).unwrap();
        let (status, answer) = deliver(
            &site,
            event,
            &format!("diff-{delivery}"),
            Some(&sign(&secret, &body)),
            &body,
        );
        assert_eq!(status, 202, "{answer}");
    };
    let push = |git_ref: &str, before: &str| {
        serde_json::json!({
            "ref": git_ref,
            "before": before,
            "after": head,
            "deleted": false,
            "repository": {"full_name": REPO, "default_branch": "main"},
            "pusher": {"name": "octocat"},
            "head_commit": {"message": "A change"},
        })
    };
    let finished = |context: &str, count: usize| {
        wait_for_statuses(
            &fake,
            &head,
            &format!("{context} should finish {count}x"),
            |s| {
                s.iter()
                    .filter(|s| s.context == context && is_final(s))
                    .count()
                    == count
            },
        )
    };
    let contexts = |statuses: &[Status]| {
        let mut seen: Vec<String> = statuses.iter().map(|s| s.context.clone()).collect();
        seen.sort();
        seen.dedup();
        seen
    };

    // A push to main touching api/ runs api's task only.
    let before = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
    fake.set_comparison(REPO, before, &head, &["api/src/lib.rs"]);
    send("push", push("refs/heads/main", before));
    let statuses = finished("api:check", 1);
    assert_eq!(contexts(&statuses), ["api:check"]);

    // A new branch is compared with the default branch: a non-ASCII task directory.
    fake.set_comparison(REPO, "main", &head, &["dokumentë/guide.md"]);
    send(
        "push",
        push(
            "refs/heads/docs",
            "0000000000000000000000000000000000000000",
        ),
    );
    let statuses = finished("dokumentë:check", 1);
    assert_eq!(contexts(&statuses), ["api:check", "dokumentë:check"]);

    // A pull request runs what base...head touches, on GitHub's merge commit; its status is
    // on the head.
    let pull_request = |number: u64, merge_commit: Option<&str>| {
        serde_json::json!({
            "action": "opened",
            "number": number,
            "pull_request": {
                "title": "Web change",
                "head": {"ref": "feature", "sha": head, "repo": {"full_name": REPO}},
                "base": {"ref": "main", "sha": before},
                "merge_commit_sha": merge_commit,
            },
            "repository": {"full_name": REPO, "default_branch": "main"},
        })
    };
    fake.set_comparison(REPO, before, &head, &["web/index.html"]);
    fake.set_commit_parents(REPO, &merge, &[before, &head]);
    send("pull_request", pull_request(7, Some(&merge)));
    finished("web:check", 1);
    let web_log = |nth: usize| {
        let line = site
            .runs()
            .into_iter()
            .filter(|l| l.contains("web:check"))
            .nth(nth)
            .unwrap_or_else(|| panic!("{:?}", site.runs()));
        let run = line.split_whitespace().nth(2).unwrap().to_owned();
        text(&site.tinyci(&["logs", &run]).stdout)
    };
    // Newest first: the only web run so far.
    assert_eq!(web_log(0), "merged\n");

    // With merge_options.do_not_merge the head itself runs; a payload without a merge
    // commit asks GitHub's API for one.
    fake.set_file(
        REPO,
        "main",
        "tinyci.yml",
        b"queue: default\nmerge_options:\n  do_not_merge: true\n",
    );
    fake.set_pull_merge(REPO, 8, Some(&merge));
    send("pull_request", pull_request(8, None));
    finished("web:check", 2);
    assert_eq!(web_log(0), "head\n");
    assert_eq!(site.runs().len(), 4, "{:?}", site.runs());
    let tarballs_of = |sha: &str| {
        fake.calls()
            .iter()
            .filter(|c| c.path.contains("/tarball/") && c.path.contains(sha))
            .count()
    };
    assert_eq!(tarballs_of(&merge), 1);

    // Merging again (the default), with no merge commit in the payload: GitHub's API gives it.
    // (A new event for the pull request: the very same body again would be a replay.)
    fake.set_file(REPO, "main", "tinyci.yml", b"queue: default\n");
    let mut synchronized = pull_request(8, None);
    synchronized["action"] = serde_json::json!("synchronize");
    send("pull_request", synchronized);
    finished("web:check", 3);
    assert_eq!(web_log(0), "merged\n");
    assert_eq!(tarballs_of(&merge), 2);

    // A merge commit of an older head (GitHub had not recomputed it yet) is not built: the
    // status goes to this head, so this head is what runs.
    let stale = publish_owned(&fake, &tree("stale merge"));
    fake.set_commit_parents(
        REPO,
        &stale,
        &[before, "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"],
    );
    send("pull_request", pull_request(9, Some(&stale)));
    finished("web:check", 4);
    assert_eq!(web_log(0), "head\n");
    assert_eq!(tarballs_of(&stale), 0);
}

#[test]
fn a_push_gets_the_repositorys_secrets_and_a_fork_only_those_named_for_forks() {
    let fake = fake_github();
    let site = start_github_site(&fake);
    let secret = site.enable(&fake);
    let added = site.tinyci(&["runner", "add", "r1", "--queue", "default"]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    // Fork work needs a sandbox.
    let _runner = crate::jobs::start_runner_with(site.dir.path(), "r1", "sandbox");
    for (name, value, tiers) in [
        ("REPO_TOKEN", "repo-token-value-1", "local,repo"),
        ("FORK_TOKEN", "fork-token-value-2", "fork"),
    ] {
        let file = site.dir.path().join("value");
        std::fs::write(&file, value).unwrap();
        let out = site.tinyci(&[
            "secret",
            "set",
            name,
            "--repo",
            REPO,
            "--tier",
            tiers,
            "--file",
            file.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let sha = publish(
        &fake,
        &[
            ("tinyci.yml", "queue: default\n"),
            (
                "task.yml",
                "mountpoint: /src\nruns:\n  main:\n    command: [\"sh\", \"-c\", \"echo REPO_LEN=${#REPO_TOKEN} FORK_LEN=${#FORK_TOKEN} $REPO_TOKEN $FORK_TOKEN\"]\n",
            ),
        ],
    );
    let log_of = |run: &str| {
        let out = site.tinyci(&["logs", run, "-f"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };

    let push = push_body(&sha);
    let (status, _) = deliver(&site, "push", "push-1", Some(&sign(&secret, &push)), &push);
    assert_eq!(status, 202);
    crate::support::wait_until("the push should be queued", || !site.runs().is_empty());
    let log = log_of("r-2");
    assert!(log.contains("REPO_LEN=18 FORK_LEN=0 ***"), "{log}");

    let forked = pull_request_from("mallory/hello", "opened", 9, &sha);
    let (status, _) = deliver(
        &site,
        "pull_request",
        "fork-1",
        Some(&sign(&secret, &forked)),
        &forked,
    );
    assert_eq!(status, 202);
    crate::support::wait_until("the fork's run should be queued", || site.runs().len() == 2);
    let log = log_of("r-4");
    assert!(log.contains("REPO_LEN=0 FORK_LEN=18 ***"), "{log}");
    for value in ["repo-token-value-1", "fork-token-value-2"] {
        assert!(!log.contains(value), "{log}");
    }
}

/// Who acts, from the environment: `TINYCI_PROFILE`, `TINYCI_TOKEN` (kept out of `ps`),
/// `TINYCI_CONFIG`, and the one profile `tinyci login` wrote, found where it writes them.
/// Each is shown acting as itself: the user reads `hello_run` but not `secret_run`, which the
/// admin could.
fn acting_from_the_environment(
    site: &GitHubSite,
    profile: &str,
    hello_run: &str,
    secret_run: &str,
) {
    let elsewhere = tempfile::tempdir().unwrap();
    // Grants and the admin dial the site's address; a profile carries its own.
    let logs = |dir: &std::path::Path, run: &str, env: &[(&str, &std::ffi::OsStr)]| {
        let mut command = crate::support::tinyci();
        command.current_dir(dir).args(["logs", run]);
        if env
            .iter()
            .any(|(name, _)| *name != "TINYCI_PROFILE" && *name != "XDG_CONFIG_HOME")
        {
            command.args(["--addr", &site.addr]);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().unwrap()
    };
    let as_user = |out: std::process::Output, run: &str, readable: bool, how: &str| {
        if readable {
            // Printed: exit 0, or 4 as the run was canceled; never unreachable or refused.
            assert!(
                matches!(out.status.code(), Some(0 | 4)),
                "{how}: {}",
                text(&out.stderr)
            );
        } else {
            assert!(
                text(&out.stderr).contains(&format!("no run \"{run}\"")),
                "{how}: {}",
                text(&out.stderr)
            );
        }
    };

    // TINYCI_PROFILE beats the site.toml in the current directory.
    let env = [("TINYCI_PROFILE", std::ffi::OsStr::new(profile))];
    as_user(
        logs(site.dir.path(), hello_run, &env),
        hello_run,
        true,
        "TINYCI_PROFILE",
    );
    as_user(
        logs(site.dir.path(), secret_run, &env),
        secret_run,
        false,
        "TINYCI_PROFILE",
    );

    // A site the command line names beats TINYCI_PROFILE: its admin acts.
    let named = {
        let mut command = crate::support::tinyci();
        command
            .current_dir(site.dir.path())
            .args(["logs", secret_run, "--addr", &site.addr])
            .env("TINYCI_PROFILE", profile);
        command.output().unwrap()
    };
    assert!(
        matches!(named.status.code(), Some(0 | 4)),
        "{}",
        text(&named.stderr)
    );

    // With no site configuration here, the one login profile under XDG_CONFIG_HOME.
    let config_home = tempfile::tempdir().unwrap();
    let profiles = config_home.path().join("tinyci");
    std::fs::create_dir_all(&profiles).unwrap();
    std::os::unix::fs::symlink(profile, profiles.join("alpha")).unwrap();
    let env = [("XDG_CONFIG_HOME", config_home.path().as_os_str())];
    as_user(
        logs(elsewhere.path(), hello_run, &env),
        hello_run,
        true,
        "login profile",
    );
    as_user(
        logs(elsewhere.path(), secret_run, &env),
        secret_run,
        false,
        "login profile",
    );
    // Two are not guessed between.
    std::os::unix::fs::symlink(profile, profiles.join("beta")).unwrap();
    let two = logs(elsewhere.path(), hello_run, &env);
    assert_eq!(two.status.code(), Some(3), "{}", text(&two.stderr));
    assert!(
        text(&two.stderr).contains("2 login profiles") && text(&two.stderr).contains("alpha, beta"),
        "{}",
        text(&two.stderr)
    );

    // TINYCI_TOKEN: a grant for hello's repository only, never on the command line (bound to
    // the admin certificate this host connects with, and narrower than the admin token).
    let grant = run_in(
        site.dir.path(),
        &[
            "grant",
            "--to",
            "admin:admin",
            "--right",
            "logs:read",
            "--repo",
            REPO,
            "--ttl",
            "1h",
        ],
    );
    assert!(grant.status.success(), "{}", text(&grant.stderr));
    let token = text(&grant.stdout).trim().to_owned();
    let env = [("TINYCI_TOKEN", std::ffi::OsStr::new(&token))];
    as_user(
        logs(site.dir.path(), hello_run, &env),
        hello_run,
        true,
        "TINYCI_TOKEN",
    );
    let other = logs(site.dir.path(), secret_run, &env);
    assert_eq!(other.status.code(), Some(1), "{}", text(&other.stderr));
    assert!(
        text(&other.stderr).contains(&format!("no run \"{secret_run}\"")),
        "a grant for {REPO} read {secret_run}: {}",
        text(&other.stderr)
    );
    // Both set, and no site named (which would rule the profile out), is refused rather than
    // one picked.
    let both = {
        let mut command = crate::support::tinyci();
        command
            .current_dir(site.dir.path())
            .args(["logs", hello_run])
            .env("TINYCI_TOKEN", &token)
            .env("TINYCI_PROFILE", profile);
        command.output().unwrap()
    };
    assert_eq!(both.status.code(), Some(3), "{}", text(&both.stderr));

    // TINYCI_CONFIG: the admin, from anywhere.
    let config = site.dir.path().join("site.toml");
    let env = [("TINYCI_CONFIG", config.as_os_str())];
    let admin = logs(elsewhere.path(), secret_run, &env);
    assert!(
        matches!(admin.status.code(), Some(0 | 4)),
        "{}",
        text(&admin.stderr)
    );
}
