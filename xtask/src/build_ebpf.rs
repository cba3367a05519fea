//! `cargo xtask build-ebpf`: builds the `portsyncd-ebpf` kernel program into the object that
//! portsyncd embeds ([`ebpf_object_path`]), through `scripts/build-ebpf.sh`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use portsyncd_common::ebpf_build::{INSTALL_HINT, RELEASE_OBJECT, TOOLCHAIN_MISSING_EXIT};
use xtask::workspace_root;

/// Options of `cargo xtask build-ebpf`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Release profile: the object portsyncd embeds. False (`--dev`): the dev profile, into
    /// `target/bpfel-unknown-none/debug` (still optimized: the verifier needs it).
    #[arg(
        long = "dev",
        action = clap::ArgAction::SetFalse,
        help = "Build the dev profile into portsyncd-ebpf/target/bpfel-unknown-none/debug instead of the release object portsyncd embeds"
    )]
    pub release: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { release: true }
    }
}

/// Where the release build puts the eBPF object (an ELF file without extension).
pub fn ebpf_object_path(workspace_root: &Path) -> PathBuf {
    workspace_root.join(RELEASE_OBJECT)
}

/// Builds the eBPF object.
///
/// The command lives in `scripts/build-ebpf.sh`, which `portsyncd/build.rs` runs too, so the two
/// cannot drift apart. It clears inherited `CARGO*`/`RUST*` variables (keeping `CARGO_HOME` and
/// `RUSTUP_HOME`) and those cargo sets for build scripts, puts `~/.cargo/bin` first on PATH and
/// runs, in `portsyncd-ebpf/`,
/// `RUSTC_BOOTSTRAP=1 cargo +deb-1.96 build -Z build-std=core --target bpfel-unknown-none --release`.
/// `PORTSYNCD_EBPF_FEATURES=debug` adds the kernel-side aya-log calls. If the toolchain is
/// missing it says to run `bash scripts/install-ebpf-toolchain.sh`.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let root = workspace_root();
    let script = root.join("scripts/build-ebpf.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).current_dir(&root);
    if !opts.release {
        cmd.arg("--dev");
    }
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    match status.code() {
        Some(0) => {
            if opts.release {
                println!("eBPF object: {}", ebpf_object_path(&root).display());
            }
            Ok(())
        }
        Some(TOOLCHAIN_MISSING_EXIT) => bail!("the eBPF toolchain is missing: {INSTALL_HINT}"),
        _ => bail!("{cmd:?} failed: {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_script_says_what_the_shared_facts_say() {
        let script = std::fs::read_to_string(workspace_root().join("scripts/build-ebpf.sh")).unwrap();
        assert!(script.contains(&format!("exit {TOOLCHAIN_MISSING_EXIT}\n")), "exit status drifted");
        let (dir, name) = RELEASE_OBJECT.rsplit_once("/release/").unwrap();
        assert!(script.contains("--target bpfel-unknown-none") && dir.ends_with("bpfel-unknown-none"));
        assert!(script.contains(&format!("portsyncd-ebpf/target/bpfel-unknown-none/<profile>/{name}")));
    }
}
