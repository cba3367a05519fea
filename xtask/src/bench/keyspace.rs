//! Redis-side witness: keyspace notifications of the bench's redis-server in, one timestamped
//! `(db, key, op)` record per applied write out (STATE_DB `PORT_TABLE|*`, APPL_DB init markers).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use portsyncd_e2e::{BackgroundThread, RedisServer, StopFlag, APPL_DB, STATE_DB};

use super::now_ns;

/// How often the thread looks at its stop flag when nothing arrives.
const POLL: Duration = Duration::from_millis(50);

/// One write Redis applied.
#[derive(Debug, Clone)]
pub struct KsEvent {
    /// CLOCK_MONOTONIC when the bench thread received the notification.
    pub t_ns: u64,
    /// Database id.
    pub db: u32,
    /// Key (`PORT_TABLE|Ethernet0`, `_PORT_TABLE:PortInitDone`, ...).
    pub key: String,
    /// Command class Redis reports (`hset`, `del`, ...).
    pub op: String,
}

impl KsEvent {
    /// The port of a STATE_DB `PORT_TABLE|<port>` write.
    pub fn state_port(&self) -> Option<&str> {
        if self.db == STATE_DB {
            self.key.strip_prefix("PORT_TABLE|")
        } else {
            None
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    last_state_ns: AtomicU64,
    events: Mutex<Vec<KsEvent>>,
    error: Mutex<Option<String>>,
}

/// The subscriber thread; stopped and joined on drop.
#[derive(Debug)]
pub struct KeyspaceRecorder {
    shared: Arc<Shared>,
    _thread: BackgroundThread,
    /// Whether the thread runs SCHED_FIFO (see [`super::realtime`]).
    pub realtime: bool,
}

/// APPL_DB keys whose writes mark daemon milestones: the producer-side staging hash (written by
/// the daemon itself) and the consumed hash (written by the orchagent stand-in).
pub const PORT_CONFIG_DONE: &str = "_PORT_TABLE:PortConfigDone";
/// See [`PORT_CONFIG_DONE`].
pub const PORT_INIT_DONE: &str = "_PORT_TABLE:PortInitDone";

impl KeyspaceRecorder {
    /// Enables hash and generic keyspace notifications and subscribes; returns once every
    /// pattern is confirmed.
    pub fn start(redis: &RedisServer) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis.url()).context("redis client")?;
        let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).context("connect to redis")?;
        // K: keyspace channel; h: hash commands (HSET, HDEL); g: generic (DEL, EXPIRE, RENAME).
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("Khg")
            .query::<()>(&mut con)
            .context("CONFIG SET notify-keyspace-events")?;
        let patterns = vec![
            format!("__keyspace@{STATE_DB}__:PORT_TABLE|*"),
            format!("__keyspace@{APPL_DB}__:_PORT_TABLE:Port*Done"),
            format!("__keyspace@{APPL_DB}__:PORT_TABLE:Port*Done"),
        ];
        let stream = UnixStream::connect(redis.socket_path())
            .with_context(|| format!("connect to {}", redis.socket_path().display()))?;
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let (tx, rx) = mpsc::channel();
        let thread = BackgroundThread::spawn("bench-keyspace", move |stop| subscribe(stream, &patterns, &s, stop, tx))
            .context("spawn keyspace thread")?;
        // On an error `thread` is dropped, which stops and joins it.
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(tid)) => Ok(KeyspaceRecorder { shared, _thread: thread, realtime: super::realtime(tid) }),
            Ok(Err(e)) => Err(anyhow!("keyspace PSUBSCRIBE: {e}")),
            Err(e) => Err(anyhow!("keyspace subscriber did not start: {e}")),
        }
    }

    /// Every record received at or after `t_ns`.
    pub fn since(&self, t_ns: u64) -> Vec<KsEvent> {
        let mut ev = self.shared.events.lock().map(|e| e.clone()).unwrap_or_default();
        let start = ev.partition_point(|e| e.t_ns < t_ns);
        ev.split_off(start)
    }

    /// Receive time of the newest STATE_DB write (0 if none).
    pub fn last_state_ns(&self) -> u64 {
        self.shared.last_state_ns.load(Ordering::Relaxed)
    }

    /// First write of APPL_DB `key` at or after `t_ns`.
    pub fn first_appl_write(&self, key: &str, t_ns: u64) -> Option<u64> {
        self.since(t_ns).into_iter().find(|e| e.db == APPL_DB && e.key == key).map(|e| e.t_ns)
    }

    /// A subscriber error that ended the thread, if any.
    pub fn error(&self) -> Option<String> {
        self.shared.error.lock().ok().and_then(|e| e.clone())
    }
}

/// RESP request: an array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The line starting at `at` (without CRLF) and the index after it, if complete.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One complete RESP2 push (an array of bulk strings / integers / simple strings) at the start of
/// `buf`: bytes used and the elements; `Ok(None)` while incomplete.
fn parse_push(buf: &[u8]) -> Result<Option<(usize, Vec<String>)>, String> {
    let Some((head, mut at)) = line(buf, 0) else { return Ok(None) };
    let n: usize = match head.strip_prefix(b"*") {
        Some(n) => lossy(n).parse().map_err(|_| format!("bad array header {:?}", lossy(head)))?,
        None => return Err(format!("unexpected reply {:?}", lossy(head))),
    };
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let Some((h, next)) = line(buf, at) else { return Ok(None) };
        match h.first() {
            Some(b'$') => {
                let len: usize = lossy(&h[1..]).parse().map_err(|_| format!("bad bulk header {:?}", lossy(h)))?;
                let Some(body) = buf.get(next..next + len) else { return Ok(None) };
                if buf.len() < next + len + 2 {
                    return Ok(None);
                }
                items.push(lossy(body));
                at = next + len + 2;
            }
            Some(b':') | Some(b'+') => {
                items.push(lossy(&h[1..]));
                at = next;
            }
            _ => return Err(format!("unexpected element {:?}", lossy(h))),
        }
    }
    Ok(Some((at, items)))
}

/// Reads pushes off the socket. Every message decoded from one read(2) gets that read's time:
/// decoding happens after the timestamp, so a burst is not smeared by parsing cost.
fn subscribe(
    mut stream: UnixStream,
    patterns: &[String],
    s: &Shared,
    stop: &StopFlag,
    ready: mpsc::Sender<Result<i32, String>>,
) {
    super::pin_witness();
    let mut args = vec!["PSUBSCRIBE"];
    args.extend(patterns.iter().map(String::as_str));
    let mut ready = Some(ready);
    let fail = |s: &Shared, ready: &mut Option<mpsc::Sender<Result<i32, String>>>, e: String| {
        if let Some(tx) = ready.take() {
            let _ = tx.send(Err(e.clone()));
        }
        if let Ok(mut g) = s.error.lock() {
            *g = Some(e);
        }
    };
    if let Err(e) = stream.set_read_timeout(Some(POLL)).and_then(|_| stream.write_all(&encode(&args))) {
        fail(s, &mut ready, e.to_string());
        return;
    }
    let mut confirmed = 0;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    while !stop.is_raised() {
        let n = match stream.read(&mut chunk) {
            Ok(0) => {
                fail(s, &mut ready, "redis closed the subscription".into());
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                fail(s, &mut ready, e.to_string());
                return;
            }
        };
        let t_ns = now_ns();
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        let mut got = Vec::new();
        loop {
            match parse_push(&buf[used..]) {
                Ok(Some((len, items))) => {
                    used += len;
                    match items.first().map(String::as_str) {
                        Some("pmessage") if items.len() == 4 => {
                            if let Some((db, key)) = parse_channel(&items[2]) {
                                got.push(KsEvent { t_ns, db, key, op: items[3].clone() });
                            }
                        }
                        Some("psubscribe") => {
                            confirmed += 1;
                            if confirmed == patterns.len() {
                                if let Some(tx) = ready.take() {
                                    let _ = tx.send(Ok(nix::unistd::gettid().as_raw()));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    fail(s, &mut ready, e);
                    return;
                }
            }
        }
        buf.drain(..used);
        if got.iter().any(|e| e.db == STATE_DB) {
            s.last_state_ns.store(t_ns, Ordering::Relaxed);
        }
        if !got.is_empty() {
            if let Ok(mut ev) = s.events.lock() {
                ev.extend(got);
            }
        }
    }
}

/// `__keyspace@<db>__:<key>` -> (db, key).
fn parse_channel(channel: &str) -> Option<(u32, String)> {
    let rest = channel.strip_prefix("__keyspace@")?;
    let (db, key) = rest.split_once("__:")?;
    Some((db.parse().ok()?, key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_parse_whole_and_wait_when_partial() {
        let msg = b"*4\r\n$8\r\npmessage\r\n$3\r\np:*\r\n$35\r\n__keyspace@6__:PORT_TABLE|Ethernet4\r\n$4\r\nhset\r\n";
        let (used, items) = parse_push(msg).unwrap().unwrap();
        assert_eq!(used, msg.len());
        assert_eq!(items, ["pmessage", "p:*", "__keyspace@6__:PORT_TABLE|Ethernet4", "hset"]);
        for cut in 0..msg.len() {
            assert_eq!(parse_push(&msg[..cut]), Ok(None), "cut at {cut}");
        }
        let conf = b"*3\r\n$10\r\npsubscribe\r\n$1\r\nx\r\n:1\r\n";
        assert_eq!(parse_push(conf).unwrap().unwrap().1, ["psubscribe", "x", "1"]);
        assert!(parse_push(b"-ERR wrong\r\n").is_err());
    }

    #[test]
    fn records_state_db_writes_of_a_real_server() {
        let server = RedisServer::start();
        let rec = KeyspaceRecorder::start(&server).unwrap();
        let t0 = now_ns();
        let mut con = server.conn(STATE_DB);
        redis::cmd("HSET").arg("PORT_TABLE|Ethernet8").arg("state").arg("ok").query::<()>(&mut con).unwrap();
        redis::cmd("HSET").arg("OTHER|Ethernet8").arg("state").arg("ok").query::<()>(&mut con).unwrap();
        redis::cmd("DEL").arg("PORT_TABLE|Ethernet8").query::<()>(&mut con).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while rec.since(t0).len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let ev = rec.since(t0);
        let got: Vec<(u32, &str, &str)> = ev.iter().map(|e| (e.db, e.key.as_str(), e.op.as_str())).collect();
        assert_eq!(got, [(6, "PORT_TABLE|Ethernet8", "hset"), (6, "PORT_TABLE|Ethernet8", "del")]);
        assert_eq!(ev[0].state_port(), Some("Ethernet8"));
        assert!(rec.last_state_ns() >= t0);
        assert!(rec.error().is_none());
    }

    #[test]
    fn channel_names_split_into_db_and_key() {
        assert_eq!(parse_channel("__keyspace@6__:PORT_TABLE|Ethernet4"), Some((6, "PORT_TABLE|Ethernet4".into())));
        assert_eq!(
            parse_channel("__keyspace@0__:_PORT_TABLE:PortInitDone"),
            Some((0, "_PORT_TABLE:PortInitDone".into()))
        );
        assert_eq!(parse_channel("PORT_TABLE_CHANNEL@0"), None);
    }
}
