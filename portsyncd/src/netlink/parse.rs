//! Raw netlink datagrams -> [`PortEvent`]s and control messages (`NLMSG_DONE`, `NLMSG_ERROR`).
//! Link messages are decoded here ([`decode_link`]), held to netlink-packet-route's decoding
//! ([`decode_link_reference`]) by tests.

use netlink_packet_core::{NetlinkBuffer, NLM_F_DUMP_INTR, NLM_F_MULTIPART};
use netlink_packet_core::{NlasIterator, ParseableParametrized};
use netlink_packet_route::link::{LinkAttribute, LinkHeader, LinkInfo, LinkMessage};
use portsyncd_common::ifla::{
    IFLA_CARRIER, IFLA_IFNAME, IFLA_INFO_KIND, IFLA_LINKINFO, IFLA_MASTER, IFLA_MTU, IFLA_OPERSTATE,
};
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

/// Decodes one link message payload (`ifinfomsg` + the six attributes we use) straight into a
/// [`PortEvent`]: a walk over the attributes' framing, no allocation. It reads what
/// netlink-packet-route reads, with the same checks on what it keeps (exact-size integers, a
/// name or kind of UTF-8 with at most one trailing NUL, every attribute's length within the
/// message); [`decode_link_reference`] is that crate's decoding, and the unit tests and the
/// `link_decode` fuzz target hold this one to it. Only an `IFLA_LINKINFO` nest is read less
/// strictly: its `IFLA_INFO_KIND` is all we use, so its other members are not decoded. It was
/// 12% of the daemon's CPU in a netlink-mode flap storm through the crate (an allocation per
/// attribute, the nest decoded in full).
pub fn decode_link(msg_type: u16, payload: &[u8], origin: u8, timestamp_ns: u64) -> Option<PortEvent> {
    let header: &[u8; IFINFOMSG_LEN] = payload.get(..IFINFOMSG_LEN)?.try_into().ok()?;
    let word = |at: usize| header.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes);
    let mut ev = PortEvent::zeroed();
    ev.timestamp_ns = timestamp_ns;
    ev.msg_type = msg_type;
    ev.origin = origin;
    ev.family = header[0];
    ev.ifindex = word(4)?;
    ev.flags = word(8)?;
    ev.change = word(12)?;
    for attr in Attributes(payload.get(IFINFOMSG_LEN..)?) {
        let (kind, value) = attr?;
        match kind {
            IFLA_IFNAME => ev.set_name(text(value)?),
            IFLA_MTU => {
                ev.mtu = u32::from_ne_bytes(value.try_into().ok()?);
                ev.present |= present::MTU;
            }
            IFLA_MASTER => {
                ev.master = u32::from_ne_bytes(value.try_into().ok()?);
                ev.present |= present::MASTER;
            }
            IFLA_OPERSTATE => {
                let [state] = value else { return None };
                ev.operstate = *state;
                ev.present |= present::OPERSTATE;
            }
            IFLA_CARRIER => {
                let [carrier] = value else { return None };
                ev.carrier = *carrier;
                ev.present |= present::CARRIER;
            }
            IFLA_LINKINFO => {
                for info in Attributes(value) {
                    let (kind, value) = info?;
                    if kind == IFLA_INFO_KIND {
                        ev.set_kind(text(value)?);
                    }
                }
            }
            _ => {}
        }
    }
    Some(ev)
}

/// The attributes of a netlink message or nest as `(type, value)`, types without the
/// NLA_F_NESTED / NLA_F_NET_BYTEORDER flags; `None` (and then the end) at the first whose
/// length does not fit.
struct Attributes<'a>(&'a [u8]);

impl<'a> Iterator for Attributes<'a> {
    type Item = Option<(u32, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let framed = self.0.first_chunk::<4>().and_then(|&[l0, l1, k0, k1]| {
            let len = usize::from(u16::from_ne_bytes([l0, l1]));
            let kind = u32::from(u16::from_ne_bytes([k0, k1]) & 0x3fff);
            (len >= 4).then_some(())?;
            Some((kind, self.0.get(4..len)?, len))
        });
        match framed {
            Some((kind, value, len)) => {
                // NLA_ALIGN: the next attribute starts on a 4-byte boundary.
                self.0 = self.0.get((len + 3) & !3..).unwrap_or_default();
                Some(Some((kind, value)))
            }
            None => {
                self.0 = &[];
                Some(None)
            }
        }
    }
}

/// A name or kind as netlink-packet-route reads it: one trailing NUL dropped, UTF-8.
fn text(value: &[u8]) -> Option<&[u8]> {
    let bytes = value.strip_suffix(&[0]).unwrap_or(value);
    std::str::from_utf8(bytes).ok().map(str::as_bytes)
}

/// netlink-packet-route's decoding of the same payload into a [`PortEvent`]: the reference
/// [`decode_link`] is tested against (unit tests, the `link_decode` fuzz target).
pub fn decode_link_reference(msg_type: u16, payload: &[u8], origin: u8, timestamp_ns: u64) -> Option<PortEvent> {
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

    /// A kernel-like RTM_NEWLINK payload (after the netlink header) with every attribute the
    /// decoders read, some they skip, and a LINKINFO nest with data besides the kind.
    fn full_payload(name: &str, kind: &str) -> Vec<u8> {
        use netlink_packet_core::Emitable;
        use netlink_packet_route::link::{InfoData, InfoVeth, State};
        let mut link = LinkMessage::default();
        link.header = LinkHeader { index: 77, flags: LinkFlags::from_bits_retain(0x1_1043), ..LinkHeader::default() };
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link.attributes.push(LinkAttribute::TxQueueLen(1000));
        link.attributes.push(LinkAttribute::OperState(State::Up));
        link.attributes.push(LinkAttribute::Mtu(9100));
        link.attributes.push(LinkAttribute::Controller(5));
        link.attributes.push(LinkAttribute::Carrier(1));
        let mut infos = vec![LinkInfo::Kind(InfoKind::from(kind))];
        if kind == "veth" {
            infos.push(LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(LinkMessage::default()))));
        }
        link.attributes.push(LinkAttribute::LinkInfo(infos));
        link.attributes.push(LinkAttribute::Group(0));
        let mut buf = vec![0; link.buffer_len()];
        link.emit(&mut buf);
        buf
    }

    #[test]
    fn the_fast_decoder_reads_what_netlink_packet_route_reads() {
        for kind in ["veth", "bridge", "bond", "team", "vlan", "vxlan", "dummy", "macvlan", "gretap", "no-such-kind"] {
            for name in ["Ethernet0", "PortChannel0001", "x", "éth"] {
                let payload = full_payload(name, kind);
                let fast = decode_link(RTM_NEWLINK, &payload, 3, 99);
                let reference = decode_link_reference(RTM_NEWLINK, &payload, 3, 99);
                assert!(reference.is_some(), "{kind}/{name}: the reference failed");
                assert_eq!(fast, reference, "{kind}/{name}");
            }
        }
        let ev = decode_link(RTM_NEWLINK, &full_payload("Ethernet8", "veth"), 3, 99).unwrap();
        assert_eq!((ev.ifindex, ev.flags, ev.mtu, ev.master, ev.operstate, ev.carrier), (77, 0x1_1043, 9100, 5, 6, 1));
        assert_eq!((ev.name_bytes(), ev.kind_bytes()), (&b"Ethernet8"[..], &b"veth"[..]));
    }

    /// Every truncation and every single-byte change of a full payload: wherever the reference
    /// decodes, the fast decoder decodes the same event (it is never stricter, and never reads
    /// something else); where the reference refuses, the fast decoder refuses too, except in the
    /// LINKINFO nest's members other than the kind, which it does not decode.
    #[test]
    fn the_fast_decoder_agrees_with_the_reference_on_damaged_payloads() {
        let payload = full_payload("Ethernet12", "veth");
        // Where the LINKINFO attribute starts: walk the attributes after the ifinfomsg.
        let mut linkinfo_at = IFINFOMSG_LEN;
        for (kind, value) in Attributes(&payload[IFINFOMSG_LEN..]).flatten() {
            if kind == IFLA_LINKINFO {
                break;
            }
            linkinfo_at += (4 + value.len() + 3) & !3;
        }
        assert!(linkinfo_at < payload.len());
        let mut checked = 0;
        let mut agree = |p: &[u8], lenient_ok: bool| {
            let fast = decode_link(RTM_NEWLINK, p, 0, 0);
            let reference = decode_link_reference(RTM_NEWLINK, p, 0, 0);
            match (&fast, &reference) {
                (_, Some(_)) => assert_eq!(fast, reference, "{p:?}"),
                (None, None) => {}
                (Some(_), None) => assert!(lenient_ok, "fast decoded what the reference refused: {p:?}"),
            }
            checked += 1;
        };
        for len in 0..payload.len() {
            agree(&payload[..len], true);
        }
        for at in 0..payload.len() {
            for v in [0u8, 1, 3, 4, 0x7f, 0x80, 0xff] {
                let mut p = payload.clone();
                p[at] = v;
                // Changes inside the nest's header or members may leave only the reference failing.
                agree(&p, at >= linkinfo_at);
            }
        }
        assert_eq!(checked, payload.len() * 8);
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
