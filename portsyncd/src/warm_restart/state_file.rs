//! The warm-restart port-state file. Input: the port map last written to STATE_DB, saved
//! atomically with rotated backups. Output on start: the newest usable saved state, or `None`
//! (cold start) when every candidate is missing, corrupt or stale.
//!
//! On-disk layout, for a configured path `<dir>/port_state.json`:
//! - `<dir>/port_state.json`: the current document (JSON, mode 0600, `<dir>` created 0700);
//! - `<dir>/backups/port_state.<unix_ms:013>.<seq:03>.json`: earlier documents, newest = largest
//!   `(unix_ms, seq)`; names also sort lexically (13 digits of milliseconds last until 2286);
//! - `*.corrupt.<unix_ms>`: files that failed to load, kept for a human and never read again;
//! - `<dir>/.port_state.json.tmp.<random>`: a save in progress (removed at the next load).
//!
//! Age is judged only by the document's own `saved_at_unix_ms`, never by mtime: copying or
//! restoring a file changes its mtime, and version 1 always writes the field, so a document
//! without it is malformed and treated as corrupt. A document dated more than
//! [`FUTURE_TOLERANCE`] ahead of the clock is treated as stale: its age cannot be known (the
//! clock stepped back, or the file came from another machine), so it is removed, not trusted.
//!
//! Saves of an unchanged document are skipped ([`StateStore::save_if_changed`]); only when the
//! current file nears the maximum age is it rewritten in place, without a new backup, so that
//! steady links neither fill `backups/` with copies nor let the file go stale.
//!
//! This module is long because the file's whole life is in one place (save, rotation, load
//! with fallback to backups, staleness, setting corrupt files aside), each step small and all
//! of them sharing the naming rules; about half of it is tests.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::metrics::WarmRestartMetrics;
use crate::atomic_file::{self, AtomicWriteError, Durability};

/// Version written into every document; any other version is not loaded.
pub const STATE_FILE_VERSION: u32 = 1;
/// Where the state file lives unless configured otherwise.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/sonic/portsyncd/port_state.json";
/// Backups kept by default.
pub const DEFAULT_BACKUPS: usize = 10;
/// Documents older than this are removed instead of loaded.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// How far a document's timestamp may lie ahead of the clock (NTP steps, slightly skewed
/// clocks) before it counts as stale.
pub const FUTURE_TOLERANCE: Duration = Duration::from_secs(60);
/// Larger files are rejected unread: 1024 ports take about 100 KiB, so anything this big is not
/// ours and must not be read into memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
const BACKUP_DIR: &str = "backups";
const CORRUPT_TAG: &str = ".corrupt.";
const FALLBACK_FILE_NAME: &str = "port_state.json";
/// Only the daemon reads the file back; its backups are hard links and share the mode.
const FILE_MODE: u32 = 0o600;

/// One port as last written to STATE_DB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRecord {
    /// Kernel ifindex; only meaningful within one boot (see [`LoadedState::same_boot`]).
    pub ifindex: u32,
    /// IFF_UP.
    pub admin_up: bool,
    /// IFF_RUNNING.
    pub oper_up: bool,
    /// MTU in bytes.
    pub mtu: u32,
    /// Raw `ifi_flags`.
    pub flags: u32,
}

/// Where the file lives and how much history to keep.
#[derive(Debug, Clone)]
pub struct StateFileConfig {
    /// The current file; backups go to `backups/` beside it.
    pub path: PathBuf,
    /// Backups kept after each save (0 keeps none).
    pub backups: usize,
    /// Documents older than this are removed, never loaded.
    pub max_age: Duration,
}

impl Default for StateFileConfig {
    fn default() -> Self {
        Self { path: PathBuf::from(DEFAULT_STATE_FILE), backups: DEFAULT_BACKUPS, max_age: DEFAULT_MAX_AGE }
    }
}

/// A document that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedState {
    /// Ports by name.
    pub ports: BTreeMap<String, PortRecord>,
    /// When it was saved, by the saving host's clock.
    pub saved_at: SystemTime,
    /// The document was written on SIGTERM after the last write was acknowledged, and it is the
    /// current file. Always false for a document recovered from a backup: the daemon saved
    /// again after it, so it is not the last state written and must be cross-checked.
    pub clean_shutdown: bool,
    /// Saved during this boot (same kernel boot_id), so its ifindexes are still valid. False
    /// when either boot id is unknown.
    pub same_boot: bool,
    /// The backup it came from, when the current file was missing or unusable.
    pub from_backup: Option<PathBuf>,
}

/// Why a save failed; the previous current file is untouched unless the rename succeeded.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// The state directory could not be created.
    #[error("cannot create state directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The document could not be encoded.
    #[error("cannot encode port state for {}", path.display())]
    Encode {
        /// The state file.
        path: PathBuf,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// Replacing the file (temporary file, rename, directory fsync) failed; the current file
    /// is untouched unless the rename succeeded.
    #[error(transparent)]
    Replace(#[from] AtomicWriteError),
}

/// The port-state file with its backups.
#[derive(Debug)]
pub struct StateStore {
    cfg: StateFileConfig,
    dir: PathBuf,
    backup_dir: PathBuf,
    /// `port_state.json`
    file_name: String,
    /// `port_state` and `.json` (or empty): the parts a backup name is built from.
    stem: String,
    ext: String,
    boot_id: Option<String>,
    /// What the last successful save wrote, for [`save_if_changed`](Self::save_if_changed).
    last_saved: Option<LastSave>,
}

/// The content of the last document written, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LastSave {
    ports: BTreeMap<String, PortRecord>,
    clean_shutdown: bool,
    at_ms: u64,
}

/// What [`StateStore::save_if_changed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveOutcome {
    /// The document changed: written, the previous one rotated into the backups.
    Written,
    /// Unchanged but past half the maximum age: rewritten with a new date, no backup taken.
    Refreshed,
    /// Unchanged since the last save: nothing touched.
    Unchanged,
}

/// Document as written; borrows the caller's map so a save copies nothing.
#[derive(Serialize)]
struct DocumentOut<'a> {
    version: u32,
    saved_at_unix_ms: u64,
    clean_shutdown: bool,
    boot_id: Option<&'a str>,
    ports: &'a BTreeMap<String, PortRecord>,
}

/// Document as read back (see [`parse_document`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DocumentIn {
    /// Layout version ([`STATE_FILE_VERSION`] is the one this build reads).
    pub version: u32,
    /// When it was saved, Unix milliseconds by the saving host's clock.
    pub saved_at_unix_ms: u64,
    /// Written on SIGTERM after the last write was acknowledged.
    pub clean_shutdown: bool,
    /// The saving kernel's boot_id, if it was known.
    pub boot_id: Option<String>,
    /// Ports by name.
    pub ports: BTreeMap<String, PortRecord>,
}

/// How far [`StateStore::sweep`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sweep {
    /// Up to the first usable document.
    UntilUsable,
    /// Every candidate.
    All,
}

/// Read when a document does not parse, so that another version's layout is reported as such,
/// not as a parse error.
#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}

/// Why a file was set aside; only logged.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("cannot open: {0}")]
    Open(io::Error),
    #[error("not a regular file")]
    NotRegular,
    #[error("larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    #[error("cannot read: {0}")]
    Read(io::Error),
    #[error("empty")]
    Empty,
    #[error("malformed: {0}")]
    Malformed(serde_json::Error),
    #[error("unknown version {0} (expected {STATE_FILE_VERSION})")]
    UnknownVersion(u32),
}

#[derive(Debug, thiserror::Error)]
enum Staleness {
    #[error("saved {age:?} ago, past the maximum age")]
    Old { age: Duration },
    #[error("dated {ahead:?} in the future; its age cannot be known")]
    Future { ahead: Duration },
}

#[derive(Debug)]
enum Verdict {
    Absent,
    Usable(DocumentIn),
    Stale(Staleness),
    Corrupt(Rejection),
}

/// Orders backups; `seq` separates saves within one millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct BackupKey {
    millis: u64,
    seq: u32,
}

impl BackupKey {
    /// The key for a new backup: after every existing one even if the clock stepped back, so
    /// "newest" always means "most recently rotated".
    fn next(newest: Option<BackupKey>, now_ms: u64) -> BackupKey {
        match newest {
            Some(k) if k.millis >= now_ms => BackupKey { millis: k.millis, seq: k.seq.saturating_add(1) },
            _ => BackupKey { millis: now_ms, seq: 0 },
        }
    }
}

impl StateStore {
    /// A store for `cfg.path`; touches nothing on disk until [`load`](Self::load) or
    /// [`save`](Self::save). A path without a file name (config validation rejects those) is
    /// treated as a directory holding `port_state.json`.
    pub fn new(mut cfg: StateFileConfig) -> Self {
        if cfg.path.file_name().is_none() {
            cfg.path = cfg.path.join(FALLBACK_FILE_NAME);
        }
        let dir = atomic_file::parent_dir(&cfg.path).to_path_buf();
        let file_name = lossy(cfg.path.file_name());
        let stem = lossy(cfg.path.file_stem());
        let ext = cfg.path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
        Self {
            backup_dir: dir.join(BACKUP_DIR),
            dir,
            file_name,
            stem,
            ext,
            boot_id: read_boot_id(),
            last_saved: None,
            cfg,
        }
    }

    /// The current file's path.
    pub fn path(&self) -> &Path {
        &self.cfg.path
    }

    /// The newest usable document: the current file, else the backups newest first. Along the
    /// way every stale candidate is removed and every unusable one renamed to
    /// `*.corrupt.<unix_ms>`, each logged and counted; leftover temporary files are removed.
    /// Never fails: anything unexpected ends in `None`, i.e. a cold start.
    pub fn load(&mut self, metrics: &mut WarmRestartMetrics) -> Option<LoadedState> {
        self.load_at(now_unix_ms(), metrics)
    }

    /// Writes `ports` as the current document: the previous current file becomes the newest
    /// backup (retention applied), then temp file, fsync, rename, fsync of the directory.
    /// `clean_shutdown` is true only for the final save on SIGTERM after the last Redis write
    /// was acknowledged. Backup problems are logged and do not fail the save.
    pub fn save(
        &mut self,
        ports: &BTreeMap<String, PortRecord>,
        clean_shutdown: bool,
        metrics: &mut WarmRestartMetrics,
    ) -> Result<(), StateFileError> {
        self.save_at(now_unix_ms(), ports, clean_shutdown, metrics)
    }

    /// [`save`](Self::save), unless this store's last successful save wrote the same ports and
    /// the same `clean_shutdown`: then nothing is written (a periodic save of steady links takes
    /// no backup and no fsync), except that a document past half the maximum age is rewritten
    /// in place, without a backup, so that it never goes stale while still true.
    pub fn save_if_changed(
        &mut self,
        ports: &BTreeMap<String, PortRecord>,
        clean_shutdown: bool,
        metrics: &mut WarmRestartMetrics,
    ) -> Result<SaveOutcome, StateFileError> {
        self.save_if_changed_at(now_unix_ms(), ports, clean_shutdown, metrics)
    }

    /// Whether [`save_if_changed`](Self::save_if_changed) would write nothing now; no I/O.
    pub fn is_unchanged(&self, ports: &BTreeMap<String, PortRecord>, clean_shutdown: bool) -> bool {
        self.unchanged_at(now_unix_ms(), ports, clean_shutdown) == Some(true)
    }

    /// Removes stale documents (current and backups), `*.corrupt.*` files older than the
    /// maximum age and leftover temporary files. Corrupt documents are left for
    /// [`load`](Self::load) to set aside.
    pub fn remove_stale(&mut self, metrics: &mut WarmRestartMetrics) {
        self.sweep(now_unix_ms(), false, Sweep::All, metrics);
    }

    /// What [`load`](Self::load) left unexamined: stale backups are removed and corrupt ones
    /// set aside, as a load that read every candidate would have done.
    pub fn sweep_backups(&mut self, metrics: &mut WarmRestartMetrics) {
        self.sweep(now_unix_ms(), true, Sweep::All, metrics);
    }

    fn load_at(&mut self, now_ms: u64, metrics: &mut WarmRestartMetrics) -> Option<LoadedState> {
        let (doc, from_backup) = self.sweep(now_ms, true, Sweep::UntilUsable, metrics)?;
        let saved_at = UNIX_EPOCH.checked_add(Duration::from_millis(doc.saved_at_unix_ms)).unwrap_or(UNIX_EPOCH);
        let same_boot = matches!((&doc.boot_id, &self.boot_id), (Some(a), Some(b)) if a == b);
        let state = LoadedState {
            ports: doc.ports,
            saved_at,
            clean_shutdown: doc.clean_shutdown && from_backup.is_none(),
            same_boot,
            from_backup,
        };
        match &state.from_backup {
            Some(backup) => {
                metrics.record_recovery_from_backup();
                warn!(
                    path = %backup.display(),
                    ports = state.ports.len(),
                    same_boot,
                    "port state recovered from backup; current state file unusable or missing"
                );
            }
            None => info!(
                path = %self.cfg.path.display(),
                ports = state.ports.len(),
                clean_shutdown = state.clean_shutdown,
                same_boot,
                "port state loaded"
            ),
        }
        Some(state)
    }

    /// Examines the candidates, newest first, removing stale ones and (if `set_aside`)
    /// renaming corrupt ones; returns the first usable document and, if it is a backup, its
    /// path. Older usable backups are kept: they are the fallback for the next start.
    /// [`Sweep::UntilUsable`] stops at the first usable one (a warm start reads no more than
    /// it needs before PortInitDone; [`sweep_backups`](Self::sweep_backups) does the rest later).
    fn sweep(
        &mut self,
        now_ms: u64,
        set_aside: bool,
        extent: Sweep,
        metrics: &mut WarmRestartMetrics,
    ) -> Option<(DocumentIn, Option<PathBuf>)> {
        self.remove_temp_files();
        self.remove_old_corrupt_files(now_ms);
        let mut candidates = vec![(self.cfg.path.clone(), false)];
        candidates.extend(self.list_backups().into_iter().rev().map(|(_, p)| (p, true)));

        let mut found = None;
        for (path, is_backup) in candidates {
            if found.is_some() && extent == Sweep::UntilUsable {
                break;
            }
            match examine(&path, now_ms, self.cfg.max_age) {
                Verdict::Absent => {}
                Verdict::Usable(doc) => {
                    if found.is_none() {
                        found = Some((doc, is_backup.then_some(path)));
                    }
                }
                Verdict::Stale(why) => match fs::remove_file(&path) {
                    Ok(()) => {
                        metrics.record_stale_removed();
                        info!(
                            path = %path.display(),
                            reason = %why,
                            "stale port state file removed"
                        );
                    }
                    Err(e) => warn!(
                        path = %path.display(),
                        reason = %why,
                        error = %e,
                        "cannot remove stale port state file; not loading it"
                    ),
                },
                Verdict::Corrupt(why) => {
                    if !set_aside {
                        continue;
                    }
                    metrics.record_corrupt_file();
                    match set_aside_corrupt(&path, now_ms) {
                        Ok(to) => warn!(
                            path = %path.display(),
                            reason = %why,
                            moved_to = %to.display(),
                            "unusable port state file set aside"
                        ),
                        Err(e) => warn!(
                            path = %path.display(),
                            reason = %why,
                            error = %e,
                            "unusable port state file could not be set aside"
                        ),
                    }
                }
            }
        }
        found
    }

    /// `Some(true)`: same content as the last save and young enough to leave alone;
    /// `Some(false)`: same content but due for a refresh; `None`: changed (or never saved).
    fn unchanged_at(&self, now_ms: u64, ports: &BTreeMap<String, PortRecord>, clean_shutdown: bool) -> Option<bool> {
        let last = self.last_saved.as_ref().filter(|l| l.clean_shutdown == clean_shutdown && l.ports == *ports)?;
        let refresh_after_ms = u64::try_from(self.cfg.max_age.as_millis() / 2).unwrap_or(u64::MAX);
        // A clock that stepped back makes the age 0: the file is then younger, not older.
        Some(now_ms.saturating_sub(last.at_ms) < refresh_after_ms)
    }

    fn save_if_changed_at(
        &mut self,
        now_ms: u64,
        ports: &BTreeMap<String, PortRecord>,
        clean_shutdown: bool,
        metrics: &mut WarmRestartMetrics,
    ) -> Result<SaveOutcome, StateFileError> {
        match self.unchanged_at(now_ms, ports, clean_shutdown) {
            Some(true) => Ok(SaveOutcome::Unchanged),
            Some(false) => {
                self.counted_save(now_ms, ports, clean_shutdown, false, metrics).map(|()| SaveOutcome::Refreshed)
            }
            None => self.counted_save(now_ms, ports, clean_shutdown, true, metrics).map(|()| SaveOutcome::Written),
        }
    }

    fn save_at(
        &mut self,
        now_ms: u64,
        ports: &BTreeMap<String, PortRecord>,
        clean_shutdown: bool,
        metrics: &mut WarmRestartMetrics,
    ) -> Result<(), StateFileError> {
        self.counted_save(now_ms, ports, clean_shutdown, true, metrics)
    }

    fn counted_save(
        &mut self,
        now_ms: u64,
        ports: &BTreeMap<String, PortRecord>,
        clean_shutdown: bool,
        backup: bool,
        metrics: &mut WarmRestartMetrics,
    ) -> Result<(), StateFileError> {
        let result = self.write_document(now_ms, ports, clean_shutdown, backup, metrics);
        match &result {
            Ok(()) => {
                metrics.record_save();
                self.last_saved = Some(LastSave { ports: ports.clone(), clean_shutdown, at_ms: now_ms });
            }
            Err(_) => metrics.record_save_failure(),
        }
        result
    }

    fn write_document(
        &mut self,
        now_ms: u64,
        ports: &BTreeMap<String, PortRecord>,
        clean_shutdown: bool,
        backup: bool,
        metrics: &mut WarmRestartMetrics,
    ) -> Result<(), StateFileError> {
        create_private_dir(&self.dir).map_err(|source| StateFileError::CreateDir { path: self.dir.clone(), source })?;
        let body = encode_document(now_ms, clean_shutdown, self.boot_id.as_deref(), ports)
            .map_err(|source| StateFileError::Encode { path: self.cfg.path.clone(), source })?;

        // Link the old file into backups/ before replacing it, so that at every instant the
        // current name holds a complete document (the old one, then the new one).
        if backup {
            self.rotate(now_ms, metrics);
        }
        Ok(atomic_file::replace(&self.cfg.path, &body, FILE_MODE, Durability::Synced)?)
    }

    /// Hard-links the current file into backups/ (no copy, no window without a current file)
    /// and applies retention. Failures only cost history, so they are logged, not returned.
    fn rotate(&mut self, now_ms: u64, metrics: &mut WarmRestartMetrics) {
        if self.cfg.backups > 0 {
            match fs::symlink_metadata(&self.cfg.path) {
                Ok(m) if m.is_file() => self.link_backup(now_ms, metrics),
                Ok(_) => {
                    warn!(
                        path = %self.cfg.path.display(),
                        "state path is not a regular file; not backed up"
                    )
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(
                        path = %self.cfg.path.display(),
                        error = %e,
                        "cannot stat state file; not backed up"
                    )
                }
            }
        }
        let backups = self.list_backups();
        let excess = backups.len().saturating_sub(self.cfg.backups);
        let mut cleaned = 0u64;
        for (_, path) in backups.into_iter().take(excess) {
            match fs::remove_file(&path) {
                Ok(()) => cleaned += 1,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot remove old port state backup")
                }
            }
        }
        if cleaned > 0 {
            metrics.record_backups_cleaned(cleaned);
        }
    }

    fn link_backup(&mut self, now_ms: u64, metrics: &mut WarmRestartMetrics) {
        if let Err(e) = create_private_dir(&self.backup_dir) {
            warn!(
                path = %self.backup_dir.display(),
                error = %e,
                "cannot create backup directory; not backed up"
            );
            return;
        }
        let newest = self.list_backups().last().map(|(k, _)| *k);
        let key = BackupKey::next(newest, now_ms);
        let dest = self.backup_dir.join(self.backup_name(key));
        match fs::hard_link(&self.cfg.path, &dest) {
            Ok(()) => {
                metrics.record_backup_created();
                if let Err(e) = atomic_file::sync_dir(&self.backup_dir) {
                    warn!(
                        path = %self.backup_dir.display(),
                        error = %e,
                        "cannot fsync backup directory"
                    );
                }
            }
            Err(e) => warn!(
                from = %self.cfg.path.display(),
                to = %dest.display(),
                error = %e,
                "cannot create port state backup"
            ),
        }
    }

    fn backup_name(&self, key: BackupKey) -> String {
        format!("{}.{:013}.{:03}{}", self.stem, key.millis, key.seq, self.ext)
    }

    fn parse_backup_name(&self, name: &str) -> Option<BackupKey> {
        let middle = name.strip_prefix(self.stem.as_str())?.strip_prefix('.')?.strip_suffix(self.ext.as_str())?;
        let (millis, seq) = middle.split_once('.')?;
        Some(BackupKey { millis: parse_digits(millis)?, seq: parse_digits(seq)? })
    }

    /// Backups oldest first. An unreadable directory yields none (logged).
    fn list_backups(&self) -> Vec<(BackupKey, PathBuf)> {
        let mut out: Vec<_> = dir_names(&self.backup_dir)
            .into_iter()
            .filter_map(|name| Some((self.parse_backup_name(&name)?, self.backup_dir.join(name))))
            .collect();
        out.sort();
        out
    }

    /// Temp files are only ever ours and never outlive a save, so any found belong to a save
    /// that was interrupted (crash, power loss).
    fn remove_temp_files(&self) {
        let prefix = atomic_file::temp_prefix(&self.file_name);
        for name in dir_names(&self.dir).into_iter().filter(|n| n.starts_with(&prefix)) {
            let path = self.dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {
                    info!(path = %path.display(), "removed temporary file of an interrupted save")
                }
                Err(e) => {
                    warn!(
                        path = %path.display(),
                        error = %e,
                        "cannot remove leftover temporary state file"
                    )
                }
            }
        }
    }

    /// Set-aside files are for a human to inspect; after the maximum age they only use space.
    /// Their age is the timestamp in their name (when they were set aside).
    fn remove_old_corrupt_files(&self, now_ms: u64) {
        let max_age_ms = u64::try_from(self.cfg.max_age.as_millis()).unwrap_or(u64::MAX);
        let prefix = format!("{}.", self.stem);
        for dir in [&self.dir, &self.backup_dir] {
            for name in dir_names(dir) {
                if !name.starts_with(&prefix) {
                    continue;
                }
                let Some(set_aside_ms) = corrupt_timestamp(&name) else {
                    continue;
                };
                if now_ms.saturating_sub(set_aside_ms) <= max_age_ms {
                    continue;
                }
                let path = dir.join(name);
                match fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path)) {
                    Ok(()) => info!(path = %path.display(), "removed old set-aside state file"),
                    Err(e) => {
                        warn!(
                            path = %path.display(),
                            error = %e,
                            "cannot remove old set-aside state file"
                        )
                    }
                }
            }
        }
    }
}

/// The bytes [`StateStore::save`] writes: one JSON document of the current version, newline
/// terminated.
pub fn encode_document(
    saved_at_unix_ms: u64,
    clean_shutdown: bool,
    boot_id: Option<&str>,
    ports: &BTreeMap<String, PortRecord>,
) -> Result<Vec<u8>, serde_json::Error> {
    let doc = DocumentOut { version: STATE_FILE_VERSION, saved_at_unix_ms, clean_shutdown, boot_id, ports };
    let mut body = serde_json::to_vec(&doc)?;
    body.push(b'\n');
    Ok(body)
}

/// Judges a state file's contents as [`StateStore::load`] does once the file is read (size,
/// version, fields, then age at `now_ms` Unix milliseconds against `max_age` and
/// [`FUTURE_TOLERANCE`]): the document if it would be loaded, `None` if it would be set aside
/// or removed. No I/O (the `state_file` fuzz target drives it).
pub fn parse_document(body: &[u8], now_ms: u64, max_age: Duration) -> Option<DocumentIn> {
    match judge(body, now_ms, max_age) {
        Verdict::Usable(doc) => Some(doc),
        Verdict::Absent | Verdict::Stale(_) | Verdict::Corrupt(_) => None,
    }
}

/// Reads and judges one candidate. Opening with O_NONBLOCK keeps a FIFO at the path from
/// blocking start-up; everything but a regular file is rejected before reading.
fn examine(path: &Path, now_ms: u64, max_age: Duration) -> Verdict {
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Verdict::Absent,
        Err(e) => return Verdict::Corrupt(Rejection::Open(e)),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Verdict::Corrupt(Rejection::Read(e)),
    };
    if !meta.is_file() {
        return Verdict::Corrupt(Rejection::NotRegular);
    }
    if meta.len() > MAX_FILE_BYTES {
        return Verdict::Corrupt(Rejection::TooLarge);
    }
    let mut body = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The limit also covers a file that grows between fstat and read.
    if let Err(e) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut body) {
        return Verdict::Corrupt(Rejection::Read(e));
    }
    judge(&body, now_ms, max_age)
}

/// Judges one candidate's bytes.
fn judge(body: &[u8], now_ms: u64, max_age: Duration) -> Verdict {
    if body.len() as u64 > MAX_FILE_BYTES {
        return Verdict::Corrupt(Rejection::TooLarge);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Verdict::Corrupt(Rejection::Empty);
    }
    // One parse in the common case; the version probe only explains a failure.
    let doc: DocumentIn = match serde_json::from_slice::<DocumentIn>(body) {
        Ok(d) if d.version == STATE_FILE_VERSION => d,
        Ok(d) => return Verdict::Corrupt(Rejection::UnknownVersion(d.version)),
        Err(e) => {
            return match serde_json::from_slice::<VersionProbe>(body) {
                Ok(p) if p.version != STATE_FILE_VERSION => Verdict::Corrupt(Rejection::UnknownVersion(p.version)),
                _ => Verdict::Corrupt(Rejection::Malformed(e)),
            }
        }
    };
    let tolerance_ms = u64::try_from(FUTURE_TOLERANCE.as_millis()).unwrap_or(u64::MAX);
    if doc.saved_at_unix_ms > now_ms.saturating_add(tolerance_ms) {
        let ahead = Duration::from_millis(doc.saved_at_unix_ms - now_ms);
        return Verdict::Stale(Staleness::Future { ahead });
    }
    let age = Duration::from_millis(now_ms.saturating_sub(doc.saved_at_unix_ms));
    if age > max_age {
        return Verdict::Stale(Staleness::Old { age });
    }
    Verdict::Usable(doc)
}

/// Renames `path` to `<name>.corrupt.<now_ms>` in the same directory (`.<n>` appended if that
/// exists) so it is kept for inspection but never matches a candidate name again.
fn set_aside_corrupt(path: &Path, now_ms: u64) -> io::Result<PathBuf> {
    let name = lossy(path.file_name());
    let base = format!("{name}{CORRUPT_TAG}{now_ms}");
    let mut dest = path.with_file_name(&base);
    let mut n = 0u32;
    while fs::symlink_metadata(&dest).is_ok() {
        n += 1;
        dest = path.with_file_name(format!("{base}.{n}"));
    }
    fs::rename(path, &dest)?;
    Ok(dest)
}

/// The set-aside time in `<name>.corrupt.<ms>[.<n>]`.
fn corrupt_timestamp(name: &str) -> Option<u64> {
    let (_, tail) = name.rsplit_once(CORRUPT_TAG)?;
    let ms = tail.split_once('.').map_or(tail, |(ms, n)| if parse_digits::<u32>(n).is_some() { ms } else { "" });
    parse_digits(ms)
}

fn parse_digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// UTF-8 names in `dir`; none if it is missing or unreadable (logged unless missing).
fn dir_names(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            warn!(path = %dir.display(), error = %e, "cannot list state directory");
            Vec::new()
        }
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn read_boot_id() -> Option<String> {
    let id = fs::read_to_string(BOOT_ID_PATH).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

fn lossy(s: Option<&std::ffi::OsStr>) -> String {
    s.map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};
    use std::time::Instant;

    const DAY_MS: u64 = 24 * 60 * 60 * 1000;

    /// `n` ports; `mtu` doubles as a marker telling which save a document came from.
    fn ports(n: usize, mtu: u32) -> BTreeMap<String, PortRecord> {
        (0..n)
            .map(|i| {
                let rec = PortRecord {
                    ifindex: 100 + u32::try_from(i).unwrap(),
                    admin_up: i % 2 == 0,
                    oper_up: i % 3 == 0,
                    mtu,
                    flags: 0x1_1043,
                };
                (format!("Ethernet{}", i * 4), rec)
            })
            .collect()
    }

    fn store_in(root: &Path, backups: usize) -> StateStore {
        let mut s = StateStore::new(StateFileConfig {
            path: root.join("state/port_state.json"),
            backups,
            max_age: DEFAULT_MAX_AGE,
        });
        s.boot_id = Some("boot-a".into());
        s
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v = dir_names(dir);
        v.sort();
        v
    }

    fn marker(path: &Path) -> u32 {
        match examine(path, now_unix_ms(), Duration::MAX) {
            Verdict::Usable(d) => d.ports["Ethernet0"].mtu,
            v => panic!("{}: {v:?}", path.display()),
        }
    }

    fn backup_markers(store: &StateStore) -> Vec<u32> {
        store.list_backups().iter().map(|(_, p)| marker(p)).collect()
    }

    fn saves(store: &mut StateStore, markers: std::ops::RangeInclusive<u32>, clean: bool, m: &mut WarmRestartMetrics) {
        for mtu in markers {
            store.save(&ports(4, mtu), clean, m).unwrap();
        }
    }

    fn set_aside_names(dir: &Path, prefix: &str) -> Vec<String> {
        names(dir).into_iter().filter(|n| n.starts_with(prefix) && n.contains(CORRUPT_TAG)).collect()
    }

    #[test]
    fn round_trip_preserves_every_field() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store =
            StateStore::new(StateFileConfig { path: tmp.path().join("port_state.json"), ..StateFileConfig::default() });
        assert!(store.boot_id.is_some(), "boot_id must be read from {BOOT_ID_PATH}");
        let mut m = WarmRestartMetrics::default();
        let mut p = ports(8, 9100);
        p.insert(
            "Ethernet200".into(),
            PortRecord { ifindex: u32::MAX, admin_up: true, oper_up: false, mtu: 0, flags: u32::MAX },
        );

        let before = SystemTime::now();
        store.save(&p, false, &mut m).unwrap();
        let after = SystemTime::now();

        let loaded = StateStore::new(store.cfg.clone()).load(&mut m).unwrap();
        assert_eq!(loaded.ports, p);
        assert!(!loaded.clean_shutdown);
        assert!(loaded.same_boot);
        assert_eq!(loaded.from_backup, None);
        let slack = Duration::from_millis(1);
        assert!(loaded.saved_at + slack >= before && loaded.saved_at <= after + slack, "{:?}", loaded.saved_at);
        assert_eq!(m.state_saves, 1);
        assert_eq!(m.state_save_failures, 0);
        assert_eq!(m.corrupt_files_found, 0);
        assert_eq!(m.recoveries_from_backup, 0);
    }

    #[test]
    fn clean_shutdown_round_trips_both_ways() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 3);
        let mut m = WarmRestartMetrics::default();
        for clean in [true, false, true] {
            store.save(&ports(2, 1500), clean, &mut m).unwrap();
            assert_eq!(store.load(&mut m).unwrap().clean_shutdown, clean);
        }
    }

    #[test]
    fn document_has_the_documented_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 3);
        let mut m = WarmRestartMetrics::default();
        store.save(&ports(1, 9100), true, &mut m).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(store.path()).unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        assert!(v["saved_at_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
        assert_eq!(v["clean_shutdown"], true);
        assert_eq!(v["boot_id"], "boot-a");
        assert_eq!(
            v["ports"]["Ethernet0"],
            serde_json::json!({
                "ifindex": 100, "admin_up": true, "oper_up": true, "mtu": 9100, "flags": 0x1_1043
            })
        );
    }

    #[test]
    fn save_leaves_no_temp_files_and_uses_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 3);
        let mut m = WarmRestartMetrics::default();
        saves(&mut store, 1..=5, false, &mut m);

        let dir = tmp.path().join("state");
        assert_eq!(names(&dir), ["backups", "port_state.json"]);
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(store.path()), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("backups")), 0o700);
        for (_, b) in store.list_backups() {
            assert_eq!(mode(&b), 0o600, "{}", b.display());
        }
    }

    #[test]
    fn leftover_temp_files_are_removed_on_load() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 3);
        let mut m = WarmRestartMetrics::default();
        store.save(&ports(2, 7), false, &mut m).unwrap();
        let dir = tmp.path().join("state");
        fs::write(dir.join(".port_state.json.tmp.4242.1"), b"{\"version\":1,").unwrap();
        fs::write(dir.join("unrelated.tmp.1"), b"keep").unwrap();

        assert_eq!(marker(store.path()), 7);
        assert!(store.load(&mut m).is_some());
        assert_eq!(names(&dir), ["port_state.json", "unrelated.tmp.1"]);
    }

    #[test]
    fn failed_save_removes_its_temp_file_and_is_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 3);
        let mut m = WarmRestartMetrics::default();
        // A non-empty directory where the file should be: rename(2) cannot replace it.
        fs::create_dir_all(store.path().join("x")).unwrap();

        let err = store.save(&ports(2, 1), false, &mut m).unwrap_err();
        assert!(matches!(err, StateFileError::Replace(AtomicWriteError::Rename { .. })), "{err:?}");
        assert_eq!(names(&tmp.path().join("state")), ["port_state.json"]);
        assert_eq!((m.state_saves, m.state_save_failures, m.backups_created), (0, 1, 0));
    }

    #[test]
    fn save_reports_an_uncreatable_directory() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("state"), b"a file, not a directory").unwrap();
        let mut store = store_in(tmp.path(), 3);
        let mut m = WarmRestartMetrics::default();
        let err = store.save(&ports(2, 1), false, &mut m).unwrap_err();
        match &err {
            StateFileError::CreateDir { path, .. } => assert_eq!(path, &tmp.path().join("state")),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("state"), "{err}");
        assert!(std::error::Error::source(&err).is_some());
        assert_eq!(m.state_save_failures, 1);
    }

    #[test]
    fn unchanged_state_is_not_written_and_takes_no_backup() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 3);
        let mut m = WarmRestartMetrics::default();
        assert_eq!(store.save_if_changed(&ports(4, 1), false, &mut m).unwrap(), SaveOutcome::Written);
        let before = fs::read(store.path()).unwrap();
        let inode = fs::metadata(store.path()).unwrap().ino();

        assert!(store.is_unchanged(&ports(4, 1), false));
        for _ in 0..3 {
            assert_eq!(store.save_if_changed(&ports(4, 1), false, &mut m).unwrap(), SaveOutcome::Unchanged);
        }
        assert_eq!(fs::read(store.path()).unwrap(), before, "rewritten (saved_at would differ)");
        assert_eq!(fs::metadata(store.path()).unwrap().ino(), inode, "replaced");
        assert!(store.list_backups().is_empty());
        assert_eq!((m.state_saves, m.backups_created), (1, 0));
    }

    #[test]
    fn changed_state_is_written_and_the_previous_document_backed_up() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 3);
        let mut m = WarmRestartMetrics::default();
        assert_eq!(store.save_if_changed(&ports(4, 1), false, &mut m).unwrap(), SaveOutcome::Written);
        assert!(!store.is_unchanged(&ports(4, 2), false));
        assert_eq!(store.save_if_changed(&ports(4, 2), false, &mut m).unwrap(), SaveOutcome::Written);
        assert_eq!(marker(store.path()), 2);
        assert_eq!(backup_markers(&store), [1]);

        // The clean-shutdown flag is part of the document: a change of it alone is written.
        assert!(!store.is_unchanged(&ports(4, 2), true));
        assert_eq!(store.save_if_changed(&ports(4, 2), true, &mut m).unwrap(), SaveOutcome::Written);
        assert!(store.load(&mut m).unwrap().clean_shutdown);
        assert_eq!(backup_markers(&store), [1, 2]);
        assert_eq!((m.state_saves, m.backups_created), (3, 2));
    }

    #[test]
    fn unchanged_state_past_half_the_max_age_is_refreshed_without_a_backup() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 3);
        let mut m = WarmRestartMetrics::default();
        let t = now_unix_ms();
        let half = DEFAULT_MAX_AGE.as_millis() as u64 / 2;
        store.save_if_changed_at(t, &ports(4, 1), false, &mut m).unwrap();
        let at = |store: &StateStore| match examine(store.path(), now_unix_ms() + 2 * half, Duration::MAX) {
            Verdict::Usable(d) => d.saved_at_unix_ms,
            v => panic!("{v:?}"),
        };
        assert_eq!(
            store.save_if_changed_at(t + half - 1, &ports(4, 1), false, &mut m).unwrap(),
            SaveOutcome::Unchanged
        );
        assert_eq!(at(&store), t);
        assert_eq!(store.save_if_changed_at(t + half, &ports(4, 1), false, &mut m).unwrap(), SaveOutcome::Refreshed);
        assert_eq!(at(&store), t + half);
        assert!(store.list_backups().is_empty());
        assert_eq!(
            store.save_if_changed_at(t + half + 1, &ports(4, 1), false, &mut m).unwrap(),
            SaveOutcome::Unchanged,
            "the refresh counts as the last save"
        );
    }

    #[test]
    fn a_failed_save_is_not_taken_as_the_last_saved_state() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 3);
        let mut m = WarmRestartMetrics::default();
        fs::create_dir_all(store.path().join("x")).unwrap();
        assert!(store.save_if_changed(&ports(4, 1), false, &mut m).is_err());
        fs::remove_dir_all(store.path()).unwrap();
        assert_eq!(store.save_if_changed(&ports(4, 1), false, &mut m).unwrap(), SaveOutcome::Written);
        assert_eq!(marker(store.path()), 1);
    }

    #[test]
    fn rotation_keeps_the_newest_backups_up_to_retention() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 3);
        let mut m = WarmRestartMetrics::default();
        saves(&mut store, 1..=6, false, &mut m);

        assert_eq!(backup_markers(&store), [3, 4, 5]);
        assert_eq!(marker(store.path()), 6);
        assert_eq!((m.backups_created, m.backups_cleaned, m.state_saves), (5, 2, 6));
    }

    #[test]
    fn retention_ignores_foreign_files_in_the_backup_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 2);
        let mut m = WarmRestartMetrics::default();
        let bdir = tmp.path().join("state/backups");
        fs::create_dir_all(&bdir).unwrap();
        let foreign = ["README", "port_state.abc.000.json", "port_state.1.2.txt", "port_state.+1.000.json"];
        for f in foreign {
            fs::write(bdir.join(f), b"x").unwrap();
        }
        saves(&mut store, 1..=5, false, &mut m);
        assert_eq!(backup_markers(&store), [3, 4]);
        for f in foreign {
            assert!(bdir.join(f).exists(), "{f} was touched");
        }
        assert_eq!(store.load(&mut m).unwrap().ports, ports(4, 5));
    }

    #[test]
    fn zero_retention_removes_all_backups() {
        let tmp = tempfile::tempdir().unwrap();
        let mut m = WarmRestartMetrics::default();
        let mut store = store_in(tmp.path(), 3);
        saves(&mut store, 1..=4, false, &mut m);
        assert_eq!(backup_markers(&store), [1, 2, 3]);

        let mut store = store_in(tmp.path(), 0);
        let mut m = WarmRestartMetrics::default();
        saves(&mut store, 5..=6, false, &mut m);
        assert!(backup_markers(&store).is_empty());
        assert_eq!((m.backups_created, m.backups_cleaned), (0, 3));
        assert_eq!(marker(store.path()), 6);
    }

    #[test]
    fn backups_stay_unique_and_ordered_within_a_millisecond_and_across_a_clock_step_back() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 10);
        let mut m = WarmRestartMetrics::default();
        let t = now_unix_ms();
        for (mtu, at) in [(1, t), (2, t), (3, t), (4, t), (5, t - 500), (6, t + 1000)] {
            store.save_at(at, &ports(1, mtu), false, &mut m).unwrap();
        }
        let expected: Vec<String> = [(t, 0), (t, 1), (t, 2), (t, 3), (t + 1000, 0)]
            .iter()
            .map(|(ms, seq)| format!("port_state.{ms:013}.{seq:03}.json"))
            .collect();
        let mut lexical = names(&tmp.path().join("state/backups"));
        lexical.sort();
        assert_eq!(lexical, expected);
        assert_eq!(backup_markers(&store), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn rapid_saves_on_the_real_clock_give_distinct_ordered_backups() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 100);
        let mut m = WarmRestartMetrics::default();
        saves(&mut store, 1..=40, false, &mut m);
        let expected: Vec<u32> = (1..=39).collect();
        assert_eq!(backup_markers(&store), expected);
        assert_eq!(m.backups_created, 39);
    }

    /// Ways a current file can be unusable, each with the rejection it must produce.
    type Damage = (&'static str, fn(&Path), fn(&Rejection) -> bool);

    fn damages() -> Vec<Damage> {
        fn rewrite_json(p: &Path, f: fn(&mut serde_json::Value)) {
            let mut v: serde_json::Value = serde_json::from_slice(&fs::read(p).unwrap()).unwrap();
            f(&mut v);
            fs::write(p, serde_json::to_vec(&v).unwrap()).unwrap();
        }
        fn replace(p: &Path) {
            fs::remove_file(p).unwrap();
        }
        vec![
            (
                "truncated",
                |p| {
                    let b = fs::read(p).unwrap();
                    fs::write(p, &b[..b.len() / 2]).unwrap();
                },
                |r| matches!(r, Rejection::Malformed(_)),
            ),
            ("garbage", |p| fs::write(p, b"\x00\xff not json").unwrap(), |r| matches!(r, Rejection::Malformed(_))),
            ("json array", |p| fs::write(p, b"[1,2,3]").unwrap(), |r| matches!(r, Rejection::Malformed(_))),
            (
                "wrong version",
                |p| rewrite_json(p, |v| v["version"] = 2.into()),
                |r| matches!(r, Rejection::UnknownVersion(2)),
            ),
            (
                "version as string",
                |p| rewrite_json(p, |v| v["version"] = "1".into()),
                |r| matches!(r, Rejection::Malformed(_)),
            ),
            (
                "no saved_at",
                |p| {
                    rewrite_json(p, |v| {
                        v.as_object_mut().unwrap().remove("saved_at_unix_ms");
                    })
                },
                |r| matches!(r, Rejection::Malformed(_)),
            ),
            (
                "bad port record",
                |p| rewrite_json(p, |v| v["ports"]["Ethernet0"]["mtu"] = (-1).into()),
                |r| matches!(r, Rejection::Malformed(_)),
            ),
            ("empty", |p| fs::write(p, b"").unwrap(), |r| matches!(r, Rejection::Empty)),
            ("whitespace", |p| fs::write(p, b" \n\n").unwrap(), |r| matches!(r, Rejection::Empty)),
            (
                "directory",
                |p| {
                    replace(p);
                    fs::create_dir_all(p.join("inner")).unwrap();
                },
                |r| matches!(r, Rejection::NotRegular),
            ),
            (
                "symlink loop",
                |p| {
                    replace(p);
                    symlink(p, p).unwrap();
                },
                |r| matches!(r, Rejection::Open(e) if e.raw_os_error() == Some(libc::ELOOP)),
            ),
            (
                "fifo",
                |p| {
                    replace(p);
                    nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap();
                },
                |r| matches!(r, Rejection::NotRegular),
            ),
            (
                "too large",
                |p| {
                    fs::File::options().write(true).open(p).unwrap().set_len(MAX_FILE_BYTES + 1).unwrap();
                },
                |r| matches!(r, Rejection::TooLarge),
            ),
        ]
    }

    #[test]
    fn load_recovers_from_the_newest_good_backup_whatever_is_wrong_with_the_current_file() {
        for (what, damage, expected) in damages() {
            let tmp = tempfile::tempdir().unwrap();
            let mut store = store_in(tmp.path(), 5);
            let mut m = WarmRestartMetrics::default();
            saves(&mut store, 1..=3, true, &mut m);
            let newest_backup = store.list_backups().last().unwrap().1.clone();

            damage(store.path());
            match examine(store.path(), now_unix_ms(), DEFAULT_MAX_AGE) {
                Verdict::Corrupt(r) => assert!(expected(&r), "{what}: unexpected rejection {r:?}"),
                v => panic!("{what}: not rejected: {v:?}"),
            }

            let loaded = store.load(&mut m).unwrap_or_else(|| panic!("{what}: nothing loaded"));
            assert_eq!(loaded.ports, ports(4, 2), "{what}");
            assert_eq!(loaded.from_backup.as_deref(), Some(newest_backup.as_path()), "{what}");
            // The backup was saved clean, but the daemon saved again after it.
            assert!(!loaded.clean_shutdown, "{what}");
            assert_eq!((m.corrupt_files_found, m.recoveries_from_backup), (1, 1), "{what}");
            assert!(fs::symlink_metadata(store.path()).is_err(), "{what}: current file not set aside");
            let dir = tmp.path().join("state");
            assert_eq!(set_aside_names(&dir, "port_state.json").len(), 1, "{what}: {:?}", names(&dir));
        }
    }

    #[test]
    fn corrupt_newest_backup_is_skipped_for_an_older_good_one() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 5);
        let mut m = WarmRestartMetrics::default();
        saves(&mut store, 1..=3, false, &mut m);
        let backups = store.list_backups();
        fs::write(store.path(), b"{").unwrap();
        fs::write(&backups[1].1, b"}").unwrap();

        let loaded = store.load(&mut m).unwrap();
        assert_eq!(loaded.ports, ports(4, 1));
        assert_eq!(loaded.from_backup.as_deref(), Some(backups[0].1.as_path()));
        assert_eq!((m.corrupt_files_found, m.recoveries_from_backup), (2, 1));
        assert_eq!(set_aside_names(&tmp.path().join("state/backups"), "port_state.").len(), 1);
    }

    #[test]
    fn all_corrupt_is_a_cold_start_and_set_aside_files_are_never_read_again() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 5);
        let mut m = WarmRestartMetrics::default();
        saves(&mut store, 1..=3, false, &mut m);
        let mut victims = vec![store.path().to_path_buf()];
        victims.extend(store.list_backups().into_iter().map(|(_, p)| p));
        for (i, p) in victims.iter().enumerate() {
            // Unlink first: backups are hard links and must not share the damage.
            fs::remove_file(p).unwrap();
            fs::write(p, format!("garbage {i}")).unwrap();
        }

        assert_eq!(store.load(&mut m), None);
        assert_eq!((m.corrupt_files_found, m.recoveries_from_backup), (3, 0));
        let dir = tmp.path().join("state");
        let set_aside: Vec<PathBuf> = set_aside_names(&dir, "port_state.json")
            .into_iter()
            .map(|n| dir.join(n))
            .chain(
                set_aside_names(&dir.join("backups"), "port_state.").into_iter().map(|n| dir.join("backups").join(n)),
            )
            .collect();
        assert_eq!(set_aside.len(), 3, "{set_aside:?}");
        let contents: Vec<Vec<u8>> = set_aside.iter().map(|p| fs::read(p).unwrap()).collect();
        for p in &victims {
            assert!(!p.exists(), "{} still in place", p.display());
        }

        assert_eq!(store.load(&mut m), None);
        assert_eq!(m.corrupt_files_found, 3, "set-aside files were examined again");
        let again: Vec<Vec<u8>> = set_aside.iter().map(|p| fs::read(p).unwrap()).collect();
        assert_eq!(again, contents);

        // And the store is usable again.
        store.save(&ports(4, 9), true, &mut m).unwrap();
        let loaded = store.load(&mut m).unwrap();
        assert_eq!(loaded.ports, ports(4, 9));
        assert!(loaded.clean_shutdown);
    }

    #[test]
    fn missing_state_is_a_quiet_cold_start() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 5);
        let mut m = WarmRestartMetrics::default();
        assert_eq!(store.load(&mut m), None);
        store.remove_stale(&mut m);
        assert_eq!(m, WarmRestartMetrics::default());
        assert!(!tmp.path().join("state").exists(), "load must not create anything");
    }

    #[test]
    fn stale_current_file_is_removed_and_not_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 5);
        let mut m = WarmRestartMetrics::default();
        saves(&mut store, 1..=3, true, &mut m);

        assert_eq!(store.load_at(now_unix_ms() + 8 * DAY_MS, &mut m), None);
        assert_eq!(m.stale_files_removed, 3);
        assert_eq!(m.corrupt_files_found, 0);
        assert!(!store.path().exists());
        assert!(store.list_backups().is_empty());
    }

    #[test]
    fn remove_stale_drops_only_documents_past_the_max_age() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 5);
        let mut m = WarmRestartMetrics::default();
        let now = now_unix_ms();
        for (mtu, at) in [(1, now - 8 * DAY_MS), (2, now - DAY_MS), (3, now)] {
            store.save_at(at, &ports(4, mtu), false, &mut m).unwrap();
        }
        assert_eq!(backup_markers(&store), [1, 2]);

        store.remove_stale(&mut m);
        assert_eq!(m.stale_files_removed, 1);
        assert_eq!(backup_markers(&store), [2]);
        assert_eq!(store.load(&mut m).unwrap().ports, ports(4, 3));
        assert_eq!(m.stale_files_removed, 1);
    }

    #[test]
    fn load_reads_up_to_the_first_usable_document_and_sweep_backups_does_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 5);
        let mut m = WarmRestartMetrics::default();
        let now = now_unix_ms();
        store.save_at(now - 8 * DAY_MS, &ports(4, 1), false, &mut m).unwrap();
        for mtu in 2..=4 {
            store.save_at(now, &ports(4, mtu), false, &mut m).unwrap();
        }
        let backups = store.list_backups();
        assert_eq!(backups.len(), 3);
        // Unlink first: backups are hard links and must not share the damage.
        fs::remove_file(&backups[1].1).unwrap();
        fs::write(&backups[1].1, b"garbage").unwrap();

        assert_eq!(store.load(&mut m).unwrap().ports, ports(4, 4));
        assert_eq!((m.stale_files_removed, m.corrupt_files_found), (0, 0));
        assert_eq!(store.list_backups().len(), 3, "load touched a backup it did not need");

        store.sweep_backups(&mut m);
        assert_eq!((m.stale_files_removed, m.corrupt_files_found), (1, 1));
        assert_eq!(backup_markers(&store), [3]);
        assert_eq!(set_aside_names(&tmp.path().join("state/backups"), "port_state.").len(), 1);
    }

    #[test]
    fn a_document_in_this_layout_but_of_another_version_is_reported_as_such() {
        // (A document that does not parse as this layout is covered by `damages`.)
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 0);
        let mut m = WarmRestartMetrics::default();
        store.save(&ports(2, 1), false, &mut m).unwrap();
        let body = fs::read_to_string(store.path()).unwrap().replacen(r#""version":1"#, r#""version":7"#, 1);
        assert!(matches!(
            judge(body.as_bytes(), now_unix_ms(), DEFAULT_MAX_AGE),
            Verdict::Corrupt(Rejection::UnknownVersion(7))
        ));
        assert!(matches!(
            judge(b"{\"version\":1}", now_unix_ms(), DEFAULT_MAX_AGE),
            Verdict::Corrupt(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn remove_stale_leaves_corrupt_files_for_load() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 5);
        let mut m = WarmRestartMetrics::default();
        store.save(&ports(1, 1), false, &mut m).unwrap();
        fs::write(store.path(), b"nonsense").unwrap();
        store.remove_stale(&mut m);
        assert_eq!(fs::read(store.path()).unwrap(), b"nonsense");
        assert_eq!((m.corrupt_files_found, m.stale_files_removed), (0, 0));
    }

    #[test]
    fn documents_from_the_future_beyond_the_tolerance_are_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 0);
        let mut m = WarmRestartMetrics::default();

        store.save_at(now_unix_ms() + 30_000, &ports(2, 1), false, &mut m).unwrap();
        assert_eq!(store.load(&mut m).unwrap().ports, ports(2, 1), "within tolerance");

        store.save_at(now_unix_ms() + 120_000, &ports(2, 2), false, &mut m).unwrap();
        assert_eq!(store.load(&mut m), None);
        assert_eq!((m.stale_files_removed, m.corrupt_files_found), (1, 0));
        assert!(!store.path().exists());
    }

    #[test]
    fn same_boot_requires_equal_known_boot_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = store_in(tmp.path(), 0);
        let mut m = WarmRestartMetrics::default();
        writer.save(&ports(1, 1), false, &mut m).unwrap();

        for (reader_boot, expected) in [(Some("boot-a"), true), (Some("boot-b"), false), (None, false)] {
            let mut reader = store_in(tmp.path(), 0);
            reader.boot_id = reader_boot.map(str::to_owned);
            assert_eq!(reader.load(&mut m).unwrap().same_boot, expected, "{reader_boot:?}");
        }

        writer.boot_id = None;
        writer.save(&ports(1, 1), false, &mut m).unwrap();
        assert!(!store_in(tmp.path(), 0).load(&mut m).unwrap().same_boot);
    }

    #[test]
    fn old_set_aside_files_are_eventually_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), 5);
        let mut m = WarmRestartMetrics::default();
        store.save(&ports(1, 1), false, &mut m).unwrap();
        let dir = tmp.path().join("state");
        let bdir = dir.join("backups");
        fs::create_dir_all(&bdir).unwrap();
        let now = now_unix_ms();
        let old = [
            dir.join(format!("port_state.json.corrupt.{}", now - 8 * DAY_MS)),
            bdir.join(format!("port_state.0000000000001.000.json.corrupt.{}.1", now - 9 * DAY_MS)),
        ];
        let kept = [
            dir.join(format!("port_state.json.corrupt.{}", now - DAY_MS)),
            dir.join(format!("other.json.corrupt.{}", now - 30 * DAY_MS)),
            dir.join("port_state.json.corrupt.notanumber"),
        ];
        for p in old.iter().chain(&kept) {
            fs::write(p, b"x").unwrap();
        }
        let old_dir = dir.join(format!("port_state.json.corrupt.{}.2", now - 8 * DAY_MS));
        fs::create_dir_all(old_dir.join("inner")).unwrap();

        store.remove_stale(&mut m);
        for p in old.iter().chain([&old_dir]) {
            assert!(!p.exists(), "{} kept", p.display());
        }
        for p in &kept {
            assert!(p.exists(), "{} removed", p.display());
        }
        assert_eq!(m.stale_files_removed, 0, "set-aside files are not state files");
    }

    #[test]
    fn backup_and_set_aside_names_parse() {
        let store = store_in(Path::new("/nonexistent"), 1);
        let key = BackupKey { millis: 1_737_700_000_123, seq: 7 };
        assert_eq!(store.backup_name(key), "port_state.1737700000123.007.json");
        assert_eq!(store.parse_backup_name(&store.backup_name(key)), Some(key));
        assert_eq!(
            store.parse_backup_name("port_state.1737700000123.1234.json"),
            Some(BackupKey { millis: 1_737_700_000_123, seq: 1234 })
        );
        for bad in [
            "port_state.json",
            "port_state.1.json",
            "port_state.1.2.json.corrupt.3",
            "port_state.1.-2.json",
            "port_statex.1.2.json",
            "port_state..2.json",
        ] {
            assert_eq!(store.parse_backup_name(bad), None, "{bad}");
        }
        let plain = StateStore::new(StateFileConfig { path: "/x/ports".into(), ..Default::default() });
        let k = BackupKey { millis: 5, seq: 0 };
        assert_eq!(plain.backup_name(k), "ports.0000000000005.000");
        assert_eq!(plain.parse_backup_name("ports.0000000000005.000"), Some(k));

        assert_eq!(corrupt_timestamp("port_state.json.corrupt.123"), Some(123));
        assert_eq!(corrupt_timestamp("port_state.json.corrupt.123.4"), Some(123));
        assert_eq!(corrupt_timestamp("port_state.json.corrupt.12x"), None);
        assert_eq!(corrupt_timestamp("port_state.json.corrupt.123.x"), None);
        assert_eq!(corrupt_timestamp("port_state.json"), None);
    }

    #[test]
    fn set_aside_never_overwrites_an_earlier_one() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("port_state.json");
        let mut dests = Vec::new();
        for i in 0..3 {
            fs::write(&p, format!("bad {i}")).unwrap();
            dests.push(set_aside_corrupt(&p, 42).unwrap());
        }
        let contents: Vec<String> = dests.iter().map(|d| fs::read_to_string(d).unwrap()).collect();
        assert_eq!(contents, ["bad 0", "bad 1", "bad 2"]);
        assert_eq!(dests[0], tmp.path().join("port_state.json.corrupt.42"));
        assert_eq!(dests[2], tmp.path().join("port_state.json.corrupt.42.2"));
    }

    /// Prints the cost of a 1024-port save (run with --nocapture); asserts only correctness.
    #[test]
    fn save_of_1024_ports_measured() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = store_in(tmp.path(), DEFAULT_BACKUPS);
        let mut m = WarmRestartMetrics::default();
        let p = ports(1024, 9100);
        let mut times = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            store.save(&p, false, &mut m).unwrap();
            times.push(t.elapsed());
        }
        let t = Instant::now();
        let loaded = store.load(&mut m).unwrap();
        let load_time = t.elapsed();
        assert_eq!(loaded.ports, p);
        assert_eq!(backup_markers(&store).len(), DEFAULT_BACKUPS);

        // The CPU part of a save, without the disk: what a save costs when fsync is free.
        let t = Instant::now();
        let doc = DocumentOut {
            version: STATE_FILE_VERSION,
            saved_at_unix_ms: now_unix_ms(),
            clean_shutdown: false,
            boot_id: store.boot_id.as_deref(),
            ports: &p,
        };
        let encoded = serde_json::to_vec(&doc).unwrap();
        let encode_time = t.elapsed();

        let bytes = fs::metadata(store.path()).unwrap().len();
        assert_eq!(bytes, encoded.len() as u64 + 1);
        times.sort();
        let mean = times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap();
        eprintln!(
            "save 1024 ports ({bytes} bytes, {} backups kept): min {:?} median {:?} \
             mean {mean:?} max {:?} (encoding alone {encode_time:?}); load {load_time:?}",
            DEFAULT_BACKUPS,
            times[0],
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
}
