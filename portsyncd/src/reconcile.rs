//! Pending changes + what Redis already holds -> the minimal list of Redis operations.
//! Also tracks the configured ports not yet seen (the C++ `g_portSet`) that gate `PortInitDone`.

use std::collections::{BTreeMap, BTreeSet};

use crate::batch::Pending;
use crate::linksync::{PortMap, PortName, PortSet, PortState};

/// One STATE_DB operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// HSET the four fields (after a DEL when `delete_first`).
    Write {
        /// Port.
        name: PortName,
        /// Values.
        state: PortState,
        /// DEL the key first.
        delete_first: bool,
    },
    /// DEL the key.
    Delete {
        /// Port.
        name: PortName,
    },
}

impl Op {
    /// The port the operation is for.
    pub fn port(&self) -> PortName {
        match *self {
            Op::Write { name, .. } | Op::Delete { name } => name,
        }
    }
}

/// The operations for one flush, with the change each came from.
#[derive(Debug, Default)]
pub struct Plan {
    /// Operations with their pending change (kept to restore it if the write fails).
    pub ops: Vec<(Op, Pending)>,
    /// Changes that needed no write because Redis already holds that state.
    pub unchanged: Vec<PortName>,
    /// Ports whose APPL_DB `PORT_TABLE:<p>` does not exist: nothing written (C++: "Cannot find").
    pub not_in_appl: Vec<PortName>,
}

/// Ports absent from a dump, see [`Reconciler::vanished`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Vanished {
    /// Deleted while we were not listening: delete their rows.
    pub delete: Vec<PortName>,
    /// No proof their netdev is gone for good: rows kept.
    pub keep: Vec<PortName>,
}

/// What portsyncd knows about Redis.
#[derive(Debug, Default)]
pub struct Reconciler {
    /// What STATE_DB holds from us, as far as we know: used to skip identical writes.
    written: PortMap<PortState>,
    /// Ports whose entry we published and did not delete. Survives [`Self::forget_redis`], so a
    /// port that vanished during an outage is still found and deleted by the resync.
    published: PortSet,
    /// Published ports whose row is known to describe a netdev of this kernel boot: written by
    /// this process, or listed by a state file saved during this boot. Only these may be
    /// deleted for being absent from a dump (see [`Self::vanished`]).
    provable: PortSet,
    appl_known: PortSet,
    port_set: BTreeSet<String>,
    init_done: bool,
}

impl Reconciler {
    /// `port_set`: configured ports that must be seen before `PortInitDone`.
    pub fn new(port_set: BTreeSet<String>) -> Self {
        Self { port_set, ..Self::default() }
    }

    /// Uses `baseline` as what STATE_DB holds (warm restart: the saved or verified state).
    /// `provable`: the baseline's ports whose netdevs are known to be of this boot.
    pub fn set_baseline(&mut self, baseline: PortMap<PortState>, provable: &PortSet) {
        self.published = baseline.keys().copied().collect();
        self.provable = self.published.intersection(provable).copied().collect();
        self.written = baseline;
    }

    /// Forgets what we believe STATE_DB holds for `name` (its row drifted): the next change
    /// for it is written even if it equals what we wrote before.
    pub fn forget_port(&mut self, name: &PortName) {
        self.written.remove(name);
    }

    /// What we believe STATE_DB holds from us for `name`.
    pub fn written_state(&self, name: &PortName) -> Option<PortState> {
        self.written.get(name).copied()
    }

    /// Ports we believe hold a row written by us.
    pub fn written_ports(&self) -> impl Iterator<Item = &PortName> {
        self.written.keys()
    }

    /// Forgets everything assumed about Redis (it may have restarted empty): the next flush
    /// rechecks APPL_DB and rewrites every port.
    pub fn forget_redis(&mut self) {
        self.written.clear();
        self.appl_known.clear();
    }

    /// Ports with a pending write whose APPL_DB presence is not known yet.
    pub fn presence_unknown(&self, pending: &PortMap<Pending>) -> Vec<PortName> {
        pending.iter().filter(|(n, p)| p.state.is_some() && !self.appl_known.contains(*n)).map(|(n, _)| *n).collect()
    }

    /// Turns pending changes into operations. `present` answers [`Self::presence_unknown`].
    pub fn plan(&mut self, pending: PortMap<Pending>, present: &PortSet) -> Plan {
        let mut plan = Plan::default();
        for (name, p) in pending {
            match p.state {
                None => plan.ops.push((Op::Delete { name }, p)),
                Some(state) => {
                    if !self.appl_known.contains(&name) {
                        if present.contains(&name) {
                            self.appl_known.insert(name);
                        } else {
                            plan.not_in_appl.push(name);
                            continue;
                        }
                    }
                    // Seen, as the C++ daemon erases it from g_portSet on the netlink message,
                    // before (and whatever the outcome of) its STATE_DB write.
                    self.port_set.remove(name.as_str());
                    if !p.delete_first && self.written.get(&name) == Some(&state) {
                        plan.unchanged.push(name);
                        continue;
                    }
                    plan.ops.push((Op::Write { name, state, delete_first: p.delete_first }, p));
                }
            }
        }
        plan
    }

    /// Records that Redis acknowledged every op of `plan`.
    pub fn commit(&mut self, plan: &Plan) {
        for (op, _) in &plan.ops {
            self.commit_op(op);
        }
    }

    /// Records that Redis acknowledged `op`.
    pub fn commit_op(&mut self, op: &Op) {
        match *op {
            Op::Write { name, state, .. } => {
                self.written.insert(name, state);
                self.published.insert(name);
                self.provable.insert(name);
            }
            Op::Delete { name } => {
                self.written.remove(&name);
                self.published.remove(&name);
                self.provable.remove(&name);
                // The netdev is gone; if it comes back, APPL_DB is checked again.
                self.appl_known.remove(&name);
            }
        }
    }

    /// Ports we hold state for that are absent from a complete, consistent dump, split into
    /// those that may be deleted (their row is known to be of this boot, so the netdev really
    /// went away) and those kept (a row restored from before a reboot, or of unknown origin:
    /// its netdev may still be created; the C++ daemon deletes only on RTM_DELLINK).
    pub fn vanished(&self, dumped: &PortSet) -> Vanished {
        let mut v = Vanished::default();
        for n in self.published.iter().filter(|n| !dumped.contains(*n)) {
            if self.provable.contains(n) {
                v.delete.push(*n);
            } else {
                v.keep.push(*n);
            }
        }
        v.delete.sort();
        v.keep.sort();
        v
    }

    /// `PortInitDone` is due: every configured port was seen and it was not sent yet.
    pub fn port_init_due(&self) -> bool {
        !self.init_done && self.port_set.is_empty()
    }

    /// Redis restarted empty and the configured ports were published again: wait for
    /// `port_set` and send `PortInitDone` again, as orchagent will wait for it again.
    pub fn restart_init(&mut self, port_set: BTreeSet<String>) {
        self.port_set = port_set;
        self.init_done = false;
    }

    /// Records that `PortInitDone` was written.
    pub fn mark_port_init_done(&mut self) {
        self.init_done = true;
    }

    /// `PortInitDone` was written.
    pub fn port_init_done(&self) -> bool {
        self.init_done
    }

    /// Configured ports not seen yet.
    pub fn unseen_ports(&self) -> &BTreeSet<String> {
        &self.port_set
    }

    /// The state STATE_DB holds from us, for the warm-restart file.
    pub fn written(&self) -> BTreeMap<String, PortState> {
        self.written.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> PortName {
        PortName::new(s.as_bytes()).unwrap()
    }
    fn set(admin: bool, mtu: u32) -> Pending {
        Pending {
            state: Some(PortState { admin_up: admin, oper_up: false, mtu }),
            delete_first: false,
            first_ts: 1,
            ifindex: 1,
        }
    }

    #[test]
    fn unknown_ports_are_checked_once_and_absent_ones_written_nothing() {
        let mut r = Reconciler::new(["Ethernet0".to_owned(), "Ethernet4".to_owned()].into_iter().collect());
        let pending: PortMap<_> =
            [(n("Ethernet0"), set(true, 9100)), (n("Ethernet4"), set(true, 9100))].into_iter().collect();
        let mut unknown = r.presence_unknown(&pending);
        unknown.sort();
        assert_eq!(unknown, [n("Ethernet0"), n("Ethernet4")]);
        let plan = r.plan(pending, &[n("Ethernet0")].into_iter().collect());
        assert_eq!(plan.ops.len(), 1);
        assert_eq!(plan.not_in_appl, [n("Ethernet4")]);
        r.commit(&plan);
        assert_eq!(r.unseen_ports().iter().collect::<Vec<_>>(), ["Ethernet4"]);
        assert!(!r.port_init_due());
        // Ethernet0 is now known present: no second check.
        let pending: PortMap<_> = [(n("Ethernet0"), set(false, 9100))].into_iter().collect();
        assert!(r.presence_unknown(&pending).is_empty());
    }

    #[test]
    fn unchanged_state_is_not_written_again_but_counts_as_seen() {
        let mut r = Reconciler::new(["Ethernet0".to_owned()].into_iter().collect());
        let present: PortSet = [n("Ethernet0")].into_iter().collect();
        r.set_baseline([(n("Ethernet0"), set(true, 9100).state.unwrap())].into_iter().collect(), &PortSet::default());
        let plan = r.plan([(n("Ethernet0"), set(true, 9100))].into_iter().collect(), &present);
        assert!(plan.ops.is_empty());
        assert_eq!(plan.unchanged, [n("Ethernet0")]);
        assert!(r.port_init_due());
        r.mark_port_init_done();
        assert!(!r.port_init_due());
        // A changed mtu is written.
        let plan = r.plan([(n("Ethernet0"), set(true, 1500))].into_iter().collect(), &present);
        assert_eq!(plan.ops.len(), 1);
    }

    #[test]
    fn deletes_are_always_issued_and_forget_presence() {
        let mut r = Reconciler::new(BTreeSet::new());
        let present: PortSet = [n("Ethernet0")].into_iter().collect();
        let plan = r.plan([(n("Ethernet0"), set(true, 9100))].into_iter().collect(), &present);
        r.commit(&plan);
        let del = Pending { state: None, ..set(true, 0) };
        let plan = r.plan([(n("Ethernet0"), del)].into_iter().collect(), &PortSet::default());
        assert!(matches!(plan.ops[0].0, Op::Delete { .. }));
        r.commit(&plan);
        assert!(r.written().is_empty());
        assert_eq!(r.presence_unknown(&[(n("Ethernet0"), set(true, 1))].into_iter().collect()), [n("Ethernet0")]);
    }

    #[test]
    fn vanished_ports_and_forget_redis() {
        let mut r = Reconciler::new(BTreeSet::new());
        let all: PortSet = [n("Ethernet0"), n("Ethernet4")].into_iter().collect();
        r.set_baseline(
            [(n("Ethernet0"), set(true, 1).state.unwrap()), (n("Ethernet4"), set(true, 1).state.unwrap())]
                .into_iter()
                .collect(),
            &all,
        );
        assert_eq!(r.vanished(&[n("Ethernet0")].into_iter().collect()).delete, [n("Ethernet4")]);
        r.forget_redis();
        assert!(r.written().is_empty());
        // What we published is still known, so a port that vanished during an outage is found.
        assert_eq!(r.vanished(&[n("Ethernet0")].into_iter().collect()).delete, [n("Ethernet4")]);
        // After forgetting, even an identical state is written again.
        let plan =
            r.plan([(n("Ethernet0"), set(true, 1))].into_iter().collect(), &[n("Ethernet0")].into_iter().collect());
        assert_eq!(plan.ops.len(), 1);
    }

    #[test]
    fn delete_first_forces_a_write_even_when_unchanged() {
        let mut r = Reconciler::new(BTreeSet::new());
        r.set_baseline([(n("Ethernet0"), set(true, 1).state.unwrap())].into_iter().collect(), &PortSet::default());
        let mut p = set(true, 1);
        p.delete_first = true;
        let plan = r.plan([(n("Ethernet0"), p)].into_iter().collect(), &[n("Ethernet0")].into_iter().collect());
        assert!(matches!(plan.ops[0].0, Op::Write { delete_first: true, .. }));
    }

    #[test]
    fn only_rows_known_to_be_of_this_boot_are_deleted_for_missing_from_a_dump() {
        let mut r = Reconciler::new(BTreeSet::new());
        // Restored rows (a system warm reboot, or STATE_DB read without a state file of this boot).
        r.set_baseline(
            [(n("Ethernet0"), set(true, 1).state.unwrap()), (n("Ethernet4"), set(true, 1).state.unwrap())]
                .into_iter()
                .collect(),
            &[n("Ethernet4")].into_iter().collect(),
        );
        let v = r.vanished(&PortSet::default());
        assert_eq!((v.delete, v.keep), (vec![n("Ethernet4")], vec![n("Ethernet0")]));
        // Once we write Ethernet0 ourselves, its row is of this boot.
        let plan =
            r.plan([(n("Ethernet0"), set(false, 1))].into_iter().collect(), &[n("Ethernet0")].into_iter().collect());
        r.commit_op(&plan.ops[0].0);
        assert_eq!(r.vanished(&PortSet::default()).delete, [n("Ethernet0"), n("Ethernet4")]);
    }

    #[test]
    fn a_port_counts_as_seen_when_its_write_is_planned_whatever_the_outcome() {
        let mut r = Reconciler::new(["Ethernet0".to_owned()].into_iter().collect());
        let plan =
            r.plan([(n("Ethernet0"), set(true, 1))].into_iter().collect(), &[n("Ethernet0")].into_iter().collect());
        assert_eq!(plan.ops.len(), 1);
        // Not committed (Redis refused it), yet PortInitDone is not held back by it.
        assert!(r.port_init_due());
    }
}
