//! Retention: a background sweeper that deletes the logs and artifacts of finished runs once
//! they are older than `[retention]` allows, and the oldest ones first while the total is over
//! its cap. Runs themselves (status, exit code) are kept: only their bulky output goes.
//!
//! Unfinished runs are never touched. A blob is deleted only when no artifact row names it and
//! no upload is putting it in place (`tinyci_assets::ArtifactStore::collect_blobs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tinyci_core::RunId;
use tinyci_store::StoreError;
use tracing::{info, warn};

use crate::RunHandles;
pub use tinyci_config::RetentionPolicy;

/// Runs a sweep holds final at once while their output goes: a retry asked for one of them
/// waits for its share of the sweep, not for all of it.
const RUNS_HELD_AT_ONCE: usize = 256;

/// What one sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SweepReport {
    pub(crate) logs_removed: usize,
    pub(crate) artifacts_removed: usize,
    pub(crate) blobs_removed: usize,
    pub(crate) bytes_freed: u64,
    /// Uploaded source archives no submission named, past their time.
    pub(crate) sources_removed: usize,
}

/// Why a sweep stopped; the next one tries again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SweepError {
    #[error("cannot sweep logs")]
    Logs(#[from] tinyci_logs::LogError),
    #[error("cannot sweep artifacts or deliveries")]
    Store(#[from] StoreError),
    #[error("cannot read runs or source archives from the queue")]
    Queue(#[from] tinyci_queue::QueueError),
    #[error("cannot sweep unsubmitted source archives")]
    Sources(#[source] std::io::Error),
}

/// Removes uploaded archives no submission names once they are
/// [`tinyci_assets::UNSUBMITTED_UPLOAD_TTL`] old by the site's clock.
async fn remove_unsubmitted_sources(runs: &RunHandles, now_ms: u64) -> Result<usize, SweepError> {
    let keep = runs.queue.source_archives()?;
    let cutoff = tinyci_core::system_time(now_ms)
        .checked_sub(tinyci_assets::UNSUBMITTED_UPLOAD_TTL)
        .unwrap_or(std::time::UNIX_EPOCH);
    let sources = runs.sources.clone();
    let (count, _) =
        tokio::task::spawn_blocking(move || sources.remove_unreferenced(&keep, cutoff))
            .await
            .map_err(|e| SweepError::Sources(std::io::Error::other(e)))?
            .map_err(SweepError::Sources)?;
    Ok(count)
}

/// The output one run holds: `(stored items, bytes)` of its log and of its artifacts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunOutput {
    pub(crate) log: (u64, u64),
    pub(crate) artifacts: (u64, u64),
}

/// What a sweep deletes: whole logs and all artifacts of the runs named.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SweepPlan {
    pub(crate) logs: Vec<u64>,
    pub(crate) artifacts: Vec<u64>,
    pub(crate) report: SweepReport,
}

impl SweepPlan {
    /// A plan to remove `logs` and `artifacts`, with what that frees counted from `outputs`.
    fn new(outputs: &BTreeMap<u64, RunOutput>, logs: Vec<u64>, artifacts: Vec<u64>) -> Self {
        let mut report = SweepReport::default();
        for output in logs.iter().filter_map(|r| outputs.get(r)) {
            report.logs_removed += 1;
            report.bytes_freed += output.log.1;
        }
        for output in artifacts.iter().filter_map(|r| outputs.get(r)) {
            report.artifacts_removed += usize::try_from(output.artifacts.0).unwrap_or(usize::MAX);
            report.bytes_freed += output.artifacts.1;
        }
        SweepPlan {
            logs,
            artifacts,
            report,
        }
    }

    /// The plan cut down to the runs `keep` picks, its report counted again.
    fn only(self, outputs: &BTreeMap<u64, RunOutput>, keep: impl Fn(u64) -> bool) -> SweepPlan {
        let logs = self.logs.into_iter().filter(|r| keep(*r)).collect();
        let artifacts = self.artifacts.into_iter().filter(|r| keep(*r)).collect();
        SweepPlan::new(outputs, logs, artifacts)
    }

    /// The plan in shares of at most `size` runs, taken in the order `order` keys them
    /// (oldest output first): each share's runs and its part of the plan.
    fn shares(
        self,
        outputs: &BTreeMap<u64, RunOutput>,
        size: usize,
        order: impl Fn(u64) -> u64,
    ) -> Vec<Share> {
        let size = size.max(1);
        let mut runs: Vec<u64> = self
            .logs
            .iter()
            .chain(&self.artifacts)
            .copied()
            .collect::<HashSet<u64>>()
            .into_iter()
            .collect();
        runs.sort_unstable_by_key(|&run| (order(run), run));
        let share_of: HashMap<u64, usize> = runs
            .iter()
            .enumerate()
            .map(|(i, &run)| (run, i / size))
            .collect();
        let mut parts = vec![(Vec::new(), Vec::new()); runs.len().div_ceil(size)];
        for run in self.logs {
            if let Some(part) = share_of.get(&run).and_then(|&i| parts.get_mut(i)) {
                part.0.push(run);
            }
        }
        for run in self.artifacts {
            if let Some(part) = share_of.get(&run).and_then(|&i| parts.get_mut(i)) {
                part.1.push(run);
            }
        }
        runs.chunks(size)
            .zip(parts)
            .map(|(runs, (logs, artifacts))| Share {
                runs: runs.to_vec(),
                plan: SweepPlan::new(outputs, logs, artifacts),
            })
            .collect()
    }
}

/// Runs a sweep holds final together, and their part of its plan.
#[derive(Debug, PartialEq, Eq)]
struct Share {
    runs: Vec<u64>,
    plan: SweepPlan,
}

/// Runs [`sweep`] now and then every `policy.every` until `stop` is cancelled. A sweep in
/// progress is finished first (its store reads run on a blocking thread that holds the store
/// open, so abandoning it would leave the store locked after shutdown). `sweeps` counts
/// finished sweeps, for operators and tests.
pub(crate) async fn run_sweeper(
    runs: RunHandles,
    github: Option<std::rc::Rc<tinyci_github::GitHubService>>,
    policy: RetentionPolicy,
    sweeps: tokio::sync::watch::Sender<u64>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match sweep(&runs, github.as_deref(), &policy, runs.now_ms()).await {
            Ok(report) if report != SweepReport::default() => info!(
                logs = report.logs_removed,
                artifacts = report.artifacts_removed,
                blobs = report.blobs_removed,
                sources = report.sources_removed,
                bytes = report.bytes_freed,
                "retention sweep removed old output"
            ),
            Ok(_) => {}
            Err(e) => warn!(
                error = %crate::rpc::chain(&e),
                "retention sweep failed; retrying at the next one"
            ),
        }
        sweeps.send_modify(|n| *n += 1);
        tokio::select! {
            () = tokio::time::sleep(policy.every) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Decides what goes at `now_ms`: for each finished run (`(finished_at, run)`, oldest
/// first) its log and its artifacts when older than the policy allows, or while everything
/// together is over the cap.
pub(crate) fn plan(
    outputs: &BTreeMap<u64, RunOutput>,
    finished: &[(u64, u64)],
    policy: &RetentionPolicy,
    now_ms: u64,
) -> SweepPlan {
    let older_than = |age: Option<Duration>, finished_at: u64| {
        age.is_some_and(|age| {
            let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            finished_at.saturating_add(age) <= now_ms
        })
    };
    let mut total: u64 = outputs.values().map(|o| o.log.1 + o.artifacts.1).sum();
    let (mut logs, mut artifacts) = (Vec::new(), Vec::new());
    for &(finished_at, run) in finished {
        let Some(output) = outputs.get(&run) else {
            continue;
        };
        let over_cap = policy.max_total_bytes.is_some_and(|cap| total > cap);
        if output.log.0 > 0 && (over_cap || older_than(policy.logs_max_age, finished_at)) {
            logs.push(run);
            total -= output.log.1;
        }
        let over_cap = policy.max_total_bytes.is_some_and(|cap| total > cap);
        if output.artifacts.0 > 0 && (over_cap || older_than(policy.artifacts_max_age, finished_at))
        {
            artifacts.push(run);
            total -= output.artifacts.1;
        }
    }
    SweepPlan::new(outputs, logs, artifacts)
}

/// What each repository's runs store, as the sweep listed it: the exact count the storage
/// quota restarts from (what is written meanwhile is counted from the next write on, so a
/// sweep may forget a few writes, never invent any).
fn per_repo(
    outputs: &BTreeMap<u64, RunOutput>,
    repo_of: &HashMap<u64, String>,
) -> HashMap<String, u64> {
    let mut used: HashMap<String, u64> = HashMap::new();
    for (run, output) in outputs {
        if let Some(repo) = repo_of.get(run) {
            *used.entry(repo.clone()).or_default() += output.log.1 + output.artifacts.1;
        }
    }
    used
}

/// Takes what `removed` runs stored (`bytes` of each's output) off their repositories' counts.
fn forget(
    storage: &tinyci_core::RepoStorage,
    outputs: &BTreeMap<u64, RunOutput>,
    repo_of: &HashMap<u64, String>,
    removed: &[u64],
    bytes: impl Fn(&RunOutput) -> u64,
) {
    for run in removed {
        if let (Some(repo), Some(output)) = (repo_of.get(run), outputs.get(run)) {
            storage.remove(repo, bytes(output));
        }
    }
}

/// One sweep at time `now_ms`: run output from `runs`' stores, and GitHub's old delivery ids.
pub(crate) async fn sweep(
    runs: &RunHandles,
    github: Option<&tinyci_github::GitHubService>,
    policy: &RetentionPolicy,
    now_ms: u64,
) -> Result<SweepReport, SweepError> {
    let mut outputs: BTreeMap<u64, RunOutput> = BTreeMap::new();
    for (run, usage) in runs.logs.usage().await? {
        // A log is one stored item: its file.
        outputs.entry(run).or_default().log = (1, usage.bytes);
    }
    for (run, usage) in runs.artifacts.usage().await? {
        outputs.entry(run).or_default().artifacts = usage;
    }
    // Finished runs with output, oldest first; and whose each run is.
    let mut finished: Vec<(u64, u64)> = Vec::new();
    let mut repo_of: HashMap<u64, String> = HashMap::new();
    for run in outputs.keys() {
        let stored = runs.queue.run(RunId(*run)).ok().flatten();
        if let Some(outcome) = stored.as_ref().and_then(|r| r.state.outcome()) {
            finished.push((outcome.finished_at, *run));
        }
        if let Some(stored) = stored {
            repo_of.insert(*run, stored.repo);
        }
    }
    finished.sort_unstable();
    let planned = plan(&outputs, &finished, policy, now_ms);
    let storage = runs.queue.storage();
    // Exact now, before anything goes; what each share removes is taken off as it goes, so
    // a share that fails leaves the count true.
    storage.replace(per_repo(&outputs, &repo_of));
    // Held final until their output is gone, a share at a time (oldest first): a retry keeps
    // the run's id, so one that began since the listing would otherwise lose its new
    // attempt's log and artifacts, and one asked for now waits for its share only. A run
    // retried meanwhile (finished again or not) keeps its output until a later sweep judges it.
    let finished_at: HashMap<u64, u64> = finished.iter().map(|&(at, run)| (run, at)).collect();
    let when = |run| finished_at.get(&run).copied().unwrap_or(u64::MAX);
    let mut report = SweepReport::default();
    for share in planned.shares(&outputs, RUNS_HELD_AT_ONCE, when) {
        let held = runs
            .queue
            .hold_final(share.runs.iter().map(|&run| (RunId(run), when(run))))
            .await?;
        let part = share.plan.only(&outputs, |run| held.contains(RunId(run)));
        runs.logs.remove(part.logs.clone()).await?;
        forget(storage, &outputs, &repo_of, &part.logs, |o| o.log.1);
        runs.artifacts.remove_runs(part.artifacts.clone()).await?;
        forget(storage, &outputs, &repo_of, &part.artifacts, |o| {
            o.artifacts.1
        });
        drop(held);
        report.logs_removed += part.report.logs_removed;
        report.artifacts_removed += part.report.artifacts_removed;
        report.bytes_freed += part.report.bytes_freed;
    }
    report.blobs_removed = runs.artifacts.collect_blobs()?;
    report.sources_removed = remove_unsubmitted_sources(runs, now_ms).await?;
    if let Some(github) = github {
        github.forget_old_deliveries(now_ms).await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600 * 1000;

    fn policy(max_total_bytes: Option<u64>) -> RetentionPolicy {
        RetentionPolicy {
            logs_max_age: Some(Duration::from_millis(2 * DAY)),
            artifacts_max_age: Some(Duration::from_millis(10 * DAY)),
            max_total_bytes,
            max_repo_bytes: None,
            every: Duration::from_secs(3600),
        }
    }

    fn outputs() -> BTreeMap<u64, RunOutput> {
        [
            (
                1,
                RunOutput {
                    log: (3, 100),
                    artifacts: (2, 1000),
                },
            ),
            (
                2,
                RunOutput {
                    log: (1, 50),
                    artifacts: (0, 0),
                },
            ),
            (
                3,
                RunOutput {
                    log: (1, 10),
                    artifacts: (1, 10),
                },
            ),
        ]
        .into()
    }

    #[test]
    fn age_limits_apply_per_kind_of_output() {
        // Run 1 finished 5 days ago, run 2 one day ago, run 3 is not finished.
        let now = 20 * DAY;
        let finished = [(15 * DAY, 1), (19 * DAY, 2)];
        let plan = plan(&outputs(), &finished, &policy(None), now);
        assert_eq!(plan.logs, vec![1]);
        assert!(plan.artifacts.is_empty(), "artifacts live ten days");
        assert_eq!(plan.report.bytes_freed, 100);
        assert_eq!(plan.report.logs_removed, 1);
    }

    #[test]
    fn over_the_cap_the_oldest_finished_output_goes_first_and_unfinished_never() {
        let now = DAY;
        let finished = [(0, 1), (1, 2)];
        // 1170 bytes in all; a cap of 50 takes run 1's log, then its artifacts, then run 2's
        // log, and never run 3's (unfinished).
        let plan = plan(&outputs(), &finished, &policy(Some(50)), now);
        assert_eq!(plan.logs, vec![1, 2]);
        assert_eq!(plan.artifacts, vec![1]);
        assert_eq!(plan.report.artifacts_removed, 2);
        assert_eq!(plan.report.bytes_freed, 1150);
        // A cap already met removes nothing.
        let plan = super::plan(&outputs(), &finished, &policy(Some(10_000)), now);
        assert_eq!(plan, SweepPlan::default());
    }

    #[test]
    fn a_plan_cut_to_the_runs_still_final_counts_only_what_goes() {
        let now = DAY;
        let finished = [(0, 1), (1, 2)];
        let whole = plan(&outputs(), &finished, &policy(Some(50)), now);
        // Run 1 was retried meanwhile: only run 2's log goes.
        let cut = whole.only(&outputs(), |run| run != 1);
        assert_eq!(cut.logs, vec![2]);
        assert!(cut.artifacts.is_empty());
        assert_eq!(
            cut.report,
            SweepReport {
                logs_removed: 1,
                bytes_freed: 50,
                ..SweepReport::default()
            }
        );
        // Nothing cut: the same report as the plan's own.
        let again = plan(&outputs(), &finished, &policy(Some(50)), now);
        let report = again.report.clone();
        assert_eq!(again.only(&outputs(), |_| true).report, report);
    }

    #[test]
    fn a_plan_goes_in_shares_oldest_output_first_and_they_add_up_to_it() {
        let whole = plan(&outputs(), &[(0, 1), (1, 2)], &policy(Some(50)), DAY);
        let report = whole.report.clone();
        // Run 2's output is older here: its share comes first.
        let shares = whole.shares(&outputs(), 1, |run| if run == 2 { 0 } else { 1 });
        let runs: Vec<&[u64]> = shares.iter().map(|s| &s.runs[..]).collect();
        assert_eq!(runs, [&[2][..], &[1][..]]);
        assert_eq!(
            (&shares[0].plan.logs, &shares[0].plan.artifacts),
            (&vec![2], &vec![])
        );
        assert_eq!(
            (&shares[1].plan.logs, &shares[1].plan.artifacts),
            (&vec![1], &vec![1])
        );
        let bytes: u64 = shares.iter().map(|s| s.plan.report.bytes_freed).sum();
        assert_eq!(bytes, report.bytes_freed);
        // One share when it holds them all.
        let whole = plan(&outputs(), &[(0, 1), (1, 2)], &policy(Some(50)), DAY);
        assert_eq!(whole.shares(&outputs(), 256, |run| run).len(), 1);
    }
}
