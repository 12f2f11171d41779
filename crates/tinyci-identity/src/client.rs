//! Reaching one's own site as its admin (the local CLI's side of `site status`).

use std::net::SocketAddr;

use tinyci_net::{ClientConnection, NetLimits};
use tinyci_pki::PeerIdentity;
use tinyci_schema::{admin, gateway};

use tinyci_config::SiteConfig;

use crate::{IdentityError, load_credentials, read_pem};

/// A confirmed connection to a site: the gateway answered `info`, so the site accepted our
/// certificate (under TLS 1.3 that is only known after a first call).
pub struct SiteClient {
    /// The site's bootstrap capability.
    pub gateway: gateway::Client,
    /// Keeps the connection open; dropping it closes the connection.
    pub connection: ClientConnection,
    /// The address dialed.
    pub addr: String,
}

impl std::fmt::Debug for SiteClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SiteClient {
    /// Calls `Gateway.info`.
    pub async fn info(&self) -> Result<SiteInfo, IdentityError> {
        let rpc = |source| IdentityError::Rpc {
            addr: self.addr.clone(),
            source,
        };
        let response = self
            .gateway
            .info_request()
            .send()
            .promise
            .await
            .map_err(rpc)?;
        let info = response.get().and_then(|r| r.get_info()).map_err(rpc)?;
        let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, IdentityError> {
            t.and_then(|t| t.to_string().map_err(Into::into))
                .map_err(rpc)
        };
        Ok(SiteInfo {
            site_id: text(info.get_site_id())?,
            version: text(info.get_version())?,
            ca_fingerprint: text(info.get_ca_fingerprint())?,
            uptime_millis: info.get_uptime_millis(),
            protocol: info.get_protocol(),
            peer: text(info.get_peer())?,
        })
    }
}

/// `Gateway.info`, as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteInfo {
    /// The site's name.
    pub site_id: String,
    /// Its tinyci version.
    pub version: String,
    /// Its CA fingerprint.
    pub ca_fingerprint: String,
    /// Milliseconds since it started serving.
    pub uptime_millis: u64,
    /// Wire protocol revision.
    pub protocol: u32,
    /// How it identified us.
    pub peer: String,
}

/// Dials the site described by `config` with its `[admin]` certificate and confirms the
/// connection with one `Gateway.info` call. `addr` overrides the configured address.
/// Must run inside a `LocalSet`.
pub async fn connect_admin(
    config: &SiteConfig,
    addr: Option<SocketAddr>,
) -> Result<(SiteClient, SiteInfo), IdentityError> {
    let addr = addr.or_else(|| config.dial_addr()).ok_or_else(|| {
        IdentityError::NoAddress(format!(
            "site.listen in {} has port 0 (chosen when the site starts); pass --addr HOST:PORT",
            config
                .source
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ))
    })?;
    let credentials = load_credentials(
        "admin.cert",
        &config.admin_cert,
        "admin.key",
        &config.admin_key,
    )?;
    let ca_pem = read_pem(&config.ca_cert, "tls.ca_cert", false)?;
    let tls = tinyci_pki::tls::client_config(&credentials, &ca_pem, config.name.clone()).map_err(
        |source| IdentityError::Credentials {
            key: "admin.cert",
            path: config.admin_cert.clone(),
            source,
        },
    )?;
    let addr = addr.to_string();
    let (gateway, connection) =
        tinyci_net::dial::<gateway::Client>(&addr, tls, &config.name, &NetLimits::default())
            .await?;
    let client = SiteClient {
        gateway,
        connection,
        addr,
    };
    let info = client.info().await?;
    debug_assert!(info.peer.parse::<PeerIdentity>().is_ok());
    Ok((client, info))
}

/// Dials `addr` as `credentials`, accepting only the site `site` certified by `ca_pem`, and
/// confirms the connection with one `Gateway.info` call. Must run inside a `LocalSet`.
pub async fn connect_as(
    addr: &str,
    credentials: &tinyci_pki::Credentials,
    ca_pem: &str,
    site: &tinyci_pki::SiteName,
) -> Result<(SiteClient, SiteInfo), IdentityError> {
    let tls =
        tinyci_pki::tls::client_config(credentials, ca_pem, site.clone()).map_err(|source| {
            IdentityError::Credentials {
                key: "certificate",
                path: Default::default(),
                source,
            }
        })?;
    let (gateway, connection) =
        tinyci_net::dial::<gateway::Client>(addr, tls, site, &NetLimits::default()).await?;
    let client = SiteClient {
        gateway,
        connection,
        addr: addr.to_owned(),
    };
    let info = client.info().await?;
    Ok((client, info))
}

/// Dials partner `partner` pinned under the config's `federation/` as this site
/// (`tinyci://<own>/site`, the site's own certificate), accepting only a server certified by
/// the partner's pinned CA. `addr` overrides the pin's first address. Must run inside a
/// `LocalSet`.
pub async fn connect_partner(
    config: &SiteConfig,
    partner: &str,
    addr: Option<String>,
) -> Result<(SiteClient, SiteInfo), IdentityError> {
    let pin = crate::federation::find_partner(&config.federation_dir, &config.name, partner)?;
    let addr = addr
        .or_else(|| pin.addrs.first().cloned())
        .or_else(|| config.discovery.static_addrs(partner).into_iter().next())
        .ok_or_else(|| {
            IdentityError::NoAddress(format!(
                "partner {partner} has no address in {}; pass --addr HOST:PORT or add one with \
                 `tinyci federation add {partner} --ca FILE --addr HOST:PORT`",
                pin.path.display()
            ))
        })?;
    let credentials = load_credentials("tls.cert", &config.cert, "tls.key", &config.key)?;
    connect_as(&addr, &credentials, &pin.ca_pem, &pin.site).await
}

/// Connects as in [`connect_admin`] and redeems the admin token from `admin.token` for an
/// `Admin` capability. Redeem and `Session.admin` travel in one flight (promise pipelining).
pub async fn admin_capability(
    config: &SiteConfig,
    addr: Option<SocketAddr>,
) -> Result<(SiteClient, admin::Client), IdentityError> {
    let (client, _) = connect_admin(config, addr).await?;
    let token = read_pem(&config.admin_token, "admin.token", true)?;
    let mut redeem = client.gateway.redeem_request();
    redeem.get().set_token(token.trim());
    let session = redeem.send().pipeline.get_session();
    let admin = session.admin_request().send().pipeline.get_admin();
    Ok((client, admin))
}

/// Describes an RPC failure against `client`'s address.
pub fn rpc_error(client: &SiteClient, source: capnp::Error) -> IdentityError {
    IdentityError::Rpc {
        addr: client.addr.clone(),
        source,
    }
}
