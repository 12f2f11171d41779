//! Figure 4: grants. Two questions, each against a baseline measured in the same run:
//!
//! - **Redemption latency**: `Gateway.redeem` of a real runner token on a real site, awaited
//!   (p50/p99), beside `Gateway.info` on the same connection: a call that checks no token, so
//!   the difference is what redemption costs (Biscuit parse, signature check, revocation and
//!   holder binding, the session's registration). The in-process cost of
//!   `tinyci_grant::verify` is printed too, to show how much of it is the cryptography.
//! - **Per-call cost of a session capability**: `Session.grant()` on a session obtained by
//!   redeeming a token (the product: site `Observed` wrapper + membrane liveness check) against
//!   the same capability handed out without a token: the same `Session.grant` work
//!   (`rpc::FixedSession`) served as a connection's bootstrap by the same transport
//!   (`tinyci_net::serve`, same TLS configs), wrapped in the same `Observed` layer with an
//!   observer that records the same Prometheus counter and histogram the site records. The site
//!   offers no tokenless way to reach a session capability, so this twin is as close as "the
//!   same capability without a token" gets; what differs is exactly the grant machinery a call
//!   passes through (the membrane). Mean latency sequential and calls/s at 64 in flight;
//!   the goal is under 5% overhead.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use tinyci_grant::Grant;
use tinyci_net::observe::{CallObserver, Observed, Outcome};
use tinyci_net::{Listener, NetLimits, ServerConfig};
use tinyci_pki::Role;
use tinyci_schema::session;
use tokio::sync::oneshot;

use crate::Options;
use crate::fixture::{self, SiteFixture, median};
use crate::measure::{self, Sample, micros};
use crate::report::{self, Better, Figure};
use crate::rpc::{FixedSession, grant_call};

/// The site's RPC metrics (`tinyci-site/src/metrics.rs`), same names, labels and buckets.
struct RpcMetrics {
    calls: IntCounterVec,
    duration: HistogramVec,
}

impl RpcMetrics {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            calls: IntCounterVec::new(
                Opts::new("tinyci_rpc_calls_total", "Capability calls served."),
                &["interface", "method", "outcome"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new("tinyci_rpc_duration_seconds", "Time to serve a call.").buckets(
                    vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
                    ],
                ),
                &["interface", "method"],
            )?,
        })
    }
}

impl CallObserver for RpcMetrics {
    fn finished(
        &self,
        interface: &'static str,
        method: &'static str,
        outcome: Outcome,
        elapsed: Duration,
    ) {
        self.calls
            .with_label_values(&[interface, method, outcome.as_str()])
            .inc();
        self.duration
            .with_label_values(&[interface, method])
            .observe(elapsed.as_secs_f64());
    }
}

/// The tokenless twin on its own thread; dropping it stops it.
struct TwinServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TwinServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn twin_server(tls: Arc<ServerConfig>, grant: Grant) -> anyhow::Result<TwinServer> {
    let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<SocketAddr>>();
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("twin-server".into())
        .spawn(move || {
            let served = fixture::block_on_local(|| async move {
                let listener = Listener::bind(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    tls,
                    NetLimits::default(),
                )
                .await?;
                let _ = ready_tx.send(Ok(listener.local_addr()?));
                let metrics: Rc<dyn CallObserver> = Rc::new(RpcMetrics::new()?);
                tinyci_net::serve(
                    listener,
                    move |_peer| {
                        capnp_rpc::new_client::<session::Client, _>(Observed::new(
                            FixedSession {
                                grant: grant.clone(),
                            },
                            metrics.clone(),
                        ))
                        .client
                    },
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await;
                anyhow::Ok(())
            });
            if let Err(e) = served {
                eprintln!("twin server: {e:#}");
            }
        })
        .context("spawning the twin server thread")?;
    let addr = ready_rx
        .await
        .map_err(|_| anyhow::anyhow!("the twin server thread ended"))??;
    Ok(TwinServer {
        addr,
        stop: Some(stop),
    })
}

#[derive(Debug, Default)]
struct Collected {
    redeem: Vec<Sample>,
    info: Vec<Sample>,
    session_seq: Vec<Sample>,
    twin_seq: Vec<Sample>,
    session_64: Vec<Sample>,
    twin_64: Vec<Sample>,
}

pub(crate) async fn run(options: &Options) -> anyhow::Result<Vec<Figure>> {
    println!("== grants: redemption latency, per-call cost of a session capability");
    let (rounds, redeems, calls, concurrent) = if options.quick {
        (1, 200, 500, 2_000)
    } else {
        // Many short rounds, the two sides alternating which goes first: the difference
        // measured is a few nanoseconds under tens of microseconds of loopback round trip, so
        // drift between rounds (other processes, CPU frequency) must cancel out.
        (15, 1_000, 5_000, 20_000)
    };
    let site = SiteFixture::start("").await?;
    let (token, grant) = site.mint(
        "runner:r1",
        &["queue:take", "logs:read"],
        &["org/x"],
        &["default"],
    )?;
    let verify_us = {
        // In-process: what the signature check and Datalog cost without any RPC.
        let root = site.root_key();
        let n = if options.quick { 50 } else { 500 };
        let started = Instant::now();
        for _ in 0..n {
            tinyci_grant::verify(&token, root).context("verifying the token")?;
        }
        micros(started.elapsed()) / f64::from(n)
    };
    let twin = twin_server(site.server_tls()?, grant).await?;
    let tls = site.client_tls(Role::Runner, "r1")?;
    let (site_addr, twin_addr) = (site.addr(), twin.addr);
    let c = fixture::on_thread("grants-client", move || async move {
        let (gateway, _connection) = fixture::connect(site_addr, tls.clone()).await?;
        let session = fixture::redeem(&gateway, &token).await?;
        let (twin, _twin_connection): (session::Client, _) = tinyci_net::dial(
            &twin_addr.to_string(),
            tls,
            &tinyci_pki::SiteName::new(fixture::SITE)?,
            &NetLimits::default(),
        )
        .await?;
        let mut c = Collected::default();
        for round in 0..=rounds {
            // Round 0 warms up and is not kept.
            let keep = round > 0;
            let redeem = measure::calls(redeems, 1, || async {
                fixture::redeem(&gateway, &token).await.map(drop)
            })
            .await?;
            let info = measure::calls(redeems, 1, || async {
                gateway.info_request().send().promise.await?;
                Ok(())
            })
            .await?;
            let (session_seq, twin_seq, session_64, twin_64) = if round % 2 == 0 {
                let session_seq = measure::calls(calls, 1, || grant_call(&session)).await?;
                let twin_seq = measure::calls(calls, 1, || grant_call(&twin)).await?;
                let session_64 = measure::calls(concurrent, 64, || grant_call(&session)).await?;
                let twin_64 = measure::calls(concurrent, 64, || grant_call(&twin)).await?;
                (session_seq, twin_seq, session_64, twin_64)
            } else {
                let twin_seq = measure::calls(calls, 1, || grant_call(&twin)).await?;
                let session_seq = measure::calls(calls, 1, || grant_call(&session)).await?;
                let twin_64 = measure::calls(concurrent, 64, || grant_call(&twin)).await?;
                let session_64 = measure::calls(concurrent, 64, || grant_call(&session)).await?;
                (session_seq, twin_seq, session_64, twin_64)
            };
            if keep {
                c.redeem.push(redeem);
                c.info.push(info);
                c.session_seq.push(session_seq);
                c.twin_seq.push(twin_seq);
                c.session_64.push(session_64);
                c.twin_64.push(twin_64);
            }
        }
        anyhow::Ok(c)
    })
    .await?;
    drop(twin);
    site.stop().await?;

    let med =
        |s: &[Sample], f: fn(&Sample) -> f64| median(&mut s.iter().map(f).collect::<Vec<_>>());
    let p50 = |s: &Sample| micros(s.p50);
    let p99 = |s: &Sample| micros(s.p99);
    let mean = |s: &Sample| micros(s.mean);
    let rate = |s: &Sample| s.calls_per_sec;
    let (session_mean, twin_mean) = (med(&c.session_seq, mean), med(&c.twin_seq, mean));
    let (session_rate, twin_rate) = (med(&c.session_64, rate), med(&c.twin_64, rate));
    // The overhead is the median of each round's own ratio (both sides measured back to
    // back), not a ratio of medians taken over different moments.
    let per_round = |ours: &[Sample], twin: &[Sample], f: fn(&Sample, &Sample) -> f64| {
        median(
            &mut ours
                .iter()
                .zip(twin)
                .map(|(o, t)| f(o, t))
                .collect::<Vec<_>>(),
        )
    };
    let overhead_seq = per_round(&c.session_seq, &c.twin_seq, |o, t| {
        (o.mean.as_secs_f64() / t.mean.as_secs_f64() - 1.0) * 100.0
    });
    let overhead_64 = per_round(&c.session_64, &c.twin_64, |o, t| {
        (t.calls_per_sec / o.calls_per_sec - 1.0) * 100.0
    });
    let figures = vec![
        Figure::new(
            "grants: Gateway.redeem p50",
            "µs",
            Better::Lower,
            med(&c.redeem, p50),
            Some((med(&c.info, p50), "Gateway.info")),
        ),
        Figure::new(
            "grants: Gateway.redeem p99",
            "µs",
            Better::Lower,
            med(&c.redeem, p99),
            Some((med(&c.info, p99), "Gateway.info")),
        ),
        Figure::new(
            "grants: tinyci_grant::verify in-process",
            "µs",
            Better::Lower,
            verify_us,
            None,
        ),
        Figure::new(
            format!("grants: session cap call, sequential mean ({overhead_seq:+.1}%)"),
            "µs",
            Better::Lower,
            session_mean,
            Some((twin_mean, "no token")),
        )
        .with_goal("< 5% overhead", Some(overhead_seq < 5.0)),
        Figure::new(
            format!("grants: session cap call, 64 in flight ({overhead_64:+.1}%)"),
            "calls/s",
            Better::Higher,
            session_rate,
            Some((twin_rate, "no token")),
        )
        .with_goal("< 5% overhead", Some(overhead_64 < 5.0)),
        Figure::new(
            "grants: session cap call, sequential p99",
            "µs",
            Better::Lower,
            med(&c.session_seq, p99),
            Some((med(&c.twin_seq, p99), "no token")),
        ),
    ];
    report::print(&figures);
    Ok(figures)
}
