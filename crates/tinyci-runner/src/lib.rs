//! Runners: the executors that run jobs (a local shell, or containers through the Docker API),
//! stream their output with backpressure, and obey cancellation and timeouts.
//!
//! This is the only crate that knows `bollard`. Executors know nothing of capnp, tokens or
//! the site: they take an [`ExecSpec`], an [`OutputSink`] and a [`StopSignal`], and return
//! an [`ExecOutcome`]. The job loop that talks to a site (leases, heartbeats, log streaming)
//! is built on top of them.

mod docker;
mod exec;
mod shell;

pub use docker::{CONTAINER_LABEL, DockerError, DockerExecutor};
pub use exec::{
    ExecOutcome, ExecSpec, MAX_CHUNK, OutputChunk, OutputSink, StopHandle, StopSignal, Stream,
    Verdict, stop_pair,
};
pub use shell::ShellExecutor;
