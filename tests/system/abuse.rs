//! The abuse suite, at reduced scale: attackers from the findings all held against
//! one real site process at once (sockets that never start TLS, a client pipelining calls
//! without reading the answers, request bodies sent a byte at a time, anonymous downloads of
//! a large public raw log left unread, a job alternating stdout and stderr a byte at a time),
//! while `site status`, a runner finishing a job, a
//! follower of its progress and `/healthz` keep working. The site's resident memory and its
//! store grow within stated bounds, asserted on sizes read from the kernel and the file
//! system, never on time.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::mpsc;

use tinyci_net::NetLimits;
use tinyci_pki::SiteName;
use tokio::io::AsyncWriteExt as _;

use crate::jobs::{start_runner, start_submit_wait};
use crate::logs::{logs, task};
use crate::support::{git_repo, init_site, run_in, serve_site_with_http};
use crate::web::submit;

/// Sockets that connect to the capnp port and never start TLS.
const IDLE_SOCKETS: usize = 200;
/// `Gateway.info` calls one client pipelines without reading a reply.
const PIPELINED_CALLS: u32 = 100_000;
/// POSTs whose bodies stop after one byte, spread over four addresses (the per-address cap
/// is 64).
const SLOW_BODIES: usize = 200;
/// Bytes the job prints, one at a time, alternating streams.
const JOB_BYTES: usize = 40_000;
/// Anonymous requests for a public run's raw log that never read the answer, and the log's
/// size: held whole, they would cost the site 640 MiB.
const UNREAD_DOWNLOADS: usize = 40;
const BIG_LOG_BYTES: usize = 16 * 1024 * 1024;

/// What the site may grow by, in resident memory, with every attacker held: the pipelining
/// client holds at most `max_outstanding_calls` (256) calls and their small replies, a slow
/// body at most its one byte and a connection's buffers, an idle socket its accept, an unread
/// raw log about two 64 KiB pages.
const RSS_BOUND_KIB: u64 = 32 * 1024;

/// The site's anonymous resident memory (heap and stacks): what it holds for clients. File
/// pages of the store's memory map, which the kernel may drop at will, are left out.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One RPC frame: a `Bootstrap` (question 0) when `call` is 0, else a `Gateway.info` call
/// (question `call`) on the bootstrap's answer.
fn rpc_frame(call: u32) -> Vec<u8> {
    use capnp_rpc::rpc_capnp::message;
    use tinyci_schema::gateway;
    let mut builder = capnp::message::Builder::new_default();
    let root = builder.init_root::<message::Builder<'_>>();
    if call == 0 {
        root.init_bootstrap().set_question_id(0);
    } else {
        let mut c = root.init_call();
        c.set_question_id(call);
        c.reborrow()
            .init_target()
            .init_promised_answer()
            .set_question_id(0);
        c.set_interface_id(<gateway::Client as capnp::traits::HasTypeId>::TYPE_ID);
        c.set_method_id(0);
        c.init_params()
            .init_content()
            .init_as::<gateway::info_params::Builder<'_>>();
    }
    capnp::serialize::write_message_to_words(&builder)
}

/// Starts every attacker from a thread of its own and returns once all are in place; they
/// hold until `release` is dropped.
fn hold_attackers(
    dir: &Path,
    capnp_addr: &str,
    http_addr: &str,
    big_run: &str,
) -> mpsc::Sender<()> {
    let log_request = format!("GET /runs/{big_run}/log HTTP/1.1\r\nHost: ci\r\n\r\n");
    let config = tinyci_site::SiteConfig::load(&dir.join("site.toml")).unwrap();
    let credentials = tinyci_pki::Credentials::from_pem(
        &std::fs::read_to_string(&config.admin_cert).unwrap(),
        &std::fs::read_to_string(&config.admin_key).unwrap(),
    )
    .unwrap();
    let tls = tinyci_pki::tls::client_config(
        &credentials,
        &std::fs::read_to_string(&config.ca_cert).unwrap(),
        SiteName::new("alpha").unwrap(),
    )
    .unwrap();
    let capnp_addr: std::net::SocketAddr = capnp_addr.parse().unwrap();
    let http_addr: std::net::SocketAddr = http_addr.parse().unwrap();
    let (in_place_tx, in_place) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let from = |last: u8| std::net::SocketAddr::from(([127, 0, 0, last], 0));
            let connect_from = |last: u8, to: std::net::SocketAddr| async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(from(last)).unwrap();
                socket.connect(to).await.unwrap()
            };
            let mut held = Vec::new();
            for _ in 0..IDLE_SOCKETS {
                held.push(connect_from(2, capnp_addr).await);
            }
            let stream = tinyci_net::dial_bytes(
                &capnp_addr.to_string(),
                tls,
                &SiteName::new("alpha").unwrap(),
                &NetLimits::default(),
            )
            .await
            .unwrap();
            // Only the write half is used: the replies are never read.
            let (_unread, mut write) = tokio::io::split(stream);
            let pipelining = tokio::spawn(async move {
                let mut batch = rpc_frame(0);
                for call in 1..=PIPELINED_CALLS {
                    batch.extend(rpc_frame(call));
                    if batch.len() >= 64 * 1024 {
                        if write.write_all(&batch).await.is_err() {
                            return;
                        }
                        batch.clear();
                    }
                }
                let _ = write.write_all(&batch).await;
                // Hold the connection open.
                std::future::pending::<()>().await;
            });
            for i in 0..SLOW_BODIES {
                let last = 3 + u8::try_from(i % 4).unwrap();
                let mut slow = connect_from(last, http_addr).await;
                slow.write_all(
                    b"POST /hooks/github HTTP/1.1\r\nHost: ci\r\nContent-Length: 100000\r\n\r\n{",
                )
                .await
                .unwrap();
                held.push(slow);
            }
            for i in 0..UNREAD_DOWNLOADS {
                let last = 7 + u8::try_from(i % 2).unwrap();
                let mut unread = connect_from(last, http_addr).await;
                unread.write_all(log_request.as_bytes()).await.unwrap();
                held.push(unread);
            }
            in_place_tx.send(()).unwrap();
            // Hold everything until the test lets go.
            let _ = tokio::task::spawn_blocking(move || released.recv()).await;
            pipelining.abort();
            drop(held);
        });
    });
    in_place.recv().unwrap();
    release
}

/// `GET /healthz` from 127.0.0.1: whether it answered 200.
fn healthz(http_addr: &str) -> bool {
    let mut stream = std::net::TcpStream::connect(http_addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: ci\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.starts_with("HTTP/1.1 200")
}

#[test]
fn attackers_held_together_cost_bounded_memory_and_store_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    init_site(
        dir.path(),
        "\n[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\n\
         public_repos = [\"org/public\"]\n",
    );
    let (site, addr, http_addr) = serve_site_with_http(dir.path());
    let added = run_in(
        dir.path(),
        &["runner", "add", "r1", "--queue", "default", "--addr", &addr],
    );
    assert!(added.status.success());
    let runner = start_runner(dir.path(), "r1");

    // A first job warms the site up (sessions, caches, a log), so growth is the attackers'.
    let warm = tempfile::tempdir().unwrap();
    git_repo(
        warm.path(),
        &[("tinyci.yml", ""), ("task.yml", &task("echo warm"))],
    );
    let (code, lines) = start_submit_wait(dir.path(), warm.path(), &addr).wait();
    assert_eq!(code, Some(0), "{lines:#?}");
    // A public run with a large log, for anonymous downloads.
    let big = tempfile::tempdir().unwrap();
    let print_big = format!("head -c {BIG_LOG_BYTES} /dev/zero | tr '\\\\0' x");
    git_repo(
        big.path(),
        &[("tinyci.yml", ""), ("task.yml", &task(&print_big))],
    );
    let big_run = submit(dir.path(), big.path(), "org/public", &addr);
    // Following it returns once the run has ended.
    let stored = logs(dir.path(), &addr, &[&big_run, "-f", "--raw"]);
    assert_eq!(
        stored.stdout.len(),
        BIG_LOG_BYTES,
        "the big log is stored whole"
    );

    let rss_before = rss_kib(site.pid());
    let data = dir.path().join("data/data.mdb");
    let store_before = std::fs::metadata(&data).unwrap().len();

    let release = hold_attackers(dir.path(), &addr, &http_addr, &big_run);

    // Everyone else is served meanwhile: the status, the pages' health check...
    let status = run_in(dir.path(), &["site", "status", "--addr", &addr]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(healthz(&http_addr), "/healthz did not answer 200");
    // ...a runner finishing a job that alternates streams a byte at a time, followed by
    // `submit --wait`, and its log read back whole.
    let repo = tempfile::tempdir().unwrap();
    let command = format!(
        "i=0; while [ $i -lt {} ]; do printf a; printf b >&2; i=$((i+1)); done",
        JOB_BYTES / 2
    );
    git_repo(
        repo.path(),
        &[("tinyci.yml", ""), ("task.yml", &task(&command))],
    );
    let (code, lines) = start_submit_wait(dir.path(), repo.path(), &addr).wait();
    assert_eq!(code, Some(0), "{lines:#?}");
    let run = lines
        .iter()
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("r-")))
        .unwrap()
        .to_owned();
    for (stream, byte) in [("stdout", b'a'), ("stderr", b'b')] {
        let got = logs(dir.path(), &addr, &[&run, "--stream", stream, "--raw"]);
        assert!(got.status.success());
        assert_eq!(got.stdout, vec![byte; JOB_BYTES / 2], "{stream}");
    }
    let status = run_in(dir.path(), &["site", "status", "--addr", &addr]);
    assert!(status.status.success());

    let rss_grown = rss_kib(site.pid()).saturating_sub(rss_before);
    assert!(
        rss_grown <= RSS_BOUND_KIB,
        "the site grew by {rss_grown} KiB with the attackers held (bound {RSS_BOUND_KIB} KiB)"
    );
    // The job's log file, and its submission and run in the store: about the log's bytes,
    // plus B-tree pages.
    let number: u64 = run.trim_start_matches("r-").parse().unwrap();
    let log_file = dir
        .path()
        .join(format!("data/logs/{:04x}/{number}.log", number >> 12));
    let log_bytes = std::fs::metadata(&log_file).unwrap().len();
    let store_grown = std::fs::metadata(&data).unwrap().len() - store_before + log_bytes;
    let store_bound = JOB_BYTES as u64 * 11 / 10 + 256 * 1024;
    assert!(
        store_grown <= store_bound,
        "a {JOB_BYTES}-byte log grew the store and its file by {store_grown} bytes (bound \
         {store_bound}; the file is {log_bytes})"
    );
    eprintln!(
        "abuse suite: site grew {rss_grown} KiB with attackers held; store grew {store_grown} \
         bytes for a {JOB_BYTES}-byte log"
    );
    drop(release);
    drop((runner, site));
}
