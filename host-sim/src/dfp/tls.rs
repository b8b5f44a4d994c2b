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
