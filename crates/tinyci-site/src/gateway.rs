//! The `Gateway`: the one bootstrap capability of a site, built per connection.

use std::rc::Rc;
use std::time::Instant;

use tinyci_net::Peer;
use tinyci_pki::{Fingerprint, SiteName};
use tinyci_schema::gateway;
use tracing::debug;

/// Wire protocol revision reported in `SiteInfo.protocol`.
pub const PROTOCOL: u32 = 1;

/// Public facts about a running site, shared by every connection's gateway.
#[derive(Debug)]
pub struct SiteFacts {
    /// The site's name.
    pub name: SiteName,
    /// The site CA's fingerprint.
    pub ca_fingerprint: Fingerprint,
    /// When the site started serving.
    pub started: Instant,
}

/// A connection's gateway: knows the site's public facts and who is on the other end.
pub(crate) struct Gateway {
    facts: Rc<SiteFacts>,
    peer: Peer,
}

impl Gateway {
    pub(crate) fn new(facts: Rc<SiteFacts>, peer: Peer) -> Self {
        Self { facts, peer }
    }
}

impl gateway::Server for Gateway {
    async fn info(
        self: Rc<Self>,
        _: gateway::InfoParams,
        mut results: gateway::InfoResults,
    ) -> Result<(), capnp::Error> {
        debug!(peer = %self.peer.identity, "Gateway.info");
        let mut info = results.get().init_info();
        info.set_site_id(self.facts.name.as_str());
        info.set_version(env!("CARGO_PKG_VERSION"));
        info.set_ca_fingerprint(self.facts.ca_fingerprint.to_string());
        let uptime = self.facts.started.elapsed().as_millis();
        info.set_uptime_millis(u64::try_from(uptime).unwrap_or(u64::MAX));
        info.set_protocol(PROTOCOL);
        info.set_peer(self.peer.identity.to_string());
        Ok(())
    }

    async fn redeem(
        self: Rc<Self>,
        _: gateway::RedeemParams,
        _: gateway::RedeemResults,
    ) -> Result<(), capnp::Error> {
        debug!(peer = %self.peer.identity, "Gateway.redeem refused: grants not enabled");
        Err(capnp::Error::unimplemented(
            "Gateway.redeem: this site does not redeem tokens yet (grants are not enabled in this build)"
                .to_owned(),
        ))
    }
}
