//! `cargo xtask test`: the whole suite, as CI runs it: installs what is missing, builds the
//! eBPF object, checks formatting and clippy (the fuzz crate's too), runs the unit tests (the
//! root-only ones included), then the end-to-end tests against real redis-server and real veth
//! ports (root required; they fail loudly without it), then the .deb (built, installed with
//! dpkg, one end-to-end scenario run with the installed binary, removed), then every fuzz target
//! for a bounded time. Ends with one line totalling every test binary's result, each fuzz target
//! and the package's install checks counting as one test.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
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
    /// Seconds each fuzz target runs.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub fuzz_secs: u64,
}

/// Passed/failed/ignored counts summed over `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Adds one libtest closing line (`test result: ok. 3 passed; 0 failed; 1 ignored; ...`).
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs a `cargo test` command, streaming its output and tallying its results.
fn run_tests_counted(cmd: &mut Command, tally: &mut Tally) -> anyhow::Result<()> {
    let line = format!("{cmd:?}");
    eprintln!("xtask: running {line}");
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("cannot start {line}"))?;
    if let Some(out) = child.stdout.take() {
        for l in BufReader::new(out).lines() {
            let l = l.context("reading test output")?;
            println!("{l}");
            tally.add_line(&l);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

/// Runs the suite.
pub fn run_tests(opts: Options) -> anyhow::Result<()> {
    ensure_deps()?;
    crate::build_ebpf::run(crate::build_ebpf::Options { release: true })?;
    if !opts.no_lint {
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
        // The fuzz crate is a workspace of its own; its clippy shares the fuzz build's flags.
        run(cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]))?;
        let host = crate::fuzz::host_triple()?;
        run(crate::fuzz::fuzz_cargo("clippy", &host).args(["--all-targets", "--", "-D", "warnings"]))?;
    }
    let mut tally = Tally::default();
    // --include-ignored: the tests that need root and BPF run here, where we are root.
    let unit = run_tests_counted(
        cargo().args(["test", "-p", "portsyncd", "-p", "portsyncd-common", "-p", "xtask", "--", "--include-ignored"]),
        &mut tally,
    );
    let e2e = unit.and_then(|()| {
        run(cargo().args(["build", "-p", "portsyncd"]))?;
        let bin = xtask::workspace_root().join("target/debug/portsyncd");
        let mut e2e = cargo();
        e2e.env("PORTSYNCD_BIN", &bin).args(["test", "-p", "portsyncd-e2e", "--"]);
        if let Some(f) = &opts.e2e_filter {
            e2e.arg(f);
        }
        e2e.arg(format!("--test-threads={}", opts.e2e_threads));
        run_tests_counted(&mut e2e, &mut tally)
    });
    let package = package_counted(&crate::package::Options::default(), &mut tally);
    // Whatever the tests did: the fuzzers need neither root nor Redis.
    let fuzz = fuzz_counted(opts.fuzz_secs, &mut tally);
    // The closing line CI reads: one word with a colon, then the totals.
    println!("total: {} passed, {} failed, {} skipped", tally.passed, tally.failed, tally.ignored);
    let errors: Vec<String> =
        [e2e, package, fuzz].into_iter().filter_map(Result::err).map(|e| format!("{e:#}")).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(errors.join("; ")))
    }
}

/// The end-to-end scenario run with the installed binary: short (two ports), in eBPF mode so
/// that the packaged binary's embedded object is loaded for real.
const PACKAGE_E2E_TEST: (&str, &str) = ("link_state", "admin_and_carrier_changes_update_state_db_ebpf");

/// The .deb as an operator gets it: built (the suite's one release build), installed with dpkg
/// and checked (one test), then one end-to-end scenario with the installed `/usr/bin/portsyncd`
/// (counted from its own libtest line). Removed again whatever happened.
fn package_counted(opts: &crate::package::Options, tally: &mut Tally) -> anyhow::Result<()> {
    let installed = crate::package::build(opts).and_then(|deb| crate::package::install_and_check(&deb));
    if installed.is_ok() {
        tally.passed += 1;
    } else {
        tally.failed += 1;
    }
    let e2e = installed.and_then(|()| {
        let (file, test) = PACKAGE_E2E_TEST;
        let mut cmd = cargo();
        cmd.env("PORTSYNCD_BIN", crate::package::INSTALLED_BIN)
            .args(["test", "-p", "portsyncd-e2e", "--test", file])
            .args(["--", "--exact", test]);
        run_tests_counted(&mut cmd, tally)
    });
    let removed = crate::package::remove();
    match (e2e, removed) {
        (Err(test), Err(remove)) => Err(anyhow::anyhow!("{test:#}; {remove:#}")),
        (test, remove) => test.and(remove),
    }
}

/// `cargo xtask package --check`: the package step alone, with its own closing line.
pub fn package_step(opts: &crate::package::Options) -> anyhow::Result<()> {
    let mut tally = Tally::default();
    let res = package_counted(opts, &mut tally);
    println!("total: {} passed, {} failed, {} skipped", tally.passed, tally.failed, tally.ignored);
    res
}

/// Runs every fuzz target for `secs` seconds; each is one test, passed when it ran inputs and
/// found no crash. A build failure fails them all.
fn fuzz_counted(secs: u64, tally: &mut Tally) -> anyhow::Result<()> {
    match crate::fuzz::run_targets(&crate::fuzz::Options { secs, target: None }) {
        Ok(outcomes) => {
            for o in &outcomes {
                if o.passed() {
                    tally.passed += 1;
                } else {
                    tally.failed += 1;
                }
            }
            crate::fuzz::check(&outcomes)
        }
        Err(e) => {
            tally.failed += crate::fuzz::TARGETS.len() as u64;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tallies_libtest_closing_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 83 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.34s");
        t.add_line("test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s");
        t.add_line("running 3 tests");
        assert_eq!(t, Tally { passed: 84, failed: 2, ignored: 1 });
    }
}
