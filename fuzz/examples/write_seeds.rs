//! Rewrites the seed corpus `fuzz/corpus/<target>/` from real producers: link notifications and
//! a link dump captured from the kernel in a private network namespace (veth and bridge links
//! brought up, renamed, re-parented and deleted), link messages serialized by
//! netlink-packet-route as the kernel frames them, eBPF ring records encoded from those events,
//! database_config.json as SONiC and the e2e harness write it, TOML configs, and state files
//! saved by the daemon's own `StateStore`.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds` as root (network namespace,
//! `ip`). The files are named by content, so rerunning only adds or removes what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkHeader, LinkInfo, LinkMessage, State};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use portsyncd::netlink::parse::{for_each_message, Message, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN};
use portsyncd::warm_restart::metrics::WarmRestartMetrics;
use portsyncd::warm_restart::state_file::{PortRecord, StateFileConfig, StateStore};
use portsyncd_common::origin;
use portsyncd_fuzz::encode_event;

/// `RTNLGRP_LINK`.
const RTNLGRP_LINK: u32 = 1;

fn main() -> io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut datagrams = synthetic_datagrams();
    datagrams.extend(captured_datagrams()?);
    write_target(&root, "netlink_parse", &datagrams)?;
    write_target(&root, "ebpf_event", &ring_records(&datagrams))?;
    write_target(&root, "database_config", &database_configs())?;
    write_target(&root, "database_global", &database_globals())?;
    write_target(&root, "config_toml", &toml_configs())?;
    write_target(&root, "state_file", &state_files()?)?;
    Ok(())
}

/// Replaces the seeds of one target, naming each file by a hash of its content.
fn write_target(root: &Path, target: &str, seeds: &[Vec<u8>]) -> io::Result<()> {
    let dir = root.join(target);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let mut names = BTreeSet::new();
    for seed in seeds {
        let name = format!("seed-{:016x}", fnv1a(seed));
        if names.insert(name.clone()) {
            fs::write(dir.join(name), seed)?;
        }
    }
    let bytes: usize = seeds.iter().map(Vec::len).sum();
    println!("{target}: {} seeds, {bytes} bytes", names.len());
    Ok(())
}

/// FNV-1a: a stable content name, independent of the toolchain's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// A link message as the kernel frames it, serialized by netlink-packet-route.
struct Link<'a> {
    new: bool,
    index: u32,
    name: &'a str,
    flags: u32,
    mtu: u32,
    master: u32,
    kind: Option<&'a str>,
    family: AddressFamily,
}

impl Link<'_> {
    fn serialize(&self, seq: u32, nl_flags: u16) -> Vec<u8> {
        let mut link = LinkMessage::default();
        link.header = LinkHeader {
            index: self.index,
            flags: LinkFlags::from_bits_retain(self.flags),
            interface_family: self.family,
            ..LinkHeader::default()
        };
        link.attributes.push(LinkAttribute::IfName(self.name.into()));
        link.attributes.push(LinkAttribute::Mtu(self.mtu));
        link.attributes.push(LinkAttribute::OperState(if self.flags & 0x40 != 0 { State::Up } else { State::Down }));
        link.attributes.push(LinkAttribute::Carrier(u8::from(self.flags & 0x40 != 0)));
        if self.master != 0 {
            link.attributes.push(LinkAttribute::Controller(self.master));
        }
        if let Some(k) = self.kind {
            link.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::from(k))]));
        }
        let inner = if self.new { RouteNetlinkMessage::NewLink(link) } else { RouteNetlinkMessage::DelLink(link) };
        let mut hdr = NetlinkHeader::default();
        hdr.sequence_number = seq;
        hdr.flags = nl_flags;
        hdr.port_number = 4242;
        let mut msg = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(inner));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }
}

/// A bare control message with a 4-byte payload (the error code of `NLMSG_ERROR`).
fn control_msg(msg_type: u16, seq: u32, code: i32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(20);
    buf.extend_from_slice(&20u32.to_ne_bytes());
    buf.extend_from_slice(&msg_type.to_ne_bytes());
    buf.extend_from_slice(&NLM_F_MULTIPART.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&4242u32.to_ne_bytes());
    buf.extend_from_slice(&code.to_ne_bytes());
    buf
}

fn synthetic_datagrams() -> Vec<Vec<u8>> {
    let up = |name, index, mtu| Link {
        new: true,
        index,
        name,
        flags: 0x1 | 0x2 | 0x40 | 0x1000,
        mtu,
        master: 0,
        kind: None,
        family: AddressFamily::Unspec,
    };
    let eth0 = up("Ethernet0", 10, 9100);
    let eth4_down = Link { flags: 0x1002, ..up("Ethernet4", 11, 1500) };
    let eth4_del = Link { new: false, ..up("Ethernet4", 11, 1500) };
    let lag = Link { kind: Some("team"), ..up("PortChannel1", 12, 9100) };
    let bridged = Link { master: 12, family: AddressFamily::Bridge, ..up("Ethernet8", 13, 9100) };
    let unbridged = Link { new: false, master: 12, family: AddressFamily::Bridge, ..up("Ethernet8", 13, 9100) };
    let other = Link { kind: Some("veth"), ..up("eth0", 2, 1500) };
    let mut dump = eth0.serialize(9, NLM_F_MULTIPART);
    dump.extend(eth4_down.serialize(9, NLM_F_MULTIPART));
    dump.extend(lag.serialize(9, NLM_F_MULTIPART | NLM_F_DUMP_INTR));
    dump.extend(control_msg(NLMSG_DONE, 9, 0));
    vec![
        eth0.serialize(0, 0),
        eth4_down.serialize(0, 0),
        eth4_del.serialize(0, 0),
        lag.serialize(0, 0),
        bridged.serialize(0, 0),
        unbridged.serialize(0, 0),
        other.serialize(0, 0),
        dump,
        control_msg(NLMSG_ERROR, 9, -105),
        control_msg(NLMSG_ERROR, 9, 0),
        control_msg(NLMSG_OVERRUN, 0, 0),
    ]
}

/// Link notifications and a dump from the kernel, in a network namespace of our own.
fn captured_datagrams() -> io::Result<Vec<Vec<u8>>> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let mut events = Socket::new(NETLINK_ROUTE)?;
    events.bind_auto()?;
    events.add_membership(RTNLGRP_LINK)?;
    events.set_non_blocking(true)?;
    for cmd in [
        "link set lo up",
        "link add Ethernet0 type veth peer name Ethernet4",
        "link add Bridge1 type bridge",
        "link add tmp0 type veth peer name tmp1",
        "link set Ethernet0 up",
        "link set Ethernet4 up",
        "link set Ethernet0 mtu 9100",
        "link set Ethernet4 master Bridge1",
        "link set Bridge1 up",
        "link set Ethernet4 nomaster",
        "link set tmp0 name Ethernet8",
        "link set Ethernet0 down",
        "link del Ethernet8",
    ] {
        ip(cmd)?;
    }
    let mut out = Vec::new();
    loop {
        match events.recv_from_full() {
            Ok((buf, _)) => out.push(buf),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    let notifications = out.len();
    out.extend(dump()?);
    ip("link del Ethernet0")?;
    ip("link del Bridge1")?;
    println!("captured {notifications} notifications and {} dump datagrams", out.len() - notifications);
    Ok(out)
}

fn ip(args: &str) -> io::Result<()> {
    let status = Command::new("ip").args(args.split(' ')).status()?;
    if !status.success() {
        return Err(io::Error::other(format!("`ip {args}` failed: {status}")));
    }
    Ok(())
}

/// The datagrams of one `RTM_GETLINK` dump, up to and including its `NLMSG_DONE`.
fn dump() -> io::Result<Vec<Vec<u8>>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    hdr.sequence_number = 1;
    let mut req =
        NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default())));
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut out = Vec::new();
    loop {
        let (datagram, _) = sock.recv_from_full()?;
        let mut done = false;
        for_each_message(&datagram, origin::DUMP, 0, |_, m| done |= matches!(m, Message::Done | Message::Error(_)));
        out.push(datagram);
        if done {
            return Ok(out);
        }
    }
}

/// The events of every datagram as the eBPF program puts them into the ring, plus a record
/// with the ring's 8-byte rounding tail and one a byte short.
fn ring_records(datagrams: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for d in datagrams {
        for_each_message(d, origin::EBPF, 1_000_000_007, |_, m| {
            if let Message::Link(ev) = m {
                out.push(encode_event(&ev).to_vec());
            }
        });
    }
    if let Some(first) = out.first().cloned() {
        let mut longer = first.clone();
        longer.extend_from_slice(&[0xa5; 8]);
        out.push(longer);
        out.push(first[..first.len() - 1].to_vec());
    }
    out
}

/// database_global.json as a multi-ASIC SONiC writes it (the host's entry without namespace,
/// one per ASIC), and shapes around it.
fn database_globals() -> Vec<Vec<u8>> {
    let sonic = r#"{
    "INCLUDES": [
        {"include": "../../redis/sonic-db/database_config.json"},
        {"namespace": "asic0", "include": "../../redis0/sonic-db/database_config.json", "container_name": "database0"},
        {"namespace": "asic1", "include": "../../redis1/sonic-db/database_config.json", "container_name": "database1"}
    ],
    "VERSION": "1.0"
}"#;
    [
        sonic,
        r#"{"INCLUDES": [{"namespace": "asic0", "include": "/abs/database_config.json"}]}"#,
        r#"{"INCLUDES": [{"namespace": "asic0", "include": ""}]}"#,
        r#"{"INCLUDES": []}"#,
        r#"{"INCLUDES": [{"include": "x.json"}], "VERSION": "1.0"}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn database_configs() -> Vec<Vec<u8>> {
    let sonic = r#"{
    "INSTANCES": {
        "redis": {
            "hostname": "127.0.0.1",
            "port": 6379,
            "unix_socket_path": "/var/run/redis/redis.sock",
            "persistence_for_warm_boot": "yes"
        },
        "redis_chassis": {
            "hostname": "redis_chassis.server",
            "port": 6380,
            "unix_socket_path": "/var/run/redis-chassis/redis_chassis.sock",
            "persistence_for_warm_boot": "yes"
        }
    },
    "DATABASES": {
        "APPL_DB": {"id": 0, "separator": ":", "instance": "redis"},
        "ASIC_DB": {"id": 1, "separator": ":", "instance": "redis"},
        "COUNTERS_DB": {"id": 2, "separator": ":", "instance": "redis"},
        "LOGLEVEL_DB": {"id": 3, "separator": ":", "instance": "redis"},
        "CONFIG_DB": {"id": 4, "separator": "|", "instance": "redis"},
        "PFC_WD_DB": {"id": 5, "separator": ":", "instance": "redis"},
        "FLEX_COUNTER_DB": {"id": 5, "separator": ":", "instance": "redis"},
        "STATE_DB": {"id": 6, "separator": "|", "instance": "redis"},
        "SNMP_OVERLAY_DB": {"id": 7, "separator": "|", "instance": "redis"},
        "CHASSIS_APP_DB": {"id": 12, "separator": "|", "instance": "redis_chassis"}
    },
    "VERSION": "1.0"
}
"#;
    // The e2e harness: one instance on a unix socket and a TCP port.
    let harness = r#"{"INSTANCES":{"redis":{"hostname":"127.0.0.1","port":40123,"unix_socket_path":"/tmp/.tmpX/r.sock"}},"DATABASES":{"APPL_DB":{"id":0,"separator":":","instance":"redis"},"CONFIG_DB":{"id":4,"separator":"|","instance":"redis"},"STATE_DB":{"id":6,"separator":"|","instance":"redis"}},"VERSION":"1.0"}"#;
    // TCP only, STATE_DB on a second instance.
    let tcp = r#"{"INSTANCES":{"redis":{"hostname":"10.0.0.1","port":6379},"redis2":{"hostname":"::1","port":6380,"unix_socket_path":""}},"DATABASES":{"APPL_DB":{"id":0,"separator":":","instance":"redis"},"CONFIG_DB":{"id":4,"separator":"|","instance":"redis"},"STATE_DB":{"id":6,"separator":"|","instance":"redis2"}}}"#;
    [sonic, harness, tcp].iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn toml_configs() -> Vec<Vec<u8>> {
    let full = r#"# every key, as README's flag table documents them
database_config = "/var/run/redis/sonic-db/database_config.json"
capture = "auto"
eoiu_timeout_secs = 10
rcvbuf = 16777216
batch_max = 4096
batch_linger_us = 1000
ring_bytes = 4194304
state_file = "/var/lib/sonic/portsyncd/port_state.json"
state_backups = 10
state_max_age_days = 7
state_save_interval_secs = 60
histogram_log = "/var/log/portsyncd.hlog"
histogram_interval_secs = 10
stats_file = "/run/portsyncd/stats.json"
metrics_addr = "127.0.0.1:9100"
"#;
    let dev = "redis = \"unix:///tmp/r/redis.sock\"\ncapture = \"netlink\"\nbatch_max = 7\n";
    let v6 = "redis = 'redis://127.0.0.1:6379'\ncapture = 'ebpf'\nmetrics_addr = '[::1]:9100'\nring_bytes = 4096\n";
    [full, dev, v6, ""].iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// Documents written by the daemon's own `StateStore::save`.
fn state_files() -> io::Result<Vec<Vec<u8>>> {
    let dir = tempfile::tempdir()?;
    let path: PathBuf = dir.path().join("port_state.json");
    let mut store =
        StateStore::new(StateFileConfig { path: path.clone(), backups: 0, max_age: Duration::from_secs(86_400) });
    let mut metrics = WarmRestartMetrics::default();
    let mut out = Vec::new();
    for (n, clean) in [(0, false), (1, true), (4, false), (32, true)] {
        let ports: BTreeMap<String, PortRecord> = (0..n)
            .map(|i| {
                let up = i % 3 != 0;
                let record = PortRecord {
                    ifindex: 10 + i,
                    admin_up: up,
                    oper_up: up && i % 2 == 0,
                    mtu: if i % 4 == 0 { 9100 } else { 1500 },
                    flags: u32::from(up) | (u32::from(up && i % 2 == 0) << 6),
                };
                (format!("Ethernet{}", i * 4), record)
            })
            .collect();
        store.save(&ports, clean, &mut metrics).map_err(io::Error::other)?;
        out.push(fs::read(&path)?);
    }
    Ok(out)
}
