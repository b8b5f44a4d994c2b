//! ABI tests: purpose-built guests (SDK-built probes, raw WAT modules, a wasip1 module)
//! exercise each hostcall family, the pause/continue paths, http calls, ticks, queues,
//! shared data, and hostile behaviour.

mod common;

#[path = "abi/hostile.rs"]
mod hostile;
#[path = "abi/sdk.rs"]
mod sdk;
#[path = "abi/wasi.rs"]
mod wasi;
