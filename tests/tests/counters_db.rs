//! SONiC component stats: COUNTERS_DB `PORTSYNCD_STATS:<entity>` hashes of unsigned integers,
//! equal to the daemon's own counters, written at most once a second and only when a value
//! changed (a quiet daemon writes nothing there).

use std::time::Duration;

use portsyncd_e2e::monitor::Monitor;
use portsyncd_e2e::{all_links, capture_tests, hgetall, Capture, Fixture, DEFAULT_TIMEOUT};

const COUNTERS_DB: u32 = 2;

fn scenario_component_stats(mode: Capture) {
    let mut fx = Fixture::start(mode, 4);
    fx.create_ports(0..4);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    let stats = fx.daemon().wait_stats(DEFAULT_TIMEOUT, "state_writes >= 4", |s| s.counter("state_writes") >= 4);
    let want = stats.counter("state_writes").to_string();
    let mut con = fx.redis.conn(COUNTERS_DB);
    portsyncd_e2e::wait_for(DEFAULT_TIMEOUT, "PORTSYNCD_STATS:counters in COUNTERS_DB", || {
        let h = hgetall(&mut con, "PORTSYNCD_STATS:counters");
        if h.get("state_writes") == Some(&want) {
            Ok(h)
        } else {
            Err(format!("{h:?}"))
        }
    });
    let counters = hgetall(&mut con, "PORTSYNCD_STATS:counters");
    assert!(counters.values().all(|v| v.parse::<u64>().is_ok()), "uint64 fields only: {counters:?}");
    for field in ["events", "batches", "refusals", "repairs", "resyncs", "enobufs", "skipped_unchanged"] {
        assert!(counters.contains_key(field), "{field} missing: {counters:?}");
    }
    let health = hgetall(&mut con, "PORTSYNCD_STATS:health");
    assert_eq!(health.get("status").map(String::as_str), Some("0"), "healthy: {health:?}");
    assert_eq!(health.get("redis_down").map(String::as_str), Some("0"), "{health:?}");
    let latency = hgetall(&mut con, "PORTSYNCD_STATS:latency");
    assert!(latency.get("p99_us").is_some_and(|v| v.parse::<u64>().is_ok_and(|n| n > 0)), "{latency:?}");
    if mode == Capture::Ebpf {
        let ebpf = hgetall(&mut con, "PORTSYNCD_STATS:ebpf");
        assert!(ebpf.get("events").is_some_and(|v| v != "0"), "{ebpf:?}");
    }
    eprintln!("COUNTERS_DB sample, {mode}: PORTSYNCD_STATS:counters {counters:?}\nPORTSYNCD_STATS:latency {latency:?}\nPORTSYNCD_STATS:health {health:?}");

    // Quiet: nothing changes, so nothing is written.
    let mon = Monitor::start(&fx.redis);
    std::thread::sleep(Duration::from_millis(300));
    let mark = mon.mark(&fx.redis);
    std::thread::sleep(Duration::from_millis(2500));
    mon.sync(&fx.redis);
    let writes: Vec<String> = mon
        .commands_since(mark)
        .iter()
        .filter(|c| c.db == COUNTERS_DB && c.is_write())
        .map(|c| c.args.join(" "))
        .collect();
    assert!(writes.is_empty(), "a quiet daemon rewrote its stats: {writes:?}");
}

capture_tests! {
    scenario_component_stats => component_stats_in_counters_db_match_and_are_written_only_on_change_netlink, component_stats_in_counters_db_match_and_are_written_only_on_change_ebpf;
}
