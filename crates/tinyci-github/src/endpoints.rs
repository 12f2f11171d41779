//! GitHub's endpoints on the site's HTTP listener (the site answers `tinyci_web`'s
//! `Backend::endpoint` with [`Endpoints::route`]): the webhook at `/hooks/github` and the
//! OAuth login at `/oauth/*` (a browser's sign-in to the pages, and `tinyci login`'s terminal
//! login). What only the site can do, minting a user's grant, is asked of it through
//! [`LoginGrants`].
//!
//! The webhook's signature is checked before its content is believed
//! ([`GitHubService::intake`]); every body is read with a bound; query strings (which carry
//! OAuth codes and states) are never logged.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use http::{Method, Request, StatusCode, header};
use hyper::body::Incoming;
use tinyci_core::Clock;
use tinyci_users::User;
use tinyci_web::render::html_escape;
use tinyci_web::{
    Reply, SESSION_COOKIE, json, message_page as page, read_body, reply, session_cookie, text,
};
use tracing::{info, warn};

use crate::oauth::{self, LoginOutcome, LoginResult, Purpose};
use crate::{GitHubService, Intake, IntakeError};
use tinyci_pki::secrets::random_secret_hex;

/// What only the site can do for a login: mint the grant a signed-in user holds.
#[allow(async_fn_in_trait)]
pub trait LoginGrants {
    /// The site's id, as grants name it.
    fn site(&self) -> String;
    /// Mints (and records, so it can be listed and revoked) a grant for `user`'s
    /// capabilities, expiring at `expires_at`; `Ok(None)` when they hold none. `issued_by`
    /// says which login it is for.
    async fn mint(
        &self,
        user: &User,
        expires_at: SystemTime,
        issued_by: &'static str,
    ) -> Result<Option<String>, MintError>;
}

/// Why the site could not mint a login's grant.
#[derive(Debug, thiserror::Error)]
#[error("{}", tinyci_core::error_chain(.0.as_ref()))]
pub struct MintError(Box<dyn std::error::Error + 'static>);

impl MintError {
    pub fn new(error: impl std::error::Error + 'static) -> Self {
        Self(Box::new(error))
    }
}

/// The login endpoints' state between requests: pending OAuth states, terminal logins in
/// progress, and signed-in browsers.
pub struct Endpoints {
    /// `None` when the site has no `[github]` section: every endpoint says so.
    github: Option<Rc<GitHubService>>,
    states: RefCell<oauth::States>,
    logins: RefCell<oauth::Logins>,
    sessions: RefCell<oauth::WebSessions>,
    /// Signs login CSRs; `None` when `tls.ca_key` is not configured.
    login_ca: Option<Rc<oauth::LoginCa>>,
    /// The capnp address clients reach the site at (handed to `tinyci login`).
    rpc_addr: String,
    /// Whether browsers reach the site over HTTPS (cookies are then `Secure`).
    https: bool,
    clock: Clock,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("github", &self.github.is_some())
            .field("rpc_addr", &self.rpc_addr)
            .finish_non_exhaustive()
    }
}

impl Endpoints {
    pub fn new(
        github: Option<Rc<GitHubService>>,
        login_ca: Option<Rc<oauth::LoginCa>>,
        rpc_addr: String,
        https: bool,
        clock: Clock,
    ) -> Self {
        Self {
            github,
            states: RefCell::default(),
            logins: RefCell::default(),
            sessions: RefCell::default(),
            login_ca,
            rpc_addr,
            https,
            clock,
        }
    }

    fn now(&self) -> SystemTime {
        tinyci_core::system_time((self.clock)())
    }

    fn github(&self) -> Option<&Rc<GitHubService>> {
        self.github.as_ref()
    }

    /// The signed-in browser holding `cookie`, if its session is live.
    pub fn web_session(&self, cookie: &str) -> Option<oauth::WebSession> {
        self.sessions.borrow().get(cookie, self.now())
    }

    /// Forgets the browser session holding `cookie` (with its grant).
    pub fn sign_out(&self, cookie: &str) {
        self.sessions.borrow_mut().sign_out(cookie);
    }

    /// Answers `/hooks/…` and `/oauth/…`, or `None` for a path that is neither of these.
    pub async fn route(
        &self,
        grants: &impl LoginGrants,
        request: Request<Incoming>,
    ) -> Option<Reply> {
        let state = self;
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let reply = match (&method, path.as_str()) {
            (&Method::POST, "/hooks/github") => webhook(state, request).await,
            (&Method::GET, "/oauth/login") => login(state, &request),
            (&Method::POST, "/oauth/login") => confirm_login(state, request).await,
            (&Method::GET, "/oauth/callback") => callback(state, grants, &request).await,
            (&Method::POST, "/oauth/cli/start") => cli_start(state, request).await,
            (&Method::POST, "/oauth/cli/poll") => cli_poll(state, request).await,
            (_, "/hooks/github" | "/oauth/login" | "/oauth/callback") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            ),
            _ => return None,
        };
        Some(reply)
    }
}

/// Largest CSR `tinyci login` may post.
const MAX_CSR_BYTES: usize = 16 * 1024;
/// How long a login poll waits for the browser before answering "pending".
const POLL_WAIT: Duration = Duration::from_secs(25);

fn header_str<'r>(request: &'r Request<Incoming>, name: &str) -> Option<&'r str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn webhook(state: &Endpoints, request: Request<Incoming>) -> Reply {
    let event = header_str(&request, "x-github-event").map(str::to_owned);
    let delivery = header_str(&request, "x-github-delivery").map(str::to_owned);
    let signature = header_str(&request, "x-hub-signature-256").map(str::to_owned);
    let body = match read_body(request, tinyci_repos::MAX_WEBHOOK_BYTES).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let Some(github) = state.github() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this site has no [github] section in its site.toml",
        );
    };
    let outcome = github
        .intake(
            event.as_deref(),
            delivery.as_deref(),
            signature.as_deref(),
            body,
        )
        .await;
    match outcome {
        Ok(Intake::Accepted) => text(StatusCode::ACCEPTED, "accepted"),
        Ok(Intake::Duplicate) => text(StatusCode::OK, "repeated delivery: ignored"),
        Ok(Intake::Pong) => text(StatusCode::OK, "pong"),
        Ok(Intake::Ignored(why)) => text(StatusCode::OK, why),
        Err(e) => {
            let status = match e {
                IntakeError::Malformed(_) => StatusCode::BAD_REQUEST,
                IntakeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                IntakeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            text(status, e.to_string())
        }
    }
}

fn query(request: &Request<Incoming>) -> Vec<(String, String)> {
    form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn query_value<'q>(query: &'q [(String, String)], key: &str) -> Option<&'q str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The GitHub OAuth app and where GitHub sends browsers back, or the page saying there is none
/// (boxed: a whole reply is large next to the borrowed trio).
fn oauth_app(
    state: &Endpoints,
) -> Result<(&crate::GitHubService, &tinyci_repos::OAuthApp, &str), Box<Reply>> {
    let Some(github) = state.github() else {
        return Err(Box::new(page(
            StatusCode::NOT_FOUND,
            "Login unavailable",
            "This site has no [github] section, so it offers no login.",
        )));
    };
    let (Some(app), Some(public_url)) = (&github.oauth_app, &github.public_url) else {
        return Err(Box::new(page(
            StatusCode::NOT_FOUND,
            "Login unavailable",
            "This site has no GitHub OAuth app configured ([github] client_id and client_secret_file).",
        )));
    };
    Ok((github, app, public_url))
}

/// The browser's session cookie, or a fresh one to set.
fn browser_session(request: &Request<Incoming>) -> (String, bool) {
    match session_cookie(request) {
        Some(session) => (session, false),
        None => (random_secret_hex(16), true),
    }
}

/// Sets the session cookie on `response` when it is new.
fn with_session(mut response: Reply, session: &str, new: bool, public_url: &str) -> Reply {
    if new {
        let secure = if public_url.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        let cookie = format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax{secure}");
        if let Ok(value) = cookie.parse() {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
    }
    response
}

/// `GET /oauth/login`: a browser login goes to GitHub at once; a `tinyci login` link
/// (`?login=ID`) first shows a form for the code the terminal printed, so a link forwarded to
/// someone else completes nothing.
fn login(state: &Endpoints, request: &Request<Incoming>) -> Reply {
    let (github, app, public_url) = match oauth_app(state) {
        Ok(found) => found,
        Err(reply) => return *reply,
    };
    let query = query(request);
    let (session, new_session) = browser_session(request);
    let now = state.now();
    let Some(id) = query_value(&query, "login").map(str::to_owned) else {
        let purpose = Purpose::Browser {
            next: query_value(&query, "next").and_then(tinyci_web::render::safe_next),
        };
        let redirect = authorize_redirect(state, github, app, public_url, &session, purpose, false);
        return with_session(redirect, &session, new_session, public_url);
    };
    let form_token = random_secret_hex(16);
    if state
        .logins
        .borrow_mut()
        .offer_form(&id, &session, form_token.clone(), now)
        .is_err()
    {
        return page(
            StatusCode::GONE,
            "Login expired",
            "This login link is unknown or older than 10 minutes. Run `tinyci login` again.",
        );
    }
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Confirm your terminal · tinyci</title></head>\n<body><main>\
         <h1>Confirm your terminal</h1>\
         <p>Enter the code <code>tinyci login</code> printed in your terminal just now.</p>\
         <p><strong>If someone sent you this link, close this page:</strong> finishing it would \
         sign their terminal in as you.</p>\
         <form method=\"post\" action=\"/oauth/login\">\
         <input type=\"hidden\" name=\"login\" value=\"{id}\">\
         <input type=\"hidden\" name=\"form\" value=\"{form_token}\">\
         <label for=\"code\">Code</label> \
         <input id=\"code\" name=\"code\" autocomplete=\"off\" autocapitalize=\"characters\" \
         spellcheck=\"false\" required placeholder=\"XXXX-XXXX\"> \
         <button type=\"submit\">Continue with GitHub</button></form></main></body></html>\n",
        id = html_escape(&id),
    );
    let mut response = reply(StatusCode::OK, "text/html; charset=utf-8", body);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    // The form posts here, and the answer redirects to GitHub: Chromium holds a post's
    // redirects to form-action too, so the policy names GitHub's origin, and only it.
    let github_origin = tinyci_web::render::origin_of(&github.settings.web_url);
    let targets: Vec<&str> = github_origin.iter().map(String::as_str).collect();
    let policy = tinyci_web::render::content_security_policy(&targets);
    if let Ok(value) = header::HeaderValue::from_str(&policy) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    with_session(response, &session, new_session, public_url)
}

/// Most bytes of the code form.
const MAX_CODE_FORM_BYTES: usize = 1024;

/// `POST /oauth/login`: the code form. Only from the form this browser was shown (its
/// anti-forgery token and session), only from this site (`Origin`), and only with the code
/// the terminal printed, does the login go on to GitHub.
async fn confirm_login(state: &Endpoints, request: Request<Incoming>) -> Reply {
    let (github, app, public_url) = match oauth_app(state) {
        Ok(found) => found,
        Err(reply) => return *reply,
    };
    if let Some(origin) = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        && !tinyci_web::render::same_origin(origin, public_url)
    {
        return page(
            StatusCode::FORBIDDEN,
            "Login refused",
            &format!("The code was posted from {origin}, not from this site."),
        );
    }
    let Some(session) = session_cookie(&request) else {
        return page(
            StatusCode::FORBIDDEN,
            "Login refused",
            "This browser has no session: open the login link again.",
        );
    };
    let body = match read_body(request, MAX_CODE_FORM_BYTES).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let form: std::collections::HashMap<String, String> =
        form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let id = field("login").to_owned();
    let confirmed =
        state
            .logins
            .borrow_mut()
            .confirm(&id, &session, field("form"), field("code"), state.now());
    match confirmed {
        Ok(hooks) => {
            info!("login code confirmed in the browser");
            // A fresh session for the rest of the login: a cookie planted in this browser
            // beforehand (by whoever wants the login to finish at their terminal) is not the
            // one the callback will accept.
            let fresh = random_secret_hex(16);
            let redirect = authorize_redirect(
                state,
                github,
                app,
                public_url,
                &fresh,
                Purpose::Cli(id),
                hooks,
            );
            with_session(redirect, &fresh, true, public_url)
        }
        Err(e @ oauth::ConfirmError::WrongCode { .. }) => {
            page(StatusCode::FORBIDDEN, "Wrong code", &e.to_string())
        }
        Err(e) => {
            warn!(error = %e, "login code refused");
            page(StatusCode::FORBIDDEN, "Login refused", &e.to_string())
        }
    }
}

/// Sends the browser to GitHub's authorize page for `purpose`, with a fresh state bound to
/// `session`, PKCE, and the narrowest scopes: reading the user, their organization and team
/// memberships ([github] allow) and the repositories they may read; webhook rights only for a
/// login that will enable repositories.
fn authorize_redirect(
    state: &Endpoints,
    github: &crate::GitHubService,
    app: &tinyci_repos::OAuthApp,
    public_url: &str,
    session: &str,
    purpose: Purpose,
    hooks: bool,
) -> Reply {
    let oauth_state = random_secret_hex(16);
    let verifier = random_secret_hex(32);
    let challenge = oauth::code_challenge(&verifier);
    state
        .states
        .borrow_mut()
        .issue(oauth_state.clone(), session, purpose, verifier, state.now());
    let scope = if hooks {
        "read:user read:org repo admin:repo_hook"
    } else {
        "read:user read:org repo"
    };
    let location = format!(
        "{}/login/oauth/authorize?{}",
        github.settings.web_url,
        form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &app.client_id)
            .append_pair("redirect_uri", &format!("{public_url}/oauth/callback"))
            .append_pair("scope", scope)
            .append_pair("state", &oauth_state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish()
    );
    let mut response = text(StatusCode::SEE_OTHER, "continue at GitHub");
    if let Ok(value) = location.parse() {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

async fn callback(
    state: &Endpoints,
    grants: &impl LoginGrants,
    request: &Request<Incoming>,
) -> Reply {
    let query = query(request);
    let session = session_cookie(request);
    let Some(oauth_state) = query_value(&query, "state") else {
        return page(
            StatusCode::BAD_REQUEST,
            "Login failed",
            "The callback carries no state.",
        );
    };
    let taken = state
        .states
        .borrow_mut()
        .take(oauth_state, session.as_deref(), state.now());
    let oauth::Taken { purpose, verifier } = match taken {
        Ok(taken) => taken,
        Err(e) => {
            warn!(error = %e, "oauth callback refused");
            return page(StatusCode::BAD_REQUEST, "Login refused", &e.to_string());
        }
    };
    let login = match &purpose {
        Purpose::Cli(id) => Some(id.clone()),
        Purpose::Browser { .. } => None,
    };
    let finish = |outcome: LoginOutcome| {
        if let Some(id) = &login {
            state.logins.borrow_mut().finish(id, outcome);
        }
    };
    if let Some(error) = query_value(&query, "error") {
        let message = format!("GitHub did not authorize the login: {error}");
        finish(LoginOutcome::Failed(message.clone()));
        return page(StatusCode::FORBIDDEN, "Login refused", &message);
    }
    let Some(code) = query_value(&query, "code") else {
        finish(LoginOutcome::Failed("the callback carries no code".into()));
        return page(
            StatusCode::BAD_REQUEST,
            "Login failed",
            "The callback carries no code.",
        );
    };
    match complete_login(state, grants, code, &verifier, login.as_deref()).await {
        Ok(result) if login.is_none() => {
            let next = match purpose {
                Purpose::Browser { next } => next,
                Purpose::Cli(_) => None,
            };
            sign_in_browser(state, &result, next)
        }
        Ok(result) => {
            let message = format!(
                "Signed in to tinyci site {} as {} (GitHub {}).{}",
                result.site,
                result.user,
                result.github_login,
                if login.is_some() {
                    " You can close this tab and return to your terminal."
                } else {
                    ""
                }
            );
            finish(LoginOutcome::Done(Box::new(result)));
            page(StatusCode::OK, "Signed in", &message)
        }
        Err(e) => {
            let message = tinyci_core::error_chain(&e);
            warn!(error = %message, "oauth login failed");
            finish(LoginOutcome::Failed(message.clone()));
            page(StatusCode::BAD_GATEWAY, "Login failed", &message)
        }
    }
}

/// Signs a browser in to the run pages after its GitHub login: a fresh session cookie (never
/// the one it arrived with, so a cookie planted before the login is worth nothing), then on to
/// `next` or a page saying who it is signed in as.
fn sign_in_browser(state: &Endpoints, result: &LoginResult, next: Option<String>) -> Reply {
    let Ok(user) = result.user.parse::<tinyci_users::UserName>() else {
        return page(
            StatusCode::BAD_GATEWAY,
            "Login failed",
            "the linked user has an invalid name",
        );
    };
    let cookie = random_secret_hex(32);
    state.sessions.borrow_mut().sign_in(
        cookie.clone(),
        user,
        random_secret_hex(32),
        Some(result.token.clone()).filter(|t| !t.is_empty()),
        state.now(),
    );
    info!(user = %result.user, "browser signed in");
    let mut response = match next {
        Some(next) => {
            let mut response = text(StatusCode::SEE_OTHER, "signed in");
            if let Ok(location) = next.parse() {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        None => page(
            StatusCode::OK,
            "Signed in",
            &format!(
                "Signed in to tinyci site {} as {} (GitHub {}).",
                result.site, result.user, result.github_login
            ),
        ),
    };
    let secure = if state.https { "; Secure" } else { "" };
    let max_age = oauth::WEB_SESSION_TTL.as_secs();
    let set = format!(
        "{SESSION_COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    );
    if let Ok(value) = set.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Why a GitHub login did not complete. Shown to the person logging in (the page, or their
/// terminal), so every message says what to do; never a token.
#[derive(Debug, thiserror::Error)]
enum LoginError {
    #[error("this site has no [github] section in its site.toml")]
    NoGitHub,
    #[error("this site has no GitHub OAuth app configured")]
    NoApp,
    #[error("GitHub refused or failed the login")]
    Api(#[from] tinyci_repos::ApiError),
    #[error("cannot record the login")]
    Users(#[from] tinyci_users::UsersError),
    #[error(
        "signed in as {user} (GitHub {login}), who holds no capability on this site yet: an admin \
         grants one (tinyci admin user cap add {user} logs), or lists your account, organization \
         or team in [github] allow"
    )]
    NoCapabilities {
        user: tinyci_users::UserName,
        login: String,
    },
    #[error("cannot mint the login's grant")]
    Mint(#[from] MintError),
    #[error("this site cannot issue certificates to logins: tls.ca_key is not configured")]
    NoCa,
    #[error("the terminal login expired while GitHub was asked")]
    Expired,
    #[error("cannot sign the login's certificate request")]
    Sign(#[source] tinyci_pki::PkiError),
}

/// Whether `[github] allow` admits `login` (whose token is `token`): named, or an active member
/// of a named organization or team.
async fn allowed(
    github: &crate::GitHubService,
    token: &str,
    login: &str,
) -> Result<bool, tinyci_repos::ApiError> {
    use crate::GitHubAllow;
    let client = github.client_with(Some(token.to_owned()))?;
    for entry in &github.settings.allow {
        let member = match entry {
            GitHubAllow::User(name) => name.eq_ignore_ascii_case(login),
            GitHubAllow::Org(org) => client.is_org_member(org).await?,
            GitHubAllow::Team(org, team) => client.is_team_member(org, team, login).await?,
        };
        if member {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Exchanges the code, links the user, and for a CLI login mints their grant and signs their
/// certificate (a browser login gets a session cookie instead, and no grant).
async fn complete_login(
    state: &Endpoints,
    grants: &impl LoginGrants,
    code: &str,
    verifier: &str,
    login: Option<&str>,
) -> Result<LoginResult, LoginError> {
    let github = state.github().ok_or(LoginError::NoGitHub)?;
    let app = github.oauth_app.as_ref().ok_or(LoginError::NoApp)?;
    let anonymous = github.client_with(None)?;
    let token = anonymous
        .exchange_oauth_code(app, code, Some(verifier))
        .await?;
    let user = anonymous.user_of_token(&token.access_token).await?;
    let sealed = github.secrets.seal(
        token.access_token.as_bytes(),
        &crate::token_context(user.id),
    );
    // Capabilities come only through `[github] allow` (asked of GitHub with the user's own
    // token): any other account signs in holding nothing.
    let default_caps = if allowed(github, &token.access_token, &user.login).await? {
        github
            .settings
            .default_capabilities
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    } else {
        info!(github = %user.login, "login not in [github] allow: no capabilities");
        std::collections::BTreeSet::new()
    };
    let (site_user, outcome) = github
        .users
        .link_github(&user.login, user.id, sealed, &default_caps, (state.clock)())
        .await?;
    info!(user = %site_user.name, github = %user.login, ?outcome, "github login");
    let result = |token: String, expires_at, cert_pem: String, ca_pem: String| LoginResult {
        site: grants.site(),
        user: site_user.name.to_string(),
        github_login: user.login.clone(),
        addr: state.rpc_addr.clone(),
        cert_pem,
        ca_pem,
        token,
        capabilities: site_user
            .capabilities
            .iter()
            .map(ToString::to_string)
            .collect(),
        expires_at: oauth::unix_secs(expires_at),
    };
    let Some(login) = login else {
        // A browser login: a grant for the browser's session alone, held in memory, which
        // each page redeems for an in-process session (the pages' only authority). A user
        // holding nothing signs in with none (public pages only).
        let expires_at = state.now() + oauth::WEB_SESSION_TTL;
        let token = grants
            .mint(&site_user, expires_at, "github-login (browser)")
            .await?
            .unwrap_or_default();
        return Ok(result(token, expires_at, String::new(), String::new()));
    };
    let expires_at = state.now() + github.settings.login_token_ttl;
    let Some(token) = grants.mint(&site_user, expires_at, "github-login").await? else {
        return Err(LoginError::NoCapabilities {
            user: site_user.name.clone(),
            login: user.login.clone(),
        });
    };
    let ca = state.login_ca.as_ref().ok_or(LoginError::NoCa)?;
    let csr = state
        .logins
        .borrow()
        .csr(login)
        .ok_or(LoginError::Expired)?;
    let cert_pem = ca
        .sign(&csr, site_user.name.as_str())
        .map_err(LoginError::Sign)?;
    Ok(result(token, expires_at, cert_pem, ca.ca_pem.clone()))
}

async fn cli_start(state: &Endpoints, request: Request<Incoming>) -> Reply {
    // `tinyci login --repo-hooks`: this login will enable repositories.
    let hooks = query_value(&query(&request), "hooks") == Some("1");
    let available = state
        .github()
        .filter(|g| g.oauth_app.is_some())
        .and_then(|g| g.public_url.clone());
    let Some(public_url) = available else {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "this site has no GitHub OAuth login configured"}),
        );
    };
    if state.login_ca.is_none() {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "this site cannot issue certificates to logins: tls.ca_key is not configured"}),
        );
    }
    let body = match read_body(request, MAX_CSR_BYTES).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let Ok(csr_pem) = String::from_utf8(body) else {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "the body must be a PEM certificate signing request"}),
        );
    };
    if !csr_pem.contains("BEGIN CERTIFICATE REQUEST") {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "the body must be a PEM certificate signing request"}),
        );
    }
    let id = random_secret_hex(16);
    let poll = random_secret_hex(32);
    let mut random = [0u8; 8];
    tinyci_pki::secrets::fill_random(&mut random);
    let user_code = oauth::new_user_code(&random);
    state.logins.borrow_mut().start(
        id.clone(),
        poll.clone(),
        csr_pem,
        user_code.clone(),
        hooks,
        state.now(),
    );
    json(
        StatusCode::OK,
        &serde_json::json!({
            "login_url": format!("{public_url}/oauth/login?login={id}"),
            "user_code": user_code,
            "poll": poll,
            "expires_in": oauth::STATE_TTL.as_secs(),
        }),
    )
}

async fn cli_poll(state: &Endpoints, request: Request<Incoming>) -> Reply {
    let body = match read_body(request, 1024).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let secret = String::from_utf8_lossy(&body).trim().to_owned();
    let Some((id, mut outcome)) = state.logins.borrow().watch(&secret) else {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "unknown or expired login: run tinyci login again"}),
        );
    };
    let _ = tokio::time::timeout(
        POLL_WAIT,
        outcome.wait_for(|o| !matches!(o, LoginOutcome::Pending)),
    )
    .await;
    let current = outcome.borrow().clone();
    match current {
        LoginOutcome::Pending => json(
            StatusCode::ACCEPTED,
            &serde_json::json!({"status": "pending"}),
        ),
        LoginOutcome::Done(result) => {
            state.logins.borrow_mut().remove(&id);
            json(
                StatusCode::OK,
                &serde_json::json!({"status": "done", "login": *result}),
            )
        }
        LoginOutcome::Failed(message) => {
            state.logins.borrow_mut().remove(&id);
            json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"status": "failed", "error": message}),
            )
        }
    }
}
