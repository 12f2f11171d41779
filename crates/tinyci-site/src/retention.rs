//! Retention: a background sweeper that deletes the logs and artifacts of finished runs once
//! they are older than `[retention]` allows, and the oldest ones first while the total is over
//! its cap. Runs themselves (status, exit code) are kept: only their bulky output goes.
//!
//! Unfinished runs are never touched. A blob is deleted only when no artifact row names it and
//! no upload is putting it in place ([`ArtifactStore::is_pending`]).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tinyci_core::RunId;
use tinyci_store::StoreError;
use tinyci_store::tables::{ARTIFACTS, LOG_CHUNKS};
use tracing::{info, warn};

use crate::Services;

/// `[retention]`: how long finished runs keep their output, and a cap on all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete a finished run's log this long after it finished (`logs_max_age`).
    pub logs_max_age: Option<Duration>,
    /// Delete a finished run's artifacts this long after it finished (`artifacts_max_age`).
    pub artifacts_max_age: Option<Duration>,
    /// While logs and artifacts together exceed this, delete the output of the runs that
    /// finished longest ago (`max_total_bytes`).
    pub max_total_bytes: Option<u64>,
    /// How often the sweeper runs (`sweep_every`); it also runs once at start.
    pub every: Duration,
}

impl Default for RetentionPolicy {
    /// 30 days of logs and artifacts, no total cap, hourly sweeps.
    fn default() -> Self {
        let days = Duration::from_secs(30 * 24 * 3600);
        Self {
            logs_max_age: Some(days),
            artifacts_max_age: Some(days),
            max_total_bytes: None,
            every: Duration::from_secs(3600),
        }
    }
}

/// What one sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SweepReport {
    pub(crate) logs_removed: usize,
    pub(crate) artifacts_removed: usize,
    pub(crate) blobs_removed: usize,
    pub(crate) bytes_freed: u64,
}

/// The output one run holds.
#[derive(Debug, Default)]
struct RunOutput {
    log_keys: Vec<Vec<u8>>,
    log_bytes: u64,
    artifact_keys: Vec<Vec<u8>>,
    artifact_bytes: u64,
}

/// Runs [`sweep`] now and then every `policy.every` until `stop` is cancelled. A sweep in
/// progress is finished first (its store reads run on a blocking thread that holds the store
/// open, so abandoning it would leave the store locked after shutdown). `sweeps` counts
/// finished sweeps, for operators and tests.
pub(crate) async fn run_sweeper(
    services: std::rc::Rc<Services>,
    policy: RetentionPolicy,
    sweeps: tokio::sync::watch::Sender<u64>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match sweep(&services, &policy, services.now_ms()).await {
            Ok(report) if report != SweepReport::default() => info!(
                logs = report.logs_removed,
                artifacts = report.artifacts_removed,
                blobs = report.blobs_removed,
                bytes = report.bytes_freed,
                "retention sweep removed old output"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "retention sweep failed; retrying at the next one"),
        }
        sweeps.send_modify(|n| *n += 1);
        tokio::select! {
            () = tokio::time::sleep(policy.every) => {}
            () = stop.cancelled() => return,
        }
    }
}

fn run_of(key: &[u8]) -> Option<u64> {
    key.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
}

/// One sweep at time `now_ms`.
pub(crate) async fn sweep(
    services: &Services,
    policy: &RetentionPolicy,
    now_ms: u64,
) -> Result<SweepReport, StoreError> {
    let store = services.store.clone();
    let mut outputs: BTreeMap<u64, RunOutput> = tokio::task::spawn_blocking(move || {
        store.read(|txn| {
            let mut outputs: BTreeMap<u64, RunOutput> = BTreeMap::new();
            for entry in txn.iter_range(LOG_CHUNKS, &..)? {
                let (key, chunk) = entry?;
                if let Some(run) = run_of(key) {
                    let output = outputs.entry(run).or_default();
                    output.log_keys.push(key.to_vec());
                    output.log_bytes += chunk.data.len() as u64;
                }
            }
            for entry in txn.iter_range(ARTIFACTS, &..)? {
                let (key, record) = entry?;
                if let Some(run) = run_of(key) {
                    let output = outputs.entry(run).or_default();
                    output.artifact_keys.push(key.to_vec());
                    output.artifact_bytes += record.size;
                }
            }
            Ok(outputs)
        })
    })
    .await
    .map_err(|e| StoreError::Aborted {
        reason: e.to_string().into(),
    })??;

    // Finished runs with output, oldest first.
    let mut finished: Vec<(u64, u64)> = Vec::new();
    for run in outputs.keys() {
        let stored = services.queue.run(RunId(*run)).ok().flatten();
        if let Some(outcome) = stored.as_ref().and_then(|r| r.state.outcome()) {
            finished.push((outcome.finished_at, *run));
        }
    }
    finished.sort_unstable();

    let older_than = |age: Option<Duration>, finished_at: u64| {
        age.is_some_and(|age| {
            let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            finished_at.saturating_add(age) <= now_ms
        })
    };
    let mut total: u64 = outputs
        .values()
        .map(|o| o.log_bytes + o.artifact_bytes)
        .sum();
    let mut delete_logs = Vec::new();
    let mut delete_artifacts = Vec::new();
    let mut report = SweepReport::default();
    for (finished_at, run) in &finished {
        let Some(output) = outputs.get_mut(run) else {
            continue;
        };
        let over_cap = policy.max_total_bytes.is_some_and(|cap| total > cap);
        if !output.log_keys.is_empty()
            && (over_cap || older_than(policy.logs_max_age, *finished_at))
        {
            delete_logs.append(&mut output.log_keys);
            total -= output.log_bytes;
            report.bytes_freed += output.log_bytes;
            report.logs_removed += 1;
        }
        let over_cap = policy.max_total_bytes.is_some_and(|cap| total > cap);
        if !output.artifact_keys.is_empty()
            && (over_cap || older_than(policy.artifacts_max_age, *finished_at))
        {
            report.artifacts_removed += output.artifact_keys.len();
            delete_artifacts.append(&mut output.artifact_keys);
            total -= output.artifact_bytes;
            report.bytes_freed += output.artifact_bytes;
        }
    }
    if !delete_logs.is_empty() || !delete_artifacts.is_empty() {
        services
            .committer
            .write(move |txn| {
                for key in &delete_logs {
                    txn.delete(LOG_CHUNKS, &key[..])?;
                }
                for key in &delete_artifacts {
                    txn.delete(ARTIFACTS, &key[..])?;
                }
                Ok(())
            })
            .await?;
    }
    report.blobs_removed = remove_unreferenced_blobs(services)?;
    crate::github::forget_old_deliveries(services, now_ms).await?;
    Ok(report)
}

/// Deletes blob files no artifact row names. Runs without awaiting between reading the rows
/// and deleting, on the site's thread, so no upload can commit a row in between; uploads
/// still putting their blob in place are skipped.
fn remove_unreferenced_blobs(services: &Services) -> Result<usize, StoreError> {
    let referenced: HashSet<[u8; 32]> = services.store.read(|txn| {
        txn.iter_range(ARTIFACTS, &..)?
            .map(|entry| entry.map(|(_, record)| record.sha256))
            .collect()
    })?;
    let dir = services.artifacts.dir();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot list artifact blobs");
            return Ok(0);
        }
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(sha) = name
            .to_str()
            .and_then(|n| hex::decode(n).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            // `incoming/` and anything that is not a blob.
            continue;
        };
        if referenced.contains(&sha) || services.artifacts.is_pending(&sha) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => warn!(blob = %entry.path().display(), error = %e, "cannot remove blob"),
        }
    }
    Ok(removed)
}
