//! The rtnetlink link attribute numbers (`<linux/if_link.h>`) both the kernel filter and the
//! userspace decoder read. `u32` because the filter compares them with 32-bit loads.

/// `IFLA_IFNAME`: interface name, NUL-terminated.
pub const IFLA_IFNAME: u32 = 3;
/// `IFLA_MTU`: `u32`.
pub const IFLA_MTU: u32 = 4;
/// `IFLA_MASTER`: ifindex of the bridge/bond/team master, `u32`.
pub const IFLA_MASTER: u32 = 10;
/// `IFLA_OPERSTATE`: RFC 2863 state, `u8`.
pub const IFLA_OPERSTATE: u32 = 16;
/// `IFLA_LINKINFO`: nest holding `IFLA_INFO_KIND`.
pub const IFLA_LINKINFO: u32 = 18;
/// `IFLA_CARRIER`: `u8`.
pub const IFLA_CARRIER: u32 = 33;
/// `IFLA_INFO_KIND` inside `IFLA_LINKINFO`: the driver kind string (`veth`, `team`, ...).
pub const IFLA_INFO_KIND: u32 = 1;
