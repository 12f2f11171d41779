//! Planning a source archive: its task files, read from the archive, planned by
//! `tinyci-core`'s rules.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tinyci_core::{PlannedRun, REPO_CONFIG_FILE, RepoConfig, TaskFile};

use crate::sources::{ArchiveError, task_files};

/// Why a source archive could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The repository's task files are wrong: the author's to fix (the message is quoted back
    /// to them, on a pull request or to `tinyci submit`).
    #[error("{0}")]
    Invalid(String),
    /// The archive could not be read.
    #[error("cannot plan the source archive")]
    Failed(#[source] ArchiveError),
    /// The reader thread died.
    #[error("cannot plan the source archive: {0}")]
    Lost(String),
}

/// Reads the task files of the archive at `archive` and plans its runs, off the async thread:
/// reading, parsing and planning are the submitter's input, and the site's thread serves
/// everyone. `repo_config`, when given, replaces the archive's own `tinyci.yml` (GitHub builds
/// read it from the default branch, so a pull request cannot rewrite the repository's policy
/// for itself).
pub async fn plan_archive(
    archive: PathBuf,
    repo_config: Option<String>,
    changed: Vec<String>,
    all: bool,
) -> Result<Vec<PlannedRun>, PlanError> {
    tokio::task::spawn_blocking(move || plan_archive_now(&archive, repo_config, &changed, all))
        .await
        .map_err(|e| PlanError::Lost(e.to_string()))?
}

/// [`plan_archive`], on the calling thread.
fn plan_archive_now(
    archive: &std::path::Path,
    repo_config: Option<String>,
    changed: &[String],
    all: bool,
) -> Result<Vec<PlannedRun>, PlanError> {
    let files = task_files(archive).map_err(|e| match e {
        ArchiveError::Io(_) => PlanError::Failed(e),
        _ => PlanError::Invalid(e.to_string()),
    })?;
    let invalid = |e: &dyn std::fmt::Display| PlanError::Invalid(e.to_string());
    let config_text = repo_config
        .as_deref()
        .or(files.get(REPO_CONFIG_FILE).map(String::as_str))
        .ok_or_else(|| {
            PlanError::Invalid(format!(
                "the repository has no {REPO_CONFIG_FILE} at its root"
            ))
        })?;
    let repo_config =
        RepoConfig::parse(REPO_CONFIG_FILE, config_text.as_bytes()).map_err(|e| invalid(&e))?;
    let mut tasks = BTreeMap::new();
    for (file, text) in &files {
        if file == REPO_CONFIG_FILE {
            continue;
        }
        let dir = file.rsplit_once('/').map_or(".", |(dir, _)| dir).to_owned();
        let task = TaskFile::parse(file, text.as_bytes(), &repo_config).map_err(|e| invalid(&e))?;
        tasks.insert(dir, task);
    }
    let plan = tinyci_core::plan(&repo_config, &tasks, changed, all).map_err(|e| invalid(&e))?;
    Ok(plan.runs)
}
