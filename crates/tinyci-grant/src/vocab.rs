//! The Datalog vocabulary of tinyci grants: the only place that knows how rights, holders and
//! scopes are spelled inside a token.
//!
//! # Authority block (written by the issuing site when it mints)
//!
//! ```text
//! site("alpha");                       // the issuing site; tokens only work there
//! holder("site:beta");                 // who may use it: site:<s>, runner:<r>, admin:<a>, user:<u>
//! right("queue:submit");               // one fact per right (see `Right`)
//! repo("org/x");                       // repositories the repo-scoped rights cover ("*": all)
//! queue("gpu");                        // queues queue:take covers ("*": all)
//! check if time($time), $time <= 2026-12-04T10:00:00Z;   // expiry, unless minted without
//! ```
//!
//! # Attenuation blocks (appended offline by any holder; checks only)
//!
//! ```text
//! check if resource("queue", "gpu") or resource($kind, $name), $kind != "queue";
//! check if resource("repo", "org/x") or resource($kind, $name), $kind != "repo";
//! check if operation("queue:take") or operation("logs:read");
//! check if time($time), $time <= 2026-11-27T21:00:00Z;
//! ```
//!
//! # Ambient facts (added by the site's authorizer for each request)
//!
//! ```text
//! this_site("alpha");                  // the site authorizing
//! time(2026-11-27T20:00:00Z);          // now
//! operation("queue:take");             // the right being exercised
//! resource("queue", "gpu");            // what it is exercised on: repo, queue, or site
//! peer("site:beta");                   // holder names of the mTLS peer (see the site crate)
//! ```
//!
//! # Rights and their scope kinds
//!
//! | right          | scope  | allows                                       |
//! |----------------|--------|----------------------------------------------|
//! | `queue:submit` | repo   | submit work (`Session.submitter`)            |
//! | `queue:take`   | queue  | take jobs (`Session.worker`)                 |
//! | `logs:read`    | repo   | read logs (`Session.logs`)                   |
//! | `logs:write`   | repo   | write the logs of leased runs (`Job.log`)    |
//! | `assets:read`  | repo   | list and download artifacts (`LogReader`)    |
//! | `admin`        | site   | operate the site (`Session.admin`)           |
//! | `runs:cancel`  | repo   | cancel runs (`Ticket.cancel`), supersede     |
//! | `repos:modify` | site   | enable and disable repositories              |
//! | `users:modify` | site   | add users and change their capabilities      |
//! | `secrets:manage` | repo | set, list and remove job secrets (`Session.secrets`) |
//!
//! A site-scoped right is exercised on `resource("site", <this site>)` and covered by the
//! authority block's `site(...)` fact; it takes no `repo` or `queue` scope. The spellings are
//! stored in tokens and in the store's record of issued grants: never change one.
//!
//! The authorizer's policies (see [`crate::token`]) allow a request only when the authority
//! block's holder is one of the peer's names, the operation is a right of the authority block,
//! and the resource is in the authority block's scope of the right's kind. Facts in attenuation
//! blocks are invisible to those policies (Biscuit's default scoping), so a block can only add
//! checks that must also pass: a token can only get narrower.

use std::fmt;
use std::str::FromStr;

use crate::GrantError;

/// A right a grant can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Right {
    /// Submit work for a repository (`Session.submitter`).
    QueueSubmit,
    /// Take jobs from a queue (`Session.worker`).
    QueueTake,
    /// Read logs and artifacts of a repository's runs (`Session.logs`).
    LogsRead,
    /// Write logs of a repository's runs.
    LogsWrite,
    /// Read a repository's artifacts.
    AssetsRead,
    /// Operate the site (`Session.admin`).
    Admin,
    /// Cancel and retry runs of a repository.
    RunsCancel,
    /// Enable and disable repositories on the site.
    ReposModify,
    /// Add site users and change their capabilities.
    UsersModify,
    /// Set, list and remove a repository's job secrets (`Session.secrets`).
    SecretsManage,
}

/// What kind of resource a right's scope names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScopeKind {
    /// Repositories (`org/x`).
    Repo,
    /// Queues (`gpu`).
    Queue,
    /// The site itself (`admin`, `repos:modify`, `users:modify`).
    Site,
}

impl ScopeKind {
    /// The kind as spelled in `resource(kind, name)`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Repo => "repo",
            ScopeKind::Queue => "queue",
            ScopeKind::Site => "site",
        }
    }
}

impl Right {
    /// Every right, in display order. New rights are appended, so the order (which is also
    /// `Ord`, and so the order of rights in summaries and denials) of the old ones never moves.
    pub const ALL: [Right; 10] = [
        Right::QueueSubmit,
        Right::QueueTake,
        Right::LogsRead,
        Right::LogsWrite,
        Right::AssetsRead,
        Right::Admin,
        Right::RunsCancel,
        Right::ReposModify,
        Right::UsersModify,
        Right::SecretsManage,
    ];

    /// The right as spelled on the command line and in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Right::QueueSubmit => "queue:submit",
            Right::QueueTake => "queue:take",
            Right::LogsRead => "logs:read",
            Right::LogsWrite => "logs:write",
            Right::AssetsRead => "assets:read",
            Right::Admin => "admin",
            Right::RunsCancel => "runs:cancel",
            Right::ReposModify => "repos:modify",
            Right::UsersModify => "users:modify",
            Right::SecretsManage => "secrets:manage",
        }
    }

    /// Which kind of scope limits this right.
    pub fn scope_kind(self) -> ScopeKind {
        match self {
            Right::QueueSubmit
            | Right::LogsRead
            | Right::LogsWrite
            | Right::AssetsRead
            | Right::RunsCancel
            | Right::SecretsManage => ScopeKind::Repo,
            Right::QueueTake => ScopeKind::Queue,
            Right::Admin | Right::ReposModify | Right::UsersModify => ScopeKind::Site,
        }
    }

    /// A short phrase for summaries ("take jobs").
    pub fn describe(self) -> &'static str {
        match self {
            Right::QueueSubmit => "submit work",
            Right::QueueTake => "take jobs",
            Right::LogsRead => "read logs",
            Right::LogsWrite => "write logs",
            Right::AssetsRead => "read artifacts",
            Right::Admin => "administer the site",
            Right::RunsCancel => "cancel and retry runs",
            Right::ReposModify => "enable and disable repositories",
            Right::UsersModify => "add users and change their capabilities",
            Right::SecretsManage => "manage job secrets",
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Right {
    type Err = GrantError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Right::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| GrantError::Invalid {
                what: "right",
                value: s.to_owned(),
                expected: "one of queue:submit, queue:take, logs:read, logs:write, assets:read, \
                           admin, runs:cancel, repos:modify, users:modify, secrets:manage",
            })
    }
}

/// Kinds of holder a grant can be bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HolderKind {
    /// A partner site (any member of it, as vouched for by its pinned CA).
    Site,
    /// A runner of the issuing site.
    Runner,
    /// An admin of the issuing site.
    Admin,
    /// A user of the issuing site.
    User,
}

/// Who may use a grant: `site:beta`, `runner:r1`, `admin:ana`, `user:ana`. The site maps a
/// connection's certificate identity to holder names and refuses a token whose holder is not
/// among them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Holder {
    kind: HolderKind,
    name: String,
}

impl Holder {
    /// A holder of `kind` named `name` (validated like certificate member names).
    pub fn new(kind: HolderKind, name: &str) -> Result<Self, GrantError> {
        if !valid_name(name, false) {
            return Err(GrantError::Invalid {
                what: "holder name",
                value: name.to_owned(),
                expected: "1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
            });
        }
        Ok(Self {
            kind,
            name: name.to_owned(),
        })
    }

    /// The holder's kind.
    pub fn kind(&self) -> HolderKind {
        self.kind
    }

    /// The holder's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            HolderKind::Site => "site",
            HolderKind::Runner => "runner",
            HolderKind::Admin => "admin",
            HolderKind::User => "user",
        };
        write!(f, "{kind}:{}", self.name)
    }
}

impl FromStr for Holder {
    type Err = GrantError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || GrantError::Invalid {
            what: "holder",
            value: s.to_owned(),
            expected: "site:NAME, runner:NAME, admin:NAME or user:NAME",
        };
        let (kind, name) = s.split_once(':').ok_or_else(invalid)?;
        let kind = match kind {
            "site" => HolderKind::Site,
            "runner" => HolderKind::Runner,
            "admin" => HolderKind::Admin,
            "user" => HolderKind::User,
            _ => return Err(invalid()),
        };
        Holder::new(kind, name)
    }
}

/// Validates a repository name (`owner/name`, GitHub's character set) or `*` for all.
pub fn validate_repo(repo: &str) -> Result<(), GrantError> {
    let ok = repo == "*"
        || repo.split_once('/').is_some_and(|(owner, name)| {
            valid_repo_part(owner) && valid_repo_part(name) && !name.contains('/')
        });
    if ok {
        Ok(())
    } else {
        Err(GrantError::Invalid {
            what: "repository",
            value: repo.to_owned(),
            expected: "owner/name (letters, digits, '.', '_', '-'), or * for every repository",
        })
    }
}

/// Validates a queue name (lowercase, like member names) or `*` for all.
pub fn validate_queue(queue: &str) -> Result<(), GrantError> {
    if queue == "*" || valid_name(queue, false) {
        Ok(())
    } else {
        Err(GrantError::Invalid {
            what: "queue",
            value: queue.to_owned(),
            expected: "1-63 lowercase letters, digits, '.', '_' or '-', or * for every queue",
        })
    }
}

fn valid_repo_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 100
        && part != "."
        && part != ".."
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_name(name: &str, allow_upper: bool) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| {
            b.is_ascii_lowercase()
                || (allow_upper && b.is_ascii_uppercase())
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'_' | b'-')
        })
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// One request to exercise a right on a resource: what the site asks the authorizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The right exercised.
    pub right: Right,
    /// The resource's name within the right's scope kind (repo, queue, or the site's name for
    /// site-scoped rights).
    pub resource: String,
}

impl Operation {
    /// `right` on `resource`.
    pub fn new(right: Right, resource: impl Into<String>) -> Self {
        Self {
            right,
            resource: resource.into(),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on {} {}",
            self.right,
            self.right.scope_kind().as_str(),
            self.resource
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn every_right_round_trips_through_its_spelling() {
        for right in Right::ALL {
            assert_eq!(right.as_str().parse::<Right>().unwrap(), right);
            assert_eq!(right.to_string(), right.as_str());
        }
        let mut sorted = Right::ALL;
        sorted.sort();
        assert_eq!(sorted, Right::ALL, "ALL is in Ord order");
    }

    /// Tokens on disk carry these spellings; changing one orphans every token minted with it.
    #[test]
    fn spellings_and_scopes_are_stable() {
        let got: Vec<String> = Right::ALL
            .iter()
            .map(|r| format!("{} {}", r.as_str(), r.scope_kind().as_str()))
            .collect();
        assert_eq!(
            got,
            [
                "queue:submit repo",
                "queue:take queue",
                "logs:read repo",
                "logs:write repo",
                "assets:read repo",
                "admin site",
                "runs:cancel repo",
                "repos:modify site",
                "users:modify site",
                "secrets:manage repo",
            ]
        );
    }

    #[test]
    fn an_unknown_right_lists_every_right() {
        let error = "runs:delete".parse::<Right>().unwrap_err().to_string();
        for right in Right::ALL {
            assert!(error.contains(right.as_str()), "{error} misses {right}");
        }
        assert_eq!(
            error,
            "invalid right \"runs:delete\": expected one of queue:submit, queue:take, logs:read, \
             logs:write, assets:read, admin, runs:cancel, repos:modify, users:modify, \
             secrets:manage"
        );
    }
}
