//! `cargo xtask test`: the whole suite, as CI runs it: installs what is missing, builds the
//! eBPF object, checks formatting and clippy (the fuzz crate's too), runs the unit tests, then
//! the end-to-end tests against real redis-server and real veth ports (root required; they fail
//! loudly without it), then the .deb (built, installed with dpkg, one end-to-end scenario run
//! with the installed binary, removed), then every fuzz target for a bounded time. Ends with one
//! line totalling every test's result, each fuzz target and the package's install checks
//! counting as one test.
//!
//! Tests run under cargo-nextest, and the counts come from its machine-readable output, not
//! from text meant for people: `cargo nextest list --message-format json` (a stable format)
//! names the `#[ignore]`d tests, which are counted as skipped and never run, and the run's
//! per-test events (`--message-format libtest-json`, pinned to format version 0.1) give each
//! test's pass or fail. Per-test events, not the per-binary `suite` lines: nextest 0.9.143
//! repeats a binary's ignored count in each of its `suite` lines and sometimes leaves out the
//! ignored tests' own events, so neither tells how many were skipped.

use std::io::{BufRead, BufReader};
use std::path::Path;
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

/// Passed/failed/skipped counts over every step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
    /// `#[ignore]`d tests, listed but not run.
    skipped: u64,
}

/// The version of nextest's libtest-json output read here, pinned: a newer nextest keeps writing
/// this structure when its default moves on.
const LIBTEST_JSON_VERSION: &str = "0.1";

/// The `filter-match` of every test in a `cargo nextest list --message-format json` document.
fn filter_matches(doc: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    let suites = doc.get("rust-suites").and_then(serde_json::Value::as_object);
    let cases = suites.into_iter().flat_map(|s| s.values()).filter_map(|s| s.get("testcases")?.as_object());
    cases.flat_map(|c| c.values()).map(|t| &t["filter-match"])
}

/// The tests of a list that the filters select but `#[ignore]` keeps from running.
fn ignored_in_list(doc: &serde_json::Value) -> u64 {
    filter_matches(doc).filter(|m| m["status"] == "mismatch" && m["reason"] == "ignored").count() as u64
}

/// The tests of a list that will run.
fn selected_in_list(doc: &serde_json::Value) -> u64 {
    filter_matches(doc).filter(|m| m["status"] == "matches").count() as u64
}

/// One line of `cargo nextest run --message-format libtest-json`: a test's end is counted,
/// everything else (starts, suite lines, lines that are not JSON) is not.
fn add_event(tally: &mut Tally, line: &str) {
    let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else { return };
    if ev["type"] != "test" {
        return;
    }
    match ev["event"].as_str() {
        Some("ok") => tally.passed += 1,
        Some("failed") => tally.failed += 1,
        _ => {}
    }
}

/// `cargo nextest <verb>` with the workspace's cargo, and `env` set (the e2e tests' binary).
fn nextest(verb: &str, env: Option<(&str, &Path)>) -> Command {
    let mut cmd = cargo();
    cmd.args(["nextest", verb]);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the tests that `select` (packages, `--test`) and `filters` (after `--`) select, with
/// `run_only` options (`-j`, `--no-tests`), and adds them up: the ignored ones as skipped (not
/// run), the rest as passed or failed. A selected test that reported no result (nextest
/// stopped early) counts as failed.
fn nextest_counted(
    env: Option<(&str, &Path)>,
    select: &[String],
    run_only: &[String],
    filters: &[String],
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let mut list = nextest("list", env);
    list.args(["--message-format", "json"]).args(select).arg("--").args(filters);
    let line = format!("{list:?}");
    eprintln!("xtask: running {line}");
    let out = list.stderr(Stdio::inherit()).output().with_context(|| format!("cannot start {line}"))?;
    if !out.status.success() {
        bail!("{line} failed with {}", out.status);
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| format!("{line}: not JSON"))?;
    let selected = selected_in_list(&doc);
    tally.skipped += ignored_in_list(&doc);

    let mut run = nextest("run", env);
    // nextest stops at the first failure by default; CI should report every failure at once.
    run.env("NEXTEST_EXPERIMENTAL_LIBTEST_JSON", "1")
        .args(["--no-fail-fast", "--message-format", "libtest-json", "--message-format-version"])
        .arg(LIBTEST_JSON_VERSION)
        .args(select)
        .args(run_only)
        .arg("--")
        .args(filters);
    let line = format!("{run:?}");
    eprintln!("xtask: running {line}");
    // stdout is the JSON; the human report (progress, failures' output) goes to stderr.
    let mut child = run.stdout(Stdio::piped()).spawn().with_context(|| format!("cannot start {line}"))?;
    let mut counted = Tally::default();
    if let Some(out) = child.stdout.take() {
        for l in BufReader::new(out).lines() {
            add_event(&mut counted, &l.context("reading nextest output")?);
        }
    }
    let status = child.wait()?;
    let missing = selected.saturating_sub(counted.passed + counted.failed);
    tally.passed += counted.passed;
    tally.failed += counted.failed + missing;
    if missing > 0 {
        bail!("{line}: {missing} of {selected} selected tests reported no result");
    }
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

/// The closing line CI reads: one word with a colon, then the totals.
fn print_total(tally: &Tally) {
    println!("total: {} passed, {} failed, {} skipped", tally.passed, tally.failed, tally.skipped);
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
    let unit_args = ["-p", "portsyncd", "-p", "portsyncd-common", "-p", "xtask"].map(String::from);
    let unit = nextest_counted(None, &unit_args, &[], &[], &mut tally);
    let e2e = unit.and_then(|()| {
        run(cargo().args(["build", "-p", "portsyncd"]))?;
        let bin = xtask::workspace_root().join("target/debug/portsyncd");
        let select = ["-p", "portsyncd-e2e"].map(String::from);
        let mut run_only = vec!["-j".to_owned(), opts.e2e_threads.to_string()];
        let filters: Vec<String> = opts.e2e_filter.iter().cloned().collect();
        if !filters.is_empty() {
            // Nothing matching a developer's filter is worth a warning, not a failed suite.
            run_only.extend(["--no-tests".to_owned(), "warn".to_owned()]);
        }
        nextest_counted(Some(("PORTSYNCD_BIN", &bin)), &select, &run_only, &filters, &mut tally)
    });
    let package = package_counted(&crate::package::Options::default(), &mut tally);
    // Whatever the tests did: the fuzzers need neither root nor Redis.
    let fuzz = fuzz_counted(opts.fuzz_secs, &mut tally);
    print_total(&tally);
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
        let select = ["-p", "portsyncd-e2e", "--test", file].map(String::from);
        let filters = ["--exact", test].map(String::from);
        let bin = Path::new(crate::package::INSTALLED_BIN);
        nextest_counted(Some(("PORTSYNCD_BIN", bin)), &select, &[], &filters, tally)
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
    print_total(&tally);
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
    use super::*;

    #[test]
    fn counts_test_ends_and_nothing_else() {
        let mut t = Tally::default();
        for line in [
            r#"{"type":"suite","event":"started","test_count":3}"#,
            r#"{"type":"test","event":"started","name":"p::b$t1"}"#,
            r#"{"type":"test","event":"ok","name":"p::b$t1","exec_time":0.01}"#,
            r#"{"type":"test","event":"failed","name":"p::b$t2","exec_time":0.1,"stdout":"boom"}"#,
            r#"{"type":"test","event":"ignored","name":"p::b$t3"}"#,
            r#"{"type":"suite","event":"failed","passed":1,"failed":1,"ignored":1,"measured":0}"#,
            "test result: ok. 83 passed; 0 failed; 1 ignored",
            "",
        ] {
            add_event(&mut t, line);
        }
        assert_eq!(t, Tally { passed: 1, failed: 1, skipped: 0 });
    }

    #[test]
    fn the_list_tells_ignored_tests_from_selected_and_filtered_out_ones() {
        let doc: serde_json::Value = serde_json::from_str(
            r#"{"test-count": 5, "rust-suites": {
                "p::membership": {"testcases": {
                    "lag_netlink": {"ignored": true, "filter-match": {"status": "mismatch", "reason": "ignored"}},
                    "lag_ebpf": {"ignored": true, "filter-match": {"status": "mismatch", "reason": "string"}},
                    "bridge_netlink": {"ignored": false, "filter-match": {"status": "matches"}}
                }},
                "p::link_state": {"testcases": {
                    "down_netlink": {"ignored": false, "filter-match": {"status": "matches"}},
                    "down_ebpf": {"ignored": false, "filter-match": {"status": "mismatch", "reason": "string"}}
                }}
            }}"#,
        )
        .unwrap();
        assert_eq!(ignored_in_list(&doc), 1);
        assert_eq!(selected_in_list(&doc), 2);
        assert_eq!(ignored_in_list(&serde_json::json!({})), 0);
    }
}
