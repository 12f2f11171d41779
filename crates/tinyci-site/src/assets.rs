//! The Cap'n Proto face of artifacts: the `AssetSink` a runner uploads through (bound to one
//! run and lease, and checked against both at `put` and again at `finish`), the `ByteSink`
//! of each artifact, listings, and downloads. Names, limits, bytes and rows are
//! `tinyci-assets`; this module adds the lease check and the session's liveness.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use sha2::{Digest, Sha256};
use tinyci_assets::{ArtifactError, ArtifactRecord, HashingSink, SinkError, shown};
use tinyci_core::{LeaseId, RunId};
use tinyci_schema::{artifact_info, asset_sink, byte_sink};
use tracing::info;

use crate::RunHandles;
use crate::membrane::Liveness;
use crate::rpc::{failed, read_text};
use crate::session::len;

/// Largest chunk a `ByteSink.write` may carry, and the chunk size of downloads (the wire
/// contract's limit).
const CHUNK: usize = 64 * 1024;

fn refusal(message: String) -> capnp::Error {
    capnp::Error::failed(message)
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
    artifacts: &tinyci_assets::ArtifactStore,
    run: RunId,
    name: &str,
    sink: byte_sink::Client,
) -> Result<(), capnp::Error> {
    let record = artifacts.get(run.get(), name).map_err(|e| failed(&e))?;
    let path = artifacts.blob(&record.sha256);
    let io = |e: std::io::Error| {
        refusal(format!(
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
        return Err(refusal(format!(
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
    handles: RunHandles,
    run: RunId,
    lease: LeaseId,
    liveness: Rc<Liveness>,
    in_flight: Rc<RefCell<InFlight>>,
}

impl AssetSinkCap {
    pub(crate) fn new(
        handles: RunHandles,
        run: RunId,
        lease: LeaseId,
        liveness: Rc<Liveness>,
    ) -> Self {
        Self {
            handles,
            run,
            lease,
            liveness,
            in_flight: Rc::default(),
        }
    }
}

/// Why an artifact upload is refused for its lease.
#[derive(Debug, thiserror::Error)]
enum LeaseRefusal {
    #[error("cannot read run {run}")]
    Queue {
        run: RunId,
        #[source]
        source: tinyci_queue::QueueError,
    },
    #[error("no run {0}")]
    NoRun(RunId),
    #[error(
        "artifacts of run {run} refused: the run already ended ({status}); upload artifacts \
         before completing it"
    )]
    Ended {
        run: RunId,
        status: tinyci_core::RunStatus,
    },
    #[error("artifacts of run {run} refused: lease {lease} is no longer the run's")]
    Lost { run: RunId, lease: LeaseId },
}

/// `Ok` with the run's repository while `lease` is the current lease of an unfinished `run`.
fn check_lease(
    queue: &tinyci_queue::Queue,
    run: RunId,
    lease: LeaseId,
) -> Result<String, LeaseRefusal> {
    let stored = queue
        .run(run)
        .map_err(|source| LeaseRefusal::Queue { run, source })?
        .ok_or(LeaseRefusal::NoRun(run))?;
    let status = stored.state.status();
    if status.is_final() {
        return Err(LeaseRefusal::Ended { run, status });
    }
    match stored.state.lease() {
        Some(current) if current.id == lease => Ok(stored.repo.clone()),
        _ => Err(LeaseRefusal::Lost { run, lease }),
    }
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
        let artifacts = &self.handles.artifacts;
        artifacts.admit(&name, size).map_err(|e| failed(&e))?;
        let repo =
            check_lease(&self.handles.queue, self.run, self.lease).map_err(|e| failed(&e))?;
        let storage = self.handles.queue.storage();
        storage.admit(&repo).map_err(|e| failed(&e))?;
        let (count, bytes) = artifacts
            .usage_besides(self.run.get(), &name)
            .map_err(|e| failed(&e))?;
        let reservation = {
            let mut in_flight = self.in_flight.borrow_mut();
            if in_flight.names.contains(&name) {
                return Err(refusal(format!(
                    "artifact {} refused: it is already being uploaded",
                    shown(&name)
                )));
            }
            tinyci_assets::check_run_limits(
                self.run.get(),
                &name,
                size,
                count + in_flight.names.len(),
                bytes.saturating_add(in_flight.bytes),
            )
            .map_err(|e| failed(&e))?;
            in_flight.names.insert(name.clone());
            in_flight.bytes = in_flight.bytes.saturating_add(size);
            Reservation {
                in_flight: self.in_flight.clone(),
                name: name.clone(),
                bytes: size,
            }
        };
        let sink = artifacts.upload(&name, size).map_err(|e| failed(&e))?;
        // Counted when admitted: a second upload right behind this one sees it.
        storage.add(&repo, size);
        let upload = ArtifactUpload {
            handles: self.handles.clone(),
            run: self.run,
            lease: self.lease,
            liveness: self.liveness.clone(),
            name,
            declared: size,
            state: RefCell::new(Some(Receiving {
                sink,
                _reservation: reservation,
            })),
            ended: RefCell::new(None),
        };
        results
            .get()
            .set_sink(crate::rpc::observed(&self.handles.metrics, upload));
        Ok(())
    }
}

/// `ByteSink` for one artifact: takes exactly the declared number of bytes.
struct ArtifactUpload {
    handles: RunHandles,
    run: RunId,
    lease: LeaseId,
    liveness: Rc<Liveness>,
    /// The artifact's (validated) name.
    name: String,
    /// The size given to `put`: no more bytes are taken, and no fewer finish.
    declared: u64,
    /// `None` once the upload ended (finished, or refused). Dropping it removes what was
    /// received.
    state: RefCell<Option<Receiving>>,
    /// Why it ended, once it did: repeated to every later call, since a streaming client
    /// may only learn of a refused `write` at `finish`.
    ended: RefCell<Option<String>>,
}

struct Receiving {
    sink: HashingSink,
    /// Released when the upload ends, however it ends.
    _reservation: Reservation,
}

impl ArtifactUpload {
    /// Ends the upload with an error (what was received goes with `receiving`).
    fn abandon(&self, receiving: Receiving, message: String) -> capnp::Error {
        drop(receiving);
        *self.ended.borrow_mut() = Some(message.clone());
        refusal(message)
    }

    /// The error for a call after the upload ended.
    fn ended(&self) -> capnp::Error {
        refusal(
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
            return Err(refusal(format!(
                "artifact {name}: a chunk of {} bytes refused; chunks are at most {CHUNK} bytes",
                chunk.len()
            )));
        }
        let mut state = self.state.borrow_mut();
        let Some(mut receiving) = state.take() else {
            return Err(self.ended());
        };
        match receiving.sink.put(chunk) {
            Ok(()) => {}
            Err(SinkError::TooLarge { .. }) => {
                return Err(self.abandon(
                    receiving,
                    format!(
                        "artifact {name} refused: more than the {} bytes declared at put arrived",
                        self.declared
                    ),
                ));
            }
            Err(e) => {
                let message = crate::rpc::chain(&ArtifactError::Sink {
                    name: self.name.clone(),
                    source: e,
                });
                return Err(self.abandon(receiving, message));
            }
        }
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
        let received = receiving.sink.size();
        if received != self.declared {
            return Err(self.abandon(
                receiving,
                format!(
                    "artifact {name} refused: {received} bytes arrived but {} were declared",
                    self.declared
                ),
            ));
        }
        if receiving.sink.digest().as_slice() != expected.as_slice() {
            return Err(self.abandon(
                receiving,
                format!("artifact {name} refused: SHA-256 mismatch (corrupted in transit)"),
            ));
        }
        if let Err(why) = check_lease(&self.handles.queue, self.run, self.lease) {
            return Err(self.abandon(receiving, crate::rpc::chain(&why)));
        }
        let Receiving { sink, _reservation } = receiving;
        *self.ended.borrow_mut() = Some(format!("artifact {name}: finish was already called"));
        let artifacts = &self.handles.artifacts;
        // fsync and rename off the RPC thread: the row is committed only once the bytes are
        // on disk, and the blob is kept from collection until then.
        let (stored, _pending) = artifacts
            .store_blob(&self.name, sink, expected)
            .await
            .map_err(|e| failed(&e))?;
        let run = self.run;
        let record = ArtifactRecord {
            name: self.name.clone(),
            size: stored.size,
            sha256: stored.sha256,
            stored_at_micros: i64::try_from(self.handles.now_ms())
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
            attempt: self.lease.0,
        };
        artifacts
            .record(run.get(), record)
            .await
            .map_err(|e| failed(&e))?;
        info!(%run, artifact = %self.name, size = stored.size, sha256 = %hex::encode(stored.sha256), "artifact stored");
        results.get().set_size(stored.size);
        Ok(())
    }
}
