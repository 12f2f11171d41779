//! Every client operation against the fake GitHub, asserting what it recorded. The first
//! test to run makes real HTTP calls through octocrab, so a second rustls crypto provider
//! (the "Could not automatically determine the process-level CryptoProvider" panic) fails
//! here.

use serde_json::json;
use tinyci_fakegithub::FakeGitHub;
use tinyci_repos::{
    ApiError, CommitStatus, GitHub, GitHubConfig, NewHook, OAuthApp, RepoName, StatusState,
};

const TOKEN: &str = "gho_testtoken";
const REPO: &str = "octo-org/hello-world";
const SHA: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";

fn repo() -> RepoName {
    REPO.parse().unwrap()
}

async fn setup() -> (FakeGitHub, GitHub) {
    let fake = FakeGitHub::start().await;
    fake.add_repo(REPO);
    fake.add_user(TOKEN, "octocat", 583231);
    let github = GitHub::new(&GitHubConfig {
        api_base: fake.api_url(),
        web_base: fake.web_url(),
        token: Some(TOKEN.to_owned()),
    })
    .unwrap();
    (fake, github)
}

#[tokio::test]
async fn authenticated_user() {
    let (fake, github) = setup().await;
    let user = github.authenticated_user().await.unwrap();
    assert_eq!((user.login.as_str(), user.id), ("octocat", 583231));
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].method.as_str(), calls[0].path.as_str()),
        ("GET", "/user")
    );
    assert_eq!(calls[0].token.as_deref(), Some(TOKEN));
}

#[tokio::test]
async fn bad_token_is_a_clear_error() {
    let (_fake, github) = setup().await;
    let err = github.user_of_token("nope").await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert_eq!(
        err.to_string(),
        "failed to read the authenticated user (GET /user): GitHub answered 401: Bad credentials"
    );
}

#[tokio::test]
async fn create_then_delete_webhook() {
    let (fake, github) = setup().await;
    let hook = NewHook {
        url: "https://ci.example.org/hooks/github".to_owned(),
        secret: "s3cret".to_owned(),
    };
    let id = github.create_webhook(&repo(), &hook).await.unwrap();
    let hooks = fake.hooks(REPO);
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].id, id.0);
    assert_eq!(hooks[0].events, ["push", "pull_request"]);
    assert_eq!(hooks[0].url, hook.url);
    assert_eq!(hooks[0].content_type, "json");
    assert_eq!(hooks[0].secret, "s3cret");
    assert!(hooks[0].active);

    github.delete_webhook(&repo(), id).await.unwrap();
    assert!(fake.hooks(REPO).is_empty());

    let calls: Vec<(String, String)> = fake
        .calls()
        .into_iter()
        .map(|c| (c.method, c.path))
        .collect();
    assert_eq!(
        calls,
        [
            ("POST".to_owned(), format!("/repos/{REPO}/hooks")),
            ("DELETE".to_owned(), format!("/repos/{REPO}/hooks/{id}")),
        ]
    );
    assert_eq!(
        fake.calls()[0].body,
        Some(json!({
            "name": "web",
            "active": true,
            "events": ["push", "pull_request"],
            "config": {
                "url": "https://ci.example.org/hooks/github",
                "content_type": "json",
                "secret": "s3cret",
                "insecure_ssl": "0",
            },
        }))
    );

    // Deleting it again names the hook and the repository.
    let err = github.delete_webhook(&repo(), id).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "failed to delete webhook {id} on {REPO} (DELETE /repos/{REPO}/hooks/{id}): \
             GitHub answered 404: Not Found"
        )
    );
}

#[tokio::test]
async fn unknown_repository_is_a_404() {
    let (_fake, github) = setup().await;
    let other: RepoName = "octo-org/missing".parse().unwrap();
    let hook = NewHook {
        url: "https://x.invalid/h".to_owned(),
        secret: "s".to_owned(),
    };
    let err = github.create_webhook(&other, &hook).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert!(
        err.to_string()
            .contains("create webhook on octo-org/missing"),
        "{err}"
    );
}

#[tokio::test]
async fn status_sequence() {
    let (fake, github) = setup().await;
    let status = |state, description: &str| CommitStatus {
        state,
        context: "tinyci/test".to_owned(),
        description: description.to_owned(),
        target_url: Some("https://ci.example.org/runs/r-1".to_owned()),
    };
    github
        .set_status(&repo(), SHA, &status(StatusState::Pending, "queued"))
        .await
        .unwrap();
    github
        .set_status(
            &repo(),
            SHA,
            &status(StatusState::Pending, "started on runner-1"),
        )
        .await
        .unwrap();
    let long = "x".repeat(300);
    github
        .set_status(&repo(), SHA, &status(StatusState::Failure, &long))
        .await
        .unwrap();

    let seen: Vec<(String, String)> = fake
        .statuses(REPO, SHA)
        .into_iter()
        .map(|s| {
            assert_eq!(s.context, "tinyci/test");
            assert_eq!(
                s.target_url.as_deref(),
                Some("https://ci.example.org/runs/r-1")
            );
            (s.state, s.description)
        })
        .collect();
    let cut = format!("{}…", "x".repeat(139));
    assert_eq!(
        seen,
        [
            ("pending".to_owned(), "queued".to_owned()),
            ("pending".to_owned(), "started on runner-1".to_owned()),
            ("failure".to_owned(), cut),
        ]
    );
    assert!(
        fake.calls()
            .iter()
            .all(|c| c.path == format!("/repos/{REPO}/statuses/{SHA}"))
    );

    // Not a sha: refused before any request.
    let err = github
        .set_status(&repo(), "main", &status(StatusState::Success, "ok"))
        .await;
    assert!(matches!(err, Err(ApiError::Invalid(_))), "{err:?}");
    assert_eq!(fake.calls().len(), 3);
}

#[tokio::test]
async fn comment() {
    let (fake, github) = setup().await;
    let id = github
        .create_comment(&repo(), 42, "task.yml: line 3: bad")
        .await
        .unwrap();
    assert!(id > 0);
    assert_eq!(fake.comments(REPO, 42), ["task.yml: line 3: bad"]);
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, format!("/repos/{REPO}/issues/42/comments"));
    assert_eq!(
        calls[0].body,
        Some(json!({ "body": "task.yml: line 3: bad" }))
    );
}

#[tokio::test]
async fn file_content_at_ref() {
    let (fake, github) = setup().await;
    let yml = "queue: default\nruns:\n  - test\n".repeat(20);
    fake.set_file(REPO, "main", "tinyci.yml", yml.as_bytes());
    fake.set_file(REPO, "feature/x", "ci/a b.yml", b"other");

    let got = github
        .get_file(&repo(), "tinyci.yml", "main")
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(yml.as_bytes()));
    let got = github
        .get_file(&repo(), "ci/a b.yml", "feature/x")
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"other"[..]));
    assert_eq!(
        github
            .get_file(&repo(), "tinyci.yml", "other")
            .await
            .unwrap(),
        None
    );

    let paths: Vec<String> = fake.calls().into_iter().map(|c| c.path).collect();
    assert_eq!(
        paths,
        [
            format!("/repos/{REPO}/contents/tinyci.yml?ref=main"),
            format!("/repos/{REPO}/contents/ci/a%20b.yml?ref=feature%2Fx"),
            format!("/repos/{REPO}/contents/tinyci.yml?ref=other"),
        ]
    );
    assert!(matches!(
        github.get_file(&repo(), "../etc/passwd", "main").await,
        Err(ApiError::Invalid(_))
    ));
}

#[tokio::test]
async fn tarball_download_and_size_limit() {
    let (fake, github) = setup().await;
    let tarball: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    fake.set_tarball(REPO, SHA, &tarball);

    let got = github
        .download_tarball(&repo(), SHA, 1 << 20)
        .await
        .unwrap();
    assert_eq!(got, tarball);
    let exact = github
        .download_tarball(&repo(), SHA, 100_000)
        .await
        .unwrap();
    assert_eq!(exact.len(), 100_000);

    let err = github
        .download_tarball(&repo(), SHA, 99_999)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::TooLarge { limit: 99_999, .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "failed to download tarball of {REPO}@{SHA} (GET /repos/{REPO}/tarball/{SHA}): \
             response larger than the limit of 99999 bytes"
        )
    );

    // GitHub redirects to codeload; the client follows.
    let paths: Vec<String> = fake.calls().into_iter().map(|c| c.path).take(2).collect();
    assert_eq!(
        paths,
        [
            format!("/repos/{REPO}/tarball/{SHA}"),
            format!("/_codeload/{REPO}/legacy.tar.gz/{SHA}"),
        ]
    );

    // Streamed without Content-Length: refused once the limit is passed.
    fake.set_chunked_tarballs(true);
    let got = github
        .download_tarball(&repo(), SHA, 100_000)
        .await
        .unwrap();
    assert_eq!(got, tarball);
    let err = github
        .download_tarball(&repo(), SHA, 50_000)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::TooLarge { limit: 50_000, .. }),
        "{err}"
    );

    let missing = "1111111111111111111111111111111111111111";
    let err = github
        .download_tarball(&repo(), missing, 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
}

#[tokio::test]
async fn oauth_exchange() {
    let (fake, github) = setup().await;
    fake.add_oauth_code("good-code", "Iv1.app", "app-secret", "gho_user_token");
    fake.add_user("gho_user_token", "hubot", 42);
    let app = OAuthApp {
        client_id: "Iv1.app".to_owned(),
        client_secret: "app-secret".to_owned(),
    };

    let token = github
        .exchange_oauth_code(&app, "good-code", None)
        .await
        .unwrap();
    assert_eq!(token.access_token, "gho_user_token");
    assert_eq!(token.token_type, "bearer");
    assert!(!format!("{token:?}").contains("gho_user_token"));
    let user = github.user_of_token(&token.access_token).await.unwrap();
    assert_eq!((user.login.as_str(), user.id), ("hubot", 42));

    let calls = fake.calls();
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].path, "/web/login/oauth/access_token");
    assert_eq!(
        calls[0].token, None,
        "the API token must not go to the web host"
    );
    assert_eq!(
        calls[0].body,
        Some(json!({ "client_id": "Iv1.app", "client_secret": "app-secret", "code": "good-code" }))
    );

    // Codes are single use; an unknown code is refused with GitHub's reason.
    let err = github
        .exchange_oauth_code(&app, "good-code", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::OAuthRefused { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "failed to exchange the OAuth code (POST /login/oauth/access_token): GitHub refused the \
         code: bad_verification_code: The code passed is incorrect or expired."
    );

    fake.add_oauth_code("code-2", "Iv1.app", "app-secret", "t2");
    let wrong = OAuthApp {
        client_secret: "wrong".to_owned(),
        ..app
    };
    let err = github
        .exchange_oauth_code(&wrong, "code-2", None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("incorrect_client_credentials"),
        "{err}"
    );
}

/// With two rustls providers compiled in (octocrab's default is `ring`), building a rustls
/// config without naming a provider panics; this crate must compile exactly one.
#[test]
fn exactly_one_crypto_provider() {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    assert!(!config.alpn_protocols.iter().any(|p| p.is_empty()));
}

#[test]
fn bad_base_urls_are_refused_by_name() {
    let config = |api: &str, web: &str| GitHubConfig {
        api_base: api.to_owned(),
        web_base: web.to_owned(),
        token: None,
    };
    let err = GitHub::new(&config("api.github.com", "https://github.com")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid GitHub API base URL \"api.github.com\""
    );
    let err =
        GitHub::new(&config("https://api.github.com", "https://github.com/?x=1")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid GitHub web base URL \"https://github.com/?x=1\""
    );
}

#[tokio::test]
async fn comparisons_list_changed_paths_and_unknown_ones_mean_run_everything() {
    let (fake, github) = setup().await;
    let (base, head) = ("a".repeat(40), "b".repeat(40));
    fake.set_comparison(REPO, &base, &head, &["dokumentë/x.md", "api/lib.rs"]);
    let paths = github.changed_paths(&repo(), &base, &head).await.unwrap();
    assert_eq!(
        paths,
        Some(vec!["dokumentë/x.md".to_owned(), "api/lib.rs".to_owned()])
    );
    // A branch name as the base (a new branch against the default branch) is allowed.
    assert_eq!(
        github.changed_paths(&repo(), "main", &head).await.unwrap(),
        None
    );
    let calls = fake.calls();
    assert_eq!(
        calls.last().map(|c| c.path.as_str()),
        Some(format!("/repos/{REPO}/compare/main...{head}").as_str())
    );
    // A head that is not a commit id is refused before any request.
    assert!(github.changed_paths(&repo(), &base, "main").await.is_err());

    fake.set_pull_merge(REPO, 3, Some(&head));
    fake.set_pull_merge(REPO, 4, None);
    assert_eq!(
        github.pull_request_merge_commit(&repo(), 3).await.unwrap(),
        Some(head.clone())
    );
    assert_eq!(
        github.pull_request_merge_commit(&repo(), 4).await.unwrap(),
        None
    );
    assert_eq!(
        github.pull_request_merge_commit(&repo(), 5).await.unwrap(),
        None
    );

    fake.set_commit_parents(REPO, &head, &[&base]);
    assert_eq!(
        github.commit_parents(&repo(), &head).await.unwrap(),
        Some(vec![base.clone()])
    );
    assert_eq!(github.commit_parents(&repo(), &base).await.unwrap(), None);
}
