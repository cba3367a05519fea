//! Raw netlink datagrams -> [`PortEvent`]s and control messages (`NLMSG_DONE`, `NLMSG_ERROR`).
//! Link attributes are decoded by netlink-packet-route; only the framing is walked here.

use netlink_packet_core::{NetlinkBuffer, NLM_F_DUMP_INTR, NLM_F_MULTIPART};
use netlink_packet_core::{NlasIterator, ParseableParametrized};
use netlink_packet_route::link::{LinkAttribute, LinkHeader, LinkInfo, LinkMessage};
use portsyncd_common::ifla::{IFLA_CARRIER, IFLA_IFNAME, IFLA_LINKINFO, IFLA_MASTER, IFLA_MTU, IFLA_OPERSTATE};
use portsyncd_common::{present, PortEvent, RTM_DELLINK, RTM_NEWLINK};

/// `NLMSG_ERROR`.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
pub const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`.
pub const NLMSG_OVERRUN: u16 = 4;

/// Header fields the dump logic needs to tell its own replies apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `nlmsg_type`.
    pub msg_type: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`.
    pub pid: u32,
}

impl Header {
    /// `NLM_F_MULTI`: part of a dump.
    pub fn multi(&self) -> bool {
        self.flags & NLM_F_MULTIPART != 0
    }

    /// `NLM_F_DUMP_INTR`: the dump was inconsistent and must be repeated.
    pub fn dump_intr(&self) -> bool {
        self.flags & NLM_F_DUMP_INTR != 0
    }
}

/// One message of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `RTM_NEWLINK` / `RTM_DELLINK`.
    Link(PortEvent),
    /// `NLMSG_DONE`.
    Done,
    /// `NLMSG_ERROR` with its (negative errno) code; 0 is an ACK.
    Error(i32),
    /// `NLMSG_OVERRUN`.
    Overrun,
    /// Anything else (other rtnetlink types, NOOP).
    Other,
    /// A message that could not be decoded; the rest of the datagram is skipped.
    Malformed,
}

/// Walks every netlink message in `buf`, calling `f` for each. Returns the number of malformed
/// messages met (decoding stops at the first, since its length cannot be trusted).
pub fn for_each_message(buf: &[u8], origin: u8, timestamp_ns: u64, mut f: impl FnMut(Header, Message)) -> usize {
    let mut off = 0;
    while let Some(rest) = buf.get(off..).filter(|r| r.len() >= 16) {
        let Ok(nl) = NetlinkBuffer::new_checked(rest) else {
            f(Header { msg_type: 0, flags: 0, seq: 0, pid: 0 }, Message::Malformed);
            return 1;
        };
        let len = nl.length() as usize;
        let header =
            Header { msg_type: nl.message_type(), flags: nl.flags(), seq: nl.sequence_number(), pid: nl.port_number() };
        let payload = nl.payload();
        let msg = match header.msg_type {
            RTM_NEWLINK | RTM_DELLINK => match decode_link(header.msg_type, payload, origin, timestamp_ns) {
                Some(ev) => Message::Link(ev),
                None => Message::Malformed,
            },
            NLMSG_DONE => Message::Done,
            NLMSG_ERROR => {
                let code = payload.get(..4).and_then(|b| b.try_into().ok()).map_or(0, i32::from_ne_bytes);
                Message::Error(code)
            }
            NLMSG_OVERRUN => Message::Overrun,
            _ => Message::Other,
        };
        let malformed = msg == Message::Malformed;
        f(header, msg);
        if malformed {
            return 1;
        }
        // NLMSG_ALIGN: messages in a datagram start on 4-byte boundaries.
        off += (len + 3) & !3;
    }
    0
}

/// `ifinfomsg` length: attributes start after it.
const IFINFOMSG_LEN: usize = 16;

/// Decodes one link message payload (`ifinfomsg` + the attributes we use). netlink-packet-route
/// decodes the header and each kept attribute; only the choice of attributes is ours.
pub fn decode_link(msg_type: u16, payload: &[u8], origin: u8, timestamp_ns: u64) -> Option<PortEvent> {
    let header = LinkHeader::parse(payload).ok()?;
    let family = header.interface_family;
    let mut link = LinkMessage::default();
    link.header = header;
    for nla in NlasIterator::new(payload.get(IFINFOMSG_LEN..)?) {
        let nla = nla.ok()?;
        // NLA_F_NESTED and NLA_F_NET_BYTEORDER share the kind field. Every other attribute -
        // statistics, per-family data, VF info, most of a notification's bytes - is skipped.
        let kind = u32::from(nla.kind() & 0x3fff);
        if matches!(kind, IFLA_IFNAME | IFLA_MTU | IFLA_MASTER | IFLA_OPERSTATE | IFLA_LINKINFO | IFLA_CARRIER) {
            link.attributes.push(LinkAttribute::parse_with_param(&nla, family).ok()?);
        }
    }
    Some(link_to_event(msg_type, &link, origin, timestamp_ns))
}

/// Reduces a decoded link message to a [`PortEvent`].
pub fn link_to_event(msg_type: u16, link: &LinkMessage, origin: u8, timestamp_ns: u64) -> PortEvent {
    let mut ev = PortEvent::zeroed();
    ev.timestamp_ns = timestamp_ns;
    ev.msg_type = msg_type;
    ev.origin = origin;
    ev.ifindex = link.header.index;
    ev.flags = link.header.flags.bits();
    ev.change = link.header.change_mask.bits();
    ev.family = u8::from(link.header.interface_family);
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(name) => ev.set_name(name.as_bytes()),
            LinkAttribute::Mtu(mtu) => {
                ev.mtu = *mtu;
                ev.present |= present::MTU;
            }
            LinkAttribute::Controller(master) => {
                ev.master = *master;
                ev.present |= present::MASTER;
            }
            LinkAttribute::OperState(state) => {
                ev.operstate = u8::from(*state);
                ev.present |= present::OPERSTATE;
            }
            LinkAttribute::Carrier(c) => {
                ev.carrier = *c;
                ev.present |= present::CARRIER;
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        ev.set_kind(kind.to_string().as_bytes());
                    }
                }
            }
            _ => {}
        }
    }
    ev
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::link::{InfoKind, LinkFlags, LinkHeader};
    use netlink_packet_route::RouteNetlinkMessage;

    /// Serializes a link message exactly as the kernel frames it.
    #[expect(clippy::too_many_arguments, reason = "one argument per header field keeps call sites readable")]
    pub(crate) fn link_msg(
        new: bool,
        index: u32,
        name: &str,
        flags: u32,
        mtu: u32,
        master: u32,
        kind: Option<&str>,
        seq: u32,
        nl_flags: u16,
    ) -> Vec<u8> {
        let mut link = LinkMessage::default();
        link.header = LinkHeader { index, flags: LinkFlags::from_bits_retain(flags), ..LinkHeader::default() };
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link.attributes.push(LinkAttribute::Mtu(mtu));
        if master != 0 {
            link.attributes.push(LinkAttribute::Controller(master));
        }
        if let Some(k) = kind {
            link.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::from(k))]));
        }
        let inner = if new { RouteNetlinkMessage::NewLink(link) } else { RouteNetlinkMessage::DelLink(link) };
        let mut hdr = NetlinkHeader::default();
        hdr.sequence_number = seq;
        hdr.flags = nl_flags;
        let mut msg = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(inner));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    /// A bare control message (`NLMSG_DONE` with a zero payload, or `NLMSG_ERROR` with a code).
    pub(crate) fn control_msg(msg_type: u16, seq: u32, pid: u32, code: i32) -> Vec<u8> {
        let mut buf = vec![0u8; 20];
        buf[0..4].copy_from_slice(&20u32.to_ne_bytes());
        buf[4..6].copy_from_slice(&msg_type.to_ne_bytes());
        buf[6..8].copy_from_slice(&NLM_F_MULTIPART.to_ne_bytes());
        buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        buf[12..16].copy_from_slice(&pid.to_ne_bytes());
        buf[16..20].copy_from_slice(&code.to_ne_bytes());
        buf
    }

    fn collect(buf: &[u8]) -> Vec<(Header, Message)> {
        let mut v = Vec::new();
        for_each_message(buf, portsyncd_common::origin::NETLINK, 7, |h, m| v.push((h, m)));
        v
    }

    #[test]
    fn decodes_link_fields() {
        let buf = link_msg(true, 42, "Ethernet8", 0x1 | 0x40, 9100, 7, Some("team"), 0, 0);
        let msgs = collect(&buf);
        assert_eq!(msgs.len(), 1);
        let Message::Link(ev) = msgs[0].1 else { panic!("{:?}", msgs[0]) };
        assert_eq!(ev.msg_type, RTM_NEWLINK);
        assert_eq!(ev.ifindex, 42);
        assert_eq!(ev.name_bytes(), b"Ethernet8");
        assert!(ev.admin_up() && ev.oper_up());
        assert_eq!((ev.mtu, ev.master), (9100, 7));
        assert_eq!(ev.kind_bytes(), b"team");
        assert_eq!(ev.timestamp_ns, 7);
        assert_ne!(ev.present & present::MASTER, 0);
    }

    #[test]
    fn walks_multi_message_datagrams_and_control_messages() {
        let mut buf = link_msg(true, 1, "Ethernet0", 0, 1500, 0, None, 9, NLM_F_MULTIPART);
        buf.extend(link_msg(false, 2, "Ethernet4", 0x1, 1500, 0, None, 9, NLM_F_MULTIPART | NLM_F_DUMP_INTR));
        buf.extend(control_msg(NLMSG_DONE, 9, 1234, 0));
        let msgs = collect(&buf);
        assert_eq!(msgs.len(), 3);
        assert!(msgs[0].0.multi() && !msgs[0].0.dump_intr());
        assert!(msgs[1].0.dump_intr());
        assert!(matches!(msgs[1].1, Message::Link(ev) if ev.msg_type == RTM_DELLINK && ev.admin_up()));
        assert_eq!(msgs[2].1, Message::Done);
        assert_eq!((msgs[2].0.seq, msgs[2].0.pid), (9, 1234));
    }

    #[test]
    fn error_code_and_malformed_input() {
        let msgs = collect(&control_msg(NLMSG_ERROR, 1, 1, -105));
        assert_eq!(msgs[0].1, Message::Error(-105));
        // A header claiming more bytes than the datagram holds.
        let mut bad = link_msg(true, 1, "Ethernet0", 0, 1500, 0, None, 0, 0);
        bad[0..4].copy_from_slice(&4000u32.to_ne_bytes());
        let mut n = 0;
        assert_eq!(
            for_each_message(&bad, 2, 0, |_, m| {
                assert_eq!(m, Message::Malformed);
                n += 1
            }),
            1
        );
        assert_eq!(n, 1);
        // A truncated ifinfomsg.
        let mut short = control_msg(RTM_NEWLINK, 0, 0, 0);
        short[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        assert_eq!(collect(&short)[0].1, Message::Malformed);
    }
}
