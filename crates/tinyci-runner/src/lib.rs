//! Runners: the executors that run jobs (processes on the host, the same in a bubblewrap
//! sandbox, or containers through the Docker API), stream their output with backpressure, and
//! obey cancellation and timeouts. Each job runs in an executor that isolates it at least as
//! much as its site requires (the job spec's `isolation`), or not at all; whatever it
//! starts dies with it (a PID namespace, or its container).
//!
//! This is the only crate that knows `bollard`. Executors know nothing of capnp, tokens or
//! the site: they take an [`ExecSpec`], an [`OutputSink`] and a [`StopSignal`], and return
//! an [`ExecOutcome`]. The agent ([`run_agent`]) is the job loop on top of them: it holds
//! the runner's `Worker` capabilities and talks to the site (leases, heartbeats, log
//! streaming). It never sees repository credentials: sources come through `Job.source`.
//! After a run, [`upload_artifacts`] collects the files its task names and streams them
//! through `Job.artifacts`, refusing anything that would leave the run's source tree.

mod agent;
mod artifacts;
mod docker;
mod exec;
mod registry;
mod sandbox;
mod secrets;
mod shell;
mod source;
mod workroot;

pub use agent::{
    AgentConfig, AgentControl, AgentError, AgentStats, AgentStopper, DetectOptions, Executor,
    Executors, MAX_UNACKED_LOG_BYTES, agent_control, metadata_variable, run_agent,
};
pub use artifacts::{
    ArtifactReport, MAX_ARTIFACTS, RefusedArtifact, UploadedArtifact, host_workdir,
    upload_artifacts, upload_run_artifacts,
};
pub use docker::{
    CONTAINER_LABEL, ContainerLimits, DockerError, DockerExecutor, RUNNER_LABEL, parse_cpus,
    parse_memory,
};
pub use exec::{
    ExecOutcome, ExecSpec, MAX_CHUNK, OutputChunk, OutputSink, SecretEnv, StopHandle, StopSignal,
    Stream, Verdict, stop_pair,
};
pub use registry::{DOCKER_HUB, ImageRef, RegistryAuth, RegistryAuthError};
pub use sandbox::{Bubblewrap, Confinement, Containment, SandboxError, Unshare};
pub use shell::ShellExecutor;
pub use source::{MAX_SOURCE_BYTES, private_work_root};
pub use tinyci_core::{Isolation, PullPolicy, check_label};
pub use workroot::{Swept, WorkRoot};
