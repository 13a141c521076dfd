//! The cache server's view of the signed catalog (`[p2p] cache_server`): which content ids it fetches for its group.
//!
//! A device of the group names content by its id alone (the target's SHA-256). The [`CatalogIndex`] maps ids to the
//! signed targets of the products the cache server serves (`[p2p] cache_products`, else `[agent] products`), listed
//! through its own TUF client: a refresh over pinned HTTPS, each product's targets, each catalog entry parsed and
//! checked against its signed target (custody.content agrees with the signed length and SHA-256) and kept when it has
//! a piece tree. Everything the cache server then checks pieces and files against comes from there; nothing comes
//! from the asking peer. The index is refreshed by the daemon (with the cache announcements), and when a device asks
//! for an id it lacks, at most once every [`MISS_REFRESH`]: content published after the last refresh is found.
//!
//! Its metadata directory is its own (`<state>/cache-metadata`, seeded with the agent's trusted root), so that it
//! never races the agent's scans over the same files.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use custody_catalog::{ProductName, UpdateEntry};
use custody_client::{FetchError, Fetcher, FileFetcher, HttpFetcher, Updater, UpdaterConfig};
use custody_p2p::ContentId;
use custody_peer::{CacheJob, ContentResolver, ResolveFuture};
use custody_tuf::TrustedTarget;
use jiff::Timestamp;
use tracing::{debug, info, warn};

use crate::Error;
use crate::config::AgentConfig;
use crate::state::StateDir;

/// The shortest time between two refreshes made because a device asked for content the index lacks.
pub const MISS_REFRESH: Duration = Duration::from_secs(30);

/// Content id → signed target, for the products the cache server serves (module documentation).
#[derive(Debug)]
pub struct CatalogIndex {
    source: MetadataSource,
    metadata_dir: PathBuf,
    metadata_url: String,
    snapshot_proofs: bool,
    products: Vec<ProductName>,
    /// Content base URLs (ending in `targets/`), in order.
    sources: Vec<String>,
    state: Mutex<IndexState>,
    /// Held by a refresh: one at a time.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
enum MetadataSource {
    Https(HttpFetcher),
    File(FileFetcher),
}

#[derive(Debug, Default)]
struct IndexState {
    targets: HashMap<ContentId, Indexed>,
    /// Whether target files are named by hash (consistent snapshots).
    consistent: bool,
    /// When the last refresh finished (successful or not).
    refreshed: Option<Instant>,
    refreshed_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
struct Indexed {
    target: TrustedTarget,
    entry: UpdateEntry,
}

impl CatalogIndex {
    /// An empty index over the agent's configuration (metadata URL, content sources, trusted root) for `products`;
    /// its metadata directory is created and seeded with the agent's trusted root. `pinned` serves HTTPS metadata.
    pub fn open(
        config: &AgentConfig,
        state: &StateDir,
        pinned: Option<reqwest::Client>,
        products: Vec<ProductName>,
    ) -> Result<Self, Error> {
        let metadata_url = config.metadata_url();
        let source = match (metadata_url.starts_with("file://"), pinned) {
            (true, _) => MetadataSource::File(FileFetcher),
            (false, Some(client)) => MetadataSource::Https(HttpFetcher::new(client, config.request_timeout())),
            (false, None) => {
                return Err(Error::Config {
                    path: config.path.clone(),
                    detail: "[tls] is required: metadata comes over pinned HTTPS".into(),
                });
            }
        };
        let metadata_dir = state.root().join("cache-metadata");
        std::fs::create_dir_all(&metadata_dir).map_err(Error::io("create", &metadata_dir))?;
        let root = metadata_dir.join("root.json");
        if !root.exists() {
            let trusted = state.metadata().join("root.json");
            let bytes = std::fs::read(&trusted).map_err(Error::io("read the trusted root", &trusted))?;
            crate::state::write_atomic(&root, &bytes)?;
        }
        Ok(Self {
            source,
            metadata_dir,
            metadata_url,
            snapshot_proofs: config.agent.snapshot_proofs,
            products,
            sources: config.content_sources(),
            state: Mutex::new(IndexState::default()),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// The products served.
    pub fn products(&self) -> &[ProductName] {
        &self.products
    }

    /// Content ids indexed now.
    pub fn contents(&self) -> Vec<ContentId> {
        self.lock().targets.keys().copied().collect()
    }

    /// When the index was last refreshed.
    pub fn refreshed_at(&self) -> Option<Timestamp> {
        self.lock().refreshed_at
    }

    /// Refreshes the signed metadata and lists the targets of the products again; returns how many contents are
    /// indexed. On failure the index keeps what it had.
    pub async fn refresh(&self) -> Result<usize, Error> {
        let _one = self.refreshing.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<usize, Error> {
        let listed = match &self.source {
            MetadataSource::Https(fetcher) => self.list(fetcher.clone()).await,
            MetadataSource::File(fetcher) => self.list(*fetcher).await,
        };
        let mut state = self.lock();
        state.refreshed = Some(Instant::now());
        state.refreshed_at = Some(Timestamp::now());
        let (targets, consistent) = listed?;
        state.targets = targets;
        state.consistent = consistent;
        Ok(state.targets.len())
    }

    /// Refreshes unless a refresh finished less than [`MISS_REFRESH`] ago (waiting for one that runs).
    async fn refresh_if_stale(&self) -> Result<(), Error> {
        let _one = self.refreshing.lock().await;
        if self.lock().refreshed.is_some_and(|at| at.elapsed() < MISS_REFRESH) {
            return Ok(());
        }
        self.refresh_locked().await.map(drop)
    }

    async fn list<F: Fetcher>(&self, fetcher: F) -> Result<(HashMap<ContentId, Indexed>, bool), Error> {
        let config = UpdaterConfig {
            metadata_dir: self.metadata_dir.clone(),
            metadata_url: self.metadata_url.clone(),
            limits: Default::default(),
            snapshot_proofs: self.snapshot_proofs,
        };
        let mut updater = Updater::new(config, fetcher, Timestamp::now())?;
        updater.refresh().await?;
        let mut targets = HashMap::new();
        for product in &self.products {
            let listed = match updater.list_targets(product.as_str()).await {
                Ok(listed) => listed,
                Err(custody_client::Error::Metadata(custody_tuf::Error::NotInSnapshot(role))) => {
                    debug!(product = %product, role, "cache index: no role for this product in the repository");
                    continue;
                }
                Err(custody_client::Error::Fetch(FetchError::Status { status: 404, .. })) => continue,
                Err(e) => return Err(e.into()),
            };
            for target in listed {
                match crate::evaluate::parse_entry(&target) {
                    Ok(Some(entry)) if entry.content().pieces.is_some() => {
                        targets.insert(ContentId::from(entry.content().sha256), Indexed { target, entry });
                    }
                    Ok(_) => {}
                    Err(problem) => warn!(path = target.path(), "cache index: refused catalog entry: {problem}"),
                }
            }
        }
        info!(products = self.products.len(), contents = targets.len(), "cache index refreshed");
        Ok((targets, updater.trusted().root().consistent_snapshot()))
    }

    /// The job for `content`, if indexed.
    fn job(&self, content: &ContentId) -> Option<CacheJob> {
        let state = self.lock();
        let Indexed { target, entry } = state.targets.get(content)?.clone();
        let name = crate::download::target_file_name(&target, state.consistent);
        let (content_urls, layer_urls) = crate::p2p::content_urls(&self.sources, &name, &content.to_string());
        Some(CacheJob { target, entry, content_urls, layer_urls })
    }

    fn lock(&self) -> MutexGuard<'_, IndexState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ContentResolver for CatalogIndex {
    fn resolve(&self, content: ContentId) -> ResolveFuture<'_> {
        Box::pin(async move {
            if let Some(job) = self.job(&content) {
                return Ok(job);
            }
            if let Err(e) = self.refresh_if_stale().await {
                return Err(format!("the signed catalog could not be refreshed: {}", crate::error_chain(&e)));
            }
            self.job(&content).ok_or_else(|| {
                let products: Vec<&str> = self.products.iter().map(ProductName::as_str).collect();
                format!(
                    "{content} is not the SHA-256 of a signed target with a piece tree among the products this cache \
                     server serves ({})",
                    products.join(", ")
                )
            })
        })
    }
}
