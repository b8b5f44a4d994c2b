//! The `host-sim` binary as a user runs it: `validate` on the shipped and on broken configurations, the
//! no-argument default run, `--concurrency` and `--log-level`, and SIGHUP reloads (a new configuration, a new
//! `.wasm`, and broken ones that must leave the running configuration serving).
//!
//! The filter these tests run is the one built into the binary (build.rs puts it in OUT_DIR).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod faults_support;

use faults_support::bootstrap::{plugin_configuration, wasm_filter, BootstrapBuilder};

const BIN: &str = env!("CARGO_BIN_EXE_host-sim");
const FILTER_WASM: &str = concat!(env!("OUT_DIR"), "/dfp_filter.wasm");
/// Where `envoy-config/envoy.yaml` expects the filter, relative to the working directory.
const SHIPPED_WASM_PATH: &str = "target/wasm32-unknown-unknown/release/dfp_filter.wasm";
const WAIT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-sim lives in the workspace")
        .to_path_buf()
}

fn shipped_yaml() -> String {
    std::fs::read_to_string(repo_root().join("envoy-config/envoy.yaml")).expect("envoy.yaml")
}

/// A scratch directory laid out like the repository root for `envoy.yaml`: the filter at its relative path.
fn scratch_with_filter() -> tempfile_dir::Dir {
    let dir = tempfile_dir::Dir::new("cli");
    let wasm = dir.path().join(SHIPPED_WASM_PATH);
    std::fs::create_dir_all(wasm.parent().expect("parent")).expect("mkdir");
    std::fs::copy(FILTER_WASM, &wasm).expect("copy the filter");
    dir
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn run(cwd: &Path, args: &[&str]) -> Output {
    let output = Command::new(BIN)
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("running host-sim");
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn validate_accepts_the_shipped_envoy_yaml() {
    let scratch = scratch_with_filter();
    let config = repo_root().join("envoy-config/envoy.yaml");
    let out = run(
        scratch.path(),
        &["validate", "--config", config.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("OK"), "{}", out.stdout);
    // From the repository root itself too, when the filter has been built there (`cargo build --release -p
    // dfp-filter --target wasm32-unknown-unknown`), exactly as the file's comments tell users to run it.
    if repo_root().join(SHIPPED_WASM_PATH).is_file() {
        let out = run(
            &repo_root(),
            &["validate", "--config", "envoy-config/envoy.yaml"],
        );
        assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    } else {
        eprintln!("note: {SHIPPED_WASM_PATH} not built in the repository; validated from a scratch copy only");
    }
}

#[test]
fn validate_rejects_an_unsupported_field_naming_its_yaml_path() {
    let scratch = scratch_with_filter();
    let yaml = shipped_yaml().replacen(
        "stat_prefix: forward_proxy",
        "stat_prefix: forward_proxy\n          use_remote_address: true",
        1,
    );
    let config = scratch.write("unsupported.yaml", &yaml);
    let out = run(scratch.path(), &["validate", "-c", &config]);
    assert!(!out.status.success(), "accepted:\n{}", out.stdout);
    assert!(
        out.stderr.contains(
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.use_remote_address"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn validate_rejects_a_missing_wasm() {
    let empty = tempfile_dir::Dir::new("cli-empty");
    let config = repo_root().join("envoy-config/envoy.yaml");
    let out = run(
        empty.path(),
        &["validate", "--config", config.to_str().expect("utf-8")],
    );
    assert!(!out.status.success(), "accepted:\n{}", out.stdout);
    assert!(
        out.stderr.contains("cannot read the wasm module")
            && out.stderr.contains(SHIPPED_WASM_PATH),
        "{}",
        out.stderr
    );
}

#[test]
fn validate_rejects_a_filter_config_the_filter_refuses() {
    let scratch = scratch_with_filter();
    let yaml = shipped_yaml().replacen(
        r#""mode": "enforce","#,
        r#""mode": "enforce", "alow": [],"#,
        1,
    );
    assert_ne!(yaml, shipped_yaml(), "the edit must apply");
    let config = scratch.write("refused.yaml", &yaml);
    let out = run(scratch.path(), &["validate", "-c", &config]);
    assert!(!out.status.success(), "accepted:\n{}", out.stdout);
    assert!(out.stderr.contains("failed to start"), "{}", out.stderr);
    // The filter's own complaint names the key.
    assert!(out.stderr.contains("alow"), "{}", out.stderr);
}

#[test]
fn flags_are_checked() {
    let scratch = scratch_with_filter();
    for args in [
        &["--concurrency", "0", "validate"][..],
        &["--log-level", "loud", "validate"][..],
    ] {
        let out = run(scratch.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
    }
}

/// A running `host-sim`: its stdout lines as they come, its stderr so far; killed on drop.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn start(cwd: &Path, args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .current_dir(cwd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting host-sim");
        let (send, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Running {
            child,
            lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The first stdout line (new or already seen) after `skip` matching lines that contains `needle`.
    fn wait_line(&mut self, needle: &str, occurrence: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let found: Vec<&String> = self.stdout.iter().filter(|l| l.contains(needle)).collect();
            if let Some(line) = found.get(occurrence) {
                return (*line).clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stdout.push(line),
                Err(_) => panic!(
                    "no stdout line with {needle:?} (#{occurrence}); stdout {:?}; stderr:\n{}",
                    self.stdout,
                    self.stderr()
                ),
            }
        }
    }

    fn wait_stderr(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.stderr().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "stderr never had {needle:?} {count} times:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address printed after `prefix` on stdout.
    fn address(&mut self, prefix: &str, occurrence: usize) -> SocketAddr {
        let line = self.wait_line(prefix, occurrence);
        let text = line
            .split(prefix)
            .nth(1)
            .expect("address after the prefix")
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches("/stats");
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} in {line:?}: {e}"))
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "host-sim did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for host-sim to exit on its own (a configuration it refuses).
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "host-sim did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Names of the worker threads (Linux `/proc`, where a thread name is cut to 15 bytes).
    fn worker_threads(&self) -> usize {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
                    .filter(|name| name.trim() == "host-sim-worker")
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response read to the end of the connection.
#[derive(Debug)]
struct Response {
    status: u16,
    /// The status line and headers.
    head: String,
    body: String,
}

fn parse(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    Response {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// One request on a new connection (`Connection: close`), read to the end.
fn request(addr: SocketAddr, host: &str, path: &str) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse(&raw)
}

/// No-argument run: the embedded default (listener 127.0.0.1:10000, admin 127.0.0.1:9901, the seed's
/// allowlist). Skipped, saying so, when either port is taken on this machine.
#[test]
fn default_run_serves_the_embedded_allowlist() {
    let listener: SocketAddr = "127.0.0.1:10000".parse().expect("addr");
    let admin: SocketAddr = "127.0.0.1:9901".parse().expect("addr");
    for port in [listener, admin] {
        if TcpListener::bind(port).is_err() {
            eprintln!("SKIPPED default_run_serves_the_embedded_allowlist: {port} is in use on this machine");
            return;
        }
    }
    let dir = tempfile_dir::Dir::new("cli-default");
    let mut running = Running::start(dir.path(), &[]);
    assert_eq!(running.address("listening on", 0), listener);
    assert_eq!(running.address("admin on", 0), admin);
    let ready = request(admin, "admin", "/ready");
    assert_eq!(ready.status, 200, "{ready:?}");
    let denied = request(listener, "example.com", "/");
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(
        denied.body.contains(r#""error":"destination_denied""#)
            && denied.body.contains(r#""destination":"example.com:80""#),
        "{denied:?}"
    );
    let embedded = std::env::temp_dir().join(format!("host-sim-{}", running.child.id()));
    assert!(
        embedded.join("dfp_filter.wasm").is_file(),
        "the embedded filter is written out"
    );
    assert!(running.terminate().success());
    assert!(
        !embedded.exists(),
        "a clean stop removes {}",
        embedded.display()
    );
}

/// `--concurrency N` starts N workers; `--log-level warn` hides the info lines `info` shows.
#[test]
fn concurrency_and_log_level() {
    let dir = tempfile_dir::Dir::new("cli-flags");
    let upstream = Upstream::start();
    let wasm = dir.path().join("filter.wasm");
    std::fs::copy(FILTER_WASM, &wasm).expect("copy");
    let config = dir.write("proxy.yaml", &bootstrap(&wasm, "one.test", upstream.port()));
    for (workers, level, shows_info) in [(3, "info", true), (1, "warn", false)] {
        let workers_text = workers.to_string();
        let mut running = Running::start(
            dir.path(),
            &["-c", &config, "--concurrency", &workers_text, "-l", level],
        );
        let listener = running.address("listening on", 0);
        assert_eq!(request(listener, "one.test", "/").status, 200);
        assert_eq!(running.worker_threads(), workers, "--concurrency {workers}");
        // stderr is read by its own thread: wait for the line where it must come, give it time where it must not.
        if shows_info {
            running.wait_stderr("host-sim is serving", 1);
        } else {
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                !running.stderr().contains("host-sim is serving"),
                "-l {level}:\n{}",
                running.stderr()
            );
        }
    }
}

/// SIGHUP: a new configuration and a new `.wasm` take over for new connections while the request in flight
/// finishes on the old chain; broken ones are refused, logged, and the running configuration keeps serving.
#[test]
fn sighup_reloads_and_survives_broken_configurations() {
    let dir = tempfile_dir::Dir::new("cli-reload");
    let upstream = Upstream::start();
    let wasm = dir.path().join("filter.wasm");
    std::fs::copy(FILTER_WASM, &wasm).expect("copy");
    let config_path = dir.path().join("proxy.yaml");
    let config = config_path.to_str().expect("utf-8").to_string();
    std::fs::write(&config_path, bootstrap(&wasm, "one.test", upstream.port())).expect("write");

    let mut running = Running::start(dir.path(), &["-c", &config, "--concurrency", "2"]);
    let listener = running.address("listening on", 0);
    assert_eq!(request(listener, "one.test", "/a").status, 200);
    assert_eq!(request(listener, "two.test", "/a").status, 403);

    // A request in flight (the upstream holds it) and an idle keep-alive connection, both on the old chain.
    let held = upstream.hold();
    let in_flight = std::thread::spawn(move || request(listener, "one.test", "/held"));
    held.wait_arrived();
    let mut idle = TcpStream::connect(listener).expect("connect");
    write!(idle, "GET /idle HTTP/1.1\r\nhost: one.test\r\n\r\n").expect("write");
    let mut first = [0u8; 1024];
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert!(idle.read(&mut first).expect("keep-alive response") > 0);

    // 1. A new configuration: two.test instead of one.test.
    std::fs::write(&config_path, bootstrap(&wasm, "two.test", upstream.port())).expect("write");
    running.signal("HUP");
    assert_eq!(
        running.address("reloaded; listening on", 0),
        listener,
        "the socket is kept"
    );
    assert_eq!(request(listener, "one.test", "/b").status, 403);
    assert_eq!(request(listener, "two.test", "/b").status, 200);
    // The idle connection of the old configuration is closed, not reused with the old chain.
    let mut rest = [0u8; 64];
    assert_eq!(idle.read(&mut rest).expect("closed cleanly"), 0);
    // The request in flight finishes on the old chain (which allowed one.test), then its connection closes.
    held.release();
    let finished = in_flight.join().expect("in-flight thread");
    assert_eq!(finished.status, 200, "{finished:?}");
    assert_eq!(finished.body, "upstream saw /held");

    // 2. A configuration host-sim cannot run: refused with its YAML path; the running one keeps serving.
    let broken = bootstrap_builder(&wasm, "three.test", upstream.port())
        .hcm_yaml("use_remote_address: true")
        .yaml();
    std::fs::write(&config_path, broken).expect("write");
    running.signal("HUP");
    running.wait_stderr("reload rejected", 1);
    assert!(running.stderr().contains("typed_config.use_remote_address"));
    assert_eq!(request(listener, "two.test", "/c").status, 200);
    assert_eq!(request(listener, "three.test", "/c").status, 403);

    // 3. A new .wasm at the same path (a module answering 418 to everything) with the good configuration.
    std::fs::write(&config_path, bootstrap(&wasm, "two.test", upstream.port())).expect("write");
    std::fs::write(&wasm, TEAPOT_WAT).expect("write");
    running.signal("HUP");
    running.wait_line("reloaded; listening on", 1);
    assert_eq!(request(listener, "two.test", "/d").status, 418);

    // 4. A .wasm that is not a module: refused; the teapot keeps serving.
    std::fs::write(&wasm, b"\0asm but not really").expect("write");
    running.signal("HUP");
    running.wait_stderr("reload rejected", 2);
    assert_eq!(request(listener, "two.test", "/e").status, 418);

    assert!(running.terminate().success());
}

/// A guest that answers every request with 418 itself.
const TEAPOT_WAT: &str = r#"(module
  (import "env" "proxy_send_local_response"
    (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "teapot")
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $reply (i32.const 418) (i32.const 16) (i32.const 6)
                       (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
    (i32.const 0)))"#;

/// A bootstrap on ports 0: the filter allowing `allowed` on port 80 and sending it to the STATIC cluster `upstream`.
fn bootstrap(wasm: &Path, allowed: &str, upstream_port: u16) -> String {
    bootstrap_builder(wasm, allowed, upstream_port).yaml()
}

fn bootstrap_builder(wasm: &Path, allowed: &str, upstream_port: u16) -> BootstrapBuilder {
    let filter_config = serde_json::json!({
        "allow": [{ "host": allowed, "ports": [80] }],
        "cluster_header": "x-dfp-cluster",
        "clusters": { "plain": "upstream", "tls": "upstream" },
    });
    let mut filter = wasm_filter("policy", wasm, "root_id: dfp");
    filter["typed_config"]["config"]["configuration"] =
        plugin_configuration(&filter_config.to_string());
    BootstrapBuilder::to_static(SocketAddr::from(([127, 0, 0, 1], upstream_port)))
        // No route timeout: the held request outlives a reload on a slow machine.
        .route(serde_json::json!({ "cluster_header": "x-dfp-cluster", "timeout": "0s" }))
        .http_filter(filter)
}

/// A plain HTTP/1.1 upstream answering `upstream saw <path>`; requests for `/held` wait until released.
struct Upstream {
    port: u16,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    arrived: AtomicBool,
    released: AtomicBool,
}

struct Held(Arc<Gate>);

impl Held {
    fn wait_arrived(&self) {
        let deadline = Instant::now() + WAIT;
        while !self.0.arrived.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the held request never arrived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn release(&self) {
        self.0.released.store(true, Ordering::SeqCst);
    }
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let gate = Arc::new(Gate::default());
        let shared = gate.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let gate = shared.clone();
                std::thread::spawn(move || serve(stream, &gate));
            }
        });
        Upstream { port, gate }
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn hold(&self) -> Held {
        self.gate.arrived.store(false, Ordering::SeqCst);
        self.gate.released.store(false, Ordering::SeqCst);
        Held(self.gate.clone())
    }
}

/// Answers requests on one connection until the client closes it.
fn serve(stream: TcpStream, gate: &Gate) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
        }
        let path = request_line.split(' ').nth(1).unwrap_or("?").to_string();
        if path == "/held" {
            gate.arrived.store(true, Ordering::SeqCst);
            while !gate.released.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let body = format!("upstream saw {path}");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

mod tempfile_dir {
    //! A temporary directory (removed on drop) that writes files for command lines.

    use std::path::Path;

    pub struct Dir(tempfile::TempDir);

    impl Dir {
        pub fn new(label: &str) -> Dir {
            let dir = tempfile::Builder::new()
                .prefix(&format!("host-sim-{label}-"))
                .tempdir()
                .expect("temp dir");
            Dir(dir)
        }

        pub fn path(&self) -> &Path {
            self.0.path()
        }

        /// Writes `name` in the directory; returns its path as text (for command lines).
        pub fn write(&self, name: &str, text: &str) -> String {
            let path = self.0.path().join(name);
            std::fs::write(&path, text).expect("write");
            path.to_string_lossy().into_owned()
        }
    }
}

/// `host-sim run WASM --upstream 127.0.0.1:PORT --plugin-config CONFIG` on ports the kernel picks.
fn serve_module(cwd: &Path, wasm: &str, upstream_port: u16, plugin_config: &str) -> Running {
    Running::start(
        cwd,
        &[
            "run",
            wasm,
            "--upstream",
            &format!("127.0.0.1:{upstream_port}"),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--plugin-config",
            plugin_config,
        ],
    )
}

/// `host-sim run FILTER.wasm` serves a module with no YAML: here the shipped filter with an allowlist in front of a
/// static upstream. `--print-config` prints a bootstrap `host-sim validate` accepts (Envoy's verdict on it is
/// checked in tests/tests/envoy_e2e.rs).
#[test]
fn run_serves_a_module_without_yaml() {
    let dir = tempfile_dir::Dir::new("cli-run");
    let upstream = Upstream::start();
    let port = upstream.port();
    let config = format!(r#"{{ "allow": [{{ "host": "api.test", "ports": [{port}] }}] }}"#);
    let mut running = serve_module(dir.path(), FILTER_WASM, port, &config);
    let listener = running.address("listening on", 0);
    let allowed = request(listener, &format!("api.test:{port}"), "/through");
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert!(
        allowed.body.contains("upstream saw /through"),
        "{}",
        allowed.body
    );
    let denied = request(listener, "evil.test", "/");
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(running.terminate().success());

    let printed = run(
        dir.path(),
        &[
            "run",
            FILTER_WASM,
            "--dfp",
            "--plugin-config",
            &config,
            "--print-config",
        ],
    );
    assert!(printed.status.success(), "{}", printed.stderr);
    assert!(
        printed.stdout.starts_with("# Generated by `host-sim run`"),
        "{}",
        printed.stdout
    );
    let file = dir.path().join("generated.yaml");
    std::fs::write(&file, &printed.stdout).expect("write");
    let checked = run(
        dir.path(),
        &["validate", "--config", &file.display().to_string()],
    );
    assert!(
        checked.status.success(),
        "{}\n{}",
        checked.stderr,
        printed.stdout
    );

    let wrong = run(
        dir.path(),
        &[
            "run",
            FILTER_WASM,
            "--upstream",
            "api.test:80",
            "--print-config",
        ],
    );
    assert!(!wrong.status.success());
    assert!(wrong.stderr.contains("--upstream"), "{}", wrong.stderr);
}

/// `host-sim run` serves a module written elsewhere in the SDK's usual style: `examples/my-filter`, built for wasm32
/// as its own tests build it, in front of a static upstream.
#[test]
fn run_serves_the_example_filter() {
    let root = repo_root();
    let wasm = host_sim::guest_build::build_wasm_in(
        "my-filter",
        &root,
        &root.join("target").join("wasm-fixtures"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile_dir::Dir::new("cli-run-example");
    let upstream = Upstream::start();
    let port = upstream.port();
    let mut running = serve_module(dir.path(), &wasm.display().to_string(), port, "/private");
    let listener = running.address("listening on", 0);
    let passed = request(listener, "example.test", "/public");
    assert_eq!(passed.status, 200, "{}", passed.body);
    assert_eq!(passed.body, "upstream saw /public");
    assert!(
        passed.head.contains("x-my-filter-response: 200"),
        "{}",
        passed.head
    );
    let blocked = request(listener, "example.test", "/private/keys");
    assert_eq!(blocked.status, 403, "{}", blocked.body);
    assert_eq!(blocked.body, "blocked\n");
    assert!(running.terminate().success());
}

/// A root context that logs when it ends (`proxy_on_done`, then `proxy_on_delete`).
const ROOT_LOGS_ITS_END: &str = r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "root done")
  (data (i32.const 32) "root deleted")
  (global $heap (mut i32) (i32.const 1024))
  (func (export "malloc") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_done") (param i32) (result i32)
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 9)))
    (i32.const 1))
  (func (export "proxy_on_delete") (param i32)
    (drop (call $log (i32.const 2) (i32.const 32) (i32.const 12)))))
"#;

/// SIGTERM ends every VM's root context as Envoy's shutdown does (cpp-host `WasmBase::startShutdown`):
/// `proxy_on_done`, then `proxy_on_delete`, on the main thread's VM and each worker's.
#[test]
fn sigterm_ends_the_root_context_of_every_vm() {
    let dir = tempfile_dir::Dir::new("cli-shutdown");
    let module = dir.write("root.wat", ROOT_LOGS_ITS_END);
    let running = Running::start(
        dir.path(),
        &[
            "--concurrency",
            "2",
            "run",
            &module,
            "--upstream",
            "127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    running.wait_stderr("host-sim is serving", 1);
    let stderr = running.stderr.clone();
    assert!(running.terminate().success(), "host-sim exits cleanly");
    let deadline = Instant::now() + WAIT;
    loop {
        let text = stderr.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (done, deleted) = (
            text.matches("root done").count(),
            text.matches("root deleted").count(),
        );
        if done == 3 && deleted == 3 {
            let first_deleted = text.find("root deleted").expect("deleted");
            assert!(
                text.find("root done").expect("done") < first_deleted,
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline && done <= 3,
            "expected 3 VMs (main thread, 2 workers) to end with done then deleted:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A wasm service (`bootstrap_extensions`) runs its root context without streams: a singleton on the main thread
/// only, otherwise on the main thread and each worker, as Envoy's `PluginConfig` places it (`is_singleton`). A
/// validation does not start it (`WasmServiceExtension::onServerInitialized` never runs in `envoy --mode validate`,
/// measured: a service whose module is missing validates OK).
#[test]
fn wasm_services_run_where_envoy_runs_them() {
    let dir = tempfile_dir::Dir::new("cli-wasm-service");
    let module = dir.write("root.wat", ROOT_LOGS_ITS_END);
    let config = |singleton: bool, module: &str| {
        format!(
            "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
bootstrap_extensions:
- name: envoy.bootstrap.wasm
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.wasm.v3.WasmService
    singleton: {singleton}
    config:
      name: service
      root_id: service
      vm_config: {{ runtime: envoy.wasm.runtime.v8, code: {{ local: {{ filename: {module} }} }} }}
"
        )
    };
    for (singleton, vms) in [(true, 1), (false, 3)] {
        let file = dir.write("service.yaml", &config(singleton, &module));
        let running = Running::start(dir.path(), &["-c", &file, "--concurrency", "2"]);
        running.wait_stderr("host-sim is serving", 1);
        let stderr = running.stderr.clone();
        assert!(running.terminate().success(), "host-sim exits cleanly");
        let deadline = Instant::now() + WAIT;
        loop {
            let text = stderr.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let deleted = text.matches("root deleted").count();
            if deleted == vms {
                // Nothing more comes once every VM is gone.
                std::thread::sleep(Duration::from_millis(200));
                let text = stderr.lock().unwrap_or_else(|p| p.into_inner()).clone();
                assert_eq!(text.matches("root done").count(), vms, "{text}");
                break;
            }
            assert!(
                Instant::now() < deadline && deleted < vms,
                "singleton {singleton}: expected {vms} VM(s) to end:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let missing = dir.write(
        "missing.yaml",
        &config(true, &dir.path().join("missing.wasm").display().to_string()),
    );
    let checked = run(dir.path(), &["validate", "-c", &missing]);
    assert!(checked.status.success(), "{}", checked.stderr);
    // Running it needs the module.
    let mut refused = Running::start(dir.path(), &["-c", &missing, "--concurrency", "1"]);
    assert!(!refused.wait_exit().success());
}
