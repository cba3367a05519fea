//! Runs aya's object load where the kernel's BTF cannot be read.
//!
//! aya 0.14's `EbpfLoader::new` reads and parses `/sys/kernel/btf/vmlinux` (~5 MB, ~25 ms of CPU
//! and a heap that outlives it) before the caller can say it wants no BTF (aya-rs/aya#1172). Our
//! socket filter reads only stable UAPI layouts and needs none. So the load runs on a short-lived
//! thread that Landlock forbids to read files under `/sys/kernel/btf` and nothing else: the read
//! fails at its `open`, aya treats that as "no BTF", as on a kernel built without it. Landlock
//! restricts the calling thread only, and the thread ends with the load. Where the kernel has no
//! Landlock, the load runs unrestricted and pays the parse, as before.

use std::{
    io,
    path::{Path, PathBuf},
};

use landlock::{AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus};

/// Where the kernel publishes its BTF (vmlinux and modules').
const KERNEL_BTF: &str = "/sys/kernel/btf";

/// Whether the kernel's BTF was out of reach for the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BtfAccess {
    /// Landlock kept the loader from reading it: no parse.
    Hidden,
    /// Landlock is unavailable (kernel without it, or not enabled), or the tree around the BTF
    /// could not be listed: the loader parsed it.
    Readable,
    /// The kernel publishes no BTF: nothing to hide, nothing parsed.
    Absent,
}

impl BtfAccess {
    /// Whether aya's loader parsed the kernel's BTF.
    pub fn parsed(self) -> bool {
        self == BtfAccess::Readable
    }
}

/// Runs `load` on a new thread that cannot read [`KERNEL_BTF`], and returns its result with
/// whether the restriction held. Panics in `load` propagate.
pub fn run_without_kernel_btf<T: Send>(load: impl FnOnce() -> T + Send) -> (T, BtfAccess) {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("ebpf-load".into())
            .spawn_scoped(s, || {
                let access = match hide(Path::new(KERNEL_BTF)) {
                    Ok(access) => access,
                    Err(error) => {
                        tracing::debug!(%error, "cannot hide the kernel's BTF from the eBPF loader; it will parse it");
                        BtfAccess::Readable
                    }
                };
                (load(), access)
            })
            .unwrap_or_else(|e| panic!("cannot start the eBPF loader thread: {e}"));
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Restricts the calling thread (for good) so that it reads every file except those beneath
/// `hidden`, an absolute path. Leaves it unrestricted where that cannot be said exactly: a
/// directory on the way that cannot be listed would otherwise hide its whole tree.
fn hide(hidden: &Path) -> Result<BtfAccess, RulesetError> {
    if !hidden.exists() {
        return Ok(BtfAccess::Absent);
    }
    let allowed = match everything_but(hidden) {
        Ok(allowed) => allowed,
        Err(error) => {
            tracing::debug!(%error, "cannot list the tree around the kernel's BTF; the eBPF loader will parse it");
            return Ok(BtfAccess::Readable);
        }
    };
    let read = AccessFs::ReadFile;
    let status = Ruleset::default()
        .handle_access(read)?
        .create()?
        .add_rules(
            allowed
                .iter()
                // An entry that vanished or cannot be opened stays unreadable to this thread;
                // the loader reads only /proc and /sys/devices.
                .filter_map(|p| PathFd::new(p).ok())
                .map(|fd| Ok::<_, RulesetError>(PathBeneath::new(fd, read))),
        )?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => BtfAccess::Hidden,
        RulesetStatus::NotEnforced => BtfAccess::Readable,
    })
}

/// The siblings of `hidden` and of each of its ancestors: together they cover the whole tree
/// except `hidden`. For `/sys/kernel/btf`: every entry of `/` but `sys`, of `/sys` but `kernel`,
/// of `/sys/kernel` but `btf`.
fn everything_but(hidden: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut child = hidden;
    while let Some(parent) = child.parent() {
        let skip = child.file_name();
        for entry in std::fs::read_dir(parent)? {
            let entry = entry?;
            if Some(entry.file_name().as_os_str()) != skip {
                out.push(entry.path());
            }
        }
        child = parent;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_siblings_of_a_path_and_its_ancestors_cover_all_but_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["a/b/hidden", "a/b/kept", "a/c", "d"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("a/b/file"), b"x").unwrap();
        let mut got = everything_but(&root.join("a/b/hidden")).unwrap();
        got.retain(|p| p.starts_with(root));
        got.sort();
        let want: Vec<PathBuf> = ["a/b/file", "a/b/kept", "a/c", "d"].iter().map(|p| root.join(p)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn nothing_is_restricted_when_the_tree_cannot_be_listed_or_there_is_nothing_to_hide() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone/btf");
        let (readable, access) = run_without_kernel_btf(|| std::fs::read("/proc/self/status").is_ok());
        assert!(readable);
        assert_ne!(access, BtfAccess::Absent);
        // Nothing to hide: the thread (a scratch one, restrictions are for good) stays free.
        let (outcome, reads) = std::thread::scope(|s| {
            s.spawn(|| (hide(&missing).unwrap(), std::fs::read("/proc/self/status").is_ok())).join().unwrap()
        });
        assert_eq!((outcome, reads), (BtfAccess::Absent, true));
        // A parent that exists but cannot be listed: `hidden` is a file, not a directory.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(everything_but(&file.join("btf")).is_err());
    }

    /// On a kernel with Landlock (CI's has it), the loader thread cannot read the BTF and can
    /// still read what aya reads while loading; the caller's thread is not restricted.
    #[test]
    fn the_loader_thread_cannot_read_the_kernel_btf_and_reads_everything_else() {
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            panic!("this kernel publishes no BTF: the test cannot show the restriction");
        }
        let (reads, access) = run_without_kernel_btf(|| {
            let read = |p: &str| std::fs::read(p).map(|_| ()).map_err(|e| e.kind());
            (
                read("/sys/kernel/btf/vmlinux"),
                read("/sys/devices/system/cpu/possible"),
                read("/proc/self/status"),
                read("/sys/kernel/uevent_seqnum"),
            )
        });
        assert_eq!(access, BtfAccess::Hidden, "Landlock is not available on this kernel");
        assert_eq!(reads.0, Err(io::ErrorKind::PermissionDenied));
        assert_eq!((reads.1, reads.2, reads.3), (Ok(()), Ok(()), Ok(())));
        assert!(std::fs::metadata("/sys/kernel/btf/vmlinux").is_ok());
        std::fs::File::open("/sys/kernel/btf/vmlinux").expect("the caller's thread still reads the BTF");
    }
}
