//! Certificate signing requests: the CLI makes its own key pair and asks the site to certify
//! the public half ([`generate_csr`]); the site reads only the public key out of the request
//! ([`parse_csr_public_key`]) and decides the identity itself ([`crate::SiteCa::sign_csr`]).

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, KeyPair,
    PKCS_ECDSA_P256_SHA256, PublicKeyData,
};

use crate::PkiError;

/// The longest CSR PEM the site parses. A P-256 request is well under 1 KiB; anything much
/// larger is refused by length before any decoding.
pub const MAX_CSR_PEM_BYTES: usize = 16 * 1024;

/// The subject put in every request. The site ignores it (and every other name a request asks
/// for): the identity is the site's decision, not the requester's.
const PLACEHOLDER_COMMON_NAME: &str = "tinyci certificate request";

/// Makes a fresh P-256 key pair and a certificate signing request for it, returning
/// `(key_pem, csr_pem)`. The key is PKCS#8 PEM and secret (write it with
/// [`crate::write_secret_file`]); the request carries a placeholder subject and no
/// extensions, and is what [`crate::SiteCa::sign_csr`] takes.
pub fn generate_csr() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(|e| PkiError::Generate(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, PLACEHOLDER_COMMON_NAME);
    params.distinguished_name = dn;
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    Ok((key.serialize_pem(), csr_pem))
}

/// Parses a PEM certificate signing request, verifies its self-signature (the requester holds
/// the private key) and returns only its public key, which must be ECDSA P-256 like every
/// other tinyci key. Input over [`MAX_CSR_PEM_BYTES`] is refused before parsing.
pub(crate) fn parse_csr_public_key(csr_pem: &str) -> Result<rcgen::PublicKey, PkiError> {
    if csr_pem.len() > MAX_CSR_PEM_BYTES {
        return Err(PkiError::Csr(format!(
            "request is {} bytes, more than the {MAX_CSR_PEM_BYTES} allowed",
            csr_pem.len()
        )));
    }
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
        PkiError::Csr(match e {
            rcgen::Error::CouldNotParseCertificationRequest => {
                "not a PEM certificate signing request".to_owned()
            }
            rcgen::Error::InvalidCertificationRequestSignature => {
                "its signature does not verify".to_owned()
            }
            rcgen::Error::UnsupportedExtension => {
                "it asks for an extension tinyci does not support (use `tinyci login`)".to_owned()
            }
            rcgen::Error::UnsupportedSignatureAlgorithm => {
                "its signature algorithm is not supported; tinyci keys are ECDSA P-256".to_owned()
            }
            other => format!("unreadable request: {other}"),
        })
    })?;
    let key = csr.public_key;
    // rcgen names the key's algorithm after the request's signature algorithm; also check
    // the key itself is an uncompressed P-256 point, so a P-384 key signed with SHA-256 is
    // not mislabelled as P-256 in the certificate.
    let p256_point = key.der_bytes().len() == 65 && key.der_bytes().first() == Some(&0x04);
    if key.algorithm() != &PKCS_ECDSA_P256_SHA256 || !p256_point {
        return Err(PkiError::Csr(
            "its key is not ECDSA P-256, the only key type tinyci issues for".to_owned(),
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, SanType};
    use rustls::pki_types::CertificateDer;
    use rustls::{ClientConnection, ServerConnection};
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;
    use crate::tls::{self, identity_from_der, parse_cert_pem};
    use crate::{Credentials, PeerIdentity, Role, SiteCa, SiteName, TrustAnchors};

    fn alpha() -> SiteName {
        SiteName::new("alpha").unwrap()
    }

    fn user(name: &str) -> PeerIdentity {
        PeerIdentity::member(alpha(), Role::User, name).unwrap()
    }

    /// The SubjectPublicKeyInfo DER of a certificate.
    fn cert_spki(cert_pem: &str) -> Vec<u8> {
        let der = parse_cert_pem(cert_pem).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        cert.public_key().raw.to_vec()
    }

    /// Runs a TLS 1.3 handshake in memory between the site (server) and `client`, returning
    /// the identity the server saw.
    fn handshake(ca: &SiteCa, client: &Credentials) -> PeerIdentity {
        let site = ca.issue_site_cert(&[]).unwrap();
        let site = Credentials::from_pem(&site.cert_pem, &site.key_pem).unwrap();
        let trust = TrustAnchors::new(alpha(), ca.cert_pem()).unwrap();
        let server_config = tls::server_config(&site, &trust).unwrap();
        let client_config = tls::client_config(client, ca.cert_pem(), alpha()).unwrap();
        let mut server = ServerConnection::new(Arc::clone(&server_config)).unwrap();
        let mut client =
            ClientConnection::new(client_config, tls::server_name(&alpha()).unwrap()).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                let certs: Option<&[CertificateDer<'_>]> = server.peer_certificates();
                return tls::peer_identity(certs).unwrap();
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn a_signed_request_certifies_the_requesters_key_for_the_chosen_identity() {
        let ca = SiteCa::generate(alpha()).unwrap();
        let (key_pem, csr_pem) = generate_csr().unwrap();
        let cert_pem = ca.sign_csr(&csr_pem, &user("alice")).unwrap();

        let der = parse_cert_pem(&cert_pem).unwrap();
        assert_eq!(
            identity_from_der(&der).unwrap().to_string(),
            "tinyci://alpha/user/alice"
        );
        let key = KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(cert_spki(&cert_pem), key.subject_public_key_info());

        let creds = Credentials::from_pem(&cert_pem, &key_pem).unwrap();
        assert_eq!(creds.identity(), &user("alice"));
        // The key that never left the requester completes a real mTLS handshake.
        assert_eq!(handshake(&ca, &creds), user("alice"));
    }

    #[test]
    fn a_signed_request_gets_what_issue_member_cert_issues() {
        let ca = SiteCa::generate(alpha()).unwrap();
        let (_, csr_pem) = generate_csr().unwrap();
        let from_csr = parse_cert_pem(&ca.sign_csr(&csr_pem, &user("alice")).unwrap()).unwrap();
        let issued = ca.issue_member_cert(Role::User, "alice").unwrap();
        let issued = parse_cert_pem(&issued.cert_pem).unwrap();
        let (_, a) = X509Certificate::from_der(&from_csr).unwrap();
        let (_, b) = X509Certificate::from_der(&issued).unwrap();
        assert_eq!(a.subject().to_string(), b.subject().to_string());
        assert_eq!(a.issuer().to_string(), b.issuer().to_string());
        let eku = a.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any);
        assert!(!a.is_ca());
        let lifetime = |c: &X509Certificate<'_>| {
            c.validity().not_after.timestamp() - c.validity().not_before.timestamp()
        };
        assert_eq!(lifetime(&a), lifetime(&b));
    }

    #[test]
    fn names_and_extensions_a_request_asks_for_are_ignored() {
        let ca = SiteCa::generate(alpha()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["alpha.example".to_owned()]).unwrap();
        for uri in [
            "tinyci://alpha/site",
            "tinyci://alpha/admin/admin",
            "tinyci://beta/site",
        ] {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "tinyci site alpha");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();

        let cert_pem = ca.sign_csr(&csr_pem, &user("alice")).unwrap();
        let der = parse_cert_pem(&cert_pem).unwrap();
        // identity_from_der refuses a certificate with more than one tinyci:// URI.
        assert_eq!(identity_from_der(&der).unwrap(), user("alice"));
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let sans = &cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(sans.general_names.len(), 1, "{sans:?}");
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(!eku.server_auth);
        assert!(
            cert.subject().to_string().contains("alice (user of alpha)"),
            "{}",
            cert.subject()
        );
        assert_eq!(cert_spki(&cert_pem), key.subject_public_key_info());
    }

    #[test]
    fn the_site_identity_and_other_sites_are_refused() {
        let ca = SiteCa::generate(alpha()).unwrap();
        let (_, csr_pem) = generate_csr().unwrap();
        let err = ca
            .sign_csr(&csr_pem, &PeerIdentity::site(alpha()))
            .unwrap_err();
        assert!(matches!(err, PkiError::Csr(_)), "{err}");
        assert!(err.to_string().contains("tinyci://alpha/site"), "{err}");

        let beta = SiteName::new("beta").unwrap();
        let err = ca
            .sign_csr(
                &csr_pem,
                &PeerIdentity::member(beta, Role::User, "alice").unwrap(),
            )
            .unwrap_err();
        assert!(matches!(err, PkiError::ForeignIdentity { .. }), "{err}");
    }

    #[test]
    fn garbage_tampered_and_oversized_requests_are_refused() {
        let ca = SiteCa::generate(alpha()).unwrap();
        let alice = user("alice");
        let (key_pem, csr_pem) = generate_csr().unwrap();

        for garbage in [
            "",
            "not a csr",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            key_pem.as_str(),
            ca.cert_pem(),
        ] {
            let err = ca.sign_csr(garbage, &alice).unwrap_err();
            assert!(matches!(err, PkiError::Csr(_)), "{garbage:?}: {err}");
            assert!(!err.to_string().contains("PRIVATE"), "{err}");
        }

        // Change one base64 character of the last body line, inside the signature: the
        // proof of possession no longer holds.
        let mut lines: Vec<String> = csr_pem.lines().map(str::to_owned).collect();
        let last_body = lines.len() - 2;
        let first = lines[last_body].remove(0);
        lines[last_body].insert(0, if first == 'A' { 'B' } else { 'A' });
        let tampered = lines.join("\n");
        let err = ca.sign_csr(&tampered, &alice).unwrap_err();
        assert!(matches!(err, PkiError::Csr(_)), "{err}");

        let oversized = format!("{csr_pem}{}", " ".repeat(MAX_CSR_PEM_BYTES));
        let err = ca.sign_csr(&oversized, &alice).unwrap_err();
        assert!(err.to_string().contains("more than the 16384"), "{err}");
    }

    #[test]
    fn requests_for_other_key_types_are_refused() {
        let ca = SiteCa::generate(alpha()).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let csr_pem = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let err = ca.sign_csr(&csr_pem, &user("alice")).unwrap_err();
        assert!(err.to_string().contains("P-256"), "{err}");
    }
}
