//! Diff-based task selection and whole-submission planning.

use std::collections::BTreeMap;

use expect_test::expect;
use tinyci_core::{PlanError, RepoConfig, TaskFile, plan, select_tasks};

use crate::{repo, tree};

const RUN: &str = "mountpoint: /src\nruns:\n  test: {command: [make, test]}\n";

fn select(
    tasks: &BTreeMap<String, TaskFile>,
    changed: &[&str],
    ignore: &[&str],
    all: bool,
) -> Result<Vec<String>, PlanError> {
    let ignore: Vec<String> = ignore.iter().map(|s| (*s).to_owned()).collect();
    select_tasks(tasks, changed, &ignore, all).map(|s| s.into_iter().collect())
}

#[test]
fn changed_file_selects_nearest_task_dir() {
    let tasks = tree(&[("api", RUN), ("api/grpc", RUN), ("web", RUN)]);
    assert_eq!(
        select(&tasks, &["api/grpc/server/main.go"], &[], false).unwrap(),
        ["api/grpc"]
    );
    assert_eq!(
        select(&tasks, &["api/handlers/x.go"], &[], false).unwrap(),
        ["api"]
    );
    assert_eq!(
        select(&tasks, &["api/task.yml"], &[], false).unwrap(),
        ["api"]
    );
    assert_eq!(
        select(&tasks, &["web/a", "api/grpc/b"], &[], false).unwrap(),
        ["api/grpc", "web"]
    );
    // Not under any task: nothing (there is no root task here).
    assert!(
        select(&tasks, &["README.md", "docs/x.md"], &[], false)
            .unwrap()
            .is_empty()
    );
    // Whole components: `api2` is not under `api`.
    assert!(select(&tasks, &["api2/x"], &[], false).unwrap().is_empty());
}

#[test]
fn dependencies_are_added_transitively() {
    // ci-agents' own layout: types depends on queuesvc and datasvc, queuesvc on datasvc.
    let tasks = tree(&[
        (
            "types",
            "mountpoint: /src\ndependencies: [svc/queue, svc/data]\nruns: {main: {command: [go, test]}}\n",
        ),
        (
            "svc/queue",
            "mountpoint: /src\ndependencies: [svc/data]\nruns: {main: {command: [go, test]}}\n",
        ),
        (
            "svc/data",
            "mountpoint: /src\ndependencies: [db]\nruns: {main: {command: [go, test]}}\n",
        ),
        ("db", "dependencies: [svc/data/fixtures]\n"),
        ("svc/data/fixtures", RUN),
        ("web", RUN),
    ]);
    assert_eq!(
        select(&tasks, &["types/task.go"], &[], false).unwrap(),
        ["db", "svc/data", "svc/data/fixtures", "svc/queue", "types"]
    );
    assert_eq!(
        select(&tasks, &["svc/data/x.go"], &[], false).unwrap(),
        ["db", "svc/data", "svc/data/fixtures"]
    );
}

#[test]
fn dependency_cycles_are_named() {
    let tasks = tree(&[
        ("a", "dependencies: [b]\n"),
        ("b", "dependencies: [c]\n"),
        ("c", "dependencies: [a]\n"),
        ("d", RUN),
    ]);
    // A cycle anywhere in the tree fails every submission, even one that does not touch it.
    let err = select(&tasks, &["d/x"], &[], false).unwrap_err();
    expect![[r#"dependency cycle: a -> b -> c -> a"#]].assert_eq(&err.to_string());
    assert_eq!(
        err,
        PlanError::DependencyCycle {
            cycle: vec!["a".into(), "b".into(), "c".into(), "a".into()]
        }
    );

    let tasks = tree(&[("x", "dependencies: [x]\n")]);
    let err = select(&tasks, &[], &[], true).unwrap_err();
    expect![[r#"dependency cycle: x -> x"#]].assert_eq(&err.to_string());
}

#[test]
fn unknown_and_ignored_dependencies_are_named() {
    let tasks = tree(&[("a", "dependencies: [nothere]\n")]);
    let err = select(&tasks, &["a/x"], &[], false).unwrap_err();
    expect![[r#"task a depends on nothere, which has no task.yml"#]].assert_eq(&err.to_string());

    let tasks = tree(&[("a", "dependencies: [vendor/lib]\n"), ("vendor/lib", RUN)]);
    let err = select(&tasks, &["a/x"], &["vendor"], false).unwrap_err();
    expect![[r#"task a depends on vendor/lib, which is under ignore_directories"#]]
        .assert_eq(&err.to_string());
}

#[test]
fn root_task_is_always_selected() {
    // tinyCI's selectTasks: `process["."] = struct{}{} // . is always tested.`
    let tasks = tree(&[(".", RUN), ("web", RUN)]);
    assert_eq!(
        select(&tasks, &["web/index.html"], &[], false).unwrap(),
        [".", "web"]
    );
    assert_eq!(select(&tasks, &[], &[], false).unwrap(), ["."]);
    assert_eq!(select(&tasks, &["README.md"], &[], false).unwrap(), ["."]);
    // Changes not under another task fall to the root.
    assert_eq!(select(&tasks, &["docs/a.md"], &[], false).unwrap(), ["."]);
}

#[test]
fn ignored_directories_are_never_selected() {
    let tasks = tree(&[
        (".", RUN),
        ("lib", RUN),
        ("lib/vendor/dep", RUN),
        ("vendored", RUN),
    ]);
    // A change inside an ignored task counts for the nearest live task above it.
    assert_eq!(
        select(&tasks, &["lib/vendor/dep/x.c"], &["lib/vendor"], false).unwrap(),
        [".", "lib"]
    );
    // `all` does not reach ignored tasks either.
    assert_eq!(
        select(&tasks, &[], &["lib/vendor/"], true).unwrap(),
        [".", "lib", "vendored"]
    );
    // Ignoring `vendor` leaves `vendored` alone (tinyCI compared string prefixes).
    assert_eq!(
        select(&tasks, &["vendored/x"], &["vendor"], false).unwrap(),
        [".", "vendored"]
    );
}

#[test]
fn all_selects_every_task() {
    let tasks = tree(&[("a", RUN), ("b/c", RUN), ("d", "dependencies: [a]\n")]);
    assert_eq!(select(&tasks, &[], &[], true).unwrap(), ["a", "b/c", "d"]);
}

#[test]
fn bad_paths_are_refused() {
    let tasks = tree(&[("a", RUN)]);
    let err = select(&tasks, &["/etc/passwd"], &[], false).unwrap_err();
    expect![[r#"invalid changed path "/etc/passwd": the path is absolute; paths are relative to the repository root"#]]
        .assert_eq(&err.to_string());
    let err = select(&tasks, &["a/../../x"], &[], false).unwrap_err();
    expect![[r#"invalid changed path "a/../../x": the path holds a '..' component"#]]
        .assert_eq(&err.to_string());

    let tasks = tree(&[("./a/", RUN)]);
    let err = select(&tasks, &[], &[], true).unwrap_err();
    expect![[r#"invalid task directory "./a/": not in normal form (relative, '/'-separated, no '.' parts, '.' for the root)"#]]
        .assert_eq(&err.to_string());
}

#[test]
fn plan_resolves_and_sorts_runs() {
    let repo = repo("queue: main-q\nglobal_timeout: 600\nmetadata: {repo: x}\n");
    let tasks = tree(&[
        (
            ".",
            "mountpoint: /src\nruns:\n  lint: {command: [make, lint]}\n  build: {command: [make]}\n",
        ),
        (
            "web",
            "mountpoint: /web\ndependencies: [lib]\ndefault_queue: js\nruns:\n  test: {command: [npm, test], image: node}\n",
        ),
        ("lib", "dependencies: [.]\n"),
        ("other", RUN),
    ]);
    let p = plan(&repo, &tasks, &["web/app.js"], false).unwrap();
    assert_eq!(p.tasks, [".", "lib", "web"]);
    let names: Vec<_> = p.runs.iter().map(|r| r.qualified_name()).collect();
    assert_eq!(names, ["*root*:build", "*root*:lint", "web:test"]);
    let web = &p.runs[2];
    assert_eq!(web.queue.as_str(), "js");
    assert_eq!(web.timeout_secs, 600);
    assert_eq!(web.image.as_deref(), Some("node"));
    assert_eq!(web.workdir, "/web");
    assert_eq!(web.metadata["repo"], "x");
    assert_eq!(p.runs[0].queue.as_str(), "main-q");

    // Deterministic: the same input plans the same, whatever the order of changed paths.
    let again = plan(&repo, &tasks, &["web/x", "web/app.js"], false).unwrap();
    assert_eq!(again, p);
}

#[test]
fn plan_applies_ignore_directories_from_the_repo_config() {
    let repo = repo("ignore_directories: [vendor]\n");
    let tasks = tree(&[("vendor/x", RUN), ("app", RUN)]);
    let p = plan(&repo, &tasks, &["vendor/x/a.go"], true).unwrap();
    assert_eq!(p.tasks, ["app"]);
    let p = plan(&RepoConfig::default(), &tasks, &["vendor/x/a.go"], false).unwrap();
    assert_eq!(p.tasks, ["vendor/x"]);
}

/// A hostile task file (a fork's pull request) planned gigabytes: its env is copied into
/// every run, and nothing limited how many runs it declared. A submission now plans at most
/// [`tinyci_core::MAX_PLANNED_RUNS`] runs carrying at most [`tinyci_core::MAX_PLANNED_BYTES`].
#[test]
fn a_submission_that_plans_too_much_is_refused() {
    let many: String = (0..=tinyci_core::MAX_PLANNED_RUNS)
        .map(|i| format!("  r{i}: {{command: [\"true\"]}}\n"))
        .collect();
    let tasks = tree(&[("many", &format!("mountpoint: /src\nruns:\n{many}"))]);
    let refused = plan(&repo(""), &tasks, &[] as &[&str], true).unwrap_err();
    assert!(
        matches!(refused, PlanError::TooLarge { what: "runs", .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("at most 500"), "{refused}");

    // 64 runs sharing one 300 KiB env: 19 MB planned from a 300 KiB file.
    let env = "x".repeat(300 * 1024);
    let runs: String = (0..64)
        .map(|i| format!("  r{i}: {{command: [\"true\"]}}\n"))
        .collect();
    let tasks = tree(&[(
        "wide",
        &format!("mountpoint: /src\nenv: [\"BIG={env}\"]\nruns:\n{runs}"),
    )]);
    let refused = plan(&repo(""), &tasks, &[] as &[&str], true).unwrap_err();
    assert!(
        matches!(refused, PlanError::TooLarge { what, .. } if what.starts_with("bytes")),
        "{refused}"
    );

    // Just under both: planned.
    let tasks = tree(&[(
        "many",
        &format!(
            "mountpoint: /src\nruns:\n{}",
            &many[..many.rfind("  r").unwrap()]
        ),
    )]);
    assert_eq!(
        plan(&repo(""), &tasks, &[] as &[&str], true)
            .unwrap()
            .runs
            .len(),
        tinyci_core::MAX_PLANNED_RUNS
    );
}
