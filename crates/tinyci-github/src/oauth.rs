//! Logging in with GitHub.
//!
//! `/oauth/login` sets a session cookie, issues a random `state` bound to that session (single
//! use, 10 minutes) and redirects to GitHub. `/oauth/callback` accepts the state only from the
//! same session, exchanges the code for the user's GitHub token (sealed at rest), creates or
//! links the site user, and mints a grant for them: `user:<name>`-bound, with their
//! capabilities, for `[github] login_token_days`.
//!
//! `tinyci login` rides on the same flow without ever handing its private key to anyone: it
//! posts a certificate signing request to `/oauth/cli/start` and gets a login URL (for the
//! browser) and a poll secret (kept to itself). The callback signs the CSR for `user:<name>`
//! with the site CA, and the CLI collects certificate and token with `/oauth/cli/poll`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tinyci_core::constant_time_eq;
use tinyci_pki::{PeerIdentity, Role, SiteCa};
use tokio::sync::watch;

/// How long a `state` (and a CLI login) stays usable.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// Most states or logins pending at once; the oldest are dropped past it.
const MAX_PENDING: usize = 10_000;

/// Why a callback's state was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Never issued, or already used.
    #[error("unknown or already used login state: start again from /oauth/login")]
    Unknown,
    /// Older than ten minutes.
    #[error("the login took longer than 10 minutes: start again from /oauth/login")]
    Expired,
    /// Issued to another browser session.
    #[error("this login was started in another browser session: start again from /oauth/login")]
    WrongSession,
}

/// What a login was started for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A `tinyci login` (its login id): the callback signs its CSR.
    Cli(String),
    /// A browser login: the callback signs the browser in and sends it on to `next` (a path
    /// on this site).
    Browser { next: Option<String> },
}

struct IssuedState {
    session: String,
    purpose: Purpose,
    /// PKCE: the secret whose SHA-256 went to GitHub with this state; only this site can
    /// present it when exchanging the code.
    verifier: String,
    issued: SystemTime,
}

/// What a taken state was issued for. `Debug` leaves the verifier out.
#[derive(PartialEq, Eq)]
pub struct Taken {
    pub purpose: Purpose,
    /// The PKCE code verifier to exchange the code with.
    pub verifier: String,
}

impl std::fmt::Debug for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taken")
            .field("purpose", &self.purpose)
            .finish_non_exhaustive()
    }
}

/// Pending OAuth states. Sans-IO: every time is a parameter.
#[derive(Default)]
pub struct States {
    pending: HashMap<String, IssuedState>,
}

/// Shows how many are held, never their secrets.
impl std::fmt::Debug for States {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("States")
            .field("held", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl States {
    /// Issues `state` for `session`, for `purpose`, with PKCE code verifier `verifier`.
    pub fn issue(
        &mut self,
        state: String,
        session: &str,
        purpose: Purpose,
        verifier: String,
        now: SystemTime,
    ) {
        self.pending.retain(|_, s| age(now, s.issued) < STATE_TTL);
        if self.pending.len() >= MAX_PENDING
            && let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, s)| s.issued)
                .map(|(k, _)| k.clone())
        {
            self.pending.remove(&oldest);
        }
        self.pending.insert(
            state,
            IssuedState {
                session: session.to_owned(),
                purpose,
                verifier,
                issued: now,
            },
        );
    }

    /// Uses up `state`: refused if unknown, used, expired, or from another session. Any
    /// presentation uses it up, so a refused state cannot be retried either.
    pub fn take(
        &mut self,
        state: &str,
        session: Option<&str>,
        now: SystemTime,
    ) -> Result<Taken, StateError> {
        let issued = self.pending.remove(state).ok_or(StateError::Unknown)?;
        if age(now, issued.issued) >= STATE_TTL {
            return Err(StateError::Expired);
        }
        // The session cookie is a secret: compared in constant time, as every secret is.
        if !session.is_some_and(|s| constant_time_eq(s.as_bytes(), issued.session.as_bytes())) {
            return Err(StateError::WrongSession);
        }
        Ok(Taken {
            purpose: issued.purpose,
            verifier: issued.verifier,
        })
    }
}

/// How long a browser stays signed in to the site's pages.
pub const WEB_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most signed-in browsers at once; the oldest are signed out past it.
const MAX_WEB_SESSIONS: usize = 10_000;

/// A browser signed in to the site's pages.
#[derive(Clone)]
pub struct WebSession {
    /// The site user it signed in as.
    pub user: tinyci_users::UserName,
    /// The anti-forgery token its forms carry (random, per session).
    pub csrf: String,
    /// The grant minted at sign-in for this browser (`user:<name>`-bound, expiring with the
    /// session): every request redeems it for an in-process `Session`, so the pages see
    /// exactly what RPC would. `None` when the user held no capability at sign-in.
    pub token: Option<String>,
    signed_in: SystemTime,
}

impl std::fmt::Debug for WebSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSession")
            .field("user", &self.user)
            .field("token", &self.token.as_ref().map(|_| "(redacted)"))
            .finish_non_exhaustive()
    }
}

/// Signed-in browsers by session cookie. Sans-IO. Held in memory: a site restart signs
/// everyone out, and GitHub signs them back in with one click.
#[derive(Default)]
pub struct WebSessions {
    by_cookie: HashMap<String, WebSession>,
}

/// Shows how many are held, never their secrets.
impl std::fmt::Debug for WebSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSessions")
            .field("held", &self.by_cookie.len())
            .finish_non_exhaustive()
    }
}

impl WebSessions {
    /// Signs `cookie` in as `user`. The cookie must be new (issued at sign-in), never the
    /// one the browser arrived with, so a planted cookie cannot be signed in by its victim.
    pub fn sign_in(
        &mut self,
        cookie: String,
        user: tinyci_users::UserName,
        csrf: String,
        token: Option<String>,
        now: SystemTime,
    ) {
        self.by_cookie
            .retain(|_, s| age(now, s.signed_in) < WEB_SESSION_TTL);
        if self.by_cookie.len() >= MAX_WEB_SESSIONS
            && let Some(oldest) = self
                .by_cookie
                .iter()
                .min_by_key(|(_, s)| s.signed_in)
                .map(|(k, _)| k.clone())
        {
            self.by_cookie.remove(&oldest);
        }
        self.by_cookie.insert(
            cookie,
            WebSession {
                user,
                csrf,
                token,
                signed_in: now,
            },
        );
    }

    /// Signs `cookie` out.
    pub fn sign_out(&mut self, cookie: &str) {
        self.by_cookie.remove(cookie);
    }

    /// The session of `cookie`, if signed in and not expired.
    pub fn get(&self, cookie: &str, now: SystemTime) -> Option<WebSession> {
        self.by_cookie
            .get(cookie)
            .filter(|s| age(now, s.signed_in) < WEB_SESSION_TTL)
            .cloned()
    }
}

/// What a finished CLI login hands back (to the terminal that polls for it, as JSON). `Debug`
/// leaves the token out.
#[derive(Clone, serde::Serialize)]
pub struct LoginResult {
    pub site: String,
    pub user: String,
    pub github_login: String,
    /// The site's capnp address as the site sees it.
    pub addr: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub token: String,
    pub capabilities: Vec<String>,
    pub expires_at: u64,
}

impl std::fmt::Debug for LoginResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResult")
            .field("site", &self.site)
            .field("user", &self.user)
            .field("github_login", &self.github_login)
            .field("capabilities", &self.capabilities)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// How a pending CLI login ends.
#[derive(Clone, Debug)]
pub enum LoginOutcome {
    Pending,
    Done(Box<LoginResult>),
    Failed(String),
}

struct PendingLogin {
    csr_pem: String,
    poll_secret: String,
    /// Printed by the terminal only; the browser must enter it before the login goes on, so
    /// a login link forwarded to someone else is worth nothing to them or to its sender.
    user_code: String,
    /// The login may enable repositories: GitHub is asked for webhook rights too.
    hooks: bool,
    /// Wrong codes entered so far; past [`MAX_CODE_ATTEMPTS`] the login is over.
    attempts: u8,
    /// The browser session shown the code form, and the form's anti-forgery token: the
    /// code is accepted only from that form in that browser.
    form: Option<(String, String)>,
    started: SystemTime,
    outcome: watch::Sender<LoginOutcome>,
}

/// Wrong codes a login survives.
pub const MAX_CODE_ATTEMPTS: u8 = 5;

/// The letters of user codes: consonants only (no words, no 0/O or 1/I confusion).
const CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";

/// A fresh user code, `XXXX-XXXX` (20^8, about 2.6e10, against 5 guesses).
pub fn new_user_code(random: &[u8; 8]) -> String {
    let letters: String = random
        .iter()
        .map(|b| char::from(CODE_ALPHABET[usize::from(*b) % CODE_ALPHABET.len()]))
        .collect();
    format!("{}-{}", &letters[..4], &letters[4..])
}

/// A user code as typed: letters only, upper case.
fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Why a code was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmError {
    /// No such live login.
    #[error("this login is unknown or older than 10 minutes: run `tinyci login` again")]
    Unknown,
    /// The form was not this browser's (a forged or replayed post).
    #[error("this form was not shown to this browser: open the login link again")]
    WrongForm,
    /// A wrong code; the login goes on.
    #[error("that is not the code your terminal printed ({left} tries left)")]
    WrongCode {
        /// Tries left.
        left: u8,
    },
    /// Too many wrong codes: the login is over.
    #[error("too many wrong codes: this login is over; run `tinyci login` again")]
    TooManyAttempts,
}

/// Pending `tinyci login`s.
#[derive(Default)]
pub struct Logins {
    pending: HashMap<String, PendingLogin>,
}

/// Shows how many are held, never their secrets.
impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logins")
            .field("held", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Logins {
    /// Records a CLI login; `id` goes into the login URL, `poll_secret` and `user_code` only
    /// to the CLI.
    pub fn start(
        &mut self,
        id: String,
        poll_secret: String,
        csr_pem: String,
        user_code: String,
        hooks: bool,
        now: SystemTime,
    ) {
        self.pending.retain(|_, l| age(now, l.started) < STATE_TTL);
        if self.pending.len() >= MAX_PENDING
            && let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, l)| l.started)
                .map(|(k, _)| k.clone())
        {
            self.pending.remove(&oldest);
        }
        self.pending.insert(
            id,
            PendingLogin {
                csr_pem,
                poll_secret,
                user_code: normalize_code(&user_code),
                hooks,
                attempts: 0,
                form: None,
                started: now,
                outcome: watch::channel(LoginOutcome::Pending).0,
            },
        );
    }

    /// Shows login `id`'s code form to browser `session`: returns the form's anti-forgery
    /// token (a later form replaces an earlier one).
    pub fn offer_form(
        &mut self,
        id: &str,
        session: &str,
        form_token: String,
        now: SystemTime,
    ) -> Result<(), ConfirmError> {
        let login = self
            .pending
            .get_mut(id)
            .filter(|l| age(now, l.started) < STATE_TTL)
            .ok_or(ConfirmError::Unknown)?;
        login.form = Some((session.to_owned(), form_token));
        Ok(())
    }

    /// Checks the code a browser entered for login `id`: only from the form shown to that
    /// browser session. Returns whether the login may enable repositories.
    pub fn confirm(
        &mut self,
        id: &str,
        session: &str,
        form_token: &str,
        code: &str,
        now: SystemTime,
    ) -> Result<bool, ConfirmError> {
        let login = self
            .pending
            .get_mut(id)
            .filter(|l| age(now, l.started) < STATE_TTL)
            .ok_or(ConfirmError::Unknown)?;
        let from_the_form = login.form.as_ref().is_some_and(|(s, t)| {
            constant_time_eq(s.as_bytes(), session.as_bytes())
                && constant_time_eq(t.as_bytes(), form_token.as_bytes())
        });
        if !from_the_form {
            return Err(ConfirmError::WrongForm);
        }
        if constant_time_eq(login.user_code.as_bytes(), normalize_code(code).as_bytes()) {
            return Ok(login.hooks);
        }
        login.attempts += 1;
        if login.attempts >= MAX_CODE_ATTEMPTS {
            login.outcome.send_replace(LoginOutcome::Failed(
                "too many wrong codes were entered in the browser".into(),
            ));
            return Err(ConfirmError::TooManyAttempts);
        }
        Err(ConfirmError::WrongCode {
            left: MAX_CODE_ATTEMPTS - login.attempts,
        })
    }

    /// The CSR of login `id`.
    pub fn csr(&self, id: &str) -> Option<String> {
        self.pending.get(id).map(|l| l.csr_pem.clone())
    }

    /// Ends login `id`.
    pub fn finish(&mut self, id: &str, outcome: LoginOutcome) {
        if let Some(login) = self.pending.get(id) {
            login.outcome.send_replace(outcome);
        }
    }

    /// The outcome feed of the login whose poll secret is `secret`. A finished login is
    /// removed once collected.
    pub fn watch(&self, secret: &str) -> Option<(String, watch::Receiver<LoginOutcome>)> {
        self.pending.iter().find_map(|(id, l)| {
            constant_time_eq(l.poll_secret.as_bytes(), secret.as_bytes())
                .then(|| (id.clone(), l.outcome.subscribe()))
        })
    }

    /// Forgets login `id` (collected).
    pub fn remove(&mut self, id: &str) {
        self.pending.remove(id);
    }
}

/// PKCE (RFC 7636, S256): the challenge sent to GitHub for `verifier`.
pub fn code_challenge(verifier: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

/// The site CA and its certificate, for signing login CSRs.
pub struct LoginCa {
    pub ca: SiteCa,
    pub ca_pem: String,
}

impl std::fmt::Debug for LoginCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginCa")
    }
}

impl LoginCa {
    /// Signs a login's CSR for `user:<name>`.
    pub fn sign(&self, csr_pem: &str, user: &str) -> Result<String, tinyci_pki::PkiError> {
        let identity = PeerIdentity::member(self.ca.site().clone(), Role::User, user)?;
        self.ca.sign_csr(csr_pem, &identity)
    }
}

/// Unix seconds of `t`.
/// How long ago `since` was at `now` (zero if the clock went back).
fn age(now: SystemTime, since: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or_default()
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROWSER: Purpose = Purpose::Browser { next: None };

    #[test]
    fn a_state_works_once_in_its_own_session_within_ten_minutes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut states = States::default();
        states.issue(
            "s1".into(),
            "alice",
            Purpose::Cli("login-1".into()),
            "v1".into(),
            t0,
        );
        assert_eq!(
            states.take("s1", Some("alice"), t0 + Duration::from_secs(599)),
            Ok(Taken {
                purpose: Purpose::Cli("login-1".into()),
                verifier: "v1".into()
            })
        );
        // Reused.
        assert_eq!(
            states.take("s1", Some("alice"), t0 + Duration::from_secs(1)),
            Err(StateError::Unknown)
        );
        // Expired.
        states.issue("s2".into(), "alice", BROWSER, String::new(), t0);
        assert_eq!(
            states.take("s2", Some("alice"), t0 + STATE_TTL),
            Err(StateError::Expired)
        );
        // Another session (or none), and then it is used up.
        states.issue("s3".into(), "alice", BROWSER, String::new(), t0);
        assert_eq!(
            states.take("s3", Some("mallory"), t0),
            Err(StateError::WrongSession)
        );
        assert_eq!(
            states.take("s3", Some("alice"), t0),
            Err(StateError::Unknown)
        );
        states.issue("s4".into(), "alice", BROWSER, String::new(), t0);
        assert_eq!(states.take("s4", None, t0), Err(StateError::WrongSession));
        // Never issued.
        assert_eq!(
            states.take("nope", Some("alice"), t0),
            Err(StateError::Unknown)
        );
    }

    #[test]
    fn expired_states_are_pruned_and_the_count_is_bounded() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut states = States::default();
        for i in 0..MAX_PENDING + 10 {
            states.issue(format!("s{i}"), "x", BROWSER, String::new(), t0);
        }
        assert_eq!(states.pending.len(), MAX_PENDING);
        states.issue("late".into(), "x", BROWSER, String::new(), t0 + STATE_TTL);
        assert_eq!(states.pending.len(), 1);
    }

    #[test]
    fn a_login_goes_on_only_with_the_terminals_code_from_the_form_this_browser_was_shown() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut logins = Logins::default();
        let code = new_user_code(&[0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(code, "BCDF-GHJK");
        logins.start("l1".into(), "poll".into(), "csr".into(), code, true, t0);
        // No form shown yet, or shown to another browser: refused whatever the code.
        assert_eq!(
            logins.confirm("l1", "victim", "f", "BCDFGHJK", t0),
            Err(ConfirmError::WrongForm)
        );
        logins.offer_form("l1", "victim", "f1".into(), t0).unwrap();
        assert_eq!(
            logins.confirm("l1", "attacker", "f1", "BCDFGHJK", t0),
            Err(ConfirmError::WrongForm)
        );
        assert_eq!(
            logins.confirm("l1", "victim", "forged", "BCDFGHJK", t0),
            Err(ConfirmError::WrongForm)
        );
        // Typed loosely, the right code passes (and carries the login's hooks wish).
        assert_eq!(
            logins.confirm("l1", "victim", "f1", "bcdf ghjk", t0),
            Ok(true)
        );
        // Wrong codes end the login after a few tries.
        logins.start(
            "l2".into(),
            "p2".into(),
            "csr".into(),
            "BCDF-GHJK".into(),
            false,
            t0,
        );
        logins.offer_form("l2", "me", "f2".into(), t0).unwrap();
        for left in (1..MAX_CODE_ATTEMPTS).rev() {
            assert_eq!(
                logins.confirm("l2", "me", "f2", "ZZZZ-ZZZZ", t0),
                Err(ConfirmError::WrongCode { left })
            );
        }
        assert_eq!(
            logins.confirm("l2", "me", "f2", "ZZZZ-ZZZZ", t0),
            Err(ConfirmError::TooManyAttempts)
        );
        // Expired logins are unknown.
        assert_eq!(
            logins.offer_form("l1", "victim", "f3".into(), t0 + STATE_TTL),
            Err(ConfirmError::Unknown)
        );
    }

    #[test]
    fn pkce_challenges_follow_rfc_7636() {
        // RFC 7636, appendix B.
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn debug_output_leaves_login_secrets_out() {
        let result = LoginResult {
            site: "alpha".into(),
            user: "ana".into(),
            github_login: "ana".into(),
            addr: "127.0.0.1:7433".into(),
            cert_pem: String::new(),
            ca_pem: String::new(),
            token: "SECRET-TOKEN".into(),
            capabilities: vec!["logs".into()],
            expires_at: 0,
        };
        let taken = Taken {
            purpose: BROWSER,
            verifier: "SECRET-VERIFIER".into(),
        };
        let shown = format!(
            "{result:?} {taken:?} {:?}",
            LoginOutcome::Done(Box::new(result.clone()))
        );
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("ana"), "{shown}");
    }

    #[test]
    fn web_sessions_expire_and_are_bounded() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut sessions = WebSessions::default();
        let ana: tinyci_users::UserName = "ana".parse().unwrap();
        sessions.sign_in("c1".into(), ana.clone(), "t1".into(), None, t0);
        let found = sessions.get("c1", t0 + Duration::from_secs(60)).unwrap();
        assert_eq!((found.user.as_str(), found.csrf.as_str()), ("ana", "t1"));
        assert!(sessions.get("c2", t0).is_none());
        assert!(sessions.get("c1", t0 + WEB_SESSION_TTL).is_none());
        sessions.sign_out("c1");
        assert!(sessions.get("c1", t0).is_none());
        for i in 0..MAX_WEB_SESSIONS + 5 {
            sessions.sign_in(format!("x{i}"), ana.clone(), "t".into(), None, t0);
        }
        assert_eq!(sessions.by_cookie.len(), MAX_WEB_SESSIONS);
    }

    #[test]
    fn a_login_is_found_only_by_its_poll_secret() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut logins = Logins::default();
        logins.start(
            "id1".into(),
            "secret1".into(),
            "csr".into(),
            "BCDF-GHJK".into(),
            false,
            t0,
        );
        assert!(logins.watch("id1").is_none());
        assert!(logins.watch("BCDF-GHJK").is_none());
        let (id, rx) = logins.watch("secret1").unwrap();
        assert_eq!(id, "id1");
        logins.finish("id1", LoginOutcome::Failed("no".into()));
        assert!(matches!(&*rx.borrow(), LoginOutcome::Failed(m) if m == "no"));
    }
}
