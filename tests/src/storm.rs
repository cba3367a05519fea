//! Flap storms for the tests: `rounds` rounds of every port down, mtu changed, up, carrier off and
//! on, then a mixed final state, all in one `ip -batch`; and the predicate that the kernel got
//! there.

use std::collections::BTreeMap;

use crate::netns::LinkState;

/// Port `i` ends admin-down if `i % 3 == 0`, carrier-less if `i % 3 == 1`, up otherwise; every
/// fifth gets mtu 9000. Not uniform, so a daemon publishing a stale or constant value cannot
/// match by accident.
pub fn storm_final(i: u32) -> (bool, bool, u32) {
    let mtu = if i.is_multiple_of(5) { 9000 } else { 1500 };
    match i % 3 {
        0 => (false, false, mtu),
        1 => (true, false, mtu),
        _ => (true, true, mtu),
    }
}

/// The `ip -batch` lines of a storm over ports `0..n`.
pub fn storm_lines(n: u32, rounds: u32) -> Vec<String> {
    let mut lines = Vec::new();
    for round in 0..rounds {
        lines.extend((0..n).map(|i| format!("link set Ethernet{i} down")));
        lines.extend((0..n).map(|i| format!("link set Ethernet{i} mtu {}", 9100 - round)));
        lines.extend((0..n).map(|i| format!("link set Ethernet{i} up")));
        lines.extend((0..n).map(|i| format!("link set pe{i} down")));
        lines.extend((0..n).map(|i| format!("link set pe{i} up")));
    }
    for i in 0..n {
        let (admin, oper, mtu) = storm_final(i);
        lines.push(format!("link set Ethernet{i} mtu {mtu}"));
        if !admin {
            lines.push(format!("link set Ethernet{i} down"));
        } else if !oper {
            lines.push(format!("link set pe{i} down"));
        }
    }
    lines
}

/// The kernel shows every port `0..n` in its [`storm_final`] state.
pub fn kernel_in_storm_final(n: u32) -> impl Fn(&BTreeMap<String, LinkState>) -> bool {
    move |links| {
        (0..n).all(|i| {
            let (admin, oper, mtu) = storm_final(i);
            links.get(&format!("Ethernet{i}")).is_some_and(|l| l.admin_up == admin && l.oper_up == oper && l.mtu == mtu)
        })
    }
}
