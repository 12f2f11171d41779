//! Abuse: what a misbehaving client can make one site hold, and whether the site goes on
//! answering everyone else meanwhile. Two measurements, each beside a baseline taken from the
//! same site process in the same run:
//!
//! 1. **Pipelined calls whose replies are never read.** One mTLS client (the site's admin
//!    certificate) writes a `Bootstrap` and then up to 400,000 pipelined `Gateway.info` calls
//!    as fast as the socket takes them and never reads a reply. The site caps, per
//!    connection, the calls it has read and not yet answered (`site.max_outstanding_calls`)
//!    and stops reading while its replies go unread. Figures: the site's RSS with the flood
//!    held against its RSS with one idle client; that growth per call sent and divided by the
//!    cap; and `Gateway.info` p50/p99 for a well-behaved client while the flood is held,
//!    against the same calls before the flood started.
//! 2. **Slow HTTP clients.** 1,000 clients each send `POST /hooks/github` headers declaring a
//!    100,000-byte body, then one body byte, then nothing. Figures: the site's RSS with them
//!    held against its idle RSS, and `/healthz` p50/p99 while they are held against before.
//!    Also reported: how many the listener held, refused at accept or answered at once, and
//!    whether a whole webhook of ordinary size still gets its body read while they are held.
//!
//! Why the method is fair:
//! - The site is the real `tinyci site up` in its own process with its default limits, so its
//!   memory is the kernel's count (VmRSS, settled: two readings agree within 1%); nothing in
//!   the bench process is counted. Each measurement starts a fresh site process, and nothing
//!   is timed before it has settled after starting.
//! - The flood is what a hostile or broken peer can do after a valid handshake: the frames
//!   are well-formed capnp RPC messages (the transport tests and the wire fuzzer build the
//!   same ones), sent on the raw TLS stream from [`tinyci_net::dial_bytes`]. The client stops
//!   writing only when a write has not completed for [`FLOOD_STALL`] (the site stopped reading
//!   and every buffer between is full) or when all calls are out. "Calls sent" counts whole
//!   frames the TLS stream accepted; many are still in socket buffers, never read, so the
//!   bench also reports the kernel's queues on both sides of the connection (`/proc/net/tcp`):
//!   memory the flood costs the site's host outside the site's RSS.
//! - The memory baseline is the same process with one idle connected client, so the growth is
//!   what the flood adds over an ordinary connection. The latency baseline is the same 10
//!   untimed and 100 timed sequential calls on a fresh connection, before the flood; every
//!   probe dials with [`tinyci_net::dial`] as the CLI does and times only the calls, not the
//!   dial. The probe runs once more after the abusive clients are gone, so the machine's own
//!   noise can be told from their effect; and the site's CPU time over a quiet 2 s with them
//!   held shows whether a paused connection costs it anything.
//! - The slow clients are spread over source addresses 127.0.0.2–127.0.0.17 (all of 127/8 is
//!   loopback on Linux) so the listener's 64-per-address cap does not refuse them; `/healthz`
//!   is asked from 127.0.0.1 on a fresh connection per request, as a load balancer's health
//!   check does, and timed from connect to the end of the answer, before, during and after
//!   alike. Everything during is measured before the site's 30 s body timeout expires the
//!   slow clients; afterwards the bench checks that they got their 408.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use capnp_rpc::rpc_capnp::message;
use tinyci_net::{ClientConfig, NetLimits};
use tinyci_pki::SiteName;
use tinyci_schema::gateway;
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::Options;
use crate::measure::{self, Sample, micros};
use crate::report::{self, Better, Figure};
use crate::site_process::{SiteDir, SiteProcess};

/// Pipelined calls the flood client writes (at most; it stops earlier if the site stops
/// reading). The historical finding before the cap: +347 MB of site RSS for 400,000.
const FLOOD_CALLS: u32 = 400_000;
const FLOOD_CALLS_QUICK: u32 = 50_000;

/// How long one write may stall before the flood client concludes the site stopped reading.
const FLOOD_STALL: Duration = Duration::from_secs(2);

/// Bytes of frames the flood client hands the TLS stream at a time.
const FLOOD_BATCH_BYTES: usize = 64 * 1024;

/// Calls, or `/healthz` requests, each latency probe times one after another.
const PROBE_REQUESTS: usize = 100;

/// Untimed calls or requests each probe makes first, so neither side of a comparison pays
/// for first-use costs (page faults, allocator growth) the other does not.
const PROBE_WARM_UP: usize = 10;

/// Slow HTTP clients held at once.
const SLOW_CLIENTS: usize = 1000;
const SLOW_CLIENTS_QUICK: usize = 200;

/// Source addresses the slow clients are spread over (`127.0.0.X`): 16 of them keep 1,000
/// clients under the listener's 64 connections per address.
const SLOW_SOURCE_HOSTS: std::ops::RangeInclusive<u8> = 2..=17;

/// The body length each slow client declares (and never sends).
const SLOW_DECLARED_BODY: usize = 100_000;

/// The site's HTTP limits this benchmark runs into (`tinyci_web::WebLimits::default()`):
/// the time a client has to send a body once its headers arrived, the connections served at
/// once, and the bytes of bodies being received at once (a body whose declared length does
/// not fit in what is left is refused with a 503).
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_MAX_CONNECTIONS: usize = 1024;
const HTTP_BODY_BUDGET: usize = 64 * 1024 * 1024;

/// A whole webhook delivery posted while the slow clients are held: more than the 8,864 bytes
/// 671 declared 100,000-byte bodies leave of the 64 MiB budget.
const WEBHOOK_PROBE_BYTES: usize = 10_000;

/// How long the site gets to take in the slow clients' headers (and refuse those it refuses)
/// before they are counted.
const SLOW_SETTLE: Duration = Duration::from_secs(1);

/// Longest a single `/healthz` request or probe call may take before the site counts as
/// having stopped answering.
const ANSWER_PATIENCE: Duration = Duration::from_secs(10);

const KIB_PER_MIB: f64 = 1024.0;
const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;

pub(crate) async fn run(options: &Options) -> Result<Vec<Figure>> {
    println!("== abuse: a client that never reads its replies, and slow HTTP clients");
    let (calls, slow_clients) = if options.quick {
        (FLOOD_CALLS_QUICK, SLOW_CLIENTS_QUICK)
    } else {
        (FLOOD_CALLS, SLOW_CLIENTS)
    };
    // Latency tails here are at the mercy of whatever else runs on the machine: say how busy
    // it was.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("  load average at the start: {}", load.trim());
    }
    let site_dir = tokio::task::spawn_blocking(|| {
        let bin = crate::site_process::tinyci_binary()?;
        SiteDir::init(bin)
    })
    .await
    .context("the site setup thread failed")??;
    let site_dir = Arc::new(site_dir);
    let mut figures = Vec::new();

    let flood_site = site_dir.clone();
    let flood =
        tokio::task::spawn_blocking(move || local_thread(unread_replies_flood(&flood_site, calls)))
            .await
            .context("the flood thread failed")??;
    figures.extend(flood.figures());

    let slow = slow_http_clients(&site_dir, slow_clients).await?;
    figures.extend(slow.figures());
    Ok(figures)
}

/// Runs `future` on a fresh current-thread runtime inside a `LocalSet` (capnp is `!Send`).
fn local_thread<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to build a runtime")?;
    tokio::task::LocalSet::new().block_on(&runtime, future)
}

/// What the flood measured.
#[derive(Debug)]
struct FloodOutcome {
    /// Calls the flood client was to send.
    planned: u32,
    /// Whole call frames the TLS stream took before the flood stopped.
    sent: u64,
    /// The site's `max_outstanding_calls`.
    cap: usize,
    /// Settled RSS with one idle client, then with the flood held.
    idle_kib: u64,
    flooded_kib: u64,
    /// `Gateway.info` on a fresh connection, before the flood and while it is held.
    before: Sample,
    during: Sample,
}

impl FloodOutcome {
    fn growth_kib(&self) -> u64 {
        self.flooded_kib.saturating_sub(self.idle_kib)
    }

    fn figures(&self) -> Vec<Figure> {
        let growth_bytes = self.growth_kib() as f64 * 1024.0;
        let figures = vec![
            Figure::new(
                format!(
                    "abuse, {} of {} calls sent, replies unread: site RSS",
                    self.sent, self.planned
                ),
                "MiB",
                Better::Lower,
                self.flooded_kib as f64 / KIB_PER_MIB,
                Some((self.idle_kib as f64 / KIB_PER_MIB, "one idle client")),
            ),
            Figure::new(
                "abuse, replies unread: RSS growth per call sent",
                "B",
                Better::Lower,
                growth_bytes / self.sent.max(1) as f64,
                None,
            ),
            Figure::new(
                format!(
                    "abuse, replies unread: RSS growth / outstanding cap {}",
                    self.cap
                ),
                "KiB",
                Better::Lower,
                self.growth_kib() as f64 / self.cap.max(1) as f64,
                None,
            ),
            Figure::new(
                "abuse, flood held: other client's Gateway.info p50",
                "µs",
                Better::Lower,
                micros(self.during.p50),
                Some((micros(self.before.p50), "before the flood")),
            ),
            Figure::new(
                "abuse, flood held: other client's Gateway.info p99",
                "µs",
                Better::Lower,
                micros(self.during.p99),
                Some((micros(self.before.p99), "before the flood")),
            ),
        ];
        report::print(&figures);
        figures
    }
}

/// Measurement 1: one client pipelines `calls` `Gateway.info` calls and never reads a reply.
async fn unread_replies_flood(site_dir: &SiteDir, calls: u32) -> Result<FloodOutcome> {
    let config = site_dir.config()?;
    let cap = config.max_outstanding_calls;
    let site_name = config.name.clone();
    let tls = site_dir.admin_client_tls()?;
    let site = site_dir.start()?;
    let addr = site.addr.to_string();

    // The baseline connection: dialed and confirmed as the CLI does, then left idle.
    let (idle_gateway, _idle_connection) =
        tinyci_net::dial::<gateway::Client>(&addr, tls.clone(), &site_name, &NetLimits::default())
            .await
            .context("dialing the idle client")?;
    idle_gateway
        .info_request()
        .send()
        .promise
        .await
        .context("the idle client's Gateway.info")?;
    // The site has finished starting (its first sweep, its caches) before anything is timed.
    site.settled_rss_kib(Duration::from_millis(300)).await?;
    let before = info_probe(&addr, tls.clone(), &site_name).await?;
    println!(
        "  before the flood: Gateway.info p50 {:.1} µs, p99 {:.1} µs over {PROBE_REQUESTS} calls",
        micros(before.p50),
        micros(before.p99)
    );
    // Read after the probe, so whatever serving calls allocates once is in the baseline.
    let idle_kib = site.settled_rss_kib(Duration::from_millis(300)).await?;

    let stream = tinyci_net::dial_bytes(&addr, tls.clone(), &site_name, &NetLimits::default())
        .await
        .context("dialing the flood client")?;
    // Only the write half is used; the read half is kept (unread) so the connection stays up.
    let (unread_replies, mut flood_writer) = tokio::io::split(stream);
    let started = Instant::now();
    let flood = write_flood(&mut flood_writer, calls).await?;
    println!(
        "  flood: {} of {calls} calls taken by the socket in {:.1} s, then {}",
        flood.sent,
        flood.writing.as_secs_f64(),
        if flood.stalled {
            format!("no write completed for {} s", FLOOD_STALL.as_secs())
        } else {
            "all were out".to_owned()
        }
    );
    let flooded_kib = site.settled_rss_kib(Duration::from_millis(500)).await?;
    println!(
        "  site RSS {idle_kib} KiB with one idle client → {flooded_kib} KiB with the flood held \
         ({:+} KiB, {:.1} s after the flood began)",
        i128::from(flooded_kib) - i128::from(idle_kib),
        started.elapsed().as_secs_f64()
    );
    println!(
        "  site CPU with the flood held and nothing else asked of it: {:.0} ms over {} s",
        site_cpu_while_idle(&site).await?.as_secs_f64() * 1000.0,
        IDLE_CPU_WINDOW.as_secs()
    );
    let queues = socket_queues(site.addr.port())?;
    // What the site read is what was sent less what still waits on either side of the
    // socket (to within the client's TLS buffer, at most 64 KiB of frames).
    let calls_in_sockets = (queues.client_unsent + queues.server_unread) / flood.frame_len;
    println!(
        "  in the kernel, in neither process's RSS: {:.1} MiB of calls not yet taken from the \
         client + {:.1} MiB the site has not read (≈ {calls_in_sockets} calls of {} B, so the \
         site read ≈ {}); {:.1} MiB of replies not yet taken from the site + {:.1} MiB the \
         client has not read",
        queues.client_unsent as f64 / BYTES_PER_MIB,
        queues.server_unread as f64 / BYTES_PER_MIB,
        flood.frame_len,
        flood.sent.saturating_sub(calls_in_sockets),
        queues.server_unsent as f64 / BYTES_PER_MIB,
        queues.client_unread as f64 / BYTES_PER_MIB,
    );
    let during = info_probe(&addr, tls.clone(), &site_name).await.context(
        "a well-behaved client while the flood is held (the site may have stopped answering)",
    )?;
    println!(
        "  flood held: another client's Gateway.info p50 {:.1} µs, p99 {:.1} µs",
        micros(during.p50),
        micros(during.p99)
    );
    drop(flood_writer);
    drop(unread_replies);
    let released_kib = site.settled_rss_kib(Duration::from_millis(500)).await?;
    // Timed again once the flood is gone: what the machine's noise alone does to the probe.
    let after = info_probe(&addr, tls, &site_name).await?;
    println!(
        "  flood client gone: site RSS {released_kib} KiB; Gateway.info p50 {:.1} µs, p99 {:.1} µs",
        micros(after.p50),
        micros(after.p99)
    );
    Ok(FloodOutcome {
        planned: calls,
        sent: flood.sent,
        cap,
        idle_kib,
        flooded_kib,
        before,
        during,
    })
}

/// How the flood went.
#[derive(Debug)]
struct FloodWritten {
    /// Whole call frames the stream took.
    sent: u64,
    /// Bytes of one call frame.
    frame_len: u64,
    /// Whether it stopped because a write stalled (rather than running out of calls).
    stalled: bool,
    /// From the first byte to the last write that completed.
    writing: Duration,
}

/// Writes a `Bootstrap` then `calls` pipelined `Gateway.info` calls, never reading, until
/// they are all out or one write makes no progress for [`FLOOD_STALL`].
async fn write_flood(writer: &mut (impl AsyncWrite + Unpin), calls: u32) -> Result<FloodWritten> {
    let bootstrap = rpc_frame(RpcFrame::Bootstrap);
    let frame_len = rpc_frame(RpcFrame::Info { question: 1 }).len() as u64;
    ensure!(
        rpc_frame(RpcFrame::Info { question: calls }).len() as u64 == frame_len,
        "call frames differ in size; the sent count below assumes they do not"
    );
    let started = Instant::now();
    let mut writing = Duration::ZERO;
    let mut batch = bootstrap;
    let mut bootstrap_left = batch.len();
    let mut call_bytes: u64 = 0;
    let mut next_question: u32 = 1;
    loop {
        if batch.is_empty() {
            if next_question > calls {
                break;
            }
            while batch.len() < FLOOD_BATCH_BYTES && next_question <= calls {
                batch.extend(rpc_frame(RpcFrame::Info {
                    question: next_question,
                }));
                next_question += 1;
            }
        }
        let written = match tokio::time::timeout(FLOOD_STALL, writer.write(&batch)).await {
            Err(_) => {
                return Ok(FloodWritten {
                    sent: call_bytes / frame_len,
                    frame_len,
                    stalled: true,
                    writing,
                });
            }
            Ok(Ok(0)) => bail!("the site closed the flood connection"),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                return Err(e).context("the flood connection failed (the site cut it?)");
            }
        };
        writing = started.elapsed();
        let for_bootstrap = written.min(bootstrap_left);
        bootstrap_left -= for_bootstrap;
        call_bytes += (written - for_bootstrap) as u64;
        batch.drain(..written);
    }
    let flushed = tokio::time::timeout(FLOOD_STALL, writer.flush()).await;
    Ok(FloodWritten {
        sent: call_bytes / frame_len,
        frame_len,
        stalled: flushed.is_err(),
        writing,
    })
}

/// A raw capnp RPC message, as a peer would write it on the wire.
#[derive(Debug, Clone, Copy)]
enum RpcFrame {
    /// `Bootstrap` as question 0.
    Bootstrap,
    /// `Gateway.info` (method 0) as `question`, pipelined on question 0's answer.
    Info { question: u32 },
}

fn rpc_frame(frame: RpcFrame) -> Vec<u8> {
    let mut builder = capnp::message::Builder::new_default();
    let root = builder.init_root::<message::Builder<'_>>();
    match frame {
        RpcFrame::Bootstrap => root.init_bootstrap().set_question_id(0),
        RpcFrame::Info { question } => {
            let mut call = root.init_call();
            call.set_question_id(question);
            call.reborrow()
                .init_target()
                .init_promised_answer()
                .set_question_id(0);
            call.set_interface_id(<gateway::Client as capnp::traits::HasTypeId>::TYPE_ID);
            call.set_method_id(0);
            call.init_params()
                .init_content()
                .init_as::<gateway::info_params::Builder<'_>>();
        }
    }
    capnp::serialize::write_message_to_words(&builder)
}

/// Dials as the CLI does and times [`PROBE_REQUESTS`] sequential `Gateway.info` calls (the
/// dial and the [`PROBE_WARM_UP`] calls before them are not timed).
async fn info_probe(addr: &str, tls: Arc<ClientConfig>, site_name: &SiteName) -> Result<Sample> {
    let (gateway, _connection) = tokio::time::timeout(
        ANSWER_PATIENCE,
        tinyci_net::dial::<gateway::Client>(addr, tls, site_name, &NetLimits::default()),
    )
    .await
    .context("dialing the probe client timed out")?
    .context("dialing the probe client")?;
    let call = || async {
        tokio::time::timeout(ANSWER_PATIENCE, gateway.info_request().send().promise)
            .await
            .context("Gateway.info was not answered in time")?
            .context("Gateway.info")?;
        anyhow::Ok(())
    };
    for _ in 0..PROBE_WARM_UP {
        call().await?;
    }
    measure::calls(PROBE_REQUESTS, 1, call).await
}

/// What the slow HTTP clients measured.
#[derive(Debug)]
struct SlowOutcome {
    clients: usize,
    /// How the site treated them, once it had read their headers.
    fate: SlowFates,
    idle_kib: u64,
    held_kib: u64,
    before: Sample,
    during: Sample,
}

impl SlowOutcome {
    fn figures(&self) -> Vec<Figure> {
        let growth_kib = self.held_kib.saturating_sub(self.idle_kib) as f64;
        let figures = vec![
            Figure::new(
                format!("abuse, {} slow HTTP clients: site RSS", self.clients),
                "MiB",
                Better::Lower,
                self.held_kib as f64 / KIB_PER_MIB,
                Some((self.idle_kib as f64 / KIB_PER_MIB, "idle site")),
            ),
            Figure::new(
                format!(
                    "abuse, slow HTTP: RSS growth per held client ({})",
                    self.fate.held
                ),
                "KiB",
                Better::Lower,
                growth_kib / self.fate.held.max(1) as f64,
                None,
            ),
            Figure::new(
                "abuse, slow clients held: /healthz p50",
                "µs",
                Better::Lower,
                micros(self.during.p50),
                Some((micros(self.before.p50), "before them")),
            ),
            Figure::new(
                "abuse, slow clients held: /healthz p99",
                "µs",
                Better::Lower,
                micros(self.during.p99),
                Some((micros(self.before.p99), "before them")),
            ),
        ];
        report::print(&figures);
        figures
    }
}

/// How the site treated the slow clients.
#[derive(Debug, Default, Clone, Copy)]
struct SlowFates {
    /// Accepted, body being waited for: no answer yet.
    held: usize,
    /// Closed without an answer: refused at accept by a connection cap.
    closed: usize,
    /// Answered 503: accepted, but the declared body did not fit the in-flight body budget.
    budget_refused: usize,
    /// Answered 408: the body timeout expired.
    timed_out: usize,
    /// Answered anything else.
    other: usize,
}

impl std::fmt::Display for SlowFates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} held, {} answered 503 (body budget), {} answered 408 (body timeout), \
             {} closed unanswered (connection cap), {} answered otherwise",
            self.held, self.budget_refused, self.timed_out, self.closed, self.other
        )
    }
}

/// Measurement 2: `count` slow HTTP clients held against the site's HTTP listener.
async fn slow_http_clients(site_dir: &Arc<SiteDir>, count: usize) -> Result<SlowOutcome> {
    let launch_dir = site_dir.clone();
    let site: SiteProcess = tokio::task::spawn_blocking(move || launch_dir.start_with_http())
        .await
        .context("the site start thread failed")??;
    let http = site
        .http_addr
        .context("the site printed no HTTP listener address")?;
    site.settled_rss_kib(Duration::from_millis(300)).await?;
    let before = healthz_probe(http).await?;
    println!(
        "  before the slow clients: /healthz p50 {:.1} µs, p99 {:.1} µs over {PROBE_REQUESTS} \
         requests (a fresh connection each)",
        micros(before.p50),
        micros(before.p99)
    );
    let webhook_before = webhook_probe(http).await?;
    println!("  a {WEBHOOK_PROBE_BYTES}-byte webhook before the slow clients: {webhook_before}");
    let idle_kib = site.settled_rss_kib(Duration::from_millis(300)).await?;

    let first_headers = Instant::now();
    let mut slow = open_slow_clients(http, count).await?;
    let opened = first_headers.elapsed();
    tokio::time::sleep(SLOW_SETTLE).await;
    let fate = sort_slow_clients(&mut slow);
    println!(
        "  {count} slow clients over {} source addresses, opened in {:.2} s: {fate}",
        SLOW_SOURCE_HOSTS.len(),
        opened.as_secs_f64()
    );
    println!(
        "    (the listener's caps: {HTTP_MAX_CONNECTIONS} connections; a {SLOW_DECLARED_BODY}-byte \
         declared body each fits {} times in its {} MiB body budget)",
        HTTP_BODY_BUDGET / SLOW_DECLARED_BODY,
        HTTP_BODY_BUDGET / (1024 * 1024)
    );
    let held_kib = site.settled_rss_kib(Duration::from_millis(300)).await?;
    println!(
        "  site CPU with them held and nothing else asked of it: {:.0} ms over {} s",
        site_cpu_while_idle(&site).await?.as_secs_f64() * 1000.0,
        IDLE_CPU_WINDOW.as_secs()
    );
    let during = healthz_probe(http).await?;
    let webhook_during = webhook_probe(http).await?;
    let window = first_headers.elapsed();
    println!(
        "  site RSS {idle_kib} KiB idle → {held_kib} KiB with them held ({:+.1} MiB); /healthz \
         p50 {:.1} µs, p99 {:.1} µs; all measured within {:.1} s of the first headers",
        (held_kib as f64 - idle_kib as f64) / KIB_PER_MIB,
        micros(during.p50),
        micros(during.p99),
        window.as_secs_f64()
    );
    println!("  a {WEBHOOK_PROBE_BYTES}-byte webhook while they are held: {webhook_during}");
    if window >= BODY_TIMEOUT {
        println!(
            "  NOTE: the measurement took longer than the {} s body timeout: some slow clients \
             were already expired (408) when it ended",
            BODY_TIMEOUT.as_secs()
        );
    }

    // Past the body timeout every held client must have had its 408.
    let expiry = first_headers + BODY_TIMEOUT + Duration::from_secs(2);
    tokio::time::sleep_until(expiry.into()).await;
    let expired = sort_slow_clients(&mut slow);
    println!(
        "  {:.0} s after the first headers: {} of the {} held got 408, {} still held",
        first_headers.elapsed().as_secs_f64(),
        expired.timed_out,
        fate.held,
        expired.held
    );
    drop(slow);
    let released_kib = site.settled_rss_kib(Duration::from_millis(300)).await?;
    // Timed again once they are gone: what the machine's noise alone does to the probe.
    let after = healthz_probe(http).await?;
    println!(
        "  slow clients gone: site RSS {released_kib} KiB; /healthz p50 {:.1} µs, p99 {:.1} µs",
        micros(after.p50),
        micros(after.p99)
    );
    Ok(SlowOutcome {
        clients: count,
        fate,
        idle_kib,
        held_kib,
        before,
        during,
    })
}

/// One slow client's connection and what it has heard so far.
#[derive(Debug)]
struct SlowClient {
    stream: TcpStream,
    /// Whether the site has answered or closed (it is then no longer read).
    settled: bool,
}

/// Opens `count` connections spread over [`SLOW_SOURCE_HOSTS`], each sending the headers of a
/// `POST /hooks/github` with a [`SLOW_DECLARED_BODY`]-byte body and then one body byte.
async fn open_slow_clients(http: SocketAddr, count: usize) -> Result<Vec<SlowClient>> {
    let request = format!(
        "POST /hooks/github HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: push\r\nContent-Length: {SLOW_DECLARED_BODY}\r\n\r\n{{"
    );
    let hosts: Vec<u8> = SLOW_SOURCE_HOSTS.collect();
    let mut clients = Vec::with_capacity(count);
    for i in 0..count {
        let source = Ipv4Addr::new(127, 0, 0, hosts[i % hosts.len()]);
        let socket = TcpSocket::new_v4().context("creating a slow client socket")?;
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .with_context(|| format!("binding a slow client to {source}"))?;
        let mut stream = socket
            .connect(http)
            .await
            .with_context(|| format!("connecting slow client {i} from {source}"))?;
        // A connection the site refused at accept may already be closed: that is counted
        // when the clients are sorted, not an error here.
        let _ = stream.write_all(request.as_bytes()).await;
        clients.push(SlowClient {
            stream,
            settled: false,
        });
    }
    Ok(clients)
}

/// Sorts the slow clients the site has not yet answered by what they hear now, without
/// waiting: nothing (held), an answer (its status), or a close.
fn sort_slow_clients(clients: &mut [SlowClient]) -> SlowFates {
    let mut fates = SlowFates::default();
    let mut buf = [0u8; 512];
    for client in clients.iter_mut().filter(|c| !c.settled) {
        match client.stream.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => fates.held += 1,
            Ok(0) | Err(_) => {
                client.settled = true;
                fates.closed += 1;
            }
            Ok(n) => {
                client.settled = true;
                let answer = &buf[..n];
                match status_code(answer) {
                    Some(503) if contains(answer, BUDGET_REFUSAL) => fates.budget_refused += 1,
                    Some(408) => fates.timed_out += 1,
                    _ => fates.other += 1,
                }
            }
        }
    }
    fates
}

/// What the listener says when a declared body does not fit its in-flight body budget.
const BUDGET_REFUSAL: &str = "receiving too much at once";

fn contains(answer: &[u8], text: &str) -> bool {
    answer
        .windows(text.len())
        .any(|window| window == text.as_bytes())
}

/// The status code of an HTTP/1.1 response's first line.
pub(crate) fn status_code(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Sends `request` from 127.0.0.1 on a fresh connection and reads the whole answer (the
/// request asks the site to close after it).
pub(crate) async fn http_exchange(http: SocketAddr, request: &[u8]) -> Result<Vec<u8>> {
    tokio::time::timeout(ANSWER_PATIENCE, async {
        let mut stream = TcpStream::connect(http)
            .await
            .context("connecting to the HTTP listener")?;
        stream
            .write_all(request)
            .await
            .context("sending the request")?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .context("reading the answer")?;
        anyhow::Ok(answer)
    })
    .await
    .context("the HTTP listener did not answer in time")?
}

/// Times [`PROBE_REQUESTS`] `GET /healthz` from 127.0.0.1, each on a fresh connection, from
/// connect to the end of the answer.
async fn healthz_probe(http: SocketAddr) -> Result<Sample> {
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    let healthz = || async {
        let answer = http_exchange(http, request.as_bytes())
            .await
            .context("GET /healthz")?;
        match status_code(&answer) {
            Some(200) => Ok(()),
            other => bail!("/healthz answered {other:?}"),
        }
    };
    for _ in 0..PROBE_WARM_UP {
        healthz().await?;
    }
    measure::calls(PROBE_REQUESTS, 1, healthz).await
}

/// Posts one whole [`WEBHOOK_PROBE_BYTES`]-byte webhook from 127.0.0.1 and says how the site
/// answered: whether its body got a share of the in-flight body budget. (The bench site has
/// no `[github]` section, so a body that was read is then answered 503 for that reason.)
async fn webhook_probe(http: SocketAddr) -> Result<String> {
    let body = format!("{{\"zen\":\"{}\"}}", "x".repeat(WEBHOOK_PROBE_BYTES - 11));
    let request = format!(
        "POST /hooks/github HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: ping\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = http_exchange(http, request.as_bytes())
        .await
        .context("POST /hooks/github")?;
    let text = String::from_utf8_lossy(&answer);
    let said = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body.trim());
    let verdict = if said.contains(BUDGET_REFUSAL) {
        "refused, no room in the body budget"
    } else {
        "body read"
    };
    Ok(format!(
        "{verdict} (answered {}: {said:?})",
        status_code(&answer).map_or_else(|| "?".to_owned(), |code| code.to_string())
    ))
}

/// How long the site's CPU use is watched while abusive clients are held and nothing else
/// happens: a paused connection should cost nothing, and a busy loop would show here.
const IDLE_CPU_WINDOW: Duration = Duration::from_secs(2);

/// CPU time (user + system) the site used over [`IDLE_CPU_WINDOW`] while the bench asks
/// nothing of it.
async fn site_cpu_while_idle(site: &SiteProcess) -> Result<Duration> {
    let before = cpu_time(site.pid())?;
    tokio::time::sleep(IDLE_CPU_WINDOW).await;
    Ok(cpu_time(site.pid())?.saturating_sub(before))
}

/// A process's CPU time so far (user + system), from `/proc/<pid>/stat`, in the kernel's
/// clock ticks of 10 ms (`USER_HZ` is 100 on Linux).
fn cpu_time(pid: u32) -> Result<Duration> {
    const TICK: Duration = Duration::from_millis(10);
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which is in parentheses and may hold spaces): state is
    // the first, utime the 12th and stime the 13th.
    let (_, after_name) = stat
        .rsplit_once(')')
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("malformed {path}"))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(TICK * u32::try_from(total).unwrap_or(u32::MAX))
}

/// Bytes waiting in the kernel's queues of the established loopback TCP connections to
/// `port`, summed per side: what sits between the two processes, in neither one's RSS.
#[derive(Debug, Default, Clone, Copy)]
struct SocketQueues {
    /// Received by the server's socket, not yet read by the server.
    server_unread: u64,
    /// Written by the server, not yet acknowledged by the client's kernel.
    server_unsent: u64,
    /// Received by the clients' sockets, not yet read by the clients.
    client_unread: u64,
    /// Written by the clients, not yet acknowledged by the server's kernel.
    client_unsent: u64,
}

/// Reads [`SocketQueues`] for `port` from `/proc/net/tcp` (IPv4 only, as every socket here).
fn socket_queues(port: u16) -> Result<SocketQueues> {
    const ESTABLISHED: &str = "01";
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    let port_of = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
    };
    let mut queues = SocketQueues::default();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(state), Some(sizes)) =
            (fields.get(1), fields.get(2), fields.get(3), fields.get(4))
        else {
            continue;
        };
        if *state != ESTABLISHED {
            continue;
        }
        let Some((tx, rx)) = sizes.split_once(':') else {
            continue;
        };
        let tx = u64::from_str_radix(tx, 16).context("malformed tx_queue in /proc/net/tcp")?;
        let rx = u64::from_str_radix(rx, 16).context("malformed rx_queue in /proc/net/tcp")?;
        if port_of(local) == Some(port) {
            queues.server_unsent += tx;
            queues.server_unread += rx;
        } else if port_of(remote) == Some(port) {
            queues.client_unsent += tx;
            queues.client_unread += rx;
        }
    }
    Ok(queues)
}
