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
        let log = dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let db_config = dir.path().join("database_config.json");
        let mut server = RedisServer { child, port, socket, db_config, dir };
        server.write_database_config().map_err(|e| format!("database_config.json: {e}"))?;

        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("redis-server exited with {status}: {log}"));
            }
            if server.ping().is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err("redis-server did not answer PING within 10 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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

    /// pid of the redis-server process (to stop/restart it in fault tests).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A new synchronous connection with database `db` selected.
    pub fn conn(&self, db: u32) -> redis::Connection {
        let client = redis::Client::open(self.url_db(db))
            .unwrap_or_else(|e| panic!("redis client for {}: {e}", self.url_db(db)));
        client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url_db(db)))
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

fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// First `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
