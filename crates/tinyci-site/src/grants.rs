//! The site's side of grants: redeeming tokens for connections (the only place tokens are
//! checked), revoking them durably, and recording what was minted.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::SystemTime;

use tinyci_grant::{GrantError, RootKey, VerifiedToken};
use tinyci_pki::{PeerIdentity, Role, SiteName};
use tinyci_store::records::{IssuedGrant, Revocation};
use tinyci_store::tables::{GRANTS, REVOKED, SPENT_GRANTS};
use tinyci_store::{Store, StoreError};

use crate::membrane::{LiveSessions, Liveness};

/// A revocation id: 64 bytes of signature, as 128 lowercase hex digits.
pub(crate) fn is_revocation_id(text: &str) -> bool {
    text.len() == 128 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The holder names a connection's certificate identity answers to. A partner site's site and
/// runner certificates (from its pinned CA), and `partner/<name>` certificates we issued, act
/// as `site:<partner>`; the partner's admins and users answer to nothing here (a partner's
/// grant is for its machines, not for whoever it issues a certificate to). Our own members
/// act as themselves.
pub(crate) fn holder_names(peer: &PeerIdentity, this_site: &SiteName) -> Vec<String> {
    if peer.site_name() != this_site {
        return match peer.role() {
            Role::Site | Role::Runner => vec![format!("site:{}", peer.site_name())],
            Role::Admin | Role::User | Role::Partner => Vec::new(),
        };
    }
    let name = peer.name().unwrap_or_default();
    match peer.role() {
        Role::Site => vec![format!("site:{this_site}")],
        Role::Partner => vec![format!("site:{name}")],
        Role::Runner => vec![format!("runner:{name}")],
        Role::Admin => vec![format!("admin:{name}")],
        Role::User => vec![format!("user:{name}")],
    }
}

/// A token redeemed for one connection.
pub(crate) struct Redeemed {
    pub(crate) token: VerifiedToken,
    pub(crate) liveness: Rc<Liveness>,
    pub(crate) peer_names: Vec<String>,
}

/// Everything the gateway needs to redeem and revoke tokens. One per site, shared by every
/// connection (single-threaded: it lives on the site's LocalSet).
pub(crate) struct GrantAuthority {
    site: SiteName,
    root: RootKey,
    store: Store,
    /// Revoked ids, loaded from the store at start and kept in step with it.
    revoked: RefCell<HashSet<String>>,
    /// Single-use grants that took their job (authority revocation id → run), loaded at start.
    spent: RefCell<HashMap<String, tinyci_core::RunId>>,
    /// The same, by run: what a run's end retires.
    spent_by_run: RefCell<HashMap<tinyci_core::RunId, Vec<String>>>,
    /// Single-use grants one of whose workers is asking for its job now.
    asking: RefCell<HashSet<String>>,
    live: LiveSessions,
    clock: tinyci_core::Clock,
}

impl std::fmt::Debug for GrantAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantAuthority")
            .field("site", &self.site)
            .finish_non_exhaustive()
    }
}

/// One worker of a single-use grant asking for its job; dropping it lets another ask.
pub(crate) struct Asking {
    authority: Rc<GrantAuthority>,
    grant: String,
}

impl Drop for Asking {
    fn drop(&mut self) {
        self.authority.asking.borrow_mut().remove(&self.grant);
    }
}

/// What a single-use grant is told when it asks for a second job.
pub(crate) fn single_use_refusal(taken: tinyci_core::RunId) -> String {
    format!(
        "this single-use grant already took its job ({taken}); it takes no other and is \
         revoked when that job ends"
    )
}

impl GrantAuthority {
    /// Loads the revoked ids from the store.
    pub(crate) fn load(
        site: SiteName,
        root: RootKey,
        store: Store,
        clock: tinyci_core::Clock,
    ) -> Result<Self, StoreError> {
        let revoked = store.read(|txn| {
            txn.iter_range(REVOKED, &..)?
                .map(|entry| entry.map(|(id, _)| id.to_owned()))
                .collect::<Result<HashSet<String>, _>>()
        })?;
        let spent = store.read(|txn| {
            txn.iter_range(SPENT_GRANTS, &..)?
                .map(|entry| entry.map(|(id, run)| (id.to_owned(), tinyci_core::RunId(run))))
                .collect::<Result<HashMap<_, _>, _>>()
        })?;
        let mut spent_by_run: HashMap<tinyci_core::RunId, Vec<String>> = HashMap::new();
        for (grant, run) in &spent {
            spent_by_run.entry(*run).or_default().push(grant.clone());
        }
        Ok(Self {
            site,
            root,
            store,
            revoked: RefCell::new(revoked),
            spent: RefCell::new(spent),
            spent_by_run: RefCell::new(spent_by_run),
            asking: RefCell::default(),
            live: LiveSessions::default(),
            clock,
        })
    }

    pub(crate) fn site(&self) -> &SiteName {
        &self.site
    }

    /// Mints a grant with the site's root key (logins); the caller records it.
    pub(crate) fn mint(
        &self,
        spec: &tinyci_grant::GrantSpec,
    ) -> Result<(String, tinyci_grant::Grant), GrantError> {
        tinyci_grant::mint(&self.root, spec)
    }

    /// Checks a token for a connection: size, signature, revocation, holder binding and
    /// expiry. Rights and scopes are checked later, when the session hands out a capability.
    pub(crate) fn redeem(
        &self,
        text: &str,
        peer: &PeerIdentity,
        now: SystemTime,
    ) -> Result<Redeemed, GrantError> {
        let token = tinyci_grant::verify(text, &self.root)?;
        let grant = token.grant();
        if let Some(id) = grant
            .revocation_ids
            .iter()
            .find(|id| self.revoked.borrow().contains(*id))
        {
            return Err(GrantError::Revoked {
                id: crate::membrane::short_id(id).to_owned(),
            });
        }
        if grant.site != self.site.as_str() {
            return Err(GrantError::Denied {
                operation: "redeem".into(),
                reason: format!("the token was issued for site {}", grant.site),
            });
        }
        let peer_names = holder_names(peer, &self.site);
        if !peer_names.contains(&grant.holder.to_string()) {
            return Err(GrantError::WrongHolder {
                holder: grant.holder.to_string(),
            });
        }
        if let Some(at) = grant.expires_at
            && at <= now
        {
            return Err(GrantError::Expired {
                at: tinyci_grant::format_time(at),
            });
        }
        let liveness = Liveness::new(grant.expires_at, crate::SiteClock(self.clock.clone()));
        self.live.register(&grant.revocation_ids, &liveness);
        Ok(Redeemed {
            token,
            liveness,
            peer_names,
        })
    }

    /// Revokes a whole token (its last block, so the token and everything attenuated from it
    /// die, but not the token it was attenuated from) or one revocation id. Durable before
    /// live sessions are cut; returns the ids revoked and how many live sessions died.
    pub(crate) async fn revoke(
        &self,
        token_or_id: &str,
        by: &PeerIdentity,
    ) -> Result<(Vec<String>, usize), RevokeError> {
        let text = token_or_id.trim();
        let id = if is_revocation_id(text) {
            text.to_ascii_lowercase()
        } else {
            let token = tinyci_grant::verify(text, &self.root).map_err(RevokeError::Token)?;
            token
                .grant()
                .revocation_ids
                .last()
                .cloned()
                .ok_or(RevokeError::NotFound)?
        };
        self.revoke_id(id, by.to_string()).await
    }

    /// Revokes revocation id `id`, durably, then cuts its live sessions.
    async fn revoke_id(&self, id: String, by: String) -> Result<(Vec<String>, usize), RevokeError> {
        let record = Revocation {
            revoked_at: (self.clock)() / 1000,
            revoked_by: by,
        };
        let store = self.store.clone();
        let key = id.clone();
        tokio::task::spawn_blocking(move || {
            store.write(|txn| txn.put(REVOKED, key.as_str(), &record))
        })
        .await
        .map_err(|e| RevokeError::Store(e.to_string()))?
        .map_err(|e| RevokeError::Store(e.to_string()))?;
        self.revoked.borrow_mut().insert(id.clone());
        let killed = self.live.revoke(&id);
        Ok((vec![id], killed))
    }

    /// Revokes every recorded, still-live grant bound to `holder` (a user whose capability
    /// was removed): each one's authority block, so whatever was attenuated from it dies too,
    /// and their live sessions are cut at once. Returns how many grants were revoked.
    pub(crate) async fn revoke_holder(
        &self,
        holder: &str,
        by: &PeerIdentity,
    ) -> Result<usize, RevokeError> {
        let issued = self
            .issued()
            .await
            .map_err(|e| RevokeError::Store(e.to_string()))?;
        let mut revoked = 0;
        for (grant, dead) in issued {
            if dead || grant.holder != holder {
                continue;
            }
            let Some(id) = grant.revocation_ids.first() else {
                continue;
            };
            self.revoke(id, by).await?;
            revoked += 1;
        }
        Ok(revoked)
    }

    /// The run a single-use grant (by its authority revocation id) already took, if any.
    pub(crate) fn spent_on(&self, grant: &str) -> Option<tinyci_core::RunId> {
        self.spent.borrow().get(grant).copied()
    }

    /// Records, durably, that single-use grant `grant` took `run`; refuses if it took one
    /// already (two workers of one grant racing: the first to get here wins).
    pub(crate) async fn spend(&self, grant: &str, run: tinyci_core::RunId) -> Result<(), String> {
        if let Some(taken) = self.spent_on(grant) {
            return Err(single_use_refusal(taken));
        }
        self.spent.borrow_mut().insert(grant.to_owned(), run);
        self.spent_by_run
            .borrow_mut()
            .entry(run)
            .or_default()
            .push(grant.to_owned());
        let store = self.store.clone();
        let key = grant.to_owned();
        tokio::task::spawn_blocking(move || {
            store.write(|txn| txn.put(SPENT_GRANTS, key.as_str(), &run.get()))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// Revokes the single-use grants that took `run`, now that its lease ended (finished,
    /// canceled, or lost): their holders get nothing more.
    pub(crate) async fn retire_spent(&self, run: tinyci_core::RunId) {
        let grants: Vec<String> = self
            .spent_by_run
            .borrow_mut()
            .remove(&run)
            .unwrap_or_default()
            .into_iter()
            .filter(|id| !self.revoked.borrow().contains(id))
            .collect();
        for id in grants {
            let by = format!("site {}: single-use grant, its job {run} ended", self.site);
            match self.revoke_id(id.clone(), by).await {
                Ok((_, sessions)) => {
                    tracing::info!(%run, grant = %crate::membrane::short_id(&id), sessions, "single-use grant revoked: its job ended");
                    // Revoked, it is refused everywhere: its spent record is no longer needed.
                    self.spent.borrow_mut().remove(&id);
                    let store = self.store.clone();
                    let forgotten = tokio::task::spawn_blocking(move || {
                        store.write(|txn| txn.delete(SPENT_GRANTS, id.as_str()).map(drop))
                    })
                    .await;
                    if !matches!(forgotten, Ok(Ok(()))) {
                        tracing::warn!(%run, "cannot forget a retired single-use grant; it stays refused");
                    }
                }
                Err(e) => {
                    tracing::warn!(%run, error = %e, "cannot revoke a single-use grant whose job ended")
                }
            }
        }
    }

    /// The runs single-use grants took whose grants are not retired yet.
    pub(crate) fn spent_runs(&self) -> Vec<tinyci_core::RunId> {
        let revoked = self.revoked.borrow();
        self.spent_by_run
            .borrow()
            .iter()
            .filter(|(_, grants)| grants.iter().any(|g| !revoked.contains(g)))
            .map(|(run, _)| *run)
            .collect()
    }

    /// Whether some single-use grant took `run` and is not retired yet.
    pub(crate) fn spent_run(&self, run: tinyci_core::RunId) -> bool {
        self.spent_by_run.borrow().contains_key(&run)
    }

    /// Lets one worker of single-use `grant` ask for its job: `None` when the job is taken or
    /// another worker of the grant is asking. The claim lasts as long as the returned value.
    pub(crate) fn claim(self: &Rc<Self>, grant: &str) -> Option<Asking> {
        if self.spent_on(grant).is_some() || !self.asking.borrow_mut().insert(grant.to_owned()) {
            return None;
        }
        Some(Asking {
            authority: self.clone(),
            grant: grant.to_owned(),
        })
    }

    /// Every recorded grant, with whether any of its ids was revoked.
    pub(crate) async fn issued(&self) -> Result<Vec<(IssuedGrant, bool)>, StoreError> {
        let store = self.store.clone();
        let grants = tokio::task::spawn_blocking(move || {
            store.read(|txn| {
                txn.iter_range(GRANTS, &..)?
                    .map(|entry| entry.map(|(_, grant)| grant))
                    .collect::<Result<Vec<_>, _>>()
            })
        })
        .await
        .map_err(|e| StoreError::Aborted {
            reason: e.to_string().into(),
        })??;
        let revoked = self.revoked.borrow();
        Ok(grants
            .into_iter()
            .map(|g| {
                let dead = g.revocation_ids.iter().any(|id| revoked.contains(id));
                (g, dead)
            })
            .collect())
    }
}

/// Why a revocation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RevokeError {
    #[error("cannot revoke: {0}")]
    Token(GrantError),
    #[error("cannot revoke: the token has no blocks")]
    NotFound,
    #[error("cannot revoke: failed to record the revocation: {0}")]
    Store(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str) -> SiteName {
        SiteName::new(name).unwrap_or_else(|e| panic!("{e}"))
    }

    fn member(at: &str, role: Role, name: &str) -> PeerIdentity {
        PeerIdentity::member(site(at), role, name).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_partner_grant_binds_its_machines_not_whoever_it_issues_certificates_to() {
        let alpha = site("alpha");
        assert_eq!(
            holder_names(&PeerIdentity::site(site("beta")), &alpha),
            ["site:beta"]
        );
        assert_eq!(
            holder_names(&member("beta", Role::Runner, "r1"), &alpha),
            ["site:beta"]
        );
        // Beta's users and admins (or a partner certificate beta issued) are nobody here.
        for role in [Role::User, Role::Admin, Role::Partner] {
            assert!(
                holder_names(&member("beta", role, "mallory"), &alpha).is_empty(),
                "{role}"
            );
        }
        // A partner certificate alpha issued for beta acts for beta.
        assert_eq!(
            holder_names(&member("alpha", Role::Partner, "beta"), &alpha),
            ["site:beta"]
        );
        assert_eq!(
            holder_names(&member("alpha", Role::User, "ana"), &alpha),
            ["user:ana"]
        );
    }
}
