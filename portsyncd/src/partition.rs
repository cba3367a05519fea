//! Which ports this instance owns when several portsyncd instances share a switch.
//!
//! Every instance computes the same answer from the same input: the CONFIG_DB `PORT` table,
//! ordered by each port's `index` field (numerically; a port without one comes after those with
//! one), then by name in natural order (`Ethernet4` before `Ethernet12`). That order is the
//! *partition table*.
//!
//! - `even`: instance `k` of `M` owns the table's positions `k*n/M .. (k+1)*n/M` (a contiguous
//!   block, so breakouts of one front-panel port stay together and a port added to the end
//!   moves no other port).
//! - `range:FIRST-LAST`: the positions FIRST..=LAST (numbers, or port names standing for their
//!   positions).
//! - `list:NAME,...`: exactly these names (ports or `PortChannel*` netdevs).
//!
//! Names outside every share (netdevs the table does not know, `PortChannel*` unless a list
//! names them, and with `range`/`list` whatever no instance claims) belong to instance 0, the
//! leader. The leader learns the other instances' claims from their registry records
//! ([`crate::instances`]) and gives those names up.

use std::fmt;
use std::str::FromStr;

use crate::linksync::{is_port_name, PortMap, PortName};

/// The leader's id; it owns every name no share names.
pub const LEADER: u16 = 0;

/// One end of a `range:` partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A position in the partition table (0-based).
    Position(usize),
    /// A port, standing for its position.
    Port(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Position(p) => write!(f, "{p}"),
            Endpoint::Port(n) => f.write_str(n),
        }
    }
}

/// `--partition`, as given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PartitionSpec {
    /// An equal contiguous block of the partition table per instance.
    #[default]
    Even,
    /// The positions `first..=last` of the partition table.
    Range {
        /// First position (or port).
        first: Endpoint,
        /// Last position (or port), inclusive.
        last: Endpoint,
    },
    /// These names.
    List(Vec<String>),
}

impl fmt::Display for PartitionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionSpec::Even => f.write_str("even"),
            PartitionSpec::Range { first, last } => write!(f, "range:{first}-{last}"),
            PartitionSpec::List(names) => write!(f, "list:{}", names.join(",")),
        }
    }
}

/// A partition that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    /// `--partition` does not parse.
    #[error("`{spec}`: {reason} (expected `even`, `range:FIRST-LAST` or `list:NAME,NAME,...`)")]
    Syntax {
        /// The text given.
        spec: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A range end names a port the CONFIG_DB PORT table does not have, or a position past it.
    #[error("partition range end `{end}` is not in the CONFIG_DB PORT table ({len} ports)")]
    NoSuchEnd {
        /// The end.
        end: String,
        /// Ports in the table.
        len: usize,
    },
    /// FIRST comes after LAST.
    #[error("partition range {first}-{last} is empty (positions {from} > {to})")]
    Reversed {
        /// First end.
        first: String,
        /// Last end.
        last: String,
        /// Its position.
        from: usize,
        /// Its position.
        to: usize,
    },
    /// A list entry is not a name portsyncd handles.
    #[error("partition list entry `{0}` is not an Ethernet* or PortChannel* name of at most 15 bytes")]
    BadName(String),
}

impl FromStr for PartitionSpec {
    type Err = PartitionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = |reason| PartitionError::Syntax { spec: s.to_owned(), reason };
        if s == "even" {
            return Ok(PartitionSpec::Even);
        }
        if let Some(range) = s.strip_prefix("range:") {
            let (a, b) = range.split_once('-').ok_or_else(|| syntax("a range is FIRST-LAST"))?;
            let end = |t: &str| -> Result<Endpoint, PartitionError> {
                let t = t.trim();
                if t.is_empty() {
                    return Err(syntax("a range end is empty"));
                }
                Ok(match t.parse::<usize>() {
                    Ok(p) => Endpoint::Position(p),
                    Err(_) => Endpoint::Port(t.to_owned()),
                })
            };
            return Ok(PartitionSpec::Range { first: end(a)?, last: end(b)? });
        }
        if let Some(list) = s.strip_prefix("list:") {
            let names: Vec<String> = list.split(',').map(|n| n.trim().to_owned()).collect();
            if names.iter().any(String::is_empty) {
                return Err(syntax("a list entry is empty"));
            }
            for n in &names {
                if !is_port_name(n.as_bytes()) || PortName::new(n.as_bytes()).is_none() {
                    return Err(PartitionError::BadName(n.clone()));
                }
            }
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            if sorted.len() != names.len() {
                return Err(syntax("a list names a port twice"));
            }
            return Ok(PartitionSpec::List(names));
        }
        Err(syntax("unknown kind"))
    }
}

/// `(index, name)` of each CONFIG_DB `PORT` entry -> the partition table: ordered by `index`
/// (numerically; missing or unparsable last), then by name in natural order.
pub fn partition_table<'a>(ports: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Vec<PortName> {
    let mut rows: Vec<(u64, NaturalKey<'a>, PortName)> = ports
        .into_iter()
        .filter_map(|(name, index)| {
            let port = PortName::new(name.as_bytes())?;
            let index = index.and_then(|i| i.trim().parse::<u64>().ok()).unwrap_or(u64::MAX);
            Some((index, NaturalKey::of(name), port))
        })
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, _, p)| p).collect()
}

/// A name split into text and numbers, so that `Ethernet4` sorts before `Ethernet12`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct NaturalKey<'a>(Vec<(&'a str, u64)>);

impl<'a> NaturalKey<'a> {
    fn of(name: &'a str) -> Self {
        let mut parts = Vec::new();
        let mut rest = name;
        while !rest.is_empty() {
            let text_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let (text, tail) = rest.split_at(text_len);
            let digits_len = tail.find(|c: char| !c.is_ascii_digit()).unwrap_or(tail.len());
            let (digits, tail) = tail.split_at(digits_len);
            parts.push((text, digits.parse::<u64>().unwrap_or(0)));
            rest = tail;
        }
        Self(parts)
    }
}

/// Who owns which port, as far as this instance knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    me: u16,
    instances: u16,
    /// Owners of the names some share names; every other name is the leader's.
    owners: PortMap<u16>,
}

impl Default for Partition {
    fn default() -> Self {
        Self::single()
    }
}

impl Partition {
    /// One instance: it owns everything.
    pub fn single() -> Self {
        Self { me: LEADER, instances: 1, owners: PortMap::default() }
    }

    /// Instance `me` of `instances` with `spec`, over the partition `table`.
    pub fn compute(spec: &PartitionSpec, me: u16, instances: u16, table: &[PortName]) -> Result<Self, PartitionError> {
        let mut p = Self { me, instances, owners: PortMap::default() };
        if instances <= 1 {
            return Ok(Self::single());
        }
        match spec {
            PartitionSpec::Even => {
                let (n, m) = (table.len(), usize::from(instances));
                for (pos, port) in table.iter().enumerate() {
                    // Position pos is in block k when k*n/m <= pos < (k+1)*n/m.
                    let owner = (0..m).find(|k| pos < (k + 1) * n / m).unwrap_or(m - 1);
                    p.owners.insert(*port, owner as u16);
                }
            }
            PartitionSpec::Range { first, last } => {
                let from = position(first, table)?;
                let to = position(last, table)?;
                if from > to {
                    return Err(PartitionError::Reversed {
                        first: first.to_string(),
                        last: last.to_string(),
                        from,
                        to,
                    });
                }
                for port in table.iter().skip(from).take(to - from + 1) {
                    p.owners.insert(*port, me);
                }
            }
            PartitionSpec::List(names) => {
                for n in names {
                    let port = PortName::new(n.as_bytes()).ok_or_else(|| PartitionError::BadName(n.clone()))?;
                    p.owners.insert(port, me);
                }
            }
        }
        Ok(p)
    }

    /// This instance's id.
    pub fn me(&self) -> u16 {
        self.me
    }

    /// More than one instance shares the ports.
    pub fn is_partitioned(&self) -> bool {
        self.instances > 1
    }

    /// The instance that owns `name`.
    pub fn owner(&self, name: &PortName) -> u16 {
        self.owners.get(name).copied().unwrap_or(LEADER)
    }

    /// This instance handles `name`.
    pub fn owns(&self, name: &PortName) -> bool {
        self.instances <= 1 || self.owner(name) == self.me
    }

    /// The names this instance's own share names (the leader's catch-all not included).
    pub fn claims(&self) -> Vec<PortName> {
        let mut v: Vec<PortName> = self.owners.iter().filter(|(_, o)| **o == self.me).map(|(n, _)| *n).collect();
        v.sort();
        v
    }

    /// Every name with a known owner other than the leader's default, for the kernel filter.
    pub fn assignments(&self) -> impl Iterator<Item = (&PortName, &u16)> {
        self.owners.iter()
    }

    /// Another instance claims `names` (the leader learns it from the registry). Returns whether
    /// anything changed. Names this instance's own share names stay its own: an overlap is
    /// refused at the other instance's start.
    pub fn assign(&mut self, names: &[PortName], owner: u16) -> bool {
        let mut changed = false;
        for n in names {
            if self.owners.get(n).is_some_and(|o| *o == self.me) {
                continue;
            }
            if self.owners.insert(*n, owner) != Some(owner) {
                changed = true;
            }
        }
        changed
    }
}

fn position(end: &Endpoint, table: &[PortName]) -> Result<usize, PartitionError> {
    let found = match end {
        Endpoint::Position(p) => (*p < table.len()).then_some(*p),
        Endpoint::Port(name) => table.iter().position(|p| p.as_str() == name),
    };
    found.ok_or_else(|| PartitionError::NoSuchEnd { end: end.to_string(), len: table.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> PortName {
        PortName::new(s.as_bytes()).unwrap()
    }

    fn sonic_table(ports: usize) -> Vec<PortName> {
        let names: Vec<(String, String)> =
            (0..ports).map(|i| (format!("Ethernet{}", i * 4), (i + 1).to_string())).collect();
        partition_table(names.iter().map(|(a, b)| (a.as_str(), Some(b.as_str()))))
    }

    #[test]
    fn specs_parse_and_print_back() {
        for text in ["even", "range:0-63", "range:Ethernet0-Ethernet252", "list:Ethernet0,PortChannel1"] {
            assert_eq!(text.parse::<PartitionSpec>().unwrap().to_string(), text);
        }
        for bad in [
            "",
            "odd",
            "range:5",
            "range:-3",
            "list:",
            "list:eth0",
            "list:Ethernet0,Ethernet0",
            "list:Ethernet0,,Ethernet4",
        ] {
            assert!(bad.parse::<PartitionSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table_is_ordered_by_index_then_natural_name() {
        let t = partition_table([
            ("Ethernet12", Some("3")),
            ("Ethernet4", Some("1")),
            ("Ethernet5", Some("1")),
            ("Ethernet100", None),
            ("Ethernet8", None),
            ("Ethernet0", Some("0")),
        ]);
        let names: Vec<&str> = t.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["Ethernet0", "Ethernet4", "Ethernet5", "Ethernet12", "Ethernet8", "Ethernet100"]);
    }

    /// SONiC names step by 4: "port number modulo M" would put every port on instance 0.
    #[test]
    fn even_splits_sonic_naming_into_equal_contiguous_blocks() {
        let table = sonic_table(256);
        for m in [2u16, 3, 4, 7] {
            let parts: Vec<Partition> =
                (0..m).map(|k| Partition::compute(&PartitionSpec::Even, k, m, &table).unwrap()).collect();
            let mut sizes = vec![0usize; usize::from(m)];
            for port in &table {
                let owners: Vec<u16> = parts.iter().filter(|p| p.owns(port)).map(Partition::me).collect();
                assert_eq!(owners.len(), 1, "{port} owned by {owners:?}");
                sizes[usize::from(owners[0])] += 1;
            }
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "m={m}: {sizes:?}");
        }
        let p1 = Partition::compute(&PartitionSpec::Even, 1, 4, &table).unwrap();
        assert_eq!(p1.claims().first(), Some(&n("Ethernet256")));
        // Names the table does not know are the leader's.
        let p0 = Partition::compute(&PartitionSpec::Even, 0, 4, &table).unwrap();
        assert!(p0.owns(&n("PortChannel1")) && p0.owns(&n("Ethernet9999")));
        assert!(!p1.owns(&n("PortChannel1")));
    }

    #[test]
    fn ranges_take_positions_or_names_and_the_leader_keeps_the_rest_until_told() {
        let table = sonic_table(8);
        let spec: PartitionSpec = "range:Ethernet8-5".parse().unwrap();
        let p = Partition::compute(&spec, 2, 3, &table).unwrap();
        let claims: Vec<String> = p.claims().iter().map(|c| c.to_string()).collect();
        assert_eq!(claims, ["Ethernet8", "Ethernet12", "Ethernet16", "Ethernet20"]);
        assert!(p.owns(&n("Ethernet8")) && p.owns(&n("Ethernet20")) && !p.owns(&n("Ethernet24")));
        let mut leader = Partition::compute(&"range:0-1".parse().unwrap(), 0, 3, &table).unwrap();
        assert!(leader.owns(&n("Ethernet8")), "unclaimed as far as the leader knows");
        assert!(leader.assign(&p.claims(), 2));
        assert!(!leader.owns(&n("Ethernet8")) && leader.owns(&n("Ethernet24")));
        assert!(!leader.assign(&p.claims(), 2), "nothing new");
        // The leader's own claims are not given away.
        assert!(!leader.assign(&[n("Ethernet0")], 2));
        assert!(leader.owns(&n("Ethernet0")));
    }

    #[test]
    fn bad_ranges_are_named() {
        let table = sonic_table(4);
        let err = Partition::compute(&"range:2-9".parse().unwrap(), 1, 2, &table).unwrap_err();
        assert_eq!(err, PartitionError::NoSuchEnd { end: "9".into(), len: 4 });
        let err = Partition::compute(&"range:Ethernet8-Ethernet0".parse().unwrap(), 1, 2, &table).unwrap_err();
        assert!(matches!(err, PartitionError::Reversed { from: 2, to: 0, .. }), "{err}");
        assert!(Partition::compute(&"range:Ethernet2-3".parse().unwrap(), 1, 2, &table).is_err());
    }

    #[test]
    fn lists_may_name_lags_and_one_instance_owns_everything() {
        let table = sonic_table(4);
        let p = Partition::compute(&"list:PortChannel5,Ethernet4".parse().unwrap(), 3, 4, &table).unwrap();
        assert!(p.owns(&n("PortChannel5")) && p.owns(&n("Ethernet4")) && !p.owns(&n("Ethernet0")));
        let single = Partition::compute(&PartitionSpec::Even, 0, 1, &table).unwrap();
        assert!(single.owns(&n("Ethernet0")) && !single.is_partitioned());
    }
}
