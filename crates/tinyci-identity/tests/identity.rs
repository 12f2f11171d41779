//! A site's identity as `site init` writes it and `site up` reads it back: what is accepted,
//! and what each kind of damage is refused with.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;

use tinyci_config::SiteConfig;
use tinyci_identity::init::{InitError, InitOptions, init_site};
use tinyci_identity::{IdentityError, TrustPolicy, check, load_root_key};

fn init(dir: &std::path::Path, name: &str) -> SiteConfig {
    let report = init_site(&InitOptions {
        dir: dir.to_owned(),
        name: name.parse().unwrap(),
        force: false,
        hosts: Vec::new(),
    })
    .unwrap();
    SiteConfig::load(&report.config).unwrap()
}

#[test]
fn a_fresh_identity_checks_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "alpha");
    let report = check(&config).unwrap();
    assert!(
        report.checked.iter().any(|c| c.contains("grants.root_key")),
        "{report:?}"
    );
    let policy = TrustPolicy::load(&config).unwrap();
    let (_, partners) = policy.server_config().unwrap();
    assert!(partners.is_empty());
    load_root_key(&config).unwrap();
}

#[test]
fn init_refuses_to_overwrite_an_identity_without_force() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), "alpha");
    let again = init_site(&InitOptions {
        dir: dir.path().to_owned(),
        name: "alpha".parse().unwrap(),
        force: false,
        hosts: Vec::new(),
    });
    assert!(matches!(again, Err(InitError::Exists { .. })), "{again:?}");
}

#[test]
fn another_sites_certificate_is_refused_naming_both_sites() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alpha = init(a.path(), "alpha");
    let beta = init(b.path(), "beta");
    // alpha's config, beta's certificate and key.
    std::fs::copy(&beta.cert, &alpha.cert).unwrap();
    std::fs::copy(&beta.key, &alpha.key).unwrap();
    let refused = TrustPolicy::load(&alpha).unwrap_err();
    assert!(
        matches!(refused, IdentityError::WrongSite { .. }),
        "{refused:?}"
    );
    let message = refused.to_string();
    assert!(
        message.contains("beta") && message.contains("alpha"),
        "{message}"
    );
    assert!(refused.is_configuration());
}

#[test]
fn a_key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "alpha");
    std::fs::set_permissions(&config.root_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = load_root_key(&config).unwrap_err();
    assert!(
        matches!(
            refused,
            IdentityError::Credentials {
                key: "grants.root_key",
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(refused.is_configuration());
}

#[test]
fn an_unpinned_partner_is_named_in_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "alpha");
    let refused =
        tinyci_identity::federation::find_partner(&config.federation_dir, &config.name, "gamma")
            .unwrap_err();
    assert!(refused.to_string().contains("gamma"), "{refused}");
}
