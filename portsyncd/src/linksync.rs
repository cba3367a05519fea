//! SONiC LinkSync rules (sonic-swss `portsyncd/linksync.cpp`) applied to one event, with no I/O:
//! which events become a STATE_DB write, which a delete, and which are ignored and why.

use std::collections::HashSet;

use portsyncd_common::{PortEvent, RTM_DELLINK, RTM_NEWLINK};

/// Front-panel port names.
pub const INTFS_PREFIX: &str = "Ethernet";
/// LAG names (teamd's netdevs are dropped by kind).
pub const LAG_PREFIX: &str = "PortChannel";
/// Every name prefix LinkSync handles: the rule in [`classify`], the kernel filter's default
/// table, and the STATE_DB rows a start-up baseline scans for.
pub const PORT_PREFIXES: [&str; 2] = [INTFS_PREFIX, LAG_PREFIX];
/// Link kind of teamd LAG netdevs: teamsyncd's business.
pub const TEAM_KIND: &[u8] = b"team";

/// Maps keyed by port name. foldhash, not the default SipHash: SipHash was 40% of the
/// userspace path's CPU (perf, `cargo xtask bench pipeline`, `unchanged` row), and the keys are
/// kernel interface names, not input an attacker chooses to collide.
pub type PortMap<V> = std::collections::HashMap<PortName, V, foldhash::fast::RandomState>;
/// Sets of port names; see [`PortMap`].
pub type PortSet = std::collections::HashSet<PortName, foldhash::fast::RandomState>;

/// A port name, stored inline: kernel names are at most 15 bytes, so no allocation per event.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortName {
    len: u8,
    bytes: [u8; 15],
}

impl PortName {
    /// `None` for names that are empty, longer than 15 bytes or not UTF-8.
    pub fn new(name: &[u8]) -> Option<Self> {
        if name.is_empty() || name.len() > 15 || std::str::from_utf8(name).is_err() {
            return None;
        }
        let mut bytes = [0; 15];
        for (dst, src) in bytes.iter_mut().zip(name) {
            *dst = *src;
        }
        Some(Self { len: name.len() as u8, bytes })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Checked as UTF-8 in `new`; the fallback is unreachable.
        std::str::from_utf8(self.bytes.get(..usize::from(self.len)).unwrap_or_default()).unwrap_or("")
    }
}

impl std::fmt::Debug for PortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl std::fmt::Display for PortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three values portsyncd publishes per port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PortState {
    /// `IFF_UP` -> `admin_status`.
    pub admin_up: bool,
    /// `IFF_RUNNING` -> `netdev_oper_status`.
    pub oper_up: bool,
    /// `IFLA_MTU` -> `mtu`.
    pub mtu: u32,
}

impl PortState {
    /// The state carried by an event.
    pub fn of(ev: &PortEvent) -> Self {
        Self { admin_up: ev.admin_up(), oper_up: ev.oper_up(), mtu: ev.mtu }
    }

    /// The STATE_DB `PORT_TABLE|<p>` fields, in the C++ daemon's order.
    pub fn fields(&self) -> [(&'static str, String); 4] {
        let updown = |b: bool| if b { "up" } else { "down" }.to_owned();
        [
            ("state", "ok".to_owned()),
            ("netdev_oper_status", updown(self.oper_up)),
            ("admin_status", updown(self.admin_up)),
            ("mtu", self.mtu.to_string()),
        ]
    }
}

/// Why an event produced no write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Not RTM_NEWLINK / RTM_DELLINK.
    NotLink,
    /// Name starts with neither `Ethernet` nor `PortChannel` (or is unusable).
    Name,
    /// A teamd LAG netdev.
    Team,
    /// RTM_DELLINK with a master: a port leaving a bridge or LAG, not a deleted netdev.
    DelWithMaster,
    /// An interface that existed before a cold start.
    OldInterface,
}

/// What one event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// RTM_NEWLINK of a port: write its state (if APPL_DB knows the port).
    Set {
        /// Port.
        name: PortName,
        /// New state.
        state: PortState,
    },
    /// RTM_DELLINK of a port: delete its STATE_DB entry.
    Delete {
        /// Port.
        name: PortName,
    },
    /// Nothing to do.
    Ignore(Ignored),
}

/// Whether LinkSync handles netdevs of this name (its prefix test).
pub fn is_port_name(name: &[u8]) -> bool {
    PORT_PREFIXES.iter().any(|p| name.starts_with(p.as_bytes()))
}

/// Applies LinkSync's decision procedure, in its order: type, name prefix, team kind, DELLINK
/// with master, old interface.
pub fn classify(ev: &PortEvent, old_ifindexes: &HashSet<u32>) -> Verdict {
    if ev.msg_type != RTM_NEWLINK && ev.msg_type != RTM_DELLINK {
        return Verdict::Ignore(Ignored::NotLink);
    }
    let raw = ev.name_bytes();
    if !is_port_name(raw) {
        return Verdict::Ignore(Ignored::Name);
    }
    let Some(name) = PortName::new(raw) else {
        return Verdict::Ignore(Ignored::Name);
    };
    if ev.kind_bytes() == TEAM_KIND {
        return Verdict::Ignore(Ignored::Team);
    }
    if ev.master != 0 && ev.msg_type == RTM_DELLINK {
        return Verdict::Ignore(Ignored::DelWithMaster);
    }
    if old_ifindexes.contains(&ev.ifindex) {
        return Verdict::Ignore(Ignored::OldInterface);
    }
    if ev.msg_type == RTM_DELLINK {
        Verdict::Delete { name }
    } else {
        Verdict::Set { name, state: PortState::of(ev) }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use portsyncd_common::{IFF_RUNNING, IFF_UP};

    pub(crate) fn ev(msg_type: u16, ifindex: u32, name: &str, flags: u32, mtu: u32) -> PortEvent {
        let mut e = PortEvent::zeroed();
        e.msg_type = msg_type;
        e.ifindex = ifindex;
        e.flags = flags;
        e.mtu = mtu;
        e.set_name(name.as_bytes());
        e
    }

    fn none() -> HashSet<u32> {
        HashSet::new()
    }

    #[test]
    fn newlink_of_a_port_is_a_set_with_iff_up_and_iff_running() {
        let v = classify(&ev(RTM_NEWLINK, 5, "Ethernet0", IFF_UP, 9100), &none());
        let Verdict::Set { name, state } = v else { panic!("{v:?}") };
        assert_eq!(name.as_str(), "Ethernet0");
        assert_eq!(state, PortState { admin_up: true, oper_up: false, mtu: 9100 });
        // IFF_LOWER_UP alone is not oper up: oper is IFF_RUNNING.
        let v = classify(&ev(RTM_NEWLINK, 5, "Ethernet0", IFF_UP | 0x10000, 9100), &none());
        assert!(matches!(v, Verdict::Set { state: PortState { oper_up: false, .. }, .. }));
        let v = classify(&ev(RTM_NEWLINK, 5, "PortChannel1.10", IFF_RUNNING, 1500), &none());
        assert!(matches!(v, Verdict::Set { state: PortState { oper_up: true, admin_up: false, .. }, .. }));
    }

    #[test]
    fn names_outside_the_prefixes_are_ignored() {
        for n in ["lo", "eth0", "Vlan1000", "Bridge", "docker0", "Eth0.10", "Po1.10", "ethernet0"] {
            assert_eq!(classify(&ev(RTM_NEWLINK, 1, n, IFF_UP, 1500), &none()), Verdict::Ignore(Ignored::Name), "{n}");
        }
    }

    #[test]
    fn team_kind_del_with_master_and_old_interfaces_are_ignored() {
        let mut team = ev(RTM_NEWLINK, 3, "PortChannel1", IFF_UP, 9100);
        team.set_kind(b"team");
        assert_eq!(classify(&team, &none()), Verdict::Ignore(Ignored::Team));
        let mut leave = ev(RTM_DELLINK, 3, "Ethernet0", IFF_UP, 9100);
        leave.master = 9;
        assert_eq!(classify(&leave, &none()), Verdict::Ignore(Ignored::DelWithMaster));
        // NEWLINK with a master (a LAG or bridge member) is processed.
        let mut member = ev(RTM_NEWLINK, 3, "Ethernet0", IFF_UP, 9100);
        member.master = 9;
        assert!(matches!(classify(&member, &none()), Verdict::Set { .. }));
        let old: HashSet<u32> = [3].into_iter().collect();
        assert_eq!(classify(&ev(RTM_NEWLINK, 3, "Ethernet0", 0, 1), &old), Verdict::Ignore(Ignored::OldInterface));
        assert_eq!(classify(&ev(RTM_DELLINK, 3, "Ethernet0", 0, 1), &old), Verdict::Ignore(Ignored::OldInterface));
        assert!(matches!(classify(&ev(RTM_DELLINK, 4, "Ethernet0", 0, 1), &old), Verdict::Delete { .. }));
        assert_eq!(classify(&ev(99, 4, "Ethernet0", 0, 1), &old), Verdict::Ignore(Ignored::NotLink));
    }

    #[test]
    fn state_fields_match_the_cpp_daemon() {
        let f = PortState { admin_up: false, oper_up: true, mtu: 1500 }.fields();
        let got: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(got, [("state", "ok"), ("netdev_oper_status", "up"), ("admin_status", "down"), ("mtu", "1500")]);
    }

    #[test]
    fn port_name_rejects_unusable_names() {
        assert!(PortName::new(b"").is_none());
        assert!(PortName::new(b"Ethernet01234567").is_none());
        assert!(PortName::new(&[0x45, 0xff]).is_none());
        assert_eq!(PortName::new(b"Ethernet4").map(|n| n.to_string()).as_deref(), Some("Ethernet4"));
    }
}
