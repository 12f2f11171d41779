//! `tinyci runner add`: a bundle is all a runner host needs.

use std::os::unix::fs::PermissionsExt;

use tinyci_net::NetLimits;
use tinyci_pki::{Credentials, SiteName};
use tinyci_schema::{gateway, session};
use tinyci_site::bundle::RunnerBundle;

use crate::support::{SiteProcess, run_in};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Dials the site with only what the bundle holds, redeems its token and asks for workers.
async fn ask_workers(bundle: &RunnerBundle, queues: &[&str]) -> Vec<Result<(), String>> {
    let site = SiteName::new(&bundle.site).unwrap();
    let creds = Credentials::from_pem(&bundle.cert, &bundle.key).unwrap();
    let tls = tinyci_pki::tls::client_config(&creds, &bundle.ca_cert, site.clone()).unwrap();
    let (gateway, _conn) = tinyci_net::dial::<gateway::Client>(
        &bundle.addresses[0],
        tls,
        &site,
        &NetLimits::default(),
    )
    .await
    .unwrap();
    let mut redeem = gateway.redeem_request();
    redeem.get().set_token(&bundle.token);
    let session: session::Client = redeem.send().pipeline.get_session();
    let mut out = Vec::new();
    for queue in queues {
        let mut ask = session.worker_request();
        ask.get().set_queue(queue);
        ask.get().init_runner().set_name(&bundle.runner);
        out.push(
            ask.send()
                .promise
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    }
    out
}

#[test]
fn a_bundle_is_all_a_runner_needs_and_only_reaches_its_queues() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        run_in(dir.path(), &["site", "init", "--name", "alpha"])
            .status
            .success()
    );
    let mut site = SiteProcess::start(
        dir.path(),
        &["--config", "site.toml", "--listen", "127.0.0.1:0"],
    );
    let addr = site.wait_for("listening on ").trim().to_owned();

    let added = run_in(
        dir.path(),
        &["runner", "add", "r1", "--queue", "a", "--addr", &addr],
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert!(text(&added.stdout).contains("runner r1 may take jobs from a at site alpha"));
    let path = dir.path().join("r1.bundle");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let again = run_in(
        dir.path(),
        &["runner", "add", "r1", "--queue", "a", "--addr", &addr],
    );
    assert_eq!(again.status.code(), Some(3));
    assert!(text(&again.stderr).contains("refusing to overwrite a bundle"));

    let bundle = RunnerBundle::load(&path).unwrap();
    assert_eq!(bundle.runner, "r1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results =
        tokio::task::LocalSet::new().block_on(&runtime, ask_workers(&bundle, &["a", "b"]));
    assert_eq!(results[0], Ok(()));
    let denied = results[1].as_ref().unwrap_err();
    assert!(
        denied.contains("denied queue:take on queue b: queue:take is limited to queue a"),
        "{denied}"
    );

    // The grant is listed like any other.
    let listed = run_in(dir.path(), &["token", "list", "--addr", &addr]);
    assert!(
        text(&listed.stdout)
            .lines()
            .any(|l| l.contains("runner:r1") && l.contains("tinyci runner add r1"))
    );
    let (clean, _) = site.terminate();
    assert!(clean);
}
