//! The opt-in Prometheus endpoint (`--metrics-addr`, loopback only) serves the daemon's counters
//! as text, and a non-loopback address is refused at start-up.

use portsyncd_e2e::{all_links, wait_for, Capture, Daemon, DaemonOpts, Fixture, DEFAULT_TIMEOUT};

/// One HTTP GET from inside the namespace (bash's /dev/tcp: no client to install).
fn scrape(fx: &Fixture) -> Result<String, String> {
    let out = fx.ns.exec(&[
        "bash",
        "-c",
        "exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && text.starts_with("HTTP/1.1 200") {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn metrics_endpoint_serves_counters_on_loopback() {
    let mut fx = Fixture::new(Capture::Netlink, 2);
    // A new namespace's loopback is down; a switch's is up.
    fx.ns.ip(&["link", "set", "lo", "up"]);
    fx.start_daemon(DaemonOpts::new(Capture::Netlink).args(["--metrics-addr", "127.0.0.1:9464"]));
    fx.create_ports(0..2);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    let text = wait_for(DEFAULT_TIMEOUT, "state writes in the Prometheus text", || {
        let text = scrape(&fx)?;
        let writes = text
            .lines()
            .find_map(|l| l.strip_prefix("portsyncd_counters_state_writes "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| text.clone())?;
        if writes >= 2 {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert!(text.contains("content-type: text/plain"), "{text}");
    assert!(text.contains("portsyncd_port_init_done 1"), "{text}");
}

#[test]
fn metrics_endpoint_refuses_a_non_loopback_address() {
    let fx = Fixture::new(Capture::Netlink, 1);
    let mut daemon =
        Daemon::start(&fx.ns, &fx.redis, DaemonOpts::new(Capture::Netlink).args(["--metrics-addr", "0.0.0.0:9464"]));
    let status = daemon.wait_exit(std::time::Duration::from_secs(20)).expect("exits by itself");
    assert_eq!(status.code(), Some(1), "{}", daemon.log());
    assert!(daemon.log().contains("portsyncd: error: invalid value for `metrics_addr`"), "{}", daemon.log());
}
