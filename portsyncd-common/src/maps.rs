//! Names and layouts of the BPF maps both sides open, so they cannot drift apart.

/// The `RingBuf` of [`crate::PortEvent`]s.
pub const EVENTS_MAP: &str = "PORT_EVENTS";
/// The `PerCpuArray<u64>` of counters indexed by [`counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// The `Array<FilterConfig>` with one entry: the name prefixes the filter keeps.
pub const FILTER_MAP: &str = "FILTER_CONFIG";
/// The `Array<u32>` with one entry: how the ring wakes the daemon ([`wakeup`]).
pub const WAKEUP_MAP: &str = "RING_WAKEUP";
/// The `HashMap<[u8; 16], u32>` of port owners when several instances share the ports: the
/// zero-padded name -> the instance that handles it. Names it lacks are the leader's (0).
pub const OWNERS_MAP: &str = "PORT_OWNERS";
/// Most entries of [`OWNERS_MAP`].
pub const MAX_OWNERS: u32 = 8192;
/// Name of the socket filter program in the object file.
pub const PROGRAM_NAME: &str = "portsyncd_link_filter";

/// Indices into the counters map.
pub mod counter {
    /// Events written into the ring buffer.
    pub const EVENTS: u32 = 0;
    /// Ring reserve failed: the message was let through to the socket instead.
    pub const RING_FULL: u32 = 1;
    /// Link messages dropped because their name matched no prefix.
    pub const FILTERED: u32 = 2;
    /// Messages the program could not parse and let through to the socket.
    pub const PARSE_ERROR: u32 = 3;
    /// Messages that were not RTM_NEWLINK/RTM_DELLINK, let through untouched.
    pub const NOT_LINK: u32 = 4;
    /// Port messages dropped because another instance owns the port.
    pub const OTHER_INSTANCE: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}

/// Values of the [`WAKEUP_MAP`] entry.
pub mod wakeup {
    /// Every event wakes the daemon (it waits on the ring; the default).
    pub const PER_EVENT: u32 = 0;
    /// No event wakes the daemon: in a storm it reads the ring on a timer of its own, and a
    /// wake-up per event would only cost it a context switch each.
    pub const POLLED: u32 = 1;
}

/// Maximum number of name prefixes the kernel filter checks.
pub const MAX_PREFIXES: usize = 4;
/// Maximum length of one prefix.
pub const PREFIX_LEN: usize = 16;

/// The filter's configuration, written by the daemon before attaching the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterConfig {
    /// How many entries of `prefixes` are in use; 0 means "keep every name".
    pub prefix_count: u32,
    /// Length of each prefix in bytes.
    pub prefix_lens: [u8; MAX_PREFIXES],
    /// The prefixes, zero-padded.
    pub prefixes: [[u8; PREFIX_LEN]; MAX_PREFIXES],
    /// This instance's id, when `partitioned`.
    pub instance: u32,
    /// Nonzero: keep only ports [`OWNERS_MAP`] gives to `instance`.
    pub partitioned: u32,
}

const _: () = assert!(core::mem::size_of::<FilterConfig>() == 16 + MAX_PREFIXES * PREFIX_LEN);

#[cfg(feature = "user")]
// SAFETY: FilterConfig is repr(C), Copy, has no implicit padding and every bit pattern is valid.
#[expect(unsafe_code, reason = "aya reads map values as Pod types; the SAFETY note above holds")]
unsafe impl aya::Pod for FilterConfig {}
