//! Property: appending any blocks to any token never allows an operation the original token
//! denies. The appended blocks are not only our own attenuations but arbitrary Datalog a
//! hostile holder might write: facts claiming rights, scopes or holders, rules, and checks.
//! A token whose blocks are not checks over the request is refused outright (the last tests
//! say why), which cannot widen anything either.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::{BlockBuilder, UnverifiedBiscuit};
use proptest::prelude::*;
use tinyci_grant::{
    Attenuation, Context, GrantError, GrantSpec, MAX_BLOCKS, Operation, Right, RootKey,
    UnverifiedToken, mint, verify,
};

const HOLDERS: [&str; 4] = ["site:beta", "runner:r1", "admin:ana", "user:ana"];
const REPOS: [&str; 3] = ["org/x", "org/y", "*"];
const QUEUES: [&str; 3] = ["a", "gpu", "*"];

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

fn subset(all: &[&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(all.to_vec(), 0..=all.len())
}

prop_compose! {
    fn grant_spec()(
        holder in proptest::sample::select(HOLDERS.to_vec()),
        rights in proptest::sample::subsequence(Right::ALL.to_vec(), 1..=3),
        repos in subset(&REPOS),
        queues in subset(&QUEUES),
        expiry in prop_oneof![Just(None), (-100i64..100).prop_map(Some)],
    ) -> GrantSpec {
        let rights: std::collections::BTreeSet<Right> = rights.into_iter().collect();
        let mut repos: std::collections::BTreeSet<String> = repos.into_iter().map(String::from).collect();
        let mut queues: std::collections::BTreeSet<String> = queues.into_iter().map(String::from).collect();
        // Keep the spec mintable: scoped rights need a scope, scopes need a right.
        if rights.iter().any(|r| r.scope_kind() == tinyci_grant::ScopeKind::Repo) {
            if repos.is_empty() { repos.insert("org/x".into()); }
        } else {
            repos.clear();
        }
        if rights.contains(&Right::QueueTake) {
            if queues.is_empty() { queues.insert("a".into()); }
        } else {
            queues.clear();
        }
        GrantSpec {
            site: "alpha".into(),
            holder: holder.parse().unwrap(),
            rights,
            repos,
            queues,
            expires_at: expiry.map(|s| if s < 0 { now() - Duration::from_secs(s.unsigned_abs()) } else { now() + Duration::from_secs(s as u64) }),
            single_use: false,
        }
    }
}

/// One appended block: either our own attenuation, or hostile Datalog.
#[derive(Clone, Debug)]
enum Appended {
    Ours(Attenuation),
    Hostile(String),
}

fn hostile_block() -> impl Strategy<Value = String> {
    let lines = prop_oneof![
        Just("right(\"admin\");".to_owned()),
        Just("right(\"queue:take\"); queue(\"*\");".to_owned()),
        Just("repo(\"*\"); right(\"queue:submit\"); right(\"logs:read\");".to_owned()),
        proptest::sample::select(HOLDERS.to_vec())
            .prop_map(|h| format!("holder(\"{h}\"); peer(\"{h}\");")),
        Just("site(\"alpha\"); this_site(\"alpha\");".to_owned()),
        Just("granted(\"repo\", \"org/y\"); granted(\"queue\", \"b\");".to_owned()),
        Just("right($op) <- operation($op);".to_owned()),
        Just(
            "repo($n) <- resource(\"repo\", $n); queue($n) <- resource(\"queue\", $n);".to_owned()
        ),
        Just("check if true;".to_owned()),
        Just("check if operation($op);".to_owned()),
        Just("time(2020-01-01T00:00:00Z);".to_owned()),
    ];
    proptest::collection::vec(lines, 1..4).prop_map(|l| l.join("\n"))
}

fn appended() -> impl Strategy<Value = Appended> {
    let ours = (
        subset(&["a", "gpu", "b"]),
        subset(&["org/x", "org/y"]),
        proptest::sample::subsequence(Right::ALL.to_vec(), 0..=2),
        prop_oneof![Just(None), (-100i64..100).prop_map(Some)],
    )
        .prop_filter_map("empty attenuation", |(queues, repos, rights, ttl)| {
            let a = Attenuation {
                queues: queues.into_iter().map(String::from).collect(),
                repos: repos.into_iter().map(String::from).collect(),
                rights,
                expires_at: ttl.map(|s: i64| {
                    if s < 0 {
                        now() - Duration::from_secs(s.unsigned_abs())
                    } else {
                        now() + Duration::from_secs(s as u64)
                    }
                }),
            };
            let empty = a.queues.is_empty()
                && a.repos.is_empty()
                && a.rights.is_empty()
                && a.expires_at.is_none();
            (!empty).then_some(Appended::Ours(a))
        });
    prop_oneof![ours, hostile_block().prop_map(Appended::Hostile)]
}

fn append(text: &str, block: &Appended) -> String {
    match block {
        Appended::Ours(a) => UnverifiedToken::parse(text).unwrap().attenuate(a).unwrap(),
        Appended::Hostile(code) => {
            let token = UnverifiedBiscuit::from_base64(text).unwrap();
            let block = BlockBuilder::new().code(code).unwrap();
            token.append(block).unwrap().to_base64().unwrap()
        }
    }
}

/// Every operation and peer worth asking about.
fn questions() -> Vec<(Operation, Vec<String>)> {
    let mut out = Vec::new();
    for right in Right::ALL {
        let resources: Vec<&str> = match right.scope_kind() {
            tinyci_grant::ScopeKind::Repo => vec!["org/x", "org/y", "org/z"],
            tinyci_grant::ScopeKind::Queue => vec!["a", "gpu", "b"],
            tinyci_grant::ScopeKind::Site => vec!["alpha"],
        };
        for resource in resources {
            for holder in HOLDERS {
                out.push((Operation::new(right, resource), vec![holder.to_owned()]));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn appended_blocks_never_widen(spec in grant_spec(), blocks in proptest::collection::vec(appended(), 1..4)) {
        let root = RootKey::generate();
        let (original, _) = mint(&root, &spec).unwrap();
        let mut narrowed = original.clone();
        for block in &blocks {
            narrowed = append(&narrowed, block);
        }
        let original = verify(&original, &root).unwrap();
        // Facts and rules are refused; checks over the request are not.
        let hostile = blocks.iter().any(|b| {
            matches!(b, Appended::Hostile(code) if code.lines().any(|l| !l.starts_with("check if")))
        });
        let narrowed = match verify(&narrowed, &root) {
            Ok(narrowed) => narrowed,
            // Refused: it allows nothing at all.
            Err(GrantError::Malformed(why)) if hostile => {
                prop_assert!(why.contains("not an attenuation"), "{why}");
                return Ok(());
            }
            Err(e) => panic!("appending {blocks:?} made the token unreadable: {e}"),
        };
        for (op, peer) in questions() {
            let ctx = Context { this_site: "alpha", peer: &peer, now: now() };
            if narrowed.authorize(&op, &ctx).is_ok() {
                prop_assert!(
                    original.authorize(&op, &ctx).is_ok(),
                    "appending {blocks:?} allowed {op} for {peer:?}, which the original denies"
                );
            }
        }
    }
}

/// The property above only means something if the appended blocks sometimes leave operations
/// allowed; this pins that the generator is not vacuous.
#[test]
fn some_narrowed_tokens_still_allow_something() {
    let root = RootKey::generate();
    let spec = GrantSpec {
        site: "alpha".into(),
        holder: "site:beta".parse().unwrap(),
        rights: [Right::QueueTake].into(),
        repos: Default::default(),
        queues: ["*".to_string()].into(),
        expires_at: None,
        single_use: false,
    };
    let (text, _) = mint(&root, &spec).unwrap();
    let hostile = append(
        &text,
        &Appended::Hostile("check if true; check if operation($op);".into()),
    );
    let token = verify(&hostile, &root).unwrap();
    let peer = vec!["site:beta".to_owned()];
    let ctx = Context {
        this_site: "alpha",
        peer: &peer,
        now: now(),
    };
    token
        .authorize(&Operation::new(Right::QueueTake, "gpu"), &ctx)
        .unwrap();
    let err = token
        .authorize(&Operation::new(Right::Admin, "alpha"), &ctx)
        .unwrap_err();
    assert!(err.to_string().contains("no admin right"), "{err}");
}

fn mint_logs_reader(root: &RootKey) -> String {
    let spec = GrantSpec {
        site: "alpha".into(),
        holder: "user:ana".parse().unwrap(),
        rights: [Right::LogsRead].into(),
        repos: ["org/x".to_string()].into(),
        queues: Default::default(),
        expires_at: None,
        single_use: false,
    };
    mint(root, &spec).unwrap().0
}

/// A holder can append any Datalog to their own token without a key. Biscuit looks at its
/// time limit only between rule iterations, so one check joining 200 facts in five variables
/// (3·10¹¹ combinations, in a block of about 3 KB) would hold the site's thread for hours,
/// and a rule deriving their cross product would exhaust its memory. Such a token is refused
/// when it is read, before any Datalog runs.
#[test]
fn a_token_carrying_a_datalog_bomb_is_refused_before_it_runs() {
    let root = RootKey::generate();
    let text = mint_logs_reader(&root);
    let facts: String = (0..200).map(|i| format!("a({i});")).collect();
    for bomb in [
        format!(
            "{facts} check if a($a), a($b), a($c), a($d), a($e), $a + $b + $c + $d + $e == -1;"
        ),
        format!("{facts} b($a, $b, $c, $d) <- a($a), a($b), a($c), a($d);"),
        // No facts of its own: joins the authorizer's, still more than a check needs.
        "check if resource($k, $n), operation($o), time($t), $k == $k;".to_owned(),
        "check if right($r);".to_owned(),
        "check all operation($o);".to_owned(),
    ] {
        let bombed = append(&text, &Appended::Hostile(bomb.clone()));
        assert!(
            bombed.len() <= tinyci_grant::MAX_TOKEN_BYTES,
            "{}",
            bombed.len()
        );
        match verify(&bombed, &root) {
            Err(GrantError::Malformed(why)) => {
                assert!(why.contains("block 1 is not an attenuation"), "{why}");
            }
            other => panic!("accepted {bomb:.60}: {other:?}"),
        }
    }
}

/// Every redeemed token's revocation ids are remembered while it lives: blocks are capped, so
/// a holder cannot make one token cost the site a hundred of them.
#[test]
fn a_token_with_too_many_blocks_is_refused() {
    let root = RootKey::generate();
    let mut text = mint_logs_reader(&root);
    let narrowing = Attenuation {
        queues: Vec::new(),
        repos: vec!["org/x".to_string()],
        rights: Vec::new(),
        expires_at: None,
    };
    for _ in 1..MAX_BLOCKS {
        text = UnverifiedToken::parse(&text)
            .unwrap()
            .attenuate(&narrowing)
            .unwrap();
    }
    verify(&text, &root).unwrap();
    let text = UnverifiedToken::parse(&text)
        .unwrap()
        .attenuate(&narrowing)
        .unwrap();
    match verify(&text, &root) {
        Err(GrantError::Malformed(why)) => assert!(why.contains("at most 16"), "{why}"),
        other => panic!("accepted {} blocks: {other:?}", MAX_BLOCKS + 1),
    }
}
