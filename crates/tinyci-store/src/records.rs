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

/// A piece of a run's log from one stream: what a runner sends and a reader gets. Stored as
/// such (record tag 1) by tinyci before log records could hold several streams; see
/// [`LogRecord`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// 0 stdout, 1 stderr, 2 system.
    pub stream: u8,
    /// When the runner read it (Unix microseconds).
    pub timestamp_micros: i64,
    /// The bytes (at most 64 KiB).
    pub data: Vec<u8>,
}

/// A stored piece of a run's log: consecutive output of any streams, each stretch of one
/// stream a [`LogSpan`]. Keyed by run id and byte offset (both big-endian), so a range scan
/// reads a run's log in order. One record holds many writes: a job alternating stdout and
/// stderr a byte at a time costs a span (two bytes) per switch, not a record per write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// When the runner read its first bytes (Unix microseconds).
    pub timestamp_micros: i64,
    /// The streams of `data`, in order; their lengths add up to `data.len()`.
    pub spans: Vec<LogSpan>,
    /// The bytes (at most 64 KiB).
    pub data: Vec<u8>,
}

/// A stretch of one stream in a [`LogRecord`]. Stored as one varint, `len << 2 | stream`,
/// so a span shorter than 32 bytes costs one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u32", from = "u32")]
pub struct LogSpan {
    /// 0 stdout, 1 stderr, 2 system.
    pub stream: u8,
    /// Bytes (less than 2^30: a record holds at most 64 KiB).
    pub len: u32,
}

impl From<LogSpan> for u32 {
    fn from(span: LogSpan) -> u32 {
        (span.len.min(u32::MAX >> 2) << 2) | u32::from(span.stream & 3)
    }
}

impl From<u32> for LogSpan {
    fn from(packed: u32) -> LogSpan {
        LogSpan {
            stream: (packed & 3) as u8,
            len: packed >> 2,
        }
    }
}

impl From<LogChunk> for LogRecord {
    fn from(chunk: LogChunk) -> Self {
        Self {
            timestamp_micros: chunk.timestamp_micros,
            spans: vec![LogSpan {
                stream: chunk.stream,
                len: u32::try_from(chunk.data.len()).unwrap_or(u32::MAX),
            }],
            data: chunk.data,
        }
    }
}

impl LogRecord {
    /// The record as one chunk per span, each with the offset it starts at (the record's at
    /// `offset`), leaving out what lies before `from`.
    pub fn into_chunks(self, offset: u64, from: u64) -> Vec<(u64, LogChunk)> {
        // One stream read whole: its bytes move, not copied (the follow path's common case).
        if let [span] = self.spans[..]
            && span.len as usize == self.data.len()
            && from <= offset
        {
            return vec![(
                offset,
                LogChunk {
                    stream: span.stream,
                    timestamp_micros: self.timestamp_micros,
                    data: self.data,
                },
            )];
        }
        let mut chunks = Vec::with_capacity(self.spans.len());
        let mut at = offset;
        let mut start = 0usize;
        for span in self.spans {
            let len = span.len as usize;
            let end = (start + len).min(self.data.len());
            let span_end = at + (end - start) as u64;
            if span_end > from && end > start {
                let skip = usize::try_from(from.saturating_sub(at)).unwrap_or(usize::MAX);
                let first = (start + skip).min(end);
                chunks.push((
                    at.max(from),
                    LogChunk {
                        stream: span.stream,
                        timestamp_micros: self.timestamp_micros,
                        data: self.data[first..end].to_vec(),
                    },
                ));
            }
            at = span_end;
            start = end;
        }
        chunks
    }
}

/// The run a log chunk's or an artifact's key belongs to (both start with the run id,
/// big-endian).
pub fn key_run(key: &[u8]) -> Option<u64> {
    key.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
}

/// The offset a log chunk's key names.
pub fn log_key_offset(key: &[u8]) -> u64 {
    key.get(8..16)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The key of a log chunk: run id then offset, big-endian.
pub fn log_key(run: u64, offset: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&run.to_be_bytes());
    key[8..].copy_from_slice(&offset.to_be_bytes());
    key
}

/// One stored artifact of a run. Keyed by [`artifact_key`]; its bytes are a file named by
/// `sha256` (the site's blob store), so identical content is stored once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// Path relative to the run's working directory, `/`-separated (also in the key; kept
    /// here so a record read on its own says what it is).
    pub name: String,
    /// Length in bytes, checked against what arrived.
    pub size: u64,
    /// SHA-256 of the content: its address in the blob store, checked at upload and sent
    /// with every download so the reader can check it too.
    pub sha256: [u8; 32],
    /// When the upload completed (Unix microseconds).
    pub stored_at_micros: i64,
    /// The attempt (lease) of the run that uploaded it: a retried run replaces artifacts of
    /// the same name, and this says which attempt's bytes these are.
    pub attempt: u32,
}

/// The key of an artifact: the run id (big-endian) then the name's bytes. A prefix scan on
/// the run id's 8 bytes lists the run's artifacts.
pub fn artifact_key(run: u64, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + name.len());
    key.extend_from_slice(&run.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::tables::{ALL, ARTIFACTS};
    use crate::{Record, Store, StoreOptions};

    #[test]
    fn artifact_records_round_trip_and_list_by_run_in_name_order() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        let record = |name: &str, byte: u8| ArtifactRecord {
            name: name.to_owned(),
            size: 3,
            sha256: [byte; 32],
            stored_at_micros: 1_700_000_000_000_000,
            attempt: 1,
        };
        store
            .write(|txn| {
                // Run 2's artifacts, and a neighbour whose id shares no prefix with them.
                for (run, name, byte) in [(2, "z.txt", 1), (2, "out/a.bin", 2), (3, "a", 3)] {
                    txn.put(ARTIFACTS, &artifact_key(run, name)[..], &record(name, byte))?;
                }
                Ok(())
            })
            .unwrap();
        let listed: Vec<ArtifactRecord> = store
            .read(|txn| {
                txn.iter_prefix(ARTIFACTS, &2u64.to_be_bytes()[..])?
                    .map(|e| e.map(|(_, v)| v))
                    .collect()
            })
            .unwrap();
        assert_eq!(listed, [record("out/a.bin", 2), record("z.txt", 1)]);
        // The hash is stored as its 32 bytes, not length-prefixed.
        let encoded = Record::<ArtifactRecord>::encode(&record("a", 9)).unwrap();
        assert!(encoded.windows(32).any(|w| w == [9; 32]));
        assert!(ALL.contains(&ARTIFACTS.name()));
    }
}

/// A site user. Capabilities are tinyCI's (`submit`, `cancel`, `modify:ci`, `modify:user`,
/// `logs`); `tinyci-users` owns their meaning and how they map onto grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's name (`alice`); their certificate names `tinyci://<site>/user/<name>`.
    pub name: String,
    /// Capability names, sorted, no duplicates.
    pub capabilities: Vec<String>,
    /// The linked GitHub account, if the user logged in with GitHub.
    pub github: Option<GitHubLink>,
    /// When the user was created (Unix ms).
    pub created_at: u64,
    /// Who created it (peer identity, or `github` for a first OAuth login).
    pub created_by: String,
}

/// A GitHub account linked to a site user.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitHubLink {
    /// GitHub login (`octocat`).
    pub login: String,
    /// GitHub's numeric user id (stable across renames).
    pub id: u64,
    /// The user's GitHub access token, sealed with the site's secrets key (never plaintext).
    pub token_sealed: Vec<u8>,
    /// When it was linked or last refreshed (Unix ms).
    pub linked_at: u64,
}

impl std::fmt::Debug for GitHubLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubLink")
            .field("login", &self.login)
            .field("id", &self.id)
            .field("token_sealed", &"<sealed>")
            .finish()
    }
}

/// A repository the site knows.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRecord {
    /// `owner/name`.
    pub name: String,
    /// Has a webhook and turns its events into submissions.
    pub enabled: bool,
    /// The webhook GitHub created, while enabled.
    pub hook_id: Option<u64>,
    /// The webhook's secret, sealed with the site's secrets key.
    pub secret_sealed: Vec<u8>,
    /// Who enabled it (peer identity).
    pub enabled_by: String,
    /// The site user whose GitHub token the site uses for this repository; `None` means the
    /// site's own `[github] token_file`.
    pub github_user: Option<String>,
    /// Readable without login on the web pages.
    pub public: bool,
    /// When it was last enabled or disabled (Unix ms).
    pub changed_at: u64,
}

impl std::fmt::Debug for RepoRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoRecord")
            .field("name", &self.name)
            .field("enabled", &self.enabled)
            .field("hook_id", &self.hook_id)
            .field("secret_sealed", &"<sealed>")
            .field("enabled_by", &self.enabled_by)
            .field("github_user", &self.github_user)
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A verified webhook delivery waiting to be acted on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// `X-GitHub-Delivery`.
    pub delivery: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The JSON body as received (its signature was checked before it was stored).
    pub body: Vec<u8>,
    /// When it arrived (Unix ms).
    pub received_at: u64,
}

/// Where a GitHub-triggered submission reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitHubOrigin {
    /// `owner/name`.
    pub repo: String,
    /// The commit statuses are posted on.
    pub sha: String,
    /// The pull request it was built for, if any.
    pub pull_request: Option<u64>,
}

/// The last commit status posted for a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedStatus {
    /// `pending`, `success`, `failure` or `error`.
    pub state: String,
    /// The description posted.
    pub description: String,
    /// The attempt it described.
    pub attempt: u32,
}

/// A job secret as stored: its scope, who set it and when, and its value sealed (AES-256-GCM
/// under the site's secrets key, with the repository, name and scope as associated data, so
/// neither the value nor a widened scope can be moved onto this row).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// `owner/name`.
    pub repo: String,
    /// The secret's name (its variable and file name).
    pub name: String,
    /// The refs it is for.
    pub ref_pattern: String,
    /// The trust tiers it is for, spelled.
    pub tiers: Vec<String>,
    /// Delivered as a file in the run's secrets directory rather than a variable.
    pub as_file: bool,
    /// Who set it (a verified identity).
    pub set_by: String,
    /// When (ms since the epoch).
    pub set_at: u64,
    /// The sealed value.
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Even sealed, the value stays out of debug output.
        f.debug_struct("StoredSecret")
            .field("repo", &self.repo)
            .field("name", &self.name)
            .field("ref_pattern", &self.ref_pattern)
            .field("tiers", &self.tiers)
            .field("as_file", &self.as_file)
            .field("set_by", &self.set_by)
            .field("set_at", &self.set_at)
            .finish_non_exhaustive()
    }
}

/// One delivery of a secret to a run's lease (the key says which run, attempt and secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretDelivery {
    /// The runner's verified identity (`tinyci://site/runner/name`).
    pub runner: String,
    /// When (ms since the epoch).
    pub at: u64,
}
