//! Envoy's upstream RBAC filter at request time, for the subset `config::rbac` accepts: when the router has selected
//! the host, its policies judge that host's address, and a denial means no connection is made.

use std::net::SocketAddr;

use crate::config::{Permission, RbacAction, RbacConfig};
use crate::shared::metrics::MetricsStore;
use crate::types::MetricKind;

use super::local_reply::EnvoyReply;

/// Runs the filter for the selected host and counts the verdict as Envoy does (`cluster.<name>.rbac.allowed` /
/// `.denied`, `stat_prefix` being `cluster.<name>`; nothing without rules).
pub(crate) fn run(
    config: &RbacConfig,
    selected: SocketAddr,
    stats: &MetricsStore,
    stat_prefix: &str,
) -> Result<(), EnvoyReply> {
    // The filter records the selected host as the `envoy.stream.upstream_address` the matchers read.
    let verdict = check(config, Some(selected));
    if config.rules.is_some() {
        let outcome = if verdict.is_ok() { "allowed" } else { "denied" };
        stats
            .define(
                MetricKind::Counter,
                &format!("{stat_prefix}.rbac.{outcome}"),
            )
            .add(1);
    }
    verdict
}

/// Envoy's decision on the address its matchers see (`None`: no filter recorded one): `Err(reply)` is the 403 it
/// sends, naming the policy in the response details.
pub(crate) fn check(config: &RbacConfig, saved: Option<SocketAddr>) -> Result<(), EnvoyReply> {
    // No rules: Envoy builds no engine and lets everything through.
    let Some(rules) = &config.rules else {
        return Ok(());
    };
    let matched = rules
        .policies
        .iter()
        .find(|(_, policy)| policy.permissions.iter().any(|p| matches(p, saved)))
        .map(|(name, _)| name.as_str());
    match (rules.action, matched) {
        (RbacAction::Allow, Some(_)) | (RbacAction::Deny, None) => Ok(()),
        (RbacAction::Deny, Some(policy)) => Err(denied(policy)),
        (RbacAction::Allow, None) => Err(denied("none")),
    }
}

fn matches(permission: &Permission, saved: Option<SocketAddr>) -> bool {
    match permission {
        Permission::Any => true,
        Permission::And(rules) => rules.iter().all(|p| matches(p, saved)),
        Permission::Or(rules) => rules.iter().any(|p| matches(p, saved)),
        Permission::Not(rule) => !matches(rule, saved),
        Permission::UpstreamIpPort { ip, ports } => {
            // Envoy's matcher is false when no address was recorded.
            let Some(address) = saved else {
                return false;
            };
            ip.is_none_or(|cidr| cidr.contains(address.ip()))
                && ports.is_none_or(|(start, end)| {
                    let port = i64::from(address.port());
                    start <= port && port <= end
                })
        }
    }
}

fn denied(policy: &str) -> EnvoyReply {
    EnvoyReply {
        status: 403,
        body: "RBAC: access denied".to_string(),
        details: format!("rbac_access_denied_matched_policy[{policy}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CidrRange, RbacPolicy, RbacRules};

    fn upstream(prefix: &str, len: u8) -> Permission {
        Permission::UpstreamIpPort {
            ip: Some(CidrRange {
                prefix: prefix.parse().expect("ip"),
                len,
            }),
            ports: None,
        }
    }

    /// The shape envoy-config/envoy.yaml uses: deny a range, and deny when no address was recorded.
    fn shipped_like() -> RbacConfig {
        let any_address = Permission::Or(vec![upstream("0.0.0.0", 0), upstream("::", 0)]);
        RbacConfig {
            rules: Some(RbacRules {
                action: RbacAction::Deny,
                policies: vec![
                    (
                        "resolved_address_unknown".into(),
                        RbacPolicy {
                            permissions: vec![Permission::Not(Box::new(any_address))],
                        },
                    ),
                    (
                        "special_purpose_address".into(),
                        RbacPolicy {
                            permissions: vec![Permission::And(vec![
                                Permission::Or(vec![
                                    upstream("127.0.0.0", 8),
                                    upstream("::1", 128),
                                ]),
                                Permission::Not(Box::new(upstream("127.0.0.53", 32))),
                            ])],
                        },
                    ),
                ],
            }),
        }
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("socket address"))
    }

    #[test]
    fn deny_policies_name_the_first_match() {
        let config = shipped_like();
        assert_eq!(check(&config, addr("93.184.215.14:443")), Ok(()));
        let reply = check(&config, addr("127.0.0.1:80")).expect_err("loopback");
        assert_eq!(
            (reply.status, reply.body.as_str(), reply.details.as_str()),
            (
                403,
                "RBAC: access denied",
                "rbac_access_denied_matched_policy[special_purpose_address]"
            )
        );
        assert_eq!(
            check(&config, addr("[::1]:80")).map_err(|r| r.details),
            Err("rbac_access_denied_matched_policy[special_purpose_address]".into())
        );
        // The carve-out inside the denied range.
        assert_eq!(check(&config, addr("127.0.0.53:53")), Ok(()));
        // Nothing recorded: every address matcher is false, so the not-any-address policy denies.
        assert_eq!(
            check(&config, None).map_err(|r| r.details),
            Err("rbac_access_denied_matched_policy[resolved_address_unknown]".into())
        );
    }

    #[test]
    fn allow_action_and_ports() {
        let config = RbacConfig {
            rules: Some(RbacRules {
                action: RbacAction::Allow,
                policies: vec![(
                    "web".into(),
                    RbacPolicy {
                        permissions: vec![Permission::UpstreamIpPort {
                            ip: None,
                            ports: Some((80, 443)),
                        }],
                    },
                )],
            }),
        };
        assert_eq!(check(&config, addr("1.2.3.4:443")), Ok(()));
        assert_eq!(check(&config, addr("1.2.3.4:80")), Ok(()));
        assert_eq!(
            check(&config, addr("1.2.3.4:444")).map_err(|r| r.details),
            Err("rbac_access_denied_matched_policy[none]".into())
        );
        assert_eq!(check(&RbacConfig { rules: None }, None), Ok(()));
    }
}
