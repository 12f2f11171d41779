//! Scale: 1,000 and 5,000 idle runners connected to one site. Two figures at each size:
//! the site's resident memory per runner connection, and p50/p99 time from submitting a run
//! to a runner holding its lease, one run at a time.
//!
//! Why the method is fair:
//! - The site is the real `tinyci site up` in its own process, so its memory is the kernel's
//!   count (VmRSS) before and after the runners connect, divided by their number; nothing in
//!   the bench process is counted.
//! - Each idle runner does what `tinyci runner` does on connecting (see the runner agent):
//!   its own certificate and holder-bound grant (issued as `tinyci runner add` issues them),
//!   mTLS dial, `Gateway.info`, `redeem`, `Session.worker` with its runner info, then a parked
//!   `Worker.next` carrying its `JobControl`. The runners share a few client threads (many
//!   connections per current-thread runtime), which costs the site nothing extra.
//! - The baseline is measured in the same run on a fresh site process: the same number of
//!   bare mTLS capnp-rpc connections (dial + `Gateway.info`, nothing redeemed), i.e. what
//!   the transport alone costs the site per connection.
//! - Submission to lease is timed from just before `Submitter.submit` is sent to the moment
//!   the runner's `Worker.next` resolves, both clocks in this process (one monotonic clock).
//!   It includes planning the archive, the durable submission and the durable lease. Each run
//!   is completed before the next is submitted, so every submission finds idle runners only.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tinyci_net::NetLimits;
use tinyci_pki::SiteName;
use tinyci_schema::{RunStatus, gateway, job_control};
use tinyci_site::bundle::RunnerBundle;
use tokio::sync::{mpsc, watch};

use crate::Options;
use crate::report::{self, Better, Figure, millis, percentile};
use crate::site_process::{SiteDir, SiteProcess};

/// The queue runners wait on (a repository without `queue:` lands there).
const QUEUE: &str = "default";

/// Client threads the runners are spread over.
const CLIENT_THREADS: usize = 4;

/// Dials in flight per client thread while connecting.
const DIALS_IN_FLIGHT: usize = 16;

/// Goals from the issue.
const MEMORY_GOAL_KIB: f64 = 32.0;
const LATENCY_GOAL_MS: f64 = 10.0;

pub(crate) async fn run(options: &Options) -> Result<Vec<Figure>> {
    println!("== scale: idle runners connected to one site");
    let (sizes, submissions): (&[usize], usize) = if options.quick {
        (&[100, 300], 20)
    } else {
        (&[1000, 5000], 200)
    };
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let smallest = sizes.iter().copied().min().unwrap_or(0);
    let site_dir = tokio::task::spawn_blocking(|| {
        let bin = crate::site_process::tinyci_binary()?;
        let site_dir = SiteDir::init(bin)?;
        // Every runner here dials from loopback: lift the per-address cap to the site's.
        let toml = site_dir.config_path();
        let text = std::fs::read_to_string(&toml).context("reading the bench site.toml")?;
        std::fs::write(
            &toml,
            text.replacen(
                "[site]\n",
                "[site]\nmax_connections_per_address = 10000\n",
                1,
            ),
        )
        .context("writing the bench site.toml")?;
        anyhow::Ok(site_dir)
    })
    .await
    .context("the site setup thread failed")??;
    let started = Instant::now();
    let (site_dir, bundles) = tokio::task::spawn_blocking(move || {
        let bundles = site_dir.issue_runners(largest, QUEUE)?;
        anyhow::Ok((site_dir, bundles))
    })
    .await
    .context("the bundle thread failed")??;
    println!(
        "  issued {largest} runner bundles (certificate + holder-bound grant each) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut figures = Vec::new();
    for &n in sizes {
        let runners = &bundles[..n];
        let bare = connected_rss(&site_dir, runners, Mode::Bare).await?;
        println!(
            "  {n} bare mTLS capnp-rpc connections: site RSS {} → {} KiB ({:.1} KiB each), connected in {:.1} s",
            bare.idle_kib,
            bare.connected_kib,
            bare.per_connection_kib(),
            bare.connect_time.as_secs_f64()
        );
        let bare_kib = bare.per_connection_kib();
        drop(bare.pool);
        drop(bare.site);
        let full = connected_rss(&site_dir, runners, Mode::Runner).await?;
        println!(
            "  {n} idle runners: site RSS {} → {} KiB ({:.1} KiB each), {} site threads, connected in {:.1} s",
            full.idle_kib,
            full.connected_kib,
            full.per_connection_kib(),
            full.site.threads()?,
            full.connect_time.as_secs_f64()
        );
        let memory = Figure {
            name: format!("scale, {n} idle runners: site memory per connection"),
            unit: "KiB",
            ours: full.per_connection_kib(),
            baseline: Some(bare_kib),
            baseline_name: "bare mTLS capnp-rpc conn",
            better: Better::Lower,
            goal: if n == largest {
                format!("< {MEMORY_GOAL_KIB} KiB at {n}")
            } else {
                String::new()
            },
            goal_met: (n == largest).then(|| full.per_connection_kib() < MEMORY_GOAL_KIB),
        };
        report::print(std::slice::from_ref(&memory));
        figures.push(memory);

        println!(
            "  disk now: one 4 KiB write + fdatasync takes {:.2} ms (median of 20); a submission \
             and its lease are two durable commits",
            millis(crate::dispatch::flush_probe()?)
        );
        let config = site_dir.config()?;
        let addr = full.site.addr;
        let events = full.events;
        let mut latencies = tokio::task::spawn_blocking(move || {
            local_thread(submit_one_at_a_time(config, addr, submissions, events))
        })
        .await
        .context("the submitter thread failed")??;
        drop(full.pool);
        drop(full.site);
        let p50 = millis(percentile(&mut latencies, 0.5));
        let p99 = millis(percentile(&mut latencies, 0.99));
        for (label, value, judged) in [("p50", p50, false), ("p99", p99, n == smallest)] {
            let figure = Figure {
                name: format!("scale, {n} idle runners: submit→lease {label}"),
                unit: "ms",
                ours: value,
                baseline: None,
                baseline_name: "",
                better: Better::Lower,
                goal: if judged {
                    format!("< {LATENCY_GOAL_MS} ms at {n}")
                } else {
                    String::new()
                },
                goal_met: judged.then_some(value < LATENCY_GOAL_MS),
            };
            report::print(std::slice::from_ref(&figure));
            figures.push(figure);
        }
    }
    Ok(figures)
}

/// What connected runners hold: a bare connection, or a redeemed runner waiting for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bare,
    Runner,
}

/// What a runner reports to the measuring side.
#[derive(Debug)]
enum Event {
    /// Connected (and, as a runner, parked on `Worker.next`).
    Connected,
    /// `Worker.next` resolved at this instant.
    Leased(Instant),
    /// The leased run was completed.
    Completed,
    /// Something failed; the measurement is void.
    Failed(String),
}

/// A fresh site with `runners` connected in `mode`, and its RSS before and after.
struct Connected {
    site: SiteProcess,
    pool: RunnerPool,
    events: mpsc::UnboundedReceiver<Event>,
    idle_kib: u64,
    connected_kib: u64,
    connect_time: Duration,
    count: usize,
}

impl Connected {
    fn per_connection_kib(&self) -> f64 {
        self.connected_kib.saturating_sub(self.idle_kib) as f64 / self.count as f64
    }
}

async fn connected_rss(
    site_dir: &SiteDir,
    runners: &[RunnerBundle],
    mode: Mode,
) -> Result<Connected> {
    let site = site_dir.start()?;
    let idle_kib = site.settled_rss_kib(Duration::from_millis(300)).await?;
    let started = Instant::now();
    let (pool, mut events) = RunnerPool::start(site.addr.to_string(), runners.to_vec(), mode)?;
    let mut connected = 0;
    while connected < runners.len() {
        match tokio::time::timeout(Duration::from_secs(120), events.recv()).await {
            Ok(Some(Event::Connected)) => connected += 1,
            Ok(Some(Event::Failed(why))) => bail!("a runner failed to connect: {why}"),
            Ok(Some(other)) => bail!("unexpected {other:?} while connecting"),
            Ok(None) => bail!("the runner threads stopped while connecting"),
            Err(_) => bail!(
                "only {connected} of {} runners connected in 120 s",
                runners.len()
            ),
        }
    }
    let connect_time = started.elapsed();
    // The last `Worker.next` calls may still be in flight: wait for the site to settle.
    let connected_kib = site.settled_rss_kib(Duration::from_millis(500)).await?;
    Ok(Connected {
        site,
        pool,
        events,
        idle_kib,
        connected_kib,
        connect_time,
        count: runners.len(),
    })
}

/// Runs `future` on a fresh current-thread runtime inside a `LocalSet` (capnp is `!Send`).
fn local_thread<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to build a runtime")?;
    tokio::task::LocalSet::new().block_on(&runtime, future)
}

/// Runner connections spread over a few client threads; dropping it disconnects them all.
struct RunnerPool {
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RunnerPool {
    fn start(
        addr: String,
        runners: Vec<RunnerBundle>,
        mode: Mode,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Event>)> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let mut shares: Vec<Vec<RunnerBundle>> = vec![Vec::new(); CLIENT_THREADS];
        for (i, bundle) in runners.into_iter().enumerate() {
            shares[i % CLIENT_THREADS].push(bundle);
        }
        let mut threads = Vec::new();
        for (t, share) in shares.into_iter().enumerate() {
            let (addr, events, mut stopped) = (addr.clone(), events_tx.clone(), stopped.clone());
            let thread = std::thread::Builder::new()
                .name(format!("bench-runners-{t}"))
                .spawn(move || {
                    let failed = events.clone();
                    let result = local_thread(async move {
                        let dials = Rc::new(tokio::sync::Semaphore::new(DIALS_IN_FLIGHT));
                        for bundle in share {
                            let (addr, events, dials) =
                                (addr.clone(), events.clone(), dials.clone());
                            tokio::task::spawn_local(async move {
                                if let Err(e) = runner(bundle, &addr, mode, &events, &dials).await {
                                    let _ = events.send(Event::Failed(format!("{e:#}")));
                                }
                            });
                        }
                        let _ = stopped.wait_for(|s| *s).await;
                        anyhow::Ok(())
                    });
                    if let Err(e) = result {
                        let _ = failed.send(Event::Failed(format!("{e:#}")));
                    }
                })
                .context("failed to start a runner thread")?;
            threads.push(thread);
        }
        Ok((Self { stop, threads }, events))
    }
}

impl Drop for RunnerPool {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A `JobControl` that accepts cancels (nothing runs, so there is nothing to stop).
struct Control;

impl job_control::Server for Control {
    async fn cancel(
        self: Rc<Self>,
        _: job_control::CancelParams,
        _: job_control::CancelResults,
    ) -> Result<(), capnp::Error> {
        Ok(())
    }
}

/// One runner: connects as the agent does, then takes and completes runs until dropped.
async fn runner(
    bundle: RunnerBundle,
    addr: &str,
    mode: Mode,
    events: &mpsc::UnboundedSender<Event>,
    dials: &tokio::sync::Semaphore,
) -> Result<()> {
    let permit = dials.acquire().await.context("dial limiter closed")?;
    let site = SiteName::new(&bundle.site).context("bundle site name")?;
    let tls = bundle.client_tls().context("bundle credentials")?;
    let (gateway, _connection) =
        tinyci_net::dial::<gateway::Client>(addr, tls, &site, &NetLimits::default())
            .await
            .context("dial")?;
    gateway
        .info_request()
        .send()
        .promise
        .await
        .context("Gateway.info")?;
    if mode == Mode::Bare {
        drop(permit);
        let _ = events.send(Event::Connected);
        // Hold the connection until the pool is dropped (which drops this task).
        return std::future::pending().await;
    }
    let mut redeem = gateway.redeem_request();
    redeem.get().set_token(&bundle.token);
    let session = redeem.send().pipeline.get_session();
    let mut request = session.worker_request();
    request.get().set_queue(QUEUE);
    {
        let mut info = request.get().init_runner();
        info.set_name(&bundle.runner);
        info.set_version(env!("CARGO_PKG_VERSION"));
        info.set_hostname("bench");
        info.set_slots(1);
        info.init_executors(1).set(0, "shell");
    }
    let worker = request
        .send()
        .promise
        .await
        .context("Session.worker")?
        .get()?
        .get_worker()?;
    // As the agent does: only the workers and the connection outlive connecting, so the
    // site may free the gateway and session objects.
    drop(session);
    drop(gateway);
    drop(permit);
    let control: job_control::Client = capnp_rpc::new_client(Control);
    let mut first = true;
    loop {
        let mut next = worker.next_request();
        next.get().set_control(control.clone());
        let pending = next.send().promise;
        if first {
            let _ = events.send(Event::Connected);
            first = false;
        }
        let response = pending.await.context("Worker.next")?;
        let at = Instant::now();
        let job = response.get()?.get_job()?;
        let _ = events.send(Event::Leased(at));
        let mut complete = job.complete_request();
        {
            let mut outcome = complete.get().init_outcome();
            outcome.set_status(RunStatus::Passed);
            outcome.set_exit_code(0);
            outcome.set_message("");
        }
        complete.send().promise.await.context("Job.complete")?;
        let _ = events.send(Event::Completed);
    }
}

/// As the site's admin: uploads one archive, then submits it `count` times, each time
/// waiting for a runner to lease and complete the run; returns submission-to-lease times.
async fn submit_one_at_a_time(
    config: tinyci_site::SiteConfig,
    addr: std::net::SocketAddr,
    count: usize,
    mut events: mpsc::UnboundedReceiver<Event>,
) -> Result<Vec<Duration>> {
    let (_client, admin) = tinyci_site::admin_capability(&config, Some(addr))
        .await
        .context("connecting as the site's admin")?;
    let mut get = admin.submitter_request();
    get.get().set_repo("bench/scale");
    let submitter = get.send().pipeline.get_submitter();
    let archive = crate::fixture::one_run_source()?;
    let digest = crate::fixture::upload(&submitter, &archive).await?;

    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let mut request = submitter.submit_request();
        {
            let mut r = request.get().init_request();
            // A ref of its own each time: nothing supersedes anything.
            r.set_ref(format!("refs/heads/bench-{i}"));
            r.set_sha("0123456789abcdef0123456789abcdef01234567");
            r.set_all(true);
            r.set_source_sha256(digest.as_slice());
            r.set_title("scale");
        }
        let sent = Instant::now();
        let submitted = request.send().promise;
        let leased = async {
            loop {
                match events.recv().await {
                    Some(Event::Leased(at)) => return Ok(at),
                    Some(Event::Failed(why)) => bail!("a runner failed: {why}"),
                    Some(_) => continue,
                    None => bail!("the runner threads stopped"),
                }
            }
        };
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            let (submitted, leased) = futures::future::join(submitted, leased).await;
            submitted.context("Submitter.submit")?;
            leased
        })
        .await;
        let at = match waited {
            Ok(at) => at?,
            Err(_) => bail!("submission {i} was not leased within 30 s"),
        };
        latencies.push(at.saturating_duration_since(sent));
        // The runner completes it before the next submission, so runners are idle again.
        loop {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                Ok(Some(Event::Completed)) => break,
                Ok(Some(Event::Failed(why))) => bail!("a runner failed: {why}"),
                Ok(Some(_)) => continue,
                Ok(None) => bail!("the runner threads stopped"),
                Err(_) => bail!("submission {i} was not completed within 30 s"),
            }
        }
    }
    Ok(latencies)
}
