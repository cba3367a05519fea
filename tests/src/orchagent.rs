//! Orchagent stand-in: consumes APPL_DB `PORT_TABLE` producer entries (`PORT_TABLE_KEY_SET`,
//! `_PORT_TABLE:<k>`, `PORT_TABLE_DEL_SET`) into `PORT_TABLE:<k>` with the ConsumerStateTable pops
//! protocol. Two flavours:
//! - [`Orchagent::start`], lenient: woken by `PORT_TABLE_CHANNEL@0` and by a short poll, it pops
//!   until the key set is empty, so it consumes whatever a producer left, however it published;
//! - [`Orchagent::start_strict`], what orchagent really does (`Consumer::execute` in sonic-swss
//!   calls `pops` once per notification, at most `batch` keys, 128 by default): exactly one pops
//!   call of at most `batch` keys per PUBLISH received, no timer. A producer that publishes
//!   fewer times than swss-common's (once per newly added key) leaves keys behind for good.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::background::{BackgroundThread, StopFlag};
use crate::redis_server::RedisServer;

/// The producer's key set.
pub const KEY_SET: &str = "PORT_TABLE_KEY_SET";
/// Keys marked for deletion by the producer.
pub const DEL_SET: &str = "PORT_TABLE_DEL_SET";
/// The producer's notification channel in APPL_DB (id 0).
pub const CHANNEL: &str = "PORT_TABLE_CHANNEL@0";
/// Prefix of the consumed hashes.
pub const TABLE_PREFIX: &str = "PORT_TABLE:";
/// orchagent.sh runs orchagent with `-b 1024`.
pub const POP_BATCH: usize = 1024;
/// swss-common's `TableConsumable::DEFAULT_POP_BATCH_SIZE`, the batch of orchagent's port
/// consumer.
pub const DEFAULT_POP_BATCH_SIZE: usize = 128;
/// Client name of the stand-in's connections (see [`crate::redis_server::HARNESS_CLIENT_PREFIX`]).
pub const CLIENT_NAME: &str = "e2e-orchagent";

/// Our own text of the pops step (contract §4.3): SPOP up to ARGV[1] keys; for each, apply a
/// pending delete, then merge the staged fields `ARGV[2]..KEYS[2]..key` into `KEYS[2]..key`.
const POPS_LUA: &str = r#"
local popped = redis.call('SPOP', KEYS[1], ARGV[1])
local out = {}
for _, key in ipairs(popped) do
  local target = KEYS[2] .. key
  local staging = ARGV[2] .. target
  if redis.call('SREM', KEYS[3], key) == 1 then
    redis.call('DEL', target)
  end
  local fvs = redis.call('HGETALL', staging)
  for i = 1, #fvs, 2 do
    redis.call('HSET', target, fvs[i], fvs[i + 1])
  end
  redis.call('DEL', staging)
  out[#out + 1] = {key, fvs}
end
return out
"#;

/// How often the consumer looks at the key set without a notification: it also picks up what was
/// produced before it subscribed, like the real one seeding its count with SCARD.
const POLL: Duration = Duration::from_millis(15);

/// One popped entry: key and its staged fields (empty = the consumer sees a DEL).
pub type Popped = (String, Vec<(String, String)>);

/// How the consumer decides when to pop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// On every notification and every [`POLL`], pop until the key set is empty.
    Lenient,
    /// One pops call of at most `batch` keys per notification, nothing else.
    Strict { batch: usize },
}

#[derive(Debug, Default)]
struct Shared {
    popped_keys: AtomicU64,
    notifications: AtomicU64,
    pop_calls: AtomicU64,
    log: Mutex<Vec<Popped>>,
    last_error: Mutex<Option<String>>,
}

/// Background consumer thread, stopped and joined on drop.
#[derive(Debug)]
pub struct Orchagent {
    shared: Arc<Shared>,
    _thread: BackgroundThread,
}

impl Orchagent {
    /// Starts the lenient consumer on `redis`'s APPL_DB (see the module doc).
    pub fn start(redis: &RedisServer) -> Self {
        Self::start_mode(redis, Mode::Lenient)
    }

    /// Starts the strict consumer (see the module doc): one pops of at most `batch` keys per
    /// PUBLISH on `PORT_TABLE_CHANNEL@0`. Like a ConsumerStateTable being constructed, it also
    /// counts the keys already pending when it (re)subscribes (SCARD) as that many
    /// notifications. Reconnects when Redis restarts.
    pub fn start_strict(redis: &RedisServer, batch: usize) -> Self {
        assert!(batch > 0, "pop batch must be positive");
        Self::start_mode(redis, Mode::Strict { batch })
    }

    fn start_mode(redis: &RedisServer, mode: Mode) -> Self {
        let shared = Arc::new(Shared::default());
        let url = redis.url_db(crate::db::APPL_DB);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = Arc::clone(&shared);
        let thread =
            BackgroundThread::spawn("orchagent-standin", move |stop| consumer_thread(&url, &s, stop, mode, ready_tx))
                .unwrap_or_else(|e| panic!("spawn orchagent stand-in: {e}"));
        // Subscribed before returning, so a publish right after start() is not missed.
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        Orchagent { shared, _thread: thread }
    }

    /// Number of keys popped so far.
    pub fn pops(&self) -> u64 {
        self.shared.popped_keys.load(Ordering::Relaxed)
    }

    /// PUBLISH messages received on `PORT_TABLE_CHANNEL@0` so far.
    pub fn notifications(&self) -> u64 {
        self.shared.notifications.load(Ordering::Relaxed)
    }

    /// pops script calls made so far (empty ones included).
    pub fn pop_calls(&self) -> u64 {
        self.shared.pop_calls.load(Ordering::Relaxed)
    }

    /// Whether `key` (e.g. `PortInitDone`) has been popped.
    pub fn has_popped(&self, key: &str) -> bool {
        self.shared.log.lock().map(|l| l.iter().any(|(k, _)| k == key)).unwrap_or(false)
    }

    /// Keys still in `PORT_TABLE_KEY_SET` (produced, never popped).
    pub fn pending(&self, redis: &RedisServer) -> Vec<String> {
        let mut con = redis.conn(crate::db::APPL_DB);
        let mut v: Vec<String> =
            redis::cmd("SMEMBERS").arg(KEY_SET).query(&mut con).unwrap_or_else(|e| panic!("SMEMBERS {KEY_SET}: {e}"));
        v.sort();
        v
    }

    /// Every entry popped so far, in pop order.
    pub fn popped(&self) -> Vec<Popped> {
        self.shared.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The last Redis error the consumer hit (it keeps retrying).
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Waits until nothing is pending in the producer's key set.
    pub fn wait_idle(&self, redis: &RedisServer, timeout: Duration) {
        let mut con = redis.conn(crate::db::APPL_DB);
        crate::poll::wait_for(timeout, "orchagent stand-in to drain PORT_TABLE_KEY_SET", || {
            let n: u64 = redis::cmd("SCARD").arg(KEY_SET).query(&mut con).map_err(|e| e.to_string())?;
            if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} keys pending (last consumer error: {:?})", self.last_error()))
            }
        });
    }
}

fn set_error(s: &Shared, e: impl std::fmt::Display) {
    if let Ok(mut g) = s.last_error.lock() {
        *g = Some(e.to_string());
    }
}

fn consumer_thread(url: &str, s: &Shared, stop: &StopFlag, mode: Mode, ready: std::sync::mpsc::Sender<()>) {
    let script = redis::Script::new(POPS_LUA);
    let mut ready = Some(ready);
    while !stop.is_raised() {
        // (Re)connect: a test may restart redis-server underneath us.
        let conns = redis::Client::open(url).and_then(|c| {
            let (mut a, mut b) = (c.get_connection()?, c.get_connection()?);
            crate::redis_server::set_client_name(&mut a, CLIENT_NAME)?;
            crate::redis_server::set_client_name(&mut b, CLIENT_NAME)?;
            Ok((a, b))
        });
        let (mut sub_con, mut cmd_con) = match conns {
            Ok(c) => c,
            Err(e) => {
                set_error(s, e);
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let mut sub = sub_con.as_pubsub();
        if let Err(e) = sub.subscribe(CHANNEL).and_then(|_| sub.set_read_timeout(Some(POLL))) {
            set_error(s, e);
            continue;
        }
        if let Mode::Strict { batch } = mode {
            // ConsumerStateTable's constructor: SCARD of the key set counts as that many
            // pending notifications.
            let seeded = redis::cmd("SCARD").arg(KEY_SET).query::<u64>(&mut cmd_con).and_then(|n| {
                for _ in 0..n {
                    // Once one comes back empty, the rest would too.
                    if pop_once(&script, &mut cmd_con, s, batch)? == 0 {
                        break;
                    }
                }
                Ok(())
            });
            if let Err(e) = seeded {
                set_error(s, e);
                continue;
            }
        }
        if let Some(tx) = ready.take() {
            let _ = tx.send(());
        }
        loop {
            if stop.is_raised() {
                return;
            }
            let notified = match sub.get_message() {
                Ok(_) => {
                    s.notifications.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(e) if e.is_timeout() => false,
                Err(e) => {
                    set_error(s, e);
                    break;
                }
            };
            let r = match mode {
                Mode::Lenient => pop_all(&script, &mut cmd_con, s),
                Mode::Strict { batch } if notified => pop_once(&script, &mut cmd_con, s, batch).map(|_| ()),
                Mode::Strict { .. } => Ok(()),
            };
            if let Err(e) = r {
                set_error(s, e);
                break;
            }
        }
    }
}

/// One pops call of at most `batch` keys; returns how many were popped.
fn pop_once(
    script: &redis::Script,
    con: &mut redis::Connection,
    s: &Shared,
    batch: usize,
) -> redis::RedisResult<usize> {
    let popped: Vec<(String, Vec<String>)> =
        script.key(KEY_SET).key(TABLE_PREFIX).key(DEL_SET).arg(batch).arg("_").invoke(con)?;
    s.pop_calls.fetch_add(1, Ordering::Relaxed);
    let n = popped.len();
    s.popped_keys.fetch_add(n as u64, Ordering::Relaxed);
    if let Ok(mut log) = s.log.lock() {
        for (key, flat) in popped {
            let fvs = flat.chunks(2).filter_map(|c| Some((c.first()?.clone(), c.get(1)?.clone()))).collect();
            log.push((key, fvs));
        }
    }
    Ok(n)
}

fn pop_all(script: &redis::Script, con: &mut redis::Connection, s: &Shared) -> redis::RedisResult<()> {
    while pop_once(script, con, s, POP_BATCH)? > 0 {}
    Ok(())
}
