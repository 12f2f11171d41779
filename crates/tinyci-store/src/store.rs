//! Opening the store: directory, lock, LMDB environment, tables, schema version.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use heed::types::Bytes;
use heed::{CommitOrAbort, CommitToken, Database, OnCommit, WithoutTls};

use crate::error::{LmdbError, StoreError};
use crate::tables::{ALL, META};
use crate::txn::{MIB, ReadTxn, Tables, WriteTxn};

/// The schema version this build reads and writes. Bump it, and add a step to `migrate`,
/// whenever data already on disk must change shape.
pub const SCHEMA_VERSION: u32 = 1;

/// Key in [`META`] holding the schema version, a big-endian `u32`.
pub const SCHEMA_VERSION_KEY: &str = "schema_version";

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// How to open the store. Both limits are always passed to LMDB: its own defaults (a 1 MiB map,
/// no named databases) are traps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Size of the LMDB map at open, in bytes. Address space only, reserved up front; the
    /// file grows as data is written. The map grows (doubling) as it fills, up to
    /// `max_map_size`. Must be a multiple of the OS page size (any whole number of MiB is).
    /// Default 4 GiB.
    pub map_size: usize,
    /// The ceiling the map may grow to; writes fail with [`StoreError::MapFull`] beyond it.
    /// Raised to `map_size` when lower. Default 32 GiB.
    pub max_map_size: usize,
    /// Maximum number of tables (LMDB named databases); room for the tables later versions
    /// add. Default 32.
    pub max_dbs: u32,
    /// Take the directory's exclusive lock (a site does). Offline tools that write beside a
    /// running site (`tinyci grant` recording what it minted) open without it: LMDB itself
    /// serializes writers across processes; the lock only keeps two *sites* off one store.
    pub exclusive: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            map_size: 4 * 1024 * MIB,
            max_map_size: 32 * 1024 * MIB,
            max_dbs: 32,
            exclusive: true,
        }
    }
}

/// The site's store: an LMDB environment in a data directory that this process holds
/// exclusively. Cheap to clone; clones share one environment, which closes (and releases the
/// directory lock) when the last clone drops.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// What a [`Store`] shares between its clones.
pub(crate) struct Inner {
    // Field order is drop order: the environment closes before the lock is released.
    /// The LMDB environment. Read transactions are opened without thread-local storage, so a
    /// thread may hold several and an async runtime may run them on any thread.
    pub(crate) env: heed::Env<WithoutTls>,
    /// Every declared table, by name, created at open.
    pub(crate) tables: Tables,
    /// The data directory, as given to [`Store::open`].
    pub(crate) path: PathBuf,
    /// The map's current size in bytes: grows, never shrinks, up to `max_map_size`.
    pub(crate) map_size: AtomicUsize,
    /// The configured ceiling of `map_size`.
    pub(crate) max_map_size: usize,
    /// Held shared by every transaction of this process and exclusively while the map is
    /// resized: LMDB allows a resize only while the process has no transaction active.
    gate: RwLock<()>,
    /// `<data dir>/LOCK`, exclusively locked for the life of the store (`None` for a tool
    /// opened with `exclusive: false`).
    _lock: Option<File>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// Creates `dir` (mode 0700 on unix) if missing, takes an exclusive lock on `dir/LOCK`
    /// (failing with [`StoreError::Locked`] if another open store holds it, in this process or
    /// another), opens LMDB, creates every declared table, and checks the schema version:
    /// written on a fresh store, migrated if older, refused with [`StoreError::NewerSchema`] if
    /// newer (nothing is written then).
    ///
    /// `dir` must be on a local filesystem (not NFS or similar), and nothing but tinyci may
    /// modify the files in it while a store is open.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        create_dir(dir)?;
        let lock = if options.exclusive {
            Some(lock(&dir.join(LOCK_FILE))?)
        } else {
            None
        };
        if ALL.len() > options.max_dbs as usize {
            return Err(StoreError::TooManyTables {
                path: dir.to_owned(),
                needed: ALL.len(),
                max_dbs: options.max_dbs,
            });
        }

        let mut env_options = heed::EnvOpenOptions::new().read_txn_without_tls();
        env_options
            .map_size(options.map_size)
            .max_dbs(options.max_dbs);
        // SAFETY: `open` is unsafe because LMDB memory-maps `data.mdb`: modifying the file
        // other than through an LMDB environment while it is mapped is undefined behaviour.
        // Every writer of ours goes through LMDB: other tinyci processes (a tool opened with
        // `exclusive: false` beside a running site) use their own environments, which LMDB
        // coordinates through its lock file; heed refuses to open one canonical path twice in
        // a process (`Error::EnvAlreadyOpened`); and we set no unsafe flags (`NO_LOCK`,
        // `NO_SYNC`, ...), so LMDB's own locking stays in force. Our exclusive `dir/LOCK` (held
        // until after the environment closes, see `Inner`'s field order) additionally keeps a
        // second *site* off the store. What remains is outside our control and documented for
        // operators: the data directory must be on a local filesystem and not be edited by
        // other programs while tinyci runs.
        #[expect(
            unsafe_code,
            reason = "heed::EnvOpenOptions::open is unsafe; see SAFETY"
        )]
        let env = unsafe { env_options.open(dir) }.map_err(|source| StoreError::Open {
            path: dir.to_owned(),
            source: LmdbError(source),
        })?;

        let (tables, found) = create_tables(&env, dir)?;
        // LMDB raises the map to what the file already holds (a store grown earlier).
        let map_size = env.info().map_size.max(options.map_size);
        let store = Store {
            inner: Arc::new(Inner {
                env,
                tables,
                path: dir.to_owned(),
                map_size: AtomicUsize::new(map_size),
                max_map_size: options.max_map_size.max(map_size),
                gate: RwLock::new(()),
                _lock: lock,
            }),
        };
        match found {
            Some(SCHEMA_VERSION) => {}
            None => store.write(set_schema_version)?,
            Some(older) => store.write(|txn| {
                migrate(txn, older)?;
                set_schema_version(txn)
            })?,
        }
        // A map configured smaller than the data opens at the data's size (LMDB's rule): make
        // room before the first write rather than failing it.
        store.inner.grow(false)?;
        Ok(store)
    }

    /// The data directory, as given to [`Store::open`].
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The schema version of the open store: always [`SCHEMA_VERSION`], since an older store
    /// is migrated at open and a newer one is refused.
    pub fn schema_version(&self) -> u32 {
        SCHEMA_VERSION
    }

    /// Runs `f` on a read-only snapshot. Blocks only while beginning the transaction; keep `f`
    /// short, since a live snapshot keeps LMDB from reusing pages freed after it.
    pub fn read<R>(
        &self,
        f: impl FnOnce(&ReadTxn<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let _pass = self.inner.enter();
        let txn = self
            .inner
            .env
            .read_txn()
            .map_err(|source| self.begin_error(source))?;
        f(&ReadTxn::new(&txn, &self.inner))
    }

    /// Runs `f` in a write transaction: committed (durably) if `f` returns `Ok`, aborted if it
    /// returns `Err` or panics, or if a write LMDB refused left the transaction unusable (then
    /// the error is that write's cause, `MapFull` included, even if `f` returned `Ok`).
    ///
    /// Writers are serialized: this blocks while another thread's write is open. Calling it
    /// from inside `f` on the same thread would deadlock, so it fails with
    /// [`StoreError::NestedWrite`] instead. To abort with your own error, return
    /// [`StoreError::Aborted`].
    pub fn write<R>(
        &self,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let _writing = WritingGuard::enter(&self.inner.path)?;
        let outcome = {
            let _pass = self.inner.enter();
            let txn = self
                .inner
                .env
                .write_txn()
                .map_err(|source| self.begin_error(source))?;
            let mut txn = WriteTxn::new(txn, &self.inner);
            match f(&mut txn) {
                Ok(value) => match txn.into_inner() {
                    Ok(txn) => txn.commit().map(|()| value).map_err(|source| {
                        self.inner.map_full_or(source, |source| StoreError::Commit {
                            path: self.inner.path.clone(),
                            source,
                        })
                    }),
                    Err((txn, why)) => {
                        txn.abort();
                        Err(why)
                    }
                },
                Err(error) => {
                    drop(txn);
                    Err(error)
                }
            }
        };
        // Every transaction of this thread is closed now, so the map may be resized here: after
        // a commit that left it more than three quarters full, or a write it could not hold.
        let full = matches!(outcome, Err(StoreError::MapFull { .. }));
        self.inner.grow(full)?;
        outcome
    }

    /// Bytes of the map in use: up to the last page written, free pages within included (LMDB
    /// reuses them before growing). What the store's file needs, for bounds and metrics.
    pub fn used_bytes(&self) -> u64 {
        let page = u64::from(self.inner.env.unnamed_database_stat().page_size);
        (self.inner.env.info().last_page_number as u64 + 1).saturating_mul(page)
    }

    /// The map's current size and its ceiling, in bytes.
    pub fn map_size(&self) -> (usize, usize) {
        (
            self.inner.map_size.load(Ordering::Relaxed),
            self.inner.max_map_size,
        )
    }

    fn begin_error(&self, source: heed::Error) -> StoreError {
        StoreError::Begin {
            path: self.inner.path.clone(),
            source: LmdbError(source),
        }
    }
}

/// Moves a store at schema version `from` (older than [`SCHEMA_VERSION`]) to the current
/// version, one [`migration`] step per version, inside the write transaction that then records
/// the new version. Every declared table already exists when this runs.
fn migrate(txn: &mut WriteTxn<'_>, from: u32) -> Result<(), StoreError> {
    for version in from..SCHEMA_VERSION {
        let step = migration(version).ok_or_else(|| StoreError::NoMigration {
            path: txn.store_inner().path.clone(),
            from: version,
        })?;
        step(txn)?;
    }
    Ok(())
}

/// A migration step: rewrites data stored at one schema version into the next.
type Migration = fn(&mut WriteTxn<'_>) -> Result<(), StoreError>;

/// The step from `version` to `version + 1`, if this build has one.
fn migration(version: u32) -> Option<Migration> {
    #[expect(
        clippy::match_single_binding,
        reason = "no migrations yet: each goes above `_` as `n => Some(v{n}_to_v{n+1})`"
    )]
    match version {
        _ => None,
    }
}

fn set_schema_version(txn: &mut WriteTxn<'_>) -> Result<(), StoreError> {
    txn.put(META, SCHEMA_VERSION_KEY, &SCHEMA_VERSION.to_be_bytes())
}

fn create_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_owned(),
        source,
    })
}

/// Opens and exclusively locks `path`. The lock belongs to the open file description, so a
/// second `Store::open` of the same directory fails even within one process.
fn lock(path: &Path) -> Result<File, StoreError> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| StoreError::LockFile {
            path: path.to_owned(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_owned(),
        }),
        Err(TryLockError::Error(source)) => Err(StoreError::LockFile {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates every declared table and reads the stored schema version (`None` on a fresh
/// store), in one write transaction that is aborted, leaving the store untouched, if the
/// version is newer than ours or malformed.
fn create_tables(
    env: &heed::Env<WithoutTls>,
    dir: &Path,
) -> Result<(Tables, Option<u32>), StoreError> {
    let init_error = |source| StoreError::Init {
        path: dir.to_owned(),
        source: LmdbError(source),
    };
    let txn = env.write_txn().map_err(init_error)?;
    let outcome = env
        .create_databases_and_commit(txn, |opener, txn| {
            let meta: Database<'_, Bytes, Bytes> =
                opener.create_database(txn, Some(META.name()))?;
            let found = match meta.get(txn, SCHEMA_VERSION_KEY.as_bytes())? {
                None => None,
                Some(bytes) => match <[u8; 4]>::try_from(bytes) {
                    Ok(bytes) => Some(u32::from_be_bytes(bytes)),
                    Err(_) => {
                        return Ok(CommitOrAbort::Abort(StoreError::BadSchemaVersion {
                            path: dir.to_owned(),
                            len: bytes.len(),
                        }));
                    }
                },
            };
            if let Some(found) = found
                && found > SCHEMA_VERSION
            {
                return Ok(CommitOrAbort::Abort(StoreError::NewerSchema {
                    path: dir.to_owned(),
                    found,
                    supported: SCHEMA_VERSION,
                }));
            }
            let mut tables = Vec::with_capacity(ALL.len());
            for &name in ALL {
                tables.push((name, opener.create_database(txn, Some(name))?));
            }
            Ok(CommitOrAbort::Commit(Created { tables, found }))
        })
        .map_err(init_error)?;
    Result::from(outcome)
}

/// Tables created in the opening transaction; heed makes their handles `'static` once it
/// commits.
struct Created<'e> {
    tables: Vec<(&'static str, Database<'e, Bytes, Bytes>)>,
    found: Option<u32>,
}

impl OnCommit for Created<'_> {
    type Committed = (Tables, Option<u32>);

    fn on_commit(self, token: &CommitToken) -> Self::Committed {
        let tables = self
            .tables
            .into_iter()
            .map(|(name, db)| (name, db.on_commit(token)));
        (tables.collect(), self.found)
    }
}

thread_local! {
    /// Whether this thread is inside [`Store::write`].
    static WRITING: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as writing until dropped (also on panic).
struct WritingGuard;

thread_local! {
    /// The stores (by address of their shared state) whose gate this thread holds, so a read
    /// nested in another transaction of the same store does not queue behind a waiting resize
    /// that waits for the outer transaction: a deadlock.
    static GATES_HELD: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// This thread's share of a store's gate; see [`Inner::enter`].
pub(crate) struct GatePass<'a> {
    /// `None` when an outer pass of this thread already holds the gate.
    guard: Option<RwLockReadGuard<'a, ()>>,
    key: usize,
}

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        if self.guard.take().is_some() {
            GATES_HELD.with_borrow_mut(|held| held.retain(|k| *k != self.key));
        }
    }
}

impl Inner {
    fn key(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Holds the gate shared for one transaction (or joins this thread's outer hold).
    pub(crate) fn enter(&self) -> GatePass<'_> {
        let key = self.key();
        let outer = GATES_HELD.with_borrow(|held| held.contains(&key));
        if outer {
            return GatePass { guard: None, key };
        }
        let guard = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        GATES_HELD.with_borrow_mut(|held| held.push(key));
        GatePass {
            guard: Some(guard),
            key,
        }
    }

    /// Doubles the map (up to the ceiling) when `full` or when the data fills more than three
    /// quarters of it. Called with no transaction of this thread open.
    fn grow(&self, full: bool) -> Result<(), StoreError> {
        let size = self.map_size.load(Ordering::Relaxed);
        if size >= self.max_map_size {
            return Ok(());
        }
        let page = self.env.unnamed_database_stat().page_size as usize;
        let used = (self.env.info().last_page_number + 1).saturating_mul(page);
        if !full && used <= size / 4 * 3 {
            return Ok(());
        }
        let _resizing = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have grown it while this one waited.
        let size = self.map_size.load(Ordering::Relaxed);
        if size >= self.max_map_size || (!full && used <= size / 4 * 3) {
            return Ok(());
        }
        let grown = size.saturating_mul(2).min(self.max_map_size) / MIB * MIB;
        // SAFETY: `resize` requires that this process has no transaction active. Every
        // transaction holds `gate` shared (`enter`) for its whole life, and we hold it
        // exclusively; transactions cannot escape `Store::read`/`Store::write`, whose
        // closures end before their pass drops.
        #[expect(unsafe_code, reason = "heed::Env::resize is unsafe; see SAFETY")]
        unsafe { self.env.resize(grown) }.map_err(|source| StoreError::Resize {
            path: self.path.clone(),
            to_mib: grown / MIB,
            source: LmdbError(source),
        })?;
        self.map_size.store(grown, Ordering::Relaxed);
        tracing::info!(
            store = %self.path.display(),
            from_mib = size / MIB,
            to_mib = grown / MIB,
            ceiling_mib = self.max_map_size / MIB,
            "grew the store's map"
        );
        Ok(())
    }
}

impl WritingGuard {
    fn enter(path: &Path) -> Result<Self, StoreError> {
        if WRITING.replace(true) {
            return Err(StoreError::NestedWrite {
                path: path.to_owned(),
            });
        }
        Ok(Self)
    }
}

impl Drop for WritingGuard {
    fn drop(&mut self) {
        WRITING.set(false);
    }
}
