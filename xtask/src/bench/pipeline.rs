//! `cargo xtask bench pipeline`: a private loopback redis-server in, the kernel-free
//! `pipeline_bench` example run against its unix socket (table on stdout, optional JSON) out.

use anyhow::{bail, Context};
use portsyncd_e2e::RedisServer;

use super::Options;

/// Events per batch size with `--quick`.
const QUICK_EVENTS: &str = "20000";

/// Builds and runs the example in release mode against a redis-server started here.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !xtask::on_path("redis-server") {
        bail!("redis-server not found: run `bash scripts/install-deps.sh`");
    }
    // Build first, so the server does not idle through a compile.
    xtask::run(xtask::cargo().args(["build", "--release", "-p", "portsyncd", "--example", "pipeline_bench"]))?;
    let server = RedisServer::start();
    let mut cmd = xtask::cargo();
    cmd.args(["run", "--release", "-q", "-p", "portsyncd", "--example", "pipeline_bench", "--", "--redis"])
        .arg(server.url());
    if let Some(p) = &opts.json {
        // cargo runs in the workspace root; a relative path means the caller's directory.
        let p = std::path::absolute(p).with_context(|| format!("resolve {}", p.display()))?;
        cmd.arg("--json").arg(p);
    }
    if let Some(n) = opts.ports {
        cmd.arg("--ports").arg(n.to_string());
    }
    if opts.quick {
        cmd.args(["--events", QUICK_EVENTS]);
    }
    cmd.args(&opts.extra);
    xtask::run(&mut cmd)
}
