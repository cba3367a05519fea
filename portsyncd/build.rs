//! Build script: puts the eBPF object of `portsyncd-ebpf` into `$OUT_DIR/portsyncd-ebpf.o`,
//! where `src/ebpf.rs` embeds it; see [`run`] for where the object comes from.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Exit status of `scripts/build-ebpf.sh` when the toolchain is missing.
const TOOLCHAIN_MISSING: i32 = 3;
const INSTALL_HINT: &str = "run `bash scripts/install-ebpf-toolchain.sh && cargo xtask build-ebpf`";

fn main() {
    if let Err(message) = run() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

/// Where the object comes from, first match wins:
/// 1. `PORTSYNCD_EBPF_OBJECT=<path>`: used as is (e.g. a prebuilt object on a machine without the
///    eBPF toolchain).
/// 2. `scripts/build-ebpf.sh`, the same build `cargo xtask build-ebpf` runs (incremental, so a
///    no-op when nothing changed). `PORTSYNCD_EBPF_FEATURES=debug` selects the logging variant.
/// 3. Toolchain missing but an object from an earlier build exists: used, with a warning.
/// 4. Otherwise the build fails and says how to install the toolchain.
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
    let dest = out_dir.join("portsyncd-ebpf.o");
    fs::copy(&object, &dest)
        .map_err(|e| format!("copying eBPF object {} to {}: {e}", object.display(), dest.display()))?;
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
    let object = root.join("portsyncd-ebpf/target/bpfel-unknown-none/release/portsyncd-ebpf");
    let script = root.join("scripts/build-ebpf.sh");
    let status =
        Command::new("bash").arg(&script).status().map_err(|e| format!("running `bash {}`: {e}", script.display()))?;
    match status.code() {
        Some(0) if object.is_file() => Ok(object),
        Some(0) => Err(format!("`bash {}` succeeded but {} is missing", script.display(), object.display())),
        Some(TOOLCHAIN_MISSING) if object.is_file() => {
            println!("cargo:rerun-if-changed={}", object.display());
            println!(
                "cargo:warning=eBPF toolchain missing; embedding the existing {} (may be stale: {INSTALL_HINT})",
                object.display()
            );
            Ok(object)
        }
        Some(TOOLCHAIN_MISSING) => Err(format!(
            "the eBPF object {} does not exist and the eBPF toolchain is missing: {INSTALL_HINT} \
             (or set PORTSYNCD_EBPF_OBJECT to a prebuilt object)",
            object.display()
        )),
        _ => Err(format!("`bash {}` failed ({status})", script.display())),
    }
}
