//! Logs through a real site: a hand-driven runner streams into `Job.log()`, followers attach
//! through `LogReader.follow`. Driving the runner side by hand lets the tests control exactly
//! when bytes are written and look at the site's follower counters.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tinyci_pki::Role;
use tinyci_schema::{
    LogStream, RunStatus, job, job_control, log_observer, log_reader, log_sink, session,
};
use tokio::sync::oneshot;

use crate::support::{ManualClock, TestSite, local, redeem};

fn hours(h: u64) -> Option<SystemTime> {
    Some(SystemTime::now() + Duration::from_secs(h * 3600))
}

/// A source archive with one task of one run.
pub(crate) fn source_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, text) in [
        ("tinyci.yml", ""),
        (
            "task.yml",
            "mountpoint: /src\nruns:\n  build:\n    command: [\"true\"]\n",
        ),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, text.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

/// Submits one run of `org/x` and returns its id (`r-N`).
pub(crate) async fn submit_one(session: &session::Client) -> String {
    submit_to(session, "org/x").await.unwrap()
}

/// Submits one run of `repo` and returns its id (`r-N`), or why the site refused it.
pub(crate) async fn submit_to(
    session: &session::Client,
    repo: &str,
) -> Result<String, capnp::Error> {
    submit_on(session, repo, "refs/heads/main").await
}

/// [`submit_to`] on `git_ref`.
pub(crate) async fn submit_on(
    session: &session::Client,
    repo: &str,
    git_ref: &str,
) -> Result<String, capnp::Error> {
    let mut request = session.submitter_request();
    request.get().set_repo(repo);
    let submitter = request.send().pipeline.get_submitter();
    let sink = submitter.upload_request().send().promise.await.unwrap();
    let sink = sink.get().unwrap().get_sink().unwrap();
    let tar = source_tar();
    for piece in tar.chunks(64 * 1024) {
        let mut write = sink.write_request();
        write.get().set_chunk(piece);
        write.send().await.unwrap();
    }
    let sha = Sha256::digest(&tar);
    let mut finish = sink.finish_request();
    finish.get().set_sha256(&sha);
    finish.send().promise.await.unwrap();
    let mut submit = submitter.submit_request();
    {
        let mut r = submit.get().init_request();
        r.set_ref(git_ref);
        r.set_sha("0123456789abcdef0123456789abcdef01234567");
        r.set_all(true);
        r.set_source_sha256(&sha);
    }
    let ticket = submit.send().pipeline.get_ticket();
    let runs = ticket.runs_request().send().promise.await?;
    let runs = runs.get()?.get_runs()?;
    assert_eq!(runs.len(), 1);
    Ok(runs.get(0).get_id()?.to_string().unwrap())
}

pub(crate) struct NoControl;
impl job_control::Server for NoControl {}

/// Leases the next run as runner `r1`.
pub(crate) async fn lease(session: &session::Client) -> job::Client {
    let mut request = session.worker_request();
    request.get().set_queue("default");
    // Not a runner certificate: the operator takes work under its own name.
    request.get().init_runner().set_name("ops");
    let worker = request.send().pipeline.get_worker();
    let mut next = worker.next_request();
    next.get().set_control(capnp_rpc::new_client(NoControl));
    let job = next.send().promise.await.unwrap();
    job.get().unwrap().get_job().unwrap()
}

async fn write(sink: &log_sink::Client, offset: u64, stream: LogStream, data: &[u8]) {
    let mut request = sink.write_request();
    let mut chunk = request.get().init_chunk();
    chunk.set_offset(offset);
    chunk.set_stream(stream);
    chunk.set_data(data);
    request.send().await.unwrap();
}

async fn complete(job: &job::Client) {
    let mut request = job.complete_request();
    request.get().init_outcome().set_status(RunStatus::Passed);
    request.send().promise.await.unwrap();
}

/// What a follower received.
#[derive(Default)]
struct Received {
    bytes: Vec<u8>,
    done: Option<RunStatus>,
}

/// A follower that keeps everything; `done` fires when the site says the run ended.
struct Collector {
    received: Rc<RefCell<Received>>,
    done: RefCell<Option<oneshot::Sender<()>>>,
    first: RefCell<Option<oneshot::Sender<()>>>,
}

impl log_observer::Server for Collector {
    async fn chunk(self: Rc<Self>, params: log_observer::ChunkParams) -> Result<(), capnp::Error> {
        let chunk = params.get()?.get_chunk()?;
        let mut received = self.received.borrow_mut();
        assert_eq!(
            chunk.get_offset(),
            received.bytes.len() as u64,
            "chunks arrive in order, without gaps or repeats"
        );
        received.bytes.extend_from_slice(chunk.get_data()?);
        if let Some(tx) = self.first.borrow_mut().take() {
            let _ = tx.send(());
        }
        Ok(())
    }

    async fn done(
        self: Rc<Self>,
        params: log_observer::DoneParams,
        _: log_observer::DoneResults,
    ) -> Result<(), capnp::Error> {
        self.received.borrow_mut().done = Some(params.get()?.get_status()?);
        if let Some(tx) = self.done.borrow_mut().take() {
            let _ = tx.send(());
        }
        Ok(())
    }
}

struct Following {
    received: Rc<RefCell<Received>>,
    first: oneshot::Receiver<()>,
    done: oneshot::Receiver<()>,
    _handle: tinyci_schema::handle::Client,
}

async fn follow(reader: &log_reader::Client, run: &str) -> Following {
    let received = Rc::new(RefCell::new(Received::default()));
    let (done_tx, done) = oneshot::channel();
    let (first_tx, first) = oneshot::channel();
    let observer: log_observer::Client = capnp_rpc::new_client(Collector {
        received: received.clone(),
        done: RefCell::new(Some(done_tx)),
        first: RefCell::new(Some(first_tx)),
    });
    let mut request = reader.follow_request();
    request.get().set_run(run);
    request.get().set_observer(observer);
    let response = request.send().promise.await.unwrap();
    Following {
        received,
        first,
        done,
        _handle: response.get().unwrap().get_handle().unwrap(),
    }
}

/// A follower that never finishes taking a chunk: it has stopped reading.
struct Stalled {
    calls: Rc<RefCell<u64>>,
}

impl log_observer::Server for Stalled {
    async fn chunk(self: Rc<Self>, _: log_observer::ChunkParams) -> Result<(), capnp::Error> {
        *self.calls.borrow_mut() += 1;
        std::future::pending().await
    }
}

pub(crate) fn reader_for(session: &session::Client, repo: &str) -> log_reader::Client {
    let mut request = session.logs_request();
    request.get().init_scope().set_repo(repo);
    request.send().pipeline.get_reader()
}

/// A session of operator `ops` (an admin certificate: runner certificates do not submit) that
/// may submit to and read logs of `org/x` and take from `default`; keep the connection alive
/// while using it.
async fn runner_session(site: &TestSite) -> (session::Client, tinyci_net::ClientConnection) {
    runner_session_until(site, hours(1)).await
}

/// As [`runner_session`], with a grant expiring at `expires_at`.
async fn runner_session_until(
    site: &TestSite,
    expires_at: Option<SystemTime>,
) -> (session::Client, tinyci_net::ClientConnection) {
    let (gateway, connection) = site.connect(Role::Admin, "ops").await;
    let token = site.mint(
        "admin:ops",
        &["queue:submit", "queue:take", "logs:read", "logs:write"],
        &["org/x"],
        &["default"],
        expires_at,
    );
    (redeem(&gateway, &token), connection)
}

#[test]
fn followers_before_during_and_after_get_the_same_log_and_a_stalled_one_costs_a_bounded_buffer() {
    local(async {
        let site = TestSite::start().await;
        let (session, _connection) = runner_session(&site).await;
        let run = submit_one(&session).await;
        let reader = reader_for(&session, "org/x");

        // Attached before the run starts; and one that stops reading at once.
        let mut before = follow(&reader, &run).await;
        let calls = Rc::new(RefCell::new(0));
        let mut stall = reader.follow_request();
        stall.get().set_run(&run);
        stall.get().set_observer(capnp_rpc::new_client(Stalled {
            calls: calls.clone(),
        }));
        let stalled_handle = stall.send().promise.await.unwrap();

        let job = lease(&session).await;
        job.started_request().send().promise.await.unwrap();
        let sink = job.log_request().send().promise.await.unwrap();
        let sink = sink.get().unwrap().get_sink().unwrap();
        // 10 MiB in 64 KiB chunks, stdout and stderr interleaved.
        let chunk_len = 64 * 1024;
        let total_chunks = 160u64;
        let mut expected = Vec::new();
        let mut during = None;
        for i in 0..total_chunks {
            let byte = u8::try_from(i % 251).unwrap();
            let data = vec![byte; chunk_len];
            let stream = if i % 2 == 0 {
                LogStream::Stdout
            } else {
                LogStream::Stderr
            };
            write(&sink, i * chunk_len as u64, stream, &data).await;
            expected.extend_from_slice(&data);
            if i == total_chunks / 2 {
                // Attached while the run streams.
                during = Some(follow(&reader, &run).await);
            }
        }
        // Every write was taken although one follower reads nothing: the runner was not
        // slowed by it.
        sink.close_request().send().promise.await.unwrap();
        complete(&job).await;

        let mut during = during.unwrap();
        (&mut before.first).await.unwrap();
        (&mut during.first).await.unwrap();
        (&mut before.done).await.unwrap();
        (&mut during.done).await.unwrap();
        let mut after = follow(&reader, &run).await;
        (&mut after.done).await.unwrap();
        for following in [&before, &during, &after] {
            let received = following.received.borrow();
            assert_eq!(received.done, Some(RunStatus::Passed));
            assert_eq!(received.bytes.len(), expected.len());
            assert!(received.bytes == expected, "a follower got different bytes");
        }

        let stats = site.follow_stats();
        assert!(
            *calls.borrow() >= 1,
            "the stalled follower was offered output"
        );
        assert!(
            stats.peak_buffered_bytes_per_follower() <= tinyci_site::FOLLOWER_BUFFER_BOUND,
            "a follower held {} bytes, over the bound of {}",
            stats.peak_buffered_bytes_per_follower(),
            tinyci_site::FOLLOWER_BUFFER_BOUND
        );
        // The others end once their `done` is answered; the stalled one stays, holding no
        // more than the bound.
        let mut active = stats.watch_active();
        active.wait_for(|n| *n == 1).await.unwrap();
        assert!(stats.buffered_bytes() <= tinyci_site::FOLLOWER_BUFFER_BOUND);
        assert!(
            stats.buffered_bytes() > 0,
            "the stalled follower holds its batch"
        );

        // Dropping its handle ends it and frees what the site held for it.
        drop(stalled_handle);
        active.wait_for(|n| *n == 0).await.unwrap();
        assert_eq!(stats.buffered_bytes(), 0);
    });
}

#[test]
fn a_log_is_cut_at_its_limit_with_a_marker_and_the_run_still_completes() {
    local(async {
        let mut site = TestSite::start().await;
        // A small limit, set the way an operator would.
        site.restart_with("[logs]\nmax_run_bytes = 100000").await;
        let (session, _connection) = runner_session(&site).await;
        let run = submit_one(&session).await;
        let job = lease(&session).await;
        job.started_request().send().promise.await.unwrap();
        let sink = job.log_request().send().promise.await.unwrap();
        let sink = sink.get().unwrap().get_sink().unwrap();
        for i in 0..4u64 {
            write(&sink, i * 40_000, LogStream::Stdout, &[b'x'; 40_000]).await;
        }
        sink.close_request().send().promise.await.unwrap();
        let acknowledged = sink.acknowledged_request().send().promise.await.unwrap();
        assert_eq!(
            acknowledged.get().unwrap().get_offset(),
            u64::MAX,
            "a cut log takes everything: nothing to resend"
        );
        complete(&job).await;

        let reader = reader_for(&session, "org/x");
        let text = stored_log(&reader, &run).await;
        // The limit counts what the log takes on disk: its bytes and a frame (at most
        // MAX_WRITE_OVERHEAD) for each of the four writes.
        let kept = text.iter().take_while(|b| **b == b'x').count() as u64;
        assert!(
            (100_000 - 4 * tinyci_logs::MAX_WRITE_OVERHEAD..=100_000).contains(&kept),
            "{kept} bytes kept"
        );
        let marker = String::from_utf8_lossy(&text[kept as usize..]);
        assert!(
            marker.contains("log truncated") && marker.contains("100000 bytes"),
            "{marker}"
        );
    });
}

#[test]
fn a_reader_of_one_repository_cannot_follow_or_read_another() {
    local(async {
        let site = TestSite::start().await;
        let (session, _connection) = runner_session(&site).await;
        let run = submit_one(&session).await;
        // An operator's grant scoped to org/a (a site user would also need GitHub's word).
        let (user, _c) = site.connect(Role::Admin, "auditor").await;
        let only_a = site.mint("admin:auditor", &["logs:read"], &["org/a"], &[], hours(1));
        let session_a = redeem(&user, &only_a);
        let reader = reader_for(&session_a, "org/a");
        let mut request = reader.read_request();
        request.get().set_run(&run);
        let err = crate::support::error_text(request.send().promise.await.err().unwrap());
        assert!(
            err.contains(&format!("no run \"{run}\" in repository org/a")),
            "{err}"
        );
        let mut request = reader.follow_request();
        request.get().set_run(&run);
        request.get().set_observer(capnp_rpc::new_client(Stalled {
            calls: Rc::default(),
        }));
        let err = crate::support::error_text(request.send().promise.await.err().unwrap());
        assert!(err.contains("in repository org/a"), "{err}");
        // And the grant cannot be stretched to repo org/x.
        let mut request = session_a.logs_request();
        request.get().init_scope().set_repo("org/x");
        let reader_x = request.send().pipeline.get_reader();
        let mut read = reader_x.read_request();
        read.get().set_run(&run);
        let err = crate::support::error_text(read.send().promise.await.err().unwrap());
        assert!(err.contains("denied logs:read on repo org/x"), "{err}");
    });
}

/// Reads a run's whole stored log, a call per `read`'s limit, until the site says it is done.
async fn stored_log(reader: &log_reader::Client, run: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let mut request = reader.read_request();
        request.get().set_run(run);
        request.get().set_from(bytes.len() as u64);
        request.get().set_max(1 << 20);
        let response = request.send().promise.await.unwrap();
        let response = response.get().unwrap();
        let before = bytes.len();
        for chunk in response.get_chunks().unwrap().iter() {
            bytes.extend_from_slice(chunk.get_data().unwrap());
        }
        if response.get_done() || bytes.len() == before {
            return bytes;
        }
    }
}

#[test]
fn retention_deletes_the_oldest_output_over_the_cap_then_everything_past_its_age() {
    local(async {
        let mut site = TestSite::start().await;
        let mut runs = Vec::new();
        {
            let (session, _connection) = runner_session(&site).await;
            for _ in 0..2 {
                let run = submit_one(&session).await;
                let job = lease(&session).await;
                job.started_request().send().promise.await.unwrap();
                let sink = job.log_request().send().promise.await.unwrap();
                let sink = sink.get().unwrap().get_sink().unwrap();
                write(&sink, 0, LogStream::Stdout, &[b'y'; 60_000]).await;
                sink.close_request().send().promise.await.unwrap();
                complete(&job).await;
                runs.push(run);
            }
        }
        // 120 kB stored, cap 100 kB: the run that finished first loses its log.
        site.restart_with("[retention]\nlogs_max_age = \"never\"\nmax_total_bytes = 100000")
            .await;
        site.sweeps_done(1).await;
        {
            let (session, _connection) = runner_session(&site).await;
            let reader = reader_for(&session, "org/x");
            assert!(stored_log(&reader, &runs[0]).await.is_empty());
            assert_eq!(stored_log(&reader, &runs[1]).await.len(), 60_000);
        }

        // Logs older than 0s: everything finished goes.
        site.restart_with("[retention]\nlogs_max_age = \"0s\"")
            .await;
        site.sweeps_done(1).await;
        let (session, _connection) = runner_session(&site).await;
        let reader = reader_for(&session, "org/x");
        assert!(stored_log(&reader, &runs[1]).await.is_empty());
    });
}

/// A repository whose runs store more than `[retention] max_repo_bytes` has its new
/// submissions refused, saying so with the numbers, while other repositories submit as
/// before; the count survives a restart (the sweep recounts from the store), and once
/// retention frees the space the repository submits again.
#[test]
fn a_repository_over_its_storage_quota_is_refused_and_others_are_not() {
    local(async {
        let mut site = TestSite::start().await;
        site.restart_with("[retention]\nlogs_max_age = \"never\"\nmax_repo_bytes = 50000")
            .await;
        site.sweeps_done(1).await;
        let refusal = {
            let (session, _connection) = runner_session(&site).await;
            submit_one(&session).await;
            let job = lease(&session).await;
            job.started_request().send().promise.await.unwrap();
            let sink = job.log_request().send().promise.await.unwrap();
            let sink = sink.get().unwrap().get_sink().unwrap();
            write(&sink, 0, LogStream::Stdout, &[b'q'; 60_000]).await;
            sink.close_request().send().promise.await.unwrap();
            complete(&job).await;
            let refusal = submit_to(&session, "org/x").await.unwrap_err().to_string();
            assert!(
                refusal.contains("repository org/x stores ")
                    && refusal.contains("quota of 50000 bytes")
                    && refusal.contains("max_repo_bytes"),
                "{refusal}"
            );
            // The log's bytes and what its file's one write costs beyond them.
            let counted = stored_bytes_in(&refusal);
            assert!(
                (60_000..=60_000 + tinyci_logs::MAX_WRITE_OVERHEAD).contains(&counted),
                "{refusal}"
            );
            // Another repository is not affected.
            let (gateway, _other) = site.connect(Role::Admin, "other").await;
            let token = site.mint("admin:other", &["queue:submit"], &["org/y"], &[], hours(1));
            submit_to(&redeem(&gateway, &token), "org/y").await.unwrap();
            refusal
        };
        // Restarted, the count comes from the store.
        site.restart_with("[retention]\nlogs_max_age = \"never\"\nmax_repo_bytes = 50000")
            .await;
        site.sweeps_done(1).await;
        {
            let (session, _connection) = runner_session(&site).await;
            let again = submit_to(&session, "org/x").await.unwrap_err().to_string();
            // Recounted from the log's file: what it takes on disk, which the count before
            // the restart did not understate.
            let recounted = stored_bytes_in(&again);
            assert!(
                (60_000..=stored_bytes_in(&refusal)).contains(&recounted),
                "{again}"
            );
        }
        // Retention removes the finished run's log: under quota again.
        site.restart_with("[retention]\nlogs_max_age = \"0s\"\nmax_repo_bytes = 50000")
            .await;
        site.sweeps_done(1).await;
        let (session, _connection) = runner_session(&site).await;
        submit_to(&session, "org/x").await.unwrap();
    });
}

#[test]
fn retention_by_age_follows_the_site_clock() {
    local(async {
        let clock = ManualClock::new();
        let mut site = TestSite::start_on(&clock).await;
        let run = {
            let (session, _connection) = runner_session(&site).await;
            let run = submit_one(&session).await;
            let job = lease(&session).await;
            job.started_request().send().promise.await.unwrap();
            let sink = job.log_request().send().promise.await.unwrap();
            let sink = sink.get().unwrap().get_sink().unwrap();
            write(&sink, 0, LogStream::Stdout, b"kept a day").await;
            sink.close_request().send().promise.await.unwrap();
            complete(&job).await;
            run
        };
        let keep_a_day = "[retention]\nlogs_max_age = \"1d\"";
        site.restart_with(keep_a_day).await;
        site.sweeps_done(1).await;
        {
            let (session, _connection) = runner_session(&site).await;
            let reader = reader_for(&session, "org/x");
            assert_eq!(stored_log(&reader, &run).await, b"kept a day");
        }

        // Two days pass on the site's clock alone: the next sweep takes the log, and a grant
        // that the real clock says is good for an hour is expired by the site's.
        clock.advance(Duration::from_secs(2 * 24 * 3600));
        site.restart_with(keep_a_day).await;
        site.sweeps_done(1).await;
        let (stale, _stale_connection) = runner_session(&site).await;
        let mut request = reader_for(&stale, "org/x").read_request();
        request.get().set_run(&run);
        let refused = request.send().promise.await.err().unwrap();
        assert!(refused.to_string().contains("token expired"), "{refused}");

        let an_hour_on = tinyci_core::system_time((clock.clock())() + 3_600_000);
        let (session, _connection) = runner_session_until(&site, Some(an_hour_on)).await;
        let reader = reader_for(&session, "org/x");
        assert!(stored_log(&reader, &run).await.is_empty());
    });
}

/// A disk that fills under a log refuses the write that does not fit, saying why, and
/// nothing else breaks: the site answers, the run still completes, and the site starts again
/// over the same data. (The log's file is `/dev/full`, where every write fails with ENOSPC.)
#[test]
fn a_full_disk_refuses_the_log_write_clearly_and_the_site_goes_on() {
    local(async {
        let mut site = TestSite::start().await;
        let (session, _connection) = runner_session(&site).await;
        let run = submit_one(&session).await;
        let number: u64 = run.trim_start_matches("r-").parse().unwrap();
        let shard = site
            .config
            .data_dir
            .join("logs")
            .join(format!("{:04x}", number >> 12));
        std::fs::create_dir_all(&shard).unwrap();
        std::os::unix::fs::symlink("/dev/full", shard.join(format!("{number}.log"))).unwrap();
        let job = lease(&session).await;
        job.started_request().send().promise.await.unwrap();
        let sink = job.log_request().send().promise.await.unwrap();
        let sink = sink.get().unwrap().get_sink().unwrap();
        let piece = vec![b'f'; 64 * 1024];
        let mut offset = 0u64;
        let refusal = loop {
            let mut request = sink.write_request();
            let mut chunk = request.get().init_chunk();
            chunk.set_offset(offset);
            chunk.set_stream(LogStream::Stdout);
            chunk.set_data(&piece);
            // A stream call's failure surfaces on a later call: close reports it at the end.
            if let Err(e) = request.send().await {
                break e.to_string();
            }
            offset += piece.len() as u64;
            if offset >= 1024 * 1024 {
                match sink.close_request().send().promise.await {
                    Ok(_) => panic!("a full disk took a MiB of log"),
                    Err(e) => break e.to_string(),
                }
            }
        };
        assert!(
            refusal.contains(&format!("failed to store the log of run {run}"))
                && refusal.contains("No space left on device"),
            "{refusal}"
        );
        // The site goes on: the run completes, and its log reads as empty, not as garbage.
        complete(&job).await;
        let reader = reader_for(&session, "org/x");
        assert!(stored_log(&reader, &run).await.is_empty());
        // Another run's log is stored as ever.
        let other = submit_one(&session).await;
        let job = lease(&session).await;
        job.started_request().send().promise.await.unwrap();
        let sink = job.log_request().send().promise.await.unwrap();
        let sink = sink.get().unwrap().get_sink().unwrap();
        write(&sink, 0, LogStream::Stdout, b"stored").await;
        sink.close_request().send().promise.await.unwrap();
        complete(&job).await;
        assert_eq!(stored_log(&reader, &other).await, b"stored");
        // And the site starts again over the same data.
        drop((sink, job, reader, session));
        site.restart_with("").await;
        let (session, _connection) = runner_session(&site).await;
        let reader = reader_for(&session, "org/x");
        assert_eq!(stored_log(&reader, &other).await, b"stored");
    });
}

/// The byte count a storage quota's refusal names (`… stores N bytes …`).
fn stored_bytes_in(refusal: &str) -> u64 {
    refusal
        .split("stores ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {refusal}"))
}

/// A ref is a name: one holding a control character is refused at submission, NUL above all,
/// which would end its key in the run indexes early and hide other refs' runs from listings.
#[test]
fn a_ref_with_a_control_character_is_refused() {
    local(async {
        let site = TestSite::start().await;
        let (session, _connection) = runner_session(&site).await;
        for git_ref in ["refs/heads/main\0x", "refs/heads/\u{1b}[2Jmain"] {
            let refused = submit_on(&session, "org/x", git_ref).await.unwrap_err();
            assert!(
                refused
                    .to_string()
                    .contains("ref holds a control character"),
                "{refused}"
            );
        }
        submit_on(&session, "org/x", "refs/heads/main")
            .await
            .unwrap();
    });
}
