//! The filter under test, built once per test process.
//!
//! It is built with the same cargo that runs the tests, into its own target dir: the outer
//! `cargo test` may hold the lock on the main one. `DFP_WASM=<file>` skips the build and uses a
//! prebuilt module instead.

use std::path::{Path, PathBuf};
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
/// its `.wasm`. Callers cache the result per process.
pub fn build_guest(package: &str) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    Ok(host_sim::guest_build::build_wasm_in(
        package,
        &root,
        &root.join("target").join("wasm-fixtures"),
    )?)
}
