//! Kernel events and STATE_DB writes of one run in, event-to-STATE_DB latency distribution,
//! unwritten (coalesced) event count and final lag out; plus exact percentiles and medians.

use std::collections::HashMap;

use super::kernel::{KernelEvent, RTM_DELLINK};
use super::keyspace::KsEvent;

/// Latency figures of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    /// Kernel events that were followed by a STATE_DB write of their port.
    pub matched: u64,
    /// Of which the write came up to `slack` before the bench saw the event (latency 0).
    pub early: u64,
    /// Kernel events with no later write of their port (coalesced into a state already written,
    /// or a change of nothing portsyncd publishes).
    pub unwritten: u64,
    /// Kernel events the kernel itself reversed before the daemon's next write of their port
    /// (a port down and up again within one batch): no state to publish, so no latency. A
    /// daemon that writes every event has none; one that coalesces them has no write to time.
    pub undone: u64,
    /// Percentiles of event-to-write latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Last STATE_DB write minus last kernel event, microseconds (negative when the last events
    /// changed nothing that is written).
    pub lag_us: f64,
    /// STATE_DB `PORT_TABLE|*` writes seen.
    pub writes: u64,
    /// Of which deletions.
    pub deletes: u64,
}

/// A STATE_DB delete up to this long before the bench saw a port's RTM_DELLINK belongs to it:
/// nothing else deletes the key, and while the kernel tears a netdev down a witness sharing its
/// CPU with `ip` was seen to trail the daemon by up to 1.3 ms (see the `bench` module doc).
const DEL_WINDOW_NS: u64 = 2_000_000;

/// How far the bench's witness of kernel events was seen to trail a daemon's write under load
/// (`ip` holding a CPU in non-preemptible kernel work): a second write of a port since its
/// previous event, up to this long before the bench saw the event, was the daemon answering it.
const WITNESS_LAG_MAX_NS: u64 = 1_500_000;

/// Pairs every kernel event with the first STATE_DB write of the same port at or after it.
///
/// The bench sees an event some microseconds after the kernel sent it (a thread wake-up; a
/// daemon that is already running sees it sooner), so a write up to `slack_ns` before the bench's
/// receive time still belongs to the event and counts as latency 0. Without that, the event would
/// be paired with the port's next write, possibly seconds later. Figures are thus accurate to
/// about `slack_ns`.
pub fn latency(kernel: &[KernelEvent], writes: &[KsEvent], slack_ns: u64) -> Latency {
    let mut by_port: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut dels: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut n_writes = 0u64;
    let mut deletes = 0u64;
    for w in writes {
        if let Some(p) = w.state_port() {
            by_port.entry(p).or_default().push(w.t_ns);
            n_writes += 1;
            if w.op == "del" {
                deletes += 1;
                dels.entry(p).or_default().push(w.t_ns);
            }
        }
    }
    for v in by_port.values_mut().chain(dels.values_mut()) {
        v.sort_unstable();
    }
    let first_from = |m: &HashMap<&str, Vec<u64>>, port: &str, from: u64| {
        m.get(port).and_then(|ws| ws.get(ws.partition_point(|&w| w < from)).copied())
    };
    let mut lat: Vec<u64> = Vec::with_capacity(kernel.len());
    let mut unwritten = 0u64;
    let mut early = 0u64;
    let mut undone = 0u64;
    let states = link_states(kernel);
    let mut seen: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in kernel.iter().enumerate() {
        seen.entry(e.port.as_str()).or_default().push(i);
    }
    for (i, e) in kernel.iter().enumerate() {
        let mut next = first_from(&by_port, &e.port, e.t_ns.saturating_sub(slack_ns));
        let port_events = &seen[e.port.as_str()];
        // This event's place among its port's events.
        let at = port_events.partition_point(|&j| j < i);
        let prev = at.checked_sub(1).map(|k| kernel[port_events[k]].t_ns);
        if let (Some(prev), Some(ws)) = (prev, by_port.get(e.port.as_str())) {
            // Writes after the previous event and before this one was seen: the first answered
            // the previous event; a second, close before, answered this one.
            let since = &ws[ws.partition_point(|&w| w <= prev)..ws.partition_point(|&w| w < e.t_ns)];
            if let [_, .., last] = since {
                if e.t_ns - last <= WITNESS_LAG_MAX_NS {
                    next = Some(next.map_or(*last, |n| n.min(*last)));
                }
            }
        }
        if e.msg_type == RTM_DELLINK {
            if let Some(d) = first_from(&dels, &e.port, e.t_ns.saturating_sub(DEL_WINDOW_NS)) {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        match next {
            Some(w) if reversed_before(kernel, &states, port_events, at, w) => undone += 1,
            Some(w) => {
                early += u64::from(w < e.t_ns);
                lat.push(w.saturating_sub(e.t_ns));
            }
            None => unwritten += 1,
        }
    }
    lat.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let last_k = kernel.iter().map(|e| e.t_ns).max();
    let last_w = writes.iter().filter(|w| w.state_port().is_some()).map(|w| w.t_ns).max();
    Latency {
        matched: lat.len() as u64,
        early,
        unwritten,
        undone,
        p50_us: percentile(&lat, 0.50).map_or(0.0, us),
        p99_us: percentile(&lat, 0.99).map_or(0.0, us),
        max_us: lat.last().copied().map_or(0.0, us),
        lag_us: match (last_k, last_w) {
            (Some(k), Some(w)) => (w as f64 - k as f64) / 1000.0,
            _ => 0.0,
        },
        writes: n_writes,
        deletes,
    }
}

/// What the daemon publishes of a link after a kernel event: gone, or (admin up, carrier, MTU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Gone,
    Present { up: bool, carrier: bool, mtu: Option<u32> },
}

const IFF_UP: u32 = 0x1;
const IFF_LOWER_UP: u32 = 0x1_0000;

/// The state after each event, an absent MTU carried over from the port's previous event.
fn link_states(kernel: &[KernelEvent]) -> Vec<LinkState> {
    let mut mtu: HashMap<&str, u32> = HashMap::new();
    kernel
        .iter()
        .map(|e| {
            if e.msg_type == RTM_DELLINK {
                return LinkState::Gone;
            }
            if let Some(m) = e.mtu {
                mtu.insert(&e.port, m);
            }
            LinkState::Present {
                up: e.flags & IFF_UP != 0,
                carrier: e.flags & IFF_LOWER_UP != 0,
                mtu: mtu.get(e.port.as_str()).copied(),
            }
        })
        .collect()
}

/// Whether the port returned to its state before its event `port_events[at]` through a later
/// event before the write at `w_ns` (`port_events`: the indices of that port's events, in time
/// order).
fn reversed_before(kernel: &[KernelEvent], states: &[LinkState], port_events: &[usize], at: usize, w_ns: u64) -> bool {
    let Some(before) = at.checked_sub(1).map(|k| states[port_events[k]]) else { return false };
    port_events[at + 1..].iter().take_while(|&&j| kernel[j].t_ns < w_ns).any(|&j| states[j] == before)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Median (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(port: &str, t: u64) -> KernelEvent {
        KernelEvent { t_ns: t, port: port.into(), msg_type: 16, flags: 0, mtu: None, kind: None }
    }

    fn w(port: &str, t: u64) -> KsEvent {
        KsEvent { t_ns: t, db: 6, key: format!("PORT_TABLE|{port}"), op: "hset".into() }
    }

    #[test]
    fn events_pair_with_the_next_write_of_their_port() {
        let kernel = [k("Ethernet0", 1_000), k("Ethernet0", 2_000), k("Ethernet1", 1_500), k("Ethernet0", 9_000)];
        let mut writes = vec![w("Ethernet0", 3_000), w("Ethernet1", 1_400), w("Ethernet1", 4_500)];
        writes[1].op = "del".into();
        let l = latency(&kernel, &writes, 0);
        // Ethernet0: 2000 and 1000 ns; Ethernet1: 3000 ns; the last Ethernet0 event has no write.
        assert_eq!(l.matched, 3);
        assert_eq!(l.early, 0);
        assert_eq!(l.unwritten, 1);
        assert_eq!(l.p50_us, 2.0);
        assert_eq!(l.max_us, 3.0);
        assert_eq!(l.writes, 3);
        assert_eq!(l.deletes, 1);
        assert_eq!(l.lag_us, -4.5);
    }

    #[test]
    fn a_write_just_before_the_bench_saw_the_event_is_latency_zero() {
        let kernel = [k("Ethernet0", 10_000), k("Ethernet0", 50_000)];
        let writes = [w("Ethernet0", 9_900), w("Ethernet0", 49_000), w("Ethernet0", 900_000)];
        let strict = latency(&kernel, &writes, 0);
        assert_eq!((strict.matched, strict.max_us), (2, 850.0));
        let l = latency(&kernel, &writes, 200);
        // 9_900 is within the slack of the first event; 49_000 is not within it of the second.
        assert_eq!((l.matched, l.early, l.p50_us, l.max_us), (2, 1, 0.0, 850.0));
    }

    #[test]
    fn a_delete_pairs_with_its_dellink_even_when_the_bench_saw_it_late() {
        let mut del = k("Ethernet0", 5_000_000);
        del.msg_type = RTM_DELLINK;
        let kernel = [k("Ethernet0", 1_000_000), del, k("Ethernet0", 9_000_000_000)];
        let mut writes = vec![w("Ethernet0", 1_100_000), w("Ethernet0", 3_800_000), w("Ethernet0", 9_000_100_000)];
        writes[1].op = "del".into();
        let l = latency(&kernel, &writes, 250_000);
        // Without the delete window the RTM_DELLINK would pair with the re-creation 9 s later.
        assert_eq!((l.matched, l.early, l.max_us), (3, 1, 100.0));
    }

    #[test]
    fn an_event_the_kernel_reversed_before_the_next_write_is_undone_not_late() {
        let state = |t: u64, flags: u32| KernelEvent { flags, ..k("Ethernet0", t) };
        let up = IFF_UP | IFF_LOWER_UP;
        // up (written), then down and up again 1 ns later: nothing to publish until the next
        // round's down at 500 ns, written at 501 ns.
        let kernel = [state(0, up), state(100, 0), state(101, up), state(500, 0)];
        let writes = [w("Ethernet0", 10), w("Ethernet0", 501)];
        let l = latency(&kernel, &writes, 0);
        assert_eq!((l.matched, l.undone, l.max_us), (2, 2, 0.01), "{l:?}");
        // Down, then a different change before the write: both are timed to the write.
        let kernel = [state(0, up), state(100, IFF_UP), state(150, 0)];
        let writes = [w("Ethernet0", 10), w("Ethernet0", 200)];
        let l = latency(&kernel, &writes, 0);
        assert_eq!((l.matched, l.undone, l.max_us), (3, 0, 0.1), "{l:?}");
    }

    #[test]
    fn a_second_write_just_before_a_late_witness_answers_the_event() {
        // Up at 0 written at 3.5 ms, running at 3.8 ms but seen by the bench only after the
        // daemon's second write at 3.5 ms (beyond the slack): latency 0, not the next round's.
        let state = |t: u64, flags: u32| KernelEvent { flags, ..k("Ethernet0", t) };
        let kernel = [state(0, IFF_UP), state(3_800_000, IFF_UP | IFF_LOWER_UP), state(340_000_000, 0)];
        let writes = [w("Ethernet0", 3_500_000), w("Ethernet0", 3_500_100), w("Ethernet0", 340_001_000)];
        let l = latency(&kernel, &writes, 250_000);
        assert_eq!((l.matched, l.early), (3, 1), "{l:?}");
        assert_eq!(l.max_us, 3_500.0);
        // One write only since the previous event: it was that event's, not this one's.
        let writes = [w("Ethernet0", 3_500_000), w("Ethernet0", 340_001_000)];
        let l = latency(&kernel, &writes, 250_000);
        assert!(l.max_us > 300_000.0, "{l:?}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
