//! Group commit: one writer thread drains every pending change into a single LMDB
//! transaction and acknowledges each only after that transaction is durable.
//!
//! Why: a durable LMDB commit costs an fsync (~7k commits/s here), so one commit per change
//! caps throughput no matter how many callers there are. Batching turns N concurrent changes
//! into one fsync while keeping the promise that matters: nothing is acknowledged before it
//! is on disk. Each change runs as a nested change ([`WriteTxn::nested`]), so one that fails
//! is taken back alone and reported to its caller; the rest of the batch commits. The
//! exception is a write LMDB itself refuses (the map is full, an I/O error): LMDB gives up on
//! the whole transaction, so every change in the batch fails with that cause, and a full map
//! grows before the next batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use futures_channel::oneshot;

use crate::{Store, StoreError, WriteTxn};

/// Most changes folded into one transaction; bounds the latency a change can add to others.
const MAX_BATCH: usize = 1024;

/// One pending change, type-erased so changes returning different types share a queue.
trait Pending: Send {
    /// Runs the change nested in `txn`.
    fn apply(&mut self, txn: &mut WriteTxn<'_>);
    /// Reports the change's result, or `commit_error` if the batch failed to commit.
    fn finish(self: Box<Self>, commit_error: Option<&StoreError>);
}

struct Change<T, F> {
    op: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Pending for Change<T, F>
where
    T: Send,
    F: FnOnce(&mut WriteTxn<'_>) -> Result<T, StoreError> + Send,
{
    fn apply(&mut self, txn: &mut WriteTxn<'_>) {
        if let Some(op) = self.op.take() {
            self.result = Some(txn.nested(op));
        }
    }

    fn finish(self: Box<Self>, commit_error: Option<&StoreError>) {
        let result = match (commit_error, self.result) {
            (Some(e), Some(Ok(_))) => Err(StoreError::Aborted {
                reason: format!("the batch this change was in failed to commit: {e}").into(),
            }),
            (_, Some(result)) => result,
            (_, None) => Err(StoreError::Aborted {
                reason: "the change was never applied".into(),
            }),
        };
        // The caller may have stopped waiting; the change is durable either way.
        let _ = self.reply.send(result);
    }
}

/// Submits changes to the store's single group-commit writer. Cheap to clone; the writer
/// thread stops when the last clone is dropped, after committing what was submitted.
#[derive(Clone, Debug)]
pub struct GroupCommitter {
    tx: mpsc::Sender<Box<dyn Pending>>,
    /// Transactions the writer has committed (or tried to), however many changes each held.
    commits: Arc<AtomicU64>,
}

/// The writer thread; join it to be sure everything submitted was committed.
#[derive(Debug)]
pub struct GroupWriterThread {
    thread: JoinHandle<()>,
    /// Closed when the thread ends, however it ends: [`GroupWriterThread::stopped`] waits on it.
    ended: futures_channel::oneshot::Receiver<()>,
}

impl GroupWriterThread {
    /// Waits for the writer to finish (after every [`GroupCommitter`] is dropped).
    pub fn join(self) {
        let _ = self.thread.join();
    }

    /// Whether the writer has stopped (every committer dropped, everything committed).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Resolves once the writer has stopped, without blocking the caller's thread.
    pub async fn stopped(&mut self) {
        // The sender is dropped when the thread ends (normally or by panic).
        let _ = (&mut self.ended).await;
    }
}

impl GroupCommitter {
    /// Starts the writer thread for `store`.
    pub fn start(store: Store) -> Result<(Self, GroupWriterThread), StoreError> {
        let (tx, rx) = mpsc::channel::<Box<dyn Pending>>();
        let (ending, ended) = futures_channel::oneshot::channel::<()>();
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        let thread = std::thread::Builder::new()
            .name("tinyci-store-writer".into())
            .spawn(move || {
                let _ending = ending;
                writer(store, rx, &counted);
            })
            .map_err(|e| StoreError::Aborted {
                reason: format!("failed to start the store writer thread: {e}").into(),
            })?;
        Ok((Self { tx, commits }, GroupWriterThread { thread, ended }))
    }

    /// How many transactions the writer has committed so far: with [`GroupCommitter::write`]
    /// counts, it says how many changes shared each durable commit.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Applies `op` in the next batch; resolves once that batch is durable (or with the
    /// op's own error, in which case none of its writes were kept).
    pub async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteTxn<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, done) = oneshot::channel();
        let change = Change {
            op: Some(op),
            result: None,
            reply,
        };
        self.tx
            .send(Box::new(change))
            .map_err(|_| StoreError::Aborted {
                reason: "the store writer has stopped".into(),
            })?;
        done.await.map_err(|_| StoreError::Aborted {
            reason: "the store writer stopped before committing".into(),
        })?
    }
}

fn writer(store: Store, rx: mpsc::Receiver<Box<dyn Pending>>, commits: &AtomicU64) {
    // Blocks for the first change of a batch, then takes whatever else is already waiting.
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let committed = store.write(|txn| {
            for change in &mut batch {
                change.apply(txn);
            }
            Ok(())
        });
        commits.fetch_add(1, Ordering::Relaxed);
        let error = committed.err();
        for change in batch {
            change.finish(error.as_ref());
        }
    }
}
