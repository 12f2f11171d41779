//! Partner sites pinned under `federation/`: one `<name>.toml` per partner, naming its site
//! id and pinning its CA certificate, with optional addresses and notes.
//!
//! A pin is the only source of trust in another site: its CA may vouch for
//! `tinyci://<partner>/…` identities (and nothing else) when they connect here, and it is the
//! one CA accepted for `tinyci://<partner>/site` when this site (or its runners and CLI)
//! dials the partner. Discovery finds addresses, never trust.
//!
//! ```toml
//! site = "beta"                     # must match the file name
//! ca = """-----BEGIN CERTIFICATE-----
//! …
//! -----END CERTIFICATE-----"""
//! addrs = ["beta.example.org:7433"] # optional; where to dial it
//! notes = "Beta's GPU farm; contact ops@beta.example.org"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tinyci_pki::{Fingerprint, SiteName};

/// Largest partner file read.
const MAX_PARTNER_FILE_BYTES: u64 = 256 * 1024;

/// One pinned partner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partner {
    /// Its site id.
    pub site: SiteName,
    /// Its CA certificate, PEM.
    pub ca_pem: String,
    /// SHA-256 of the CA certificate.
    pub fingerprint: Fingerprint,
    /// Where to dial it (`host:port`), if known.
    pub addrs: Vec<String>,
    /// Free text.
    pub notes: String,
    /// The file it was read from.
    pub path: PathBuf,
}

/// Why a partner file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The directory or a file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A file's content is wrong.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No pin for a site.
    #[error(
        "no partner {site} is pinned in {dir} (add one with `tinyci federation add {site} --ca FILE`)"
    )]
    NotPinned {
        /// The site asked for.
        site: String,
        /// The federation directory.
        dir: PathBuf,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartnerFile {
    site: String,
    ca: String,
    #[serde(default)]
    addrs: Vec<String>,
    #[serde(default)]
    notes: String,
}

fn invalid(path: &Path, reason: impl Into<String>) -> FederationError {
    FederationError::Invalid {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Checks a partner: its name, its CA, its addresses.
fn check(
    path: &Path,
    site: &str,
    ca_pem: &str,
    addrs: &[String],
    own: &SiteName,
) -> Result<(SiteName, Fingerprint), FederationError> {
    let site: SiteName = site
        .parse()
        .map_err(|e: tinyci_pki::PkiError| invalid(path, format!("site: {e}")))?;
    if &site == own {
        return Err(invalid(
            path,
            format!("site {site} is this site; a site does not pin itself"),
        ));
    }
    let der =
        tinyci_pki::tls::parse_cert_pem(ca_pem).map_err(|e| invalid(path, format!("ca: {e}")))?;
    for addr in addrs {
        if addr
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(invalid(path, format!("addrs: {addr:?} is not host:port")));
        }
    }
    Ok((site, Fingerprint::of_der(&der)))
}

/// Reads one partner file.
pub fn read_partner(path: &Path, own: &SiteName) -> Result<Partner, FederationError> {
    let io = |source| FederationError::Io {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_PARTNER_FILE_BYTES {
        return Err(invalid(
            path,
            format!("{size} bytes; a partner file is at most {MAX_PARTNER_FILE_BYTES}"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let file: PartnerFile =
        toml::from_str(&text).map_err(|e| invalid(path, e.to_string().trim_end().to_owned()))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if stem != file.site {
        return Err(invalid(
            path,
            format!(
                "the file pins site {:?} but is named {stem}.toml",
                file.site
            ),
        ));
    }
    let (site, fingerprint) = check(path, &file.site, &file.ca, &file.addrs, own)?;
    Ok(Partner {
        site,
        ca_pem: file.ca,
        fingerprint,
        addrs: file.addrs,
        notes: file.notes,
        path: path.to_owned(),
    })
}

/// Every partner pinned in `dir`, by name. A missing directory pins nobody; any bad file is an
/// error (a site must not start half-trusting its partners).
pub fn load_partners(dir: &Path, own: &SiteName) -> Result<Vec<Partner>, FederationError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(FederationError::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut partners = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| FederationError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue; // README.md, *.grant.example, …
        }
        partners.push(read_partner(&path, own)?);
    }
    partners.sort_by(|a, b| a.site.as_str().cmp(b.site.as_str()));
    Ok(partners)
}

/// The pin for `site` in `dir`.
pub fn find_partner(dir: &Path, own: &SiteName, site: &str) -> Result<Partner, FederationError> {
    let path = dir.join(format!("{site}.toml"));
    if !path.is_file() {
        return Err(FederationError::NotPinned {
            site: site.to_owned(),
            dir: dir.to_owned(),
        });
    }
    read_partner(&path, own)
}

/// Writes `dir/<site>.toml` (replacing an existing pin of that site).
pub fn write_partner(
    dir: &Path,
    own: &SiteName,
    site: &str,
    ca_pem: &str,
    addrs: &[String],
    notes: &str,
) -> Result<Partner, FederationError> {
    let path = dir.join(format!("{site}.toml"));
    check(&path, site, ca_pem, addrs, own)?;
    let text = toml::to_string(&PartnerFile {
        site: site.to_owned(),
        ca: ca_pem.trim().to_owned() + "\n",
        addrs: addrs.to_vec(),
        notes: notes.to_owned(),
    })
    .map_err(|e| invalid(&path, e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|source| FederationError::Io {
        path: dir.to_owned(),
        source,
    })?;
    tinyci_pki::write_public_file(&path, text.as_bytes())
        .map_err(|e| invalid(&path, e.to_string()))?;
    read_partner(&path, own)
}

/// Removes the pin of `site`; `false` if there was none.
pub fn remove_partner(dir: &Path, site: &str) -> Result<bool, FederationError> {
    let path = dir.join(format!("{site}.toml"));
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(FederationError::Io { path, source }),
    }
}
