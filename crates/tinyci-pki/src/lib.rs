//! Site identity: the site certificate authority, leaf certificates naming peers by a
//! `tinyci://<site>/<role>[/<name>]` URI, SHA-256 fingerprints, and the rustls client and
//! server configurations that enforce mutual TLS between sites, runners and admins.
//!
//! It also holds the secrets box (`secrets`: AES-256-GCM sealing of values at rest under the
//! site's secrets key, bound to a context), which GitHub tokens and job secrets share.
//!
//! This is the only crate that knows `rcgen` and `x509-parser`; it builds every rustls config
//! with one crypto provider (aws-lc-rs). It must not depend on tokio, capnp or any other tinyci
//! crate: it is pure policy over bytes, and the network lives in `tinyci-net`.

mod ca;
mod csr;
mod files;
mod identity;
pub mod secrets;
pub mod tls;

pub use ca::{CertifiedKey, SiteCa};
pub use csr::{MAX_CSR_PEM_BYTES, generate_csr};
pub use files::{read_text_file, write_public_file, write_secret_file};
pub use identity::{PeerIdentity, Role, SiteName};
pub use secrets::{SecretsError, SecretsKey};
pub use tls::{Credentials, Fingerprint, TrustAnchors};

/// Everything that can go wrong making, loading or checking certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A name does not follow its rule.
    #[error("invalid {what} {name:?}: must be {rule}")]
    InvalidName {
        /// What kind of name.
        what: &'static str,
        /// The offending name.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// An identity URI is malformed.
    #[error("invalid identity {uri:?}: {reason}")]
    InvalidIdentity {
        /// The offending URI.
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A CA was asked to issue a certificate for another site's identity.
    #[error("CA of site {site} cannot issue a certificate for {identity}")]
    ForeignIdentity {
        /// Identity asked for.
        identity: String,
        /// The CA's site.
        site: String,
    },
    /// The same site was pinned twice.
    #[error("a CA is already pinned for site {0}")]
    DuplicateAnchor(String),
    /// Key or certificate generation failed.
    #[error("failed to generate a key or certificate: {0}")]
    Generate(String),
    /// A certificate could not be parsed or lacks what tinyci needs.
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    /// A certificate signing request was refused (malformed, too large, bad signature, wrong
    /// key type) or cannot be signed for the identity asked.
    #[error("cannot sign certificate request: {0}")]
    Csr(String),
    /// A private key could not be parsed.
    #[error("bad private key: {0}")]
    BadKey(String),
    /// A certificate loaded as a CA is not one of ours.
    #[error("not a tinyci site CA: {reason}")]
    NotACa {
        /// Why.
        reason: String,
    },
    /// rustls refused a configuration.
    #[error("TLS configuration failed: {0}")]
    Tls(String),
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("failed to read").
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A secret file is readable by others.
    #[error(
        "{path} has mode {mode:o}; private keys must not be readable by group or others (chmod 600 {path})"
    )]
    InsecurePermissions {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}
