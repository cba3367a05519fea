//! Flap storms: hundreds of ports changing at once in one `ip -batch`, with a normal and with a
//! deliberately overrun event path; STATE_DB must end equal to the kernel for every port.

use portsyncd_e2e::storm::{kernel_in_storm_final, storm_lines};
use portsyncd_e2e::{
    all_links, capture_tests, hash, wait_hash, Capture, DaemonOpts, Fixture, APPL_DB, DEFAULT_TIMEOUT, STORM_TIMEOUT,
};

fn bring_up(fx: &Fixture, n: u32) {
    fx.create_ports(0..n);
    fx.wait_state_matches_kernel(&fx.ports, STORM_TIMEOUT, all_links(&fx.ports, true, true));
    wait_hash(&fx.redis, APPL_DB, "PORT_TABLE:PortInitDone", &hash(&[("lanes", "0")]));
}

fn scenario_flap_storm_256(mode: Capture) {
    const N: u32 = 256;
    let mut fx = Fixture::start(mode, N);
    bring_up(&fx, N);
    fx.ns.batch(&storm_lines(N, 1));
    fx.wait_state_matches_kernel(&fx.ports, STORM_TIMEOUT, kernel_in_storm_final(N));
    let stats = fx.daemon().wait_stats(DEFAULT_TIMEOUT, "counters.events > 0", |s| s.counter("events") > 0);
    eprintln!("256-port storm, {mode}: counters {}", stats.get("/counters").map(|c| c.to_string()).unwrap_or_default());
    assert!(fx.daemon().is_running());
    // A storm the ring and socket hold loses nothing, so nothing is re-dumped (only the ring
    // filling, or an overrun, may force a resync).
    if stats.ebpf_counter("ring_full").unwrap_or(0) == 0 && stats.counter("enobufs") == 0 {
        assert_eq!(stats.counter("resyncs"), 0, "no loss, no resync: {}", stats.0);
        assert_eq!(stats.counter("ring_overflows"), 0, "{}", stats.0);
    }
}

/// With `--batch-linger-us` the storm is written in far fewer, larger batches, and still ends
/// with STATE_DB equal to the kernel.
fn scenario_storm_with_linger(mode: Capture) {
    const N: u32 = 128;
    let mut fx = Fixture::new(mode, N);
    fx.start_daemon(DaemonOpts::new(mode).args(["--batch-linger-us", "2000"]));
    bring_up(&fx, N);
    let before = fx.daemon().stats().expect("stats").counter("batches");
    fx.ns.batch(&storm_lines(N, 2));
    fx.wait_state_matches_kernel(&fx.ports, STORM_TIMEOUT, kernel_in_storm_final(N));
    let stats = fx.daemon().wait_stats(DEFAULT_TIMEOUT, "stats after the storm", |s| s.counter("batches") > before);
    let batches = stats.counter("batches") - before;
    let writes = stats.counter("state_writes");
    eprintln!(
        "linger storm, {mode}: {batches} batches, counters {}",
        stats.get("/counters").map(|c| c.to_string()).unwrap_or_default()
    );
    // 2 rounds x 5 steps x 128 ports of changes: without lingering, batches hold 1-3 events.
    assert!(batches * 4 < u64::from(N) * 10, "lingering should batch the storm: {batches} batches, {writes} writes");
    let source = |k: &str| stats.get(&format!("/source/{k}")).and_then(|v| v.as_u64()).unwrap_or(0);
    assert!(source("storms") >= 1 && source("storm_polls") > source("storms"), "the storm was polled: {}", stats.0);
}

/// One link change at a time never starts a storm: each is read the moment it arrives (the
/// p50 of an isolated event does not pay the storm's poll interval).
fn scenario_isolated_changes_are_not_polled(mode: Capture) {
    let mut fx = Fixture::new(mode, 2);
    fx.start_daemon(DaemonOpts::new(mode));
    fx.create_ports(0..2);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, portsyncd_e2e::all_links(&fx.ports, true, true));
    let storms = |fx: &mut Fixture| {
        fx.daemon().stats().and_then(|s| s.get("/source/storms").and_then(|v| v.as_u64())).unwrap_or(u64::MAX)
    };
    // Set-up notifications (a veth's operstate follows its carrier by a few ms) are over once
    // the daemon's event count stands still.
    let events = |fx: &mut Fixture| fx.daemon().stats().map_or(0, |s| s.counter("events"));
    let mut last = events(&mut fx);
    portsyncd_e2e::wait_for(DEFAULT_TIMEOUT, "the set-up's events to end", || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = events(&mut fx);
        let quiet = now == last;
        last = now;
        if quiet {
            Ok(())
        } else {
            Err(format!("{now} events"))
        }
    });
    let before = storms(&mut fx);
    for state in ["down", "up", "down", "up"] {
        fx.ns.ip(&["link", "set", "pe0", state]);
        let oper = if state == "up" { "up" } else { "down" };
        portsyncd_e2e::wait_for(DEFAULT_TIMEOUT, &format!("Ethernet0 oper {oper}"), || {
            match fx.state_entry("Ethernet0").get("netdev_oper_status") {
                Some(s) if s == oper => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        // Well apart, as single events are.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(storms(&mut fx), before, "single changes must not start a storm");
}

/// Netlink: a 4 KiB socket buffer overflows (ENOBUFS) and must trigger a re-dump and resync.
/// eBPF: a one-page ring fills (`ring_full`), the overflow path takes the rest.
fn scenario_overrun(mode: Capture) {
    const N: u32 = 512;
    const ROUNDS: u32 = 3;
    let mut fx = Fixture::new(mode, N);
    let mut opts = DaemonOpts::new(mode).args(["--rcvbuf", "4096"]);
    if mode == Capture::Ebpf {
        opts = opts.args(["--ring-bytes", "4096"]);
    }
    fx.start_daemon(opts);
    bring_up(&fx, N);
    for round in 0..ROUNDS {
        fx.ns.batch(&storm_lines(N, 1));
        fx.wait_state_matches_kernel(&fx.ports, STORM_TIMEOUT, kernel_in_storm_final(N));
        if round + 1 < ROUNDS {
            // Back to all up for the next round.
            let lines: Vec<String> =
                (0..N).flat_map(|i| [format!("link set pe{i} up"), format!("link set Ethernet{i} up")]).collect();
            fx.ns.batch(&lines);
            fx.wait_state_matches_kernel(&fx.ports, STORM_TIMEOUT, all_links(&fx.ports, true, true));
        }
    }
    let stats = match mode {
        // The resync is owed to the ring filling: the overflow path saw ring_full advance.
        Capture::Ebpf => fx.daemon().wait_stats(
            DEFAULT_TIMEOUT,
            "ebpf.ring_full > 0, counters.ring_overflows > 0 and counters.resyncs > 0",
            |s| {
                s.ebpf_counter("ring_full").unwrap_or(0) > 0
                    && s.counter("ring_overflows") > 0
                    && s.counter("resyncs") > 0
            },
        ),
        _ => fx.daemon().wait_stats(DEFAULT_TIMEOUT, "counters.enobufs > 0 and counters.resyncs > 0", |s| {
            s.counter("enobufs") > 0 && s.counter("resyncs") > 0
        }),
    };
    eprintln!(
        "overrun storm, {mode}: counters {} ebpf {}",
        stats.get("/counters").map(|c| c.to_string()).unwrap_or_default(),
        stats.get("/ebpf").map(|c| c.to_string()).unwrap_or_default()
    );
    assert!(fx.daemon().is_running());
}

/// A receive buffer too small for the kernel's datagrams: the first one is truncated (MSG_TRUNC),
/// counted, the buffer grown and the links re-dumped, so nothing is lost. Netlink mode only: in
/// eBPF mode link notifications reach the socket only when the ring is full.
#[test]
fn truncated_datagram_forces_a_resync_and_loses_nothing_netlink() {
    const N: u32 = 16;
    let mut fx = Fixture::new(Capture::Netlink, N);
    fx.start_daemon(DaemonOpts::new(Capture::Netlink).args(["--test-recv-buf", "64"]));
    bring_up(&fx, N);
    fx.ns.batch(&storm_lines(N, 1));
    fx.wait_state_matches_kernel(&fx.ports, STORM_TIMEOUT, kernel_in_storm_final(N));
    let stats = fx.daemon().wait_stats(DEFAULT_TIMEOUT, "counters.truncated > 0 and counters.resyncs > 0", |s| {
        s.counter("truncated") > 0 && s.counter("resyncs") > 0
    });
    eprintln!("truncation: counters {}", stats.get("/counters").map(|c| c.to_string()).unwrap_or_default());
    assert!(fx.daemon().is_running());
}

capture_tests! {
    scenario_storm_with_linger => storm_with_batch_linger_matches_kernel_netlink, storm_with_batch_linger_matches_kernel_ebpf;
    scenario_isolated_changes_are_not_polled => isolated_changes_are_not_polled_netlink, isolated_changes_are_not_polled_ebpf;
    scenario_flap_storm_256 => flap_storm_256_ports_ends_equal_to_kernel_netlink, flap_storm_256_ports_ends_equal_to_kernel_ebpf;
    scenario_overrun => overrun_event_path_resyncs_to_kernel_state_netlink, overrun_event_path_resyncs_to_kernel_state_ebpf;
}
