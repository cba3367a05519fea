//! Link changes of configured ports (contract §2.2-2.3, §5.4 scenarios 3 and 4): admin state
//! follows IFF_UP, oper state follows IFF_RUNNING (carrier), mtu follows IFLA_MTU.

use portsyncd_e2e::{all_links, capture_tests, port_state, Capture, Fixture, DEFAULT_TIMEOUT};

fn ready_with_two_ports(mode: Capture) -> Fixture {
    let fx = Fixture::start(mode, 2);
    fx.create_ports(0..2);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    fx.wait_state_entry("Ethernet0", &port_state(true, true, 1500));
    fx
}

fn scenario_admin_and_carrier(mode: Capture) {
    let fx = ready_with_two_ports(mode);

    // Carrier lost (peer down): still admin up, oper down.
    fx.ns.ip(&["link", "set", "pe0", "down"]);
    fx.wait_state_entry("Ethernet0", &port_state(true, false, 1500));
    // Carrier back.
    fx.ns.ip(&["link", "set", "pe0", "up"]);
    fx.wait_state_entry("Ethernet0", &port_state(true, true, 1500));
    // Admin down: both down.
    fx.ns.ip(&["link", "set", "Ethernet0", "down"]);
    fx.wait_state_entry("Ethernet0", &port_state(false, false, 1500));
    // Admin up again, carrier present.
    fx.ns.ip(&["link", "set", "Ethernet0", "up"]);
    fx.wait_state_entry("Ethernet0", &port_state(true, true, 1500));
    // Admin up while the peer is down: up without IFF_RUNNING.
    fx.ns.batch(&["link set pe0 down", "link set Ethernet0 down", "link set Ethernet0 up"]);
    fx.wait_state_entry("Ethernet0", &port_state(true, false, 1500));

    // The other port was never touched.
    fx.wait_state_entry("Ethernet1", &port_state(true, true, 1500));
    portsyncd_e2e::assert_state_matches_kernel(&fx.ns, &fx.redis, &fx.ports);
}

fn scenario_mtu(mode: Capture) {
    let fx = ready_with_two_ports(mode);
    fx.ns.ip(&["link", "set", "Ethernet0", "mtu", "9000"]);
    fx.wait_state_entry("Ethernet0", &port_state(true, true, 9000));
    // MTU of a port that is down.
    fx.ns.batch(&["link set Ethernet1 down", "link set Ethernet1 mtu 9100"]);
    fx.wait_state_entry("Ethernet1", &port_state(false, false, 9100));
    fx.ns.ip(&["link", "set", "Ethernet0", "mtu", "1500"]);
    fx.wait_state_entry("Ethernet0", &port_state(true, true, 1500));
    portsyncd_e2e::assert_state_matches_kernel(&fx.ns, &fx.redis, &fx.ports);
}

capture_tests! {
    scenario_admin_and_carrier => admin_and_carrier_changes_update_state_db_netlink, admin_and_carrier_changes_update_state_db_ebpf;
    scenario_mtu => mtu_change_updates_state_db_netlink, mtu_change_updates_state_db_ebpf;
}
