//! One measured run: a fresh redis-server + namespace + daemon, a scenario (`ip -batch` storm or
//! a restart) in, one [`RunRecord`] of figures out. Everything is dropped (and cleaned) at return.
//! Over 400 lines because storms and restarts share the set-up, witnesses and settle logic; each
//! measurement step is a short function of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use portsyncd_e2e::{db, LinkState, NetNs, Orchagent, RedisServer, Stats, STATE_DB};
use serde_json::{json, Value};
use tempfile::TempDir;

use super::analysis;
use super::dut::{Dut, Mode};
use super::kernel::{KernelEvent, KernelListener, IFF_UP, RTM_NEWLINK};
use super::keyspace::{KeyspaceRecorder, KsEvent, PORT_CONFIG_DONE, PORT_INIT_DONE};
use super::now_ns;
use super::procstat::{sched_of, CpuSample, Sched};
use super::redis_info::InfoSnapshot;
use super::report::RunRecord;

/// What a run does after the ports exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Every port admin down, then up, `--rounds` times.
    Flap,
    /// `flap` with 50 rounds (a long storm).
    FlapLong,
    /// Every port's MTU changed, `--rounds` times.
    Mtu,
    /// Every port deleted and re-created (and brought up), `--rounds` times.
    Churn,
    /// Daemon restart with N existing ports: warm, then cold.
    Startup,
    /// flap, mtu, churn and startup.
    All,
}

impl Scenario {
    /// Label in tables and JSON.
    pub fn label(self) -> &'static str {
        match self {
            Scenario::Flap => "flap",
            Scenario::FlapLong => "flap-long",
            Scenario::Mtu => "mtu",
            Scenario::Churn => "churn",
            Scenario::Startup => "startup",
            Scenario::All => "all",
        }
    }
}

/// Fixed parameters of every run.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Ports (`Ethernet0..N`).
    pub ports: u32,
    /// Rounds of flap / mtu / churn.
    pub rounds: u32,
    /// Quiet time after which a run counts as settled.
    pub settle: Duration,
    /// How long the idle daemon is measured after its warm restart.
    pub idle: Duration,
    /// Wait between stopping a daemon and restarting it.
    pub restart_pause: Duration,
    /// How long before the bench saw a kernel event a write may come and still belong to it.
    pub slack: Duration,
    /// Where to write each run's raw kernel events and STATE_DB writes (TSV), if anywhere.
    pub dump_dir: Option<std::path::PathBuf>,
    /// Repetition number, for file names.
    pub rep: u32,
}

/// Writes the raw timelines of one run for offline analysis.
fn dump(ctx: &Ctx, label: &str, mode: &Mode, t0: u64, kev: &[KernelEvent], writes: &[KsEvent]) -> anyhow::Result<()> {
    let Some(dir) = &ctx.dump_dir else { return Ok(()) };
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let base = format!("{label}-{}-rep{}", mode.label(), ctx.rep);
    let mut k = String::from("t_us\tport\tmsg\tflags\tmtu\n");
    for e in kev {
        let _ = writeln!(
            k,
            "{:.1}\t{}\t{}\t{:#x}\t{}",
            (e.t_ns as f64 - t0 as f64) / 1e3,
            e.port,
            e.msg_type,
            e.flags,
            e.mtu.unwrap_or(0)
        );
    }
    let mut w = String::from("t_us\tdb\tkey\top\n");
    for e in writes {
        let _ = writeln!(w, "{:.1}\t{}\t{}\t{}", (e.t_ns as f64 - t0 as f64) / 1e3, e.db, e.key, e.op);
    }
    std::fs::write(dir.join(format!("{base}.kernel.tsv")), k).context("write kernel timeline")?;
    std::fs::write(dir.join(format!("{base}.writes.tsv")), w).context("write STATE_DB timeline")?;
    Ok(())
}

/// Rounds of the long-storm variant.
pub const LONG_ROUNDS: u32 = 50;
/// Deadline for `initial_sync_done` / `PortConfigDone` after spawn.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline for `PortInitDone` after spawn: 30 s, or 30 ms per port if longer. A cold start
/// sets every old interface down first, and with thousands of netdevs the kernel needs ~9 ms per
/// link change (the C++ daemon forks `ip` for each), so 4096 ports need more than 30 s.
fn init_done_timeout(ports: u32) -> Duration {
    Duration::from_secs(30).max(Duration::from_millis(30) * ports)
}
/// How long a run with wrong ports keeps polling to report whether it converged late.
const CONVERGE_GRACE: Duration = Duration::from_secs(10);
/// Poll interval of the settle loop.
const POLL: Duration = Duration::from_millis(20);

/// The kernel limits carrier-change notifications to about 100 devices per second when
/// backlogged, so storm deadlines scale with the number of links that change carrier.
fn storm_timeout(links: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(25 * links)
}

/// Redis, namespace, witnesses and daemon of one run. Field order is drop order.
struct Env {
    dut: Option<Dut>,
    keyspace: KeyspaceRecorder,
    kernel: KernelListener,
    orch: Option<Orchagent>,
    work: TempDir,
    ns: NetNs,
    redis: RedisServer,
    names: Vec<String>,
    notes: Vec<String>,
}

impl Env {
    fn new(ports: u32) -> anyhow::Result<Env> {
        let redis = RedisServer::start();
        let names = db::seed_config_ports(&redis, ports);
        let orch = Orchagent::start(&redis);
        let ns = NetNs::new();
        let kernel = KernelListener::start(ns.name())?;
        let keyspace = KeyspaceRecorder::start(&redis)?;
        let work = tempfile::Builder::new().prefix("psd-bench-").tempdir().context("tempdir")?;
        let mut notes = Vec::new();
        if !(kernel.realtime && keyspace.realtime) {
            notes.push("witness threads not SCHED_FIFO (chrt failed): latency figures are rougher".to_owned());
        }
        Ok(Env { dut: None, keyspace, kernel, orch: Some(orch), work, ns, redis, names, notes })
    }

    fn dut(&mut self) -> anyhow::Result<&mut Dut> {
        self.dut.as_mut().ok_or_else(|| anyhow!("no daemon running"))
    }

    /// Starts the daemon; returns the spawn time.
    fn spawn(&mut self, mode: &Mode) -> anyhow::Result<u64> {
        if let Some(mut old) = self.dut.take() {
            old.stop();
        }
        let t = now_ns();
        self.dut = Some(Dut::start(mode, &self.ns, &self.redis, self.work.path())?);
        Ok(t)
    }

    fn ensure_alive(&mut self, what: &str) -> anyhow::Result<()> {
        super::check_interrupt()?;
        let d = self.dut()?;
        if !d.is_running() {
            let tail = d.log_tail(15);
            let last = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(empty log)").to_owned();
            let status = d.exit_status().map_or_else(|| "?".to_owned(), |s| s.to_string());
            bail!(
                "daemon exited ({status}) while {what}: {last}\n--- log tail ({}) ---\n{tail}",
                d.log_path().display()
            );
        }
        Ok(())
    }

    /// Our daemon: `initial_sync_done` and the capture mode asked for. External: its cold-start
    /// `PortConfigDone`, then half a second for it to enter its loop.
    fn wait_ready(&mut self, mode: &Mode, spawned: u64) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            self.ensure_alive("starting")?;
            match mode {
                Mode::Ours(c) | Mode::Instances { capture: c, .. } => {
                    if let Some(s) = self.dut()?.stats().filter(Stats::initial_sync_done) {
                        if s.capture_mode() != Some(c.as_str()) {
                            bail!(
                                "asked for --capture {c}, daemon runs {:?} (fallback reason: {:?})",
                                s.capture_mode(),
                                s.capture_fallback_reason()
                            );
                        }
                        return Ok(());
                    }
                }
                Mode::External { .. } => {
                    if self.keyspace.first_appl_write(PORT_CONFIG_DONE, spawned).is_some() {
                        std::thread::sleep(Duration::from_millis(500));
                        return Ok(());
                    }
                }
            }
            if start.elapsed() > READY_TIMEOUT {
                let d = self.dut()?;
                bail!("daemon not ready after {READY_TIMEOUT:?}; log tail:\n{}", d.log_tail(15));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Creates every port (veth pair, both ends up) after the daemon is running, so they are
    /// new to it, and waits until STATE_DB shows them.
    fn create_ports(&mut self, n: u32) -> anyhow::Result<()> {
        self.ns.veths(0..n);
        self.ns.ports_up(0..n);
        let names = self.names.clone();
        self.wait_matches(&names, storm_timeout(2 * u64::from(n)), "setting up the ports")
    }

    fn wait_matches(&mut self, names: &[String], timeout: Duration, what: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            self.ensure_alive(what)?;
            let links = self.ns.links();
            let up = db::all_links(names, true, true)(&links);
            let bad = if up { db::state_db_mismatches(&self.ns, &self.redis, names) } else { Vec::new() };
            if up && bad.is_empty() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{what}: STATE_DB does not match the kernel after {timeout:?} (kernel all up: {up}; {} wrong, e.g. {:?})",
                    bad.len(),
                    bad.first()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until neither the kernel nor STATE_DB has changed for the settle time and `kernel_ok`
    /// holds for the kernel's link state; returns when. Issues no Redis command.
    fn wait_settled(
        &mut self,
        since: u64,
        settle: Duration,
        timeout: Duration,
        kernel_ok: &dyn Fn(&BTreeMap<String, LinkState>) -> bool,
    ) -> anyhow::Result<u64> {
        let start = Instant::now();
        let settle_ns = settle.as_nanos() as u64;
        loop {
            self.ensure_alive("settling")?;
            let now = now_ns();
            let last = since.max(self.kernel.last_ns()).max(self.keyspace.last_state_ns());
            if now.saturating_sub(last) >= settle_ns && kernel_ok(&self.ns.links()) {
                return Ok(now);
            }
            if start.elapsed() > timeout {
                bail!(
                    "not settled after {timeout:?}: last kernel event {} ms ago, last STATE_DB write {} ms ago",
                    now.saturating_sub(self.kernel.last_ns()) / 1_000_000,
                    now.saturating_sub(self.keyspace.last_state_ns()) / 1_000_000
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

/// `ip -batch` lines and the expected final kernel state of a storm.
struct Storm {
    lines: Vec<String>,
    /// Links whose carrier changes (bounds the settle deadline).
    carrier_changes: u64,
    final_mtu: Option<u32>,
}

fn storm(scenario: Scenario, n: u32, rounds: u32) -> Storm {
    let mut lines = Vec::new();
    let mut final_mtu = None;
    let mut carrier_changes = 0u64;
    for r in 0..rounds {
        match scenario {
            Scenario::Mtu => {
                let mtu = 9000 + r;
                lines.extend((0..n).map(|i| format!("link set Ethernet{i} mtu {mtu}")));
                final_mtu = Some(mtu);
            }
            Scenario::Churn => {
                lines.extend((0..n).map(|i| format!("link del Ethernet{i}")));
                lines.extend((0..n).map(|i| format!("link add Ethernet{i} type veth peer name pe{i}")));
                lines.extend((0..n).map(|i| format!("link set pe{i} up")));
                lines.extend((0..n).map(|i| format!("link set Ethernet{i} up")));
                carrier_changes += 2 * u64::from(n);
            }
            _ => {
                lines.extend((0..n).map(|i| format!("link set Ethernet{i} down")));
                lines.extend((0..n).map(|i| format!("link set Ethernet{i} up")));
                carrier_changes += u64::from(n);
            }
        }
    }
    Storm { lines, carrier_changes, final_mtu }
}

/// `ip -n <ns> -batch -` like the harness's, but kept off the witnesses' CPU (`taskset`).
fn batch_off_witness_cpu(ns: &NetNs, lines: &[String]) -> anyhow::Result<()> {
    let ip = portsyncd_e2e::netns::ip_bin();
    let mut cmd = match super::witness_cpu() {
        Some((_, cpus)) if xtask::on_path("taskset") => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpus]).arg(&ip);
            c
        }
        _ => Command::new(&ip),
    };
    let mut child = cmd
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn ip -batch")?;
    let text: String = lines.iter().flat_map(|l| [l.as_str(), "\n"]).collect();
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).context("write ip -batch input")?;
    }
    let out = child.wait_with_output().context("wait for ip -batch")?;
    if !out.status.success() {
        bail!("ip -n {} -batch failed ({} lines): {}", ns.name(), lines.len(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Stats counters as `daemon_<name>` deltas.
fn counter_delta(before: Option<&Stats>, after: Option<&Stats>, name: &str) -> Option<f64> {
    let a = after?.counter(name);
    let b = before.map_or(0, |s| s.counter(name));
    Some(a.saturating_sub(b) as f64)
}

fn daemon_latency(stats: Option<&Stats>, m: &mut BTreeMap<String, f64>) {
    let Some(s) = stats else { return };
    for (q, key) in
        [("p50", "daemon_latency_p50_us"), ("p99", "daemon_latency_p99_us"), ("max", "daemon_latency_max_us")]
    {
        if let Some(v) = s.get(&format!("/latency/latency_us/{q}")).and_then(Value::as_f64) {
            m.insert(key.into(), v);
        }
    }
}

fn per_event(n: f64, events: f64) -> f64 {
    if events > 0.0 {
        n / events
    } else {
        0.0
    }
}

/// Runs a flap / mtu / churn storm for `mode`.
pub fn run_storm(ctx: &Ctx, scenario: Scenario, mode: &Mode) -> anyhow::Result<RunRecord> {
    let rounds = if scenario == Scenario::FlapLong { LONG_ROUNDS } else { ctx.rounds };
    let mut env = Env::new(ctx.ports)?;
    let spawned = env.spawn(mode)?;
    env.wait_ready(mode, spawned)?;
    env.create_ports(ctx.ports)?;
    // Its APPL_DB work was done while the ports appeared; from here on only the daemon (and the
    // bench's two INFOs) talk to this redis-server.
    env.orch = None;
    let always = |_: &BTreeMap<String, LinkState>| true;
    env.wait_settled(now_ns(), ctx.settle, Duration::from_secs(30), &always)?;

    let mut info_con = env.redis.conn(0);
    let info0 = InfoSnapshot::take(&mut info_con)?;
    let cpu0 = env.dut()?.cpu()?;
    let cpu0_each = env.dut()?.cpu_per_instance()?;
    let stats0 = env.dut()?.stats();
    let (sched0, redis_sched0) = (env.dut()?.sched(), sched_of(&[env.redis.pid() as i32]));

    let st = storm(scenario, ctx.ports, rounds);
    let t0 = now_ns();
    batch_off_witness_cpu(&env.ns, &st.lines)?;
    let t_batch = now_ns();
    let names = env.names.clone();
    let final_mtu = st.final_mtu;
    let kernel_ok = move |links: &BTreeMap<String, LinkState>| {
        names
            .iter()
            .all(|p| links.get(p).is_some_and(|l| l.admin_up && l.oper_up && final_mtu.is_none_or(|m| l.mtu == m)))
    };
    let settled = env.wait_settled(t_batch, ctx.settle, storm_timeout(st.carrier_changes), &kernel_ok)?;

    let cpu = env.dut()?.cpu()?.since(cpu0);
    let sched = env.dut()?.sched().since(&sched0);
    let redis_sched = sched_of(&[env.redis.pid() as i32]).since(&redis_sched0);
    let cpu_each: Vec<f64> = env
        .dut()?
        .cpu_per_instance()?
        .into_iter()
        .zip(cpu0_each)
        .map(|(after, before)| after.since(before).sched_ns as f64 / 1e3)
        .collect();
    let rss = env.dut()?.rss_bytes();
    let info = InfoSnapshot::take(&mut info_con)?.since(&info0);
    let stats1 = env.dut()?.stats();

    let wrong = db::state_db_mismatches(&env.ns, &env.redis, &env.names);
    let mut converged_ms = None;
    if !wrong.is_empty() {
        let start = Instant::now();
        while start.elapsed() < CONVERGE_GRACE {
            std::thread::sleep(Duration::from_millis(200));
            if db::state_db_mismatches(&env.ns, &env.redis, &env.names).is_empty() {
                converged_ms = Some((now_ns() - settled) as f64 / 1e6);
                break;
            }
        }
        env.notes.push(format!("{} ports wrong after settling, e.g. {}", wrong.len(), wrong[0]));
        env.notes.push(match converged_ms {
            Some(ms) => format!("converged {ms:.0} ms after settling"),
            None => format!("still wrong {CONVERGE_GRACE:?} after settling"),
        });
    }

    let kev = env.kernel.events_since(t0);
    let writes = env.keyspace.since(t0);
    dump(ctx, scenario.label(), mode, t0, &kev, &writes)?;
    let lat = analysis::latency(&kev, &writes, ctx.slack.as_nanos() as u64);
    let events = kev.len() as f64;
    let enobufs = env.kernel.enobufs() as f64;
    if let Some(e) = env.kernel.error() {
        env.notes.push(format!("kernel listener stopped: {e}"));
    }
    if let Some(e) = env.keyspace.error() {
        env.notes.push(format!("keyspace subscriber stopped: {e}"));
    }

    let mut m = BTreeMap::new();
    m.insert("kernel_events".into(), events);
    m.insert("kernel_enobufs".into(), enobufs);
    m.insert("rss_bytes".into(), rss as f64);
    m.insert("rss_bytes_per_port".into(), rss as f64 / f64::from(ctx.ports));
    m.insert("state_db_writes".into(), lat.writes as f64);
    m.insert("state_db_deletes".into(), lat.deletes as f64);
    m.insert("cpu_us".into(), cpu.sched_ns as f64 / 1e3);
    m.insert("cpu_us_ticks".into(), cpu.ticks_ns as f64 / 1e3);
    m.insert("cpu_us_per_event".into(), per_event(cpu.sched_ns as f64 / 1e3, events));
    // Where CPU per event is a cost per wake-up, and where latency is the scheduler's.
    m.insert("wakeups_per_event".into(), per_event(sched.voluntary as f64, events));
    m.insert("runq_wait_us".into(), sched.runq_wait_ns as f64 / 1e3);
    m.insert("redis_runq_wait_us".into(), redis_sched.runq_wait_ns as f64 / 1e3);
    if let Some(max) = cpu_each.iter().copied().reduce(f64::max) {
        // The busiest instance: what one core must sustain.
        m.insert("cpu_us_max_instance".into(), max);
        m.insert("cpu_us_per_event_max_instance".into(), per_event(max, events));
    }
    m.insert("redis_commands".into(), info.commands as f64);
    m.insert("redis_commands_per_event".into(), per_event(info.commands as f64, events));
    m.insert("redis_reads".into(), info.reads as f64);
    m.insert("redis_reads_per_event".into(), per_event(info.reads as f64, events));
    let own_rt = counter_delta(stats0.as_ref(), stats1.as_ref(), "redis_round_trips");
    if let Some(rt) = own_rt {
        m.insert("daemon_round_trips".into(), rt);
    }
    for c in ["redis_commands", "batches", "enobufs", "resyncs", "state_writes", "events"] {
        if let Some(v) = counter_delta(stats0.as_ref(), stats1.as_ref(), c) {
            m.insert(format!("daemon_{c}"), v);
        }
    }
    m.insert("round_trips_per_event".into(), per_event(own_rt.unwrap_or(info.reads as f64), events));
    m.insert("latency_matched".into(), lat.matched as f64);
    m.insert("latency_early".into(), lat.early as f64);
    m.insert("unwritten_events".into(), lat.unwritten as f64);
    m.insert("undone_events".into(), lat.undone as f64);
    m.insert("latency_p50_us".into(), lat.p50_us);
    m.insert("latency_p99_us".into(), lat.p99_us);
    m.insert("latency_max_us".into(), lat.max_us);
    m.insert("lag_us".into(), lat.lag_us);
    m.insert("ports_wrong".into(), wrong.len() as f64);
    if let Some(ms) = converged_ms {
        m.insert("converged_late_ms".into(), ms);
    }
    m.insert("batch_ms".into(), (t_batch - t0) as f64 / 1e6);
    let last_k = kev.last().map_or(t_batch, |e| e.t_ns);
    m.insert("storm_ms".into(), (last_k.max(t_batch) - t0) as f64 / 1e6);
    m.insert("settle_ms".into(), (settled - t0) as f64 / 1e6);
    daemon_latency(stats1.as_ref(), &mut m);

    let details = json!({
        "rounds": rounds,
        "batch_lines": st.lines.len(),
        "commands": info.calls,
        "kernel_event_ports": kev.iter().map(|e| e.port.as_str()).collect::<BTreeSet<_>>().len(),
        "daemon_stats": stats1.map(|s| s.0),
        "cpu_us_per_instance": cpu_each,
    });
    let incomplete = enobufs > 0.0 || m.get("daemon_enobufs").is_some_and(|&v| v > 0.0);
    let notes = std::mem::take(&mut env.notes);
    if let Some(d) = env.dut.as_mut() {
        d.stop();
    }
    Ok(RunRecord::ok(scenario.label(), mode.label(), m, notes, incomplete, details))
}

/// Startup with N existing ports: a first run creates them; then a warm restart (state file from
/// the clean stop of the first run) and a cold restart (APPL_DB already holds the ports). A
/// failure of the set-up fails both records; a failed restart fails only its own.
pub fn run_startup(ctx: &Ctx, mode: &Mode) -> Vec<RunRecord> {
    let mut env = match super::guarded(|| startup_env(ctx, mode)) {
        Ok(env) => env,
        Err(e) => {
            let e = format!("{e:#}");
            return ["startup-warm", "startup-cold"]
                .iter()
                .map(|l| RunRecord::failed(l, mode.label(), e.clone()))
                .collect();
        }
    };
    let warm = super::guarded(|| {
        let mut con = env.redis.conn(STATE_DB);
        redis::cmd("HSET").arg("WARM_RESTART_ENABLE_TABLE|swss").arg("enable").arg("true").query::<()>(&mut con)?;
        redis::cmd("HSET").arg("WARM_RESTART_TABLE|portsyncd").arg("restore_count").arg("0").query::<()>(&mut con)?;
        restart(ctx, &mut env, mode, "startup-warm")
    })
    .unwrap_or_else(|e| RunRecord::failed("startup-warm", mode.label(), format!("{e:#}")));
    let idle = if warm.ok {
        super::guarded(|| idle(ctx, &mut env, mode))
            .unwrap_or_else(|e| RunRecord::failed("idle", mode.label(), format!("{e:#}")))
    } else {
        RunRecord::failed("idle", mode.label(), "no warm restart to measure after".into())
    };
    let cold = super::guarded(|| {
        if let Some(d) = env.dut.as_mut() {
            d.stop();
        }
        let mut con = env.redis.conn(STATE_DB);
        redis::cmd("DEL").arg("WARM_RESTART_ENABLE_TABLE|swss").query::<()>(&mut con)?;
        restart(ctx, &mut env, mode, "startup-cold")
    })
    .unwrap_or_else(|e| RunRecord::failed("startup-cold", mode.label(), format!("{e:#}")));
    if let Some(d) = env.dut.as_mut() {
        d.stop();
    }
    vec![warm, idle, cold]
}

/// Lets the warm-restarted daemon finish its after-work (eBPF attach, state save, backup sweep),
/// then measures it over `ctx.idle` with nothing happening.
fn idle(ctx: &Ctx, env: &mut Env, mode: &Mode) -> anyhow::Result<RunRecord> {
    wait_interruptible(env, IDLE_AFTER_WORK)?;
    let t0 = now_ns();
    let (cpu0, cs0) = (env.dut()?.cpu()?, env.dut()?.sched());
    let start = Instant::now();
    wait_interruptible(env, ctx.idle)?;
    let (cpu1, cs1) = (env.dut()?.cpu()?, env.dut()?.sched());
    let Sched { voluntary, involuntary, .. } = cs1.since(&cs0);
    let secs = start.elapsed().as_secs_f64();
    let kev = env.kernel.events_since(t0);
    let writes = env.keyspace.since(t0).into_iter().filter(|w| w.state_port().is_some()).count();
    let mut notes = std::mem::take(&mut env.notes);
    if !kev.is_empty() || writes > 0 {
        notes.push(format!("not idle: {} kernel events, {writes} STATE_DB writes in the window", kev.len()));
    }
    let mut m = BTreeMap::new();
    m.insert("idle_cpu_ms_per_min".into(), cpu1.since(cpu0).sched_ns as f64 / 1e6 * 60.0 / secs);
    m.insert("idle_wakeups_per_s".into(), voluntary as f64 / secs);
    m.insert("idle_preemptions_per_s".into(), involuntary as f64 / secs);
    m.insert("idle_secs".into(), secs);
    Ok(RunRecord::ok("idle", mode.label(), m, notes, false, Value::Null))
}

/// The warm-restarted daemon's work after PortInitDone (eBPF attach, state save, backup sweep)
/// is over well within this, and so is the stats write that reports it (our idle tick is 5 s).
const IDLE_AFTER_WORK: Duration = Duration::from_secs(8);

/// Sleeps `d` in short steps, failing at once if the daemon exits or the user interrupts.
fn wait_interruptible(env: &mut Env, d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        env.ensure_alive("idle")?;
        std::thread::sleep(POLL.min(end.saturating_duration_since(Instant::now())));
    }
    Ok(())
}

fn startup_env(ctx: &Ctx, mode: &Mode) -> anyhow::Result<Env> {
    let mut env = Env::new(ctx.ports)?;
    let spawned = env.spawn(mode)?;
    env.wait_ready(mode, spawned)?;
    env.create_ports(ctx.ports)?;
    let always = |_: &BTreeMap<String, LinkState>| true;
    env.wait_settled(now_ns(), ctx.settle, Duration::from_secs(30), &always)?;
    if !env.dut()?.stop() {
        env.notes.push("first run did not exit cleanly on SIGTERM (warm state may be missing)".into());
    }
    Ok(env)
}

fn restart(ctx: &Ctx, env: &mut Env, mode: &Mode, label: &str) -> anyhow::Result<RunRecord> {
    let cold = label.ends_with("cold");
    std::thread::sleep(ctx.restart_pause);
    let t0 = env.spawn(mode)?;
    let start = Instant::now();
    let deadline = init_done_timeout(ctx.ports);
    let init_done = loop {
        env.ensure_alive("waiting for PortInitDone")?;
        if let Some(t) = env.keyspace.first_appl_write(PORT_INIT_DONE, t0) {
            break t;
        }
        if start.elapsed() > deadline {
            bail!("no PortInitDone within {deadline:?} of the {label} spawn");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let always = |_: &BTreeMap<String, LinkState>| true;
    let settled = env.wait_settled(init_done, ctx.settle, Duration::from_secs(60), &always)?;
    let cpu: CpuSample = env.dut()?.cpu()?;
    let stats = env.dut()?.stats();

    let kev = env.kernel.events_since(t0);
    let all_writes = env.keyspace.since(t0);
    dump(ctx, label, mode, t0, &kev, &all_writes)?;
    let writes: Vec<_> = all_writes.into_iter().filter(|w| w.state_port().is_some()).collect();
    let mut m = BTreeMap::new();
    m.insert("port_init_done_ms".into(), (init_done - t0) as f64 / 1e6);
    m.insert("state_db_writes".into(), writes.len() as f64);
    m.insert("cpu_us".into(), cpu.sched_ns as f64 / 1e3);
    m.insert("children_cpu_us".into(), cpu.children_ns as f64 / 1e3);
    m.insert("kernel_events".into(), kev.len() as f64);
    m.insert("settle_ms".into(), (settled - t0) as f64 / 1e6);
    if cold {
        // Old interfaces are set admin-down by the daemon: seen as RTM_NEWLINK without IFF_UP.
        let downs: Vec<_> = kev.iter().filter(|e| e.msg_type == RTM_NEWLINK && e.flags & IFF_UP == 0).collect();
        let ports: BTreeSet<&str> = downs.iter().map(|e| e.port.as_str()).collect();
        m.insert("old_down_ports".into(), ports.len() as f64);
        m.insert("old_down_ms".into(), downs.last().map_or(0.0, |e| (e.t_ns - t0) as f64 / 1e6));
        if let Some(s) = &stats {
            m.insert("daemon_old_interfaces_down".into(), s.counter("old_interfaces_down") as f64);
        }
    } else {
        // Nothing changed in the kernel, so STATE_DB must equal it.
        let wrong = db::state_db_mismatches(&env.ns, &env.redis, &env.names);
        if let Some(w) = wrong.first() {
            env.notes.push(format!("{} ports wrong after warm restart, e.g. {w}", wrong.len()));
        }
        m.insert("ports_wrong".into(), wrong.len() as f64);
        if let Some(w) = stats.as_ref().and_then(Stats::warm_start) {
            m.insert("daemon_warm_start".into(), f64::from(u8::from(w)));
        }
    }
    if let Some(s) = &stats {
        m.insert("daemon_state_writes".into(), s.counter("state_writes") as f64);
        m.insert("daemon_redis_commands".into(), s.counter("redis_commands") as f64);
    }
    let details = json!({ "daemon_stats": stats.map(|s| s.0) });
    let notes = std::mem::take(&mut env.notes);
    Ok(RunRecord::ok(label, mode.label(), m, notes, false, details))
}
