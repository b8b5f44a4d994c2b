//! Differential ABI fuzzing: generated programs of raw hostcalls (`guests/abi-fuzz`) run in real
//! Envoy and in host-sim from the same YAML; every status, out-parameter and returned byte must
//! agree unless `tests/fidelity/differences.yaml` documents the difference (case `abi-fuzz`).
//! See docs/fidelity.md and the generated docs/abi-coverage.md.
//!
//! | module | concern |
//! | --- | --- |
//! | `generate` | programs and request shapes as proptest strategies |
//! | `case_id` | a program's case id: the tags of what it does that the documented differences speak of |
//! | `render` | one proxy's outcome as named, masked fields |
//! | `run` | the proxies, the programs through both, comparison and shrinking |
//! | `report` | the coverage table and divergences as markdown |

pub mod case_id;
pub mod generate;
pub mod render;
pub mod report;
pub mod run;

pub use run::{run, Config, FuzzResult};
