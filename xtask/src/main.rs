//! `cargo xtask <task>`: the commands a developer types. Each task lives in its own module.

mod bench;
mod build_ebpf;
mod demo;
mod fuzz;
mod package;
mod report;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "portsyncd developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Storm benchmark: flap/mtu/churn/startup per capture mode, side by side (`bench pipeline`:
    /// the kernel-free userspace pipeline benchmark).
    Bench(bench::Options),
    /// Build the eBPF socket filter object (Debian rustc 1.96, bpf-linker).
    BuildEbpf(build_ebpf::Options),
    /// The main job: loopback redis-server, veth ports in a namespace, the daemon, a flap storm,
    /// the resulting STATE_DB table and the latency histogram (installs what is missing; root).
    Demo(demo::Options),
    /// Fuzz the parsers of untrusted input (netlink, eBPF records, database_config.json, the
    /// TOML config, the state file) for `--secs` each; fails on any crash.
    Fuzz(fuzz::Options),
    /// Chart a `--histogram-log` (HdrHistogram V2 interval log) as SVG: latency by percentile per
    /// tag, with the percentile table beside it; prints the chart's path and the table.
    Report(report::Options),
    /// Build the .deb (cargo-deb): the release daemon, its systemd unit, the supervisord program
    /// for SONiC's swss container, an example config, man page and completions; prints its path
    /// and file list.
    Package(package::Options),
    /// Run the whole test suite (installs what is missing; needs root).
    Test(test::Options),
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Bench(o) => bench::run(o),
        Command::BuildEbpf(o) => build_ebpf::run(o),
        Command::Demo(o) => demo::run(o),
        Command::Fuzz(o) => fuzz::run(o),
        Command::Report(o) => report::run(o),
        Command::Package(o) => package::run(o),
        Command::Test(o) => test::run_tests(o),
    };
    if let Err(e) = res {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
