//! Job secrets at the site: only a live lease gets them, the site masks a value a runner let
//! through (keeping each chunk's length, so offsets hold), and a revoked grant gets nothing.

use std::time::{Duration, SystemTime};

use tinyci_pki::Role;
use tinyci_schema::{LogStream, session};

use crate::logs::{lease, reader_for, submit_one};
use crate::support::{TestSite, error_text, local, redeem};

const VALUE: &str = "unmasked-by-a-bad-runner";

/// A session of `admin:ops` with `rights` on org/x and queue default, and its token.
async fn session_with(site: &TestSite, rights: &[&str]) -> (session::Client, String, impl Sized) {
    let (gateway, connection) = site.connect(Role::Admin, "ops").await;
    let token = site.mint(
        "admin:ops",
        rights,
        &["org/x"],
        &["default"],
        Some(SystemTime::now() + Duration::from_secs(3600)),
    );
    (redeem(&gateway, &token), token, connection)
}

/// Sets org/x's secret `TOKEN` to [`VALUE`] through `session`; returns the secret store.
async fn set_token(session: &session::Client) -> tinyci_schema::secret_store::Client {
    let mut request = session.secrets_request();
    request.get().set_repo("org/x");
    let store = request.send().pipeline.get_secrets();
    let mut set = store.set_request();
    set.get().set_repo("org/x");
    set.get().set_name("TOKEN");
    set.get().set_value(VALUE.as_bytes());
    set.send().promise.await.unwrap();
    store
}

async fn write(sink: &tinyci_schema::log_sink::Client, offset: u64, data: &[u8]) {
    let mut request = sink.write_request();
    let mut chunk = request.get().init_chunk();
    chunk.set_offset(offset);
    chunk.set_stream(LogStream::Stdout);
    chunk.set_data(data);
    request.send().await.unwrap();
}

#[test]
fn the_site_masks_what_a_runner_let_through_and_a_revoked_lease_gets_nothing() {
    local(async {
        let site = TestSite::start().await;
        let (session, token, _c) = session_with(
            &site,
            &[
                "queue:submit",
                "queue:take",
                "logs:read",
                "logs:write",
                "secrets:manage",
            ],
        )
        .await;
        // Set through Session.secrets (secrets:manage on org/x); refused for another repository.
        let store = set_token(&session).await;
        let mut elsewhere = store.set_request();
        elsewhere.get().set_repo("org/y");
        elsewhere.get().set_name("TOKEN");
        elsewhere.get().set_value(VALUE.as_bytes());
        let refused = error_text(elsewhere.send().promise.await.err().unwrap());
        assert!(refused.contains("org/y"), "{refused}");
        let mut short = store.set_request();
        short.get().set_repo("org/x");
        short.get().set_name("SHORT");
        short.get().set_value(b"12345");
        let refused = error_text(short.send().promise.await.err().unwrap());
        assert!(refused.contains("at least 6 bytes"), "{refused}");

        let run = submit_one(&session).await;
        let job = lease(&session).await;
        let secrets = job.secrets_request().send().promise.await.unwrap();
        let secrets = secrets.get().unwrap().get_secrets().unwrap();
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets.get(0).get_value().unwrap(), VALUE.as_bytes());

        // A runner that does not mask: whole, and split across two chunks.
        let sink = job.log_request().send().promise.await.unwrap();
        let sink = sink.get().unwrap().get_sink().unwrap();
        let first = format!("whole {VALUE} then unmasked-by");
        let second = "-a-bad-runner end\n";
        write(&sink, 0, first.as_bytes()).await;
        write(&sink, first.len() as u64, second.as_bytes()).await;
        sink.close_request().send().promise.await.unwrap();
        let mut read = reader_for(&session, "org/x").read_request();
        read.get().set_run(&run);
        read.get().set_max(1 << 16);
        let response = read.send().promise.await.unwrap();
        let mut stored = Vec::new();
        for chunk in response.get().unwrap().get_chunks().unwrap().iter() {
            stored.extend_from_slice(chunk.get_data().unwrap());
        }
        let stored = String::from_utf8(stored).unwrap();
        assert_eq!(
            stored.len(),
            first.len() + second.len(),
            "offsets hold: {stored}"
        );
        assert!(!stored.contains(VALUE), "{stored}");
        assert!(
            stored.starts_with(&format!("whole {} then ", "*".repeat(VALUE.len()))),
            "{stored}"
        );
        // The part of the split value that reached the site after its start was masked.
        assert!(
            stored.ends_with(&format!("{} end\n", "*".repeat(second.len() - 5))),
            "{stored}"
        );

        // Its grant revoked, the lease gets no secret any more.
        let (gateway, _a) = site.connect(Role::Admin, "admin").await;
        let admin = redeem(&gateway, &site.admin_token())
            .admin_request()
            .send()
            .pipeline
            .get_admin();
        // No submission names every repository (its runs would match every scope).
        let mut everywhere = admin.submitter_request();
        everywhere.get().set_repo("*");
        let submitter = everywhere.send().pipeline.get_submitter();
        let refused = error_text(
            submitter
                .upload_request()
                .send()
                .promise
                .await
                .err()
                .unwrap(),
        );
        assert!(refused.contains("not '*'"), "{refused}");
        let mut revoke = admin.revoke_request();
        revoke.get().set_token_or_id(&token);
        revoke.send().promise.await.unwrap();
        let refused = error_text(job.secrets_request().send().promise.await.err().unwrap());
        assert!(refused.contains("revoked"), "{refused}");
        // The audit kept the one delivery.
        let mut audit = admin.secret_deliveries_request();
        audit.get().set_run_id(&run);
        let audit = audit.send().promise.await.unwrap();
        let audit = audit.get().unwrap().get_deliveries().unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit.get(0).get_name().unwrap().to_str().unwrap(), "TOKEN");
        assert_eq!(
            audit.get(0).get_runner().unwrap().to_str().unwrap(),
            "tinyci://alpha/admin/ops"
        );
    });
}

/// A partner certificate this site issued itself (`tinyci://alpha/partner/beta`) speaks for
/// partner beta's machine, as the runner name it takes work under says (`beta-runner@beta`):
/// this site's job secrets stay with its own runners, whoever signed the certificate.
#[test]
fn a_partner_certificate_issued_here_gets_no_secrets() {
    local(async {
        let site = TestSite::start().await;
        let (session, _token, _c) =
            session_with(&site, &["queue:submit", "queue:take", "secrets:manage"]).await;
        set_token(&session).await;
        submit_one(&session).await;

        let (gateway, _p) = site.connect(Role::Partner, "beta").await;
        let token = site.mint(
            "site:beta",
            &["queue:take", "logs:write"],
            &["org/x"],
            &["default"],
            Some(SystemTime::now() + Duration::from_secs(3600)),
        );
        let partner = redeem(&gateway, &token);
        let mut request = partner.worker_request();
        request.get().set_queue("default");
        request.get().init_runner().set_name("beta-runner");
        let worker = request.send().pipeline.get_worker();
        let mut next = worker.next_request();
        next.get()
            .set_control(capnp_rpc::new_client(crate::logs::NoControl));
        let job = next.send().promise.await.unwrap();
        let job = job.get().unwrap().get_job().unwrap();
        let refused = error_text(job.secrets_request().send().promise.await.err().unwrap());
        assert!(refused.contains("belongs to another site"), "{refused}");
    });
}
