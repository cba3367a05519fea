//! When changes are written: [`Pipeline::flush`] takes the coalesced changes (and the refused
//! ones whose retry is due), asks APPL_DB which ports exist, plans the minimal STATE_DB writes,
//! sends them in one round trip and settles each port by its own reply. A refused command holds
//! back only its port (see [`retry`]); a lost connection keeps every change for later.

pub mod retry;
pub mod store;

use std::time::Instant;

use crate::batch::{Coalescer, Pending};
use crate::clock::monotonic_ns;
use crate::linksync::{PortMap, PortName, PortSet};
use crate::metrics::latency::LatencyRecorder;
use crate::metrics::Counters;
use crate::reconcile::{Op, Reconciler};
use crate::redis_conn::WriteError;
use retry::{Backoff, RetryQueue};
use store::PortStore;

/// The changes on their way to Redis.
#[derive(Debug)]
pub struct Pipeline {
    /// Changes not written yet, newest per port.
    pub coalescer: Coalescer,
    /// What Redis holds from us; PortInitDone gating.
    pub reconciler: Reconciler,
    /// Changes Redis refused, waiting for their retry.
    pub retry: RetryQueue,
    /// Ifindex of each port we wrote, for the warm-restart file.
    pub ifindexes: PortMap<u32>,
    /// PortInitDone was refused: retry not before this, with this many refusals so far.
    init_retry: Option<(Instant, u32)>,
    backoff: Backoff,
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new(reconciler: Reconciler, backoff: Backoff) -> Self {
        Self {
            coalescer: Coalescer::new(),
            reconciler,
            retry: RetryQueue::new(backoff),
            ifindexes: PortMap::default(),
            init_retry: None,
            backoff,
        }
    }

    /// Changes not yet confirmed by Redis (pending or refused).
    pub fn backlog(&self) -> usize {
        self.coalescer.len() + self.retry.len()
    }

    /// When the next refused change (or PortInitDone) is due for a retry.
    pub fn next_retry(&self) -> Option<Instant> {
        match (self.retry.next_due(), self.init_retry.map(|(t, _)| t)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Writes what is pending and due, then `PortInitDone` when it is due (`eoiu_seen`: the
    /// first check comes after the initial dump, as the C++ daemon's comes after its first
    /// netlink read). `Err` = the connection is lost: every change is kept for a retry.
    pub async fn flush<S: PortStore>(
        &mut self,
        store: &mut S,
        eoiu_seen: bool,
        now: Instant,
        counters: &mut Counters,
        latency: &mut LatencyRecorder,
    ) -> Result<(), WriteError> {
        self.write_pending(store, now, counters, latency).await?;
        if eoiu_seen && self.reconciler.port_init_due() && self.init_retry.is_none_or(|(t, _)| t <= now) {
            let r = store.port_init_done().await?;
            counters.redis_commands += 1;
            counters.redis_round_trips += 1;
            match r {
                Ok(()) => {
                    self.reconciler.mark_port_init_done();
                    self.init_retry = None;
                    tracing::info!("PortInitDone");
                }
                Err(refusal) => {
                    counters.refusals += 1;
                    let attempts = self.init_retry.map_or(1, |(_, a)| a + 1);
                    let delay = self.backoff.delay(attempts);
                    self.init_retry = Some((now + delay, attempts));
                    tracing::warn!(error = %refusal, retry_ms = delay.as_millis() as u64, "Redis refused PortInitDone; retrying");
                }
            }
        }
        Ok(())
    }

    async fn write_pending<S: PortStore>(
        &mut self,
        store: &mut S,
        now: Instant,
        counters: &mut Counters,
        latency: &mut LatencyRecorder,
    ) -> Result<(), WriteError> {
        let started = monotonic_ns();
        let mut pending = self.coalescer.take();
        // Ports backing off keep their new changes until their retry is due.
        pending.retain(|name, p| !self.retry.hold(*name, *p));
        self.retry.take_due(now, &mut pending);
        if pending.is_empty() {
            return Ok(());
        }
        let n_pending = pending.len() as u64;

        let unknown = self.reconciler.presence_unknown(&pending);
        let present = match store.present_in_appl(&unknown).await {
            Ok(p) => p,
            Err(e) => {
                self.restore(pending);
                return Err(e);
            }
        };
        if !unknown.is_empty() {
            counters.redis_commands += unknown.len() as u64;
            counters.redis_round_trips += 1;
        }
        let mut known = PortSet::default();
        for (name, r) in unknown.iter().zip(present) {
            match r {
                Ok(true) => {
                    known.insert(*name);
                }
                Ok(false) => {}
                Err(refusal) => {
                    if let Some(p) = pending.remove(name) {
                        self.refused(*name, p, refusal, now, counters);
                    }
                }
            }
        }

        let plan = self.reconciler.plan(pending, &known);
        for n in &plan.not_in_appl {
            tracing::info!(port = %n, "Cannot find {n} in port table");
            // Nothing to retry: the port is written again on its next netlink message.
            self.retry.succeeded(n);
        }
        for n in &plan.unchanged {
            self.retry.succeeded(n);
        }
        counters.skipped_unchanged += plan.unchanged.len() as u64;
        counters.not_in_appl += plan.not_in_appl.len() as u64;
        if plan.ops.is_empty() {
            return Ok(());
        }
        let ops: Vec<Op> = plan.ops.iter().map(|(op, _)| *op).collect();
        let replies = match store.apply(&ops).await {
            Ok(r) => r,
            Err(e) => {
                self.restore(plan.ops.into_iter().map(|(op, p)| (op.port(), p)).collect());
                return Err(e);
            }
        };
        counters.redis_round_trips += 1;
        counters.redis_commands +=
            ops.iter().map(|op| 1 + u64::from(matches!(op, Op::Write { delete_first: true, .. }))).sum::<u64>();
        let ack = monotonic_ns();
        let mut accepted = 0u64;
        // The per-port lines below go out in one system call.
        let _lines = crate::logging::hold_lines();
        for ((op, p), reply) in plan.ops.into_iter().zip(replies) {
            let name = op.port();
            match reply {
                Ok(()) => {
                    accepted += 1;
                    self.reconciler.commit_op(&op);
                    self.retry.succeeded(&name);
                    latency.record_latency_ns(p.first_ts, ack);
                    // The C++ daemon's per-port NOTICE lines, in its words.
                    match op {
                        Op::Write { state, .. } => {
                            counters.state_writes += 1;
                            self.ifindexes.insert(name, p.ifindex);
                            tracing::info!(
                                "Publish {name}(ok:{}) to state db",
                                if state.oper_up { "up" } else { "down" }
                            );
                        }
                        Op::Delete { .. } => {
                            counters.state_deletes += 1;
                            self.ifindexes.remove(&name);
                            tracing::info!("Delete {name}(ok) from state db");
                        }
                    }
                }
                Err(refusal) => self.refused(name, p, refusal, now, counters),
            }
        }
        if accepted > 0 {
            self.retry.expedite_server_wide(now);
        }
        counters.batches += 1;
        latency.record_batch(n_pending, accepted, ack.saturating_sub(started));
        Ok(())
    }

    fn refused(
        &mut self,
        name: PortName,
        p: Pending,
        refusal: crate::redis_conn::Refusal,
        now: Instant,
        counters: &mut Counters,
    ) {
        counters.refusals += 1;
        // What the row holds is unknown now (a refused DEL+HSET may have half-applied, and the
        // key may be of the wrong type): the retry must write even a state equal to our last.
        self.reconciler.forget_port(&name);
        let error = refusal.to_string();
        if let Some(w) = self.retry.refused(name, p, refusal, now) {
            tracing::warn!(
                port = %name,
                error = %error,
                attempts = w.attempts,
                suppressed = w.suppressed,
                retry_ms = w.retry_in.as_millis() as u64,
                "Redis refused the STATE_DB write of {name}; retrying that port only"
            );
        }
    }

    /// Puts changes back after a lost connection, under any newer ones.
    fn restore(&mut self, changes: PortMap<Pending>) {
        for (name, p) in changes {
            self.coalescer.restore(name, p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linksync::tests::ev;
    use crate::redis_conn::Refusal;
    use portsyncd_common::{IFF_RUNNING, IFF_UP, RTM_NEWLINK};
    use std::collections::{BTreeSet, VecDeque};
    use std::time::Duration;
    use store::Reply;

    /// A store answering from a script: each call pops the next scripted outcome; unscripted
    /// calls succeed. Records what it was asked.
    #[derive(Default)]
    struct Scripted {
        present: VecDeque<Result<Vec<Reply<bool>>, ()>>,
        apply: VecDeque<Result<Vec<Reply>, ()>>,
        init: VecDeque<Result<Reply, ()>>,
        applied: Vec<Vec<Op>>,
        init_calls: u32,
    }

    fn lost() -> WriteError {
        WriteError::Connect {
            db: "STATE_DB",
            addr: "scripted".into(),
            source: redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        }
    }

    impl PortStore for Scripted {
        async fn present_in_appl(&mut self, names: &[PortName]) -> Result<Vec<Reply<bool>>, WriteError> {
            match self.present.pop_front() {
                Some(r) => r.map_err(|()| lost()),
                None => Ok(names.iter().map(|_| Ok(true)).collect()),
            }
        }
        async fn apply(&mut self, ops: &[Op]) -> Result<Vec<Reply>, WriteError> {
            self.applied.push(ops.to_vec());
            match self.apply.pop_front() {
                Some(r) => r.map_err(|()| lost()),
                None => Ok(ops.iter().map(|_| Ok(())).collect()),
            }
        }
        async fn port_init_done(&mut self) -> Result<Reply, WriteError> {
            self.init_calls += 1;
            match self.init.pop_front() {
                Some(r) => r.map_err(|()| lost()),
                None => Ok(Ok(())),
            }
        }
    }

    fn wrongtype() -> Refusal {
        Refusal { code: "WRONGTYPE".into(), detail: "Operation against a key holding the wrong kind of value".into() }
    }

    fn pipeline(ports: &[&str]) -> Pipeline {
        let set: BTreeSet<String> = ports.iter().map(|p| (*p).to_owned()).collect();
        Pipeline::new(
            Reconciler::new(set),
            Backoff { min: Duration::from_millis(100), max: Duration::from_millis(1000) },
        )
    }

    fn push_up(p: &mut Pipeline, names: &[&str]) {
        for (i, n) in names.iter().enumerate() {
            p.coalescer.push(&ev(RTM_NEWLINK, i as u32 + 1, n, IFF_UP | IFF_RUNNING, 9100), &Default::default());
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    fn names(ops: &[Op]) -> Vec<String> {
        let mut v: Vec<String> = ops.iter().map(|o| o.port().to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn one_refused_write_holds_back_only_its_port_and_never_rewrites_the_others() {
        let mut p = pipeline(&["Ethernet0", "Ethernet4", "Ethernet8"]);
        let (mut c, mut l) = (Counters::default(), LatencyRecorder::new().unwrap());
        let t0 = Instant::now();
        push_up(&mut p, &["Ethernet0", "Ethernet4", "Ethernet8"]);
        // Replies follow op order, which follows a HashMap: refuse by name.
        struct RefuseOne(Scripted, &'static str);
        impl PortStore for RefuseOne {
            async fn present_in_appl(&mut self, n: &[PortName]) -> Result<Vec<Reply<bool>>, WriteError> {
                self.0.present_in_appl(n).await
            }
            async fn apply(&mut self, ops: &[Op]) -> Result<Vec<Reply>, WriteError> {
                self.0.applied.push(ops.to_vec());
                Ok(ops.iter().map(|o| if o.port().as_str() == self.1 { Err(wrongtype()) } else { Ok(()) }).collect())
            }
            async fn port_init_done(&mut self) -> Result<Reply, WriteError> {
                self.0.port_init_done().await
            }
        }
        let mut s = RefuseOne(Scripted::default(), "Ethernet8");
        block_on(p.flush(&mut s, true, t0, &mut c, &mut l)).unwrap();
        assert_eq!(names(&s.0.applied[0]), ["Ethernet0", "Ethernet4", "Ethernet8"]);
        assert_eq!((c.state_writes, c.refusals), (2, 1));
        assert_eq!(s.0.init_calls, 1, "a refused row does not hold PortInitDone back");
        // Quiet: flushing again before the backoff writes nothing at all.
        block_on(p.flush(&mut s, true, t0 + Duration::from_millis(50), &mut c, &mut l)).unwrap();
        assert_eq!(s.0.applied.len(), 1);
        // Due: only the refused port is retried.
        block_on(p.flush(&mut s, true, t0 + Duration::from_millis(100), &mut c, &mut l)).unwrap();
        assert_eq!(names(&s.0.applied[1]), ["Ethernet8"]);
        // Fixed: the next retry (after 200 ms now) goes through, and then nothing is pending.
        s.1 = "none";
        block_on(p.flush(&mut s, true, t0 + Duration::from_millis(350), &mut c, &mut l)).unwrap();
        assert_eq!(names(&s.0.applied[2]), ["Ethernet8"]);
        assert_eq!(p.backlog(), 0);
        assert_eq!(p.reconciler.written_state(&PortName::new(b"Ethernet8").unwrap()).map(|s| s.mtu), Some(9100));
    }

    #[test]
    fn a_refused_port_flapping_back_to_its_last_written_state_is_still_written() {
        let mut p = pipeline(&["Ethernet8"]);
        let (mut c, mut l) = (Counters::default(), LatencyRecorder::new().unwrap());
        let t0 = Instant::now();
        let mut ok = Scripted::default();
        push_up(&mut p, &["Ethernet8"]);
        block_on(p.flush(&mut ok, true, t0, &mut c, &mut l)).unwrap();
        // The row turns into a string; the flap's "down" is refused...
        ok.apply.push_back(Ok(vec![Err(wrongtype())]));
        p.coalescer.push(&ev(RTM_NEWLINK, 1, "Ethernet8", 0, 9100), &Default::default());
        block_on(p.flush(&mut ok, true, t0, &mut c, &mut l)).unwrap();
        // ...and its "up" equals what was written before: it must still be written at the retry.
        push_up(&mut p, &["Ethernet8"]);
        block_on(p.flush(&mut ok, true, t0 + Duration::from_millis(100), &mut c, &mut l)).unwrap();
        assert_eq!(ok.applied.len(), 3, "the retry writes: {:?}", ok.applied);
        assert_eq!(p.backlog(), 0);
    }

    #[test]
    fn a_lost_connection_keeps_every_change_and_commits_nothing() {
        let mut p = pipeline(&["Ethernet0"]);
        let mut s = Scripted::default();
        s.apply.push_back(Err(()));
        let (mut c, mut l) = (Counters::default(), LatencyRecorder::new().unwrap());
        push_up(&mut p, &["Ethernet0", "Ethernet4"]);
        assert!(block_on(p.flush(&mut s, true, Instant::now(), &mut c, &mut l)).is_err());
        assert_eq!(p.coalescer.len(), 2);
        assert_eq!(c.refusals, 0);
        assert!(p.reconciler.written().is_empty());
        block_on(p.flush(&mut s, true, Instant::now(), &mut c, &mut l)).unwrap();
        assert_eq!(names(&s.applied[1]), ["Ethernet0", "Ethernet4"]);
        assert_eq!(c.state_writes, 2);
        // The presence check failing the same way also keeps everything.
        let mut p = pipeline(&[]);
        s.present.push_back(Err(()));
        push_up(&mut p, &["Ethernet0"]);
        assert!(block_on(p.flush(&mut s, true, Instant::now(), &mut c, &mut l)).is_err());
        assert_eq!(p.coalescer.len(), 1);
    }

    #[test]
    fn a_refused_presence_check_backs_off_that_port() {
        let mut p = pipeline(&[]);
        let mut s = Scripted::default();
        s.present.push_back(Ok(vec![Err(Refusal { code: "OOM".into(), detail: "scripted".into() })]));
        let (mut c, mut l) = (Counters::default(), LatencyRecorder::new().unwrap());
        let t0 = Instant::now();
        push_up(&mut p, &["Ethernet0"]);
        block_on(p.flush(&mut s, true, t0, &mut c, &mut l)).unwrap();
        assert!(s.applied.is_empty());
        assert_eq!((c.refusals, p.retry.len()), (1, 1));
        block_on(p.flush(&mut s, true, t0 + Duration::from_millis(100), &mut c, &mut l)).unwrap();
        assert_eq!(names(&s.applied[0]), ["Ethernet0"]);
    }

    #[test]
    fn a_refused_port_init_done_is_retried_with_backoff() {
        let mut p = pipeline(&[]);
        let mut s = Scripted::default();
        s.init.push_back(Ok(Err(Refusal { code: "MISCONF".into(), detail: "scripted".into() })));
        let (mut c, mut l) = (Counters::default(), LatencyRecorder::new().unwrap());
        let t0 = Instant::now();
        block_on(p.flush(&mut s, false, t0, &mut c, &mut l)).unwrap();
        assert_eq!(s.init_calls, 0, "not before the end of the initial dump");
        block_on(p.flush(&mut s, true, t0, &mut c, &mut l)).unwrap();
        assert!(!p.reconciler.port_init_done());
        assert_eq!(p.next_retry(), Some(t0 + Duration::from_millis(100)));
        block_on(p.flush(&mut s, true, t0 + Duration::from_millis(10), &mut c, &mut l)).unwrap();
        assert_eq!(s.init_calls, 1);
        block_on(p.flush(&mut s, true, t0 + Duration::from_millis(100), &mut c, &mut l)).unwrap();
        assert!(p.reconciler.port_init_done());
        assert_eq!(s.init_calls, 2);
    }
}
