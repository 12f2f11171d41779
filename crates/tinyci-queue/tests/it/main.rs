//! The queue over a real LMDB store with a manual clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tinyci_core::{
    DispatchPolicy, Isolation, LeasePolicy, Offer, PlannedRun, RunId, RunStatus, TierPattern,
    TrustTier,
};
use tinyci_queue::{Clock, NewSubmission, OnBranch, Queue, QueueSetup};
use tinyci_store::{GroupCommitter, GroupWriterThread, Store, StoreOptions};

fn local<F: std::future::Future>(f: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, f)
}

/// A clock the test moves by hand.
#[derive(Clone)]
struct ManualClock(Rc<Cell<u64>>);

impl ManualClock {
    fn new() -> Self {
        Self(Rc::new(Cell::new(1_700_000_000_000)))
    }
    fn clock(&self) -> Clock {
        let now = self.0.clone();
        Rc::new(move || now.get())
    }
    fn advance(&self, by: Duration) {
        self.0
            .set(self.0.get() + u64::try_from(by.as_millis()).unwrap());
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    clock: ManualClock,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            clock: ManualClock::new(),
        }
    }

    async fn open(&self) -> (Rc<Queue>, GroupCommitter, GroupWriterThread) {
        self.open_with(DispatchPolicy::default()).await
    }

    async fn open_with(
        &self,
        dispatch: DispatchPolicy,
    ) -> (Rc<Queue>, GroupCommitter, GroupWriterThread) {
        let store = Store::open(self.dir.path(), StoreOptions::default()).unwrap();
        let (committer, writer) = GroupCommitter::start(store.clone()).unwrap();
        let setup = QueueSetup {
            lease: LeasePolicy::default(),
            dispatch,
            site: "alpha".into(),
        };
        let queue = Queue::open(store, committer.clone(), setup, self.clock.clock())
            .await
            .unwrap();
        (queue, committer, writer)
    }
}

fn planned(queue: &str, name: &str) -> PlannedRun {
    PlannedRun {
        task_dir: ".".into(),
        name: name.into(),
        command: vec!["true".into()],
        image: None,
        queue: queue.parse().unwrap(),
        timeout_secs: 60,
        env: Default::default(),
        mountpoint: "/tmp/src".into(),
        workdir: "/tmp/src".into(),
        privileged: false,
        metadata: Default::default(),
        resources: Default::default(),
        artifacts: Vec::new(),
        labels: Vec::new(),
    }
}

fn submission(git_ref: &str, runs: Vec<PlannedRun>) -> NewSubmission {
    NewSubmission {
        repo: "org/x".into(),
        git_ref: git_ref.into(),
        sha: "abc".into(),
        title: "t".into(),
        submitted_by: "test".into(),
        source_sha256: vec![0; 32],
        runs,
        branch: OnBranch::Supersede,
        tier: TrustTier::Local,
    }
}

/// A runner on the host, unsandboxed.
const HOST: Offer = Offer::processes(Isolation::Host);

/// A runner with the sandbox.
const SANDBOX: Offer = Offer::processes(Isolation::Sandbox);

fn no_hook() -> tinyci_queue::CancelHook {
    Rc::new(|_| {})
}

/// Submits one run on queue `a` (ref `refs/heads/x`) and leases it to `runner:r1`.
async fn one_leased_run(queue: &Queue) -> tinyci_queue::Leased {
    queue
        .submit(submission("refs/heads/x", vec![planned("a", "x")]))
        .await
        .unwrap();
    queue
        .next("a", "runner:r1", &HOST, no_hook())
        .await
        .unwrap()
}

/// Polls a call once, which must then be waiting: how a call looks from here when its caller
/// (an RPC whose client hung up) stops waiting after that.
fn poll_once<F: std::future::Future>(call: std::pin::Pin<&mut F>) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(call.poll(&mut cx).is_pending(), "the call answered at once");
}

#[test]
fn runs_are_leased_fifo_and_completed_exactly_once() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        let (sub, runs) = queue
            .submit(submission(
                "refs/heads/main",
                vec![
                    planned("a", "one"),
                    planned("a", "two"),
                    planned("b", "three"),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(runs.len(), 3);
        let first = queue
            .next("a", "runner:r1", &HOST, no_hook())
            .await
            .unwrap();
        let second = queue
            .next("a", "runner:r2", &HOST, no_hook())
            .await
            .unwrap();
        assert_eq!(first.run.spec.name, "one");
        assert_eq!(second.run.spec.name, "two");
        assert_eq!(first.run.state.attempt(), 1);
        queue.started(first.run.id(), first.lease).await.unwrap();
        let outcome = queue
            .complete(
                first.run.id(),
                first.lease,
                RunStatus::Failed,
                Some(2),
                "exit code 2".into(),
            )
            .await
            .unwrap();
        assert_eq!(outcome.status, RunStatus::Failed);
        // Repeating the completion is harmless and returns the recorded outcome.
        let again = queue
            .complete(
                first.run.id(),
                first.lease,
                RunStatus::Passed,
                Some(0),
                "again".into(),
            )
            .await
            .unwrap();
        assert_eq!(again, outcome);
        let stored = queue.run(first.run.id()).unwrap().unwrap();
        assert_eq!(stored.state.status(), RunStatus::Failed);
        assert_eq!(stored.state.outcome().unwrap().exit_code, Some(2));
        assert_eq!(queue.submission_runs(sub.id).unwrap().len(), 3);
    });
}

#[test]
fn a_waiting_worker_is_handed_a_run_as_soon_as_one_is_queued() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        let waiting = {
            let queue = queue.clone();
            tokio::task::spawn_local(async move {
                queue.next("gpu", "runner:r1", &HOST, no_hook()).await
            })
        };
        // Let the worker park, then queue a run on another queue and on its own.
        tokio::task::yield_now().await;
        assert_eq!(queue.queues()["gpu"].waiting, 1);
        queue
            .submit(submission("refs/heads/x", vec![planned("cpu", "c")]))
            .await
            .unwrap();
        queue
            .submit(submission("refs/heads/y", vec![planned("gpu", "g")]))
            .await
            .unwrap();
        let leased = waiting.await.unwrap().unwrap();
        assert_eq!(leased.run.spec.name, "g");
        assert_eq!(queue.queues()["cpu"].depth, 1);
    });
}

#[test]
fn lost_leases_requeue_with_attempts_until_the_run_gives_up() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        queue
            .submit(submission("refs/heads/main", vec![planned("a", "flaky")]))
            .await
            .unwrap();
        let policy = LeasePolicy::default();
        for attempt in 1..=policy.max_attempts {
            let leased = queue
                .next("a", "runner:r1", &HOST, no_hook())
                .await
                .unwrap();
            assert_eq!(leased.run.state.attempt(), attempt);
            // A heartbeat extends the lease; then the runner goes silent.
            f.clock.advance(policy.lease_duration / 2);
            queue
                .heartbeat(leased.run.id(), leased.lease)
                .await
                .unwrap();
            f.clock.advance(policy.lease_duration / 2);
            assert_eq!(
                queue.expire_leases().await,
                0,
                "a heartbeated lease expired early"
            );
            f.clock.advance(policy.lease_duration);
            assert_eq!(queue.expire_leases().await, 1);
            // The old holder's completion is refused.
            let late = queue
                .complete(
                    leased.run.id(),
                    leased.lease,
                    RunStatus::Passed,
                    Some(0),
                    String::new(),
                )
                .await;
            assert!(late.is_err());
        }
        let runs = queue.runs(10).unwrap();
        assert_eq!(runs[0].state.status(), RunStatus::Errored);
        assert!(
            runs[0]
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("lease"),
            "{:?}",
            runs[0].message
        );
        assert_eq!(queue.queues().get("a").map_or(0, |q| q.depth), 0);
    });
}

#[test]
fn a_restart_keeps_leases_for_their_runners_to_resume_and_loses_nothing() {
    local(async {
        let f = Fixture::new();
        let (ids, held) = {
            let (queue, committer, writer) = f.open().await;
            let runs = (0..200).map(|i| planned("a", &format!("run{i}"))).collect();
            let (_, runs) = queue
                .submit(submission("refs/heads/main", runs))
                .await
                .unwrap();
            let mut held = Vec::new();
            for _ in 0..5 {
                let leased = queue
                    .next("a", "runner:r1", &HOST, no_hook())
                    .await
                    .unwrap();
                held.push((leased.run.id(), leased.lease));
            }
            drop((queue, committer));
            writer.join();
            (runs.iter().map(|r| r.id()).collect::<Vec<_>>(), held)
        };
        let (queue, _c, _w) = f.open().await;
        // The leases survived the restart: their runner may still be running them.
        assert_eq!(queue.queues()["a"].depth, 195);
        let (id, lease) = held[0];
        let err = queue
            .resume(id, lease, "runner:r2", no_hook())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("cannot be resumed by runner:r2"),
            "{err}"
        );
        let resumed = queue
            .resume(id, lease, "runner:r1", no_hook())
            .await
            .unwrap();
        assert_eq!(resumed.run.state.attempt(), 1);
        // A runner known to be gone hands its leases back at once (the resumed one too).
        assert_eq!(queue.release_runner("runner:r1").await, 5);
        assert_eq!(queue.queues()["a"].depth, 200);
        let mut completed = 0;
        for _ in 0..200 {
            let leased = queue
                .next("a", "runner:r2", &HOST, no_hook())
                .await
                .unwrap();
            queue
                .complete(
                    leased.run.id(),
                    leased.lease,
                    RunStatus::Passed,
                    Some(0),
                    String::new(),
                )
                .await
                .unwrap();
            completed += 1;
        }
        assert_eq!(completed, 200);
        for id in ids {
            let run = queue.run(id).unwrap().unwrap();
            assert_eq!(run.state.status(), RunStatus::Passed);
        }
    });
}

#[test]
fn cancel_ends_queued_runs_and_tells_holders_of_leased_ones() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        let (sub, runs) = queue
            .submit(submission(
                "refs/heads/main",
                vec![planned("a", "held"), planned("a", "waiting")],
            ))
            .await
            .unwrap();
        let told = Rc::new(std::cell::RefCell::new(Vec::new()));
        let hook = {
            let told = told.clone();
            Rc::new(move |reason: String| told.borrow_mut().push(reason))
        };
        let leased = queue.next("a", "runner:r1", &HOST, hook).await.unwrap();
        assert_eq!(
            queue.cancel_submission(sub.id, "user asked").await.unwrap(),
            2
        );
        assert_eq!(told.borrow().as_slice(), ["user asked".to_owned()]);
        assert_eq!(
            queue.run(runs[1].id()).unwrap().unwrap().state.status(),
            RunStatus::Canceled
        );
        queue
            .complete(
                leased.run.id(),
                leased.lease,
                RunStatus::Canceled,
                None,
                "canceled".into(),
            )
            .await
            .unwrap();
        assert_eq!(
            queue.run(leased.run.id()).unwrap().unwrap().state.status(),
            RunStatus::Canceled
        );
    });
}

#[test]
fn a_newer_submission_on_the_same_ref_supersedes_the_older() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        let (_, old) = queue
            .submit(submission("refs/heads/pr", vec![planned("a", "old")]))
            .await
            .unwrap();
        let (_, other) = queue
            .submit(submission("refs/heads/other", vec![planned("a", "other")]))
            .await
            .unwrap();
        let (new_sub, _) = queue
            .submit(submission("refs/heads/pr", vec![planned("a", "new")]))
            .await
            .unwrap();
        let old = queue.run(old[0].id()).unwrap().unwrap();
        assert_eq!(old.state.status(), RunStatus::Canceled);
        assert_eq!(
            old.message.as_deref(),
            Some(format!("superseded by submission {}", new_sub.id).as_str())
        );
        assert_eq!(
            queue.run(other[0].id()).unwrap().unwrap().state.status(),
            RunStatus::Queued
        );
    });
}

#[test]
fn a_returned_lease_requeues_at_once_and_an_abandoned_wait_leases_nothing() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        // A worker that stops waiting takes nothing.
        let abandoned = {
            let queue = queue.clone();
            tokio::task::spawn_local(async move {
                queue.next("a", "runner:gone", &HOST, no_hook()).await
            })
        };
        tokio::task::yield_now().await;
        abandoned.abort();
        let _ = abandoned.await;
        queue
            .submit(submission("refs/heads/main", vec![planned("a", "x")]))
            .await
            .unwrap();
        assert_eq!(queue.queues()["a"].depth, 1);
        let leased = queue
            .next("a", "runner:r1", &HOST, no_hook())
            .await
            .unwrap();
        queue.release(leased.run.id(), leased.lease).await;
        let again = queue
            .next("a", "runner:r2", &HOST, no_hook())
            .await
            .unwrap();
        assert_eq!(again.run.id(), leased.run.id());
        assert_eq!(again.run.state.attempt(), 2);
    });
}

#[test]
fn untrusted_work_waits_for_an_isolating_runner_and_says_why() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        let host_worker = queue.connect_worker("a", "runner:local", HOST, Default::default());
        let fork = NewSubmission {
            tier: TrustTier::Fork,
            ..submission("refs/pull/1/head", vec![planned("a", "fork")])
        };
        let (_, fork_runs) = queue.submit(fork).await.unwrap();
        let (_, local_runs) = queue
            .submit(submission("refs/heads/main", vec![planned("a", "mine")]))
            .await
            .unwrap();
        // The host runner is handed the later local run, never the fork's.
        let leased = queue
            .next("a", "runner:local", &HOST, no_hook())
            .await
            .unwrap();
        assert_eq!(leased.run.id(), local_runs[0].id());
        let fork_id = fork_runs[0].id();
        assert_eq!(
            queue.waiting_reason(fork_id).unwrap(),
            "waiting for a runner with the sandbox on queue a \
             (fork work; connected: runner:local (host))"
        );
        // A host worker parked on the queue is not woken for it either.
        let parked = {
            let queue = queue.clone();
            tokio::task::spawn_local(async move {
                queue.next("a", "runner:local", &HOST, no_hook()).await
            })
        };
        tokio::task::yield_now().await;
        assert!(!parked.is_finished());
        // A sandboxed runner takes it, and the reason goes away.
        let sandbox_worker = queue.connect_worker("a", "runner:box", SANDBOX, Default::default());
        assert_eq!(queue.waiting_reason(fork_id), None);
        let leased = queue
            .next("a", "runner:box", &SANDBOX, no_hook())
            .await
            .unwrap();
        assert_eq!(leased.run.id(), fork_id);
        assert_eq!(queue.placement(fork_id).unwrap().0, TrustTier::Fork);
        parked.abort();
        queue.disconnect_worker(host_worker);
        queue.disconnect_worker(sandbox_worker);
    });
}

#[test]
fn a_parked_sandbox_worker_is_woken_past_host_workers() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        let spawn = |runner: &'static str, offer: Offer| {
            let queue = queue.clone();
            tokio::task::spawn_local(
                async move { queue.next("a", runner, &offer, no_hook()).await },
            )
        };
        let host = spawn("runner:host", HOST);
        let sandbox = spawn("runner:box", SANDBOX);
        tokio::task::yield_now().await;
        let fork = NewSubmission {
            tier: TrustTier::Partner("beta".into()),
            ..submission("refs/heads/x", vec![planned("a", "p")])
        };
        let (_, runs) = queue.submit(fork).await.unwrap();
        let leased = sandbox.await.unwrap().unwrap();
        assert_eq!(leased.run.id(), runs[0].id());
        assert!(!host.is_finished());
        host.abort();
    });
}

#[test]
fn each_run_goes_to_the_weakest_waiting_runner_that_may_take_it() {
    local(async {
        let f = Fixture::new();
        // Partners' runs need a container here.
        let mut dispatch = DispatchPolicy::default();
        dispatch
            .default
            .isolation
            .insert(TierPattern::AnyPartner, Isolation::Container);
        let (queue, _c, _w) = f.open_with(dispatch).await;
        let docker_and_sandbox = Offer {
            isolation: Isolation::Container,
            processes: Some(Isolation::Sandbox),
            privileged: false,
            labels: Vec::new(),
        };
        let docker_only = Offer {
            processes: None,
            ..docker_and_sandbox.clone()
        };
        // Parked in this order: host, docker+sandbox, sandbox, docker only.
        let mut parked = Vec::new();
        for (runner, offer) in [
            ("runner:h", HOST),
            ("runner:xs", docker_and_sandbox),
            ("runner:s", SANDBOX),
            ("runner:x", docker_only),
        ] {
            let q = queue.clone();
            parked.push((
                runner,
                tokio::task::spawn_local(
                    async move { q.next("a", runner, &offer, no_hook()).await },
                ),
            ));
        }
        tokio::task::yield_now().await;
        // One submission per tier, oldest first: local (host), fork (sandbox, no image),
        // partner with an image (container).
        let mut imaged = planned("a", "p");
        imaged.image = Some("alpine".into());
        let mut runs = Vec::new();
        for (tier, run) in [
            (TrustTier::Local, planned("a", "l")),
            (TrustTier::Fork, planned("a", "f")),
            (TrustTier::Partner("beta".into()), imaged),
        ] {
            let new = NewSubmission {
                tier,
                branch: OnBranch::Aside,
                ..submission("refs/heads/x", vec![run])
            };
            runs.push(queue.submit(new).await.unwrap().1[0].id());
        }
        let mut got = std::collections::BTreeMap::new();
        for (runner, task) in parked {
            if runner == "runner:xs" {
                // Strong enough for everything, weakest for nothing: kept free.
                tokio::task::yield_now().await;
                assert!(!task.is_finished());
                task.abort();
                continue;
            }
            got.insert(runner, task.await.unwrap().unwrap().run.id());
        }
        assert_eq!(got["runner:h"], runs[0]);
        assert_eq!(got["runner:s"], runs[1]);
        assert_eq!(got["runner:x"], runs[2]);
    });
}

#[test]
fn a_filtered_listing_finds_matches_older_than_any_window() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        let mut old = submission("refs/heads/main", vec![planned("a", "old")]);
        old.repo = "org/old".into();
        queue.submit(old).await.unwrap();
        // Ten thousand newer runs on another repository bury it.
        for batch in 0..10 {
            let runs = (0..1000)
                .map(|i| planned("a", &format!("r{batch}-{i}")))
                .collect();
            let mut newer = submission(&format!("refs/heads/b{batch}"), runs);
            newer.branch = OnBranch::Aside;
            queue.submit(newer).await.unwrap();
        }
        let only_old = tinyci_queue::RunFilter {
            repo: Some("org/old".into()),
            ..Default::default()
        };
        let found = queue.runs_matching(&only_old, 100).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].spec.name, "old");

        let newest = queue.runs(3).unwrap();
        let names: Vec<_> = newest.iter().map(|r| r.spec.name.as_str()).collect();
        assert_eq!(names, ["r9-999", "r9-998", "r9-997"]);
        assert!(queue.runs(0).unwrap().is_empty());
    });
}

#[test]
fn a_stale_completion_does_not_reword_the_live_run() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        queue
            .submit(submission("refs/heads/main", vec![planned("a", "one")]))
            .await
            .unwrap();
        let policy = LeasePolicy::default();
        let first = queue
            .next("a", "runner:r1", &HOST, no_hook())
            .await
            .unwrap();
        f.clock.advance(policy.lease_duration * 2);
        assert_eq!(queue.expire_leases().await, 1);
        let second = queue
            .next("a", "runner:r2", &HOST, no_hook())
            .await
            .unwrap();
        assert_eq!(second.run.id(), first.run.id());
        let before = queue.run(first.run.id()).unwrap().unwrap().message;

        let stale = queue
            .complete(
                first.run.id(),
                first.lease,
                RunStatus::Passed,
                Some(0),
                "forged by the old holder".into(),
            )
            .await;
        assert!(stale.is_err(), "{stale:?}");
        let live = queue.run(first.run.id()).unwrap().unwrap();
        assert_eq!(live.message, before);
        assert_eq!(live.state.status(), RunStatus::Leased);

        queue.started(second.run.id(), second.lease).await.unwrap();
        queue
            .complete(
                second.run.id(),
                second.lease,
                RunStatus::Passed,
                Some(0),
                "all good".into(),
            )
            .await
            .unwrap();
        let done = queue.run(first.run.id()).unwrap().unwrap();
        assert_eq!(done.message.as_deref(), Some("all good"));
    });
}

/// Two partners bursting on one queue get leases in their configured shares, FIFO within
/// each, although the first partner's whole burst was queued before the second's.
#[test]
fn partners_bursting_on_one_queue_get_leases_in_their_configured_shares() {
    local(async {
        let f = Fixture::new();
        let mut dispatch = DispatchPolicy::default();
        dispatch.default.shares = [
            ("partner:beta".parse::<TierPattern>().unwrap(), 3),
            (TierPattern::AnyPartner, 1),
        ]
        .into();
        // Partners may run on a host runner here, to keep the test about shares.
        dispatch
            .default
            .isolation
            .insert(TierPattern::AnyPartner, Isolation::Host);
        let (queue, _c, _w) = f.open_with(dispatch).await;
        for partner in ["beta", "gamma"] {
            for n in 0..20 {
                let mut new = submission(
                    &format!("refs/heads/{partner}-{n}"),
                    vec![planned("shared", &format!("{partner}-{n}"))],
                );
                new.tier = TrustTier::partner(partner).unwrap();
                new.branch = OnBranch::Aside;
                queue.submit(new).await.unwrap();
            }
        }
        let mut order = Vec::new();
        for _ in 0..16 {
            let leased = queue
                .next("shared", "runner:r1", &HOST, no_hook())
                .await
                .unwrap();
            order.push(leased.run.spec.name.clone());
            queue
                .complete(
                    leased.run.id(),
                    leased.lease,
                    RunStatus::Passed,
                    Some(0),
                    String::new(),
                )
                .await
                .unwrap();
        }
        let of = |p: &str| order.iter().filter(|n| n.starts_with(p)).count();
        assert_eq!((of("beta"), of("gamma")), (12, 4), "{order:?}");
        // FIFO within each group.
        let betas: Vec<&String> = order.iter().filter(|n| n.starts_with("beta")).collect();
        let expected: Vec<String> = (0..12).map(|n| format!("beta-{n}")).collect();
        assert_eq!(betas, expected.iter().collect::<Vec<_>>());
        // `admin queues` material: each group's weight, backlog and leases.
        let stats = &queue.queues()["shared"];
        let beta = &stats.groups["partner:beta"];
        let gamma = &stats.groups["partner:gamma"];
        assert_eq!((beta.weight, beta.queued, beta.leased), (3, 8, 12));
        assert_eq!((gamma.weight, gamma.queued, gamma.leased), (1, 16, 4));
    });
}

/// A push whose tasks its own diff selected supersedes only the older push's runs it runs
/// again: the others still test what nothing newer tests.
#[test]
fn a_diff_selected_push_supersedes_only_what_it_runs_again() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        let (_, first) = queue
            .submit(submission(
                "refs/heads/main",
                vec![planned("a", "api"), planned("a", "web")],
            ))
            .await
            .unwrap();
        let mut second = submission("refs/heads/main", vec![planned("a", "web")]);
        second.branch = OnBranch::SupersedeOverlap;
        queue.submit(second).await.unwrap();
        let status = |i: usize| queue.run(first[i].id()).unwrap().unwrap().state.status();
        assert_eq!(
            status(0),
            RunStatus::Queued,
            "api is tested by nothing newer"
        );
        assert_eq!(status(1), RunStatus::Canceled, "web runs again");
    });
}

/// A worker already waiting is leased a new run in the very commit that stores the run's
/// submission: by the time `submit` returns, the stored run is leased to it (before, the
/// lease was a second durable commit after the submission's), and the worker has it.
#[test]
fn a_waiting_worker_is_leased_a_new_run_in_its_submissions_commit() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        let q = queue.clone();
        let waiting =
            tokio::task::spawn_local(
                async move { q.next("a", "runner:host", &HOST, no_hook()).await },
            );
        tokio::task::yield_now().await;
        let (_, runs) = queue
            .submit(submission("refs/heads/x", vec![planned("a", "p")]))
            .await
            .unwrap();
        let stored = queue.run(runs[0].id()).unwrap().unwrap();
        assert_eq!(stored.state.status(), RunStatus::Leased);
        assert_eq!(stored.runner.as_deref(), Some("runner:host"));
        let leased = waiting.await.unwrap().unwrap();
        assert_eq!(leased.run.id(), runs[0].id());
        assert_eq!(Some(leased.lease), stored.state.lease().map(|l| l.id));
        // The lease works like any other: the run starts and completes on it.
        queue.started(leased.run.id(), leased.lease).await.unwrap();
        queue
            .complete(
                leased.run.id(),
                leased.lease,
                RunStatus::Passed,
                Some(0),
                String::new(),
            )
            .await
            .unwrap();
        let done = queue.run(runs[0].id()).unwrap().unwrap();
        assert_eq!(done.state.status(), RunStatus::Passed);
    });
}

/// A worker handed a run leased in its submission's commit that goes away before taking it
/// does not strand the run: the lease is handed back and another worker gets the run.
#[test]
fn a_run_leased_to_a_worker_that_went_away_is_handed_back() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        tokio::task::spawn_local(queue.clone().run_expiry());
        // A worker waiting (its call polled once: it registers and waits), never polled
        // again: what a call dropped by a vanished client looks like from here.
        let host = HOST;
        let mut gone = Box::pin(queue.next("a", "runner:gone", &host, no_hook()));
        poll_once(gone.as_mut());
        let (_, runs) = queue
            .submit(submission("refs/heads/x", vec![planned("a", "p")]))
            .await
            .unwrap();
        // Its call is dropped with the leased run handed to it but not taken.
        drop(gone);
        let q = queue.clone();
        let leased =
            tokio::task::spawn_local(
                async move { q.next("a", "runner:next", &HOST, no_hook()).await },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(leased.run.id(), runs[0].id());
        assert_eq!(leased.run.runner.as_deref(), Some("runner:next"));
        // The lease nobody took cost the run no attempt.
        assert_eq!(leased.run.state.attempt(), 1);
    });
}

/// Listings filtered on repository, ref and status, alone or together, return exactly what a
/// scan of every run would, newest first, whether the runs are finished (from the store's
/// indexes) or not (from memory); and a store written before the indexes is indexed when the
/// queue opens, with the same answers.
#[test]
fn filtered_listings_match_a_full_scan_through_the_indexes_and_after_reindexing() {
    use tinyci_queue::RunFilter;
    let f = Fixture::new();
    let filters = || {
        let mut filters = Vec::new();
        for repo in [None, Some("org/a"), Some("org/b")] {
            for git_ref in [None, Some("refs/heads/main"), Some("refs/heads/dev")] {
                for status in [
                    None,
                    Some(RunStatus::Passed),
                    Some(RunStatus::Failed),
                    Some(RunStatus::Queued),
                ] {
                    filters.push(RunFilter {
                        repo: repo.map(str::to_owned),
                        git_ref: git_ref.map(str::to_owned),
                        status,
                    });
                }
            }
        }
        filters
    };
    let check = |queue: &Queue| {
        let all = queue.runs(100_000).unwrap();
        assert_eq!(all.len(), 60);
        for filter in filters() {
            let expected: Vec<RunId> = all
                .iter()
                .filter(|r| filter.matches(r))
                .map(|r| r.id())
                .collect();
            let got: Vec<RunId> = queue
                .runs_matching(&filter, 100)
                .unwrap()
                .iter()
                .map(|r| r.id())
                .collect();
            assert_eq!(got, expected, "{filter:?}");
            let limited: Vec<RunId> = queue
                .runs_matching(&filter, 2)
                .unwrap()
                .iter()
                .map(|r| r.id())
                .collect();
            assert_eq!(
                limited,
                expected.iter().take(2).copied().collect::<Vec<_>>(),
                "{filter:?}"
            );
        }
    };
    local(async {
        let (queue, _c, writer) = f.open().await;
        for i in 0..60u32 {
            let mut new = submission(
                if i % 3 == 0 {
                    "refs/heads/dev"
                } else {
                    "refs/heads/main"
                },
                vec![planned("a", &format!("t{i}"))],
            );
            new.repo = if i % 2 == 0 {
                "org/a".into()
            } else {
                "org/b".into()
            };
            new.branch = OnBranch::Aside;
            queue.submit(new).await.unwrap();
            // Most finish, passing or failing; every fifth stays queued.
            if i % 5 != 4 {
                let leased = queue
                    .next("a", "runner:one", &HOST, no_hook())
                    .await
                    .unwrap();
                let status = if i % 4 == 0 {
                    RunStatus::Failed
                } else {
                    RunStatus::Passed
                };
                queue
                    .complete(
                        leased.run.id(),
                        leased.lease,
                        status,
                        Some(0),
                        String::new(),
                    )
                    .await
                    .unwrap();
            }
        }
        // A retried run leaves the failed ones: its stored status key moves.
        let failed = RunFilter {
            status: Some(RunStatus::Failed),
            ..Default::default()
        };
        let newest_failed = queue.runs_matching(&failed, 1).unwrap()[0].id();
        queue.retry(newest_failed).await.unwrap();
        assert!(
            queue
                .runs_matching(&failed, 100)
                .unwrap()
                .iter()
                .all(|r| r.id() != newest_failed)
        );
        check(&queue);
        drop(queue);
        drop(_c);
        writer.join();
    });
    // As a store written before the indexes: drop them all.
    {
        use tinyci_store::tables::{
            META, RUNS_BY_REF, RUNS_BY_REPO, RUNS_BY_STATUS, RUNS_UNFINISHED,
        };
        let store = Store::open(f.dir.path(), StoreOptions::default()).unwrap();
        store
            .write(|txn| {
                for table in [RUNS_BY_REF, RUNS_BY_REPO, RUNS_BY_STATUS] {
                    let keys: Vec<Vec<u8>> = txn
                        .iter_range(table, &..)?
                        .map(|e| e.map(|(k, _)| k.to_vec()))
                        .collect::<Result<_, _>>()?;
                    for key in keys {
                        txn.delete(table, &key[..])?;
                    }
                }
                let ids: Vec<u64> = txn
                    .iter_range(RUNS_UNFINISHED, &..)?
                    .map(|e| e.map(|(id, _)| id))
                    .collect::<Result<_, _>>()?;
                for id in ids {
                    txn.delete(RUNS_UNFINISHED, &id)?;
                }
                txn.delete(META, "queue.run_indexes")?;
                Ok(())
            })
            .unwrap();
    }
    local(async {
        let (queue, _c, _w) = f.open().await;
        check(&queue);
        // The queued runs were found again: the oldest is leased first, as before.
        let queued = RunFilter {
            status: Some(RunStatus::Queued),
            ..Default::default()
        };
        let oldest = queue
            .runs_matching(&queued, 100)
            .unwrap()
            .last()
            .unwrap()
            .id();
        let leased = queue
            .next("a", "runner:one", &HOST, no_hook())
            .await
            .unwrap();
        assert_eq!(leased.run.id(), oldest);
    });
}

/// A caller that stops waiting for its submission (an RPC dropped when its client hangs up)
/// leaves a submission the queue tracks: the commit and what it changes in memory run to
/// their end. Before, the commit landed and its runs sat untracked until a restart.
#[test]
fn a_submission_whose_caller_stopped_waiting_is_still_handed_out() {
    let f = Fixture::new();
    local(async {
        let (queue, _committer, _writer) = f.open().await;
        {
            let submit = queue.submit(submission("refs/heads/main", vec![planned("a", "x")]));
            // Started (its commit on its way to the writer), then dropped unanswered.
            poll_once(std::pin::pin!(submit));
        }
        // The bound only turns a hang into a failure; the run comes as soon as it is tracked.
        let leased = tokio::time::timeout(
            Duration::from_secs(60),
            queue.next("a", "runner:r1", &HOST, no_hook()),
        )
        .await
        .expect("the dropped submission's run was never handed out")
        .unwrap();
        assert_eq!(leased.run.spec.name, "x");
        assert_eq!(
            queue.submission_runs(leased.run.submission).unwrap().len(),
            1
        );
    });
}

/// The same for a change: a completion whose caller stopped waiting is applied in memory as
/// in the store, so the run is final in both.
#[test]
fn a_completion_whose_caller_stopped_waiting_is_applied() {
    let f = Fixture::new();
    local(async {
        let (queue, _committer, _writer) = f.open().await;
        queue
            .submit(submission("refs/heads/main", vec![planned("a", "x")]))
            .await
            .unwrap();
        let leased = queue
            .next("a", "runner:r1", &HOST, no_hook())
            .await
            .unwrap();
        let id = leased.run.id();
        {
            let complete =
                queue.complete(id, leased.lease, RunStatus::Passed, Some(0), String::new());
            poll_once(std::pin::pin!(complete));
        }
        // Completing again with the same lease answers the one recorded outcome, from memory
        // or the store: never a second one, never "unknown lease".
        let again = queue
            .complete(id, leased.lease, RunStatus::Failed, Some(1), String::new())
            .await
            .unwrap();
        assert_eq!(again.status, RunStatus::Passed);
        assert_eq!(
            queue.run(id).unwrap().unwrap().state.status(),
            RunStatus::Passed
        );
        assert!(!queue.queues().values().any(|q| q.active > 0));
    });
}

/// A worker that stops waiting while its lease is being committed (its connection died, its
/// runner began draining) does not keep the run: the lease is undone as undelivered, at no
/// attempt's cost, and the next worker gets the run at once rather than after the lease
/// period.
#[test]
fn a_lease_whose_caller_stopped_waiting_is_undone_at_no_cost() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        tokio::task::spawn_local(queue.clone().run_expiry());
        queue
            .submit(submission("refs/heads/x", vec![planned("a", "x")]))
            .await
            .unwrap();
        {
            let host = HOST;
            // It took the run and began committing the lease; then its caller went away.
            poll_once(std::pin::pin!(queue.next(
                "a",
                "runner:gone",
                &host,
                no_hook()
            )));
        }
        // The bound only turns a hang (a lease left to lapse: the clock here never moves)
        // into a failure.
        let leased = tokio::time::timeout(
            Duration::from_secs(60),
            queue.next("a", "runner:next", &HOST, no_hook()),
        )
        .await
        .expect("the run stayed with the worker that went away")
        .unwrap();
        assert_eq!(leased.run.runner.as_deref(), Some("runner:next"));
        assert_eq!(leased.run.state.attempt(), 1);
    });
}

/// A cancel that comes while a completion is being committed waits its turn, finds the run
/// ended and changes nothing: not the outcome, not the runner's words.
#[test]
fn a_cancel_that_loses_the_race_to_a_completion_changes_nothing() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        let leased = one_leased_run(&queue).await;
        let id = leased.run.id();
        let complete = queue.complete(
            id,
            leased.lease,
            RunStatus::Passed,
            Some(0),
            "all good".into(),
        );
        let mut complete = std::pin::pin!(complete);
        poll_once(complete.as_mut());
        let canceled = queue.cancel_run(id, "superseded").await.unwrap();
        assert!(!canceled, "the run had ended by the cancel's turn");
        assert_eq!(complete.await.unwrap().status, RunStatus::Passed);
        let run = queue.run(id).unwrap().unwrap();
        assert_eq!(run.state.status(), RunStatus::Passed);
        assert_eq!(run.message.as_deref(), Some("all good"));
    });
}

/// A completion is dated when it holds its run, not when it was asked for: it can wait behind
/// a change in flight (here a cancel, whose commit the test holds up in the writer), and the
/// outcome must say when the run ended.
#[test]
fn a_completion_that_waits_for_its_run_is_dated_when_it_takes_it() {
    local(async {
        let f = Fixture::new();
        let (queue, committer, _w) = f.open().await;
        let leased = one_leased_run(&queue).await;
        let id = leased.run.id();

        // A batch that stays in the writer until `go` is sent.
        let (entered, writer_in) = std::sync::mpsc::channel::<()>();
        let (go, wait_for_go) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::task::spawn_local({
            let committer = committer.clone();
            async move {
                committer
                    .write(move |_| {
                        entered.send(()).unwrap();
                        wait_for_go.recv().unwrap();
                        Ok(())
                    })
                    .await
                    .unwrap();
            }
        });
        while writer_in.try_recv().is_err() {
            tokio::task::yield_now().await;
        }
        // The cancel takes the run's lock and waits, holding it, for its commit.
        let cancel = tokio::task::spawn_local({
            let queue = queue.clone();
            async move { queue.cancel_run(id, "stop").await.unwrap() }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let complete = tokio::task::spawn_local({
            let queue = queue.clone();
            async move {
                queue
                    .complete(id, leased.lease, RunStatus::Canceled, None, String::new())
                    .await
                    .unwrap()
            }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!complete.is_finished(), "the completion did not wait");
        f.clock.advance(Duration::from_secs(5));
        let ended_at = (f.clock.clock())();
        go.send(()).unwrap();
        blocker.await.unwrap();
        assert!(cancel.await.unwrap(), "the cancel changed nothing");
        let outcome = complete.await.unwrap();
        assert_eq!(outcome.status, RunStatus::Canceled);
        assert_eq!(
            outcome.finished_at, ended_at,
            "the outcome is dated from before the completion waited"
        );
    });
}

/// Retention holds a finished run final while it removes the run's output: a retry asked for
/// meanwhile waits for the hold (it keeps the run's id, so its new attempt's output would go
/// too), and a run retried before the hold is not held at all.
#[test]
fn a_run_held_final_is_retried_only_after_the_hold() {
    local(async {
        let f = Fixture::new();
        let (queue, _c, _w) = f.open().await;
        let leased = one_leased_run(&queue).await;
        let id = leased.run.id();
        queue
            .complete(id, leased.lease, RunStatus::Failed, Some(1), String::new())
            .await
            .unwrap();

        let finished_at = |queue: &Queue| {
            queue
                .run(id)
                .unwrap()
                .unwrap()
                .state
                .outcome()
                .map(|o| o.finished_at)
        };
        let first_finish = finished_at(&queue).unwrap();
        let held = queue
            .hold_final([(id, first_finish), (RunId(id.get() + 1000), first_finish)])
            .await
            .unwrap();
        assert!(held.contains(id));
        assert_eq!(held.len(), 1, "an unknown run is not final");
        let retried = Rc::new(Cell::new(false));
        let retry = tokio::task::spawn_local({
            let (queue, retried) = (queue.clone(), retried.clone());
            async move {
                queue.retry(id).await.unwrap();
                retried.set(true);
            }
        });
        // Give a retry that did not wait every chance to finish: its turn on this thread,
        // then a commit after any it sent (the writer commits in order).
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        _c.write(|_| Ok(())).await.unwrap();
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        assert!(
            !retried.get(),
            "a retry went ahead while its run was held final"
        );
        assert_eq!(
            queue.run(id).unwrap().unwrap().state.status(),
            RunStatus::Failed
        );
        drop(held);
        retry.await.unwrap();
        assert_eq!(
            queue.run(id).unwrap().unwrap().state.status(),
            RunStatus::Queued
        );

        // Live again: a hold taken now does not hold it.
        let held = queue.hold_final([(id, first_finish)]).await.unwrap();
        assert!(held.is_empty());
        drop(held);

        // Retried and finished again: the hold judged the first attempt, so it leaves the
        // second out.
        f.clock.advance(Duration::from_secs(1));
        let leased = queue
            .next("a", "runner:r1", &HOST, no_hook())
            .await
            .unwrap();
        queue
            .complete(id, leased.lease, RunStatus::Failed, Some(1), String::new())
            .await
            .unwrap();
        let second_finish = finished_at(&queue).unwrap();
        assert_ne!(second_finish, first_finish);
        let held = queue.hold_final([(id, first_finish)]).await.unwrap();
        assert!(
            held.is_empty(),
            "a later attempt was held for an earlier one's"
        );
        drop(held);

        // A retry under way when the hold is asked for finishes first; the hold then finds
        // the run live and leaves it out.
        let retry = tokio::task::spawn_local({
            let queue = queue.clone();
            async move { queue.retry(id).await.unwrap() }
        });
        // The retry takes the run's lock and starts its commit (or has finished it).
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        let held = queue.hold_final([(id, second_finish)]).await.unwrap();
        assert!(held.is_empty(), "a run being retried was held final");
        drop(held);
        assert_eq!(retry.await.unwrap().state.status(), RunStatus::Queued);
    });
}
