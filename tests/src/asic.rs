//! Multi-ASIC stand-ins: an "ASIC" is a network namespace named `asicN` with its own
//! redis-server listening inside it, and its own `database_config.json`; a `database_global.json`
//! includes them in SONiC's directory layout; [`HostDaemon`] is portsyncd started on the host
//! (not inside any namespace) with `--namespace`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::daemon::{Daemon, DaemonOpts, RunOutput, Stats};
use crate::netns::{ip_bin, NetNs};
use crate::orchagent::Orchagent;
use crate::redis_server::RedisServer;
use crate::Capture;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh ASIC-like namespace name, `asic<pid><counter, 3 digits>`: unique among concurrent
/// test processes (nextest runs each test in its own) and among the tests of one process, and
/// far from a real switch's `asic0`..`asic15`.
pub fn asic_name() -> String {
    format!("asic{}{:03}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed) % 1000)
}

/// How an ASIC's database_config.json tells the daemon to reach its Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// `127.0.0.1:<port>` only: reachable only from inside the ASIC's network namespace.
    Tcp,
    /// The unix socket (which swss-common prefers when an instance has one).
    Unix,
}

/// A second name for an existing namespace (`ip netns attach`), removed on drop; removing it
/// leaves the namespace itself alone.
#[derive(Debug)]
struct NsAlias {
    name: String,
}

impl NsAlias {
    fn attach(name: &str, pid: u32) -> Self {
        let exists = ["/run/netns", "/var/run/netns"].iter().any(|d| Path::new(d).join(name).exists());
        assert!(
            !exists,
            "network namespace {name} already exists (left over from a killed run?): `ip netns del {name}`"
        );
        let out = Command::new(ip_bin())
            .args(["netns", "attach", name, &pid.to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns attach {name}: {e}"));
        assert!(out.status.success(), "ip netns attach {name} {pid}: {}", String::from_utf8_lossy(&out.stderr));
        NsAlias { name: name.to_owned() }
    }
}

impl Drop for NsAlias {
    fn drop(&mut self) {
        crate::netns::del_quietly(&self.name);
    }
}

/// One ASIC: namespace `asicN` with ports, its Redis started inside it (CONFIG_DB ports seeded),
/// an orchagent stand-in, and its database_config.json.
#[derive(Debug)]
pub struct Asic {
    // Field order is drop order: the orchagent stand-in before its Redis, Redis before the
    // namespace it lives in, the `asicN` name before the namespace behind it.
    /// Consumer of APPL_DB PORT_TABLE.
    pub orch: Orchagent,
    /// The ASIC's redis-server, listening on 127.0.0.1 inside the namespace and on a unix socket.
    pub redis: RedisServer,
    alias: NsAlias,
    /// The namespace (also reachable as [`Asic::name`]; the harness's helpers use this handle).
    pub ns: NetNs,
    /// CONFIG_DB ports (`Ethernet<i>` for the given `i`), not yet created in the kernel.
    pub ports: Vec<String>,
    reach: Reach,
}

impl Asic {
    /// Creates the namespace (loopback up), starts redis-server inside it, seeds CONFIG_DB with
    /// `Ethernet<i>` for each of `ports` and names the namespace [`asic_name`].
    pub fn new(ports: impl IntoIterator<Item = u32>, reach: Reach) -> Self {
        crate::require_root();
        let ns = NetNs::new();
        ns.ip(&["link", "set", "lo", "up"]);
        let redis = {
            // A child inherits the network namespace of the thread that starts it.
            let _inside = ns.enter();
            RedisServer::start()
        };
        let alias = NsAlias::attach(&asic_name(), redis.pid());
        let ports = crate::db::seed_config_port_list(&redis, ports);
        let orch = Orchagent::start(&redis);
        Asic { orch, redis, alias, ns, ports, reach }
    }

    /// The `asicN` name the daemon is given.
    pub fn name(&self) -> &str {
        &self.alias.name
    }

    /// Creates `Ethernet<i>`/`pe<i>` for each `i` and brings both ends up.
    pub fn create_ports(&self, ports: impl IntoIterator<Item = u32> + Clone) {
        self.ns.veths(ports.clone());
        self.ns.ports_up(ports);
    }

    fn database_config(&self) -> serde_json::Value {
        let mut instance = serde_json::json!({"hostname": "127.0.0.1", "port": self.redis.port()});
        if self.reach == Reach::Unix {
            instance["unix_socket_path"] = self.redis.socket_path().display().to_string().into();
        }
        let db = |id: u32, sep: &str| serde_json::json!({"id": id, "separator": sep, "instance": "redis"});
        serde_json::json!({
            "INSTANCES": {"redis": instance},
            "DATABASES": {
                "APPL_DB": db(0, ":"),
                "COUNTERS_DB": db(2, ":"),
                "CONFIG_DB": db(4, "|"),
                "STATE_DB": db(6, "|"),
            },
            "VERSION": "1.0",
        })
    }
}

/// SONiC's file layout under a temporary root: `<root>/redis/sonic-db/database_global.json`
/// including `../../redis<k>/sonic-db/database_config.json` for the k-th ASIC (as
/// `/var/run/redis<k>` on a switch), plus the host's own entry without a namespace.
#[derive(Debug)]
pub struct GlobalConfig {
    root: TempDir,
}

impl GlobalConfig {
    /// Writes each ASIC's database_config.json and a database_global.json including `asics`
    /// under their names, plus `extra` INCLUDES entries as given.
    pub fn write(asics: &[&Asic], extra: &[serde_json::Value]) -> Self {
        let root = tempfile::Builder::new().prefix("psd-asic-").tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        // The host's entry comes first on a switch; its file is never read for a namespace.
        let mut includes = vec![serde_json::json!({"include": "../../redis/sonic-db/database_config.json"})];
        for (k, asic) in asics.iter().enumerate() {
            let dir = root.path().join(format!("redis{k}/sonic-db"));
            write_json(&dir.join("database_config.json"), &asic.database_config());
            includes.push(serde_json::json!({
                "namespace": asic.name(),
                "include": format!("../../redis{k}/sonic-db/database_config.json"),
            }));
        }
        includes.extend(extra.iter().cloned());
        let global = GlobalConfig { root };
        write_json(&global.path(), &serde_json::json!({"INCLUDES": includes, "VERSION": "1.0"}));
        global
    }

    /// The database_global.json.
    pub fn path(&self) -> PathBuf {
        self.root.path().join("redis/sonic-db/database_global.json")
    }

    /// The root directory (for extra files an entry may include).
    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

fn write_json(path: &Path, value: &serde_json::Value) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|e| panic!("json: {e}"));
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// portsyncd started on the host (no `ip netns exec`) with `--namespace <asic>
/// --database-global-config <file>`: a [`Daemon`] (private stats/state directory and log,
/// stopped on drop, log tail printed if the test is panicking) that checks its capture mode.
#[derive(Debug)]
pub struct HostDaemon {
    daemon: Daemon,
    capture: Capture,
    namespace: String,
}

impl HostDaemon {
    /// Starts the daemon for `asic` (not waited for; see [`HostDaemon::wait_ready`]).
    pub fn start(asic: &Asic, global: &GlobalConfig, capture: Capture, extra: &[&str]) -> Self {
        let opts = DaemonOpts::new(capture)
            .on_host()
            .redis_args([
                "--namespace".to_owned(),
                asic.name().to_owned(),
                "--database-global-config".to_owned(),
                global.path().display().to_string(),
            ])
            .args(extra.iter().copied());
        let daemon = Daemon::start(&asic.ns, &asic.redis, opts);
        HostDaemon { daemon, capture, namespace: asic.name().to_owned() }
    }

    /// Runs the binary on the host with exactly `args` until it exits or `timeout` passes (then
    /// it is killed and `status` is `None`).
    pub fn run_once(args: &[&str], timeout: Duration) -> RunOutput {
        Daemon::run_once_on_host(args, timeout)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// The current stats snapshot, if one was written.
    pub fn stats(&self) -> Option<Stats> {
        self.daemon.stats()
    }

    /// Whether the process is still running (reaps it if not).
    pub fn is_running(&mut self) -> bool {
        self.daemon.is_running()
    }

    /// Waits for `initial_sync_done` and checks that the daemon captures as asked.
    pub fn wait_ready(&mut self) -> Stats {
        let s = self.daemon.wait_ready();
        assert_eq!(
            s.capture_mode(),
            Some(self.capture.as_str()),
            "daemon for {} started with --capture {} reports {:?} (fallback reason {:?})",
            self.namespace,
            self.capture,
            s.capture_mode(),
            s.capture_fallback_reason()
        );
        s
    }

    /// The network namespace the process is in, as `/proc/<pid>/ns/net` names it
    /// (`net:[<inode>]`).
    pub fn netns_id(&self) -> String {
        ns_id(&format!("/proc/{}/ns/net", self.daemon.pid()))
    }
}

/// `net:[<inode>]` of a namespace file (`/proc/<pid>/ns/net`, `/run/netns/<name>`).
pub fn ns_id(path: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    if path.starts_with("/proc/") {
        return fs::read_link(path).map(|p| p.display().to_string()).unwrap_or_else(|e| panic!("readlink {path}: {e}"));
    }
    let ino = fs::metadata(path).map(|m| m.ino()).unwrap_or_else(|e| panic!("stat {path}: {e}"));
    format!("net:[{ino}]")
}
