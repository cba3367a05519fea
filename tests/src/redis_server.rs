//! A private `redis-server` per test: loopback TCP port plus a unix socket in its own temporary
//! directory, no persistence, and a SONiC `database_config.json` pointing at it.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Attempts at finding a free port; another test may grab the one we probed before redis binds it.
const START_ATTEMPTS: usize = 5;

/// A running redis-server that is killed, and whose directory is removed, on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    socket: PathBuf,
    db_config: PathBuf,
    // Dropped after `child` is reaped (see Drop), which removes socket, log and config.
    dir: TempDir,
}

impl RedisServer {
    /// Starts redis-server and waits until it answers PING on the unix socket.
    pub fn start() -> Self {
        if which("redis-server").is_none() {
            panic!("redis-server not found: run `bash scripts/install-deps.sh`");
        }
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start() {
                Ok(server) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts: {last_err}");
    }

    fn try_start() -> Result<Self, String> {
        let dir = tempfile::Builder::new().prefix("psd-redis-").tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let port = free_port().map_err(|e| format!("free port: {e}"))?;
        let socket = dir.path().join("redis.sock");
        let child = spawn_server(dir.path(), port, &socket)?;
        let db_config = dir.path().join("database_config.json");
        let mut server = RedisServer { child, port, socket, db_config, dir };
        server.write_database_config().map_err(|e| format!("database_config.json: {e}"))?;
        server.wait_answering()?;
        Ok(server)
    }

    /// Waits until the server answers PING on its unix socket (or has exited).
    fn wait_answering(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = fs::read_to_string(self.log_path()).unwrap_or_default();
                return Err(format!("redis-server exited with {status}: {log}"));
            }
            if self.ping().is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("redis-server did not answer PING within 10 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn ping(&self) -> redis::RedisResult<()> {
        let client = redis::Client::open(self.url())?;
        let mut con = client.get_connection_with_timeout(Duration::from_millis(500))?;
        redis::cmd("PING").query::<String>(&mut con).map(|_| ())
    }

    fn write_database_config(&self) -> std::io::Result<()> {
        let db = |id: u32, sep: &str| serde_json::json!({"id": id, "separator": sep, "instance": "redis"});
        let cfg = serde_json::json!({
            "INSTANCES": {
                "redis": {
                    "hostname": "127.0.0.1",
                    "port": self.port,
                    "unix_socket_path": self.socket.display().to_string(),
                }
            },
            "DATABASES": {
                "APPL_DB": db(0, ":"),
                "ASIC_DB": db(1, ":"),
                "COUNTERS_DB": db(2, ":"),
                "LOGLEVEL_DB": db(3, ":"),
                "CONFIG_DB": db(4, "|"),
                "FLEX_COUNTER_DB": db(5, ":"),
                "STATE_DB": db(6, "|"),
            },
            "VERSION": "1.0",
        });
        let text = serde_json::to_string_pretty(&cfg).map_err(std::io::Error::other)?;
        fs::write(&self.db_config, text)
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// `unix://<socket>` (the daemon's `--redis` value).
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `unix://<socket>?db=<db>`.
    pub fn url_db(&self, db: u32) -> String {
        format!("unix://{}?db={db}", self.socket.display())
    }

    /// The SONiC `database_config.json` describing this server.
    pub fn database_config_path(&self) -> &Path {
        &self.db_config
    }

    /// The server's private directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// pid of the redis-server process (to stop/restart it in fault tests; changes on
    /// [`RedisServer::restart`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A new synchronous connection with database `db` selected, named
    /// [`HARNESS_CLIENT_NAME`] so that [`RedisServer::kill_daemon_clients`] spares it.
    pub fn conn(&self, db: u32) -> redis::Connection {
        let client = redis::Client::open(self.url_db(db))
            .unwrap_or_else(|e| panic!("redis client for {}: {e}", self.url_db(db)));
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url_db(db)));
        set_client_name(&mut con, HARNESS_CLIENT_NAME).unwrap_or_else(|e| panic!("CLIENT SETNAME: {e}"));
        con
    }

    /// SIGSTOP: the server stops answering (connections hang, new ones queue in the backlog)
    /// until [`RedisServer::sigcont`]. Prefer [`RedisServer::pause`], which resumes on drop.
    pub fn sigstop(&self) {
        kill(self.nix_pid(), Signal::SIGSTOP).unwrap_or_else(|e| panic!("SIGSTOP redis-server: {e}"));
    }

    /// SIGCONT after [`RedisServer::sigstop`].
    pub fn sigcont(&self) {
        kill(self.nix_pid(), Signal::SIGCONT).unwrap_or_else(|e| panic!("SIGCONT redis-server: {e}"));
    }

    /// SIGSTOP now, SIGCONT when the guard is dropped (also when the test panics, so the
    /// fixture can tear down).
    pub fn pause(&self) -> Paused {
        self.sigstop();
        Paused { pid: self.nix_pid() }
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// SIGKILL: the server dies without saving; its socket file stays behind, so clients get
    /// ECONNREFUSED until [`RedisServer::restart`].
    pub fn kill9(&mut self) {
        let _ = kill(self.nix_pid(), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server (SIGKILL) if it is running and starts a new, empty one on the same unix
    /// socket path and TCP port: what a client sees when Redis restarts without persistence.
    pub fn restart(&mut self) {
        self.restart_with(|_| {});
    }

    /// [`RedisServer::restart`], but `seed` runs against the new server before any client can
    /// reach it: the new server listens on a side socket first, and only once `seed` returned
    /// is that socket renamed over the canonical path (atomically replacing the dead server's
    /// stale socket file). `seed` may use [`RedisServer::conn`] and the `db` helpers as usual.
    /// The TCP port is live from the start (clients of these tests use the unix socket).
    pub fn restart_with(&mut self, seed: impl FnOnce(&RedisServer)) {
        self.kill9();
        let canonical = self.socket.clone();
        let side = self.dir.path().join("redis.sock.restarting");
        let _ = fs::remove_file(&side);
        // The TCP port may be taken by someone else between the kill and the new bind; retry.
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            match spawn_server(self.dir.path(), self.port, &side) {
                Ok(child) => {
                    self.child = child;
                    self.socket = side.clone();
                    match self.wait_answering() {
                        Ok(()) => {
                            last_err.clear();
                            break;
                        }
                        Err(e) => {
                            let _ = self.child.kill();
                            let _ = self.child.wait();
                            last_err = e;
                        }
                    }
                }
                Err(e) => last_err = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(last_err.is_empty(), "redis-server did not restart: {last_err}");
        seed(self);
        fs::rename(&side, &canonical)
            .unwrap_or_else(|e| panic!("rename {} to {}: {e}", side.display(), canonical.display()));
        self.socket = canonical;
    }

    /// Connections waiting in the unix socket's accept backlog (the listening socket's Recv-Q,
    /// from `ss -xl`): while the server is stopped ([`RedisServer::pause`]), each client that
    /// connects shows up here, which tells a test that a client has reached the point of
    /// waiting for Redis.
    pub fn pending_connections(&self) -> u32 {
        let ss = which("ss")
            .or_else(|| ["/usr/bin/ss", "/bin/ss", "/usr/sbin/ss"].iter().map(PathBuf::from).find(|p| p.is_file()))
            .unwrap_or_else(|| panic!("`ss` (iproute2) not found: run `bash scripts/install-deps.sh`"));
        let out =
            Command::new(ss).args(["-xlH", "src"]).arg(&self.socket).output().unwrap_or_else(|e| panic!("ss -xl: {e}"));
        // `u_str LISTEN <recv-q> <send-q> <path> <inode> * 0`
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u32>().ok())
            .sum()
    }

    /// `CLIENT LIST`, parsed.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let mut con = self.conn(0);
        let text: String =
            redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap_or_else(|e| panic!("CLIENT LIST: {e}"));
        text.lines().filter_map(ClientInfo::parse).collect()
    }

    /// Kills (`CLIENT KILL ID`) every client connection that is not the harness's own, i.e.
    /// whose name does not start with [`HARNESS_CLIENT_PREFIX`]: the daemon's connections (it
    /// names none today, or names them after itself), whatever their type. The harness names all
    /// of its connections ([`RedisServer::conn`], the orchagent stand-in, the MONITOR and
    /// keyspace recorders), so they survive; the connection issuing the kills is the harness's
    /// too. Returns the names and addresses of the clients killed.
    pub fn kill_daemon_clients(&self) -> Vec<ClientInfo> {
        let mut con = self.conn(0);
        let mut killed = Vec::new();
        for c in self.clients() {
            if c.name.starts_with(HARNESS_CLIENT_PREFIX) {
                continue;
            }
            let n: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(c.id)
                .query(&mut con)
                .unwrap_or_else(|e| panic!("CLIENT KILL ID {}: {e}", c.id));
            if n > 0 {
                killed.push(c);
            }
        }
        killed
    }

    /// `INFO <section>` as field -> value.
    pub fn info(&self, section: &str) -> std::collections::BTreeMap<String, String> {
        let mut con = self.conn(0);
        let text: String =
            redis::cmd("INFO").arg(section).query(&mut con).unwrap_or_else(|e| panic!("INFO {section}: {e}"));
        text.lines().filter_map(|l| l.trim_end().split_once(':')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }
}

/// Client names of the harness's own connections start with this.
pub const HARNESS_CLIENT_PREFIX: &str = "e2e-";
/// Name of connections made by [`RedisServer::conn`].
pub const HARNESS_CLIENT_NAME: &str = "e2e-harness";

/// `CLIENT SETNAME name` on a synchronous connection.
pub fn set_client_name(con: &mut redis::Connection, name: &str) -> redis::RedisResult<()> {
    redis::cmd("CLIENT").arg("SETNAME").arg(name).query::<()>(con)
}

/// One line of `CLIENT LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// `id`.
    pub id: u64,
    /// `name` (empty when the client set none).
    pub name: String,
    /// `addr`.
    pub addr: String,
    /// `flags` (e.g. `N`, `P` for a subscriber, `O` for MONITOR).
    pub flags: String,
    /// `cmd`: the last command.
    pub cmd: String,
}

impl ClientInfo {
    fn parse(line: &str) -> Option<ClientInfo> {
        let field = |k: &str| {
            line.split(' ').find_map(|kv| kv.strip_prefix(k).and_then(|r| r.strip_prefix('='))).unwrap_or("").to_owned()
        };
        Some(ClientInfo {
            id: field("id").parse().ok()?,
            name: field("name"),
            addr: field("addr"),
            flags: field("flags"),
            cmd: field("cmd"),
        })
    }
}

/// SIGCONTs redis-server on drop; see [`RedisServer::pause`].
#[derive(Debug)]
pub struct Paused {
    pid: Pid,
}

impl Paused {
    /// Resumes now (same as dropping the guard).
    pub fn resume(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGCONT);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// Starts redis-server on `port` and `socket` with `dir` as its working directory: no
/// persistence (`save ""`, no AOF), log in `dir/redis.log` (appended across restarts).
fn spawn_server(dir: &Path, port: u16, socket: &Path) -> Result<Child, String> {
    Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .arg("--unixsocket")
        .arg(socket)
        .args(["--unixsocketperm", "700"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(["--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn redis-server: {e}"))
}

fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// First `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
