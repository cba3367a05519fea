//! The warm-restart port-state file -> `state_file::parse_document`, the checks
//! `StateStore::load` applies to a file's bytes. Checks: no panic; whether a document is usable
//! depends on the clock exactly as documented (max age, future tolerance); a usable document
//! written again by the writer's encoder reads back equal; its records become a reconcile
//! baseline.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portsyncd::warm_restart::baseline_from_records;
use portsyncd::warm_restart::state_file::{encode_document, parse_document, FUTURE_TOLERANCE};

/// A fixed "now" (2026-12-01T00:00:00Z, Unix ms) so that a run is reproducible.
const NOW_MS: u64 = 1_796_083_200_000;
/// The default maximum age, 7 days.
const MAX_AGE: Duration = Duration::from_secs(7 * 86_400);

fuzz_target!(|data: &[u8]| {
    // With the clock at its end and no age limit, every well-formed document is usable.
    let Some(doc) = parse_document(data, u64::MAX, Duration::MAX) else {
        assert_eq!(parse_document(data, NOW_MS, MAX_AGE), None);
        return;
    };
    let saved = doc.saved_at_unix_ms;
    let ahead = saved > NOW_MS + FUTURE_TOLERANCE.as_millis() as u64;
    let old = NOW_MS.saturating_sub(saved) > MAX_AGE.as_millis() as u64;
    assert_eq!(parse_document(data, NOW_MS, MAX_AGE).as_ref(), (!ahead && !old).then_some(&doc));
    // At the epoch only documents from its first minute are not from the future.
    assert_eq!(parse_document(data, 0, Duration::MAX).is_some(), saved <= FUTURE_TOLERANCE.as_millis() as u64);

    let body = encode_document(saved, doc.clean_shutdown, doc.boot_id.as_deref(), &doc.ports)
        .expect("a decoded document encodes");
    assert_eq!(parse_document(&body, u64::MAX, Duration::MAX), Some(doc.clone()));

    let baseline = baseline_from_records(&doc.ports);
    assert!(baseline.len() <= doc.ports.len());
    for (name, state) in &baseline {
        let record = &doc.ports[name.as_str()];
        assert_eq!((state.admin_up, state.oper_up, state.mtu), (record.admin_up, record.oper_up, record.mtu));
    }
});
