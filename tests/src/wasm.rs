//! The filter under test, built once per test process.
//!
//! It is built with the same cargo that runs the tests, into its own target dir: the outer
//! `cargo test` may hold the lock on the main one. `DFP_WASM=<file>` skips the build and uses a
//! prebuilt module instead.

#[path = "../../host-sim/build/wasm_target.rs"]
mod wasm_target;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Path of the built `dfp_filter.wasm`; builds it on first use.
pub fn filter_wasm() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn build() -> anyhow::Result<PathBuf> {
    if let Some(prebuilt) = std::env::var_os("DFP_WASM") {
        let path = PathBuf::from(prebuilt);
        anyhow::ensure!(path.is_file(), "DFP_WASM={} is not a file", path.display());
        return Ok(path);
    }
    build_guest("dfp-filter")
}

/// Builds workspace package `package` for wasm32-unknown-unknown (release) into `target/wasm-fixtures` and returns
/// its `.wasm` (the package name with `-` as `_`). Callers cache the result per process.
pub fn build_guest(package: &str) -> anyhow::Result<PathBuf> {
    wasm_target::ensure("wasm32-unknown-unknown").map_err(anyhow::Error::msg)?;
    let root = workspace_root();
    let target_dir = root.join("target").join("wasm-fixtures");
    let output = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            package,
            "--target",
            "wasm32-unknown-unknown",
            "--target-dir",
        ])
        .arg(&target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()?;
    let file = format!("{}.wasm", package.replace('-', "_"));
    anyhow::ensure!(
        output.status.success(),
        "building {file} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let wasm = target_dir
        .join("wasm32-unknown-unknown")
        .join("release")
        .join(&file);
    anyhow::ensure!(wasm.is_file(), "cargo built no {}", wasm.display());
    Ok(wasm)
}
