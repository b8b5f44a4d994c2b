//! The reason phrase of a response's status line, as Envoy writes it.
//!
//! Envoy's HTTP/1 codec writes its own phrase for every response, whatever the upstream sent
//! (`ResponseEncoderImpl::encodeHeaders` with `CodeUtility::toString`): a fixed table, and `Unknown` for any code
//! not in it (418, 451, 1xx codes but 100 and 101 ...). hyper would write the `http` crate's canonical phrase, or
//! the upstream's, so host-sim sets Envoy's on every downstream response.

use hyper::ext::ReasonPhrase;

/// Envoy's reason phrase for `status` (`source/common/http/codes.cc`, `CodeUtility::toString`).
pub fn envoy_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Entity",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        599 => "Last Unassigned Server Error Code",
        _ => "Unknown",
    }
}

/// The status line's phrase for hyper to write instead of its own.
pub fn reason_phrase(status: u16) -> ReasonPhrase {
    ReasonPhrase::from_static(envoy_reason(status).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_outside_envoys_table_are_unknown() {
        assert_eq!(envoy_reason(418), "Unknown");
        assert_eq!(envoy_reason(451), "Unknown");
        assert_eq!(envoy_reason(103), "Unknown");
        assert_eq!(envoy_reason(418 + 1000), "Unknown");
    }

    #[test]
    fn codes_in_the_table_keep_envoys_wording() {
        assert_eq!(envoy_reason(413), "Payload Too Large");
        assert_eq!(envoy_reason(200), "OK");
        assert_eq!(envoy_reason(599), "Last Unassigned Server Error Code");
    }
}
