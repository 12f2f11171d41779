//! The `Gateway`: the one bootstrap capability of a site, built per connection.

use std::rc::Rc;
use std::time::Instant;

use tinyci_grant::MAX_TOKEN_BYTES;
use tinyci_net::Peer;
use tinyci_pki::{Fingerprint, SiteName};
use tinyci_schema::gateway;
use tracing::{debug, info, warn};

use crate::Services;
use crate::session::Session;

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

/// Writes the site's public facts, as seen by `peer`.
pub(crate) fn fill_site_info(
    mut info: tinyci_schema::site_info::Builder<'_>,
    facts: &SiteFacts,
    peer: &tinyci_pki::PeerIdentity,
) {
    info.set_site_id(facts.name.as_str());
    info.set_version(env!("CARGO_PKG_VERSION"));
    info.set_ca_fingerprint(facts.ca_fingerprint.to_string());
    let uptime = facts.started.elapsed().as_millis();
    info.set_uptime_millis(u64::try_from(uptime).unwrap_or(u64::MAX));
    info.set_protocol(PROTOCOL);
    info.set_peer(peer.to_string());
}

/// A connection's gateway: knows the site's public facts and who is on the other end.
pub(crate) struct Gateway {
    facts: Rc<SiteFacts>,
    services: Rc<Services>,
    peer: Peer,
}

impl Gateway {
    pub(crate) fn new(facts: Rc<SiteFacts>, services: Rc<Services>, peer: Peer) -> Self {
        Self {
            facts,
            services,
            peer,
        }
    }
}

impl gateway::Server for Gateway {
    async fn info(
        self: Rc<Self>,
        _: gateway::InfoParams,
        mut results: gateway::InfoResults,
    ) -> Result<(), capnp::Error> {
        debug!("Gateway.info");
        fill_site_info(results.get().init_info(), &self.facts, &self.peer.identity);
        Ok(())
    }

    async fn redeem(
        self: Rc<Self>,
        params: gateway::RedeemParams,
        mut results: gateway::RedeemResults,
    ) -> Result<(), capnp::Error> {
        let token = params.get()?.get_token()?;
        // Refuse oversized tokens by length alone, before reading them as text.
        if token.len() > MAX_TOKEN_BYTES {
            warn!(bytes = token.len(), "redeem refused: token too large");
            return Err(capnp::Error::failed(
                tinyci_grant::GrantError::TooLarge {
                    len: token.len(),
                    max: MAX_TOKEN_BYTES,
                }
                .to_string(),
            ));
        }
        let text = token
            .to_str()
            .map_err(|_| capnp::Error::failed("token refused: not UTF-8 text".into()))?;
        match self
            .services
            .grants
            .redeem(text, &self.peer.identity, self.services.now())
        {
            Ok(redeemed) => {
                self.services.metrics.redeemed(true);
                info!(holder = %redeemed.token.grant().holder, "token redeemed");
                let session = Session::new(self.services.clone(), redeemed, self.peer.clone());
                results
                    .get()
                    .set_session(crate::rpc::observed(&self.services.metrics, session));
                Ok(())
            }
            Err(e) => {
                self.services.metrics.redeemed(false);
                warn!(error = %e, "redeem refused");
                Err(capnp::Error::failed(e.to_string()))
            }
        }
    }
}
