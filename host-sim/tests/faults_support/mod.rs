//! What the fault suites share: host-sim started in-process from YAML, a loopback upstream that
//! can misbehave on request, a raw HTTP/1.1 client that sends exactly the bytes given, and
//! admin stats.

#![allow(dead_code)]

pub mod bootstrap;
// Not every suite that includes this module uses both.
#[allow(unused_imports)]
pub use bootstrap::{bootstrap, wasm_filter};

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host_sim::config::Bootstrap;
use host_sim::proxy::{self, ProxyOptions, RunningProxy};

/// The fault guest (WAT): `x-fault: t|l|g|r` makes it trap, loop, grow memory, or trap in
/// the response; otherwise it adds `x-guest-saw: 1`.
pub const FAULT_GUEST: &str = include_str!("../faults_guest.wat");

pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A directory removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("host-sim-{tag}-"))
            .tempdir()
            .expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

/// How the loopback upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 with the request head as the body.
    Echo,
    /// Accepts and reads the request, then closes without answering.
    CloseEarly,
    /// Sends headers promising 1000 bytes, 10 of them, then resets the connection.
    ResetMidBody,
    /// Answers after this long.
    Slow(Duration),
}

/// A loopback HTTP/1.1 upstream on its own threads.
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Request heads received, in order (unless started with [`Upstream::start_quiet`]).
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    pub fn start(behaviour: Behaviour) -> Upstream {
        Self::start_with(behaviour, true)
    }

    /// An upstream that keeps no record of the requests (long runs measuring memory).
    pub fn start_quiet(behaviour: Behaviour) -> Upstream {
        Self::start_with(behaviour, false)
    }

    fn start_with(behaviour: Behaviour, record: bool) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let seen = Arc::new(Mutex::new(Vec::new()));
        {
            let (requests, behaviour, seen) = (requests.clone(), behaviour.clone(), seen.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (requests, behaviour, seen) =
                        (requests.clone(), behaviour.clone(), seen.clone());
                    std::thread::spawn(move || {
                        serve(stream, &requests, &behaviour, record.then_some(&*seen))
                    });
                }
            });
        }
        Upstream {
            addr,
            requests,
            behaviour,
            seen,
        }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap_or_else(|e| e.into_inner()) = behaviour;
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve(
    mut stream: TcpStream,
    requests: &AtomicUsize,
    behaviour: &Mutex<Behaviour>,
    seen: Option<&Mutex<Vec<String>>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    loop {
        let Some((head, body_len)) = read_request_head(&mut stream, &mut buf) else {
            return;
        };
        let chunked = head
            .to_ascii_lowercase()
            .contains("\r\ntransfer-encoding: chunked");
        let drained = if chunked {
            drain_chunked(&mut stream, &mut buf)
        } else {
            fill(&mut stream, &mut buf, body_len).then(|| {
                buf.drain(..body_len);
            })
        };
        if drained.is_none() {
            return;
        }
        requests.fetch_add(1, Ordering::SeqCst);
        if let Some(seen) = seen {
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(head.clone());
        }
        let now = *behaviour.lock().unwrap_or_else(|e| e.into_inner());
        match now {
            Behaviour::Echo => {}
            Behaviour::CloseEarly => return,
            Behaviour::ResetMidBody => {
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: text/plain\r\n\r\n0123456789",
                );
                let _ = stream.flush();
                std::thread::sleep(Duration::from_millis(50));
                // SO_LINGER 0 would send a RST; closing both halves mid-body is what matters here.
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            Behaviour::Slow(delay) => std::thread::sleep(delay),
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{head}",
            head.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
        if head.to_ascii_lowercase().contains("\r\nconnection: close") {
            return;
        }
    }
}

/// Reads until `buf` holds at least `len` bytes; false when the connection ends first.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> bool {
    while buf.len() < len {
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Reads and drops a chunked body (and its trailers) from the front of `buf`.
fn drain_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            let have = buf.len();
            if !fill(stream, buf, have + 1) {
                return None;
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let end = loop {
                    if let Some(i) = find(buf, b"\r\n") {
                        break i;
                    }
                    let have = buf.len();
                    if !fill(stream, buf, have + 1) {
                        return None;
                    }
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Some(());
                }
            }
        }
        if !fill(stream, buf, size + 2) {
            return None;
        }
        buf.drain(..size + 2);
    }
}

/// Reads one request head from `stream` (bytes beyond it stay in `buf`); returns it and the
/// body length it announces.
fn read_request_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, usize)> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            buf.drain(..end + 4);
            let body_len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            return Some((head, body_len));
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses one response from the front of `bytes`: `None` until a whole one is there. Returns
/// the response and how many bytes it took.
pub fn parse_response(bytes: &[u8], closed: bool) -> Option<(Reply, usize)> {
    let head_end = find(bytes, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &bytes[head_end + 4..];
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = find(&rest[pos..], b"\r\n")? + pos;
            let size_text = String::from_utf8_lossy(&rest[pos..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            pos = line_end + 2;
            if size == 0 {
                let end = find(&rest[pos..], b"\r\n")? + pos + 2;
                return Some((
                    Reply {
                        status,
                        headers,
                        body,
                    },
                    head_end + 4 + end,
                ));
            }
            if rest.len() < pos + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
    }
    let length = match get("content-length") {
        Some(v) => v.parse::<usize>().ok()?,
        None if closed || status == 204 || status == 304 => rest.len(),
        None => return None,
    };
    if rest.len() < length {
        return None;
    }
    Some((
        Reply {
            status,
            headers,
            body: rest[..length].to_vec(),
        },
        head_end + 4 + length,
    ))
}

/// A client connection that can send requests one after another (keep-alive) or raw bytes.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect to the proxy");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads the next response; `Err` when the connection closes (or times out) first.
    pub fn read(&mut self) -> Result<Reply, String> {
        let mut closed = false;
        loop {
            if let Some((reply, used)) = parse_response(&self.buf, closed) {
                self.buf.drain(..used);
                return Ok(reply);
            }
            if closed {
                return Err(format!(
                    "connection closed with {} bytes of an incomplete response",
                    self.buf.len()
                ));
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed = true,
                Err(e) => return Err(format!("reading the response: {e}")),
            }
        }
    }

    /// Sends a request and reads its response.
    pub fn request(&mut self, bytes: &[u8]) -> Result<Reply, String> {
        self.send(bytes).map_err(|e| format!("sending: {e}"))?;
        self.read()
    }

    /// True when the proxy closed the connection (EOF or reset) within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let _ = self.stream.set_read_timeout(Some(within));
        let mut chunk = [0u8; 4096];
        let started = Instant::now();
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
            if started.elapsed() > within {
                return false;
            }
        }
    }
}

/// One request on a fresh connection.
pub fn request(addr: SocketAddr, bytes: &[u8]) -> Result<Reply, String> {
    Conn::open(addr).request(bytes)
}

/// `GET /` for `host` with extra header lines, closing the connection after.
pub fn get(host: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("GET / HTTP/1.1\r\nhost: {host}\r\n");
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("connection: close\r\n\r\n");
    out.into_bytes()
}

/// host-sim running in this process.
pub struct Proxy {
    pub running: Option<RunningProxy>,
    pub listener: SocketAddr,
    pub admin: SocketAddr,
}

impl Proxy {
    pub fn start(yaml: &str, options: &ProxyOptions) -> Proxy {
        let bootstrap = Bootstrap::from_yaml(yaml).unwrap_or_else(|e| panic!("{e:#}\n{yaml}"));
        let running = proxy::start(&bootstrap, options).unwrap_or_else(|e| panic!("{e:#}"));
        let listener = running.listeners[0];
        let admin = running.admin.expect("admin address");
        Proxy {
            running: Some(running),
            listener,
            admin,
        }
    }

    /// Counters and gauges from `/stats`.
    pub fn stats(&self) -> HashMap<String, i64> {
        let reply = request(
            self.admin,
            b"GET /stats HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
        )
        .expect("admin /stats");
        assert_eq!(reply.status, 200);
        reply
            .text()
            .lines()
            .filter_map(|l| l.rsplit_once(": "))
            .filter_map(|(k, v)| Some((k.trim().to_string(), v.trim().parse().ok()?)))
            .collect()
    }

    pub fn stat(&self, name: &str) -> i64 {
        self.stats().get(name).copied().unwrap_or(0)
    }

    /// HTTP contexts alive in the proxy's VMs.
    pub fn live_streams(&self) -> usize {
        self.running
            .as_ref()
            .map_or(0, |r| r.wasm.live_streams.get())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }
}

/// Polls `f` until it is true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
