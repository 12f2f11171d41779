//! The record of every grant issued, which `grant list` shows and revocation names.

use std::time::{SystemTime, UNIX_EPOCH};

use tinyci_store::records::IssuedGrant;
use tinyci_store::tables::GRANTS;
use tinyci_store::{Store, StoreError};

/// Records a minted grant in `store` (offline minting and `site init`).
pub fn record_issued(
    store: &Store,
    grant: &tinyci_grant::Grant,
    issued_by: &str,
) -> Result<(), StoreError> {
    // Offline (`site init`, `grant mint`): the tool's edge, where the system clock is read.
    let issued_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (key, record) = issued_record(grant, issued_by, issued_at);
    store.write(|txn| txn.put(GRANTS, key.as_str(), &record))
}

/// The `grants` row recording a minted grant: its key and value.
pub fn issued_record(
    grant: &tinyci_grant::Grant,
    issued_by: &str,
    issued_at: u64,
) -> (String, IssuedGrant) {
    let key = grant.revocation_ids.first().cloned().unwrap_or_default();
    let record = IssuedGrant {
        holder: grant.holder.to_string(),
        rights: grant.rights.iter().map(|r| r.to_string()).collect(),
        repos: grant.repos.iter().cloned().collect(),
        queues: grant.queues.iter().cloned().collect(),
        expires_at: grant
            .expires_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        revocation_ids: grant.revocation_ids.clone(),
        issued_by: issued_by.to_owned(),
        issued_at,
    };
    (key, record)
}
