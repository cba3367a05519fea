//! Histograms of kernel-event-to-Redis-ack latency, batch sizes and batch processing time, fed by
//! the writer task; exported as an HdrHistogram interval log (V2 deflate, base64), a whole-run
//! percentile table and a JSON summary.
//!
//! Units: latency and batch processing time are recorded in nanoseconds, the unit HdrHistogram's
//! log tools assume (`HistogramLogProcessor` divides by 10^6 to print ms); batch sizes are plain
//! counts. Tables and summaries show the nanosecond histograms in microseconds.

use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, IntervalLogWriterError, Tag};
use hdrhistogram::serialization::{V2DeflateSerializeError, V2DeflateSerializer};
use hdrhistogram::{CreationError, Histogram};

/// Largest latency or processing time kept, in ns (60 s). Larger values are recorded as this and
/// counted in [`HistogramSummary::clamped`].
pub const MAX_NS: u64 = 60_000_000_000;
/// Largest batch size kept (events or ports per batch). Larger values are clamped like [`MAX_NS`].
pub const MAX_BATCH: u64 = 10_000_000;
/// Significant decimal digits of every histogram (relative error at most 1/1024).
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// Percentile steps per half distance to 100%, as HdrHistogram's own tools print by default.
const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Header comment naming the tags and their units.
const TAGS: &str = concat!(
    "Tags: latency = kernel event to Redis ack (ns), batch_events = events per batch, ",
    "batch_ports = ports written per batch, batch_processing = batch processing time (ns), ",
    "delivery = kernel event to ring drain (ns)"
);
/// Column legend of the interval log, as HdrHistogram's log writers emit it.
const LEGEND: &str = "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"";

/// Errors of the histograms and their log file.
#[derive(Debug, thiserror::Error)]
pub enum LatencyError {
    /// The histogram bounds were rejected (a programming error in the constants above).
    #[error("cannot size the {tag} histogram")]
    Histogram {
        /// Tag of the histogram.
        tag: &'static str,
        /// Why hdrhistogram refused the bounds.
        #[source]
        source: CreationError,
    },
    /// `--histogram-log` could not be created.
    #[error("cannot create histogram log {}", path.display())]
    Create {
        /// The log path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing or flushing the log failed.
    #[error("cannot write histogram log {}", path.display())]
    Write {
        /// The log path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A histogram could not be encoded.
    #[error("cannot encode the {tag} histogram for {}", path.display())]
    Encode {
        /// The log path.
        path: PathBuf,
        /// Tag of the histogram.
        tag: &'static str,
        /// The encoder's error.
        #[source]
        source: V2DeflateSerializeError,
    },
}

/// The recorded quantities; each is one tag in the interval log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Kernel event timestamp to Redis ack, ns, one value per port written.
    Latency,
    /// Events drained into one batch.
    BatchEvents,
    /// Ports written (HSET/DEL) by one batch.
    BatchPorts,
    /// Processing time of one batch, ns.
    BatchProcessing,
    /// eBPF mode only: kernel event timestamp to the daemon draining it from the ring, ns
    /// (kernel-to-userspace delivery).
    Delivery,
}

impl Kind {
    /// All kinds, in log order.
    pub const ALL: [Kind; 5] =
        [Kind::Latency, Kind::BatchEvents, Kind::BatchPorts, Kind::BatchProcessing, Kind::Delivery];

    /// Interval-log tag (no `,`, space or newline, as the format requires).
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Latency => "latency",
            Kind::BatchEvents => "batch_events",
            Kind::BatchPorts => "batch_ports",
            Kind::BatchProcessing => "batch_processing",
            Kind::Delivery => "delivery",
        }
    }

    /// Unit of tables and summaries.
    pub fn display_unit(self) -> &'static str {
        match self {
            Kind::Latency | Kind::BatchProcessing | Kind::Delivery => "us",
            Kind::BatchEvents => "events",
            Kind::BatchPorts => "ports",
        }
    }

    fn max(self) -> u64 {
        match self {
            Kind::Latency | Kind::BatchProcessing | Kind::Delivery => MAX_NS,
            Kind::BatchEvents | Kind::BatchPorts => MAX_BATCH,
        }
    }

    /// Divisor from recorded units to display units.
    fn display_ratio(self) -> f64 {
        match self {
            Kind::Latency | Kind::BatchProcessing | Kind::Delivery => 1_000.0,
            Kind::BatchEvents | Kind::BatchPorts => 1.0,
        }
    }
}

/// One quantity: the whole-run histogram plus the one of the current log interval.
struct Series {
    whole: Histogram<u64>,
    interval: Histogram<u64>,
    max: u64,
    clamped: u64,
}

impl Series {
    fn new(kind: Kind) -> Result<Self, LatencyError> {
        let make = || {
            // Lowest discernible value 1 keeps 3 digits down to the smallest values; the counts
            // array is allocated once here and, with auto-resize off, never grows.
            Histogram::new_with_bounds(1, kind.max(), SIGNIFICANT_DIGITS)
                .map_err(|source| LatencyError::Histogram { tag: kind.tag(), source })
        };
        Ok(Series { whole: make()?, interval: make()?, max: kind.max(), clamped: 0 })
    }

    #[inline]
    fn record(&mut self, value: u64) {
        let value = if value > self.max {
            self.clamped += 1;
            self.max
        } else {
            value
        };
        // In range by construction, so this indexes the preallocated array and never resizes.
        self.whole.saturating_record(value);
        self.interval.saturating_record(value);
    }

    fn summary(&self, ratio: f64) -> HistogramSummary {
        let h = &self.whole;
        let q = |q: f64| h.value_at_quantile(q) as f64 / ratio;
        HistogramSummary {
            count: h.len(),
            min: h.min() as f64 / ratio,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max() as f64 / ratio,
            clamped: self.clamped,
        }
    }
}

/// Whole-run and per-interval histograms, owned by the single writer task (no locks, no
/// allocation when recording).
pub struct LatencyRecorder {
    latency: Series,
    batch_events: Series,
    batch_ports: Series,
    batch_processing: Series,
    delivery: Series,
    clock_anomalies: u64,
    missing_timestamps: u64,
    /// The Prometheus histogram each event latency is also observed in (`--metrics-addr`).
    prometheus: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl fmt::Debug for LatencyRecorder {
    // The derived form would print every counts array (hundreds of thousands of zeros).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyRecorder")
            .field("latency", &self.latency.whole.len())
            .field("batch_events", &self.batch_events.whole.len())
            .field("batch_ports", &self.batch_ports.whole.len())
            .field("batch_processing", &self.batch_processing.whole.len())
            .field("delivery", &self.delivery.whole.len())
            .field("clock_anomalies", &self.clock_anomalies)
            .field("missing_timestamps", &self.missing_timestamps)
            .finish()
    }
}

impl LatencyRecorder {
    /// Allocates all histograms (about 1.4 MB in total).
    pub fn new() -> Result<Self, LatencyError> {
        Ok(LatencyRecorder {
            latency: Series::new(Kind::Latency)?,
            batch_events: Series::new(Kind::BatchEvents)?,
            batch_ports: Series::new(Kind::BatchPorts)?,
            batch_processing: Series::new(Kind::BatchProcessing)?,
            delivery: Series::new(Kind::Delivery)?,
            clock_anomalies: 0,
            missing_timestamps: 0,
            prometheus: None,
        })
    }

    /// Also observes every event latency in `histogram`, in seconds.
    pub fn export_latency_to(&mut self, histogram: prometheus_client::metrics::histogram::Histogram) {
        self.prometheus = Some(histogram);
    }

    /// Records one Redis write: `ack_ts_ns - event_ts_ns`, both `CLOCK_MONOTONIC` ns. An ack
    /// before the event is recorded as 0 and counted as a clock anomaly; an event timestamp of 0
    /// means "unknown" (see `clock::monotonic_ns`) and is only counted, so it cannot show up as a
    /// fake maximum of the audit log.
    #[inline]
    pub fn record_latency_ns(&mut self, event_ts_ns: u64, ack_ts_ns: u64) {
        if event_ts_ns == 0 {
            self.missing_timestamps += 1;
            return;
        }
        let latency = match ack_ts_ns.checked_sub(event_ts_ns) {
            Some(d) => d,
            None => {
                self.clock_anomalies += 1;
                0
            }
        };
        self.latency.record(latency);
        if let Some(h) = &self.prometheus {
            h.observe(latency as f64 * 1e-9);
        }
    }

    /// Records one eBPF event's delivery: kernel timestamp to the moment the daemon drained it.
    #[inline]
    pub fn record_delivery_ns(&mut self, event_ts_ns: u64, drained_ts_ns: u64) {
        if event_ts_ns != 0 {
            self.delivery.record(drained_ts_ns.saturating_sub(event_ts_ns));
        }
    }

    /// Records one flushed batch: events drained, ports written, processing time in ns.
    #[inline]
    pub fn record_batch(&mut self, events: u64, ports_written: u64, processing_ns: u64) {
        self.batch_events.record(events);
        self.batch_ports.record(ports_written);
        self.batch_processing.record(processing_ns);
    }

    /// Whole-run histogram of `kind` (recorded units: ns or counts).
    pub fn histogram(&self, kind: Kind) -> &Histogram<u64> {
        &self.series(kind).whole
    }

    /// Whole-run summary of every histogram.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            latency_us: self.latency.summary(Kind::Latency.display_ratio()),
            batch_events: self.batch_events.summary(Kind::BatchEvents.display_ratio()),
            batch_ports: self.batch_ports.summary(Kind::BatchPorts.display_ratio()),
            batch_processing_us: self.batch_processing.summary(Kind::BatchProcessing.display_ratio()),
            delivery_us: self.delivery.summary(Kind::Delivery.display_ratio()),
            clock_anomalies: self.clock_anomalies,
            missing_timestamps: self.missing_timestamps,
        }
    }

    /// Whole-run latency distribution in microseconds, in the layout of HdrHistogram's
    /// `outputPercentileDistribution`.
    pub fn percentile_table(&self) -> String {
        self.percentile_table_of(Kind::Latency)
    }

    /// Whole-run distribution of `kind` in its display unit (see [`Kind::display_unit`]).
    pub fn percentile_table_of(&self, kind: Kind) -> String {
        let h = &self.series(kind).whole;
        let ratio = kind.display_ratio();
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail, so the fmt::Results below carry no information.
        let _ = write!(out, "{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
        let mut total = 0u64;
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / ratio;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
        let sub_buckets = 2 * h.distinct_values() / (usize::from(h.buckets()) + 1);
        let _ = writeln!(out, "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]", h.mean() / ratio, h.stdev() / ratio);
        let _ = writeln!(out, "#[Max     = {:12.3}, Total count    = {:12}]", h.max() as f64 / ratio, h.len());
        let _ = writeln!(out, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), sub_buckets);
        out
    }

    fn series(&self, kind: Kind) -> &Series {
        match kind {
            Kind::Latency => &self.latency,
            Kind::BatchEvents => &self.batch_events,
            Kind::BatchPorts => &self.batch_ports,
            Kind::BatchProcessing => &self.batch_processing,
            Kind::Delivery => &self.delivery,
        }
    }

    fn reset_interval(&mut self) {
        // Every series: one left out would log its running total as each interval's counts.
        for s in [
            &mut self.latency,
            &mut self.batch_events,
            &mut self.batch_ports,
            &mut self.batch_processing,
            &mut self.delivery,
        ] {
            s.interval.reset();
        }
    }
}

/// Count, min, percentiles and max of one whole-run histogram. Values are in the unit of the
/// field holding this struct (`*_us`: microseconds; otherwise a count per batch).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HistogramSummary {
    /// Values recorded.
    pub count: u64,
    /// Smallest value (0 when empty).
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value (0 when empty).
    pub max: f64,
    /// Values above the histogram's range, recorded as its maximum.
    pub clamped: u64,
}

/// Whole-run summary for the stats file and demo output.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    /// Kernel event to Redis ack, per port written, microseconds.
    pub latency_us: HistogramSummary,
    /// Events per batch.
    pub batch_events: HistogramSummary,
    /// Ports written per batch.
    pub batch_ports: HistogramSummary,
    /// Processing time per batch, microseconds.
    pub batch_processing_us: HistogramSummary,
    /// eBPF mode: kernel event to ring drain, microseconds.
    pub delivery_us: HistogramSummary,
    /// Acks timestamped before their event (recorded as 0 latency).
    pub clock_anomalies: u64,
    /// Writes whose event had no timestamp (not recorded).
    pub missing_timestamps: u64,
}

/// HdrHistogram interval log (`--histogram-log`): one line per tag per interval, readable by
/// `HistogramLogProcessor -tag <tag>` and the hdrhistogram.github.io plotter.
pub struct IntervalLog {
    path: PathBuf,
    out: BufWriter<File>,
    serializer: V2DeflateSerializer,
    interval: Duration,
    /// Monotonic twin of the StartTime/BaseTime header, so wall-clock steps cannot reorder
    /// interval timestamps.
    started: Instant,
    /// Offset from `started` of the interval being collected.
    interval_start: Duration,
}

impl fmt::Debug for IntervalLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntervalLog")
            .field("path", &self.path)
            .field("interval", &self.interval)
            .field("interval_start", &self.interval_start)
            .finish_non_exhaustive()
    }
}

impl IntervalLog {
    /// Creates (truncates) `path` and writes the header. `interval` is only recorded in the
    /// header; the caller calls [`IntervalLog::write_interval`] on that period.
    pub fn create(path: &Path, interval: Duration) -> Result<Self, LatencyError> {
        let file = File::create(path).map_err(|source| LatencyError::Create { path: path.to_path_buf(), source })?;
        let mut log = IntervalLog {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            serializer: V2DeflateSerializer::new(),
            interval,
            started: Instant::now(),
            interval_start: Duration::ZERO,
        };
        let now = SystemTime::now();
        let mut header = IntervalLogWriterBuilder::new();
        header
            .add_comment(&format!("[Logged with portsyncd {}]", env!("CARGO_PKG_VERSION")))
            .add_comment("[Histogram log format version 1.3]")
            .add_comment(&format!("[Interval {:.3} s. {TAGS}]", interval.as_secs_f64()))
            .with_start_time(now)
            .with_base_time(now);
        let written = header
            .begin_log_with(&mut log.out, &mut log.serializer)
            .map(drop)
            .and_then(|()| writeln!(log.out, "{LEGEND}"))
            .and_then(|()| log.out.flush());
        written.map_err(|source| LatencyError::Create { path: path.to_path_buf(), source })?;
        Ok(log)
    }

    /// Path of the log.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The interval given to [`IntervalLog::create`].
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Writes one interval per histogram (latency, batch_events, batch_ports, batch_processing)
    /// covering everything recorded since the previous call, then resets the interval histograms
    /// in `rec` and flushes. The interval is consumed even when writing fails, so a retry never
    /// logs the same values twice (the whole-run histograms still hold them).
    pub fn write_interval(&mut self, rec: &mut LatencyRecorder) -> Result<(), LatencyError> {
        let end = self.started.elapsed();
        let length = end.saturating_sub(self.interval_start);
        let result = self.write_histograms(rec, self.interval_start, length);
        self.interval_start = end;
        rec.reset_interval();
        result?;
        self.flush()
    }

    fn write_histograms(
        &mut self,
        rec: &LatencyRecorder,
        start: Duration,
        length: Duration,
    ) -> Result<(), LatencyError> {
        // A builder without headers writes nothing; the writer only borrows the file and the
        // serializer (with its reusable buffers) for these lines.
        let mut w = IntervalLogWriterBuilder::new()
            .begin_log_with(&mut self.out, &mut self.serializer)
            .map_err(|source| LatencyError::Write { path: self.path.clone(), source })?;
        for kind in Kind::ALL {
            w.write_histogram(&rec.series(kind).interval, start, length, Tag::new(kind.tag())).map_err(
                |e| match e {
                    IntervalLogWriterError::IoError(source) => LatencyError::Write { path: self.path.clone(), source },
                    IntervalLogWriterError::SerializeError(source) => {
                        LatencyError::Encode { path: self.path.clone(), tag: kind.tag(), source }
                    }
                },
            )?;
        }
        Ok(())
    }

    /// Appends the whole-run percentile table of every histogram as `#` comment lines (the log
    /// stays parseable), then flushes.
    pub fn write_percentile_table(&mut self, rec: &LatencyRecorder) -> Result<(), LatencyError> {
        let at = self.started.elapsed().as_secs_f64();
        let mut text = String::new();
        for kind in Kind::ALL {
            let _ = writeln!(
                text,
                "#\n#Whole-run percentile distribution of {} ({}) at {at:.3} s:",
                kind.tag(),
                kind.display_unit()
            );
            for line in rec.percentile_table_of(kind).lines() {
                // Footer lines already start with '#'; everything else (blank lines included,
                // which the interval-log parsers reject) gets one.
                if !line.starts_with('#') {
                    text.push('#');
                }
                text.push_str(line);
                text.push('\n');
            }
        }
        self.out
            .write_all(text.as_bytes())
            .map_err(|source| LatencyError::Write { path: self.path.clone(), source })?;
        self.flush()
    }

    /// Flushes buffered lines to the file.
    pub fn flush(&mut self) -> Result<(), LatencyError> {
        self.out.flush().map_err(|source| LatencyError::Write { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    /// First 4 bytes of a V2 deflate-compressed histogram, as written by every HdrHistogram
    /// implementation (cookie base 0x1c849304 with word-size bits 0x10).
    const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9314;

    fn rec() -> LatencyRecorder {
        LatencyRecorder::new().unwrap()
    }

    /// Standard base64 (RFC 4648 with padding), enough to read log lines back.
    fn base64_decode(s: &str) -> Vec<u8> {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0u32);
        for c in s.bytes().filter(|&c| c != b'=') {
            let v = ALPHABET.iter().position(|&a| a == c).unwrap_or_else(|| panic!("not base64: {c}")) as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }

    /// (tag, start, length, max, histogram) of every interval line.
    fn intervals(log: &[u8]) -> Vec<(String, Duration, Duration, f64, Histogram<u64>)> {
        let mut d = Deserializer::new();
        IntervalLogIterator::new(log)
            .filter_map(|e| match e.expect("log parses") {
                LogEntry::Interval(i) => Some(i),
                _ => None,
            })
            .map(|i| {
                let h: Histogram<u64> = d.deserialize(&mut &base64_decode(i.encoded_histogram())[..]).unwrap();
                (i.tag().expect("tagged").as_str().to_string(), i.start_timestamp(), i.duration(), i.max(), h)
            })
            .collect()
    }

    fn within_precision(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected / 1000.0
    }

    #[test]
    fn percentiles_of_known_inputs() {
        let mut r = rec();
        let base = 5_000_000_000u64;
        for us in 1..=10_000u64 {
            r.record_latency_ns(base, base + us * 1_000);
        }
        let s = r.summary().latency_us;
        assert_eq!(s.count, 10_000);
        for (got, want) in
            [(s.min, 1.0), (s.p50, 5_000.0), (s.p90, 9_000.0), (s.p99, 9_900.0), (s.p999, 9_990.0), (s.max, 10_000.0)]
        {
            assert!(within_precision(got, want), "{got} vs {want}: {s:?}");
        }
        assert_eq!(s.clamped, 0);
        assert_eq!(r.summary().batch_events.count, 0);
    }

    #[test]
    fn batch_histograms_keep_their_units() {
        let mut r = rec();
        r.record_batch(128, 64, 250_000);
        r.record_batch(2, 1, 50_000);
        let s = r.summary();
        assert_eq!((s.batch_events.count, s.batch_events.min, s.batch_events.max), (2, 2.0, 128.0));
        assert_eq!((s.batch_ports.min, s.batch_ports.max), (1.0, 64.0));
        assert!(within_precision(s.batch_processing_us.max, 250.0), "{s:?}");
        assert!(within_precision(s.batch_processing_us.min, 50.0), "{s:?}");
        assert_eq!(s.latency_us.count, 0);
    }

    #[test]
    fn huge_and_negative_values_saturate_and_are_counted() {
        let mut r = rec();
        r.record_latency_ns(1, u64::MAX);
        r.record_latency_ns(2_000, 1_000); // ack before event
        r.record_latency_ns(0, 1_000); // no event timestamp
        r.record_batch(u64::MAX, u64::MAX, u64::MAX);
        let s = r.summary();
        assert_eq!(s.latency_us.count, 2);
        assert_eq!(s.latency_us.clamped, 1);
        assert_eq!(s.clock_anomalies, 1);
        assert_eq!(s.missing_timestamps, 1);
        assert_eq!(s.latency_us.min, 0.0);
        assert!(within_precision(s.latency_us.max, MAX_NS as f64 / 1_000.0), "{s:?}");
        assert!(within_precision(s.batch_events.max, MAX_BATCH as f64), "{s:?}");
        assert!(within_precision(s.batch_processing_us.max, MAX_NS as f64 / 1_000.0), "{s:?}");
        assert_eq!((s.batch_events.clamped, s.batch_ports.clamped, s.batch_processing_us.clamped), (1, 1, 1));
    }

    #[test]
    fn recording_never_resizes() {
        let mut r = rec();
        let sizes = |r: &LatencyRecorder| Kind::ALL.map(|k| r.histogram(k).distinct_values());
        let before = sizes(&r);
        assert!(Kind::ALL.iter().all(|&k| !r.histogram(k).is_auto_resize()));
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..1_000_000u64 {
            // xorshift: spread values over the whole u64 range, most far above the maximum.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            r.record_latency_ns(i + 1, x >> (i % 64));
            r.record_batch(x >> (i % 64), x >> 40, x);
        }
        assert_eq!(sizes(&r), before);
        assert_eq!(r.histogram(Kind::Latency).len(), 1_000_000, "anomalies are recorded as 0, never dropped");
        assert!(r.summary().latency_us.clamped > 100_000, "{:?}", r.summary());
    }

    #[test]
    fn interval_log_round_trips_two_intervals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hist.hlog");
        let mut r = rec();
        let mut log = IntervalLog::create(&path, Duration::from_secs(10)).unwrap();
        for us in [100u64, 200, 300] {
            r.record_latency_ns(1_000, 1_000 + us * 1_000);
        }
        r.record_batch(3, 2, 700_000);
        r.record_delivery_ns(1_000, 9_000);
        log.write_interval(&mut r).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        r.record_latency_ns(1_000, 1_000 + 50_000);
        log.write_interval(&mut r).unwrap();
        drop(log);

        let text = std::fs::read(&path).unwrap();
        let entries: Vec<_> = IntervalLogIterator::new(&text).map(|e| e.unwrap()).collect();
        assert!(matches!(entries[0], LogEntry::StartTime(_)), "{entries:?}");
        assert!(matches!(entries[1], LogEntry::BaseTime(_)), "{entries:?}");
        let s = String::from_utf8(text.clone()).unwrap();
        assert!(s.lines().any(|l| l == LEGEND), "{s}");

        let iv = intervals(&text);
        let tags: Vec<&str> = iv.iter().map(|i| i.0.as_str()).collect();
        assert_eq!(tags, Kind::ALL.map(Kind::tag).repeat(2));
        let (first, second) = iv.split_at(Kind::ALL.len());
        assert_eq!((first[0].4.len(), second[0].4.len()), (3, 1), "second interval holds only its own values");
        assert!(within_precision(first[0].3, 300_000.0) && within_precision(first[0].4.max() as f64, 300_000.0));
        assert!(within_precision(second[0].3, 50_000.0), "{}", second[0].3);
        assert_eq!((first[1].4.len(), first[1].4.max(), first[1].3), (1, 3, 3.0));
        assert_eq!((first[2].4.max(), first[2].3), (2, 2.0));
        assert!(within_precision(first[3].4.max() as f64, 700_000.0));
        assert_eq!((second[1].4.len(), second[3].4.len()), (0, 0), "empty intervals are still logged");
        let delivery = Kind::ALL.iter().position(|k| *k == Kind::Delivery).unwrap();
        assert_eq!(
            (first[delivery].4.len(), second[delivery].4.len()),
            (1, 0),
            "every series starts each interval empty"
        );
        // Intervals tile the time line: the second starts where the first ended.
        let first_end = first[0].1 + first[0].2;
        assert!(second[0].1.abs_diff(first_end) <= Duration::from_millis(2), "{first_end:?} vs {:?}", second[0].1);
        assert!(second[0].2 >= Duration::from_millis(19), "{:?}", second[0].2);
        // The whole run still holds both intervals.
        assert_eq!(r.histogram(Kind::Latency).len(), 4);
    }

    #[test]
    fn log_lines_carry_the_v2_compressed_cookie() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookie.hlog");
        let mut r = rec();
        let mut log = IntervalLog::create(&path, Duration::from_secs(1)).unwrap();
        r.record_latency_ns(1, 12_345);
        log.write_interval(&mut r).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text.lines().find(|l| l.starts_with("Tag=latency,")).expect("latency line");
        let bytes = base64_decode(line.rsplit(',').next().unwrap());
        let cookie = u32::from_be_bytes(bytes[0..4].try_into().unwrap());
        assert_eq!(cookie & !0xf0, 0x1c84_9304, "cookie {cookie:#x}");
        assert_eq!(cookie, V2_COMPRESSED_COOKIE);
        let payload = u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize;
        assert_eq!(payload, bytes.len() - 8, "length word covers the zlib payload");
        assert_eq!(bytes[8] & 0x0f, 8, "zlib header, deflate method");
    }

    #[test]
    fn percentile_table_has_header_rows_and_footer() {
        let mut r = rec();
        for i in 1..=1_000u64 {
            r.record_latency_ns(10, 10 + i * 1_000);
        }
        let t = r.percentile_table();
        let lines: Vec<&str> = t.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(header, ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]);
        assert_eq!(lines[1], "");
        let rows: Vec<Vec<&str>> =
            lines[2..].iter().take_while(|l| !l.starts_with('#')).map(|l| l.split_whitespace().collect()).collect();
        assert!(rows.len() > 20, "{t}");
        assert_eq!(rows[0][1], "0.000000000000");
        let last = rows.last().unwrap();
        assert_eq!((last[1], last[2], last.len()), ("1.000000000000", "1000", 3), "{t}");
        assert!(within_precision(last[0].parse().unwrap(), 1_000.0), "{t}");
        let counts: Vec<u64> = rows.iter().map(|r| r[2].parse().unwrap()).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{t}");
        let footer = &lines[lines.len() - 3..];
        assert!(footer[0].starts_with("#[Mean    = ") && footer[0].contains(", StdDeviation   = "), "{t}");
        assert!(
            within_precision(
                footer[0]["#[Mean    = ".len()..].split(',').next().unwrap().trim().parse().unwrap(),
                500.5
            ),
            "{t}"
        );
        assert!(
            footer[1].starts_with("#[Max     = ") && footer[1].ends_with(", Total count    =         1000]"),
            "{t}"
        );
        assert!(footer[2].starts_with("#[Buckets = ") && footer[2].ends_with("SubBuckets     =         2048]"), "{t}");
    }

    #[test]
    fn percentile_table_in_log_is_comments_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.hlog");
        let mut r = rec();
        let mut log = IntervalLog::create(&path, Duration::from_secs(1)).unwrap();
        r.record_latency_ns(1, 2_000_000);
        r.record_batch(1, 1, 1_000);
        log.write_interval(&mut r).unwrap();
        log.write_percentile_table(&r).unwrap();
        r.record_latency_ns(1, 3_000_000);
        log.write_interval(&mut r).unwrap();
        let text = std::fs::read(&path).unwrap();
        let s = std::str::from_utf8(&text).unwrap();
        let tables: Vec<&str> = s.lines().filter(|l| l.contains("Total count")).collect();
        assert_eq!(tables.len(), Kind::ALL.len(), "one table per histogram\n{s}");
        assert!(tables[0].starts_with("#[Max") && tables[0].ends_with("Total count    =            1]"), "{s}");
        assert!(s.lines().any(|l| l.starts_with("#       Value")), "{s}");
        assert!(s.lines().all(|l| l.starts_with('#') || l.starts_with("Tag=") || l == LEGEND), "{s}");
        // Still a valid interval log with both intervals.
        assert_eq!(intervals(&text).len(), 2 * Kind::ALL.len());
    }

    #[test]
    fn create_fails_with_the_path_in_the_error() {
        let e = IntervalLog::create(Path::new("/nonexistent-dir/x.hlog"), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, LatencyError::Create { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent-dir/x.hlog"), "{e}");
    }

    #[test]
    fn delivery_is_recorded_in_microseconds_and_unknown_timestamps_skipped() {
        let mut r = rec();
        r.record_delivery_ns(1_000, 41_000);
        r.record_delivery_ns(0, 41_000);
        r.record_delivery_ns(50_000, 41_000);
        let d = r.summary().delivery_us;
        assert_eq!(d.count, 2, "the zero timestamp is skipped, a negative delay counts as 0");
        assert!(within_precision(d.max, 40.0), "{d:?}");
        assert_eq!(d.min, 0.0);
    }
}
