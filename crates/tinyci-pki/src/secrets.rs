//! The secrets box: seals GitHub access tokens, webhook secrets and job secrets before they are
//! written to the store, so a copy of the LMDB files alone reveals none of them.
//!
//! One 32-byte AES-256-GCM key lives in a 0600 text file beside the other site keys
//! ([`SecretsKey::load_or_create`]). A sealed record is
//! `version (1) || nonce (12 random bytes) || ciphertext || tag (16)`, and the caller's
//! *context* (`github-token:alice`, `webhook-secret:org/x`) is bound in as associated data: a
//! record only opens under the context it was sealed for, so one row cannot be swapped into
//! another.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::PkiError;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// Bytes in a secrets key.
const KEY_LEN: usize = 32;
/// Format version of sealed records; the first byte of each.
const SEALED_VERSION: u8 = 1;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// The first line of a secrets key file, saying what it is and what losing it costs.
const KEY_FILE_HEADER: &str = "# tinyci secrets key: seals GitHub tokens, webhook secrets and job secrets at rest. Keep it 0600; losing it means re-linking GitHub logins, re-enabling repositories and setting job secrets again.";

/// What can go wrong loading the secrets key or sealing and opening records. Messages name
/// files and contexts, never key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key file exists but cannot be read (or is readable by others).
    #[error("cannot load secrets key {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why (names the path too; refuses group- or world-readable files).
        source: PkiError,
    },
    /// The key file was read but does not hold a key.
    #[error("secrets key {path} is malformed: {reason}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it; never quotes the file's content.
        reason: KeyFileError,
    },
    /// A new key could not be written.
    #[error("cannot create secrets key {path}: {source}")]
    Create {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: PkiError,
    },
    /// A sealed record does not open under this key and context.
    #[error("cannot unseal {context}: {reason}")]
    Unseal {
        /// The context the caller asked to open the record as.
        context: String,
        /// Why ("wrong secrets key or tampered record", "record too short", …).
        reason: String,
    },
    /// The crypto library refused a freshly generated key (not expected with 32 bytes).
    #[error("secrets box failed to {0}")]
    Crypto(&'static str),
}

/// What is wrong with a key file's content. Never quotes the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// No key line.
    #[error("it holds no key line (64 hex characters)")]
    NoKey,
    /// More than one key line.
    #[error("it holds more than one key line")]
    SeveralKeys,
    /// The key line's length is wrong.
    #[error("the key line has {0} characters, expected {expected} hex characters", expected = 2 * KEY_LEN)]
    Length(usize),
    /// The key line is not lowercase hex.
    #[error("the key line is not lowercase hex")]
    NotHex,
    /// The crypto library refused the key.
    #[error("AES-256-GCM refused the key")]
    Refused,
}

/// The key that seals secrets at rest. Its `Debug` output is redacted.
pub struct SecretsKey {
    /// The raw key, as written to the key file.
    bytes: [u8; KEY_LEN],
    /// The same key, ready for AES-256-GCM.
    aead: LessSafeKey,
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsKey(<redacted>)")
    }
}

impl SecretsKey {
    /// Loads the key from `path`, or makes a new random one there (mode 0600, temp file then
    /// rename) if the file does not exist. An existing file that is group- or
    /// world-readable, unreadable or malformed is an error, never silently replaced: that
    /// would orphan every record sealed with it.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretsError> {
        match path.try_exists() {
            Ok(true) => Self::load(path),
            Ok(false) => Self::create(path),
            Err(source) => Err(SecretsError::Read {
                path: path.to_owned(),
                source: PkiError::Io {
                    action: "failed to look for",
                    path: path.to_owned(),
                    source,
                },
            }),
        }
    }

    fn load(path: &Path) -> Result<Self, SecretsError> {
        let text = crate::read_text_file(path, true).map_err(|source| SecretsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| SecretsError::Malformed {
            path: path.to_owned(),
            reason,
        })
    }

    fn create(path: &Path) -> Result<Self, SecretsError> {
        let mut bytes = [0u8; KEY_LEN];
        fill_random(&mut bytes);
        let key = Self::from_bytes(bytes)
            .map_err(|_| SecretsError::Crypto("accept a fresh AES-256-GCM key"))?;
        crate::write_secret_file(path, key.to_file_text().as_bytes()).map_err(|source| {
            SecretsError::Create {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(key)
    }

    /// The file format: the header comment, then the key as 64 lowercase hex characters.
    fn to_file_text(&self) -> String {
        format!("{KEY_FILE_HEADER}\n{}\n", hex::encode(self.bytes))
    }

    /// Parses the file format; comment and blank lines are skipped. The error is a reason
    /// that never quotes the content.
    fn parse(text: &str) -> Result<Self, KeyFileError> {
        Self::from_bytes(Self::parse_bytes(text)?)
    }

    fn from_bytes(bytes: [u8; KEY_LEN]) -> Result<Self, KeyFileError> {
        let aead = UnboundKey::new(&AES_256_GCM, &bytes)
            .map(LessSafeKey::new)
            .map_err(|_| KeyFileError::Refused)?;
        Ok(Self { bytes, aead })
    }

    fn parse_bytes(text: &str) -> Result<[u8; KEY_LEN], KeyFileError> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'));
        let line = lines.next().ok_or(KeyFileError::NoKey)?;
        if lines.next().is_some() {
            return Err(KeyFileError::SeveralKeys);
        }
        if line.len() != 2 * KEY_LEN {
            return Err(KeyFileError::Length(line.len()));
        }
        if !line
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(KeyFileError::NotHex);
        }
        let mut bytes = [0u8; KEY_LEN];
        hex::decode_to_slice(line, &mut bytes).map_err(|_| KeyFileError::NotHex)?;
        Ok(bytes)
    }

    /// Seals `plaintext` for `context` (e.g. `github-token:alice`): AES-256-GCM under a fresh
    /// random nonce, with `context` as associated data, so the record opens only with this
    /// key *and* this context. Output: `1 || nonce (12) || ciphertext || tag (16)`.
    ///
    /// # Panics
    ///
    /// Only if `plaintext` exceeds AES-GCM's per-message limit (about 64 GiB); the box seals
    /// tokens and secrets of a few bytes to kilobytes.
    #[expect(
        clippy::expect_used,
        reason = "AES-GCM sealing fails only past 2^36 - 32 bytes of plaintext; secrets are tiny"
    )]
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
        sealed.push(SEALED_VERSION);
        sealed.extend_from_slice(&nonce);
        let mut in_out = plaintext.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut in_out,
            )
            .expect("AES-256-GCM seals any plaintext under 64 GiB");
        sealed.extend_from_slice(&in_out);
        sealed
    }

    /// Opens a record made by [`SecretsKey::seal`] with the same `context`. Refuses an unknown
    /// version byte, a record too short to hold nonce and tag, and any record that fails
    /// authentication (another key, another context, or a changed byte).
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, SecretsError> {
        let refuse = |reason: String| SecretsError::Unseal {
            context: context.to_owned(),
            reason,
        };
        let (&version, rest) = sealed
            .split_first()
            .ok_or_else(|| refuse("the record is empty".to_owned()))?;
        if version != SEALED_VERSION {
            return Err(refuse(format!(
                "unknown sealed-record version {version} (this tinyci reads version {SEALED_VERSION})"
            )));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(refuse(format!(
                "the record is {} bytes, too short to hold a nonce and tag",
                sealed.len()
            )));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| refuse("the record's nonce is malformed".to_owned()))?;
        let mut in_out = ciphertext.to_vec();
        let plaintext_len = self
            .aead
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| refuse("wrong secrets key or tampered record".to_owned()))?
            .len();
        in_out.truncate(plaintext_len);
        Ok(in_out)
    }
}

/// `bytes` random bytes as lowercase hex (`2 * bytes` characters), for webhook secrets and
/// OAuth states.
pub fn random_secret_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf);
    hex::encode(buf)
}

/// Fills `buf` from AWS-LC's CSPRNG.
#[expect(
    clippy::expect_used,
    reason = "AWS-LC's RAND_bytes always returns 1 (it aborts if it cannot get entropy); there \
              is no weaker randomness to fall back on"
)]
pub fn fill_random(buf: &mut [u8]) {
    aws_lc_rs::rand::fill(buf).expect("AWS-LC's RAND_bytes never reports failure");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn key() -> SecretsKey {
        let mut bytes = [0u8; KEY_LEN];
        fill_random(&mut bytes);
        SecretsKey::from_bytes(bytes).unwrap()
    }

    #[test]
    fn sealed_records_round_trip() {
        let key = key();
        for plaintext in [&b""[..], b"gho_abc123", &[0xffu8; 4096][..]] {
            let sealed = key.seal(plaintext, "github-token:alice");
            assert_eq!(sealed.len(), 1 + NONCE_LEN + plaintext.len() + TAG_LEN);
            assert_eq!(sealed[0], SEALED_VERSION);
            assert_eq!(key.open(&sealed, "github-token:alice").unwrap(), plaintext);
        }
        // Fresh nonces: sealing twice never gives the same record.
        assert_ne!(key.seal(b"x", "c"), key.seal(b"x", "c"));
    }

    #[test]
    fn a_record_does_not_open_under_another_context() {
        let key = key();
        let sealed = key.seal(b"gho_abc123", "github-token:alice");
        let err = key.open(&sealed, "webhook-secret:org/x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot unseal webhook-secret:org/x: wrong secrets key or tampered record"
        );
    }

    #[test]
    fn a_changed_byte_anywhere_is_refused() {
        let key = key();
        let sealed = key.seal(b"gho_abc123", "github-token:alice");
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            let err = key.open(&tampered, "github-token:alice").unwrap_err();
            assert!(
                matches!(err, SecretsError::Unseal { .. }),
                "byte {i}: {err}"
            );
        }
        let err = key.open(&sealed[..20], "github-token:alice").unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
        let err = key.open(&[], "github-token:alice").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let mut v2 = sealed.clone();
        v2[0] = 2;
        let err = key.open(&v2, "github-token:alice").unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn another_key_cannot_open() {
        let sealed = key().seal(b"gho_abc123", "github-token:alice");
        let err = key().open(&sealed, "github-token:alice").unwrap_err();
        assert!(
            err.to_string()
                .contains("wrong secrets key or tampered record"),
            "{err}"
        );
    }

    #[test]
    fn the_key_file_is_created_0600_and_reloads_to_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let created = SecretsKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], KEY_FILE_HEADER);
        assert_eq!(lines[1].len(), 64);
        assert!(
            lines[1]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );

        let reloaded = SecretsKey::load_or_create(&path).unwrap();
        assert_eq!(reloaded.bytes, created.bytes);
        let sealed = created.seal(b"s", "webhook-secret:org/x");
        assert_eq!(
            reloaded.open(&sealed, "webhook-secret:org/x").unwrap(),
            b"s"
        );
        // Loading does not rewrite the file.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn debug_output_is_redacted() {
        let key = key();
        let shown = format!("{key:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains(&hex::encode(key.bytes)), "{shown}");
    }

    #[test]
    fn a_group_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        SecretsKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = SecretsKey::load_or_create(&path).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, SecretsError::Read { .. }), "{message}");
        assert!(message.contains("chmod 600"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn malformed_key_files_are_refused_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let secret_looking = "z".repeat(64);
        for (content, expected) in [
            (String::new(), "no key line"),
            (format!("{KEY_FILE_HEADER}\n"), "no key line"),
            (format!("{KEY_FILE_HEADER}\nabcd\n"), "has 4 characters"),
            (
                format!("{KEY_FILE_HEADER}\n{secret_looking}\n"),
                "not lowercase hex",
            ),
            (
                format!("{KEY_FILE_HEADER}\n{}\n", "AB".repeat(32)),
                "not lowercase hex",
            ),
            (
                format!("{KEY_FILE_HEADER}\n{0}\n{0}\n", "ab".repeat(32)),
                "more than one key line",
            ),
        ] {
            std::fs::write(&path, &content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = SecretsKey::load_or_create(&path).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, SecretsError::Malformed { .. }), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(expected), "{content:?}: {message}");
            assert!(!message.contains(&secret_looking), "{message}");
        }
    }

    #[test]
    fn random_secrets_are_lowercase_hex_of_the_asked_length() {
        let a = random_secret_hex(32);
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_ne!(a, random_secret_hex(32));
        assert_eq!(random_secret_hex(0), "");
    }
}
