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
//! cannot avoid.
//!
//! Docker: the same, with a runner started `--executor docker --pull never` and the run naming
//! a busybox image imported locally (`docker import`; no registry), against
//! `docker run --rm --network bridge IMAGE sh -c true` through the Docker CLI, one after each
//! job; both containers are on the bridge network. Skipped, saying why, where no Docker Engine
//! or `/bin/busybox` is available.

use std::cell::RefCell;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
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
    let mut bundles = site_dir.issue_runners(2, "default")?.into_iter();
    let (Some(shell_bundle), Some(docker_bundle)) = (bundles.next(), bundles.next()) else {
        bail!("expected two runner bundles");
    };
    let client = Client {
        addr: site.addr,
        tls: site_dir.admin_client_tls()?,
        token: std::fs::read_to_string(site_dir.config()?.admin_token)
            .context("reading the admin token")?
            .trim()
            .to_owned(),
    };

    let shell = RunnerProcess::start(&site_dir, site.addr, shell_bundle, &["--executor", "shell"])?;
    let mut finished: Vec<Duration> = client
        .jobs(&source("true", None)?, samples)
        .await?
        .into_iter()
        .map(|t| t.finished)
        .collect();
    let mut first_byte = client
        .jobs(&source("echo x", None)?, samples)
        .await?
        .into_iter()
        .map(|t| t.first_byte.context("the job printed nothing"))
        .collect::<Result<Vec<_>>>()?;
    drop(shell);
    let mut bare = timed(samples, || run_ok(Command::new("sh").args(["-c", "true"])))?;

    let ours_p50 = report::millis(report::percentile(&mut finished, 0.5));
    let ours_p99 = report::millis(report::percentile(&mut finished, 0.99));
    let bare_p50 = report::millis(report::percentile(&mut bare, 0.5));
    let bare_p99 = report::millis(report::percentile(&mut bare, 0.99));
    let added = ours_p50 - bare_p50;
    println!(
        "  {samples} shell jobs: submit → finished p50 {ours_p50:.2} ms, p99 {ours_p99:.2} ms; \
         bare sh -c true p50 {bare_p50:.2} ms, p99 {bare_p99:.2} ms; tinyci adds {added:.2} ms at p50"
    );
    let first_p50 = report::millis(report::percentile(&mut first_byte, 0.5));
    let first_p99 = report::millis(report::percentile(&mut first_byte, 0.99));
    println!(
        "  submit → first log byte at a follower: p50 {first_p50:.2} ms, p99 {first_p99:.2} ms"
    );
    let mut figures = vec![
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
    ];

    match import_busybox() {
        Err(why) => println!("  SKIP the Docker figures: {why}"),
        Ok(()) => {
            let docker_samples = if options.quick { 5 } else { 40 };
            let docker = RunnerProcess::start(
                &site_dir,
                site.addr,
                docker_bundle,
                &["--executor", "docker", "--pull", "never"],
            )?;
            // The daemon's speed drifts over a run (its own cleanup, the page cache): each
            // tinyci job is followed by one bare `docker run`, so both see the same daemon.
            // The bench's runs are the site's own (local tier), which the default trust policy
            // lets reach the network: the job's container is on Docker's bridge network, and
            // so is the baseline's (`docker run`'s default). Setting up and tearing down that
            // network costs the daemon about 60 ms here, so the two must match.
            let bare_run = || {
                let started = Instant::now();
                run_ok(Command::new("docker").args([
                    "run",
                    "--rm",
                    "--network",
                    "bridge",
                    IMAGE,
                    "sh",
                    "-c",
                    "true",
                ]))?;
                Ok(started.elapsed())
            };
            let (timings, mut bare) = client
                .jobs_alternating(&source("true", Some(IMAGE))?, docker_samples, bare_run)
                .await?;
            let mut ours: Vec<Duration> = timings.into_iter().map(|t| t.finished).collect();
            drop(docker);
            let ours_p50 = report::millis(report::percentile(&mut ours, 0.5));
            let bare_p50 = report::millis(report::percentile(&mut bare, 0.5));
            let added = ours_p50 / bare_p50 - 1.0;
            println!(
                "  {docker_samples} docker jobs: submit → finished p50 {ours_p50:.1} ms; \
                 docker run --rm p50 {bare_p50:.1} ms; tinyci adds {:.1}%",
                100.0 * added
            );
            figures.push(
                Figure::new(
                    "overhead, docker: submit → finished p50",
                    "ms",
                    Better::Lower,
                    ours_p50,
                    Some((bare_p50, "docker run --rm, bridge network")),
                )
                .with_goal("adds ≤ 10%", Some(added <= 0.10)),
            );
        }
    }
    Ok(figures)
}

/// The image the Docker figures run: busybox, imported locally.
const IMAGE: &str = "tinyci-bench/busybox:1";

/// `docker import`s a root filesystem of Debian's static busybox as [`IMAGE`].
fn import_busybox() -> Result<(), String> {
    let busybox = std::fs::read("/bin/busybox")
        .map_err(|e| format!("/bin/busybox: {e} (Debian: apt-get install busybox-static)"))?;
    let rootfs = (|| -> std::io::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(busybox.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        tar.append_data(&mut header, "bin/busybox", busybox.as_slice())?;
        for applet in ["sh", "true", "echo"] {
            let mut link = tar::Header::new_gnu();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            link.set_mode(0o777);
            tar.append_link(&mut link, format!("bin/{applet}"), "busybox")?;
        }
        for dir in ["tmp", "src"] {
            let mut d = tar::Header::new_gnu();
            d.set_entry_type(tar::EntryType::Directory);
            d.set_size(0);
            d.set_mode(0o1777);
            tar.append_data(&mut d, dir, std::io::empty())?;
        }
        tar.into_inner()
    })()
    .map_err(|e| format!("building the busybox image: {e}"))?;
    use std::io::Write as _;
    let mut import = Command::new("docker")
        .args(["import", "-", IMAGE])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running docker import: {e}"))?;
    if let Some(mut stdin) = import.stdin.take() {
        stdin
            .write_all(&rootfs)
            .map_err(|e| format!("feeding docker import: {e}"))?;
    }
    let out = import
        .wait_with_output()
        .map_err(|e| format!("running docker import: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker import failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Runs `command` to success, quietly.
fn run_ok(command: &mut Command) -> Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// How long each of `samples` calls of `f` took.
fn timed(samples: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<Duration>> {
    (0..samples)
        .map(|_| {
            let started = Instant::now();
            f()?;
            Ok(started.elapsed())
        })
        .collect()
}

/// The admin client the jobs are submitted with.
struct Client {
    addr: std::net::SocketAddr,
    tls: std::sync::Arc<tinyci_net::ClientConfig>,
    token: String,
}

impl Client {
    /// Runs `samples` jobs of `source` one at a time, after 3 untimed ones; their timings.
    async fn jobs(&self, source: &[u8], samples: usize) -> Result<Vec<Timing>> {
        let (timings, _) = self
            .jobs_alternating(source, samples, || Ok(Duration::ZERO))
            .await?;
        Ok(timings)
    }

    /// Runs `samples` jobs of `source` one at a time, after 3 untimed ones, with `baseline`
    /// run after each (warm-ups included); the jobs' timings and the baseline's.
    async fn jobs_alternating(
        &self,
        source: &[u8],
        samples: usize,
        mut baseline: impl FnMut() -> Result<Duration> + Send + 'static,
    ) -> Result<(Vec<Timing>, Vec<Duration>)> {
        let (addr, tls, token, source) = (
            self.addr,
            self.tls.clone(),
            self.token.clone(),
            source.to_vec(),
        );
        fixture::on_thread("overhead client", move || async move {
            let (admin, _connection) = fixture::admin_session(addr, tls, &token).await?;
            let mut request = admin.logs_request();
            request.get().set_repo("*");
            let reader = request.send().pipeline.get_reader();
            for _ in 0..3 {
                one_job(&admin, &reader, &source).await?;
                baseline()?;
            }
            let mut timings = Vec::with_capacity(samples);
            let mut baselines = Vec::with_capacity(samples);
            for _ in 0..samples {
                timings.push(one_job(&admin, &reader, &source).await?);
                // Blocking this thread is fine: the session has nothing to do meanwhile.
                baselines.push(baseline()?);
            }
            anyhow::Ok((timings, baselines))
        })
        .await
    }
}

/// A source archive whose one run's command is `sh -c line`, in `image` if given.
fn source(line: &str, image: Option<&str>) -> Result<Vec<u8>> {
    let image = image
        .map(|i| format!("default_image: {i}\n"))
        .unwrap_or_default();
    fixture::source_with_task(&format!(
        "mountpoint: /src\n{image}runs:\n  job:\n    command: [\"sh\", \"-c\", {line:?}]\n"
    ))
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
    let run = fixture::submit_source(&submitter, source).await?;
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

/// A `tinyci runner` process, killed on drop.
struct RunnerProcess {
    child: std::process::Child,
}

impl RunnerProcess {
    /// `tinyci runner --bundle FILE args…` for `bundle`, told to dial `addr`; waits until
    /// it is connected.
    fn start(
        site: &SiteDir,
        addr: std::net::SocketAddr,
        mut bundle: tinyci_site::bundle::RunnerBundle,
        args: &[&str],
    ) -> Result<Self> {
        use std::io::BufRead as _;
        bundle.addresses = vec![addr.to_string()];
        let path = site.dir.path().join(format!("{}.bundle", bundle.runner));
        bundle.write(&path)?;
        let name = bundle.runner.clone();
        let mut child = Command::new(&site.bin)
            .current_dir(site.dir.path())
            .arg("runner")
            .arg("--bundle")
            .arg(&path)
            .args(args)
            .arg("--work-dir")
            .arg(site.dir.path().join(format!("work-{name}")))
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
