//! Webhook deliveries: the `X-Hub-Signature-256` check and the few payload fields the site
//! acts on. Payloads are decoded with serde into minimal structs (GitHub's payloads are large
//! and grow; unknown fields are ignored).

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// The largest delivery body the site accepts: GitHub caps webhook payloads at 25 MB, so a
/// larger body is not from GitHub. The HTTP listener should stop reading past this.
pub const MAX_WEBHOOK_BYTES: usize = 25 * 1024 * 1024;

const SIGNATURE_PREFIX: &str = "sha256=";

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// No `X-Hub-Signature-256` header.
    #[error("missing X-Hub-Signature-256 header")]
    MissingSignature,
    /// The header is not `sha256=` followed by 64 hex digits.
    #[error("malformed X-Hub-Signature-256 header: {reason}")]
    MalformedSignature {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Well formed, but not the HMAC of this body under this secret.
    #[error("X-Hub-Signature-256 does not match the body and the repository's secret")]
    SignatureMismatch,
    /// The body is over [`MAX_WEBHOOK_BYTES`].
    #[error("webhook body of {len} bytes is over the limit of {MAX_WEBHOOK_BYTES} bytes")]
    TooLarge {
        /// The body's length.
        len: usize,
    },
    /// The body is not the JSON GitHub documents for this event.
    #[error("malformed {event} payload: {source}")]
    Payload {
        /// The `X-GitHub-Event` value.
        event: String,
        /// Where decoding failed.
        #[source]
        source: serde_json::Error,
    },
}

/// Checks `X-Hub-Signature-256` (`header`, `None` if absent) against the HMAC-SHA256 of `body`
/// under `secret`, comparing in constant time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::MissingSignature)?;
    let hex_digest =
        header
            .trim()
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(WebhookError::MalformedSignature {
                reason: "expected the prefix sha256=",
            })?;
    if hex_digest.len() != 64 {
        return Err(WebhookError::MalformedSignature {
            reason: "expected 64 hex digits",
        });
    }
    let expected = hex::decode(hex_digest).map_err(|_| WebhookError::MalformedSignature {
        reason: "not hexadecimal",
    })?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .map_err(|_| WebhookError::SignatureMismatch)?;
    mac.update(body);
    // Through the one constant-time primitive every secret comparison uses.
    if tinyci_core::constant_time_eq(&mac.finalize().into_bytes(), &expected) {
        Ok(())
    } else {
        Err(WebhookError::SignatureMismatch)
    }
}

/// What a `pull_request` delivery reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrAction {
    /// A new pull request.
    Opened,
    /// New commits on its head.
    Synchronize,
    /// Reopened after being closed.
    Reopened,
    /// Closed or merged.
    Closed,
    /// Anything else (labeled, edited, …), by name.
    Other(String),
}

impl PrAction {
    fn from_name(name: &str) -> Self {
        match name {
            "opened" => Self::Opened,
            "synchronize" => Self::Synchronize,
            "reopened" => Self::Reopened,
            "closed" => Self::Closed,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// A decoded delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    /// Sent once when a hook is created.
    Ping {
        /// GitHub's random aphorism.
        zen: String,
        /// The hook's id.
        hook_id: u64,
    },
    /// Commits pushed to a ref (or a ref created or deleted).
    Push {
        /// `owner/name` as GitHub spells it (not yet checked against `RepoName`).
        repo: String,
        /// The full ref, e.g. `refs/heads/main`.
        git_ref: String,
        /// The ref's commit before the push (all zeros when created).
        before: String,
        /// The ref's commit after the push (all zeros when deleted).
        after: String,
        /// True when the push deleted the ref: nothing to build.
        deleted: bool,
        /// The repository's default branch, where `tinyci.yml` is read.
        default_branch: String,
        /// Who pushed.
        pusher: String,
        /// The head commit's message, if there is a head commit.
        head_commit_message: Option<String>,
    },
    /// Something happened to a pull request.
    PullRequest {
        /// What happened.
        action: PrAction,
        /// The pull request's number.
        number: u64,
        /// `owner/name` of the base repository.
        repo: String,
        /// The head commit.
        head_sha: String,
        /// The head branch (possibly in a fork).
        head_ref: String,
        /// `owner/name` of the repository the head branch lives in: the base repository for
        /// a branch pull request, a fork otherwise; `None` when GitHub no longer knows it (a
        /// deleted fork).
        head_repo: Option<String>,
        /// The branch it targets.
        base_ref: String,
        /// The base branch's commit.
        base_sha: String,
        /// GitHub's test merge of the head into the base, when it has computed one (`null`
        /// while it is computing, and when they conflict).
        merge_commit_sha: Option<String>,
        /// The pull request's title.
        title: String,
        /// The base repository's default branch, where `tinyci.yml` is read.
        default_branch: String,
    },
    /// Any other event: acknowledged, not acted on.
    Ignored {
        /// The `X-GitHub-Event` value.
        event: String,
    },
}

#[derive(Deserialize)]
struct Ping {
    zen: String,
    hook_id: u64,
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
    #[serde(default)]
    default_branch: Option<String>,
}

#[derive(Deserialize)]
struct Pusher {
    name: String,
}

#[derive(Deserialize)]
struct HeadCommit {
    message: String,
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: Repository,
    pusher: Pusher,
    head_commit: Option<HeadCommit>,
}

#[derive(Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    /// `null` when the head's repository was deleted.
    #[serde(default)]
    repo: Option<Repository>,
}

#[derive(Deserialize)]
struct PullRequestBody {
    title: String,
    head: Branch,
    base: Branch,
    #[serde(default)]
    merge_commit_sha: Option<String>,
}

#[derive(Deserialize)]
struct PullRequest {
    action: String,
    number: u64,
    pull_request: PullRequestBody,
    repository: Repository,
}

fn decode<T: for<'de> Deserialize<'de>>(event: &str, body: &[u8]) -> Result<T, WebhookError> {
    serde_json::from_slice(body).map_err(|source| WebhookError::Payload {
        event: event.to_owned(),
        source,
    })
}

#[derive(Deserialize)]
struct RepositoryOnly {
    repository: Option<Repository>,
}

/// The `repository.full_name` a delivery names, read *before* its signature is checked, only
/// to pick which repository's secret checks it. `None` when the body names none.
pub fn repository_of(body: &[u8]) -> Option<String> {
    if body.len() > MAX_WEBHOOK_BYTES {
        return None;
    }
    serde_json::from_slice::<RepositoryOnly>(body)
        .ok()?
        .repository
        .map(|r| r.full_name)
}

/// Decodes a delivery given its `X-GitHub-Event` header and (already verified) body.
pub fn parse_event(event: &str, body: &[u8]) -> Result<WebhookEvent, WebhookError> {
    if body.len() > MAX_WEBHOOK_BYTES {
        return Err(WebhookError::TooLarge { len: body.len() });
    }
    Ok(match event {
        "ping" => {
            let p: Ping = decode(event, body)?;
            WebhookEvent::Ping {
                zen: p.zen,
                hook_id: p.hook_id,
            }
        }
        "push" => {
            let p: Push = decode(event, body)?;
            WebhookEvent::Push {
                repo: p.repository.full_name,
                git_ref: p.git_ref,
                before: p.before,
                after: p.after,
                deleted: p.deleted,
                default_branch: p.repository.default_branch.unwrap_or_default(),
                pusher: p.pusher.name,
                head_commit_message: p.head_commit.map(|c| c.message),
            }
        }
        "pull_request" => {
            let p: PullRequest = decode(event, body)?;
            WebhookEvent::PullRequest {
                action: PrAction::from_name(&p.action),
                number: p.number,
                repo: p.repository.full_name,
                head_sha: p.pull_request.head.sha,
                head_ref: p.pull_request.head.git_ref,
                head_repo: p.pull_request.head.repo.map(|r| r.full_name),
                base_ref: p.pull_request.base.git_ref,
                base_sha: p.pull_request.base.sha,
                merge_commit_sha: p.pull_request.merge_commit_sha,
                title: p.pull_request.title,
                default_branch: p.repository.default_branch.unwrap_or_default(),
            }
        }
        other => WebhookEvent::Ignored {
            event: other.to_owned(),
        },
    })
}
