//! Image references and registry credentials, as Docker's own client reads them: an image
//! name splits into registry, repository and tag (or digest), and credentials come from the
//! runner host's Docker configuration (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`), `auths` entries only. They stay on the runner host: the site
//! never sees them, and nothing here logs or prints them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use bollard::auth::DockerCredentials;
use serde::Deserialize;

/// The registry Docker means when an image names none.
pub const DOCKER_HUB: &str = "docker.io";

/// An image name, split the way `docker pull` splits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host (`127.0.0.1:5000`, `ghcr.io`), or [`DOCKER_HUB`].
    pub registry: String,
    /// Everything before the tag or digest, as given (`rust`, `ghcr.io/org/tool`).
    pub name: String,
    /// The tag (`1.89`, `latest` when none is given) or digest (`sha256:…`).
    pub reference: String,
}

impl ImageRef {
    /// Splits `image`. The first path component is a registry when it has a `.`, `:` or an
    /// upper-case letter, or is `localhost`, as in Docker's reference grammar; a tag follows the last `:` after the
    /// last `/`; a digest follows `@`.
    pub fn parse(image: &str) -> Self {
        let (name, reference) = if let Some((name, digest)) = image.split_once('@') {
            (name, digest.to_owned())
        } else {
            let slash = image.rfind('/').map_or(0, |i| i + 1);
            match image[slash..].rfind(':') {
                Some(colon) => (
                    &image[..slash + colon],
                    image[slash + colon + 1..].to_owned(),
                ),
                None => (image, "latest".to_owned()),
            }
        };
        let registry = match name.split_once('/') {
            // Docker's rule: a first component with `.`, `:` or an upper-case letter, or
            // `localhost`, names a registry host.
            Some((first, _))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                first.to_owned()
            }
            _ => DOCKER_HUB.to_owned(),
        };
        Self {
            registry,
            name: name.to_owned(),
            reference,
        }
    }
}

/// Credentials per registry, read once when the runner starts. `Debug` names registries only.
#[derive(Clone, Default)]
pub struct RegistryAuth {
    by_registry: BTreeMap<String, DockerCredentials>,
    /// Registries the file hands to a credential helper or store, which this runner does not
    /// run (it would execute a program named by a file): pulls from them go unauthenticated.
    helpers: Vec<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("registries", &self.by_registry.keys().collect::<Vec<_>>())
            .field("helpers", &self.helpers)
            .finish()
    }
}

/// A Docker configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryAuthError {
    /// The file exists and could not be read.
    #[error("cannot read Docker configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not the JSON Docker writes.
    #[error("Docker configuration {path} is not valid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a credential).
        reason: String,
    },
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

impl RegistryAuth {
    /// Where Docker's client looks: `$DOCKER_CONFIG/config.json`, else
    /// `$HOME/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
    }

    /// Reads the runner host's Docker configuration; none at all means no credentials.
    pub fn from_docker_config() -> Result<Self, RegistryAuthError> {
        match Self::default_path() {
            Some(path) => Self::load(&path),
            None => Ok(Self::default()),
        }
    }

    /// Reads `path`; a missing file means no credentials.
    pub fn load(path: &Path) -> Result<Self, RegistryAuthError> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(RegistryAuthError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let invalid = |reason: String| RegistryAuthError::Invalid {
            path: path.to_owned(),
            reason,
        };
        // Only the position: serde_json's message may quote a value, and values are secrets.
        let file: ConfigFile = serde_json::from_slice(&text).map_err(|e| {
            invalid(format!(
                "not Docker's JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let mut by_registry = BTreeMap::new();
        for (key, entry) in file.auths {
            let registry = registry_of_key(&key);
            let (username, password) = match (&entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .ok()
                        .and_then(|d| String::from_utf8(d).ok())
                        .ok_or_else(|| {
                            invalid(format!("auths.{key}.auth is not base64 of user:password"))
                        })?;
                    let (user, pass) = decoded.split_once(':').ok_or_else(|| {
                        invalid(format!("auths.{key}.auth is not base64 of user:password"))
                    })?;
                    (Some(user.to_owned()), Some(pass.to_owned()))
                }
                (_, username, password) => (username, password),
            };
            if username.is_none() && entry.identity_token.is_none() {
                continue;
            }
            by_registry.insert(
                registry.clone(),
                DockerCredentials {
                    username,
                    password,
                    serveraddress: Some(registry),
                    identitytoken: entry.identity_token,
                    ..DockerCredentials::default()
                },
            );
        }
        let mut helpers: Vec<String> = file
            .cred_helpers
            .into_keys()
            .map(|k| registry_of_key(&k))
            .collect();
        if file.creds_store.is_some() {
            helpers.push("*".to_owned());
        }
        Ok(Self {
            by_registry,
            helpers,
        })
    }

    /// The credentials for `registry`, if the configuration has any.
    pub fn for_registry(&self, registry: &str) -> Option<DockerCredentials> {
        self.by_registry.get(registry).cloned()
    }

    /// Whether the configuration sends `registry` to a credential helper this runner does not
    /// run, so a failed pull can say why it had no credentials.
    pub fn helper_for(&self, registry: &str) -> bool {
        !self.by_registry.contains_key(registry)
            && self.helpers.iter().any(|h| h == "*" || h == registry)
    }
}

/// The registry an `auths` key names: Docker writes `https://index.docker.io/v1/` for Docker
/// Hub and a bare `host[:port]` (sometimes with a scheme or path) for others.
fn registry_of_key(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn image_names_split_like_dockers() {
        let cases = [
            ("rust", DOCKER_HUB, "rust", "latest"),
            ("rust:1.89", DOCKER_HUB, "rust", "1.89"),
            ("library/rust:1", DOCKER_HUB, "library/rust", "1"),
            (
                "127.0.0.1:5000/ci/bb:1",
                "127.0.0.1:5000",
                "127.0.0.1:5000/ci/bb",
                "1",
            ),
            (
                "127.0.0.1:5000/ci/bb",
                "127.0.0.1:5000",
                "127.0.0.1:5000/ci/bb",
                "latest",
            ),
            ("localhost/x", "localhost", "localhost/x", "latest"),
            ("MyHost/x:2", "MyHost", "MyHost/x", "2"),
            (
                "ghcr.io/o/t@sha256:abc",
                "ghcr.io",
                "ghcr.io/o/t",
                "sha256:abc",
            ),
        ];
        for (image, registry, name, reference) in cases {
            let parsed = ImageRef::parse(image);
            assert_eq!(
                (
                    parsed.registry.as_str(),
                    parsed.name.as_str(),
                    parsed.reference.as_str()
                ),
                (registry, name, reference),
                "{image}"
            );
        }
    }

    #[test]
    fn credentials_come_from_auths_and_never_show_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("puller:s3cret-value");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{
                    "127.0.0.1:5000": {{"auth": "{auth}"}},
                    "https://index.docker.io/v1/": {{"username": "u", "password": "p-hub"}}
                }}, "credHelpers": {{"gcr.io": "gcloud"}}}}"#
            ),
        )
        .unwrap();
        let creds = RegistryAuth::load(&path).unwrap();
        let local = creds.for_registry("127.0.0.1:5000").unwrap();
        assert_eq!(local.username.as_deref(), Some("puller"));
        assert_eq!(local.password.as_deref(), Some("s3cret-value"));
        assert_eq!(
            creds.for_registry(DOCKER_HUB).unwrap().password.as_deref(),
            Some("p-hub")
        );
        assert!(creds.for_registry("ghcr.io").is_none());
        assert!(creds.helper_for("gcr.io"));
        assert!(!creds.helper_for("ghcr.io"));
        let shown = format!("{creds:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("p-hub"),
            "{shown}"
        );

        std::fs::write(&path, r#"{"auths": {"x": {"auth": "not base64!"}}}"#).unwrap();
        let err = RegistryAuth::load(&path).unwrap_err().to_string();
        assert!(err.contains("auths.x.auth"), "{err}");
        assert!(RegistryAuth::load(&dir.path().join("absent.json")).is_ok());
    }
}
