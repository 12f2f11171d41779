//! Run logs: the `LogSink` a runner streams into. Chunks are stored in LMDB through the group
//! committer, keyed by run and byte offset, so a log reads back in order and a chunk that is
//! acknowledged is on disk.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tinyci_schema::log_sink;
use tinyci_store::records::{LogChunk, log_key};
use tinyci_store::tables::LOG_CHUNKS;
use tinyci_store::{GroupCommitter, Store, StoreError};

use crate::membrane::Liveness;

/// Largest chunk accepted (the wire contract's limit).
pub(crate) const MAX_LOG_CHUNK: usize = 64 * 1024;

/// The length of a run's stored log: where the next chunk goes.
pub(crate) fn stored_length(store: &Store, run: u64) -> Result<u64, StoreError> {
    store.read(|txn| {
        let mut length = 0;
        for entry in txn.iter_prefix(LOG_CHUNKS, &run.to_be_bytes()[..])? {
            let (key, chunk) = entry?;
            let offset = key
                .get(8..16)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            length = length.max(offset + chunk.data.len() as u64);
        }
        Ok(length)
    })
}

/// Up to `max` bytes of a run's log from byte `from`, as `(offset, chunk)` in order (the
/// first chunk trimmed to start at `from`).
pub(crate) fn read_chunks(
    store: &Store,
    run: u64,
    from: u64,
    max: usize,
) -> Result<Vec<(u64, LogChunk)>, StoreError> {
    store.read(|txn| {
        let mut out = Vec::new();
        let mut taken = 0usize;
        for entry in txn.iter_prefix(LOG_CHUNKS, &run.to_be_bytes()[..])? {
            let (key, mut chunk) = entry?;
            let offset = key
                .get(8..16)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            let end = offset + chunk.data.len() as u64;
            if end <= from {
                continue;
            }
            let skip = usize::try_from(from.saturating_sub(offset)).unwrap_or(usize::MAX);
            let start = offset.max(from);
            if skip > 0 {
                chunk.data.drain(..skip.min(chunk.data.len()));
            }
            if taken > 0 && taken + chunk.data.len() > max {
                break;
            }
            taken += chunk.data.len();
            out.push((start, chunk));
            if taken >= max {
                break;
            }
        }
        Ok(out)
    })
}

/// A run's `LogSink`, valid while its job's lease is.
pub(crate) struct LogSinkCap {
    run: u64,
    committer: GroupCommitter,
    liveness: Rc<Liveness>,
    state: RefCell<SinkState>,
    /// Bytes durably stored (what `acknowledged` reports).
    durable: Rc<Cell<u64>>,
}

struct SinkState {
    /// Offset the next new chunk must start at (writes in flight included).
    next: u64,
    /// Set when a write failed: the sink refuses everything after it.
    failed: Option<String>,
}

impl LogSinkCap {
    pub(crate) fn new(
        run: u64,
        start: u64,
        committer: GroupCommitter,
        liveness: Rc<Liveness>,
    ) -> Self {
        Self {
            run,
            committer,
            liveness,
            state: RefCell::new(SinkState {
                next: start,
                failed: None,
            }),
            durable: Rc::new(Cell::new(start)),
        }
    }
}

impl log_sink::Server for LogSinkCap {
    async fn write(self: Rc<Self>, params: log_sink::WriteParams) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let chunk = params.get()?.get_chunk()?;
        let data = chunk.get_data()?;
        if data.len() > MAX_LOG_CHUNK {
            return Err(capnp::Error::failed(format!(
                "log chunk of {} bytes refused: the limit is {MAX_LOG_CHUNK}",
                data.len()
            )));
        }
        let offset = chunk.get_offset();
        let record = LogChunk {
            stream: match chunk.get_stream() {
                Ok(tinyci_schema::LogStream::Stdout) => 0,
                Ok(tinyci_schema::LogStream::Stderr) => 1,
                _ => 2,
            },
            timestamp_micros: chunk.get_timestamp_micros(),
            data: data.to_vec(),
        };
        // Reserve the range before awaiting, so streamed writes in flight stay in order.
        let key = {
            let mut state = self.state.borrow_mut();
            if let Some(why) = &state.failed {
                return Err(capnp::Error::failed(format!(
                    "log sink failed earlier: {why}"
                )));
            }
            let len = record.data.len() as u64;
            if offset + len <= state.next && offset < state.next {
                // Already stored (a runner resending after a reconnect): skip it.
                return Ok(());
            }
            if offset != state.next {
                return Err(capnp::Error::failed(format!(
                    "log chunk at offset {offset} refused: the log continues at {}",
                    state.next
                )));
            }
            state.next = offset + len;
            log_key(self.run, offset)
        };
        let end = offset + record.data.len() as u64;
        let result = self
            .committer
            .write(move |txn| txn.put(LOG_CHUNKS, &key[..], &record))
            .await;
        match result {
            Ok(()) => {
                self.durable.set(self.durable.get().max(end));
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                self.state.borrow_mut().failed = Some(why.clone());
                Err(capnp::Error::failed(format!(
                    "failed to store the log: {why}"
                )))
            }
        }
    }

    async fn acknowledged(
        self: Rc<Self>,
        _: log_sink::AcknowledgedParams,
        mut results: log_sink::AcknowledgedResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        results.get().set_offset(self.durable.get());
        Ok(())
    }

    async fn close(
        self: Rc<Self>,
        _: log_sink::CloseParams,
        _: log_sink::CloseResults,
    ) -> Result<(), capnp::Error> {
        Ok(())
    }
}
