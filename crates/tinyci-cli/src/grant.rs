//! `tinyci grant` and `tinyci token attenuate|inspect|revoke|list`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tinyci_grant::{Attenuation, GrantSpec, Holder, Right, UnverifiedToken, format_time, mint};
use tinyci_site::{SiteConfig, admin_capability, load_root_key, open_store_for_tool, rpc_error};

use crate::util::{InputError, config_path, emit_token, local_runtime, parse_ttl, read_token_arg};

/// Mint a grant: a Biscuit token naming exactly what its holder may do at this site.
///
/// Signed with the site's root key (grants.root_key in site.toml); no running site is needed.
/// The token is bound to its holder: it only works on a connection whose certificate is that
/// holder's (site:beta accepts any certificate from partner beta's pinned CA).
///
/// Example: tinyci grant --to site:beta --right queue:submit --right logs:read --repo org/x --ttl 7d --out beta.token
#[derive(Debug, Args)]
pub(crate) struct GrantArgs {
    /// Who may use it: site:NAME, runner:NAME, admin:NAME or user:NAME.
    #[arg(long = "to", value_name = "HOLDER")]
    to: String,
    /// A right (repeatable): queue:submit, queue:take, logs:read, logs:write, assets:read,
    /// admin, runs:cancel, repos:modify, users:modify.
    #[arg(long = "right", value_name = "RIGHT", required = true)]
    rights: Vec<String>,
    /// A repository the repo-scoped rights cover (repeatable; '*' for every repository).
    #[arg(long = "repo", value_name = "OWNER/NAME")]
    repos: Vec<String>,
    /// A queue queue:take covers (repeatable; '*' for every queue).
    #[arg(long = "queue", value_name = "QUEUE")]
    queues: Vec<String>,
    /// How long the grant works: 90s, 30m, 12h, 7d, 2w. Required unless --no-expiry.
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, required_unless_present = "no_expiry", conflicts_with = "no_expiry")]
    ttl: Option<Duration>,
    /// Mint a grant that never expires (it can still be revoked).
    #[arg(long)]
    no_expiry: bool,
    /// Write the token to FILE (mode 0600) instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The site configuration [default: $TINYCI_CONFIG, else ./site.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Narrow a token offline: the result can do no more than the original.
    ///
    /// Appends one block of checks. No site, key or network is needed, so a partner can
    /// narrow a token it was granted before handing it on (e.g. to one queue for one hour).
    Attenuate(AttenuateArgs),
    /// Show every block of a token as Datalog, with a one-line summary.
    Inspect(InspectArgs),
    /// Revoke a token (and every token attenuated from it) at the running site.
    ///
    /// Takes the token (text or file) or one revocation id from `tinyci token list`. Live
    /// capabilities obtained with it stop working at once. Uses the admin certificate and
    /// admin token from site.toml.
    Revoke(RevokeArgs),
    /// List the grants the site has minted, with their status.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AttenuateArgs {
    /// The token: its text, a file holding it, or - for standard input.
    token: String,
    /// Only this queue for queue-scoped rights (repeatable: any of them).
    #[arg(long = "queue", value_name = "QUEUE")]
    queues: Vec<String>,
    /// Only this repository for repo-scoped rights (repeatable: any of them).
    #[arg(long = "repo", value_name = "OWNER/NAME")]
    repos: Vec<String>,
    /// Only this right (repeatable: any of them).
    #[arg(long = "right", value_name = "RIGHT")]
    rights: Vec<String>,
    /// Expire after this long from now (90s, 30m, 12h, 7d, 2w).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    ttl: Option<Duration>,
    /// Write the token to FILE (mode 0600) instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The token: its text, a file holding it, or - for standard input.
    token: String,
}

#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// The token (text or file) or a revocation id.
    target: String,
    /// The site configuration [default: $TINYCI_CONFIG, else ./site.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Dial this address instead of site.listen.
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Print JSON: `[{"revocation_id", "holder", "rights", "scope", "expires", "status",
    /// "issued_by"}]` (the table's columns, as text).
    #[arg(long)]
    json: bool,
    /// The site configuration [default: $TINYCI_CONFIG, else ./site.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Dial this address instead of site.listen.
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<SocketAddr>,
}

fn input<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<T> {
    result.map_err(|e| InputError(e.to_string()).into())
}

fn rights(texts: &[String]) -> Result<Vec<Right>> {
    texts.iter().map(|r| input(r.parse::<Right>())).collect()
}

pub(crate) fn grant(args: GrantArgs) -> Result<()> {
    let config = SiteConfig::load(&config_path(args.config))?;
    let holder: Holder = input(args.to.parse())?;
    let spec = GrantSpec {
        site: config.name.to_string(),
        holder,
        rights: rights(&args.rights)?.into_iter().collect(),
        repos: args.repos.into_iter().collect(),
        queues: args.queues.into_iter().collect(),
        expires_at: args.ttl.map(|ttl| SystemTime::now() + ttl),
        single_use: false,
    };
    let root = load_root_key(&config)?;
    let (token, grant) = input(mint(&root, &spec))?;
    let store = open_store_for_tool(&config)?;
    tinyci_site::record_issued(&store, &grant, &issuer())
        .context("failed to record the grant in the site's store")?;
    emit_token(&token, args.out.as_deref())?;
    eprintln!("granted: {}", grant.summary());
    if let Some(id) = grant.revocation_ids.first() {
        eprintln!("revocation id: {id}");
    }
    Ok(())
}

/// Who minted a grant offline, for `token list`.
fn issuer() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("tinyci grant (user {user})")
}

pub(crate) fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Attenuate(args) => attenuate(args),
        TokenCommand::Inspect(args) => inspect(args),
        TokenCommand::Revoke(args) => revoke(args),
        TokenCommand::List(args) => list(args),
    }
}

fn attenuate(args: AttenuateArgs) -> Result<()> {
    let token = input(UnverifiedToken::parse(&read_token_arg(&args.token)?))?;
    let narrowing = Attenuation {
        queues: args.queues,
        repos: args.repos,
        rights: rights(&args.rights)?,
        expires_at: args.ttl.map(|ttl| SystemTime::now() + ttl),
    };
    let narrowed = input(token.attenuate(&narrowing))?;
    emit_token(&narrowed, args.out.as_deref())?;
    let summary = input(input(UnverifiedToken::parse(&narrowed))?.inspect())?;
    eprintln!("attenuated: {}", summary.grant.summary());
    Ok(())
}

fn inspect(args: InspectArgs) -> Result<()> {
    let token = input(UnverifiedToken::parse(&read_token_arg(&args.token)?))?;
    print!("{}", input(token.inspect())?);
    Ok(())
}

fn revoke(args: RevokeArgs) -> Result<()> {
    let config = SiteConfig::load(&config_path(args.config))?;
    let target = read_token_arg(&args.target)?;
    local_runtime()?.block_on(async move {
        let (client, admin) = admin_capability(&config, args.addr).await?;
        let mut request = admin.revoke_request();
        request.get().set_token_or_id(&target);
        let response = request
            .send()
            .promise
            .await
            .map_err(|e| rpc_error(&client, e))?;
        let ids = response
            .get()
            .and_then(|r| r.get_revoked_ids())
            .map_err(|e| rpc_error(&client, e))?;
        for id in ids.iter() {
            let id = id
                .and_then(|t| t.to_string().map_err(Into::into))
                .map_err(|e| rpc_error(&client, e))?;
            println!("revoked {id}");
        }
        Ok(())
    })
}

fn list(args: ListArgs) -> Result<()> {
    let config = SiteConfig::load(&config_path(args.config))?;
    local_runtime()?.block_on(async move {
        let (client, admin) = admin_capability(&config, args.addr).await?;
        let response = admin
            .grants_request()
            .send()
            .promise
            .await
            .map_err(|e| rpc_error(&client, e))?;
        let grants = response
            .get()
            .and_then(|r| r.get_grants())
            .map_err(|e| rpc_error(&client, e))?;
        let rows = grants
            .iter()
            .map(|g| grant_row(g))
            .collect::<capnp::Result<Vec<_>>>()
            .map_err(|e| rpc_error(&client, e))?;
        if args.json {
            let keys = [
                "revocation_id",
                "holder",
                "rights",
                "scope",
                "expires",
                "status",
                "issued_by",
            ];
            let list: Vec<serde_json::Value> = rows
                .iter()
                .map(|row| {
                    serde_json::Value::Object(
                        keys.iter()
                            .zip(row)
                            .map(|(k, v)| ((*k).to_owned(), v.clone().into()))
                            .collect(),
                    )
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
            return Ok(());
        }
        print_table(
            &[
                "REVOCATION ID",
                "HOLDER",
                "RIGHTS",
                "SCOPE",
                "EXPIRES",
                "STATUS",
                "ISSUED BY",
            ],
            &rows,
        );
        Ok(())
    })
}

fn grant_row(g: tinyci_schema::issued_grant::Reader<'_>) -> capnp::Result<Vec<String>> {
    let info = g.get_grant()?;
    let list = |l: capnp::text_list::Reader<'_>| -> capnp::Result<Vec<String>> {
        l.iter()
            .map(|t| t.and_then(|t| t.to_string().map_err(Into::into)))
            .collect()
    };
    let mut scope = Vec::new();
    for repo in list(info.get_repos()?)? {
        scope.push(format!("repo {repo}"));
    }
    for queue in list(info.get_queues()?)? {
        scope.push(format!("queue {queue}"));
    }
    let expires = match info.get_expires_at() {
        0 => "never".to_owned(),
        ms => format_time(UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())),
    };
    let expired = info.get_expires_at() != 0
        && UNIX_EPOCH + Duration::from_millis(info.get_expires_at().unsigned_abs())
            <= SystemTime::now();
    let status = if g.get_revoked() {
        "revoked"
    } else if expired {
        "expired"
    } else {
        "active"
    };
    let id = list(info.get_revocation_ids()?)?
        .first()
        .cloned()
        .unwrap_or_default();
    Ok(vec![
        id,
        info.get_holder()?.to_string()?,
        list(info.get_rights()?)?.join(","),
        if scope.is_empty() {
            "-".into()
        } else {
            scope.join(", ")
        },
        expires,
        status.to_owned(),
        g.get_issued_by()?.to_string()?,
    ])
}

/// Left-aligned columns separated by two spaces.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
