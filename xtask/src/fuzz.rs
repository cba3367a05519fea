//! `cargo xtask fuzz`: builds the libFuzzer targets of `fuzz/` and runs each for a bounded time
//! on a scratch copy of its committed seed corpus (`fuzz/corpus/<target>/`, never modified).
//! Prints per target the executions run and the crashes found; any crash fails.
//!
//! Stable rustc, no cargo-fuzz: libfuzzer-sys compiles libFuzzer's C++ with the system `c++`,
//! and the coverage libFuzzer steers by comes from LLVM's SanitizerCoverage pass, requested with
//! stable `-C` flags (see [`RUSTFLAGS`]). There is no AddressSanitizer (that needs nightly's
//! `-Zsanitizer`); the code fuzzed has no `unsafe`, so a panic or abort is what a bug looks like.
//! Crash inputs are kept in `fuzz/artifacts/<target>/` (git-ignored) and replay with
//! `fuzz/target/<host>/fuzz/<target> <file>`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use xtask::{cargo, ensure_deps, run as run_cmd, workspace_root};

/// Every fuzz target: one `[[bin]]` of `fuzz/Cargo.toml` and one `fuzz/corpus/<name>/` each.
pub const TARGETS: [&str; 6] =
    ["netlink_parse", "ebpf_event", "database_config", "database_global", "config_toml", "state_file"];

/// SanitizerCoverage as cargo-fuzz configures it, minus the nightly-only sanitizer: edge
/// counters and the PC table (libFuzzer's coverage feedback) and comparison tracing (lets it
/// solve magic values such as netlink message types and TOML keys).
pub const RUSTFLAGS: [&str; 5] = [
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
];

/// The fuzz crate's build profile (`fuzz/Cargo.toml`).
pub const PROFILE: &str = "fuzz";
/// RSS limit of one target, MiB (libFuzzer reports an out-of-memory as a crash).
const RSS_LIMIT_MB: u32 = 2048;
/// Seconds one input may take before libFuzzer reports a hang as a crash.
const INPUT_TIMEOUT_SECS: u32 = 10;

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub secs: u64,
    /// Run only this target.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub target: Option<String>,
}

/// What one target's run came to.
#[derive(Debug)]
pub struct Outcome {
    /// The target.
    pub target: &'static str,
    /// libFuzzer's `stat::number_of_executed_units` (0 when it printed none).
    pub execs: u64,
    /// Inputs libFuzzer saved as crashing, hanging or running out of memory.
    pub crashes: Vec<PathBuf>,
    /// The fuzzer exited with status 0.
    pub exited_cleanly: bool,
    /// The run's full output.
    pub log: PathBuf,
}

impl Outcome {
    /// Ran inputs, found no crash and exited cleanly.
    pub fn passed(&self) -> bool {
        self.execs > 0 && self.crashes.is_empty() && self.exited_cleanly
    }
}

/// `cargo xtask fuzz`.
pub fn run(opts: Options) -> anyhow::Result<()> {
    ensure_deps()?;
    check(&run_targets(&opts)?)
}

/// An error naming every target that did not pass.
pub fn check(outcomes: &[Outcome]) -> anyhow::Result<()> {
    let failed: Vec<&str> = outcomes.iter().filter(|o| !o.passed()).map(|o| o.target).collect();
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Builds the fuzz crate, then runs the selected targets one after the other, printing one
/// line per target (and the end of its output when it failed).
pub fn run_targets(opts: &Options) -> anyhow::Result<Vec<Outcome>> {
    let started = Instant::now();
    let host = host_triple()?;
    run_cmd(fuzz_cargo("build", &host).args(["--bins"]))?;
    eprintln!("xtask: fuzz build took {:.0?}", started.elapsed());
    let bin_dir = fuzz_dir().join("target").join(&host).join(PROFILE);
    let mut outcomes = Vec::new();
    for target in TARGETS.into_iter().filter(|t| opts.target.as_deref().is_none_or(|only| only == *t)) {
        let outcome = run_one(&bin_dir.join(target), target, opts.secs)?;
        println!(
            "fuzz: {target}: {} executions in {} s, {} crashes{}",
            outcome.execs,
            opts.secs,
            outcome.crashes.len(),
            if outcome.passed() { "" } else { " - FAILED" }
        );
        if !outcome.passed() {
            report_failure(&outcome, &bin_dir);
        }
        outcomes.push(outcome);
    }
    eprintln!("xtask: fuzzing took {:.0?} in all", started.elapsed());
    Ok(outcomes)
}

/// `fuzz/`.
pub fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// `cargo <subcommand>` for the fuzz crate, instrumented: its own target directory,
/// [`RUSTFLAGS`], and an explicit `--target` so that the flags reach the fuzzed code but not
/// build scripts or proc macros (they are not linked with libFuzzer). Clippy uses it too, so
/// that it shares the build's artifacts instead of invalidating them.
pub fn fuzz_cargo(subcommand: &str, host: &str) -> Command {
    let mut c = cargo();
    c.env("CARGO_TARGET_DIR", fuzz_dir().join("target"))
        .env("RUSTFLAGS", RUSTFLAGS.join(" "))
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .arg(subcommand)
        .arg("--manifest-path")
        .arg(fuzz_dir().join("Cargo.toml"))
        .args(["--target", host, "--profile", PROFILE]);
    c
}

/// The host target triple, from `rustc -vV`.
pub fn host_triple() -> anyhow::Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc).arg("-vV").output().context("running `rustc -vV`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("host: ")).map(str::to_owned).context("`rustc -vV` printed no host line")
}

/// Runs one target for `secs` seconds on a scratch copy of its corpus.
fn run_one(bin: &Path, target: &'static str, secs: u64) -> anyhow::Result<Outcome> {
    let corpus = tempfile::tempdir().context("creating a scratch corpus directory")?;
    let seeds = fuzz_dir().join("corpus").join(target);
    for entry in fs::read_dir(&seeds).with_context(|| format!("reading {}", seeds.display()))? {
        let path = entry?.path();
        if path.is_file() {
            let dest = corpus.path().join(path.file_name().context("seed without a name")?);
            fs::copy(&path, &dest).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    let artifacts = fuzz_dir().join("artifacts").join(target);
    fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
    let before = dir_files(&artifacts);
    let log = fuzz_dir().join("target").join("logs").join(format!("{target}.log"));
    fs::create_dir_all(log.parent().context("log without a directory")?)?;
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;

    let mut cmd = Command::new(bin);
    cmd.arg(corpus.path())
        .arg(format!("-max_total_time={secs}"))
        .arg("-print_final_stats=1")
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // The config target parses a command line: the caller's PORTSYNCD_* variables must not
    // change what it checks.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTSYNCD_") {
            cmd.env_remove(key);
        }
    }
    eprintln!("xtask: fuzzing {target} for {secs} s");
    let status = cmd.status().with_context(|| format!("cannot start {}", bin.display()))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let crashes = dir_files(&artifacts).into_iter().filter(|p| !before.contains(p)).collect();
    Ok(Outcome { target, execs: executed_units(&text), crashes, exited_cleanly: status.success(), log })
}

/// libFuzzer's `stat::number_of_executed_units: N` (0 when absent).
fn executed_units(log: &str) -> u64 {
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("stat::number_of_executed_units:")?.trim().parse().ok())
        .unwrap_or(0)
}

fn dir_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// The end of a failed run's output, the inputs it saved and how to replay them.
fn report_failure(outcome: &Outcome, bin_dir: &Path) {
    let text = fs::read_to_string(&outcome.log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("xtask: last lines of {}:", outcome.log.display());
    for l in &lines[lines.len().saturating_sub(40)..] {
        eprintln!("    {l}");
    }
    for crash in &outcome.crashes {
        eprintln!("xtask: replay with {} {}", bin_dir.join(outcome.target).display(), crash.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_executed_units_of_final_stats() {
        let log = "#2\tINITED cov: 10\nDone 51234 runs in 2 second(s)\nstat::number_of_executed_units: 51234\n\
                   stat::average_exec_per_sec:     25617\n";
        assert_eq!(executed_units(log), 51234);
        assert_eq!(executed_units("==1== ERROR: libFuzzer: deadly signal\n"), 0);
    }

    #[test]
    fn every_target_has_a_binary_a_source_and_seeds() {
        let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
        let bins = manifest.matches("[[bin]]").count();
        assert_eq!(bins, TARGETS.len(), "fuzz/Cargo.toml has {bins} [[bin]]s");
        for t in TARGETS {
            assert!(manifest.contains(&format!("name = \"{t}\"")), "{t} is not a [[bin]] of fuzz/Cargo.toml");
            assert!(fuzz_dir().join(format!("fuzz_targets/{t}.rs")).is_file(), "fuzz_targets/{t}.rs");
            assert!(!dir_files(&fuzz_dir().join("corpus").join(t)).is_empty(), "no seeds in corpus/{t}");
        }
    }
}
