//! The opt-in Prometheus endpoint (`--metrics-addr`, loopback only) serves OpenMetrics text
//! that the Prometheus project's own parser accepts: counters with HELP, the event latency
//! histogram, health, memory and capture mode; a non-loopback address is refused at start-up.

use portsyncd_e2e::openmetrics::{parse, sample};
use portsyncd_e2e::{all_links, wait_for, Capture, Daemon, DaemonOpts, Fixture, DEFAULT_TIMEOUT};

/// One HTTP GET from inside the namespace (bash's /dev/tcp: no client to install); returns
/// (head, body).
fn scrape(fx: &Fixture) -> Result<(String, String), String> {
    let out = fx.ns.exec(&[
        "bash",
        "-c",
        "exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if out.status.success() && head.starts_with("HTTP/1.1 200") => {
            Ok((head.to_owned(), body.to_owned()))
        }
        _ => Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
    }
}

#[test]
fn metrics_endpoint_serves_openmetrics_that_the_reference_parser_accepts() {
    let mut fx = Fixture::new(Capture::Ebpf, 2);
    // A new namespace's loopback is down; a switch's is up.
    fx.ns.ip(&["link", "set", "lo", "up"]);
    fx.start_daemon(DaemonOpts::new(Capture::Ebpf).args(["--metrics-addr", "127.0.0.1:9464"]));
    fx.create_ports(0..2);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    fx.ns.ip(&["link", "set", "pe0", "down"]);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, |_| true);
    let (head, families) = wait_for(DEFAULT_TIMEOUT, "a scrape with the flap's writes and latencies", || {
        let (head, body) = scrape(&fx)?;
        let families = parse(&body).map_err(|e| format!("parser refused the scrape: {e}\n{body}"))?;
        let writes = sample(&families, "portsyncd_state_writes_total", &[]).unwrap_or(0.0);
        let latencies = sample(&families, "portsyncd_event_processing_latency_seconds_count", &[]).unwrap_or(0.0);
        if writes >= 3.0 && latencies >= 1.0 {
            Ok((head, families))
        } else {
            Err(format!("writes {writes}, latencies {latencies}\n{body}"))
        }
    });
    assert!(head.contains("content-type: application/openmetrics-text"), "{head}");
    let family = |name: &str| families.get(name).unwrap_or_else(|| panic!("no family {name}: {families:#}"));
    for (name, kind) in [
        ("portsyncd_state_writes", "counter"),
        ("portsyncd_event_processing_latency_seconds", "histogram"),
        ("portsyncd_health_status", "gauge"),
        ("portsyncd_memory_bytes", "gauge"),
        ("portsyncd_capture", "info"),
    ] {
        assert_eq!(family(name)["type"], kind, "{name}");
        assert!(family(name)["help"].as_str().is_some_and(|h| !h.is_empty()), "{name} has no HELP");
    }
    assert_eq!(family("portsyncd_event_processing_latency_seconds")["unit"], "seconds");
    // Every histogram observation lands in the +Inf bucket, and the audit counts match.
    let count = sample(&families, "portsyncd_event_processing_latency_seconds_count", &[]).unwrap_or(0.0);
    let inf = sample(&families, "portsyncd_event_processing_latency_seconds_bucket", &[("le", "+Inf")]);
    assert_eq!(inf, Some(count));
    assert_eq!(sample(&families, "portsyncd_health_status", &[]), Some(0.0), "{families:#}");
    assert_eq!(sample(&families, "portsyncd_health_reason", &[("reason", "redis_down")]), Some(0.0));
    assert!(sample(&families, "portsyncd_memory_bytes", &[]).is_some_and(|b| b > 1e6), "{families:#}");
    assert_eq!(sample(&families, "portsyncd_capture_info", &[("mode", "ebpf")]), Some(1.0));
    assert_eq!(sample(&families, "portsyncd_port_init_done", &[]), Some(1.0));
}

#[test]
fn metrics_endpoint_reports_unhealthy_while_redis_is_down() {
    let mut fx = Fixture::new(Capture::Netlink, 1);
    fx.ns.ip(&["link", "set", "lo", "up"]);
    fx.start_daemon(DaemonOpts::new(Capture::Netlink).args([
        "--metrics-addr",
        "127.0.0.1:9464",
        "--redis-timeout-ms",
        "1000",
    ]));
    let paused = fx.redis.pause();
    // The liveness check (1 s) times out after --redis-timeout-ms.
    let families = wait_for(DEFAULT_TIMEOUT, "health 2 (redis_down) in the scrape", || {
        let (_, body) = scrape(&fx)?;
        let families = parse(&body)?;
        match sample(&families, "portsyncd_health_status", &[]) {
            Some(2.0) => Ok(families),
            other => Err(format!("health {other:?}\n{body}")),
        }
    });
    assert_eq!(sample(&families, "portsyncd_health_reason", &[("reason", "redis_down")]), Some(1.0));
    assert_eq!(sample(&families, "portsyncd_redis_up", &[]), Some(0.0));
    drop(paused);
    wait_for(DEFAULT_TIMEOUT, "health 0 once Redis is back", || {
        let (_, body) = scrape(&fx)?;
        match sample(&parse(&body)?, "portsyncd_health_status", &[]) {
            Some(0.0) => Ok(()),
            other => Err(format!("health {other:?}\n{body}")),
        }
    });
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
