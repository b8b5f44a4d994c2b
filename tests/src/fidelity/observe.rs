//! Sends one case to one proxy and records everything observable about it: the response (head
//! and body, and whether the body broke off), what the upstreams received, the proxy's access
//! log line, the CONNECT tunnel's echo, and counter deltas.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::fixtures::Fixtures;
use crate::cases::{self, Case, Form};
use crate::client::{self, Response};
use crate::proxy;
use crate::upstream::{Seen, CASE_ID_HEADER};

/// How long to wait for a case's access log line before recording that there is none (Envoy
/// flushes its access log every 100 ms in the tests; host-sim writes at once).
const LOG_WAIT: Duration = Duration::from_secs(2);
/// How long counters may lag the response.
const COUNTER_WAIT: Duration = Duration::from_secs(5);

/// Where one proxy listens and logs.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    pub access_log: PathBuf,
}

/// Everything one proxy did with one case.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// Interim (1xx) responses before the final one.
    pub interim: Vec<Response>,
    /// The response, or why none could be read.
    pub response: Option<Response>,
    pub error: Option<String>,
    /// Why the response body is incomplete, when it is.
    pub truncated: Option<String>,
    /// The requests upstreams received for the case.
    pub seen: Vec<Seen>,
    /// The access log line after the case id: `<code> <cluster> <details>`.
    pub log: Option<String>,
    /// CONNECT: what came back through the tunnel, or why nothing did.
    pub tunnel: Option<Result<String, String>>,
    /// Deltas of the counters the case names.
    pub counters: BTreeMap<String, u64>,
}

/// Runs `case` (already tagged for this proxy, see
/// [`FidelityCase::tagged`](super::model::FidelityCase::tagged)) against `endpoint`.
pub async fn observe(endpoint: &Endpoint, fixtures: &Fixtures, case: &Case) -> Observation {
    let mut obs = Observation::default();
    let counted = !case.expect.counters.is_empty();
    let before = if counted {
        read_counters(endpoint.admin, &case.expect.counters)
            .await
            .unwrap_or_default()
    } else {
        BTreeMap::new()
    };

    case.request.wait_before_sending().await;
    match case.request.form {
        Form::Connect => connect(endpoint.listener, case, &mut obs).await,
        _ => match cases::request_bytes(case) {
            Ok(raw) => {
                let head_only = case.request.method.eq_ignore_ascii_case("HEAD");
                match client::exchange_streaming(endpoint.listener, raw, head_only).await {
                    Ok(received) => {
                        obs.interim = received.interim;
                        obs.response = Some(received.response);
                        obs.truncated = received.truncated;
                    }
                    Err(e) => obs.error = Some(error_class(&e)),
                }
            }
            Err(e) => obs.error = Some(format!("case error: {e:#}")),
        },
    }

    let id = case.id();
    obs.seen = fixtures.seen_for_case(&id);
    obs.log = access_log_line(&endpoint.access_log, &id).await;
    if counted {
        obs.counters = counter_deltas(endpoint.admin, &case.expect.counters, &before).await;
    }
    obs
}

/// Client errors by kind, without addresses or byte counts that would differ between runs.
fn error_class(e: &client::ClientError) -> String {
    match e {
        client::ClientError::Io { source, .. } => format!("i/o error: {}", source.kind()),
        client::ClientError::Timeout(_) => "no response in time".into(),
        client::ClientError::Truncated(0) => "connection closed without a response".into(),
        client::ClientError::Truncated(_) => "connection closed within the response head".into(),
        client::ClientError::Malformed(m) => format!("malformed response: {m}"),
    }
}

async fn connect(listener: SocketAddr, case: &Case, obs: &mut Observation) {
    let Some(authority) = case.request.host.as_deref() else {
        obs.error = Some("case error: CONNECT needs `host`".into());
        return;
    };
    let mut headers = case.request.headers.clone();
    headers.push((CASE_ID_HEADER.to_string(), case.id()));
    let mut tunnel = match client::connect(listener, authority, &headers).await {
        Ok(tunnel) => tunnel,
        Err(e) => {
            obs.error = Some(error_class(&e));
            return;
        }
    };
    let status = tunnel.response.status;
    obs.response = Some(tunnel.response.clone());
    if !(200..300).contains(&status) {
        return;
    }
    let payload = case
        .request
        .tunnel
        .clone()
        .unwrap_or_else(|| "ping\n".into());
    let result = async {
        tunnel
            .stream
            .write_all(payload.as_bytes())
            .await
            .map_err(|e| format!("write: {}", e.kind()))?;
        let mut echoed = tunnel.early.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while echoed.len() < payload.len() {
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout_at(deadline, tunnel.stream.read(&mut chunk))
                .await
                .map_err(|_| format!("no echo within 10 s ({} bytes)", echoed.len()))?
                .map_err(|e| format!("read: {}", e.kind()))?;
            if n == 0 {
                return Err(format!("tunnel closed after {} echoed bytes", echoed.len()));
            }
            echoed.extend_from_slice(&chunk[..n]);
        }
        Ok(String::from_utf8_lossy(&echoed).into_owned())
    }
    .await;
    obs.tunnel = Some(result);
}

/// Waits for the case's line in the access log; `None` if it never comes.
async fn access_log_line(path: &Path, id: &str) -> Option<String> {
    let prefix = format!("{id} ");
    let deadline = tokio::time::Instant::now() + LOG_WAIT;
    loop {
        let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with(&prefix)) {
            return Some(line[prefix.len()..].to_string());
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn read_counters(
    admin: SocketAddr,
    names: &BTreeMap<String, u64>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let stats = proxy::stats(admin).await?;
    Ok(names
        .keys()
        .map(|n| (n.clone(), stats.get(n).copied().unwrap_or(0)))
        .collect())
}

/// The counters' deltas once they reach the expected values (or when they stop short of them
/// for [`COUNTER_WAIT`], or overshoot).
async fn counter_deltas(
    admin: SocketAddr,
    want: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let deadline = tokio::time::Instant::now() + COUNTER_WAIT;
    loop {
        let now = read_counters(admin, want).await.unwrap_or_default();
        let deltas: BTreeMap<String, u64> = now
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.saturating_sub(before.get(k).copied().unwrap_or(0)),
                )
            })
            .collect();
        let overshoot = deltas
            .iter()
            .any(|(k, d)| want.get(k).is_some_and(|w| d > w));
        if &deltas == want || overshoot || tokio::time::Instant::now() > deadline {
            return deltas;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
