//! One rtnetlink datagram as the event or dump socket receives it ->
//! `portsyncd::netlink::parse::for_each_message`. Checks: no panic; decoding stops at the first
//! malformed message and says so; link events are well formed, survive the eBPF ring encoding
//! unchanged, and go through the LinkSync rules and the coalescer. And the input after its
//! first 16 bytes (a link message's payload, in a datagram of one) decodes to the same event as
//! netlink-packet-route decodes it, wherever that crate decodes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portsyncd::ebpf::decode_event;
use portsyncd::netlink::parse::{decode_link, decode_link_reference, for_each_message, Message};
use portsyncd_common::{origin, IFNAMSIZ, KIND_LEN, RTM_DELLINK, RTM_NEWLINK};
use portsyncd_fuzz::{coalesce, encode_event};

const TIMESTAMP_NS: u64 = 123_456_789;

fuzz_target!(|data: &[u8]| {
    let mut events = Vec::new();
    let mut messages = 0usize;
    let mut malformed_seen = false;
    let malformed = for_each_message(data, origin::NETLINK, TIMESTAMP_NS, |_, msg| {
        assert!(!malformed_seen, "a message was reported after a malformed one");
        messages += 1;
        match msg {
            Message::Link(ev) => {
                assert!(ev.msg_type == RTM_NEWLINK || ev.msg_type == RTM_DELLINK);
                assert_eq!((ev.origin, ev.timestamp_ns), (origin::NETLINK, TIMESTAMP_NS));
                assert!(usize::from(ev.name_len) < IFNAMSIZ && usize::from(ev.kind_len) <= KIND_LEN);
                assert_eq!(decode_event(&encode_event(&ev)), Some(ev));
                events.push(ev);
            }
            Message::Malformed => malformed_seen = true,
            Message::Done | Message::Error(_) | Message::Overrun | Message::Other => {}
        }
    });
    assert_eq!(malformed, usize::from(malformed_seen));
    // Every message but a malformed one takes at least a 16-byte header.
    assert!(messages <= data.len() / 16 + 1);
    coalesce(&events);

    if let Some(payload) = data.get(16..) {
        if let Some(reference) = decode_link_reference(RTM_NEWLINK, payload, origin::NETLINK, TIMESTAMP_NS) {
            assert_eq!(decode_link(RTM_NEWLINK, payload, origin::NETLINK, TIMESTAMP_NS), Some(reference));
        }
    }
});
