//! Shared helpers of the xtask commands: locating the workspace and running child processes
//! with their full command line in the error.

use std::process::Command;

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
    let missing: Vec<&str> =
        ["redis-server", "ip", "capsh", "bpf-linker", "c++"].into_iter().filter(|p| !on_path(p)).collect();
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
