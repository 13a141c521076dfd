//! The content store: update payloads by hash, behind [`ContentStore`] so that an object store can replace the
//! directory later. [`DirStore`] keeps them in a directory:
//!
//! ```text
//! <dir>/sha256/<first 2 hex>/<sha256 hex>          the bytes
//! <dir>/sha256/<first 2 hex>/<sha256 hex>.sha512   the SHA-512 of the bytes, hex (written before the bytes appear)
//! <dir>/sha512/<first 2 hex>/<sha512 hex>          the SHA-256 hex of the same bytes (a pointer)
//! <dir>/tmp/                                       uploads in progress
//! ```
//!
//! Objects never change once stored: a name is the hash of its bytes, and an upload goes to `tmp/` first and is
//! renamed into place only after its hashes were checked.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use aws_lc_rs::digest::{Context, SHA256, SHA512};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    /// The object named `id`, if stored.
    fn lookup(&self, id: ContentId) -> BoxFuture<'_, io::Result<Option<StoredObject>>>;

    /// The bytes `range` (within the object's length) of the object with this SHA-256, as a stream.
    fn read(&self, sha256: [u8; 32], range: Range<u64>) -> BoxFuture<'_, io::Result<ByteStream>>;

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
}

/// [`ContentStore`] in a local directory (layout in the module documentation).
#[derive(Clone, Debug)]
pub struct DirStore {
    dir: PathBuf,
}

/// Chunk size of streamed reads.
const READ_CHUNK: usize = 64 * 1024;

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
        Ok(Self { dir: dir.to_owned() })
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
    fn lookup(&self, id: ContentId) -> BoxFuture<'_, io::Result<Option<StoredObject>>> {
        Box::pin(async move {
            match id {
                ContentId::Sha256(sha256) => self.lookup_sha256(sha256).await,
                ContentId::Sha512(sha512) => {
                    let pointer = match tokio::fs::read_to_string(self.sha512_path(&sha512)).await {
                        Ok(text) => text,
                        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
                        Err(err) => return Err(err),
                    };
                    match ContentId::from_hex(pointer.trim()) {
                        Some(ContentId::Sha256(sha256)) => self.lookup_sha256(sha256).await,
                        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt SHA-512 pointer file")),
                    }
                }
            }
        })
    }

    fn read(&self, sha256: [u8; 32], range: Range<u64>) -> BoxFuture<'_, io::Result<ByteStream>> {
        /// What one trip to the blocking pool brought back.
        enum Opened {
            /// The whole range: it fits in one chunk.
            Whole(Bytes),
            /// The file, positioned at the start of the range, to be streamed.
            Positioned(std::fs::File),
        }
        let path = self.sha256_path(&sha256);
        Box::pin(async move {
            // Every tokio::fs call is a hand-off to the blocking pool and back; for small objects those hand-offs
            // were most of a response's cost (bench: crates/server/benches/service.rs). So open, seek and, when the
            // range fits in one chunk, read happen in a single blocking task.
            let length = range.end.saturating_sub(range.start);
            let opened = tokio::task::spawn_blocking(move || -> io::Result<Opened> {
                use std::io::{Read, Seek};
                let mut file = std::fs::File::open(&path)?;
                if range.start > 0 {
                    file.seek(io::SeekFrom::Start(range.start))?;
                }
                if length > READ_CHUNK as u64 {
                    return Ok(Opened::Positioned(file));
                }
                // `length` fits in usize: it is at most READ_CHUNK.
                let mut bytes = vec![0; length as usize];
                file.read_exact(&mut bytes)?;
                Ok(Opened::Whole(Bytes::from(bytes)))
            })
            .await
            .map_err(io::Error::other)??;
            let stream: ByteStream = match opened {
                Opened::Whole(bytes) => Box::pin(futures_util::stream::once(std::future::ready(Ok(bytes)))),
                Opened::Positioned(file) => {
                    let reader = tokio::fs::File::from_std(file).take(length);
                    Box::pin(tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK))
                }
            };
            Ok(stream)
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

    async fn collect(mut stream: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
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

        let by_512 = store.lookup(ContentId::Sha512(hashes.sha512)).await.unwrap().unwrap();
        assert_eq!(by_512, StoredObject { sha256: hashes.sha256, length: data.len() as u64 });
        assert_eq!(store.hashes(hashes.sha256).await.unwrap(), Some(hashes));
        assert_eq!(collect(store.read(hashes.sha256, 7..14).await.unwrap()).await, b"content");
        assert_eq!(store.lookup(ContentId::Sha256([0; 32])).await.unwrap(), None);
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
            let got = collect(store.read(hashes.sha256, range.clone()).await.unwrap()).await;
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

    #[test]
    fn ids_are_lower_case_hex_of_the_right_length() {
        assert!(matches!(ContentId::from_hex(&"ab".repeat(32)), Some(ContentId::Sha256(_))));
        assert!(matches!(ContentId::from_hex(&"ab".repeat(64)), Some(ContentId::Sha512(_))));
        assert_eq!(ContentId::from_hex(&"AB".repeat(32)), None);
        assert_eq!(ContentId::from_hex("abc"), None);
    }
}
