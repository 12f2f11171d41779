//! The real workspace obeys ARCHITECTURE.md's dependency rules, and the tables list exactly
//! the workspace's crates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use tinyci_archcheck::{Rules, check};

#[test]
fn the_workspace_obeys_architecture_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let rules =
        Rules::from_markdown(&fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap()).unwrap();
    let found = check(&root, &rules).unwrap();
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert!(
        found.is_empty(),
        "the workspace breaks ARCHITECTURE.md's dependency rules:\n  {}",
        shown.join("\n  ")
    );
}
