//! ObjectMeta (`metadata`): the rules the API server applies to every object's name, namespace, labels and annotations.

use super::*;

pub(super) const OBJECT_META_FIELDS: &[&str] = &[
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

pub(super) fn validate_object_meta(metadata: &Value, namespaced: bool, ctx: &mut Ctx) {
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

pub(super) fn is_dns1123_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

pub(super) fn is_dns1123_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns1123_label)
}

pub(super) fn is_label_value(text: &str) -> bool {
    text.is_empty() || (text.len() <= 63 && is_name_part(text))
}

pub(super) fn is_name_part(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

pub(super) fn is_qualified_name(text: &str) -> bool {
    let (prefix, name) = match text.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, text),
    };
    prefix.is_none_or(|p| !p.is_empty() && is_dns1123_subdomain(p))
        && name.len() <= 63
        && is_name_part(name)
}
