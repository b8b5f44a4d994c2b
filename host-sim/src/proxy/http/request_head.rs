//! The request head as Envoy's HTTP/1 codec and connection manager take it: what they refuse before any filter
//! runs, and the header map the filters then see.

use hyper::Method;

use crate::headers::{HeaderMap, MapKind};
use crate::proxy::local_reply::EnvoyReply;

/// `x-envoy-*` request headers Envoy removes before they can steer retries, timeouts, tracing or stats (host-sim
/// interprets none of them; a client must not pass them to the upstream either).
pub(super) const ENVOY_CONTROL_HEADERS: &[&str] = &[
    "x-envoy-max-retries",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-upstream-alt-stat-name",
];

/// Hop-by-hop headers: never forwarded (RFC 9110 §7.6.1, and what Envoy's codecs drop). `Proxy-Authorization` is
/// not among them: Envoy forwards it unless the route or a filter removes it (measured, `faults_security.rs`); nor
/// is `Trailer`, which `ConnectionManagerUtility::mutateRequestHeaders` leaves (the filters see it, the upstream
/// gets it; found by the ABI fuzzer).
pub(super) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "proxy-authenticate",
];

/// The request as Envoy's HTTP/1 codec presents it to filters: `:authority` (from the absolute URI or `Host`),
/// `:path`, `:method`, `:scheme`, then the request's headers without `Host` and hop-by-hop headers, then the
/// headers the connection manager adds (`x-forwarded-proto`, `x-request-id` unless `generate_request_id: false`).
pub(super) fn request_header_map(
    parts: &hyper::http::request::Parts,
    generate_request_id: bool,
    tls: bool,
) -> Result<HeaderMap, EnvoyReply> {
    let connect = parts.method == Method::CONNECT;
    check_request_shape(parts)?;
    let authority = match parts.uri.authority() {
        // An absolute-form URI's authority without its userinfo (`http://user@host/` → `host`), as Envoy takes it.
        Some(authority) if parts.uri.scheme().is_some() => {
            let text = authority.as_str();
            let host = text.rsplit_once('@').map_or(text, |(_, host)| host);
            host.as_bytes().to_vec()
        }
        Some(authority) => authority.as_str().as_bytes().to_vec(),
        None => {
            // Envoy's HTTP/1 codec folds repeated Host headers into one value joined by commas; the filters
            // then see (and reject) that.
            let hosts: Vec<&[u8]> = parts
                .headers
                .get_all(hyper::header::HOST)
                .iter()
                .map(|value| value.as_bytes())
                .collect();
            if hosts.is_empty() {
                return Err(EnvoyReply::missing_host());
            }
            hosts.join(&b","[..])
        }
    };
    if !authority_is_valid(&authority, connect) {
        return Err(EnvoyReply::bad_request("http1.codec_error"));
    }
    let mut headers = HeaderMap::new();
    headers.add(":authority", &authority);
    if !connect {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let path = if path.is_empty() { "/" } else { path };
        // `OPTIONS *`, or an absolute URI with a query and no path: Envoy's connection manager refuses a path
        // that does not start with a slash before any filter.
        if !path.starts_with('/') {
            return Err(EnvoyReply::absolute_path_rejected());
        }
        headers.add(":path", path);
    }
    headers.add(":method", parts.method.as_str());
    if !connect {
        // An absolute URI's scheme (the codec's); otherwise set below, once `x-forwarded-proto` is known.
        let scheme = parts
            .uri
            .scheme_str()
            .unwrap_or("http")
            .to_ascii_lowercase();
        headers.add(":scheme", scheme);
    }
    let nominated = connection_nominated(&parts.headers);
    for (name, value) in &parts.headers {
        if name == hyper::header::EXPECT && value.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            // Envoy answers `100 Continue` itself and does not pass the expectation on.
            continue;
        }
        if name == hyper::header::TE {
            // Envoy passes `TE: trailers` on (gRPC needs it) and drops any other TE.
            if has_token(value.as_bytes(), "trailers") {
                headers.add("te", "trailers");
            }
            continue;
        }
        if name == hyper::header::HOST
            || HOP_BY_HOP.contains(&name.as_str())
            || nominated.iter().any(|n| n == name.as_str())
            || (name.as_str().starts_with("x-envoy-")
                && ENVOY_CONTROL_HEADERS.contains(&name.as_str()))
        {
            continue;
        }
        // The codec adds each line with addViaMove: repeated inline headers join with a comma.
        headers.add_as(MapKind::RequestHeaders, name.as_str(), value.as_bytes());
    }
    // `ConnectionManagerUtility::mutateRequestHeaders`: `x-forwarded-proto` from the connection when the client
    // sent none, then `:scheme`, unless the codec took it from an absolute URI, from `x-forwarded-proto` when that
    // is a valid scheme, else from the connection (`getScheme`).
    let connection_scheme = if tls { "https" } else { "http" };
    if headers.get("x-forwarded-proto").is_none() {
        headers.add("x-forwarded-proto", connection_scheme);
    }
    if !connect && parts.uri.scheme().is_none() {
        let forwarded = headers
            .get_str("x-forwarded-proto")
            .map(str::to_ascii_lowercase)
            .filter(|proto| proto == "http" || proto == "https");
        headers.set_in_place(":scheme", forwarded.as_deref().unwrap_or(connection_scheme));
    }
    if generate_request_id && headers.get("x-request-id").is_none() {
        headers.add("x-request-id", crate::proxy::request_id::new_uuid());
    }
    Ok(headers)
}

/// The methods Envoy's HTTP/1 codec accepts (the list http-parser knew; sorted). Any other token — an extension
/// method, a lower-case `get` — is a codec error there, though hyper accepts it.
pub(super) const ENVOY_METHODS: [&str; 34] = [
    "ACL",
    "BIND",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "MSEARCH",
    "NOTIFY",
    "OPTIONS",
    "PATCH",
    "POST",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "PUT",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "TRACE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

/// What Envoy's codec and connection manager refuse before any filter: a method outside [`ENVOY_METHODS`], a
/// CONNECT whose target is not `host:port`, a fragment in the request target.
pub(super) fn check_request_shape(parts: &hyper::http::request::Parts) -> Result<(), EnvoyReply> {
    if ENVOY_METHODS.binary_search(&parts.method.as_str()).is_err() {
        return Err(EnvoyReply::bad_request("http1.codec_error"));
    }
    if parts.method == Method::CONNECT {
        if parts.uri.scheme().is_some() || parts.uri.path_and_query().is_some() {
            return Err(EnvoyReply::bad_request("http1.codec_error"));
        }
        return Ok(());
    }
    if parts
        .uri
        .path_and_query()
        .is_some_and(|target| target.as_str().contains('#'))
    {
        return Err(EnvoyReply::path_normalization_failed());
    }
    Ok(())
}

/// What Envoy's HTTP/1 codec accepts as an authority (`Host`, or a CONNECT target): only the URI authority
/// characters (unreserved, percent, sub-delims, `:`, `@`, brackets), and for CONNECT a `host:port` without
/// userinfo. Anything else is a codec error there, before any filter sees it.
pub(super) fn authority_is_valid(authority: &[u8], connect: bool) -> bool {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@[]".contains(&b);
    if !authority.iter().all(|&b| allowed(b)) {
        return false;
    }
    if connect {
        let has_port = authority
            .iter()
            .rposition(|&b| b == b':')
            .is_some_and(|colon| !authority[colon + 1..].is_empty() && !authority.ends_with(b"]"));
        return has_port && !authority.contains(&b'@');
    }
    true
}

/// An upgrade other than CONNECT (`Upgrade` nominated by `Connection`): no configuration host-sim runs accepts one.
pub(super) fn is_upgrade(headers: &hyper::HeaderMap) -> bool {
    headers.contains_key(hyper::header::UPGRADE)
        && headers
            .get_all(hyper::header::CONNECTION)
            .iter()
            .any(|value| has_token(value.as_bytes(), "upgrade"))
}

/// Headers the client named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1); Envoy drops them.
pub(super) fn connection_nominated(headers: &hyper::HeaderMap) -> Vec<String> {
    headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .filter_map(|token| std::str::from_utf8(token).ok())
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

pub(super) fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .filter_map(|t| std::str::from_utf8(t).ok())
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

pub(super) fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split(']')
            .next()
            .map_or(authority, |h| &authority[..h.len() + 1]);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::{authority_is_valid, ENVOY_METHODS};

    #[test]
    fn authorities_as_envoys_codec_takes_them() {
        for good in [
            "a.test",
            "a.test:80",
            "[::1]:80",
            "a-b_c~d.test",
            "a,b",
            "user@a.test",
        ] {
            assert!(authority_is_valid(good.as_bytes(), false), "{good}");
        }
        for bad in [
            "a.test :80",
            "a\tb",
            "a\\b",
            "a/b",
            "a?b",
            "a#b",
            "b\u{fc}cher.test",
            "a\"b",
        ] {
            assert!(!authority_is_valid(bad.as_bytes(), false), "{bad:?}");
        }
        for good in ["a.test:443", "[::1]:443", "10.0.0.1:22"] {
            assert!(authority_is_valid(good.as_bytes(), true), "CONNECT {good}");
        }
        for bad in ["a.test", "a.test:", "[::1]", "user@a.test:443"] {
            assert!(!authority_is_valid(bad.as_bytes(), true), "CONNECT {bad}");
        }
    }

    #[test]
    fn envoy_methods_are_sorted_for_binary_search() {
        assert!(ENVOY_METHODS.windows(2).all(|w| w[0] < w[1]));
    }
}
