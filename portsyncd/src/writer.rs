//! Redis I/O of the event path: APPL_DB presence checks, each flush's STATE_DB HSET/DEL
//! operations as one pipeline (one round trip) with one reply per port, the `PortInitDone`
//! producer write, and the read-back of our rows for self-healing. Connection loss is an
//! ordinary, typed outcome: the caller keeps the changes and retries.

use std::time::Duration;

use redis::Value;

use crate::linksync::PortName;
use crate::pipeline::store::{PortStore, Reply};
use crate::producer::ProducerStateTable;
use crate::reconcile::Op;
use crate::redis_conn::{DbConn, Refusal, WriteError};
use crate::sonic_db::{SonicDbs, PORT_INIT_DONE, PORT_TABLE};

/// The four STATE_DB fields portsyncd owns, in [`crate::linksync::PortState::fields`] order.
pub const STATE_FIELDS: [&str; 4] = ["state", "netdev_oper_status", "admin_status", "mtu"];

/// The event path's Redis writer.
#[derive(Debug)]
pub struct Writer {
    appl: DbConn,
    state: DbConn,
    producer: ProducerStateTable,
    state_sep: char,
    appl_sep: char,
}

impl Writer {
    /// A writer for `dbs` (connects lazily); every call may take at most `timeout`.
    pub fn new(dbs: &SonicDbs, timeout: Duration) -> Self {
        let producer = ProducerStateTable::new(PORT_TABLE, dbs.appl.id);
        Self {
            appl: DbConn::new("APPL_DB", dbs.appl.clone(), vec![producer.script().clone()], timeout),
            state: DbConn::new("STATE_DB", dbs.state.clone(), Vec::new(), timeout),
            producer,
            state_sep: dbs.state.separator,
            appl_sep: dbs.appl.separator,
        }
    }

    /// Connects both databases now (start-up: an unreachable Redis is a start-up error).
    pub async fn connect(&mut self) -> Result<(), WriteError> {
        self.appl.get().await?;
        self.state.get().await?;
        Ok(())
    }

    /// Reconnections made so far (both databases).
    pub fn reconnects(&self) -> u64 {
        self.appl.reconnects + self.state.reconnects
    }

    /// Script reloads after NOSCRIPT so far.
    pub fn script_reloads(&self) -> u64 {
        self.appl.script_reloads + self.state.script_reloads
    }

    /// The APPL_DB server's run_id (changes when redis-server restarts).
    pub async fn run_id(&mut self) -> Result<String, WriteError> {
        self.appl.run_id().await
    }

    /// Reads our four fields of STATE_DB `PORT_TABLE|<p>` for each of `names`, in one round
    /// trip; `None` for a row that is missing or that Redis refused to read.
    pub async fn read_back(&mut self, names: &[PortName]) -> Result<Vec<Option<[Option<String>; 4]>>, WriteError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for n in names {
            pipe.cmd("HMGET").arg(format!("{PORT_TABLE}{}{n}", self.state_sep)).arg(&STATE_FIELDS[..]);
        }
        let replies = self.state.query_raw("HMGET STATE_DB PORT_TABLE", pipe).await?;
        Ok(replies
            .into_iter()
            .map(|v| {
                let row: Vec<Option<String>> = redis::from_redis_value(v).ok()?;
                let mut out: [Option<String>; 4] = Default::default();
                for (slot, v) in out.iter_mut().zip(row) {
                    *slot = v;
                }
                Some(out)
            })
            .collect())
    }
}

fn reply(v: &Value) -> Reply {
    match Refusal::from_value(v) {
        Some(r) => Err(r),
        None => Ok(()),
    }
}

impl PortStore for Writer {
    async fn present_in_appl(&mut self, names: &[PortName]) -> Result<Vec<Reply<bool>>, WriteError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for n in names {
            pipe.exists(format!("{PORT_TABLE}{}{n}", self.appl_sep));
        }
        let replies = self.appl.query_raw("EXISTS PORT_TABLE", pipe).await?;
        Ok(replies
            .iter()
            .map(|v| match Refusal::from_value(v) {
                Some(r) => Err(r),
                None => Ok(matches!(v, Value::Int(n) if *n > 0) || matches!(v, Value::Boolean(true))),
            })
            .collect())
    }

    async fn apply(&mut self, ops: &[Op]) -> Result<Vec<Reply>, WriteError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        // Replies per op: 2 for DEL + HSET, 1 otherwise.
        let mut shape = Vec::with_capacity(ops.len());
        for op in ops {
            match *op {
                Op::Write { name, state, delete_first } => {
                    let key = format!("{PORT_TABLE}{}{name}", self.state_sep);
                    if delete_first {
                        pipe.del(&key);
                    }
                    // HSET with every field, as swss-common's Table::set sends it; borrowed
                    // values (the mtu is formatted by redis-rs), so no allocation per field.
                    let updown = |b: bool| if b { "up" } else { "down" };
                    pipe.cmd("HSET")
                        .arg(key)
                        .arg(STATE_FIELDS[0])
                        .arg("ok")
                        .arg(STATE_FIELDS[1])
                        .arg(updown(state.oper_up))
                        .arg(STATE_FIELDS[2])
                        .arg(updown(state.admin_up))
                        .arg(STATE_FIELDS[3])
                        .arg(state.mtu);
                    shape.push(1 + usize::from(delete_first));
                }
                Op::Delete { name } => {
                    pipe.del(format!("{PORT_TABLE}{}{name}", self.state_sep));
                    shape.push(1);
                }
            }
        }
        let replies = self.state.query_raw("STATE_DB PORT_TABLE writes", pipe).await?;
        // Every reply of an op is consumed (DEL + HSET give two) so the next op's stay aligned;
        // the op is refused if any of its commands was.
        let mut it = replies.iter();
        Ok(shape
            .into_iter()
            .map(|n| {
                let mut outcome = Ok(());
                for r in it.by_ref().take(n).map(reply) {
                    if outcome.is_ok() {
                        outcome = r;
                    }
                }
                outcome
            })
            .collect())
    }

    async fn port_init_done(&mut self) -> Result<Reply, WriteError> {
        let mut pipe = redis::pipe();
        let fields = [("lanes".to_owned(), "0".to_owned())];
        self.producer.add_set(&mut pipe, [(PORT_INIT_DONE, &fields[..])]);
        let replies = self.appl.query_raw("PortInitDone", pipe).await?;
        Ok(replies.first().map_or(Ok(()), reply))
    }
}
