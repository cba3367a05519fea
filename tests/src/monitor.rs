//! Redis MONITOR recorder: every command the server executes, in execution order, with the
//! database it ran in and whether a Lua script ran it, so a test can prove what was (and was not)
//! written, deleted or re-sent in a window, not just how the data looks at the end.
//!
//! MONITOR lines carry `[<db> <addr>]` only (no client name), and every unix-socket client has
//! the same addr, so commands are told apart by what they are: the producer script's first key is
//! `PORT_TABLE_CHANNEL@0`, the orchagent stand-in's pops script's is `PORT_TABLE_KEY_SET`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::db::{APPL_DB, STATE_DB};
use crate::redis_server::RedisServer;

/// First key of the producer script (ProducerStateTable::set): the daemon's APPL_DB writes.
pub const PRODUCER_CHANNEL: &str = "PORT_TABLE_CHANNEL@0";
/// First key of the orchagent stand-in's pops script: not the daemon's.
pub const CONSUMER_KEY_SET: &str = "PORT_TABLE_KEY_SET";
/// Prefix of the producer's staging hashes in APPL_DB.
pub const STAGING_PREFIX: &str = "_PORT_TABLE:";
/// Client name of the MONITOR connection (see [`crate::redis_server::HARNESS_CLIENT_PREFIX`]).
pub const MONITOR_CLIENT_NAME: &str = "e2e-monitor";

/// Commands that change data (or publish); everything else in a window is a read.
pub const WRITE_COMMANDS: &[&str] = &[
    "HSET", "HMSET", "HSETNX", "HDEL", "HINCRBY", "DEL", "UNLINK", "SET", "SETNX", "SETEX", "APPEND", "INCR", "INCRBY",
    "SADD", "SREM", "SPOP", "SMOVE", "LPUSH", "RPUSH", "LPOP", "RPOP", "LREM", "LSET", "LTRIM", "ZADD", "ZREM",
    "EXPIRE", "PEXPIRE", "RENAME", "PUBLISH", "EVAL", "EVALSHA", "FLUSHDB", "FLUSHALL",
];

/// One command as MONITOR reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonCmd {
    /// Server clock, microseconds since the Unix epoch.
    pub ts_us: u64,
    /// Database the command ran in.
    pub db: u32,
    /// Run by a Lua script; the script's own EVAL/EVALSHA line comes before it.
    pub lua: bool,
    /// The client address as MONITOR shows it (`unix:<path>`, `127.0.0.1:<port>` or `lua`).
    pub addr: String,
    /// Command name and arguments, unquoted.
    pub args: Vec<String>,
}

impl MonCmd {
    /// Upper-case command name.
    pub fn name(&self) -> String {
        self.args.first().map(|a| a.to_ascii_uppercase()).unwrap_or_default()
    }

    /// Argument `i` (0 = the command name), empty if absent.
    pub fn arg(&self, i: usize) -> &str {
        self.args.get(i).map(String::as_str).unwrap_or("")
    }

    /// Whether this is a write command (see [`WRITE_COMMANDS`]).
    pub fn is_write(&self) -> bool {
        WRITE_COMMANDS.contains(&self.name().as_str())
    }

    /// Keys of an EVAL/EVALSHA.
    pub fn script_keys(&self) -> Vec<String> {
        let n: usize = self.arg(2).parse().unwrap_or(0);
        self.args.iter().skip(3).take(n).cloned().collect()
    }

    /// The keys a write command touches: every argument of DEL/UNLINK, the keys of a script,
    /// the first argument otherwise.
    pub fn written_keys(&self) -> Vec<String> {
        match self.name().as_str() {
            "DEL" | "UNLINK" => self.args.iter().skip(1).cloned().collect(),
            "EVAL" | "EVALSHA" => self.script_keys(),
            _ => self.args.get(1).cloned().into_iter().collect(),
        }
    }
}

/// Records every command Redis executes, from [`Monitor::start`] until drop, on its own unix
/// socket connection (the redis crate has no synchronous MONITOR).
#[derive(Debug)]
pub struct Monitor {
    sock: UnixStream,
    cmds: Arc<Mutex<Vec<MonCmd>>>,
    markers: AtomicU32,
    handle: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Connects, names the connection [`MONITOR_CLIENT_NAME`] and starts MONITOR; returns once
    /// the server confirmed it, so every later command is recorded.
    pub fn start(redis: &RedisServer) -> Self {
        let mut sock = UnixStream::connect(redis.socket_path()).expect("connect for MONITOR");
        let mut reader = BufReader::new(sock.try_clone().expect("clone MONITOR socket"));
        let mut reply = String::new();
        sock.write_all(format!("CLIENT SETNAME {MONITOR_CLIENT_NAME}\r\n").as_bytes()).expect("send CLIENT SETNAME");
        reader.read_line(&mut reply).expect("CLIENT SETNAME reply");
        assert_eq!(reply.trim_end(), "+OK", "CLIENT SETNAME refused");
        reply.clear();
        sock.write_all(b"MONITOR\r\n").expect("send MONITOR");
        reader.read_line(&mut reply).expect("MONITOR reply");
        assert_eq!(reply.trim_end(), "+OK", "MONITOR refused");
        let cmds = Arc::new(Mutex::new(Vec::new()));
        let c = Arc::clone(&cmds);
        let handle = std::thread::Builder::new()
            .name("redis-monitor".into())
            .spawn(move || {
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if let Some(cmd) = parse_monitor_line(&line) {
                        if let Ok(mut v) = c.lock() {
                            v.push(cmd);
                        }
                    }
                }
            })
            .expect("spawn MONITOR reader");
        Monitor { sock, cmds, markers: AtomicU32::new(0), handle: Some(handle) }
    }

    /// Issues a marker command and waits until MONITOR shows it: Redis feeds monitors in
    /// execution order, so every command executed before it has been recorded.
    pub fn sync(&self, redis: &RedisServer) {
        let marker = format!("psd-monitor-marker-{}", self.markers.fetch_add(1, Ordering::Relaxed));
        let mut con = redis.conn(APPL_DB);
        redis::cmd("EXISTS").arg(&marker).query::<i64>(&mut con).expect("marker EXISTS");
        crate::poll::wait_until(crate::poll::DEFAULT_TIMEOUT, "MONITOR to show the marker command", || {
            self.cmds.lock().map(|v| v.iter().any(|c| c.arg(1) == marker)).unwrap_or(false)
        });
    }

    /// [`Monitor::sync`], then the number of commands recorded so far: the start of a window
    /// for [`Monitor::commands_since`].
    pub fn mark(&self, redis: &RedisServer) -> usize {
        self.sync(redis);
        self.cmds.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Every command recorded so far.
    pub fn commands(&self) -> Vec<MonCmd> {
        self.cmds.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Commands recorded after `mark` (a value of [`Monitor::mark`]); call [`Monitor::sync`]
    /// first to close the window.
    pub fn commands_since(&self, mark: usize) -> Vec<MonCmd> {
        self.cmds.lock().map(|v| v.get(mark..).map(<[MonCmd]>::to_vec).unwrap_or_default()).unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `+<secs>.<micros> [<db> <addr>] "arg" "arg" ...` (addr `lua` for commands run by a script).
pub fn parse_monitor_line(line: &[u8]) -> Option<MonCmd> {
    let text = std::str::from_utf8(line.strip_prefix(b"+")?).ok()?.trim_end();
    let (ts, rest) = text.split_once(' ')?;
    let (secs, micros) = ts.split_once('.')?;
    let ts_us = secs.parse::<u64>().ok()? * 1_000_000 + micros.parse::<u64>().ok()?;
    let (client, args) = rest.strip_prefix('[')?.split_once("] ")?;
    let (db, addr) = client.split_once(' ')?;
    Some(MonCmd { ts_us, db: db.parse().ok()?, lua: addr == "lua", addr: addr.to_owned(), args: unquote_args(args)? })
}

/// Undoes Redis's `sdscatrepr` quoting of each argument.
pub fn unquote_args(s: &str) -> Option<Vec<String>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b' ' {
            i += 1;
            continue;
        }
        if b[i] != b'"' {
            return None;
        }
        i += 1;
        let mut arg = Vec::new();
        loop {
            let c = *b.get(i)?;
            i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = *b.get(i)?;
                    i += 1;
                    match e {
                        b'n' => arg.push(b'\n'),
                        b'r' => arg.push(b'\r'),
                        b't' => arg.push(b'\t'),
                        b'a' => arg.push(7),
                        b'b' => arg.push(8),
                        b'x' => {
                            arg.push(u8::from_str_radix(s.get(i..i + 2)?, 16).ok()?);
                            i += 2;
                        }
                        other => arg.push(other),
                    }
                }
                other => arg.push(other),
            }
        }
        out.push(String::from_utf8_lossy(&arg).into_owned());
    }
    Some(out)
}

/// STATE_DB `PORT_TABLE|<p>` writes sent directly (not by a script) as `(command, port)`, in
/// order.
pub fn state_port_writes(cmds: &[MonCmd]) -> Vec<(String, String)> {
    state_writes(cmds.iter().filter(|c| !c.lua))
}

fn is_script_call(c: &MonCmd) -> bool {
    matches!(c.name().as_str(), "EVAL" | "EVALSHA")
}

/// STATE_DB `PORT_TABLE|<p>` writes as `(command, port)`, in order, whether sent directly or
/// run by a Lua script (a script's EVAL/EVALSHA line itself is not counted; the writes it ran
/// are).
pub fn state_row_writes(cmds: &[MonCmd]) -> Vec<(String, String)> {
    state_writes(cmds.iter())
}

fn state_writes<'a>(cmds: impl Iterator<Item = &'a MonCmd>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // A script's own line is not a write of the keys it names; the commands it ran are.
    for c in cmds.filter(|c| c.db == STATE_DB && c.is_write() && !is_script_call(c)) {
        let name = c.name();
        for k in c.written_keys() {
            if let Some(port) = k.strip_prefix("PORT_TABLE|") {
                out.push((name.clone(), port.to_owned()));
            }
        }
    }
    out
}

/// Ports HSET and ports DEL'ed in STATE_DB `PORT_TABLE`.
pub fn hset_and_del_ports(writes: &[(String, String)]) -> (BTreeSet<String>, BTreeSet<String>) {
    let pick = |cmds: &[&str]| -> BTreeSet<String> {
        writes.iter().filter(|(c, _)| cmds.contains(&c.as_str())).map(|(_, p)| p.clone()).collect()
    };
    (pick(&["HSET", "HMSET", "HSETNX"]), pick(&["DEL", "UNLINK"]))
}

/// DEL/UNLINK of STATE_DB `PORT_TABLE|<p>` rows (direct or by a script), as port names in order.
pub fn state_row_deletes(cmds: &[MonCmd]) -> Vec<String> {
    state_row_writes(cmds).into_iter().filter(|(c, _)| matches!(c.as_str(), "DEL" | "UNLINK")).map(|(_, p)| p).collect()
}

/// Reads of STATE_DB `PORT_TABLE|*` (only meaningful in a window where the test itself does not
/// read STATE_DB).
pub fn state_port_reads(cmds: &[MonCmd]) -> usize {
    cmds.iter()
        .filter(|c| !c.lua && c.db == STATE_DB && !c.is_write())
        .filter(|c| c.args.iter().skip(1).any(|a| a.starts_with("PORT_TABLE")))
        .count()
}

/// The keys each producer call staged (`_PORT_TABLE:<k>` -> `<k>`), one entry per call.
pub fn producer_calls(cmds: &[MonCmd]) -> Vec<Vec<String>> {
    cmds.iter()
        .filter(|c| !c.lua && matches!(c.name().as_str(), "EVAL" | "EVALSHA"))
        .filter_map(|c| {
            let keys = c.script_keys();
            (keys.first().map(String::as_str) == Some(PRODUCER_CHANNEL))
                .then(|| keys.iter().skip(2).map(|k| k.strip_prefix(STAGING_PREFIX).unwrap_or(k).to_owned()).collect())
        })
        .collect()
}

/// Script calls (other than the stand-in's pops) that stage APPL_DB `_PORT_TABLE:<key>`,
/// whatever the producer script's key layout: the daemon producing `key`.
pub fn produces(cmds: &[MonCmd], key: &str) -> Vec<MonCmd> {
    let staged = format!("{STAGING_PREFIX}{key}");
    cmds.iter()
        .filter(|c| !c.lua && c.db == APPL_DB && matches!(c.name().as_str(), "EVAL" | "EVALSHA"))
        .filter(|c| !is_consumer_script(c) && c.args.iter().skip(3).any(|a| a == &staged))
        .cloned()
        .collect()
}

/// The orchagent stand-in's pops script.
pub fn is_consumer_script(c: &MonCmd) -> bool {
    matches!(c.name().as_str(), "EVAL" | "EVALSHA") && c.arg(3) == CONSUMER_KEY_SET
}

/// COUNTERS_DB id.
const COUNTERS_DB: u32 = 2;

/// Write commands the daemon sent (not counting those its scripts ran): everything written in
/// the window except the orchagent stand-in's pops and COUNTERS_DB (component stats are
/// statistics, not port state).
pub fn daemon_writes(cmds: &[MonCmd]) -> Vec<&MonCmd> {
    cmds.iter().filter(|c| !c.lua && c.db != COUNTERS_DB && c.is_write() && !is_consumer_script(c)).collect()
}

/// APPL_DB writes other than through the producer script (the daemon must make none).
pub fn direct_appl_writes(cmds: &[MonCmd]) -> Vec<&MonCmd> {
    daemon_writes(cmds)
        .into_iter()
        .filter(|c| c.db == APPL_DB && !matches!(c.name().as_str(), "EVAL" | "EVALSHA"))
        .collect()
}

/// The first 20 commands, one line each, for assertion messages.
pub fn show(cmds: &[&MonCmd]) -> String {
    cmds.iter().take(20).map(|c| format!("[{}] {}", c.db, c.args.join(" "))).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_parse_with_db_addr_and_quoting() {
        let c = parse_monitor_line(b"+1700000000.123456 [6 unix:/tmp/r/redis.sock] \"HSET\" \"PORT_TABLE|Ethernet0\" \"mtu\" \"9\\x00\\\"\"\r\n")
            .expect("parses");
        assert_eq!(c.ts_us, 1_700_000_000_123_456);
        assert_eq!(c.db, 6);
        assert!(!c.lua);
        assert_eq!(c.addr, "unix:/tmp/r/redis.sock");
        assert_eq!(c.args, ["HSET", "PORT_TABLE|Ethernet0", "mtu", "9\0\""]);
        let l = parse_monitor_line(b"+1.000001 [0 lua] \"del\" \"a\" \"b\"").expect("parses");
        assert!(l.lua);
        assert_eq!(l.written_keys(), ["a", "b"]);
        assert!(parse_monitor_line(b"+OK").is_none());
    }

    #[test]
    fn state_row_writes_include_script_writes_but_not_the_script_line() {
        let cmd = |db: u32, lua: bool, args: &[&str]| MonCmd {
            ts_us: 0,
            db,
            lua,
            addr: if lua { "lua".into() } else { "unix:x".into() },
            args: args.iter().map(|s| (*s).to_owned()).collect(),
        };
        let cmds = [
            cmd(6, false, &["EVALSHA", "abc", "1", "PORT_TABLE|Ethernet0"]),
            cmd(6, true, &["HSET", "PORT_TABLE|Ethernet0", "mtu", "1"]),
            cmd(6, false, &["DEL", "PORT_TABLE|Ethernet4", "OTHER|x"]),
            cmd(0, false, &["HSET", "PORT_TABLE|Ethernet8", "a", "b"]),
            cmd(6, false, &["HGETALL", "PORT_TABLE|Ethernet0"]),
        ];
        assert_eq!(
            state_row_writes(&cmds),
            [("HSET".to_owned(), "Ethernet0".to_owned()), ("DEL".to_owned(), "Ethernet4".to_owned())]
        );
        assert_eq!(state_port_writes(&cmds), [("DEL".to_owned(), "Ethernet4".to_owned())]);
        assert_eq!(state_row_deletes(&cmds), ["Ethernet4"]);
    }
}
