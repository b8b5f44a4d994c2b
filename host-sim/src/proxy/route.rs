//! Route selection as Envoy's route table does it: the virtual host by `:authority` (exact, then suffix wildcards
//! longest first, then prefix wildcards, then `*`), then the first route of that host whose match (path and
//! `headers`) fits.

use crate::config::{HeaderMatcher, HeaderRule, Route, RouteConfig, RouteMatch, VirtualHost};
use crate::headers::HeaderMap;

/// The chosen route, with the names the `xds.*` properties report.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    pub virtual_host: &'a VirtualHost,
    pub route: &'a Route,
}

/// Picks the route for a request. `authority` is `:authority` as the filters left it: a port, if present, takes part in the
/// domain match, as in Envoy without `strip_any_host_port`; `path` is `:path` (absent for CONNECT); `headers` are
/// the request's headers for the routes' header matchers.
pub fn select<'a>(
    config: &'a RouteConfig,
    authority: Option<&str>,
    path: Option<&str>,
    connect: bool,
    headers: &HeaderMap,
) -> Option<Selected<'a>> {
    // `VirtualHostImpl::getRouteFromEntries`: without `x-forwarded-proto` (the connection manager adds it, so only a
    // filter can have removed it) no route matches.
    if headers
        .get("x-forwarded-proto")
        .is_none_or(|scheme| scheme.is_empty())
    {
        return None;
    }
    // `RouteMatcher::findVirtualHost`: a table of only `*` hosts matches any request; any other finds no host for a
    // request without `:authority`.
    let only_default = config
        .virtual_hosts
        .iter()
        .all(|vh| vh.domains.iter().all(|d| d == "*"));
    if !only_default && authority.is_none() {
        return None;
    }
    let host = authority.unwrap_or_default().to_ascii_lowercase();
    let virtual_host = find_virtual_host(config, &host)?;
    let route = virtual_host.routes.iter().find(|route| {
        matches(&route.matcher, path, connect)
            && route.headers.iter().all(|h| header_matches(h, headers))
    })?;
    Some(Selected {
        virtual_host,
        route,
    })
}

fn matches(matcher: &RouteMatch, path: Option<&str>, connect: bool) -> bool {
    match matcher {
        RouteMatch::Connect => connect,
        // CONNECT requests carry no path; only connect_matcher routes take them.
        RouteMatch::Prefix(prefix) => {
            !connect && path.is_some_and(|path| path.starts_with(prefix.as_str()))
        }
        RouteMatch::Path(exact) => {
            !connect && path.is_some_and(|path| path_without_query(path) == exact)
        }
    }
}

fn header_matches(matcher: &HeaderMatcher, headers: &HeaderMap) -> bool {
    let values = headers.get_all(&matcher.name);
    let hit = match &matcher.rule {
        HeaderRule::Present(present) => values.is_empty() != *present,
        HeaderRule::Exact { value, ignore_case } => {
            // Envoy compares repeated headers as one value joined with commas.
            let joined = values.join(&b","[..]);
            !values.is_empty()
                && if *ignore_case {
                    joined.eq_ignore_ascii_case(value.as_bytes())
                } else {
                    joined == value.as_bytes()
                }
        }
    };
    hit != matcher.invert
}

fn path_without_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

fn find_virtual_host<'a>(config: &'a RouteConfig, host: &str) -> Option<&'a VirtualHost> {
    let hosts = &config.virtual_hosts;
    if let Some(exact) = hosts.iter().find(|vh| vh.domains.iter().any(|d| d == host)) {
        return Some(exact);
    }
    // Suffix wildcards (`*.example.com`, `*-bar.foo.com`): the longest matching suffix wins.
    let suffix = hosts
        .iter()
        .flat_map(|vh| vh.domains.iter().map(move |d| (vh, d)))
        .filter_map(|(vh, d)| {
            let suffix = d.strip_prefix('*')?;
            (!suffix.is_empty() && host.len() > suffix.len() && host.ends_with(suffix))
                .then_some((vh, suffix.len()))
        })
        .max_by_key(|(_, len)| *len);
    if let Some((vh, _)) = suffix {
        return Some(vh);
    }
    let prefix = hosts
        .iter()
        .flat_map(|vh| vh.domains.iter().map(move |d| (vh, d)))
        .filter_map(|(vh, d)| {
            let prefix = d.strip_suffix('*')?;
            (!prefix.is_empty() && host.len() > prefix.len() && host.starts_with(prefix))
                .then_some((vh, prefix.len()))
        })
        .max_by_key(|(_, len)| *len);
    if let Some((vh, _)) = prefix {
        return Some(vh);
    }
    hosts.iter().find(|vh| vh.domains.iter().any(|d| d == "*"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RouteAction, RouteTarget};

    fn route(name: &str, matcher: RouteMatch) -> Route {
        Route {
            name: Some(name.to_string()),
            request_headers_to_remove: Vec::new(),
            matcher,
            headers: Vec::new(),
            action: RouteAction {
                target: RouteTarget::Cluster(name.to_string()),
                timeout: None,
                connect_terminate: false,
            },
        }
    }

    fn vhost(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
        VirtualHost {
            name: name.to_string(),
            request_headers_to_remove: Vec::new(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes,
        }
    }

    fn table() -> RouteConfig {
        RouteConfig {
            name: Some("table".into()),
            virtual_hosts: vec![
                vhost(
                    "any",
                    &["*"],
                    vec![
                        route("connect", RouteMatch::Connect),
                        route("all", RouteMatch::Prefix("/".into())),
                    ],
                ),
                vhost(
                    "exact",
                    &["api.example.com"],
                    vec![
                        route("health", RouteMatch::Path("/health".into())),
                        route("api", RouteMatch::Prefix("/v1".into())),
                    ],
                ),
                vhost(
                    "wild",
                    &["*.example.com"],
                    vec![route("wild", RouteMatch::Prefix("/".into()))],
                ),
                vhost(
                    "wilder",
                    &["*.deep.example.com"],
                    vec![route("wilder", RouteMatch::Prefix("/".into()))],
                ),
                vhost(
                    "prefix",
                    &["internal.*"],
                    vec![route("prefix", RouteMatch::Prefix("/".into()))],
                ),
            ],
        }
    }

    fn pick(authority: &str, path: Option<&str>, connect: bool) -> Option<(String, String)> {
        let table = table();
        let headers = HeaderMap::from_pairs([("x-forwarded-proto", "http")]);
        select(&table, Some(authority), path, connect, &headers).map(|s| {
            (
                s.virtual_host.name.clone(),
                s.route.name.clone().unwrap_or_default(),
            )
        })
    }

    #[test]
    fn virtual_hosts_in_envoy_order() {
        let p = |a: &str, path: &str| pick(a, Some(path), false);
        assert_eq!(
            p("api.example.com", "/health"),
            Some(("exact".into(), "health".into()))
        );
        assert_eq!(
            p("API.Example.com", "/health?x=1"),
            Some(("exact".into(), "health".into()))
        );
        // The port takes part in the match: only `*` covers it.
        assert_eq!(
            p("api.example.com:8080", "/health"),
            Some(("any".into(), "all".into()))
        );
        assert_eq!(
            p("api.example.com", "/v1/x"),
            Some(("exact".into(), "api".into()))
        );
        assert_eq!(
            p("api.example.com", "/other"),
            None,
            "no route in the matched host: no fallback"
        );
        assert_eq!(
            p("www.example.com", "/"),
            Some(("wild".into(), "wild".into()))
        );
        assert_eq!(
            p("a.deep.example.com", "/"),
            Some(("wilder".into(), "wilder".into()))
        );
        assert_eq!(
            p("example.com", "/"),
            Some(("any".into(), "all".into())),
            "the apex is not under *.example.com"
        );
        assert_eq!(
            p("internal.corp", "/"),
            Some(("prefix".into(), "prefix".into()))
        );
        assert_eq!(
            p("elsewhere.test", "/x"),
            Some(("any".into(), "all".into()))
        );
    }

    #[test]
    fn connect_only_matches_connect_routes() {
        assert_eq!(
            pick("elsewhere.test:443", None, true),
            Some(("any".into(), "connect".into()))
        );
        assert_eq!(
            pick("www.example.com", None, true),
            None,
            "that host's routes take no CONNECT"
        );
        assert_eq!(
            pick("elsewhere.test", Some("/"), false),
            Some(("any".into(), "all".into()))
        );
    }

    fn header_route(name: &str, rule: HeaderRule, invert: bool) -> Route {
        let mut r = route(name, RouteMatch::Prefix("/".into()));
        r.headers = vec![HeaderMatcher {
            name: "x-dfp-cluster".into(),
            rule,
            invert,
        }];
        r
    }

    fn pick_by_headers(routes: Vec<Route>, headers: &[(&str, &str)]) -> Option<String> {
        let table = RouteConfig {
            name: None,
            virtual_hosts: vec![vhost("any", &["*"], routes)],
        };
        let headers = HeaderMap::from_pairs(
            headers
                .iter()
                .copied()
                .chain([("x-forwarded-proto", "http")]),
        );
        select(&table, Some("a.test"), Some("/"), false, &headers)
            .and_then(|s| s.route.name.clone())
    }

    #[test]
    fn header_matchers_pick_the_first_fitting_route() {
        let routes = || {
            vec![
                header_route("present", HeaderRule::Present(true), false),
                route("fallback", RouteMatch::Prefix("/".into())),
            ]
        };
        assert_eq!(
            pick_by_headers(routes(), &[("x-dfp-cluster", "dfp_tls")]).as_deref(),
            Some("present")
        );
        assert_eq!(
            pick_by_headers(routes(), &[("x-dfp-cluster", "")]).as_deref(),
            Some("present"),
            "an empty value is still present"
        );
        assert_eq!(pick_by_headers(routes(), &[]).as_deref(), Some("fallback"));

        let absent = || vec![header_route("absent", HeaderRule::Present(false), false)];
        assert_eq!(pick_by_headers(absent(), &[]).as_deref(), Some("absent"));
        assert_eq!(pick_by_headers(absent(), &[("x-dfp-cluster", "x")]), None);
        let inverted = || vec![header_route("inverted", HeaderRule::Present(true), true)];
        assert_eq!(
            pick_by_headers(inverted(), &[]).as_deref(),
            Some("inverted")
        );
        assert_eq!(pick_by_headers(inverted(), &[("x-dfp-cluster", "x")]), None);
    }

    #[test]
    fn exact_header_match_joins_repeated_values() {
        let exact = |value: &str, ignore_case| {
            vec![header_route(
                "exact",
                HeaderRule::Exact {
                    value: value.into(),
                    ignore_case,
                },
                false,
            )]
        };
        let one = [("x-dfp-cluster", "dfp_TLS")];
        assert_eq!(
            pick_by_headers(exact("dfp_TLS", false), &one).as_deref(),
            Some("exact")
        );
        assert_eq!(pick_by_headers(exact("dfp_tls", false), &one), None);
        assert_eq!(
            pick_by_headers(exact("dfp_tls", true), &one).as_deref(),
            Some("exact")
        );
        assert_eq!(
            pick_by_headers(exact("", false), &[]),
            None,
            "absent never matches"
        );
        let two = [("x-dfp-cluster", "a"), ("x-dfp-cluster", "b")];
        assert_eq!(
            pick_by_headers(exact("a,b", false), &two).as_deref(),
            Some("exact")
        );
        assert_eq!(pick_by_headers(exact("a", false), &two), None);
    }
}
