//! Value types of the GitHub operations, checked on construction where they end up in a URL.

use std::fmt;
use std::str::FromStr;

/// GitHub's limit on a commit status description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 140;

/// A repository `owner/name`, checked so that it is safe to put in a URL path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName {
    /// The user or organisation: ASCII letters, digits and `-` (GitHub's rule for logins).
    owner: String,
    /// The repository: ASCII letters, digits, `-`, `_` and `.`, but never `.` or `..`.
    name: String,
}

/// Why a repository name, sha or ref was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct InvalidName {
    /// What was being parsed ("repository name", "commit sha").
    pub what: &'static str,
    /// The refused text (never a secret).
    pub value: String,
    /// The rule it broke.
    pub reason: &'static str,
}

impl RepoName {
    /// Checks and builds `owner/name`.
    pub fn new(owner: &str, name: &str) -> Result<Self, InvalidName> {
        let full = format!("{owner}/{name}");
        let bad = |reason| InvalidName {
            what: "repository name",
            value: full.clone(),
            reason,
        };
        if owner.is_empty() || owner.len() > 39 {
            return Err(bad("the owner must be 1 to 39 characters"));
        }
        if !owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("the owner may hold only ASCII letters, digits and '-'"));
        }
        if name.is_empty() || name.len() > 100 {
            return Err(bad("the name must be 1 to 100 characters"));
        }
        if name == "." || name == ".." {
            return Err(bad("the name may not be '.' or '..'"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(bad(
                "the name may hold only ASCII letters, digits, '-', '_' and '.'",
            ));
        }
        Ok(Self {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The owner (user or organisation).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The repository's own name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl FromStr for RepoName {
    type Err = InvalidName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((owner, name)) => Self::new(owner, name),
            None => Err(InvalidName {
                what: "repository name",
                value: s.to_owned(),
                reason: "expected owner/name",
            }),
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// Checks a full commit sha (40 hex digits for SHA-1 repositories, 64 for SHA-256 ones).
pub(crate) fn check_sha(sha: &str) -> Result<(), InvalidName> {
    if (sha.len() == 40 || sha.len() == 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(InvalidName {
            what: "commit sha",
            value: sha.to_owned(),
            reason: "expected 40 or 64 hex digits",
        })
    }
}

/// A repository webhook's id, as GitHub numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookId(pub u64);

impl fmt::Display for HookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The webhook the site asks for when a repository is enabled.
#[derive(Clone, PartialEq, Eq)]
pub struct NewHook {
    /// Where GitHub delivers (the site's public `/hooks/github`).
    pub url: String,
    /// The per-repository HMAC secret; GitHub signs every delivery with it.
    pub secret: String,
}

impl fmt::Debug for NewHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewHook")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A commit status state, as GitHub names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusState {
    /// Queued or running.
    Pending,
    /// Passed.
    Success,
    /// The job failed.
    Failure,
    /// The job could not run (or was superseded).
    Error,
}

impl StatusState {
    /// GitHub's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error => "error",
        }
    }
}

/// One commit status to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    /// The state.
    pub state: StatusState,
    /// Which check this is (the run name); statuses with the same context replace each other.
    pub context: String,
    /// Human text; cut to [`MAX_DESCRIPTION_CHARS`] before sending.
    pub description: String,
    /// Where the details live (the site's page for the run), if any.
    pub target_url: Option<String>,
}

/// Cuts `text` to at most [`MAX_DESCRIPTION_CHARS`] characters, on a character boundary,
/// ending in `…` when something was cut.
pub fn truncate_description(text: &str) -> String {
    if text.chars().count() <= MAX_DESCRIPTION_CHARS {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(MAX_DESCRIPTION_CHARS - 1).collect();
    out.push('…');
    out
}

/// A GitHub account, as `GET /user` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The login (user name); can change, so link accounts by `id`.
    pub login: String,
    /// The stable numeric id.
    pub id: u64,
}

/// The site's registered OAuth app.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthApp {
    /// Public client id.
    pub client_id: String,
    /// Client secret (never logged).
    pub client_secret: String,
}

impl fmt::Debug for OAuthApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthApp")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// A user access token obtained from an OAuth code.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthToken {
    /// The token itself (never logged).
    pub access_token: String,
    /// Normally `bearer`.
    pub token_type: String,
    /// The granted scopes, comma separated as GitHub sends them.
    pub scope: String,
}

impl fmt::Debug for OAuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthToken")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        let r: RepoName = "octo-org/hello.world_2".parse().unwrap();
        assert_eq!(r.owner(), "octo-org");
        assert_eq!(r.to_string(), "octo-org/hello.world_2");
        for bad in [
            "noslash", "a/b/c", "/x", "x/", "a/..", "a b/c", "a/c?x=1", "a/%2e",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn description_is_cut_on_a_char_boundary() {
        assert_eq!(truncate_description("short"), "short");
        let exact = "é".repeat(140);
        assert_eq!(truncate_description(&exact), exact);
        let long = "é".repeat(141);
        let cut = truncate_description(&long);
        assert_eq!(cut.chars().count(), 140);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn shas() {
        assert!(check_sha(&"a".repeat(40)).is_ok());
        assert!(check_sha(&"0".repeat(64)).is_ok());
        assert!(check_sha("main").is_err());
        assert!(check_sha(&"g".repeat(40)).is_err());
    }
}
