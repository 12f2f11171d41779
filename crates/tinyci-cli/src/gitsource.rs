//! Reading what `tinyci submit` sends from a local git checkout, by running `git`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::InputError;

/// Largest source archive `submit` uploads.
pub(crate) const MAX_ARCHIVE_BYTES: usize = 256 * 1024 * 1024;

/// A revision of a local checkout, ready to submit.
#[derive(Debug)]
pub(crate) struct LocalSource {
    /// `owner/name`, from the `origin` remote or given.
    pub(crate) repo: String,
    /// `refs/heads/<branch>`, or the commit id when detached.
    pub(crate) git_ref: String,
    /// The commit submitted.
    pub(crate) sha: String,
    /// The commit's subject line.
    pub(crate) title: String,
    /// Paths changed since the merge base with the default branch; `None` when there is no
    /// base to compare with (then every task runs).
    pub(crate) changed: Option<Vec<String>>,
    /// `git archive` of the commit (tar).
    pub(crate) archive: Vec<u8>,
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = git_raw(dir, args)?;
    Ok(String::from_utf8_lossy(&out).trim().to_owned())
}

/// `git -C dir args…`'s whole output, unaltered (for `-z` output, where a path may hold any
/// byte but NUL).
fn git_raw(dir: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("git")
        // git runs hooks and helpers of the checkout's choosing: no grant goes with it.
        .env_remove(crate::util::TOKEN_ENV)
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .context("failed to run git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

fn git_ok(dir: &Path, args: &[&str]) -> Option<String> {
    git(dir, args).ok().filter(|s| !s.is_empty())
}

/// Reads revision `rev` of the checkout at `path`.
pub(crate) fn read(path: &Path, rev: &str, repo: Option<&str>) -> Result<LocalSource> {
    let top = git(path, &["rev-parse", "--show-toplevel"])
        .map_err(|_| InputError(format!("{} is not inside a git checkout", path.display())))?;
    let top = PathBuf::from(top);
    let sha = git(
        &top,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
    .map_err(|_| InputError(format!("{rev:?} is not a commit in {}", top.display())))?;
    let git_ref = match git_ok(&top, &["rev-parse", "--symbolic-full-name", rev]) {
        Some(name) if name.starts_with("refs/") => name,
        _ => sha.clone(),
    };
    let title = git_ok(&top, &["log", "-1", "--format=%s", &sha]).unwrap_or_default();
    // Submitting a subdirectory submits that subtree as the repository (its tinyci.yml at
    // the root), e.g. `tinyci submit examples/hello` inside this very checkout.
    let prefix = git(path, &["rev-parse", "--show-prefix"])?;
    let prefix = prefix.trim_end_matches('/').to_owned();
    let repo = match (repo, prefix.is_empty()) {
        (Some(repo), _) => repo.to_owned(),
        (None, true) => repo_name(&top),
        (None, false) => format!("local/{}", prefix.rsplit('/').next().unwrap_or("checkout")),
    };
    let changed = changed_paths(&top, &sha, &prefix)?;
    let tree = if prefix.is_empty() {
        sha.clone()
    } else {
        format!("{sha}:{prefix}")
    };
    let out = Command::new("git")
        .env_remove(crate::util::TOKEN_ENV)
        .arg("-C")
        .arg(&top)
        .args(["archive", "--format=tar", &tree])
        .output()
        .context("failed to run git archive")?;
    if !out.status.success() {
        bail!(
            "git archive failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.len() > MAX_ARCHIVE_BYTES {
        return Err(InputError(format!(
            "the source archive is {} bytes; the limit is {MAX_ARCHIVE_BYTES}",
            out.stdout.len()
        ))
        .into());
    }
    Ok(LocalSource {
        repo,
        git_ref,
        sha,
        title,
        changed,
        archive: out.stdout,
    })
}

/// `owner/name` from the origin remote's URL, else `local/<directory name>`.
fn repo_name(top: &Path) -> String {
    if let Some(url) = git_ok(top, &["remote", "get-url", "origin"])
        && let Some(name) = owner_and_name(&url)
    {
        return name;
    }
    let dir = top
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkout".into());
    let dir: String = dir
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("local/{dir}")
}

/// `git@github.com:o/n.git`, `https://github.com/o/n`, `ssh://git@host/o/n.git` → `o/n`.
pub(crate) fn owner_and_name(url: &str) -> Option<String> {
    let path = url
        .rsplit_once("://")
        .map(|(_, rest)| rest.split_once('/').map_or("", |(_, p)| p))
        .or_else(|| url.split_once(':').map(|(_, p)| p))?;
    let path = path.trim_end_matches('/').trim_end_matches(".git");
    let mut parts = path.rsplit('/');
    let name = parts.next().filter(|s| !s.is_empty())?;
    let owner = parts.next().filter(|s| !s.is_empty())?;
    Some(format!("{owner}/{name}"))
}

/// Files changed between the merge base with the default branch and `sha`, relative to
/// `prefix` (the submitted subdirectory, or empty for the whole checkout).
fn changed_paths(top: &Path, sha: &str, prefix: &str) -> Result<Option<Vec<String>>> {
    let default = git_ok(
        top,
        &["symbolic-ref", "--short", "refs/remotes/origin/HEAD"],
    )
    .or_else(|| {
        ["main", "master"]
            .into_iter()
            .find(|b| git_ok(top, &["rev-parse", "--verify", &format!("refs/heads/{b}")]).is_some())
            .map(str::to_owned)
    });
    let Some(default) = default else {
        return Ok(None);
    };
    let Some(base) = git_ok(top, &["merge-base", &default, sha]) else {
        return Ok(None);
    };
    if base == sha {
        // On the default branch itself: nothing to diff against, so everything runs.
        return Ok(None);
    }
    let scope = if prefix.is_empty() { "." } else { prefix };
    // `-z`: paths NUL-separated and unquoted. Without it git quotes a path with non-ASCII
    // bytes ("t\303\244sk/x"), which then matched no task directory.
    let diff = git_raw(
        top,
        &[
            "diff",
            "--name-only",
            "--no-renames",
            "-z",
            &base,
            sha,
            "--",
            scope,
        ],
    )?;
    let strip = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok(Some(
        diff.split(|b| *b == 0)
            .filter(|path| !path.is_empty())
            .map(|path| {
                let path = String::from_utf8_lossy(path);
                path.strip_prefix(&strip).unwrap_or(&path).to_owned()
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::{changed_paths, git, owner_and_name};

    /// A path with non-ASCII bytes and one with a space are named as they are, not quoted.
    #[test]
    fn changed_paths_come_back_unquoted() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path();
        let run = |args: &[&str]| git(top, args).unwrap();
        run(&["init", "-q", "-b", "main"]);
        run(&["config", "user.email", "t@example.org"]);
        run(&["config", "user.name", "t"]);
        for task in ["t\u{e4}sk", "with space", "plain"] {
            std::fs::create_dir_all(top.join(task)).unwrap();
            std::fs::write(top.join(task).join("task.yml"), "x").unwrap();
        }
        run(&["add", "-A"]);
        run(&["commit", "-q", "-m", "base"]);
        run(&["checkout", "-q", "-b", "feature"]);
        std::fs::write(top.join("t\u{e4}sk/x"), "changed").unwrap();
        std::fs::write(top.join("with space/y"), "changed").unwrap();
        run(&["add", "-A"]);
        run(&["commit", "-q", "-m", "change"]);
        let sha = run(&["rev-parse", "HEAD"]);
        let mut changed = changed_paths(top, &sha, "").unwrap().unwrap();
        changed.sort();
        assert_eq!(changed, ["t\u{e4}sk/x", "with space/y"]);
    }

    #[test]
    fn remote_urls_name_the_repository() {
        for (url, expected) in [
            ("git@github.com:org/x.git", Some("org/x")),
            ("https://github.com/org/x", Some("org/x")),
            ("https://github.com/org/x.git/", Some("org/x")),
            ("ssh://git@example.org/team/proj.git", Some("team/proj")),
            ("/srv/git/proj.git", None),
            ("nonsense", None),
        ] {
            assert_eq!(owner_and_name(url).as_deref(), expected, "{url}");
        }
    }
}
