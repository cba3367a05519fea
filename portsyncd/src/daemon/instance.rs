//! Several instances on one switch, as the event loop sees it: the start (partition, registry,
//! leader or follower start-up), and the once-a-tick work: heartbeat, this share's progress,
//! the leader's `PortInitDone` gate and claims, a follower's reaction to a new leader run.
//! The registry's keys and rules are in [`crate::instances`].

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{Daemon, Eoiu};
use crate::config::Config;
use crate::error::Error;
use crate::instances::{self, InstanceRecord, Registry};
use crate::linksync::PortName;
use crate::partition::{Partition, PartitionSpec, LEADER};
use crate::sonic_db::SonicDbs;
use crate::startup::{self, Startup};

/// While `PortInitDone` or this share's report is outstanding, the registry is looked at every
/// tick; after that, once a second (the heartbeat).
const BEAT_EVERY: Duration = Duration::from_secs(1);
/// The leader names the instances `PortInitDone` waits for this often.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(10);

/// This instance's part in a partitioned switch.
#[derive(Debug)]
pub(super) struct InstanceRuntime {
    registry: Registry,
    /// The leader run this instance works for.
    generation: String,
    /// Leader: the instances that have not reported their share seen for `generation`.
    waiting_for: Vec<u16>,
    /// Leader, range/list shares: claims are learned from the registry.
    learns_claims: bool,
    last_beat: Option<Instant>,
    last_waiting_log: Option<Instant>,
    /// Leader: a new run whose publication failed (Redis went away again), retried each tick.
    unpublished_run: Option<BTreeSet<String>>,
}

impl InstanceRuntime {
    /// This instance is the leader.
    pub(super) fn is_leader(&self) -> bool {
        self.registry.record.id == LEADER
    }

    /// Leader: publishes a new run waiting for `ports`; if Redis refuses, keeps it for the next
    /// tick (the others resync only once they see it). Returns whether it is published.
    async fn publish(&mut self, ports: BTreeSet<String>) -> bool {
        match self.registry.publish_run(&ports).await {
            Ok(g) => {
                tracing::info!(generation = %g, "published a new run to the other instances");
                self.generation = g;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish the new run yet; retrying");
                self.unpublished_run = Some(ports);
                false
            }
        }
    }
}

/// Start-up with `--instances` > 1: the partition from CONFIG_DB, registration (a mismatch
/// with a live instance ends the start with an error), then the leader's start-up (the C++
/// daemon's, plus a new run when it publishes CONFIG_DB) or a follower's (after the leader's
/// run is published). The start-up's ports to wait for are this instance's share of them.
pub(super) async fn start(cfg: &Config, dbs: &SonicDbs) -> Result<(Startup, Partition, InstanceRuntime), Error> {
    let table = instances::read_partition_table(dbs, cfg.redis_timeout).await?;
    let partition = Partition::compute(&cfg.partition, cfg.instance_id, cfg.instances, &table)?;
    let claims = match cfg.partition {
        PartitionSpec::Even => Vec::new(),
        _ => partition.claims().iter().map(ToString::to_string).collect(),
    };
    let record = InstanceRecord {
        id: cfg.instance_id,
        instances: cfg.instances,
        partition: cfg.partition.to_string(),
        claims,
        state_file: cfg.state_file.display().to_string(),
        ..InstanceRecord::default()
    };
    let mut registry = Registry::new(dbs, record, cfg.redis_timeout);
    let previous = registry.register().await?;
    let share = partition.claims().len();
    tracing::info!(
        id = cfg.instance_id,
        instances = cfg.instances,
        partition = %cfg.partition,
        table_ports = table.len(),
        share_ports = share,
        "registered as one of several instances"
    );
    let (mut startup, generation) = if cfg.instance_id == LEADER {
        registry.leader_starting(false).await?;
        let startup = startup::run(dbs, cfg.redis_timeout).await?;
        let generation = match startup.warm {
            true => registry.resume_run().await?,
            false => registry.publish_run(&startup.port_set).await?,
        };
        (startup, generation)
    } else {
        let leader = registry.wait_for_leader().await?;
        if cfg.partition != PartitionSpec::Even {
            // Until the leader gives our ports up, it still handles them.
            let registered = registry.registered_ms;
            registry.wait_for_claims_taken(registered).await?;
        }
        let resume = previous.as_ref().is_some_and(|p| p.generation == leader.generation);
        // Restarted within a run whose PortInitDone this share already counted for: nothing
        // to wait for again (as a warm start waits for nothing).
        let reported = resume && previous.as_ref().is_some_and(|p| p.share_seen);
        let init_ports = if reported { BTreeSet::new() } else { leader.init_ports.clone() };
        let startup = startup::run_follower(dbs, cfg.redis_timeout, init_ports, resume).await?;
        if resume {
            tracing::info!(generation = %leader.generation, "rejoining the leader's run");
        }
        (startup, leader.generation)
    };
    startup.port_set = share_of(&startup.port_set, &partition);
    registry.record.generation = generation.clone();
    let rt = InstanceRuntime {
        registry,
        generation,
        waiting_for: (1..cfg.instances).collect(),
        learns_claims: cfg.instance_id == LEADER && cfg.partition != PartitionSpec::Even,
        last_beat: None,
        last_waiting_log: None,
        unpublished_run: None,
    };
    Ok((startup, partition, rt))
}

/// The ports of `ports` this instance owns.
fn share_of(ports: &BTreeSet<String>, partition: &Partition) -> BTreeSet<String> {
    ports
        .iter()
        .filter(|p| match PortName::new(p.as_bytes()) {
            Some(n) => partition.owns(&n),
            // A name no netdev can have is never seen: the leader keeps it, as it keeps names
            // no share names.
            None => partition.me() == LEADER,
        })
        .cloned()
        .collect()
}

impl Daemon {
    /// Whether `PortInitDone` may go once this instance's own ports are seen: always with one
    /// instance; with several, only the leader sends it, once every other instance reported.
    pub(super) fn init_gate_open(&self) -> bool {
        match &self.instance {
            None => true,
            Some(rt) => rt.is_leader() && rt.waiting_for.is_empty(),
        }
    }

    /// Heartbeat and progress, then the leader's gate and claims or a follower's check for a
    /// new leader run. Redis trouble here is left to the port path's health handling.
    pub(super) async fn instance_tick(&mut self) {
        let init_pending = !self.pipeline.reconciler.port_init_done();
        let seen = self.eoiu != Eoiu::Pending && self.pipeline.reconciler.unseen_ports().is_empty();
        let Some(rt) = self.instance.as_mut() else { return };
        let urgent = (rt.is_leader() && init_pending) || seen != rt.registry.record.share_seen;
        if !urgent && rt.last_beat.is_some_and(|t| t.elapsed() < BEAT_EVERY) {
            return;
        }
        rt.last_beat = Some(Instant::now());
        rt.registry.record.share_seen = seen;
        rt.registry.record.generation = rt.generation.clone();
        if let Err(e) = rt.registry.beat().await {
            tracing::debug!(error = %e, "cannot write this instance's record; next tick");
            return;
        }
        if rt.is_leader() {
            self.leader_tick(init_pending).await;
        } else {
            self.follower_tick().await;
        }
    }

    async fn leader_tick(&mut self, init_pending: bool) {
        let Some(rt) = self.instance.as_mut() else { return };
        if let Some(ports) = rt.unpublished_run.take() {
            if !rt.publish(ports).await {
                return;
            }
        }
        if let Err(e) = rt.registry.leader_beat().await {
            tracing::debug!(error = %e, "cannot write the leader's heartbeat; next tick");
            return;
        }
        let read_ms = instances::now_ms();
        let records = match rt.registry.records().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the instance records; next tick");
                return;
            }
        };
        let instances = self.cfg.instances;
        rt.waiting_for = instances::not_reported(&records, instances, &rt.generation);
        let mut partition_changed = false;
        if rt.learns_claims {
            let mut partition = self.pipeline.coalescer.partition().clone();
            for r in records.iter().filter(|r| r.id != LEADER && r.is_live(read_ms)) {
                let names: Vec<PortName> = r.claims.iter().filter_map(|c| PortName::new(c.as_bytes())).collect();
                if partition.assign(&names, r.id) {
                    partition_changed = true;
                    tracing::info!(
                        instance = r.id,
                        ports = names.len(),
                        "claims learned; these ports are no longer the leader's"
                    );
                }
            }
            if partition_changed {
                if let Some(cap) = self.source.ebpf_mut() {
                    if let Err(e) = cap.set_partition(&partition) {
                        tracing::warn!(error = %e, "cannot update the kernel filter's port owners; filtering in userspace");
                    }
                }
                self.pipeline.coalescer.set_partition(partition);
            }
            // Only now may a range or list instance that registered before `read_ms` start.
            if let Some(rt) = self.instance.as_mut() {
                if let Err(e) = rt.registry.leader_claims_read(read_ms).await {
                    tracing::debug!(error = %e, "cannot acknowledge the instances' claims; next tick");
                }
            }
        }
        let Some(rt) = self.instance.as_mut() else { return };
        if init_pending && !rt.waiting_for.is_empty() {
            if rt.last_waiting_log.is_none_or(|t| t.elapsed() >= WAITING_LOG_EVERY) {
                rt.last_waiting_log = Some(Instant::now());
                tracing::info!(instances = ?rt.waiting_for, "PortInitDone waits for these instances to see their ports");
            }
        } else if init_pending && self.eoiu != Eoiu::Pending {
            self.flush().await;
        }
    }

    /// A new leader run (it published CONFIG_DB again: its cold restart, or redis-server came
    /// back empty): as the C++ daemon after a cold start, this share's ports are waited for
    /// again, APPL_DB is asked again and every port is re-dumped.
    async fn follower_tick(&mut self) {
        let Some(rt) = self.instance.as_mut() else { return };
        let leader = match rt.registry.leader().await {
            Ok(Some(l)) if l.config_done && !l.generation.is_empty() && l.generation != rt.generation => l,
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the leader's record; next tick");
                return;
            }
        };
        tracing::info!(generation = %leader.generation, "instance 0 published CONFIG_DB's ports again; resyncing this share");
        rt.generation = leader.generation.clone();
        rt.registry.record.share_seen = false;
        let ports = share_of(&leader.init_ports, self.pipeline.coalescer.partition());
        // As the leader's own resync: once orchagent has consumed what the leader published.
        self.redis.appl_wait = Some(super::ApplWait::for_ports(&ports));
        self.pipeline.reconciler.restart_init(ports);
        self.pipeline.reconciler.forget_redis();
        self.redis.republish_pending = false;
        self.need_resync = true;
    }

    /// Leader: CONFIG_DB's ports were published again (redis-server restarted): a new run.
    pub(super) async fn leader_republished(&mut self, port_set: &BTreeSet<String>) -> BTreeSet<String> {
        let partition = self.pipeline.coalescer.partition().clone();
        let Some(rt) = self.instance.as_mut() else { return port_set.clone() };
        // Whatever the others reported was for the old run.
        rt.waiting_for = (1..self.cfg.instances).collect();
        rt.publish(port_set.clone()).await;
        share_of(port_set, &partition)
    }

    /// Stats file section.
    pub(super) fn instance_snapshot(&self) -> serde_json::Value {
        match &self.instance {
            None => serde_json::Value::Null,
            Some(rt) => serde_json::json!({
                "id": self.cfg.instance_id,
                "instances": self.cfg.instances,
                "leader": rt.is_leader(),
                "partition": self.cfg.partition.to_string(),
                "share_ports": self.pipeline.coalescer.partition().claims().len(),
                "generation": rt.generation,
                "share_seen": rt.registry.record.share_seen,
                "waiting_for": rt.waiting_for,
            }),
        }
    }
}
