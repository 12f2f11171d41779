//! Whom the site's listener trusts: its own CA, and each partner CA pinned under
//! `federation/` for that partner's identities only.

use std::path::PathBuf;
use std::sync::Arc;

use tinyci_config::SiteConfig;
use tinyci_pki::Credentials;
use tinyci_pki::tls::TrustAnchors;
use tracing::info;

use crate::{IdentityError, federation, load_credentials, read_pem};

/// The listener's trust: the site's own CA plus the partners pinned under `federation/`.
pub struct TrustPolicy {
    own: tinyci_pki::SiteName,
    /// The site's own CA certificate (PEM).
    pub own_ca_pem: String,
    own_ca_path: PathBuf,
    cert_path: PathBuf,
    credentials: Credentials,
    dir: PathBuf,
    /// The serving listener's switch, once serving.
    pub switch: std::cell::RefCell<Option<tinyci_net::TlsSwitch>>,
}

impl std::fmt::Debug for TrustPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustPolicy")
            .field("own", &self.own)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl TrustPolicy {
    /// Loads the site's certificate and key (which must name this site) and its CA.
    pub fn load(config: &SiteConfig) -> Result<Self, IdentityError> {
        let credentials = load_credentials("tls.cert", &config.cert, "tls.key", &config.key)?;
        let expected = tinyci_pki::PeerIdentity::site(config.name.clone());
        if credentials.identity() != &expected {
            return Err(IdentityError::WrongSite {
                key: "tls.cert",
                path: config.cert.clone(),
                found: credentials.identity().to_string(),
                expected: config.name.to_string(),
            });
        }
        Ok(Self {
            own: config.name.clone(),
            own_ca_pem: read_pem(&config.ca_cert, "tls.ca_cert", false)?,
            own_ca_path: config.ca_cert.clone(),
            cert_path: config.cert.clone(),
            credentials,
            dir: config.federation_dir.clone(),
            switch: std::cell::RefCell::new(None),
        })
    }

    /// The server config trusting the own CA and every pinned partner, and those partners.
    pub fn server_config(
        &self,
    ) -> Result<(Arc<tinyci_net::ServerConfig>, Vec<federation::Partner>), IdentityError> {
        let partners = federation::load_partners(&self.dir, &self.own)?;
        let mut trust =
            TrustAnchors::new(self.own.clone(), &self.own_ca_pem).map_err(|source| {
                IdentityError::Credentials {
                    key: "tls.ca_cert",
                    path: self.own_ca_path.clone(),
                    source,
                }
            })?;
        for partner in &partners {
            trust
                .add_partner(partner.site.clone(), &partner.ca_pem)
                .map_err(|e| {
                    IdentityError::Federation(federation::FederationError::Invalid {
                        path: partner.path.clone(),
                        reason: e.to_string(),
                    })
                })?;
        }
        let tls = tinyci_pki::tls::server_config(&self.credentials, &trust).map_err(|source| {
            IdentityError::Credentials {
                key: "tls.cert",
                path: self.cert_path.clone(),
                source,
            }
        })?;
        Ok((tls, partners))
    }

    /// Re-reads `federation/`: new handshakes follow it at once, and live connections of
    /// partners no longer pinned are closed. Returns the partners now trusted.
    pub fn reload(&self) -> Result<Vec<federation::Partner>, IdentityError> {
        let (tls, partners) = self.server_config()?;
        if let Some(switch) = self.switch.borrow().as_ref() {
            let own = self.own.clone();
            let trusted: Vec<tinyci_pki::SiteName> =
                partners.iter().map(|p| p.site.clone()).collect();
            switch.replace(tls, move |peer| {
                peer.site_name() == &own || trusted.contains(peer.site_name())
            });
        }
        info!(
            partners = ?partners.iter().map(|p| p.site.to_string()).collect::<Vec<_>>(),
            "federation reloaded"
        );
        Ok(partners)
    }
}
