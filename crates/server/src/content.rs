//! The content store: update payloads by hash, behind [`ContentStore`] so that an object store can replace the
//! directory later. [`DirStore`] keeps them in a directory:
//!
//! ```text
//! <dir>/sha256/<first 2 hex>/<sha256 hex>          the bytes
//! <dir>/sha256/<first 2 hex>/<sha256 hex>.sha512   the SHA-512 of the bytes, hex (written before the bytes appear)
//! <dir>/sha256/<first 2 hex>/<sha256 hex>.pieces   the piece layer, when the content was published with pieces
//! <dir>/sha512/<first 2 hex>/<sha512 hex>          the SHA-256 hex of the same bytes (a pointer)
//! <dir>/tmp/                                       uploads in progress
//! ```
//!
//! Objects never change once stored: a name is the hash of its bytes, and an upload goes to `tmp/` first and is
//! renamed into place only after its hashes were checked. A piece layer (32 bytes per piece, [`crate::pieces`]) is
//! computed by the service from the stored bytes and never replaced by a different one.
//!
//! Serving ([`ContentStore::open`]) avoids tokio's blocking pool, whose hand-offs (two thread wake-ups each) were
//! most of the cost of a small response (crates/server/benches/service.rs, BENCHMARKS.md): recently served objects
//! stay open (a small table of file descriptors; objects never change, so an open file stays right), and bytes are
//! read on the async thread when that cannot wait for a disk: with `preadv2(RWF_NOWAIT)`, which returns what the page
//! cache holds, or plainly from tmpfs (memory; it has no `RWF_NOWAIT`). Only what would wait goes to the blocking
//! pool: opening an object not in the table, and reading data not in the page cache. A range is read in chunks as it
//! is sent, never whole into memory.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::digest::{Context, SHA256, SHA512};
use bytes::Bytes;
use custody_catalog::pieces::{PieceHashes, PieceSize, PieceTreeBuilder};
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

/// A stream of content bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;
/// A boxed future, so that [`ContentStore`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How content is named in a request: by its SHA-256 or its SHA-512.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentId {
    Sha256([u8; 32]),
    Sha512([u8; 64]),
}

/// A stored object: its length and SHA-256 (its primary name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredObject {
    pub sha256: [u8; 32],
    pub length: u64,
}

/// Chooses, once the object's length is known, the bytes to send: `None` for none (a `HEAD`, a `304`, a `416`).
pub type Select = Box<dyn FnOnce(&StoredObject) -> Option<Range<u64>> + Send>;

/// An object opened to answer a request.
pub struct Opened {
    pub object: StoredObject,
    /// The range [`Select`] chose, and its bytes.
    pub body: Option<(Range<u64>, ContentBody)>,
}

/// The bytes of a range.
pub enum ContentBody {
    /// A range that fits in one chunk, read already.
    Bytes(Bytes),
    /// A larger range, read in chunks as it is sent.
    Stream(ByteStream),
}

/// Everything known about a stored object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentHashes {
    pub sha256: [u8; 32],
    pub sha512: [u8; 64],
    pub length: u64,
}

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the uploaded bytes have SHA-256 {actual}, not {expected} as the URL says")]
    HashMismatch { expected: String, actual: String },
    #[error("reading the upload failed: {0}")]
    Body(io::Error),
    #[error("content store: {0}")]
    Io(#[from] io::Error),
}

/// Where payloads live. Implementations must never change the bytes behind a name.
pub trait ContentStore: Send + Sync + 'static {
    /// The object named `id`, if stored, with the bytes of the range `select` chooses (it must lie within the
    /// object's length). Made for serving: an implementation should do it in one trip to its storage.
    fn open(&self, id: ContentId, select: Select) -> BoxFuture<'_, io::Result<Option<Opened>>>;

    /// Length, SHA-256 and SHA-512 of the object with this SHA-256, if stored.
    fn hashes(&self, sha256: [u8; 32]) -> BoxFuture<'_, io::Result<Option<ContentHashes>>>;

    /// Stores `body`, which must hash to `expected_sha256` and be at most `max_length` bytes. Returns its hashes and
    /// whether it was new (`false`: it was already stored; the upload was checked and discarded).
    fn put(
        &self,
        expected_sha256: [u8; 32],
        body: ByteStream,
        max_length: u64,
    ) -> BoxFuture<'_, Result<(ContentHashes, bool), PutError>>;

    /// The piece tree of the stored object with this SHA-256, computed from its bytes; `None` when not stored.
    fn compute_pieces(
        &self,
        sha256: [u8; 32],
        piece_size: PieceSize,
    ) -> BoxFuture<'_, io::Result<Option<Result<PieceHashes, custody_catalog::Error>>>>;

    /// The piece layer stored beside the object, if any.
    fn piece_layer(&self, sha256: [u8; 32]) -> BoxFuture<'_, io::Result<Option<Bytes>>>;

    /// Stores the piece layer of a stored object (atomically). The caller checked it and that no other is stored.
    fn put_piece_layer(&self, sha256: [u8; 32], layer: Vec<u8>) -> BoxFuture<'_, io::Result<()>>;
}

/// [`ContentStore`] in a local directory (layout in the module documentation).
#[derive(Clone, Debug)]
pub struct DirStore {
    dir: PathBuf,
    /// Objects opened recently, by SHA-256, at most [`OPEN_FILES`].
    open_files: Arc<Mutex<HashMap<[u8; 32], OpenObject>>>,
}

/// A stored object's open file and length.
#[derive(Clone, Debug)]
struct OpenObject {
    file: Arc<std::fs::File>,
    length: u64,
    /// On tmpfs: reading never waits for a disk.
    in_memory: bool,
}

/// Chunk size of reads: a range up to this size is answered as one piece of bytes.
const READ_CHUNK: usize = 64 * 1024;
/// Open files kept for serving (well below the usual limit of 1024 descriptors per process).
const OPEN_FILES: usize = 256;

impl ContentId {
    /// A hash in lower-case hex: 64 digits for SHA-256, 128 for SHA-512.
    pub fn from_hex(text: &str) -> Option<Self> {
        if !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        match text.len() {
            64 => hex::decode(text).ok()?.try_into().ok().map(Self::Sha256),
            128 => hex::decode(text).ok()?.try_into().ok().map(Self::Sha512),
            _ => None,
        }
    }
}

impl DirStore {
    /// A store in `dir`, created if missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        for sub in ["sha256", "sha512", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Self { dir: dir.to_owned(), open_files: Arc::default() })
    }

    /// The object named `id`, from the table of open files or else opened on a blocking thread (and kept).
    async fn open_object(&self, id: ContentId) -> io::Result<Option<(StoredObject, OpenObject)>> {
        if let ContentId::Sha256(sha256) = id
            && let Some(open) = self.open_files.lock().unwrap_or_else(PoisonError::into_inner).get(&sha256)
        {
            return Ok(Some((StoredObject { sha256, length: open.length }, open.clone())));
        }
        let store = self.clone();
        let opened = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let Some((file, object)) = store.open_blocking(id)? else { return Ok(None) };
            let in_memory = on_tmpfs(&file);
            Ok(Some((OpenObject { file: Arc::new(file), length: object.length, in_memory }, object)))
        });
        let Some((open, object)) = opened.await.map_err(io::Error::other)?? else { return Ok(None) };
        let mut table = self.open_files.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() >= OPEN_FILES
            && let Some(old) = table.keys().next().copied()
        {
            table.remove(&old);
        }
        table.insert(object.sha256, open.clone());
        Ok(Some((object, open)))
    }

    fn sha256_path(&self, sha256: &[u8; 32]) -> PathBuf {
        let name = hex::encode(sha256);
        self.dir.join("sha256").join(&name[..2]).join(name)
    }

    fn sha512_path(&self, sha512: &[u8; 64]) -> PathBuf {
        let name = hex::encode(sha512);
        self.dir.join("sha512").join(&name[..2]).join(name)
    }

    async fn lookup_sha256(&self, sha256: [u8; 32]) -> io::Result<Option<StoredObject>> {
        match tokio::fs::metadata(self.sha256_path(&sha256)).await {
            Ok(meta) => Ok(Some(StoredObject { sha256, length: meta.len() })),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Opens the object named `id` (following a SHA-512 pointer), on a blocking thread; `None` if not stored.
    fn open_blocking(&self, id: ContentId) -> io::Result<Option<(std::fs::File, StoredObject)>> {
        let sha256 = match id {
            ContentId::Sha256(sha256) => sha256,
            ContentId::Sha512(sha512) => match std::fs::read_to_string(self.sha512_path(&sha512)) {
                Ok(text) => match ContentId::from_hex(text.trim()) {
                    Some(ContentId::Sha256(sha256)) => sha256,
                    _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt SHA-512 pointer file")),
                },
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(err) => return Err(err),
            },
        };
        let file = match std::fs::File::open(self.sha256_path(&sha256)) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let length = file.metadata()?.len();
        Ok(Some((file, StoredObject { sha256, length })))
    }

    /// Writes `body` to a temporary file while hashing it, then moves it into place.
    async fn put_stream(
        &self,
        expected_sha256: [u8; 32],
        mut body: ByteStream,
        max_length: u64,
    ) -> Result<(ContentHashes, bool), PutError> {
        let tmp = self.dir.join("tmp").join(uuid::Uuid::new_v4().to_string());
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let (mut sha256, mut sha512) = (Context::new(&SHA256), Context::new(&SHA512));
            let mut length = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(PutError::Body)?;
                length += chunk.len() as u64;
                if length > max_length {
                    return Err(PutError::TooLarge { limit: max_length });
                }
                sha256.update(&chunk);
                sha512.update(&chunk);
                file.write_all(&chunk).await?;
            }
            let hashes =
                ContentHashes { sha256: digest_array(sha256.finish()), sha512: digest_array(sha512.finish()), length };
            if hashes.sha256 != expected_sha256 {
                return Err(PutError::HashMismatch {
                    expected: hex::encode(expected_sha256),
                    actual: hex::encode(hashes.sha256),
                });
            }
            if self.lookup_sha256(hashes.sha256).await?.is_some() {
                return Ok((hashes, false));
            }
            file.sync_all().await?;
            drop(file);
            let target = self.sha256_path(&hashes.sha256);
            let parent = target.parent().unwrap_or(&self.dir).to_owned();
            tokio::fs::create_dir_all(&parent).await?;
            // The SHA-512 side file first, so that every visible object has one.
            write_small(&sidecar(&target), hex::encode(hashes.sha512).as_bytes()).await?;
            tokio::fs::rename(&tmp, &target).await?;
            let pointer = self.sha512_path(&hashes.sha512);
            if let Some(dir) = pointer.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            write_small(&pointer, hex::encode(hashes.sha256).as_bytes()).await?;
            sync_dir(&parent).await?;
            Ok((hashes, true))
        }
        .await;
        if !matches!(result, Ok((_, true))) {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

impl ContentStore for DirStore {
    fn open(&self, id: ContentId, select: Select) -> BoxFuture<'_, io::Result<Option<Opened>>> {
        Box::pin(async move {
            let Some((object, open)) = self.open_object(id).await? else { return Ok(None) };
            let Some(range) = select(&object) else { return Ok(Some(Opened { object, body: None })) };
            if range.end > object.length || range.start > range.end {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "range outside the object"));
            }
            let body = match range.end - range.start {
                // At most READ_CHUNK, so it fits in usize.
                small @ ..=READ_CHUNK_U64 => ContentBody::Bytes(read_at(open, range.start, small as usize).await?),
                _ => ContentBody::Stream(stream_range(open, range.clone())),
            };
            Ok(Some(Opened { object, body: Some((range, body)) }))
        })
    }

    fn hashes(&self, sha256: [u8; 32]) -> BoxFuture<'_, io::Result<Option<ContentHashes>>> {
        Box::pin(async move {
            let Some(object) = self.lookup_sha256(sha256).await? else { return Ok(None) };
            let text = tokio::fs::read_to_string(sidecar(&self.sha256_path(&sha256))).await?;
            let sha512 = match ContentId::from_hex(text.trim()) {
                Some(ContentId::Sha512(sha512)) => sha512,
                _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt SHA-512 side file")),
            };
            Ok(Some(ContentHashes { sha256, sha512, length: object.length }))
        })
    }

    fn put(
        &self,
        expected_sha256: [u8; 32],
        body: ByteStream,
        max_length: u64,
    ) -> BoxFuture<'_, Result<(ContentHashes, bool), PutError>> {
        Box::pin(self.put_stream(expected_sha256, body, max_length))
    }

    fn compute_pieces(
        &self,
        sha256: [u8; 32],
        piece_size: PieceSize,
    ) -> BoxFuture<'_, io::Result<Option<Result<PieceHashes, custody_catalog::Error>>>> {
        let store = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let Some((mut file, _)) = store.open_blocking(ContentId::Sha256(sha256))? else { return Ok(None) };
                let mut builder = PieceTreeBuilder::new(piece_size);
                let mut buffer = vec![0; 1 << 20];
                loop {
                    match file.read(&mut buffer)? {
                        0 => break,
                        n => builder.update(&buffer[..n]),
                    }
                }
                Ok(Some(builder.finish()))
            })
            .await
            .map_err(io::Error::other)?
        })
    }

    fn piece_layer(&self, sha256: [u8; 32]) -> BoxFuture<'_, io::Result<Option<Bytes>>> {
        let path = layer_path(&self.sha256_path(&sha256));
        Box::pin(async move {
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(err) => Err(err),
            }
        })
    }

    fn put_piece_layer(&self, sha256: [u8; 32], layer: Vec<u8>) -> BoxFuture<'_, io::Result<()>> {
        let object = self.sha256_path(&sha256);
        Box::pin(async move {
            write_small(&layer_path(&object), &layer).await?;
            sync_dir(object.parent().unwrap_or(&self.dir)).await
        })
    }
}

const READ_CHUNK_U64: u64 = READ_CHUNK as u64;

/// `length` bytes at `offset`: on this thread when that cannot wait for a disk (tmpfs, or data the page cache
/// holds), else on a blocking thread.
async fn read_at(open: OpenObject, offset: u64, length: usize) -> io::Result<Bytes> {
    let mut buffer = vec![0u8; length];
    let mut done = 0;
    while done < length {
        let at = offset + done as u64;
        let read = match open.in_memory {
            true => open.file.read_at(&mut buffer[done..], at),
            false => read_cached(&open.file, &mut buffer[done..], at),
        };
        match read {
            Ok(0) => return Err(short_object()),
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            // Not cached (EAGAIN), or a file system without RWF_NOWAIT: read it where waiting is allowed.
            Err(_) => break,
        }
    }
    if done < length {
        let file = open.file;
        buffer =
            tokio::task::spawn_blocking(move || match file.read_exact_at(&mut buffer[done..], offset + done as u64) {
                Ok(()) => Ok(buffer),
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Err(short_object()),
                Err(err) => Err(err),
            })
            .await
            .map_err(io::Error::other)??;
    }
    Ok(Bytes::from(buffer))
}

/// Reads at `offset` what the page cache holds (`preadv2` with `RWF_NOWAIT`), never waiting for the disk: the
/// number of bytes read (0 at the end of the file), or `WouldBlock` when the data is not cached.
fn read_cached(file: &std::fs::File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let iov = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
    // SAFETY: `iov` describes `buffer`, which is valid for writes of its length and borrowed mutably for the whole
    // call; the descriptor belongs to `file`, which is open for the whole call.
    let read = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    // A negative result is an error in errno; anything else is a byte count that fits in usize.
    usize::try_from(read).map_err(|_| io::Error::last_os_error())
}

/// Whether `file` is on tmpfs, where reads never wait for a disk.
fn on_tmpfs(file: &std::fs::File) -> bool {
    // SAFETY: `statfs` is plain data, for which all zeroes is a valid value; `fstatfs` only writes into it, and the
    // descriptor belongs to `file`, which is open for the whole call.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) };
    result == 0 && stat.f_type == libc::TMPFS_MAGIC
}

/// `range` of the object, in chunks of [`READ_CHUNK`] read as the stream is polled.
fn stream_range(open: OpenObject, range: Range<u64>) -> ByteStream {
    Box::pin(futures_util::stream::try_unfold((open, range), |(open, range)| async move {
        if range.start >= range.end {
            return Ok(None);
        }
        // At most READ_CHUNK, so it fits in usize.
        let length = (range.end - range.start).min(READ_CHUNK_U64) as usize;
        let bytes = read_at(open.clone(), range.start, length).await?;
        Ok(Some((bytes, (open, range.start + length as u64..range.end))))
    }))
}

fn short_object() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the stored object is shorter than its length")
}

fn layer_path(object: &Path) -> PathBuf {
    let mut name = object.as_os_str().to_owned();
    name.push(".pieces");
    PathBuf::from(name)
}

fn sidecar(object: &Path) -> PathBuf {
    let mut name = object.as_os_str().to_owned();
    name.push(".sha512");
    PathBuf::from(name)
}

fn digest_array<const N: usize>(digest: aws_lc_rs::digest::Digest) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Writes a small file atomically (temporary name, fsync, rename).
async fn write_small(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_file_name(format!(".{}.tmp", uuid::Uuid::new_v4()));
    let mut file = tokio::fs::File::create(&tmp).await?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&tmp, path).await
}

async fn sync_dir(dir: &Path) -> io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunks: Vec<&'static [u8]>) -> ByteStream {
        Box::pin(futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))))
    }

    fn sha256(data: &[u8]) -> [u8; 32] {
        digest_array(aws_lc_rs::digest::digest(&SHA256, data))
    }

    /// Opens `id` and reads `range` (clamped to the object), as the origin does.
    async fn read(store: &DirStore, id: ContentId, range: Range<u64>) -> Option<(StoredObject, Vec<u8>)> {
        let select: Select = Box::new(move |object| Some(range.start.min(object.length)..range.end.min(object.length)));
        let opened = store.open(id, select).await.unwrap()?;
        let (range, body) = opened.body.unwrap();
        let bytes = match body {
            ContentBody::Bytes(bytes) => {
                assert!(range.end - range.start <= READ_CHUNK as u64);
                bytes.to_vec()
            }
            ContentBody::Stream(mut stream) => {
                assert!(range.end - range.start > READ_CHUNK as u64, "small ranges are read at once");
                let mut out = Vec::new();
                while let Some(chunk) = stream.next().await {
                    out.extend_from_slice(&chunk.unwrap());
                }
                out
            }
        };
        assert_eq!(bytes.len() as u64, range.end - range.start);
        Some((opened.object, bytes))
    }

    #[tokio::test]
    async fn stores_reads_ranges_and_finds_by_either_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let data = b"hello, content store";
        let (hashes, created) = store.put(sha256(data), stream(vec![b"hello, ", b"content store"]), 100).await.unwrap();
        assert!(created);
        assert_eq!(hashes.length, data.len() as u64);
        let (_, again) = store.put(sha256(data), stream(vec![data]), 100).await.unwrap();
        assert!(!again, "a second upload of the same bytes is not new");

        let (by_512, bytes) = read(&store, ContentId::Sha512(hashes.sha512), 0..100).await.unwrap();
        assert_eq!(by_512, StoredObject { sha256: hashes.sha256, length: data.len() as u64 });
        assert_eq!(bytes, data);
        assert_eq!(store.hashes(hashes.sha256).await.unwrap(), Some(hashes));
        assert_eq!(read(&store, ContentId::Sha256(hashes.sha256), 7..14).await.unwrap().1, b"content");
        assert!(read(&store, ContentId::Sha256([0; 32]), 0..1).await.is_none());
        assert!(read(&store, ContentId::Sha512([0; 64]), 0..1).await.is_none());
        let head = store.open(ContentId::Sha256(hashes.sha256), Box::new(|_| None)).await.unwrap().unwrap();
        assert!(head.body.is_none(), "no range chosen, nothing read");
        let outside: Select = Box::new(|object| Some(0..object.length + 1));
        assert!(store.open(ContentId::Sha256(hashes.sha256), outside).await.is_err());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn reads_ranges_within_one_chunk_and_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let leaked: &'static [u8] = Box::leak(data.clone().into_boxed_slice());
        let (hashes, _) = store.put(sha256(&data), stream(vec![leaked]), 1 << 20).await.unwrap();
        let chunk = READ_CHUNK as u64;
        for range in [0..200_000, 70_000..150_000, 100..100 + chunk, 100..101 + chunk, 199_990..200_000, 5..5] {
            let (_, got) = read(&store, ContentId::Sha256(hashes.sha256), range.clone()).await.unwrap();
            assert_eq!(got, data[range.start as usize..range.end as usize], "range {range:?}");
        }
    }

    #[tokio::test]
    async fn refuses_wrong_hash_and_oversize_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let err = store.put([7; 32], stream(vec![b"abc"]), 100).await.unwrap_err();
        assert!(matches!(err, PutError::HashMismatch { .. }), "{err}");
        let err = store.put(sha256(b"abcdef"), stream(vec![b"abc", b"def"]), 5).await.unwrap_err();
        assert!(matches!(err, PutError::TooLarge { limit: 5 }), "{err}");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("sha256")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn reads_the_same_bytes_on_every_path() {
        // Inline from tmpfs, inline from the page cache (RWF_NOWAIT), and on a blocking thread (what RWF_NOWAIT
        // refuses: tmpfs has no RWF_NOWAIT, so `in_memory: false` there takes the fallback).
        let data: Vec<u8> = (0..150_000u32).map(|i| (i % 239) as u8).collect();
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if Path::new("/dev/shm").is_dir() {
            dirs.push(tempfile::tempdir_in("/dev/shm").unwrap());
        }
        for dir in &dirs {
            let path = dir.path().join("object");
            std::fs::write(&path, &data).unwrap();
            let file = Arc::new(std::fs::File::open(&path).unwrap());
            for in_memory in [true, false] {
                let open = OpenObject { file: file.clone(), length: data.len() as u64, in_memory };
                let bytes = read_at(open.clone(), 1000, 60_000).await.unwrap();
                assert_eq!(&bytes[..], &data[1000..61_000], "{} in_memory={in_memory}", dir.path().display());
                let mut stream = stream_range(open.clone(), 7..data.len() as u64);
                let mut streamed = Vec::new();
                while let Some(chunk) = stream.next().await {
                    streamed.extend_from_slice(&chunk.unwrap());
                }
                assert_eq!(streamed, &data[7..]);
                let err = read_at(open, data.len() as u64 - 10, 20).await.unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "a file shorter than its length");
            }
        }
    }

    #[tokio::test]
    async fn computes_and_keeps_piece_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let leaked: &'static [u8] = Box::leak(data.clone().into_boxed_slice());
        let (hashes, _) = store.put(sha256(&data), stream(vec![leaked]), 1 << 20).await.unwrap();
        let size = PieceSize::new(32 * 1024).unwrap();
        let computed = store.compute_pieces(hashes.sha256, size).await.unwrap().unwrap().unwrap();
        assert_eq!(computed, PieceHashes::compute(size, &data).unwrap());
        assert!(store.compute_pieces([1; 32], size).await.unwrap().is_none(), "not stored");
        assert_eq!(store.piece_layer(hashes.sha256).await.unwrap(), None);
        store.put_piece_layer(hashes.sha256, computed.to_layer_bytes()).await.unwrap();
        let layer = store.piece_layer(hashes.sha256).await.unwrap().unwrap();
        computed.tree().verify_layer_bytes(&layer).unwrap();
    }

    #[test]
    fn ids_are_lower_case_hex_of_the_right_length() {
        assert!(matches!(ContentId::from_hex(&"ab".repeat(32)), Some(ContentId::Sha256(_))));
        assert!(matches!(ContentId::from_hex(&"ab".repeat(64)), Some(ContentId::Sha512(_))));
        assert_eq!(ContentId::from_hex(&"AB".repeat(32)), None);
        assert_eq!(ContentId::from_hex("abc"), None);
    }
}
