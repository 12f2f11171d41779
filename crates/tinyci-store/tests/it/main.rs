//! Integration tests for `tinyci-store`: real LMDB environments in temporary directories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::Bound::Included;
use std::path::Path;

use expect_test::expect;
use serde::{Deserialize, Serialize};
use tinyci_store::tables::META;
use tinyci_store::{
    LOCK_FILE, Record, RecordError, SCHEMA_VERSION, SCHEMA_VERSION_KEY, Store, StoreError,
    StoreOptions,
};

fn open(dir: &Path) -> Result<Store, StoreError> {
    Store::open(dir, StoreOptions::default())
}

/// An error's message with the temporary directory replaced by `$DIR`.
fn message(error: &StoreError, dir: &Path) -> String {
    error
        .to_string()
        .replace(&dir.display().to_string(), "$DIR")
}

fn stored_version(store: &Store) -> Option<Vec<u8>> {
    store
        .read(|txn| Ok(txn.get(META, SCHEMA_VERSION_KEY)?.map(<[u8]>::to_vec)))
        .unwrap()
}

#[test]
fn fresh_open_creates_the_directory_and_writes_the_schema_version() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let store = open(&dir).unwrap();

    assert_eq!(store.path(), dir);
    assert_eq!(store.schema_version(), SCHEMA_VERSION);
    assert_eq!(
        stored_version(&store),
        Some(SCHEMA_VERSION.to_be_bytes().to_vec())
    );
    assert!(dir.join(LOCK_FILE).is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "data dir is readable by others: {mode:o}");
    }
}

#[test]
fn reopen_keeps_data() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).unwrap();
    store
        .write(|txn| txn.put(META, "greeting", b"hello"))
        .unwrap();
    drop(store);

    let store = open(tmp.path()).unwrap();
    let greeting = store
        .read(|txn| Ok(txn.get(META, "greeting")?.map(<[u8]>::to_vec)))
        .unwrap();
    assert_eq!(greeting.as_deref(), Some(&b"hello"[..]));
    assert_eq!(store.schema_version(), SCHEMA_VERSION);
}

#[test]
fn a_store_from_a_newer_tinyci_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).unwrap();
    store
        .write(|txn| txn.put(META, SCHEMA_VERSION_KEY, &999u32.to_be_bytes()))
        .unwrap();
    drop(store);

    let error = open(tmp.path()).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::NewerSchema {
                found: 999,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{error:?}"
    );
    expect![[r#"store at $DIR was written by a newer tinyci (schema version 999; this build supports up to 1); upgrade tinyci or point data_dir elsewhere"#]]
        .assert_eq(&message(&error, tmp.path()));

    // The refused open released its lock and wrote nothing: the store still says 999.
    let error = open(tmp.path()).unwrap_err();
    assert!(
        matches!(error, StoreError::NewerSchema { found: 999, .. }),
        "{error:?}"
    );
}

#[test]
fn a_malformed_schema_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).unwrap();
    store
        .write(|txn| txn.put(META, SCHEMA_VERSION_KEY, b"one"))
        .unwrap();
    drop(store);

    let error = open(tmp.path()).unwrap_err();
    expect![[r#"store at $DIR has a malformed schema_version (3 bytes; expected 4)"#]]
        .assert_eq(&message(&error, tmp.path()));
}

#[test]
fn a_store_with_no_migration_path_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).unwrap();
    store
        .write(|txn| txn.put(META, SCHEMA_VERSION_KEY, &0u32.to_be_bytes()))
        .unwrap();
    drop(store);

    let error = open(tmp.path()).unwrap_err();
    expect![[r#"store at $DIR has schema version 0, which this build cannot migrate"#]]
        .assert_eq(&message(&error, tmp.path()));
}

#[test]
fn a_second_open_of_the_same_directory_is_locked_out() {
    let tmp = tempfile::tempdir().unwrap();
    let first = open(tmp.path()).unwrap();

    // The lock belongs to the open file description, so it holds within one process too.
    let error = open(tmp.path()).unwrap_err();
    assert!(matches!(error, StoreError::Locked { .. }), "{error:?}");
    expect![[r#"another tinyci process holds $DIR/LOCK"#]].assert_eq(&message(&error, tmp.path()));

    // A clone shares the first open; dropping every clone releases the directory.
    let clone = first.clone();
    drop(first);
    assert!(matches!(open(tmp.path()), Err(StoreError::Locked { .. })));
    drop(clone);
    open(tmp.path()).unwrap();
}

#[test]
fn ten_thousand_records_fit_in_one_transaction() {
    // LMDB's default 1 MiB map fills after a few hundred records like these; this one
    // transaction writes about 2.5 MiB.
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).unwrap();
    let value = |i: u32| {
        let mut value = i.to_be_bytes().to_vec();
        value.resize(256, 0xab);
        value
    };

    store
        .write(|txn| {
            for i in 0..10_000u32 {
                txn.put(META, &format!("rec/{i:05}"), &value(i))?;
            }
            Ok(())
        })
        .unwrap();

    store
        .read(|txn| {
            let mut count = 0u32;
            for entry in txn.iter_prefix(META, "rec/")? {
                let (key, stored) = entry?;
                assert_eq!(key, format!("rec/{count:05}"), "keys come back in order");
                assert_eq!(stored, value(count));
                count += 1;
            }
            assert_eq!(count, 10_000);

            let some: Vec<_> = txn
                .iter_range(META, &(Included("rec/00010"), Included("rec/00012")))?
                .map(|entry| entry.map(|(key, _)| key.to_owned()))
                .collect::<Result<_, _>>()?;
            assert_eq!(some, ["rec/00010", "rec/00011", "rec/00012"]);
            assert_eq!(txn.get(META, "rec/09999")?, Some(&value(9999)[..]));
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_map_that_is_too_small_fails_with_advice() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(
        tmp.path(),
        StoreOptions {
            map_size: 1024 * 1024,
            max_map_size: 1024 * 1024,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let error = store
        .write(|txn| {
            for i in 0..10_000u32 {
                txn.put(META, &format!("rec/{i:05}"), &[0u8; 256])?;
            }
            Ok(())
        })
        .unwrap_err();
    expect![[r#"store at $DIR is full: this write did not fit in its LMDB map of 1 MiB (ceiling 1 MiB); free space or raise store.max_map_size_mib in site.toml"#]]
        .assert_eq(&message(&error, tmp.path()));
}

/// The map doubles as it fills, up to its ceiling; a write past the ceiling is refused, the
/// store keeps everything committed before it and takes smaller writes, and a store reopened
/// after growing keeps its grown map.
#[test]
fn the_map_grows_to_its_ceiling_then_refuses_clearly() {
    const MIB: usize = 1024 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        map_size: MIB,
        max_map_size: 4 * MIB,
        ..StoreOptions::default()
    };
    let store = Store::open(tmp.path(), options.clone()).unwrap();
    assert_eq!(store.map_size(), (MIB, 4 * MIB));
    // 64 KiB per write: far more than the first map holds in all.
    let mut written = 0u32;
    let refusal = loop {
        match store.write(|txn| txn.put(META, &format!("blob/{written:05}"), &[7u8; 64 * 1024])) {
            Ok(()) => written += 1,
            Err(error) => break error,
        }
        assert!(written < 1000, "a 4 MiB ceiling cannot hold 64 MiB");
    };
    assert!(
        written > 24,
        "the map grew past its first MiB before refusing: {written} writes of 64 KiB"
    );
    assert_eq!(store.map_size(), (4 * MIB, 4 * MIB));
    expect![[r#"store at $DIR is full: this write did not fit in its LMDB map of 4 MiB (ceiling 4 MiB); free space or raise store.max_map_size_mib in site.toml"#]]
        .assert_eq(&message(&refusal, tmp.path()));
    // Reads still answer, and so does a smaller write.
    let first = store
        .read(|txn| Ok(txn.get(META, "blob/00000")?.map(<[u8]>::len)))
        .unwrap();
    assert_eq!(first, Some(64 * 1024));
    store.write(|txn| txn.put(META, "small", b"fits")).unwrap();
    drop(store);
    // Reopened with the original options, it keeps the grown map and every write.
    let store = Store::open(tmp.path(), options).unwrap();
    assert_eq!(store.map_size().0, 4 * MIB);
    let count = store
        .read(|txn| Ok(txn.iter_prefix(META, "blob/")?.count()))
        .unwrap();
    assert_eq!(count, written as usize);
}

#[test]
fn a_failed_write_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).unwrap();
    store.write(|txn| txn.put(META, "kept", b"before")).unwrap();

    let error = store
        .write(|txn| -> Result<(), _> {
            txn.put(META, "new", b"x")?;
            txn.put(META, "kept", b"after")?;
            assert!(txn.delete(META, SCHEMA_VERSION_KEY)?);
            // The transaction sees its own writes...
            assert_eq!(txn.get(META, "new")?, Some(&b"x"[..]));
            Err(StoreError::Aborted {
                reason: "changed my mind".into(),
            })
        })
        .unwrap_err();
    expect![[r#"write transaction aborted: changed my mind"#]].assert_eq(&error.to_string());

    // ...and none of them survive the abort.
    store
        .read(|txn| {
            assert_eq!(txn.get(META, "new")?, None);
            assert_eq!(txn.get(META, "kept")?, Some(&b"before"[..]));
            assert!(txn.get(META, SCHEMA_VERSION_KEY)?.is_some());
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_nested_write_fails_instead_of_deadlocking() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).unwrap();
    let error = store
        .write(|_| store.write(|txn| txn.put(META, "inner", b"x")))
        .unwrap_err();
    assert!(matches!(error, StoreError::NestedWrite { .. }), "{error:?}");
    // The guard is released: writing works again.
    store.write(|txn| txn.put(META, "after", b"x")).unwrap();
    // Reads may nest inside reads and writes.
    store
        .write(|_| store.read(|r| r.get(META, "nothing").map(drop)))
        .unwrap();
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u64,
    name: String,
}

#[test]
fn records_round_trip_with_their_version_tag() {
    let job = Job {
        id: 7,
        name: "build".into(),
    };
    let bytes = Record::encode(&job).unwrap();
    assert_eq!(bytes[0], tinyci_store::RECORD_VERSION);
    assert_eq!(Record::<Job>::decode(&bytes).unwrap(), job);
}

#[test]
fn records_with_an_unknown_version_tag_are_refused() {
    let mut bytes = Record::encode(&Job {
        id: 7,
        name: "build".into(),
    })
    .unwrap();
    bytes[0] = 2;
    let error = Record::<Job>::decode(&bytes).unwrap_err();
    assert!(
        matches!(
            error,
            RecordError::UnknownVersion {
                found: 2,
                supported: 1
            }
        ),
        "{error:?}"
    );
    expect![[r#"unknown record version tag 2 (this build reads tag 1); was it written by a newer tinyci?"#]]
        .assert_eq(&error.to_string());

    let error = Record::<Job>::decode(&[]).unwrap_err();
    expect![[r#"empty record: no version tag"#]].assert_eq(&error.to_string());

    let mut bytes = Record::encode(&Job {
        id: 7,
        name: "build".into(),
    })
    .unwrap();
    bytes.push(0);
    let error = Record::<Job>::decode(&bytes).unwrap_err();
    expect![[r#"1 unexpected trailing bytes after the record"#]].assert_eq(&error.to_string());
}

#[test]
fn store_is_clone_send_sync() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<Store>();
}

mod group_commit {
    //! The group committer batches concurrent changes into shared durable commits.

    use futures::future::join_all;
    use tinyci_store::tables::META;
    use tinyci_store::{GroupCommitter, Store, StoreError, StoreOptions};

    #[test]
    fn concurrent_changes_all_commit_and_are_visible_once_acknowledged() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        let (committer, writer) = GroupCommitter::start(store.clone()).unwrap();
        let writes = (0..500u32).map(|i| {
            let committer = committer.clone();
            let store = store.clone();
            async move {
                let key = format!("k{i:04}");
                let stored = key.clone();
                committer
                    .write(move |txn| txn.put(META, stored.as_str(), &i.to_be_bytes()[..]))
                    .await
                    .unwrap();
                // Acknowledged means committed: a new read transaction sees it.
                let seen = store
                    .read(|txn| Ok(txn.get(META, key.as_str())?.map(<[u8]>::to_vec)))
                    .unwrap();
                assert_eq!(seen.as_deref(), Some(&i.to_be_bytes()[..]));
            }
        });
        futures::executor::block_on(join_all(writes));
        drop(committer);
        writer.join();
        let count = store
            .read(|txn| Ok(txn.iter_prefix(META, "k")?.count()))
            .unwrap();
        assert_eq!(count, 500);
    }

    #[test]
    fn the_writer_reports_stopping_once_the_last_committer_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        let (committer, mut writer) = GroupCommitter::start(store.clone()).unwrap();
        let other = committer.clone();
        futures::executor::block_on(other.write(|txn| txn.put(META, "k", b"1".as_slice())))
            .unwrap();
        drop(committer);
        assert!(
            futures::executor::block_on(futures::future::poll_immediate(writer.stopped()))
                .is_none(),
            "the writer stopped while a committer was alive"
        );
        drop(other);
        // Resolves (the thread is ending), and joining returns at once.
        futures::executor::block_on(writer.stopped());
        writer.join();
    }

    /// A change too big for the map fails as "full", and the store grows for the next: LMDB
    /// gives up on a transaction that ran out of map, so the batch fails as a whole and the
    /// map grows, and the same change sent again commits.
    #[test]
    fn a_change_that_fills_the_map_grows_it_for_the_next() {
        const MIB: usize = 1024 * 1024;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(
            tmp.path(),
            StoreOptions {
                map_size: MIB,
                max_map_size: 16 * MIB,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let (committer, writer) = GroupCommitter::start(store.clone()).unwrap();
        let big = || {
            committer.write(|txn| {
                // 1.5 MiB: more than the first map, less than the doubled one.
                for i in 0..6u32 {
                    txn.put(META, &format!("big/{i}"), &[1u8; 256 * 1024][..])?;
                }
                Ok(())
            })
        };
        let first = futures::executor::block_on(big()).unwrap_err();
        assert!(matches!(first, StoreError::MapFull { .. }), "{first}");
        assert!(store.map_size().0 > MIB, "the map did not grow");
        futures::executor::block_on(big()).unwrap();
        drop(committer);
        writer.join();
        let count = store
            .read(|txn| Ok(txn.iter_prefix(META, "big/")?.count()))
            .unwrap();
        assert_eq!(count, 6);
    }

    #[test]
    fn a_failing_change_is_rolled_back_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        let (committer, writer) = GroupCommitter::start(store.clone()).unwrap();
        let good = committer.write(|txn| txn.put(META, "good", b"1".as_slice()));
        let bad = committer.write(|txn| {
            txn.put(META, "bad", b"1".as_slice())?;
            Err::<(), _>(StoreError::Aborted {
                reason: "refused by the caller".into(),
            })
        });
        let also_good = committer.write(|txn| txn.put(META, "also-good", b"1".as_slice()));
        let (good, bad, also_good) =
            futures::executor::block_on(async { futures::join!(good, bad, also_good) });
        good.unwrap();
        also_good.unwrap();
        let err = bad.unwrap_err();
        assert!(err.to_string().contains("refused by the caller"), "{err}");
        drop(committer);
        writer.join();
        store
            .read(|txn| {
                assert!(txn.get(META, "good")?.is_some());
                assert!(txn.get(META, "also-good")?.is_some());
                assert!(
                    txn.get(META, "bad")?.is_none(),
                    "the failed change leaked a write"
                );
                Ok(())
            })
            .unwrap();
    }
}

/// A failed nested change takes back exactly its own writes, whatever they were (a new key, an
/// overwrite, a delete, the same key twice), in the same transaction as changes that stand,
/// before and after it; a failure inside an inner scope takes back only that scope's writes.
#[test]
fn a_failed_nested_change_takes_back_exactly_its_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).unwrap();
    store
        .write(|txn| {
            txn.put(META, "kept", b"old".as_slice())?;
            txn.put(META, "doomed", b"here".as_slice())?;
            Ok(())
        })
        .unwrap();
    let refused = || StoreError::Aborted {
        reason: "refused".into(),
    };
    store
        .write(|txn| {
            txn.nested(|txn| txn.put(META, "before", b"1".as_slice()))?;
            let failed = txn.nested(|txn| {
                txn.put(META, "kept", b"new".as_slice())?;
                txn.put(META, "kept", b"newer".as_slice())?;
                txn.delete(META, "doomed")?;
                txn.put(META, "fresh", b"1".as_slice())?;
                // Its own writes are visible to it until it fails.
                assert_eq!(txn.get(META, "kept")?, Some(b"newer".as_slice()));
                Err::<(), _>(refused())
            });
            assert!(failed.is_err());
            txn.nested(|txn| {
                txn.put(META, "outer", b"1".as_slice())?;
                let inner = txn.nested(|txn| {
                    txn.put(META, "outer", b"2".as_slice())?;
                    txn.put(META, "inner", b"1".as_slice())?;
                    Err::<(), _>(refused())
                });
                assert!(inner.is_err());
                txn.put(META, "after-inner", b"1".as_slice())
            })?;
            // An inner scope that succeeded is taken back with the outer one that failed.
            let outer = txn.nested(|txn| {
                txn.put(META, "kept", b"outer".as_slice())?;
                txn.nested(|txn| {
                    txn.delete(META, "before")?;
                    txn.put(META, "inner-ok", b"1".as_slice())
                })?;
                Err::<(), _>(refused())
            });
            assert!(outer.is_err());
            Ok(())
        })
        .unwrap();
    store
        .read(|txn| {
            let get = |key: &str| txn.get(META, key).map(|v| v.map(<[u8]>::to_vec));
            assert_eq!(get("kept")?, Some(b"old".to_vec()), "an overwrite stayed");
            assert_eq!(get("doomed")?, Some(b"here".to_vec()), "a delete stayed");
            assert_eq!(get("fresh")?, None, "a new key stayed");
            assert_eq!(get("before")?, Some(b"1".to_vec()));
            assert_eq!(
                get("outer")?,
                Some(b"1".to_vec()),
                "the inner scope's write stayed"
            );
            assert_eq!(get("inner")?, None);
            assert_eq!(get("after-inner")?, Some(b"1".to_vec()));
            assert_eq!(
                get("inner-ok")?,
                None,
                "a succeeded inner scope outlived its outer"
            );
            Ok(())
        })
        .unwrap();
}

/// Log records written before records held several streams (tag 1, one `LogChunk`) read as
/// one-span records; new ones are written under tag 2 and read back as written.
#[test]
fn log_records_of_both_tags_read() {
    use tinyci_store::records::{LogChunk, LogRecord, LogSpan};
    use tinyci_store::tables::{LOG_CHUNKS, LogCodec, Record};

    let old = LogChunk {
        stream: 1,
        timestamp_micros: 42,
        data: b"err".to_vec(),
    };
    let legacy = Record::<LogChunk>::encode(&old).unwrap();
    assert_eq!(legacy[0], 1);
    let read = LogCodec::decode(&legacy).unwrap();
    assert_eq!(
        read,
        LogRecord {
            timestamp_micros: 42,
            spans: vec![LogSpan { stream: 1, len: 3 }],
            data: b"err".to_vec(),
        }
    );

    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).unwrap();
    let mixed = LogRecord {
        timestamp_micros: 7,
        spans: vec![LogSpan { stream: 0, len: 2 }, LogSpan { stream: 1, len: 1 }],
        data: b"okE".to_vec(),
    };
    store
        .write(|txn| txn.put(LOG_CHUNKS, &[0u8; 16][..], &mixed))
        .unwrap();
    let back = store
        .read(|txn| txn.get(LOG_CHUNKS, &[0u8; 16][..]))
        .unwrap();
    assert_eq!(back, Some(mixed.clone()));
    let chunks: Vec<(u64, u8, Vec<u8>)> = mixed
        .into_chunks(10, 11)
        .into_iter()
        .map(|(at, c)| (at, c.stream, c.data))
        .collect();
    assert_eq!(chunks, vec![(11, 0, b"k".to_vec()), (12, 1, b"E".to_vec())]);
    // A tag from the future is refused, not misread.
    assert!(LogCodec::decode(&[3, 0]).is_err());
}
