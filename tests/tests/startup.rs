//! Cold start (contract §1.3-1.5, §5.4 scenarios 1 and 2): CONFIG_DB ports copied to APPL_DB
//! through the producer protocol, PortConfigDone/PortInitDone, restore_count, LOGGER, SIGTERM.

use std::collections::BTreeMap;
use std::time::Duration;

use portsyncd_e2e::db::{config_port_fields, keys};
use portsyncd_e2e::{
    all_links, appl_db_port_table, capture_tests, hash, state_db_port_table, wait_for, wait_hash, Capture, DaemonOpts,
    Fixture, Hash, APPL_DB, CONFIG_DB, DEFAULT_TIMEOUT, STATE_DB,
};

fn wait_appl_entry(fx: &Fixture, key: &str, want: &Hash) {
    wait_hash(&fx.redis, APPL_DB, &format!("PORT_TABLE:{key}"), want);
}

fn scenario_cold_start(mode: Capture) {
    const N: u32 = 8;
    let mut fx = Fixture::new(mode, N);
    let stats = fx.start_daemon(DaemonOpts::new(mode));
    assert_eq!(stats.warm_start(), Some(false), "fresh Redis must be a cold start: {:?}", stats.0);

    // Every CONFIG_DB PORT entry reaches APPL_DB verbatim, plus PortConfigDone{count=N}.
    let mut want: BTreeMap<String, Hash> =
        (0..N).map(|i| (format!("Ethernet{i}"), config_port_fields(i).into_iter().collect())).collect();
    want.insert("PortConfigDone".into(), hash(&[("count", "8")]));
    wait_for(DEFAULT_TIMEOUT, "APPL_DB PORT_TABLE = CONFIG_DB PORT + PortConfigDone", || {
        let got = appl_db_port_table(&fx.redis);
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });

    // No configured port has a netdev yet: no PortInitDone, not even staged.
    fx.orch.wait_idle(&fx.redis, DEFAULT_TIMEOUT);
    assert!(fx.appl_entry("PortInitDone").is_empty(), "PortInitDone before any configured port was seen");
    assert!(fx.orch.popped().iter().all(|(k, _)| k != "PortInitDone"));
    assert!(state_db_port_table(&fx.redis).is_empty(), "STATE_DB rows without netdevs");

    // Cold start: restore_count 0 and nothing else in that row.
    wait_hash(&fx.redis, STATE_DB, "WARM_RESTART_TABLE|portsyncd", &hash(&[("restore_count", "0")]));
    // Missing LOGGER entry is created with the swss-common defaults.
    wait_hash(&fx.redis, CONFIG_DB, "LOGGER|portsyncd", &hash(&[("LOGLEVEL", "NOTICE"), ("LOGOUTPUT", "SYSLOG")]));

    // Netdevs appear: one STATE_DB row each, exactly the 4 portsyncd fields, equal to the kernel.
    fx.create_ports(0..N);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    let rows = state_db_port_table(&fx.redis);
    assert_eq!(rows.keys().cloned().collect::<Vec<_>>(), {
        let mut p = fx.ports.clone();
        p.sort();
        p
    });
    for (name, row) in &rows {
        assert_eq!(
            row.keys().map(String::as_str).collect::<Vec<_>>(),
            ["admin_status", "mtu", "netdev_oper_status", "state"],
            "{name}"
        );
    }

    // Every configured port seen: PortInitDone{lanes=0}.
    wait_appl_entry(&fx, "PortInitDone", &hash(&[("lanes", "0")]));
    fx.daemon().wait_stats(DEFAULT_TIMEOUT, "port_init_done", |s| s.port_init_done());
    fx.orch.wait_idle(&fx.redis, DEFAULT_TIMEOUT);
    // Producer bookkeeping fully consumed: APPL_DB holds only the consumed hashes.
    let mut appl = fx.redis.conn(APPL_DB);
    let leftovers: Vec<String> = keys(&mut appl, "*").into_iter().filter(|k| !k.starts_with("PORT_TABLE:")).collect();
    assert!(leftovers.is_empty(), "unexpected APPL_DB keys: {leftovers:?}");
    assert_eq!(fx.orch.popped().iter().filter(|(k, _)| k == "PortInitDone").count(), 1);

    let st = fx.daemon().stop();
    assert_eq!(st.code(), Some(0), "SIGTERM must exit 0, got {st:?}");
}

fn scenario_zero_ports(mode: Capture) {
    let fx = Fixture::start(mode, 0);
    // Both markers right after the initial dump (the daemon is already ready here).
    wait_appl_entry(&fx, "PortConfigDone", &hash(&[("count", "0")]));
    wait_for(Duration::from_secs(5), "PortInitDone right after the initial dump", || {
        let got = fx.appl_entry("PortInitDone");
        if got == hash(&[("lanes", "0")]) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    assert!(state_db_port_table(&fx.redis).is_empty());
    wait_hash(&fx.redis, STATE_DB, "WARM_RESTART_TABLE|portsyncd", &hash(&[("restore_count", "0")]));
}

fn scenario_existing_logger_level_is_kept(mode: Capture) {
    let mut fx = Fixture::new(mode, 1);
    let mut config = fx.redis.conn(CONFIG_DB);
    redis::cmd("HSET").arg("LOGGER|portsyncd").arg("LOGLEVEL").arg("DEBUG").query::<()>(&mut config).unwrap();
    fx.start_daemon(DaemonOpts::new(mode));
    // One field missing: both written, the existing level kept.
    wait_hash(&fx.redis, CONFIG_DB, "LOGGER|portsyncd", &hash(&[("LOGLEVEL", "DEBUG"), ("LOGOUTPUT", "SYSLOG")]));
}

fn scenario_sigterm_exits_zero_and_leaves_state(mode: Capture) {
    let mut fx = Fixture::start(mode, 2);
    fx.create_ports(0..2);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    let before = state_db_port_table(&fx.redis);
    let st = fx.daemon().stop();
    assert_eq!(st.code(), Some(0), "SIGTERM must exit 0, got {st:?}");
    // Exit does not clean up STATE_DB (consumers keep the last known state).
    assert_eq!(state_db_port_table(&fx.redis), before);
    let stats = fx.daemon().stats().expect("stats file written at exit");
    assert!(stats.initial_sync_done());
}

capture_tests! {
    scenario_cold_start => cold_start_publishes_config_and_port_state_netlink, cold_start_publishes_config_and_port_state_ebpf;
    scenario_zero_ports => zero_ports_sends_config_done_and_init_done_at_once_netlink, zero_ports_sends_config_done_and_init_done_at_once_ebpf;
    scenario_existing_logger_level_is_kept => existing_logger_level_is_kept_netlink, existing_logger_level_is_kept_ebpf;
    scenario_sigterm_exits_zero_and_leaves_state => sigterm_exits_zero_and_leaves_state_netlink, sigterm_exits_zero_and_leaves_state_ebpf;
}
