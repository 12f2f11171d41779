//! Collecting a run's artifacts after its command exits and uploading them through
//! `Job.artifacts`: each file goes `AssetSink.put(name, size)`, then its bytes in 64 KiB
//! `ByteSink.write`s with capnp flow control, then `finish(sha256)`, which the site checks.
//!
//! Patterns come from `task.yml` (`artifacts:`), relative to the run's working directory.
//! Each `/`-separated component is a literal name or a glob (`*`, `?`, `[abc]`, `[!abc]`, and
//! `**` for any number of directories); wildcards do not match a leading `.` (as in a shell)
//! nor cross a `/`. The runner walks the directories itself, one component at a time, never
//! descending through a symlinked directory during a `**` walk.
//!
//! What is refused, with the reason in the [`ArtifactReport`], never with a panic:
//! - patterns that are absolute, hold a `..` component, a NUL or a backslash, or are not
//!   valid globs;
//! - matches that resolve outside the source tree (`root`), such as a symlink to `/etc/passwd`
//!   or to a directory above the checkout: every match is canonicalized and must stay under
//!   the canonical `root`, and the file that is read is that canonical path;
//! - symlinks to directories (not followed), dangling symlinks, and anything that is not a
//!   regular file or directory (sockets, FIFOs, devices);
//! - names the site would refuse anyway (over 1024 bytes, a component over 255, control
//!   characters, not UTF-8), so the reason names the rule;
//! - more than [`MAX_ARTIFACTS`] files, and walks that visit more than 100,000 entries.
//!
//! A match that is a directory is taken whole: every regular file below it is uploaded
//! under its path (`dist` gives `dist/app`, `dist/lib/x.so`, …). Sizes are checked by the
//! site at `put`, before any byte is sent, so an oversize file costs one round trip.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tinyci_schema::{asset_sink, job};

use crate::exec::{ExecSpec, MAX_CHUNK, OutputChunk, Stream};

/// Most artifacts one run uploads (the site keeps at most as many).
pub const MAX_ARTIFACTS: usize = 1000;
/// Most directory entries one run's patterns may visit together: a bound on `**` in a huge
/// tree, and on many patterns over one.
const MAX_VISITED: usize = 100_000;
/// Most refusals listed in the run log; past it they are counted in one line. A job decides
/// how many matches it makes (dangling symlinks cost it nothing).
const MAX_REFUSALS: usize = 200;
/// Most patterns one run's artifacts may list; the rest are refused in one line.
const MAX_PATTERNS: usize = 256;
/// Longest artifact name the site accepts, in bytes.
const MAX_NAME_BYTES: usize = 1024;
/// Longest component of a name the site accepts, in bytes.
const MAX_COMPONENT_BYTES: usize = 255;
/// Bytes per `ByteSink.write` (the wire contract's limit).
const CHUNK: usize = 64 * 1024;

/// An artifact the site stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadedArtifact {
    /// Its name: the path relative to the working directory, `/`-separated.
    pub name: String,
    /// Bytes sent.
    pub size: u64,
    /// SHA-256 of those bytes, as the site checked it.
    pub sha256: [u8; 32],
}

/// A pattern or file that was not uploaded, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedArtifact {
    /// The pattern as written in the task, or the matched file's name.
    pub name: String,
    /// Why, in words for the run log (the site's own message when the site refused it).
    pub reason: String,
}

/// What [`upload_artifacts`] did: every pattern and match ends up in one of the two lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArtifactReport {
    /// Stored by the site, in upload order (by name).
    pub uploaded: Vec<UploadedArtifact>,
    /// Refused here or by the site.
    pub refused: Vec<RefusedArtifact>,
}

impl ArtifactReport {
    /// One line per artifact for the run log, uploads first, without trailing newlines:
    /// `artifact "out/a.bin" uploaded: 70000 bytes, sha256 3f…` or
    /// `artifact "../x" refused: the pattern holds a '..' component, …`.
    pub fn lines(&self) -> Vec<String> {
        let uploaded = self.uploaded.iter().map(|a| {
            format!(
                "artifact {:?} uploaded: {} bytes, sha256 {}",
                a.name,
                a.size,
                hex(&a.sha256)
            )
        });
        let refused = self.refused.iter().map(ToString::to_string);
        uploaded.chain(refused).collect()
    }

    /// [`lines`](Self::lines) as system chunks for the run's log, one line each (cut to the
    /// log's chunk limit), ready to send down the executor's [`OutputSink`](crate::OutputSink).
    pub fn log_chunks(&self) -> Vec<OutputChunk> {
        let at = SystemTime::now();
        self.lines()
            .into_iter()
            .map(|line| {
                let mut data = line.into_bytes();
                data.truncate(MAX_CHUNK - 1);
                data.push(b'\n');
                OutputChunk {
                    stream: Stream::System,
                    at,
                    data,
                }
            })
            .collect()
    }
}

impl fmt::Display for RefusedArtifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "artifact {:?} refused: {}", self.name, self.reason)
    }
}

/// Collects the files `patterns` match under `workdir` and uploads them through
/// `job.artifacts()`. `root` is the unpacked source tree on this host (nothing outside it is
/// ever read); `workdir` is the run's working directory on this host, inside `root`, that
/// the patterns are relative to. Call it after the command exited and before
/// `Job.complete`, while the lease is held (and heartbeated: a large upload takes time).
///
/// Never fails as a whole: every problem is a [`RefusedArtifact`] in the report, whose
/// [`lines`](ArtifactReport::lines) belong in the run log.
pub async fn upload_artifacts(
    job: &job::Client,
    root: &Path,
    workdir: &Path,
    patterns: &[String],
) -> ArtifactReport {
    if patterns.is_empty() {
        return ArtifactReport::default();
    }
    let (root, workdir, owned) = (root.to_owned(), workdir.to_owned(), patterns.to_vec());
    let collected = tokio::task::spawn_blocking(move || collect(&root, &workdir, &owned)).await;
    let (candidates, mut report) = match collected {
        Ok(collected) => collected,
        Err(e) => {
            return refuse_all(patterns, format!("collecting artifacts failed: {e}"));
        }
    };
    if candidates.is_empty() {
        return report;
    }
    let sink = match job.artifacts_request().send().promise.await {
        Ok(response) => match response.get().and_then(|r| r.get_sink()) {
            Ok(sink) => sink,
            Err(e) => {
                report.refused.extend(refused_candidates(
                    &candidates,
                    &format!("malformed reply from the site: {e}"),
                ));
                return report;
            }
        },
        Err(e) => {
            let why = format!("the site takes no artifacts: {}", site_said(&e));
            report.refused.extend(refused_candidates(&candidates, &why));
            return report;
        }
    };
    for candidate in candidates {
        match upload_one(&sink, &candidate).await {
            Ok(sha256) => report.uploaded.push(UploadedArtifact {
                name: candidate.name,
                size: candidate.size,
                sha256,
            }),
            Err(reason) => report.refused.push(RefusedArtifact {
                name: candidate.name,
                reason,
            }),
        }
    }
    report
}

/// [`upload_artifacts`] for an executed run: the source tree is `exec.source_dir`, and the
/// working directory is where the executor ran the command (`exec.workdir` relative to the
/// source tree, or, for a container, an absolute path under `exec.mountpoint`). A workdir
/// outside the source tree refuses every pattern, with the reason.
pub async fn upload_run_artifacts(
    job: &job::Client,
    exec: &ExecSpec,
    patterns: &[String],
) -> ArtifactReport {
    if patterns.is_empty() {
        return ArtifactReport::default();
    }
    match host_workdir(exec) {
        Ok(workdir) => upload_artifacts(job, &exec.source_dir, &workdir, patterns).await,
        Err(why) => refuse_all(patterns, why),
    }
}

/// Where on this host the command of `exec` ran: `source_dir` joined with the workdir,
/// which is relative to the source, or absolute inside the container's `mountpoint`.
pub fn host_workdir(exec: &ExecSpec) -> Result<PathBuf, String> {
    let workdir = exec.workdir.as_str();
    let relative = if workdir.starts_with('/') {
        let mountpoint = exec.mountpoint.trim_end_matches('/');
        workdir
            .strip_prefix(mountpoint)
            .filter(|rest| !mountpoint.is_empty() && (rest.is_empty() || rest.starts_with('/')))
            .ok_or_else(|| {
                format!(
                    "the working directory {workdir:?} is not inside the source mounted at \
                     {:?}, so there is nothing to collect from",
                    exec.mountpoint
                )
            })?
    } else {
        workdir
    };
    let mut dir = exec.source_dir.clone();
    for component in relative.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "the working directory {workdir:?} leaves the source tree"
                ));
            }
            c => dir.push(c),
        }
    }
    Ok(dir)
}

/// Streams one file: `put`, then exactly `size` bytes, then `finish` with their SHA-256.
async fn upload_one(sink: &asset_sink::Client, candidate: &Candidate) -> Result<[u8; 32], String> {
    use tokio::io::AsyncReadExt;
    let mut put = sink.put_request();
    put.get().set_name(&candidate.name);
    put.get().set_size(candidate.size);
    let refused = |e: capnp::Error| {
        // The site names the artifact; the report line does too.
        let said = site_said(&e);
        let prefix = format!("artifact {:?} refused: ", candidate.name);
        said.strip_prefix(&prefix)
            .map_or(said.clone(), str::to_owned)
    };
    let response = put.send().promise.await.map_err(refused)?;
    let bytes = response
        .get()
        .and_then(|r| r.get_sink())
        .map_err(|e| format!("malformed reply from the site: {e}"))?;
    let read_error = |e: std::io::Error| format!("cannot read {}: {e}", candidate.path.display());
    let mut file = tokio::fs::File::open(&candidate.path)
        .await
        .map_err(read_error)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut sent: u64 = 0;
    while sent < candidate.size {
        let want = usize::try_from(candidate.size - sent).map_or(CHUNK, |left| left.min(CHUNK));
        let n = file.read(&mut buf[..want]).await.map_err(read_error)?;
        if n == 0 {
            return Err(format!(
                "the file shrank from {} to {sent} bytes while it was uploaded",
                candidate.size
            ));
        }
        hasher.update(&buf[..n]);
        let mut write = bytes.write_request();
        write.get().set_chunk(&buf[..n]);
        write.send().await.map_err(refused)?;
        sent += n as u64;
    }
    if file.read(&mut buf[..1]).await.map_err(read_error)? != 0 {
        return Err(format!(
            "the file grew beyond {} bytes while it was uploaded",
            candidate.size
        ));
    }
    let sha256: [u8; 32] = hasher.finalize().into();
    let mut finish = bytes.finish_request();
    finish.get().set_sha256(&sha256);
    finish.send().promise.await.map_err(refused)?;
    Ok(sha256)
}

/// The message of an RPC error without capnp's wrapping ("Failed: remote exception: ").
fn site_said(e: &capnp::Error) -> String {
    match e.kind {
        capnp::ErrorKind::Failed => e
            .extra
            .strip_prefix("remote exception: ")
            .unwrap_or(&e.extra)
            .to_owned(),
        _ => e.to_string(),
    }
}

fn refuse_all(patterns: &[String], reason: String) -> ArtifactReport {
    ArtifactReport {
        uploaded: Vec::new(),
        refused: patterns
            .iter()
            .map(|p| RefusedArtifact {
                name: p.clone(),
                reason: reason.clone(),
            })
            .collect(),
    }
}

fn refused_candidates(candidates: &[Candidate], reason: &str) -> Vec<RefusedArtifact> {
    candidates
        .iter()
        .map(|c| RefusedArtifact {
            name: c.name.clone(),
            reason: reason.to_owned(),
        })
        .collect()
}

/// A file to upload.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    /// Relative to the workdir, `/`-separated, as the site will store it.
    name: String,
    /// Canonical path, inside the canonical root: what is read.
    path: PathBuf,
    /// Its size when collected; exactly this many bytes are sent.
    size: u64,
}

/// One component of a pattern.
#[derive(Debug)]
enum Part {
    /// A plain name.
    Literal(String),
    /// A glob for one name.
    Glob(glob::Pattern),
    /// `**`: this directory and every directory below it.
    AnyDirs,
}

/// How globs match a name: case matters, `*` never matches a leading `.`.
const MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

/// Splits a pattern into components, refusing anything that could leave the workdir.
fn parse_pattern(pattern: &str) -> Result<Vec<Part>, String> {
    if pattern.is_empty() {
        return Err("the pattern is empty".into());
    }
    if pattern.starts_with('/') {
        return Err(
            "the pattern is an absolute path; artifacts are relative to the run's working \
             directory"
                .into(),
        );
    }
    if pattern.contains('\0') {
        return Err("the pattern holds a NUL byte".into());
    }
    if pattern.contains('\\') {
        return Err("the pattern holds a backslash; directories are separated by '/'".into());
    }
    let mut parts = Vec::new();
    for component in pattern.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                return Err(
                    "the pattern holds a '..' component; artifacts must stay inside the run's \
                     working directory"
                        .into(),
                );
            }
            "**" => parts.push(Part::AnyDirs),
            c if c.contains(['*', '?', '[']) => {
                let glob = glob::Pattern::new(c)
                    .map_err(|e| format!("the pattern is not a valid glob: {e}"))?;
                parts.push(Part::Glob(glob));
            }
            c => parts.push(Part::Literal(c.to_owned())),
        }
    }
    Ok(parts)
}

/// The checks the site makes on a name, made first so the reason names the rule.
fn check_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "the name is {} bytes long; the site accepts at most {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("the name holds a control character".into());
    }
    if name.contains('\\') {
        return Err("the name holds a backslash".into());
    }
    if let Some(long) = name.split('/').find(|c| c.len() > MAX_COMPONENT_BYTES) {
        return Err(format!(
            "a component of the name is {} bytes long; the site accepts at most \
             {MAX_COMPONENT_BYTES}",
            long.len()
        ));
    }
    Ok(())
}

/// Walks the workdir for every pattern; returns the files to upload (each name once, in
/// name order, at most [`MAX_ARTIFACTS`]) and a report holding what was refused.
fn collect(root: &Path, workdir: &Path, patterns: &[String]) -> (Vec<Candidate>, ArtifactReport) {
    let root = match std::fs::canonicalize(root) {
        Ok(root) => root,
        Err(e) => {
            let why = format!("cannot resolve the source tree {}: {e}", root.display());
            return (Vec::new(), refuse_all(patterns, why));
        }
    };
    let workdir = match std::fs::canonicalize(workdir) {
        Ok(dir) if dir.starts_with(&root) => dir,
        Ok(dir) => {
            let why = format!(
                "the working directory {} lies outside the source tree",
                dir.display()
            );
            return (Vec::new(), refuse_all(patterns, why));
        }
        Err(e) => {
            let why = format!(
                "cannot resolve the working directory {}: {e}",
                workdir.display()
            );
            return (Vec::new(), refuse_all(patterns, why));
        }
    };
    let mut refused = Refusals::default();
    let mut found: BTreeMap<String, Candidate> = BTreeMap::new();
    let mut visited = 0;
    // Said first, so the refusals of the patterns looked at cannot crowd it out.
    if let Some(first) = patterns.get(MAX_PATTERNS) {
        refused.push(
            first.clone(),
            format!(
                "this and {} more patterns were not looked at: a run lists at most \
                 {MAX_PATTERNS}",
                patterns.len() - MAX_PATTERNS - 1
            ),
        );
    }
    for pattern in patterns.iter().take(MAX_PATTERNS) {
        let parts = match parse_pattern(pattern) {
            Ok(parts) => parts,
            Err(reason) => {
                refused.push(pattern.clone(), reason);
                continue;
            }
        };
        let mut walk = Walk {
            root: &root,
            visited: &mut visited,
            found: &mut found,
            refused: &mut refused,
            matched: 0,
        };
        let complete = walk.pattern(&workdir, &parts);
        let matched = walk.matched;
        if !complete {
            refused.push(
                pattern.clone(),
                format!(
                    "the run's patterns visit more than {MAX_VISITED} directory entries; \
                     narrow them"
                ),
            );
        } else if matched == 0 {
            refused.push(pattern.clone(), "nothing matches this pattern".into());
        }
    }
    let mut candidates: Vec<Candidate> = found.into_values().collect();
    if candidates.len() > MAX_ARTIFACTS {
        for extra in candidates.split_off(MAX_ARTIFACTS) {
            refused.push(
                extra.name,
                format!("a run uploads at most {MAX_ARTIFACTS} artifacts"),
            );
        }
    }
    let report = ArtifactReport {
        uploaded: Vec::new(),
        refused: refused.into_list(),
    };
    (candidates, report)
}

/// Refusals of one run, at most [`MAX_REFUSALS`] listed.
#[derive(Default)]
struct Refusals {
    list: Vec<RefusedArtifact>,
    more: usize,
}

impl Refusals {
    fn push(&mut self, name: String, reason: String) {
        if self.list.len() < MAX_REFUSALS {
            self.list.push(RefusedArtifact { name, reason });
        } else {
            self.more += 1;
        }
    }

    fn into_list(mut self) -> Vec<RefusedArtifact> {
        if self.more > 0 {
            self.list.push(RefusedArtifact {
                name: "…".into(),
                reason: format!("{} more refused, not listed", self.more),
            });
        }
        self.list
    }
}

/// One pattern's walk.
struct Walk<'a> {
    /// The canonical source tree: nothing outside it is taken.
    root: &'a Path,
    /// Directory entries every pattern so far has seen, against [`MAX_VISITED`].
    visited: &'a mut usize,
    /// Files to upload, by name (shared by every pattern, so each name is taken once).
    found: &'a mut BTreeMap<String, Candidate>,
    /// Matches refused.
    refused: &'a mut Refusals,
    /// Matches of this pattern, taken or refused.
    matched: usize,
}

impl Walk<'_> {
    /// Expands `parts` from the workdir; `false` if the walk hit [`MAX_VISITED`].
    fn pattern(&mut self, workdir: &Path, parts: &[Part]) -> bool {
        // Each entry: the name so far (components) and the path on disk.
        let mut frontier: Vec<(Vec<String>, PathBuf)> = vec![(Vec::new(), workdir.to_owned())];
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let mut next = Vec::new();
            // A pattern walks through real directories only: through a symlink it would list
            // whatever the job pointed it at, the runner's host included, in the run's log.
            let leads_on = |path: &Path| {
                let meta = std::fs::symlink_metadata(path);
                if last {
                    meta.is_ok()
                } else {
                    meta.is_ok_and(|m| m.is_dir())
                }
            };
            for (name, path) in frontier {
                match part {
                    Part::Literal(literal) => {
                        let child = path.join(literal);
                        if leads_on(&child) {
                            next.push((extend(&name, literal), child));
                        }
                    }
                    Part::Glob(glob) => {
                        let Some(entries) = self.list(&path) else {
                            return false;
                        };
                        for (child_name, child) in entries {
                            if glob.matches_with(&child_name, MATCH) && leads_on(&child) {
                                next.push((extend(&name, &child_name), child));
                            }
                        }
                    }
                    Part::AnyDirs if last => next.push((name, path)),
                    Part::AnyDirs => {
                        // This directory and every real (not symlinked) directory below it.
                        let mut stack = vec![(name, path)];
                        while let Some((dir_name, dir)) = stack.pop() {
                            let Some(entries) = self.list(&dir) else {
                                return false;
                            };
                            for (child_name, child) in entries {
                                if std::fs::symlink_metadata(&child).is_ok_and(|m| m.is_dir()) {
                                    stack.push((extend(&dir_name, &child_name), child));
                                }
                            }
                            next.push((dir_name, dir));
                        }
                    }
                }
            }
            next.sort();
            next.dedup();
            frontier = next;
        }
        for (name, path) in frontier {
            self.matched += 1;
            if !self.take(name.join("/"), &path) {
                return false;
            }
        }
        true
    }

    /// The UTF-8 named entries of `dir`, sorted (others cannot match a pattern and are
    /// skipped); `None` past the visit budget. A directory that cannot be read lists empty.
    fn list(&mut self, dir: &Path) -> Option<Vec<(String, PathBuf)>> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Some(Vec::new());
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            *self.visited += 1;
            if *self.visited > MAX_VISITED {
                return None;
            }
            if let Ok(name) = entry.file_name().into_string() {
                out.push((name, entry.path()));
            }
        }
        out.sort();
        Some(out)
    }

    /// Takes a match: a file (also through a symlink that stays inside the root), or a
    /// directory's files recursively. `false` past the visit budget.
    fn take(&mut self, name: String, path: &Path) -> bool {
        let mut pending = vec![(name, path.to_owned())];
        while let Some((name, path)) = pending.pop() {
            let shown = if name.is_empty() {
                ".".to_owned()
            } else {
                name.clone()
            };
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                self.refuse(
                    shown,
                    "it disappeared while artifacts were collected".into(),
                );
                continue;
            };
            if meta.is_dir() {
                let Some(entries) = self.list_all(&path, &name) else {
                    return false;
                };
                // Reversed, so the stack pops them in name order.
                pending.extend(entries.into_iter().rev());
                continue;
            }
            let canonical = match std::fs::canonicalize(&path) {
                Ok(canonical) => canonical,
                Err(e) if meta.file_type().is_symlink() => {
                    self.refuse(shown, format!("it is a dangling symlink ({e})"));
                    continue;
                }
                Err(e) => {
                    self.refuse(shown, format!("cannot resolve it: {e}"));
                    continue;
                }
            };
            if !canonical.starts_with(self.root) {
                // Where it leads is not said: the runner's host is not the job's to map.
                let how = if meta.file_type().is_symlink() {
                    "it is a symlink to a path"
                } else {
                    "it resolves to a path"
                };
                self.refuse(
                    shown,
                    format!(
                        "{how} outside the run's source tree; only files inside it are \
                         uploaded"
                    ),
                );
                continue;
            }
            let target = match std::fs::metadata(&canonical) {
                Ok(target) => target,
                Err(e) => {
                    self.refuse(shown, format!("cannot read it: {e}"));
                    continue;
                }
            };
            if target.is_dir() {
                self.refuse(
                    shown,
                    "it is a symlink to a directory; symlinked directories are not followed".into(),
                );
                continue;
            }
            if !target.is_file() {
                self.refuse(
                    shown,
                    "it is not a regular file (a socket, FIFO or device)".into(),
                );
                continue;
            }
            if let Err(why) = check_name(&name) {
                self.refuse(shown, why);
                continue;
            }
            self.found.entry(name.clone()).or_insert(Candidate {
                name,
                path: canonical,
                size: target.len(),
            });
        }
        true
    }

    /// Every entry of directory `dir` (named `name`) as `(name, path)`, sorted; entries whose
    /// names are not UTF-8 are refused. `None` past the visit budget.
    fn list_all(&mut self, dir: &Path, name: &str) -> Option<Vec<(String, PathBuf)>> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            self.refuse(
                if name.is_empty() { "." } else { name }.to_owned(),
                "cannot read the directory".into(),
            );
            return Some(Vec::new());
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            *self.visited += 1;
            if *self.visited > MAX_VISITED {
                return None;
            }
            match entry.file_name().into_string() {
                Ok(child) => out.push((extend_name(name, &child), entry.path())),
                Err(raw) => self.refuse(
                    extend_name(name, &raw.to_string_lossy()),
                    "its name is not UTF-8".into(),
                ),
            }
        }
        out.sort();
        Some(out)
    }

    fn refuse(&mut self, name: String, reason: String) {
        self.refused.push(name, reason);
    }
}

fn extend(name: &[String], component: &str) -> Vec<String> {
    let mut name = name.to_vec();
    name.push(component.to_owned());
    name
}

fn extend_name(name: &str, component: &str) -> String {
    if name.is_empty() {
        component.to_owned()
    } else {
        format!("{name}/{component}")
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::symlink;

    use super::*;

    /// A source tree `root/src` with the workdir `root/src/build`, and a secret beside it.
    struct Tree {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        workdir: PathBuf,
        outside: PathBuf,
    }

    fn tree(files: &[(&str, &str)]) -> Tree {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("src");
        let workdir = root.join("build");
        std::fs::create_dir_all(&workdir).unwrap();
        for (path, text) in files {
            let path = workdir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let outside = tmp.path().join("secret.txt");
        std::fs::write(&outside, "secret").unwrap();
        Tree {
            _tmp: tmp,
            root,
            workdir,
            outside,
        }
    }

    fn run(tree: &Tree, patterns: &[&str]) -> (Vec<String>, Vec<(String, String)>) {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        let (found, report) = collect(&tree.root, &tree.workdir, &patterns);
        let names = found.iter().map(|c| c.name.clone()).collect();
        let refused = report
            .refused
            .into_iter()
            .map(|r| (r.name, r.reason))
            .collect();
        (names, refused)
    }

    #[test]
    fn globs_match_one_component_at_a_time() {
        let t = tree(&[
            ("out/a.bin", "a"),
            ("out/b.bin", "b"),
            ("out/c.txt", "c"),
            ("out/.hidden.bin", "h"),
            ("out/sub/d.bin", "d"),
            ("report.txt", "r"),
        ]);
        let (names, refused) = run(&t, &["out/*.bin", "report.txt", "./out/?.txt"]);
        assert_eq!(names, ["out/a.bin", "out/b.bin", "out/c.txt", "report.txt"]);
        assert!(refused.is_empty(), "{refused:?}");

        let (names, _) = run(&t, &["**/*.bin"]);
        assert_eq!(names, ["out/a.bin", "out/b.bin", "out/sub/d.bin"]);
    }

    #[test]
    fn a_directory_is_taken_whole_and_names_are_taken_once() {
        let t = tree(&[("dist/app", "x"), ("dist/lib/x.so", "y"), ("other", "z")]);
        let (names, refused) = run(&t, &["dist", "dist/app", "dist/**"]);
        assert_eq!(names, ["dist/app", "dist/lib/x.so"]);
        assert!(refused.is_empty(), "{refused:?}");
    }

    #[test]
    fn patterns_that_leave_the_workdir_are_refused_with_a_reason() {
        let t = tree(&[("a.txt", "a")]);
        let (names, refused) = run(
            &t,
            &[
                "../outside",
                "out/../../x",
                "/etc/passwd",
                "",
                "a\\b",
                "[unclosed",
                "missing/*.txt",
            ],
        );
        assert!(names.is_empty());
        let reason = |name: &str| {
            refused
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, r)| r.as_str())
                .unwrap_or_else(|| panic!("{name} not refused: {refused:?}"))
        };
        assert!(reason("../outside").contains("'..' component"));
        assert!(reason("out/../../x").contains("'..' component"));
        assert!(reason("/etc/passwd").contains("absolute path"));
        assert!(reason("").contains("empty"));
        assert!(reason("a\\b").contains("backslash"));
        assert!(reason("[unclosed").contains("not a valid glob"));
        assert_eq!(reason("missing/*.txt"), "nothing matches this pattern");
    }

    #[test]
    fn symlinks_out_of_the_source_tree_are_refused() {
        let t = tree(&[("out/ok.bin", "ok"), ("inside.txt", "in")]);
        symlink(&t.outside, t.workdir.join("out/leak.bin")).unwrap();
        symlink("/etc", t.workdir.join("etc")).unwrap();
        symlink(
            t.workdir.join("inside.txt"),
            t.workdir.join("out/alias.bin"),
        )
        .unwrap();
        symlink(
            t.workdir.join("missing"),
            t.workdir.join("out/dangling.bin"),
        )
        .unwrap();
        // A symlink to a directory above the source tree, then a file through it.
        symlink(t.root.parent().unwrap(), t.workdir.join("up")).unwrap();

        let (names, refused) = run(&t, &["out/*.bin", "etc/passwd", "up/secret.txt", "etc"]);
        assert_eq!(names, ["out/alias.bin", "out/ok.bin"]);
        let reason = |name: &str| {
            refused
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, r)| r.clone())
                .unwrap_or_else(|| panic!("{name} not refused: {refused:?}"))
        };
        assert!(
            reason("out/leak.bin").contains("symlink to")
                && reason("out/leak.bin").contains("outside the run's source tree"),
            "{refused:?}"
        );
        assert!(reason("out/dangling.bin").contains("dangling symlink"));
        // Through a symlinked directory a pattern finds nothing: it walks real ones only.
        assert_eq!(reason("etc/passwd"), "nothing matches this pattern");
        assert_eq!(reason("up/secret.txt"), "nothing matches this pattern");
        assert!(reason("etc").contains("outside the run's source tree"));
        // And no refusal says where a symlink leads on the runner's host.
        for (_, why) in &refused {
            assert!(!why.contains("/etc") && !why.contains("secret"), "{why}");
        }
        // The alias is read through its canonical path, inside the tree.
        let (found, _) = collect(&t.root, &t.workdir, &["out/alias.bin".to_owned()]);
        assert_eq!(
            found[0].path,
            std::fs::canonicalize(t.workdir.join("inside.txt")).unwrap()
        );
    }

    /// A job points a symlink at a directory outside its tree (its runner's home, the work
    /// root holding other runs) and lists artifact patterns through it: the runner, outside
    /// the sandbox, must not walk there and print what it finds into the run's log.
    #[test]
    fn a_pattern_through_a_symlinked_directory_lists_nothing_outside() {
        let t = tree(&[("a.txt", "a")]);
        symlink(t.root.parent().unwrap(), t.workdir.join("up")).unwrap();
        let patterns = ["up/*", "up/**", "*/secret.txt", "**"];
        let (names, refused) = run(&t, &patterns);
        assert_eq!(names, ["a.txt"]);
        for (name, why) in &refused {
            // Patterns, and the job's own `up`; nothing found past it.
            assert!(
                (patterns.contains(&name.as_str()) || !name.starts_with("up/"))
                    && !why.contains("secret"),
                "{name}: {why}"
            );
        }
    }

    /// A job decides how many matches its patterns make (dangling symlinks cost it nothing)
    /// and how many patterns it lists: the run log lists a bounded number of refusals, and
    /// the walk visits a bounded number of entries for the whole run.
    #[test]
    fn refusals_and_patterns_are_bounded() {
        let t = tree(&[]);
        let dir = t.workdir.join("d");
        std::fs::create_dir(&dir).unwrap();
        for i in 0..300 {
            symlink(format!("/nowhere/{i}"), dir.join(format!("l{i}"))).unwrap();
        }
        let patterns: Vec<String> = (0..50).map(|i| format!("d/[l]*{i}")).collect();
        let (names, refused) = run(&t, &patterns.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(names.is_empty());
        assert_eq!(refused.len(), MAX_REFUSALS + 1, "{}", refused.len());
        let (last, why) = refused.last().unwrap();
        assert_eq!(last, "…");
        assert!(why.ends_with("more refused, not listed"), "{why}");

        let many: Vec<String> = (0..MAX_PATTERNS + 10).map(|i| format!("p{i}")).collect();
        let (_, refused) = run(&t, &many.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            refused
                .iter()
                .any(|(name, why)| name == &format!("p{MAX_PATTERNS}")
                    && why.contains("9 more patterns were not looked at")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_workdir_outside_the_root_refuses_everything() {
        let t = tree(&[("a.txt", "a")]);
        let other = tempfile::tempdir().unwrap();
        let (found, report) = collect(&t.root, other.path(), &["a.txt".to_owned()]);
        assert!(found.is_empty());
        assert!(
            report.refused[0]
                .reason
                .contains("lies outside the source tree"),
            "{report:?}"
        );
    }

    #[test]
    fn report_lines_say_what_happened() {
        let report = ArtifactReport {
            uploaded: vec![UploadedArtifact {
                name: "out/a.bin".into(),
                size: 3,
                sha256: [0xab; 32],
            }],
            refused: vec![RefusedArtifact {
                name: "../x".into(),
                reason: "the pattern holds a '..' component".into(),
            }],
        };
        assert_eq!(
            report.lines(),
            [
                format!(
                    "artifact \"out/a.bin\" uploaded: 3 bytes, sha256 {}",
                    "ab".repeat(32)
                ),
                "artifact \"../x\" refused: the pattern holds a '..' component".to_owned(),
            ]
        );
    }

    #[test]
    fn the_workdir_is_found_on_this_host_for_either_executor() {
        let exec = |workdir: &str, mountpoint: &str| ExecSpec {
            label: "r-1".into(),
            command: Vec::new(),
            source_dir: PathBuf::from("/w/r-1-1/src"),
            workdir: workdir.into(),
            mountpoint: mountpoint.into(),
            image: String::new(),
            pull: None,
            registry_credentials: false,
            env: BTreeMap::new(),
            timeout: std::time::Duration::from_secs(1),
            privileged: false,
            network: false,
            cpu: None,
            memory: None,
            grace: std::time::Duration::from_secs(1),
            secret_env: Default::default(),
            secrets_dir: None,
        };
        let at = |w: &str, m: &str| host_workdir(&exec(w, m));
        assert_eq!(at(".", "/src"), Ok(PathBuf::from("/w/r-1-1/src")));
        assert_eq!(
            at("./build/x", "/src"),
            Ok(PathBuf::from("/w/r-1-1/src/build/x"))
        );
        assert_eq!(
            at("/src/build", "/src/"),
            Ok(PathBuf::from("/w/r-1-1/src/build"))
        );
        assert_eq!(at("/src", "/src"), Ok(PathBuf::from("/w/r-1-1/src")));
        assert!(
            at("/srcx", "/src")
                .unwrap_err()
                .contains("not inside the source")
        );
        assert!(at("/tmp", "/src").is_err());
        assert!(
            at("../x", "/src")
                .unwrap_err()
                .contains("leaves the source tree")
        );
    }

    #[test]
    fn report_lines_become_system_log_chunks() {
        let report = ArtifactReport {
            uploaded: Vec::new(),
            refused: vec![RefusedArtifact {
                name: "x".into(),
                reason: "y".repeat(MAX_CHUNK * 2),
            }],
        };
        let chunks = report.log_chunks();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].stream, Stream::System);
        assert_eq!(chunks[0].data.len(), MAX_CHUNK);
        assert!(chunks[0].data.ends_with(b"\n"));
    }

    #[test]
    fn names_the_site_would_refuse_are_refused_here_with_the_rule() {
        assert!(
            check_name(&"a".repeat(256))
                .unwrap_err()
                .contains("at most 255")
        );
        assert!(
            check_name("a\nb")
                .unwrap_err()
                .contains("control character")
        );
        assert!(
            check_name(&["abc"; 300].join("/"))
                .unwrap_err()
                .contains("at most 1024")
        );
        assert_eq!(check_name("out/a.bin"), Ok(()));
    }
}
