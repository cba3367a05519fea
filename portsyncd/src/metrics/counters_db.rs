//! SONiC component stats (SONiC HLD "component stats", SONiC#2312): COUNTERS_DB hashes
//! `PORTSYNCD_STATS:<entity>` with unsigned integer fields, written at most once a second and
//! only the entities whose values changed. The entities are groups of the stats snapshot, so
//! every counter is defined once (its serde struct) and named the same everywhere.

use std::collections::BTreeMap;

use crate::redis_conn::{DbConn, WriteError};
use crate::sonic_db::DbLocation;

/// The table name of our hashes.
pub const TABLE: &str = "PORTSYNCD_STATS";

/// Entity -> field -> value.
pub type Entities = BTreeMap<String, BTreeMap<String, u64>>;

/// The snapshot's groups as entities: `counters`, `source`, `coalesce`, `ebpf` (eBPF mode),
/// `warm_restart` (its integer fields), `latency` (event-to-Redis p50/p99/max in µs, count) and
/// `health` (`status`: 0 healthy, 1 degraded, 2 unhealthy; then 1 or 0 per reason).
pub fn entities(snapshot: &serde_json::Value) -> Entities {
    let mut out = Entities::new();
    for group in ["counters", "source", "coalesce", "ebpf", "warm_restart"] {
        let Some(obj) = snapshot.get(group).and_then(|v| v.as_object()) else { continue };
        let fields: BTreeMap<String, u64> = obj.iter().filter_map(|(k, v)| Some((k.clone(), v.as_u64()?))).collect();
        if !fields.is_empty() {
            out.insert(group.to_owned(), fields);
        }
    }
    if let Some(l) = snapshot.pointer("/latency/latency_us") {
        let mut fields = BTreeMap::new();
        for (name, key) in [("p50_us", "p50"), ("p99_us", "p99"), ("max_us", "max"), ("count", "count")] {
            if let Some(v) = l.get(key).and_then(|v| v.as_f64()) {
                fields.insert(name.to_owned(), v.round().max(0.0) as u64);
            }
        }
        out.insert("latency".to_owned(), fields);
    }
    if let Some((code, reasons)) = crate::health::from_snapshot(snapshot) {
        let mut fields = BTreeMap::from([("status".to_owned(), code)]);
        for (r, on) in reasons {
            fields.insert(r.as_str().to_owned(), u64::from(on));
        }
        out.insert("health".to_owned(), fields);
    }
    out
}

/// The entities of `now` that differ from `last` (all of them the first time).
pub fn changed<'a>(last: &Entities, now: &'a Entities) -> Vec<(&'a String, &'a BTreeMap<String, u64>)> {
    now.iter().filter(|(e, f)| last.get(*e) != Some(*f)).collect()
}

/// Writes the changed entities to COUNTERS_DB.
#[derive(Debug)]
pub struct CountersDbExport {
    conn: DbConn,
    loc: DbLocation,
    last: Entities,
    /// `instance<N>:` when several instances share the switch, so each has its own hashes.
    prefix: String,
}

impl CountersDbExport {
    /// An exporter to `loc` (connects lazily).
    pub fn new(loc: DbLocation, timeout: std::time::Duration) -> Self {
        Self {
            conn: DbConn::new("COUNTERS_DB", loc.clone(), Vec::new(), timeout),
            loc,
            last: Entities::new(),
            prefix: String::new(),
        }
    }

    /// One of several instances: its hashes are `PORTSYNCD_STATS:instance<id>:<entity>`.
    pub fn for_instance(mut self, id: u16) -> Self {
        self.prefix = format!("instance{id}:");
        self
    }

    /// Writes the entities of `snapshot` that changed since the last successful export, in
    /// one round trip; returns how many hashes were written.
    pub async fn export(&mut self, snapshot: &serde_json::Value) -> Result<usize, WriteError> {
        let now = entities(snapshot);
        let changed = changed(&self.last, &now);
        if changed.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for (entity, fields) in &changed {
            let pairs: Vec<(&String, u64)> = fields.iter().map(|(k, v)| (k, *v)).collect();
            pipe.hset_multiple(self.loc.key(TABLE, &format!("{}{entity}", self.prefix)), &pairs).ignore();
        }
        let n = changed.len();
        self.conn.query::<()>("HSET PORTSYNCD_STATS", &pipe).await?;
        self.last = now;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_become_entities_and_only_changed_ones_are_written() {
        let snap = serde_json::json!({
            "capture_mode": "ebpf",
            "counters": {"events": 5, "refusals": 0},
            "source": {"datagrams": 2},
            "latency": {"latency_us": {"p50": 12.4, "p99": 80.6, "max": 100.0, "count": 5}},
            "health": {"status": "degraded", "code": 1, "reasons": ["refused_writes"]},
        });
        let e = entities(&snap);
        assert_eq!(e.keys().collect::<Vec<_>>(), ["counters", "health", "latency", "source"]);
        assert_eq!(e["health"]["status"], 1);
        assert_eq!(e["health"]["refused_writes"], 1);
        assert_eq!(e["health"]["redis_down"], 0);
        assert_eq!(e["latency"]["p99_us"], 81);
        assert_eq!(e["counters"]["events"], 5);
        assert_eq!(changed(&Entities::new(), &e).len(), 4, "everything the first time");
        let mut later = e.clone();
        later.get_mut("counters").unwrap().insert("events".into(), 6);
        let c = changed(&e, &later);
        assert_eq!(c.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["counters"]);
        assert!(changed(&later, &later).is_empty(), "nothing changed, nothing written");
    }
}
