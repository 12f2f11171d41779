//! A job's secrets on the runner: fetched from the lease, given to the job as variables or
//! as files in the run's own secrets directory (deleted with the run's directory, or at once
//! when the site withdraws one), and masked out of everything the job prints before it
//! leaves the runner.

use std::collections::{BTreeSet, VecDeque};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tinyci_core::{MIN_SECRET_LEN, Masker, masked_forms};
use tinyci_schema::job;
use tokio::sync::mpsc;

use crate::exec::{ExecSpec, OutputChunk, Stream};

/// Where a container sees the run's secrets directory.
pub(crate) const CONTAINER_SECRETS_DIR: &str = "/run/tinyci/secrets";

/// The most names one withdrawal is read for (a site holds at most 100 per repository).
pub(crate) const MAX_WITHDRAWN: usize = 128;

/// The variable naming the secrets directory inside the job.
pub(crate) const SECRETS_DIR_VARIABLE: &str = "TINYCI_SECRETS_DIR";

/// One secret as delivered. `Debug` never shows the value.
pub(crate) struct Secret {
    name: String,
    value: Vec<u8>,
    as_file: bool,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("as_file", &self.as_file)
            .finish_non_exhaustive()
    }
}

/// Asks the lease for the run's secrets. A site that predates secrets has none to give.
pub(crate) async fn fetch(job: &job::Client) -> Result<Vec<Secret>, String> {
    let response = match job.secrets_request().send().promise.await {
        Ok(response) => response,
        Err(e) if e.kind == capnp::ErrorKind::Unimplemented => return Ok(Vec::new()),
        Err(e) => return Err(format!("the site did not deliver the run's secrets: {e}")),
    };
    let list = response
        .get()
        .and_then(|r| r.get_secrets())
        .map_err(|e| format!("malformed secrets from the site: {e}"))?;
    let mut secrets = Vec::with_capacity(list.len() as usize);
    for secret in list.iter() {
        let name = secret
            .get_name()
            .and_then(|n| n.to_string().map_err(Into::into))
            .map_err(|e| format!("malformed secret name from the site: {e}"))?;
        // The name becomes a file name and a variable: never trust it to be either.
        tinyci_core::check_secret_name(&name).map_err(|e| format!("from the site: {e}"))?;
        secrets.push(Secret {
            name,
            value: secret
                .get_value()
                .map_err(|e| format!("malformed secret value from the site: {e}"))?
                .to_vec(),
            as_file: secret.get_as_file(),
        });
    }
    Ok(secrets)
}

/// Gives `secrets` to the run `exec` describes: variables into its environment (and, for
/// executors that wrap the job, its variables file), files into `<run dir>/secrets` (0700,
/// files 0600), named in `TINYCI_SECRETS_DIR`. Returns the masking forms of every value.
pub(crate) fn install(
    exec: &mut ExecSpec,
    mut secrets: Vec<Secret>,
    withdrawn: &BTreeSet<String>,
) -> Result<Vec<Vec<u8>>, String> {
    // Withdrawn while the delivery was on its way: never placed.
    secrets.retain(|s| !withdrawn.contains(&s.name));
    let forms = masked_forms(
        secrets
            .iter()
            .filter(|s| s.value.len() >= MIN_SECRET_LEN)
            .map(|s| s.value.as_slice()),
    )
    .unwrap_or_default();
    if secrets.is_empty() {
        return Ok(forms);
    }
    let dir = exec
        .source_dir
        .parent()
        .unwrap_or(&exec.source_dir)
        .join("secrets");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    exec.secrets_dir = Some(dir.clone());
    for secret in secrets {
        if secret.as_file {
            write_private(&dir.join(&secret.name), &secret.value)?;
        } else {
            let value = String::from_utf8(secret.value).map_err(|_| {
                format!(
                    "secret {} is not UTF-8 text and cannot be a variable",
                    secret.name
                )
            })?;
            exec.secret_env.insert(secret.name, value);
        }
    }
    if !exec.secret_env.is_empty() {
        write_private(
            &dir.join(VARIABLES_FILE),
            shell_assignments(&exec.secret_env).as_bytes(),
        )?;
    }
    Ok(forms)
}

/// Writes a new file only the runner's user may read.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write secret file {}: {e}", path.display()))?;
    file.write_all(bytes)
        .map_err(|e| format!("cannot write secret file {}: {e}", path.display()))
}

/// The file in the secrets directory that holds the run's secret variables, for executors
/// that must not put them on a command line (sh syntax, sourced by [`sourcing`]). Its name
/// starts with a dot, which no secret's name can.
pub(crate) const VARIABLES_FILE: &str = ".variables";

/// The run's variables file, when it has secret variables.
pub(crate) fn variables_file(spec: &ExecSpec) -> Option<std::path::PathBuf> {
    if spec.secret_env.is_empty() {
        return None;
    }
    spec.secrets_dir
        .as_ref()
        .map(|dir| dir.join(VARIABLES_FILE))
}

/// `command`, run by a shell that first exports the variables in `file`.
pub(crate) fn sourcing(file: &Path, command: Vec<String>) -> Vec<String> {
    let mut wrapped = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        "set -a; . \"$0\"; set +a; exec \"$@\"".to_owned(),
        file.display().to_string(),
    ];
    wrapped.extend(command);
    wrapped
}

/// `NAME='value'` lines a POSIX shell reads back exactly (a `'` inside is `'\''`).
fn shell_assignments(variables: &crate::exec::SecretEnv) -> String {
    let mut text = String::new();
    for (name, value) in variables.iter() {
        text.push_str(name);
        text.push_str("='");
        text.push_str(&value.replace('\'', "'\\''"));
        text.push_str("'\n");
    }
    text
}

/// A slot's view of its current run's secrets, shared by the run and the slot's
/// `JobControl`: a withdrawal that arrives before the secrets are in place is remembered and
/// honoured when they are placed.
#[derive(Debug, Default)]
pub(crate) struct SlotSecrets {
    /// The current run and attempt: a withdrawal names them.
    run: Option<(String, u32)>,
    /// The current run's secrets directory, once its secrets are in place.
    dir: Option<PathBuf>,
    /// Its secret variables, to rewrite its variables file without a withdrawn one.
    variables: crate::exec::SecretEnv,
    /// Names the site withdrew during the current run.
    withdrawn: BTreeSet<String>,
}

impl SlotSecrets {
    /// Run `run`'s attempt `attempt` starts: nothing placed, nothing withdrawn.
    pub(crate) fn begin(&mut self, run: &str, attempt: u32) {
        self.end();
        self.run = Some((run.to_owned(), attempt));
    }

    /// What was withdrawn so far in this run.
    pub(crate) fn withdrawn(&self) -> &BTreeSet<String> {
        &self.withdrawn
    }

    /// The run's secrets are in place as `exec` says.
    pub(crate) fn placed(&mut self, exec: &ExecSpec) {
        self.dir = exec.secrets_dir.clone();
        self.variables = exec.secret_env.clone();
    }

    /// The site withdrew `names` from attempt `attempt` of `run`: delete their files (and
    /// their lines in the variables file) now, or never place them. A withdrawal meant for
    /// another run of this slot is ignored.
    pub(crate) fn withdraw(&mut self, run: &str, attempt: u32, names: &[String]) {
        if self
            .run
            .as_ref()
            .is_none_or(|(current, at)| current != run || *at != attempt)
        {
            return;
        }
        for name in names {
            if self.withdrawn.len() < MAX_WITHDRAWN {
                self.withdrawn.insert(name.clone());
            }
        }
        let Some(dir) = &self.dir else { return };
        withdraw(dir, names);
        let mut dropped = false;
        for name in names {
            // Every name, not just up to the first one found.
            dropped |= self.variables.remove(name);
        }
        if dropped {
            // A running process keeps what it read; what starts later does not get it.
            let file = dir.join(VARIABLES_FILE);
            let fresh = dir.join(".variables.new");
            // A leftover from an earlier rewrite that failed half way.
            let _ = std::fs::remove_file(&fresh);
            let rewritten = write_private(&fresh, shell_assignments(&self.variables).as_bytes())
                .and_then(|()| std::fs::rename(&fresh, &file).map_err(|e| e.to_string()));
            if let Err(e) = rewritten {
                tracing::warn!(error = %e, "cannot rewrite the run's variables file; removing it");
                let _ = std::fs::remove_file(&file);
            }
        }
    }

    /// The run ended (its directory is being removed).
    pub(crate) fn end(&mut self) {
        self.run = None;
        self.dir = None;
        self.variables = crate::exec::SecretEnv::default();
        self.withdrawn.clear();
    }
}

/// Deletes the named secrets' files from `dir` (the site withdrew them). A variable already
/// in a running process cannot be taken back; its value stays masked.
pub(crate) fn withdraw(dir: &Path, names: &[String]) {
    for name in names {
        if tinyci_core::check_secret_name(name).is_err() {
            continue;
        }
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => tracing::info!(secret = %name, "withdrawn secret file deleted"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(secret = %name, error = %e, "cannot delete a withdrawn secret file")
            }
        }
    }
}

/// A job's output with every secret value masked, per stream, before it is sent. Holds
/// back at most a value's longest form less a byte: what may begin one the next write ends.
#[derive(Debug)]
pub(crate) struct MaskedOutput {
    rx: mpsc::Receiver<OutputChunk>,
    maskers: [Masker; 3],
    /// What the maskers held when the output ended, to send last.
    flushed: VecDeque<OutputChunk>,
    ended: bool,
}

const STREAMS: [Stream; 3] = [Stream::Stdout, Stream::Stderr, Stream::System];

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
        Stream::System => 2,
    }
}

impl MaskedOutput {
    pub(crate) fn new(rx: mpsc::Receiver<OutputChunk>, forms: &[Vec<u8>]) -> Self {
        let masker = Masker::new(forms.to_vec());
        Self {
            rx,
            maskers: [masker.clone(), masker.clone(), masker],
            flushed: VecDeque::new(),
            ended: false,
        }
    }

    /// The next masked chunk; `None` once the output ended and all of it was given.
    /// Cancel-safe: a chunk taken from the channel is masked and returned, or kept.
    pub(crate) async fn recv(&mut self) -> Option<OutputChunk> {
        loop {
            if let Some(chunk) = self.flushed.pop_front() {
                return Some(chunk);
            }
            if self.ended {
                return None;
            }
            match self.rx.recv().await {
                Some(mut chunk) => {
                    let masker = &mut self.maskers[index(chunk.stream)];
                    if masker.is_empty() {
                        return Some(chunk);
                    }
                    chunk.data = masker.push(&chunk.data);
                    if !chunk.data.is_empty() {
                        return Some(chunk);
                    }
                }
                None => {
                    self.ended = true;
                    for stream in STREAMS {
                        let data = self.maskers[index(stream)].finish();
                        if !data.is_empty() {
                            self.flushed.push_back(OutputChunk {
                                stream,
                                at: SystemTime::now(),
                                data,
                            });
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn chunk(stream: Stream, data: &[u8]) -> OutputChunk {
        OutputChunk {
            stream,
            at: SystemTime::UNIX_EPOCH,
            data: data.to_vec(),
        }
    }

    #[tokio::test]
    async fn a_value_split_across_writes_is_masked_and_streams_are_masked_apart() {
        let (tx, rx) = mpsc::channel(16);
        let forms = masked_forms([b"hunter2-token".as_slice()]).unwrap();
        let mut out = MaskedOutput::new(rx, &forms);
        tx.send(chunk(Stream::Stdout, b"key=hunter2"))
            .await
            .unwrap();
        tx.send(chunk(Stream::Stderr, b"hunter2-token!"))
            .await
            .unwrap();
        tx.send(chunk(Stream::Stdout, b"-token done"))
            .await
            .unwrap();
        drop(tx);
        let mut per_stream: [Vec<u8>; 3] = Default::default();
        while let Some(c) = out.recv().await {
            per_stream[index(c.stream)].extend_from_slice(&c.data);
        }
        assert_eq!(per_stream[0], b"key=*** done".to_vec());
        assert_eq!(per_stream[1], b"***!".to_vec());
    }

    #[test]
    fn the_variables_file_reads_back_exactly_in_a_shell() {
        let mut variables = crate::exec::SecretEnv::default();
        variables.insert("A".into(), "it's $HOME `x` \\ \"q\"\nline two".into());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(VARIABLES_FILE);
        std::fs::write(&file, shell_assignments(&variables)).unwrap();
        let argv = sourcing(
            &file,
            vec!["sh".into(), "-c".into(), "printf %s \"$A\"".into()],
        );
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "it's $HOME `x` \\ \"q\"\nline two"
        );
    }

    #[test]
    fn a_withdrawal_drops_every_named_variable_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut exec = ExecSpec {
            label: "r-1".into(),
            command: vec!["true".into()],
            source_dir: dir.path().join("src"),
            workdir: ".".into(),
            mountpoint: "/src".into(),
            image: String::new(),
            pull: None,
            registry_credentials: false,
            env: Default::default(),
            timeout: std::time::Duration::from_secs(1),
            privileged: false,
            network: false,
            cpu: None,
            memory: None,
            grace: std::time::Duration::from_secs(1),
            secret_env: Default::default(),
            secrets_dir: None,
        };
        let secret = |name: &str, as_file| Secret {
            name: name.into(),
            value: format!("{name}-value-123").into_bytes(),
            as_file,
        };
        install(
            &mut exec,
            vec![
                secret("A", false),
                secret("B", false),
                secret("C", false),
                secret("F", true),
            ],
            &BTreeSet::new(),
        )
        .unwrap();
        let mut slot = SlotSecrets::default();
        slot.begin("r-1", 1);
        slot.placed(&exec);
        // Another run's withdrawal changes nothing.
        slot.withdraw("r-2", 1, &["A".into()]);
        let dir = exec.secrets_dir.clone().unwrap();
        let variables = || std::fs::read_to_string(dir.join(VARIABLES_FILE)).unwrap();
        assert!(variables().contains("A='A-value-123'"));
        slot.withdraw("r-1", 1, &["A".into(), "B".into(), "F".into()]);
        assert_eq!(variables(), "C='C-value-123'\n");
        assert!(!dir.join("F").exists());
    }

    #[tokio::test]
    async fn without_secrets_output_passes_untouched() {
        let (tx, rx) = mpsc::channel(16);
        let mut out = MaskedOutput::new(rx, &[]);
        tx.send(chunk(Stream::Stdout, b"plain")).await.unwrap();
        drop(tx);
        assert_eq!(out.recv().await.unwrap().data, b"plain".to_vec());
        assert!(out.recv().await.is_none());
    }
}
