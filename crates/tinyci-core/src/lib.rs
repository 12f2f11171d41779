//! tinyci's domain types and rules: typed IDs and names ([`SubmissionId`], [`RunId`],
//! [`QueueName`], [`RepoName`]); the `tinyci.yml` and `task.yml` formats carried over from
//! tinyCI, parsed strictly with errors that name file, field and line ([`RepoConfig`],
//! [`TaskFile`]); choosing the tasks a diff touches and resolving each of their runs with
//! tinyCI's precedence ([`select_tasks`], [`plan`]); and the run/lease state machine
//! ([`Run::apply`]); trust tiers and the dispatch policy that decides which runner may take
//! whose work ([`TrustTier`], [`DispatchPolicy`]). Everything here is plain data with serde derives, so the store can
//! persist it and the site can carry it.
//!
//! This crate is sans-IO: it reads no files, opens no sockets and never asks the OS for the
//! time (callers pass `now` in milliseconds, so leases are tested on a virtual clock). It
//! must not depend on tokio, capnp, heed or any other tinyci crate; file contents arrive as
//! bytes and directory listings as maps.

#![forbid(unsafe_code)]

mod clock;
mod config;
mod counts;
mod error;
mod ids;
mod mask;
mod paths;
mod plan;
mod run;
mod secret;
mod secret_scope;
mod storage;
mod trust;

pub use clock::{Clock, system_time};
pub use config::{
    ConfigError, ConfigErrorKind, DEFAULT_TIMEOUT_SECS, MAX_CONFIG_BYTES, MergeOptions, Position,
    REPO_CONFIG_FILE, RepoConfig, Resources, RunSpec, TASK_FILE, TaskFile,
};
pub use counts::{Counts, Held};
pub use error::error_chain;
pub use ids::{IdError, QueueName, RepoName, RunId, SubmissionId};
pub use mask::{MASK, MIN_SECRET_LEN, Masker, TooShort, masked_forms, scrub};
pub use plan::{
    MAX_PLANNED_BYTES, MAX_PLANNED_RUNS, Plan, PlanError, PlannedRun, plan, resolve_run,
    select_tasks,
};
pub use run::{
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LEASE_DURATION, DEFAULT_MAX_ATTEMPTS, Lease, LeaseId,
    LeasePolicy, Outcome, Run, RunEvent, RunStatus, Transition, TransitionError,
};
pub use secret::constant_time_eq;
pub use secret_scope::{
    MAX_REF_PATTERN, MAX_SECRET_BYTES_PER_REPO, MAX_SECRET_NAME, MAX_SECRET_VALUE,
    MAX_SECRETS_PER_REPO, ScopeError, SecretScope, check_secret_name, ref_matches,
};
pub use storage::{OverQuota, RepoStorage};
pub use trust::{
    DispatchPolicy, Isolation, IsolationError, MAX_LABELS, Needs, Offer, PullPolicy,
    PullPolicyError, QueuePolicy, Refusal, TierError, TierPattern, TrustTier, check_label,
    waiting_reason,
};
