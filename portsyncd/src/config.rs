//! Command line, environment and TOML file -> one validated [`Config`].
//!
//! Precedence: command-line flag, then environment variable, then config file, then default.
//! Each setting is defined once, as a field of [`Args`]: clap reads it from its flag or its
//! `PORTSYNCD_*` variable, serde reads the same field from the file, and [`Config`] takes it from
//! whichever layer has it (or its `DEFAULT_*` const below), validated, with an error naming the key.
//!
//! Why one serde + clap struct and not figment: clap already orders flag over environment and
//! names every variable in `--help`, the man page and the completions, so the one layering left
//! is "what flags and environment gave, over the file's keys". serde does that on the struct's
//! own serialised form (given values replace the file's, key by key). figment would add a second
//! TOML parser (its Toml provider is on toml 0.8, TOML 1.0, beside our toml 1) for that one merge,
//! and its Env provider would either drop the variables from the generated docs or read them twice.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

pub use crate::partition::PartitionSpec;

/// Where SONiC keeps the database layout.
pub const DEFAULT_DATABASE_CONFIG: &str = "/var/run/redis/sonic-db/database_config.json";
/// Where SONiC keeps the multi-ASIC database layout.
pub const DEFAULT_DATABASE_GLOBAL_CONFIG: &str = "/var/run/redis/sonic-db/database_global.json";
/// Most instances one switch may split its ports into.
pub const MAX_INSTANCES: u16 = 64;
/// Seconds to wait for the end of the initial dump before completing initial sync anyway.
pub const DEFAULT_EOIU_TIMEOUT_SECS: u64 = 10;
/// The C++ daemon's receive buffer (swss-common sets 16 MiB).
pub const DEFAULT_RCVBUF: usize = 16 * 1024 * 1024;
/// Most events drained into one batch.
pub const DEFAULT_BATCH_MAX: usize = 4096;
/// Default longest storm poll interval (`--batch-linger-us`): see the README's benchmarks.
pub const DEFAULT_BATCH_LINGER_US: u64 = 4000;
pub use crate::warm_restart::state_file::{DEFAULT_BACKUPS as DEFAULT_STATE_BACKUPS, DEFAULT_STATE_FILE};
/// State files older than this are stale.
pub const DEFAULT_STATE_MAX_AGE_DAYS: u64 = crate::warm_restart::state_file::DEFAULT_MAX_AGE.as_secs() / 86_400;
/// How often the state file is saved while running (it is also saved after initial sync and on exit).
pub const DEFAULT_STATE_SAVE_INTERVAL_SECS: u64 = 60;
/// Length of one interval in the HdrHistogram interval log.
pub const DEFAULT_HISTOGRAM_INTERVAL_SECS: u64 = 10;
/// Interrupted (NLM_F_DUMP_INTR) dumps are repeated at most this often before the last one is used.
pub const DEFAULT_DUMP_RETRIES: u32 = 5;
/// Seconds between self-healing reconciliations (dump + read-back of our rows); 0 = off.
pub const DEFAULT_RECONCILE_INTERVAL_SECS: u64 = 300;
/// First retry of a change Redis refused, in ms; doubled per refusal.
pub const DEFAULT_REFUSAL_BACKOFF_MIN_MS: u64 = 100;
/// Longest wait between retries of a refused change, in ms.
pub const DEFAULT_REFUSAL_BACKOFF_MAX_MS: u64 = 30_000;
/// Every Redis call's deadline, in ms: past it the connection counts as lost (a hung Redis).
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 5_000;
/// The event loop not turning for this long while changes are pending is a stall.
pub const DEFAULT_STALL_WATCHDOG_SECS: u64 = 10;

/// How link events are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Try eBPF; fall back to netlink with one log line naming the reason.
    Auto,
    /// eBPF socket filter + ring buffer; fail if it cannot load.
    Ebpf,
    /// Plain netlink socket only.
    Netlink,
}

/// Every setting, once: the command line (flag, else its `PORTSYNCD_*` variable) and, as the
/// same struct, the TOML file's keys. Every value is optional so that a layer can leave it to
/// the one below. Test hooks, `--config` and `--check-config` are flags only (`serde(skip)`):
/// the file refuses them as unknown keys.
#[derive(Debug, Clone, Default, Parser, Serialize, Deserialize)]
#[command(name = "portsyncd", version, about = "SONiC portsyncd: kernel port state -> Redis")]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// SONiC database_config.json (unix socket or TCP per its INSTANCES).
    #[arg(long, env = "PORTSYNCD_DATABASE_CONFIG", value_name = "PATH", value_parser = utf8_path)]
    pub database_config: Option<PathBuf>,
    /// Redis URL for development (redis://127.0.0.1:6379, unix:///path/redis.sock); standard DB ids.
    #[arg(long, env = "PORTSYNCD_REDIS", value_name = "URL", conflicts_with = "database_config")]
    pub redis: Option<String>,
    /// TOML config file; keys are the long flag names with underscores.
    #[arg(long, env = "PORTSYNCD_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Capture mode.
    #[arg(long, env = "PORTSYNCD_CAPTURE", value_enum)]
    pub capture: Option<CaptureMode>,
    /// Seconds to wait for the initial dump's NLMSG_DONE (EOIU).
    #[arg(long, env = "PORTSYNCD_EOIU_TIMEOUT_SECS", value_name = "SECS")]
    pub eoiu_timeout_secs: Option<u64>,
    /// Receive buffer of the event socket in bytes (SO_RCVBUFFORCE when permitted).
    #[arg(long, env = "PORTSYNCD_RCVBUF", value_name = "BYTES")]
    pub rcvbuf: Option<usize>,
    /// Most events drained into one batch.
    #[arg(long, env = "PORTSYNCD_BATCH_MAX", value_name = "N")]
    pub batch_max: Option<usize>,
    /// During a storm (a batch less than 10 ms after the previous one), read events every this
    /// many microseconds instead of waking per event: fewer, larger batches for at most this
    /// much extra latency; an isolated event is read at once. 0 = off.
    #[arg(long, env = "PORTSYNCD_BATCH_LINGER_US", value_name = "US")]
    pub batch_linger_us: Option<u64>,
    /// eBPF ring buffer size in bytes (power of two, at least one page).
    #[arg(long, env = "PORTSYNCD_RING_BYTES", value_name = "BYTES")]
    pub ring_bytes: Option<u32>,
    /// Warm-restart port-state file.
    #[arg(long, env = "PORTSYNCD_STATE_FILE", value_name = "PATH", value_parser = utf8_path)]
    pub state_file: Option<PathBuf>,
    /// Timestamped backups of the state file to keep.
    #[arg(long, env = "PORTSYNCD_STATE_BACKUPS", value_name = "N")]
    pub state_backups: Option<usize>,
    /// Days after which a state file is stale and removed.
    #[arg(long, env = "PORTSYNCD_STATE_MAX_AGE_DAYS", value_name = "DAYS")]
    pub state_max_age_days: Option<u64>,
    /// Seconds between periodic state-file saves.
    #[arg(long, env = "PORTSYNCD_STATE_SAVE_INTERVAL_SECS", value_name = "SECS")]
    pub state_save_interval_secs: Option<u64>,
    /// Write an HdrHistogram V2 interval log here.
    #[arg(long, env = "PORTSYNCD_HISTOGRAM_LOG", value_name = "PATH", value_parser = utf8_path)]
    pub histogram_log: Option<PathBuf>,
    /// Seconds per interval of the histogram log.
    #[arg(long, env = "PORTSYNCD_HISTOGRAM_INTERVAL_SECS", value_name = "SECS")]
    pub histogram_interval_secs: Option<u64>,
    /// Write a JSON snapshot of counters and latency here (atomically, at most every 200 ms).
    #[arg(long, env = "PORTSYNCD_STATS_FILE", value_name = "PATH", value_parser = utf8_path)]
    pub stats_file: Option<PathBuf>,
    /// Serve Prometheus text metrics on this loopback address (opt-in).
    #[arg(long, env = "PORTSYNCD_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Seconds between self-healing reconciliations (one dump plus one read-back of our rows;
    /// drifted rows are rewritten). 0 = off.
    #[arg(long, env = "PORTSYNCD_RECONCILE_INTERVAL_SECS", value_name = "SECS")]
    pub reconcile_interval_secs: Option<u64>,
    /// First retry delay (ms) of a port whose write Redis refused; doubles per refusal.
    #[arg(long, env = "PORTSYNCD_REFUSAL_BACKOFF_MIN_MS", value_name = "MS")]
    pub refusal_backoff_min_ms: Option<u64>,
    /// Longest retry delay (ms) of a port whose write Redis refused.
    #[arg(long, env = "PORTSYNCD_REFUSAL_BACKOFF_MAX_MS", value_name = "MS")]
    pub refusal_backoff_max_ms: Option<u64>,
    /// Deadline (ms) of every Redis call; past it the connection counts as lost.
    #[arg(long, env = "PORTSYNCD_REDIS_TIMEOUT_MS", value_name = "MS")]
    pub redis_timeout_ms: Option<u64>,
    /// Seconds the event loop may stand still while changes are pending before it counts as a stall.
    #[arg(long, env = "PORTSYNCD_STALL_WATCHDOG_SECS", value_name = "SECS")]
    pub stall_watchdog_secs: Option<u64>,
    /// How many portsyncd instances share the ports (see the README's "Several instances").
    #[arg(long, env = "PORTSYNCD_INSTANCES", value_name = "M")]
    pub instances: Option<u16>,
    /// This instance's id, 0..instances-1; instance 0 is the leader.
    #[arg(long, env = "PORTSYNCD_INSTANCE_ID", value_name = "N")]
    pub instance_id: Option<u16>,
    /// This instance's share: `even` (an equal block of the CONFIG_DB PORT table ordered by
    /// `index`, then name), `range:FIRST-LAST` (table positions or port names, inclusive) or
    /// `list:NAME,NAME,...`.
    #[arg(long, env = "PORTSYNCD_PARTITION", value_name = "SPEC")]
    pub partition: Option<String>,
    /// Multi-ASIC host mode: this ASIC namespace's Redis (from database_global.json) and
    /// network namespace (/var/run/netns/NAME).
    #[arg(short = 'n', long, env = "PORTSYNCD_NAMESPACE", value_name = "NAME")]
    pub namespace: Option<String>,
    /// SONiC's database_global.json, read with `--namespace`.
    #[arg(long, env = "PORTSYNCD_DATABASE_GLOBAL_CONFIG", value_name = "PATH", value_parser = utf8_path)]
    pub database_global_config: Option<PathBuf>,
    /// Test hook: ignore the initial dump's NLMSG_DONE so that the EOIU timeout path runs.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub test_hold_eoiu: bool,
    /// Test hook: every dump counts as still interrupted (NLM_F_DUMP_INTR) after its retries.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub test_dump_intr: bool,
    /// Test hook: sleep this long after initial sync, before attaching the capture.
    #[arg(long, hide = true, value_name = "SECS")]
    #[serde(skip)]
    pub test_pause_before_capture_secs: Option<u64>,
    /// Test hook: the event socket's first userspace receive buffer, in bytes, so that real
    /// datagrams are truncated (MSG_TRUNC) until the daemon grows it.
    #[arg(long, hide = true, value_name = "BYTES")]
    #[serde(skip)]
    pub test_recv_buf: Option<usize>,
    /// Test hook: after SIGUSR2, the next batch that leaves changes pending blocks the event
    /// loop's thread for this long (a hung daemon: systemd watchdog pings and the stall watchdog
    /// are exercised).
    #[arg(long, hide = true, value_name = "MS")]
    #[serde(skip)]
    pub test_stall_ms: Option<u64>,
    /// Validate flags, environment and config file, print the effective settings, and exit
    /// (0, or 1 with one error line naming the key).
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,
    /// Test hook: the syslog socket (default /dev/log).
    #[arg(long, hide = true, value_name = "PATH")]
    #[serde(skip)]
    pub test_syslog_socket: Option<PathBuf>,
}

/// How to reach Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// SONiC's database_config.json.
    DatabaseConfig(PathBuf),
    /// One server holding every database under its standard id.
    Url(String),
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where Redis is.
    pub redis: RedisTarget,
    /// Capture mode.
    pub capture: CaptureMode,
    /// EOIU timeout.
    pub eoiu_timeout: Duration,
    /// Event socket receive buffer.
    pub rcvbuf: usize,
    /// Batch bound.
    pub batch_max: usize,
    /// Storm poll interval (zero: off).
    pub batch_linger: Duration,
    /// eBPF ring size.
    pub ring_bytes: u32,
    /// Warm-restart state file.
    pub state_file: PathBuf,
    /// Backups kept.
    pub state_backups: usize,
    /// Stale age.
    pub state_max_age: Duration,
    /// Periodic save interval.
    pub state_save_interval: Duration,
    /// HdrHistogram interval log.
    pub histogram_log: Option<PathBuf>,
    /// Interval log period.
    pub histogram_interval: Duration,
    /// JSON stats snapshot.
    pub stats_file: Option<PathBuf>,
    /// Prometheus listener.
    pub metrics_addr: Option<SocketAddr>,
    /// Interrupted-dump retry bound.
    pub dump_retries: u32,
    /// Self-healing reconciliation period (`None`: off).
    pub reconcile_interval: Option<Duration>,
    /// Retry backoff of refused changes: first delay.
    pub refusal_backoff_min: Duration,
    /// Retry backoff of refused changes: longest delay.
    pub refusal_backoff_max: Duration,
    /// Deadline of every Redis call.
    pub redis_timeout: Duration,
    /// Stall watchdog threshold.
    pub stall_watchdog: Duration,
    /// Instances sharing the ports (1: this one has them all).
    pub instances: u16,
    /// This instance's id (0 is the leader).
    pub instance_id: u16,
    /// This instance's share of the ports.
    pub partition: PartitionSpec,
    /// Multi-ASIC host mode: the ASIC namespace to serve.
    pub namespace: Option<String>,
    /// database_global.json, used with `namespace`.
    pub database_global_config: PathBuf,
    /// Test hook, see [`Args::test_hold_eoiu`].
    pub test_hold_eoiu: bool,
    /// Test hook, see [`Args::test_dump_intr`].
    pub test_dump_intr: bool,
    /// Test hook, see [`Args::test_pause_before_capture_secs`].
    pub test_pause_before_capture: Option<Duration>,
    /// Test hook, see [`Args::test_recv_buf`].
    pub test_recv_buf: Option<usize>,
    /// Test hook, see [`Args::test_stall_ms`].
    pub test_stall: Option<Duration>,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}")]
    ReadFile {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML file is malformed or has an unknown key.
    #[error("invalid config file {path}")]
    ParseFile {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: toml::de::Error,
    },
    /// The flags could not be layered over the file (a serde round trip of [`Args`], which
    /// holds only values that serialise: paths are UTF-8 by `utf8_path`).
    #[error("cannot layer the command line over the config file")]
    Layer(#[source] serde_json::Error),
    /// A value is out of range.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The flag / key name.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.into() }
}

impl Config {
    /// Layers flags (already over the environment, by clap) over the optional config file and
    /// defaults, then validates.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::ReadFile { path: path.clone(), source })?;
                parse_file(path, &text)?
            }
            None => Args::default(),
        };
        Self::layered(args, &file)
    }

    /// [`from_args`](Self::from_args) with the config file's `text` given instead of read from
    /// `args.config` (which, if set, only names it in errors): TOML parsing and every
    /// validation, no I/O (the `config_toml` fuzz target drives it).
    pub fn from_args_and_file_text(args: Args, text: &str) -> Result<Self, ConfigError> {
        let file = parse_file(args.config.as_deref().unwrap_or(Path::new("")), text)?;
        Self::layered(args, &file)
    }

    fn layered(args: Args, file: &Args) -> Result<Self, ConfigError> {
        let settings = given_over(&args, file).map_err(ConfigError::Layer)?;
        Self::validate(settings, args)
    }

    /// Applies the defaults to what no layer set and validates; the flag-only test hooks come
    /// from `flags`, as `settings` has been through serde, which skips them.
    fn validate(s: Args, flags: Args) -> Result<Self, ConfigError> {
        // Host mode takes the namespace's Redis from database_global_config; a second source
        // would leave it unclear which Redis the namespace's ports go to.
        if s.namespace.is_some() {
            if s.redis.is_some() {
                return Err(invalid(
                    "redis",
                    "`redis` cannot be combined with `namespace` (its Redis comes from `database_global_config`)",
                ));
            }
            if s.database_config.is_some() {
                return Err(invalid(
                    "database_config",
                    "`database_config` cannot be combined with `namespace` (its file comes from `database_global_config`)",
                ));
            }
        }
        let redis = match (s.redis, s.database_config) {
            (Some(url), None) => RedisTarget::Url(validate_redis_url(url)?),
            (None, Some(path)) => RedisTarget::DatabaseConfig(path),
            (None, None) => RedisTarget::DatabaseConfig(PathBuf::from(DEFAULT_DATABASE_CONFIG)),
            (Some(_), Some(_)) => return Err(invalid("redis", "give either `redis` or `database_config`, not both")),
        };
        let eoiu = s.eoiu_timeout_secs.unwrap_or(DEFAULT_EOIU_TIMEOUT_SECS);
        if eoiu == 0 || eoiu > 3600 {
            return Err(invalid("eoiu_timeout_secs", format!("{eoiu} is not in 1..=3600")));
        }
        let rcvbuf = s.rcvbuf.unwrap_or(DEFAULT_RCVBUF);
        if !(1024..=1 << 30).contains(&rcvbuf) {
            return Err(invalid("rcvbuf", format!("{rcvbuf} is not in 1024..=1073741824")));
        }
        let batch_max = s.batch_max.unwrap_or(DEFAULT_BATCH_MAX);
        if !(1..=1 << 20).contains(&batch_max) {
            return Err(invalid("batch_max", format!("{batch_max} is not in 1..=1048576")));
        }
        let linger_us = s.batch_linger_us.unwrap_or(DEFAULT_BATCH_LINGER_US);
        if linger_us > 100_000 {
            return Err(invalid("batch_linger_us", format!("{linger_us} is more than 100000 (100 ms)")));
        }
        let ring_bytes = s.ring_bytes.unwrap_or(crate::ebpf::DEFAULT_RING_BYTES);
        crate::ebpf::check_ring_bytes(ring_bytes).map_err(|e| invalid("ring_bytes", e.to_string()))?;
        let state_backups = s.state_backups.unwrap_or(DEFAULT_STATE_BACKUPS);
        if state_backups > 1000 {
            return Err(invalid("state_backups", format!("{state_backups} is more than 1000")));
        }
        let max_age_days = s.state_max_age_days.unwrap_or(DEFAULT_STATE_MAX_AGE_DAYS);
        if max_age_days == 0 || max_age_days > 3650 {
            return Err(invalid("state_max_age_days", format!("{max_age_days} is not in 1..=3650")));
        }
        let save_secs = s.state_save_interval_secs.unwrap_or(DEFAULT_STATE_SAVE_INTERVAL_SECS);
        if save_secs == 0 {
            return Err(invalid("state_save_interval_secs", "must be at least 1"));
        }
        let hist_secs = s.histogram_interval_secs.unwrap_or(DEFAULT_HISTOGRAM_INTERVAL_SECS);
        if hist_secs == 0 {
            return Err(invalid("histogram_interval_secs", "must be at least 1"));
        }
        let metrics_addr = s.metrics_addr;
        if let Some(addr) = metrics_addr {
            if !addr.ip().is_loopback() {
                return Err(invalid("metrics_addr", format!("{addr} is not a loopback address")));
            }
        }
        let instances = s.instances.unwrap_or(1);
        if !(1..=MAX_INSTANCES).contains(&instances) {
            return Err(invalid("instances", format!("{instances} is not in 1..={MAX_INSTANCES}")));
        }
        let instance_id = s.instance_id.unwrap_or(0);
        if instance_id >= instances {
            return Err(invalid("instance_id", format!("{instance_id} is not below instances ({instances})")));
        }
        let partition = match s.partition.as_deref() {
            None => PartitionSpec::Even,
            Some(text) => text.parse::<PartitionSpec>().map_err(|e| invalid("partition", e.to_string()))?,
        };
        if instances == 1 && partition != PartitionSpec::Even {
            return Err(invalid("partition", "a single instance handles every port; give `instances` too"));
        }
        let namespace = s.namespace;
        if let Some(ns) = &namespace {
            let ok = !ns.is_empty()
                && ns.len() <= 64
                && ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(invalid(
                    "namespace",
                    format!("`{ns}` is not a namespace name (letters, digits, `_`, `-`)"),
                ));
            }
        }
        let database_global_config =
            s.database_global_config.unwrap_or_else(|| PathBuf::from(DEFAULT_DATABASE_GLOBAL_CONFIG));
        // Several instances on one switch: each keeps its own state file unless one is named
        // (two live instances naming the same file are refused at start).
        let state_file = match s.state_file {
            Some(p) => p,
            None => {
                // Host mode serves one ASIC per process: one default file per namespace.
                let base = match &namespace {
                    Some(ns) => tagged_path(Path::new(DEFAULT_STATE_FILE), ns),
                    None => PathBuf::from(DEFAULT_STATE_FILE),
                };
                if instances > 1 {
                    instance_path(&base, instance_id)
                } else {
                    base
                }
            }
        };
        if state_file.file_name().is_none() {
            return Err(invalid("state_file", format!("{} names no file", state_file.display())));
        }
        let reconcile_secs = s.reconcile_interval_secs.unwrap_or(DEFAULT_RECONCILE_INTERVAL_SECS);
        if reconcile_secs > 86_400 {
            return Err(invalid("reconcile_interval_secs", format!("{reconcile_secs} is more than 86400 (a day)")));
        }
        let backoff_min = s.refusal_backoff_min_ms.unwrap_or(DEFAULT_REFUSAL_BACKOFF_MIN_MS);
        if !(1..=60_000).contains(&backoff_min) {
            return Err(invalid("refusal_backoff_min_ms", format!("{backoff_min} is not in 1..=60000")));
        }
        let backoff_max = s.refusal_backoff_max_ms.unwrap_or(DEFAULT_REFUSAL_BACKOFF_MAX_MS);
        if backoff_max < backoff_min || backoff_max > 3_600_000 {
            return Err(invalid(
                "refusal_backoff_max_ms",
                format!("{backoff_max} is not in refusal_backoff_min_ms ({backoff_min})..=3600000"),
            ));
        }
        let redis_timeout = s.redis_timeout_ms.unwrap_or(DEFAULT_REDIS_TIMEOUT_MS);
        if !(100..=600_000).contains(&redis_timeout) {
            return Err(invalid("redis_timeout_ms", format!("{redis_timeout} is not in 100..=600000")));
        }
        let stall_secs = s.stall_watchdog_secs.unwrap_or(DEFAULT_STALL_WATCHDOG_SECS);
        if !(1..=3600).contains(&stall_secs) {
            return Err(invalid("stall_watchdog_secs", format!("{stall_secs} is not in 1..=3600")));
        }
        Ok(Self {
            redis,
            capture: s.capture.unwrap_or(CaptureMode::Auto),
            eoiu_timeout: Duration::from_secs(eoiu),
            rcvbuf,
            batch_max,
            batch_linger: Duration::from_micros(linger_us),
            ring_bytes,
            state_file,
            state_backups,
            state_max_age: Duration::from_secs(max_age_days * 86_400),
            state_save_interval: Duration::from_secs(save_secs),
            histogram_log: s.histogram_log,
            histogram_interval: Duration::from_secs(hist_secs),
            stats_file: s.stats_file,
            metrics_addr,
            dump_retries: DEFAULT_DUMP_RETRIES,
            reconcile_interval: (reconcile_secs > 0).then(|| Duration::from_secs(reconcile_secs)),
            refusal_backoff_min: Duration::from_millis(backoff_min),
            refusal_backoff_max: Duration::from_millis(backoff_max),
            redis_timeout: Duration::from_millis(redis_timeout),
            stall_watchdog: Duration::from_secs(stall_secs),
            instances,
            instance_id,
            partition,
            namespace,
            database_global_config,
            test_hold_eoiu: flags.test_hold_eoiu,
            test_dump_intr: flags.test_dump_intr,
            test_pause_before_capture: flags.test_pause_before_capture_secs.map(Duration::from_secs),
            test_recv_buf: flags.test_recv_buf,
            test_stall: flags.test_stall_ms.map(Duration::from_millis),
        })
    }
}

/// `dir/name.ext` -> `dir/name.instanceN.ext`: one file per instance when several share a switch.
pub fn instance_path(path: &Path, id: u16) -> PathBuf {
    tagged_path(path, &format!("instance{id}"))
}

/// `dir/name.ext` -> `dir/name.<tag>.ext`.
fn tagged_path(path: &Path, tag: &str) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{tag}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{tag}"),
    };
    path.with_file_name(name)
}

/// The file's settings; an unknown key (a test hook too) or a wrong type is an error naming it.
fn parse_file(path: &Path, text: &str) -> Result<Args, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::ParseFile { path: path.to_owned(), source })
}

/// `file` with every setting that `given` has (a flag or its variable) in place of the file's.
/// serde compares the two by key, so a new field of [`Args`] needs no line here.
fn given_over(given: &Args, file: &Args) -> Result<Args, serde_json::Error> {
    let mut layered = serde_json::to_value(file)?;
    if let (serde_json::Value::Object(layered), serde_json::Value::Object(given)) =
        (&mut layered, serde_json::to_value(given)?)
    {
        layered.extend(given.into_iter().filter(|(_, value)| !value.is_null()));
    }
    serde_json::from_value(layered)
}

/// clap's parser for the path settings: layering goes through serde, which cannot carry a path
/// that is not UTF-8 (nor can TOML), so clap refuses one up front, at exit code 2 like any bad flag.
fn utf8_path(value: &str) -> Result<PathBuf, Infallible> {
    Ok(PathBuf::from(value))
}

fn validate_redis_url(url: String) -> Result<String, ConfigError> {
    let ok = ["redis://", "unix://", "redis+unix://"].iter().any(|p| url.starts_with(p));
    if !ok {
        return Err(invalid("redis", format!("`{url}` is not a redis://, unix:// or redis+unix:// URL")));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Config, ConfigError> {
        let mut full = vec!["portsyncd"];
        full.extend_from_slice(argv);
        Config::from_args(Args::try_parse_from(full).expect("clap accepts"))
    }

    #[test]
    fn instances_validate_and_keep_their_own_default_state_file() {
        let c = parse(&["--instances", "4", "--instance-id", "2", "--partition", "range:0-63"]).unwrap();
        assert_eq!((c.instances, c.instance_id), (4, 2));
        assert_eq!(c.partition.to_string(), "range:0-63");
        let default = Path::new(DEFAULT_STATE_FILE);
        assert_eq!(c.state_file, instance_path(default, 2));
        assert_ne!(c.state_file.parent(), None);
        assert!(c.state_file.to_string_lossy().contains("instance2"), "{}", c.state_file.display());
        assert_eq!(parse(&[]).unwrap().state_file, default);
        let named = parse(&["--instances", "2", "--instance-id", "1", "--state-file", "/x/s.json"]).unwrap();
        assert_eq!(named.state_file, Path::new("/x/s.json"));
        let host_mode = parse(&["-n", "asic3", "--instances", "2", "--instance-id", "1"]).unwrap();
        let name = host_mode.state_file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.contains(".asic3.instance1."), "one default file per namespace and instance: {name}");
        for (argv, key) in [
            (&["--instances", "4", "--instance-id", "4"][..], "instance_id"),
            (&["--instances", "0"][..], "instances"),
            (&["--instances", "65"][..], "instances"),
            (&["--instances", "2", "--partition", "odd"][..], "partition"),
            (&["--partition", "range:0-3"][..], "partition"),
            (&["-n", "asic0/../x"][..], "namespace"),
        ] {
            match parse(argv) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{argv:?}"),
                other => panic!("{argv:?}: expected an error naming {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn defaults_match_the_cpp_daemon() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.redis, RedisTarget::DatabaseConfig(DEFAULT_DATABASE_CONFIG.into()));
        assert_eq!(c.eoiu_timeout, Duration::from_secs(10));
        assert_eq!(c.rcvbuf, 16 * 1024 * 1024);
        assert_eq!(c.capture, CaptureMode::Auto);
        assert_eq!(c.reconcile_interval, Some(Duration::from_secs(300)));
        assert_eq!(
            (c.refusal_backoff_min, c.refusal_backoff_max),
            (Duration::from_millis(100), Duration::from_secs(30))
        );
        assert_eq!(c.redis_timeout, Duration::from_secs(5));
    }

    #[test]
    fn self_healing_and_refusal_settings_validate_and_zero_turns_reconciliation_off() {
        let c = parse(&["--reconcile-interval-secs", "0", "--refusal-backoff-max-ms", "2000"]).unwrap();
        assert_eq!(c.reconcile_interval, None);
        assert_eq!(c.refusal_backoff_max, Duration::from_millis(2000));
        for (argv, key) in [
            (&["--refusal-backoff-min-ms", "500", "--refusal-backoff-max-ms", "100"][..], "refusal_backoff_max_ms"),
            (&["--redis-timeout-ms", "10"][..], "redis_timeout_ms"),
            (&["--stall-watchdog-secs", "0"][..], "stall_watchdog_secs"),
            (&["--reconcile-interval-secs", "100000"][..], "reconcile_interval_secs"),
        ] {
            match parse(argv) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{argv:?}"),
                other => panic!("{argv:?}: expected an error naming {key}, got {other:?}"),
            }
        }
    }

    /// clap's `conflicts_with` sees only flags; one target from a flag and the other from the file
    /// is our merge's to refuse.
    #[test]
    fn redis_and_database_config_from_flag_and_file_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "database_config = \"/y\"\n").unwrap();
        match parse(&["--config", path.to_str().unwrap(), "--redis", "unix:///x"]) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "redis"),
            other => panic!("expected an error naming redis, got {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        for (argv, key) in [
            (&["--eoiu-timeout-secs", "0"][..], "eoiu_timeout_secs"),
            (&["--ring-bytes", "5000"][..], "ring_bytes"),
            (&["--redis", "http://x"][..], "redis"),
            (&["--metrics-addr", "10.0.0.1:9100"][..], "metrics_addr"),
            (&["--batch-max", "0"][..], "batch_max"),
            (&["--batch-linger-us", "200000"][..], "batch_linger_us"),
        ] {
            match parse(argv) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{argv:?}: expected invalid {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn file_fills_what_flags_leave_out_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "eoiu_timeout_secs = 3\nbatch_max = 7\ncapture = \"netlink\"\n").unwrap();
        let c = parse(&["--config", path.to_str().unwrap(), "--batch-max", "9"]).unwrap();
        assert_eq!(c.eoiu_timeout, Duration::from_secs(3));
        assert_eq!(c.batch_max, 9);
        assert_eq!(c.capture, CaptureMode::Netlink);
    }

    #[test]
    fn malformed_or_unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        assert!(matches!(parse(&["--config", path.to_str().unwrap()]), Err(ConfigError::ParseFile { .. })));
        std::fs::write(&path, "batch_max = \"many\"\n").unwrap();
        assert!(matches!(parse(&["--config", path.to_str().unwrap()]), Err(ConfigError::ParseFile { .. })));
        let missing = dir.path().join("nope.toml");
        assert!(matches!(parse(&["--config", missing.to_str().unwrap()]), Err(ConfigError::ReadFile { .. })));
    }

    /// The error a user sees (`main` prints the chain) names the unknown key.
    #[test]
    fn an_unknown_file_key_is_named() {
        let err = Config::from_args_and_file_text(Args::default(), "batch_max = 8\nno_such_key = 1\n").unwrap_err();
        let shown = format!("{:#}", anyhow::Error::from(err));
        assert!(shown.contains("no_such_key"), "{shown}");
    }

    /// Test hooks and the flags about the file itself are not settings the file may hold.
    #[test]
    fn flag_only_keys_are_unknown_in_the_file() {
        for text in ["test_hold_eoiu = true", "test_stall_ms = 5", "config = \"/x.toml\"", "check_config = true"] {
            match Config::from_args_and_file_text(Args::default(), text) {
                Err(ConfigError::ParseFile { .. }) => {}
                other => panic!("{text}: expected a file error, got {other:?}"),
            }
        }
    }

    /// Only what the command line gave replaces the file's value: an absent flag is no layer, and
    /// the test hooks survive the layering.
    #[test]
    fn every_file_key_is_layered_under_the_flags() {
        let file = "database_config = \"/db.json\"\ncapture = \"netlink\"\neoiu_timeout_secs = 3\nrcvbuf = 4096\n\
                    batch_max = 7\nbatch_linger_us = 5\nring_bytes = 8192\nstate_file = \"/s/state.json\"\n\
                    state_backups = 2\nstate_max_age_days = 3\nstate_save_interval_secs = 4\n\
                    histogram_log = \"/h.hlog\"\nhistogram_interval_secs = 5\nstats_file = \"/stats.json\"\n\
                    metrics_addr = \"127.0.0.1:9464\"\nreconcile_interval_secs = 6\nrefusal_backoff_min_ms = 7\n\
                    refusal_backoff_max_ms = 8\nredis_timeout_ms = 900\nstall_watchdog_secs = 9\n";
        let args = Args::try_parse_from(["portsyncd", "--batch-max", "11", "--test-hold-eoiu", "--test-stall-ms", "3"]);
        let c = Config::from_args_and_file_text(args.unwrap(), file).unwrap();
        assert_eq!(c.redis, RedisTarget::DatabaseConfig("/db.json".into()));
        assert_eq!((c.capture, c.eoiu_timeout, c.rcvbuf), (CaptureMode::Netlink, Duration::from_secs(3), 4096));
        assert_eq!((c.batch_max, c.batch_linger, c.ring_bytes), (11, Duration::from_micros(5), 8192));
        assert_eq!((c.state_file, c.state_backups), (PathBuf::from("/s/state.json"), 2));
        assert_eq!((c.state_max_age, c.state_save_interval), (Duration::from_secs(3 * 86_400), Duration::from_secs(4)));
        assert_eq!((c.histogram_log, c.histogram_interval), (Some("/h.hlog".into()), Duration::from_secs(5)));
        assert_eq!(
            (c.stats_file, c.metrics_addr),
            (Some("/stats.json".into()), Some("127.0.0.1:9464".parse().unwrap()))
        );
        assert_eq!(c.reconcile_interval, Some(Duration::from_secs(6)));
        assert_eq!(
            (c.refusal_backoff_min, c.refusal_backoff_max),
            (Duration::from_millis(7), Duration::from_millis(8))
        );
        assert_eq!((c.redis_timeout, c.stall_watchdog), (Duration::from_millis(900), Duration::from_secs(9)));
        assert!(c.test_hold_eoiu && !c.test_dump_intr);
        assert_eq!(c.test_stall, Some(Duration::from_millis(3)));
    }

    /// A `u64` flag beyond what TOML's integers hold is still layered and then refused by range.
    #[test]
    fn huge_flag_values_reach_validation() {
        match parse(&["--eoiu-timeout-secs", &u64::MAX.to_string()]) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "eoiu_timeout_secs"),
            other => panic!("expected invalid eoiu_timeout_secs, got {other:?}"),
        }
    }
}
