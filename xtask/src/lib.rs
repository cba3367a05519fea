//! Shared helpers of the xtask commands: locating the workspace, running child processes with
//! their full command line in the error, and catching Ctrl-C so that clean-up runs.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};

/// The workspace root, as the test harness finds it (xtask depends on it anyway, for the bench).
pub use portsyncd_e2e::workspace_root;

/// Runs `cmd` to completion; a non-zero exit is an error naming the command.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let line = format!("{cmd:?}");
    eprintln!("xtask: running {line}");
    let status = cmd.status().with_context(|| format!("cannot start {line}"))?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

/// Whether `prog` is on PATH.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file())).unwrap_or(false)
}

/// Runs `scripts/install-deps.sh` when something the tests, demo or bench need is missing.
pub fn ensure_deps() -> anyhow::Result<()> {
    let missing: Vec<&str> = ["redis-server", "ip", "capsh", "bpf-linker", "c++", "cargo-nextest"]
        .into_iter()
        .filter(|p| !on_path(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: missing {missing:?}; running scripts/install-deps.sh");
    run(Command::new("bash").arg(workspace_root().join("scripts/install-deps.sh")))
}

/// `cargo` as invoked by the user (rustup's proxy), never the Debian one.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Set once SIGINT or SIGTERM arrived. Long-running tasks check it in every wait loop and
/// return an error, so that the harness guards' `Drop` removes namespaces, daemons and
/// redis-servers instead of the process dying with them in place.
#[derive(Debug, Clone)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Catches SIGINT and SIGTERM from now on; each one prints `<task>: interrupted; cleaning
    /// up...`. signal-hook's handler only writes to a pipe that a thread of ours reads, since a
    /// signal handler itself may not print. A handler, not a blocked mask + signalfd: children
    /// inherit a blocked mask, and a daemon that cannot see SIGTERM cannot be stopped cleanly.
    pub fn install(task: &'static str) -> anyhow::Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("installing SIGINT/SIGTERM handlers")?;
        let flag = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(&flag);
        std::thread::Builder::new()
            .name(format!("{task}-signals"))
            .spawn(move || {
                for _ in signals.forever() {
                    set.store(true, Ordering::SeqCst);
                    eprintln!("\n{task}: interrupted; cleaning up...");
                }
            })
            .context("spawning the signal thread")?;
        Ok(Self(flag))
    }

    /// Whether SIGINT or SIGTERM arrived.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// An error once SIGINT or SIGTERM arrived.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.is_set() {
            bail!("interrupted");
        }
        Ok(())
    }
}
