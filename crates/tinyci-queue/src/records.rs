//! What the queue stores. Values are `tinyci_store::Record`s (a version tag, then postcard):
//! append fields at the end only.

use serde::{Deserialize, Serialize};
use tinyci_core::{PlannedRun, Run, RunId, SubmissionId};

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
}
