//! Redis faults in the middle of a flap storm (issue 8, "Per-command results" and the faults
//! table): a hung Redis (SIGSTOP for 3 s), a Redis killed and restarted empty (the test re-seeds
//! CONFIG_DB only; the daemon must redo CONFIG_DB -> APPL_DB and PortConfigDone itself), and the
//! daemon's connections killed three times during flaps. Every time: the daemon stays up and
//! STATE_DB ends equal to the kernel for every port.
//!
//! The Redis call timeout is set through the environment (`PORTSYNCD_REDIS_TIMEOUT_MS`, the env
//! form of `--redis-timeout-ms`) so that a daemon without the option runs and fails on behaviour.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use portsyncd_e2e::storm::{kernel_in_storm_final, storm_lines};
use portsyncd_e2e::{
    all_links, appl_db_port_table, capture_tests, seed_config_ports, Capture, DaemonOpts, Fixture, Orchagent,
    RedisServer, APPL_DB, DEFAULT_TIMEOUT,
};
use serde_json::Value;

/// `--redis-timeout-ms`: well under the 3 s stop, so the stop is noticed.
const REDIS_TIMEOUT_MS: u64 = 500;
/// Redis is stopped this long.
const STOP: Duration = Duration::from_secs(3);
/// Deadline for STATE_DB to equal the kernel after a fault.
const RECOVERY: Duration = Duration::from_secs(30);

fn start(mode: Capture, n: u32) -> Fixture {
    let mut fx = Fixture::new(mode, n);
    fx.start_daemon(DaemonOpts::new(mode).env("PORTSYNCD_REDIS_TIMEOUT_MS", REDIS_TIMEOUT_MS.to_string()));
    fx.create_ports(0..n);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    fx
}

fn events(fx: &mut Fixture) -> u64 {
    fx.daemon().stats().map(|s| s.counter("events")).unwrap_or(0)
}

fn counters(fx: &mut Fixture) -> String {
    fx.daemon().stats().and_then(|s| s.get("/counters").map(Value::to_string)).unwrap_or_default()
}

/// Runs `fault` once the daemon has provably started consuming a storm of `rounds` over ports
/// `0..n` (so the fault lands mid-storm), then waits for the storm to finish.
fn during_storm(fx: &mut Fixture, n: u32, rounds: u32, fault: impl FnOnce(&mut Fixture)) {
    let before = events(fx);
    let storm = fx.ns.spawn_batch(storm_lines(n, rounds));
    fx.daemon().wait_stats(DEFAULT_TIMEOUT, "storm events counted", |s| s.counter("events") > before);
    fault(fx);
    storm.wait();
}

fn assert_recovered(fx: &mut Fixture, n: u32, what: &str) {
    fx.wait_state_matches_kernel(&fx.ports, RECOVERY, kernel_in_storm_final(n));
    assert!(fx.daemon().is_running(), "daemon died after {what}:\n{}", fx.daemon().log_tail(30));
    eprintln!("{what}: 0 ports wrong; counters {}", counters(fx));
}

fn scenario_sigstop(mode: Capture) {
    const N: u32 = 64;
    let mut fx = start(mode, N);
    during_storm(&mut fx, N, 3, |fx| {
        let paused = fx.redis.pause();
        let stopped = Instant::now();
        // The background storm may already be drained (eBPF mode is quick): one more round,
        // ending in the same final state, guarantees changes to write while Redis is stopped.
        fx.ns.batch(&storm_lines(N, 1));
        // A hung Redis is a lost connection (every call has a deadline), not a hung daemon.
        fx.daemon().wait_stats(STOP - Duration::from_millis(500), "redis_up false while Redis is stopped", |s| {
            s.get("/redis_up").and_then(Value::as_bool) == Some(false)
        });
        std::thread::sleep(STOP.saturating_sub(stopped.elapsed()));
        paused.resume();
    });
    assert_recovered(&mut fx, N, "Redis SIGSTOP for 3 s mid-storm");
    let stats = fx
        .daemon()
        .wait_stats(DEFAULT_TIMEOUT, "redis_up again", |s| s.get("/redis_up").and_then(Value::as_bool) == Some(true));
    assert!(stats.counter("redis_errors") > 0, "{}", stats.0);
}

fn scenario_kill_and_restart_empty(mode: Capture) {
    kill_and_restart_empty(mode, true);
}

/// Nothing to write when Redis restarts: the once-a-second liveness check must notice.
fn scenario_kill_and_restart_empty_idle(mode: Capture) {
    kill_and_restart_empty(mode, false);
}

fn kill_and_restart_empty(mode: Capture, storm: bool) {
    const N: u32 = 64;
    let mut fx = start(mode, N);
    // Empty, with CONFIG_DB back (as config reload would); APPL_DB is the daemon's job.
    let restart = |fx: &mut Fixture| {
        fx.redis.restart_with(|r| {
            seed_config_ports(r, N);
        })
    };
    if storm {
        during_storm(&mut fx, N, 3, restart);
    } else {
        fx.ns.batch(&storm_lines(N, 1));
        fx.wait_state_matches_kernel(&fx.ports, RECOVERY, kernel_in_storm_final(N));
        restart(&mut fx);
    }
    let want: BTreeSet<String> = fx.ports.iter().cloned().chain(["PortConfigDone".to_owned()]).collect();
    let redis = &fx.redis;
    fx.daemon.as_mut().expect("daemon").wait_for(RECOVERY, "APPL_DB PORT_TABLE rebuilt after the restart", || {
        let have: BTreeSet<String> = appl_db_port_table(redis).into_keys().collect();
        let missing: Vec<&String> = want.difference(&have).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{} missing, e.g. {:?}", missing.len(), missing.iter().take(5).collect::<Vec<_>>()))
        }
    });
    assert_eq!(fx.appl_entry("PortConfigDone").get("count").map(String::as_str), Some("64"));
    assert_recovered(&mut fx, N, "Redis SIGKILL and empty restart mid-storm");
    fx.daemon().wait_stats(DEFAULT_TIMEOUT, "counters.redis_restarts > 0", |s| s.counter("redis_restarts") > 0);
}

/// After an empty restart the daemon publishes CONFIG_DB's ports again, but a port is in
/// APPL_DB `PORT_TABLE` only once orchagent has consumed it. Here orchagent comes back 3 s
/// after the restart: the resync must wait for it rather than find every port "not in the port
/// table" and leave STATE_DB empty.
fn scenario_restart_empty_orchagent_late(mode: Capture) {
    const N: u32 = 16;
    let mut fx = start(mode, N);
    fx.ns.batch(&storm_lines(N, 1));
    fx.wait_state_matches_kernel(&fx.ports, RECOVERY, kernel_in_storm_final(N));
    // No consumer on this Redis for now (the stand-in listens to a Redis of its own).
    let elsewhere = RedisServer::start();
    drop(std::mem::replace(&mut fx.orch, Orchagent::start(&elsewhere)));
    fx.redis.restart_with(|r| {
        seed_config_ports(r, N);
    });
    let redis = &fx.redis;
    fx.daemon.as_mut().expect("daemon").wait_for(RECOVERY, "PortConfigDone published again", || {
        if portsyncd_e2e::db::hgetall(&mut redis.conn(APPL_DB), "_PORT_TABLE:PortConfigDone").is_empty() {
            Err("not yet".to_owned())
        } else {
            Ok(())
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let written: Vec<String> = fx.ports.iter().filter(|p| !fx.state_entry(p).is_empty()).cloned().collect();
    assert!(written.is_empty(), "rows written while no port was in APPL_DB PORT_TABLE: {written:?}");
    fx.orch = Orchagent::start(&fx.redis);
    assert_recovered(&mut fx, N, "Redis restarted empty, orchagent 3 s late");
    assert!(
        fx.daemon().log().contains("orchagent consumed the published ports; resyncing"),
        "{}",
        fx.daemon().log_tail(30)
    );
}

fn scenario_client_kill(mode: Capture) {
    const N: u32 = 32;
    let mut fx = start(mode, N);
    for round in 1..=3 {
        during_storm(&mut fx, N, 1, |fx| {
            let redis = &fx.redis;
            // The daemon reconnects lazily: kill only once it holds connections again.
            let killed =
                fx.daemon.as_mut().expect("daemon").wait_for(DEFAULT_TIMEOUT, "the daemon's connections", || {
                    let killed = redis.kill_daemon_clients();
                    if killed.is_empty() {
                        Err("no daemon connection to kill".to_owned())
                    } else {
                        Ok(killed)
                    }
                });
            eprintln!("round {round}: killed {} daemon connection(s): {:?}", killed.len(), killed);
        });
        assert_recovered(&mut fx, N, &format!("CLIENT KILL round {round}"));
        if round < 3 {
            let lines: Vec<String> =
                (0..N).flat_map(|i| [format!("link set pe{i} up"), format!("link set Ethernet{i} up")]).collect();
            fx.ns.batch(&lines);
            fx.wait_state_matches_kernel(&fx.ports, RECOVERY, all_links(&fx.ports, true, true));
        }
    }
}

capture_tests! {
    scenario_sigstop => redis_sigstop_mid_storm_is_survived_netlink, redis_sigstop_mid_storm_is_survived_ebpf;
    scenario_kill_and_restart_empty => redis_restart_empty_mid_storm_rebuilds_appl_and_state_netlink, redis_restart_empty_mid_storm_rebuilds_appl_and_state_ebpf;
    scenario_kill_and_restart_empty_idle => redis_restart_empty_while_idle_rebuilds_appl_and_state_netlink, redis_restart_empty_while_idle_rebuilds_appl_and_state_ebpf;
    scenario_client_kill => client_kill_three_times_during_flaps_is_survived_netlink, client_kill_three_times_during_flaps_is_survived_ebpf;
    scenario_restart_empty_orchagent_late => redis_restart_empty_with_orchagent_late_still_rebuilds_state_netlink,
        redis_restart_empty_with_orchagent_late_still_rebuilds_state_ebpf;
}
