//! Figure 1: a trivial capability call over mTLS on loopback, sequential and with 64 calls in
//! flight, three ways in the same run:
//!
//! - **tinyci**: the full product path. A real site (`Site::open`/`run`, its own thread), a
//!   runner certificate, `Gateway.redeem` of a real token, then `Session.grant()` calls on the
//!   session: through the site's `Observed` wrapper (tracing span, Prometheus counters and
//!   histogram), the membrane's liveness check, and the site's tracing subscriber as
//!   `tinyci site up` installs it.
//! - **bare capnp-rpc**: the same method (`Session.grant`, same reply built the same way) on a
//!   plain capnp server with no tinyci layer, over tokio-rustls with the same TLS configs.
//! - **tonic**: gRPC unary calls with the same reply bytes (see `tonic_baseline`).
//!
//! Fairness: one server thread per system (current-thread runtime), one client thread for all
//! three (so they take turns on the same core budget), rounds interleaved so drift hits all
//! alike, medians over rounds. Every call's latency is recorded; calls/s is calls over wall
//! time of the batch.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{RpcSystem, twoparty};
use tinyci_grant::Grant;
use tinyci_net::{ClientConfig, ServerConfig};
use tinyci_pki::Role;
use tinyci_schema::session;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::Options;
use crate::fixture::{self, SiteFixture, median};
use crate::measure::{self, Sample, micros};
use crate::report::{self, Better, Figure};

/// Calls in flight for the concurrent figure.
const IN_FLIGHT: usize = 64;

/// A `Session` that only answers `grant`, with the reply the site's `Session.grant` builds
/// (the site's own `fill_grant_info`): the same work per call without any tinyci layer
/// around it.
pub(crate) struct FixedSession {
    pub(crate) grant: Grant,
}

impl session::Server for FixedSession {
    async fn grant(
        self: Rc<Self>,
        _: session::GrantParams,
        mut results: session::GrantResults,
    ) -> Result<(), capnp::Error> {
        tinyci_site::fill_grant_info(results.get().init_grant(), &self.grant);
        Ok(())
    }
}

/// The reply as bytes on the wire (a capnp message holding the `GrantInfo`), for tonic.
fn reply_bytes(grant: &Grant) -> anyhow::Result<Bytes> {
    let mut message = capnp::message::Builder::new_default();
    tinyci_site::fill_grant_info(message.init_root(), grant);
    let mut out = Vec::new();
    capnp::serialize::write_message(&mut out, &message).context("serializing the reply")?;
    Ok(Bytes::from(out))
}

/// A plain capnp-rpc server on its own thread whose bootstrap is `bootstrap()`, over
/// tokio-rustls with `tls`; no tinyci-net, no observation. Dropping it stops accepting.
#[derive(Debug)]
pub(crate) struct BareServer {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for BareServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub(crate) async fn bare_server(
    tls: Arc<ServerConfig>,
    grant: Grant,
) -> anyhow::Result<BareServer> {
    let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<SocketAddr>>();
    let (stop, mut stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("bare-capnp-server".into())
        .spawn(move || {
            let served = fixture::block_on_local(|| async move {
                let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
                let _ = ready_tx.send(Ok(listener.local_addr()?));
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = &mut stopped => return anyhow::Ok(()),
                        accepted = listener.accept() => accepted?,
                    };
                    tcp.set_nodelay(true)?;
                    let acceptor = acceptor.clone();
                    let grant = grant.clone();
                    tokio::task::spawn_local(async move {
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let (read, write) = tokio::io::split(stream);
                        let network = twoparty::VatNetwork::new(
                            read.compat(),
                            write.compat_write(),
                            Side::Server,
                            capnp::message::ReaderOptions::new(),
                        );
                        let client: session::Client = capnp_rpc::new_client(FixedSession { grant });
                        let _ = RpcSystem::new(Box::new(network), Some(client.client)).await;
                    });
                }
            });
            if let Err(e) = served {
                eprintln!("bare capnp server: {e:#}");
            }
        })
        .context("spawning the bare capnp server thread")?;
    let addr = ready_rx
        .await
        .map_err(|_| anyhow::anyhow!("the bare capnp server thread ended"))??;
    Ok(BareServer {
        addr,
        stop: Some(stop),
    })
}

/// Dials a bare server: tokio-rustls and twoparty, nothing else. Must run in a `LocalSet`.
pub(crate) async fn bare_connect(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
) -> anyhow::Result<session::Client> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = tinyci_pki::tls::server_name(&tinyci_pki::SiteName::new(fixture::SITE)?)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .context("TLS handshake with the bare server")?;
    let (read, write) = tokio::io::split(stream);
    let network = twoparty::VatNetwork::new(
        read.compat(),
        write.compat_write(),
        Side::Client,
        capnp::message::ReaderOptions::new(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let client: session::Client = rpc.bootstrap(Side::Server);
    tokio::task::spawn_local(rpc);
    Ok(client)
}

/// One `Session.grant()` round trip.
pub(crate) async fn grant_call(session: &session::Client) -> anyhow::Result<()> {
    let response = session.grant_request().send().promise.await?;
    response.get()?.get_grant()?.get_summary()?;
    Ok(())
}

/// Samples per system and mode over the rounds.
#[derive(Debug, Default)]
struct Rounds {
    sequential: Vec<Sample>,
    concurrent: Vec<Sample>,
}

pub(crate) async fn run(options: &Options) -> anyhow::Result<Vec<Figure>> {
    println!("== rpc: Session.grant over mTLS (tinyci, bare capnp-rpc) vs tonic unary");
    let (rounds, sequential_calls, concurrent_calls) = if options.quick {
        (1, 500, 2_000)
    } else {
        (5, 10_000, 50_000)
    };
    let site = SiteFixture::start("").await?;
    let (token, grant) = site.mint("runner:r1", &["logs:read"], &["org/x"], &[])?;
    let bare = bare_server(site.server_tls()?, grant.clone()).await?;
    let reply = reply_bytes(&grant)?;
    let tonic = crate::tonic_baseline::serve(site.server_tls()?, reply.clone()).await?;
    let tls = site.client_tls(Role::Runner, "r1")?;
    let (site_addr, bare_addr, tonic_addr) = (site.addr(), bare.addr, tonic.addr);
    let [product, bare_rounds, tonic_rounds] =
        fixture::on_thread("rpc-client", move || async move {
            let (gateway, _connection) = fixture::connect(site_addr, tls.clone()).await?;
            let session = fixture::redeem(&gateway, &token).await?;
            let bare = bare_connect(bare_addr, tls.clone()).await?;
            let tonic = crate::tonic_baseline::TonicClient::connect(tonic_addr, tls).await?;
            let empty = Bytes::new();
            let mut all: [Rounds; 3] = Default::default();
            for round in 0..=rounds {
                // Round 0 warms connections, allocators and caches; it is not kept.
                let keep = round > 0;
                for (i, rounds) in all.iter_mut().enumerate() {
                    for (in_flight, total) in [(1, sequential_calls), (IN_FLIGHT, concurrent_calls)]
                    {
                        let sample = match i {
                            0 => measure::calls(total, in_flight, || grant_call(&session)).await?,
                            1 => measure::calls(total, in_flight, || grant_call(&bare)).await?,
                            _ => {
                                measure::calls(total, in_flight, || async {
                                    tonic.call(empty.clone()).await.map(drop)
                                })
                                .await?
                            }
                        };
                        if keep {
                            if in_flight == 1 {
                                rounds.sequential.push(sample);
                            } else {
                                rounds.concurrent.push(sample);
                            }
                        }
                    }
                }
            }
            anyhow::Ok(all)
        })
        .await?;
    drop((bare, tonic));
    site.stop().await?;

    let mut figures = Vec::new();
    for (mode, pick) in [
        (
            "sequential",
            (|r: &Rounds| r.sequential.clone()) as fn(&Rounds) -> Vec<Sample>,
        ),
        ("64 in flight", |r: &Rounds| r.concurrent.clone()),
    ] {
        let (p, b, t) = (pick(&product), pick(&bare_rounds), pick(&tonic_rounds));
        let rate =
            |s: &[Sample]| median(&mut s.iter().map(|s| s.calls_per_sec).collect::<Vec<_>>());
        let p50 = |s: &[Sample]| median(&mut s.iter().map(|s| micros(s.p50)).collect::<Vec<_>>());
        let p99 = |s: &[Sample]| median(&mut s.iter().map(|s| micros(s.p99)).collect::<Vec<_>>());
        let concurrent = mode != "sequential";
        let goal_ratio = rate(&p) / rate(&t);
        let tinyci = Figure::new(
            format!("rpc {mode}: tinyci (gateway→session) calls/s"),
            "calls/s",
            Better::Higher,
            rate(&p),
            Some((rate(&t), "tonic")),
        );
        let mut batch = vec![
            if concurrent {
                tinyci.with_goal("≥ 1.5× tonic", Some(goal_ratio >= 1.5))
            } else {
                tinyci
            },
            Figure::new(
                format!("rpc {mode}: bare capnp-rpc calls/s"),
                "calls/s",
                Better::Higher,
                rate(&b),
                Some((rate(&t), "tonic")),
            ),
            Figure::new(
                format!("rpc {mode}: tinyci vs bare capnp-rpc calls/s"),
                "calls/s",
                Better::Higher,
                rate(&p),
                Some((rate(&b), "bare capnp-rpc")),
            ),
        ];
        for (label, pct) in [("p50", p50 as fn(&[Sample]) -> f64), ("p99", p99)] {
            for (who, samples) in [("tinyci", &p), ("bare capnp-rpc", &b)] {
                batch.push(Figure::new(
                    format!("rpc {mode}: {who} {label}"),
                    "µs",
                    Better::Lower,
                    pct(samples),
                    Some((pct(&t), "tonic")),
                ));
            }
        }
        report::print(&batch);
        figures.extend(batch);
    }
    Ok(figures)
}
