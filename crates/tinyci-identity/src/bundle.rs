//! Runner bundles: one file (mode 0600) holding everything a runner host needs to join a
//! site: the site's name and addresses, the pinned CA, the runner's certificate and key, and
//! its holder-bound `queue:take` token.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tinyci_grant::{GrantSpec, Holder, HolderKind, Right, mint};
use tinyci_pki::{Role, SiteCa, SiteName, read_text_file, write_secret_file};

use tinyci_config::SiteConfig;

use crate::{IdentityError, load_root_key, open_store_for_tool, read_pem};

/// The name of the runner `tinyci site up` embeds. It lives and dies with the site process,
/// so a starting site hands back whatever it held; no other runner may take the name.
pub const EMBEDDED_RUNNER: &str = "local";

/// Format revision written into every bundle. 2: the grant carries `logs:write` (on every
/// repository) beside `queue:take`; a version 1 bundle's runner could take jobs but not
/// write their logs, so it is refused with what to do.
const BUNDLE_VERSION: u32 = 2;

/// A runner bundle as stored on disk (TOML).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerBundle {
    /// Format revision.
    pub version: u32,
    /// The site to join.
    pub site: String,
    /// Where to dial it (`host:port`), tried in order.
    pub addresses: Vec<String>,
    /// The runner's name (its certificate is `tinyci://<site>/runner/<name>`).
    pub runner: String,
    /// Queues its token may take from.
    pub queues: Vec<String>,
    /// The site CA certificate (PEM), pinned.
    pub ca_cert: String,
    /// The runner's certificate (PEM).
    pub cert: String,
    /// The runner's private key (PEM). Secret.
    pub key: String,
    /// The runner's grant (Biscuit, base64url). Secret.
    pub token: String,
}

impl std::fmt::Debug for RunnerBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerBundle")
            .field("site", &self.site)
            .field("addresses", &self.addresses)
            .field("runner", &self.runner)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

/// Why a bundle could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The site side failed (config, keys, store).
    #[error(transparent)]
    Site(#[from] IdentityError),
    /// `tls.ca_key` is not configured.
    #[error("site.toml has no tls.ca_key; issuing runner certificates needs the CA key")]
    NoCaKey,
    /// A certificate could not be issued or a file written.
    #[error(transparent)]
    Pki(#[from] tinyci_pki::PkiError),
    /// The grant could not be minted.
    #[error(transparent)]
    Grant(#[from] tinyci_grant::GrantError),
    /// The grant could not be recorded.
    #[error("failed to record the runner's grant: {0}")]
    Store(#[from] tinyci_store::StoreError),
    /// The file is not a bundle.
    #[error("{path} is not a runner bundle: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What `tinyci runner add` asks for.
#[derive(Clone, Debug)]
pub struct NewRunner {
    /// The runner's name.
    pub name: String,
    /// Queues it may take from (at least one).
    pub queues: Vec<String>,
    /// Addresses to put in the bundle; empty means the config's listen address.
    pub addresses: Vec<String>,
    /// When its grant expires; `None` for no expiry (revocable).
    pub expires_at: Option<SystemTime>,
    /// Good for one job (`runner add --ephemeral`): the site leases it one run and revokes
    /// the grant when that run's lease ends.
    pub single_use: bool,
}

impl RunnerBundle {
    /// Issues a runner certificate and a holder-bound `queue:take` grant for `runner`,
    /// records the grant, and returns the bundle (not yet written).
    pub fn issue(config: &SiteConfig, runner: &NewRunner) -> Result<Self, BundleError> {
        let store = open_store_for_tool(config)?;
        Self::issue_recording_in(config, runner, &store)
    }

    /// [`RunnerBundle::issue`], recording the grant in an already open store (the site's
    /// own, when `site up` provisions its local runner).
    pub fn issue_recording_in(
        config: &SiteConfig,
        runner: &NewRunner,
        store: &tinyci_store::Store,
    ) -> Result<Self, BundleError> {
        let ca_key_path = config.ca_key.as_ref().ok_or(BundleError::NoCaKey)?;
        let ca_pem = read_pem(&config.ca_cert, "tls.ca_cert", false)?;
        let ca_key = read_pem(ca_key_path, "tls.ca_key", true)?;
        let ca = SiteCa::from_pem(&ca_pem, &ca_key)?;
        let holder = Holder::new(HolderKind::Runner, &runner.name)?;
        // Validate before issuing anything.
        let spec = GrantSpec {
            site: config.name.to_string(),
            holder,
            // A runner streams the output of what it takes.
            rights: [Right::QueueTake, Right::LogsWrite].into(),
            repos: ["*".to_owned()].into(),
            queues: runner.queues.iter().cloned().collect(),
            expires_at: runner.expires_at,
            single_use: runner.single_use,
        };
        let leaf = ca.issue_member_cert(Role::Runner, &runner.name)?;
        let root = load_root_key(config)?;
        let (token, grant) = mint(&root, &spec)?;
        crate::record_issued(store, &grant, &format!("tinyci runner add {}", runner.name))?;
        let addresses = if runner.addresses.is_empty() {
            config
                .dial_addr()
                .map(|a| a.to_string())
                .into_iter()
                .collect()
        } else {
            runner.addresses.clone()
        };
        Ok(Self {
            version: BUNDLE_VERSION,
            site: config.name.to_string(),
            addresses,
            runner: runner.name.clone(),
            queues: runner.queues.clone(),
            ca_cert: ca_pem,
            cert: leaf.cert_pem,
            key: leaf.key_pem,
            token,
        })
    }

    /// Writes the bundle with mode 0600.
    pub fn write(&self, path: &Path) -> Result<(), BundleError> {
        let text = toml::to_string(self).map_err(|e| BundleError::Malformed {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let text = format!(
            "# tinyci runner bundle for {} at site {}. Secret: it holds the runner's key and grant.\n{text}",
            self.runner, self.site
        );
        write_secret_file(path, text.as_bytes())?;
        Ok(())
    }

    /// The runner's mTLS client configuration (pinned CA, its certificate).
    pub fn client_tls(&self) -> Result<std::sync::Arc<tinyci_net::ClientConfig>, BundleError> {
        let site = SiteName::new(&self.site)?;
        let creds = tinyci_pki::Credentials::from_pem(&self.cert, &self.key)?;
        Ok(tinyci_pki::tls::client_config(&creds, &self.ca_cert, site)?)
    }

    /// Reads a bundle, refusing one readable by group or others.
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        let text = read_text_file(path, true)?;
        let malformed = |reason: String| BundleError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let bundle: Self = toml::from_str(&text).map_err(|e| malformed(e.to_string()))?;
        if bundle.version == 1 {
            return Err(malformed(
                "format version 1: its grant lacks logs:write, which runners now need to stream \
                 output; provision the runner anew (tinyci runner add NAME …) and revoke the old \
                 token"
                    .into(),
            ));
        }
        if bundle.version != BUNDLE_VERSION {
            return Err(malformed(format!(
                "format version {} (this tinyci reads version {BUNDLE_VERSION})",
                bundle.version
            )));
        }
        SiteName::new(&bundle.site).map_err(|e| malformed(e.to_string()))?;
        if bundle.addresses.is_empty() {
            return Err(malformed("it names no site address".into()));
        }
        Ok(bundle)
    }
}
