//! `tinyci federation add|list|remove`: the partner pins under `federation/`, and telling a
//! running site to follow them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tinyci_site::federation::{self, Partner};
use tinyci_site::{SiteConfig, admin_capability, rpc_error};

use crate::util::{InputError, config_path, local_runtime};

/// Pin, list and unpin partner sites (federation/<name>.toml).
///
/// A pin is the only way another site is trusted: its CA may then vouch for that site's own
/// identities here, and it is the one CA accepted when this host dials that site. What a
/// partner may do here is a grant (`tinyci grant --to site:NAME …`), not a pin.
#[derive(Debug, Subcommand)]
pub(crate) enum FederationCommand {
    /// Pin a partner's CA (check its fingerprint with the partner's operator out of band).
    Add(AddArgs),
    /// List pinned partners.
    List {
        /// Print JSON: `[{"site", "fingerprint", "addrs", "notes"}]`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        site: ConfigArgs,
    },
    /// Unpin a partner; a running site refuses it and closes its connections at once.
    Remove {
        /// The partner's site name.
        name: String,
        #[command(flatten)]
        site: ConfigArgs,
    },
}

/// `federation add`.
#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    /// The partner's site name (as in its certificates, tinyci://NAME/site).
    name: String,
    /// The partner's CA certificate (PEM), e.g. its certs/ca.crt.
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// Where to dial it (repeatable).
    #[arg(long = "addr", value_name = "HOST:PORT")]
    addrs: Vec<String>,
    /// Free text kept with the pin.
    #[arg(long, default_value = "")]
    notes: String,
    #[command(flatten)]
    site: ConfigArgs,
}

/// The site whose pins these are.
#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// The site configuration [default: $TINYCI_CONFIG, else ./site.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The running site's address, to tell it about the change [default: site.listen].
    #[arg(long = "site-addr", value_name = "HOST:PORT")]
    addr: Option<std::net::SocketAddr>,
}

pub(crate) fn federation(command: FederationCommand) -> Result<()> {
    match command {
        FederationCommand::Add(args) => add(args),
        FederationCommand::List { json, site } => list(json, &site),
        FederationCommand::Remove { name, site } => remove(&name, &site),
    }
}

fn add(args: AddArgs) -> Result<()> {
    let config = SiteConfig::load(&config_path(args.site.config.clone()))?;
    let ca = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("cannot read {}", args.ca.display()))?;
    let partner = federation::write_partner(
        &config.federation_dir,
        &config.name,
        &args.name,
        &ca,
        &args.addrs,
        &args.notes,
    )
    .map_err(|e| InputError(e.to_string()))?;
    println!(
        "pinned partner {} (CA sha256 {}) in {}",
        partner.site,
        partner.fingerprint,
        partner.path.display()
    );
    println!(
        "check that fingerprint with {}'s operator before granting it anything",
        partner.site
    );
    tell_site(&config, &args.site);
    Ok(())
}

fn list(json: bool, site: &ConfigArgs) -> Result<()> {
    let config = SiteConfig::load(&config_path(site.config.clone()))?;
    let partners = federation::load_partners(&config.federation_dir, &config.name)
        .map_err(|e| InputError(e.to_string()))?;
    let empty = format!("no partners pinned in {}", config.federation_dir.display());
    crate::github::print_listing(&partners, json, &empty, partner_json, partner_line);
    Ok(())
}

fn partner_line(partner: &Partner) -> String {
    format!(
        "{:<16} sha256 {}  {}{}",
        partner.site,
        partner.fingerprint,
        if partner.addrs.is_empty() {
            "(no address)".to_owned()
        } else {
            partner.addrs.join(", ")
        },
        if partner.notes.is_empty() {
            String::new()
        } else {
            format!("  # {}", partner.notes)
        }
    )
}

fn partner_json(partner: &Partner) -> serde_json::Value {
    serde_json::json!({
        "site": partner.site.to_string(),
        "fingerprint": partner.fingerprint.to_string(),
        "addrs": partner.addrs,
        "notes": partner.notes,
    })
}

fn remove(name: &str, site: &ConfigArgs) -> Result<()> {
    let config = SiteConfig::load(&config_path(site.config.clone()))?;
    if !federation::remove_partner(&config.federation_dir, name)
        .map_err(|e| InputError(e.to_string()))?
    {
        return Err(InputError(format!(
            "no partner {name} is pinned in {}",
            config.federation_dir.display()
        ))
        .into());
    }
    println!("unpinned partner {name}");
    tell_site(&config, site);
    Ok(())
}

/// Asks the running site to re-read its pins; says so when it is not running.
fn tell_site(config: &SiteConfig, site: &ConfigArgs) {
    let told = local_runtime().and_then(|runtime| {
        runtime.block_on(async {
            let (client, admin) = admin_capability(config, site.addr).await?;
            let response = admin
                .reload_federation_request()
                .send()
                .promise
                .await
                .map_err(|e| rpc_error(&client, e))?;
            let partners = response
                .get()
                .and_then(|r| r.get_partners())
                .map_err(|e| rpc_error(&client, e))?
                .iter()
                .map(|p| p.ok().and_then(|p| p.to_string().ok()).unwrap_or_default())
                .collect::<Vec<_>>();
            anyhow::Ok(partners)
        })
    });
    match told {
        Ok(partners) => println!(
            "the running site now trusts: {}",
            if partners.is_empty() {
                "no partners".to_owned()
            } else {
                partners.join(", ")
            }
        ),
        Err(e) => println!(
            "the site did not take the change now ({e:#}); it applies when the site starts"
        ),
    }
}

/// List tinyci sites announcing themselves over mDNS, plus static peers, and say which are
/// this site, which are pinned partners, and which are untrusted.
///
/// An announcement is only a claim: a site counts as own or partner only when the CA
/// fingerprint it announces matches this site's CA or the partner's pin (and connecting
/// checks the pin again in the TLS handshake).
#[derive(Debug, Args)]
pub(crate) struct PeersArgs {
    /// How long to listen for announcements.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = crate::util::parse_ttl)]
    timeout: std::time::Duration,
    /// Stop listening as soon as this site has been seen (repeatable).
    #[arg(long, value_name = "SITE")]
    expect: Vec<String>,
    /// Print JSON: `[{"site", "standing", "addrs", "ca_fingerprint", "source"}]`.
    #[arg(long)]
    json: bool,
    /// The site configuration [default: $TINYCI_CONFIG, else ./site.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// How a sighting relates to this site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Standing {
    /// This site (its own CA).
    Own,
    /// A pinned partner (the pinned CA).
    Partner,
    /// Anything else, and why.
    Untrusted(String),
}

impl Standing {
    fn word(&self) -> &'static str {
        match self {
            Standing::Own => "own",
            Standing::Partner => "partner",
            Standing::Untrusted(_) => "untrusted",
        }
    }
}

/// What this site trusts, to classify announcements with.
pub(crate) struct Trust {
    own: String,
    own_fingerprint: String,
    partners: Vec<Partner>,
}

impl Trust {
    pub(crate) fn load(config: &SiteConfig) -> Result<Self> {
        let ca = tinyci_pki::read_text_file(&config.ca_cert, false)?;
        let der = tinyci_pki::tls::parse_cert_pem(&ca)?;
        Ok(Self {
            own: config.name.to_string(),
            own_fingerprint: tinyci_pki::Fingerprint::of_der(&der).to_string(),
            partners: federation::load_partners(&config.federation_dir, &config.name)
                .map_err(|e| InputError(e.to_string()))?,
        })
    }

    /// The CA fingerprint this site accepts for `site`, if any.
    pub(crate) fn expected(&self, site: &str) -> Option<String> {
        if site == self.own {
            return Some(self.own_fingerprint.clone());
        }
        self.partners
            .iter()
            .find(|p| p.site.as_str() == site)
            .map(|p| p.fingerprint.to_string())
    }

    pub(crate) fn classify(&self, site: &str, fingerprint: &str) -> Standing {
        match self.expected(site) {
            Some(expected) if expected == fingerprint => {
                if site == self.own {
                    Standing::Own
                } else {
                    Standing::Partner
                }
            }
            Some(expected) => Standing::Untrusted(format!(
                "announces CA sha256 {fingerprint}, but {site}'s CA is sha256 {expected}"
            )),
            None => Standing::Untrusted(format!("{site} is not pinned here")),
        }
    }
}

pub(crate) fn peers(args: PeersArgs) -> Result<()> {
    let config = SiteConfig::load(&config_path(args.config.clone()))?;
    let trust = Trust::load(&config)?;
    let expect = args.expect.clone();
    let sightings =
        local_runtime()?.block_on(tinyci_net::discovery::browse(args.timeout, move |seen| {
            !expect.is_empty()
                && expect
                    .iter()
                    .all(|want| seen.iter().any(|s| &s.site == want))
        }))?;
    let mut rows = Vec::new();
    for s in &sightings {
        let standing = trust.classify(&s.site, &s.ca_fingerprint);
        rows.push((
            s.site.clone(),
            standing,
            s.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            s.ca_fingerprint.clone(),
            "mdns",
        ));
    }
    for (site, addr) in &config.discovery.static_peers {
        let standing = match trust.expected(site) {
            Some(_) if *site == trust.own => Standing::Own,
            Some(_) => Standing::Partner,
            None => Standing::Untrusted(format!("{site} is not pinned here")),
        };
        rows.push((
            site.clone(),
            standing,
            vec![addr.clone()],
            String::new(),
            "static",
        ));
    }
    if args.json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(site, standing, addrs, ca, source)| {
                serde_json::json!({
                    "site": site,
                    "standing": standing.word(),
                    "addrs": addrs,
                    "ca_fingerprint": ca,
                    "source": source,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "no sites found ({} of mDNS, no static peers)",
            humantime(args.timeout)
        );
    }
    for (site, standing, addrs, _, source) in &rows {
        let why = match standing {
            Standing::Untrusted(why) => format!("  ({why})"),
            _ => String::new(),
        };
        println!(
            "{site:<16} {:<9} {:<6} {}{why}",
            standing.word(),
            source,
            addrs.join(", ")
        );
    }
    Ok(())
}

fn humantime(d: std::time::Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
