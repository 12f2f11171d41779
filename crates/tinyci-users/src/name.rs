//! Site user names.

use std::fmt;
use std::str::FromStr;

use crate::UsersError;

/// Longest user name: the certificate member-name and grant holder-name limit.
const MAX_LEN: usize = 63;

/// A site user's name (`ana`): 1-63 ASCII lowercase letters, digits, `-`, `_` or `.`, starting
/// with a letter or digit. The same rule as certificate member names (`tinyci-pki`) and grant
/// holder names (`tinyci-grant`), so every user name can name a certificate
/// (`tinyci://<site>/user/<name>`) and a grant holder (`user:<name>`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserName(String);

impl UserName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, UsersError> {
        let invalid = |reason| {
            Err(UsersError::InvalidName {
                name: name.to_owned(),
                reason,
            })
        };
        if name.is_empty() {
            return invalid("it is empty");
        }
        if name.len() > MAX_LEN {
            return invalid("it is longer than 63 characters");
        }
        if !name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        }) {
            return invalid("use only lowercase letters, digits, '-', '_' and '.'");
        }
        if !name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return invalid("it must start with a lowercase letter or a digit");
        }
        Ok(Self(name.to_owned()))
    }

    /// The user name for a GitHub login: the login lowercased (GitHub logins are letters,
    /// digits and single hyphens, at most 39 characters, and unique regardless of case), then
    /// validated like any name.
    pub fn from_github_login(login: &str) -> Result<Self, UsersError> {
        Self::new(&login.to_ascii_lowercase()).map_err(|e| match e {
            UsersError::InvalidName { reason, .. } => UsersError::InvalidName {
                name: login.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for UserName {
    type Err = UsersError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for UserName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn names_follow_the_member_name_rule() {
        for ok in [
            "ana",
            "a",
            "0day",
            "ana.b",
            "ana_b",
            "ana-b",
            &"a".repeat(63),
        ] {
            assert_eq!(UserName::new(ok).unwrap().as_str(), ok);
        }
        let cases: [(&str, &str); 7] = [
            ("", "it is empty"),
            (&"a".repeat(64), "it is longer than 63 characters"),
            (
                "Ana",
                "use only lowercase letters, digits, '-', '_' and '.'",
            ),
            (
                "ana b",
                "use only lowercase letters, digits, '-', '_' and '.'",
            ),
            (
                "ana/b",
                "use only lowercase letters, digits, '-', '_' and '.'",
            ),
            ("-ana", "it must start with a lowercase letter or a digit"),
            (".ana", "it must start with a lowercase letter or a digit"),
        ];
        for (name, reason) in cases {
            let error = UserName::new(name).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("invalid user name {name:?}: {reason}")
            );
        }
        assert!(UserName::new("é").is_err());
    }

    #[test]
    fn every_user_name_is_a_grant_holder() {
        for name in ["ana", "0", "a-b_c.d", &"z".repeat(63)] {
            let name = UserName::new(name).unwrap();
            tinyci_grant::Holder::new(tinyci_grant::HolderKind::User, name.as_str()).unwrap();
        }
    }

    #[test]
    fn github_logins_are_lowercased() {
        assert_eq!(
            UserName::from_github_login("OctoCat-42").unwrap().as_str(),
            "octocat-42"
        );
        let error = UserName::from_github_login("-Bad").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid user name \"-Bad\": it must start with a lowercase letter or a digit"
        );
    }
}
