//! Server-side Redis accounting: `INFO stats commandstats` in, per-command call counts and the
//! number of client socket reads out, so the commands a daemon issued can be counted from outside.

use std::collections::BTreeMap;

use anyhow::Context;

/// One `INFO stats commandstats` reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InfoSnapshot {
    /// `cmdstat_<name>:calls=<n>` per command.
    pub calls: BTreeMap<String, u64>,
    /// `total_reads_processed`: read(2)s of client sockets. A synchronous client needs at least
    /// one per round trip; a pipeline costs one per 16 KiB of requests.
    pub reads: u64,
}

/// The delta between two snapshots with the bench's own traffic removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InfoDelta {
    /// Calls per command (the INFO calls of the bench itself excluded).
    pub calls: BTreeMap<String, u64>,
    /// Total of `calls`.
    pub commands: u64,
    /// Client socket reads, minus the bench's own second INFO.
    pub reads: u64,
}

impl InfoSnapshot {
    /// Reads the server's counters over `con` (one INFO command).
    pub fn take(con: &mut redis::Connection) -> anyhow::Result<Self> {
        let text: String = redis::cmd("INFO").arg("stats").arg("commandstats").query(con).context("INFO")?;
        Ok(Self::parse(&text))
    }

    /// Parses the INFO text.
    pub fn parse(text: &str) -> Self {
        let mut snap = InfoSnapshot::default();
        for line in text.lines() {
            let line = line.trim_end();
            if let Some(rest) = line.strip_prefix("cmdstat_") {
                let Some((name, fields)) = rest.split_once(':') else { continue };
                let calls =
                    fields.split(',').find_map(|kv| kv.strip_prefix("calls=")).and_then(|v| v.parse::<u64>().ok());
                if let Some(c) = calls {
                    snap.calls.insert(name.to_owned(), c);
                }
            } else if let Some(v) = line.strip_prefix("total_reads_processed:") {
                snap.reads = v.parse().unwrap_or(0);
            }
        }
        snap
    }

    /// What happened between `before` and `self`, when the only command the bench sent in
    /// between is the INFO that took `self` (its read counts; INFO itself is excluded by name).
    pub fn since(&self, before: &InfoSnapshot) -> InfoDelta {
        let mut calls = BTreeMap::new();
        for (name, &n) in &self.calls {
            let d = n.saturating_sub(before.calls.get(name).copied().unwrap_or(0));
            if d > 0 && name != "info" {
                calls.insert(name.clone(), d);
            }
        }
        let commands = calls.values().sum();
        InfoDelta { calls, commands, reads: self.reads.saturating_sub(before.reads).saturating_sub(1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# Stats\r\ntotal_reads_processed:10\r\n# Commandstats\r\n\
        cmdstat_hset:calls=5,usec=10,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_info:calls=1,usec=10,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n";
    const AFTER: &str = "# Stats\r\ntotal_reads_processed:25\r\n# Commandstats\r\n\
        cmdstat_hset:calls=17,usec=30,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_evalsha:calls=2,usec=30,usec_per_call=15.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_info:calls=2,usec=20,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n";

    #[test]
    fn delta_counts_daemon_commands_not_the_bench_info() {
        let d = InfoSnapshot::parse(AFTER).since(&InfoSnapshot::parse(BEFORE));
        assert_eq!(d.calls.get("hset"), Some(&12));
        assert_eq!(d.calls.get("evalsha"), Some(&2));
        assert!(!d.calls.contains_key("info"));
        assert_eq!(d.commands, 14);
        assert_eq!(d.reads, 14);
    }

    #[test]
    fn real_server_counts_commands_between_snapshots() {
        let server = portsyncd_e2e::RedisServer::start();
        let mut bench = server.conn(0);
        let mut other = server.conn(6);
        let before = InfoSnapshot::take(&mut bench).unwrap();
        for i in 0..7 {
            redis::cmd("HSET").arg(format!("k{i}")).arg("f").arg("v").query::<()>(&mut other).unwrap();
        }
        let d = InfoSnapshot::take(&mut bench).unwrap().since(&before);
        assert_eq!(d.calls.get("hset"), Some(&7), "{d:?}");
        assert_eq!(d.commands, 7, "{d:?}");
        assert_eq!(d.reads, 7, "{d:?}");
    }
}
