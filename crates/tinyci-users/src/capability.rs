//! tinyCI's user capabilities and the grant rights they stand for.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use tinyci_grant::{GrantSpec, Holder, HolderKind, Right, ScopeKind};

use crate::{UserName, UsersError};

/// What a site user may do, as tinyCI names it. The spellings ([`Capability::as_str`]) are
/// stored in the `users` table and written in `site.toml`: never change one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// `submit`: submit work for any repository.
    Submit,
    /// `cancel`: cancel and retry runs of any repository.
    Cancel,
    /// `modify:ci`: enable and disable repositories.
    ModifyCi,
    /// `modify:user`: add users and change their capabilities.
    ModifyUser,
    /// `logs`: read logs and artifacts of any repository.
    Logs,
    /// `secrets`: set, list and remove job secrets of repositories GitHub lets them
    /// administer.
    Secrets,
}

impl Capability {
    /// Every capability, in `Ord` order.
    pub const ALL: [Capability; 6] = [
        Capability::Submit,
        Capability::Cancel,
        Capability::ModifyCi,
        Capability::ModifyUser,
        Capability::Logs,
        Capability::Secrets,
    ];

    /// tinyCI's spelling: `submit`, `cancel`, `modify:ci`, `modify:user`, `logs`, and
    /// tinyci's own `secrets`.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Submit => "submit",
            Capability::Cancel => "cancel",
            Capability::ModifyCi => "modify:ci",
            Capability::ModifyUser => "modify:user",
            Capability::Logs => "logs",
            Capability::Secrets => "secrets",
        }
    }

    /// The grant rights this capability stands for (see the table in the crate docs).
    pub fn rights(self) -> &'static [Right] {
        match self {
            Capability::Submit => &[Right::QueueSubmit],
            Capability::Cancel => &[Right::RunsCancel],
            Capability::ModifyCi => &[Right::ReposModify],
            Capability::ModifyUser => &[Right::UsersModify],
            Capability::Logs => &[Right::LogsRead, Right::AssetsRead],
            Capability::Secrets => &[Right::SecretsManage],
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = UsersError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UsersError::UnknownCapability { name: s.to_owned() })
    }
}

/// The rights `caps` map onto, and the repository scopes those rights need: `{"*"}` when any
/// right is repo-scoped (users' rights cover every repository), else empty (a site-scoped right
/// takes no repository, and a grant naming repositories without a repo-scoped right is
/// refused).
pub fn grant_rights(caps: &BTreeSet<Capability>) -> (BTreeSet<Right>, BTreeSet<String>) {
    let rights: BTreeSet<Right> = caps
        .iter()
        .flat_map(|c| c.rights().iter().copied())
        .collect();
    let repos = if rights.iter().any(|r| r.scope_kind() == ScopeKind::Repo) {
        BTreeSet::from(["*".to_owned()])
    } else {
        BTreeSet::new()
    };
    (rights, repos)
}

/// What the site `site` grants `user` holding `caps`: a grant bound to `user:<name>`, with the
/// rights of [`grant_rights`], no queues, expiring at `expires_at`. Refuses a user with no
/// capability ([`UsersError::NoCapabilities`]), since a grant needs at least one right.
pub fn grant_spec(
    site: &str,
    user: &UserName,
    caps: &BTreeSet<Capability>,
    expires_at: Option<SystemTime>,
) -> Result<GrantSpec, UsersError> {
    let (rights, repos) = grant_rights(caps);
    if rights.is_empty() {
        return Err(UsersError::NoCapabilities {
            name: user.to_string(),
        });
    }
    // Every user name is a valid holder name (same rule, no longer); kept fallible rather than
    // trusted, should the rules ever drift apart.
    let holder =
        Holder::new(HolderKind::User, user.as_str()).map_err(|_| UsersError::InvalidName {
            name: user.to_string(),
            reason: "not a valid grant holder name",
        })?;
    Ok(GrantSpec {
        site: site.to_owned(),
        holder,
        rights,
        repos,
        queues: BTreeSet::new(),
        expires_at,
        single_use: false,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn capabilities_round_trip_through_their_spelling() {
        for cap in Capability::ALL {
            assert_eq!(cap.as_str().parse::<Capability>().unwrap(), cap);
            assert_eq!(cap.to_string(), cap.as_str());
        }
        let mut sorted = Capability::ALL;
        sorted.sort();
        assert_eq!(sorted, Capability::ALL);
    }

    #[test]
    fn an_unknown_capability_lists_the_valid_ones() {
        let error = "modify-ci".parse::<Capability>().unwrap_err().to_string();
        assert_eq!(
            error,
            "unknown capability \"modify-ci\": expected one of submit, cancel, modify:ci, \
             modify:user, logs, secrets"
        );
        for cap in Capability::ALL {
            assert!(error.contains(cap.as_str()), "{error} misses {cap}");
        }
    }

    #[test]
    fn the_mapping_matches_the_table() {
        let rows: Vec<String> = Capability::ALL
            .into_iter()
            .map(|cap| {
                let (rights, repos) = grant_rights(&BTreeSet::from([cap]));
                let rights: Vec<&str> = rights.iter().map(|r| r.as_str()).collect();
                let repos: Vec<&str> = repos.iter().map(String::as_str).collect();
                format!("{cap}: {} on [{}]", rights.join(" "), repos.join(" "))
            })
            .collect();
        assert_eq!(
            rows,
            [
                "submit: queue:submit on [*]",
                "cancel: runs:cancel on [*]",
                "modify:ci: repos:modify on []",
                "modify:user: users:modify on []",
                "logs: logs:read assets:read on [*]",
                "secrets: secrets:manage on [*]",
            ]
        );
    }

    #[test]
    fn no_capabilities_means_no_grant() {
        let ana: UserName = "ana".parse().unwrap();
        let error = grant_spec("alpha", &ana, &BTreeSet::new(), None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "user ana has no capabilities, so there is nothing to grant"
        );
    }
}
