//! `cargo xtask demo`: a private redis-server, a namespace with veth ports, the orchagent
//! stand-in and the release daemon; flaps the ports and prints STATE_DB, counters and latency,
//! and charts the daemon's histogram log into `target/demo/` (kept, unlike everything else).
//! Needs root. Everything else it creates is removed on exit, on error and on Ctrl-C.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use portsyncd_e2e::db::{seed_config_ports, state_db_mismatches, state_db_port_table, APPL_DB};
use portsyncd_e2e::{Capture, Daemon, DaemonOpts, NetNs, Orchagent, RedisServer, Stats};
use serde_json::Value;
use xtask::Interrupt;

/// Most ports the demo creates (veth pairs are cheap, but the table is printed).
const MAX_PORTS: u32 = 4096;
/// Deadline for STATE_DB to converge after a storm; linkwatch reports ~100 carrier changes/s.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Where the demo leaves what outlives it: the daemon's histogram log and its chart.
const OUTPUT_DIR: &str = "target/demo";
/// Short histogram intervals, so that even a few-second demo logs several of them.
const HISTOGRAM_INTERVAL_SECS: &str = "1";

/// Options of `cargo xtask demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Number of veth ports (Ethernet0..N-1).
    #[arg(long, default_value_t = 32)]
    pub ports: u32,
    /// Capture mode of the daemon.
    #[arg(long, default_value = "auto", value_parser = ["auto", "ebpf", "netlink"])]
    pub capture: String,
    /// Flap rounds (all ports down, then all up, in one `ip -batch` each).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Do not run `cargo build --release -p portsyncd` (use the existing binary).
    #[arg(long)]
    pub no_build: bool,
}

/// Runs the demo.
pub fn run(opts: Options) -> anyhow::Result<()> {
    if opts.ports == 0 || opts.ports > MAX_PORTS {
        bail!("--ports must be in 1..={MAX_PORTS}");
    }
    let capture = match opts.capture.as_str() {
        "ebpf" => Capture::Ebpf,
        "netlink" => Capture::Netlink,
        _ => Capture::Auto,
    };
    check_prerequisites()?;
    let root = xtask::workspace_root();
    if !opts.no_build {
        xtask::run(xtask::cargo().args(["build", "--release", "-p", "portsyncd"]))?;
    }
    let binary = root.join("target/release/portsyncd");
    if !binary.is_file() {
        bail!("{} not found: run without --no-build", binary.display());
    }

    let interrupt = Interrupt::install("demo")?;
    // The harness reports failures by panicking; its guards clean up while unwinding. A panic
    // caused by Ctrl-C (children die with the terminal's SIGINT) is not worth a report.
    let hook_flag = interrupt.clone();
    std::panic::set_hook(Box::new(move |info| {
        // The children see the terminal's SIGINT at the same moment we do; give the signal
        // thread a moment to record it before deciding this is a real failure.
        let deadline = Instant::now() + Duration::from_millis(300);
        while !hook_flag.is_set() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if hook_flag.is_set() {
            portsyncd_e2e::daemon::set_report_on_panic(false);
        } else {
            eprintln!("demo: {info}");
        }
    }));
    let result = catch_unwind(AssertUnwindSafe(|| demo(&opts, capture, &binary, &interrupt)));
    match result {
        Ok(r) => r,
        Err(panic) => {
            interrupt.check()?;
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".into());
            bail!("demo failed: {msg}")
        }
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn check_prerequisites() -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo needs root (network namespaces, veth ports, eBPF): run `sudo -E cargo xtask demo`");
    }
    // redis-server, ip, capsh and the eBPF toolchain (the release build embeds the program).
    xtask::ensure_deps()
}

/// Polls `f` until it returns `Ok`, the deadline passes or the user interrupts.
fn wait<T>(
    interrupt: &Interrupt,
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<T, String>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        interrupt.check()?;
        match f() {
            Ok(v) => return Ok(v),
            Err(last) if start.elapsed() > timeout => {
                bail!("timed out after {:.1} s waiting for {what}; last seen: {last}", start.elapsed().as_secs_f64())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn demo(opts: &Options, capture: Capture, binary: &std::path::Path, interrupt: &Interrupt) -> anyhow::Result<()> {
    let n = opts.ports;
    println!("demo: starting redis-server, {n} CONFIG_DB ports, orchagent stand-in, namespace");
    // Declaration order is the reverse of drop order: the daemon goes first, redis last.
    let redis = RedisServer::start();
    let ports = seed_config_ports(&redis, n);
    let orch = Orchagent::start(&redis);
    let ns = NetNs::new();
    interrupt.check()?;

    let out_dir = xtask::workspace_root().join(OUTPUT_DIR);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let histogram_log = out_dir.join("latency.hlog");
    let chart = out_dir.join("latency.svg");
    // A chart left by an earlier run must not pass for this one's if this run fails to draw.
    for stale in [&histogram_log, &chart] {
        if let Err(e) = std::fs::remove_file(stale) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e).with_context(|| format!("cannot remove {}", stale.display()));
            }
        }
    }

    println!("demo: starting {} --capture {} in namespace {}", binary.display(), capture, ns.name());
    let daemon_opts = DaemonOpts::new(capture).binary(binary).args([
        "--histogram-log".to_owned(),
        histogram_log.display().to_string(),
        "--histogram-interval-secs".to_owned(),
        HISTOGRAM_INTERVAL_SECS.to_owned(),
    ]);
    let mut daemon = Daemon::start(&ns, &redis, daemon_opts);
    let stats = wait(interrupt, Duration::from_secs(20), "initial sync", || {
        if !daemon.is_running() {
            return Err(format!("portsyncd exited:\n{}", daemon.log_tail(30)));
        }
        daemon.stats().filter(Stats::initial_sync_done).ok_or_else(|| "not ready".to_owned())
    })?;
    let mode = stats.capture_mode().unwrap_or("unknown").to_owned();
    match stats.capture_fallback_reason() {
        Some(reason) => println!("demo: capture mode {mode} (fell back: {reason})"),
        None => println!("demo: capture mode {mode}"),
    }

    // Ports appear only now: netdevs present before a cold start are "old" and ignored.
    println!("demo: creating {n} veth ports and bringing them up");
    ns.veths(0..n);
    ns.ports_up(0..n);
    let mut appl = redis.conn(APPL_DB);
    wait(interrupt, CONVERGE_TIMEOUT, "PortInitDone", || {
        let h = portsyncd_e2e::hgetall(&mut appl, "PORT_TABLE:PortInitDone");
        if h.is_empty() {
            Err("absent".into())
        } else {
            Ok(())
        }
    })?;
    converge(interrupt, &ns, &redis, &ports)?;
    let before = daemon.stats();
    println!("demo: PortInitDone; STATE_DB equals the kernel for {n} ports");

    let mtu_ports: Vec<u32> = (0..n).step_by(((n / 4).max(1)) as usize).collect();
    println!(
        "demo: flapping: {} round(s) of all down / all up, then mtu 9000 on {} port(s)",
        opts.rounds,
        mtu_ports.len()
    );
    let started = Instant::now();
    for _ in 0..opts.rounds {
        interrupt.check()?;
        let mut lines: Vec<String> = (0..n).map(|i| format!("link set Ethernet{i} down")).collect();
        lines.extend((0..n).map(|i| format!("link set Ethernet{i} up")));
        ns.batch(&lines);
    }
    let lines: Vec<String> = mtu_ports.iter().map(|i| format!("link set Ethernet{i} mtu 9000")).collect();
    ns.batch(&lines);
    wait(interrupt, CONVERGE_TIMEOUT, "kernel to settle", || {
        let links = ns.links();
        let settled = ports.iter().enumerate().all(|(i, p)| {
            links.get(p).is_some_and(|l| l.admin_up && l.oper_up && (l.mtu == 9000) == mtu_ports.contains(&(i as u32)))
        });
        if settled {
            Ok(())
        } else {
            Err("links still changing".into())
        }
    })?;
    converge(interrupt, &ns, &redis, &ports)?;
    let elapsed = started.elapsed();
    orch.wait_idle(&redis, Duration::from_secs(10));
    let stats = settled_stats(interrupt, &daemon)?;

    print_table(&redis, &ports);
    let mismatches = state_db_mismatches(&ns, &redis, &ports).len();
    let delta = |name: &str| stats.counter(name).saturating_sub(before.as_ref().map(|b| b.counter(name)).unwrap_or(0));
    println!(
        "\nsummary: {n} ports, capture {mode}, flap phase: {} kernel events, {} Redis writes \
         ({} skipped unchanged), {:.2} s elapsed, mismatches = {mismatches}",
        delta("events"),
        delta("state_writes") + delta("state_deletes"),
        delta("skipped_unchanged"),
        elapsed.as_secs_f64(),
    );
    println!(
        "whole run: {} events, {} batches, {} dumps, {} resyncs, {} enobufs, {} redis errors",
        stats.counter("events"),
        stats.counter("batches"),
        stats.counter("dumps"),
        stats.counter("resyncs"),
        stats.counter("enobufs"),
        stats.counter("redis_errors"),
    );
    if let Some(ebpf) = stats.get("/ebpf").filter(|v| !v.is_null()) {
        println!("ebpf: {}", one_line(ebpf));
    }
    print_latency(stats.get("/latency"));

    // The daemon writes its last interval when it stops, so the chart comes after.
    let status = daemon.stop();
    let table = crate::report::render_file(&histogram_log, &chart).context("cannot chart the histogram log")?;
    println!("\nlatency chart (cargo xtask report {}): {}", histogram_log.display(), chart.display());
    print!("{}", table.to_text());
    println!("\ndemo: portsyncd stopped ({status}); removing namespace, redis-server and temp files");
    if mismatches != 0 {
        bail!("{mismatches} port(s) differ between STATE_DB and the kernel");
    }
    Ok(())
}

fn converge(interrupt: &Interrupt, ns: &NetNs, redis: &RedisServer, ports: &[String]) -> anyhow::Result<()> {
    wait(interrupt, CONVERGE_TIMEOUT, "STATE_DB to equal the kernel", || {
        let bad = state_db_mismatches(ns, redis, ports);
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("{} ports differ, e.g. {}", bad.len(), bad[0]))
        }
    })
}

/// The stats file is refreshed at most every ~200 ms; wait until two reads 300 ms apart agree.
fn settled_stats(interrupt: &Interrupt, daemon: &Daemon) -> anyhow::Result<Stats> {
    let mut last: Option<Value> = None;
    wait(interrupt, Duration::from_secs(10), "stats to settle", || {
        std::thread::sleep(Duration::from_millis(300));
        let now = daemon.stats().ok_or("no stats")?;
        let counters = now.get("/counters").cloned();
        if counters.is_some() && counters == last {
            Ok(now)
        } else {
            last = counters;
            Err("counters still moving".into())
        }
    })
}

fn port_number(name: &str) -> u32 {
    name.trim_start_matches("Ethernet").parse().unwrap_or(u32::MAX)
}

fn print_table(redis: &RedisServer, ports: &[String]) {
    let table = state_db_port_table(redis);
    let mut names: Vec<&String> = ports.iter().collect();
    names.sort_by_key(|n| port_number(n));
    let w = names.iter().map(|n| n.len()).max().unwrap_or(4).max(4);
    println!("\nSTATE_DB PORT_TABLE");
    println!("{:<w$}  {:<5}  {:<5}  {:<5}  {:>5}", "port", "state", "admin", "oper", "mtu");
    let empty = BTreeMap::new();
    for n in names {
        let row = table.get(n.as_str()).unwrap_or(&empty);
        let f = |k: &str| row.get(k).map(String::as_str).unwrap_or("-").to_owned();
        println!(
            "{:<w$}  {:<5}  {:<5}  {:<5}  {:>5}",
            n,
            f("state"),
            f("admin_status"),
            f("netdev_oper_status"),
            f("mtu")
        );
    }
}

fn one_line(v: &Value) -> String {
    match v {
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", one_line(v))).collect::<Vec<_>>().join(" "),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints the stats' latency section; its layout belongs to the daemon, so read it generically:
/// one line per histogram, well-known percentile keys first.
fn print_latency(latency: Option<&Value>) {
    let Some(Value::Object(hists)) = latency else {
        println!("latency: not reported");
        return;
    };
    println!("\nlatency (kernel event -> Redis ack, as reported in the stats file)");
    const ORDER: [&str; 10] = ["count", "min", "p50", "p90", "p99", "p99.9", "p999", "max", "mean", "unit"];
    for (name, h) in hists {
        match h {
            Value::Object(fields) => {
                let mut parts: Vec<String> = Vec::new();
                for k in ORDER {
                    if let Some(v) = fields.get(k) {
                        parts.push(format!("{k}={}", one_line(v)));
                    }
                }
                for (k, v) in fields.iter().filter(|(k, _)| !ORDER.contains(&k.as_str())) {
                    parts.push(format!("{k}={}", one_line(v)));
                }
                println!("  {name:<20} {}", parts.join("  "));
            }
            other => println!("  {name:<20} {}", one_line(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_sort_numerically() {
        let mut v = vec!["Ethernet10", "Ethernet2", "Ethernet1"];
        v.sort_by_key(|n| port_number(n));
        assert_eq!(v, ["Ethernet1", "Ethernet2", "Ethernet10"]);
    }

    #[test]
    fn one_line_flattens_objects() {
        let v = serde_json::json!({"p50": 12, "unit": "us"});
        assert_eq!(one_line(&v), "p50=12 unit=us");
    }
}
