//! `PortEvent`: one rtnetlink link notification, reduced to what portsyncd needs.

/// `RTM_NEWLINK`: a link was created or changed (also every entry of a link dump).
pub const RTM_NEWLINK: u16 = 16;
/// `RTM_DELLINK`: a link was deleted (or, with a master set, left a bridge).
pub const RTM_DELLINK: u16 = 17;

/// `IFF_UP`: administrative state (SONiC `admin_status`).
pub const IFF_UP: u32 = 0x1;
/// `IFF_RUNNING`: operational state (SONiC `netdev_oper_status`).
pub const IFF_RUNNING: u32 = 0x40;

/// `IFNAMSIZ` from `<linux/if.h>`: interface names are at most 15 bytes plus NUL.
pub const IFNAMSIZ: usize = 16;
/// Room kept for `IFLA_INFO_KIND` (e.g. `veth`, `team`, `bridge`); longer kinds are truncated.
pub const KIND_LEN: usize = 16;

/// Where an event was produced.
pub mod origin {
    /// Emitted by the eBPF socket filter into the ring buffer.
    pub const EBPF: u8 = 1;
    /// Parsed in userspace from a notification on the event socket.
    pub const NETLINK: u8 = 2;
    /// Parsed in userspace from an `RTM_GETLINK` dump entry.
    pub const DUMP: u8 = 3;
}

/// Bits of [`PortEvent::present`]: which optional attributes the message carried.
pub mod present {
    /// `IFLA_MTU` was present.
    pub const MTU: u8 = 1 << 0;
    /// `IFLA_MASTER` was present.
    pub const MASTER: u8 = 1 << 1;
    /// `IFLA_LINKINFO/IFLA_INFO_KIND` was present.
    pub const KIND: u8 = 1 << 2;
    /// `IFLA_OPERSTATE` was present.
    pub const OPERSTATE: u8 = 1 << 3;
    /// `IFLA_CARRIER` was present.
    pub const CARRIER: u8 = 1 << 4;
    /// `IFLA_IFNAME` was longer than [`super::IFNAMSIZ`] - 1 and was truncated (never on Linux).
    pub const NAME_TRUNCATED: u8 = 1 << 5;
}

/// One link notification. 72 bytes, 8-byte aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEvent {
    /// `CLOCK_MONOTONIC` nanoseconds: `bpf_ktime_get_ns()` in the kernel program, the receive
    /// time in userspace. The latency histogram subtracts this from the Redis ack time.
    pub timestamp_ns: u64,
    /// `nlmsg_type`: [`RTM_NEWLINK`] or [`RTM_DELLINK`].
    pub msg_type: u16,
    /// One of the [`origin`] constants.
    pub origin: u8,
    /// Bit set of [`present`] constants.
    pub present: u8,
    /// `ifi_index`.
    pub ifindex: u32,
    /// `ifi_flags` (`IFF_*`).
    pub flags: u32,
    /// `ifi_change`; carried for diagnostics only (it says nothing about dump membership).
    pub change: u32,
    /// `IFLA_MTU`, 0 when absent.
    pub mtu: u32,
    /// `IFLA_MASTER` ifindex, 0 when absent.
    pub master: u32,
    /// `IFLA_OPERSTATE` (`IF_OPER_*`), 0 when absent.
    pub operstate: u8,
    /// `IFLA_CARRIER`, 0 when absent.
    pub carrier: u8,
    /// Bytes of `name` in use (no NUL).
    pub name_len: u8,
    /// Bytes of `kind` in use (no NUL).
    pub kind_len: u8,
    /// `ifi_family` (`AF_UNSPEC`, or `AF_BRIDGE` for bridge port notifications).
    pub family: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
    /// `IFLA_IFNAME` bytes.
    pub name: [u8; IFNAMSIZ],
    /// `IFLA_INFO_KIND` bytes.
    pub kind: [u8; KIND_LEN],
}

const _: () = assert!(core::mem::size_of::<PortEvent>() == 72);
const _: () = assert!(core::mem::align_of::<PortEvent>() == 8);

impl PortEvent {
    /// An all-zero event (no name, no kind, type 0).
    pub const fn zeroed() -> Self {
        Self {
            timestamp_ns: 0,
            msg_type: 0,
            origin: 0,
            present: 0,
            ifindex: 0,
            flags: 0,
            change: 0,
            mtu: 0,
            master: 0,
            operstate: 0,
            carrier: 0,
            name_len: 0,
            kind_len: 0,
            family: 0,
            _pad: [0; 3],
            name: [0; IFNAMSIZ],
            kind: [0; KIND_LEN],
        }
    }

    /// The interface name bytes (without NUL).
    pub fn name_bytes(&self) -> &[u8] {
        let len = (self.name_len as usize).min(IFNAMSIZ);
        &self.name[..len]
    }

    /// The link kind bytes (without NUL); empty when the message had no kind.
    pub fn kind_bytes(&self) -> &[u8] {
        let len = (self.kind_len as usize).min(KIND_LEN);
        &self.kind[..len]
    }

    /// Copies `name` into the event, truncating to `IFNAMSIZ - 1` bytes.
    pub fn set_name(&mut self, name: &[u8]) {
        let len = name.len().min(IFNAMSIZ - 1);
        self.name = [0; IFNAMSIZ];
        self.name[..len].copy_from_slice(&name[..len]);
        self.name_len = len as u8;
        if name.len() > len {
            self.present |= present::NAME_TRUNCATED;
        }
    }

    /// Copies `kind` into the event, truncating to `KIND_LEN` bytes, and marks it present.
    pub fn set_kind(&mut self, kind: &[u8]) {
        let len = kind.len().min(KIND_LEN);
        self.kind = [0; KIND_LEN];
        self.kind[..len].copy_from_slice(&kind[..len]);
        self.kind_len = len as u8;
        self.present |= present::KIND;
    }

    /// `IFF_UP` is set.
    pub const fn admin_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }

    /// `IFF_RUNNING` is set.
    pub const fn oper_up(&self) -> bool {
        self.flags & IFF_RUNNING != 0
    }
}

#[cfg(feature = "user")]
// SAFETY: PortEvent is repr(C), Copy, has explicit padding and every bit pattern is valid.
#[expect(unsafe_code, reason = "aya reads ring buffer records as Pod types; the SAFETY note above holds")]
unsafe impl aya::Pod for PortEvent {}
