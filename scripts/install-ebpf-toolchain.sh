#!/usr/bin/env bash
# Installs what `scripts/build-ebpf.sh` needs on Debian 12, as root; safe to run again.
#   - rustc 1.96 + library source from Debian (rustc-web, cargo-web, rust-web-src), LLVM 22
#   - the rustup toolchain `deb-1.96` pointing at it (/usr)
#   - bpf-linker 0.13.0 built against LLVM 22, in ~/.cargo/bin
# Why this toolchain and not rustup's: ../shared/ebpf-toolchain.md (no rust-src component
# here; newer aya needs Rust 1.98).
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
caller_path="$PATH"
# rustup's `cargo +stable` must win over Debian's /usr/bin/cargo from cargo-web.
export PATH="$cargo_bin:$PATH"

log() { echo "install-ebpf-toolchain: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "install-ebpf-toolchain: must run as root (apt-get)" >&2
    exit 1
fi
command -v rustup >/dev/null 2>&1 || {
    echo "install-ebpf-toolchain: rustup not found in $cargo_bin or PATH; install rustup with a stable toolchain first" >&2
    exit 1
}

packages=(rustc-web cargo-web rust-web-src llvm-22-dev)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine has no package lists; a stale one may lack the -web packages' versions.
    if ! apt-get install -y --no-install-recommends "${packages[@]}"; then
        apt-get update
        apt-get install -y --no-install-recommends "${packages[@]}"
    fi
else
    log "Debian packages present"
fi

if rustup toolchain list | grep -q '^deb-1\.96'; then
    log "toolchain deb-1.96 already linked"
else
    log "linking toolchain deb-1.96 -> /usr"
    rustup toolchain link deb-1.96 /usr
fi

if "$cargo_bin/bpf-linker" --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    log "bpf-linker $BPF_LINKER_VERSION present"
else
    log "building bpf-linker $BPF_LINKER_VERSION against LLVM 22 (about a minute)"
    # Without LLVM_PREFIX its build script takes the first llvm-config on PATH (LLVM 14 here).
    LLVM_PREFIX=/usr/lib/llvm-22 cargo +stable install "bpf-linker@$BPF_LINKER_VERSION" \
        --locked --no-default-features --features llvm-22
fi

# scripts/build-ebpf.sh puts $cargo_bin first itself; an interactive shell needs it too, or
# `cargo` is Debian's 1.96 from /usr/bin rather than rustup's.
first=""
IFS=: read -r -a dirs <<<"$caller_path"
for d in "${dirs[@]}"; do
    if [ "$d" = "$cargo_bin" ] || [ "$d" = /usr/bin ]; then
        first="$d"
        break
    fi
done
if [ "$first" != "$cargo_bin" ]; then
    log "WARNING: $cargo_bin is not before /usr/bin on your PATH; add: export PATH=\"$cargo_bin:\$PATH\""
fi
log "done; next: cargo xtask build-ebpf"
