//! The local metadata directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, encode_role};

/// Trusted metadata on disk, one file per role under its unversioned name.
///
/// Durability: each file is replaced atomically, and its new content is on stable storage before the rename that
/// puts it in place ([`replace_file`]), so that at any moment, power cuts included, a role's file is either its
/// previous trusted version or its new one, never a torn or empty file. What is left for the end of a batch is the
/// renames' durability: [`MetadataDir::sync`] syncs the directories written to once, where syncing after every file
/// took one more flush per file. The updater syncs at the end of every refresh and of every target search or
/// listing, failed ones included, so what a finished cycle persisted survives a power cut.
///
/// Until that sync, a power cut can keep any mix of previous and new files. Every mix is as safe as the previous
/// cycle's state, provided the root is synced as soon as it changes (the updater does): an older timestamp is a
/// lower rollback floor, as if the cycle had not run; a snapshot newer than the timestamp is still kept as the floor
/// for the next snapshot (`TrustedSet::update_snapshot`); a targets file is re-verified against the trusted snapshot
/// whenever it is loaded, and only saves a download.
#[derive(Debug, Clone)]
pub struct MetadataDir {
    dir: PathBuf,
    /// Whether files were replaced in the directory (`proofs`: in its `merkle` sub-directory) since the last sync.
    unsynced: bool,
    unsynced_proofs: bool,
}

impl MetadataDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), unsynced: false, unsynced_proofs: false }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file of `role` (percent-encoded, so no role name can leave the directory).
    pub fn role_path(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{}.json", encode_role(role)))
    }

    /// The stored bytes of `role`, if any.
    pub fn load(&self, role: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = self.role_path(role);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { action: "read", path, source }),
        }
    }

    /// Snapshot proofs stored by [`MetadataDir::persist_proof`], as (file name, bytes).
    pub fn load_proofs(&self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let dir = self.dir.join("merkle");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::Io { action: "list", path: dir, source }),
        };
        let mut proofs = Vec::new();
        for entry in entries {
            let path = entry.map_err(|source| Error::Io { action: "list", path: dir.clone(), source })?.path();
            if path.extension().is_some_and(|e| e == "proof") {
                let bytes =
                    std::fs::read(&path).map_err(|source| Error::Io { action: "read", path: path.clone(), source })?;
                proofs.push((path.file_stem().unwrap_or_default().to_string_lossy().into_owned(), bytes));
            }
        }
        Ok(proofs)
    }

    /// Stores the snapshot proof of `file` (a private sub-directory: the top level holds only TUF metadata); durable
    /// after the next [`MetadataDir::sync`].
    pub fn persist_proof(&mut self, file: &str, bytes: &[u8]) -> Result<(), Error> {
        let dir = self.dir.join("merkle");
        // A new sub-directory is an entry of the top-level one, which the sync then covers too.
        self.unsynced = self.unsynced || !dir.exists();
        replace_file(&dir.join(format!("{}.proof", encode_role(file))), bytes)?;
        self.unsynced_proofs = true;
        Ok(())
    }

    /// Stores `bytes` as `role`, atomically: a reader sees the old file or the new one, never a mix; durable after
    /// the next [`MetadataDir::sync`].
    pub fn persist(&mut self, role: &str, bytes: &[u8]) -> Result<(), Error> {
        replace_file(&self.role_path(role), bytes)?;
        self.unsynced = true;
        Ok(())
    }

    /// Makes the files replaced since the last sync durable: syncs the directories that hold their new names.
    pub fn sync(&mut self) {
        if self.unsynced_proofs {
            sync_dir(&self.dir.join("merkle"));
            self.unsynced_proofs = false;
        }
        if self.unsynced {
            sync_dir(&self.dir);
            self.unsynced = false;
        }
    }
}

/// Writes a file by way of a temporary file in the same directory, fsync, rename and a sync of the directory:
/// durable when it returns.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    replace_file(path, bytes)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Replaces `path` by way of a temporary file in the same directory: write, fsync, rename. The content is durable
/// before the rename, so the file is never seen torn or empty, even after a power cut; the rename is durable once
/// the directory is synced ([`sync_dir`]).
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |action, source| Error::Io { action, path: path.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    let mut file = std::fs::File::create(&tmp).map_err(|e| io("create a temporary file for", e))?;
    file.write_all(bytes).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("sync", e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| io("rename into place", e))
}

/// Syncs a directory, which makes the renames into it durable. Best effort: some file systems refuse fsync on a
/// directory.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files are in place as soon as they are persisted, with no temporary file left; the directories that received
    /// them (a new `merkle` sub-directory is also an entry of the top level) wait for one sync.
    #[test]
    fn persisted_files_are_in_place_and_wait_for_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = MetadataDir::new(dir.path());
        store.persist("timestamp", b"one").unwrap();
        store.persist("timestamp", b"two").unwrap();
        assert!(store.unsynced && !store.unsynced_proofs);
        store.sync();
        assert!(!store.unsynced);
        store.persist_proof("bins-00.json", b"proof").unwrap();
        assert!(store.unsynced && store.unsynced_proofs, "the new sub-directory is an entry of the top level");
        store.sync();
        assert!(!store.unsynced && !store.unsynced_proofs);
        store.persist_proof("bins-01.json", b"proof").unwrap();
        assert!(!store.unsynced && store.unsynced_proofs);

        assert_eq!(store.load("timestamp").unwrap().unwrap(), b"two");
        assert_eq!(store.load_proofs().unwrap().len(), 2);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .chain(std::fs::read_dir(dir.path().join("merkle")).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["bins-00.json.proof", "bins-01.json.proof", "merkle", "timestamp.json"]);
    }
}
