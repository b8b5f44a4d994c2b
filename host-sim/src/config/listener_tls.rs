//! A listener's TLS termination: the filter chain's `transport_socket` with a `DownstreamTlsContext`
//! (`envoy.extensions.transport_sockets.tls.v3`). What host-sim takes: one certificate chain and key from files,
//! `alpn_protocols`, `require_client_certificate`, and a `validation_context` with `trusted_ca` and
//! `match_typed_subject_alt_names`. Anything else in the context is refused by its YAML path.

use std::path::PathBuf;

use super::node::At;
use super::{typed_config, ConfigError};

const DOWNSTREAM_TLS_TYPE: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const RAW_BUFFER_TYPE: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// `common_tls_context.tls_certificates[0].certificate_chain.filename`: PEM, leaf first.
    pub certificate_chain: PathBuf,
    /// `common_tls_context.tls_certificates[0].private_key.filename`: PEM.
    pub private_key: PathBuf,
    /// `common_tls_context.alpn_protocols`, in order of preference; empty: no ALPN.
    pub alpn: Vec<String>,
    /// `require_client_certificate`: a client without a certificate fails the handshake.
    pub require_client_certificate: bool,
    /// `common_tls_context.validation_context`: how a client's certificate is checked, if one is asked for.
    pub client_validation: Option<ClientValidation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientValidation {
    /// `trusted_ca.filename`: the CAs a client certificate must chain to (PEM).
    pub trusted_ca: PathBuf,
    /// `match_typed_subject_alt_names`: the certificate must carry a SAN one of these matches (none: any).
    pub subject_alt_names: Vec<SanMatcher>,
}

/// One `SubjectAltNameMatcher`: a SAN type and a `StringMatcher`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanMatcher {
    pub san_type: SanType,
    pub matcher: StringMatcher,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    Dns,
    Uri,
    Email,
    IpAddress,
}

/// `envoy.type.matcher.v3.StringMatcher` without `safe_regex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatcher {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
}

impl StringMatcher {
    /// Whether `value` matches; the `bool` is `ignore_case` (ASCII, as Envoy's `StringMatcherImpl`).
    pub fn matches(&self, value: &str) -> bool {
        let fold = |s: &str, ignore: bool| {
            if ignore {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        match self {
            StringMatcher::Exact(want, ignore) => fold(value, *ignore) == fold(want, *ignore),
            StringMatcher::Prefix(want, ignore) => {
                fold(value, *ignore).starts_with(&fold(want, *ignore))
            }
            StringMatcher::Suffix(want, ignore) => {
                fold(value, *ignore).ends_with(&fold(want, *ignore))
            }
            StringMatcher::Contains(want, ignore) => {
                fold(value, *ignore).contains(&fold(want, *ignore))
            }
        }
    }
}

/// The chain's `transport_socket`: `Some` for TLS, `None` for `raw_buffer`.
pub(crate) fn parse_listener_transport_socket(
    at: &At<'_>,
) -> Result<Option<ListenerTls>, ConfigError> {
    let mut fields = at.map()?;
    // TransportSocket.name: `min_len: 1`.
    fields.required_label("name")?;
    let typed = fields.req("typed_config")?;
    fields.finish()?;
    let (type_name, mut config) = typed_config(&typed, &[DOWNSTREAM_TLS_TYPE, RAW_BUFFER_TYPE])?;
    if type_name == RAW_BUFFER_TYPE {
        config.finish()?;
        return Ok(None);
    }
    let require_client_certificate = config
        .opt("require_client_certificate")
        .map(|b| b.bool())
        .transpose()?
        .unwrap_or(false);
    let common = config.req("common_tls_context")?;
    config.finish()?;

    let mut common_fields = common.map()?;
    let certificates_at = common_fields.req("tls_certificates")?;
    let alpn = match common_fields.opt("alpn_protocols") {
        Some(protocols) => {
            let mut alpn = Vec::new();
            for protocol in protocols.list()? {
                let name = protocol.string()?;
                // host-sim's listeners speak HTTP/1.1 only: offering h2 would promise what it cannot serve.
                if name != "http/1.1" {
                    return Err(protocol.error(format!(
                        "host-sim's listeners speak HTTP/1.1 only; ALPN {name:?} is not supported"
                    )));
                }
                alpn.push(name);
            }
            alpn
        }
        None => Vec::new(),
    };
    let client_validation = common_fields
        .opt("validation_context")
        .map(|v| parse_client_validation(&v))
        .transpose()?;
    common_fields.finish()?;

    let certificates = certificates_at.list()?;
    let [certificate] = certificates.as_slice() else {
        return Err(
            certificates_at.error("host-sim takes exactly one certificate in tls_certificates")
        );
    };
    let mut certificate_fields = certificate.map()?;
    let certificate_chain = data_source_file(&certificate_fields.req("certificate_chain")?)?;
    let private_key = data_source_file(&certificate_fields.req("private_key")?)?;
    certificate_fields.finish()?;
    if require_client_certificate && client_validation.is_none() {
        // Envoy then asks for a certificate and takes any; host-sim checks client certificates only against a CA.
        return Err(common.error(
            "host-sim needs a validation_context with a trusted_ca for require_client_certificate",
        ));
    }
    Ok(Some(ListenerTls {
        certificate_chain,
        private_key,
        alpn,
        require_client_certificate,
        client_validation,
    }))
}

/// A `DataSource` given as a file (host-sim reads no inline certificates).
fn data_source_file(at: &At<'_>) -> Result<PathBuf, ConfigError> {
    let mut fields = at.map()?;
    let filename = fields.opt("filename");
    // `inline_string`, `inline_bytes`, `environment_variable`: refused by their own path.
    fields.finish()?;
    let filename = filename
        .ok_or_else(|| at.error("host-sim reads certificates and keys from a filename"))?
        .non_empty_string()?;
    Ok(PathBuf::from(filename))
}

fn parse_client_validation(at: &At<'_>) -> Result<ClientValidation, ConfigError> {
    let mut fields = at.map()?;
    let trusted_ca = data_source_file(&fields.req("trusted_ca")?)?;
    let subject_alt_names = match fields.opt("match_typed_subject_alt_names") {
        Some(matchers) => matchers
            .list()?
            .iter()
            .map(parse_san_matcher)
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    fields.finish()?;
    Ok(ClientValidation {
        trusted_ca,
        subject_alt_names,
    })
}

fn parse_san_matcher(at: &At<'_>) -> Result<SanMatcher, ConfigError> {
    let mut fields = at.map()?;
    let san_type_at = fields.req("san_type")?;
    let san_type = match san_type_at
        .enum_name(&["DNS", "URI", "EMAIL", "IP_ADDRESS"])?
        .as_str()
    {
        "DNS" => SanType::Dns,
        "URI" => SanType::Uri,
        "EMAIL" => SanType::Email,
        _ => SanType::IpAddress,
    };
    let matcher = parse_string_matcher(&fields.req("matcher")?)?;
    fields.finish()?;
    Ok(SanMatcher { san_type, matcher })
}

fn parse_string_matcher(at: &At<'_>) -> Result<StringMatcher, ConfigError> {
    let mut fields = at.map()?;
    let ignore_case = fields
        .opt("ignore_case")
        .map(|b| b.bool())
        .transpose()?
        .unwrap_or(false);
    let mut found = Vec::new();
    for kind in ["exact", "prefix", "suffix", "contains"] {
        if let Some(value) = fields.opt(kind) {
            found.push((kind, value.string()?));
        }
    }
    fields.finish()?;
    match found.as_slice() {
        [(kind, value)] => Ok(match *kind {
            "exact" => StringMatcher::Exact(value.clone(), ignore_case),
            "prefix" => StringMatcher::Prefix(value.clone(), ignore_case),
            "suffix" => StringMatcher::Suffix(value.clone(), ignore_case),
            _ => StringMatcher::Contains(value.clone(), ignore_case),
        }),
        _ => Err(at.error("a StringMatcher needs exactly one of exact, prefix, suffix, contains")),
    }
}
