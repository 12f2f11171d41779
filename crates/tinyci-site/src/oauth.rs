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
use std::time::{Duration, Instant, SystemTime};

use tinyci_pki::{PeerIdentity, Role, SiteCa};
use tokio::sync::watch;

/// How long a `state` (and a CLI login) stays usable.
pub(crate) const STATE_TTL: Duration = Duration::from_secs(600);
/// Most states or logins pending at once; the oldest are dropped past it.
const MAX_PENDING: usize = 10_000;
/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "tinyci_session";

/// Why a callback's state was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StateError {
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

struct IssuedState {
    session: String,
    login: Option<String>,
    issued: Instant,
}

/// Pending OAuth states. Sans-IO: every time is a parameter.
#[derive(Default)]
pub(crate) struct States {
    pending: HashMap<String, IssuedState>,
}

impl States {
    /// Issues `state` for `session`; `login` ties it to a pending CLI login.
    pub(crate) fn issue(
        &mut self,
        state: String,
        session: &str,
        login: Option<String>,
        now: Instant,
    ) {
        self.pending
            .retain(|_, s| now.saturating_duration_since(s.issued) < STATE_TTL);
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
                login,
                issued: now,
            },
        );
    }

    /// Uses up `state`: refused if unknown, used, expired, or from another session. Any
    /// presentation uses it up, so a refused state cannot be retried either.
    pub(crate) fn take(
        &mut self,
        state: &str,
        session: Option<&str>,
        now: Instant,
    ) -> Result<Option<String>, StateError> {
        let issued = self.pending.remove(state).ok_or(StateError::Unknown)?;
        if now.saturating_duration_since(issued.issued) >= STATE_TTL {
            return Err(StateError::Expired);
        }
        if session != Some(issued.session.as_str()) {
            return Err(StateError::WrongSession);
        }
        Ok(issued.login)
    }
}

/// What a finished CLI login hands back.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct LoginResult {
    pub(crate) site: String,
    pub(crate) user: String,
    pub(crate) github_login: String,
    /// The site's capnp address as the site sees it.
    pub(crate) addr: String,
    pub(crate) cert_pem: String,
    pub(crate) ca_pem: String,
    pub(crate) token: String,
    pub(crate) capabilities: Vec<String>,
    pub(crate) expires_at: u64,
}

/// How a pending CLI login ends.
#[derive(Clone, Debug)]
pub(crate) enum LoginOutcome {
    Pending,
    Done(Box<LoginResult>),
    Failed(String),
}

struct PendingLogin {
    csr_pem: String,
    poll_secret: String,
    started: Instant,
    outcome: watch::Sender<LoginOutcome>,
}

/// Pending `tinyci login`s.
#[derive(Default)]
pub(crate) struct Logins {
    pending: HashMap<String, PendingLogin>,
}

impl Logins {
    /// Records a CLI login; `id` goes into the login URL, `poll_secret` only to the CLI.
    pub(crate) fn start(&mut self, id: String, poll_secret: String, csr_pem: String, now: Instant) {
        self.pending
            .retain(|_, l| now.saturating_duration_since(l.started) < STATE_TTL);
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
                started: now,
                outcome: watch::channel(LoginOutcome::Pending).0,
            },
        );
    }

    /// Whether `id` is a live login.
    pub(crate) fn is_pending(&self, id: &str, now: Instant) -> bool {
        self.pending
            .get(id)
            .is_some_and(|l| now.saturating_duration_since(l.started) < STATE_TTL)
    }

    /// The CSR of login `id`.
    pub(crate) fn csr(&self, id: &str) -> Option<String> {
        self.pending.get(id).map(|l| l.csr_pem.clone())
    }

    /// Ends login `id`.
    pub(crate) fn finish(&mut self, id: &str, outcome: LoginOutcome) {
        if let Some(login) = self.pending.get(id) {
            login.outcome.send_replace(outcome);
        }
    }

    /// The outcome feed of the login whose poll secret is `secret`. A finished login is
    /// removed once collected.
    pub(crate) fn watch(&self, secret: &str) -> Option<(String, watch::Receiver<LoginOutcome>)> {
        self.pending.iter().find_map(|(id, l)| {
            constant_time_eq(l.poll_secret.as_bytes(), secret.as_bytes())
                .then(|| (id.clone(), l.outcome.subscribe()))
        })
    }

    /// Forgets login `id` (collected).
    pub(crate) fn remove(&mut self, id: &str) {
        self.pending.remove(id);
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The site CA and its certificate, for signing login CSRs.
pub(crate) struct LoginCa {
    pub(crate) ca: SiteCa,
    pub(crate) ca_pem: String,
}

impl std::fmt::Debug for LoginCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginCa")
    }
}

impl LoginCa {
    /// Signs a login's CSR for `user:<name>`.
    pub(crate) fn sign(&self, csr_pem: &str, user: &str) -> Result<String, String> {
        let identity = PeerIdentity::member(self.ca.site().clone(), Role::User, user)
            .map_err(|e| e.to_string())?;
        self.ca
            .sign_csr(csr_pem, &identity)
            .map_err(|e| format!("cannot sign the login's certificate request: {e}"))
    }
}

/// Unix seconds of `t`.
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_works_once_in_its_own_session_within_ten_minutes() {
        let t0 = Instant::now();
        let mut states = States::default();
        states.issue("s1".into(), "alice", Some("login-1".into()), t0);
        assert_eq!(
            states.take("s1", Some("alice"), t0 + Duration::from_secs(599)),
            Ok(Some("login-1".into()))
        );
        // Reused.
        assert_eq!(
            states.take("s1", Some("alice"), t0 + Duration::from_secs(1)),
            Err(StateError::Unknown)
        );
        // Expired.
        states.issue("s2".into(), "alice", None, t0);
        assert_eq!(
            states.take("s2", Some("alice"), t0 + STATE_TTL),
            Err(StateError::Expired)
        );
        // Another session (or none), and then it is used up.
        states.issue("s3".into(), "alice", None, t0);
        assert_eq!(
            states.take("s3", Some("mallory"), t0),
            Err(StateError::WrongSession)
        );
        assert_eq!(
            states.take("s3", Some("alice"), t0),
            Err(StateError::Unknown)
        );
        states.issue("s4".into(), "alice", None, t0);
        assert_eq!(states.take("s4", None, t0), Err(StateError::WrongSession));
        // Never issued.
        assert_eq!(
            states.take("nope", Some("alice"), t0),
            Err(StateError::Unknown)
        );
    }

    #[test]
    fn expired_states_are_pruned_and_the_count_is_bounded() {
        let t0 = Instant::now();
        let mut states = States::default();
        for i in 0..MAX_PENDING + 10 {
            states.issue(format!("s{i}"), "x", None, t0);
        }
        assert_eq!(states.pending.len(), MAX_PENDING);
        states.issue("late".into(), "x", None, t0 + STATE_TTL);
        assert_eq!(states.pending.len(), 1);
    }

    #[test]
    fn a_login_is_found_only_by_its_poll_secret() {
        let t0 = Instant::now();
        let mut logins = Logins::default();
        logins.start("id1".into(), "secret1".into(), "csr".into(), t0);
        assert!(logins.is_pending("id1", t0));
        assert!(!logins.is_pending("id1", t0 + STATE_TTL));
        assert!(logins.watch("id1").is_none());
        let (id, rx) = logins.watch("secret1").unwrap();
        assert_eq!(id, "id1");
        logins.finish("id1", LoginOutcome::Failed("no".into()));
        assert!(matches!(&*rx.borrow(), LoginOutcome::Failed(m) if m == "no"));
    }
}
