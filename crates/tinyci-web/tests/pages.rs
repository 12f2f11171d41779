//! The web side against a fake site, over a real loopback listener: what the pages show, to
//! whom, and what they refuse, decided only by what the site hands them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use tinyci_core::{RunId, RunStatus, SubmissionId};
use tinyci_schema::log_observer;
use tinyci_web::{
    ArtifactFile, ArtifactView, Backend, Follow, Reply, RunChanges, RunView, SignedIn,
    SubmissionView, ViewError, Viewer, WebSettings,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PUBLIC: &str = "open/source";
const PRIVATE: &str = "closed/source";

#[derive(Debug, thiserror::Error)]
#[error("the store is closed")]
struct Closed;

/// A site with one public run (`r-1`) and one private run (`r-2`), and one signed-in browser
/// (cookie `c1`, anti-forgery token `t1`).
#[derive(Default)]
struct FakeSite {
    ready: bool,
    signed_out: RefCell<Vec<String>>,
}

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
        tier: Some("repo".to_owned()),
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
        (request.uri().path() == "/hooks/github")
            .then(|| tinyci_web::text(StatusCode::ACCEPTED, "hook answered by the site"))
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
    fn recent_runs(&self, _limit: usize) -> Result<Vec<RunView>, ViewError> {
        Ok(vec![run(2, PRIVATE), run(1, PUBLIC)])
    }
    fn run(&self, id: RunId) -> Result<Option<RunView>, ViewError> {
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
            title: format!("change {id}"),
            submitted_by: "ada".to_owned(),
            created_at: 0,
        }))
    }
    fn submission_runs(&self, id: SubmissionId) -> Result<Vec<RunView>, ViewError> {
        Ok(self.run(RunId(id.get()))?.into_iter().collect())
    }
    fn waiting_reason(&self, _id: RunId) -> Option<String> {
        None
    }
    fn watch(&self, _submission: SubmissionId) -> RunChanges {
        Box::pin(futures::stream::pending())
    }
    async fn log_tail(&self, _run: RunId, _max: u64) -> Result<(u64, Vec<u8>), ViewError> {
        Ok((0, b"plain \x1b[31mred <b>\x1b[0m\n".to_vec()))
    }
    async fn log(&self, _run: RunId) -> Result<Vec<u8>, ViewError> {
        Err(ViewError::new(Closed))
    }
    fn follow(&self, _run: RunId, _from: u64, _observer: log_observer::Client) -> Follow {
        Box::pin(std::future::pending())
    }
    fn artifacts(&self, _run: RunId) -> Result<Vec<ArtifactView>, ViewError> {
        Ok(vec![ArtifactView {
            name: "out/report.txt".to_owned(),
            size: 2048,
        }])
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
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let site = Rc::new(site);
            let settings = WebSettings {
                public_repos: BTreeSet::from([PUBLIC.to_owned()]),
                public_url: None,
            };
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
        assert!(hook.text.contains("hook answered by the site"));
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
