//! `site.toml`: parsed strictly (unknown keys are errors), every path resolved against the
//! file's own directory, every named file checked to exist, every error naming the key or path.
//!
//! `site.toml.example` at the repository root documents every key; keep the two in step.
//!
//! Owns the configuration's shape and its validation, nothing else: it does no I/O beyond
//! reading the file and checking named files exist, and opens no store or connection (it
//! names the settings types and defaults of the crates it configures). The site turns a
//! [`SiteConfig`] into running parts.

mod duration;

pub use duration::{DurationError, parse_duration};

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use std::time::Duration;

use serde::Deserialize;
use tinyci_pki::SiteName;

/// The port `tinyci site up` listens on when nothing else is said.
pub const DEFAULT_PORT: u16 = 7433;
/// Default connection limit (each idle runner holds one connection).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// `site.max_connections_per_address` when not set: room for a host running many runners,
/// not for one host to take the site.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
/// `site.max_outstanding_calls` when not set: far above what a runner, a follower or the CLI
/// keeps in flight.
pub const DEFAULT_MAX_OUTSTANDING_CALLS: usize = 256;
/// Default LMDB map size: virtual address space, not disk; the file grows as data does.
pub const DEFAULT_MAP_SIZE_MIB: u64 = 4096;
/// Default `retention.max_repo_bytes`: what one repository's runs may store (logs and
/// artifacts) before its new submissions and artifacts are refused.
pub const DEFAULT_MAX_REPO_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// Default `store.max_map_size_mib`: the ceiling the map grows to as the store fills.
pub const DEFAULT_MAX_MAP_SIZE_MIB: u64 = 32768;

/// A validated site configuration with absolute paths.
#[derive(Clone, Debug)]
pub struct SiteConfig {
    /// Where it was read from (for messages), or `None` for embedded defaults.
    pub source: Option<PathBuf>,
    /// The site's name; must match its certificates.
    pub name: SiteName,
    /// Address the capnp-rpc mTLS listener binds.
    pub listen: SocketAddr,
    /// Most concurrent connections.
    pub max_connections: usize,
    /// Most concurrent connections from one IP address.
    pub max_connections_per_address: usize,
    /// Most calls one connection may have unanswered before the site stops reading it.
    pub max_outstanding_calls: usize,
    /// LMDB directory.
    pub data_dir: PathBuf,
    /// LMDB map size in MiB at open.
    pub map_size_mib: u64,
    /// The ceiling in MiB the LMDB map grows to as the store fills (at least `map_size_mib`).
    pub max_map_size_mib: u64,
    /// The site CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// The site CA key, for offline issuing (`runner add`); the running site never reads it.
    pub ca_key: Option<PathBuf>,
    /// The site's certificate (PEM).
    pub cert: PathBuf,
    /// The site's private key (PEM, mode 0600).
    pub key: PathBuf,
    /// The Biscuit root private key (mode 0600).
    pub root_key: PathBuf,
    /// The admin client certificate the local CLI uses.
    pub admin_cert: PathBuf,
    /// The admin client key the local CLI uses (mode 0600).
    pub admin_key: PathBuf,
    /// The admin grant token the local CLI redeems for an `Admin` capability (mode 0600).
    pub admin_token: PathBuf,
    /// Lease length and retry limit for runs.
    pub lease_policy: tinyci_core::LeasePolicy,
    /// Largest artifact accepted, in bytes (`artifacts.max_bytes`).
    pub artifact_max_bytes: u64,
    /// Largest log a run keeps, in bytes (`logs.max_run_bytes`); the rest is cut with a
    /// marker line.
    pub log_max_run_bytes: u64,
    /// When finished runs' logs and artifacts are deleted (`[retention]`).
    pub retention: RetentionPolicy,
    /// The HTTP listener (`[http]`): webhooks and OAuth. `None`: no HTTP served.
    pub http: Option<HttpConfig>,
    /// GitHub (`[github]`). `None`: no GitHub integration.
    pub github: Option<GitHubSettings>,
    /// Where partner pins live (`[federation] dir`).
    pub federation_dir: PathBuf,
    /// The key that seals job secrets at rest (`[secrets] key`; created at first start).
    pub secrets_key: PathBuf,
    /// `[discovery]`.
    pub discovery: Discovery,
    /// `[queues.NAME]`: which trust tiers each queue takes and how isolated their runs must
    /// be (the default for every queue not named).
    pub dispatch: tinyci_core::DispatchPolicy,
}

/// `[discovery]`: how sites find each other's addresses (never trust).
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    /// Announce this site over mDNS (`_tinyci._tcp.local.`) and look for others there.
    pub mdns: bool,
    /// Sites at fixed addresses: `(name, host:port)`.
    pub static_peers: Vec<(String, String)>,
}

impl Discovery {
    /// Static addresses given for `site`.
    pub fn static_addrs(&self, site: &str) -> Vec<String> {
        self.static_peers
            .iter()
            .filter(|(name, _)| name == site)
            .map(|(_, addr)| addr.clone())
            .collect()
    }
}

/// `[http]`: the site's plain-HTTP listener. Put a TLS-terminating proxy in front of it for
/// anything beyond loopback; `public_url` is what GitHub and browsers use to reach it.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// `https://ci.example.com` (no trailing slash): the base of webhook, OAuth callback and
    /// status target URLs. `None` until set; repositories cannot be enabled without it.
    pub public_url: Option<String>,
    /// Repositories (`owner/name`) whose run pages anyone may read without logging in
    /// (`public_repos`). Every other repository's pages need a GitHub login by a user GitHub
    /// lets read it.
    pub public_repos: BTreeSet<String>,
}

/// `[github]`.
#[derive(Clone, Debug)]
pub struct GitHubSettings {
    /// REST API base (`https://api.github.com`).
    pub api_url: String,
    /// Web base for OAuth (`https://github.com`).
    pub web_url: String,
    /// A file holding the token the site uses for repositories enabled without a user
    /// (mode 0600).
    pub token_file: Option<PathBuf>,
    /// The OAuth app's client id; login is off without it.
    pub client_id: Option<String>,
    /// A file holding the OAuth app's client secret (mode 0600).
    pub client_secret_file: Option<PathBuf>,
    /// The key that seals GitHub tokens and webhook secrets at rest (created if missing).
    pub secrets_key: PathBuf,
    /// Lifetime of the tokens `tinyci login` hands out.
    pub login_token_ttl: std::time::Duration,
    /// Capabilities a user gets at their first GitHub login, when `allow` admits them.
    pub default_capabilities: Vec<String>,
    /// Who gets `default_capabilities` at their first login (`[github] allow`); anyone else
    /// signs in holding nothing until an admin grants something.
    pub allow: Vec<GitHubAllow>,
}

/// One `[github] allow` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GitHubAllow {
    /// A GitHub login (`octocat`).
    User(String),
    /// Active members of an organization (`@octo-org`).
    Org(String),
    /// Active members of a team (`@octo-org/core`).
    Team(String, String),
}

impl GitHubAllow {
    /// Parses `octocat`, `@octo-org` or `@octo-org/core`.
    pub fn parse(text: &str) -> Result<Self, NotAnAllowEntry> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        let bad = || NotAnAllowEntry(text.to_owned());
        match text.strip_prefix('@') {
            Some(rest) => match rest.split_once('/') {
                Some((org, team)) if name_ok(org) && name_ok(team) => {
                    Ok(GitHubAllow::Team(org.to_owned(), team.to_owned()))
                }
                None if name_ok(rest) => Ok(GitHubAllow::Org(rest.to_owned())),
                _ => Err(bad()),
            },
            None if name_ok(text) => Ok(GitHubAllow::User(text.to_owned())),
            None => Err(bad()),
        }
    }
}

/// An `[github] allow` entry that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a GitHub login, @organization or @organization/team")]
pub struct NotAnAllowEntry(pub String);

/// Why a configuration was refused. Every variant names the file and the key or path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, a wrong type or a bad value.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// toml's message, which quotes the line and names the key.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("invalid config {path}: {key}: {reason}")]
    Value {
        /// The config file.
        path: PathBuf,
        /// Dotted key (`site.listen`).
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A file the config names does not exist.
    #[error("invalid config {path}: {key}: file not found: {file}")]
    MissingFile {
        /// The config file.
        path: PathBuf,
        /// Dotted key.
        key: &'static str,
        /// The resolved path that is missing.
        file: PathBuf,
    },
}

/// The on-disk shape. Private: callers get [`SiteConfig`], which is validated.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    site: RawSite,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    artifacts: RawArtifacts,
    #[serde(default)]
    logs: RawLogs,
    #[serde(default)]
    retention: RawRetention,
    tls: RawTls,
    grants: RawGrants,
    admin: RawAdmin,
    http: Option<RawHttp>,
    github: Option<RawGitHub>,
    #[serde(default)]
    federation: RawFederation,
    #[serde(default)]
    secrets: RawSecrets,
    #[serde(default)]
    discovery: RawDiscovery,
    #[serde(default)]
    queues: std::collections::BTreeMap<String, RawQueuePolicy>,
}

/// `[queues.NAME]`: each key left out keeps the default (see `site.toml.example`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueuePolicy {
    tiers: Option<Vec<String>>,
    #[serde(default)]
    isolation: std::collections::BTreeMap<String, String>,
    network: Option<Vec<String>>,
    #[serde(default)]
    privileged_repos: Vec<String>,
    pull: Option<String>,
    #[serde(default)]
    shares: std::collections::BTreeMap<String, u32>,
}

/// A `[queues.NAME]` value that is not acceptable. The message names the section and key
/// and quotes the parser's reason; the parser's error is kept.
#[derive(Debug, thiserror::Error)]
#[error("[queues.{queue}]{key}: {reason}{hint}")]
struct QueuePolicyError {
    queue: String,
    /// ` tiers`, ` isolation.repo`…, or empty for the queue's name itself.
    key: String,
    /// The parser's error, quoted in the message (so not a `source`, which would repeat it).
    reason: Box<dyn std::error::Error + Send + Sync>,
    /// What else the value may be, when the parser's reason does not say.
    hint: &'static str,
}

/// Validates the `[queues.NAME]` sections into the site's dispatch policy.
fn parse_dispatch(
    raw: std::collections::BTreeMap<String, RawQueuePolicy>,
) -> Result<tinyci_core::DispatchPolicy, QueuePolicyError> {
    use tinyci_core::{Isolation, QueuePolicy, TierPattern};
    let refused = |queue: &str, key: String, hint: &'static str| {
        let queue = queue.to_owned();
        move |e: Box<dyn std::error::Error + Send + Sync>| QueuePolicyError {
            queue,
            key,
            reason: e,
            hint,
        }
    };
    let patterns = |queue: &str, key: &str, list: Vec<String>| {
        list.iter()
            .map(|t| {
                t.parse::<TierPattern>().map_err(|e| {
                    refused(queue, format!(" {key}"), " (or partner for every partner)")(e.into())
                })
            })
            .collect::<Result<std::collections::BTreeSet<_>, _>>()
    };
    let mut policy = tinyci_core::DispatchPolicy::default();
    for (queue, raw) in raw {
        queue
            .parse::<tinyci_core::QueueName>()
            .map_err(|e| refused(&queue, String::new(), "")(e.into()))?;
        let mut rule = QueuePolicy::default();
        if let Some(tiers) = raw.tiers {
            rule.tiers = patterns(&queue, "tiers", tiers)?;
        }
        if let Some(network) = raw.network {
            rule.network = patterns(&queue, "network", network)?;
        }
        for (tier, level) in raw.isolation {
            let tier: TierPattern = tier.parse().map_err(|e: tinyci_core::TierError| {
                refused(&queue, " isolation".into(), " (or partner)")(e.into())
            })?;
            let level: Isolation = level.parse().map_err(|e: tinyci_core::IsolationError| {
                refused(&queue, format!(" isolation.{tier}"), "")(e.into())
            })?;
            rule.isolation.insert(tier, level);
        }
        for repo in raw.privileged_repos {
            repo.parse::<tinyci_core::RepoName>()
                .map_err(|e| refused(&queue, " privileged_repos".into(), "")(e.into()))?;
            rule.privileged_repos.insert(repo);
        }
        for (tier, weight) in raw.shares {
            let tier: TierPattern = tier.parse().map_err(|e: tinyci_core::TierError| {
                refused(&queue, " shares".into(), " (or partner)")(e.into())
            })?;
            if !(1..=QueuePolicy::MAX_SHARE).contains(&weight) {
                return Err(refused(&queue, format!(" shares.{tier}"), "")(
                    format!("weight {weight} is not 1-{}", QueuePolicy::MAX_SHARE).into(),
                ));
            }
            rule.shares.insert(tier, weight);
        }
        if let Some(pull) = raw.pull {
            rule.pull = Some(pull.parse().map_err(|e: tinyci_core::PullPolicyError| {
                refused(&queue, " pull".into(), "")(e.into())
            })?);
        }
        policy.queues.insert(queue, rule);
    }
    Ok(policy)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    #[serde(default)]
    mdns: bool,
    #[serde(default)]
    static_peers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFederation {
    #[serde(default = "default_federation_dir")]
    dir: PathBuf,
}

impl Default for RawFederation {
    fn default() -> Self {
        Self {
            dir: default_federation_dir(),
        }
    }
}

fn default_federation_dir() -> PathBuf {
    PathBuf::from("federation")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    #[serde(default = "default_secrets_key")]
    key: PathBuf,
}

impl Default for RawSecrets {
    fn default() -> Self {
        Self {
            key: default_secrets_key(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: ListenAddr,
    public_url: Option<String>,
    #[serde(default)]
    public_repos: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGitHub {
    #[serde(default = "default_github_api")]
    api_url: String,
    #[serde(default = "default_github_web")]
    web_url: String,
    token_file: Option<PathBuf>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    #[serde(default = "default_secrets_key")]
    secrets_key: PathBuf,
    #[serde(default = "default_login_token_days")]
    login_token_days: i64,
    #[serde(default = "default_user_capabilities")]
    default_capabilities: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
}

fn default_github_api() -> String {
    "https://api.github.com".into()
}
fn default_github_web() -> String {
    "https://github.com".into()
}
fn default_secrets_key() -> PathBuf {
    PathBuf::from("certs/secrets.key")
}
fn default_login_token_days() -> i64 {
    30
}
fn default_user_capabilities() -> Vec<String> {
    vec!["logs".into()]
}

/// Why a base URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BaseUrlError {
    #[error("{0:?} is not an http:// or https:// URL")]
    Scheme(String),
    #[error("{0:?} is not a base URL (expected scheme://host[:port][/path], no query)")]
    Shape(String),
}

/// Checks an `http(s)://host[:port][/path]` base URL and drops a trailing slash.
fn parse_base_url(text: &str) -> Result<String, BaseUrlError> {
    let trimmed = text.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(|| BaseUrlError::Scheme(text.to_owned()))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(BaseUrlError::Shape(text.to_owned()));
    }
    Ok(trimmed.to_owned())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: String,
    #[serde(default = "default_listen")]
    listen: ListenAddr,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_max_connections")]
    max_connections: i64,
    #[serde(default = "default_max_connections_per_address")]
    max_connections_per_address: i64,
    #[serde(default = "default_max_outstanding_calls")]
    max_outstanding_calls: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default = "default_map_size")]
    map_size_mib: i64,
    #[serde(default = "default_max_map_size")]
    max_map_size_mib: i64,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            map_size_mib: default_map_size(),
            max_map_size_mib: default_max_map_size(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    #[serde(default = "default_lease_seconds")]
    lease_seconds: i64,
    #[serde(default = "default_max_attempts")]
    max_attempts: i64,
}

impl Default for RawQueue {
    fn default() -> Self {
        Self {
            lease_seconds: default_lease_seconds(),
            max_attempts: default_max_attempts(),
        }
    }
}

fn default_lease_seconds() -> i64 {
    30
}
fn default_max_attempts() -> i64 {
    3
}

/// `[retention]`. Ages are durations like `30d`, `12h`, `90m`, `45s`, or `never`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    #[serde(default = "default_max_age")]
    logs_max_age: String,
    #[serde(default = "default_max_age")]
    artifacts_max_age: String,
    /// 0: no cap.
    #[serde(default)]
    max_total_bytes: i64,
    /// 0: no quota.
    #[serde(default = "default_max_repo_bytes")]
    max_repo_bytes: i64,
    #[serde(default = "default_sweep_every")]
    sweep_every: String,
}

impl Default for RawRetention {
    fn default() -> Self {
        Self {
            logs_max_age: default_max_age(),
            artifacts_max_age: default_max_age(),
            max_total_bytes: 0,
            max_repo_bytes: default_max_repo_bytes(),
            sweep_every: default_sweep_every(),
        }
    }
}

fn default_max_repo_bytes() -> i64 {
    DEFAULT_MAX_REPO_BYTES as i64
}

fn default_max_age() -> String {
    "30d".into()
}

fn default_sweep_every() -> String {
    "1h".into()
}

/// A retention age: `never`, or a duration in the grammar every flag uses too.
fn parse_age(text: &str) -> Result<Option<Duration>, DurationError> {
    match text {
        "never" => Ok(None),
        text => parse_duration(text).map(Some),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogs {
    #[serde(default = "default_log_max_run_bytes")]
    max_run_bytes: i64,
}

impl Default for RawLogs {
    fn default() -> Self {
        Self {
            max_run_bytes: default_log_max_run_bytes(),
        }
    }
}

fn default_log_max_run_bytes() -> i64 {
    i64::try_from(tinyci_logs::DEFAULT_MAX_RUN_LOG_BYTES).unwrap_or(i64::MAX)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifacts {
    #[serde(default = "default_artifact_max_bytes")]
    max_bytes: i64,
}

impl Default for RawArtifacts {
    fn default() -> Self {
        Self {
            max_bytes: default_artifact_max_bytes(),
        }
    }
}

fn default_artifact_max_bytes() -> i64 {
    i64::try_from(tinyci_assets::DEFAULT_MAX_ARTIFACT_BYTES).unwrap_or(i64::MAX)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_cert: PathBuf,
    ca_key: Option<PathBuf>,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    root_key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    cert: PathBuf,
    key: PathBuf,
    token: PathBuf,
}

fn default_listen() -> ListenAddr {
    ListenAddr(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        DEFAULT_PORT,
    ))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_max_connections() -> i64 {
    DEFAULT_MAX_CONNECTIONS as i64
}
fn default_max_outstanding_calls() -> i64 {
    DEFAULT_MAX_OUTSTANDING_CALLS as i64
}
fn default_max_connections_per_address() -> i64 {
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS as i64
}
fn default_map_size() -> i64 {
    DEFAULT_MAP_SIZE_MIB as i64
}
fn default_max_map_size() -> i64 {
    DEFAULT_MAX_MAP_SIZE_MIB as i64
}

/// `host:port` with a port-range message people can act on (the std parser only says
/// "invalid socket address syntax").
struct ListenAddr(SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_listen(&text)
            .map(ListenAddr)
            .map_err(serde::de::Error::custom)
    }
}

/// Why a listen address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// No `:port`.
    #[error("listen address {0:?} has no port (expected host:port)")]
    NoPort(String),
    /// The port is not a number.
    #[error("listen address {text:?}: port {port:?} is not a number")]
    PortNotNumber {
        /// The address given.
        text: String,
        /// Its port part.
        port: String,
    },
    /// The port is above 65535.
    #[error("listen address {text:?}: port {port} is out of range (0-65535; 0 picks a free port)")]
    PortRange {
        /// The address given.
        text: String,
        /// The port.
        port: u32,
    },
    /// The host is not an IP address.
    #[error(
        "listen address {text:?}: {host:?} is not an IP address (use 127.0.0.1, ::1 or 0.0.0.0)"
    )]
    NotIp {
        /// The address given.
        text: String,
        /// Its host part.
        host: String,
    },
}

/// Parses `127.0.0.1:7433`, `[::1]:7433` or `0.0.0.0:0` with specific errors.
pub fn parse_listen(text: &str) -> Result<SocketAddr, ListenError> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| ListenError::NoPort(text.to_owned()))?;
    let port: u32 = port.parse().map_err(|_| ListenError::PortNotNumber {
        text: text.to_owned(),
        port: port.to_owned(),
    })?;
    let port = u16::try_from(port).map_err(|_| ListenError::PortRange {
        text: text.to_owned(),
        port,
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().map_err(|_| ListenError::NotIp {
        text: text.to_owned(),
        host: host.to_owned(),
    })?;
    Ok(SocketAddr::new(ip, port))
}

impl SiteConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text` as if read from `path` (relative paths resolve against its directory).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let value = |key, reason: String| ConfigError::Value {
            path: path.to_owned(),
            key,
            reason,
        };
        let name = SiteName::new(&raw.site.name).map_err(|e| value("site.name", e.to_string()))?;
        let max_connections = usize::try_from(raw.site.max_connections)
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| {
                value(
                    "site.max_connections",
                    format!("{} is out of range (1-1000000)", raw.site.max_connections),
                )
            })?;
        let max_connections_per_address = usize::try_from(raw.site.max_connections_per_address)
            .ok()
            .filter(|n| (1..=max_connections).contains(n))
            .ok_or_else(|| {
                value(
                    "site.max_connections_per_address",
                    format!(
                        "{} is out of range (1-{max_connections}, site.max_connections)",
                        raw.site.max_connections_per_address
                    ),
                )
            })?;
        let max_outstanding_calls = usize::try_from(raw.site.max_outstanding_calls)
            .ok()
            .filter(|n| (1..=65_536).contains(n))
            .ok_or_else(|| {
                value(
                    "site.max_outstanding_calls",
                    format!(
                        "{} is out of range (1-65536)",
                        raw.site.max_outstanding_calls
                    ),
                )
            })?;
        let map_size_mib = u64::try_from(raw.store.map_size_mib)
            .ok()
            .filter(|n| (16..=1 << 24).contains(n))
            .ok_or_else(|| {
                value(
                    "store.map_size_mib",
                    format!(
                        "{} is out of range (16-16777216 MiB)",
                        raw.store.map_size_mib
                    ),
                )
            })?;
        let max_map_size_mib = u64::try_from(raw.store.max_map_size_mib)
            .ok()
            .filter(|n| (map_size_mib..=1 << 24).contains(n))
            .ok_or_else(|| {
                value(
                    "store.max_map_size_mib",
                    format!(
                        "{} is out of range (store.map_size_mib ({map_size_mib}) to 16777216 MiB)",
                        raw.store.max_map_size_mib
                    ),
                )
            })?;
        let lease_seconds = u64::try_from(raw.queue.lease_seconds)
            .ok()
            .filter(|n| (1..=86_400).contains(n))
            .ok_or_else(|| {
                value(
                    "queue.lease_seconds",
                    format!("{} is out of range (1-86400)", raw.queue.lease_seconds),
                )
            })?;
        let max_attempts = u32::try_from(raw.queue.max_attempts)
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                value(
                    "queue.max_attempts",
                    format!("{} is out of range (1-100)", raw.queue.max_attempts),
                )
            })?;
        // At least one chunk, at most 1 TiB: a larger "limit" is a typo, not a policy.
        let log_max_run_bytes = u64::try_from(raw.logs.max_run_bytes)
            .ok()
            .filter(|n| (1024..=1 << 40).contains(n))
            .ok_or_else(|| {
                value(
                    "logs.max_run_bytes",
                    format!(
                        "{} is out of range (1024 bytes to 1 TiB)",
                        raw.logs.max_run_bytes
                    ),
                )
            })?;
        let logs_max_age = parse_age(&raw.retention.logs_max_age)
            .map_err(|why| value("retention.logs_max_age", why.to_string()))?;
        let artifacts_max_age = parse_age(&raw.retention.artifacts_max_age)
            .map_err(|why| value("retention.artifacts_max_age", why.to_string()))?;
        let max_total_bytes = u64::try_from(raw.retention.max_total_bytes).map_err(|_| {
            value(
                "retention.max_total_bytes",
                format!(
                    "{} is negative (0 means no cap)",
                    raw.retention.max_total_bytes
                ),
            )
        })?;
        let max_repo_bytes = u64::try_from(raw.retention.max_repo_bytes).map_err(|_| {
            value(
                "retention.max_repo_bytes",
                format!(
                    "{} is negative (0 means no quota)",
                    raw.retention.max_repo_bytes
                ),
            )
        })?;
        let every = parse_duration(&raw.retention.sweep_every)
            .map_err(|why| value("retention.sweep_every", why.to_string()))?;
        if every.is_zero() {
            return Err(value(
                "retention.sweep_every",
                format!(
                    "{:?}: the sweeper needs an interval of at least 1s",
                    raw.retention.sweep_every
                ),
            ));
        }
        let retention = RetentionPolicy {
            logs_max_age,
            artifacts_max_age,
            max_total_bytes: (max_total_bytes > 0).then_some(max_total_bytes),
            max_repo_bytes: (max_repo_bytes > 0).then_some(max_repo_bytes),
            every,
        };
        let max_run = tinyci_assets::MAX_RUN_ARTIFACT_BYTES;
        let artifact_max_bytes = u64::try_from(raw.artifacts.max_bytes)
            .ok()
            .filter(|n| (1..=max_run).contains(n))
            .ok_or_else(|| {
                value(
                    "artifacts.max_bytes",
                    format!(
                        "{} is out of range (1-{max_run}, the per-run total)",
                        raw.artifacts.max_bytes
                    ),
                )
            })?;
        let lease = std::time::Duration::from_secs(lease_seconds);
        let lease_policy = tinyci_core::LeasePolicy {
            lease_duration: lease,
            heartbeat_interval: lease / 3,
            max_attempts,
        };
        let http = raw
            .http
            .map(|h| -> Result<HttpConfig, ConfigError> {
                Ok(HttpConfig {
                    listen: h.listen.0,
                    public_url: h
                        .public_url
                        .map(|u| {
                            parse_base_url(&u)
                                .map_err(|why| value("http.public_url", why.to_string()))
                        })
                        .transpose()?,
                    public_repos: h
                        .public_repos
                        .into_iter()
                        .map(|repo| match repo.parse::<tinyci_repos::RepoName>() {
                            Ok(_) => Ok(repo),
                            Err(e) => Err(value("http.public_repos", format!("{repo:?}: {e}"))),
                        })
                        .collect::<Result<_, _>>()?,
                })
            })
            .transpose()?;
        let github = raw
            .github
            .map(|g| -> Result<GitHubSettings, ConfigError> {
                let days = u64::try_from(g.login_token_days)
                    .ok()
                    .filter(|d| (1..=366).contains(d))
                    .ok_or_else(|| {
                        value(
                            "github.login_token_days",
                            format!("{} is out of range (1-366)", g.login_token_days),
                        )
                    })?;
                for cap in &g.default_capabilities {
                    cap.parse::<tinyci_users::Capability>()
                        .map_err(|e| value("github.default_capabilities", e.to_string()))?;
                }
                if g.client_id.is_some() != g.client_secret_file.is_some() {
                    return Err(value(
                        "github.client_id",
                        "client_id and client_secret_file go together (both set for OAuth \
                         login, neither without it)"
                            .into(),
                    ));
                }
                Ok(GitHubSettings {
                    api_url: parse_base_url(&g.api_url)
                        .map_err(|why| value("github.api_url", why.to_string()))?,
                    web_url: parse_base_url(&g.web_url)
                        .map_err(|why| value("github.web_url", why.to_string()))?,
                    token_file: g.token_file.map(|f| base.join(f)),
                    client_id: g.client_id,
                    client_secret_file: g.client_secret_file.map(|f| base.join(f)),
                    secrets_key: base.join(g.secrets_key),
                    login_token_ttl: std::time::Duration::from_secs(days * 86_400),
                    default_capabilities: g.default_capabilities,
                    allow: g
                        .allow
                        .iter()
                        .map(|a| {
                            GitHubAllow::parse(a)
                                .map_err(|why| value("github.allow", why.to_string()))
                        })
                        .collect::<Result<_, _>>()?,
                })
            })
            .transpose()?;
        if github.as_ref().is_some_and(|g| g.client_id.is_some())
            && http.as_ref().and_then(|h| h.public_url.as_ref()).is_none()
        {
            return Err(value(
                "github.client_id",
                "OAuth login needs [http] listen and public_url (GitHub redirects the browser \
                 back to public_url/oauth/callback)"
                    .into(),
            ));
        }
        let dispatch =
            parse_dispatch(raw.queues).map_err(|why| value("queues", why.to_string()))?;
        let mut static_peers = Vec::new();
        for peer in &raw.discovery.static_peers {
            let parsed = peer.split_once('@').filter(|(name, addr)| {
                SiteName::new(name).is_ok()
                    && addr
                        .rsplit_once(':')
                        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            });
            let (name, addr) = parsed.ok_or_else(|| {
                value(
                    "discovery.static_peers",
                    format!("{peer:?} is not name@host:port (e.g. beta@ci.beta.example:7433)"),
                )
            })?;
            static_peers.push((name.to_owned(), addr.to_owned()));
        }
        let config = Self {
            dispatch,
            discovery: Discovery {
                mdns: raw.discovery.mdns,
                static_peers,
            },
            federation_dir: base.join(raw.federation.dir),
            secrets_key: base.join(raw.secrets.key),
            http,
            github,
            source: Some(path.to_owned()),
            lease_policy,
            artifact_max_bytes,
            log_max_run_bytes,
            retention,
            name,
            listen: raw.site.listen.0,
            max_connections,
            max_connections_per_address,
            max_outstanding_calls,
            data_dir: base.join(raw.site.data_dir),
            map_size_mib,
            max_map_size_mib,
            ca_cert: base.join(raw.tls.ca_cert),
            ca_key: raw.tls.ca_key.map(|k| base.join(k)),
            cert: base.join(raw.tls.cert),
            key: base.join(raw.tls.key),
            root_key: base.join(raw.grants.root_key),
            admin_cert: base.join(raw.admin.cert),
            admin_key: base.join(raw.admin.key),
            admin_token: base.join(raw.admin.token),
        };
        config.check_files()?;
        Ok(config)
    }

    /// Everything of the site's a job must never see: private keys, tokens, secrets, the
    /// store, and the directories holding them (the sandbox hides these even when they lie
    /// inside a directory it shows).
    pub fn private_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![
            self.key.clone(),
            self.root_key.clone(),
            self.admin_key.clone(),
            self.admin_token.clone(),
            self.data_dir.clone(),
            self.secrets_key.clone(),
        ];
        paths.extend(self.ca_key.clone());
        if let Some(github) = &self.github {
            paths.push(github.secrets_key.clone());
            paths.extend(github.token_file.clone());
            paths.extend(github.client_secret_file.clone());
        }
        let dirs: Vec<PathBuf> = paths
            .iter()
            .filter(|p| **p != self.data_dir)
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        paths.extend(dirs);
        if let Some(source) = self.source.as_ref().and_then(|s| s.parent()) {
            paths.push(source.to_path_buf());
        }
        paths.sort();
        paths.dedup();
        paths
    }

    /// Every file the config names must exist. (Their contents are checked when loaded.)
    fn check_files(&self) -> Result<(), ConfigError> {
        let files: [(&'static str, &Path); 7] = [
            ("tls.ca_cert", &self.ca_cert),
            ("tls.cert", &self.cert),
            ("tls.key", &self.key),
            ("grants.root_key", &self.root_key),
            ("admin.cert", &self.admin_cert),
            ("admin.key", &self.admin_key),
            ("admin.token", &self.admin_token),
        ];
        let optional = [
            self.ca_key.as_deref().map(|k| ("tls.ca_key", k)),
            self.github
                .as_ref()
                .and_then(|g| g.token_file.as_deref())
                .map(|f| ("github.token_file", f)),
            self.github
                .as_ref()
                .and_then(|g| g.client_secret_file.as_deref())
                .map(|f| ("github.client_secret_file", f)),
        ];
        for (key, file) in files.into_iter().chain(optional.into_iter().flatten()) {
            if !file.is_file() {
                return Err(ConfigError::MissingFile {
                    path: self.source.clone().unwrap_or_default(),
                    key,
                    file: file.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The address a local client should dial: the listen address, with an unspecified IP
    /// (0.0.0.0, ::) replaced by loopback. `None` when the port is 0 (chosen at start).
    pub fn dial_addr(&self) -> Option<SocketAddr> {
        if self.listen.port() == 0 {
            return None;
        }
        let ip = match self.listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Some(SocketAddr::new(ip, self.listen.port()))
    }
}

/// The `site.toml` that `site init` writes: the embedded defaults, naming the files it made.
pub fn default_config_text(name: &SiteName) -> String {
    format!(
        r#"# Written by `tinyci site init`. Every key is documented in site.toml.example.
# Relative paths are relative to this file's directory.

[site]
name = "{name}"
listen = "127.0.0.1:{DEFAULT_PORT}"
data_dir = "data"

[tls]
ca_cert = "certs/ca.crt"
ca_key = "certs/ca.key"
cert = "certs/site.crt"
key = "certs/site.key"

[grants]
root_key = "certs/root.key"

[admin]
cert = "certs/admin.crt"
key = "certs/admin.key"
token = "certs/admin.token"
"#
    )
}

impl fmt::Display for SiteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "site {} on {}", self.name, self.listen)
    }
}

/// `[retention]`: how long finished runs keep their output, and a cap on all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete a finished run's log this long after it finished (`logs_max_age`).
    pub logs_max_age: Option<Duration>,
    /// Delete a finished run's artifacts this long after it finished (`artifacts_max_age`).
    pub artifacts_max_age: Option<Duration>,
    /// While logs and artifacts together exceed this, delete the output of the runs that
    /// finished longest ago (`max_total_bytes`).
    pub max_total_bytes: Option<u64>,
    /// What one repository's runs may store (logs and artifacts) before its new submissions
    /// and artifacts are refused (`max_repo_bytes`).
    pub max_repo_bytes: Option<u64>,
    /// How often the sweeper runs (`sweep_every`); it also runs once at start.
    pub every: Duration,
}

impl Default for RetentionPolicy {
    /// 30 days of logs and artifacts, no total cap, 8 GiB per repository, hourly sweeps.
    fn default() -> Self {
        let days = Duration::from_secs(30 * 24 * 3600);
        Self {
            logs_max_age: Some(days),
            artifacts_max_age: Some(days),
            max_total_bytes: None,
            max_repo_bytes: Some(DEFAULT_MAX_REPO_BYTES),
            every: Duration::from_secs(3600),
        }
    }
}
