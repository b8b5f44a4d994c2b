//! The processes under measurement: start them (Envoy, host-sim, the upstream), find their
//! addresses, stop them, and read their CPU time and peak RSS from `/proc`.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a proxy may take to start (Envoy compiles the wasm module per worker; 100,000 rules
/// take a while to parse and compile on a loaded 2-core machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} exited early ({status}); log:\n{log}")]
    Exited {
        what: String,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("{what} not ready after {timeout:?}; log:\n{log}")]
    NotReady {
        what: String,
        timeout: Duration,
        log: String,
    },
    #[error("reading /proc/{pid}/{file}: {detail}")]
    Proc {
        pid: u32,
        file: &'static str,
        detail: String,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Which program a [`ServerProcess`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Envoy,
    HostSim,
    Upstream,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Envoy => "envoy",
            Kind::HostSim => "host-sim",
            Kind::Upstream => "upstream",
        }
    }
}

/// A started server: killed when dropped.
pub struct ServerProcess {
    kind: Kind,
    child: Child,
    dir: TempDir,
    pub listener: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub startup: Duration,
}

impl ServerProcess {
    /// Envoy on `config_yaml` with `workers` worker threads, logging only warnings.
    pub async fn envoy(bin: &Path, config_yaml: &str, workers: u32) -> Result<Self, ProcError> {
        let dir = temp_dir("envoy")?;
        let config = dir.path().join("bootstrap.yaml");
        std::fs::write(&config, config_yaml)?;
        let admin_file = dir.path().join("admin-address");
        let mut command = Command::new(bin);
        command
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            // No shared memory: a previous Envoy still exiting cannot clash with this one.
            .arg("--disable-hot-restart")
            .args(["--concurrency", &workers.to_string(), "-l", "warn"]);
        let started = Instant::now();
        let mut process = Self::spawn(Kind::Envoy, command, dir)?;
        let deadline = started + START_TIMEOUT;
        loop {
            process.check_alive()?;
            if let Some(admin) = read_address(&admin_file) {
                if get(admin, "/ready").await.is_ok_and(|r| r.status == 200) {
                    process.admin = Some(admin);
                    process.listener = envoy_listener(admin).await?;
                    break;
                }
            }
            process.check_deadline(deadline)?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        process.startup = started.elapsed();
        Ok(process)
    }

    /// host-sim on `config_yaml`; it prints its bound addresses on stdout.
    pub async fn host_sim(bin: &Path, config_yaml: &str, workers: u32) -> Result<Self, ProcError> {
        let dir = temp_dir("host-sim")?;
        let config = dir.path().join("bootstrap.yaml");
        std::fs::write(&config, config_yaml)?;
        let mut command = Command::new(bin);
        command.arg("--config").arg(&config).args([
            "--concurrency",
            &workers.to_string(),
            "--log-level",
            "warn",
        ]);
        let started = Instant::now();
        let mut process = Self::spawn(Kind::HostSim, command, dir)?;
        let deadline = started + START_TIMEOUT;
        loop {
            process.check_alive()?;
            let stdout = process.stdout_text();
            let listener = line_address(&stdout, "host-sim: listening on ");
            let admin = line_address(&stdout, "host-sim: admin on http://");
            if let (Some(listener), Some(admin)) = (listener, admin) {
                if get(admin, "/ready").await.is_ok_and(|r| r.status == 200) {
                    process.listener = listener;
                    process.admin = Some(admin);
                    break;
                }
            }
            process.check_deadline(deadline)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process.startup = started.elapsed();
        Ok(process)
    }

    /// `bench upstream` (this very binary) with `threads` runtime threads.
    pub fn upstream(bench_bin: &Path, threads: usize) -> Result<Self, ProcError> {
        let dir = temp_dir("upstream")?;
        let mut command = Command::new(bench_bin);
        command.args(["upstream", "--threads", &threads.to_string()]);
        let started = Instant::now();
        let mut process = Self::spawn(Kind::Upstream, command, dir)?;
        let deadline = started + Duration::from_secs(30);
        loop {
            process.check_alive()?;
            if let Some(addr) = line_address(&process.stdout_text(), "listening on ") {
                process.listener = addr;
                break;
            }
            process.check_deadline(deadline)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        process.startup = started.elapsed();
        Ok(process)
    }

    /// Spawns from the calling thread: the child dies with it (PDEATHSIG follows the thread).
    fn spawn(kind: Kind, mut command: Command, dir: TempDir) -> Result<Self, ProcError> {
        let stdout = File::create(dir.path().join("stdout"))?;
        let stderr = File::create(dir.path().join("stderr"))?;
        command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|source| ProcError::Spawn {
            what: kind.name().to_string(),
            source,
        })?;
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        Ok(ServerProcess {
            kind,
            child,
            dir,
            listener: unbound,
            admin: None,
            startup: Duration::ZERO,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// stdout and stderr so far (the last 8 KiB of each).
    pub fn log(&self) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let start = text.len().saturating_sub(8192);
            let start = (start..text.len())
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(text.len());
            text[start..].to_string()
        };
        format!("{}{}", tail("stdout"), tail("stderr"))
    }

    fn stdout_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    fn check_alive(&mut self) -> Result<(), ProcError> {
        match self.child.try_wait()? {
            Some(status) => Err(ProcError::Exited {
                what: self.kind.name().to_string(),
                status,
                log: self.log(),
            }),
            None => Ok(()),
        }
    }

    fn check_deadline(&self, deadline: Instant) -> Result<(), ProcError> {
        if Instant::now() < deadline {
            return Ok(());
        }
        Err(ProcError::NotReady {
            what: self.kind.name().to_string(),
            timeout: START_TIMEOUT,
            log: self.log(),
        })
    }

    /// Asks politely (SIGTERM), then kills after two seconds.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn temp_dir(what: &str) -> Result<TempDir, ProcError> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("dfp-bench-{what}-"))
        .tempdir()?)
}

fn read_address(file: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// The address after `prefix` on the first line that starts with it (`host:port`, maybe `/path`).
fn line_address(text: &str, prefix: &str) -> Option<SocketAddr> {
    text.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.trim().parse().ok())
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<::tests::client::Response> {
    Ok(::tests::client::get(addr, path).await?)
}

async fn envoy_listener(admin: SocketAddr) -> Result<SocketAddr, ProcError> {
    let response = get(admin, "/listeners?format=json")
        .await
        .map_err(|e| ProcError::Io(std::io::Error::other(format!("admin /listeners: {e:#}"))))?;
    let json = response.json().unwrap_or_default();
    let socket = &json["listener_statuses"][0]["local_address"]["socket_address"];
    let ip = socket["address"].as_str().and_then(|a| a.parse().ok());
    let port = socket["port_value"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok());
    match (ip, port) {
        (Some(ip), Some(port)) => Ok(SocketAddr::new(ip, port)),
        _ => Err(ProcError::Io(std::io::Error::other(format!(
            "admin /listeners: no address in {json}"
        )))),
    }
}

/// The process must not outlive the benchmark, even when the benchmark is killed outright.
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the forked child before exec; prctl is async-signal-safe and touches no
    // memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// User + system CPU seconds the process (all its threads) has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64, ProcError> {
    let stat = read_proc(pid, "stat")?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / clock_ticks_per_second())
        .ok_or_else(|| ProcError::Proc {
            pid,
            file: "stat",
            detail: "no utime/stime fields".into(),
        })
}

/// Peak resident set size (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64, ProcError> {
    let status = read_proc(pid, "status")?;
    status_field_kib(&status, "VmHWM:").ok_or_else(|| ProcError::Proc {
        pid,
        file: "status",
        detail: "no VmHWM".into(),
    })
}

/// Resets the peak RSS to the current RSS (`clear_refs` value 5), so a long-lived process's peak
/// covers only what follows. Not fatal where the kernel refuses.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

fn read_proc(pid: u32, file: &'static str) -> Result<String, ProcError> {
    std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/{file}"))).map_err(|e| {
        ProcError::Proc {
            pid,
            file,
            detail: e.to_string(),
        }
    })
}

/// utime + stime (fields 14 and 15), counted after the command name, which may hold spaces.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    // After ")": state is field 3, so utime (14) is the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn own_process_has_cpu_and_peak_rss() {
        // Burn a little CPU so the reading cannot be a constant.
        let before = cpu_seconds(std::process::id()).unwrap_or(-1.0);
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(150) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = cpu_seconds(std::process::id()).unwrap_or(-1.0);
        assert!(before >= 0.0 && after > before, "{before} -> {after}");
        let rss = peak_rss_kib(std::process::id()).unwrap_or(0);
        assert!(rss > 1000, "peak RSS {rss} KiB");
        assert!(matches!(
            peak_rss_kib(u32::MAX),
            Err(ProcError::Proc { file: "status", .. })
        ));
    }

    #[test]
    fn addresses_from_host_sim_lines() {
        let out = "host-sim: listening on 127.0.0.1:4000\nhost-sim: admin on http://127.0.0.1:4001/stats\n";
        assert_eq!(
            line_address(out, "host-sim: listening on "),
            Some(SocketAddr::from(([127, 0, 0, 1], 4000)))
        );
        assert_eq!(
            line_address(out, "host-sim: admin on http://"),
            Some(SocketAddr::from(([127, 0, 0, 1], 4001)))
        );
        assert_eq!(line_address(out, "nothing "), None);
    }
}
