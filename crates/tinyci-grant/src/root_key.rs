//! The site's Biscuit root key pair: what every token the site mints is signed with.

use std::str::FromStr;

use biscuit_auth::{KeyPair, PrivateKey};

use crate::GrantError;

/// A site's Ed25519 root key pair. Its `Debug` output never shows the private half.
pub struct RootKey(KeyPair);

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RootKey")
            .field(&self.public_key_string())
            .finish()
    }
}

impl RootKey {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        Self(KeyPair::new())
    }

    /// Parses the text written by [`RootKey::to_secret_string`].
    pub fn from_secret_str(text: &str) -> Result<Self, GrantError> {
        let key = PrivateKey::from_str(text.trim())
            .map_err(|_| GrantError::MalformedKey("expected ed25519-private/<hex>".into()))?;
        Ok(Self(KeyPair::from(&key)))
    }

    /// The private key as `ed25519-private/<hex>`. Secret: store with mode 0600, never log.
    pub fn to_secret_string(&self) -> String {
        self.0.private().to_prefixed_string()
    }

    /// The key pair, for signing and verifying inside this crate.
    pub(crate) fn key_pair(&self) -> &KeyPair {
        &self.0
    }

    /// The public key as `ed25519/<hex>`: what verifiers of this site's tokens pin.
    pub fn public_key_string(&self) -> String {
        self.0.public().to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn secret_string_round_trips() {
        let key = RootKey::generate();
        let again = RootKey::from_secret_str(&key.to_secret_string()).unwrap();
        assert_eq!(key.public_key_string(), again.public_key_string());
        assert!(key.public_key_string().starts_with("ed25519/"));
        assert!(!format!("{key:?}").contains(&key.to_secret_string()));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(RootKey::from_secret_str("not a key").is_err());
    }
}
