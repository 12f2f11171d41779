//! The REST client: one method per GitHub operation the site needs, on top of octocrab's
//! authenticated HTTP stack (retries, timeouts, redirects, rustls with aws-lc-rs).
//!
//! Responses are read with explicit size bounds and decoded into our own minimal types, so a
//! GitHub that adds fields, or a fake that omits the ones we ignore, changes nothing.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use http::header::{ACCEPT, CONTENT_LENGTH};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use octocrab::Octocrab;
use serde::{Deserialize, Serialize};

use crate::types::{
    CommitStatus, HookId, InvalidName, NewHook, OAuthApp, OAuthToken, RepoName, User, check_sha,
    truncate_description,
};

/// Bound on a JSON response body (the contents API returns files up to 1 MiB, base64).
const MAX_JSON_BYTES: u64 = 8 * 1024 * 1024;
/// Time to establish a connection to GitHub.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time any single read or write may stall (not a bound on a whole download).
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on an error response body we read for its message.
const MAX_ERROR_BYTES: u64 = 64 * 1024;

type Body = BoxBody<Bytes, octocrab::Error>;

/// Where GitHub is and who we are to it.
#[derive(Clone)]
pub struct GitHubConfig {
    /// REST API base, e.g. `https://api.github.com` (or a GHES `https://host/api/v3`).
    pub api_base: String,
    /// Web base serving OAuth, e.g. `https://github.com`.
    pub web_base: String,
    /// Token sent as `Authorization: Bearer` to the API (never to the web base), if any.
    pub token: Option<String>,
}

impl GitHubConfig {
    /// github.com, with `token`.
    pub fn github_com(token: Option<String>) -> Self {
        Self {
            api_base: "https://api.github.com".to_owned(),
            web_base: "https://github.com".to_owned(),
            token,
        }
    }
}

impl fmt::Debug for GitHubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubConfig")
            .field("api_base", &self.api_base)
            .field("web_base", &self.web_base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Which call failed: the operation, and the request line (method and path, no host, no
/// secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// What we were doing, e.g. "create webhook on octo/hello".
    pub op: String,
    /// HTTP method.
    pub method: Method,
    /// Path and query relative to the base URL.
    pub path: String,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} {})", self.op, self.method, self.path)
    }
}

/// Why a GitHub operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A base URL in the configuration does not parse.
    #[error("invalid GitHub {which} base URL {url:?}")]
    BaseUrl {
        /// "API" or "web".
        which: &'static str,
        /// The refused URL.
        url: String,
    },
    /// octocrab refused to build a client.
    #[error("failed to set up the GitHub client: {0}")]
    Setup(String),
    /// An argument would not make a valid request.
    #[error(transparent)]
    Invalid(#[from] InvalidName),
    /// GitHub answered with a non-success status.
    #[error("failed to {endpoint}: GitHub answered {status}: {message}")]
    Status {
        /// The call.
        endpoint: Endpoint,
        /// The HTTP status.
        status: u16,
        /// GitHub's `message`, or the reason phrase.
        message: String,
    },
    /// The request did not complete (connect, TLS, timeout, body).
    #[error("failed to {endpoint}: {detail}")]
    Request {
        /// The call.
        endpoint: Endpoint,
        /// What went wrong.
        detail: String,
    },
    /// GitHub answered success but the body is not what its documentation says.
    #[error("failed to {endpoint}: unexpected response: {detail}")]
    Response {
        /// The call.
        endpoint: Endpoint,
        /// What was wrong with it.
        detail: String,
    },
    /// The response body is over the caller's limit; nothing beyond the limit was read.
    #[error("failed to {endpoint}: response larger than the limit of {limit} bytes")]
    TooLarge {
        /// The call.
        endpoint: Endpoint,
        /// The limit in bytes.
        limit: u64,
    },
    /// The OAuth endpoint refused the code (expired, reused, wrong client).
    #[error("failed to {endpoint}: GitHub refused the code: {error}: {description}")]
    OAuthRefused {
        /// The call.
        endpoint: Endpoint,
        /// GitHub's `error`, e.g. `bad_verification_code`.
        error: String,
        /// GitHub's `error_description`.
        description: String,
    },
}

impl ApiError {
    /// The HTTP status GitHub answered, when that is what failed.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A GitHub REST client. Cheap to clone.
#[derive(Clone)]
pub struct GitHub {
    /// Authenticated client on the API base.
    api: Octocrab,
    /// Unauthenticated client on the web base (OAuth).
    web: Octocrab,
    /// The API base, kept to build clients for other tokens.
    api_base: String,
    /// The web base, likewise.
    web_base: String,
}

impl fmt::Debug for GitHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHub").finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
}

#[derive(Serialize)]
struct HookConfig<'a> {
    url: &'a str,
    content_type: &'static str,
    secret: &'a str,
    insecure_ssl: &'static str,
}

#[derive(Serialize)]
struct CreateHook<'a> {
    name: &'static str,
    active: bool,
    events: [&'static str; 2],
    config: HookConfig<'a>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: u64,
}

#[derive(Serialize)]
struct CreateStatus<'a> {
    state: &'static str,
    context: &'a str,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
}

#[derive(Serialize)]
struct CreateComment<'a> {
    body: &'a str,
}

#[derive(Deserialize)]
struct Content {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    content: Option<String>,
}

/// `GET /repos/{o}/{r}/compare/{base}...{head}`, the parts read.
#[derive(Deserialize)]
struct Comparison {
    #[serde(default)]
    files: Vec<ComparedFile>,
}

#[derive(Deserialize)]
struct ComparedFile {
    filename: String,
    #[serde(default)]
    previous_filename: Option<String>,
}

/// `GET /repos/{o}/{r}/commits/{sha}`, the parts read.
#[derive(Deserialize)]
struct CommitBody {
    #[serde(default)]
    parents: Vec<ParentRef>,
}

#[derive(Deserialize)]
struct ParentRef {
    sha: String,
}

/// `GET /repos/{o}/{r}/pulls/{n}`, the parts read.
#[derive(Deserialize)]
struct PullBody {
    #[serde(default)]
    merge_commit_sha: Option<String>,
    /// `null` while GitHub is still computing it.
    #[serde(default)]
    mergeable: Option<bool>,
}

/// The most files GitHub's compare API lists; a longer diff is cut there, so it cannot say
/// which tasks changed.
pub(crate) const MAX_COMPARED_FILES: usize = 300;

#[derive(Deserialize)]
struct RepoBody {
    /// Present when the request was authenticated.
    permissions: Option<RepoPermissions>,
}

/// What GitHub lets the token's user do with a repository (`permissions` of
/// `GET /repos/{o}/{r}`); nothing at all when GitHub hides the repository from them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RepoPermissions {
    /// Read (clone, see issues and pull requests).
    #[serde(default)]
    pub pull: bool,
    /// Write (push branches).
    #[serde(default)]
    pub push: bool,
    /// Administer (webhooks, settings).
    #[serde(default)]
    pub admin: bool,
}

#[derive(Deserialize)]
struct UserBody {
    login: String,
    id: u64,
}

#[derive(Serialize)]
struct OAuthExchange<'a> {
    client_id: &'a str,
    client_secret: &'a str,
    code: &'a str,
    /// PKCE (RFC 7636): the secret whose SHA-256 the authorize request carried.
    #[serde(skip_serializing_if = "Option::is_none")]
    code_verifier: Option<&'a str>,
}

#[derive(Deserialize)]
struct OAuthAnswer {
    access_token: Option<String>,
    token_type: Option<String>,
    scope: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

enum ReadError {
    TooLarge,
    Body(String),
}

/// Reads a body, refusing it as soon as it passes `limit` bytes.
async fn read_bounded(mut body: Body, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if (out.len() as u64).saturating_add(data.len() as u64) > limit {
                return Err(ReadError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/` if `keep_slash`).
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn check_file_path(path: &str) -> Result<(), InvalidName> {
    let bad = |reason| InvalidName {
        what: "file path",
        value: path.to_owned(),
        reason,
    };
    if path.is_empty() || path.len() > 4096 {
        return Err(bad("must be 1 to 4096 bytes"));
    }
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(bad(
            "must be relative, without empty, '.' or '..' components",
        ));
    }
    Ok(())
}

/// An organization, team slug or login as one URL path segment: GitHub's own alphabet
/// (letters, digits, `-`, `_`, `.`), so nothing can add a segment or a query.
fn check_segment(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let ok = !value.is_empty()
        && value.len() <= 100
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            what,
            value: value.to_owned(),
            reason: "must be 1 to 100 letters, digits, '-', '_' or '.'",
        })
    }
}

/// A commit sha, or a branch name (a new branch is compared with the default branch).
fn check_sha_or_ref(text: &str) -> Result<(), InvalidName> {
    if check_sha(text).is_ok() {
        return Ok(());
    }
    check_ref(text)
}

fn check_ref(git_ref: &str) -> Result<(), InvalidName> {
    if git_ref.is_empty() || git_ref.len() > 1024 || git_ref.chars().any(char::is_control) {
        return Err(InvalidName {
            what: "git ref",
            value: git_ref.to_owned(),
            reason: "must be 1 to 1024 bytes without control characters",
        });
    }
    Ok(())
}

fn parse_uri(which: &'static str, url: &str) -> Result<http::Uri, ApiError> {
    let bad = || ApiError::BaseUrl {
        which,
        url: url.to_owned(),
    };
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme().is_none() || uri.authority().is_none() || uri.query().is_some() {
        return Err(bad());
    }
    Ok(uri)
}

fn endpoint(op: String, method: Method, path: String) -> Endpoint {
    Endpoint { op, method, path }
}

impl GitHub {
    /// Builds the client. Must run inside a tokio runtime (octocrab spawns its request
    /// buffer as a task).
    ///
    /// Connections time out after 10 s and stalled reads or writes after 60 s. octocrab
    /// retries transport errors, 5xx and 429 up to three times, POSTs included, so a GitHub
    /// that fails after acting may see a create twice (a second webhook, a repeated comment).
    pub fn new(config: &GitHubConfig) -> Result<Self, ApiError> {
        let api_uri = parse_uri("API", &config.api_base)?;
        let web_uri = parse_uri("web", &config.web_base)?;
        let setup = |e: octocrab::Error| ApiError::Setup(e.to_string());
        let builder = |uri| {
            Octocrab::builder()
                .set_connect_timeout(Some(CONNECT_TIMEOUT))
                .set_read_timeout(Some(IO_TIMEOUT))
                .set_write_timeout(Some(IO_TIMEOUT))
                .base_uri(uri)
                .map_err(setup)
        };
        let mut api = builder(api_uri)?;
        if let Some(token) = &config.token {
            api = api.personal_token(token.clone());
        }
        let api = api.build().map_err(setup)?;
        let web = builder(web_uri)?.build().map_err(setup)?;
        Ok(Self {
            api,
            web,
            api_base: config.api_base.clone(),
            web_base: config.web_base.clone(),
        })
    }

    /// Sends one request; a non-success status becomes [`ApiError::Status`] carrying
    /// GitHub's message.
    async fn send<B: Serialize + ?Sized>(
        &self,
        client: &Octocrab,
        ep: &Endpoint,
        body: Option<&B>,
        accept: &str,
    ) -> Result<http::Response<Body>, ApiError> {
        let builder = http::Request::builder()
            .method(ep.method.clone())
            .uri(ep.path.as_str())
            .header(ACCEPT, accept);
        let request = client
            .build_request(builder, body)
            .map_err(|e| ApiError::Request {
                endpoint: ep.clone(),
                detail: e.to_string(),
            })?;
        let response = client
            .execute(request)
            .await
            .map_err(|e| ApiError::Request {
                endpoint: ep.clone(),
                detail: e.to_string(),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let reason = status
            .canonical_reason()
            .unwrap_or("unknown status")
            .to_owned();
        let message = match read_bounded(response.into_body(), MAX_ERROR_BYTES).await {
            Ok(bytes) => serde_json::from_slice::<ErrorBody>(&bytes)
                .ok()
                .and_then(|b| b.message)
                .unwrap_or(reason),
            Err(_) => reason,
        };
        Err(ApiError::Status {
            endpoint: ep.clone(),
            status: status.as_u16(),
            message,
        })
    }

    /// Sends a request and decodes a JSON answer of at most [`MAX_JSON_BYTES`].
    async fn json<B: Serialize + ?Sized, R: for<'de> Deserialize<'de>>(
        &self,
        client: &Octocrab,
        ep: &Endpoint,
        body: Option<&B>,
        accept: &str,
    ) -> Result<R, ApiError> {
        let response = self.send(client, ep, body, accept).await?;
        let bytes = read(ep, response.into_body(), MAX_JSON_BYTES).await?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Response {
            endpoint: ep.clone(),
            detail: e.to_string(),
        })
    }

    /// Creates a webhook on `repo` for `push` and `pull_request`, JSON content, signed with
    /// `hook.secret`; returns its id.
    pub async fn create_webhook(
        &self,
        repo: &RepoName,
        hook: &NewHook,
    ) -> Result<HookId, ApiError> {
        let ep = endpoint(
            format!("create webhook on {repo}"),
            Method::POST,
            format!("/repos/{repo}/hooks"),
        );
        let body = CreateHook {
            name: "web",
            active: true,
            events: ["push", "pull_request"],
            config: HookConfig {
                url: &hook.url,
                content_type: "json",
                secret: &hook.secret,
                insecure_ssl: "0",
            },
        };
        let created: IdOnly = self.json(&self.api, &ep, Some(&body), GITHUB_JSON).await?;
        Ok(HookId(created.id))
    }

    /// Deletes webhook `id` from `repo`.
    pub async fn delete_webhook(&self, repo: &RepoName, id: HookId) -> Result<(), ApiError> {
        let ep = endpoint(
            format!("delete webhook {id} on {repo}"),
            Method::DELETE,
            format!("/repos/{repo}/hooks/{id}"),
        );
        self.send(&self.api, &ep, None::<&()>, GITHUB_JSON)
            .await
            .map(drop)
    }

    /// Sets a commit status on `sha` (a full commit id); the description is cut to 140
    /// characters.
    pub async fn set_status(
        &self,
        repo: &RepoName,
        sha: &str,
        status: &CommitStatus,
    ) -> Result<(), ApiError> {
        check_sha(sha)?;
        let ep = endpoint(
            format!("set status {:?} on {repo}@{sha}", status.context),
            Method::POST,
            format!("/repos/{repo}/statuses/{sha}"),
        );
        let body = CreateStatus {
            state: status.state.as_str(),
            context: &status.context,
            description: truncate_description(&status.description),
            target_url: status.target_url.as_deref(),
        };
        let _: IdOnly = self.json(&self.api, &ep, Some(&body), GITHUB_JSON).await?;
        Ok(())
    }

    /// Comments on issue or pull request `number`; returns the comment's id.
    pub async fn create_comment(
        &self,
        repo: &RepoName,
        number: u64,
        body: &str,
    ) -> Result<u64, ApiError> {
        let ep = endpoint(
            format!("comment on {repo}#{number}"),
            Method::POST,
            format!("/repos/{repo}/issues/{number}/comments"),
        );
        let created: IdOnly = self
            .json(&self.api, &ep, Some(&CreateComment { body }), GITHUB_JSON)
            .await?;
        Ok(created.id)
    }

    /// Whether the token's user is an active member of organization `org`
    /// (`GET /user/memberships/orgs/{org}`; GitHub answers 404 for a membership it will not
    /// show, which is "no").
    pub async fn is_org_member(&self, org: &str) -> Result<bool, ApiError> {
        check_segment("organization", org)?;
        let ep = endpoint(
            format!("read the membership of organization {org}"),
            Method::GET,
            format!("/user/memberships/orgs/{org}"),
        );
        self.membership(&ep).await
    }

    /// Whether `login` is an active member of team `org/team`
    /// (`GET /orgs/{org}/teams/{team}/memberships/{login}`, asked with the user's own token;
    /// 404 is "no").
    pub async fn is_team_member(
        &self,
        org: &str,
        team: &str,
        login: &str,
    ) -> Result<bool, ApiError> {
        check_segment("organization", org)?;
        check_segment("team", team)?;
        check_segment("login", login)?;
        let ep = endpoint(
            format!("read the membership of team {org}/{team}"),
            Method::GET,
            format!("/orgs/{org}/teams/{team}/memberships/{login}"),
        );
        self.membership(&ep).await
    }

    async fn membership(&self, ep: &Endpoint) -> Result<bool, ApiError> {
        #[derive(Deserialize)]
        struct Membership {
            state: String,
        }
        match self
            .json::<(), Membership>(&self.api, ep, None, GITHUB_JSON)
            .await
        {
            Ok(m) => Ok(m.state == "active"),
            Err(ApiError::Status {
                status: 403 | 404, ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the token's user may read `repo` (GitHub's `permissions.pull` on
    /// `GET /repos/{o}/{r}`). A 404 is "no": GitHub hides private repositories from users who
    /// cannot see them.
    pub async fn can_read(&self, repo: &RepoName) -> Result<bool, ApiError> {
        Ok(self.permissions(repo).await?.pull)
    }

    /// What the token's user may do with `repo` (GitHub's `permissions` on
    /// `GET /repos/{o}/{r}`). A 404 is "nothing": GitHub hides private repositories from users
    /// who cannot see them.
    pub async fn permissions(&self, repo: &RepoName) -> Result<RepoPermissions, ApiError> {
        let ep = endpoint(
            format!("read the permissions on {repo}"),
            Method::GET,
            format!("/repos/{repo}"),
        );
        match self
            .json::<(), RepoBody>(&self.api, &ep, None, GITHUB_JSON)
            .await
        {
            Ok(body) => Ok(body.permissions.unwrap_or_default()),
            Err(ApiError::Status { status: 404, .. }) => Ok(RepoPermissions::default()),
            Err(e) => Err(e),
        }
    }

    /// Reads file `path` at `git_ref` (branch, tag or sha); `None` if it does not exist.
    /// Files over the contents API's 1 MiB limit are refused.
    pub async fn get_file(
        &self,
        repo: &RepoName,
        path: &str,
        git_ref: &str,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        check_file_path(path)?;
        check_ref(git_ref)?;
        let ep = endpoint(
            format!("read {path} at {git_ref} in {repo}"),
            Method::GET,
            format!(
                "/repos/{repo}/contents/{}?ref={}",
                encode(path, true),
                encode(git_ref, false)
            ),
        );
        let content: Content = match self.json(&self.api, &ep, None::<&()>, GITHUB_JSON).await {
            Ok(c) => c,
            Err(ApiError::Status { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |detail: String| ApiError::Response {
            endpoint: ep.clone(),
            detail,
        };
        if content.kind != "file" {
            return Err(bad(format!("{path} is a {}, not a file", content.kind)));
        }
        match content.encoding.as_deref() {
            Some("base64") => {}
            Some("none") => return Err(bad(format!("{path} is too large for the contents API"))),
            other => return Err(bad(format!("unknown content encoding {other:?}"))),
        }
        let text: String = content
            .content
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Some)
            .map_err(|e| bad(format!("content is not base64: {e}")))
    }

    /// The paths that differ between `base` and `head` (`base...head`: from their merge base,
    /// as a pull request's diff), both sides of a rename. `None` when GitHub cannot say all
    /// of them: an unknown commit (a force push dropped `base`) or more files than the compare
    /// API lists; the caller then runs every task.
    pub async fn changed_paths(
        &self,
        repo: &RepoName,
        base: &str,
        head: &str,
    ) -> Result<Option<Vec<String>>, ApiError> {
        check_sha_or_ref(base)?;
        check_sha(head)?;
        let ep = endpoint(
            format!("compare {base}...{head} in {repo}"),
            Method::GET,
            format!(
                "/repos/{repo}/compare/{}...{}",
                encode(base, false),
                encode(head, false)
            ),
        );
        let comparison: Comparison = match self.json(&self.api, &ep, None::<&()>, GITHUB_JSON).await
        {
            Ok(c) => c,
            Err(ApiError::Status {
                status: 404 | 422, ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if comparison.files.len() >= MAX_COMPARED_FILES {
            return Ok(None);
        }
        let mut paths = Vec::new();
        for file in comparison.files {
            paths.extend(file.previous_filename);
            paths.push(file.filename);
        }
        Ok(Some(paths))
    }

    /// The test merge commit GitHub keeps for pull request `number` (its head merged into its
    /// base), or `None` when there is none: not mergeable (a conflict) or not computed yet.
    pub async fn pull_request_merge_commit(
        &self,
        repo: &RepoName,
        number: u64,
    ) -> Result<Option<String>, ApiError> {
        let ep = endpoint(
            format!("read pull request #{number} of {repo}"),
            Method::GET,
            format!("/repos/{repo}/pulls/{number}"),
        );
        let pull: PullBody = match self.json(&self.api, &ep, None::<&()>, GITHUB_JSON).await {
            Ok(pull) => pull,
            // Gone (deleted, or the token cannot see it): no merge to build.
            Err(ApiError::Status { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(match (pull.mergeable, pull.merge_commit_sha) {
            (Some(true), Some(sha)) if check_sha(&sha).is_ok() => Some(sha),
            _ => None,
        })
    }

    /// The parents of commit `sha` (`None` when GitHub does not know it).
    pub async fn commit_parents(
        &self,
        repo: &RepoName,
        sha: &str,
    ) -> Result<Option<Vec<String>>, ApiError> {
        check_sha(sha)?;
        let ep = endpoint(
            format!("read commit {sha} of {repo}"),
            Method::GET,
            format!("/repos/{repo}/commits/{sha}"),
        );
        match self
            .json::<(), CommitBody>(&self.api, &ep, None, GITHUB_JSON)
            .await
        {
            Ok(commit) => Ok(Some(commit.parents.into_iter().map(|p| p.sha).collect())),
            Err(ApiError::Status {
                status: 404 | 422, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Downloads the source tarball (gzip) of `repo` at commit `sha`, refusing anything over
    /// `limit` bytes without reading past it.
    pub async fn download_tarball(
        &self,
        repo: &RepoName,
        sha: &str,
        limit: u64,
    ) -> Result<Vec<u8>, ApiError> {
        check_sha(sha)?;
        let ep = endpoint(
            format!("download tarball of {repo}@{sha}"),
            Method::GET,
            format!("/repos/{repo}/tarball/{sha}"),
        );
        let response = self.send(&self.api, &ep, None::<&()>, GITHUB_JSON).await?;
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::TooLarge {
                endpoint: ep,
                limit,
            });
        }
        read(&ep, response.into_body(), limit).await
    }

    /// The account the configured token belongs to.
    pub async fn authenticated_user(&self) -> Result<User, ApiError> {
        let ep = endpoint(
            "read the authenticated user".to_owned(),
            Method::GET,
            "/user".to_owned(),
        );
        let user: UserBody = self.json(&self.api, &ep, None::<&()>, GITHUB_JSON).await?;
        Ok(User {
            login: user.login,
            id: user.id,
        })
    }

    /// The account GitHub names `login` now (`GET /users/{login}`), or `None` if it names
    /// none. Logins change hands; the id this returns does not.
    pub async fn user_named(&self, login: &str) -> Result<Option<User>, ApiError> {
        // A login is letters, digits and hyphens: nothing else is sent as a path segment.
        if login.is_empty()
            || !login
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Ok(None);
        }
        let ep = endpoint(
            format!("look up the GitHub account {login}"),
            Method::GET,
            format!("/users/{login}"),
        );
        let found: Result<UserBody, ApiError> =
            self.json(&self.api, &ep, None::<&()>, GITHUB_JSON).await;
        match found {
            Ok(user) => Ok(Some(User {
                login: user.login,
                id: user.id,
            })),
            Err(ApiError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The authenticated user of another token (e.g. one just obtained by OAuth), through the
    /// same API base.
    pub async fn user_of_token(&self, token: &str) -> Result<User, ApiError> {
        let config = GitHubConfig {
            api_base: self.api_base.clone(),
            web_base: self.web_base.clone(),
            token: Some(token.to_owned()),
        };
        GitHub::new(&config)?.authenticated_user().await
    }

    /// Exchanges an OAuth `code` for a user access token at
    /// `{web_base}/login/oauth/access_token`.
    pub async fn exchange_oauth_code(
        &self,
        app: &OAuthApp,
        code: &str,
        code_verifier: Option<&str>,
    ) -> Result<OAuthToken, ApiError> {
        let ep = endpoint(
            "exchange the OAuth code".to_owned(),
            Method::POST,
            "/login/oauth/access_token".to_owned(),
        );
        let body = OAuthExchange {
            client_id: &app.client_id,
            client_secret: &app.client_secret,
            code,
            code_verifier,
        };
        let answer: OAuthAnswer = self
            .json(&self.web, &ep, Some(&body), "application/json")
            .await?;
        if let Some(error) = answer.error {
            return Err(ApiError::OAuthRefused {
                endpoint: ep,
                error,
                description: answer.error_description.unwrap_or_default(),
            });
        }
        match answer.access_token {
            Some(access_token) if !access_token.is_empty() => Ok(OAuthToken {
                access_token,
                token_type: answer.token_type.unwrap_or_else(|| "bearer".to_owned()),
                scope: answer.scope.unwrap_or_default(),
            }),
            _ => Err(ApiError::Response {
                endpoint: ep,
                detail: "no access_token".to_owned(),
            }),
        }
    }
}

/// GitHub's recommended `Accept` for REST calls.
const GITHUB_JSON: &str = "application/vnd.github+json";

async fn read(ep: &Endpoint, body: Body, limit: u64) -> Result<Vec<u8>, ApiError> {
    read_bounded(body, limit).await.map_err(|e| match e {
        ReadError::TooLarge => ApiError::TooLarge {
            endpoint: ep.clone(),
            limit,
        },
        ReadError::Body(detail) => ApiError::Request {
            endpoint: ep.clone(),
            detail,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(encode("a b/c.yml", true), "a%20b/c.yml");
        assert_eq!(encode("feature/x&y", false), "feature%2Fx%26y");
    }

    #[test]
    fn file_paths() {
        assert!(check_file_path("tinyci.yml").is_ok());
        assert!(check_file_path("ci/task.yml").is_ok());
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a"] {
            assert!(check_file_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
