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
    future::Future,
    pin::Pin,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    time::{Duration, Instant},
};

use hyper::rt::{Sleep, Timer};
use pin_project_lite::pin_project;

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

/// hyper's timer on tokio, with the coarse clock for `now` and [`QuietSleep`]s: what hyper's
/// HTTP/2 keepalive reads on every frame it receives and every time it polls a connection.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CoarseTimer;

impl Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(QuietSleep::new(tokio::time::sleep(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(QuietSleep::new(tokio::time::sleep_until(deadline.into())))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<QuietSleep>() {
            Some(sleep) => sleep.reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    fn now(&self) -> Instant {
        now()
    }
}

pin_project! {
    /// A tokio sleep that a task may poll as often as it likes for next to nothing.
    ///
    /// hyper's keepalive polls its sleep every time it polls a connection, a few times a call,
    /// and tokio's `Sleep` registers the polling task's waker with the timer each time (atomic
    /// writes, a waker cloned and dropped). This one hands tokio a waker of its own, once per
    /// deadline, which notes that the timer rang and wakes the task; until it rings, a poll
    /// only compares the task's waker with the one it saw last. (A coop-budget refusal of
    /// tokio's rings it too, so that one is polled again.)
    struct QuietSleep {
        #[pin]
        inner: tokio::time::Sleep,
        alarm: Arc<Alarm>,
        // `alarm` as a waker, made once.
        alarm_waker: Waker,
        // Whether `inner` was polled with `alarm_waker` since its deadline was last set.
        armed: bool,
        // The task's waker `alarm` wakes, as this sleep last saw it (compared without a lock).
        task: Option<Waker>,
    }
}

/// What tokio's timer wakes: it notes the ring and passes it on to the task.
#[derive(Debug, Default)]
struct Alarm {
    rang: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Alarm {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Noted before the task is looked up: a poll that stores a new task and then finds
        // `rang` unset is ordered (by the lock) before this lookup, which then finds it.
        self.rang.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = &*task {
            task.wake_by_ref();
        }
    }
}

impl QuietSleep {
    fn new(inner: tokio::time::Sleep) -> Self {
        let alarm = Arc::new(Alarm::default());
        Self {
            inner,
            alarm_waker: Waker::from(Arc::clone(&alarm)),
            alarm,
            armed: false,
            task: None,
        }
    }

    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        let this = self.project();
        this.inner.reset(deadline.into());
        // Asked afresh: cheap (hyper resets once a keepalive interval), and then nothing
        // rests on what tokio does with the waker it holds across a reset.
        *this.armed = false;
    }
}

impl Future for QuietSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if !this
            .task
            .as_ref()
            .is_some_and(|task| task.will_wake(cx.waker()))
        {
            let mut task = this.alarm.task.lock().unwrap_or_else(|e| e.into_inner());
            *task = Some(cx.waker().clone());
            *this.task = task.clone();
        }
        if *this.armed && !this.alarm.rang.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Cleared before tokio is asked, so a ring during the poll is not lost.
        this.alarm.rang.store(false, Ordering::Relaxed);
        let poll = this.inner.poll(&mut Context::from_waker(this.alarm_waker));
        // Once it has elapsed, every poll asks tokio, which answers `Ready` at once.
        *this.armed = poll.is_pending();
        poll
    }
}

impl Sleep for QuietSleep {}

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

    /// Waits for `sleep`, failing the test rather than hanging if it never wakes its task.
    async fn wait(sleep: impl Future<Output = ()>) {
        tokio::time::timeout(Duration::from_secs(10), sleep)
            .await
            .expect("the sleep woke its task");
    }

    /// hyper polls its keepalive sleep every time it polls the connection: a sleep polled
    /// hundreds of times before its deadline still wakes its task then, and not before.
    #[tokio::test]
    async fn a_sleep_polled_often_still_wakes_its_task() {
        let start = Instant::now();
        let mut sleep = CoarseTimer.sleep(Duration::from_millis(40));
        let mut polls = 0;
        let waited = std::future::poll_fn(|cx| {
            polls += 1;
            let poll = sleep.as_mut().poll(cx);
            if poll.is_pending() && polls < 300 {
                // Polled again at once, as a busy connection's task is.
                cx.waker().wake_by_ref();
            }
            poll
        });
        wait(waited).await;
        assert!(start.elapsed() >= Duration::from_millis(40), "rang early");
        assert!(polls >= 300, "polled {polls} times");
    }

    /// A reset moves the deadline, before the sleep rang and after (when tokio's timer has
    /// given up the waker it was handed).
    #[tokio::test]
    async fn a_reset_sleep_rings_at_its_new_deadline() {
        let timer = CoarseTimer;
        let mut sleep = timer.sleep(Duration::from_millis(20));
        assert!(poll_once(&mut sleep).is_pending(), "armed, not yet due");
        let start = Instant::now();
        timer.reset(&mut sleep, start + Duration::from_millis(80));
        wait(sleep.as_mut()).await;
        assert!(
            start.elapsed() >= Duration::from_millis(80),
            "rang at the old deadline"
        );

        let again = Instant::now();
        timer.reset(&mut sleep, again + Duration::from_millis(30));
        wait(sleep.as_mut()).await;
        assert!(
            again.elapsed() >= Duration::from_millis(30),
            "rang early after a reset"
        );
        // Once due, it stays due until reset.
        assert!(poll_once(&mut sleep).is_ready());
    }

    /// The sleep wakes the task that polled it last, not the first one.
    #[tokio::test]
    async fn a_sleep_wakes_the_last_task_that_polled_it() {
        let mut sleep = CoarseTimer.sleep(Duration::from_millis(20));
        // First polled with a waker that wakes nobody (another task, gone).
        assert!(poll_once(&mut sleep).is_pending());
        wait(sleep.as_mut()).await;
    }

    /// One poll with a waker that does nothing.
    fn poll_once(sleep: &mut Pin<Box<dyn Sleep>>) -> Poll<()> {
        sleep.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }
}
