//! Build script: puts the eBPF object of `portsyncd-ebpf` into `$OUT_DIR/portsyncd-ebpf.o`,
//! where `src/ebpf.rs` embeds it; see [`run`] for where the object comes from.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use portsyncd_common::ebpf_build::{INSTALL_HINT, RELEASE_OBJECT, TOOLCHAIN_MISSING_EXIT};

fn main() {
    if let Err(message) = run() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

/// Where the object comes from:
/// 1. `PORTSYNCD_EBPF_OBJECT=<path>`: used as is (e.g. a prebuilt object on a machine without the
///    eBPF toolchain), after the checks in [`check_elf`].
/// 2. Otherwise `scripts/build-ebpf.sh`, the same build `cargo xtask build-ebpf` runs
///    (incremental, so a no-op when nothing changed). `PORTSYNCD_EBPF_FEATURES=debug` selects
///    the logging variant. A missing toolchain fails the build with the command that installs
///    it: an object left from an earlier build may not match these sources, and a stale filter
///    is worse than no build.
///
/// The daemon checks the embedded object again at start (`ebpf::verify_embedded_object`).
///
/// Why not aya-build (0.2.0, read for this): it always compiles the program with
/// `-C debuginfo=2 -C link-arg=--btf`, so the object would carry BTF that aya then sanitises and
/// loads at every start, while this filter reads only stable UAPI and is loaded without BTF to
/// keep the attach cheap; it runs `cargo build --package` in the calling workspace, where
/// `portsyncd-ebpf` is deliberately not a member (it builds with another toolchain); it builds
/// only `--release`, where `cargo xtask build-ebpf --dev` needs the dev profile; and a missing
/// toolchain ends in rustup's error instead of the install command. Ours is one script for
/// both callers, with the object path and exit status defined once
/// (`portsyncd_common::ebpf_build`).
fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR unset")?);
    let root = manifest_dir.parent().ok_or("portsyncd has no parent directory")?.to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR unset")?);
    println!("cargo:rerun-if-env-changed=PORTSYNCD_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=PORTSYNCD_EBPF_FEATURES");

    let object = match env::var_os("PORTSYNCD_EBPF_OBJECT") {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            path
        }
        None => build(&root)?,
    };
    check_elf(&object)?;
    git_commit(&root);
    let dest = out_dir.join("portsyncd-ebpf.o");
    fs::copy(&object, &dest)
        .map_err(|e| format!("copying eBPF object {} to {}: {e}", object.display(), dest.display()))?;
    Ok(())
}

/// `PORTSYNCD_GIT_COMMIT` for `--version`: the commit the binary was built from ("unknown"
/// outside a git checkout, "+dirty" with uncommitted changes is not tracked: the commit names
/// what was reviewed).
fn git_commit(root: &Path) {
    let git = root.join(".git");
    for f in ["HEAD", "packed-refs", "refs/heads"] {
        if git.join(f).exists() {
            println!("cargo:rerun-if-changed={}", git.join(f).display());
        }
    }
    let commit = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PORTSYNCD_GIT_COMMIT={commit}");
}

/// `EM_BPF` in an ELF header's `e_machine`.
const EM_BPF: u16 = 247;

/// A 64-bit little-endian ELF for the BPF machine: anything else cannot be our object.
fn check_elf(path: &Path) -> Result<(), String> {
    let bytes = fs::read(path).map_err(|e| format!("reading eBPF object {}: {e}", path.display()))?;
    let machine = bytes.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err(format!("eBPF object {} is not a 64-bit little-endian ELF file", path.display()));
    }
    if machine != Some(EM_BPF) {
        return Err(format!("eBPF object {} is an ELF for machine {machine:?}, not BPF ({EM_BPF})", path.display()));
    }
    Ok(())
}

/// Runs the shared build script and returns the object it produced.
///
/// A self-built object is not itself a rerun trigger: it is a function of the inputs listed here
/// (and `PORTSYNCD_EBPF_FEATURES`), and watching it would rerun this script, and recompile the
/// crate, once more after every rebuild (its mtime is newer than this run's start).
fn build(root: &Path) -> Result<PathBuf, String> {
    for input in [
        "portsyncd-ebpf/src",
        "portsyncd-ebpf/Cargo.toml",
        "portsyncd-ebpf/Cargo.lock",
        "portsyncd-ebpf/.cargo/config.toml",
        "portsyncd-common/src",
        "portsyncd-common/Cargo.toml",
        "scripts/build-ebpf.sh",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    let object = root.join(RELEASE_OBJECT);
    let script = root.join("scripts/build-ebpf.sh");
    let status =
        Command::new("bash").arg(&script).status().map_err(|e| format!("running `bash {}`: {e}", script.display()))?;
    match status.code() {
        Some(0) if object.is_file() => Ok(object),
        Some(0) => Err(format!("`bash {}` succeeded but {} is missing", script.display(), object.display())),
        Some(TOOLCHAIN_MISSING_EXIT) => Err(format!(
            "the eBPF toolchain (Debian rustc + rust-src, bpf-linker) is missing, so the socket filter \
             cannot be built from these sources: {INSTALL_HINT} (or set PORTSYNCD_EBPF_OBJECT to a prebuilt object)"
        )),
        _ => Err(format!("`bash {}` failed ({status})", script.display())),
    }
}
