//! The end-to-end behaviour as data: filter-config variants and request/expectation cases,
//! loaded from `tests/cases/` (`variants.yaml`, `requests/*.yaml`) and run against any [`Proxy`](crate::proxy::Proxy).
//!
//! Case files are YAML lists of [`Case`]. Before parsing, `{{NAME}}` placeholders are filled
//! from [`World::vars`](crate::world::World::vars) (upstream ports and such). Every request
//! carries `x-case-id: <variant>/<case>`, so upstreams can tell which case reached them and a
//! denied case can be checked to have reached none.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, Request, Response};
use crate::proxy;
use crate::template::{self, Vars};
use crate::upstream::{Seen, CASE_ID_HEADER};
use crate::world::World;

/// A pair of filter configurations (wasm plugin `configuration`) a proxy is started with.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    #[serde(default)]
    pub description: String,
    /// The downstream (listener) filter's config.
    pub downstream: Value,
    /// The upstream (cluster) filter's config.
    pub upstream: Value,
    /// The resolved-address stage (upstream RBAC on the DFP clusters). In `variants.yaml`, its
    /// address policy in the filter's syntax (`{"addresses": ...}`); `suite::load` turns it into
    /// the RBAC rules (see `rbac`). Absent: the stage denies nothing.
    #[serde(default)]
    pub resolved: Option<Value>,
}

/// Loads `variants.yaml`: a map from variant name to [`Variant`].
pub fn load_variants(path: &Path, vars: &Vars) -> anyhow::Result<BTreeMap<String, Variant>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let text = template::render(&text, vars)?;
    serde_yaml_ng::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// One request and what must come of it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// Which [`Variant`] the proxy runs with.
    pub variant: String,
    #[serde(default)]
    pub description: String,
    pub request: CaseRequest,
    pub expect: Expect,
}

/// How the request names its destination.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// `GET /path` with `Host: <host>`.
    #[default]
    Origin,
    /// `GET http://<host>/path` (and `Host: <host>` unless `omit_host`).
    Absolute,
    /// `CONNECT <host>` with `Host: <host>`.
    Connect,
    /// The bytes in `raw`, verbatim.
    Raw,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default)]
    pub form: Form,
    /// The destination as the client writes it (Host value, URI authority, CONNECT target).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_path")]
    pub path: String,
    /// Send no `Host` header (origin and absolute forms).
    #[serde(default)]
    pub omit_host: bool,
    /// Extra headers, in order, as `[name, value]` pairs.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: Option<String>,
    /// A generated body of this many bytes ([`generated_body`]), instead of `body`.
    #[serde(default)]
    pub body_bytes: Option<usize>,
    /// The complete request for `form: raw`; `{{CASE_ID}}` is replaced by the case id.
    #[serde(default)]
    pub raw: Option<String>,
    /// CONNECT only: bytes to send through the tunnel once it is up.
    #[serde(default)]
    pub tunnel: Option<String>,
    /// Wait this many milliseconds before sending: for state a plugin builds on its own timers.
    #[serde(default)]
    pub after_ms: u64,
}

impl CaseRequest {
    /// Sleeps for `after_ms`, if any.
    pub async fn wait_before_sending(&self) {
        if self.after_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.after_ms)).await;
        }
    }
}

fn default_method() -> String {
    "GET".into()
}

fn default_path() -> String {
    "/".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub status: u16,
    /// Response headers: a string must equal the value; `null` means the header is absent.
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    /// Fields the JSON body must have (subset match).
    #[serde(default)]
    pub json: Option<serde_json::Map<String, Value>>,
    /// The whole body, exactly (text).
    #[serde(default)]
    pub body: Option<String>,
    /// The body's length in bytes (for large bodies).
    #[serde(default)]
    pub body_bytes: Option<usize>,
    /// The request some upstream must have received, once. Absent: no upstream may have
    /// received it.
    #[serde(default)]
    pub upstream: Option<ExpectUpstream>,
    /// The response code details the proxy logs for the request (`%RESPONSE_CODE_DETAILS%`).
    #[serde(default)]
    pub details: Option<String>,
    /// Like `details`, for details whose tail carries resolver or TLS library text.
    #[serde(default)]
    pub details_prefix: Option<String>,
    /// The cluster the route picked (`%UPSTREAM_CLUSTER%`; `-` when none was).
    #[serde(default)]
    pub cluster: Option<String>,
    /// CONNECT: the tunnel bytes must come back (from the TCP echo).
    #[serde(default)]
    pub tunnel_echo: bool,
    /// Counter deltas (admin `/stats`) this request must cause, exactly. Cases with counters
    /// run one at a time so the deltas are theirs alone.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectUpstream {
    /// The echo server's name: `plain`, `tls` or `forbidden`.
    pub server: String,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub sni: Option<String>,
    /// Headers the upstream must have seen with these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers the upstream must not have seen.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// The request body the upstream received, exactly (text).
    #[serde(default)]
    pub body: Option<String>,
    /// The length of the request body the upstream received.
    #[serde(default)]
    pub body_bytes: Option<usize>,
}

/// Loads every case of one YAML file, placeholders filled from `vars`.
pub fn load_cases(path: &Path, vars: &Vars) -> anyhow::Result<Vec<Case>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    // {{CASE_ID}} in raw requests is filled per case when the request is sent.
    let mut vars = vars.clone();
    vars.insert("CASE_ID".into(), "{{CASE_ID}}".into());
    let text = template::render(&text, &vars)?;
    let cases: Vec<Case> =
        serde_yaml_ng::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut names = std::collections::BTreeSet::new();
    for case in &cases {
        anyhow::ensure!(
            names.insert((&case.variant, &case.name)),
            "{}: case {}/{} appears twice",
            path.display(),
            case.variant,
            case.name
        );
    }
    Ok(cases)
}

/// Loads every `*.yaml` case file in `dir`.
pub fn load_case_dir(dir: &Path, vars: &Vars) -> anyhow::Result<Vec<Case>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        cases.extend(load_cases(&file, vars)?);
    }
    Ok(cases)
}

impl Case {
    /// The id sent in `x-case-id`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.variant, self.name)
    }
}

/// Where a case runs: the proxy's listener and admin addresses, and the fixtures.
#[derive(Clone)]
pub struct Target {
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    /// The proxy's access log (`<case id> <status> <cluster> <details>` lines), if any.
    pub access_log: Option<PathBuf>,
    pub world: Arc<World>,
}

/// Runs `cases`: those without counter expectations concurrently (at most `parallel` at a
/// time), then the others one by one. Returns one message per failed case.
pub async fn run_all(target: &Target, cases: &[Case], parallel: usize) -> Vec<String> {
    let (serial, concurrent): (Vec<&Case>, Vec<&Case>) =
        cases.iter().partition(|c| !c.expect.counters.is_empty());
    let mut failures = Vec::new();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for case in concurrent {
        let case = case.clone();
        let target = target.clone();
        let semaphore = semaphore.clone();
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let result = run_case(&target, &case).await;
            (case.id(), result)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((id, Err(e))) => failures.push(format!("{id}: {e:#}")),
            Err(e) => failures.push(format!("a case task panicked: {e}")),
        }
    }
    for case in serial {
        if let Err(e) = run_case(target, case).await {
            failures.push(format!("{}: {e:#}", case.id()));
        }
    }
    failures.sort();
    failures
}

/// Runs one case and checks every expectation.
pub async fn run_case(target: &Target, case: &Case) -> anyhow::Result<()> {
    let before = if case.expect.counters.is_empty() {
        BTreeMap::new()
    } else {
        read_counters(target.admin, &case.expect.counters).await?
    };

    case.request.wait_before_sending().await;
    let response = match case.request.form {
        Form::Connect => run_connect(target.listener, case).await?,
        _ => {
            let raw = request_bytes(case)?;
            let head_only = case.request.method.eq_ignore_ascii_case("HEAD");
            client::exchange(target.listener, &raw, head_only).await?
        }
    };
    check_response(case, &response)?;
    check_upstreams(target, case)?;
    let expect = &case.expect;
    if expect.details.is_some() || expect.details_prefix.is_some() || expect.cluster.is_some() {
        check_access_log(target, case).await?;
    }

    if !case.expect.counters.is_empty() {
        check_counters(target.admin, &case.expect.counters, &before).await?;
    }
    Ok(())
}

/// The request as bytes, for every form but CONNECT.
pub fn request_bytes(case: &Case) -> anyhow::Result<Vec<u8>> {
    let r = &case.request;
    let id = case.id();
    if r.form == Form::Raw {
        let raw = r
            .raw
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("form raw needs `raw`"))?;
        return Ok(raw.replace("{{CASE_ID}}", &id).into_bytes());
    }
    let host = r.host.clone().unwrap_or_default();
    let target = match r.form {
        Form::Absolute => format!("http://{host}{}", r.path),
        _ => r.path.clone(),
    };
    let mut headers = Vec::new();
    if !r.omit_host {
        headers.push(("host".to_string(), host));
    }
    headers.extend(r.headers.iter().cloned());
    headers.push((CASE_ID_HEADER.to_string(), id));
    headers.push(("connection".to_string(), "close".to_string()));
    Ok(Request {
        method: r.method.clone(),
        target,
        headers,
        body: match r.body_bytes {
            Some(len) => generated_body(len),
            None => r.body.clone().unwrap_or_default().into_bytes(),
        },
    }
    .to_bytes())
}

/// `len` bytes of `abc...xyzabc...`: large bodies that are easy to check and printable.
pub fn generated_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

async fn run_connect(listener: SocketAddr, case: &Case) -> anyhow::Result<Response> {
    let authority = case
        .request
        .host
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("CONNECT needs `host`"))?;
    let mut headers = case.request.headers.clone();
    headers.push((CASE_ID_HEADER.to_string(), case.id()));
    let mut tunnel = client::connect(listener, authority, &headers).await?;
    if case.expect.tunnel_echo {
        anyhow::ensure!(
            (200..300).contains(&tunnel.response.status),
            "CONNECT answered {} ({}), expected a tunnel",
            tunnel.response.status,
            tunnel.response.body_text()
        );
        let payload = case
            .request
            .tunnel
            .clone()
            .unwrap_or_else(|| "ping\n".into());
        tunnel.stream.write_all(payload.as_bytes()).await?;
        let mut echoed = tunnel.early.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while echoed.len() < payload.len() {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, tunnel.stream.read(&mut chunk))
                .await
                .map_err(|_| anyhow::anyhow!("tunnel: no echo within 10 s"))??;
            anyhow::ensure!(n > 0, "tunnel closed after {} echoed bytes", echoed.len());
            echoed.extend_from_slice(&chunk[..n]);
        }
        anyhow::ensure!(
            echoed == payload.as_bytes(),
            "tunnel echoed {:?}, sent {payload:?}",
            String::from_utf8_lossy(&echoed)
        );
    }
    Ok(tunnel.response)
}

/// Checks the response against `status`, `headers`, `json`, `body` and `body_bytes`.
pub fn check_response(case: &Case, response: &Response) -> anyhow::Result<()> {
    let expect = &case.expect;
    anyhow::ensure!(
        response.status == expect.status,
        "status {} (expected {}); headers {:?}; body {}",
        response.status,
        expect.status,
        response.headers,
        response.body_text()
    );
    for (name, want) in &expect.headers {
        let got = response.header(name);
        anyhow::ensure!(
            got == want.as_deref(),
            "response header {name}: {got:?} (expected {want:?})"
        );
    }
    if let Some(fields) = &expect.json {
        let body = response.json().ok_or_else(|| {
            anyhow::anyhow!("response body is not JSON: {:?}", response.body_text())
        })?;
        for (key, want) in fields {
            anyhow::ensure!(
                body.get(key) == Some(want),
                "JSON body field {key}: {:?} (expected {want}); body {body}",
                body.get(key)
            );
        }
    }
    if let Some(want) = &expect.body {
        anyhow::ensure!(
            response.body == want.as_bytes(),
            "body {:?} (expected {want:?})",
            response.body_text()
        );
    }
    if let Some(want) = expect.body_bytes {
        anyhow::ensure!(
            response.body.len() == want,
            "body of {} bytes (expected {want})",
            response.body.len()
        );
    }
    Ok(())
}

fn check_upstreams(target: &Target, case: &Case) -> anyhow::Result<()> {
    let id = case.id();
    let reached: Vec<_> = target
        .world
        .echoes()
        .iter()
        .flat_map(|s| s.seen_for_case(&id))
        .collect();
    check_seen(case.expect.upstream.as_ref(), &reached)
}

/// Checks what the upstreams received for a case (`reached`) against `want` (`None`: nothing
/// may have arrived anywhere).
pub fn check_seen(want: Option<&ExpectUpstream>, reached: &[Seen]) -> anyhow::Result<()> {
    let Some(want) = want else {
        anyhow::ensure!(
            reached.is_empty(),
            "no upstream may see this request, but {:?} did",
            reached.iter().map(|s| &s.server).collect::<Vec<_>>()
        );
        return Ok(());
    };
    anyhow::ensure!(
        reached.len() == 1,
        "expected exactly one upstream request, got {}: {reached:?}",
        reached.len()
    );
    let seen = &reached[0];
    anyhow::ensure!(
        seen.server == want.server,
        "reached upstream {:?}, expected {:?}",
        seen.server,
        want.server
    );
    let checks: [(&str, Option<&str>, Option<&str>); 4] = [
        (
            "authority",
            want.authority.as_deref(),
            seen.authority.as_deref(),
        ),
        ("path", want.path.as_deref(), Some(seen.path.as_str())),
        ("method", want.method.as_deref(), Some(seen.method.as_str())),
        ("sni", want.sni.as_deref(), seen.sni.as_deref()),
    ];
    for (what, want, got) in checks {
        if let Some(want) = want {
            anyhow::ensure!(
                got == Some(want),
                "upstream saw {what} {got:?}, expected {want:?}"
            );
        }
    }
    for (name, value) in &want.headers {
        anyhow::ensure!(
            seen.header(name) == Some(value.as_str()),
            "upstream saw header {name}: {:?}, expected {value:?}",
            seen.header(name)
        );
    }
    for name in &want.absent_headers {
        anyhow::ensure!(
            seen.header(name).is_none(),
            "upstream saw header {name}: {:?}, which must not reach it",
            seen.header(name)
        );
    }
    if let Some(body) = &want.body {
        anyhow::ensure!(
            &seen.body == body,
            "upstream saw body {:?}, expected {body:?}",
            seen.body
        );
    }
    if let Some(len) = want.body_bytes {
        anyhow::ensure!(
            seen.body.len() == len,
            "upstream saw a body of {} bytes, expected {len}",
            seen.body.len()
        );
    }
    Ok(())
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

async fn check_counters(
    admin: SocketAddr,
    want: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    // Counters may lag the response slightly; wait for them, but not forever.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = read_counters(admin, want).await?;
        let deltas: BTreeMap<_, _> = now
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.saturating_sub(before.get(k).copied().unwrap_or(0)),
                )
            })
            .collect();
        if &deltas == want {
            return Ok(());
        }
        let overshoot = deltas
            .iter()
            .any(|(k, d)| want.get(k).is_some_and(|w| d > w));
        if overshoot || tokio::time::Instant::now() > deadline {
            anyhow::bail!("counter deltas {deltas:?}, expected {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the case's access log line and compares its cluster and response code details.
async fn check_access_log(target: &Target, case: &Case) -> anyhow::Result<()> {
    let path = target
        .access_log
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("expects details, but the proxy has no access log"))?;
    let prefix = format!("{} ", case.id());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with(&prefix)) {
            // `<id> <status> <cluster> <details>`; only the details may contain spaces.
            let mut fields = line.splitn(4, ' ').skip(2);
            let cluster = fields.next().unwrap_or_default();
            let details = fields.next().unwrap_or_default();
            if let Some(want) = &case.expect.cluster {
                anyhow::ensure!(cluster == want, "cluster {cluster:?}, expected {want:?}");
            }
            if let Some(want) = &case.expect.details {
                anyhow::ensure!(
                    details == want,
                    "response code details {details:?}, expected {want:?}"
                );
            }
            if let Some(prefix) = &case.expect.details_prefix {
                anyhow::ensure!(
                    details.starts_with(prefix.as_str()),
                    "response code details {details:?}, expected to start with {prefix:?}"
                );
            }
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no access log line for the case in {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
