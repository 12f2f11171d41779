//! Grants across trust boundaries as Biscuit tokens: the site's root key pair today; the
//! Datalog vocabulary, minting, attenuation and verification as the grants issue lands.
//!
//! This is the only crate that knows `biscuit-auth`. It is sans-IO: no files, no network, no
//! clock (time is passed in); callers decide where keys live. It must not depend on tokio,
//! capnp, heed or any other tinyci crate.

#![forbid(unsafe_code)]

mod root_key;

pub use root_key::RootKey;

/// Everything that can go wrong with grants.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// A root key file's contents are not a key.
    #[error("malformed root key: {0}")]
    MalformedKey(String),
}
