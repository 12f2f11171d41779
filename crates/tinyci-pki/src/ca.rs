//! The site certificate authority and the leaf certificates it issues.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::{Fingerprint, PeerIdentity, PkiError, Role, SiteName};

/// How long a site CA is valid. Long, because re-pinning a CA at every partner is manual.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long leaf certificates are valid; re-issue with `site init --force` or `runner add`.
const LEAF_VALIDITY: Duration = Duration::days(825);
/// Leaves are back-dated a little so a peer whose clock is slightly behind accepts them.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// A PEM certificate and its PEM private key, as written to disk.
#[derive(Clone)]
pub struct CertifiedKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM. Secret: write it with [`crate::write_secret_file`].
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A site's certificate authority: signs the site's own certificates and its runners' and
/// admins' client certificates.
pub struct SiteCa {
    site: SiteName,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for SiteCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteCa")
            .field("site", &self.site)
            .finish_non_exhaustive()
    }
}

impl SiteCa {
    /// Makes a new CA for `site` with a fresh P-256 key.
    pub fn generate(site: SiteName) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(|e| PkiError::Generate(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&format!("tinyci {site} CA"), &site);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        params.subject_alt_names = vec![uri_san(&PeerIdentity::site(site.clone()))?];
        let cert = params
            .self_signed(&key)
            .map_err(|e| PkiError::Generate(e.to_string()))?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            site,
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// Loads a CA written by [`SiteCa::generate`]. The site name is read from the CA
    /// certificate itself.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let der = crate::tls::parse_cert_pem(cert_pem)?;
        let identity = crate::tls::identity_from_der(&der)?;
        if identity.role() != Role::Site {
            return Err(PkiError::NotACa {
                reason: format!("its identity is {identity}, not a site"),
            });
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadKey(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| PkiError::NotACa {
            reason: e.to_string(),
        })?;
        Ok(Self {
            site: identity.site_name().clone(),
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The site this CA belongs to.
    pub fn site(&self) -> &SiteName {
        &self.site
    }

    /// The CA certificate, PEM (public; this is what partners pin).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM. Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// SHA-256 fingerprint of the CA certificate.
    pub fn fingerprint(&self) -> Result<Fingerprint, PkiError> {
        Ok(Fingerprint::of_der(&crate::tls::parse_cert_pem(
            &self.cert_pem,
        )?))
    }

    /// Issues the site's own certificate: server and client auth, naming
    /// `tinyci://<site>/site`, with `hosts` (DNS names or IP addresses) as extra SANs so
    /// generic TLS tools can verify it by host name too.
    pub fn issue_site_cert(&self, hosts: &[String]) -> Result<CertifiedKey, PkiError> {
        self.issue(&PeerIdentity::site(self.site.clone()), hosts)
    }

    /// Issues a client certificate for a member of this site (`runner`, `admin`, `partner`,
    /// `user`), with a fresh key pair.
    pub fn issue_member_cert(&self, role: Role, name: &str) -> Result<CertifiedKey, PkiError> {
        self.issue(&PeerIdentity::member(self.site.clone(), role, name)?, &[])
    }

    /// Signs a certificate signing request (PEM, at most [`crate::MAX_CSR_PEM_BYTES`]) made
    /// with [`crate::generate_csr`], for `identity`, a named member of this site. The private
    /// key never leaves the requester: the site only sees the CSR's public key.
    ///
    /// The CSR's own signature is verified (proof that the requester holds the key), and
    /// everything else it asks for (subject, SANs, key usages, CA flag) is ignored: the
    /// certificate is exactly what [`SiteCa::issue_member_cert`] would issue for `identity`,
    /// over the CSR's public key. Refuses the site identity and identities of other sites.
    pub fn sign_csr(&self, csr_pem: &str, identity: &PeerIdentity) -> Result<String, PkiError> {
        if identity.role() == Role::Site {
            return Err(PkiError::Csr(format!(
                "the site identity {identity} is never issued from a request"
            )));
        }
        // Check the identity before parsing anything the requester sent.
        let params = self.leaf_params(identity, &[])?;
        let public_key = crate::csr::parse_csr_public_key(csr_pem)?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| PkiError::Generate(e.to_string()))?;
        Ok(cert.pem())
    }

    fn issue(&self, identity: &PeerIdentity, hosts: &[String]) -> Result<CertifiedKey, PkiError> {
        let params = self.leaf_params(identity, hosts)?;
        let key = KeyPair::generate().map_err(|e| PkiError::Generate(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| PkiError::Generate(e.to_string()))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The one definition of a leaf certificate for `identity` (a member of this site, or the
    /// site itself with `hosts` as extra SANs), whoever holds its key. Refuses identities of
    /// other sites.
    fn leaf_params(
        &self,
        identity: &PeerIdentity,
        hosts: &[String],
    ) -> Result<CertificateParams, PkiError> {
        if identity.site_name() != &self.site {
            return Err(PkiError::ForeignIdentity {
                identity: identity.to_string(),
                site: self.site.to_string(),
            });
        }
        let mut params = CertificateParams::default();
        let common_name = match identity.name() {
            Some(name) => format!("{name} ({} of {})", identity.role(), identity.site_name()),
            None => format!("tinyci site {}", identity.site_name()),
        };
        params.distinguished_name = distinguished_name(&common_name, &self.site);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if identity.role() == Role::Site {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + LEAF_VALIDITY;
        params.subject_alt_names.push(uri_san(identity)?);
        for host in hosts {
            params.subject_alt_names.push(host_san(host)?);
        }
        Ok(params)
    }
}

fn distinguished_name(common_name: &str, site: &SiteName) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, format!("tinyci site {site}"));
    dn
}

fn uri_san(identity: &PeerIdentity) -> Result<SanType, PkiError> {
    let uri = identity.to_uri();
    let ia5 = uri
        .clone()
        .try_into()
        .map_err(|_| PkiError::InvalidIdentity {
            uri,
            reason: "not representable as an IA5 string",
        })?;
    Ok(SanType::URI(ia5))
}

fn host_san(host: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = host
        .to_owned()
        .try_into()
        .map_err(|_| PkiError::InvalidName {
            what: "host name",
            name: host.to_owned(),
            rule: "an ASCII DNS name or an IP address",
        })?;
    Ok(SanType::DnsName(name))
}
