//! Enabling a repository: a fresh random webhook secret, sealed and stored *before* the hook
//! is created (GitHub sends its `ping` at once, and it must verify), then the hook's id.
//! Disabling deletes the hook and keeps the record (with `enabled = false`) for the list.

use tinyci_repos::{HookId, NewHook, RepoName};
use tinyci_store::records::RepoRecord;
use tinyci_store::tables::REPOS;
use tracing::info;

use crate::{GitHubError, GitHubService, client_for, hook_secret_context, repo_record};
use tinyci_pki::secrets::random_secret_hex;

/// Every repository the site knows, by name.
/// Known without GitHub configured (a site that had it once keeps the records).
pub fn list(store: &tinyci_store::Store) -> Result<Vec<RepoRecord>, GitHubError> {
    Ok(store.read(|txn| {
        txn.iter_range(
            REPOS,
            &(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
        )?
        .map(|entry| entry.map(|(_, record)| record))
        .collect()
    })?)
}

fn parse_name(name: &str) -> Result<RepoName, GitHubError> {
    name.parse()
        .map_err(|e: tinyci_repos::InvalidName| GitHubError::Refused(e.to_string()))
}

/// Creates the webhook and marks the repository enabled; an enabled one is returned as is.
pub(crate) async fn enable(
    github: &GitHubService,
    name: &str,
    github_user: Option<String>,
    public: bool,
    by: &str,
) -> Result<RepoRecord, GitHubError> {
    let repo = parse_name(name)?;
    let name = repo.to_string();
    if let Some(existing) = repo_record(github, &name)?.filter(|r| r.enabled) {
        return Ok(existing);
    }
    let public_url = github.public_url.clone().ok_or_else(|| {
        GitHubError::Refused(format!(
            "cannot enable {name}: [http] public_url is not set, so GitHub would have nowhere to \
             send webhooks"
        ))
    })?;
    let secret = random_secret_hex(32);
    let mut record = RepoRecord {
        name: name.clone(),
        enabled: true,
        hook_id: None,
        secret_sealed: github
            .secrets
            .seal(secret.as_bytes(), &hook_secret_context(&name)),
        enabled_by: by.to_owned(),
        github_user,
        public,
        changed_at: github.now_ms(),
    };
    // Resolving the client first refuses a user without a GitHub token before anything is
    // written.
    let client = client_for(github, &record)?;
    put(github, &record).await?;
    let created = client
        .create_webhook(
            &repo,
            &NewHook {
                url: format!("{public_url}/hooks/github"),
                secret,
            },
        )
        .await;
    match created {
        Ok(HookId(id)) => {
            record.hook_id = Some(id);
            put(github, &record).await?;
            info!(repo = %name, hook = id, %by, "repository enabled");
            Ok(record)
        }
        Err(e) => {
            record.enabled = false;
            put(github, &record).await?;
            Err(e.into())
        }
    }
}

/// Deletes the webhook (one GitHub already lost counts as deleted) and marks it disabled.
pub(crate) async fn disable(
    github: &GitHubService,
    name: &str,
    by: &str,
) -> Result<RepoRecord, GitHubError> {
    let repo = parse_name(name)?;
    let name = repo.to_string();
    let mut record = repo_record(github, &name)?
        .ok_or_else(|| GitHubError::Refused(format!("repository {name} is not known here")))?;
    if !record.enabled {
        return Ok(record);
    }
    if let Some(id) = record.hook_id {
        let client = client_for(github, &record)?;
        match client.delete_webhook(&repo, HookId(id)).await {
            Ok(()) => {}
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    record.enabled = false;
    record.hook_id = None;
    record.enabled_by = by.to_owned();
    record.changed_at = github.now_ms();
    put(github, &record).await?;
    info!(repo = %name, %by, "repository disabled");
    Ok(record)
}

async fn put(github: &GitHubService, record: &RepoRecord) -> Result<(), GitHubError> {
    let record = record.clone();
    github
        .committer
        .write(move |txn| txn.put(REPOS, record.name.as_str(), &record))
        .await?;
    Ok(())
}
