//! The C++ daemon's start-up sequence against Redis, in its order: LOGGER, switch_type,
//! warm-start check (`restore_count`), CONFIG_DB `PORT|*` -> APPL_DB `PORT_TABLE` through the
//! producer protocol, `PortConfigDone`, and the pruning of ports whose host interface already
//! existed. Output: [`Startup`], the facts the event path needs.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::producer::ProducerStateTable;
use crate::redis_conn::{DbConn, WriteError};
use crate::sonic_db::{SonicDbs, APP_NAME, CFG_PORT_TABLE, DOCKER_NAME, PORT_CONFIG_DONE, PORT_TABLE};

/// What start-up found.
#[derive(Debug, Clone)]
pub struct Startup {
    /// Warm start (restore_count was incremented).
    pub warm: bool,
    /// `WARM_RESTART_ENABLE_TABLE|system` enable=true: a system warm reboot, Redis restored from
    /// the previous boot's dump, netdevs still to be created by syncd.
    pub system_warm: bool,
    /// The restore_count now in STATE_DB.
    pub restore_count: u64,
    /// CONFIG_DB DEVICE_METADATA|localhost switch_type (default `switch`).
    pub switch_type: String,
    /// Configured ports that must be seen before PortInitDone (the C++ `g_portSet`).
    pub port_set: BTreeSet<String>,
    /// CONFIG_DB PORT entries that were skipped as malformed.
    pub malformed_ports: Vec<String>,
}

/// The steps every instance takes, in the C++ daemon's order: LOGGER, switch_type, the
/// warm-start check (`count_it`: write restore_count, the leader's job).
struct Opening {
    config: DbConn,
    switch_type: String,
    warm: bool,
    system_warm: bool,
    restore_count: u64,
}

async fn open(dbs: &SonicDbs, timeout: Duration, count_it: bool) -> Result<Opening, WriteError> {
    let mut config = DbConn::new("CONFIG_DB", dbs.config.clone(), Vec::new(), timeout);
    let mut state = DbConn::new("STATE_DB", dbs.state.clone(), Vec::new(), timeout);
    link_logger(&mut config, dbs).await?;
    let switch_type: Option<String> = config
        .query_one(
            "HGET DEVICE_METADATA",
            redis::cmd("HGET").arg(dbs.config.key("DEVICE_METADATA", "localhost")).arg("switch_type"),
        )
        .await?;
    let (warm, system_warm, restore_count) = check_warm_start(&mut state, dbs, count_it).await?;
    Ok(Opening {
        config,
        switch_type: switch_type.unwrap_or_else(|| "switch".to_owned()),
        warm,
        system_warm,
        restore_count,
    })
}

/// Runs the start-up sequence. Any Redis failure here is fatal, as in the C++ daemon.
pub async fn run(dbs: &SonicDbs, timeout: Duration) -> Result<Startup, WriteError> {
    let Opening { mut config, switch_type, warm, system_warm, restore_count } = open(dbs, timeout, true).await?;
    let (port_set, malformed_ports) = if warm {
        (BTreeSet::new(), Vec::new())
    } else {
        publish_port_config(dbs, &mut config, timeout, false).await?.unwrap_or_default()
    };
    Ok(Startup { warm, system_warm, restore_count, switch_type, port_set, malformed_ports })
}

/// The start-up of an instance other than the leader (several instances share the ports): the
/// leader publishes CONFIG_DB's ports and counts the warm start; this one links the logger,
/// reads the switch type and whether swss warm-starts, and takes the ports to wait for from the
/// leader's run (`init_ports`). `resume`: this instance took part in the leader's current run
/// before (it was restarted alone): its netdevs are not "old interfaces" and what STATE_DB holds
/// is a baseline, as at a warm start.
pub async fn run_follower(
    dbs: &SonicDbs,
    timeout: Duration,
    init_ports: BTreeSet<String>,
    resume: bool,
) -> Result<Startup, WriteError> {
    let o = open(dbs, timeout, false).await?;
    Ok(Startup {
        warm: o.warm || resume,
        system_warm: o.system_warm,
        restore_count: o.restore_count,
        switch_type: o.switch_type,
        port_set: init_ports,
        malformed_ports: Vec::new(),
    })
}

/// CONFIG_DB `PORT|*` -> APPL_DB `PORT_TABLE` through the producer protocol, then
/// `PortConfigDone`: a cold start's publication, and again after redis-server restarted empty.
/// Returns the ports to wait for before `PortInitDone` and the malformed entries skipped;
/// `None`, publishing nothing, when `require_ports` and CONFIG_DB holds no port yet (after a
/// restart it may be reloaded later).
pub async fn publish_port_config(
    dbs: &SonicDbs,
    config: &mut DbConn,
    timeout: Duration,
    require_ports: bool,
) -> Result<Option<(BTreeSet<String>, Vec<String>)>, WriteError> {
    let (ports, malformed_ports) = read_config_ports(config, dbs).await?;
    if require_ports && ports.is_empty() {
        return Ok(None);
    }
    let producer = ProducerStateTable::new(PORT_TABLE, dbs.appl.id);
    let mut appl = DbConn::new("APPL_DB", dbs.appl.clone(), vec![producer.script().clone()], timeout);
    let mut port_set: BTreeSet<String> = ports.iter().map(|(k, _)| k.clone()).collect();
    // Checked before our own writes: an entry orchagent pops from them a moment later must
    // not read as a host interface of an earlier run.
    prune_existing_host_interfaces(&mut appl, dbs, &mut port_set).await?;
    let mut pipe = redis::pipe();
    producer.add_set(&mut pipe, ports.iter().map(|(k, f)| (k.as_str(), f)));
    let count = [("count".to_owned(), ports.len().to_string())];
    producer.add_set(&mut pipe, [(PORT_CONFIG_DONE, &count[..])]);
    appl.query::<redis::Value>("APPL_DB PORT_TABLE producer set", &pipe).await?;
    tracing::info!(ports = ports.len(), "wrote CONFIG_DB ports and PortConfigDone to APPL_DB");
    Ok(Some((port_set, malformed_ports)))
}

/// CONFIG_DB `LOGGER|portsyncd`: if LOGLEVEL or LOGOUTPUT is missing, both are written.
async fn link_logger(config: &mut DbConn, dbs: &SonicDbs) -> Result<(), WriteError> {
    let key = dbs.config.key("LOGGER", APP_NAME);
    let mut pipe = redis::pipe();
    pipe.hget(&key, "LOGLEVEL").hget(&key, "LOGOUTPUT");
    let (level, output): (Option<String>, Option<String>) = config.query("HGET LOGGER", &pipe).await?;
    let missing = level.is_none() || output.is_none();
    let level = level.unwrap_or_else(|| "NOTICE".into());
    let output = output.unwrap_or_else(|| "SYSLOG".into());
    if let Some(c) = crate::logging::control() {
        c.apply(Some(&level), Some(&output));
    }
    if missing {
        let mut pipe = redis::pipe();
        pipe.hset_multiple(&key, &[("LOGLEVEL", level), ("LOGOUTPUT", output)]).ignore();
        config.query::<()>("HSET LOGGER", &pipe).await?;
    }
    Ok(())
}

/// swss-common `WarmStart::checkWarmStart("portsyncd", "swss")`; also whether the system
/// (not only swss) is warm-rebooting. `count`: write restore_count (the leader's job; the other
/// instances only read it).
async fn check_warm_start(state: &mut DbConn, dbs: &SonicDbs, count_it: bool) -> Result<(bool, bool, u64), WriteError> {
    let mut pipe = redis::pipe();
    pipe.hget(dbs.state.key("WARM_RESTART_ENABLE_TABLE", "system"), "enable")
        .hget(dbs.state.key("WARM_RESTART_ENABLE_TABLE", DOCKER_NAME), "enable")
        .hget(dbs.state.key("WARM_RESTART_TABLE", APP_NAME), "restore_count");
    let (system, swss, count): (Option<String>, Option<String>, Option<String>) =
        state.query("warm restart check", &pipe).await?;
    let enabled = system.as_deref() == Some("true") || swss.as_deref() == Some("true");
    let key = dbs.state.key("WARM_RESTART_TABLE", APP_NAME);
    let next = match (enabled, count.as_deref().map(str::parse::<u64>)) {
        (true, Some(Ok(n))) => Some(n + 1),
        (true, None) => {
            tracing::warn!("{APP_NAME} doing warm start, but restore_count not found in stateDB WARM_RESTART_TABLE table, fall back to cold start");
            None
        }
        (true, Some(Err(_))) => {
            tracing::warn!(value = ?count, "restore_count is not a number; falling back to cold start");
            None
        }
        (false, _) => None,
    };
    let (warm, value) = match next {
        Some(n) => (true, n),
        None => (false, 0),
    };
    if !count_it {
        return Ok((warm, warm && system.as_deref() == Some("true"), value.saturating_sub(1)));
    }
    let mut pipe = redis::pipe();
    pipe.hset(&key, "restore_count", value.to_string()).ignore();
    state.query::<()>("HSET restore_count", &pipe).await?;
    if warm {
        tracing::info!(restore_count = value, "{APP_NAME} doing warm start");
    }
    Ok((warm, warm && system.as_deref() == Some("true"), value))
}

type FieldValues = Vec<(String, String)>;

/// Every CONFIG_DB `PORT|<p>` hash, verbatim. Entries that are not hashes are logged and skipped.
async fn read_config_ports(
    config: &mut DbConn,
    dbs: &SonicDbs,
) -> Result<(Vec<(String, FieldValues)>, Vec<String>), WriteError> {
    tracing::info!("Getting port configuration from ConfigDB...");
    let prefix = dbs.config.key(CFG_PORT_TABLE, "");
    let keys: Vec<String> = config.query_one("KEYS PORT|*", redis::cmd("KEYS").arg(format!("{prefix}*"))).await?;
    if keys.is_empty() {
        tracing::info!("ConfigDB does not have port information, however ports can be added later on, continuing...");
        return Ok((Vec::new(), Vec::new()));
    }
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.hgetall(k);
    }
    // Read as raw values so that one malformed entry (WRONGTYPE) does not fail the others.
    let replies: Vec<redis::Value> = config.query_raw("HGETALL PORT", pipe).await?;
    let mut ports = Vec::new();
    let mut malformed = Vec::new();
    for (key, reply) in keys.iter().zip(replies) {
        let name = key[prefix.len()..].to_owned();
        match redis::from_redis_value::<Vec<(String, String)>>(reply) {
            Ok(fields) if !fields.is_empty() => ports.push((name, fields)),
            Ok(_) => tracing::warn!(port = %name, "CONFIG_DB PORT entry vanished while reading it; skipped"),
            Err(e) => {
                tracing::warn!(port = %name, error = %e, "malformed CONFIG_DB PORT entry; skipped");
                malformed.push(name);
            }
        }
    }
    ports.sort();
    Ok((ports, malformed))
}

/// C++ LinkSync constructor, step 1: a port whose APPL_DB entry has `admin_status` had its
/// host interface created in an earlier run, so it is not waited for.
async fn prune_existing_host_interfaces(
    appl: &mut DbConn,
    dbs: &SonicDbs,
    port_set: &mut BTreeSet<String>,
) -> Result<(), WriteError> {
    if port_set.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = port_set.iter().cloned().collect();
    let mut pipe = redis::pipe();
    for n in &names {
        pipe.hexists(dbs.appl.key(PORT_TABLE, n), "admin_status");
    }
    let has: Vec<bool> = appl.query("HEXISTS PORT_TABLE admin_status", &pipe).await?;
    for (n, h) in names.iter().zip(has) {
        if h {
            port_set.remove(n);
        }
    }
    Ok(())
}
