//! Configuration faults, with the binary as an operator runs it: invalid YAML, a field host-sim does not know, a
//! missing `.wasm`, a file that is not a wasm module, and a filter configuration the filter refuses. At start each
//! must stop host-sim with a non-zero exit and a message naming where and why; at a reload (SIGHUP) each must be
//! refused with the reason logged, while the running configuration keeps serving.

mod faults_support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faults_support::bootstrap::plugin_configuration;
use faults_support::{bootstrap, get, request, wasm_filter, Behaviour, TempDir, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_host-sim");
/// The filter build.rs embeds in the binary.
const FILTER_WASM: &str = concat!(env!("OUT_DIR"), "/dfp_filter.wasm");
const WAIT: Duration = Duration::from_secs(60);

/// The dfp filter allowing `allowed` on port 80, in front of a STATIC route to `upstream`.
fn config(upstream: std::net::SocketAddr, wasm: &Path, filter_config: &str) -> String {
    let mut filter = wasm_filter("dfp", wasm, "root_id: dfp");
    filter["typed_config"]["config"]["configuration"] = plugin_configuration(filter_config);
    bootstrap(upstream, &[filter], "")
}

const GOOD_FILTER: &str = r#"{"allow": [{"host": "ok.test", "ports": [80]}]}"#;

/// A broken variant of the good configuration, and what the error must mention.
struct Fault {
    name: &'static str,
    yaml: String,
    /// Files to write first (relative to the scratch dir): (name, bytes).
    files: Vec<(&'static str, Vec<u8>)>,
    mentions: Vec<String>,
}

fn faults(upstream: std::net::SocketAddr, dir: &Path) -> Vec<Fault> {
    let wasm = dir.join("filter.wasm");
    let good = config(upstream, &wasm, GOOD_FILTER);
    let not_a_module = dir.join("not-a-module.wasm");
    let missing = dir.join("nowhere/filter.wasm");
    vec![
        Fault {
            name: "invalid YAML",
            yaml: good.replacen(r#""static_resources":"#, r#""static_resources": [unclosed"#, 1),
            files: vec![],
            mentions: vec!["invalid YAML".into(), "at line".into()],
        },
        Fault {
            name: "an unknown field",
            yaml: good.replacen(r#""stat_prefix": "main""#, r#""bogus_field": 1, "stat_prefix": "main""#, 1),
            files: vec![],
            mentions: vec!["static_resources.listeners[0].filter_chains[0].filters[0].typed_config.bogus_field".into()],
        },
        Fault {
            name: "a missing .wasm",
            yaml: config(upstream, &missing, GOOD_FILTER),
            files: vec![],
            mentions: vec![
                "cannot read the wasm module".into(),
                missing.display().to_string(),
                "http_filters[0]".into(),
            ],
        },
        Fault {
            name: "a file that is not a wasm module",
            yaml: config(upstream, &not_a_module, GOOD_FILTER),
            files: vec![("not-a-module.wasm", b"\0asm\x01\0\0\0 but not really".to_vec())],
            mentions: vec!["compile".into(), "not-a-module.wasm".into()],
        },
        Fault {
            name: "a filter configuration the filter refuses",
            yaml: config(upstream, &wasm, r#"{"alow": [{"host": "ok.test"}]}"#),
            files: vec![],
            mentions: vec!["failed to start".into(), "alow".into()],
        },
    ]
}

fn scratch() -> (TempDir, Upstream) {
    let dir = TempDir::new("faults-config");
    std::fs::copy(FILTER_WASM, dir.path().join("filter.wasm")).expect("copy the filter");
    (dir, Upstream::start(Behaviour::Echo))
}

#[test]
fn broken_configurations_stop_startup_naming_the_fault() {
    let (dir, upstream) = scratch();
    for fault in faults(upstream.addr, dir.path()) {
        for (name, bytes) in &fault.files {
            dir.write(name, bytes);
        }
        let path = dir.write("broken.yaml", fault.yaml.as_bytes());
        let mut child = Command::new(BIN)
            .current_dir(dir.path())
            .args(["-c", path.to_str().expect("utf-8"), "--concurrency", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting host-sim");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: host-sim kept running",
                fault.name
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut stdout)
            .expect("stdout");
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("stderr");
        assert_eq!(status.code(), Some(1), "{}: {status}\n{stderr}", fault.name);
        assert!(
            !stdout.contains("listening on"),
            "{}: it served:\n{stdout}",
            fault.name
        );
        for needle in &fault.mentions {
            assert!(
                stderr.contains(needle.as_str()),
                "{}: no {needle:?} in:\n{stderr}",
                fault.name
            );
        }
    }
}

/// host-sim running with piped output.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn drain(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let sink = Arc::new(Mutex::new(String::new()));
    let out = sink.clone();
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
    out
}

impl Running {
    fn start(cwd: &Path, config: &Path) -> Running {
        let mut child = Command::new(BIN)
            .current_dir(cwd)
            .args(["-c", config.to_str().expect("utf-8"), "--concurrency", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting host-sim");
        let stdout = drain(child.stdout.take().expect("stdout"));
        let stderr = drain(child.stderr.take().expect("stderr"));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    fn text(pipe: &Arc<Mutex<String>>) -> String {
        pipe.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn wait(&self, pipe: &Arc<Mutex<String>>, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = Self::text(pipe);
            if text.matches(needle).count() >= count {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "never {count} x {needle:?}; stdout:\n{}\nstderr:\n{}",
                Self::text(&self.stdout),
                Self::text(&self.stderr)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn listener(&self) -> std::net::SocketAddr {
        let out = self.wait(&self.stdout, "listening on", 1);
        let line = out
            .lines()
            .find(|l| l.contains("listening on"))
            .expect("line");
        line.rsplit(' ')
            .next()
            .expect("address")
            .parse()
            .expect("an address")
    }

    fn hup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn broken_configurations_at_reload_are_refused_and_the_old_one_keeps_serving() {
    let (dir, upstream) = scratch();
    let config_path = dir.path().join("proxy.yaml");
    let good = config(upstream.addr, &dir.path().join("filter.wasm"), GOOD_FILTER);
    std::fs::write(&config_path, &good).expect("write");
    let running = Running::start(dir.path(), &config_path);
    let listener = running.listener();
    let serves_old = |what: &str| {
        let ok = request(listener, &get("ok.test", &[])).expect("an answer");
        assert_eq!(ok.status, 200, "after {what}: {ok:?}");
        let other = request(listener, &get("other.test", &[])).expect("an answer");
        assert_eq!(other.status, 403, "after {what}: {other:?}");
    };
    serves_old("start");
    for (i, fault) in faults(upstream.addr, dir.path()).into_iter().enumerate() {
        for (name, bytes) in &fault.files {
            dir.write(name, bytes);
        }
        std::fs::write(&config_path, &fault.yaml).expect("write");
        running.hup();
        let stderr = running.wait(&running.stderr, "reload rejected", i + 1);
        let last = stderr
            .rsplit("reload rejected")
            .next()
            .expect("the last rejection")
            .to_string();
        for needle in &fault.mentions {
            assert!(
                last.contains(needle.as_str()),
                "{}: no {needle:?} in:\n{last}",
                fault.name
            );
        }
        serves_old(fault.name);
    }
    // And a good configuration is still taken.
    std::fs::write(
        &config_path,
        config(
            upstream.addr,
            &dir.path().join("filter.wasm"),
            r#"{"allow": [{"host": "other.test", "ports": [80]}]}"#,
        ),
    )
    .expect("write");
    running.hup();
    running.wait(&running.stdout, "reloaded", 1);
    let other = request(listener, &get("other.test", &[])).expect("an answer");
    assert_eq!(other.status, 200);
}
