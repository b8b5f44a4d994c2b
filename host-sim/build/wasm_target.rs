//! Makes sure the toolchain in use can build for a wasm target before a nested `cargo build --target` needs it.
//!
//! `rust-toolchain.toml` names the wasm targets, but rustup adds them only when it installs the toolchain itself: a
//! machine that already had the pinned toolchain has none, and the nested build then fails deep inside with
//! "can't find crate for `core`". So the builders (host-sim's build script, the test fixtures) ask first, add the
//! target with rustup when it is missing, and otherwise fail with one line naming the command that fixes it.
//! Shared by `#[path]`, so each builder has it without a dependency.

use std::path::PathBuf;
use std::process::Command;

/// Whether `target`'s standard library is installed in the sysroot of `rustc`.
fn installed(rustc: &str, target: &str) -> bool {
    Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
                .join("lib")
                .join("rustlib")
                .join(target)
                .join("lib")
                .is_dir()
        })
        .unwrap_or(false)
}

/// Ok when `target` can be built for, after `rustup target add` if it had to; else the one-line reason.
pub fn ensure(target: &str) -> Result<(), String> {
    // Cargo gives build scripts the compiler it uses; elsewhere the `rustc` rustup resolves for this directory.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    if installed(&rustc, target) {
        return Ok(());
    }
    let added = Command::new("rustup")
        .args(["target", "add", target])
        .status()
        .is_ok_and(|status| status.success());
    if added && installed(&rustc, target) {
        return Ok(());
    }
    Err(format!(
        "the Rust standard library for {target} is not installed and rustup could not add it: run `rustup target add {target}`"
    ))
}
