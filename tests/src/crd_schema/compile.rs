//! Compiling a CRD's `openAPIV3Schema` into the checked form: every keyword known, patterns and CEL rules compiled once.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JsonType {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl JsonType {
    pub(super) fn parse(name: &str) -> Option<Self> {
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

    pub(super) fn accepts(self, value: &Value) -> bool {
        match self {
            JsonType::Object => value.is_object(),
            JsonType::Array => value.is_array(),
            JsonType::String => value.is_string(),
            JsonType::Integer => is_integer(value),
            JsonType::Number => value.is_number(),
            JsonType::Boolean => value.is_boolean(),
        }
    }

    pub(super) fn name(self) -> &'static str {
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
pub(super) enum Format {
    Int32,
    Int64,
    DateTime,
    Byte,
    Ipv4,
    Ipv6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ListType {
    Atomic,
    Set,
    Map,
}

#[derive(Debug, Default)]
pub(super) enum Additional {
    #[default]
    Unset,
    Allowed(bool),
    Schema(Box<Schema>),
}

#[derive(Debug)]
pub(super) struct Pattern {
    pub(super) source: String,
    pub(super) regex: Arc<Regex>,
}

#[derive(Debug, Clone)]
pub(super) struct CelRule {
    pub(super) rule: Arc<cel::Rule>,
    pub(super) message: String,
}

#[derive(Debug, Default)]
pub(super) struct Schema {
    pub(super) json_type: Option<JsonType>,
    pub(super) nullable: bool,
    pub(super) properties: BTreeMap<String, Schema>,
    pub(super) required: Vec<String>,
    pub(super) additional: Additional,
    pub(super) items: Option<Box<Schema>>,
    pub(super) enumeration: Option<Vec<Value>>,
    pub(super) pattern: Option<Pattern>,
    pub(super) format: Option<Format>,
    pub(super) min_length: Option<u64>,
    pub(super) max_length: Option<u64>,
    pub(super) minimum: Option<f64>,
    pub(super) maximum: Option<f64>,
    pub(super) exclusive_minimum: bool,
    pub(super) exclusive_maximum: bool,
    pub(super) multiple_of: Option<f64>,
    pub(super) min_items: Option<u64>,
    pub(super) max_items: Option<u64>,
    pub(super) unique_items: bool,
    pub(super) min_properties: Option<u64>,
    pub(super) max_properties: Option<u64>,
    pub(super) any_of: Vec<Schema>,
    pub(super) one_of: Vec<Schema>,
    pub(super) all_of: Vec<Schema>,
    pub(super) not: Option<Box<Schema>>,
    pub(super) preserve_unknown: bool,
    pub(super) int_or_string: bool,
    pub(super) list_type: Option<ListType>,
    pub(super) list_map_keys: Vec<String>,
    pub(super) cel: Vec<CelRule>,
    /// Applied to an absent property before validation, as the API server defaults.
    pub(super) default: Option<Value>,
}

/// Shares compiled regexes and CEL rules: the same few repeat hundreds of times across the CRDs.
#[derive(Default)]
pub(super) struct CompileCache {
    pub(super) patterns: HashMap<String, Arc<Regex>>,
    pub(super) rules: HashMap<String, Arc<cel::Rule>>,
}

impl CompileCache {
    /// Kubernetes evaluates `pattern` with Go's RE2, where `\d`, `\w`, `\s` are ASCII-only:
    /// Unicode mode off gives the same classes (and matches `.` per byte, which differs only
    /// for counted repetitions over non-ASCII text).
    pub(super) fn compile(&mut self, source: &str) -> Result<Arc<Regex>, String> {
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
    pub(super) fn rule(&mut self, text: &str) -> Result<Arc<cel::Rule>, String> {
        if let Some(rule) = self.rules.get(text) {
            return Ok(Arc::clone(rule));
        }
        let rule = Arc::new(cel::Rule::compile(text).map_err(|e| e.to_string())?);
        self.rules.insert(text.to_string(), Arc::clone(&rule));
        Ok(rule)
    }
}

/// Returns (group, kind, compiled CRD).
pub(super) fn compile_crd(
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

pub(super) trait PointerStr {
    fn pointer_str(&self, a: &str, b: &str) -> Option<&str>;
}

impl PointerStr for Map<String, Value> {
    fn pointer_str(&self, a: &str, b: &str) -> Option<&str> {
        self.get(a)?.get(b)?.as_str()
    }
}

/// Keywords that only describe; they do not constrain a value.
pub(super) const ANNOTATIONS: &[&str] = &["description", "example", "title", "externalDocs"];

/// Compiles one schema node. `structural` is false inside `anyOf`/`oneOf`/`allOf`/`not`, where
/// Kubernetes allows nodes without `type`. Errors carry the schema path.
pub(super) fn compile_schema(
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
