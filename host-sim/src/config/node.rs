//! A cursor over a parsed YAML document that remembers where it is, so every error names the YAML path of the
//! field at fault (`static_resources.clusters[1].connect_timeout`), and every mapping is checked for fields that
//! host-sim does not implement.
//!
//! Envoy reads YAML through the protobuf JSON mapping, where a field may be spelled `snake_case` or `lowerCamelCase`;
//! lookups here accept both.

use std::net::IpAddr;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::ConfigError;

/// A YAML value together with its path from the document root.
pub(crate) struct At<'a> {
    pub(crate) value: &'a Value,
    pub(crate) path: String,
}

impl<'a> At<'a> {
    pub(crate) fn root(value: &'a Value) -> Self {
        At {
            value,
            path: String::new(),
        }
    }

    pub(crate) fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    pub(crate) fn map(&self) -> Result<Fields<'a>, ConfigError> {
        match self.value {
            Value::Mapping(mapping) => Ok(Fields {
                mapping,
                path: self.path.clone(),
                used: Vec::new(),
            }),
            Value::Null => Err(self.error("expected a mapping, found nothing")),
            other => Err(self.error(format!("expected a mapping, found {}", kind(other)))),
        }
    }

    pub(crate) fn list(&self) -> Result<Vec<At<'a>>, ConfigError> {
        match self.value {
            Value::Sequence(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(index, value)| At {
                    value,
                    path: format!("{}[{index}]", self.path),
                })
                .collect()),
            // Envoy's YAML loading takes a single value for a repeated field as a list of one (measured:
            // `listeners:` as one mapping, `domains: "*"`), and null as no items.
            Value::Null => Ok(Vec::new()),
            single => Ok(vec![At {
                value: single,
                path: format!("{}[0]", self.path),
            }]),
        }
    }

    pub(crate) fn string(&self) -> Result<String, ConfigError> {
        match self.value {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.error(format!("expected a string, found {}", kind(other)))),
        }
    }

    /// A string Envoy's proto requires non-empty (`validate.rules` `min_len: 1`).
    pub(crate) fn non_empty_string(&self) -> Result<String, ConfigError> {
        let text = self.string()?;
        if text.is_empty() {
            return Err(self.error("must not be empty"));
        }
        Ok(text)
    }

    pub(crate) fn bool(&self) -> Result<bool, ConfigError> {
        match self.value {
            Value::Bool(b) => Ok(*b),
            other => Err(self.error(format!("expected true or false, found {}", kind(other)))),
        }
    }

    /// An unsigned integer; protobuf's JSON mapping also allows 64-bit integers as strings.
    pub(crate) fn u64(&self) -> Result<u64, ConfigError> {
        match self.value {
            Value::Number(n) => n
                .as_u64()
                .ok_or_else(|| self.error(format!("expected a non-negative integer, found {n}"))),
            Value::String(s) => s
                .parse()
                .map_err(|_| self.error(format!("expected a non-negative integer, found {s:?}"))),
            other => Err(self.error(format!("expected an integer, found {}", kind(other)))),
        }
    }

    pub(crate) fn u32(&self) -> Result<u32, ConfigError> {
        let value = self.u64()?;
        u32::try_from(value).map_err(|_| self.error(format!("{value} is out of range")))
    }

    pub(crate) fn port(&self) -> Result<u16, ConfigError> {
        let value = self.u64()?;
        u16::try_from(value)
            .map_err(|_| self.error(format!("port {value} is out of range 0..65535")))
    }

    pub(crate) fn ip(&self) -> Result<IpAddr, ConfigError> {
        let text = self.string()?;
        text.parse().map_err(|_| {
            self.error(format!(
                "{text:?} is not an IP address (host-sim, like Envoy, needs an IP here)"
            ))
        })
    }

    /// A protobuf `Duration`: the JSON form `"1.5s"` or the object form `{seconds, nanos}`.
    pub(crate) fn duration(&self) -> Result<Duration, ConfigError> {
        match self.value {
            Value::String(text) => parse_duration(text).ok_or_else(|| {
                self.error(format!(
                    "{text:?} is not a duration such as \"5s\" or \"0.25s\""
                ))
            }),
            Value::Mapping(_) => {
                let mut fields = self.map()?;
                let seconds = fields
                    .opt("seconds")
                    .map(|s| s.u64())
                    .transpose()?
                    .unwrap_or(0);
                let nanos = fields
                    .opt("nanos")
                    .map(|n| n.u32())
                    .transpose()?
                    .unwrap_or(0);
                fields.finish()?;
                if nanos >= 1_000_000_000 {
                    return Err(self.error("nanos must be below 1000000000"));
                }
                Ok(Duration::new(seconds, nanos))
            }
            other => Err(self.error(format!("expected a duration, found {}", kind(other)))),
        }
    }

    /// A protobuf enum given by name, one of `allowed`.
    pub(crate) fn enum_name(&self, allowed: &[&str]) -> Result<String, ConfigError> {
        let name = self.string()?;
        if allowed.contains(&name.as_str()) {
            Ok(name)
        } else {
            Err(self.error(format!("{name:?} is not one of {}", allowed.join(", "))))
        }
    }
}

/// The fields of one mapping. Every field must be taken (`req`/`opt`) or explicitly waved through (`cosmetic`);
/// `finish` rejects whatever is left, naming its path, because a field host-sim silently ignored could change
/// behaviour.
pub(crate) struct Fields<'a> {
    mapping: &'a Mapping,
    path: String,
    used: Vec<String>,
}

impl<'a> Fields<'a> {
    pub(crate) fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// An optional field, looked up by its snake_case name or its lowerCamelCase spelling.
    pub(crate) fn opt(&mut self, name: &str) -> Option<At<'a>> {
        let camel = lower_camel(name);
        for spelling in [name, camel.as_str()] {
            if let Some(value) = self.mapping.get(spelling) {
                self.used.push(spelling.to_string());
                if value.is_null() {
                    return None;
                }
                return Some(At {
                    value,
                    path: join(&self.path, spelling),
                });
            }
        }
        None
    }

    pub(crate) fn req(&mut self, name: &str) -> Result<At<'a>, ConfigError> {
        self.opt(name)
            .ok_or_else(|| self.error(format!("missing required field {name:?}")))
    }

    /// A field accepted and ignored because it does not change what host-sim does (listed in docs/host-sim.md).
    /// A label Envoy requires (`min_len: 1`): a non-empty string, otherwise unused.
    pub(crate) fn required_label(&mut self, name: &str) -> Result<(), ConfigError> {
        self.req(name)?.non_empty_string().map(|_| ())
    }

    /// A label Envoy allows absent but types as a string: checked, otherwise unused.
    pub(crate) fn optional_label(&mut self, name: &str) -> Result<(), ConfigError> {
        self.opt(name).map(|n| n.string()).transpose().map(|_| ())
    }

    pub(crate) fn cosmetic(&mut self, name: &str) {
        let _ = self.opt(name);
    }

    /// Rejects every field not taken, naming the first one.
    pub(crate) fn finish(self) -> Result<(), ConfigError> {
        for key in self.mapping.keys() {
            let key_text = match key {
                Value::String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            if !self.used.contains(&key_text) {
                return Err(ConfigError::Invalid {
                    path: join(&self.path, &key_text),
                    message: "field not supported by host-sim (it would change behaviour; docs/host-sim.md lists \
                              the fields host-sim runs)"
                        .to_string(),
                });
            }
        }
        Ok(())
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn lower_camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `"5s"`, `"0.25s"`, `"1.000000001s"` → Duration. Protobuf allows at most nine fractional digits.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let number = text.strip_suffix('s')?;
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds: u64 = whole.parse().ok()?;
    let nanos = if fraction.is_empty() {
        0
    } else {
        let padded = format!("{fraction:0<9}");
        padded.parse().ok()?
    };
    Some(Duration::new(seconds, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_protobuf_json_form() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.25s"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("1.000000001s"), Some(Duration::new(1, 1)));
        for bad in ["5", "s", "-1s", "1.5ms", "1.0000000001s", "1e3s", ".5s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn camel_case_spelling() {
        assert_eq!(lower_camel("connect_timeout"), "connectTimeout");
        assert_eq!(lower_camel("name"), "name");
    }
}
