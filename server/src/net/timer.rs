//! The timer hyper runs its HTTP/2 keep-alive on: tokio's, with a coarse clock.
//!
//! hyper asks its timer for the time on every HTTP/2 frame it reads and every time it polls a
//! connection, to know when the peer was last heard from (the keep-alive pings). Four reads a
//! call with a precise clock cost more than the keep-alive itself: a precise read goes to the
//! CPU's time-stamp counter, which is slow on virtual machines (about 23 ns here). The kernel's
//! coarse clock (`CLOCK_MONOTONIC_COARSE`, through `coarsetime`) is a plain memory read, at the
//! price of being off by up to a scheduler tick (1 to 10 ms): nothing to a keep-alive interval
//! counted in seconds.

use std::{
    pin::Pin,
    time::{Duration, Instant},
};

use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioTimer;

/// [`TokioTimer`] whose [`Timer::now`] reads the coarse clock (see the module's doc).
#[derive(Debug, Clone)]
pub(crate) struct CoarseTimer {
    timer: TokioTimer,
    /// The same moment on both clocks: coarse readings are turned into [`Instant`]s from here.
    origin: (Instant, coarsetime::Instant),
}

impl CoarseTimer {
    pub(crate) fn new() -> Self {
        Self {
            timer: TokioTimer::new(),
            origin: (
                Instant::now(),
                coarsetime::Instant::now_without_cache_update(),
            ),
        }
    }
}

impl Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.timer.sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.timer.sleep_until(deadline)
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        self.timer.reset(sleep, new_deadline);
    }

    fn now(&self) -> Instant {
        let (instant, coarse) = self.origin;
        let elapsed = coarsetime::Instant::now_without_cache_update().duration_since(coarse);
        instant + Duration::from(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_keeps_time_with_the_precise_one() {
        let timer = CoarseTimer::new();
        for _ in 0..3 {
            let before = Instant::now();
            std::thread::sleep(Duration::from_millis(30));
            let coarse = timer.now();
            let after = Instant::now();
            // Within a scheduler tick (at most 10 ms at 100 Hz) of the precise clock, either
            // way: the origin's coarse reading may itself lag by one.
            let tick = Duration::from_millis(20);
            assert!(coarse <= after + tick, "{coarse:?} is ahead of {after:?}");
            assert!(
                coarse + tick >= before + Duration::from_millis(30),
                "{coarse:?} lags {before:?} + 30 ms"
            );
        }
    }
}
