//! TLS termination on a listener (rustls), and what a filter reads of the handshake: Envoy's `connection.*`
//! attributes (`SslExtractorsValues` and `ConnectionLookupValues` in `filters/common/expr/context.cc`) come from the
//! connection's `Ssl::ConnectionInfo`, which host-sim fills once per connection from the handshake.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{ListenerTls, SanMatcher, SanType};
use crate::properties::{CertificateFacts, ConnectionTls};

/// A listener's TLS: the acceptor and what its own certificate says.
pub(crate) struct ListenerTlsRuntime {
    acceptor: TlsAcceptor,
    local: Arc<CertificateFacts>,
}

impl ListenerTlsRuntime {
    /// Loads the certificate, key and client CAs; `what` names the listener in errors.
    pub fn new(config: &ListenerTls, what: &str) -> anyhow::Result<Self> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&config.certificate_chain)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .map_err(|error| {
                    anyhow::anyhow!(
                        "{what}: certificate_chain {}: {error}",
                        config.certificate_chain.display()
                    )
                })?;
        let Some(leaf) = chain.first() else {
            anyhow::bail!(
                "{what}: certificate_chain {} holds no certificate",
                config.certificate_chain.display()
            );
        };
        let local = Arc::new(certificate_facts(leaf).ok_or_else(|| {
            anyhow::anyhow!(
                "{what}: certificate_chain {}: not an X.509 certificate",
                config.certificate_chain.display()
            )
        })?);
        let key = PrivateKeyDer::from_pem_file(&config.private_key).map_err(|error| {
            anyhow::anyhow!(
                "{what}: private_key {}: {error}",
                config.private_key.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &config.client_validation {
            None => builder.with_no_client_auth(),
            Some(validation) => {
                let mut roots = RootCertStore::empty();
                let cas = CertificateDer::pem_file_iter(&validation.trusted_ca)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|error| {
                        anyhow::anyhow!(
                            "{what}: trusted_ca {}: {error}",
                            validation.trusted_ca.display()
                        )
                    })?;
                for ca in cas {
                    roots.add(ca).map_err(|error| {
                        anyhow::anyhow!(
                            "{what}: trusted_ca {}: {error}",
                            validation.trusted_ca.display()
                        )
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                // Without `require_client_certificate` a certificate is asked for and checked if sent, as
                // BoringSSL's SSL_VERIFY_PEER without SSL_VERIFY_FAIL_IF_NO_PEER_CERT.
                let verifier = if config.require_client_certificate {
                    verifier.build()?
                } else {
                    verifier.allow_unauthenticated().build()?
                };
                builder.with_client_cert_verifier(Arc::new(SanChecked {
                    inner: verifier,
                    matchers: validation.subject_alt_names.clone(),
                }))
            }
        };
        let mut server = builder.with_single_cert(chain, key)?;
        server.alpn_protocols = config.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(ListenerTlsRuntime {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            local,
        })
    }

    /// The handshake, then what the filters may read of it.
    pub async fn accept<S>(&self, stream: S) -> std::io::Result<(TlsStream<S>, ConnectionTls)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = self.acceptor.accept(stream).await?;
        let connection = &stream.get_ref().1;
        let version = match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLSv1.3",
        };
        let facts = ConnectionTls {
            version,
            local: self.local.clone(),
            peer: connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(certificate_facts),
        };
        Ok((stream, facts))
    }
}

/// The client verifier with the SAN matchers of the validation context on top
/// (`DefaultCertValidator::verifyCertificate`: one of `match_typed_subject_alt_names` must match).
#[derive(Debug)]
struct SanChecked {
    inner: Arc<dyn ClientCertVerifier>,
    matchers: Vec<SanMatcher>,
}

impl ClientCertVerifier for SanChecked {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.matchers.is_empty() || sans_match(end_entity, &self.matchers) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether any SAN of the certificate matches any matcher of its type.
fn sans_match(der: &CertificateDer<'_>, matchers: &[SanMatcher]) -> bool {
    let Ok((_, certificate)) = X509Certificate::from_der(der.as_ref()) else {
        return false;
    };
    let Ok(Some(sans)) = certificate.subject_alternative_name() else {
        return false;
    };
    sans.value.general_names.iter().any(|name| {
        let (san_type, value) = match name {
            GeneralName::DNSName(dns) => (SanType::Dns, dns.to_string()),
            GeneralName::URI(uri) => (SanType::Uri, uri.to_string()),
            GeneralName::RFC822Name(email) => (SanType::Email, email.to_string()),
            GeneralName::IPAddress(bytes) => match ip_text(bytes) {
                Some(ip) => (SanType::IpAddress, ip),
                None => return false,
            },
            _ => return false,
        };
        matchers
            .iter()
            .any(|m| m.san_type == san_type && m.matcher.matches(&value))
    })
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

/// The subject, SANs and digest of a DER certificate; `None` when it does not parse.
pub(crate) fn certificate_facts(der: &CertificateDer<'_>) -> Option<CertificateFacts> {
    let (_, certificate) = X509Certificate::from_der(der.as_ref()).ok()?;
    let mut facts = CertificateFacts {
        subject: rfc2253(certificate.subject()),
        sha256: hex(ring::digest::digest(&ring::digest::SHA256, der.as_ref()).as_ref()),
        ..CertificateFacts::default()
    };
    if let Ok(Some(sans)) = certificate.subject_alternative_name() {
        for name in &sans.value.general_names {
            match name {
                GeneralName::URI(uri) => facts.uri_sans.push(uri.to_string()),
                GeneralName::DNSName(dns) => facts.dns_sans.push(dns.to_string()),
                _ => {}
            }
        }
    }
    Some(facts)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A distinguished name as OpenSSL's `XN_FLAG_RFC2253` prints it: the last RDN first, RDNs joined by `,`, the
/// attributes of one RDN by `+`, OpenSSL's short names, RFC 2253 escaping.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attribute| {
                    let oid = attribute.attr_type();
                    let value = attribute
                        .as_str()
                        .map(escape_rfc2253)
                        .unwrap_or_else(|_| format!("#{}", hex(attribute.attr_value().data)));
                    format!("{}={value}", short_name(&oid.to_id_string()))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// OpenSSL's short names for the attribute types certificates carry; others print as their dotted OID.
fn short_name(oid: &str) -> String {
    match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.5" => "serialNumber",
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GN",
        "2.5.4.12" => "title",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        other => other,
    }
    .to_string()
}

/// RFC 2253 escaping as OpenSSL's `ESC_2253`: `,+"\<>;` anywhere, `#` or a space first, a space last.
fn escape_rfc2253(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
