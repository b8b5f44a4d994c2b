//! A proxy-wasm guest for differential ABI fuzzing. It imports the hostcalls directly (no SDK:
//! an SDK wrapper panics on a status it does not expect, and a trap would end the comparison),
//! runs a *program* of hostcalls given to it by the request or its configuration, and records
//! every status, out-parameter and returned byte string.
//!
//! [`program`] is the wire format, shared with the generator and runner in `tests/`
//! (`tests/src/abi_fuzz/`); `guest` is the interpreter, built for wasm32 only.

pub mod program;

#[cfg(target_arch = "wasm32")]
mod guest;
