//! rustls configurations for tinyci's mutual TLS, and reading identities out of certificates.
//!
//! Trust model: a server accepts a client certificate that chains to its own CA (the peer is
//! then a member of this site) or to a pinned partner CA (the peer is then a member of that
//! partner), and in either case the identity in the certificate must name the site whose CA
//! signed it: a partner CA cannot mint identities of this site or of another partner. A
//! client accepts a server certificate that chains to the one CA it pinned for that site and
//! whose identity is exactly `tinyci://<expected site>/site`; host names play no part.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{PeerIdentity, PkiError, Role, SiteName};

/// The one crypto provider tinyci uses (aws-lc-rs). Every config is built with it explicitly,
/// so no process-wide default provider needs installing and no second provider can sneak in.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// SHA-256 of a certificate's DER, shown as lowercase hex pairs joined by `:`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Parses the first certificate of a PEM document.
pub fn parse_cert_pem(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::BadCertificate(format!("not a PEM certificate: {e}")))
}

/// The tinyci identity named by a certificate's URI SAN. Does not verify the certificate:
/// call it only on certificates a verifier in this module accepted, or that we issued.
pub fn identity_from_der(der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::BadCertificate(format!("unparseable certificate: {e}")))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::BadCertificate(format!("bad subject alternative names: {e}")))?
        .ok_or_else(|| PkiError::BadCertificate("no subject alternative names".into()))?;
    let mut found = None;
    for name in &sans.value.general_names {
        if let GeneralName::URI(uri) = name
            && uri.starts_with("tinyci://")
        {
            if found.is_some() {
                return Err(PkiError::BadCertificate(
                    "more than one tinyci:// identity".into(),
                ));
            }
            found = Some(uri.parse::<PeerIdentity>()?);
        }
    }
    found.ok_or_else(|| PkiError::BadCertificate("no tinyci:// URI identity".into()))
}

/// A certificate chain and its private key, ready for rustls.
pub struct Credentials {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: PeerIdentity,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Parses PEM certificate(s) and a PEM private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PkiError::BadCertificate(format!("not a PEM certificate: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| PkiError::BadCertificate("no certificate in PEM".into()))?;
        let identity = identity_from_der(leaf)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| PkiError::BadKey(format!("not a PEM private key: {e}")))?;
        Ok(Self {
            chain,
            key,
            identity,
        })
    }

    /// The identity the certificate names.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }
}

/// The CAs a server accepts client certificates from, each tied to the one site it may vouch
/// for.
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    anchors: Vec<(SiteName, CertificateDer<'static>)>,
}

impl TrustAnchors {
    /// Trusts `own_ca` (PEM) for members of `own_site`.
    pub fn new(own_site: SiteName, own_ca_pem: &str) -> Result<Self, PkiError> {
        Ok(Self {
            anchors: vec![(own_site, parse_cert_pem(own_ca_pem)?)],
        })
    }

    /// Also trusts a pinned partner CA (PEM) for members of `partner`.
    pub fn add_partner(&mut self, partner: SiteName, ca_pem: &str) -> Result<(), PkiError> {
        if self.anchors.iter().any(|(site, _)| *site == partner) {
            return Err(PkiError::DuplicateAnchor(partner.to_string()));
        }
        self.anchors.push((partner, parse_cert_pem(ca_pem)?));
        Ok(())
    }

    /// Sites trusted, own first.
    pub fn sites(&self) -> impl Iterator<Item = &SiteName> {
        self.anchors.iter().map(|(site, _)| site)
    }
}

/// Server config for a site: TLS 1.3, presents `credentials`, requires a client certificate
/// accepted by `trust`, and resumes no session.
///
/// Why no resumption: a resumed session does not show its certificate again, and the server
/// would take the peer's identity from a session stored earlier and not verified since, even
/// after the certificate expired. Every connection proves its identity afresh, at the cost of
/// a full handshake (connections are long-lived: a runner holds one).
pub fn server_config(
    credentials: &Credentials,
    trust: &TrustAnchors,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = crypto_provider();
    let verifier = AnchoredClientVerifier::new(trust, provider.clone())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(credentials.chain.clone(), credentials.key.clone_key())
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client config for dialing site `expected_site`, whose CA (PEM) is pinned as `site_ca_pem`,
/// authenticating with `credentials`. It keeps no sessions to resume: servers resume none
/// ([`server_config`] says why).
pub fn client_config(
    credentials: &Credentials,
    site_ca_pem: &str,
    expected_site: SiteName,
) -> Result<Arc<ClientConfig>, PkiError> {
    let provider = crypto_provider();
    let mut roots = RootCertStore::empty();
    roots
        .add(parse_cert_pem(site_ca_pem)?)
        .map_err(|e| PkiError::BadCertificate(format!("pinned CA is unusable: {e}")))?;
    let verifier = PinnedSiteVerifier {
        roots,
        expected: PeerIdentity::site(expected_site),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(credentials.chain.clone(), credentials.key.clone_key())
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The TLS server name to send when dialing a site. Only used for SNI: servers are verified by
/// CA pin and URI identity, not by host name.
pub fn server_name(site: &SiteName) -> Result<ServerName<'static>, PkiError> {
    ServerName::try_from(format!("{site}.tinyci.invalid"))
        .map_err(|e| PkiError::Tls(format!("site name {site} is not a valid server name: {e}")))
}

/// The authenticated identity of a peer, from the certificates rustls verified for the
/// connection.
pub fn peer_identity(peer_certs: Option<&[CertificateDer<'_>]>) -> Result<PeerIdentity, PkiError> {
    let leaf = peer_certs
        .and_then(|certs| certs.first())
        .ok_or_else(|| PkiError::BadCertificate("peer presented no certificate".into()))?;
    identity_from_der(leaf)
}

/// Accepts a client certificate when it chains to one of the anchors and names a member of the
/// site that anchor belongs to.
struct AnchoredClientVerifier {
    anchors: Vec<(SiteName, Arc<dyn ClientCertVerifier>)>,
    root_hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for AnchoredClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnchoredClientVerifier")
            .field(
                "sites",
                &self.anchors.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl AnchoredClientVerifier {
    fn new(trust: &TrustAnchors, provider: Arc<CryptoProvider>) -> Result<Self, PkiError> {
        let mut anchors = Vec::new();
        let mut root_hints = Vec::new();
        for (site, ca) in &trust.anchors {
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone()).map_err(|e| {
                PkiError::BadCertificate(format!("CA pinned for site {site} is unusable: {e}"))
            })?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| PkiError::Tls(e.to_string()))?;
            root_hints.extend_from_slice(verifier.root_hint_subjects());
            anchors.push((site.clone(), verifier));
        }
        Ok(Self {
            anchors,
            root_hints,
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for AnchoredClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut last_error = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        for (site, verifier) in &self.anchors {
            match verifier.verify_client_cert(end_entity, intermediates, now) {
                Ok(verified) => {
                    let identity = identity_from_der(end_entity).map_err(|_| {
                        rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
                    })?;
                    if identity.site_name() != site {
                        // A CA vouching for another site's members: refuse outright.
                        return Err(rustls::Error::InvalidCertificate(
                            CertificateError::ApplicationVerificationFailure,
                        ));
                    }
                    return Ok(verified);
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Accepts a server certificate that chains to the pinned CA and names exactly the expected
/// site.
#[derive(Debug)]
struct PinnedSiteVerifier {
    roots: RootCertStore,
    expected: PeerIdentity,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedSiteVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let identity = identity_from_der(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if identity != self.expected || identity.role() != Role::Site {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
