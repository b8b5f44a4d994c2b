//! A throwaway certificate authority and the leaf certificates the TLS upstreams serve.
//!
//! Everything is written to a temp dir as PEM too, because Envoy reads its trust bundle from a
//! file (`trusted_ca.filename`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;

/// A CA whose certificate lives in `ca.pem` under its own temp dir.
pub struct Pki {
    dir: TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    ca_der: CertificateDer<'static>,
}

/// A leaf certificate (and key) signed by the CA, for a TLS server.
pub struct Leaf {
    pub names: Vec<String>,
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivatePkcs8KeyDer<'static>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Pki {
    /// Creates a fresh CA and writes its certificate to `<dir>/ca.pem`.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("dfp-pki-").tempdir()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "dfp test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca = params.self_signed(&ca_key)?;
        std::fs::write(dir.path().join("ca.pem"), ca.pem())?;
        Ok(Pki {
            ca_der: ca.der().clone(),
            dir,
            ca_params: params,
            ca_key,
        })
    }

    /// The PEM file with the CA certificate (Envoy's `trusted_ca`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA certificate, for clients built in-process.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a server certificate for `names` (DNS names or IP literals) and writes
    /// `<file_stem>.pem` / `<file_stem>.key` next to the CA.
    pub fn leaf(&self, file_stem: &str, names: &[&str]) -> anyhow::Result<Leaf> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file_stem, params, names)
    }

    /// Signs `params` (a digital-signature key usage added) with the CA and writes the PEM files.
    fn issue(
        &self,
        file_stem: &str,
        mut params: CertificateParams,
        names: Vec<String>,
    ) -> anyhow::Result<Leaf> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        let cert_file = self.dir.path().join(format!("{file_stem}.pem"));
        let key_file = self.dir.path().join(format!("{file_stem}.key"));
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok(Leaf {
            names,
            cert_der: cert.der().clone(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
            cert_file,
            key_file,
        })
    }
}

impl Pki {
    /// Issues a client certificate with common name `common_name`, the URI SANs `uris` (SPIFFE IDs) and the DNS
    /// SANs `dns_names`, and writes `<file_stem>.pem` / `<file_stem>.key` next to the CA.
    pub fn client_leaf(
        &self,
        file_stem: &str,
        common_name: &str,
        uris: &[&str],
        dns_names: &[&str],
    ) -> anyhow::Result<Leaf> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        // An organisation and a unit with a comma, so a subject prints in more than one RDN and with escaping.
        params
            .distinguished_name
            .push(DnType::OrganizationName, "dfp test");
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "ci, batch");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(rcgen::string::Ia5String::try_from(
                    *uri,
                )?));
        }
        for name in dns_names {
            params.subject_alt_names.push(rcgen::SanType::DnsName(
                rcgen::string::Ia5String::try_from(*name)?,
            ));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let names = dns_names.iter().map(|n| n.to_string()).collect();
        self.issue(file_stem, params, names)
    }
}

impl Leaf {
    /// A rustls server configuration that serves this certificate (HTTP/1.1 only, as Envoy's
    /// dynamic forward proxy cluster speaks it by default).
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert_der.clone()],
                PrivateKeyDer::Pkcs8(self.key_der.clone_key()),
            )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
