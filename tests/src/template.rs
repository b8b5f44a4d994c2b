//! `{{NAME}}` placeholders in config templates and case files.
//!
//! Deliberately dumb text substitution: the same template feeds Envoy and host-sim, and a
//! placeholder left unfilled is an error rather than an empty string in a YAML file.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("placeholder {{{{{0}}}}} has no value")]
    Unfilled(String),
    #[error("unterminated placeholder at byte {0}")]
    Unterminated(usize),
}

/// Values for placeholders, by name.
pub type Vars = BTreeMap<String, String>;

/// Replaces every `{{NAME}}` with `vars[NAME]`; names are `[A-Z0-9_]+`. Any other `{{` is
/// left alone (it is not a placeholder).
pub fn render(text: &str, vars: &Vars) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        if name.is_empty() || !after[name_len..].starts_with("}}") {
            if !name.is_empty() && after.len() == name_len {
                return Err(TemplateError::Unterminated(offset + start));
            }
            out.push_str("{{");
            rest = after;
            offset += start + 2;
            continue;
        }
        let value = vars
            .get(name)
            .ok_or_else(|| TemplateError::Unfilled(name.to_string()))?;
        out.push_str(value);
        let consumed = start + 2 + name_len + 2;
        rest = &rest[consumed..];
        offset += consumed;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fills_placeholders() {
        let out = render("a {{X}} b {{Y_2}}", &vars(&[("X", "1"), ("Y_2", "two")]));
        assert_eq!(out, Ok("a 1 b two".to_string()));
    }

    #[test]
    fn unfilled_is_an_error() {
        let out = render("port: {{PORT}}", &vars(&[]));
        assert_eq!(out, Err(TemplateError::Unfilled("PORT".into())));
    }

    #[test]
    fn non_placeholders_pass_through() {
        let out = render("{{ lower }} {{}}", &vars(&[]));
        assert_eq!(out, Ok("{{ lower }} {{}}".to_string()));
    }

    #[test]
    fn unterminated_is_an_error() {
        assert_eq!(
            render("x {{PORT", &vars(&[("PORT", "1")])),
            Err(TemplateError::Unterminated(2))
        );
    }
}
