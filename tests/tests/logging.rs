//! swss-common Logger parity: CONFIG_DB `LOGGER|portsyncd` LOGLEVEL / LOGOUTPUT applied at start,
//! live on change (CONFIG_DB keyspace events, as SubscriberStateTable) and on SIGHUP
//! (`require_manual_refresh`); syslog datagrams carry ident `portsyncd` and the line's priority.
//! `RUST_LOG` is cleared, since it is the developer override that the rest of the suite uses.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use portsyncd_e2e::syslog::SyslogSink;
use portsyncd_e2e::{all_links, capture_tests, Capture, DaemonOpts, Fixture, CONFIG_DB, DEFAULT_TIMEOUT};

const LOGGER: &str = "LOGGER|portsyncd";

/// CONFIG_DB `LOGGER|portsyncd`, keyspace events on (SONiC's redis.conf), two ports up.
fn start(mode: Capture, level: &str, output: &str, extra: &[&str], keyspace: bool) -> Fixture {
    let mut fx = Fixture::new(mode, 2);
    let mut con = fx.redis.conn(CONFIG_DB);
    let events = if keyspace { "KEA" } else { "" };
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(events)
        .query::<()>(&mut con)
        .expect("CONFIG SET");
    redis::cmd("HSET")
        .arg(LOGGER)
        .arg("LOGLEVEL")
        .arg(level)
        .arg("LOGOUTPUT")
        .arg(output)
        .query::<()>(&mut con)
        .expect("HSET LOGGER");
    fx.start_daemon(DaemonOpts::new(mode).env("RUST_LOG", "").args(extra.iter().copied()));
    fx.create_ports(0..2);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    fx
}

fn set_level(fx: &Fixture, level: &str) {
    redis::cmd("HSET").arg(LOGGER).arg("LOGLEVEL").arg(level).query::<()>(&mut fx.redis.conn(CONFIG_DB)).expect("HSET");
}

fn wait_level(fx: &mut Fixture, level: &str) {
    let want = level.to_owned();
    fx.daemon().wait_stats(DEFAULT_TIMEOUT, &format!("log_level {level}"), move |s| {
        s.get("/log_level").and_then(|v| v.as_str()) == Some(want.as_str())
    });
}

/// Flaps Ethernet0 (admin down, then up) and returns what the daemon logged meanwhile.
fn flap_and_log(fx: &mut Fixture) -> String {
    let before = fx.daemon().log().len();
    fx.ns.ip(&["link", "set", "Ethernet0", "down"]);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, |l| l.get("Ethernet0").is_some_and(|e| !e.admin_up));
    fx.ns.ip(&["link", "set", "Ethernet0", "up"]);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    fx.daemon().log()[before..].to_owned()
}

fn scenario_live_level(mode: Capture, output: &str) {
    let mut fx = start(mode, "ERROR", output, &[], true);
    let quiet = flap_and_log(&mut fx);
    assert!(!quiet.contains("Ethernet0"), "at ERROR a flap logs nothing:\n{quiet}");
    set_level(&fx, "DEBUG");
    wait_level(&mut fx, "DEBUG");
    let loud = flap_and_log(&mut fx);
    assert!(loud.contains("Publish Ethernet0(ok:"), "at DEBUG the C++ daemon's NOTICE line shows:\n{loud}");
    assert!(loud.contains("nlmsg type:16 key:Ethernet0"), "at DEBUG every netlink message shows:\n{loud}");
    set_level(&fx, "ERROR");
    wait_level(&mut fx, "ERROR");
    let quiet = flap_and_log(&mut fx);
    assert!(!quiet.contains("Ethernet0"), "back at ERROR a flap logs nothing again:\n{quiet}");
}

fn scenario_live_level_stderr(mode: Capture) {
    scenario_live_level(mode, "STDERR");
}

fn scenario_live_level_stdout(mode: Capture) {
    scenario_live_level(mode, "STDOUT");
}

/// With keyspace events off, only SIGHUP makes the daemon re-read LOGGER.
fn scenario_sighup(mode: Capture) {
    let mut fx = start(mode, "ERROR", "STDERR", &[], false);
    set_level(&fx, "NOTICE");
    fx.daemon().signal(Signal::SIGHUP);
    wait_level(&mut fx, "NOTICE");
    assert!(fx.daemon().is_running(), "SIGHUP must not end the daemon");
    let log = flap_and_log(&mut fx);
    assert!(log.contains("Publish Ethernet0(ok:"), "NOTICE after SIGHUP:\n{log}");
    assert!(!log.contains("nlmsg type:"), "NOTICE shows no INFO lines:\n{log}");
}

/// Datagrams on a syslog socket the test owns: `<13>portsyncd: ...` for NOTICE lines (LOG_USER,
/// no PID, as swss-common's syslog(3) without openlog), `<11>` for the ERROR an invalid level
/// causes, after which the level falls back to NOTICE.
fn scenario_syslog(mode: Capture) {
    // Read from the start (see `SyslogSink`).
    let sink = SyslogSink::bind();
    let path_arg = sink.path().display().to_string();
    let mut fx = start(mode, "NOTICE", "SYSLOG", &["--test-syslog-socket", &path_arg], true);
    fx.ns.ip(&["link", "set", "Ethernet0", "mtu", "9000"]);
    set_level(&fx, "LOUD");
    let want_notice = |g: &[String]| g.iter().any(|l| l.starts_with("<13>portsyncd: Publish Ethernet0(ok:"));
    let want_error =
        |g: &[String]| g.iter().any(|l| l.starts_with("<11>portsyncd: Invalid loglevel. Setting to NOTICE. LOUD"));
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    while !(want_notice(&sink.lines()) && want_error(&sink.lines())) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = sink.finish();
    assert!(want_notice(&got), "a NOTICE line with ident and priority: {got:#?}");
    assert!(want_error(&got), "the invalid level's ERROR line: {got:#?}");
    wait_level(&mut fx, "NOTICE");
    assert!(!fx.daemon().log().contains("Publish Ethernet0"), "SYSLOG output writes nothing to stderr");
}

/// A syslog socket nobody reads (a hung syslog daemon): lines are dropped and counted, and port
/// sync goes on. A blocking send here would stall the event loop behind the full socket.
fn scenario_unread_syslog(mode: Capture) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.sock");
    let _never_read = UnixDatagram::bind(&path).expect("bind syslog socket");
    let path_arg = path.display().to_string();
    let mut fx = start(mode, "DEBUG", "SYSLOG", &["--test-syslog-socket", &path_arg], true);
    let lines: Vec<String> =
        ["down", "up"].iter().flat_map(|s| (0..2).map(move |i| format!("link set Ethernet{i} {s}"))).collect();
    for _ in 0..5 {
        fx.ns.batch(&lines);
    }
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    let stats = fx.daemon().wait_stats(DEFAULT_TIMEOUT, "log_dropped > 0", |s| {
        s.get("/log_dropped").and_then(|v| v.as_u64()).unwrap_or(0) > 0
    });
    eprintln!(
        "unread syslog, {mode}: {} lines dropped",
        stats.get("/log_dropped").map(|v| v.to_string()).unwrap_or_default()
    );
}

capture_tests! {
    scenario_unread_syslog => an_unread_syslog_socket_never_stalls_port_sync_netlink, an_unread_syslog_socket_never_stalls_port_sync_ebpf;
    scenario_live_level_stderr => live_loglevel_toggles_what_a_flap_logs_on_stderr_netlink, live_loglevel_toggles_what_a_flap_logs_on_stderr_ebpf;
    scenario_live_level_stdout => live_loglevel_toggles_what_a_flap_logs_on_stdout_netlink, live_loglevel_toggles_what_a_flap_logs_on_stdout_ebpf;
    scenario_sighup => sighup_rereads_the_log_level_without_keyspace_events_netlink, sighup_rereads_the_log_level_without_keyspace_events_ebpf;
    scenario_syslog => syslog_lines_carry_ident_and_priority_netlink, syslog_lines_carry_ident_and_priority_ebpf;
}
