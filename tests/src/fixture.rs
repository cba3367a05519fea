//! The usual test set-up in one value: redis-server with CONFIG_DB ports, the orchagent stand-in,
//! a namespace and (once started) the daemon; dropped daemon first, redis last.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::daemon::{Daemon, DaemonOpts, Stats};
use crate::db::{self, Hash};
use crate::netns::{LinkState, NetNs};
use crate::orchagent::Orchagent;
use crate::redis_server::RedisServer;
use crate::Capture;

/// Redis, orchagent stand-in, namespace and daemon of one test.
#[derive(Debug)]
pub struct Fixture {
    // Field order is drop order: the daemon must stop before its namespace and Redis go away.
    /// The daemon, once started.
    pub daemon: Option<Daemon>,
    /// Consumer of APPL_DB PORT_TABLE.
    pub orch: Orchagent,
    /// The namespace the daemon runs in.
    pub ns: NetNs,
    /// Private redis-server.
    pub redis: RedisServer,
    /// Capture mode used by [`Fixture::start_daemon`].
    pub capture: Capture,
    /// CONFIG_DB ports seeded (`Ethernet0..n`).
    pub ports: Vec<String>,
}

impl Fixture {
    /// Redis with `n` CONFIG_DB ports, orchagent stand-in, empty namespace; no daemon yet.
    pub fn new(capture: Capture, n: u32) -> Self {
        crate::require_root();
        let redis = RedisServer::start();
        let ports = db::seed_config_ports(&redis, n);
        let orch = Orchagent::start(&redis);
        let ns = NetNs::new();
        Fixture { daemon: None, orch, ns, redis, capture, ports }
    }

    /// [`Fixture::new`] with the strict orchagent consumer ([`Orchagent::start_strict`]: one
    /// pops of at most `batch` keys per PUBLISH) instead of the lenient one.
    pub fn new_strict(capture: Capture, n: u32, batch: usize) -> Self {
        crate::require_root();
        let redis = RedisServer::start();
        let ports = db::seed_config_ports(&redis, n);
        let orch = Orchagent::start_strict(&redis, batch);
        let ns = NetNs::new();
        Fixture { daemon: None, orch, ns, redis, capture, ports }
    }

    /// [`Fixture::new`] plus the daemon started with default options and ready.
    pub fn start(capture: Capture, n: u32) -> Self {
        let mut fx = Self::new(capture, n);
        fx.start_daemon(DaemonOpts::new(capture));
        fx
    }

    /// Starts the daemon (replacing a previous one, which is stopped first), waits until it is
    /// ready and checks that it runs the capture mode it was asked for.
    pub fn start_daemon(&mut self, opts: DaemonOpts) -> Stats {
        if let Some(mut old) = self.daemon.take() {
            old.stop();
        }
        let want = opts.capture;
        let d = self.daemon.insert(Daemon::start(&self.ns, &self.redis, opts));
        let stats = d.wait_ready();
        if want != Capture::Auto {
            assert_eq!(
                stats.capture_mode(),
                Some(want.as_str()),
                "daemon started with --capture {want} reports capture_mode {:?} (fallback reason {:?})",
                stats.capture_mode(),
                stats.capture_fallback_reason()
            );
        }
        stats
    }

    /// The running daemon.
    pub fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().unwrap_or_else(|| panic!("daemon not started"))
    }

    /// Creates `Ethernet<i>`/`pe<i>` for each `i` and brings both ends up.
    pub fn create_ports(&self, ports: impl IntoIterator<Item = u32> + Clone) {
        self.ns.veths(ports.clone());
        self.ns.ports_up(ports);
    }

    /// Polls until STATE_DB equals the kernel for `ports` and `settled` holds for the kernel.
    pub fn wait_state_matches_kernel(
        &self,
        ports: &[String],
        timeout: Duration,
        settled: impl Fn(&BTreeMap<String, LinkState>) -> bool,
    ) {
        db::wait_state_matches_kernel(&self.ns, &self.redis, ports, timeout, settled);
    }

    /// STATE_DB `PORT_TABLE|<name>` (empty if absent).
    pub fn state_entry(&self, name: &str) -> Hash {
        db::hgetall(&mut self.redis.conn(db::STATE_DB), &format!("PORT_TABLE|{name}"))
    }

    /// APPL_DB `PORT_TABLE:<name>` (empty if absent).
    pub fn appl_entry(&self, name: &str) -> Hash {
        db::hgetall(&mut self.redis.conn(db::APPL_DB), &format!("PORT_TABLE:{name}"))
    }

    /// Waits until STATE_DB `PORT_TABLE|<name>` is exactly `want`.
    pub fn wait_state_entry(&self, name: &str, want: &Hash) {
        let mut con = self.redis.conn(db::STATE_DB);
        let key = format!("PORT_TABLE|{name}");
        crate::poll::wait_for(crate::poll::DEFAULT_TIMEOUT, &format!("STATE_DB {key} = {want:?}"), || {
            let got = db::hgetall(&mut con, &key);
            if &got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        });
    }

    /// Waits until STATE_DB `PORT_TABLE|<name>` does not exist.
    pub fn wait_state_absent(&self, name: &str) {
        let mut con = self.redis.conn(db::STATE_DB);
        let key = format!("PORT_TABLE|{name}");
        crate::poll::wait_for(crate::poll::DEFAULT_TIMEOUT, &format!("STATE_DB {key} to be deleted"), || {
            let got = db::hgetall(&mut con, &key);
            if got.is_empty() {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        });
    }
}
