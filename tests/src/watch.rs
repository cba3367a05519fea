//! Keyspace-notification recorder: every command Redis applies to matching keys, in order, so a
//! test can prove a key was never deleted or written (not just that it looks right at the end).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::background::BackgroundThread;
use crate::redis_server::RedisServer;

type Events = Arc<Mutex<Vec<(String, String)>>>;

/// Records `(key, event)` (event = command name such as `hset`, `del`) for keys of database `db`
/// matching a glob, from the moment [`KeyspaceWatcher::start`] returns until drop.
#[derive(Debug)]
pub struct KeyspaceWatcher {
    events: Events,
    _thread: BackgroundThread,
}

impl KeyspaceWatcher {
    /// Enables keyspace notifications on the server and subscribes to `pattern` in `db`.
    pub fn start(redis: &RedisServer, db: u32, pattern: &str) -> Self {
        let mut con = redis.conn(db);
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("KA")
            .query::<()>(&mut con)
            .unwrap_or_else(|e| panic!("enable keyspace notifications: {e}"));
        let prefix = format!("__keyspace@{db}__:");
        let channel = format!("{prefix}{pattern}");
        let events = Events::default();
        let recorded = Arc::clone(&events);
        let client = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("redis client: {e}"));
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = BackgroundThread::spawn("e2e-watch", move |stop| {
            let mut con = match client.get_connection() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            if let Err(e) = crate::redis_server::set_client_name(&mut con, "e2e-watch") {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
            let mut sub = con.as_pubsub();
            if let Err(e) = sub.psubscribe(&channel).and_then(|_| sub.set_read_timeout(Some(Duration::from_millis(20))))
            {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
            let _ = tx.send(Ok(()));
            while !stop.is_raised() {
                match sub.get_message() {
                    Ok(msg) => {
                        let key = msg.get_channel_name().strip_prefix(&prefix).unwrap_or_default().to_owned();
                        let event: String = msg.get_payload().unwrap_or_default();
                        if let Ok(mut ev) = recorded.lock() {
                            ev.push((key, event));
                        }
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(_) => return,
                }
            }
        })
        .unwrap_or_else(|e| panic!("spawn keyspace watcher: {e}"));
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("keyspace watcher subscribe: {e}"),
            Err(e) => panic!("keyspace watcher did not subscribe: {e}"),
        }
        KeyspaceWatcher { events, _thread: thread }
    }

    /// All `(key, event)` pairs so far.
    pub fn events(&self) -> Vec<(String, String)> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` events on `key` were received. Redis delivers notifications in
    /// command order, so once a later write's event is here, every earlier one is too.
    pub fn wait_events_for(&self, key: &str, n: usize) {
        crate::poll::wait_for(crate::poll::DEFAULT_TIMEOUT, &format!("{n} keyspace events on {key}"), || {
            let ev = self.events_for(key);
            if ev.len() >= n {
                Ok(())
            } else {
                Err(format!("{ev:?}"))
            }
        });
    }

    /// Events on exactly `key`.
    pub fn events_for(&self, key: &str) -> Vec<String> {
        self.events().into_iter().filter(|(k, _)| k == key).map(|(_, e)| e).collect()
    }
}
