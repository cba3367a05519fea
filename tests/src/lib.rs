//! End-to-end harness for portsyncd: a private redis-server, a network namespace with veth ports,
//! an orchagent stand-in and the daemon binary, each a guard that cleans up in `Drop`, plus Redis
//! and kernel readers for the assertions. Run with `cargo test -p portsyncd-e2e` as root.

pub mod asic;
pub mod background;
pub mod daemon;
pub mod db;
pub mod fixture;
pub mod monitor;
pub mod netns;
pub mod openmetrics;
pub mod orchagent;
pub mod poll;
pub mod redis_server;
pub mod storm;
pub mod syslog;
pub mod watch;

pub use background::{BackgroundThread, StopFlag};
pub use daemon::{Daemon, DaemonOpts, RunOutput, Stats};
pub use db::{
    all_links, appl_db_port_table, appl_db_snapshot, assert_state_matches_kernel, config_db_snapshot, hash, hgetall,
    port_names, port_state, seed_config_port_list, seed_config_ports, state_db_mismatches, state_db_port_table,
    state_db_snapshot, wait_hash, wait_state_matches_kernel, DbSnapshot, DbValue, Hash, APPL_DB, CONFIG_DB, STATE_DB,
};
pub use fixture::Fixture;
pub use monitor::{MonCmd, Monitor};
pub use netns::{LinkState, NetNs};
pub use orchagent::Orchagent;
pub use poll::{wait_for, wait_until, wait_until_some, DEFAULT_TIMEOUT, STORM_TIMEOUT};
pub use redis_server::{ClientInfo, Paused, RedisServer};
pub use watch::KeyspaceWatcher;

use std::path::PathBuf;

/// How the daemon under test captures link events (`--capture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// `--capture netlink`.
    Netlink,
    /// `--capture ebpf`.
    Ebpf,
    /// `--capture auto`.
    Auto,
}

impl Capture {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Capture::Netlink => "netlink",
            Capture::Ebpf => "ebpf",
            Capture::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The workspace root (parent of this crate); xtask re-exports it as its own.
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Namespaces, veths and the daemon's capabilities all need root; say so instead of failing later
/// with a confusing `ip` error.
pub fn require_root() {
    use std::os::unix::fs::MetadataExt;
    // /proc/self is owned by the effective uid.
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    assert!(
        euid == 0,
        "the end-to-end tests need root (network namespaces, veth ports, eBPF): run them as root, \
         e.g. `sudo -E cargo test -p portsyncd-e2e`"
    );
}

/// Generates one `#[test]` per capture mode for a scenario `fn(Capture)`.
///
/// ```text
/// capture_tests!(scenario_mtu => mtu_change_updates_state_db_netlink, mtu_change_updates_state_db_ebpf);
/// ```
#[macro_export]
macro_rules! capture_tests {
    ($($scenario:path => $netlink:ident, $ebpf:ident;)+) => {
        $(
            #[test]
            fn $netlink() {
                $scenario($crate::Capture::Netlink)
            }
            #[test]
            fn $ebpf() {
                $scenario($crate::Capture::Ebpf)
            }
        )+
    };
}
