//! Naming a program by what it does that host-sim cannot put on the wire as Envoy does: the case id
//! `tests/fidelity/differences.yaml` entries match, so a documented difference is accepted only for the programs it
//! speaks of.

use abi_fuzz::program::{self, Call, Phase, Program, Ref};

use super::generate::Shape;
use crate::fidelity::differences;

/// The case id differences.yaml entries use for the fuzzer.
pub const CASE_ID: &str = differences::ABI_FUZZ_CASES;

/// The case id differences.yaml entries match: `abi-fuzz`, followed by `/` and the tags of what the program does
/// that host-sim cannot put on the wire as Envoy does (each tag's entries say why):
/// - `unwritable-header`: a header name that is not an HTTP token (empty, non-ASCII) into a map that is sent, or a
///   `:method` / `:path` hyper cannot put on a request line;
/// - `unwritable-status`: a local reply with a status below 200 or above 999;
/// - `continue-unpaused`: `proxy_continue_stream` for a stream that did not pause;
/// - `framing-header`: a filter writes a header hyper frames itself (`transfer-encoding`, `content-length`,
///   `connection`, ...);
/// - `response-body-edit`: writes the response body in its body callback (its length may no longer be the
///   upstream's `content-length`);
/// - `request-body-edit`: the same for the request body and the client's `content-length`;
/// - `response-status-write`: writes `:status` into the response headers (adding to it makes `200,v`);
/// - `status-header`: a local reply whose extra headers include `:status`;
/// - `upstream-local-address`: reads `upstream.local_address`;
/// - `async`: makes http calls (the order of two answers, and whether the request's last byte was read while the
///   stream waited for one, are the event loop's);
/// - `async-ref`: with two calls in flight, a step names a handle (queue, metric, call) that a step of
///   `on_http_call_response` sets;
/// - `call-data-buffer`: reads or writes buffer type 8 (CallData);
/// - `request-trailers-map`: writes the request trailers map or reads its size (Envoy's `getMap`, which may create it);
/// - `node-property`: reads `node` / `xds.node`;
/// - `body-pause`: makes an http call from a body or trailers callback (which then pauses until it is answered);
/// - `trailers-write`: writes a trailers map (request or response), which goes on the wire;
/// - `response-pause`: makes an http call from `on_response_headers` (a local reply's too);
/// - `request-duration`: reads `request.duration`;
/// - `large-response`: the request's body is large enough that the echo's answer is over 32 KiB.
pub fn case_id(program: &Program, shape: Option<&Shape>) -> String {
    let mut tags = Vec::new();
    // The echo's answer to a large request body is over 32 KiB, which hyper writes in two pieces.
    if shape.is_some_and(|s| s.path == "/" && s.body.as_ref().is_some_and(|b| b.len() > 16 * 1024))
    {
        tags.push("large-response");
    }
    let sent_map = |map: u64| map <= 3;
    let bad_name = |name: &[u8]| {
        hyper::header::HeaderName::from_bytes(&name.to_ascii_lowercase()).is_err()
            && name.first() != Some(&b':')
    };
    let pairs_have_bad_name = |bytes: &[u8]| {
        program::parse_pairs(bytes).is_some_and(|pairs| pairs.iter().any(|(k, _)| bad_name(k)))
    };
    // A request line hyper cannot write: a `:method` that is not a token, a `:path` that is not a URI.
    let bad_request_line = |name: &[u8], value: &[u8]| match name.to_ascii_lowercase().as_slice() {
        b":method" => hyper::Method::from_bytes(value).is_err(),
        b":path" => std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<hyper::Uri>().ok())
            .is_none(),
        _ => false,
    };
    let unwritable_header = program.steps.iter().any(|s| match s.call {
        // Adding to `:method` joins the values with a comma, which no method token holds.
        Call::AddHeaderMapValue if s.int(0) == 0 && s.buf(0).eq_ignore_ascii_case(b":method") => {
            true
        }
        Call::AddHeaderMapValue | Call::ReplaceHeaderMapValue => {
            sent_map(s.int(0))
                && (bad_name(s.buf(0)) || (s.int(0) == 0 && bad_request_line(s.buf(0), s.buf(1))))
        }
        Call::SetHeaderMapPairs => {
            sent_map(s.int(0))
                && (pairs_have_bad_name(s.buf(0))
                    || (s.int(0) == 0
                        && program::parse_pairs(s.buf(0)).is_some_and(|pairs| {
                            pairs.iter().any(|(k, v)| bad_request_line(k, v))
                        })))
        }
        Call::SendLocalResponse => pairs_have_bad_name(s.buf(2)),
        _ => false,
    });
    if unwritable_header {
        tags.push("unwritable-header");
    }
    if program
        .steps
        .iter()
        .any(|s| s.call == Call::SendLocalResponse && !(200..=999).contains(&s.int(0)))
    {
        tags.push("unwritable-status");
    }
    // Headers hyper frames and manages itself, whatever a filter wrote there.
    let framing = |name: &[u8]| {
        [
            &b"transfer-encoding"[..],
            b"content-length",
            b"connection",
            b"upgrade",
            b"keep-alive",
            b"proxy-connection",
            b"te",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
    };
    let pairs_have = |bytes: &[u8], f: &dyn Fn(&[u8]) -> bool| {
        program::parse_pairs(bytes).is_some_and(|pairs| pairs.iter().any(|(k, _)| f(k)))
    };
    if program.steps.iter().any(|s| match s.call {
        Call::AddHeaderMapValue | Call::ReplaceHeaderMapValue => {
            sent_map(s.int(0)) && framing(s.buf(0))
        }
        Call::SetHeaderMapPairs => sent_map(s.int(0)) && pairs_have(s.buf(0), &framing),
        _ => false,
    }) {
        tags.push("framing-header");
    }
    if program
        .steps
        .iter()
        .any(|s| s.call == Call::SetBufferBytes && s.int(0) == 1 && s.phase == Phase::ResponseBody)
    {
        tags.push("response-body-edit");
    }
    if program
        .steps
        .iter()
        .any(|s| s.call == Call::SetBufferBytes && s.int(0) == 0 && s.phase == Phase::RequestBody)
    {
        tags.push("request-body-edit");
    }
    let is_status = |k: &[u8]| k == b":status";
    if program.steps.iter().any(|s| {
        s.int(0) == 2
            && match s.call {
                Call::AddHeaderMapValue | Call::ReplaceHeaderMapValue => is_status(s.buf(0)),
                Call::SetHeaderMapPairs => pairs_have(s.buf(0), &is_status),
                _ => false,
            }
    }) {
        tags.push("response-status-write");
    }
    if program.steps.iter().any(|s| {
        s.call == Call::SendLocalResponse && pairs_have(s.buf(2), &|k: &[u8]| k == b":status")
    }) {
        tags.push("status-header");
    }
    if program.steps.iter().any(|s| {
        s.call == Call::ContinueStream && s.int(0) <= 1 && s.phase != Phase::HttpCallResponse
    }) {
        tags.push("continue-unpaused");
    }
    if program
        .steps
        .iter()
        .any(|s| s.call == Call::GetProperty && s.buf(0) == b"upstream\0local_address")
    {
        tags.push("upstream-local-address");
    }
    let calls = program
        .steps
        .iter()
        .filter(|s| s.call == Call::HttpCall)
        .count();
    if calls > 0 {
        tags.push("async");
    }
    // A handle set where an http call is answered and named by another step: with two calls in flight, which
    // answer comes first is the event loop's. (Root phases run one at a time after the stream: the guest's
    // `next_root_event`.)
    let sets_ref = |call: Call| match call {
        Call::RegisterSharedQueue | Call::ResolveSharedQueue => Some(Ref::LastQueue),
        Call::DefineMetric => Some(Ref::LastMetric),
        Call::HttpCall => Some(Ref::LastHttpCall),
        Call::GrpcCall | Call::GrpcStream => Some(Ref::LastGrpc),
        _ => None,
    };
    let answer_refs: Vec<Ref> = program
        .steps
        .iter()
        .filter(|s| s.phase == Phase::HttpCallResponse)
        .filter_map(|s| sets_ref(s.call))
        .collect();
    if calls > 1
        && program.steps.iter().any(|s| {
            s.ints
                .iter()
                .filter_map(|&v| Ref::from_arg(v))
                .any(|r| answer_refs.contains(&r))
        })
    {
        tags.push("async-ref");
    }
    if program.steps.iter().any(|s| {
        matches!(
            s.call,
            Call::GetBufferBytes | Call::GetBufferStatus | Call::SetBufferBytes
        ) && s.int(0) == 8
    }) {
        tags.push("call-data-buffer");
    }
    if program.steps.iter().any(|s| {
        matches!(
            s.call,
            Call::AddHeaderMapValue
                | Call::ReplaceHeaderMapValue
                | Call::SetHeaderMapPairs
                | Call::RemoveHeaderMapValue
                | Call::GetHeaderMapSize
        ) && s.int(0) == 1
    }) {
        tags.push("request-trailers-map");
    }
    if program
        .steps
        .iter()
        .any(|s| s.call == Call::GetProperty && matches!(s.buf(0), b"node" | b"xds\0node"))
    {
        tags.push("node-property");
    }
    if program.steps.iter().any(|s| {
        s.call == Call::HttpCall
            && matches!(
                s.phase,
                Phase::RequestBody
                    | Phase::ResponseBody
                    | Phase::RequestTrailers
                    | Phase::ResponseTrailers
            )
    }) {
        tags.push("body-pause");
    }
    if program.steps.iter().any(|s| {
        matches!(
            s.call,
            Call::AddHeaderMapValue
                | Call::ReplaceHeaderMapValue
                | Call::SetHeaderMapPairs
                | Call::RemoveHeaderMapValue
        ) && matches!(s.int(0), 1 | 3)
    }) {
        tags.push("trailers-write");
    }
    if program
        .steps
        .iter()
        .any(|s| s.call == Call::HttpCall && matches!(s.phase, Phase::ResponseHeaders))
    {
        tags.push("response-pause");
    }
    if program
        .steps
        .iter()
        .any(|s| s.call == Call::GetProperty && s.buf(0) == b"request\0duration")
    {
        tags.push("request-duration");
    }
    if tags.is_empty() {
        CASE_ID.to_string()
    } else {
        format!("{CASE_ID}/{}", tags.join("+"))
    }
}
