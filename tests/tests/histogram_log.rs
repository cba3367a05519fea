//! The audit export: `--histogram-log` writes an HdrHistogram V2 interval log that a standard
//! reader parses, with latency intervals for the events that happened, and SIGUSR1 and exit
//! append the percentile table as comment lines.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use portsyncd_e2e::{all_links, wait_until, Capture, DaemonOpts, Fixture, DEFAULT_TIMEOUT};

/// Percentile tables in the log: each has one comment header line naming its columns.
fn percentile_tables(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with('#') && l.contains("Value") && l.contains("Percentile")).count()
}

#[test]
fn histogram_log_is_a_readable_v2_interval_log_with_percentile_tables() {
    let mut fx = Fixture::new(Capture::Netlink, 4);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("latency.hlog");
    fx.start_daemon(DaemonOpts::new(Capture::Netlink).args([
        "--histogram-log",
        log.to_str().unwrap(),
        "--histogram-interval-secs",
        "1",
    ]));
    fx.create_ports(0..4);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    fx.ns.batch(&["link set Ethernet0 down", "link set Ethernet1 mtu 9000"]);
    // At least one interval boundary after the writes.
    wait_until(DEFAULT_TIMEOUT, "an interval with latency values in the log", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().any(|l| l.starts_with("Tag=latency,")))
    });
    let pid = fx.daemon().pid() as i32;
    kill(Pid::from_raw(pid), Signal::SIGUSR1).unwrap();
    wait_until(DEFAULT_TIMEOUT, "the SIGUSR1 percentile table in the log", || {
        std::fs::read_to_string(&log).is_ok_and(|t| percentile_tables(&t) >= 1)
    });
    assert!(fx.daemon().is_running(), "SIGUSR1 must not stop the daemon");
    assert!(fx.daemon().stop().success());

    let text = std::fs::read_to_string(&log).unwrap();
    let mut deserializer = Deserializer::new();
    let mut latency_count = 0u64;
    let mut intervals = 0;
    for entry in IntervalLogIterator::new(text.as_bytes()) {
        match entry.unwrap_or_else(|e| panic!("log does not parse: {e:?}\n{text}")) {
            LogEntry::Interval(ilh) => {
                intervals += 1;
                let bytes = STANDARD.decode(ilh.encoded_histogram()).expect("base64 interval histogram");
                let h: hdrhistogram::Histogram<u64> = deserializer.deserialize(&mut bytes.as_slice()).unwrap();
                if ilh.tag().map(|t| t.as_str()) == Some("latency") {
                    latency_count += h.len();
                }
            }
            LogEntry::StartTime(_) | LogEntry::BaseTime(_) => {}
        }
    }
    assert!(intervals >= 4, "one line per tag per interval: {intervals}\n{text}");
    // 4 ports created + 2 changes at least; every STATE_DB write is one latency sample.
    assert!(latency_count >= 6, "latency samples in the intervals: {latency_count}");
    let tables = percentile_tables(&text);
    assert!(tables >= 2, "percentile tables from SIGUSR1 and from exit, as comments: {tables}\n{text}");
}
