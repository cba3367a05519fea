//! Independent kernel-side witness: a thread inside the benchmark namespace reading RTNLGRP_LINK
//! in, one timestamped record per `Ethernet*` RTM_NEWLINK/RTM_DELLINK (and its ENOBUFS count) out.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use netlink_packet_core::{NetlinkBuffer, Parseable};
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use nix::sched::CloneFlags;
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use portsyncd_e2e::{BackgroundThread, StopFlag};

use super::now_ns;

/// `RTNLGRP_LINK`.
const RTNLGRP_LINK: u32 = 1;
/// `RTM_NEWLINK`.
pub const RTM_NEWLINK: u16 = 16;
/// `RTM_DELLINK`.
pub const RTM_DELLINK: u16 = 17;
/// `IFF_UP`.
pub const IFF_UP: u32 = 0x1;
/// A 1024-port storm is ~3,000 notifications of ~1.5 KiB of skb truesize each; 64 MiB leaves
/// room for the bench thread being descheduled for a while on a 2-core machine.
const RCVBUF: usize = 64 * 1024 * 1024;
/// How often the thread looks at its stop flag when nothing arrives.
const POLL: Duration = Duration::from_millis(50);

/// One link notification as the kernel sent it.
#[derive(Debug, Clone)]
pub struct KernelEvent {
    /// CLOCK_MONOTONIC when the bench thread received it.
    pub t_ns: u64,
    /// IFLA_IFNAME.
    pub port: String,
    /// RTM_NEWLINK or RTM_DELLINK.
    pub msg_type: u16,
    /// `ifi_flags`.
    pub flags: u32,
    /// IFLA_MTU, if present.
    pub mtu: Option<u32>,
    /// IFLA_INFO_KIND, if present.
    pub kind: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    enobufs: AtomicU64,
    last_ns: AtomicU64,
    received: AtomicU64,
    decoded: AtomicU64,
    events: Mutex<Vec<KernelEvent>>,
    error: Mutex<Option<String>>,
}

/// The receiving thread (SCHED_FIFO when possible) and the decoding thread; both are stopped and
/// joined on drop.
///
/// Receiving only timestamps and copies each datagram, so its receive times do not grow with a
/// backlog of messages waiting to be decoded (decoding costs tens of microseconds per message in
/// a debug build of xtask).
#[derive(Debug)]
pub struct KernelListener {
    shared: Arc<Shared>,
    /// Receiver first: dropping it closes the decoder's channel, which ends the decoder.
    _threads: [BackgroundThread; 2],
    /// Whether the receiving thread runs SCHED_FIFO (see [`super::realtime`]).
    pub realtime: bool,
}

impl KernelListener {
    /// Starts listening inside network namespace `ns` (a name under /run/netns); returns once
    /// the socket is subscribed, so every later link change is seen.
    pub fn start(ns: &str) -> anyhow::Result<Self> {
        let path = ["/run/netns", "/var/run/netns"]
            .iter()
            .map(|d| std::path::Path::new(d).join(ns))
            .find(|p| p.exists())
            .ok_or_else(|| anyhow!("network namespace {ns} not found under /run/netns"))?;
        let nsfile = File::open(&path).with_context(|| format!("open {}", path.display()))?;
        let shared = Arc::new(Shared::default());
        let (raw_tx, raw_rx) = mpsc::channel::<(u64, Vec<u8>)>();
        let (tx, rx) = mpsc::channel();
        let s = Arc::clone(&shared);
        let receiver =
            BackgroundThread::spawn(format!("bench-netlink-{ns}"), move |stop| receive(nsfile, &s, stop, &raw_tx, tx))
                .context("spawn netlink receiver thread")?;
        let s = Arc::clone(&shared);
        let decoder = BackgroundThread::spawn(format!("bench-decode-{ns}"), move |_| {
            // Ends when the receiver drops its sender.
            for (t, dgram) in raw_rx {
                let mut got = Vec::new();
                decode(&dgram, t, &mut got);
                if !got.is_empty() {
                    if let Ok(mut ev) = s.events.lock() {
                        ev.extend(got);
                    }
                }
                s.decoded.fetch_add(1, Ordering::Release);
            }
        })
        .context("spawn netlink decoder thread")?;
        // On an error both threads are dropped, which stops and joins them.
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(tid)) => Ok(KernelListener { shared, _threads: [receiver, decoder], realtime: super::realtime(tid) }),
            Ok(Err(e)) => Err(anyhow!("netlink listener in {ns}: {e}")),
            Err(e) => Err(anyhow!("netlink listener in {ns} did not start: {e}")),
        }
    }

    /// `Ethernet*` events received at or after `t_ns`, once every datagram received so far has
    /// been decoded (bounded wait).
    pub fn events_since(&self, t_ns: u64) -> Vec<KernelEvent> {
        let received = self.shared.received.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.shared.decoded.load(Ordering::Acquire) < received && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut ev = self.shared.events.lock().map(|e| e.clone()).unwrap_or_default();
        let start = ev.partition_point(|e| e.t_ns < t_ns);
        ev.split_off(start)
    }

    /// Receive time of the newest link message of any name (0 if none).
    pub fn last_ns(&self) -> u64 {
        self.shared.last_ns.load(Ordering::Relaxed)
    }

    /// ENOBUFS errors seen so far (each means the kernel dropped notifications for us).
    pub fn enobufs(&self) -> u64 {
        self.shared.enobufs.load(Ordering::Relaxed)
    }

    /// A receive error that ended the thread, if any.
    pub fn error(&self) -> Option<String> {
        self.shared.error.lock().ok().and_then(|e| e.clone())
    }
}

fn open_socket(nsfile: File) -> io::Result<Socket> {
    super::pin_witness();
    // Only this thread moves: setns(CLONE_NEWNET) is per thread, and the socket keeps the
    // namespace it was created in.
    nix::sched::setns(&nsfile, CloneFlags::CLONE_NEWNET)?;
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    if setsockopt(&sock, sockopt::RcvBufForce, &RCVBUF).is_err() {
        sock.set_rx_buf_sz(RCVBUF)?;
    }
    setsockopt(&sock, sockopt::ReceiveTimeout, &TimeVal::new(0, POLL.as_micros() as _))?;
    sock.add_membership(RTNLGRP_LINK)?;
    Ok(sock)
}

fn receive(
    nsfile: File,
    s: &Shared,
    stop: &StopFlag,
    out: &mpsc::Sender<(u64, Vec<u8>)>,
    ready: mpsc::Sender<Result<i32, String>>,
) {
    let sock = match open_socket(nsfile) {
        Ok(sock) => {
            let _ = ready.send(Ok(nix::unistd::gettid().as_raw()));
            sock
        }
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    while !stop.is_raised() {
        buf.clear();
        match sock.recv(&mut buf, 0) {
            Ok(_) => {
                let t = now_ns();
                s.last_ns.store(t, Ordering::Relaxed);
                s.received.fetch_add(1, Ordering::Release);
                if out.send((t, buf.clone())).is_err() {
                    return;
                }
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                s.enobufs.fetch_add(1, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                if let Ok(mut g) = s.error.lock() {
                    *g = Some(e.to_string());
                }
                return;
            }
        }
    }
}

/// Appends every `Ethernet*` link message of one datagram to `out`.
fn decode(buf: &[u8], t_ns: u64, out: &mut Vec<KernelEvent>) {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let Ok(nl) = NetlinkBuffer::new_checked(&buf[off..]) else { return };
        let len = nl.length() as usize;
        let msg_type = nl.message_type();
        if msg_type == RTM_NEWLINK || msg_type == RTM_DELLINK {
            if let Ok(link) = LinkMessage::parse(nl.payload()) {
                let mut ev = KernelEvent {
                    t_ns,
                    port: String::new(),
                    msg_type,
                    flags: link.header.flags.bits(),
                    mtu: None,
                    kind: None,
                };
                for attr in &link.attributes {
                    match attr {
                        LinkAttribute::IfName(n) => ev.port = n.clone(),
                        LinkAttribute::Mtu(m) => ev.mtu = Some(*m),
                        LinkAttribute::LinkInfo(infos) => {
                            for i in infos {
                                if let LinkInfo::Kind(k) = i {
                                    ev.kind = Some(k.to_string());
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if ev.port.starts_with("Ethernet") {
                    out.push(ev);
                }
            }
        }
        if len < 16 {
            return;
        }
        off += (len + 3) & !3;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_link_changes_in_its_namespace() {
        let ns = portsyncd_e2e::NetNs::new();
        let l = KernelListener::start(ns.name()).unwrap();
        let t0 = now_ns();
        ns.veth(7);
        ns.ports_up([7]);
        ns.ip(&["link", "set", "Ethernet7", "mtu", "9000"]);
        ns.ip(&["link", "del", "Ethernet7"]);
        portsyncd_e2e::wait_for(portsyncd_e2e::DEFAULT_TIMEOUT, "the RTM_DELLINK of Ethernet7", || {
            let ev = l.events_since(t0);
            if ev.iter().any(|e| e.msg_type == RTM_DELLINK) {
                Ok(())
            } else {
                Err(format!("{ev:?}"))
            }
        });
        let ev = l.events_since(t0);
        assert!(ev.iter().all(|e| e.port == "Ethernet7" && e.t_ns >= t0), "{ev:?}");
        assert_eq!(ev.first().map(|e| e.kind.as_deref()), Some(Some("veth")), "{ev:?}");
        assert!(ev.iter().any(|e| e.flags & IFF_UP != 0), "{ev:?}");
        assert!(ev.iter().any(|e| e.mtu == Some(9000)), "{ev:?}");
        assert_eq!(l.enobufs(), 0);
        assert!(l.error().is_none());
    }
}
