//! `tinyci runner add`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use clap::{Args, Subcommand};
use tinyci_site::SiteConfig;
use tinyci_site::bundle::{NewRunner, RunnerBundle};

use crate::util::{InputError, config_path, parse_ttl};

#[derive(Debug, Subcommand)]
pub(crate) enum RunnerCommand {
    /// Provision a runner: issue its certificate and a `queue:take` grant into one bundle file.
    ///
    /// The bundle (mode 0600) is all a runner host needs: copy it there and start the runner
    /// with it. It needs the site's CA key and root key (tls.ca_key, grants.root_key), not a
    /// running site. The grant is bound to the runner's certificate and can be revoked with
    /// `tinyci token revoke`.
    ///
    /// Example: tinyci runner add r1 --queue default --queue gpu --addr ci.example.org:7433
    Add(AddArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    /// The runner's name (lowercase letters, digits, '.', '_', '-').
    name: String,
    /// A queue the runner takes jobs from (repeatable).
    #[arg(long = "queue", value_name = "QUEUE", required = true)]
    queues: Vec<String>,
    /// An address runners dial to reach the site (repeatable) [default: site.listen].
    #[arg(long = "addr", value_name = "HOST:PORT")]
    addresses: Vec<String>,
    /// Expire the runner's grant after this long (90s, 30m, 12h, 7d, 2w) [default: never;
    /// revoke it to retire the runner].
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    ttl: Option<Duration>,
    /// Where to write the bundle [default: NAME.bundle].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The site configuration [default: ./site.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub(crate) fn run(command: RunnerCommand) -> Result<()> {
    match command {
        RunnerCommand::Add(args) => add(args),
    }
}

fn add(args: AddArgs) -> Result<()> {
    let config = SiteConfig::load(&config_path(args.config))?;
    for addr in &args.addresses {
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(InputError(format!("--addr {addr:?}: expected HOST:PORT")).into());
        }
    }
    if args.addresses.is_empty() && config.dial_addr().is_none() {
        return Err(InputError(
            "site.listen has port 0, so the bundle would have no address; pass --addr HOST:PORT"
                .into(),
        )
        .into());
    }
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}.bundle", args.name)));
    if out.exists() {
        return Err(InputError(format!(
            "{} exists; refusing to overwrite a bundle (remove it or pass --out)",
            out.display()
        ))
        .into());
    }
    let bundle = RunnerBundle::issue(
        &config,
        &NewRunner {
            name: args.name.clone(),
            queues: args.queues,
            addresses: args.addresses,
            expires_at: args.ttl.map(|ttl| SystemTime::now() + ttl),
        },
    )
    .map_err(|e| -> anyhow::Error {
        use tinyci_site::bundle::BundleError;
        match e {
            BundleError::Grant(_) | BundleError::Pki(_) | BundleError::NoCaKey => {
                InputError(e.to_string()).into()
            }
            other => other.into(),
        }
    })?;
    bundle.write(&out)?;
    println!(
        "runner {} may take jobs from {} at site {}",
        bundle.runner,
        bundle.queues.join(", "),
        bundle.site
    );
    println!(
        "wrote {} (mode 0600): copy it to the runner host; it holds the runner's key",
        out.display()
    );
    Ok(())
}
