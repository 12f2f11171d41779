//! The life of one run as a pure state machine: [`Run::apply`] takes an event and the
//! current time (milliseconds since the Unix epoch, from the caller: there is no clock
//! here) and either changes the run and says what happened ([`Transition`]) or refuses and
//! leaves it untouched ([`TransitionError`]).
//!
//! ```text
//!            Lease               Start                 Complete
//!   Queued ─────────▶ Leased ─────────▶ Running ─────────────────▶ Passed | Failed |
//!     ▲ │               │                  │                        TimedOut | Errored
//!     │ │ Cancel        │ LeaseExpired     │ LeaseExpired
//!     │ ▼               ▼                  ▼
//!     │ Canceled     requeue (attempt kept) or, at max_attempts, Errored
//!     └───────────────┘
//! ```
//!
//! Rules:
//! - leasing a queued run increments `attempt`; the lease's id is that attempt number, so a
//!   holder of an older lease is recognised as stale;
//! - a lease lost (expired at `now`, reported by [`RunEvent::LeaseExpired`]) puts the run
//!   back on its queue with its attempt count kept; once `max_attempts` leases have been
//!   lost the run ends `Errored` with a message;
//! - heartbeats extend the current lease, and are refused once it has expired; a completion
//!   from the current holder is accepted even after expiry as long as no one else holds the
//!   run, since it is still the only result there is;
//! - completion is exactly-once per lease: a repeat from the same lease is a no-op that
//!   returns the recorded outcome, a completion from any other lease is refused;
//! - cancelling a queued run ends it `Canceled`; cancelling a leased or running run only
//!   marks it, and it ends `Canceled` when its runner completes or its lease expires;
//! - final states accept nothing else.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::RunId;

/// How long a lease lasts unless renewed: 30 s.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(30);
/// How often a runner renews its lease: 10 s, a third of the lease, so two heartbeats may be
/// lost before the lease is.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// How many leases a run may lose before it is given up as `Errored`: 3.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Lease timing and retry limit, set by the site. Defaults: [`DEFAULT_LEASE_DURATION`],
/// [`DEFAULT_HEARTBEAT_INTERVAL`], [`DEFAULT_MAX_ATTEMPTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasePolicy {
    /// How long a lease (or a heartbeat's renewal) lasts.
    pub lease_duration: Duration,
    /// How often runners are told to heartbeat; shorter than `lease_duration`.
    pub heartbeat_interval: Duration,
    /// Leases a run may have before a lost one ends it `Errored`; at least 1.
    pub max_attempts: u32,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy {
            lease_duration: DEFAULT_LEASE_DURATION,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

impl LeasePolicy {
    /// When a lease granted or renewed at `now_ms` expires.
    pub fn expiry(&self, now_ms: u64) -> u64 {
        let ms = u64::try_from(self.lease_duration.as_millis()).unwrap_or(u64::MAX);
        now_ms.saturating_add(ms)
    }
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting on its queue.
    Queued,
    /// Handed to a runner, which has not yet said it started.
    Leased,
    /// The runner is executing it.
    Running,
    /// Finished with exit code 0.
    Passed,
    /// Finished with a non-zero exit code.
    Failed,
    /// Cancelled before or while running.
    Canceled,
    /// Ran past its timeout.
    TimedOut,
    /// Could not be run (infrastructure failure, or too many lost leases).
    Errored,
}

impl RunStatus {
    /// Whether the run is over: nothing changes it any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Passed
                | RunStatus::Failed
                | RunStatus::Canceled
                | RunStatus::TimedOut
                | RunStatus::Errored
        )
    }

    /// Every status, in the order a run can pass through them.
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Queued,
        RunStatus::Leased,
        RunStatus::Running,
        RunStatus::Passed,
        RunStatus::Failed,
        RunStatus::Canceled,
        RunStatus::TimedOut,
        RunStatus::Errored,
    ];

    /// Every status's word ([`RunStatus::as_str`]), in [`RunStatus::ALL`]'s order.
    pub const WORDS: [&'static str; 8] = [
        "queued",
        "leased",
        "running",
        "passed",
        "failed",
        "canceled",
        "timed_out",
        "errored",
    ];

    /// The status `word` names ([`RunStatus::as_str`]'s spelling), if any.
    pub fn from_word(word: &str) -> Option<RunStatus> {
        Self::ALL.into_iter().find(|status| status.as_str() == word)
    }

    /// The status as a lowercase word, as it is serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Leased => "leased",
            RunStatus::Running => "running",
            RunStatus::Passed => "passed",
            RunStatus::Failed => "failed",
            RunStatus::Canceled => "canceled",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Errored => "errored",
        }
    }
}

impl RunStatus {
    /// The one status of a submission made of runs in `statuses`, for every surface (RPC,
    /// CLI, pages, GitHub): queued while nothing has started, running while anything is
    /// unfinished, and once all ended the worst outcome, ranked
    /// passed < canceled < failed < timed out < errored (an infrastructure failure needs
    /// someone's attention most). No runs at all counts as passed.
    pub fn of_submission(statuses: impl IntoIterator<Item = RunStatus>) -> RunStatus {
        let rank = |s: RunStatus| match s {
            RunStatus::Passed => 0,
            RunStatus::Canceled => 1,
            RunStatus::Failed => 2,
            RunStatus::TimedOut => 3,
            RunStatus::Errored => 4,
            RunStatus::Queued | RunStatus::Leased | RunStatus::Running => 5,
        };
        let (mut worst, mut all_queued, mut unfinished) = (RunStatus::Passed, true, false);
        for status in statuses {
            unfinished |= !status.is_final();
            all_queued &= status == RunStatus::Queued;
            if rank(status) > rank(worst) {
                worst = status;
            }
        }
        match (unfinished, all_queued) {
            (true, true) => RunStatus::Queued,
            (true, false) => RunStatus::Running,
            (false, _) => worst,
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one lease of one run: the attempt number it began. Increases with every
/// lease, so any lease but the current one is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub u32);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A runner's claim on a run, until `expires_at` unless renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Which lease this is.
    pub id: LeaseId,
    /// The runner holding it (its holder name, e.g. `runner:r1`).
    pub runner: String,
    /// When it was granted, ms since the epoch.
    pub granted_at: u64,
    /// When it lapses unless renewed, ms since the epoch.
    pub expires_at: u64,
}

/// How a run ended. Recorded once; a repeated completion returns it unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The final status.
    pub status: RunStatus,
    /// The command's exit code, when the runner reported one.
    pub exit_code: Option<i32>,
    /// The lease whose holder completed the run; `None` when the run ended without a
    /// runner's word (cancelled while queued, lease lost).
    pub lease: Option<LeaseId>,
    /// Why, when the run ended without a runner's word.
    pub message: Option<String>,
    /// When, ms since the epoch.
    pub finished_at: u64,
}

/// Something that happens to a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunEvent {
    /// A runner takes the queued run until `expires_at`.
    Lease {
        /// The runner's holder name.
        runner: String,
        /// When the lease lapses unless renewed ([`LeasePolicy::expiry`]).
        expires_at: u64,
    },
    /// The holder of `lease` started executing.
    Start {
        /// The holder's lease.
        lease: LeaseId,
    },
    /// The holder of `lease` is alive; renew until `expires_at`.
    Heartbeat {
        /// The holder's lease.
        lease: LeaseId,
        /// The new expiry.
        expires_at: u64,
    },
    /// The holder of `lease` finished.
    Complete {
        /// The holder's lease.
        lease: LeaseId,
        /// `Passed`, `Failed`, `TimedOut` or `Errored`; `Canceled` only after a cancel.
        status: RunStatus,
        /// The command's exit code, if it ran.
        exit_code: Option<i32>,
    },
    /// The queue saw the current lease's expiry pass.
    LeaseExpired,
    /// Someone asked to cancel the run.
    Cancel,
    /// An operator asked for the finished run again: a new attempt of the same run, with
    /// `more_attempts` leases on top of those it used.
    Retry {
        /// Leases the new attempt may take (the queue's `max_attempts`).
        more_attempts: u32,
    },
    /// `lease` was made for a worker that never received it (it went away first, or its
    /// runner was paused meanwhile): the run is queued again with the attempt given back, as
    /// if it had never been leased. A cancel asked meanwhile ends it.
    Undelivered {
        /// The lease nobody received.
        lease: LeaseId,
    },
}

/// What an accepted event did; the caller acts on it (persist, notify the runner, requeue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transition {
    /// The run was leased: hand it to the runner.
    Leased(Lease),
    /// The run is now running.
    Started,
    /// The lease now lasts until `expires_at`.
    Extended {
        /// The new expiry.
        expires_at: u64,
    },
    /// The runner's completion was recorded; the run is over.
    Completed(Outcome),
    /// The same lease completed before: nothing changed; here is what was recorded.
    AlreadyCompleted(Outcome),
    /// The lease was lost; the run is back on its queue.
    Requeued {
        /// Leases so far (kept; the next lease makes it one more).
        attempt: u32,
    },
    /// The lease was lost and no attempts remain: the run is `Errored`.
    GaveUp(Outcome),
    /// The run is over as `Canceled` without a runner's word (cancelled while queued, or
    /// its lease lapsed after a cancel request).
    Canceled(Outcome),
    /// The run is marked to cancel: tell its runner to stop.
    CancelRequested,
    /// Nothing to do (a repeated start or cancel request).
    Unchanged,
    /// The finished run is queued again; its next lease is attempt `attempt + 1`.
    Retried {
        /// Leases so far.
        attempt: u32,
    },
}

/// Why an event was refused; the run is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The run is over.
    #[error("run {run} is {status}, which is final")]
    Final {
        /// The run.
        run: RunId,
        /// Its final status.
        status: RunStatus,
    },
    /// Only a finished run can be retried.
    #[error("run {run} is {status}: only a finished run can be retried")]
    NotFinal {
        /// The run.
        run: RunId,
        /// Its status.
        status: RunStatus,
    },
    /// Only a queued run can be leased.
    #[error("run {run} is {status}, not queued")]
    NotQueued {
        /// The run.
        run: RunId,
        /// Its status.
        status: RunStatus,
    },
    /// The event needs a leased or running run.
    #[error("run {run} is {status}, not leased")]
    NotLeased {
        /// The run.
        run: RunId,
        /// Its status.
        status: RunStatus,
    },
    /// The event came from the holder of a lease that is no longer the run's.
    #[error("lease {presented} of run {run} is stale ({})", current_lease(.current))]
    StaleLease {
        /// The run.
        run: RunId,
        /// The lease the caller holds.
        presented: LeaseId,
        /// The run's current lease, if any.
        current: Option<LeaseId>,
    },
    /// The lease has expired; its holder must stop.
    #[error("lease {lease} of run {run} expired at {expires_at} (now {now})")]
    LeaseExpired {
        /// The run.
        run: RunId,
        /// The expired lease.
        lease: LeaseId,
        /// When it expired, ms.
        expires_at: u64,
        /// The caller's now, ms.
        now: u64,
    },
    /// `LeaseExpired` arrived before the lease's expiry.
    #[error("lease {lease} of run {run} runs until {expires_at}, not expired at {now}")]
    LeaseNotExpired {
        /// The run.
        run: RunId,
        /// The current lease.
        lease: LeaseId,
        /// When it expires, ms.
        expires_at: u64,
        /// The caller's now, ms.
        now: u64,
    },
    /// A lease or renewal that would already have expired.
    #[error("run {run}: expiry {expires_at} is not after now ({now})")]
    ExpiryNotInFuture {
        /// The run.
        run: RunId,
        /// The requested expiry, ms.
        expires_at: u64,
        /// The caller's now, ms.
        now: u64,
    },
    /// A completion with a status a runner cannot report.
    #[error("run {run}: a runner cannot complete a run as {status}: {reason}")]
    InvalidCompletion {
        /// The run.
        run: RunId,
        /// The status reported.
        status: RunStatus,
        /// Why not.
        reason: &'static str,
    },
}

fn current_lease(current: &Option<LeaseId>) -> String {
    match current {
        Some(id) => format!("the current lease is {id}"),
        None => "the run has no lease".to_owned(),
    }
}

/// One run's state: status, attempts, the current lease and, once over, the outcome.
/// Persisted as is by the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    id: RunId,
    status: RunStatus,
    /// Leases granted so far.
    attempt: u32,
    /// Fixed when the run is created, so a policy change does not rewrite running history.
    max_attempts: u32,
    lease: Option<Lease>,
    cancel_requested: bool,
    outcome: Option<Outcome>,
    created_at: u64,
    updated_at: u64,
}

impl Run {
    /// A new queued run, with `policy.max_attempts` (at least 1).
    pub fn new(id: RunId, policy: &LeasePolicy, now_ms: u64) -> Run {
        Run {
            id,
            status: RunStatus::Queued,
            attempt: 0,
            max_attempts: policy.max_attempts.max(1),
            lease: None,
            cancel_requested: false,
            outcome: None,
            created_at: now_ms,
            updated_at: now_ms,
        }
    }

    /// The run's ID.
    pub fn id(&self) -> RunId {
        self.id
    }

    /// Where it is in its life.
    pub fn status(&self) -> RunStatus {
        self.status
    }

    /// Leases granted so far (1 while the first lease is held).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Leases allowed.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The current lease, while leased or running.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Whether a cancel is waiting for the runner.
    pub fn cancel_requested(&self) -> bool {
        self.cancel_requested
    }

    /// How it ended, once final.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// When it was created, ms.
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// When an event last changed it, ms.
    pub fn updated_at(&self) -> u64 {
        self.updated_at
    }

    /// Whether the current lease has expired at `now_ms` (a sweep then applies
    /// [`RunEvent::LeaseExpired`]).
    pub fn lease_expired(&self, now_ms: u64) -> bool {
        self.lease.as_ref().is_some_and(|l| l.expires_at <= now_ms)
    }

    /// Applies `event` at `now_ms`. On error the run is unchanged.
    pub fn apply(&mut self, event: RunEvent, now_ms: u64) -> Result<Transition, TransitionError> {
        let transition = match event {
            RunEvent::Lease { runner, expires_at } => self.lease_to(runner, expires_at, now_ms)?,
            RunEvent::Start { lease } => {
                self.live_lease(lease, now_ms)?;
                if self.status == RunStatus::Running {
                    return Ok(Transition::Unchanged);
                }
                self.status = RunStatus::Running;
                Transition::Started
            }
            RunEvent::Heartbeat { lease, expires_at } => {
                self.live_lease(lease, now_ms)?;
                if expires_at <= now_ms {
                    return Err(TransitionError::ExpiryNotInFuture {
                        run: self.id,
                        expires_at,
                        now: now_ms,
                    });
                }
                if let Some(l) = self.lease.as_mut() {
                    l.expires_at = expires_at;
                }
                Transition::Extended { expires_at }
            }
            RunEvent::Complete {
                lease,
                status,
                exit_code,
            } => {
                if let Some(done) = self.outcome.as_ref().filter(|o| o.lease == Some(lease)) {
                    return Ok(Transition::AlreadyCompleted(done.clone()));
                }
                self.complete(lease, status, exit_code, now_ms)?
            }
            RunEvent::LeaseExpired => self.expire(now_ms)?,
            RunEvent::Undelivered { lease } => self.undeliver(lease, now_ms)?,
            RunEvent::Cancel => self.cancel(now_ms)?,
            RunEvent::Retry { more_attempts } => {
                if !self.status.is_final() {
                    return Err(TransitionError::NotFinal {
                        run: self.id,
                        status: self.status,
                    });
                }
                self.status = RunStatus::Queued;
                self.lease = None;
                self.cancel_requested = false;
                self.outcome = None;
                self.max_attempts = self.attempt.saturating_add(more_attempts.max(1));
                Transition::Retried {
                    attempt: self.attempt,
                }
            }
        };
        self.updated_at = now_ms;
        Ok(transition)
    }

    /// Ends the run as canceled without a runner's word, saying why.
    fn end_canceled(&mut self, message: String, now_ms: u64) -> Transition {
        let outcome = Outcome {
            status: RunStatus::Canceled,
            exit_code: None,
            lease: None,
            message: Some(message),
            finished_at: now_ms,
        };
        self.finish(outcome.clone());
        Transition::Canceled(outcome)
    }

    /// [`RunEvent::Undelivered`]: a lease nobody received is undone.
    fn undeliver(&mut self, lease: LeaseId, now_ms: u64) -> Result<Transition, TransitionError> {
        self.not_final()?;
        let undelivered =
            self.status == RunStatus::Leased && self.lease.as_ref().is_some_and(|l| l.id == lease);
        if !undelivered {
            return Ok(Transition::Unchanged);
        }
        if self.cancel_requested {
            return Ok(self.end_canceled("canceled before its runner took it".to_owned(), now_ms));
        }
        self.lease = None;
        self.status = RunStatus::Queued;
        // The lease's id was never shown to anyone, so the next lease may take it again.
        self.attempt = self.attempt.saturating_sub(1);
        Ok(Transition::Requeued {
            attempt: self.attempt,
        })
    }

    fn not_final(&self) -> Result<(), TransitionError> {
        if self.status.is_final() {
            Err(TransitionError::Final {
                run: self.id,
                status: self.status,
            })
        } else {
            Ok(())
        }
    }

    /// The current lease, if `presented` is it (regardless of expiry).
    fn current_lease(&self, presented: LeaseId) -> Result<&Lease, TransitionError> {
        self.not_final()?;
        match &self.lease {
            Some(l) if l.id == presented => Ok(l),
            other => Err(TransitionError::StaleLease {
                run: self.id,
                presented,
                current: other.as_ref().map(|l| l.id),
            }),
        }
    }

    /// The current lease, if `presented` is it and it has not expired.
    fn live_lease(&self, presented: LeaseId, now_ms: u64) -> Result<(), TransitionError> {
        let lease = self.current_lease(presented)?;
        if lease.expires_at <= now_ms {
            return Err(TransitionError::LeaseExpired {
                run: self.id,
                lease: lease.id,
                expires_at: lease.expires_at,
                now: now_ms,
            });
        }
        Ok(())
    }

    fn lease_to(
        &mut self,
        runner: String,
        expires_at: u64,
        now_ms: u64,
    ) -> Result<Transition, TransitionError> {
        self.not_final()?;
        if self.status != RunStatus::Queued {
            return Err(TransitionError::NotQueued {
                run: self.id,
                status: self.status,
            });
        }
        if expires_at <= now_ms {
            return Err(TransitionError::ExpiryNotInFuture {
                run: self.id,
                expires_at,
                now: now_ms,
            });
        }
        self.attempt = self.attempt.saturating_add(1);
        let lease = Lease {
            id: LeaseId(self.attempt),
            runner,
            granted_at: now_ms,
            expires_at,
        };
        self.lease = Some(lease.clone());
        self.status = RunStatus::Leased;
        Ok(Transition::Leased(lease))
    }

    fn complete(
        &mut self,
        lease: LeaseId,
        status: RunStatus,
        exit_code: Option<i32>,
        now_ms: u64,
    ) -> Result<Transition, TransitionError> {
        let invalid = |reason| TransitionError::InvalidCompletion {
            run: self.id,
            status,
            reason,
        };
        self.current_lease(lease)?;
        match status {
            RunStatus::Passed | RunStatus::Failed | RunStatus::TimedOut | RunStatus::Errored => {}
            RunStatus::Canceled if self.cancel_requested => {}
            RunStatus::Canceled => return Err(invalid("no cancel was requested")),
            RunStatus::Queued | RunStatus::Leased | RunStatus::Running => {
                return Err(invalid("it is not a final status"));
            }
        }
        let final_status = if self.cancel_requested {
            RunStatus::Canceled
        } else {
            status
        };
        let outcome = Outcome {
            status: final_status,
            exit_code,
            lease: Some(lease),
            message: None,
            finished_at: now_ms,
        };
        self.finish(outcome.clone());
        Ok(Transition::Completed(outcome))
    }

    fn expire(&mut self, now_ms: u64) -> Result<Transition, TransitionError> {
        self.not_final()?;
        let Some(lease) = &self.lease else {
            return Err(TransitionError::NotLeased {
                run: self.id,
                status: self.status,
            });
        };
        if lease.expires_at > now_ms {
            return Err(TransitionError::LeaseNotExpired {
                run: self.id,
                lease: lease.id,
                expires_at: lease.expires_at,
                now: now_ms,
            });
        }
        if self.cancel_requested {
            let message = format!(
                "canceled; runner {} let lease {} lapse before confirming",
                lease.runner, lease.id
            );
            return Ok(self.end_canceled(message, now_ms));
        }
        if self.attempt >= self.max_attempts {
            let outcome = Outcome {
                status: RunStatus::Errored,
                exit_code: None,
                lease: None,
                message: Some(format!(
                    "gave up after {} attempts: every lease was lost (last held by runner {})",
                    self.attempt, lease.runner
                )),
                finished_at: now_ms,
            };
            self.finish(outcome.clone());
            return Ok(Transition::GaveUp(outcome));
        }
        self.lease = None;
        self.status = RunStatus::Queued;
        Ok(Transition::Requeued {
            attempt: self.attempt,
        })
    }

    fn cancel(&mut self, now_ms: u64) -> Result<Transition, TransitionError> {
        self.not_final()?;
        match self.status {
            RunStatus::Queued => Ok(self.end_canceled("canceled while queued".to_owned(), now_ms)),
            _ if self.cancel_requested => Ok(Transition::Unchanged),
            _ => {
                self.cancel_requested = true;
                Ok(Transition::CancelRequested)
            }
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        self.status = outcome.status;
        self.lease = None;
        self.outcome = Some(outcome);
    }
}

#[cfg(test)]
mod submission_status_tests {
    use super::RunStatus::{self, *};

    #[test]
    fn an_undelivered_lease_gives_its_attempt_back() {
        let policy = crate::LeasePolicy {
            max_attempts: 1,
            ..crate::LeasePolicy::default()
        };
        let mut run = crate::Run::new(crate::RunId(1), &policy, 0);
        let lease = |run: &mut crate::Run| match run
            .apply(
                crate::RunEvent::Lease {
                    runner: "r".into(),
                    expires_at: 10_000,
                },
                1,
            )
            .unwrap()
        {
            crate::Transition::Leased(lease) => lease.id,
            other => panic!("{other:?}"),
        };
        let first = lease(&mut run);
        let undone = run
            .apply(crate::RunEvent::Undelivered { lease: first }, 2)
            .unwrap();
        assert!(matches!(undone, crate::Transition::Requeued { attempt: 0 }));
        assert_eq!(run.status(), Queued);
        // With one attempt allowed, the run still gets it, under the same lease id.
        assert_eq!(lease(&mut run), first);
        // A stale undo changes nothing; one after a cancel ends the run.
        let stale = crate::LeaseId(first.0 + 7);
        assert_eq!(
            run.apply(crate::RunEvent::Undelivered { lease: stale }, 3)
                .unwrap(),
            crate::Transition::Unchanged
        );
        run.apply(crate::RunEvent::Cancel, 4).unwrap();
        let canceled = run
            .apply(crate::RunEvent::Undelivered { lease: first }, 5)
            .unwrap();
        assert!(matches!(canceled, crate::Transition::Canceled(_)));
    }

    #[test]
    fn every_status_has_its_word_and_back() {
        for (status, word) in RunStatus::ALL.into_iter().zip(RunStatus::WORDS) {
            assert_eq!(status.as_str(), word);
            assert_eq!(RunStatus::from_word(word), Some(status));
        }
        assert_eq!(RunStatus::from_word("timed out"), None);
    }

    #[test]
    fn one_status_for_a_submission() {
        let table: &[(&[RunStatus], RunStatus)] = &[
            (&[], Passed),
            (&[Queued], Queued),
            (&[Queued, Queued], Queued),
            (&[Passed, Queued], Running),
            (&[Leased], Running),
            (&[Failed, Running], Running),
            (&[Passed, Passed], Passed),
            (&[Passed, Canceled], Canceled),
            (&[Passed, Failed, Canceled], Failed),
            (&[Failed, TimedOut], TimedOut),
            (&[Failed, Errored], Errored),
            (&[Errored, Failed], Errored),
        ];
        for (statuses, expected) in table {
            assert_eq!(
                RunStatus::of_submission(statuses.iter().copied()),
                *expected,
                "{statuses:?}"
            );
        }
    }
}
