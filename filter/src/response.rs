//! What the filter tells the outside: local-reply bodies, the reason header, response-code
//! details, metric names, and the proxy-wasm header-map encoding for local replies.

use crate::config::Stage;
use crate::destination::InvalidReason;
use crate::json::json_string;
use crate::policy::DenyReason;

/// Response header naming the reason of a 403 or 400.
pub const REASON_HEADER: &str = "x-dfp-denied";

/// `{"error":"destination_denied","reason":...,"destination":...}` (+ `"address"` upstream).
pub fn deny_body(reason: DenyReason, destination: Option<&str>, address: Option<&str>) -> String {
    let mut out = String::with_capacity(96);
    out.push_str(r#"{"error":"destination_denied","reason":"#);
    json_string(&mut out, reason.as_str());
    if let Some(d) = destination {
        out.push_str(r#","destination":"#);
        json_string(&mut out, d);
    }
    if let Some(a) = address {
        out.push_str(r#","address":"#);
        json_string(&mut out, a);
    }
    out.push('}');
    out
}

/// `{"error":"invalid_destination","reason":...,"source":<header the destination came from>}`.
/// The offending value itself is left out: it is hostile by definition.
pub fn invalid_body(reason: InvalidReason, source: &str) -> String {
    let mut out = String::with_capacity(96);
    out.push_str(r#"{"error":"invalid_destination","reason":"#);
    json_string(&mut out, reason.as_str());
    out.push_str(r#","source":"#);
    json_string(&mut out, source);
    out.push('}');
    out
}

/// Response-code details for a denial, as Envoy logs them in `%RESPONSE_CODE_DETAILS%`.
pub fn deny_details(reason: DenyReason) -> String {
    format!("dfp_denied.{}", reason.as_str())
}

/// Response-code details for an invalid destination.
pub fn invalid_details(reason: InvalidReason) -> String {
    format!("dfp_invalid.{}", reason.as_str())
}

/// `dfp.<stage>.allowed`
pub fn allowed_metric(stage: Stage) -> String {
    format!("dfp.{}.allowed", stage.as_str())
}

/// `dfp.<stage>.denied.<reason>`
pub fn denied_metric(stage: Stage, reason: DenyReason) -> String {
    format!("dfp.{}.denied.{}", stage.as_str(), reason.as_str())
}

/// `dfp.<stage>.report_only.<reason>`
pub fn report_only_metric(stage: Stage, reason: DenyReason) -> String {
    format!("dfp.{}.report_only.{}", stage.as_str(), reason.as_str())
}

/// `dfp.<stage>.invalid.<reason>`
pub fn invalid_metric(stage: Stage, reason: InvalidReason) -> String {
    format!("dfp.{}.invalid.{}", stage.as_str(), reason.as_str())
}

/// Encodes header pairs the way proxy-wasm hosts read them: a little-endian u32 count, then a
/// u32 key length and u32 value length per pair, then each key and value followed by a NUL.
pub fn serialize_headers(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn bodies_are_json_with_the_contract_fields() {
        let body = deny_body(DenyReason::HostNotAllowed, Some("evil.example:443"), None);
        assert_eq!(
            body,
            r#"{"error":"destination_denied","reason":"host_not_allowed","destination":"evil.example:443"}"#
        );
        let v: Value = serde_json::from_str(&deny_body(
            DenyReason::AddressDenied,
            Some("a.test:80"),
            Some("[::1]:80"),
        ))
        .expect("json");
        assert_eq!(v["reason"], "address_denied");
        assert_eq!(v["address"], "[::1]:80");
        let v: Value = serde_json::from_str(&invalid_body(InvalidReason::Userinfo, ":authority"))
            .expect("json");
        assert_eq!(v["error"], "invalid_destination");
        assert_eq!(v["reason"], "userinfo");
        assert_eq!(v["source"], ":authority");
        assert_eq!(v.as_object().map(|o| o.len()), Some(3));
    }

    #[test]
    fn hostile_strings_round_trip_through_json() {
        for s in [
            "a\"b",
            "back\\slash",
            "line\nbreak\r\n",
            "nul\0",
            "\u{1}\u{1f}\u{7f}",
            "</script>",
            "ünïcödé ✓",
            "",
        ] {
            let body = deny_body(DenyReason::HostDenied, Some(s), None);
            let v: Value = serde_json::from_str(&body).expect("valid json");
            assert_eq!(v["destination"], s, "{body}");
            assert!(!body.bytes().any(|b| b < 0x20), "{body:?}");
        }
    }

    #[test]
    fn details_and_metrics_have_no_spaces() {
        for r in DenyReason::ALL {
            assert_eq!(deny_details(r), format!("dfp_denied.{}", r.as_str()));
            for stage in [Stage::Downstream, Stage::Upstream] {
                for name in [
                    denied_metric(stage, r),
                    report_only_metric(stage, r),
                    allowed_metric(stage),
                ] {
                    assert!(!name.contains(' ') && name.starts_with("dfp."), "{name}");
                }
            }
        }
        assert_eq!(
            denied_metric(Stage::Upstream, DenyReason::AddressDenied),
            "dfp.upstream.denied.address_denied"
        );
        assert_eq!(
            invalid_metric(Stage::Downstream, InvalidReason::NonCanonicalIpv4),
            "dfp.downstream.invalid.non_canonical_ipv4"
        );
        assert_eq!(
            invalid_details(InvalidReason::MissingPort),
            "dfp_invalid.missing_port"
        );
    }

    #[test]
    fn header_encoding_matches_the_abi() {
        let bytes = serialize_headers(&[("x-dfp-denied", "host_denied"), ("a", "")]);
        let mut want = Vec::new();
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(&12u32.to_le_bytes());
        want.extend_from_slice(&11u32.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&0u32.to_le_bytes());
        want.extend_from_slice(b"x-dfp-denied\0host_denied\0a\0\0");
        assert_eq!(bytes, want);
        assert_eq!(serialize_headers(&[]), 0u32.to_le_bytes().to_vec());
    }
}
