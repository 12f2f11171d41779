//! Artifacts: files a run's command produced, uploaded by its runner through `Job.artifacts`
//! (an [`AssetSinkCap`] bound to that run and lease), stored content-addressed, listed and
//! downloaded through `LogReader`.
//!
//! The bytes are files under `<data>/artifacts/<sha256 hex>`: written to `incoming/`, hashed
//! as they arrive, checked against the declared size and the SHA-256 the runner sends at
//! `finish`, fsynced, then renamed into place (identical content is stored once). Only then
//! is the run's `artifacts` row (name, size, hash) committed through the group committer, so
//! a listed artifact always has its bytes. Like source archives, blobs live beside LMDB
//! rather than in it: they are large, written once and read sequentially.
//!
//! Names are checked here, whatever the runner checked: relative, `/`-separated, no `..`,
//! `.` or empty components, no NUL, backslash or control characters, bounded in length. The
//! runner is the one that resolves paths and refuses symlinks that leave its workdir; the
//! site only ever sees names and bytes, and never touches a path built from a name.
//!
//! Not yet: blobs no row refers to any more (an artifact replaced by a retry) are not
//! collected.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest, Sha256};
use tinyci_core::{LeaseId, RunId};
use tinyci_schema::{artifact_info, asset_sink, byte_sink};
use tinyci_store::records::{ArtifactRecord, artifact_key};
use tinyci_store::tables::ARTIFACTS;
use tinyci_store::{Store, StoreError};
use tracing::info;

use crate::Services;
use crate::membrane::Liveness;
use crate::rpc::read_text;
use crate::session::len;

/// Largest artifact accepted unless `artifacts.max_bytes` in site.toml says otherwise: big
/// enough for a build's binaries, small enough that one run cannot fill a disk by itself.
pub(crate) const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 256 * 1024 * 1024;
/// Most bytes of artifacts one run may keep, all artifacts together (and so the highest
/// `artifacts.max_bytes` may go).
pub(crate) const MAX_RUN_ARTIFACT_BYTES: u64 = 1024 * 1024 * 1024;
/// Most artifacts one run may keep: a listing stays one reasonable message.
pub(crate) const MAX_ARTIFACTS_PER_RUN: usize = 1000;
/// Longest artifact name, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 1024;
/// Longest component of an artifact name, in bytes (the usual file name limit).
pub(crate) const MAX_COMPONENT_BYTES: usize = 255;
/// Largest chunk a `ByteSink.write` may carry, and the chunk size of downloads (the wire
/// contract's limit).
const CHUNK: usize = 64 * 1024;

/// Why an artifact name is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is {len} bytes long; at most {MAX_NAME_BYTES} are allowed")]
    TooLong { len: usize },
    #[error(
        "the name is an absolute path; artifact names are relative to the run's working directory"
    )]
    Absolute,
    #[error("the name holds a '..' component, which would leave the run's working directory")]
    ParentDir,
    #[error("the name holds an empty or '.' component; send it normalized (a/b, not ./a//b)")]
    NotNormal,
    #[error("the name holds a NUL byte")]
    Nul,
    #[error("the name holds a backslash; directories are separated by '/'")]
    Backslash,
    #[error("the name holds a control character")]
    Control,
    #[error(
        "a component of the name is {len} bytes long; at most {MAX_COMPONENT_BYTES} are allowed"
    )]
    ComponentTooLong { len: usize },
}

/// Checks an artifact name: a normalized relative path that stays inside the workdir.
pub(crate) fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong { len: name.len() });
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    if name.contains('\\') {
        return Err(NameError::Backslash);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    for component in name.split('/') {
        match component {
            ".." => return Err(NameError::ParentDir),
            "" | "." => return Err(NameError::NotNormal),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(NameError::ComponentTooLong { len: c.len() });
            }
            _ => {}
        }
    }
    Ok(())
}

/// A name as it may appear in a message: quoted, and cut short if long.
fn shown(name: &str) -> String {
    const MAX: usize = 80;
    if name.len() <= MAX {
        return format!("{name:?}");
    }
    let mut end = MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &name[..end])
}

fn failed(message: String) -> capnp::Error {
    capnp::Error::failed(message)
}

/// Where a site keeps artifact bytes, and its per-artifact limit.
#[derive(Debug)]
pub(crate) struct ArtifactStore {
    /// `<data>/artifacts`: blobs named by their SHA-256 in hex, `incoming/` for uploads in
    /// progress.
    dir: PathBuf,
    /// Largest artifact accepted (`artifacts.max_bytes`).
    max_bytes: u64,
    /// Blobs being put in place whose rows are not committed yet: the retention sweeper
    /// must not take them for unreferenced.
    pending: std::cell::RefCell<std::collections::HashMap<[u8; 32], usize>>,
}

impl ArtifactStore {
    /// Creates `<data>/artifacts/incoming` if needed and clears uploads a previous process
    /// left unfinished. Call with the store open: its lock keeps other sites off `data_dir`.
    pub(crate) fn open(data_dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let dir = data_dir.join("artifacts");
        let incoming = dir.join("incoming");
        std::fs::create_dir_all(&incoming)?;
        for entry in std::fs::read_dir(&incoming)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "part") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(Self {
            dir,
            max_bytes,
            pending: std::cell::RefCell::default(),
        })
    }

    /// The file holding the content with this digest.
    pub(crate) fn blob(&self, sha256: &[u8; 32]) -> PathBuf {
        self.dir.join(hex::encode(sha256))
    }

    /// The directory of blobs.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a blob is being put in place right now.
    pub(crate) fn is_pending(&self, sha256: &[u8; 32]) -> bool {
        self.pending.borrow().contains_key(sha256)
    }

    /// Marks a blob pending until the returned guard drops.
    fn hold(self: &Rc<Self>, sha256: [u8; 32]) -> PendingBlob {
        *self.pending.borrow_mut().entry(sha256).or_default() += 1;
        PendingBlob {
            store: self.clone(),
            sha256,
        }
    }

    /// A fresh temporary file name in `incoming/`.
    fn temp(&self) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join("incoming")
            .join(format!("{}-{n}.part", std::process::id()))
    }
}

/// Keeps a blob out of the retention sweeper's hands while its row is being committed.
struct PendingBlob {
    store: Rc<ArtifactStore>,
    sha256: [u8; 32],
}

impl Drop for PendingBlob {
    fn drop(&mut self) {
        let mut pending = self.store.pending.borrow_mut();
        if let Some(count) = pending.get_mut(&self.sha256) {
            *count -= 1;
            if *count == 0 {
                pending.remove(&self.sha256);
            }
        }
    }
}

/// A run's stored artifacts, in name order.
pub(crate) fn list(store: &Store, run: RunId) -> Result<Vec<ArtifactRecord>, StoreError> {
    store.read(|txn| {
        txn.iter_prefix(ARTIFACTS, &run.get().to_be_bytes()[..])?
            .map(|entry| entry.map(|(_, record)| record))
            .collect()
    })
}

/// Writes `records` into a `LogReader.artifacts` result list.
pub(crate) fn fill_list(
    mut list: capnp::struct_list::Builder<'_, artifact_info::Owned>,
    records: &[ArtifactRecord],
) {
    for (i, record) in records.iter().enumerate() {
        let mut info = list.reborrow().get(len(i));
        info.set_name(&record.name);
        info.set_size(record.size);
        info.set_sha256(&record.sha256);
    }
}

/// Streams artifact `name` of `run` into `sink` in 64 KiB chunks with capnp flow control,
/// then finishes it with the recorded SHA-256 (so the receiver checks the bytes end to end).
/// Bytes that no longer match their recorded hash are never finished: the call fails.
pub(crate) async fn download(
    services: &Services,
    run: RunId,
    name: &str,
    sink: byte_sink::Client,
) -> Result<(), capnp::Error> {
    let record = services
        .store
        .read(|txn| txn.get(ARTIFACTS, &artifact_key(run.get(), name)[..]))
        .map_err(|e| failed(format!("cannot read the artifacts of run {run}: {e}")))?
        .ok_or_else(|| failed(format!("run {run} has no artifact {}", shown(name))))?;
    let path = services.artifacts.blob(&record.sha256);
    let io = |e: std::io::Error| {
        failed(format!(
            "cannot read artifact {} of run {run} at the site: {e}",
            shown(name)
        ))
    };
    let mut file = tokio::fs::File::open(&path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; CHUNK];
    loop {
        use tokio::io::AsyncReadExt;
        let n = file.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        sent += n as u64;
        if sent > record.size {
            break;
        }
        hasher.update(&buf[..n]);
        let mut request = sink.write_request();
        request.get().set_chunk(&buf[..n]);
        request.send().await?;
    }
    if sent != record.size || hasher.finalize().as_slice() != record.sha256 {
        return Err(failed(format!(
            "artifact {} of run {run} is corrupted at the site (its bytes no longer match the \
             recorded size and SHA-256); the download was not finished",
            shown(name)
        )));
    }
    let mut finish = sink.finish_request();
    finish.get().set_sha256(&record.sha256);
    finish.send().promise.await?;
    Ok(())
}

/// Uploads of one `AssetSink` that have not finished: counted against the run's limits
/// before their bytes arrive, so a runner learns at `put` that a batch will not fit.
#[derive(Debug, Default)]
struct InFlight {
    names: BTreeSet<String>,
    bytes: u64,
}

/// One upload's share of [`InFlight`], given back when the upload ends either way.
struct Reservation {
    in_flight: Rc<RefCell<InFlight>>,
    name: String,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.borrow_mut();
        in_flight.names.remove(&self.name);
        in_flight.bytes = in_flight.bytes.saturating_sub(self.bytes);
    }
}

/// `AssetSink` for one lease of one run, from `Job.artifacts`. Valid while the session is
/// live and the lease is the run's current one (checked at `put` and again at `finish`).
pub(crate) struct AssetSinkCap {
    services: Rc<Services>,
    run: RunId,
    lease: LeaseId,
    liveness: Rc<Liveness>,
    in_flight: Rc<RefCell<InFlight>>,
}

impl AssetSinkCap {
    pub(crate) fn new(
        services: Rc<Services>,
        run: RunId,
        lease: LeaseId,
        liveness: Rc<Liveness>,
    ) -> Self {
        Self {
            services,
            run,
            lease,
            liveness,
            in_flight: Rc::default(),
        }
    }
}

/// `Ok` while `lease` is the current lease of an unfinished `run`.
fn check_lease(services: &Services, run: RunId, lease: LeaseId) -> Result<(), String> {
    let stored = services
        .queue
        .run(run)
        .map_err(|e| format!("cannot read run {run}: {e}"))?
        .ok_or_else(|| format!("no run {run}"))?;
    let status = stored.state.status();
    if status.is_final() {
        return Err(format!(
            "artifacts of run {run} refused: the run already ended ({status}); upload \
             artifacts before completing it"
        ));
    }
    match stored.state.lease() {
        Some(current) if current.id == lease => Ok(()),
        _ => Err(format!(
            "artifacts of run {run} refused: lease {lease} is no longer the run's"
        )),
    }
}

/// The run's stored artifacts other than `name`: how many, and their bytes.
fn stored_usage(store: &Store, run: RunId, name: &str) -> Result<(usize, u64), StoreError> {
    store.read(|txn| {
        let mut count = 0;
        let mut bytes = 0u64;
        for entry in txn.iter_prefix(ARTIFACTS, &run.get().to_be_bytes()[..])? {
            let (_, record) = entry?;
            if record.name != name {
                count += 1;
                bytes = bytes.saturating_add(record.size);
            }
        }
        Ok((count, bytes))
    })
}

/// Refuses an artifact that would take the run past its count or byte limits, given what
/// the run already holds (`count`, `bytes`, the artifact itself not included).
fn check_run_limits(
    run: RunId,
    name: &str,
    size: u64,
    count: usize,
    bytes: u64,
) -> Result<(), String> {
    if count >= MAX_ARTIFACTS_PER_RUN {
        return Err(format!(
            "artifact {} refused: run {run} already has {count} artifacts, the most a run may \
             keep is {MAX_ARTIFACTS_PER_RUN}",
            shown(name)
        ));
    }
    if bytes.saturating_add(size) > MAX_RUN_ARTIFACT_BYTES {
        return Err(format!(
            "artifact {} refused: its {size} bytes would take run {run}'s artifacts to {} \
             bytes, over the per-run limit of {MAX_RUN_ARTIFACT_BYTES} bytes",
            shown(name),
            bytes.saturating_add(size)
        ));
    }
    Ok(())
}

impl asset_sink::Server for AssetSinkCap {
    async fn put(
        self: Rc<Self>,
        params: asset_sink::PutParams,
        mut results: asset_sink::PutResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let name = read_text(params.get_name(), "name")?;
        let size = params.get_size();
        validate_name(&name)
            .map_err(|why| failed(format!("artifact name {} refused: {why}", shown(&name))))?;
        let max = self.services.artifacts.max_bytes;
        if size > max {
            return Err(failed(format!(
                "artifact {} refused: it is {size} bytes, over this site's limit of {max} \
                 bytes per artifact (artifacts.max_bytes in site.toml)",
                shown(&name)
            )));
        }
        check_lease(&self.services, self.run, self.lease).map_err(failed)?;
        let (count, bytes) = stored_usage(&self.services.store, self.run, &name).map_err(|e| {
            failed(format!(
                "cannot read the artifacts of run {}: {e}",
                self.run
            ))
        })?;
        let reservation = {
            let mut in_flight = self.in_flight.borrow_mut();
            if in_flight.names.contains(&name) {
                return Err(failed(format!(
                    "artifact {} refused: it is already being uploaded",
                    shown(&name)
                )));
            }
            check_run_limits(
                self.run,
                &name,
                size,
                count + in_flight.names.len(),
                bytes.saturating_add(in_flight.bytes),
            )
            .map_err(failed)?;
            in_flight.names.insert(name.clone());
            in_flight.bytes = in_flight.bytes.saturating_add(size);
            Reservation {
                in_flight: self.in_flight.clone(),
                name: name.clone(),
                bytes: size,
            }
        };
        let tmp = self.services.artifacts.temp();
        let file = File::create(&tmp)
            .map_err(|e| failed(format!("cannot start storing an artifact: {e}")))?;
        let upload = ArtifactUpload {
            services: self.services.clone(),
            run: self.run,
            lease: self.lease,
            liveness: self.liveness.clone(),
            name,
            declared: size,
            state: RefCell::new(Some(Receiving {
                file,
                tmp,
                hasher: Sha256::new(),
                received: 0,
                _reservation: reservation,
            })),
            ended: RefCell::new(None),
        };
        results
            .get()
            .set_sink(crate::rpc::observed(&self.services, upload));
        Ok(())
    }
}

/// `ByteSink` for one artifact: takes exactly the declared number of bytes.
struct ArtifactUpload {
    services: Rc<Services>,
    run: RunId,
    lease: LeaseId,
    liveness: Rc<Liveness>,
    /// The artifact's (validated) name.
    name: String,
    /// The size given to `put`: no more bytes are taken, and no fewer finish.
    declared: u64,
    /// `None` once the upload ended (finished, or refused).
    state: RefCell<Option<Receiving>>,
    /// Why it ended, once it did: repeated to every later call, since a streaming client
    /// may only learn of a refused `write` at `finish`.
    ended: RefCell<Option<String>>,
}

struct Receiving {
    file: File,
    tmp: PathBuf,
    hasher: Sha256,
    received: u64,
    /// Released when the upload ends, however it ends.
    _reservation: Reservation,
}

impl Drop for ArtifactUpload {
    fn drop(&mut self) {
        // An upload abandoned before `finish` leaves nothing behind.
        if let Some(receiving) = self.state.get_mut().take() {
            let _ = std::fs::remove_file(&receiving.tmp);
        }
    }
}

impl ArtifactUpload {
    /// Ends the upload with an error, removing what was received.
    fn abandon(&self, receiving: Receiving, message: String) -> capnp::Error {
        let _ = std::fs::remove_file(&receiving.tmp);
        *self.ended.borrow_mut() = Some(message.clone());
        failed(message)
    }

    /// The error for a call after the upload ended.
    fn ended(&self) -> capnp::Error {
        failed(
            self.ended.borrow().clone().unwrap_or_else(|| {
                format!("artifact {}: the upload already ended", shown(&self.name))
            }),
        )
    }
}

impl byte_sink::Server for ArtifactUpload {
    async fn write(self: Rc<Self>, params: byte_sink::WriteParams) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let chunk = params.get()?.get_chunk()?;
        let name = shown(&self.name);
        if chunk.len() > CHUNK {
            return Err(failed(format!(
                "artifact {name}: a chunk of {} bytes refused; chunks are at most {CHUNK} bytes",
                chunk.len()
            )));
        }
        let mut state = self.state.borrow_mut();
        let Some(mut receiving) = state.take() else {
            return Err(self.ended());
        };
        let received = receiving.received + chunk.len() as u64;
        if received > self.declared {
            return Err(self.abandon(
                receiving,
                format!(
                    "artifact {name} refused: more than the {} bytes declared at put arrived",
                    self.declared
                ),
            ));
        }
        if let Err(e) = receiving.file.write_all(chunk) {
            return Err(self.abandon(
                receiving,
                format!("failed to store artifact {name} at the site: {e}"),
            ));
        }
        receiving.received = received;
        receiving.hasher.update(chunk);
        *state = Some(receiving);
        Ok(())
    }

    async fn finish(
        self: Rc<Self>,
        params: byte_sink::FinishParams,
        mut results: byte_sink::FinishResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let expected = params.get()?.get_sha256()?.to_vec();
        let name = shown(&self.name);
        let Some(receiving) = self.state.borrow_mut().take() else {
            return Err(self.ended());
        };
        if receiving.received != self.declared {
            let received = receiving.received;
            return Err(self.abandon(
                receiving,
                format!(
                    "artifact {name} refused: {received} bytes arrived but {} were declared",
                    self.declared
                ),
            ));
        }
        let digest: [u8; 32] = receiving.hasher.clone().finalize().into();
        if digest.as_slice() != expected.as_slice() {
            return Err(self.abandon(
                receiving,
                format!("artifact {name} refused: SHA-256 mismatch (corrupted in transit)"),
            ));
        }
        if let Err(why) = check_lease(&self.services, self.run, self.lease) {
            return Err(self.abandon(receiving, why));
        }
        let Receiving {
            file,
            tmp,
            _reservation,
            ..
        } = receiving;
        *self.ended.borrow_mut() = Some(format!("artifact {name}: finish was already called"));
        let dest = self.services.artifacts.blob(&digest);
        let _pending = self.services.artifacts.hold(digest);
        // fsync and rename off the RPC thread: the row is committed only once the bytes are
        // on disk.
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let stored = (|| {
                file.sync_all()?;
                drop(file);
                if dest.is_file() {
                    // Identical content is already stored.
                    return std::fs::remove_file(&tmp);
                }
                std::fs::rename(&tmp, &dest)?;
                let dir = dest.parent().unwrap_or(Path::new("."));
                File::open(dir)?.sync_all()
            })();
            if stored.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            stored
        })
        .await
        .map_err(|e| failed(format!("failed to store artifact {name}: {e}")))?
        .map_err(|e| failed(format!("failed to store artifact {name}: {e}")))?;

        let run = self.run;
        let size = self.declared;
        let record = ArtifactRecord {
            name: self.name.clone(),
            size,
            sha256: digest,
            stored_at_micros: i64::try_from(self.services.now_ms())
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
            attempt: self.lease.0,
        };
        let committed = self
            .services
            .committer
            .write(move |txn| {
                let mut count = 0;
                let mut bytes = 0u64;
                for entry in txn.iter_prefix(ARTIFACTS, &run.get().to_be_bytes()[..])? {
                    let (_, stored) = entry?;
                    if stored.name != record.name {
                        count += 1;
                        bytes = bytes.saturating_add(stored.size);
                    }
                }
                check_run_limits(run, &record.name, record.size, count, bytes)
                    .map_err(|why| StoreError::Aborted { reason: why.into() })?;
                txn.put(
                    ARTIFACTS,
                    &artifact_key(run.get(), &record.name)[..],
                    &record,
                )
            })
            .await;
        match committed {
            Ok(()) => {}
            Err(StoreError::Aborted { reason }) => return Err(failed(reason.to_string())),
            Err(e) => {
                return Err(failed(format!(
                    "failed to record artifact {name} of run {run}: {e}"
                )));
            }
        }
        info!(%run, artifact = %self.name, size, sha256 = %hex::encode(digest), "artifact stored");
        results.get().set_size(size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_that_stay_inside_the_workdir_are_accepted() {
        for name in [
            "report.txt",
            "out/a.bin",
            "deep/er/still.tar.gz",
            ".hidden",
            "a..b",
            "..a",
            "with space",
            "ünïcode/ファイル",
        ] {
            assert_eq!(validate_name(name), Ok(()), "{name:?}");
        }
        assert_eq!(validate_name(&"a".repeat(MAX_COMPONENT_BYTES)), Ok(()));
    }

    #[test]
    fn names_that_could_escape_or_mislead_are_refused_with_a_reason() {
        let long_component = "a".repeat(MAX_COMPONENT_BYTES + 1);
        let long_name = ["abc"; 300].join("/");
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("/etc/passwd", NameError::Absolute),
            ("..", NameError::ParentDir),
            ("../outside", NameError::ParentDir),
            ("out/../../outside", NameError::ParentDir),
            ("out/..", NameError::ParentDir),
            ("./a", NameError::NotNormal),
            ("a//b", NameError::NotNormal),
            ("a/", NameError::NotNormal),
            ("a\0b", NameError::Nul),
            ("..\\outside", NameError::Backslash),
            ("C:\\x", NameError::Backslash),
            ("line\nbreak", NameError::Control),
            (&long_component, NameError::ComponentTooLong { len: 256 }),
            (&long_name, NameError::TooLong { len: 1199 }),
        ];
        for (name, expected) in cases {
            assert_eq!(validate_name(name).as_ref(), Err(expected), "{name:?}");
        }
        assert_eq!(
            NameError::ParentDir.to_string(),
            "the name holds a '..' component, which would leave the run's working directory"
        );
    }

    #[test]
    fn long_names_are_cut_short_in_messages() {
        let long = "é".repeat(100);
        let shown = shown(&long);
        assert!(shown.ends_with('…') && shown.len() < 100, "{shown}");
        assert_eq!(super::shown("a.txt"), "\"a.txt\"");
    }

    #[test]
    fn run_limits_count_what_the_run_already_keeps() {
        let run = RunId(7);
        assert!(check_run_limits(run, "a", 10, 0, 0).is_ok());
        let full = check_run_limits(run, "a", 1, MAX_ARTIFACTS_PER_RUN, 0).unwrap_err();
        assert!(full.contains("already has 1000 artifacts"), "{full}");
        let over = check_run_limits(run, "a", 2, 1, MAX_RUN_ARTIFACT_BYTES - 1).unwrap_err();
        assert!(
            over.contains("over the per-run limit of 1073741824 bytes"),
            "{over}"
        );
    }
}
