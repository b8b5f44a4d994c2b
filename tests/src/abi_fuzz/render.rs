//! One proxy's outcome of a program as named fields, with only what must differ masked: the
//! proxy's own ports, the client's port, request ids, dates, clocks and durations.
//!
//! Field names (what `tests/fidelity/differences.yaml` entries for case `abi-fuzz` match):
//! `step:<call>@<phase>#<index>.<n>` (the n-th run of step `index`), `callback:<phase>#<n>`,
//! `note#<n>`, `order` (only when both saw the same records in another order), `report`
//! (complete, incomplete or the fetch error), `response.status`, `response.reason`, `response.header:<name>`,
//! `response.body`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use abi_fuzz::program::{parse_pairs, Call, Phase, Program, Record, POINTER_SET, UNTOUCHED};
use regex::Regex;

use crate::client::Response;

pub type Fields = BTreeMap<String, String>;

/// What one proxy did with one program.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub response: Result<Response, String>,
    pub report: Result<(Vec<Record>, bool), String>,
    /// Ports that are this proxy's or this connection's own: listener, admin, client.
    pub own_ports: Vec<u16>,
}

/// Property paths whose values differ from request to request (clocks, ids, ports).
const VOLATILE_PROPERTIES: &[&str] = &[
    "request.time",
    "request.duration",
    "request.id",
    "connection.id",
    "source.port",
    "upstream.local_address",
    "response.headers",
    "request.headers",
];

/// Response and callout headers whose values change per request.
const VOLATILE_HEADERS: &[&str] = &["date", "x-envoy-upstream-service-time", "x-request-id"];

fn uuid() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
            .expect("static regex")
    })
}

struct Masks<'a> {
    own_ports: &'a [u16],
}

impl Masks<'_> {
    fn text(&self, text: &str) -> String {
        let mut out = uuid().replace_all(text, "<uuid>").into_owned();
        for port in self.own_ports {
            out = replace_word(&out, &port.to_string(), "<port>");
        }
        out
    }

    /// Bytes as text when they are printable UTF-8, as a number when they are an 8-byte integer
    /// (how Envoy serialises integer properties), else as hex.
    fn bytes(&self, bytes: &[u8]) -> String {
        if let Ok(array) = <[u8; 8]>::try_from(bytes) {
            let n = u64::from_le_bytes(array);
            if n < 1 << 40 {
                let shown = if self.own_ports.iter().any(|p| u64::from(*p) == n) {
                    "<port>".to_string()
                } else {
                    n.to_string()
                };
                return format!("int:{shown}");
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(t) if t.chars().all(|c| !c.is_control() || c == '\n' || c == '\0') => {
                // Masked before it is cut: a cut through a request id would leave it unmasked.
                let masked = self.text(t);
                let shown = if masked.len() > 300 {
                    format!(
                        "{}...({} bytes)",
                        &masked[..masked.floor_char_boundary(300)],
                        t.len()
                    )
                } else {
                    masked
                };
                format!("{shown:?}")
            }
            _ => format!(
                "hex:{}",
                abi_fuzz::program::to_hex(&bytes[..bytes.len().min(300)])
            ),
        }
    }

    fn pairs(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> String {
        let shown: Vec<String> = pairs
            .iter()
            .map(|(k, v)| {
                let name = String::from_utf8_lossy(k);
                let lower = name.to_ascii_lowercase();
                let value = if VOLATILE_HEADERS.contains(&lower.as_str()) {
                    "<masked>".to_string()
                } else {
                    self.bytes(v)
                };
                format!("{}={value}", self.bytes(k))
            })
            .collect();
        format!("pairs[{}]", shown.join(", "))
    }
}

/// Replaces `word` where it stands alone (not inside a longer run of letters and digits, such as
/// the hex of a program).
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut before: Option<char> = None;
    while let Some(at) = rest.find(word) {
        let prev = rest[..at].chars().next_back().or(before);
        let next = rest[at + word.len()..].chars().next();
        let alone = !prev.is_some_and(|c| c.is_ascii_alphanumeric())
            && !next.is_some_and(|c| c.is_ascii_alphanumeric());
        out.push_str(&rest[..at]);
        out.push_str(if alone { with } else { word });
        before = word.chars().next_back();
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

fn step_data(call: Call, step_path: Option<&[u8]>, data: &[u8], masks: &Masks<'_>) -> String {
    let path = step_path.map(|p| String::from_utf8_lossy(p).replace('\0', "."));
    if call == Call::GetProperty {
        if let Some(p) = &path {
            // The client's address: its port is the client's ephemeral one, not always the port the runner noted
            // (a stream the filter closed may leave the client on a new connection).
            if p == "source.address" {
                if let Some((ip, _)) = std::str::from_utf8(data)
                    .ok()
                    .and_then(|a| a.rsplit_once(':'))
                {
                    return format!("{ip}:<port>");
                }
            }
            if VOLATILE_PROPERTIES.contains(&p.as_str()) {
                return format!(
                    "<volatile {} bytes>",
                    if data.is_empty() { "no" } else { "some" }
                );
            }
        }
    }
    if matches!(call, Call::GetHeaderMapPairs)
        || path.as_deref().is_some_and(|p| p.ends_with("headers"))
    {
        if let Some(pairs) = parse_pairs(data) {
            return masks.pairs(&pairs);
        }
    }
    if call == Call::GetCurrentTimeNanoseconds {
        return "<clock>".into();
    }
    // A `date` read in one proxy a second after the other (measured once in 100,000 programs).
    if call == Call::GetHeaderMapValue
        && step_path.is_some_and(|name| {
            VOLATILE_HEADERS
                .iter()
                .any(|v| name.eq_ignore_ascii_case(v.as_bytes()))
        })
    {
        return "<volatile>".into();
    }
    // zlib implementations may encode the same data differently (Envoy links zlib-ng): compare
    // what the stream decodes to.
    if call == Call::CallForeignFunction && step_path == Some(b"compress".as_slice()) {
        use std::io::Read;
        let mut decoded = Vec::new();
        return match flate2::read::ZlibDecoder::new(data).read_to_end(&mut decoded) {
            Ok(_) => format!("zlib({})", masks.bytes(&decoded)),
            Err(_) => format!("not zlib: {}", masks.bytes(data)),
        };
    }
    masks.bytes(data)
}

fn out_text(call: Call, v: u64) -> String {
    match v {
        UNTOUCHED => "untouched".into(),
        _ if call == Call::GetCurrentTimeNanoseconds => "<clock>".into(),
        _ => v.to_string(),
    }
}

/// The fields of one outcome.
pub fn fields(program: &Program, outcome: &Outcome) -> Fields {
    let masks = Masks {
        own_ports: &outcome.own_ports,
    };
    let mut f = Fields::new();
    match &outcome.response {
        Ok(r) => {
            f.insert("response.status".into(), r.status.to_string());
            f.insert("response.reason".into(), r.reason.clone());
            for (name, value) in &r.headers {
                if VOLATILE_HEADERS.contains(&name.as_str()) {
                    continue;
                }
                f.entry(format!("response.header:{name}"))
                    .and_modify(|v| {
                        v.push_str(" | ");
                        v.push_str(&masks.text(value));
                    })
                    .or_insert_with(|| masks.text(value));
            }
            f.insert("response.body".into(), response_body(r, &masks));
        }
        Err(e) => {
            f.insert("response.error".into(), e.clone());
        }
    }
    match &outcome.report {
        Err(e) => {
            f.insert("report".into(), masks.text(e));
        }
        Ok((records, complete)) => {
            f.insert(
                "report".into(),
                if *complete { "complete" } else { "incomplete" }.into(),
            );
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            let mut order = Vec::new();
            for record in records {
                let (base, value) = record_field(program, record, &masks);
                let n = seen.entry(base.clone()).or_default();
                *n += 1;
                let key = format!("{base}.{n}");
                order.push(key.clone());
                f.insert(key, value);
            }
            f.insert("order".into(), order.join(" "));
        }
    }
    f
}

fn record_field(program: &Program, record: &Record, masks: &Masks<'_>) -> (String, String) {
    match record {
        // Http-call answers are told apart by their token (args[1]): two calls may be answered in either order.
        Record::Callback {
            phase: Phase::HttpCallResponse,
            args,
            returned,
        } => (
            format!(
                "callback:on_http_call_response#token{}",
                args.get(1).copied().unwrap_or_default()
            ),
            format!("args={args:?} returned={returned}"),
        ),
        Record::Callback {
            phase,
            args,
            returned,
        } => (
            format!("callback:{phase}#"),
            format!("args={args:?} returned={returned}"),
        ),
        Record::Note(text) => ("note#".into(), masks.text(text)),
        Record::Step {
            index,
            call,
            status,
            outs,
            data,
        } => {
            let step = program.steps.get(usize::from(*index));
            let phase = step.map(|s| s.phase.name()).unwrap_or("?");
            let path = step.filter(|s| s.call == *call).map(|s| s.buf(0));
            let data: Vec<String> = data
                .iter()
                .map(|d| match d {
                    None => "none".into(),
                    Some(bytes) => step_data(*call, path, bytes, masks),
                })
                .collect();
            // A returned size counts the bytes of masked values too (a service time of 9 or 10 ms): compared only
            // when nothing in the data was masked.
            let masked = data.iter().any(|d| d.contains("<masked>"));
            let mut after_pointer = false;
            let outs: Vec<String> = outs
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    let text = match *v {
                        POINTER_SET if data.get(k).is_some() => "ptr".into(),
                        _ if masked && after_pointer => "<len>".into(),
                        _ => out_text(*call, *v),
                    };
                    after_pointer = text == "ptr";
                    text
                })
                .collect();
            (
                format!("step:{call}@{phase}#{index}"),
                format!(
                    "status={status} outs=[{}] data=[{}]",
                    outs.join(","),
                    data.join(",")
                ),
            )
        }
    }
}

/// The response body; an echo's JSON with its header list sorted (the two proxies may send
/// headers in another order) and volatile headers masked.
fn response_body(r: &Response, masks: &Masks<'_>) -> String {
    if r.header("x-echo-server").is_some() {
        if let Some(mut json) = r.json() {
            if let Some(headers) = json.get_mut("headers").and_then(|h| h.as_array_mut()) {
                for h in headers.iter_mut() {
                    let volatile = h
                        .get(0)
                        .and_then(|n| n.as_str())
                        .is_some_and(|n| VOLATILE_HEADERS.contains(&n));
                    if volatile {
                        h[1] = serde_json::Value::String("<masked>".into());
                    }
                }
                headers.sort_by_key(|h| h.to_string());
            }
            return masks.text(&json.to_string());
        }
    }
    masks.bytes(&r.body)
}

#[cfg(test)]
mod tests {
    use super::replace_word;

    #[test]
    fn ports_are_masked_only_where_they_stand_alone() {
        assert_eq!(
            replace_word("127.0.0.1:5000 a5000 50001 x:5000", "5000", "<p>"),
            "127.0.0.1:<p> a5000 50001 x:<p>"
        );
    }
}
