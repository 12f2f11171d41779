//! Acting with a grant rather than the admin token: at this site (`--token`), or at a partner
//! site pinned under `federation/` (`--site NAME --token FILE`), where this host connects with
//! its own site certificate and the partner's pinned CA is the only one it accepts.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Args;
use tinyci_schema::{log_reader, session};
use tinyci_site::{SiteClient, SiteConfig, connect_admin, connect_partner, rpc_error};

use crate::util::{InputError, read_token_arg};

/// `--site NAME --token FILE`.
#[derive(Debug, Args, Clone)]
pub(crate) struct GrantArgs {
    /// Act at this partner site (pinned under federation/; its address from the pin unless
    /// --addr) instead of at this one. Needs a grant: --token or TINYCI_TOKEN.
    #[arg(long, value_name = "SITE")]
    pub(crate) site: Option<String>,
    /// Act with this grant (text, file, or - for standard input) instead of the admin token
    /// [env: TINYCI_TOKEN, which `ps` does not show].
    #[arg(long, value_name = "TOKEN")]
    pub(crate) token: Option<String>,
}

impl GrantArgs {
    /// Takes the grant from `$TINYCI_TOKEN` when `--token` is not given; a partner `--site`
    /// without any grant is refused here, saying what it needs.
    pub(crate) fn resolved(mut self) -> Result<Self> {
        if self.token.is_none() {
            self.token = crate::util::env_token()?;
        }
        self.check_site()?;
        Ok(self)
    }

    /// A partner `--site` needs a grant to present there.
    pub(crate) fn check_site(&self) -> Result<()> {
        match (&self.site, &self.token) {
            (Some(site), None) => Err(crate::util::UsageError(format!(
                "--site {site} needs a grant to present there: --token or TINYCI_TOKEN"
            ))
            .into()),
            _ => Ok(()),
        }
    }
}

/// Connects (to this site, or to partner `site`) and redeems `token`: returns the session.
/// Redemption travels pipelined with whatever the caller asks of the session next.
pub(crate) async fn session_with(
    config: &SiteConfig,
    addr: Option<SocketAddr>,
    site: Option<&str>,
    token: &str,
) -> Result<(SiteClient, session::Client)> {
    let token = read_token_arg(token)?;
    let client = match site.filter(|s| *s != config.name.as_str()) {
        Some(partner) => {
            connect_partner(config, partner, addr.map(|a| a.to_string()))
                .await
                .with_context(|| format!("cannot reach partner site {partner}"))?
                .0
        }
        None => connect_admin(config, addr).await?.0,
    };
    let mut redeem = client.gateway.redeem_request();
    redeem.get().set_token(&token);
    let session = redeem.send().pipeline.get_session();
    Ok((client, session))
}

/// A `LogReader` of `repo` (else the grant's only repository) through a grant.
pub(crate) async fn grant_log_reader(
    client: &SiteClient,
    session: &session::Client,
    repo: Option<&str>,
) -> Result<log_reader::Client> {
    let repo = match repo {
        Some(repo) => repo.to_owned(),
        None => only_repo(client, session).await?,
    };
    let mut request = session.logs_request();
    request.get().init_scope().set_repo(&repo);
    Ok(request.send().pipeline.get_reader())
}

/// The one repository a grant names.
async fn only_repo(client: &SiteClient, session: &session::Client) -> Result<String> {
    let response = session
        .grant_request()
        .send()
        .promise
        .await
        .map_err(|e| rpc_error(client, e))?;
    let repos: Vec<String> = response
        .get()
        .and_then(|r| r.get_grant())
        .and_then(|g| g.get_repos())
        .and_then(|list| {
            list.iter()
                .map(|r| Ok(r?.to_string()?))
                .collect::<capnp::Result<Vec<_>>>()
        })
        .map_err(|e| rpc_error(client, e))?;
    match repos.as_slice() {
        [only] if only != "*" => Ok(only.clone()),
        [] => Err(InputError("the grant names no repository to read".into()).into()),
        many => Err(InputError(format!(
            "the grant covers {}; say which repository with --repo",
            many.join(", ")
        ))
        .into()),
    }
}
