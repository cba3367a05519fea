//! Where events enter: the event socket (netlink mode, and the eBPF filter's overflow path) and
//! the eBPF ring buffer. One call drains everything ready, as one batch of [`PortEvent`]s.
//!
//! When events come in a storm, waking per event costs more than the event (a context switch,
//! then a Redis round trip for two or three events). So once a wake-up finds changes of more
//! than one port waiting (one change of one port often comes as two or three messages), the
//! source stops waiting for events and reads them on a microsecond timer instead,
//! one poll interval after the previous read, the interval doubling from [`POLL_START_NS`] up to
//! `--batch-linger-us` while polls keep finding events; in eBPF mode the kernel program also
//! stops waking the daemon meanwhile. The first poll that finds nothing ends the storm, so an
//! isolated event is still read the moment it arrives, and events that come one at a time (a
//! port re-created every few milliseconds) never start a storm.

use std::io;

use portsyncd_common::{origin, PortEvent};

use crate::clock::monotonic_ns;
use crate::ebpf::EbpfCapture;
use crate::timer::PreciseTimer;

/// The first poll interval of a storm.
pub const POLL_START_NS: u64 = 250_000;
use crate::netlink::parse::{for_each_message, Message};
use crate::netlink::socket::{grown_capacity, is_overrun, is_truncated, NlSocket, RECV_BUF};

/// Reading events failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The event socket failed with something other than an overrun.
    #[error("event socket read failed")]
    Socket(#[source] io::Error),
    /// The ring buffer failed.
    #[error(transparent)]
    Ebpf(Box<crate::ebpf::EbpfError>),
}

crate::described! {
    /// Counters of the source.
    #[derive(Debug, Default, Clone, Copy, serde::Serialize)]
    pub struct SourceCounters {
        /// Datagrams read from the event socket.
        pub datagrams: u64,
        /// Link events parsed from the socket (netlink mode, or eBPF overflow).
        pub socket_events: u64,
        /// Events read from the ring buffer.
        pub ring_events: u64,
        /// Messages that could not be decoded.
        pub malformed: u64,
        /// `ENOBUFS` on the event socket: notifications were lost, a resync follows.
        pub enobufs: u64,
        /// Queued events dropped because a dump superseded them.
        pub superseded: u64,
        /// Datagrams cut short by the receive buffer (MSG_TRUNC): a resync follows.
        pub truncated: u64,
        /// eBPF mode: link messages the filter passed to the socket although the ring had room
        /// (it could not parse them), decoded here like any netlink message.
        pub passed_through: u64,
        /// Storms begun: a wake-up found several events waiting, so the source polled on a
        /// timer until a poll found none.
        pub storms: u64,
        /// Timed reads during storms (each replaces a wake-up per event).
        pub storm_polls: u64,
    }
}

/// A storm's next read.
#[derive(Debug, Clone, Copy)]
struct Poll {
    /// When the last read was (monotonic ns).
    read_ns: u64,
    /// How long after it the next one is due.
    interval: u64,
    /// The storm is over; this poll catches events submitted while the kernel program was
    /// switching back to waking us.
    last: bool,
}

/// The poll interval after a read that found `events` (`None`: wait for events instead). A
/// storm begins when one read finds changes of several ports, goes on while polls find any
/// event, and the interval doubles per poll up to `max_ns` (0: never poll).
fn next_poll_interval(polling: Option<u64>, events: &[PortEvent], max_ns: u64) -> Option<u64> {
    match polling {
        _ if max_ns == 0 || events.is_empty() => None,
        None if several_ports(events) => Some(POLL_START_NS.min(max_ns)),
        None => None,
        Some(interval) => Some(interval.saturating_mul(2).min(max_ns)),
    }
}

/// Whether `events` change more than one port (netdevs LinkSync ignores do not count).
fn several_ports(events: &[PortEvent]) -> bool {
    let mut ports = events.iter().map(PortEvent::name_bytes).filter(|n| crate::linksync::is_port_name(n));
    match ports.next() {
        Some(first) => ports.any(|n| n != first),
        None => false,
    }
}

/// What a drain found besides events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// The kernel dropped notifications (`ENOBUFS`) or a datagram was truncated: state must be
    /// re-dumped.
    pub overrun: bool,
    /// eBPF mode: the ring was full (its `ring_full` counter advanced) and messages came
    /// through the socket instead. Their order relative to ring events is unknown, so state
    /// must be re-dumped too.
    pub ring_overflow: bool,
}

/// The event source.
#[derive(Debug)]
pub struct Source {
    sock: NlSocket,
    ebpf: Option<EbpfCapture>,
    buf: Vec<u8>,
    /// eBPF mode: the socket only carries overflow, so it is read only after tokio reported it
    /// readable (saves a syscall per batch). Always true in netlink mode.
    socket_ready: bool,
    /// The eBPF program's `ring_full` counter when last read.
    ring_full_seen: u64,
    /// Storm polling: the longest interval, zero when off.
    poll_max_ns: u64,
    /// In a storm, or its last poll: the next read is due one interval after the last.
    polling: Option<Poll>,
    /// The poll timer, made at the first storm.
    timer: Option<PreciseTimer>,
    /// Running counters.
    pub counters: SourceCounters,
}

impl Source {
    /// A source on `sock`, with the eBPF capture attached to it if there is one.
    pub fn new(sock: NlSocket, ebpf: Option<EbpfCapture>) -> Self {
        Self::with_recv_buf(sock, ebpf, RECV_BUF)
    }

    /// As [`Self::new`], with a first receive buffer of `recv_buf` bytes (grown on truncation).
    pub fn with_recv_buf(sock: NlSocket, ebpf: Option<EbpfCapture>, recv_buf: usize) -> Self {
        Self {
            sock,
            ebpf,
            buf: Vec::with_capacity(recv_buf),
            socket_ready: true,
            ring_full_seen: 0,
            poll_max_ns: 0,
            polling: None,
            timer: None,
            counters: SourceCounters::default(),
        }
    }

    /// In a storm, read on a timer instead of per event, at most `max` apart (zero: never poll).
    pub fn poll_storms(&mut self, max: std::time::Duration) {
        self.poll_max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    }

    /// The event socket (the eBPF filter attaches to it).
    pub fn socket(&self) -> &NlSocket {
        &self.sock
    }

    /// Switches to eBPF capture once `cap` is attached to [`Self::socket`]. Messages queued on the
    /// socket before the filter was attached are older than anything the ring will hold, so they
    /// are drained into `out` first, as netlink events.
    pub fn attach_ebpf(&mut self, cap: EbpfCapture, out: &mut Vec<PortEvent>) -> Result<Drained, SourceError> {
        self.socket_ready = true;
        let drained = self.drain_now(out, usize::MAX)?;
        self.ring_full_seen = cap.counters().map(|c| c.ring_full).unwrap_or(0);
        self.ebpf = Some(cap);
        Ok(drained)
    }

    /// The eBPF capture, if active.
    pub fn ebpf(&self) -> Option<&EbpfCapture> {
        self.ebpf.as_ref()
    }

    /// The eBPF capture, to reconfigure its kernel filter.
    pub fn ebpf_mut(&mut self) -> Option<&mut EbpfCapture> {
        self.ebpf.as_mut()
    }

    /// Waits until something is ready (in a storm: until the next poll is due), then appends
    /// everything ready (at most `max` events) to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<PortEvent>, max: usize) -> Result<Drained, SourceError> {
        loop {
            if let Some(poll) = self.polling {
                let timer = match self.timer.as_mut() {
                    Some(t) => t,
                    None => self.timer.insert(PreciseTimer::new().map_err(SourceError::Socket)?),
                };
                timer.sleep_until(poll.read_ns.saturating_add(poll.interval)).await.map_err(SourceError::Socket)?;
                self.counters.storm_polls += 1;
                // The socket is not waited on while polling: in eBPF mode, where it carries only
                // overflow, it is read when epoll saw data come in (netlink mode always reads it).
                self.socket_ready |= self.sock.take_ready();
            }
            let read_ns = monotonic_ns();
            let before = out.len();
            let drained = self.drain_now(out, max)?;
            if !out.is_empty() || drained.overrun || drained.ring_overflow {
                let storm = self.polling.filter(|p| !p.last).map(|p| p.interval);
                let interval = next_poll_interval(storm, out.get(before..).unwrap_or_default(), self.poll_max_ns);
                self.set_polling(interval.map(|interval| Poll { read_ns, interval, last: false }));
                return Ok(drained);
            }
            match self.polling {
                Some(p) if !p.last && self.ebpf.is_some() => {
                    // A quiet interval: the storm is over and events wake us again. A program
                    // run that read the old setting may still submit without waking anyone,
                    // so one last poll comes after the switch. (The netlink socket never stops
                    // signalling epoll, so netlink mode needs none.)
                    self.set_polling(Some(Poll { read_ns, interval: POLL_START_NS, last: true }));
                    continue;
                }
                Some(_) => self.set_polling(None),
                None => {}
            }
            match self.ebpf.as_mut() {
                Some(ring) => {
                    tokio::select! {
                        r = self.sock.wait_readable() => {
                            r.map_err(SourceError::Socket)?;
                            self.socket_ready = true;
                        }
                        r = ring.readable() => r.map_err(|e| SourceError::Ebpf(Box::new(e)))?,
                    }
                }
                None => self.sock.wait_readable().await.map_err(SourceError::Socket)?,
            }
        }
    }

    fn set_polling(&mut self, polling: Option<Poll>) {
        if self.polling.is_none() && polling.is_some_and(|p| !p.last) {
            self.counters.storms += 1;
        }
        self.polling = polling;
        if let Some(ring) = self.ebpf.as_mut() {
            // A failure only costs wake-ups; polling works either way.
            if let Err(e) = ring.set_polled(polling.is_some_and(|p| !p.last)) {
                tracing::debug!(error = %e, "cannot switch the ring's wake-ups");
            }
        }
    }

    /// Appends what is ready now, without waiting.
    pub fn drain_now(&mut self, out: &mut Vec<PortEvent>, max: usize) -> Result<Drained, SourceError> {
        let mut drained = Drained::default();
        if let Some(ring) = self.ebpf.as_mut() {
            let room = max.saturating_sub(out.len());
            self.counters.ring_events += ring.drain(out, room) as u64;
        }
        let ebpf_active = self.ebpf.is_some();
        let mut socket_links = 0u64;
        while out.len() < max && (self.socket_ready || !ebpf_active) {
            match self.sock.try_recv(&mut self.buf) {
                Ok(Some(len)) => {
                    self.counters.datagrams += 1;
                    if is_truncated(len, &self.buf) {
                        // The tail is lost: what it said is re-read by a dump.
                        self.counters.truncated += 1;
                        drained.overrun = true;
                        tracing::warn!(len, buf = self.buf.capacity(), "netlink datagram truncated; re-dumping");
                        self.buf = Vec::with_capacity(grown_capacity(len));
                        continue;
                    }
                    let ts = monotonic_ns();
                    let c = &mut self.counters;
                    for_each_message(&self.buf, origin::NETLINK, ts, |_, m| match m {
                        Message::Link(ev) => {
                            c.socket_events += 1;
                            socket_links += 1;
                            out.push(ev);
                        }
                        Message::Malformed => c.malformed += 1,
                        Message::Overrun => drained.overrun = true,
                        _ => {}
                    });
                }
                Ok(None) => {
                    self.socket_ready = false;
                    break;
                }
                Err(e) if is_overrun(&e) => {
                    self.counters.enobufs += 1;
                    drained.overrun = true;
                }
                Err(e) => return Err(SourceError::Socket(e)),
            }
        }
        if socket_links > 0 {
            if let Some(ring) = self.ebpf.as_ref() {
                // The filter passes a link message to the socket when the ring is full (order
                // vs the ring lost: resync) or when it cannot parse it (decoded above, in
                // order with the socket's other messages: nothing lost).
                let ring_full = ring.counters().map(|c| c.ring_full).unwrap_or(u64::MAX);
                if ring_full != self.ring_full_seen {
                    self.ring_full_seen = ring_full;
                    drained.ring_overflow = true;
                } else {
                    self.counters.passed_through += socket_links;
                }
            }
        }
        Ok(drained)
    }

    /// Drops everything queued: a dump is about to supersede it. Overruns met here need no
    /// separate resync, since the dump that follows is one.
    pub fn discard_queued(&mut self) -> Result<(), SourceError> {
        let mut scratch = Vec::new();
        self.socket_ready = true;
        loop {
            scratch.clear();
            let before = self.counters.enobufs;
            self.drain_now(&mut scratch, 4096)?;
            self.counters.superseded += scratch.len() as u64;
            if scratch.is_empty() && self.counters.enobufs == before {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str) -> PortEvent {
        let mut e = PortEvent::zeroed();
        e.set_name(name.as_bytes());
        e
    }

    #[test]
    fn a_storm_starts_with_several_ports_waiting_doubles_its_interval_and_ends_with_an_empty_poll() {
        let max = 2_000_000;
        let one_port = [ev("Ethernet0"), ev("pe0"), ev("Ethernet0")];
        let two_ports = [ev("Ethernet0"), ev("Ethernet4")];
        assert_eq!(next_poll_interval(None, &one_port, max), None, "one port's messages: read per event");
        assert_eq!(next_poll_interval(None, &[ev("pe0"), ev("pe4")], max), None, "not ports");
        assert_eq!(next_poll_interval(None, &two_ports, max), Some(POLL_START_NS), "a backlog starts a storm");
        assert_eq!(next_poll_interval(Some(250_000), &one_port[..1], max), Some(500_000), "a poll with events goes on");
        assert_eq!(next_poll_interval(Some(1_500_000), &two_ports, max), Some(max), "capped");
        assert_eq!(next_poll_interval(Some(max), &[], max), None, "an empty poll ends it");
        assert_eq!(next_poll_interval(None, &two_ports, 0), None, "0: never poll");
        assert_eq!(next_poll_interval(None, &two_ports, 100_000), Some(100_000), "a maximum below the start");
    }
}
