//! Warm restart (contract §3.1, §5.3 warm_vs_cold, §5.4 scenario 9): a daemon stopped (SIGTERM or
//! kill -9) and restarted with `WARM_RESTART_ENABLE_TABLE|swss enable=true` against the same Redis
//! and state file. Redis MONITOR, stats and the kernel in; what the restart wrote, and only that, out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portsyncd_e2e::monitor::{
    daemon_writes, direct_appl_writes, hset_and_del_ports, producer_calls, show, state_port_reads, state_port_writes,
    Monitor,
};
use portsyncd_e2e::netns::LinkState;
use portsyncd_e2e::storm::{kernel_in_storm_final, storm_lines};
use portsyncd_e2e::{
    all_links, appl_db_snapshot, assert_state_matches_kernel, capture_tests, config_db_snapshot, hash, hgetall,
    port_names, port_state, state_db_port_table, state_db_snapshot, wait_until, Capture, DaemonOpts, DbSnapshot,
    DbValue, Fixture, Hash, NetNs, RedisServer, Stats, APPL_DB, DEFAULT_TIMEOUT, STATE_DB, STORM_TIMEOUT,
};
use serde_json::Value;
use tempfile::TempDir;

const WARM_ENABLE_KEY: &str = "WARM_RESTART_ENABLE_TABLE|swss";
const WARM_TABLE_KEY: &str = "WARM_RESTART_TABLE|portsyncd";
const EOIU_TIMEOUT: Duration = Duration::from_secs(2);
const HOLD_EOIU_ARGS: [&str; 3] = ["--test-hold-eoiu", "--eoiu-timeout-secs", "2"];

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Warm-restart helpers
// ---------------------------------------------------------------------------------------------

fn work_dir() -> TempDir {
    tempfile::Builder::new().prefix("psd-warm-").tempdir().expect("tempdir")
}

/// Daemon options keeping stats, log and `--state-file` in `work` across restarts.
fn opts(mode: Capture, work: &Path) -> DaemonOpts {
    DaemonOpts::new(mode).work_dir(work)
}

fn state_path(work: &Path) -> PathBuf {
    work.join("state").join("port_state.json")
}

fn backup_dir(work: &Path) -> PathBuf {
    work.join("state").join("backups")
}

/// Backups (`port_state.<ms>.<seq>.json`), oldest first.
fn list_backups(work: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(backup_dir(work))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        n.starts_with("port_state.") && n.ends_with(".json")
    });
    v.sort();
    v
}

/// Files set aside as corrupt, in the state directory and in backups/.
fn set_aside_files(work: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for dir in [work.join("state"), backup_dir(work)] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            out.extend(
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains(".corrupt.")),
            );
        }
    }
    out.sort();
    out
}

fn read_doc(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}\n{text}", path.display()))
}

fn doc_ports(doc: &Value) -> usize {
    doc.get("ports").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0)
}

fn enable_warm(redis: &RedisServer) {
    let mut con = redis.conn(STATE_DB);
    redis::cmd("HSET").arg(WARM_ENABLE_KEY).arg("enable").arg("true").query::<()>(&mut con).expect("enable warm");
}

fn warm_table(redis: &RedisServer) -> Hash {
    hgetall(&mut redis.conn(STATE_DB), WARM_TABLE_KEY)
}

/// `warm_restart.<name>` from the stats (0 when absent).
fn wr(stats: &Stats, name: &str) -> u64 {
    stats.get(&format!("/warm_restart/{name}")).and_then(Value::as_u64).unwrap_or(0)
}

fn stats_line(stats: &Stats) -> String {
    format!(
        "counters {}, warm_restart {}",
        stats.get("/counters").map(Value::to_string).unwrap_or_default(),
        stats.get("/warm_restart").map(Value::to_string).unwrap_or_default()
    )
}

/// Waits until the kernel view satisfies `pred`.
fn wait_kernel(ns: &NetNs, what: &str, timeout: Duration, pred: impl Fn(&BTreeMap<String, LinkState>) -> bool) {
    wait_until(timeout, what, || pred(&ns.links()));
}

/// First run: cold start, ports `created` created and up after the daemon is ready, STATE_DB
/// equal to the kernel (and PortInitDone when every configured port exists), then SIGTERM, which
/// must exit 0 and leave `restore_count` 0.
fn first_run_then_stop(fx: &mut Fixture, work: &Path, created: &[u32], extra_args: &[&str]) {
    let stats = fx.start_daemon(opts(fx.capture, work).args(extra_args.iter().copied()));
    assert_eq!(stats.warm_start(), Some(false), "first start must be cold");
    fx.create_ports(created.iter().copied());
    let names = port_names(created.iter().copied());
    fx.wait_state_matches_kernel(&names, STORM_TIMEOUT, all_links(&names, true, true));
    if created.len() == fx.ports.len() {
        fx.daemon().wait_stats(DEFAULT_TIMEOUT, "port_init_done", Stats::port_init_done);
    }
    fx.orch.wait_idle(&fx.redis, DEFAULT_TIMEOUT);
    stop_clean(fx);
}

fn stop_clean(fx: &mut Fixture) {
    let st = fx.daemon().stop();
    assert_eq!(st.code(), Some(0), "SIGTERM must exit 0, got {st:?}\n{}", fx.daemon().log_tail(40));
    assert_eq!(warm_table(&fx.redis), hash(&[("restore_count", "0")]), "after a cold run");
}

/// Starts the warm daemon, checks the restart was warm with restore_count 0 -> 1; returns the
/// stats at ready and the spawn time.
fn start_warm(fx: &mut Fixture, o: DaemonOpts) -> (Stats, SystemTime, Duration) {
    let spawned = SystemTime::now();
    let t0 = Instant::now();
    let stats = fx.start_daemon(o);
    let ready = t0.elapsed();
    assert_eq!(
        stats.warm_start(),
        Some(true),
        "WARM_RESTART_ENABLE_TABLE|swss enable=true + restore_count must be warm"
    );
    assert_eq!(stats.get("/restore_count").and_then(Value::as_u64), Some(1), "stats restore_count");
    (stats, spawned, ready)
}

fn assert_warm_table_is_restore_count_1(redis: &RedisServer) {
    assert_eq!(
        warm_table(redis),
        hash(&[("restore_count", "1")]),
        "{WARM_TABLE_KEY} must hold restore_count 1 and nothing else (no `state`)"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. No link change
// ---------------------------------------------------------------------------------------------

/// What a warm restart without link change cost.
struct NoChangeRun {
    spawn_to_ready: Duration,
    spawn_to_port_init_done: Duration,
    daemon_writes: usize,
    script_writes: usize,
}

fn warm_restart_without_link_change(mode: Capture, n: u32) -> NoChangeRun {
    let work = work_dir();
    let mut fx = Fixture::new(mode, n);
    let all: Vec<u32> = (0..n).collect();
    first_run_then_stop(&mut fx, work.path(), &all, &[]);
    let doc = read_doc(&state_path(work.path()));
    assert_eq!(doc.get("clean_shutdown"), Some(&Value::Bool(true)), "SIGTERM save must be clean: {doc}");
    assert_eq!(doc_ports(&doc), n as usize, "state file ports");
    let state_before = state_db_port_table(&fx.redis);
    let appl_before = appl_db_snapshot(&fx.redis);
    enable_warm(&fx.redis);

    let mon = Monitor::start(&fx.redis);
    let (_, spawned, ready) = start_warm(&mut fx, opts(mode, work.path()));
    let stats = fx.daemon().wait_stats(DEFAULT_TIMEOUT, "port_init_done", Stats::port_init_done);
    // Nothing in this test reads STATE_DB between Monitor::start and here.
    mon.sync(&fx.redis);
    let cmds = mon.commands();

    let writes = state_port_writes(&cmds);
    assert!(writes.is_empty(), "warm restart without link change wrote STATE_DB PORT_TABLE: {writes:?}");
    let reads = state_port_reads(&cmds);
    assert_eq!(
        reads, 0,
        "the clean-shutdown file of this boot is the baseline; STATE_DB PORT_TABLE must not be read back"
    );
    let produced = producer_calls(&cmds);
    assert_eq!(
        produced,
        vec![vec!["PortInitDone".to_owned()]],
        "the only APPL_DB write of a warm start is one producer set of PortInitDone (no ports, no PortConfigDone)"
    );
    let direct = direct_appl_writes(&cmds);
    assert!(direct.is_empty(), "APPL_DB written outside the producer:\n{}", show(&direct));
    assert_eq!(stats.counter("state_writes"), 0, "{}", stats_line(&stats));
    assert_eq!(stats.counter("state_deletes"), 0, "{}", stats_line(&stats));
    assert_eq!(stats.counter("old_interfaces_down"), 0, "{}", stats_line(&stats));

    let init_done = cmds
        .iter()
        .find(|c| !c.lua && producer_calls(std::slice::from_ref(*c)).iter().flatten().any(|k| k == "PortInitDone"))
        .map(|c| c.ts_us)
        .expect("PortInitDone producer call");
    let daemon_writes = daemon_writes(&cmds);
    let script_writes = cmds
        .iter()
        .filter(|c| c.lua && matches!(c.name().as_str(), "SADD" | "HSET" | "PUBLISH"))
        // The stand-in's pops write `PORT_TABLE:<k>`; the producer stages `_PORT_TABLE:<k>`.
        .filter(|c| c.db == APPL_DB && !c.arg(1).starts_with("PORT_TABLE:"))
        .count();
    let run = NoChangeRun {
        spawn_to_ready: ready,
        spawn_to_port_init_done: Duration::from_micros(init_done.saturating_sub(unix_us(spawned))),
        daemon_writes: daemon_writes.len(),
        script_writes,
    };
    assert!(
        daemon_writes.iter().all(|c| c.db != STATE_DB || c.arg(1) == WARM_TABLE_KEY),
        "STATE_DB writes other than restore_count:\n{}",
        show(&daemon_writes)
    );

    assert_warm_table_is_restore_count_1(&fx.redis);
    fx.orch.wait_idle(&fx.redis, DEFAULT_TIMEOUT);
    assert_eq!(fx.appl_entry("PortInitDone"), hash(&[("lanes", "0")]));
    assert_eq!(appl_db_snapshot(&fx.redis), appl_before, "APPL_DB changed across a warm restart without link change");
    assert_eq!(state_db_port_table(&fx.redis), state_before, "STATE_DB PORT_TABLE changed");
    assert_state_matches_kernel(&fx.ns, &fx.redis, &fx.ports);
    let links = fx.ns.links();
    let downed: Vec<&String> = fx.ports.iter().filter(|p| !links.get(*p).is_some_and(|l| l.admin_up)).collect();
    assert!(downed.is_empty(), "a warm start must not set existing netdevs admin-down: {downed:?}");

    // The restarted daemon follows the kernel: its ports are not "old".
    fx.ns.ip(&["link", "set", "Ethernet0", "down"]);
    fx.wait_state_entry("Ethernet0", &port_state(false, false, 1500));
    run
}

fn scenario_no_link_change(mode: Capture) {
    let run = warm_restart_without_link_change(mode, 16);
    eprintln!(
        "warm restart, 16 ports, {mode}: spawn->ready {:?}, spawn->PortInitDone {:?}, daemon write commands {} (+{} by its scripts)",
        run.spawn_to_ready, run.spawn_to_port_init_done, run.daemon_writes, run.script_writes
    );
}

/// Measurement (numbers printed, not asserted beyond the correctness checks of scenario 1).
#[test]
fn warm_restart_of_512_ports_without_change_writes_only_restore_count_and_port_init_done_netlink() {
    let run = warm_restart_without_link_change(Capture::Netlink, 512);
    eprintln!(
        "MEASURE warm restart, 512 ports, netlink: spawn->ready {:.1} ms, spawn->PortInitDone published {:.1} ms, \
         daemon write commands {} (+{} run by its producer script)",
        run.spawn_to_ready.as_secs_f64() * 1e3,
        run.spawn_to_port_init_done.as_secs_f64() * 1e3,
        run.daemon_writes,
        run.script_writes
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Links changed while the daemon was down
// ---------------------------------------------------------------------------------------------

fn scenario_links_changed_while_down(mode: Capture) {
    let work = work_dir();
    // Ethernet8 is configured (so the first run puts it into APPL_DB) but gets its netdev only
    // while the daemon is down.
    let mut fx = Fixture::new(mode, 9);
    let first: Vec<u32> = (0..8).collect();
    first_run_then_stop(&mut fx, work.path(), &first, &[]);
    assert!(!fx.appl_entry("Ethernet8").is_empty(), "APPL_DB PORT_TABLE:Ethernet8 from the first run");
    let doc = read_doc(&state_path(work.path()));
    assert_eq!(doc.get("clean_shutdown"), Some(&Value::Bool(true)), "{doc}");

    fx.ns.ip(&["link", "set", "Ethernet1", "down"]);
    fx.ns.ip(&["link", "set", "Ethernet2", "mtu", "9000"]);
    fx.ns.ip(&["link", "del", "Ethernet3"]);
    fx.create_ports([8]);
    wait_kernel(&fx.ns, "the changes made while the daemon is down", DEFAULT_TIMEOUT, |l| {
        l.get("Ethernet1").is_some_and(|e| !e.admin_up)
            && l.get("Ethernet2").is_some_and(|e| e.mtu == 9000)
            && !l.contains_key("Ethernet3")
            && l.get("Ethernet8").is_some_and(|e| e.admin_up && e.oper_up)
    });
    enable_warm(&fx.redis);

    let mon = Monitor::start(&fx.redis);
    let (stats, _, _) = start_warm(&mut fx, opts(mode, work.path()));
    mon.sync(&fx.redis);
    let cmds = mon.commands();

    let writes = state_port_writes(&cmds);
    let (hset, del) = hset_and_del_ports(&writes);
    let want_hset: BTreeSet<String> = ["Ethernet1", "Ethernet2", "Ethernet8"].map(String::from).into();
    let want_del: BTreeSet<String> = ["Ethernet3".to_owned()].into();
    assert_eq!(hset, want_hset, "ports HSET by the warm restart (all writes: {writes:?})");
    assert_eq!(del, want_del, "ports DEL'ed by the warm restart (all writes: {writes:?})");
    assert_eq!(writes.len(), 4, "one command per changed port: {writes:?}");
    assert_eq!(stats.counter("state_writes"), 3, "{}", stats_line(&stats));
    assert_eq!(stats.counter("state_deletes"), 1, "{}", stats_line(&stats));
    let produced: Vec<String> = producer_calls(&cmds).into_iter().flatten().collect();
    assert!(produced.iter().all(|k| k == "PortInitDone"), "APPL_DB port writes in a warm start: {produced:?}");
    let direct = direct_appl_writes(&cmds);
    assert!(direct.is_empty(), "APPL_DB written outside the producer:\n{}", show(&direct));

    let present: Vec<String> = fx.ports.iter().filter(|p| *p != "Ethernet3").cloned().collect();
    fx.wait_state_matches_kernel(&present, DEFAULT_TIMEOUT, |_| true);
    assert!(fx.state_entry("Ethernet3").is_empty(), "deleted netdev's STATE_DB row must be gone");
    assert_eq!(fx.state_entry("Ethernet1"), port_state(false, false, 1500));
    assert_eq!(fx.state_entry("Ethernet2"), port_state(true, true, 9000));
    assert_eq!(fx.state_entry("Ethernet8"), port_state(true, true, 1500));
    assert_warm_table_is_restore_count_1(&fx.redis);
}

// ---------------------------------------------------------------------------------------------
// 3. kill -9 in the middle of a storm
// ---------------------------------------------------------------------------------------------

/// Flap rounds before the final state: long enough that the kill lands mid-storm.
const STORM_ROUNDS: u32 = 3;

#[test]
fn kill9_during_512_port_storm_then_warm_restart_matches_kernel_netlink() {
    const N: u32 = 512;
    let mode = Capture::Netlink;
    let work = work_dir();
    let mut fx = Fixture::new(mode, N);
    fx.start_daemon(opts(mode, work.path()));
    fx.create_ports(0..N);
    fx.wait_state_matches_kernel(&fx.ports, STORM_TIMEOUT, all_links(&fx.ports, true, true));
    fx.daemon().wait_stats(DEFAULT_TIMEOUT, "port_init_done", Stats::port_init_done);
    let events_before = fx.daemon().stats().map(|s| s.counter("events")).unwrap_or(0);

    let lines = storm_lines(N, STORM_ROUNDS);
    let ns = &fx.ns;
    let daemon = fx.daemon.as_mut().expect("daemon");
    let (batch_done_at_kill, events_at_kill, batch_time) = std::thread::scope(|s| {
        let storm = s.spawn(|| {
            let t = Instant::now();
            ns.batch(&lines);
            t.elapsed()
        });
        // Killed once the daemon has provably consumed part of the storm, so the kill lands
        // in the middle of its processing (stats are refreshed every 200 ms).
        let seen = daemon.wait_stats(DEFAULT_TIMEOUT, "storm events counted", |s| s.counter("events") > events_before);
        let done = storm.is_finished();
        let st = daemon.kill9();
        assert!(st.code().is_none(), "kill -9 must end the daemon by signal, got {st:?}");
        let batch_time = storm.join().expect("storm thread");
        (done, seen.counter("events") - events_before, batch_time)
    });
    eprintln!(
        "kill -9 during the storm ({} ip commands in {:.0} ms): ip -batch finished at kill: {batch_done_at_kill}; \
         the daemon had counted {events_at_kill} storm events",
        lines.len(),
        batch_time.as_secs_f64() * 1e3
    );
    let doc = read_doc(&state_path(work.path()));
    assert_eq!(doc.get("clean_shutdown"), Some(&Value::Bool(false)), "a killed daemon leaves an unclean file: {doc}");
    wait_kernel(&fx.ns, "kernel to settle in the storm's final state", STORM_TIMEOUT, kernel_in_storm_final(N));
    assert_eq!(warm_table(&fx.redis), hash(&[("restore_count", "0")]));
    enable_warm(&fx.redis);

    let mon = Monitor::start(&fx.redis);
    let (stats, _, ready) = start_warm(&mut fx, opts(mode, work.path()));
    mon.sync(&fx.redis);
    let cmds = mon.commands();
    assert!(
        state_port_reads(&cmds) > 0,
        "after kill -9 the state file is not from a clean shutdown: the baseline must be read back from STATE_DB"
    );
    let produced: Vec<String> = producer_calls(&cmds).into_iter().flatten().collect();
    assert!(produced.iter().all(|k| k == "PortInitDone"), "APPL_DB port writes in a warm start: {produced:?}");
    fx.wait_state_matches_kernel(&fx.ports, STORM_TIMEOUT, kernel_in_storm_final(N));
    assert_warm_table_is_restore_count_1(&fx.redis);
    assert!(fx.daemon().is_running());
    let last = fx.daemon().stats().expect("stats");
    eprintln!(
        "MEASURE warm restart after kill -9, 512 ports: spawn->ready {:.1} ms; STATE_DB writes at ready {}, deletes {}, \
         unchanged {}; daemon write commands until ready {}",
        ready.as_secs_f64() * 1e3,
        stats.counter("state_writes"),
        stats.counter("state_deletes"),
        stats.counter("skipped_unchanged"),
        daemon_writes(&cmds).len()
    );
    eprintln!("final stats: {}", stats_line(&last));
}

// ---------------------------------------------------------------------------------------------
// 4. Corrupt state file
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Damage {
    Truncated,
    Garbage,
    WrongVersion,
    Empty,
}

const DAMAGES: [Damage; 4] = [Damage::Truncated, Damage::Garbage, Damage::WrongVersion, Damage::Empty];

/// Replaces `path` with a damaged copy. Replaced, not rewritten in place: backups are hard links
/// of earlier current files.
fn damage_file(path: &Path, d: Damage) {
    let body = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let damaged = match d {
        Damage::Truncated => body[..body.len() / 2].to_vec(),
        Damage::Garbage => b"\x00\xffportsyncd? {{{ not json \x7f".to_vec(),
        Damage::WrongVersion => {
            let mut v: Value = serde_json::from_slice(&body).expect("state file is JSON before damage");
            v["version"] = Value::from(99);
            serde_json::to_vec(&v).expect("encode")
        }
        Damage::Empty => Vec::new(),
    };
    let tmp = path.with_file_name("damage.tmp");
    std::fs::write(&tmp, damaged).expect("write damaged file");
    std::fs::rename(&tmp, path).expect("rename damaged file");
}

/// A clean run whose newest backup holds every port (a periodic save after the writes, then the
/// SIGTERM save rotates it), a link change while down, the current file (or every file) damaged,
/// then a warm restart.
fn corrupt_state_then_warm_restart(damage: Damage, all: bool) {
    const N: u32 = 4;
    let mode = Capture::Netlink;
    let work = work_dir();
    let mut fx = Fixture::new(mode, N);
    let stats = fx.start_daemon(opts(mode, work.path()).args(["--state-save-interval-secs", "1"]));
    assert_eq!(stats.warm_start(), Some(false));
    fx.create_ports(0..N);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    let current = state_path(work.path());
    wait_until(DEFAULT_TIMEOUT, "a periodic save holding every port", || {
        std::fs::read(&current)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|d| doc_ports(&d) == N as usize)
    });
    fx.orch.wait_idle(&fx.redis, DEFAULT_TIMEOUT);
    stop_clean(&mut fx);
    let backups = list_backups(work.path());
    let newest = backups
        .last()
        .cloned()
        .unwrap_or_else(|| panic!("no backup after several saves in {}", backup_dir(work.path()).display()));
    assert_eq!(doc_ports(&read_doc(&newest)), N as usize, "newest backup {} holds every port", newest.display());

    // A change the restart must publish: a wrong baseline shows as a missing or extra write.
    fx.ns.ip(&["link", "set", "Ethernet1", "down"]);
    wait_kernel(&fx.ns, "Ethernet1 admin-down", DEFAULT_TIMEOUT, |l| l.get("Ethernet1").is_some_and(|e| !e.admin_up));
    damage_file(&current, damage);
    if all {
        for (i, b) in backups.iter().enumerate() {
            damage_file(b, DAMAGES[(i + 1) % DAMAGES.len()]);
        }
    }
    let damaged = 1 + if all { backups.len() as u64 } else { 0 };
    enable_warm(&fx.redis);

    let mon = Monitor::start(&fx.redis);
    let (stats, _, _) = start_warm(&mut fx, opts(mode, work.path()));
    mon.sync(&fx.redis);
    let cmds = mon.commands();
    assert!(fx.daemon().is_running(), "daemon died with a corrupt state file");
    assert_eq!(wr(&stats, "corrupt_files_found"), damaged, "{}", stats_line(&stats));
    assert_eq!(wr(&stats, "recoveries_from_backup"), u64::from(!all), "{}", stats_line(&stats));
    assert_eq!(
        set_aside_files(work.path()).len() as u64,
        damaged,
        "damaged files set aside: {:?}",
        set_aside_files(work.path())
    );
    if !all {
        let name = newest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        assert!(
            fx.daemon().log().contains(&name),
            "the recovery must name the newest backup {name}:\n{}",
            fx.daemon().log_tail(30)
        );
    }
    assert!(
        state_port_reads(&cmds) > 0,
        "neither a backup nor a missing file is a clean shutdown: the baseline must be read back from STATE_DB"
    );
    let (hset, del) = hset_and_del_ports(&state_port_writes(&cmds));
    assert_eq!(hset, BTreeSet::from(["Ethernet1".to_owned()]), "only the port changed while down is written");
    assert!(del.is_empty(), "nothing deleted: {del:?}");
    assert_eq!(stats.counter("state_writes"), 1, "{}", stats_line(&stats));

    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, |_| true);
    assert_eq!(fx.state_entry("Ethernet1"), port_state(false, false, 1500));
    assert_warm_table_is_restore_count_1(&fx.redis);
    // The restart saved a good current file again.
    let doc = read_doc(&current);
    assert_eq!(doc.get("version").and_then(Value::as_u64), Some(1), "{doc}");
    assert_eq!(doc_ports(&doc), N as usize, "{doc}");
}

#[test]
fn truncated_state_file_recovers_from_newest_backup_netlink() {
    corrupt_state_then_warm_restart(Damage::Truncated, false);
}

#[test]
fn garbage_state_file_recovers_from_newest_backup_netlink() {
    corrupt_state_then_warm_restart(Damage::Garbage, false);
}

#[test]
fn wrong_version_state_file_recovers_from_newest_backup_netlink() {
    corrupt_state_then_warm_restart(Damage::WrongVersion, false);
}

#[test]
fn empty_state_file_recovers_from_newest_backup_netlink() {
    corrupt_state_then_warm_restart(Damage::Empty, false);
}

#[test]
fn all_state_files_corrupt_still_warm_starts_from_state_db_netlink() {
    corrupt_state_then_warm_restart(Damage::Garbage, true);
}

/// A clean-shutdown file from another boot is not trusted as the baseline: STATE_DB is read back,
/// so a row that differs from the kernel is rewritten even though the file says it matched.
#[test]
fn clean_state_file_from_another_boot_is_checked_against_state_db_netlink() {
    let mode = Capture::Netlink;
    let work = work_dir();
    let mut fx = Fixture::new(mode, 4);
    first_run_then_stop(&mut fx, work.path(), &[0, 1, 2, 3], &[]);
    let path = state_path(work.path());
    let mut doc = read_doc(&path);
    assert_eq!(doc.get("clean_shutdown"), Some(&Value::Bool(true)), "{doc}");
    doc["boot_id"] = Value::from("00000000-0000-0000-0000-000000000000");
    std::fs::write(&path, serde_json::to_vec(&doc).expect("encode")).expect("rewrite state file");
    // STATE_DB no longer holds what the file says was written.
    let mut con = fx.redis.conn(STATE_DB);
    redis::cmd("HSET").arg("PORT_TABLE|Ethernet0").arg("mtu").arg("1").query::<()>(&mut con).expect("HSET");
    enable_warm(&fx.redis);
    let (stats, _, _) = start_warm(&mut fx, opts(mode, work.path()));
    assert_eq!(stats.counter("state_writes"), 1, "{}", stats_line(&stats));
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, |_| true);
}

/// Without any usable state file the baseline comes from STATE_DB alone, and nothing proves its
/// rows are of this boot (they could have been restored from before a reboot): a netdev deleted
/// while the daemon was down keeps its row, as with the C++ daemon, which deletes only on
/// RTM_DELLINK. The other rows are verified and not rewritten.
#[test]
fn port_deleted_while_down_keeps_its_row_without_proof_of_boot_netlink() {
    let mode = Capture::Netlink;
    let work = work_dir();
    let mut fx = Fixture::new(mode, 4);
    first_run_then_stop(&mut fx, work.path(), &[0, 1, 2, 3], &[]);
    // The state directory is lost (wiped disk, new container image): no file names the ports.
    std::fs::remove_dir_all(work.path().join("state")).expect("remove state dir");
    fx.ns.ip(&["link", "del", "Ethernet3"]);
    wait_kernel(&fx.ns, "Ethernet3 deleted", DEFAULT_TIMEOUT, |l| !l.contains_key("Ethernet3"));
    let before = fx.state_entry("Ethernet3");
    assert!(!before.is_empty(), "Ethernet3 had a row before the restart");
    enable_warm(&fx.redis);
    let (stats, _, _) = start_warm(&mut fx, opts(mode, work.path()));
    let present = port_names(0..3);
    fx.wait_state_matches_kernel(&present, DEFAULT_TIMEOUT, |_| true);
    assert_eq!(stats.counter("state_writes"), 0, "{}", stats_line(&stats));
    assert_eq!(stats.counter("state_deletes"), 0, "{}", stats_line(&stats));
    assert!(stats.counter("vanished_kept") >= 1, "{}", stats_line(&stats));
    assert_eq!(fx.state_entry("Ethernet3"), before, "no proof the netdev is gone for good: row kept");
    assert_warm_table_is_restore_count_1(&fx.redis);
}

// ---------------------------------------------------------------------------------------------
// 5. EOIU never arrives
// ---------------------------------------------------------------------------------------------

fn assert_eoiu_timed_out(stats: &Stats) {
    assert!(stats.initial_sync_done());
    assert_eq!(stats.eoiu(), Some("timeout"), "{}", stats_line(stats));
    assert_eq!(stats.counter("eoiu_timeouts"), 1, "{}", stats_line(stats));
    assert_eq!(wr(stats, "eoiu_timed_out"), 1, "{}", stats_line(stats));
    assert_eq!(wr(stats, "eoiu_seen"), 0, "{}", stats_line(stats));
    // Initial sync waited for the 2 s timeout, and not for the 10 s default.
    let ms = stats.get("/warm_restart/initial_sync/max_ms").and_then(Value::as_f64).unwrap_or(0.0);
    let min_ms = EOIU_TIMEOUT.as_secs_f64() * 1e3 - 50.0;
    assert!((min_ms..5000.0).contains(&ms), "initial sync took {ms} ms; want about {EOIU_TIMEOUT:?}");
}

/// Cold: the netdevs that exist at start are old (admin-down, ignored); new ones are followed.
fn scenario_eoiu_timeout_cold(mode: Capture) {
    let mut fx = Fixture::new(mode, 3);
    let old = [0, 1];
    let old_names = port_names(old);
    fx.create_ports(old);
    wait_kernel(&fx.ns, "old ports up before the daemon starts", DEFAULT_TIMEOUT, all_links(&old_names, true, true));
    let stats = fx.start_daemon(DaemonOpts::new(mode).args(HOLD_EOIU_ARGS));
    assert_eq!(stats.warm_start(), Some(false));
    assert_eoiu_timed_out(&stats);
    wait_kernel(&fx.ns, "pre-existing netdevs set admin-down", DEFAULT_TIMEOUT, |l| {
        old_names.iter().all(|p| l.get(p).is_some_and(|e| !e.admin_up))
    });
    fx.create_ports([2]);
    fx.wait_state_entry("Ethernet2", &port_state(true, true, 1500));
    let rows: Vec<String> = state_db_port_table(&fx.redis).into_keys().collect();
    assert_eq!(rows, ["Ethernet2"], "old ports get no STATE_DB rows");
}

/// Warm: the netdevs that exist are not old; a change made while down is published.
fn scenario_eoiu_timeout_warm(mode: Capture) {
    let work = work_dir();
    let mut fx = Fixture::new(mode, 4);
    first_run_then_stop(&mut fx, work.path(), &[0, 1, 2, 3], &[]);
    fx.ns.ip(&["link", "set", "Ethernet1", "down"]);
    wait_kernel(&fx.ns, "Ethernet1 admin-down", DEFAULT_TIMEOUT, |l| l.get("Ethernet1").is_some_and(|e| !e.admin_up));
    enable_warm(&fx.redis);
    let (stats, _, _) = start_warm(&mut fx, opts(mode, work.path()).args(HOLD_EOIU_ARGS));
    assert_eoiu_timed_out(&stats);
    assert_eq!(stats.counter("state_writes"), 1, "only Ethernet1 changed: {}", stats_line(&stats));
    assert!(stats.port_init_done(), "every configured port was in the dump");
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, |_| true);
    assert_eq!(fx.state_entry("Ethernet1"), port_state(false, false, 1500));
    let links = fx.ns.links();
    for p in ["Ethernet0", "Ethernet2", "Ethernet3"] {
        assert!(links[p].admin_up, "{p} must not be set admin-down by a warm start");
    }
    assert_warm_table_is_restore_count_1(&fx.redis);
    fx.ns.ip(&["link", "set", "Ethernet2", "mtu", "9000"]);
    fx.wait_state_entry("Ethernet2", &port_state(true, true, 9000));
}

// ---------------------------------------------------------------------------------------------
// 6. Warm vs cold (sonic-mgmt warm_vs_cold)
// ---------------------------------------------------------------------------------------------

const WVC_PORTS: u32 = 6;

/// Ethernet1 admin-down, Ethernet2 without carrier, Ethernet3 mtu 9000, the rest up.
const LINK_MIX: [&str; 3] = ["link set Ethernet1 down", "link set pe2 down", "link set Ethernet3 mtu 9000"];

fn kernel_in_mix(links: &BTreeMap<String, LinkState>) -> bool {
    (0..WVC_PORTS).all(|i| {
        let want = match i {
            1 => (false, false, 1500),
            2 => (true, false, 1500),
            3 => (true, true, 9000),
            _ => (true, true, 1500),
        };
        links.get(&format!("Ethernet{i}")).is_some_and(|l| (l.admin_up, l.oper_up, l.mtu) == want)
    })
}

type Snapshots = BTreeMap<&'static str, DbSnapshot>;

fn snapshots(redis: &RedisServer) -> Snapshots {
    BTreeMap::from([
        ("APPL_DB", appl_db_snapshot(redis)),
        ("STATE_DB", state_db_snapshot(redis)),
        ("CONFIG_DB", config_db_snapshot(redis)),
    ])
}

#[test]
fn warm_and_cold_start_leave_identical_databases_but_restore_count_netlink() {
    let mode = Capture::Netlink;
    let all: Vec<u32> = (0..WVC_PORTS).collect();

    let mut warm = {
        let work = work_dir();
        let mut fx = Fixture::new(mode, WVC_PORTS);
        first_run_then_stop(&mut fx, work.path(), &all, &[]);
        fx.ns.batch(&LINK_MIX);
        wait_kernel(&fx.ns, "link mix", DEFAULT_TIMEOUT, kernel_in_mix);
        enable_warm(&fx.redis);
        start_warm(&mut fx, opts(mode, work.path()));
        fx.daemon().wait_stats(DEFAULT_TIMEOUT, "port_init_done", Stats::port_init_done);
        fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, kernel_in_mix);
        fx.orch.wait_idle(&fx.redis, DEFAULT_TIMEOUT);
        snapshots(&fx.redis)
    };
    let cold = {
        let mut fx = Fixture::start(mode, WVC_PORTS);
        fx.create_ports(all.iter().copied());
        fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
        fx.ns.batch(&LINK_MIX);
        fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, kernel_in_mix);
        fx.daemon().wait_stats(DEFAULT_TIMEOUT, "port_init_done", Stats::port_init_done);
        fx.orch.wait_idle(&fx.redis, DEFAULT_TIMEOUT);
        snapshots(&fx.redis)
    };

    // The enable flag is the test's input (the warm-reboot tooling sets and clears it).
    let state = warm.get_mut("STATE_DB").expect("STATE_DB");
    assert_eq!(state.remove(WARM_ENABLE_KEY), Some(DbValue::Hash(hash(&[("enable", "true")]))));

    let mut diffs = Vec::new();
    for (db, w) in &warm {
        let c = &cold[db];
        let keys: BTreeSet<&String> = w.keys().chain(c.keys()).collect();
        for k in keys {
            if w.get(k) != c.get(k) {
                diffs.push((*db, k.clone(), w.get(k).cloned(), c.get(k).cloned()));
            }
        }
    }
    let expected = vec![(
        "STATE_DB",
        WARM_TABLE_KEY.to_owned(),
        Some(DbValue::Hash(hash(&[("restore_count", "1")]))),
        Some(DbValue::Hash(hash(&[("restore_count", "0")]))),
    )];
    assert_eq!(diffs, expected, "warm vs cold differences (db, key, warm, cold)");
    // Not vacuous: the ports and both markers are there.
    let appl = &cold["APPL_DB"];
    for k in ["PORT_TABLE:PortConfigDone", "PORT_TABLE:PortInitDone", "PORT_TABLE:Ethernet5"] {
        assert!(appl.contains_key(k), "APPL_DB {k} missing: {:?}", appl.keys().collect::<Vec<_>>());
    }
    assert_eq!(cold["STATE_DB"].get("PORT_TABLE|Ethernet2"), Some(&DbValue::Hash(port_state(true, false, 1500))));
}

capture_tests! {
    scenario_no_link_change => warm_restart_without_link_change_writes_nothing_but_restore_count_and_port_init_done_netlink, warm_restart_without_link_change_writes_nothing_but_restore_count_and_port_init_done_ebpf;
    scenario_links_changed_while_down => warm_restart_writes_exactly_the_links_changed_while_down_netlink, warm_restart_writes_exactly_the_links_changed_while_down_ebpf;
    scenario_eoiu_timeout_cold => eoiu_timeout_completes_cold_initial_sync_netlink, eoiu_timeout_completes_cold_initial_sync_ebpf;
    scenario_eoiu_timeout_warm => eoiu_timeout_completes_warm_initial_sync_netlink, eoiu_timeout_completes_warm_initial_sync_ebpf;
}
