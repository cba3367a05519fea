//! Signals from the first instruction (issue 8, item 6): SIGTERM at three points of start-up must
//! end the daemon with exit code 0 within 2 s: while it is blocked on a Redis that does not
//! answer, while it waits for the initial dump's end (held by a test hook, EOIU timeout 30 s),
//! and between initial sync and attaching the capture (test hook pausing 30 s). The C++ daemon and
//! 91d1c45 take the default action there (killed by the signal).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use portsyncd_e2e::{capture_tests, hash, Capture, Daemon, DaemonOpts, Fixture, APPL_DB, DEFAULT_TIMEOUT};

/// The deadline the issue sets.
const EXIT_DEADLINE: Duration = Duration::from_secs(2);

/// SIGTERM, then the daemon must exit 0 within [`EXIT_DEADLINE`].
fn sigterm_exits_0(d: &mut Daemon, point: &str) {
    assert!(d.is_running(), "daemon exited before SIGTERM {point}: {:?}\n{}", d.exit_status(), d.log_tail(20));
    let sent = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(EXIT_DEADLINE);
    let took = sent.elapsed();
    let Some(status) = status else {
        panic!("no exit within {EXIT_DEADLINE:?} of SIGTERM {point}\n{}", d.log_tail(20));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM {point} must exit 0, got {status:?} after {:.0} ms\n{}",
        took.as_secs_f64() * 1e3,
        d.log_tail(20)
    );
    eprintln!("SIGTERM {point}: exit 0 after {:.0} ms", took.as_secs_f64() * 1e3);
}

/// Redis stopped before the daemon starts: the daemon connects (the kernel queues the
/// connection in the stopped server's accept backlog) and then waits for an answer that does not
/// come.
fn scenario_blocked_on_redis(mode: Capture) {
    let mut fx = Fixture::new(mode, 4);
    let paused = fx.redis.pause();
    let queued = fx.redis.pending_connections();
    let mut d = Daemon::start(&fx.ns, &fx.redis, DaemonOpts::new(mode));
    let redis = &fx.redis;
    d.wait_for(Duration::from_secs(5), "the daemon's connection in the stopped Redis's backlog", || {
        let n = redis.pending_connections();
        if n > queued {
            Ok(())
        } else {
            Err(format!("{n} queued connections"))
        }
    });
    // Past connect, it now awaits a reply.
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.stats().is_none_or(|s| !s.initial_sync_done()), "start-up cannot be done with Redis stopped");
    sigterm_exits_0(&mut d, "while blocked on a stopped Redis");
    drop(paused);
    fx.daemon = Some(d);
}

/// The initial dump's NLMSG_DONE is withheld: the daemon waits up to the 30 s EOIU timeout.
fn scenario_held_initial_dump(mode: Capture) {
    let mut fx = Fixture::new(mode, 4);
    let mut d =
        Daemon::start(&fx.ns, &fx.redis, DaemonOpts::new(mode).args(["--test-hold-eoiu", "--eoiu-timeout-secs", "30"]));
    // PortConfigDone is the last start-up write before the dump.
    let want = hash(&[("count", "4")]);
    let mut con = fx.redis.conn(APPL_DB);
    d.wait_for(DEFAULT_TIMEOUT, "PortConfigDone in APPL_DB", || {
        let got = portsyncd_e2e::hgetall(&mut con, "PORT_TABLE:PortConfigDone");
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.stats().is_none_or(|s| !s.initial_sync_done()), "initial sync must still be waiting for the dump's end");
    sigterm_exits_0(&mut d, "during the held initial dump");
    fx.daemon = Some(d);
}

/// After initial sync, before the capture is attached.
fn scenario_before_capture(mode: Capture) {
    // No configured port: PortInitDone is written right after the initial dump.
    let mut fx = Fixture::new(mode, 0);
    let mut d =
        Daemon::start(&fx.ns, &fx.redis, DaemonOpts::new(mode).args(["--test-pause-before-capture-secs", "30"]));
    let want = hash(&[("lanes", "0")]);
    let mut con = fx.redis.conn(APPL_DB);
    d.wait_for(DEFAULT_TIMEOUT, "PortInitDone in APPL_DB (initial sync done)", || {
        let got = portsyncd_e2e::hgetall(&mut con, "PORT_TABLE:PortInitDone");
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    sigterm_exits_0(&mut d, "between initial sync and capture attach");
    fx.daemon = Some(d);
}

capture_tests! {
    scenario_blocked_on_redis => sigterm_while_blocked_on_redis_exits_0_netlink, sigterm_while_blocked_on_redis_exits_0_ebpf;
    scenario_held_initial_dump => sigterm_during_held_initial_dump_exits_0_netlink, sigterm_during_held_initial_dump_exits_0_ebpf;
    scenario_before_capture => sigterm_before_capture_attach_exits_0_netlink, sigterm_before_capture_attach_exits_0_ebpf;
}
