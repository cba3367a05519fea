//! Multi-ASIC: the ASIC namespace this daemon serves. In host mode (`--namespace asicN`) the
//! namespace's `database_config.json` from `database_global.json` and the network namespace
//! `/var/run/netns/asicN` in; the namespace label of logs and metrics (from `--namespace` or
//! the swss container's `NAMESPACE_ID`) out.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::sched::CloneFlags;

use crate::config::{Config, RedisTarget};
use crate::sonic_db::{SonicDbError, SonicDbs};

/// Where `ip netns` (and SONiC) keep named network namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The label name of the namespace in metrics and log lines.
pub const LABEL: &str = "namespace";

/// Host mode could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// database_global.json is missing, malformed or does not name the namespace.
    #[error(transparent)]
    Global(#[from] SonicDbError),
    /// The namespace's database_config.json (named by database_global.json) is unusable.
    #[error("database config of namespace `{namespace}` (from {global}) is unusable")]
    DatabaseConfig {
        /// The namespace.
        namespace: String,
        /// The database_global.json that named the file.
        global: PathBuf,
        /// Cause (names the file).
        #[source]
        source: SonicDbError,
    },
    /// No such network namespace.
    #[error("network namespace `{namespace}` not found: cannot open {path}")]
    Open {
        /// The namespace.
        namespace: String,
        /// Its file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// setns(2) refused (e.g. without CAP_SYS_ADMIN).
    #[error("cannot enter network namespace `{namespace}` ({path})")]
    Enter {
        /// The namespace.
        namespace: String,
        /// Its file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: nix::Error,
    },
}

/// Host mode: points `cfg.redis` at the namespace's database_config.json (from
/// `cfg.database_global_config`) and moves the calling thread into the namespace's network
/// namespace. Does nothing without `cfg.namespace`.
///
/// Call it on the process's only thread, before the runtime and before any socket: setns(2)
/// moves only the calling thread, later threads inherit its namespace, and a socket stays in the
/// namespace it was opened in. The files are read first, while paths still mean the host's
/// files (setns of the network namespace leaves the mount namespace alone, so they still do
/// afterwards, but nothing here depends on that).
pub fn enter_host_mode(cfg: &mut Config) -> Result<(), NetnsError> {
    let Some(namespace) = cfg.namespace.clone() else { return Ok(()) };
    let global = cfg.database_global_config.clone();
    let db_config = crate::sonic_db::namespace_database_config(&global, &namespace)?;
    // Checked now so that a broken file is reported with the namespace and the global file
    // that led to it; the daemon reads it again through `cfg.redis`.
    SonicDbs::from_database_config(&db_config).map_err(|source| NetnsError::DatabaseConfig {
        namespace: namespace.clone(),
        global,
        source,
    })?;
    let path = Path::new(NETNS_DIR).join(&namespace);
    enter(&namespace, &path)?;
    tracing::info!(netns = %path.display(), database_config = %db_config.display(), "serving ASIC namespace {namespace}");
    cfg.redis = RedisTarget::DatabaseConfig(db_config);
    Ok(())
}

/// setns(2) into the network namespace `path` (named `namespace` in errors).
pub fn enter(namespace: &str, path: &Path) -> Result<(), NetnsError> {
    let file = std::fs::File::open(path).map_err(|source| NetnsError::Open {
        namespace: namespace.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
        namespace: namespace.to_owned(),
        path: path.to_owned(),
        source,
    })
}

static NAMESPACE_LABEL: OnceLock<Option<String>> = OnceLock::new();

/// The namespace label in force: `None` until [`init_label`] ran, and on a single-ASIC switch.
pub fn label() -> Option<&'static str> {
    NAMESPACE_LABEL.get().and_then(|l| l.as_deref())
}

/// Sets the process's namespace label once, from `--namespace` or else the environment (see
/// [`label_from`]); returns it. Later calls return the first value.
pub fn init_label(namespace_flag: Option<&str>) -> Option<&'static str> {
    let id = std::env::var("NAMESPACE_ID").ok();
    let prefix = std::env::var("NAMESPACE_PREFIX").ok();
    NAMESPACE_LABEL.get_or_init(|| label_from(namespace_flag, id.as_deref(), prefix.as_deref())).as_deref()
}

/// The namespace label: `--namespace` when given (the namespace this daemon serves, whatever the
/// environment says); else the swss container's `NAMESPACE_ID`, which SONiC sets to the ASIC's
/// number (`0`) with `NAMESPACE_PREFIX` (`asic`) beside it, so a bare number is prefixed
/// (default `asic`) into the namespace's name (`asic0`), and a full name is taken as it is.
/// `None` when neither is set, or when the value is not a namespace name (letters, digits,
/// `_`, `-`; a label must stay one token in a log line).
pub fn label_from(namespace_flag: Option<&str>, namespace_id: Option<&str>, prefix: Option<&str>) -> Option<String> {
    let is_name = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if let Some(ns) = namespace_flag {
        return is_name(ns).then(|| ns.to_owned());
    }
    let id = namespace_id.map(str::trim).filter(|s| !s.is_empty())?;
    let name = if id.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}{id}", prefix.map(str::trim).filter(|p| !p.is_empty()).unwrap_or("asic"))
    } else {
        id.to_owned()
    };
    is_name(&name).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_prefers_the_flag_and_names_a_numeric_namespace_id() {
        assert_eq!(label_from(Some("asic1"), Some("0"), None).as_deref(), Some("asic1"));
        assert_eq!(label_from(None, Some("0"), None).as_deref(), Some("asic0"));
        assert_eq!(label_from(None, Some("3"), Some("asic")).as_deref(), Some("asic3"));
        assert_eq!(label_from(None, Some("2"), Some("npu")).as_deref(), Some("npu2"));
        assert_eq!(label_from(None, Some("asic5"), Some("npu")).as_deref(), Some("asic5"));
        assert_eq!(label_from(None, None, Some("asic")), None, "single-ASIC: no label");
        assert_eq!(label_from(None, Some(""), None), None, "single-ASIC images may export it empty");
        assert_eq!(label_from(None, Some("a b"), None), None, "a label is one token");
        assert_eq!(label_from(None, Some("x\"y"), None), None);
    }

    #[test]
    fn a_missing_namespace_is_an_error_naming_it_and_its_path() {
        let e = enter("asic99", Path::new("/nonexistent-psd/netns/asic99")).unwrap_err();
        assert!(matches!(e, NetnsError::Open { .. }), "{e:?}");
        let m = format!("{:#}", anyhow::Error::from(e));
        assert!(m.contains("`asic99`") && m.contains("/nonexistent-psd/netns/asic99"), "{m}");
    }

    #[test]
    fn namespace_with_another_redis_source_is_a_config_error_naming_the_key() {
        use clap::Parser;
        let parse = |argv: &[&str]| {
            let mut full = vec!["portsyncd"];
            full.extend_from_slice(argv);
            Config::from_args(crate::config::Args::try_parse_from(full).unwrap())
        };
        for (argv, key) in [
            (&["-n", "asic0", "--redis", "unix:///r.sock"][..], "redis"),
            (&["--namespace", "asic0", "--database-config", "/x.json"][..], "database_config"),
        ] {
            match parse(argv) {
                Err(crate::config::ConfigError::Invalid { key: k, reason }) => {
                    assert_eq!(k, key, "{argv:?}");
                    assert!(reason.contains("namespace"), "{reason}");
                }
                other => panic!("{argv:?}: {other:?}"),
            }
        }
        let c = parse(&["-n", "asic0", "--database-global-config", "/g.json"]).unwrap();
        assert_eq!(c.namespace.as_deref(), Some("asic0"));
        assert_eq!(c.database_global_config, Path::new("/g.json"));
    }

    #[test]
    fn without_a_namespace_host_mode_changes_nothing() {
        let mut cfg = Config::from_args_and_file_text(Default::default(), "").unwrap();
        let before = cfg.redis.clone();
        enter_host_mode(&mut cfg).unwrap();
        assert_eq!(cfg.redis, before);
    }

    #[test]
    fn host_mode_reads_the_global_file_before_touching_the_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let global = dir.path().join("database_global.json");
        std::fs::write(&global, r#"{"INCLUDES": [{"namespace": "asic0", "include": "missing.json"}]}"#).unwrap();
        let args = crate::config::Args {
            namespace: Some("asic7".into()),
            database_global_config: Some(global.clone()),
            ..Default::default()
        };
        let mut cfg = Config::from_args_and_file_text(args.clone(), "").unwrap();
        let e = enter_host_mode(&mut cfg).unwrap_err();
        assert!(matches!(e, NetnsError::Global(SonicDbError::NoNamespace { .. })), "{e:?}");
        // Named, but its database_config.json is missing: reported with both files.
        let mut cfg =
            Config::from_args_and_file_text(crate::config::Args { namespace: Some("asic0".into()), ..args }, "")
                .unwrap();
        let e = enter_host_mode(&mut cfg).unwrap_err();
        let m = format!("{:#}", anyhow::Error::from(e));
        assert!(m.contains("`asic0`") && m.contains("database_global.json") && m.contains("missing.json"), "{m}");
    }
}
