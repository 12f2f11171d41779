//! Every table the store holds, declared once, and the codecs their keys and values use.
//!
//! A [`Table`] is a named LMDB database with a key codec and a value codec. Only this module
//! can declare one (`Table::new` is crate-private), and [`Store::open`](crate::Store::open)
//! creates every declared table, so a read transaction never meets a missing database.
//!
//! # Adding a table
//!
//! 1. Append one line to the `tables!` block at the bottom of this file. **Append; never
//!    rename, reuse or remove a name**: the name is the table's identity on disk, and a store
//!    written by an older or newer tinyci must keep meaning the same thing. A table that falls
//!    out of use stays declared, with a doc comment saying so.
//! 2. Pick codecs. Keys: [`Str`], [`Bytes`] or [`U64Be`] (big-endian, so byte order is
//!    numeric order and range scans work). Values that are structs: [`Record<T>`], which
//!    prefixes each value with a version tag (values carry a version; see `STYLE.md`). The
//!    value types themselves live in this crate too, so the whole on-disk schema is readable
//!    in one place and `tinyci-store` still depends on no other tinyci crate.
//! 3. If data already on disk must change shape, bump
//!    [`SCHEMA_VERSION`](crate::SCHEMA_VERSION) and add a step to `migrate` in `store.rs`. A
//!    new, empty table needs neither: it is created at open.
//!
//! Each table is one LMDB named database and counts against
//! [`StoreOptions::max_dbs`](crate::StoreOptions::max_dbs).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use heed::{BoxedError, BytesDecode, BytesEncode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Key or value codec: UTF-8 string, ordered bytewise.
pub use heed::types::Str;

/// Key or value codec: raw bytes, ordered bytewise.
pub use heed::types::Bytes;

/// Key or value codec: `u64` stored as exactly 8 big-endian bytes, so byte order is numeric
/// order. (heed's own `U64` decodes the first 8 bytes of anything longer; this one refuses.)
#[derive(Debug)]
pub enum U64Be {}

impl BytesEncode<'_> for U64Be {
    type EItem = u64;

    fn bytes_encode(item: &u64) -> Result<Cow<'_, [u8]>, BoxedError> {
        Ok(Cow::Owned(item.to_be_bytes().to_vec()))
    }
}

impl BytesDecode<'_> for U64Be {
    type DItem = u64;

    fn bytes_decode(bytes: &[u8]) -> Result<u64, BoxedError> {
        let bytes = <[u8; 8]>::try_from(bytes).map_err(|_| {
            format!(
                "expected 8 bytes for a big-endian u64, found {}",
                bytes.len()
            )
        })?;
        Ok(u64::from_be_bytes(bytes))
    }
}

/// A table declaration: its on-disk name and, as types, its key codec `K` and value codec `V`.
///
/// `Copy` and free to pass by value: it holds only the name.
pub struct Table<K, V> {
    /// Name of the LMDB named database: the table's identity on disk, so never changed.
    name: &'static str,
    /// The codecs exist only as types; `fn() -> _` keeps `Table` `Send + Sync + Copy` whatever
    /// they are.
    codecs: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Table<K, V> {
    /// Declares a table. Crate-private: tables are declared in this module only.
    pub(crate) const fn new(name: &'static str) -> Self {
        Self {
            name,
            codecs: PhantomData,
        }
    }

    /// The table's name on disk.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for Table<K, V> {}

impl<K, V> fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Table").field(&self.name).finish()
    }
}

/// The version tag [`Record`] writes in front of every value, and the only one it reads.
pub const RECORD_VERSION: u8 = 1;

/// Bytes an encoding buffer starts with: a run's record (the largest written often) fits.
const ENCODE_CAPACITY: usize = 512;

/// Value codec for any `serde` type: `[version tag][postcard bytes]`.
///
/// The tag is [`RECORD_VERSION`]; decoding any other tag fails with
/// [`RecordError::UnknownVersion`] instead of misreading bytes. When a record's shape has to
/// change incompatibly, the next tag and a migration arrive together.
///
/// A marker type: it is never constructed, only named in a [`Table`]'s type.
pub struct Record<T>(PhantomData<fn() -> T>);

impl<T> fmt::Debug for Record<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Record")
    }
}

impl<T: Serialize> Record<T> {
    /// Encodes `value` as it is stored: the version tag, then postcard.
    pub fn encode(value: &T) -> Result<Vec<u8>, RecordError> {
        // Room for a typical record up front: growing from one byte reallocated a run's
        // record about six times, on the store's one writer thread.
        let mut buffer = Vec::with_capacity(ENCODE_CAPACITY);
        buffer.push(RECORD_VERSION);
        postcard::to_extend(value, buffer).map_err(|source| RecordError::Malformed { source })
    }
}

impl<T: DeserializeOwned> Record<T> {
    /// Decodes a stored value, refusing unknown version tags and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<T, RecordError> {
        let (&tag, body) = bytes.split_first().ok_or(RecordError::Empty)?;
        if tag != RECORD_VERSION {
            return Err(RecordError::UnknownVersion {
                found: tag,
                supported: RECORD_VERSION,
            });
        }
        let (value, rest) =
            postcard::take_from_bytes(body).map_err(|source| RecordError::Malformed { source })?;
        if !rest.is_empty() {
            return Err(RecordError::TrailingBytes { len: rest.len() });
        }
        Ok(value)
    }
}

impl<'a, T: Serialize + 'a> BytesEncode<'a> for Record<T> {
    type EItem = T;

    fn bytes_encode(item: &'a T) -> Result<Cow<'a, [u8]>, BoxedError> {
        Ok(Cow::Owned(Self::encode(item)?))
    }
}

impl<'a, T: DeserializeOwned + 'a> BytesDecode<'a> for Record<T> {
    type DItem = T;

    fn bytes_decode(bytes: &[u8]) -> Result<T, BoxedError> {
        Ok(Self::decode(bytes)?)
    }
}

/// Value codec of [`LOG_CHUNKS`]: writes [`LogRecord`](crate::records::LogRecord)s under
/// tag 2 and reads them, and reads the single-stream
/// [`LogChunk`](crate::records::LogChunk)s stored under tag 1 as one-span records, so logs
/// written before records held several streams read on without a migration.
pub enum LogCodec {}

impl fmt::Debug for LogCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogCodec")
    }
}

/// The tag [`LogCodec`] writes.
pub const LOG_RECORD_VERSION: u8 = 2;

impl LogCodec {
    /// Decodes a stored log record of either tag.
    pub fn decode(bytes: &[u8]) -> Result<crate::records::LogRecord, RecordError> {
        match bytes.first() {
            Some(&RECORD_VERSION) => {
                Record::<crate::records::LogChunk>::decode(bytes).map(Into::into)
            }
            Some(&LOG_RECORD_VERSION) => {
                let (value, rest) = postcard::take_from_bytes(&bytes[1..])
                    .map_err(|source| RecordError::Malformed { source })?;
                if !rest.is_empty() {
                    return Err(RecordError::TrailingBytes { len: rest.len() });
                }
                Ok(value)
            }
            Some(&found) => Err(RecordError::UnknownVersion {
                found,
                supported: LOG_RECORD_VERSION,
            }),
            None => Err(RecordError::Empty),
        }
    }
}

impl LogCodec {
    /// Encodes a log record as it is stored (tag 2).
    pub fn encode(record: &crate::records::LogRecord) -> Result<Vec<u8>, RecordError> {
        let mut buffer = Vec::with_capacity(ENCODE_CAPACITY);
        buffer.push(LOG_RECORD_VERSION);
        postcard::to_extend(record, buffer).map_err(|source| RecordError::Malformed { source })
    }
}

impl<'a> BytesEncode<'a> for LogCodec {
    type EItem = crate::records::LogRecord;

    fn bytes_encode(item: &'a Self::EItem) -> Result<Cow<'a, [u8]>, BoxedError> {
        Ok(Cow::Owned(Self::encode(item)?))
    }
}

impl BytesDecode<'_> for LogCodec {
    type DItem = crate::records::LogRecord;

    fn bytes_decode(bytes: &[u8]) -> Result<Self::DItem, BoxedError> {
        Ok(Self::decode(bytes)?)
    }
}

/// Why a [`Record`] could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Zero bytes: not even a version tag.
    #[error("empty record: no version tag")]
    Empty,
    /// The tag is not one this build reads.
    #[error(
        "unknown record version tag {found} (this build reads tag {supported}); \
         was it written by a newer tinyci?"
    )]
    UnknownVersion {
        /// Tag found in the stored bytes.
        found: u8,
        /// The tag this build reads and writes.
        supported: u8,
    },
    /// postcard could not (de)serialize the body.
    #[error("malformed record body: {source}")]
    Malformed {
        /// postcard's error.
        source: postcard::Error,
    },
    /// The body decoded but bytes were left over: the stored type differs from the declared one.
    #[error("{len} unexpected trailing bytes after the record")]
    TrailingBytes {
        /// How many bytes were left.
        len: usize,
    },
}

/// Declares tables as `const`s and lists their names in `ALL`, so that a declared table is
/// always a created table.
macro_rules! tables {
    ($( $(#[$attr:meta])* $vis:vis const $NAME:ident: Table<$K:ty, $V:ty> = $name:literal; )*) => {
        $( $(#[$attr])* $vis const $NAME: Table<$K, $V> = Table::new($name); )*

        /// Every declared table's name, in declaration order: `Store::open` creates them all.
        pub(crate) const ALL: &[&str] = &[$($name),*];
    };
}

tables! {
    /// Store metadata, keyed by name. `schema_version` (a big-endian `u32`) belongs to
    /// [`Store::open`](crate::Store::open): nothing else writes it.
    pub const META: Table<Str, Bytes> = "meta";

    /// Grants this site minted, keyed by the authority block's revocation id (hex). Never the
    /// token itself: a record says what was granted, to whom, by whom and when.
    pub const GRANTS: Table<Str, Record<crate::records::IssuedGrant>> = "grants";

    /// Revoked token blocks, keyed by revocation id (hex). Loaded at start; a token any of
    /// whose blocks is listed here is refused.
    pub const REVOKED: Table<Str, Record<crate::records::Revocation>> = "revoked";

    /// Single-use grants that took their job, keyed by the authority block's revocation id
    /// (hex); the value is the run (id). The grant takes no other, and is revoked when that
    /// run's lease ends.
    pub const SPENT_GRANTS: Table<Str, U64Be> = "spent_grants";

    /// Log records as sites before segment files stored them, keyed by
    /// [`crate::records::log_key`] (run id, byte offset). Read once, to move them into
    /// `tinyci-logs`' files, then emptied; nothing writes here any more.
    pub const LOG_CHUNKS: Table<Bytes, LogCodec> = "log_chunks";

    /// Where frames of a run's log file start, keyed by [`crate::records::log_key`] (run id,
    /// log offset); the value is the frame's byte position in the file. Sparse, and never
    /// ahead of the file: an entry is written only once its frame is durable, so it only
    /// saves a reader from scanning the file from its start.
    pub const LOG_INDEX: Table<Bytes, U64Be> = "log_index";

    /// Runs by id (big-endian). The value is a `Record` of `tinyci_queue::StoredRun`, encoded
    /// by tinyci-queue: its state machine is `tinyci_core::Run`, a type this crate cannot
    /// name, so the table is declared with raw bytes and the queue owns the codec.
    pub const RUNS: Table<U64Be, Bytes> = "runs";

    /// Runs not yet final, by id (empty values): what the queue loads at start, so opening a
    /// site costs its unfinished work, not its history. Kept by `tinyci-queue` with `RUNS`.
    pub const RUNS_UNFINISHED: Table<U64Be, Bytes> = "runs_unfinished";

    /// Runs by repository: key `<repo> 0x00 <run id, big-endian>`, empty value, so one
    /// repository's runs list newest first without reading anyone else's. Kept with `RUNS`.
    pub const RUNS_BY_REPO: Table<Bytes, Bytes> = "runs_by_repo";

    /// Runs by git ref: key `<ref> 0x00 <run id, big-endian>`, empty value. Kept with `RUNS`.
    pub const RUNS_BY_REF: Table<Bytes, Bytes> = "runs_by_ref";

    /// Finished runs by status: key `<status word> 0x00 <run id, big-endian>`, empty value
    /// (unfinished runs are listed from the queue's memory). Kept with `RUNS`.
    pub const RUNS_BY_STATUS: Table<Bytes, Bytes> = "runs_by_status";

    /// Submissions by id (big-endian); value a `Record` of `tinyci_queue::StoredSubmission`,
    /// encoded by tinyci-queue like [`RUNS`].
    pub const SUBMISSIONS: Table<U64Be, Bytes> = "submissions";

    /// Queued runs per queue: key `<queue name> 0x00 <run id, big-endian>`, empty value. A
    /// prefix scan of one queue yields its runs in id order, which is FIFO.
    pub const QUEUED: Table<Bytes, Bytes> = "queued";

    /// The latest submission per branch: key `<repo> 0x00 <ref>`, value the submission id
    /// (big-endian): what a newer submission supersedes.
    pub const BRANCH_HEADS: Table<Bytes, U64Be> = "branch_heads";

    /// Artifacts of runs, keyed by [`crate::records::artifact_key`] (run id big-endian, then
    /// the artifact's name), so a prefix scan lists one run's artifacts in name order. The
    /// bytes live outside LMDB, content-addressed by the record's SHA-256.
    pub const ARTIFACTS: Table<Bytes, Record<crate::records::ArtifactRecord>> = "artifacts";

    /// Site users by name (`tinyci-users` reads and writes them).
    pub const USERS: Table<Str, Record<crate::records::UserRecord>> = "users";

    /// Which site user a GitHub account (by GitHub's numeric user id) is linked to.
    pub const USERS_BY_GITHUB: Table<U64Be, Str> = "users_by_github";

    /// Repositories the site knows, by `owner/name`: whether enabled, their webhook and its
    /// (sealed) secret.
    pub const REPOS: Table<Str, Record<crate::records::RepoRecord>> = "repos";

    /// GitHub webhook deliveries accepted, by `X-GitHub-Delivery` id; the value is when
    /// (Unix ms). A delivery id seen here is acknowledged again and acted on never.
    pub const GITHUB_DELIVERIES: Table<Str, U64Be> = "github_deliveries";

    /// Accepted webhook deliveries not yet acted on, by arrival sequence: a delivery is
    /// written here (with its id into [`GITHUB_DELIVERIES`]) before GitHub gets its 202, and
    /// deleted once it became submissions, so a crash in between loses nothing.
    pub const GITHUB_INBOX: Table<U64Be, Record<crate::records::InboxEntry>> = "github_inbox";

    /// Submissions that came from GitHub, by submission id: where their statuses go.
    pub const GITHUB_SUBMISSIONS: Table<U64Be, Record<crate::records::GitHubOrigin>> =
        "github_submissions";

    /// Submissions that came from GitHub whose every run's final status was posted, by
    /// submission id: kept so that a retried run reports its new attempt on the same commit.
    pub const GITHUB_REPORTED: Table<U64Be, Record<crate::records::GitHubOrigin>> =
        "github_reported";

    /// Per run id, the last commit status posted to GitHub for it, so a restarted site
    /// neither repeats nor skips one.
    pub const GITHUB_STATUSES: Table<U64Be, Record<crate::records::PostedStatus>> =
        "github_statuses";

    /// What operators set on the pool, so it survives a restart: key `runner 0x00 <name>`
    /// (value `paused` or `draining`) or `queue 0x00 <name>` (value `paused`); owned by
    /// tinyci-queue. Absent means active.
    pub const POOL: Table<Bytes, Bytes> = "pool";

    /// Job secrets, key `<repo> 0x00 <name>`: scope, who set it, and the value sealed under
    /// the site's secrets key (never the plaintext).
    pub const SECRETS: Table<Bytes, Record<crate::records::StoredSecret>> = "secrets";

    /// Every delivery of a secret to a lease, key `<run id, big-endian> <attempt, 4 bytes
    /// big-endian> <secret name>`: the audit trail `admin runs show` prints. Names only.
    pub const SECRET_DELIVERIES: Table<Bytes, Record<crate::records::SecretDelivery>> =
        "secret_deliveries";
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::ALL;

    #[test]
    fn table_names_are_unique() {
        let unique: HashSet<_> = ALL.iter().collect();
        assert_eq!(
            unique.len(),
            ALL.len(),
            "a table name is declared twice: {ALL:?}"
        );
    }
}
