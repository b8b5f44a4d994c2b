//! Envoy fidelity: one scenario table run against host-sim and real Envoy with the same
//! bootstrap YAML, the same wasm and the same requests; any difference fails unless the
//! documented list (`tests/fidelity/differences.yaml`) accepts it. See `docs/fidelity.md`
//! (written by the runner) and `tests/README.md`.
//!
//! | module | concern |
//! | --- | --- |
//! | `model` | the table as data: variants, cases (DNS records, upstream behaviour, masks) |
//! | `patch` | a variant's changes to the rendered bootstrap, by path |
//! | `scripted` | the scripted upstream (echo, reset, close, delay, respond, truncate) and a refusing port |
//! | `fixtures` | the extra fixtures: scripted upstream, TLS servers with other certificates, the ABI probe |
//! | `modules` | modules this repository did not write: the SDK-style Rust guest, the AssemblyScript ones (npm) |
//! | `observe` | one case against one proxy: everything observable about it |
//! | `expect` | a case's expectations on one observation |
//! | `normalise` | an observation as fields, with only what must differ masked |
//! | `compare` | field-by-field differences of two observations |
//! | `differences` | the documented intentional differences and their matching |
//! | `run` | the runner: proxies per variant, cases on both, outcomes |
//! | `report` | the markdown report |

pub mod compare;
pub mod differences;
pub mod expect;
pub mod fixtures;
pub mod model;
pub mod modules;
pub mod normalise;
pub mod observe;
pub mod patch;
pub mod report;
pub mod run;
pub mod scripted;

pub use run::{run, RunResult};
