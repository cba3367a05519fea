//! The kernel half of eBPF capture without the daemon: `EbpfCapture` attached to the daemon's own
//! event socket (`NlSocket::open_events`) inside a fresh namespace; links made there in, what the
//! program puts in the ring, what it counts and what still reaches the socket out.

use std::os::fd::AsFd;

use portsyncd::clock::monotonic_ns;
use portsyncd::config::DEFAULT_RCVBUF;
use portsyncd::ebpf::{EbpfCapture, EbpfConfig, MIN_RING_BYTES};
use portsyncd::netlink::socket::NlSocket;
use portsyncd_common::{origin, present, PortEvent, IFF_RUNNING, IFF_UP, RTM_DELLINK, RTM_NEWLINK};
use portsyncd_e2e::{wait_for, NetNs, DEFAULT_TIMEOUT};

const AF_UNSPEC: u8 = 0;
const AF_BRIDGE: u8 = 7;
const IF_OPER_UP: u8 = 6;

/// `attach` registers the ring with tokio, so the capture lives inside a runtime; a
/// current-thread one keeps everything on the thread that entered the namespace.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// The daemon's event socket, created inside `ns` (a socket keeps the namespace it was made in).
fn event_socket(ns: &NetNs) -> NlSocket {
    let _inside = ns.enter();
    NlSocket::open_events(DEFAULT_RCVBUF).expect("event socket").0
}

/// Datagrams queued on the socket right now (taken off it).
fn socket_datagrams(sock: &NlSocket) -> usize {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut n = 0;
    while sock.try_recv(&mut buf).expect("recv on the event socket").is_some() {
        n += 1;
    }
    n
}

/// Drains the ring into `events` until `done` holds, waiting on the ring's readiness as the
/// daemon does.
async fn collect_until(
    cap: &mut EbpfCapture,
    events: &mut Vec<PortEvent>,
    what: &str,
    done: impl Fn(&[PortEvent]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + DEFAULT_TIMEOUT;
    while !done(events) {
        match tokio::time::timeout_at(deadline, cap.readable()).await {
            Ok(ready) => {
                ready.expect("waiting on the ring");
                cap.drain(events, usize::MAX);
            }
            Err(_) => panic!("timed out waiting for {what}; events so far:\n{}", table(events)),
        }
    }
}

fn named<'a>(events: &'a [PortEvent], name: &str) -> Vec<&'a PortEvent> {
    events.iter().filter(|e| e.name_bytes() == name.as_bytes()).collect()
}

fn table(events: &[PortEvent]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{:<13} type={} family={} flags={:#x} mtu={} master={} oper={} carrier={} kind={:?} present={:#x}\n",
                String::from_utf8_lossy(e.name_bytes()),
                e.msg_type,
                e.family,
                e.flags,
                e.mtu,
                e.master,
                e.operstate,
                e.carrier,
                String::from_utf8_lossy(e.kind_bytes()),
                e.present
            )
        })
        .collect()
}

#[test]
fn port_links_reach_the_ring_and_other_names_are_dropped_in_the_kernel() {
    let ns = NetNs::new();
    let rt = runtime();
    rt.block_on(async {
        let sock = event_socket(&ns);
        let mut cap = EbpfCapture::attach(sock.as_fd(), &EbpfConfig::default()).expect("attach the socket filter");
        println!(
            "load+verify+attach: {:?}, of which verification: {:?}, verified instructions: {:?}",
            cap.load_duration(),
            cap.verify_duration(),
            cap.verified_instructions()
        );
        // aya's loader would parse the kernel's BTF (~25 ms) for nothing; CI's kernel has
        // Landlock, which keeps it from reading it.
        assert_eq!(cap.kernel_btf(), portsyncd::ebpf::BtfAccess::Hidden, "the loader read the kernel's BTF");
        let t0 = monotonic_ns();
        let mut events = Vec::new();

        // No dummy driver on the CI kernel: ifb and bridge devices stand in.
        ns.batch(&[
            "link set lo up",
            "link add Ethernet0 type veth peer name pe0",
            "link add foo0 type ifb",
            "link add Eth0 type ifb",
            "link add Ethernet type ifb",
            "link add PortChannel1 type bridge",
            "link set Ethernet0 mtu 9100",
            "link set pe0 up",
            "link set Ethernet0 up",
            "link set foo0 up",
            "link set Eth0 up",
        ]);
        // Carrier on a veth comes through linkwatch, asynchronously.
        collect_until(&mut cap, &mut events, "Ethernet0 up and running", |evs| {
            named(evs, "Ethernet0").iter().any(|e| e.flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING)
        })
        .await;
        ns.batch(&[
            "link set Ethernet0 master PortChannel1",
            "link set Ethernet0 nomaster",
            "link set Ethernet0 down",
            "link del PortChannel1",
        ]);
        collect_until(&mut cap, &mut events, "Ethernet0 down and PortChannel1 deleted", |evs| {
            let down = named(evs, "Ethernet0").last().is_some_and(|e| e.flags & IFF_UP == 0);
            let deleted = named(evs, "PortChannel1").iter().any(|e| e.msg_type == RTM_DELLINK);
            down && deleted
        })
        .await;
        // Linkwatch may still be reporting; what the program counted must all come out of the ring.
        let c = wait_for(DEFAULT_TIMEOUT, "every event the program counted to be read from the ring", || {
            cap.drain(&mut events, usize::MAX);
            let c = cap.counters().map_err(|e| e.to_string())?;
            if c.events == events.len() as u64 {
                Ok(c)
            } else {
                Err(format!("{c:?}, read {}", events.len()))
            }
        });
        let t1 = monotonic_ns();
        println!("{}counters: {c:?}, decode errors: {}", table(&events), cap.decode_errors());

        let pc = named(&events, "PortChannel1");
        assert_eq!(pc.first().map(|e| e.msg_type), Some(RTM_NEWLINK));
        assert_eq!(pc.last().map(|e| e.msg_type), Some(RTM_DELLINK));
        assert!(pc.iter().all(|e| e.kind_bytes() == b"bridge" && e.family == AF_UNSPEC));
        let pc_ifindex = pc[0].ifindex;

        let eth = named(&events, "Ethernet0");
        assert!(eth.iter().all(|e| e.origin == origin::EBPF));
        // bpf_ktime_get_ns and the daemon's clock are one clock: latencies are differences of the two.
        assert!(eth.iter().all(|e| (t0..=t1).contains(&e.timestamp_ns)), "timestamps outside {t0}..={t1}");
        let (link, bridge): (Vec<&PortEvent>, Vec<&PortEvent>) = eth.iter().partition(|e| e.family == AF_UNSPEC);
        let full = present::MTU | present::CARRIER | present::OPERSTATE | present::KIND;
        assert!(link.iter().all(|e| e.msg_type == RTM_NEWLINK && e.kind_bytes() == b"veth"));
        assert!(link.iter().all(|e| e.present & full == full));
        assert!(link
            .iter()
            .any(|e| e.mtu == 9100 && e.flags & IFF_RUNNING != 0 && e.carrier == 1 && e.operstate == IF_OPER_UP));
        assert!(link.iter().any(|e| e.present & present::MASTER != 0 && e.master == pc_ifindex));
        assert!(link.last().is_some_and(|e| e.flags & IFF_UP == 0 && e.present & present::MASTER == 0));
        assert!(bridge.iter().all(|e| e.family == AF_BRIDGE && e.master == pc_ifindex));
        assert!(bridge.iter().any(|e| e.msg_type == RTM_DELLINK), "leaving the bridge");
        assert!(!named(&events, "Ethernet").is_empty(), "a name equal to a prefix matches");
        for other in ["foo0", "pe0", "Eth0", "lo"] {
            assert!(named(&events, other).is_empty(), "{other} must be filtered");
        }

        assert!(c.filtered >= 7, "lo (up), foo0, pe0, Eth0 (create + up each): {c:?}");
        assert_eq!(c.not_link, 0, "RTNLGRP_LINK carries only link messages: {c:?}");
        assert_eq!((c.ring_full, c.parse_errors), (0, 0), "{c:?}");
        assert_eq!(cap.decode_errors(), 0);
        assert_eq!(socket_datagrams(&sock), 0, "captured and filtered messages never reach the socket");
    });
}

#[test]
fn a_full_ring_sends_the_overflow_to_the_socket_and_detach_gives_the_socket_everything() {
    let ns = NetNs::new();
    // Created down and never brought up: no linkwatch notification can join the count below.
    ns.veth(0);
    let rt = runtime();
    let _runtime = rt.enter();
    let sock = event_socket(&ns);
    // A one-page ring that nobody drains during the burst.
    let small = EbpfConfig { ring_bytes: MIN_RING_BYTES, ..EbpfConfig::default() };
    let mut cap = EbpfCapture::attach(sock.as_fd(), &small).expect("attach the socket filter");
    let changes: Vec<String> = (1300..1400).map(|mtu| format!("link set Ethernet0 mtu {mtu}")).collect();
    ns.batch(&changes);

    let mut ring = Vec::new();
    let mut overflow = 0;
    let c = wait_for(DEFAULT_TIMEOUT, "each of the 100 notifications counted, in the ring or on the socket", || {
        cap.drain(&mut ring, usize::MAX);
        overflow += socket_datagrams(&sock);
        let c = cap.counters().map_err(|e| e.to_string())?;
        let accounted = c.events == ring.len() as u64 && c.ring_full == overflow as u64;
        if accounted && c.events + c.ring_full >= 100 {
            Ok(c)
        } else {
            Err(format!("{c:?}, ring gave {}, socket got {overflow}", ring.len()))
        }
    });
    println!("small ring: {c:?}, ring gave {}, socket got {overflow}", ring.len());
    assert!(c.ring_full > 0, "a page cannot hold 100 events: {c:?}");
    assert_eq!(c.events + c.ring_full, 100, "one notification per mtu change: {c:?}");
    assert!(ring.windows(2).all(|w| w[0].mtu + 1 == w[1].mtu), "the ring keeps the first ones, in order");

    EbpfCapture::detach(sock.as_fd()).expect("detach");
    ns.ip(&["link", "set", "Ethernet0", "mtu", "1500"]);
    let mut seen = 0;
    wait_for(DEFAULT_TIMEOUT, "the detached socket to receive the next notification", || {
        seen += socket_datagrams(&sock);
        if seen > 0 {
            Ok(())
        } else {
            Err("nothing on the socket".to_owned())
        }
    });
    assert_eq!(seen, 1, "one notification for one change");
    let after = cap.counters().expect("counters");
    assert_eq!(after.events + after.ring_full, 100, "the detached program saw nothing more: {after:?}");
}
