//! Replacing a file atomically: a reader sees the old contents or the new, never a mix. Input:
//! a path, the bytes, a mode and how durable the result must be; output: the file in place.
//! The temporary file is a `tempfile::NamedTempFile` in the target's own directory (a rename
//! is only atomic within one file system), removed again by its `Drop` on every failure path.

use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What a replaced file must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A crash or power loss: the file is fsynced before the rename and its directory after
    /// it, so once the call returns the new contents are on disk under the name.
    Synced,
    /// Readers only: a snapshot rewritten every few hundred milliseconds needs no fsync, and an
    /// fsync there costs milliseconds (up to ~25 ms measured on this CI disk) on the thread that
    /// writes it.
    Unsynced,
}

/// Which step of [`replace`] failed; the file at the target path is untouched unless the
/// rename succeeded.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    /// The temporary file could not be created in the target's directory.
    #[error("cannot create a temporary file in {}", dir.display())]
    Create {
        /// The directory.
        dir: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Setting the mode of, writing or fsyncing the temporary file failed.
    #[error("cannot write temporary file {}", path.display())]
    Write {
        /// The temporary file (already removed again).
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The temporary file could not replace the target.
    #[error("cannot rename {} to {}", from.display(), to.display())]
    Rename {
        /// The temporary file (already removed again).
        from: PathBuf,
        /// The target.
        to: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The new file is in place but its directory entry may not be durable yet.
    #[error("cannot fsync directory {}", dir.display())]
    SyncDir {
        /// The directory.
        dir: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// The name prefix of [`replace`]'s temporary files for a target named `file_name`: hidden, and
/// distinct per target, so that a leftover of a crashed write can be found and removed.
pub fn temp_prefix(file_name: &str) -> String {
    format!(".{file_name}.tmp.")
}

/// The directory `path` lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces `path` with `bytes` in one `write(2)`, the file's mode exactly `mode` (the umask
/// cannot remove bits from it). The directory must exist.
pub fn replace(path: &Path, bytes: &[u8], mode: u32, durability: Durability) -> Result<(), AtomicWriteError> {
    let dir = parent_dir(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(&name))
        .tempfile_in(dir)
        .map_err(|source| AtomicWriteError::Create { dir: dir.to_path_buf(), source })?;
    let written = tmp
        .as_file()
        .set_permissions(Permissions::from_mode(mode))
        .and_then(|()| tmp.as_file_mut().write_all(bytes))
        .and_then(|()| match durability {
            Durability::Synced => tmp.as_file().sync_all(),
            Durability::Unsynced => Ok(()),
        });
    if let Err(source) = written {
        return Err(AtomicWriteError::Write { path: tmp.path().to_path_buf(), source });
    }
    let from = tmp.path().to_path_buf();
    // On failure the error owns the temporary file again, and dropping it removes it.
    tmp.persist(path).map_err(|e| AtomicWriteError::Rename { from, to: path.to_path_buf(), source: e.error })?;
    if durability == Durability::Synced {
        sync_dir(dir).map_err(|source| AtomicWriteError::SyncDir { dir: dir.to_path_buf(), source })?;
    }
    Ok(())
}

/// fsyncs a directory, which makes its entries (a rename, a new link) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_with_the_exact_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        for (body, mode, durability) in
            [(&b"one"[..], 0o600, Durability::Synced), (&b"two, longer"[..], 0o644, Durability::Unsynced)]
        {
            replace(&p, body, mode, durability).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), body);
            assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, mode);
        }
        assert_eq!(names(dir.path()), ["f.json"]);
    }

    #[test]
    fn a_failed_rename_keeps_the_target_and_removes_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        // A non-empty directory where the file should be: rename(2) cannot replace it.
        std::fs::create_dir_all(p.join("x")).unwrap();
        let err = replace(&p, b"x", 0o600, Durability::Synced).unwrap_err();
        match &err {
            AtomicWriteError::Rename { from, to, .. } => {
                assert!(from.file_name().unwrap().to_string_lossy().starts_with(&temp_prefix("f.json")));
                assert_eq!(to, &p);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(names(dir.path()), ["f.json"]);
        assert!(p.join("x").is_dir());
    }

    #[test]
    fn a_missing_directory_is_a_create_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = replace(&dir.path().join("no/f.json"), b"x", 0o600, Durability::Synced).unwrap_err();
        assert!(matches!(err, AtomicWriteError::Create { .. }), "{err:?}");
    }
}
