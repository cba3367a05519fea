//! System warm reboot (issue 8, item 1; sonic-flows "Restarts"): Redis comes back from the
//! pre-reboot dump, so every STATE_DB `PORT_TABLE|EthernetN` row exists, with fields other daemons
//! own (orchagent's `host_tx_ready`, `supported_speeds`), `WARM_RESTART_ENABLE_TABLE|system` has
//! `enable=true`, and portsyncd starts before syncd has re-created the host interfaces (the kernel
//! is new). The C++ daemon deletes a row only on RTM_DELLINK; so must we: no DEL/UNLINK of any
//! row (MONITOR), foreign fields intact, rows follow the netdevs as they appear, restore_count+1,
//! PortInitDone.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use portsyncd_e2e::db::config_port_fields;
use portsyncd_e2e::monitor::{produces, state_row_deletes, Monitor};
use portsyncd_e2e::{
    all_links, capture_tests, hash, hgetall, Capture, DaemonOpts, Fixture, Hash, RedisServer, Stats, APPL_DB,
    DEFAULT_TIMEOUT, STATE_DB,
};
use serde_json::{json, Value};

const PORTS: u32 = 16;
const WARM_TABLE_KEY: &str = "WARM_RESTART_TABLE|portsyncd";
/// Fields orchagent writes into the same rows; portsyncd must never lose them.
const FOREIGN: [(&str, &str); 2] = [("host_tx_ready", "true"), ("supported_speeds", "10000,25000")];
/// A boot id no kernel of this machine has (the state file of variant 2 is "from before the
/// reboot").
const OTHER_BOOT_ID: &str = "0badb007-0000-4000-8000-000000000000";

/// The row each port had before the reboot: our 4 fields as the old kernel had them (mtu 9100,
/// which the new veths will not have) plus orchagent's.
fn restored_row() -> Hash {
    let mut h = hash(&[("state", "ok"), ("netdev_oper_status", "up"), ("admin_status", "up"), ("mtu", "9100")]);
    h.extend(FOREIGN.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    h
}

/// What the restored dump holds besides CONFIG_DB (seeded by the fixture): STATE_DB rows, the
/// APPL_DB port table as orchagent had consumed it, the warm-restart tables.
fn restore_redis_from_dump(redis: &RedisServer) {
    let mut state = redis.conn(STATE_DB);
    let mut appl = redis.conn(APPL_DB);
    let mut sp = redis::pipe();
    let mut ap = redis::pipe();
    for i in 0..PORTS {
        sp.hset_multiple(format!("PORT_TABLE|Ethernet{i}"), &restored_row().into_iter().collect::<Vec<_>>()).ignore();
        ap.hset_multiple(format!("PORT_TABLE:Ethernet{i}"), &config_port_fields(i)).ignore();
    }
    sp.hset(WARM_TABLE_KEY, "restore_count", "3").ignore();
    sp.hset("WARM_RESTART_ENABLE_TABLE|system", "enable", "true").ignore();
    ap.hset("PORT_TABLE:PortConfigDone", "count", PORTS.to_string()).ignore();
    ap.hset("PORT_TABLE:PortInitDone", "lanes", "0").ignore();
    sp.query::<()>(&mut state).expect("restore STATE_DB");
    ap.query::<()>(&mut appl).expect("restore APPL_DB");
}

/// A clean-shutdown state file written by the daemon of the previous boot (format version 1 of
/// `portsyncd/src/warm_restart/state_file.rs`): ifindexes of that boot, a boot id that is not
/// this kernel's.
fn write_state_file_of_previous_boot(path: &Path) {
    let current = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    assert_ne!(current.trim(), OTHER_BOOT_ID);
    let ports: BTreeMap<String, Value> = (0..PORTS)
        .map(|i| {
            (
                format!("Ethernet{i}"),
                json!({"ifindex": 100 + i, "admin_up": true, "oper_up": true, "mtu": 9100, "flags": 0x41}),
            )
        })
        .collect();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let doc = json!({
        "version": 1,
        "saved_at_unix_ms": now_ms - 120_000,
        "clean_shutdown": true,
        "boot_id": OTHER_BOOT_ID,
        "ports": ports,
    });
    let dir = path.parent().expect("state dir");
    std::fs::create_dir_all(dir).expect("create state dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod state dir");
    std::fs::write(path, serde_json::to_vec(&doc).expect("encode")).expect("write state file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod state file");
}

fn rows_with_foreign_fields_missing(fx: &Fixture) -> Vec<String> {
    fx.ports
        .iter()
        .filter_map(|p| {
            let row = fx.state_entry(p);
            let ok = FOREIGN.iter().all(|(k, v)| row.get(*k).map(String::as_str) == Some(*v));
            (!ok).then(|| format!("{p}: {row:?}"))
        })
        .collect()
}

fn system_warm_reboot(mode: Capture, state_file_from_previous_boot: bool) {
    let work = tempfile::Builder::new().prefix("psd-sysreboot-").tempdir().expect("tempdir");
    let mut fx = Fixture::new(mode, PORTS);
    restore_redis_from_dump(&fx.redis);
    if state_file_from_previous_boot {
        write_state_file_of_previous_boot(&work.path().join("state").join("port_state.json"));
    }
    assert!(fx.ns.links().keys().all(|l| !l.starts_with("Ethernet")), "no netdevs before syncd creates them");

    let mon = Monitor::start(&fx.redis);
    let stats = fx.start_daemon(DaemonOpts::new(mode).work_dir(work.path()));
    assert_eq!(stats.warm_start(), Some(true), "system warm reboot must be warm: {}", stats.0);
    assert_eq!(stats.get("/restore_count").and_then(Value::as_u64), Some(4), "{}", stats.0);

    // Initial sync is over and no netdev exists: nothing may have been deleted.
    mon.sync(&fx.redis);
    let deleted = state_row_deletes(&mon.commands());
    assert!(
        deleted.is_empty(),
        "STATE_DB rows deleted at start-up of a system warm reboot ({} DEL/UNLINK): {deleted:?}",
        deleted.len()
    );
    let lost = rows_with_foreign_fields_missing(&fx);
    assert!(lost.is_empty(), "rows lost orchagent's fields:\n{}", lost.join("\n"));
    for p in &fx.ports {
        assert_eq!(fx.state_entry(p), restored_row(), "{p}: a port whose netdev is not there yet keeps its row");
    }

    // syncd creates the host interfaces: the rows follow the new kernel.
    fx.create_ports(0..PORTS);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    assert_eq!(fx.state_entry("Ethernet0").get("mtu").map(String::as_str), Some("1500"));
    let lost = rows_with_foreign_fields_missing(&fx);
    assert!(lost.is_empty(), "rows lost orchagent's fields once the netdevs appeared:\n{}", lost.join("\n"));
    assert_eq!(hgetall(&mut fx.redis.conn(STATE_DB), WARM_TABLE_KEY), hash(&[("restore_count", "4")]));

    let orch = &fx.orch;
    fx.daemon.as_mut().expect("daemon").wait_for(DEFAULT_TIMEOUT, "PortInitDone produced and popped", || {
        if orch.has_popped("PortInitDone") {
            Ok(())
        } else {
            Err(format!("popped so far: {:?}", orch.popped().iter().map(|(k, _)| k).collect::<Vec<_>>()))
        }
    });
    let stats = fx.daemon().wait_stats(DEFAULT_TIMEOUT, "port_init_done", Stats::port_init_done);
    mon.sync(&fx.redis);
    let cmds = mon.commands();
    assert!(!produces(&cmds, "PortInitDone").is_empty(), "MONITOR shows no producer call staging PortInitDone");
    let deleted = state_row_deletes(&cmds);
    assert!(deleted.is_empty(), "STATE_DB rows deleted during the system warm reboot: {deleted:?}");
    eprintln!(
        "system warm reboot, {mode}, state file from the previous boot: {state_file_from_previous_boot}: counters {}",
        stats.get("/counters").map(Value::to_string).unwrap_or_default()
    );
}

fn scenario_no_state_file(mode: Capture) {
    system_warm_reboot(mode, false);
}

fn scenario_state_file_of_previous_boot(mode: Capture) {
    system_warm_reboot(mode, true);
}

capture_tests! {
    scenario_no_state_file => system_warm_reboot_deletes_no_row_and_rows_follow_new_netdevs_netlink, system_warm_reboot_deletes_no_row_and_rows_follow_new_netdevs_ebpf;
    scenario_state_file_of_previous_boot => system_warm_reboot_with_previous_boot_state_file_deletes_no_row_netlink, system_warm_reboot_with_previous_boot_state_file_deletes_no_row_ebpf;
}
