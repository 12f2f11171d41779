//! The site's embedded store: one LMDB environment in the data directory, its schema version,
//! and the typed tables every other crate reads and writes, declared once in [`tables`].
//!
//! [`Store::open`] locks the directory (one site per data dir), opens LMDB with explicit
//! limits, creates all tables and checks the schema version, refusing a store written by a
//! newer tinyci. Everything else goes through [`Store::read`] and [`Store::write`], whose
//! [`ReadTxn`] and [`WriteTxn`] offer typed `get`, `put`, `delete` and ordered scans on a
//! [`Table`]. Values that are structs are stored as [`Record`]s, which carry a version tag.
//!
//! **Architecture Invariant:** this is the only crate that knows `heed`/LMDB: no heed type
//! appears in its API beyond the codec markers re-exported here. It must not depend on tokio,
//! capnp, or any other tinyci crate; it is synchronous, and async callers run it on a
//! blocking thread or through the [`GroupCommitter`], whose writer thread batches many
//! changes into one durable commit.

#![deny(unsafe_code)]

mod error;
mod group;
pub mod records;
mod store;
pub mod tables;
mod txn;

pub use error::{LmdbError, StoreError};
pub use group::{GroupCommitter, GroupWriterThread};
pub use store::{LOCK_FILE, SCHEMA_VERSION, SCHEMA_VERSION_KEY, Store, StoreOptions};
pub use tables::{Bytes, RECORD_VERSION, Record, RecordError, Str, Table, U64Be};
pub use txn::{Iter, ReadTxn, WriteTxn};
