//! Which netdevs produce writes (contract §2.2, §5.4 scenarios 6-8): a deleted port loses its
//! STATE_DB row; Ethernet names without an APPL_DB entry, `lo`, `eth0`, `Vlan1000`, `Bridge` get
//! nothing at all.

use portsyncd_e2e::{
    all_links, appl_db_port_table, capture_tests, port_state, state_db_port_table, Capture, Fixture, KeyspaceWatcher,
    APPL_DB, DEFAULT_TIMEOUT, STATE_DB,
};

fn scenario_netdev_deleted(mode: Capture) {
    let fx = Fixture::start(mode, 3);
    fx.create_ports(0..3);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));

    fx.ns.ip(&["link", "del", "Ethernet1"]);
    fx.wait_state_absent("Ethernet1");
    let rest = vec!["Ethernet0".to_owned(), "Ethernet2".to_owned()];
    portsyncd_e2e::assert_state_matches_kernel(&fx.ns, &fx.redis, &rest);
    // The APPL_DB port entry is configuration, not netdev state: it stays.
    assert!(!fx.appl_entry("Ethernet1").is_empty());

    // Re-created (new ifindex, e.g. after breakout): published again.
    fx.create_ports([1]);
    fx.wait_state_entry("Ethernet1", &port_state(true, true, 1500));
    portsyncd_e2e::assert_state_matches_kernel(&fx.ns, &fx.redis, &fx.ports);
}

fn scenario_unconfigured_ethernet(mode: Capture) {
    let fx = Fixture::start(mode, 1);
    let state_watch = KeyspaceWatcher::start(&fx.redis, STATE_DB, "*Ethernet99*");
    let appl_watch = KeyspaceWatcher::start(&fx.redis, APPL_DB, "*Ethernet99*");

    // Ethernet99 is not in CONFIG_DB/APPL_DB; Ethernet0 is, and is created after it, so its row
    // appearing means Ethernet99's events were processed.
    fx.create_ports([99]);
    fx.ns.batch(&["link set pe99 down", "link set Ethernet99 mtu 9000", "link set pe99 up"]);
    fx.create_ports([0]);
    fx.wait_state_entry("Ethernet0", &port_state(true, true, 1500));
    fx.ns.ip(&["link", "del", "Ethernet99"]);
    fx.ns.ip(&["link", "set", "Ethernet0", "mtu", "9000"]);
    fx.wait_state_entry("Ethernet0", &port_state(true, true, 9000));

    assert!(!state_db_port_table(&fx.redis).contains_key("Ethernet99"));
    assert!(!appl_db_port_table(&fx.redis).contains_key("Ethernet99"));
    // The C++ daemon DELs the row of any deleted Ethernet* netdev; on a missing key that changes
    // nothing and notifies nobody, so "no event at all" holds for both.
    assert!(state_watch.events().is_empty(), "STATE_DB writes for Ethernet99: {:?}", state_watch.events());
    assert!(appl_watch.events().is_empty(), "APPL_DB writes for Ethernet99: {:?}", appl_watch.events());
    // An unconfigured netdev does not hold back PortInitDone.
    portsyncd_e2e::wait_hash(&fx.redis, APPL_DB, "PORT_TABLE:PortInitDone", &portsyncd_e2e::hash(&[("lanes", "0")]));
}

fn scenario_non_port_netdevs(mode: Capture) {
    let fx = Fixture::start(mode, 1);
    let state_watch = KeyspaceWatcher::start(&fx.redis, STATE_DB, "*");
    let appl_watch = KeyspaceWatcher::start(&fx.redis, APPL_DB, "*");

    // teamd's kind "team" is not built into this kernel; these are the names the filter must drop.
    fx.ns.batch(&[
        "link set lo up",
        "link add eth0 type veth peer name mgmt0",
        "link set mgmt0 up",
        "link set eth0 up",
        "link add Vlan1000 type ifb",
        "link set Vlan1000 up",
        "link add Bridge type bridge",
        "link set Bridge up",
        "link set mgmt0 master Bridge",
        "link set eth0 mtu 9000",
        "link set lo down",
        "link set lo up",
        "link set Vlan1000 down",
        "link set Bridge mtu 1400",
        "link set mgmt0 nomaster",
        "link del Vlan1000",
    ]);
    // Barrier: the one configured port, created afterwards.
    fx.create_ports([0]);
    fx.wait_state_entry("Ethernet0", &port_state(true, true, 1500));
    state_watch.wait_events_for("PORT_TABLE|Ethernet0", 1);

    let foreign: Vec<_> = state_watch.events().into_iter().filter(|(k, _)| k != "PORT_TABLE|Ethernet0").collect();
    assert!(foreign.is_empty(), "STATE_DB writes for non-port netdevs: {foreign:?}");
    let names = ["lo", "eth0", "mgmt0", "Vlan1000", "Bridge"];
    let appl_foreign: Vec<_> =
        appl_watch.events().into_iter().filter(|(k, _)| names.iter().any(|n| k.contains(n))).collect();
    assert!(appl_foreign.is_empty(), "APPL_DB writes for non-port netdevs: {appl_foreign:?}");
    assert_eq!(state_db_port_table(&fx.redis).keys().cloned().collect::<Vec<_>>(), ["Ethernet0"]);
}

capture_tests! {
    scenario_netdev_deleted => deleted_netdev_removes_state_db_row_netlink, deleted_netdev_removes_state_db_row_ebpf;
    scenario_unconfigured_ethernet => unconfigured_ethernet_netdev_gets_no_writes_netlink, unconfigured_ethernet_netdev_gets_no_writes_ebpf;
    scenario_non_port_netdevs => lo_eth0_vlan_and_bridge_get_no_writes_netlink, lo_eth0_vlan_and_bridge_get_no_writes_ebpf;
}
