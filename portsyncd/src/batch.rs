//! Coalescing: a drained batch of [`PortEvent`]s -> at most one pending change per port, the
//! newest, remembering the oldest unwritten event time for the latency histogram. Pending changes
//! stay here until the writer confirms them, so a Redis outage loses nothing.

use std::collections::HashSet;

use portsyncd_common::PortEvent;

use crate::linksync::{classify, Ignored, PortMap, PortName, PortState, Verdict};
use crate::partition::Partition;

/// One port's change that Redis has not confirmed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// `Some` = write this state; `None` = delete the STATE_DB entry.
    pub state: Option<PortState>,
    /// A delete was coalesced away before this set: the entry must be deleted before it is
    /// written again, as the C++ daemon's DEL + HSET would leave it.
    pub delete_first: bool,
    /// Monotonic ns of the oldest event folded into this change.
    pub first_ts: u64,
    /// Ifindex of the newest event.
    pub ifindex: u32,
}

crate::described! {
    /// What the coalescer did with the events it was given.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
    pub struct CoalesceStats {
        /// Events offered.
        pub events: u64,
        /// Ignored by name prefix.
        pub ignored_name: u64,
        /// Ignored as teamd netdevs.
        pub ignored_team: u64,
        /// Ignored DELLINK with master.
        pub ignored_del_with_master: u64,
        /// Ignored old interfaces.
        pub ignored_old: u64,
        /// Ignored because another instance owns the port.
        pub ignored_other_instance: u64,
        /// Events folded into a change that was already pending.
        pub coalesced: u64,
    }
}

/// The pending changes, keyed by port name (the Redis key).
#[derive(Debug, Default)]
pub struct Coalescer {
    pending: PortMap<Pending>,
    /// Which ports are this instance's (all of them unless several instances share them).
    partition: Partition,
    /// Running totals.
    pub stats: CoalesceStats,
}

impl Coalescer {
    /// An empty coalescer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps only changes of ports `partition` gives this instance.
    pub fn set_partition(&mut self, partition: Partition) {
        self.partition = partition;
    }

    /// Which ports are this instance's.
    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// Folds one event in.
    pub fn push(&mut self, ev: &PortEvent, old_ifindexes: &HashSet<u32>) {
        self.stats.events += 1;
        // SONiC INFO (tracing DEBUG): the C++ daemon logs this at NOTICE, once per message, which
        // in a storm costs more than the write it describes.
        tracing::debug!(
            "nlmsg type:{} key:{} admin:{} oper:{} ifindex:{} master:{} flags:{}",
            ev.msg_type,
            String::from_utf8_lossy(ev.name_bytes()),
            u8::from(ev.flags & portsyncd_common::IFF_UP != 0),
            u8::from(ev.flags & portsyncd_common::IFF_RUNNING != 0),
            ev.ifindex,
            ev.master,
            ev.flags
        );
        let (name, state) = match classify(ev, old_ifindexes) {
            Verdict::Set { name, .. } | Verdict::Delete { name } if !self.partition.owns(&name) => {
                self.stats.ignored_other_instance += 1;
                return;
            }
            Verdict::Set { name, state } => (name, Some(state)),
            Verdict::Delete { name } => (name, None),
            Verdict::Ignore(why) => {
                match why {
                    Ignored::Name | Ignored::NotLink => self.stats.ignored_name += 1,
                    Ignored::Team => self.stats.ignored_team += 1,
                    Ignored::DelWithMaster => self.stats.ignored_del_with_master += 1,
                    Ignored::OldInterface => self.stats.ignored_old += 1,
                }
                return;
            }
        };
        match self.pending.get_mut(&name) {
            Some(p) => {
                self.stats.coalesced += 1;
                if state.is_some() && p.state.is_none() {
                    p.delete_first = true;
                }
                p.state = state;
                p.ifindex = ev.ifindex;
                p.first_ts = p.first_ts.min(ev.timestamp_ns);
            }
            None => {
                self.pending.insert(
                    name,
                    Pending { state, delete_first: false, first_ts: ev.timestamp_ns, ifindex: ev.ifindex },
                );
            }
        }
    }

    /// Puts a change back that could not be written, unless a newer one arrived meanwhile.
    pub fn restore(&mut self, name: PortName, p: Pending) {
        match self.pending.get_mut(&name) {
            Some(newer) => {
                newer.first_ts = newer.first_ts.min(p.first_ts);
                if p.state.is_none() || p.delete_first {
                    newer.delete_first |= newer.state.is_some();
                }
            }
            None => {
                self.pending.insert(name, p);
            }
        }
    }

    /// Takes every pending change.
    pub fn take(&mut self) -> PortMap<Pending> {
        std::mem::take(&mut self.pending)
    }

    /// Number of ports with a pending change.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Nothing pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linksync::tests::ev;
    use portsyncd_common::{IFF_RUNNING, IFF_UP, RTM_DELLINK, RTM_NEWLINK};

    fn name(s: &str) -> PortName {
        PortName::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn keeps_only_the_newest_state_per_port_and_the_oldest_timestamp() {
        let mut c = Coalescer::new();
        let none = HashSet::new();
        for (i, flags) in [0, IFF_UP, IFF_UP | IFF_RUNNING].into_iter().enumerate() {
            let mut e = ev(RTM_NEWLINK, 5, "Ethernet0", flags, 9100);
            e.timestamp_ns = 100 + i as u64;
            c.push(&e, &none);
        }
        c.push(&ev(RTM_NEWLINK, 6, "Ethernet4", 0, 1500), &none);
        c.push(&ev(RTM_NEWLINK, 1, "lo", IFF_UP, 65536), &none);
        let p = c.take();
        assert_eq!(p.len(), 2);
        let e0 = p[&name("Ethernet0")];
        assert_eq!(e0.state, Some(PortState { admin_up: true, oper_up: true, mtu: 9100 }));
        assert_eq!(e0.first_ts, 100);
        assert!(!e0.delete_first);
        assert_eq!(c.stats.events, 5);
        assert_eq!(c.stats.coalesced, 2);
        assert_eq!(c.stats.ignored_name, 1);
        assert!(c.is_empty());
    }

    #[test]
    fn delete_then_recreate_deletes_first() {
        let mut c = Coalescer::new();
        let none = HashSet::new();
        c.push(&ev(RTM_NEWLINK, 5, "Ethernet0", IFF_UP, 9100), &none);
        c.push(&ev(RTM_DELLINK, 5, "Ethernet0", 0, 9100), &none);
        assert_eq!(c.take()[&name("Ethernet0")].state, None);
        c.push(&ev(RTM_DELLINK, 5, "Ethernet0", 0, 9100), &none);
        c.push(&ev(RTM_NEWLINK, 9, "Ethernet0", IFF_UP, 1500), &none);
        let p = c.take()[&name("Ethernet0")];
        assert!(p.delete_first);
        assert_eq!(p.ifindex, 9);
        assert_eq!(p.state.map(|s| s.mtu), Some(1500));
    }

    #[test]
    fn restore_never_overrides_a_newer_change() {
        let mut c = Coalescer::new();
        let none = HashSet::new();
        c.push(&ev(RTM_NEWLINK, 5, "Ethernet0", IFF_UP, 9100), &none);
        let old = c.take();
        let mut newer = ev(RTM_NEWLINK, 5, "Ethernet0", 0, 9100);
        newer.timestamp_ns = 50;
        c.push(&newer, &none);
        for (n, p) in old {
            c.restore(n, p);
        }
        let p = c.take()[&name("Ethernet0")];
        assert_eq!(p.state.map(|s| s.admin_up), Some(false));
        assert_eq!(p.first_ts, 0, "the restored change's older timestamp is kept for latency");
        // With nothing newer, the failed change comes back as it was.
        c.restore(name("Ethernet4"), Pending { state: None, delete_first: false, first_ts: 1, ifindex: 2 });
        assert_eq!(c.take()[&name("Ethernet4")].state, None);
    }

    #[test]
    fn old_interfaces_and_del_with_master_are_counted_not_queued() {
        let mut c = Coalescer::new();
        let old: HashSet<u32> = [5].into_iter().collect();
        c.push(&ev(RTM_NEWLINK, 5, "Ethernet0", IFF_UP, 9100), &old);
        let mut leave = ev(RTM_DELLINK, 6, "Ethernet4", 0, 9100);
        leave.master = 3;
        c.push(&leave, &old);
        assert!(c.is_empty());
        assert_eq!((c.stats.ignored_old, c.stats.ignored_del_with_master), (1, 1));
    }
}
