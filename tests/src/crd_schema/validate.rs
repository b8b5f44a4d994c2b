//! Validating a value against a compiled schema: types, values, counts, combinators, defaults and CEL rules.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// The main tree: it defines which fields exist, so unknown fields are errors.
    Structural,
    /// Inside `anyOf`/`oneOf`/`allOf`/`not`: value checks only.
    ValueOnly,
}

#[derive(Default)]
pub(super) struct Ctx {
    pub(super) violations: Vec<Violation>,
    /// A schema error the API server treats as blocking for CEL (`hasBlockingErr` in apiextensions-apiserver's
    /// customresource strategy: required, unsupported value, wrong type, too long, too many).
    pub(super) blocking: bool,
    /// Each present node's rules, run once the schema checks are done.
    pub(super) rules: Vec<PendingRule>,
}

pub(super) struct PendingRule {
    pub(super) path: String,
    pub(super) node: std::rc::Rc<Value>,
    pub(super) rule: CelRule,
}

impl Ctx {
    pub(super) fn push(&mut self, path: impl fmt::Display, kind: ViolationKind, detail: String) {
        self.blocking |= matches!(
            kind,
            ViolationKind::Required | ViolationKind::Enum | ViolationKind::Type
        );
        self.violations.push(Violation {
            path: path.to_string(),
            kind,
            detail,
        });
    }

    /// A value over its maximum (`maxLength`, `maxItems`, `maxProperties`): blocking as well (`hasBlockingErr`
    /// counts the `TooLong` and `TooMany` errors; a value under its minimum is not one of them).
    pub(super) fn push_over_maximum(
        &mut self,
        path: impl fmt::Display,
        kind: ViolationKind,
        detail: String,
    ) {
        self.blocking = true;
        self.push(path, kind, detail);
    }

    /// Evaluates the collected rules with `self` bound to their nodes, unless a blocking schema error came first
    /// (then the API server checks no rule and says so; see [`Report::rules_blocked`]).
    pub(super) fn finish(mut self) -> Report {
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

pub(super) fn validate(
    schema: &Schema,
    value: &Value,
    path: &mut FieldPath,
    ctx: &mut Ctx,
    mode: Mode,
) {
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
pub(super) fn check_rules(schema: &Schema, value: &Value, path: &FieldPath, ctx: &mut Ctx) {
    if schema.cel.is_empty() {
        return;
    }
    // One copy of the node for all its rules.
    let node = std::rc::Rc::new(value.clone());
    let path = path.to_string();
    for rule in &schema.cel {
        ctx.rules.push(PendingRule {
            path: path.clone(),
            node: node.clone(),
            rule: rule.clone(),
        });
    }
}

/// Fills absent properties that have a `default` (and, below them, theirs), as the API server's structural
/// defaulting does before validation: properties, `additionalProperties` values and list items.
pub(super) fn apply_defaults(schema: &Schema, value: &mut Value) {
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

pub(super) fn check_type(schema: &Schema, value: &Value, path: &FieldPath, ctx: &mut Ctx) -> bool {
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

pub(super) fn check_enum(schema: &Schema, value: &Value, path: &FieldPath, ctx: &mut Ctx) {
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

pub(super) fn check_string(schema: &Schema, text: &str, path: &FieldPath, ctx: &mut Ctx) {
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
            ctx.push_over_maximum(
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

pub(super) fn check_number(schema: &Schema, value: &Value, path: &FieldPath, ctx: &mut Ctx) {
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

pub(super) fn check_array(
    schema: &Schema,
    items: &[Value],
    path: &mut FieldPath,
    ctx: &mut Ctx,
    mode: Mode,
) {
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
            ctx.push_over_maximum(
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

pub(super) fn check_object(
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
            ctx.push_over_maximum(
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

pub(super) fn check_combinators(
    schema: &Schema,
    value: &Value,
    path: &mut FieldPath,
    ctx: &mut Ctx,
) {
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

pub(super) fn summarize(results: &[Vec<Violation>]) -> String {
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
