//! The runner: one Envoy and one host-sim (one worker each) from the same YAML and the same
//! guest, every generated program sent through both, the two reports compared field by field.
//! A difference `tests/fidelity/differences.yaml` does not document is a divergence: the program
//! is shrunk (proptest's simplification, each candidate run through both proxies again) and the
//! seed, the index and the minimal program are kept for the report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use abi_fuzz::program::{
    self, Call, Phase, Program, Record, Step, COMPLETE_HEADER, FETCH_HEADER, PROGRAM_HEADER,
    STARTUP_PROGRAM,
};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};

use super::case_id::{case_id, CASE_ID};
use super::generate::{self, Case, Shape};
use super::render::{self, Outcome};
use crate::client;
use crate::envoy::Envoy;
use crate::fidelity::compare::{self, FieldDiff};
use crate::fidelity::differences::{self, Documented};
use crate::host_sim::HostSim;
use crate::proxy::Proxy;
use crate::template::{self, Vars};
use crate::upstream::EchoServer;
use crate::wasm;

/// How long a report may take to complete (ticks, queues, http calls) after the response: they complete within
/// milliseconds, or never (a stream's calls cancelled with it).
const REPORT_WAIT: Duration = Duration::from_secs(1);
/// How long a response may take. Envoy answers within milliseconds or never: a filter that resized the body under
/// its `content-length` leaves the client waiting for bytes that do not come (one such program in 200 or so; at
/// 10 s these were most of a run's time).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A long run says how far it got this often (programs).
const PROGRESS_EVERY: usize = 2500;
/// Shrinking stops after this many candidate runs per divergence.
const SHRINK_RUNS: usize = 80;
/// Divergences shrunk per run; later ones are counted, not shrunk.
const SHRUNK_DIVERGENCES: usize = 8;

#[derive(Clone, Debug)]
pub struct Config {
    pub programs: usize,
    pub seed: u64,
    /// The proxies restart with a new startup program this many times over the run.
    pub epochs: usize,
    /// Run only this program (as [`replay_text`] prints it), after an empty startup program.
    pub replay: Option<String>,
    /// Start with the epoch that holds this program index: the programs before it are generated, not run, so what
    /// follows is the same sequence (ids differ where the full run shrank something).
    pub from: usize,
    /// Print every program's documented differences, with the entry that accepted each.
    pub trace: bool,
}

/// A program and its request as one line: `METHOD PATH BODY_LEN TRAILERS HEX` (BODY_LEN `-` for none; TRAILERS
/// 1 for request trailers, plus 2 for response trailers), what a divergence report prints and
/// `DFP_ABI_FUZZ_REPLAY` takes.
pub fn replay_text(program: &Program, shape: &Shape) -> String {
    format!(
        "{} {} {} {} {}",
        shape.method,
        shape.path,
        shape
            .body
            .as_ref()
            .map_or("-".to_string(), |b| b.len().to_string()),
        u8::from(shape.trailers) | (u8::from(shape.response_trailers) << 1),
        program::to_hex(&program.encode())
    )
}

fn parse_replay(text: &str) -> anyhow::Result<(Program, Shape)> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [method, path, body, trailers, hex] = parts.as_slice() else {
        anyhow::bail!(
            "DFP_ABI_FUZZ_REPLAY: want `METHOD PATH BODY_LEN TRAILERS HEX`, got {text:?}"
        );
    };
    let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
    let body = match *body {
        "-" => None,
        n => Some(
            b"hello world body"
                .iter()
                .copied()
                .cycle()
                .take(n.parse()?)
                .collect(),
        ),
    };
    let program = Program::decode(&program::from_hex(hex.as_bytes())?)?;
    let trailers: u8 = trailers.parse()?;
    let shape = Shape {
        method: leak(method),
        path: leak(path),
        trailers: trailers & 1 != 0,
        response_trailers: trailers & 2 != 0,
        body,
    };
    Ok((program, shape))
}

/// A program on which the proxies differed in a way no entry documents.
#[derive(Clone, Debug)]
pub struct Divergence {
    /// Index of the program in the run (its position in the seed's sequence).
    pub index: usize,
    /// The startup program the proxies ran (in `on_vm_start` / `on_configure`) before it.
    pub startup: Program,
    /// The minimal program found by shrinking (or the original, when not shrunk).
    pub program: Program,
    pub shape: Option<Shape>,
    pub diffs: Vec<FieldDiff>,
}

/// Per (call, phase): steps generated, steps Envoy ran, steps on which the proxies differed.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    pub generated: usize,
    pub ran: usize,
    pub divergent: usize,
    pub documented: usize,
}

#[derive(Debug, Default)]
pub struct FuzzResult {
    pub seed: u64,
    pub programs: usize,
    pub divergences: Vec<Divergence>,
    /// Divergent programs beyond those shrunk.
    pub more_divergent: usize,
    pub coverage: BTreeMap<(Call, Phase), Cell>,
    /// How often each documented difference accepted something.
    pub accepted: BTreeMap<String, usize>,
    pub restarts: usize,
    /// Restarts after a documented difference left the hosts' shared state apart ([`Noted::apart`]).
    pub resyncs: usize,
    pub elapsed: Duration,
}

struct Proxies {
    envoy: Envoy,
    host_sim: HostSim,
}

struct World {
    echo: EchoServer,
    wasm: std::path::PathBuf,
    template: String,
    documented: Vec<Documented>,
}

impl World {
    async fn start_proxies(&self, startup: &Program) -> anyhow::Result<Proxies> {
        let mut vars = Vars::new();
        vars.insert("LISTENER_PORT".into(), "0".into());
        vars.insert("ADMIN_PORT".into(), "0".into());
        vars.insert("PLAIN_PORT".into(), self.echo.port().to_string());
        vars.insert("FUZZ_WASM".into(), self.wasm.to_string_lossy().into_owned());
        vars.insert("STARTUP".into(), program::to_hex(&startup.encode()));
        let yaml = template::render(&self.template, &vars)?;
        // The wasm component at info, host-sim's default: guests read it with proxy_get_log_level.
        let envoy = Envoy::start_with(&yaml, 1, "wasm:info").await?;
        let host_sim = HostSim::start_with_workers(&yaml, 1)?;
        Ok(Proxies { envoy, host_sim })
    }
}

/// Replaces the leading `~` of per-program names with the program's id.
fn scoped(mut steps: Vec<Step>, id: u32) -> Vec<Step> {
    let scoped_bufs = |call: Call| -> &'static [usize] {
        match call {
            Call::GetSharedData
            | Call::SetSharedData
            | Call::RegisterSharedQueue
            | Call::DefineMetric => &[0],
            Call::ResolveSharedQueue => &[1],
            _ => &[],
        }
    };
    for step in &mut steps {
        for &k in scoped_bufs(step.call) {
            if let Some(b) = step.bufs.get_mut(k) {
                if b.first() == Some(&b'~') {
                    let mut named = format!("p{id}.").into_bytes();
                    named.extend_from_slice(&b[1..]);
                    *b = named;
                }
            }
        }
    }
    steps
}

fn request_bytes(shape: &Shape, hex: &str) -> Vec<u8> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: fuzz.test\r\nx-echo-close: 1\r\n{PROGRAM_HEADER}: {hex}\r\n",
        shape.method, shape.path
    );
    if shape.response_trailers {
        // hyper writes trailers only to a client that said it takes them.
        head.push_str("te: trailers\r\nx-echo-trailers: 1\r\n");
    }
    let mut out = Vec::new();
    match (&shape.body, shape.trailers) {
        (None, _) => {
            head.push_str("\r\n");
            out.extend_from_slice(head.as_bytes());
        }
        (Some(body), false) => {
            head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(body);
        }
        (Some(body), true) => {
            // Declared in `trailer`, as a sender should (RFC 9110 6.6.2): hyper writes no undeclared trailer.
            head.push_str("transfer-encoding: chunked\r\ntrailer: x-trailer\r\n\r\n");
            out.extend_from_slice(head.as_bytes());
            if !body.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\nx-trailer: t\r\n\r\n");
        }
    }
    out
}

async fn fetch_report(proxy: &dyn Proxy, id: u32) -> Result<(Vec<Record>, bool), String> {
    let raw = format!("GET / HTTP/1.1\r\nhost: fuzz.test\r\n{FETCH_HEADER}: {id}\r\n\r\n");
    let deadline = Instant::now() + REPORT_WAIT;
    loop {
        let response = client::exchange(proxy.listener(), raw.as_bytes(), false)
            .await
            .map_err(|e| format!("fetching the report: {e}"))?;
        if response.status != 200 {
            return Err(format!(
                "fetching the report: {} {}",
                response.status,
                response.body_text()
            ));
        }
        let complete = response.header(COMPLETE_HEADER) == Some("1");
        if complete || Instant::now() >= deadline {
            let records = Record::decode_all(&response.body).map_err(|e| e.to_string())?;
            return Ok((records, complete));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run_on(proxy: &dyn Proxy, program: &Program, shape: Option<&Shape>) -> Outcome {
    let mut own_ports = vec![proxy.listener().port(), proxy.admin().port()];
    let response = match shape {
        None => Err("(startup program: no request)".to_string()),
        Some(shape) => {
            let raw = request_bytes(shape, &program::to_hex(&program.encode()));
            match client::exchange_from(proxy.listener(), &raw, REQUEST_TIMEOUT).await {
                Ok((response, port)) => {
                    own_ports.push(port);
                    Ok(response)
                }
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let report = fetch_report(proxy, program.id).await;
    Outcome {
        response,
        report,
        own_ports,
    }
}

struct Compared {
    unexplained: Vec<FieldDiff>,
    /// Differences a documented entry accepts, with the entry's id.
    accepted: Vec<(String, FieldDiff)>,
}

fn compare_outcomes(
    world: &World,
    program: &Program,
    shape: Option<&Shape>,
    envoy: &Outcome,
    host_sim: &Outcome,
) -> Compared {
    let e = render::fields(program, envoy);
    let h = render::fields(program, host_sim);
    let mut diffs = compare::diff(&e, &h);
    // The order only says something when both saw the same records.
    if diffs.iter().any(|d| d.field != "order") {
        diffs.retain(|d| d.field != "order");
    }
    let mut unexplained = Vec::new();
    let mut accepted = Vec::new();
    let case = case_id(program, shape);
    for d in diffs {
        match world.documented.iter().find(|doc| doc.accepts(&case, &d)) {
            Some(doc) => accepted.push((doc.id.clone(), d)),
            None => unexplained.push(d),
        }
    }
    Compared {
        unexplained,
        accepted,
    }
}

async fn run_both(p: &Proxies, program: &Program, shape: Option<&Shape>) -> (Outcome, Outcome) {
    tokio::join!(
        run_on(&p.envoy, program, shape),
        run_on(&p.host_sim, program, shape)
    )
}

/// Whether either proxy's guest stopped answering (its VM failed): later programs would all
/// differ for that one reason, so the proxies restart.
fn broken(o: &Outcome) -> bool {
    o.report.is_err()
}

/// The documented differences that concern the fuzzer.
pub fn fuzz_differences(all: Vec<Documented>) -> Vec<Documented> {
    all.into_iter()
        .filter(|d| d.cases.iter().any(|c| c.starts_with(CASE_ID)))
        .collect()
}

pub async fn run(config: &Config) -> anyhow::Result<FuzzResult> {
    let started = Instant::now();
    let wasm = tokio::task::spawn_blocking(|| wasm::build_guest("abi-fuzz")).await??;
    let dir = crate::fidelity::run::fidelity_dir();
    let world = World {
        echo: EchoServer::plain("plain").await?,
        wasm,
        template: std::fs::read_to_string(dir.join("templates").join("abi_fuzz.yaml"))?,
        documented: fuzz_differences(differences::load(&dir.join("differences.yaml"))?),
    };
    let mut rng_seed = [0u8; 32];
    rng_seed[..8].copy_from_slice(&config.seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &rng_seed),
    );
    let case_strategy = generate::case();
    let startup_strategy = generate::startup_steps();
    let mut result = FuzzResult {
        seed: config.seed,
        ..FuzzResult::default()
    };
    if let Some(text) = &config.replay {
        let (program, shape) = parse_replay(text)?;
        let startup = Program::default();
        let proxies = world.start_proxies(&startup).await?;
        let (e, h) = run_both(&proxies, &program, Some(&shape)).await;
        let unexplained =
            note_outcome(&world, &mut result, &program, Some(&shape), &e, &h).unexplained;
        println!(
            "envoy:    {:#?}\nhost-sim: {:#?}",
            render::fields(&program, &e),
            render::fields(&program, &h)
        );
        if broken(&e) {
            report_crash(&proxies.envoy);
        }
        if !unexplained.is_empty() {
            result.divergences.push(Divergence {
                index: 0,
                startup,
                program,
                shape: Some(shape),
                diffs: unexplained,
            });
        }
        result.programs = 1;
        result.elapsed = started.elapsed();
        return Ok(result);
    }
    let per_epoch = config.programs.div_ceil(config.epochs.max(1)).max(1);
    let mut next_id: u32 = 1;
    let mut index = 0;
    while index < config.programs {
        let startup = Program {
            id: STARTUP_PROGRAM,
            steps: startup_strategy
                .new_tree(&mut runner)
                .map_err(|e| anyhow::anyhow!("generating: {e}"))?
                .current(),
        };
        let epoch_end = (index + per_epoch).min(config.programs);
        if epoch_end <= config.from {
            while index < epoch_end {
                case_strategy
                    .new_tree(&mut runner)
                    .map_err(|e| anyhow::anyhow!("generating: {e}"))?;
                next_id += 1;
                index += 1;
            }
            continue;
        }
        let mut proxies = world.start_proxies(&startup).await?;
        let (e, h) = run_both(&proxies, &startup, None).await;
        let unexplained = note_outcome(&world, &mut result, &startup, None, &e, &h).unexplained;
        if !unexplained.is_empty() {
            result.divergences.push(Divergence {
                index,
                startup: startup.clone(),
                program: startup.clone(),
                shape: None,
                diffs: unexplained,
            });
        }
        while index < epoch_end {
            let mut tree = case_strategy
                .new_tree(&mut runner)
                .map_err(|e| anyhow::anyhow!("generating: {e}"))?;
            let case = tree.current();
            let program = Program {
                id: next_id,
                steps: scoped(case.steps.clone(), next_id),
            };
            next_id += 1;
            let (e, h) = run_both(&proxies, &program, Some(&case.shape)).await;
            let Noted { unexplained, apart } =
                note_outcome(&world, &mut result, &program, Some(&case.shape), &e, &h);
            if config.trace {
                trace(&world, index, &case, &program, &e, &h);
            }
            let mut restart = broken(&e) || broken(&h);
            if apart && !restart {
                proxies = resync_proxies(&world, &mut result, proxies, &startup).await?;
            }
            if restart {
                eprintln!(
                    "abi fuzz: program {index} broke {}: DFP_ABI_FUZZ_REPLAY='{}'",
                    if broken(&e) { "Envoy" } else { "host-sim" },
                    replay_text(&program, &case.shape)
                );
            }
            if !unexplained.is_empty() {
                if result.divergences.len() < SHRUNK_DIVERGENCES {
                    if restart {
                        proxies = restart_proxies(&world, &mut result, proxies, &startup).await?;
                        restart = false;
                    }
                    let found = Divergence {
                        index,
                        startup: startup.clone(),
                        program: program.clone(),
                        shape: Some(case.shape.clone()),
                        diffs: unexplained,
                    };
                    let minimal = shrink(
                        &world,
                        &mut proxies,
                        &mut result,
                        &startup,
                        &mut tree,
                        &mut next_id,
                        found,
                    )
                    .await?;
                    result.divergences.push(minimal);
                } else {
                    // Not shrunk, but named, so a long run's every divergence can be replayed.
                    let fields: Vec<&str> = unexplained.iter().map(|d| d.field.as_str()).collect();
                    eprintln!(
                        "abi fuzz: program {index} diverged in {fields:?}: DFP_ABI_FUZZ_REPLAY='{}'",
                        replay_text(&program, &case.shape)
                    );
                    result.more_divergent += 1;
                }
            }
            if restart {
                proxies = restart_proxies(&world, &mut result, proxies, &startup).await?;
            }
            index += 1;
            result.programs = index;
            if index % PROGRESS_EVERY == 0 {
                eprintln!(
                    "abi fuzz: {index} of {} programs, {} divergent, {:.0}s",
                    config.programs,
                    result.divergences.len() + result.more_divergent,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    result.elapsed = started.elapsed();
    Ok(result)
}

/// One line per documented difference of a program: what a long run's state drift is traced back with.
fn trace(
    world: &World,
    index: usize,
    case: &Case,
    program: &Program,
    envoy: &Outcome,
    host_sim: &Outcome,
) {
    let accepted = compare_outcomes(world, program, Some(&case.shape), envoy, host_sim).accepted;
    if !accepted.is_empty() {
        eprintln!(
            "abi fuzz trace: program {index} (id {}): DFP_ABI_FUZZ_REPLAY='{}'",
            program.id,
            replay_text(program, &case.shape)
        );
    }
    for (id, d) in accepted {
        eprintln!(
            "abi fuzz trace: program {index} (id {}): {} accepted by {id}: envoy {:?} host-sim {:?}",
            program.id, d.field, d.envoy, d.host_sim
        );
    }
}

/// Starts both proxies afresh, so what one program left apart does not reach the next.
async fn resync_proxies(
    world: &World,
    result: &mut FuzzResult,
    old: Proxies,
    startup: &Program,
) -> anyhow::Result<Proxies> {
    drop(old);
    result.resyncs += 1;
    world.start_proxies(startup).await
}

async fn restart_proxies(
    world: &World,
    result: &mut FuzzResult,
    old: Proxies,
    startup: &Program,
) -> anyhow::Result<Proxies> {
    report_crash(&old.envoy);
    drop(old);
    result.restarts += 1;
    world.start_proxies(startup).await
}

/// Says why Envoy stopped answering, if its log says: a crash is a finding of its own (the generator must then
/// avoid that call, and host-sim/ABI.md name it).
fn report_crash(envoy: &Envoy) {
    let crash: Vec<String> = envoy
        .log()
        .lines()
        .filter(|l| l.contains("[critical]") || l.contains("Caught") || l.contains("assert"))
        .take(12)
        .map(str::to_string)
        .collect();
    if !crash.is_empty() {
        eprintln!(
            "abi fuzz: Envoy's log before the restart:\n{}",
            crash.join("\n")
        );
    }
}

/// Compares one program's outcomes and updates the coverage; returns what is unexplained.
fn note_outcome(
    world: &World,
    result: &mut FuzzResult,
    program: &Program,
    shape: Option<&Shape>,
    envoy: &Outcome,
    host_sim: &Outcome,
) -> Noted {
    let compared = compare_outcomes(world, program, shape, envoy, host_sim);
    for step in &program.steps {
        result
            .coverage
            .entry((step.call, step.phase))
            .or_default()
            .generated += 1;
    }
    if let Ok((records, _)) = &envoy.report {
        for r in records {
            if let Record::Step { index, call, .. } = r {
                if let Some(step) = program.steps.get(usize::from(*index)) {
                    result.coverage.entry((*call, step.phase)).or_default().ran += 1;
                }
            }
        }
    }
    for (id, _) in &compared.accepted {
        *result.accepted.entry(id.clone()).or_default() += 1;
    }
    let mark =
        |result: &mut FuzzResult, diffs: &mut dyn Iterator<Item = &FieldDiff>, documented: bool| {
            for d in diffs {
                if let Some((call, phase)) = step_of(&d.field, program) {
                    let cell = result.coverage.entry((call, phase)).or_default();
                    if documented {
                        cell.documented += 1;
                    } else {
                        cell.divergent += 1;
                    }
                }
            }
        };
    mark(result, &mut compared.accepted.iter().map(|(_, d)| d), true);
    mark(result, &mut compared.unexplained.iter(), false);
    let apart = compared.accepted.iter().any(|(_, d)| ran_in_one_proxy(d));
    Noted {
        unexplained: compared.unexplained,
        apart,
    }
}

/// What a program left behind, as far as the run cares.
struct Noted {
    unexplained: Vec<FieldDiff>,
    /// A documented difference ran a step in one proxy only: the hosts' shared counters (queue tokens, CAS
    /// values, metric ids, call tokens) may now be apart, and every later program would show it (measured: one
    /// `register_shared_queue` behind an unwritable header put every token of the next 250 programs one apart).
    apart: bool,
}

fn ran_in_one_proxy(d: &FieldDiff) -> bool {
    d.field.starts_with("step:") && (d.envoy.is_none() || d.host_sim.is_none())
}

/// The (call, phase) a `step:` field is about.
fn step_of(field: &str, program: &Program) -> Option<(Call, Phase)> {
    let rest = field.strip_prefix("step:")?;
    let index: usize = rest.split('#').nth(1)?.split('.').next()?.parse().ok()?;
    let step = program.steps.get(index)?;
    Some((step.call, step.phase))
}

/// Simplifies a divergent case while it still diverges (proptest's loop: simplify after a
/// failure, complicate after a pass); returns the smallest divergent one seen.
#[allow(clippy::too_many_arguments)]
async fn shrink(
    world: &World,
    proxies: &mut Proxies,
    result: &mut FuzzResult,
    startup: &Program,
    tree: &mut impl ValueTree<Value = Case>,
    next_id: &mut u32,
    original: Divergence,
) -> anyhow::Result<Divergence> {
    let mut best = original;
    if !tree.simplify() {
        return Ok(best);
    }
    for _ in 0..SHRINK_RUNS {
        let candidate = tree.current();
        let program = Program {
            id: *next_id,
            steps: scoped(candidate.steps.clone(), *next_id),
        };
        *next_id += 1;
        let (e, h) = run_both(proxies, &program, Some(&candidate.shape)).await;
        let compared = compare_outcomes(world, &program, Some(&candidate.shape), &e, &h);
        if broken(&e) || broken(&h) {
            let old = std::mem::replace(proxies, world.start_proxies(startup).await?);
            drop(old);
            result.restarts += 1;
        }
        let more = if compared.unexplained.is_empty() {
            tree.complicate()
        } else {
            best = Divergence {
                index: best.index,
                startup: best.startup.clone(),
                program,
                shape: Some(candidate.shape),
                diffs: compared.unexplained,
            };
            tree.simplify()
        };
        if !more {
            break;
        }
    }
    Ok(best)
}
