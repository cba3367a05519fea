//! Saves the port-state file off the event loop. Input: the records the daemon last wrote to
//! STATE_DB; output: the file on disk (see [`state_file`](super::state_file)) and each save's
//! counts folded into the daemon's [`WarmRestartMetrics`].
//!
//! The daemon runs one current-thread runtime, and a save fsyncs the file and its directory
//! (milliseconds, tens of them on a busy disk), so it runs on tokio's blocking pool: the store
//! moves into that task and comes back with the result. There is one store, hence at most one
//! save at a time, in the order they were asked for.

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use super::metrics::WarmRestartMetrics;
use super::state_file::{LoadedState, PortRecord, SaveOutcome, StateFileError, StateStore};

/// The store, saved on tokio's blocking pool.
#[derive(Debug)]
pub struct StateSaver {
    slot: Slot,
}

#[derive(Debug)]
enum Slot {
    /// Boxed: the store is large, and a slot mostly moves between the two states.
    Idle(Box<StateStore>),
    /// A save runs; its task sends the store back.
    Saving(oneshot::Receiver<Finished>),
    /// A save task ended without sending the store back (it panicked): no more saves.
    Lost,
}

/// What a save task sends back.
#[derive(Debug)]
struct Finished {
    store: Box<StateStore>,
    /// The save's own counts, added to the daemon's.
    counts: WarmRestartMetrics,
    ports: usize,
    clean_shutdown: bool,
    result: Result<SaveOutcome, StateFileError>,
}

/// Whether a save writes an unchanged document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Changed,
    Always,
}

impl StateSaver {
    /// A saver owning `store`.
    pub fn new(store: StateStore) -> Self {
        Self { slot: Slot::Idle(Box::new(store)) }
    }

    /// [`StateStore::load`]. Called at start, before any save; while a save runs the store is
    /// away, and the answer is `None` (a cold start), as for any unreadable state.
    pub fn load(&mut self, metrics: &mut WarmRestartMetrics) -> Option<LoadedState> {
        match &mut self.slot {
            Slot::Idle(store) => store.load(metrics),
            Slot::Saving(_) | Slot::Lost => {
                tracing::warn!("port state store busy or lost; starting without the state file");
                None
            }
        }
    }

    /// [`StateStore::remove_stale`]; nothing while a save runs (the next start sweeps).
    pub fn remove_stale(&mut self, metrics: &mut WarmRestartMetrics) {
        if let Slot::Idle(store) = &mut self.slot {
            store.remove_stale(metrics);
        }
    }

    /// [`StateStore::sweep_backups`]; nothing while a save runs (the next start sweeps).
    pub fn sweep_backups(&mut self, metrics: &mut WarmRestartMetrics) {
        if let Slot::Idle(store) = &mut self.slot {
            store.sweep_backups(metrics);
        }
    }

    /// Starts saving `ports` on the blocking pool, unless they and `clean_shutdown` are what the
    /// last save wrote (then nothing happens, on this thread or any other). A save still
    /// running from before makes this one a no-op too: the next periodic save carries the
    /// state then current. Returns whether a save started.
    pub fn save_in_background(
        &mut self,
        ports: BTreeMap<String, PortRecord>,
        clean_shutdown: bool,
        metrics: &mut WarmRestartMetrics,
    ) -> bool {
        self.reap(metrics);
        let store = match std::mem::replace(&mut self.slot, Slot::Lost) {
            Slot::Idle(store) => store,
            busy => {
                self.slot = busy;
                tracing::debug!("previous state file save still running; skipping this one");
                return false;
            }
        };
        if store.is_unchanged(&ports, clean_shutdown) {
            self.slot = Slot::Idle(store);
            tracing::trace!("port state unchanged since the last save; not saved");
            return false;
        }
        self.slot = Slot::Saving(spawn_save(store, ports, clean_shutdown, When::Changed));
        true
    }

    /// Takes back a finished save: adds its counts to `metrics` and logs its outcome. Returns
    /// whether one finished (the metrics changed).
    pub fn reap(&mut self, metrics: &mut WarmRestartMetrics) -> bool {
        let Slot::Saving(rx) = &mut self.slot else { return false };
        match rx.try_recv() {
            Ok(done) => self.finish(done, metrics),
            Err(oneshot::error::TryRecvError::Empty) => return false,
            Err(oneshot::error::TryRecvError::Closed) => self.lose(metrics),
        }
        true
    }

    /// The shutdown save: waits for a running save, then writes `ports` (even unchanged: the
    /// file must carry this `clean_shutdown`) and returns once it is on disk or has failed.
    pub async fn save_and_wait(
        &mut self,
        ports: BTreeMap<String, PortRecord>,
        clean_shutdown: bool,
        metrics: &mut WarmRestartMetrics,
    ) {
        let store = match std::mem::replace(&mut self.slot, Slot::Lost) {
            Slot::Saving(rx) => match rx.await {
                Ok(done) => {
                    self.finish(done, metrics);
                    std::mem::replace(&mut self.slot, Slot::Lost)
                }
                Err(_) => {
                    self.lose(metrics);
                    Slot::Lost
                }
            },
            other => other,
        };
        let store = match store {
            Slot::Idle(store) => store,
            Slot::Saving(_) | Slot::Lost => {
                tracing::warn!(clean_shutdown, "port state store lost; the final state file save is not made");
                return;
            }
        };
        match spawn_save(store, ports, clean_shutdown, When::Always).await {
            Ok(done) => self.finish(done, metrics),
            Err(_) => self.lose(metrics),
        }
    }

    fn finish(&mut self, done: Finished, metrics: &mut WarmRestartMetrics) {
        metrics.add_counts(&done.counts);
        let (ports, clean) = (done.ports, done.clean_shutdown);
        match &done.result {
            Ok(SaveOutcome::Written) => tracing::debug!(ports, clean, "state file saved"),
            Ok(SaveOutcome::Refreshed) => tracing::debug!(ports, clean, "unchanged state file rewritten to stay fresh"),
            Ok(SaveOutcome::Unchanged) => tracing::trace!(ports, clean, "port state unchanged; not saved"),
            Err(e) => {
                let source = std::error::Error::source(e);
                tracing::warn!(error = %e, source = ?source, "cannot save the warm-restart state file");
            }
        }
        self.slot = Slot::Idle(done.store);
    }

    fn lose(&mut self, metrics: &mut WarmRestartMetrics) {
        metrics.record_save_failure();
        tracing::error!("the state file save task died; the state file is no longer saved");
        self.slot = Slot::Lost;
    }
}

/// Runs one save on the blocking pool; the receiver gets the store back with the result.
fn spawn_save(
    mut store: Box<StateStore>,
    ports: BTreeMap<String, PortRecord>,
    clean_shutdown: bool,
    when: When,
) -> oneshot::Receiver<Finished> {
    let (tx, rx) = oneshot::channel();
    // Detached: the runtime waits for blocking tasks when it is dropped, so a save that is
    // running when the daemon fails still completes (and a rename is atomic either way).
    drop(tokio::task::spawn_blocking(move || {
        let mut counts = WarmRestartMetrics::default();
        let result = match when {
            When::Changed => store.save_if_changed(&ports, clean_shutdown, &mut counts),
            When::Always => store.save(&ports, clean_shutdown, &mut counts).map(|()| SaveOutcome::Written),
        };
        let done = Finished { store, counts, ports: ports.len(), clean_shutdown, result };
        // Nobody listens only if the saver was dropped, and then nobody needs the store.
        let _ = tx.send(done);
    }));
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warm_restart::state_file::StateFileConfig;
    use std::path::Path;
    use std::time::{Duration, Instant};

    fn ports(mtu: u32) -> BTreeMap<String, PortRecord> {
        let rec = PortRecord { ifindex: 7, admin_up: true, oper_up: true, mtu, flags: 0x1_1043 };
        BTreeMap::from([("Ethernet0".to_owned(), rec)])
    }

    fn saved_mtu(path: &Path) -> (u32, bool) {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        (v["ports"]["Ethernet0"]["mtu"].as_u64().unwrap() as u32, v["clean_shutdown"].as_bool().unwrap())
    }

    /// Reaps until the running save is back, as the daemon's tick does.
    async fn settle(saver: &mut StateSaver, m: &mut WarmRestartMetrics) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(saver.slot, Slot::Saving(_)) {
            assert!(Instant::now() < deadline, "save did not finish");
            saver.reap(m);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn background_saves_skip_unchanged_state_and_the_final_save_always_lands() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state/port_state.json");
        let cfg = StateFileConfig { path: path.clone(), backups: 5, ..StateFileConfig::default() };
        let mut saver = StateSaver::new(StateStore::new(cfg));
        let mut m = WarmRestartMetrics::default();

        assert!(saver.save_in_background(ports(1), false, &mut m));
        settle(&mut saver, &mut m).await;
        assert_eq!(saved_mtu(&path), (1, false));
        assert_eq!(m.state_saves, 1, "the task's counts reach the daemon's metrics");

        assert!(!saver.save_in_background(ports(1), false, &mut m), "unchanged: no save started");
        assert!(saver.save_in_background(ports(2), false, &mut m), "changed: saved");
        // Still running or not, the final save waits for it and then writes, unchanged or not.
        saver.save_and_wait(ports(2), false, &mut m).await;
        assert_eq!(saved_mtu(&path), (2, false));
        assert_eq!((m.state_saves, m.backups_created, m.state_save_failures), (3, 2, 0));
        saver.save_and_wait(ports(2), true, &mut m).await;
        assert_eq!(saved_mtu(&path), (2, true));
        assert_eq!(m.state_saves, 4);
    }
}
