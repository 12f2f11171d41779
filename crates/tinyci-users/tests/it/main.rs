//! Users over a real LMDB store in a temp dir, written through the group committer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tinyci_grant::{Context, Operation, RootKey, UnverifiedToken, mint, verify};
use tinyci_store::{GroupCommitter, GroupWriterThread, Store, StoreOptions};
use tinyci_users::{Capability, LinkOutcome, User, UserName, Users, UsersError, grant_spec};

/// A store in a temp dir and the users over it.
struct Fixture {
    users: Users,
    _writer: GroupWriterThread,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let (committer, writer) = GroupCommitter::start(store.clone()).unwrap();
    Fixture {
        users: Users::new(store, committer),
        _writer: writer,
        _dir: dir,
    }
}

fn name(s: &str) -> UserName {
    s.parse().unwrap()
}

fn caps(list: &[Capability]) -> BTreeSet<Capability> {
    list.iter().copied().collect()
}

#[tokio::test]
async fn added_users_are_listed_in_name_order_and_read_back() {
    let f = fixture();
    let bob = f
        .users
        .add(
            &name("bob"),
            caps(&[Capability::Logs]),
            None,
            "admin:root",
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(
        bob,
        User {
            name: name("bob"),
            capabilities: caps(&[Capability::Logs]),
            github: None,
            created_at: 1_000,
            created_by: "admin:root".into(),
        }
    );
    f.users
        .add(
            &name("ana"),
            caps(&[Capability::Submit, Capability::ModifyUser]),
            None,
            "admin:root",
            2_000,
        )
        .await
        .unwrap();
    f.users
        .add(&name("carol"), BTreeSet::new(), None, "admin:root", 3_000)
        .await
        .unwrap();

    let names: Vec<String> = f
        .users
        .list()
        .unwrap()
        .into_iter()
        .map(|u| u.name.to_string())
        .collect();
    assert_eq!(names, ["ana", "bob", "carol"]);
    let ana = f.users.get(&name("ana")).unwrap().unwrap();
    assert!(ana.has(Capability::Submit) && ana.has(Capability::ModifyUser));
    assert!(!ana.has(Capability::Logs));
    assert_eq!(ana.created_at, 2_000);
    assert_eq!(f.users.get(&name("dave")).unwrap(), None);
    assert_eq!(f.users.github_token_sealed(&name("ana")).unwrap(), None);
    let error = f.users.github_token_sealed(&name("dave")).unwrap_err();
    assert_eq!(error.to_string(), "no user named dave");
}

#[tokio::test]
async fn a_taken_name_is_refused_and_the_first_user_kept() {
    let f = fixture();
    f.users
        .add(
            &name("ana"),
            caps(&[Capability::Logs]),
            None,
            "admin:root",
            1,
        )
        .await
        .unwrap();
    let error = f
        .users
        .add(
            &name("ana"),
            caps(&[Capability::ModifyUser]),
            None,
            "admin:eve",
            2,
        )
        .await
        .unwrap_err();
    assert!(matches!(error, UsersError::Exists { .. }), "{error:?}");
    assert_eq!(error.to_string(), "user ana already exists");
    let ana = f.users.get(&name("ana")).unwrap().unwrap();
    assert_eq!(ana.capabilities, caps(&[Capability::Logs]));
    assert_eq!(ana.created_by, "admin:root");
}

#[tokio::test]
async fn setting_and_unsetting_a_capability_is_idempotent() {
    let f = fixture();
    f.users
        .add(
            &name("ana"),
            caps(&[Capability::Logs]),
            None,
            "admin:root",
            1,
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let ana = f
            .users
            .set_capability(&name("ana"), Capability::Cancel, true)
            .await
            .unwrap();
        assert_eq!(
            ana.capabilities,
            caps(&[Capability::Cancel, Capability::Logs])
        );
    }
    assert_eq!(
        f.users.get(&name("ana")).unwrap().unwrap().capabilities,
        caps(&[Capability::Cancel, Capability::Logs])
    );
    for _ in 0..2 {
        let ana = f
            .users
            .set_capability(&name("ana"), Capability::Logs, false)
            .await
            .unwrap();
        assert_eq!(ana.capabilities, caps(&[Capability::Cancel]));
    }
    assert_eq!(
        f.users.get(&name("ana")).unwrap().unwrap().capabilities,
        caps(&[Capability::Cancel])
    );
    let error = f
        .users
        .set_capability(&name("nobody"), Capability::Logs, true)
        .await
        .unwrap_err();
    assert!(matches!(error, UsersError::NoSuchUser { .. }), "{error:?}");
    assert_eq!(error.to_string(), "no user named nobody");
}

#[tokio::test]
async fn github_logins_create_then_refresh_and_never_take_a_linked_name() {
    let f = fixture();
    let defaults = caps(&[Capability::Submit, Capability::Logs]);

    // First login: a user named after the login, with the default capabilities.
    let (user, outcome) = f
        .users
        .link_github("OctoCat", 583_231, b"sealed-1".to_vec(), &defaults, 10)
        .await
        .unwrap();
    assert_eq!(outcome, LinkOutcome::Created);
    assert_eq!(
        user,
        User {
            name: name("octocat"),
            capabilities: defaults.clone(),
            github: Some(("OctoCat".into(), 583_231)),
            created_at: 10,
            created_by: "github".into(),
        }
    );
    assert_eq!(
        f.users.github_token_sealed(&name("octocat")).unwrap(),
        Some(b"sealed-1".to_vec())
    );

    // The same account after renaming itself on GitHub, with a new token: same site user.
    let (user, outcome) = f
        .users
        .link_github("octo-renamed", 583_231, b"sealed-2".to_vec(), &defaults, 20)
        .await
        .unwrap();
    assert_eq!(outcome, LinkOutcome::Refreshed);
    assert_eq!(user.name, name("octocat"));
    assert_eq!(user.github, Some(("octo-renamed".into(), 583_231)));
    assert_eq!(user.created_at, 10);
    assert_eq!(
        f.users.github_token_sealed(&name("octocat")).unwrap(),
        Some(b"sealed-2".to_vec())
    );
    assert_eq!(f.users.get(&name("octo-renamed")).unwrap(), None);

    // Another GitHub account that now has the login "octocat" must not become that user.
    let error = f
        .users
        .link_github("octocat", 999, b"sealed-x".to_vec(), &defaults, 30)
        .await
        .unwrap_err();
    assert!(matches!(error, UsersError::NameTaken { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "cannot link GitHub account octocat (id 999) to user octocat: that user is linked to \
         another GitHub account (id 583231); rename one of them or link by hand"
    );
    assert_eq!(
        f.users.github_token_sealed(&name("octocat")).unwrap(),
        Some(b"sealed-2".to_vec()),
        "a refused link changes nothing"
    );
    assert_eq!(f.users.list().unwrap().len(), 1);
}

/// A login is a name anyone may hold: the account holding an admin-made user's name when it
/// first signs in need not be the one the admin meant (a guessed handle, a renamed one, a
/// user meant for certificates only). Only the account pinned when the user was added links.
#[tokio::test]
async fn only_the_account_pinned_when_a_user_was_added_links_to_it() {
    let f = fixture();
    f.users
        .add(
            &name("ops"),
            caps(&[Capability::ModifyUser]),
            None,
            "admin:root",
            5,
        )
        .await
        .unwrap();
    let error = f
        .users
        .link_github("ops", 66, b"sealed".to_vec(), &BTreeSet::new(), 6)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, UsersError::NotPinned { name, .. } if name == "ops"),
        "{error}"
    );
    assert!(
        error.to_string().contains("added without a GitHub account"),
        "{error}"
    );
    assert_eq!(f.users.get(&name("ops")).unwrap().unwrap().github, None);

    // Pinned to account 42 when added: that account links under any login it has since...
    f.users
        .add(
            &name("ana"),
            caps(&[Capability::ModifyCi]),
            Some(("ana".into(), 42)),
            "admin:root",
            5,
        )
        .await
        .unwrap();
    assert_eq!(f.users.github_token_sealed(&name("ana")).unwrap(), None);
    // ...and another account holding the name now does not.
    let error = f
        .users
        .link_github("ana", 77, b"sealed".to_vec(), &BTreeSet::new(), 6)
        .await
        .unwrap_err();
    assert!(
        matches!(error, UsersError::NameTaken { linked_id: 42, .. }),
        "{error}"
    );
    let (user, outcome) = f
        .users
        .link_github(
            "Ana-Renamed",
            42,
            b"sealed".to_vec(),
            &caps(&[Capability::Submit]),
            7,
        )
        .await
        .unwrap();
    assert_eq!(outcome, LinkOutcome::Linked);
    assert_eq!(
        user,
        User {
            name: name("ana"),
            capabilities: caps(&[Capability::ModifyCi]),
            github: Some(("Ana-Renamed".into(), 42)),
            created_at: 5,
            created_by: "admin:root".into(),
        },
        "linking keeps the user's own capabilities, not the defaults"
    );
    assert_eq!(
        f.users.github_token_sealed(&name("ana")).unwrap(),
        Some(b"sealed".to_vec())
    );
    let (_, outcome) = f
        .users
        .link_github("ana", 42, b"sealed-2".to_vec(), &BTreeSet::new(), 8)
        .await
        .unwrap();
    assert_eq!(outcome, LinkOutcome::Refreshed);
    // One account, one user.
    let error = f
        .users
        .add(
            &name("ana2"),
            BTreeSet::new(),
            Some(("ana".into(), 42)),
            "admin:root",
            9,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, UsersError::AccountTaken { user, .. } if user == "ana"),
        "{error}"
    );
}

#[tokio::test]
async fn a_login_that_is_no_user_name_is_refused() {
    let f = fixture();
    let error = f
        .users
        .link_github("-weird", 1, Vec::new(), &BTreeSet::new(), 1)
        .await
        .unwrap_err();
    assert!(matches!(error, UsersError::InvalidName { .. }), "{error:?}");
    assert!(f.users.list().unwrap().is_empty());
}

#[test]
fn the_sealed_token_never_shows_in_debug_output() {
    let user = User {
        name: name("ana"),
        capabilities: BTreeSet::new(),
        github: Some(("ana".into(), 1)),
        created_at: 0,
        created_by: "github".into(),
    };
    let shown = format!("{user:?}");
    assert!(!shown.contains("sealed"), "{shown}");
}

#[test]
fn a_minted_grant_carries_the_mapped_rights() {
    let root = RootKey::generate();
    let now = UNIX_EPOCH + Duration::from_secs(1_893_456_000);
    let expires: SystemTime = now + Duration::from_secs(3600);
    let all: BTreeSet<Capability> = Capability::ALL.into_iter().collect();
    let spec = grant_spec("alpha", &name("ana"), &all, Some(expires)).unwrap();
    let (text, minted) = mint(&root, &spec).unwrap();

    let inspected = UnverifiedToken::parse(&text).unwrap().inspect().unwrap();
    assert_eq!(inspected.grant, minted);
    let grant = inspected.grant;
    assert_eq!(grant.holder.to_string(), "user:ana");
    let rights: Vec<&str> = grant.rights.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        rights,
        [
            "queue:submit",
            "logs:read",
            "assets:read",
            "runs:cancel",
            "repos:modify",
            "users:modify",
            "secrets:manage"
        ]
    );
    assert_eq!(grant.repos, BTreeSet::from(["*".to_owned()]));
    assert!(grant.queues.is_empty());
    assert_eq!(grant.expires_at, Some(expires));
    assert_eq!(
        grant.summary(),
        "user:ana may queue:submit, logs:read, assets:read, runs:cancel, secrets:manage on every \
         repo; repos:modify, users:modify at site alpha, until 2030-01-01T01:00:00Z"
    );

    // And the site authorizes with it as the table says.
    let token = verify(&text, &root).unwrap();
    let peer = vec!["user:ana".to_owned()];
    let ctx = Context {
        this_site: "alpha",
        peer: &peer,
        now,
    };
    for right in &grant.rights {
        let resource = match right.scope_kind() {
            tinyci_grant::ScopeKind::Site => "alpha",
            _ => "org/anything",
        };
        token
            .authorize(&Operation::new(*right, resource), &ctx)
            .unwrap();
    }
    let error = token
        .authorize(&Operation::new(tinyci_grant::Right::QueueTake, "gpu"), &ctx)
        .unwrap_err();
    assert!(error.to_string().contains("no queue:take right"), "{error}");
}

#[test]
fn site_scoped_capabilities_alone_mint_without_repositories() {
    let root = RootKey::generate();
    let spec = grant_spec(
        "alpha",
        &name("ana"),
        &caps(&[Capability::ModifyUser]),
        None,
    )
    .unwrap();
    assert!(spec.repos.is_empty());
    let (_, grant) = mint(&root, &spec).unwrap();
    assert_eq!(
        grant.summary(),
        "user:ana may users:modify at site alpha, with no expiry"
    );
}
