//! The site's Prometheus metrics, served as text at `/metrics` on the HTTP listener.
//!
//! Counters move where things happen (every RPC through `tinyci_net::observe`, redemptions at
//! the gateway, log bytes as stored, runs as they end); gauges that describe the present
//! (queue depth, lease age, connected runners) are read from the queue when scraped, so they
//! are never stale. Labels are bounded: interface and method names come from the schema,
//! queues and statuses from the site's own state, never from request text.

use std::rc::Rc;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tinyci_net::observe::{CallObserver, Outcome};

/// Every metric the site exports.
pub(crate) struct Metrics {
    registry: Registry,
    rpc_calls: IntCounterVec,
    rpc_duration: HistogramVec,
    queue_depth: IntGaugeVec,
    lease_age: prometheus::GaugeVec,
    runners_connected: IntGauge,
    log_bytes: IntCounter,
    grants_redeemed: IntCounterVec,
    runs: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Metric definitions cannot fail at run time unless a name is malformed, which the tests
/// would catch; this keeps construction infallible for callers.
fn must<T>(made: Result<T, prometheus::Error>, what: &str) -> T {
    match made {
        Ok(metric) => metric,
        // Names and labels are literals checked by `every_metric_is_exported`.
        Err(e) => unreachable!("metric {what} is malformed: {e}"),
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        let rpc_calls = must(
            IntCounterVec::new(
                Opts::new(
                    "tinyci_rpc_calls_total",
                    "Capability calls served, by outcome.",
                ),
                &["interface", "method", "outcome"],
            ),
            "tinyci_rpc_calls_total",
        );
        let rpc_duration = must(
            HistogramVec::new(
                HistogramOpts::new(
                    "tinyci_rpc_duration_seconds",
                    "Time to serve a capability call (a parked Worker.next counts until it is handed a job).",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
                ]),
                &["interface", "method"],
            ),
            "tinyci_rpc_duration_seconds",
        );
        let queue_depth = must(
            IntGaugeVec::new(
                Opts::new("tinyci_queue_depth", "Runs waiting in each queue."),
                &["queue"],
            ),
            "tinyci_queue_depth",
        );
        let lease_age = must(
            prometheus::GaugeVec::new(
                Opts::new(
                    "tinyci_lease_age_seconds",
                    "Age of the oldest running attempt in each queue.",
                ),
                &["queue"],
            ),
            "tinyci_lease_age_seconds",
        );
        let runners_connected = must(
            IntGauge::new(
                "tinyci_runners_connected",
                "Runners waiting for work or holding runs.",
            ),
            "tinyci_runners_connected",
        );
        let log_bytes = must(
            IntCounter::new("tinyci_log_bytes_total", "Run log bytes stored."),
            "tinyci_log_bytes_total",
        );
        let grants_redeemed = must(
            IntCounterVec::new(
                Opts::new(
                    "tinyci_grants_redeemed_total",
                    "Tokens presented at the gateway, by outcome.",
                ),
                &["outcome"],
            ),
            "tinyci_grants_redeemed_total",
        );
        let runs = must(
            IntCounterVec::new(
                Opts::new("tinyci_runs_total", "Runs that reached a final status."),
                &["status"],
            ),
            "tinyci_runs_total",
        );
        for collector in [
            Box::new(rpc_calls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rpc_duration.clone()),
            Box::new(queue_depth.clone()),
            Box::new(lease_age.clone()),
            Box::new(runners_connected.clone()),
            Box::new(log_bytes.clone()),
            Box::new(grants_redeemed.clone()),
            Box::new(runs.clone()),
        ] {
            must(registry.register(collector), "registration");
        }
        Self {
            registry,
            rpc_calls,
            rpc_duration,
            queue_depth,
            lease_age,
            runners_connected,
            log_bytes,
            grants_redeemed,
            runs,
        }
    }

    /// A token was presented: `ok` or `refused`.
    pub(crate) fn redeemed(&self, ok: bool) {
        self.grants_redeemed
            .with_label_values(&[if ok { "ok" } else { "refused" }])
            .inc();
    }

    /// Log bytes were stored.
    pub(crate) fn log_stored(&self, bytes: usize) {
        self.log_bytes.inc_by(bytes as u64);
    }

    /// A run reached `status` (final).
    pub(crate) fn run_ended(&self, status: &str) {
        self.runs.with_label_values(&[status]).inc();
    }

    /// The text exposition, with the present-state gauges read from `queue` now.
    pub(crate) fn render(&self, queue: &tinyci_queue::Queue, now_ms: u64) -> String {
        self.queue_depth.reset();
        self.lease_age.reset();
        for (name, stats) in queue.queues() {
            self.queue_depth
                .with_label_values(&[name.as_str()])
                .set(i64::try_from(stats.depth).unwrap_or(i64::MAX));
            let age = stats.oldest_started_at.map_or(0.0, |started| {
                now_ms.saturating_sub(started) as f64 / 1000.0
            });
            self.lease_age.with_label_values(&[name.as_str()]).set(age);
        }
        self.runners_connected
            .set(i64::try_from(queue.runners().len()).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl CallObserver for Metrics {
    fn finished(
        &self,
        interface: &'static str,
        method: &'static str,
        outcome: Outcome,
        elapsed: Duration,
    ) {
        self.rpc_calls
            .with_label_values(&[interface, method, outcome.as_str()])
            .inc();
        self.rpc_duration
            .with_label_values(&[interface, method])
            .observe(elapsed.as_secs_f64());
    }
}

/// The observer every served capability reports to.
pub(crate) fn observer(metrics: &Rc<Metrics>) -> Rc<dyn CallObserver> {
    metrics.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported() {
        let metrics = Metrics::new();
        metrics.redeemed(true);
        metrics.log_stored(10);
        metrics.run_ended("passed");
        metrics.finished("Gateway", "info", Outcome::Ok, Duration::from_millis(1));
        let text = {
            let mut out = Vec::new();
            TextEncoder::new()
                .encode(&metrics.registry.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        for name in [
            "tinyci_rpc_calls_total",
            "tinyci_rpc_duration_seconds",
            "tinyci_runners_connected",
            "tinyci_log_bytes_total",
            "tinyci_grants_redeemed_total",
            "tinyci_runs_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
    }
}
