//! Incomplete dumps are not proof of deletion (issue 8, item 2). An swss warm restart (same boot,
//! clean-shutdown state file) after one port's netdev was deleted while the daemon was down: when
//! the initial dump's NLMSG_DONE is withheld (EOIU timeout) or the dump stays flagged
//! NLM_F_DUMP_INTR, the daemon cannot know the port is gone, so it must delete nothing (MONITOR)
//! and the row stays. The control: with a complete dump of the same boot, the vanished port's
//! row is deleted (as at 91d1c45).

use std::time::Duration;

use portsyncd_e2e::monitor::{state_row_deletes, Monitor};
use portsyncd_e2e::{
    all_links, capture_tests, hash, port_names, port_state, Capture, DaemonOpts, Fixture, Stats, DEFAULT_TIMEOUT,
    STATE_DB,
};
use tempfile::TempDir;

const PORTS: u32 = 4;
/// The port deleted while the daemon is down.
const GONE: &str = "Ethernet3";

/// First run (cold, every port up, PortInitDone, clean SIGTERM), then `GONE`'s netdev deleted
/// while the daemon is down and warm restart enabled for swss. Returns the daemon's work dir.
fn run_then_delete_a_port_while_down(fx: &mut Fixture) -> TempDir {
    let work = tempfile::Builder::new().prefix("psd-partial-").tempdir().expect("tempdir");
    let stats = fx.start_daemon(DaemonOpts::new(fx.capture).work_dir(work.path()));
    assert_eq!(stats.warm_start(), Some(false));
    fx.create_ports(0..PORTS);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    fx.daemon().wait_stats(DEFAULT_TIMEOUT, "port_init_done", Stats::port_init_done);
    fx.orch.wait_idle(&fx.redis, DEFAULT_TIMEOUT);
    let st = fx.daemon().stop();
    assert_eq!(st.code(), Some(0), "SIGTERM must exit 0");

    fx.ns.ip(&["link", "del", GONE]);
    portsyncd_e2e::wait_until(DEFAULT_TIMEOUT, "netdev deleted", || !fx.ns.links().contains_key(GONE));
    let mut con = fx.redis.conn(STATE_DB);
    redis::cmd("HSET").arg("WARM_RESTART_ENABLE_TABLE|swss").arg("enable").arg("true").query::<()>(&mut con).unwrap();
    work
}

/// How much of the run the rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Incomplete {
    /// Only the initial dump is incomplete (a later complete dump of the same boot would be
    /// proof), so only start-up is checked.
    InitialDump,
    /// Every dump is incomplete: nothing may ever be deleted as vanished.
    EveryDump,
}

fn partial_dump_deletes_nothing(mode: Capture, hook: &[&str], incomplete: Incomplete) {
    let mut fx = Fixture::new(mode, PORTS);
    let work = run_then_delete_a_port_while_down(&mut fx);
    let row_before = fx.state_entry(GONE);
    assert_eq!(row_before, port_state(true, true, 1500));

    let mon = Monitor::start(&fx.redis);
    let stats = fx.start_daemon(DaemonOpts::new(mode).work_dir(work.path()).args(hook.iter().copied()));
    assert_eq!(stats.warm_start(), Some(true), "{}", stats.0);
    mon.sync(&fx.redis);
    let deleted = state_row_deletes(&mon.commands());
    assert!(deleted.is_empty(), "an incomplete dump ({hook:?}) deleted STATE_DB rows: {deleted:?}");
    assert_eq!(fx.state_entry(GONE), row_before, "{GONE}'s row must stay without proof that the netdev is gone");
    let stats =
        fx.daemon().wait_stats(DEFAULT_TIMEOUT, "counters.vanished_kept >= 1", |s| s.counter("vanished_kept") >= 1);
    assert_eq!(stats.counter("state_deletes"), 0, "{}", stats.0);
    let present = port_names(0..PORTS - 1);
    fx.wait_state_matches_kernel(&present, DEFAULT_TIMEOUT, |_| true);

    if incomplete == Incomplete::EveryDump {
        // Later events are processed normally and still delete nothing.
        fx.ns.ip(&["link", "set", "Ethernet0", "down"]);
        fx.wait_state_entry("Ethernet0", &port_state(false, false, 1500));
        mon.sync(&fx.redis);
        let deleted = state_row_deletes(&mon.commands());
        assert!(deleted.is_empty(), "STATE_DB rows deleted with every dump incomplete: {deleted:?}");
        assert_eq!(fx.state_entry(GONE), row_before);
    }
}

/// The dump's NLMSG_DONE never comes: initial sync completes at the EOIU timeout.
fn scenario_eoiu_timeout(mode: Capture) {
    partial_dump_deletes_nothing(mode, &["--test-hold-eoiu", "--eoiu-timeout-secs", "2"], Incomplete::InitialDump);
}

/// Every dump stays flagged NLM_F_DUMP_INTR after its retries.
fn scenario_dump_intr(mode: Capture) {
    partial_dump_deletes_nothing(mode, &["--test-dump-intr"], Incomplete::EveryDump);
}

/// Control: a complete dump of the same boot proves the port is gone; its row is deleted, and
/// only that one.
fn scenario_complete_dump_deletes_vanished(mode: Capture) {
    let mut fx = Fixture::new(mode, PORTS);
    let work = run_then_delete_a_port_while_down(&mut fx);
    let mon = Monitor::start(&fx.redis);
    let stats = fx.start_daemon(DaemonOpts::new(mode).work_dir(work.path()));
    assert_eq!(stats.warm_start(), Some(true));
    fx.wait_state_absent(GONE);
    let present = port_names(0..PORTS - 1);
    fx.wait_state_matches_kernel(&present, DEFAULT_TIMEOUT, |_| true);
    mon.sync(&fx.redis);
    assert_eq!(state_row_deletes(&mon.commands()), [GONE], "exactly the vanished port's row is deleted");
    let stats =
        fx.daemon().wait_stats(Duration::from_secs(5), "state_deletes = 1", |s| s.counter("state_deletes") == 1);
    assert_eq!(stats.counter("state_writes"), 0, "{}", stats.0);
    assert_eq!(
        fx.state_entry("Ethernet0"),
        hash(&[("admin_status", "up"), ("mtu", "1500"), ("netdev_oper_status", "up"), ("state", "ok")])
    );
}

capture_tests! {
    scenario_eoiu_timeout => eoiu_timeout_dump_deletes_no_row_netlink, eoiu_timeout_dump_deletes_no_row_ebpf;
    scenario_dump_intr => dump_intr_dump_deletes_no_row_netlink, dump_intr_dump_deletes_no_row_ebpf;
    scenario_complete_dump_deletes_vanished => complete_same_boot_dump_deletes_vanished_row_netlink, complete_same_boot_dump_deletes_vanished_row_ebpf;
}
