//! Mutual TLS between the members of a cluster: the scheduler, the executors' shuffle (Flight)
//! services, and every client of either (coordinators, executors, Ballista's own readers).
//!
//! The cluster's certificate authority is an Ed25519 key derived from the cluster's secret, so
//! every member holds the same authority without a file of its own; each member makes a
//! certificate of its own (a fresh key) signed by it when it starts. A server presents its
//! certificate and asks for a client's; a client checks the server's against the authority.
//! Whoever does not hold the secret can neither be let in nor pass for a member: a process
//! that takes a member's port learns nothing and is refused.

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use super::shuffle::Secret;
use crate::error::{Error, Result};

/// The name every member's certificate carries and every client expects.
const NAME: &str = "tidegate-cluster";

/// The PKCS#8 (v1) prefix of an Ed25519 private key, followed by its 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A member's TLS settings, as a server and as a client.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) server: ServerTlsConfig,
    pub(crate) client: ClientTlsConfig,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

impl Tls {
    /// The settings of a member of the cluster whose secret is `secret`.
    pub(crate) fn of(secret: &Secret) -> Result<Tls> {
        let fail = |e: rcgen::Error| Error::Internal(format!("the cluster's certificates: {e}"));
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&secret.derived(b"tidegate cluster authority"));
        let authority_key = rcgen::KeyPair::try_from(pkcs8.as_slice()).map_err(fail)?;
        let mut authority = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        authority.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        authority
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tidegate cluster authority");
        authority.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let authority_cert = authority.self_signed(&authority_key).map_err(fail)?;
        let issuer = rcgen::Issuer::new(authority, authority_key);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(fail)?;
        let mut member = rcgen::CertificateParams::new(vec![NAME.to_string()]).map_err(fail)?;
        member
            .distinguished_name
            .push(rcgen::DnType::CommonName, NAME);
        member.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        member.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = member.signed_by(&key, &issuer).map_err(fail)?;
        let identity = Identity::from_pem(cert.pem(), key.serialize_pem());
        let authority = Certificate::from_pem(authority_cert.pem());
        Ok(Tls {
            server: ServerTlsConfig::new()
                .identity(identity.clone())
                .client_ca_root(authority.clone()),
            client: ClientTlsConfig::new()
                .ca_certificate(authority)
                .identity(identity)
                .domain_name(NAME),
        })
    }
}
