//! Validates Kubernetes manifests against the `openAPIV3Schema` of CustomResourceDefinitions,
//! the way the API server does for structural schemas with strict field validation.
//!
//! Checked: `apiVersion`/`kind` against the CRD's group, kind and served versions; `metadata`
//! (ObjectMeta rules: name, namespace, labels, annotations); `type`, `nullable`, `required`,
//! `properties` with unknown fields rejected (unless `additionalProperties` or
//! `x-kubernetes-preserve-unknown-fields`), `enum`, `pattern`, `format` (int32, int64, date-time,
//! byte, ipv4, ipv6), `minLength`/`maxLength` (in characters), `minimum`/`maximum` (and their
//! exclusive forms), `multipleOf`, `minItems`/`maxItems`, `uniqueItems`,
//! `minProperties`/`maxProperties`, `items`, `anyOf`/`oneOf`/`allOf`/`not`, and the uniqueness
//! that `x-kubernetes-list-type: set|map` implies.
//!
//! CEL rules (`x-kubernetes-validations`) are evaluated, with [`crate::cel`], on every node present in the document
//! after the schema's defaults are applied, as the API server does on create; transition rules (those reading
//! `oldSelf`) apply only to updates and are counted as skipped. A schema keyword this module does not know is a load
//! error, never silently ignored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::cel;

/// Failure to load CRDs or to parse a manifest file.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name}: document {index}: invalid YAML: {message}")]
    Yaml {
        source_name: String,
        index: usize,
        message: String,
    },
    #[error("{source_name}: document {index}: {path}: {message}")]
    NotJson {
        source_name: String,
        index: usize,
        path: String,
        message: String,
    },
    #[error("CRD {crd}: {path}: {message}")]
    Schema {
        crd: String,
        path: String,
        message: String,
    },
    #[error("CRD for {group}/{kind} is defined twice ({first} and {second})")]
    Duplicate {
        group: String,
        kind: String,
        first: String,
        second: String,
    },
    #[error("no CustomResourceDefinition found under {0}")]
    Empty(PathBuf),
}

/// One YAML document of a manifest file, converted to the JSON the API server sees.
#[derive(Debug, Clone)]
pub struct Document {
    /// Where it came from (a file name, usually).
    pub source: String,
    /// 1-based position among the non-empty documents of its source.
    pub index: usize,
    pub value: Value,
}

impl Document {
    pub fn api_version(&self) -> &str {
        self.value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn namespace(&self) -> Option<&str> {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
    }
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} document {} ({}/{})",
            self.source,
            self.index,
            self.kind(),
            self.name()
        )
    }
}

/// What kind of rule a violation broke; tests match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// `apiVersion`/`kind` do not name a served version of a loaded CRD.
    UnknownResource,
    Required,
    UnknownField,
    Type,
    Null,
    Enum,
    Pattern,
    Format,
    Length,
    Range,
    Count,
    Duplicate,
    Combinator,
    Metadata,
    /// A CEL rule (`x-kubernetes-validations`) is false for the node.
    Rule,
    /// A CEL rule could not be evaluated on the node (the API server refuses the object too).
    RuleError,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ViolationKind::UnknownResource => "unknown resource",
            ViolationKind::Required => "required value",
            ViolationKind::UnknownField => "unknown field",
            ViolationKind::Type => "invalid type",
            ViolationKind::Null => "null value",
            ViolationKind::Enum => "unsupported value",
            ViolationKind::Pattern => "does not match pattern",
            ViolationKind::Format => "invalid format",
            ViolationKind::Length => "invalid length",
            ViolationKind::Range => "out of range",
            ViolationKind::Count => "invalid count",
            ViolationKind::Duplicate => "duplicate value",
            ViolationKind::Combinator => "no matching schema",
            ViolationKind::Metadata => "invalid metadata",
            ViolationKind::Rule => "invalid value",
            ViolationKind::RuleError => "rule evaluation error",
        };
        f.write_str(text)
    }
}

/// A broken rule at a field path in the API server's notation (`spec.rules[0].backendRefs[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub kind: ViolationKind,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "<root>"
        } else {
            &self.path
        };
        write!(f, "{path}: {}: {}", self.kind, self.detail)
    }
}

/// The outcome of validating one document.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// CEL rules evaluated on nodes of the document (each rule once per node it applies to).
    pub rules_evaluated: usize,
    /// Transition rules met on present nodes: they compare with the stored object, so a create skips them.
    pub transition_rules_skipped: usize,
    /// The schema errors included one the API server treats as blocking, so no CEL rule ran (it then adds "some
    /// validation rules were not checked because the object was invalid").
    pub rules_blocked: bool,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The loaded CRDs, keyed by API group and kind.
#[derive(Debug, Default)]
pub struct CrdSet {
    crds: HashMap<(String, String), Crd>,
}

#[derive(Debug)]
struct Crd {
    name: String,
    source: String,
    namespaced: bool,
    versions: BTreeMap<String, CrdVersion>,
}

#[derive(Debug)]
struct CrdVersion {
    served: bool,
    schema: Schema,
}

impl CrdSet {
    /// Loads every `*.yaml`/`*.yml` file in `dir` (not recursive); documents that are not
    /// CustomResourceDefinitions are skipped. Fails if none is found.
    pub fn load_dir(dir: &Path) -> Result<Self, CrdError> {
        let entries = std::fs::read_dir(dir).map_err(|source| CrdError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| CrdError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let path = entry.path();
            if has_yaml_extension(&path) {
                files.push(path);
            }
        }
        files.sort();
        let mut set = CrdSet::default();
        let mut patterns = CompileCache::default();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| CrdError::Io {
                path: path.clone(),
                source,
            })?;
            set.add_yaml_with(&path.display().to_string(), &text, &mut patterns)?;
        }
        if set.crds.is_empty() {
            return Err(CrdError::Empty(dir.to_path_buf()));
        }
        Ok(set)
    }

    /// [`CrdSet::load_dir`] for several folders, into one set.
    pub fn load_dirs(dirs: &[PathBuf]) -> Result<Self, CrdError> {
        let mut set = CrdSet::default();
        for dir in dirs {
            set.crds.extend(CrdSet::load_dir(dir)?.crds);
        }
        Ok(set)
    }

    /// Adds the CRDs found in one (multi-document) YAML text; returns how many were added.
    pub fn add_yaml(&mut self, source: &str, text: &str) -> Result<usize, CrdError> {
        self.add_yaml_with(source, text, &mut CompileCache::default())
    }

    fn add_yaml_with(
        &mut self,
        source: &str,
        text: &str,
        patterns: &mut CompileCache,
    ) -> Result<usize, CrdError> {
        let mut added = 0;
        for doc in parse_documents(source, text)? {
            if doc.kind() != "CustomResourceDefinition" {
                continue;
            }
            let crd = compile_crd(&doc, patterns)?;
            let key = (crd.0.clone(), crd.1.clone());
            if let Some(existing) = self.crds.get(&key) {
                return Err(CrdError::Duplicate {
                    group: key.0,
                    kind: key.1,
                    first: existing.source.clone(),
                    second: source.to_string(),
                });
            }
            self.crds.insert(key, crd.2);
            added += 1;
        }
        Ok(added)
    }

    /// `(group, kind)` of every loaded CRD, sorted.
    pub fn kinds(&self) -> Vec<(String, String)> {
        let mut kinds: Vec<_> = self.crds.keys().cloned().collect();
        kinds.sort();
        kinds
    }

    /// Whether a CRD for the group of `api_version` and this kind is loaded (any version).
    pub fn knows(&self, api_version: &str, kind: &str) -> bool {
        let (group, _) = split_api_version(api_version);
        self.crds
            .contains_key(&(group.to_string(), kind.to_string()))
    }

    /// Validates one document against the schema of its `apiVersion` and `kind`.
    pub fn validate(&self, doc: &Document) -> Report {
        let mut ctx = Ctx::default();
        self.validate_root(&doc.value, &mut ctx);
        ctx.finish()
    }

    fn validate_root(&self, value: &Value, ctx: &mut Ctx) {
        let Some(object) = value.as_object() else {
            ctx.push(
                "",
                ViolationKind::Type,
                format!("a manifest must be an object, got {}", type_name(value)),
            );
            return;
        };
        let api_version = object.get("apiVersion").and_then(Value::as_str);
        let kind = object.get("kind").and_then(Value::as_str);
        let (Some(api_version), Some(kind)) = (api_version, kind) else {
            for field in ["apiVersion", "kind"] {
                if !object.get(field).is_some_and(Value::is_string) {
                    ctx.push(
                        field,
                        ViolationKind::Required,
                        "a string is required".into(),
                    );
                }
            }
            return;
        };
        let (group, version) = split_api_version(api_version);
        let Some(crd) = self.crds.get(&(group.to_string(), kind.to_string())) else {
            ctx.push(
                "kind",
                ViolationKind::UnknownResource,
                format!("no CustomResourceDefinition for kind {kind:?} in group {group:?}"),
            );
            return;
        };
        let served = crd.versions.get(version).filter(|v| v.served);
        let Some(crd_version) = served else {
            let known: Vec<_> = crd
                .versions
                .iter()
                .filter(|(_, v)| v.served)
                .map(|(name, _)| format!("{group}/{name}"))
                .collect();
            ctx.push(
                "apiVersion",
                ViolationKind::UnknownResource,
                format!(
                    "{api_version:?} is not served by {}; served: {}",
                    crd.name,
                    known.join(", ")
                ),
            );
            return;
        };
        match object.get("metadata") {
            Some(metadata) => validate_object_meta(metadata, crd.namespaced, ctx),
            None => ctx.push(
                "metadata",
                ViolationKind::Required,
                "metadata.name is required".into(),
            ),
        }
        // `metadata` is ObjectMeta, checked above; the CRD schema only says `type: object`.
        let mut rest = object.clone();
        rest.remove("metadata");
        // The API server defaults before it validates: CEL rules see the defaulted object.
        let mut rest = Value::Object(rest);
        apply_defaults(&crd_version.schema, &mut rest);
        let mut path = FieldPath::default();
        validate(&crd_version.schema, &rest, &mut path, ctx, Mode::Structural);
    }
}

/// Checks only `metadata` (the ObjectMeta rules), for kinds that have no CRD in the set, such as
/// built-in Kubernetes kinds.
pub fn validate_metadata(doc: &Document, namespaced: bool) -> Vec<Violation> {
    let mut ctx = Ctx::default();
    match doc.value.get("metadata") {
        Some(metadata) => validate_object_meta(metadata, namespaced, &mut ctx),
        None => ctx.push(
            "metadata",
            ViolationKind::Required,
            "metadata.name is required".into(),
        ),
    }
    ctx.violations
}

/// Parses a multi-document YAML text into JSON documents; empty documents are skipped, as
/// kubectl does.
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Document>, CrdError> {
    let mut docs = Vec::new();
    for (position, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let yaml = serde_yaml_ng::Value::deserialize(de).map_err(|e| CrdError::Yaml {
            source_name: source.to_string(),
            index: position + 1,
            message: e.to_string(),
        })?;
        if yaml.is_null() {
            continue;
        }
        let index = docs.len() + 1;
        let mut path = FieldPath::default();
        let value = yaml_to_json(&yaml, &mut path).map_err(|message| CrdError::NotJson {
            source_name: source.to_string(),
            index,
            path: path.to_string(),
            message,
        })?;
        docs.push(Document {
            source: source.to_string(),
            index,
            value,
        });
    }
    Ok(docs)
}

/// Plain scalars that YAML 1.1 (Kubernetes' YAML reader, go-yaml v2 under sigs.k8s.io/yaml)
/// reads as booleans but YAML 1.2 (this module's parser) reads as strings.
const YAML11_BOOLEANS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Finds unquoted values that Kubernetes and this validator would read differently (`on`,
/// `yes`, `n`, ...): returns (1-based line, value). Block scalars (`|`, `>`) are skipped.
pub fn yaml11_ambiguities(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    // Lines indented deeper than this belong to a block scalar.
    let mut block_indent: Option<usize> = None;
    for (number, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let content = line.trim();
        if let Some(outer) = block_indent {
            if content.is_empty() || indent > outer {
                continue;
            }
            block_indent = None;
        }
        let without_comment = match content.find(" #") {
            Some(at) => content[..at].trim_end(),
            None if content.starts_with('#') => "",
            None => content,
        };
        let value = match without_comment.split_once(": ") {
            Some((_, value)) => value.trim(),
            None => without_comment.strip_prefix("- ").unwrap_or("").trim(),
        };
        let value = value.strip_prefix("- ").unwrap_or(value);
        if value.starts_with('|') || value.starts_with('>') {
            block_indent = Some(indent);
            continue;
        }
        if YAML11_BOOLEANS.contains(&value) {
            found.push((number + 1, value.to_string()));
        }
    }
    found
}

/// Lists the manifest files (`*.yaml`, `*.yml`) under `dir`, recursively, sorted.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, CrdError> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|source| CrdError::Io {
            path: current.clone(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| CrdError::Io {
                    path: current.clone(),
                    source,
                })?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if has_yaml_extension(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn has_yaml_extension(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// `group/version` -> (group, version); the core group is the empty string.
fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.rsplit_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    }
}

fn yaml_to_json(yaml: &serde_yaml_ng::Value, path: &mut FieldPath) -> Result<Value, String> {
    use serde_yaml_ng::Value as Y;
    Ok(match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{f} cannot be represented in JSON"))?
            }
        }
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                out.push(yaml_to_json(item, path)?);
                path.pop();
            }
            Value::Array(out)
        }
        Y::Mapping(mapping) => {
            let mut out = Map::new();
            for (key, item) in mapping {
                let Some(key) = key.as_str() else {
                    return Err(format!("mapping key {key:?} is not a string"));
                };
                path.push(Segment::Field(key.to_string()));
                out.insert(key.to_string(), yaml_to_json(item, path)?);
                path.pop();
            }
            Value::Object(out)
        }
        Y::Tagged(tagged) => return Err(format!("YAML tag {} has no JSON form", tagged.tag)),
    })
}

mod compile;
mod formats;
mod object_meta;
mod path;
mod validate;

use compile::*;
use formats::*;
use object_meta::*;
use path::*;
use validate::*;

#[cfg(test)]
mod tests;
