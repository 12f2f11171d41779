//! The authorization matrix: every right × scope × attenuation × holder combination that
//! matters, each row asserting allowed or the exact denial text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tinyci_grant::{
    Attenuation, Context, GrantSpec, Operation, RootKey, UnverifiedToken, mint, verify,
};

/// A fixed "now" so expiry texts are stable: 2030-01-01T00:00:00Z.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

fn spec(holder: &str, rights: &[&str], repos: &[&str], queues: &[&str]) -> GrantSpec {
    GrantSpec {
        site: "alpha".into(),
        holder: holder.parse().unwrap(),
        rights: rights.iter().map(|r| r.parse().unwrap()).collect(),
        repos: repos.iter().map(|s| s.to_string()).collect(),
        queues: queues.iter().map(|s| s.to_string()).collect(),
        expires_at: Some(now() + Duration::from_secs(7 * 86_400)),
        single_use: false,
    }
}

/// The tokens of the matrix, by name.
fn tokens(root: &RootKey) -> BTreeMap<&'static str, String> {
    let specs = [
        (
            "beta-submit",
            spec("site:beta", &["queue:submit", "logs:read"], &["org/x"], &[]),
        ),
        ("r1-take-a", spec("runner:r1", &["queue:take"], &[], &["a"])),
        ("ana-admin", spec("admin:ana", &["admin"], &[], &[])),
        (
            "beta-take-any",
            spec("site:beta", &["queue:take"], &[], &["*"]),
        ),
        (
            "user-logs-any",
            spec("user:ana", &["logs:read", "assets:read"], &["*"], &[]),
        ),
        (
            "user-ops",
            spec(
                "user:ana",
                &["runs:cancel", "repos:modify", "users:modify"],
                &["*"],
                &[],
            ),
        ),
        (
            "beta-mixed",
            spec(
                "site:beta",
                &["queue:submit", "queue:take", "logs:write"],
                &["org/x", "org/y"],
                &["a", "gpu"],
            ),
        ),
    ];
    let mut out = BTreeMap::new();
    for (name, spec) in specs {
        out.insert(name, mint(root, &spec).unwrap().0);
    }
    let expired = GrantSpec {
        expires_at: Some(now() - Duration::from_secs(1)),
        ..spec("site:beta", &["queue:submit"], &["org/x"], &[])
    };
    out.insert("beta-expired", mint(root, &expired).unwrap().0);
    out
}

/// An attenuation from a compact spelling: `queue=a`, `repo=org/x`, `right=logs:read`,
/// `ttl=-1` (already expired) or `ttl=60` (seconds from now), joined by spaces; `-` for none.
fn attenuation(spelling: &str) -> Option<Attenuation> {
    if spelling == "-" {
        return None;
    }
    let mut a = Attenuation::default();
    for part in spelling.split(' ') {
        let (key, value) = part.split_once('=').unwrap();
        match key {
            "queue" => a.queues.push(value.into()),
            "repo" => a.repos.push(value.into()),
            "right" => a.rights.push(value.parse().unwrap()),
            "ttl" => {
                let secs: i64 = value.parse().unwrap();
                a.expires_at = Some(if secs < 0 {
                    now() - Duration::from_secs(secs.unsigned_abs())
                } else {
                    now() + Duration::from_secs(secs.unsigned_abs())
                });
            }
            _ => panic!("bad attenuation spelling {part}"),
        }
    }
    Some(a)
}

const OK: &str = "allowed";

#[rustfmt::skip]
const CASES: &[(&str, &str, &str, &str, &str, &str)] = &[
    // token, attenuation, peer holder names (comma-separated), right, resource, expected
    // --- repo-scoped rights, exact repo scope
    ("beta-submit", "-", "site:beta", "queue:submit", "org/x", OK),
    ("beta-submit", "-", "site:beta", "logs:read", "org/x", OK),
    ("beta-submit", "-", "site:beta", "queue:submit", "org/y", "denied queue:submit on repo org/y: queue:submit is limited to repo org/x"),
    ("beta-submit", "-", "site:beta", "logs:read", "org/y", "denied logs:read on repo org/y: logs:read is limited to repo org/x"),
    ("beta-submit", "-", "site:beta", "logs:write", "org/x", "denied logs:write on repo org/x: the grant has no logs:write right (it has queue:submit, logs:read)"),
    ("beta-submit", "-", "site:beta", "assets:read", "org/x", "denied assets:read on repo org/x: the grant has no assets:read right (it has queue:submit, logs:read)"),
    ("beta-submit", "-", "site:beta", "queue:take", "a", "denied queue:take on queue a: the grant has no queue:take right (it has queue:submit, logs:read)"),
    ("beta-submit", "-", "site:beta", "admin", "alpha", "denied admin on site alpha: the grant has no admin right (it has queue:submit, logs:read)"),
    // --- holder binding
    ("beta-submit", "-", "site:gamma", "queue:submit", "org/x", "token refused: it is bound to site:beta, which this connection is not"),
    ("beta-submit", "-", "runner:r1", "queue:submit", "org/x", "token refused: it is bound to site:beta, which this connection is not"),
    ("beta-submit", "-", "admin:ana", "logs:read", "org/x", "token refused: it is bound to site:beta, which this connection is not"),
    ("beta-submit", "-", "", "logs:read", "org/x", "token refused: it is bound to site:beta, which this connection is not"),
    ("beta-submit", "-", "runner:x,site:beta", "logs:read", "org/x", OK),
    // --- attenuation of repo-scoped rights
    ("beta-submit", "right=logs:read", "site:beta", "logs:read", "org/x", OK),
    ("beta-submit", "right=logs:read", "site:beta", "queue:submit", "org/x", "denied queue:submit on repo org/x: attenuation block 1 does not allow it (check if operation(\"logs:read\"))"),
    ("beta-submit", "repo=org/x", "site:beta", "queue:submit", "org/x", OK),
    ("beta-submit", "repo=org/y", "site:beta", "queue:submit", "org/x", "denied queue:submit on repo org/x: attenuation block 1 does not allow it (check if resource(\"repo\", \"org/y\") or resource($kind, $name), $kind != \"repo\")"),
    ("beta-submit", "repo=org/y", "site:beta", "queue:submit", "org/y", "denied queue:submit on repo org/y: queue:submit is limited to repo org/x"),
    ("beta-submit", "queue=a", "site:beta", "queue:submit", "org/x", OK),
    ("beta-submit", "ttl=60", "site:beta", "queue:submit", "org/x", OK),
    ("beta-submit", "ttl=-1", "site:beta", "queue:submit", "org/x", "token expired at 2029-12-31T23:59:59Z"),
    ("beta-submit", "ttl=-1", "site:beta", "logs:read", "org/x", "token expired at 2029-12-31T23:59:59Z"),
    ("beta-submit", "right=logs:read ttl=60", "site:beta", "logs:read", "org/x", OK),
    ("beta-submit", "right=logs:read ttl=60", "site:gamma", "logs:read", "org/x", "token refused: it is bound to site:beta, which this connection is not"),
    // --- queue-scoped right, exact queue scope
    ("r1-take-a", "-", "runner:r1", "queue:take", "a", OK),
    ("r1-take-a", "-", "runner:r1", "queue:take", "b", "denied queue:take on queue b: queue:take is limited to queue a"),
    ("r1-take-a", "-", "runner:r2", "queue:take", "a", "token refused: it is bound to runner:r1, which this connection is not"),
    ("r1-take-a", "-", "site:beta", "queue:take", "a", "token refused: it is bound to runner:r1, which this connection is not"),
    ("r1-take-a", "-", "runner:r1", "queue:submit", "org/x", "denied queue:submit on repo org/x: the grant has no queue:submit right (it has queue:take)"),
    ("r1-take-a", "-", "runner:r1", "logs:read", "org/x", "denied logs:read on repo org/x: the grant has no logs:read right (it has queue:take)"),
    ("r1-take-a", "-", "runner:r1", "admin", "alpha", "denied admin on site alpha: the grant has no admin right (it has queue:take)"),
    ("r1-take-a", "queue=a", "runner:r1", "queue:take", "a", OK),
    ("r1-take-a", "queue=b", "runner:r1", "queue:take", "a", "denied queue:take on queue a: attenuation block 1 does not allow it (check if resource(\"queue\", \"b\") or resource($kind, $name), $kind != \"queue\")"),
    ("r1-take-a", "repo=org/x", "runner:r1", "queue:take", "a", OK),
    ("r1-take-a", "right=logs:read", "runner:r1", "queue:take", "a", "denied queue:take on queue a: attenuation block 1 does not allow it (check if operation(\"logs:read\"))"),
    ("r1-take-a", "ttl=-1", "runner:r1", "queue:take", "a", "token expired at 2029-12-31T23:59:59Z"),
    // --- wildcard queue scope, attenuated by a partner to one queue
    ("beta-take-any", "-", "site:beta", "queue:take", "a", OK),
    ("beta-take-any", "-", "site:beta", "queue:take", "gpu", OK),
    ("beta-take-any", "queue=gpu", "site:beta", "queue:take", "gpu", OK),
    ("beta-take-any", "queue=gpu", "site:beta", "queue:take", "a", "denied queue:take on queue a: attenuation block 1 does not allow it (check if resource(\"queue\", \"gpu\") or resource($kind, $name), $kind != \"queue\")"),
    ("beta-take-any", "queue=gpu ttl=60", "site:beta", "queue:take", "gpu", OK),
    ("beta-take-any", "queue=gpu ttl=-1", "site:beta", "queue:take", "gpu", "token expired at 2029-12-31T23:59:59Z"),
    ("beta-take-any", "-", "site:beta", "queue:submit", "org/x", "denied queue:submit on repo org/x: the grant has no queue:submit right (it has queue:take)"),
    ("beta-take-any", "-", "runner:r1", "queue:take", "a", "token refused: it is bound to site:beta, which this connection is not"),
    // --- admin
    ("ana-admin", "-", "admin:ana", "admin", "alpha", OK),
    ("ana-admin", "-", "admin:bob", "admin", "alpha", "token refused: it is bound to admin:ana, which this connection is not"),
    ("ana-admin", "-", "admin:ana", "admin", "beta", "denied admin on site beta: the grant was issued for site alpha"),
    ("ana-admin", "-", "admin:ana", "queue:submit", "org/x", "denied queue:submit on repo org/x: the grant has no queue:submit right (it has admin)"),
    ("ana-admin", "-", "admin:ana", "queue:take", "a", "denied queue:take on queue a: the grant has no queue:take right (it has admin)"),
    ("ana-admin", "right=admin", "admin:ana", "admin", "alpha", OK),
    ("ana-admin", "right=logs:read", "admin:ana", "admin", "alpha", "denied admin on site alpha: attenuation block 1 does not allow it (check if operation(\"logs:read\"))"),
    ("ana-admin", "ttl=-1", "admin:ana", "admin", "alpha", "token expired at 2029-12-31T23:59:59Z"),
    ("ana-admin", "queue=a", "admin:ana", "admin", "alpha", OK),
    // --- wildcard repo scope for a user
    ("user-logs-any", "-", "user:ana", "logs:read", "org/x", OK),
    ("user-logs-any", "-", "user:ana", "logs:read", "any/repo", OK),
    ("user-logs-any", "-", "user:ana", "assets:read", "org/z", OK),
    ("user-logs-any", "-", "user:ana", "queue:submit", "org/x", "denied queue:submit on repo org/x: the grant has no queue:submit right (it has logs:read, assets:read)"),
    ("user-logs-any", "repo=org/x", "user:ana", "logs:read", "org/x", OK),
    ("user-logs-any", "repo=org/x", "user:ana", "logs:read", "org/y", "denied logs:read on repo org/y: attenuation block 1 does not allow it (check if resource(\"repo\", \"org/x\") or resource($kind, $name), $kind != \"repo\")"),
    ("user-logs-any", "right=assets:read", "user:ana", "logs:read", "org/x", "denied logs:read on repo org/x: attenuation block 1 does not allow it (check if operation(\"assets:read\"))"),
    ("user-logs-any", "-", "admin:ana", "logs:read", "org/x", "token refused: it is bound to user:ana, which this connection is not"),
    // --- cancelling runs (repo-scoped) and modifying repositories and users (site-scoped)
    ("user-ops", "-", "user:ana", "runs:cancel", "org/x", OK),
    ("user-ops", "-", "user:ana", "repos:modify", "alpha", OK),
    ("user-ops", "-", "user:ana", "users:modify", "alpha", OK),
    ("user-ops", "-", "user:ana", "admin", "alpha", "denied admin on site alpha: the grant has no admin right (it has runs:cancel, repos:modify, users:modify)"),
    ("user-ops", "-", "user:ana", "queue:submit", "org/x", "denied queue:submit on repo org/x: the grant has no queue:submit right (it has runs:cancel, repos:modify, users:modify)"),
    ("user-ops", "-", "user:bob", "users:modify", "alpha", "token refused: it is bound to user:ana, which this connection is not"),
    ("user-ops", "repo=org/x", "user:ana", "runs:cancel", "org/x", OK),
    ("user-ops", "repo=org/x", "user:ana", "runs:cancel", "org/y", "denied runs:cancel on repo org/y: attenuation block 1 does not allow it (check if resource(\"repo\", \"org/x\") or resource($kind, $name), $kind != \"repo\")"),
    ("user-ops", "repo=org/x", "user:ana", "users:modify", "alpha", OK),
    ("user-ops", "right=runs:cancel", "user:ana", "users:modify", "alpha", "denied users:modify on site alpha: attenuation block 1 does not allow it (check if operation(\"runs:cancel\"))"),
    ("user-ops", "ttl=-1", "user:ana", "repos:modify", "alpha", "token expired at 2029-12-31T23:59:59Z"),
    ("beta-submit", "-", "site:beta", "runs:cancel", "org/x", "denied runs:cancel on repo org/x: the grant has no runs:cancel right (it has queue:submit, logs:read)"),
    ("ana-admin", "-", "admin:ana", "users:modify", "alpha", "denied users:modify on site alpha: the grant has no users:modify right (it has admin)"),
    ("ana-admin", "-", "admin:ana", "repos:modify", "alpha", "denied repos:modify on site alpha: the grant has no repos:modify right (it has admin)"),
    // --- several rights and scopes at once
    ("beta-mixed", "-", "site:beta", "queue:submit", "org/y", OK),
    ("beta-mixed", "-", "site:beta", "queue:take", "gpu", OK),
    ("beta-mixed", "-", "site:beta", "logs:write", "org/x", OK),
    ("beta-mixed", "-", "site:beta", "queue:take", "org/x", "denied queue:take on queue org/x: queue:take is limited to queue a, gpu"),
    ("beta-mixed", "-", "site:beta", "queue:submit", "gpu", "denied queue:submit on repo gpu: queue:submit is limited to repo org/x, org/y"),
    ("beta-mixed", "-", "site:beta", "logs:read", "org/x", "denied logs:read on repo org/x: the grant has no logs:read right (it has queue:submit, queue:take, logs:write)"),
    ("beta-mixed", "queue=gpu", "site:beta", "queue:submit", "org/x", OK),
    ("beta-mixed", "queue=gpu", "site:beta", "queue:take", "a", "denied queue:take on queue a: attenuation block 1 does not allow it (check if resource(\"queue\", \"gpu\") or resource($kind, $name), $kind != \"queue\")"),
    ("beta-mixed", "repo=org/y right=queue:submit", "site:beta", "queue:submit", "org/y", OK),
    ("beta-mixed", "repo=org/y right=queue:submit", "site:beta", "queue:take", "gpu", "denied queue:take on queue gpu: attenuation block 1 does not allow it (check if operation(\"queue:submit\"))"),
    ("beta-mixed", "repo=org/y right=queue:submit", "site:beta", "queue:submit", "org/x", "denied queue:submit on repo org/x: attenuation block 1 does not allow it (check if resource(\"repo\", \"org/y\") or resource($kind, $name), $kind != \"repo\")"),
    // --- expired at mint
    ("beta-expired", "-", "site:beta", "queue:submit", "org/x", "token expired at 2029-12-31T23:59:59Z"),
    ("beta-expired", "ttl=60", "site:beta", "queue:submit", "org/x", "token expired at 2029-12-31T23:59:59Z"),
];

#[test]
fn authorization_matrix() {
    assert!(
        CASES.len() >= 60,
        "the matrix shrank to {} cases",
        CASES.len()
    );
    let root = RootKey::generate();
    let tokens = tokens(&root);
    let mut failures = Vec::new();
    for (i, &(token, narrowing, peer, right, resource, expected)) in CASES.iter().enumerate() {
        let mut text = tokens[token].clone();
        if let Some(a) = attenuation(narrowing) {
            text = UnverifiedToken::parse(&text)
                .unwrap()
                .attenuate(&a)
                .unwrap();
        }
        let verified = verify(&text, &root).unwrap();
        let peer: Vec<String> = peer
            .split(',')
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect();
        let ctx = Context {
            this_site: "alpha",
            peer: &peer,
            now: now(),
        };
        let op = Operation::new(right.parse().unwrap(), resource);
        let this_site = if right == "admin" && resource != "alpha" {
            // Ask as the named site would: a token of alpha presented at another site.
            Context {
                this_site: resource,
                ..ctx.clone()
            }
        } else {
            ctx
        };
        let got = match verified.authorize(&op, &this_site) {
            Ok(()) => OK.to_owned(),
            Err(e) => e.to_string(),
        };
        if got != expected {
            failures.push(format!(
                "case {i}: {token} [{narrowing}] as {peer:?}: {op}\n  expected: {expected}\n  got:      {got}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

/// A single-use grant says so in its signed authority block, so attenuation cannot drop it;
/// an ordinary grant is not single-use.
#[test]
fn single_use_is_part_of_the_signed_grant() {
    let root = RootKey::generate();
    let mut once = spec("runner:eph", &["queue:take"], &[], &["default"]);
    once.single_use = true;
    let (token, grant) = mint(&root, &once).unwrap();
    assert!(grant.single_use);
    let narrowed = UnverifiedToken::parse(&token)
        .unwrap()
        .attenuate(&Attenuation {
            queues: vec!["default".into()],
            ..Attenuation::default()
        })
        .unwrap();
    assert!(verify(&narrowed, &root).unwrap().grant().single_use);
    let (plain, _) = mint(
        &root,
        &spec("runner:r1", &["queue:take"], &[], &["default"]),
    )
    .unwrap();
    assert!(!verify(&plain, &root).unwrap().grant().single_use);
}
