//! The mTLS capnp-rpc server loop.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{RpcSystem, twoparty};
use tinyci_core::Counts;
use tinyci_pki::PeerIdentity;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backpressure::Pause;
use crate::{NetError, NetLimits};

/// A bound listener, not yet serving. Binding first lets callers learn the real address (port
/// 0 in tests) before anything is accepted.
pub struct Listener {
    tcp: TcpListener,
    tls: TlsSwitch,
    limits: NetLimits,
    stats: Arc<ServerStats>,
}

/// Which peers a connection may stay up for: asked again of every live connection whenever
/// the trust policy changes.
pub type StillTrusted = Rc<dyn Fn(&PeerIdentity) -> bool>;

/// The listener's TLS policy, replaceable while it serves: new handshakes use the new config
/// at once, and live connections whose peer the new policy no longer trusts are closed (a
/// partner removed from `federation/`). Single-threaded, like the server.
#[derive(Clone)]
pub struct TlsSwitch {
    acceptor: Rc<std::cell::RefCell<TlsAcceptor>>,
    trusted: Rc<tokio::sync::watch::Sender<StillTrusted>>,
}

impl std::fmt::Debug for TlsSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSwitch")
    }
}

impl TlsSwitch {
    fn new(tls: Arc<ServerConfig>) -> Self {
        let everyone: StillTrusted = Rc::new(|_| true);
        Self {
            acceptor: Rc::new(std::cell::RefCell::new(TlsAcceptor::from(tls))),
            trusted: Rc::new(tokio::sync::watch::channel(everyone).0),
        }
    }

    /// Handshakes from now on use `tls`; live connections whose peer fails `still_trusted`
    /// are disconnected.
    pub fn replace(
        &self,
        tls: Arc<ServerConfig>,
        still_trusted: impl Fn(&PeerIdentity) -> bool + 'static,
    ) {
        *self.acceptor.borrow_mut() = TlsAcceptor::from(tls);
        self.trusted.send_replace(Rc::new(still_trusted));
    }

    fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.borrow().clone()
    }
}

/// Counters a listener keeps, for status pages, metrics and tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections that completed the TLS handshake.
    pub accepted: AtomicU64,
    /// Connections closed before serving: handshake failed or timed out, or over a limit.
    pub refused: AtomicU64,
    /// Of those, closed because their address, identity or the handshakes in progress were at
    /// their limit.
    pub over_limit: AtomicU64,
    /// Connections being served now.
    pub active: AtomicU64,
    /// Times a connection's reading paused because the peer was not taking our replies.
    pub reads_paused: AtomicU64,
    /// Times a connection's reading paused because the peer had
    /// [`NetLimits::max_outstanding_calls`] calls unanswered.
    pub calls_capped: AtomicU64,
    /// Calls read from peers and not yet answered, over every live connection.
    pub outstanding_calls: AtomicI64,
    /// Woken each time a connection's reading pauses (tests wait on it).
    pub paused: tokio::sync::Notify,
}

/// The authenticated far end of a connection, handed to the bootstrap factory.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Identity from the verified client certificate.
    pub identity: PeerIdentity,
    /// TCP address it connected from.
    pub addr: SocketAddr,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.tcp.local_addr().ok())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Binds `addr` with the given TLS policy.
    pub async fn bind(
        addr: SocketAddr,
        tls: Arc<ServerConfig>,
        limits: NetLimits,
    ) -> Result<Self, NetError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| NetError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Self {
            tcp,
            tls: TlsSwitch::new(tls),
            limits,
            stats: Arc::default(),
        })
    }

    /// The handle that replaces this listener's TLS policy while it serves.
    pub fn tls_switch(&self) -> TlsSwitch {
        self.tls.clone()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The listener's counters; they stay readable after [`serve`] returns.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }
}

/// Serves connections until `shutdown` resolves, then stops accepting, gives live
/// connections [`NetLimits::shutdown_grace`] to finish and cuts the rest.
///
/// `bootstrap` is called once per authenticated connection and returns the capability that
/// peer gets as its bootstrap; it is where identity turns into authority. Must run inside a
/// `LocalSet`.
pub async fn serve<B>(listener: Listener, bootstrap: B, shutdown: impl Future<Output = ()>)
where
    B: Fn(&Peer) -> capnp::capability::Client + 'static,
{
    let Listener {
        tcp,
        tls,
        limits,
        stats,
    } = listener;
    let bootstrap = Rc::new(bootstrap);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
    let per_address: Rc<Counts<IpAddr>> = Rc::default();
    let per_identity: Rc<Counts<PeerIdentity>> = Rc::default();
    // Fired when the grace period is over: connections disconnect cleanly (capnp-rpc clears
    // its tables, dropping every capability) rather than being dropped mid-flight, which
    // can leave capabilities alive in reference cycles.
    let (cut_tx, cut) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            warn!(%addr, limit = limits.max_connections, "connection limit reached; closing new connection");
            drop(stream);
            continue;
        };
        let over_limit = |what: &str, limit: usize| {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            stats.over_limit.fetch_add(1, Ordering::Relaxed);
            debug!(%addr, limit, "{what}; closing new connection");
        };
        let Some(address_place) = per_address.take(addr.ip(), limits.max_connections_per_address)
        else {
            over_limit(
                "too many connections from this address",
                limits.max_connections_per_address,
            );
            continue;
        };
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            over_limit("too many handshakes in progress", limits.max_handshakes);
            continue;
        };
        let connection = Connection {
            acceptor: tls.acceptor(),
            trusted: tls.trusted.subscribe(),
            limits: limits.clone(),
            stats: stats.clone(),
            bootstrap: bootstrap.clone(),
            cut: cut.clone(),
            per_identity: per_identity.clone(),
        };
        connections.spawn_local(async move {
            connection.run(stream, addr, handshake).await;
            drop((permit, address_place));
        });
    }
    drop(tcp);
    info!(
        live = connections.len(),
        grace = ?limits.shutdown_grace,
        "listener closed; waiting for live connections"
    );
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        info!(
            cut = connections.len(),
            "grace period over; closing remaining connections"
        );
        cut_tx.send_replace(true);
        let disconnected = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if disconnected.is_err() {
            connections.shutdown().await;
        }
    }
}

/// What one connection task needs.
struct Connection<B> {
    acceptor: TlsAcceptor,
    /// The current trust policy; a change that excludes this peer disconnects it.
    trusted: tokio::sync::watch::Receiver<StillTrusted>,
    limits: NetLimits,
    stats: Arc<ServerStats>,
    bootstrap: Rc<B>,
    /// Becomes true when the server cuts remaining connections.
    cut: tokio::sync::watch::Receiver<bool>,
    /// Connections each identity holds.
    per_identity: Rc<Counts<PeerIdentity>>,
}

impl<B> Connection<B>
where
    B: Fn(&Peer) -> capnp::capability::Client,
{
    /// Handshakes (in this task, so a slow peer never holds up accepting others), then serves
    /// RPC until the peer goes away or sends something malformed.
    async fn run(self, stream: TcpStream, addr: SocketAddr, handshake: OwnedSemaphorePermit) {
        let stats = &self.stats;
        // Small RPC frames dominate; don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        crate::watch_for_dead_peer(&stream);
        let handshake_done =
            tokio::time::timeout(self.limits.handshake_timeout, self.acceptor.accept(stream));
        let tls = match handshake_done.await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                info!(%addr, error = %e, "TLS handshake refused");
                return;
            }
            Err(_) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                info!(%addr, timeout = ?self.limits.handshake_timeout, "TLS handshake timed out");
                return;
            }
        };
        let identity = match tinyci_pki::tls::peer_identity(tls.get_ref().1.peer_certificates()) {
            Ok(identity) => identity,
            Err(e) => {
                // The verifier already checked the identity; this is belt and braces.
                stats.refused.fetch_add(1, Ordering::Relaxed);
                warn!(%addr, error = %e, "verified certificate has no usable identity");
                return;
            }
        };
        drop(handshake);
        let Some(_identity_place) = self
            .per_identity
            .take(identity.clone(), self.limits.max_connections_per_identity)
        else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            stats.over_limit.fetch_add(1, Ordering::Relaxed);
            info!(%addr, peer = %identity, limit = self.limits.max_connections_per_identity, "too many connections for this identity; closing");
            return;
        };
        let peer = Peer { identity, addr };
        let span = info_span!("connection", peer = %peer.identity, %addr);
        let client = (self.bootstrap)(&peer);
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let (read, write) = tokio::io::split(tls);
        let paused_stats = stats.clone();
        let count_stats = stats.clone();
        let (read, write) = crate::backpressure::pace(
            read.compat(),
            write.compat_write(),
            self.limits.max_outstanding_calls,
            move |why| {
                let counter = match why {
                    Pause::RepliesUnread => &paused_stats.reads_paused,
                    Pause::CallsOutstanding => &paused_stats.calls_capped,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                paused_stats.paused.notify_one();
            },
            move |change| {
                count_stats
                    .outstanding_calls
                    .fetch_add(change, Ordering::Relaxed);
            },
        );
        let mut network = twoparty::VatNetwork::new(
            read,
            crate::coalesce(write),
            Side::Server,
            self.limits.reader_options(),
        );
        network.set_window_size(self.limits.stream_window);
        let mut rpc = RpcSystem::new(Box::new(network), Some(client));
        let disconnector = rpc.get_disconnector();
        let mut cut = self.cut.clone();
        let mut trusted = self.trusted.clone();
        trusted.mark_unchanged();
        let identity = peer.identity.clone();
        async {
            // A guard, so the count stays right when shutdown aborts this task mid-call.
            let _active = ActiveGuard::enter(stats);
            debug!("connected");
            let ended = tokio::select! {
                ended = &mut rpc => ended,
                _ = cut.wait_for(|cut| *cut) => {
                    let (ended, _) = futures::future::join(&mut rpc, disconnector).await;
                    ended
                }
                _ = trusted.wait_for(|still| !still(&identity)) => {
                    info!("peer no longer trusted; disconnecting");
                    let (ended, _) = futures::future::join(&mut rpc, disconnector).await;
                    ended
                }
            };
            match ended {
                Ok(()) => debug!("disconnected"),
                // Malformed input, a reset, or a TLS alert: this connection only.
                Err(e) => info!(error = %e, "connection ended with error"),
            }
        }
        .instrument(span)
        .await;
    }
}

/// Counts a connection as active for as long as it lives.
struct ActiveGuard<'a>(&'a ServerStats);

impl<'a> ActiveGuard<'a> {
    fn enter(stats: &'a ServerStats) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
