//! The supervisor: start-up, capture selection, the initial dump (EOIU), then the event loop
//! source -> batch -> reconcile -> writer, with resync on loss, Redis-outage retries, periodic
//! state saves, stats and histogram exports, and a clean SIGTERM.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use portsyncd_common::{origin, PortEvent, RTM_DELLINK};
use tokio::signal::unix::{signal, SignalKind};

use crate::batch::Coalescer;
use crate::clock::monotonic_ns;
use crate::config::{CaptureMode, Config};
use crate::ebpf::{EbpfCapture, EbpfConfig};
use crate::error::Error;
use crate::linksync::{classify, PortName, Verdict};
use crate::metrics::latency::{IntervalLog, LatencyRecorder};
use crate::metrics::{write_json_atomic, Counters};
use crate::netlink::admin::set_down;
use crate::netlink::dump::{dump_links, Dump, DumpEnd, DumpOptions};
use crate::netlink::socket::NlSocket;
use crate::reconcile::{Op, Reconciler};
use crate::sonic_db::SonicDbs;
use crate::source::Source;
use crate::startup::{self, Startup};
use crate::warm_restart::metrics::WarmRestartMetrics;
use crate::warm_restart::state_file::{StateFileConfig, StateStore};
use crate::warm_restart::{baseline_from_records, baseline_from_state_db, records_from_state};
use crate::writer::{FlushCost, Writer};

/// How often stats are refreshed and timers checked.
const TICK: Duration = Duration::from_millis(200);
/// Longest wait between retries while Redis is unreachable.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(2);
/// Deadline for the admin-down acknowledgements at a cold start.
const ADMIN_DOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Batches closer together than this are a storm, where `--batch-linger-us` applies.
const STORM_GAP: Duration = Duration::from_millis(10);
/// How long a final flush may take at shutdown.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// EOIU status for the stats file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Eoiu {
    Pending,
    Seen,
    Timeout,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> Result<(), Error> {
    let dbs = SonicDbs::resolve(&cfg.redis)?;
    let mut writer = Writer::new(&dbs);
    // An unreachable Redis at start is fatal (one clear line from main), as in the C++ daemon.
    writer.connect().await?;
    let startup = startup::run(&dbs).await?;
    tracing::info!(
        warm = startup.warm,
        restore_count = startup.restore_count,
        switch_type = %startup.switch_type,
        ports = startup.port_set.len(),
        "start-up sequence done"
    );

    // Subscribe before dumping, so nothing between the dump and the subscription is missed.
    let (sock, granted) = NlSocket::open_events(cfg.rcvbuf)?;
    tracing::info!(requested = cfg.rcvbuf, granted, "event socket joined RTNLGRP_LINK");
    let mut d = Daemon {
        counters: Counters::default(),
        coalescer: Coalescer::new(),
        reconciler: Reconciler::new(startup.port_set.clone()),
        latency: LatencyRecorder::new()?,
        hist_log: match &cfg.histogram_log {
            Some(p) => Some(IntervalLog::create(p, cfg.histogram_interval)?),
            None => None,
        },
        store: StateStore::new(StateFileConfig {
            path: cfg.state_file.clone(),
            backups: cfg.state_backups,
            max_age: cfg.state_max_age,
        }),
        warm_metrics: WarmRestartMetrics::default(),
        source: Source::new(sock, None),
        writer,
        dbs,
        startup,
        old_ifindexes: HashSet::new(),
        ifindexes: HashMap::new(),
        mode: "netlink",
        fallback_reason: None,
        eoiu: Eoiu::Pending,
        initial_sync_done: false,
        redis_down: None,
        retry_backoff: Duration::from_millis(100),
        need_resync: false,
        stats_dirty: true,
        prometheus: None,
        cfg,
    };
    if let Some(addr) = d.cfg.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(Error::Metrics)?;
        let (tx, rx) = tokio::sync::watch::channel(String::new());
        tokio::spawn(crate::metrics::serve_prometheus(listener, rx));
        d.prometheus = Some(tx);
        tracing::info!(%addr, "serving Prometheus metrics");
    }
    // Initial sync first, on the netlink socket: loading and verifying the eBPF program takes
    // tens of milliseconds that need not delay PortInitDone.
    d.initial_sync().await?;
    d.start_capture().await?;
    d.initial_sync_done();
    d.event_loop().await
}

/// Chooses eBPF or netlink capture per `--capture`.
fn select_capture(cfg: &Config, sock: &NlSocket) -> Result<(Option<EbpfCapture>, Option<String>), Error> {
    use std::os::fd::AsFd;
    if cfg.capture == CaptureMode::Netlink {
        tracing::info!("capture mode: netlink (as configured)");
        return Ok((None, None));
    }
    let ecfg = EbpfConfig { ring_bytes: cfg.ring_bytes, prefixes: vec!["Ethernet".into(), "PortChannel".into()] };
    match EbpfCapture::attach(sock.as_fd(), &ecfg) {
        Ok(cap) => {
            tracing::info!(
                load_us = cap.load_duration().as_micros() as u64,
                ring_bytes = cfg.ring_bytes,
                "capture mode: ebpf (socket filter attached)"
            );
            Ok((Some(cap), None))
        }
        Err(e) if cfg.capture == CaptureMode::Auto => {
            let reason = format!("{e}");
            tracing::warn!(reason = %reason, "capture mode: netlink (eBPF unavailable)");
            Ok((None, Some(reason)))
        }
        Err(e) => Err(Error::EbpfRequired(Box::new(e))),
    }
}

struct Daemon {
    cfg: Config,
    dbs: SonicDbs,
    startup: Startup,
    source: Source,
    coalescer: Coalescer,
    reconciler: Reconciler,
    writer: Writer,
    counters: Counters,
    latency: LatencyRecorder,
    hist_log: Option<IntervalLog>,
    store: StateStore,
    warm_metrics: WarmRestartMetrics,
    old_ifindexes: HashSet<u32>,
    ifindexes: HashMap<PortName, u32>,
    mode: &'static str,
    fallback_reason: Option<String>,
    eoiu: Eoiu,
    initial_sync_done: bool,
    redis_down: Option<Instant>,
    retry_backoff: Duration,
    need_resync: bool,
    stats_dirty: bool,
    prometheus: Option<tokio::sync::watch::Sender<String>>,
}

impl Daemon {
    fn dump_options(&self, initial: bool) -> DumpOptions {
        DumpOptions {
            timeout: self.cfg.eoiu_timeout,
            max_retries: self.cfg.dump_retries,
            hold_done: initial && self.cfg.test_hold_eoiu,
        }
    }

    async fn dump(&mut self, initial: bool) -> Result<Dump, Error> {
        // Whatever is queued is older than the snapshot about to be taken.
        self.source.discard_queued()?;
        let dump = dump_links(self.dump_options(initial)).await?;
        self.counters.dumps += 1;
        self.counters.dump_intr_retries += u64::from(dump.intr_retries);
        if dump.inconsistent {
            tracing::warn!(
                retries = dump.intr_retries,
                "link dump still interrupted after retries; using it, later events correct it"
            );
        }
        Ok(dump)
    }

    async fn initial_sync(&mut self) -> Result<(), Error> {
        let started = Instant::now();
        let loaded = if self.startup.warm {
            self.warm_metrics.record_warm_start();
            self.store.load(&mut self.warm_metrics)
        } else {
            self.warm_metrics.record_cold_start();
            self.store.remove_stale(&mut self.warm_metrics);
            None
        };

        let dump = self.dump(true).await?;
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
        self.push_vanished(&dumped);
        self.flush().await;

        self.warm_metrics.record_initial_sync(started.elapsed());
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            port_init_done = self.reconciler.port_init_done(),
            unseen = self.reconciler.unseen_ports().len(),
            "initial sync complete; {}",
            self.warm_metrics.summary()
        );
        Ok(())
    }

    /// Attaches the eBPF capture per `--capture` (after initial sync, see [`run`]); whatever the
    /// socket queued before the filter took over is processed first.
    async fn start_capture(&mut self) -> Result<(), Error> {
        let (ebpf, reason) = select_capture(&self.cfg, self.source.socket())?;
        self.fallback_reason = reason;
        if let Some(cap) = ebpf {
            let mut events = Vec::new();
            let drained = self.source.attach_ebpf(cap, &mut events)?;
            self.mode = "ebpf";
            self.counters.events += events.len() as u64;
            for ev in &events {
                self.coalescer.push(ev, &self.old_ifindexes);
            }
            if drained.overrun {
                self.need_resync = true;
            }
            self.flush().await;
        }
        Ok(())
    }

    fn initial_sync_done(&mut self) {
        self.initial_sync_done = true;
        self.save_state(false);
        self.write_stats();
        notify_systemd(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("initial sync complete")]);
    }

    /// C++ old-interface handling, in one netlink batch: every `Ethernet*` netdev that exists
    /// at a cold start is set admin-down and ignored from then on.
    async fn bring_down_old_interfaces(&mut self, links: &[PortEvent]) -> Result<(), Error> {
        let old: Vec<(u32, String)> = links
            .iter()
            .filter(|e| e.name_bytes().starts_with(crate::linksync::INTFS_PREFIX.as_bytes()))
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
    fn push_dump(&mut self, links: &[PortEvent]) -> HashSet<PortName> {
        let mut names = HashSet::new();
        for ev in links {
            if let Verdict::Set { name, .. } = classify(ev, &self.old_ifindexes) {
                names.insert(name);
                self.ifindexes.insert(name, ev.ifindex);
            }
            self.coalescer.push(ev, &self.old_ifindexes);
        }
        self.counters.events += links.len() as u64;
        names
    }

    /// Ports we hold state for that a full dump no longer contains were deleted while we were
    /// not listening: delete their entries.
    fn push_vanished(&mut self, dumped: &HashSet<PortName>) {
        for name in self.reconciler.vanished(dumped) {
            let mut ev = PortEvent::zeroed();
            ev.msg_type = RTM_DELLINK;
            ev.origin = origin::DUMP;
            ev.timestamp_ns = monotonic_ns();
            ev.set_name(name.as_str().as_bytes());
            tracing::info!(port = %name, "port vanished while events were not seen; deleting its state");
            self.coalescer.push(&ev, &self.old_ifindexes);
        }
    }

    /// Warm start: what STATE_DB holds is the file's content when it was written at a clean
    /// shutdown of this boot; otherwise (crash, kill -9, no file) STATE_DB itself is read.
    async fn set_warm_baseline(
        &mut self,
        loaded: Option<crate::warm_restart::state_file::LoadedState>,
        dumped: &HashSet<PortName>,
    ) {
        let mut names: HashSet<PortName> = dumped.clone();
        match loaded {
            Some(l) if l.clean_shutdown && l.same_boot => {
                tracing::info!(ports = l.ports.len(), "warm start: baseline from the clean-shutdown state file");
                self.reconciler.set_baseline(baseline_from_records(&l.ports));
                return;
            }
            Some(l) => {
                tracing::info!(
                    clean = l.clean_shutdown,
                    same_boot = l.same_boot,
                    "warm start: state file not from a clean shutdown of this boot; verifying against STATE_DB"
                );
                names.extend(baseline_from_records(&l.ports).into_keys());
            }
            None => tracing::info!("warm start without a usable state file; reading the baseline from STATE_DB"),
        }
        let names: Vec<PortName> = names.into_iter().collect();
        match baseline_from_state_db(&self.dbs, &names).await {
            Ok(b) => self.reconciler.set_baseline(b),
            Err(e) => tracing::warn!(error = %e, "cannot read STATE_DB baseline; every port will be written"),
        }
    }

    /// Writes everything pending, then `PortInitDone` when it is due. Never fails: a lost
    /// connection keeps the changes for a retry.
    async fn flush(&mut self) {
        if !self.coalescer.is_empty() {
            self.write_pending().await;
        }
        // The first check comes after the initial dump, as the C++ daemon's comes after its
        // first netlink read.
        if self.eoiu != Eoiu::Pending && self.redis_down.is_none() && self.reconciler.port_init_due() {
            match self.writer.port_init_done().await {
                Ok(()) => {
                    self.reconciler.mark_port_init_done();
                    self.counters.redis_commands += 1;
                    self.counters.redis_round_trips += 1;
                    tracing::info!("PortInitDone");
                }
                Err(e) => self.redis_failed(e),
            }
        }
    }

    async fn write_pending(&mut self) {
        let started = monotonic_ns();
        let pending = self.coalescer.take();
        let n_pending = pending.len() as u64;
        let mut cost = FlushCost::default();
        let unknown = self.reconciler.presence_unknown(&pending);
        let present = match self.writer.present_in_appl(&unknown, &mut cost).await {
            Ok(p) => p,
            Err(e) => {
                for (n, p) in pending {
                    self.coalescer.restore(n, p);
                }
                self.redis_failed(e);
                return;
            }
        };
        let plan = self.reconciler.plan(pending, &present);
        for n in &plan.not_in_appl {
            tracing::info!(port = %n, "Cannot find {n} in port table");
        }
        match self.writer.apply(&plan, &mut cost).await {
            Ok(()) => {
                let ack = monotonic_ns();
                self.reconciler.commit(&plan);
                for (op, p) in &plan.ops {
                    self.latency.record_latency_ns(p.first_ts, ack);
                    match op {
                        Op::Write { name, .. } => {
                            self.counters.state_writes += 1;
                            self.ifindexes.insert(*name, p.ifindex);
                        }
                        Op::Delete { name } => {
                            self.counters.state_deletes += 1;
                            self.ifindexes.remove(name);
                        }
                    }
                }
                self.counters.skipped_unchanged += plan.unchanged.len() as u64;
                self.counters.not_in_appl += plan.not_in_appl.len() as u64;
                self.counters.batches += 1;
                self.latency.record_batch(n_pending, plan.ops.len() as u64, ack.saturating_sub(started));
                self.redis_recovered();
            }
            Err(e) => {
                for (op, p) in plan.ops {
                    let name = match op {
                        Op::Write { name, .. } | Op::Delete { name } => name,
                    };
                    self.coalescer.restore(name, p);
                }
                self.redis_failed(e);
            }
        }
        self.counters.redis_commands += cost.commands;
        self.counters.redis_round_trips += cost.round_trips;
        self.stats_dirty = true;
    }

    fn redis_failed(&mut self, e: crate::writer::WriteError) {
        self.counters.redis_errors += 1;
        if e.is_connection_lost() {
            if self.redis_down.is_none() {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "Redis unreachable; keeping changes and retrying");
                self.redis_down = Some(Instant::now());
                self.retry_backoff = Duration::from_millis(100);
            } else {
                self.retry_backoff = (self.retry_backoff * 2).min(MAX_RETRY_BACKOFF);
            }
        } else {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "Redis refused a write; changes will be retried");
            self.redis_down.get_or_insert_with(Instant::now);
        }
    }

    fn redis_recovered(&mut self) {
        if let Some(since) = self.redis_down.take() {
            tracing::info!(down_ms = since.elapsed().as_millis() as u64, "Redis reachable again; resyncing every port");
            // Redis may have restarted empty: forget what we believed it held and re-dump.
            self.reconciler.forget_redis();
            self.need_resync = true;
            self.retry_backoff = Duration::from_millis(100);
        }
        self.counters.redis_reconnects = self.writer.reconnects();
    }

    async fn resync(&mut self) -> Result<(), Error> {
        self.need_resync = false;
        self.counters.resyncs += 1;
        let dump = self.dump(false).await?;
        let dumped = self.push_dump(&dump.links);
        self.push_vanished(&dumped);
        tracing::info!(links = dump.links.len(), end = ?dump.end, "resync dump applied");
        self.flush().await;
        Ok(())
    }

    async fn event_loop(&mut self) -> Result<(), Error> {
        let mut sigterm = signal(SignalKind::terminate()).map_err(Error::Signal)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
        let mut sigusr1 = signal(SignalKind::user_defined1()).map_err(Error::Signal)?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut events: Vec<PortEvent> = Vec::with_capacity(self.cfg.batch_max);
        let mut last_retry = Instant::now();
        let mut last_batch = Instant::now();
        let mut last_save = Instant::now();
        let mut last_interval = Instant::now();
        let watchdog = watchdog_interval();
        let mut last_watchdog = Instant::now();
        loop {
            tokio::select! {
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
                _ = sigusr1.recv() => self.report_percentiles(),
                r = self.source.next_batch(&mut events, self.cfg.batch_max) => {
                    let mut drained = r?;
                    // In a storm, a short wait gathers the next events into this batch: one
                    // wake-up and one Redis round trip for several events instead of each.
                    let storm = last_batch.elapsed() < STORM_GAP;
                    last_batch = Instant::now();
                    if storm && !self.cfg.batch_linger.is_zero() && events.len() < self.cfg.batch_max {
                        tokio::time::sleep(self.cfg.batch_linger).await;
                        let more = self.source.drain_now(&mut events, self.cfg.batch_max)?;
                        drained.overrun |= more.overrun;
                        drained.ring_overflow |= more.ring_overflow;
                    }
                    self.counters.events += events.len() as u64;
                    let now = monotonic_ns();
                    for ev in events.iter().filter(|e| e.origin == origin::EBPF) {
                        self.latency.record_delivery_ns(ev.timestamp_ns, now);
                    }
                    for ev in &events {
                        self.coalescer.push(ev, &self.old_ifindexes);
                    }
                    events.clear();
                    if drained.overrun {
                        self.counters.enobufs = self.source.counters.enobufs;
                        tracing::warn!("netlink overrun (ENOBUFS): notifications were lost; re-dumping");
                        self.need_resync = true;
                    }
                    if drained.ring_overflow {
                        self.counters.ring_overflows += 1;
                        self.need_resync = true;
                    }
                    if self.redis_down.is_none() {
                        self.flush().await;
                    }
                    self.stats_dirty = true;
                }
                _ = tick.tick() => {
                    if self.redis_down.is_some() && last_retry.elapsed() >= self.retry_backoff {
                        last_retry = Instant::now();
                        self.flush().await;
                    }
                    if self.need_resync && self.redis_down.is_none() {
                        self.resync().await?;
                    }
                    if last_save.elapsed() >= self.cfg.state_save_interval {
                        last_save = Instant::now();
                        self.save_state(false);
                    }
                    if last_interval.elapsed() >= self.cfg.histogram_interval {
                        last_interval = Instant::now();
                        self.write_interval();
                    }
                    if let Some(w) = watchdog {
                        if last_watchdog.elapsed() >= w {
                            last_watchdog = Instant::now();
                            notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                        }
                    }
                    if self.stats_dirty {
                        self.write_stats();
                    }
                }
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// SIGTERM: drain what is queued, write it (bounded), save the state file, export.
    async fn shutdown(&mut self) {
        tracing::info!("shutting down");
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        let mut events = Vec::new();
        if let Ok(d) = self.source.drain_now(&mut events, usize::MAX) {
            self.need_resync |= d.overrun || d.ring_overflow;
        }
        for ev in &events {
            self.coalescer.push(ev, &self.old_ifindexes);
        }
        self.counters.events += events.len() as u64;
        if tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, self.flush()).await.is_err() {
            tracing::warn!("final flush timed out");
        }
        // Clean only if Redis holds everything we know and nothing was lost unseen.
        let clean = self.coalescer.is_empty() && self.redis_down.is_none() && !self.need_resync;
        self.save_state(clean);
        self.write_interval();
        self.export_percentiles();
        let s = self.latency.summary().latency_us;
        tracing::info!(
            count = s.count,
            p50_us = s.p50,
            p99_us = s.p99,
            max_us = s.max,
            "event-to-Redis latency over the run"
        );
        self.write_stats();
    }

    fn save_state(&mut self, clean: bool) {
        let records = records_from_state(&self.reconciler.written(), &self.ifindexes);
        match self.store.save(&records, clean, &mut self.warm_metrics) {
            Ok(()) => tracing::debug!(ports = records.len(), clean, "state file saved"),
            Err(e) => {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "cannot save the warm-restart state file")
            }
        }
    }

    fn write_interval(&mut self) {
        if let Some(log) = self.hist_log.as_mut() {
            if let Err(e) = log.write_interval(&mut self.latency) {
                tracing::warn!(error = %e, "cannot write the histogram interval log");
            }
        }
    }

    /// SIGUSR1: the whole-run percentile table, to the log and the histogram log.
    fn report_percentiles(&mut self) {
        tracing::info!("event-to-Redis latency distribution:\n{}", self.latency.percentile_table());
        self.export_percentiles();
    }

    fn export_percentiles(&mut self) {
        if let Some(log) = self.hist_log.as_mut() {
            if let Err(e) = log.write_percentile_table(&self.latency).and_then(|()| log.flush()) {
                tracing::warn!(error = %e, "cannot write the percentile table");
            }
        }
    }

    fn snapshot(&self) -> serde_json::Value {
        let ebpf = self.source.ebpf().map(|c| {
            let counters = c.counters().unwrap_or_default();
            serde_json::json!({
                "events": counters.events,
                "ring_full": counters.ring_full,
                "filtered": counters.filtered,
                "parse_errors": counters.parse_errors,
                "not_link": counters.not_link,
                "load_us": c.load_duration().as_micros() as u64,
            })
        });
        serde_json::json!({
            "capture_mode": self.mode,
            "capture_fallback_reason": self.fallback_reason,
            "warm_start": self.startup.warm,
            "restore_count": self.startup.restore_count,
            "initial_sync_done": self.initial_sync_done,
            "port_init_done": self.reconciler.port_init_done(),
            "unseen_ports": self.reconciler.unseen_ports().len(),
            "eoiu": self.eoiu,
            "redis_up": self.redis_down.is_none(),
            "pending_ports": self.coalescer.len(),
            "counters": self.counters,
            "source": self.source.counters,
            "coalesce": self.coalescer.stats,
            "ebpf": ebpf,
            "warm_restart": self.warm_metrics,
            "latency": self.latency.summary(),
        })
    }

    fn write_stats(&mut self) {
        self.stats_dirty = false;
        if self.cfg.stats_file.is_none() && self.prometheus.is_none() {
            return;
        }
        let snap = self.snapshot();
        if let Some(tx) = &self.prometheus {
            tx.send_replace(crate::metrics::prometheus_text(&snap));
        }
        if let Some(path) = &self.cfg.stats_file {
            if let Err(e) = write_json_atomic(path, &snap) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write stats file");
            }
        }
    }
}

fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(Duration::from_micros(usec / 2))
}
