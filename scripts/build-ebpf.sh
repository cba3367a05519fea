#!/usr/bin/env bash
# Builds the eBPF object portsyncd-ebpf/target/bpfel-unknown-none/<profile>/portsyncd-ebpf.
# The one place the build command lives: `cargo xtask build-ebpf` and portsyncd/build.rs both run
# this script. Arguments are passed to cargo; `--dev` selects the dev profile instead of release.
# PORTSYNCD_EBPF_FEATURES (e.g. `debug`: kernel-side aya-log calls) selects crate features, so
# both callers build the same variant.
# Exit status 3: the toolchain is missing (the message says how to install it).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# We may be running inside another cargo (build.rs, xtask): its CARGO_*/RUSTC*/RUSTUP_TOOLCHAIN
# variables (target dir, rustflags, wrapper, toolchain) must not leak into the nested build.
while IFS= read -r var; do
    case "$var" in
        CARGO_HOME | RUSTUP_HOME) ;;
        CARGO* | RUST*) unset "$var" ;;
    esac
done < <(compgen -e)
# Variables cargo sets for build scripts (we may run from portsyncd/build.rs). aya-build reruns
# its build scripts when HOST changes, so leaking them would rebuild aya-ebpf on every switch
# between `cargo xtask build-ebpf` and a portsyncd build.
unset HOST TARGET OUT_DIR OPT_LEVEL PROFILE DEBUG NUM_JOBS

# rustup's cargo must win over Debian's /usr/bin/cargo, and bpf-linker lives there too.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$cargo_bin:$PATH"

missing=()
command -v rustup >/dev/null 2>&1 || missing+=("rustup")
if command -v rustup >/dev/null 2>&1 && ! rustup toolchain list | grep -q '^deb-1\.96'; then
    missing+=("rustup toolchain deb-1.96")
fi
[ -d /usr/lib/rustlib/src/rust/library/core ] || missing+=("rust-web-src (/usr/lib/rustlib/src/rust)")
command -v bpf-linker >/dev/null 2>&1 || missing+=("bpf-linker")
if [ "${#missing[@]}" -gt 0 ]; then
    echo "eBPF toolchain missing: ${missing[*]}; run \`bash scripts/install-ebpf-toolchain.sh\`" >&2
    exit 3
fi

profile=(--release)
args=()
for arg in "$@"; do
    if [ "$arg" = "--dev" ]; then profile=(); else args+=("$arg"); fi
done

if [ -n "${PORTSYNCD_EBPF_FEATURES:-}" ]; then
    args+=(--features "$PORTSYNCD_EBPF_FEATURES")
fi

cd "$root/portsyncd-ebpf"
cmd=(cargo +deb-1.96 build -Z build-std=core --target bpfel-unknown-none "${profile[@]}" "${args[@]}")
# The Debian compiler accepts -Z only with RUSTC_BOOTSTRAP; set for this build alone.
if ! RUSTC_BOOTSTRAP=1 "${cmd[@]}"; then
    echo "eBPF build failed: (cd $PWD && RUSTC_BOOTSTRAP=1 ${cmd[*]})" >&2
    exit 1
fi
