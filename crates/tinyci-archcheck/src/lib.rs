//! The architecture rules, checked rather than remembered. ARCHITECTURE.md holds two tables
//! under `## Dependency rules`: which tinyci crates each crate may depend on, and which crates
//! alone may name a given third-party crate (`heed` only in `tinyci-store`, and so on).
//! [`Rules::from_markdown`] reads them; [`check`] reads every workspace member's
//! `Cargo.toml` and `.rs` files and reports each edge or name the tables do not allow.
//!
//! This crate owns only that reading and checking. It depends on no tinyci crate (it must be
//! able to judge all of them) and on nothing but `toml` and `thiserror`.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// The heading of the section that holds the rules.
const SECTION: &str = "## Dependency rules";

/// Why the rules or the workspace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {source}")]
    Toml {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("ARCHITECTURE.md has no `{SECTION}` section with its two tables")]
    NoRules,
    #[error("ARCHITECTURE.md's dependency rules: {0}")]
    BadRule(String),
}

/// Where a crate may name an owned dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// In its library, binaries and tests.
    Everywhere,
    /// Only in tests and dev-dependencies (to forge hostile inputs, say).
    TestsOnly,
}

/// The rules of ARCHITECTURE.md's dependency tables.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Each workspace crate and the tinyci crates it may depend on.
    pub edges: BTreeMap<String, BTreeSet<String>>,
    /// Each owned dependency (as Rust names it: `biscuit_auth`) and who may name it.
    pub owners: BTreeMap<String, BTreeMap<String, Reach>>,
}

impl Rules {
    /// Reads the two tables under `## Dependency rules`: `| crate | may depend on |` and
    /// `| dependency | only named by |`. Cells list names separated by commas; a trailing
    /// `(tests)` limits an owner to test code; `—` or an empty cell means none.
    pub fn from_markdown(text: &str) -> Result<Self, ArchError> {
        let start = text.find(SECTION).ok_or(ArchError::NoRules)?;
        let body = &text[start + SECTION.len()..];
        let body = body.find("\n## ").map_or(body, |end| &body[..end]);
        let mut rules = Rules::default();
        let mut table: Option<&str> = None;
        for line in body.lines().map(str::trim) {
            if !line.starts_with('|') {
                table = None;
                continue;
            }
            let cells: Vec<&str> = line
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`'))
                .collect();
            let [first, second] = cells[..] else {
                return Err(ArchError::BadRule(format!(
                    "a row without two cells: {line}"
                )));
            };
            if first.starts_with("---") || first.starts_with(":--") {
                continue;
            }
            match (table, first) {
                (None, "crate") => table = Some("edges"),
                (None, "dependency") => table = Some("owners"),
                (None, _) => {
                    return Err(ArchError::BadRule(format!(
                        "a table must start with a `crate` or `dependency` header: {line}"
                    )));
                }
                (Some("edges"), name) => {
                    let allowed = names(second).map(|(n, _)| n.to_owned()).collect();
                    if rules.edges.insert(name.to_owned(), allowed).is_some() {
                        return Err(ArchError::BadRule(format!("{name} is listed twice")));
                    }
                }
                (Some(_), dependency) => {
                    let owners: BTreeMap<String, Reach> =
                        names(second).map(|(n, r)| (n.to_owned(), r)).collect();
                    if owners.is_empty() {
                        return Err(ArchError::BadRule(format!("{dependency} has no owner")));
                    }
                    rules.owners.insert(dependency.replace('-', "_"), owners);
                }
            }
        }
        if rules.edges.is_empty() || rules.owners.is_empty() {
            return Err(ArchError::NoRules);
        }
        Ok(rules)
    }
}

/// The names in a cell: `a, b (tests)`; `—` or nothing is none.
fn names(cell: &str) -> impl Iterator<Item = (&str, Reach)> {
    cell.split(',')
        .map(|n| n.trim().trim_matches('`').trim())
        .filter(|n| !n.is_empty() && *n != "—" && *n != "-")
        .map(|n| match n.strip_suffix("(tests)") {
            Some(n) => (n.trim().trim_matches('`'), Reach::TestsOnly),
            None => (n, Reach::Everywhere),
        })
}

/// One thing the rules do not allow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Violation {
    /// A workspace crate the edges table does not list.
    Unlisted { krate: String },
    /// A crate the edges table lists that the workspace does not have.
    Missing { krate: String },
    /// `from` depends on the tinyci crate `to`, which its row does not allow.
    Edge { from: String, to: String },
    /// `krate` names the owned dependency `dependency` at `place` (a manifest or a file and
    /// line) without being allowed to there.
    Names {
        krate: String,
        dependency: String,
        place: String,
    },
    /// Generated Cap'n Proto code outside the crate that owns `capnpc`.
    Generated { krate: String, place: String },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Unlisted { krate } => write!(
                f,
                "{krate} is not in ARCHITECTURE.md's table of crates: add its row"
            ),
            Violation::Missing { krate } => write!(
                f,
                "ARCHITECTURE.md lists {krate}, which is not a workspace crate"
            ),
            Violation::Edge { from, to } => write!(
                f,
                "{from} depends on {to}, which ARCHITECTURE.md does not allow"
            ),
            Violation::Names {
                krate,
                dependency,
                place,
            } => write!(
                f,
                "{krate} names `{dependency}` ({place}), which only its owner may"
            ),
            Violation::Generated { krate, place } => write!(
                f,
                "{krate} holds generated Cap'n Proto code ({place}); only tinyci-schema may"
            ),
        }
    }
}

/// A workspace member, as its manifest and files say.
struct Member {
    name: String,
    dir: PathBuf,
    /// Dependencies by kind: normal and build, then dev.
    deps: BTreeSet<String>,
    dev_deps: BTreeSet<String>,
    /// Test targets that live outside the crate's own `tests/` (`[[test]] path`).
    test_paths: Vec<PathBuf>,
}

/// Checks the workspace at `root` against `rules`; returns every violation, sorted.
pub fn check(root: &Path, rules: &Rules) -> Result<Vec<Violation>, ArchError> {
    let members = members(root)?;
    let mut found = BTreeSet::new();
    let names: BTreeSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
    for listed in rules.edges.keys() {
        if !names.contains(listed.as_str()) {
            found.insert(Violation::Missing {
                krate: listed.clone(),
            });
        }
    }
    for member in &members {
        let Some(allowed) = rules.edges.get(&member.name) else {
            found.insert(Violation::Unlisted {
                krate: member.name.clone(),
            });
            continue;
        };
        for dep in member.deps.iter().chain(&member.dev_deps) {
            if names.contains(dep.as_str()) && !allowed.contains(dep) {
                found.insert(Violation::Edge {
                    from: member.name.clone(),
                    to: dep.clone(),
                });
            }
        }
        check_manifest_names(member, rules, &mut found);
        check_sources(member, rules, &mut found)?;
    }
    Ok(found.into_iter().collect())
}

/// Whether `krate` may name `dependency` in code of the given kind.
fn may_name(rules: &Rules, krate: &str, dependency: &str, in_tests: bool) -> bool {
    match rules.owners.get(dependency) {
        None => true,
        Some(owners) => match owners.get(krate) {
            Some(Reach::Everywhere) => true,
            Some(Reach::TestsOnly) => in_tests,
            None => false,
        },
    }
}

fn check_manifest_names(member: &Member, rules: &Rules, found: &mut BTreeSet<Violation>) {
    let kinds = [(&member.deps, false), (&member.dev_deps, true)];
    for (deps, in_tests) in kinds {
        for dep in deps {
            let rust_name = dep.replace('-', "_");
            if !may_name(rules, &member.name, &rust_name, in_tests) {
                found.insert(Violation::Names {
                    krate: member.name.clone(),
                    dependency: rust_name,
                    place: "Cargo.toml".into(),
                });
            }
        }
    }
}

fn check_sources(
    member: &Member,
    rules: &Rules,
    found: &mut BTreeSet<Violation>,
) -> Result<(), ArchError> {
    let mut files = Vec::new();
    rust_files(&member.dir, &mut files)?;
    for path in &member.test_paths {
        match path.parent() {
            Some(dir) if !dir.starts_with(&member.dir) => rust_files(dir, &mut files)?,
            _ => {}
        }
    }
    for file in files {
        let text = fs::read_to_string(&file).map_err(|source| ArchError::Read {
            path: file.clone(),
            source,
        })?;
        let in_tests = is_test_file(member, &file);
        let shown = file.display().to_string();
        // Split so that this file does not carry the marker it looks for.
        let marker = concat!("@generated by the ", "capnpc");
        if member.name != "tinyci-schema" && text.contains(marker) {
            found.insert(Violation::Generated {
                krate: member.name.clone(),
                place: shown.clone(),
            });
        }
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            let code = without_strings(line);
            for dependency in rules.owners.keys() {
                if names_path(&code, dependency)
                    && !may_name(rules, &member.name, dependency, in_tests)
                {
                    found.insert(Violation::Names {
                        krate: member.name.clone(),
                        dependency: dependency.clone(),
                        place: format!("{shown}:{}", number + 1),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Whether `line` names the crate `dependency` as a path root (`heed::Env`, `use heed;`,
/// `extern crate heed`), not as a later segment (`rustls::crypto::aws_lc_rs` is rustls's).
fn names_path(line: &str, dependency: &str) -> bool {
    let mut rest = line;
    let mut offset = 0;
    while let Some(at) = rest.find(dependency) {
        let start = offset + at;
        let end = start + dependency.len();
        let before = line[..start].chars().next_back();
        let after = &line[end..];
        let starts_word = !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        let is_root = after.starts_with("::")
            || (line[..start].trim_end().ends_with("use")
                && after.trim_start().starts_with([';', ' ', '{']))
            || line[..start].trim_end().ends_with("extern crate");
        if starts_word && is_root {
            return true;
        }
        offset = end;
        rest = &line[end..];
    }
    false
}

/// `line` with the contents of its string literals removed: a name in a message or a test
/// table is not a use.
fn without_strings(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        match (in_string, c) {
            (true, '\\') => {
                chars.next();
            }
            (true, '"') => {
                in_string = false;
                out.push('"');
            }
            (true, _) => {}
            // A `'"'` character literal opens no string.
            (false, '\'') if chars.peek() == Some(&'"') => {
                out.push(c);
                out.push('"');
                chars.next();
            }
            (false, '"') => {
                in_string = true;
                out.push('"');
            }
            (false, _) => out.push(c),
        }
    }
    out
}

/// Test code: under the crate's `tests/` or `benches/`, or a `[[test]]` target elsewhere.
fn is_test_file(member: &Member, file: &Path) -> bool {
    let in_dir = |dir: &str| file.starts_with(member.dir.join(dir));
    in_dir("tests")
        || in_dir("benches")
        || member
            .test_paths
            .iter()
            .filter_map(|p| p.parent())
            .any(|dir| file.starts_with(dir))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ArchError> {
    let entries = fs::read_dir(dir).map_err(|source| ArchError::Read {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| ArchError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            // Fixtures are other workspaces' files, and `target` is build output.
            if name != "target" && name != "fixtures" && !name.to_string_lossy().starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

fn read_toml(path: &Path) -> Result<toml::Table, ArchError> {
    let text = fs::read_to_string(path).map_err(|source| ArchError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ArchError::Toml {
        path: path.to_owned(),
        source,
    })
}

/// The members of the workspace at `root` (its `members` globs of the form `dir/*`).
fn members(root: &Path) -> Result<Vec<Member>, ArchError> {
    let manifest = read_toml(&root.join("Cargo.toml"))?;
    let globs = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(toml::Value::as_array)
        .ok_or_else(|| ArchError::BadRule("the root Cargo.toml has no workspace members".into()))?;
    let mut dirs = Vec::new();
    for glob in globs.iter().filter_map(toml::Value::as_str) {
        match glob.strip_suffix("/*") {
            Some(parent) => {
                let parent = root.join(parent);
                let entries = fs::read_dir(&parent).map_err(|source| ArchError::Read {
                    path: parent.clone(),
                    source,
                })?;
                for entry in entries.flatten() {
                    if entry.path().join("Cargo.toml").is_file() {
                        dirs.push(entry.path());
                    }
                }
            }
            None => dirs.push(root.join(glob)),
        }
    }
    dirs.sort();
    dirs.into_iter().map(|dir| member(&dir)).collect()
}

fn member(dir: &Path) -> Result<Member, ArchError> {
    let manifest = read_toml(&dir.join("Cargo.toml"))?;
    let name = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str)
        .ok_or_else(|| ArchError::BadRule(format!("{} has no package name", dir.display())))?
        .to_owned();
    let keys = |section: &str| -> BTreeSet<String> {
        manifest
            .get(section)
            .and_then(toml::Value::as_table)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut deps = keys("dependencies");
    deps.extend(keys("build-dependencies"));
    let test_paths = manifest
        .get("test")
        .and_then(toml::Value::as_array)
        .map(|tests| {
            tests
                .iter()
                .filter_map(|t| t.get("path").and_then(toml::Value::as_str))
                .map(|p| normalize(&dir.join(p)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Member {
        name,
        dir: dir.to_owned(),
        deps,
        dev_deps: keys("dev-dependencies"),
        test_paths,
    })
}

/// `a/b/../c` as `a/c`, without touching the filesystem.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{names_path, without_strings};

    #[test]
    fn string_contents_are_not_code() {
        assert_eq!(
            without_strings("f(\"heed::Env \\\" x\", '\"', heed::Y)"),
            "f(\"\", '\"', heed::Y)"
        );
    }

    #[test]
    fn only_a_path_root_names_a_crate() {
        for named in [
            "use heed::Env;",
            "    let env = heed::EnvOpenOptions::new();",
            "use heed;",
            "use heed::{Env, Database};",
            "extern crate heed;",
            "f(&heed::types::Bytes)",
        ] {
            assert!(names_path(named, "heed"), "{named}");
        }
        for not_named in [
            "rustls::crypto::aws_lc_rs::default_provider()",
            "let heedless = 1;",
            "tinyci_store::heed_like::x",
            "\"heed\"",
        ] {
            for dependency in ["heed", "aws_lc_rs"] {
                assert!(!names_path(not_named, dependency), "{not_named}");
            }
        }
    }
}
