//! Typed read and write transactions over declared [`Table`]s.
//!
//! Keys and values are encoded and decoded here rather than inside heed, so that every
//! failure names its table and key. Underneath, each table is an LMDB database of raw bytes.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use heed::types::Bytes;
use heed::{BytesDecode, BytesEncode};

use crate::error::{LmdbError, StoreError, is_map_full, show_key};
use crate::store::Inner;
use crate::tables::Table;

/// An LMDB database seen as raw bytes; typed views come from the [`Table`] codecs.
pub(crate) type RawDb = heed::Database<'static, Bytes, Bytes>;

/// Every declared table's database, by name.
pub(crate) type Tables = Vec<(&'static str, RawDb)>;

/// A read-only snapshot of the store, handed to [`Store::read`](crate::Store::read).
///
/// Values borrowed from it (`&str`, `&[u8]`) point into the memory map and live as long as
/// the transaction.
pub struct ReadTxn<'t> {
    /// The LMDB transaction (for a [`WriteTxn`], its write transaction seen read-only).
    txn: &'t heed::RoTxn<'t>,
    /// The store's tables and path.
    inner: &'t Inner,
}

impl fmt::Debug for ReadTxn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadTxn")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl<'t> ReadTxn<'t> {
    pub(crate) fn new(txn: &'t heed::RoTxn<'t>, inner: &'t Inner) -> Self {
        Self { txn, inner }
    }

    /// The value stored under `key`, if any.
    pub fn get<'k, K, V>(
        &self,
        table: Table<K, V>,
        key: &'k K::EItem,
    ) -> Result<Option<V::DItem>, StoreError>
    where
        K: BytesEncode<'k>,
        V: BytesDecode<'t>,
    {
        let db = self.inner.db(table.name())?;
        let key = encode::<K>(table.name(), "key", key)?;
        match db.get(self.txn, &key) {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => decode::<V>(table.name(), "value", &key, bytes).map(Some),
            Err(source) => Err(self.inner.map_full_or(source, |source| StoreError::Read {
                table: table.name(),
                key: show_key(&key),
                source,
            })),
        }
    }

    /// Entries whose key lies in `range`, in key order (bytewise on the encoded keys).
    ///
    /// Any `RangeBounds` works for sized keys (`&(2..)` on a [`U64Be`](crate::U64Be) table);
    /// for `str` and `[u8]` keys std only provides it on a pair of bounds:
    /// `&(Bound::Included("a"), Bound::Excluded("b"))`.
    pub fn iter_range<'r, K, V, R>(
        &self,
        table: Table<K, V>,
        range: &'r R,
    ) -> Result<Iter<'t, K, V>, StoreError>
    where
        K: BytesEncode<'r> + BytesDecode<'t>,
        V: BytesDecode<'t>,
        R: RangeBounds<<K as BytesEncode<'r>>::EItem>,
    {
        self.range_in(table, range, false)
    }

    /// As [`ReadTxn::iter_range`], newest (highest key) first: a listing that stops at a limit
    /// reads only what it returns, however long the table.
    pub fn iter_range_rev<'r, K, V, R>(
        &self,
        table: Table<K, V>,
        range: &'r R,
    ) -> Result<Iter<'t, K, V>, StoreError>
    where
        K: BytesEncode<'r> + BytesDecode<'t>,
        V: BytesDecode<'t>,
        R: RangeBounds<<K as BytesEncode<'r>>::EItem>,
    {
        self.range_in(table, range, true)
    }

    /// The entries of `table` in `range`, in key order or (`newest_first`) reversed.
    fn range_in<'r, K, V, R>(
        &self,
        table: Table<K, V>,
        range: &'r R,
        newest_first: bool,
    ) -> Result<Iter<'t, K, V>, StoreError>
    where
        K: BytesEncode<'r> + BytesDecode<'t>,
        V: BytesDecode<'t>,
        R: RangeBounds<<K as BytesEncode<'r>>::EItem>,
    {
        let db = self.inner.db(table.name())?;
        let start = encode_bound::<K>(table.name(), range.start_bound())?;
        let end = encode_bound::<K>(table.name(), range.end_bound())?;
        let bounds = (start.as_ref().map(|b| &**b), end.as_ref().map(|b| &**b));
        let raw: RawIter<'t> = if newest_first {
            Box::new(
                db.rev_range(self.txn, &bounds)
                    .map_err(|e| self.iterate_error(table.name(), e))?,
            )
        } else {
            Box::new(
                db.range(self.txn, &bounds)
                    .map_err(|e| self.iterate_error(table.name(), e))?,
            )
        };
        Ok(Iter::new(raw, self.inner, table.name()))
    }

    /// Entries whose encoded key starts with the encoded `prefix`, in key order.
    pub fn iter_prefix<'p, K, V>(
        &self,
        table: Table<K, V>,
        prefix: &'p <K as BytesEncode<'p>>::EItem,
    ) -> Result<Iter<'t, K, V>, StoreError>
    where
        K: BytesEncode<'p> + BytesDecode<'t>,
        V: BytesDecode<'t>,
    {
        let db = self.inner.db(table.name())?;
        let prefix = encode::<K>(table.name(), "key", prefix)?;
        let raw = db
            .prefix_iter(self.txn, &prefix)
            .map_err(|e| self.iterate_error(table.name(), e))?;
        Ok(Iter::new(Box::new(raw), self.inner, table.name()))
    }

    fn iterate_error(&self, table: &'static str, source: heed::Error) -> StoreError {
        self.inner
            .map_full_or(source, |source| StoreError::Iterate { table, source })
    }
}

/// A write transaction, handed to [`Store::write`](crate::Store::write): committed when the
/// closure returns `Ok`, aborted when it returns `Err` (or panics), or when a write LMDB
/// refused spoiled it (see [`WriteTxn::nested`]).
///
/// It reads its own uncommitted writes.
pub struct WriteTxn<'t> {
    /// The LMDB write transaction.
    txn: heed::RwTxn<'t>,
    /// The store's tables and path.
    inner: &'t Inner,
    /// What the writes inside open [`WriteTxn::nested`] scopes replaced, oldest first: put
    /// back, newest first, when a scope's closure fails.
    undo: Vec<Undo>,
    /// [`WriteTxn::nested`] scopes open now; writes are remembered only inside one.
    scopes: usize,
    /// Why this transaction must not commit: a failed scope's writes could not all be put
    /// back, so it holds writes nobody asked for (or LMDB ran out of map, which leaves the
    /// transaction unusable: the map must grow before the batch is tried again).
    spoiled: Option<StoreError>,
}

/// One write to take back: `key` in `db` held `was` (nothing, if `None`) before it.
struct Undo {
    db: RawDb,
    table: &'static str,
    key: Vec<u8>,
    was: Option<Vec<u8>>,
}

impl fmt::Debug for WriteTxn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteTxn")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl<'t> WriteTxn<'t> {
    pub(crate) fn new(txn: heed::RwTxn<'t>, inner: &'t Inner) -> Self {
        Self {
            txn,
            inner,
            undo: Vec::new(),
            scopes: 0,
            spoiled: None,
        }
    }

    /// The LMDB transaction to commit, or why it must not be.
    pub(crate) fn into_inner(self) -> Result<heed::RwTxn<'t>, (heed::RwTxn<'t>, StoreError)> {
        match self.spoiled {
            None => Ok(self.txn),
            Some(why) => Err((self.txn, why)),
        }
    }

    pub(crate) fn store_inner(&self) -> &'t Inner {
        self.inner
    }

    /// Runs `f` as a nested change: its writes stay in this transaction if it returns `Ok`
    /// and are taken back alone if it returns `Err`. What group commit uses so one failing
    /// change does not spoil the others in its batch.
    ///
    /// Not an LMDB nested transaction: a child transaction copies every page its parent has
    /// already dirtied the first time it touches one, and merges its dirty list back on
    /// commit, which cost the group writer about a third of its time. Instead each write
    /// inside remembers what it replaced (one more lookup), and a failure puts that back.
    ///
    /// One failure spoils the whole transaction: a write LMDB refused for any reason but the
    /// value's size (the map is full, the transaction has too many dirty pages, an I/O error)
    /// leaves LMDB's transaction unusable, and a failed change whose writes cannot all be put
    /// back leaves writes nobody asked for. Then `f` is not run, and the transaction does not
    /// commit: every change in it fails with that cause.
    pub fn nested<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if let Some(cause) = &self.spoiled {
            return Err(StoreError::Aborted {
                reason: format!("the transaction this change was in failed: {cause}").into(),
            });
        }
        let mark = self.undo.len();
        self.scopes += 1;
        let result = f(self);
        self.scopes -= 1;
        match result {
            Ok(value) => {
                if self.scopes == 0 {
                    self.undo.clear();
                }
                Ok(value)
            }
            Err(e) => {
                if self.spoiled.is_some() {
                    // Nothing can be taken back in a transaction LMDB has given up on, and
                    // nothing need be: it will not commit.
                    self.undo.truncate(mark);
                } else {
                    self.take_back(mark);
                }
                Err(e)
            }
        }
    }

    /// Undoes, newest first, the remembered writes after `mark`.
    fn take_back(&mut self, mark: usize) {
        while self.undo.len() > mark {
            let Some(undo) = self.undo.pop() else { break };
            let restored = match &undo.was {
                Some(was) => undo.db.put(&mut self.txn, &undo.key, was),
                None => undo.db.delete(&mut self.txn, &undo.key).map(drop),
            };
            if let Err(e) = restored {
                let inner = self.inner;
                self.spoiled.get_or_insert_with(|| {
                    inner.map_full_or(e, |e| StoreError::Aborted {
                        reason: format!(
                            "a failed change's write to {} {} could not be taken back: {e}",
                            undo.table,
                            show_key(&undo.key)
                        )
                        .into(),
                    })
                });
                self.undo.truncate(mark);
                return;
            }
        }
    }

    /// The error for a write LMDB refused. Anything but an oversized key or value leaves
    /// LMDB's transaction unusable, so the transaction is spoiled with the cause.
    fn refused(
        &mut self,
        op: &'static str,
        table: &'static str,
        key: &[u8],
        source: heed::Error,
    ) -> StoreError {
        let unusable = !matches!(source, heed::Error::Mdb(heed::MdbError::BadValSize));
        let error = self.inner.map_full_or(source, |source| StoreError::Write {
            op,
            table,
            key: show_key(key),
            source,
        });
        if unusable && self.spoiled.is_none() {
            self.spoiled = Some(match &error {
                StoreError::MapFull {
                    path,
                    map_size_mib,
                    ceiling_mib,
                } => StoreError::MapFull {
                    path: path.clone(),
                    map_size_mib: *map_size_mib,
                    ceiling_mib: *ceiling_mib,
                },
                other => StoreError::Aborted {
                    reason: format!("the store gave up on the transaction: {other}").into(),
                },
            });
        }
        error
    }

    /// Inside a [`WriteTxn::nested`] scope, remembers what `key` holds before a write to it.
    fn remember(&mut self, db: RawDb, table: &'static str, key: &[u8]) -> Result<(), StoreError> {
        if self.scopes == 0 {
            return Ok(());
        }
        let was = db
            .get(&self.txn, key)
            .map_err(|source| {
                self.inner.map_full_or(source, |source| StoreError::Read {
                    table,
                    key: show_key(key),
                    source,
                })
            })?
            .map(<[u8]>::to_vec);
        self.undo.push(Undo {
            db,
            table,
            key: key.to_vec(),
            was,
        });
        Ok(())
    }

    /// This transaction seen read-only (uncommitted writes included).
    fn reader(&self) -> ReadTxn<'_> {
        ReadTxn::new(&self.txn, self.inner)
    }

    /// Stores `value` under `key`, replacing any previous value.
    pub fn put<'k, 'v, K, V>(
        &mut self,
        table: Table<K, V>,
        key: &'k K::EItem,
        value: &'v V::EItem,
    ) -> Result<(), StoreError>
    where
        K: BytesEncode<'k>,
        V: BytesEncode<'v>,
    {
        let db = self.inner.db(table.name())?;
        let key = encode::<K>(table.name(), "key", key)?;
        let value = encode::<V>(table.name(), "value", value)?;
        self.remember(db, table.name(), &key)?;
        let written = db.put(&mut self.txn, &key, &value);
        written.map_err(|source| self.refused("put", table.name(), &key, source))
    }

    /// Removes `key`; `true` if it was present.
    pub fn delete<'k, K, V>(
        &mut self,
        table: Table<K, V>,
        key: &'k K::EItem,
    ) -> Result<bool, StoreError>
    where
        K: BytesEncode<'k>,
    {
        let db = self.inner.db(table.name())?;
        let key = encode::<K>(table.name(), "key", key)?;
        self.remember(db, table.name(), &key)?;
        let deleted = db.delete(&mut self.txn, &key);
        deleted.map_err(|source| self.refused("delete", table.name(), &key, source))
    }

    /// As [`ReadTxn::get`].
    pub fn get<'a, 'k, K, V>(
        &'a self,
        table: Table<K, V>,
        key: &'k K::EItem,
    ) -> Result<Option<V::DItem>, StoreError>
    where
        K: BytesEncode<'k>,
        V: BytesDecode<'a>,
    {
        self.reader().get(table, key)
    }

    /// As [`ReadTxn::iter_range`].
    pub fn iter_range<'a, 'r, K, V, R>(
        &'a self,
        table: Table<K, V>,
        range: &'r R,
    ) -> Result<Iter<'a, K, V>, StoreError>
    where
        K: BytesEncode<'r> + BytesDecode<'a>,
        V: BytesDecode<'a>,
        R: RangeBounds<<K as BytesEncode<'r>>::EItem>,
    {
        self.reader().iter_range(table, range)
    }

    /// As [`ReadTxn::iter_prefix`].
    pub fn iter_prefix<'a, 'p, K, V>(
        &'a self,
        table: Table<K, V>,
        prefix: &'p <K as BytesEncode<'p>>::EItem,
    ) -> Result<Iter<'a, K, V>, StoreError>
    where
        K: BytesEncode<'p> + BytesDecode<'a>,
        V: BytesDecode<'a>,
    {
        self.reader().iter_prefix(table, prefix)
    }
}

/// The raw LMDB cursor an [`Iter`] decodes from (a range or a prefix scan).
type RawIter<'t> = Box<dyn Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>> + 't>;

/// Decoded entries of a table in key order, from [`ReadTxn::iter_range`] or
/// [`ReadTxn::iter_prefix`]. Each item is a `Result`: a stored entry that does not decode is
/// reported, not skipped.
pub struct Iter<'t, K, V> {
    /// The undecoded entries.
    raw: RawIter<'t>,
    /// For error messages.
    inner: &'t Inner,
    /// For error messages.
    table: &'static str,
    /// The codecs, as types only.
    codecs: PhantomData<fn() -> (K, V)>,
}

impl<'t, K, V> Iter<'t, K, V> {
    fn new(raw: RawIter<'t>, inner: &'t Inner, table: &'static str) -> Self {
        Self {
            raw,
            inner,
            table,
            codecs: PhantomData,
        }
    }
}

impl<K, V> fmt::Debug for Iter<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl<'t, K, V> Iterator for Iter<'t, K, V>
where
    K: BytesDecode<'t>,
    V: BytesDecode<'t>,
{
    type Item = Result<(K::DItem, V::DItem), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (key, value) = match self.raw.next()? {
            Ok(entry) => entry,
            Err(source) => {
                let table = self.table;
                return Some(Err(self.inner.map_full_or(source, |source| {
                    StoreError::Iterate { table, source }
                })));
            }
        };
        let decoded = decode::<K>(self.table, "key", key, key)
            .and_then(|k| Ok((k, decode::<V>(self.table, "value", key, value)?)));
        Some(decoded)
    }
}

impl Inner {
    /// The database behind a declared table.
    pub(crate) fn db(&self, table: &'static str) -> Result<RawDb, StoreError> {
        self.tables
            .iter()
            .find(|(name, _)| *name == table)
            .map(|(_, db)| *db)
            .ok_or(StoreError::UnknownTable { table })
    }

    /// [`StoreError::MapFull`] if that is what `source` says, else `other(source)`.
    pub(crate) fn map_full_or(
        &self,
        source: heed::Error,
        other: impl FnOnce(LmdbError) -> StoreError,
    ) -> StoreError {
        if is_map_full(&source) {
            StoreError::MapFull {
                path: self.path.clone(),
                map_size_mib: self.map_size.load(std::sync::atomic::Ordering::Relaxed) / MIB,
                ceiling_mib: self.max_map_size / MIB,
            }
        } else {
            other(LmdbError(source))
        }
    }
}

/// One mebibyte.
pub(crate) const MIB: usize = 1024 * 1024;

fn encode<'a, C: BytesEncode<'a>>(
    table: &'static str,
    what: &'static str,
    item: &'a C::EItem,
) -> Result<Cow<'a, [u8]>, StoreError> {
    C::bytes_encode(item).map_err(|source| StoreError::Encode {
        what,
        table,
        source,
    })
}

fn decode<'a, C: BytesDecode<'a>>(
    table: &'static str,
    what: &'static str,
    key: &[u8],
    bytes: &'a [u8],
) -> Result<C::DItem, StoreError> {
    C::bytes_decode(bytes).map_err(|source| StoreError::Decode {
        what,
        table,
        key: show_key(key),
        source,
    })
}

fn encode_bound<'a, K: BytesEncode<'a>>(
    table: &'static str,
    bound: Bound<&'a K::EItem>,
) -> Result<Bound<Cow<'a, [u8]>>, StoreError> {
    Ok(match bound {
        Bound::Included(item) => Bound::Included(encode::<K>(table, "key", item)?),
        Bound::Excluded(item) => Bound::Excluded(encode::<K>(table, "key", item)?),
        Bound::Unbounded => Bound::Unbounded,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde::{Deserialize, Serialize};

    use crate::tables::{Bytes, Record, Str, Table, U64Be};
    use crate::{Store, StoreOptions};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Job {
        id: u64,
        name: String,
    }

    // Views of the `meta` table under other codecs, as a declared table would use them.
    const JOBS: Table<Str, Record<Job>> = Table::new("meta");
    const RAW: Table<Str, Bytes> = Table::new("meta");
    const NUMBERED: Table<U64Be, Bytes> = Table::new("meta");

    #[test]
    fn records_round_trip_through_a_table() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        let job = Job {
            id: 7,
            name: "build".into(),
        };
        store.write(|txn| txn.put(JOBS, "job/7", &job)).unwrap();
        let read = store.read(|txn| txn.get(JOBS, "job/7")).unwrap();
        assert_eq!(read, Some(job));
    }

    #[test]
    fn a_record_with_an_unknown_tag_names_table_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        store
            .write(|txn| txn.put(RAW, "job/7", &[2, 7, 5, b'b', b'u', b'i', b'l', b'd']))
            .unwrap();
        let error = store.read(|txn| txn.get(JOBS, "job/7")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "failed to decode the value at \"job/7\" in table meta: unknown record version tag 2 \
             (this build reads tag 1); was it written by a newer tinyci?"
        );
    }

    #[test]
    fn big_endian_keys_scan_in_numeric_order() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        store
            .write(|txn| {
                for n in [300u64, 2, 70_000, 1] {
                    txn.put(NUMBERED, &n, b"")?;
                }
                Ok(())
            })
            .unwrap();
        let keys: Vec<u64> = store
            .read(|txn| {
                txn.iter_range(NUMBERED, &(2..100_000))?
                    .map(|e| e.map(|(k, _)| k))
                    .collect()
            })
            .unwrap();
        assert_eq!(keys, [2, 300, 70_000]);
        let newest_first: Vec<u64> = store
            .read(|txn| {
                txn.iter_range_rev(NUMBERED, &(2..100_000))?
                    .map(|e| e.map(|(k, _)| k))
                    .take(2)
                    .collect()
            })
            .unwrap();
        assert_eq!(newest_first, [70_000, 300]);

        // Unbounded, the scan reaches `schema_version`, a key that is not 8 bytes: reported,
        // not misread as its first 8 bytes.
        let error = store
            .read(|txn| {
                txn.iter_range(NUMBERED, &(2..))?
                    .map(|e| e.map(|(k, _)| k))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "failed to decode the key at \"schema_version\" in table meta: \
             expected 8 bytes for a big-endian u64, found 14"
        );
    }
}
