//! Typed IDs and validated names.

use expect_test::expect;
use tinyci_core::{QueueName, RepoName, RunId, SubmissionId};

#[test]
fn numeric_ids_print_and_parse_with_their_prefix() {
    assert_eq!(SubmissionId(42).to_string(), "s-42");
    assert_eq!(RunId(42).to_string(), "r-42");
    assert_eq!("s-42".parse::<SubmissionId>(), Ok(SubmissionId(42)));
    assert_eq!("r-0".parse::<RunId>(), Ok(RunId(0)));
    for bad in [
        "42",
        "r-42",
        "s-",
        "s--1",
        "s-+1",
        "s-1x",
        "s-99999999999999999999",
    ] {
        assert!(bad.parse::<SubmissionId>().is_err(), "{bad}");
    }
    let err = "s-42".parse::<RunId>().unwrap_err();
    expect![[r#"invalid run id "s-42": expected r-<number>"#]].assert_eq(&err.to_string());
}

#[test]
fn queue_names() {
    for good in [
        "default",
        "a",
        "0",
        "linux-x86_64",
        "gpu.large",
        &"q".repeat(63),
    ] {
        assert_eq!(good.parse::<QueueName>().unwrap().as_str(), good);
    }
    for bad in [
        "",
        "-a",
        ".a",
        "_a",
        "Fast",
        "a b",
        "a/b",
        "ü",
        &"q".repeat(64),
    ] {
        assert!(bad.parse::<QueueName>().is_err(), "{bad:?}");
    }
    assert_eq!(QueueName::default_queue().as_str(), "default");
    let err = "Fast".parse::<QueueName>().unwrap_err();
    expect![[r#"invalid queue name "Fast": expected 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"#]]
        .assert_eq(&err.to_string());
}

#[test]
fn repo_names() {
    let r: RepoName = "tinyci/ci-agents".parse().unwrap();
    assert_eq!((r.owner(), r.name()), ("tinyci", "ci-agents"));
    assert_eq!(r.to_string(), "tinyci/ci-agents");
    for good in [
        "a/b",
        "Org-1/repo.name_x",
        "x/.github",
        "a/...",
        "old--org-/r",
    ] {
        assert!(good.parse::<RepoName>().is_ok(), "{good}");
    }
    let cases = [
        "nobody",
        "/repo",
        "-org/repo",
        "org/",
        "org/a/b",
        "org/..",
        "org_x/repo",
        "org/re po",
    ];
    let errors: Vec<String> = cases
        .iter()
        .map(|c| c.parse::<RepoName>().unwrap_err().to_string())
        .collect();
    expect![[r#"
        invalid repository name "nobody": expected owner/name
        invalid repository name "/repo": the owner must be 1-39 characters
        invalid repository name "-org/repo": the owner may not start with '-'
        invalid repository name "org/": the name must be 1-100 characters
        invalid repository name "org/a/b": the name may hold only ASCII letters, digits, '.', '_' and '-'
        invalid repository name "org/..": the name may not be '.' or '..'
        invalid repository name "org_x/repo": the owner may hold only ASCII letters, digits and '-'
        invalid repository name "org/re po": the name may hold only ASCII letters, digits, '.', '_' and '-'"#]].assert_eq(&errors.join("\n"));
}
