//! `tinyci runner --metrics ADDR`: the runner's own Prometheus endpoint (plain HTTP,
//! `/metrics` only), read from the agent's [`AgentStats`] when scraped.

use std::convert::Infallible;
use std::rc::Rc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tinyci_runner::AgentStats;

/// The exposition of `stats` now (a fresh registry per scrape: counters start at the
/// agent's totals).
fn render(stats: &AgentStats, name: &str) -> Result<String> {
    let registry =
        Registry::new_custom(None, Some([("runner".to_owned(), name.to_owned())].into()))?;
    let connected = IntGauge::new("tinyci_runner_connected", "1 while connected to its site.")?;
    connected.set(i64::from(stats.connected.get()));
    let connections = IntCounter::new(
        "tinyci_runner_connections_total",
        "Connections made to the site (the first and every reconnection).",
    )?;
    connections.inc_by(stats.connections.get());
    let started = IntCounter::new(
        "tinyci_runner_jobs_started_total",
        "Jobs leased to this runner.",
    )?;
    started.inc_by(stats.jobs_started.get());
    let finished = IntCounterVec::new(
        Opts::new(
            "tinyci_runner_jobs_finished_total",
            "Jobs finished, by verdict.",
        ),
        &["verdict"],
    )?;
    for (verdict, count) in stats.jobs_finished.borrow().iter() {
        finished.with_label_values(&[verdict]).inc_by(*count);
    }
    registry.register(Box::new(connected))?;
    registry.register(Box::new(connections))?;
    registry.register(Box::new(started))?;
    registry.register(Box::new(finished))?;
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(String::from_utf8(out)?)
}

/// Binds `addr` and serves `/metrics` until the runtime ends. Returns the bound address.
pub(crate) async fn serve(
    addr: std::net::SocketAddr,
    stats: Rc<AgentStats>,
    name: String,
) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::task::spawn_local(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (stats, name) = (stats.clone(), name.clone());
            tokio::task::spawn_local(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let reply = if request.uri().path() == "/metrics" {
                        match render(&stats, &name) {
                            Ok(text) => hyper::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(Bytes::from(text))),
                            Err(e) => hyper::Response::builder()
                                .status(500)
                                .body(Full::new(Bytes::from(format!("{e:#}\n")))),
                        }
                    } else {
                        hyper::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"only /metrics here\n")))
                    };
                    let reply =
                        reply.unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())));
                    async move { Ok::<_, Infallible>(reply) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}
