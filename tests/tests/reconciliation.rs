//! Self-healing (issue 8, "Self-healing"): with periodic reconciliation every 2 s and the daemon
//! idle, someone deletes 3 of our STATE_DB rows and alters a field of 2 others; within two
//! intervals (plus slack) every one is rewritten to the kernel's state and each repair counted,
//! and rows nobody touched are not rewritten.
//!
//! The interval is set through the environment (`PORTSYNCD_RECONCILE_INTERVAL_SECS`, the env
//! form of `--reconcile-interval-secs`), so that a daemon without the option runs and fails on
//! behaviour (no repair), not on an unknown flag.

use std::time::{Duration, Instant};

use portsyncd_e2e::monitor::{state_row_writes, Monitor};
use portsyncd_e2e::{all_links, capture_tests, Capture, DaemonOpts, Fixture, DEFAULT_TIMEOUT, STATE_DB};
use serde_json::Value;

const PORTS: u32 = 16;
const INTERVAL_SECS: u64 = 2;
const DELETED: [&str; 3] = ["Ethernet1", "Ethernet5", "Ethernet9"];
const ALTERED: [&str; 2] = ["Ethernet2", "Ethernet12"];

fn scenario_reconciliation_repairs_drift(mode: Capture) {
    let mut fx = Fixture::new(mode, PORTS);
    fx.start_daemon(DaemonOpts::new(mode).env("PORTSYNCD_RECONCILE_INTERVAL_SECS", INTERVAL_SECS.to_string()));
    fx.create_ports(0..PORTS);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    let before = fx.daemon().stats().map(|s| s.counter("repairs")).unwrap_or(0);
    assert_eq!(before, 0, "nothing to repair yet");

    let mon = Monitor::start(&fx.redis);
    let mut con = fx.redis.conn(STATE_DB);
    let mut pipe = redis::pipe();
    for p in DELETED {
        pipe.del(format!("PORT_TABLE|{p}")).ignore();
    }
    for p in ALTERED {
        pipe.hset(format!("PORT_TABLE|{p}"), "mtu", "1234").ignore();
    }
    let log_before = fx.daemon().log().len();
    pipe.query::<()>(&mut con).expect("drift STATE_DB");
    let drifted = Instant::now();

    let deadline = Duration::from_secs(2 * INTERVAL_SECS) + Duration::from_secs(3);
    fx.wait_state_matches_kernel(&fx.ports, deadline, |_| true);
    let repaired_after = drifted.elapsed();
    let stats = fx.daemon().wait_stats(DEFAULT_TIMEOUT, "counters.repairs >= 5", |s| s.counter("repairs") >= 5);
    eprintln!(
        "reconciliation, {mode}: 5 drifted rows repaired {:.0} ms after the drift; counters {}",
        repaired_after.as_secs_f64() * 1e3,
        stats.get("/counters").map(Value::to_string).unwrap_or_default()
    );
    assert_eq!(stats.counter("repairs"), 5, "one repair per drifted row: {}", stats.0);
    assert!(stats.counter("reconciliations") >= 1, "{}", stats.0);

    // Only the drifted rows were written (the test's own DEL/HSET excluded), and one more
    // interval with no drift repairs nothing.
    std::thread::sleep(Duration::from_secs(INTERVAL_SECS + 1));
    mon.sync(&fx.redis);
    let cmds = mon.commands();
    // The first 5 write commands are the test's own drift.
    let mut daemon_rows: Vec<String> = state_row_writes(&cmds).into_iter().skip(5).map(|(_, p)| p).collect();
    daemon_rows.sort();
    daemon_rows.dedup();
    let mut want: Vec<String> = DELETED.iter().chain(ALTERED.iter()).map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(daemon_rows, want, "rows the daemon rewrote");
    let stats = fx.daemon().stats().expect("stats");
    assert_eq!(stats.counter("repairs"), 5, "no further repair without drift: {}", stats.0);
    // Each repair is logged with its port (and the altered field).
    let log = fx.daemon().log();
    let since_drift: Vec<&str> = log.get(log_before..).unwrap_or_default().lines().collect();
    for p in DELETED {
        assert!(
            since_drift.iter().any(|l| names_port(l, p)),
            "no log line names the repaired {p}:\n{}",
            since_drift.join("\n")
        );
    }
    for p in ALTERED {
        assert!(
            since_drift.iter().any(|l| names_port(l, p) && l.contains("mtu")),
            "no log line names the repaired {p} and its field mtu:\n{}",
            since_drift.join("\n")
        );
    }
}

/// `line` mentions port `p` (and not just a longer name it prefixes, e.g. Ethernet12 for Ethernet1).
fn names_port(line: &str, p: &str) -> bool {
    line.match_indices(p).any(|(i, _)| !line[i + p.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

capture_tests! {
    scenario_reconciliation_repairs_drift => reconciliation_repairs_deleted_and_altered_rows_netlink, reconciliation_repairs_deleted_and_altered_rows_ebpf;
}
