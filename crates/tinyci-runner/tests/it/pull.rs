//! Image pulls from a real registry on loopback: Debian's `docker-registry` (the CNCF
//! distribution registry) with htpasswd authentication, an image pushed to it from the
//! locally imported busybox and then removed locally, so the runner must pull it. Each
//! policy, the queue's override and the host's Docker credentials are exercised.

use std::process::Stdio;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    PushImageOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures::StreamExt;
use tinyci_runner::{
    DockerExecutor, ExecOutcome, ExecSpec, PullPolicy, RegistryAuth, Verdict, stop_pair,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::docker::{IMAGE, executor};
use crate::support::{Collected, collect, spec};

const USER: &str = "puller";
/// A throwaway password for a registry that lives as long as this test.
const PASSWORD: &str = "pull-secret-1";
/// bcrypt of PASSWORD (the registry's htpasswd accepts bcrypt only).
const HTPASSWD: &str = "puller:$2b$05$H/uoWpgF4AG6Lv4UwpMfZuXBEX4uWpfFF3Y4OrmTXS/qznfIQplWe";

/// A registry serving on a free loopback port until dropped.
struct Registry {
    _process: tokio::process::Child,
    _dir: tempfile::TempDir,
    address: String,
}

impl Registry {
    async fn start() -> Option<Registry> {
        let binary = std::path::Path::new("/usr/bin/docker-registry");
        if !binary.exists() {
            if std::env::var_os("TINYCI_REQUIRE_DOCKER").is_some() {
                panic!(
                    "TINYCI_REQUIRE_DOCKER is set but /usr/bin/docker-registry is missing \
                     (Debian: apt-get install docker-registry; .ci/run installs it)"
                );
            }
            eprintln!("SKIP registry pulls: docker-registry is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("htpasswd"), format!("{HTPASSWD}\n")).unwrap();
        // The registry takes an address, not a listener: find a free port, then let it bind.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {address}\nauth:\n  htpasswd:\n    realm: tinyci-test\n    path: {}\n",
                dir.path().join("data").display(),
                dir.path().join("htpasswd").display()
            ),
        )
        .unwrap();
        let mut process = tokio::process::Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // It says when it listens; wait for that line rather than polling the port.
        let mut lines = BufReader::new(process.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        loop {
            match lines.next_line().await.unwrap() {
                Some(line) if line.contains(&format!("listening on {address}")) => break,
                Some(line) => seen.push(line),
                None => panic!("docker-registry exited before listening: {seen:#?}"),
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Some(Registry {
            _process: process,
            _dir: dir,
            address,
        })
    }

    fn credentials(&self) -> DockerCredentials {
        DockerCredentials {
            username: Some(USER.into()),
            password: Some(PASSWORD.into()),
            serveraddress: Some(self.address.clone()),
            ..DockerCredentials::default()
        }
    }
}

async fn docker() -> Docker {
    Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
}

async fn remove_local(docker: &Docker, image: &str) {
    let options = RemoveImageOptionsBuilder::default().noprune(true).build();
    docker
        .remove_image(image, Some(options), None)
        .await
        .unwrap();
}

async fn present(docker: &Docker, image: &str) -> bool {
    docker.inspect_image(image).await.is_ok()
}

async fn run(executor: &DockerExecutor, job: &ExecSpec) -> (ExecOutcome, Collected) {
    let (tx, rx) = mpsc::channel(256);
    let (_stop, signal) = stop_pair();
    let outcome = executor.run(job, &tx, signal).await;
    drop(tx);
    (outcome, collect(rx).await)
}

fn system(output: &Collected) -> String {
    String::from_utf8_lossy(&output.system).into_owned()
}

#[tokio::test]
async fn images_are_pulled_from_a_registry_as_the_policy_says_with_the_hosts_credentials() {
    let Some(base) = executor().await else {
        return;
    };
    let Some(registry) = Registry::start().await else {
        return;
    };
    let docker = docker().await;
    // Push the local busybox to the registry under a name only this test uses, then remove
    // that name locally: the runner has to fetch it.
    let repo = format!("{}/tinyci-test/pulled", registry.address);
    let image = format!("{repo}:1");
    let tag = TagImageOptionsBuilder::default()
        .repo(&repo)
        .tag("1")
        .build();
    docker.tag_image(IMAGE, Some(tag)).await.unwrap();
    let push = PushImageOptionsBuilder::default().tag("1").build();
    let mut pushing = docker.push_image(&repo, Some(push), Some(registry.credentials()));
    while let Some(step) = pushing.next().await {
        let step = step.unwrap();
        assert!(step.error_detail.is_none(), "push failed: {step:?}");
    }
    remove_local(&docker, &image).await;
    assert!(!present(&docker, &image).await);

    // The host's Docker configuration, as `docker login` writes it.
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("config.json");
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    };
    std::fs::write(
        &config,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            registry.address
        ),
    )
    .unwrap();
    let host_auth = RegistryAuth::load(&config).unwrap();

    let source = tempfile::tempdir().unwrap();
    let mut job = spec(source.path(), &["echo pulled and ran"]);
    job.image = image.clone();
    // Local or repo work: the host's credentials may serve it.
    job.registry_credentials = true;

    // `never`: the image is not here, so the run errors and says why; nothing is pulled.
    let never = base
        .clone()
        .with_pulls(PullPolicy::Never, host_auth.clone());
    let (outcome, _) = run(&never, &job).await;
    assert_eq!(outcome.verdict, Verdict::Errored, "{outcome:?}");
    assert!(
        outcome.message.contains("not on this runner host")
            && outcome
                .message
                .contains("this runner's pull policy is never"),
        "{outcome:?}"
    );
    assert!(!present(&docker, &image).await);

    // Without the host's credentials the registry refuses, and the error says what is missing.
    let anonymous = base
        .clone()
        .with_pulls(PullPolicy::Missing, RegistryAuth::default());
    let (outcome, _) = run(&anonymous, &job).await;
    assert_eq!(outcome.verdict, Verdict::Errored, "{outcome:?}");
    assert!(
        outcome.message.contains(&format!(
            "no credentials for {} in this host's Docker configuration",
            registry.address
        )),
        "{outcome:?}"
    );

    // A fork's or a partner's run pulls anonymously even where the host has credentials:
    // it cannot name a private image and print what is in it.
    let mut untrusted = job.clone();
    untrusted.registry_credentials = false;
    let missing = base
        .clone()
        .with_pulls(PullPolicy::Missing, host_auth.clone());
    let (outcome, _) = run(&missing, &untrusted).await;
    assert_eq!(outcome.verdict, Verdict::Errored, "{outcome:?}");
    assert!(outcome.message.contains("pulls anonymously"), "{outcome:?}");
    assert!(!present(&docker, &image).await);

    // `missing`, with credentials: pulled, with progress in the system stream, then run.
    let missing = base
        .clone()
        .with_pulls(PullPolicy::Missing, host_auth.clone());
    let (outcome, output) = run(&missing, &job).await;
    assert_eq!(
        outcome.verdict,
        Verdict::Passed,
        "{outcome:?} {}",
        system(&output)
    );
    assert_eq!(output.stdout, b"pulled and ran\n");
    let log = system(&output);
    assert!(
        log.contains(&format!(
            "pulling image {image} (it is not on this host; this runner's policy: missing)"
        )),
        "{log}"
    );
    assert!(log.contains("Digest: sha256:"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    assert!(present(&docker, &image).await);

    // Now on the host, pulled with credentials: untrusted work still may not use it, since
    // it could not pull it anonymously.
    let (outcome, _) = run(&missing, &untrusted).await;
    assert_eq!(outcome.verdict, Verdict::Errored, "{outcome:?}");
    assert!(outcome.message.contains("pulls anonymously"), "{outcome:?}");

    // `missing` again: the image is here now, so no pull.
    let (outcome, output) = run(&missing, &job).await;
    assert_eq!(outcome.verdict, Verdict::Passed, "{outcome:?}");
    assert!(
        !system(&output).contains("pulling image"),
        "{}",
        system(&output)
    );

    // `always`: pulls although the image is here (a moved tag is followed).
    let always = base
        .clone()
        .with_pulls(PullPolicy::Always, host_auth.clone());
    let (outcome, output) = run(&always, &job).await;
    assert_eq!(outcome.verdict, Verdict::Passed, "{outcome:?}");
    assert!(
        system(&output).contains("(the pull policy is always; this runner's policy: always)"),
        "{}",
        system(&output)
    );

    // The queue's policy overrides the runner's: a `never` runner pulls for an `always`
    // queue, and an `always` runner does not for a `never` queue.
    remove_local(&docker, &image).await;
    let mut queued = job.clone();
    queued.pull = Some(PullPolicy::Always);
    let (outcome, output) = run(&never, &queued).await;
    assert_eq!(outcome.verdict, Verdict::Passed, "{outcome:?}");
    assert!(
        system(&output).contains("the queue's policy: always"),
        "{}",
        system(&output)
    );
    remove_local(&docker, &image).await;
    queued.pull = Some(PullPolicy::Never);
    let (outcome, _) = run(&always, &queued).await;
    assert_eq!(outcome.verdict, Verdict::Errored, "{outcome:?}");
    assert!(
        outcome.message.contains("the queue's pull policy is never"),
        "{outcome:?}"
    );
}
