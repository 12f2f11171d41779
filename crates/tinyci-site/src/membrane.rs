//! The revocable membrane: every capability handed out through a session holds the session's
//! [`Liveness`] and checks it first on every call. That check reads a flag and compares a
//! timestamp; it never touches the token. The gateway flips the flag when the token (or an
//! ancestor) is revoked, and expiry needs no flip at all: the deadline is encoded in the
//! object.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::SystemTime;

use tinyci_grant::format_time;
use tokio::sync::watch;

/// Whether the capabilities of one redeemed token may still be used.
#[derive(Debug)]
pub(crate) struct Liveness {
    /// The token's earliest expiry, if any.
    expires_at: Option<SystemTime>,
    /// The revocation id that killed it, once revoked.
    revoked: RefCell<Option<String>>,
    /// Wakes calls parked on [`Liveness::dead`] (e.g. a pending `Worker.next`) when revoked.
    revoked_signal: watch::Sender<bool>,
    /// Calls refused so far, for tests and metrics.
    refusals: Cell<u64>,
    /// The site's clock, against which expiry is judged.
    clock: crate::SiteClock,
}

impl Liveness {
    pub(crate) fn new(expires_at: Option<SystemTime>, clock: crate::SiteClock) -> Rc<Self> {
        Rc::new(Self {
            expires_at,
            revoked: RefCell::new(None),
            revoked_signal: watch::channel(false).0,
            refusals: Cell::new(0),
            clock,
        })
    }

    fn now(&self) -> SystemTime {
        tinyci_core::system_time((self.clock.0)())
    }

    /// `Ok` while the token is neither revoked nor expired; otherwise the error every call on
    /// a dead capability returns.
    pub(crate) fn check(&self) -> Result<(), capnp::Error> {
        match self.why_dead(self.now()) {
            None => Ok(()),
            Some(reason) => {
                self.refusals.set(self.refusals.get() + 1);
                Err(capnp::Error::failed(reason))
            }
        }
    }

    fn why_dead(&self, now: SystemTime) -> Option<String> {
        if let Some(id) = self.revoked.borrow().as_deref() {
            return Some(format!(
                "capability revoked: its token was revoked (revocation id {})",
                short_id(id)
            ));
        }
        match self.expires_at {
            Some(at) if now >= at => Some(format!(
                "capability expired: its token expired at {}",
                format_time(at)
            )),
            _ => None,
        }
    }

    /// Resolves with the reason once the capability is dead: on revocation, or when the
    /// expiry passes. For calls that wait (a parked `Worker.next`). The wait for expiry is a
    /// timer for what the site's clock says is left, so a test that jumps its clock sees a
    /// parked call end at its next `check`, not at the jump.
    pub(crate) async fn dead(&self) -> capnp::Error {
        let mut revoked = self.revoked_signal.subscribe();
        let expiry = async {
            match self.expires_at {
                Some(at) => {
                    let left = at.duration_since(self.now()).unwrap_or_default();
                    tokio::time::sleep(left).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = revoked.wait_for(|dead| *dead) => {}
            () = expiry => {}
        }
        // The clock can be a hair behind the timer; report expiry as of the deadline.
        let at = self
            .expires_at
            .map_or_else(|| self.now(), |at| at.max(self.now()));
        capnp::Error::failed(
            self.why_dead(at)
                .unwrap_or_else(|| "capability is no longer valid".into()),
        )
    }

    fn revoke(&self, id: &str) {
        self.revoked
            .borrow_mut()
            .get_or_insert_with(|| id.to_owned());
        self.revoked_signal.send_replace(true);
    }
}

/// A revocation id shortened for messages: enough to find it in `tinyci token list`.
pub(crate) fn short_id(id: &str) -> &str {
    id.get(..16).unwrap_or(id)
}

/// Live sessions by the revocation ids of their tokens, so revoking an id reaches every
/// capability derived from any token that contains it.
#[derive(Debug, Default)]
pub(crate) struct LiveSessions {
    by_id: RefCell<HashMap<String, Vec<Weak<Liveness>>>>,
    /// Ids the map may hold before sessions that are gone are swept out of all of it: twice
    /// what the last sweep left. Without the sweep, every id ever redeemed stayed (a holder
    /// mints fresh ids offline by attenuating), each pinning its session's allocation.
    sweep_above: Cell<usize>,
}

/// Ids the map holds before its first sweep.
const FIRST_SWEEP: usize = 64;

impl LiveSessions {
    /// Registers a session under every revocation id of its token.
    pub(crate) fn register(&self, ids: &[String], liveness: &Rc<Liveness>) {
        let mut by_id = self.by_id.borrow_mut();
        for id in ids {
            let sessions = by_id.entry(id.clone()).or_default();
            // Drop entries of sessions that are gone, so the map tracks live ones only.
            sessions.retain(|s| s.strong_count() > 0);
            sessions.push(Rc::downgrade(liveness));
        }
        // Ids no new session names keep their dead entries until a sweep: one every time the
        // map doubles, so sweeping costs a constant per registration.
        if by_id.len() > self.sweep_above.get().max(FIRST_SWEEP) {
            by_id.retain(|_, sessions| {
                sessions.retain(|s| s.strong_count() > 0);
                !sessions.is_empty()
            });
            self.sweep_above.set(2 * by_id.len());
        }
    }

    /// Kills every live session whose token contains `id`; returns how many.
    pub(crate) fn revoke(&self, id: &str) -> usize {
        let sessions = self.by_id.borrow_mut().remove(id).unwrap_or_default();
        let mut killed = 0;
        for session in sessions.iter().filter_map(Weak::upgrade) {
            session.revoke(id);
            killed += 1;
        }
        killed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn liveness() -> Rc<Liveness> {
        Liveness::new(None, crate::SiteClock(Rc::new(|| 0)))
    }

    /// A holder can redeem tokens with ids never seen before, as many as they like, by
    /// attenuating their own token offline: the ids of sessions that are gone must not stay.
    #[test]
    fn ids_of_sessions_that_are_gone_do_not_accumulate() {
        let sessions = LiveSessions::default();
        let kept = liveness();
        sessions.register(&["kept".to_owned()], &kept);
        for i in 0..1000 {
            let gone = liveness();
            sessions.register(&[format!("{i:0128x}")], &gone);
        }
        let held = sessions.by_id.borrow().len();
        assert!(
            held <= 2 * FIRST_SWEEP,
            "{held} ids held for one live session"
        );
        // The live one is still reachable.
        assert_eq!(sessions.revoke("kept"), 1);
        assert!(kept.check().is_err());
    }
}
