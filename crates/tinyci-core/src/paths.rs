//! Repository-relative paths as plain strings: `/`-separated, no leading `/`, no `.` or empty
//! components, never `..`; the repository root is `.`. Every directory and file name that
//! crosses this crate's boundary goes through [`normalize`] once, so comparisons afterwards
//! are plain string and component comparisons.

/// The repository root.
pub(crate) const ROOT: &str = ".";

/// Normalizes a repository-relative path, or says which rule it breaks.
pub(crate) fn normalize(path: &str) -> Result<String, &'static str> {
    if path.is_empty() {
        return Err("the path is empty");
    }
    if path.starts_with('/') {
        return Err("the path is absolute; paths are relative to the repository root");
    }
    if path.contains('\0') {
        return Err("the path holds a NUL byte");
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("the path holds a '..' component"),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        Ok(ROOT.to_owned())
    } else {
        Ok(parts.join("/"))
    }
}

/// The directory holding `path`, or `None` for the root itself.
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path == ROOT {
        return None;
    }
    Some(path.rsplit_once('/').map_or(ROOT, |(dir, _)| dir))
}

/// Whether `path` is `dir` or lies below it (by whole components: `vendor` does not hold
/// `vendored`).
pub(crate) fn is_within(path: &str, dir: &str) -> bool {
    dir == ROOT
        || path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize("./a//b/").as_deref(), Ok("a/b"));
        assert_eq!(normalize(".").as_deref(), Ok("."));
        assert_eq!(normalize("./").as_deref(), Ok("."));
        assert!(normalize("").is_err());
        assert!(normalize("/etc").is_err());
        assert!(normalize("a/../b").is_err());
    }

    #[test]
    fn parents_and_containment() {
        assert_eq!(parent("a/b/c"), Some("a/b"));
        assert_eq!(parent("a"), Some("."));
        assert_eq!(parent("."), None);
        assert!(is_within("vendor/x", "vendor"));
        assert!(is_within("vendor", "vendor"));
        assert!(!is_within("vendored/x", "vendor"));
        assert!(is_within("anything", "."));
    }
}
