//! `tinyci site check`: everything `site up` would read, read without starting anything.

use tinyci_config::SiteConfig;

use crate::{IdentityError, TrustPolicy, load_credentials, load_root_key, read_pem};

/// What `tinyci site check` found valid.
#[derive(Debug)]
pub struct CheckReport {
    /// One line per thing checked, in order.
    pub checked: Vec<String>,
}

/// Checks `config`'s identity files as `site up` would read them (certificates and keys
/// parse and match the site, key files are 0600, partner pins are valid), without opening
/// the store, binding anything or creating any file. The site adds what else it reads.
pub fn check(config: &SiteConfig) -> Result<CheckReport, IdentityError> {
    let mut checked = Vec::new();
    let policy = TrustPolicy::load(config)?;
    checked.push(format!(
        "tls.cert and tls.key: {}",
        tinyci_pki::PeerIdentity::site(config.name.clone())
    ));
    let ca_pem = policy.own_ca_pem.clone();
    let (_, partners) = policy.server_config()?;
    checked.push(format!(
        "tls.ca_cert and {} partner pin(s) in {}{}",
        partners.len(),
        config.federation_dir.display(),
        if partners.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                partners
                    .iter()
                    .map(|p| p.site.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    load_root_key(config)?;
    checked.push("grants.root_key".into());
    load_credentials(
        "admin.cert",
        &config.admin_cert,
        "admin.key",
        &config.admin_key,
    )?;
    read_pem(&config.admin_token, "admin.token", true)?;
    checked.push("admin.cert, admin.key and admin.token".into());
    if let Some(ca_key) = &config.ca_key {
        let key_pem = read_pem(ca_key, "tls.ca_key", true)?;
        tinyci_pki::SiteCa::from_pem(&ca_pem, &key_pem).map_err(|source| {
            IdentityError::Credentials {
                key: "tls.ca_key",
                path: ca_key.clone(),
                source,
            }
        })?;
        checked.push("tls.ca_key matches tls.ca_cert".into());
    }
    Ok(CheckReport { checked })
}
