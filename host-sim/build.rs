//! Builds `dfp_filter.wasm` from the workspace's `filter/` crate and puts it in OUT_DIR, so the binary carries the
//! filter its embedded default configuration runs (`cargo run -p host-sim` works on a fresh checkout).
//!
//! The nested cargo uses its own target directory (the outer build holds the lock on the main one): the same
//! `target/wasm-fixtures` the test fixtures build guests into, so the filter is compiled once for both.
//! `DFP_FILTER_WASM=/path/to/dfp_filter.wasm` skips the nested build and embeds that file instead.

use std::env;
use std::path::PathBuf;
use std::process::Command;

#[path = "build/wasm_target.rs"]
mod wasm_target;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host-sim lives in the workspace root")
        .to_path_buf();
    let out =
        PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("dfp_filter.wasm");
    println!("cargo:rerun-if-env-changed=DFP_FILTER_WASM");
    println!("cargo:rerun-if-changed=../filter/src");
    println!("cargo:rerun-if-changed=../filter/Cargo.toml");
    println!("cargo:rerun-if-changed=../envoy-config/envoy.yaml");

    if let Ok(prebuilt) = env::var("DFP_FILTER_WASM") {
        std::fs::copy(&prebuilt, &out)
            .unwrap_or_else(|e| panic!("DFP_FILTER_WASM={prebuilt}: {e}"));
        return;
    }
    if let Err(reason) = wasm_target::ensure("wasm32-unknown-unknown") {
        eprintln!("error: {reason}");
        std::process::exit(1);
    }
    let target_dir = root.join("target").join("wasm-fixtures");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "dfp-filter",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags and wrappers (clippy, coverage) are for the host, not for this wasm.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MAKEFLAGS")
        .status()
        .expect("running cargo to build dfp_filter.wasm");
    assert!(
        status.success(),
        "building dfp_filter.wasm for embedding failed"
    );
    let built = target_dir.join("wasm32-unknown-unknown/release/dfp_filter.wasm");
    std::fs::copy(&built, &out).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
}
