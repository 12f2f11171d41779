//! The Docker executor: runs each job in a fresh container through the Docker Engine API
//! (`DOCKER_HOST` or the default socket), with the source tree bind-mounted at the task's
//! mountpoint as its only host mount (never the Docker socket). Containers run with
//! `no-new-privileges`, Docker's default capability set minus the ones jobs do not need, a
//! PID limit, memory and CPU limits (the task's `resources`, else the runner's defaults), and
//! no network unless the run's queue allows it. `privileged` takes both the site's grant
//! (in the job spec) and a runner started with `--allow-privileged`. Cancel and timeout are
//! `stop` (SIGTERM, then SIGKILL after the grace period) then `kill`; the container is
//! removed on every path.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use tracing::{debug, warn};

use crate::registry::{ImageRef, RegistryAuth};
use tinyci_core::PullPolicy;

use crate::exec::{
    ExecOutcome, ExecSpec, Interruption, MAX_CHUNK, OutputChunk, OutputSink, StopSignal, Stream,
    base_env, system_line,
};

/// Label put on every container this executor creates, valued with the run label, so
/// leftovers of a crashed runner can be found and removed.
pub const CONTAINER_LABEL: &str = "org.tinyci.run";

/// Label naming the runner whose executor created a container: a restarted runner removes
/// its own leftovers and never another runner's on the same Docker host.
pub const RUNNER_LABEL: &str = "org.tinyci.runner";

/// Why the Docker executor is unavailable or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No Docker API reachable (no socket, daemon down, or refused).
    #[error("no Docker API reachable ({0})")]
    Unreachable(String),
    /// An API call failed.
    #[error("docker {what} failed: {source}")]
    Api {
        /// The operation.
        what: &'static str,
        /// bollard's error.
        source: bollard::errors::Error,
    },
}

/// Limits every container gets unless its task's `resources` say otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerLimits {
    /// Most processes (and threads) in the container.
    pub pids: i64,
    /// Memory limit in bytes (`None`: the host's).
    pub memory_bytes: Option<i64>,
    /// CPU limit in billionths of a core (`None`: every core).
    pub nano_cpus: Option<i64>,
    /// Whether privileged containers may run at all (`--allow-privileged`).
    pub allow_privileged: bool,
}

impl Default for ContainerLimits {
    fn default() -> Self {
        Self {
            pids: 4096,
            memory_bytes: Some(4 << 30),
            nano_cpus: None,
            allow_privileged: false,
        }
    }
}

/// Capabilities of Docker's default set a CI job has no use for and an attacker does: raw
/// sockets (spoofing on the bridge), device nodes, audit records.
const DROPPED_CAPABILITIES: [&str; 3] = ["NET_RAW", "MKNOD", "AUDIT_WRITE"];

/// Runs jobs in containers.
#[derive(Clone, Debug)]
pub struct DockerExecutor {
    docker: Docker,
    limits: ContainerLimits,
    /// The runner whose containers these are ([`RUNNER_LABEL`]), once known.
    owner: Option<String>,
    /// When to pull a run's image, unless its queue says otherwise.
    pull: PullPolicy,
    /// Registry credentials from the runner host's Docker configuration.
    auth: RegistryAuth,
}

impl DockerExecutor {
    /// Connects to the Docker API named by `DOCKER_HOST` (or the default socket), agrees on
    /// an API version with the daemon, and checks it answers.
    pub async fn connect() -> Result<Self, DockerError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| DockerError::Unreachable(e.to_string()))?;
        // bollard speaks a newer API than many daemons; negotiate down to the daemon's.
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| DockerError::Unreachable(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| DockerError::Unreachable(e.to_string()))?;
        Ok(Self {
            docker,
            limits: ContainerLimits::default(),
            owner: None,
            pull: PullPolicy::default(),
            auth: RegistryAuth::default(),
        })
    }

    /// Pulls images by `policy` unless a run's queue says otherwise, with `auth`'s
    /// credentials.
    #[must_use]
    pub fn with_pulls(mut self, policy: PullPolicy, auth: RegistryAuth) -> Self {
        self.pull = policy;
        self.auth = auth;
        self
    }

    /// The policy for runs whose queue sets none.
    pub fn pull_policy(&self) -> PullPolicy {
        self.pull
    }

    /// Uses `limits` for every container from now on.
    #[must_use]
    pub fn with_limits(mut self, limits: ContainerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Labels the containers it creates as `runner`'s ([`RUNNER_LABEL`]).
    #[must_use]
    pub fn owned_by(mut self, runner: &str) -> Self {
        self.owner = Some(runner.to_owned());
        self
    }

    /// Removes (forcibly: killing what still runs) every container labelled as this
    /// executor's runner's: what a runner that crashed or was killed left behind. Call it when
    /// the runner starts, before it takes work. Returns their ids. Without an owner, removes
    /// nothing: the containers on this host may be another runner's.
    pub async fn remove_leftovers(&self) -> Result<Vec<String>, DockerError> {
        let Some(owner) = &self.owner else {
            return Ok(Vec::new());
        };
        let leftovers = self
            .containers_labelled(format!("{RUNNER_LABEL}={owner}"))
            .await?;
        let mut removed = Vec::new();
        for id in leftovers {
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            match self.docker.remove_container(&id, Some(options)).await {
                Ok(()) => removed.push(id),
                // Gone meanwhile (its own `--rm`, or another cleanup): nothing left to do.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(source) => {
                    return Err(DockerError::Api {
                        what: "remove a leftover container",
                        source,
                    });
                }
            }
        }
        Ok(removed)
    }

    /// The limits containers get.
    pub fn limits(&self) -> ContainerLimits {
        self.limits
    }

    /// Imports a root filesystem tarball as image `repo:tag` (what `docker import` does). No
    /// registry involved: this is how tests and air-gapped sites get images.
    pub async fn import_image(
        &self,
        tarball: Vec<u8>,
        repo: &str,
        tag: &str,
    ) -> Result<(), DockerError> {
        let options = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(repo)
            .tag(tag)
            .build();
        let mut progress = self.docker.create_image(
            Some(options),
            Some(bollard::body_full(tarball.into())),
            None,
        );
        while let Some(step) = progress.next().await {
            step.map_err(|source| DockerError::Api {
                what: "image import",
                source,
            })?;
        }
        Ok(())
    }

    /// Ids of containers that carry [`CONTAINER_LABEL`] (running or not).
    pub async fn labelled_containers(&self) -> Result<Vec<String>, DockerError> {
        self.containers_labelled(CONTAINER_LABEL.to_owned()).await
    }

    /// Ids of the containers (running or not) matching a Docker `label` filter (`key` or
    /// `key=value`).
    async fn containers_labelled(&self, filter: String) -> Result<Vec<String>, DockerError> {
        let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([("label", vec![filter])]))
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|source| DockerError::Api {
                what: "list containers",
                source,
            })?;
        Ok(containers.into_iter().filter_map(|c| c.id).collect())
    }

    /// Runs `spec` in a new container, streaming its output into `out`.
    pub async fn run(&self, spec: &ExecSpec, out: &OutputSink, stop: StopSignal) -> ExecOutcome {
        if spec.image.is_empty() {
            return ExecOutcome::errored(
                "the docker executor needs an image (set `image` on the run or `default_image` in task.yml or tinyci.yml)",
            );
        }
        if spec.privileged && !self.limits.allow_privileged {
            return ExecOutcome::errored(
                "the site granted a privileged container, but this runner was not started with \
                 --allow-privileged; it runs none",
            );
        }
        if let Err(outcome) = self.ensure_image(spec, out, stop.clone()).await {
            return outcome;
        }
        let id = match self.create(spec).await {
            Ok(id) => id,
            Err(e) => return ExecOutcome::errored(e),
        };
        let outcome = self.run_created(&id, spec, out, stop).await;
        self.remove(&id).await;
        outcome
    }

    /// Makes sure the run's image is on this host, pulling it as the policy says (the queue's,
    /// else the runner's), with progress in the run's `system` stream. A pull is bounded by
    /// the run's timeout and stops on cancel.
    async fn ensure_image(
        &self,
        spec: &ExecSpec,
        out: &OutputSink,
        mut stop: StopSignal,
    ) -> Result<(), ExecOutcome> {
        let (policy, whose) = match spec.pull {
            Some(policy) => (policy, "the queue's"),
            None => (self.pull, "this runner's"),
        };
        let present = match self.docker.inspect_image(&spec.image).await {
            Ok(_) => true,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => false,
            Err(source) => {
                return Err(ExecOutcome::errored(
                    DockerError::Api {
                        what: "inspect image",
                        source,
                    }
                    .to_string(),
                ));
            }
        };
        let why = match (policy, present) {
            (PullPolicy::Never, false) => {
                return Err(ExecOutcome::errored(format!(
                    "image {} is not on this runner host and {whose} pull policy is never: load \
                     it on the host first (docker pull or docker load), or use a queue or \
                     runner whose policy pulls",
                    spec.image
                )));
            }
            (PullPolicy::Never, true) => return Ok(()),
            // A local copy may have been pulled with this host's credentials for trusted
            // work; a fork or a partner gets it only if it may pull it anonymously.
            (PullPolicy::Missing, true) if !spec.registry_credentials => {
                "untrusted work uses a local image only if it may pull it anonymously"
            }
            (PullPolicy::Missing, true) => return Ok(()),
            (PullPolicy::Missing, false) => "it is not on this host",
            (PullPolicy::Always, _) => "the pull policy is always",
        };
        system_line(
            out,
            format!(
                "pulling image {} ({why}; {whose} policy: {policy})",
                spec.image
            ),
        )
        .await;
        let pull = self.pull(spec, out);
        let failure = tokio::select! {
            pulled = tokio::time::timeout(spec.timeout, pull) => match pulled {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => ExecOutcome::errored(e),
                Err(_) => ExecOutcome {
                    verdict: crate::exec::Verdict::TimedOut,
                    exit_code: None,
                    message: format!(
                        "timed out after {}s pulling image {}",
                        spec.timeout.as_secs(),
                        spec.image
                    ),
                },
            },
            reason = stop.requested() => ExecOutcome {
                verdict: crate::exec::Verdict::Canceled,
                exit_code: None,
                message: format!("canceled: {reason}"),
            },
        };
        Err(failure)
    }

    /// Pulls the run's image, writing one `system` line each time a layer's state changes
    /// (not every progress tick).
    async fn pull(&self, spec: &ExecSpec, out: &OutputSink) -> Result<(), String> {
        let image = ImageRef::parse(&spec.image);
        let options = CreateImageOptionsBuilder::default()
            .from_image(&image.name)
            .tag(&image.reference)
            .build();
        let credentials = spec
            .registry_credentials
            .then(|| self.auth.for_registry(&image.registry))
            .flatten();
        let had_credentials = credentials.is_some();
        let mut progress = self.docker.create_image(Some(options), None, credentials);
        let mut last: HashMap<String, String> = HashMap::new();
        while let Some(step) = progress.next().await {
            let step = step.map_err(|source| {
                let hint = if had_credentials {
                    String::new()
                } else if !spec.registry_credentials {
                    " (this run's trust tier pulls anonymously: the runner host's registry \
                     credentials serve only local and repo work)"
                        .to_owned()
                } else if self.auth.helper_for(&image.registry) {
                    format!(
                        " (the Docker configuration sends {} to a credential helper, which \
                         tinyci does not run: put its credentials under `auths`)",
                        image.registry
                    )
                } else {
                    format!(
                        " (no credentials for {} in this host's Docker configuration)",
                        image.registry
                    )
                };
                format!("cannot pull image {}: {source}{hint}", spec.image)
            })?;
            let Some(status) = step.status else { continue };
            let key = step.id.clone().unwrap_or_default();
            if last.get(&key) == Some(&status) {
                continue;
            }
            let line = match &step.id {
                Some(id) => format!("{id}: {status}"),
                None => status.clone(),
            };
            last.insert(key, status);
            system_line(out, line).await;
        }
        Ok(())
    }

    async fn create(&self, spec: &ExecSpec) -> Result<String, String> {
        let memory = within(
            spec.memory.as_deref().map(parse_memory).transpose()?,
            self.limits.memory_bytes,
        );
        let nano_cpus = within(
            spec.cpu.as_deref().map(parse_cpus).transpose()?,
            self.limits.nano_cpus,
        );
        let cmd = match spec.command.as_slice() {
            [line] => vec!["/bin/sh".to_owned(), "-c".to_owned(), line.clone()],
            argv => argv.to_vec(),
        };
        let workdir = if spec.workdir.starts_with('/') {
            spec.workdir.clone()
        } else {
            format!("{}/{}", spec.mountpoint.trim_end_matches('/'), spec.workdir)
        };
        // Secret variables stay out of the container's configuration (the Docker daemon
        // writes that to its own disk): the image's /bin/sh reads them from the run's
        // read-only secrets mount instead.
        let cmd = match crate::secrets::variables_file(spec) {
            Some(_) => crate::secrets::sourcing(
                &std::path::Path::new(crate::secrets::CONTAINER_SECRETS_DIR)
                    .join(crate::secrets::VARIABLES_FILE),
                cmd,
            ),
            None => cmd,
        };
        let mut env = base_env(spec);
        if spec.secrets_dir.is_some() {
            env.insert(
                crate::secrets::SECRETS_DIR_VARIABLE.into(),
                crate::secrets::CONTAINER_SECRETS_DIR.into(),
            );
        }
        let env = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        // The run's secret files, read-only, outside its source tree.
        let secrets_mount = spec.secrets_dir.as_ref().map(|dir| Mount {
            target: Some(crate::secrets::CONTAINER_SECRETS_DIR.to_owned()),
            source: Some(dir.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Mount::default()
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(cmd),
            env: Some(env),
            working_dir: Some(workdir),
            labels: Some(
                std::iter::once((CONTAINER_LABEL.to_owned(), spec.label.clone()))
                    .chain(
                        self.owner
                            .iter()
                            .map(|owner| (RUNNER_LABEL.to_owned(), owner.clone())),
                    )
                    .collect(),
            ),
            host_config: Some(HostConfig {
                // The run's own tree is the only host path it sees. A structured mount, not a
                // `-v`-style string: a mountpoint from a task file cannot add options.
                mounts: Some(
                    std::iter::once(Mount {
                        target: Some(spec.mountpoint.clone()),
                        source: Some(spec.source_dir.display().to_string()),
                        typ: Some(MountType::BIND),
                        read_only: Some(false),
                        ..Mount::default()
                    })
                    .chain(secrets_mount)
                    .collect(),
                ),
                privileged: Some(spec.privileged),
                security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
                cap_drop: (!spec.privileged).then(|| {
                    DROPPED_CAPABILITIES
                        .iter()
                        .map(|c| (*c).to_owned())
                        .collect()
                }),
                pids_limit: Some(self.limits.pids),
                memory,
                // Swap as much as memory: no swapping past the limit.
                memory_swap: memory,
                nano_cpus,
                network_mode: Some(if spec.network { "bridge" } else { "none" }.to_owned()),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::default().build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|source| {
                DockerError::Api {
                    what: "create container",
                    source,
                }
                .to_string()
            })?;
        Ok(created.id)
    }

    async fn run_created(
        &self,
        id: &str,
        spec: &ExecSpec,
        out: &OutputSink,
        mut stop: StopSignal,
    ) -> ExecOutcome {
        if let Err(source) = self.docker.start_container(id, None).await {
            return ExecOutcome::errored(
                DockerError::Api {
                    what: "start container",
                    source,
                }
                .to_string(),
            );
        }
        let logs = self.forward_logs(id, out.clone());
        let interruption = tokio::select! {
            code = self.exit_code(id) => {
                let _ = logs.await;
                return match code {
                    Ok(code) => ExecOutcome::exited(code),
                    Err(e) => ExecOutcome::errored(e.to_string()),
                };
            }
            () = tokio::time::sleep(spec.timeout) => Interruption::Timeout(spec.timeout),
            reason = stop.requested() => Interruption::Stop(reason),
        };
        system_line(
            out,
            format!("tinyci: {interruption}; stopping the container"),
        )
        .await;
        let grace = i32::try_from(spec.grace.as_secs()).unwrap_or(i32::MAX);
        let stop_options = StopContainerOptionsBuilder::default().t(grace).build();
        if let Err(e) = self.docker.stop_container(id, Some(stop_options)).await {
            debug!(container = id, error = %e, "stop failed; killing");
        }
        let kill = KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        let _ = self.docker.kill_container(id, Some(kill)).await;
        let code = self.exit_code(id).await.ok();
        let _ = logs.await;
        interruption.outcome(code)
    }

    /// Waits for the container to stop and returns its exit code.
    async fn exit_code(&self, id: &str) -> Result<i32, DockerError> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut wait = self.docker.wait_container(id, Some(options));
        match wait.next().await {
            Some(Ok(response)) => Ok(code_of(response.status_code)),
            // A non-zero exit arrives as this error, not as a response.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                Ok(code_of(code))
            }
            Some(Err(source)) => Err(DockerError::Api {
                what: "wait for container",
                source,
            }),
            None => Ok(-1),
        }
    }

    /// Follows the container's output into `out` until it stops.
    fn forward_logs(&self, id: &str, out: OutputSink) -> tokio::task::JoinHandle<()> {
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut logs = self.docker.logs(id, Some(options));
        tokio::spawn(async move {
            while let Some(item) = logs.next().await {
                let (stream, bytes) = match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        (Stream::Stdout, message)
                    }
                    Ok(LogOutput::StdErr { message }) => (Stream::Stderr, message),
                    Ok(LogOutput::StdIn { .. }) => continue,
                    Err(e) => {
                        warn!(error = %e, "container log stream failed");
                        break;
                    }
                };
                for piece in bytes.chunks(MAX_CHUNK) {
                    let chunk = OutputChunk {
                        stream,
                        at: SystemTime::now(),
                        data: piece.to_vec(),
                    };
                    if out.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
        })
    }

    async fn remove(&self, id: &str) {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        // Retry briefly: removal can race the daemon's own cleanup of a just-killed container.
        for attempt in 0..5u64 {
            match self
                .docker
                .remove_container(id, Some(options.clone()))
                .await
            {
                Ok(()) => return,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    return;
                }
                Err(e) => {
                    warn!(container = id, attempt, error = %e, "failed to remove container");
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                }
            }
        }
    }
}

fn code_of(code: i64) -> i32 {
    i32::try_from(code).unwrap_or(-1)
}

/// A container's limit: what the task asks for (`resources`), but never more than the runner's
/// operator allows. The task file is the submitter's input; a fork could otherwise ask for a
/// terabyte of memory and every core, and take the host and its other jobs down with it.
fn within(asked: Option<i64>, allowed: Option<i64>) -> Option<i64> {
    match (asked, allowed) {
        (Some(asked), Some(allowed)) => Some(asked.min(allowed)),
        (asked, allowed) => asked.or(allowed),
    }
}

/// `resources.memory` as bytes: a number with an optional `k`, `m`, `g`, `t` (powers of 1024,
/// as Docker reads them) or `Ki`, `Mi`, `Gi`, `Ti` suffix, at least 6 MiB (Docker's floor).
pub fn parse_memory(text: &str) -> Result<i64, String> {
    let bad = || {
        format!("resources.memory {text:?} is not a size (like 512m, 2g or 1Gi) of at least 6 MiB")
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: i64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.to_ascii_lowercase().trim_end_matches('b') {
        "" => 0,
        "k" | "ki" => 10,
        "m" | "mi" => 20,
        "g" | "gi" => 30,
        "t" | "ti" => 40,
        _ => return Err(bad()),
    };
    number
        .checked_mul(1 << shift)
        .filter(|bytes| *bytes >= 6 << 20)
        .ok_or_else(bad)
}

/// `resources.cpu` as billionths of a core: a positive decimal number of cores (`2`, `0.5`),
/// or Kubernetes-style millicores (`500m`).
pub fn parse_cpus(text: &str) -> Result<i64, String> {
    let bad = || format!("resources.cpu {text:?} is not a number of cores (like 2, 0.5 or 500m)");
    let trimmed = text.trim();
    let nanos = if let Some(milli) = trimmed.strip_suffix('m') {
        milli
            .parse::<i64>()
            .ok()
            .and_then(|m| m.checked_mul(1_000_000))
    } else {
        trimmed
            .parse::<f64>()
            .ok()
            .filter(|c| c.is_finite() && *c <= 4096.0)
            .map(|cores| (cores * 1e9).round() as i64)
    };
    nanos.filter(|n| *n >= 10_000_000).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_hints_parse_like_docker_and_kubernetes() {
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("2g"), Ok(2 << 30));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("8388608"), Ok(8 << 20));
        assert!(parse_memory("1k").is_err());
        assert!(parse_memory("lots").is_err());
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_cpus("250m"), Ok(250_000_000));
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("NaN").is_err());
    }

    #[test]
    fn a_task_asks_for_less_than_the_runner_allows_never_more() {
        let limit = Some(512 << 20);
        assert_eq!(within(Some(1 << 40), limit), limit, "a terabyte asked for");
        assert_eq!(within(Some(256 << 20), limit), Some(256 << 20));
        assert_eq!(within(None, limit), limit);
        // No limit set (every core): the task's hint is all there is.
        assert_eq!(within(Some(2_000_000_000), None), Some(2_000_000_000));
        assert_eq!(within(None, None), None);
    }
}
