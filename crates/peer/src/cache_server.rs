//! The cache-server role (Delivery Optimization's Connected Cache): a device configured as its group's cache server
//! serves content it does not hold yet. When a device's handshake names a content id the cache lacks, the
//! [`CacheServer`] asks its [`ContentResolver`] (the agent's TUF client and signed catalog) for the **signed** target
//! with that SHA-256, fetches the piece layer (checked against the signed root) and then the pieces over HTTP from
//! its configured sources, each verified before it is written, and the connections serve the pieces as they arrive
//! (`Have`). Devices asking for the same content at once share one fetch. The finished file is checked whole against
//! the signed length and every signed hash by custody-install ([`VerifiedFile`], kept in a [`CachedContent`]); a
//! file that fails is discarded.
//!
//! The peer supplies nothing but the content id: the hashes it is served against, the layout and the sources all come
//! from signed metadata the cache server verified itself. Content the resolver cannot name as a signed target is
//! refused (`Goodbye(UnknownContent)`, and a warning naming the device and the content).
//!
//! Content fetched this way is kept for caching only: it is not installed and not checked against this device's
//! inventory (the fetch knows no device), so it never becomes a `VerifiedArtifact`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use custody_catalog::UpdateEntry;
use custody_catalog::pieces::PieceTree;
use custody_install::VerifiedFile;
use custody_p2p::{ContentId, DeviceResources, DownloadMode, GoodbyeReason};
use custody_tls::PeerIdentity;
use custody_tuf::TrustedTarget;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cache::CacheEntry;
use crate::download::Fetcher;
use crate::{Error, PeerContext, PeerDownloadConfig};

/// The future of [`ContentResolver::resolve`].
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = Result<CacheJob, String>> + Send + 'a>>;

/// Names the signed target behind a content id, for the cache server. Implemented by the agent over its TUF client
/// and signed catalog; it never takes anything from the asking peer but the content id.
pub trait ContentResolver: Send + Sync {
    /// The signed target whose SHA-256 is `content` (with its catalog entry, checked against the target, and where
    /// to fetch it), or why there is none the cache server may fetch (not a signed target of the products it
    /// caches, metadata unreachable).
    fn resolve(&self, content: ContentId) -> ResolveFuture<'_>;
}

/// What the cache server fetches for its group: a signed target and its catalog entry (whose piece tree the pieces
/// are checked against), and the HTTP sources.
#[derive(Clone, Debug)]
pub struct CacheJob {
    pub target: TrustedTarget,
    pub entry: UpdateEntry,
    /// Full URLs of the content, fetched piece by piece with `Range` requests (CDN bases, then the origin).
    pub content_urls: Vec<String>,
    /// Full URLs of the piece layer (`<origin>/pieces/sha256/<content>`), tried in order.
    pub layer_urls: Vec<String>,
}

/// The cache-server side of a [`PeerNode`](crate::PeerNode) (module documentation). Give it to the node in
/// [`PeerNodeConfig::cache_server`](crate::PeerNodeConfig).
pub struct CacheServer {
    resolver: Arc<dyn ContentResolver>,
    context: PeerContext,
    config: PeerDownloadConfig,
    /// Fetches in progress, and the state the connections waiting for them watch.
    fills: Mutex<HashMap<ContentId, watch::Receiver<Fill>>>,
    started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    from_http: AtomicU64,
}

/// What the cache server did since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheServerStats {
    /// Contents fetched on demand for the group: started, finished (and verified whole), failed or discarded.
    pub fetches_started: u64,
    pub fetches_completed: u64,
    pub fetches_failed: u64,
    /// Connections refused: content that is not a signed target the cache server fetches, or cannot fetch now.
    pub refused: u64,
    /// Bytes of verified pieces fetched over HTTP for the group.
    pub bytes_from_http: u64,
    /// Bytes of pieces sent to peers (everything the node served, content fetched on demand or not).
    pub bytes_served: u64,
}

/// Content fetched for the group, verified whole by custody-install against the signed length and every signed hash
/// ([`VerifiedFile`]) and kept as the peer cache's complete content: it may be served, never installed (it went
/// through no intention check for this device, which is what a `VerifiedArtifact` stands for). Made only by the
/// cache server's whole-file check.
#[derive(Debug)]
pub struct CachedContent {
    content: ContentId,
    /// The complete file in the peer cache (the file was verified under its partial name, then renamed).
    path: PathBuf,
    verified: VerifiedFile,
}

/// Why a connection for content the cache lacks is refused.
#[derive(Clone, Debug)]
pub(crate) struct Refused {
    pub reason: GoodbyeReason,
    pub why: String,
}

/// The state of one fetch, watched by the connections waiting for it.
#[derive(Clone, Debug)]
enum Fill {
    /// Resolving the content and getting its piece layer.
    Starting,
    /// The entry exists: connections serve its pieces as they arrive.
    Serving(Arc<CacheEntry>),
    Refused(Refused),
}

impl CacheServer {
    /// A cache server filling `context.cache` over HTTP from the sources `resolver` names. The downloads it runs
    /// take `config`'s policy, rate limits and timeouts; they are HTTP only (the group's devices connect to the
    /// cache server, not the other way round), whatever `config.mode` and `context.tls` say.
    pub fn new(resolver: Arc<dyn ContentResolver>, context: PeerContext, config: PeerDownloadConfig) -> Arc<Self> {
        let context = PeerContext { tls: None, ..context };
        let config = PeerDownloadConfig { mode: DownloadMode::HttpOnly, ..config };
        Arc::new(Self {
            resolver,
            context,
            config,
            fills: Mutex::new(HashMap::new()),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            from_http: AtomicU64::new(0),
        })
    }

    pub fn stats(&self) -> CacheServerStats {
        CacheServerStats {
            fetches_started: self.started.load(Ordering::Relaxed),
            fetches_completed: self.completed.load(Ordering::Relaxed),
            fetches_failed: self.failed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            bytes_from_http: self.from_http.load(Ordering::Relaxed),
            bytes_served: self.context.gate.uploaded(),
        }
    }

    /// Contents being fetched now.
    pub fn fetching(&self) -> Vec<ContentId> {
        lock(&self.fills).keys().copied().collect()
    }

    /// Applies the cache policy ([`PeerCache::evict`](crate::PeerCache::evict)) sparing, besides running
    /// downloads, the content being fetched for the group.
    pub fn evict(&self, resources: &DeviceResources, now: SystemTime) -> Result<Vec<ContentId>, Error> {
        let busy: HashSet<ContentId> = lock(&self.fills).keys().copied().collect();
        let cache = &self.context.cache;
        let entries: Vec<custody_p2p::CacheEntry> = cache
            .entries()
            .into_iter()
            .map(|info| custody_p2p::CacheEntry { content: info.content, size: info.held, completed: info.updated })
            .collect();
        let mut removed = Vec::new();
        for content in self.config.policy.cache_evictions(&entries, resources, now) {
            if busy.contains(&content) || cache.get(&content).is_some_and(|entry| entry.download().is_some()) {
                continue;
            }
            cache.remove(&content)?;
            removed.push(content);
        }
        Ok(removed)
    }

    /// The entry to serve `content` from, for a connection of `peer` whose handshake named it: the cache's when it
    /// is complete or a download fills it, else that of the fetch for the group (joined, or started now). Returns
    /// once the fetch has its verified piece layer, or refuses.
    pub(crate) async fn open(
        self: &Arc<Self>,
        content: ContentId,
        peer: &PeerIdentity,
    ) -> Result<Arc<CacheEntry>, Refused> {
        if let Some(entry) = self.context.cache.get(&content)
            && (entry.is_complete() || entry.download().is_some())
        {
            return Ok(entry);
        }
        let mut state = {
            let mut fills = lock(&self.fills);
            match fills.get(&content) {
                Some(state) => state.clone(),
                None => {
                    let (sender, state) = watch::channel(Fill::Starting);
                    fills.insert(content, state.clone());
                    tokio::spawn(self.clone().fill(content, sender));
                    state
                }
            }
        };
        let result = match state.wait_for(|fill| !matches!(fill, Fill::Starting)).await {
            Ok(fill) => match &*fill {
                Fill::Serving(entry) => Ok(entry.clone()),
                Fill::Refused(refused) => Err(refused.clone()),
                // `wait_for` returns only a state other than `Starting`.
                Fill::Starting => Err(Refused { reason: GoodbyeReason::Busy, why: "the fetch did not start".into() }),
            },
            Err(_) => Err(Refused { reason: GoodbyeReason::Busy, why: "the fetch ended before it started".into() }),
        };
        if let Err(refused) = &result {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %peer, %content, reason = %refused.reason, why = %refused.why,
                "cache server: connection refused");
        }
        result
    }

    /// One fetch for the group, from resolution to the whole-file check; its state goes to `state`.
    async fn fill(self: Arc<Self>, content: ContentId, state: watch::Sender<Fill>) {
        let result = match self.prepare(content).await {
            Ok((job, tree)) => {
                self.started.fetch_add(1, Ordering::Relaxed);
                self.fetch(content, job, tree, &state).await
            }
            Err(refused) => {
                // Refused before any fetch: `open` counts and logs the refusal of each connection.
                lock(&self.fills).remove(&content);
                state.send_replace(Fill::Refused(refused));
                return;
            }
        };
        lock(&self.fills).remove(&content);
        match result {
            Ok(cached) => {
                self.completed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%content, target = %cached.target(), length = cached.length(),
                    "cache server: content fetched for the group and verified whole");
                let resources = self.context.gate.resources();
                if let Err(err) = self.evict(&resources, SystemTime::now()) {
                    tracing::warn!(error = %err, "peer cache eviction");
                }
            }
            Err(refused) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%content, why = %refused.why, "cache server: fetch for the group failed");
                state.send_replace(Fill::Refused(refused));
            }
        }
    }

    /// What the fetch of `content` needs: the signed target the resolver names, checked to be this content with a
    /// piece tree, small enough for the cache.
    async fn prepare(&self, content: ContentId) -> Result<(CacheJob, PieceTree), Refused> {
        let refuse = |reason: GoodbyeReason| move |why: String| Refused { reason, why };
        let job = self.resolver.resolve(content).await.map_err(refuse(GoodbyeReason::UnknownContent))?;
        let path = job.target.path().to_owned();
        let info = job.entry.content();
        if ContentId::from(info.sha256) != content {
            return Err(refuse(GoodbyeReason::UnknownContent)(format!("the resolver named {path}, another content")));
        }
        let Some(tree) = info.piece_tree() else {
            return Err(refuse(GoodbyeReason::UnknownContent)(format!(
                "{path} has no piece tree in its signed catalog entry: it is not served piece by piece"
            )));
        };
        let cache = &self.context.cache;
        let held: u64 = cache.entries().iter().filter(|entry| entry.content != content).map(|entry| entry.held).sum();
        let limit = self.config.policy.cache_limit(&self.context.gate.resources(), held);
        if info.length.get() > limit {
            return Err(refuse(GoodbyeReason::Busy)(format!(
                "{path} ({} bytes) is larger than the peer cache may hold ({limit} bytes)",
                info.length
            )));
        }
        Ok((job, tree))
    }

    /// The fetch itself: the piece layer (from the cache or the layer URLs, checked against the signed root), the
    /// entry announced to the waiting connections, every piece over HTTP, the whole-file check.
    async fn fetch(
        &self,
        content: ContentId,
        job: CacheJob,
        tree: PieceTree,
        state: &watch::Sender<Fill>,
    ) -> Result<CachedContent, Refused> {
        let refuse = |reason: GoodbyeReason| move |why: String| Refused { reason, why };
        let (cache, path, target) = (&self.context.cache, job.target.path().to_owned(), job.target.clone());
        let (context, config) = (self.context.clone(), self.config.clone());
        let mut fetcher = Fetcher::new(job.target, job.entry, job.content_urls, job.layer_urls, context, config);
        let failed = |err: Error| crate::error_chain(&err);
        let hashes = fetcher
            .layer(&tree, content, None, &[], &mut HashSet::new())
            .await
            .map_err(|err| refuse(GoodbyeReason::Busy)(failed(err)))?;
        let entry = cache.begin(content, hashes).map_err(|err| refuse(GoodbyeReason::Busy)(failed(err)))?;
        state.send_replace(Fill::Serving(entry.clone()));
        tracing::info!(%content, target = %path, "cache server: fetching for the group over HTTP");
        let fetched = fetcher.fetch_pieces(Vec::new()).await;
        let fetched = fetched.map_err(|err| refuse(GoodbyeReason::Busy)(failed(err)))?;
        self.from_http.fetch_add(fetched.stats.from_http, Ordering::Relaxed);
        // Held until the whole-file check and its outcome are done: the agent's own download of this content waits.
        let _fill = fetched.fill;
        let checked = tokio::task::spawn_blocking(move || CachedContent::check(&entry, &target)).await;
        match checked {
            Ok(Ok(cached)) => Ok(cached),
            Ok(Err(err)) => {
                // Every piece matched the signed root but not the whole file: nothing of it is kept or served.
                tracing::error!(%content, target = %path, error = %err, "cache server: fetched content refused");
                if let Err(err) = cache.remove(&content) {
                    tracing::warn!(%content, error = %err, "cannot remove refused content from the peer cache");
                }
                Err(refuse(GoodbyeReason::Busy)(failed(err)))
            }
            Err(err) => Err(refuse(GoodbyeReason::Busy)(format!("the whole-file check did not run: {err}"))),
        }
    }
}

impl fmt::Debug for CacheServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheServer").field("fetching", &self.fetching()).finish_non_exhaustive()
    }
}

impl CachedContent {
    /// The content id.
    pub fn content(&self) -> ContentId {
        self.content
    }

    /// The signed target's path.
    pub fn target(&self) -> &str {
        self.verified.target().path()
    }

    pub fn length(&self) -> u64 {
        self.verified.target().file().length
    }

    /// The complete file in the peer cache.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole-file check of content fetched for the group: the entry's file (synced first) must pass
    /// custody-install's [`VerifiedFile::from_file`] (the signed length and every signed hash; a file that fails
    /// is removed); then it becomes the cache's complete content. Blocking.
    fn check(entry: &CacheEntry, target: &TrustedTarget) -> Result<Self, Error> {
        entry.save()?;
        let verified = VerifiedFile::from_file(&entry.file_path(), target)?;
        if !entry.is_complete() {
            entry.mark_complete()?;
        }
        Ok(Self { content: entry.content(), path: entry.file_path(), verified })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
