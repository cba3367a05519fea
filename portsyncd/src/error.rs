//! The library's top-level error: every stage's typed error, gathered for `main` to report.

/// Why the daemon stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// database_config.json.
    #[error(transparent)]
    Db(#[from] crate::sonic_db::SonicDbError),
    /// Redis at start-up.
    #[error(transparent)]
    Redis(#[from] crate::redis_conn::WriteError),
    /// Netlink socket set-up.
    #[error(transparent)]
    Socket(#[from] crate::netlink::socket::SocketError),
    /// The link dump.
    #[error(transparent)]
    Dump(#[from] crate::netlink::dump::DumpError),
    /// Old-interface shutdown.
    #[error(transparent)]
    Admin(#[from] crate::netlink::admin::AdminError),
    /// Reading events.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// The event loop's tick timer (a timerfd).
    #[error("event loop timer failed")]
    Timer(#[source] std::io::Error),
    /// `--capture ebpf` and the program could not be loaded.
    #[error("eBPF capture required (--capture ebpf) but unavailable")]
    EbpfRequired(#[source] Box<crate::ebpf::EbpfError>),
    /// The embedded eBPF object is broken, or eBPF failed for a reason that is not the host's
    /// (a bug or a bad build: never hidden behind a netlink fallback).
    #[error("eBPF capture is broken in this build")]
    EbpfObject(#[source] Box<crate::ebpf::EbpfError>),
    /// The histogram log.
    #[error(transparent)]
    Latency(#[from] crate::metrics::latency::LatencyError),
    /// Binding the metrics listener.
    #[error("cannot listen for metrics")]
    Metrics(#[source] std::io::Error),
    /// Several instances: a mismatch with another instance, or the registry failed.
    #[error(transparent)]
    Instances(#[from] crate::instances::InstanceError),
    /// Several instances: this one's share cannot be computed.
    #[error("invalid partition")]
    Partition(#[from] crate::partition::PartitionError),
    /// Installing a signal handler.
    #[error("cannot install signal handler")]
    Signal(#[source] std::io::Error),
}
