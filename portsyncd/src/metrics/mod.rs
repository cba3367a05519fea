//! Counters of every stage and the JSON stats snapshot (`--stats-file`); the exports:
//! [`counters_db`], [`prometheus`]. Latency and batch histograms live in [`latency`].

pub mod counters_db;
pub mod fields;
pub mod latency;
pub mod prometheus;

use std::path::Path;

use crate::atomic_file::{self, AtomicWriteError, Durability};

crate::described! {
    /// Event-path counters (owned by the daemon task; no atomics needed).
    #[derive(Debug, Default, Clone, Copy, serde::Serialize)]
    pub struct Counters {
        /// Events that entered the pipeline (live + dump entries).
        pub events: u64,
        /// Batches flushed.
        pub batches: u64,
        /// Link dumps run.
        pub dumps: u64,
        /// Interrupted dumps repeated.
        pub dump_intr_retries: u64,
        /// Dumps run because state may have been lost (overrun, ring overflow, Redis back).
        pub resyncs: u64,
        /// ENOBUFS overruns of the event socket.
        pub enobufs: u64,
        /// Flushes that saw eBPF ring overflow messages on the socket.
        pub ring_overflows: u64,
        /// STATE_DB HSETs.
        pub state_writes: u64,
        /// STATE_DB DELs.
        pub state_deletes: u64,
        /// Changes that needed no write (Redis already held that state).
        pub skipped_unchanged: u64,
        /// Ports written nothing because APPL_DB has no `PORT_TABLE:<p>`.
        pub not_in_appl: u64,
        /// Redis commands sent by the event path.
        pub redis_commands: u64,
        /// Redis round trips of the event path.
        pub redis_round_trips: u64,
        /// Failed Redis operations.
        pub redis_errors: u64,
        /// Redis reconnections.
        pub redis_reconnects: u64,
        /// Initial dumps that ended by timeout instead of NLMSG_DONE.
        pub eoiu_timeouts: u64,
        /// Old interfaces set admin-down at a cold start.
        pub old_interfaces_down: u64,
        /// Commands Redis refused (error replies: WRONGTYPE, MISCONF, OOM, ...); each is retried
        /// for its port alone.
        pub refusals: u64,
        /// Self-healing reconciliations run.
        pub reconciliations: u64,
        /// Rows found drifted from what we wrote (deleted or altered by someone else) and rewritten.
        pub repairs: u64,
        /// Times the event loop stood still longer than the stall watchdog allows with changes pending.
        pub stalls: u64,
        /// Lua script reloads after NOSCRIPT.
        pub script_reloads: u64,
        /// Truncated netlink datagrams (each forces a resync).
        pub truncated: u64,
        /// Rows deleted because their port was absent from a complete dump of this boot.
        pub vanished_deletes: u64,
        /// Ports absent from a dump whose rows were kept for lack of proof (a dump not complete, or a
        /// row not known to be of this boot).
        pub vanished_kept: u64,
        /// Dumps that were not complete (no NLMSG_DONE in time, or still interrupted): used to
        /// update ports, never to delete them.
        pub incomplete_dumps: u64,
        /// redis-server restarts seen (its run_id changed): the start-up publication was redone.
        pub redis_restarts: u64,
    }
}

/// Mode of the stats file: monitoring tools of other users read it.
const STATS_FILE_MODE: u32 = 0o644;

/// Why the stats snapshot could not be written; the previous file is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum StatsFileError {
    /// The snapshot could not be encoded.
    #[error("cannot encode the stats snapshot")]
    Encode(#[source] serde_json::Error),
    /// The file could not be replaced.
    #[error(transparent)]
    Write(#[from] AtomicWriteError),
}

/// Writes `value` as JSON to `path` atomically, so readers never see a half-written file. Not
/// fsynced: it is a snapshot for readers, rewritten every 200 ms, and worthless after a crash.
pub fn write_json_atomic(path: &Path, value: &serde_json::Value) -> Result<(), StatsFileError> {
    // One write(2): serde_json writes token by token, and on an unbuffered file that was
    // hundreds of system calls per snapshot, a quarter of the daemon's CPU in a long storm.
    let mut bytes = serde_json::to_vec_pretty(value).map_err(StatsFileError::Encode)?;
    bytes.push(b'\n');
    Ok(atomic_file::replace(path, &bytes, STATS_FILE_MODE, Durability::Unsynced)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_json_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stats.json");
        write_json_atomic(&p, &serde_json::json!({"a": 1})).unwrap();
        write_json_atomic(&p, &serde_json::json!({"a": 2})).unwrap();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["a"], 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }
}
