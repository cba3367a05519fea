//! portsyncd: keeps SONiC's Redis databases equal to the kernel's view of the switch ports.
//!
//! Data flows one way: [`source`] (eBPF ring buffer or netlink socket, plus the
//! [`netlink::dump`] for initial sync and resync) -> [`batch`] (coalesce per port) ->
//! [`reconcile`] (SONiC LinkSync rules, diff against what Redis already holds) ->
//! [`pipeline`] (when changes are written; refusals retried per port) -> [`writer`] (one
//! pipelined round trip per batch, one reply per port). [`daemon`] wires the stages together;
//! [`startup`] performs the C++ daemon's start-up sequence against CONFIG_DB/APPL_DB/STATE_DB.
#![deny(clippy::unwrap_used, clippy::expect_used)]
// Out-of-bounds input must be an error, never a panic; tests index freely.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod atomic_file;
pub mod batch;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod ebpf;
pub mod error;
pub mod health;
pub mod instances;
pub mod linksync;
pub mod logging;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod partition;
pub mod pipeline;
pub mod producer;
pub mod reconcile;
pub mod redis_conn;
pub mod selfheal;
pub mod sonic_db;
pub mod source;
pub mod startup;
pub mod timer;
pub mod warm_restart;
pub mod watchdog;
pub mod writer;

pub use config::Config;
pub use daemon::run;
pub use error::Error;
