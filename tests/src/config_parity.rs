//! The same configurations accepted and refused: a corpus of bootstrap variants, each judged by
//! `envoy --mode validate` and by host-sim's validation (`host-sim validate`), verdicts compared.
//!
//! The corpus is generated from real bootstraps (the shipped `envoy-config/envoy.yaml`, the fidelity
//! templates, what `host-sim run --print-config` writes) by single mutations at every node: a field
//! removed, an unknown field added beside it, a value replaced by an edge value of its type (empty,
//! zero, negative, too large, the wrong type), a list emptied or its first item repeated. A few
//! hand-written variants are added (`tests/fidelity/config_variants.yaml`).
//!
//! Verdicts: Envoy accepts or refuses; host-sim accepts, refuses, or refuses as *unsupported* (its
//! error says host-sim does not implement the field: the documented subset, docs/host-sim.md).
//! They disagree when host-sim accepts what Envoy refuses (a configuration that passes here and
//! fails in Envoy) or refuses, other than as unsupported, what Envoy accepts (host-sim is wrong
//! about a field it implements). A disagreement fails unless `tests/fidelity/differences.yaml`
//! documents it, as case `config/<base>/<mutation>` and field `verdict`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use crate::fidelity::compare::FieldDiff;
use crate::fidelity::differences::Documented;
use crate::template::{self, Vars};

/// The case id prefix differences.yaml entries use for the corpus.
pub const CASE_ID: &str = "config";

/// A bootstrap the corpus mutates.
#[derive(Clone, Debug)]
pub struct Base {
    pub name: String,
    pub yaml: String,
}

/// One configuration of the corpus.
#[derive(Clone, Debug)]
pub struct Variant {
    /// `config/<base>/<mutation>`.
    pub id: String,
    pub yaml: String,
}

/// What one proxy said of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Refused(String),
    /// host-sim only: refused because host-sim does not implement what the configuration uses.
    Unsupported(String),
}

impl Verdict {
    /// How the differences list's patterns see it: `accepted`, `refused: <why>`, `unsupported: <why>`.
    pub fn text(&self) -> String {
        match self {
            Verdict::Accepted => "accepted".into(),
            Verdict::Refused(why) => format!("refused: {why}"),
            Verdict::Unsupported(why) => format!("unsupported: {why}"),
        }
    }

    fn accepted(&self) -> bool {
        matches!(self, Verdict::Accepted)
    }
}

/// Phrases with which host-sim's configuration errors say it does not implement something.
const UNSUPPORTED_PHRASES: [&str; 5] = [
    "not supported by host-sim",
    "host-sim supports",
    "host-sim implements",
    "host-sim does not implement",
    "which host-sim does not",
];

/// host-sim's verdict from its validation error (`{:#}` of the error chain).
pub fn host_sim_verdict(result: &anyhow::Result<()>) -> Verdict {
    match result {
        Ok(()) => Verdict::Accepted,
        Err(error) => {
            let text = format!("{error:#}");
            if UNSUPPORTED_PHRASES.iter().any(|p| text.contains(p)) {
                Verdict::Unsupported(text)
            } else {
                Verdict::Refused(text)
            }
        }
    }
}

/// Envoy's verdict: the last error line of its log, which names the field.
pub fn envoy_verdict(success: bool, log: &str) -> Verdict {
    if success {
        return Verdict::Accepted;
    }
    let why = log
        .lines()
        .rev()
        .find(|l| {
            l.contains("error") || l.contains("rror initializing") || l.contains("Proto constraint")
        })
        .or_else(|| log.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim();
    Verdict::Refused(why.chars().take(400).collect())
}

/// Whether the two verdicts disagree (see the module docs).
pub fn disagree(envoy: &Verdict, host_sim: &Verdict) -> bool {
    matches!(
        (envoy.accepted(), host_sim),
        (false, Verdict::Accepted) | (true, Verdict::Refused(_))
    )
}

/// The documented differences that concern the corpus.
pub fn corpus_differences(all: Vec<Documented>) -> Vec<Documented> {
    all.into_iter()
        .filter(|d| d.cases.iter().all(|c| c.starts_with(CASE_ID)))
        .collect()
}

/// Whether a documented entry accepts the disagreement on `id`.
pub fn documented(
    documented: &[Documented],
    id: &str,
    envoy: &Verdict,
    host_sim: &Verdict,
) -> bool {
    let diff = FieldDiff {
        field: "verdict".into(),
        envoy: Some(envoy.text()),
        host_sim: Some(host_sim.text()),
    };
    documented.iter().any(|d| d.accepts(id, &diff))
}

// --- The bases --------------------------------------------------------------------------------

/// Files the bases need, fixed so every run renders the same text.
pub struct BaseInputs {
    pub filter_wasm: PathBuf,
    pub probe_wasm: PathBuf,
    pub module_wasm: PathBuf,
    /// A scratch directory for access logs.
    pub scratch: PathBuf,
}

/// The placeholders the bases are rendered with (and hand-written replacements may use).
pub fn base_vars(inputs: &BaseInputs) -> Vars {
    let mut vars = Vars::new();
    for (name, value) in [
        ("ADMIN_PORT", "0".to_string()),
        ("LISTENER_PORT", "0".to_string()),
        ("PLAIN_PORT", "10801".to_string()),
        ("SCRIPTED_PORT", "10802".to_string()),
        ("SINK_PORT", "10803".to_string()),
        (
            "ACCESS_LOG",
            inputs
                .scratch
                .join("access.log")
                .to_string_lossy()
                .into_owned(),
        ),
        ("DOWNSTREAM_CONFIG", "\"corpus-config\"".to_string()),
        (
            "PROBE_WASM",
            inputs.probe_wasm.to_string_lossy().into_owned(),
        ),
        (
            "MODULE_WASM",
            inputs.module_wasm.to_string_lossy().into_owned(),
        ),
        ("MODULE_ROOT_ID", "sdk_examples".to_string()),
    ] {
        vars.insert(name.to_string(), value);
    }
    vars
}

/// The bootstraps the corpus starts from; each must be accepted by both.
pub fn bases(root: &Path, inputs: &BaseInputs) -> anyhow::Result<Vec<Base>> {
    let read = |rel: &str| {
        std::fs::read_to_string(root.join(rel)).map_err(|e| anyhow::anyhow!("reading {rel}: {e}"))
    };
    let shipped = read("envoy-config/envoy.yaml")?.replace(
        "target/wasm32-unknown-unknown/release/dfp_filter.wasm",
        &inputs.filter_wasm.to_string_lossy(),
    );
    let vars = base_vars(inputs);
    let probe = template::render(&read("tests/fidelity/templates/probe.yaml")?, &vars)?;
    let module = template::render(&read("tests/fidelity/templates/module.yaml")?, &vars)?;
    let run = |upstream| {
        host_sim::run_config::bootstrap(&host_sim::run_config::RunSpec {
            wasm: inputs.module_wasm.clone(),
            plugin_config: Some("corpus-config".into()),
            vm_config: None,
            root_id: "sdk_examples".into(),
            upstream,
            listen: "127.0.0.1:0".parse().expect("a socket address"),
            admin: "127.0.0.1:0".parse().expect("a socket address"),
        })
    };
    Ok(vec![
        Base {
            name: "shipped".into(),
            yaml: shipped,
        },
        Base {
            name: "probe".into(),
            yaml: probe,
        },
        Base {
            name: "module".into(),
            yaml: module,
        },
        Base {
            name: "run-static".into(),
            yaml: run(host_sim::run_config::Upstream::Static(
                "127.0.0.1:10801".parse().expect("a socket address"),
            )),
        },
        Base {
            name: "run-dfp".into(),
            yaml: run(host_sim::run_config::Upstream::DynamicForwardProxy),
        },
    ])
}

// --- Mutations --------------------------------------------------------------------------------

/// A step into a YAML document.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn path_text(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// One change at one node.
#[derive(Clone, Debug)]
enum Change {
    Remove,
    AddUnknownField,
    Replace(&'static str, Value),
    /// A list: its first item twice.
    RepeatFirst,
}

/// Keys whose values the corpus leaves alone: the plugin's own configuration is the filter's
/// business (tests/cases/invalid_configs.yaml), and a file name changed is a missing file.
const LEFT_ALONE: [&str; 2] = ["configuration", "filename"];

fn changes_for(value: &Value, in_mapping: bool) -> Vec<Change> {
    let mut changes = Vec::new();
    if in_mapping {
        changes.push(Change::Remove);
    }
    match value {
        Value::String(s) => {
            changes.push(Change::Replace("empty", Value::String(String::new())));
            if is_duration(s) {
                changes.push(Change::Replace("negative", Value::String(format!("-{s}"))));
                changes.push(Change::Replace("zero", Value::String("0s".into())));
                changes.push(Change::Replace(
                    "not-a-duration",
                    Value::String("1x".into()),
                ));
            } else if s.chars().all(|c| c.is_ascii_uppercase() || c == '_') && s.len() > 1 {
                changes.push(Change::Replace(
                    "unknown-enum",
                    Value::String("NOT_A_VALUE".into()),
                ));
            }
            changes.push(Change::Replace("list", Value::Sequence(vec![])));
        }
        Value::Number(n) => {
            changes.push(Change::Replace("zero", Value::from(0)));
            if n.as_u64().is_some_and(|v| v > 0) {
                changes.push(Change::Replace("negative", Value::from(-1)));
                changes.push(Change::Replace("huge", Value::from(4_294_967_296u64)));
            }
            changes.push(Change::Replace("string", Value::String("x".into())));
        }
        Value::Bool(b) => {
            changes.push(Change::Replace("flipped", Value::Bool(!b)));
            changes.push(Change::Replace("string", Value::String("x".into())));
        }
        Value::Sequence(items) => {
            changes.push(Change::Replace("empty", Value::Sequence(vec![])));
            if !items.is_empty() {
                changes.push(Change::RepeatFirst);
            }
            changes.push(Change::Replace("mapping", Value::Mapping(Mapping::new())));
        }
        Value::Mapping(_) => {
            changes.push(Change::AddUnknownField);
            changes.push(Change::Replace("empty", Value::Mapping(Mapping::new())));
            changes.push(Change::Replace("string", Value::String("x".into())));
        }
        _ => {}
    }
    changes
}

fn change_name(change: &Change) -> String {
    match change {
        Change::Remove => "remove".into(),
        Change::AddUnknownField => "unknown-field".into(),
        Change::Replace(name, _) => (*name).into(),
        Change::RepeatFirst => "repeat-first".into(),
    }
}

fn is_duration(s: &str) -> bool {
    s.strip_suffix('s')
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// Every (path, change) of a document, in document order.
fn all_changes(doc: &Value) -> Vec<(Vec<Step>, Change)> {
    fn walk(
        value: &Value,
        path: &mut Vec<Step>,
        in_mapping: bool,
        out: &mut Vec<(Vec<Step>, Change)>,
    ) {
        if !path.is_empty() {
            for change in changes_for(value, in_mapping) {
                out.push((path.clone(), change));
            }
        }
        match value {
            Value::Mapping(map) => {
                for (key, child) in map {
                    let Some(key) = key.as_str() else { continue };
                    if LEFT_ALONE.contains(&key) {
                        continue;
                    }
                    path.push(Step::Key(key.to_string()));
                    walk(child, path, true, out);
                    path.pop();
                }
            }
            Value::Sequence(items) => {
                for (i, child) in items.iter().enumerate() {
                    path.push(Step::Index(i));
                    walk(child, path, false, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(doc, &mut Vec::new(), false, &mut out);
    out
}

fn apply(doc: &mut Value, path: &[Step], change: &Change) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = doc;
    for step in parents {
        node = match (step, node) {
            (Step::Key(k), Value::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Step::Index(i), Value::Sequence(s)) => match s.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    let target = match (last, &mut *node) {
        (Step::Key(k), Value::Mapping(m)) => {
            if let Change::Remove = change {
                return m.remove(k.as_str()).is_some();
            }
            m.get_mut(k.as_str())
        }
        (Step::Index(i), Value::Sequence(s)) => s.get_mut(*i),
        _ => None,
    };
    let Some(target) = target else { return false };
    match change {
        Change::Remove => false,
        Change::AddUnknownField => match target {
            Value::Mapping(m) => {
                m.insert(Value::from("x_corpus_unknown_field"), Value::from(1));
                true
            }
            _ => false,
        },
        Change::Replace(_, value) => {
            *target = value.clone();
            true
        }
        Change::RepeatFirst => match target {
            Value::Sequence(items) if !items.is_empty() => {
                let first = items[0].clone();
                items.insert(1, first);
                true
            }
            _ => false,
        },
    }
}

/// One single mutation of a base, not yet rendered (rendering every one of thousands is slow).
#[derive(Clone, Debug)]
pub struct Mutation {
    /// `config/<base>/<path>:<change>`.
    pub id: String,
    /// The base document, anchors and merge keys resolved.
    doc: std::sync::Arc<Value>,
    path: Vec<Step>,
    change: Change,
}

impl Mutation {
    /// The mutated bootstrap as YAML; `None` if the change does not apply.
    pub fn render(&self) -> anyhow::Result<Option<Variant>> {
        let mut mutated = (*self.doc).clone();
        if !apply(&mut mutated, &self.path, &self.change) {
            return Ok(None);
        }
        Ok(Some(Variant {
            id: self.id.clone(),
            yaml: serde_yaml_ng::to_string(&mutated)?,
        }))
    }
}

/// Every single mutation of `base`, in document order.
pub fn mutations(base: &Base) -> anyhow::Result<Vec<Mutation>> {
    let mut doc: Value = serde_yaml_ng::from_str(&base.yaml)?;
    doc.apply_merge()?;
    let doc = std::sync::Arc::new(doc);
    Ok(all_changes(&doc)
        .into_iter()
        .map(|(path, change)| Mutation {
            id: format!(
                "{CASE_ID}/{}/{}:{}",
                base.name,
                path_text(&path),
                change_name(&change)
            ),
            doc: doc.clone(),
            path,
            change,
        })
        .collect())
}

// --- Hand-written variants ----------------------------------------------------------------------

/// A hand-written variant: a base with text replaced (`tests/fidelity/config_variants.yaml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Written {
    pub name: String,
    pub base: String,
    #[serde(default)]
    pub description: String,
    /// Replacements of text in the base, in order; each must match.
    pub replace: Vec<Replacement>,
    /// What Envoy says (checked, so the variant keeps testing what it says it does).
    pub envoy: Expected,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replacement {
    pub from: String,
    pub to: String,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Expected {
    Accepts,
    Refuses,
}

/// The hand-written variants, rendered against `bases` (replacements with `vars`).
pub fn written(
    path: &Path,
    bases: &[Base],
    vars: &Vars,
) -> anyhow::Result<Vec<(Variant, Expected)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let entries: Vec<Written> =
        serde_yaml_ng::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let by_name: BTreeMap<&str, &Base> = bases.iter().map(|b| (b.name.as_str(), b)).collect();
    entries
        .into_iter()
        .map(|w| {
            let base = by_name
                .get(w.base.as_str())
                .ok_or_else(|| anyhow::anyhow!("variant {}: no base {:?}", w.name, w.base))?;
            let mut yaml = base.yaml.clone();
            for r in &w.replace {
                anyhow::ensure!(
                    yaml.contains(&r.from),
                    "variant {}: {:?} is not in base {}",
                    w.name,
                    r.from,
                    w.base
                );
                yaml = yaml.replacen(&r.from, &template::render(&r.to, vars)?, 1);
            }
            Ok((
                Variant {
                    id: format!("{CASE_ID}/written/{}", w.name),
                    yaml,
                },
                w.envoy,
            ))
        })
        .collect()
}

/// A deterministic sample of `n` of `variants` (all when `n` is 0 or at least their number), spread
/// evenly so that every base and every part of each document is represented.
pub fn sample<T>(variants: Vec<T>, n: usize) -> Vec<T> {
    if n >= variants.len() || n == 0 {
        return variants;
    }
    let len = variants.len();
    variants
        .into_iter()
        .enumerate()
        .filter(|(i, _)| (i * n) / len != ((i + 1) * n) / len)
        .map(|(_, v)| v)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(yaml: &str) -> Base {
        Base {
            name: "b".into(),
            yaml: yaml.into(),
        }
    }

    #[test]
    fn every_node_gets_its_mutations_with_a_path() {
        let variants: Vec<Variant> = mutations(&base("a:\n  b: 1s\n  c: [x]\n"))
            .expect("mutations")
            .iter()
            .filter_map(|m| m.render().expect("renders"))
            .collect();
        let ids: Vec<&str> = variants.iter().map(|v| v.id.as_str()).collect();
        for expected in [
            "config/b/a:remove",
            "config/b/a:unknown-field",
            "config/b/a.b:negative",
            "config/b/a.b:not-a-duration",
            "config/b/a.c:repeat-first",
            "config/b/a.c[0]:empty",
        ] {
            assert!(ids.contains(&expected), "{expected} missing from {ids:?}");
        }
        let negative = variants
            .iter()
            .find(|v| v.id == "config/b/a.b:negative")
            .expect("negative");
        assert!(negative.yaml.contains("-1s"), "{}", negative.yaml);
    }

    #[test]
    fn a_sample_keeps_the_spread_and_the_size() {
        let variants: Vec<Variant> = (0..100)
            .map(|i| Variant {
                id: i.to_string(),
                yaml: String::new(),
            })
            .collect();
        let picked = sample(variants, 10);
        assert_eq!(picked.len(), 10);
        assert_eq!(picked.first().map(|v| v.id.as_str()), Some("9"));
        assert_eq!(picked.last().map(|v| v.id.as_str()), Some("99"));
    }

    #[test]
    fn disagreements_are_the_two_wrong_ways() {
        let refused = Verdict::Refused("x".into());
        let unsupported = Verdict::Unsupported("x".into());
        assert!(disagree(&refused, &Verdict::Accepted));
        assert!(disagree(&Verdict::Accepted, &refused));
        assert!(!disagree(&Verdict::Accepted, &unsupported));
        assert!(!disagree(&refused, &unsupported));
        assert!(!disagree(&refused, &refused));
    }
}
