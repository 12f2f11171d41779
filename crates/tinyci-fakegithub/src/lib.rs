//! A fake GitHub for tests: a small HTTP/1.1 server on `127.0.0.1:0` (hyper 1, one tokio task
//! per connection) answering the REST endpoints `tinyci-repos` uses with bodies shaped like
//! GitHub's REST documentation, holding state the test sets (repositories, files at refs,
//! tarballs at commits, users by token, OAuth codes), and recording every call (method, path,
//! JSON body) for assertions.
//!
//! **For tests only:** it must never be a dependency of a production crate (only a
//! dev-dependency). It checks little beyond what GitHub would refuse, and trusts its caller.
//!
//! Endpoints: `GET /user`; `GET /users/{login}` (any user added with [`FakeGitHub::add_user`]); `POST|GET /repos/{o}/{r}/hooks`; `DELETE /repos/{o}/{r}/hooks/{id}`;
//! `POST /repos/{o}/{r}/statuses/{sha}`; `POST /repos/{o}/{r}/issues/{n}/comments`;
//! `GET /repos/{o}/{r}/contents/{path}?ref=R`; `GET /repos/{o}/{r}/tarball/{ref}` (a 302 to
//! `/_codeload/{o}/{r}/legacy.tar.gz/{ref}`, as GitHub redirects to codeload); and, under the
//! web base [`FakeGitHub::web_url`], `GET /login/oauth/authorize` (the browser's side: it
//! approves at once for the user set with [`FakeGitHub::sign_in_browser_as`] and redirects
//! back with a code) and `POST /login/oauth/access_token`. `GET /repos/{o}/{r}` answers only
//! users given access with [`FakeGitHub::add_collaborator`] (a 404 for others, as GitHub hides
//! private repositories); the other repository endpoints do not check access. Anything else is
//! a 404 with GitHub's `{message, documentation_url}`.

use std::collections::VecDeque;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Largest request body the fake reads.
const MAX_BODY: usize = 32 * 1024 * 1024;
/// Path prefix of the web host (OAuth) on the same server.
const WEB_PREFIX: &str = "/web";
const DOCS: &str = "https://docs.github.com/rest";

/// One request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query, percent-encoded as received.
    pub path: String,
    /// The body parsed as JSON, if there was one and it parsed.
    pub body: Option<Value>,
    /// The bearer token presented, if any.
    pub token: Option<String>,
}

/// A webhook as the fake holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// GitHub's id.
    pub id: u64,
    /// Subscribed events.
    pub events: Vec<String>,
    /// `config.url`.
    pub url: String,
    /// `config.content_type`.
    pub content_type: String,
    /// `config.secret`.
    pub secret: String,
    /// `active`.
    pub active: bool,
}

/// A commit status as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `pending`, `success`, `failure` or `error`.
    pub state: String,
    /// The context.
    pub context: String,
    /// The description.
    pub description: String,
    /// The target URL, if one was given.
    pub target_url: Option<String>,
}

#[derive(Debug, Default)]
struct OAuthCode {
    client_id: String,
    client_secret: String,
    access_token: String,
    /// PKCE: the `code_challenge` (S256) its authorize request carried; the exchange must
    /// present the matching `code_verifier`.
    challenge: Option<String>,
}

#[derive(Debug, Clone)]
struct BrowserSignIn {
    client_id: String,
    client_secret: String,
    access_token: String,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    repos: BTreeSet<String>,
    /// (repo, ref, path) → bytes.
    files: HashMap<(String, String, String), Vec<u8>>,
    /// (repo, ref) → bytes.
    tarballs: HashMap<(String, String), Vec<u8>>,
    /// (repo, base, head) → changed files of `compare/{base}...{head}`.
    comparisons: HashMap<(String, String, String), Vec<String>>,
    /// (repo, number) → the test merge commit of a pull request (`None`: a conflict).
    pulls: HashMap<(String, u64), Option<String>>,
    /// (repo, sha) → the commit's parents.
    parents: HashMap<(String, String), Vec<String>>,
    hooks: BTreeMap<String, Vec<Hook>>,
    /// (repo, sha) → statuses in arrival order.
    statuses: HashMap<(String, String), Vec<Status>>,
    /// (repo, number) → comment bodies in arrival order.
    comments: HashMap<(String, u64), Vec<String>>,
    /// token → (login, id).
    users: HashMap<String, (String, u64)>,
    /// Single-use codes.
    codes: HashMap<String, OAuthCode>,
    /// Serve tarballs chunked, without `Content-Length`.
    chunked_tarballs: bool,
    /// (repo, login) → `permissions` of `GET /repos/{o}/{r}`: (admin, push, pull).
    collaborators: HashMap<(String, String), (bool, bool, bool)>,
    /// (org, login): active organization memberships.
    org_members: BTreeSet<(String, String)>,
    /// (org, team slug, login): active team memberships.
    team_members: BTreeSet<(String, String, String)>,
    /// The OAuth app and the token of the user "signed in" in the browser: the authorize page
    /// approves at once for them.
    browser: Option<BrowserSignIn>,
    next_id: u64,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// The running fake; the server stops when this is dropped.
#[derive(Debug)]
pub struct FakeGitHub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeGitHub {
    /// Binds `127.0.0.1:0` and serves on a tokio task.
    ///
    /// # Panics
    /// If binding the loopback port fails (a test environment problem).
    pub async fn start() -> FakeGitHub {
        #[expect(
            clippy::expect_used,
            reason = "test support: no loopback port means no test"
        )]
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        #[expect(
            clippy::expect_used,
            reason = "test support: a bound socket has an address"
        )]
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State {
            next_id: 1000,
            ..State::default()
        }));
        let task = tokio::spawn(serve(listener, state.clone()));
        FakeGitHub { addr, state, task }
    }

    /// The API base URL (`http://127.0.0.1:PORT`).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The web base URL (OAuth), distinct from the API base: `http://127.0.0.1:PORT/web`.
    pub fn web_url(&self) -> String {
        format!("http://{}{WEB_PREFIX}", self.addr)
    }

    /// Makes `repo` (`owner/name`) exist; repository endpoints 404 for unknown ones.
    pub fn add_repo(&self, repo: &str) {
        lock(&self.state).repos.insert(repo.to_owned());
    }

    /// Accepts `token` as belonging to user `login` with `id`.
    pub fn add_user(&self, token: &str, login: &str, id: u64) {
        lock(&self.state)
            .users
            .insert(token.to_owned(), (login.to_owned(), id));
    }

    /// Puts `content` at `path` on `git_ref` (branch, tag or sha) of `repo`.
    pub fn set_file(&self, repo: &str, git_ref: &str, path: &str, content: &[u8]) {
        lock(&self.state).files.insert(
            (repo.to_owned(), git_ref.to_owned(), path.to_owned()),
            content.to_vec(),
        );
    }

    /// Serves `bytes` as the tarball of `repo` at `git_ref`.
    pub fn set_tarball(&self, repo: &str, git_ref: &str, bytes: &[u8]) {
        lock(&self.state)
            .tarballs
            .insert((repo.to_owned(), git_ref.to_owned()), bytes.to_vec());
    }

    /// Serves tarballs in 16 KiB chunks without `Content-Length` (as codeload streams them),
    /// so a client cannot learn the size up front.
    /// Makes `GET /repos/{repo}/compare/{base}...{head}` list `files` as changed (each
    /// `modified`); any other comparison is a 404, as for an unknown commit.
    pub fn set_comparison(&self, repo: &str, base: &str, head: &str, files: &[&str]) {
        lock(&self.state).comparisons.insert(
            (repo.to_owned(), base.to_owned(), head.to_owned()),
            files.iter().map(|f| (*f).to_owned()).collect(),
        );
    }

    /// Makes `GET /repos/{repo}/pulls/{number}` name `merge_commit_sha` as its test merge
    /// (`mergeable: true`), or none (`mergeable: false`, a conflict).
    pub fn set_pull_merge(&self, repo: &str, number: u64, merge_commit_sha: Option<&str>) {
        lock(&self.state).pulls.insert(
            (repo.to_owned(), number),
            merge_commit_sha.map(str::to_owned),
        );
    }

    /// Makes `GET /repos/{repo}/commits/{sha}` name `parents` (other commits are a 404).
    pub fn set_commit_parents(&self, repo: &str, sha: &str, parents: &[&str]) {
        lock(&self.state).parents.insert(
            (repo.to_owned(), sha.to_owned()),
            parents.iter().map(|p| (*p).to_owned()).collect(),
        );
    }

    pub fn set_chunked_tarballs(&self, chunked: bool) {
        lock(&self.state).chunked_tarballs = chunked;
    }

    /// Registers a single-use OAuth `code` for the app `client_id`/`client_secret`, which
    /// exchanges for `access_token` (add the token with [`Self::add_user`] to make it work).
    pub fn add_oauth_code(
        &self,
        code: &str,
        client_id: &str,
        client_secret: &str,
        access_token: &str,
    ) {
        lock(&self.state).codes.insert(
            code.to_owned(),
            OAuthCode {
                client_id: client_id.to_owned(),
                client_secret: client_secret.to_owned(),
                access_token: access_token.to_owned(),
                challenge: None,
            },
        );
    }

    /// Makes `login` an active member of organization `org`
    /// (`GET /user/memberships/orgs/{org}` with their token).
    pub fn add_org_member(&self, org: &str, login: &str) {
        lock(&self.state)
            .org_members
            .insert((org.to_owned(), login.to_owned()));
    }

    /// Makes `login` an active member of team `org/team`
    /// (`GET /orgs/{org}/teams/{team}/memberships/{login}`).
    pub fn add_team_member(&self, org: &str, team: &str, login: &str) {
        lock(&self.state)
            .team_members
            .insert((org.to_owned(), team.to_owned(), login.to_owned()));
    }

    /// Gives `login` access to `repo`: `GET /repos/{o}/{r}` answers them with
    /// `permissions` `{admin, push, pull}`.
    pub fn add_collaborator(&self, repo: &str, login: &str, admin: bool, push: bool) {
        lock(&self.state).collaborators.insert(
            (repo.to_owned(), login.to_owned()),
            (admin, push || admin, true),
        );
    }

    /// Makes the browser side of OAuth (`{web}/login/oauth/authorize`) approve requests of
    /// the app `client_id`/`client_secret` at once, as the user of `access_token` who already
    /// authorized the app: it redirects to `redirect_uri` with a fresh single-use code and the
    /// `state` it was given. Without this the authorize page answers 403.
    pub fn sign_in_browser_as(&self, client_id: &str, client_secret: &str, access_token: &str) {
        lock(&self.state).browser = Some(BrowserSignIn {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            access_token: access_token.to_owned(),
        });
    }

    /// Every call received so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// The webhooks `repo` has now.
    pub fn hooks(&self, repo: &str) -> Vec<Hook> {
        lock(&self.state)
            .hooks
            .get(repo)
            .cloned()
            .unwrap_or_default()
    }

    /// The statuses set on `sha` of `repo`, in order.
    pub fn statuses(&self, repo: &str, sha: &str) -> Vec<Status> {
        lock(&self.state)
            .statuses
            .get(&(repo.to_owned(), sha.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// The comments posted on issue or pull request `number` of `repo`, in order.
    pub fn comments(&self, repo: &str, number: u64) -> Vec<String> {
        lock(&self.state)
            .comments
            .get(&(repo.to_owned(), number))
            .cloned()
            .unwrap_or_default()
    }
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // EMFILE and friends: pause rather than spin until descriptors free up.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            // A connection error only ends that connection.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

/// A body of several chunks with no declared length (sent with chunked transfer encoding).
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

fn full(bytes: impl Into<Bytes>) -> BoxBody<Bytes, Infallible> {
    Full::new(bytes.into()).boxed()
}

fn reply(status: StatusCode, body: &Value) -> Reply {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Reply {
    reply(
        status,
        &json!({ "message": message, "documentation_url": DOCS }),
    )
}

fn not_found() -> Reply {
    error(StatusCode::NOT_FOUND, "Not Found")
}

fn percent_decode(text: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

async fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("token "))
        })
        .map(str::to_owned);
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
    };
    let body: Option<Value> = if bytes.is_empty() {
        None
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    let path = uri.path().to_owned();
    let mut st = lock(state);
    st.calls.push(Call {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| path.clone(), |p| p.to_string()),
        body: body.clone(),
        token: token.clone(),
    });
    let body = body.unwrap_or(Value::Null);

    if path == format!("{WEB_PREFIX}/login/oauth/access_token") && method == Method::POST {
        return oauth(&mut st, &body, &accept);
    }
    if path == format!("{WEB_PREFIX}/login/oauth/authorize") && method == Method::GET {
        return authorize(&mut st, uri.query());
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["_codeload", owner, name, "legacy.tar.gz", git_ref] = segments.as_slice() {
        let key = (format!("{owner}/{name}"), percent_decode(git_ref));
        return match st.tarballs.get(&key) {
            Some(bytes) => {
                let body = if st.chunked_tarballs {
                    let chunks = bytes
                        .chunks(16 * 1024)
                        .map(Bytes::copy_from_slice)
                        .collect();
                    Chunks(chunks).boxed()
                } else {
                    full(bytes.clone())
                };
                let mut response = Response::new(body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/x-gzip"),
                );
                response
            }
            None => not_found(),
        };
    }

    // Public: any account by its login (case-insensitive, as GitHub's).
    if let ["users", login] = segments.as_slice()
        && method == Method::GET
    {
        let found = st
            .users
            .values()
            .find(|(name, _)| name.eq_ignore_ascii_case(login))
            .cloned();
        return match found {
            Some((name, id)) => reply(StatusCode::OK, &user_json(&name, id)),
            None => not_found(),
        };
    }

    // Everything else is the authenticated API.
    let user = match &token {
        None => return error(StatusCode::UNAUTHORIZED, "Requires authentication"),
        Some(t) => match st.users.get(t) {
            Some(user) => user.clone(),
            None => return error(StatusCode::UNAUTHORIZED, "Bad credentials"),
        },
    };
    if segments == ["user"] && method == Method::GET {
        return reply(StatusCode::OK, &user_json(&user.0, user.1));
    }
    // GitHub answers a membership it will not show as 404, whether or not it exists.
    let membership = |active: bool| {
        if active {
            reply(
                StatusCode::OK,
                &json!({"state": "active", "role": "member"}),
            )
        } else {
            not_found()
        }
    };
    if let ["user", "memberships", "orgs", org] = segments.as_slice()
        && method == Method::GET
    {
        return membership(st.org_members.contains(&(org.to_string(), user.0.clone())));
    }
    if let ["orgs", org, "teams", team, "memberships", login] = segments.as_slice()
        && method == Method::GET
    {
        let key = (org.to_string(), team.to_string(), login.to_string());
        return membership(st.team_members.contains(&key));
    }
    let ["repos", owner, name, rest @ ..] = segments.as_slice() else {
        return not_found();
    };
    let repo = format!("{owner}/{name}");
    if !st.repos.contains(&repo) {
        return not_found();
    }
    let base = format!("https://api.github.com/repos/{repo}");
    match (&method, rest) {
        (&Method::GET, []) => match st.collaborators.get(&(repo.clone(), user.0.clone())) {
            Some(&(admin, push, pull)) => reply(
                StatusCode::OK,
                &json!({
                    "id": 1296269,
                    "name": name,
                    "full_name": repo,
                    "private": true,
                    "url": base,
                    "permissions": {"admin": admin, "maintain": admin, "push": push, "triage": push, "pull": pull},
                }),
            ),
            None => not_found(),
        },
        (&Method::POST, ["hooks"]) => create_hook(&mut st, &repo, &base, &body),
        (&Method::GET, ["hooks"]) => {
            let hooks = st.hooks.get(&repo).cloned().unwrap_or_default();
            let list: Vec<Value> = hooks.iter().map(|h| hook_json(h, &base)).collect();
            reply(StatusCode::OK, &Value::Array(list))
        }
        (&Method::DELETE, ["hooks", id]) => {
            let Ok(id) = id.parse::<u64>() else {
                return not_found();
            };
            let hooks = st.hooks.entry(repo).or_default();
            let before = hooks.len();
            hooks.retain(|h| h.id != id);
            if hooks.len() == before {
                return not_found();
            }
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        (&Method::POST, ["statuses", sha]) => create_status(&mut st, &repo, sha, &user, &body),
        (&Method::GET, ["compare", range]) => {
            let range = percent_decode(range);
            let Some((base_ref, head_ref)) = range.split_once("...") else {
                return not_found();
            };
            let key = (repo.clone(), base_ref.to_owned(), head_ref.to_owned());
            let Some(files) = st.comparisons.get(&key) else {
                return error(StatusCode::NOT_FOUND, "Not Found");
            };
            let files: Vec<Value> = files
                .iter()
                .map(|f| {
                    json!({
                        "sha": "bbcd538c8e72b8c175046e27cc8f907076331401",
                        "filename": f,
                        "status": "modified",
                        "additions": 1,
                        "deletions": 0,
                        "changes": 1,
                        "blob_url": format!("https://github.com/{repo}/blob/{head_ref}/{f}"),
                        "raw_url": format!("https://github.com/{repo}/raw/{head_ref}/{f}"),
                        "contents_url": format!("{base}/contents/{f}?ref={head_ref}"),
                        "patch": "@@ -1 +1,2 @@",
                    })
                })
                .collect();
            reply(
                StatusCode::OK,
                &json!({
                    "url": format!("{base}/compare/{range}"),
                    "html_url": format!("https://github.com/{repo}/compare/{range}"),
                    "status": "ahead",
                    "ahead_by": 1,
                    "behind_by": 0,
                    "total_commits": 1,
                    "commits": [],
                    "files": files,
                }),
            )
        }
        (&Method::GET, ["commits", sha]) => {
            let Some(parents) = st.parents.get(&(repo.clone(), (*sha).to_owned())) else {
                return error(StatusCode::NOT_FOUND, "No commit found for SHA");
            };
            let parents: Vec<Value> = parents
                .iter()
                .map(|p| json!({"sha": p, "url": format!("{base}/commits/{p}")}))
                .collect();
            reply(
                StatusCode::OK,
                &json!({
                    "sha": sha,
                    "url": format!("{base}/commits/{sha}"),
                    "commit": {"message": "Merge into base", "tree": {"sha": sha}},
                    "parents": parents,
                    "files": [],
                }),
            )
        }
        (&Method::GET, ["pulls", number]) => {
            let Ok(number) = number.parse::<u64>() else {
                return not_found();
            };
            let Some(merge) = st.pulls.get(&(repo.clone(), number)) else {
                return not_found();
            };
            reply(
                StatusCode::OK,
                &json!({
                    "url": format!("{base}/pulls/{number}"),
                    "number": number,
                    "state": "open",
                    "merge_commit_sha": merge,
                    "mergeable": merge.is_some(),
                }),
            )
        }
        (&Method::POST, ["issues", number, "comments"]) => {
            let Ok(number) = number.parse::<u64>() else {
                return not_found();
            };
            let Some(text) = body.get("body").and_then(Value::as_str) else {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid request.\n\n\"body\" wasn't supplied.",
                );
            };
            let id = st.id();
            st.comments
                .entry((repo.clone(), number))
                .or_default()
                .push(text.to_owned());
            reply(
                StatusCode::CREATED,
                &json!({
                    "id": id,
                    "node_id": format!("IC_{id}"),
                    "url": format!("{base}/issues/comments/{id}"),
                    "html_url": format!("https://github.com/{repo}/pull/{number}#issuecomment-{id}"),
                    "issue_url": format!("{base}/issues/{number}"),
                    "body": text,
                    "user": user_json(&user.0, user.1),
                    "created_at": "2026-01-01T00:00:00Z",
                    "updated_at": "2026-01-01T00:00:00Z",
                    "author_association": "OWNER",
                }),
            )
        }
        (&Method::GET, ["contents", file @ ..]) if !file.is_empty() => {
            let file = percent_decode(&file.join("/"));
            let git_ref = query_param(uri.query(), "ref").unwrap_or_else(|| "main".to_owned());
            let Some(bytes) = st.files.get(&(repo.clone(), git_ref.clone(), file.clone())) else {
                return not_found();
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            // GitHub wraps the base64 at 60 columns with newlines.
            let wrapped: Vec<String> = encoded
                .as_bytes()
                .chunks(60)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            let name = file.rsplit('/').next().unwrap_or_default();
            reply(
                StatusCode::OK,
                &json!({
                    "type": "file",
                    "encoding": "base64",
                    "size": bytes.len(),
                    "name": name,
                    "path": file,
                    "content": wrapped.join("\n") + "\n",
                    "sha": "3d21ec53a331a6f037a91c368710b99387d012c1",
                    "url": format!("{base}/contents/{file}?ref={git_ref}"),
                    "git_url": format!("{base}/git/blobs/3d21ec53a331a6f037a91c368710b99387d012c1"),
                    "html_url": format!("https://github.com/{repo}/blob/{git_ref}/{file}"),
                    "download_url": format!("https://raw.githubusercontent.com/{repo}/{git_ref}/{file}"),
                    "_links": {},
                }),
            )
        }
        (&Method::GET, ["tarball", git_ref]) => {
            let git_ref = percent_decode(git_ref);
            if !st.tarballs.contains_key(&(repo.clone(), git_ref.clone())) {
                return not_found();
            }
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = StatusCode::FOUND;
            let location = format!("/_codeload/{repo}/legacy.tar.gz/{git_ref}");
            if let Ok(value) = header::HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        _ => not_found(),
    }
}

fn user_json(login: &str, id: u64) -> Value {
    json!({
        "login": login,
        "id": id,
        "node_id": format!("U_{id}"),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        "url": format!("https://api.github.com/users/{login}"),
        "html_url": format!("https://github.com/{login}"),
        "type": "User",
        "site_admin": false,
    })
}

fn hook_json(hook: &Hook, base: &str) -> Value {
    json!({
        "type": "Repository",
        "id": hook.id,
        "name": "web",
        "active": hook.active,
        "events": hook.events,
        "config": {
            "url": hook.url,
            "content_type": hook.content_type,
            "insecure_ssl": "0",
            "secret": "********",
        },
        "updated_at": "2026-01-01T00:00:00Z",
        "created_at": "2026-01-01T00:00:00Z",
        "url": format!("{base}/hooks/{}", hook.id),
        "test_url": format!("{base}/hooks/{}/test", hook.id),
        "ping_url": format!("{base}/hooks/{}/pings", hook.id),
        "deliveries_url": format!("{base}/hooks/{}/deliveries", hook.id),
        "last_response": { "code": null, "status": "unused", "message": null },
    })
}

fn create_hook(st: &mut State, repo: &str, base: &str, body: &Value) -> Reply {
    let config = &body["config"];
    let Some(url) = config["url"].as_str() else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    };
    let events: Vec<String> = match body["events"].as_array() {
        Some(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        None => vec!["push".to_owned()],
    };
    let hook = Hook {
        id: st.id(),
        events,
        url: url.to_owned(),
        content_type: config["content_type"].as_str().unwrap_or("form").to_owned(),
        secret: config["secret"].as_str().unwrap_or_default().to_owned(),
        active: body["active"].as_bool().unwrap_or(true),
    };
    let answer = hook_json(&hook, base);
    st.hooks.entry(repo.to_owned()).or_default().push(hook);
    reply(StatusCode::CREATED, &answer)
}

fn create_status(
    st: &mut State,
    repo: &str,
    sha: &str,
    user: &(String, u64),
    body: &Value,
) -> Reply {
    let state = body["state"].as_str().unwrap_or_default();
    if !["pending", "success", "failure", "error"].contains(&state) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    }
    let description = body["description"].as_str().unwrap_or_default();
    if description.chars().count() > 140 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed: description is too long (maximum is 140 characters)",
        );
    }
    let status = Status {
        state: state.to_owned(),
        context: body["context"].as_str().unwrap_or("default").to_owned(),
        description: description.to_owned(),
        target_url: body["target_url"].as_str().map(str::to_owned),
    };
    let id = st.id();
    let answer = json!({
        "url": format!("https://api.github.com/repos/{repo}/statuses/{sha}"),
        "avatar_url": "https://github.com/images/error/hubot_happy.gif",
        "id": id,
        "node_id": format!("SC_{id}"),
        "state": status.state,
        "description": status.description,
        "target_url": status.target_url,
        "context": status.context,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "creator": user_json(&user.0, user.1),
    });
    st.statuses
        .entry((repo.to_owned(), sha.to_owned()))
        .or_default()
        .push(status);
    reply(StatusCode::CREATED, &answer)
}

/// The browser's side of OAuth: approves at once for the signed-in user, as GitHub does for an
/// app the user authorized before.
fn authorize(st: &mut State, query: Option<&str>) -> Reply {
    let Some(browser) = st.browser.clone() else {
        return error(
            StatusCode::FORBIDDEN,
            "No user is signed in to this fake GitHub",
        );
    };
    if query_param(query, "client_id").as_deref() != Some(browser.client_id.as_str()) {
        return error(StatusCode::NOT_FOUND, "Unknown OAuth application");
    }
    let (Some(redirect), Some(state)) = (
        query_param(query, "redirect_uri"),
        query_param(query, "state"),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "redirect_uri and state are required",
        );
    };
    let challenge = query_param(query, "code_challenge");
    if challenge.is_some() && query_param(query, "code_challenge_method").as_deref() != Some("S256")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "code_challenge_method must be S256",
        );
    }
    let code = format!("code-{}", st.id());
    st.codes.insert(
        code.clone(),
        OAuthCode {
            client_id: browser.client_id,
            client_secret: browser.client_secret,
            access_token: browser.access_token,
            challenge,
        },
    );
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let separator = if redirect.contains('?') { '&' } else { '?' };
    let location = format!(
        "{redirect}{separator}code={}&state={}",
        encode(&code),
        encode(&state)
    );
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(value) = header::HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn oauth(st: &mut State, body: &Value, accept: &str) -> Reply {
    let code = body["code"].as_str().unwrap_or_default();
    let client_id = body["client_id"].as_str().unwrap_or_default();
    let client_secret = body["client_secret"].as_str().unwrap_or_default();
    // GitHub answers errors here with 200 and an `error` field.
    let answer = match st.codes.get(code) {
        Some(c) if c.client_id != client_id || c.client_secret != client_secret => json!({
            "error": "incorrect_client_credentials",
            "error_description": "The client_id and/or client_secret passed are incorrect.",
            "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#incorrect-client-credentials",
        }),
        Some(c)
            if c.challenge.as_ref().is_some_and(|challenge| {
                let verifier = body["code_verifier"].as_str().unwrap_or_default();
                let digest = <sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes());
                &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest) != challenge
            }) =>
        {
            st.codes.remove(code);
            json!({
                "error": "bad_verification_code",
                "error_description": "The code_verifier does not match the code_challenge.",
            })
        }
        Some(_) => {
            let token = st
                .codes
                .remove(code)
                .map(|c| c.access_token)
                .unwrap_or_default();
            json!({ "access_token": token, "token_type": "bearer", "scope": "repo,user:email" })
        }
        None => json!({
            "error": "bad_verification_code",
            "error_description": "The code passed is incorrect or expired.",
            "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code",
        }),
    };
    if accept.contains("application/json") {
        return reply(StatusCode::OK, &answer);
    }
    // Without `Accept: application/json` GitHub answers form-encoded.
    let form: Vec<String> = answer
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let mut response = Response::new(full(form.join("&")));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
    );
    response
}
