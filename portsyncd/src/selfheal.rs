//! Self-healing: what a read-back of our STATE_DB rows says about drift. A row that someone
//! else deleted or altered no longer says what we wrote; those ports are forgotten by the
//! reconciler so that the dump taken with the read-back rewrites them.

use crate::linksync::{PortName, PortState};

/// One drifted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The port.
    pub port: PortName,
    /// The fields that differ (`"row"` when the whole row is missing or unreadable).
    pub fields: Vec<&'static str>,
}

/// Compares what we wrote with what Redis holds (our four fields, `None` = row missing or
/// unreadable) and returns the rows that drifted.
pub fn drifted<'a>(
    rows: impl IntoIterator<Item = (PortName, PortState, Option<&'a [Option<String>; 4]>)>,
) -> Vec<Drift> {
    let mut out = Vec::new();
    for (port, wrote, held) in rows {
        let Some(held) = held.filter(|h| h.iter().any(Option::is_some)) else {
            out.push(Drift { port, fields: vec!["row"] });
            continue;
        };
        let fields: Vec<&'static str> = wrote
            .fields()
            .iter()
            .zip(held.iter())
            .filter(|((_, want), got)| got.as_deref() != Some(want.as_str()))
            .map(|((name, _), _)| *name)
            .collect();
        if !fields.is_empty() {
            out.push(Drift { port, fields });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> PortName {
        PortName::new(s.as_bytes()).unwrap()
    }
    fn row(v: [&str; 4]) -> [Option<String>; 4] {
        v.map(|s| Some(s.to_owned()))
    }

    #[test]
    fn missing_rows_and_altered_fields_drift_identical_rows_do_not() {
        let up = PortState { admin_up: true, oper_up: true, mtu: 9100 };
        let same = row(["ok", "up", "up", "9100"]);
        let mtu = row(["ok", "up", "up", "1500"]);
        let gone: [Option<String>; 4] = Default::default();
        let mut partial = same.clone();
        partial[1] = None;
        let got = drifted([
            (n("Ethernet0"), up, Some(&same)),
            (n("Ethernet4"), up, Some(&mtu)),
            (n("Ethernet8"), up, Some(&gone)),
            (n("Ethernet12"), up, None),
            (n("Ethernet16"), up, Some(&partial)),
        ]);
        assert_eq!(
            got,
            [
                Drift { port: n("Ethernet4"), fields: vec!["mtu"] },
                Drift { port: n("Ethernet8"), fields: vec!["row"] },
                Drift { port: n("Ethernet12"), fields: vec!["row"] },
                Drift { port: n("Ethernet16"), fields: vec!["netdev_oper_status"] },
            ]
        );
    }
}
