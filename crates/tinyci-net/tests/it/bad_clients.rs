//! Clients that misbehave on purpose, built from rustls directly.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tinyci_pki::{Credentials, SiteCa};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

/// Trusts any server: these clients test the server's policy, not the client's.
#[derive(Debug)]
struct AnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A TLS client that presents no certificate.
pub(crate) fn no_client_cert_config() -> Arc<rustls::ClientConfig> {
    let provider = tinyci_pki::tls::crypto_provider();
    let algorithms = provider.signature_verification_algorithms;
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(algorithms)))
            .with_no_client_auth(),
    )
}

/// A client certificate signed by `ca` naming an arbitrary identity URI, bypassing
/// `SiteCa`'s own refusal to issue foreign identities.
pub(crate) fn forge_member_cert(ca: &SiteCa, uri: &str) -> Credentials {
    let issuer =
        Issuer::from_ca_cert_pem(ca.cert_pem(), KeyPair::from_pem(ca.key_pem()).unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.subject_alt_names = vec![SanType::URI(uri.to_owned().try_into().unwrap())];
    let cert = params.signed_by(&key, &issuer).unwrap();
    Credentials::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
}

/// A raw TLS stream with a valid client certificate, for speaking non-capnp bytes.
pub(crate) async fn tls_stream(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("alpha.tinyci.invalid").unwrap();
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
pub(crate) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
