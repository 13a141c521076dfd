//! File system primitives with the durability rules the engine depends on: a new name becomes visible only by a
//! rename (or a symlink swap) after its content is on disk, and the directory holding the name is synced after it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// Bytes available to an unprivileged writer on the file system holding `dir` (`statvfs(3)`: `f_bavail * f_frsize`).
pub(crate) fn available_space(dir: &Path) -> Result<u64, Error> {
    let handle = File::open(dir).map_err(Error::io("open", dir))?;
    // SAFETY: `statvfs` is a plain C struct of integers, for which all-zero bytes are a valid value.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `handle` keeps the descriptor open during the call; `stats` is a valid, writable `statvfs`.
    let result = unsafe { libc::fstatvfs(handle.as_raw_fd(), &mut stats) };
    if result != 0 {
        return Err(Error::io("statvfs", dir)(std::io::Error::last_os_error()));
    }
    // `fsblkcnt_t` and `c_ulong` are 32 bits wide on some 32-bit targets and 64 on others.
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stats.f_bavail), u64::from(stats.f_frsize));
    Ok(blocks.saturating_mul(block_size))
}

/// Fails with [`Error::InsufficientSpace`] unless `needed` bytes fit on the file system holding `dir`.
pub(crate) fn ensure_space(dir: &Path, needed: u64) -> Result<(), Error> {
    let available = available_space(dir)?;
    if available < needed {
        return Err(Error::InsufficientSpace { path: dir.to_owned(), needed, available });
    }
    Ok(())
}

/// Flushes the file system holding `dir` (`syncfs(2)`): one call instead of an fsync per extracted file.
pub(crate) fn sync_file_system(dir: &Path) -> Result<(), Error> {
    let handle = File::open(dir).map_err(Error::io("open", dir))?;
    // SAFETY: `syncfs` takes any open descriptor and only reads it; `handle` keeps it open during the call.
    let result = unsafe { libc::syncfs(handle.as_raw_fd()) };
    if result != 0 {
        return Err(Error::io("syncfs", dir)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes the names in `dir` (new, renamed, removed) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("sync directory", dir))
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// A temporary name next to `path`, unique within this process.
fn temporary_name(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    parent(path).join(format!(".{name}.tmp.{}.{count}", std::process::id()))
}

/// Replaces `path` with `bytes` atomically and durably: write a temporary file, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = temporary_name(path);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(Error::io("write", path))?;
    sync_dir(parent(path))
}

/// Points the symbolic link `link` at `target` atomically and durably: a new link under a temporary name, renamed
/// over `link`, then the directory synced. A reader sees the old target or the new one, never no link.
pub(crate) fn swap_symlink(link: &Path, target: &Path) -> Result<(), Error> {
    let tmp = temporary_name(link);
    let result = std::os::unix::fs::symlink(target, &tmp).and_then(|()| std::fs::rename(&tmp, link));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(Error::io("switch link", link))?;
    sync_dir(parent(link))
}

/// Removes a file or symbolic link; an absent one is not an error.
pub(crate) fn remove_file(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path)(error)),
        _ => Ok(()),
    }
}

/// Removes a directory tree; an absent one is not an error.
pub(crate) fn remove_tree(path: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path)(error)),
        _ => Ok(()),
    }
}

/// The target of a symbolic link; `None` when `link` does not exist.
pub(crate) fn read_link(link: &Path) -> Result<Option<PathBuf>, Error> {
    match std::fs::read_link(link) {
        Ok(target) => Ok(Some(target)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(Error::io("read link", link)(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_link_swap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        write_atomic(&file, b"one").unwrap();
        write_atomic(&file, b"two").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        let link = dir.path().join("current");
        swap_symlink(&link, Path::new("versions/1")).unwrap();
        swap_symlink(&link, Path::new("versions/2")).unwrap();
        assert_eq!(read_link(&link).unwrap(), Some(PathBuf::from("versions/2")));
        assert_eq!(read_link(&dir.path().join("absent")).unwrap(), None);
        // Nothing temporary is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn free_space_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_space(dir.path()).unwrap() > 0);
        ensure_space(dir.path(), 1).unwrap();
        let error = ensure_space(dir.path(), u64::MAX).unwrap_err();
        assert!(matches!(error, Error::InsufficientSpace { needed: u64::MAX, .. }), "{error}");
    }
}
