//! Field-by-field comparison of two normalised observations.

use super::normalise::Fields;

/// A field whose value differs between the proxies; `None` means the field is absent there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDiff {
    pub field: String,
    pub envoy: Option<String>,
    pub host_sim: Option<String>,
}

/// What an absent field reads as in reports and in the differences list's patterns.
pub const ABSENT: &str = "<absent>";

impl FieldDiff {
    pub fn envoy_text(&self) -> &str {
        self.envoy.as_deref().unwrap_or(ABSENT)
    }

    pub fn host_sim_text(&self) -> &str {
        self.host_sim.as_deref().unwrap_or(ABSENT)
    }
}

/// Every field present in either with a different value (or present in one only).
pub fn diff(envoy: &Fields, host_sim: &Fields) -> Vec<FieldDiff> {
    let mut names: Vec<&String> = envoy.keys().chain(host_sim.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let e = envoy.get(name);
            let h = host_sim.get(name);
            (e != h).then(|| FieldDiff {
                field: name.clone(),
                envoy: e.cloned(),
                host_sim: h.cloned(),
            })
        })
        .collect()
}

/// A short one-line rendering of a value for reports: long values are cut, line breaks shown.
pub fn short(value: &str, max: usize) -> String {
    let flat = value.replace('\n', "⏎").replace('|', "\\|");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max).collect();
    format!("{cut}… ({} bytes)", value.len())
}

/// When both values are JSON: the paths where they differ, as `path: envoy … / host-sim …`
/// lines (at most `max`), so a report can say *what* differs in two long bodies.
pub fn json_paths(envoy: &str, host_sim: &str, max: usize) -> Option<Vec<String>> {
    let e: serde_json::Value = serde_json::from_str(envoy).ok()?;
    let h: serde_json::Value = serde_json::from_str(host_sim).ok()?;
    let mut out = Vec::new();
    walk(String::new(), Some(&e), Some(&h), &mut out);
    if out.len() > max {
        let more = out.len() - max;
        out.truncate(max);
        out.push(format!("… and {more} more"));
    }
    Some(out)
}

fn walk(
    path: String,
    e: Option<&serde_json::Value>,
    h: Option<&serde_json::Value>,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (e, h) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                walk(format!("{path}/{k}"), a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(format!("{path}/{i}"), Some(x), Some(y), out);
            }
        }
        (a, b) if a != b => {
            let show = |v: Option<&Value>| {
                v.map_or_else(|| ABSENT.to_string(), |v| short(&v.to_string(), 120))
            };
            out.push(format!(
                "{}: Envoy {} / host-sim {}",
                if path.is_empty() { "/" } else { &path },
                show(a),
                show(b)
            ));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reports_changed_missing_and_extra_fields() {
        let e = fields(&[("status", "403"), ("body", "x"), ("header:a", "1")]);
        let h = fields(&[("status", "403"), ("body", "y"), ("header:b", "2")]);
        let d = diff(&e, &h);
        let names: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(names, ["body", "header:a", "header:b"]);
        assert_eq!(d[1].host_sim_text(), ABSENT);
        assert_eq!(d[2].envoy_text(), ABSENT);
        assert!(diff(&e, &e).is_empty());
    }

    #[test]
    fn json_paths_name_each_differing_leaf() {
        let paths = json_paths(
            r#"{"a":{"b":1,"c":[1,2]},"d":"x"}"#,
            r#"{"a":{"b":2,"c":[1,2]},"e":"x"}"#,
            10,
        )
        .expect("json");
        assert_eq!(
            paths,
            [
                "/a/b: Envoy 1 / host-sim 2",
                "/d: Envoy \"x\" / host-sim <absent>",
                "/e: Envoy <absent> / host-sim \"x\""
            ]
        );
        assert!(json_paths("not json", "{}", 3).is_none());
        let many = json_paths(r#"[1,2,3]"#, r#"[4,5,6]"#, 2).expect("json");
        assert_eq!(many.len(), 3);
        assert_eq!(many[2], "… and 1 more");
    }

    #[test]
    fn short_cuts_long_values() {
        assert_eq!(short("a\nb", 10), "a⏎b");
        assert_eq!(short("abcdef", 3), "abc… (6 bytes)");
    }
}
