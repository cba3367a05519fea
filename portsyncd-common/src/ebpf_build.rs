//! Facts of the eBPF build that `portsyncd/build.rs` and `cargo xtask build-ebpf` share with
//! `scripts/build-ebpf.sh` (the one place the build command lives). The script, being bash,
//! spells them again; an xtask test checks that it still says the same.

/// The release object the script writes and the daemon embeds, relative to the repository root.
pub const RELEASE_OBJECT: &str = "portsyncd-ebpf/target/bpfel-unknown-none/release/portsyncd-ebpf";

/// Exit status of `scripts/build-ebpf.sh` when the eBPF toolchain is missing.
pub const TOOLCHAIN_MISSING_EXIT: i32 = 3;

/// What to run when the toolchain is missing.
pub const INSTALL_HINT: &str = "run `bash scripts/install-ebpf-toolchain.sh && cargo xtask build-ebpf`";
