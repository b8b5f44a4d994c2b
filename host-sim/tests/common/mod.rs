//! Builds the test guests to wasm once per test process, into a separate target dir (the
//! outer `cargo test` may hold the lock on the main one), and hands out their bytes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use host_sim::vm::Runtime;

pub use host_sim::guest_build::WASM32;
pub const WASIP1: &str = "wasm32-wasip1";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-sim lives in the workspace root")
        .to_path_buf()
}

fn fixtures_dir() -> PathBuf {
    workspace_root().join("target").join("wasm-fixtures")
}

type Built = Result<(), String>;

/// Builds `packages` for `target` in release mode, once per (target, packages) per process.
fn build(target: &str, packages: &[&str]) -> Built {
    static BUILDS: OnceLock<Mutex<HashMap<String, Arc<OnceLock<Built>>>>> = OnceLock::new();
    let key = format!("{target}:{}", packages.join(","));
    let cell = {
        let mut map = BUILDS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().clone()
    };
    cell.get_or_init(|| {
        host_sim::guest_build::build_packages(packages, target, &workspace_root(), &fixtures_dir())
            .map_err(|e| e.to_string())
    })
    .clone()
}

/// The bytes of `package` built for `target` (its lib name is the package name with `_`).
pub fn guest(package: &str, target: &str) -> Vec<u8> {
    let group: &[&str] = match (package, target) {
        ("abi-probe" | "empty-filter", WASM32) => &["abi-probe", "empty-filter"],
        _ => std::slice::from_ref(&package),
    };
    if let Err(e) = build(target, group) {
        panic!("building guest {package} for {target} failed:\n{e}");
    }
    let file = host_sim::guest_build::module_path(&fixtures_dir(), target, package);
    std::fs::read(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
}

/// One runtime (engine + module cache) for the whole test binary.
pub fn runtime() -> Arc<Runtime> {
    host_sim::harness::shared_runtime().expect("wasmtime engine")
}
