//! Figure: job overhead. What tinyci adds to running a one-command job, against running the
//! same command with the bare executor, measured in the same run.
//!
//! tinyci: a real `tinyci site up` process and a real `tinyci runner --executor shell` process
//! (the shipped binary, one slot), and a client holding the admin capability (`tinyci submit`'s
//! path on the site's own host). Each sample
//! uploads a source archive whose one run's command is `sh -c true`, submits it, and waits
//! for the run's end as a follower sees it (`LogReader.follow`, attached right after the
//! submission is acknowledged): submit → run finished, end to end. A second series runs
//! `sh -c 'echo x'` and times submit → the first log byte at the follower. Runs go one at a
//! time, so the runner is always idle and waiting when a run is queued.
//!
//! Baseline: `sh -c true` spawned and waited for by this process, the work the shell executor
//! cannot avoid. (Docker's figure, `docker run --rm` against tinyci's Docker executor, is not
//! measured yet.)

use std::cell::RefCell;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest, Sha256};
use tinyci_schema::{RunStatus, admin, log_observer};
use tokio::sync::oneshot;

use crate::Options;
use crate::fixture;
use crate::report::{self, Better, Figure};
use crate::site_process::{SITE, SiteDir, tinyci_binary};

/// How long the runner may take to connect.
const PATIENCE: Duration = Duration::from_secs(60);

pub(crate) async fn run(options: &Options) -> Result<Vec<Figure>> {
    println!("== overhead: submit → run finished for a one-command job, against the bare executor");
    let samples = if options.quick { 10 } else { 200 };
    let site_dir = SiteDir::init(tinyci_binary()?)?;
    let site = site_dir.start()?;
    let mut bundle = site_dir
        .issue_runners(1, "default")?
        .pop()
        .context("no runner bundle issued")?;
    bundle.addresses = vec![site.addr.to_string()];
    let bundle_path = site_dir.dir.path().join("runner.bundle");
    bundle.write(&bundle_path)?;
    let _runner = RunnerProcess::start(&site_dir, &bundle_path, &bundle.runner)?;
    let tls = site_dir.admin_client_tls()?;
    let token = std::fs::read_to_string(site_dir.config()?.admin_token)
        .context("reading the admin token")?
        .trim()
        .to_owned();
    let addr = site.addr;

    let (finished, first_byte) = fixture::on_thread("overhead client", move || async move {
        let (gateway, _connection) = tinyci_net::dial::<tinyci_schema::gateway::Client>(
            &addr.to_string(),
            tls,
            &tinyci_pki::SiteName::new(SITE)?,
            &tinyci_net::NetLimits::default(),
        )
        .await
        .context("dialing the site")?;
        let session = fixture::redeem(&gateway, &token).await?;
        let admin = session.admin_request().send().pipeline.get_admin();
        let mut request = admin.logs_request();
        request.get().set_repo("*");
        let reader = request.send().pipeline.get_reader();
        let true_source = source("true")?;
        let echo_source = source("echo x")?;
        // Warm up: the first runs pay for connections, caches and page faults.
        for _ in 0..3 {
            one_job(&admin, &reader, &true_source).await?;
        }
        let mut finished = Vec::with_capacity(samples);
        for _ in 0..samples {
            finished.push(one_job(&admin, &reader, &true_source).await?.finished);
        }
        let mut first_byte = Vec::with_capacity(samples);
        for _ in 0..samples {
            let timing = one_job(&admin, &reader, &echo_source).await?;
            first_byte.push(timing.first_byte.context("the job printed nothing")?);
        }
        anyhow::Ok((finished, first_byte))
    })
    .await?;

    let mut bare = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let status = Command::new("sh")
            .args(["-c", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("running sh -c true")?;
        if !status.success() {
            bail!("sh -c true failed: {status}");
        }
        bare.push(started.elapsed());
    }

    let mut finished = finished;
    let mut first_byte = first_byte;
    let ours_p50 = report::millis(report::percentile(&mut finished, 0.5));
    let ours_p99 = report::millis(report::percentile(&mut finished, 0.99));
    let bare_p50 = report::millis(report::percentile(&mut bare, 0.5));
    let bare_p99 = report::millis(report::percentile(&mut bare, 0.99));
    let added = ours_p50 - bare_p50;
    println!(
        "  {samples} jobs: submit → finished p50 {ours_p50:.2} ms, p99 {ours_p99:.2} ms; \
         bare sh -c true p50 {bare_p50:.2} ms, p99 {bare_p99:.2} ms; tinyci adds {added:.2} ms at p50"
    );
    let first_p50 = report::millis(report::percentile(&mut first_byte, 0.5));
    let first_p99 = report::millis(report::percentile(&mut first_byte, 0.99));
    println!(
        "  submit → first log byte at a follower: p50 {first_p50:.2} ms, p99 {first_p99:.2} ms"
    );
    Ok(vec![
        Figure::new(
            "overhead, shell: submit → finished p50",
            "ms",
            Better::Lower,
            ours_p50,
            Some((bare_p50, "bare sh -c true")),
        )
        .with_goal("adds ≤ 15 ms", Some(added <= 15.0)),
        Figure::new(
            "overhead, shell: submit → finished p99",
            "ms",
            Better::Lower,
            ours_p99,
            Some((bare_p99, "bare sh -c true")),
        ),
        Figure::new(
            "overhead: submit → first log byte at a follower p50",
            "ms",
            Better::Lower,
            first_p50,
            None,
        ),
        Figure::new(
            "overhead: submit → first log byte at a follower p99",
            "ms",
            Better::Lower,
            first_p99,
            None,
        ),
    ])
}

/// A source archive whose one run's command is `sh -c line`.
fn source(line: &str) -> Result<Vec<u8>> {
    let task =
        format!("mountpoint: /src\nruns:\n  job:\n    command: [\"sh\", \"-c\", {line:?}]\n");
    let mut builder = tar::Builder::new(Vec::new());
    for (path, text) in [("tinyci.yml", ""), ("task.yml", task.as_str())] {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, text.as_bytes())
            .context("building the source archive")?;
    }
    builder.into_inner().context("building the source archive")
}

/// When a job's milestones were reached, from the moment its submission started.
struct Timing {
    finished: Duration,
    first_byte: Option<Duration>,
}

/// Uploads `source`, submits it, follows its one run; returns when it finished (and when its
/// first log byte arrived), measured from the start of the upload.
async fn one_job(
    admin: &admin::Client,
    reader: &tinyci_schema::log_reader::Client,
    source: &[u8],
) -> Result<Timing> {
    let started = Instant::now();
    let mut request = admin.submitter_request();
    request.get().set_repo("org/x");
    let submitter = request.send().pipeline.get_submitter();
    let sink = submitter.upload_request().send().pipeline.get_sink();
    let mut write = sink.write_request();
    write.get().set_chunk(source);
    write.send().await.context("uploading the source")?;
    let mut finish = sink.finish_request();
    finish.get().set_sha256(&Sha256::digest(source));
    finish.send().promise.await.context("ByteSink.finish")?;
    let mut submit = submitter.submit_request();
    {
        let mut r = submit.get().init_request();
        r.set_ref("refs/heads/main");
        r.set_sha("0123456789abcdef0123456789abcdef01234567");
        r.set_all(true);
        r.set_source_sha256(&Sha256::digest(source));
    }
    let ticket = submit.send().pipeline.get_ticket();
    let runs = ticket
        .runs_request()
        .send()
        .promise
        .await
        .context("Ticket.runs")?;
    let runs = runs.get()?.get_runs()?;
    if runs.len() != 1 {
        bail!("expected one run, got {}", runs.len());
    }
    let run = runs.get(0).get_id()?.to_string()?;
    drop(submitter);
    let (done_tx, done) = oneshot::channel();
    let first = Rc::new(RefCell::new(None));
    let observer: log_observer::Client = capnp_rpc::new_client(Watch {
        started,
        first: first.clone(),
        done: RefCell::new(Some(done_tx)),
    });
    let mut follow = reader.follow_request();
    follow.get().set_run(&run);
    follow.get().set_observer(observer);
    let _handle = follow.send().promise.await.context("LogReader.follow")?;
    let (status, finished) = done.await.context("the follower never heard the end")?;
    if status != RunStatus::Passed {
        bail!("run {run} ended {status:?}");
    }
    Ok(Timing {
        finished,
        first_byte: *first.borrow(),
    })
}

/// Notes the first chunk's arrival and the run's end.
struct Watch {
    started: Instant,
    first: Rc<RefCell<Option<Duration>>>,
    done: RefCell<Option<oneshot::Sender<(RunStatus, Duration)>>>,
}

impl log_observer::Server for Watch {
    async fn chunk(self: Rc<Self>, _: log_observer::ChunkParams) -> Result<(), capnp::Error> {
        let mut first = self.first.borrow_mut();
        if first.is_none() {
            *first = Some(self.started.elapsed());
        }
        Ok(())
    }

    async fn done(
        self: Rc<Self>,
        params: log_observer::DoneParams,
        _: log_observer::DoneResults,
    ) -> Result<(), capnp::Error> {
        let status = params.get()?.get_status()?;
        if let Some(tx) = self.done.borrow_mut().take() {
            let _ = tx.send((status, self.started.elapsed()));
        }
        Ok(())
    }
}

/// `tinyci runner --bundle FILE --executor shell`, killed on drop.
struct RunnerProcess {
    child: std::process::Child,
}

impl RunnerProcess {
    fn start(site: &SiteDir, bundle: &std::path::Path, name: &str) -> Result<Self> {
        use std::io::BufRead as _;
        let mut child = Command::new(&site.bin)
            .current_dir(site.dir.path())
            .arg("runner")
            .arg("--bundle")
            .arg(bundle)
            .args(["--executor", "shell"])
            .arg("--work-dir")
            .arg(site.dir.path().join("work"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tinyci runner")?;
        let stdout = child.stdout.take().context("no stdout from the runner")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = format!("runner {name} of site {SITE}");
        loop {
            match rx.recv_timeout(PATIENCE) {
                Ok(line) if line.starts_with(&ready) => break,
                Ok(_) => {}
                Err(_) => bail!("the runner never said it was ready ({ready})"),
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Ok(Self { child })
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
