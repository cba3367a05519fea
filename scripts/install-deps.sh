#!/usr/bin/env bash
# Installs what portsyncd's demo, tests, fuzzers, benchmarks and package need on a fresh Debian
# 12 machine, as root: redis-server, iproute2, capsh (libcap2-bin), g++ (libFuzzer), the eBPF
# toolchain (Debian rustc 1.96 + rust-src, LLVM 22, bpf-linker), cargo-deb and cargo-nextest.
# Idempotent: whatever is already present is left alone.
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

# cargo-deb packs the .deb of `cargo xtask package` (and of the package step of `cargo xtask
# test`). Pinned so that every machine builds the same package; 3.8.0 needs rustc >= 1.85.
CARGO_DEB_VERSION=3.8.0
if ! command -v cargo-deb >/dev/null; then
    echo "install-deps: cargo install cargo-deb $CARGO_DEB_VERSION"
    "${CARGO:-cargo}" install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
# cargo-nextest runs the tests of `cargo xtask test` and reports each one in JSON. The machines
# CI runs on come with it; elsewhere it is built from crates.io (only registries are reachable,
# so not nextest's prebuilt archive). cargo-binstall, where present, tries a prebuilt binary
# first and builds from source itself when none can be fetched.
CARGO_NEXTEST_VERSION=0.9.143
if ! command -v cargo-nextest >/dev/null; then
    if command -v cargo-binstall >/dev/null; then
        echo "install-deps: cargo binstall cargo-nextest $CARGO_NEXTEST_VERSION"
        "${CARGO:-cargo}" binstall --no-confirm --locked "cargo-nextest@$CARGO_NEXTEST_VERSION"
    else
        echo "install-deps: cargo install cargo-nextest $CARGO_NEXTEST_VERSION (a few minutes)"
        "${CARGO:-cargo}" install cargo-nextest --locked --version "$CARGO_NEXTEST_VERSION"
    fi
fi
# The Prometheus project's reference OpenMetrics parser: the e2e tests read the daemon's scrape
# with it, as a Prometheus server would.
PROMETHEUS_CLIENT_VERSION=0.21.1
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    echo "install-deps: pip install prometheus_client $PROMETHEUS_CLIENT_VERSION"
    python3 -m pip install -q --root-user-action=ignore "prometheus_client==$PROMETHEUS_CLIENT_VERSION"
fi
command -v dpkg-deb >/dev/null || { echo "install-deps: dpkg-deb missing: not a Debian system?" >&2; exit 1; }
echo "install-deps: ok (redis-server $(redis-server --version | awk '{print $3}'), $(ip -V))"
