//! Fuzz targets for portsyncd's parsers of untrusted or hand-edited input, one libFuzzer binary
//! per parser under `fuzz_targets/`, each seeded from `corpus/<target>/`:
//!
//! | target | input | entry point |
//! |---|---|---|
//! | `netlink_parse` | one rtnetlink datagram | `portsyncd::netlink::parse::for_each_message` |
//! | `ebpf_event` | one ring-buffer record | `portsyncd::ebpf::decode_event` |
//! | `database_config` | database_config.json | `SonicDbs::from_database_config_text` |
//! | `config_toml` | the `--config` TOML file | `Config::from_args_and_file_text` |
//! | `state_file` | the warm-restart port-state file | `state_file::parse_document` |
//!
//! Run them with `cargo xtask fuzz --secs 60` (all) or `--target NAME` (one); the seeds are
//! rewritten by `cargo run --example write_seeds` (as root: it captures real kernel messages in a
//! private network namespace). This library holds what the targets share.

use std::collections::HashSet;
use std::mem::{offset_of, size_of};

use portsyncd::batch::Coalescer;
use portsyncd_common::PortEvent;

/// Bytes of one [`PortEvent`] record in the eBPF ring buffer.
pub const EVENT_LEN: usize = size_of::<PortEvent>();

/// Encodes `ev` as the eBPF program writes it into the ring buffer: the `#[repr(C)]` layout in
/// host byte order, padding zero. The inverse of `portsyncd::ebpf::decode_event`.
pub fn encode_event(ev: &PortEvent) -> [u8; EVENT_LEN] {
    let mut out = [0u8; EVENT_LEN];
    let mut put = |off: usize, bytes: &[u8]| out[off..off + bytes.len()].copy_from_slice(bytes);
    put(offset_of!(PortEvent, timestamp_ns), &ev.timestamp_ns.to_ne_bytes());
    put(offset_of!(PortEvent, msg_type), &ev.msg_type.to_ne_bytes());
    put(offset_of!(PortEvent, origin), &[ev.origin]);
    put(offset_of!(PortEvent, present), &[ev.present]);
    put(offset_of!(PortEvent, ifindex), &ev.ifindex.to_ne_bytes());
    put(offset_of!(PortEvent, flags), &ev.flags.to_ne_bytes());
    put(offset_of!(PortEvent, change), &ev.change.to_ne_bytes());
    put(offset_of!(PortEvent, mtu), &ev.mtu.to_ne_bytes());
    put(offset_of!(PortEvent, master), &ev.master.to_ne_bytes());
    put(offset_of!(PortEvent, operstate), &[ev.operstate]);
    put(offset_of!(PortEvent, carrier), &[ev.carrier]);
    put(offset_of!(PortEvent, name_len), &[ev.name_len]);
    put(offset_of!(PortEvent, kind_len), &[ev.kind_len]);
    put(offset_of!(PortEvent, family), &[ev.family]);
    put(offset_of!(PortEvent, name), &ev.name);
    put(offset_of!(PortEvent, kind), &ev.kind);
    out
}

/// The byte range of [`PortEvent::_pad`], which the decoder does not carry over.
pub const PAD: std::ops::Range<usize> = offset_of!(PortEvent, _pad)..offset_of!(PortEvent, name);

/// Runs decoded events through what the daemon does next with them (the LinkSync rules and the
/// per-port coalescing), with the ifindex of every other event counted as an old interface, and
/// checks the coalescer's bookkeeping.
pub fn coalesce(events: &[PortEvent]) {
    let old: HashSet<u32> = events.iter().step_by(2).map(|ev| ev.ifindex).collect();
    let mut coalescer = Coalescer::new();
    for ev in events {
        coalescer.push(ev, &old);
    }
    let stats = coalescer.stats;
    assert_eq!(stats.events, events.len() as u64);
    let ignored = stats.ignored_name + stats.ignored_team + stats.ignored_del_with_master + stats.ignored_old;
    assert_eq!(ignored + stats.coalesced + coalescer.len() as u64, stats.events);
    for (name, pending) in coalescer.take() {
        assert!(!name.as_str().is_empty() && name.as_str().len() <= 15);
        assert!(pending.state.is_some() || !pending.delete_first);
    }
}
