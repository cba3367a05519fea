//! Dumps and what they may change: the initial sync (EOIU, old interfaces, warm baseline), the
//! resync after a loss, and the periodic self-healing reconciliation. The one rule for deletes
//! lives in [`deletions`]: a row goes only on RTM_DELLINK, or when its port is absent from a
//! complete, consistent dump and its row is known to be of this kernel boot.

use std::time::{Duration, Instant};

use portsyncd_common::{origin, PortEvent, RTM_DELLINK};

use super::{Daemon, Eoiu};
use crate::clock::monotonic_ns;
use crate::config::Config;
use crate::error::Error;
use crate::linksync::{classify, PortName, PortSet, Verdict};
use crate::netlink::admin::set_down;
use crate::netlink::dump::{dump_links, Dump, DumpEnd, DumpOptions};
use crate::reconcile::Vanished;
use crate::warm_restart::state_file::LoadedState;
use crate::warm_restart::{baseline_from_records, baseline_from_state_db};

/// Deadline for the admin-down acknowledgements at a cold start.
const ADMIN_DOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Which dump a decision is about (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DumpKind {
    Initial,
    Resync,
    SelfHeal,
}

/// What to do with ports absent from a dump: `complete` is [`Dump::is_complete`]. An
/// incomplete dump proves nothing, so every absent port is kept.
pub(super) fn deletions(vanished: Vanished, complete: bool) -> Vanished {
    if complete {
        return vanished;
    }
    let mut keep = vanished.keep;
    keep.extend(vanished.delete);
    keep.sort();
    Vanished { delete: Vec::new(), keep }
}

/// The ports of a warm baseline that may be deleted when absent from a dump: those listed by a
/// state file saved during this boot, unless the system itself warm-rebooted (then every row
/// was restored from before the reboot, whatever a file says).
pub(super) fn provable_baseline(loaded: Option<&LoadedState>, system_warm: bool) -> PortSet {
    match loaded {
        Some(l) if l.same_boot && !system_warm => l.ports.keys().filter_map(|n| PortName::new(n.as_bytes())).collect(),
        _ => PortSet::default(),
    }
}

/// The dump settings of `cfg`; `initial`: the dump whose end is the EOIU.
pub(super) fn dump_options(cfg: &Config, initial: bool) -> DumpOptions {
    DumpOptions {
        timeout: cfg.eoiu_timeout,
        max_retries: cfg.dump_retries,
        hold_done: initial && cfg.test_hold_eoiu,
        force_intr: cfg.test_dump_intr,
    }
}

impl Daemon {
    async fn dump(&mut self, initial: bool) -> Result<Dump, Error> {
        // Whatever is queued is older than the snapshot about to be taken.
        self.source.discard_queued()?;
        let dump = dump_links(dump_options(&self.cfg, initial)).await?;
        Ok(self.count_dump(dump))
    }

    fn count_dump(&mut self, dump: Dump) -> Dump {
        self.counters.dumps += 1;
        self.counters.dump_intr_retries += u64::from(dump.intr_retries);
        if !dump.is_complete() {
            self.counters.incomplete_dumps += 1;
        }
        if dump.inconsistent {
            tracing::warn!(
                retries = dump.intr_retries,
                "link dump still interrupted after retries; using it for updates only, never for deletes"
            );
        }
        dump
    }

    pub(super) async fn initial_sync(&mut self) -> Result<(), Error> {
        let started = Instant::now();
        let loaded = if self.startup.warm {
            self.warm_metrics.record_warm_start();
            self.store.load(&mut self.warm_metrics)
        } else {
            self.warm_metrics.record_cold_start();
            self.store.remove_stale(&mut self.warm_metrics);
            None
        };

        let dump = match self.early_dump.take() {
            Some(running) => {
                let dump = running.finish().await?;
                self.count_dump(dump)
            }
            None => self.dump(true).await?,
        };
        match dump.end {
            DumpEnd::Done => {
                self.eoiu = Eoiu::Seen;
                self.warm_metrics.record_eoiu_seen();
            }
            DumpEnd::Timeout => {
                self.eoiu = Eoiu::Timeout;
                self.counters.eoiu_timeouts += 1;
                self.warm_metrics.record_eoiu_timeout();
                tracing::warn!(
                    timeout_s = self.cfg.eoiu_timeout.as_secs(),
                    links = dump.links.len(),
                    "no end of initial dump (NLMSG_DONE) within the EOIU timeout; completing initial sync with what arrived"
                );
            }
        }
        tracing::info!(links = dump.links.len(), ms = dump.elapsed.as_millis() as u64, eoiu = ?self.eoiu, "initial link dump done");

        if !self.startup.warm && self.startup.switch_type != "dpu" {
            self.bring_down_old_interfaces(&dump.links).await?;
        }

        let dumped = self.push_dump(&dump.links);
        if self.startup.warm {
            self.set_warm_baseline(loaded, &dumped).await;
        }
        self.apply_vanished(&dump, &dumped, DumpKind::Initial);
        self.flush().await;

        self.warm_metrics.record_initial_sync(started.elapsed());
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            port_init_done = self.pipeline.reconciler.port_init_done(),
            unseen = self.pipeline.reconciler.unseen_ports().len(),
            "initial sync complete; {}",
            self.warm_metrics.summary()
        );
        Ok(())
    }

    /// C++ old-interface handling, in one netlink batch: every `Ethernet*` netdev that exists
    /// at a cold start is set admin-down and ignored from then on.
    async fn bring_down_old_interfaces(&mut self, links: &[PortEvent]) -> Result<(), Error> {
        let old: Vec<(u32, String)> = links
            .iter()
            .filter(|e| e.name_bytes().starts_with(crate::linksync::INTFS_PREFIX.as_bytes()))
            // Another instance's netdevs are its own to bring down.
            .filter(|e| PortName::new(e.name_bytes()).is_none_or(|n| self.pipeline.coalescer.partition().owns(&n)))
            .map(|e| (e.ifindex, String::from_utf8_lossy(e.name_bytes()).into_owned()))
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        self.old_ifindexes.extend(old.iter().map(|(i, _)| *i));
        let ifindexes: Vec<u32> = old.iter().map(|(i, _)| *i).collect();
        let outcome = set_down(&ifindexes, ADMIN_DOWN_TIMEOUT).await?;
        for (ifindex, name) in &old {
            match outcome.get(ifindex) {
                Some(Ok(())) => {
                    self.counters.old_interfaces_down += 1;
                    tracing::debug!(iface = %name, ifindex, "Bring down old interface");
                }
                Some(Err(errno)) => tracing::warn!(iface = %name, ifindex, errno, "Failed to bring down old interface"),
                None => {}
            }
        }
        tracing::info!(count = old.len(), "brought down old interfaces in one netlink batch");
        Ok(())
    }

    /// Feeds a dump into the coalescer; returns the port names it contained.
    fn push_dump(&mut self, links: &[PortEvent]) -> PortSet {
        let mut names = PortSet::default();
        for ev in links {
            if let Verdict::Set { name, .. } = classify(ev, &self.old_ifindexes) {
                if self.pipeline.coalescer.partition().owns(&name) {
                    names.insert(name);
                }
            }
            self.pipeline.coalescer.push(ev, &self.old_ifindexes);
        }
        self.counters.events += links.len() as u64;
        names
    }

    /// Ports we hold state for that the dump does not contain: deleted if the dump and their
    /// rows prove the netdev is gone, kept otherwise (see [`deletions`]).
    fn apply_vanished(&mut self, dump: &Dump, dumped: &PortSet, kind: DumpKind) {
        let v = deletions(self.pipeline.reconciler.vanished(dumped), dump.is_complete());
        if !v.keep.is_empty() {
            self.counters.vanished_kept += v.keep.len() as u64;
            let why = if dump.is_complete() { "rows not known to be of this boot" } else { "dump incomplete" };
            if kind == DumpKind::Initial {
                tracing::info!(ports = v.keep.len(), why, "ports absent from the dump keep their STATE_DB rows");
            } else {
                tracing::debug!(
                    ports = v.keep.len(),
                    why,
                    ?kind,
                    "ports absent from the dump keep their STATE_DB rows"
                );
            }
        }
        for name in v.delete {
            let mut ev = PortEvent::zeroed();
            ev.msg_type = RTM_DELLINK;
            ev.origin = origin::DUMP;
            ev.timestamp_ns = monotonic_ns();
            ev.set_name(name.as_str().as_bytes());
            self.counters.vanished_deletes += 1;
            tracing::info!(port = %name, ?kind, "port vanished while events were not seen; deleting its state");
            self.pipeline.coalescer.push(&ev, &self.old_ifindexes);
        }
    }

    /// Warm start: what STATE_DB holds is the file's content when it was written at a clean
    /// shutdown of this boot; otherwise (crash, kill -9, no file, another boot) STATE_DB itself
    /// is read. Only rows a same-boot file lists may later be deleted for absence.
    async fn set_warm_baseline(&mut self, loaded: Option<LoadedState>, dumped: &PortSet) {
        let provable = provable_baseline(loaded.as_ref(), self.startup.system_warm);
        let mut names: PortSet = dumped.clone();
        match loaded {
            Some(l) if l.clean_shutdown && l.same_boot && !self.startup.system_warm => {
                tracing::info!(ports = l.ports.len(), "warm start: baseline from the clean-shutdown state file");
                self.pipeline.reconciler.set_baseline(baseline_from_records(&l.ports), &provable);
                return;
            }
            Some(l) => {
                tracing::info!(
                    clean = l.clean_shutdown,
                    same_boot = l.same_boot,
                    system_warm = self.startup.system_warm,
                    "warm start: state file not from a clean shutdown of this boot; verifying against STATE_DB"
                );
                names.extend(baseline_from_records(&l.ports).into_keys());
            }
            None => tracing::info!(
                system_warm = self.startup.system_warm,
                "warm start without a usable state file; reading the baseline from STATE_DB"
            ),
        }
        let names: Vec<PortName> = names.into_iter().collect();
        match baseline_from_state_db(&self.dbs, &names, self.cfg.redis_timeout).await {
            Ok(b) => self.pipeline.reconciler.set_baseline(b, &provable),
            Err(e) => tracing::warn!(error = %e, "cannot read STATE_DB baseline; every port will be written"),
        }
    }

    pub(super) async fn resync(&mut self) -> Result<(), Error> {
        self.need_resync = false;
        self.counters.resyncs += 1;
        let dump = self.dump(false).await?;
        let dumped = self.push_dump(&dump.links);
        self.apply_vanished(&dump, &dumped, DumpKind::Resync);
        tracing::info!(links = dump.links.len(), end = ?dump.end, complete = dump.is_complete(), "resync dump applied");
        self.flush().await;
        Ok(())
    }

    /// Self-healing: one dump and one pipelined read-back of our rows. A row that no longer says
    /// what we wrote (deleted or altered by someone else) is forgotten, so the dump rewrites it;
    /// ports whose netdev went away follow the deletion rule.
    pub(super) async fn self_heal(&mut self) -> Result<(), Error> {
        self.counters.reconciliations += 1;
        let dump = self.dump(false).await?;
        // Ports with a change in flight or backing off are settled by the pipeline.
        let names: Vec<PortName> =
            self.pipeline.reconciler.written_ports().filter(|n| !self.pipeline.retry.contains(n)).copied().collect();
        match self.writer.read_back(&names).await {
            Ok(rows) => {
                let reconciler = &self.pipeline.reconciler;
                let drift = crate::selfheal::drifted(
                    names
                        .iter()
                        .zip(rows.iter())
                        .filter_map(|(n, r)| Some((*n, reconciler.written_state(n)?, r.as_ref()))),
                );
                for d in drift {
                    self.counters.repairs += 1;
                    tracing::warn!(port = %d.port, fields = ?d.fields, "STATE_DB row differs from what portsyncd wrote; rewriting it");
                    self.pipeline.reconciler.forget_port(&d.port);
                }
            }
            Err(e) => {
                self.redis_lost(e);
                return Ok(());
            }
        }
        let dumped = self.push_dump(&dump.links);
        self.apply_vanished(&dump, &dumped, DumpKind::SelfHeal);
        self.flush().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    fn n(s: &str) -> PortName {
        PortName::new(s.as_bytes()).unwrap()
    }

    fn loaded(same_boot: bool) -> LoadedState {
        let rec = crate::warm_restart::state_file::PortRecord {
            ifindex: 3,
            admin_up: true,
            oper_up: true,
            mtu: 9100,
            flags: 0x41,
        };
        LoadedState {
            ports: BTreeMap::from([("Ethernet0".to_owned(), rec)]),
            saved_at: SystemTime::now(),
            clean_shutdown: true,
            same_boot,
            from_backup: None,
        }
    }

    #[test]
    fn an_incomplete_dump_deletes_nothing() {
        let v = Vanished { delete: vec![n("Ethernet4")], keep: vec![n("Ethernet0")] };
        let d = deletions(v, false);
        assert!(d.delete.is_empty());
        assert_eq!(d.keep, [n("Ethernet0"), n("Ethernet4")]);
        let v = Vanished { delete: vec![n("Ethernet4")], keep: vec![] };
        assert_eq!(deletions(v, true).delete, [n("Ethernet4")]);
    }

    #[test]
    fn only_a_same_boot_state_file_outside_a_system_warm_reboot_proves_rows() {
        assert_eq!(provable_baseline(Some(&loaded(true)), false), [n("Ethernet0")].into_iter().collect());
        assert!(provable_baseline(Some(&loaded(false)), false).is_empty(), "another boot");
        assert!(provable_baseline(Some(&loaded(true)), true).is_empty(), "system warm reboot");
        assert!(provable_baseline(None, false).is_empty(), "rows of unknown origin");
    }
}
