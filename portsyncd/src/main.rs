//! The `portsyncd` binary: parse flags, start logging, run the daemon, turn errors into one line
//! and an exit code (1, as the C++ daemon exits on fatal errors; clap exits 2 on bad flags).

use std::process::ExitCode;

use std::io::Write;

use clap::{CommandFactory, FromArgMatches};
use portsyncd::config::{Args, Config};

fn main() -> ExitCode {
    portsyncd::daemon::hold_stop_signals();
    // The long version names the commit and the exact kernel program embedded.
    let version = format!(
        "{} (commit {}, eBPF object sha256 {})",
        env!("CARGO_PKG_VERSION"),
        env!("PORTSYNCD_GIT_COMMIT"),
        portsyncd::ebpf::embedded_object_sha256()
    );
    let args = match Args::command().version(version).try_get_matches().and_then(|m| Args::from_arg_matches(&m)) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if args.check_config {
        return match Config::from_args(args) {
            Ok(cfg) => {
                // A closed pipe (`| head`) is not an error worth a panic.
                let _ = writeln!(std::io::stdout(), "{cfg:#?}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portsyncd: error: {:#}", anyhow::Error::from(e));
                ExitCode::FAILURE
            }
        };
    }
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
    let mut cfg = Config::from_args(args)?;
    let namespace = portsyncd::netns::init_label(cfg.namespace.as_deref());
    portsyncd::logging::set_line_fields(namespace, (cfg.instances > 1).then_some(cfg.instance_id));
    // Before the runtime exists: setns moves only this thread, and the runtime's threads and
    // every socket must start out in the ASIC's namespace.
    portsyncd::netns::enter_host_mode(&mut cfg)?;
    // One thread: the pipeline is one task, and a netlink socket's namespace is per process.
    // The blocking pool runs only the state-file save (at most once a minute): its thread
    // need not idle 10 s (tokio's default) waking for nothing before it exits.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()?;
    rt.block_on(portsyncd::run(cfg))?;
    Ok(())
}
