//! The two user-written formats carried over from tinyCI: the repository's `tinyci.yml`
//! ([`RepoConfig`]) and each task directory's `task.yml` ([`TaskFile`]).
//!
//! Parsing is strict, as tinyCI's `yaml.UnmarshalStrict` was: unknown fields and duplicate
//! keys are errors, and every error names the file (as the caller gave it), the field path
//! and the line and column ([`ConfigError`]). Input over [`MAX_CONFIG_BYTES`] is refused
//! before any parsing. The YAML goes through private `Raw*` types that mirror the files
//! field for field; the public types are the validated result, which is also what the store
//! persists.
//!
//! Differences from tinyCI, on purpose:
//! - timeouts are whole seconds: a bare number is seconds (tinyCI read it as nanoseconds, a
//!   Go `time.Duration`), and Go duration strings (`90s`, `1h30m`, `50ms`) are still read,
//!   rounded up to a whole second; `0` is refused rather than meaning "no timeout";
//! - `mountpoint` and `workdir` must be absolute, directories must be relative without `..`,
//!   `env` entries must be `KEY=VALUE` with each key once per list, and an empty string is
//!   refused where a value is expected;
//! - `image` may be left unset everywhere: only the Docker executor needs one, and it says so;
//! - `artifacts` (task and run level) is a tinyci extension.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::{MessageFormatter, Spanned};

use crate::ids::QueueName;
use crate::paths;

/// The largest `tinyci.yml` or `task.yml` accepted, in bytes; larger files are refused
/// before parsing.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// The repository-level file, at the repository root.
pub const REPO_CONFIG_FILE: &str = "tinyci.yml";

/// The per-directory file; a directory holding one is a task.
pub const TASK_FILE: &str = "task.yml";

/// The timeout of a run that neither it, its task nor the repository sets: one hour.
/// (tinyCI ran such a run with no timeout at all.)
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;

/// A place in a file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// 1-based line.
    pub line: u64,
    /// 1-based column, in characters.
    pub column: u64,
}

impl Position {
    fn from_location(loc: &serde_saphyr::Location) -> Option<Position> {
        // Line 0 is the parser's "unknown".
        (loc.line() > 0).then(|| Position {
            line: loc.line(),
            column: loc.column().max(1),
        })
    }
}

/// A `tinyci.yml` or `task.yml` that cannot be used. Displays as
/// `file:line:column: field.path: what is wrong`, leaving out what is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {}{kind}", at_suffix(.at), field_prefix(.field))]
pub struct ConfigError {
    /// The file, as the caller named it (for example `build/task.yml`).
    pub file: String,
    /// Where in the file, when the problem has a place.
    pub at: Option<Position>,
    /// The field path (`runs.build.command`, `env[2]`), empty for the whole file.
    pub field: String,
    /// What is wrong.
    pub kind: ConfigErrorKind,
}

fn at_suffix(at: &Option<Position>) -> String {
    at.map(|p| format!(":{}:{}", p.line, p.column))
        .unwrap_or_default()
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// What is wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigErrorKind {
    /// Over [`MAX_CONFIG_BYTES`]; refused unread.
    #[error("file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The file's size.
        size: usize,
        /// [`MAX_CONFIG_BYTES`].
        limit: usize,
    },
    /// Not UTF-8 text.
    #[error("file is not valid UTF-8")]
    NotUtf8,
    /// Not YAML, or YAML not of the file's shape: a syntax error, an unknown or duplicate
    /// field, a value of the wrong type or form. The text is the parser's.
    #[error("{0}")]
    Yaml(String),
    /// A run whose `command` is an empty list.
    #[error("a run needs a command: a non-empty list of program and arguments")]
    EmptyCommand,
    /// A run asks for a privileged container that the repository does not allow.
    #[error(
        "run `{run}` asks for a privileged container, but tinyci.yml does not set allow_privileged"
    )]
    PrivilegedNotAllowed {
        /// The run's name.
        run: String,
    },
    /// A task with runs has nowhere to mount the repository.
    #[error("a task with runs needs a mountpoint")]
    MissingMountpoint,
    /// A task with neither runs nor dependencies does nothing (tinyCI refused it too).
    #[error("a task needs runs, dependencies or both")]
    EmptyTask,
}

/// The repository-level `tinyci.yml`: defaults for every task and run, overrides that win
/// over them, and repository-wide rules. Every field is optional; an empty file is all
/// defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// `queue`: the queue of runs that name none (below task and run settings), or of every
    /// run when `override_queue` is set. Unset means `default`.
    pub queue: Option<QueueName>,
    /// `override_queue`: put every run on `queue` (or `default`), whatever tasks and runs say.
    pub override_queue: bool,
    /// `global_timeout`: the timeout of runs whose run and task set none, or of every run
    /// when `override_timeout` is set. A fallback, not a cap (as in tinyCI).
    pub global_timeout_secs: Option<u64>,
    /// `override_timeout`: give every run `global_timeout`. Without a `global_timeout` it has
    /// no effect (as in tinyCI).
    pub override_timeout: bool,
    /// `workdir`: the working directory of tasks that set none (before the mountpoint).
    pub workdir: Option<String>,
    /// `ignore_directories`: task directories under these are never selected; changes under
    /// them still count for the nearest task above.
    pub ignore_directories: Vec<String>,
    /// `default_image`: the image of runs whose run and task name none.
    pub default_image: Option<String>,
    /// `default_resources`: resource hints of runs whose run and task give none.
    pub default_resources: Resources,
    /// `metadata`: merged under task and run metadata.
    pub metadata: BTreeMap<String, String>,
    /// `override_metadata`: repository metadata wins over task and run metadata.
    pub override_metadata: bool,
    /// `merge_options`: whether the head is merged with the default branch before running.
    pub merge_options: MergeOptions,
    /// `allow_privileged`: runs may ask for privileged containers. Off by default.
    pub allow_privileged: bool,
}

/// `merge_options` in `tinyci.yml`: by default a runner merges the default branch into the
/// head before testing; these turn that off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeOptions {
    /// `do_not_merge`: never merge.
    pub do_not_merge: bool,
    /// `ignore_refs`: head refs (full names as tinyCI took them, e.g. `heads/release`) never
    /// merged; compared exactly.
    pub ignore_refs: Vec<String>,
}

impl MergeOptions {
    /// Whether a runner should merge the default branch into `head_ref` before running.
    pub fn should_merge(&self, head_ref: &str) -> bool {
        !self.do_not_merge && !self.ignore_refs.iter().any(|r| r == head_ref)
    }
}

/// Resource hints (`default_resources`, `resources`), passed to the runner uninterpreted, as
/// tinyCI did. The first non-empty one of run, task, repository applies, whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// `cpu`.
    pub cpu: Option<String>,
    /// `memory`.
    pub memory: Option<String>,
    /// `disk`.
    pub disk: Option<String>,
    /// `iops`.
    pub iops: Option<String>,
}

impl Resources {
    /// Whether no hint is given.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.disk.is_none() && self.iops.is_none()
    }
}

/// One directory's `task.yml`: what to mount where, and the runs (each one queue item) with
/// their defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFile {
    /// `mountpoint`: where the checkout is mounted in the container; required when there
    /// are runs.
    pub mountpoint: Option<String>,
    /// `env` (`KEY=VALUE` entries): environment of every run, under the run's own.
    pub env: BTreeMap<String, String>,
    /// `dependencies`: other task directories (relative to the repository root) selected
    /// whenever this one is.
    pub dependencies: Vec<String>,
    /// `workdir`: the runs' working directory; unset means the repository's, then the
    /// mountpoint.
    pub workdir: Option<String>,
    /// `default_image`: image of runs that name none.
    pub default_image: Option<String>,
    /// `default_queue`: queue of runs that name none.
    pub default_queue: Option<QueueName>,
    /// `default_timeout`: timeout of runs that set none.
    pub default_timeout_secs: Option<u64>,
    /// `default_resources`: resource hints of runs that give none.
    pub default_resources: Resources,
    /// `metadata`: merged over the repository's and under each run's.
    pub metadata: BTreeMap<String, String>,
    /// `artifacts` (tinyci extension): paths or globs, relative to the working directory,
    /// collected from every run of the task.
    pub artifacts: Vec<String>,
    /// `runs`: run name → run.
    pub runs: BTreeMap<String, RunSpec>,
    /// `labels` (tinyci extension): runner labels every run of the task needs, unless a run
    /// lists its own.
    pub labels: Option<Vec<String>>,
}

/// One entry of `runs` in a `task.yml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// `command`: program and arguments (argv, no shell); never empty.
    pub command: Vec<String>,
    /// `image`: overrides the task's and repository's default image.
    pub image: Option<String>,
    /// `queue`: overrides the task's and repository's default queue (not `override_queue`).
    pub queue: Option<QueueName>,
    /// `timeout`: overrides the task's default and `global_timeout` (not `override_timeout`).
    pub timeout_secs: Option<u64>,
    /// `env` (`KEY=VALUE` entries): wins over the task's env.
    pub env: BTreeMap<String, String>,
    /// `privileged`: a privileged container; refused unless `allow_privileged`.
    pub privileged: bool,
    /// `metadata`: wins over task and repository metadata unless `override_metadata`.
    pub metadata: BTreeMap<String, String>,
    /// `resources`: resource hints for this run.
    pub resources: Resources,
    /// `artifacts` (tinyci extension): added to the task's.
    pub artifacts: Vec<String>,
    /// `labels` (tinyci extension): runner labels this run needs; replaces the task's list.
    pub labels: Option<Vec<String>>,
}

impl RepoConfig {
    /// Parses a `tinyci.yml`. `file` names it in errors. An empty file is all defaults.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<RepoConfig, ConfigError> {
        let raw: RawRepoConfig = parse_yaml(file, bytes)?.unwrap_or_default();
        Ok(RepoConfig {
            queue: raw.queue,
            override_queue: raw.override_queue.unwrap_or(false),
            global_timeout_secs: raw.global_timeout.map(|t| t.0),
            override_timeout: raw.override_timeout.unwrap_or(false),
            workdir: raw.workdir.map(|p| p.0),
            ignore_directories: dedup(
                raw.ignore_directories
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| d.0),
            ),
            default_image: raw.default_image.map(|s| s.0),
            default_resources: raw.default_resources.unwrap_or_default(),
            metadata: raw.metadata.unwrap_or_default(),
            override_metadata: raw.override_metadata.unwrap_or(false),
            merge_options: raw.merge_options.unwrap_or_default(),
            allow_privileged: raw.allow_privileged.unwrap_or(false),
        })
    }
}

impl TaskFile {
    /// Parses a `task.yml`. `file` names it in errors (for example `build/task.yml`); `repo`
    /// is the repository's `tinyci.yml`, which decides whether privileged runs are allowed.
    pub fn parse(file: &str, bytes: &[u8], repo: &RepoConfig) -> Result<TaskFile, ConfigError> {
        let raw: RawTask = parse_yaml(file, bytes)?.unwrap_or_default();
        let err = |at: Option<Position>, field: String, kind| ConfigError {
            file: file.to_owned(),
            at,
            field,
            kind,
        };

        let raw_runs = raw.runs.unwrap_or_default();
        let dependencies = dedup(
            raw.dependencies
                .unwrap_or_default()
                .into_iter()
                .map(|d| d.0),
        );
        if raw_runs.is_empty() && dependencies.is_empty() {
            return Err(err(None, String::new(), ConfigErrorKind::EmptyTask));
        }
        if raw.mountpoint.is_none() && !raw_runs.is_empty() {
            // Point at the first run's command in the file.
            let at = raw_runs
                .values()
                .filter_map(|r| Position::from_location(&r.command.referenced))
                .min();
            return Err(err(
                at,
                "mountpoint".to_owned(),
                ConfigErrorKind::MissingMountpoint,
            ));
        }

        let mut runs = BTreeMap::new();
        for (name, run) in raw_runs {
            let name = name.0;
            if run.command.value.is_empty() {
                return Err(err(
                    Position::from_location(&run.command.referenced),
                    format!("runs.{name}.command"),
                    ConfigErrorKind::EmptyCommand,
                ));
            }
            let privileged = match &run.privileged {
                Some(p) if p.value && !repo.allow_privileged => {
                    return Err(err(
                        Position::from_location(&p.referenced),
                        format!("runs.{name}.privileged"),
                        ConfigErrorKind::PrivilegedNotAllowed { run: name },
                    ));
                }
                Some(p) => p.value,
                None => false,
            };
            let spec = RunSpec {
                command: run.command.value,
                image: run.image.map(|s| s.0),
                queue: run.queue,
                timeout_secs: run.timeout.map(|t| t.0),
                env: run.env.map(|e| e.0).unwrap_or_default(),
                privileged,
                metadata: run.metadata.unwrap_or_default(),
                resources: run.resources.unwrap_or_default(),
                artifacts: dedup(run.artifacts.unwrap_or_default().into_iter().map(|a| a.0)),
                labels: run.labels.map(labels),
            };
            runs.insert(name, spec);
        }

        Ok(TaskFile {
            mountpoint: raw.mountpoint.map(|p| p.0),
            env: raw.env.map(|e| e.0).unwrap_or_default(),
            dependencies,
            workdir: raw.workdir.map(|p| p.0),
            default_image: raw.default_image.map(|s| s.0),
            default_queue: raw.default_queue,
            default_timeout_secs: raw.default_timeout.map(|t| t.0),
            default_resources: raw.default_resources.unwrap_or_default(),
            metadata: raw.metadata.unwrap_or_default(),
            artifacts: dedup(raw.artifacts.unwrap_or_default().into_iter().map(|a| a.0)),
            runs,
            labels: raw.labels.map(labels),
        })
    }
}

/// Keeps the first of each value, in order.
fn dedup(items: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Parsing

/// Size check, UTF-8 check, then YAML into `T` with the field path tracked. `None` for an
/// empty document (no content, only comments, or a bare `---`, as tinyCI's examples have).
fn parse_yaml<T: DeserializeOwned>(file: &str, bytes: &[u8]) -> Result<Option<T>, ConfigError> {
    let fail = |at, field, kind| ConfigError {
        file: file.to_owned(),
        at,
        field,
        kind,
    };
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(fail(
            None,
            String::new(),
            ConfigErrorKind::TooLarge {
                size: bytes.len(),
                limit: MAX_CONFIG_BYTES,
            },
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
        let line = valid.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(valid.get(line_start..).unwrap_or_default())
            .chars()
            .count() as u64
            + 1;
        fail(
            Some(Position { line, column }),
            String::new(),
            ConfigErrorKind::NotUtf8,
        )
    })?;

    let options = serde_saphyr::options! { with_snippet: false };
    let mut path = String::new();
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize::<_, Option<T>>(de).map_err(|e| {
            path = render_path(e.path());
            e.into_inner()
        })
    })
    .map_err(|e| {
        let e = e.without_snippet();
        let message = serde_saphyr::UserMessageFormatter.format_message(e);
        fail(
            e.location().as_ref().and_then(Position::from_location),
            path,
            ConfigErrorKind::Yaml(sanitize(&message)),
        )
    })
}

/// The field path as `runs.build.command[1]`. Keys the parser could not name are left out,
/// and so is the `value` key that [`Spanned`] adds after the fields wrapped in it
/// (`runs.<name>.command` and `runs.<name>.privileged`).
fn render_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;

    let mut keys: Vec<String> = Vec::new();
    let mut out = String::new();
    let mut after_spanned = false;
    for segment in path.iter() {
        let was_after_spanned = std::mem::take(&mut after_spanned);
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if was_after_spanned && key == "value" {
                    continue;
                }
                after_spanned = matches!(keys.as_slice(), [runs, _] if runs == "runs")
                    && (key == "command" || key == "privileged");
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&sanitize(key));
                keys.push(key.clone());
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// Control characters from the input are shown escaped, never raw.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The files as written. Every field is optional so that `key:` with no value (YAML null)
// reads as unset, as it did in tinyCI.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepoConfig {
    queue: Option<QueueName>,
    override_queue: Option<bool>,
    global_timeout: Option<Timeout>,
    override_timeout: Option<bool>,
    workdir: Option<AbsPath>,
    ignore_directories: Option<Vec<RepoDir>>,
    default_image: Option<NonEmpty>,
    default_resources: Option<Resources>,
    metadata: Option<BTreeMap<String, String>>,
    override_metadata: Option<bool>,
    merge_options: Option<MergeOptions>,
    allow_privileged: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    mountpoint: Option<AbsPath>,
    env: Option<EnvList>,
    dependencies: Option<Vec<RepoDir>>,
    workdir: Option<AbsPath>,
    runs: Option<BTreeMap<RunName, RawRun>>,
    default_timeout: Option<Timeout>,
    default_queue: Option<QueueName>,
    default_image: Option<NonEmpty>,
    default_resources: Option<Resources>,
    metadata: Option<BTreeMap<String, String>>,
    artifacts: Option<Vec<ArtifactPath>>,
    labels: Option<LabelList>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    command: Spanned<Vec<String>>,
    image: Option<NonEmpty>,
    queue: Option<QueueName>,
    timeout: Option<Timeout>,
    env: Option<EnvList>,
    privileged: Option<Spanned<bool>>,
    metadata: Option<BTreeMap<String, String>>,
    resources: Option<Resources>,
    artifacts: Option<Vec<ArtifactPath>>,
    labels: Option<LabelList>,
}

/// Runner labels, sorted and each once.
fn labels(list: LabelList) -> Vec<String> {
    let mut labels: Vec<String> = list.0.into_iter().map(|l| l.0).collect();
    labels.sort();
    labels.dedup();
    labels
}

/// A `labels` list: at most [`crate::MAX_LABELS`] entries.
#[derive(Debug)]
struct LabelList(Vec<Label>);

impl<'de> Deserialize<'de> for LabelList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<Label>::deserialize(d)?;
        if list.len() > crate::MAX_LABELS {
            return Err(de::Error::custom(format!(
                "at most {} labels",
                crate::MAX_LABELS
            )));
        }
        Ok(LabelList(list))
    }
}

/// Deserializes a string and checks it with `check`, which returns the value to keep or
/// why it is refused.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
        struct $name(String);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                let check: fn(String) -> Result<String, String> = $check;
                check(s).map($name).map_err(de::Error::custom)
            }
        }
    };
}

checked_string!(
    /// A value that must not be empty (an image name).
    NonEmpty,
    |s| if s.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(s)
    }
);

checked_string!(
    /// An absolute path inside the container (`mountpoint`, `workdir`).
    AbsPath,
    |s| if !s.starts_with('/') {
        Err(format!("{s:?} is not an absolute path"))
    } else if s.contains('\0') {
        Err("the path holds a NUL byte".to_owned())
    } else {
        Ok(s)
    }
);

checked_string!(
    /// A directory relative to the repository root, normalized (`dependencies`,
    /// `ignore_directories`).
    RepoDir,
    |s| paths::normalize(&s).map_err(|why| format!("invalid directory {s:?}: {why}"))
);

checked_string!(
    /// An artifact path or glob, relative to the working directory, normalized.
    ArtifactPath,
    |s| paths::normalize(&s).map_err(|why| format!("invalid artifact path {s:?}: {why}"))
);

checked_string!(
    /// A runner label a run needs (`gpu`, `arch=arm64`).
    Label,
    |s| crate::check_label(&s).map(|()| s)
);

checked_string!(
    /// A run's name: it shows in statuses as `<dir>:<name>`, so no `:` or `/`.
    RunName,
    |s| if s.is_empty() || s.len() > 100 {
        Err("a run name must be 1-100 bytes".to_owned())
    } else if s.chars().any(|c| c.is_control() || c == ':' || c == '/') {
        Err(format!(
            "invalid run name {s:?}: no ':', '/' or control characters"
        ))
    } else {
        Ok(s)
    }
);

/// A timeout in whole seconds: a positive number of seconds, or a Go duration string.
#[derive(Debug, Clone, Copy)]
struct Timeout(u64);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Timeout;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a timeout: whole seconds, or a duration such as 90s or 1h30m")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timeout, E> {
                positive(v).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timeout, E> {
                u64::try_from(v)
                    .map_err(|_| "a timeout must be at least 1 second".to_owned())
                    .and_then(positive)
                    .map_err(E::custom)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timeout, E> {
                parse_duration_secs(v).and_then(positive).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn positive(secs: u64) -> Result<Timeout, String> {
    if secs == 0 {
        Err("a timeout must be at least 1 second".to_owned())
    } else {
        Ok(Timeout(secs))
    }
}

/// Seconds from `3600` or a Go duration (`1h30m`, `90s`, `1.5h`, `50ms`), rounded up to a
/// whole second.
fn parse_duration_secs(text: &str) -> Result<u64, String> {
    const NS_PER_SEC: u128 = 1_000_000_000;
    let bad =
        || format!("invalid timeout {text:?}: expected seconds or a duration such as 90s or 1h30m");
    let too_large = || format!("timeout {text:?} is too large");
    let s = text.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| too_large());
    }

    let mut total_ns: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        rest = tail;

        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NS_PER_SEC,
            "m" => 60 * NS_PER_SEC,
            "h" => 3600 * NS_PER_SEC,
            _ => return Err(bad()),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(bad());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        let mut ns = whole.checked_mul(unit_ns).ok_or_else(too_large)?;
        // Digits past the 18th cannot matter once rounded up to a second.
        let frac = frac.get(..frac.len().min(18)).unwrap_or_default();
        if !frac.is_empty() {
            let digits: u128 = frac.parse().map_err(|_| bad())?;
            let scale = 10u128.pow(frac.len() as u32);
            ns += (digits * unit_ns).div_ceil(scale);
        }
        total_ns = total_ns.checked_add(ns).ok_or_else(too_large)?;
    }
    u64::try_from(total_ns.div_ceil(NS_PER_SEC)).map_err(|_| too_large())
}

/// `env`: a list of `KEY=VALUE` strings (tinyCI's, and Docker's, form), each key once.
#[derive(Debug, Default)]
struct EnvList(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for EnvList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of KEY=VALUE strings")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EnvList, A::Error> {
                let mut env = BTreeMap::new();
                while let Some(EnvEntry(key, value)) = seq.next_element()? {
                    if env.insert(key.clone(), value).is_some() {
                        return Err(de::Error::custom(format!(
                            "environment variable {key:?} is set twice"
                        )));
                    }
                }
                Ok(EnvList(env))
            }
        }
        d.deserialize_seq(V)
    }
}

/// One `KEY=VALUE` entry, checked where it stands (so errors point at it).
struct EnvEntry(String, String);

impl<'de> Deserialize<'de> for EnvEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entry = String::deserialize(d)?;
        let (key, value) = parse_env_entry(&entry).map_err(de::Error::custom)?;
        Ok(EnvEntry(key.to_owned(), value.to_owned()))
    }
}

fn parse_env_entry(entry: &str) -> Result<(&str, &str), String> {
    let Some((key, value)) = entry.split_once('=') else {
        return Err(format!("invalid env entry {entry:?}: expected KEY=VALUE"));
    };
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid env entry {entry:?}: the name must be non-empty, without spaces or control characters"
        ));
    }
    if value.contains('\0') {
        return Err(format!(
            "invalid env entry {entry:?}: the value holds a NUL byte"
        ));
    }
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("3600"), Ok(3600));
        assert_eq!(parse_duration_secs("90s"), Ok(90));
        assert_eq!(parse_duration_secs("1h30m"), Ok(5400));
        assert_eq!(parse_duration_secs("1.5h"), Ok(5400));
        assert_eq!(parse_duration_secs("50ms"), Ok(1), "rounded up");
        assert_eq!(parse_duration_secs("2m0.5s"), Ok(121));
        assert_eq!(parse_duration_secs("0s"), Ok(0));
        for bad in ["", "s", "5x", "1..5s", "-5s", ".s", "h1"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration_secs("99999999999999999999999999999999999999h").is_err());
    }

    #[test]
    fn env_entries() {
        assert_eq!(parse_env_entry("A=b=c"), Ok(("A", "b=c")));
        assert_eq!(parse_env_entry("A="), Ok(("A", "")));
        assert!(parse_env_entry("A").is_err());
        assert!(parse_env_entry("=x").is_err());
        assert!(parse_env_entry("A B=x").is_err());
    }
}
