//! A coarse clock for the timekeeping a server does on every frame and every call.
//!
//! Reading the precise monotonic clock costs about 26 ns on the test VM (the `tsc` clock
//! source, through the vDSO); the kernel's coarse one (`CLOCK_MONOTONIC_COARSE`) costs 4 ns,
//! and is the time of the last timer tick (4 ms apart there), so it runs up to a tick late, a
//! little more while the kernel is late updating it. A served call read the precise clock
//! about ten times, most of them in hyper's keepalive bookkeeping, which notes when each frame
//! arrives so it pings only a silent client. Timers of seconds need no more than that, so
//! that bookkeeping, and the connection guard's record of when calls end and answers start
//! waiting, read this clock. Deadlines of calls do not: they read the precise one.

use std::{
    cell::Cell,
    pin::Pin,
    sync::LazyLock,
    time::{Duration, Instant},
};

use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioTimer;

/// The coarse clock's tick: how late it runs behind the precise clock, short of the kernel
/// running late itself (zero where there is no coarse clock and the precise one is read).
pub(crate) static RESOLUTION: LazyLock<Duration> = LazyLock::new(coarse::resolution);

/// The coarse clock's reading and the precise clock's, taken together once: an `Instant` is
/// this one plus how far the coarse clock has moved since.
static ORIGIN: LazyLock<(Instant, u64)> = LazyLock::new(|| (Instant::now(), coarse::nanos()));

/// The time, within a tick or so either way (the origin's two readings are up to a tick
/// apart too).
pub(crate) fn now() -> Instant {
    thread_local! {
        /// The last reading and its `Instant`: the coarse clock moves only once a tick, and
        /// hyper reads it several times a call.
        static LAST: Cell<Option<(u64, Instant)>> = const { Cell::new(None) };
    }
    let nanos = coarse::nanos();
    LAST.with(|last| match last.get() {
        Some((read, instant)) if read == nanos => instant,
        _ => {
            let (origin, origin_nanos) = *ORIGIN;
            let instant = origin + Duration::from_nanos(nanos.saturating_sub(origin_nanos));
            last.set(Some((nanos, instant)));
            instant
        }
    })
}

/// The time in nanoseconds from an origin of the clock's own, up to a tick or so late: for
/// intervals, without the arithmetic of an `Instant`.
pub(crate) fn nanos() -> u64 {
    coarse::nanos()
}

#[cfg(target_os = "linux")]
mod coarse {
    use std::time::Duration;

    /// `CLOCK_MONOTONIC_COARSE` runs on the same timeline as `Instant` (`CLOCK_MONOTONIC`),
    /// up to a tick behind it.
    pub(super) fn nanos() -> u64 {
        let ts = read(|ts| {
            // SAFETY: `ts` is a valid, writable timespec. On failure (a kernel without the
            // clock) it stays zero, and times read as the origin.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, ts) }
        });
        (ts.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec as u64)
    }

    pub(super) fn resolution() -> Duration {
        // SAFETY: as above.
        let ts = read(|ts| unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, ts) });
        match ts.tv_sec == 0 && ts.tv_nsec == 0 {
            true => Duration::from_millis(10), // unknown: a typical tick, and then some
            false => Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
        }
    }

    fn read(call: impl FnOnce(&mut libc::timespec) -> libc::c_int) -> libc::timespec {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        call(&mut ts);
        ts
    }
}

#[cfg(not(target_os = "linux"))]
mod coarse {
    use std::{
        sync::LazyLock,
        time::{Duration, Instant},
    };

    static START: LazyLock<Instant> = LazyLock::new(Instant::now);

    pub(super) fn nanos() -> u64 {
        START.elapsed().as_nanos() as u64
    }

    pub(super) fn resolution() -> Duration {
        Duration::ZERO
    }
}

/// hyper's timer on tokio, with the coarse clock for `now`: what hyper's HTTP/2 keepalive
/// reads on every frame it receives and every time it polls a connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct CoarseTimer(TokioTimer);

impl Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.0.sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.0.sleep_until(deadline)
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        self.0.reset(sleep, new_deadline);
    }

    fn now(&self) -> Instant {
        now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How far apart the clocks may be in this test: a tick, and the kernel running late in
    /// updating the coarse clock on a busy or idle machine.
    const SLACK: Duration = Duration::from_millis(50);

    #[test]
    fn the_coarse_clock_keeps_to_the_precise_one() {
        let resolution = *RESOLUTION;
        assert!(resolution < SLACK, "resolution {resolution:?}");
        let (mut last, mut last_nanos) = (now(), nanos());
        let (start, start_nanos) = (Instant::now(), nanos());
        for _ in 0..500 {
            let before = Instant::now();
            let (coarse, coarse_nanos) = (now(), nanos());
            let after = Instant::now();
            assert!(coarse >= last, "the coarse clock went back");
            assert!(coarse_nanos >= last_nanos, "the coarse clock went back");
            assert!(
                coarse + SLACK >= before && coarse <= after + SLACK,
                "coarse {coarse:?} not within {SLACK:?} of [{before:?}, {after:?}]"
            );
            let interval = Duration::from_nanos(coarse_nanos - start_nanos);
            assert!(
                interval + SLACK >= before - start && interval <= after - start + SLACK,
                "interval {interval:?}, precise {:?}..{:?}",
                before - start,
                after - start
            );
            (last, last_nanos) = (coarse, coarse_nanos);
            std::thread::sleep(Duration::from_micros(400));
        }
        // And it moves: 500 sleeps of 0.4 ms span many ticks.
        assert!(nanos() > start_nanos, "the coarse clock stood still");
    }
}
