//! The fidelity table as data: variants (a filter-config pair, optionally a whole bootstrap
//! template), and cases in the e2e case format extended with the DNS records the test server
//! serves, how the upstream behaves, and which volatile parts of a body to mask.
//!
//! Both `tests/cases/requests/*.yaml` (the e2e table) and `tests/fidelity/cases/*.yaml` load
//! as [`FidelityCase`]; the e2e files simply use none of the extensions.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::patch::Patch;
use crate::cases::{Case, CaseRequest, Expect};
use crate::dns::Answer;
use crate::template::{self, Vars};

/// A proxy configuration the cases run under: one Envoy and one host-sim each.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FidelityVariant {
    #[serde(default)]
    pub description: String,
    /// The downstream (listener) filter's configuration (`DOWNSTREAM_CONFIG`).
    pub downstream: Value,
    /// The upstream (cluster) filter's configuration (`UPSTREAM_CONFIG`).
    pub upstream: Value,
    /// A bootstrap template relative to `tests/`; default `config/envoy.template.yaml`.
    #[serde(default)]
    pub template: Option<PathBuf>,
    /// Changes to the rendered bootstrap (see [`Patch`]).
    #[serde(default)]
    pub patch: Vec<Patch>,
    /// The resolved-address stage (RBAC after dynamic_forward_proxy) as `tests/cases/variants.yaml`
    /// gives it: the address policy in the filter's syntax; absent: the stage denies nothing.
    #[serde(default)]
    pub resolved: Option<Value>,
    /// A module this repository did not write, for templates that load one (`MODULE_WASM`,
    /// `MODULE_ROOT_ID`; see [`super::modules`]).
    #[serde(default)]
    pub module: Option<ModuleSpec>,
}

/// Which third-party module a variant runs, and the root context to start in it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSpec {
    /// The module's name in [`super::modules::module_wasm`].
    pub wasm: String,
    pub root_id: String,
}

/// One request, the world it meets, and what must come of it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FidelityCase {
    pub name: String,
    pub variant: String,
    #[serde(default)]
    pub description: String,
    /// Records the test DNS server serves for this case (names must be the case's own).
    #[serde(default)]
    pub dns: BTreeMap<String, DnsSpec>,
    /// What the scripted upstream does with this case's request.
    #[serde(default)]
    pub behaviour: Behaviour,
    /// JSON pointers (`/a/b`) into the response body whose values vary from run to run
    /// (times, ports, ids): replaced by `"<masked>"` before the proxies are compared.
    #[serde(default)]
    pub mask: Vec<String>,
    /// Regular expressions over the response body text whose matches vary from run to run:
    /// each match is replaced by the JSON string `"<masked>"` (so a pattern matching a whole JSON
    /// value keeps the body JSON) before the proxies are compared; for values JSON pointers
    /// cannot name, such as one header in a list of pairs.
    #[serde(default)]
    pub mask_text: Vec<String>,
    /// JSON pointers (`*` allowed) to arrays in the response body whose order carries no
    /// meaning (a map a host serialises in hash order): sorted before the proxies are compared.
    #[serde(default)]
    pub sort: Vec<String>,
    /// Compare the response body as JSON, leaf by leaf (`body:/json/pointer` fields), instead
    /// of byte for byte: for bodies a guest builds (the ABI probe's reports), whose layout is
    /// not the host's doing, so that each differing value can be named and documented.
    #[serde(default)]
    pub json_body: bool,
    /// The response body breaks off (the upstream reset mid-body): its head arrives, the rest not.
    #[serde(default)]
    pub truncated: bool,
    pub request: CaseRequest,
    /// What must come of the request: Envoy's behaviour, the reference.
    pub expect: Expect,
}

impl FidelityCase {
    /// `variant/name`: how reports and the differences list name the case.
    pub fn id(&self) -> String {
        format!("{}/{}", self.variant, self.name)
    }

    /// The e2e [`Case`] this one sends, with `tag` appended to its name so that requests from
    /// the two proxies can be told apart at the shared upstreams (`x-case-id`).
    pub fn tagged(&self, tag: &str) -> Case {
        Case {
            name: format!("{}{tag}", self.name),
            variant: self.variant.clone(),
            description: self.description.clone(),
            request: self.request.clone(),
            expect: self.expect.clone(),
        }
    }
}

/// A DNS answer in case files: `nxdomain`, `servfail`, `never`, `{ a: [...], aaaa: [...] }`
/// or `{ cname: target }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum DnsSpec {
    Code(DnsCode),
    Cname(CnameSpec),
    Records(RecordsSpec),
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CnameSpec {
    pub cname: String,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RecordsSpec {
    #[serde(default)]
    pub a: Vec<IpAddr>,
    #[serde(default)]
    pub aaaa: Vec<IpAddr>,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DnsCode {
    Nxdomain,
    Servfail,
    /// No answer at all: the resolver times out.
    Never,
}

fn default_ttl() -> u32 {
    60
}

impl DnsSpec {
    /// The DNS fixture's answer; `a` must hold IPv4 and `aaaa` IPv6 addresses.
    pub fn answer(&self) -> anyhow::Result<Answer> {
        Ok(match self {
            DnsSpec::Code(DnsCode::Nxdomain) => Answer::NxDomain,
            DnsSpec::Code(DnsCode::Servfail) => Answer::ServFail,
            DnsSpec::Code(DnsCode::Never) => Answer::NeverAnswer,
            DnsSpec::Records(RecordsSpec { a, aaaa, ttl }) => {
                anyhow::ensure!(a.iter().all(IpAddr::is_ipv4), "`a` lists an IPv6 address");
                anyhow::ensure!(
                    aaaa.iter().all(IpAddr::is_ipv6),
                    "`aaaa` lists an IPv4 address"
                );
                Answer::Ips {
                    addrs: a.iter().chain(aaaa).copied().collect(),
                    ttl: *ttl,
                }
            }
            DnsSpec::Cname(CnameSpec { cname, ttl }) => Answer::Cname {
                target: cname.clone(),
                ttl: *ttl,
            },
        })
    }
}

/// What the scripted upstream does once it has read the request (and recorded it). In case
/// files: `echo`, `reset`, `close`, `{ delay: { ms } }`, `{ respond: {...} }` or
/// `{ truncate: { declared, sent } }`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "BehaviourSpec")]
pub enum Behaviour {
    /// Answer 200 with the JSON of what it received (like the echo servers).
    #[default]
    Echo,
    /// Close the connection with a TCP reset, no response.
    Reset,
    /// Close the connection cleanly (FIN), no response.
    Close,
    /// Wait, then echo.
    Delay { ms: u64 },
    /// Answer as told.
    Respond(Respond),
    /// Send the head with `content-length: declared`, then `sent` bytes, then close.
    Truncate { declared: usize, sent: usize },
}

/// The YAML shapes of [`Behaviour`] (serde_yaml_ng would otherwise want `!tags` for enums).
#[derive(Deserialize)]
#[serde(untagged)]
enum BehaviourSpec {
    Name(String),
    Delay { delay: DelaySpec },
    Respond { respond: Respond },
    Truncate { truncate: TruncateSpec },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelaySpec {
    ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TruncateSpec {
    declared: usize,
    sent: usize,
}

impl TryFrom<BehaviourSpec> for Behaviour {
    type Error = String;

    fn try_from(spec: BehaviourSpec) -> Result<Self, String> {
        Ok(match spec {
            BehaviourSpec::Name(name) => match name.as_str() {
                "echo" => Behaviour::Echo,
                "reset" => Behaviour::Reset,
                "close" => Behaviour::Close,
                other => {
                    return Err(format!(
                        "unknown behaviour {other:?} (echo, reset, close, or a map: delay, respond, truncate)"
                    ))
                }
            },
            BehaviourSpec::Delay { delay } => Behaviour::Delay { ms: delay.ms },
            BehaviourSpec::Respond { respond } => Behaviour::Respond(respond),
            BehaviourSpec::Truncate { truncate } => Behaviour::Truncate {
                declared: truncate.declared,
                sent: truncate.sent,
            },
        })
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    #[serde(default = "default_status")]
    pub status: u16,
    /// Response headers, in order, as `[name, value]` pairs.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: Option<String>,
    /// A generated body of this many bytes (see `cases::generated_body`) instead of `body`.
    #[serde(default)]
    pub body_bytes: Option<usize>,
    /// Send the body chunked (no content-length), in pieces of at most 16 KiB.
    #[serde(default)]
    pub chunked: bool,
    /// Wait this long before the response head.
    #[serde(default)]
    pub delay_ms: u64,
}

fn default_status() -> u16 {
    200
}

/// Loads `variants.yaml`-style files: maps from variant name to [`FidelityVariant`].
pub fn load_variants(
    paths: &[PathBuf],
    vars: &Vars,
) -> anyhow::Result<BTreeMap<String, FidelityVariant>> {
    let mut all = BTreeMap::new();
    for path in paths {
        let text = read(path)?;
        let text = template::render(&text, vars)?;
        let variants: BTreeMap<String, FidelityVariant> = serde_yaml_ng::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for (name, variant) in variants {
            anyhow::ensure!(
                !all.contains_key(&name),
                "{}: variant {name:?} is defined twice",
                path.display()
            );
            all.insert(name, variant);
        }
    }
    Ok(all)
}

/// Loads every `*.yaml` case file of every directory in `dirs`, in file-name order, and checks
/// that ids are unique and that no two cases serve different DNS answers for one name.
pub fn load_cases(dirs: &[PathBuf], vars: &Vars) -> anyhow::Result<Vec<FidelityCase>> {
    let mut vars = vars.clone();
    // {{CASE_ID}} in raw requests is filled per case when the request is sent.
    vars.insert("CASE_ID".into(), "{{CASE_ID}}".into());
    let mut cases: Vec<FidelityCase> = Vec::new();
    for dir in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = template::render(&read(&file)?, &vars)?;
            let loaded: Vec<FidelityCase> = serde_yaml_ng::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            cases.extend(loaded);
        }
    }
    validate(&cases)?;
    Ok(cases)
}

/// Ids unique, DNS names claimed once (cases run concurrently against one DNS server), masks
/// well-formed.
pub fn validate(cases: &[FidelityCase]) -> anyhow::Result<()> {
    let mut ids = std::collections::BTreeSet::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for case in cases {
        let id = case.id();
        anyhow::ensure!(ids.insert(id.clone()), "case {id} appears twice");
        for (name, spec) in &case.dns {
            spec.answer()
                .map_err(|e| anyhow::anyhow!("case {id}: dns {name}: {e}"))?;
            let key = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(other) = names.insert(key, id.clone()) {
                anyhow::bail!("case {id}: dns name {name} is already served for case {other}");
            }
        }
        for re in &case.mask_text {
            regex::Regex::new(re)
                .map_err(|e| anyhow::anyhow!("case {id}: mask_text {re:?}: {e}"))?;
        }
        for pointer in case.mask.iter().chain(&case.sort) {
            anyhow::ensure!(
                pointer.starts_with('/'),
                "case {id}: {pointer:?} is not a JSON pointer (starts with /)"
            );
        }
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(yaml: &str) -> FidelityCase {
        serde_yaml_ng::from_str(yaml).expect("case")
    }

    #[test]
    fn e2e_cases_load_with_defaults() {
        let c = case("name: a\nvariant: v\nrequest: { host: x }\nexpect: { status: 200 }\n");
        assert_eq!(c.behaviour, Behaviour::Echo);
        assert!(c.dns.is_empty() && c.mask.is_empty() && c.mask_text.is_empty());
        assert!(c.sort.is_empty() && !c.truncated && !c.json_body);
        assert_eq!(c.tagged("~E").id(), "v/a~E");
    }

    #[test]
    fn behaviours_parse() {
        let c =
            case("name: a\nvariant: v\nbehaviour: reset\nrequest: {}\nexpect: { status: 503 }\n");
        assert_eq!(c.behaviour, Behaviour::Reset);
        let c = case(
            "name: a\nvariant: v\nbehaviour: { respond: { status: 404, body_bytes: 10, chunked: true } }\nrequest: {}\nexpect: { status: 404 }\n",
        );
        match c.behaviour {
            Behaviour::Respond(r) => {
                assert_eq!((r.status, r.body_bytes, r.chunked), (404, Some(10), true))
            }
            other => panic!("parsed as {other:?}"),
        }
        let bad: Result<FidelityCase, _> = serde_yaml_ng::from_str(
            "name: a\nvariant: v\nbehaviour: { wait: { ms: 1 } }\nrequest: {}\nexpect: { status: 200 }\n",
        );
        assert!(bad.is_err(), "an unknown behaviour must not load");
        let bad: Result<FidelityCase, _> = serde_yaml_ng::from_str(
            "name: a\nvariant: v\nbehaviour: explode\nrequest: {}\nexpect: { status: 200 }\n",
        );
        assert!(bad.is_err(), "an unknown behaviour name must not load");
        let c = case("name: a\nvariant: v\nbehaviour: { delay: { ms: 7 } }\nrequest: {}\nexpect: { status: 200 }\n");
        assert_eq!(c.behaviour, Behaviour::Delay { ms: 7 });
    }

    #[test]
    fn dns_specs_map_to_answers() {
        let c = case(
            "name: a\nvariant: v\ndns:\n  x.test: nxdomain\n  y.test: { a: [10.0.0.1], aaaa: ['::1'], ttl: 5 }\n  z.test: { cname: y.test }\nrequest: {}\nexpect: { status: 200 }\n",
        );
        assert_eq!(c.dns["x.test"].answer().expect("x"), Answer::NxDomain);
        assert_eq!(
            c.dns["y.test"].answer().expect("y"),
            Answer::Ips {
                addrs: vec!["10.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")],
                ttl: 5
            }
        );
        assert!(matches!(c.dns["z.test"].answer(), Ok(Answer::Cname { .. })));
        let wrong = case("name: a\nvariant: v\ndns: { w.test: { a: ['::1'] } }\nrequest: {}\nexpect: { status: 200 }\n");
        assert!(wrong.dns["w.test"].answer().is_err());
        let typo: Result<FidelityCase, _> = serde_yaml_ng::from_str(
            "name: a\nvariant: v\ndns: { w.test: { aa: ['10.0.0.1'] } }\nrequest: {}\nexpect: { status: 200 }\n",
        );
        assert!(
            typo.is_err(),
            "a misspelt record type must not load as no records"
        );
    }

    #[test]
    fn a_dns_name_belongs_to_one_case() {
        let a = case("name: a\nvariant: v\ndns: { n.test: nxdomain }\nrequest: {}\nexpect: { status: 503 }\n");
        let mut b = a.clone();
        b.name = "b".into();
        let err = validate(&[a.clone(), b]).expect_err("shared name");
        assert!(err.to_string().contains("n.test"), "{err}");
        let err = validate(&[a.clone(), a]).expect_err("same id");
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
