//! The `portsyncd` binary: parse flags, start logging, run the daemon, turn errors into one line
//! and an exit code (1, as the C++ daemon exits on fatal errors; clap exits 2 on bad flags).

use std::process::ExitCode;

use clap::Parser;
use portsyncd::config::{Args, Config};

fn main() -> ExitCode {
    portsyncd::daemon::hold_stop_signals();
    let args = Args::parse();
    // swss-common's defaults (NOTICE to syslog) until CONFIG_DB LOGGER|portsyncd is read.
    portsyncd::logging::init_global(
        args.test_syslog_socket.clone().unwrap_or_else(|| portsyncd::logging::DEFAULT_SYSLOG_SOCKET.into()),
    );
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portsyncd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::from_args(args)?;
    // One thread: the pipeline is one task, and a netlink socket's namespace is per process.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(portsyncd::run(cfg))?;
    Ok(())
}
