//! Grants across trust boundaries as Biscuit tokens: the Datalog vocabulary ([`vocab`]), the
//! site's root key, minting, offline attenuation (blocks of checks only), inspection, and
//! verification plus authorization with explicit run limits, returning typed results
//! ([`Grant`]). Tokens are standard Biscuit, serialized as base64url, so any Biscuit
//! implementation can read and attenuate them.
//!
//! This is the only crate that knows `biscuit-auth`. It is sans-IO: no files, no network, no
//! clock (the caller passes `now`). It must not depend on tokio, capnp, heed or any other
//! tinyci crate; mapping certificate identities to holder names is the site's job.

#![forbid(unsafe_code)]

mod root_key;
mod token;
pub mod vocab;

pub use root_key::RootKey;
pub use token::{
    Attenuation, Context, Grant, GrantSpec, Inspection, MAX_BLOCKS, MAX_TOKEN_BYTES,
    UnverifiedToken, VerifiedToken, format_time, mint, verify,
};
pub use vocab::{Holder, HolderKind, Operation, Right, ScopeKind};

/// Everything that can go wrong with grants. Messages never contain token text.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// A root key file's contents are not a key.
    #[error("malformed root key: {0}")]
    MalformedKey(String),
    /// A name or value does not follow its rule.
    #[error("invalid {what} {value:?}: expected {expected}")]
    Invalid {
        /// What kind of value.
        what: &'static str,
        /// The offending value.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// A grant or attenuation asks for something inconsistent.
    #[error("{0}")]
    BadSpec(String),
    /// The token text is larger than any real token; refused before decoding.
    #[error("token refused: it is {len} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a (tinyci) Biscuit token at all, or a truncated one.
    #[error("token refused: {0}")]
    Malformed(String),
    /// The signature chain does not verify against this site's root key: another site's
    /// token, or a tampered one.
    #[error(
        "token refused: it is not signed by this site's root key (another site's token, or altered)"
    )]
    BadSignature,
    /// The token (or an attenuation of it) has expired.
    #[error("token expired at {at}")]
    Expired {
        /// When.
        at: String,
    },
    /// The token or one of its ancestors was revoked.
    #[error("token revoked (revocation id {id})")]
    Revoked {
        /// The revoked id that matched.
        id: String,
    },
    /// The token is bound to a holder other than the connection's peer.
    #[error("token refused: it is bound to {holder}, which this connection is not")]
    WrongHolder {
        /// The token's holder.
        holder: String,
    },
    /// The token does not allow the operation.
    #[error("denied {operation}: {reason}")]
    Denied {
        /// What was asked (`queue:take on queue b`).
        operation: String,
        /// Why not.
        reason: String,
    },
    /// Biscuit refused to build or run Datalog (a bug or an exotic token).
    #[error("token processing failed: {0}")]
    Datalog(String),
}
