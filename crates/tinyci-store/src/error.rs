//! The one error type of the store.

use std::path::PathBuf;
use std::{fmt, io};

use heed::BoxedError;

/// Everything that can go wrong opening or using the store. Messages name the path, table and
/// key involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("failed to create store directory {}: {source}", path.display())]
    CreateDir {
        /// The directory asked for.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The lock file could not be opened or locked (other than being held by someone else).
    #[error("failed to lock {}: {source}", path.display())]
    LockFile {
        /// `<data dir>/LOCK`.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// Another open store (another site, usually another process) holds the lock.
    #[error("another tinyci process holds {}", path.display())]
    Locked {
        /// `<data dir>/LOCK`.
        path: PathBuf,
    },
    /// LMDB refused to open the environment.
    #[error("failed to open LMDB environment at {}: {source}", path.display())]
    Open {
        /// The data directory.
        path: PathBuf,
        /// LMDB's error.
        source: LmdbError,
    },
    /// More tables are declared than `max_dbs` allows.
    #[error(
        "store at {} declares {needed} tables but max_dbs is {max_dbs}; raise max_dbs",
        path.display()
    )]
    TooManyTables {
        /// The data directory.
        path: PathBuf,
        /// Tables declared in `tables.rs`.
        needed: usize,
        /// The configured limit.
        max_dbs: u32,
    },
    /// Creating the declared tables, or reading the schema version, failed.
    #[error("failed to create tables in the store at {}: {source}", path.display())]
    Init {
        /// The data directory.
        path: PathBuf,
        /// LMDB's error.
        source: LmdbError,
    },
    /// The stored `schema_version` is not a big-endian `u32`.
    #[error(
        "store at {} has a malformed schema_version ({len} bytes; expected 4)",
        path.display()
    )]
    BadSchemaVersion {
        /// The data directory.
        path: PathBuf,
        /// Length of the stored value.
        len: usize,
    },
    /// The store was written by a newer tinyci; opening it could corrupt it.
    #[error(
        "store at {} was written by a newer tinyci (schema version {found}; this build supports \
         up to {supported}); upgrade tinyci or point data_dir elsewhere",
        path.display()
    )]
    NewerSchema {
        /// The data directory.
        path: PathBuf,
        /// Version recorded in the store.
        found: u32,
        /// [`SCHEMA_VERSION`](crate::SCHEMA_VERSION) of this build.
        supported: u32,
    },
    /// The store is older than this build and no migration exists from its version.
    #[error(
        "store at {} has schema version {from}, which this build cannot migrate",
        path.display()
    )]
    NoMigration {
        /// The data directory.
        path: PathBuf,
        /// The version with no migration step.
        from: u32,
    },
    /// LMDB's map is full. Below the ceiling the map has been grown meanwhile, so the same
    /// write may be retried; at the ceiling nothing more fits.
    #[error(
        "store at {} is full: this write did not fit in its LMDB map of {map_size_mib} MiB \
         (ceiling {ceiling_mib} MiB); {}",
        path.display(),
        if map_size_mib < ceiling_mib {
            "the map has been grown, so retrying may succeed"
        } else {
            "free space or raise store.max_map_size_mib in site.toml"
        }
    )]
    MapFull {
        /// The data directory.
        path: PathBuf,
        /// The map's size when the write failed.
        map_size_mib: usize,
        /// The ceiling the map may grow to (`store.max_map_size_mib`).
        ceiling_mib: usize,
    },
    /// Growing the map failed.
    #[error("failed to grow the LMDB map of the store at {} to {to_mib} MiB: {source}", path.display())]
    Resize {
        /// The data directory.
        path: PathBuf,
        /// The size it was being grown to.
        to_mib: usize,
        /// LMDB's error.
        source: LmdbError,
    },
    /// `write` was called while this thread already had a write transaction open, which
    /// would deadlock on LMDB's writer lock.
    #[error(
        "nested write transaction on the store at {}: this thread already holds one",
        path.display()
    )]
    NestedWrite {
        /// The data directory.
        path: PathBuf,
    },
    /// A transaction could not begin.
    #[error("failed to begin a transaction on the store at {}: {source}", path.display())]
    Begin {
        /// The data directory.
        path: PathBuf,
        /// LMDB's error.
        source: LmdbError,
    },
    /// A write transaction could not commit; nothing it wrote is kept.
    #[error("failed to commit to the store at {}: {source}", path.display())]
    Commit {
        /// The data directory.
        path: PathBuf,
        /// LMDB's error.
        source: LmdbError,
    },
    /// Reading a key failed.
    #[error("failed to read {key} from table {table}: {source}")]
    Read {
        /// Table name.
        table: &'static str,
        /// The key, quoted and escaped.
        key: String,
        /// LMDB's error.
        source: LmdbError,
    },
    /// Iterating a table failed.
    #[error("failed to iterate table {table}: {source}")]
    Iterate {
        /// Table name.
        table: &'static str,
        /// LMDB's error.
        source: LmdbError,
    },
    /// A put or delete failed.
    #[error("failed to {op} {key} in table {table}: {source}")]
    Write {
        /// `"put"` or `"delete"`.
        op: &'static str,
        /// Table name.
        table: &'static str,
        /// The key, quoted and escaped.
        key: String,
        /// LMDB's error.
        source: LmdbError,
    },
    /// A key or value could not be encoded.
    #[error("failed to encode a {what} for table {table}: {source}")]
    Encode {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// Table name.
        table: &'static str,
        /// The codec's error.
        source: BoxedError,
    },
    /// A stored key or value could not be decoded as its table declares.
    #[error("failed to decode the {what} at {key} in table {table}: {source}")]
    Decode {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// Table name.
        table: &'static str,
        /// The key, quoted and escaped.
        key: String,
        /// The codec's error (for [`Record`](crate::Record) values, a
        /// [`RecordError`](crate::RecordError)).
        source: BoxedError,
    },
    /// A [`Table`](crate::Table) not created at open (a bug: tables are declared in
    /// `tables.rs` only).
    #[error("table {table} is not declared in tinyci-store's tables.rs")]
    UnknownTable {
        /// Table name.
        table: &'static str,
    },
    /// The caller's write closure gave up; nothing it wrote is kept.
    #[error("write transaction aborted: {reason}")]
    Aborted {
        /// The caller's reason (downcast it to recover a typed error).
        reason: BoxedError,
    },
}

/// An error from LMDB, kept opaque so that no other crate names `heed` types.
pub struct LmdbError(pub(crate) heed::Error);

impl fmt::Debug for LmdbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for LmdbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for LmdbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// `true` when LMDB reports its map is full.
pub(crate) fn is_map_full(error: &heed::Error) -> bool {
    matches!(error, heed::Error::Mdb(heed::MdbError::MapFull))
}

/// A key as error messages show it: quoted, non-printable bytes escaped.
pub(crate) fn show_key(key: &[u8]) -> String {
    format!("\"{}\"", key.escape_ascii())
}
