//! Several instances share one switch's ports (`--instances 4 --partition even`): every port's
//! STATE_DB row is written by exactly one instance (told apart by their Redis client names),
//! PortConfigDone and PortInitDone go out once, a killed instance comes back without a second
//! PortInitDone, a warm restart of all of them writes nothing, and settings that do not fit
//! together are refused at start.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use portsyncd_e2e::monitor::produces;
use portsyncd_e2e::{
    capture_tests, hash, wait_for, wait_hash, Capture, Daemon, DaemonOpts, Fixture, MonCmd, Monitor, NetNs, Orchagent,
    RedisServer, APPL_DB, DEFAULT_TIMEOUT, STATE_DB, STORM_TIMEOUT,
};

const INSTANCES: u16 = 4;
const PORTS: u32 = 256;

/// SONiC's naming: `Ethernet0, Ethernet4, ...` (index = the number), so a split by "port number
/// modulo M" would give instance 0 every port.
fn port_numbers() -> Vec<u32> {
    (0..PORTS).map(|i| i * 4).collect()
}

fn names(numbers: &[u32]) -> Vec<String> {
    numbers.iter().map(|i| format!("Ethernet{i}")).collect()
}

/// The owner `even` must give port `Ethernet<4p>`: blocks of 64 consecutive positions.
fn expected_owner(number: u32) -> u16 {
    let pos = number / 4;
    (pos * u32::from(INSTANCES) / PORTS) as u16
}

/// Four instances on one namespace and one Redis (over TCP, so MONITOR shows each connection's
/// own address), and a MONITOR recording from before the first one started.
struct Cluster {
    // Field order is drop order: the daemons stop before the fixture's namespace and Redis go,
    // and their work directories (state files, stats) outlive them, so a restart reuses them.
    daemons: Vec<Option<Daemon>>,
    monitor: Monitor,
    fx: Fixture,
    work: tempfile::TempDir,
    numbers: Vec<u32>,
    ports: Vec<String>,
    /// `--partition` of each instance.
    partitions: Vec<String>,
}

impl Cluster {
    /// [`INSTANCES`] instances, `even`, on the [`PORTS`] ports of [`port_numbers`].
    fn new(mode: Capture) -> Self {
        Self::with(mode, port_numbers(), vec!["even".to_owned(); usize::from(INSTANCES)])
    }

    /// One instance per entry of `partitions`, on CONFIG_DB ports `Ethernet<n>` for `numbers`.
    fn with(mode: Capture, numbers: Vec<u32>, partitions: Vec<String>) -> Self {
        portsyncd_e2e::require_root();
        // redis-server runs inside the namespace, so the instances reach it over TCP on the
        // namespace's loopback (each connection its own address in MONITOR); the harness uses
        // its unix socket.
        let ns = NetNs::new();
        ns.ip(&["link", "set", "lo", "up"]);
        let redis = {
            let _inside = ns.enter();
            RedisServer::start()
        };
        let orch = Orchagent::start(&redis);
        let fx = Fixture { daemon: None, orch, ns, redis, capture: mode, ports: Vec::new() };
        portsyncd_e2e::db::seed_config_port_list(&fx.redis, numbers.iter().copied());
        let monitor = Monitor::start(&fx.redis);
        let ports = names(&numbers);
        let work = tempfile::Builder::new().prefix("psd-instances-").tempdir().expect("tempdir");
        Cluster { daemons: partitions.iter().map(|_| None).collect(), monitor, fx, work, numbers, ports, partitions }
    }

    fn opts(&self, id: u16, extra: &[&str]) -> DaemonOpts {
        let url = format!("redis://127.0.0.1:{}", self.fx.redis.port());
        DaemonOpts::new(self.fx.capture)
            .redis_args(["--redis".to_owned(), url])
            .args(["--instances", &self.partitions.len().to_string(), "--instance-id", &id.to_string()])
            .args(["--partition", &self.partitions[usize::from(id)]])
            .args(extra.iter().copied())
    }

    /// Starts instance `id` (in its own work directory, the same at every restart).
    fn start(&mut self, id: u16) {
        let opts = self.opts(id, &[]).work_dir(self.work.path().join(format!("instance{id}")));
        self.daemons[usize::from(id)] = Some(Daemon::start(&self.fx.ns, &self.fx.redis, opts));
    }

    fn daemon(&mut self, id: u16) -> &mut Daemon {
        self.daemons[usize::from(id)].as_mut().unwrap_or_else(|| panic!("instance {id} not started"))
    }

    fn start_all_and_wait_ready(&mut self) {
        for id in 0..INSTANCES {
            self.start(id);
        }
        for id in 0..INSTANCES {
            let stats = self.daemon(id).wait_ready();
            assert_eq!(stats.capture_mode(), Some(self.fx.capture.as_str()), "instance {id}: {}", stats.0);
            let share = stats.get("/instance/share_ports").and_then(|v| v.as_u64());
            assert_eq!(share, Some(u64::from(PORTS) / u64::from(INSTANCES)), "instance {id}: {}", stats.0);
        }
    }

    /// Ports created after the instances started (existing ones would be old interfaces at a
    /// cold start), every STATE_DB row equal to the kernel, and PortInitDone.
    fn bring_up(&self) {
        self.fx.create_ports(self.numbers.iter().copied());
        self.fx.wait_state_matches_kernel(
            &self.ports,
            STORM_TIMEOUT,
            portsyncd_e2e::all_links(&self.ports, true, true),
        );
        wait_hash(&self.fx.redis, APPL_DB, "PORT_TABLE:PortInitDone", &hash(&[("lanes", "0")]));
    }

    /// Redis client address -> instance id, from the `CLIENT SETNAME portsyncd-<id>` each
    /// connection sent (MONITOR shows the address; short-lived connections are gone from
    /// CLIENT LIST by the time a test looks).
    fn instance_addrs(&self) -> BTreeMap<String, u16> {
        self.monitor.sync(&self.fx.redis);
        self.monitor
            .commands()
            .iter()
            .filter(|c| c.name() == "CLIENT" && c.arg(1).eq_ignore_ascii_case("SETNAME"))
            .filter_map(|c| Some((c.addr.clone(), c.arg(2).strip_prefix("portsyncd-")?.parse::<u16>().ok()?)))
            .collect()
    }
}

/// STATE_DB `PORT_TABLE|<p>` HSETs in `cmds`, as (position in `cmds`, port, client address).
fn row_hsets(cmds: &[MonCmd]) -> Vec<(usize, String, String)> {
    cmds.iter()
        .enumerate()
        .filter(|(_, c)| c.db == STATE_DB && !c.lua && matches!(c.name().as_str(), "HSET" | "HMSET"))
        .filter_map(|(i, c)| Some((i, c.arg(1).strip_prefix("PORT_TABLE|")?.to_owned(), c.addr.clone())))
        .collect()
}

fn position_of(cmds: &[MonCmd], key: &str) -> Vec<usize> {
    let hits = produces(cmds, key);
    cmds.iter().enumerate().filter(|(_, c)| hits.contains(c)).map(|(i, _)| i).collect()
}

/// A flap storm over the cluster's ports: every port down, new mtu, up, carrier off and on,
/// then a mixed final state (by position, so instances end in different states).
fn storm(numbers: &[u32]) -> (Vec<String>, impl Fn(&BTreeMap<String, portsyncd_e2e::LinkState>) -> bool) {
    let final_state = |pos: usize| -> (bool, bool, u32) {
        let mtu = if pos.is_multiple_of(5) { 9000 } else { 1500 };
        match pos % 3 {
            0 => (false, false, mtu),
            1 => (true, false, mtu),
            _ => (true, true, mtu),
        }
    };
    let mut lines = Vec::new();
    for step in ["link set Ethernet{} down", "link set Ethernet{} mtu 9100", "link set Ethernet{} up"] {
        lines.extend(numbers.iter().map(|i| step.replace("{}", &i.to_string())));
    }
    lines.extend(numbers.iter().map(|i| format!("link set pe{i} down")));
    lines.extend(numbers.iter().map(|i| format!("link set pe{i} up")));
    for (pos, i) in numbers.iter().enumerate() {
        let (admin, oper, mtu) = final_state(pos);
        lines.push(format!("link set Ethernet{i} mtu {mtu}"));
        if !admin {
            lines.push(format!("link set Ethernet{i} down"));
        } else if !oper {
            lines.push(format!("link set pe{i} down"));
        }
    }
    let numbers = numbers.to_vec();
    let settled = move |links: &BTreeMap<String, portsyncd_e2e::LinkState>| {
        numbers.iter().enumerate().all(|(pos, i)| {
            let (admin, oper, mtu) = final_state(pos);
            links.get(&format!("Ethernet{i}")).is_some_and(|l| l.admin_up == admin && l.oper_up == oper && l.mtu == mtu)
        })
    };
    (lines, settled)
}

fn scenario_four_instances_split_the_ports(mode: Capture) {
    let mut c = Cluster::new(mode);
    c.start_all_and_wait_ready();
    c.bring_up();
    c.monitor.sync(&c.fx.redis);
    let cmds = c.monitor.commands();
    let addrs = c.instance_addrs();
    assert_eq!(addrs.values().copied().collect::<BTreeSet<u16>>(), (0..INSTANCES).collect(), "client names: {addrs:?}");

    // Every port's row written, each by exactly its owner.
    let hsets = row_hsets(&cmds);
    let mut writers: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for (_, port, addr) in &hsets {
        let id = *addrs.get(addr).unwrap_or_else(|| panic!("HSET of {port} from {addr}, not a named instance"));
        writers.entry(port.clone()).or_default().insert(id);
    }
    for (i, port) in c.numbers.iter().zip(&c.ports) {
        let w = writers.get(port).unwrap_or_else(|| panic!("{port}: no STATE_DB write"));
        assert_eq!(w, &BTreeSet::from([expected_owner(*i)]), "{port} written by {w:?}");
    }

    // PortConfigDone and PortInitDone once each, PortInitDone after every port has its row.
    assert_eq!(position_of(&cmds, "PortConfigDone").len(), 1, "PortConfigDone");
    let init = position_of(&cmds, "PortInitDone");
    assert_eq!(init.len(), 1, "PortInitDone: {init:?}");
    let first_write: BTreeMap<&str, usize> = hsets.iter().rev().map(|(pos, port, _)| (port.as_str(), *pos)).collect();
    let last_first_write = first_write.values().max().copied().unwrap_or(0);
    assert!(
        init[0] > last_first_write,
        "PortInitDone at {} before the last port's first row at {last_first_write}",
        init[0]
    );

    // A storm over all 256 ports converges with no wrong row.
    let (lines, settled) = storm(&c.numbers);
    c.fx.ns.batch(&lines);
    c.fx.wait_state_matches_kernel(&c.ports, STORM_TIMEOUT, settled);

    // Each instance handled only its own share: in eBPF mode the kernel dropped the others'
    // messages (the instance never woke for them), in netlink mode userspace did.
    let mut handled = Vec::new();
    for id in 0..INSTANCES {
        let stats = c.daemon(id).stats().expect("stats");
        match mode {
            Capture::Ebpf => {
                let other = stats.ebpf_counter("other_instance").unwrap_or(0);
                let own = stats.ebpf_counter("events").unwrap_or(0);
                assert!(other > own, "instance {id}: kernel dropped {other} of others' messages, captured {own}");
                handled.push(own);
            }
            _ => {
                let other = stats.get("/coalesce/ignored_other_instance").and_then(|v| v.as_u64()).unwrap_or(0);
                assert!(other > 0, "instance {id}: {}", stats.0);
                handled.push(stats.counter("events"));
            }
        }
    }
    eprintln!("events handled per instance ({mode}): {handled:?}");
    // Every log line says which instance wrote it (syslog lines carry no pid).
    for id in 0..INSTANCES {
        let log = c.daemon(id).log();
        let publish: Vec<&str> = log.lines().filter(|l| l.contains("Publish Ethernet")).collect();
        assert!(!publish.is_empty(), "instance {id} logged its writes");
        let field = format!(" instance={id}");
        assert!(publish.iter().all(|l| l.ends_with(&field)), "instance {id}: {:?}", publish.first());
    }
    // Each instance exports its own component stats.
    wait_for(DEFAULT_TIMEOUT, "PORTSYNCD_STATS of every instance in COUNTERS_DB", || {
        let keys = portsyncd_e2e::db::keys(&mut c.fx.redis.conn(2), "PORTSYNCD_STATS:instance*:counters");
        if keys.len() == usize::from(INSTANCES) {
            Ok(())
        } else {
            Err(format!("{keys:?}"))
        }
    });
    c.monitor.sync(&c.fx.redis);
    let after = c.monitor.commands();
    assert_eq!(position_of(&after, "PortInitDone").len(), 1, "still one PortInitDone");
}

fn scenario_killed_instance_rejoins(mode: Capture) {
    let mut c = Cluster::new(mode);
    c.start_all_and_wait_ready();
    c.bring_up();
    c.daemon(2).kill9();
    // Change instance 2's ports while it is down: some admin down, some carrier off, some mtu.
    let share: Vec<u32> = c.numbers.iter().copied().filter(|i| expected_owner(*i) == 2).collect();
    let mut lines = Vec::new();
    for (k, i) in share.iter().enumerate() {
        match k % 3 {
            0 => lines.push(format!("link set Ethernet{i} down")),
            1 => lines.push(format!("link set pe{i} down")),
            _ => lines.push(format!("link set Ethernet{i} mtu 1400")),
        }
    }
    c.fx.ns.batch(&lines);
    let mark = c.monitor.mark(&c.fx.redis);
    // The registry record of the killed process must not block its successor.
    c.start(2);
    let stats = c.daemon(2).wait_ready();
    assert_eq!(stats.warm_start(), Some(true), "a restart within the run is a warm start of its share: {}", stats.0);
    c.fx.wait_state_matches_kernel(&c.ports, STORM_TIMEOUT, |_| true);
    c.monitor.sync(&c.fx.redis);
    let cmds = c.monitor.commands_since(mark);
    assert!(position_of(&cmds, "PortInitDone").is_empty(), "no second PortInitDone");
    assert!(position_of(&cmds, "PortConfigDone").is_empty(), "no second PortConfigDone");
    let addrs = c.instance_addrs();
    for (_, port, addr) in row_hsets(&cmds) {
        assert_eq!(addrs.get(&addr), Some(&2), "{port} written by {addr} after instance 2 came back");
    }
    for id in [0, 1, 3] {
        assert!(c.daemon(id).is_running(), "instance {id} kept running");
    }
}

fn scenario_warm_restart_of_all_writes_nothing(mode: Capture) {
    let mut c = Cluster::new(mode);
    c.start_all_and_wait_ready();
    c.bring_up();
    redis::cmd("HSET")
        .arg("WARM_RESTART_ENABLE_TABLE|swss")
        .arg("enable")
        .arg("true")
        .query::<()>(&mut c.fx.redis.conn(STATE_DB))
        .expect("enable warm restart");
    for id in 0..INSTANCES {
        assert!(c.daemon(id).stop().success(), "instance {id} stops cleanly");
    }
    let mark = c.monitor.mark(&c.fx.redis);
    for id in 0..INSTANCES {
        c.start(id);
    }
    for id in 0..INSTANCES {
        let stats = c.daemon(id).wait_ready();
        assert_eq!(stats.warm_start(), Some(true), "instance {id}: {}", stats.0);
    }
    wait_for(DEFAULT_TIMEOUT, "PortInitDone after the warm restart", || {
        c.monitor.sync(&c.fx.redis);
        let n = position_of(&c.monitor.commands_since(mark), "PortInitDone").len();
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} PortInitDone"))
        }
    });
    // A moment for anything late, then not one STATE_DB port row written.
    std::thread::sleep(Duration::from_millis(500));
    c.monitor.sync(&c.fx.redis);
    let cmds = c.monitor.commands_since(mark);
    let writes = portsyncd_e2e::monitor::state_row_writes(&cmds);
    assert!(
        writes.is_empty(),
        "warm restart of all four wrote {} STATE_DB rows: {:?}",
        writes.len(),
        &writes[..writes.len().min(5)]
    );
    c.fx.wait_state_matches_kernel(&c.ports, DEFAULT_TIMEOUT, |_| true);
}

/// `range` and `list` shares: each instance owns what its share names, the leader every port no
/// share names (it learns the others' claims from the registry and gives those ports up, in the
/// kernel filter too).
fn scenario_range_and_list_shares(mode: Capture) {
    let numbers: Vec<u32> = (0..6).map(|i| i * 4).collect();
    let partitions =
        vec!["range:0-1".to_owned(), "list:Ethernet12,Ethernet8".to_owned(), "range:Ethernet16-5".to_owned()];
    let mut c = Cluster::with(mode, numbers, partitions);
    for id in 0..3 {
        c.start(id);
    }
    for id in 0..3 {
        c.daemon(id).wait_ready();
    }
    // A range or list instance starts only once the leader has given its ports up: by the time
    // both are ready, the leader has learned both claims (no window in which two instances
    // handle one port).
    let log = c.daemon(0).log();
    for id in [1, 2] {
        let learned = format!("instance={id} ports=2");
        assert!(
            log.lines().any(|l| l.contains("claims learned") && l.contains(&learned)),
            "the leader gave up instance {id}'s ports before it started:\n{log}"
        );
    }
    let mut opts_numbers = c.numbers.clone();
    // A port CONFIG_DB does not know yet (created later): the leader's.
    opts_numbers.push(40);
    c.fx.create_ports(opts_numbers.iter().copied());
    let mut all = c.ports.clone();
    all.push("Ethernet40".to_owned());
    c.fx.wait_state_matches_kernel(&c.ports, DEFAULT_TIMEOUT, portsyncd_e2e::all_links(&c.ports, true, true));
    c.monitor.sync(&c.fx.redis);
    let addrs = c.instance_addrs();
    let mut writers: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for (_, port, addr) in row_hsets(&c.monitor.commands()) {
        writers.entry(port).or_default().insert(addrs[&addr]);
    }
    let want = |ids: &[(&str, u16)]| -> BTreeMap<String, BTreeSet<u16>> {
        ids.iter().map(|(p, id)| ((*p).to_owned(), BTreeSet::from([*id]))).collect()
    };
    // Ethernet40 has no APPL_DB entry, so no row: its owner only logs "Cannot find".
    assert_eq!(
        writers,
        want(&[
            ("Ethernet0", 0),
            ("Ethernet4", 0),
            ("Ethernet8", 1),
            ("Ethernet12", 1),
            ("Ethernet16", 2),
            ("Ethernet20", 2)
        ]),
    );
    assert!(c.daemon(0).log().contains("Cannot find Ethernet40 in port table"), "the leader handles unknown ports");
    for id in [1, 2] {
        assert!(
            !c.daemon(id).log().contains("Cannot find Ethernet40"),
            "instance {id} leaves Ethernet40 to the leader"
        );
    }
}

/// redis-server restarts empty (CONFIG_DB reloaded): the leader publishes CONFIG_DB's ports and
/// PortConfigDone again as a new run, every instance rewrites its share, and PortInitDone comes
/// again once both shares are seen.
fn scenario_redis_restart(mode: Capture) {
    const N: u32 = 32;
    let fx = Fixture::new(mode, N);
    let work = tempfile::Builder::new().prefix("psd-instances-").tempdir().expect("tempdir");
    let mut daemons: Vec<Daemon> = (0..2u16)
        .map(|id| {
            let opts = DaemonOpts::new(mode).work_dir(work.path().join(format!("instance{id}"))).args([
                "--instances",
                "2",
                "--instance-id",
                &id.to_string(),
                "--partition",
                "even",
            ]);
            Daemon::start(&fx.ns, &fx.redis, opts)
        })
        .collect();
    for d in &mut daemons {
        d.wait_ready();
    }
    fx.create_ports(0..N);
    fx.wait_state_matches_kernel(&fx.ports, STORM_TIMEOUT, portsyncd_e2e::all_links(&fx.ports, true, true));
    wait_hash(&fx.redis, APPL_DB, "PORT_TABLE:PortInitDone", &hash(&[("lanes", "0")]));

    let mut fx = fx;
    fx.redis.restart_with(|r| {
        portsyncd_e2e::db::seed_config_ports(r, N);
    });
    // Every row back (both shares), and the run's markers again.
    fx.wait_state_matches_kernel(&fx.ports, STORM_TIMEOUT, |_| true);
    wait_hash(&fx.redis, APPL_DB, "PORT_TABLE:PortInitDone", &hash(&[("lanes", "0")]));
    assert_eq!(fx.appl_entry("PortConfigDone").get("count").map(String::as_str), Some("32"));
    // The follower still follows its share after the new run: a change of its last port.
    fx.ns.ip(&["link", "set", "Ethernet31", "down"]);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, |l| l.get("Ethernet31").is_some_and(|p| !p.admin_up));
    for (id, d) in daemons.iter_mut().enumerate() {
        assert!(d.is_running(), "instance {id} kept running");
        assert!(d.stats().is_some_and(|s| s.counter("redis_restarts") > 0), "instance {id} saw the restart");
    }
    assert!(
        daemons[1].log().contains("instance 0 published CONFIG_DB's ports again"),
        "the follower resynced on the leader's new run"
    );
}

capture_tests! {
    scenario_redis_restart =>
        redis_restart_is_a_new_run_for_every_instance_netlink, redis_restart_is_a_new_run_for_every_instance_ebpf;
    scenario_range_and_list_shares =>
        range_and_list_shares_and_the_leader_keeps_the_rest_netlink, range_and_list_shares_and_the_leader_keeps_the_rest_ebpf;
    scenario_four_instances_split_the_ports =>
        four_instances_split_256_ports_one_writer_each_netlink, four_instances_split_256_ports_one_writer_each_ebpf;
    scenario_killed_instance_rejoins =>
        killed_instance_rejoins_without_a_second_port_init_done_netlink, killed_instance_rejoins_without_a_second_port_init_done_ebpf;
    scenario_warm_restart_of_all_writes_nothing =>
        warm_restart_of_four_instances_writes_no_state_db_row_netlink, warm_restart_of_four_instances_writes_no_state_db_row_ebpf;
}

/// Runs one instance to its exit (it must refuse to start) and returns its stderr.
fn refused(fx: &Fixture, args: &[&str]) -> String {
    let url = fx.redis.url();
    let mut argv = vec!["--redis", url.as_str(), "--capture", "netlink"];
    argv.extend_from_slice(args);
    let out = Daemon::run_once(&fx.ns, &argv, Duration::from_secs(20));
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{args:?} must exit 1; stderr: {}", out.stderr);
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("portsyncd: error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {}", out.stderr);
    errors[0].to_owned()
}

#[test]
fn instances_whose_settings_do_not_fit_are_refused_at_start() {
    let mut fx = Fixture::new(Capture::Netlink, 8);
    fx.start_daemon(DaemonOpts::new(Capture::Netlink).args([
        "--instances",
        "4",
        "--instance-id",
        "0",
        "--partition",
        "range:0-1",
    ]));
    let dir = tempfile::tempdir().expect("tempdir");
    let state = |n: &str| dir.path().join(n).display().to_string();

    let e = refused(&fx, &["--instances", "4", "--instance-id", "4"]);
    assert!(e.contains("instance_id") && e.contains("below instances"), "{e}");
    let e = refused(
        &fx,
        &["--instances", "3", "--instance-id", "1", "--partition", "range:4-5", "--state-file", &state("a")],
    );
    assert!(e.contains("instance 0 runs with instances = 4") && e.contains("this one with 3"), "{e}");
    let e = refused(
        &fx,
        &["--instances", "4", "--instance-id", "1", "--partition", "range:1-3", "--state-file", &state("b")],
    );
    assert!(e.contains("port Ethernet1") && e.contains("instance 0"), "overlap is named: {e}");
    let e =
        refused(&fx, &["--instances", "4", "--instance-id", "2", "--partition", "even", "--state-file", &state("c")]);
    assert!(e.contains("`even` cannot be mixed"), "{e}");
    let e = refused(
        &fx,
        &["--instances", "4", "--instance-id", "0", "--partition", "range:6-7", "--state-file", &state("d")],
    );
    assert!(e.contains("instance 0 is already running"), "{e}");
    let e = refused(
        &fx,
        &["--instances", "4", "--instance-id", "1", "--partition", "range:9-12", "--state-file", &state("e")],
    );
    assert!(e.contains("range end `9`") && e.contains("8 ports"), "{e}");
    assert!(fx.daemon().is_running(), "the running instance is not disturbed");
}
