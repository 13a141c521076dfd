//! Where things live in a repository directory, and how files are written: atomically, and undone as a whole when
//! an operation fails.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

/// A role name as it appears in metadata file names: percent-encoded, nothing left safe but `A-Za-z0-9-._~` (as
/// Python's `urllib.parse.quote(name, safe="")`, which python-tuf and tuf-conformance use: `/` becomes `%2F`).
pub fn encode_role_name(name: &str) -> String {
    custody_tuf::encode_path_segment(name)
}

/// The paths of one repository directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    dir: PathBuf,
}

impl Layout {
    pub(crate) fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.dir.join("repo.toml")
    }

    pub(crate) fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    pub(crate) fn targets_dir(&self) -> PathBuf {
        self.dir.join("targets")
    }

    pub(crate) fn staged_dir(&self) -> PathBuf {
        self.dir.join("staged")
    }

    /// `metadata/N.<role>.json`.
    pub(crate) fn versioned(&self, role: &str, version: u64) -> PathBuf {
        self.metadata_dir().join(format!("{version}.{}.json", encode_role_name(role)))
    }

    pub(crate) fn timestamp(&self) -> PathBuf {
        self.metadata_dir().join("timestamp.json")
    }

    /// `metadata/root.json`: a copy of the newest root, for whoever needs a root to start trusting from.
    pub(crate) fn root_copy(&self) -> PathBuf {
        self.metadata_dir().join("root.json")
    }

    /// `staged/<role>.json`: metadata that is waiting for signatures.
    pub(crate) fn staged(&self, role: &str) -> PathBuf {
        self.staged_dir().join(format!("{}.json", encode_role_name(role)))
    }

    /// The key file for a new key, relative to the repository directory: `keys/<role>.<key id prefix>.pem`.
    pub(crate) fn new_key_file(role: &str, keyid: &str) -> PathBuf {
        Path::new("keys").join(format!("{}.{}.pem", encode_role_name(role), &keyid[..keyid.len().min(16)]))
    }

    /// A key file named in `repo.toml`, resolved against the repository directory.
    pub(crate) fn resolve(&self, file: &Path) -> PathBuf {
        self.dir.join(file)
    }

    /// The consistent-snapshot names of a target: `targets/dir/HASH.name` for each hash, in hash-name order.
    pub(crate) fn target_files<'a>(&self, path: &str, hashes: impl IntoIterator<Item = &'a String>) -> Vec<PathBuf> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let base = if dir.is_empty() { self.targets_dir() } else { self.targets_dir().join(dir) };
        hashes.into_iter().map(|hash| base.join(format!("{hash}.{name}"))).collect()
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a mix: a temporary file in the
/// same directory (created with `mode`), fsync, rename over `path`, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    write_renamed(path, bytes, mode, true)
}

/// [`write_atomic`], with the fsyncs only when `sync` is set.
fn write_renamed(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> Result<(), Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have narrowed `mode`; key files need exactly 0600, metadata exactly 0644.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        if sync {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if sync {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(Error::io(path))
}

/// Flushes the file system that holds `dir` (`syncfs(2)`).
fn sync_file_system(dir: &Path) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    let handle = std::fs::File::open(dir).map_err(Error::io(dir))?;
    // SAFETY: `syncfs` takes any open file descriptor and only reads it; `handle` keeps it open during the call.
    let result = unsafe { libc::syncfs(handle.as_raw_fd()) };
    if result != 0 {
        return Err(Error::io(dir)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The files one operation writes. Dropped without [`Transaction::commit`], it undoes them, newest first: new files
/// are removed and replaced files get their old contents back.
///
/// Files are written through a temporary file and a rename, but without an fsync each (a catalog adds many
/// thousands of files at once): [`Transaction::write_last`] and [`Transaction::commit`] first flush the whole file
/// system with one `syncfs`, so the file that switches clients to the new state (`timestamp.json`) is never durable
/// before the files it names.
#[derive(Debug, Default)]
pub(crate) struct Transaction {
    undo: Vec<Undo>,
    /// A directory on the file system that holds writes not yet synced.
    unsynced: Option<PathBuf>,
    committed: bool,
}

#[derive(Debug)]
enum Undo {
    Remove(PathBuf),
    Restore { path: PathBuf, bytes: Vec<u8>, mode: u32 },
}

impl Transaction {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Writes `path` (made durable by the next [`Transaction::write_last`] or [`Transaction::commit`]), remembering
    /// how to undo it.
    pub(crate) fn write(&mut self, path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
        self.remember(path)?;
        write_renamed(path, bytes, mode, false)?;
        self.unsynced = path.parent().map(Path::to_owned);
        Ok(())
    }

    /// Makes everything written so far durable, then writes `path` atomically and durably: the switch.
    pub(crate) fn write_last(&mut self, path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
        self.remember(path)?;
        self.sync()?;
        write_atomic(path, bytes, mode)
    }

    /// Records how to undo a write of `path`: its old contents, or its absence.
    fn remember(&mut self, path: &Path) -> Result<(), Error> {
        let undo = match std::fs::read(path) {
            Ok(old) => {
                let old_mode = std::fs::metadata(path).map_err(Error::io(path))?.permissions().mode() & 0o7777;
                Undo::Restore { path: path.to_owned(), bytes: old, mode: old_mode }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Undo::Remove(path.to_owned()),
            Err(e) => return Err(Error::io(path)(e)),
        };
        self.undo.push(undo);
        Ok(())
    }

    /// Stores target content under each of its consistent names (one file, hard-linked to the others).
    ///
    /// A name that already holds exactly these bytes is left alone; content addressing makes that the common case
    /// when a target is added again.
    pub(crate) fn write_target(&mut self, names: &[PathBuf], data: &[u8]) -> Result<(), Error> {
        let mut written: Option<&Path> = None;
        for name in names {
            let same = std::fs::metadata(name).is_ok_and(|m| m.len() == data.len() as u64)
                && std::fs::read(name).is_ok_and(|existing| existing == data);
            if same {
                continue;
            }
            self.remove(name)?;
            if let Some(first) = written
                && std::fs::hard_link(first, name).is_ok()
            {
                self.undo.push(Undo::Remove(name.clone()));
                continue;
            }
            write_renamed(name, data, 0o644, false)?;
            self.undo.push(Undo::Remove(name.clone()));
            self.unsynced = name.parent().map(Path::to_owned);
            written = Some(name);
        }
        Ok(())
    }

    /// Removes `path` now (if it exists), restoring it if the transaction fails later.
    pub(crate) fn remove(&mut self, path: &Path) -> Result<(), Error> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(path).map_err(Error::io(path))?.permissions().mode() & 0o7777;
                std::fs::remove_file(path).map_err(Error::io(path))?;
                self.undo.push(Undo::Restore { path: path.to_owned(), bytes, mode });
                self.unsynced = path.parent().map(Path::to_owned);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path)(e)),
        }
    }

    /// Makes every write so far durable.
    fn sync(&mut self) -> Result<(), Error> {
        match self.unsynced.take() {
            Some(dir) => sync_file_system(&dir),
            None => Ok(()),
        }
    }

    /// Makes everything durable and keeps it.
    pub(crate) fn commit(mut self) -> Result<(), Error> {
        self.sync()?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for undo in self.undo.drain(..).rev() {
            let result = match &undo {
                Undo::Remove(path) => std::fs::remove_file(path),
                Undo::Restore { path, bytes, mode } => write_atomic(path, bytes, *mode).map_err(std::io::Error::other),
            };
            if let Err(e) = result {
                tracing::error!(?undo, error = %e, "could not undo a write of a failed operation");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_encoded_like_python_quote() {
        assert_eq!(encode_role_name("bins-0a"), "bins-0a");
        assert_eq!(encode_role_name("../delegatedrole"), "..%2Fdelegatedrole");
        assert_eq!(encode_role_name("a b?c~"), "a%20b%3Fc~");
    }

    #[test]
    fn target_names_put_the_hash_before_the_file_name() {
        let layout = Layout::new(Path::new("/r"));
        let hashes = ["aa".to_owned(), "bb".to_owned()];
        assert_eq!(
            layout.target_files("dir/sub/f.tar", &hashes),
            [PathBuf::from("/r/targets/dir/sub/aa.f.tar"), PathBuf::from("/r/targets/dir/sub/bb.f.tar")]
        );
        assert_eq!(layout.target_files("f", &hashes[..1]), [PathBuf::from("/r/targets/aa.f")]);
    }

    #[test]
    fn dropped_transaction_undoes_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let new = dir.path().join("new");
        let gone = dir.path().join("gone");
        std::fs::write(&old, b"before").unwrap();
        std::fs::write(&gone, b"keep me").unwrap();
        {
            let mut tx = Transaction::new();
            tx.write(&old, b"after", 0o644).unwrap();
            tx.write(&new, b"fresh", 0o644).unwrap();
            tx.remove(&gone).unwrap();
            tx.write_target(&[dir.path().join("t1"), dir.path().join("t2")], b"content").unwrap();
            assert_eq!(std::fs::read(dir.path().join("t2")).unwrap(), b"content");
        }
        assert_eq!(std::fs::read(&old).unwrap(), b"before");
        assert!(!new.exists());
        assert_eq!(std::fs::read(&gone).unwrap(), b"keep me");
        assert!(!dir.path().join("t1").exists() && !dir.path().join("t2").exists());

        let mut tx = Transaction::new();
        tx.write(&new, b"fresh", 0o644).unwrap();
        tx.commit().unwrap();
        assert_eq!(std::fs::read(&new).unwrap(), b"fresh");
    }
}
