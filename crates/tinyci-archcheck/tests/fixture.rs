//! The checker on a fixture workspace that breaks each rule once: each break is reported,
//! and nothing else is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use tinyci_archcheck::{Rules, Violation, check};

#[test]
fn every_forbidden_edge_and_name_in_the_fixture_is_caught() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/forbidden");
    let rules =
        Rules::from_markdown(&fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap()).unwrap();
    let found: Vec<String> = check(&root, &rules)
        .unwrap()
        .into_iter()
        .map(|v| match v {
            // Paths differ by checkout; the file name is what matters.
            Violation::Names {
                krate,
                dependency,
                place,
            } => format!(
                "{krate} names {dependency} at {}",
                place.rsplit('/').next().unwrap()
            ),
            Violation::Generated { krate, .. } => format!("{krate} holds generated code"),
            other => other.to_string(),
        })
        .collect();
    assert_eq!(
        found,
        [
            "stray is not in ARCHITECTURE.md's table of crates: add its row",
            "ARCHITECTURE.md lists ghost, which is not a workspace crate",
            "low depends on high, which ARCHITECTURE.md does not allow",
            "high names rcgen at Cargo.toml",
            "sneaky names heed at lib.rs:3",
        ]
        .map(String::from)
        .to_vec(),
        "stray's generated code is not reported: an unlisted crate is reported once, as such"
    );
}

#[test]
fn a_generated_file_outside_the_schema_crate_is_caught() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/forbidden");
    let text = fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let rules = Rules::from_markdown(&text.replace("| ghost | — |", "| stray | — |")).unwrap();
    let found = check(&root, &rules).unwrap();
    assert!(
        found
            .iter()
            .any(|v| matches!(v, Violation::Generated { krate, .. } if krate == "stray")),
        "{found:?}"
    );
}

#[test]
fn rules_without_their_section_are_an_error() {
    let error = Rules::from_markdown("# Architecture\n\nNo rules here.\n").unwrap_err();
    assert_eq!(
        error.to_string(),
        "ARCHITECTURE.md has no `## Dependency rules` section with its two tables"
    );
}
