//! Cold start with Ethernet netdevs already present (contract §2.1, §5.4 scenario 10): they are
//! set admin-down in the kernel and every later message about them is ignored.

use portsyncd_e2e::{
    all_links, capture_tests, hash, port_state, state_db_port_table, wait_hash, wait_until, Capture, DaemonOpts,
    Fixture, KeyspaceWatcher, APPL_DB, DEFAULT_TIMEOUT, STATE_DB,
};

/// Flaps the old ports in every way, then creates `Ethernet<new>` as a barrier: once its row is in
/// STATE_DB, every earlier event was processed.
fn flap_old_ports_then_barrier(fx: &Fixture, watcher: &KeyspaceWatcher, old: &[u32], new: u32) {
    let mut lines = Vec::new();
    for i in old {
        lines.push(format!("link set Ethernet{i} up"));
        lines.push(format!("link set pe{i} down"));
        lines.push(format!("link set pe{i} up"));
        lines.push(format!("link set Ethernet{i} mtu 9000"));
    }
    fx.ns.batch(&lines);
    fx.create_ports([new]);
    fx.wait_state_entry(&format!("Ethernet{new}"), &port_state(true, true, 1500));
    watcher.wait_events_for(&format!("PORT_TABLE|Ethernet{new}"), 1);
    for i in old {
        let ev = watcher.events_for(&format!("PORT_TABLE|Ethernet{i}"));
        assert!(ev.is_empty(), "old interface Ethernet{i} got STATE_DB writes: {ev:?}");
    }
}

fn wait_old_ports_admin_down(fx: &Fixture, old: &[u32]) {
    wait_until(DEFAULT_TIMEOUT, "pre-existing Ethernet netdevs set admin-down", || {
        let links = fx.ns.links();
        old.iter().all(|i| links.get(&format!("Ethernet{i}")).is_some_and(|l| !l.admin_up))
    });
    // Only the port side was touched, not the peers.
    let links = fx.ns.links();
    for i in old {
        assert!(links[&format!("pe{i}")].admin_up, "pe{i} must not be touched");
    }
}

/// First start ever, netdevs already there (e.g. orchagent created host interfaces first).
fn scenario_first_start_with_existing_netdevs(mode: Capture) {
    let mut fx = Fixture::new(mode, 3);
    let old = [0, 1];
    fx.create_ports(old);
    wait_until(DEFAULT_TIMEOUT, "old ports up before the daemon starts", || {
        let links = fx.ns.links();
        old.iter().all(|i| links.get(&format!("Ethernet{i}")).is_some_and(|l| l.admin_up && l.oper_up))
    });
    let watcher = KeyspaceWatcher::start(&fx.redis, STATE_DB, "PORT_TABLE|*");
    fx.start_daemon(DaemonOpts::new(mode));
    wait_old_ports_admin_down(&fx, &old);
    flap_old_ports_then_barrier(&fx, &watcher, &old, 2);
    assert_eq!(state_db_port_table(&fx.redis).keys().cloned().collect::<Vec<_>>(), ["Ethernet2"]);
}

/// portsyncd restarted alone without warm restart: APPL_DB still has the ports (with
/// `admin_status`), so they are all pruned and PortInitDone is sent at once; the netdevs are old.
fn scenario_cold_restart(mode: Capture) {
    let mut fx = Fixture::new(mode, 5);
    fx.start_daemon(DaemonOpts::new(mode));
    let old = [0, 1, 2, 3];
    let old_names: Vec<String> = old.iter().map(|i| format!("Ethernet{i}")).collect();
    fx.create_ports(old);
    fx.wait_state_matches_kernel(&old_names, DEFAULT_TIMEOUT, all_links(&old_names, true, true));
    // Ethernet4 has no netdev, so the first run never completes port init.
    fx.orch.wait_idle(&fx.redis, DEFAULT_TIMEOUT);
    assert!(fx.appl_entry("PortInitDone").is_empty(), "PortInitDone with Ethernet4 never seen");
    let st = fx.daemon().stop();
    assert_eq!(st.code(), Some(0), "SIGTERM must exit 0, got {st:?}");
    let rows_before = state_db_port_table(&fx.redis);

    let watcher = KeyspaceWatcher::start(&fx.redis, STATE_DB, "PORT_TABLE|*");
    let stats = fx.start_daemon(DaemonOpts::new(mode));
    assert_eq!(stats.warm_start(), Some(false));
    wait_hash(&fx.redis, STATE_DB, "WARM_RESTART_TABLE|portsyncd", &hash(&[("restore_count", "0")]));
    wait_old_ports_admin_down(&fx, &old);
    // Every configured port already has `admin_status` in APPL_DB: pruned, so PortInitDone now.
    wait_hash(&fx.redis, APPL_DB, "PORT_TABLE:PortInitDone", &hash(&[("lanes", "0")]));

    flap_old_ports_then_barrier(&fx, &watcher, &old, 4);
    // The old rows are frozen as the first run left them.
    let rows_after = state_db_port_table(&fx.redis);
    for n in &old_names {
        assert_eq!(rows_after.get(n), rows_before.get(n), "{n}");
    }
}

capture_tests! {
    scenario_first_start_with_existing_netdevs => existing_netdevs_at_first_start_are_shut_and_ignored_netlink, existing_netdevs_at_first_start_are_shut_and_ignored_ebpf;
    scenario_cold_restart => cold_restart_shuts_and_ignores_old_netdevs_netlink, cold_restart_shuts_and_ignores_old_netdevs_ebpf;
}

/// A cold start with 1024 pre-existing netdevs brings every one down in the one netlink batch
/// (acknowledgements are collected in windows, so they cannot overrun the request socket).
#[test]
fn cold_start_with_1024_existing_netdevs_brings_all_down_netlink() {
    let mut fx = Fixture::new(Capture::Netlink, 0);
    let old: Vec<u32> = (0..1024).collect();
    let lines: Vec<String> = old
        .iter()
        .flat_map(|i| {
            [
                format!("link add Ethernet{i} type veth peer name pe{i}"),
                format!("link set Ethernet{i} up"),
                format!("link set pe{i} up"),
            ]
        })
        .collect();
    fx.ns.batch(&lines);
    let stats = fx.start_daemon(DaemonOpts::new(Capture::Netlink));
    assert_eq!(stats.counter("old_interfaces_down"), 1024, "{:?}", stats.0["counters"]);
    wait_old_ports_admin_down(&fx, &old);
}
