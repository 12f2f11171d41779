//! Reading a site's key material and store from the paths its `site.toml` names.

use tinyci_config::SiteConfig;
use tinyci_pki::{Credentials, read_text_file};
use tinyci_store::{Store, StoreOptions};

use crate::IdentityError;

/// Loads the Biscuit root key named by `grants.root_key` (must be mode 0600).
pub fn load_root_key(config: &SiteConfig) -> Result<tinyci_grant::RootKey, IdentityError> {
    let text = read_pem(&config.root_key, "grants.root_key", true)?;
    tinyci_grant::RootKey::from_secret_str(&text).map_err(|source| IdentityError::RootKey {
        path: config.root_key.clone(),
        source,
    })
}

/// Opens the store beside a possibly running site, for offline tools (`tinyci grant`).
pub fn open_store_for_tool(config: &SiteConfig) -> Result<Store, IdentityError> {
    Ok(Store::open(
        &config.data_dir,
        StoreOptions {
            exclusive: false,
            ..store_options(config)
        },
    )?)
}

/// How `config`'s site opens its store: the map's size at open and its ceiling.
pub fn store_options(config: &SiteConfig) -> StoreOptions {
    let mib = |n: u64| usize::try_from(n.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
    StoreOptions {
        map_size: mib(config.map_size_mib),
        max_map_size: mib(config.max_map_size_mib),
        ..StoreOptions::default()
    }
}

pub fn read_pem(
    path: &std::path::Path,
    key: &'static str,
    secret: bool,
) -> Result<String, IdentityError> {
    read_text_file(path, secret).map_err(|source| IdentityError::Credentials {
        key,
        path: path.to_owned(),
        source,
    })
}

pub fn load_credentials(
    cert_key: &'static str,
    cert: &std::path::Path,
    key_key: &'static str,
    key: &std::path::Path,
) -> Result<Credentials, IdentityError> {
    let cert_pem = read_pem(cert, cert_key, false)?;
    let key_pem = read_pem(key, key_key, true)?;
    Credentials::from_pem(&cert_pem, &key_pem).map_err(|source| IdentityError::Credentials {
        key: cert_key,
        path: cert.to_owned(),
        source,
    })
}
