//! Uploaded source archives through a real site: what one holder may make the site keep
//! without submitting, the sweep of what nobody submitted, and an upload's grant.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tinyci_pki::Role;
use tinyci_schema::{byte_sink, session, submitter};

use crate::logs::{source_tar, submit_one};
use crate::support::{ManualClock, TestSite, error_text, local, redeem};

fn submitter_of(session: &session::Client) -> submitter::Client {
    let mut request = session.submitter_request();
    request.get().set_repo("org/x");
    request.send().pipeline.get_submitter()
}

/// Uploads `bytes` whole through `submitter`; the error of whichever call refused.
async fn upload(submitter: &submitter::Client, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let sink = submitter
        .upload_request()
        .send()
        .promise
        .await
        .map_err(error_text)?
        .get()
        .unwrap()
        .get_sink()
        .unwrap();
    write(&sink, bytes).await?;
    let sha = Sha256::digest(bytes).to_vec();
    let mut finish = sink.finish_request();
    finish.get().set_sha256(&sha);
    finish.send().promise.await.map_err(error_text)?;
    Ok(sha)
}

async fn write(sink: &byte_sink::Client, bytes: &[u8]) -> Result<(), String> {
    let mut request = sink.write_request();
    request.get().set_chunk(bytes);
    request.send().await.map_err(error_text)
}

/// An operator's session that may submit to `org/x`.
async fn ops_session(site: &TestSite) -> (session::Client, tinyci_net::ClientConnection) {
    let (gateway, connection) = site.connect(Role::Admin, "ops").await;
    let token = site.mint("admin:ops", &["queue:submit"], &["org/x"], &[], None);
    (redeem(&gateway, &token), connection)
}

fn archive_path(site: &TestSite, sha: &[u8]) -> std::path::PathBuf {
    site.path(&format!("data/sources/{}.tar", hex::encode(sha)))
}

#[test]
fn one_holder_cannot_keep_more_than_its_quota_of_unsubmitted_uploads() {
    local(async {
        let clock = ManualClock::new();
        let site = TestSite::start_on(&clock).await;
        let token = site.mint("site:beta", &["queue:submit"], &["org/x"], &[], None);
        let (beta, _connection) = site.connect(Role::Partner, "beta").await;
        let submitter = submitter_of(&redeem(&beta, &token));
        for i in 0..8 {
            upload(&submitter, format!("archive {i}").as_bytes())
                .await
                .unwrap();
        }
        let refused = upload(&submitter, b"one too many").await.unwrap_err();
        assert!(
            refused.contains("source upload refused: 8 source archives of yours")
                && refused.contains("not yet submitted"),
            "{refused}"
        );
        // Another holder uploads and submits as before.
        let (ops, _ops_connection) = ops_session(&site).await;
        submit_one(&ops).await;
        // An hour on, the unsubmitted uploads no longer count.
        clock.advance(Duration::from_secs(3601));
        upload(&submitter, b"after the hour").await.unwrap();
    });
}

#[test]
fn the_sweep_removes_archives_nobody_submitted_once_they_are_an_hour_old() {
    local(async {
        let clock = ManualClock::new();
        let mut site = TestSite::start_on(&clock).await;
        let (session, _connection) = ops_session(&site).await;
        submit_one(&session).await;
        let submitted = Sha256::digest(source_tar()).to_vec();
        let abandoned = upload(&submitter_of(&session), b"never submitted")
            .await
            .unwrap();
        assert!(archive_path(&site, &abandoned).exists());
        // A sweep within the hour keeps it.
        site.restart_with("").await;
        site.sweeps_done(1).await;
        assert!(archive_path(&site, &abandoned).exists());
        // One after it removes it, and keeps what a submission names.
        clock.advance(Duration::from_secs(2 * 3600));
        site.restart_with("").await;
        site.sweeps_done(1).await;
        assert!(!archive_path(&site, &abandoned).exists());
        assert!(archive_path(&site, &submitted).exists());
    });
}

#[test]
fn an_upload_ends_when_its_grant_is_revoked() {
    local(async {
        let site = TestSite::start().await;
        let token = site.mint("site:beta", &["queue:submit"], &["org/x"], &[], None);
        let (beta, _connection) = site.connect(Role::Partner, "beta").await;
        let submitter = submitter_of(&redeem(&beta, &token));
        let sink = submitter
            .upload_request()
            .send()
            .promise
            .await
            .unwrap()
            .get()
            .unwrap()
            .get_sink()
            .unwrap();
        write(&sink, b"first half").await.unwrap();
        let (admin, _admin_connection) = site.connect(Role::Admin, "admin").await;
        let session = redeem(&admin, &site.admin_token());
        let mut revoke = session
            .admin_request()
            .send()
            .pipeline
            .get_admin()
            .revoke_request();
        revoke.get().set_token_or_id(&token);
        revoke.send().promise.await.unwrap();
        // A stream call is answered by flow control; its refusal arrives with the next call.
        let _ = write(&sink, b"second half").await;
        let mut finish = sink.finish_request();
        finish
            .get()
            .set_sha256(&Sha256::digest(b"first halfsecond half"));
        let Err(refused) = finish.send().promise.await else {
            panic!("a revoked upload finished");
        };
        let refused = error_text(refused);
        assert!(refused.contains("capability revoked"), "{refused}");
        // Nothing of it was kept.
        let incoming = std::fs::read_dir(site.path("data/sources/incoming")).unwrap();
        assert_eq!(incoming.count(), 0);
    });
}
