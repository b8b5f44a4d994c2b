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

// ---------------------------------------------------------------------------------------------
// Field paths

#[derive(Debug, Clone)]
enum Segment {
    Field(String),
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, Default)]
struct FieldPath(Vec<Segment>);

impl FieldPath {
    fn push(&mut self, segment: Segment) {
        self.0.push(segment);
    }

    fn pop(&mut self) {
        self.0.pop();
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Field(name) if i == 0 => write!(f, "{name}")?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Key(key) => write!(f, "[{key}]")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Compiled schemas

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl JsonType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "object" => JsonType::Object,
            "array" => JsonType::Array,
            "string" => JsonType::String,
            "integer" => JsonType::Integer,
            "number" => JsonType::Number,
            "boolean" => JsonType::Boolean,
            _ => return None,
        })
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            JsonType::Object => value.is_object(),
            JsonType::Array => value.is_array(),
            JsonType::String => value.is_string(),
            JsonType::Integer => is_integer(value),
            JsonType::Number => value.is_number(),
            JsonType::Boolean => value.is_boolean(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            JsonType::Object => "object",
            JsonType::Array => "array",
            JsonType::String => "string",
            JsonType::Integer => "integer",
            JsonType::Number => "number",
            JsonType::Boolean => "boolean",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Int32,
    Int64,
    DateTime,
    Byte,
    Ipv4,
    Ipv6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListType {
    Atomic,
    Set,
    Map,
}

#[derive(Debug, Default)]
enum Additional {
    #[default]
    Unset,
    Allowed(bool),
    Schema(Box<Schema>),
}

#[derive(Debug)]
struct Pattern {
    source: String,
    regex: Arc<Regex>,
}

#[derive(Debug, Clone)]
struct CelRule {
    rule: Arc<cel::Rule>,
    message: String,
}

#[derive(Debug, Default)]
struct Schema {
    json_type: Option<JsonType>,
    nullable: bool,
    properties: BTreeMap<String, Schema>,
    required: Vec<String>,
    additional: Additional,
    items: Option<Box<Schema>>,
    enumeration: Option<Vec<Value>>,
    pattern: Option<Pattern>,
    format: Option<Format>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: bool,
    exclusive_maximum: bool,
    multiple_of: Option<f64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    unique_items: bool,
    min_properties: Option<u64>,
    max_properties: Option<u64>,
    any_of: Vec<Schema>,
    one_of: Vec<Schema>,
    all_of: Vec<Schema>,
    not: Option<Box<Schema>>,
    preserve_unknown: bool,
    int_or_string: bool,
    list_type: Option<ListType>,
    list_map_keys: Vec<String>,
    cel: Vec<CelRule>,
    /// Applied to an absent property before validation, as the API server defaults.
    default: Option<Value>,
}

/// Shares compiled regexes and CEL rules: the same few repeat hundreds of times across the CRDs.
#[derive(Default)]
struct CompileCache {
    patterns: HashMap<String, Arc<Regex>>,
    rules: HashMap<String, Arc<cel::Rule>>,
}

impl CompileCache {
    /// Kubernetes evaluates `pattern` with Go's RE2, where `\d`, `\w`, `\s` are ASCII-only:
    /// Unicode mode off gives the same classes (and matches `.` per byte, which differs only
    /// for counted repetitions over non-ASCII text).
    fn compile(&mut self, source: &str) -> Result<Arc<Regex>, String> {
        if let Some(regex) = self.patterns.get(source) {
            return Ok(Arc::clone(regex));
        }
        let regex = RegexBuilder::new(source)
            .unicode(false)
            .size_limit(64 << 20)
            .build()
            .map_err(|e| format!("pattern {source:?} does not compile: {e}"))?;
        let regex = Arc::new(regex);
        self.patterns.insert(source.to_string(), Arc::clone(&regex));
        Ok(regex)
    }

    /// A CRD whose rule does not compile is refused by the API server, so it is a load error here too.
    fn rule(&mut self, text: &str) -> Result<Arc<cel::Rule>, String> {
        if let Some(rule) = self.rules.get(text) {
            return Ok(Arc::clone(rule));
        }
        let rule = Arc::new(cel::Rule::compile(text).map_err(|e| e.to_string())?);
        self.rules.insert(text.to_string(), Arc::clone(&rule));
        Ok(rule)
    }
}

/// Returns (group, kind, compiled CRD).
fn compile_crd(
    doc: &Document,
    patterns: &mut CompileCache,
) -> Result<(String, String, Crd), CrdError> {
    let name = doc.name().to_string();
    let err = |path: &str, message: String| CrdError::Schema {
        crd: if name.is_empty() {
            doc.to_string()
        } else {
            name.clone()
        },
        path: path.to_string(),
        message,
    };
    let spec = doc
        .value
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| err("spec", "missing".into()))?;
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .ok_or_else(|| err("spec.group", "missing".into()))?;
    let kind = spec
        .pointer_str("names", "kind")
        .ok_or_else(|| err("spec.names.kind", "missing".into()))?;
    let namespaced = match spec.get("scope").and_then(Value::as_str) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => {
            return Err(err(
                "spec.scope",
                format!("expected Namespaced or Cluster, got {other:?}"),
            ))
        }
    };
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .ok_or_else(|| err("spec.versions", "missing".into()))?;
    let mut compiled = BTreeMap::new();
    for (i, version) in versions.iter().enumerate() {
        let base = format!("spec.versions[{i}]");
        let version_name = version
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| err(&format!("{base}.name"), "missing".into()))?;
        let served = version
            .get("served")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let raw = version
            .pointer("/schema/openAPIV3Schema")
            .ok_or_else(|| err(&format!("{base}.schema.openAPIV3Schema"), "missing".into()))?;
        let schema_path = format!("{base}.schema.openAPIV3Schema");
        let schema = compile_schema(raw, &schema_path, patterns, true)
            .map_err(|(path, message)| err(&path, message))?;
        compiled.insert(version_name.to_string(), CrdVersion { served, schema });
    }
    Ok((
        group.to_string(),
        kind.to_string(),
        Crd {
            name,
            source: doc.source.clone(),
            namespaced,
            versions: compiled,
        },
    ))
}

trait PointerStr {
    fn pointer_str(&self, a: &str, b: &str) -> Option<&str>;
}

impl PointerStr for Map<String, Value> {
    fn pointer_str(&self, a: &str, b: &str) -> Option<&str> {
        self.get(a)?.get(b)?.as_str()
    }
}

/// Keywords that only describe; they do not constrain a value.
const ANNOTATIONS: &[&str] = &["description", "example", "title", "externalDocs"];

/// Compiles one schema node. `structural` is false inside `anyOf`/`oneOf`/`allOf`/`not`, where
/// Kubernetes allows nodes without `type`. Errors carry the schema path.
fn compile_schema(
    raw: &Value,
    path: &str,
    patterns: &mut CompileCache,
    structural: bool,
) -> Result<Schema, (String, String)> {
    let fail = |key: &str, message: String| (format!("{path}.{key}"), message);
    let object = raw.as_object().ok_or_else(|| {
        (
            path.to_string(),
            format!("a schema must be an object, got {}", type_name(raw)),
        )
    })?;
    let mut schema = Schema::default();
    for (key, value) in object {
        let as_u64 = || {
            value
                .as_u64()
                .ok_or_else(|| fail(key, format!("expected a non-negative integer, got {value}")))
        };
        let as_f64 = || {
            value
                .as_f64()
                .ok_or_else(|| fail(key, format!("expected a number, got {value}")))
        };
        let as_bool = || {
            value
                .as_bool()
                .ok_or_else(|| fail(key, format!("expected a boolean, got {value}")))
        };
        let as_str = || {
            value
                .as_str()
                .ok_or_else(|| fail(key, format!("expected a string, got {value}")))
        };
        let sub_list = |patterns: &mut CompileCache| -> Result<Vec<Schema>, (String, String)> {
            let items = value
                .as_array()
                .ok_or_else(|| fail(key, "expected a list of schemas".into()))?;
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    compile_schema(item, &format!("{path}.{key}[{i}]"), patterns, false)
                })
                .collect()
        };
        match key.as_str() {
            k if ANNOTATIONS.contains(&k) => {}
            "default" => schema.default = Some(value.clone()),
            "type" => {
                let name = as_str()?;
                schema.json_type = Some(
                    JsonType::parse(name)
                        .ok_or_else(|| fail(key, format!("unknown type {name:?}")))?,
                );
            }
            "nullable" => schema.nullable = as_bool()?,
            "properties" => {
                let properties = value
                    .as_object()
                    .ok_or_else(|| fail(key, "expected a map of schemas".into()))?;
                for (name, sub) in properties {
                    let sub_path = format!("{path}.properties[{name}]");
                    let compiled = compile_schema(sub, &sub_path, patterns, structural)?;
                    schema.properties.insert(name.clone(), compiled);
                }
            }
            "required" => {
                let items = value
                    .as_array()
                    .ok_or_else(|| fail(key, "expected a list of names".into()))?;
                for item in items {
                    let name = item
                        .as_str()
                        .ok_or_else(|| fail(key, format!("expected a field name, got {item}")))?;
                    schema.required.push(name.to_string());
                }
            }
            "additionalProperties" => {
                schema.additional = match value {
                    Value::Bool(allowed) => Additional::Allowed(*allowed),
                    _ => Additional::Schema(Box::new(compile_schema(
                        value,
                        &format!("{path}.additionalProperties"),
                        patterns,
                        structural,
                    )?)),
                };
            }
            "items" => {
                schema.items = Some(Box::new(compile_schema(
                    value,
                    &format!("{path}.items"),
                    patterns,
                    structural,
                )?));
            }
            "enum" => {
                let items = value
                    .as_array()
                    .ok_or_else(|| fail(key, "expected a list of values".into()))?;
                schema.enumeration = Some(items.clone());
            }
            "pattern" => {
                let source = as_str()?;
                let regex = patterns.compile(source).map_err(|m| fail(key, m))?;
                schema.pattern = Some(Pattern {
                    source: source.to_string(),
                    regex,
                });
            }
            "format" => {
                schema.format = Some(match as_str()? {
                    "int32" => Format::Int32,
                    "int64" => Format::Int64,
                    "date-time" => Format::DateTime,
                    "byte" => Format::Byte,
                    "ipv4" => Format::Ipv4,
                    "ipv6" => Format::Ipv6,
                    other => {
                        return Err(fail(
                            key,
                            format!("format {other:?} is not supported by this validator"),
                        ))
                    }
                });
            }
            "minLength" => schema.min_length = Some(as_u64()?),
            "maxLength" => schema.max_length = Some(as_u64()?),
            "minimum" => schema.minimum = Some(as_f64()?),
            "maximum" => schema.maximum = Some(as_f64()?),
            "exclusiveMinimum" => schema.exclusive_minimum = as_bool()?,
            "exclusiveMaximum" => schema.exclusive_maximum = as_bool()?,
            "multipleOf" => schema.multiple_of = Some(as_f64()?),
            "minItems" => schema.min_items = Some(as_u64()?),
            "maxItems" => schema.max_items = Some(as_u64()?),
            "uniqueItems" => schema.unique_items = as_bool()?,
            "minProperties" => schema.min_properties = Some(as_u64()?),
            "maxProperties" => schema.max_properties = Some(as_u64()?),
            "anyOf" => schema.any_of = sub_list(patterns)?,
            "oneOf" => schema.one_of = sub_list(patterns)?,
            "allOf" => schema.all_of = sub_list(patterns)?,
            "not" => {
                schema.not = Some(Box::new(compile_schema(
                    value,
                    &format!("{path}.not"),
                    patterns,
                    false,
                )?));
            }
            "x-kubernetes-preserve-unknown-fields" => schema.preserve_unknown = as_bool()?,
            "x-kubernetes-int-or-string" => schema.int_or_string = as_bool()?,
            "x-kubernetes-list-type" => {
                schema.list_type = Some(match as_str()? {
                    "atomic" => ListType::Atomic,
                    "set" => ListType::Set,
                    "map" => ListType::Map,
                    other => return Err(fail(key, format!("unknown list type {other:?}"))),
                });
            }
            "x-kubernetes-list-map-keys" => {
                let items = value
                    .as_array()
                    .ok_or_else(|| fail(key, "expected a list of field names".into()))?;
                for item in items {
                    let name = item
                        .as_str()
                        .ok_or_else(|| fail(key, format!("expected a field name, got {item}")))?;
                    schema.list_map_keys.push(name.to_string());
                }
            }
            // Only affects how server-side apply merges; nothing to validate.
            "x-kubernetes-map-type" => {
                let kind = as_str()?;
                if kind != "atomic" && kind != "granular" {
                    return Err(fail(key, format!("unknown map type {kind:?}")));
                }
            }
            "x-kubernetes-validations" => {
                let rules = value
                    .as_array()
                    .ok_or_else(|| fail(key, "expected a list of rules".into()))?;
                for rule in rules {
                    let text = rule
                        .get("rule")
                        .and_then(Value::as_str)
                        .ok_or_else(|| fail(key, format!("a rule without `rule`: {rule}")))?;
                    let message = rule
                        .get("message")
                        .or_else(|| rule.get("messageExpression"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let compiled = patterns.rule(text).map_err(|e| fail(key, e))?;
                    schema.cel.push(CelRule {
                        rule: compiled,
                        // The API server's text for a rule without a message.
                        message: if message.is_empty() {
                            format!("failed rule: {text}")
                        } else {
                            message.to_string()
                        },
                    });
                }
            }
            other => {
                return Err(fail(
                    other,
                    "schema keyword not supported by this validator".into(),
                ));
            }
        }
    }
    if structural && schema.json_type.is_none() && !schema.preserve_unknown && !schema.int_or_string
    {
        return Err((
            path.to_string(),
            "structural schema node without `type` (and not int-or-string or preserve-unknown-fields)"
                .into(),
        ));
    }
    if schema.list_type == Some(ListType::Map) && schema.list_map_keys.is_empty() {
        return Err((
            path.to_string(),
            "list-type map without list-map-keys".into(),
        ));
    }
    Ok(schema)
}

// ---------------------------------------------------------------------------------------------
// Validation

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The main tree: it defines which fields exist, so unknown fields are errors.
    Structural,
    /// Inside `anyOf`/`oneOf`/`allOf`/`not`: value checks only.
    ValueOnly,
}

#[derive(Default)]
struct Ctx {
    violations: Vec<Violation>,
    /// A schema error the API server treats as blocking for CEL (`hasBlockingErr` in apiextensions-apiserver's
    /// customresource strategy: required, unsupported value, wrong type, too long, too many).
    blocking: bool,
    /// Each present node's rules, run once the schema checks are done.
    rules: Vec<PendingRule>,
}

struct PendingRule {
    path: String,
    node: Value,
    rule: CelRule,
}

impl Ctx {
    fn push(&mut self, path: impl fmt::Display, kind: ViolationKind, detail: String) {
        self.blocking |= match kind {
            ViolationKind::Required | ViolationKind::Enum | ViolationKind::Type => true,
            ViolationKind::Length => detail.contains("longer than"),
            ViolationKind::Count => detail.contains("at most"),
            _ => false,
        };
        self.violations.push(Violation {
            path: path.to_string(),
            kind,
            detail,
        });
    }

    /// Evaluates the collected rules with `self` bound to their nodes, unless a blocking schema error came first
    /// (then the API server checks no rule and says so; see [`Report::rules_blocked`]).
    fn finish(mut self) -> Report {
        let mut report = Report::default();
        if self.blocking && !self.rules.is_empty() {
            report.rules_blocked = true;
        } else {
            for pending in std::mem::take(&mut self.rules) {
                if pending.rule.rule.is_transition() {
                    report.transition_rules_skipped += 1;
                    continue;
                }
                report.rules_evaluated += 1;
                match pending.rule.rule.evaluate(&pending.node) {
                    Ok(true) => {}
                    Ok(false) => self.push(pending.path, ViolationKind::Rule, pending.rule.message),
                    Err(error) => {
                        self.push(pending.path, ViolationKind::RuleError, error.to_string())
                    }
                }
            }
        }
        report.violations = self.violations;
        report
    }
}

fn validate(schema: &Schema, value: &Value, path: &mut FieldPath, ctx: &mut Ctx, mode: Mode) {
    if value.is_null() {
        if !schema.nullable && mode == Mode::Structural {
            // The API server drops such fields silently; a manifest that says `key:` with no
            // value almost always lost its content to an indentation mistake.
            ctx.push(path, ViolationKind::Null, "null is not allowed here".into());
        }
        return;
    }
    if !check_type(schema, value, path, ctx) {
        return;
    }
    check_rules(schema, value, path, ctx);
    check_enum(schema, value, path, ctx);
    match value {
        Value::String(text) => check_string(schema, text, path, ctx),
        Value::Number(_) => check_number(schema, value, path, ctx),
        Value::Array(items) => check_array(schema, items, path, ctx, mode),
        Value::Object(object) => check_object(schema, object, path, ctx, mode),
        Value::Bool(_) | Value::Null => {}
    }
    check_combinators(schema, value, path, ctx);
}

/// Collects the node's CEL rules; [`Ctx::finish`] runs them.
fn check_rules(schema: &Schema, value: &Value, path: &FieldPath, ctx: &mut Ctx) {
    for rule in &schema.cel {
        ctx.rules.push(PendingRule {
            path: path.to_string(),
            node: value.clone(),
            rule: rule.clone(),
        });
    }
}

/// Fills absent properties that have a `default` (and, below them, theirs), as the API server's structural
/// defaulting does before validation: properties, `additionalProperties` values and list items.
fn apply_defaults(schema: &Schema, value: &mut Value) {
    match value {
        Value::Object(object) => {
            for (name, property) in &schema.properties {
                if let Some(default) = &property.default {
                    let absent = match object.get(name) {
                        None => true,
                        // A null where null is not allowed is pruned, then defaulted.
                        Some(Value::Null) => !property.nullable,
                        Some(_) => false,
                    };
                    if absent {
                        object.insert(name.clone(), default.clone());
                    }
                }
            }
            for (name, item) in object.iter_mut() {
                if let Some(property) = schema.properties.get(name) {
                    apply_defaults(property, item);
                } else if let Additional::Schema(extra) = &schema.additional {
                    apply_defaults(extra, item);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = &schema.items {
                for item in items {
                    apply_defaults(item_schema, item);
                }
            }
        }
        _ => {}
    }
}

fn check_type(schema: &Schema, value: &Value, path: &FieldPath, ctx: &mut Ctx) -> bool {
    if schema.int_or_string {
        if is_integer(value) || value.is_string() {
            return true;
        }
        ctx.push(
            path,
            ViolationKind::Type,
            format!("expected an integer or a string, got {}", type_name(value)),
        );
        return false;
    }
    match schema.json_type {
        Some(expected) if !expected.accepts(value) => {
            ctx.push(
                path,
                ViolationKind::Type,
                format!("expected {}, got {}", expected.name(), type_name(value)),
            );
            false
        }
        _ => true,
    }
}

fn check_enum(schema: &Schema, value: &Value, path: &FieldPath, ctx: &mut Ctx) {
    let Some(allowed) = &schema.enumeration else {
        return;
    };
    if !allowed.iter().any(|candidate| json_equal(candidate, value)) {
        let listed: Vec<String> = allowed.iter().map(Value::to_string).collect();
        ctx.push(
            path,
            ViolationKind::Enum,
            format!("{value}: supported values: {}", listed.join(", ")),
        );
    }
}

fn check_string(schema: &Schema, text: &str, path: &FieldPath, ctx: &mut Ctx) {
    // Go counts runes, so do we.
    let length = text.chars().count() as u64;
    if let Some(min) = schema.min_length {
        if length < min {
            ctx.push(
                path,
                ViolationKind::Length,
                format!("{text:?} is {length} characters; at least {min} required"),
            );
        }
    }
    if let Some(max) = schema.max_length {
        if length > max {
            ctx.push(
                path,
                ViolationKind::Length,
                format!("{length} characters; may not be longer than {max}"),
            );
        }
    }
    if let Some(pattern) = &schema.pattern {
        if !pattern.regex.is_match(text.as_bytes()) {
            ctx.push(
                path,
                ViolationKind::Pattern,
                format!("{text:?} should match {:?}", pattern.source),
            );
        }
    }
    if let Some(format) = schema.format {
        let ok = match format {
            Format::DateTime => is_rfc3339(text),
            Format::Byte => is_base64(text),
            Format::Ipv4 => text.parse::<std::net::Ipv4Addr>().is_ok(),
            Format::Ipv6 => text.parse::<std::net::Ipv6Addr>().is_ok(),
            // Integer formats say nothing about strings (int-or-string fields).
            Format::Int32 | Format::Int64 => true,
        };
        if !ok {
            ctx.push(
                path,
                ViolationKind::Format,
                format!("{text:?} is not a valid {format:?}"),
            );
        }
    }
}

fn check_number(schema: &Schema, value: &Value, path: &FieldPath, ctx: &mut Ctx) {
    let Some(number) = value.as_f64() else {
        return;
    };
    if let Some(min) = schema.minimum {
        let below = if schema.exclusive_minimum {
            number <= min
        } else {
            number < min
        };
        if below {
            let op = if schema.exclusive_minimum { ">" } else { ">=" };
            ctx.push(
                path,
                ViolationKind::Range,
                format!("{value}: must be {op} {min}"),
            );
        }
    }
    if let Some(max) = schema.maximum {
        let above = if schema.exclusive_maximum {
            number >= max
        } else {
            number > max
        };
        if above {
            let op = if schema.exclusive_maximum { "<" } else { "<=" };
            ctx.push(
                path,
                ViolationKind::Range,
                format!("{value}: must be {op} {max}"),
            );
        }
    }
    if let Some(step) = schema.multiple_of {
        if step > 0.0 && (number / step).fract() != 0.0 {
            ctx.push(
                path,
                ViolationKind::Range,
                format!("{value}: must be a multiple of {step}"),
            );
        }
    }
    let bounds = match schema.format {
        Some(Format::Int32) => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
        Some(Format::Int64) => Some((i64::MIN, i64::MAX)),
        _ => None,
    };
    if let Some((low, high)) = bounds {
        let fits = value.as_i64().is_some_and(|n| n >= low && n <= high);
        if !fits {
            ctx.push(
                path,
                ViolationKind::Format,
                format!(
                    "{value} does not fit {:?}",
                    schema.format.unwrap_or(Format::Int64)
                ),
            );
        }
    }
}

fn check_array(schema: &Schema, items: &[Value], path: &mut FieldPath, ctx: &mut Ctx, mode: Mode) {
    let count = items.len() as u64;
    if let Some(min) = schema.min_items {
        if count < min {
            ctx.push(
                &*path,
                ViolationKind::Count,
                format!("{count} items; at least {min} required"),
            );
        }
    }
    if let Some(max) = schema.max_items {
        if count > max {
            ctx.push(
                &*path,
                ViolationKind::Count,
                format!("{count} items; at most {max} allowed"),
            );
        }
    }
    if schema.unique_items || schema.list_type == Some(ListType::Set) {
        for (i, item) in items.iter().enumerate() {
            if items[..i].iter().any(|earlier| json_equal(earlier, item)) {
                path.push(Segment::Index(i));
                ctx.push(
                    &*path,
                    ViolationKind::Duplicate,
                    format!("{item} appears twice"),
                );
                path.pop();
            }
        }
    }
    if schema.list_type == Some(ListType::Map) {
        let mut seen: HashSet<String> = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let key: Vec<String> = schema
                .list_map_keys
                .iter()
                .map(|k| format!("{k}={}", item.get(k).unwrap_or(&Value::Null)))
                .collect();
            let key = key.join(",");
            if !seen.insert(key.clone()) {
                path.push(Segment::Index(i));
                ctx.push(
                    &*path,
                    ViolationKind::Duplicate,
                    format!("an entry with {key} appears twice"),
                );
                path.pop();
            }
        }
    }
    if let Some(item_schema) = &schema.items {
        for (i, item) in items.iter().enumerate() {
            path.push(Segment::Index(i));
            validate(item_schema, item, path, ctx, mode);
            path.pop();
        }
    }
}

fn check_object(
    schema: &Schema,
    object: &Map<String, Value>,
    path: &mut FieldPath,
    ctx: &mut Ctx,
    mode: Mode,
) {
    for name in &schema.required {
        if !object.contains_key(name) {
            path.push(Segment::Field(name.clone()));
            ctx.push(
                &*path,
                ViolationKind::Required,
                "required field is missing".into(),
            );
            path.pop();
        }
    }
    let count = object.len() as u64;
    if let Some(min) = schema.min_properties {
        if count < min {
            ctx.push(
                &*path,
                ViolationKind::Count,
                format!("{count} fields; at least {min} required"),
            );
        }
    }
    if let Some(max) = schema.max_properties {
        if count > max {
            ctx.push(
                &*path,
                ViolationKind::Count,
                format!("{count} fields; at most {max} allowed"),
            );
        }
    }
    for (name, item) in object {
        if let Some(property) = schema.properties.get(name) {
            path.push(Segment::Field(name.clone()));
            validate(property, item, path, ctx, mode);
            path.pop();
            continue;
        }
        match &schema.additional {
            Additional::Schema(extra) => {
                path.push(Segment::Key(name.clone()));
                validate(extra, item, path, ctx, mode);
                path.pop();
            }
            Additional::Allowed(true) => {}
            Additional::Allowed(false) | Additional::Unset => {
                if mode == Mode::Structural && !schema.preserve_unknown {
                    path.push(Segment::Field(name.clone()));
                    ctx.push(
                        &*path,
                        ViolationKind::UnknownField,
                        "field not declared in schema".into(),
                    );
                    path.pop();
                }
            }
        }
    }
}

fn check_combinators(schema: &Schema, value: &Value, path: &mut FieldPath, ctx: &mut Ctx) {
    for branch in &schema.all_of {
        validate(branch, value, path, ctx, Mode::ValueOnly);
    }
    let branch_failures = |branches: &[Schema], path: &mut FieldPath| -> Vec<Vec<Violation>> {
        branches
            .iter()
            .map(|branch| {
                let mut scratch = Ctx::default();
                validate(branch, value, path, &mut scratch, Mode::ValueOnly);
                scratch.violations
            })
            .collect()
    };
    if !schema.any_of.is_empty() {
        let results = branch_failures(&schema.any_of, path);
        if results.iter().all(|v| !v.is_empty()) {
            ctx.push(
                &*path,
                ViolationKind::Combinator,
                format!("matches none of anyOf: {}", summarize(&results)),
            );
        }
    }
    if !schema.one_of.is_empty() {
        let results = branch_failures(&schema.one_of, path);
        let matched = results.iter().filter(|v| v.is_empty()).count();
        if matched != 1 {
            ctx.push(
                &*path,
                ViolationKind::Combinator,
                format!(
                    "matches {matched} of oneOf, exactly 1 required: {}",
                    summarize(&results)
                ),
            );
        }
    }
    if let Some(forbidden) = &schema.not {
        let mut scratch = Ctx::default();
        validate(forbidden, value, path, &mut scratch, Mode::ValueOnly);
        if scratch.violations.is_empty() {
            ctx.push(
                &*path,
                ViolationKind::Combinator,
                "matches a schema under `not`".into(),
            );
        }
    }
}

fn summarize(results: &[Vec<Violation>]) -> String {
    let parts: Vec<String> = results
        .iter()
        .enumerate()
        .map(|(i, violations)| match violations.first() {
            Some(first) => format!("[{i}] {}: {}", first.kind, first.detail),
            None => format!("[{i}] matches"),
        })
        .collect();
    parts.join("; ")
}

// ---------------------------------------------------------------------------------------------
// ObjectMeta

const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

fn validate_object_meta(metadata: &Value, namespaced: bool, ctx: &mut Ctx) {
    let Some(meta) = metadata.as_object() else {
        ctx.push(
            "metadata",
            ViolationKind::Type,
            format!("expected object, got {}", type_name(metadata)),
        );
        return;
    };
    for key in meta.keys() {
        if !OBJECT_META_FIELDS.contains(&key.as_str()) {
            ctx.push(
                format!("metadata.{key}"),
                ViolationKind::UnknownField,
                "not an ObjectMeta field".into(),
            );
        }
    }
    match meta.get("name").and_then(Value::as_str) {
        Some(name) if !is_dns1123_subdomain(name) => ctx.push(
            "metadata.name",
            ViolationKind::Metadata,
            format!("{name:?} must be a lowercase RFC 1123 subdomain (at most 253 characters)"),
        ),
        Some(_) => {}
        None => ctx.push(
            "metadata.name",
            ViolationKind::Required,
            "a string is required".into(),
        ),
    }
    if let Some(namespace) = meta.get("namespace") {
        match namespace.as_str() {
            Some(_) if !namespaced => ctx.push(
                "metadata.namespace",
                ViolationKind::Metadata,
                "the resource is cluster-scoped; a namespace here is misleading".into(),
            ),
            Some(ns) if !is_dns1123_label(ns) => ctx.push(
                "metadata.namespace",
                ViolationKind::Metadata,
                format!("{ns:?} must be a lowercase RFC 1123 label (at most 63 characters)"),
            ),
            Some(_) => {}
            None => ctx.push(
                "metadata.namespace",
                ViolationKind::Type,
                "expected string".into(),
            ),
        }
    }
    for (field, is_label) in [("labels", true), ("annotations", false)] {
        let Some(map) = meta.get(field) else {
            continue;
        };
        let Some(map) = map.as_object() else {
            ctx.push(
                format!("metadata.{field}"),
                ViolationKind::Type,
                "expected a map of strings".into(),
            );
            continue;
        };
        for (key, item) in map {
            let at = format!("metadata.{field}[{key}]");
            if !is_qualified_name(key) {
                ctx.push(
                    &at,
                    ViolationKind::Metadata,
                    format!("key {key:?} is not a qualified name"),
                );
            }
            match item.as_str() {
                None => ctx.push(
                    &at,
                    ViolationKind::Type,
                    format!("expected string, got {}", type_name(item)),
                ),
                Some(text) if is_label && !is_label_value(text) => ctx.push(
                    &at,
                    ViolationKind::Metadata,
                    format!("{text:?} is not a valid label value"),
                ),
                Some(_) => {}
            }
        }
    }
}

fn is_dns1123_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn is_dns1123_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns1123_label)
}

fn is_label_value(text: &str) -> bool {
    text.is_empty() || (text.len() <= 63 && is_name_part(text))
}

fn is_name_part(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

fn is_qualified_name(text: &str) -> bool {
    let (prefix, name) = match text.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, text),
    };
    prefix.is_none_or(|p| !p.is_empty() && is_dns1123_subdomain(p))
        && name.len() <= 63
        && is_name_part(name)
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) if is_integer(value) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

/// Equality as JSON means it: `1` and `1.0` are the same number.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// Standard, padded base64 (Go's `base64.StdEncoding`, which `format: byte` uses).
fn is_base64(text: &str) -> bool {
    let b = text.as_bytes();
    if !b.len().is_multiple_of(4) {
        return false;
    }
    let padding = b.iter().rev().take_while(|c| **c == b'=').count();
    padding <= 2
        && b[..b.len() - padding]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.test
spec:
  group: example.test
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          apiVersion: {type: string}
          kind: {type: string}
          metadata: {type: object}
          spec:
            type: object
            required: [mode]
            properties:
              mode: {type: string, enum: [Fast, Slow]}
              name: {type: string, pattern: '^[a-z]+$', maxLength: 5}
              port: {type: integer, format: int32, minimum: 1, maximum: 65535}
              count: {type: integer, format: int32}
              target:
                x-kubernetes-int-or-string: true
                anyOf: [{type: integer}, {type: string}]
              tags:
                type: array
                maxItems: 2
                x-kubernetes-list-type: set
                items: {type: string}
              entries:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  properties:
                    name: {type: string}
                    kind: {type: string, default: Service}
                  x-kubernetes-validations:
                  - rule: self.name != 'x'
                    message: no x
                  - rule: self.kind == 'Service' || self.name.startsWith('ext')
                    message: only ext entries name another kind
                  - rule: self == oldSelf
                    message: immutable
              labels:
                type: object
                additionalProperties: {type: string}
              free:
                x-kubernetes-preserve-unknown-fields: true
              address:
                type: string
                oneOf: [{format: ipv4}, {format: ipv6}]
              blob: {type: string, format: byte}
"#;

    fn set() -> CrdSet {
        let mut set = CrdSet::default();
        assert_eq!(set.add_yaml("inline", CRD).expect("test CRD loads"), 1);
        set
    }

    fn check(doc: &str) -> Vec<(String, ViolationKind)> {
        let docs = parse_documents("doc", doc).expect("test doc parses");
        set()
            .validate(&docs[0])
            .violations
            .into_iter()
            .map(|v| (v.path, v.kind))
            .collect()
    }

    const GOOD: &str =
        "apiVersion: example.test/v1\nkind: Widget\nmetadata: {name: w}\nspec: {mode: Fast}\n";

    #[test]
    fn a_minimal_valid_document_passes() {
        assert_eq!(check(GOOD), vec![]);
    }

    #[test]
    fn each_keyword_reports_its_path() {
        let cases: &[(&str, &str, ViolationKind)] = &[
            ("spec: {}", "spec.mode", ViolationKind::Required),
            ("spec: {mode: Medium}", "spec.mode", ViolationKind::Enum),
            (
                "spec: {mode: Fast, name: Abc}",
                "spec.name",
                ViolationKind::Pattern,
            ),
            (
                "spec: {mode: Fast, name: abcdef}",
                "spec.name",
                ViolationKind::Length,
            ),
            (
                "spec: {mode: Fast, port: 0}",
                "spec.port",
                ViolationKind::Range,
            ),
            (
                "spec: {mode: Fast, port: '80'}",
                "spec.port",
                ViolationKind::Type,
            ),
            (
                "spec: {mode: Fast, count: 4294967296}",
                "spec.count",
                ViolationKind::Format,
            ),
            (
                "spec: {mode: Fast, target: true}",
                "spec.target",
                ViolationKind::Type,
            ),
            (
                "spec: {mode: Fast, tags: [a, a]}",
                "spec.tags[1]",
                ViolationKind::Duplicate,
            ),
            (
                "spec: {mode: Fast, tags: [a, b, c]}",
                "spec.tags",
                ViolationKind::Count,
            ),
            (
                "spec: {mode: Fast, entries: [{name: a}, {name: a}]}",
                "spec.entries[1]",
                ViolationKind::Duplicate,
            ),
            (
                "spec: {mode: Fast, entries: [{name: a, extra: 1}]}",
                "spec.entries[0].extra",
                ViolationKind::UnknownField,
            ),
            (
                "spec: {mode: Fast, labels: {a: 1}}",
                "spec.labels[a]",
                ViolationKind::Type,
            ),
            (
                "spec: {mode: Fast, address: nope}",
                "spec.address",
                ViolationKind::Combinator,
            ),
            (
                "spec: {mode: Fast, blob: '%%%'}",
                "spec.blob",
                ViolationKind::Format,
            ),
            (
                "spec: {mode: Fast, typo: 1}",
                "spec.typo",
                ViolationKind::UnknownField,
            ),
            (
                "spec: {mode: Fast, name: }",
                "spec.name",
                ViolationKind::Null,
            ),
        ];
        for (spec, path, kind) in cases {
            let doc = format!(
                "apiVersion: example.test/v1\nkind: Widget\nmetadata: {{name: w}}\n{spec}\n"
            );
            assert_eq!(check(&doc), vec![(path.to_string(), *kind)], "case {spec}");
        }
    }

    #[test]
    fn accepted_values_pass() {
        let doc = "apiVersion: example.test/v1\nkind: Widget\nmetadata: {name: w, labels: {app.kubernetes.io/name: w}}\n\
                   spec: {mode: Slow, name: abc, port: 65535, target: http, tags: [a, b], entries: [{name: a}, {name: b}],\n\
                   labels: {x: y}, free: {anything: [1, {deep: true}]}, address: '2001:db8::1', blob: aGk=}\n";
        assert_eq!(check(doc), vec![]);
    }

    #[test]
    fn resource_identity_and_metadata_are_checked() {
        let wrong_version = GOOD.replace("example.test/v1", "example.test/v2");
        assert_eq!(
            check(&wrong_version),
            vec![("apiVersion".into(), ViolationKind::UnknownResource)]
        );
        let wrong_kind = GOOD.replace("Widget", "Gadget");
        assert_eq!(
            check(&wrong_kind),
            vec![("kind".into(), ViolationKind::UnknownResource)]
        );
        let bad_name = GOOD.replace("name: w", "name: W_1");
        assert_eq!(
            check(&bad_name),
            vec![("metadata.name".into(), ViolationKind::Metadata)]
        );
        let bad_meta = GOOD.replace("name: w", "name: w, nmespace: x");
        assert_eq!(
            check(&bad_meta),
            vec![("metadata.nmespace".into(), ViolationKind::UnknownField)]
        );
    }

    #[test]
    fn cel_rules_run_on_present_nodes_after_defaulting() {
        let report = |spec: &str| {
            let doc = format!(
                "apiVersion: example.test/v1\nkind: Widget\nmetadata: {{name: w}}\nspec: {spec}\n"
            );
            set().validate(&parse_documents("doc", &doc).expect("parses")[0])
        };
        // Two entries, two rules each; the third rule reads `oldSelf` and is skipped on create.
        let held = report("{mode: Fast, entries: [{name: a}, {name: ext, kind: Other}]}");
        assert!(held.is_valid(), "{:?}", held.violations);
        assert_eq!(
            (held.rules_evaluated, held.transition_rules_skipped),
            (4, 2)
        );
        // `kind` is absent: its default (Service) is what the rule sees.
        let broken = report("{mode: Fast, entries: [{name: x}, {name: b, kind: Other}]}");
        assert_eq!(
            broken.violations,
            vec![
                Violation {
                    path: "spec.entries[0]".into(),
                    kind: ViolationKind::Rule,
                    detail: "no x".into(),
                },
                Violation {
                    path: "spec.entries[1]".into(),
                    kind: ViolationKind::Rule,
                    detail: "only ext entries name another kind".into(),
                },
            ]
        );
        // No such node, no rule.
        assert_eq!(report("{mode: Fast}").rules_evaluated, 0);
        // A blocking schema error (here: required `mode` missing) stops every rule, as in the API server.
        let blocked = report("{entries: [{name: x}]}");
        assert_eq!(
            blocked
                .violations
                .iter()
                .map(|v| v.kind)
                .collect::<Vec<_>>(),
            vec![ViolationKind::Required]
        );
        assert!(blocked.rules_blocked);
        assert_eq!(blocked.rules_evaluated, 0);
    }

    #[test]
    fn a_rule_that_does_not_compile_fails_loading() {
        let broken = CRD.replace("rule: self.name != 'x'", "rule: self.name !=");
        let err = CrdSet::default()
            .add_yaml("inline", &broken)
            .expect_err("the rule is not CEL");
        assert!(
            err.to_string().contains("x-kubernetes-validations"),
            "{err}"
        );
    }

    #[test]
    fn unknown_schema_keywords_fail_loading() {
        let broken = CRD.replace(
            "maxItems: 2",
            "maxItems: 2\n                contains: {type: string}",
        );
        let err = CrdSet::default()
            .add_yaml("inline", &broken)
            .expect_err("unknown keyword");
        assert!(
            err.to_string().contains("properties[tags].contains"),
            "{err}"
        );
    }

    #[test]
    fn go_re2_classes_are_ascii() {
        let mut cache = CompileCache::default();
        let regex = cache.compile(r"^\d+$").expect("compiles");
        assert!(regex.is_match(b"123"));
        assert!(
            !regex.is_match("١٢٣".as_bytes()),
            "Arabic-Indic digits are not \\d in RE2"
        );
    }

    #[test]
    fn yaml11_booleans_are_found_outside_block_scalars() {
        let text = "a: on\nb: 'on'\nc: yes # comment\nlist:\n  - off\nd: |\n  on\n  no\ne: No\nf: online\n";
        assert_eq!(
            yaml11_ambiguities(text),
            vec![
                (1, "on".into()),
                (3, "yes".into()),
                (5, "off".into()),
                (9, "No".into())
            ]
        );
    }

    #[test]
    fn formats() {
        assert!(is_rfc3339("2024-01-02T03:04:05Z"));
        assert!(is_rfc3339("2024-01-02T03:04:05.123+02:00"));
        assert!(!is_rfc3339("2024-01-02 03:04:05Z"));
        assert!(is_base64("aGVsbG8="));
        assert!(!is_base64("aGVsbG8"));
        assert!(is_qualified_name("app.kubernetes.io/name"));
        assert!(!is_qualified_name("/name"));
    }
}
