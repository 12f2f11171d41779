//! The value types stored in [`crate::tables`]. They live here, not in the crates that use
//! them, so the whole on-disk schema reads in one place. Append fields only at the end
//! (postcard is positional); a change of shape needs a schema-version bump and a migration.

use serde::{Deserialize, Serialize};

/// A grant the site minted. Times are Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedGrant {
    /// Who may use it (`site:beta`).
    pub holder: String,
    /// Rights (`queue:submit`, …).
    pub rights: Vec<String>,
    /// Repositories the repo-scoped rights cover.
    pub repos: Vec<String>,
    /// Queues `queue:take` covers.
    pub queues: Vec<String>,
    /// When it expires; `None` for a grant minted without expiry.
    pub expires_at: Option<u64>,
    /// Revocation ids of its blocks, hex (one when minted).
    pub revocation_ids: Vec<String>,
    /// Who minted it (`cli:<user>@<host>` offline, or a peer identity over RPC).
    pub issued_by: String,
    /// When.
    pub issued_at: u64,
}

/// A revoked revocation id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// When it was revoked (Unix seconds).
    pub revoked_at: u64,
    /// Who revoked it (peer identity).
    pub revoked_by: String,
}

/// A piece of a run's log. Keyed by run id and byte offset (both big-endian), so a range
/// scan reads a run's log in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// 0 stdout, 1 stderr, 2 system.
    pub stream: u8,
    /// When the runner read it (Unix microseconds).
    pub timestamp_micros: i64,
    /// The bytes (at most 64 KiB).
    pub data: Vec<u8>,
}

/// The key of a log chunk: run id then offset, big-endian.
pub fn log_key(run: u64, offset: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&run.to_be_bytes());
    key[8..].copy_from_slice(&offset.to_be_bytes());
    key
}
