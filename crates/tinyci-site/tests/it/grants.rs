//! Redeeming grants at a real site: holder binding, scoping, revocation, expiry, bad tokens.

use std::time::{Duration, SystemTime};

use tinyci_pki::Role;
use tinyci_schema::{session, submitter, worker};

use crate::support::{ManualClock, TestSite, error_text, grant_summary, local, redeem};

fn hours(h: u64) -> Option<SystemTime> {
    Some(SystemTime::now() + Duration::from_secs(h * 3600))
}

async fn ask_worker(
    session: &session::Client,
    queue: &str,
    runner: &str,
) -> Result<worker::Client, String> {
    let mut request = session.worker_request();
    request.get().set_queue(queue);
    request.get().init_runner().set_name(runner);
    let response = request.send().promise.await.map_err(error_text)?;
    Ok(response.get().unwrap().get_worker().unwrap())
}

async fn ask_submitter(session: &session::Client, repo: &str) -> Result<submitter::Client, String> {
    let mut request = session.submitter_request();
    request.get().set_repo(repo);
    let response = request.send().promise.await.map_err(error_text)?;
    Ok(response.get().unwrap().get_submitter().unwrap())
}

/// A call on a live submitter fails with "no submission"; on a dead one with the reason.
async fn submitter_state(submitter: &submitter::Client) -> String {
    let mut request = submitter.ticket_request();
    request.get().set_submission_id("s-1");
    match request.send().promise.await {
        Ok(_) => "ok".into(),
        Err(e) => error_text(e),
    }
}

async fn revoke(site: &TestSite, target: &str) -> Vec<String> {
    let (gateway, _conn) = site.connect(Role::Admin, "admin").await;
    let session = redeem(&gateway, &site.admin_token());
    let admin = session.admin_request().send().pipeline.get_admin();
    let mut request = admin.revoke_request();
    request.get().set_token_or_id(target);
    let response = request.send().promise.await.unwrap();
    let ids = response.get().unwrap().get_revoked_ids().unwrap();
    ids.iter()
        .map(|id| id.unwrap().to_string().unwrap())
        .collect()
}

#[test]
fn a_token_bound_to_a_partner_works_only_on_that_partners_connections() {
    local(async {
        let site = TestSite::start().await;
        let token = site.mint("site:beta", &["queue:submit"], &["org/x"], &[], hours(1));

        let (beta, _c) = site.connect(Role::Partner, "beta").await;
        let summary = grant_summary(&redeem(&beta, &token)).await.unwrap();
        assert!(
            summary.starts_with("site:beta may queue:submit on repo org/x at site alpha, until "),
            "{summary}"
        );

        // A valid signature is not enough: every other identity is refused.
        for (role, name) in [
            (Role::Partner, "gamma"),
            (Role::Runner, "beta"),
            (Role::Admin, "admin"),
            (Role::User, "beta"),
            (Role::Site, ""),
        ] {
            let (gateway, _c) = site.connect(role, name).await;
            let err = grant_summary(&redeem(&gateway, &token)).await.unwrap_err();
            assert!(
                err.contains(
                    "token refused: it is bound to site:beta, which this connection is not"
                ),
                "{role:?} {name}: {err}"
            );
        }
    });
}

#[test]
fn sessions_hand_out_capabilities_only_within_the_grant() {
    local(async {
        let site = TestSite::start().await;
        let token = site.mint("runner:r1", &["queue:take"], &[], &["a"], hours(1));
        let (gateway, _c) = site.connect(Role::Runner, "r1").await;
        let session = redeem(&gateway, &token);

        ask_worker(&session, "a", "r1").await.unwrap();
        let err = ask_worker(&session, "b", "r1").await.err().unwrap();
        assert!(
            err.contains("denied queue:take on queue b: queue:take is limited to queue a"),
            "{err}"
        );
        let err = ask_worker(&session, "a", "r2").await.err().unwrap();
        assert!(
            err.contains("runner name \"r2\" does not match this connection's certificate"),
            "{err}"
        );
        let err = ask_submitter(&session, "org/x").await.err().unwrap();
        assert!(
            err.contains("denied queue:submit on repo org/x: the grant has no queue:submit right"),
            "{err}"
        );
        let err = session
            .admin_request()
            .send()
            .promise
            .await
            .err()
            .map(error_text)
            .unwrap();
        assert!(
            err.contains("denied admin on site alpha: the grant has no admin right"),
            "{err}"
        );
        let mut logs = session.logs_request();
        logs.get().init_scope().set_repo("org/x");
        let err = logs.send().promise.await.err().map(error_text).unwrap();
        assert!(err.contains("denied logs:read on repo org/x"), "{err}");
        let err = ask_submitter(&session, "../etc").await.err().unwrap();
        assert!(err.contains("invalid repository \"../etc\""), "{err}");
    });
}

#[test]
fn revocation_cuts_live_workers_and_submitters_and_survives_a_restart() {
    local(async {
        let mut site = TestSite::start().await;
        let token = site.mint(
            "site:beta",
            &["queue:submit", "queue:take"],
            &["org/x"],
            &["gpu"],
            hours(1),
        );
        let (beta, beta_connection) = site.connect(Role::Partner, "beta").await;
        // Redeem, ask for a worker and wait for a job in one flight (promise pipelining).
        let session = redeem(&beta, &token);
        let mut ask = session.worker_request();
        ask.get().set_queue("gpu");
        ask.get().init_runner().set_name("beta-runner");
        let worker = ask.send().pipeline.get_worker();
        let mut next = worker.next_request();
        next.get().set_control(capnp_rpc::new_client(NoControl));
        let pending_job = next.send().promise;
        let submitter = ask_submitter(&session, "org/x").await.unwrap();
        assert!(
            submitter_state(&submitter)
                .await
                .contains("no submission \"s-1\" in repository org/x")
        );

        let revoked = revoke(&site, &token).await;
        assert_eq!(revoked.len(), 1);

        // The parked call is cut off with the reason, as are new calls on held capabilities.
        let err = error_text(
            pending_job
                .await
                .err()
                .expect("a revoked worker delivered a job"),
        );
        assert!(
            err.contains("capability revoked: its token was revoked"),
            "{err}"
        );
        let state = submitter_state(&submitter).await;
        assert!(state.contains("capability revoked"), "{state}");
        let err = grant_summary(&redeem(&beta, &token)).await.unwrap_err();
        assert!(err.contains("token revoked (revocation id "), "{err}");

        // A restart does not forget.
        drop((submitter, session, worker, beta_connection));
        site.down().await;
        site.up().await;
        let (beta, _c) = site.connect(Role::Partner, "beta").await;
        let err = grant_summary(&redeem(&beta, &token)).await.unwrap_err();
        assert!(err.contains("token revoked"), "{err}");
        // Tokens that were not revoked still work after the restart.
        let other = site.mint("site:beta", &["queue:submit"], &["org/x"], &[], hours(1));
        grant_summary(&redeem(&beta, &other)).await.unwrap();
    });
}

#[test]
fn revoking_an_attenuated_token_spares_its_parent() {
    local(async {
        let site = TestSite::start().await;
        let parent = site.mint("site:beta", &["queue:take"], &[], &["*"], hours(1));
        let child = tinyci_grant::UnverifiedToken::parse(&parent)
            .unwrap()
            .attenuate(&tinyci_grant::Attenuation {
                queues: vec!["gpu".into()],
                ..Default::default()
            })
            .unwrap();
        revoke(&site, &child).await;
        let (beta, _c) = site.connect(Role::Partner, "beta").await;
        let err = grant_summary(&redeem(&beta, &child)).await.unwrap_err();
        assert!(err.contains("token revoked"), "{err}");
        grant_summary(&redeem(&beta, &parent)).await.unwrap();
        // Revoking the parent by its id kills the child's descendants too.
        let id = tinyci_grant::UnverifiedToken::parse(&parent)
            .unwrap()
            .inspect()
            .unwrap()
            .grant
            .revocation_ids[0]
            .clone();
        revoke(&site, &id).await;
        let err = grant_summary(&redeem(&beta, &parent)).await.unwrap_err();
        assert!(err.contains("token revoked"), "{err}");
    });
}

#[test]
fn expiry_cuts_live_workers_and_submitters() {
    local(async {
        let site = TestSite::start().await;
        // Biscuit dates are whole seconds: use one, so the token expires exactly then.
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expires_at = std::time::UNIX_EPOCH + Duration::from_secs(now + 3);
        let token = site.mint(
            "site:beta",
            &["queue:submit", "queue:take"],
            &["org/x"],
            &["gpu"],
            Some(expires_at),
        );
        let (beta, _c) = site.connect(Role::Partner, "beta").await;
        let session = redeem(&beta, &token);
        let worker = match ask_worker(&session, "gpu", "beta-runner").await {
            Ok(worker) => worker,
            Err(e) => {
                // Only acceptable if this machine was so slow the token already expired.
                assert!(
                    SystemTime::now() >= expires_at && e.contains("expired"),
                    "{e}"
                );
                return;
            }
        };
        let submitter = ask_submitter(&session, "org/x").await;
        let mut next = worker.next_request();
        next.get().set_control(capnp_rpc::new_client(NoControl));
        // Waits for the expiry event itself: the parked call resolves when the token expires.
        let err = error_text(
            next.send()
                .promise
                .await
                .err()
                .expect("an expired worker delivered a job"),
        );
        assert!(
            err.contains("capability expired: its token expired at "),
            "{err}"
        );
        assert!(SystemTime::now() >= expires_at);
        if let Ok(submitter) = submitter {
            let state = submitter_state(&submitter).await;
            assert!(state.contains("capability expired"), "{state}");
        }
        let err = grant_summary(&redeem(&beta, &token)).await.unwrap_err();
        assert!(err.contains("token expired at "), "{err}");
    });
}

#[test]
fn foreign_garbage_truncated_and_huge_tokens_are_refused_clearly() {
    local(async {
        let site = TestSite::start().await;
        let (beta, _c) = site.connect(Role::Partner, "beta").await;
        let good = site.mint("site:beta", &["queue:submit"], &["org/x"], &[], hours(1));
        let foreign = {
            let other = tinyci_grant::RootKey::generate();
            let spec = tinyci_grant::GrantSpec {
                site: "alpha".into(),
                holder: "site:beta".parse().unwrap(),
                rights: [tinyci_grant::Right::QueueSubmit].into(),
                repos: ["org/x".to_string()].into(),
                queues: Default::default(),
                expires_at: hours(1),
                single_use: false,
            };
            tinyci_grant::mint(&other, &spec).unwrap().0
        };
        let cases = [
            (
                foreign,
                "token refused: it is not signed by this site's root key",
            ),
            (
                "this is not a token".to_owned(),
                "token refused: not base64url token text",
            ),
            (
                good[..good.len() / 2].to_owned(),
                "token refused: not a Biscuit token",
            ),
            (
                "A".repeat(1024 * 1024),
                "token refused: it is 1048576 bytes, more than the 16384-byte limit",
            ),
            (String::new(), "token refused: the token is empty"),
        ];
        for (token, expected) in cases {
            let err = grant_summary(&redeem(&beta, &token)).await.unwrap_err();
            assert!(err.contains(expected), "expected {expected:?}, got {err:?}");
            assert!(
                token.is_empty() || !err.contains(&token[..token.len().min(40)]),
                "the error echoes the token"
            );
        }
        // The connection survived every refusal.
        grant_summary(&redeem(&beta, &good)).await.unwrap();
    });
}

#[test]
fn the_admin_certificate_gets_an_admin_session_with_the_token_from_init() {
    local(async {
        let site = TestSite::start().await;
        let (admin, _c) = site.connect(Role::Admin, "admin").await;
        let summary = grant_summary(&redeem(&admin, &site.admin_token()))
            .await
            .unwrap();
        assert_eq!(
            summary,
            "admin:admin may admin at site alpha, with no expiry"
        );
        // The admin token is useless on another identity's connection.
        let (other, _c) = site.connect(Role::Admin, "eve").await;
        let err = grant_summary(&redeem(&other, &site.admin_token()))
            .await
            .unwrap_err();
        assert!(err.contains("bound to admin:admin"), "{err}");
        // And it lists itself among the issued grants.
        let admin_cap = redeem(&admin, &site.admin_token())
            .admin_request()
            .send()
            .pipeline
            .get_admin();
        let response = admin_cap.grants_request().send().promise.await.unwrap();
        let grants = response.get().unwrap().get_grants().unwrap();
        assert_eq!(grants.len(), 1);
        let g = grants.get(0);
        assert_eq!(g.get_issued_by().unwrap().to_str().unwrap(), "site init");
        assert_eq!(
            g.get_grant()
                .unwrap()
                .get_holder()
                .unwrap()
                .to_str()
                .unwrap(),
            "admin:admin"
        );
        assert!(!g.get_revoked());
    });
}

/// A JobControl that does nothing: the tests never get a job to cancel.
struct NoControl;

impl tinyci_schema::job_control::Server for NoControl {}

#[test]
fn expiry_is_judged_by_the_site_clock() {
    local(async {
        let clock = ManualClock::new();
        let site = TestSite::start_on(&clock).await;
        let an_hour_on = tinyci_core::system_time((clock.clock())() + 3_600_000);
        let token = site.mint(
            "site:beta",
            &["queue:submit"],
            &["org/x"],
            &[],
            Some(an_hour_on),
        );
        let (beta, _c) = site.connect(Role::Partner, "beta").await;
        let session = redeem(&beta, &token);
        let submitter = ask_submitter(&session, "org/x").await.unwrap();
        let alive = submitter_state(&submitter).await;
        assert!(!alive.contains("expired"), "{alive}");

        // Two hours pass for the site and not for the world: the live capability and the
        // token are both dead.
        clock.advance(Duration::from_secs(2 * 3600));
        let state = submitter_state(&submitter).await;
        assert!(
            state.contains("capability expired: its token expired at "),
            "{state}"
        );
        let err = grant_summary(&redeem(&beta, &token)).await.unwrap_err();
        assert!(err.contains("token expired at "), "{err}");
    });
}
