//! Certificates as the rest of tinyci relies on them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use tinyci_pki::{
    Credentials, Fingerprint, PeerIdentity, PkiError, Role, SiteCa, SiteName, read_text_file,
    write_secret_file,
};

fn alpha() -> SiteName {
    SiteName::new("alpha").unwrap()
}

#[test]
fn issued_certificates_carry_their_identity() {
    let ca = SiteCa::generate(alpha()).unwrap();
    let site = ca
        .issue_site_cert(&["localhost".into(), "127.0.0.1".into()])
        .unwrap();
    let creds = Credentials::from_pem(&site.cert_pem, &site.key_pem).unwrap();
    assert_eq!(creds.identity(), &PeerIdentity::site(alpha()));

    let runner = ca.issue_member_cert(Role::Runner, "r1").unwrap();
    let creds = Credentials::from_pem(&runner.cert_pem, &runner.key_pem).unwrap();
    assert_eq!(creds.identity().to_string(), "tinyci://alpha/runner/r1");
    assert!(
        !format!("{runner:?}").contains("PRIVATE KEY"),
        "Debug leaks the key"
    );
}

#[test]
fn a_reloaded_ca_keeps_issuing_for_its_site() {
    let ca = SiteCa::generate(alpha()).unwrap();
    let again = SiteCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    assert_eq!(again.site(), &alpha());
    assert_eq!(again.fingerprint().unwrap(), ca.fingerprint().unwrap());
    let admin = again.issue_member_cert(Role::Admin, "ana").unwrap();
    let creds = Credentials::from_pem(&admin.cert_pem, &admin.key_pem).unwrap();
    assert_eq!(creds.identity().to_string(), "tinyci://alpha/admin/ana");
}

#[test]
fn a_leaf_is_not_a_ca() {
    let ca = SiteCa::generate(alpha()).unwrap();
    let runner = ca.issue_member_cert(Role::Runner, "r1").unwrap();
    assert!(matches!(
        SiteCa::from_pem(&runner.cert_pem, &runner.key_pem),
        Err(PkiError::NotACa { .. })
    ));
}

#[test]
fn fingerprints_are_sha256_hex_pairs() {
    let fp = Fingerprint::of_der(b"abc");
    assert_eq!(
        fp.to_string(),
        "ba:78:16:bf:8f:01:cf:ea:41:41:40:de:5d:ae:22:23:b0:03:61:a3:96:17:7a:9c:b4:10:ff:61:f2:00:15:ad"
    );
}

#[test]
fn secret_files_are_0600_even_when_replacing_a_wider_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    std::fs::write(&path, "old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    write_secret_file(&path, b"new").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(read_text_file(&path, true).unwrap(), "new");
}

#[test]
fn readable_secret_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    std::fs::write(&path, "secret").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = read_text_file(&path, true).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

/// Runs a TLS handshake between `client` and `server` in memory; returns how it went.
fn handshake(
    client: &std::sync::Arc<rustls::ClientConfig>,
    server: &std::sync::Arc<rustls::ServerConfig>,
) -> rustls::HandshakeKind {
    let name = tinyci_pki::tls::server_name(&alpha()).unwrap();
    let mut c = rustls::ClientConnection::new(client.clone(), name).unwrap();
    let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
    // Until both are done and nothing is left to send: tickets come after the handshake.
    for _ in 0..20 {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        s.read_tls(&mut &wire[..]).unwrap();
        s.process_new_packets().unwrap();
        let mut wire = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        c.read_tls(&mut &wire[..]).unwrap();
        c.process_new_packets().unwrap();
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    assert!(!c.is_handshaking(), "the handshake did not finish");
    c.handshake_kind().unwrap()
}

/// A resumed TLS session skips the client certificate's verification: the server would take
/// the identity from a session stored earlier, after the certificate expired or its CA stopped
/// being trusted. So every connection is a full handshake, and no session is kept for it.
#[test]
fn no_connection_resumes_an_earlier_session() {
    let ca = SiteCa::generate(alpha()).unwrap();
    let site = ca.issue_site_cert(&["localhost".into()]).unwrap();
    let site = Credentials::from_pem(&site.cert_pem, &site.key_pem).unwrap();
    let runner = ca.issue_member_cert(Role::Runner, "r1").unwrap();
    let runner = Credentials::from_pem(&runner.cert_pem, &runner.key_pem).unwrap();
    let trust = tinyci_pki::TrustAnchors::new(alpha(), ca.cert_pem()).unwrap();
    let server = tinyci_pki::tls::server_config(&site, &trust).unwrap();
    let ours = tinyci_pki::tls::client_config(&runner, ca.cert_pem(), alpha()).unwrap();
    // Any client may offer a ticket: one built as rustls builds it, resumption on, with the
    // same certificate and the same verification of the site as ours.
    let mut theirs = (*ours).clone();
    theirs.resumption = rustls::client::Resumption::default();
    let theirs = std::sync::Arc::new(theirs);
    for client in [&ours, &theirs] {
        for attempt in 0..3 {
            assert_eq!(
                handshake(client, &server),
                rustls::HandshakeKind::Full,
                "connection {attempt}"
            );
        }
    }
}
