//! The web side against a fake site, over a real loopback listener: what the pages show, to
//! whom, and what they refuse, decided only by what the site hands them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;

use futures::StreamExt as _;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use tinyci_core::{RunId, RunStatus, SubmissionId};
use tinyci_schema::log_observer;
use tinyci_web::{
    ArtifactFile, ArtifactView, Backend, Follow, LogPages, Reply, RunChanges, RunView, SignedIn,
    SubmissionView, ViewError, Viewer, WebLimits, WebSettings,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PUBLIC: &str = "open/source";
const PRIVATE: &str = "closed/source";

#[derive(Debug, thiserror::Error)]
#[error("the store is closed")]
struct Closed;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ObserverFailed(String);

/// A site with one public run (`r-1`) and one private run (`r-2`), and one signed-in browser
/// (cookie `c1`, anti-forgery token `t1`).
#[derive(Default)]
struct FakeSite {
    ready: bool,
    signed_out: RefCell<Vec<String>>,
    /// Pages the raw log has produced so far.
    log_pages: Rc<Cell<usize>>,
    /// Pages in the raw log; zero: reading it fails.
    log_len: usize,
    /// Woken when the hook endpoint starts reading its body.
    hook_reading: Rc<tokio::sync::Notify>,
    /// Every name and text it answers with is markup meant to run in the browser.
    hostile: bool,
    /// Woken once a follower's stream has taken the hostile status change: the log follow
    /// waits for it, so the stream carries both, in that order, every time.
    status_taken: Rc<tokio::sync::Notify>,
}

/// Markup in a name or a log: shown as text on every page, never obeyed.
const HOSTILE: &str =
    "<img src=x onerror=alert(1)>\"'><svg onload=alert(2)></textarea><script>alert(3)</script>";
/// What must never reach a page unescaped.
const HOSTILE_MARKUP: [&str; 4] = ["<img src=x", "<svg onload", "<script>alert", "</textarea>"];
/// The repository a hostile site's runs are in: a public one, so every page shows them.
const HOSTILE_REPO: &str = "evil/<img src=x onerror=alert(1)>";

/// `run` with every text field hostile.
fn hostile_run(id: u64) -> RunView {
    RunView {
        repo: HOSTILE_REPO.to_owned(),
        git_ref: format!("refs/heads/{HOSTILE}"),
        sha: HOSTILE.to_owned(),
        task_dir: HOSTILE.to_owned(),
        name: HOSTILE.to_owned(),
        queue: HOSTILE.to_owned(),
        runner: Some(HOSTILE.to_owned()),
        message: Some(HOSTILE.to_owned()),
        status: RunStatus::Running,
        ..run(id, HOSTILE_REPO)
    }
}

const LOG_PAGE: usize = 64 * 1024;

fn run(id: u64, repo: &str) -> RunView {
    RunView {
        id: RunId(id),
        submission: SubmissionId(id),
        repo: repo.to_owned(),
        git_ref: "refs/heads/main".to_owned(),
        sha: "0123456789abcdef".to_owned(),
        task_dir: "build".to_owned(),
        name: format!("job-{id}"),
        queue: "default".to_owned(),
        runner: None,
        status: RunStatus::Passed,
        attempt: 1,
        max_attempts: 1,
        created_at: 0,
        started_at: Some(0),
        updated_at: 1000,
        message: None,
    }
}

impl Backend for FakeSite {
    fn now_ms(&self) -> u64 {
        2000
    }
    fn ready(&self) -> Result<(), ViewError> {
        if self.ready {
            Ok(())
        } else {
            Err(ViewError::new(Closed))
        }
    }
    fn metrics(&self) -> String {
        "tinyci_up 1\n".to_owned()
    }
    async fn endpoint(&self, request: Request<Incoming>) -> Option<Reply> {
        if request.uri().path() != "/hooks/github" {
            return None;
        }
        self.hook_reading.notify_one();
        Some(match tinyci_web::read_body(request, 10_000).await {
            Ok(body) => tinyci_web::text(
                StatusCode::ACCEPTED,
                format!("hook answered by the site: {} bytes", body.len()),
            ),
            Err(refusal) => refusal,
        })
    }
    fn viewer(&self, cookie: Option<&str>) -> Viewer {
        Viewer {
            signed_in: cookie.and_then(|c| self.signed_in(c)),
            ..Viewer::default()
        }
    }
    fn signed_in(&self, cookie: &str) -> Option<SignedIn> {
        (cookie == "c1").then(|| SignedIn {
            user: "ada".to_owned(),
            csrf: "t1".to_owned(),
        })
    }
    fn sign_out(&self, cookie: &str) {
        self.signed_out.borrow_mut().push(cookie.to_owned());
    }
    fn recent_submissions(
        &self,
        before: Option<SubmissionId>,
        limit: usize,
    ) -> Result<Vec<SubmissionView>, ViewError> {
        let below = before.map_or(u64::MAX, |b| b.get());
        let mut views = Vec::new();
        for id in [2, 1].into_iter().filter(|id| *id < below).take(limit) {
            views.extend(self.submission(SubmissionId(id))?);
        }
        Ok(views)
    }
    fn run(&self, id: RunId) -> Result<Option<RunView>, ViewError> {
        if self.hostile {
            return Ok((id.get() == 1).then(|| hostile_run(1)));
        }
        Ok(match id.get() {
            1 => Some(run(1, PUBLIC)),
            2 => Some(run(2, PRIVATE)),
            _ => None,
        })
    }
    fn submission(&self, id: SubmissionId) -> Result<Option<SubmissionView>, ViewError> {
        Ok(self.run(RunId(id.get()))?.map(|r| SubmissionView {
            id,
            repo: r.repo,
            git_ref: r.git_ref,
            sha: r.sha,
            title: if self.hostile {
                HOSTILE.to_owned()
            } else {
                format!("change {id}")
            },
            submitted_by: if self.hostile { HOSTILE } else { "ada" }.to_owned(),
            created_at: 0,
        }))
    }
    fn submission_runs(&self, id: SubmissionId) -> Result<Vec<RunView>, ViewError> {
        Ok(self.run(RunId(id.get()))?.into_iter().collect())
    }
    fn tier(&self, _run: &RunView) -> Option<String> {
        Some(if self.hostile { HOSTILE } else { "repo" }.to_owned())
    }
    fn waiting_reason(&self, _id: RunId) -> Option<String> {
        self.hostile.then(|| HOSTILE.to_owned())
    }
    fn watch(&self, _submission: SubmissionId) -> RunChanges {
        if self.hostile {
            // A status change naming a hostile runner, then nothing.
            let mut update = hostile_run(1);
            update.runner = Some(format!("{HOSTILE} 2"));
            let taken = self.status_taken.clone();
            let then_nothing = futures::stream::once(async move {
                taken.notify_one();
                std::future::pending::<RunView>().await
            });
            return Box::pin(futures::stream::iter([update]).chain(then_nothing));
        }
        Box::pin(futures::stream::pending())
    }
    async fn log_tail(&self, _run: RunId, _max: u64) -> Result<(u64, Vec<u8>), ViewError> {
        if self.hostile {
            return Ok((0, format!("\x1b[31m{HOSTILE}\x1b[0m\n").into_bytes()));
        }
        Ok((0, b"plain \x1b[31mred <b>\x1b[0m\n".to_vec()))
    }
    fn log(&self, _run: RunId) -> LogPages {
        if self.hostile {
            return Box::pin(futures::stream::iter([Ok(HOSTILE.as_bytes().to_vec())]));
        }
        if self.log_len == 0 {
            return Box::pin(futures::stream::once(async { Err(ViewError::new(Closed)) }));
        }
        let produced = self.log_pages.clone();
        Box::pin(futures::stream::iter(0..self.log_len).map(move |_| {
            produced.set(produced.get() + 1);
            Ok(vec![b'x'; LOG_PAGE])
        }))
    }
    fn follow(&self, _run: RunId, from: u64, observer: log_observer::Client) -> Follow {
        if !self.hostile {
            return Box::pin(std::future::pending());
        }
        // A hostile chunk, then the end (which sends the artifact list).
        let status_taken = self.status_taken.clone();
        Box::pin(async move {
            status_taken.notified().await;
            let fail = |e: capnp::Error| ViewError::new(ObserverFailed(e.to_string()));
            let mut chunk = observer.chunk_request();
            {
                let mut c = chunk.get().init_chunk();
                c.set_offset(from);
                c.set_data(format!("\x1b[1m{HOSTILE}\n").as_bytes());
            }
            chunk.send().await.map_err(fail)?;
            let mut done = observer.done_request();
            done.get().set_status(tinyci_schema::RunStatus::Passed);
            done.send().promise.await.map_err(fail)?;
            Ok(())
        })
    }
    fn artifacts(&self, _run: RunId) -> Result<Vec<ArtifactView>, ViewError> {
        let name = if self.hostile {
            format!("out/{HOSTILE}")
        } else {
            "out/report.txt".to_owned()
        };
        Ok(vec![ArtifactView { name, size: 2048 }])
    }
    fn artifact(&self, _run: RunId, _name: &str) -> Result<Option<ArtifactFile>, ViewError> {
        Ok(None)
    }
}

struct Answer {
    status: u16,
    text: String,
}

/// Sends one raw HTTP/1.1 request and reads the whole answer.
async fn ask(addr: std::net::SocketAddr, request: &str) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer { status, text }
}

async fn get(addr: std::net::SocketAddr, path: &str, cookie: Option<&str>) -> Answer {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: tinyci_session={c}\r\n"));
    ask(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: ci\r\n{cookie}Connection: close\r\n\r\n"),
    )
    .await
}

async fn post(addr: std::net::SocketAddr, path: &str, cookie: &str, form: &str) -> Answer {
    ask(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: ci\r\nCookie: tinyci_session={cookie}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{form}",
            form.len()
        ),
    )
    .await
}

/// Serves `site` on a loopback port for the duration of `test`.
async fn with_site<F, Fut>(site: FakeSite, test: F)
where
    F: FnOnce(std::net::SocketAddr, Rc<FakeSite>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    with_limits(site, WebLimits::default(), test).await;
}

/// As [`with_site`], with the listener's limits set.
async fn with_limits<F, Fut>(site: FakeSite, limits: WebLimits, test: F)
where
    F: FnOnce(std::net::SocketAddr, Rc<FakeSite>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let settings = WebSettings {
        public_repos: BTreeSet::from([PUBLIC.to_owned()]),
        public_url: None,
        limits,
    };
    with_settings(site, settings, test).await;
}

/// As [`with_site`], with all the web settings given.
async fn with_settings<F, Fut>(site: FakeSite, settings: WebSettings, test: F)
where
    F: FnOnce(std::net::SocketAddr, Rc<FakeSite>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let site = Rc::new(site);
            let stop = shutdown_signal();
            let server = tokio::task::spawn_local(tinyci_web::serve(
                listener,
                site.clone(),
                settings,
                stop.1,
            ));
            test(addr, site).await;
            let _ = stop.0.send(());
            server.await.unwrap();
        })
        .await;
}

/// A shutdown signal: send on the first to resolve the second.
fn shutdown_signal() -> (
    tokio::sync::oneshot::Sender<()>,
    impl std::future::Future<Output = ()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

#[tokio::test]
async fn a_private_run_and_a_missing_run_get_the_same_answer() {
    with_site(FakeSite::default(), |addr, _| async move {
        let private = get(addr, "/runs/r-2", None).await;
        let missing = get(addr, "/runs/r-999", None).await;
        assert_eq!(private.status, 401, "{}", private.text);
        assert_eq!(missing.status, 401);
        let body = |a: &Answer| {
            a.text
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_owned()
        };
        let (private_body, missing_body) = (body(&private), body(&missing));
        assert!(private_body.contains("Sign in to see this page"));
        // Only the `next` link differs: it names the path asked for.
        assert_eq!(
            private_body.replace("r-2", "r-X"),
            missing_body.replace("r-999", "r-X")
        );
        // Nor does the front page list it.
        let front = get(addr, "/", None).await;
        assert_eq!(front.status, 200);
        assert!(front.text.contains(PUBLIC), "{}", front.text);
        assert!(!front.text.contains(PRIVATE), "{}", front.text);
    })
    .await;
}

#[tokio::test]
async fn a_public_run_page_renders_its_log_escaped_with_colours_and_its_artifacts() {
    with_site(FakeSite::default(), |addr, _| async move {
        let page = get(addr, "/runs/r-1", None).await;
        assert_eq!(page.status, 200, "{}", page.text);
        assert!(page.text.contains("job-1"));
        assert!(page.text.contains("&lt;b&gt;"), "{}", page.text);
        assert!(!page.text.contains("<b>"));
        assert!(page.text.contains("out/report.txt"));
        assert!(page.text.contains("content-security-policy"));
        // A store that fails says so on the page rather than sending half a log.
        let raw = get(addr, "/runs/r-1/log", None).await;
        assert_eq!(raw.status, 503);
        assert!(raw.text.contains("the store is closed"));
    })
    .await;
}

#[tokio::test]
async fn health_readiness_metrics_and_site_endpoints() {
    with_site(FakeSite::default(), |addr, _| async move {
        assert_eq!(get(addr, "/healthz", None).await.status, 200);
        let ready = get(addr, "/readyz", None).await;
        assert_eq!(ready.status, 503);
        assert!(ready.text.contains("the store is closed"));
        assert!(
            get(addr, "/metrics", None)
                .await
                .text
                .contains("tinyci_up 1")
        );
        let hook = post(addr, "/hooks/github", "none", "{}").await;
        assert_eq!(hook.status, 202);
        assert!(hook.text.contains("hook answered by the site: 2 bytes"));
        assert_eq!(get(addr, "/oauth/nothing", None).await.status, 404);
    })
    .await;
}

#[tokio::test]
async fn sign_out_needs_the_sessions_anti_forgery_token() {
    with_site(FakeSite::default(), |addr, site| async move {
        let refused = post(addr, "/signout", "c1", "csrf=guess").await;
        assert_eq!(refused.status, 403, "{}", refused.text);
        assert!(site.signed_out.borrow().is_empty());
        let done = post(addr, "/signout", "c1", "csrf=t1").await;
        assert_eq!(done.status, 303, "{}", done.text);
        assert_eq!(*site.signed_out.borrow(), vec!["c1".to_owned()]);
        assert!(done.text.contains("Max-Age=0"));
    })
    .await;
}

#[tokio::test]
async fn a_signed_in_browser_without_a_session_capability_reads_only_public_runs() {
    with_site(FakeSite::default(), |addr, _| async move {
        // Signed in, but the site handed no session: the private run is "not found", the
        // same answer as a run that does not exist.
        let private = get(addr, "/runs/r-2", Some("c1")).await;
        assert_eq!(private.status, 404, "{}", private.text);
        assert!(private.text.contains("signed in as ada"));
        assert_eq!(get(addr, "/runs/r-999", Some("c1")).await.status, 404);
        assert_eq!(get(addr, "/runs/r-1", Some("c1")).await.status, 200);
    })
    .await;
}

/// Connects from `source` (any 127.0.0.0/8 address is this host's loopback).
async fn connect_from(source: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn a_raw_log_is_streamed_as_the_client_reads_it() {
    let site = FakeSite {
        log_len: 1600, // 100 MiB, never whole in memory
        ..FakeSite::default()
    };
    with_site(site, |addr, site| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /runs/r-1/log HTTP/1.1\r\nHost: ci\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.unwrap();
        // A client that has read one byte has made the site produce what fills the socket's
        // buffers, not the log.
        let produced = site.log_pages.get();
        assert!(
            produced < 400,
            "{produced} of 1600 pages produced before the client read"
        );
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        let text = String::from_utf8_lossy(&rest[..rest.len().min(4096)]).into_owned();
        assert!(text.contains("200 OK") || first[0] == b'H', "{text}");
        assert_eq!(site.log_pages.get(), 1600);
        assert!(rest.len() + 1 > 1600 * LOG_PAGE, "{} bytes", rest.len() + 1);
    })
    .await;
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let limits = WebLimits {
        max_connections_per_address: 2,
        ..WebLimits::default()
    };
    with_limits(FakeSite::default(), limits, |addr, _| async move {
        let _held = [
            connect_from("127.0.0.1", addr).await,
            connect_from("127.0.0.1", addr).await,
        ];
        // The third from the same address is closed at accept, unanswered.
        let mut third = connect_from("127.0.0.1", addr).await;
        let _ = third
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: ci\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = third.read_to_end(&mut answer).await;
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
        // Another address is served as before.
        let mut other = connect_from("127.0.0.2", addr).await;
        other
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: ci\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        other.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    })
    .await;
}

/// A client sending headers holds what it has sent in the site's buffer until the header
/// timeout: that is bounded per connection (hyper checks it between reads, so a head a little
/// over the bound may pass), and a request head well past it is refused.
#[tokio::test]
async fn a_request_head_longer_than_the_bound_is_refused() {
    with_site(FakeSite::default(), |addr, _| async move {
        let padding = "x".repeat(2 * tinyci_web::MAX_HEAD_BYTES);
        let answer = ask(
            addr,
            &format!(
                "GET /healthz HTTP/1.1\r\nHost: ci\r\nX-Pad: {padding}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(answer.status, 431, "{}", answer.text);
        assert_eq!(get(addr, "/healthz", None).await.status, 200);
    })
    .await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_is_refused_and_others_are_served_meanwhile() {
    let limits = WebLimits {
        // Short, so the test does not wait long for the refusal it waits on.
        body_timeout: std::time::Duration::from_millis(300),
        ..WebLimits::default()
    };
    with_limits(FakeSite::default(), limits, |addr, _| async move {
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(
            b"POST /hooks/github HTTP/1.1\r\nHost: ci\r\nContent-Length: 100\r\n\r\none byte at a time",
        )
        .await
        .unwrap();
        assert_eq!(get(addr, "/healthz", None).await.status, 200);
        let mut answer = String::new();
        slow.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("did not arrive in time"), "{answer}");
    })
    .await;
}

#[tokio::test]
async fn bodies_being_received_share_one_bounded_budget() {
    let limits = WebLimits {
        max_body_bytes_in_flight: 1000,
        ..WebLimits::default()
    };
    let site = FakeSite::default();
    let reading = site.hook_reading.clone();
    with_limits(site, limits, |addr, _| async move {
        // Bodies that declare much and send a byte hold a byte each, not what they declare:
        // a crowd of them cannot shut out the rest.
        let mut crowd = Vec::new();
        for _ in 0..20 {
            let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
            slow.write_all(b"POST /hooks/github HTTP/1.1\r\nHost: ci\r\nContent-Length: 900\r\nConnection: close\r\n\r\n{")
                .await
                .unwrap();
            reading.notified().await;
            crowd.push(slow);
        }
        let whole = ask(
            addr,
            &format!(
                "POST /hooks/github HTTP/1.1\r\nHost: ci\r\nContent-Length: 900\r\nConnection: close\r\n\r\n{}",
                " ".repeat(900)
            ),
        )
        .await;
        assert_eq!(whole.status, 202, "{}", whole.text);
        // Bytes being received do share the budget: 900 of 1000 held by one body...
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        first
            .write_all(b"POST /hooks/github HTTP/1.1\r\nHost: ci\r\nContent-Length: 950\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        first.write_all(&[b' '; 900]).await.unwrap();
        // ...leave 80 (the crowd holds 20): a 200-byte body is refused as its bytes arrive
        // (until the first body's 900 bytes are all in, it may still fit)...
        let refused = loop {
            let answer = ask(
                addr,
                &format!(
                    "POST /hooks/github HTTP/1.1\r\nHost: ci\r\nContent-Length: 200\r\nConnection: close\r\n\r\n{}",
                    " ".repeat(200)
                ),
            )
            .await;
            if answer.status != 202 {
                break answer;
            }
        };
        assert_eq!(refused.status, 503, "{}", refused.text);
        assert!(refused.text.contains("receiving too much"), "{}", refused.text);
        // ...while a body that fits is received.
        let small = ask(
            addr,
            "POST /hooks/github HTTP/1.1\r\nHost: ci\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        .await;
        assert_eq!(small.status, 202, "{}", small.text);
        // The first body, once whole, is received, and its bytes go back to the budget.
        first.write_all(&[b' '; 50]).await.unwrap();
        let mut answer = String::new();
        first.read_to_string(&mut answer).await.unwrap_or_default();
        assert!(answer.contains("950 bytes"), "{answer}");
        drop(crowd);
    })
    .await;
}

/// The headers every answer carries, whatever made it: a page, an error, a 404 with no page,
/// an endpoint the site answers (the login steps, the hooks), a health check.
#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    with_site(FakeSite::default(), |addr, _| async move {
        let answers = [
            ("front page", get(addr, "/", None).await),
            ("run page", get(addr, "/runs/r-1", None).await),
            ("missing run", get(addr, "/runs/r-999", None).await),
            ("no such page", get(addr, "/nope", None).await),
            ("no such endpoint", get(addr, "/oauth/nope", None).await),
            ("site endpoint", get(addr, "/hooks/github", None).await),
            ("health", get(addr, "/healthz", None).await),
            (
                "refused post",
                post(addr, "/runs/r-1/cancel", "c1", "csrf=t1").await,
            ),
            (
                "not allowed",
                ask(
                    addr,
                    "PUT / HTTP/1.1\r\nHost: ci\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await,
            ),
        ];
        for (what, answer) in answers {
            let head = answer.text.split("\r\n\r\n").next().unwrap().to_lowercase();
            for header in [
                "content-security-policy: default-src 'none'; script-src 'self'",
                "frame-ancestors 'none'",
                "x-content-type-options: nosniff",
                "referrer-policy: same-origin",
                "cache-control: no-store",
            ] {
                assert!(head.contains(header), "{what} lacks {header}:\n{head}");
            }
        }
        // Static files keep their own caching, and the rest.
        let css = get(addr, "/static/site.css", None).await;
        let head = css.text.split("\r\n\r\n").next().unwrap().to_lowercase();
        assert!(head.contains("cache-control: public"), "{head}");
        assert!(head.contains("content-security-policy"), "{head}");
    })
    .await;
}

/// A form posted from this site is recognized however `public_url` spells its origin (case,
/// default port, a path); one from anywhere else is refused.
#[tokio::test]
async fn the_origin_of_a_form_is_compared_as_an_origin() {
    let settings = WebSettings {
        public_repos: BTreeSet::from([PUBLIC.to_owned()]),
        public_url: Some("https://CI.Example.com:443/tinyci".to_owned()),
        limits: WebLimits::default(),
    };
    with_settings(FakeSite::default(), settings, |addr, _| async move {
        let posted_from = |origin: &'static str| async move {
            ask(
                addr,
                &format!(
                    "POST /runs/r-1/cancel HTTP/1.1\r\nHost: ci\r\nOrigin: {origin}\r\n\
                     Cookie: tinyci_session=c1\r\n\
                     Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\
                     Connection: close\r\n\r\ncsrf=t1"
                ),
            )
            .await
        };
        for same in ["https://ci.example.com", "https://CI.EXAMPLE.COM:443"] {
            let answer = posted_from(same).await;
            assert!(
                !answer.text.contains("was posted from"),
                "{same}: {}",
                answer.text
            );
        }
        for other in [
            "https://ci.example.com:8443",
            "http://ci.example.com",
            "https://ci.example.com.evil.example",
            "null",
        ] {
            let answer = posted_from(other).await;
            assert_eq!(answer.status, 403, "{other}");
            assert!(
                answer.text.contains("was posted from"),
                "{other}: {}",
                answer.text
            );
        }
    })
    .await;
}

/// The run page says its status and the follow line to screen readers as they change, its log
/// is a keyboard-focusable log region, and its times carry machine-readable `datetime`s.
#[tokio::test]
async fn the_run_page_is_announced_and_navigable() {
    with_site(FakeSite::default(), |addr, _| async move {
        let page = get(addr, "/runs/r-1", None).await.text;
        assert!(
            page.contains("<p class=\"status-line\" role=\"status\" aria-live=\"polite\">"),
            "{page}"
        );
        assert!(
            page.contains("<p id=\"follow\" class=\"note\" role=\"status\" aria-live=\"polite\">"),
            "{page}"
        );
        assert!(
            page.contains(
                "<pre id=\"log\" role=\"log\" aria-live=\"off\" tabindex=\"0\" aria-label=\"Log of run r-1\""
            ),
            "{page}"
        );
        assert!(
            page.contains("<time datetime=\"1970-01-01T00:00:00Z\">1970-01-01 00:00:00 UTC</time>"),
            "{page}"
        );
        let front = get(addr, "/", None).await.text;
        assert!(front.contains("<time datetime=\""), "{front}");
    })
    .await;
}

/// Hostile repository, ref, task, run, runner, queue, message, title, submitter, tier and
/// artifact names and log text, through every page and the live stream: shown as text,
/// never obeyed.
#[tokio::test]
async fn hostile_names_and_logs_are_text_on_every_page_and_in_the_stream() {
    let site = FakeSite {
        hostile: true,
        ..FakeSite::default()
    };
    let settings = WebSettings {
        public_repos: BTreeSet::from([HOSTILE_REPO.to_owned()]),
        public_url: None,
        limits: WebLimits::default(),
    };
    with_settings(site, settings, |addr, _| async move {
        let unobeyed = |what: &str, html: &str| {
            for markup in HOSTILE_MARKUP {
                assert!(
                    !html.contains(markup),
                    "{what} carries {markup} unescaped:\n{html}"
                );
            }
        };
        // Each with the status it must get: a page that was not served proves nothing.
        let pages = [
            ("front page", "/", 200),
            ("submission page", "/submissions/s-1", 200),
            ("run page", "/runs/r-1", 200),
            (
                "a missing run named with markup",
                "/runs/%3Cscript%3Ealert(3)%3C%2Fscript%3E",
                // Anonymous: the sign-in page, the same for a missing run as a private one.
                401,
            ),
            (
                "a path with markup",
                "/x/%3Cscript%3Ealert(3)%3C/script%3E",
                404,
            ),
        ];
        for (what, path, status) in pages {
            let answer = get(addr, path, None).await;
            assert_eq!(answer.status, status, "{what}: {}", answer.text);
            unobeyed(what, &answer.text);
        }
        // The payload is there, as text: a page that dropped it would pass the check above.
        let run_page = get(addr, "/runs/r-1", None).await.text;
        assert!(
            run_page.contains("&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&gt;&lt;svg"),
            "{run_page}"
        );
        let front = get(addr, "/", None).await.text;
        assert!(
            front.contains("evil/&lt;img src=x onerror=alert(1)&gt;"),
            "{front}"
        );

        // The raw log is the job's bytes, as plain text a browser must not sniff as HTML.
        let raw = get(addr, "/runs/r-1/log", None).await.text;
        let head = raw.split("\r\n\r\n").next().unwrap().to_lowercase();
        assert!(head.contains("content-type: text/plain"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");

        // The stream: chunks and the artifact list are HTML the page inserts, so escaped; the
        // status is text the page sets with textContent.
        let stream = get(addr, "/runs/r-1/events", None).await.text;
        let mut kinds = Vec::new();
        for event in stream.split("\n\n") {
            let kind = event
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or_default();
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            match kind {
                "chunk" | "artifacts" => {
                    unobeyed(kind, &data.join("\n"));
                    assert!(data.join("\n").contains("&lt;img src=x"), "{kind}: {event}");
                }
                "status" | "done" => {}
                _ => continue,
            }
            kinds.push(kind.to_owned());
        }
        for kind in ["status", "chunk", "artifacts", "done"] {
            assert!(
                kinds.iter().any(|k| k == kind),
                "no {kind} event in {stream}"
            );
        }
        let script = tinyci_web::render::RUN_JS;
        assert!(script.contains("status.textContent = text;"));
        assert_eq!(
            script.matches("innerHTML").count() + script.matches("insertAdjacentHTML").count(),
            2,
            "only the chunk and the artifact list (both escaped by the site) are inserted as HTML"
        );
    })
    .await;
}
