//! The health model: one verdict (healthy / degraded / unhealthy) and the reasons for it, from
//! what the daemon already measures. Exported in the stats file, COUNTERS_DB, Prometheus and
//! systemd's STATUS line, so every place an operator looks says the same thing.
//!
//! Unhealthy means port state is not reaching Redis now (the loop stands still, or Redis is
//! unreachable). Degraded means it is, but something needs a look: writes refused, rows
//! repaired or a stall in the last [`RECENT`], eBPF unavailable, an initial dump that timed out.

use std::time::{Duration, Instant};

/// How long a stall or a repair keeps the daemon degraded after it happened.
pub const RECENT: Duration = Duration::from_secs(300);

/// The verdict, ordered from best to worst; the number is what COUNTERS_DB and Prometheus show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to report.
    Healthy = 0,
    /// Working, with something an operator should look at.
    Degraded = 1,
    /// Port state is not reaching Redis.
    Unhealthy = 2,
}

impl Status {
    /// The name used in logs and systemd's STATUS.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Unhealthy => "unhealthy",
        }
    }
}

/// Why the daemon is not healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The event loop stands still with changes pending (stall watchdog).
    LoopStalled,
    /// Redis is unreachable: changes are held until it is back.
    RedisDown,
    /// Redis refused writes for some ports; they are being retried.
    RefusedWrites,
    /// The event loop stalled within [`RECENT`].
    RecentStall,
    /// Rows were found drifted and rewritten within [`RECENT`].
    RecentRepairs,
    /// `--capture auto` fell back to netlink because eBPF cannot load on this host.
    EbpfFallback,
    /// The initial dump ended by timeout instead of its NLMSG_DONE.
    EoiuTimeout,
}

impl Reason {
    /// Every reason, in the order exports list them.
    pub const ALL: [Reason; 7] = [
        Reason::LoopStalled,
        Reason::RedisDown,
        Reason::RefusedWrites,
        Reason::RecentStall,
        Reason::RecentRepairs,
        Reason::EbpfFallback,
        Reason::EoiuTimeout,
    ];

    /// The name used in exports (field, label value, STATUS text).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LoopStalled => "loop_stalled",
            Reason::RedisDown => "redis_down",
            Reason::RefusedWrites => "refused_writes",
            Reason::RecentStall => "recent_stall",
            Reason::RecentRepairs => "recent_repairs",
            Reason::EbpfFallback => "ebpf_fallback",
            Reason::EoiuTimeout => "eoiu_timeout",
        }
    }

    fn status(self) -> Status {
        match self {
            Reason::LoopStalled | Reason::RedisDown => Status::Unhealthy,
            _ => Status::Degraded,
        }
    }
}

/// A verdict and its reasons.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// The worst status any reason gives.
    pub status: Status,
    /// Every reason that applies, in [`Reason::ALL`] order.
    pub reasons: Vec<Reason>,
}

impl Health {
    /// `healthy`, or `degraded: refused_writes, ebpf_fallback`: systemd's STATUS line.
    pub fn status_line(&self) -> String {
        if self.reasons.is_empty() {
            return self.status.as_str().to_owned();
        }
        let reasons: Vec<&str> = self.reasons.iter().map(|r| r.as_str()).collect();
        format!("{}: {}", self.status.as_str(), reasons.join(", "))
    }
}

/// The health in a stats snapshot (its `health` object), as the exports read it: the status
/// code and, for every reason in [`Reason::ALL`] order, whether it applies. `None` when the
/// snapshot has no health.
pub fn from_snapshot(snapshot: &serde_json::Value) -> Option<(u64, [(Reason, bool); Reason::ALL.len()])> {
    let code = snapshot.pointer("/health/code")?.as_u64()?;
    let active = snapshot.pointer("/health/reasons").and_then(|v| v.as_array());
    let on = |r: Reason| active.is_some_and(|a| a.iter().any(|v| v.as_str() == Some(r.as_str())));
    Some((code, Reason::ALL.map(|r| (r, on(r)))))
}

/// What the daemon knows right now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inputs {
    /// The stall watchdog sees the loop standing still now.
    pub stalled_now: bool,
    /// Stalls so far.
    pub stalls: u64,
    /// Redis is unreachable.
    pub redis_down: bool,
    /// Ports whose last write Redis refused, waiting for a retry.
    pub refused_ports: usize,
    /// Rows repaired so far.
    pub repairs: u64,
    /// eBPF was wanted (`auto`) and the host could not load it.
    pub ebpf_fallback: bool,
    /// The initial dump ended by timeout.
    pub eoiu_timeout: bool,
}

/// Turns [`Inputs`] into a [`Health`], remembering when the stall and repair counts last rose.
#[derive(Debug, Default)]
pub struct HealthMonitor {
    stalls: u64,
    repairs: u64,
    last_stall: Option<Instant>,
    last_repair: Option<Instant>,
}

impl HealthMonitor {
    /// A monitor that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The verdict for `inputs` at `now`.
    pub fn assess(&mut self, inputs: &Inputs, now: Instant) -> Health {
        if inputs.stalls > self.stalls {
            self.stalls = inputs.stalls;
            self.last_stall = Some(now);
        }
        if inputs.repairs > self.repairs {
            self.repairs = inputs.repairs;
            self.last_repair = Some(now);
        }
        let recent = |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) < RECENT);
        let mut reasons = Vec::new();
        for r in Reason::ALL {
            let applies = match r {
                Reason::LoopStalled => inputs.stalled_now,
                Reason::RedisDown => inputs.redis_down,
                Reason::RefusedWrites => inputs.refused_ports > 0,
                // A stall still going on is already LoopStalled.
                Reason::RecentStall => !inputs.stalled_now && recent(self.last_stall),
                Reason::RecentRepairs => recent(self.last_repair),
                Reason::EbpfFallback => inputs.ebpf_fallback,
                Reason::EoiuTimeout => inputs.eoiu_timeout,
            };
            if applies {
                reasons.push(r);
            }
        }
        let status = reasons.iter().map(|r| r.status()).max().unwrap_or(Status::Healthy);
        Health { status, reasons }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_wrong_is_healthy() {
        let h = HealthMonitor::new().assess(&Inputs::default(), Instant::now());
        assert_eq!(h, Health { status: Status::Healthy, reasons: vec![] });
        assert_eq!(h.status_line(), "healthy");
    }

    #[test]
    fn redis_down_or_a_stall_is_unhealthy_and_outranks_degraded_reasons() {
        let mut m = HealthMonitor::new();
        let now = Instant::now();
        let h = m.assess(&Inputs { redis_down: true, ebpf_fallback: true, ..Default::default() }, now);
        assert_eq!(h.status, Status::Unhealthy);
        assert_eq!(h.reasons, [Reason::RedisDown, Reason::EbpfFallback]);
        assert_eq!(h.status_line(), "unhealthy: redis_down, ebpf_fallback");
        let h = m.assess(&Inputs { stalled_now: true, stalls: 1, ..Default::default() }, now);
        assert_eq!((h.status, h.reasons), (Status::Unhealthy, vec![Reason::LoopStalled]));
    }

    #[test]
    fn refusals_fallback_and_eoiu_timeout_are_degraded() {
        let mut m = HealthMonitor::new();
        for (inputs, reason) in [
            (Inputs { refused_ports: 2, ..Default::default() }, Reason::RefusedWrites),
            (Inputs { ebpf_fallback: true, ..Default::default() }, Reason::EbpfFallback),
            (Inputs { eoiu_timeout: true, ..Default::default() }, Reason::EoiuTimeout),
        ] {
            let h = m.assess(&inputs, Instant::now());
            assert_eq!((h.status, h.reasons), (Status::Degraded, vec![reason]));
        }
    }

    #[test]
    fn a_stall_or_a_repair_degrades_for_the_recent_window_then_clears() {
        let mut m = HealthMonitor::new();
        let t0 = Instant::now();
        assert_eq!(m.assess(&Inputs::default(), t0).status, Status::Healthy);
        let stalled = Inputs { stalled_now: true, stalls: 1, ..Default::default() };
        assert_eq!(m.assess(&stalled, t0).reasons, [Reason::LoopStalled]);
        let after = Inputs { stalls: 1, repairs: 3, ..Default::default() };
        let h = m.assess(&after, t0 + Duration::from_secs(1));
        assert_eq!((h.status, h.reasons), (Status::Degraded, vec![Reason::RecentStall, Reason::RecentRepairs]));
        // The counts did not rise again: the window runs from when they last rose.
        let h = m.assess(&after, t0 + RECENT + Duration::from_secs(2));
        assert_eq!(h.status, Status::Healthy, "{h:?}");
        let h = m.assess(&Inputs { repairs: 4, ..after }, t0 + RECENT + Duration::from_secs(3));
        assert_eq!(h.reasons, [Reason::RecentRepairs]);
    }
}
