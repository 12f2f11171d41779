//! `tinyci.yml` and `task.yml`: tinyCI's own examples parse, every precedence rule holds,
//! and bad files are refused with messages naming file, field and line.

use std::collections::BTreeMap;

use expect_test::{Expect, expect};
use tinyci_core::{
    ConfigErrorKind, MAX_CONFIG_BYTES, MergeOptions, PlannedRun, QueueName, RepoConfig, Resources,
    TaskFile, resolve_run,
};

use crate::{repo, task, task_with};

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn queue(name: &str) -> QueueName {
    name.parse().unwrap()
}

/// Resolves the only run of `task_yml` under `repo_yml`.
fn resolved(repo_yml: &str, task_yml: &str) -> PlannedRun {
    let repo = repo(repo_yml);
    let task = task_with(&repo, task_yml);
    assert_eq!(task.runs.len(), 1, "one run expected");
    let (name, run) = task.runs.iter().next().unwrap();
    resolve_run(&repo, "dir", &task, name, run).unwrap()
}

// ---------------------------------------------------------------------------------------
// Parsing tinyCI's own files

#[test]
fn tinyci_task_with_mountpoint_env_and_runs() {
    // ci-agents' own types/task.yml.
    let t = task(
        r#"---
env:
  - CREATE_DB=1
  - TESTING=1
  - GIN_MODE=release
mountpoint: "/go/src/github.com/tinyci/ci-agents"
default_image: tinyci/ci-agents:05.16.2021
dependencies:
  - api/services/grpc/queuesvc
  - api/services/grpc/datasvc
runs:
  main:
    command: [ "go", "test", "-race", "-v", "./types", "-check.v" ]
"#,
    );
    assert_eq!(
        t.mountpoint.as_deref(),
        Some("/go/src/github.com/tinyci/ci-agents")
    );
    assert_eq!(
        t.env,
        map(&[
            ("CREATE_DB", "1"),
            ("TESTING", "1"),
            ("GIN_MODE", "release")
        ])
    );
    assert_eq!(
        t.dependencies,
        ["api/services/grpc/queuesvc", "api/services/grpc/datasvc"]
    );
    assert_eq!(
        t.default_image.as_deref(),
        Some("tinyci/ci-agents:05.16.2021")
    );
    assert_eq!(
        t.runs["main"].command,
        ["go", "test", "-race", "-v", "./types", "-check.v"]
    );
}

#[test]
fn labels_are_tinycis_extension_and_a_runs_list_replaces_its_tasks() {
    let task_yml = "mountpoint: /src\nlabels: [gpu, arch=amd64, gpu]\nruns:\n  a: {command: [x]}\n";
    assert_eq!(resolved("", task_yml).labels, ["arch=amd64", "gpu"]);
    let task_yml = "mountpoint: /src\nlabels: [gpu]\nruns:\n  a: {command: [x], labels: []}\n";
    assert!(resolved("", task_yml).labels.is_empty());
    let task_yml = "mountpoint: /src\nruns:\n  a: {command: [x], labels: [zone/eu-1]}\n";
    assert_eq!(resolved("", task_yml).labels, ["zone/eu-1"]);
    task_error(
        "t.yml",
        "mountpoint: /src\nlabels: [\"has space\"]\nruns:\n  a: {command: [x]}\n",
        expect![[
            r#"t.yml:2:10: labels[0]: invalid label "has space": only ASCII letters, digits and . _ - = /"#
        ]],
    );
}

#[test]
fn tinyci_run_names_may_be_numbers() {
    // ci-agents' api/testdata/standard_task.yml names its runs 1..5.
    let t = task(
        r#"---
mountpoint: "/tmp"
runs:
  1:
    command: ["1"]
    image: "foo"
  2:
    command: ["2"]
    image: "foo"
"#,
    );
    assert_eq!(t.runs.keys().collect::<Vec<_>>(), ["1", "2"]);
}

#[test]
fn tinyci_task_with_only_dependencies() {
    // ci-agents' types/testdata/tasks/deps_only.yml.
    let t = task("---\ndependencies:\n  - api/uisvc\n");
    assert_eq!(t.dependencies, ["api/uisvc"]);
    assert!(t.runs.is_empty());
    assert_eq!(t.mountpoint, None);
}

#[test]
fn dependencies_are_normalized() {
    let t = task("dependencies: [./a/b/, a/b, c//d]\n");
    assert_eq!(t.dependencies, ["a/b", "c/d"]);
}

#[test]
fn timeouts_read_seconds_and_go_durations() {
    let t = task(
        "mountpoint: /src\ndefault_timeout: 1h30m\nruns:\n  \
         a: {command: [x], timeout: 90}\n  \
         b: {command: [x], timeout: \"120\"}\n  \
         c: {command: [x], timeout: 2m}\n  \
         d: {command: [x], timeout: 50ms}\n  \
         e: {command: [x]}\n",
    );
    assert_eq!(t.default_timeout_secs, Some(5400));
    let secs: Vec<_> = t.runs.values().map(|r| r.timeout_secs).collect();
    assert_eq!(secs, [Some(90), Some(120), Some(120), Some(1), None]);

    let r = repo("global_timeout: 12ms\noverride_timeout: true\n");
    assert_eq!(r.global_timeout_secs, Some(1), "sub-second rounds up");
}

#[test]
fn tinyci_repo_configs() {
    // types/testdata/repo_configs/basic.yml is a bare document marker.
    assert_eq!(repo("---\n"), RepoConfig::default());
    assert_eq!(repo(""), RepoConfig::default());
    assert_eq!(repo("# nothing here\n"), RepoConfig::default());

    // complicated.yml.
    let r = repo("---\nqueue: quux\nworkdir: /\noverride_queue: true\n");
    assert_eq!(r.queue, Some(queue("quux")));
    assert_eq!(r.workdir.as_deref(), Some("/"));
    assert!(r.override_queue);

    // ci-agents' own tinyci.yml.
    let r = repo("---\nignore_directories:\n  - vendor\n");
    assert_eq!(r.ignore_directories, ["vendor"]);
}

#[test]
fn every_repo_config_field() {
    let r = repo(
        r#"
queue: fast
override_queue: false
global_timeout: 600
override_timeout: true
workdir: /work
ignore_directories: [vendor, third_party/]
default_image: debian:bookworm
default_resources: {cpu: "2", memory: 4G}
metadata: {team: infra, tier: 1}
override_metadata: true
merge_options:
  do_not_merge: false
  ignore_refs: [heads/release]
allow_privileged: true
"#,
    );
    assert_eq!(
        r,
        RepoConfig {
            queue: Some(queue("fast")),
            override_queue: false,
            global_timeout_secs: Some(600),
            override_timeout: true,
            workdir: Some("/work".to_owned()),
            ignore_directories: vec!["vendor".to_owned(), "third_party".to_owned()],
            default_image: Some("debian:bookworm".to_owned()),
            default_resources: Resources {
                cpu: Some("2".to_owned()),
                memory: Some("4G".to_owned()),
                ..Resources::default()
            },
            metadata: map(&[("team", "infra"), ("tier", "1")]),
            override_metadata: true,
            merge_options: MergeOptions {
                do_not_merge: false,
                ignore_refs: vec!["heads/release".to_owned()],
            },
            allow_privileged: true,
        }
    );
    assert!(r.merge_options.should_merge("heads/feature"));
    assert!(!r.merge_options.should_merge("heads/release"));
}

#[test]
fn null_values_read_as_unset() {
    let t = task("mountpoint: /src\nenv:\nmetadata:\nruns:\n  a:\n    command: [x]\n    image:\n");
    assert!(t.env.is_empty());
    assert_eq!(t.runs["a"].image, None);
}

// ---------------------------------------------------------------------------------------
// Precedence, one rule per test (tinyCI's types/task.go handleOverrides)

#[test]
fn queue_run_wins_over_task_default() {
    // tinyCI testdata independent_queues.yml.
    let p = resolved(
        "queue: repoq",
        "mountpoint: /tmp\ndefault_queue: frobnik\nruns:\n  a: {command: [x], queue: hi}\n",
    );
    assert_eq!(p.queue, queue("hi"));
}

#[test]
fn queue_task_default_wins_over_repo_queue() {
    // tinyCI testdata basic.yml.
    let p = resolved(
        "queue: repoq",
        "mountpoint: /tmp\ndefault_queue: frobnik\nruns:\n  a: {command: [x]}\n",
    );
    assert_eq!(p.queue, queue("frobnik"));
}

#[test]
fn queue_repo_queue_wins_over_builtin_default() {
    // tinyCI testdata queue_default.yml.
    let p = resolved(
        "queue: quux",
        "mountpoint: /tmp\nruns:\n  a: {command: [x]}\n",
    );
    assert_eq!(p.queue, queue("quux"));
}

#[test]
fn queue_builtin_default_is_default() {
    // tinyCI testdata standard_defaults.yml.
    let p = resolved("", "mountpoint: /tmp\nruns:\n  a: {command: [x]}\n");
    assert_eq!(p.queue, queue("default"));
}

#[test]
fn override_queue_forces_repo_queue_over_run_and_task() {
    // tinyCI testdata override_queue.yml.
    let p = resolved(
        "queue: quux\noverride_queue: true",
        "mountpoint: /tmp\ndefault_queue: t\nruns:\n  a: {command: [x], queue: overridden}\n",
    );
    assert_eq!(p.queue, queue("quux"));
}

#[test]
fn override_queue_without_queue_forces_default() {
    let p = resolved(
        "override_queue: true",
        "mountpoint: /tmp\nruns:\n  a: {command: [x], queue: mine}\n",
    );
    assert_eq!(p.queue, queue("default"));
}

#[test]
fn timeout_run_wins_over_task_default() {
    // tinyCI testdata timeout.yml (in seconds here).
    let p = resolved(
        "global_timeout: 12",
        "mountpoint: /tmp\ndefault_timeout: 50\nruns:\n  a: {command: [x], timeout: 120}\n",
    );
    assert_eq!(p.timeout_secs, 120);
}

#[test]
fn timeout_task_default_wins_over_global() {
    // tinyCI testdata task_default_timeout.yml.
    let p = resolved(
        "global_timeout: 12",
        "mountpoint: /tmp\ndefault_timeout: 50\nruns:\n  a: {command: [x]}\n",
    );
    assert_eq!(p.timeout_secs, 50);
}

#[test]
fn timeout_global_is_a_fallback_not_a_cap() {
    // tinyCI testdata repo_config_timeout.yml; and a run may exceed global_timeout.
    let p = resolved(
        "global_timeout: 12",
        "mountpoint: /tmp\nruns:\n  a: {command: [x]}\n",
    );
    assert_eq!(p.timeout_secs, 12);
    let p = resolved(
        "global_timeout: 12",
        "mountpoint: /tmp\nruns:\n  a: {command: [x], timeout: 7200}\n",
    );
    assert_eq!(p.timeout_secs, 7200);
}

#[test]
fn timeout_builtin_default_is_an_hour() {
    let p = resolved("", "mountpoint: /tmp\nruns:\n  a: {command: [x]}\n");
    assert_eq!(p.timeout_secs, tinyci_core::DEFAULT_TIMEOUT_SECS);
    assert_eq!(p.timeout_secs, 3600);
}

#[test]
fn override_timeout_forces_global_over_run_and_task() {
    // tinyCI testdata repo_config_timeout_override.yml.
    let p = resolved(
        "global_timeout: 12\noverride_timeout: true",
        "mountpoint: /tmp\ndefault_timeout: 50\nruns:\n  a: {command: [x], timeout: 100}\n",
    );
    assert_eq!(p.timeout_secs, 12);
}

#[test]
fn override_timeout_without_global_timeout_does_nothing() {
    let p = resolved(
        "override_timeout: true",
        "mountpoint: /tmp\ndefault_timeout: 50\nruns:\n  a: {command: [x], timeout: 100}\n",
    );
    assert_eq!(p.timeout_secs, 100);
}

#[test]
fn image_run_then_task_then_repo_then_none() {
    // tinyCI's TestDefaultImage, plus "none".
    let t = "mountpoint: /tmp\ndefault_image: task_image\nruns:\n  a: {command: [x], image: local_image}\n";
    assert_eq!(
        resolved("default_image: repo_image", t).image.as_deref(),
        Some("local_image")
    );
    let t = "mountpoint: /tmp\ndefault_image: task_image\nruns:\n  a: {command: [x]}\n";
    assert_eq!(
        resolved("default_image: repo_image", t).image.as_deref(),
        Some("task_image")
    );
    let t = "mountpoint: /tmp\nruns:\n  a: {command: [x]}\n";
    assert_eq!(
        resolved("default_image: repo_image", t).image.as_deref(),
        Some("repo_image")
    );
    assert_eq!(resolved("", t).image, None);
}

#[test]
fn workdir_task_then_repo_then_mountpoint() {
    let t = "mountpoint: /tmp\nworkdir: /foobar\nruns:\n  a: {command: [x]}\n";
    assert_eq!(resolved("workdir: /sw", t).workdir, "/foobar");
    let t = "mountpoint: /tmp\nruns:\n  a: {command: [x]}\n";
    assert_eq!(resolved("workdir: /sw", t).workdir, "/sw");
    assert_eq!(resolved("", t).workdir, "/tmp");
    assert_eq!(resolved("", t).mountpoint, "/tmp");
}

#[test]
fn metadata_merges_repo_then_task_then_run() {
    // tinyCI's TestRepoConfigMetadata, with task metadata in between.
    let p = resolved(
        "metadata: {foo: bar, override: nope, layer: repo}",
        "mountpoint: /tmp\nmetadata: {layer: task, task_only: t}\nruns:\n  \
         a: {command: [x], metadata: {override: yep}}\n",
    );
    assert_eq!(
        p.metadata,
        map(&[
            ("foo", "bar"),
            ("layer", "task"),
            ("override", "yep"),
            ("task_only", "t")
        ])
    );
}

#[test]
fn override_metadata_makes_repo_keys_win() {
    let p = resolved(
        "metadata: {foo: bar, override: nope}\noverride_metadata: true",
        "mountpoint: /tmp\nmetadata: {foo: task}\nruns:\n  \
         a: {command: [x], metadata: {override: yep, run_only: r}}\n",
    );
    assert_eq!(
        p.metadata,
        map(&[("foo", "bar"), ("override", "nope"), ("run_only", "r")])
    );
}

#[test]
fn env_run_wins_over_task() {
    let p = resolved(
        "",
        "mountpoint: /tmp\nenv: [A=task, B=task]\nruns:\n  a: {command: [x], env: [B=run, C=run]}\n",
    );
    assert_eq!(p.env, map(&[("A", "task"), ("B", "run"), ("C", "run")]));
}

#[test]
fn resources_run_then_task_then_repo_whole() {
    let repo_yml = "default_resources: {cpu: '1', memory: 1G}";
    let p = resolved(
        repo_yml,
        "mountpoint: /tmp\ndefault_resources: {cpu: '2'}\nruns:\n  a: {command: [x], resources: {disk: 5G}}\n",
    );
    assert_eq!(
        p.resources,
        Resources {
            disk: Some("5G".to_owned()),
            ..Resources::default()
        }
    );
    let p = resolved(
        repo_yml,
        "mountpoint: /tmp\ndefault_resources: {cpu: '2'}\nruns:\n  a: {command: [x]}\n",
    );
    assert_eq!(p.resources.cpu.as_deref(), Some("2"));
    assert_eq!(p.resources.memory, None, "taken whole, not per field");
    let p = resolved(repo_yml, "mountpoint: /tmp\nruns:\n  a: {command: [x]}\n");
    assert_eq!(p.resources.memory.as_deref(), Some("1G"));
}

#[test]
fn artifacts_task_then_run_once_each() {
    let p = resolved(
        "",
        "mountpoint: /tmp\nartifacts: [target/*.tar, ./logs/]\nruns:\n  \
         a: {command: [x], artifacts: [logs, out/report.xml]}\n",
    );
    assert_eq!(p.artifacts, ["target/*.tar", "logs", "out/report.xml"]);
}

#[test]
fn privileged_allowed_when_repo_allows() {
    let p = resolved(
        "allow_privileged: true",
        "mountpoint: /tmp\nruns:\n  a: {command: [x], privileged: true}\n",
    );
    assert!(p.privileged);
}

#[test]
fn privileged_refused_at_planning_for_hand_built_tasks() {
    let allowed = repo("allow_privileged: true");
    let t = task_with(
        &allowed,
        "mountpoint: /tmp\nruns:\n  a: {command: [x], privileged: true}\n",
    );
    let err = resolve_run(&RepoConfig::default(), "ci", &t, "a", &t.runs["a"]).unwrap_err();
    expect![[
        r#"run ci:a asks for a privileged container, but tinyci.yml does not set allow_privileged"#
    ]]
    .assert_eq(&err.to_string());
}

// ---------------------------------------------------------------------------------------
// Errors

fn task_error(file: &str, yaml: &str, expect: Expect) {
    let err = TaskFile::parse(file, yaml.as_bytes(), &RepoConfig::default()).unwrap_err();
    expect.assert_eq(&err.to_string());
}

fn repo_error(yaml: &str, expect: Expect) {
    let err = RepoConfig::parse("tinyci.yml", yaml.as_bytes()).unwrap_err();
    expect.assert_eq(&err.to_string());
}

#[test]
fn unknown_field_names_file_field_and_line() {
    task_error(
        "build/task.yml",
        "mountpoint: /src\nruns:\n  test:\n    command: [make, test]\n    imgae: debian\n",
        expect![
            "build/task.yml:5:5: runs.test.imgae: unknown field `imgae`, expected one of command, image, queue, timeout, env, privileged, metadata, resources, artifacts, labels"
        ],
    );
    // tinyCI's api/testdata/bad_task.yml: dependencies belong to the task, not a run.
    task_error(
        "api/task.yml",
        "---\nmountpoint: \"/tmp\"\nruns:\n  1: \n    command: [\"1\"]\n    image: \"foo\"\n    dependencies:\n      - foo\n",
        expect![
            "api/task.yml:7:5: runs.1.dependencies: unknown field `dependencies`, expected one of command, image, queue, timeout, env, privileged, metadata, resources, artifacts, labels"
        ],
    );
    repo_error(
        "queue: a\ndefault_timeout: 60\n",
        expect![[
            r#"tinyci.yml:2:1: default_timeout: unknown field `default_timeout`, expected one of queue, override_queue, global_timeout, override_timeout, workdir, ignore_directories, default_image, default_resources, metadata, override_metadata, merge_options, allow_privileged"#
        ]],
    );
    repo_error(
        "merge_options:\n  only_refs: [main]\n",
        expect![
            "tinyci.yml:2:3: merge_options.only_refs: unknown field `only_refs`, expected one of do_not_merge, ignore_refs"
        ],
    );
}

#[test]
fn run_without_command_is_refused() {
    task_error(
        "build/task.yml",
        "mountpoint: /src\nruns:\n  test:\n    command: []\n",
        expect![[
            r#"build/task.yml:4:14: runs.test.command: a run needs a command: a non-empty list of program and arguments"#
        ]],
    );
    task_error(
        "build/task.yml",
        "mountpoint: /src\nruns:\n  test:\n    image: debian\n",
        expect![[r#"build/task.yml:4:5: runs.test: missing field `command`"#]],
    );
    task_error(
        "build/task.yml",
        "mountpoint: /src\nruns:\n  test:\n    command: make test\n",
        expect![[r#"build/task.yml:4:14: runs.test.command: expected sequence start"#]],
    );
    let err = TaskFile::parse(
        "t.yml",
        b"mountpoint: /src\nruns:\n  test:\n    command: []\n",
        &RepoConfig::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind, ConfigErrorKind::EmptyCommand);
}

#[test]
fn privileged_without_allow_privileged_is_refused() {
    task_error(
        "docker/task.yml",
        "mountpoint: /src\nruns:\n  dind:\n    command: [dockerd]\n    privileged: true\n",
        expect![[
            r#"docker/task.yml:5:17: runs.dind.privileged: run `dind` asks for a privileged container, but tinyci.yml does not set allow_privileged"#
        ]],
    );
    // Asking for an unprivileged container is fine.
    task("mountpoint: /src\nruns:\n  a:\n    command: [x]\n    privileged: false\n");
}

#[test]
fn syntax_errors_give_the_line() {
    task_error(
        "build/task.yml",
        "mountpoint: /src\nruns:\n  test:\n    command: [make, test\n",
        expect![[r#"build/task.yml:4:14: runs.test.command: unclosed bracket '['"#]],
    );
    task_error(
        "build/task.yml",
        "mountpoint: /src\nruns:\n  test:\n    command: [make]\n   image: debian\n",
        expect![
            "build/task.yml:5:4: runs: while parsing a block mapping, did not find expected key"
        ],
    );
    repo_error(
        "queue: 'unterminated\n",
        expect![[r#"tinyci.yml:1:8: unclosed quote"#]],
    );
    task_error(
        "build/task.yml",
        "- a list\n- not a mapping\n",
        expect![[r#"build/task.yml:1:1: expected mapping start"#]],
    );
}

#[test]
fn oversize_file_is_refused_unparsed() {
    // Not even YAML: the size is checked first.
    let big = vec![b'['; MAX_CONFIG_BYTES + 1];
    let err = TaskFile::parse("big/task.yml", &big, &RepoConfig::default()).unwrap_err();
    expect![[r#"big/task.yml: file is 1048577 bytes, over the limit of 1048576 bytes"#]]
        .assert_eq(&err.to_string());
    let err = RepoConfig::parse("tinyci.yml", &big).unwrap_err();
    assert!(matches!(err.kind, ConfigErrorKind::TooLarge { .. }));

    // Exactly at the limit is read.
    let mut ok = b"mountpoint: /src\nruns: {a: {command: [x]}}\n".to_vec();
    ok.resize(MAX_CONFIG_BYTES, b'\n');
    TaskFile::parse("ok/task.yml", &ok, &RepoConfig::default()).unwrap();
}

#[test]
fn other_errors() {
    task_error(
        "t.yml",
        "mountpoint: /src\nruns:\n  a: {command: [x]}\n  a: {command: [y]}\n",
        expect![[r#"t.yml:4:3: runs: duplicate mapping key `a` is not allowed here"#]],
    );
    task_error(
        "t.yml",
        "runs:\n  a:\n    command: [x]\n",
        expect![[r#"t.yml:3:14: mountpoint: a task with runs needs a mountpoint"#]],
    );
    task_error(
        "t.yml",
        "mountpoint: /src\n",
        expect![[r#"t.yml: a task needs runs, dependencies or both"#]],
    );
    task_error(
        "t.yml",
        "mountpoint: src\ndependencies: [a]\n",
        expect![[r#"t.yml:1:13: mountpoint: "src" is not an absolute path"#]],
    );
    task_error(
        "t.yml",
        "dependencies: [../elsewhere]\n",
        expect![[
            r#"t.yml:1:16: dependencies[0]: invalid directory "../elsewhere": the path holds a '..' component"#
        ]],
    );
    task_error(
        "t.yml",
        "mountpoint: /src\nenv: [A=1, JUSTAKEY]\nruns: {a: {command: [x]}}\n",
        expect![[r#"t.yml:2:12: env[1]: invalid env entry "JUSTAKEY": expected KEY=VALUE"#]],
    );
    task_error(
        "t.yml",
        "mountpoint: /src\nenv: [A=1, A=2]\nruns: {a: {command: [x]}}\n",
        expect![[r#"t.yml:2:6: env: environment variable "A" is set twice"#]],
    );
    task_error(
        "t.yml",
        "mountpoint: /src\nruns:\n  a: {command: [x], timeout: 0}\n",
        expect![[r#"t.yml:3:30: runs.a.timeout: a timeout must be at least 1 second"#]],
    );
    task_error(
        "t.yml",
        "mountpoint: /src\nruns:\n  a: {command: [x], timeout: soon}\n",
        expect![[
            r#"t.yml:3:30: runs.a.timeout: invalid timeout "soon": expected seconds or a duration such as 90s or 1h30m"#
        ]],
    );
    task_error(
        "t.yml",
        "mountpoint: /src\nruns:\n  a: {command: [x], queue: Fast}\n",
        expect![[
            r#"t.yml:3:28: runs.a.queue: invalid queue name "Fast": expected 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"#
        ]],
    );
    task_error(
        "t.yml",
        "mountpoint: /src\nruns:\n  'a:b': {command: [x]}\n",
        expect![[
            r#"t.yml:3:3: runs.a:b: invalid run name "a:b": no ':', '/' or control characters"#
        ]],
    );
    task_error(
        "t.yml",
        "mountpoint: /src\nmetadata: {nested: {no: 1}}\nruns: {a: {command: [x]}}\n",
        expect!["t.yml:2:20: metadata.nested: expected string scalar"],
    );
    // Field paths through the parts parsed with their positions stay plain.
    task_error(
        "t.yml",
        "mountpoint: /src\nruns:\n  a: {command: [make, [x]]}\n",
        expect!["t.yml:3:23: runs.a.command[1]: expected string scalar"],
    );
    task_error(
        "t.yml",
        "mountpoint: /src\nruns:\n  a: {command: [x], privileged: maybe}\n",
        expect!["t.yml:3:33: runs.a.privileged: invalid boolean"],
    );
    task_error(
        "t.yml",
        "mountpoint: /src\nruns:\n  value: {command: [x], value: 1}\n",
        expect![
            "t.yml:3:25: runs.value.value: unknown field `value`, expected one of command, image, queue, timeout, env, privileged, metadata, resources, artifacts, labels"
        ],
    );
    let err =
        TaskFile::parse("t.yml", b"mountpoint: /src\n\xff\n", &RepoConfig::default()).unwrap_err();
    expect![[r#"t.yml:2:1: file is not valid UTF-8"#]].assert_eq(&err.to_string());
}
