//! What the daemon exports: the JSON stats snapshot and Prometheus text, the warm-restart state
//! file, the histogram interval log and the percentile table.

use super::Daemon;
use crate::metrics::write_json_atomic;
use crate::warm_restart::records_from_state;

impl Daemon {
    /// Starts a save on the blocking pool, unless the state is what the last save wrote (see
    /// [`StateSaver`](crate::warm_restart::saver::StateSaver)).
    pub(super) fn save_state(&mut self, clean: bool) {
        let records = records_from_state(&self.pipeline.reconciler.written(), &self.pipeline.ifindexes);
        self.store.save_in_background(records, clean, &mut self.warm_metrics);
    }

    /// A save that finished since the last tick: its counts go into the exported stats.
    pub(super) fn reap_state_save(&mut self) {
        if self.store.reap(&mut self.warm_metrics) {
            self.mark_stats();
        }
    }

    /// At shutdown: written even if unchanged (it carries `clean`), and on disk on return.
    pub(super) async fn save_state_final(&mut self, clean: bool) {
        let records = records_from_state(&self.pipeline.reconciler.written(), &self.pipeline.ifindexes);
        self.store.save_and_wait(records, clean, &mut self.warm_metrics).await;
    }

    pub(super) fn write_interval(&mut self) {
        if let Some(log) = self.hist_log.as_mut() {
            if let Err(e) = log.write_interval(&mut self.latency) {
                tracing::warn!(error = %e, "cannot write the histogram interval log");
            }
        }
    }

    /// SIGUSR1: the whole-run percentile table, to the log and the histogram log.
    pub(super) fn report_percentiles(&mut self) {
        tracing::info!("event-to-Redis latency distribution:\n{}", self.latency.percentile_table());
        self.export_percentiles();
    }

    pub(super) fn export_percentiles(&mut self) {
        if let Some(log) = self.hist_log.as_mut() {
            if let Err(e) = log.write_percentile_table(&self.latency).and_then(|()| log.flush()) {
                tracing::warn!(error = %e, "cannot write the percentile table");
            }
        }
    }

    pub(super) fn snapshot(&self) -> serde_json::Value {
        let ebpf = self.source.ebpf().map(|c| {
            let counters = c.counters().unwrap_or_default();
            serde_json::json!({
                "events": counters.events,
                "ring_full": counters.ring_full,
                "filtered": counters.filtered,
                "parse_errors": counters.parse_errors,
                "not_link": counters.not_link,
                "other_instance": counters.other_instance,
                "load_us": c.load_duration().as_micros() as u64,
                "verify_us": c.verify_duration().as_micros() as u64,
                "kernel_btf_parsed": c.kernel_btf().parsed(),
            })
        });
        let mut counters = self.counters;
        counters.script_reloads = self.writer.script_reloads();
        let log = crate::logging::control().map(|c| c.current());
        serde_json::json!({
            "log_level": log.map(|l| l.0),
            "log_output": log.map(|l| l.1),
            "log_dropped": crate::logging::control().map(|c| c.dropped()),
            "health": {
                "status": self.health_now.status,
                "code": self.health_now.status as u8,
                "reasons": self.health_now.reasons,
            },
            "memory_bytes": crate::metrics::prometheus::resident_bytes(),
            "capture_mode": self.capture.mode,
            "capture_fallback_reason": self.capture.fallback_reason,
            "warm_start": self.startup.warm,
            "system_warm_start": self.startup.system_warm,
            "restore_count": self.startup.restore_count,
            "initial_sync_done": self.initial_sync_done,
            "port_init_done": self.pipeline.reconciler.port_init_done(),
            "unseen_ports": self.pipeline.reconciler.unseen_ports().len(),
            "eoiu": self.eoiu,
            "redis_up": self.redis.down_since.is_none(),
            "pending_ports": self.pipeline.coalescer.len(),
            "refused_ports": self.pipeline.retry.len(),
            "counters": counters,
            "source": self.source.counters,
            "coalesce": self.pipeline.coalescer.stats,
            "ebpf": ebpf,
            "warm_restart": self.warm_metrics,
            "latency": self.latency.summary(),
            "instance": self.instance_snapshot(),
        })
    }

    /// COUNTERS_DB `PORTSYNCD_STATS:<entity>`: the entities that changed. Called at most once
    /// a second, with the snapshot [`Self::write_stats`] made in the same tick if it made one.
    /// A failure is logged and retried at the next call; it never counts as Redis being down
    /// for port state.
    pub(super) async fn export_counters_db(&mut self, snap: Option<serde_json::Value>) {
        if self.counters_db.is_none() {
            return;
        }
        let snap = snap.unwrap_or_else(|| self.snapshot());
        if let Some(exp) = self.counters_db.as_mut() {
            match exp.export(&snap).await {
                Ok(n) => {
                    self.counters_db_dirty = false;
                    tracing::trace!(entities = n, "COUNTERS_DB stats written");
                }
                Err(e) => tracing::debug!(error = %e, "cannot write COUNTERS_DB stats; next second"),
            }
        }
    }

    /// The stats file and the Prometheus snapshot; returns the snapshot, if it made one.
    pub(super) fn write_stats(&mut self) -> Option<serde_json::Value> {
        self.stats_dirty = false;
        if self.cfg.stats_file.is_none() && self.prometheus.is_none() {
            return None;
        }
        let snap = self.snapshot();
        if let Some(export) = &self.prometheus {
            export.update(snap.clone());
        }
        if let Some(path) = &self.cfg.stats_file {
            if let Err(e) = write_json_atomic(path, &snap) {
                let source = std::error::Error::source(&e);
                tracing::warn!(path = %path.display(), error = %e, source = ?source, "cannot write stats file");
            }
        }
        Some(snap)
    }
}
