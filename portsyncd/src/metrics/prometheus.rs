//! The opt-in Prometheus endpoint (`--metrics-addr`, loopback only): OpenMetrics text encoded
//! by the Prometheus project's Rust client, with HELP and TYPE for every family.
//!
//! Counters are read from the latest stats snapshot at scrape time (a collector), so each is
//! defined once, by its struct, and its HELP is that field's doc comment. The event latency is
//! a real histogram, observed per written event alongside the HdrHistogram audit log.
//!
//! On a multi-ASIC switch every sample carries `namespace="asicN"` ([`crate::netns::label`]), a
//! constant label, so that series of one host's daemons stay apart and can be summed or joined
//! by namespace without an extra info metric.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::fields::Described;

/// `(field, doc comment)` of a [`Described`] struct.
type FieldDocs = &'static [(&'static str, &'static str)];

/// The snapshot groups exported as counters: (snapshot key, metric name prefix, field docs).
const COUNTER_GROUPS: [(&str, &str, FieldDocs); 5] = [
    ("counters", "portsyncd_", super::Counters::FIELDS),
    ("source", "portsyncd_source_", crate::source::SourceCounters::FIELDS),
    ("coalesce", "portsyncd_coalesce_", crate::batch::CoalesceStats::FIELDS),
    ("ebpf", "portsyncd_ebpf_", crate::ebpf::EbpfCounters::FIELDS),
    ("warm_restart", "portsyncd_warm_restart_", crate::warm_restart::metrics::WarmRestartMetrics::FIELDS),
];

/// Point-in-time values of the snapshot exported as gauges: (snapshot key, name, help).
const GAUGES: [(&str, &str, &str); 6] = [
    ("redis_up", "portsyncd_redis_up", "1 while Redis is reachable."),
    ("port_init_done", "portsyncd_port_init_done", "1 once PortInitDone is written."),
    ("initial_sync_done", "portsyncd_initial_sync_done", "1 once the initial sync is complete."),
    ("pending_ports", "portsyncd_pending_ports", "Ports with a change waiting to be written."),
    ("refused_ports", "portsyncd_refused_ports", "Ports whose last write Redis refused, waiting for a retry."),
    ("unseen_ports", "portsyncd_unseen_ports", "Configured ports not yet seen in the kernel."),
];

/// The latency histogram's buckets: 10 µs doubling to about 1.3 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(10e-6, 2.0, 18)
}

/// The registry, the latency histogram, and the snapshot the collector reads.
#[derive(Debug)]
pub struct PrometheusExport {
    registry: Registry,
    latency: Histogram,
    snapshot: Arc<Mutex<serde_json::Value>>,
}

impl Default for PrometheusExport {
    fn default() -> Self {
        Self::new(None)
    }
}

impl PrometheusExport {
    /// Registers every family, labelled with the process's namespace label if it has one and
    /// with `instance_id` when several instances share the ports (`instance` is the label
    /// Prometheus itself gives a scrape target).
    pub fn new(instance: Option<u16>) -> Self {
        let namespace = crate::netns::label().map(|ns| (crate::netns::LABEL.to_owned(), ns.to_owned()));
        let instance = instance.map(|id| ("instance_id".to_owned(), id.to_string()));
        Self::with_labels(namespace.into_iter().chain(instance))
    }

    /// Registers every family, each sample carrying `labels` as constant labels.
    pub fn with_labels(labels: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut registry = Registry::with_labels(labels.into_iter().map(|(k, v)| (k.into(), v.into())));
        let latency = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "portsyncd_event_processing_latency",
            // The registry appends the full stop itself.
            "Kernel link event to Redis acknowledging its STATE_DB write",
            Unit::Seconds,
            latency.clone(),
        );
        let snapshot = Arc::new(Mutex::new(serde_json::Value::Null));
        registry.register_collector(Box::new(SnapshotCollector { snapshot: Arc::clone(&snapshot) }));
        Self { registry, latency, snapshot }
    }

    /// The histogram to observe event latencies in (seconds); clones share the buckets.
    pub fn latency_histogram(&self) -> Histogram {
        self.latency.clone()
    }

    /// Replaces the snapshot the next scrape reads.
    pub fn update(&self, snapshot: serde_json::Value) {
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
    }

    /// The OpenMetrics text of every family, ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a metric name.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode the Prometheus metrics");
        }
        out
    }
}

#[derive(Debug)]
struct SnapshotCollector {
    snapshot: Arc<Mutex<serde_json::Value>>,
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snap = self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (group, prefix, fields) in COUNTER_GROUPS {
            let Some(values) = snap.get(group).and_then(|v| v.as_object()) else { continue };
            for (field, help) in fields {
                let Some(v) = values.get(*field).and_then(|v| v.as_u64()) else { continue };
                let name = format!("{prefix}{field}");
                let counter = ConstCounter::new(v);
                counter.encode(encoder.encode_descriptor(&name, help.trim(), None, MetricType::Counter)?)?;
            }
        }
        for (key, name, help) in GAUGES {
            let v = match snap.get(key) {
                Some(serde_json::Value::Bool(b)) => i64::from(*b),
                Some(v) => match v.as_i64() {
                    Some(n) => n,
                    None => continue,
                },
                None => continue,
            };
            ConstGauge::new(v).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        if let Some((code, reasons)) = crate::health::from_snapshot(&snap) {
            ConstGauge::new(code).encode(encoder.encode_descriptor(
                "portsyncd_health_status",
                "Health: 0 healthy, 1 degraded, 2 unhealthy (reasons in portsyncd_health_reason).",
                None,
                MetricType::Gauge,
            )?)?;
            let mut family = encoder.encode_descriptor(
                "portsyncd_health_reason",
                "1 for each reason the daemon is not healthy now.",
                None,
                MetricType::Gauge,
            )?;
            for (r, on) in reasons {
                let labels = [("reason", r.as_str())];
                ConstGauge::new(i64::from(on)).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(rss) = resident_bytes() {
            ConstGauge::new(rss).encode(encoder.encode_descriptor(
                "portsyncd_memory",
                "Resident set size of the daemon.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?)?;
        }
        let text = |key: &str| snap.get(key).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        let capture = Info::new(vec![
            ("mode".to_owned(), text("capture_mode")),
            ("fallback_reason".to_owned(), text("capture_fallback_reason")),
        ]);
        capture.encode(encoder.encode_descriptor(
            "portsyncd_capture",
            "How link events are captured: ebpf, or netlink (and why, when eBPF was wanted).",
            None,
            MetricType::Info,
        )?)?;
        let log = Info::new(vec![("level".to_owned(), text("log_level")), ("output".to_owned(), text("log_output"))]);
        log.encode(encoder.encode_descriptor(
            "portsyncd_log",
            "The log level and output in force (CONFIG_DB LOGGER|portsyncd).",
            None,
            MetricType::Info,
        )?)?;
        Ok(())
    }
}

/// Resident set size, from `VmRSS` in `/proc/self/status` (kB).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers every HTTP GET on `listener` with the current metrics, until `export` is the only
/// reference left (the daemon dropped its own). Loopback only (enforced by the config).
pub async fn serve(listener: tokio::net::TcpListener, export: Arc<PrometheusExport>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        if Arc::strong_count(&export) == 1 {
            return;
        }
        let export = Arc::clone(&export);
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let n = tokio::time::timeout(std::time::Duration::from_secs(1), stream.read(&mut req))
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or(0);
            let (status, ctype, body) = if req.get(..n).is_some_and(|r| r.starts_with(b"GET ")) {
                ("200 OK", CONTENT_TYPE, export.encode())
            } else {
                ("405 Method Not Allowed", "text/plain", "GET only\n".to_owned())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> serde_json::Value {
        serde_json::json!({
            "capture_mode": "netlink",
            "capture_fallback_reason": "no CAP_BPF",
            "log_level": "NOTICE",
            "log_output": "SYSLOG",
            "redis_up": true,
            "pending_ports": 3,
            "health": {"status": "degraded", "code": 1, "reasons": ["ebpf_fallback"]},
            "counters": {"events": 7, "state_writes": 5},
            "source": {"datagrams": 2},
        })
    }

    #[test]
    fn every_family_has_help_and_type_and_counters_keep_their_docs() {
        let export = PrometheusExport::new(None);
        export.update(sample());
        export.latency_histogram().observe(0.000_25);
        let text = export.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE portsyncd_events counter\n"), "{text}");
        assert!(text.contains("# HELP portsyncd_events Events that entered the pipeline"), "{text}");
        assert!(text.contains("portsyncd_events_total 7\n"), "{text}");
        assert!(text.contains("portsyncd_source_datagrams_total 2\n"), "{text}");
        assert!(text.contains("portsyncd_redis_up 1\n"), "{text}");
        assert!(text.contains("portsyncd_health_status 1\n"), "{text}");
        assert!(text.contains("portsyncd_health_reason{reason=\"ebpf_fallback\"} 1\n"), "{text}");
        assert!(text.contains("portsyncd_health_reason{reason=\"redis_down\"} 0\n"), "{text}");
        assert!(text.contains("portsyncd_capture_info{mode=\"netlink\",fallback_reason=\"no CAP_BPF\"} 1"), "{text}");
        assert!(text.contains("# TYPE portsyncd_event_processing_latency_seconds histogram\n"), "{text}");
        assert!(text.contains("portsyncd_event_processing_latency_seconds_count 1\n"), "{text}");
        assert!(!text.contains(".."), "no HELP ends in a doubled full stop: {text}");
        assert!(text.contains("portsyncd_memory_bytes "), "{text}");
        // Every sample line belongs to a family announced with HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family = ["_total", "_bucket", "_count", "_sum", "_info"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(text.contains(&format!("# HELP {family} ")), "no HELP for {line}");
            assert!(text.contains(&format!("# TYPE {family} ")), "no TYPE for {line}");
        }
    }

    #[test]
    fn a_namespace_label_is_on_every_sample() {
        let export = PrometheusExport::with_labels([("namespace".to_owned(), "asic1".to_owned())]);
        export.update(sample());
        export.latency_histogram().observe(0.000_25);
        let text = export.encode();
        assert!(text.contains("portsyncd_events_total{namespace=\"asic1\"} 7\n"), "{text}");
        assert!(text.contains("portsyncd_health_reason{namespace=\"asic1\",reason=\"ebpf_fallback\"} 1\n"), "{text}");
        assert!(text.contains("portsyncd_event_processing_latency_seconds_count{namespace=\"asic1\"} 1\n"), "{text}");
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(samples.len() > 10, "{text}");
        for line in samples {
            assert!(line.contains("namespace=\"asic1\""), "unlabelled sample: {line}");
        }
    }

    /// One of several instances: every sample says which (no ASIC namespace in a unit test).
    #[test]
    fn an_instance_label_is_on_every_sample() {
        let export = PrometheusExport::new(Some(2));
        export.update(sample());
        let text = export.encode();
        assert!(text.contains("portsyncd_events_total{instance_id=\"2\"} 7\n"), "{text}");
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(samples.len() > 10, "{text}");
        for line in samples {
            assert!(line.contains("instance_id=\"2\""), "unlabelled sample: {line}");
        }
        assert!(!PrometheusExport::new(None).encode().contains("instance_id"), "one instance: no label");
    }

    #[test]
    fn every_counter_field_has_a_doc_comment() {
        for (group, _, fields) in COUNTER_GROUPS {
            assert!(!fields.is_empty(), "{group}");
            for (field, help) in fields {
                assert!(help.trim().len() > 3, "{group}.{field} has no help");
            }
        }
    }

    #[test]
    fn resident_memory_is_read() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
