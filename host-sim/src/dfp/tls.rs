//! Upstream TLS as Envoy's `UpstreamTlsContext` behaves with the DFP cluster:
//!
//! - the chain is verified against `trusted_ca` (a PEM file) or the system roots; with no validation context at all,
//!   Envoy accepts any certificate, and so does host-sim;
//! - the certificate must name the request's host only with `auto_san_validation` (otherwise Envoy checks the chain
//!   alone);
//! - SNI is the request's host with `auto_sni`, else the configured `sni`, else none.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::{TlsContext, TrustedCa, UpstreamOptions};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cluster {cluster:?}: cannot read trusted_ca {file}: {message}")]
    TrustedCa {
        cluster: String,
        file: String,
        message: String,
    },
    #[error("cluster {cluster:?}: no usable certificate in trusted_ca {file}")]
    EmptyTrustedCa { cluster: String, file: String },
    #[error("cluster {cluster:?}: cannot load the system trust roots: {message}")]
    SystemRoots { cluster: String, message: String },
    #[error("cluster {cluster:?}: {message}")]
    Config { cluster: String, message: String },
}

/// The TLS settings of one cluster, built once at configuration time.
#[derive(Debug)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    auto_sni: bool,
    fixed_sni: Option<String>,
}

impl UpstreamTls {
    pub fn new(
        cluster: &str,
        context: &TlsContext,
        options: &UpstreamOptions,
    ) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match &context.trusted_ca {
            TrustedCa::None => Arc::new(AcceptAny(provider.clone())),
            trusted => {
                let roots = load_roots(cluster, trusted)?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|error| TlsSetupError::Config {
                            cluster: cluster.to_string(),
                            message: error.to_string(),
                        })?;
                Arc::new(ChainVerifier {
                    webpki,
                    check_name: options.auto_san_validation,
                })
            }
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsSetupError::Config {
                cluster: cluster.to_string(),
                message: error.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = context.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config.enable_sni = options.auto_sni || context.sni.is_some();
        Ok(UpstreamTls {
            config: Arc::new(config),
            auto_sni: options.auto_sni,
            fixed_sni: context.sni.clone(),
        })
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The name sent as SNI and verified against the certificate, for a request to `host` (no port, IPv6 in
    /// brackets). Without `auto_sni` or `sni` no SNI is sent, and the name is only used for the (disabled) SAN check.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        let name = match (&self.fixed_sni, self.auto_sni) {
            (_, true) | (None, false) => host,
            (Some(sni), false) => sni.as_str(),
        };
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(bare.to_string())
            .map_err(|error| format!("{name:?} is not a TLS server name: {error}"))
    }
}

fn load_roots(cluster: &str, trusted: &TrustedCa) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    match trusted {
        TrustedCa::File(path) => {
            let certs = read_pem_certs(path).map_err(|message| TlsSetupError::TrustedCa {
                cluster: cluster.to_string(),
                file: path.display().to_string(),
                message,
            })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsSetupError::EmptyTrustedCa {
                    cluster: cluster.to_string(),
                    file: path.display().to_string(),
                });
            }
        }
        TrustedCa::System | TrustedCa::None => {
            let native = rustls_native_certs::load_native_certs();
            if native.certs.is_empty() {
                let message = native
                    .errors
                    .first()
                    .map(|error| error.to_string())
                    .unwrap_or_else(|| "no certificates found".to_string());
                return Err(TlsSetupError::SystemRoots {
                    cluster: cluster.to_string(),
                    message,
                });
            }
            roots.add_parsable_certificates(native.certs);
        }
    }
    Ok(roots)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|error| error.to_string())?;
    iter.collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())
}

/// Verifies the chain with webpki; the name check only with `auto_san_validation`, as Envoy does.
#[derive(Debug)]
struct ChainVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // webpki checks the name only after the chain verified, so this error means "chain good, name wrong".
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            // BoringSSL reports a bad ECDSA signature with the algorithm's own errors first; only the certificate
            // tells which algorithm signed it.
            Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature))
                if signed_with_ecdsa(end_entity) =>
            {
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(BoringReason(format!(
                        "|{ECDSA_BAD_SIGNATURE}|{X509_PUBLIC_KEY}|{VERIFY_FAILED}:verify cert failed: {}",
                        at_depth_0("certificate signature failure")
                    )))),
                )))
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// No validation context: Envoy then trusts any certificate (it logs a warning at startup; so does host-sim).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// BoringSSL's error for a failed certificate verification, as Envoy reports it.
const VERIFY_FAILED: &str = "268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED";
const ECDSA_BAD_SIGNATURE: &str = "436207716:ECDSA routines:OPENSSL_internal:BAD_SIGNATURE";
const X509_PUBLIC_KEY: &str =
    "184549382:X.509 certificate routines:OPENSSL_internal:public_key routines";
/// What BoringSSL says when the peer's first bytes are not a TLS record (a plain-text server).
const WRONG_VERSION: &str = "268435703:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER";

/// A failure already worded as BoringSSL's error queue (the part between `TLS_error:` and `:TLS_error_end`).
#[derive(Debug)]
struct BoringReason(String);

impl std::fmt::Display for BoringReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BoringReason {}

fn at_depth_0(what: &str) -> String {
    format!("X509_verify_cert: certificate verification error at depth 0: {what}")
}

/// The certificate's signature algorithm is ECDSA (its DER names `ecdsa-with-SHA*`, OID 1.2.840.10045.4.3).
fn signed_with_ecdsa(certificate: &CertificateDer<'_>) -> bool {
    const ECDSA_WITH_SHA: [u8; 9] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    certificate
        .as_ref()
        .windows(ECDSA_WITH_SHA.len())
        .any(|window| window == ECDSA_WITH_SHA)
}

/// A failed handshake as Envoy's transport failure reason words it (`TLS_error:|<BoringSSL errors>:TLS_error_end`),
/// so response code details match Envoy's for the certificate failures a forward proxy meets: a name the
/// certificate does not cover, an issuer nobody trusts, a bad signature, an expired or not yet valid certificate,
/// a server that does not speak TLS. Other failures keep rustls' text inside the same frame (BoringSSL's error
/// queue has no rustls equivalent).
pub fn failure_reason(error: &std::io::Error) -> String {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let verify = |reason: String| {
        format!("TLS_error:|{VERIFY_FAILED}:verify cert failed: {reason}:TLS_error_end")
    };
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(certificate)) => match certificate {
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => verify(format!(
                "verify SAN list, expected SANs: [{}], certificate SANs: [{}]",
                expected.to_str(),
                presented
                    .iter()
                    .map(|name| presented_name(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            CertificateError::NotValidForName => verify("verify SAN list".to_string()),
            CertificateError::UnknownIssuer => {
                verify(at_depth_0("unable to get local issuer certificate"))
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                verify(at_depth_0("certificate has expired"))
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                verify(at_depth_0("certificate is not yet valid"))
            }
            CertificateError::BadSignature => verify(at_depth_0("certificate signature failure")),
            CertificateError::Other(other) => format!("TLS_error:{}:TLS_error_end", other.0),
            other => format!("TLS_error:|{other:?}:TLS_error_end"),
        },
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            format!("TLS_error:|{WRONG_VERSION}:TLS_error_end")
        }
        Some(other) => format!("TLS_error:|{other}:TLS_error_end"),
        None => format!("TLS_error:|{error}:TLS_error_end"),
    }
}

/// webpki presents names as `DnsName("a.example")` / `IpAddress(192.0.2.1)`; Envoy lists the bare names.
fn presented_name(name: &str) -> &str {
    name.strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            name.strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        })
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(error: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn name_mismatch_reads_as_envoys_san_check() {
        let error = io(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("wrong.example").expect("name"),
                presented: vec![
                    "DnsName(\"right.example\")".to_string(),
                    "IpAddress(192.0.2.1)".to_string(),
                ],
            },
        ));
        assert_eq!(
            failure_reason(&error),
            "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify cert failed: \
             verify SAN list, expected SANs: [wrong.example], certificate SANs: [right.example, 192.0.2.1]:TLS_error_end"
        );
    }

    #[test]
    fn unknown_issuer_and_other_errors_are_framed() {
        let unknown = io(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert!(failure_reason(&unknown)
            .ends_with("at depth 0: unable to get local issuer certificate:TLS_error_end"));
        let plaintext = io(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert_eq!(
            failure_reason(&plaintext),
            "TLS_error:|268435703:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER:TLS_error_end"
        );
        let plain = std::io::Error::other("handshake eof");
        assert_eq!(
            failure_reason(&plain),
            "TLS_error:|handshake eof:TLS_error_end"
        );
    }
}
