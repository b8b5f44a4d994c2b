//! host-sim's command line: run an Envoy v3 bootstrap (or the embedded default), or validate one.
//!
//! While running: SIGHUP reloads the configuration (the `--config` file, and every `.wasm` it names, read
//! again; a configuration that does not load is refused and logged, and the running one keeps serving);
//! SIGTERM or SIGINT stops it.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use host_sim::config::Bootstrap;
use host_sim::proxy::{self, ProxyOptions, RunningProxy};
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
    /// Log level, as Envoy's `-l`: host-sim's own log (stderr) and what wasm plugins get from
    /// `proxy_get_log_level`. `RUST_LOG`, when set, overrides the host's part.
    #[arg(short = 'l', long, value_enum, default_value_t = Level::Info, global = true)]
    log_level: Level,
    /// Worker threads, each with its own event loop, VM per plugin and connection pools (Envoy's
    /// --concurrency). Default: the number of cores.
    #[arg(long)]
    concurrency: Option<NonZeroUsize>,
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

/// Envoy's log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Level {
    Trace,
    Debug,
    Info,
    #[value(alias = "warning")]
    Warn,
    Error,
    Critical,
    Off,
}

#[derive(Subcommand)]
enum Command {
    /// Check a configuration as `envoy --mode validate` does: parse, load every plugin, start it, then exit.
    Validate,
    /// Serve one proxy-wasm module with no YAML: a listener, the module, the router, and a static upstream or the
    /// dynamic forward proxy. `--print-config` prints that bootstrap (Envoy runs it as it is) and exits.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The module (`.wasm`).
    wasm: PathBuf,
    /// The plugin configuration: the text itself, or `@FILE`.
    #[arg(long)]
    plugin_config: Option<String>,
    /// The VM configuration: the text itself, or `@FILE`.
    #[arg(long)]
    vm_config: Option<String>,
    /// The plugin's root_id (default: the module's default root context).
    #[arg(long, default_value = "")]
    root_id: String,
    /// Send every request to this upstream, IP:PORT (a STATIC cluster).
    #[arg(long, conflicts_with = "dfp")]
    upstream: Option<String>,
    /// Send each request where its Host names, through the dynamic forward proxy (the default without --upstream).
    #[arg(long)]
    dfp: bool,
    /// The listener's address.
    #[arg(long, default_value = "127.0.0.1:10000")]
    listen: std::net::SocketAddr,
    /// The admin address (`/stats`, `/ready`).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: std::net::SocketAddr,
    /// Print the generated bootstrap and exit.
    #[arg(long)]
    print_config: bool,
}

/// Where the configuration comes from, at start and at every SIGHUP.
enum Source {
    /// `--config FILE`.
    File(PathBuf),
    /// No `--config`: `envoy-config/envoy.yaml` with the embedded filter.
    Embedded,
    /// `host-sim run`: generated, the module read again at each load.
    Generated(host_sim::run_config::RunSpec),
}

/// A `--plugin-config`/`--vm-config` value: the text, or the contents of `@FILE`.
fn text_or_file(value: &str, flag: &str) -> anyhow::Result<String> {
    match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("{flag} @{path}")),
        None => Ok(value.to_string()),
    }
}

fn run_spec(args: &RunArgs) -> anyhow::Result<host_sim::run_config::RunSpec> {
    use host_sim::run_config::{RunSpec, Upstream};
    let wasm = std::fs::canonicalize(&args.wasm)
        .with_context(|| format!("the module {}", args.wasm.display()))?;
    let upstream = match &args.upstream {
        Some(address) => Upstream::Static(address.parse().map_err(|_| {
            anyhow::anyhow!(
                "--upstream {address:?}: expected IP:PORT (a static cluster takes an address, not a name)"
            )
        })?),
        None => Upstream::DynamicForwardProxy,
    };
    Ok(RunSpec {
        wasm,
        plugin_config: args
            .plugin_config
            .as_deref()
            .map(|c| text_or_file(c, "--plugin-config"))
            .transpose()?,
        vm_config: args
            .vm_config
            .as_deref()
            .map(|c| text_or_file(c, "--vm-config"))
            .transpose()?,
        root_id: args.root_id.clone(),
        upstream,
        listen: args.listen,
        admin: args.admin,
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_level);
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
    let source = match (&cli.command, &cli.config) {
        (Some(Command::Run(_)), Some(_)) => {
            anyhow::bail!("`host-sim run` generates its configuration; it takes no --config")
        }
        (Some(Command::Run(args)), None) => {
            let spec = run_spec(args)?;
            if args.print_config {
                print!("{}", host_sim::run_config::bootstrap(&spec));
                return Ok(());
            }
            Source::Generated(spec)
        }
        (_, Some(path)) => Source::File(path.clone()),
        (_, None) => Source::Embedded,
    };
    let bootstrap = load(&source)?;
    let options = ProxyOptions {
        concurrency: cli
            .concurrency
            .map_or_else(|| ProxyOptions::default().concurrency, NonZeroUsize::get),
        wasm_log_level: wasm_level(cli.log_level),
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
        Some(Command::Run(_)) | None => serve(&source, &bootstrap, &options),
    }
}

/// Runs the proxy until SIGTERM or SIGINT, reloading on SIGHUP.
fn serve(source: &Source, bootstrap: &Bootstrap, options: &ProxyOptions) -> anyhow::Result<()> {
    let mut running = proxy::start(bootstrap, options)?;
    print_addresses("listening on", &running);
    if let Some(admin) = running.admin {
        println!("host-sim: admin on http://{admin}/stats");
    }
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    signals.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup()).context("handling SIGHUP")?;
        let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        loop {
            tokio::select! {
                _ = hangup.recv() => reload(&mut running, source),
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        anyhow::Ok(())
    })?;
    tracing::info!("stopping");
    running.stop();
    if let Source::Embedded = source {
        default_config::remove_embedded_wasm();
    }
    Ok(())
}

/// SIGHUP: the configuration (and every `.wasm` it names) read again; on any error the running one stays.
fn reload(running: &mut RunningProxy, source: &Source) {
    tracing::info!("SIGHUP: reloading the configuration");
    match load(source).and_then(|bootstrap| running.reload(&bootstrap)) {
        Ok(()) => print_addresses("reloaded; listening on", running),
        Err(error) => {
            tracing::error!("reload rejected, the running configuration keeps serving: {error:#}")
        }
    }
}

fn print_addresses(what: &str, running: &RunningProxy) {
    for address in &running.listeners {
        println!("host-sim: {what} {address}");
    }
}

fn load(source: &Source) -> anyhow::Result<Bootstrap> {
    match source {
        Source::File(path) => {
            Bootstrap::from_file(path).with_context(|| format!("configuration {}", path.display()))
        }
        Source::Embedded => {
            let wasm = default_config::write_embedded_wasm()?;
            Bootstrap::from_yaml(&default_config::yaml(&wasm))
                .context("the embedded default configuration")
        }
        Source::Generated(spec) => Bootstrap::from_yaml(&host_sim::run_config::bootstrap(spec))
            .context("the generated configuration"),
    }
}

fn init_tracing(level: Level) {
    let directive = match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        // tracing has no level above error: critical logs errors.
        Level::Error | Level::Critical => "error",
        Level::Off => "off",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directive));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// What `proxy_get_log_level` tells plugins; `off` reads as critical (the ABI has no "off").
fn wasm_level(level: Level) -> LogLevel {
    match level {
        Level::Trace => LogLevel::Trace,
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
        Level::Critical | Level::Off => LogLevel::Critical,
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

    /// A per-process directory in the temp dir for the embedded filter.
    fn embedded_dir() -> PathBuf {
        std::env::temp_dir().join(format!("host-sim-{}", std::process::id()))
    }

    /// Removes what `write_embedded_wasm` wrote (on a clean stop; a killed process leaves it in the temp dir).
    pub fn remove_embedded_wasm() {
        let _ = std::fs::remove_dir_all(embedded_dir());
    }

    /// Writes the embedded filter where the default configuration points.
    pub fn write_embedded_wasm() -> anyhow::Result<PathBuf> {
        let dir = embedded_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("dfp_filter.wasm");
        std::fs::write(&path, WASM).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub fn yaml(wasm: &Path) -> String {
        TEMPLATE.replace(WASM_PATH_IN_TEMPLATE, &wasm.display().to_string())
    }
}
