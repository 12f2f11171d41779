//! Typed identifiers and validated names.
//!
//! Numeric IDs are newtypes over `u64` that print with a kind prefix (`s-42`, `r-42`) so a
//! submission and a run are never confused in logs or on the command line; they persist as
//! plain numbers. Names are validated once, at the edge, and carried as their own types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name or ID that does not follow its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not `s-<number>`.
    #[error("invalid submission id {0:?}: expected s-<number>")]
    SubmissionId(String),
    /// Not `r-<number>`.
    #[error("invalid run id {0:?}: expected r-<number>")]
    RunId(String),
    /// Breaks the queue-name rule.
    #[error(
        "invalid queue name {0:?}: expected 1-63 lowercase letters, digits, '.', '_' or '-', \
         starting with a letter or digit"
    )]
    QueueName(String),
    /// Breaks GitHub's `owner/name` rule.
    #[error("invalid repository name {name:?}: {reason}")]
    RepoName {
        /// What was given.
        name: String,
        /// Which part of the rule it breaks.
        reason: &'static str,
    },
}

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $err:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The number inside.
            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "-{}"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, IdError> {
                s.strip_prefix(concat!($prefix, "-"))
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|n| n.parse().ok())
                    .map($name)
                    .ok_or_else(|| IdError::$err(s.to_owned()))
            }
        }
    };
}

numeric_id!(
    /// One submission: a repository at a ref, expanded into tasks and runs. Prints as `s-42`.
    SubmissionId,
    "s",
    SubmissionId
);
numeric_id!(
    /// One run: a single queue item, leased to one runner at a time. Prints as `r-42`.
    RunId,
    "r",
    RunId
);

/// The name of a queue runners take jobs from: 1-63 characters of `[a-z0-9._-]`, starting
/// with a letter or digit (so it fits a DNS label, a Biscuit fact and a metrics label alike).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueName(String);

impl QueueName {
    /// The queue every run lands on when nothing names another: `default`, as in tinyCI.
    pub const DEFAULT: &'static str = "default";

    /// The `default` queue.
    pub fn default_queue() -> Self {
        QueueName(Self::DEFAULT.to_owned())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_valid(s: &str) -> bool {
        let b = s.as_bytes();
        (1..=63).contains(&b.len())
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
    }
}

impl FromStr for QueueName {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        if Self::is_valid(s) {
            Ok(QueueName(s.to_owned()))
        } else {
            Err(IdError::QueueName(s.to_owned()))
        }
    }
}

impl TryFrom<String> for QueueName {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, IdError> {
        if Self::is_valid(&s) {
            Ok(QueueName(s))
        } else {
            Err(IdError::QueueName(s))
        }
    }
}

impl From<QueueName> for String {
    fn from(q: QueueName) -> String {
        q.0
    }
}

impl AsRef<str> for QueueName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A GitHub repository, `owner/name`. The owner is 1-39 ASCII letters, digits or `-`, not
/// starting with `-` (GitHub's account charset; its newer "no `--`, no trailing `-`" rule is
/// not enforced, as older accounts break it); the name is 1-100 ASCII letters, digits, `.`,
/// `_` or `-`, and not `.` or `..`. Case is kept as given.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName {
    full: String,
    /// Byte index of the `/`.
    slash: usize,
}

impl RepoName {
    /// The account that owns the repository.
    pub fn owner(&self) -> &str {
        &self.full[..self.slash]
    }

    /// The repository's own name.
    pub fn name(&self) -> &str {
        &self.full[self.slash + 1..]
    }

    /// `owner/name`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    fn check(s: &str) -> Result<usize, &'static str> {
        let Some((owner, name)) = s.split_once('/') else {
            return Err("expected owner/name");
        };
        if owner.is_empty() || owner.len() > 39 {
            return Err("the owner must be 1-39 characters");
        }
        if !owner
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            return Err("the owner may hold only ASCII letters, digits and '-'");
        }
        if owner.starts_with('-') {
            return Err("the owner may not start with '-'");
        }
        if name.is_empty() || name.len() > 100 {
            return Err("the name must be 1-100 characters");
        }
        if !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        {
            return Err("the name may hold only ASCII letters, digits, '.', '_' and '-'");
        }
        if name == "." || name == ".." {
            return Err("the name may not be '.' or '..'");
        }
        Ok(owner.len())
    }
}

impl FromStr for RepoName {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::try_from(s.to_owned())
    }
}

impl TryFrom<String> for RepoName {
    type Error = IdError;

    fn try_from(full: String) -> Result<Self, IdError> {
        match Self::check(&full) {
            Ok(slash) => Ok(RepoName { full, slash }),
            Err(reason) => Err(IdError::RepoName { name: full, reason }),
        }
    }
}

impl From<RepoName> for String {
    fn from(r: RepoName) -> String {
        r.full
    }
}

impl AsRef<str> for RepoName {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}
