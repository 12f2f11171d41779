//! `tinyci secret set|list|rm`: a repository's job secrets, as the site's admin, a
//! `tinyci login` profile's user (the `secrets` capability and GitHub admin on the
//! repository) or a grant's holder (`secrets:manage`). Values go in; nothing prints one.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use tinyci_schema::{secret_info, secret_store};
use tinyci_site::{SiteClient, SiteConfig, admin_capability, rpc_error};

use crate::jobs::SiteArgs;
use crate::util::{config_path, local_runtime};

/// The largest value `secret set` reads (the site refuses more too).
const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The shortest value the site accepts (`tinyci_core::MIN_SECRET_LEN`; it checks too, this
/// only refuses before connecting).
const MIN_VALUE_BYTES: usize = 6;

#[derive(Debug, Subcommand)]
pub(crate) enum SecretCommand {
    /// Create or replace a secret. The value is read from --file, else from standard input
    /// (one trailing newline is dropped from standard input, so `echo value |` works). It
    /// must be at least 6 bytes: shorter values cannot be masked in logs.
    ///
    /// A run gets the secret when it is a run of --repo on a ref --ref matches, submitted by a
    /// tier --tier names; a variable named NAME, or with --as-file a file NAME in
    /// $TINYCI_SECRETS_DIR. Fork pull requests and partner sites get it only when --tier
    /// names them (fork, partner, partner:SITE).
    Set(SetArgs),
    /// List secrets: repository, name, refs, tiers, how delivered, who set them and when.
    /// Never a value.
    ///
    /// --json prints `[{"repo", "name", "ref", "tiers": [..], "as_file", "set_by",
    /// "set_at"}]` (Unix ms).
    List(ListArgs),
    /// Remove a secret: no run gets it from now on, and running jobs that had it have its
    /// file deleted (and its variable dropped for what they start later) now.
    Rm(RmArgs),
}

/// Who acts: the site's admin (default), a profile's user, or a grant's holder.
#[derive(Debug, Args)]
pub(crate) struct Acting {
    /// Act as the user of a `tinyci login` profile directory [env: TINYCI_PROFILE].
    #[arg(long, value_name = "DIR", conflicts_with = "token")]
    profile: Option<PathBuf>,
    /// Act with this grant (text, file, or - for standard input) instead of the admin token
    /// [env: TINYCI_TOKEN, which `ps` does not show].
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    #[command(flatten)]
    site: SiteArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SetArgs {
    /// The secret's name: its variable or file name, `[A-Z_][A-Z0-9_]*`.
    name: String,
    /// The repository whose runs get it (OWNER/NAME).
    #[arg(long, value_name = "OWNER/NAME")]
    repo: String,
    /// Refs it is for: a branch or tag name (`main`), a pattern (`release/*`), or a full ref
    /// (`refs/heads/main`).
    #[arg(long = "ref", value_name = "PATTERN", default_value = "*")]
    ref_pattern: String,
    /// Trust tiers it is for, comma-separated: local, repo, fork, partner, partner:SITE.
    #[arg(
        long,
        value_name = "TIERS",
        value_delimiter = ',',
        default_value = "local,repo"
    )]
    tier: Vec<String>,
    /// Read the value from this file instead of standard input.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Deliver it as a file in the run's $TINYCI_SECRETS_DIR instead of a variable.
    #[arg(long)]
    as_file: bool,
    #[command(flatten)]
    acting: Acting,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only this repository's secrets [default: every repository; a profile or grant must
    /// name one].
    #[arg(long, value_name = "OWNER/NAME")]
    repo: Option<String>,
    /// Print JSON (the shape is in this command's help).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    acting: Acting,
}

#[derive(Debug, Args)]
pub(crate) struct RmArgs {
    /// The secret's name.
    name: String,
    /// Its repository [default: the one repository holding a secret of this name].
    #[arg(long, value_name = "OWNER/NAME")]
    repo: Option<String>,
    #[command(flatten)]
    acting: Acting,
}

pub(crate) fn secret(command: SecretCommand) -> Result<()> {
    match command {
        SecretCommand::Set(args) => set(args),
        SecretCommand::List(args) => list(args),
        SecretCommand::Rm(args) => rm(args),
    }
}

/// Runs `f` with the secret store of `repo` as whoever `acting` says.
fn with_store<T>(
    acting: &Acting,
    repo: &str,
    f: impl AsyncFnOnce(secret_store::Client) -> Result<T, capnp::Error>,
) -> Result<T> {
    let (profile, token) = crate::util::resolve_actor(
        acting.profile.clone(),
        acting.token.clone(),
        acting.site.config.is_some() || acting.site.addr.is_some(),
    )?;
    let profile = profile
        .as_deref()
        .map(crate::github::load_profile)
        .transpose()?;
    let config = match &profile {
        Some(_) => None,
        None => Some(SiteConfig::load(&config_path(acting.site.config.clone()))?),
    };
    let repo = repo.to_owned();
    local_runtime()?.block_on(async move {
        let (client, store): (SiteClient, secret_store::Client) = match (&profile, &config, &token)
        {
            (Some(profile), _, _) => {
                let (client, session) = crate::github::profile_session(profile).await?;
                let mut request = session.secrets_request();
                request.get().set_repo(&repo);
                (client, request.send().pipeline.get_secrets())
            }
            (None, Some(config), Some(token)) => {
                let (client, session) =
                    crate::remote::session_with(config, acting.site.addr, None, token).await?;
                let mut request = session.secrets_request();
                request.get().set_repo(&repo);
                (client, request.send().pipeline.get_secrets())
            }
            (None, Some(config), None) => {
                let (client, admin) = admin_capability(config, acting.site.addr).await?;
                let mut request = admin.secrets_request();
                request.get().set_repo(&repo);
                (client, request.send().pipeline.get_secrets())
            }
            (None, None, _) => bail!("no site configuration to act with"),
        };
        let value = f(store).await.map_err(|e| rpc_error(&client, e))?;
        Ok(value)
    })
}

/// Reads the value: the whole file, or standard input less one trailing newline. Bounded.
fn read_value(file: Option<&PathBuf>) -> Result<Vec<u8>> {
    let mut value = Vec::new();
    match file {
        Some(path) => {
            std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .take(MAX_VALUE_BYTES as u64 + 1)
                .read_to_end(&mut value)
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        None => {
            std::io::stdin()
                .take(MAX_VALUE_BYTES as u64 + 1)
                .read_to_end(&mut value)
                .context("cannot read the value from standard input")?;
            if value.ends_with(b"\n") {
                value.pop();
                if value.ends_with(b"\r") {
                    value.pop();
                }
            }
        }
    }
    if value.len() > MAX_VALUE_BYTES {
        bail!("the value is over {MAX_VALUE_BYTES} bytes; a secret may be at most that");
    }
    if value.len() < MIN_VALUE_BYTES {
        bail!(
            "the value is {} bytes; a secret must be at least {} bytes, or masking it would mangle logs",
            value.len(),
            MIN_VALUE_BYTES
        );
    }
    Ok(value)
}

fn set(args: SetArgs) -> Result<()> {
    let value = read_value(args.file.as_ref())?;
    let (name, repo) = (args.name.clone(), args.repo.clone());
    with_store(&args.acting, &args.repo, async move |store| {
        let mut request = store.set_request();
        {
            let mut p = request.get();
            p.set_repo(&repo);
            p.set_name(&name);
            p.set_ref_pattern(&args.ref_pattern);
            let mut tiers = p.reborrow().init_tiers(len(args.tier.len()));
            for (i, tier) in args.tier.iter().enumerate() {
                tiers.set(len(i), tier.trim());
            }
            p.set_as_file(args.as_file);
            p.set_value(&value);
        }
        let response = request.send().promise.await?;
        let info = response.get()?.get_secret()?;
        println!("secret {} set: {}", text(info.get_name()), describe(info));
        Ok(())
    })
}

fn list(args: ListArgs) -> Result<()> {
    let repo = args.repo.clone().unwrap_or_else(|| "*".to_owned());
    let json = args.json;
    with_store(&args.acting, &repo, async move |store| {
        let response = store.list_request().send().promise.await?;
        let secrets = response.get()?.get_secrets()?;
        if json {
            let rows: Vec<serde_json::Value> = secrets
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "repo": text(s.get_repo()),
                        "name": text(s.get_name()),
                        "ref": text(s.get_ref_pattern()),
                        "tiers": tiers(s),
                        "as_file": s.get_as_file(),
                        "set_by": text(s.get_set_by()),
                        "set_at": s.get_set_at(),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).unwrap_or_default()
            );
            return Ok(());
        }
        if secrets.is_empty() {
            println!("no secrets");
        }
        for s in secrets.iter() {
            println!(
                "{:<24} {:<24} {}",
                text(s.get_repo()),
                text(s.get_name()),
                describe(s)
            );
        }
        Ok(())
    })
}

fn rm(args: RmArgs) -> Result<()> {
    let name = args.name.clone();
    let repo = match args.repo.clone() {
        Some(repo) => repo,
        None => only_repo_holding(&args.acting, &name)?,
    };
    with_store(&args.acting, &repo.clone(), async move |store| {
        let mut request = store.remove_request();
        request.get().set_repo(&repo);
        request.get().set_name(&name);
        request.send().promise.await?;
        println!("secret {name} of {repo} removed");
        Ok(())
    })
}

/// The one repository holding a secret named `name`, among those the caller may list.
fn only_repo_holding(acting: &Acting, name: &str) -> Result<String> {
    let wanted = name.to_owned();
    let repos = with_store(acting, "*", async move |store| {
        let response = store.list_request().send().promise.await?;
        let secrets = response.get()?.get_secrets()?;
        Ok(secrets
            .iter()
            .filter(|s| text(s.get_name()) == wanted)
            .map(|s| text(s.get_repo()))
            .collect::<Vec<String>>())
    })
    .context("finding the secret's repository (give --repo to name it)")?;
    match repos.as_slice() {
        [repo] => Ok(repo.clone()),
        [] => bail!("no repository holds a secret named {name}"),
        several => bail!(
            "{} repositories hold a secret named {name} ({}): say which with --repo",
            several.len(),
            several.join(", ")
        ),
    }
}

fn tiers(s: secret_info::Reader<'_>) -> Vec<String> {
    s.get_tiers()
        .map(|l| l.iter().map(text).collect())
        .unwrap_or_default()
}

/// "ref main for local,repo as a variable; set by … at …".
fn describe(s: secret_info::Reader<'_>) -> String {
    let at = u64::try_from(s.get_set_at()).unwrap_or(0);
    format!(
        "ref {} for {} as a {}; set by {} at {}",
        text(s.get_ref_pattern()),
        tiers(s).join(","),
        if s.get_as_file() { "file" } else { "variable" },
        text(s.get_set_by()),
        tinyci_grant::format_time(std::time::UNIX_EPOCH + std::time::Duration::from_millis(at)),
    )
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> String {
    t.ok().and_then(|t| t.to_string().ok()).unwrap_or_default()
}

fn len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
