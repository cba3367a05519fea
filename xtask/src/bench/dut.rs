//! The daemon under test: our portsyncd (harness [`Daemon`] guard), several instances of it
//! sharing the ports (`--instances`), or an external command line run in the namespace in its
//! own process group; CPU, liveness, stats and log out.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use portsyncd_e2e::netns::ip_bin;
use portsyncd_e2e::{Capture, Daemon, DaemonOpts, NetNs, RedisServer, Stats};
use std::os::unix::process::CommandExt;

use super::procstat::{cpu_of, pids_in_group, rss_of, sched_of, CpuSample, SchedSample};

/// What runs in one mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Our portsyncd with `--capture <c>`.
    Ours(Capture),
    /// `count` instances of ours with `--capture <capture> --partition even`.
    Instances {
        /// Capture mode of every instance.
        capture: Capture,
        /// How many.
        count: u16,
        /// Column label (`ebpf-x4`).
        name: String,
    },
    /// An external daemon: a label and a `sh -c` command line.
    External {
        /// Column label.
        name: String,
        /// Command line; `{db_config}`, `{redis_url}`, `{redis_sock}`, `{work_dir}`, `{ns}` are
        /// substituted.
        cmd: String,
    },
}

impl Mode {
    /// Label in tables and JSON.
    pub fn label(&self) -> &str {
        match self {
            Mode::Ours(c) => c.as_str(),
            Mode::Instances { name, .. } | Mode::External { name, .. } => name,
        }
    }
}

/// A running daemon under test.
#[derive(Debug)]
pub enum Dut {
    /// Ours.
    Ours(Daemon),
    /// Several of ours, instance 0 first.
    Cluster(Vec<Daemon>),
    /// External.
    External(External),
}

impl Dut {
    /// Starts `mode` in `ns` against `redis`; `work_dir` keeps the state file across restarts.
    pub fn start(mode: &Mode, ns: &NetNs, redis: &RedisServer, work_dir: &Path) -> anyhow::Result<Dut> {
        match mode {
            Mode::Ours(c) => Ok(Dut::Ours(Daemon::start(ns, redis, DaemonOpts::new(*c).work_dir(work_dir)))),
            Mode::Instances { capture, count, .. } => Ok(Dut::Cluster(
                (0..*count)
                    .map(|id| {
                        let opts = DaemonOpts::new(*capture)
                            .work_dir(work_dir.join(format!("instance{id}")))
                            .args(["--instances", &count.to_string(), "--instance-id", &id.to_string()])
                            .args(["--partition", "even"]);
                        Daemon::start(ns, redis, opts)
                    })
                    .collect(),
            )),
            Mode::External { cmd, .. } => Ok(Dut::External(External::start(cmd, ns, redis, work_dir)?)),
        }
    }

    /// The daemon's processes: ours, every instance of a cluster, or every process of an
    /// external daemon's process group.
    fn pids(&self) -> Vec<i32> {
        match self {
            Dut::Ours(d) => vec![d.pid() as i32],
            Dut::Cluster(v) => v.iter().map(|d| d.pid() as i32).collect(),
            Dut::External(e) => pids_in_group(e.pgid),
        }
    }

    /// CPU used so far by the daemon (all threads of all its processes).
    pub fn cpu(&self) -> anyhow::Result<CpuSample> {
        cpu_of(&self.pids())
    }

    /// Context switches and run-queue wait of the daemon's threads so far.
    pub fn sched(&self) -> SchedSample {
        sched_of(&self.pids())
    }

    /// CPU used so far by each instance of a cluster (empty otherwise).
    pub fn cpu_per_instance(&self) -> anyhow::Result<Vec<CpuSample>> {
        match self {
            Dut::Cluster(v) => v.iter().map(|d| cpu_of(&[d.pid() as i32])).collect(),
            _ => Ok(Vec::new()),
        }
    }

    /// Resident memory of the daemon (all its processes).
    pub fn rss_bytes(&self) -> u64 {
        rss_of(&self.pids())
    }

    /// Our stats file (external daemons have none). A cluster's: instance 0's, with every
    /// `counters` field summed over the instances and `initial_sync_done` only once every
    /// instance's is.
    pub fn stats(&self) -> Option<Stats> {
        match self {
            Dut::Ours(d) => d.stats(),
            Dut::Cluster(v) => {
                let all: Vec<Stats> = v.iter().map(Daemon::stats).collect::<Option<_>>()?;
                let mut merged = all.first()?.0.clone();
                let ready = all.iter().all(Stats::initial_sync_done);
                if let Some(counters) = merged.get_mut("counters").and_then(|c| c.as_object_mut()) {
                    for (k, v) in counters.iter_mut() {
                        let sum: u64 = all.iter().map(|s| s.counter(k)).sum();
                        *v = sum.into();
                    }
                }
                merged["initial_sync_done"] = ready.into();
                Some(Stats(merged))
            }
            Dut::External(_) => None,
        }
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        match self {
            Dut::Ours(d) => d.is_running(),
            Dut::Cluster(v) => v.iter_mut().all(Daemon::is_running),
            Dut::External(e) => e.is_running(),
        }
    }

    /// How it ended, if it did.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        match self {
            Dut::Ours(d) => d.exit_status(),
            Dut::Cluster(v) => v.iter_mut().find_map(Daemon::exit_status),
            Dut::External(e) => e.child.try_wait().ok().flatten(),
        }
    }

    /// Where its log is.
    pub fn log_path(&self) -> PathBuf {
        match self {
            Dut::Ours(d) => d.work_dir().to_path_buf(),
            Dut::Cluster(v) => v.first().map(|d| d.work_dir().to_path_buf()).unwrap_or_default(),
            Dut::External(e) => e.log.clone(),
        }
    }

    /// Last lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        match self {
            Dut::Ours(d) => d.log_tail(n),
            Dut::Cluster(v) => v.iter().map(|d| d.log_tail(n)).collect::<Vec<_>>().join("\n--- next instance ---\n"),
            Dut::External(e) => {
                let log = std::fs::read_to_string(&e.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(n)..].join("\n")
            }
        }
    }

    /// SIGTERM, bounded wait, SIGKILL. Returns whether it exited successfully by itself.
    pub fn stop(&mut self) -> bool {
        match self {
            Dut::Ours(d) => d.stop().success(),
            // Followers first: the leader's stop must not look like a new run to them.
            // Every instance is stopped, whatever the others' outcome.
            Dut::Cluster(v) => {
                v.iter_mut().rev().map(|d| d.stop().success()).collect::<Vec<_>>().into_iter().all(|ok| ok)
            }
            Dut::External(e) => e.stop(),
        }
    }
}

/// An external daemon started with `ip netns exec <ns> sh -c '<cmd>'` in a new process group,
/// which is signalled as a whole on stop.
#[derive(Debug)]
pub struct External {
    child: Child,
    pgid: i32,
    log: PathBuf,
    exited: bool,
}

/// Substitutes the placeholders of a `--compare-cmd`.
pub fn expand(cmd: &str, ns: &NetNs, redis: &RedisServer, work_dir: &Path) -> String {
    cmd.replace("{db_config}", &redis.database_config_path().display().to_string())
        .replace("{redis_url}", &redis.url())
        .replace("{redis_sock}", &redis.socket_path().display().to_string())
        .replace("{work_dir}", &work_dir.display().to_string())
        .replace("{ns}", ns.name())
}

impl External {
    fn start(cmd: &str, ns: &NetNs, redis: &RedisServer, work_dir: &Path) -> anyhow::Result<External> {
        std::fs::create_dir_all(work_dir).with_context(|| format!("create {}", work_dir.display()))?;
        let line = expand(cmd, ns, redis, work_dir);
        let log = work_dir.join(format!("external-{}.log", super::now_ns()));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone().context("dup log fd")?;
        let child = Command::new(ip_bin())
            .args(["netns", "exec", ns.name(), "sh", "-c", &line])
            .env("PORTSYNCD_DATABASE_CONFIG", redis.database_config_path())
            .current_dir(work_dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("spawn ip netns exec {} sh -c {line:?}", ns.name()))?;
        let pgid = child.id() as i32;
        Ok(External { child, pgid, log, exited: false })
    }

    fn is_running(&mut self) -> bool {
        if !self.exited {
            self.exited = !matches!(self.child.try_wait(), Ok(None));
        }
        !self.exited
    }

    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.exited = true;
                    return Some(st);
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => return None,
            }
        }
    }

    fn stop(&mut self) -> bool {
        let pg = Pid::from_raw(self.pgid);
        let _ = killpg(pg, Signal::SIGTERM);
        let st = self.wait(Duration::from_secs(5));
        // Whatever the shell forked lives on in the group even after the shell exited; an empty
        // group is left alone so that a recycled pid is never signalled.
        if st.is_none() || !pids_in_group(self.pgid).is_empty() {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        if st.is_none() {
            let _ = self.child.wait();
            self.exited = true;
        }
        st.is_some_and(|s| s.success())
    }
}

impl Drop for External {
    fn drop(&mut self) {
        if self.exited && pids_in_group(self.pgid).is_empty() {
            return;
        }
        self.stop();
    }
}
