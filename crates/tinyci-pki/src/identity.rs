//! Peer identities: who is at the other end of a connection, as named by the URI SAN of its
//! certificate (`tinyci://<site>/<role>[/<name>]`).

use std::fmt;
use std::str::FromStr;

use crate::PkiError;

const URI_SCHEME: &str = "tinyci://";

/// A site's name: the `<site>` in `tinyci://<site>/…`. Lowercase DNS-label rules (letters,
/// digits, inner hyphens, at most 63 bytes) so it is safe in URIs, file names and mDNS TXT.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteName(String);

impl SiteName {
    /// Validates `name` as a site name.
    pub fn new(name: &str) -> Result<Self, PkiError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(PkiError::InvalidName {
                what: "site name",
                name: name.to_owned(),
                rule: "1-63 lowercase letters, digits or inner hyphens",
            })
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SiteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SiteName {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// What a certificate's holder is to the site that issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The site itself: its server certificate, and its client certificate when it dials a
    /// partner. Has no name part.
    Site,
    /// A runner host.
    Runner,
    /// An operator using the admin CLI.
    Admin,
    /// A partner site's client issued by this site (rather than by the partner's own CA).
    Partner,
    /// A person using the CLI with a personal certificate.
    User,
}

impl Role {
    /// The path segment used in identity URIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Site => "site",
            Role::Runner => "runner",
            Role::Admin => "admin",
            Role::Partner => "partner",
            Role::User => "user",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "site" => Ok(Role::Site),
            "runner" => Ok(Role::Runner),
            "admin" => Ok(Role::Admin),
            "partner" => Ok(Role::Partner),
            "user" => Ok(Role::User),
            other => Err(PkiError::InvalidIdentity {
                uri: other.to_owned(),
                reason: "role must be one of site, runner, admin, partner, user",
            }),
        }
    }
}

/// The authenticated identity of a peer: `tinyci://alpha/site`, `tinyci://alpha/runner/r1`,
/// `tinyci://alpha/admin/ana`. Only ever built from a certificate that chained to a CA pinned
/// for `site` (see [`crate::tls`]), or by the code that issues such certificates.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerIdentity {
    site: SiteName,
    role: Role,
    /// `None` exactly when `role` is [`Role::Site`].
    name: Option<String>,
}

impl PeerIdentity {
    /// The identity of site `site` itself.
    pub fn site(site: SiteName) -> Self {
        Self {
            site,
            role: Role::Site,
            name: None,
        }
    }

    /// A named member (`runner`, `admin`, `partner` or `user`) of `site`.
    pub fn member(site: SiteName, role: Role, name: &str) -> Result<Self, PkiError> {
        if role == Role::Site {
            return Err(PkiError::InvalidIdentity {
                uri: format!("{URI_SCHEME}{site}/site/{name}"),
                reason: "a site identity has no name part",
            });
        }
        validate_member_name(name)?;
        Ok(Self {
            site,
            role,
            name: Some(name.to_owned()),
        })
    }

    /// The site that vouches for this peer.
    pub fn site_name(&self) -> &SiteName {
        &self.site
    }

    /// The peer's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The member name (`r1` in `tinyci://alpha/runner/r1`); `None` for a site.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The identity as a URI, the form carried in certificates.
    pub fn to_uri(&self) -> String {
        self.to_string()
    }
}

/// Member names: 1-63 bytes of lowercase letters, digits, `.`, `_` or `-`, starting with a
/// letter or digit, so they are safe as path segments and file names.
fn validate_member_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidName {
            what: "member name",
            name: name.to_owned(),
            rule: "1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
        })
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            None => write!(f, "{URI_SCHEME}{}/{}", self.site, self.role),
            Some(name) => write!(f, "{URI_SCHEME}{}/{}/{name}", self.site, self.role),
        }
    }
}

impl FromStr for PeerIdentity {
    type Err = PkiError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| PkiError::InvalidIdentity {
            uri: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix(URI_SCHEME)
            .ok_or_else(|| invalid("must start with tinyci://"))?;
        let mut parts = rest.split('/');
        let site = SiteName::new(parts.next().unwrap_or_default())?;
        let role: Role = parts
            .next()
            .ok_or_else(|| invalid("missing role"))?
            .parse()
            .map_err(|_| invalid("role must be one of site, runner, admin, partner, user"))?;
        let name = parts.next();
        if parts.next().is_some() {
            return Err(invalid("too many path segments"));
        }
        match (role, name) {
            (Role::Site, None) => Ok(Self::site(site)),
            (Role::Site, Some(_)) => Err(invalid("a site identity has no name part")),
            (_, None) => Err(invalid(
                "runner, admin, partner and user identities need a name",
            )),
            (role, Some(name)) => Self::member(site, role, name),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn identity_uris_round_trip() {
        for uri in [
            "tinyci://alpha/site",
            "tinyci://alpha/runner/r1",
            "tinyci://a-1/admin/ana.b_c",
            "tinyci://beta/partner/alpha",
        ] {
            let id: PeerIdentity = uri.parse().unwrap();
            assert_eq!(id.to_string(), uri);
        }
    }

    #[test]
    fn malformed_identities_are_refused() {
        for uri in [
            "https://alpha/site",
            "tinyci://Alpha/site",
            "tinyci://alpha/site/x",
            "tinyci://alpha/runner",
            "tinyci://alpha/root/x",
            "tinyci://alpha/runner/../x",
            "tinyci://alpha/runner/r1/extra",
            "tinyci://-alpha/site",
            "tinyci:///site",
        ] {
            assert!(uri.parse::<PeerIdentity>().is_err(), "{uri} was accepted");
        }
    }
}
