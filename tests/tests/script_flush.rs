//! A flushed script cache must not block PortInitDone (issue 8, item 4): after `SCRIPT FLUSH`
//! (between PortConfigDone and the netdevs' appearance) the producer's EVALSHA gets NOSCRIPT;
//! the daemon reloads the script and retries, so PortInitDone still reaches orchagent. The time
//! from the last port's creation to PortInitDone is printed.

use std::time::Instant;

use portsyncd_e2e::orchagent::DEFAULT_POP_BATCH_SIZE;
use portsyncd_e2e::{all_links, capture_tests, hash, Capture, DaemonOpts, Fixture, Stats, APPL_DB, DEFAULT_TIMEOUT};
use serde_json::Value;

const PORTS: u32 = 8;

fn scenario_script_flush(mode: Capture) {
    let mut fx = Fixture::new_strict(mode, PORTS, DEFAULT_POP_BATCH_SIZE);
    fx.start_daemon(DaemonOpts::new(mode));
    let orch = &fx.orch;
    fx.daemon.as_mut().expect("daemon").wait_for(DEFAULT_TIMEOUT, "PortConfigDone popped", || {
        if orch.has_popped("PortConfigDone") {
            Ok(())
        } else {
            Err(format!("popped {} keys", orch.pops()))
        }
    });
    let reply: String = redis::cmd("SCRIPT").arg("FLUSH").query(&mut fx.redis.conn(APPL_DB)).expect("SCRIPT FLUSH");
    assert_eq!(reply, "OK");

    // Timed from the start of creation: `create_ports` returns only after every port is up, and
    // the daemon may well have sent PortInitDone by then.
    let creating = Instant::now();
    fx.create_ports(0..PORTS);
    let creation = creating.elapsed();
    let orch = &fx.orch;
    fx.daemon.as_mut().expect("daemon").wait_for(DEFAULT_TIMEOUT, "PortInitDone popped after SCRIPT FLUSH", || {
        if orch.has_popped("PortInitDone") {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    });
    let to_init_done = creating.elapsed();
    assert_eq!(fx.appl_entry("PortInitDone"), hash(&[("lanes", "0")]));
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    let stats = fx.daemon().wait_stats(DEFAULT_TIMEOUT, "port_init_done and script_reloads > 0", |s| {
        Stats::port_init_done(s) && s.counter("script_reloads") > 0
    });
    eprintln!(
        "MEASURE SCRIPT FLUSH, {mode}: PortInitDone popped within {:.1} ms of starting to create the ports (creating them took {:.1} ms); counters {}",
        to_init_done.as_secs_f64() * 1e3,
        creation.as_secs_f64() * 1e3,
        stats.get("/counters").map(Value::to_string).unwrap_or_default()
    );
}

capture_tests! {
    scenario_script_flush => port_init_done_arrives_after_script_flush_netlink, port_init_done_arrives_after_script_flush_ebpf;
}
