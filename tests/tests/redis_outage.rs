//! A Redis that goes away: while redis-server is stopped (SIGSTOP: connections hang, the
//! daemon's 5 s response timeout fires), link changes keep coming. Nothing may be lost: once
//! Redis answers again the daemon reconnects, re-dumps and STATE_DB equals the kernel.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use portsyncd_e2e::{all_links, capture_tests, Capture, Fixture, DEFAULT_TIMEOUT, STORM_TIMEOUT};

/// Resumes redis-server even when the test panics, so the fixture can tear down.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

fn scenario_redis_outage(mode: Capture) {
    let mut fx = Fixture::start(mode, 8);
    fx.create_ports(0..8);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));

    let pid = fx.redis.pid() as i32;
    kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP redis-server");
    let resume = Resume(pid);
    // Changes while Redis is unreachable: flaps, an mtu change and a deleted port.
    fx.ns.batch(&[
        "link set Ethernet0 down",
        "link set Ethernet1 mtu 9000",
        "link set pe2 down",
        "link del Ethernet7",
        "link set Ethernet3 down",
        "link set Ethernet3 up",
    ]);
    // Keep Redis stopped until the daemon has noticed (its 5 s response timeout fired), however
    // slow the machine is, so the outage path really runs. Noticing is the last thing the stats
    // show during the outage: later failed probes are counted but not written out until Redis
    // is back, so there is nothing further to wait for here.
    fx.daemon().wait_stats(Duration::from_secs(30), "the daemon to see Redis down", |s| {
        s.get("/redis_up").and_then(|v| v.as_bool()) == Some(false)
    });
    assert!(fx.daemon().is_running(), "daemon must survive a Redis outage:\n{}", fx.daemon().log_tail(30));
    drop(resume);

    let ports: Vec<String> = fx.ports[..7].to_vec();
    fx.wait_state_matches_kernel(&ports, STORM_TIMEOUT, |_| true);
    fx.wait_state_absent("Ethernet7");
    let stats = fx.daemon().wait_stats(DEFAULT_TIMEOUT, "redis_up after the outage", |s| {
        s.get("/redis_up").and_then(|v| v.as_bool()) == Some(true)
    });
    assert!(stats.counter("redis_errors") > 0, "the outage was noticed: {:?}", stats.0["counters"]);
    assert!(stats.counter("resyncs") > 0, "a resync followed the outage: {:?}", stats.0["counters"]);
    assert!(stats.counter("redis_reconnects") > 0, "the lost connection was replaced: {:?}", stats.0["counters"]);
}

capture_tests! {
    scenario_redis_outage => redis_outage_loses_no_link_change_netlink, redis_outage_loses_no_link_change_ebpf;
}
