//! The durable, leased run queue of a site: submissions become runs on named FIFO queues;
//! workers wait for runs (push: a waiting worker is handed a run the moment one is queued);
//! leases are heartbeated and expire; lost leases requeue the run with its attempt count, up
//! to the policy's maximum; completion is recorded exactly once; a newer submission on the
//! same repository and ref cancels the older one's unfinished runs. A run is leased only to a
//! worker whose runner's [`Offer`] satisfies what the run [`Needs`] under the site's
//! [`DispatchPolicy`] (its submission's trust tier on its queue); otherwise it waits and
//! [`Queue::waiting_reason`] says for what. It never falls back to a weaker runner.
//!
//! Every state change goes through `tinyci_core::Run::apply` (the state machine) and, when
//! it must survive a crash, through the store's group committer before anyone is told:
//! a submission is acknowledged only once it and its runs are durable, a lease only once it
//! is recorded. Heartbeats are not persisted: a restarted site gives every lease one full
//! period to be resumed by its runner (which may have outlived the site), then requeues it.
//!
//! Single-threaded (`Rc`/`RefCell`), living on the site's LocalSet, which its methods need:
//! each commit and the memory it changes run on a local task of their own, one change of a
//! run at a time, so a caller that stops waiting cannot split them. Knows nothing of capnp:
//! the site wraps it in capabilities. Must not depend on capnp, rustls or biscuit-auth.

mod history;
mod records;
mod share;

pub use history::{RunFilter, import_history};

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tinyci_core::{
    DispatchPolicy, Lease, LeaseId, LeasePolicy, Needs, Offer, Outcome, PlannedRun, Run, RunEvent,
    RunId, RunStatus, SubmissionId, Transition, TransitionError, TrustTier,
};
use tinyci_store::tables::{BRANCH_HEADS, META, POOL, QUEUED, RUNS, SUBMISSIONS};
use tinyci_store::{GroupCommitter, Record, Store, StoreError, WriteTxn};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info, warn};

pub use records::{StoredRun, StoredSubmission};

/// Key in `META` of the next id to hand out (runs and submissions share one sequence).
const NEXT_ID_KEY: &str = "queue.next_id";

pub use tinyci_core::Clock;

/// The system clock.
pub fn system_clock() -> Clock {
    Rc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The store failed; nothing was changed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The repository is over its storage quota; nothing was queued.
    #[error(transparent)]
    OverQuota(#[from] tinyci_core::OverQuota),
    /// A stored record could not be read.
    #[error("corrupt {what} record {id}: {reason}")]
    Corrupt {
        /// Runs or submissions.
        what: &'static str,
        /// Its id.
        id: u64,
        /// Why.
        reason: String,
    },
    /// The run state machine refused the event.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// No such run (or not an unfinished one, where that matters).
    #[error("no run {0}")]
    NoRun(RunId),
    /// No such submission.
    #[error("no submission {0}")]
    NoSubmission(SubmissionId),
    /// The queue is shutting down.
    #[error("the queue is shutting down")]
    Closed,
    /// A runner tried to resume a lease it no longer holds.
    #[error(
        "run {run} cannot be resumed by {runner}: lease {lease} was lost (expired, requeued or \
         held by another runner)"
    )]
    LeaseLost {
        /// The run.
        run: RunId,
        /// The lease presented.
        lease: LeaseId,
        /// Who presented it.
        runner: String,
    },
}

/// A new submission, already planned.
#[derive(Clone, Debug)]
pub struct NewSubmission {
    /// `owner/name`.
    pub repo: String,
    /// `refs/heads/…`, or a commit id.
    pub git_ref: String,
    /// Commit id.
    pub sha: String,
    /// Human title.
    pub title: String,
    /// Who submitted it (peer identity).
    pub submitted_by: String,
    /// The stored source archive's SHA-256.
    pub source_sha256: Vec<u8>,
    /// The runs, fully resolved.
    pub runs: Vec<PlannedRun>,
    /// What it does to its branch's history.
    pub branch: OnBranch,
    /// Where it came from, as the site established it from verified facts.
    pub tier: TrustTier,
}

/// What a worker gets: a run leased to it.
#[derive(Clone, Debug)]
pub struct Leased {
    /// The run, as stored (spec included).
    pub run: StoredRun,
    /// The lease the worker holds.
    pub lease: LeaseId,
    /// When it expires unless heartbeated (ms).
    pub expires_at: u64,
}

/// Called with every run change (see [`Queue::observe`]).
type RunObserverFn = Rc<dyn Fn(&StoredRun)>;

/// Runs inside [`Queue::submit_with`]'s transaction, after the submission is written.
pub type SubmitHook =
    Box<dyn FnOnce(&mut WriteTxn<'_>, &StoredSubmission) -> Result<(), StoreError> + Send>;

/// Called when a leased run is asked to stop (the site forwards it to `JobControl.cancel`).
pub type CancelHook = Rc<dyn Fn(String)>;

/// A change to a run, for watchers of its submission.
pub type RunUpdate = StoredRun;

struct Waiter {
    runner: String,
    /// What the runner can run; it is handed only runs this satisfies.
    offer: Offer,
    /// Where it is handed its run. (Not its cancel hook: that holds its connection's
    /// objects, which hold the queue, and a waiter the queue kept would keep them all.)
    tx: oneshot::Sender<Handoff>,
}

/// What a waiting worker is handed.
enum Handoff {
    /// A queued run, which the worker leases itself.
    Run(RunId),
    /// A run leased to it in the commit that stored the run's submission: one durable commit
    /// instead of two, and nothing more to write before the worker has it.
    Leased(Box<Leased>),
}

/// A worker connected to a queue, whether waiting or busy: what "no connected runner can take
/// this" is judged against.
#[derive(Clone, Debug)]
struct ConnectedWorker {
    queue: String,
    runner: String,
    offer: Offer,
    profile: RunnerProfile,
}

/// Names a worker registered with [`Queue::connect_worker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WorkerId(u64);

#[derive(Default)]
struct State {
    /// Unfinished runs.
    live: HashMap<RunId, StoredRun>,
    /// Each unfinished run's tier and what it needs of a runner (from the dispatch policy).
    placement: HashMap<RunId, (TrustTier, Needs)>,
    /// Workers connected now, by id.
    connected: HashMap<WorkerId, ConnectedWorker>,
    /// The next [`WorkerId`].
    next_worker: u64,
    /// Queued run ids per queue; ids grow, so the set's order is FIFO.
    queued: HashMap<String, share::Backlog>,
    /// Workers waiting per queue, oldest first.
    waiters: HashMap<String, VecDeque<Waiter>>,
    /// Who to tell when a leased run must stop.
    cancel_hooks: HashMap<RunId, CancelHook>,
    /// Watchers per submission.
    watchers: HashMap<SubmissionId, Vec<mpsc::UnboundedSender<RunUpdate>>>,
    /// Paused queues lease nothing.
    paused: BTreeSet<String>,
    /// Told of every run change (metrics).
    observers: Vec<RunObserverFn>,
    /// Runners an operator paused or is draining: they are leased nothing.
    held_runners: BTreeMap<String, RunnerMode>,
    /// Bumped when the pool changes in a way a waiting worker must look at again: a
    /// runner's mode, or a run of a draining runner ending.
    pool_changed: Option<tokio::sync::watch::Sender<u64>>,
    /// Which submitter group each queue serves next.
    shares: share::FairShare,
    /// Runs leased to a waiting worker in their submission's commit whose worker went away
    /// before taking them: the expiry loop hands the leases back.
    abandoned: Vec<(RunId, LeaseId)>,
    /// Runs leased in their submission's commit since the queue opened.
    leased_at_submit: u64,
}

/// The oldest queued run of each submitter group on `queue` that `can_take` accepts, minus
/// `skip`, and the one fair share serves next.
fn next_fair(
    dispatch: &DispatchPolicy,
    shares: &share::FairShare,
    queue: &str,
    backlog: &share::Backlog,
    placement: &HashMap<RunId, (TrustTier, Needs)>,
    can_take: impl Fn(&Needs) -> bool,
) -> Option<share::Candidate> {
    let policy = dispatch.queue(queue);
    let mut candidates: Vec<share::Candidate> = Vec::new();
    for (group, ids) in backlog.groups() {
        let first = ids.iter().find_map(|id| {
            let (tier, needs) = placement.get(id)?;
            can_take(needs).then(|| share::Candidate {
                group: group.to_owned(),
                weight: policy.share_of(tier),
                run: *id,
            })
        });
        candidates.extend(first);
    }
    let pick = shares.pick(queue, &candidates)?;
    Some(candidates.swap_remove(pick))
}

/// Queues run `id` (tracked already) on its queue's backlog, in its submitter group.
fn enqueue(state: &mut State, queue: &str, id: RunId) {
    let group = state
        .placement
        .get(&id)
        .map(|(tier, _)| tier.to_string())
        .unwrap_or_default();
    state
        .queued
        .entry(queue.to_owned())
        .or_default()
        .insert(id, group);
}

/// The queue. Create with [`Queue::open`]; drive lease expiry with [`Queue::run_expiry`].
pub struct Queue {
    store: Store,
    committer: GroupCommitter,
    policy: LeasePolicy,
    dispatch: DispatchPolicy,
    /// This site's name: reads the tier of submissions stored before tiers existed.
    site: String,
    clock: Clock,
    state: RefCell<State>,
    /// Wakes the expiry loop when leases change.
    leases_changed: Notify,
    /// What each repository stores, against its quota: a submission of a repository over it
    /// is refused.
    storage: tinyci_core::RepoStorage,
    /// This queue, for the tasks that carry a commit through to the memory it changes.
    me: Weak<Queue>,
    /// One change of a run at a time: a change reads the run, applies an event and writes
    /// it, and two interleaved across the write would both start from the same state (a
    /// completion and a cancel, or a resent completion, each recording an outcome). Entries
    /// live while someone holds or waits for them.
    run_locks: RefCell<HashMap<RunId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Set when a lease's caller stops waiting before it is answered.
struct CallerGone {
    flag: Rc<Cell<bool>>,
    waiting: bool,
}

impl Default for CallerGone {
    fn default() -> Self {
        Self {
            flag: Rc::default(),
            waiting: true,
        }
    }
}

impl Drop for CallerGone {
    fn drop(&mut self) {
        if self.waiting {
            self.flag.set(true);
        }
    }
}

/// The time a change to a run is dated by.
#[derive(Debug, Clone, Copy)]
enum When {
    /// The clock's, read once the run's lock is held.
    LockTaken,
    /// The clock's, read once the run's lock is held, or this time if later: a lease handed
    /// back is dated no earlier than its expiry, so it counts as lapsed.
    NotBefore(u64),
}

/// Holds a run's change lock; the lock's entry goes when nobody holds or waits for it.
struct RunLock<'q> {
    queue: &'q Queue,
    id: RunId,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for RunLock<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut locks = self.queue.run_locks.borrow_mut();
        if locks
            .get(&self.id)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.id);
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn decode_run(id: u64, bytes: &[u8]) -> Result<StoredRun, QueueError> {
    StoredRun::decode(bytes).map_err(|e| QueueError::Corrupt {
        what: "run",
        id,
        reason: e.to_string(),
    })
}

fn decode_submission(id: u64, bytes: &[u8], site: &str) -> Result<StoredSubmission, QueueError> {
    StoredSubmission::decode(bytes, site).map_err(|e| QueueError::Corrupt {
        what: "submission",
        id,
        reason: e.to_string(),
    })
}

fn queued_key(queue: &str, run: RunId) -> Vec<u8> {
    let mut key = Vec::with_capacity(queue.len() + 9);
    key.extend_from_slice(queue.as_bytes());
    key.push(0);
    key.extend_from_slice(&run.get().to_be_bytes());
    key
}

fn branch_key(repo: &str, git_ref: &str) -> Vec<u8> {
    let mut key = repo.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(git_ref.as_bytes());
    key
}

/// Key of an operator setting in [`POOL`]: `kind 0x00 name`.
fn pool_key(kind: &str, name: &str) -> Vec<u8> {
    let mut key = kind.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    key
}

/// What an operator wants of a runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunnerMode {
    /// Leased work as usual.
    Active,
    /// Stays connected and is leased nothing until resumed.
    Paused,
    /// Finishes what it holds, is leased nothing, then is told it is drained (its runner
    /// disconnects and stays refused until resumed).
    Draining,
}

impl RunnerMode {
    fn stored(self) -> Option<&'static str> {
        match self {
            RunnerMode::Active => None,
            RunnerMode::Paused => Some("paused"),
            RunnerMode::Draining => Some("draining"),
        }
    }
}

fn store_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Aborted {
        reason: e.to_string().into(),
    }
}

/// Writes a run and keeps the FIFO index in step with its status.
fn put_run(txn: &mut WriteTxn<'_>, run: &StoredRun) -> Result<(), StoreError> {
    history::index_run(txn, run)?;
    let bytes = Record::<StoredRun>::encode(run).map_err(store_error)?;
    txn.put(RUNS, &run.id().get(), &bytes[..])?;
    let key = queued_key(run.spec.queue.as_ref(), run.id());
    if run.state.status() == RunStatus::Queued {
        txn.put(QUEUED, &key[..], &[][..])?;
    } else {
        txn.delete(QUEUED, &key[..])?;
    }
    Ok(())
}

impl Queue {
    /// Loads unfinished runs. Runs that were leased when the site stopped keep their leases
    /// for one more lease period from now, so runners that outlived the site can resume them
    /// ([`Queue::resume`]); unresumed, they expire and are requeued as usual.
    pub async fn open(
        store: Store,
        committer: GroupCommitter,
        setup: QueueSetup,
        clock: Clock,
    ) -> Result<Rc<Self>, QueueError> {
        let QueueSetup {
            lease: policy,
            dispatch,
            site,
        } = setup;
        // Only unfinished runs are loaded: opening costs the work in progress, not the history.
        history::index_history(&store)?;
        let stored: Vec<StoredRun> = store.read(|txn| {
            let ids = history::unfinished(txn)?;
            Ok(history::load(txn, &ids))
        })??;
        let pool: Vec<(Vec<u8>, Vec<u8>)> = store.read(|txn| {
            txn.iter_range(POOL, &..)?
                .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let mut state = State::default();
        for (key, value) in pool {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let Some(split) = key.iter().position(|b| *b == 0) else {
                continue;
            };
            let (kind, name) = (text(&key[..split]), text(&key[split + 1..]));
            match (kind.as_str(), value.as_slice()) {
                ("queue", b"paused") => {
                    state.paused.insert(name);
                }
                ("runner", b"paused") => {
                    state.held_runners.insert(name, RunnerMode::Paused);
                }
                ("runner", b"draining") => {
                    state.held_runners.insert(name, RunnerMode::Draining);
                }
                _ => warn!(kind, name, "unknown pool setting in the store; ignored"),
            }
        }
        let queue = Rc::new_cyclic(|me| Self {
            store,
            committer,
            policy,
            dispatch,
            site,
            clock,
            state: RefCell::new(state),
            leases_changed: Notify::new(),
            storage: tinyci_core::RepoStorage::default(),
            me: me.clone(),
            run_locks: RefCell::default(),
        });
        let now = (queue.clock)();
        let mut recovered = Vec::new();
        let mut refused = Vec::new();
        let mut kept = 0usize;
        for mut run in stored {
            if run.state.status().is_final() {
                continue;
            }
            if let Some(lease) = run.state.lease().cloned() {
                // The runner may have outlived us: give its lease one full period from now to
                // be resumed (`Queue::resume`); expiry requeues it otherwise. Heartbeats are
                // not persisted, so the stored expiry is stale: apply the renewal as of that
                // expiry, the last moment the state machine accepts it.
                let renewal = RunEvent::Heartbeat {
                    lease: lease.id,
                    expires_at: queue.policy.expiry(now),
                };
                if run.state.apply(renewal, lease.expires_at.min(now)).is_err() {
                    let at = now.max(lease.expires_at);
                    run.state.apply(RunEvent::LeaseExpired, at)?;
                    run.runner = None;
                    recovered.push(run.clone());
                } else {
                    kept += 1;
                }
            }
            if run.state.status().is_final() {
                continue;
            }
            let tier = queue.tier_of(run.submission)?;
            // Today's policy decides: work it no longer admits (a queue that stopped taking
            // the tier, privilege it no longer grants) does not run.
            if run.state.status() == RunStatus::Queued
                && let Err(refusal) = queue.dispatch.admit(&run.repo, &tier, &run.spec)
            {
                refused.push((run.id(), refusal.to_string()));
            }
            queue.track(run, tier);
        }
        if kept > 0 {
            info!(
                runs = kept,
                "leases from the last process wait one lease period for their runners to resume"
            );
        }
        if !recovered.is_empty() {
            info!(
                runs = recovered.len(),
                "requeued runs whose leases ended with the last process"
            );
            let to_write = recovered.clone();
            queue
                .committer
                .write(move |txn| {
                    for run in &to_write {
                        put_run(txn, run)?;
                    }
                    Ok(())
                })
                .await?;
        }
        for (id, why) in refused {
            warn!(run = %id, reason = %why, "queued run no longer admitted by the site's policy; canceled");
            queue
                .cancel_run(id, &format!("no longer admitted: {why}"))
                .await?;
        }
        Ok(queue)
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The tier of a stored submission.
    fn tier_of(&self, id: SubmissionId) -> Result<TrustTier, QueueError> {
        Ok(self
            .submission(id)?
            .ok_or(QueueError::NoSubmission(id))?
            .tier)
    }

    /// What each repository stores, and its quota (set by the site, counted by its log
    /// writers, artifact uploads and retention sweeps).
    pub fn storage(&self) -> &tinyci_core::RepoStorage {
        &self.storage
    }

    /// How many runs were leased in the commit that stored their submission (to a worker
    /// already waiting) since the queue opened: each saved a durable commit.
    pub fn leased_at_submit(&self) -> u64 {
        self.state.borrow().leased_at_submit
    }

    /// The site's dispatch policy.
    pub fn dispatch_policy(&self) -> &DispatchPolicy {
        &self.dispatch
    }

    /// Adds an unfinished run to memory (and its queue, if queued).
    fn track(&self, run: StoredRun, tier: TrustTier) {
        let needs = self.dispatch.needs(&tier, &run.spec);
        let mut state = self.state.borrow_mut();
        state.placement.insert(run.id(), (tier, needs));
        if run.state.status() == RunStatus::Queued {
            enqueue(&mut state, run.spec.queue.as_ref(), run.id());
        }
        state.live.insert(run.id(), run);
    }

    /// Durably records a submission and its runs, supersedes older unfinished runs on the
    /// same repository and ref, and queues the new runs. Returns once durable.
    pub async fn submit(
        &self,
        new: NewSubmission,
    ) -> Result<(StoredSubmission, Vec<StoredRun>), QueueError> {
        self.submit_with(new, Box::new(|_, _| Ok(()))).await
    }

    /// [`Queue::submit`], with `also` run in the same transaction once the submission is
    /// written, so a caller's own record of it (and, say, the removal of the event that
    /// caused it) commits together with it or not at all.
    pub async fn submit_with(
        &self,
        new: NewSubmission,
        also: SubmitHook,
    ) -> Result<(StoredSubmission, Vec<StoredRun>), QueueError> {
        self.to_the_end(|queue| async move { queue.submit_now(new, also).await })
            .await
    }

    /// Runs `work` (a commit and the memory it changes) on a task of its own and waits for
    /// it. A caller that stops waiting (an RPC dropped when its client hangs up) stops only
    /// its wait: a durable commit whose runs the queue did not then track, or whose change it
    /// did not apply, would leave memory and store disagreeing until a restart.
    async fn to_the_end<T, Fut>(&self, work: impl FnOnce(Rc<Queue>) -> Fut) -> Result<T, QueueError>
    where
        T: 'static,
        Fut: Future<Output = Result<T, QueueError>> + 'static,
    {
        let queue = self.me.upgrade().ok_or(QueueError::Closed)?;
        match tokio::task::spawn_local(work(queue)).await {
            Ok(answer) => answer,
            // A panic is the caller's, as if the work had run inline.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the LocalSet is going away with the site.
            Err(_) => Err(QueueError::Closed),
        }
    }

    /// [`Queue::submit_with`], on the task that carries it to the end.
    async fn submit_now(
        &self,
        new: NewSubmission,
        also: SubmitHook,
    ) -> Result<(StoredSubmission, Vec<StoredRun>), QueueError> {
        self.storage.admit(&new.repo)?;
        let now = self.now();
        let policy = self.policy;
        let count = new.runs.len() as u64;
        let branch = branch_key(&new.repo, &new.git_ref);
        let branch_role = new.branch;
        // Workers waiting now that may take a new run get it leased in this very commit.
        let mut handoffs = self.reserve_waiters(&new.tier, &new.runs);
        let takers: Vec<Option<String>> = handoffs
            .iter()
            .map(|w| w.as_ref().map(|(_, w)| w.runner.clone()))
            .collect();
        let expires_at = self.policy.expiry(now);
        let written = self
            .committer
            .write(move |txn| {
                let next = txn
                    .get(META, NEXT_ID_KEY)?
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(1, u64::from_be_bytes);
                let submission_id = SubmissionId(next);
                let mut runs = Vec::new();
                let mut leases = Vec::new();
                for (i, (spec, taker)) in new.runs.into_iter().zip(takers).enumerate() {
                    let id = RunId(next + 1 + i as u64);
                    let mut state = Run::new(id, &policy, now);
                    let lease = match taker.clone() {
                        Some(runner) => match state
                            .apply(RunEvent::Lease { runner, expires_at }, now)
                            .map_err(store_error)?
                        {
                            Transition::Leased(lease) => Some(lease),
                            _ => None,
                        },
                        None => None,
                    };
                    runs.push(StoredRun {
                        state,
                        submission: submission_id,
                        repo: new.repo.clone(),
                        git_ref: new.git_ref.clone(),
                        sha: new.sha.clone(),
                        spec,
                        runner: lease.as_ref().and(taker),
                        started_at: None,
                        message: None,
                    });
                    leases.push(lease);
                }
                let submission = StoredSubmission {
                    id: submission_id,
                    repo: new.repo,
                    git_ref: new.git_ref,
                    sha: new.sha,
                    title: new.title,
                    submitted_by: new.submitted_by,
                    created_at: now,
                    source_sha256: new.source_sha256,
                    runs: runs.iter().map(StoredRun::id).collect(),
                    tier: new.tier,
                };
                let bytes = Record::<StoredSubmission>::encode(&submission).map_err(store_error)?;
                txn.put(SUBMISSIONS, &submission_id.get(), &bytes[..])?;
                for run in &runs {
                    put_run(txn, run)?;
                }
                let previous = match branch_role {
                    OnBranch::Aside | OnBranch::Join => None,
                    OnBranch::Supersede | OnBranch::SupersedeOverlap => {
                        let previous = txn.get(BRANCH_HEADS, &branch[..])?;
                        txn.put(BRANCH_HEADS, &branch[..], &submission_id.get())?;
                        previous
                    }
                };
                txn.put(META, NEXT_ID_KEY, &(next + 1 + count).to_be_bytes()[..])?;
                also(txn, &submission)?;
                Ok((submission, runs, leases, previous))
            })
            .await;
        let (submission, runs, leases, previous) = match written {
            Ok(written) => written,
            Err(e) => {
                self.unreserve_waiters(handoffs);
                return Err(e.into());
            }
        };
        info!(submission = %submission.id, runs = runs.len(), repo = %submission.repo, git_ref = %submission.git_ref, "submission queued");
        let mut queues = BTreeSet::new();
        // Every run is tracked before any is handed out, and nothing here awaits: a cancel
        // arriving meanwhile finds all of them.
        for run in &runs {
            queues.insert(run.spec.queue.to_string());
            self.track(run.clone(), submission.tier.clone());
        }
        for ((run, lease), handoff) in runs.iter().zip(leases).zip(handoffs.iter_mut()) {
            if let (Some(lease), Some((_, waiter))) = (lease, handoff.take()) {
                self.hand_leased(run, &lease, waiter, &submission.tier);
            }
        }
        self.unreserve_waiters(handoffs);
        if let Some(previous) = previous.map(SubmissionId) {
            let reason = format!("superseded by submission {}", submission.id);
            let canceled = if branch_role == OnBranch::SupersedeOverlap {
                let again: BTreeSet<(&str, &str)> = runs
                    .iter()
                    .map(|r| (r.spec.task_dir.as_str(), r.spec.name.as_str()))
                    .collect();
                self.cancel_runs_where(previous, &reason, |run| {
                    again.contains(&(run.spec.task_dir.as_str(), run.spec.name.as_str()))
                })
                .await
            } else {
                self.cancel_submission(previous, &reason).await
            };
            if let Err(e) = canceled {
                warn!(error = %e, %previous, "failed to cancel superseded runs");
            }
        }
        for queue in queues {
            self.wake(&queue);
        }
        Ok((submission, runs))
    }

    /// Picks, for each of a new submission's runs in order, a waiting worker that may take it
    /// (the weakest eligible, as [`Queue::wake`] picks), and takes it off the waiters. Any
    /// worker still waiting could take none of the queued runs (it would have been handed
    /// one), so handing it a new run passes nobody in its queue.
    fn reserve_waiters(
        &self,
        tier: &TrustTier,
        runs: &[PlannedRun],
    ) -> Vec<Option<(String, Waiter)>> {
        let mut state = self.state.borrow_mut();
        let State {
            waiters,
            paused,
            held_runners,
            ..
        } = &mut *state;
        runs.iter()
            .map(|spec| {
                let queue = spec.queue.as_ref();
                if paused.contains(queue) {
                    return None;
                }
                let waiting = waiters.get_mut(queue)?;
                waiting.retain(|w| !w.tx.is_closed());
                let needs = self.dispatch.needs(tier, spec);
                let pick = waiting
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| {
                        !held_runners.contains_key(&w.runner) && w.offer.satisfies(&needs)
                    })
                    .min_by_key(|(_, w)| w.offer.strength())
                    .map(|(i, _)| i)?;
                waiting.remove(pick).map(|w| (queue.to_owned(), w))
            })
            .collect()
    }

    /// Puts reserved waiters that were not handed a run back where they waited, first in
    /// line (they were waiting longest).
    fn unreserve_waiters(&self, reserved: Vec<Option<(String, Waiter)>>) {
        let mut state = self.state.borrow_mut();
        for (queue, waiter) in reserved.into_iter().flatten().rev() {
            state.waiters.entry(queue).or_default().push_front(waiter);
        }
    }

    /// Registers the cancel hook of the worker that took `leased`, a run leased to it in its
    /// submission's commit; a cancel asked before then is passed on now.
    fn hook_leased(&self, leased: &Leased, on_cancel: CancelHook) -> bool {
        let id = leased.run.id();
        let canceled = {
            let mut state = self.state.borrow_mut();
            let current = state.live.get(&id).and_then(|run| {
                run.state
                    .lease()
                    .map(|l| (l.id, run.state.cancel_requested()))
            });
            match current {
                Some((lease, canceled)) if lease == leased.lease => {
                    state.cancel_hooks.insert(id, on_cancel.clone());
                    canceled.then(|| state.live.get(&id).and_then(|r| r.message.clone()))
                }
                _ => return false,
            }
        };
        if let Some(reason) = canceled {
            on_cancel(reason.unwrap_or_else(|| "canceled".to_owned()));
        }
        true
    }

    /// Hands `run`, leased to `waiter` in its submission's commit, to that worker.
    fn hand_leased(&self, run: &StoredRun, lease: &Lease, waiter: Waiter, tier: &TrustTier) {
        let id = run.id();
        let queue = run.spec.queue.as_ref();
        // An operator may have paused the runner or the queue while the submission committed:
        // then the lease goes back (through the expiry loop) instead of to the worker, which
        // waits on.
        let held = {
            let state = self.state.borrow();
            state.held_runners.contains_key(&lease.runner) || state.paused.contains(queue)
        };
        if held {
            self.abandon(id, lease.id);
            self.unreserve_waiters(vec![Some((queue.to_owned(), waiter))]);
            return;
        }
        {
            let mut state = self.state.borrow_mut();
            state.leased_at_submit += 1;
            let weight = self.dispatch.queue(queue).share_of(tier);
            state.shares.charge(queue, &tier.to_string(), weight);
        }
        self.leases_changed.notify_one();
        self.notify(run);
        debug!(run = %id, runner = %lease.runner, lease = %lease.id, "leased in its submission's commit");
        let handed = Handoff::Leased(Box::new(Leased {
            run: run.clone(),
            lease: lease.id,
            expires_at: lease.expires_at,
        }));
        if waiter.tx.send(handed).is_err() {
            // The worker stopped waiting while the submission committed: hand the lease back.
            self.abandon(id, lease.id);
        }
    }

    /// Has the expiry loop hand back a lease no worker took.
    fn abandon(&self, id: RunId, lease: LeaseId) {
        self.state.borrow_mut().abandoned.push((id, lease));
        self.leases_changed.notify_one();
    }

    /// Hands queued runs of `queue`, oldest first, to waiting workers: each run to the
    /// weakest waiting worker that may take it (the oldest among equals), so stronger runners
    /// stay free for what only they can run. A worker is handed a run, not just woken, so no
    /// other worker can take it meanwhile; one that can take none of the queued runs keeps
    /// waiting (it is never handed work its runner may not run).
    fn wake(&self, queue: &str) {
        let mut state = self.state.borrow_mut();
        if state.paused.contains(queue) {
            return;
        }
        let State {
            waiters,
            queued,
            placement,
            held_runners,
            shares,
            ..
        } = &mut *state;
        let (Some(waiters), Some(ids)) = (waiters.get_mut(queue), queued.get_mut(queue)) else {
            return;
        };
        waiters.retain(|w| !w.tx.is_closed());
        let may_take = |w: &Waiter, needs: &Needs| {
            !held_runners.contains_key(&w.runner) && w.offer.satisfies(needs)
        };
        // Runs in fair-share order, each to a waiter that may take it, until no waiter may
        // take any queued run.
        while !waiters.is_empty() {
            let Some(next) = next_fair(&self.dispatch, shares, queue, ids, placement, |needs| {
                waiters.iter().any(|w| may_take(w, needs))
            }) else {
                break;
            };
            let Some((_, needs)) = placement.get(&next.run) else {
                break;
            };
            // The weakest eligible waiter; `min_by_key` keeps the first (oldest) of equals.
            let Some(pick) = waiters
                .iter()
                .enumerate()
                .filter(|(_, w)| may_take(w, needs))
                .min_by_key(|(_, w)| w.offer.strength())
                .map(|(i, _)| i)
            else {
                break;
            };
            // A waiter that went away is dropped; the run stays for the next.
            if let Some(waiter) = waiters.remove(pick)
                && waiter.tx.send(Handoff::Run(next.run)).is_ok()
            {
                ids.remove(next.run);
                shares.charge(queue, &next.group, next.weight);
            }
        }
    }

    /// Records that `runner` has a worker on `queue` offering `offer`, until
    /// [`Queue::disconnect_worker`]: runs no connected runner can take say so.
    pub fn connect_worker(
        &self,
        queue: &str,
        runner: &str,
        offer: Offer,
        mut profile: RunnerProfile,
    ) -> WorkerId {
        profile.connected_at = self.now();
        let mut state = self.state.borrow_mut();
        state.next_worker += 1;
        let id = WorkerId(state.next_worker);
        state.connected.insert(
            id,
            ConnectedWorker {
                queue: queue.to_owned(),
                runner: runner.to_owned(),
                offer,
                profile,
            },
        );
        id
    }

    /// The worker is gone (its connection closed or its capability was dropped).
    pub fn disconnect_worker(&self, id: WorkerId) {
        self.state.borrow_mut().connected.remove(&id);
    }

    /// A run's trust tier: its submission's (kept in memory while the run is unfinished).
    pub fn tier(&self, run: &StoredRun) -> Option<TrustTier> {
        if let Some((tier, _)) = self.state.borrow().placement.get(&run.id()) {
            return Some(tier.clone());
        }
        self.submission(run.submission)
            .ok()
            .flatten()
            .map(|s| s.tier)
    }

    /// A run's trust tier and what it needs of a runner, while it is unfinished.
    pub fn placement(&self, id: RunId) -> Option<(TrustTier, Needs)> {
        self.state.borrow().placement.get(&id).cloned()
    }

    /// Why a queued run is not running yet, when that is more than "every runner that could
    /// take it is busy": its queue is paused, or no connected runner may take it.
    pub fn waiting_reason(&self, id: RunId) -> Option<String> {
        let state = self.state.borrow();
        let run = state.live.get(&id)?;
        if run.state.status() != RunStatus::Queued {
            return None;
        }
        let queue = run.spec.queue.as_ref();
        if state.paused.contains(queue) {
            return Some(format!("queue {queue} is paused"));
        }
        let (tier, needs) = state.placement.get(&id)?;
        let connected: Vec<(String, Offer)> = state
            .connected
            .values()
            .filter(|w| w.queue == queue)
            .map(|w| (w.runner.clone(), w.offer.clone()))
            .collect();
        tinyci_core::waiting_reason(queue, tier, needs, &connected)
    }

    /// Sets what an operator wants of `runner`, durably (it survives a restart): `Paused`
    /// (stays connected, is leased nothing), `Draining` (is leased nothing, and once it holds
    /// no run its workers are told it is drained) or `Active`.
    pub async fn set_runner_mode(&self, runner: &str, mode: RunnerMode) -> Result<(), QueueError> {
        let runner = runner.to_owned();
        self.to_the_end(move |queue| async move { queue.set_runner_mode_now(&runner, mode).await })
            .await
    }

    /// [`Queue::set_runner_mode`], on the task that carries it to the end.
    async fn set_runner_mode_now(&self, runner: &str, mode: RunnerMode) -> Result<(), QueueError> {
        let key = pool_key("runner", runner);
        self.committer
            .write(move |txn| match mode.stored() {
                Some(value) => txn.put(POOL, &key[..], value.as_bytes()),
                None => txn.delete(POOL, &key[..]).map(|_| ()),
            })
            .await?;
        let queues: Vec<String> = {
            let mut state = self.state.borrow_mut();
            match mode {
                RunnerMode::Active => state.held_runners.remove(runner),
                held => state.held_runners.insert(runner.to_owned(), held),
            };
            state.waiters.keys().cloned().collect()
        };
        self.bump_pool();
        if mode == RunnerMode::Active {
            for queue in queues {
                self.wake(&queue);
            }
        }
        Ok(())
    }

    /// What an operator set on `runner`.
    pub fn runner_mode(&self, runner: &str) -> RunnerMode {
        self.state
            .borrow()
            .held_runners
            .get(runner)
            .copied()
            .unwrap_or(RunnerMode::Active)
    }

    /// Runners an operator paused or is draining, connected or not.
    pub fn held_runners(&self) -> BTreeMap<String, RunnerMode> {
        self.state.borrow().held_runners.clone()
    }

    /// Whether `runner` is being drained and holds no run any more: it is done, and its
    /// workers are told so.
    pub fn drained(&self, runner: &str) -> bool {
        let state = self.state.borrow();
        state.held_runners.get(runner) == Some(&RunnerMode::Draining)
            && !state.live.values().any(|r| {
                r.runner.as_deref() == Some(runner)
                    && matches!(r.state.status(), RunStatus::Leased | RunStatus::Running)
            })
    }

    /// Resolves after the next change of the pool (see [`Queue::drained`]).
    pub fn pool_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        let mut state = self.state.borrow_mut();
        state
            .pool_changed
            .get_or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    fn bump_pool(&self) {
        if let Some(tx) = &self.state.borrow().pool_changed {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Waits until a run of `queue` can be leased to `runner`, then leases it (durably) and
    /// returns it. `on_cancel` is called if the run is asked to stop while leased. Cancel-safe:
    /// dropping the future before it resolves leases nothing.
    pub async fn next(
        &self,
        queue: &str,
        runner: &str,
        offer: &Offer,
        on_cancel: CancelHook,
    ) -> Result<Leased, QueueError> {
        loop {
            let id = match self.take_or_wait(queue, runner, offer) {
                Take::Run(id) => id,
                // Handed a run when one it may take is queued here (or the queue resumes), or
                // a new run leased to it in its submission's commit.
                Take::Wait(rx) => {
                    let mut handed = Handed {
                        queue: self,
                        rx: Some(rx),
                    };
                    match handed.run().await? {
                        Handoff::Run(id) => id,
                        Handoff::Leased(leased) => {
                            if self.hook_leased(&leased, on_cancel.clone()) {
                                return Ok(*leased);
                            }
                            // Revoked or returned before this worker took it: wait on.
                            continue;
                        }
                    }
                }
            };
            match self.lease(id, runner, on_cancel.clone()).await {
                Ok(leased) => return Ok(leased),
                Err(e) => warn!(run = %id, error = %e, "lease failed; trying the next run"),
            }
        }
    }

    /// Takes the oldest queued run of `queue` that `offer` satisfies, or registers `runner`
    /// as waiting for one.
    fn take_or_wait(&self, queue: &str, runner: &str, offer: &Offer) -> Take {
        let mut state = self.state.borrow_mut();
        if !state.paused.contains(queue) && !state.held_runners.contains_key(runner) {
            let State {
                queued,
                placement,
                shares,
                ..
            } = &mut *state;
            let found = queued.get(queue).and_then(|ids| {
                next_fair(&self.dispatch, shares, queue, ids, placement, |needs| {
                    offer.satisfies(needs)
                })
            });
            if let Some(found) = found {
                if let Some(ids) = queued.get_mut(queue) {
                    ids.remove(found.run);
                }
                shares.charge(queue, &found.group, found.weight);
                return Take::Run(found.run);
            }
        }
        let (tx, rx) = oneshot::channel();
        state
            .waiters
            .entry(queue.to_owned())
            .or_default()
            .push_back(Waiter {
                runner: runner.to_owned(),
                offer: offer.clone(),
                tx,
            });
        Take::Wait(rx)
    }

    /// Leases a run taken off its queue. On failure the run goes back on the queue.
    async fn lease(
        &self,
        id: RunId,
        runner: &str,
        on_cancel: CancelHook,
    ) -> Result<Leased, QueueError> {
        let runner = runner.to_owned();
        let mut caller = CallerGone::default();
        let gone = caller.flag.clone();
        let leased = self
            .to_the_end(
                move |queue| async move { queue.lease_now(id, &runner, on_cancel, &gone).await },
            )
            .await;
        caller.waiting = false;
        leased
    }

    /// [`Queue::lease`], on the task that carries it to the end.
    async fn lease_now(
        &self,
        id: RunId,
        runner: &str,
        on_cancel: CancelHook,
        caller_gone: &Cell<bool>,
    ) -> Result<Leased, QueueError> {
        // Nothing that may go back on the queue waits on this lock: the run left the queue when
        // it was taken, and only a change (a cancel) can reach it meanwhile.
        let _changing = self.lock_run(id).await;
        let now = self.now();
        let expires_at = self.policy.expiry(now);
        let mut run = self
            .state
            .borrow()
            .live
            .get(&id)
            .cloned()
            .ok_or(QueueError::NoRun(id))?;
        let transition = run.state.apply(
            RunEvent::Lease {
                runner: runner.to_owned(),
                expires_at,
            },
            now,
        )?;
        let Transition::Leased(lease) = transition else {
            return Err(QueueError::Transition(TransitionError::NotQueued {
                run: id,
                status: run.state.status(),
            }));
        };
        run.runner = Some(runner.to_owned());
        let to_write = run.clone();
        // Guard: if this future is dropped mid-write, put the run back on its queue.
        let guard = Requeue {
            queue: self,
            id,
            armed: true,
        };
        let written = self
            .committer
            .write(move |txn| put_run(txn, &to_write))
            .await;
        let mut guard = guard;
        guard.armed = false;
        if let Err(e) = written {
            self.requeue_in_memory(id);
            return Err(e.into());
        }
        {
            let mut state = self.state.borrow_mut();
            state.live.insert(id, run.clone());
            state.cancel_hooks.insert(id, on_cancel);
        }
        self.leases_changed.notify_one();
        self.notify(&run);
        if caller_gone.get() {
            // Leased durably for a worker that stopped waiting (its connection died, its
            // runner drained): undone as undelivered, at no attempt's cost, rather than left
            // to lapse.
            self.state.borrow_mut().cancel_hooks.remove(&id);
            self.abandon(id, lease.id);
            debug!(run = %id, %runner, lease = %lease.id, "leased to a worker gone meanwhile");
            return Err(QueueError::Closed);
        }
        debug!(run = %id, %runner, lease = %lease.id, "leased");
        Ok(Leased {
            run,
            lease: lease.id,
            expires_at: lease.expires_at,
        })
    }

    fn requeue_in_memory(&self, id: RunId) {
        let queue = {
            let mut state = self.state.borrow_mut();
            let Some(run) = state.live.get(&id) else {
                return;
            };
            let queue = run.spec.queue.to_string();
            enqueue(&mut state, &queue, id);
            queue
        };
        self.wake(&queue);
    }

    /// Applies `event` to a live run, persists it if `durable`, and updates memory, queues,
    /// waiters and watchers. Returns the transition.
    async fn change(
        &self,
        id: RunId,
        event: RunEvent,
        durable: bool,
    ) -> Result<Transition, QueueError> {
        self.change_dated(id, event, durable, When::LockTaken).await
    }

    /// [`Queue::change`] dated no earlier than `at`.
    async fn change_not_before(
        &self,
        id: RunId,
        event: RunEvent,
        durable: bool,
        at: u64,
    ) -> Result<Transition, QueueError> {
        self.change_dated(id, event, durable, When::NotBefore(at))
            .await
    }

    async fn change_dated(
        &self,
        id: RunId,
        event: RunEvent,
        durable: bool,
        when: When,
    ) -> Result<Transition, QueueError> {
        self.to_the_end(move |queue| async move {
            queue.change_now(id, event, None, durable, when).await
        })
        .await
    }

    /// Waits for, then holds, the right to change run `id`.
    ///
    /// A change is dated once it holds the lock ([`When::LockTaken`]): the wait can be long (a
    /// commit in flight, retention holding the run final), and a time read before it would date
    /// an outcome, or judge a lease, by a moment the change did not happen at.
    async fn lock_run(&self, id: RunId) -> RunLock<'_> {
        let lock = self.run_locks.borrow_mut().entry(id).or_default().clone();
        RunLock {
            queue: self,
            id,
            held: Some(lock.lock_owned().await),
        }
    }

    /// [`Queue::change_at`], on the task that carries it to the end. `message`, if given,
    /// becomes the run's message when the event changes it (a completion's words, a cancel's
    /// reason): set here, under the run's lock, from the state the event applied to.
    async fn change_now(
        &self,
        id: RunId,
        event: RunEvent,
        message: Option<String>,
        durable: bool,
        when: When,
    ) -> Result<Transition, QueueError> {
        let _changing = self.lock_run(id).await;
        let now = match when {
            When::LockTaken => self.now(),
            When::NotBefore(at) => self.now().max(at),
        };
        self.change_locked(id, event, message, durable, now).await
    }

    /// [`Queue::change_now`], the run's lock already held by the caller.
    async fn change_locked(
        &self,
        id: RunId,
        event: RunEvent,
        message: Option<String>,
        durable: bool,
        now: u64,
    ) -> Result<Transition, QueueError> {
        let mut run = self
            .state
            .borrow()
            .live
            .get(&id)
            .cloned()
            .ok_or(QueueError::NoRun(id))?;
        let transition = run.state.apply(event, now)?;
        if let Some(message) = message
            && !matches!(
                transition,
                Transition::Unchanged | Transition::AlreadyCompleted(_)
            )
        {
            run.message = Some(message);
        }
        match &transition {
            Transition::Started => run.started_at = Some(now),
            Transition::Requeued { .. } => run.runner = None,
            Transition::GaveUp(outcome) => run.message = outcome.message.clone(),
            // A cancel's reason (set by `cancel_run`) says more than the generic message.
            Transition::Canceled(outcome) if run.message.is_none() => {
                run.message = outcome.message.clone();
            }
            _ => {}
        }
        let unchanged = matches!(
            transition,
            Transition::Unchanged | Transition::AlreadyCompleted(_)
        );
        if durable && !unchanged {
            let to_write = run.clone();
            self.committer
                .write(move |txn| put_run(txn, &to_write))
                .await?;
        }
        let status = run.state.status();
        let queue = run.spec.queue.to_string();
        {
            let mut state = self.state.borrow_mut();
            if status.is_final() {
                state.live.remove(&id);
                state.placement.remove(&id);
                state.cancel_hooks.remove(&id);
                if let Some(q) = state.queued.get_mut(&queue) {
                    q.remove(id);
                }
            } else {
                if status == RunStatus::Queued {
                    enqueue(&mut state, &queue, id);
                    state.cancel_hooks.remove(&id);
                }
                state.live.insert(id, run.clone());
            }
        }
        if !unchanged {
            self.notify(&run);
        }
        if status == RunStatus::Queued {
            self.wake(&queue);
        }
        self.leases_changed.notify_one();
        Ok(transition)
    }

    /// The lease holder started the run.
    pub async fn started(&self, id: RunId, lease: LeaseId) -> Result<(), QueueError> {
        self.change(id, RunEvent::Start { lease }, true)
            .await
            .map(drop)
    }

    /// Renews a lease; returns the new expiry. Not persisted (see the crate docs).
    pub async fn heartbeat(&self, id: RunId, lease: LeaseId) -> Result<u64, QueueError> {
        self.to_the_end(move |queue| async move {
            let _changing = queue.lock_run(id).await;
            queue.heartbeat_locked(id, lease).await
        })
        .await
    }

    /// Extends `lease` from now, the run's lock already held; returns the new expiry.
    async fn heartbeat_locked(&self, id: RunId, lease: LeaseId) -> Result<u64, QueueError> {
        let now = self.now();
        let expires_at = self.policy.expiry(now);
        let event = RunEvent::Heartbeat { lease, expires_at };
        match self.change_locked(id, event, None, false, now).await? {
            Transition::Extended { expires_at } => Ok(expires_at),
            _ => Ok(expires_at),
        }
    }

    /// Records the lease holder's outcome, once. Repeating it is harmless.
    pub async fn complete(
        &self,
        id: RunId,
        lease: LeaseId,
        status: RunStatus,
        exit_code: Option<i32>,
        message: String,
    ) -> Result<Outcome, QueueError> {
        let live = self.state.borrow().live.contains_key(&id);
        if !live {
            return self.recorded_outcome(id, lease);
        }
        // Only the lease's holder words the run's outcome: the message is set under the run's
        // lock, and only if the completion is taken (a stale one is refused and words nothing).
        let event = RunEvent::Complete {
            lease,
            status,
            exit_code,
        };
        let changed = self
            .to_the_end(move |queue| async move {
                queue
                    .change_now(id, event, Some(message), true, When::LockTaken)
                    .await
            })
            .await;
        match changed {
            Ok(Transition::Completed(outcome) | Transition::AlreadyCompleted(outcome)) => {
                Ok(outcome)
            }
            // Final by the time this completion's turn came (the same completion resent, or
            // a cancel): the one outcome recorded answers it.
            Err(QueueError::NoRun(_)) => self.recorded_outcome(id, lease),
            Err(e) => Err(e),
            Ok(other) => Err(QueueError::Store(store_error(format!(
                "unexpected transition {other:?}"
            )))),
        }
    }

    /// A final run's outcome, from the store (exactly one is ever recorded), if `lease`'s
    /// holder recorded it; else why this completion comes too late.
    fn recorded_outcome(&self, id: RunId, lease: LeaseId) -> Result<Outcome, QueueError> {
        let run = self.run(id)?.ok_or(QueueError::NoRun(id))?;
        match run.state.outcome() {
            Some(outcome) if outcome.lease == Some(lease) => Ok(outcome.clone()),
            _ => Err(QueueError::Transition(TransitionError::Final {
                run: id,
                status: run.state.status(),
            })),
        }
    }

    /// The current lease of an unfinished run, if it is leased.
    fn current_lease(&self, id: RunId) -> Option<tinyci_core::Lease> {
        self.state
            .borrow()
            .live
            .get(&id)
            .and_then(|r| r.state.lease().cloned())
    }

    /// The holder of `lease` reconnected (after a lost connection or a site restart) and
    /// takes its run back: the lease is renewed and `on_cancel` replaces the old connection's
    /// hook. A cancel asked for while it was away is passed on at once. Fails if the lease was
    /// lost meanwhile (expired, requeued, given to someone else) or belongs to another runner.
    pub async fn resume(
        &self,
        id: RunId,
        lease: LeaseId,
        runner: &str,
        on_cancel: CancelHook,
    ) -> Result<Leased, QueueError> {
        let runner = runner.to_owned();
        self.to_the_end(move |queue| async move {
            queue.resume_now(id, lease, &runner, on_cancel).await
        })
        .await
    }

    /// [`Queue::resume`], on the task that carries it to the end: the lease is checked,
    /// renewed and given its new hook under the run's lock, so no requeue slips in between.
    async fn resume_now(
        &self,
        id: RunId,
        lease: LeaseId,
        runner: &str,
        on_cancel: CancelHook,
    ) -> Result<Leased, QueueError> {
        let _changing = self.lock_run(id).await;
        let current = self.current_lease(id);
        match current {
            Some(current) if current.id == lease && current.runner == runner => {}
            _ => {
                return Err(QueueError::LeaseLost {
                    run: id,
                    lease,
                    runner: runner.to_owned(),
                });
            }
        }
        let expires_at = self.heartbeat_locked(id, lease).await?;
        let run = self
            .state
            .borrow()
            .live
            .get(&id)
            .cloned()
            .ok_or(QueueError::NoRun(id))?;
        self.state
            .borrow_mut()
            .cancel_hooks
            .insert(id, on_cancel.clone());
        if run.state.cancel_requested() {
            on_cancel(run.message.clone().unwrap_or_else(|| "canceled".into()));
        }
        info!(run = %id, %runner, %lease, "lease resumed");
        Ok(Leased {
            run,
            lease,
            expires_at,
        })
    }

    /// The holder of `lease` went away without giving it back (its connection died): forget
    /// how to reach it. The lease stays until it expires or is resumed; a cancel meanwhile
    /// is kept and passed on at resume. (The hook holds the dead connection's objects, so
    /// keeping it would keep them alive.)
    pub fn detach(&self, id: RunId, lease: LeaseId) {
        if self.current_lease(id).is_some_and(|l| l.id == lease) {
            self.state.borrow_mut().cancel_hooks.remove(&id);
        }
    }

    /// Hands back every lease `runner` holds, as if each `Job` were released: for a runner
    /// known to be gone (the embedded runner, which dies with the site). Returns how many.
    pub async fn release_runner(&self, runner: &str) -> usize {
        let held: Vec<(RunId, LeaseId)> = self
            .state
            .borrow()
            .live
            .values()
            .filter_map(|r| {
                r.state
                    .lease()
                    .filter(|l| l.runner == runner)
                    .map(|l| (r.id(), l.id))
            })
            .collect();
        for (id, lease) in &held {
            self.release(*id, *lease).await;
        }
        held.len()
    }

    /// The holder gave the lease back (`Job.release`, or a `Job` dropped before it started):
    /// requeue now rather than at expiry.
    pub async fn release(&self, id: RunId, lease: LeaseId) {
        let current = self.current_lease(id);
        let Some(current) = current.filter(|l| l.id == lease) else {
            return;
        };
        // A returned lease is a lost lease that need not wait for its expiry.
        let at = current.expires_at;
        if let Err(e) = self
            .change_not_before(id, RunEvent::LeaseExpired, true, at)
            .await
        {
            warn!(run = %id, error = %e, "failed to requeue a returned lease");
        }
    }

    /// The holder lost its authority (its grant was revoked or expired): tells it to stop
    /// through its cancel hook, then requeues the run at once.
    pub async fn revoke_lease(&self, id: RunId, lease: LeaseId, reason: &str) {
        if self.current_lease(id).is_none_or(|l| l.id != lease) {
            return;
        }
        let hook = self.state.borrow_mut().cancel_hooks.remove(&id);
        if let Some(hook) = hook {
            hook(reason.to_owned());
        }
        self.release(id, lease).await;
    }

    /// Cancels one run: a queued one ends now; a leased one is told to stop (its holder then
    /// completes it as canceled, or its lease lapses). Returns whether anything changed.
    pub async fn cancel_run(&self, id: RunId, reason: &str) -> Result<bool, QueueError> {
        if !self.state.borrow().live.contains_key(&id) {
            return Ok(false);
        }
        let reason = reason.to_owned();
        // The holder is told inside the task too: a cancel stored must reach the runner even
        // if whoever asked stops waiting.
        self.to_the_end(move |queue| async move {
            let transition = match queue
                .change_now(
                    id,
                    RunEvent::Cancel,
                    Some(reason.clone()),
                    true,
                    When::LockTaken,
                )
                .await
            {
                // It ended before this cancel's turn: nothing left to cancel.
                Err(QueueError::NoRun(_)) => return Ok(false),
                other => other?,
            };
            match transition {
                Transition::CancelRequested => {
                    let hook = queue.state.borrow().cancel_hooks.get(&id).cloned();
                    if let Some(hook) = hook {
                        hook(reason);
                    }
                    Ok(true)
                }
                Transition::Canceled(_) => Ok(true),
                _ => Ok(false),
            }
        })
        .await
    }

    /// Cancels every unfinished run of a submission; returns how many.
    pub async fn cancel_submission(
        &self,
        id: SubmissionId,
        reason: &str,
    ) -> Result<u32, QueueError> {
        self.cancel_runs_where(id, reason, |_| true).await
    }

    /// Cancels the runs of submission `id` that `which` picks; returns how many.
    async fn cancel_runs_where(
        &self,
        id: SubmissionId,
        reason: &str,
        which: impl Fn(&StoredRun) -> bool,
    ) -> Result<u32, QueueError> {
        let submission = self.submission(id)?.ok_or(QueueError::NoSubmission(id))?;
        let mut count = 0;
        for run in submission.runs {
            let picked = self.run(run)?.is_some_and(|r| which(&r));
            if picked && self.cancel_run(run, reason).await? {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Requeues (or gives up) every run whose lease has expired by now.
    pub async fn expire_leases(&self) -> usize {
        let now = self.now();
        let expired: Vec<RunId> = self
            .state
            .borrow()
            .live
            .values()
            .filter(|r| r.state.lease_expired(now))
            .map(StoredRun::id)
            .collect();
        let mut n = 0;
        for id in expired {
            match self.change(id, RunEvent::LeaseExpired, true).await {
                Ok(t) => {
                    n += 1;
                    info!(run = %id, transition = ?t, "lease expired");
                }
                Err(e) => warn!(run = %id, error = %e, "failed to expire a lease"),
            }
        }
        n
    }

    /// Runs lease expiry forever: sleeps until the earliest lease expiry (or until leases
    /// change), then expires what is due. Spawn it on the site's LocalSet.
    pub async fn run_expiry(self: Rc<Self>) {
        loop {
            let next = self
                .state
                .borrow()
                .live
                .values()
                .filter_map(|r| r.state.lease().map(|l| l.expires_at))
                .min();
            let wait = next.map(|at| Duration::from_millis(at.saturating_sub(self.now()) + 1));
            tokio::select! {
                () = async {
                    match wait {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    self.expire_leases().await;
                }
                () = self.leases_changed.notified() => {}
            }
            let abandoned = std::mem::take(&mut self.state.borrow_mut().abandoned);
            for (id, lease) in abandoned {
                // Nobody received the lease: undone, not lost (it costs the run no attempt).
                if let Err(e) = self.change(id, RunEvent::Undelivered { lease }, true).await {
                    warn!(run = %id, error = %e, "failed to requeue a lease nobody took");
                }
            }
        }
    }

    /// Pauses or resumes a queue, durably (it survives a restart).
    pub async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), QueueError> {
        let name = queue.to_owned();
        self.to_the_end(move |queue| async move { queue.set_paused_now(&name, paused).await })
            .await
    }

    /// [`Queue::set_paused`], on the task that carries it to the end.
    async fn set_paused_now(&self, queue: &str, paused: bool) -> Result<(), QueueError> {
        let key = pool_key("queue", queue);
        self.committer
            .write(move |txn| {
                if paused {
                    txn.put(POOL, &key[..], b"paused".as_slice())
                } else {
                    txn.delete(POOL, &key[..]).map(|_| ())
                }
            })
            .await?;
        let mut state = self.state.borrow_mut();
        if paused {
            state.paused.insert(queue.to_owned());
        } else {
            state.paused.remove(queue);
        }
        drop(state);
        if !paused {
            self.wake(queue);
        }
        Ok(())
    }

    /// Watches a submission's runs: every change is sent until the receiver is dropped.
    pub fn watch(&self, id: SubmissionId) -> mpsc::UnboundedReceiver<RunUpdate> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state
            .borrow_mut()
            .watchers
            .entry(id)
            .or_default()
            .push(tx);
        rx
    }

    fn notify(&self, run: &StoredRun) {
        let (observers, draining) = {
            let mut state = self.state.borrow_mut();
            if let Some(watchers) = state.watchers.get_mut(&run.submission) {
                watchers.retain(|w| w.send(run.clone()).is_ok());
            }
            let draining = state
                .held_runners
                .values()
                .any(|m| *m == RunnerMode::Draining);
            (state.observers.clone(), draining)
        };
        // A draining runner may just have finished its last run.
        if draining {
            self.bump_pool();
        }
        for observer in observers {
            observer(run);
        }
    }

    /// Calls `observer` with every run change, for as long as the queue lives.
    pub fn observe(&self, observer: impl Fn(&StoredRun) + 'static) {
        self.state.borrow_mut().observers.push(Rc::new(observer));
    }

    /// Queues finished run `id` again as its next attempt (same run id, its log and
    /// artifacts taken over by the new attempt as after a lost lease), with a fresh budget of
    /// leases. The caller checks today's policy first. Returns the run as queued, once durable.
    pub async fn retry(&self, id: RunId) -> Result<StoredRun, QueueError> {
        self.to_the_end(move |queue| async move { queue.retry_now(id).await })
            .await
    }

    /// [`Queue::retry`], on the task that carries it to the end, holding the run's lock.
    async fn retry_now(&self, id: RunId) -> Result<StoredRun, QueueError> {
        let _changing = self.lock_run(id).await;
        let mut run = self.run(id)?.ok_or(QueueError::NoRun(id))?;
        let tier = self.tier_of(run.submission)?;
        run.state.apply(
            RunEvent::Retry {
                more_attempts: self.policy.max_attempts,
            },
            self.now(),
        )?;
        run.runner = None;
        run.started_at = None;
        run.message = None;
        let to_write = run.clone();
        self.committer
            .write(move |txn| put_run(txn, &to_write))
            .await?;
        // Two retries racing: the first to get here queues it, the other finds it live.
        if let Some(live) = self.state.borrow().live.get(&id) {
            return Ok(live.clone());
        }
        let queue = run.spec.queue.to_string();
        self.track(run.clone(), tier);
        self.notify(&run);
        self.wake(&queue);
        Ok(run)
    }

    /// Holds those of `runs` (each a run and when the caller saw it finish) that are still
    /// that same finished attempt, each under its run's lock, taken in id order: none of them
    /// can be retried until the hold is dropped. Retention takes this before it removes a
    /// run's output, so what it removes is always the finished attempt's it judged, never the
    /// output of a retry that began meanwhile (a retry keeps the run's id), even one that has
    /// finished again since.
    pub async fn hold_final(
        &self,
        runs: impl IntoIterator<Item = (RunId, u64)>,
    ) -> Result<FinalRuns<'_>, QueueError> {
        let runs: BTreeMap<RunId, u64> = runs.into_iter().collect();
        let mut held = FinalRuns {
            ids: BTreeSet::new(),
            _locks: Vec::new(),
        };
        for (id, seen_finished_at) in runs {
            let lock = self.lock_run(id).await;
            let same = self.run(id)?.is_some_and(|run| {
                run.state
                    .outcome()
                    .is_some_and(|outcome| outcome.finished_at == seen_finished_at)
            });
            if same {
                held.ids.insert(id);
                held._locks.push(lock);
            }
        }
        Ok(held)
    }

    /// A run as it is now (live state if unfinished, else stored).
    pub fn run(&self, id: RunId) -> Result<Option<StoredRun>, QueueError> {
        if let Some(run) = self.state.borrow().live.get(&id) {
            return Ok(Some(run.clone()));
        }
        let bytes = self
            .store
            .read(|txn| Ok(txn.get(RUNS, &id.get())?.map(<[u8]>::to_vec)))?;
        bytes.map(|b| decode_run(id.get(), &b)).transpose()
    }

    /// The latest submission on `repo` and `git_ref` (the one a newer one would supersede).
    pub fn branch_head(
        &self,
        repo: &str,
        git_ref: &str,
    ) -> Result<Option<SubmissionId>, QueueError> {
        let key = branch_key(repo, git_ref);
        Ok(self
            .store
            .read(|txn| txn.get(BRANCH_HEADS, &key[..]))?
            .map(SubmissionId))
    }

    /// A submission as stored.
    pub fn submission(&self, id: SubmissionId) -> Result<Option<StoredSubmission>, QueueError> {
        let bytes = self
            .store
            .read(|txn| Ok(txn.get(SUBMISSIONS, &id.get())?.map(<[u8]>::to_vec)))?;
        bytes
            .map(|b| decode_submission(id.get(), &b, &self.site))
            .transpose()
    }

    /// Up to `limit` submissions older than `before` (all, when `None`), newest first: one
    /// page of history, read from the newest end, never the whole table.
    pub fn submissions_before(
        &self,
        before: Option<SubmissionId>,
        limit: usize,
    ) -> Result<Vec<StoredSubmission>, QueueError> {
        let upper = match before {
            Some(id) => std::ops::Bound::Excluded(id.get()),
            None => std::ops::Bound::Unbounded,
        };
        let stored: Vec<(u64, Vec<u8>)> = self.store.read(|txn| {
            txn.iter_range_rev(SUBMISSIONS, &(std::ops::Bound::Unbounded, upper))?
                .take(limit)
                .map(|entry| entry.map(|(id, bytes)| (id, bytes.to_vec())))
                .collect()
        })?;
        stored
            .into_iter()
            .map(|(id, bytes)| decode_submission(id, &bytes, &self.site))
            .collect()
    }

    /// The SHA-256 of every source archive a submission names: what a sweep of uploaded
    /// archives must keep. Reads every submission (a sweep's cost, not a request's).
    pub fn source_archives(&self) -> Result<std::collections::BTreeSet<Vec<u8>>, QueueError> {
        let mut archives = std::collections::BTreeSet::new();
        let mut failure = None;
        self.store.read(|txn| {
            for entry in txn.iter_range(SUBMISSIONS, &..)? {
                let (id, bytes) = entry?;
                match decode_submission(id, bytes, &self.site) {
                    Ok(submission) => {
                        archives.insert(submission.source_sha256);
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            Ok(())
        })?;
        match failure {
            Some(e) => Err(e),
            None => Ok(archives),
        }
    }

    /// The runs of a submission, current.
    pub fn submission_runs(&self, id: SubmissionId) -> Result<Vec<StoredRun>, QueueError> {
        let submission = self.submission(id)?.ok_or(QueueError::NoSubmission(id))?;
        let mut runs = Vec::new();
        for run in submission.runs {
            if let Some(run) = self.run(run)? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// Every run, newest first, up to `limit`.
    pub fn runs(&self, limit: usize) -> Result<Vec<StoredRun>, QueueError> {
        self.runs_matching(&RunFilter::default(), limit)
    }

    /// The newest `limit` runs that `filter` matches, newest first.
    ///
    /// Unfinished runs come from memory (their state there is newer than what is stored);
    /// the rest from the store's indexes (see `history.rs`), so a listing costs what it
    /// returns, not the length of the history, however rare the match.
    pub fn runs_matching(
        &self,
        filter: &RunFilter,
        limit: usize,
    ) -> Result<Vec<StoredRun>, QueueError> {
        let state = self.state.borrow();
        let mut runs: Vec<StoredRun> = state
            .live
            .values()
            .filter(|run| filter.matches(run))
            .cloned()
            .collect();
        let stored = self.store.read(|txn| {
            Ok(history::newest_matching(txn, filter, limit, |id| {
                state.live.contains_key(&RunId(id))
            }))
        })??;
        runs.extend(stored);
        runs.sort_unstable_by_key(|run| std::cmp::Reverse(run.id()));
        runs.truncate(limit);
        Ok(runs)
    }

    /// Depth (queued runs) and leased/running runs per queue, plus waiting workers.
    pub fn queues(&self) -> BTreeMap<String, QueueStats> {
        let state = self.state.borrow();
        let mut out: BTreeMap<String, QueueStats> = BTreeMap::new();
        for (queue, ids) in &state.queued {
            out.entry(queue.clone()).or_default().depth = ids.len();
        }
        for run in state.live.values() {
            if matches!(run.state.status(), RunStatus::Leased | RunStatus::Running) {
                let stats = out.entry(run.spec.queue.to_string()).or_default();
                stats.active += 1;
                if let Some(started) = run.started_at {
                    stats.oldest_started_at =
                        Some(stats.oldest_started_at.map_or(started, |o| o.min(started)));
                }
            }
        }
        for (queue, waiters) in &state.waiters {
            let waiting = waiters.iter().filter(|w| !w.tx.is_closed()).count();
            out.entry(queue.clone()).or_default().waiting = waiting;
        }
        for queue in &state.paused {
            out.entry(queue.clone()).or_default().paused = true;
        }
        // Each submitter group's weight, what it has waiting and running, and its leases.
        for (queue, ids) in &state.queued {
            for id in ids.runs() {
                if let Some((tier, _)) = state.placement.get(&id) {
                    group_of(&mut out, &self.dispatch, queue, tier).queued += 1;
                }
            }
        }
        for run in state.live.values() {
            if matches!(run.state.status(), RunStatus::Leased | RunStatus::Running)
                && let Some((tier, _)) = state.placement.get(&run.id())
            {
                group_of(&mut out, &self.dispatch, run.spec.queue.as_ref(), tier).active += 1;
            }
        }
        for (queue, group, leased) in state.shares.all_leased() {
            if let Ok(tier) = group.parse::<TrustTier>() {
                group_of(&mut out, &self.dispatch, queue, &tier).leased = leased;
            }
        }
        out
    }

    /// Every runner the queue knows right now: waiting for work or holding runs, with the
    /// queues it waits on and the runs it holds.
    pub fn runners(&self) -> BTreeMap<String, RunnerActivity> {
        let state = self.state.borrow();
        let mut out: BTreeMap<String, RunnerActivity> = BTreeMap::new();
        for (queue, waiters) in &state.waiters {
            for waiter in waiters.iter().filter(|w| !w.tx.is_closed()) {
                let entry = out.entry(waiter.runner.clone()).or_default();
                if !entry.waiting_on.contains(queue) {
                    entry.waiting_on.push(queue.clone());
                }
            }
        }
        for worker in state.connected.values() {
            let entry = out.entry(worker.runner.clone()).or_default();
            let earlier = entry
                .profile
                .as_ref()
                .is_some_and(|p| p.connected_at <= worker.profile.connected_at);
            if !earlier {
                entry.profile = Some(worker.profile.clone());
                entry.offer = Some(worker.offer.clone());
            }
            if !entry.waiting_on.contains(&worker.queue) {
                entry.waiting_on.push(worker.queue.clone());
            }
        }
        for run in state.live.values() {
            if let (Some(runner), true) = (
                &run.runner,
                matches!(run.state.status(), RunStatus::Leased | RunStatus::Running),
            ) {
                out.entry(runner.clone())
                    .or_default()
                    .holding
                    .push(run.id());
            }
        }
        out
    }

    /// Names of runners currently waiting for work, per queue.
    pub fn waiting_runners(&self) -> BTreeMap<String, Vec<String>> {
        let state = self.state.borrow();
        state
            .waiters
            .iter()
            .map(|(q, w)| {
                (
                    q.clone(),
                    w.iter()
                        .filter(|w| !w.tx.is_closed())
                        .map(|w| w.runner.clone())
                        .collect(),
                )
            })
            .collect()
    }
}

/// What a new submission does to its repository and ref's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnBranch {
    /// Becomes the branch's latest submission and cancels the unfinished runs of the one it
    /// replaces: for submitters allowed to cancel (`runs:cancel`), and the site's own GitHub
    /// builds.
    Supersede,
    /// As `Supersede`, but cancels only the replaced submission's runs that this one runs
    /// again (same task and run): a push whose tasks were selected by its own diff leaves the
    /// older push's other tasks to finish, since nothing newer tests them.
    SupersedeOverlap,
    /// Runs beside the branch's history without moving it: a submitter who may not cancel
    /// others' work neither cancels the latest submission nor hides it from the next one
    /// that supersedes (or a closed pull request's cancel).
    Join,
    /// Stays out of the branch's history (a retry of one finished run).
    Aside,
}

/// How a queue is set up: leases, dispatch, and whose queue it is.
#[derive(Clone, Debug)]
pub struct QueueSetup {
    /// Lease length and retry limit.
    pub lease: LeasePolicy,
    /// Which tiers each queue takes and what their runs need of a runner.
    pub dispatch: DispatchPolicy,
    /// This site's name.
    pub site: String,
}

/// What [`Queue::take_or_wait`] found.
enum Take {
    Run(RunId),
    Wait(oneshot::Receiver<Handoff>),
}

/// A waiting worker's claim on the run it will be handed. Dropped with a run handed to it
/// but not yet taken (the worker's call was abandoned), it puts the run back on its queue,
/// or has the lease it was handed given back.
struct Handed<'q> {
    queue: &'q Queue,
    rx: Option<oneshot::Receiver<Handoff>>,
}

impl Handed<'_> {
    async fn run(&mut self) -> Result<Handoff, QueueError> {
        let rx = self.rx.as_mut().ok_or(QueueError::Closed)?;
        let handed = rx.await.map_err(|_| QueueError::Closed)?;
        self.rx = None;
        Ok(handed)
    }
}

impl Drop for Handed<'_> {
    fn drop(&mut self) {
        match self.rx.take().and_then(|mut rx| rx.try_recv().ok()) {
            Some(Handoff::Run(id)) => self.queue.requeue_in_memory(id),
            Some(Handoff::Leased(leased)) => {
                // Releasing is a durable write, which a drop cannot wait for: the expiry loop
                // does it.
                self.queue.abandon(leased.run.id(), leased.lease);
            }
            None => {}
        }
    }
}

/// What one runner is doing, as far as the queue can see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunnerActivity {
    /// Queues it has a worker connected to (waiting for a run or busy).
    pub waiting_on: Vec<String>,
    /// Runs it holds leases on.
    pub holding: Vec<RunId>,
    /// What it said about itself when its first connected worker registered (none: it
    /// holds runs from before a restart and has not reconnected).
    pub profile: Option<RunnerProfile>,
    /// What the site credits it with.
    pub offer: Option<Offer>,
}

/// What a runner says about itself when it connects, for operators (routing uses its
/// [`Offer`] only). `connected_at` is the queue's clock when it registered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunnerProfile {
    /// Its verified identity (the certificate's URI).
    pub identity: String,
    /// The host it runs on.
    pub hostname: String,
    /// Its tinyci version.
    pub version: String,
    /// Its executors (`docker`, `sandbox`, `shell`).
    pub executors: Vec<String>,
    /// Runs it executes at once.
    pub slots: u32,
    /// When it connected (Unix ms); set by the queue.
    pub connected_at: u64,
}

/// The stats of `tier`'s group on `queue`, created with its weight.
fn group_of<'a>(
    out: &'a mut BTreeMap<String, QueueStats>,
    dispatch: &DispatchPolicy,
    queue: &str,
    tier: &TrustTier,
) -> &'a mut GroupStats {
    out.entry(queue.to_owned())
        .or_default()
        .groups
        .entry(tier.to_string())
        .or_insert_with(|| GroupStats {
            weight: dispatch.queue(queue).share_of(tier),
            ..GroupStats::default()
        })
}

/// One submitter group on one queue, for `admin queues`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Its share weight on the queue.
    pub weight: u32,
    /// Its runs waiting.
    pub queued: usize,
    /// Its runs leased or running.
    pub active: usize,
    /// Leases it got on this queue since the site started (while it had runs waiting).
    pub leased: u64,
}

/// Per-queue numbers for status pages and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Runs waiting.
    pub depth: usize,
    /// Runs leased or running.
    pub active: usize,
    /// Workers waiting for a run.
    pub waiting: usize,
    /// Whether the queue is paused.
    pub paused: bool,
    /// When the longest-running current attempt started (Unix ms), if any runs.
    pub oldest_started_at: Option<u64>,
    /// Submitter groups (trust tiers) with runs waiting or running here.
    pub groups: BTreeMap<String, GroupStats>,
}

/// Runs that stay final while this lives ([`Queue::hold_final`]).
pub struct FinalRuns<'q> {
    ids: BTreeSet<RunId>,
    /// Held, never read: a retry waits for its run's lock.
    _locks: Vec<RunLock<'q>>,
}

impl FinalRuns<'_> {
    /// Whether run `id` is held final.
    pub fn contains(&self, id: RunId) -> bool {
        self.ids.contains(&id)
    }

    /// How many runs are held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no run is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl std::fmt::Debug for FinalRuns<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinalRuns").field("ids", &self.ids).finish()
    }
}

/// Puts a run back on its queue if a lease in progress is abandoned.
struct Requeue<'q> {
    queue: &'q Queue,
    id: RunId,
    armed: bool,
}

impl Drop for Requeue<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.queue.requeue_in_memory(self.id);
        }
    }
}
