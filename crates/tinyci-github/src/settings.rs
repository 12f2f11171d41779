//! `[github]` as the site's configuration parsed it.

use std::path::PathBuf;

/// `[github]`.
#[derive(Clone, Debug)]
pub struct GitHubSettings {
    /// REST API base (`https://api.github.com`).
    pub api_url: String,
    /// Web base for OAuth (`https://github.com`).
    pub web_url: String,
    /// A file holding the token the site uses for repositories enabled without a user
    /// (mode 0600).
    pub token_file: Option<PathBuf>,
    /// The OAuth app's client id; login is off without it.
    pub client_id: Option<String>,
    /// A file holding the OAuth app's client secret (mode 0600).
    pub client_secret_file: Option<PathBuf>,
    /// The key that seals GitHub tokens and webhook secrets at rest (created if missing).
    pub secrets_key: PathBuf,
    /// Lifetime of the tokens `tinyci login` hands out.
    pub login_token_ttl: std::time::Duration,
    /// Capabilities a user gets at their first GitHub login, when `allow` admits them.
    pub default_capabilities: Vec<String>,
    /// Who gets `default_capabilities` at their first login (`[github] allow`); anyone else
    /// signs in holding nothing until an admin grants something.
    pub allow: Vec<GitHubAllow>,
}

/// One `[github] allow` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GitHubAllow {
    /// A GitHub login (`octocat`).
    User(String),
    /// Active members of an organization (`@octo-org`).
    Org(String),
    /// Active members of a team (`@octo-org/core`).
    Team(String, String),
}

impl GitHubAllow {
    /// Parses `octocat`, `@octo-org` or `@octo-org/core`.
    pub fn parse(text: &str) -> Result<Self, NotAnAllowEntry> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        let bad = || NotAnAllowEntry(text.to_owned());
        match text.strip_prefix('@') {
            Some(rest) => match rest.split_once('/') {
                Some((org, team)) if name_ok(org) && name_ok(team) => {
                    Ok(GitHubAllow::Team(org.to_owned(), team.to_owned()))
                }
                None if name_ok(rest) => Ok(GitHubAllow::Org(rest.to_owned())),
                _ => Err(bad()),
            },
            None if name_ok(text) => Ok(GitHubAllow::User(text.to_owned())),
            None => Err(bad()),
        }
    }
}

/// An `[github] allow` entry that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a GitHub login, @organization or @organization/team")]
pub struct NotAnAllowEntry(pub String);
