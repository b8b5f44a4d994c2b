//! Builds a proxy-wasm filter crate for `wasm32-unknown-unknown`, so a test can load the module it is testing.
//!
//! A filter's own `cargo test` runs natively; the module under test has to be built for wasm first. This runs that
//! nested `cargo build --release --target wasm32-unknown-unknown` into a target directory of its own (the outer
//! `cargo test` holds the lock on the main one), adds the wasm target with rustup when the toolchain lacks it, and
//! returns the `.wasm` path. Build once per test process (e.g. in a `OnceLock`), then load the bytes with
//! [`crate::harness::Harness::builder`].
//!
//! ```no_run
//! let wasm = host_sim::guest_build::build_wasm("my-filter").expect("the filter builds for wasm32");
//! let module = std::fs::read(wasm).expect("reads the module");
//! let harness = host_sim::harness::Harness::builder(&module).build().expect("loads");
//! # drop(harness);
//! ```

#[path = "../build/wasm_target.rs"]
mod wasm_target;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target proxy-wasm modules are built for (Envoy loads `wasm32-wasip1` modules too).
pub const WASM32: &str = "wasm32-unknown-unknown";

#[derive(Debug, thiserror::Error)]
pub enum GuestBuildError {
    #[error("{0}")]
    Toolchain(String),
    #[error("running cargo to build {package}: {source}")]
    Spawn {
        package: String,
        source: std::io::Error,
    },
    #[error("building {package} for {target} failed ({status}):\n{stderr}")]
    Failed {
        package: String,
        target: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cargo built {package} but left no {}; is its [lib] a cdylib named after the package?", .path.display())]
    NoModule { package: String, path: PathBuf },
    #[error("cannot tell the target directory from the test binary's path {}", .0.display())]
    NoTargetDir(PathBuf),
}

/// Builds `package` of the workspace cargo finds from the current directory (a test's is its package root) into
/// `wasm-fixtures` beside the running test binary's target directory, and returns the module's path.
pub fn build_wasm(package: &str) -> Result<PathBuf, GuestBuildError> {
    // A test binary runs from `<target>/<profile>/deps/`: its target directory honours CARGO_TARGET_DIR.
    let exe = std::env::current_exe().map_err(|source| GuestBuildError::Spawn {
        package: package.to_string(),
        source,
    })?;
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| GuestBuildError::NoTargetDir(exe.clone()))?;
    let workspace = std::env::current_dir().map_err(|source| GuestBuildError::Spawn {
        package: package.to_string(),
        source,
    })?;
    build_wasm_in(package, &workspace, &target.join("wasm-fixtures"))
}

/// Builds `package` of the workspace at `workspace` (release, [`WASM32`]) into `target_dir` and returns the `.wasm`.
pub fn build_wasm_in(
    package: &str,
    workspace: &Path,
    target_dir: &Path,
) -> Result<PathBuf, GuestBuildError> {
    build_packages(&[package], WASM32, workspace, target_dir)?;
    let path = module_path(target_dir, WASM32, package);
    if !path.is_file() {
        return Err(GuestBuildError::NoModule {
            package: package.to_string(),
            path,
        });
    }
    Ok(path)
}

/// Where cargo puts `package`'s release module for `target` under `target_dir`: the package name with `-` as `_`,
/// as cargo names a cdylib without a `[lib] name` of its own.
pub fn module_path(target_dir: &Path, target: &str, package: &str) -> PathBuf {
    target_dir
        .join(target)
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_")))
}

/// Builds `packages` of the workspace at `workspace` for `target` (release) into `target_dir`, in one cargo run.
pub fn build_packages(
    packages: &[&str],
    target: &str,
    workspace: &Path,
    target_dir: &Path,
) -> Result<(), GuestBuildError> {
    let names = packages.join(", ");
    wasm_target::ensure(target).map_err(GuestBuildError::Toolchain)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--release", "--target", target])
        .arg("--target-dir")
        .arg(target_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    let output = command
        // The outer build's flags and wrappers (clippy, coverage) are for the host, not for this wasm.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .map_err(|source| GuestBuildError::Spawn {
            package: names.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(GuestBuildError::Failed {
            package: names,
            target: target.to_string(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(())
}
