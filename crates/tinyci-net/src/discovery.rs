//! mDNS discovery of sites: `_tinyci._tcp.local.`, with TXT records naming the site (`site`)
//! and its CA fingerprint (`ca`).
//!
//! **Discovery finds addresses, never trust.** An announcement is a claim anyone on the link
//! can make; callers compare its CA fingerprint with the CA they pinned before dialing, and
//! the TLS handshake checks the pin again (a liar cannot complete it). Nothing here reads
//! or sends a credential.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use tracing::{debug, warn};

use crate::NetError;

/// The DNS-SD service type sites announce.
pub const SERVICE_TYPE: &str = "_tinyci._tcp.local.";

/// A site's announcement on the local network, for as long as this value lives.
pub struct Announcer {
    daemon: ServiceDaemon,
    fullname: String,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("fullname", &self.fullname)
            .finish_non_exhaustive()
    }
}

fn mdns_error(e: mdns_sd::Error) -> NetError {
    NetError::Discovery(e.to_string())
}

/// The instance name: site and a CA prefix, so two sites claiming one name (a partner and an
/// impostor) do not collide.
fn instance_name(site: &str, ca_fingerprint: &str) -> String {
    let short: String = ca_fingerprint
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    format!("{site}-{short}")
}

impl Announcer {
    /// Announces `site` listening on `port` of every address of this host, with its CA
    /// fingerprint.
    pub fn start(site: &str, port: u16, ca_fingerprint: &str) -> Result<Self, NetError> {
        let daemon = ServiceDaemon::new().map_err(mdns_error)?;
        let instance = instance_name(site, ca_fingerprint);
        let host = format!("{instance}.local.");
        let properties = [("site", site), ("ca", ca_fingerprint), ("proto", "1")];
        let info = ServiceInfo::new(SERVICE_TYPE, &instance, &host, "", port, &properties[..])
            .map_err(mdns_error)?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_owned();
        daemon.register(info).map_err(mdns_error)?;
        debug!(%fullname, port, "announcing over mDNS");
        Ok(Self { daemon, fullname })
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        // Say goodbye so browsers forget us now rather than at TTL expiry.
        if let Err(e) = self.daemon.unregister(&self.fullname) {
            debug!(error = %e, "mDNS unregister failed");
        }
        let _ = self.daemon.shutdown();
    }
}

/// One site seen announcing itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// The site it claims to be.
    pub site: String,
    /// The CA fingerprint it claims (`aa:bb:…`).
    pub ca_fingerprint: String,
    /// Where it says it listens.
    pub addrs: Vec<SocketAddr>,
    /// Its DNS-SD instance name.
    pub instance: String,
}

/// Browses for sites until `stop` says enough was seen (it is asked after every new
/// sighting) or `timeout` passes; returns everything seen, by instance.
pub async fn browse(
    timeout: Duration,
    mut stop: impl FnMut(&[Sighting]) -> bool,
) -> Result<Vec<Sighting>, NetError> {
    let daemon = ServiceDaemon::new().map_err(mdns_error)?;
    let events = daemon.browse(SERVICE_TYPE).map_err(mdns_error)?;
    let mut seen: BTreeMap<String, Sighting> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let event = tokio::select! {
            event = events.recv_async() => event,
            () = tokio::time::sleep_until(deadline) => break,
        };
        let Ok(event) = event else {
            warn!("mDNS browsing stopped early");
            break;
        };
        match event {
            ServiceEvent::ServiceResolved(service) => {
                let Some(site) = service.get_property_val_str("site") else {
                    continue; // not one of ours
                };
                let sighting = Sighting {
                    site: site.to_owned(),
                    ca_fingerprint: service
                        .get_property_val_str("ca")
                        .unwrap_or_default()
                        .to_owned(),
                    addrs: dialable(
                        service.get_addresses().iter().map(|ip| ip.to_ip_addr()),
                        service.get_port(),
                    ),
                    instance: service.get_fullname().to_owned(),
                };
                // Resolution may repeat with a growing address set: keep the latest.
                seen.insert(sighting.instance.clone(), sighting);
                let all: Vec<Sighting> = seen.values().cloned().collect();
                if stop(&all) {
                    break;
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                seen.remove(&fullname);
            }
            _ => {}
        }
    }
    let _ = daemon.stop_browse(SERVICE_TYPE);
    let _ = daemon.shutdown();
    Ok(seen.into_values().collect())
}

/// The addresses a client can dial from what was announced: IPv6 link-local ones are left
/// out (dialing them needs the interface's scope, which a socket address from a name does not
/// carry), IPv4 first.
fn dialable(ips: impl Iterator<Item = std::net::IpAddr>, port: u16) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = ips
        .filter(|ip| match ip {
            std::net::IpAddr::V4(v4) => !v4.is_unspecified(),
            std::net::IpAddr::V6(v6) => {
                !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
            }
        })
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    addrs.sort_by_key(|a| (a.is_ipv6(), *a));
    addrs.dedup();
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_ipv6_is_left_out_and_ipv4_comes_first() {
        let ips = [
            "fe80::88ca:d0ff:fe66:2e42".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            "10.0.0.7".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
        ];
        let addrs: Vec<String> = dialable(ips.into_iter(), 7433)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addrs, ["10.0.0.7:7433", "[2001:db8::1]:7433"]);
    }

    #[test]
    fn instance_names_tell_same_named_sites_apart() {
        let a = instance_name("alpha", "3f:9a:00:11:22:33:44:55");
        let b = instance_name("alpha", "de:ad:be:ef:00:11:22:33");
        assert_eq!(a, "alpha-3f9a00112233");
        assert_ne!(a, b);
    }
}
