//! Timing calls: a fixed number of calls, either one after another or with a fixed number in
//! flight, each call's latency recorded. One driver for every system measured, so capnp and
//! tonic are timed by exactly the same loop on the same kind of thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::time::{Duration, Instant};

use crate::report::percentile;

/// What one batch of calls measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) calls_per_sec: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) mean: Duration,
}

/// Makes `total` calls with `in_flight` outstanding at any time (1: sequential) and times
/// each. `in_flight` workers share one counter, so the batch is exactly `total` calls; they
/// all run in the caller's task, as a client multiplexing one connection would.
pub(crate) async fn calls<F, Fut>(total: usize, in_flight: usize, call: F) -> anyhow::Result<Sample>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let left = Cell::new(total);
    let latencies = RefCell::new(Vec::with_capacity(total));
    let worker = || async {
        loop {
            if left.get() == 0 {
                return anyhow::Ok(());
            }
            left.set(left.get() - 1);
            let started = Instant::now();
            call().await?;
            latencies.borrow_mut().push(started.elapsed());
        }
    };
    let started = Instant::now();
    let results = futures::future::join_all((0..in_flight.max(1)).map(|_| worker())).await;
    let elapsed = started.elapsed();
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let mut latencies = latencies.into_inner();
    let sum: Duration = latencies.iter().sum();
    let n = latencies.len().max(1);
    Ok(Sample {
        calls_per_sec: total as f64 / elapsed.as_secs_f64(),
        p50: percentile(&mut latencies, 0.5),
        p99: percentile(&mut latencies, 0.99),
        mean: sum / u32::try_from(n).unwrap_or(u32::MAX),
    })
}

/// Microseconds as f64, for latency figures (milliseconds would print 0.07).
pub(crate) fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// CPU time this process has used so far, user and system, all threads: the kernel's
/// process CPU clock (`CLOCK_PROCESS_CPUTIME_ID`), to the nanosecond.
pub(crate) fn process_cpu() -> anyhow::Result<Duration> {
    let spent = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map_err(|e| anyhow::anyhow!("reading the process CPU clock: {e}"))?;
    Ok(Duration::from(spent))
}
