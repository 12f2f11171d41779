//! The run pages in a real browser: headless Chromium against a real site, runner and fake
//! GitHub. A public repository's running job shows its log live and its end; a private one's
//! page needs a GitHub login; cancel needs the session's anti-forgery token.

use std::path::Path;

use crate::browser::{Browser, PHONE, artifact_path};
use crate::github::{CLIENT_ID, CLIENT_SECRET, SITE_TOKEN, fake_github, header, http};
use crate::jobs::{free_port, start_runner};
use crate::support::{SiteProcess, git_repo, init_site, run_in, serve_site, wait_until};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A repository with one run that prints `first` (in green), waits for `gate` to exist, then
/// prints `second` and leaves `report.txt` as an artifact.
fn gated_repo(dir: &Path, first: &str, gate: &Path, second: &str) {
    let script = format!(
        "printf '\\\\033[32m{first}\\\\033[0m\\\\n'; while [ ! -e {gate} ]; do sleep 0.05; done; echo {second}; echo report > report.txt",
        gate = gate.display()
    );
    let task = format!(
        "mountpoint: /src\nartifacts: [report.txt]\nruns:\n  gated:\n    command: [\"sh\", \"-c\", \"{script}\"]\n"
    );
    git_repo(
        dir,
        &[("tinyci.yml", "queue: default\n"), ("task.yml", &task)],
    );
}

/// Submits `repo` as `name`; returns its one run's id.
pub(crate) fn submit(site_dir: &Path, repo: &Path, name: &str, addr: &str) -> String {
    let out = run_in(
        site_dir,
        &[
            "submit",
            repo.to_str().unwrap(),
            "--all",
            "--addr",
            addr,
            "--repo",
            name,
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    stdout
        .split_whitespace()
        .find(|w| w.starts_with("r-"))
        .unwrap_or_else(|| panic!("no run id in {stdout}"))
        .to_owned()
}

/// A site with its HTTP listener on a known port (the OAuth redirect must name it), `extra`
/// appended to its config and `secrets` written (path, content), and runner `r1`; returns
/// (site, runner, capnp addr, http addr).
fn start(
    dir: &Path,
    extra: &str,
    secrets: &[(&str, &str)],
) -> (SiteProcess, SiteProcess, String, String) {
    let http = format!("127.0.0.1:{}", free_port());
    init_site(
        dir,
        &format!(
            "\n[http]\nlisten = \"{http}\"\npublic_url = \"http://{http}\"\npublic_repos = [\"org/public\"]\n{extra}"
        ),
    );
    for (file, secret) in secrets {
        tinyci_pki::write_secret_file(&dir.join(file), secret.as_bytes()).unwrap();
    }
    let (site, addr) = serve_site(dir);
    let added = run_in(
        dir,
        &["runner", "add", "r1", "--queue", "default", "--addr", &addr],
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    let runner = start_runner(dir, "r1");
    (site, runner, addr, http)
}

/// Parses a Server-Sent Events body into (id, event, data) triples (chunked framing lines
/// are not fields and are skipped).
fn parse_events(body: &str) -> Vec<(Option<u64>, String, String)> {
    let mut events = Vec::new();
    let (mut id, mut event, mut data): (Option<u64>, String, Vec<String>) =
        (None, String::new(), Vec::new());
    for line in body.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            if !event.is_empty() {
                events.push((id.take(), std::mem::take(&mut event), data.join("\n")));
                data.clear();
            }
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push(v.to_owned());
        }
    }
    events
}

/// The body of a chunked HTTP/1.1 response.
pub(crate) fn dechunk(body: &str) -> String {
    let mut rest = body;
    let mut whole = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        whole.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    whole
}

fn chunk_text(events: &[(Option<u64>, String, String)]) -> String {
    events
        .iter()
        .filter(|(_, e, _)| e == "chunk")
        .map(|(_, _, d)| d.as_str())
        .collect()
}

#[test]
fn a_public_run_page_shows_the_log_live_with_colours_and_the_final_status_in_chromium() {
    let Some(mut browser) = Browser::launch("web public run page", PHONE) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_site, _runner, addr, http_addr) = start(dir.path(), "", &[]);
    let repo = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    gated_repo(repo.path(), "green line one", &gate, "line two");
    let run = submit(dir.path(), repo.path(), "org/public", &addr);

    // No login needed for a public repository; the first line shows while the run waits.
    browser.navigate(&format!("http://{http_addr}/runs/{run}"));
    browser.wait_for(
        "the first log line, in green",
        "document.querySelector('#log span.f2') && document.querySelector('#log span.f2').textContent === 'green line one'",
    );
    browser.wait_for(
        "the status running",
        "document.getElementById('status').textContent.includes('running')",
    );
    assert!(!browser.text("#log").contains("line two"));
    // Marks this document: a reload would lose it, so seeing it later proves the page
    // followed live rather than reloading.
    browser.eval("window.tinyciSameDocument = 42");

    std::fs::write(&gate, b"go").unwrap();
    browser.wait_for(
        "the second line and the final status",
        "document.getElementById('log').textContent.includes('line two') && document.getElementById('status').textContent === 'passed'",
    );
    assert_eq!(
        browser.eval("window.tinyciSameDocument"),
        serde_json::json!(42)
    );
    browser.wait_for(
        "the artifact link",
        "document.querySelector('#artifacts a[href$=\"/artifacts/report.txt\"]')",
    );
    let log = browser.text("#log");
    assert!(
        log.contains("green line one") && log.contains("line two"),
        "{log}"
    );
    assert!(!log.contains("[32m"), "escape codes shown raw: {log}");
    // Phone-sized: nothing wider than the screen.
    let overflow = browser.eval("document.documentElement.scrollWidth <= window.innerWidth");
    assert_eq!(
        overflow,
        serde_json::json!(true),
        "the page scrolls sideways on a phone"
    );
    browser.screenshot(&artifact_path("public-run-page-phone.png"));

    // The artifact downloads; the submission and front pages list the run.
    let (status, _, body) = http(
        &http_addr,
        "GET",
        &format!("/runs/{run}/artifacts/report.txt"),
        &[],
        b"",
    );
    assert_eq!((status, body.as_str()), (200, "report\n"));
    let (status, _, front) = http(&http_addr, "GET", "/", &[], b"");
    assert_eq!(status, 200);
    assert!(
        front.contains("org/public") && front.contains("passed"),
        "{front}"
    );

    // The event stream resumes from the offset a browser last received (Last-Event-ID):
    // here the start of the line the gate released, whatever records the log is stored in.
    let (status, headers, body) = http(&http_addr, "GET", &format!("/runs/{run}/events"), &[], b"");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream"));
    let all = parse_events(&body);
    assert!(chunk_text(&all).contains("green line one") && chunk_text(&all).contains("line two"));
    let (_, raw_headers, raw) = http(&http_addr, "GET", &format!("/runs/{run}/log"), &[], b"");
    // Streamed a page at a time: chunked transfer encoding.
    assert_eq!(header(&raw_headers, "transfer-encoding"), Some("chunked"));
    let raw = dechunk(&raw);
    let second_line = raw.find("line two").unwrap();
    let resume_at = raw[..second_line]
        .rfind('\n')
        .map_or(0, |newline| newline + 1);
    let (_, _, rest) = http(
        &http_addr,
        "GET",
        &format!("/runs/{run}/events"),
        &[("last-event-id", &resume_at.to_string())],
        b"",
    );
    let rest = parse_events(&rest);
    assert!(chunk_text(&rest).contains("line two"));
    assert!(!chunk_text(&rest).contains("green line one"));
    assert_eq!(
        rest.last().map(|(_, e, d)| (e.as_str(), d.as_str())),
        Some(("done", "passed"))
    );
}

#[test]
fn a_private_run_page_needs_a_github_login_and_cancel_needs_the_anti_forgery_token() {
    let Some(mut browser) = Browser::launch("web private run page", (1280, 900)) else {
        return;
    };
    let fake = fake_github();
    let private = "octo/private";
    fake.add_repo(private);
    fake.add_user("gho_ana_token", "ana", 4242);
    // Ana may push: cancelling needs GitHub's write access as well as the capability.
    fake.add_collaborator(private, "ana", false, true);
    fake.sign_in_browser_as(CLIENT_ID, CLIENT_SECRET, "gho_ana_token");
    let dir = tempfile::tempdir().unwrap();
    let github = format!(
        "\n[github]\napi_url = \"{}\"\nweb_url = \"{}\"\ntoken_file = \"certs/github.token\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret_file = \"certs/github-oauth.secret\"\n\
         default_capabilities = [\"logs\", \"cancel\"]\nallow = [\"ana\"]\n",
        fake.api_url(),
        fake.web_url()
    );
    let (_site, _runner, addr, http_addr) = start(
        dir.path(),
        &github,
        &[
            ("certs/github.token", SITE_TOKEN),
            ("certs/github-oauth.secret", CLIENT_SECRET),
        ],
    );
    let repo = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    gated_repo(repo.path(), "private line one", &gate, "never printed");
    let run = submit(dir.path(), repo.path(), private, &addr);
    wait_until("the private run to start", || {
        let out = run_in(dir.path(), &["admin", "runs", "--addr", &addr]);
        text(&out.stdout).contains("running")
    });

    // Without a login: refused, and nothing of the run is shown.
    for path in [
        format!("/runs/{run}"),
        format!("/runs/{run}/events"),
        format!("/runs/{run}/log"),
        format!("/runs/{run}/artifacts/report.txt"),
    ] {
        let (status, _, body) = http(&http_addr, "GET", &path, &[], b"");
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("Sign in with GitHub"), "{path}: {body}");
        assert!(
            !body.contains(private) && !body.contains("private line one"),
            "{body}"
        );
    }
    let (_, _, front) = http(&http_addr, "GET", "/", &[], b"");
    assert!(!front.contains(private), "{front}");
    let (status, _, body) = http(
        &http_addr,
        "POST",
        &format!("/runs/{run}/cancel"),
        &[("content-type", "application/x-www-form-urlencoded")],
        b"csrf=x",
    );
    assert_eq!(status, 403, "{body}");

    // In the browser: the sign-in page, then GitHub, then back at the run, signed in.
    let page = format!("http://{http_addr}/runs/{run}");
    browser.navigate(&page);
    browser.wait_for(
        "the sign-in page",
        "document.querySelector('a.button') && document.body.innerText.includes('Sign in with GitHub')",
    );
    browser.click("a.button");
    browser.wait_for(
        "the run's log after login",
        "document.getElementById('log') && document.getElementById('log').textContent.includes('private line one')",
    );
    assert_eq!(
        browser.eval("location.pathname"),
        serde_json::json!(format!("/runs/{run}"))
    );
    assert!(browser.text("header").contains("signed in as ana"));
    browser.wait_for(
        "the cancel button",
        "document.querySelector('#cancel button')",
    );

    // The session cookie alone does not cancel: the form's token is required.
    let cookies = browser.cookies(&format!("http://{http_addr}/"));
    let session = cookies
        .iter()
        .find(|(name, _)| name == "tinyci_session")
        .map(|(_, value)| value.clone())
        .expect("a session cookie");
    let cookie = format!("tinyci_session={session}");
    for body in [&b""[..], b"csrf=", b"csrf=not-the-token"] {
        let (status, _, answer) = http(
            &http_addr,
            "POST",
            &format!("/runs/{run}/cancel"),
            &[
                ("cookie", &cookie),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            body,
        );
        assert_eq!(status, 403, "{answer}");
        assert!(answer.contains("anti-forgery token"), "{answer}");
    }
    let out = run_in(dir.path(), &["admin", "runs", "--addr", &addr]);
    assert!(
        text(&out.stdout).contains("running"),
        "{}",
        text(&out.stdout)
    );

    // The page's own form carries the token: cancel works.
    browser.click("#cancel button");
    browser.wait_for(
        "the canceled status",
        "document.getElementById('status') && document.getElementById('status').textContent.includes('canceled')",
    );
    browser.screenshot(&artifact_path("private-run-page-canceled.png"));

    // A finished run offers Retry: its next attempt, on the same page, shown live.
    browser.navigate(&page);
    browser.wait_for(
        "the retry button",
        "document.querySelector('#retry button')",
    );
    browser.click("#retry button");
    let retried = browser.wait_for(
        "the run's page, live again with its second attempt's output",
        "document.querySelector('#cancel button') && document.getElementById('log') && \
         (document.getElementById('log').textContent.match(/private line one/g) || []).length >= 2 \
         && location.pathname",
    );
    assert_eq!(
        retried.as_str().unwrap(),
        format!("/runs/{run}"),
        "{retried}"
    );
    browser.navigate(&page);
    browser.wait_for(
        "the second attempt on the run's page",
        "document.getElementById('log') && /Attempt\\s*2 of \\d/.test(document.body.innerText)",
    );

    // Signing out forgets the session: the same cookie no longer opens the page.
    browser.click("form.signout button");
    browser.wait_for(
        "the front page, signed out",
        "location.pathname === '/' && !document.querySelector('form.signout')",
    );
    let (status, _, _) = http(
        &http_addr,
        "GET",
        &format!("/runs/{run}"),
        &[("cookie", &cookie)],
        b"",
    );
    assert_eq!(status, 401);
}
