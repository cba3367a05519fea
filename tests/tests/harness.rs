//! Self-tests of the harness: the guards clean up, the kernel reader and the orchagent stand-in
//! behave like the real things they stand in for. None of these need the daemon binary.

use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::time::Duration;

use portsyncd_e2e::monitor::{state_port_writes, Monitor};
use portsyncd_e2e::netns::ip_bin;
use portsyncd_e2e::orchagent::{CHANNEL, DEL_SET, KEY_SET};
use portsyncd_e2e::{hgetall, wait_for, wait_until, KeyspaceWatcher, NetNs, Orchagent, RedisServer, APPL_DB, STATE_DB};

fn netns_exists(name: &str) -> bool {
    let out = Command::new(ip_bin()).args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).split_whitespace().any(|w| w == name)
}

#[test]
fn redis_server_starts_serves_both_sockets_and_is_removed_on_drop() {
    let redis = RedisServer::start();
    let dir = redis.dir().to_path_buf();
    let pid = redis.pid();
    assert!(redis.socket_path().exists());

    let mut unix = redis.conn(STATE_DB);
    redis::cmd("HSET").arg("PORT_TABLE|Ethernet0").arg("state").arg("ok").query::<()>(&mut unix).unwrap();
    let mut tcp = redis::Client::open(format!("redis://127.0.0.1:{}/{STATE_DB}", redis.port()))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(hgetall(&mut tcp, "PORT_TABLE|Ethernet0").get("state").map(String::as_str), Some("ok"));

    // Persistence is off: no RDB/AOF files ever appear.
    let save: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("save").query(&mut unix).unwrap();
    assert_eq!(save.get(1).map(String::as_str), Some(""));

    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(redis.database_config_path()).unwrap()).unwrap();
    assert_eq!(cfg["INSTANCES"]["redis"]["port"], redis.port());
    assert_eq!(cfg["INSTANCES"]["redis"]["unix_socket_path"], redis.socket_path().display().to_string());
    for (db, id, sep) in [("APPL_DB", 0, ":"), ("CONFIG_DB", 4, "|"), ("STATE_DB", 6, "|"), ("ASIC_DB", 1, ":")] {
        assert_eq!(cfg["DATABASES"][db]["id"], id, "{db}");
        assert_eq!(cfg["DATABASES"][db]["separator"], sep, "{db}");
        assert_eq!(cfg["DATABASES"][db]["instance"], "redis", "{db}");
    }

    drop(unix);
    drop(tcp);
    drop(redis);
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "redis-server {pid} still running");
}

#[test]
fn netns_is_deleted_after_drop_even_when_the_test_panics() {
    let mut name = String::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let ns = NetNs::new();
        name = ns.name().to_owned();
        ns.veth(0);
        assert!(netns_exists(&name));
        panic!("deliberate panic with a namespace alive");
    }));
    assert!(result.is_err());
    assert!(!name.is_empty());
    assert!(!netns_exists(&name), "namespace {name} survived a panicking test");
}

#[test]
fn netns_drop_kills_processes_left_inside() {
    let ns = NetNs::new();
    let name = ns.name().to_owned();
    let mut child = Command::new(ip_bin()).args(["netns", "exec", &name, "sleep", "300"]).spawn().unwrap();
    wait_until(Duration::from_secs(5), "sleep to enter the namespace", || ns.pids().contains(&(child.id() as i32)));
    drop(ns);
    // Reaped promptly means it was killed, not left to run for 300 s.
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(!netns_exists(&name));
}

#[test]
fn netns_enter_moves_only_this_thread_and_drop_brings_it_back() {
    let own = || std::fs::read_link("/proc/thread-self/ns/net").expect("own netns");
    let home = own();
    let ns = NetNs::new();
    let named = std::fs::metadata(format!("/run/netns/{}", ns.name())).expect("namespace file");
    // Started before `enter`: a thread started inside would inherit the namespace.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        let _ = wait.recv();
        own()
    });
    {
        let _inside = ns.enter();
        let inside = own();
        assert_ne!(inside, home);
        assert!(inside.to_string_lossy().contains(&named.ino().to_string()), "{inside:?} is not {}", ns.name());
        go.send(()).expect("wake the other thread");
        assert_eq!(other.join().expect("other thread"), home, "another thread moved too");
    }
    assert_eq!(own(), home, "not back home after drop");
}

#[test]
fn netns_links_report_iff_up_and_iff_running_and_mtu() {
    let ns = NetNs::new();
    ns.veth(3);
    let l = ns.link("Ethernet3").expect("Ethernet3 exists");
    assert!(!l.admin_up && !l.oper_up, "{l:?}");
    assert!(ns.link("pe3").is_some());

    // Admin up without carrier: IFF_UP but not IFF_RUNNING.
    ns.ip(&["link", "set", "Ethernet3", "up"]);
    wait_until(Duration::from_secs(5), "Ethernet3 up, no carrier", || {
        ns.link("Ethernet3").is_some_and(|l| l.admin_up && !l.oper_up)
    });
    // Peer up gives carrier.
    ns.ip(&["link", "set", "pe3", "up"]);
    wait_until(Duration::from_secs(5), "Ethernet3 running", || ns.link("Ethernet3").is_some_and(|l| l.oper_up));
    ns.batch(&["link set Ethernet3 mtu 9000"]);
    assert_eq!(ns.link("Ethernet3").unwrap().mtu, 9000);
    assert!(ns.links().contains_key("lo"));
}

#[test]
fn orchagent_standin_moves_producer_entries_into_port_table() {
    let redis = RedisServer::start();
    let mut con = redis.conn(APPL_DB);
    // A minimal producer (contract §4.2): SADD key set, stage fields, publish if newly added.
    let producer = redis::Script::new(
        r"local added = redis.call('SADD', KEYS[2], ARGV[2])
          for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
          if added > 0 then redis.call('PUBLISH', KEYS[1], ARGV[1]) end",
    );
    let produce = |con: &mut redis::Connection, key: &str, fvs: &[(&str, &str)]| {
        let mut inv = producer.key(CHANNEL);
        inv.key(KEY_SET).key(format!("_PORT_TABLE:{key}")).arg("G").arg(key);
        for (f, v) in fvs {
            inv.arg(*f).arg(*v);
        }
        inv.invoke::<()>(con).unwrap();
    };

    // Written before the consumer exists: picked up by its poll, like SCARD seeding.
    produce(&mut con, "Ethernet0", &[("lanes", "0,1,2,3"), ("speed", "100000")]);
    let orch = Orchagent::start(&redis);
    produce(&mut con, "PortConfigDone", &[("count", "1")]);

    wait_for(Duration::from_secs(5), "both entries consumed", || {
        let e0 = hgetall(&mut con, "PORT_TABLE:Ethernet0");
        let done = hgetall(&mut con, "PORT_TABLE:PortConfigDone");
        if e0.get("speed").map(String::as_str) == Some("100000") && done.get("count").map(String::as_str) == Some("1") {
            Ok(())
        } else {
            Err(format!("Ethernet0 {e0:?}, PortConfigDone {done:?}"))
        }
    });
    assert_eq!(hgetall(&mut con, "PORT_TABLE:Ethernet0").len(), 2);
    assert!(hgetall(&mut con, "_PORT_TABLE:Ethernet0").is_empty(), "staging hash left behind");
    let pending: u64 = redis::cmd("SCARD").arg(KEY_SET).query(&mut con).unwrap();
    assert_eq!(pending, 0);
    assert_eq!(orch.pops(), 2);

    // Merge: a later set adds/overwrites fields without removing others.
    produce(&mut con, "Ethernet0", &[("speed", "40000")]);
    wait_until(Duration::from_secs(5), "speed updated", || {
        hgetall(&mut con, "PORT_TABLE:Ethernet0").get("speed").map(String::as_str) == Some("40000")
    });
    assert_eq!(hgetall(&mut con, "PORT_TABLE:Ethernet0").get("lanes").map(String::as_str), Some("0,1,2,3"));

    // Delete marker: the consumed hash is removed.
    redis::pipe()
        .cmd("SADD")
        .arg(KEY_SET)
        .arg("Ethernet0")
        .cmd("SADD")
        .arg(DEL_SET)
        .arg("Ethernet0")
        .cmd("PUBLISH")
        .arg(CHANNEL)
        .arg("G")
        .query::<()>(&mut con)
        .unwrap();
    wait_until(Duration::from_secs(5), "Ethernet0 deleted", || hgetall(&mut con, "PORT_TABLE:Ethernet0").is_empty());
    orch.wait_idle(&redis, Duration::from_secs(5));
    assert!(orch.popped().iter().any(|(k, fvs)| k == "Ethernet0" && fvs.is_empty()));
}

#[test]
fn keyspace_watcher_records_writes_and_deletes_in_order() {
    let redis = RedisServer::start();
    let watcher = KeyspaceWatcher::start(&redis, STATE_DB, "PORT_TABLE|*");
    let mut con = redis.conn(STATE_DB);
    redis::cmd("HSET").arg("PORT_TABLE|Ethernet0").arg("state").arg("ok").query::<()>(&mut con).unwrap();
    redis::cmd("HSET").arg("OTHER|x").arg("a").arg("b").query::<()>(&mut con).unwrap();
    redis::cmd("DEL").arg("PORT_TABLE|Ethernet0").query::<()>(&mut con).unwrap();
    wait_until(Duration::from_secs(5), "two events", || watcher.events().len() >= 2);
    assert_eq!(watcher.events_for("PORT_TABLE|Ethernet0"), vec!["hset".to_owned(), "del".to_owned()]);
    assert!(watcher.events_for("OTHER|x").is_empty());
}

#[test]
fn wait_for_panics_with_expectation_and_last_seen_value() {
    let err = catch_unwind(|| {
        wait_for::<()>(Duration::from_millis(100), "the answer to be 42", || Err("it was 41".to_owned()))
    })
    .unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("the answer to be 42") && msg.contains("it was 41"), "{msg}");
}

/// Stages `keys` like the producer script and publishes `publishes` times.
fn produce_keys(con: &mut redis::Connection, keys: &[String], publishes: usize) {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("SADD").arg(KEY_SET).arg(k).ignore();
        pipe.cmd("HSET").arg(format!("_PORT_TABLE:{k}")).arg("f").arg("v").ignore();
    }
    for _ in 0..publishes {
        pipe.cmd("PUBLISH").arg(CHANNEL).arg("G").ignore();
    }
    pipe.query::<()>(con).unwrap();
}

#[test]
fn strict_orchagent_pops_at_most_batch_keys_once_per_publish_and_never_polls() {
    let redis = RedisServer::start();
    let orch = Orchagent::start_strict(&redis, 2);
    let mut con = redis.conn(APPL_DB);
    let keys: Vec<String> = (0..5).map(|i| format!("Ethernet{i}")).collect();
    produce_keys(&mut con, &keys, 1);
    wait_until(Duration::from_secs(5), "one pops call", || orch.pop_calls() == 1);
    // No timer: nothing more happens without another PUBLISH.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((orch.notifications(), orch.pop_calls(), orch.pops()), (1, 1, 2));
    assert_eq!(orch.pending(&redis).len(), 3);
    produce_keys(&mut con, &[], 1);
    wait_until(Duration::from_secs(5), "a second pops call", || orch.pop_calls() == 2);
    assert_eq!(orch.pops(), 4);
    assert_eq!(orch.pending(&redis).len(), 1);
    let consumed = (0..5).filter(|i| !hgetall(&mut con, &format!("PORT_TABLE:Ethernet{i}")).is_empty()).count();
    assert_eq!(consumed, 4);

    // Keys pending when a consumer starts count as notifications (ConsumerStateTable's SCARD).
    drop(orch);
    let late = Orchagent::start_strict(&redis, 2);
    wait_until(Duration::from_secs(5), "the pending key popped at start", || late.pops() == 1);
    assert!(late.pending(&redis).is_empty());
}

#[test]
fn redis_restart_with_seeds_before_clients_reconnect_on_the_same_socket_and_port() {
    let mut redis = RedisServer::start();
    let (socket, port, pid) = (redis.socket_path().to_path_buf(), redis.port(), redis.pid());
    let mut con = redis.conn(STATE_DB);
    redis::cmd("SET").arg("before").arg("1").query::<()>(&mut con).unwrap();
    let seen_during_seed = std::cell::Cell::new(false);
    redis.restart_with(|r| {
        let mut c = r.conn(STATE_DB);
        redis::cmd("SET").arg("seeded").arg("1").query::<()>(&mut c).unwrap();
        // Clients of the canonical path cannot reach the new server yet.
        seen_during_seed.set(std::os::unix::net::UnixStream::connect(&socket).is_ok());
    });
    assert!(!seen_during_seed.get(), "the canonical socket answered before seeding was done");
    assert_eq!((redis.socket_path(), redis.port()), (socket.as_path(), port));
    assert_ne!(redis.pid(), pid);
    assert!(redis::cmd("GET").arg("before").query::<Option<String>>(&mut con).is_err(), "old connection must be dead");
    let mut con = redis.conn(STATE_DB);
    assert_eq!(redis::cmd("GET").arg("before").query::<Option<String>>(&mut con).unwrap(), None);
    assert_eq!(redis::cmd("GET").arg("seeded").query::<Option<String>>(&mut con).unwrap().as_deref(), Some("1"));
    let mut tcp =
        redis::Client::open(format!("redis://127.0.0.1:{port}/{STATE_DB}")).unwrap().get_connection().unwrap();
    assert_eq!(redis::cmd("GET").arg("seeded").query::<Option<String>>(&mut tcp).unwrap().as_deref(), Some("1"));
    let old = std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(!old, "the killed redis-server {pid} is still there");
}

#[test]
fn kill_daemon_clients_kills_unnamed_connections_and_spares_the_harness() {
    let redis = RedisServer::start();
    let orch = Orchagent::start(&redis);
    let mon = Monitor::start(&redis);
    let mut stranger = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    redis::cmd("PING").query::<String>(&mut stranger).unwrap();
    let mut mine = redis.conn(STATE_DB);
    let killed = redis.kill_daemon_clients();
    assert_eq!(killed.len(), 1, "{killed:?}");
    assert_eq!(killed[0].name, "");
    assert!(redis::cmd("PING").query::<String>(&mut stranger).is_err());
    redis::cmd("HSET").arg("PORT_TABLE|Ethernet0").arg("mtu").arg("1").query::<()>(&mut mine).unwrap();
    mon.sync(&redis);
    assert_eq!(state_port_writes(&mon.commands()), [("HSET".to_owned(), "Ethernet0".to_owned())]);
    assert!(orch.last_error().is_none(), "orchagent stand-in lost its connection: {:?}", orch.last_error());
    assert!(redis.kill_daemon_clients().is_empty());
}

#[test]
fn paused_redis_answers_again_when_the_guard_drops() {
    let redis = RedisServer::start();
    let paused = redis.pause();
    let client = redis::Client::open(redis.url()).unwrap();
    let answered = client.get_connection_with_timeout(Duration::from_millis(300)).and_then(|mut con| {
        con.set_read_timeout(Some(Duration::from_millis(300)))?;
        redis::cmd("PING").query::<String>(&mut con)
    });
    assert!(answered.is_err(), "a stopped server must not answer: {answered:?}");
    drop(paused);
    let mut con = redis.conn(APPL_DB);
    assert_eq!(redis::cmd("PING").query::<String>(&mut con).unwrap(), "PONG");
}
