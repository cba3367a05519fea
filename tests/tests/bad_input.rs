//! Bad input: CLI errors exit 2, unusable database config or unreachable Redis exit 1 with one
//! `portsyncd: error:` line, a malformed CONFIG_DB entry is skipped while the rest keeps working.

use std::time::Duration;

use portsyncd_e2e::{
    all_links, appl_db_port_table, capture_tests, hash, port_state, state_db_port_table, wait_for, wait_hash, Capture,
    Daemon, DaemonOpts, Fixture, NetNs, RunOutput, APPL_DB, CONFIG_DB, DEFAULT_TIMEOUT,
};

const EXIT_DEADLINE: Duration = Duration::from_secs(20);

fn error_lines(out: &RunOutput) -> Vec<&str> {
    out.stderr.lines().filter(|l| l.starts_with("portsyncd: error:")).collect()
}

/// Runs with `args` plus harmless paths for the files the daemon would write.
fn run(ns: &NetNs, args: &[&str]) -> RunOutput {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json").display().to_string();
    let state = dir.path().join("state/port_state.json").display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--capture", "netlink", "--stats-file", &stats, "--state-file", &state]);
    Daemon::run_once(ns, &all, EXIT_DEADLINE)
}

fn assert_exit_1_with_one_error_line(out: &RunOutput, mentions: &str) {
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(1),
        "expected exit code 1 (status {:?})\nstderr:\n{}",
        out.status,
        out.stderr
    );
    let errors = error_lines(out);
    assert_eq!(errors.len(), 1, "expected exactly one `portsyncd: error:` line on stderr, got:\n{}", out.stderr);
    assert!(errors[0].contains(mentions), "error line should mention {mentions:?}: {}", errors[0]);
}

#[test]
fn unknown_flag_exits_2() {
    let ns = NetNs::new();
    let out = Daemon::run_once(&ns, &["--no-such-flag"], EXIT_DEADLINE);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "status {:?}, stderr:\n{}", out.status, out.stderr);
    assert!(out.stderr.contains("--no-such-flag"), "clap should name the flag:\n{}", out.stderr);
}

#[test]
fn invalid_flag_value_exits_2() {
    let ns = NetNs::new();
    let out = Daemon::run_once(&ns, &["--capture", "carrier-pigeon"], EXIT_DEADLINE);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "status {:?}, stderr:\n{}", out.status, out.stderr);
}

#[test]
fn check_config_prints_the_effective_settings_and_exits_0() {
    let ns = NetNs::new();
    let out = run(&ns, &["--check-config", "--redis", "redis://127.0.0.1:1", "--batch-max", "64"]);
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "status {:?}, stderr:\n{}", out.status, out.stderr);
    for setting in ["batch_max: 64", "reconcile_interval: Some(", "redis_timeout: 5s", "capture: Netlink"] {
        assert!(out.stdout.contains(setting), "{setting:?} missing from:\n{}", out.stdout);
    }
}

#[test]
fn check_config_names_the_bad_key_and_exits_1() {
    let ns = NetNs::new();
    let out = run(&ns, &["--check-config", "--refusal-backoff-min-ms", "0"]);
    assert_exit_1_with_one_error_line(&out, "refusal_backoff_min_ms");
}

#[test]
fn version_names_the_commit_and_the_ebpf_object_hash() {
    let ns = NetNs::new();
    let out = Daemon::run_once(&ns, &["--version"], EXIT_DEADLINE);
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "status {:?}, stderr:\n{}", out.status, out.stderr);
    let hash = out.stdout.split("eBPF object sha256 ").nth(1).unwrap_or_default();
    assert!(out.stdout.contains("(commit "), "{}", out.stdout);
    assert!(hash.len() >= 64 && hash[..64].chars().all(|c| c.is_ascii_hexdigit()), "{}", out.stdout);
}

#[test]
fn missing_database_config_exits_1_with_one_error_line() {
    let ns = NetNs::new();
    let path = "/nonexistent-psd-dir/database_config.json";
    let out = run(&ns, &["--database-config", path]);
    assert_exit_1_with_one_error_line(&out, path);
}

#[test]
fn invalid_database_config_exits_1_with_one_error_line() {
    let ns = NetNs::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("database_config.json");
    std::fs::write(&path, "{ \"INSTANCES\": { not json").unwrap();
    let p = path.display().to_string();
    let out = run(&ns, &["--database-config", &p]);
    assert_exit_1_with_one_error_line(&out, &p);
}

#[test]
fn unreachable_redis_url_exits_1_with_one_error_line() {
    let ns = NetNs::new();
    let out = run(&ns, &["--redis", "unix:///nonexistent-psd-dir/redis.sock"]);
    assert_exit_1_with_one_error_line(&out, "cannot connect to APPL_DB at /nonexistent-psd-dir/redis.sock: ");
}

#[test]
fn unreachable_redis_from_database_config_exits_1_with_one_error_line() {
    let ns = NetNs::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("database_config.json");
    let db = |id: u32, sep: &str| serde_json::json!({"id": id, "separator": sep, "instance": "redis"});
    let cfg = serde_json::json!({
        "INSTANCES": {"redis": {"hostname": "127.0.0.1", "port": 1,
                                "unix_socket_path": dir.path().join("missing.sock").display().to_string()}},
        "DATABASES": {"APPL_DB": db(0, ":"), "CONFIG_DB": db(4, "|"), "STATE_DB": db(6, "|")},
        "VERSION": "1.0",
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    let p = path.display().to_string();
    let out = run(&ns, &["--database-config", &p]);
    // The unix socket is preferred over the instance's TCP port.
    let sock = dir.path().join("missing.sock");
    assert_exit_1_with_one_error_line(&out, &format!("cannot connect to APPL_DB at {}: ", sock.display()));
}

/// `PORT|Ethernet5` as a string (not a hash) is logged and skipped; the other ports are
/// published, PortConfigDone counts only usable ports, and PortInitDone does not wait for it.
fn scenario_malformed_config_entry(mode: Capture) {
    let mut fx = Fixture::new(mode, 4);
    let mut config = fx.redis.conn(CONFIG_DB);
    redis::cmd("SET").arg("PORT|Ethernet5").arg("lanes=20,21").query::<()>(&mut config).unwrap();
    fx.start_daemon(DaemonOpts::new(mode));

    wait_for(DEFAULT_TIMEOUT, "APPL_DB PORT_TABLE with the 4 well-formed ports", || {
        let t = appl_db_port_table(&fx.redis);
        if fx.ports.iter().all(|p| t.contains_key(p)) && t.contains_key("PortConfigDone") {
            Ok(())
        } else {
            Err(format!("{:?}", t.keys().collect::<Vec<_>>()))
        }
    });
    wait_hash(&fx.redis, APPL_DB, "PORT_TABLE:PortConfigDone", &hash(&[("count", "4")]));
    assert!(fx.appl_entry("Ethernet5").is_empty());

    fx.create_ports([0, 1, 2, 3, 5]);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    wait_hash(&fx.redis, APPL_DB, "PORT_TABLE:PortInitDone", &hash(&[("lanes", "0")]));
    fx.ns.ip(&["link", "set", "pe2", "down"]);
    fx.wait_state_entry("Ethernet2", &port_state(true, false, 1500));
    assert!(!state_db_port_table(&fx.redis).contains_key("Ethernet5"));
    assert!(fx.daemon().is_running(), "daemon exited on a malformed CONFIG_DB entry");
    let log = fx.daemon().log();
    assert!(log.contains("Ethernet5"), "the skipped entry should be logged by name; log:\n{log}");
}

capture_tests! {
    scenario_malformed_config_entry => malformed_config_entry_is_skipped_netlink, malformed_config_entry_is_skipped_ebpf;
}
