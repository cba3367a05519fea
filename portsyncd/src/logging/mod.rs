//! Logging the way swss-common's Logger does it: ident `portsyncd`, output SYSLOG (facility
//! LOG_USER, no PID: swss-common calls no `openlog`, so glibc's defaults apply), STDOUT or
//! STDERR, and a minimum level, both from CONFIG_DB `LOGGER|portsyncd` and both switchable at
//! run time ([`LogControl::apply`]).
//!
//! SONiC has eight levels and tracing five, so SONiC's NOTICE (the default) is tracing's INFO,
//! SONiC's INFO is tracing's DEBUG and SONiC's DEBUG is tracing's TRACE; EMERG..ERROR all show
//! tracing's ERROR. A line's syslog priority follows the same map back.
//!
//! Developer override: with `RUST_LOG` set, lines go to stderr filtered by it, and CONFIG_DB's
//! LOGGER settings are only recorded (SONiC never sets `RUST_LOG`).
//!
//! On a multi-ASIC switch every line ends in ` namespace=asicN` ([`crate::netns::label`]), and
//! with several instances in ` instance=N` ([`set_line_fields`]): fields like tracing's own, so
//! the ident and the swss message texts stay as they are.

mod held;

pub use held::{hold_lines, HeldLines};

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tracing::level_filters::LevelFilter;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The syslog socket swss-common's `syslog(3)` writes to.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";
/// `LOG_USER`, glibc's facility when `openlog` was not called.
const FACILITY_USER: u8 = 1 << 3;

/// Where lines go (`LOGOUTPUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The syslog socket.
    Syslog = 0,
    /// Standard output.
    Stdout = 1,
    /// Standard error.
    Stderr = 2,
}

impl Output {
    /// SONiC's name → output; `None` for an invalid one.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "SYSLOG" => Some(Self::Syslog),
            "STDOUT" => Some(Self::Stdout),
            "STDERR" => Some(Self::Stderr),
            _ => None,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Stdout,
            2 => Self::Stderr,
            _ => Self::Syslog,
        }
    }
}

/// SONiC's level names (`LOGLEVEL`), most severe first, as swss-common orders them.
pub const LEVELS: [&str; 8] = ["EMERG", "ALERT", "CRIT", "ERROR", "WARN", "NOTICE", "INFO", "DEBUG"];

/// The most verbose tracing level a SONiC level shows; `None` for an invalid name.
pub fn level_filter(sonic: &str) -> Option<LevelFilter> {
    Some(match sonic {
        "EMERG" | "ALERT" | "CRIT" | "ERROR" => LevelFilter::ERROR,
        "WARN" => LevelFilter::WARN,
        "NOTICE" => LevelFilter::INFO,
        "INFO" => LevelFilter::DEBUG,
        "DEBUG" => LevelFilter::TRACE,
        _ => return None,
    })
}

/// The syslog severity of a tracing level (the map of [`level_filter`], backwards).
pub fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 5,
        Level::DEBUG => 6,
        Level::TRACE => 7,
    }
}

fn filter_to_u8(f: LevelFilter) -> u8 {
    match f.into_level() {
        None => 0,
        Some(Level::ERROR) => 1,
        Some(Level::WARN) => 2,
        Some(Level::INFO) => 3,
        Some(Level::DEBUG) => 4,
        Some(Level::TRACE) => 5,
    }
}

fn level_to_u8(l: &Level) -> u8 {
    filter_to_u8(LevelFilter::from_level(*l))
}

/// The syslog socket, and when connecting was last tried: with no syslog daemon (no socket),
/// connecting is retried at most once per [`RECONNECT_EVERY`], not once per line.
#[derive(Debug, Default)]
struct Syslog {
    sock: Option<UnixDatagram>,
    last_try: Option<std::time::Instant>,
}

/// Least time between two attempts to connect to the syslog socket.
const RECONNECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
struct Shared {
    output: AtomicU8,
    /// Most verbose level shown, as [`filter_to_u8`].
    max_level: AtomicU8,
    syslog_path: PathBuf,
    syslog: Mutex<Syslog>,
    /// Syslog lines dropped because the syslog socket's queue was full.
    dropped: std::sync::atomic::AtomicU64,
    /// `RUST_LOG` rules: CONFIG_DB changes are recorded, not applied.
    developer: bool,
}

/// Switches the output and level at run time.
#[derive(Debug, Clone)]
pub struct LogControl(Arc<Shared>);

impl LogControl {
    /// Applies CONFIG_DB `LOGGER|portsyncd`: invalid or missing values fall back to NOTICE and
    /// SYSLOG with an ERROR line, as swss-common's do. Returns what is in force.
    pub fn apply(&self, level: Option<&str>, output: Option<&str>) -> (LevelFilter, Output) {
        let filter = match level.map(|l| (l, level_filter(l))) {
            Some((_, Some(f))) => f,
            Some((l, None)) => {
                tracing::error!("Invalid loglevel. Setting to NOTICE. {l}");
                LevelFilter::INFO
            }
            None => LevelFilter::INFO,
        };
        let out = match output.map(|o| (o, Output::parse(o))) {
            Some((_, Some(o))) => o,
            Some((o, None)) => {
                tracing::error!("Invalid logoutput. Setting to SYSLOG. {o}");
                Output::Syslog
            }
            None => Output::Syslog,
        };
        if self.0.developer {
            tracing::debug!(?filter, ?out, "RUST_LOG is set: CONFIG_DB LOGGER settings recorded, not applied");
            return (filter, out);
        }
        let old =
            (self.0.max_level.swap(filter_to_u8(filter), Ordering::Relaxed), self.0.output.load(Ordering::Relaxed));
        self.0.output.store(out as u8, Ordering::Relaxed);
        if old != (filter_to_u8(filter), out as u8) {
            tracing::info!(level = ?filter, output = ?out, "log settings applied from CONFIG_DB LOGGER|portsyncd");
        }
        (filter, out)
    }
}

impl LogControl {
    /// Syslog lines dropped so far because the syslog socket was full.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    /// The settings in force, as SONiC names them (the most verbose level name that maps onto
    /// the current filter, e.g. `ERROR`, `NOTICE`, `DEBUG`).
    pub fn current(&self) -> (&'static str, &'static str) {
        let level = match self.0.max_level.load(Ordering::Relaxed) {
            0 | 1 => "ERROR",
            2 => "WARN",
            3 => "NOTICE",
            4 => "INFO",
            _ => "DEBUG",
        };
        let output = match Output::from_u8(self.0.output.load(Ordering::Relaxed)) {
            Output::Syslog => "SYSLOG",
            Output::Stdout => "STDOUT",
            Output::Stderr => "STDERR",
        };
        (level, output)
    }
}

fn enabled(s: &Shared, meta: &Metadata<'_>, want: &[Output]) -> bool {
    want.contains(&Output::from_u8(s.output.load(Ordering::Relaxed)))
        && level_to_u8(meta.level()) <= s.max_level.load(Ordering::Relaxed)
}

/// Sends each line as one syslog datagram: `<PRI>portsyncd: message`.
#[derive(Debug)]
struct SyslogLine {
    shared: Arc<Shared>,
    pri: u8,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let msg = String::from_utf8_lossy(&self.buf);
        let mut datagram = format!("<{}>{}: {}", self.pri, crate::sonic_db::APP_NAME, msg.trim_end());
        if let Some(fields) = line_fields() {
            push_label(&mut datagram, fields);
        }
        if let Some(datagram) = held::hold_syslog(&self.shared, datagram.into_bytes()) {
            send_syslog(&self.shared, std::slice::from_ref(&datagram));
        }
    }
}

/// Sends datagrams to the syslog socket, connecting first if needed (at most once per
/// [`RECONNECT_EVERY`]); what cannot be sent is counted as dropped, never waited for.
fn send_syslog(shared: &Shared, datagrams: &[Vec<u8>]) {
    let Ok(mut syslog) = shared.syslog.lock() else { return };
    let mut rest = datagrams;
    let drop_rest = |rest: &[Vec<u8>]| {
        shared.dropped.fetch_add(rest.len() as u64, Ordering::Relaxed);
    };
    let mut attempts = 0;
    while !rest.is_empty() {
        if syslog.sock.is_none() {
            let now = std::time::Instant::now();
            if syslog.last_try.is_some_and(|t| now.duration_since(t) < RECONNECT_EVERY) {
                return drop_rest(rest);
            }
            syslog.last_try = Some(now);
            // Non-blocking: a syslog daemon that stops reading must never stall port sync.
            syslog.sock = UnixDatagram::unbound()
                .ok()
                .filter(|s| s.set_nonblocking(true).is_ok() && s.connect(&shared.syslog_path).is_ok());
        }
        match syslog.sock.as_ref().map(|s| send_datagrams(s, rest)) {
            Some(Ok(sent)) => rest = rest.get(sent.max(1)..).unwrap_or_default(),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return drop_rest(rest),
            // The syslog daemon restarted: reconnect once (rate-limited).
            Some(Err(_)) if attempts == 0 => {
                attempts += 1;
                syslog.sock = None;
            }
            Some(Err(_)) => {
                syslog.sock = None;
                return drop_rest(rest);
            }
            None => return drop_rest(rest),
        }
    }
}

/// One `send` for one datagram, one `sendmmsg` for several; returns how many went.
fn send_datagrams(sock: &UnixDatagram, datagrams: &[Vec<u8>]) -> std::io::Result<usize> {
    use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    if let [one] = datagrams {
        return sock.send(one).map(|_| 1);
    }
    let slices: Vec<[IoSlice<'_>; 1]> = datagrams.iter().map(|d| [IoSlice::new(d)]).collect();
    let mut headers = MultiHeaders::<()>::preallocate(slices.len(), None);
    let to: Vec<Option<()>> = vec![None; slices.len()];
    let no_cmsgs: [ControlMessage<'_>; 0] = [];
    let sent = sendmmsg(sock.as_raw_fd(), &mut headers, &slices, &to, no_cmsgs, MsgFlags::empty())?;
    Ok(sent.count())
}

#[derive(Debug, Clone)]
struct SyslogWriter(Arc<Shared>);

impl<'a> MakeWriter<'a> for SyslogWriter {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogLine { shared: Arc::clone(&self.0), pri: FACILITY_USER | 5, buf: Vec::new() }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        SyslogLine { shared: Arc::clone(&self.0), pri: FACILITY_USER | severity(meta.level()), buf: Vec::new() }
    }
}

/// The fields every line ends with (`namespace=asic0 instance=2`), once set; `None` on a
/// single-ASIC switch with one instance, where lines are left as they are.
static LINE_FIELDS: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Sets the fields every line ends with: the ASIC namespace label and, when several instances
/// share the ports, this instance's id (syslog lines carry no pid to tell instances apart).
/// The first call wins.
pub fn set_line_fields(namespace: Option<&str>, instance: Option<u16>) {
    let _ = LINE_FIELDS.get_or_init(|| line_fields_from(namespace, instance));
}

fn line_fields_from(namespace: Option<&str>, instance: Option<u16>) -> Option<String> {
    let mut fields = Vec::new();
    if let Some(ns) = namespace {
        fields.push(format!("{}={ns}", crate::netns::LABEL));
    }
    if let Some(id) = instance {
        fields.push(format!("instance={id}"));
    }
    (!fields.is_empty()).then(|| fields.join(" "))
}

fn line_fields() -> Option<&'static str> {
    LINE_FIELDS.get().and_then(|f| f.as_deref())
}

/// Appends the fields to one line (the text without its newline).
fn push_label(line: &mut String, fields: &str) {
    line.push(' ');
    line.push_str(fields);
}

/// A formatted line (ending in a newline) with the fields before its newline.
fn labelled_line(formatted: &[u8], fields: &str) -> String {
    let mut line = String::from_utf8_lossy(formatted).trim_end_matches('\n').to_owned();
    push_label(&mut line, fields);
    line.push('\n');
    line
}

#[derive(Debug, Clone)]
struct StdWriter(Arc<Shared>);

/// stdout or stderr, whichever is in force.
#[derive(Debug)]
enum StdTarget {
    Out(std::io::Stdout),
    Err(std::io::Stderr),
}

/// One formatted line for stdout or stderr. With a namespace label it is held until dropped,
/// so that the label can go before its newline; without one it passes straight through.
#[derive(Debug)]
struct StdLine {
    target: StdTarget,
    label: Option<&'static str>,
    buf: Vec<u8>,
}

impl StdLine {
    fn target(&mut self) -> &mut dyn Write {
        match &mut self.target {
            StdTarget::Out(o) => o,
            StdTarget::Err(e) => e,
        }
    }

    fn output(&self) -> Output {
        match self.target {
            StdTarget::Out(_) => Output::Stdout,
            StdTarget::Err(_) => Output::Stderr,
        }
    }
}

impl Write for StdLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.label.is_some() {
            self.buf.extend_from_slice(b);
            return Ok(b.len());
        }
        if held::hold_std(self.output(), b) {
            return Ok(b.len());
        }
        self.target().write(b)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.target().flush()
    }
}

impl Drop for StdLine {
    fn drop(&mut self) {
        let Some(ns) = self.label else { return };
        if self.buf.is_empty() {
            return;
        }
        let line = labelled_line(&self.buf, ns);
        if held::hold_std(self.output(), line.as_bytes()) {
            return;
        }
        // As the unlabelled path: a closed stdout or stderr loses the line, nothing else.
        let _ = self.target().write_all(line.as_bytes());
    }
}

impl<'a> MakeWriter<'a> for StdWriter {
    type Writer = StdLine;

    fn make_writer(&'a self) -> Self::Writer {
        let target = match Output::from_u8(self.0.output.load(Ordering::Relaxed)) {
            Output::Stdout => StdTarget::Out(std::io::stdout()),
            _ => StdTarget::Err(std::io::stderr()),
        };
        StdLine { target, label: line_fields(), buf: Vec::new() }
    }
}

/// Installs the global subscriber: before CONFIG_DB is read, swss-common's defaults (NOTICE to
/// SYSLOG), or the `RUST_LOG` developer override. `syslog_path`: the syslog socket.
pub fn init(syslog_path: PathBuf) -> LogControl {
    let developer = std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty());
    let shared = Arc::new(Shared {
        output: AtomicU8::new(if developer { Output::Stderr } else { Output::Syslog } as u8),
        max_level: AtomicU8::new(filter_to_u8(if developer { LevelFilter::TRACE } else { LevelFilter::INFO })),
        syslog_path,
        syslog: Mutex::new(Syslog::default()),
        dropped: Default::default(),
        developer,
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let s1 = Arc::clone(&shared);
    let syslog = tracing_subscriber::fmt::layer()
        .without_time()
        .with_level(false)
        .with_target(false)
        .with_ansi(false)
        .with_writer(SyslogWriter(Arc::clone(&shared)))
        .with_filter(FilterFn::new(move |m| enabled(&s1, m, &[Output::Syslog])));
    let s2 = Arc::clone(&shared);
    let std = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(StdWriter(Arc::clone(&shared)))
        .with_filter(FilterFn::new(move |m| enabled(&s2, m, &[Output::Stdout, Output::Stderr])));
    let env = developer.then(|| EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let _ = tracing_subscriber::registry().with(env).with(syslog).with(std).try_init();
    LogControl(shared)
}

static CONTROL: std::sync::OnceLock<LogControl> = std::sync::OnceLock::new();

/// The control installed by [`init_global`], if any (library users and unit tests have none).
pub fn control() -> Option<&'static LogControl> {
    CONTROL.get()
}

/// [`init`], keeping the control where start-up and the CONFIG_DB watcher find it.
pub fn init_global(syslog_path: PathBuf) {
    let _ = CONTROL.set(init(syslog_path));
}

/// Reads CONFIG_DB `LOGGER|portsyncd` and applies it.
pub async fn refresh(config: &mut crate::redis_conn::DbConn, key: &str) -> Result<(), crate::redis_conn::WriteError> {
    let mut pipe = redis::pipe();
    pipe.hget(key, "LOGLEVEL").hget(key, "LOGOUTPUT");
    let (level, output): (Option<String>, Option<String>) = config.query("HGET LOGGER", &pipe).await?;
    if let Some(c) = control() {
        c.apply(level.as_deref(), output.as_deref());
    }
    Ok(())
}

/// Applies CONFIG_DB `LOGGER|portsyncd` whenever it changes (its keyspace notifications, as
/// swss-common's SubscriberStateTable listens: SONiC's Redis runs with `notify-keyspace-events`
/// on) and whenever `manual` is notified (SIGHUP, for `require_manual_refresh`). Runs until the
/// daemon ends; a lost connection is retried every second.
pub async fn watch_config(
    loc: crate::sonic_db::DbLocation,
    timeout: std::time::Duration,
    manual: Arc<tokio::sync::Notify>,
) {
    use futures_util::StreamExt;
    let key = loc.key("LOGGER", crate::sonic_db::APP_NAME);
    let channel = format!("__keyspace@{}__:{key}", loc.id);
    let mut config = crate::redis_conn::DbConn::new("CONFIG_DB", loc.clone(), Vec::new(), timeout);
    loop {
        let pubsub = async {
            let client = redis::Client::open(loc.info.clone())?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            redis::RedisResult::Ok(ps)
        };
        let mut ps = match tokio::time::timeout(timeout, pubsub).await {
            Ok(Ok(ps)) => ps,
            _ => {
                // Redis is away; SIGHUP still re-reads once it is back.
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = manual.notified() => { let _ = refresh(&mut config, &key).await; }
                }
                continue;
            }
        };
        // A change made while we were not subscribed.
        let _ = refresh(&mut config, &key).await;
        let mut messages = ps.on_message();
        loop {
            tokio::select! {
                m = messages.next() => {
                    if m.is_none() {
                        break;
                    }
                }
                _ = manual.notified() => tracing::info!("SIGHUP: re-reading CONFIG_DB LOGGER|portsyncd"),
            }
            if let Err(e) = refresh(&mut config, &key).await {
                tracing::warn!(error = %e, "cannot read CONFIG_DB LOGGER|portsyncd");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sonic_levels_map_onto_tracing_and_back_to_syslog_severities() {
        assert_eq!(level_filter("NOTICE"), Some(LevelFilter::INFO));
        assert_eq!(level_filter("INFO"), Some(LevelFilter::DEBUG));
        assert_eq!(level_filter("DEBUG"), Some(LevelFilter::TRACE));
        for l in ["EMERG", "ALERT", "CRIT", "ERROR"] {
            assert_eq!(level_filter(l), Some(LevelFilter::ERROR), "{l}");
        }
        assert_eq!(level_filter("debug"), None, "names are case-sensitive, as in swss-common");
        // NOTICE lines (tracing INFO) go out as LOG_NOTICE, and so on.
        assert_eq!(severity(&Level::INFO), 5);
        assert_eq!(severity(&Level::ERROR), 3);
        assert_eq!(severity(&Level::TRACE), 7);
        assert!(LEVELS.iter().all(|l| level_filter(l).is_some()));
    }

    /// Shared state with no syslog daemon behind its socket path.
    fn shared(output: Output) -> Arc<Shared> {
        Arc::new(Shared {
            output: AtomicU8::new(output as u8),
            max_level: AtomicU8::new(5),
            syslog_path: PathBuf::from("/nonexistent-psd/log"),
            syslog: Mutex::new(Syslog::default()),
            dropped: Default::default(),
            developer: false,
        })
    }

    #[test]
    fn without_a_syslog_socket_lines_are_dropped_and_connecting_is_tried_once_a_second() {
        let shared = shared(Output::Syslog);
        let w = SyslogWriter(Arc::clone(&shared));
        let mut first_try = None;
        for i in 0..50 {
            let mut line = w.make_writer();
            let _ = write!(line, "line {i}");
            drop(line);
            let t = shared.syslog.lock().unwrap().last_try;
            assert!(t.is_some());
            // One attempt, then none within the second.
            assert_eq!(*first_try.get_or_insert(t), t, "line {i} tried to connect again");
        }
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 50);
    }

    /// A syslog socket of our own (non-blocking receiver) and shared state that logs to it.
    fn syslog_socket() -> (tempfile::TempDir, UnixDatagram, Arc<Shared>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            output: AtomicU8::new(Output::Syslog as u8),
            max_level: AtomicU8::new(5),
            syslog_path: path,
            syslog: Mutex::new(Syslog::default()),
            dropped: Default::default(),
            developer: false,
        });
        (dir, rx, shared)
    }

    fn received(sock: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn held_syslog_lines_go_out_together_in_order_when_the_guard_drops() {
        let (_dir, rx, shared) = syslog_socket();
        let w = SyslogWriter(Arc::clone(&shared));
        let log = |text: &str| {
            let mut line = w.make_writer();
            let _ = write!(line, "{text}");
        };

        let held = hold_lines();
        log("Publish Ethernet0(ok:up) to state db");
        let inner = hold_lines();
        log("Publish Ethernet4(ok:down) to state db");
        drop(inner);
        log("Delete Ethernet8(ok) from state db");
        assert!(received(&rx).is_empty(), "a line left before the outermost guard dropped");
        drop(held);
        assert_eq!(
            received(&rx),
            [
                "<13>portsyncd: Publish Ethernet0(ok:up) to state db",
                "<13>portsyncd: Publish Ethernet4(ok:down) to state db",
                "<13>portsyncd: Delete Ethernet8(ok) from state db",
            ]
        );
        // Not holding: a line goes out at once.
        log("Publish Ethernet0(ok:down) to state db");
        assert_eq!(received(&rx), ["<13>portsyncd: Publish Ethernet0(ok:down) to state db"]);
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn held_lines_a_full_syslog_queue_cannot_take_are_counted_as_dropped() {
        let (_dir, rx, shared) = syslog_socket();
        let w = SyslogWriter(Arc::clone(&shared));
        const LINES: usize = 5000;
        {
            let _held = hold_lines();
            for i in 0..LINES {
                let mut line = w.make_writer();
                let _ = write!(line, "line {i} {}", "x".repeat(200));
            }
        }
        let got = received(&rx);
        let dropped = shared.dropped.load(Ordering::Relaxed) as usize;
        assert!(
            !got.is_empty() && dropped > 0,
            "the queue should take some and refuse the rest: {} / {dropped}",
            got.len()
        );
        assert_eq!(got.len() + dropped, LINES);
        // What went out is the first lines, in order.
        for (i, g) in got.iter().enumerate() {
            assert!(g.starts_with(&format!("<13>portsyncd: line {i} ")), "{i}: {g}");
        }
    }

    #[test]
    fn held_std_lines_wait_for_the_guard_and_an_output_switch_writes_what_was_held() {
        assert!(!held::hold_std(Output::Stderr, b"not held\n"), "held without a guard");
        let guard = hold_lines();
        assert!(held::hold_std(Output::Stderr, b"one\n"));
        assert_eq!(held::held_std(), Some((Output::Stderr, b"one\n".to_vec())));
        assert!(held::hold_std(Output::Stdout, b"two\n"));
        assert_eq!(
            held::held_std(),
            Some((Output::Stdout, b"two\n".to_vec())),
            "the stderr line was not written first"
        );
        drop(guard);
        assert_eq!(held::held_std(), None);
        assert!(!held::hold_std(Output::Stderr, b"not held\n"));
    }

    #[test]
    fn the_namespace_field_ends_the_line_and_leaves_the_message_alone() {
        let mut line = "<13>portsyncd: Publish Ethernet0(ok:up) to state db".to_owned();
        push_label(&mut line, "namespace=asic1");
        assert_eq!(line, "<13>portsyncd: Publish Ethernet0(ok:up) to state db namespace=asic1");
        assert_eq!(
            labelled_line(b"INFO x: message key=1\n", "namespace=asic1"),
            "INFO x: message key=1 namespace=asic1\n"
        );
        assert_eq!(labelled_line(b"a\nb\n", "namespace=asic1"), "a\nb namespace=asic1\n", "once per event");
        assert_eq!(line_fields_from(Some("asic1"), Some(2)).as_deref(), Some("namespace=asic1 instance=2"));
        assert_eq!(line_fields_from(None, Some(0)).as_deref(), Some("instance=0"));
        assert_eq!(line_fields_from(None, None), None, "single ASIC, one instance: lines unchanged");
    }

    #[test]
    fn invalid_values_fall_back_to_notice_and_syslog() {
        let shared = shared(Output::Stderr);
        let c = LogControl(shared);
        assert_eq!(c.apply(Some("DEBUG"), Some("STDOUT")), (LevelFilter::TRACE, Output::Stdout));
        assert_eq!(c.apply(Some("LOUD"), Some("PRINTER")), (LevelFilter::INFO, Output::Syslog));
        assert_eq!(c.apply(None, None), (LevelFilter::INFO, Output::Syslog));
    }
}
