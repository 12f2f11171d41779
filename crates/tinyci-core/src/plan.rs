//! From a submission's tree and diff to fully resolved runs: which task directories are
//! selected ([`select_tasks`]) and what each of their runs is ([`plan`]).
//!
//! Selection follows tinyCI's `taskPicker`: every changed file selects the nearest directory
//! at or above it that holds a `task.yml`; dependencies are added transitively; the root
//! task is always added; `all` selects every task. Task directories under
//! `ignore_directories` are never selected. Unlike tinyCI, containment is by whole path
//! components (tinyCI compared string prefixes, so `vendor` also hid `vendored`), a missing
//! root task is not an error (tinyCI failed the submission), and dependencies that are
//! unknown, ignored or cyclic are errors checked over every task, selected or not, so a
//! broken tree fails every submission alike.
//!
//! Resolution follows tinyCI's `TaskSettings.handleOverrides`; see [`plan`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::{DEFAULT_TIMEOUT_SECS, RepoConfig, Resources, RunSpec, TaskFile};
use crate::ids::QueueName;
use crate::paths::{self, ROOT};

/// Why a submission cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A key of the task map is not a normalized repository-relative directory.
    #[error("invalid task directory {dir:?}: {reason}")]
    InvalidTaskDir {
        /// The key as given.
        dir: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// An `ignore_directories` entry is not a repository-relative directory.
    #[error("invalid ignored directory {dir:?}: {reason}")]
    InvalidIgnoredDir {
        /// The entry as given.
        dir: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A changed path is not a repository-relative path.
    #[error("invalid changed path {path:?}: {reason}")]
    InvalidChangedPath {
        /// The path as given.
        path: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A task depends on a directory without a `task.yml`.
    #[error("task {task} depends on {dependency}, which has no task.yml")]
    UnknownDependency {
        /// The task directory.
        task: String,
        /// The dependency as written.
        dependency: String,
    },
    /// A task depends on a task under `ignore_directories`.
    #[error("task {task} depends on {dependency}, which is under ignore_directories")]
    IgnoredDependency {
        /// The task directory.
        task: String,
        /// The dependency as written.
        dependency: String,
    },
    /// Dependencies form a cycle; the first directory is repeated at the end.
    #[error("dependency cycle: {}", .cycle.join(" -> "))]
    DependencyCycle {
        /// The directories around the cycle, e.g. `[a, b, a]`.
        cycle: Vec<String>,
    },
    /// A run asks for a privileged container the repository does not allow.
    #[error(
        "run {task}:{run} asks for a privileged container, but tinyci.yml does not set allow_privileged"
    )]
    PrivilegedNotAllowed {
        /// The task directory.
        task: String,
        /// The run's name.
        run: String,
    },
    /// A task with runs has no mountpoint (only for hand-built [`TaskFile`]s; parsing
    /// refuses this).
    #[error("task {task} has runs but no mountpoint")]
    MissingMountpoint {
        /// The task directory.
        task: String,
    },
    /// A run with an empty command (only for hand-built [`TaskFile`]s).
    #[error("run {task}:{run} has no command")]
    EmptyCommand {
        /// The task directory.
        task: String,
        /// The run's name.
        run: String,
    },
    /// The submission plans more than one submission may.
    #[error(
        "the submission plans more than {max} {what}; a submission may plan at most {max} \
         (split the work over several repositories or pushes)"
    )]
    TooLarge {
        /// What was counted: `runs`, or `bytes of commands, env, metadata and artifacts`.
        what: &'static str,
        /// Its limit.
        max: usize,
    },
}

/// Most runs one submission may plan.
pub const MAX_PLANNED_RUNS: usize = 500;

/// Most bytes of commands, env, metadata, artifact patterns and labels one submission's runs
/// may carry together. A task's env and metadata are copied into each of its runs, so without
/// this a task file of a few hundred KiB could plan gigabytes.
pub const MAX_PLANNED_BYTES: usize = 16 * 1024 * 1024;

/// What a submission expands to: the selected task directories and their runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Selected task directories, sorted; a task with only dependencies appears here and
    /// contributes no runs.
    pub tasks: Vec<String>,
    /// Every run of every selected task, sorted by task directory then run name.
    pub runs: Vec<PlannedRun>,
}

/// One run, with every default and override applied: exactly what a runner executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRun {
    /// The task's directory, relative to the repository root (`.` for the root).
    pub task_dir: String,
    /// The run's name within its task.
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Container image; `None` when nothing names one (only the Docker executor minds).
    pub image: Option<String>,
    /// The queue the run waits on.
    pub queue: QueueName,
    /// Wall-clock limit, in seconds.
    pub timeout_secs: u64,
    /// Task env overlaid with the run's.
    pub env: BTreeMap<String, String>,
    /// Where the checkout is mounted.
    pub mountpoint: String,
    /// Working directory: the task's, else the repository's, else the mountpoint.
    pub workdir: String,
    /// Whether the container is privileged (only ever true when the repository allows it).
    pub privileged: bool,
    /// Repository, task and run metadata merged.
    pub metadata: BTreeMap<String, String>,
    /// Resource hints: the run's, else the task's, else the repository's.
    pub resources: Resources,
    /// Artifact paths or globs relative to `workdir`: the task's, then the run's.
    pub artifacts: Vec<String>,
    /// Runner labels it needs (a runner must have every one): the run's, else the task's;
    /// sorted, each once.
    pub labels: Vec<String>,
}

impl PlannedRun {
    /// The name tinyCI showed in GitHub statuses: `<dir>:<name>`, with `*root*` for the
    /// repository root.
    pub fn qualified_name(&self) -> String {
        let dir = if self.task_dir == ROOT {
            "*root*"
        } else {
            &self.task_dir
        };
        format!("{dir}:{}", self.name)
    }

    /// Bytes of text the run carries: what [`MAX_PLANNED_BYTES`] counts.
    fn carried_bytes(&self) -> usize {
        let strings = |list: &[String]| list.iter().map(String::len).sum::<usize>();
        let map = |map: &BTreeMap<String, String>| {
            map.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        };
        strings(&self.command)
            + map(&self.env)
            + map(&self.metadata)
            + strings(&self.artifacts)
            + strings(&self.labels)
    }
}

/// The task directories a submission selects.
///
/// `tasks` maps each directory holding a `task.yml` (normalized: relative, `/`-separated,
/// `.` for the root) to its parsed file. `changed_paths` are the files the diff touches.
/// Returns the selected directories, sorted.
pub fn select_tasks<P: AsRef<str>>(
    tasks: &BTreeMap<String, TaskFile>,
    changed_paths: &[P],
    ignore_directories: &[String],
    all: bool,
) -> Result<BTreeSet<String>, PlanError> {
    for dir in tasks.keys() {
        match paths::normalize(dir) {
            Ok(n) if n == *dir => {}
            Ok(_) => {
                return Err(PlanError::InvalidTaskDir {
                    dir: dir.clone(),
                    reason: "not in normal form (relative, '/'-separated, no '.' parts, '.' for the root)",
                });
            }
            Err(reason) => {
                return Err(PlanError::InvalidTaskDir {
                    dir: dir.clone(),
                    reason,
                });
            }
        }
    }
    let ignored = ignore_directories
        .iter()
        .map(|d| {
            paths::normalize(d).map_err(|reason| PlanError::InvalidIgnoredDir {
                dir: d.clone(),
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let is_ignored = |dir: &str| ignored.iter().any(|i| paths::is_within(dir, i));

    // The live tasks and their dependencies, checked.
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (dir, task) in tasks {
        if is_ignored(dir) {
            continue;
        }
        let mut deps = Vec::new();
        for dep in &task.dependencies {
            // Parsed files hold normalized dependencies; hand-built ones may not.
            let normal = paths::normalize(dep).ok();
            let Some((key, _)) = normal.as_deref().and_then(|n| tasks.get_key_value(n)) else {
                return Err(PlanError::UnknownDependency {
                    task: dir.clone(),
                    dependency: dep.clone(),
                });
            };
            if is_ignored(key) {
                return Err(PlanError::IgnoredDependency {
                    task: dir.clone(),
                    dependency: dep.clone(),
                });
            }
            deps.push(key.as_str());
        }
        graph.insert(dir, deps);
    }
    check_acyclic(&graph)?;

    // Seeds: everything, or the nearest live task at or above each changed file, plus root.
    let mut selected: BTreeSet<&str> = BTreeSet::new();
    if all {
        selected.extend(graph.keys().copied());
    } else {
        for path in changed_paths {
            let path = path.as_ref();
            let normal =
                paths::normalize(path).map_err(|reason| PlanError::InvalidChangedPath {
                    path: path.to_owned(),
                    reason,
                })?;
            let mut dir = paths::parent(&normal);
            while let Some(d) = dir {
                if let Some((key, _)) = graph.get_key_value(d) {
                    selected.insert(key);
                    break;
                }
                dir = paths::parent(d);
            }
        }
        if graph.contains_key(ROOT) {
            selected.insert(ROOT);
        }
    }

    // Dependencies, transitively.
    let mut stack: Vec<&str> = selected.iter().copied().collect();
    while let Some(dir) = stack.pop() {
        for &dep in graph.get(dir).map(Vec::as_slice).unwrap_or_default() {
            if selected.insert(dep) {
                stack.push(dep);
            }
        }
    }
    Ok(selected.into_iter().map(str::to_owned).collect())
}

/// Depth-first search for a cycle; reports the first found, in sorted order, for stable
/// messages.
fn check_acyclic(graph: &BTreeMap<&str, Vec<&str>>) -> Result<(), PlanError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for &start in graph.keys() {
        if marks.contains_key(start) {
            continue;
        }
        // The path being explored, each entry with the index of its next dependency.
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::Active);
        while let Some((node, next)) = path.last_mut() {
            let deps = graph.get(*node).map(Vec::as_slice).unwrap_or_default();
            let Some(&dep) = deps.get(*next) else {
                marks.insert(*node, Mark::Done);
                path.pop();
                continue;
            };
            *next += 1;
            match marks.get(dep) {
                Some(Mark::Done) => {}
                Some(Mark::Active) => {
                    let from = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[from..].iter().map(|(n, _)| (*n).to_owned()).collect();
                    cycle.push(dep.to_owned());
                    return Err(PlanError::DependencyCycle { cycle });
                }
                None => {
                    marks.insert(dep, Mark::Active);
                    path.push((dep, 0));
                }
            }
        }
    }
    Ok(())
}

/// Expands a submission into its runs: [`select_tasks`], then [`resolve_run`] for every run
/// of every selected task.
pub fn plan<P: AsRef<str>>(
    repo: &RepoConfig,
    tasks: &BTreeMap<String, TaskFile>,
    changed_paths: &[P],
    all: bool,
) -> Result<Plan, PlanError> {
    let selected = select_tasks(tasks, changed_paths, &repo.ignore_directories, all)?;
    let mut runs = Vec::new();
    let mut bytes = 0usize;
    for dir in &selected {
        let Some(task) = tasks.get(dir) else {
            continue;
        };
        for (name, run) in &task.runs {
            if runs.len() == MAX_PLANNED_RUNS {
                return Err(PlanError::TooLarge {
                    what: "runs",
                    max: MAX_PLANNED_RUNS,
                });
            }
            let run = resolve_run(repo, dir, task, name, run)?;
            bytes = bytes.saturating_add(run.carried_bytes());
            if bytes > MAX_PLANNED_BYTES {
                return Err(PlanError::TooLarge {
                    what: "bytes of commands, env, metadata and artifacts",
                    max: MAX_PLANNED_BYTES,
                });
            }
            runs.push(run);
        }
    }
    Ok(Plan {
        tasks: selected.into_iter().collect(),
        runs,
    })
}

/// Resolves one run against its task and the repository, with tinyCI's precedence:
///
/// - **queue**: with `override_queue`, the repository's `queue` (or `default`) for every run;
///   otherwise run `queue` > task `default_queue` > repository `queue` > `default`;
/// - **timeout**: with `override_timeout` and a `global_timeout`, that for every run;
///   otherwise run `timeout` > task `default_timeout` > `global_timeout` >
///   [`DEFAULT_TIMEOUT_SECS`];
/// - **image**: run `image` > task `default_image` > repository `default_image` > none;
/// - **workdir**: task `workdir` > repository `workdir` > the task's `mountpoint`;
/// - **metadata**: repository, then task, then run, later wins; with `override_metadata`
///   the repository's keys win over both (tinyCI merged only repository and run metadata;
///   task metadata in between is tinyci's);
/// - **env**: task `env` overlaid by the run's (tinyCI's runner appended run env after
///   task env, so the run won);
/// - **resources**: run `resources` > task `default_resources` > repository
///   `default_resources`, each taken whole;
/// - **artifacts**: the task's then the run's, each once;
/// - **labels** (tinyci's): run `labels` > task `labels`, each taken whole;
/// - **privileged**: only when the repository sets `allow_privileged`, else an error.
pub fn resolve_run(
    repo: &RepoConfig,
    task_dir: &str,
    task: &TaskFile,
    name: &str,
    run: &RunSpec,
) -> Result<PlannedRun, PlanError> {
    if run.command.is_empty() {
        return Err(PlanError::EmptyCommand {
            task: task_dir.to_owned(),
            run: name.to_owned(),
        });
    }
    if run.privileged && !repo.allow_privileged {
        return Err(PlanError::PrivilegedNotAllowed {
            task: task_dir.to_owned(),
            run: name.to_owned(),
        });
    }
    let Some(mountpoint) = task.mountpoint.clone() else {
        return Err(PlanError::MissingMountpoint {
            task: task_dir.to_owned(),
        });
    };

    let queue = if repo.override_queue {
        repo.queue.clone()
    } else {
        run.queue
            .clone()
            .or_else(|| task.default_queue.clone())
            .or_else(|| repo.queue.clone())
    }
    .unwrap_or_else(QueueName::default_queue);

    let timeout_secs = match repo.global_timeout_secs {
        Some(global) if repo.override_timeout => global,
        global => run
            .timeout_secs
            .or(task.default_timeout_secs)
            .or(global)
            .unwrap_or(DEFAULT_TIMEOUT_SECS),
    };

    let image = run
        .image
        .clone()
        .or_else(|| task.default_image.clone())
        .or_else(|| repo.default_image.clone());

    let workdir = task
        .workdir
        .clone()
        .or_else(|| repo.workdir.clone())
        .unwrap_or_else(|| mountpoint.clone());

    let mut metadata = repo.metadata.clone();
    metadata.extend(task.metadata.clone());
    metadata.extend(run.metadata.clone());
    if repo.override_metadata {
        metadata.extend(repo.metadata.clone());
    }

    let mut env = task.env.clone();
    env.extend(run.env.clone());

    let resources = [
        &run.resources,
        &task.default_resources,
        &repo.default_resources,
    ]
    .into_iter()
    .find(|r| !r.is_empty())
    .cloned()
    .unwrap_or_default();

    let mut artifacts = task.artifacts.clone();
    for a in &run.artifacts {
        if !artifacts.contains(a) {
            artifacts.push(a.clone());
        }
    }

    Ok(PlannedRun {
        task_dir: task_dir.to_owned(),
        name: name.to_owned(),
        command: run.command.clone(),
        image,
        queue,
        timeout_secs,
        env,
        mountpoint,
        workdir,
        privileged: run.privileged,
        metadata,
        resources,
        artifacts,
        labels: run
            .labels
            .clone()
            .or_else(|| task.labels.clone())
            .unwrap_or_default(),
    })
}
