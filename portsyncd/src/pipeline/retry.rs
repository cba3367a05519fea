//! Ports whose change Redis refused (an error reply, not a lost connection): each is retried on
//! its own exponential backoff, newer kernel changes for it are folded into the held change, and
//! the WARN naming it is rate-limited. Nothing here touches other ports.

use std::time::{Duration, Instant};

use crate::batch::Pending;
use crate::linksync::{PortMap, PortName};
use crate::redis_conn::Refusal;

/// At most one WARN per port per this period while it keeps being refused.
pub const WARN_EVERY: Duration = Duration::from_secs(30);

/// Exponential backoff bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first refusal.
    pub min: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Backoff {
    /// Delay after the `attempt`-th refusal in a row (1-based): min, 2 min, 4 min, ... max.
    pub fn delay(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        self.min.saturating_mul(1u32 << shift).min(self.max)
    }
}

#[derive(Debug)]
struct Entry {
    /// `None` while a retry is in flight.
    pending: Option<Pending>,
    attempts: u32,
    due: Instant,
    refusal: Refusal,
    last_warn: Option<Instant>,
    suppressed: u32,
}

/// What to log about a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warn {
    /// Refusals in a row for this port.
    pub attempts: u32,
    /// WARNs left out since the last one.
    pub suppressed: u32,
    /// When the next retry is due, from now.
    pub retry_in: Duration,
}

/// The refused ports.
#[derive(Debug)]
pub struct RetryQueue {
    entries: PortMap<Entry>,
    backoff: Backoff,
}

/// Newest state wins; the oldest timestamp is kept for latency; a delete anywhere in between
/// means the row must be deleted before the next write (as [`crate::batch::Coalescer`] does).
pub fn fold(older: Pending, newer: Pending) -> Pending {
    let mut p = newer;
    p.first_ts = older.first_ts.min(newer.first_ts);
    if newer.state.is_some() && (older.state.is_none() || older.delete_first) {
        p.delete_first = true;
    }
    p
}

impl RetryQueue {
    /// An empty queue.
    pub fn new(backoff: Backoff) -> Self {
        Self { entries: PortMap::default(), backoff }
    }

    /// Ports waiting for a retry (in flight included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No port is waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `name` is waiting for a retry.
    pub fn contains(&self, name: &PortName) -> bool {
        self.entries.contains_key(name)
    }

    /// A new change for a port that is backing off joins its held change instead of being
    /// written now; returns false (and keeps nothing) for a port that is not backing off.
    pub fn hold(&mut self, name: PortName, p: Pending) -> bool {
        let Some(e) = self.entries.get_mut(&name) else { return false };
        e.pending = Some(match e.pending.take() {
            Some(old) => fold(old, p),
            None => p,
        });
        true
    }

    /// Takes the held changes whose retry is due; their entries stay (in flight) until
    /// [`Self::succeeded`] or [`Self::refused`].
    pub fn take_due(&mut self, now: Instant, out: &mut PortMap<Pending>) {
        for (name, e) in &mut self.entries {
            if e.due <= now {
                if let Some(p) = e.pending.take() {
                    let p = match out.remove(name) {
                        Some(newer) => fold(p, newer),
                        None => p,
                    };
                    out.insert(*name, p);
                }
            }
        }
    }

    /// Redis accepted `name`'s change: it leaves the queue.
    pub fn succeeded(&mut self, name: &PortName) {
        self.entries.remove(name);
    }

    /// Redis refused `name`'s change `p`: hold it for a retry after the next backoff step.
    /// Returns what to log, or `None` while the port's WARN is rate-limited.
    pub fn refused(&mut self, name: PortName, p: Pending, refusal: Refusal, now: Instant) -> Option<Warn> {
        let e = self.entries.entry(name).or_insert_with(|| Entry {
            pending: None,
            attempts: 0,
            due: now,
            refusal: refusal.clone(),
            last_warn: None,
            suppressed: 0,
        });
        e.attempts += 1;
        e.refusal = refusal;
        let retry_in = self.backoff.delay(e.attempts);
        e.due = now + retry_in;
        e.pending = Some(match e.pending.take() {
            // A newer change arrived while this one was in flight.
            Some(newer) => fold(p, newer),
            None => p,
        });
        if e.last_warn.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            e.suppressed += 1;
            return None;
        }
        e.last_warn = Some(now);
        let warn = Warn { attempts: e.attempts, suppressed: e.suppressed, retry_in };
        e.suppressed = 0;
        Some(warn)
    }

    /// Redis just accepted a write, so refusals that were about the server rather than one key
    /// (MISCONF, OOM, READONLY, ...) may be over: those ports are retried now.
    pub fn expedite_server_wide(&mut self, now: Instant) {
        for e in self.entries.values_mut() {
            if !refusal_is_key_specific(&e.refusal) {
                e.due = e.due.min(now);
            }
        }
    }

    /// The earliest retry due, if any port holds a change.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.values().filter(|e| e.pending.is_some()).map(|e| e.due).min()
    }
}

/// WRONGTYPE is about the key itself; other refusals are about the server's state.
pub fn refusal_is_key_specific(r: &Refusal) -> bool {
    r.code == "WRONGTYPE"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linksync::PortState;

    fn n(s: &str) -> PortName {
        PortName::new(s.as_bytes()).unwrap()
    }
    fn set(admin: bool, ts: u64) -> Pending {
        Pending {
            state: Some(PortState { admin_up: admin, oper_up: false, mtu: 9100 }),
            delete_first: false,
            first_ts: ts,
            ifindex: 1,
        }
    }
    fn refusal(code: &str) -> Refusal {
        Refusal { code: code.into(), detail: "scripted".into() }
    }
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_from_min_to_max() {
        let b = Backoff { min: 100 * MS, max: 30_000 * MS };
        let got: Vec<u128> = (1..=12).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]);
        assert_eq!(b.delay(u32::MAX), b.max);
    }

    #[test]
    fn a_refused_port_waits_for_its_backoff_and_only_it() {
        let t0 = Instant::now();
        let mut q = RetryQueue::new(Backoff { min: 100 * MS, max: 1000 * MS });
        assert!(q.refused(n("Ethernet8"), set(true, 5), refusal("WRONGTYPE"), t0).is_some());
        let mut out = PortMap::default();
        q.take_due(t0 + 50 * MS, &mut out);
        assert!(out.is_empty(), "not due before its backoff");
        assert!(!q.hold(n("Ethernet0"), set(true, 6)), "other ports are not held");
        q.take_due(t0 + 100 * MS, &mut out);
        assert_eq!(out.keys().collect::<Vec<_>>(), [&n("Ethernet8")]);
        // Refused again: the delay doubles; the WARN is rate-limited.
        let p = out.remove(&n("Ethernet8")).unwrap();
        assert_eq!(q.refused(n("Ethernet8"), p, refusal("WRONGTYPE"), t0 + 100 * MS), None);
        assert_eq!(q.next_due(), Some(t0 + 300 * MS));
        q.succeeded(&n("Ethernet8"));
        assert!(q.is_empty());
    }

    #[test]
    fn newer_changes_fold_into_the_held_one() {
        let t0 = Instant::now();
        let mut q = RetryQueue::new(Backoff { min: 100 * MS, max: 1000 * MS });
        q.refused(n("Ethernet8"), set(true, 5), refusal("OOM"), t0);
        assert!(q.hold(n("Ethernet8"), set(false, 9)));
        let mut out = PortMap::default();
        q.take_due(t0 + 100 * MS, &mut out);
        let p = out[&n("Ethernet8")];
        assert_eq!(p.state.map(|s| s.admin_up), Some(false), "the newest state wins");
        assert_eq!(p.first_ts, 5, "latency counts from the oldest event");
        // A change arriving while the retry is in flight is kept for the next round.
        assert!(q.hold(n("Ethernet8"), set(true, 11)));
        q.refused(n("Ethernet8"), p, refusal("OOM"), t0 + 100 * MS);
        let mut out = PortMap::default();
        q.take_due(t0 + 10_000 * MS, &mut out);
        assert_eq!(out[&n("Ethernet8")].state.map(|s| s.admin_up), Some(true));
    }

    #[test]
    fn warns_once_per_period_and_reports_what_was_suppressed() {
        let t0 = Instant::now();
        let mut q = RetryQueue::new(Backoff { min: MS, max: MS });
        let mut warns = 0;
        let mut suppressed = 0;
        for i in 0..100u32 {
            if let Some(w) = q.refused(n("Ethernet8"), set(true, 1), refusal("WRONGTYPE"), t0 + i * 1000 * MS) {
                warns += 1;
                suppressed += w.suppressed;
            }
        }
        // 100 s of refusals: one WARN at 0 s, 30 s, 60 s, 90 s.
        assert_eq!(warns, 4);
        assert_eq!(suppressed, 87);
    }

    #[test]
    fn a_successful_write_expedites_server_wide_refusals_only() {
        let t0 = Instant::now();
        let mut q = RetryQueue::new(Backoff { min: 10_000 * MS, max: 10_000 * MS });
        q.refused(n("Ethernet0"), set(true, 1), refusal("MISCONF"), t0);
        q.refused(n("Ethernet8"), set(true, 1), refusal("WRONGTYPE"), t0);
        q.expedite_server_wide(t0 + MS);
        let mut out = PortMap::default();
        q.take_due(t0 + MS, &mut out);
        assert_eq!(out.keys().collect::<Vec<_>>(), [&n("Ethernet0")]);
    }

    #[test]
    fn fold_keeps_a_delete_in_between() {
        let del = Pending { state: None, ..set(true, 1) };
        assert!(fold(del, set(true, 2)).delete_first);
        assert!(!fold(set(false, 1), set(true, 2)).delete_first);
        assert_eq!(fold(set(true, 1), del).state, None);
    }
}
