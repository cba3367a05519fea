//! Differential: the same kernel operations under `--capture netlink` and `--capture ebpf` must
//! leave byte-identical APPL_DB, STATE_DB and CONFIG_DB (the filter reads the same `ifi_flags`
//! the netlink path reads, so nothing may differ, not even masked fields).

use std::collections::BTreeSet;

use portsyncd_e2e::{
    all_links, appl_db_snapshot, config_db_snapshot, hash, state_db_snapshot, wait_hash, Capture, DbSnapshot, Fixture,
    APPL_DB, DEFAULT_TIMEOUT,
};

const N: u32 = 16;

/// Cold start, then a fixed script of link operations; returns (APPL_DB, STATE_DB, CONFIG_DB).
fn run(mode: Capture) -> (DbSnapshot, DbSnapshot, DbSnapshot) {
    let mut fx = Fixture::start(mode, N);
    fx.create_ports(0..N);
    fx.ns.veths([99]);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    wait_hash(&fx.redis, APPL_DB, "PORT_TABLE:PortInitDone", &hash(&[("lanes", "0")]));

    let mut lines: Vec<String> = Vec::new();
    lines.extend((0..N).map(|i| format!("link set Ethernet{i} down")));
    lines.extend((0..N).map(|i| format!("link set Ethernet{i} up")));
    lines.extend(
        [
            "link set pe3 down",
            "link set Ethernet5 down",
            "link set Ethernet7 mtu 9000",
            "link del Ethernet9",
            "link add Bridge type bridge",
            "link set Bridge up",
            "link set Ethernet10 master Bridge",
            "link set Ethernet11 master Bridge",
            "link set Ethernet10 nomaster",
            "link set Ethernet99 up",
            "link set pe99 up",
            "link set Ethernet12 mtu 4000",
            "link set pe12 down",
        ]
        .map(String::from),
    );
    fx.ns.batch(&lines);
    let remaining: Vec<String> = fx.ports.iter().filter(|p| *p != "Ethernet9").cloned().collect();
    fx.wait_state_matches_kernel(&remaining, DEFAULT_TIMEOUT, |links| {
        links.get("Ethernet12").is_some_and(|l| l.mtu == 4000 && !l.oper_up)
            && links.get("Ethernet3").is_some_and(|l| !l.oper_up)
            && links.get("Ethernet5").is_some_and(|l| !l.admin_up)
            && !links.contains_key("Ethernet9")
    });
    fx.wait_state_absent("Ethernet9");
    fx.orch.wait_idle(&fx.redis, DEFAULT_TIMEOUT);
    // Stop first so nothing changes while the snapshots are read.
    let st = fx.daemon().stop();
    assert_eq!(st.code(), Some(0), "{mode}: SIGTERM must exit 0, got {st:?}");
    (appl_db_snapshot(&fx.redis), state_db_snapshot(&fx.redis), config_db_snapshot(&fx.redis))
}

fn diff(what: &str, a: &DbSnapshot, b: &DbSnapshot) -> Vec<String> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{what} {k}: netlink {:?} vs ebpf {:?}", a.get(k), b.get(k)))
        .collect()
}

#[test]
fn netlink_and_ebpf_leave_identical_redis_state() {
    let (appl_n, state_n, config_n) = run(Capture::Netlink);
    let (appl_e, state_e, config_e) = run(Capture::Ebpf);
    let mut d = diff("APPL_DB", &appl_n, &appl_e);
    d.extend(diff("STATE_DB", &state_n, &state_e));
    d.extend(diff("CONFIG_DB", &config_n, &config_e));
    assert!(d.is_empty(), "capture modes disagree:\n{}", d.join("\n"));
    // Not vacuous: the runs really published the ports.
    assert!(state_n.contains_key("PORT_TABLE|Ethernet0") && appl_n.contains_key("PORT_TABLE:PortInitDone"));
    assert!(!state_n.contains_key("PORT_TABLE|Ethernet9"));
}
