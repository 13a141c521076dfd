//! The peer cache: the content this device offers to peers, complete or partial, in one directory.
//!
//! ```text
//! <cache>/<content>.json    piece layout and signed root of the content (length, piece size, root)
//! <cache>/<content>.layer   the piece layer, 32 bytes per piece (checked against the root whenever it is loaded)
//! <cache>/<content>.part    a download in progress: verified pieces at their offsets, holes elsewhere
//! <cache>/<content>.have    which pieces of the .part file were verified (bitfield in its wire form)
//! <cache>/<content>.data    complete content, whose whole-file hash matched the signed target
//! ```
//!
//! `<content>` is the content id, the target's SHA-256 in hex. A [`CacheEntry`] is shared by the download that fills
//! it and by every connection serving it: a piece written by the download is announced at once to the connections
//! (`Have`) and can be served from then on. A piece is read back and verified against the piece layer each time it
//! is served, so nothing unverified leaves the device even if the disk changed under it (a failing piece is then
//! forgotten). The `.have` sidecar is written after the `.part` file is synced, in batches; a resumed download does
//! not trust it either and verifies every piece it claims ([`CacheEntry::reverify`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use custody_catalog::Sha256Digest;
use custody_catalog::pieces::{PieceHashes, PieceLayout, PieceSize, PieceTree};
use custody_p2p::{Bitfield, ContentId, DeviceResources, PeerPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::Error;
use crate::session::Event;

/// The peer cache directory and the entries loaded from it. Shared (`Arc`) by the [`PeerNode`](crate::PeerNode) and
/// every [`PeerDownload`](crate::PeerDownload) of the agent.
#[derive(Debug)]
pub struct PeerCache {
    dir: PathBuf,
    entries: Mutex<HashMap<ContentId, Arc<CacheEntry>>>,
}

/// One content in the cache: its verified piece hashes, the file holding its pieces and which of them it holds.
#[derive(Debug)]
pub struct CacheEntry {
    content: ContentId,
    hashes: PieceHashes,
    /// The piece layer in its wire form, for `Layer` messages.
    layer: Bytes,
    piece_count: u32,
    dir: PathBuf,
    state: Mutex<EntryState>,
    /// Pieces newly verified and written, for the connections to announce.
    haves: broadcast::Sender<u32>,
    /// The events channel of the download filling this entry, if one runs: incoming connections join it.
    download: Mutex<Option<mpsc::Sender<Event>>>,
    /// Held while the sidecar is saved: saves run beside the writes, one at a time.
    saving: Mutex<()>,
    /// Held by the fetch filling the entry, until its whole-file check is done ([`CacheEntry::fill`]).
    filling: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct EntryState {
    file: Option<Arc<File>>,
    have: Bitfield,
    /// Pieces of `have` this process verified (before writing them, or when it read them back): served without
    /// hashing them again. The cache directory is the agent's alone (0700); a piece from an earlier run is verified
    /// once when it is first read.
    checked: Bitfield,
    complete: bool,
    /// Pieces written since the sidecar was last saved.
    unsaved: u32,
    /// When a piece was last written (for complete content: when it was completed). Cache age counts from here.
    updated: SystemTime,
}

/// What [`PeerCache::entries`] reports of each entry (for eviction and status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntryInfo {
    pub content: ContentId,
    /// The content's length.
    pub length: u64,
    /// Bytes of verified pieces held.
    pub held: u64,
    pub complete: bool,
    /// When it was completed, or last written to while partial: the cache age counts from here.
    pub updated: SystemTime,
}

/// The `.json` file of an entry.
#[derive(Serialize, Deserialize)]
struct EntryMeta {
    length: u64,
    piece_size: u64,
    root: String,
}

impl PeerCache {
    /// Opens (creating, mode 0700) the cache directory and loads its entries. An entry whose files are unreadable or
    /// whose layer does not match its root is removed, with a warning.
    pub fn open(dir: &Path) -> Result<Arc<Self>, Error> {
        std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        set_mode(dir, 0o700)?;
        let cache = Self { dir: dir.to_owned(), entries: Mutex::new(HashMap::new()) };
        let listing = std::fs::read_dir(dir).map_err(Error::io("list", dir))?;
        for item in listing {
            let path = item.map_err(Error::io("list", dir))?.path();
            let Some(content) = content_of(&path, "json") else { continue };
            match CacheEntry::load(dir, content) {
                Ok(entry) => {
                    lock(&cache.entries).insert(content, Arc::new(entry));
                }
                Err(err) => {
                    tracing::warn!(%content, error = %err, "removing an unusable peer cache entry");
                    CacheEntry::remove_files(dir, &content)?;
                }
            }
        }
        Ok(Arc::new(cache))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry of `content`, if the cache has one.
    pub fn get(&self, content: &ContentId) -> Option<Arc<CacheEntry>> {
        lock(&self.entries).get(content).cloned()
    }

    /// Every entry, for eviction and status.
    pub fn entries(&self) -> Vec<CacheEntryInfo> {
        let entries: Vec<Arc<CacheEntry>> = lock(&self.entries).values().cloned().collect();
        entries.iter().map(|entry| entry.info()).collect()
    }

    /// Applies the cache policy (Delivery Optimization's maximum age and size, [`PeerPolicy::cache_evictions`]):
    /// removes the entries it names, except content being downloaded right now, and returns what was removed.
    pub fn evict(
        &self,
        policy: &PeerPolicy,
        device: &DeviceResources,
        now: SystemTime,
    ) -> Result<Vec<ContentId>, Error> {
        let entries: Vec<custody_p2p::policy::CacheEntry> = self
            .entries()
            .into_iter()
            .map(|info| custody_p2p::policy::CacheEntry {
                content: info.content,
                size: info.held,
                completed: info.updated,
            })
            .collect();
        let mut removed = Vec::new();
        for content in policy.cache_evictions(&entries, device, now) {
            if self.get(&content).is_some_and(|entry| entry.download().is_some()) {
                continue;
            }
            self.remove(&content)?;
            removed.push(content);
        }
        Ok(removed)
    }

    /// Removes an entry and its files. Connections serving it keep their open file until they end; a download
    /// filling it fails at its next write.
    pub fn remove(&self, content: &ContentId) -> Result<(), Error> {
        if let Some(entry) = lock(&self.entries).remove(content) {
            let mut state = lock(&entry.state);
            state.file = None;
            state.have = Bitfield::new(entry.piece_count);
            state.checked = Bitfield::new(entry.piece_count);
            state.complete = false;
        }
        CacheEntry::remove_files(&self.dir, content)
    }

    /// The entry for a download of `content` with this signed piece tree, whose layer `hashes` was verified against
    /// it: the existing entry if it is for the same tree, else a new, empty one (replacing an entry of another
    /// tree).
    pub(crate) fn begin(&self, content: ContentId, hashes: PieceHashes) -> Result<Arc<CacheEntry>, Error> {
        let mut entries = lock(&self.entries);
        if let Some(existing) = entries.get(&content) {
            if existing.hashes.tree() == hashes.tree() {
                return Ok(existing.clone());
            }
            tracing::warn!(%content, "peer cache entry of another piece tree replaced");
        }
        CacheEntry::remove_files(&self.dir, &content)?;
        let entry = Arc::new(CacheEntry::create(&self.dir, content, hashes)?);
        entries.insert(content, entry.clone());
        Ok(entry)
    }
}

impl CacheEntry {
    /// The content id.
    pub fn content(&self) -> ContentId {
        self.content
    }

    /// The verified piece hashes.
    pub fn hashes(&self) -> &PieceHashes {
        &self.hashes
    }

    /// The signed layout and root.
    pub fn tree(&self) -> &PieceTree {
        self.hashes.tree()
    }

    /// The piece layer in its wire form.
    pub fn layer(&self) -> Bytes {
        self.layer.clone()
    }

    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }

    /// The pieces held, verified when they were written.
    pub fn have(&self) -> Bitfield {
        lock(&self.state).have.clone()
    }

    /// Whether the whole content is held and passed the whole-file check.
    pub fn is_complete(&self) -> bool {
        lock(&self.state).complete
    }

    /// The right to fill the entry, waited for: one fetch at a time (the agent's own download of an update and its
    /// cache server's fetch of the same content for the group). The holder keeps it until its whole-file check is
    /// done; the next one then finds the pieces verified (and the file complete) and fetches only what is missing.
    pub(crate) async fn fill(&self) -> tokio::sync::OwnedMutexGuard<()> {
        match self.filling.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                tracing::info!(content = %self.content, "another fetch of this content is filling the cache; waiting for it");
                self.filling.clone().lock_owned().await
            }
        }
    }

    /// Announcements of pieces written from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<u32> {
        self.haves.subscribe()
    }

    /// Reads piece `piece`, verified against the piece layer unless this process verified it already: `None` when
    /// the entry does not hold it (any more). A piece that fails verification is forgotten. Blocking: call it from a
    /// blocking task.
    pub(crate) fn read_piece(&self, piece: u32) -> Result<Option<Bytes>, Error> {
        let (file, checked) = {
            let state = lock(&self.state);
            if !state.have.get(piece) {
                return Ok(None);
            }
            match &state.file {
                Some(file) => (file.clone(), state.checked.get(piece)),
                None => return Ok(None),
            }
        };
        let range = self.range(piece)?;
        let mut data = vec![0u8; (range.end - range.start) as usize];
        let path = self.file_path();
        file.read_exact_at(&mut data, range.start).map_err(Error::io("read", &path))?;
        if checked {
            return Ok(Some(Bytes::from(data)));
        }
        if self.hashes.verify_piece(u64::from(piece), &data).is_err() {
            tracing::warn!(content = %self.content, piece, "a cached piece no longer verifies; forgotten");
            let mut state = lock(&self.state);
            // Invariant: `piece` was checked against the piece count by `have.get` above.
            let _ = state.have.clear(piece);
            state.complete = false;
            state.unsaved += 1;
            return Ok(None);
        }
        // Invariant: `piece` was checked against the piece count by `have.get` above.
        let _ = lock(&self.state).checked.set(piece);
        Ok(Some(Bytes::from(data)))
    }

    /// Writes a piece that verified against the piece layer at its offset, marks it held and announces it.
    /// Blocking.
    pub(crate) fn write_piece(&self, piece: u32, data: &[u8]) -> Result<(), Error> {
        let range = self.range(piece)?;
        let file = self.open_part()?;
        let path = self.part_path();
        file.write_all_at(data, range.start).map_err(Error::io("write", &path))?;
        {
            let mut state = lock(&self.state);
            // Invariant: `range` checked `piece` against the piece count.
            let _ = state.have.set(piece);
            let _ = state.checked.set(piece);
            state.unsaved += 1;
            state.updated = SystemTime::now();
        }
        // Nobody listening is fine: no connection serves this content right now.
        let _ = self.haves.send(piece);
        Ok(())
    }

    /// Syncs the `.part` file and then writes the `.have` sidecar, if pieces were written since the last time.
    /// Blocking.
    pub(crate) fn save(&self) -> Result<(), Error> {
        let _saving = lock(&self.saving);
        let (file, have) = {
            let state = lock(&self.state);
            if state.unsaved == 0 || state.complete {
                return Ok(());
            }
            (state.file.clone(), state.have.clone())
        };
        if let Some(file) = file {
            file.sync_data().map_err(Error::io("sync", self.part_path()))?;
        }
        write_atomic(&self.have_path(), have.as_bytes())?;
        let mut state = lock(&self.state);
        state.unsaved = 0;
        Ok(())
    }

    /// Pieces written since the sidecar was last saved.
    pub(crate) fn unsaved(&self) -> u32 {
        lock(&self.state).unsaved
    }

    /// Verifies every piece the entry claims (the sidecar of an earlier run) and keeps only those that verify.
    /// Returns the pieces held afterwards. Blocking.
    pub(crate) fn reverify(&self) -> Result<Bitfield, Error> {
        let claimed = self.have();
        let complete = self.is_complete();
        for piece in claimed.iter_set() {
            // `read_piece` forgets a piece that does not verify.
            self.read_piece(piece)?;
        }
        let have = self.have();
        if have.count() != claimed.count() {
            tracing::warn!(
                content = %self.content,
                claimed = claimed.count(),
                verified = have.count(),
                "pieces of an earlier download did not verify; fetching them again"
            );
            if complete {
                // A complete file that lost pieces goes back to being a partial one.
                let data = self.complete_path();
                std::fs::rename(&data, self.part_path()).map_err(Error::io("rename", &data))?;
            }
        }
        let mut state = lock(&self.state);
        state.unsaved += 1;
        Ok(state.have.clone())
    }

    /// The `.part` file of a download in progress.
    pub(crate) fn part_path(&self) -> PathBuf {
        self.dir.join(format!("{}.part", self.content))
    }

    /// After the whole-file check passed on the `.part` file: it becomes the complete `.data` file.
    pub(crate) fn mark_complete(&self) -> Result<(), Error> {
        if self.is_complete() {
            return Ok(());
        }
        let (part, data) = (self.part_path(), self.complete_path());
        std::fs::rename(&part, &data).map_err(Error::io("rename", &part))?;
        crate::sync_dir(&self.dir)?;
        let have = self.have_path();
        match std::fs::remove_file(&have) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(Error::io("remove", &have)(err)),
            _ => {}
        }
        let mut state = lock(&self.state);
        state.complete = true;
        state.unsaved = 0;
        state.updated = SystemTime::now();
        Ok(())
    }

    /// After a failed whole-file check (which removed the `.part` file): start over empty.
    pub(crate) fn reset(&self) -> Result<(), Error> {
        let mut state = lock(&self.state);
        state.file = None;
        state.have = Bitfield::new(self.piece_count);
        state.checked = Bitfield::new(self.piece_count);
        state.complete = false;
        state.unsaved = 0;
        drop(state);
        for path in [self.part_path(), self.have_path()] {
            match std::fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(Error::io("remove", &path)(err)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Registers the events channel of the download filling this entry, so that incoming connections join it;
    /// `None` when the download ends.
    pub(crate) fn set_download(&self, events: Option<mpsc::Sender<Event>>) {
        *lock(&self.download) = events;
    }

    /// The events channel of the running download, if any.
    pub(crate) fn download(&self) -> Option<mpsc::Sender<Event>> {
        lock(&self.download).clone().filter(|events| !events.is_closed())
    }

    fn info(&self) -> CacheEntryInfo {
        let state = lock(&self.state);
        let layout = self.tree().layout();
        let held = state
            .have
            .iter_set()
            .map(|piece| layout.piece_range(u64::from(piece)).map_or(0, |range| range.end - range.start))
            .sum();
        CacheEntryInfo {
            content: self.content,
            length: layout.length().get(),
            held,
            complete: state.complete,
            updated: state.updated,
        }
    }

    fn range(&self, piece: u32) -> Result<std::ops::Range<u64>, Error> {
        self.tree()
            .layout()
            .piece_range(u64::from(piece))
            .map_err(|err| Error::Cache { content: self.content, reason: err.to_string() })
    }

    /// The open `.part` file, created (sparse, at its full length) on the first write.
    fn open_part(&self) -> Result<Arc<File>, Error> {
        let mut state = lock(&self.state);
        if let Some(file) = &state.file {
            return Ok(file.clone());
        }
        let path = self.part_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(Error::io("create", &path))?;
        file.set_len(self.tree().layout().length().get()).map_err(Error::io("size", &path))?;
        let file = Arc::new(file);
        state.file = Some(file.clone());
        Ok(file)
    }

    /// The file holding the pieces: `.data` once complete, else `.part`.
    pub(crate) fn file_path(&self) -> PathBuf {
        match lock(&self.state).complete {
            true => self.complete_path(),
            false => self.part_path(),
        }
    }

    fn complete_path(&self) -> PathBuf {
        self.dir.join(format!("{}.data", self.content))
    }

    fn have_path(&self) -> PathBuf {
        self.dir.join(format!("{}.have", self.content))
    }

    /// A new entry: its metadata and layer are written, no piece is held yet.
    fn create(dir: &Path, content: ContentId, hashes: PieceHashes) -> Result<Self, Error> {
        let layout = hashes.tree().layout();
        let meta = EntryMeta {
            length: layout.length().get(),
            piece_size: u64::from(layout.piece_size().get()),
            root: hashes.root().to_string(),
        };
        let layer = Bytes::from(hashes.to_layer_bytes());
        write_atomic(&dir.join(format!("{content}.layer")), &layer)?;
        // Invariant: serialising a struct of integers and a string cannot fail.
        let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        write_atomic(&dir.join(format!("{content}.json")), &json)?;
        let piece_count = custody_p2p::wire::piece_count(layout)?;
        let state = EntryState {
            file: None,
            have: Bitfield::new(piece_count),
            checked: Bitfield::new(piece_count),
            complete: false,
            unsaved: 0,
            updated: SystemTime::now(),
        };
        Ok(Self::assemble(dir, content, hashes, layer, piece_count, state))
    }

    /// An entry from its files (see the module documentation).
    fn load(dir: &Path, content: ContentId) -> Result<Self, Error> {
        let bad = |reason: String| Error::Cache { content, reason };
        let meta_path = dir.join(format!("{content}.json"));
        let meta_bytes = std::fs::read(&meta_path).map_err(Error::io("read", &meta_path))?;
        let meta: EntryMeta = serde_json::from_slice(&meta_bytes).map_err(|err| bad(err.to_string()))?;
        let length = std::num::NonZeroU64::new(meta.length).ok_or_else(|| bad("length 0".into()))?;
        let piece_size = PieceSize::new(meta.piece_size).map_err(|err| bad(err.to_string()))?;
        let root: Sha256Digest = meta.root.parse().map_err(|err: custody_catalog::Error| bad(err.to_string()))?;
        let tree = PieceTree::new(PieceLayout::new(length, piece_size), root);
        let layer_path = dir.join(format!("{content}.layer"));
        let layer = std::fs::read(&layer_path).map_err(Error::io("read", &layer_path))?;
        let hashes = custody_p2p::layer::verify_layer(&tree, &layer)?;
        let piece_count = custody_p2p::wire::piece_count(tree.layout())?;
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let open = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(Error::io("open", path))
        };
        let data_path = dir.join(format!("{content}.data"));
        let part_path = dir.join(format!("{content}.part"));
        let state = if data_path.exists() {
            let file = open(&data_path)?;
            let found = file.metadata().map_err(Error::io("stat", &data_path))?.len();
            if found != meta.length {
                return Err(bad(format!("{} has {found} bytes, expected {}", data_path.display(), meta.length)));
            }
            EntryState {
                file: Some(Arc::new(file)),
                have: Bitfield::full(piece_count),
                checked: Bitfield::new(piece_count),
                complete: true,
                unsaved: 0,
                updated: modified(&data_path).unwrap_or_else(SystemTime::now),
            }
        } else if part_path.exists() {
            let file = open(&part_path)?;
            let have_path = dir.join(format!("{content}.have"));
            let have = match std::fs::read(&have_path) {
                Ok(bytes) => Bitfield::from_bytes(piece_count, &bytes).unwrap_or_else(|err| {
                    tracing::warn!(%content, error = %err, "unusable .have sidecar; starting from no piece");
                    Bitfield::new(piece_count)
                }),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Bitfield::new(piece_count),
                Err(err) => return Err(Error::io("read", &have_path)(err)),
            };
            let updated = modified(&part_path).unwrap_or_else(SystemTime::now);
            let checked = Bitfield::new(piece_count);
            EntryState { file: Some(Arc::new(file)), have, checked, complete: false, unsaved: 0, updated }
        } else {
            let updated = modified(&meta_path).unwrap_or_else(SystemTime::now);
            let (have, checked) = (Bitfield::new(piece_count), Bitfield::new(piece_count));
            EntryState { file: None, have, checked, complete: false, unsaved: 0, updated }
        };
        Ok(Self::assemble(dir, content, hashes, Bytes::from(layer), piece_count, state))
    }

    fn assemble(
        dir: &Path,
        content: ContentId,
        hashes: PieceHashes,
        layer: Bytes,
        piece_count: u32,
        state: EntryState,
    ) -> Self {
        let (haves, _) = broadcast::channel(1024);
        Self {
            content,
            hashes,
            layer,
            piece_count,
            dir: dir.to_owned(),
            state: Mutex::new(state),
            haves,
            download: Mutex::new(None),
            saving: Mutex::new(()),
            filling: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn remove_files(dir: &Path, content: &ContentId) -> Result<(), Error> {
        for extension in ["json", "layer", "part", "have", "data"] {
            let path = dir.join(format!("{content}.{extension}"));
            match std::fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(Error::io("remove", &path)(err)),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The content id of a cache file name `<64 hex>.<extension>`.
fn content_of(path: &Path, extension: &str) -> Option<ContentId> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(extension)?.strip_suffix('.')?.parse().ok()
}

/// Locks a mutex; a panic elsewhere while holding it leaves plain data that is still consistent enough to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(Error::io("chmod", path))
}

/// Replaces `path` with `bytes`: a temporary file, synced, renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(Error::io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECE: u64 = 16 * 1024;

    fn content(len: usize) -> (Vec<u8>, ContentId, PieceHashes) {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let hashes = PieceHashes::compute(PieceSize::new(PIECE).unwrap(), &data).unwrap();
        (data.clone(), ContentId::from(Sha256Digest::of(&data)), hashes)
    }

    fn piece(data: &[u8], index: usize) -> &[u8] {
        let start = index * PIECE as usize;
        &data[start..(start + PIECE as usize).min(data.len())]
    }

    #[test]
    fn written_pieces_are_served_verified_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (data, id, hashes) = content(5 * PIECE as usize + 100);
        let cache = PeerCache::open(dir.path()).unwrap();
        let entry = cache.begin(id, hashes.clone()).unwrap();
        let mut announced = entry.subscribe();
        entry.write_piece(0, piece(&data, 0)).unwrap();
        entry.write_piece(5, piece(&data, 5)).unwrap();
        assert_eq!((announced.try_recv().unwrap(), announced.try_recv().unwrap()), (0, 5));
        assert_eq!(entry.read_piece(0).unwrap().unwrap(), piece(&data, 0));
        assert_eq!(entry.read_piece(5).unwrap().unwrap(), piece(&data, 5));
        assert_eq!(entry.read_piece(1).unwrap(), None, "a piece not held is not served");
        entry.save().unwrap();
        entry.write_piece(3, piece(&data, 3)).unwrap();
        // Piece 3 is written but not saved: a restart does not know it.
        drop((entry, cache));

        let cache = PeerCache::open(dir.path()).unwrap();
        let entry = cache.get(&id).unwrap();
        assert_eq!(entry.have().iter_set().collect::<Vec<_>>(), vec![0, 5]);
        assert_eq!(entry.layer().as_ref(), hashes.to_layer_bytes().as_slice());
        let info = &cache.entries()[0];
        assert_eq!((info.length, info.held, info.complete), (data.len() as u64, PIECE + 100, false));

        // A piece damaged on disk is never served, and a resume drops it.
        let part = dir.path().join(format!("{id}.part"));
        let mut bytes = std::fs::read(&part).unwrap();
        bytes[5 * PIECE as usize + 7] ^= 1;
        std::fs::write(&part, bytes).unwrap();
        assert_eq!(entry.reverify().unwrap().iter_set().collect::<Vec<_>>(), vec![0]);
        assert_eq!(entry.read_piece(5).unwrap(), None);
    }

    #[test]
    fn complete_content_and_replaced_or_broken_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (data, id, hashes) = content(3 * PIECE as usize);
        let cache = PeerCache::open(dir.path()).unwrap();
        let entry = cache.begin(id, hashes.clone()).unwrap();
        for index in 0..3 {
            entry.write_piece(index, piece(&data, index as usize)).unwrap();
        }
        entry.save().unwrap();
        entry.mark_complete().unwrap();
        assert!(entry.is_complete());
        assert_eq!(std::fs::read(dir.path().join(format!("{id}.data"))).unwrap(), data);
        assert!(!dir.path().join(format!("{id}.have")).exists());
        assert_eq!(entry.read_piece(2).unwrap().unwrap(), piece(&data, 2));
        drop(cache);
        let cache = PeerCache::open(dir.path()).unwrap();
        assert!(cache.get(&id).unwrap().is_complete());

        // The same content id with another piece tree (another piece size): a fresh, empty entry.
        let other = PieceHashes::compute(PieceSize::new(2 * PIECE).unwrap(), &data).unwrap();
        let replaced = cache.begin(id, other).unwrap();
        assert_eq!(replaced.have().count(), 0);
        assert!(!dir.path().join(format!("{id}.data")).exists());

        // A layer that does not match its root: the entry is removed when the cache is opened.
        std::fs::write(dir.path().join(format!("{id}.layer")), vec![0u8; 32]).unwrap();
        drop(cache);
        let cache = PeerCache::open(dir.path()).unwrap();
        assert!(cache.get(&id).is_none());
        assert!(!dir.path().join(format!("{id}.json")).exists());
    }

    #[test]
    fn eviction_follows_the_policy_and_spares_running_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PeerCache::open(dir.path()).unwrap();
        let (old_data, old, old_hashes) = content(2 * PIECE as usize);
        let (_, busy, busy_hashes) = content(2 * PIECE as usize + 1);
        let old_entry = cache.begin(old, old_hashes).unwrap();
        old_entry.write_piece(0, piece(&old_data, 0)).unwrap();
        let busy_entry = cache.begin(busy, busy_hashes).unwrap();
        let (events, _receiver) = mpsc::channel(1);
        busy_entry.set_download(Some(events));
        let policy = PeerPolicy { max_cache_age: std::time::Duration::from_secs(60), ..PeerPolicy::default() };
        let device = DeviceResources { free_disk: 1 << 40, ..DeviceResources::default() };
        let later = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert_eq!(cache.evict(&policy, &device, SystemTime::now()).unwrap(), vec![]);
        assert_eq!(cache.evict(&policy, &device, later).unwrap(), vec![old]);
        assert!(cache.get(&old).is_none() && !dir.path().join(format!("{old}.part")).exists());
        assert!(cache.get(&busy).is_some());
    }
}
