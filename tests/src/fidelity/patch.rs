//! Changes to a rendered bootstrap, by path, so a variant can say "the test bootstrap, with a
//! 1s route timeout" instead of carrying a copy of the whole template that drifts from it.
//!
//! A path is dot-separated keys; a segment may end in a selector: `[*]` (every item of a list),
//! `[3]` (one item), `[key=value]` (the items whose `key` is the string `value`). A segment `*`
//! stands for every value of a map (for keys that themselves contain dots). `set` replaces or
//! adds the last key only where its parent exists (nothing is created along the way), and a
//! patch that changes nothing is an error: a path that stopped matching must not go unnoticed.

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

/// One change.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    /// Where (see the module docs).
    pub set: String,
    /// The value to put there.
    pub value: Value,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("patch path {0:?}: {1}")]
    Path(String, String),
    #[error("patch {0:?} matched nothing")]
    NoMatch(String),
    #[error("the bootstrap is not YAML: {0}")]
    Yaml(String),
}

#[derive(Debug, PartialEq, Eq)]
enum Select {
    None,
    All,
    Index(usize),
    Field(String, String),
}

#[derive(Debug, PartialEq, Eq)]
struct Segment {
    key: String,
    select: Select,
}

fn parse_path(path: &str) -> Result<Vec<Segment>, PatchError> {
    let bad = |why: &str| PatchError::Path(path.to_string(), why.to_string());
    // Split on dots outside brackets.
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in path.chars() {
        match c {
            '[' => {
                depth += 1;
                current.push(c);
            }
            ']' => {
                depth = depth.checked_sub(1).ok_or_else(|| bad("unbalanced ]"))?;
                current.push(c);
            }
            '.' if depth == 0 => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if depth != 0 {
        return Err(bad("unbalanced ["));
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|part| {
            let (key, select) = match part.split_once('[') {
                None => (part.clone(), Select::None),
                Some((key, rest)) => {
                    let inner = rest.strip_suffix(']').ok_or_else(|| bad("text after ]"))?;
                    let select = if inner == "*" {
                        Select::All
                    } else if let Ok(i) = inner.parse::<usize>() {
                        Select::Index(i)
                    } else if let Some((k, v)) = inner.split_once('=') {
                        Select::Field(k.to_string(), v.to_string())
                    } else {
                        return Err(bad("a selector is [*], [n] or [key=value]"));
                    };
                    (key.to_string(), select)
                }
            };
            if key.is_empty() {
                return Err(bad("empty key"));
            }
            Ok(Segment { key, select })
        })
        .collect()
}

/// Applies `patches` to the YAML text `bootstrap`; returns the changed YAML.
pub fn apply(bootstrap: &str, patches: &[Patch]) -> Result<String, PatchError> {
    if patches.is_empty() {
        return Ok(bootstrap.to_string());
    }
    let mut doc: Value =
        serde_yaml_ng::from_str(bootstrap).map_err(|e| PatchError::Yaml(e.to_string()))?;
    for patch in patches {
        let path = parse_path(&patch.set)?;
        let changed = set(&mut doc, &path, &patch.value);
        if changed == 0 {
            return Err(PatchError::NoMatch(patch.set.clone()));
        }
    }
    serde_yaml_ng::to_string(&doc).map_err(|e| PatchError::Yaml(e.to_string()))
}

/// Sets the value at `path` under `node`; returns how many places changed.
fn set(node: &mut Value, path: &[Segment], value: &Value) -> usize {
    let Some((first, rest)) = path.split_first() else {
        return 0;
    };
    let Value::Mapping(map) = node else {
        return 0;
    };
    if first.key == "*" {
        return map
            .values_mut()
            .map(|child| descend(child, &first.select, rest, value))
            .sum();
    }
    let key = Value::String(first.key.clone());
    if rest.is_empty() && first.select == Select::None {
        map.insert(key, value.clone());
        return 1;
    }
    match map.get_mut(&key) {
        Some(child) => descend(child, &first.select, rest, value),
        None => 0,
    }
}

/// Applies the selector of a segment to `child`, then the rest of the path.
fn descend(child: &mut Value, select: &Select, rest: &[Segment], value: &Value) -> usize {
    let finish = |target: &mut Value| -> usize {
        if rest.is_empty() {
            *target = value.clone();
            1
        } else {
            set(target, rest, value)
        }
    };
    match select {
        Select::None => finish(child),
        Select::All | Select::Index(_) | Select::Field(..) => {
            let Value::Sequence(items) = child else {
                return 0;
            };
            items
                .iter_mut()
                .enumerate()
                .filter(|(i, item)| match select {
                    Select::All => true,
                    Select::Index(n) => i == n,
                    Select::Field(k, v) => field_is(item, k, v),
                    Select::None => false,
                })
                .map(|(_, item)| finish(item))
                .sum()
        }
    }
}

fn field_is(item: &Value, key: &str, want: &str) -> bool {
    let Value::Mapping(map): &Value = item else {
        return false;
    };
    lookup(map, key).is_some_and(|v| match v {
        Value::String(s) => s == want,
        Value::Number(n) => n.to_string() == want,
        Value::Bool(b) => b.to_string() == want,
        _ => false,
    })
}

fn lookup<'a>(map: &'a Mapping, key: &str) -> Option<&'a Value> {
    map.get(Value::String(key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "
a:
  list:
    - { name: x, v: 1, deep: { t: 5s } }
    - { name: y.z, v: 2 }
    - { name: w, v: 3, deep: { t: 5s } }
  dotted:
    some.key.v3: { inner: 1 }
";

    fn patch(path: &str, value: &str) -> Patch {
        Patch {
            set: path.into(),
            value: serde_yaml_ng::from_str(value).expect("value"),
        }
    }

    fn get(yaml: &str, path: &[&str]) -> Value {
        let mut v: Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        for p in path {
            v = match p.parse::<usize>() {
                Ok(i) => v[i].clone(),
                Err(_) => v[*p].clone(),
            };
        }
        v
    }

    #[test]
    fn selectors_reach_what_they_name() {
        let out = apply(DOC, &[patch("a.list[name=y.z].v", "20")]).expect("patch");
        assert_eq!(get(&out, &["a", "list", "1", "v"]), Value::from(20));
        assert_eq!(get(&out, &["a", "list", "0", "v"]), Value::from(1));

        let out = apply(DOC, &[patch("a.list[*].deep.t", "1s")]).expect("patch");
        assert_eq!(
            get(&out, &["a", "list", "0", "deep", "t"]),
            Value::from("1s")
        );
        assert_eq!(
            get(&out, &["a", "list", "2", "deep", "t"]),
            Value::from("1s")
        );
        // Nothing is created where the parent is missing.
        assert_eq!(get(&out, &["a", "list", "1", "deep"]), Value::Null);

        let out = apply(DOC, &[patch("a.list[2].v", "30")]).expect("patch");
        assert_eq!(get(&out, &["a", "list", "2", "v"]), Value::from(30));

        let out = apply(DOC, &[patch("a.dotted.*.inner", "7")]).expect("patch");
        assert_eq!(
            get(&out, &["a", "dotted", "some.key.v3", "inner"]),
            Value::from(7)
        );

        let out = apply(DOC, &[patch("a.list[name=x].added", "{ k: v }")]).expect("patch");
        assert_eq!(
            get(&out, &["a", "list", "0", "added", "k"]),
            Value::from("v")
        );
    }

    #[test]
    fn a_patch_that_matches_nothing_is_an_error() {
        assert_eq!(
            apply(DOC, &[patch("a.list[name=nope].v", "1")]),
            Err(PatchError::NoMatch("a.list[name=nope].v".into()))
        );
        assert_eq!(
            apply(DOC, &[patch("b.c", "1")]),
            Err(PatchError::NoMatch("b.c".into()))
        );
        assert!(matches!(
            apply(DOC, &[patch("a.list[x", "1")]),
            Err(PatchError::Path(..))
        ));
        assert!(matches!(
            apply(DOC, &[patch("a.list[a:b]", "1")]),
            Err(PatchError::Path(..))
        ));
    }
}
