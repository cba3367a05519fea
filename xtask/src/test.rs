//! `cargo xtask test`: the whole suite, as CI runs it: installs what is missing, builds the
//! eBPF object, checks formatting and clippy, runs the unit tests, then the end-to-end tests
//! against real redis-server and real veth ports (root required; they fail loudly without it).

use xtask::{cargo, ensure_deps, run};

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Threads for the end-to-end tests (each test has its own namespace and redis-server).
    #[arg(long, default_value_t = 2)]
    pub e2e_threads: usize,
    /// Only end-to-end tests whose name contains this.
    #[arg(long)]
    pub e2e_filter: Option<String>,
}

/// Runs the suite.
pub fn run_tests(opts: Options) -> anyhow::Result<()> {
    ensure_deps()?;
    crate::build_ebpf::run(crate::build_ebpf::Options { release: true })?;
    if !opts.no_lint {
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    }
    run(cargo().args(["test", "-p", "portsyncd", "-p", "portsyncd-common", "-p", "xtask"]))?;
    run(cargo().args(["build", "-p", "portsyncd"]))?;
    let bin = xtask::workspace_root().join("target/debug/portsyncd");
    let mut e2e = cargo();
    e2e.env("PORTSYNCD_BIN", &bin).args(["test", "-p", "portsyncd-e2e", "--"]);
    if let Some(f) = &opts.e2e_filter {
        e2e.arg(f);
    }
    e2e.arg(format!("--test-threads={}", opts.e2e_threads));
    run(&mut e2e)
}
