//! The run pages: `/` (recent submissions), `/submissions/<id>`, `/runs/<id>` (details and
//! log, followed live through Server-Sent Events at `/runs/<id>/events`, ANSI colours
//! rendered), `/runs/<id>/log` (the raw log) and `/runs/<id>/artifacts/<name>`.
//! Server-rendered HTML with one small script; usable on a phone and readable without colour
//! (every status is a word, never only a hue).
//!
//! Who may read: a repository in `[http] public_repos` is readable by anyone. For anything
//! else the pages keep no authorization of their own: a signed-in browser's [`Viewer`] holds
//! the in-process `Session` its grant was redeemed for, and a page shows a run when that
//! session's `LogReader` shows it, serves an artifact when the reader lists artifacts
//! (`assets:read`), and cancels or retries through the submission's `Ticket` (`runs:cancel`),
//! exactly as over RPC. Pages never say whether a run they will not show exists. Forms also
//! carry the session's anti-forgery token; the session cookie is `SameSite=Lax` and
//! `HttpOnly` besides.
//!
//! The live log rides on the same follow machinery as `tinyci logs -f`
//! ([`Backend::follow`]): an in-process `LogObserver` turns chunks into events whose `id` is
//! the log offset after them, so a browser that reconnects (sending `Last-Event-ID`) resumes
//! where it left off.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tinyci_core::{RunId, RunStatus, SubmissionId};
use tinyci_schema::{log_observer, log_reader};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::AnsiHtml;
use crate::render::{
    RUN_JS, SITE_CSS, badge, counts, html_escape, human_size, percent_decode, percent_encode_path,
    same_origin, short_ref, short_sha, sse_event, time_element,
};
use crate::server::{Body, LocalStream, SESSION_COOKIE, read_body, session_cookie, whole};
use crate::view::{Backend, GrantEnd, RunView, SignedIn, SubmissionView, Viewer, WebSettings};

/// The run page renders at most this much of the log's end; the rest is a link away.
const PAGE_LOG_BYTES: u64 = 1024 * 1024;
/// Submissions on the front page.
const FRONT_PAGE_SUBMISSIONS: usize = 50;
/// Submissions the front page looks through to find them: a viewer who may read few
/// repositories sees fewer rows rather than making the site read the whole history.
const FRONT_PAGE_SCAN: usize = 500;
/// Largest form a page posts.
const MAX_FORM_BYTES: usize = 4096;
/// Events a slow browser may lag behind by before the follow waits for it.
const EVENT_BUFFER: usize = 16;
/// A comment sent on a quiet event stream so proxies keep it open and a gone browser is
/// noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);

type WebReply = Response<Body>;

/// What a page is served from.
struct Cx<'a, B> {
    backend: &'a Rc<B>,
    settings: &'a WebSettings,
}

impl Viewer {
    /// Whether the page may list and serve `run`'s artifacts: a public repository's, or what
    /// the user's session's reader lists (`assets:read`).
    async fn may_see_artifacts<B>(&self, cx: &Cx<'_, B>, run: &RunView) -> bool {
        if cx.settings.public_repos.contains(&run.repo) {
            return true;
        }
        let Some(reader) = self.reader(&run.repo).await else {
            return false;
        };
        let mut request = reader.artifacts_request();
        request.get().set_run(run.id.to_string());
        request.send().promise.await.is_ok()
    }

    /// A log reader of `repo` through the user's session, if the session hands one out.
    async fn reader(&self, repo: &str) -> Option<log_reader::Client> {
        let session = self.session.as_ref()?;
        let mut request = session.logs_request();
        request.get().init_scope().set_repo(repo);
        let response = request.send().promise.await;
        match response.and_then(|r| r.get()?.get_reader()) {
            Ok(reader) => Some(reader),
            Err(e) => {
                debug!(%repo, error = %e, "page refused by the user's session");
                None
            }
        }
    }
}

fn viewer<B: Backend>(cx: &Cx<'_, B>, request: &Request<Incoming>) -> Viewer {
    cx.backend.viewer(session_cookie(request).as_deref())
}

/// What a capability refused, for people (capnp's "remote exception: " prefix dropped).
fn rpc_reason(e: &capnp::Error) -> String {
    e.extra
        .strip_prefix("remote exception: ")
        .unwrap_or(&e.extra)
        .to_owned()
}

/// Whether `viewer` may read `repo`'s runs: a public repository, or what the user's session
/// says (`Session.logs`: the grant, the capability held now, GitHub's word), as over RPC.
async fn may_read<B>(cx: &Cx<'_, B>, viewer: &Viewer, repo: &str) -> bool {
    cx.settings.public_repos.contains(repo) || viewer.reader(repo).await.is_some()
}

/// Serves a page request, or `None` when the path is not a page.
pub(crate) async fn route<B: Backend>(
    backend: &Rc<B>,
    settings: &WebSettings,
    request: Request<Incoming>,
) -> Option<WebReply> {
    let cx = &Cx { backend, settings };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let reply = match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => front_page(cx, &request).await,
        (&Method::GET, ["static", "site.css"]) => asset("text/css; charset=utf-8", SITE_CSS),
        (&Method::GET, ["static", "run.js"]) => asset("text/javascript; charset=utf-8", RUN_JS),
        (&Method::GET, ["submissions", id]) => submission_page(cx, &request, id).await,
        (&Method::GET, ["runs", id]) => run_page(cx, &request, id).await,
        (&Method::GET, ["runs", id, "events"]) => events(cx, &request, id).await,
        (&Method::GET, ["runs", id, "log"]) => raw_log(cx, &request, id).await,
        (&Method::GET, ["runs", id, "artifacts", name @ ..]) if !name.is_empty() => {
            let name = percent_decode(&name.join("/"));
            artifact(cx, &request, id, &name).await
        }
        (&Method::POST, ["signout"]) => sign_out(cx, request).await,
        (&Method::POST, ["runs", id, action @ ("cancel" | "retry")]) => {
            let (id, action) = ((*id).to_owned(), (*action).to_owned());
            act(cx, request, &id, &action).await
        }
        (
            _,
            [""] | ["submissions", _] | ["runs", _] | ["runs", _, _] | ["static", _] | ["signout"],
        ) => whole(page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed",
            None,
            &format!("<p>{method} is not allowed on {}.</p>", html_escape(&path)),
        )),
        _ => return None,
    };
    Some(reply)
}

fn asset(content_type: &'static str, text: &'static str) -> WebReply {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    whole(response)
}

/// A whole page: `body` is trusted HTML (every value in it escaped by its maker).
fn page(
    status: StatusCode,
    title: &str,
    viewer: Option<&Viewer>,
    body: &str,
) -> Response<Full<Bytes>> {
    let who = match viewer.and_then(|v| v.signed_in.as_ref()) {
        Some(signed_in) => format!(
            "<span class=\"who\">signed in as {}</span>\
             <form method=\"post\" action=\"/signout\" class=\"signout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            html_escape(&signed_in.user),
            html_escape(&signed_in.csrf)
        ),
        None => String::new(),
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · tinyci</title><link rel=\"stylesheet\" href=\"/static/site.css\">\
         </head>\n<body><header><a class=\"home\" href=\"/\">tinyci</a>{who}</header>\n\
         <main>\n<h1>{title}</h1>\n{body}\n</main></body></html>\n",
        title = html_escape(title),
    );
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// What an anonymous browser gets for anything not public: the same answer whether or not
/// the thing exists.
fn sign_in_page(path: &str) -> WebReply {
    let next = form_urlencoded::Serializer::new(String::new())
        .append_pair("next", path)
        .finish();
    whole(page(
        StatusCode::UNAUTHORIZED,
        "Sign in to see this page",
        None,
        &format!(
            "<p>This page belongs to a repository that is not public here.</p>\
             <p><a class=\"button\" href=\"/oauth/login?{next}\">Sign in with GitHub</a></p>",
        ),
    ))
}

/// What a signed-in browser gets for a run it may not read, or one that does not exist.
fn not_found(viewer: &Viewer, what: &str) -> WebReply {
    whole(page(
        StatusCode::NOT_FOUND,
        "Not found",
        Some(viewer),
        &format!(
            "<p>There is no {} here that you may read.</p>",
            html_escape(what)
        ),
    ))
}

/// Refuses `what` to `viewer`: a sign-in page for the anonymous, "not found" for the rest.
fn refuse(viewer: &Viewer, request: &Request<Incoming>, what: &str) -> WebReply {
    if viewer.signed_in.is_none() {
        sign_in_page(request.uri().path())
    } else {
        not_found(viewer, what)
    }
}

/// The run `id`, if it exists and `viewer` may read it.
async fn readable_run<B: Backend>(cx: &Cx<'_, B>, viewer: &Viewer, id: &str) -> Option<RunView> {
    let parsed: RunId = id.parse().ok()?;
    let run = cx.backend.run(parsed).ok().flatten()?;
    may_read(cx, viewer, &run.repo).await.then_some(run)
}

async fn front_page<B: Backend>(cx: &Cx<'_, B>, request: &Request<Incoming>) -> WebReply {
    let viewer = viewer(cx, request);
    // Newest submissions first, a page of them at a time, skipping those the viewer may not
    // read: what is read is what is shown (and at most FRONT_PAGE_SCAN skipped), however long
    // the history.
    let mut readable: BTreeMap<String, bool> = BTreeMap::new();
    let mut rows = String::new();
    let (mut shown, mut scanned, mut before) = (0, 0, None);
    'pages: while shown < FRONT_PAGE_SUBMISSIONS && scanned < FRONT_PAGE_SCAN {
        let submissions = match cx
            .backend
            .recent_submissions(before, FRONT_PAGE_SUBMISSIONS)
        {
            Ok(submissions) => submissions,
            Err(e) => return unavailable(&viewer, &e.to_string()),
        };
        if submissions.is_empty() {
            break;
        }
        for submission in submissions {
            before = Some(submission.id);
            scanned += 1;
            let may = match readable.get(&submission.repo) {
                Some(&may) => may,
                None => {
                    let may = may_read(cx, &viewer, &submission.repo).await;
                    readable.insert(submission.repo.clone(), may);
                    may
                }
            };
            if !may {
                continue;
            }
            let runs = match cx.backend.submission_runs(submission.id) {
                Ok(runs) => runs,
                Err(e) => return unavailable(&viewer, &e.to_string()),
            };
            shown += 1;
            let id = submission.id;
            let statuses: Vec<RunStatus> = runs.iter().map(|r| r.status).collect();
            let _ = writeln!(
                rows,
                "<tr><td><a href=\"/submissions/{id}\">{id}</a></td><td>{status}</td>\
                 <td>{repo}</td><td class=\"ref\">{git_ref} <code>{sha}</code></td>\
                 <td>{title}</td><td>{counts}</td><td>{when}</td></tr>",
                status = badge(RunStatus::of_submission(statuses.iter().copied())),
                repo = html_escape(&submission.repo),
                git_ref = html_escape(short_ref(&submission.git_ref)),
                sha = html_escape(short_sha(&submission.sha)),
                title = html_escape(&submission.title),
                counts = html_escape(&counts(&statuses)),
                when = time_element(submission.created_at),
            );
            if shown == FRONT_PAGE_SUBMISSIONS || scanned == FRONT_PAGE_SCAN {
                break 'pages;
            }
        }
    }
    let body = if rows.is_empty() {
        let hint = if viewer.signed_in.is_none() {
            " <a href=\"/oauth/login?next=%2F\">Sign in with GitHub</a> to see private repositories."
        } else {
            ""
        };
        format!("<p>No submissions you may read yet.{hint}</p>")
    } else {
        format!(
            "<div class=\"scroll\"><table><thead><tr><th>Submission</th><th>Status</th>\
             <th>Repository</th><th>Ref</th><th>Title</th><th>Runs</th><th>Created</th>\
             </tr></thead><tbody>\n{rows}</tbody></table></div>"
        )
    };
    whole(page(
        StatusCode::OK,
        "Recent submissions",
        Some(&viewer),
        &body,
    ))
}

async fn submission_page<B: Backend>(
    cx: &Cx<'_, B>,
    request: &Request<Incoming>,
    id: &str,
) -> WebReply {
    let viewer = viewer(cx, request);
    let what = format!("submission {id}");
    let Some(submission) = readable_submission(cx, &viewer, id).await else {
        return refuse(&viewer, request, &what);
    };
    let runs = match cx.backend.submission_runs(submission.id) {
        Ok(runs) => runs,
        Err(e) => return unavailable(&viewer, &e.to_string()),
    };
    let now = cx.backend.now_ms();
    let mut rows = String::new();
    for run in &runs {
        let _ = writeln!(
            rows,
            "<tr><td><a href=\"/runs/{id}\">{id}</a></td><td>{task}</td><td>{name}</td>\
             <td>{status}</td><td>{queue}</td><td>{runner}</td><td>{started}</td>\
             <td>{took}</td></tr>",
            id = run.id,
            task = html_escape(&run.task_dir),
            name = html_escape(&run.name),
            status = badge(run.status),
            queue = html_escape(&run.queue),
            runner = html_escape(run.runner.as_deref().unwrap_or("—")),
            started = run.started_at.map_or("—".to_owned(), time_element),
            took = duration_of(run, now),
        );
    }
    let body = format!(
        "<dl>{}</dl>\n<div class=\"scroll\"><table><thead><tr><th>Run</th><th>Task</th>\
         <th>Name</th><th>Status</th><th>Queue</th><th>Runner</th><th>Started</th>\
         <th>Took</th></tr></thead><tbody>\n{rows}</tbody></table></div>",
        submission_facts(&submission)
    );
    whole(page(
        StatusCode::OK,
        &format!("Submission {}", submission.id),
        Some(&viewer),
        &body,
    ))
}

async fn readable_submission<B: Backend>(
    cx: &Cx<'_, B>,
    viewer: &Viewer,
    id: &str,
) -> Option<SubmissionView> {
    let parsed: SubmissionId = id.parse().ok()?;
    let submission = cx.backend.submission(parsed).ok().flatten()?;
    may_read(cx, viewer, &submission.repo)
        .await
        .then_some(submission)
}

fn submission_facts(submission: &SubmissionView) -> String {
    let mut facts = String::new();
    for (term, value) in [
        ("Repository", html_escape(&submission.repo)),
        ("Ref", html_escape(&submission.git_ref)),
        (
            "Commit",
            format!("<code>{}</code>", html_escape(&submission.sha)),
        ),
        ("Title", html_escape(&submission.title)),
        ("Submitted by", html_escape(&submission.submitted_by)),
        ("Created", time_element(submission.created_at)),
    ] {
        let _ = write!(facts, "<dt>{term}</dt><dd>{value}</dd>");
    }
    facts
}

async fn run_page<B: Backend>(cx: &Cx<'_, B>, request: &Request<Incoming>, id: &str) -> WebReply {
    let viewer = viewer(cx, request);
    let Some(run) = readable_run(cx, &viewer, id).await else {
        return refuse(&viewer, request, &format!("run {id}"));
    };
    let run_id = run.id;
    let (from, log) = match cx.backend.log_tail(run_id, PAGE_LOG_BYTES).await {
        Ok(tail) => tail,
        Err(e) => return unavailable(&viewer, &e.to_string()),
    };
    let end = from + log.len() as u64;
    let cut = from > 0;
    let rendered = AnsiHtml::default().push(&log);
    let status = run.status;
    let live = !status.is_final();
    let now = cx.backend.now_ms();
    let artifacts = if viewer.may_see_artifacts(cx, &run).await {
        artifact_list(cx.backend.as_ref(), &run)
    } else {
        String::new()
    };

    let mut facts = String::new();
    for (term, value) in [
        (
            "Submission",
            format!("<a href=\"/submissions/{s}\">{s}</a>", s = run.submission),
        ),
        ("Repository", html_escape(&run.repo)),
        (
            "Ref",
            format!(
                "{} <code>{}</code>",
                html_escape(&run.git_ref),
                html_escape(short_sha(&run.sha))
            ),
        ),
        ("Task", html_escape(&run.task_dir)),
        (
            "Trust tier",
            html_escape(cx.backend.tier(&run).as_deref().unwrap_or("unknown")),
        ),
        ("Queue", html_escape(&run.queue)),
        ("Runner", html_escape(run.runner.as_deref().unwrap_or("—"))),
        (
            "Attempt",
            format!("{} of {}", run.attempt, run.max_attempts),
        ),
        ("Created", time_element(run.created_at)),
        (
            "Started",
            run.started_at.map_or("—".to_owned(), time_element),
        ),
        ("Took", duration_of(&run, now)),
    ] {
        let _ = write!(facts, "<dt>{term}</dt><dd>{value}</dd>");
    }
    if let Some(message) = &run.message {
        let _ = write!(facts, "<dt>Outcome</dt><dd>{}</dd>", html_escape(message));
    }
    if let Some(waiting) = cx.backend.waiting_reason(run_id) {
        let _ = write!(
            facts,
            "<dt>Waiting</dt><dd id=\"waiting\">{}</dd>",
            html_escape(&waiting)
        );
    }

    let mut actions = String::new();
    if let Some(signed_in) = &viewer.signed_in
        && viewer.may_cancel
    {
        let csrf = html_escape(&signed_in.csrf);
        if live {
            let _ = write!(
                actions,
                "<form method=\"post\" action=\"/runs/{run_id}/cancel\" id=\"cancel\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\">Cancel run</button></form>"
            );
        } else {
            let _ = write!(
                actions,
                "<form method=\"post\" action=\"/runs/{run_id}/retry\" id=\"retry\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\">Retry run</button></form>"
            );
        }
    }
    let earlier = if cut {
        format!(
            "<p class=\"note\">Showing the last {} KiB; <a href=\"/runs/{run_id}/log\">the whole log</a>.</p>",
            PAGE_LOG_BYTES / 1024
        )
    } else {
        String::new()
    };
    let body = format!(
        "<p class=\"status-line\" role=\"status\" aria-live=\"polite\">Status: <strong id=\"status\" data-status=\"{status_word}\">{status_badge}</strong></p>\n\
         <dl>{facts}</dl>\n<div class=\"actions\">{actions}</div>\n\
         <h2>Log <a class=\"small\" href=\"/runs/{run_id}/log\">raw</a></h2>\n{earlier}\
         <pre id=\"log\" role=\"log\" aria-live=\"off\" tabindex=\"0\" aria-label=\"Log of run {run_id}\" data-offset=\"{end}\" data-live=\"{live}\" data-events=\"/runs/{run_id}/events\">{rendered}</pre>\n\
         <p id=\"follow\" class=\"note\" role=\"status\" aria-live=\"polite\">{follow_note}</p>\n\
         <h2>Artifacts</h2>\n<div id=\"artifacts\">{artifacts}</div>\n\
         <script src=\"/static/run.js\" defer></script>",
        status_word = status.as_str(),
        status_badge = badge(status),
        live = u8::from(live),
        follow_note = if live {
            "Following the log as it is written."
        } else {
            ""
        },
    );
    whole(page(
        StatusCode::OK,
        &format!("Run {run_id} · {}", run.name),
        Some(&viewer),
        &body,
    ))
}

/// The artifact list of a run, as HTML.
fn artifact_list<B: Backend>(backend: &B, run: &RunView) -> String {
    let records = match backend.artifacts(run.id) {
        Ok(records) => records,
        Err(e) => {
            return format!(
                "<p>Cannot list the artifacts: {}</p>",
                html_escape(&e.to_string())
            );
        }
    };
    if records.is_empty() {
        return "<p>None.</p>".to_owned();
    }
    let mut list = String::from("<ul class=\"artifacts\">");
    for record in records {
        let _ = write!(
            list,
            "<li><a href=\"/runs/{run}/artifacts/{href}\" download>{name}</a> <span class=\"small\">{size}</span></li>",
            run = run.id,
            href = percent_encode_path(&record.name),
            name = html_escape(&record.name),
            size = human_size(record.size),
        );
    }
    list.push_str("</ul>");
    list
}

fn unavailable(viewer: &Viewer, why: &str) -> WebReply {
    whole(page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        Some(viewer),
        &format!("<p>{}</p>", html_escape(why)),
    ))
}

/// `GET /runs/<id>/events`: the run's log as Server-Sent Events from `Last-Event-ID` (or
/// `?from=`), then its status and artifacts when it ends.
async fn events<B: Backend>(cx: &Cx<'_, B>, request: &Request<Incoming>, id: &str) -> WebReply {
    let mut viewer = viewer(cx, request);
    let Some(run) = readable_run(cx, &viewer, id).await else {
        return refuse(&viewer, request, &format!("run {id}"));
    };
    let from = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or_else(|| {
            form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
                .find(|(k, _)| k == "from")
                .and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Bytes>(EVENT_BUFFER);
    let show_artifacts = viewer.may_see_artifacts(cx, &run).await;
    let run_id = run.id;
    let observer: log_observer::Client = capnp_rpc::new_client(EventObserver {
        backend: cx.backend.clone(),
        run: run_id,
        tx: tx.clone(),
        ansi: RefCell::default(),
        show_artifacts,
    });
    // A private run's stream lives only as long as the grant that opened it.
    let grant_end = if cx.settings.public_repos.contains(&run.repo) {
        None
    } else {
        viewer.grant_end.take()
    };
    let mut changes = cx.backend.watch(run.submission);
    let follow = cx.backend.follow(run_id, from, observer);
    debug!(run = %run_id, from, "web follower attached");
    tokio::task::spawn_local(async move {
        use futures::StreamExt as _;
        tokio::pin!(follow);
        let grant_dies = grant_dies(grant_end);
        tokio::pin!(grant_dies);
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        let mut last_status = None;
        loop {
            tokio::select! {
                result = &mut follow => {
                    if let Err(e) = result {
                        debug!(run = %run_id, error = %e, "web follower ended");
                    }
                    break;
                }
                () = tx.closed() => break,
                why = &mut grant_dies => {
                    debug!(run = %run_id, reason = %why, "web follower's grant ended");
                    break;
                }
                _ = keepalive.tick() => {
                    let _ = tx.try_send(Bytes::from_static(b": keepalive\n\n"));
                }
                Some(update) = changes.next() => {
                    if update.id == run_id {
                        let line = status_text(&update);
                        if last_status.as_ref() != Some(&line) {
                            let event = sse_event(None, "status", &line);
                            last_status = Some(line);
                            if tx.send(event).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::io::Error>(Frame::data(bytes)), rx))
    });
    let mut response = Response::new(Either::Right(StreamBody::new(
        Box::pin(stream) as LocalStream
    )));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies such as nginx would otherwise hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A run's status in words, as the page shows it.
fn status_text(run: &RunView) -> String {
    match (run.status, &run.runner) {
        (RunStatus::Running | RunStatus::Leased, Some(runner)) => {
            format!("{} on {runner}", run.status.as_str())
        }
        _ => run.status.as_str().to_owned(),
    }
}

/// The `LogObserver` a web follower hands the follow machinery: chunks become events.
struct EventObserver<B> {
    backend: Rc<B>,
    run: RunId,
    tx: mpsc::Sender<Bytes>,
    ansi: RefCell<AnsiHtml>,
    /// Whether the viewer may see the run's artifacts (sent when it ends).
    show_artifacts: bool,
}

/// Resolves with the reason once the grant ends; never without one (a public run's stream).
async fn grant_dies(grant_end: Option<GrantEnd>) -> String {
    match grant_end {
        Some(end) => end.await,
        None => std::future::pending().await,
    }
}

/// The page's word for a status the follow machinery sent.
fn status_of(status: tinyci_schema::RunStatus) -> RunStatus {
    use tinyci_schema::RunStatus as Wire;
    match status {
        Wire::Queued => RunStatus::Queued,
        Wire::Leased => RunStatus::Leased,
        Wire::Running => RunStatus::Running,
        Wire::Passed => RunStatus::Passed,
        Wire::Failed => RunStatus::Failed,
        Wire::Canceled => RunStatus::Canceled,
        Wire::TimedOut => RunStatus::TimedOut,
        Wire::Errored => RunStatus::Errored,
    }
}

impl<B: Backend> log_observer::Server for EventObserver<B> {
    async fn chunk(self: Rc<Self>, params: log_observer::ChunkParams) -> Result<(), capnp::Error> {
        let chunk = params.get()?.get_chunk()?;
        let data = chunk.get_data()?;
        let end = chunk.get_offset() + data.len() as u64;
        let html = self.ansi.borrow_mut().push(data);
        let event = sse_event(Some(end), "chunk", &html);
        // Waits while the browser is behind: the follow pump waits with it.
        self.tx
            .send(event)
            .await
            .map_err(|_| capnp::Error::disconnected("the browser went away".into()))
    }

    async fn done(
        self: Rc<Self>,
        params: log_observer::DoneParams,
        _: log_observer::DoneResults,
    ) -> Result<(), capnp::Error> {
        let status = status_of(params.get()?.get_status()?);
        let artifacts = match self.backend.run(self.run) {
            Ok(Some(run)) if self.show_artifacts => artifact_list(self.backend.as_ref(), &run),
            _ => String::new(),
        };
        for event in [
            sse_event(None, "artifacts", &artifacts),
            sse_event(None, "done", status.as_str()),
        ] {
            if self.tx.send(event).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// `GET /runs/<id>/log`: the whole log as plain text (escape sequences kept), streamed a page
/// at a time as the client reads it, so a client that stops reading holds one page.
async fn raw_log<B: Backend>(cx: &Cx<'_, B>, request: &Request<Incoming>, id: &str) -> WebReply {
    use futures::StreamExt as _;
    let viewer = viewer(cx, request);
    let Some(run) = readable_run(cx, &viewer, id).await else {
        return refuse(&viewer, request, &format!("run {id}"));
    };
    let mut pages = cx.backend.log(run.id);
    // A store that fails before the first byte gets a page saying so; one that fails later
    // ends the body with an error, so the client does not keep a cut log as whole.
    let first = match pages.next().await {
        Some(Err(e)) => return unavailable(&viewer, &e.to_string()),
        first => first,
    };
    let frames = futures::stream::iter(first).chain(pages).map(|page| {
        page.map(|bytes| Frame::data(Bytes::from(bytes)))
            .map_err(|e| std::io::Error::other(e.to_string()))
    });
    let mut response = Response::new(Either::Right(StreamBody::new(
        Box::pin(frames) as LocalStream
    )));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `GET /runs/<id>/artifacts/<name>`: one artifact, streamed from its blob.
async fn artifact<B: Backend>(
    cx: &Cx<'_, B>,
    request: &Request<Incoming>,
    id: &str,
    name: &str,
) -> WebReply {
    let viewer = viewer(cx, request);
    let Some(run) = readable_run(cx, &viewer, id).await else {
        return refuse(&viewer, request, &format!("run {id}"));
    };
    if !viewer.may_see_artifacts(cx, &run).await {
        return not_found(&viewer, &format!("artifact {name} of run {id}"));
    }
    let record = match cx.backend.artifact(run.id, name) {
        Ok(Some(record)) => record,
        Ok(None) => return not_found(&viewer, &format!("artifact {name} of run {id}")),
        Err(e) => return unavailable(&viewer, &e.to_string()),
    };
    let file = match tokio::fs::File::open(&record.path).await {
        Ok(file) => file,
        Err(e) => return unavailable(&viewer, &format!("cannot read the artifact: {e}")),
    };
    let size = record.size;
    // Sends at most the recorded size; a blob that came up short ends the body with an error
    // so the browser does not keep a truncated file as complete.
    let stream = futures::stream::unfold((file, 0u64), move |(mut file, sent)| async move {
        use tokio::io::AsyncReadExt as _;
        if sent >= size {
            return None;
        }
        let mut buf = vec![0u8; 64 * 1024];
        let want = usize::try_from(size - sent)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        match file.read(&mut buf[..want]).await {
            Ok(0) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the artifact is shorter than recorded",
                )),
                (file, size),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), (file, sent + n as u64)))
            }
            Err(e) => Some((Err(e), (file, size))),
        }
    });
    let mut response = Response::new(Either::Right(StreamBody::new(
        Box::pin(stream) as LocalStream
    )));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(length) = HeaderValue::from_str(&size.to_string()) {
        headers.insert(header::CONTENT_LENGTH, length);
    }
    let file_name: String = name
        .rsplit('/')
        .next()
        .unwrap_or(name)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// `POST /runs/<id>/cancel|retry`: needs a signed-in user with `cancel` who may read the run,
/// the session's anti-forgery token in the form, and (when the browser says where the form
/// came from) this site as the origin.
async fn act<B: Backend>(
    cx: &Cx<'_, B>,
    request: Request<Incoming>,
    id: &str,
    action: &str,
) -> WebReply {
    let viewer = viewer(cx, &request);
    let forbidden = |why: &str| {
        whole(page(
            StatusCode::FORBIDDEN,
            "Refused",
            Some(&viewer),
            &format!("<p>{}</p>", html_escape(why)),
        ))
    };
    let Some(signed_in) = &viewer.signed_in else {
        return forbidden(&format!(
            "{action} refused: sign in with GitHub first (this browser is not signed in)"
        ));
    };
    if let (Some(origin), Some(public_url)) = (
        request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok()),
        &cx.settings.public_url,
    ) && !same_origin(origin, public_url)
    {
        return forbidden(&format!(
            "{action} refused: the form was posted from {origin}, not from this site"
        ));
    }
    let Some(run) = readable_run(cx, &viewer, id).await else {
        return not_found(&viewer, &format!("run {id}"));
    };
    let body = match read_body(request, MAX_FORM_BYTES).await {
        Ok(body) => body,
        Err(reply) => return whole(reply),
    };
    if !carries_token(&body, signed_in) {
        warn!(user = %signed_in.user, run = %run.id, action, "web action refused: missing or wrong anti-forgery token");
        return forbidden(&format!(
            "{action} refused: the form carries no valid anti-forgery token (reload the run page and try again)"
        ));
    }
    // The button does what the user's session allows, through the same capabilities as RPC:
    // the submission's ticket, whose cancel and retry need runs:cancel (and, for a site user,
    // the cancel capability and GitHub's write access).
    let Some(reader) = viewer.reader(&run.repo).await else {
        return forbidden(&format!(
            "{action} refused: your session cannot read {}",
            run.repo
        ));
    };
    let mut request = reader.ticket_request();
    request.get().set_submission_id(run.submission.to_string());
    let ticket = request.send().pipeline.get_ticket();
    let by = format!("user:{}", signed_in.user);
    let done = match action {
        "cancel" => {
            let mut request = ticket.cancel_run_request();
            request.get().set_run(run.id.to_string());
            request
                .get()
                .set_reason(format!("canceled by {by} on the web"));
            request.send().promise.await.map(|_| run.id)
        }
        _ => {
            let mut request = ticket.retry_run_request();
            request.get().set_run(run.id.to_string());
            match request.send().promise.await {
                Ok(response) => response
                    .get()
                    .and_then(|r| r.get_run())
                    .and_then(|r| Ok(r.get_id()?.to_string()?))
                    .and_then(|id| {
                        id.parse::<RunId>()
                            .map_err(|e| capnp::Error::failed(e.to_string()))
                    }),
                Err(e) => Err(e),
            }
        }
    };
    let target = match done {
        Ok(target) => {
            info!(run = %run.id, %by, action, "web action done");
            target
        }
        Err(e) => return forbidden(&format!("{action} refused: {}", rpc_reason(&e))),
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = HeaderValue::from_str(&format!("/runs/{target}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    whole(response)
}

/// Whether a posted form carries `session`'s anti-forgery token (compared in constant time).
fn carries_token(form: &[u8], session: &SignedIn) -> bool {
    form_urlencoded::parse(form)
        .find(|(k, _)| k == "csrf")
        .is_some_and(|(_, given)| {
            tinyci_core::constant_time_eq(given.as_bytes(), session.csrf.as_bytes())
        })
}

/// `POST /signout`: forgets the session (with its token, so a page cannot sign its reader
/// out behind their back) and clears the cookie.
async fn sign_out<B: Backend>(cx: &Cx<'_, B>, request: Request<Incoming>) -> WebReply {
    let cookie = session_cookie(&request);
    let session = cookie.as_deref().and_then(|c| cx.backend.signed_in(c));
    let body = match read_body(request, MAX_FORM_BYTES).await {
        Ok(body) => body,
        Err(reply) => return whole(reply),
    };
    if let (Some(cookie), Some(session)) = (&cookie, &session) {
        if !carries_token(&body, session) {
            return whole(page(
                StatusCode::FORBIDDEN,
                "Refused",
                None,
                "<p>sign out refused: the form carries no valid anti-forgery token</p>",
            ));
        }
        cx.backend.sign_out(cookie);
        info!(user = %session.user, "browser signed out");
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    let secure = if cx.settings.https() { "; Secure" } else { "" };
    if let Ok(clear) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"
    )) {
        headers.insert(header::SET_COOKIE, clear);
    }
    whole(response)
}

/// How long a run took, or has been going.
fn duration_of(run: &RunView, now_ms: u64) -> String {
    let Some(started) = run.started_at else {
        return "—".to_owned();
    };
    let end = if run.status.is_final() {
        run.updated_at
    } else {
        now_ms
    };
    let secs = end.saturating_sub(started) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}
