//! Dispatch: durable submit → lease → complete cycles per second with 1, 8 and 64 workers,
//! tinyci's queue against a PostgreSQL queue using `SELECT … FOR UPDATE SKIP LOCKED`
//! (PostgreSQL was the original tinyCI's store).
//!
//! Why the method is fair:
//! - Both sides make every step durable before going on: tinyci's queue acknowledges a
//!   submission, a lease and a completion only after the group committer's LMDB transaction
//!   is fsynced; PostgreSQL runs each step as its own autocommitted transaction with its
//!   defaults (`fsync = on`, `synchronous_commit = on`), read back from the server and printed.
//! - Both are measured as an application uses them: tinyci's queue in-process (it is an
//!   embedded engine: the site calls it directly), PostgreSQL over a loopback socket (it is a
//!   server: tinyCI called it that way), with prepared statements and one connection per
//!   worker, the fastest way a client has.
//! - Both do the same logical work: the run carries a spec of comparable size; the SQL queue
//!   has a partial index on queued rows, so taking the oldest is an index probe, not a scan.
//! - Both stores live on the same filesystem (the system temp dir), start empty, and are
//!   measured alternately in the same run, after the same warm-up, over the same interval.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tinyci_core::{LeasePolicy, Offer, PlannedRun, QueueName, RunStatus, TrustTier};
use tinyci_queue::{NewSubmission, Queue, QueueSetup};
use tinyci_store::{GroupCommitter, Store, StoreOptions};

use crate::Options;
use crate::pg::{self, Postgres};
use crate::report::{self, Better, Figure};

/// Where the PostgreSQL baseline comes from.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PostgresArgs {
    /// Install PostgreSQL from Debian's packages and start a throwaway cluster if none is given.
    #[arg(long)]
    pub(crate) install_postgres: bool,
    /// Use this PostgreSQL server for the dispatch baseline instead (a libpq-style connection
    /// string, e.g. "host=127.0.0.1 port=5432 user=postgres dbname=postgres"). Its `jobs_bench`
    /// table is dropped and recreated.
    #[arg(long, value_name = "URL", conflicts_with = "install_postgres")]
    pub(crate) postgres_url: Option<String>,
}

/// Worker counts the issue asks for.
const WORKERS: [usize; 3] = [1, 8, 64];

/// The queue every cycle uses.
const QUEUE: &str = "bench";

/// What the goals ask for at each worker count (ours over PostgreSQL).
fn goal(workers: usize) -> Option<f64> {
    match workers {
        8 => Some(5.0),
        64 => Some(15.0),
        _ => None,
    }
}

/// How long each side runs: warm-up (not counted), then the measured interval, per round.
#[derive(Debug, Clone, Copy)]
struct Timing {
    warmup: Duration,
    measure: Duration,
    rounds: usize,
}

impl Timing {
    fn new(options: &Options) -> Self {
        if options.quick {
            Timing {
                warmup: Duration::from_millis(200),
                measure: Duration::from_millis(700),
                rounds: 1,
            }
        } else {
            Timing {
                warmup: Duration::from_millis(500),
                measure: Duration::from_secs(3),
                rounds: 3,
            }
        }
    }
}

pub(crate) async fn run(options: &Options, postgres: &PostgresArgs) -> Result<Vec<Figure>> {
    println!("== dispatch: durable submit → lease → complete cycles per second");
    let timing = Timing::new(options);
    let server = match (&postgres.postgres_url, postgres.install_postgres) {
        (Some(url), _) => Some(Postgres::existing(url)),
        (None, true) => Some(
            tokio::task::spawn_blocking(Postgres::start_throwaway)
                .await
                .context("the PostgreSQL setup thread failed")??,
        ),
        (None, false) => {
            println!(
                "  PostgreSQL baseline skipped: no server given (pass --install-postgres to install \
                 and start a throwaway cluster, or --postgres-url URL to use one); baseline: None"
            );
            None
        }
    };
    let baseline = match &server {
        Some(server) => {
            println!("  PostgreSQL: {}", server.origin);
            let client = pg::connect(&server.url).await?;
            println!("  PostgreSQL settings: {}", pg::describe(&client).await?);
            Some(PgQueue::create(&server.url, client).await?)
        }
        None => None,
    };
    println!(
        "  each figure: median of {} round(s), {:?} measured after {:?} warm-up; stores in {}",
        timing.rounds,
        timing.measure,
        timing.warmup,
        std::env::temp_dir().display()
    );
    println!(
        "  disk now: one 4 KiB write + fdatasync takes {:.2} ms (median of 20)",
        report::millis(flush_probe()?)
    );
    let mut figures = Vec::new();
    for workers in WORKERS {
        let mut ours = Vec::new();
        let mut commits = Vec::new();
        let mut theirs = Vec::new();
        let mut overlapped = Vec::new();
        // Alternate, so both see the same machine conditions.
        for _ in 0..timing.rounds {
            let (rate, cycle_commits) = tinyci_cycles(workers, timing).await?;
            ours.push(rate);
            commits.push(cycle_commits);
            if let Some(baseline) = &baseline {
                theirs.push(baseline.cycles(workers, timing, false).await?);
                // Twice the connections: a server of one's own may not allow them.
                match baseline.cycles(workers, timing, true).await {
                    Ok(rate) => overlapped.push(rate),
                    Err(e) => println!(
                        "  PostgreSQL overlapped, {workers} workers: skipped ({e:#}; it needs \
                         {} connections)",
                        2 * workers + 1
                    ),
                }
            }
        }
        let ours = median(&mut ours);
        let handed_off = median(&mut commits.iter().map(|c| c.handed_off).collect::<Vec<_>>());
        let made = median(&mut commits.iter().map(|c| c.made).collect::<Vec<_>>());
        let waited = COMMITS_WAITED_AT_LEAST;
        // What the disk allows a worker that waits on each of its commits in turn.
        let flush = flush_probe()?.as_secs_f64();
        println!(
            "  {workers} worker(s): a worker sends its cycle's submission, lease and completion \
             together and waits for at least {waited:.0} commit (more when they land in \
             consecutive ones); {:.0}% of leases were made in their submission's commit; \
             {made:.2} LMDB commits per cycle site-wide; flush-bound limit \
             {workers} / ({waited:.0} × {:.3} ms) = {:.0} cycles/s",
            handed_off * 100.0,
            flush * 1e3,
            workers as f64 / (waited * flush).max(1e-9)
        );
        println!(
            "  {workers} worker(s), PostgreSQL: 3 commits waited on per cycle, one after another \
             (2 when overlapped); flush-bound limit {workers} / (3 × {:.3} ms) = {:.0} cycles/s",
            flush * 1e3,
            workers as f64 / (3.0 * flush).max(1e-9)
        );
        let baseline_rate = (!theirs.is_empty()).then(|| median(&mut theirs));
        let goal_ratio = goal(workers);
        let figure = Figure {
            name: format!("dispatch, {workers} worker(s): cycles/s"),
            unit: "cycles/s",
            ours,
            baseline: baseline_rate,
            baseline_name: "PostgreSQL SKIP LOCKED",
            better: Better::Higher,
            goal: goal_ratio.map_or_else(String::new, |g| format!("≥ {g}× PostgreSQL")),
            goal_met: match (goal_ratio, baseline_rate) {
                (Some(g), Some(b)) if b > 0.0 => Some(ours / b >= g),
                _ => None,
            },
        };
        // PostgreSQL given the same overlap of a worker's completion and next submission,
        // printed beside the goal's baseline: the overlap alone does not explain the ratio.
        let overlapped_rate = (!overlapped.is_empty()).then(|| median(&mut overlapped));
        let against_overlapped = Figure {
            name: format!("dispatch, {workers} worker(s): cycles/s, PostgreSQL overlapped"),
            unit: "cycles/s",
            ours,
            baseline: overlapped_rate,
            baseline_name: "PostgreSQL SKIP LOCKED, complete ∥ submit on two connections",
            better: Better::Higher,
            goal: String::new(),
            goal_met: None,
        };
        let pair = [figure, against_overlapped];
        report::print(&pair);
        figures.extend(pair);
    }
    if let Some(baseline) = baseline {
        baseline.drop_table().await?;
    }
    // Stopping the cluster waits on pg_ctl: off the async threads.
    if let Some(server) = server
        && server.is_throwaway()
    {
        tokio::task::spawn_blocking(move || drop(server))
            .await
            .context("the PostgreSQL shutdown thread failed")?;
    }
    Ok(figures)
}

/// What one flush costs on the temp dir's disk right now: the median of 20 in-place 4 KiB
/// writes each followed by `fdatasync`. Every durable commit waits for at least one such flush
/// (PostgreSQL: its WAL flush; LMDB: the data flush, then the `O_DSYNC` meta-page write), so
/// this is the floor under both sides' latency; printed so a run on a loaded machine explains
/// itself.
pub(crate) fn flush_probe() -> Result<Duration> {
    use std::os::unix::fs::FileExt;
    let file = tempfile::tempfile().context("failed to make a temp file for the flush probe")?;
    let block = [0u8; 4096];
    file.write_all_at(&block, 0).context("flush probe write")?;
    file.sync_all().context("flush probe sync")?;
    let mut samples = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        file.write_all_at(&block, 0).context("flush probe write")?;
        file.sync_data().context("flush probe fdatasync")?;
        samples.push(started.elapsed());
    }
    Ok(report::percentile(&mut samples, 0.5))
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(0.0)
}

/// The run every cycle submits: a spec like one `tinyci.yml` task yields.
fn planned_run() -> Result<PlannedRun> {
    Ok(PlannedRun {
        task_dir: "build".to_owned(),
        name: "test".to_owned(),
        command: vec!["sh".into(), "-c".into(), "cargo test --workspace".into()],
        image: Some("debian:bookworm".to_owned()),
        queue: QUEUE.parse::<QueueName>().context("bench queue name")?,
        timeout_secs: 3600,
        env: BTreeMap::from([("CI".to_owned(), "true".to_owned())]),
        mountpoint: "/src".to_owned(),
        workdir: "/src/build".to_owned(),
        privileged: false,
        metadata: BTreeMap::new(),
        resources: Default::default(),
        artifacts: Vec::new(),
        labels: Vec::new(),
    })
}

/// The same spec as the SQL row carries it (about the size of the encoded `PlannedRun`).
const SPEC_JSON: &str = r#"{"task_dir":"build","name":"test","command":["sh","-c","cargo test --workspace"],"image":"debian:bookworm","queue":"bench","timeout_secs":3600,"env":{"CI":"true"},"mountpoint":"/src","workdir":"/src/build","privileged":false,"metadata":{},"resources":{},"artifacts":[]}"#;

/// The fewest commits a tinyci worker waits for one after another in a cycle: its steps go
/// out together, though they may land in consecutive commits (not measured).
const COMMITS_WAITED_AT_LEAST: f64 = 1.0;

/// How a tinyci cycle's steps met the disk.
#[derive(Debug, Clone, Copy)]
struct CycleCommits {
    /// The share of leases made in their submission's own commit.
    handed_off: f64,
    /// LMDB transactions committed per cycle, all workers together: below 3, steps shared.
    made: f64,
}

/// tinyci's queue: a fresh store in a temp dir, `workers` tasks on one LocalSet thread (as
/// in the site), each a runner slot that submits a run and asks for its next run while it
/// reports the last. Returns cycles per second and how the cycles met the disk.
async fn tinyci_cycles(workers: usize, timing: Timing) -> Result<(f64, CycleCommits)> {
    // The queue is `!Send` (Rc, RefCell): it gets a thread of its own, like the site's.
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to build a runtime")?;
        tokio::task::LocalSet::new().block_on(&runtime, tinyci_cycles_local(workers, timing))
    })
    .await
    .context("the tinyci queue thread failed")?
}

async fn tinyci_cycles_local(workers: usize, timing: Timing) -> Result<(f64, CycleCommits)> {
    let dir = tempfile::Builder::new()
        .prefix("tinyci-bench-queue-")
        .tempdir()
        .context("failed to make a temp dir for the store")?;
    let store = Store::open(dir.path(), StoreOptions::default()).context("opening the store")?;
    let (committer, writer) =
        GroupCommitter::start(store.clone()).context("starting the writer")?;
    let setup = QueueSetup {
        lease: LeasePolicy::default(),
        dispatch: Default::default(),
        site: "bench".to_owned(),
    };
    let queue = Queue::open(
        store,
        committer.clone(),
        setup,
        tinyci_queue::system_clock(),
    )
    .await
    .context("opening the queue")?;
    let spec = planned_run()?;
    let done = Rc::new(Cell::new(0u64));
    let stop = Rc::new(Cell::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let queue = queue.clone();
        let spec = spec.clone();
        let done = done.clone();
        let stop = stop.clone();
        let runner = format!("bench-{worker}");
        // The run names an image, so only a runner with containers may take it.
        let container_runner = Offer {
            isolation: tinyci_core::Isolation::Container,
            processes: None,
            privileged: false,
            labels: Vec::new(),
        };
        tasks.spawn_local(async move {
            // The run this worker holds and has not yet reported.
            let mut held: Option<tinyci_queue::Leased> = None;
            while !stop.get() {
                let new = NewSubmission {
                    repo: "bench/dispatch".to_owned(),
                    git_ref: "refs/heads/main".to_owned(),
                    sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
                    title: "bench".to_owned(),
                    submitted_by: "admin:bench".to_owned(),
                    source_sha256: vec![0; 32],
                    runs: vec![spec.clone()],
                    // A retry-like submission: superseding would cancel runs other workers
                    // hold, which the SQL queue has no counterpart for.
                    branch: tinyci_queue::OnBranch::Aside,
                    tier: TrustTier::Local,
                };
                // As `tinyci runner` does, the worker asks for its next run while it reports
                // the last; `next` is polled first, so a worker with nothing queued is waiting
                // when the submission lands and is leased the run in that commit. The
                // submission stands for the submitters a real site has, concurrent with its
                // runners.
                let next = queue.next(
                    QUEUE,
                    &runner,
                    &container_runner,
                    Rc::new(|_reason: String| {}),
                );
                let report = async {
                    match held.take() {
                        Some(leased) => queue
                            .complete(
                                leased.run.id(),
                                leased.lease,
                                RunStatus::Passed,
                                Some(0),
                                String::new(),
                            )
                            .await
                            .map(drop)
                            .context("complete"),
                        None => Ok(()),
                    }
                };
                let (leased, reported, submitted) = futures::join!(next, report, queue.submit(new));
                submitted.context("submit")?;
                reported?;
                held = Some(leased.context("next")?);
                done.set(done.get() + 1);
            }
            anyhow::Ok(())
        });
    }
    let commits_before = committer.commits();
    let rate = measure(timing, || done.get(), &mut tasks).await?;
    stop.set(true);
    let cycles = done.get().max(1) as f64;
    let cycle_commits = CycleCommits {
        handed_off: queue.leased_at_submit() as f64 / cycles,
        made: committer.commits().saturating_sub(commits_before) as f64 / cycles,
    };
    // Workers parked in `next` wait for a run that will never come: stop them.
    tasks.abort_all();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(result) = joined {
            result?;
        }
    }
    drop(queue);
    drop(committer);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .context("joining the writer")?;
    Ok((rate, cycle_commits))
}

/// Waits out the warm-up, then counts cycles over the measured interval; fails early if a
/// worker does.
async fn measure<T: 'static>(
    timing: Timing,
    count: impl Fn() -> u64,
    tasks: &mut tokio::task::JoinSet<Result<T>>,
) -> Result<f64> {
    let watch = async {
        tokio::time::sleep(timing.warmup).await;
        let (start, at) = (count(), Instant::now());
        tokio::time::sleep(timing.measure).await;
        (count() - start) as f64 / at.elapsed().as_secs_f64()
    };
    tokio::select! {
        rate = watch => Ok(rate),
        Some(joined) = tasks.join_next() => match joined {
            Ok(Err(e)) => Err(e),
            Ok(Ok(_)) => anyhow::bail!("a worker stopped early"),
            Err(e) => Err(anyhow::anyhow!("a worker panicked: {e}")),
        },
    }
}

/// The PostgreSQL queue: one table, a partial index on queued rows.
#[derive(Debug)]
struct PgQueue {
    url: String,
    admin: tokio_postgres::Client,
}

const TABLE_SQL: &str = "
    DROP TABLE IF EXISTS jobs_bench;
    CREATE TABLE jobs_bench (
        id bigserial PRIMARY KEY,
        queue text NOT NULL,
        status text NOT NULL,
        runner text,
        attempt int NOT NULL DEFAULT 0,
        lease_expires timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        exit_code int,
        spec text NOT NULL
    );
    CREATE INDEX jobs_bench_queued ON jobs_bench (queue, id) WHERE status = 'queued';
";

/// Submit: one committed INSERT.
const SUBMIT_SQL: &str =
    "INSERT INTO jobs_bench (queue, status, spec) VALUES ($1, 'queued', $2) RETURNING id";

/// Lease: the classic SKIP LOCKED dequeue, one committed UPDATE.
const LEASE_SQL: &str = "
    UPDATE jobs_bench SET status = 'leased', runner = $2, attempt = attempt + 1,
                          lease_expires = now() + interval '5 minutes'
    WHERE id = (SELECT id FROM jobs_bench WHERE queue = $1 AND status = 'queued'
                ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
    RETURNING id, spec";

/// Complete: one committed UPDATE, only by the lease holder.
const COMPLETE_SQL: &str = "
    UPDATE jobs_bench SET status = 'passed', exit_code = 0, finished_at = now()
    WHERE id = $1 AND runner = $2 AND status = 'leased'";

impl PgQueue {
    async fn create(url: &str, admin: tokio_postgres::Client) -> Result<Self> {
        admin
            .batch_execute(TABLE_SQL)
            .await
            .context("creating the jobs table")?;
        Ok(Self {
            url: url.to_owned(),
            admin,
        })
    }

    async fn drop_table(&self) -> Result<()> {
        self.admin
            .batch_execute("DROP TABLE IF EXISTS jobs_bench")
            .await
            .context("dropping the jobs table")
    }

    /// `workers` connections, each looping INSERT → SKIP LOCKED UPDATE → UPDATE, every
    /// statement its own committed transaction. With `overlapped`, each worker has a second
    /// connection and completes its last job on it while it submits the next, as tinyci's
    /// workers overlap those steps; the lease still waits for the submission (no row to take
    /// before it commits). Returns cycles per second.
    async fn cycles(&self, workers: usize, timing: Timing, overlapped: bool) -> Result<f64> {
        // Start empty, like the fresh LMDB store.
        // Two calls: VACUUM refuses to run in the implicit transaction of a batch.
        self.admin
            .batch_execute("TRUNCATE jobs_bench RESTART IDENTITY")
            .await
            .context("emptying the jobs table")?;
        self.admin
            .batch_execute("VACUUM ANALYZE jobs_bench")
            .await
            .context("vacuuming the jobs table")?;
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for _ in 0..workers {
            let second = if overlapped {
                Some(pg::connect(&self.url).await?)
            } else {
                None
            };
            clients.push((pg::connect(&self.url).await?, second));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (worker, (client, second)) in clients.into_iter().enumerate() {
            let done = done.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                let submit = client.prepare(SUBMIT_SQL).await.context("prepare submit")?;
                let lease = client.prepare(LEASE_SQL).await.context("prepare lease")?;
                let reporter = second.as_ref().unwrap_or(&client);
                let complete = reporter
                    .prepare(COMPLETE_SQL)
                    .await
                    .context("prepare complete")?;
                let runner = format!("bench-{worker}");
                let mut empty_polls = 0u64;
                let mut held: Option<i64> = None;
                while !stop.load(Ordering::Relaxed) {
                    let report = async {
                        if let Some(id) = held.take() {
                            let changed = reporter
                                .execute(&complete, &[&id, &runner])
                                .await
                                .context("complete")?;
                            anyhow::ensure!(changed == 1, "job {id} was not ours to complete");
                        }
                        anyhow::Ok(())
                    };
                    let submitted = async {
                        client
                            .query_one(&submit, &[&QUEUE, &SPEC_JSON])
                            .await
                            .context("submit")
                    };
                    if second.is_some() {
                        let (reported, submitted) = futures::join!(report, submitted);
                        reported?;
                        submitted?;
                    } else {
                        report.await?;
                        submitted.await?;
                    }
                    // Every worker submits before it takes, so a queued row exists; another
                    // worker may hold its lock for a moment, and SKIP LOCKED then finds
                    // nothing: ask again, as a polling worker does.
                    let id: i64 = loop {
                        if let Some(row) = client
                            .query_opt(&lease, &[&QUEUE, &runner])
                            .await
                            .context("lease")?
                        {
                            break row.try_get(0)?;
                        }
                        empty_polls += 1;
                        if stop.load(Ordering::Relaxed) {
                            return anyhow::Ok(empty_polls);
                        }
                        tokio::task::yield_now().await;
                    };
                    held = Some(id);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(empty_polls)
            });
        }
        let rate = measure(timing, || done.load(Ordering::Relaxed), &mut tasks).await?;
        stop.store(true, Ordering::Relaxed);
        let mut empty_polls = 0;
        while let Some(joined) = tasks.join_next().await {
            empty_polls += joined.context("a PostgreSQL worker panicked")??;
        }
        if empty_polls > 0 {
            println!(
                "    (PostgreSQL, {workers} workers: {empty_polls} lease polls found every row locked)"
            );
        }
        Ok(rate)
    }
}
