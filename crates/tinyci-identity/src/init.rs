//! `tinyci site init`: a site's identity on disk.
//!
//! Layout under the site directory (all names fixed so `site.toml` can be written blind):
//!
//! ```text
//! site.toml          written only if absent
//! certs/ca.crt       site CA certificate (public; partners pin it)
//! certs/ca.key       site CA key            0600
//! certs/site.crt     tinyci://<site>/site, server + client auth
//! certs/site.key                            0600
//! certs/admin.crt    tinyci://<site>/admin/admin, client auth
//! certs/admin.key                           0600
//! certs/admin.token  admin grant bound to admin:admin, no expiry  0600
//! certs/root.key     Biscuit root private key 0600
//! certs/root.pub     Biscuit root public key
//! data/              the store, where the admin grant is recorded
//! ```
//!
//! Admin access: the admin certificate proves *who* is calling; the admin token, minted here
//! and bound to `admin:admin`, is *what* they may do. `tinyci admin …` and `tinyci token
//! revoke|list` connect with the certificate and redeem the token for an `Admin` capability,
//! so admin access is a grant like any other: recorded, listable and revocable.

use std::path::{Path, PathBuf};

use tinyci_grant::{GrantSpec, Holder, HolderKind, Right, RootKey, mint};
use tinyci_pki::{Fingerprint, Role, SiteCa, SiteName, write_public_file, write_secret_file};
use tinyci_store::{Store, StoreOptions};

use tinyci_config::default_config_text;

/// Name of the admin identity `site init` creates (`tinyci://<site>/admin/admin`).
pub const INITIAL_ADMIN: &str = "admin";

/// The files of a site identity, relative to the site directory.
const CA_CERT: &str = "certs/ca.crt";
const CA_KEY: &str = "certs/ca.key";
const SITE_CERT: &str = "certs/site.crt";
const SITE_KEY: &str = "certs/site.key";
const ADMIN_CERT: &str = "certs/admin.crt";
const ADMIN_KEY: &str = "certs/admin.key";
const ADMIN_TOKEN: &str = "certs/admin.token";
const ROOT_KEY: &str = "certs/root.key";
const ROOT_PUB: &str = "certs/root.pub";
const CONFIG: &str = "site.toml";

/// Every file `init` writes that must never be silently replaced.
const IDENTITY_FILES: [&str; 9] = [
    CA_CERT,
    CA_KEY,
    SITE_CERT,
    SITE_KEY,
    ADMIN_CERT,
    ADMIN_KEY,
    ADMIN_TOKEN,
    ROOT_KEY,
    ROOT_PUB,
];

/// What to initialize.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The site directory (`certs/` and `site.toml` go here).
    pub dir: PathBuf,
    /// The site's name.
    pub name: SiteName,
    /// Replace existing keys and certificates.
    pub force: bool,
    /// Extra DNS names or IPs for the site certificate (besides localhost and loopback).
    pub hosts: Vec<String>,
}

/// What `init` did, for the CLI to report.
#[derive(Clone, Debug)]
pub struct InitReport {
    /// The config file (written now or already there).
    pub config: PathBuf,
    /// Whether `site.toml` was written by this call.
    pub wrote_config: bool,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// The new CA's fingerprint.
    pub ca_fingerprint: Fingerprint,
}

/// Why `init` refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Keys exist and `force` was not given.
    #[error(
        "refusing to overwrite existing site identity in {dir} ({existing}); \
         pass --force to replace it (every issued certificate and token stops working)"
    )]
    Exists {
        /// The site directory.
        dir: PathBuf,
        /// The files found, comma-separated.
        existing: String,
    },
    /// Making or writing a key or certificate failed.
    #[error(transparent)]
    Pki(#[from] tinyci_pki::PkiError),
    /// Minting the admin grant failed.
    #[error("failed to mint the admin grant: {0}")]
    Grant(#[from] tinyci_grant::GrantError),
    /// Recording the admin grant failed.
    #[error("failed to record the admin grant: {0}")]
    Store(#[from] tinyci_store::StoreError),
    /// Creating a directory or writing site.toml failed.
    #[error("failed to write {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// Whether `dir` already holds a site identity (any of its files).
pub fn identity_exists(dir: &Path) -> bool {
    IDENTITY_FILES.iter().any(|f| dir.join(f).exists())
}

/// Creates a site identity in `options.dir`, and `site.toml` if none exists. Without
/// `force`, refuses (writing nothing) if any identity file exists.
pub fn init_site(options: &InitOptions) -> Result<InitReport, InitError> {
    let dir = &options.dir;
    let existing: Vec<&str> = IDENTITY_FILES
        .iter()
        .copied()
        .filter(|f| dir.join(f).exists())
        .collect();
    if !existing.is_empty() && !options.force {
        return Err(InitError::Exists {
            dir: dir.clone(),
            existing: existing.join(", "),
        });
    }
    let certs = dir.join("certs");
    create_private_dir(&certs)?;

    // Generate everything before writing anything, so a failure leaves no half identity.
    let ca = SiteCa::generate(options.name.clone())?;
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    hosts.extend(options.hosts.iter().cloned());
    let site = ca.issue_site_cert(&hosts)?;
    let admin = ca.issue_member_cert(Role::Admin, INITIAL_ADMIN)?;
    let root = RootKey::generate();
    let admin_grant = GrantSpec {
        site: options.name.to_string(),
        holder: Holder::new(HolderKind::Admin, INITIAL_ADMIN)?,
        rights: [Right::Admin].into(),
        repos: Default::default(),
        queues: Default::default(),
        // Bound to the admin certificate, so a copied token alone is useless; revocable.
        expires_at: None,
        single_use: false,
    };
    let (admin_token, admin_grant) = mint(&root, &admin_grant)?;

    let mut files = Vec::new();
    let mut public = |rel: &str, text: &str| -> Result<(), InitError> {
        let path = dir.join(rel);
        write_public_file(&path, text.as_bytes())?;
        files.push(path);
        Ok(())
    };
    public(CA_CERT, ca.cert_pem())?;
    public(SITE_CERT, &site.cert_pem)?;
    public(ADMIN_CERT, &admin.cert_pem)?;
    public(ROOT_PUB, &format!("{}\n", root.public_key_string()))?;
    let mut secret = |rel: &str, text: &str| -> Result<(), InitError> {
        let path = dir.join(rel);
        write_secret_file(&path, text.as_bytes())?;
        files.push(path);
        Ok(())
    };
    secret(CA_KEY, ca.key_pem())?;
    secret(SITE_KEY, &site.key_pem)?;
    secret(ADMIN_KEY, &admin.key_pem)?;
    secret(ROOT_KEY, &format!("{}\n", root.to_secret_string()))?;
    secret(ADMIN_TOKEN, &format!("{admin_token}\n"))?;

    let store = Store::open(
        &dir.join("data"),
        StoreOptions {
            exclusive: false,
            ..StoreOptions::default()
        },
    )?;
    crate::record_issued(&store, &admin_grant, "site init")?;

    let config = dir.join(CONFIG);
    let wrote_config = !config.exists();
    if wrote_config {
        std::fs::write(&config, default_config_text(&options.name)).map_err(|source| {
            InitError::Io {
                path: config.clone(),
                source,
            }
        })?;
    }
    Ok(InitReport {
        config,
        wrote_config,
        files,
        ca_fingerprint: ca.fingerprint()?,
    })
}

/// Writes the default `site.toml` for an identity that already exists (used by `site up`
/// when the certificates are there but the config was removed).
pub fn write_default_config(dir: &Path, name: &SiteName) -> Result<PathBuf, InitError> {
    let config = dir.join(CONFIG);
    std::fs::write(&config, default_config_text(name)).map_err(|source| InitError::Io {
        path: config.clone(),
        source,
    })?;
    Ok(config)
}

fn create_private_dir(path: &Path) -> Result<(), InitError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| InitError::Io {
            path: path.to_owned(),
            source,
        })
}
