//! The Cap'n Proto face of source archives: the `ByteSink` a submitter uploads through and
//! the stream a runner's `Job.source` receives, and what one holder may make the site keep
//! before submitting ([`UploadLedger`]). Storage is `tinyci-assets`.
//!
//! An uploaded archive no submission names is removed by the retention sweep once it is
//! [`tinyci_assets::UNSUBMITTED_UPLOAD_TTL`] old; until then it counts against its uploader's
//! quota ([`tinyci_assets::UploadLedger`]), so a holder cannot fill the disk by uploading
//! without submitting.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use sha2::{Digest, Sha256};
use tinyci_assets::{SinkError, SourceUpload, UploadPlace};
use tinyci_schema::byte_sink;

use crate::membrane::Liveness;

/// Chunk size when streaming archives to runners.
const CHUNK: usize = 64 * 1024;
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
