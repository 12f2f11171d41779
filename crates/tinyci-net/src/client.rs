//! Dialing a site over mTLS and getting its bootstrap capability.

use std::sync::Arc;

use capnp::capability::FromClientHook;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{RpcSystem, twoparty};
use tinyci_pki::SiteName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::{NetError, NetLimits};

/// A live client connection. The connection lives as long as this value: dropping it closes
/// the connection and breaks every capability obtained through it.
#[derive(Debug)]
pub struct ClientConnection {
    task: JoinHandle<Result<(), capnp::Error>>,
}

impl ClientConnection {
    /// Resolves when the connection ends, with the reason if it broke.
    pub async fn closed(&mut self) -> Result<(), capnp::Error> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(capnp::Error::disconnected(format!(
                "connection task ended: {e}"
            ))),
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Dials `addr`, verifies it is site `site` (by the CA pinned in `tls`), and returns its
/// bootstrap capability as `T` (normally `gateway::Client`). Must run inside a `LocalSet`.
///
/// Under TLS 1.3 a server that refuses *our* certificate only says so after the handshake
/// completes on our side, so a successful `dial` is not proof of acceptance: make one call
/// (`Gateway.info`) before reporting a connection as good.
pub async fn dial<T: FromClientHook>(
    addr: &str,
    tls: Arc<ClientConfig>,
    site: &SiteName,
    limits: &NetLimits,
) -> Result<(T, ClientConnection), NetError> {
    let tls_stream = dial_tls(addr, tls, site, limits).await?;
    let (read, write) = tokio::io::split(tls_stream);
    let mut network = twoparty::VatNetwork::new(
        read.compat(),
        crate::coalesce(write.compat_write()),
        Side::Client,
        limits.reader_options(),
    );
    network.set_window_size(limits.stream_window);
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let bootstrap: T = rpc.bootstrap(Side::Server);
    let task = tokio::task::spawn_local(rpc);
    Ok((bootstrap, ClientConnection { task }))
}

/// Dials `addr` and completes the mTLS handshake as [`dial`] does, then hands over the raw
/// byte stream instead of speaking RPC on it: for tools and tests that send the site bytes
/// of their own making (the wire fuzzer).
pub async fn dial_bytes(
    addr: &str,
    tls: Arc<ClientConfig>,
    site: &SiteName,
    limits: &NetLimits,
) -> Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + use<>, NetError> {
    dial_tls(addr, tls, site, limits).await
}

async fn dial_tls(
    addr: &str,
    tls: Arc<ClientConfig>,
    site: &SiteName,
    limits: &NetLimits,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, NetError> {
    let timeout = |what| NetError::Timeout {
        what,
        addr: addr.to_owned(),
        after: limits.handshake_timeout,
    };
    let stream = tokio::time::timeout(limits.handshake_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| timeout("connecting"))?
        .map_err(|source| NetError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    crate::watch_for_dead_peer(&stream);
    let server_name = tinyci_pki::tls::server_name(site)?;
    let tls_stream = tokio::time::timeout(
        limits.handshake_timeout,
        TlsConnector::from(tls).connect(server_name, stream),
    )
    .await
    .map_err(|_| timeout("TLS handshake"))?
    .map_err(|source| NetError::Handshake {
        addr: addr.to_owned(),
        source,
    })?;
    Ok(tls_stream)
}
