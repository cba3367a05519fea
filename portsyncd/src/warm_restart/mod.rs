//! Warm restart: the port-state file ([`state_file`]) and turning it (or STATE_DB itself, when
//! the file was not written at a clean shutdown) into the baseline the post-restart dump is
//! diffed against, so a restart with no link change writes nothing.

pub mod metrics;
pub mod saver;
pub mod state_file;

use std::collections::BTreeMap;

use crate::linksync::{PortMap, PortName, PortSet, PortState};
use crate::redis_conn::{DbConn, WriteError};
use crate::sonic_db::{SonicDbs, PORT_TABLE};
use state_file::PortRecord;

/// The file's records as reconcile baseline.
pub fn baseline_from_records(records: &BTreeMap<String, PortRecord>) -> PortMap<PortState> {
    records
        .iter()
        .filter_map(|(name, r)| {
            let n = PortName::new(name.as_bytes())?;
            Some((n, PortState { admin_up: r.admin_up, oper_up: r.oper_up, mtu: r.mtu }))
        })
        .collect()
}

/// What we wrote, as file records.
pub fn records_from_state(
    written: &BTreeMap<String, PortState>,
    ifindexes: &PortMap<u32>,
) -> BTreeMap<String, PortRecord> {
    written
        .iter()
        .map(|(name, s)| {
            let ifindex = PortName::new(name.as_bytes()).and_then(|n| ifindexes.get(&n).copied()).unwrap_or(0);
            let flags = (u32::from(s.admin_up) * portsyncd_common::IFF_UP)
                | (u32::from(s.oper_up) * portsyncd_common::IFF_RUNNING);
            (name.clone(), PortRecord { ifindex, admin_up: s.admin_up, oper_up: s.oper_up, mtu: s.mtu, flags })
        })
        .collect()
}

/// Reads what STATE_DB `PORT_TABLE|<p>` holds for `names` and for every `Ethernet*` /
/// `PortChannel*` entry already there (so that a port deleted while the daemon was down is found
/// even without a state file). Reads only. Entries without our four fields (e.g. intfmgrd's
/// sub-interface rows) are left out: they are neither ours to delete nor a baseline.
pub async fn baseline_from_state_db(
    dbs: &SonicDbs,
    names: &[PortName],
    timeout: std::time::Duration,
) -> Result<PortMap<PortState>, WriteError> {
    let mut conn = DbConn::new("STATE_DB", dbs.state.clone(), Vec::new(), timeout);
    let mut found: Vec<Vec<String>> = Vec::new();
    for prefix in crate::linksync::PORT_PREFIXES {
        found.push(scan_keys(&mut conn, &format!("{}*", dbs.state.key(PORT_TABLE, prefix))).await?);
    }
    let key_prefix = dbs.state.key(PORT_TABLE, "");
    let mut all: PortSet = names.iter().copied().collect();
    all.extend(found.iter().flatten().filter_map(|k| PortName::new(k.strip_prefix(&key_prefix)?.as_bytes())));
    let names: Vec<PortName> = all.into_iter().collect();
    let mut pipe = redis::pipe();
    for n in &names {
        pipe.cmd("HMGET").arg(dbs.state.key(PORT_TABLE, n.as_str())).arg(&crate::writer::STATE_FIELDS[..]);
    }
    if names.is_empty() {
        return Ok(PortMap::default());
    }
    let rows: Vec<Vec<Option<String>>> = conn.query("HMGET STATE_DB PORT_TABLE", &pipe).await?;
    Ok(names.iter().zip(rows).filter_map(|(n, row)| Some((*n, parse_row(&row)?))).collect())
}

/// Every key matching `pattern`, by SCAN: unlike KEYS it does not block Redis for the whole
/// keyspace at once.
async fn scan_keys(conn: &mut DbConn, pattern: &str) -> Result<Vec<String>, WriteError> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = conn
            .query_one(
                "SCAN STATE_DB PORT_TABLE",
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000),
            )
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Our four fields of a STATE_DB row (`state`, `netdev_oper_status`, `admin_status`, `mtu`)
/// as the state they describe; `None` unless all four are there and valid.
pub fn parse_row(row: &[Option<String>]) -> Option<PortState> {
    let updown = |v: &Option<String>| match v.as_deref() {
        Some("up") => Some(true),
        Some("down") => Some(false),
        _ => None,
    };
    if row.first()?.as_deref() != Some("ok") {
        return None;
    }
    Some(PortState {
        oper_up: updown(row.get(1)?)?,
        admin_up: updown(row.get(2)?)?,
        mtu: row.get(3)?.as_deref()?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_db_rows_parse_only_when_complete() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            parse_row(&[s("ok"), s("up"), s("down"), s("9100")]),
            Some(PortState { oper_up: true, admin_up: false, mtu: 9100 })
        );
        assert_eq!(parse_row(&[None, s("up"), s("down"), s("9100")]), None);
        assert_eq!(parse_row(&[s("ok"), s("sideways"), s("down"), s("9100")]), None);
        assert_eq!(parse_row(&[s("ok"), s("up"), s("down"), s("big")]), None);
    }

    #[test]
    fn records_round_trip_to_baseline() {
        let n = PortName::new(b"Ethernet0").unwrap();
        let written: BTreeMap<String, PortState> =
            [("Ethernet0".to_owned(), PortState { admin_up: true, oper_up: true, mtu: 9100 })].into();
        let recs = records_from_state(&written, &[(n, 7)].into_iter().collect());
        assert_eq!(recs["Ethernet0"].ifindex, 7);
        assert_eq!(recs["Ethernet0"].flags, 0x41);
        assert_eq!(baseline_from_records(&recs)[&n], written["Ethernet0"]);
    }
}
