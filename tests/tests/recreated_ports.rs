//! A port whose netdev is deleted and created again (dynamic port breakout, a churn storm) has
//! its APPL_DB presence checked again, as the C++ daemon checks it on every message. With
//! APPL_DB and STATE_DB on one server the check and the first write are one presence-checked
//! command (a Lua script): no EXISTS round trip before it, the row written only if APPL_DB
//! holds the port, and a flushed script cache reloaded.

use portsyncd_e2e::monitor::{state_port_writes, state_row_writes, MonCmd, Monitor};
use portsyncd_e2e::{all_links, capture_tests, Capture, Fixture, Stats, APPL_DB, DEFAULT_TIMEOUT};

/// Reads of APPL_DB `PORT_TABLE:<port>` sent by a client (not from inside a script).
fn appl_presence_reads(cmds: &[MonCmd], port: &str) -> usize {
    let key = format!("PORT_TABLE:{port}");
    cmds.iter().filter(|c| !c.lua && c.db == APPL_DB && c.name() == "EXISTS" && c.arg(1) == key).count()
}

fn recreate(fx: &Fixture) {
    fx.ns.ip(&["link", "del", "Ethernet0"]);
    fx.wait_state_absent("Ethernet0");
    fx.create_ports(0..1);
}

fn scenario_recreated_port(mode: Capture) {
    let mut fx = Fixture::start(mode, 2);
    fx.create_ports(0..2);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    let mon = Monitor::start(&fx.redis);

    // Re-created while APPL_DB holds the port: written by the script alone.
    let mark = mon.mark(&fx.redis);
    recreate(&fx);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    mon.sync(&fx.redis);
    let cmds = mon.commands_since(mark);
    assert_eq!(appl_presence_reads(&cmds, "Ethernet0"), 0, "a separate EXISTS before the write");
    let scripted: Vec<_> =
        state_row_writes(&cmds).into_iter().filter(|(c, p)| c == "HSET" && p == "Ethernet0").collect();
    let direct: Vec<_> =
        state_port_writes(&cmds).into_iter().filter(|(c, p)| c == "HSET" && p == "Ethernet0").collect();
    assert!(
        scripted.len() > direct.len(),
        "the first write after re-creation should be the script's: {scripted:?} / direct {direct:?}"
    );

    // Re-created after its APPL_DB entry went away (a port removed from the configuration):
    // nothing written, as the C++ daemon writes nothing ("Cannot find ... in port table").
    let entry = fx.appl_entry("Ethernet0");
    redis::cmd("DEL").arg("PORT_TABLE:Ethernet0").query::<()>(&mut fx.redis.conn(APPL_DB)).expect("DEL");
    let before = fx.daemon().wait_stats(DEFAULT_TIMEOUT, "stats", |_| true).counter("not_in_appl");
    recreate(&fx);
    let stats = fx
        .daemon()
        .wait_stats(DEFAULT_TIMEOUT, "the write found no APPL_DB entry", |s| s.counter("not_in_appl") > before);
    assert!(
        fx.state_entry("Ethernet0").is_empty(),
        "written without an APPL_DB entry: {:?}",
        fx.state_entry("Ethernet0")
    );
    assert!(fx.daemon().log().contains("Cannot find Ethernet0 in port table"), "{}", fx.daemon().log_tail(20));

    // The entry is back: the port's next message writes its row.
    let mut appl = fx.redis.conn(APPL_DB);
    for (f, v) in &entry {
        redis::cmd("HSET").arg("PORT_TABLE:Ethernet0").arg(f).arg(v).query::<()>(&mut appl).expect("HSET");
    }
    fx.ns.ip(&["link", "set", "Ethernet0", "down"]);
    fx.ns.ip(&["link", "set", "Ethernet0", "up"]);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));

    // Redis forgot the script: reloaded, and the re-created port still written.
    let reloads = stats.counter("script_reloads");
    let reply: String = redis::cmd("SCRIPT").arg("FLUSH").query(&mut appl).expect("SCRIPT FLUSH");
    assert_eq!(reply, "OK");
    recreate(&fx);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    fx.daemon().wait_stats(DEFAULT_TIMEOUT, "a script reload", |s: &Stats| s.counter("script_reloads") > reloads);
}

capture_tests! {
    scenario_recreated_port => recreated_port_is_written_by_one_presence_checked_command_netlink,
        recreated_port_is_written_by_one_presence_checked_command_ebpf;
}
