//! Evaluates Kubernetes CRD validation rules (`x-kubernetes-validations[*].rule`,
//! written in CEL) against JSON values, the way the API server does when a
//! manifest is created.
//!
//! The CEL language itself comes from the `cel` crate (cel-rust). This module
//! only adds what Kubernetes puts on top of plain CEL and the crate lacks:
//!
//! * `isIP(string)` from the Kubernetes IP library;
//! * `format.dns1123Label()` and `<Format>.validate(string)` from the
//!   Kubernetes format library (only the `dns1123Label` format: it is the one
//!   the CRDs use);
//! * Go's `time.ParseDuration` behind `duration(string)`: the crate's own
//!   parser accepts strings Go rejects (`"1h30"`, `"1e3s"`, trailing text) and
//!   rejects some Go accepts (`"1µs"`);
//! * Kubernetes' escaping of property names that are no CEL identifiers
//!   (`namespace` is reached as `self.__namespace__`).
//!
//! The `strings` extension of the crate supplies `trim`, `lowerAscii`,
//! `upperAscii`, `split` and `substring`; its standard library supplies
//! `has`, `size`, the comprehension macros, `matches`, `contains`,
//! `startsWith`, `endsWith`, `optional`, `type`, `int` and `string`.

use ::cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr};
use ::cel::common::traits::{Container, Indexer, Iterable, Sizer, Zeroer};
use ::cel::common::types::{
    self as celtypes, CelBool, CelDouble, CelDuration, CelInt, CelList, CelMap, CelMapKey, CelNull,
    CelOptional, CelString, Type,
};
use ::cel::common::value::{CowVal, StaticVal, Val};
use ::cel::parser::Macro;
use ::cel::{Context, Env, ExecutionError, Program, Value};
use std::any::Any;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, LazyLock};

/// Why a rule could not be compiled or did not yield a verdict. Each message
/// carries the rule text, so a report names the rule that failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CelError {
    /// The rule is not valid CEL; the API server would reject the CRD itself.
    #[error("cannot parse CEL rule `{rule}`: {message}")]
    Parse { rule: String, message: String },
    /// The rule failed while running (a missing field, a bad argument...);
    /// the API server reports such a rule as failed for the object.
    #[error("error evaluating CEL rule `{rule}`: {message}")]
    Evaluation { rule: String, message: String },
    /// The rule ran but produced something else than a bool.
    #[error("CEL rule `{rule}` returned {got}, not a bool")]
    NonBoolean { rule: String, got: String },
}

/// A validation rule, parsed once and evaluated against many values.
#[derive(Debug)]
pub struct Rule {
    text: String,
    program: Program,
    transition: bool,
}

impl Rule {
    /// Parses `text`, expanding macros (`has`, `all`, ...) once, so that
    /// evaluating it on many objects does not parse it again.
    pub fn compile(text: &str) -> Result<Rule, CelError> {
        let env = env().map_err(|message| CelError::Parse {
            rule: text.to_owned(),
            message,
        })?;
        let program = env.compile(text).map_err(|e| CelError::Parse {
            rule: text.to_owned(),
            message: e.to_string(),
        })?;
        let transition = references_free_var(program.expression(), OLD_SELF, &mut Vec::new());
        Ok(Rule {
            text: text.to_owned(),
            program,
            transition,
        })
    }

    /// The rule as written in the CRD.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the rule reads `oldSelf`. Kubernetes evaluates such
    /// "transition rules" only on update, against the stored object, so a
    /// manifest that is being created skips them; [`Rule::evaluate`], which
    /// binds `self` alone, refuses them.
    pub fn is_transition(&self) -> bool {
        self.transition
    }

    /// Runs the rule with `self` bound to `self_value` and returns its verdict.
    ///
    /// JSON maps onto CEL as the API server maps an unstructured object: an
    /// integer is an `int` (one past `i64` a `double`, as in Go's decoder), any
    /// other number a `double`, an object a map with string keys, an array a
    /// list, `null` is `null`.
    pub fn evaluate(&self, self_value: &serde_json::Value) -> Result<bool, CelError> {
        if self.transition {
            return Err(self.eval_error(
                "it is a transition rule (it reads oldSelf): Kubernetes runs it only on \
                 update, and evaluate() binds self alone"
                    .to_owned(),
            ));
        }
        let env = env().map_err(|m| self.eval_error(m))?;
        let mut ctx = Context::with_env(env);
        ctx.add_variable_as_val(SELF, json_to_val(self_value));
        // The value itself rather than `execute`'s `Value`, which cannot hold
        // a map of ours or a `Format`: any non-bool is then a `NonBoolean`.
        let result = Value::resolve_val(self.program.expression(), &ctx)
            .map_err(|e| self.eval_error(e.to_string()))?;
        match result.downcast_ref::<CelBool>() {
            Some(b) => Ok(*b.inner()),
            None => Err(CelError::NonBoolean {
                rule: self.text.clone(),
                got: format!("a value of type {}", result.get_type().name()),
            }),
        }
    }

    fn eval_error(&self, message: String) -> CelError {
        CelError::Evaluation {
            rule: self.text.clone(),
            // `duration(x)` runs as `duration(@k8s_go_duration(x))`: say `duration`.
            message: message.replace(GO_DURATION, "duration"),
        }
    }
}

const SELF: &str = "self";
const OLD_SELF: &str = "oldSelf";

/// Whether `expr` reads the variable `name` where no comprehension rebinds it:
/// `self.all(oldSelf, ...)` names a loop variable, not the old object.
fn references_free_var(expr: &IdedExpr, name: &str, bound: &mut Vec<String>) -> bool {
    let mut walk = |e: &IdedExpr, bound: &mut Vec<String>| references_free_var(e, name, bound);
    match &expr.expr {
        Expr::Ident(ident) => ident == name && !bound.iter().any(|b| b == name),
        Expr::Select(select) => walk(&select.operand, bound),
        Expr::Call(call) => {
            call.target.as_deref().is_some_and(|t| walk(t, bound))
                || call.args.iter().any(|a| walk(a, bound))
        }
        Expr::List(list) => list.elements.iter().any(|e| walk(e, bound)),
        Expr::Map(map) => map
            .entries
            .iter()
            .any(|entry| entry_reads(&entry.expr, &mut walk, bound)),
        Expr::Struct(st) => st
            .entries
            .iter()
            .any(|entry| entry_reads(&entry.expr, &mut walk, bound)),
        Expr::Comprehension(comp) => {
            // The range and the initial accumulator are outside the loop's scope.
            if walk(&comp.iter_range, bound) || walk(&comp.accu_init, bound) {
                return true;
            }
            let depth = bound.len();
            bound.push(comp.accu_var.clone());
            let in_result = walk(&comp.result, bound);
            bound.push(comp.iter_var.clone());
            bound.extend(comp.iter_var2.clone());
            let in_loop = walk(&comp.loop_cond, bound) || walk(&comp.loop_step, bound);
            bound.truncate(depth);
            in_result || in_loop
        }
        Expr::Literal(_) | Expr::Unspecified => false,
    }
}

fn entry_reads(
    entry: &EntryExpr,
    walk: &mut impl FnMut(&IdedExpr, &mut Vec<String>) -> bool,
    bound: &mut Vec<String>,
) -> bool {
    match entry {
        EntryExpr::StructField(field) => walk(&field.value, bound),
        EntryExpr::MapEntry(entry) => walk(&entry.key, bound) || walk(&entry.value, bound),
    }
}

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

/// Built once: the standard library plus the Kubernetes additions. A failure
/// to register is kept as an error rather than a panic.
static ENV: LazyLock<Result<Arc<Env>, String>> = LazyLock::new(|| build_env().map(Arc::new));

fn env() -> Result<Arc<Env>, String> {
    ENV.clone()
}

fn build_env() -> Result<Env, String> {
    let mut env = Env::stdlib();
    let err = |e: ::cel::DeclarationError| format!("cannot set up the CEL environment: {e}");
    env.add_extension(::cel::extensions::strings).map_err(err)?;
    ::cel::add_overload!(env, fn is_ip: (CelString) -> CelBool, name = "isIP", id = "is_ip")
        .map_err(err)?;
    ::cel::add_overload!(env, fn dns1123_label_format: () -> Format,
        name = "format.dns1123Label", id = "format_dns1123Label")
    .map_err(err)?;
    ::cel::add_member_overload!(env, fn validate: (Format, CelString) -> CelOptional<'static>,
        id = "format-validate")
    .map_err(err)?;
    // `duration(x)` is parsed as `duration(@k8s_go_duration(x))`: see `go_duration`.
    env.add_macro(Macro::global("duration", 1, |helper, _target, args| {
        let inner = helper.next_expr(Expr::Call(CallExpr {
            func_name: GO_DURATION.to_owned(),
            target: None,
            args: std::mem::take(args),
        }));
        Ok(Some(helper.next_expr(Expr::Call(CallExpr {
            func_name: "duration".to_owned(),
            target: None,
            args: vec![inner],
        }))))
    }))
    .map_err(err)?;
    ::cel::add_overload!(env, fn go_duration: (CelString) -> Result<CelString>,
        name = GO_DURATION, id = "go_duration_string")
    .map_err(err)?;
    ::cel::add_overload!(env, fn go_duration_passthrough: (CelDuration) -> CelDuration,
        name = GO_DURATION, id = "go_duration_duration")
    .map_err(err)?;
    Ok(env)
}

// ---------------------------------------------------------------------------
// JSON -> CEL
// ---------------------------------------------------------------------------

fn json_to_val(value: &serde_json::Value) -> Box<dyn Val> {
    match value {
        serde_json::Value::Null => Box::new(CelNull),
        serde_json::Value::Bool(b) => Box::new(CelBool::from(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Box::new(CelInt::from(i)),
            // u64 past i64::MAX and real numbers: Go decodes both to float64.
            None => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        serde_json::Value::String(s) => Box::new(CelString::from(s.clone())),
        serde_json::Value::Array(items) => Box::new(CelList::from(
            items.iter().map(json_to_val).collect::<Vec<_>>(),
        )),
        serde_json::Value::Object(fields) => {
            let map: HashMap<CelMapKey<'static>, Box<dyn Val>> = fields
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.clone()), json_to_val(v)))
                .collect();
            let aliases: HashMap<String, String> = fields
                .keys()
                .filter_map(|k| escape(k).filter(|e| e != k).map(|e| (e, k.clone())))
                .collect();
            let map = CelMap::from(map);
            if aliases.is_empty() {
                Box::new(map)
            } else {
                Box::new(JsonObject { map, aliases })
            }
        }
    }
}

/// Kubernetes' escaping of a property name into a CEL identifier
/// (k8s.io/apiserver/pkg/cel/escaping.go): reserved words become
/// `__word__`; `__`, `.`, `-`, `/` become `__underscores__`, `__dot__`,
/// `__dash__`, `__slash__`. `None` for a name CEL cannot reach at all.
fn escape(ident: &str) -> Option<String> {
    const RESERVED: &[&str] = &[
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ];
    let first = ident.chars().next()?;
    if first.is_ascii_digit() {
        return None;
    }
    if RESERVED.contains(&ident) {
        return Some(format!("__{ident}__"));
    }
    let mut out = String::with_capacity(ident.len());
    let mut rest = ident;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("__") {
            out.push_str("__underscores__");
            rest = &rest[2..];
            continue;
        }
        match c {
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c if c.is_ascii_alphanumeric() || c == '_' => out.push(c),
            _ => return None,
        }
        rest = &rest[c.len_utf8()..];
    }
    Some(out)
}

/// A JSON object with property names that need escaping. It is the plain map
/// for everything (iteration, `size`, `in` see the real keys, as for a
/// Kubernetes map), except that a field missing under its given name is also
/// looked up by its escaped name: `self.__namespace__` reads `namespace`.
#[derive(Debug, Clone)]
struct JsonObject {
    map: CelMap<'static>,
    /// Escaped name -> property name, for the names that differ.
    aliases: HashMap<String, String>,
}

impl Indexer for JsonObject {
    fn get<'b, 'w>(&'b self, key: &dyn Val) -> Result<CowVal<'b, 'w>, ExecutionError>
    where
        Self: 'w,
    {
        match self.map.get(key) {
            Err(ExecutionError::NoSuchKey(missing)) => {
                let alias = key
                    .downcast_ref::<CelString>()
                    .and_then(|k| self.aliases.get(k.inner()));
                match alias {
                    Some(original) => self.map.get(&CelString::from(original.clone())),
                    None => Err(ExecutionError::NoSuchKey(missing)),
                }
            }
            other => other,
        }
    }

    fn steal<'w>(self: Box<Self>, key: &dyn Val) -> Result<Box<dyn Val + 'w>, ExecutionError>
    where
        Self: 'w,
    {
        self.get(key).map(CowVal::into_owned)
    }
}

impl Val for JsonObject {
    fn get_type(&self) -> &Type {
        <Self as Val>::cel_type()
    }

    fn cel_type() -> &'static Type {
        &celtypes::MAP_TYPE
    }

    fn as_container(&self) -> Option<&dyn Container> {
        self.map.as_container()
    }

    fn as_indexer<'b, 'w>(&'b self) -> Option<&'b (dyn Indexer + 'w)>
    where
        Self: 'w,
    {
        Some(self)
    }

    fn as_iterable<'b, 'w>(&'b self) -> Option<&'b (dyn Iterable + 'w)>
    where
        Self: 'w,
    {
        self.map.as_iterable()
    }

    fn as_sizer(&self) -> Option<&dyn Sizer> {
        self.map.as_sizer()
    }

    fn as_zeroer(&self) -> Option<&dyn Zeroer> {
        self.map.as_zeroer()
    }

    fn equals(&self, other: &dyn Val) -> bool {
        match other.downcast_ref::<JsonObject>() {
            Some(other) => self.map.equals(&other.map),
            None => self.map.equals(other),
        }
    }

    fn clone_as_boxed<'w>(&self) -> Box<dyn Val + 'w>
    where
        Self: 'w,
    {
        Box::new(self.clone())
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

impl StaticVal for JsonObject {}

// ---------------------------------------------------------------------------
// Kubernetes IP library: isIP
// ---------------------------------------------------------------------------

/// `isIP(s)` as in k8s.io/apiserver/pkg/cel/library/ip.go: `s` parses as an
/// IPv4 or IPv6 address (Go's `netip.ParseAddr`: IPv4 only as four decimal
/// octets without leading zeros), with no zone (`fe80::1%eth0`) and not an
/// IPv4-mapped IPv6 address (`::ffff:1.2.3.4`).
fn is_ip(s: &CelString<'_>) -> CelBool {
    CelBool::from(parse_k8s_ip(s.inner()).is_some())
}

fn parse_k8s_ip(s: &str) -> Option<IpAddr> {
    if let Ok(v4) = s.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    // Rust's parser, like Go's, rejects zones and leading zeros in IPv4 parts.
    let v6 = s.parse::<Ipv6Addr>().ok()?;
    if v6.to_ipv4_mapped().is_some() {
        return None;
    }
    Some(IpAddr::V6(v6))
}

// ---------------------------------------------------------------------------
// Kubernetes format library: format.dns1123Label().validate(s)
// ---------------------------------------------------------------------------

/// Subset of k8s.io/apiserver/pkg/cel/library/format.go: only the
/// `dns1123Label` format, reached with `format.dns1123Label()`, and its
/// `validate(string)`, which returns `optional.none()` for a valid label and
/// otherwise `optional.of(errors)`, a list of the apimachinery messages.
/// `format.named(...)` and the other formats are left out: no CRD uses them.
///
/// As in cel-go, an optional never equals `null`: the Gateway API rule
/// `format.dns1123Label().validate(self) == null` is therefore false for every
/// string, valid or not, exactly as on a real API server.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Format {
    kind: FormatKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FormatKind {
    Dns1123Label,
}

static FORMAT_TYPE: Type = Type::new_unspecified_type("kubernetes.NamedFormat");

impl Val for Format {
    fn get_type(&self) -> &Type {
        <Self as Val>::cel_type()
    }

    fn cel_type() -> &'static Type {
        &FORMAT_TYPE
    }

    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Format>() == Some(self)
    }

    fn clone_as_boxed<'w>(&self) -> Box<dyn Val + 'w> {
        Box::new(*self)
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

impl StaticVal for Format {}

fn dns1123_label_format() -> Format {
    Format {
        kind: FormatKind::Dns1123Label,
    }
}

fn validate(format: &Format, s: &CelString<'_>) -> CelOptional<'static> {
    let errors = match format.kind {
        FormatKind::Dns1123Label => dns1123_label_errors(s.inner()),
    };
    if errors.is_empty() {
        CelOptional::none()
    } else {
        let list: Vec<Box<dyn Val>> = errors
            .into_iter()
            .map(|e| Box::new(CelString::from(e)) as Box<dyn Val>)
            .collect();
        CelOptional::of(Box::new(CelList::from(list)))
    }
}

/// apimachinery's `validation.IsDNS1123Label`, messages included.
fn dns1123_label_errors(value: &str) -> Vec<String> {
    const MAX_LEN: usize = 63;
    let mut errs = Vec::new();
    if value.len() > MAX_LEN {
        errs.push(format!("must be no more than {MAX_LEN} characters"));
    }
    if !is_dns1123_label(value) {
        if is_dns1123_subdomain(value) {
            // A valid subdomain that is no label: its length was checked, so dots.
            errs.push("must not contain dots".to_owned());
        } else {
            errs.push(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters \
                 or '-', and must start and end with an alphanumeric character (e.g. 'my-name', \
                  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                    .to_owned(),
            );
        }
    }
    errs
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, without a regex engine.
fn is_dns1123_label(s: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) => {
            alnum(first) && alnum(last) && b.iter().all(|&c| alnum(c) || c == b'-')
        }
        _ => false,
    }
}

/// `^label(\.label)*$`, the subdomain regex apimachinery checks first.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(is_dns1123_label)
}

// ---------------------------------------------------------------------------
// duration(): Go's time.ParseDuration
// ---------------------------------------------------------------------------

/// The function the `duration` macro wraps around its argument.
const GO_DURATION: &str = "@k8s_go_duration";

/// Parses `s` as Go's `time.ParseDuration` does (what cel-go, and so the API
/// server, uses) and hands the crate's `duration()` an exact spelling of the
/// result it parses without loss, so that only Go's grammar decides.
fn go_duration(s: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    let nanos = parse_go_duration(s.inner())
        .map_err(|message| ExecutionError::function_error("duration", message))?;
    Ok(CelString::from(canonical_duration(nanos)))
}

fn go_duration_passthrough(d: &CelDuration) -> CelDuration {
    *d
}

/// Go's `time.ParseDuration` (src/time/format.go), overflow rules included.
fn parse_go_duration(orig: &str) -> Result<i64, String> {
    const LIMIT: u64 = 1 << 63;
    let invalid = || format!("time: invalid duration {orig:?}");
    let mut s = orig.as_bytes();
    let mut neg = false;
    if let Some(&c) = s.first() {
        if c == b'-' || c == b'+' {
            neg = c == b'-';
            s = &s[1..];
        }
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut d: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // [0-9]*
        let before = s.len();
        let mut v: u64 = 0;
        while let Some(&c) = s.first().filter(|c| c.is_ascii_digit()) {
            if v > LIMIT / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(c - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
            s = &s[1..];
        }
        let pre = before != s.len();
        // (\.[0-9]*)?
        let (mut f, mut scale, mut post) = (0u64, 1f64, false);
        if s.first() == Some(&b'.') {
            s = &s[1..];
            let before = s.len();
            let mut overflow = false;
            while let Some(&c) = s.first().filter(|c| c.is_ascii_digit()) {
                s = &s[1..];
                if overflow {
                    continue;
                }
                if f > (LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let y = f * 10 + u64::from(c - b'0');
                if y > LIMIT {
                    overflow = true;
                    continue;
                }
                f = y;
                scale *= 10.0;
            }
            post = before != s.len();
        }
        if !pre && !post {
            return Err(invalid());
        }
        let i = s
            .iter()
            .position(|&c| c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if i == 0 {
            return Err(format!("time: missing unit in duration {orig:?}"));
        }
        let (u, rest) = s.split_at(i);
        s = rest;
        let unit: u64 = match u {
            b"ns" => 1,
            // "us", U+00B5 micro sign, U+03BC Greek mu
            b"us" | b"\xc2\xb5s" | b"\xce\xbcs" => 1_000,
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60_000_000_000,
            b"h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {:?} in duration {orig:?}",
                    String::from_utf8_lossy(u)
                ))
            }
        };
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            // As Go: float64 keeps fractions of an hour nanosecond-accurate.
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        // Go adds in uint64, which wraps: mirrored for identical results.
        d = d.wrapping_add(v);
        if d > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        return Ok((d as i64).wrapping_neg());
    }
    if d > LIMIT - 1 {
        return Err(invalid());
    }
    Ok(d as i64)
}

/// `nanos` spelled with every unit, each part small enough that the crate's
/// float-based parser reads it exactly (hours stay below 2^22).
fn canonical_duration(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let (h, n) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, n) = (n / 60_000_000_000, n % 60_000_000_000);
    let (s, n) = (n / 1_000_000_000, n % 1_000_000_000);
    let (ms, n) = (n / 1_000_000, n % 1_000_000);
    let (us, ns) = (n / 1_000, n % 1_000);
    format!("{sign}{h}h{m}m{s}s{ms}ms{us}us{ns}ns")
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod crd_rules_tests;
