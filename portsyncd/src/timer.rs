//! A one-shot timer with microsecond resolution (a `timerfd` on `CLOCK_MONOTONIC`) for the storm
//! poll: tokio's timers round every wait up to the next millisecond, which would add up to a
//! millisecond to every event of a storm.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

/// tokio registers raw fds; nix's TimerFd offers only `AsFd`.
#[derive(Debug)]
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Sleeps until a `CLOCK_MONOTONIC` deadline, to the microsecond. Cancel-safe: a dropped wait
/// leaves the timer armed, and the next [`PreciseTimer::sleep_until`] re-arms it.
#[derive(Debug)]
pub struct PreciseTimer {
    fd: AsyncFd<Fd>,
}

impl PreciseTimer {
    /// A disarmed timer registered with the current tokio runtime.
    pub fn new() -> io::Result<Self> {
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
        Ok(Self { fd: register(Fd(fd))? })
    }

    /// Returns at `deadline_ns` ([`crate::clock::monotonic_ns`] time), at once if it has passed.
    pub async fn sleep_until(&mut self, deadline_ns: u64) -> io::Result<()> {
        if deadline_ns <= crate::clock::monotonic_ns() {
            return Ok(());
        }
        let at = TimeSpec::from_duration(std::time::Duration::from_nanos(deadline_ns));
        // Re-arming also clears any expiration a cancelled wait left unread.
        self.fd.get_ref().0.set(Expiration::OneShot(at), TimerSetTimeFlags::TFD_TIMER_ABSTIME)?;
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                Ok(r) => return r,
                // Readiness left over from an earlier arming: wait for this one.
                Err(_would_block) => continue,
            }
        }
    }
}

// tokio 1.54 deprecates the safe constructors for an `unsafe` one whose condition holds here the
// same way: the timerfd is owned by the AsyncFd and closed only when it drops.
#[expect(deprecated, reason = "the safe AsyncFd constructor; the fd is owned by the AsyncFd")]
fn register(fd: Fd) -> io::Result<AsyncFd<Fd>> {
    AsyncFd::new(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::monotonic_ns;

    #[tokio::test]
    async fn sleeps_to_a_sub_millisecond_deadline_and_not_past_ones() {
        let mut t = PreciseTimer::new().unwrap();
        let start = monotonic_ns();
        t.sleep_until(start + 300_000).await.unwrap();
        let slept = monotonic_ns() - start;
        assert!(slept >= 300_000, "woke {slept} ns after start, before the deadline");
        let before = monotonic_ns();
        t.sleep_until(before - 1).await.unwrap();
        assert!(monotonic_ns() - before < 1_000_000, "a past deadline returns at once");
    }

    #[tokio::test]
    async fn a_cancelled_wait_does_not_end_the_next_one_early() {
        let mut t = PreciseTimer::new().unwrap();
        let now = monotonic_ns();
        // Armed for 1 ms, abandoned after 0: the expiration is left pending in the fd.
        let _ = tokio::time::timeout(std::time::Duration::ZERO, t.sleep_until(now + 1_000_000)).await;
        std::thread::sleep(std::time::Duration::from_millis(2));
        let start = monotonic_ns();
        t.sleep_until(start + 500_000).await.unwrap();
        assert!(monotonic_ns() - start >= 500_000, "the stale expiration ended the new wait early");
    }
}
