//! Figure 8: history does not slow the site. The front page, a run page and `admin runs`
//! (unfiltered, on a rare repository, and on a status within a repository) timed on a real
//! `tinyci site up` holding 1,000, 100,000 and 1,000,000 finished runs; each figure at the
//! largest history against the same figure at the smallest, measured in the same run.
//!
//! The history is written straight into the site's store before it starts
//! (`tinyci_queue::import_history`: the same records and indexes the queue writes, without a
//! commit per run): ten runs per submission; 5 runs on `org/rare` and 100 failed runs on
//! `org/x`, spread evenly through the history whatever its length, so each filtered listing
//! returns the same runs at every size and only the history grows; the rest passed on `org/x`
//! (readable anonymously, so the pages need no login). Each page is fetched on a fresh connection, as a browser's first visit; each
//! listing is an `Admin.runs` call on one admin session.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tinyci_core::{
    LeasePolicy, PlannedRun, QueueName, Run, RunEvent, RunId, RunStatus, SubmissionId, Transition,
    TrustTier,
};
use tinyci_queue::{StoredRun, StoredSubmission};

use crate::Options;
use crate::abuse::{http_exchange, status_code};
use crate::fixture;
use crate::report::{self, Better, Figure};
use crate::site_process::{SiteDir, tinyci_binary};

/// Runs per submission.
const RUNS_PER_SUBMISSION: u64 = 10;
/// Submissions written per transaction.
const SUBMISSIONS_PER_BATCH: u64 = 1_000;
/// Runs on the rare repository, and failed runs, in every history.
const RARE_RUNS: u64 = 5;
const FAILED_RUNS: u64 = 100;
/// Timed requests per figure (after as many untimed).
const SAMPLES: usize = 40;

/// What is timed, in the order printed.
const FIGURES: [&str; 5] = [
    "front page",
    "run page",
    "admin runs",
    "admin runs --repo (rare)",
    "admin runs --repo --status failed",
];

pub(crate) async fn run(options: &Options) -> Result<Vec<Figure>> {
    println!("== history: the site's pages and listings as its history grows");
    let sizes: &[u64] = if options.quick {
        &[1_000, 20_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    };
    let bin = tinyci_binary()?;
    let mut measured: Vec<(u64, Vec<Duration>)> = Vec::new();
    for &runs in sizes {
        let site_dir = SiteDir::init(bin.clone())?;
        let toml = site_dir.config_path();
        let text = std::fs::read_to_string(&toml).context("reading site.toml")?;
        std::fs::write(
            &toml,
            format!(
                "{text}\n[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\n\
                 public_repos = [\"org/x\"]\n"
            ),
        )
        .context("writing site.toml")?;
        let started = Instant::now();
        store_history(&site_dir, runs)?;
        println!(
            "  {runs} runs stored in {:.1} s; starting the site",
            started.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        let site = site_dir.start_with_http()?;
        println!("  site up in {:.2} s", started.elapsed().as_secs_f64());
        let http = site.http_addr.context("the site has no HTTP listener")?;
        let mut p50s = Vec::new();
        p50s.push(page(http, "/").await?);
        // A run from the middle of the history.
        p50s.push(page(http, &format!("/runs/r-{}", middle_run(runs))).await?);
        let token = std::fs::read_to_string(site_dir.config()?.admin_token)
            .context("reading the admin token")?
            .trim()
            .to_owned();
        let listings = listings(site.addr, site_dir.admin_client_tls()?, token).await?;
        p50s.extend(listings);
        for (name, p50) in FIGURES.iter().zip(&p50s) {
            println!("  {runs} runs: {name}: p50 {:.2} ms", report::millis(*p50));
        }
        measured.push((runs, p50s));
        drop(site);
    }
    let (Some((small, base)), Some((large, top))) = (measured.first(), measured.last()) else {
        bail!("no history was measured");
    };
    let figures: Vec<Figure> = FIGURES
        .iter()
        .zip(base.iter().zip(top))
        .map(|(name, (base, top))| {
            let (ours, baseline) = (report::millis(*top), report::millis(*base));
            Figure::new(
                format!("history: {name} at {large} runs, p50"),
                "ms",
                Better::Lower,
                ours,
                Some((baseline, "the same at the smallest history")),
            )
            .with_goal(
                format!("≤ 2× the {small}-run figure"),
                Some(ours <= 2.0 * baseline),
            )
        })
        .collect();
    report::print(&figures);
    Ok(figures)
}

/// The id of a run halfway through a history of `runs` runs: the second of its submission
/// (ids go submission, then its runs), never one of the rare repository's, which the anonymous
/// page may not show.
fn middle_run(runs: u64) -> u64 {
    let submission = runs / RUNS_PER_SUBMISSION / 2;
    submission * (RUNS_PER_SUBMISSION + 1) + 3
}

/// Writes `runs` finished runs into the site's store, as the queue stores them.
fn store_history(site_dir: &SiteDir, runs: u64) -> Result<()> {
    let config = site_dir.config()?;
    let store = tinyci_site::open_store_for_tool(&config).context("opening the site store")?;
    let spec = PlannedRun {
        task_dir: "build".to_owned(),
        name: "test".to_owned(),
        command: vec!["sh".into(), "-c".into(), "make test".into()],
        image: None,
        queue: "default".parse::<QueueName>().context("queue name")?,
        timeout_secs: 600,
        env: Default::default(),
        mountpoint: "/src".to_owned(),
        workdir: "/src/build".to_owned(),
        privileged: false,
        metadata: Default::default(),
        resources: Default::default(),
        artifacts: Vec::new(),
        labels: Vec::new(),
    };
    let policy = LeasePolicy::default();
    let now = 1_760_000_000_000u64;
    let submissions = runs / RUNS_PER_SUBMISSION;
    let mut next_id = 1u64;
    let mut made = 0u64;
    // The how-many-th run this is, 0-based.
    let mut nth = 0u64;
    let (rare_every, failed_every) = ((runs / RARE_RUNS).max(1), (runs / FAILED_RUNS).max(1));
    while made < submissions {
        let batch = SUBMISSIONS_PER_BATCH.min(submissions - made);
        let mut written = Vec::with_capacity(batch as usize);
        for _ in 0..batch {
            let submission = SubmissionId(next_id);
            let ids: Vec<RunId> = (1..=RUNS_PER_SUBMISSION)
                .map(|i| RunId(next_id + i))
                .collect();
            next_id += RUNS_PER_SUBMISSION + 1;
            let mut stored = Vec::with_capacity(ids.len());
            for id in &ids {
                let rare = nth % rare_every == rare_every / 2;
                let failed = !rare && nth % failed_every == failed_every / 3;
                nth += 1;
                let repo = if rare { "org/rare" } else { "org/x" };
                let status = if failed {
                    RunStatus::Failed
                } else {
                    RunStatus::Passed
                };
                stored.push(StoredRun {
                    state: finished(*id, &policy, now, status)?,
                    submission,
                    repo: repo.to_owned(),
                    git_ref: "refs/heads/main".to_owned(),
                    sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
                    spec: spec.clone(),
                    runner: Some("runner-0".to_owned()),
                    started_at: Some(now),
                    message: None,
                });
            }
            written.push((
                StoredSubmission {
                    id: submission,
                    repo: "org/x".to_owned(),
                    git_ref: "refs/heads/main".to_owned(),
                    sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
                    title: "history".to_owned(),
                    submitted_by: "admin:admin".to_owned(),
                    created_at: now,
                    source_sha256: vec![0; 32],
                    runs: ids,
                    tier: TrustTier::Local,
                },
                stored,
            ));
        }
        tinyci_queue::import_history(&store, &written).context("storing the history")?;
        made += batch;
        if made.is_multiple_of(20_000) {
            println!("  … {} runs stored", made * RUNS_PER_SUBMISSION);
        }
    }
    Ok(())
}

/// A run that was leased, started and finished with `status`.
fn finished(id: RunId, policy: &LeasePolicy, now: u64, status: RunStatus) -> Result<Run> {
    let mut run = Run::new(id, policy, now);
    let lease = match run.apply(
        RunEvent::Lease {
            runner: "runner-0".to_owned(),
            expires_at: policy.expiry(now),
        },
        now,
    )? {
        Transition::Leased(lease) => lease.id,
        other => bail!("leasing a new run did {other:?}"),
    };
    run.apply(RunEvent::Start { lease }, now)?;
    run.apply(
        RunEvent::Complete {
            lease,
            status,
            exit_code: Some(i32::from(status != RunStatus::Passed)),
        },
        now + 1000,
    )?;
    Ok(run)
}

/// The p50 of fetching `path` on a fresh connection (after as many untimed fetches).
async fn page(http: SocketAddr, path: &str) -> Result<Duration> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    let mut samples = Vec::with_capacity(SAMPLES);
    for round in 0..2 * SAMPLES {
        let started = Instant::now();
        let answer = http_exchange(http, request.as_bytes())
            .await
            .with_context(|| format!("GET {path}"))?;
        let took = started.elapsed();
        match status_code(&answer) {
            Some(200) => {}
            other => bail!("GET {path} answered {other:?}"),
        }
        if round >= SAMPLES {
            samples.push(took);
        }
    }
    Ok(report::percentile(&mut samples, 0.5))
}

/// The p50s of the three `Admin.runs` listings, on one admin session.
async fn listings(
    addr: SocketAddr,
    tls: std::sync::Arc<tinyci_net::ClientConfig>,
    token: String,
) -> Result<Vec<Duration>> {
    fixture::on_thread("history admin", move || async move {
        let (admin, _connection) = fixture::admin_session(addr, tls, &token).await?;
        let mut p50s = Vec::new();
        for (repo, status) in [("", ""), ("org/rare", ""), ("org/x", "failed")] {
            let mut samples = Vec::with_capacity(SAMPLES);
            for round in 0..2 * SAMPLES {
                let started = Instant::now();
                let mut request = admin.runs_request();
                {
                    let mut filter = request.get().init_filter();
                    filter.set_repo(repo);
                    filter.set_status(status);
                    filter.set_limit(100);
                }
                let reply = request.send().promise.await.context("Admin.runs")?;
                let listed = reply.get()?.get_runs()?.len();
                let took = started.elapsed();
                if listed == 0 {
                    bail!("Admin.runs with repo {repo:?}, status {status:?} listed nothing");
                }
                if round >= SAMPLES {
                    samples.push(took);
                }
            }
            p50s.push(report::percentile(&mut samples, 0.5));
        }
        anyhow::Ok(p50s)
    })
    .await
}
