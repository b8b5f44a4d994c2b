//! The load generator: a fixed number of HTTP/1.1 keep-alive connections, each sending one
//! request at a time (closed loop), over loopback.
//!
//! Requests are pre-rendered bytes and responses are parsed with `httparse` only as far as framing
//! needs (status, `Content-Length` or chunked, `Connection: close`), so the generator spends as
//! little of the shared machine as it can. Each connection first sweeps its share of the
//! destination hosts (so every host is resolved and connected before the clock starts), then picks
//! hosts at random. Latency (send to last body byte) goes into a histogram per connection, merged
//! at the end. Being closed-loop, latencies do not include queueing a fixed-rate client would see.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::configs;

/// A request (or connect) taking longer than this counts as an error and its connection is dropped.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest latency the histogram holds (µs); anything slower is clamped.
const MAX_LATENCY_US: u64 = 60_000_000;
const MAX_HEADERS: usize = 48;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no complete response within {REQUEST_TIMEOUT:?}")]
    Timeout,
    #[error("connection closed after {0} bytes of a response")]
    Closed(usize),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("histogram: {0}")]
    Histogram(String),
}

/// The request for destination host `i` of the bench zone, with the upstream's port.
pub fn request_bytes(host: &str, port: u16) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: dfp-bench\r\nAccept: */*\r\n\r\n")
        .into_bytes()
}

/// One request per destination host `h0.bench.test` … `h<hosts-1>.bench.test`.
pub fn requests_for_hosts(hosts: u32, port: u16) -> Vec<Vec<u8>> {
    (0..hosts.max(1))
        .map(|i| request_bytes(&configs::host_name(i), port))
        .collect()
}

struct Shared {
    target: SocketAddr,
    requests: Vec<Vec<u8>>,
    connections: usize,
    phase: AtomicU8,
    /// Connections that have sent one request to each host of their share.
    swept: AtomicUsize,
}

/// What one connection saw.
struct ConnStats {
    requests: u64,
    non_2xx: u64,
    errors: u64,
    warmup_requests: u64,
    warmup_failures: u64,
    first_failure: Option<String>,
    latency_us: Histogram<u64>,
}

/// What the measured window saw, all connections together.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Responses completed inside the measured window (any status).
    pub requests: u64,
    pub non_2xx: u64,
    /// Connect failures, timeouts, malformed or truncated responses inside the window.
    pub errors: u64,
    pub warmup_requests: u64,
    /// Errors and non-2xx answers during the warm-up.
    pub warmup_failures: u64,
    pub first_failure: Option<String>,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub latency_us: Histogram<u64>,
}

impl LoadResult {
    pub fn requests_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at quantile `q` (0..=1) in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// A running load: warm-up first; [`Generator::begin_measure`] and [`Generator::end_measure`]
/// bound the window that counts.
pub struct Generator {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<ConnStats>>,
    window: (Option<Instant>, Option<Instant>),
}

impl Generator {
    /// Opens `connections` connections to `target` on `runtime` and starts sending.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        target: SocketAddr,
        requests: Vec<Vec<u8>>,
        connections: usize,
    ) -> Result<Generator, LoadError> {
        if requests.is_empty() {
            return Err(LoadError::Malformed("no requests to send".into()));
        }
        let connections = connections.max(1);
        let shared = Arc::new(Shared {
            target,
            requests,
            connections,
            phase: AtomicU8::new(WARMUP),
            swept: AtomicUsize::new(0),
        });
        let mut tasks = Vec::with_capacity(connections);
        for id in 0..connections {
            let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .map_err(|e| LoadError::Histogram(e.to_string()))?;
            tasks.push(runtime.spawn(connection(id, shared.clone(), histogram)));
        }
        Ok(Generator {
            shared,
            tasks,
            window: (None, None),
        })
    }

    /// Whether every connection has been through its share of the hosts.
    pub fn swept(&self) -> bool {
        self.shared.swept.load(Ordering::Acquire) >= self.shared.connections
    }

    pub fn begin_measure(&mut self) {
        self.shared.phase.store(MEASURE, Ordering::Release);
        self.window.0 = Some(Instant::now());
    }

    pub fn end_measure(&mut self) {
        self.shared.phase.store(STOP, Ordering::Release);
        self.window.1 = Some(Instant::now());
    }

    /// Waits for every connection to finish its request in flight and merges what they saw.
    pub async fn finish(mut self) -> Result<LoadResult, LoadError> {
        if self.window.1.is_none() {
            self.end_measure();
        }
        let elapsed = match self.window {
            (Some(start), Some(end)) => end.saturating_duration_since(start),
            _ => Duration::ZERO,
        };
        let mut result = LoadResult {
            requests: 0,
            non_2xx: 0,
            errors: 0,
            warmup_requests: 0,
            warmup_failures: 0,
            first_failure: None,
            elapsed,
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .map_err(|e| LoadError::Histogram(e.to_string()))?,
        };
        for task in self.tasks.drain(..) {
            let stats = task
                .await
                .map_err(|e| LoadError::Malformed(format!("a connection task failed: {e}")))?;
            result.requests += stats.requests;
            result.non_2xx += stats.non_2xx;
            result.errors += stats.errors;
            result.warmup_requests += stats.warmup_requests;
            result.warmup_failures += stats.warmup_failures;
            if result.first_failure.is_none() {
                result.first_failure = stats.first_failure;
            }
            result
                .latency_us
                .add(&stats.latency_us)
                .map_err(|e| LoadError::Histogram(e.to_string()))?;
        }
        Ok(result)
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.shared.phase.store(STOP, Ordering::Release);
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn connection(id: usize, shared: Arc<Shared>, latency_us: Histogram<u64>) -> ConnStats {
    let mut stats = ConnStats {
        requests: 0,
        non_2xx: 0,
        errors: 0,
        warmup_requests: 0,
        warmup_failures: 0,
        first_failure: None,
        latency_us,
    };
    let hosts = shared.requests.len();
    let mut next_sweep = id;
    let mut swept = false;
    let mut rng = XorShift::new(id as u64);
    let mut conn: Option<Conn> = None;
    loop {
        let phase = shared.phase.load(Ordering::Acquire);
        if phase == STOP {
            break;
        }
        let host = if next_sweep < hosts {
            next_sweep += shared.connections;
            next_sweep - shared.connections
        } else {
            if !swept {
                swept = true;
                shared.swept.fetch_add(1, Ordering::AcqRel);
            }
            rng.below(hosts)
        };
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut conn, &shared, host)).await;
        let latency = started.elapsed();
        let outcome = outcome.unwrap_or(Err(LoadError::Timeout));
        let measured = phase == MEASURE && shared.phase.load(Ordering::Acquire) == MEASURE;
        match outcome {
            Ok(status) => {
                let ok = (200..300).contains(&status);
                if measured {
                    stats.requests += 1;
                    stats.non_2xx += u64::from(!ok);
                    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                    stats
                        .latency_us
                        .saturating_record(us.clamp(1, MAX_LATENCY_US));
                } else {
                    stats.warmup_requests += 1;
                    stats.warmup_failures += u64::from(!ok);
                }
                if !ok && stats.first_failure.is_none() {
                    stats.first_failure = Some(format!("status {status}"));
                }
            }
            Err(error) => {
                if measured {
                    stats.errors += 1;
                } else {
                    stats.warmup_failures += 1;
                }
                if stats.first_failure.is_none() {
                    stats.first_failure = Some(error.to_string());
                }
                conn = None;
                // Do not spin on a proxy that refuses connections.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    if !swept {
        shared.swept.fetch_add(1, Ordering::AcqRel);
    }
    stats
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Sends request `host` on the connection (opening it first if needed); returns the status.
async fn exchange(conn: &mut Option<Conn>, shared: &Shared, host: usize) -> Result<u16, LoadError> {
    let request = shared
        .requests
        .get(host)
        .ok_or_else(|| LoadError::Malformed(format!("no request for host {host}")))?;
    let current = match conn {
        Some(c) => c,
        None => {
            let stream = TcpStream::connect(shared.target)
                .await
                .map_err(|e| LoadError::Connect(shared.target, e))?;
            stream.set_nodelay(true)?;
            conn.insert(Conn {
                stream,
                buf: Vec::with_capacity(16 * 1024),
            })
        }
    };
    current.stream.write_all(request).await?;
    current.buf.clear();
    loop {
        if current.buf.capacity() - current.buf.len() < 4096 {
            current.buf.reserve(16 * 1024);
        }
        let read = current.stream.read_buf(&mut current.buf).await?;
        if read == 0 {
            let seen = current.buf.len();
            *conn = None;
            return Err(LoadError::Closed(seen));
        }
        if let Some(response) = parse(&current.buf)? {
            if response.close {
                *conn = None;
            }
            return Ok(response.status);
        }
    }
}

/// A complete response's framing.
#[derive(Debug, PartialEq, Eq)]
pub struct Framed {
    pub status: u16,
    /// The server will close the connection after this response.
    pub close: bool,
    /// Bytes the response takes in the buffer (head and body).
    pub len: usize,
}

/// `Ok(None)`: the buffer holds only part of a response so far.
pub fn parse(buf: &[u8]) -> Result<Option<Framed>, LoadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(LoadError::Malformed(e.to_string())),
    };
    let status = response
        .code
        .ok_or_else(|| LoadError::Malformed("no status".into()))?;
    if (100..200).contains(&status) {
        return Err(LoadError::Malformed(format!(
            "interim response {status} (not sent for these requests)"
        )));
    }
    let mut content_length = None;
    let mut chunked = false;
    let mut close = response.version == Some(0);
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("");
        if header.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse::<usize>()
                .map_err(|_| LoadError::Malformed(format!("content-length {value:?}")))?;
            content_length = Some(n);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            close = value.contains("close") || (close && !value.contains("keep-alive"));
        }
    }
    let body = if status == 204 || status == 304 {
        Some(0)
    } else if chunked {
        chunked_len(&buf[head..])?
    } else if let Some(n) = content_length {
        (buf.len() - head >= n).then_some(n)
    } else {
        return Err(LoadError::Malformed(
            "a response without length (read-to-close is not supported)".into(),
        ));
    };
    Ok(body.map(|body| Framed {
        status,
        close,
        len: head + body,
    }))
}

/// The length of a complete chunked body at the start of `data`, trailers included.
fn chunked_len(data: &[u8]) -> Result<Option<usize>, LoadError> {
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&data[at..]) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[at..at + line_end])
            .map_err(|_| LoadError::Malformed("chunk size is not text".into()))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| LoadError::Malformed(format!("chunk size {size_text:?}")))?;
        at += line_end + 2;
        if size == 0 {
            // Trailers, each ending in CRLF, then an empty line.
            loop {
                let Some(end) = find_crlf(&data[at..]) else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if data.len() < at + size + 2 {
            return Ok(None);
        }
        if &data[at + size..at + size + 2] != b"\r\n" {
            return Err(LoadError::Malformed("chunk without CRLF".into()));
        }
        at += size + 2;
    }
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

/// xorshift64*: cheap, deterministic per connection; quality is irrelevant here.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_framing() {
        let full = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(
            parse(full).ok().flatten(),
            Some(Framed {
                status: 200,
                close: false,
                len: full.len()
            })
        );
        assert!(matches!(parse(&full[..full.len() - 1]), Ok(None)));
        assert!(matches!(parse(b"HTTP/1.1 200 OK\r\ncontent-le"), Ok(None)));
    }

    #[test]
    fn chunked_framing_with_trailers() {
        let full = b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nt: 1\r\n\r\n";
        let framed = parse(full).ok().flatten();
        assert_eq!(
            framed,
            Some(Framed {
                status: 403,
                close: true,
                len: full.len()
            })
        );
        for cut in [full.len() - 1, full.len() - 5, full.len() - 12] {
            assert!(matches!(parse(&full[..cut]), Ok(None)), "cut at {cut}");
        }
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let closing = parse(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(matches!(closing, Ok(Some(Framed { close: true, .. }))));
        let kept = parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 0\r\n\r\n");
        assert!(matches!(kept, Ok(Some(Framed { close: false, .. }))));
    }

    #[test]
    fn unframed_responses_are_refused() {
        assert!(parse(b"HTTP/1.1 200 OK\r\n\r\nabc").is_err());
        assert!(parse(b"HTTP/1.1 100 Continue\r\n\r\n").is_err());
    }

    #[test]
    fn random_hosts_stay_in_range_and_spread() {
        let mut rng = XorShift::new(3);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[rng.below(10)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }
}
