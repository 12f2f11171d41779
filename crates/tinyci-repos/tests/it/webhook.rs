use tinyci_repos::{PrAction, WebhookError, WebhookEvent, parse_event, verify_signature};

/// A header value and the error it must give.
type Case<'a> = (Option<&'a str>, fn(&WebhookError) -> bool);

// GitHub's documented test vector ("Validating webhook deliveries").
const SECRET: &[u8] = b"It's a Secret to Everybody";
const BODY: &[u8] = b"Hello, World!";
const GOOD: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[test]
fn good_signature_verifies() {
    verify_signature(SECRET, BODY, Some(GOOD)).unwrap();
}

#[test]
fn signature_errors_are_distinct() {
    let flipped = GOOD.replace("757107", "757108");
    let cases: [Case<'_>; 6] = [
        (None, |e| matches!(e, WebhookError::MissingSignature)),
        (Some(&GOOD[7..]), |e| {
            matches!(e, WebhookError::MalformedSignature { .. })
        }),
        (Some("sha1=757107ea0eb2509fc211221cce984b8a37570b6d"), |e| {
            matches!(e, WebhookError::MalformedSignature { .. })
        }),
        (Some(&GOOD[..GOOD.len() - 2]), |e| {
            matches!(e, WebhookError::MalformedSignature { .. })
        }),
        (
            Some("sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"),
            |e| {
                matches!(
                    e,
                    WebhookError::MalformedSignature {
                        reason: "not hexadecimal"
                    }
                )
            },
        ),
        (Some(&flipped), |e| {
            matches!(e, WebhookError::SignatureMismatch)
        }),
    ];
    for (header, expected) in cases {
        let err = verify_signature(SECRET, BODY, header).unwrap_err();
        assert!(expected(&err), "{header:?} gave {err}");
    }
    // The right signature under another secret, or over another body, does not match.
    assert!(matches!(
        verify_signature(b"other", BODY, Some(GOOD)),
        Err(WebhookError::SignatureMismatch)
    ));
    assert!(matches!(
        verify_signature(SECRET, b"Hello, World?", Some(GOOD)),
        Err(WebhookError::SignatureMismatch)
    ));
}

#[test]
fn signature_error_messages_say_what_failed() {
    let msg = |h| verify_signature(SECRET, BODY, h).unwrap_err().to_string();
    assert_eq!(msg(None), "missing X-Hub-Signature-256 header");
    assert_eq!(
        msg(Some("757107")),
        "malformed X-Hub-Signature-256 header: expected the prefix sha256="
    );
    assert_eq!(
        msg(Some("sha256=7571")),
        "malformed X-Hub-Signature-256 header: expected 64 hex digits"
    );
}

#[test]
fn ping_parses() {
    let event = parse_event("ping", &fixture("ping.json")).unwrap();
    assert_eq!(
        event,
        WebhookEvent::Ping {
            zen: "Anything added dilutes everything else.".to_owned(),
            hook_id: 109948940
        }
    );
}

#[test]
fn push_parses() {
    let event = parse_event("push", &fixture("push.json")).unwrap();
    assert_eq!(
        event,
        WebhookEvent::Push {
            repo: "octo-org/hello-world".to_owned(),
            git_ref: "refs/heads/feature/login".to_owned(),
            before: "6113728f27ae82c7b1a177c8d03f9e96e0adf246".to_owned(),
            after: "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".to_owned(),
            deleted: false,
            default_branch: "main".to_owned(),
            pusher: "octocat".to_owned(),
            head_commit_message: Some("Add login page\n\nWith a form.".to_owned()),
        }
    );
}

#[test]
fn branch_deletion_push_has_no_head_commit() {
    let mut push: serde_json::Value = serde_json::from_slice(&fixture("push.json")).unwrap();
    push["deleted"] = true.into();
    push["after"] = "0000000000000000000000000000000000000000".into();
    push["head_commit"] = serde_json::Value::Null;
    let body = serde_json::to_vec(&push).unwrap();
    match parse_event("push", &body).unwrap() {
        WebhookEvent::Push {
            deleted,
            head_commit_message,
            ..
        } => {
            assert!(deleted);
            assert_eq!(head_commit_message, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pull_request_opened_and_closed_parse() {
    let expect = |action| WebhookEvent::PullRequest {
        action,
        number: 42,
        repo: "octo-org/hello-world".to_owned(),
        head_sha: "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".to_owned(),
        head_ref: "feature/login".to_owned(),
        head_repo: Some("octo-org/hello-world".to_owned()),
        base_ref: "main".to_owned(),
        base_sha: "6113728f27ae82c7b1a177c8d03f9e96e0adf246".to_owned(),
        merge_commit_sha: None,
        title: "Add a login page".to_owned(),
        default_branch: "main".to_owned(),
    };
    let opened = parse_event("pull_request", &fixture("pull_request_opened.json")).unwrap();
    assert_eq!(opened, expect(PrAction::Opened));
    let closed = parse_event("pull_request", &fixture("pull_request_closed.json")).unwrap();
    assert_eq!(closed, expect(PrAction::Closed));

    let mut labeled: serde_json::Value =
        serde_json::from_slice(&fixture("pull_request_opened.json")).unwrap();
    labeled["action"] = "labeled".into();
    let labeled = parse_event("pull_request", &serde_json::to_vec(&labeled).unwrap()).unwrap();
    assert_eq!(labeled, expect(PrAction::Other("labeled".to_owned())));

    // Once GitHub has computed the test merge, the payload names it.
    let mut merged: serde_json::Value =
        serde_json::from_slice(&fixture("pull_request_opened.json")).unwrap();
    let merge = "e5bd3914e2e596debea16f433f57875b5b90bcd6";
    merged["pull_request"]["merge_commit_sha"] = merge.into();
    match parse_event("pull_request", &serde_json::to_vec(&merged).unwrap()).unwrap() {
        WebhookEvent::PullRequest {
            merge_commit_sha, ..
        } => assert_eq!(merge_commit_sha.as_deref(), Some(merge)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_events_are_ignored_and_bad_payloads_refused() {
    assert_eq!(
        parse_event("issues", b"{}").unwrap(),
        WebhookEvent::Ignored {
            event: "issues".to_owned()
        }
    );
    let err = parse_event("push", b"{\"ref\": 1}").unwrap_err();
    assert!(matches!(err, WebhookError::Payload { .. }), "{err}");
    assert!(
        err.to_string().starts_with("malformed push payload: "),
        "{err}"
    );
    let huge = vec![b' '; tinyci_repos::MAX_WEBHOOK_BYTES + 1];
    assert!(matches!(
        parse_event("push", &huge),
        Err(WebhookError::TooLarge { .. })
    ));
}
