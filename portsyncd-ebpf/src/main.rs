//! portsyncd's kernel program: a socket filter on the daemon's `NETLINK_ROUTE` socket (joined to
//! `RTNLGRP_LINK`) that turns each `RTM_NEWLINK`/`RTM_DELLINK` for a port into a
//! [`PortEvent`] in the `PORT_EVENTS` ring buffer and drops the message from the socket.
//!
//! Everything else is let through untouched: other message types, messages it cannot parse and,
//! when the ring is full, port messages too (the daemon's netlink path parses those). Each outcome
//! is counted in the per-CPU `COUNTERS` map, so loss is never silent.
//!
//! Why this hook: no mainline tracepoint carries the device of a link change
//! (`notifier:notifier_run` has only the callback pointer), kprobes are not built into our kernels
//! and fentry/fexit are refused under lockdown. The link-notification message itself carries
//! everything portsyncd needs as stable UAPI (no BTF, no struct offsets), a socket filter sees it
//! in the daemon's own network namespace only, and it runs before the message costs socket-buffer
//! space.
//!
//! Build (own workspace, Debian rustc 1.96, see `../shared/ebpf-toolchain.md` beside the repository):
//! `cargo xtask build-ebpf`, which runs `scripts/build-ebpf.sh`, i.e.
//! `RUSTC_BOOTSTRAP=1 cargo +deb-1.96 build -Z build-std=core --target bpfel-unknown-none --release`
//! in this directory. There is deliberately no `rust-toolchain.toml`: the host workspace builds with
//! rustup stable, and only this crate uses the `deb-1.96` toolchain, named explicitly. Install the
//! toolchain with `bash scripts/install-ebpf-toolchain.sh`.
//!
//! Feature `debug`: aya-log records for every event (off by default; logging costs a ring-buffer
//! write per message).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{map, socket_filter},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::SkBuffContext,
};
use portsyncd_common::{
    counter, origin, present, wakeup, FilterConfig, PortEvent, COUNTERS_MAP, EVENTS_MAP, FILTER_MAP, IFNAMSIZ,
    KIND_LEN, MAX_OWNERS, MAX_PREFIXES, OWNERS_MAP, PREFIX_LEN, PROGRAM_NAME, RTM_DELLINK, RTM_NEWLINK, WAKEUP_MAP,
};

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: u32 = 16;
/// `sizeof(struct ifinfomsg)`; the attributes start right after it.
const IFINFOMSG_LEN: u32 = 16;
const ATTRS_OFFSET: u32 = NLMSG_HDRLEN + IFINFOMSG_LEN;
/// `sizeof(struct rtattr)`.
const RTA_HDRLEN: u32 = 4;
/// Upper bound on top-level attributes visited. Linux 6.18 sends 40, `IFLA_LINKINFO` the 34th, and
/// everything we read comes no later than that nest. The verifier walks the loop body once per
/// iteration (~280 instructions each), so the bound sets most of the verification cost.
const MAX_ATTRS: u32 = 64;
/// Largest message handled (link notifications are a few KiB). Offsets then fit 16 bits, and a
/// load at 0xffff, the empty-slot offset, always fails: the datagram is at most 3 bytes longer.
const MAX_MSG: u32 = 0xff00;

use portsyncd_common::ifla::{
    IFLA_CARRIER, IFLA_IFNAME, IFLA_INFO_KIND, IFLA_LINKINFO, IFLA_MASTER, IFLA_MTU, IFLA_OPERSTATE,
};
/// Strips `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER` from `rta_type`.
const NLA_TYPE_MASK: u32 = 0x3fff;

// The map and program names below are ELF symbols; these checks keep them equal to the names the
// daemon looks up (the `#[map]` macro takes only a literal).
const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
const _: () = assert!(str_eq(EVENTS_MAP, "PORT_EVENTS"));
const _: () = assert!(str_eq(COUNTERS_MAP, "COUNTERS"));
const _: () = assert!(str_eq(FILTER_MAP, "FILTER_CONFIG"));
const _: () = assert!(str_eq(PROGRAM_NAME, "portsyncd_link_filter"));
const _: () = assert!(str_eq(WAKEUP_MAP, "RING_WAKEUP"));
const _: () = assert!(str_eq(OWNERS_MAP, "PORT_OWNERS"));
const _: () = assert!(IFNAMSIZ == 16 && KIND_LEN == 16 && PREFIX_LEN == 16);

/// The program uses no GPL-only helper; the kernel records the license with the program.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";

/// The daemon overrides the size at load time (`EbpfConfig::ring_bytes`).
#[map(name = "PORT_EVENTS")]
static PORT_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map(name = "FILTER_CONFIG")]
static FILTER_CONFIG: Array<FilterConfig> = Array::with_max_entries(1, 0);

/// Written by the daemon: [`wakeup::POLLED`] while it reads the ring on its own timer.
#[map(name = "RING_WAKEUP")]
static RING_WAKEUP: Array<u32> = Array::with_max_entries(1, 0);

/// `BPF_F_NO_PREALLOC`: entries are allocated as the daemon inserts them (a few hundred), not
/// all `MAX_OWNERS` up front.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Written by the daemon when several instances share the ports: name -> owning instance.
#[map(name = "PORT_OWNERS")]
static PORT_OWNERS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(MAX_OWNERS, BPF_F_NO_PREALLOC);

/// Whether this instance handles the port: always, unless the daemon partitioned the ports;
/// then only when the owners map gives it to this instance (a name it lacks is the leader's).
#[inline(always)]
fn owned_here(name_lo: u64, name_hi: u64) -> bool {
    let Some(cfg) = FILTER_CONFIG.get(0) else {
        return true;
    };
    if cfg.partitioned == 0 {
        return true;
    }
    let key = bytes16(name_lo, name_hi);
    // SAFETY: the value is a plain u32 copied out at once; the daemon only inserts and
    // overwrites entries, and a concurrent update yields either the old or the new owner.
    let owner = unsafe { PORT_OWNERS.get(&key) }.copied().unwrap_or(0);
    owner == cfg.instance
}

/// `BPF_RB_NO_WAKEUP`: submit without waking the ring's waiters.
const BPF_RB_NO_WAKEUP: u64 = 1;

/// Submit flags: no wake-up while the daemon polls the ring.
fn submit_flags() -> u64 {
    match RING_WAKEUP.get(0) {
        Some(&wakeup::POLLED) => BPF_RB_NO_WAKEUP,
        _ => 0,
    }
}

#[cfg(feature = "debug")]
macro_rules! debug_log {
    ($ctx:expr, $($arg:tt)+) => { aya_log_ebpf::debug!($ctx, $($arg)+) };
}
#[cfg(not(feature = "debug"))]
macro_rules! debug_log {
    ($ctx:expr, $($arg:tt)+) => {
        let _ = $ctx;
    };
}

/// Returns the number of bytes of the message the socket keeps: `0` drops it, the full length
/// lets it through.
#[socket_filter]
pub fn portsyncd_link_filter(ctx: SkBuffContext) -> i64 {
    let keep = i64::from(ctx.len());
    match filter(&ctx) {
        Verdict::Captured | Verdict::Filtered => 0,
        Verdict::Pass => keep,
    }
}

enum Verdict {
    /// Written to the ring; the socket does not see it.
    Captured,
    /// A link that is not a port; nobody needs it.
    Filtered,
    /// Let through to the socket.
    Pass,
}

/// Where the attribute walk found what we read: payload offsets into the message, 0xffff (see
/// [`ABSENT_SLOT`]) for attributes the message does not carry.
///
/// The walk only records offsets and the loads happen after it, once. Absence is never tested
/// with a comparison: a load at 0xffff fails in the helper, which the verifier cannot predict.
/// A comparison would be decided by the offset's tracked range (a present payload is never 0),
/// which makes the verifier track every iteration's different range precisely and walk the code
/// after the loop once per iteration and path: that exploded past a million instructions.
struct Offsets {
    name: u32,
    name_len: u32,
    mtu: u32,
    master: u32,
    operstate: u32,
    carrier: u32,
    linkinfo: u32,
    linkinfo_len: u32,
}

/// Attribute types with a slot in the walk's table; every type we read is below it.
const SLOTS: usize = 64;
/// An empty slot: offset 0xffff (beyond any message we handle, see [`MAX_MSG`]) and length
/// 0xffff, so every load from it fails.
const ABSENT_SLOT: u32 = u32::MAX;
// IFLA_CARRIER is the largest type read.
const _: () = assert!(IFLA_CARRIER < SLOTS as u32);

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array; this CPU's slot
        // is not shared while the program runs.
        unsafe { *slot = (*slot).wrapping_add(1) };
    }
}

#[inline(always)]
fn load_u32(ctx: &SkBuffContext, off: u32) -> Option<u32> {
    ctx.load::<u32>(off as usize).ok()
}

#[inline(always)]
fn load_u8(ctx: &SkBuffContext, off: u32) -> Option<u8> {
    ctx.load::<u8>(off as usize).ok()
}

#[inline(always)]
fn filter(ctx: &SkBuffContext) -> Verdict {
    let skb_len = ctx.len();
    // nlmsghdr: nlmsg_len u32, nlmsg_type u16, nlmsg_flags u16 (seq and pid unused).
    let Ok(hdr) = ctx.load::<[u32; 2]>(0) else {
        bump(counter::PARSE_ERROR);
        return Verdict::Pass;
    };
    let msg_len = hdr[0];
    let msg_type = (hdr[1] & 0xffff) as u16;
    if msg_type != RTM_NEWLINK && msg_type != RTM_DELLINK {
        bump(counter::NOT_LINK);
        return Verdict::Pass;
    }
    // The kernel sends one link notification per datagram. If a datagram ever carried more, the
    // filter could only keep or drop all of them, so it leaves them to the socket. Link messages
    // are a few KiB; the offset arithmetic below relies on them staying under 64 KiB.
    if msg_len < ATTRS_OFFSET || msg_len > skb_len || skb_len - msg_len >= 4 || msg_len > MAX_MSG {
        bump(counter::PARSE_ERROR);
        return Verdict::Pass;
    }
    // ifinfomsg: family u8, pad u8, type u16; index i32; flags u32; change u32.
    let Ok(ifi) = ctx.load::<[u32; 4]>(NLMSG_HDRLEN as usize) else {
        bump(counter::PARSE_ERROR);
        return Verdict::Pass;
    };
    let Some(at) = walk_attrs(ctx, msg_len) else {
        bump(counter::PARSE_ERROR);
        return Verdict::Pass;
    };
    let Some((name_lo, mut name_hi, mut name_len)) = load_str16(ctx, at.name, at.name_len) else {
        bump(counter::PARSE_ERROR);
        return Verdict::Pass;
    };
    let mut present = 0;
    if name_len as usize >= IFNAMSIZ {
        // Linux names fit in 15 bytes; keep the event NUL-terminated anyway.
        name_len = IFNAMSIZ as u32 - 1;
        name_hi &= byte_masks(name_len).1;
        present |= present::NAME_TRUNCATED;
    }
    if !name_matches(name_lo, name_hi, name_len) {
        bump(counter::FILTERED);
        return Verdict::Filtered;
    }
    if !owned_here(name_lo, name_hi) {
        bump(counter::OTHER_INSTANCE);
        return Verdict::Filtered;
    }

    let (mut mtu, mut master, mut operstate, mut carrier) = (0, 0, 0, 0);
    if let Some(v) = load_u32(ctx, at.mtu) {
        mtu = v;
        present |= present::MTU;
    }
    if let Some(v) = load_u32(ctx, at.master) {
        master = v;
        present |= present::MASTER;
    }
    if let Some(v) = load_u8(ctx, at.operstate) {
        operstate = v;
        present |= present::OPERSTATE;
    }
    if let Some(v) = load_u8(ctx, at.carrier) {
        carrier = v;
        present |= present::CARRIER;
    }
    let (mut kind_lo, mut kind_hi, mut kind_len) = (0, 0, 0);
    if let Some(kind) = link_kind(ctx, &at) {
        (kind_lo, kind_hi, kind_len) = kind;
        present |= present::KIND;
    }

    let Some(mut entry) = PORT_EVENTS.reserve::<PortEvent>(0) else {
        bump(counter::RING_FULL);
        return Verdict::Pass;
    };
    entry.write(PortEvent {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        msg_type,
        origin: origin::EBPF,
        present,
        ifindex: ifi[1],
        flags: ifi[2],
        change: ifi[3],
        mtu,
        master,
        operstate,
        carrier,
        name_len: name_len as u8,
        kind_len: kind_len as u8,
        family: (ifi[0] & 0xff) as u8,
        _pad: [0; 3],
        name: bytes16(name_lo, name_hi),
        kind: bytes16(kind_lo, kind_hi),
    });
    entry.submit(submit_flags());
    bump(counter::EVENTS);
    debug_log!(ctx, "link event type={} ifindex={} flags={:x}", msg_type, ifi[1], ifi[2]);
    Verdict::Captured
}

/// Walks the top-level rtattrs once (at most [`MAX_ATTRS`]), recording where the ones we read
/// are. `None`: malformed.
#[inline(always)]
fn walk_attrs(ctx: &SkBuffContext, msg_len: u32) -> Option<Offsets> {
    // One slot per attribute type below SLOTS: payload offset | payload length << 16. One indexed
    // store instead of a `match` keeps the loop body to two paths for the verifier (a `match`
    // made it ~3x as expensive to verify).
    let mut slots = [ABSENT_SLOT; SLOTS];
    let mut off = ATTRS_OFFSET;
    for _ in 0..MAX_ATTRS {
        if off + RTA_HDRLEN > msg_len {
            break;
        }
        // rtattr: rta_len u16, rta_type u16 (host order).
        let rta = load_u32(ctx, off)?;
        let rta_len = rta & 0xffff;
        if rta_len < RTA_HDRLEN || rta_len > msg_len - off {
            return None;
        }
        let ty = (rta >> 16) & NLA_TYPE_MASK;
        // Types beyond the table land in slot 0 (IFLA_UNSPEC), which nothing reads.
        let slot = if ty < SLOTS as u32 { ty } else { 0 };
        slots[slot as usize] = (off + RTA_HDRLEN) | ((rta_len - RTA_HDRLEN) << 16);
        off += (rta_len + 3) & !3;
    }
    let at = |ty: u32| slots[ty as usize] & 0xffff;
    let len = |ty: u32| slots[ty as usize] >> 16;
    Some(Offsets {
        name: at(IFLA_IFNAME),
        name_len: len(IFLA_IFNAME),
        mtu: at(IFLA_MTU),
        master: at(IFLA_MASTER),
        operstate: at(IFLA_OPERSTATE),
        carrier: at(IFLA_CARRIER),
        linkinfo: at(IFLA_LINKINFO),
        linkinfo_len: len(IFLA_LINKINFO),
    })
}

/// `IFLA_LINKINFO`'s `IFLA_INFO_KIND`. The kernel writes it as the nest's first attribute
/// (`rtnl_link_info_fill`), and a device without link ops (a physical port) has none, only slave
/// info; so looking at the first child is enough and needs no second loop.
#[inline(always)]
fn link_kind(ctx: &SkBuffContext, at: &Offsets) -> Option<(u64, u64, u32)> {
    if at.linkinfo_len < RTA_HDRLEN {
        return None;
    }
    let rta = load_u32(ctx, at.linkinfo)?;
    let rta_len = rta & 0xffff;
    if (rta >> 16) & NLA_TYPE_MASK != IFLA_INFO_KIND || rta_len < RTA_HDRLEN || rta_len > at.linkinfo_len {
        return None;
    }
    load_str16(ctx, at.linkinfo + RTA_HDRLEN, rta_len - RTA_HDRLEN)
}

/// Reads a string attribute's payload (`off`, `len` bytes, NUL included) as two little-endian
/// words holding its first 16 bytes, zero beyond the payload, plus the string's length: `len - 1`
/// when the payload ends in NUL as the kernel writes it, else `min(len, 16)`.
///
/// The verifier only takes constant sizes for `bpf_skb_load_bytes` without a fight, so the load
/// uses one of four: the payload rounded up to the 4-byte attribute alignment, at most 16. That
/// never reads past the message, whose length includes every attribute's padding.
#[inline(always)]
fn load_str16(ctx: &SkBuffContext, off: u32, len: u32) -> Option<(u64, u64, u32)> {
    if len == 0 {
        return None;
    }
    let mut words = [0u64; 2];
    let dst = words.as_mut_ptr() as *mut core::ffi::c_void;
    let skb = ctx.skb.skb as *const __sk_buff as *const core::ffi::c_void;
    let aligned = (len + 3) & !3;
    // SAFETY: `words` is 16 bytes of stack and each size is at most 16; the helper bounds-checks
    // the packet side itself.
    let ret = unsafe {
        if aligned >= 16 {
            bpf_skb_load_bytes(skb, off, dst, 16)
        } else if aligned == 12 {
            bpf_skb_load_bytes(skb, off, dst, 12)
        } else if aligned == 8 {
            bpf_skb_load_bytes(skb, off, dst, 8)
        } else {
            bpf_skb_load_bytes(skb, off, dst, 4)
        }
    };
    if ret != 0 {
        return None;
    }
    let kept = if len > 16 { 16 } else { len };
    let (mask_lo, mask_hi) = byte_masks(kept);
    let (lo, hi) = (words[0] & mask_lo, words[1] & mask_hi);
    let last = kept - 1;
    let last_byte = if last < 8 { (lo >> (last * 8)) & 0xff } else { (hi >> ((last - 8) * 8)) & 0xff };
    let str_len = if len <= 16 && last_byte == 0 { last } else { kept };
    Some((lo, hi, str_len))
}

/// The 16 bytes of two little-endian words.
#[inline(always)]
fn bytes16(lo: u64, hi: u64) -> [u8; 16] {
    let l = lo.to_le_bytes();
    let h = hi.to_le_bytes();
    [l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]
}

/// True when no prefixes are configured or the name starts with one of them. Compares 8 bytes at
/// a time under a mask instead of byte loops, to keep the verifier's work small. `name_lo` and
/// `name_hi` are zero beyond the name, and prefixes contain no NUL, so a prefix longer than the
/// name cannot match.
#[inline(always)]
fn name_matches(name_lo: u64, name_hi: u64, name_len: u32) -> bool {
    let Some(cfg) = FILTER_CONFIG.get(0) else {
        return true;
    };
    let count = cfg.prefix_count;
    if count == 0 {
        return true;
    }
    let mut i = 0;
    while i < MAX_PREFIXES {
        if i as u32 >= count {
            break;
        }
        let len = u32::from(cfg.prefix_lens[i]);
        if len != 0 && len <= name_len {
            let p = &cfg.prefixes[i];
            let p_lo = u64::from_le_bytes([p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]]);
            let p_hi = u64::from_le_bytes([p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]]);
            let (mask_lo, mask_hi) = byte_masks(len);
            if (name_lo ^ p_lo) & mask_lo == 0 && (name_hi ^ p_hi) & mask_hi == 0 {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// Masks selecting the first `len` (0..=16) bytes of a 16-byte string read as two little-endian
/// words.
#[inline(always)]
fn byte_masks(len: u32) -> (u64, u64) {
    if len >= 16 {
        (u64::MAX, u64::MAX)
    } else if len >= 8 {
        (u64::MAX, (1u64 << ((len - 8) * 8)) - 1)
    } else {
        ((1u64 << (len * 8)) - 1, 0)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Never reached: the verifier refuses a program with a reachable panic path (an infinite
    // loop, or code running off the end), so a panic cannot happen at run time.
    loop {}
}
