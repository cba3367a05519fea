//! The daemon under test: the portsyncd binary started inside a namespace with a private
//! stats/state directory in, its log, exit status and stats JSON out.
//!
//! Over 400 lines because it is the whole life of one child process (the flags of
//! [`DaemonOpts`], start, the readiness and stats waits, each way to stop it, the clean-up in
//! `Drop`), and every e2e test goes through it; the parts only make sense together.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

use crate::netns::{ip_bin, NetNs};
use crate::redis_server::RedisServer;
use crate::Capture;

static LOG_COUNTER: AtomicU32 = AtomicU32::new(0);
static REPORT_ON_PANIC: AtomicBool = AtomicBool::new(true);

/// Whether a [`Daemon`] dropped during a panic prints its log tail (default on). The demo turns
/// it off when the "panic" is the user pressing Ctrl-C.
pub fn set_report_on_panic(on: bool) {
    REPORT_ON_PANIC.store(on, Ordering::Relaxed);
}

/// Lines of the daemon log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// Deadline for `initial_sync_done` after start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The binary under test: `$PORTSYNCD_BIN`, else `<workspace>/target/debug/portsyncd`.
pub fn daemon_binary() -> PathBuf {
    let bin = std::env::var_os("PORTSYNCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target/debug/portsyncd"));
    assert!(bin.is_file(), "portsyncd binary not found at {}: build it: cargo build -p portsyncd", bin.display());
    bin
}

/// How to start the daemon.
#[derive(Debug, Clone)]
pub struct DaemonOpts {
    /// `--capture`.
    pub capture: Capture,
    /// Flags appended after the harness's own.
    pub extra_args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Replaces `--redis unix://<sock>` (e.g. `--database-config <path>`).
    pub redis_args: Option<Vec<String>>,
    /// Directory for stats, state file and log; a fresh temporary one when `None`. Pass the same
    /// directory to a second daemon to keep its warm-restart state file.
    pub work_dir: Option<PathBuf>,
    /// The binary; [`daemon_binary`] when `None`.
    pub binary: Option<PathBuf>,
    /// Run on the host, not under `ip netns exec` (host mode: the daemon enters a namespace
    /// itself with `--namespace`).
    pub on_host: bool,
}

impl DaemonOpts {
    /// Defaults for `capture`.
    pub fn new(capture: Capture) -> Self {
        DaemonOpts {
            capture,
            extra_args: Vec::new(),
            env: Vec::new(),
            redis_args: None,
            work_dir: None,
            binary: None,
            on_host: false,
        }
    }

    /// Runs the binary on the host instead of in the test's namespace.
    pub fn on_host(mut self) -> Self {
        self.on_host = true;
        self
    }

    /// Runs `path` instead of the default binary.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Appends flags.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Uses `dir` for stats/state/log.
    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Replaces the Redis flags.
    pub fn redis_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.redis_args = Some(args.into_iter().map(Into::into).collect());
        self
    }
}

#[derive(Debug)]
enum WorkDir {
    Owned(TempDir),
    Given(PathBuf),
}

impl WorkDir {
    fn path(&self) -> &Path {
        match self {
            WorkDir::Owned(t) => t.path(),
            WorkDir::Given(p) => p,
        }
    }
}

/// A parsed stats snapshot; fields are read defensively so that additions do not break tests.
#[derive(Debug, Clone)]
pub struct Stats(pub Value);

impl Stats {
    /// Any field by JSON pointer (`/counters/events`).
    pub fn get(&self, pointer: &str) -> Option<&Value> {
        self.0.pointer(pointer)
    }

    /// `capture_mode`.
    pub fn capture_mode(&self) -> Option<&str> {
        self.0.get("capture_mode").and_then(Value::as_str)
    }

    /// `capture_fallback_reason`.
    pub fn capture_fallback_reason(&self) -> Option<&str> {
        self.0.get("capture_fallback_reason").and_then(Value::as_str)
    }

    /// `initial_sync_done`.
    pub fn initial_sync_done(&self) -> bool {
        self.0.get("initial_sync_done").and_then(Value::as_bool).unwrap_or(false)
    }

    /// `port_init_done`.
    pub fn port_init_done(&self) -> bool {
        self.0.get("port_init_done").and_then(Value::as_bool).unwrap_or(false)
    }

    /// `warm_start`.
    pub fn warm_start(&self) -> Option<bool> {
        self.0.get("warm_start").and_then(Value::as_bool)
    }

    /// `eoiu`.
    pub fn eoiu(&self) -> Option<&str> {
        self.0.get("eoiu").and_then(Value::as_str)
    }

    /// `counters.<name>` (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.0.get("counters").and_then(|c| c.get(name)).and_then(Value::as_u64).unwrap_or(0)
    }

    /// `ebpf.<name>` (`None` when there is no eBPF section).
    pub fn ebpf_counter(&self, name: &str) -> Option<u64> {
        self.0.get("ebpf").and_then(|e| e.get(name)).and_then(Value::as_u64)
    }
}

/// Output of a daemon run that is expected to end by itself.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit status, `None` if it had to be killed at the deadline.
    pub status: Option<ExitStatus>,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

/// A running portsyncd, stopped (SIGTERM, then SIGKILL after 3 s) on drop. If the test is
/// panicking, the tail of its log is printed.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    exit: Option<ExitStatus>,
    log: PathBuf,
    stats: PathBuf,
    state_file: PathBuf,
    // Last, so the directory outlives the process.
    work: WorkDir,
}

/// `bin args...` in `ns` (`ip netns exec`, which execs the binary in place, so the child's pid
/// is the daemon's), or on the host when `ns` is `None`; with the environment cleaned.
fn command(ns: Option<&NetNs>, bin: &Path, args: &[impl AsRef<std::ffi::OsStr>]) -> Command {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new(ip_bin());
            c.args(["netns", "exec", ns.name()]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args);
    clean_env(&mut cmd);
    cmd
}

fn clean_env(cmd: &mut Command) {
    // The test runner's own PORTSYNCD_* (e.g. PORTSYNCD_BIN) must not configure the daemon, nor
    // its systemd socket or multi-ASIC labels (tests that want them set them per daemon).
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PORTSYNCD_") {
            cmd.env_remove(&k);
        }
    }
    for k in ["NOTIFY_SOCKET", "NAMESPACE_ID", "NAMESPACE_PREFIX"] {
        cmd.env_remove(k);
    }
    cmd.env("RUST_LOG", "info");
    // Plain log files (tracing-subscriber honours NO_COLOR).
    cmd.env("NO_COLOR", "1");
}

impl Daemon {
    /// Starts portsyncd in `ns` (on the host with [`DaemonOpts::on_host`]) against `redis` (it is
    /// not waited for; see [`Daemon::wait_ready`]).
    pub fn start(ns: &NetNs, redis: &RedisServer, opts: DaemonOpts) -> Self {
        let bin = match &opts.binary {
            Some(b) => {
                assert!(b.is_file(), "portsyncd binary not found at {}", b.display());
                b.clone()
            }
            None => daemon_binary(),
        };
        let work = match &opts.work_dir {
            Some(d) => {
                fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
                WorkDir::Given(d.clone())
            }
            None => WorkDir::Owned(
                tempfile::Builder::new().prefix("psd-daemon-").tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
            ),
        };
        let dir = work.path().to_path_buf();
        let stats = dir.join("stats.json");
        let state_file = dir.join("state").join("port_state.json");
        let log = dir.join(format!("portsyncd-{}.log", LOG_COUNTER.fetch_add(1, Ordering::Relaxed)));
        // A stale stats file from a previous daemon in the same directory must not look "ready".
        let _ = fs::remove_file(&stats);

        let mut args: Vec<String> = opts.redis_args.clone().unwrap_or_else(|| vec!["--redis".into(), redis.url()]);
        args.extend([
            "--stats-file".into(),
            stats.display().to_string(),
            "--state-file".into(),
            state_file.display().to_string(),
            "--capture".into(),
            opts.capture.as_str().into(),
        ]);
        args.extend(opts.extra_args.iter().cloned());

        let logf = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let logf2 = logf.try_clone().unwrap_or_else(|e| panic!("dup log fd: {e}"));
        let mut cmd = command((!opts.on_host).then_some(ns), &bin, &args);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(logf))
            .stderr(Stdio::from(logf2))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Daemon { child, exit: None, log, stats, state_file, work }
    }

    /// Runs the binary in `ns` with exactly `args` (no harness flags) until it exits or `timeout`
    /// passes (then it is killed and `status` is `None`); stdout and stderr are kept apart.
    pub fn run_once(ns: &NetNs, args: &[&str], timeout: Duration) -> RunOutput {
        Self::run_to_exit(Some(ns), args, timeout)
    }

    /// [`Daemon::run_once`] on the host, outside any namespace.
    pub fn run_once_on_host(args: &[&str], timeout: Duration) -> RunOutput {
        Self::run_to_exit(None, args, timeout)
    }

    fn run_to_exit(ns: Option<&NetNs>, args: &[&str], timeout: Duration) -> RunOutput {
        let bin = daemon_binary();
        let dir = tempfile::Builder::new().prefix("psd-run-").tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let out_path = dir.path().join("stdout");
        let err_path = dir.path().join("stderr");
        let out = File::create(&out_path).unwrap_or_else(|e| panic!("create stdout file: {e}"));
        let err = File::create(&err_path).unwrap_or_else(|e| panic!("create stderr file: {e}"));
        let mut child = command(ns, &bin, args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let status = wait_child(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        RunOutput {
            status,
            stdout: fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stats file.
    pub fn stats_path(&self) -> &Path {
        &self.stats
    }

    /// The warm-restart state file.
    pub fn state_file(&self) -> &Path {
        &self.state_file
    }

    /// The directory holding stats, state file and log.
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `portsyncd: error:` and ERROR/WARN log lines (each cut to 400 characters): the verifier
    /// log of a failed eBPF load would otherwise bury them in a plain log tail.
    pub fn error_lines(&self) -> String {
        self.log()
            .lines()
            .filter(|l| l.starts_with("portsyncd: error:") || l.contains(" ERROR ") || l.contains(" WARN "))
            .map(|l| l.chars().take(400).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The current stats snapshot, if one was written.
    pub fn stats(&self) -> Option<Stats> {
        let text = fs::read_to_string(&self.stats).ok()?;
        serde_json::from_str(&text).ok().map(Stats)
    }

    /// Whether the process is still running (reaps it if not).
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.exit = Some(st);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Exit status if it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.exit
    }

    /// Polls the stats file until `pred` holds; panics (with the log tail) on timeout or if the
    /// daemon exits first.
    pub fn wait_stats(&mut self, timeout: Duration, what: &str, pred: impl Fn(&Stats) -> bool) -> Stats {
        let start = Instant::now();
        loop {
            let stats = self.stats();
            if let Some(s) = &stats {
                if pred(s) {
                    return s.clone();
                }
            }
            if !self.is_running() {
                panic!(
                    "portsyncd exited ({:?}) while waiting for {what}\nlast stats: {}\n--- error lines ---\n{}",
                    self.exit,
                    stats.map(|s| s.0.to_string()).unwrap_or_else(|| "none".into()),
                    self.error_lines()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {:.1} s waiting for portsyncd {what}\nlast stats: {}",
                    start.elapsed().as_secs_f64(),
                    stats.map(|s| s.0.to_string()).unwrap_or_else(|| "none".into()),
                );
            }
            std::thread::sleep(crate::poll::POLL_INTERVAL);
        }
    }

    /// Waits until the stats say `initial_sync_done: true`.
    pub fn wait_ready(&mut self) -> Stats {
        self.wait_stats(READY_TIMEOUT, "initial_sync_done", Stats::initial_sync_done)
    }

    /// SIGTERM, then waits up to 10 s; if it is still running it is SIGKILLed. Returns the status.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(st) = self.exit_status() {
            return st;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        if let Some(st) = wait_child(&mut self.child, Duration::from_secs(10)) {
            self.exit = Some(st);
            return st;
        }
        self.kill9()
    }

    /// Sends `sig` to the daemon without waiting for anything.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Sockets the process holds open (`socket:` entries in /proc/<pid>/fd): 0 until it first
    /// connects to Redis, since the async runtime itself uses only epoll and eventfd.
    pub fn socket_fds(&self) -> usize {
        socket_fds_of(self.child.id())
    }

    /// Polls until `pred` holds for the daemon's log; panics on timeout or if the daemon exits
    /// first, with the log tail.
    pub fn wait_log(&mut self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) {
        let start = Instant::now();
        loop {
            if pred(&self.log()) {
                return;
            }
            if !self.is_running() {
                panic!("portsyncd exited ({:?}) while waiting for {what} in its log\n{}", self.exit, self.log_tail(30));
            }
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what} in the portsyncd log\n{}", self.log_tail(30));
            }
            std::thread::sleep(crate::poll::POLL_INTERVAL);
        }
    }

    /// Polls `check` (any condition, e.g. on Redis or the kernel) until it returns `Ok`, like
    /// [`crate::poll::wait_for`], but panics as soon as the daemon exits, with its status and
    /// error lines, instead of waiting out the deadline.
    pub fn wait_for<T>(&mut self, timeout: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
        let start = Instant::now();
        loop {
            let last = match check() {
                Ok(v) => return v,
                Err(last) => last,
            };
            if !self.is_running() {
                panic!(
                    "portsyncd exited ({:?}) while waiting for {what}\nlast seen: {last}\n--- log tail ---\n{}",
                    self.exit,
                    self.log_tail(20)
                );
            }
            if start.elapsed() > timeout {
                panic!("timed out after {:.1} s waiting for: {what}\nlast seen: {last}", start.elapsed().as_secs_f64());
            }
            std::thread::sleep(crate::poll::POLL_INTERVAL);
        }
    }

    /// SIGKILL (no clean-up by the daemon); returns the status.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(st) = self.exit_status() {
            return st;
        }
        let _ = self.child.kill();
        let st = self.child.wait().unwrap_or_else(|e| panic!("wait portsyncd: {e}"));
        self.exit = Some(st);
        st
    }

    /// Waits up to `timeout` for the daemon to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.exit_status() {
            return Some(st);
        }
        let st = wait_child(&mut self.child, timeout);
        self.exit = st;
        st
    }
}

/// Sockets process `pid` holds open (`socket:` entries in /proc/<pid>/fd); 0 if it is gone.
pub fn socket_fds_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| fs::read_link(e.path()).ok())
                .filter(|t| t.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return None,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            if wait_child(&mut self.child, Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() && REPORT_ON_PANIC.load(Ordering::Relaxed) {
            // Keep the log and stats for a post-mortem.
            let dir = self.work.path().to_path_buf();
            if let WorkDir::Owned(t) = std::mem::replace(&mut self.work, WorkDir::Given(dir)) {
                let _ = t.keep();
            }
            eprintln!(
                "--- portsyncd (pid {}, exit {:?}) log tail, {} (kept) ---\n{}\n--- errors/warnings ---\n{}\n--- stats: {} ---",
                self.child.id(),
                self.exit,
                self.log.display(),
                self.log_tail(LOG_TAIL_LINES),
                self.error_lines(),
                self.stats()
                    .map(|s| s.0.to_string())
                    .unwrap_or_else(|| "none".into()),
            );
        }
    }
}
