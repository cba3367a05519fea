//! One eBPF ring-buffer record -> `portsyncd::ebpf::decode_event`. Checks: no panic; a record
//! decodes exactly when it holds a whole `PortEvent`; encoding the event gives the record's
//! bytes back (padding aside); its name and kind stay in bounds; it goes through the LinkSync
//! rules and the coalescer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portsyncd::ebpf::decode_event;
use portsyncd_common::{IFNAMSIZ, KIND_LEN};
use portsyncd_fuzz::{coalesce, encode_event, EVENT_LEN, PAD};

fuzz_target!(|data: &[u8]| {
    let decoded = decode_event(data);
    assert_eq!(decoded.is_some(), data.len() >= EVENT_LEN);
    let Some(ev) = decoded else { return };
    let mut expected = [0u8; EVENT_LEN];
    expected.copy_from_slice(&data[..EVENT_LEN]);
    expected[PAD].fill(0);
    assert_eq!(encode_event(&ev), expected);
    assert!(ev.name_bytes().len() <= IFNAMSIZ && ev.kind_bytes().len() <= KIND_LEN);
    // A record of more than one event's length is read as a second event too, so the coalescer
    // sees repeated ports.
    let mut events = vec![ev];
    events.extend(data.get(EVENT_LEN..).and_then(decode_event));
    coalesce(&events);
});
