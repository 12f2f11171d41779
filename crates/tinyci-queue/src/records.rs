//! What the queue stores. Values are `tinyci_store::Record`s (a version tag, then postcard):
//! append fields at the end only.

use serde::{Deserialize, Serialize};
use tinyci_core::{PlannedRun, Run, RunId, SubmissionId, TrustTier};

/// A run as stored: its state machine plus what it runs and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRun {
    /// Status, attempts, lease, outcome.
    pub state: Run,
    /// The submission it belongs to.
    pub submission: SubmissionId,
    /// `owner/name`.
    pub repo: String,
    /// The submission's ref.
    pub git_ref: String,
    /// The commit.
    pub sha: String,
    /// What to run, fully resolved.
    pub spec: PlannedRun,
    /// The runner holding or last holding it.
    pub runner: Option<String>,
    /// When its current attempt started (ms).
    pub started_at: Option<u64>,
    /// Why it ended as it did, for people.
    pub message: Option<String>,
}

impl StoredRun {
    /// The run's id.
    pub fn id(&self) -> RunId {
        self.state.id()
    }

    /// Decodes a stored run, including ones written before runs carried runner labels (they
    /// need none).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, tinyci_store::RecordError> {
        use tinyci_store::Record;
        match Record::<StoredRun>::decode(bytes) {
            Ok(run) => Ok(run),
            Err(current) => {
                let Ok(old) = Record::<RunBeforeLabels>::decode(bytes) else {
                    return Err(current);
                };
                let spec = old.spec;
                Ok(StoredRun {
                    state: old.state,
                    submission: old.submission,
                    repo: old.repo,
                    git_ref: old.git_ref,
                    sha: old.sha,
                    spec: PlannedRun {
                        task_dir: spec.task_dir,
                        name: spec.name,
                        command: spec.command,
                        image: spec.image,
                        queue: spec.queue,
                        timeout_secs: spec.timeout_secs,
                        env: spec.env,
                        mountpoint: spec.mountpoint,
                        workdir: spec.workdir,
                        privileged: spec.privileged,
                        metadata: spec.metadata,
                        resources: spec.resources,
                        artifacts: spec.artifacts,
                        labels: Vec::new(),
                    },
                    runner: old.runner,
                    started_at: old.started_at,
                    message: old.message,
                })
            }
        }
    }
}

/// A run as stores written before runner labels hold it (postcard is positional, and the
/// spec sits in the middle of the record).
#[derive(Serialize, Deserialize)]
struct RunBeforeLabels {
    state: Run,
    submission: SubmissionId,
    repo: String,
    git_ref: String,
    sha: String,
    spec: PlannedRunBeforeLabels,
    runner: Option<String>,
    started_at: Option<u64>,
    message: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct PlannedRunBeforeLabels {
    task_dir: String,
    name: String,
    command: Vec<String>,
    image: Option<String>,
    queue: tinyci_core::QueueName,
    timeout_secs: u64,
    env: std::collections::BTreeMap<String, String>,
    mountpoint: String,
    workdir: String,
    privileged: bool,
    metadata: std::collections::BTreeMap<String, String>,
    resources: tinyci_core::Resources,
    artifacts: Vec<String>,
}

/// A submission as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubmission {
    /// Its id.
    pub id: SubmissionId,
    /// `owner/name`.
    pub repo: String,
    /// `refs/heads/…` or a commit id.
    pub git_ref: String,
    /// Commit id.
    pub sha: String,
    /// Human title.
    pub title: String,
    /// Who submitted it.
    pub submitted_by: String,
    /// When (ms).
    pub created_at: u64,
    /// SHA-256 of its source archive.
    pub source_sha256: Vec<u8>,
    /// Its runs, in plan order.
    pub runs: Vec<RunId>,
    /// Where it came from, as the site established it (decides which runners may take its
    /// runs).
    pub tier: TrustTier,
}

/// A submission as stores written before trust tiers hold it.
#[derive(Deserialize)]
struct SubmissionBeforeTiers {
    id: SubmissionId,
    repo: String,
    git_ref: String,
    sha: String,
    title: String,
    submitted_by: String,
    created_at: u64,
    source_sha256: Vec<u8>,
    runs: Vec<RunId>,
}

impl StoredSubmission {
    /// Decodes a stored submission, including ones written before tiers existed: their tier
    /// is inferred from `submitted_by`, which the site always wrote from a verified identity
    /// (`github:pull-request-N` cannot tell a fork from a branch, so it is taken as a fork).
    pub(crate) fn decode(bytes: &[u8], own_site: &str) -> Result<Self, tinyci_store::RecordError> {
        use tinyci_store::Record;
        match Record::<StoredSubmission>::decode(bytes) {
            Ok(submission) => Ok(submission),
            Err(current) => {
                let Ok(old) = Record::<SubmissionBeforeTiers>::decode(bytes) else {
                    return Err(current);
                };
                let tier = legacy_tier(&old.submitted_by, own_site);
                Ok(StoredSubmission {
                    id: old.id,
                    repo: old.repo,
                    git_ref: old.git_ref,
                    sha: old.sha,
                    title: old.title,
                    submitted_by: old.submitted_by,
                    created_at: old.created_at,
                    source_sha256: old.source_sha256,
                    runs: old.runs,
                    tier,
                })
            }
        }
    }
}

/// The tier of a submission recorded before tiers, from who submitted it.
fn legacy_tier(submitted_by: &str, own_site: &str) -> TrustTier {
    if submitted_by.starts_with("github:pull-request-") {
        return TrustTier::Fork;
    }
    if submitted_by.starts_with("github:") {
        return TrustTier::Repo;
    }
    // `tinyci://<site>/<role>[/<name>]`, as the connection's certificate named it.
    let Some(rest) = submitted_by.strip_prefix("tinyci://") else {
        return TrustTier::Fork;
    };
    let mut parts = rest.split('/');
    let site = parts.next().unwrap_or_default();
    let role = parts.next();
    let name = parts.next().unwrap_or_default();
    match role {
        _ if site != own_site => TrustTier::partner(site).unwrap_or(TrustTier::Fork),
        Some("admin" | "site") => TrustTier::Local,
        Some("user") => TrustTier::Repo,
        Some("partner") => TrustTier::partner(name).unwrap_or(TrustTier::Fork),
        _ => TrustTier::Fork,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn runs_stored_before_labels_read_with_none() {
        let run = Run::new(RunId(7), &tinyci_core::LeasePolicy::default(), 1_000);
        let old = RunBeforeLabels {
            state: run.clone(),
            submission: SubmissionId(3),
            repo: "org/x".into(),
            git_ref: "refs/heads/main".into(),
            sha: "a".repeat(40),
            spec: PlannedRunBeforeLabels {
                task_dir: "ci".into(),
                name: "test".into(),
                command: vec!["make".into()],
                image: Some("rust:1".into()),
                queue: "default".parse().unwrap(),
                timeout_secs: 60,
                env: Default::default(),
                mountpoint: "/src".into(),
                workdir: "/src".into(),
                privileged: false,
                metadata: [("k".to_owned(), "v".to_owned())].into(),
                resources: Default::default(),
                artifacts: vec!["out/*".into()],
            },
            runner: Some("r1".into()),
            started_at: Some(5),
            message: Some("kept".into()),
        };
        let bytes = tinyci_store::Record::<RunBeforeLabels>::encode(&old).unwrap();
        let read = StoredRun::decode(&bytes).unwrap();
        assert_eq!(read.state, run);
        assert_eq!(read.spec.image.as_deref(), Some("rust:1"));
        assert_eq!(read.spec.artifacts, ["out/*"]);
        assert!(read.spec.labels.is_empty());
        assert_eq!(read.message.as_deref(), Some("kept"));
        // And today's records read as themselves.
        let mut now = read.clone();
        now.spec.labels = vec!["gpu".into()];
        let bytes = tinyci_store::Record::<StoredRun>::encode(&now).unwrap();
        assert_eq!(StoredRun::decode(&bytes).unwrap(), now);
    }

    #[test]
    fn legacy_submissions_get_the_tier_their_submitter_implies() {
        let tier = |by: &str| legacy_tier(by, "alpha");
        assert_eq!(tier("github:octocat"), TrustTier::Repo);
        assert_eq!(tier("github:pull-request-7"), TrustTier::Fork);
        assert_eq!(tier("tinyci://alpha/admin/admin"), TrustTier::Local);
        assert_eq!(tier("tinyci://alpha/user/ana"), TrustTier::Repo);
        assert_eq!(
            tier("tinyci://beta/site"),
            TrustTier::Partner("beta".into())
        );
        assert_eq!(
            tier("tinyci://beta/admin/x"),
            TrustTier::Partner("beta".into())
        );
        assert_eq!(
            tier("tinyci://alpha/partner/gamma"),
            TrustTier::Partner("gamma".into())
        );
        assert_eq!(tier("tinyci://alpha/runner/r1"), TrustTier::Fork);
        assert_eq!(tier("nonsense"), TrustTier::Fork);
    }
}
