//! The stall watchdog: a thread of its own (so it sees a stall even when the event loop's
//! thread is stuck outside an await) that counts and logs every time the loop has not turned
//! for longer than allowed while changes are pending. It also tells the daemon's health model
//! (and, through a callback, systemd) that the loop stands still, since the loop itself cannot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::monotonic_ns;

#[derive(Debug, Default)]
struct Shared {
    last_turn_ns: AtomicU64,
    pending: AtomicU64,
    stalls: AtomicU64,
    stalled: AtomicBool,
    stop: AtomicBool,
}

/// The event loop's side: report each turn and the backlog; read the stall count.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<Shared>);

impl Heartbeat {
    /// The loop turned; `pending` changes are waiting for Redis.
    pub fn turn(&self, pending: usize) {
        self.0.last_turn_ns.store(monotonic_ns(), Ordering::Relaxed);
        self.0.pending.store(pending as u64, Ordering::Relaxed);
        self.0.stalled.store(false, Ordering::Relaxed);
    }

    /// The loop is standing still now (reported by the watchdog, cleared by the next turn).
    pub fn stalled_now(&self) -> bool {
        self.0.stalled.load(Ordering::Relaxed)
    }

    /// Stalls seen so far.
    pub fn stalls(&self) -> u64 {
        self.0.stalls.load(Ordering::Relaxed)
    }
}

/// The watchdog thread; stopped and joined on drop.
#[derive(Debug)]
pub struct Watchdog {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

/// Whether the loop is stalled: changes pending and no turn for longer than `limit`.
pub fn is_stalled(now_ns: u64, last_turn_ns: u64, pending: u64, limit: Duration) -> bool {
    pending > 0 && now_ns.saturating_sub(last_turn_ns) > limit.as_nanos() as u64
}

impl Watchdog {
    /// Starts watching; a stall is the loop not turning for `limit` with changes pending.
    /// `on_stall(stalled_ms)` runs on the watchdog's thread once per stall.
    pub fn start(limit: Duration, on_stall: impl Fn(u64) + Send + 'static) -> (Self, Heartbeat) {
        let shared = Arc::new(Shared::default());
        shared.last_turn_ns.store(monotonic_ns(), Ordering::Relaxed);
        let s = Arc::clone(&shared);
        let check_every = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        // Nothing pending at the last turn: no stall can be under way that this check would not
        // still catch before it lasts `limit`; an idle daemon wakes this thread rarely.
        let idle_every = (limit / 2).clamp(check_every, Duration::from_secs(5));
        let handle = std::thread::Builder::new()
            .name("stall-watchdog".into())
            .spawn(move || {
                // The turn a stall was reported for: one report per stall, however long it lasts.
                let mut reported_turn = None;
                while !s.stop.load(Ordering::Relaxed) {
                    let idle = s.pending.load(Ordering::Relaxed) == 0;
                    std::thread::park_timeout(if idle { idle_every } else { check_every });
                    let last = s.last_turn_ns.load(Ordering::Relaxed);
                    let pending = s.pending.load(Ordering::Relaxed);
                    let now = monotonic_ns();
                    if is_stalled(now, last, pending, limit) && reported_turn != Some(last) {
                        reported_turn = Some(last);
                        s.stalls.fetch_add(1, Ordering::Relaxed);
                        s.stalled.store(true, Ordering::Relaxed);
                        let stalled_ms = now.saturating_sub(last) / 1_000_000;
                        tracing::warn!(stalled_ms, pending, "event loop stalled with changes pending");
                        on_stall(stalled_ms);
                    }
                }
            })
            .ok();
        if handle.is_none() {
            tracing::warn!("cannot start the stall watchdog thread; stalls will not be reported");
        }
        (Self { shared: Arc::clone(&shared), handle }, Heartbeat(shared))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_needs_pending_changes_and_a_loop_that_stood_still_too_long() {
        let s = Duration::from_secs(1);
        assert!(is_stalled(3_000_000_000, 1_000_000_000, 5, s));
        assert!(!is_stalled(3_000_000_000, 1_000_000_000, 0, s), "idle is not a stall");
        assert!(!is_stalled(1_500_000_000, 1_000_000_000, 5, s), "within the limit");
    }

    #[test]
    fn the_thread_counts_one_stall_per_standstill() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&calls);
        let (dog, beat) = Watchdog::start(Duration::from_millis(100), move |_| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        beat.turn(3);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while beat.stalls() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(beat.stalls(), 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(beat.stalls(), 1, "one stall, however long it lasts");
        assert!(beat.stalled_now());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "the callback runs once per stall");
        beat.turn(0);
        assert!(!beat.stalled_now(), "a turn ends the stall");
        drop(dog);
    }
}
