//! The supervisor: start-up, the initial sync, capture selection, then the event loop
//! source -> batch -> reconcile -> writer, with resync on loss, Redis-outage handling, the
//! periodic self-healing reconciliation, state saves, exports, and signals honoured from the
//! first instruction to the last.
//!
//! Where each step lives: [`sync`] (dumps, old interfaces, the warm baseline, which absent
//! ports may be deleted, self-healing), [`crate::pipeline`] (when and how changes are written),
//! [`stats`] (what is exported).
//!
//! Over 400 lines because the event loop's `select!` and the Redis-health state machine
//! (outage, restart, republish, resync guard) read best in one place: every arm shares the
//! daemon's state, and splitting them would pass most of `Daemon` to each piece.

mod instance;
mod stats;
mod sync;

use std::time::{Duration, Instant};

use portsyncd_common::{origin, PortEvent};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::{CaptureMode, Config};
use crate::ebpf::{EbpfCapture, EbpfConfig};
use crate::error::Error;
use crate::health::{Health, HealthMonitor, Inputs as HealthInputs};
use crate::metrics::latency::{IntervalLog, LatencyRecorder};
use crate::metrics::Counters;
use crate::netlink::dump::BackgroundDump;
use crate::netlink::socket::NlSocket;
use crate::pipeline::retry::Backoff;
use crate::pipeline::store::PortStore;
use crate::pipeline::Pipeline;
use crate::reconcile::Reconciler;
use crate::redis_conn::WriteError;
use crate::sonic_db::SonicDbs;
use crate::source::Source;
use crate::startup::{self, Startup};
use crate::warm_restart::metrics::WarmRestartMetrics;
use crate::warm_restart::saver::StateSaver;
use crate::warm_restart::state_file::{StateFileConfig, StateStore};
use crate::watchdog::{Heartbeat, Watchdog};
use crate::writer::Writer;

/// How often stats are refreshed and timers checked while anything is in progress (see
/// [`Daemon::tick_period`]).
const TICK: Duration = Duration::from_millis(200);
/// The same when idle (at most the shortest period of the work the tick does: half systemd's
/// watchdog period, the reconcile, histogram and state-save intervals): each tick is a wake-up,
/// and a switch's daemon is idle nearly always. Nothing waits on an idle tick: events wake the
/// loop at once, and whatever they leave in progress (a refused write, a lost Redis) brings the
/// short tick back.
const IDLE_TICK: Duration = Duration::from_secs(5);
/// Longest wait between reconnection attempts while Redis is unreachable.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(2);
/// How long a final flush may take at shutdown.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// While Redis is up, how often its run_id is checked (a restart is noticed even when idle).
const REDIS_CHECK_EVERY: Duration = Duration::from_secs(1);
/// The same when idle: a round trip is a second wake-up, and with nothing to write a restart
/// noticed a few seconds later loses nothing (the C++ daemon notices at its next write).
const REDIS_CHECK_IDLE: Duration = Duration::from_secs(5);
/// COUNTERS_DB component stats are written at most this often (SONiC's convention).
const COUNTERS_DB_EVERY: Duration = Duration::from_secs(1);
/// After redis-server restarted, how often CONFIG_DB is checked for ports to publish again.
const REPUBLISH_EVERY: Duration = Duration::from_secs(1);

/// EOIU status for the stats file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Eoiu {
    Pending,
    Seen,
    Timeout,
}

/// SIGTERM/SIGINT (stop), SIGUSR1 (percentiles) and SIGHUP (re-read the log settings),
/// installed before anything else runs; SIGUSR2 only with the `--test-stall-ms` hook.
#[derive(Debug)]
struct Signals {
    term: Signal,
    int: Signal,
    usr1: Signal,
    hup: Signal,
    usr2: Option<Signal>,
}

impl Signals {
    fn install(test_stall: bool) -> Result<Self, Error> {
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(Error::Signal)?,
            int: signal(SignalKind::interrupt()).map_err(Error::Signal)?,
            usr1: signal(SignalKind::user_defined1()).map_err(Error::Signal)?,
            hup: signal(SignalKind::hangup()).map_err(Error::Signal)?,
            usr2: match test_stall {
                true => Some(signal(SignalKind::user_defined2()).map_err(Error::Signal)?),
                false => None,
            },
        })
    }

    /// Resolves at SIGTERM or SIGINT.
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Resolves at SIGUSR2 when the stall hook installed it; never otherwise.
async fn test_stall_signal(usr2: &mut Option<Signal>) {
    match usr2.as_mut() {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn stop_signals() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGINT);
    set.add(nix::sys::signal::Signal::SIGHUP);
    set
}

/// Holds SIGTERM/SIGINT pending from the first instruction of `main` until [`run`] has its
/// handlers installed: a stop request during start-up then ends the daemon with exit 0 instead
/// of the default action. Call before any thread is spawned.
pub fn hold_stop_signals() {
    if let Err(e) = stop_signals().thread_block() {
        eprintln!("portsyncd: cannot block SIGTERM/SIGINT during start-up: {e}");
    }
}

/// Runs the daemon until SIGTERM/SIGINT, which end it with `Ok` at any point, start-up included.
pub async fn run(cfg: Config) -> Result<(), Error> {
    let mut signals = Signals::install(cfg.test_stall.is_some())?;
    // Handlers are in place: a signal held since `hold_stop_signals` is delivered now.
    stop_signals().thread_unblock().map_err(|e| Error::Signal(e.into()))?;
    // A broken eBPF build is an error in every capture mode, not a silent netlink fallback.
    crate::ebpf::verify_embedded_object().map_err(|e| Error::EbpfObject(Box::new(e)))?;
    let mut d = tokio::select! {
        biased;
        _ = signals.stop() => {
            tracing::info!("stopped during start-up");
            return Ok(());
        }
        d = Daemon::start(cfg) => d?,
    };
    d.event_loop(&mut signals).await
}

/// The event socket, joined to RTNLGRP_LINK before any dump so that nothing between the dump
/// and the subscription is missed.
fn open_source(cfg: &Config) -> Result<Source, Error> {
    let (sock, granted) = NlSocket::open_events(cfg.rcvbuf)?;
    tracing::info!(requested = cfg.rcvbuf, granted, "event socket joined RTNLGRP_LINK");
    Ok(match cfg.test_recv_buf {
        Some(bytes) => Source::with_recv_buf(sock, None, bytes),
        None => Source::new(sock, None),
    })
}

/// Chooses eBPF or netlink capture per `--capture`. `auto` falls back to netlink only for
/// reasons of the host (privileges, kernel support, verifier); anything else is an error.
fn select_capture(
    cfg: &Config,
    sock: &NlSocket,
    partition: &crate::partition::Partition,
) -> Result<(Option<EbpfCapture>, Option<String>), Error> {
    use std::os::fd::AsFd;
    if cfg.capture == CaptureMode::Netlink {
        tracing::info!("capture mode: netlink (as configured)");
        return Ok((None, None));
    }
    let ecfg = EbpfConfig { ring_bytes: cfg.ring_bytes, partition: Some(partition.clone()), ..EbpfConfig::default() };
    match EbpfCapture::attach(sock.as_fd(), &ecfg) {
        Ok(cap) => {
            tracing::info!(
                load_us = cap.load_duration().as_micros() as u64,
                verify_us = cap.verify_duration().as_micros() as u64,
                kernel_btf_parsed = cap.kernel_btf().parsed(),
                ring_bytes = cfg.ring_bytes,
                "capture mode: ebpf (socket filter attached)"
            );
            Ok((Some(cap), None))
        }
        Err(e) if cfg.capture == CaptureMode::Auto && e.is_unsupported() => {
            let reason = format!("{e}");
            tracing::warn!(reason = %reason, "capture mode: netlink (eBPF unavailable)");
            Ok((None, Some(reason)))
        }
        Err(e) if cfg.capture == CaptureMode::Auto => Err(Error::EbpfObject(Box::new(e))),
        Err(e) => Err(Error::EbpfRequired(Box::new(e))),
    }
}

/// Redis as the event loop sees it.
#[derive(Debug)]
struct RedisHealth {
    /// Since when the connection is lost.
    down_since: Option<Instant>,
    /// Wait before the next reconnection attempt.
    retry_backoff: Duration,
    /// The server's run_id at start; a different one means it restarted.
    run_id: String,
    /// redis-server restarted: the CONFIG_DB ports are to be published again.
    republish_pending: bool,
    /// After publishing them again: the ports orchagent has not moved into APPL_DB
    /// `PORT_TABLE` yet, and until when the resync waits for it.
    appl_wait: Option<ApplWait>,
}

/// The resync after a republication waits until orchagent has consumed the published ports:
/// before that every port reads as "not in the port table" and its row would not be written.
#[derive(Debug)]
struct ApplWait {
    missing: Vec<crate::linksync::PortName>,
    deadline: Instant,
}

impl ApplWait {
    /// Waiting, from now, for `ports` (the ones just published).
    fn for_ports(ports: &std::collections::BTreeSet<String>) -> Self {
        let missing = ports.iter().filter_map(|p| crate::linksync::PortName::new(p.as_bytes())).collect();
        ApplWait { missing, deadline: Instant::now() + APPL_WAIT }
    }
}

/// How long the resync after a republication waits for orchagent to consume the ports.
const APPL_WAIT: Duration = Duration::from_secs(10);

/// Capture as the exports report it.
#[derive(Debug)]
struct CaptureInfo {
    mode: &'static str,
    fallback_reason: Option<String>,
}

struct Daemon {
    cfg: Config,
    dbs: SonicDbs,
    startup: Startup,
    source: Source,
    pipeline: Pipeline,
    writer: Writer,
    counters: Counters,
    latency: LatencyRecorder,
    hist_log: Option<IntervalLog>,
    store: StateSaver,
    warm_metrics: WarmRestartMetrics,
    old_ifindexes: std::collections::HashSet<u32>,
    capture: CaptureInfo,
    eoiu: Eoiu,
    initial_sync_done: bool,
    redis: RedisHealth,
    need_resync: bool,
    stats_dirty: bool,
    /// Something changed since the last COUNTERS_DB export (an idle daemon builds no snapshot).
    counters_db_dirty: bool,
    prometheus: Option<std::sync::Arc<crate::metrics::prometheus::PrometheusExport>>,
    health: HealthMonitor,
    /// The last verdict, as exported.
    health_now: Health,
    heartbeat: Heartbeat,
    /// Test hook: SIGUSR2 arrived; the next batch with changes pending blocks the loop
    /// (`--test-stall-ms`).
    stall_armed: bool,
    _watchdog: Watchdog,
    /// SIGHUP: the CONFIG_DB LOGGER watcher re-reads the log settings.
    log_refresh: std::sync::Arc<tokio::sync::Notify>,
    /// COUNTERS_DB component stats, when database_config.json has a COUNTERS_DB.
    counters_db: Option<crate::metrics::counters_db::CountersDbExport>,
    /// With several instances: this one's registry and run.
    instance: Option<instance::InstanceRuntime>,
    /// The initial dump, started before the start-up sequence (one daemon only).
    early_dump: Option<BackgroundDump>,
}

impl Daemon {
    /// Everything up to the event loop: Redis, the start-up sequence, the initial sync and the
    /// capture. Cancel-safe: dropped at SIGTERM, it leaves nothing half-written that a restart
    /// would not redo.
    async fn start(cfg: Config) -> Result<Self, Error> {
        if cfg.instances > 1 {
            crate::redis_conn::set_client_name(format!("portsyncd-{}", cfg.instance_id));
        }
        let dbs = SonicDbs::resolve(&cfg.redis)?;
        // One daemon dumps while the start-up sequence runs (the dump is the longest step of a
        // warm start). An instance of several may wait seconds for its leader, so it subscribes
        // and dumps when it is ready (its socket would only fill up meanwhile).
        let early = match cfg.instances {
            1 => {
                let mut source = open_source(&cfg)?;
                // Whatever is queued is older than the snapshot about to be taken.
                source.discard_queued()?;
                Some((source, BackgroundDump::spawn(sync::dump_options(&cfg, true))?))
            }
            _ => None,
        };
        let mut writer = Writer::new(&dbs, cfg.redis_timeout);
        // An unreachable Redis at start is fatal (one clear line from main), as in the C++ daemon.
        writer.connect().await?;
        let run_id = writer.run_id().await?;
        let (startup, partition, instance) = match cfg.instances {
            1 => (startup::run(&dbs, cfg.redis_timeout).await?, crate::partition::Partition::single(), None),
            _ => {
                let (s, p, rt) = instance::start(&cfg, &dbs).await?;
                (s, p, Some(rt))
            }
        };
        tracing::info!(
            warm = startup.warm,
            system_warm = startup.system_warm,
            restore_count = startup.restore_count,
            switch_type = %startup.switch_type,
            ports = startup.port_set.len(),
            "start-up sequence done"
        );

        let log_refresh = std::sync::Arc::new(tokio::sync::Notify::new());
        tokio::spawn(crate::logging::watch_config(dbs.config.clone(), cfg.redis_timeout, log_refresh.clone()));

        let (source, early_dump) = match early {
            Some((source, dump)) => (source, Some(dump)),
            None => (open_source(&cfg)?, None),
        };
        // The loop cannot report its own stall: the watchdog's thread tells systemd.
        let (watchdog, heartbeat) = Watchdog::start(cfg.stall_watchdog, |stalled_ms| {
            let status = format!("unhealthy: loop_stalled ({stalled_ms} ms)");
            notify_systemd(&[sd_notify::NotifyState::Status(&status)]);
        });
        let dbs_counters = dbs.counters.clone();
        let backoff = Backoff { min: cfg.refusal_backoff_min, max: cfg.refusal_backoff_max };
        let mut d = Daemon {
            counters: Counters::default(),
            pipeline: Pipeline::new(Reconciler::new(startup.port_set.clone()), backoff),
            latency: LatencyRecorder::new()?,
            hist_log: match &cfg.histogram_log {
                Some(p) => Some(IntervalLog::create(p, cfg.histogram_interval)?),
                None => None,
            },
            store: StateSaver::new(StateStore::new(StateFileConfig {
                path: cfg.state_file.clone(),
                backups: cfg.state_backups,
                max_age: cfg.state_max_age,
            })),
            warm_metrics: WarmRestartMetrics::default(),
            source,
            early_dump,
            writer,
            dbs,
            startup,
            old_ifindexes: Default::default(),
            capture: CaptureInfo { mode: "netlink", fallback_reason: None },
            eoiu: Eoiu::Pending,
            initial_sync_done: false,
            redis: RedisHealth {
                down_since: None,
                retry_backoff: Duration::from_millis(100),
                run_id,
                republish_pending: false,
                appl_wait: None,
            },
            need_resync: false,
            stats_dirty: true,
            counters_db_dirty: true,
            prometheus: None,
            health: HealthMonitor::new(),
            health_now: Health { status: crate::health::Status::Healthy, reasons: Vec::new() },
            heartbeat,
            stall_armed: false,
            _watchdog: watchdog,
            log_refresh,
            counters_db: match &dbs_counters {
                Some(loc) => {
                    let export = crate::metrics::counters_db::CountersDbExport::new(loc.clone(), cfg.redis_timeout);
                    Some(if cfg.instances > 1 { export.for_instance(cfg.instance_id) } else { export })
                }
                None => {
                    tracing::warn!("database config has no COUNTERS_DB: component stats are not published");
                    None
                }
            },
            instance,
            cfg,
        };
        d.pipeline.coalescer.set_partition(partition);
        d.source.poll_storms(d.cfg.batch_linger);
        if let Some(addr) = d.cfg.metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(Error::Metrics)?;
            let instance = (d.cfg.instances > 1).then_some(d.cfg.instance_id);
            let export = std::sync::Arc::new(crate::metrics::prometheus::PrometheusExport::new(instance));
            d.latency.export_latency_to(export.latency_histogram());
            tokio::spawn(crate::metrics::prometheus::serve(listener, std::sync::Arc::clone(&export)));
            d.prometheus = Some(export);
            tracing::info!(%addr, "serving Prometheus metrics");
        }
        // Initial sync first, on the netlink socket: loading and verifying the eBPF program takes
        // tens of milliseconds that need not delay PortInitDone.
        d.initial_sync().await?;
        if let Some(pause) = d.cfg.test_pause_before_capture {
            tracing::info!(secs = pause.as_secs(), "test hook: pausing before attaching the capture");
            tokio::time::sleep(pause).await;
        }
        d.start_capture().await?;
        d.initial_sync_done();
        Ok(d)
    }

    /// Attaches the eBPF capture per `--capture` (after initial sync, see [`run`]); whatever the
    /// socket queued before the filter took over is processed first.
    async fn start_capture(&mut self) -> Result<(), Error> {
        let (ebpf, reason) = select_capture(&self.cfg, self.source.socket(), self.pipeline.coalescer.partition())?;
        self.capture.fallback_reason = reason;
        if let Some(cap) = ebpf {
            let mut events = Vec::new();
            let drained = self.source.attach_ebpf(cap, &mut events)?;
            self.capture.mode = "ebpf";
            self.counters.events += events.len() as u64;
            for ev in &events {
                self.pipeline.coalescer.push(ev, &self.old_ifindexes);
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
        if self.startup.warm {
            // The load read only up to the first usable document; the older backups are
            // checked now that PortInitDone is out.
            self.store.sweep_backups(&mut self.warm_metrics);
        }
        self.save_state(false);
        self.update_health();
        self.write_stats();
        let status = format!("initial sync complete; {}", self.health_now.status_line());
        notify_systemd(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);
    }

    /// Re-assesses health; a change is logged, exported and told to systemd.
    fn update_health(&mut self) {
        let inputs = HealthInputs {
            stalled_now: self.heartbeat.stalled_now(),
            stalls: self.heartbeat.stalls(),
            redis_down: self.redis.down_since.is_some(),
            refused_ports: self.pipeline.retry.len(),
            repairs: self.counters.repairs,
            ebpf_fallback: self.capture.fallback_reason.is_some(),
            eoiu_timeout: self.eoiu == Eoiu::Timeout,
        };
        let health = self.health.assess(&inputs, Instant::now());
        if health == self.health_now {
            return;
        }
        let line = health.status_line();
        match health.status {
            crate::health::Status::Healthy => tracing::info!(health = %line, "health changed"),
            _ => tracing::warn!(health = %line, "health changed"),
        }
        if self.initial_sync_done {
            notify_systemd(&[sd_notify::NotifyState::Status(&line)]);
        }
        self.health_now = health;
        self.mark_stats();
    }

    /// Writes what is pending and due, then `PortInitDone` when it is due. Never fails: a lost
    /// connection keeps the changes for a retry.
    async fn flush(&mut self) {
        if self.redis.down_since.is_some() {
            return;
        }
        let init_may_go = self.eoiu != Eoiu::Pending && self.init_gate_open();
        let r = self
            .pipeline
            .flush(&mut self.writer, init_may_go, Instant::now(), &mut self.counters, &mut self.latency)
            .await;
        self.mark_stats();
        match r {
            Ok(()) => {}
            Err(e) => self.redis_lost(e),
        }
    }

    /// The exports are out of date.
    fn mark_stats(&mut self) {
        self.stats_dirty = true;
        self.counters_db_dirty = true;
    }

    fn redis_lost(&mut self, e: WriteError) {
        self.counters.redis_errors += 1;
        self.mark_stats();
        if self.redis.down_since.is_none() {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "Redis unreachable; keeping changes and retrying");
            self.redis.down_since = Some(Instant::now());
            self.redis.retry_backoff = Duration::from_millis(100);
        } else {
            self.redis.retry_backoff = (self.redis.retry_backoff * 2).min(MAX_RETRY_BACKOFF);
        }
    }

    /// Nothing in progress: Redis up and nothing owed to it (no change pending or backing off,
    /// no resync or republication, PortInitDone written), and no other instance to keep in
    /// step with. Then the loop ticks every [`IDLE_TICK`] (or the shortest periodic interval, if
    /// shorter) and checks Redis every [`REDIS_CHECK_IDLE`]; events wake it at once either way.
    fn idle(&self) -> bool {
        self.redis.down_since.is_none()
            && !self.redis.republish_pending
            && self.redis.appl_wait.is_none()
            && !self.need_resync
            && self.pipeline.backlog() == 0
            && self.pipeline.next_retry().is_none()
            && self.pipeline.reconciler.port_init_done()
            && self.instance.is_none()
    }

    fn tick_period(&self, idle_tick: Duration) -> Duration {
        if self.idle() {
            idle_tick
        } else {
            TICK
        }
    }

    /// While Redis is down: one probe per backoff step; while it is up: one liveness check a
    /// second, so a restart is noticed even when nothing is being written. Back up (or found
    /// restarted): a resync rewrites what may have been lost; after a restart (new run_id) the
    /// start-up publication is redone first.
    async fn check_redis(&mut self) {
        match self.writer.run_id().await {
            Ok(run_id) => {
                let restarted = run_id != self.redis.run_id;
                let Some(since) = self.redis.down_since.take().or(restarted.then(Instant::now)) else {
                    return;
                };
                self.redis.retry_backoff = Duration::from_millis(100);
                self.counters.redis_reconnects = self.writer.reconnects();
                tracing::info!(
                    down_ms = since.elapsed().as_millis() as u64,
                    restarted,
                    "Redis reachable again; resyncing every port"
                );
                // Redis may have lost writes (or everything): forget what we believed it held.
                self.pipeline.reconciler.forget_redis();
                self.need_resync = true;
                if restarted {
                    self.redis.run_id = run_id;
                    self.counters.redis_restarts += 1;
                    // Empty or not, a restarted server may lack APPL_DB's ports, warm start or not.
                    self.redis.republish_pending = true;
                }
            }
            Err(e) if e.is_connection_lost() || self.redis.down_since.is_some() => self.redis_lost(e),
            Err(e) => tracing::warn!(error = %e, "Redis liveness check refused"),
        }
    }

    /// After a redis-server restart: CONFIG_DB's ports to APPL_DB and PortConfigDone again,
    /// once CONFIG_DB holds ports (it may be reloaded after Redis comes back).
    async fn republish(&mut self) {
        // Another instance's job: a follower waits for the leader's new run (see `instance`).
        if self.instance.as_ref().is_some_and(|rt| !rt.is_leader()) {
            return;
        }
        let mut config =
            crate::redis_conn::DbConn::new("CONFIG_DB", self.dbs.config.clone(), Vec::new(), self.cfg.redis_timeout);
        match startup::publish_port_config(&self.dbs, &mut config, self.cfg.redis_timeout, true).await {
            Ok(None) => tracing::debug!("redis-server restarted; CONFIG_DB has no ports yet"),
            Ok(Some((port_set, _))) => {
                tracing::warn!(
                    ports = port_set.len(),
                    "redis-server restarted: published CONFIG_DB ports and PortConfigDone again"
                );
                let port_set = self.leader_republished(&port_set).await;
                self.redis.appl_wait = Some(ApplWait::for_ports(&port_set));
                self.pipeline.reconciler.restart_init(port_set);
                self.pipeline.reconciler.forget_redis();
                self.redis.republish_pending = false;
                self.need_resync = true;
            }
            Err(e) => self.redis_lost(e),
        }
    }

    /// A resync is owed and can run: Redis is up and, after a restart, APPL_DB has its ports
    /// again (a resync before that would find every port "not in the port table").
    fn resync_due(&self) -> bool {
        self.need_resync
            && self.redis.down_since.is_none()
            && !self.redis.republish_pending
            && self.redis.appl_wait.is_none()
    }

    /// After a republication: drops the ports orchagent has moved into APPL_DB `PORT_TABLE`
    /// since the last check; the wait ends when none is left, or at its deadline (the resync
    /// then writes what it can, and the rest is written on its next netlink message).
    async fn check_appl_wait(&mut self) {
        let Some(wait) = self.redis.appl_wait.as_mut() else { return };
        match self.writer.present_in_appl(&wait.missing).await {
            Ok(present) => {
                let mut left = Vec::new();
                for (name, p) in wait.missing.iter().zip(present) {
                    if p != Ok(true) {
                        left.push(*name);
                    }
                }
                wait.missing = left;
            }
            Err(e) => return self.redis_lost(e),
        }
        if let Some(example) = wait.missing.first().filter(|_| Instant::now() >= wait.deadline) {
            tracing::warn!(
                missing = wait.missing.len(),
                %example,
                wait_s = APPL_WAIT.as_secs(),
                "published ports still not in APPL_DB PORT_TABLE (orchagent has not consumed them); resyncing anyway"
            );
            self.redis.appl_wait = None;
        } else if wait.missing.is_empty() {
            tracing::info!("orchagent consumed the published ports; resyncing");
            self.redis.appl_wait = None;
        }
    }

    async fn event_loop(&mut self, signals: &mut Signals) -> Result<(), Error> {
        // A timerfd rather than tokio's interval: tokio's timer wheel wakes the thread once more
        // on the way to any deadline over 64 ms away.
        let mut tick = crate::timer::PreciseTimer::new().map_err(Error::Timer)?;
        // Pinged from the loop itself, so a loop that stops turning stops the pings.
        let watchdog = sd_notify::watchdog_enabled().map(|t| t / 2);
        // Periodic work is checked on the tick: an idle tick never outlasts its period.
        let idle_tick = [watchdog, self.cfg.reconcile_interval, Some(self.cfg.histogram_interval)]
            .into_iter()
            .flatten()
            .chain([self.cfg.state_save_interval, IDLE_TICK])
            .min()
            .unwrap_or(IDLE_TICK)
            .max(TICK);
        let mut next_tick = crate::clock::monotonic_ns() + self.tick_period(idle_tick).as_nanos() as u64;
        let mut events: Vec<PortEvent> = Vec::with_capacity(self.cfg.batch_max);
        let now = Instant::now();
        let mut last_probe = now;
        let mut last_save = now;
        let mut last_interval = now;
        let mut last_reconcile = now;
        let mut last_republish = now;
        let mut last_watchdog = now;
        let mut last_log = crate::logging::control().map(|c| c.current());
        let mut last_counters_db = now;
        loop {
            self.heartbeat.turn(self.pipeline.backlog());
            tokio::select! {
                _ = signals.term.recv() => break,
                _ = signals.int.recv() => break,
                _ = signals.usr1.recv() => self.report_percentiles(),
                _ = signals.hup.recv() => self.log_refresh.notify_one(),
                _ = test_stall_signal(&mut signals.usr2) => {
                    tracing::warn!("test hook: the next batch blocks the event loop");
                    self.stall_armed = true;
                }
                r = self.source.next_batch(&mut events, self.cfg.batch_max) => {
                    let drained = r?;
                    self.counters.events += events.len() as u64;
                    let now = crate::clock::monotonic_ns();
                    for ev in events.iter().filter(|e| e.origin == origin::EBPF) {
                        self.latency.record_delivery_ns(ev.timestamp_ns, now);
                    }
                    for ev in &events {
                        self.pipeline.coalescer.push(ev, &self.old_ifindexes);
                    }
                    events.clear();
                    // The first batch that leaves changes pending (a netdev LinkSync ignores
                    // leaves none, and a stall without pending changes is no stall).
                    if self.stall_armed && self.pipeline.backlog() > 0 {
                        self.stall_armed = false;
                        self.test_block_loop();
                    }
                    self.counters.enobufs = self.source.counters.enobufs;
                    self.counters.truncated = self.source.counters.truncated;
                    if drained.overrun {
                        tracing::warn!("netlink overrun (ENOBUFS or truncation): notifications were lost; re-dumping");
                        self.need_resync = true;
                    }
                    if drained.ring_overflow {
                        self.counters.ring_overflows += 1;
                        tracing::warn!("eBPF ring buffer was full; re-dumping");
                        self.need_resync = true;
                    }
                    self.flush().await;
                    // At once: events that came around a lost stretch may be applied out of order
                    // until the dump corrects them.
                    if self.resync_due() {
                        self.resync().await?;
                    }
                    // One short tick after events: the stats they changed go out within it, and a
                    // refusal to retry or a lost Redis keeps the tick short from then on.
                    next_tick = next_tick.min(crate::clock::monotonic_ns() + TICK.as_nanos() as u64);
                }
                r = tick.sleep_until(next_tick) => {
                    r.map_err(Error::Timer)?;
                    let probe_every = match (self.redis.down_since, self.idle()) {
                        (Some(_), _) => self.redis.retry_backoff,
                        (None, true) => REDIS_CHECK_IDLE,
                        (None, false) => REDIS_CHECK_EVERY,
                    };
                    if last_probe.elapsed() >= probe_every {
                        last_probe = Instant::now();
                        self.check_redis().await;
                    }
                    if self.redis.republish_pending && self.redis.down_since.is_none()
                        && last_republish.elapsed() >= REPUBLISH_EVERY
                    {
                        last_republish = Instant::now();
                        self.republish().await;
                    }
                    if self.redis.down_since.is_none() {
                        self.check_appl_wait().await;
                    }
                    if self.pipeline.next_retry().is_some_and(|t| t <= Instant::now()) {
                        self.flush().await;
                    }
                    if self.resync_due() {
                        self.resync().await?;
                    }
                    if let Some(every) = self.cfg.reconcile_interval {
                        if last_reconcile.elapsed() >= every && self.redis.down_since.is_none() {
                            last_reconcile = Instant::now();
                            self.self_heal().await?;
                        }
                    }
                    self.reap_state_save();
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
                    let log = crate::logging::control().map(|c| c.current());
                    if log != last_log {
                        last_log = log;
                        self.mark_stats();
                    }
                    let stalls = self.heartbeat.stalls();
                    if stalls != self.counters.stalls {
                        self.counters.stalls = stalls;
                        self.mark_stats();
                    }
                    if self.redis.down_since.is_none() {
                        self.instance_tick().await;
                    }
                    self.update_health();
                    let snap = if self.stats_dirty { self.write_stats() } else { None };
                    if self.counters_db_dirty
                        && last_counters_db.elapsed() >= COUNTERS_DB_EVERY
                        && self.redis.down_since.is_none()
                    {
                        last_counters_db = Instant::now();
                        self.export_counters_db(snap).await;
                    }
                    next_tick = crate::clock::monotonic_ns() + self.tick_period(idle_tick).as_nanos() as u64;
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
            self.pipeline.coalescer.push(ev, &self.old_ifindexes);
        }
        self.counters.events += events.len() as u64;
        if tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, self.flush()).await.is_err() {
            tracing::warn!("final flush timed out");
        }
        // Clean only if Redis holds everything we know and nothing was lost unseen.
        let clean = self.pipeline.backlog() == 0 && self.redis.down_since.is_none() && !self.need_resync;
        self.save_state_final(clean).await;
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
}

fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

impl Daemon {
    /// `--test-stall-ms`: blocks this thread (not just this task) with the batch's changes
    /// pending, as a hung daemon would: no systemd watchdog pings, the stall watchdog fires.
    fn test_block_loop(&mut self) {
        let Some(d) = self.cfg.test_stall else { return };
        self.heartbeat.turn(self.pipeline.backlog());
        tracing::warn!(
            ms = d.as_millis() as u64,
            pending = self.pipeline.backlog(),
            "test hook: blocking the event loop"
        );
        std::thread::sleep(d);
    }
}
