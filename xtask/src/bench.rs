//! `cargo xtask bench`: link-event storms against the release daemon in fresh namespaces in;
//! CPU, Redis commands and round trips per event, event-to-STATE_DB latency, wrong ports and
//! start-up times per capture mode (and an external daemon) out, as a table and JSON.
//!
//! How each figure is measured (all times CLOCK_MONOTONIC):
//! - Kernel events: a thread of the bench enters the run's namespace (`setns(CLONE_NEWNET)`) and
//!   reads its own RTNLGRP_LINK socket (64 MiB SO_RCVBUFFORCE), recording every `Ethernet*`
//!   RTM_NEWLINK/RTM_DELLINK with its receive time. Its ENOBUFS count is reported; a run with any
//!   overrun (the bench's or the daemon's) is marked incomplete. Netlink carries no kernel
//!   timestamp (SO_TIMESTAMPNS gives no cmsg on netlink sockets), so the receive time stands in.
//! - STATE_DB writes: keyspace notifications (`Khg`) of `PORT_TABLE|*` in db 6 on a raw RESP
//!   connection of its own, timestamped per read(2).
//! - Both witness threads run SCHED_FIFO (`chrt`), pinned to the last CPU, with the storm's `ip`
//!   kept off that CPU (`taskset`), and only timestamp and copy on the receive path (decoding
//!   happens elsewhere). The kernel is PREEMPT_NONE: a woken thread waits for the task on its CPU
//!   to leave the kernel, and `ip` tearing veths down stays there up to ~1 ms at a time. Without
//!   these measures the witnesses' receive times trailed the daemon's own writes by up to 1.3 ms;
//!   with them, by at most ~50 us.
//! - Event-to-STATE_DB latency of a kernel event: time to the first write of its port at or after
//!   it. A daemon that is already running may see an event before the bench's thread wakes up,
//!   so a write up to `--witness-slack-us` (250) before the bench saw the event still belongs to
//!   it (latency 0, counted in `latency_early`); figures are accurate to about that. Events with no
//!   later write (coalesced into a state already written, or changing nothing portsyncd
//!   publishes) are `unwritten_events`. `lag_us` is the last write minus the last kernel event.
//! - CPU: per-thread `/proc/<pid>/task/*/schedstat` run time (ns) of the daemon before and after
//!   the storm (an external daemon: every process of its process group); `cpu_us_ticks` is the
//!   `/proc/<pid>/stat` utime+stime cross-check, at the 10 ms resolution of clock ticks, which is
//!   too coarse for a storm that costs a few milliseconds. CPU per event = delta / kernel events.
//! - Wake-ups and run-queue wait: per thread, `voluntary_ctxt_switches` (each a sleep, so a
//!   later wake-up) and `schedstat`'s run-queue wait (time runnable but not running) before and
//!   after the storm, of the daemon and of redis-server. `wakeups_per_event` shows how much of
//!   CPU per event is a cost per wake-up; `runq_wait_us` and `redis_runq_wait_us` show how much
//!   of the latency is the scheduler's, which no daemon can win back.
//! - Redis commands: `INFO stats commandstats` before and after, on a server nobody else uses
//!   meanwhile: the orchagent stand-in is stopped once the ports exist (its APPL_DB work is done),
//!   the keyspace subscription was made before the first snapshot (pushes are not commands), the
//!   settle wait issues no command, and the bench's own INFO is removed by name.
//!   `redis_reads` is the server's `total_reads_processed` delta (minus the second INFO): at least
//!   one per synchronous round trip, so it bounds an external daemon's round trips from outside.
//!   `round_trips_per_event` is our daemon's own `counters.redis_round_trips` delta per event, or
//!   `redis_reads` per event for an external daemon.
//! - Settled: every port in its final kernel state (sysfs), and no kernel event and no STATE_DB
//!   write for `--settle-ms`. Then `ports_wrong` compares STATE_DB with the kernel for every port.
//! - Each run is a fresh redis-server, namespace and daemon: the daemon starts first, then the N
//!   veth pairs are created and brought up (ports created before a cold start would be "old" and
//!   ignored), STATE_DB must match, then the storm is one `ip -batch`. Modes alternate within each
//!   rep so that noise hits them alike; tables show medians over reps.
//! - startup: a first run creates the ports and stops cleanly (state file written); then a warm
//!   restart (`WARM_RESTART_ENABLE_TABLE|swss enable=true`) and a cold restart (APPL_DB holds the
//!   ports with `admin_status`, so the port set is pruned empty and every existing `Ethernet*` is
//!   set admin-down). Time to PortInitDone = spawn to the daemon's write of APPL_DB
//!   `_PORT_TABLE:PortInitDone`; `old_down_ms` = spawn to the last admin-down notification;
//!   `state_db_writes` on warm restart must be 0. The daemon's own latency summary
//!   (`daemon_latency_*`) covers its whole life, port set-up included. `--restart-pause-ms`
//!   waits between the stop and each restart (default 0: at once).
//! - idle: after the warm restart, once its own after-work is done (8 s), the daemon's CPU and
//!   context switches (its wake-ups: voluntary ones are sleeps it woke from) over `--idle-secs`
//!   with nothing happening, as CPU ms per minute and switches per second. A switch daemon is
//!   idle nearly all its life.

mod analysis;
mod dut;
mod kernel;
mod keyspace;
mod pipeline;
mod procstat;
mod redis_info;
mod report;
mod scenario;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use portsyncd_e2e::Capture;
use serde_json::json;

use dut::Mode;
use report::RunRecord;
use scenario::{Ctx, Scenario};

/// What `cargo xtask bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Link-event storms and restarts against the daemon in a namespace (the default).
    Storm,
    /// The kernel-free userspace pipeline benchmark (`portsyncd/examples/pipeline_bench.rs`).
    Pipeline,
}

/// A capture mode of our daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// `--capture ebpf`.
    Ebpf,
    /// `--capture netlink`.
    Netlink,
}

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// `storm` (default) or `pipeline`.
    #[arg(value_enum)]
    pub target: Option<Target>,
    /// Ports (veth pairs `Ethernet<i>`/`pe<i>`); 512 by default, 64 with `--quick`.
    #[arg(long)]
    pub ports: Option<u32>,
    /// Rounds of flap / mtu / churn in one `ip -batch`.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Scenarios, comma-separated (`all` = flap, mtu, churn, startup; `flap-long` = 50 rounds).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub scenario: Vec<Scenario>,
    /// Capture modes of our daemon, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ebpf,netlink")]
    pub modes: Vec<ModeArg>,
    /// Repetitions (medians are reported); 3 by default, 1 with `--quick`.
    #[arg(long)]
    pub reps: Option<u32>,
    /// An external daemon run side by side, via `ip netns exec <ns> sh -c '<cmd>'` with
    /// PORTSYNCD_DATABASE_CONFIG set; `{db_config}`, `{redis_url}`, `{redis_sock}`, `{work_dir}`
    /// (kept across restarts) and `{ns}` are substituted.
    #[arg(long)]
    pub compare_cmd: Option<String>,
    /// Also run every capture mode as this many instances sharing the ports (`--instances N
    /// --partition even`), labelled `<mode>-x<N>`; the storm scenarios only.
    #[arg(long)]
    pub instances: Option<u16>,
    /// Label of the external daemon.
    #[arg(long, default_value = "compare")]
    pub compare_name: String,
    /// Write every figure (per run and medians) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Smoke run: 1 rep, 64 ports (unless given).
    #[arg(long)]
    pub quick: bool,
    /// Quiet time (no kernel event, no STATE_DB write) after which a run counts as settled.
    #[arg(long, default_value_t = 300)]
    pub settle_ms: u64,
    /// How long the startup scenario measures the daemon idle after its warm restart.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// How long the startup scenario waits between stopping a daemon and restarting it. 0 (the
    /// default) restarts at once, so the kernel may still be freeing what the stopped daemon
    /// held (its eBPF ring and program) while the new one starts; a switch restarts a daemon
    /// seconds after it stopped.
    #[arg(long, default_value_t = 0)]
    pub restart_pause_ms: u64,
    /// A STATE_DB write up to this long before the bench received a kernel event still belongs
    /// to it (latency 0): the bench's own wake-up delay, which a busy daemon does not pay.
    #[arg(long, default_value_t = 250)]
    pub witness_slack_us: u64,
    /// Write each run's raw kernel-event and STATE_DB-write timelines (TSV) into this directory.
    #[arg(long)]
    pub dump_dir: Option<PathBuf>,
    /// Use the existing release binary (or $PORTSYNCD_BIN) instead of building it.
    #[arg(long)]
    pub no_build: bool,
    /// Arguments passed to `pipeline_bench` (after `--`).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the daemon's own event timestamps.
pub(crate) fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Set on SIGINT/SIGTERM once the storms start; every wait loop checks it (see
/// [`xtask::Interrupt`]).
static INTERRUPT: OnceLock<xtask::Interrupt> = OnceLock::new();

/// An error once the user interrupted the benchmark.
pub(crate) fn check_interrupt() -> anyhow::Result<()> {
    INTERRUPT.get().map_or(Ok(()), xtask::Interrupt::check)
}

/// SCHED_FIFO priority of the witness threads.
const WITNESS_RT_PRIORITY: &str = "20";

/// Puts a witness thread on SCHED_FIFO (`chrt -f -p`), so that it runs the moment its message
/// arrives instead of queueing behind the daemon, redis-server and `ip` on a 2-core machine:
/// with plain CFS its receive times trailed the daemon's own writes by milliseconds. Returns
/// whether it worked; without it the latency figures are rougher, not wrong in kind.
pub(crate) fn realtime(tid: i32) -> bool {
    std::process::Command::new("chrt")
        .args(["-f", "-p", WITNESS_RT_PRIORITY, &tid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The CPU the witness threads are pinned to (the last one), and the CPU list the storm's `ip`
/// runs on (all others), on machines with at least 2 CPUs.
///
/// The kernel here is PREEMPT_NONE: a woken SCHED_FIFO thread waits until the task on its CPU
/// leaves the kernel, and `ip` tearing a veth down stays in the kernel for up to ~1 ms at a time.
/// Keeping `ip` off the witnesses' CPU keeps them from waiting behind it.
pub(crate) fn witness_cpu() -> Option<(usize, String)> {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (n >= 2).then(|| (n - 1, if n == 2 { "0".to_owned() } else { format!("0-{}", n - 2) }))
}

/// Pins the calling thread to the witness CPU; returns whether it worked.
pub(crate) fn pin_witness() -> bool {
    let Some((cpu, _)) = witness_cpu() else { return false };
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).is_ok() && nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_ok()
}

/// Runs the benchmark.
pub fn run(opts: Options) -> anyhow::Result<()> {
    match opts.target {
        Some(Target::Pipeline) => pipeline::run(&opts),
        Some(Target::Storm) | None => storm(opts),
    }
}

fn scenarios(opts: &Options) -> Vec<Scenario> {
    let mut out = Vec::new();
    for s in &opts.scenario {
        let add: &[Scenario] = match s {
            Scenario::All => &[Scenario::Flap, Scenario::Mtu, Scenario::Churn, Scenario::Startup],
            one => std::slice::from_ref(one),
        };
        for a in add {
            if !out.contains(a) {
                out.push(*a);
            }
        }
    }
    out
}

fn modes(opts: &Options) -> Vec<Mode> {
    let mut out: Vec<Mode> = Vec::new();
    for m in &opts.modes {
        let mode = Mode::Ours(match m {
            ModeArg::Ebpf => Capture::Ebpf,
            ModeArg::Netlink => Capture::Netlink,
        });
        if !out.contains(&mode) {
            out.push(mode);
        }
    }
    if let Some(count) = opts.instances.filter(|n| *n > 1) {
        for m in &opts.modes {
            let capture = match m {
                ModeArg::Ebpf => Capture::Ebpf,
                ModeArg::Netlink => Capture::Netlink,
            };
            out.push(Mode::Instances { capture, count, name: format!("{}-x{count}", capture.as_str()) });
        }
    }
    if let Some(cmd) = &opts.compare_cmd {
        out.push(Mode::External { name: opts.compare_name.clone(), cmd: cmd.clone() });
    }
    out
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".into())
}

/// The e2e harness reports failures by panicking; a failed mode must not end the benchmark.
pub(crate) fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => bail!("{}", panic_text(p.as_ref())),
    }
}

fn prepare_binary(opts: &Options) -> anyhow::Result<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the storm benchmark needs root (network namespaces, veth ports, eBPF)");
    }
    xtask::ensure_deps()?;
    if let Some(bin) = std::env::var_os("PORTSYNCD_BIN") {
        return Ok(PathBuf::from(bin));
    }
    if !opts.no_build {
        xtask::run(xtask::cargo().args(["build", "--release", "-p", "portsyncd"]))?;
    }
    let bin = xtask::workspace_root().join("target/release/portsyncd");
    if !bin.is_file() {
        bail!("{} missing: cargo build --release -p portsyncd", bin.display());
    }
    // The harness reads the binary path from here; set before any thread exists.
    std::env::set_var("PORTSYNCD_BIN", &bin);
    Ok(bin)
}

fn host_info() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    let redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "redis": redis,
    })
}

fn storm(opts: Options) -> anyhow::Result<()> {
    let bin = prepare_binary(&opts)?;
    if INTERRUPT.set(xtask::Interrupt::install("bench")?).is_err() {
        bail!("bench: signal handlers installed twice");
    }
    let mut ctx = Ctx {
        dump_dir: opts.dump_dir.clone(),
        slack: Duration::from_micros(opts.witness_slack_us),
        rep: 0,
        ports: opts.ports.unwrap_or(if opts.quick { 64 } else { 512 }),
        rounds: opts.rounds.max(1),
        settle: Duration::from_millis(opts.settle_ms),
        idle: Duration::from_secs(opts.idle_secs.max(1)),
        restart_pause: Duration::from_millis(opts.restart_pause_ms),
    };
    let reps = opts.reps.unwrap_or(if opts.quick { 1 } else { 3 }).max(1);
    let scenarios = scenarios(&opts);
    let modes = modes(&opts);
    if modes.is_empty() {
        bail!("no modes to run");
    }
    eprintln!(
        "bench: {} ports, {} round(s), {} rep(s), scenarios {:?}, modes {:?}, daemon {}",
        ctx.ports,
        ctx.rounds,
        reps,
        scenarios.iter().map(|s| s.label()).collect::<Vec<_>>(),
        modes.iter().map(Mode::label).collect::<Vec<_>>(),
        bin.display()
    );

    let started = Instant::now();
    let mut runs: Vec<RunRecord> = Vec::new();
    'reps: for rep in 1..=reps {
        ctx.rep = rep;
        for &sc in &scenarios {
            for mode in &modes {
                if check_interrupt().is_err() {
                    break 'reps;
                }
                let t = Instant::now();
                // Start-up of several instances is not measured: PortInitDone waits for all of them.
                if sc == Scenario::Startup && matches!(mode, Mode::Instances { .. }) {
                    continue;
                }
                let mut recs = if sc == Scenario::Startup {
                    scenario::run_startup(&ctx, mode)
                } else {
                    vec![guarded(|| scenario::run_storm(&ctx, sc, mode))
                        .unwrap_or_else(|e| RunRecord::failed(sc.label(), mode.label(), format!("{e:#}")))]
                };
                for r in &mut recs {
                    r.rep = rep;
                    eprintln!("bench: {} ({:.1} s)", r.progress_line(), t.elapsed().as_secs_f64());
                    for n in &r.notes {
                        eprintln!("bench:   note: {n}");
                    }
                }
                runs.extend(recs);
            }
        }
    }

    let summary = report::summarize(&runs);
    let long = if scenarios.contains(&Scenario::FlapLong) {
        format!(" (flap-long: {})", scenario::LONG_ROUNDS)
    } else {
        String::new()
    };
    let header = format!(
        "portsyncd storm benchmark: {} ports, {} round(s){long}, medians of {} rep(s), {:.0} s total",
        ctx.ports,
        ctx.rounds,
        reps,
        started.elapsed().as_secs_f64()
    );
    println!("{}", report::table(&summary, &header));
    if let Some(path) = &opts.json {
        let config = json!({
            "ports": ctx.ports,
            "rounds": ctx.rounds,
            "long_rounds": scenario::LONG_ROUNDS,
            "reps": reps,
            "scenarios": scenarios,
            "modes": modes.iter().map(Mode::label).collect::<Vec<_>>(),
            "compare_cmd": opts.compare_cmd,
            "settle_ms": opts.settle_ms,
            "idle_secs": opts.idle_secs,
            "restart_pause_ms": opts.restart_pause_ms,
            "daemon": bin,
        });
        let doc = report::json_doc(config, host_info(), &runs, &summary);
        let text = serde_json::to_string_pretty(&doc).context("serialize results")?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    check_interrupt()?;
    if runs.iter().all(|r| !r.ok) {
        bail!("every run failed");
    }
    Ok(())
}
