//! Figure 3: log streaming, MB/s from runners to the site with a live follower per run, with
//! one run and with 16 runs streaming at once, against the slower of two ceilings measured in
//! the same run: a raw rustls stream copy of the same bytes on the same loopback (the
//! transport's limit) and a durable disk write of the same bytes in the same chunk sizes (the
//! disk's limit).
//!
//! tinyci: a real site (log files on disk, fsynced), runs submitted and leased by runner `r1`
//! over its own mTLS connection, each run's `Job.log()` sink written the way the runner's
//! `forward_output` writes it (streaming `LogSink.write` calls of at most `MAX_CHUNK` (64 KiB)
//! chunks, `LogSink.acknowledged` every MiB, `close` at the end, which resolves once all is
//! durable), and a follower per run on its own thread and connection (`LogReader.follow` from
//! offset 0, attached before the first byte is written). The clock runs from the first write
//! until every follower has received every byte, so the figure is end to end: runner → site →
//! disk → follower.
//!
//! Baselines: the same number of bytes written in the same 64 KiB pieces over tokio-rustls
//! with the same TLS configs (sender and receiver each on their own thread), timed until the
//! receiver has read everything; and the same bytes written in the same pieces to as many
//! files as there are runs, one thread each, on the disk the site uses, `fdatasync`ed every
//! MiB (where the runner asks for an acknowledgement) and at the end.
//!
//! Beside the rates it prints what each MB cost this process in CPU time (the kernel's count,
//! every thread), for the product and for the raw copy: the product moves each byte over two
//! TLS legs, so twice the raw copy's CPU per MB is its floor, and on a machine with few cores
//! that floor, not the disk, bounds the figure.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use tinyci_net::{ClientConfig, ServerConfig};
use tinyci_pki::Role;
use tinyci_schema::{LogStream, RunStatus, job, job_control, log_observer, log_sink, session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::Options;
use crate::fixture::{self, SiteFixture, median};
use crate::measure;
use crate::report::{self, Better, Figure};

/// The runner's chunk size (`tinyci_runner::MAX_CHUNK`).
const CHUNK: usize = tinyci_runner::MAX_CHUNK;
/// The runner asks `LogSink.acknowledged` after this many bytes (`ACK_EVERY` in the agent).
const ACK_EVERY: u64 = 1024 * 1024;

/// Uploads a source and submits one run of `org/x`; returns its id (`r-N`).
async fn submit_one(session: &session::Client) -> anyhow::Result<String> {
    let mut request = session.submitter_request();
    request.get().set_repo("org/x");
    let submitter = request.send().pipeline.get_submitter();
    fixture::submit_source(&submitter, &fixture::one_run_source()?).await
}

struct NoControl;
impl job_control::Server for NoControl {}

/// What the follower thread is asked to do: follow `run` until `bytes` arrived, say when it is
/// attached, and report the instant the last byte arrived.
struct FollowOrder {
    run: String,
    bytes: u64,
    attached: oneshot::Sender<()>,
    finished: oneshot::Sender<anyhow::Result<Instant>>,
}

/// Counts what arrives and notes when all of it has.
struct Counter {
    received: Cell<u64>,
    target: u64,
    finished: RefCell<Option<oneshot::Sender<anyhow::Result<Instant>>>>,
}

impl log_observer::Server for Counter {
    async fn chunk(self: Rc<Self>, params: log_observer::ChunkParams) -> Result<(), capnp::Error> {
        let chunk = params.get()?.get_chunk()?;
        if chunk.get_offset() != self.received.get() {
            if let Some(tx) = self.finished.borrow_mut().take() {
                let _ = tx.send(Err(anyhow!(
                    "chunk at {} while {} were received",
                    chunk.get_offset(),
                    self.received.get()
                )));
            }
            return Ok(());
        }
        let received = self.received.get() + chunk.get_data()?.len() as u64;
        self.received.set(received);
        if received >= self.target
            && let Some(tx) = self.finished.borrow_mut().take()
        {
            let _ = tx.send(Ok(Instant::now()));
        }
        Ok(())
    }
}

/// The follower: its own thread and connection, like `tinyci logs -f` in another process.
async fn follower(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    token: String,
    mut orders: mpsc::UnboundedReceiver<FollowOrder>,
) -> anyhow::Result<()> {
    let (gateway, _connection) = fixture::connect(addr, tls).await?;
    let session = fixture::redeem(&gateway, &token).await?;
    let mut request = session.logs_request();
    request.get().init_scope().set_repo("org/x");
    let reader = request.send().pipeline.get_reader();
    while let Some(order) = orders.recv().await {
        let observer: log_observer::Client = capnp_rpc::new_client(Counter {
            received: Cell::new(0),
            target: order.bytes,
            finished: RefCell::new(Some(order.finished)),
        });
        let mut follow = reader.follow_request();
        follow.get().set_run(&order.run);
        follow.get().set_observer(observer);
        let response = follow.send().promise.await.context("LogReader.follow")?;
        let handle = response.get()?.get_handle()?;
        let _ = order.attached.send(());
        // Keep following until the next order (the run's `done` arrives meanwhile).
        tokio::task::spawn_local(async move {
            let _handle = handle;
            std::future::pending::<()>().await;
        });
    }
    Ok(())
}

fn micros_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Writes `total` bytes into `sink` as the runner's `forward_output` does.
async fn write_log(sink: &log_sink::Client, total: u64, data: &[u8]) -> anyhow::Result<()> {
    let mut offset = 0u64;
    let mut since_ack = 0u64;
    while offset < total {
        let len = usize::try_from((total - offset).min(data.len() as u64))?;
        let mut request = sink.write_request();
        {
            let mut c = request.get().init_chunk();
            c.set_offset(offset);
            c.set_stream(LogStream::Stdout);
            c.set_timestamp_micros(micros_now());
            c.set_data(&data[..len]);
        }
        request.send().await.context("LogSink.write")?;
        offset += len as u64;
        since_ack += len as u64;
        if since_ack >= ACK_EVERY {
            since_ack = 0;
            sink.acknowledged_request()
                .send()
                .promise
                .await
                .context("LogSink.acknowledged")?;
        }
    }
    sink.close_request()
        .send()
        .promise
        .await
        .context("LogSink.close")?;
    Ok(())
}

/// A leased run with its log sink and a follower attached: what a round writes into.
struct Streaming {
    job: job::Client,
    sink: log_sink::Client,
    finished: oneshot::Receiver<anyhow::Result<Instant>>,
}

/// Submits a run (`session` submits), leases it on `worker` and attaches a follower that
/// expects `bytes`.
async fn lease_and_follow(
    session: &session::Client,
    worker: &tinyci_schema::worker::Client,
    followers: &mpsc::UnboundedSender<FollowOrder>,
    bytes: u64,
) -> anyhow::Result<Streaming> {
    let run = submit_one(session).await?;
    let mut next = worker.next_request();
    next.get().set_control(capnp_rpc::new_client(NoControl));
    let job: job::Client = next
        .send()
        .promise
        .await
        .context("Worker.next")?
        .get()?
        .get_job()?;
    job.started_request()
        .send()
        .promise
        .await
        .context("Job.started")?;
    // As the runner does: the sink comes from an answer, so the writes arrive in order.
    let log = job
        .log_request()
        .send()
        .promise
        .await
        .context("opening the log")?;
    let sink = log
        .get()
        .and_then(|r| r.get_sink())
        .context("opening the log")?;
    let (attached_tx, attached) = oneshot::channel();
    let (finished_tx, finished) = oneshot::channel();
    followers
        .send(FollowOrder {
            run,
            bytes,
            attached: attached_tx,
            finished: finished_tx,
        })
        .map_err(|_| anyhow!("the follower thread is gone"))?;
    attached.await.context("the follower did not attach")?;
    Ok(Streaming {
        job,
        sink,
        finished,
    })
}

/// One measured round through the product: `runs` runs streaming `total` bytes between them
/// at once; MB/s from the first write until every follower has every byte.
async fn product_round(
    session: &session::Client,
    worker: &tinyci_schema::worker::Client,
    followers: &mpsc::UnboundedSender<FollowOrder>,
    runs: usize,
    total: u64,
    data: &[u8],
) -> anyhow::Result<f64> {
    let each = total / runs as u64;
    let mut streaming = Vec::with_capacity(runs);
    for _ in 0..runs {
        streaming.push(lease_and_follow(session, worker, followers, each).await?);
    }
    let started = Instant::now();
    futures::future::try_join_all(streaming.iter().map(|s| write_log(&s.sink, each, data))).await?;
    if std::env::var_os("TINYCI_BENCH_DEBUG").is_some() {
        eprintln!(
            "  runners wrote and closed (all durable) after {:?}",
            started.elapsed()
        );
    }
    let mut ended = started;
    for s in streaming {
        ended = ended.max(s.finished.await.context("a follower stopped")??);
        let mut complete = s.job.complete_request();
        complete.get().init_outcome().set_status(RunStatus::Passed);
        complete.send().promise.await.context("Job.complete")?;
    }
    Ok(mb_per_sec(
        runs as u64 * each,
        ended.saturating_duration_since(started),
    ))
}

/// The disk's ceiling: `total` bytes in `data`-sized writes to `files` files at once (a
/// thread each) under `dir`, each `fdatasync`ed every [`ACK_EVERY`] and at its end; MB/s.
fn disk_round(dir: &std::path::Path, files: usize, total: u64, data: &[u8]) -> anyhow::Result<f64> {
    use std::io::Write as _;
    let each = total / files as u64;
    let paths: Vec<_> = (0..files).map(|i| dir.join(format!("disk-{i}"))).collect();
    let started = Instant::now();
    std::thread::scope(|scope| {
        let writers: Vec<_> = paths
            .iter()
            .map(|path| {
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut file = std::fs::File::create(path)?;
                    let (mut written, mut since_sync) = (0u64, 0u64);
                    while written < each {
                        let len = usize::try_from((each - written).min(data.len() as u64))?;
                        file.write_all(&data[..len])?;
                        written += len as u64;
                        since_sync += len as u64;
                        if since_sync >= ACK_EVERY {
                            file.sync_data()?;
                            since_sync = 0;
                        }
                    }
                    file.sync_data()?;
                    Ok(())
                })
            })
            .collect();
        writers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| anyhow!("a disk writer thread panicked"))?
        })
    })?;
    let elapsed = started.elapsed();
    for path in &paths {
        std::fs::remove_file(path).ok();
    }
    Ok(mb_per_sec(files as u64 * each, elapsed))
}

fn mb_per_sec(bytes: u64, elapsed: std::time::Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// The raw TLS receiver: reads each connection to its end and reports when `total` arrived.
async fn raw_receiver(
    tls: Arc<ServerConfig>,
    ready: oneshot::Sender<SocketAddr>,
    mut orders: mpsc::UnboundedReceiver<(u64, oneshot::Sender<anyhow::Result<Instant>>)>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let _ = ready.send(listener.local_addr()?);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    while let Some((total, done)) = orders.recv().await {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let mut stream = acceptor.accept(tcp).await?;
        let mut buf = vec![0u8; CHUNK];
        let mut received = 0u64;
        while received < total {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            received += n as u64;
        }
        let _ = done.send(if received >= total {
            Ok(Instant::now())
        } else {
            Err(anyhow!(
                "raw stream ended after {received} of {total} bytes"
            ))
        });
    }
    Ok(())
}

/// One raw TLS copy of `total` bytes in `CHUNK` writes; MB/s first write → all received.
async fn raw_round(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    orders: &mpsc::UnboundedSender<(u64, oneshot::Sender<anyhow::Result<Instant>>)>,
    total: u64,
    data: &[u8],
) -> anyhow::Result<f64> {
    let (done_tx, done) = oneshot::channel();
    orders
        .send((total, done_tx))
        .map_err(|_| anyhow!("the raw receiver is gone"))?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = tinyci_pki::tls::server_name(&tinyci_pki::SiteName::new(fixture::SITE)?)?;
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let len = usize::try_from((total - sent).min(data.len() as u64))?;
        stream.write_all(&data[..len]).await?;
        sent += len as u64;
    }
    stream.flush().await?;
    let ended = done.await.context("the raw receiver stopped")??;
    stream.shutdown().await.ok();
    Ok(mb_per_sec(total, ended.saturating_duration_since(started)))
}

/// Medians of one scenario's rounds: tinyci, raw TLS, durable disk; and what the first two
/// cost this process in CPU time per MB.
struct Scenario {
    runs: usize,
    ours: Vec<f64>,
    raw: Vec<f64>,
    disk: Vec<f64>,
    ours_cpu: Vec<f64>,
    raw_cpu: Vec<f64>,
}

/// Runs `round`, which moves `bytes`; returns its MB/s and the process's CPU milliseconds per
/// MB meanwhile (every thread: the runner, the site and the follower, or the raw sender and
/// receiver). The product's window also holds its round's setup (a submission, a lease, the
/// followers attaching) and the runs' completion: a few milliseconds of CPU beside the
/// hundreds the bytes take, so the figure errs a little high.
async fn with_cpu(
    bytes: u64,
    round: impl std::future::Future<Output = anyhow::Result<f64>>,
) -> anyhow::Result<(f64, f64)> {
    let before = measure::process_cpu()?;
    let rate = round.await?;
    let used = measure::process_cpu()?.saturating_sub(before);
    Ok((rate, used.as_secs_f64() * 1e3 / (bytes as f64 / 1e6)))
}

pub(crate) async fn run(options: &Options) -> anyhow::Result<Vec<Figure>> {
    println!(
        "== logs: runners → site → live followers vs a raw rustls copy and a durable disk write"
    );
    let (rounds, total): (usize, u64) = if options.quick {
        (1, 16 << 20)
    } else {
        (5, 128 << 20)
    };
    let extra = format!(
        "[logs]\nmax_run_bytes = {}\n",
        total + (1 << 20) // above the bytes written: nothing is cut
    );
    let site = SiteFixture::start(&extra).await?;
    let (runner_token, _) = site.mint(
        "runner:r1",
        &["queue:take", "logs:write"],
        &["org/x"],
        &["default"],
    )?;
    // Runner certificates take work, they do not submit it: an operator submits.
    let (submit_token, _) = site.mint("admin:ops", &["queue:submit"], &["org/x"], &[])?;
    let submit_tls = site.client_tls(Role::Admin, "ops")?;
    // A follower as `tinyci logs -f` with a grant: not a site user, whom GitHub would answer
    // for.
    let (reader_token, _) = site.mint("admin:reader", &["logs:read"], &["org/x"], &[])?;
    let site_addr = site.addr();
    // The disk baseline writes beside the site's data, on the same file system.
    let disk_dir = site.dir().to_path_buf();

    // The followers: their own thread and connection.
    let (follow_tx, follow_rx) = mpsc::unbounded_channel();
    let follower_tls = site.client_tls(Role::Admin, "reader")?;
    let follower_thread = fixture::on_thread("log-follower", move || {
        follower(site_addr, follower_tls, reader_token, follow_rx)
    });
    let follower_thread = tokio::spawn(follower_thread);

    // The raw receiver: its own thread.
    let (raw_tx, raw_rx) = mpsc::unbounded_channel();
    let (raw_ready_tx, raw_ready) = oneshot::channel();
    let raw_tls = site.server_tls()?;
    let raw_thread = tokio::spawn(fixture::on_thread("raw-receiver", move || {
        raw_receiver(raw_tls, raw_ready_tx, raw_rx)
    }));
    let raw_addr = raw_ready.await.context("the raw receiver did not start")?;

    let runner_tls = site.client_tls(Role::Runner, "r1")?;
    let scenarios = fixture::on_thread("log-runner", move || async move {
        let (gateway, _connection) = fixture::connect(site_addr, runner_tls.clone()).await?;
        let session = fixture::redeem(&gateway, &runner_token).await?;
        let (submit_gateway, _submit_connection) = fixture::connect(site_addr, submit_tls).await?;
        let submitter = fixture::redeem(&submit_gateway, &submit_token).await?;
        let mut request = session.worker_request();
        request.get().set_queue("default");
        let mut runner = request.get().init_runner();
        runner.set_name("r1");
        runner.set_slots(16);
        let worker = request.send().pipeline.get_worker();
        // Log-like bytes: printable, not all one value.
        let data: Vec<u8> = (0..CHUNK).map(|i| b' ' + (i % 94) as u8).collect();
        let mut scenarios = Vec::new();
        for runs in [1usize, 16] {
            let mut scenario = Scenario {
                runs,
                ours: Vec::new(),
                raw: Vec::new(),
                disk: Vec::new(),
                ours_cpu: Vec::new(),
                raw_cpu: Vec::new(),
            };
            for round in 0..=rounds {
                // Round 0 is a shorter warm-up and is not kept.
                let bytes = if round == 0 { total / 8 } else { total };
                let product = product_round(&submitter, &worker, &follow_tx, runs, bytes, &data);
                let (o, o_cpu) = with_cpu(bytes, product).await?;
                let raw = raw_round(raw_addr, runner_tls.clone(), &raw_tx, bytes, &data);
                let (r, r_cpu) = with_cpu(bytes, raw).await?;
                let d = disk_round(&disk_dir, runs, bytes, &data)?;
                if round > 0 {
                    scenario.ours.push(o);
                    scenario.raw.push(r);
                    scenario.disk.push(d);
                    scenario.ours_cpu.push(o_cpu);
                    scenario.raw_cpu.push(r_cpu);
                }
            }
            scenarios.push(scenario);
        }
        drop((follow_tx, raw_tx));
        anyhow::Ok(scenarios)
    })
    .await?;
    follower_thread.await.context("follower thread")??;
    raw_thread.await.context("raw receiver thread")??;
    site.stop().await?;

    let mut figures = Vec::new();
    for mut scenario in scenarios {
        let ours = median(&mut scenario.ours);
        let raw = median(&mut scenario.raw);
        let disk = median(&mut scenario.disk);
        let ours_cpu = median(&mut scenario.ours_cpu);
        let raw_cpu = median(&mut scenario.raw_cpu);
        let ceiling = raw.min(disk);
        let runs = match scenario.runs {
            1 => "1 run".to_owned(),
            n => format!("{n} runs at once"),
        };
        println!(
            "  {runs}: raw rustls copy {raw:.1} MB/s, durable disk write {disk:.1} MB/s \
             ({} files, fdatasync every MiB)",
            scenario.runs
        );
        // What the CPU allows: the product moves each byte over two TLS legs (runner → site,
        // site → follower), so it costs at least twice the raw copy's CPU per MB, and all
        // the parties share this machine's cores.
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let two_legs = 2.0 * raw_cpu;
        let cpu_bound = cores * 1e3 / two_legs.max(1e-9);
        println!(
            "  {runs}: CPU per MB (every thread of this process): tinyci {ours_cpu:.2} ms, raw \
             rustls copy {raw_cpu:.2} ms; two TLS legs cost at least {two_legs:.2} ms, so \
             {cores} cores move at most {cpu_bound:.0} MB/s through the product, {:.0}% of the \
             ceiling",
            100.0 * cpu_bound / ceiling.max(1e-9),
        );
        figures.push(
            Figure::new(
                format!("logs: {runs} → site → followers, {} MiB", total >> 20),
                "MB/s",
                Better::Higher,
                ours,
                Some((ceiling, "min(raw TLS, disk)")),
            )
            .with_goal("≥ 70% of min(raw TLS, disk)", Some(ours >= 0.7 * ceiling)),
        );
    }
    report::print(&figures);
    Ok(figures)
}
