#!/usr/bin/env bash
# Installs what portsyncd's demo, tests, fuzzers and benchmarks need on a fresh Debian 12
# machine, as root: redis-server, iproute2, capsh (libcap2-bin), g++ (libFuzzer), and the eBPF
# toolchain (Debian rustc 1.96 + rust-src, LLVM 22, bpf-linker). Idempotent: whatever is already
# present is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: must run as root (apt-get, network namespaces)" >&2
    exit 1
fi

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v ip >/dev/null || need+=(iproute2)
command -v capsh >/dev/null || need+=(libcap2-bin)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v c++ >/dev/null || need+=(g++) # libFuzzer (fuzz/, `cargo xtask fuzz`)
if [ ${#need[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

bash scripts/install-ebpf-toolchain.sh
echo "install-deps: ok (redis-server $(redis-server --version | awk '{print $3}'), $(ip -V))"
