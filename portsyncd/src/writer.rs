//! Redis I/O of the event path: APPL_DB presence checks, and each flush's STATE_DB HSET/DEL
//! operations as one pipeline (one round trip), plus the `PortInitDone` producer write.
//! Connection loss is an ordinary, typed outcome: the caller keeps the changes and retries.

use std::collections::HashSet;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};

use crate::linksync::PortName;
use crate::producer::ProducerStateTable;
use crate::reconcile::{Op, Plan};
use crate::sonic_db::{DbLocation, SonicDbs, PORT_INIT_DONE, PORT_TABLE};

/// A Redis round trip may take this long before the connection is treated as gone.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Connecting failed.
    #[error("cannot connect to {db} at {addr}")]
    Connect {
        /// Database name.
        db: &'static str,
        /// Address.
        addr: String,
        /// Cause.
        #[source]
        source: redis::RedisError,
    },
    /// A command or pipeline failed.
    #[error("{what} on {db} failed")]
    Command {
        /// What was being done.
        what: &'static str,
        /// Database name.
        db: &'static str,
        /// Cause.
        #[source]
        source: redis::RedisError,
    },
}

impl WriteError {
    /// The connection is gone (as opposed to a command Redis refused).
    pub fn is_connection_lost(&self) -> bool {
        match self {
            WriteError::Connect { .. } => true,
            WriteError::Command { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_timeout()
                    || source.is_unrecoverable_error()
            }
        }
    }
}

/// One database's connection, re-established on demand.
#[derive(Debug)]
pub struct DbConn {
    name: &'static str,
    loc: DbLocation,
    conn: Option<MultiplexedConnection>,
    scripts: Vec<redis::Script>,
    /// Connections made after the first one.
    pub reconnects: u64,
}

impl DbConn {
    /// Not connected yet; `scripts` are loaded (SCRIPT LOAD) on every connect.
    pub fn new(name: &'static str, loc: DbLocation, scripts: Vec<redis::Script>) -> Self {
        Self { name, loc, conn: None, scripts, reconnects: 0 }
    }

    /// The connection, connecting first if needed.
    pub async fn get(&mut self) -> Result<&mut MultiplexedConnection, WriteError> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(self.conn.insert(conn))
    }

    async fn connect(&mut self) -> Result<MultiplexedConnection, WriteError> {
        let addr = self.loc.info.addr().to_string();
        let name = self.name;
        let err = |source| WriteError::Connect { db: name, addr: addr.clone(), source };
        let client = Client::open(self.loc.info.clone()).map_err(err)?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut conn = client.get_multiplexed_async_connection_with_config(&cfg).await.map_err(err)?;
        for s in &self.scripts {
            s.load_async(&mut conn).await.map_err(|source| WriteError::Command {
                what: "SCRIPT LOAD",
                db: name,
                source,
            })?;
        }
        if self.reconnects > 0 {
            tracing::info!(db = name, "reconnected to Redis");
        }
        Ok(conn)
    }

    /// Runs `pipe`, dropping the connection if it turned out to be gone.
    pub async fn query<T: redis::FromRedisValue>(
        &mut self,
        what: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, WriteError> {
        let name = self.name;
        let conn = self.get().await?;
        match pipe.query_async(conn).await {
            Ok(v) => Ok(v),
            Err(source) => {
                let e = WriteError::Command { what, db: name, source };
                if e.is_connection_lost() {
                    self.conn = None;
                    self.reconnects += 1;
                }
                Err(e)
            }
        }
    }
}

impl DbConn {
    /// Runs one command.
    pub async fn query_one<T: redis::FromRedisValue>(
        &mut self,
        what: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, WriteError> {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd.clone());
        let (v,): (T,) = self.query(what, &pipe).await?;
        Ok(v)
    }

    /// Runs `pipe` returning each reply as a raw value, so that one command's error (e.g.
    /// WRONGTYPE) does not fail the others.
    pub async fn query_raw(
        &mut self,
        what: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<redis::Value>, WriteError> {
        let mut pipe = pipe.clone();
        pipe.ignore_errors();
        self.query(what, &pipe).await
    }
}

/// The event path's Redis writer.
#[derive(Debug)]
pub struct Writer {
    appl: DbConn,
    state: DbConn,
    producer: ProducerStateTable,
    state_sep: char,
    appl_sep: char,
}

/// What one flush cost.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlushCost {
    /// Redis commands sent.
    pub commands: u64,
    /// Round trips (pipelines) made.
    pub round_trips: u64,
}

impl Writer {
    /// A writer for `dbs` (connects lazily).
    pub fn new(dbs: &SonicDbs) -> Self {
        let producer = ProducerStateTable::new(PORT_TABLE, dbs.appl.id);
        Self {
            appl: DbConn::new("APPL_DB", dbs.appl.clone(), vec![producer.script().clone()]),
            state: DbConn::new("STATE_DB", dbs.state.clone(), Vec::new()),
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

    /// Which of `names` have an APPL_DB `PORT_TABLE:<p>` entry (the consumed hash).
    pub async fn present_in_appl(
        &mut self,
        names: &[PortName],
        cost: &mut FlushCost,
    ) -> Result<HashSet<PortName>, WriteError> {
        if names.is_empty() {
            return Ok(HashSet::new());
        }
        let mut pipe = redis::pipe();
        for n in names {
            pipe.exists(format!("{PORT_TABLE}{}{n}", self.appl_sep));
        }
        let found: Vec<bool> = self.appl.query("EXISTS PORT_TABLE", &pipe).await?;
        cost.commands += names.len() as u64;
        cost.round_trips += 1;
        Ok(names.iter().zip(found).filter(|(_, f)| *f).map(|(n, _)| *n).collect())
    }

    /// Writes `plan`'s operations in one pipeline.
    pub async fn apply(&mut self, plan: &Plan, cost: &mut FlushCost) -> Result<(), WriteError> {
        if plan.ops.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let mut n = 0;
        for (op, _) in &plan.ops {
            match *op {
                Op::Write { name, state, delete_first } => {
                    let key = format!("{PORT_TABLE}{}{name}", self.state_sep);
                    if delete_first {
                        pipe.del(&key).ignore();
                        n += 1;
                    }
                    pipe.hset_multiple(key, &state.fields()).ignore();
                }
                Op::Delete { name } => {
                    pipe.del(format!("{PORT_TABLE}{}{name}", self.state_sep)).ignore();
                }
            }
            n += 1;
        }
        self.state.query::<()>("STATE_DB PORT_TABLE writes", &pipe).await?;
        cost.commands += n;
        cost.round_trips += 1;
        Ok(())
    }

    /// Producer-sets `PORT_TABLE:PortInitDone` {`lanes`=`0`}.
    pub async fn port_init_done(&mut self) -> Result<(), WriteError> {
        let mut pipe = redis::pipe();
        let fields = [("lanes".to_owned(), "0".to_owned())];
        self.producer.add_set(&mut pipe, [(PORT_INIT_DONE, &fields[..])]);
        self.appl.query::<redis::Value>("PortInitDone", &pipe).await.map(|_| ())
    }
}
