//! Warm-restart counters: fed by the start-up sequence and the port-state file store, read out
//! as a one-line log summary and as a serde document for the metrics exporter.

use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

crate::described! {
    /// Counts of what the warm-restart machinery did since the process started.
    ///
    /// Every field counts events that happened; there is deliberately no ratio: a cold start is
    /// often the correct outcome (warm restart not enabled), so "warm / (warm + cold)" measures
    /// configuration, not success. Failures are counted where they occur (`corrupt_files_found`,
    /// `state_save_failures`, `eoiu_timed_out`).
    ///
    /// `cold_starts`, `warm_starts`, the EOIU counters and `initial_sync` are recorded by the
    /// start-up sequence (warm vs cold is SONiC's `WARM_RESTART_ENABLE_TABLE` decision, not whether a
    /// state file exists); the file counters are recorded by
    /// [`StateStore`](super::state_file::StateStore).
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
    pub struct WarmRestartMetrics {
        /// Starts that followed the cold-start path.
        pub cold_starts: u64,
        /// Starts that followed the warm-start path.
        pub warm_starts: u64,
        /// Initial syncs that ended at the dump's end-of-initial-update (NLMSG_DONE).
        pub eoiu_seen: u64,
        /// Initial syncs that ended because the EOIU timeout expired first.
        pub eoiu_timed_out: u64,
        /// Loads whose state came from a backup because the current file was unusable.
        pub recoveries_from_backup: u64,
        /// State files found unreadable or malformed and set aside.
        pub corrupt_files_found: u64,
        /// Backups made when rotating the current file before a save.
        pub backups_created: u64,
        /// Backups removed because they exceeded the retention count.
        pub backups_cleaned: u64,
        /// State files removed because they were older than the maximum age (or dated in the future).
        pub stale_files_removed: u64,
        /// Saves that reached the disk (fsynced and renamed into place).
        pub state_saves: u64,
        /// Saves that failed; the previous file is left as it was.
        pub state_save_failures: u64,
        /// Time from start of initial sync to its end (EOIU or timeout).
        pub initial_sync: DurationStats,
    }
}

impl WarmRestartMetrics {
    /// A start took the cold path.
    pub fn record_cold_start(&mut self) {
        bump(&mut self.cold_starts, 1);
    }

    /// A start took the warm path.
    pub fn record_warm_start(&mut self) {
        bump(&mut self.warm_starts, 1);
    }

    /// The initial dump ended with its EOIU.
    pub fn record_eoiu_seen(&mut self) {
        bump(&mut self.eoiu_seen, 1);
    }

    /// The initial sync was ended by the EOIU timeout.
    pub fn record_eoiu_timeout(&mut self) {
        bump(&mut self.eoiu_timed_out, 1);
    }

    /// Initial sync took `elapsed`, however it ended.
    pub fn record_initial_sync(&mut self, elapsed: Duration) {
        self.initial_sync.record(elapsed);
    }

    /// A load fell back to a backup.
    pub fn record_recovery_from_backup(&mut self) {
        bump(&mut self.recoveries_from_backup, 1);
    }

    /// A state file was found unusable.
    pub fn record_corrupt_file(&mut self) {
        bump(&mut self.corrupt_files_found, 1);
    }

    /// A backup was made.
    pub fn record_backup_created(&mut self) {
        bump(&mut self.backups_created, 1);
    }

    /// `n` backups were removed by retention.
    pub fn record_backups_cleaned(&mut self, n: u64) {
        bump(&mut self.backups_cleaned, n);
    }

    /// A stale state file was removed.
    pub fn record_stale_removed(&mut self) {
        bump(&mut self.stale_files_removed, 1);
    }

    /// A save completed.
    pub fn record_save(&mut self) {
        bump(&mut self.state_saves, 1);
    }

    /// A save failed.
    pub fn record_save_failure(&mut self) {
        bump(&mut self.state_save_failures, 1);
    }

    /// Adds every count of `other` (the counts of a save made on another thread, see
    /// [`StateSaver`](super::saver::StateSaver)); durations are not counts and stay as they are.
    pub fn add_counts(&mut self, other: &WarmRestartMetrics) {
        // Destructured, so that a new counter cannot be forgotten here.
        let WarmRestartMetrics {
            cold_starts,
            warm_starts,
            eoiu_seen,
            eoiu_timed_out,
            recoveries_from_backup,
            corrupt_files_found,
            backups_created,
            backups_cleaned,
            stale_files_removed,
            state_saves,
            state_save_failures,
            initial_sync: _,
        } = other;
        bump(&mut self.cold_starts, *cold_starts);
        bump(&mut self.warm_starts, *warm_starts);
        bump(&mut self.eoiu_seen, *eoiu_seen);
        bump(&mut self.eoiu_timed_out, *eoiu_timed_out);
        bump(&mut self.recoveries_from_backup, *recoveries_from_backup);
        bump(&mut self.corrupt_files_found, *corrupt_files_found);
        bump(&mut self.backups_created, *backups_created);
        bump(&mut self.backups_cleaned, *backups_cleaned);
        bump(&mut self.stale_files_removed, *stale_files_removed);
        bump(&mut self.state_saves, *state_saves);
        bump(&mut self.state_save_failures, *state_save_failures);
    }

    /// One line for the log, e.g. once per start after initial sync.
    pub fn summary(&self) -> String {
        format!(
            "warm restart: cold_starts={} warm_starts={} eoiu_seen={} eoiu_timed_out={} \
             initial_sync_ms(min/avg/max)={} samples={} recoveries_from_backup={} \
             corrupt_files_found={} backups_created={} backups_cleaned={} \
             stale_files_removed={} state_saves={} state_save_failures={}",
            self.cold_starts,
            self.warm_starts,
            self.eoiu_seen,
            self.eoiu_timed_out,
            self.initial_sync.min_avg_max_ms(),
            self.initial_sync.samples(),
            self.recoveries_from_backup,
            self.corrupt_files_found,
            self.backups_created,
            self.backups_cleaned,
            self.stale_files_removed,
            self.state_saves,
            self.state_save_failures,
        )
    }
}

fn bump(counter: &mut u64, n: u64) {
    *counter = counter.saturating_add(n);
}

/// Min/avg/max of a set of durations, kept in microseconds so sub-millisecond syncs on small
/// systems still average correctly; reported in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurationStats {
    samples: u64,
    min_us: u64,
    max_us: u64,
    total_us: u64,
}

impl DurationStats {
    /// Adds one sample.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if self.samples == 0 {
            self.min_us = us;
            self.max_us = us;
        } else {
            self.min_us = self.min_us.min(us);
            self.max_us = self.max_us.max(us);
        }
        self.samples = self.samples.saturating_add(1);
        self.total_us = self.total_us.saturating_add(us);
    }

    /// Number of samples recorded.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Shortest sample, `None` before the first.
    pub fn min(&self) -> Option<Duration> {
        (self.samples > 0).then(|| Duration::from_micros(self.min_us))
    }

    /// Mean of the samples, `None` before the first.
    pub fn avg(&self) -> Option<Duration> {
        (self.samples > 0).then(|| Duration::from_micros(self.total_us / self.samples))
    }

    /// Longest sample, `None` before the first.
    pub fn max(&self) -> Option<Duration> {
        (self.samples > 0).then(|| Duration::from_micros(self.max_us))
    }

    fn min_avg_max_ms(&self) -> String {
        match (self.min(), self.avg(), self.max()) {
            (Some(min), Some(avg), Some(max)) => {
                format!("{:.3}/{:.3}/{:.3}", ms(min), ms(avg), ms(max))
            }
            _ => "-/-/-".to_owned(),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Exported as `{samples, min_ms, avg_ms, max_ms}` (milliseconds, `null` before the first
/// sample) rather than the raw accumulators, which mean nothing to a reader.
impl Serialize for DurationStats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("DurationStats", 4)?;
        s.serialize_field("samples", &self.samples)?;
        s.serialize_field("min_ms", &self.min().map(ms))?;
        s.serialize_field("avg_ms", &self.avg().map(ms))?;
        s.serialize_field("max_ms", &self.max().map(ms))?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_sync_min_avg_max() {
        let mut m = WarmRestartMetrics::default();
        assert_eq!(m.initial_sync.min(), None);
        assert_eq!(m.initial_sync.avg(), None);
        assert_eq!(m.initial_sync.max(), None);

        m.record_initial_sync(Duration::from_millis(30));
        m.record_initial_sync(Duration::from_millis(10));
        m.record_initial_sync(Duration::from_micros(20_500));

        assert_eq!(m.initial_sync.samples(), 3);
        assert_eq!(m.initial_sync.min(), Some(Duration::from_millis(10)));
        assert_eq!(m.initial_sync.max(), Some(Duration::from_millis(30)));
        // (30 + 10 + 20.5) / 3 = 20.1666.. ms
        assert_eq!(m.initial_sync.avg(), Some(Duration::from_micros(20_166)));
    }

    #[test]
    fn sub_millisecond_syncs_keep_their_precision() {
        let mut s = DurationStats::default();
        s.record(Duration::from_micros(400));
        s.record(Duration::from_micros(700));
        assert_eq!(s.avg(), Some(Duration::from_micros(550)));
    }

    #[test]
    fn counters_saturate_instead_of_wrapping() {
        let mut m = WarmRestartMetrics { backups_cleaned: u64::MAX - 1, ..Default::default() };
        m.record_backups_cleaned(5);
        assert_eq!(m.backups_cleaned, u64::MAX);
    }

    #[test]
    fn summary_is_one_line_with_every_counter_and_no_ratio() {
        let mut m = WarmRestartMetrics::default();
        assert!(m.summary().contains("initial_sync_ms(min/avg/max)=-/-/-"), "{}", m.summary());
        m.record_warm_start();
        m.record_corrupt_file();
        m.record_initial_sync(Duration::from_millis(5));
        m.record_initial_sync(Duration::from_millis(15));
        let line = m.summary();
        assert!(!line.contains('\n'), "{line}");
        for part in [
            "cold_starts=0",
            "warm_starts=1",
            "corrupt_files_found=1",
            "initial_sync_ms(min/avg/max)=5.000/10.000/15.000",
            "samples=2",
        ] {
            assert!(line.contains(part), "{part} missing from {line}");
        }
        assert!(!line.contains("rate"), "{line}");
        assert!(!line.contains('%'), "{line}");
    }

    #[test]
    fn serializes_durations_in_milliseconds() {
        let mut m = WarmRestartMetrics::default();
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["initial_sync"]["samples"], 0);
        assert!(v["initial_sync"]["avg_ms"].is_null());

        m.record_initial_sync(Duration::from_millis(2));
        m.record_initial_sync(Duration::from_millis(4));
        m.record_eoiu_timeout();
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["eoiu_timed_out"], 1);
        assert_eq!(v["initial_sync"]["samples"], 2);
        assert_eq!(v["initial_sync"]["min_ms"], 2.0);
        assert_eq!(v["initial_sync"]["avg_ms"], 3.0);
        assert_eq!(v["initial_sync"]["max_ms"], 4.0);
    }
}
