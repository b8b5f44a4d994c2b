//! A case's expectations checked against one proxy's observation (the e2e semantics: see
//! `cases::Expect`), plus the fidelity extension `truncated`.

use super::model::FidelityCase;
use super::observe::Observation;
use crate::cases::{self, Case};

/// Every expectation `obs` fails, as messages (empty: all hold).
pub fn check(fcase: &FidelityCase, case: &Case, obs: &Observation) -> Vec<String> {
    let mut failures = Vec::new();
    let expect = &case.expect;
    let Some(response) = &obs.response else {
        failures.push(format!(
            "no response: {}",
            obs.error.as_deref().unwrap_or("(no error recorded)")
        ));
        return failures;
    };
    if let Err(e) = cases::check_response(case, response) {
        failures.push(format!("{e:#}"));
    }
    match (&obs.truncated, fcase.truncated) {
        (Some(why), false) => failures.push(format!("the response body broke off: {why}")),
        (None, true) => failures.push("the response body arrived whole, expected it cut".into()),
        _ => {}
    }
    if let Err(e) = cases::check_seen(expect.upstream.as_ref(), &obs.seen) {
        failures.push(format!("{e:#}"));
    }
    if expect.details.is_some() || expect.details_prefix.is_some() || expect.cluster.is_some() {
        match &obs.log {
            None => failures.push("no access log line".into()),
            Some(line) => {
                // `<code> <cluster> <details>`; only the details may contain spaces.
                let mut fields = line.splitn(3, ' ').skip(1);
                let cluster = fields.next().unwrap_or_default();
                let details = fields.next().unwrap_or_default();
                if let Some(want) = &expect.cluster {
                    if cluster != want {
                        failures.push(format!("cluster {cluster:?}, expected {want:?}"));
                    }
                }
                if let Some(want) = &expect.details {
                    if details != want {
                        failures.push(format!(
                            "response code details {details:?}, expected {want:?}"
                        ));
                    }
                }
                if let Some(prefix) = &expect.details_prefix {
                    if !details.starts_with(prefix.as_str()) {
                        failures.push(format!(
                            "response code details {details:?}, expected to start with {prefix:?}"
                        ));
                    }
                }
            }
        }
    }
    if expect.tunnel_echo {
        let payload = case.request.tunnel.as_deref().unwrap_or("ping\n");
        match &obs.tunnel {
            Some(Ok(echoed)) if echoed == payload => {}
            Some(Ok(echoed)) => {
                failures.push(format!("tunnel echoed {echoed:?}, sent {payload:?}"))
            }
            Some(Err(why)) => failures.push(format!("tunnel: {why}")),
            None => failures.push("no tunnel".into()),
        }
    }
    if obs.counters != expect.counters {
        failures.push(format!(
            "counter deltas {:?}, expected {:?}",
            obs.counters, expect.counters
        ));
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Response;
    use crate::upstream::Seen;

    fn fcase(yaml: &str) -> FidelityCase {
        serde_yaml_ng::from_str(yaml).expect("case")
    }

    fn obs(status: u16, log: &str, seen: Vec<Seen>) -> Observation {
        Observation {
            response: Some(Response {
                status,
                reason: String::new(),
                headers: vec![("x-dfp-denied".into(), "host_denied".into())],
                body: br#"{"reason":"host_denied"}"#.to_vec(),
            }),
            log: Some(log.into()),
            seen,
            ..Observation::default()
        }
    }

    #[test]
    fn passes_when_everything_holds_and_names_each_failure() {
        let f = fcase(
            "name: n\nvariant: v\nrequest: {}\nexpect: { status: 403, cluster: '-', details: dfp_denied.host_denied, json: { reason: host_denied }, headers: { x-dfp-denied: host_denied } }\n",
        );
        let case = f.tagged("~E");
        assert!(check(&f, &case, &obs(403, "403 - dfp_denied.host_denied", vec![])).is_empty());

        let failures = check(&f, &case, &obs(200, "200 dfp_plain via_upstream", vec![]));
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures[0].contains("status 200"));
        assert!(failures[1].contains("cluster"));
        assert!(failures[2].contains("details"));
    }

    #[test]
    fn an_unexpected_upstream_request_fails() {
        let f = fcase("name: n\nvariant: v\nrequest: {}\nexpect: { status: 403 }\n");
        let seen = Seen {
            server: "plain".into(),
            tls: false,
            sni: None,
            method: "GET".into(),
            path: "/".into(),
            authority: None,
            headers: vec![],
            body: String::new(),
            trailers: vec![],
        };
        let failures = check(&f, &f.tagged("~E"), &obs(403, "403 - x", vec![seen]));
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("no upstream may see"));
    }

    #[test]
    fn truncation_must_be_expected() {
        let f = fcase("name: n\nvariant: v\nrequest: {}\nexpect: { status: 403 }\n");
        let mut o = obs(403, "403 - x", vec![]);
        o.truncated = Some("body ended".into());
        assert_eq!(check(&f, &f.tagged("~E"), &o).len(), 1);
        let mut g = f.clone();
        g.truncated = true;
        assert!(check(&g, &g.tagged("~E"), &o).is_empty());
    }
}
