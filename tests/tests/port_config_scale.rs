//! A cold boot with more configured ports than one orchagent pop takes (issue 8, item 0): orchagent's
//! port consumer pops at most 128 keys per PUBLISH it receives, so a producer must publish as
//! swss-common's ProducerStateTable does (once per newly added key) or keys stay in
//! `PORT_TABLE_KEY_SET` for good. With the strict consumer stand-in, every configured port must
//! reach APPL_DB `PORT_TABLE`, PortConfigDone and PortInitDone must be popped, and every port's
//! STATE_DB row written.

use std::collections::BTreeSet;

use portsyncd_e2e::orchagent::DEFAULT_POP_BATCH_SIZE;
use portsyncd_e2e::{
    all_links, appl_db_port_table, capture_tests, hash, Capture, DaemonOpts, Fixture, Stats, DEFAULT_TIMEOUT,
    STORM_TIMEOUT,
};

/// More than two pops of 128: the daemon at 91d1c45 publishes twice (ports, PortConfigDone), so
/// 301 keys leave 45 behind.
const PORTS: u32 = 300;

fn scenario_300_ports_strict_consumer(mode: Capture) {
    let mut fx = Fixture::new_strict(mode, PORTS, DEFAULT_POP_BATCH_SIZE);
    fx.start_daemon(DaemonOpts::new(mode));

    // Every configured port and PortConfigDone reach the consumed table.
    let want: BTreeSet<String> = fx.ports.iter().cloned().chain(std::iter::once("PortConfigDone".to_owned())).collect();
    let redis = &fx.redis;
    let orch = &fx.orch;
    fx.daemon.as_mut().expect("daemon").wait_for(
        DEFAULT_TIMEOUT,
        "every configured port in APPL_DB PORT_TABLE",
        || {
            let have: BTreeSet<String> = appl_db_port_table(redis).into_keys().collect();
            let missing: Vec<&String> = want.difference(&have).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} of {} keys missing, e.g. {:?}; {} PUBLISHes received, {} pops calls, {} keys left in \
                 PORT_TABLE_KEY_SET",
                    missing.len(),
                    want.len(),
                    missing.iter().take(5).collect::<Vec<_>>(),
                    orch.notifications(),
                    orch.pop_calls(),
                    orch.pending(redis).len()
                ))
            }
        },
    );
    assert_eq!(fx.appl_entry("PortConfigDone"), hash(&[("count", &PORTS.to_string())]));
    assert_eq!(fx.appl_entry("Ethernet299").get("lanes").map(String::as_str), Some("1196,1197,1198,1199"));

    fx.create_ports(0..PORTS);
    fx.wait_state_matches_kernel(&fx.ports, STORM_TIMEOUT, all_links(&fx.ports, true, true));
    let redis = &fx.redis;
    let orch = &fx.orch;
    fx.daemon.as_mut().expect("daemon").wait_for(DEFAULT_TIMEOUT, "PortInitDone popped by the consumer", || {
        if orch.has_popped("PortInitDone") {
            Ok(())
        } else {
            Err(format!("pending in PORT_TABLE_KEY_SET: {:?}", orch.pending(redis)))
        }
    });
    assert_eq!(fx.appl_entry("PortInitDone"), hash(&[("lanes", "0")]));
    fx.daemon().wait_stats(DEFAULT_TIMEOUT, "port_init_done", Stats::port_init_done);
    assert!(fx.orch.pending(&fx.redis).is_empty(), "keys never popped");
    eprintln!(
        "{PORTS} ports, {mode}: the consumer received {} PUBLISHes and made {} pops calls for {} keys",
        fx.orch.notifications(),
        fx.orch.pop_calls(),
        fx.orch.pops()
    );
}

capture_tests! {
    scenario_300_ports_strict_consumer => strict_consumer_gets_all_300_ports_and_port_init_done_netlink, strict_consumer_gets_all_300_ports_and_port_init_done_ebpf;
}
