//! Several instances on one switch: the registry through which they agree on who owns what,
//! and the progress reports that let the leader send `PortInitDone` once.
//!
//! Keys (STATE_DB, tables no SONiC consumer reads):
//! - `PORTSYNCD_INSTANCE_TABLE|<id>`: one per instance, rewritten whole every second:
//!   `instances`, `partition` (the spec as given), `claims` (the names a `range`/`list` share
//!   names, comma-separated; empty for `even`), `state_file`, `pid`, `proc_start` (the
//!   process's start time in clock ticks since boot, from `/proc/<pid>/stat`), `heartbeat_ms`
//!   (Unix ms), `generation` (the leader run this report is for) and `share_seen` (`true`
//!   once every port of its share in that run's `init_ports` was seen).
//! - `PORTSYNCD_LEADER_TABLE|leader`: written by instance 0: `pid`, `proc_start`,
//!   `heartbeat_ms`, `config_done` (`true` once CONFIG_DB's ports are in APPL_DB),
//!   `generation` (a new token at every publication of CONFIG_DB -> APPL_DB, i.e. every cold
//!   start of the leader and every republication after redis-server restarted) and
//!   `init_ports` (the ports that run waits for before `PortInitDone`, comma-separated).
//!
//! An instance is *live* when its heartbeat is under [`LIVE_WINDOW`] old and its process
//! (same pid, same start time) still exists: the instances run in one container (one pid
//! namespace), as SONiC runs portsyncd in swss.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::linksync::PortName;
use crate::partition::partition_table;
use crate::redis_conn::{DbConn, WriteError};
use crate::sonic_db::{SonicDbs, CFG_PORT_TABLE};

/// Table of the per-instance records.
pub const INSTANCE_TABLE: &str = "PORTSYNCD_INSTANCE_TABLE";
/// Table of the leader's record.
pub const LEADER_TABLE: &str = "PORTSYNCD_LEADER_TABLE";
/// The leader record's key.
pub const LEADER_KEY: &str = "leader";
/// A record whose heartbeat is older than this is of a dead instance.
pub const LIVE_WINDOW: Duration = Duration::from_secs(5);
/// How often a waiting instance looks at the leader's record again.
const WAIT_POLL: Duration = Duration::from_millis(50);
/// A waiting instance says so this often.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(5);

/// Another instance's settings do not fit with ours.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Redis failed while registering.
    #[error("instance registry")]
    Redis(#[from] WriteError),
    /// A live process already runs with this id.
    #[error("instance {id} is already running (pid {pid}); each instance needs its own --instance-id")]
    AlreadyRunning {
        /// Our id.
        id: u16,
        /// The other process.
        pid: u32,
    },
    /// Instances disagree on how many they are.
    #[error("instance {other} runs with instances = {theirs}, this one with {ours}: every instance needs the same --instances")]
    InstanceCount {
        /// The other instance.
        other: u16,
        /// Its count.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// One partitions `even`, another by range or list.
    #[error("instance {other} partitions by `{theirs}`, this one by `{ours}`: `even` cannot be mixed with range or list shares")]
    PartitionKind {
        /// The other instance.
        other: u16,
        /// Its spec.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// Two shares name the same port.
    #[error("port {port} is in this instance's share and in instance {other}'s ({theirs}): shares must not overlap")]
    Overlap {
        /// The port.
        port: String,
        /// The other instance.
        other: u16,
        /// Its spec.
        theirs: String,
    },
    /// Two instances would write one warm-restart file.
    #[error("instance {other} uses the same state file {path}: give each instance its own --state-file")]
    SharedStateFile {
        /// The other instance.
        other: u16,
        /// The file.
        path: String,
    },
}

/// This process, as a record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// pid.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
}

impl ProcessId {
    /// This process.
    pub fn current() -> Self {
        let pid = std::process::id();
        Self { pid, start: proc_start(pid).unwrap_or(0) }
    }

    /// The process still exists (a reused pid has another start time).
    pub fn is_alive(&self) -> bool {
        proc_start(self.pid).is_some_and(|s| s == self.start)
    }
}

/// Field 22 of `/proc/<pid>/stat`; `None` when there is no such process.
fn proc_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Unix time in ms (the registry's clock; every instance runs on the same host).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One instance's record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceRecord {
    /// Its id.
    pub id: u16,
    /// `--instances`.
    pub instances: u16,
    /// `--partition`, as given.
    pub partition: String,
    /// The names its range or list share names.
    pub claims: Vec<String>,
    /// Its warm-restart file.
    pub state_file: String,
    /// Its process.
    pub pid: u32,
    /// Its process's start time.
    pub proc_start: u64,
    /// Unix ms of its last heartbeat.
    pub heartbeat_ms: u64,
    /// The leader run its report is for.
    pub generation: String,
    /// Every port of its share that run waits for was seen.
    pub share_seen: bool,
}

impl InstanceRecord {
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("instances", self.instances.to_string()),
            ("partition", self.partition.clone()),
            ("claims", self.claims.join(",")),
            ("state_file", self.state_file.clone()),
            ("pid", self.pid.to_string()),
            ("proc_start", self.proc_start.to_string()),
            ("heartbeat_ms", self.heartbeat_ms.to_string()),
            ("generation", self.generation.clone()),
            ("share_seen", self.share_seen.to_string()),
        ]
    }

    fn parse(id: u16, h: &HashMap<String, String>) -> Self {
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let text = |k: &str| h.get(k).cloned().unwrap_or_default();
        Self {
            id,
            instances: u16::try_from(num("instances")).unwrap_or(0),
            partition: text("partition"),
            claims: split_names(&text("claims")),
            state_file: text("state_file"),
            pid: u32::try_from(num("pid")).unwrap_or(0),
            proc_start: num("proc_start"),
            heartbeat_ms: num("heartbeat_ms"),
            generation: text("generation"),
            share_seen: text("share_seen") == "true",
        }
    }

    /// Heartbeat fresh at `now_ms` and the process still there.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.heartbeat_ms) < LIVE_WINDOW.as_millis() as u64
            && ProcessId { pid: self.pid, start: self.proc_start }.is_alive()
    }

    fn kind(&self) -> &str {
        self.partition.split(':').next().unwrap_or("")
    }
}

fn split_names(s: &str) -> Vec<String> {
    s.split(',').filter(|n| !n.is_empty()).map(str::to_owned).collect()
}

/// The leader's record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderRecord {
    /// Its process.
    pub pid: u32,
    /// Its process's start time.
    pub proc_start: u64,
    /// Unix ms of its last heartbeat.
    pub heartbeat_ms: u64,
    /// CONFIG_DB's ports are in APPL_DB for `generation`.
    pub config_done: bool,
    /// The current run.
    pub generation: String,
    /// The ports that run waits for before `PortInitDone`.
    pub init_ports: BTreeSet<String>,
    /// Unix ms at which the leader last read the instance records and gave up the ports range
    /// and list shares claim (0: never).
    pub claims_read_ms: u64,
}

impl LeaderRecord {
    fn parse(h: &HashMap<String, String>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Some(Self {
            pid: u32::try_from(num("pid")).unwrap_or(0),
            proc_start: num("proc_start"),
            heartbeat_ms: num("heartbeat_ms"),
            config_done: h.get("config_done").map(String::as_str) == Some("true"),
            generation: h.get("generation").cloned().unwrap_or_default(),
            init_ports: split_names(h.get("init_ports").map(String::as_str).unwrap_or("")).into_iter().collect(),
            claims_read_ms: num("claims_read_ms"),
        })
    }

    /// The leader process that wrote it still runs and has published this run.
    pub fn is_ready(&self, now_ms: u64) -> bool {
        self.config_done
            && !self.generation.is_empty()
            && now_ms.saturating_sub(self.heartbeat_ms) < LIVE_WINDOW.as_millis() as u64
            && ProcessId { pid: self.pid, start: self.proc_start }.is_alive()
    }
}

/// Checks our record against the others' (only live ones count: a dead instance's settings
/// bind nobody).
pub fn check_peers(me: &InstanceRecord, others: &[InstanceRecord], now_ms: u64) -> Result<(), InstanceError> {
    let mine: BTreeSet<&str> = me.claims.iter().map(String::as_str).collect();
    for o in others.iter().filter(|o| o.id != me.id && o.is_live(now_ms)) {
        if o.instances != me.instances {
            return Err(InstanceError::InstanceCount { other: o.id, theirs: o.instances, ours: me.instances });
        }
        if (o.kind() == "even") != (me.kind() == "even") {
            return Err(InstanceError::PartitionKind {
                other: o.id,
                theirs: o.partition.clone(),
                ours: me.partition.clone(),
            });
        }
        if let Some(port) = o.claims.iter().find(|c| mine.contains(c.as_str())) {
            return Err(InstanceError::Overlap { port: port.clone(), other: o.id, theirs: o.partition.clone() });
        }
        if o.state_file == me.state_file {
            return Err(InstanceError::SharedStateFile { other: o.id, path: o.state_file.clone() });
        }
    }
    Ok(())
}

/// The leader's verdict on the other instances' reports for `generation`: the ids still to
/// report (empty: `PortInitDone` may go).
pub fn not_reported(records: &[InstanceRecord], instances: u16, generation: &str) -> Vec<u16> {
    (1..instances)
        .filter(|id| !records.iter().any(|r| r.id == *id && r.generation == generation && r.share_seen))
        .collect()
}

/// Our side of the registry.
#[derive(Debug)]
pub struct Registry {
    conn: DbConn,
    dbs: SonicDbs,
    /// What we publish; `heartbeat_ms`, `generation` and `share_seen` change as we run.
    pub record: InstanceRecord,
    process: ProcessId,
    publications: u64,
    /// Unix ms just after our record was first written (see [`Self::wait_for_claims_taken`]).
    pub registered_ms: u64,
}

impl Registry {
    /// Not registered yet.
    pub fn new(dbs: &SonicDbs, record: InstanceRecord, timeout: Duration) -> Self {
        let conn = DbConn::new("STATE_DB", dbs.state.clone(), Vec::new(), timeout);
        Self { conn, dbs: dbs.clone(), record, process: ProcessId::current(), publications: 0, registered_ms: 0 }
    }

    /// Runs `pipe`, once more if the first attempt found the connection lost: after
    /// redis-server restarted, the first use of an idle connection is what notices it.
    async fn query<T: redis::FromRedisValue>(
        &mut self,
        what: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, WriteError> {
        match self.conn.query(what, pipe).await {
            Err(e) if e.is_connection_lost() => self.conn.query(what, pipe).await,
            r => r,
        }
    }

    fn instance_key(&self, id: u16) -> String {
        self.dbs.state.key(INSTANCE_TABLE, &id.to_string())
    }

    fn leader_key(&self) -> String {
        self.dbs.state.key(LEADER_TABLE, LEADER_KEY)
    }

    /// Every instance record of `instances` ids.
    pub async fn records(&mut self) -> Result<Vec<InstanceRecord>, WriteError> {
        let mut pipe = redis::pipe();
        for id in 0..self.record.instances {
            pipe.hgetall(self.instance_key(id));
        }
        let hashes: Vec<HashMap<String, String>> = self.query("HGETALL instance records", &pipe).await?;
        Ok(hashes
            .iter()
            .zip(0u16..)
            .filter(|(h, _)| !h.is_empty())
            .map(|(h, id)| InstanceRecord::parse(id, h))
            .collect())
    }

    /// The leader's record, if any.
    pub async fn leader(&mut self) -> Result<Option<LeaderRecord>, WriteError> {
        let mut pipe = redis::pipe();
        pipe.hgetall(self.leader_key());
        let (h,): (HashMap<String, String>,) = self.query("HGETALL leader record", &pipe).await?;
        Ok(LeaderRecord::parse(&h))
    }

    /// Registers: refuses to run beside a live process with our id or with settings that do
    /// not fit the live instances' (our record is withdrawn again then). Returns our id's
    /// previous record, if any: the leader run this id last took part in and whether it had
    /// reported its share seen.
    pub async fn register(&mut self) -> Result<Option<InstanceRecord>, InstanceError> {
        let now = now_ms();
        let before = self.records().await?;
        let previous = before.iter().find(|r| r.id == self.record.id);
        if let Some(p) = previous {
            if p.is_live(now) && p.pid != self.process.pid {
                return Err(InstanceError::AlreadyRunning { id: self.record.id, pid: p.pid });
            }
        }
        let previous = previous.cloned();
        self.record.pid = self.process.pid;
        self.record.proc_start = self.process.start;
        self.record.generation = previous.as_ref().map(|p| p.generation.clone()).unwrap_or_default();
        self.record.share_seen = false;
        self.beat().await?;
        self.registered_ms = now_ms();
        // Written first, read second: of two instances starting at once, each sees the other.
        let all = self.records().await?;
        if let Err(e) = check_peers(&self.record, &all, now_ms()) {
            let key = self.instance_key(self.record.id);
            let _ = self.conn.query_one::<i64>("DEL instance record", redis::cmd("DEL").arg(key)).await;
            return Err(e);
        }
        Ok(previous)
    }

    /// Writes our record with a fresh heartbeat.
    pub async fn beat(&mut self) -> Result<(), WriteError> {
        self.record.heartbeat_ms = now_ms();
        let mut pipe = redis::pipe();
        pipe.hset_multiple(self.instance_key(self.record.id), &self.record.fields()).ignore();
        self.query::<()>("HSET instance record", &pipe).await
    }

    /// Leader: our process is the leader now; until [`Self::publish_run`], the run is not
    /// ready (`config_done` false) for instances that start meanwhile.
    pub async fn leader_starting(&mut self, config_done: bool) -> Result<(), WriteError> {
        self.write_leader(vec![("config_done", config_done.to_string())]).await
    }

    /// The leader record: this process, a fresh heartbeat, and `fields`.
    async fn write_leader(&mut self, mut fields: Vec<(&'static str, String)>) -> Result<(), WriteError> {
        fields.extend([
            ("pid", self.process.pid.to_string()),
            ("proc_start", self.process.start.to_string()),
            ("heartbeat_ms", now_ms().to_string()),
        ]);
        let mut pipe = redis::pipe();
        pipe.hset_multiple(self.leader_key(), &fields).ignore();
        self.query::<()>("HSET leader record", &pipe).await
    }

    /// Leader: CONFIG_DB's ports are in APPL_DB; a new run waits for `init_ports`. Returns the
    /// run's generation.
    pub async fn publish_run(&mut self, init_ports: &BTreeSet<String>) -> Result<String, WriteError> {
        self.publications += 1;
        let generation = format!("{}-{}-{}", now_ms(), self.process.pid, self.publications);
        let ports: Vec<&str> = init_ports.iter().map(String::as_str).collect();
        self.write_leader(vec![
            ("generation", generation.clone()),
            ("init_ports", ports.join(",")),
            ("config_done", "true".to_owned()),
        ])
        .await?;
        Ok(generation)
    }

    /// Leader at a warm start: the run goes on (a new one only if none is recorded).
    pub async fn resume_run(&mut self) -> Result<String, WriteError> {
        match self.leader().await? {
            Some(l) if !l.generation.is_empty() => {
                self.leader_starting(true).await?;
                Ok(l.generation)
            }
            _ => self.publish_run(&BTreeSet::new()).await,
        }
    }

    /// Leader: the instance records read at `read_ms` are applied (claimed ports given up, in
    /// the kernel filter too). A range or list instance starts only after this passes its
    /// registration, so a port is never handled by both.
    pub async fn leader_claims_read(&mut self, read_ms: u64) -> Result<(), WriteError> {
        let mut pipe = redis::pipe();
        pipe.hset(self.leader_key(), "claims_read_ms", read_ms.to_string()).ignore();
        self.query::<()>("HSET leader claims_read_ms", &pipe).await
    }

    /// Range or list share: waits until the leader has read the instance records after
    /// `registered_ms` (and so gave up our ports), keeping our record live meanwhile.
    pub async fn wait_for_claims_taken(&mut self, registered_ms: u64) -> Result<(), WriteError> {
        let started = std::time::Instant::now();
        let mut said = None::<std::time::Instant>;
        loop {
            if self.leader().await?.is_some_and(|l| l.claims_read_ms > registered_ms) {
                return Ok(());
            }
            if said.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
                said = Some(std::time::Instant::now());
                tracing::info!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "waiting for instance 0 to give up this share's ports"
                );
            }
            self.beat().await?;
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Leader heartbeat.
    pub async fn leader_beat(&mut self) -> Result<(), WriteError> {
        let mut pipe = redis::pipe();
        pipe.hset(self.leader_key(), "heartbeat_ms", now_ms().to_string()).ignore();
        self.query::<()>("HSET leader heartbeat", &pipe).await
    }

    /// Waits until a live leader has published its run (a non-leader cannot start before:
    /// APPL_DB's ports and the ports to wait for come from it).
    pub async fn wait_for_leader(&mut self) -> Result<LeaderRecord, WriteError> {
        let started = std::time::Instant::now();
        let mut said = None::<std::time::Instant>;
        loop {
            let leader = self.leader().await?;
            if let Some(l) = leader.filter(|l| l.is_ready(now_ms())) {
                if said.is_some() {
                    tracing::info!(waited_ms = started.elapsed().as_millis() as u64, "instance 0 is up; starting");
                }
                return Ok(l);
            }
            if said.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
                said = Some(std::time::Instant::now());
                tracing::warn!(
                    id = self.record.id,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "waiting for instance 0 (the leader) to publish CONFIG_DB's ports"
                );
            }
            // Keep our record live while waiting, so the leader sees us.
            self.beat().await?;
            tokio::time::sleep(WAIT_POLL).await;
        }
    }
}

/// The partition table from CONFIG_DB: every `PORT|<p>` with its `index`.
pub async fn read_partition_table(dbs: &SonicDbs, timeout: Duration) -> Result<Vec<PortName>, WriteError> {
    let mut config = DbConn::new("CONFIG_DB", dbs.config.clone(), Vec::new(), timeout);
    let prefix = dbs.config.key(CFG_PORT_TABLE, "");
    let keys: Vec<String> = config.query_one("KEYS PORT|*", redis::cmd("KEYS").arg(format!("{prefix}*"))).await?;
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("HGET").arg(k).arg("index");
    }
    // Raw replies: a malformed entry (not a hash) sorts as one without index.
    let replies: Vec<redis::Value> = config.query_raw("HGET PORT index", pipe).await?;
    let rows: BTreeMap<String, Option<String>> = keys
        .iter()
        .zip(replies)
        .map(|(k, v)| (k.get(prefix.len()..).unwrap_or_default().to_owned(), redis::from_redis_value(v).ok().flatten()))
        .collect();
    Ok(partition_table(rows.iter().map(|(n, i)| (n.as_str(), i.as_deref()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u16, partition: &str, claims: &[&str]) -> InstanceRecord {
        let me = ProcessId::current();
        InstanceRecord {
            id,
            instances: 4,
            partition: partition.into(),
            claims: claims.iter().map(|s| (*s).to_owned()).collect(),
            state_file: format!("/s/{id}.json"),
            pid: me.pid,
            proc_start: me.start,
            heartbeat_ms: now_ms(),
            generation: "g1".into(),
            share_seen: true,
        }
    }

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = ProcessId::current();
        assert!(me.start > 0 && me.is_alive());
        assert!(!ProcessId { start: me.start + 1, ..me }.is_alive());
        assert!(!ProcessId { pid: u32::MAX - 1, start: 1 }.is_alive());
    }

    #[test]
    fn peers_must_agree_and_not_overlap_but_dead_ones_bind_nobody() {
        let now = now_ms();
        let me = rec(1, "range:0-9", &["Ethernet0", "Ethernet4"]);
        assert!(check_peers(&me, &[rec(2, "range:10-19", &["Ethernet40"])], now).is_ok());
        let mut other = rec(2, "range:10-19", &["Ethernet40"]);
        other.instances = 3;
        assert!(matches!(check_peers(&me, &[other], now), Err(InstanceError::InstanceCount { theirs: 3, .. })));
        assert!(matches!(check_peers(&me, &[rec(2, "even", &[])], now), Err(InstanceError::PartitionKind { .. })));
        let err = check_peers(&me, &[rec(3, "list:Ethernet4", &["Ethernet4"])], now).unwrap_err();
        assert!(err.to_string().contains("port Ethernet4") && err.to_string().contains("instance 3"), "{err}");
        let mut same_file = rec(2, "range:10-19", &[]);
        same_file.state_file = me.state_file.clone();
        assert!(matches!(check_peers(&me, &[same_file], now), Err(InstanceError::SharedStateFile { .. })));
        // A stale heartbeat: dead, ignored.
        let mut dead = rec(3, "list:Ethernet4", &["Ethernet4"]);
        dead.heartbeat_ms = now - LIVE_WINDOW.as_millis() as u64 - 1;
        assert!(check_peers(&me, &[dead], now).is_ok());
        // Our own earlier record is not a peer.
        assert!(check_peers(&me, &[rec(1, "even", &[])], now).is_ok());
    }

    #[test]
    fn port_init_done_waits_for_every_other_instance_of_this_generation() {
        let mut recs = vec![rec(1, "even", &[]), rec(2, "even", &[]), rec(3, "even", &[])];
        assert!(not_reported(&recs, 4, "g1").is_empty());
        assert_eq!(not_reported(&recs, 4, "g2"), [1, 2, 3], "reports of an earlier run do not count");
        recs[1].share_seen = false;
        recs.remove(2);
        assert_eq!(not_reported(&recs, 4, "g1"), [2, 3]);
    }

    #[test]
    fn records_survive_their_redis_form() {
        let r = rec(2, "list:Ethernet0,PortChannel1", &["Ethernet0", "PortChannel1"]);
        let h: HashMap<String, String> = r.fields().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        assert_eq!(InstanceRecord::parse(2, &h), r);
        let l = LeaderRecord::parse(
            &[("config_done", "true"), ("generation", "g"), ("init_ports", "Ethernet0,Ethernet4")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
        .unwrap();
        assert_eq!(l.init_ports.len(), 2);
        assert!(!l.is_ready(now_ms()), "no live process wrote it");
        assert!(LeaderRecord::parse(&HashMap::new()).is_none());
    }
}
