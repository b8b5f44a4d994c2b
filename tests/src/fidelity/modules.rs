//! Modules this repository did not write, built from sources a clean machine fetches through the
//! package registries, for the fidelity variants that name one (`module:` in variants.yaml):
//!
//! | name | what | built by |
//! | --- | --- | --- |
//! | `sdk-examples` | the Rust SDK's examples in their own style (`guests/sdk-examples`) | cargo, like the other guests |
//! | `as_filter` | an AssemblyScript filter on `@solo-io/proxy-runtime` (`guests/assemblyscript/assembly/filter.ts`) | `guests/assemblyscript/build.sh` (npm) |
//! | `as_readme_add_header` | that SDK's README example, taken from its npm package at build time | the same |
//!
//! Each is built once per process into `target/wasm-fixtures`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use crate::wasm::{build_guest, workspace_root};

/// The modules `build.sh` writes.
const ASSEMBLYSCRIPT_MODULES: [&str; 2] = ["as_filter", "as_readme_add_header"];

/// The `.wasm` of module `name`, built on first use.
pub fn module_wasm(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: Mutex<Option<HashMap<String, Result<PathBuf, String>>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(result) = built.get(name) {
        return result.clone().map_err(anyhow::Error::msg);
    }
    let result = build(name).map_err(|e| format!("{e:#}"));
    built.insert(name.to_string(), result.clone());
    result.map_err(anyhow::Error::msg)
}

fn build(name: &str) -> anyhow::Result<PathBuf> {
    match name {
        "sdk-examples" => build_guest("sdk-examples"),
        _ if ASSEMBLYSCRIPT_MODULES.contains(&name) => {
            let out = build_assemblyscript()?;
            let wasm = out.join(format!("{name}.wasm"));
            anyhow::ensure!(
                wasm.is_file(),
                "guests/assemblyscript/build.sh wrote no {}",
                wasm.display()
            );
            Ok(wasm)
        }
        _ => anyhow::bail!(
            "unknown module {name:?} (known: sdk-examples, {})",
            ASSEMBLYSCRIPT_MODULES.join(", ")
        ),
    }
}

/// Runs `guests/assemblyscript/build.sh` (npm ci from the lockfile, then asc) into
/// `target/wasm-fixtures/assemblyscript`; the script skips what is up to date.
fn build_assemblyscript() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let out = root
        .join("target")
        .join("wasm-fixtures")
        .join("assemblyscript");
    let script = root.join("guests").join("assemblyscript").join("build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .output()
        .map_err(|e| anyhow::anyhow!("running {}: {e}", script.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed ({}); it needs Node.js and npm, and the npm registry for the first build:\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(out)
}
