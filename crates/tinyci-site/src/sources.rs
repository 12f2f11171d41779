//! The Cap'n Proto face of source archives: the `ByteSink` a submitter uploads through and
//! the stream a runner's `Job.source` receives, and what one holder may make the site keep
//! before submitting ([`UploadLedger`]). Storage is `tinyci-assets`.
//!
//! An uploaded archive no submission names is removed by the retention sweep once it is
//! [`UNSUBMITTED_UPLOAD_TTL`] old; until then it counts against its uploader's quota
//! ([`MAX_UNSUBMITTED_UPLOADS`], [`MAX_UNSUBMITTED_BYTES`]), so a holder cannot fill the disk
//! by uploading without submitting.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tinyci_assets::{SinkError, SourceUpload};
use tinyci_schema::byte_sink;

use crate::membrane::Liveness;

/// Chunk size when streaming archives to runners.
const CHUNK: usize = 64 * 1024;
/// Uploads one holder may have in progress or stored and not yet submitted.
pub(crate) const MAX_UNSUBMITTED_UPLOADS: usize = 8;
/// Bytes of archives one holder may have stored and not yet submitted (a single upload is
/// also held to what is left of it).
pub(crate) const MAX_UNSUBMITTED_BYTES: u64 = 1024 * 1024 * 1024;
/// How long an uploaded archive no submission names is kept.
pub(crate) const UNSUBMITTED_UPLOAD_TTL: Duration = Duration::from_secs(3600);

/// Why an upload was refused before it began.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QuotaRefusal {
    #[error(
        "{held} source archives of yours are uploading or uploaded and not yet submitted (at \
         most {MAX_UNSUBMITTED_UPLOADS}): submit them, or wait until they expire an hour \
         after upload"
    )]
    Count { held: usize },
    #[error(
        "{held} bytes of your source archives are uploaded and not yet submitted (at most \
         {MAX_UNSUBMITTED_BYTES}): submit them, or wait until they expire an hour after upload"
    )]
    Bytes { held: u64 },
}

/// Per holder, the uploads in progress and the archives stored and not yet submitted.
#[derive(Debug, Default)]
pub(crate) struct UploadLedger(RefCell<HashMap<String, HolderUploads>>);

#[derive(Debug, Default)]
struct HolderUploads {
    in_progress: usize,
    /// Archive digest → (size, when stored, ms).
    waiting: HashMap<Vec<u8>, (u64, u64)>,
}

/// An upload's place in its holder's quota: given back when the upload ends.
#[derive(Debug)]
pub(crate) struct UploadPlace {
    ledger: Rc<UploadLedger>,
    holder: String,
}

impl UploadLedger {
    /// Takes a place for one more upload by `holder` at `now_ms`, and the most bytes it may
    /// bring; refuses when the holder is at its quota.
    pub(crate) fn begin(
        self: &Rc<Self>,
        holder: &str,
        now_ms: u64,
    ) -> Result<(UploadPlace, u64), QuotaRefusal> {
        let mut holders = self.0.borrow_mut();
        let uploads = holders.entry(holder.to_owned()).or_default();
        let ttl = u64::try_from(UNSUBMITTED_UPLOAD_TTL.as_millis()).unwrap_or(u64::MAX);
        uploads
            .waiting
            .retain(|_, (_, stored_at)| stored_at.saturating_add(ttl) > now_ms);
        let held = uploads.in_progress + uploads.waiting.len();
        if held >= MAX_UNSUBMITTED_UPLOADS {
            return Err(QuotaRefusal::Count { held });
        }
        let bytes: u64 = uploads.waiting.values().map(|(size, _)| size).sum();
        if bytes >= MAX_UNSUBMITTED_BYTES {
            return Err(QuotaRefusal::Bytes { held: bytes });
        }
        uploads.in_progress += 1;
        let place = UploadPlace {
            ledger: self.clone(),
            holder: holder.to_owned(),
        };
        Ok((place, MAX_UNSUBMITTED_BYTES - bytes))
    }

    /// A submission by `holder` names archive `sha256`: it no longer counts against them.
    pub(crate) fn submitted(&self, holder: &str, sha256: &[u8]) {
        let mut holders = self.0.borrow_mut();
        if let Some(uploads) = holders.get_mut(holder) {
            uploads.waiting.remove(sha256);
            if uploads.in_progress == 0 && uploads.waiting.is_empty() {
                holders.remove(holder);
            }
        }
    }
}

impl UploadPlace {
    /// The upload stored archive `sha256` of `size` bytes at `now_ms`.
    fn stored(self, sha256: &[u8], size: u64, now_ms: u64) {
        let mut holders = self.ledger.0.borrow_mut();
        let uploads = holders.entry(self.holder.clone()).or_default();
        uploads.waiting.insert(sha256.to_vec(), (size, now_ms));
    }
}

impl Drop for UploadPlace {
    fn drop(&mut self) {
        let mut holders = self.ledger.0.borrow_mut();
        if let Some(uploads) = holders.get_mut(&self.holder) {
            uploads.in_progress = uploads.in_progress.saturating_sub(1);
            if uploads.in_progress == 0 && uploads.waiting.is_empty() {
                holders.remove(&self.holder);
            }
        }
    }
}

/// `ByteSink` for one upload. Dropped unfinished, it leaves nothing behind. It lives only as
/// long as the grant of the submitter it came from, like every capability.
pub(crate) struct Upload {
    state: RefCell<Option<(SourceUpload, UploadPlace)>>,
    /// Why it ended, once it did: repeated to every later call, since a streaming client may
    /// only learn of a refused `write` at `finish`.
    ended: RefCell<Option<String>>,
    liveness: Rc<Liveness>,
    clock: crate::SiteClock,
}

impl Upload {
    pub(crate) fn new(
        upload: SourceUpload,
        place: UploadPlace,
        liveness: Rc<Liveness>,
        clock: crate::SiteClock,
    ) -> Self {
        Self {
            state: RefCell::new(Some((upload, place))),
            ended: RefCell::new(None),
            liveness,
            clock,
        }
    }

    /// Ends the upload (what was received goes with it) when its grant has died.
    fn alive(&self) -> Result<(), capnp::Error> {
        self.liveness.check().inspect_err(|_| {
            *self.state.borrow_mut() = None;
        })
    }

    /// Ends the upload with `e` (what was received goes with it) and says why.
    fn end(&self, e: &SinkError) -> capnp::Error {
        *self.state.borrow_mut() = None;
        let message = match e {
            // The sink logged where; the sender is told the site failed, not where.
            SinkError::Io { .. } => format!("cannot store the source archive: {e}"),
            refusal => format!("source archive refused: {refusal}"),
        };
        *self.ended.borrow_mut() = Some(message.clone());
        capnp::Error::failed(message)
    }

    /// The error for a call after the upload ended.
    fn ended(&self) -> capnp::Error {
        capnp::Error::failed(
            self.ended
                .borrow()
                .clone()
                .unwrap_or_else(|| "upload already finished".to_owned()),
        )
    }
}

impl byte_sink::Server for Upload {
    async fn write(self: Rc<Self>, params: byte_sink::WriteParams) -> Result<(), capnp::Error> {
        self.alive()?;
        let chunk = params.get()?.get_chunk()?;
        let put = match self.state.borrow_mut().as_mut() {
            Some((upload, _)) => upload.put(chunk),
            None => return Err(self.ended()),
        };
        // Past a refusal nothing more is taken; the partial file goes with the upload.
        put.map_err(|e| self.end(&e))
    }

    async fn finish(
        self: Rc<Self>,
        params: byte_sink::FinishParams,
        mut results: byte_sink::FinishResults,
    ) -> Result<(), capnp::Error> {
        self.alive()?;
        let expected = params.get()?.get_sha256()?.to_vec();
        let Some((upload, place)) = self.state.borrow_mut().take() else {
            return Err(self.ended());
        };
        *self.ended.borrow_mut() = Some("upload already finished".to_owned());
        // fsync and rename off the RPC thread: acknowledging means it is on disk.
        let stored = tokio::task::spawn_blocking(move || upload.finish(&expected))
            .await
            .map_err(|e| capnp::Error::failed(format!("failed to store the upload: {e}")))?
            .map_err(|e| self.end(&e))?;
        place.stored(&stored.sha256, stored.size, (self.clock.0)());
        results.get().set_size(stored.size);
        Ok(())
    }
}

/// Streams the archive at `path` into `sink` with capnp flow control, then finishes it with
/// the archive's SHA-256.
pub(crate) async fn stream_to(path: &Path, sink: byte_sink::Client) -> Result<(), capnp::Error> {
    let io =
        |e: std::io::Error| capnp::Error::failed(format!("cannot read the source archive: {e}"));
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        use tokio::io::AsyncReadExt;
        let n = file.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        let mut request = sink.write_request();
        request.get().set_chunk(&buf[..n]);
        request.send().await?;
    }
    let mut finish = sink.finish_request();
    finish.get().set_sha256(hasher.finalize().as_slice());
    finish.send().promise.await?;
    Ok(())
}
