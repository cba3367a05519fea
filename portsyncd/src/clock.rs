//! `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns()` uses, so kernel event
//! timestamps and userspace receive/ack times can be subtracted.

/// Current `CLOCK_MONOTONIC` time in nanoseconds.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec() as u64),
        // clock_gettime(CLOCK_MONOTONIC) cannot fail on Linux; a zero timestamp only makes the
        // latency of that one event read as unknown (clamped), it never breaks the pipeline.
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic_clock_advances() {
        let a = super::monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::monotonic_ns();
        assert!(a > 0 && b >= a + 1_000_000, "{a} -> {b}");
    }
}
