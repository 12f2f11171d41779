//! Authorization conformance, driven by the schema: [`AUTHORITY`] says, for every method of
//! every interface in `schema/tinyci.capnp`, what guards it. A method missing from the table,
//! a table row the schema does not have, or a right that guards nothing fails here; and every
//! row guarded by a right is exercised with a holder that has exactly that right (besides the
//! rights that reach the capability at all) and with one that lacks it.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use tinyci_grant::Right;
use tinyci_grant::vocab::ScopeKind;
use tinyci_pki::Role;
use tinyci_schema::session;

use crate::logs::{lease, reader_for, submit_one};
use crate::support::{TestSite, error_text, local, redeem};

/// What guards a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    /// Nothing: anyone who can reach the site (a TLS client of a trusted CA).
    Anyone,
    /// A grant: signature, revocation, holder binding, expiry (`Gateway.redeem`).
    Token,
    /// The held capability is the permission (it was handed out only after its right was
    /// checked, or it is the caller's own callback).
    Held,
    /// This right, checked where the method is exercised.
    Right(Right),
}

use Guard::{Anyone, Held, Token};

/// Every method of every interface, and what guards it.
const AUTHORITY: &[(&str, &str, Guard)] = &[
    ("Gateway", "info", Anyone),
    ("Gateway", "redeem", Token),
    ("Session", "grant", Held),
    ("Session", "submitter", Guard::Right(Right::QueueSubmit)),
    ("Session", "worker", Guard::Right(Right::QueueTake)),
    ("Session", "logs", Guard::Right(Right::LogsRead)),
    ("Session", "admin", Guard::Right(Right::Admin)),
    ("Session", "users", Guard::Right(Right::UsersModify)),
    ("Session", "repos", Guard::Right(Right::ReposModify)),
    ("Session", "secrets", Guard::Right(Right::SecretsManage)),
    ("ByteSink", "write", Held),
    ("ByteSink", "finish", Held),
    ("Submitter", "upload", Held),
    ("Submitter", "submit", Held),
    ("Submitter", "ticket", Held),
    ("Ticket", "submission", Held),
    ("Ticket", "runs", Held),
    ("Ticket", "cancel", Guard::Right(Right::RunsCancel)),
    ("Ticket", "watch", Held),
    ("Ticket", "cancelRun", Guard::Right(Right::RunsCancel)),
    ("Ticket", "retryRun", Guard::Right(Right::RunsCancel)),
    ("RunObserver", "changed", Held),
    ("RunObserver", "ended", Held),
    ("Worker", "next", Held),
    ("Worker", "resume", Held),
    ("JobControl", "cancel", Held),
    ("JobControl", "withdrawSecrets", Held),
    ("Job", "spec", Held),
    ("Job", "source", Held),
    ("Job", "log", Guard::Right(Right::LogsWrite)),
    ("Job", "artifacts", Held),
    ("Job", "heartbeat", Held),
    ("Job", "started", Held),
    ("Job", "complete", Held),
    ("Job", "release", Held),
    ("Job", "secrets", Held),
    ("LogSink", "write", Held),
    ("LogSink", "acknowledged", Held),
    ("LogSink", "close", Held),
    ("LogReader", "read", Held),
    ("LogReader", "follow", Held),
    ("LogReader", "artifacts", Guard::Right(Right::AssetsRead)),
    ("LogReader", "download", Guard::Right(Right::AssetsRead)),
    ("LogReader", "run", Held),
    ("LogReader", "ticket", Held),
    ("LogObserver", "chunk", Held),
    ("LogObserver", "done", Held),
    ("AssetSink", "put", Held),
    ("Admin", "status", Held),
    ("Admin", "runners", Held),
    ("Admin", "setRunner", Held),
    ("Admin", "queues", Held),
    ("Admin", "setQueue", Held),
    ("Admin", "runs", Held),
    ("Admin", "cancel", Held),
    ("Admin", "retry", Held),
    ("Admin", "retryFailed", Held),
    ("Admin", "grants", Held),
    ("Admin", "revoke", Held),
    ("Admin", "users", Held),
    ("Admin", "repos", Held),
    ("Admin", "logs", Held),
    ("Admin", "submitter", Held),
    ("Admin", "ticket", Held),
    ("Admin", "addUser", Held),
    ("Admin", "setUserCapability", Held),
    ("Admin", "enableRepo", Held),
    ("Admin", "disableRepo", Held),
    ("Admin", "reloadFederation", Held),
    ("Admin", "run", Held),
    ("Admin", "secrets", Held),
    ("Admin", "secretDeliveries", Held),
    ("UserDirectory", "list", Held),
    ("UserDirectory", "add", Held),
    ("UserDirectory", "setCapability", Held),
    ("RepoSettings", "list", Held),
    ("RepoSettings", "enable", Held),
    ("RepoSettings", "disable", Held),
    ("SecretStore", "set", Held),
    ("SecretStore", "list", Held),
    ("SecretStore", "remove", Held),
];

/// Every `(interface, method)` the schema declares.
fn schema_methods() -> BTreeSet<(String, String)> {
    let schema = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schema/tinyci.capnp"
    ))
    .unwrap();
    let mut methods = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in schema.lines() {
        if let Some(rest) = line.strip_prefix("interface ") {
            current = rest.split_whitespace().next().map(str::to_owned);
            continue;
        }
        if line.starts_with('}') {
            current = None;
            continue;
        }
        let Some(interface) = &current else { continue };
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        if let Some((name, rest)) = line.split_once(" @")
            && !name.contains(' ')
            && rest.contains('(')
        {
            methods.insert((interface.clone(), name.to_owned()));
        }
    }
    methods
}

#[test]
fn every_schema_method_has_exactly_one_guard_and_every_right_guards_a_method() {
    let declared = schema_methods();
    let tabled: BTreeSet<(String, String)> = AUTHORITY
        .iter()
        .map(|(i, m, _)| ((*i).to_owned(), (*m).to_owned()))
        .collect();
    assert_eq!(
        tabled.len(),
        AUTHORITY.len(),
        "a method is in the table twice"
    );
    let missing: Vec<_> = declared.difference(&tabled).collect();
    assert!(
        missing.is_empty(),
        "schema methods with no guard in the table: {missing:?}"
    );
    let extra: Vec<_> = tabled.difference(&declared).collect();
    assert!(
        extra.is_empty(),
        "table rows the schema does not declare: {extra:?}"
    );
    for right in Right::ALL {
        assert!(
            AUTHORITY.iter().any(|(_, _, g)| *g == Guard::Right(right)),
            "right {right} guards no method"
        );
    }
}

fn hour() -> Option<SystemTime> {
    Some(SystemTime::now() + Duration::from_secs(3600))
}

/// A session of operator `ops` (an admin certificate, so no site-user checks apply) holding
/// exactly `rights` on repository `org/x` and queue `default`.
async fn session_with(site: &TestSite, rights: &[&str]) -> (session::Client, impl Sized) {
    let (gateway, connection) = site.connect(Role::Admin, "ops").await;
    // Scopes only for the kinds of right held (a grant refuses a scope nothing uses).
    let kinds: BTreeSet<ScopeKind> = rights
        .iter()
        .map(|r| r.parse::<Right>().unwrap().scope_kind())
        .collect();
    let repos: &[&str] = if kinds.contains(&ScopeKind::Repo) {
        &["org/x"]
    } else {
        &[]
    };
    let queues: &[&str] = if kinds.contains(&ScopeKind::Queue) {
        &["default"]
    } else {
        &[]
    };
    let token = site.mint("admin:ops", rights, repos, queues, hour());
    (redeem(&gateway, &token), connection)
}

/// Whether `call` was refused for lack of `right` (the refusal names it).
fn refused_for(result: Result<(), capnp::Error>, right: Right) -> bool {
    result.is_err_and(|e| error_text(e).contains(right.as_str()))
}

#[test]
fn each_right_allows_exactly_what_its_rows_say_and_its_absence_denies_it() {
    local(async {
        let site = TestSite::start().await;
        // A run to act on, made by a holder of everything needed.
        let (all, _c) = session_with(
            &site,
            &[
                "queue:submit",
                "queue:take",
                "logs:read",
                "assets:read",
                "logs:write",
            ],
        )
        .await;
        let run = submit_one(&all).await;

        for right in Right::ALL {
            let rows: Vec<_> = AUTHORITY
                .iter()
                .filter(|(_, _, g)| *g == Guard::Right(right))
                .collect();
            // The rights that reach each row's capability at all, besides the one tried.
            let (path, attempt): (&[&str], _) = match right {
                Right::QueueSubmit | Right::QueueTake | Right::LogsRead | Right::Admin => {
                    (&[], right)
                }
                Right::UsersModify | Right::ReposModify | Right::SecretsManage => (&[], right),
                Right::RunsCancel => (&["queue:submit"], right),
                Right::AssetsRead => (&["logs:read"], right),
                Right::LogsWrite => (&["queue:take"], right),
            };
            for with in [true, false] {
                let mut rights: Vec<&str> = path.to_vec();
                if with {
                    rights.push(attempt.as_str());
                }
                // A grant needs a right: the denied case without a path gets an unrelated one.
                if rights.is_empty() {
                    rights.push(if right == Right::LogsRead {
                        "queue:submit"
                    } else {
                        "logs:read"
                    });
                }
                let (session, _c) = session_with(&site, &rights).await;
                let outcome = exercise(&session, right, &run).await;
                if with {
                    assert!(
                        outcome.is_ok(),
                        "{right} with {rights:?} ({rows:?}): {outcome:?}"
                    );
                } else {
                    assert!(
                        refused_for(outcome, right),
                        "{right} without it ({rights:?}) must be refused, naming it"
                    );
                }
            }
        }
    });
}

/// Uses the method(s) `right` guards, reaching them through `session`.
async fn exercise(session: &session::Client, right: Right, run: &str) -> Result<(), capnp::Error> {
    match right {
        Right::QueueSubmit => {
            let mut request = session.submitter_request();
            request.get().set_repo("org/x");
            let submitter = request.send().pipeline.get_submitter();
            submitter.upload_request().send().promise.await.map(drop)
        }
        Right::QueueTake => {
            let mut request = session.worker_request();
            request.get().set_queue("default");
            request.get().init_runner().set_name("ops");
            request.send().promise.await.map(drop)
        }
        Right::LogsRead => {
            let mut request = reader_for(session, "org/x").read_request();
            request.get().set_run(run);
            request.get().set_max(16);
            request.send().promise.await.map(drop)
        }
        Right::Admin => {
            let admin = session.admin_request().send().pipeline.get_admin();
            admin.status_request().send().promise.await.map(drop)
        }
        Right::UsersModify => {
            let users = session.users_request().send().pipeline.get_users();
            users.list_request().send().promise.await.map(drop)
        }
        Right::ReposModify => {
            let repos = session.repos_request().send().pipeline.get_repos();
            repos.list_request().send().promise.await.map(drop)
        }
        Right::SecretsManage => {
            let mut request = session.secrets_request();
            request.get().set_repo("org/x");
            let secrets = request.send().pipeline.get_secrets();
            secrets.list_request().send().promise.await.map(drop)
        }
        Right::RunsCancel => {
            let mut request = session.submitter_request();
            request.get().set_repo("org/x");
            let submitter = request.send().pipeline.get_submitter();
            // Submissions and runs share one sequence: a one-run submission is its run's id
            // minus one.
            let number: u64 = run.trim_start_matches("r-").parse().unwrap();
            let mut ticket = submitter.ticket_request();
            ticket.get().set_submission_id(format!("s-{}", number - 1));
            let ticket = ticket.send().pipeline.get_ticket();
            let mut one = ticket.cancel_run_request();
            one.get().set_run(run);
            one.get().set_reason("conformance");
            one.send().promise.await?;
            let mut all = ticket.cancel_request();
            all.get().set_reason("conformance");
            all.send().promise.await.map(drop)
        }
        Right::AssetsRead => {
            let reader = reader_for(session, "org/x");
            let mut list = reader.artifacts_request();
            list.get().set_run(run);
            list.send().promise.await.map(drop)?;
            let mut download = reader.download_request();
            download.get().set_run(run);
            download.get().set_name("none.txt");
            download.get().set_sink(capnp_rpc::new_client(NullSink));
            match download.send().promise.await {
                // Allowed: the artifact does not exist, which is not a refusal of the right.
                Err(e) if !error_text(e.clone()).contains("assets:read") => Ok(()),
                other => other.map(drop),
            }
        }
        Right::LogsWrite => {
            let job = lease(session).await;
            let sink = job.log_request().send().pipeline.get_sink();
            let result = sink.acknowledged_request().send().promise.await.map(drop);
            // Hand the run back for the next attempt.
            let _ = job.release_request().send().promise.await;
            result
        }
    }
}

/// A byte sink that takes nothing (downloads that must fail before writing).
pub(crate) struct NullSink;

impl tinyci_schema::byte_sink::Server for NullSink {}

/// README's example of narrowing: a partner's submit-and-read grant attenuated offline to
/// `--right logs:read` reads logs and nothing else.
#[test]
fn the_readmes_read_only_token_reads_logs_and_nothing_else() {
    local(async {
        let site = TestSite::start().await;
        let (all, _c) = session_with(
            &site,
            &["queue:submit", "queue:take", "logs:read", "logs:write"],
        )
        .await;
        let run = submit_one(&all).await;
        let (gateway, _c2) = site.connect(Role::Admin, "ops").await;
        let full = site.mint(
            "admin:ops",
            &["queue:submit", "logs:read", "assets:read", "runs:cancel"],
            &["org/x"],
            &[],
            hour(),
        );
        let narrowed = tinyci_grant::UnverifiedToken::parse(&full)
            .unwrap()
            .attenuate(&tinyci_grant::Attenuation {
                rights: vec![Right::LogsRead],
                ..Default::default()
            })
            .unwrap();
        let session = redeem(&gateway, &narrowed);
        assert!(exercise(&session, Right::LogsRead, &run).await.is_ok());
        for right in [Right::AssetsRead, Right::QueueSubmit, Right::RunsCancel] {
            let outcome = exercise(&session, right, &run).await;
            assert!(outcome.is_err(), "a logs:read token could use {right}");
        }
    });
}

/// The status of `run`, as a log reader sees it.
async fn status_of(session: &session::Client, run: &str) -> tinyci_schema::RunStatus {
    let mut request = reader_for(session, "org/x").read_request();
    request.get().set_run(run);
    request.get().set_max(1);
    let response = request.send().promise.await.unwrap();
    response.get().unwrap().get_status().unwrap()
}

/// Superseding is cancelling: a newer submission on the same ref cancels the older one's runs
/// only when its submitter holds `runs:cancel`; otherwise both run.
#[test]
fn only_holders_of_runs_cancel_supersede_others_work() {
    use tinyci_schema::RunStatus;
    local(async {
        let site = TestSite::start().await;
        let (reader, _c) = session_with(&site, &["logs:read"]).await;
        let (canceller, _c1) = session_with(&site, &["queue:submit", "runs:cancel"]).await;
        let first = submit_one(&canceller).await;
        // Submitting on the same ref without runs:cancel cancels nothing, and does not hide
        // the first from the next submission that may supersede it.
        let (submit_only, _c2) = session_with(&site, &["queue:submit"]).await;
        let second = submit_one(&submit_only).await;
        assert_eq!(status_of(&reader, &first).await, RunStatus::Queued);
        assert_eq!(status_of(&reader, &second).await, RunStatus::Queued);
        let third = submit_one(&canceller).await;
        assert_eq!(status_of(&reader, &first).await, RunStatus::Canceled);
        assert_eq!(status_of(&reader, &second).await, RunStatus::Queued);
        assert_eq!(status_of(&reader, &third).await, RunStatus::Queued);
    });
}

/// A partner's runner cannot pass for ours: it takes work under its own namespaced name, and
/// cannot resume (then complete, or upload to) a lease another runner holds.
#[test]
fn a_partner_runner_cannot_claim_another_runners_name_or_lease() {
    use tinyci_schema::job_control;
    local(async {
        let site = TestSite::start().await;
        let (all, _c) = session_with(&site, &["queue:submit", "logs:read"]).await;
        let run = submit_one(&all).await;
        // Our runner r1 takes the run.
        let (r1_gateway, _c1) = site.connect(Role::Runner, "r1").await;
        let r1_token = site.mint("runner:r1", &["queue:take"], &[], &["default"], hour());
        let r1 = redeem(&r1_gateway, &r1_token);
        let mut worker = r1.worker_request();
        worker.get().set_queue("default");
        worker.get().init_runner().set_name("r1");
        let worker = worker.send().pipeline.get_worker();
        let mut next = worker.next_request();
        next.get()
            .set_control(capnp_rpc::new_client(crate::logs::NoControl));
        let leased = next.send().promise.await.unwrap();
        let job = leased.get().unwrap().get_job().unwrap();
        let spec = job.spec_request().send().promise.await.unwrap();
        let attempt = spec
            .get()
            .unwrap()
            .get_spec()
            .unwrap()
            .get_run()
            .unwrap()
            .get_attempt();

        // Partner beta (a partner certificate this site issued) with a grant on the queue.
        let (beta_gateway, _c2) = site.connect(Role::Partner, "beta").await;
        let beta_token = site.mint("site:beta", &["queue:take"], &[], &["default"], hour());
        let beta = redeem(&beta_gateway, &beta_token);
        let claim = |name: &str| {
            let mut request = beta.worker_request();
            request.get().set_queue("default");
            request.get().init_runner().set_name(name);
            request.send().promise
        };
        let refused = claim("r1").await.err().map(error_text).unwrap();
        assert!(
            refused.contains("does not match this connection's certificate"),
            "{refused}"
        );
        let beta_worker = claim("beta-runner").await.unwrap();
        let beta_worker = beta_worker.get().unwrap().get_worker().unwrap();
        let mut resume = beta_worker.resume_request();
        resume.get().set_run(&run);
        resume.get().set_attempt(attempt);
        resume
            .get()
            .set_control(capnp_rpc::new_client::<job_control::Client, _>(
                crate::logs::NoControl,
            ));
        let stolen = resume.send().promise.await.err().map(error_text).unwrap();
        assert!(stolen.contains("beta-runner@beta"), "{stolen}");
        assert!(stolen.contains("lease"), "{stolen}");
        drop(job);
    });
}

/// The queue's `pull` policy travels in the job spec (the runner obeys it over its own), and
/// a runner's labels are checked before it gets a worker.
#[test]
fn a_queues_pull_policy_reaches_the_job_and_runner_labels_are_checked() {
    local(async {
        let mut site = TestSite::start().await;
        site.restart_with("[queues.default]\npull = \"always\"\n")
            .await;
        let (all, _c) = session_with(&site, &["queue:submit", "logs:read"]).await;
        submit_one(&all).await;
        let (r1_gateway, _c1) = site.connect(Role::Runner, "r1").await;
        let r1_token = site.mint("runner:r1", &["queue:take"], &[], &["default"], hour());
        let r1 = redeem(&r1_gateway, &r1_token);
        let ask = |labels: &[&str]| {
            let mut worker = r1.worker_request();
            worker.get().set_queue("default");
            let mut info = worker.get().init_runner();
            info.set_name("r1");
            let mut list = info.init_labels(labels.len() as u32);
            for (i, label) in labels.iter().enumerate() {
                list.set(i as u32, *label);
            }
            worker.send().promise
        };
        let refused = ask(&["gpu", "no spaces"])
            .await
            .err()
            .map(error_text)
            .unwrap();
        assert!(
            refused.contains("runner.labels: invalid label \"no spaces\""),
            "{refused}"
        );
        let too_many: Vec<String> = (0..=tinyci_core::MAX_LABELS)
            .map(|i| format!("l{i}"))
            .collect();
        let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
        let refused = ask(&too_many).await.err().map(error_text).unwrap();
        assert!(refused.contains("at most 32"), "{refused}");
        let worker = ask(&["gpu"]).await.unwrap();
        let worker = worker.get().unwrap().get_worker().unwrap();
        let mut next = worker.next_request();
        next.get()
            .set_control(capnp_rpc::new_client(crate::logs::NoControl));
        let leased = next.send().promise.await.unwrap();
        let job = leased.get().unwrap().get_job().unwrap();
        let spec = job.spec_request().send().promise.await.unwrap();
        let spec = spec.get().unwrap().get_spec().unwrap();
        assert_eq!(spec.get_pull().unwrap().to_str().unwrap(), "always");
    });
}
