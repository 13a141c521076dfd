//! The agent's state directory (`/var/lib/custody` by default):
//!
//! ```text
//! metadata/      trusted TUF metadata (custody-client's metadata directory), seeded from [agent] trusted_root
//! downloads/     partial and complete artifacts (the install engine's ArtifactWriter)
//! install/       the install engine's state: installed products, history, interrupted-install journal
//! reports/       events waiting for the service, one file per event, named by sequence number
//! holds.json     held updates and products
//! status.json    the last scan's result, the next scheduled scan, a pending reboot
//! agent.lock     held (flock) by whoever acts on this state: the daemon, or a CLI command acting directly
//! ```
//!
//! Every file is written atomically (temporary file, fsync, rename), so a crash leaves the old or the new content.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use custody_policy::Holds;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// The paths of the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// An exclusive lock on the state directory, released on drop.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn metadata(&self) -> PathBuf {
        self.root.join("metadata")
    }

    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    pub fn install(&self) -> PathBuf {
        self.root.join("install")
    }

    pub fn reports(&self) -> PathBuf {
        self.root.join("reports")
    }

    pub fn holds_file(&self) -> PathBuf {
        self.root.join("holds.json")
    }

    pub fn status_file(&self) -> PathBuf {
        self.root.join("status.json")
    }

    /// Creates the directories (mode 0700: only the agent reads its state).
    pub fn create(&self) -> Result<(), Error> {
        for dir in [self.root.clone(), self.metadata(), self.downloads(), self.install(), self.reports()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(Error::io("create the directory", &dir))?;
        }
        Ok(())
    }

    /// Takes the state lock without waiting; `Ok(None)` when someone else (a running daemon) holds it.
    pub fn try_lock(&self) -> Result<Option<StateLock>, Error> {
        let path = self.root.join("agent.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io("open", &path))?;
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(StateLock { _file: file }));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(None),
            _ => Err(Error::io("lock", &path)(err)),
        }
    }

    pub fn load_holds(&self) -> Result<Holds, Error> {
        Ok(read_json(&self.holds_file())?.unwrap_or_default())
    }

    pub fn save_holds(&self, holds: &Holds) -> Result<(), Error> {
        write_json(&self.holds_file(), holds)
    }
}

/// Reads a JSON file; `None` if it does not exist.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Corrupt { path: path.to_owned(), detail: e.to_string() })
}

/// Writes `value` as pretty JSON, atomically.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Corrupt { path: path.to_owned(), detail: format!("cannot serialize: {e}") })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes a file by way of a temporary file in the same directory, fsync, rename, and fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io("create", &tmp))?;
    file.write_all(bytes).map_err(Error::io("write", &tmp))?;
    file.sync_all().map_err(Error::io("sync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(Error::io("rename into place", path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Persisting the rename is best effort: some file systems refuse fsync on a directory.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_holds_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        state.create().unwrap();
        let lock = state.try_lock().unwrap();
        assert!(lock.is_some());
        assert!(state.try_lock().unwrap().is_none(), "a second holder must be refused");
        drop(lock);
        assert!(state.try_lock().unwrap().is_some());

        assert_eq!(state.load_holds().unwrap(), Holds::default());
        let mut holds = Holds::default();
        holds.products.insert("acme".into());
        state.save_holds(&holds).unwrap();
        assert_eq!(state.load_holds().unwrap(), holds);
        std::fs::write(state.holds_file(), b"{").unwrap();
        let err = state.load_holds().unwrap_err().to_string();
        assert!(err.contains("holds.json"), "{err}");
    }
}
