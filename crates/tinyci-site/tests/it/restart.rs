//! A site restarted under a thousand connected runners takes every one of them back: each
//! runner reconnects with the jittered backoff the runner agent uses, and the restarted
//! site refuses none of them (no connection, address, identity or handshake limit is hit by
//! well-behaved runners coming back together).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tinyci_net::{Backoff, NetLimits};
use tinyci_pki::{Credentials, Role, SiteName};
use tinyci_schema::job_control;
use tokio::sync::Notify;

use crate::support::{TestSite, local, redeem};

const RUNNERS: usize = 1000;

struct NoControl;
impl job_control::Server for NoControl {}

/// How many runners have parked a `Worker.next` on the site, counted over restarts.
#[derive(Default)]
struct Parked {
    count: Cell<usize>,
    changed: Notify,
}

impl Parked {
    fn arrived(&self) {
        self.count.set(self.count.get() + 1);
        self.changed.notify_waiters();
    }

    async fn reach(&self, n: usize) {
        loop {
            let changed = self.changed.notified();
            if self.count.get() >= n {
                return;
            }
            changed.await;
        }
    }
}

/// One idle runner, as the agent behaves: dial, redeem, `Session.worker`, park a
/// `Worker.next`; when the site goes away, wait a jittered backoff and do it again.
async fn idle_runner(
    name: String,
    addr: SocketAddr,
    tls: Arc<tinyci_net::ClientConfig>,
    token: String,
    parked: Rc<Parked>,
) {
    // The runner agent's reconnect backoff (200 ms doubling, capped).
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        if park_once(&name, addr, tls.clone(), &token, &parked).await {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Connects and parks until the connection ends; whether it got as far as parking.
async fn park_once(
    name: &str,
    addr: SocketAddr,
    tls: Arc<tinyci_net::ClientConfig>,
    token: &str,
    parked: &Parked,
) -> bool {
    let site = SiteName::new("alpha").unwrap();
    let Ok((gateway, _connection)) =
        tinyci_net::dial(&addr.to_string(), tls, &site, &NetLimits::default()).await
    else {
        return false;
    };
    let session = redeem(&gateway, token);
    let mut request = session.worker_request();
    request.get().set_queue("default");
    request.get().init_runner().set_name(name);
    let worker = match request.send().promise.await {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("runner {name}: Session.worker failed: {e}");
            return false;
        }
    };
    let Ok(worker) = worker.get().and_then(|w| w.get_worker()) else {
        return false;
    };
    let mut next = worker.next_request();
    next.get().set_control(capnp_rpc::new_client(NoControl));
    let waiting = next.send().promise;
    // A round trip behind it on the same connection: the site has the `next` by then.
    if gateway.info_request().send().promise.await.is_err() {
        return false;
    }
    parked.arrived();
    let _ = waiting.await;
    true
}

#[test]
fn a_site_restarted_under_a_thousand_runners_takes_them_all_back() {
    local(async {
        let mut site = TestSite::start().await;
        // Every runner here dials from 127.0.0.1; a real fleet comes from many hosts.
        site.set_site_option(&format!("max_connections_per_address = {}", 2 * RUNNERS));
        let addr = site.addr();
        site.down().await;
        site.up_at(addr).await;

        let parked = Rc::new(Parked::default());
        let expires = Some(SystemTime::now() + Duration::from_secs(3600));
        let mut runners = tokio::task::JoinSet::new();
        for i in 0..RUNNERS {
            let name = format!("r{i}");
            let leaf = site.ca.issue_member_cert(Role::Runner, &name).unwrap();
            let creds = Credentials::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap();
            let tls = tinyci_pki::tls::client_config(
                &creds,
                site.ca.cert_pem(),
                SiteName::new("alpha").unwrap(),
            )
            .unwrap();
            let token = site.mint(
                &format!("runner:{name}"),
                &["queue:take"],
                &[],
                &["default"],
                expires,
            );
            runners.spawn_local(idle_runner(name, addr, tls, token, parked.clone()));
        }
        parked.reach(RUNNERS).await;
        let before = site.server_stats();
        assert_eq!(before.active.load(Ordering::Relaxed), RUNNERS as u64);

        // Restart on the same address under all of them.
        site.down().await;
        site.up_at(addr).await;
        parked.reach(2 * RUNNERS).await;
        let after = site.server_stats();
        assert_eq!(
            after.accepted.load(Ordering::Relaxed),
            RUNNERS as u64,
            "each runner came back once"
        );
        assert_eq!(
            (
                after.refused.load(Ordering::Relaxed),
                after.over_limit.load(Ordering::Relaxed)
            ),
            (0, 0),
            "the restarted site refused a well-behaved runner"
        );
        runners.abort_all();
        site.down().await;
    });
}
