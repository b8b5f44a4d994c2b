//! Turns an [`Observation`] into named fields with only what must differ between two proxies
//! masked, so two proxies' observations can be compared field by field:
//!
//! - response headers `date` and `server` are dropped, `x-request-id` too (a fresh UUID per
//!   request), and `x-envoy-upstream-service-time` keeps its presence but not its value (timing);
//! - UUIDs in bodies become `<uuid>` (they are the proxies' `x-request-id` values, e.g. in an
//!   echo of what the upstream received), as does the upstream's `x-request-id` header value;
//! - the per-proxy tag on the case id (see [`FidelityCase::tagged`](super::model::FidelityCase::tagged))
//!   becomes [`TAG_MASK`];
//! - JSON pointers a case lists in `mask` become `"<masked>"`, as do matches of its `mask_text`
//!   regular expressions (times, ports, ids a probe reports); arrays its `sort` pointers name
//!   are compared in sorted order (maps a host serialises in hash order);
//! - the echo servers' JSON of the headers they received is compared with the list sorted by
//!   name (the order they arrived in is its own field, `upstream.header-order`).
//!
//! Everything else — status, every other header and value, the order of header names
//! (`header-order`, `upstream.header-order`), bodies byte for byte (local replies included), what
//! the upstream received, the access log line, tunnel bytes, counters — is kept.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

use super::observe::Observation;
use crate::upstream::Seen;

/// What a tagged case id's tag is replaced with.
pub const TAG_MASK: &str = "~*";
/// Response headers that differ by nature between proxies and runs.
const DROPPED_RESPONSE_HEADERS: [&str; 3] = ["date", "server", "x-request-id"];
/// Response headers whose presence is compared but whose value is timing.
const TIMING_HEADERS: [&str; 1] = ["x-envoy-upstream-service-time"];
/// The marker the echo servers put on their responses.
const ECHO_MARKER: &str = "x-echo-server";

/// A field name (`status`, `header:content-type`, `upstream.path`, ...) to its value.
pub type Fields = BTreeMap<String, String>;

/// How to normalise one proxy's observation of one case.
pub struct Normaliser<'a> {
    /// The tagged case id this proxy sent (`variant/name~E`).
    pub tagged_id: &'a str,
    /// The same id with the tag masked.
    pub masked_id: &'a str,
    /// JSON pointers to mask in the response body.
    pub mask: &'a [String],
    /// Regular expressions to mask in the response body text (checked when the case loaded).
    pub mask_text: &'a [String],
    /// JSON pointers to arrays whose order is not compared.
    pub sort: &'a [String],
    /// Compare a JSON body leaf by leaf (`body:<pointer>` fields).
    pub json_body: bool,
}

impl Normaliser<'_> {
    pub fn fields(&self, obs: &Observation) -> Fields {
        let mut f = Fields::new();
        if let Some(error) = &obs.error {
            f.insert("error".into(), error.clone());
        }
        if !obs.interim.is_empty() {
            let interim: Vec<String> = obs
                .interim
                .iter()
                .map(|r| {
                    let headers: Vec<String> = group(&r.headers)
                        .into_iter()
                        .filter(|(n, _)| !DROPPED_RESPONSE_HEADERS.contains(&n.as_str()))
                        .map(|(n, v)| format!("{n}: {}", v.join(",")))
                        .collect();
                    format!("{} [{}]", r.status, headers.join("; "))
                })
                .collect();
            f.insert("interim".into(), interim.join(" | "));
        }
        if let Some(response) = &obs.response {
            f.insert("status".into(), response.status.to_string());
            f.insert("reason".into(), response.reason.clone());
            f.insert(
                "header-order".into(),
                order(&response.headers, &DROPPED_RESPONSE_HEADERS),
            );
            for (name, values) in group(&response.headers) {
                if DROPPED_RESPONSE_HEADERS.contains(&name.as_str()) {
                    continue;
                }
                let value = if TIMING_HEADERS.contains(&name.as_str()) {
                    "<timing>".to_string()
                } else {
                    self.text(&values.join("\n"))
                };
                f.insert(format!("header:{name}"), value);
            }
            let echo = response.header(ECHO_MARKER).is_some();
            let body = self.body(&response.body, echo);
            match serde_json::from_str::<Value>(&body) {
                Ok(json) if self.json_body => leaves("body:", &json, &mut f),
                _ => {
                    f.insert("body".into(), body);
                }
            }
        }
        if let Some(why) = &obs.truncated {
            // The reason's byte counts are part of the comparison: both proxies relay the same
            // bytes before the break.
            f.insert("truncated".into(), why.clone());
        }
        f.insert("upstream.count".into(), obs.seen.len().to_string());
        for (i, seen) in obs.seen.iter().enumerate() {
            let prefix = if obs.seen.len() == 1 {
                "upstream".to_string()
            } else {
                format!("upstream[{i}]")
            };
            self.seen_fields(&prefix, seen, &mut f);
        }
        f.insert(
            "log".into(),
            obs.log
                .as_deref()
                .map_or_else(|| "<no access log line>".to_string(), |l| self.text(l)),
        );
        match &obs.tunnel {
            Some(Ok(echoed)) => {
                f.insert("tunnel".into(), format!("echoed {}", self.text(echoed)));
            }
            Some(Err(why)) => {
                f.insert("tunnel".into(), format!("failed: {why}"));
            }
            None => {}
        }
        for (name, delta) in &obs.counters {
            f.insert(format!("counter:{name}"), delta.to_string());
        }
        f
    }

    fn seen_fields(&self, prefix: &str, seen: &Seen, f: &mut Fields) {
        let mut put = |k: &str, v: String| {
            f.insert(format!("{prefix}.{k}"), v);
        };
        put("server", seen.server.clone());
        put("tls", seen.tls.to_string());
        put("sni", seen.sni.clone().unwrap_or_else(|| "<none>".into()));
        put("method", seen.method.clone());
        put("path", self.text(&seen.path));
        put("header-order", order(&seen.headers, &[]));
        for (name, values) in group(&seen.headers) {
            let value = if name == "x-request-id" {
                "<request id>".to_string()
            } else {
                self.text(&values.join("\n"))
            };
            put(&format!("header:{name}"), value);
        }
        put("body", self.text(&seen.body));
    }

    /// Masks the tag and UUIDs in free text.
    pub fn text(&self, text: &str) -> String {
        let text = text.replace(self.tagged_id, self.masked_id);
        uuid().replace_all(&text, "<uuid>").into_owned()
    }

    /// The body as compared: text with tag and UUIDs masked; for JSON bodies with pointers to
    /// mask, or echo bodies (whose header list is sorted by name), the re-serialised JSON.
    fn body(&self, body: &[u8], echo: bool) -> String {
        let mut text = self.json_masked(self.text(&String::from_utf8_lossy(body)), echo);
        for re in self.mask_text {
            if let Ok(re) = Regex::new(re) {
                text = re.replace_all(&text, "\"<masked>\"").into_owned();
            }
        }
        text
    }

    fn json_masked(&self, text: String, echo: bool) -> String {
        if self.mask.is_empty() && self.sort.is_empty() && !echo {
            return text;
        }
        let Ok(mut json) = serde_json::from_str::<Value>(&text) else {
            return text;
        };
        for pointer in self.mask {
            mask_pointer(&mut json, pointer);
        }
        for pointer in self.sort {
            at_pointer(&mut json, pointer, &mut |v| {
                if let Value::Array(items) = v {
                    items.sort_by_key(|i| i.to_string());
                }
            });
        }
        if echo {
            sort_pairs(json.get_mut("headers"));
        }
        json.to_string()
    }
}

/// Every leaf of `json` as a field `<prefix><JSON pointer>` holding the leaf's JSON text
/// (empty objects and arrays are leaves too).
fn leaves(prefix: &str, json: &Value, out: &mut Fields) {
    match json {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = k.replace('~', "~0").replace('/', "~1");
                leaves(&format!("{prefix}/{key}"), v, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                leaves(&format!("{prefix}/{i}"), v, out);
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.to_string());
        }
    }
}

/// The header names in arrival order (repeats included), without `skip`.
fn order(headers: &[(String, String)], skip: &[&str]) -> String {
    headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .filter(|k| !skip.contains(&k.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Header values grouped by name, names in sorted order, values in arrival order.
fn group(headers: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        out.entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.clone());
    }
    out
}

fn uuid() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new("[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
            .expect("a valid regex")
    })
}

/// Replaces the value(s) at `pointer` with `"<masked>"`; a segment `*` stands for every key or
/// index at that level. Pointers that resolve to nothing change nothing.
pub fn mask_pointer(json: &mut Value, pointer: &str) {
    at_pointer(json, pointer, &mut |v| {
        *v = Value::String("<masked>".into())
    });
}

/// Applies `f` to every value `pointer` resolves to (`*` matching any key or index).
fn at_pointer(json: &mut Value, pointer: &str, f: &mut dyn FnMut(&mut Value)) {
    let segments: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    walk(json, &segments, f);
}

fn walk(node: &mut Value, segments: &[String], f: &mut dyn FnMut(&mut Value)) {
    let Some((first, rest)) = segments.split_first() else {
        f(node);
        return;
    };
    match node {
        Value::Object(map) => {
            if first == "*" {
                map.values_mut().for_each(|v| walk(v, rest, f));
            } else if let Some(v) = map.get_mut(first) {
                walk(v, rest, f);
            }
        }
        Value::Array(items) => {
            if first == "*" {
                items.iter_mut().for_each(|v| walk(v, rest, f));
            } else if let Some(v) = first.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                walk(v, rest, f);
            }
        }
        _ => {}
    }
}

/// Sorts a JSON list of `[name, value]` pairs by name, keeping the order within a name.
fn sort_pairs(list: Option<&mut Value>) {
    if let Some(Value::Array(items)) = list {
        items.sort_by(|a, b| {
            let name = |v: &Value| v.get(0).and_then(Value::as_str).unwrap_or("").to_string();
            name(a).cmp(&name(b))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Response;

    fn normaliser<'a>(mask: &'a [String]) -> Normaliser<'a> {
        Normaliser {
            tagged_id: "v/case~E",
            masked_id: "v/case~*",
            mask,
            mask_text: &[],
            sort: &[],
            json_body: false,
        }
    }

    fn response(headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status: 200,
            reason: "OK".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn only_volatile_headers_are_dropped_or_masked() {
        let obs = Observation {
            response: Some(response(
                &[
                    ("date", "Mon"),
                    ("server", "envoy"),
                    ("x-request-id", "r"),
                    ("x-envoy-upstream-service-time", "3"),
                    ("content-type", "text/plain"),
                    ("set-cookie", "a"),
                    ("set-cookie", "b"),
                ],
                "x",
            )),
            ..Observation::default()
        };
        let f = normaliser(&[]).fields(&obs);
        assert!(!f.contains_key("header:date") && !f.contains_key("header:server"));
        assert!(!f.contains_key("header:x-request-id"));
        assert_eq!(f["header:x-envoy-upstream-service-time"], "<timing>");
        assert_eq!(f["header:content-type"], "text/plain");
        assert_eq!(f["header:set-cookie"], "a\nb");
        assert_eq!(
            f["header-order"],
            "x-envoy-upstream-service-time,content-type,set-cookie,set-cookie"
        );
        assert_eq!(f["body"], "x");
        assert_eq!(f["upstream.count"], "0");
        assert_eq!(f["log"], "<no access log line>");
    }

    #[test]
    fn bodies_keep_everything_but_tags_and_uuids() {
        let n = normaliser(&[]);
        assert_eq!(
            n.text("id v/case~E rid 0f8fad5b-d9cb-469f-a165-70867728950e"),
            "id v/case~* rid <uuid>"
        );
        // Not JSON-normalised without masks: spacing differences would be differences.
        let obs = Observation {
            response: Some(response(&[], "{\"a\": 1}")),
            ..Observation::default()
        };
        assert_eq!(n.fields(&obs)["body"], "{\"a\": 1}");
    }

    #[test]
    fn text_masks_replace_matches() {
        let masks = vec!["\"date\",\"[^\"]*\"".to_string()];
        let sort = vec!["/pairs".to_string()];
        let n = Normaliser {
            tagged_id: "t",
            masked_id: "t",
            mask: &[],
            mask_text: &masks,
            sort: &[],
            json_body: false,
        };
        let obs = Observation {
            response: Some(response(&[], r#"[["date","Mon, 1 Jan"],["x","1"]]"#)),
            ..Observation::default()
        };
        assert_eq!(n.fields(&obs)["body"], r#"[["<masked>"],["x","1"]]"#);
        let sorted = Normaliser { sort: &sort, ..n };
        let obs = Observation {
            response: Some(response(
                &[],
                r#"{"pairs":[["b","1"],["a","2"]],"keep":[2,1]}"#,
            )),
            ..Observation::default()
        };
        assert_eq!(
            sorted.fields(&obs)["body"],
            r#"{"keep":[2,1],"pairs":[["a","2"],["b","1"]]}"#
        );
    }

    #[test]
    fn json_bodies_can_be_compared_leaf_by_leaf() {
        let n = Normaliser {
            json_body: true,
            ..normaliser(&[])
        };
        let obs = Observation {
            response: Some(response(
                &[],
                r#"{"a": {"b/c": 1, "d": [true, {}]}, "e": []}"#,
            )),
            ..Observation::default()
        };
        let f = n.fields(&obs);
        assert!(!f.contains_key("body"));
        assert_eq!(f["body:/a/b~1c"], "1");
        assert_eq!(f["body:/a/d/0"], "true");
        assert_eq!(f["body:/a/d/1"], "{}");
        assert_eq!(f["body:/e"], "[]");
        // Not JSON: compared as text after all.
        let obs = Observation {
            response: Some(response(&[], "plain")),
            ..Observation::default()
        };
        assert_eq!(n.fields(&obs)["body"], "plain");
    }

    #[test]
    fn pointers_mask_values_and_stars_match_all() {
        let mut json =
            serde_json::json!({"p": {"a": {"v": 1}, "b": {"v": 2}}, "list": [1, 2], "t": 5});
        mask_pointer(&mut json, "/p/*/v");
        mask_pointer(&mut json, "/list/1");
        mask_pointer(&mut json, "/missing/x");
        assert_eq!(
            json,
            serde_json::json!({"p": {"a": {"v": "<masked>"}, "b": {"v": "<masked>"}}, "list": [1, "<masked>"], "t": 5})
        );
    }

    #[test]
    fn echo_bodies_compare_headers_by_name() {
        let n = normaliser(&[]);
        let a = response(
            &[("x-echo-server", "1")],
            r#"{"headers":[["b","1"],["a","1"],["b","2"]]}"#,
        );
        let b = response(
            &[("x-echo-server", "1")],
            r#"{"headers":[["a","1"],["b","1"],["b","2"]]}"#,
        );
        let c = response(
            &[("x-echo-server", "1")],
            r#"{"headers":[["a","1"],["b","2"],["b","1"]]}"#,
        );
        let body = |r: Response| {
            n.fields(&Observation {
                response: Some(r),
                ..Observation::default()
            })["body"]
                .clone()
        };
        assert_eq!(body(a.clone()), body(b));
        assert_ne!(body(a), body(c), "the order of one name's values counts");
    }
}
