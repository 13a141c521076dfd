//! Downloads turned into verified artifacts.
//!
//! Unverified bytes and a verified artifact are different types: [`ArtifactWriter`] takes bytes, and only its
//! [`ArtifactWriter::finish`] (and [`VerifiedArtifact::from_assembled`], below) makes a [`VerifiedArtifact`], after
//! the length and every signed hash matched. The install engine takes nothing else.
//!
//! Before the first byte, [`ArtifactWriter::create`] checks *intention*: that the catalog entry is the one signed in
//! this target's `custom` metadata, that its content length and SHA-256 are the target's, that it applies to this
//! device, and that the download fits on disk. Every hash the target lists is computed while the bytes are written,
//! so a complete download is verified without reading the file again.
//!
//! Hashing and writing overlap: the caller's thread computes the most expensive listed hash (SHA-512 when listed,
//! else SHA-256) of each chunk as it arrives and copies the chunk into a 1 MiB buffer; full buffers go to one I/O
//! thread per writer, which computes the other listed hashes over them and writes them to the file. Three buffers
//! circulate between the two, so memory stays bounded and a slow disk slows the caller down instead of queueing
//! data.
//!
//! **Assembled files** are the other way in: peer-to-peer delivery writes verified pieces at their offsets, in any
//! order, so no single stream of bytes passes through a writer. [`VerifiedArtifact::from_assembled`] checks the same
//! intention, then reads the finished file once through the handle it keeps, checking its length and every signed
//! hash. The piece hashes (checked against a signed root) decide what is written; this whole-file check alone decides
//! what becomes a `VerifiedArtifact`.
//!
//! **Content verified for caching** ([`VerifiedFile::from_file`]) is that same whole-file check without the
//! intention check: a peer cache server keeps and serves content for other devices, which need not apply to itself.
//! A `VerifiedFile` is a distinct type the install engine does not take.
//!
//! **Resuming** is the one exception to the single pass: [`ArtifactWriter::resume`] reads the prefix already on disk
//! once to rebuild the hash state, then continues to hash while writing. The hash state is not persisted instead
//! because aws-lc-rs does not export a digest context's internal state, and a persisted state would be one more file
//! whose integrity must be trusted; re-reading the prefix costs one sequential read of bytes that did not have to be
//! fetched again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;

use aws_lc_rs::digest;
use custody_catalog::{DeviceInventory, Evaluation, UpdateEntry};
use custody_tuf::TrustedTarget;

use crate::{Error, fs};

/// Size of one buffer handed to the I/O thread.
const BUFFER: usize = 1 << 20;
/// Buffers circulating between the caller and the I/O thread.
const BUFFERS: usize = 3;

/// A download in progress: bytes are hashed with every algorithm the target lists as they are written, and never
/// accepted past the signed length.
///
/// Dropping a writer writes out what it buffered and keeps the partial file (`<staging>/<sha256>.download`), so that
/// [`ArtifactWriter::resume`] can continue it.
#[derive(Debug)]
pub struct ArtifactWriter {
    path: PathBuf,
    target: TrustedTarget,
    entry: UpdateEntry,
    /// The most expensive listed hash, computed on the caller's thread.
    caller: Hasher,
    /// Bytes not yet handed to the I/O thread.
    buffer: Vec<u8>,
    /// `None` once finished, or after a failure.
    io: Option<IoThread>,
    written: u64,
}

/// One signed hash and the digest being computed against it.
#[derive(Clone)]
struct Hasher {
    algorithm: String,
    context: digest::Context,
    expected: Vec<u8>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl Hasher {
    /// One hasher per hash `target` lists: the SHA-256 is required, SHA-512 is checked when listed, and any other
    /// algorithm (or a value that is not hex of the algorithm's length) refuses the target rather than leaving a
    /// signed hash unchecked. In the signed map's (alphabetical) order.
    fn signed(target: &TrustedTarget) -> Result<Vec<Hasher>, Error> {
        let path = target.path();
        if target.file().sha256().is_none() {
            return Err(Error::BadSignedHash {
                path: path.to_owned(),
                algorithm: "sha256".into(),
                problem: "not listed; custody requires it",
            });
        }
        let mut hashers = Vec::with_capacity(target.file().hashes.len());
        for (algorithm, expected) in &target.file().hashes {
            let kind = match algorithm.as_str() {
                "sha256" => &digest::SHA256,
                "sha512" => &digest::SHA512,
                _ => return Err(Error::UnsupportedHash { path: path.to_owned(), algorithm: algorithm.clone() }),
            };
            let expected = match hex::decode(expected) {
                Ok(bytes) if bytes.len() == kind.output_len() => bytes,
                _ => {
                    return Err(Error::BadSignedHash {
                        path: path.to_owned(),
                        algorithm: algorithm.clone(),
                        problem: "not hex of the algorithm's output length",
                    });
                }
            };
            hashers.push(Hasher { algorithm: algorithm.clone(), context: digest::Context::new(kind), expected });
        }
        Ok(hashers)
    }
}

/// The thread that writes full buffers to the file and computes the hashes other than SHA-256 over them.
#[derive(Debug)]
struct IoThread {
    full: SyncSender<Vec<u8>>,
    empty: Receiver<Vec<u8>>,
    handle: JoinHandle<IoDone>,
}

/// What the I/O thread hands back when its input ends or a write fails.
struct IoDone {
    file: File,
    hashers: Vec<Hasher>,
    error: Option<std::io::Error>,
}

impl IoThread {
    fn start(file: File, hashers: Vec<Hasher>) -> Self {
        let (full, full_rx) = sync_channel::<Vec<u8>>(BUFFERS);
        let (empty_tx, empty) = channel::<Vec<u8>>();
        for _ in 0..BUFFERS - 1 {
            // Invariant: `empty` is alive, so sending cannot fail.
            let _ = empty_tx.send(Vec::with_capacity(BUFFER));
        }
        let handle = std::thread::spawn(move || Self::run(file, hashers, full_rx, empty_tx));
        Self { full, empty, handle }
    }

    fn run(mut file: File, mut hashers: Vec<Hasher>, full: Receiver<Vec<u8>>, empty: Sender<Vec<u8>>) -> IoDone {
        for mut buffer in full {
            for hasher in &mut hashers {
                hasher.context.update(&buffer);
            }
            if let Err(error) = file.write_all(&buffer) {
                return IoDone { file, hashers, error: Some(error) };
            }
            buffer.clear();
            // The caller may be gone (finishing); the buffer is then simply dropped.
            let _ = empty.send(buffer);
        }
        IoDone { file, hashers, error: None }
    }

    /// Hands a full buffer over and returns an empty one; `Err` when the thread stopped (a write failed).
    fn exchange(&self, full: Vec<u8>) -> Result<Vec<u8>, ()> {
        self.full.send(full).map_err(|_| ())?;
        self.empty.recv().map_err(|_| ())
    }

    /// Ends the input and waits for every buffer to be written.
    fn join(self) -> IoDone {
        drop(self.full);
        match self.handle.join() {
            Ok(done) => done,
            // `run` does not panic: it only hashes and writes. Should it, the panic is the caller's too.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl ArtifactWriter {
    /// Starts a download of `target` into `staging_dir` after checking intention (see the module documentation).
    /// An earlier partial download of the same content is discarded.
    pub fn create(
        staging_dir: &Path,
        target: &TrustedTarget,
        entry: &UpdateEntry,
        device: &DeviceInventory,
    ) -> Result<Self, Error> {
        let (caller, others) = Self::check_intention(target, entry, device)?;
        let path = Self::download_path(staging_dir, target);
        fs::ensure_space(staging_dir, target.file().length)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io("create", &path))?;
        tracing::debug!(target = %target.path(), path = %path.display(), "download started");
        Ok(Self {
            path,
            target: target.clone(),
            entry: entry.clone(),
            caller,
            buffer: Vec::with_capacity(BUFFER),
            io: Some(IoThread::start(file, others)),
            written: 0,
        })
    }

    /// Continues the partial download of `target` in `staging_dir` (or starts one if there is none), after the same
    /// checks as [`ArtifactWriter::create`]. The bytes already on disk are read once to rebuild the hash state;
    /// [`ArtifactWriter::written`] tells where to continue (an HTTP `Range` request).
    pub fn resume(
        staging_dir: &Path,
        target: &TrustedTarget,
        entry: &UpdateEntry,
        device: &DeviceInventory,
    ) -> Result<Self, Error> {
        let (mut caller, mut others) = Self::check_intention(target, entry, device)?;
        let path = Self::download_path(staging_dir, target);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io("open", &path))?;
        let found = file.metadata().map_err(Error::io("stat", &path))?.len();
        let length = target.file().length;
        if found > length {
            drop(file);
            fs::remove_file(&path)?;
            return Err(Error::PartialTooLong { path: target.path().to_owned(), length, found });
        }
        fs::ensure_space(staging_dir, length - found)?;
        let mut buffer = vec![0u8; BUFFER];
        let mut read = 0u64;
        while read < found {
            let count = file.read(&mut buffer).map_err(Error::io("read", &path))?;
            if count == 0 {
                break;
            }
            caller.context.update(&buffer[..count]);
            for hasher in &mut others {
                hasher.context.update(&buffer[..count]);
            }
            read += count as u64;
        }
        // Continue exactly after the bytes that were hashed, even if the file changed while it was read.
        file.set_len(read).map_err(Error::io("truncate", &path))?;
        file.seek(SeekFrom::Start(read)).map_err(Error::io("seek", &path))?;
        tracing::debug!(target = %target.path(), resumed_at = read, "download resumed");
        buffer.clear();
        Ok(Self {
            path,
            target: target.clone(),
            entry: entry.clone(),
            caller,
            buffer,
            io: Some(IoThread::start(file, others)),
            written: read,
        })
    }

    /// Appends `data`, hashing it with every listed algorithm. Bytes past the signed length are refused: the
    /// partial file is removed and [`Error::TooLong`] returned. After any error the writer is unusable
    /// ([`Error::WriterFailed`]); after an I/O error the partial file stays for [`ArtifactWriter::resume`].
    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.io.is_none() {
            return Err(Error::WriterFailed { path: self.target.path().to_owned() });
        }
        let length = self.target.file().length;
        if data.len() as u64 > length - self.written {
            self.stop_io();
            fs::remove_file(&self.path)?;
            return Err(Error::TooLong { path: self.target.path().to_owned(), length });
        }
        self.caller.context.update(data);
        let mut rest = data;
        while !rest.is_empty() {
            let take = rest.len().min(BUFFER - self.buffer.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buffer.len() == BUFFER {
                self.hand_over()?;
            }
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// How many bytes are written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The partial file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The target being downloaded.
    pub fn target(&self) -> &TrustedTarget {
        &self.target
    }

    /// Completes the download: when the length and every signed hash match, the file is made durable and becomes a
    /// [`VerifiedArtifact`]. Otherwise the partial file is removed and the error names what did not match.
    pub fn finish(mut self) -> Result<VerifiedArtifact, Error> {
        if self.io.is_none() {
            return Err(Error::WriterFailed { path: self.target.path().to_owned() });
        }
        let Some(IoDone { file, hashers, error }) = self.stop_io() else {
            return Err(Error::WriterFailed { path: self.target.path().to_owned() });
        };
        if let Some(error) = error {
            return Err(Error::io("write", &self.path)(error));
        }
        let length = self.target.file().length;
        if self.written != length {
            drop(file);
            fs::remove_file(&self.path)?;
            return Err(Error::LengthMismatch { path: self.target.path().to_owned(), length, received: self.written });
        }
        let mut all: Vec<Hasher> = std::iter::once(self.caller.clone()).chain(hashers).collect();
        all.sort_by(|a, b| a.algorithm.cmp(&b.algorithm));
        for hasher in all {
            if hasher.context.finish().as_ref() != hasher.expected.as_slice() {
                drop(file);
                fs::remove_file(&self.path)?;
                return Err(Error::HashMismatch { path: self.target.path().to_owned(), algorithm: hasher.algorithm });
            }
        }
        file.sync_all().map_err(Error::io("sync", &self.path))?;
        fs::sync_dir(fs::parent(&self.path))?;
        tracing::info!(target = %self.target.path(), length, "download verified");
        let path = std::mem::take(&mut self.path);
        Ok(VerifiedArtifact { path, file, target: self.target.clone(), entry: self.entry.clone() })
    }

    /// Hands the full buffer to the I/O thread; on a write failure, stops it and returns the error.
    fn hand_over(&mut self) -> Result<(), Error> {
        let Some(io) = &self.io else {
            return Err(Error::WriterFailed { path: self.target.path().to_owned() });
        };
        let full = std::mem::take(&mut self.buffer);
        match io.exchange(full) {
            Ok(empty) => {
                self.buffer = empty;
                Ok(())
            }
            Err(()) => {
                let error = self.stop_io().and_then(|done| done.error);
                let error = error.unwrap_or_else(|| std::io::Error::other("the writer thread stopped"));
                Err(Error::io("write", &self.path)(error))
            }
        }
    }

    /// Writes out the buffered bytes and stops the I/O thread; `None` if it was stopped before.
    fn stop_io(&mut self) -> Option<IoDone> {
        let io = self.io.take()?;
        let rest = std::mem::take(&mut self.buffer);
        if !rest.is_empty() {
            // A send error means the thread stopped on a write error, which `join` returns.
            let _ = io.full.send(rest);
        }
        Some(io.join())
    }

    /// Checks that `entry` is what `target` was signed for and applies to `device`, and returns one hasher per
    /// signed hash: the one for the caller's thread, and the others.
    fn check_intention(
        target: &TrustedTarget,
        entry: &UpdateEntry,
        device: &DeviceInventory,
    ) -> Result<(Hasher, Vec<Hasher>), Error> {
        let path = target.path();
        let Some(custom) = &target.file().custom else {
            return Err(Error::NoCatalogEntry { path: path.to_owned(), reason: "no custom metadata".into() });
        };
        let signed = UpdateEntry::parse(custom)
            .map_err(|error| Error::NoCatalogEntry { path: path.to_owned(), reason: error.to_string() })?;
        if signed != *entry {
            return Err(Error::EntryNotSigned { path: path.to_owned() });
        }
        let product = entry.product().as_str();
        if path.split('/').next() != Some(product) || !path.contains('/') {
            return Err(Error::ProductPath { path: path.to_owned(), product: product.to_owned() });
        }

        let content = entry.content();
        if content.length.get() != target.file().length {
            return Err(Error::ContentMismatch {
                path: path.to_owned(),
                field: "length",
                entry: content.length.to_string(),
                target: target.file().length.to_string(),
            });
        }
        let mut hashers = Hasher::signed(target)?;
        // `Hasher::signed` refused a target without a SHA-256.
        let signed_sha256 = target.file().sha256().unwrap_or_default();
        let entry_sha256 = content.sha256.to_string();
        if !signed_sha256.eq_ignore_ascii_case(&entry_sha256) {
            return Err(Error::ContentMismatch {
                path: path.to_owned(),
                field: "sha256",
                entry: entry_sha256,
                target: signed_sha256.to_owned(),
            });
        }

        let version = entry.version().to_string();
        if let Evaluation::NotApplicable(reason) = entry.applicability().evaluate(device) {
            return Err(Error::NotApplicable { product: product.to_owned(), version, reason: Box::new(reason) });
        }
        let missing: Vec<String> = entry
            .unmet_prerequisites(device)
            .map(|prerequisite| {
                let ids: Vec<String> = prerequisite.ids().iter().map(|id| id.as_uuid().to_string()).collect();
                ids.join(" or ")
            })
            .collect();
        if !missing.is_empty() {
            return Err(Error::PrerequisitesMissing {
                product: product.to_owned(),
                version,
                missing: missing.join(", "),
            });
        }
        // Invariant: the SHA-256 is listed (checked above), so a position is always found.
        let position = (hashers.iter().position(|h| h.algorithm == "sha512"))
            .or_else(|| hashers.iter().position(|h| h.algorithm == "sha256"))
            .expect("sha256 is listed");
        let caller = hashers.remove(position);
        Ok((caller, hashers))
    }

    /// `<staging>/<sha256>.download`: named by the signed hash, which is safe as a file name (checked hex).
    fn download_path(staging_dir: &Path, target: &TrustedTarget) -> PathBuf {
        // `check_intention` ran first: the SHA-256 is listed and is hex.
        let sha256 = target.file().sha256().unwrap_or_default().to_ascii_lowercase();
        staging_dir.join(format!("{sha256}.download"))
    }
}

impl Drop for ArtifactWriter {
    /// Writes out what is buffered, so that the partial file holds every byte accepted so far.
    fn drop(&mut self) {
        self.stop_io();
    }
}

/// A downloaded target whose length and every signed hash matched, and whose catalog entry is the one signed for it
/// and applies to this device. Only [`ArtifactWriter::finish`] and [`VerifiedArtifact::from_assembled`] make one;
/// the install engine takes only this.
///
/// It keeps the file open: the engine reads the bytes that were verified through this handle, not through a path
/// that could be replaced in between.
#[derive(Debug)]
pub struct VerifiedArtifact {
    path: PathBuf,
    file: File,
    target: TrustedTarget,
    entry: UpdateEntry,
}

impl VerifiedArtifact {
    /// Verifies a complete file assembled elsewhere (peer-to-peer delivery writes verified pieces at their offsets)
    /// and makes it a `VerifiedArtifact`: first the intention checks of [`ArtifactWriter::create`], then the whole-file
    /// check of [`VerifiedFile::from_file`] (the file is opened, a symbolic link refused, and read once through
    /// the handle the artifact keeps; its length and every signed hash must match). The file is then made durable
    /// where it is. On a length or hash mismatch the file is removed and the error names what did not match; after
    /// an intention error the file is left as it is.
    pub fn from_assembled(
        path: &Path,
        target: &TrustedTarget,
        entry: &UpdateEntry,
        device: &DeviceInventory,
    ) -> Result<VerifiedArtifact, Error> {
        ArtifactWriter::check_intention(target, entry, device)?;
        let VerifiedFile { path, file, target } = VerifiedFile::from_file(path, target)?;
        file.sync_all().map_err(Error::io("sync", &path))?;
        fs::sync_dir(fs::parent(&path))?;
        tracing::info!(target = %target.path(), length = target.file().length, path = %path.display(),
            "assembled file verified");
        Ok(VerifiedArtifact { path, file, target, entry: entry.clone() })
    }

    /// Where the verified file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What signed metadata says about it.
    pub fn target(&self) -> &TrustedTarget {
        &self.target
    }

    /// Its catalog entry, as signed in the target's `custom` metadata.
    pub fn entry(&self) -> &UpdateEntry {
        &self.entry
    }

    /// Removes the file without installing it.
    pub fn discard(self) -> Result<(), Error> {
        drop(self.file);
        fs::remove_file(&self.path)
    }

    /// The verified bytes from the start, through the handle opened when they were verified.
    pub(crate) fn reader(&self) -> Result<&File, Error> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0)).map_err(Error::io("seek", &self.path))?;
        Ok(file)
    }
}

/// A complete file whose length and every signed hash matched its target: content that may be kept and served (a
/// peer cache), never installed. Its catalog entry went through no intention check (is it the one signed for the
/// target, does it apply to this device), which is what a [`VerifiedArtifact`] stands for, and nothing turns one
/// into the other: the install engine does not take it. Only [`VerifiedFile::from_file`] makes one.
#[derive(Debug)]
pub struct VerifiedFile {
    path: PathBuf,
    /// The handle the file was read through: [`VerifiedArtifact::from_assembled`] keeps it.
    file: File,
    target: TrustedTarget,
}

impl VerifiedFile {
    /// The whole-file check: the file at `path` is opened (a symbolic link is refused) and read once, and its length
    /// and every signed hash of `target` must match (SHA-256 required, SHA-512 when listed, any other algorithm
    /// refused). On a length or hash mismatch the file is removed and the error names what did not match
    /// ([`Error::LengthMismatch`], [`Error::HashMismatch`]); a target whose hashes cannot all be checked is refused
    /// before the file is opened ([`Error::BadSignedHash`], [`Error::UnsupportedHash`]). The file is not synced:
    /// making it durable is the caller's part.
    pub fn from_file(path: &Path, target: &TrustedTarget) -> Result<VerifiedFile, Error> {
        let mut hashers = Hasher::signed(target)?;
        let mut file =
            OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(Error::io("open", path))?;
        let length = target.file().length;
        let found = file.metadata().map_err(Error::io("stat", path))?.len();
        let discard = |file: File, error: Error| {
            drop(file);
            fs::remove_file(path)?;
            Err(error)
        };
        if found != length {
            return discard(file, Error::LengthMismatch { path: target.path().to_owned(), length, received: found });
        }
        // The reading thread hashes with the first algorithm; a second thread takes the others (SHA-512 costs
        // about twice SHA-256), each chunk handed over once read, so the check takes about as long as the most
        // expensive hash alone. Buffers circulate between the two threads.
        let (first, others) = hashers.split_at_mut(1);
        let stopped = |why: &str| Error::io("hash", path)(std::io::Error::other(why.to_owned()));
        let read = std::thread::scope(|scope| -> Result<u64, Error> {
            let (full, full_rx) = sync_channel::<(Vec<u8>, usize)>(BUFFERS);
            let (empty, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
            let helper = (!others.is_empty()).then(|| {
                scope.spawn(move || {
                    for (buffer, count) in full_rx {
                        for hasher in others.iter_mut() {
                            hasher.context.update(&buffer[..count]);
                        }
                        // The reader may have stopped (a read error): then the buffer is not needed.
                        let _ = empty.send(buffer);
                    }
                })
            });
            let mut spare = (0..BUFFERS).map(|_| vec![0u8; BUFFER]).collect::<Vec<_>>();
            let mut read = 0u64;
            let result = loop {
                let mut buffer = match spare.pop() {
                    Some(buffer) => buffer,
                    // Every buffer is with the helper: wait for one (it sends each back after hashing it).
                    None => match empty_rx.recv() {
                        Ok(buffer) => buffer,
                        Err(_) => break Err(stopped("the hashing thread stopped")),
                    },
                };
                let count = match file.read(&mut buffer) {
                    Ok(0) => break Ok(read),
                    Ok(count) => count,
                    Err(err) => break Err(Error::io("read", path)(err)),
                };
                read += count as u64;
                first[0].context.update(&buffer[..count]);
                match &helper {
                    Some(_) => {
                        if full.send((buffer, count)).is_err() {
                            break Err(stopped("the hashing thread stopped"));
                        }
                    }
                    None => spare.push(buffer),
                }
            };
            drop(full);
            if let Some(helper) = helper
                && helper.join().is_err()
            {
                return Err(stopped("the hashing thread panicked"));
            }
            result
        })?;
        if read != length {
            // The file changed size while it was read.
            return discard(file, Error::LengthMismatch { path: target.path().to_owned(), length, received: read });
        }
        for hasher in hashers {
            if hasher.context.finish().as_ref() != hasher.expected.as_slice() {
                let algorithm = hasher.algorithm;
                return discard(file, Error::HashMismatch { path: target.path().to_owned(), algorithm });
            }
        }
        Ok(VerifiedFile { path: path.to_owned(), file, target: target.clone() })
    }

    /// Where the file was when it was verified.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What signed metadata says about it.
    pub fn target(&self) -> &TrustedTarget {
        &self.target
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use custody_catalog::{ContentHasher, UpdateDescription};
    use custody_tuf::TargetFile;

    use super::*;

    fn device() -> DeviceInventory {
        DeviceInventory {
            os_family: "debian".parse().unwrap(),
            os_version: Some("12".parse().unwrap()),
            arch: "x86_64".parse().unwrap(),
            products: BTreeMap::new(),
            hardware_ids: BTreeSet::new(),
            installed_updates: BTreeSet::new(),
        }
    }

    fn target(payload: &[u8], arch: &str) -> (TrustedTarget, UpdateEntry) {
        let description: UpdateDescription = serde_json::from_value(serde_json::json!({
            "id": "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90", "revision": 1, "title": "Acme 1.0", "description": "",
            "kind": "store-app", "product": "acme", "classification": "update", "version": "1.0",
            "release_date": "2025-06-10", "reboot": "never", "applicability": {"arch": [arch]},
            "installer": {"handler": "store-app"},
        }))
        .unwrap();
        let mut hasher = ContentHasher::new(None);
        hasher.update(payload);
        let (content, _) = hasher.finish().unwrap();
        let entry = UpdateEntry::from_description(&description, content).unwrap();
        let file = TargetFile::describing(payload, Some(entry.to_custom_json()));
        (TrustedTarget::for_tests("acme/acme-1.0.tar.zst".into(), "acme".into(), file), entry)
    }

    #[test]
    fn verified_after_length_and_every_hash() {
        let dir = tempfile::tempdir().unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (target, entry) = target(&payload, "x86_64");
        let mut writer = ArtifactWriter::create(dir.path(), &target, &entry, &device()).unwrap();
        for chunk in payload.chunks(7001) {
            writer.write(chunk).unwrap();
        }
        let artifact = writer.finish().unwrap();
        assert_eq!(std::fs::read(artifact.path()).unwrap(), payload);
        let mut read = Vec::new();
        artifact.reader().unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, payload);
        assert_eq!(artifact.entry(), &entry);
    }

    #[test]
    fn wrong_bytes_name_the_mismatch_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let payload = b"the real payload".to_vec();
        let (target, entry) = target(&payload, "x86_64");

        let mut writer = ArtifactWriter::create(dir.path(), &target, &entry, &device()).unwrap();
        writer.write(b"the fake payload").unwrap();
        let path = writer.path().to_owned();
        let error = writer.finish().unwrap_err();
        // BTreeMap order: sha256 is checked first.
        assert!(matches!(&error, Error::HashMismatch { algorithm, .. } if algorithm == "sha256"), "{error}");
        assert!(!path.exists());

        let mut writer = ArtifactWriter::create(dir.path(), &target, &entry, &device()).unwrap();
        writer.write(b"short").unwrap();
        let error = writer.finish().unwrap_err();
        assert!(matches!(error, Error::LengthMismatch { received: 5, length: 16, .. }), "{error}");
        assert!(!path.exists());

        let mut writer = ArtifactWriter::create(dir.path(), &target, &entry, &device()).unwrap();
        writer.write(b"the real payload").unwrap();
        let error = writer.write(b"!").unwrap_err();
        assert!(matches!(error, Error::TooLong { length: 16, .. }), "{error}");
        assert!(!path.exists());
        assert!(matches!(writer.write(b"x"), Err(Error::WriterFailed { .. })));
    }

    /// `target` with its signed file (and path) changed, as a hostile or broken repository could not sign it.
    fn altered(target: &TrustedTarget, path: Option<&str>, alter: impl FnOnce(&mut TargetFile)) -> TrustedTarget {
        let mut file = target.file().clone();
        alter(&mut file);
        TrustedTarget::for_tests(path.unwrap_or(target.path()).to_owned(), target.role().to_owned(), file)
    }

    #[test]
    fn only_the_sha512_wrong_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let payload = b"payload".to_vec();
        let (target, entry) = target(&payload, "x86_64");
        let target = altered(&target, None, |file| {
            file.hashes.insert("sha512".into(), hex::encode([7u8; 64]));
        });
        let mut writer = ArtifactWriter::create(dir.path(), &target, &entry, &device()).unwrap();
        writer.write(&payload).unwrap();
        let error = writer.finish().unwrap_err();
        assert!(matches!(&error, Error::HashMismatch { algorithm, .. } if algorithm == "sha512"), "{error}");
    }

    #[test]
    fn intention_is_checked_before_any_byte() {
        let dir = tempfile::tempdir().unwrap();
        let payload = b"payload".to_vec();
        let (target, entry) = target(&payload, "x86_64");
        let create = |target: &TrustedTarget, entry: &UpdateEntry, device: &DeviceInventory| {
            ArtifactWriter::create(dir.path(), target, entry, device).unwrap_err()
        };

        // An entry that is not the one in this target's signed custom metadata.
        let (_, other_entry) = self::target(b"other payload", "x86_64");
        assert!(matches!(create(&target, &other_entry, &device()), Error::EntryNotSigned { .. }));

        // Not for this device.
        let (arm_target, arm_entry) = self::target(&payload, "aarch64");
        assert!(matches!(create(&arm_target, &arm_entry, &device()), Error::NotApplicable { .. }));

        // Signed length differs from the entry's content length.
        let longer = altered(&target, None, |file| file.length += 1);
        assert!(matches!(create(&longer, &entry, &device()), Error::ContentMismatch { field: "length", .. }));

        // Signed SHA-256 differs from the entry's.
        let other_hash = altered(&target, None, |file| {
            file.hashes.insert("sha256".into(), hex::encode([1u8; 32]));
        });
        assert!(matches!(create(&other_hash, &entry, &device()), Error::ContentMismatch { field: "sha256", .. }));

        // No SHA-256, or an algorithm that cannot be checked.
        let no_sha256 = altered(&target, None, |file| {
            file.hashes.remove("sha256");
        });
        assert!(matches!(create(&no_sha256, &entry, &device()), Error::BadSignedHash { .. }));
        let unknown = altered(&target, None, |file| {
            file.hashes.insert("md5".into(), "00".repeat(16));
        });
        assert!(
            matches!(create(&unknown, &entry, &device()), Error::UnsupportedHash { algorithm, .. } if algorithm == "md5")
        );

        // A path outside the entry's product.
        let elsewhere = altered(&target, Some("other/acme-1.0.tar.zst"), |_| {});
        assert!(matches!(create(&elsewhere, &entry, &device()), Error::ProductPath { .. }));

        // No catalog entry at all.
        let bare = altered(&target, None, |file| file.custom = None);
        assert!(matches!(create(&bare, &entry, &device()), Error::NoCatalogEntry { .. }));

        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is created");
    }

    #[test]
    fn assembled_files_are_verified_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 241) as u8).collect();
        let (target, entry) = target(&payload, "x86_64");
        let target = altered(&target, None, |file| {
            file.hashes.insert("sha512".into(), hex::encode(digest::digest(&digest::SHA512, &payload)));
        });
        let path = dir.path().join("assembled.part");

        std::fs::write(&path, &payload).unwrap();
        let artifact = VerifiedArtifact::from_assembled(&path, &target, &entry, &device()).unwrap();
        assert_eq!(artifact.path(), path);
        let mut read = Vec::new();
        artifact.reader().unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, payload);
        drop(artifact);

        // One flipped byte anywhere: refused and removed.
        let mut corrupt = payload.clone();
        corrupt[299_999] ^= 0x40;
        std::fs::write(&path, &corrupt).unwrap();
        let error = VerifiedArtifact::from_assembled(&path, &target, &entry, &device()).unwrap_err();
        assert!(matches!(&error, Error::HashMismatch { algorithm, .. } if algorithm == "sha256"), "{error}");
        assert!(!path.exists());

        // Only the SHA-512 disagrees: still refused.
        std::fs::write(&path, &payload).unwrap();
        let wrong512 = altered(&target, None, |file| {
            file.hashes.insert("sha512".into(), hex::encode([9u8; 64]));
        });
        let error = VerifiedArtifact::from_assembled(&path, &wrong512, &entry, &device()).unwrap_err();
        assert!(matches!(&error, Error::HashMismatch { algorithm, .. } if algorithm == "sha512"), "{error}");

        // Short or long: refused and removed.
        for len in [payload.len() - 1, payload.len() + 1] {
            let mut bytes = payload.clone();
            bytes.resize(len, 0);
            std::fs::write(&path, &bytes).unwrap();
            let error = VerifiedArtifact::from_assembled(&path, &target, &entry, &device()).unwrap_err();
            assert!(matches!(error, Error::LengthMismatch { received, .. } if received == len as u64), "{error}");
            assert!(!path.exists());
        }

        // Intention first: an entry not signed for this target, or not for this device, leaves the file alone.
        std::fs::write(&path, &payload).unwrap();
        let (_, other_entry) = self::target(b"other payload", "x86_64");
        let error = VerifiedArtifact::from_assembled(&path, &target, &other_entry, &device()).unwrap_err();
        assert!(matches!(error, Error::EntryNotSigned { .. }), "{error}");
        let (arm_target, arm_entry) = self::target(&payload, "aarch64");
        let error = VerifiedArtifact::from_assembled(&path, &arm_target, &arm_entry, &device()).unwrap_err();
        assert!(matches!(error, Error::NotApplicable { .. }), "{error}");
        assert!(path.exists());

        // A symbolic link is not followed.
        let link = dir.path().join("link.part");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let error = VerifiedArtifact::from_assembled(&link, &target, &entry, &device()).unwrap_err();
        assert!(matches!(error, Error::Io { action: "open", .. }), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), payload);
    }

    #[test]
    fn content_for_caching_is_checked_whole_without_intention() {
        let dir = tempfile::tempdir().unwrap();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 11 % 239) as u8).collect();
        // No catalog entry in `custom`, for no particular device: `from_assembled` would refuse it, `from_file`
        // checks only the bytes. `describing` lists SHA-256 and SHA-512.
        let target =
            TrustedTarget::for_tests("acme/acme-1.0.img".into(), "acme".into(), TargetFile::describing(&payload, None));
        let path = dir.path().join("content.part");

        std::fs::write(&path, &payload).unwrap();
        let content = VerifiedFile::from_file(&path, &target).unwrap();
        assert_eq!(content.path(), path);
        assert_eq!(content.target(), &target);
        drop(content);

        // One flipped byte: refused and removed.
        let mut corrupt = payload.clone();
        corrupt[123_456] ^= 0x01;
        std::fs::write(&path, &corrupt).unwrap();
        let error = VerifiedFile::from_file(&path, &target).unwrap_err();
        assert!(matches!(&error, Error::HashMismatch { algorithm, .. } if algorithm == "sha256"), "{error}");
        assert!(!path.exists());

        // Only the SHA-512 disagrees: still refused.
        std::fs::write(&path, &payload).unwrap();
        let wrong512 = altered(&target, None, |file| {
            file.hashes.insert("sha512".into(), hex::encode([9u8; 64]));
        });
        let error = VerifiedFile::from_file(&path, &wrong512).unwrap_err();
        assert!(matches!(&error, Error::HashMismatch { algorithm, .. } if algorithm == "sha512"), "{error}");

        // Short or long: refused and removed.
        for len in [payload.len() - 1, payload.len() + 1] {
            let mut bytes = payload.clone();
            bytes.resize(len, 0);
            std::fs::write(&path, &bytes).unwrap();
            let error = VerifiedFile::from_file(&path, &target).unwrap_err();
            assert!(matches!(error, Error::LengthMismatch { received, .. } if received == len as u64), "{error}");
            assert!(!path.exists());
        }

        // A symbolic link is not followed; the file it names is left alone.
        std::fs::write(&path, &payload).unwrap();
        let link = dir.path().join("link.part");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let error = VerifiedFile::from_file(&link, &target).unwrap_err();
        assert!(matches!(error, Error::Io { action: "open", .. }), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), payload);

        // A target without a SHA-256, or with a hash custody cannot compute, is refused before the file is read.
        let no_sha256 = altered(&target, None, |file| {
            file.hashes.remove("sha256");
        });
        let error = VerifiedFile::from_file(&path, &no_sha256).unwrap_err();
        assert!(matches!(&error, Error::BadSignedHash { algorithm, .. } if algorithm == "sha256"), "{error}");
        let unknown = altered(&target, None, |file| {
            file.hashes.insert("blake2b".into(), "00".repeat(32));
        });
        let error = VerifiedFile::from_file(&path, &unknown).unwrap_err();
        assert!(matches!(&error, Error::UnsupportedHash { algorithm, .. } if algorithm == "blake2b"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), payload);
    }

    #[test]
    fn resume_continues_a_partial_download() {
        let dir = tempfile::tempdir().unwrap();
        let payload: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let (target, entry) = target(&payload, "x86_64");
        let mut writer = ArtifactWriter::create(dir.path(), &target, &entry, &device()).unwrap();
        writer.write(&payload[..300_001]).unwrap();
        drop(writer); // the connection dropped

        let mut writer = ArtifactWriter::resume(dir.path(), &target, &entry, &device()).unwrap();
        assert_eq!(writer.written(), 300_001);
        writer.write(&payload[300_001..]).unwrap();
        let artifact = writer.finish().unwrap();
        assert_eq!(std::fs::read(artifact.path()).unwrap(), payload);

        // A resumed download with corrupted bytes on disk is still caught.
        let mut writer = ArtifactWriter::create(dir.path(), &target, &entry, &device()).unwrap();
        writer.write(&payload[..1000]).unwrap();
        let path = writer.path().to_owned();
        drop(writer);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let mut writer = ArtifactWriter::resume(dir.path(), &target, &entry, &device()).unwrap();
        writer.write(&payload[1000..]).unwrap();
        assert!(matches!(writer.finish(), Err(Error::HashMismatch { .. })));

        // A partial file longer than the signed length is removed.
        std::fs::write(&path, vec![0u8; payload.len() + 1]).unwrap();
        let error = ArtifactWriter::resume(dir.path(), &target, &entry, &device()).unwrap_err();
        assert!(matches!(error, Error::PartialTooLong { .. }), "{error}");
        assert!(!path.exists());
    }
}
