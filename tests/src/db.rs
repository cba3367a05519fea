//! Redis readers and writers for assertions: CONFIG_DB seeding in, whole-database snapshots and
//! STATE_DB-versus-kernel comparisons out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::netns::NetNs;
use crate::redis_server::RedisServer;

/// SONiC database ids (as in the harness's database_config.json).
pub const APPL_DB: u32 = 0;
/// CONFIG_DB id.
pub const CONFIG_DB: u32 = 4;
/// STATE_DB id.
pub const STATE_DB: u32 = 6;

/// Field/value pairs of one hash.
pub type Hash = BTreeMap<String, String>;

/// One Redis value, in a form that compares and prints deterministically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbValue {
    /// A string key.
    String(String),
    /// A hash.
    Hash(Hash),
    /// A set (sorted).
    Set(BTreeSet<String>),
    /// A list.
    List(Vec<String>),
    /// Any other type, by name.
    Other(String),
}

/// Every key of one database with its value.
pub type DbSnapshot = BTreeMap<String, DbValue>;

/// HGETALL `key`.
pub fn hgetall(con: &mut redis::Connection, key: &str) -> Hash {
    redis::cmd("HGETALL").arg(key).query(con).unwrap_or_else(|e| panic!("HGETALL {key}: {e}"))
}

/// Polls until hash `key` in database `db` is exactly `want` (empty `want` = key absent).
pub fn wait_hash(redis: &RedisServer, db: u32, key: &str, want: &Hash) {
    let mut con = redis.conn(db);
    crate::poll::wait_for(crate::poll::DEFAULT_TIMEOUT, &format!("db {db} {key} = {want:?}"), || {
        let got = hgetall(&mut con, key);
        if &got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
}

/// Builds a [`Hash`] from pairs.
pub fn hash(pairs: &[(&str, &str)]) -> Hash {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// KEYS `pattern`, sorted.
pub fn keys(con: &mut redis::Connection, pattern: &str) -> Vec<String> {
    let mut k: Vec<String> =
        redis::cmd("KEYS").arg(pattern).query(con).unwrap_or_else(|e| panic!("KEYS {pattern}: {e}"));
    k.sort();
    k
}

/// Whole database `db`.
pub fn db_snapshot(redis: &RedisServer, db: u32) -> DbSnapshot {
    let mut con = redis.conn(db);
    let mut snap = DbSnapshot::new();
    for key in keys(&mut con, "*") {
        let ty: String = redis::cmd("TYPE").arg(&key).query(&mut con).unwrap_or_else(|e| panic!("TYPE {key}: {e}"));
        let v = match ty.as_str() {
            "string" => DbValue::String(redis::cmd("GET").arg(&key).query(&mut con).unwrap_or_default()),
            "hash" => DbValue::Hash(hgetall(&mut con, &key)),
            "set" => DbValue::Set(redis::cmd("SMEMBERS").arg(&key).query(&mut con).unwrap_or_default()),
            "list" => DbValue::List(redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query(&mut con).unwrap_or_default()),
            // Deleted between KEYS and TYPE.
            "none" => continue,
            other => DbValue::Other(other.to_owned()),
        };
        snap.insert(key, v);
    }
    snap
}

/// All of APPL_DB.
pub fn appl_db_snapshot(redis: &RedisServer) -> DbSnapshot {
    db_snapshot(redis, APPL_DB)
}

/// All of STATE_DB.
pub fn state_db_snapshot(redis: &RedisServer) -> DbSnapshot {
    db_snapshot(redis, STATE_DB)
}

/// All of CONFIG_DB.
pub fn config_db_snapshot(redis: &RedisServer) -> DbSnapshot {
    db_snapshot(redis, CONFIG_DB)
}

/// STATE_DB `PORT_TABLE|*` as name -> fields.
pub fn state_db_port_table(redis: &RedisServer) -> BTreeMap<String, Hash> {
    let mut con = redis.conn(STATE_DB);
    keys(&mut con, "PORT_TABLE|*")
        .into_iter()
        .filter_map(|k| {
            // A row a test broke on purpose (a string, WRONGTYPE for HGETALL) is not a row.
            let h: Hash = match redis::cmd("HGETALL").arg(&k).query(&mut con) {
                Ok(h) => h,
                Err(e) if e.code() == Some("WRONGTYPE") => return None,
                Err(e) => panic!("HGETALL {k}: {e}"),
            };
            let name = k.strip_prefix("PORT_TABLE|")?.to_owned();
            // A key deleted between KEYS and HGETALL reads as empty: it is gone.
            (!h.is_empty()).then_some((name, h))
        })
        .collect()
}

/// APPL_DB `PORT_TABLE:*` (the consumed hashes) as key -> fields.
pub fn appl_db_port_table(redis: &RedisServer) -> BTreeMap<String, Hash> {
    let mut con = redis.conn(APPL_DB);
    keys(&mut con, "PORT_TABLE:*")
        .into_iter()
        .filter_map(|k| {
            let h = hgetall(&mut con, &k);
            let name = k.strip_prefix("PORT_TABLE:")?.to_owned();
            (!h.is_empty()).then_some((name, h))
        })
        .collect()
}

/// `Ethernet<i>` for each `i`.
pub fn port_names(ports: impl IntoIterator<Item = u32>) -> Vec<String> {
    ports.into_iter().map(|i| format!("Ethernet{i}")).collect()
}

/// The CONFIG_DB `PORT|Ethernet<i>` fields the harness seeds (what sonic-cfggen would write).
pub fn config_port_fields(i: u32) -> Vec<(String, String)> {
    let lanes = (0..4).map(|l| (i * 4 + l).to_string()).collect::<Vec<_>>().join(",");
    vec![
        ("admin_status".into(), "up".into()),
        ("alias".into(), format!("etp{i}")),
        ("index".into(), i.to_string()),
        ("lanes".into(), lanes),
        ("mtu".into(), "9100".into()),
        ("speed".into(), "100000".into()),
    ]
}

/// Writes CONFIG_DB `PORT|Ethernet<i>` for `i` in `0..n` (one HSET each); returns the names.
pub fn seed_config_ports(redis: &RedisServer, n: u32) -> Vec<String> {
    seed_config_port_list(redis, 0..n)
}

/// Writes CONFIG_DB `PORT|Ethernet<i>` for each given `i`; returns the names.
pub fn seed_config_port_list(redis: &RedisServer, ports: impl IntoIterator<Item = u32>) -> Vec<String> {
    let mut con = redis.conn(CONFIG_DB);
    let mut names = Vec::new();
    let mut pipe = redis::pipe();
    for i in ports {
        let name = format!("Ethernet{i}");
        let mut cmd = redis::cmd("HSET");
        cmd.arg(format!("PORT|{name}"));
        for (f, v) in config_port_fields(i) {
            cmd.arg(f).arg(v);
        }
        pipe.add_command(cmd).ignore();
        names.push(name);
    }
    if !names.is_empty() {
        pipe.query::<()>(&mut con).unwrap_or_else(|e| panic!("seeding CONFIG_DB PORT: {e}"));
    }
    names
}

/// The 4 fields portsyncd owns in STATE_DB `PORT_TABLE|<p>` for a link in this kernel state.
pub fn expected_state_fields(link: &crate::netns::LinkState) -> Hash {
    let updown = |b: bool| if b { "up" } else { "down" }.to_owned();
    BTreeMap::from([
        ("admin_status".to_owned(), updown(link.admin_up)),
        ("mtu".to_owned(), link.mtu.to_string()),
        ("netdev_oper_status".to_owned(), updown(link.oper_up)),
        ("state".to_owned(), "ok".to_owned()),
    ])
}

/// The exact STATE_DB `PORT_TABLE|<p>` row portsyncd writes for this admin/oper/mtu.
pub fn port_state(admin_up: bool, oper_up: bool, mtu: u32) -> Hash {
    expected_state_fields(&crate::netns::LinkState { ifindex: 0, flags: 0, admin_up, oper_up, mtu })
}

/// Ports whose STATE_DB row differs from the kernel (one line each; empty = all match). Only the
/// 4 portsyncd-owned fields are compared.
pub fn state_db_mismatches(ns: &NetNs, redis: &RedisServer, ports: &[String]) -> Vec<String> {
    let links = ns.links();
    let table = state_db_port_table(redis);
    let mut bad = Vec::new();
    for p in ports {
        let Some(link) = links.get(p) else {
            bad.push(format!("{p}: no such netdev in the kernel"));
            continue;
        };
        let want = expected_state_fields(link);
        let got: Hash = table
            .get(p)
            .map(|h| h.iter().filter(|(k, _)| want.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        if got != want {
            bad.push(format!("{p}: kernel {want:?}, STATE_DB {got:?}"));
        }
    }
    bad
}

/// Asserts (once, no polling) that STATE_DB equals the kernel for every port in `ports`.
pub fn assert_state_matches_kernel(ns: &NetNs, redis: &RedisServer, ports: &[String]) {
    let bad = state_db_mismatches(ns, redis, ports);
    assert!(bad.is_empty(), "STATE_DB differs from the kernel for {} port(s):\n{}", bad.len(), summarize(&bad));
}

/// Polls until STATE_DB equals the kernel for every port in `ports` and `kernel_settled` holds
/// for the kernel's view (e.g. "every port is oper up"), so that a transient match mid-storm
/// does not count.
pub fn wait_state_matches_kernel(
    ns: &NetNs,
    redis: &RedisServer,
    ports: &[String],
    timeout: Duration,
    kernel_settled: impl Fn(&BTreeMap<String, crate::netns::LinkState>) -> bool,
) {
    crate::poll::wait_for(timeout, &format!("STATE_DB to equal the kernel for {} ports", ports.len()), || {
        if !kernel_settled(&ns.links()) {
            return Err("kernel not settled yet".to_owned());
        }
        let bad = state_db_mismatches(ns, redis, ports);
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("{} mismatching:\n{}", bad.len(), summarize(&bad)))
        }
    })
}

/// First lines of a long list, with a count of the rest.
pub fn summarize(lines: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = lines.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("\n");
    if lines.len() > SHOWN {
        s.push_str(&format!("\n... and {} more", lines.len() - SHOWN));
    }
    s
}

/// Every `ports` link has the given admin and oper state in the kernel.
pub fn all_links(
    ports: &[String],
    admin: bool,
    oper: bool,
) -> impl Fn(&BTreeMap<String, crate::netns::LinkState>) -> bool + '_ {
    move |links| ports.iter().all(|p| links.get(p).is_some_and(|l| l.admin_up == admin && l.oper_up == oper))
}
