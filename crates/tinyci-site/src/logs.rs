//! The Cap'n Proto face of run logs: the `LogSink` a runner streams into and the
//! `LogObserver` a follower is fed through. Storage, truncation, batching and the follow
//! pump are `tinyci-logs`; this module only translates and checks the session's liveness.

use std::rc::Rc;

use tinyci_core::RunStatus;
use tinyci_logs::{FollowError, FollowSource, Follower, LogChunk, LogWriter, Stream};
use tinyci_queue::StoredRun;
use tinyci_schema::{log_observer, log_sink};

use crate::membrane::Liveness;
use crate::rpc::failed;

/// A run's `LogSink` for one lease.
pub(crate) struct LogSinkCap {
    writer: LogWriter,
    liveness: Rc<Liveness>,
    /// Counts what the log takes against its repository's storage quota.
    queue: Rc<tinyci_queue::Queue>,
    repo: String,
    /// The second line of masking: the secrets this attempt was given.
    secrets: Rc<crate::secrets::SecretBook>,
    run: tinyci_core::RunId,
    lease: u32,
    /// Per stream (stdout, stderr, system), the end of its last chunk: a value split across
    /// chunks is found too.
    tails: std::cell::RefCell<[Vec<u8>; 3]>,
}

/// The most bytes of a stream's last chunks the site's second mask looks back over.
const MAX_SCRUB_TAIL: usize = 4096;

impl LogSinkCap {
    /// A sink for `run` of `repo` writing as attempt `lease`; takes the log over from any
    /// older attempt.
    pub(crate) async fn open(
        logs: &tinyci_logs::Logs,
        queue: Rc<tinyci_queue::Queue>,
        (run, repo): (u64, &str),
        lease: u32,
        liveness: Rc<Liveness>,
        secrets: Rc<crate::secrets::SecretBook>,
    ) -> Result<Self, capnp::Error> {
        let writer = logs.writer(run, lease).await.map_err(|e| failed(&e))?;
        Ok(Self {
            writer,
            liveness,
            queue,
            repo: repo.to_owned(),
            secrets,
            run: tinyci_core::RunId(run),
            lease,
            tails: std::cell::RefCell::default(),
        })
    }

    /// Masks, keeping its length, any secret this attempt was given that the runner let
    /// through (a runner that does not mask, or a bug): runners resend by offset, so the site
    /// may neither change a chunk's length nor hold any of it back.
    fn scrub(&self, stream: Stream, data: &mut [u8]) {
        let live = self.queue.placement(self.run).is_some();
        let forms = self
            .secrets
            .forms_for(self.run, self.lease, &self.repo, live);
        if forms.is_empty() {
            return;
        }
        let index = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
            Stream::System => 2,
        };
        let mut tails = self.tails.borrow_mut();
        let tail = &mut tails[index];
        let found = tinyci_core::scrub(&forms, tail, data);
        if found > 0 {
            tracing::warn!(run = %self.run, found, "the site masked secret values the runner sent unmasked");
        }
        // What a form split across chunks may have left in the last ones; bounded, so a
        // runner sending one byte at a time cannot make each write rescan much (a value
        // longer than this split across chunks is the runner's masking alone).
        let keep = forms
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .min(MAX_SCRUB_TAIL);
        tail.extend_from_slice(data);
        let excess = tail.len().saturating_sub(keep);
        tail.drain(..excess);
    }
}

impl log_sink::Server for LogSinkCap {
    async fn write(self: Rc<Self>, params: log_sink::WriteParams) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let chunk = params.get()?.get_chunk()?;
        let stream = match chunk.get_stream() {
            Ok(tinyci_schema::LogStream::Stdout) => Stream::Stdout,
            Ok(tinyci_schema::LogStream::Stderr) => Stream::Stderr,
            _ => Stream::System,
        };
        let mut data = chunk.get_data()?.to_vec();
        self.scrub(stream, &mut data);
        let record = LogChunk {
            stream: stream.tag(),
            timestamp_micros: chunk.get_timestamp_micros(),
            data,
        };
        let stored = self
            .writer
            .write(chunk.get_offset(), record)
            .await
            .map_err(|e| failed(&e))?;
        // What the write will take on disk, at most (a resend or output past the limit takes
        // nothing): the count errs towards refusing, and the next retention sweep sets it
        // right from what the log's file takes.
        self.queue.storage().add(&self.repo, stored);
        Ok(())
    }

    async fn acknowledged(
        self: Rc<Self>,
        _: log_sink::AcknowledgedParams,
        mut results: log_sink::AcknowledgedResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        results.get().set_offset(self.writer.acknowledged());
        Ok(())
    }

    /// Resolves once every chunk written before it is durable.
    async fn close(
        self: Rc<Self>,
        _: log_sink::CloseParams,
        _: log_sink::CloseResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        self.writer.close().await.map_err(|e| failed(&e))
    }
}

/// A follower reached over Cap'n Proto (a `tinyci logs -f`, or the pages' event stream).
struct ObserverFollower(log_observer::Client);

impl Follower for ObserverFollower {
    type Error = capnp::Error;

    async fn chunk(&self, offset: u64, chunk: &LogChunk) -> Result<(), capnp::Error> {
        let mut request = self.0.chunk_request();
        {
            let mut c = request.get().init_chunk();
            c.set_offset(offset);
            c.set_stream(wire_stream(chunk.stream));
            c.set_timestamp_micros(chunk.timestamp_micros);
            c.set_data(&chunk.data);
        }
        // Streaming: resolves when the follower's window has room.
        request.send().await
    }

    async fn done(&self, status: RunStatus) -> Result<(), capnp::Error> {
        let mut request = self.0.done_request();
        request.get().set_status(crate::jobs::wire_status(status));
        request.send().promise.await.map(drop)
    }
}

/// Follows `run`'s log into `observer` from byte `from`: its status read afresh from the
/// queue, woken by its submission's changes. See [`tinyci_logs::Logs::follow`].
pub(crate) async fn follow(
    handles: &crate::RunHandles,
    run: &StoredRun,
    from: u64,
    observer: log_observer::Client,
) -> Result<(), FollowError<capnp::Error>> {
    let queue = handles.queue.clone();
    let id = run.id();
    let source = FollowSource {
        run: id.get(),
        status: Rc::new(move || queue.run(id).ok().flatten().map(|r| r.state.status())),
        changes: handles.queue.watch(run.submission),
    };
    handles
        .logs
        .follow(source, from, &ObserverFollower(observer))
        .await
}

/// The wire form of a stored chunk's stream tag.
pub(crate) fn wire_stream(stream: u8) -> tinyci_schema::LogStream {
    match Stream::of_tag(stream) {
        Stream::Stdout => tinyci_schema::LogStream::Stdout,
        Stream::Stderr => tinyci_schema::LogStream::Stderr,
        Stream::System => tinyci_schema::LogStream::System,
    }
}
