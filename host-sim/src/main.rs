//! host-sim's command line: run an Envoy v3 bootstrap (or the embedded default), or validate one.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use host_sim::config::Bootstrap;
use host_sim::proxy::{self, ProxyOptions};
use host_sim::LogLevel;

#[derive(Parser)]
#[command(
    name = "host-sim",
    version,
    about = "A proxy-wasm host on wasmtime and a small Envoy: runs the same bootstrap YAML as Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Envoy v3 bootstrap (YAML or JSON). Without it, the embedded default runs: listener 127.0.0.1:10000,
    /// admin 127.0.0.1:9901, the system resolver, and dfp_filter.wasm allowing the seed's hosts.
    #[arg(short = 'c', long, global = true)]
    config: Option<PathBuf>,
    /// Log level: trace, debug, info, warn, error (also what wasm plugins see as their level).
    #[arg(short = 'l', long, default_value = "info", global = true)]
    log_level: String,
    /// Worker threads, each with its own VM per plugin (Envoy's --concurrency). Default: the number of cores.
    #[arg(long)]
    concurrency: Option<usize>,
    /// How long one call into a wasm plugin may run before it is interrupted and fails like a trap, in
    /// milliseconds; 0 disables the deadline (Envoy has none: a looping plugin holds its worker forever).
    #[arg(long, default_value_t = host_sim::vm::DEFAULT_CALL_DEADLINE.as_millis() as u64)]
    wasm_call_deadline_ms: u64,
    /// The most linear memory one wasm VM may grow to, in MiB; growing past it traps. 0: no limit but wasm32's.
    #[arg(long, default_value_t = (host_sim::vm::DEFAULT_MEMORY_LIMIT >> 20) as u64)]
    wasm_memory_limit_mib: u64,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Check a configuration as `envoy --mode validate` does: parse, load every plugin, start it, then exit.
    Validate,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_level);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("host-sim: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.print_default_config {
        print!(
            "{}",
            default_config::yaml(&default_config::wasm_path_placeholder())
        );
        return Ok(());
    }
    let bootstrap = load(cli.config.as_ref())?;
    let options = ProxyOptions {
        concurrency: cli
            .concurrency
            .unwrap_or_else(|| ProxyOptions::default().concurrency),
        wasm_log_level: wasm_level(&cli.log_level),
        wasm_call_deadline: (cli.wasm_call_deadline_ms > 0)
            .then(|| std::time::Duration::from_millis(cli.wasm_call_deadline_ms)),
        wasm_memory_limit: (cli.wasm_memory_limit_mib > 0).then(|| {
            usize::try_from(cli.wasm_memory_limit_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
        }),
    };
    match cli.command {
        Some(Command::Validate) => {
            proxy::validate(&bootstrap, &options)?;
            println!(
                "configuration '{}' OK",
                cli.config
                    .as_ref()
                    .map_or("(embedded default)".into(), |p| p.display().to_string())
            );
            Ok(())
        }
        None => {
            let running = proxy::start(&bootstrap, &options)?;
            for address in &running.listeners {
                println!("host-sim: listening on {address}");
            }
            if let Some(admin) = running.admin {
                println!("host-sim: admin on http://{admin}/stats");
            }
            running.wait();
            Ok(())
        }
    }
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Bootstrap> {
    match path {
        Some(path) => {
            Bootstrap::from_file(path).with_context(|| format!("configuration {}", path.display()))
        }
        None => {
            let wasm = default_config::write_embedded_wasm()?;
            Bootstrap::from_yaml(&default_config::yaml(&wasm))
                .context("the embedded default configuration")
        }
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn wasm_level(level: &str) -> LogLevel {
    match level.to_ascii_lowercase().as_str() {
        "trace" => LogLevel::Trace,
        "debug" => LogLevel::Debug,
        "warn" | "warning" => LogLevel::Warn,
        "error" => LogLevel::Error,
        "critical" => LogLevel::Critical,
        _ => LogLevel::Info,
    }
}

mod default_config {
    //! The embedded default: the filter built into this binary, and the allowlist of the seed's hosts.

    use std::path::{Path, PathBuf};

    use anyhow::Context as _;

    const WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dfp_filter.wasm"));
    /// The embedded default is the shipped `envoy-config/envoy.yaml`, pointed at the embedded filter.
    const TEMPLATE: &str = include_str!("../../envoy-config/envoy.yaml");
    const WASM_PATH_IN_TEMPLATE: &str = "target/wasm32-unknown-unknown/release/dfp_filter.wasm";

    pub fn wasm_path_placeholder() -> PathBuf {
        PathBuf::from("dfp_filter.wasm")
    }

    /// Writes the embedded filter where the default configuration points (a per-user cache file).
    pub fn write_embedded_wasm() -> anyhow::Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("host-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("dfp_filter.wasm");
        std::fs::write(&path, WASM).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub fn yaml(wasm: &Path) -> String {
        TEMPLATE.replace(WASM_PATH_IN_TEMPLATE, &wasm.display().to_string())
    }
}
