//! The gRPC baseline: tonic unary calls over rustls mTLS on loopback.
//!
//! Fair by construction: the same rustls configs as tinyci (certificates from the same site CA,
//! TLS 1.3, aws-lc-rs, client certificate required and checked by the same verifier), TCP
//! nodelay as tinyci sets it, the server on its own thread with a current-thread runtime (as a
//! site serves), the client on a current-thread runtime, and the same payload bytes the capnp
//! call returns. No protoc: a raw-bytes codec (the response is a pre-built buffer, so tonic does
//! less work per call than capnp, which builds its reply) and tonic's own `Server` and
//! `Channel`, i.e. what a tonic user gets, with HTTP/2 over our TLS stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, anyhow};
use bytes::{Buf, BufMut, Bytes};
use futures::future::BoxFuture;
use tinyci_net::{ClientConfig, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Status, body::Body};

/// The method path every call uses.
const PATH: &str = "/tinyci.bench.Echo/Call";

/// Bytes in, bytes out: no serialization at all.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The service: answers every call with `reply`.
#[derive(Debug, Clone)]
struct Echo {
    reply: Bytes,
}

impl tower::Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let reply = self.reply.clone();
        Box::pin(async move {
            let unary = tower::service_fn(move |_: tonic::Request<Bytes>| {
                let reply = reply.clone();
                async move { Ok::<_, Status>(tonic::Response::new(reply)) }
            });
            let mut grpc = tonic::server::Grpc::new(RawCodec);
            Ok(grpc.unary(unary, request).await)
        })
    }
}

/// A tonic server on its own thread; dropping it stops the server.
#[derive(Debug)]
pub(crate) struct TonicServer {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TonicServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a tonic server answering with `reply`, TLS from `tls`.
pub(crate) async fn serve(tls: Arc<ServerConfig>, reply: Bytes) -> anyhow::Result<TonicServer> {
    let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<SocketAddr>>();
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("tonic-server".into())
        .spawn(move || {
            let served = crate::fixture::block_on_local(|| async move {
                let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
                let _ = ready_tx.send(Ok(listener.local_addr()?));
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                // Handshakes inline: the benchmark makes one connection.
                let incoming = futures::stream::unfold(listener, move |listener| {
                    let acceptor = acceptor.clone();
                    async move {
                        let accepted = async {
                            let (tcp, _) = listener.accept().await?;
                            tcp.set_nodelay(true)?;
                            acceptor.accept(tcp).await
                        }
                        .await;
                        Some((accepted, listener))
                    }
                });
                tonic::transport::Server::builder()
                    .serve_with_incoming_shutdown(Echo { reply }, incoming, async move {
                        let _ = stopped.await;
                    })
                    .await
                    .context("tonic server")?;
                anyhow::Ok(())
            });
            if let Err(e) = served {
                eprintln!("tonic server: {e:#}");
            }
        })
        .context("spawning the tonic server thread")?;
    let addr = ready_rx
        .await
        .map_err(|_| anyhow!("the tonic server thread ended"))??;
    Ok(TonicServer {
        addr,
        stop: Some(stop),
    })
}

/// A connected tonic client.
#[derive(Debug, Clone)]
pub(crate) struct TonicClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl TonicClient {
    /// Connects over mTLS with `tls` (one HTTP/2 connection, as a Channel to one endpoint).
    pub(crate) async fn connect(addr: SocketAddr, tls: Arc<ClientConfig>) -> anyhow::Result<Self> {
        let connector = tokio_rustls::TlsConnector::from(tls);
        let server_name =
            tinyci_pki::tls::server_name(&tinyci_pki::SiteName::new(crate::fixture::SITE)?)?;
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1")
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let connector = connector.clone();
                let server_name = server_name.clone();
                async move {
                    let tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let tls = connector.connect(server_name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }))
            .await
            .context("connecting the tonic channel")?;
        Ok(Self {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// One unary call carrying `request`; returns the reply's length.
    pub(crate) async fn call(&self, request: Bytes) -> anyhow::Result<usize> {
        let mut grpc = self.grpc.clone();
        grpc.ready().await.context("tonic channel not ready")?;
        let response = grpc
            .unary(
                tonic::Request::new(request),
                http::uri::PathAndQuery::from_static(PATH),
                RawCodec,
            )
            .await
            .context("tonic call")?;
        Ok(response.into_inner().len())
    }
}
