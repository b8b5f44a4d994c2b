//! The decision engine: pure, no proxy-wasm types. [`Policy::compile`] indexes a validated
//! [`FilterConfig`] once; [`Policy::decide`] (downstream) and [`Policy::decide_upstream`] then
//! answer each request without allocating and without scanning the rules.
//!
//! Downstream order: the port (a destination without one gets the default of its most specific
//! allow rule: 443 when that rule says `tls: true`, else 80; CONNECT must carry one), then `deny`
//! rules (any match denies), then `allow` rules (host, then port, then method), then — for IP
//! literals — the address policy. `mode: report` turns a denial into a report and forwards.
//!
//! Upstream order: the connected address (`upstream.address`) must be known, then `deny` rules
//! with IP/CIDR hosts, then the address policy. `allow` rules and name rules are the downstream
//! stage's business and are not consulted there.

use std::net::IpAddr;
use std::ops::ControlFlow;

use crate::config::{ClusterRouting, FilterConfig, HostPattern, Mode, Stage};
use crate::destination::{Destination, InvalidReason, Target};
use crate::index::{HostIndex, HostIndexBuilder, RuleId};
use crate::net::{self, AddressPolicy};

named_enum! {
    /// Why a destination is denied (answered with 403). Stable strings, see [`DenyReason::as_str`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum DenyReason {
        /// A `deny` rule matched.
        HostDenied => "host_denied",
        /// No `allow` rule names the host.
        HostNotAllowed => "host_not_allowed",
        /// `allow` rules name the host, but not this port.
        PortNotAllowed => "port_not_allowed",
        /// `allow` rules name the host and port, but not this method.
        MethodNotAllowed => "method_not_allowed",
        /// The address (an IP-literal destination, or upstream the resolved one) is in
        /// `addresses.deny` and not carved out by `addresses.allow`.
        AddressDenied => "address_denied",
        /// The upstream stage could not read or parse `upstream.address` (fails closed).
        UpstreamAddressUnknown => "upstream_address_unknown",
        /// The destination is the proxy itself: one of `own_endpoints`, or the listener the request came in on.
        /// Denied in report mode too: a proxy that forwards to its own admin or listener is not reporting, it is open.
        OwnEndpoint => "own_endpoint",
        /// The allowing wildcard or CIDR rule already admits `max_hosts` other destinations (within the host TTL): one
        /// client cannot fill the DNS cache for everyone through one rule.
        HostLimit => "host_limit",
    }
}

/// What to do with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    /// Answer 403.
    Deny(DenyReason),
    /// `mode: report`: would be denied; log, count, forward.
    ReportOnly(DenyReason),
}

/// Which dynamic-forward-proxy cluster a forwarded request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Plain,
    Tls,
}

/// A downstream decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// The cluster for a forwarded request, when `cluster_header`/`clusters` are configured.
    /// CONNECT always goes plain: the tunnel carries the client's own TLS.
    pub route: Option<Route>,
    /// The allowing rule's bound on distinct destinations, for the caller to enforce (it needs shared state).
    pub host_limit: Option<HostLimit>,
}

/// The bound of the rule that allowed a destination: at most `max` distinct destinations per `ttl_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLimit {
    /// The rule's index in `allow`.
    pub rule: u32,
    pub max: u32,
    pub ttl_seconds: u32,
}

/// The request method, fetched only when a decision needs it (each fetch is a hostcall in Envoy).
pub trait MethodSource {
    fn method(&mut self) -> &[u8];
}

/// A method known up front.
impl MethodSource for &[u8] {
    fn method(&mut self) -> &[u8] {
        self
    }
}

#[derive(Debug)]
struct Rule {
    /// `None`: any port (deny rules only; allow rules always have ports).
    ports: Option<Box<[u16]>>,
    methods: Option<Box<[Box<[u8]>]>>,
    tls: Option<bool>,
    max_hosts: Option<u32>,
    /// The shared data key of the rule's destination set, when it has `max_hosts`.
    limit_key: Option<Box<str>>,
}

impl Rule {
    fn port_ok(&self, port: u16) -> bool {
        self.ports.as_deref().is_none_or(|p| p.contains(&port))
    }

    fn method_ok(&self, method: &mut dyn MethodSource) -> bool {
        match &self.methods {
            None => true,
            Some(list) => {
                let m = method.method();
                list.iter().any(|x| **x == *m)
            }
        }
    }
}

/// The compiled policy, shared by every HTTP context of a plugin.
#[derive(Debug)]
pub struct Policy {
    stage: Stage,
    mode: Mode,
    allow: Vec<Rule>,
    allow_index: HostIndex,
    deny: Vec<Rule>,
    deny_index: HostIndex,
    addresses: AddressPolicy,
    routing: Option<ClusterRouting>,
    destination_header: Option<String>,
    remove_proxy_authorization: bool,
    own_endpoints: Vec<(IpAddr, u16)>,
    /// The ports of `own_endpoints` a name may reach: the endpoint's address is unspecified or the address policy lets
    /// it through. Fixed by the configuration, so worked out once here.
    own_ports_by_name: Vec<u16>,
    host_ttl_seconds: u32,
}

fn methods(list: &Option<Vec<String>>) -> Option<Box<[Box<[u8]>]>> {
    list.as_ref()
        .map(|m| m.iter().map(|s| s.as_bytes().into()).collect())
}

impl Policy {
    pub fn compile(config: &FilterConfig) -> Policy {
        let mut allow = Vec::with_capacity(config.allow.len());
        let mut allow_index = HostIndexBuilder::default();
        for (id, rule) in config.allow.iter().enumerate() {
            allow_index.insert(&rule.host, id as RuleId);
            allow.push(Rule {
                ports: Some(rule.ports.as_slice().into()),
                methods: methods(&rule.methods),
                tls: rule.tls,
                max_hosts: rule.max_hosts,
                limit_key: rule.max_hosts.map(|_| {
                    let pattern = match &rule.host {
                        HostPattern::Exact(name) => name.clone(),
                        HostPattern::Wildcard(suffix) => format!("*.{suffix}"),
                        HostPattern::Cidr(cidr) => cidr.to_string(),
                    };
                    crate::host_limit::key(&pattern, &rule.ports).into()
                }),
            });
        }
        let mut deny = Vec::with_capacity(config.deny.len());
        let mut deny_index = HostIndexBuilder::default();
        for (id, rule) in config.deny.iter().enumerate() {
            deny_index.insert(&rule.host, id as RuleId);
            deny.push(Rule {
                ports: rule.ports.as_deref().map(Into::into),
                methods: methods(&rule.methods),
                tls: None,
                max_hosts: None,
                limit_key: None,
            });
        }
        let addresses = AddressPolicy::new(&config.address_deny, &config.address_allow);
        let own_ports_by_name = config
            .own_endpoints
            .iter()
            .filter(|(own, _)| own.is_unspecified() || !addresses.denies(*own))
            .map(|&(_, port)| port)
            .collect();
        Policy {
            stage: config.stage,
            mode: config.mode,
            allow,
            allow_index: allow_index.build(),
            deny,
            deny_index: deny_index.build(),
            addresses,
            routing: config.cluster_routing.clone(),
            destination_header: config.destination_header.clone(),
            remove_proxy_authorization: config.remove_proxy_authorization,
            own_endpoints: config.own_endpoints.clone(),
            own_ports_by_name,
            host_ttl_seconds: config.host_ttl_seconds,
        }
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn routing(&self) -> Option<&ClusterRouting> {
        self.routing.as_ref()
    }

    pub fn destination_header(&self) -> Option<&str> {
        self.destination_header.as_deref()
    }

    /// Whether an allowed request leaves without the client's `Proxy-Authorization`.
    pub fn removes_proxy_authorization(&self) -> bool {
        self.remove_proxy_authorization
    }

    /// Decides a downstream request for `dest`, giving it its default port when it has none.
    /// Errs only with [`InvalidReason::MissingPort`] (a CONNECT target without a port).
    /// Decides a destination; `listener` is the address the request came in on (`destination.address`), which the
    /// caller need only fetch for IP-literal destinations (see [`Policy::targets_itself`]).
    pub fn decide(
        &self,
        dest: &mut Destination,
        method: &mut dyn MethodSource,
        listener: Option<(IpAddr, u16)>,
    ) -> Result<Decision, InvalidReason> {
        let mut connect = None;
        let port = match dest.port() {
            Some(p) => p,
            None => {
                if is_connect(method, &mut connect) {
                    return Err(InvalidReason::MissingPort);
                }
                let p = self.default_port(dest.target());
                dest.set_default_port(p);
                p
            }
        };
        if self.targets_itself(dest.target(), port, listener) {
            return Ok(Decision {
                outcome: Outcome::Deny(DenyReason::OwnEndpoint),
                route: None,
                host_limit: None,
            });
        }
        let result = self.evaluate(dest.target(), port, method);
        let outcome = self.verdict(result.err());
        let wants_tls = match (outcome, result) {
            (Outcome::Deny(_), _) => None,
            (_, Ok((tls, _))) => Some(tls.unwrap_or(port == 443)),
            (_, Err(_)) => Some(port == 443),
        };
        let host_limit = match result {
            Ok((_, Some(rule))) => self.allow[rule as usize].max_hosts.map(|max| HostLimit {
                rule,
                max,
                ttl_seconds: self.host_ttl_seconds,
            }),
            _ => None,
        };
        let route = match (&self.routing, wants_tls) {
            (Some(_), Some(true)) if !is_connect(method, &mut connect) => Some(Route::Tls),
            (Some(_), Some(_)) => Some(Route::Plain),
            _ => None,
        };
        Ok(Decision {
            outcome,
            route,
            host_limit,
        })
    }

    /// Decides an upstream request from the address Envoy connects to (`None` when unknown).
    pub fn decide_upstream(
        &self,
        address: Option<(IpAddr, u16)>,
        method: &mut dyn MethodSource,
    ) -> Outcome {
        let reason = match address {
            None => Some(DenyReason::UpstreamAddressUnknown),
            Some((ip, port)) => {
                let ip = net::normalize(ip);
                if self.is_own_endpoint(ip, port, true) {
                    return Outcome::Deny(DenyReason::OwnEndpoint);
                }
                if self.deny_matches(Target::Ip(ip), port, method) {
                    Some(DenyReason::HostDenied)
                } else if self.addresses.denies(ip) {
                    Some(DenyReason::AddressDenied)
                } else {
                    None
                }
            }
        };
        self.verdict(reason)
    }

    /// Whether a destination may be the proxy itself. An IP literal is, when it is the listener's address or one of
    /// `own_endpoints` (an unspecified endpoint IP, `0.0.0.0`, stands for every address of the host). A name may
    /// resolve to anything, so it is, when its port is an own endpoint's whose address the address policy lets
    /// through (with loopback carved out, `localhost.example:9901` can be the admin; with the default policy the
    /// resolved-address stages deny loopback anyway).
    pub fn targets_itself(
        &self,
        target: Target<'_>,
        port: u16,
        listener: Option<(IpAddr, u16)>,
    ) -> bool {
        match target {
            Target::Ip(ip) => {
                let ip = net::normalize(ip);
                listener.is_some_and(|(own, own_port)| {
                    own_port == port && (own == ip || own.is_unspecified())
                }) || self.is_own_endpoint(ip, port, false)
            }
            Target::Name(_) => self.own_ports_by_name.contains(&port),
        }
    }

    /// Whether `ip:port` is one of `own_endpoints`. Upstream (`resolved`), an unspecified endpoint IP matches only
    /// loopback: the resolved address is a real one, and only loopback is surely this host.
    fn is_own_endpoint(&self, ip: IpAddr, port: u16, resolved: bool) -> bool {
        self.own_endpoints.iter().any(|&(own, own_port)| {
            own_port == port
                && (own == ip || (own.is_unspecified() && (!resolved || ip.is_loopback())))
        })
    }

    /// The shared data key of rule `rule`'s destination set (see [`crate::host_limit`]); empty for a rule without
    /// `max_hosts`.
    pub fn host_limit_key(&self, rule: u32) -> &str {
        self.allow
            .get(rule as usize)
            .and_then(|r| r.limit_key.as_deref())
            .unwrap_or_default()
    }

    /// Whether the address policy alone denies `ip` (exposed for tests and tools).
    pub fn address_denied(&self, ip: IpAddr) -> bool {
        self.addresses.denies(ip)
    }

    /// What `reason` (or none) means in this policy's mode: deny, report, or allow.
    pub fn verdict(&self, reason: Option<DenyReason>) -> Outcome {
        match (reason, self.mode) {
            (None, _) => Outcome::Allow,
            (Some(r), Mode::Enforce) => Outcome::Deny(r),
            (Some(r), Mode::Report) => Outcome::ReportOnly(r),
        }
    }

    /// `Ok((tls of the allowing rule, that rule))` or the reason to deny.
    fn evaluate(
        &self,
        target: Target<'_>,
        port: u16,
        method: &mut dyn MethodSource,
    ) -> Result<(Option<bool>, Option<RuleId>), DenyReason> {
        if self.deny_matches(target, port, method) {
            return Err(DenyReason::HostDenied);
        }
        let tls = self.find_allow(target, port, method)?;
        if let Target::Ip(ip) = target {
            if self.addresses.denies(ip) {
                return Err(DenyReason::AddressDenied);
            }
        }
        Ok(tls)
    }

    /// Any deny rule for the host (or, for NAT64/6to4 forms, for the IPv4 address they embed)
    /// whose ports and methods cover the request.
    fn deny_matches(&self, target: Target<'_>, port: u16, method: &mut dyn MethodSource) -> bool {
        let mut check = |id: RuleId| {
            let rule = &self.deny[id as usize];
            if rule.port_ok(port) && rule.method_ok(method) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        if self.deny_index.visit(target, &mut check).is_break() {
            return true;
        }
        match target {
            Target::Ip(IpAddr::V6(v6)) => net::embedded_ipv4(v6).is_some_and(|v4| {
                self.deny_index
                    .visit(Target::Ip(IpAddr::V4(v4)), &mut check)
                    .is_break()
            }),
            _ => false,
        }
    }

    fn find_allow(
        &self,
        target: Target<'_>,
        port: u16,
        method: &mut dyn MethodSource,
    ) -> Result<(Option<bool>, Option<RuleId>), DenyReason> {
        let mut reason = DenyReason::HostNotAllowed;
        let mut tls = None;
        let mut allowed_by = None;
        let flow = self.allow_index.visit(target, |id| {
            let rule = &self.allow[id as usize];
            if !rule.port_ok(port) {
                if reason == DenyReason::HostNotAllowed {
                    reason = DenyReason::PortNotAllowed;
                }
                return ControlFlow::Continue(());
            }
            if !rule.method_ok(method) {
                reason = DenyReason::MethodNotAllowed;
                return ControlFlow::Continue(());
            }
            tls = rule.tls;
            allowed_by = Some(id);
            ControlFlow::Break(())
        });
        if flow.is_break() {
            Ok((tls, allowed_by))
        } else {
            Err(reason)
        }
    }

    /// The port of a destination that names none: 443 when its most specific allow rule says
    /// `tls: true`, else 80.
    fn default_port(&self, target: Target<'_>) -> u16 {
        let mut port = 80;
        let _ = self.allow_index.visit(target, |id| {
            if self.allow[id as usize].tls == Some(true) {
                port = 443;
            }
            ControlFlow::Break(())
        });
        port
    }
}

fn is_connect(method: &mut dyn MethodSource, cache: &mut Option<bool>) -> bool {
    *cache.get_or_insert_with(|| method.method() == b"CONNECT")
}

#[cfg(test)]
mod tests;
