//! Who a job secret is for: its name rules and its scope (repository, ref pattern, trust
//! tiers), decided from the run's verified facts only.
//!
//! A secret is delivered to a run of its repository whose ref matches its pattern and whose
//! submission's tier it names. `fork` and partner tiers are never implied: a secret reaches
//! them only when it names them (`fork`, `partner`, `partner:NAME`).

use std::fmt;

use crate::{TierPattern, TrustTier};

/// The longest secret name.
pub const MAX_SECRET_NAME: usize = 64;
/// The largest secret value, in bytes.
pub const MAX_SECRET_VALUE: usize = 64 * 1024;
/// The most secrets one repository may hold.
pub const MAX_SECRETS_PER_REPO: usize = 100;
/// The longest ref pattern.
pub const MAX_REF_PATTERN: usize = 255;
/// The most value bytes one repository's secrets may hold together: the site keeps each
/// live run's masking forms (several per byte) in memory.
pub const MAX_SECRET_BYTES_PER_REPO: usize = 256 * 1024;

/// Why a secret's name or scope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The name is not an environment variable name.
    #[error(
        "invalid secret name {0:?}: 1-{MAX_SECRET_NAME} characters of A-Z, 0-9 and _, not starting with a digit"
    )]
    Name(String),
    /// The name is one tinyci sets itself.
    #[error(
        "invalid secret name {0:?}: names starting with TINYCI, and CI, PATH and HOME, are tinyci's own"
    )]
    Reserved(String),
    /// The ref pattern is empty, too long, or holds a control character or `:` (which no git
    /// ref may).
    #[error("invalid ref pattern {0:?}: 1-{MAX_REF_PATTERN} printable characters, no ':'")]
    RefPattern(String),
    /// A tier could not be read.
    #[error("{0}")]
    Tier(#[from] crate::TierError),
    /// No tier named.
    #[error("a secret must name at least one trust tier")]
    NoTiers,
}

/// Checks a secret's name: it is also its environment variable and its file name, so
/// `[A-Z_][A-Z0-9_]*`, and none of the variables tinyci sets.
pub fn check_secret_name(name: &str) -> Result<(), ScopeError> {
    let well_formed = !name.is_empty()
        && name.len() <= MAX_SECRET_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !well_formed {
        return Err(ScopeError::Name(name.to_owned()));
    }
    if name.starts_with("TINYCI") || name == "CI" || name == "PATH" || name == "HOME" {
        return Err(ScopeError::Reserved(name.to_owned()));
    }
    Ok(())
}

/// Where a secret may go, beyond its repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretScope {
    /// Refs it is for: `*` (any), a branch or tag name (`main`, `release/*`), or a full ref
    /// (`refs/heads/main`); `*` matches any run of characters, `/` included.
    pub ref_pattern: String,
    /// Tiers it is for.
    pub tiers: Vec<TierPattern>,
}

impl SecretScope {
    /// The tiers a secret is for when none are named: the site's own and its repositories'
    /// writers, never forks or partners.
    pub fn default_tiers() -> Vec<TierPattern> {
        vec![
            TierPattern::Tier(TrustTier::Local),
            TierPattern::Tier(TrustTier::Repo),
        ]
    }

    /// A scope from its spellings, checked.
    pub fn parse(ref_pattern: &str, tiers: &[String]) -> Result<Self, ScopeError> {
        if ref_pattern.is_empty()
            || ref_pattern.len() > MAX_REF_PATTERN
            || ref_pattern.chars().any(|c| c.is_control() || c == ':')
        {
            return Err(ScopeError::RefPattern(ref_pattern.to_owned()));
        }
        let mut parsed: Vec<TierPattern> = Vec::new();
        for tier in tiers {
            let tier: TierPattern = tier.parse()?;
            if !parsed.contains(&tier) {
                parsed.push(tier);
            }
        }
        if parsed.is_empty() {
            return Err(ScopeError::NoTiers);
        }
        parsed.sort();
        Ok(Self {
            ref_pattern: ref_pattern.to_owned(),
            tiers: parsed,
        })
    }

    /// Whether a run on `git_ref` of a submission of `tier` may have the secret.
    /// `ref_verified` says whether the site established the ref itself (a signed GitHub
    /// delivery, or the site's own admins) rather than taking a submitter's word for it: a
    /// secret for some refs only (any pattern but `*`) never goes to a claimed ref, or anyone
    /// allowed to upload could name `main` and get `main`'s deploy key.
    pub fn admits(&self, git_ref: &str, ref_verified: bool, tier: &TrustTier) -> bool {
        self.tiers.iter().any(|t| t.matches(tier))
            && (self.ref_pattern == "*"
                || (ref_verified && ref_matches(&self.ref_pattern, git_ref)))
    }

    /// The tiers, spelled, comma-separated.
    pub fn tiers_text(&self) -> String {
        self.tiers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Display for SecretScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ref {} for {}", self.ref_pattern, self.tiers_text())
    }
}

/// Whether `pattern` matches `git_ref`. A pattern not starting with `refs/` is matched
/// against the branch or tag name too (`main` matches `refs/heads/main`).
pub fn ref_matches(pattern: &str, git_ref: &str) -> bool {
    if glob(pattern.as_bytes(), git_ref.as_bytes()) {
        return true;
    }
    if pattern.starts_with("refs/") {
        return false;
    }
    ["refs/heads/", "refs/tags/"]
        .iter()
        .filter_map(|prefix| git_ref.strip_prefix(prefix))
        .any(|short| glob(pattern.as_bytes(), short.as_bytes()))
}

/// `*` matches any run of bytes; everything else itself. Iterative, linear in practice.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn scope(pattern: &str, tiers: &[&str]) -> SecretScope {
        SecretScope::parse(
            pattern,
            &tiers.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn refs_match_by_full_name_short_name_and_glob() {
        assert!(ref_matches("*", "refs/heads/main"));
        assert!(ref_matches("main", "refs/heads/main"));
        assert!(ref_matches("refs/heads/main", "refs/heads/main"));
        assert!(!ref_matches("main", "refs/heads/mainline"));
        assert!(!ref_matches("refs/heads/main", "main2"));
        assert!(ref_matches("release/*", "refs/heads/release/1.2"));
        assert!(ref_matches("v*", "refs/tags/v1.0"));
        assert!(!ref_matches("release/*", "refs/heads/feature/release/x"));
        assert!(!ref_matches("main", "refs/pull/4/head"));
        assert!(ref_matches("a*b*c", "axxbyyc"));
        assert!(!ref_matches("a*b*c", "axxbyy"));
    }

    #[test]
    fn forks_and_partners_get_a_secret_only_when_it_names_them() {
        let default = SecretScope {
            ref_pattern: "*".into(),
            tiers: SecretScope::default_tiers(),
        };
        let beta = TrustTier::partner("beta").unwrap();
        assert!(default.admits("refs/heads/main", true, &TrustTier::Local));
        assert!(default.admits("refs/heads/main", true, &TrustTier::Repo));
        assert!(!default.admits("refs/heads/main", true, &TrustTier::Fork));
        assert!(!default.admits("refs/heads/main", true, &beta));
        assert!(scope("*", &["fork"]).admits("x", false, &TrustTier::Fork));
        assert!(scope("*", &["partner"]).admits("x", false, &beta));
        assert!(scope("*", &["partner:beta"]).admits("x", false, &beta));
        assert!(!scope("*", &["partner:gamma"]).admits("x", false, &beta));
        assert!(!scope("main", &["repo"]).admits("refs/heads/dev", true, &TrustTier::Repo));
    }

    #[test]
    fn a_claimed_ref_never_gets_a_secret_for_some_refs_only() {
        let main = scope("main", &["repo", "partner"]);
        assert!(main.admits("refs/heads/main", true, &TrustTier::Repo));
        // An upload that says it is main: only secrets for every ref.
        assert!(!main.admits("refs/heads/main", false, &TrustTier::Repo));
        assert!(!main.admits(
            "refs/heads/main",
            false,
            &TrustTier::partner("beta").unwrap()
        ));
        assert!(scope("*", &["repo"]).admits("refs/heads/main", false, &TrustTier::Repo));
        assert!(SecretScope::parse("a:b", &["repo".into()]).is_err());
    }

    #[test]
    fn names_are_variable_names_and_not_tinycis() {
        check_secret_name("DEPLOY_KEY").unwrap();
        check_secret_name("_X1").unwrap();
        for bad in ["", "1X", "deploy", "A-B", "A B", &"X".repeat(65)] {
            assert!(
                matches!(check_secret_name(bad), Err(ScopeError::Name(_))),
                "{bad}"
            );
        }
        for reserved in ["TINYCI_RUN", "CI", "PATH", "HOME", "TINYCI"] {
            assert!(matches!(
                check_secret_name(reserved),
                Err(ScopeError::Reserved(_))
            ));
        }
        assert!(SecretScope::parse("", &["repo".into()]).is_err());
        assert!(SecretScope::parse("*", &[]).is_err());
        assert!(SecretScope::parse("*", &["nobody".into()]).is_err());
    }
}
