//! The run/lease state machine, driven by a virtual clock (plain milliseconds).

use std::fmt::Write as _;

use expect_test::expect;
use tinyci_core::{
    LeaseId, LeasePolicy, Run, RunEvent, RunId, RunStatus, Transition, TransitionError,
};

/// The virtual clock's start.
const T0: u64 = 1_000_000;
const RUNNER: &str = "runner:r1";

fn policy() -> LeasePolicy {
    LeasePolicy::default()
}

fn lease_event(now: u64) -> RunEvent {
    RunEvent::Lease {
        runner: RUNNER.to_owned(),
        expires_at: policy().expiry(now),
    }
}

fn complete(lease: u32, status: RunStatus, exit_code: Option<i32>) -> RunEvent {
    RunEvent::Complete {
        lease: LeaseId(lease),
        status,
        exit_code,
    }
}

fn apply_ok(run: &mut Run, event: RunEvent, now: u64) -> Transition {
    run.apply(event.clone(), now)
        .unwrap_or_else(|e| panic!("{event:?} at {now}: {e}"))
}

fn queued() -> Run {
    Run::new(RunId(7), &policy(), T0)
}

fn leased() -> Run {
    let mut run = queued();
    apply_ok(&mut run, lease_event(T0), T0);
    run
}

fn running() -> Run {
    let mut run = leased();
    apply_ok(&mut run, RunEvent::Start { lease: LeaseId(1) }, T0 + 1);
    run
}

fn cancel_requested() -> Run {
    let mut run = running();
    apply_ok(&mut run, RunEvent::Cancel, T0 + 2);
    run
}

fn passed() -> Run {
    let mut run = running();
    apply_ok(&mut run, complete(1, RunStatus::Passed, Some(0)), T0 + 3);
    run
}

fn canceled() -> Run {
    let mut run = queued();
    apply_ok(&mut run, RunEvent::Cancel, T0 + 1);
    run
}

#[test]
fn policy_defaults() {
    let p = LeasePolicy::default();
    assert_eq!(p.lease_duration.as_secs(), 30);
    assert_eq!(p.heartbeat_interval.as_secs(), 10);
    assert_eq!(p.max_attempts, 3);
    assert_eq!(p.expiry(T0), T0 + 30_000);
}

#[test]
fn status_finality() {
    use RunStatus::*;
    for s in [Queued, Leased, Running] {
        assert!(!s.is_final(), "{s}");
    }
    for s in [Passed, Failed, Canceled, TimedOut, Errored] {
        assert!(s.is_final(), "{s}");
    }
}

/// Every state against every kind of event: what is accepted, what it does, and why the
/// rest is refused.
#[test]
fn transition_table() {
    let lease_expiry = policy().expiry(T0);
    type MakeRun = fn() -> Run;
    let states: [(&str, MakeRun); 6] = [
        ("queued", queued),
        ("leased", leased),
        ("running", running),
        ("cancel-requested", cancel_requested),
        ("passed", passed),
        ("canceled", canceled),
    ];
    let now = T0 + 10_000;
    let events: Vec<(&str, RunEvent, u64)> = vec![
        ("lease", lease_event(now), now),
        ("start(1)", RunEvent::Start { lease: LeaseId(1) }, now),
        (
            "heartbeat(1)",
            RunEvent::Heartbeat {
                lease: LeaseId(1),
                expires_at: policy().expiry(now),
            },
            now,
        ),
        (
            "complete(1, failed)",
            complete(1, RunStatus::Failed, Some(2)),
            now,
        ),
        (
            "complete(2, passed)",
            complete(2, RunStatus::Passed, Some(0)),
            now,
        ),
        ("lease-expired early", RunEvent::LeaseExpired, now),
        ("lease-expired", RunEvent::LeaseExpired, lease_expiry),
        ("cancel", RunEvent::Cancel, now),
    ];

    let mut table = String::new();
    for (state, make) in states {
        for (name, event, at) in &events {
            let mut run = make();
            let before = run.clone();
            let result = run.apply(event.clone(), *at);
            let line = match &result {
                Ok(t) => format!("{t:?} => {}", run.status()),
                Err(e) => {
                    assert_eq!(run, before, "a refused event changes nothing");
                    format!("error: {e}")
                }
            };
            writeln!(table, "{state:>16} + {name:<20} {line}").unwrap();
        }
    }
    expect![[r#"
                  queued + lease                Leased(Lease { id: LeaseId(1), runner: "runner:r1", granted_at: 1010000, expires_at: 1040000 }) => leased
                  queued + start(1)             error: lease 1 of run r-7 is stale (the run has no lease)
                  queued + heartbeat(1)         error: lease 1 of run r-7 is stale (the run has no lease)
                  queued + complete(1, failed)  error: lease 1 of run r-7 is stale (the run has no lease)
                  queued + complete(2, passed)  error: lease 2 of run r-7 is stale (the run has no lease)
                  queued + lease-expired early  error: run r-7 is queued, not leased
                  queued + lease-expired        error: run r-7 is queued, not leased
                  queued + cancel               Canceled(Outcome { status: Canceled, exit_code: None, lease: None, message: Some("canceled while queued"), finished_at: 1010000 }) => canceled
                  leased + lease                error: run r-7 is leased, not queued
                  leased + start(1)             Started => running
                  leased + heartbeat(1)         Extended { expires_at: 1040000 } => leased
                  leased + complete(1, failed)  Completed(Outcome { status: Failed, exit_code: Some(2), lease: Some(LeaseId(1)), message: None, finished_at: 1010000 }) => failed
                  leased + complete(2, passed)  error: lease 2 of run r-7 is stale (the current lease is 1)
                  leased + lease-expired early  error: lease 1 of run r-7 runs until 1030000, not expired at 1010000
                  leased + lease-expired        Requeued { attempt: 1 } => queued
                  leased + cancel               CancelRequested => leased
                 running + lease                error: run r-7 is running, not queued
                 running + start(1)             Unchanged => running
                 running + heartbeat(1)         Extended { expires_at: 1040000 } => running
                 running + complete(1, failed)  Completed(Outcome { status: Failed, exit_code: Some(2), lease: Some(LeaseId(1)), message: None, finished_at: 1010000 }) => failed
                 running + complete(2, passed)  error: lease 2 of run r-7 is stale (the current lease is 1)
                 running + lease-expired early  error: lease 1 of run r-7 runs until 1030000, not expired at 1010000
                 running + lease-expired        Requeued { attempt: 1 } => queued
                 running + cancel               CancelRequested => running
        cancel-requested + lease                error: run r-7 is running, not queued
        cancel-requested + start(1)             Unchanged => running
        cancel-requested + heartbeat(1)         Extended { expires_at: 1040000 } => running
        cancel-requested + complete(1, failed)  Completed(Outcome { status: Canceled, exit_code: Some(2), lease: Some(LeaseId(1)), message: None, finished_at: 1010000 }) => canceled
        cancel-requested + complete(2, passed)  error: lease 2 of run r-7 is stale (the current lease is 1)
        cancel-requested + lease-expired early  error: lease 1 of run r-7 runs until 1030000, not expired at 1010000
        cancel-requested + lease-expired        Canceled(Outcome { status: Canceled, exit_code: None, lease: None, message: Some("canceled; runner runner:r1 let lease 1 lapse before confirming"), finished_at: 1030000 }) => canceled
        cancel-requested + cancel               Unchanged => running
                  passed + lease                error: run r-7 is passed, which is final
                  passed + start(1)             error: run r-7 is passed, which is final
                  passed + heartbeat(1)         error: run r-7 is passed, which is final
                  passed + complete(1, failed)  AlreadyCompleted(Outcome { status: Passed, exit_code: Some(0), lease: Some(LeaseId(1)), message: None, finished_at: 1000003 }) => passed
                  passed + complete(2, passed)  error: run r-7 is passed, which is final
                  passed + lease-expired early  error: run r-7 is passed, which is final
                  passed + lease-expired        error: run r-7 is passed, which is final
                  passed + cancel               error: run r-7 is passed, which is final
                canceled + lease                error: run r-7 is canceled, which is final
                canceled + start(1)             error: run r-7 is canceled, which is final
                canceled + heartbeat(1)         error: run r-7 is canceled, which is final
                canceled + complete(1, failed)  error: run r-7 is canceled, which is final
                canceled + complete(2, passed)  error: run r-7 is canceled, which is final
                canceled + lease-expired early  error: run r-7 is canceled, which is final
                canceled + lease-expired        error: run r-7 is canceled, which is final
                canceled + cancel               error: run r-7 is canceled, which is final
    "#]]
    .assert_eq(&table);
}

#[test]
fn lost_lease_requeues_and_the_next_lease_is_attempt_two() {
    let mut run = running();
    assert_eq!(run.attempt(), 1);
    let expires_at = run.lease().unwrap().expires_at;

    // One millisecond early the lease still holds, and heartbeats still extend it.
    assert!(!run.lease_expired(expires_at - 1));
    assert!(matches!(
        run.apply(RunEvent::LeaseExpired, expires_at - 1),
        Err(TransitionError::LeaseNotExpired { .. })
    ));

    // At expiry the runner's heartbeat is too late, and the sweep requeues the run.
    assert!(run.lease_expired(expires_at));
    assert!(matches!(
        run.apply(
            RunEvent::Heartbeat {
                lease: LeaseId(1),
                expires_at: expires_at + 30_000
            },
            expires_at
        ),
        Err(TransitionError::LeaseExpired { .. })
    ));
    assert_eq!(
        apply_ok(&mut run, RunEvent::LeaseExpired, expires_at),
        Transition::Requeued { attempt: 1 }
    );
    assert_eq!(run.status(), RunStatus::Queued);
    assert_eq!(run.attempt(), 1, "attempt count kept");
    assert!(run.lease().is_none());

    // Another runner takes it: attempt 2, lease 2.
    let later = expires_at + 5;
    let Transition::Leased(lease) = apply_ok(
        &mut run,
        RunEvent::Lease {
            runner: "runner:r2".to_owned(),
            expires_at: policy().expiry(later),
        },
        later,
    ) else {
        panic!("not leased")
    };
    assert_eq!(lease.id, LeaseId(2));
    assert_eq!(lease.runner, "runner:r2");
    assert_eq!(run.attempt(), 2);

    // Heartbeats keep it alive past the original expiry.
    let hb = later + 10_000;
    apply_ok(
        &mut run,
        RunEvent::Heartbeat {
            lease: LeaseId(2),
            expires_at: policy().expiry(hb),
        },
        hb,
    );
    assert!(!run.lease_expired(policy().expiry(later)));
    assert!(run.lease_expired(policy().expiry(hb)));
}

#[test]
fn max_attempts_lost_leases_end_errored() {
    let mut run = queued();
    let mut now = T0;
    for attempt in 1..=3 {
        apply_ok(&mut run, lease_event(now), now);
        assert_eq!(run.attempt(), attempt);
        now = policy().expiry(now);
        let t = apply_ok(&mut run, RunEvent::LeaseExpired, now);
        if attempt < 3 {
            assert_eq!(t, Transition::Requeued { attempt });
        } else {
            let Transition::GaveUp(outcome) = t else {
                panic!("expected to give up, got {t:?}")
            };
            expect![[
                r#"gave up after 3 attempts: every lease was lost (last held by runner runner:r1)"#
            ]]
            .assert_eq(outcome.message.as_deref().unwrap());
        }
        now += 1;
    }
    assert_eq!(run.status(), RunStatus::Errored);
    assert_eq!(run.outcome().unwrap().status, RunStatus::Errored);
    assert!(matches!(
        run.apply(lease_event(now), now),
        Err(TransitionError::Final { .. })
    ));

    // The limit is the policy's, fixed when the run is made.
    let one = LeasePolicy {
        max_attempts: 1,
        ..LeasePolicy::default()
    };
    let mut run = Run::new(RunId(8), &one, T0);
    apply_ok(&mut run, lease_event(T0), T0);
    let t = apply_ok(&mut run, RunEvent::LeaseExpired, policy().expiry(T0));
    assert!(matches!(t, Transition::GaveUp(_)));
}

#[test]
fn completion_is_exactly_once_per_lease() {
    let mut run = running();
    let first = apply_ok(&mut run, complete(1, RunStatus::Failed, Some(1)), T0 + 50);
    let Transition::Completed(outcome) = first else {
        panic!("not completed: {first:?}")
    };
    assert_eq!(outcome.status, RunStatus::Failed);

    // The runner retries (say the reply was lost), even with a different story: no change,
    // and the recorded outcome comes back.
    let before = run.clone();
    for (status, code) in [(RunStatus::Failed, Some(1)), (RunStatus::Passed, Some(0))] {
        let again = apply_ok(&mut run, complete(1, status, code), T0 + 99);
        assert_eq!(again, Transition::AlreadyCompleted(outcome.clone()));
        assert_eq!(run, before);
    }
}

#[test]
fn completion_from_a_stale_lease_is_refused() {
    // Runner 1 goes quiet; its lease expires; runner 2 takes the run.
    let mut run = running();
    let expiry = run.lease().unwrap().expires_at;
    apply_ok(&mut run, RunEvent::LeaseExpired, expiry);
    apply_ok(&mut run, lease_event(expiry + 1), expiry + 1);

    // Runner 1 comes back and reports: refused, and runner 2's lease is untouched.
    let before = run.clone();
    let err = run
        .apply(complete(1, RunStatus::Passed, Some(0)), expiry + 2)
        .unwrap_err();
    expect![[r#"lease 1 of run r-7 is stale (the current lease is 2)"#]]
        .assert_eq(&err.to_string());
    assert_eq!(run, before);

    // Runner 2's completion counts.
    let t = apply_ok(
        &mut run,
        complete(2, RunStatus::Passed, Some(0)),
        expiry + 3,
    );
    assert!(matches!(t, Transition::Completed(_)));
    assert_eq!(run.status(), RunStatus::Passed);

    // And runner 1 is still refused once the run is over.
    assert!(matches!(
        run.apply(complete(1, RunStatus::Passed, Some(0)), expiry + 4),
        Err(TransitionError::Final { .. })
    ));
}

#[test]
fn late_completion_from_the_current_holder_is_accepted() {
    // Past expiry but before the sweep: nobody else holds the run, so the result stands.
    let mut run = running();
    let expiry = run.lease().unwrap().expires_at;
    let t = apply_ok(
        &mut run,
        complete(1, RunStatus::Passed, Some(0)),
        expiry + 500,
    );
    assert!(matches!(t, Transition::Completed(_)));
}

#[test]
fn cancel_in_each_state() {
    // Queued: over at once.
    let mut run = queued();
    assert!(matches!(
        apply_ok(&mut run, RunEvent::Cancel, T0),
        Transition::Canceled(_)
    ));
    assert_eq!(run.status(), RunStatus::Canceled);

    // Leased: marked; ends canceled when the runner completes, whatever it reports.
    let mut run = leased();
    assert_eq!(
        apply_ok(&mut run, RunEvent::Cancel, T0 + 1),
        Transition::CancelRequested
    );
    assert_eq!(run.status(), RunStatus::Leased);
    assert!(run.cancel_requested());
    let t = apply_ok(&mut run, complete(1, RunStatus::Canceled, None), T0 + 2);
    assert!(matches!(t, Transition::Completed(ref o) if o.status == RunStatus::Canceled));

    // Running: marked; a second cancel is a no-op; the runner's pass still ends canceled.
    let mut run = running();
    assert_eq!(
        apply_ok(&mut run, RunEvent::Cancel, T0 + 2),
        Transition::CancelRequested
    );
    assert_eq!(
        apply_ok(&mut run, RunEvent::Cancel, T0 + 3),
        Transition::Unchanged
    );
    apply_ok(&mut run, complete(1, RunStatus::Passed, Some(0)), T0 + 4);
    assert_eq!(run.status(), RunStatus::Canceled);
    assert_eq!(run.outcome().unwrap().exit_code, Some(0));

    // Running, and the runner never answers: its lease lapses, canceled, not requeued.
    let mut run = cancel_requested();
    let expiry = run.lease().unwrap().expires_at;
    assert!(matches!(
        apply_ok(&mut run, RunEvent::LeaseExpired, expiry),
        Transition::Canceled(_)
    ));
    assert_eq!(run.status(), RunStatus::Canceled);
    assert_eq!(run.attempt(), 1);

    // Final: refused.
    for mut run in [passed(), canceled()] {
        assert!(matches!(
            run.apply(RunEvent::Cancel, T0 + 10),
            Err(TransitionError::Final { .. })
        ));
    }
}

#[test]
fn a_runner_cannot_report_canceled_or_a_live_status_unasked() {
    let mut run = running();
    for status in [RunStatus::Canceled, RunStatus::Running, RunStatus::Queued] {
        let err = run.apply(complete(1, status, None), T0 + 5).unwrap_err();
        assert!(
            matches!(err, TransitionError::InvalidCompletion { .. }),
            "{err}"
        );
    }
    let err = run
        .apply(complete(1, RunStatus::Canceled, None), T0 + 5)
        .unwrap_err();
    expect![[r#"run r-7: a runner cannot complete a run as canceled: no cancel was requested"#]]
        .assert_eq(&err.to_string());
}

#[test]
fn leases_and_renewals_must_end_in_the_future() {
    let mut run = queued();
    let err = run
        .apply(
            RunEvent::Lease {
                runner: RUNNER.to_owned(),
                expires_at: T0,
            },
            T0,
        )
        .unwrap_err();
    expect![[r#"run r-7: expiry 1000000 is not after now (1000000)"#]].assert_eq(&err.to_string());
}

#[test]
fn a_finished_run_is_retried_as_its_next_attempt_and_an_unfinished_one_is_not() {
    let mut run = running();
    apply_ok(&mut run, complete(1, RunStatus::Failed, Some(3)), T0 + 3);
    let retry = RunEvent::Retry { more_attempts: 3 };
    assert_eq!(
        apply_ok(&mut run, retry.clone(), T0 + 4),
        Transition::Retried { attempt: 1 }
    );
    assert_eq!(run.status(), RunStatus::Queued);
    assert_eq!(run.outcome(), None);
    assert_eq!(run.max_attempts(), 4, "the used lease plus a full budget");
    match apply_ok(&mut run, lease_event(T0 + 5), T0 + 5) {
        Transition::Leased(lease) => assert_eq!(lease.id, LeaseId(2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(run.attempt(), 2);
    // A stale completion from attempt 1 changes nothing.
    assert!(
        run.apply(complete(1, RunStatus::Passed, Some(0)), T0 + 6)
            .is_err()
    );
    assert_eq!(
        run.apply(retry.clone(), T0 + 6),
        Err(TransitionError::NotFinal {
            run: RunId(7),
            status: RunStatus::Leased
        })
    );
    let mut canceled = canceled();
    assert_eq!(
        apply_ok(&mut canceled, retry, T0 + 7),
        Transition::Retried { attempt: 0 }
    );
}
