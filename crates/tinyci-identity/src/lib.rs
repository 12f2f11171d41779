//! A site's identity on disk and its use: creating it (`site init`: CA, certificates, the
//! Biscuit root key, the admin grant), reading it back (the key files a `site.toml` names,
//! checked for mode and for naming this site), whom the listener trusts (the own CA and the
//! partners pinned under `federation/`), runner bundles, the record of every grant issued,
//! `site check`, and reaching a site with these credentials (the admin client).
//!
//! Must not depend on `tinyci-site` or on anything that runs a site (queue, logs, web):
//! the site, the CLI and the benchmark build on this, never the other way.

mod check;
mod files;
mod issued;
mod trust;

pub mod bundle;
pub mod client;
pub mod federation;
pub mod init;

use std::path::PathBuf;

pub use check::{CheckReport, check};
pub use client::{
    SiteClient, SiteInfo, admin_capability, connect_admin, connect_as, connect_partner, rpc_error,
};
pub use files::{load_credentials, load_root_key, open_store_for_tool, read_pem, store_options};
pub use issued::{issued_record, record_issued};
pub use trust::TrustPolicy;

/// Why a site's identity could not be read, created or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] tinyci_config::ConfigError),
    /// A certificate or key file is unusable.
    #[error("{key} ({path}): {source}")]
    Credentials {
        /// Config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: tinyci_pki::PkiError,
    },
    /// A certificate names a different site than the config.
    #[error("{key} ({path}) names {found}, but site.name is {expected}")]
    WrongSite {
        /// Config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Identity in the certificate.
        found: String,
        /// `site.name`.
        expected: String,
    },
    /// The Biscuit root key is unusable.
    #[error("grants.root_key ({path}): {source}")]
    RootKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: tinyci_grant::GrantError,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] tinyci_store::StoreError),
    /// Dialing failed.
    #[error(transparent)]
    Net(#[from] tinyci_net::NetError),
    /// The site answered with an error (or the connection broke).
    #[error("site {addr} refused or failed the call: {source}")]
    Rpc {
        /// The address dialed.
        addr: String,
        /// What capnp said.
        source: capnp::Error,
    },
    /// No address to dial.
    #[error("{0}")]
    NoAddress(String),
    /// A partner pin under `federation/` is unusable.
    #[error(transparent)]
    Federation(#[from] federation::FederationError),
}

impl IdentityError {
    /// Whether the error is the operator's to fix in `site.toml` or the files it names (the
    /// CLI exits 2 for these), rather than a failure of the moment.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            Self::Config(_)
                | Self::Credentials { .. }
                | Self::WrongSite { .. }
                | Self::RootKey { .. }
                | Self::NoAddress(_)
                | Self::Federation(_)
        )
    }
}
