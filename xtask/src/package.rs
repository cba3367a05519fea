//! `cargo xtask package`: the .deb an operator installs. Builds the release daemon and, from the
//! same `Args`, its man page and shell completions (`portsyncd-gen-assets`, into
//! `target/package-assets/`), then packs them with cargo-deb together with `packaging/`: the
//! systemd unit, the supervisord program for SONiC's swss container, the example config and the
//! maintainer scripts that divert the C++ daemon aside. Prints the .deb's path and file list.
//!
//! `cargo xtask test` installs the result with dpkg and checks it ([`install_and_check`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use xtask::{cargo, on_path, workspace_root};

/// Where `portsyncd-gen-assets` writes, relative to the workspace; `portsyncd/Cargo.toml`'s
/// `[package.metadata.deb]` assets read from here.
const ASSETS_DIR: &str = "target/package-assets";
/// The daemon once the .deb is installed.
pub const INSTALLED_BIN: &str = "/usr/bin/portsyncd";
/// The packaged example config, a dpkg conffile.
const INSTALLED_CONFIG: &str = "/etc/portsyncd/portsyncd.toml";
/// What `dpkg -L portsyncd` must list: what the README's "Run it on a SONiC switch" and the
/// man page's FILES section send an operator to.
const INSTALLED_FILES: &[&str] = &[
    INSTALLED_BIN,
    INSTALLED_CONFIG,
    "/usr/lib/systemd/system/portsyncd.service",
    "/usr/share/portsyncd/supervisord/portsyncd.conf",
    "/usr/share/man/man8/portsyncd.8.gz",
    "/usr/share/bash-completion/completions/portsyncd",
    "/usr/share/zsh/vendor-completions/_portsyncd",
    "/usr/share/fish/vendor_completions.d/portsyncd.fish",
];

/// Options of `cargo xtask package`.
#[derive(Debug, Default, clap::Args)]
pub struct Options {
    /// Package the existing `target/release` binaries instead of building them first.
    #[arg(long)]
    pub no_build: bool,
    /// Then run the package step of `cargo xtask test`: install with dpkg, check, run one
    /// end-to-end test with the installed binary, remove (root; a debug e2e build).
    #[arg(long)]
    pub check: bool,
}

/// Builds the .deb, then prints its path and its file list.
pub fn run(opts: Options) -> anyhow::Result<()> {
    if opts.check {
        return crate::test::package_step(&opts);
    }
    let deb = build(&opts)?;
    xtask::run(Command::new("dpkg-deb").arg("-c").arg(&deb))?;
    println!("package: {}", deb.display());
    Ok(())
}

/// Builds the .deb and returns its path.
///
/// Always the release profile: the package is what operators run, and cargo-deb refuses the dev
/// profile (a warning today, an error in its future releases). In CI this is the one release
/// build of `cargo xtask test`, a few minutes on two cores; see `package_counted` in `test.rs`.
pub fn build(opts: &Options) -> anyhow::Result<PathBuf> {
    ensure_cargo_deb()?;
    let root = workspace_root();
    if !opts.no_build {
        // Both binaries in one build: the generator links the daemon's release library anyway.
        xtask::run(cargo().args(["build", "--release", "-p", "portsyncd", "--bins"]))?;
    }
    let assets = root.join(ASSETS_DIR);
    // A file the generator no longer writes must not linger into the next package.
    if assets.exists() {
        fs::remove_dir_all(&assets).with_context(|| format!("removing {}", assets.display()))?;
    }
    xtask::run(Command::new(root.join("target/release/portsyncd-gen-assets")).arg(&assets))?;

    // --strip: the release profile keeps debug info (`debug = 1`, for perf); the package need
    // not carry it.
    let mut deb = cargo();
    deb.args(["deb", "-p", "portsyncd", "--no-build", "--strip"]);
    let line = format!("{deb:?}");
    eprintln!("xtask: running {line}");
    let out = deb.output().with_context(|| format!("cannot start {line}"))?;
    // cargo-deb warns about every asset under a `target/` other than `target/release/`, which it
    // would build; ours are generated on purpose, and the warning would hide real ones.
    for l in String::from_utf8_lossy(&out.stderr).lines() {
        if !(l.contains("are detected as Cargo target dir") && l.contains(ASSETS_DIR)) {
            eprintln!("{l}");
        }
    }
    if !out.status.success() {
        bail!("{line} failed with {}", out.status);
    }
    // cargo-deb prints the path of the package it wrote as its last line of stdout.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().rev().map(str::trim).find(|l| l.ends_with(".deb")).map(PathBuf::from);
    match path {
        Some(p) if p.is_file() => Ok(p),
        _ => bail!("{line} named no .deb file in its output: {stdout:?}"),
    }
}

/// Runs `scripts/install-deps.sh`, which installs the pinned cargo-deb, when it is missing.
fn ensure_cargo_deb() -> anyhow::Result<()> {
    if on_path("cargo-deb") {
        return Ok(());
    }
    eprintln!("xtask: cargo-deb missing; running scripts/install-deps.sh");
    xtask::run(Command::new("bash").arg(workspace_root().join("scripts/install-deps.sh")))?;
    if !on_path("cargo-deb") {
        bail!("cargo-deb still not on PATH after scripts/install-deps.sh (is ~/.cargo/bin on PATH?)");
    }
    Ok(())
}

/// Installs `deb` with dpkg and checks it as an operator would meet it: the files are where the
/// docs say, the installed binary names its build, and it accepts the packaged config, both as
/// shipped and with every commented-out key switched on (a key the daemon renamed or dropped
/// would make the example lie).
pub fn install_and_check(deb: &Path) -> anyhow::Result<()> {
    xtask::run(Command::new("dpkg").arg("-i").arg(deb))?;
    let listed = stdout_of(Command::new("dpkg").args(["-L", "portsyncd"]))?;
    let missing: Vec<&str> = INSTALLED_FILES.iter().copied().filter(|f| !listed.lines().any(|l| l == *f)).collect();
    if !missing.is_empty() {
        bail!("dpkg -L portsyncd lacks {missing:?}; it lists:\n{listed}");
    }
    let version = stdout_of(daemon().arg("--version"))?;
    if !version.contains("eBPF object sha256") {
        bail!("{INSTALLED_BIN} --version does not name the embedded eBPF object: {version:?}");
    }
    println!("package: {}", version.trim());
    stdout_of(daemon().args(["--check-config", "--config", INSTALLED_CONFIG]))?;

    let shipped = fs::read_to_string(INSTALLED_CONFIG).with_context(|| format!("reading {INSTALLED_CONFIG}"))?;
    let all_keys = tempfile::Builder::new().suffix(".toml").tempfile().context("creating a temporary config")?;
    fs::write(all_keys.path(), uncomment_keys(&shipped))
        .with_context(|| format!("writing {}", all_keys.path().display()))?;
    stdout_of(daemon().arg("--check-config").arg("--config").arg(all_keys.path()))
        .with_context(|| format!("{INSTALLED_CONFIG} with every commented key enabled"))?;
    println!("package: installed files, --version and --check-config ok");
    Ok(())
}

/// Removes the package (purge: its conffile too, so that a machine is left as found) and checks
/// that the diversion of `/usr/bin/portsyncd` went with it.
pub fn remove() -> anyhow::Result<()> {
    xtask::run(Command::new("dpkg").args(["--purge", "portsyncd"]))?;
    let diversions = stdout_of(Command::new("dpkg-divert").args(["--list", "/usr/bin/portsyncd"]))?;
    if diversions.contains("by portsyncd") {
        bail!("the diversion of /usr/bin/portsyncd outlived the package: {diversions}");
    }
    Ok(())
}

/// The installed daemon, without the caller's `PORTSYNCD_*` variables, which would override the
/// config file under test.
fn daemon() -> Command {
    let mut cmd = Command::new(INSTALLED_BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PORTSYNCD_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Runs `cmd` to success and returns its stdout; the error names the command and its stderr.
fn stdout_of(cmd: &mut Command) -> anyhow::Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot start {line}"))?;
    if !out.status.success() {
        bail!("{line} failed with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The config text with each `# key = value` line turned into `key = value`; prose comments stay.
fn uncomment_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let body = line.strip_prefix("# ").unwrap_or(line);
        let is_key = body.split_once(" = ").is_some_and(|(k, _)| {
            !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
        out.push_str(if is_key { body } else { line });
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::uncomment_keys;

    #[test]
    fn uncomments_only_key_lines() {
        let text =
            "# Prose, with = in it.\n# batch_max = 4096\ncapture = \"auto\"\n# e.g. redis = \"unix:///r.sock\"\n";
        assert_eq!(
            uncomment_keys(text),
            "# Prose, with = in it.\nbatch_max = 4096\ncapture = \"auto\"\n# e.g. redis = \"unix:///r.sock\"\n"
        );
    }

    #[test]
    fn the_packaged_example_enables_every_commented_key() {
        let text = std::fs::read_to_string(xtask::workspace_root().join("packaging/portsyncd.toml")).unwrap();
        let enabled = uncomment_keys(&text);
        // The keys shipped commented out are exactly those the check switches on.
        assert!(enabled.contains("\nbatch_max = 4096\n"), "{enabled}");
        assert!(enabled.contains("\nmetrics_addr = "), "{enabled}");
        assert!(!enabled.contains("\nredis = "), "`redis` conflicts with `database_config`: keep it in prose");
    }
}
