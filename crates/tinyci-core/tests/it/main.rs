//! Integration tests for `tinyci-core`: the tinyCI file formats and their precedence rules,
//! diff-based task selection, and the run/lease state machine on a virtual clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod config;
mod ids;
mod mask;
mod plan;
mod run;

use std::collections::BTreeMap;

use tinyci_core::{RepoConfig, TaskFile};

/// Parses a `tinyci.yml` that must be valid.
fn repo(yaml: &str) -> RepoConfig {
    RepoConfig::parse("tinyci.yml", yaml.as_bytes()).unwrap()
}

/// Parses a `task.yml` that must be valid, under `repo`.
fn task_with(repo: &RepoConfig, yaml: &str) -> TaskFile {
    TaskFile::parse("task.yml", yaml.as_bytes(), repo).unwrap()
}

/// Parses a `task.yml` that must be valid, under an empty `tinyci.yml`.
fn task(yaml: &str) -> TaskFile {
    task_with(&RepoConfig::default(), yaml)
}

/// A task tree from `(directory, task.yml)` pairs.
fn tree(entries: &[(&str, &str)]) -> BTreeMap<String, TaskFile> {
    entries
        .iter()
        .map(|(dir, yaml)| ((*dir).to_owned(), task(yaml)))
        .collect()
}

/// The store persists these; the derives must stay.
#[test]
fn domain_types_are_persistable() {
    fn persistable<T: serde::Serialize + serde::de::DeserializeOwned>() {}
    use tinyci_core::*;
    persistable::<Run>();
    persistable::<RunEvent>();
    persistable::<Transition>();
    persistable::<LeasePolicy>();
    persistable::<Plan>();
    persistable::<PlannedRun>();
    persistable::<RepoConfig>();
    persistable::<TaskFile>();
    persistable::<SubmissionId>();
    persistable::<RunId>();
    persistable::<QueueName>();
    persistable::<RepoName>();
}
