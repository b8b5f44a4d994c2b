use super::*;
use serde_json::json;

fn eval(rule: &str, value: serde_json::Value) -> Result<bool, CelError> {
    Rule::compile(rule)?.evaluate(&value)
}

fn check(rule: &str, value: serde_json::Value) -> bool {
    match eval(rule, value) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn is_ip_accepts_addresses_only() {
    assert!(check("isIP(self)", json!("10.0.0.1")));
    assert!(check("isIP(self)", json!("2001:db8::1")));
    assert!(check("isIP(self)", json!("::1")));
    assert!(check("isIP(self)", json!("2001:DB8::1")));
    assert!(check("isIP(self)", json!("::1.2.3.4")));
    assert!(!check("isIP(self)", json!("::1.02.3.4")));
    assert!(!check("isIP(self)", json!("1:2:3:4:5:6:7:8:9")));
    assert!(!check("isIP(self)", json!("example.com")));
    assert!(!check("isIP(self)", json!("127.0.0.256")));
    assert!(!check("isIP(self)", json!(":::1")));
    // not canonical dotted IPv4, zones, IPv4-mapped IPv6
    assert!(!check("isIP(self)", json!("010.0.0.1")));
    assert!(!check("isIP(self)", json!("10.1")));
    assert!(!check("isIP(self)", json!("fe80::1%eth0")));
    assert!(!check("isIP(self)", json!("::ffff:1.2.3.4")));
    assert!(!check("isIP(self)", json!("")));
}

#[test]
fn format_dns1123_label_validate() {
    let valid = "format.dns1123Label().validate(self)";
    assert!(!check(&format!("{valid}.hasValue()"), json!("my-port")));
    assert!(check(
        &format!("{valid} == optional.none()"),
        json!("my-port")
    ));
    assert!(check(&format!("{valid}.hasValue()"), json!("My_Port")));
    assert!(check(&format!("{valid}.hasValue()"), json!("-a")));
    assert!(check(&format!("{valid}.hasValue()"), json!("")));
    assert!(check(&format!("{valid}.hasValue()"), json!("a".repeat(64))));
    assert!(!check(
        &format!("{valid}.hasValue()"),
        json!("a".repeat(63))
    ));
    assert!(check(
        &format!("{valid}.value() == ['must not contain dots']"),
        json!("a.b")
    ));
    assert!(check(
        &format!("{valid}.value()[0].startsWith('a lowercase RFC 1123 label')"),
        json!("A")
    ));
    // cel-go: an optional, empty or not, is never equal to null.
    assert!(!check(&format!("{valid} == null"), json!("my-port")));
    assert!(!check(&format!("{valid} == null"), json!("My_Port")));
}

#[test]
fn duration_follows_go_parse_duration() {
    assert!(check("duration(self) == duration('90m')", json!("1h30m")));
    assert!(check("duration(self) == duration('0.1s')", json!("100ms")));
    assert!(check("duration(self) == duration('1000ns')", json!("1µs")));
    assert!(check("duration(self) == duration('1us')", json!("1μs")));
    assert!(check("duration(self) < duration('0s')", json!("-1.5h")));
    assert!(check("duration(self) == duration('0s')", json!("0")));
    assert!(check("duration(self) == duration('1s')", json!("+1s")));
    assert!(check("duration(self) == duration('0.5s')", json!(".5s")));
    assert!(!check("duration(self) > duration('1h')", json!("1h")));
    assert!(check(
        "duration(self) == duration('2562047h47m16.854775807s')",
        json!("9223372036854775807ns")
    ));
    assert!(check(
        "duration(self) < duration('-2562047h')",
        json!("-2562047h47m16.854775808s")
    ));
    assert!(check(
        "duration(duration(self)) == duration('1m')",
        json!("60s")
    ));
    for bad in [
        "1h30", "1e3s", "1hx", "1h 2m", "", "5", "1d", ".s", "2562048h",
    ] {
        let err = eval("duration(self) > duration('0s')", json!(bad));
        assert!(
            matches!(err, Err(CelError::Evaluation { .. })),
            "{bad:?} gave {err:?}"
        );
    }
}

#[test]
fn parse_go_duration_exact_values() {
    assert_eq!(parse_go_duration("1h30m"), Ok(5_400_000_000_000));
    assert_eq!(parse_go_duration("1.000000001s"), Ok(1_000_000_001));
    assert_eq!(parse_go_duration("-0"), Ok(0));
    assert_eq!(parse_go_duration("9223372036854775807ns"), Ok(i64::MAX));
    assert_eq!(parse_go_duration("-9223372036854775808ns"), Ok(i64::MIN));
    assert!(parse_go_duration("9223372036854775808ns").is_err());
    assert_eq!(
        canonical_duration(i64::MIN),
        "-2562047h47m16s854ms775us808ns"
    );
}

#[test]
fn escaped_property_names() {
    assert_eq!(escape("namespace").as_deref(), Some("__namespace__"));
    assert_eq!(
        escape("a.b-c/d").as_deref(),
        Some("a__dot__b__dash__c__slash__d")
    );
    assert_eq!(escape("x__y").as_deref(), Some("x__underscores__y"));
    assert_eq!(escape("plain_name").as_deref(), Some("plain_name"));
    assert_eq!(escape("1abc"), None);
    assert_eq!(escape("a b"), None);
    let obj = json!({"namespace": "ns", "app.kubernetes.io/name": "x"});
    assert!(check("self.__namespace__ == 'ns'", obj.clone()));
    assert!(check("has(self.__namespace__)", obj.clone()));
    assert!(check(
        "self.app__dot__kubernetes__dot__io__slash__name == 'x'",
        obj.clone()
    ));
    assert!(!check("has(self.__in__)", obj.clone()));
    // map views still see the real keys
    assert!(check("size(self) == 2 && 'namespace' in self", obj.clone()));
    assert!(check("self['app.kubernetes.io/name'] == 'x'", obj.clone()));
    assert!(check(
        "self.all(k, k == 'namespace' || k.contains('/'))",
        obj.clone()
    ));
    assert!(check("self == self", obj));
}

#[test]
fn crate_provided_functions() {
    // strings extension of the crate
    assert!(check("self.trim() == 'a'", json!(" \ta\n")));
    assert!(!check("self.trim() == ''", json!(" a ")));
    assert!(check("self.lowerAscii() == 'host'", json!("HoSt")));
    assert!(!check("self.lowerAscii() == 'host'", json!("Hostx")));
    assert!(check("self.upperAscii() in ['POST', 'PUT']", json!("post")));
    assert!(!check("self.upperAscii() in ['POST', 'PUT']", json!("get")));
    assert!(check(
        "self.split('/')[0] == 'example.com'",
        json!("example.com/x")
    ));
    assert!(!check("self.split('/').size() == 1", json!("a/b")));
    assert!(check("self.substring(2) == 'foo.com'", json!("*.foo.com")));
    assert!(!check("self.substring(2) == 'foo.com'", json!("*.bar.com")));
    // standard library
    assert!(check("self.matches('^[a-z]+$')", json!("abc")));
    assert!(!check("self.matches('^[a-z]+$')", json!("aBc")));
    assert!(check("self.contains('//')", json!("/a//b")));
    assert!(!check("self.startsWith('/')", json!("a/")));
    assert!(check(
        "self.endsWith('.cluster.local')",
        json!("a.cluster.local")
    ));
    assert!(check("self.exists_one(x, x == 1)", json!([1, 2])));
    assert!(!check("self.exists_one(x, x > 0)", json!([1, 2])));
    assert!(check("self.filter(x, x > 1).size() == 1", json!([1, 2])));
    assert!(check("self.map(x, x * 2) == [2, 4]", json!([1, 2])));
    assert!(check("type(self) == int && int('3') == self", json!(3)));
    assert!(check("type(self) == double", json!(3.5)));
    assert!(check("string(self) == '7' && 'a' < 'b'", json!(7)));
    assert!(check("self == null", json!(null)));
    assert!(check("{'a': 1}[self] <= 1 ? true : false", json!("a")));
}

#[test]
fn errors_name_the_rule() {
    let parse = Rule::compile("self.(").unwrap_err();
    assert!(matches!(parse, CelError::Parse { ref rule, .. } if rule == "self.("));
    assert!(parse.to_string().contains("self.("));
    let rule = Rule::compile("self.missing == 1").unwrap();
    let err = rule.evaluate(&json!({})).unwrap_err();
    assert!(matches!(err, CelError::Evaluation { .. }));
    assert!(err.to_string().contains("self.missing == 1"));
    let err = Rule::compile("self + 1")
        .unwrap()
        .evaluate(&json!(1))
        .unwrap_err();
    assert!(matches!(err, CelError::NonBoolean { .. }), "{err:?}");
    assert!(err.to_string().contains("self + 1"));
    let err = eval("isIP(self)", json!(1)).unwrap_err();
    assert!(matches!(err, CelError::Evaluation { .. }));
    for (rule, got) in [
        ("self", "map"),
        ("format.dns1123Label()", "kubernetes.NamedFormat"),
        ("optional.none()", "optional_type"),
    ] {
        let err = eval(rule, json!({"namespace": "x"})).unwrap_err();
        assert_eq!(
            err,
            CelError::NonBoolean {
                rule: rule.to_owned(),
                got: format!("a value of type {got}")
            }
        );
    }
    let err = eval("duration(self) > duration('1s')", json!(5)).unwrap_err();
    assert!(!err.to_string().contains(GO_DURATION), "{err}");
}

#[test]
fn transition_rules() {
    let rule = Rule::compile("self == oldSelf").unwrap();
    assert!(rule.is_transition());
    assert!(matches!(
        rule.evaluate(&json!(1)),
        Err(CelError::Evaluation { .. })
    ));
    assert!(!Rule::compile("self > 0").unwrap().is_transition());
    // a loop variable of that name is not the old object
    assert!(!Rule::compile("self.all(oldSelf, oldSelf > 0)")
        .unwrap()
        .is_transition());
    assert!(Rule::compile("self.all(x, x == oldSelf)")
        .unwrap()
        .is_transition());
}

#[test]
fn json_numbers_keep_their_kind() {
    assert!(check("type(self) == int", json!(5)));
    assert!(check("type(self) == double", json!(5.0)));
    assert!(check("type(self) == double", json!(u64::MAX)));
    assert!(check(
        "type(self) == map && type(self.a) == list",
        json!({"a": []})
    ));
}
