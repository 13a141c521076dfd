//! The local metadata directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, encode_role};

/// Trusted metadata on disk, one file per role under its unversioned name.
#[derive(Debug, Clone)]
pub struct MetadataDir {
    dir: PathBuf,
}

impl MetadataDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
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

    /// Stores the snapshot proof of `file` (a private sub-directory: the top level holds only TUF metadata).
    pub fn persist_proof(&self, file: &str, bytes: &[u8]) -> Result<(), Error> {
        write_atomic(&self.dir.join("merkle").join(format!("{}.proof", encode_role(file))), bytes)
    }

    /// Stores `bytes` as `role`, atomically: a reader sees the old file or the new one, never a mix.
    pub fn persist(&self, role: &str, bytes: &[u8]) -> Result<(), Error> {
        write_atomic(&self.role_path(role), bytes)
    }
}

/// Writes a file by way of a temporary file in the same directory, fsync, and rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
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
    std::fs::rename(&tmp, path).map_err(|e| io("rename into place", e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Persisting the rename is best effort: some file systems refuse fsync on a directory.
        let _ = d.sync_all();
    }
    Ok(())
}
