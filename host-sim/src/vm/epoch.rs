//! The clock behind call deadlines: one thread per engine advances wasmtime's epoch every
//! [`TICK`]; each guest call gets a deadline a number of ticks ahead (see
//! [`deadline_ticks`]), and running compiled code checks it at function entries and loop
//! back-edges, so even `loop { }` in a guest is stopped.

use std::time::Duration;

use wasmtime::Engine;

/// How often the epoch advances: the granularity of call deadlines.
pub(crate) const TICK: Duration = Duration::from_millis(5);

/// Ticks that stand for "no deadline" (far beyond any uptime, and safe to add to the current
/// epoch without overflow).
const NO_DEADLINE: u64 = u64::MAX / 4;

/// Starts the thread that advances `engine`'s epoch. It holds only a weak reference and ends
/// once the engine is dropped.
pub(crate) fn start_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("host-sim-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .map(|_| ())
}

/// The epoch delta for a call that may run for `deadline`: rounded up to whole ticks, plus
/// one because the current tick may be about to end.
pub(crate) fn deadline_ticks(deadline: Option<Duration>) -> u64 {
    match deadline {
        None => NO_DEADLINE,
        Some(d) => {
            let tick = TICK.as_nanos();
            let ticks = d.as_nanos().div_ceil(tick);
            u64::try_from(ticks)
                .unwrap_or(NO_DEADLINE)
                .saturating_add(1)
                .min(NO_DEADLINE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_whole_ticks_plus_one() {
        assert_eq!(deadline_ticks(Some(Duration::ZERO)), 1);
        assert_eq!(deadline_ticks(Some(TICK)), 2);
        assert_eq!(deadline_ticks(Some(TICK + Duration::from_nanos(1))), 3);
        assert_eq!(deadline_ticks(Some(Duration::from_secs(1))), 201);
        assert_eq!(deadline_ticks(None), NO_DEADLINE);
        assert_eq!(deadline_ticks(Some(Duration::MAX)), NO_DEADLINE);
    }
}
