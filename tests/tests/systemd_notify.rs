//! systemd integration through a real notify socket (NOTIFY_SOCKET, WATCHDOG_USEC) read by the
//! test, as systemd reads it: READY once the initial sync is in STATE_DB, WATCHDOG pings only
//! while the event loop turns (so `WatchdogSec` restarts a hung daemon), STATUS carrying the
//! health verdict, STOPPING at exit.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use portsyncd_e2e::{all_links, wait_for, Capture, DaemonOpts, Fixture, DEFAULT_TIMEOUT, STATE_DB};

/// Every datagram the daemon sent, with when it arrived, and STATE_DB's `oper_status` of
/// Ethernet1 at the moment READY arrived.
#[derive(Debug, Default)]
struct Received {
    messages: Vec<(Instant, String)>,
    oper_at_ready: Option<Option<String>>,
}

/// Binds `dir/notify.sock` and records what arrives until the socket is dropped with the test.
fn listen(dir: &std::path::Path, fx: &Fixture) -> (std::path::PathBuf, Arc<Mutex<Received>>) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap_or_else(|e| panic!("timeout: {e}"));
    let received = Arc::new(Mutex::new(Received::default()));
    let rx = Arc::clone(&received);
    let mut con = fx.redis.conn(STATE_DB);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends when the test's Arc is the last one gone (the test finished or panicked).
        while Arc::strong_count(&rx) > 1 {
            let Ok(n) = sock.recv(&mut buf) else { continue };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let oper = msg
                .lines()
                .any(|l| l == "READY=1")
                .then(|| portsyncd_e2e::hgetall(&mut con, "PORT_TABLE|Ethernet1").get("netdev_oper_status").cloned());
            let mut r = rx.lock().unwrap_or_else(|p| p.into_inner());
            if oper.is_some() {
                r.oper_at_ready = oper;
            }
            r.messages.push((Instant::now(), msg));
        }
    });
    (path, received)
}

/// Arrival times of the messages that contain `line`.
fn times_of(r: &Received, line: &str) -> Vec<Instant> {
    r.messages.iter().filter(|(_, m)| m.lines().any(|l| l == line)).map(|(t, _)| *t).collect()
}

fn statuses(r: &Received) -> Vec<String> {
    r.messages
        .iter()
        .flat_map(|(_, m)| m.lines().filter_map(|l| l.strip_prefix("STATUS=")).map(str::to_owned))
        .collect()
}

#[test]
fn notify_socket_gets_ready_watchdog_pings_that_stop_in_a_stall_status_and_stopping() {
    let mut fx = Fixture::new(Capture::Netlink, 2);
    fx.start_daemon(DaemonOpts::new(Capture::Netlink));
    fx.create_ports(0..2);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    fx.daemon().stop();
    // While no daemon runs, Ethernet1 loses its carrier; the next (warm) start's initial sync
    // must have written that before it says READY.
    let mut state = fx.redis.conn(STATE_DB);
    let _: () = redis::cmd("HSET")
        .arg("WARM_RESTART_ENABLE_TABLE|swss")
        .arg("enable")
        .arg("true")
        .query(&mut state)
        .unwrap_or_else(|e| panic!("enable warm restart: {e}"));
    fx.ns.ip(&["link", "set", "pe1", "down"]);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (path, received) = listen(dir.path(), &fx);
    let opts = DaemonOpts::new(Capture::Netlink)
        .env("NOTIFY_SOCKET", path.display().to_string())
        // Pings every 300 ms (half the interval, as systemd asks).
        .env("WATCHDOG_USEC", "600000")
        .args(["--stall-watchdog-secs", "1", "--test-stall-ms", "3500"]);
    fx.start_daemon(opts);
    let r = || received.lock().unwrap_or_else(|p| p.into_inner());
    wait_for(DEFAULT_TIMEOUT, "READY=1 and three watchdog pings", || {
        let r = r();
        let pings = times_of(&r, "WATCHDOG=1").len();
        if r.oper_at_ready.is_some() && pings >= 3 {
            Ok(())
        } else {
            Err(format!("{:?}", r.messages))
        }
    });
    assert_eq!(r().oper_at_ready, Some(Some("down".to_owned())), "READY only once the initial sync is in STATE_DB");
    assert_eq!(times_of(&r(), "READY=1").len(), 1);

    // A hung loop: the next batch blocks its thread for 3.5 s with the flap's change pending.
    let stall_from = Instant::now();
    fx.daemon().signal(Signal::SIGUSR2);
    fx.daemon().wait_log(DEFAULT_TIMEOUT, "the stall hook armed", |l| l.contains("the next batch blocks"));
    fx.ns.ip(&["link", "set", "pe0", "down"]);
    // Ethernet0's peer went down: it stays admin up, oper down, once the stall is over.
    wait_for(DEFAULT_TIMEOUT, "Ethernet0 oper down in STATE_DB", || {
        match fx.state_entry("Ethernet0").get("netdev_oper_status") {
            Some(s) if s == "down" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    wait_for(DEFAULT_TIMEOUT, "pings again and STATUS degraded after the stall", || {
        let r = r();
        let recovered = statuses(&r).iter().any(|s| s.starts_with("degraded: recent_stall"));
        let pings_after = times_of(&r, "WATCHDOG=1")
            .into_iter()
            .filter(|t| t.duration_since(stall_from) > Duration::from_secs(4))
            .count();
        if recovered && pings_after >= 2 {
            Ok(())
        } else {
            Err(format!("{:?}", r.messages))
        }
    });
    let snapshot = r();
    let pings = times_of(&snapshot, "WATCHDOG=1");
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let longest = gaps.iter().max().copied().unwrap_or_default();
    assert!(longest >= Duration::from_secs(3), "no ping while the loop was blocked: gaps {gaps:?}");
    let before: Vec<Duration> = pings.windows(2).filter(|w| w[1] < stall_from).map(|w| w[1] - w[0]).collect();
    assert!(before.iter().all(|g| *g < Duration::from_secs(2)), "regular pings before the stall: {before:?}");
    let st = statuses(&snapshot);
    assert!(
        st.iter().any(|s| s.starts_with("unhealthy: loop_stalled")),
        "the watchdog thread reports the stall: {st:?}"
    );
    assert!(st[0].starts_with("initial sync complete; healthy"), "{st:?}");
    drop(snapshot);

    let status = fx.daemon().stop();
    assert!(status.success(), "{status:?}");
    assert_eq!(times_of(&r(), "STOPPING=1").len(), 1, "{:?}", r().messages);
}
