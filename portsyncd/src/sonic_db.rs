//! SONiC database layout: `database_config.json` (or a plain URL) -> where each database lives,
//! its id and key separator; plus the table and key names portsyncd reads and writes. On a
//! multi-ASIC host, `database_global.json` + an ASIC namespace -> that namespace's
//! `database_config.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use serde::Deserialize;

use crate::config::RedisTarget;

/// APPL_DB table written through the ProducerStateTable protocol and read (consumed) back.
pub const PORT_TABLE: &str = "PORT_TABLE";
/// CONFIG_DB table of configured ports.
pub const CFG_PORT_TABLE: &str = "PORT";
/// APPL_DB marker written after all CONFIG_DB ports (cold start only).
pub const PORT_CONFIG_DONE: &str = "PortConfigDone";
/// APPL_DB marker written once every configured port has been seen.
pub const PORT_INIT_DONE: &str = "PortInitDone";
/// Our application name in WARM_RESTART_TABLE and LOGGER.
pub const APP_NAME: &str = "portsyncd";
/// The docker portsyncd belongs to (WARM_RESTART_ENABLE_TABLE|swss).
pub const DOCKER_NAME: &str = "swss";

/// Databases portsyncd uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Db {
    /// APPL_DB (id 0, `:`).
    Appl,
    /// CONFIG_DB (id 4, `|`).
    Config,
    /// STATE_DB (id 6, `|`).
    State,
    /// COUNTERS_DB (id 2, `:`): component stats.
    Counters,
}

impl Db {
    /// The name used in database_config.json.
    pub const fn name(self) -> &'static str {
        match self {
            Db::Appl => "APPL_DB",
            Db::Config => "CONFIG_DB",
            Db::State => "STATE_DB",
            Db::Counters => "COUNTERS_DB",
        }
    }

    const fn standard_id(self) -> i64 {
        match self {
            Db::Appl => 0,
            Db::Config => 4,
            Db::State => 6,
            Db::Counters => 2,
        }
    }

    const fn standard_separator(self) -> char {
        match self {
            Db::Appl | Db::Counters => ':',
            Db::Config | Db::State => '|',
        }
    }
}

/// Where one database lives and how its keys are spelled.
#[derive(Debug, Clone)]
pub struct DbLocation {
    /// Connection info with the database id selected.
    pub info: ConnectionInfo,
    /// Database id.
    pub id: i64,
    /// Key separator (`:` or `|`).
    pub separator: char,
}

impl DbLocation {
    /// `<table><sep><key>`.
    pub fn key(&self, table: &str, key: &str) -> String {
        let mut s = String::with_capacity(table.len() + 1 + key.len());
        s.push_str(table);
        s.push(self.separator);
        s.push_str(key);
        s
    }
}

/// The three databases portsyncd uses.
#[derive(Debug, Clone)]
pub struct SonicDbs {
    /// APPL_DB.
    pub appl: DbLocation,
    /// CONFIG_DB.
    pub config: DbLocation,
    /// STATE_DB.
    pub state: DbLocation,
    /// COUNTERS_DB, where the component stats go; `None` when database_config.json has none.
    pub counters: Option<DbLocation>,
}

/// database_config.json could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SonicDbError {
    /// File missing or unreadable.
    #[error("cannot read database config {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not valid JSON of the expected shape.
    #[error("invalid database config {path}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A database or instance entry is missing or unusable.
    #[error("database config {path}: {reason}")]
    Layout {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The `--redis` URL is not a Redis URL.
    #[error("invalid redis URL `{url}`")]
    Url {
        /// The URL.
        url: String,
        /// Cause.
        #[source]
        source: redis::RedisError,
    },
    /// database_global.json missing or unreadable.
    #[error("cannot read database global config {path} (looking up namespace `{namespace}`)")]
    GlobalRead {
        /// File.
        path: PathBuf,
        /// The namespace looked up.
        namespace: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// database_global.json is not valid JSON of the expected shape.
    #[error("invalid database global config {path} (looking up namespace `{namespace}`)")]
    GlobalParse {
        /// File.
        path: PathBuf,
        /// The namespace looked up.
        namespace: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// database_global.json has no usable `INCLUDES` entry for the namespace.
    #[error("database global config {path} has no INCLUDES entry for namespace `{namespace}` (it has: {known})")]
    NoNamespace {
        /// File.
        path: PathBuf,
        /// The namespace looked up.
        namespace: String,
        /// The namespaces the file does name, comma-separated (`none` if none).
        known: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
struct DatabaseConfigFile {
    instances: HashMap<String, Instance>,
    databases: HashMap<String, DatabaseEntry>,
}

#[derive(Debug, Deserialize)]
struct Instance {
    hostname: Option<String>,
    port: Option<u16>,
    unix_socket_path: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DatabaseEntry {
    id: i64,
    separator: String,
    instance: String,
}

impl SonicDbs {
    /// Resolves the configured target.
    pub fn resolve(target: &RedisTarget) -> Result<Self, SonicDbError> {
        match target {
            RedisTarget::DatabaseConfig(path) => Self::from_database_config(path),
            RedisTarget::Url(url) => Self::from_url(url),
        }
    }

    /// All databases on one server, under their standard ids and separators.
    pub fn from_url(url: &str) -> Result<Self, SonicDbError> {
        let base = url.into_connection_info().map_err(|source| SonicDbError::Url { url: url.to_owned(), source })?;
        let loc = |db: Db| DbLocation {
            info: with_db(base.clone(), db.standard_id()),
            id: db.standard_id(),
            separator: db.standard_separator(),
        };
        Ok(Self {
            appl: loc(Db::Appl),
            config: loc(Db::Config),
            state: loc(Db::State),
            counters: Some(loc(Db::Counters)),
        })
    }

    /// Parses SONiC's database_config.json. Like swss-common, a unix socket is preferred over TCP
    /// when the instance has one.
    pub fn from_database_config(path: &Path) -> Result<Self, SonicDbError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SonicDbError::Read { path: path.to_owned(), source })?;
        Self::from_database_config_text(path, &text)
    }

    /// [`from_database_config`](Self::from_database_config) on the file's text; `path` only
    /// names the file in errors. No I/O (the `database_config` fuzz target drives it).
    pub fn from_database_config_text(path: &Path, text: &str) -> Result<Self, SonicDbError> {
        let file: DatabaseConfigFile =
            serde_json::from_str(text).map_err(|source| SonicDbError::Parse { path: path.to_owned(), source })?;
        let layout = |reason: String| SonicDbError::Layout { path: path.to_owned(), reason };
        let loc = |db: Db| -> Result<DbLocation, SonicDbError> {
            let entry = file.databases.get(db.name()).ok_or_else(|| layout(format!("no DATABASES.{}", db.name())))?;
            let separator = match entry.separator.as_str() {
                ":" => ':',
                "|" => '|',
                other => return Err(layout(format!("{} separator `{other}` is not `:` or `|`", db.name()))),
            };
            let inst = file
                .instances
                .get(&entry.instance)
                .ok_or_else(|| layout(format!("{} names unknown instance `{}`", db.name(), entry.instance)))?;
            let addr = match (&inst.unix_socket_path, &inst.hostname, inst.port) {
                (Some(sock), _, _) if !sock.is_empty() => ConnectionAddr::Unix(PathBuf::from(sock)),
                (_, Some(host), Some(port)) => ConnectionAddr::Tcp(host.clone(), port),
                _ => {
                    return Err(layout(format!(
                        "instance `{}` has neither unix_socket_path nor hostname+port",
                        entry.instance
                    )))
                }
            };
            let info =
                addr.into_connection_info().map_err(|e| layout(format!("instance `{}`: {e}", entry.instance)))?;
            Ok(DbLocation { info: with_db(info, entry.id), id: entry.id, separator })
        };
        Ok(Self {
            appl: loc(Db::Appl)?,
            config: loc(Db::Config)?,
            state: loc(Db::State)?,
            // Optional: without it the daemon runs, and says its stats have nowhere to go.
            counters: loc(Db::Counters).ok(),
        })
    }
}

/// database_global.json: one `INCLUDES` entry per Redis, the host's without a namespace.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
struct GlobalConfigFile {
    includes: Vec<Include>,
}

// Unknown fields (newer SONiC adds e.g. `container_name` for DPUs) are accepted: they do not
// change where a namespace's file is.
#[derive(Debug, Deserialize)]
struct Include {
    #[serde(default)]
    namespace: Option<String>,
    include: String,
}

/// The `database_config.json` of ASIC namespace `namespace`, as the `database_global.json` at
/// `global` names it: the entry's `include`, relative to `global`'s directory (as swss-common
/// resolves it). Reads only `global`, not the file it points to.
pub fn namespace_database_config(global: &Path, namespace: &str) -> Result<PathBuf, SonicDbError> {
    let text = std::fs::read_to_string(global).map_err(|source| SonicDbError::GlobalRead {
        path: global.to_owned(),
        namespace: namespace.to_owned(),
        source,
    })?;
    namespace_database_config_text(global, &text, namespace)
}

/// [`namespace_database_config`] on the file's text; `global` names the file in errors and is
/// the base of relative includes. No I/O.
pub fn namespace_database_config_text(global: &Path, text: &str, namespace: &str) -> Result<PathBuf, SonicDbError> {
    let file: GlobalConfigFile = serde_json::from_str(text).map_err(|source| SonicDbError::GlobalParse {
        path: global.to_owned(),
        namespace: namespace.to_owned(),
        source,
    })?;
    // An include without a file name (empty, `.`, `..`, `a/..`) resolves to a directory: such an
    // entry names no file (found by the `database_global` fuzz target: `"."`).
    let names_file = |i: &Include| Path::new(i.include.trim()).file_name().is_some();
    let found = file.includes.iter().find(|i| i.namespace.as_deref() == Some(namespace) && names_file(i));
    let Some(entry) = found else {
        let known: Vec<&str> =
            file.includes.iter().filter_map(|i| i.namespace.as_deref()).filter(|n| !n.is_empty()).collect();
        return Err(SonicDbError::NoNamespace {
            path: global.to_owned(),
            namespace: namespace.to_owned(),
            known: if known.is_empty() { "none".to_owned() } else { known.join(", ") },
        });
    };
    // `join` keeps an absolute include as it is; `..` stays in the path, as the kernel resolves
    // it (canonicalising would need the file to exist, and this is no place for I/O).
    let dir = global.parent().unwrap_or(Path::new(""));
    Ok(dir.join(&entry.include))
}

fn with_db(info: ConnectionInfo, db: i64) -> ConnectionInfo {
    let settings: RedisConnectionInfo = info.redis_settings().clone().set_db(db);
    info.set_redis_settings(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
        "INSTANCES": {
            "redis": {"hostname": "127.0.0.1", "port": 6379, "unix_socket_path": "/var/run/redis/redis.sock"},
            "redis2": {"hostname": "127.0.0.1", "port": 6380}
        },
        "DATABASES": {
            "APPL_DB": {"id": 0, "separator": ":", "instance": "redis"},
            "CONFIG_DB": {"id": 4, "separator": "|", "instance": "redis"},
            "STATE_DB": {"id": 6, "separator": "|", "instance": "redis2"}
        },
        "VERSION": "1.0"
    }"#;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("database_config.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn parses_sonic_layout_preferring_unix_sockets() {
        let (_d, path) = write(SAMPLE);
        let dbs = SonicDbs::from_database_config(&path).unwrap();
        assert_eq!(dbs.appl.id, 0);
        assert_eq!(dbs.appl.separator, ':');
        assert_eq!(dbs.appl.info.redis_settings().db(), 0);
        assert!(matches!(dbs.appl.info.addr(), ConnectionAddr::Unix(p) if p == Path::new("/var/run/redis/redis.sock")));
        assert_eq!(dbs.config.info.redis_settings().db(), 4);
        assert!(matches!(dbs.state.info.addr(), ConnectionAddr::Tcp(h, 6380) if h == "127.0.0.1"));
        assert_eq!(dbs.state.key(PORT_TABLE, "Ethernet0"), "PORT_TABLE|Ethernet0");
        assert_eq!(dbs.appl.key(PORT_TABLE, "Ethernet0"), "PORT_TABLE:Ethernet0");
        assert_eq!(dbs.appl.info.addr(), dbs.config.info.addr());
    }

    #[test]
    fn url_uses_standard_ids() {
        let dbs = SonicDbs::from_url("unix:///tmp/r.sock").unwrap();
        assert_eq!((dbs.appl.id, dbs.config.id, dbs.state.id), (0, 4, 6));
        assert_eq!(dbs.state.info.redis_settings().db(), 6);
        assert!(SonicDbs::from_url("nonsense").is_err());
    }

    /// SONiC's layout: the global file in /var/run/redis/sonic-db, each ASIC's Redis in
    /// /var/run/redisN, the host's entry without a namespace.
    const GLOBAL: &str = r#"{
        "INCLUDES": [
            {"include": "../../redis/sonic-db/database_config.json"},
            {"namespace": "asic0", "include": "../../redis0/sonic-db/database_config.json"},
            {"namespace": "asic1", "include": "../../redis1/sonic-db/database_config.json", "container_name": "database1"}
        ],
        "VERSION": "1.0"
    }"#;

    #[test]
    fn namespace_include_resolves_against_the_global_files_directory() {
        let global = Path::new("/var/run/redis/sonic-db/database_global.json");
        let p = namespace_database_config_text(global, GLOBAL, "asic1").unwrap();
        assert_eq!(p, Path::new("/var/run/redis/sonic-db/../../redis1/sonic-db/database_config.json"));
        let p = namespace_database_config_text(global, GLOBAL, "asic0").unwrap();
        assert_eq!(p, Path::new("/var/run/redis/sonic-db/../../redis0/sonic-db/database_config.json"));
        // An absolute include stays absolute; a bare file name sits next to the global file.
        let abs = r#"{"INCLUDES": [{"namespace": "asic2", "include": "/etc/asic2.json"}]}"#;
        assert_eq!(namespace_database_config_text(global, abs, "asic2").unwrap(), Path::new("/etc/asic2.json"));
        let bare = r#"{"INCLUDES": [{"namespace": "asic2", "include": "asic2.json"}]}"#;
        assert_eq!(
            namespace_database_config_text(Path::new("database_global.json"), bare, "asic2").unwrap(),
            Path::new("asic2.json")
        );
    }

    #[test]
    fn resolved_include_is_a_usable_database_config() {
        let dir = tempfile::tempdir().unwrap();
        let global = dir.path().join("redis/sonic-db/database_global.json");
        let asic = dir.path().join("redis0/sonic-db/database_config.json");
        std::fs::create_dir_all(global.parent().unwrap()).unwrap();
        std::fs::create_dir_all(asic.parent().unwrap()).unwrap();
        std::fs::write(&global, GLOBAL).unwrap();
        std::fs::write(&asic, SAMPLE).unwrap();
        let p = namespace_database_config(&global, "asic0").unwrap();
        assert_eq!(p.canonicalize().unwrap(), asic.canonicalize().unwrap());
        assert_eq!(SonicDbs::from_database_config(&p).unwrap().state.id, 6);
    }

    #[test]
    fn global_config_errors_name_the_file_and_the_namespace() {
        let global = Path::new("/g/database_global.json");
        let msg = |e: SonicDbError| format!("{:#}", anyhow::Error::from(e));
        // The host's entry (no namespace) and an empty include do not count as the namespace's.
        let text = r#"{"INCLUDES": [{"include": "a.json"}, {"namespace": "asic3", "include": ""},
                       {"namespace": "asic0", "include": "b.json"}]}"#;
        for ns in ["asic3", "asic7", ""] {
            let e = namespace_database_config_text(global, text, ns).unwrap_err();
            assert!(matches!(e, SonicDbError::NoNamespace { .. }), "{ns}: {e:?}");
            let m = msg(e);
            assert!(m.contains("/g/database_global.json") && m.contains(&format!("`{ns}`")), "{m}");
            assert!(m.contains("it has: asic3, asic0"), "{m}");
        }
        let e = namespace_database_config_text(global, r#"{"INCLUDES": []}"#, "asic0").unwrap_err();
        assert!(msg(e).contains("it has: none"));
        // An include that resolves to a directory names no file either.
        for dir_like in [".", "..", "./", "a/..", " "] {
            let text = format!(r#"{{"INCLUDES": [{{"namespace": "asic0", "include": "{dir_like}"}}]}}"#);
            let e = namespace_database_config_text(global, &text, "asic0").unwrap_err();
            assert!(matches!(e, SonicDbError::NoNamespace { .. }), "{dir_like:?}: {e:?}");
        }
        for bad in
            ["{not json", "{}", r#"{"INCLUDES": {"namespace": "asic0"}}"#, r#"{"INCLUDES": [{"namespace": "asic0"}]}"#]
        {
            let e = namespace_database_config_text(global, bad, "asic0").unwrap_err();
            assert!(matches!(e, SonicDbError::GlobalParse { .. }), "{bad}: {e:?}");
            let m = msg(e);
            assert!(m.contains("/g/database_global.json") && m.contains("`asic0`"), "{m}");
        }
        let e = namespace_database_config(Path::new("/nonexistent-psd/database_global.json"), "asic0").unwrap_err();
        assert!(matches!(e, SonicDbError::GlobalRead { .. }), "{e:?}");
        let m = msg(e);
        assert!(m.contains("/nonexistent-psd/database_global.json") && m.contains("`asic0`"), "{m}");
        assert!(m.contains("No such file"), "the cause is kept: {m}");
    }

    #[test]
    fn broken_files_give_errors_not_panics() {
        let missing = Path::new("/nonexistent/database_config.json");
        assert!(matches!(SonicDbs::from_database_config(missing), Err(SonicDbError::Read { .. })));
        let (_d, p) = write("{not json");
        assert!(matches!(SonicDbs::from_database_config(&p), Err(SonicDbError::Parse { .. })));
        let (_d, p) = write(&SAMPLE.replace("\"STATE_DB\"", "\"OTHER_DB\""));
        assert!(matches!(SonicDbs::from_database_config(&p), Err(SonicDbError::Layout { .. })));
        let (_d, p) = write(&SAMPLE.replace("\"instance\": \"redis2\"", "\"instance\": \"nope\""));
        assert!(matches!(SonicDbs::from_database_config(&p), Err(SonicDbError::Layout { .. })));
        let (_d, p) = write(&SAMPLE.replace("\"separator\": \":\"", "\"separator\": \"/\""));
        assert!(matches!(SonicDbs::from_database_config(&p), Err(SonicDbError::Layout { .. })));
    }
}
