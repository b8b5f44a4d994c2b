//! The documented differences (`tests/fidelity/differences.yaml`): the only way a difference
//! between host-sim and Envoy is accepted. Each entry says which cases and fields it covers,
//! optionally what each proxy's value must look like, and why: `kind: intentional` (host-sim
//! differs on purpose) or `kind: gap` (host-sim does not do this like Envoy yet; the entry says
//! precisely what differs). An entry that no longer matches anything is itself a failure, so
//! the list stays true as host-sim closes gaps.

use std::path::Path;

use regex::Regex;
use serde::Deserialize;

use super::compare::FieldDiff;

/// The case ids of the ABI fuzzer's entries start with this (`abi-fuzz/<tags>`): those entries are the fuzzer's,
/// not the fidelity table's.
pub const ABI_FUZZ_CASES: &str = "abi-fuzz";

/// Why a difference is accepted.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// host-sim differs on purpose.
    Intentional,
    /// host-sim does not (yet) behave like Envoy here.
    Gap,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    kind: Kind,
    reason: String,
    /// Case ids (`variant/name`) with `*` wildcards.
    cases: Vec<String>,
    /// Field names (`status`, `body`, `header:x`, `upstream.header:x`, `log` ...) with `*`.
    fields: Vec<String>,
    /// A regular expression Envoy's value must match in full (`<absent>` for none).
    #[serde(default)]
    envoy: Option<String>,
    /// Likewise for host-sim's value.
    #[serde(default)]
    host_sim: Option<String>,
}

/// One documented difference, compiled.
#[derive(Clone, Debug)]
pub struct Documented {
    pub id: String,
    pub kind: Kind,
    pub reason: String,
    pub cases: Vec<String>,
    pub fields: Vec<String>,
    case_patterns: Vec<Regex>,
    field_patterns: Vec<Regex>,
    envoy: Option<Regex>,
    host_sim: Option<Regex>,
}

#[derive(Debug, thiserror::Error)]
pub enum DifferencesError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml_ng::Error,
    },
    #[error("difference {id}: {what}")]
    Invalid { id: String, what: String },
}

impl Documented {
    /// Whether this entry accepts `diff` on case `case_id`.
    pub fn accepts(&self, case_id: &str, diff: &FieldDiff) -> bool {
        self.case_patterns.iter().any(|p| p.is_match(case_id))
            && self.field_patterns.iter().any(|p| p.is_match(&diff.field))
            && self
                .envoy
                .as_ref()
                .is_none_or(|re| re.is_match(diff.envoy_text()))
            && self
                .host_sim
                .as_ref()
                .is_none_or(|re| re.is_match(diff.host_sim_text()))
    }
}

/// Loads and checks the list: ids unique, reasons given, patterns valid.
pub fn load(path: &Path) -> Result<Vec<Documented>, DifferencesError> {
    let text = std::fs::read_to_string(path).map_err(|source| DifferencesError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        DifferencesError::Parse { source, .. } => DifferencesError::Parse {
            path: path.display().to_string(),
            source,
        },
        other => other,
    })
}

/// Parses the list from YAML text.
pub fn parse(text: &str) -> Result<Vec<Documented>, DifferencesError> {
    let entries: Vec<Entry> =
        serde_yaml_ng::from_str(text).map_err(|source| DifferencesError::Parse {
            path: String::new(),
            source,
        })?;
    let mut out: Vec<Documented> = Vec::new();
    for entry in entries {
        let invalid = |what: String| DifferencesError::Invalid {
            id: entry.id.clone(),
            what,
        };
        if out.iter().any(|d| d.id == entry.id) {
            return Err(invalid("the id is used twice".into()));
        }
        if entry.reason.trim().len() < 20 {
            return Err(invalid("give the reason (a sentence, not a word)".into()));
        }
        if entry.cases.is_empty() || entry.fields.is_empty() {
            return Err(invalid("name the cases and the fields it covers".into()));
        }
        let full = |re: &str| {
            Regex::new(&format!("^(?:{re})$")).map_err(|e| invalid(format!("pattern {re:?}: {e}")))
        };
        let case_patterns = entry
            .cases
            .iter()
            .map(|g| glob(g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        let field_patterns = entry
            .fields
            .iter()
            .map(|g| glob(g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        out.push(Documented {
            envoy: entry.envoy.as_deref().map(full).transpose()?,
            host_sim: entry.host_sim.as_deref().map(full).transpose()?,
            id: entry.id,
            kind: entry.kind,
            reason: entry.reason,
            cases: entry.cases,
            fields: entry.fields,
            case_patterns,
            field_patterns,
        });
    }
    Ok(out)
}

/// `*` matches any run of characters; everything else is literal.
fn glob(pattern: &str) -> Result<Regex, regex::Error> {
    let parts: Vec<String> = pattern.split('*').map(regex::escape).collect();
    Regex::new(&format!("^{}$", parts.join(".*")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"
- id: tls_text
  kind: intentional
  reason: the TLS libraries word their errors differently
  cases: ["tls/*"]
  fields: [log]
  envoy: 'x TLS_error:.*'
  host_sim: 'x TLS_error:rustls.*'
"#;

    fn diff(field: &str, e: Option<&str>, h: Option<&str>) -> FieldDiff {
        FieldDiff {
            field: field.into(),
            envoy: e.map(str::to_string),
            host_sim: h.map(str::to_string),
        }
    }

    #[test]
    fn accepts_only_what_it_names() {
        let list = parse(LIST).expect("list");
        let d = &list[0];
        let good = diff(
            "log",
            Some("x TLS_error:CERT"),
            Some("x TLS_error:rustls bad"),
        );
        assert!(d.accepts("tls/wrong_name", &good));
        assert!(!d.accepts("enforce/wrong_name", &good), "other case");
        assert!(!d.accepts("tls/wrong_name", &diff("status", Some("503"), Some("502"))));
        assert!(
            !d.accepts(
                "tls/a",
                &diff("log", Some("x TLS_error:CERT"), Some("x other"))
            ),
            "host-sim's value must match its pattern"
        );
        assert!(!d.accepts("tls/a", &diff("log", Some("x TLS_error:CERT"), None)));
    }

    #[test]
    fn rejects_undocumented_or_duplicate_entries() {
        let no_reason = "- { id: a, kind: gap, reason: because, cases: [x], fields: [y] }";
        assert!(matches!(
            parse(no_reason),
            Err(DifferencesError::Invalid { .. })
        ));
        let twice = format!("{LIST}{LIST}");
        assert!(matches!(
            parse(&twice),
            Err(DifferencesError::Invalid { .. })
        ));
        let unknown = "- { id: a, kind: gap, reason: a reason long enough to pass, cases: [x], fields: [y], why: z }";
        assert!(matches!(
            parse(unknown),
            Err(DifferencesError::Parse { .. })
        ));
        let bad_re = "- { id: a, kind: gap, reason: a reason long enough to pass, cases: [x], fields: [y], envoy: '(' }";
        assert!(matches!(
            parse(bad_re),
            Err(DifferencesError::Invalid { .. })
        ));
    }

    #[test]
    fn kind_is_required() {
        let no_kind = "- { id: a, reason: a reason long enough to pass, cases: [x], fields: [y] }";
        assert!(matches!(
            parse(no_kind),
            Err(DifferencesError::Parse { .. })
        ));
        let list = parse(LIST).expect("list");
        assert_eq!(list[0].kind, Kind::Intentional);
    }

    #[test]
    fn globs_are_literal_but_for_stars() {
        let g = glob("a.b/*").expect("glob");
        assert!(g.is_match("a.b/c"));
        assert!(!g.is_match("aXb/c"));
    }
}
