//! One Redis database connection with the failure rules every caller relies on: a deadline on
//! every call (a hung Redis is a lost connection, not a hung daemon), reconnect on demand, the
//! Lua scripts reloaded when Redis forgot them (NOSCRIPT after SCRIPT FLUSH or a restart), and
//! per-command replies so that one refused command (WRONGTYPE, MISCONF, OOM, READONLY) is told
//! apart from a lost connection.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};

use crate::sonic_db::DbLocation;

/// Connecting never waits longer than this, even with a longer `--redis-timeout-ms`.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A Redis operation failed as a whole.
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
    /// The connection is gone or hung (as opposed to a command Redis refused).
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

/// A command Redis answered with an error reply: it affects only that command's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error code (`WRONGTYPE`, `MISCONF`, `OOM`, `READONLY`, ...).
    pub code: String,
    /// The rest of Redis's message.
    pub detail: String,
}

impl Refusal {
    /// From a reply value, if it is an error reply.
    pub fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::ServerError(e) => {
                Some(Self { code: e.code().to_owned(), detail: e.details().unwrap_or_default().to_owned() })
            }
            _ => None,
        }
    }

    /// From a whole-call error that is an error reply (not a lost connection).
    pub fn from_error(e: &WriteError) -> Option<Self> {
        match e {
            WriteError::Command { source, .. } if !e.is_connection_lost() => Some(Self {
                code: source.code().unwrap_or("ERR").to_owned(),
                detail: source.detail().unwrap_or_default().to_owned(),
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.detail)
    }
}

fn is_noscript_value(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

/// The name every connection gives itself (`CLIENT SETNAME`), when set: with several instances,
/// `portsyncd-<id>`, so that `CLIENT LIST` and MONITOR tell them apart.
static CLIENT_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names every connection made from now on; the first call wins.
pub fn set_client_name(name: String) {
    let _ = CLIENT_NAME.set(name);
}

/// One database's connection, re-established on demand.
#[derive(Debug)]
pub struct DbConn {
    name: &'static str,
    loc: DbLocation,
    conn: Option<MultiplexedConnection>,
    scripts: Vec<redis::Script>,
    timeout: Duration,
    /// Connections made after the first one.
    pub reconnects: u64,
    /// Times the scripts were loaded again because Redis answered NOSCRIPT.
    pub script_reloads: u64,
}

impl DbConn {
    /// Not connected yet; `scripts` are loaded (SCRIPT LOAD) on every connect and again whenever
    /// Redis answers NOSCRIPT. Every call may take at most `timeout`.
    pub fn new(name: &'static str, loc: DbLocation, scripts: Vec<redis::Script>, timeout: Duration) -> Self {
        Self { name, loc, conn: None, scripts, timeout, reconnects: 0, script_reloads: 0 }
    }

    /// The database's name (`STATE_DB`, ...).
    pub fn name(&self) -> &'static str {
        self.name
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
            .set_connection_timeout(Some(self.timeout.min(MAX_CONNECT_TIMEOUT)))
            .set_response_timeout(Some(self.timeout));
        let mut conn = client.get_multiplexed_async_connection_with_config(&cfg).await.map_err(err)?;
        load_scripts(&self.scripts, &mut conn, name).await?;
        if let Some(client) = CLIENT_NAME.get() {
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(client)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|source| WriteError::Command { what: "CLIENT SETNAME", db: name, source })?;
        }
        if self.reconnects > 0 {
            tracing::info!(db = name, "reconnected to Redis");
        }
        Ok(conn)
    }

    /// Drops the connection after a failure that left it unusable.
    fn drop_if_lost(&mut self, e: &WriteError) {
        if e.is_connection_lost() {
            self.conn = None;
            self.reconnects += 1;
        }
    }

    async fn reload_scripts(&mut self) -> Result<(), WriteError> {
        self.script_reloads += 1;
        tracing::warn!(db = self.name, "Redis lost our Lua scripts (NOSCRIPT); loading them again");
        let name = self.name;
        let scripts = self.scripts.clone();
        let conn = self.get().await?;
        let r = load_scripts(&scripts, conn, name).await;
        if let Err(e) = &r {
            self.drop_if_lost(e);
        }
        r
    }

    async fn run<T: redis::FromRedisValue>(
        &mut self,
        what: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, WriteError> {
        let name = self.name;
        let conn = self.get().await?;
        let r = pipe.query_async(conn).await.map_err(|source| WriteError::Command { what, db: name, source });
        if let Err(e) = &r {
            self.drop_if_lost(e);
        }
        r
    }

    /// Runs `pipe`; the first error reply fails the whole call. NOSCRIPT reloads the scripts
    /// and runs it once more (the scripts' commands are idempotent sets).
    pub async fn query<T: redis::FromRedisValue>(
        &mut self,
        what: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, WriteError> {
        match self.run(what, pipe).await {
            Err(WriteError::Command { source, .. }) if source.code() == Some("NOSCRIPT") => {
                self.reload_scripts().await?;
                self.run(what, pipe).await
            }
            r => r,
        }
    }

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

    /// Runs `pipe` returning each reply as a raw value, so that one command's error reply (see
    /// [`Refusal::from_value`]) does not fail the others. Only a lost connection fails the call.
    /// A NOSCRIPT reply reloads the scripts and runs the pipeline once more. Takes the pipeline
    /// by value: a storm's is a thousand commands, not worth a copy.
    pub async fn query_raw(&mut self, what: &'static str, mut pipe: redis::Pipeline) -> Result<Vec<Value>, WriteError> {
        pipe.ignore_errors();
        let replies: Vec<Value> = self.run(what, &pipe).await?;
        if !replies.iter().any(is_noscript_value) {
            return Ok(replies);
        }
        self.reload_scripts().await?;
        self.run(what, &pipe).await
    }

    /// The server's `run_id`: it changes when redis-server restarts (with whatever data it
    /// reloaded, possibly none).
    pub async fn run_id(&mut self) -> Result<String, WriteError> {
        let info: String = self.query_one("INFO server", redis::cmd("INFO").arg("server")).await?;
        Ok(info.lines().find_map(|l| l.strip_prefix("run_id:")).map(|s| s.trim().to_owned()).unwrap_or_default())
    }
}

async fn load_scripts(
    scripts: &[redis::Script],
    conn: &mut MultiplexedConnection,
    db: &'static str,
) -> Result<(), WriteError> {
    for s in scripts {
        s.load_async(conn).await.map_err(|source| WriteError::Command { what: "SCRIPT LOAD", db, source })?;
    }
    Ok(())
}
