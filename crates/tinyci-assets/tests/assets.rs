//! Sources, artifacts and the hashing sink on real files and a real LMDB store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sha2::{Digest, Sha256};
use tinyci_assets::{
    ArtifactError, ArtifactRecord, ArtifactStore, HashingSink, ImportError, SinkError, SourceStore,
};
use tinyci_store::{GroupCommitter, Store, StoreOptions};

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_sink_hashes_limits_checks_and_leaves_nothing_when_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.bin");

    let mut sink = HashingSink::create_in(dir.path(), 10).unwrap();
    sink.put(b"hello").unwrap();
    sink.put(b"world").unwrap();
    let refused = sink.put(b"!").unwrap_err();
    assert!(
        matches!(refused, SinkError::TooLarge { limit: 10 }),
        "{refused}"
    );
    assert_eq!(sink.size(), 10, "a refused write takes nothing");
    let stored = sink
        .finish(Some(&sha(b"helloworld")), |_| dest.clone())
        .unwrap();
    assert_eq!(stored.size, 10);
    assert_eq!(stored.sha256, sha(b"helloworld"));
    assert_eq!(std::fs::read(&dest).unwrap(), b"helloworld");

    let mut sink = HashingSink::create_in(dir.path(), 10).unwrap();
    sink.put(b"evil").unwrap();
    let mismatch = sink
        .finish(Some(&sha(b"good")), |_| dest.clone())
        .unwrap_err();
    assert!(matches!(mismatch, SinkError::Digest), "{mismatch}");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        b"helloworld",
        "dest untouched"
    );

    let mut sink = HashingSink::create_in(dir.path(), 10).unwrap();
    sink.put(b"partial").unwrap();
    drop(sink);
    assert_eq!(
        files_in(dir.path()),
        vec!["out.bin"],
        "no temporary file is left"
    );
}

#[test]
fn an_upload_is_stored_under_its_digest_and_task_files_are_read_from_it() {
    let data = tempfile::tempdir().unwrap();
    let sources = SourceStore::open(data.path()).unwrap();
    let mut archive = tar::Builder::new(Vec::new());
    for (path, text) in [
        ("tinyci.yml", "queue: q\n"),
        ("build/task.yml", "mountpoint: /x\n"),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive
            .append_data(&mut header, path, text.as_bytes())
            .unwrap();
    }
    let bytes = archive.into_inner().unwrap();
    let mut upload = sources.upload().unwrap();
    upload.put(&bytes).unwrap();
    let stored = upload.finish(&sha(&bytes)).unwrap();
    let path = sources.path(&stored.sha256).expect("stored");
    let files = tinyci_assets::task_files(&path).unwrap();
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        vec!["build/task.yml", "tinyci.yml"]
    );
    assert!(sources.path(&sha(b"never uploaded")).is_none());
    assert!(sources.path(b"short").is_none());
}

fn github_tarball(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..`; write the name into the header as GitHub's server could.
        let name = header.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        archive.append(&header, *bytes).unwrap();
    }
    archive.into_inner().unwrap().finish().unwrap()
}

#[test]
fn a_github_tarball_is_rebased_at_its_top_directory_and_escapes_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let sources = SourceStore::open(data.path()).unwrap();
    let tarball = github_tarball(&[("o-r-abc/tinyci.yml", b"queue: q\n")]);
    let digest = sources.import_github_tarball(&tarball).unwrap();
    let files = tinyci_assets::task_files(&sources.path(&digest).unwrap()).unwrap();
    assert_eq!(files["tinyci.yml"], "queue: q\n");

    let evil = github_tarball(&[("o-r-abc/../../etc/passwd", b"x")]);
    let refused = sources.import_github_tarball(&evil).unwrap_err();
    assert!(matches!(refused, ImportError::LeavesTree(_)), "{refused}");
    assert_eq!(
        files_in(&data.path().join("sources/incoming")),
        Vec::<String>::new(),
        "a refused import leaves nothing behind"
    );
}

fn artifact_store(data: &std::path::Path, max: u64) -> (ArtifactStore, tempfile::TempDir) {
    let db = tempfile::tempdir().unwrap();
    let store = Store::open(db.path(), StoreOptions::default()).unwrap();
    let (committer, _writer) = GroupCommitter::start(store.clone()).unwrap();
    (
        ArtifactStore::open(data, max, store, committer).unwrap(),
        db,
    )
}

fn run_local<F: std::future::Future>(test: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, test)
}

#[test]
fn artifacts_are_admitted_stored_listed_and_collected_once_unnamed() {
    run_local(async {
        let data = tempfile::tempdir().unwrap();
        let (artifacts, _db) = artifact_store(data.path(), 100);
        let bad = artifacts.admit("../x", 1).unwrap_err();
        assert!(matches!(bad, ArtifactError::Name { .. }), "{bad}");
        let big = artifacts.admit("big.bin", 101).unwrap_err();
        assert!(
            big.to_string()
                .contains("over this site's limit of 100 bytes"),
            "{big}"
        );
        artifacts.admit("out/report.txt", 5).unwrap();

        let mut sink = artifacts.upload("out/report.txt", 5).unwrap();
        sink.put(b"hello").unwrap();
        let (stored, pending) = artifacts
            .store_blob("out/report.txt", sink, sha(b"hello").to_vec())
            .await
            .unwrap();
        // Not yet recorded, but being put in place: collection keeps it.
        assert_eq!(artifacts.collect_blobs().unwrap(), 0);
        let record = ArtifactRecord {
            name: "out/report.txt".into(),
            size: stored.size,
            sha256: stored.sha256,
            stored_at_micros: 0,
            attempt: 1,
        };
        artifacts.record(7, record).await.unwrap();
        drop(pending);
        assert_eq!(artifacts.collect_blobs().unwrap(), 0, "named by a row");
        let listed = artifacts.list(7).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            std::fs::read(artifacts.blob(&listed[0].sha256)).unwrap(),
            b"hello"
        );
        let missing = artifacts.get(7, "nope").unwrap_err();
        assert!(
            matches!(missing, ArtifactError::Missing { run: 7, .. }),
            "{missing}"
        );

        assert_eq!(artifacts.usage().await.unwrap()[&7], (1, 5));
        artifacts.remove_runs(vec![7]).await.unwrap();
        assert!(artifacts.list(7).unwrap().is_empty());
        assert_eq!(artifacts.collect_blobs().unwrap(), 1);
        assert!(!artifacts.blob(&stored.sha256).exists());
    });
}

#[test]
fn only_unreferenced_archives_older_than_the_cutoff_are_removed() {
    let data = tempfile::tempdir().unwrap();
    let sources = SourceStore::open(data.path()).unwrap();
    let store = |bytes: &[u8]| {
        let mut upload = sources.upload().unwrap();
        upload.put(bytes).unwrap();
        upload.finish(&sha(bytes)).unwrap().sha256
    };
    let (submitted, abandoned, fresh) = (store(b"submitted"), store(b"abandoned"), store(b"fresh"));
    let written = |sha: &[u8]| {
        std::fs::metadata(sources.path(sha).unwrap())
            .unwrap()
            .modified()
            .unwrap()
    };
    let (first, last) = (written(&abandoned), written(&fresh));
    let keep = std::collections::BTreeSet::from([submitted.to_vec()]);
    // Before the cutoff passes them, nothing goes.
    assert_eq!(sources.remove_unreferenced(&keep, first).unwrap(), (0, 0));
    // Past it, the unreferenced ones go and the referenced one stays.
    let later = last + std::time::Duration::from_secs(3600);
    let (count, bytes) = sources.remove_unreferenced(&keep, later).unwrap();
    assert_eq!(
        (count, bytes),
        (2, (b"abandoned".len() + b"fresh".len()) as u64)
    );
    assert!(sources.path(&submitted).is_some());
    assert!(sources.path(&abandoned).is_none() && sources.path(&fresh).is_none());
}

#[test]
fn an_upload_stops_at_the_limit_it_was_given() {
    let data = tempfile::tempdir().unwrap();
    let sources = SourceStore::open(data.path()).unwrap();
    let mut upload = sources.upload_at_most(8).unwrap();
    upload.put(b"12345678").unwrap();
    let refused = upload.put(b"9").unwrap_err();
    assert!(
        matches!(refused, SinkError::TooLarge { limit: 8 }),
        "{refused:?}"
    );
}
