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

/// CPU time this process has used so far, user and system, all threads: the kernel's count
/// (`utime` and `stime` in `/proc/self/stat`, in clock ticks of 1/100 s, which Linux fixes
/// at 100 per second for that file whatever the kernel's own tick).
pub(crate) fn process_cpu() -> anyhow::Result<Duration> {
    const TICKS_PER_SEC: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("/proc/self/stat has no command name"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the file; the first after the name is field 3.
    let tick = |field: usize| -> anyhow::Result<u64> {
        fields
            .get(field - 3)
            .ok_or_else(|| anyhow::anyhow!("/proc/self/stat has no field {field}"))?
            .parse::<u64>()
            .map_err(|e| anyhow::anyhow!("/proc/self/stat field {field}: {e}"))
    };
    let ticks = tick(14)? + tick(15)?;
    Ok(Duration::from_millis(ticks * 1000 / TICKS_PER_SEC))
}
