//! `tinyci login`, `tinyci admin user …`, `tinyci admin repo …`, and login profiles (what
//! `tinyci login` writes and `tinyci submit --profile DIR` reads).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt as _, Full};
use serde::{Deserialize, Serialize};
use tinyci_schema::{repo_info, user_info};
use tinyci_site::{SiteConfig, admin_capability, rpc_error};

use crate::jobs::SiteArgs;
use crate::util::{InputError, config_path, local_runtime};

/// Largest answer the login endpoints may send.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// How long `tinyci login` waits for the browser before giving up (the site's own limit).
const LOGIN_PATIENCE: Duration = Duration::from_secs(600);

/// Who manages users or repositories: the site's admin, or a site user through their
/// `tinyci login` profile (holding `modify:user` for users, `modify:ci` for repositories).
#[derive(Debug, Args)]
pub(crate) struct ManageArgs {
    #[command(flatten)]
    site: SiteArgs,
    /// Act as the user of a `tinyci login` profile directory instead of as the site's admin
    /// [env: TINYCI_PROFILE].
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
}

impl ManageArgs {
    /// The profile to act through: `--profile`, else `$TINYCI_PROFILE`, else with no site
    /// configuration here the sole login profile. Grants do not manage users or repositories.
    fn profile(&self) -> Result<Option<PathBuf>> {
        crate::util::resolve_profile(
            self.profile.clone(),
            self.site.config.is_some() || self.site.addr.is_some(),
        )
    }
}

/// Runs `f` with the user directory: the admin's, or a profile's user's (`Session.users`).
fn with_users(
    manage: ManageArgs,
    f: impl AsyncFnOnce(UserOps) -> Result<(), capnp::Error>,
) -> Result<()> {
    match manage.profile()? {
        None => with_admin(manage.site, async move |admin| {
            f(UserOps::Admin(admin)).await
        }),
        Some(dir) => with_profile(&dir, async move |session| {
            let users = session.users_request().send().pipeline.get_users();
            f(UserOps::Directory(users)).await
        }),
    }
}

/// Runs `f` with repository settings: the admin's, or a profile's user's (`Session.repos`).
fn with_repos(
    manage: ManageArgs,
    f: impl AsyncFnOnce(RepoOps) -> Result<(), capnp::Error>,
) -> Result<()> {
    match manage.profile()? {
        None => with_admin(manage.site, async move |admin| {
            f(RepoOps::Admin(admin)).await
        }),
        Some(dir) => with_profile(&dir, async move |session| {
            let repos = session.repos_request().send().pipeline.get_repos();
            f(RepoOps::Settings(repos)).await
        }),
    }
}

/// Runs `f` with a session of the profile's user, turning capnp errors into messages.
fn with_profile(
    dir: &std::path::Path,
    f: impl AsyncFnOnce(tinyci_schema::session::Client) -> Result<(), capnp::Error>,
) -> Result<()> {
    let profile = load_profile(dir)?;
    local_runtime()?.block_on(async move {
        let (client, session) = profile_session(&profile).await?;
        f(session).await.map_err(|e| rpc_error(&client, e))?;
        Ok(())
    })
}

/// Where user management goes.
enum UserOps {
    Admin(tinyci_schema::admin::Client),
    Directory(tinyci_schema::user_directory::Client),
}

/// Where repository management goes.
enum RepoOps {
    Admin(tinyci_schema::admin::Client),
    Settings(tinyci_schema::repo_settings::Client),
}

/// Manage site users: tinyCI's capabilities `submit`, `cancel`, `modify:ci`, `modify:user`,
/// `logs`, carried by the tokens users get at `tinyci login`.
#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Create a user.
    Add {
        /// The user's name (lowercase letters, digits, `.`, `_`, `-`).
        name: String,
        /// A capability to give (repeatable).
        #[arg(long = "cap", value_name = "CAPABILITY")]
        capabilities: Vec<String>,
        #[command(flatten)]
        site: ManageArgs,
    },
    /// List users with their capabilities and linked GitHub account.
    List {
        /// Print JSON: `[{"name", "github", "capabilities": [..]}]`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        site: ManageArgs,
    },
    /// Give or take away a capability.
    #[command(subcommand)]
    Cap(CapCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum CapCommand {
    /// Give a user a capability.
    Add {
        /// The user.
        name: String,
        /// The capability.
        capability: String,
        #[command(flatten)]
        site: ManageArgs,
    },
    /// Take a capability away from a user.
    Remove {
        /// The user.
        name: String,
        /// The capability.
        capability: String,
        #[command(flatten)]
        site: ManageArgs,
    },
}

/// Enable, disable and list GitHub repositories.
#[derive(Debug, Subcommand)]
pub(crate) enum RepoCommand {
    /// Create the repository's webhook (push, pull_request) and build what it reports.
    Enable {
        /// `owner/name`.
        name: String,
        /// Act with this site user's GitHub token (they must have logged in with GitHub)
        /// instead of the site's own ([github] token_file).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Readable without login on the web pages.
        #[arg(long)]
        public: bool,
        #[command(flatten)]
        site: ManageArgs,
    },
    /// Delete the repository's webhook and stop building it.
    Disable {
        /// `owner/name`.
        name: String,
        #[command(flatten)]
        site: ManageArgs,
    },
    /// List known repositories.
    List {
        /// Print JSON: `[{"name", "enabled", "public", "hook_id", "enabled_by", "github_user"}]`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        site: ManageArgs,
    },
}

/// Sign in to a site with GitHub and store a certificate and token for this machine.
///
/// Generates a key pair here (the private key never leaves this machine), asks the site for
/// a login link and a code, and waits while you open the link, enter the code (only your
/// terminal shows it, so a forwarded link completes nothing) and sign in with GitHub. The
/// site signs a certificate for your user and hands back a token carrying your capabilities.
/// Both are written to the profile directory; use it with `tinyci submit --profile DIR` and
/// `tinyci logs --profile DIR`.
#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// The site's HTTP base URL [default: [http] public_url of --config].
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// The site configuration to take the URL from [default: $TINYCI_CONFIG, else
    /// ./site.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where to write the profile [default: ~/.config/tinyci/<site>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Only print the login link; do not try to open a browser.
    #[arg(long)]
    no_browser: bool,
    /// Also ask GitHub for webhook rights, for a user who will enable repositories
    /// (`tinyci admin repo enable NAME --user USER`). Without it the login asks only to read
    /// the user, their organizations and the repositories they may read.
    #[arg(long)]
    repo_hooks: bool,
}

pub(crate) fn user(command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Add {
            name,
            capabilities,
            site,
        } => with_users(site, async move |users| {
            let count = u32::try_from(capabilities.len()).unwrap_or(u32::MAX);
            let fill = |mut list: capnp::text_list::Builder<'_>| {
                for (i, cap) in capabilities.iter().enumerate() {
                    list.set(u32::try_from(i).unwrap_or(u32::MAX), cap);
                }
            };
            let response = match users {
                UserOps::Admin(admin) => {
                    let mut request = admin.add_user_request();
                    request.get().set_name(&name);
                    fill(request.get().init_capabilities(count));
                    let response = request.send().promise.await?;
                    user_line(response.get()?.get_user()?)
                }
                UserOps::Directory(directory) => {
                    let mut request = directory.add_request();
                    request.get().set_name(&name);
                    fill(request.get().init_capabilities(count));
                    let response = request.send().promise.await?;
                    user_line(response.get()?.get_user()?)
                }
            };
            println!("added {response}");
            Ok(())
        }),
        UserCommand::List { json, site } => with_users(site, async move |users| {
            let show = |list: capnp::struct_list::Reader<'_, user_info::Owned>| {
                let users: Vec<_> = list.iter().collect();
                print_listing(
                    &users,
                    json,
                    "no users",
                    |u| user_json(*u),
                    |u| user_line(*u),
                );
            };
            match users {
                UserOps::Admin(admin) => {
                    let response = admin.users_request().send().promise.await?;
                    show(response.get()?.get_users()?);
                }
                UserOps::Directory(directory) => {
                    let response = directory.list_request().send().promise.await?;
                    show(response.get()?.get_users()?);
                }
            }
            Ok(())
        }),
        UserCommand::Cap(CapCommand::Add {
            name,
            capability,
            site,
        }) => set_capability(site, name, capability, true),
        UserCommand::Cap(CapCommand::Remove {
            name,
            capability,
            site,
        }) => set_capability(site, name, capability, false),
    }
}

fn set_capability(site: ManageArgs, name: String, capability: String, granted: bool) -> Result<()> {
    with_users(site, async move |users| {
        let line = match users {
            UserOps::Admin(admin) => {
                let mut request = admin.set_user_capability_request();
                request.get().set_name(&name);
                request.get().set_capability(&capability);
                request.get().set_granted(granted);
                let response = request.send().promise.await?;
                user_line(response.get()?.get_user()?)
            }
            UserOps::Directory(directory) => {
                let mut request = directory.set_capability_request();
                request.get().set_name(&name);
                request.get().set_capability(&capability);
                request.get().set_granted(granted);
                let response = request.send().promise.await?;
                user_line(response.get()?.get_user()?)
            }
        };
        println!("{line}");
        Ok(())
    })
}

pub(crate) fn repo(command: RepoCommand) -> Result<()> {
    match command {
        RepoCommand::Enable {
            name,
            user,
            public,
            site,
        } => with_repos(site, async move |repos| {
            eprintln!("creating the webhook of {name} on GitHub…");
            let github_user = user.as_deref().unwrap_or_default();
            let line = match repos {
                RepoOps::Admin(admin) => {
                    let mut request = admin.enable_repo_request();
                    request.get().set_name(&name);
                    request.get().set_github_user(github_user);
                    request.get().set_public(public);
                    let response = request.send().promise.await?;
                    repo_line(response.get()?.get_repo()?)
                }
                RepoOps::Settings(settings) => {
                    let mut request = settings.enable_request();
                    request.get().set_name(&name);
                    request.get().set_github_user(github_user);
                    request.get().set_public(public);
                    let response = request.send().promise.await?;
                    repo_line(response.get()?.get_repo()?)
                }
            };
            println!("enabled {line}");
            Ok(())
        }),
        RepoCommand::Disable { name, site } => with_repos(site, async move |repos| {
            let line = match repos {
                RepoOps::Admin(admin) => {
                    let mut request = admin.disable_repo_request();
                    request.get().set_name(&name);
                    let response = request.send().promise.await?;
                    repo_line(response.get()?.get_repo()?)
                }
                RepoOps::Settings(settings) => {
                    let mut request = settings.disable_request();
                    request.get().set_name(&name);
                    let response = request.send().promise.await?;
                    repo_line(response.get()?.get_repo()?)
                }
            };
            println!("disabled {line}");
            Ok(())
        }),
        RepoCommand::List { json, site } => with_repos(site, async move |repos| {
            let show = |list: capnp::struct_list::Reader<'_, repo_info::Owned>| {
                let repos: Vec<_> = list.iter().collect();
                print_listing(
                    &repos,
                    json,
                    "no repositories",
                    |r| repo_json(*r),
                    |r| repo_line(*r),
                );
            };
            match repos {
                RepoOps::Admin(admin) => {
                    let response = admin.repos_request().send().promise.await?;
                    show(response.get()?.get_repos()?);
                }
                RepoOps::Settings(settings) => {
                    let response = settings.list_request().send().promise.await?;
                    show(response.get()?.get_repos()?);
                }
            }
            Ok(())
        }),
    }
}

/// Prints `items` as a JSON array (`--json`), else one line each, or `empty` when there are
/// none.
pub(crate) fn print_listing<T>(
    items: &[T],
    json: bool,
    empty: &str,
    as_json: impl Fn(&T) -> serde_json::Value,
    as_line: impl Fn(&T) -> String,
) {
    if json {
        let list: Vec<serde_json::Value> = items.iter().map(as_json).collect();
        // Serializing a `Value` cannot fail.
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
    } else if items.is_empty() {
        println!("{empty}");
    } else {
        for item in items {
            println!("{}", as_line(item));
        }
    }
}

/// Runs `f` with the admin capability, turning capnp errors into messages naming the site.
pub(crate) fn with_admin(
    site: SiteArgs,
    f: impl AsyncFnOnce(tinyci_schema::admin::Client) -> Result<(), capnp::Error>,
) -> Result<()> {
    let config = SiteConfig::load(&config_path(site.config))?;
    local_runtime()?.block_on(async move {
        let (client, admin) = admin_capability(&config, site.addr).await?;
        f(admin).await.map_err(|e| rpc_error(&client, e))?;
        Ok(())
    })
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> String {
    t.ok().and_then(|t| t.to_string().ok()).unwrap_or_default()
}

fn capabilities(user: user_info::Reader<'_>) -> Vec<String> {
    user.get_capabilities()
        .map(|l| l.iter().map(text).collect())
        .unwrap_or_default()
}

fn user_line(user: user_info::Reader<'_>) -> String {
    let github = text(user.get_github());
    let caps = capabilities(user);
    format!(
        "{:<16} {:<24} {}",
        text(user.get_name()),
        if github.is_empty() {
            "(no GitHub login)".to_owned()
        } else {
            format!("github:{github}")
        },
        if caps.is_empty() {
            "(no capabilities)".to_owned()
        } else {
            caps.join(",")
        }
    )
}

fn user_json(user: user_info::Reader<'_>) -> serde_json::Value {
    serde_json::json!({
        "name": text(user.get_name()),
        "github": text(user.get_github()),
        "capabilities": capabilities(user),
    })
}

fn repo_line(repo: repo_info::Reader<'_>) -> String {
    let mut line = format!(
        "{:<32} {}",
        text(repo.get_name()),
        if repo.get_enabled() {
            format!("enabled (webhook {})", repo.get_hook_id())
        } else {
            "disabled".to_owned()
        }
    );
    if repo.get_public() {
        line.push_str(", public");
    }
    let user = text(repo.get_github_user());
    if !user.is_empty() {
        line.push_str(&format!(", acting as user {user}"));
    }
    line
}

fn repo_json(repo: repo_info::Reader<'_>) -> serde_json::Value {
    serde_json::json!({
        "name": text(repo.get_name()),
        "enabled": repo.get_enabled(),
        "public": repo.get_public(),
        "hook_id": repo.get_hook_id(),
        "enabled_by": text(repo.get_enabled_by()),
        "github_user": text(repo.get_github_user()),
    })
}

/// What `tinyci login` writes into its profile directory besides the PEM and token files.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Profile {
    /// The site's name.
    pub(crate) site: String,
    /// Its capnp address.
    pub(crate) addr: String,
    /// The site user.
    pub(crate) user: String,
    /// The linked GitHub login.
    pub(crate) github: String,
    /// When the token expires (Unix seconds).
    pub(crate) expires_at: u64,
}

pub(crate) const PROFILE_FILE: &str = "profile.toml";

/// A loaded login profile: how to connect and what to redeem.
pub(crate) struct LoadedProfile {
    pub(crate) profile: Profile,
    pub(crate) credentials: tinyci_pki::Credentials,
    pub(crate) ca_pem: String,
    pub(crate) token: String,
}

/// Connects to a profile's site with its user's certificate and redeems its token; the
/// session travels pipelined with whatever is asked of it next.
pub(crate) async fn profile_session(
    profile: &LoadedProfile,
) -> Result<(tinyci_site::SiteClient, tinyci_schema::session::Client)> {
    let site: tinyci_pki::SiteName = profile
        .profile
        .site
        .parse()
        .context("the profile names an invalid site")?;
    let (client, _) = tinyci_site::connect_as(
        &profile.profile.addr,
        &profile.credentials,
        &profile.ca_pem,
        &site,
    )
    .await?;
    let mut redeem = client.gateway.redeem_request();
    redeem.get().set_token(&profile.token);
    let session = redeem.send().pipeline.get_session();
    Ok((client, session))
}

/// Reads a profile directory written by `tinyci login`.
pub(crate) fn load_profile(dir: &Path) -> Result<LoadedProfile> {
    let read = |name: &str, secret: bool| -> Result<String> {
        tinyci_pki::read_text_file(&dir.join(name), secret)
            .with_context(|| format!("profile {}: cannot read {name}", dir.display()))
    };
    let profile: Profile = toml::from_str(&read(PROFILE_FILE, false)?)
        .map_err(|e| InputError(format!("profile {}: {PROFILE_FILE}: {e}", dir.display())))?;
    let credentials =
        tinyci_pki::Credentials::from_pem(&read("user.crt", false)?, &read("user.key", true)?)
            .with_context(|| {
                format!(
                    "profile {}: user.crt or user.key is unusable",
                    dir.display()
                )
            })?;
    Ok(LoadedProfile {
        profile,
        credentials,
        ca_pem: read("ca.crt", false)?,
        token: read("user.token", true)?.trim().to_owned(),
    })
}

#[derive(Deserialize)]
struct StartAnswer {
    login_url: String,
    user_code: String,
    poll: String,
}

#[derive(Deserialize)]
struct LoginAnswer {
    site: String,
    user: String,
    github_login: String,
    addr: String,
    cert_pem: String,
    ca_pem: String,
    token: String,
    capabilities: Vec<String>,
    expires_at: u64,
}

pub(crate) fn login(args: LoginArgs) -> Result<()> {
    let url = match args.url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let config = SiteConfig::load(&config_path(args.config))?;
            config.http.and_then(|h| h.public_url).ok_or_else(|| {
                InputError("give --url: the site config sets no [http] public_url".into())
            })?
        }
    };
    let (key_pem, csr_pem) = tinyci_pki::generate_csr()?;
    local_runtime()?.block_on(async move {
        let http = HttpClient::new()?;
        let (status, body) = http
            .post(
                &format!(
                    "{url}/oauth/cli/start{}",
                    if args.repo_hooks { "?hooks=1" } else { "" }
                ),
                csr_pem.into_bytes(),
            )
            .await?;
        if status != 200 {
            bail!(
                "the site refused to start a login ({status}): {}",
                error_of(&body)
            );
        }
        let start: StartAnswer =
            serde_json::from_slice(&body).context("the site's login answer is malformed")?;
        println!("Your login code: {}", start.user_code);
        println!("Sign in with GitHub to finish: {}", start.login_url);
        if !args.no_browser {
            open_browser(&start.login_url);
        }
        eprintln!("waiting for the browser (up to 10 minutes)…");
        let deadline = std::time::Instant::now() + LOGIN_PATIENCE;
        let answer: LoginAnswer = loop {
            if std::time::Instant::now() > deadline {
                bail!("no login within 10 minutes; run tinyci login again");
            }
            let (status, body) = http
                .post(
                    &format!("{url}/oauth/cli/poll"),
                    start.poll.clone().into_bytes(),
                )
                .await?;
            match status {
                202 => continue,
                200 => {
                    #[derive(Deserialize)]
                    struct Done {
                        login: LoginAnswer,
                    }
                    let done: Done = serde_json::from_slice(&body)
                        .context("the site's login answer is malformed")?;
                    break done.login;
                }
                _ => bail!("login failed ({status}): {}", error_of(&body)),
            }
        };
        let dir = match args.out {
            Some(dir) => dir,
            None => default_profile_dir(&answer.site)?,
        };
        write_profile(&dir, &key_pem, &answer)?;
        println!(
            "signed in to site {} as {} (GitHub {}), capabilities: {}; token expires {}",
            answer.site,
            answer.user,
            answer.github_login,
            if answer.capabilities.is_empty() {
                "none".to_owned()
            } else {
                answer.capabilities.join(", ")
            },
            tinyci_grant::format_time(
                std::time::UNIX_EPOCH + Duration::from_secs(answer.expires_at)
            ),
        );
        println!("profile written to {}", dir.display());
        Ok(())
    })
}

fn error_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned())
}

/// `~/.config/tinyci/<site>`. The site's name comes from the site's answer: a name that is
/// not a valid site name (`../..`, `/etc`) is refused before it becomes part of a path.
fn default_profile_dir(site: &str) -> Result<PathBuf> {
    let site = tinyci_pki::SiteName::new(site).map_err(|e| {
        InputError(format!(
            "the site answered with an invalid site name ({e}); refusing to write a profile for it"
        ))
    })?;
    let base = login_profiles_dir()
        .ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set; give --out DIR"))?;
    Ok(base.join(site.as_str()))
}

/// The one profile `tinyci login` wrote under its default place, if there is exactly one;
/// several are refused, naming them, rather than one picked by chance.
pub(crate) fn sole_login_profile() -> Result<Option<PathBuf>> {
    let Some(base) = login_profiles_dir() else {
        return Ok(None);
    };
    let Ok(entries) = std::fs::read_dir(&base) else {
        return Ok(None);
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|dir| dir.join(PROFILE_FILE).is_file())
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(InputError(format!(
            "no site configuration here and {} login profiles in {} ({}): say which with \
             --profile DIR or TINYCI_PROFILE",
            found.len(),
            base.display(),
            found
                .iter()
                .filter_map(|dir| dir.file_name())
                .map(|name| name.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
    }
}

/// Where `tinyci login` writes profiles: `$XDG_CONFIG_HOME/tinyci`, else `~/.config/tinyci`.
fn login_profiles_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|base| base.join("tinyci"))
}

fn write_profile(dir: &Path, key_pem: &str, answer: &LoginAnswer) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    tinyci_pki::write_secret_file(&dir.join("user.key"), key_pem.as_bytes())?;
    tinyci_pki::write_secret_file(
        &dir.join("user.token"),
        format!("{}\n", answer.token).as_bytes(),
    )?;
    tinyci_pki::write_public_file(&dir.join("user.crt"), answer.cert_pem.as_bytes())?;
    tinyci_pki::write_public_file(&dir.join("ca.crt"), answer.ca_pem.as_bytes())?;
    let profile = Profile {
        site: answer.site.clone(),
        addr: answer.addr.clone(),
        user: answer.user.clone(),
        github: answer.github_login.clone(),
        expires_at: answer.expires_at,
    };
    let text = toml::to_string(&profile).context("cannot write the profile")?;
    tinyci_pki::write_public_file(&dir.join(PROFILE_FILE), text.as_bytes())?;
    Ok(())
}

fn open_browser(url: &str) {
    // Best effort: a headless machine has no opener, and the link is printed anyway.
    let _ = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// A small HTTP(S) client for the login endpoints (hyper, rustls with the system's roots).
struct HttpClient {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
}

impl HttpClient {
    fn new() -> Result<Self> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .context("cannot load the system's root certificates")?
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(Self { client })
    }

    async fn post(&self, url: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>)> {
        let request = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from(body)))
            .with_context(|| format!("bad URL {url}"))?;
        let response = tokio::time::timeout(Duration::from_secs(60), self.client.request(request))
            .await
            .with_context(|| format!("{url} did not answer within 60s"))?
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow!("cannot read the answer of {url}: {e}"))?
            .to_bytes()
            .to_vec();
        Ok((status, body))
    }
}

#[cfg(test)]
mod profile_tests {
    use super::*;

    #[test]
    fn a_site_name_that_is_not_one_never_becomes_a_path() {
        for hostile in ["../../.ssh", "/etc", "a/b", "", "ALPHA"] {
            assert!(default_profile_dir(hostile).is_err(), "{hostile:?}");
        }
    }
}
