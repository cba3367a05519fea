//! Deadline-bounded polling: a condition over live state in, its value (or a panic naming what was
//! expected and what was last seen) out. Tests poll; they never sleep as an assertion.

use std::time::{Duration, Instant};

/// Interval between polls: short enough that latency is not hidden, long enough not to load Redis.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Default deadline for a single observable change.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Deadline for storms of hundreds of ports: the kernel's linkwatch reports carrier changes at
/// about 100 devices per second when backlogged, so the wall time is set by the kernel.
pub const STORM_TIMEOUT: Duration = Duration::from_secs(90);

/// Polls `cond` until it is true; panics after `timeout` with `what`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || if cond() { Ok(()) } else { Err("condition still false".to_owned()) })
}

/// Polls `check` until it returns `Ok`; panics after `timeout` with `what` (the expectation) and
/// the last `Err` (what was seen instead).
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => {
                if start.elapsed() >= timeout {
                    panic!(
                        "timed out after {:.1} s waiting for: {what}\nlast seen: {last}",
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Like [`wait_for`] but for a value that is simply absent until it appears.
pub fn wait_until_some<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    wait_for(timeout, what, || f().ok_or_else(|| "nothing yet".to_owned()))
}
