//! Everything portsyncd does with rtnetlink: the event socket ([`socket`]), turning messages into
//! [`portsyncd_common::PortEvent`]s ([`parse`]), the `RTM_GETLINK` dump whose `NLMSG_DONE` is the
//! end of the initial update ([`dump`]), and bringing old interfaces down ([`admin`]).

pub mod admin;
pub mod dump;
pub mod parse;
pub mod socket;

/// `RTNLGRP_LINK`: the multicast group of link notifications.
pub const RTNLGRP_LINK: u32 = 1;
