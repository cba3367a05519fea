//! `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns()` uses, so kernel event
//! timestamps and userspace receive/ack times can be subtracted (tests/tests/ebpf_filter.rs
//! checks that kernel timestamps fall between two readings of this clock).

/// Current `CLOCK_MONOTONIC` time in nanoseconds.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec() as u64),
        // clock_gettime(CLOCK_MONOTONIC) cannot fail on Linux; a zero timestamp only makes the
        // latency of that one event read as unknown (clamped), it never breaks the pipeline.
        Err(_) => 0,
    }
}
