//! Transport: mutual-TLS listeners and dialers that carry Cap'n Proto RPC.
//!
//! A server accepts TCP, completes a TLS 1.3 handshake that requires a client certificate
//! (policy from `tinyci-pki`), reads the peer's identity from that certificate and asks the
//! caller for a bootstrap capability *for that peer*; each connection then runs its own
//! `RpcSystem`. Everything capnp is `!Send`, so [`serve`] and [`dial`] must run inside a
//! `tokio::task::LocalSet` on a current-thread runtime.
//!
//! This is the only crate that knows `tokio-rustls` and `mdns-sd` ([`discovery`]). It knows nothing
//! of tokens, storage or services: what a peer may do is decided by the bootstrap the caller
//! builds.

mod backoff;
mod backpressure;
mod client;
mod coalesce;
pub mod discovery;
pub mod observe;
mod server;

use std::time::Duration;

pub use backoff::Backoff;
pub use client::{ClientConnection, dial, dial_bytes};
pub use server::{Listener, Peer, ServerStats, StillTrusted, TlsSwitch, serve};
/// The rustls configuration types `tinyci-pki` builds and this crate consumes.
pub use tokio_rustls::rustls::{ClientConfig, ServerConfig};

/// Bounds on what a peer can make us hold or parse.
#[derive(Clone, Debug)]
pub struct NetLimits {
    /// Most concurrent connections a listener serves; further ones are closed at once.
    pub max_connections: usize,
    /// Most concurrent connections from one IP address (handshaking or served); further ones
    /// from it are closed at once, so one host cannot take every place.
    pub max_connections_per_address: usize,
    /// Most TLS handshakes in progress at once; a connection arriving past it is closed at
    /// once rather than held, so sockets that never start TLS cannot queue up the rest.
    pub max_handshakes: usize,
    /// Most concurrent connections one verified identity holds; a further one is closed after
    /// its handshake (a runner needs one; a person a few).
    pub max_connections_per_identity: usize,
    /// Time a peer has to complete the TLS handshake (guards against slow-loris peers).
    pub handshake_timeout: Duration,
    /// Largest Cap'n Proto message, in 8-byte words. capnp refuses a frame whose segment
    /// table claims more, before reading it, so this also bounds per-message memory.
    pub max_message_words: usize,
    /// Deepest struct/list nesting a message may have.
    pub max_nesting: i32,
    /// On shutdown, how long live connections get to finish in-flight calls before they are
    /// cut.
    pub shutdown_grace: Duration,
    /// Bytes of `-> stream` calls (log chunks, byte sinks) this side keeps in flight per
    /// stream before a send waits. Cap'n Proto's default (64 KiB) is about one 64 KiB chunk,
    /// so a stream ran one round trip per chunk; 1 MiB keeps loopback and LAN links busy
    /// while still bounding what a slow receiver makes us hold.
    pub stream_window: usize,
    /// Most calls one connection may have read and not yet answered; past it the connection
    /// is not read until answers go out. With reading also paused while the peer leaves our
    /// replies unread, what one connection makes us hold is at most this many calls and
    /// their replies (the largest reply is a 64 KiB `LogReader.read`), plus socket buffers.
    pub max_outstanding_calls: usize,
}

/// Default [`NetLimits::max_outstanding_calls`]: far above what a runner, a follower or the
/// CLI keeps in flight. At most 16 MiB of log replies per connection.
pub const DEFAULT_MAX_OUTSTANDING_CALLS: usize = 256;

impl Default for NetLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_address: 256,
            max_handshakes: 512,
            max_connections_per_identity: 64,
            handshake_timeout: Duration::from_secs(10),
            // 8 MiB: log chunks and source chunks are at most 64 KiB, tokens far less.
            max_message_words: 1024 * 1024,
            max_nesting: 64,
            shutdown_grace: Duration::from_secs(5),
            stream_window: 1024 * 1024,
            max_outstanding_calls: DEFAULT_MAX_OUTSTANDING_CALLS,
        }
    }
}

/// How long a connection may go without the peer acknowledging anything before it is
/// declared dead: keepalive probes start after [`KEEPALIVE_IDLE`] of silence, and unacknowledged
/// data is given up on after this long. A partitioned peer (no RST ever arrives) is noticed
/// within about this time instead of the kernel's default of a quarter of an hour, so runners
/// reconnect and resume instead of hanging.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// Silence before the first keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// Sets TCP keepalive and the user timeout on a connected socket (best effort: a platform
/// without them keeps the kernel's defaults).
pub(crate) fn watch_for_dead_peer(stream: &tokio::net::TcpStream) {
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(Duration::from_secs(5))
        .with_retries(4);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot enable TCP keepalive");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket.set_tcp_user_timeout(Some(DEAD_PEER_TIMEOUT)) {
        tracing::debug!(error = %e, "cannot set the TCP user timeout");
    }
}

/// The write half capnp-rpc writes to: see [`coalesce::Coalesce`].
pub(crate) fn coalesce<W: futures::AsyncWrite + Unpin>(write: W) -> coalesce::Coalesce<W> {
    coalesce::Coalesce::new(write)
}

impl NetLimits {
    fn reader_options(&self) -> capnp::message::ReaderOptions {
        let mut options = capnp::message::ReaderOptions::new();
        options
            .traversal_limit_in_words(Some(self.max_message_words))
            .nesting_limit(self.max_nesting);
        options
    }
}

/// Transport failures, each naming the address and the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Binding a listener failed.
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The TCP connection could not be made.
    #[error("failed to connect to {addr}: {source}")]
    Connect {
        /// Address dialed.
        addr: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong CA, wrong site identity, certificate refused).
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        /// Address dialed.
        addr: String,
        /// What TLS said.
        source: std::io::Error,
    },
    /// A step took longer than its limit.
    #[error("{what} with {addr} timed out after {after:?}")]
    Timeout {
        /// Which step.
        what: &'static str,
        /// Address dialed.
        addr: String,
        /// The limit.
        after: Duration,
    },
    /// Certificate policy refused to build a configuration.
    #[error(transparent)]
    Pki(#[from] tinyci_pki::PkiError),
    /// mDNS could not start (no usable interface, socket refused).
    #[error("mDNS discovery: {0}")]
    Discovery(String),
}
