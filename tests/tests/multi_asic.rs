//! Multi-ASIC: daemons started on the host with `-n asicN` each read their ASIC's Redis from
//! database_global.json and enter the ASIC's network namespace, so each namespace's ports land
//! only in its own Redis and a storm in one leaves the other's Redis untouched; a missing
//! namespace or global file is one error line and exit 1; `NAMESPACE_ID` labels metrics and
//! log lines.

use std::collections::BTreeSet;
use std::time::Duration;

use portsyncd_e2e::asic::{asic_name, ns_id, Asic, GlobalConfig, HostDaemon, Reach};
use portsyncd_e2e::monitor::{daemon_writes, show};
use portsyncd_e2e::openmetrics::{parse, sample};
use portsyncd_e2e::storm::{kernel_in_storm_final, storm_lines};
use portsyncd_e2e::syslog::SyslogSink;
use portsyncd_e2e::{
    all_links, capture_tests, hash, state_db_port_table, wait_for, wait_hash, wait_state_matches_kernel, Capture,
    DaemonOpts, Fixture, Monitor, NetNs, RunOutput, APPL_DB, DEFAULT_TIMEOUT, STORM_TIMEOUT,
};

const EXIT_DEADLINE: Duration = Duration::from_secs(20);
/// Ports per ASIC.
const N: u32 = 8;
/// First port number of the second ASIC (`Ethernet64`...), as a second ASIC's ports are
/// numbered on a switch: a row of one ASIC in the other's Redis would stand out by name.
const SECOND: u32 = 64;
/// The same metrics address for both daemons: each binds it inside its own namespace.
const METRICS: &str = "127.0.0.1:9464";

/// One HTTP GET of the metrics from inside `ns`; the parsed families.
fn scrape(ns: &NetNs) -> Result<serde_json::Value, String> {
    let get = "exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3";
    let out = ns.exec(&["bash", "-c", get]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if out.status.success() && head.starts_with("HTTP/1.1 200") => {
            parse(body).map_err(|e| format!("parser refused the scrape: {e}\n{body}"))
        }
        _ => Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// Every sample of every family carries `namespace="<ns>"`.
fn assert_every_sample_labelled(families: &serde_json::Value, ns: &str) {
    let mut n = 0;
    for (name, f) in families.as_object().into_iter().flatten() {
        for s in f["samples"].as_array().into_iter().flatten() {
            assert_eq!(s[1]["namespace"].as_str(), Some(ns), "{name}: sample {s} lacks namespace={ns}");
            n += 1;
        }
    }
    assert!(n > 10, "a real scrape has many samples: {families:#}");
}

/// The STATE_DB PORT_TABLE row names in `asic`'s Redis.
fn state_rows(asic: &Asic) -> BTreeSet<String> {
    state_db_port_table(&asic.redis).into_keys().collect()
}

fn scenario_two_asics_from_the_host(mode: Capture) {
    // The first ASIC's database_config.json names only 127.0.0.1:<port>, which only a process
    // inside that namespace reaches; the second's also has the unix socket (preferred).
    let a = Asic::new(0..N, Reach::Tcp);
    let b = Asic::new(SECOND..SECOND + N, Reach::Unix);
    let global = GlobalConfig::write(&[&a, &b], &[]);
    let mut da = HostDaemon::start(&a, &global, mode, &["--metrics-addr", METRICS]);
    let mut db = HostDaemon::start(&b, &global, mode, &["--metrics-addr", METRICS]);
    da.wait_ready();
    db.wait_ready();
    a.create_ports(0..N);
    b.create_ports(SECOND..SECOND + N);
    for (d, asic) in [(&da, &a), (&db, &b)] {
        let want = ns_id(&format!("/run/netns/{}", asic.name()));
        assert_eq!(d.netns_id(), want, "the daemon for {} runs in that network namespace", asic.name());
    }
    for asic in [&a, &b] {
        wait_state_matches_kernel(
            &asic.ns,
            &asic.redis,
            &asic.ports,
            DEFAULT_TIMEOUT,
            all_links(&asic.ports, true, true),
        );
        wait_hash(&asic.redis, APPL_DB, "PORT_TABLE:PortInitDone", &hash(&[("lanes", "0")]));
        let want: BTreeSet<String> = asic.ports.iter().cloned().collect();
        assert_eq!(state_rows(asic), want, "{}'s Redis holds exactly its own ports", asic.name());
    }

    // A storm in the first ASIC: converges there, and the second's Redis sees no write.
    let monitor = Monitor::start(&b.redis);
    let mark = monitor.mark(&b.redis);
    a.ns.batch(&storm_lines(N, 3));
    wait_state_matches_kernel(&a.ns, &a.redis, &a.ports, STORM_TIMEOUT, kernel_in_storm_final(N));
    monitor.sync(&b.redis);
    let cmds = monitor.commands_since(mark);
    let writes = daemon_writes(&cmds);
    assert!(writes.is_empty(), "a storm in {} wrote to {}'s Redis:\n{}", a.name(), b.name(), show(&writes));
    wait_state_matches_kernel(&b.ns, &b.redis, &b.ports, DEFAULT_TIMEOUT, all_links(&b.ports, true, true));
    assert_eq!(state_rows(&b), b.ports.iter().cloned().collect(), "{} unchanged", b.name());
    assert!(da.is_running() && db.is_running());

    // Each daemon's metrics listener is inside its namespace, labelled with its name.
    for asic in [&a, &b] {
        // The export is refreshed on the daemon's next tick: poll until it shows PortInitDone.
        let families = wait_for(DEFAULT_TIMEOUT, &format!("a scrape in {} showing PortInitDone", asic.name()), || {
            let f = scrape(&asic.ns)?;
            match sample(&f, "portsyncd_port_init_done", &[("namespace", asic.name())]) {
                Some(1.0) => Ok(f),
                other => Err(format!("portsyncd_port_init_done = {other:?}")),
            }
        });
        assert_every_sample_labelled(&families, asic.name());
    }
    // And every log line names its namespace.
    for (d, asic) in [(&da, &a), (&db, &b)] {
        let log = d.log();
        let field = format!(" namespace={}", asic.name());
        assert!(log.contains(&format!("serving ASIC namespace {}", asic.name())), "{log}");
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(" INFO ") || l.contains(" WARN ")).collect();
        assert!(!lines.is_empty(), "{log}");
        for l in lines {
            assert!(l.ends_with(&field), "log line without{field}: {l}");
        }
    }
}

capture_tests! {
    scenario_two_asics_from_the_host =>
        each_asic_namespace_gets_its_ports_in_its_own_redis_netlink,
        each_asic_namespace_gets_its_ports_in_its_own_redis_ebpf;
}

/// Runs the binary on the host with `args` plus harmless paths for the files it would write.
fn run(args: &[&str]) -> RunOutput {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json").display().to_string();
    let state = dir.path().join("state/port_state.json").display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--capture", "netlink", "--stats-file", &stats, "--state-file", &state]);
    HostDaemon::run_once(&all, EXIT_DEADLINE)
}

/// Exit 1 and exactly one `portsyncd: error:` line, containing each of `mentions`.
fn assert_one_error_line(out: &RunOutput, mentions: &[&str]) {
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "status {:?}\nstderr:\n{}", out.status, out.stderr);
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("portsyncd: error:")).collect();
    assert_eq!(errors.len(), 1, "expected one `portsyncd: error:` line, got:\n{}", out.stderr);
    for m in mentions {
        assert!(errors[0].contains(m), "the error line should mention {m:?}: {}", errors[0]);
    }
}

/// A global file whose entry for `name` points at a valid database_config.json.
fn global_naming(name: &str) -> GlobalConfig {
    let entry = serde_json::json!({"namespace": name, "include": "asic.json"});
    let global = GlobalConfig::write(&[], &[entry]);
    let config = r#"{"INSTANCES": {"redis": {"hostname": "127.0.0.1", "port": 1}},
        "DATABASES": {"APPL_DB": {"id": 0, "separator": ":", "instance": "redis"},
                      "CONFIG_DB": {"id": 4, "separator": "|", "instance": "redis"},
                      "STATE_DB": {"id": 6, "separator": "|", "instance": "redis"}}}"#;
    std::fs::write(global.root().join("redis/sonic-db/asic.json"), config).unwrap();
    global
}

#[test]
fn a_missing_network_namespace_is_one_error_line_and_exit_1() {
    // Named in database_global.json, never created.
    let name = asic_name();
    let global = global_naming(&name);
    let path = global.path().display().to_string();
    let out = run(&["-n", &name, "--database-global-config", &path]);
    assert_one_error_line(&out, &[&format!("`{name}`"), &format!("/var/run/netns/{name}")]);
}

#[test]
fn a_database_global_json_without_the_namespace_is_one_error_line_and_exit_1() {
    let global = global_naming(&asic_name());
    let other = asic_name();
    let path = global.path().display().to_string();
    let out = run(&["-n", &other, "--database-global-config", &path]);
    assert_one_error_line(&out, &[&format!("`{other}`"), &path, "no INCLUDES entry"]);
}

#[test]
fn a_missing_or_malformed_database_global_json_is_one_error_line_and_exit_1() {
    let name = asic_name();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("database_global.json").display().to_string();
    let out = run(&["-n", &name, "--database-global-config", &missing]);
    assert_one_error_line(&out, &[&format!("`{name}`"), &missing, "No such file"]);
    std::fs::write(&missing, "{\"INCLUDES\": [").unwrap();
    let out = run(&["-n", &name, "--database-global-config", &missing]);
    assert_one_error_line(&out, &[&format!("`{name}`"), &missing, "invalid database global config"]);
}

#[test]
fn namespace_with_redis_or_database_config_is_a_config_error_naming_the_key() {
    let name = asic_name();
    let out = run(&["-n", &name, "--redis", "unix:///nonexistent-psd/redis.sock"]);
    assert_one_error_line(&out, &["`redis`", "namespace"]);
    let out = run(&["-n", &name, "--database-config", "/nonexistent-psd/database_config.json"]);
    assert_one_error_line(&out, &["`database_config`", "namespace"]);
}

/// Inside an ASIC's swss container (the daemon already in the namespace, Redis from the
/// default config), `NAMESPACE_ID` as SONiC sets it (the ASIC number, with `NAMESPACE_PREFIX`)
/// labels every metric sample and ends every syslog line.
#[test]
fn namespace_id_labels_every_metric_sample_and_syslog_line() {
    // Read from the start, as a syslog daemon does.
    let sink = SyslogSink::bind();
    let mut fx = Fixture::new(Capture::Netlink, 1);
    fx.ns.ip(&["link", "set", "lo", "up"]);
    let path_arg = sink.path().display().to_string();
    fx.start_daemon(
        DaemonOpts::new(Capture::Netlink)
            .env("NAMESPACE_ID", "7")
            .env("NAMESPACE_PREFIX", "asic")
            // Without RUST_LOG the daemon logs as in SONiC: NOTICE and up, to syslog.
            .env("RUST_LOG", "")
            .args(["--metrics-addr", METRICS, "--test-syslog-socket", path_arg.as_str()]),
    );
    fx.create_ports(0..1);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    let families = wait_for(DEFAULT_TIMEOUT, "a scrape after PortInitDone", || {
        let f = scrape(&fx.ns)?;
        match sample(&f, "portsyncd_port_init_done", &[("namespace", "asic7")]) {
            Some(1.0) => Ok(f),
            other => Err(format!("portsyncd_port_init_done{{namespace=\"asic7\"}} = {other:?}")),
        }
    });
    assert_every_sample_labelled(&families, "asic7");
    let publish = |g: &[String]| {
        g.iter().any(|l| l.starts_with("<13>portsyncd: Publish Ethernet0(ok:") && l.ends_with(" namespace=asic7"))
    };
    wait_for(DEFAULT_TIMEOUT, "a labelled NOTICE line on syslog", || {
        let g = sink.lines();
        if publish(&g) {
            Ok(())
        } else {
            Err(format!("{g:#?}"))
        }
    });
    let got = sink.finish();
    for l in &got {
        assert!(l.starts_with("<") && l.contains(">portsyncd: "), "ident unchanged: {l}");
        assert!(l.ends_with(" namespace=asic7"), "syslog line without the namespace: {l}");
    }
}
