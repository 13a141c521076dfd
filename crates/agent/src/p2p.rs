//! Peer-to-peer delivery in the agent (docs/p2p-protocol.md, docs/configuration.md "`[p2p]`"): the `[p2p]`
//! configuration, and the glue between the agent and custody-peer.
//!
//! Without a `[p2p]` section the agent downloads over HTTP only, as before. With one, an update whose signed catalog
//! entry carries a piece tree is fetched by a custody-peer `PeerDownload` when the download mode peers (1 LAN,
//! 2 group, 3 internet): HTTP sources and peers in parallel, every piece verified against the signed root, the whole
//! file against the signed hashes before it becomes a `VerifiedArtifact`. Modes 0 (HTTP only), 99 (simple: no
//! matching service, no peers) and 100 (bypass) use the plain HTTP downloader.
//!
//! Peers come from three places, all merged into the running download: `[p2p] peers` (static, counted as LAN), the
//! service's peer matching (`POST /device/v1/peers`, which also announces this device), and DNS-SD/mDNS on the LAN
//! (`[p2p] mdns`), which keeps working when the service is unreachable. The daemon runs the listener (`[p2p] listen`,
//! TCP 7680) that serves verified pieces to other devices, and announces what its cache holds, so devices that
//! finished keep seeding; a cache server (`[p2p] cache_server`) is announced as such and preferred by its group, and
//! fetches over HTTP what its group's devices ask for: the signed targets of `cache_products` found in its
//! [`CatalogIndex`] (custody-peer's `CacheServer` does the fetching and serving).
//!
//! A device enrolled with a token has no certificate and no peer identity: its downloads of such updates still run
//! piece by piece (verified, resumable) but over HTTP only.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use custody_api::device::DeliveryStats;
use custody_catalog::ProductName;
use custody_p2p::policy::{DeviceResources, PeerPolicy};
use custody_p2p::{ContentId, DownloadMode, PeerKind, TransferStats};
use custody_peer::discovery::local_subnets;
use custody_peer::{
    Announcement, CacheServer, CacheServerStats, LanAdvertisement, LanDiscovery, MatchingClient, PeerCache,
    PeerCandidate, PeerContext, PeerDownload, PeerDownloadConfig, PeerJob, PeerNode, PeerNodeConfig, UploadGate,
};
use custody_tls::PeerTlsConfig;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::Error;
use crate::cache_index::CatalogIndex;
use crate::config::AgentConfig;
use crate::download::{Fetched, Job};
use crate::state::StateDir;

/// The `[p2p]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P2pSection {
    /// Where the peer listener accepts connections (the daemon only). Default `0.0.0.0:7680`. When it names one
    /// address, outgoing peer connections are made from that address too.
    #[serde(default = "P2pSection::default_listen")]
    pub listen: SocketAddr,
    /// The addresses announced to the matching service, `"ip/prefix"`; default: every interface's (loopback and
    /// link-local left out).
    #[serde(default)]
    pub advertise: Option<Vec<String>>,
    /// Peers to try besides those found (`"ip:port"`), counted as LAN peers.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    /// Find LAN peers by DNS-SD/mDNS and advertise this device (`_custody-p2p._tcp.local.`).
    #[serde(default = "P2pSection::default_true")]
    pub mdns: bool,
    /// Ask the service for peers (modes 1, 2, 3).
    #[serde(default = "P2pSection::default_true")]
    pub matching: bool,
    /// This device is its group's cache server: announced as such, preferred by the group's devices; it fetches
    /// over HTTP, for them, the signed targets of `cache_products` they ask for.
    #[serde(default)]
    pub cache_server: bool,
    /// The products whose updates a cache server fetches for its group on demand; empty: `[agent] products`.
    #[serde(default)]
    pub cache_products: Vec<String>,
    /// The peer cache; default `<state_dir>/peer-cache`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Incoming peer connections served at once.
    #[serde(default = "P2pSection::default_max_connections")]
    pub max_connections: usize,
    /// Delivery Optimization's policies and their defaults (custody_p2p::policy::PeerPolicy).
    #[serde(default)]
    pub policy: PeerPolicy,
    /// Values that replace what the agent measures (RAM, disk, battery), for devices that misreport them.
    #[serde(default)]
    pub resources: ResourceOverrides,
}

/// `[p2p.resources]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceOverrides {
    pub total_ram: Option<u64>,
    pub total_disk: Option<u64>,
    pub on_battery: Option<bool>,
}

impl P2pSection {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], custody_p2p::wire::DEFAULT_PORT))
    }

    fn default_true() -> bool {
        true
    }

    fn default_max_connections() -> usize {
        64
    }

    /// Checks what serde cannot: called when the configuration is loaded.
    pub fn check(&self) -> Result<(), String> {
        if self.policy.download_mode == DownloadMode::Group && self.policy.group.is_none() {
            return Err("p2p.policy.download_mode 2 (group) needs p2p.policy.group".into());
        }
        for address in self.advertise.iter().flatten() {
            let (ip, prefix) =
                address.split_once('/').ok_or_else(|| format!("p2p.advertise: {address:?} is not ip/prefix"))?;
            ip.parse::<IpAddr>().map_err(|e| format!("p2p.advertise: {address:?}: {e}"))?;
            prefix.parse::<u8>().map_err(|e| format!("p2p.advertise: {address:?}: {e}"))?;
        }
        if self.max_connections == 0 {
            return Err("p2p.max_connections must be at least 1".into());
        }
        for product in &self.cache_products {
            product.parse::<ProductName>().map_err(|e| format!("p2p.cache_products: {product:?}: {e}"))?;
        }
        if !self.cache_products.is_empty() && !self.cache_server {
            return Err("p2p.cache_products needs p2p.cache_server = true".into());
        }
        Ok(())
    }
}

/// The agent's peer-to-peer side: cache, upload gate, TLS identity, discovery, and (in the daemon) the listener.
pub struct P2p {
    section: P2pSection,
    cache: Arc<PeerCache>,
    gate: Arc<UploadGate>,
    tls: Option<PeerTlsConfig>,
    device_id: Option<String>,
    matching: Option<MatchingClient>,
    plain: reqwest::Client,
    pinned: Option<reqwest::Client>,
    cache_root: PathBuf,
    node: Mutex<Option<PeerNode>>,
    lan: Mutex<Option<LanDiscovery>>,
    /// The cache-server role (`cache_server = true`): the catalog index it resolves content ids through, and the
    /// fetches it runs for the group.
    index: Option<Arc<CatalogIndex>>,
    cache_server: Option<Arc<CacheServer>>,
}

/// What a cache server shows in `custody agent status` (and the local API's `status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheServerStatus {
    /// The products it fetches for its group.
    pub products: Vec<String>,
    /// Signed targets with a piece tree in its index.
    pub indexed: usize,
    pub index_refreshed: Option<jiff::Timestamp>,
    /// Content ids being fetched now.
    pub fetching: Vec<String>,
    #[serde(flatten)]
    pub stats: CacheServerStats,
}

impl std::fmt::Debug for P2p {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2p")
            .field("section", &self.section)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl P2p {
    /// Opens the cache and upload accounting and loads the peer identity; `None` without a `[p2p]` section.
    pub fn open(
        config: &AgentConfig,
        state: &StateDir,
        plain: reqwest::Client,
        pinned: Option<reqwest::Client>,
    ) -> Result<Option<Self>, Error> {
        let Some(section) = config.p2p.clone() else { return Ok(None) };
        let cache_root = section.cache_dir.clone().unwrap_or_else(|| state.root().join("peer-cache"));
        let cache = PeerCache::open(&cache_root).map_err(peer_error)?;
        let resources = measure(&section, &cache_root);
        let gate = UploadGate::new(section.policy.clone(), resources, Some(&state.root().join("uploads.json")))
            .map_err(peer_error)?;
        let tls = match config.peer_tls() {
            Ok(tls) => Some(tls),
            Err(reason) => {
                warn!("peer-to-peer downloads run over HTTP only: {reason}");
                None
            }
        };
        let device_id = tls.as_ref().map(|tls| tls.own_identity().device_id.clone());
        let matching = match (&pinned, section.matching) {
            (Some(client), true) => Some(MatchingClient::new(client.clone(), &config.api_url())),
            _ => None,
        };
        let (index, cache_server) = match section.cache_server {
            false => (None, None),
            true => {
                let products: Vec<ProductName> = match section.cache_products.is_empty() {
                    true => config.wanted_products(),
                    // Checked when the configuration was loaded.
                    false => section.cache_products.iter().filter_map(|p| p.parse().ok()).collect(),
                };
                if products.is_empty() {
                    warn!(
                        "cache server without products ([p2p] cache_products, [agent] products): it serves only what \
                           its cache holds"
                    );
                }
                let index = Arc::new(CatalogIndex::open(config, state, pinned.clone(), products)?);
                let context = PeerContext {
                    cache: cache.clone(),
                    gate: gate.clone(),
                    tls: None,
                    plain: plain.clone(),
                    pinned: pinned.clone(),
                };
                let download = PeerDownloadConfig::new(section.policy.clone(), resources, true);
                let server = CacheServer::new(index.clone(), context, download);
                (Some(index), Some(server))
            }
        };
        Ok(Some(Self {
            section,
            cache,
            gate,
            tls,
            device_id,
            matching,
            plain,
            pinned,
            cache_root,
            node: Mutex::new(None),
            lan: Mutex::new(None),
            index,
            cache_server,
        }))
    }

    pub fn section(&self) -> &P2pSection {
        &self.section
    }

    /// Whether this target is fetched through custody-peer: a piece tree in its entry and a mode that peers.
    pub fn takes(&self, job: &Job<'_>) -> bool {
        job.entry.content().pieces.is_some() && self.section.policy.download_mode.peers()
    }

    /// The daemon: starts the listener (when the device has a certificate) and the mDNS advertisement, and evicts
    /// what the cache policy says.
    pub async fn start(&self) -> Result<(), Error> {
        self.evict();
        let Some(tls) = self.tls.clone() else { return Ok(()) };
        if !self.section.policy.download_mode.peers() {
            return Ok(());
        }
        let config = PeerNodeConfig {
            listen: self.section.listen,
            max_connections: self.section.max_connections,
            cache_server: self.cache_server.clone(),
            ..PeerNodeConfig::default()
        };
        let node = PeerNode::start(config, tls, self.cache.clone(), self.gate.clone()).await.map_err(peer_error)?;
        let port = node.local_addr().port();
        info!(listen = %node.local_addr(), "peer-to-peer listener started");
        *lock(&self.node) = Some(node);
        if self.section.mdns
            && let Some(device) = &self.device_id
        {
            let advertised = LanDiscovery::new(device).and_then(|mut lan| {
                let addresses = match self.section.listen.ip() {
                    ip if ip.is_unspecified() => Vec::new(),
                    ip => vec![ip],
                };
                lan.advertise(&LanAdvertisement {
                    device: device.clone(),
                    group: self.section.policy.group.clone(),
                    port,
                    addresses,
                })?;
                Ok(lan)
            });
            match advertised {
                Ok(lan) => *lock(&self.lan) = Some(lan),
                Err(e) => warn!("mDNS advertisement failed (peers are still found through the service): {e}"),
            }
        }
        Ok(())
    }

    /// Removes cached content the policy no longer keeps (age, size).
    pub fn evict(&self) {
        let resources = measure(&self.section, &self.cache_root);
        self.gate.set_resources(resources);
        let evicted = match &self.cache_server {
            // Spares what it is fetching for the group.
            Some(server) => server.evict(&resources, SystemTime::now()),
            None => self.cache.evict(&self.section.policy, &resources, SystemTime::now()),
        };
        if let Err(e) = evicted {
            warn!("peer cache eviction: {e}");
        }
    }

    /// Announces every complete content of the cache to the matching service (the daemon, every few minutes): a
    /// device that finished a download keeps seeding it. A cache server first refreshes its catalog index and
    /// announces every content of it too (as a cache server, complete or not), so that its group's devices find it
    /// for content it has yet to fetch.
    pub async fn announce_cache(&self) {
        if let Some(index) = &self.index
            && let Err(e) = index.refresh().await
        {
            warn!("cache server: the catalog index could not be refreshed: {}", crate::error_chain(&e));
        }
        let Some(matching) = &self.matching else { return };
        if self.tls.is_none() || !self.section.policy.download_mode.peers() {
            return;
        }
        let mut contents: std::collections::BTreeMap<ContentId, bool> = self
            .cache
            .entries()
            .into_iter()
            .filter(|entry| entry.complete)
            .map(|entry| (entry.content, true))
            .collect();
        for content in self.index.iter().flat_map(|index| index.contents()) {
            contents.entry(content).or_insert(false);
        }
        for (content, complete) in contents {
            let announcement = self.announcement(content, complete);
            if let Err(e) = matching.peers(&announcement).await {
                warn!(%content, "cannot announce cached content: {e}");
            }
        }
    }

    /// The cache server's index and counters, when this device is one.
    pub fn cache_server_status(&self) -> Option<CacheServerStatus> {
        let (index, server) = (self.index.as_ref()?, self.cache_server.as_ref()?);
        Some(CacheServerStatus {
            products: index.products().iter().map(ToString::to_string).collect(),
            indexed: index.contents().len(),
            index_refreshed: index.refreshed_at(),
            fetching: server.fetching().iter().map(ToString::to_string).collect(),
            stats: server.stats(),
        })
    }

    /// Downloads `job` through custody-peer (see [`P2p::takes`]); `sources` are the content base URLs in order.
    pub async fn fetch(&self, job: Job<'_>, sources: &[String]) -> Result<Fetched, Error> {
        let name = job.file_name();
        let sha256 = job.target.file().sha256().unwrap_or_default().to_ascii_lowercase();
        let content: ContentId = sha256.parse().map_err(|_| Error::Download {
            path: job.target.path().to_owned(),
            failures: vec![format!("the signed sha256 {sha256:?} is not a content id")],
        })?;
        let (content_urls, layer_urls) = content_urls(sources, &name, &sha256);
        let peer_job = PeerJob {
            target: job.target.clone(),
            entry: job.entry.clone(),
            device: job.device.clone(),
            staging_dir: job.staging_dir.to_owned(),
            content_urls,
            layer_urls,
        };
        let context = PeerContext {
            cache: self.cache.clone(),
            gate: self.gate.clone(),
            tls: self.tls.clone(),
            plain: self.plain.clone(),
            pinned: self.pinned.clone(),
        };
        let resources = measure(&self.section, &self.cache_root);
        let mut config = PeerDownloadConfig::new(self.section.policy.clone(), resources, true);
        config.bind = self.bind_address();
        let download = PeerDownload::new(peer_job, context, config);

        let mut candidates: Vec<PeerCandidate> = self
            .section
            .peers
            .iter()
            .map(|addr| PeerCandidate { addr: *addr, kind: PeerKind::Lan, device: None })
            .collect();
        let mode = self.section.policy.download_mode;
        if let Some(matching) = self.matching.as_ref().filter(|_| self.tls.is_some()) {
            match matching.peers(&self.announcement(content, false)).await {
                Ok((found, _)) => {
                    info!(%content, peers = found.len(), "peers from the matching service");
                    candidates.extend(found);
                }
                Err(e) => warn!(%content, "peer matching failed (LAN discovery and HTTP go on): {e}"),
            }
        }
        // Devices that start together see few of each other in their first answer: ask again soon, then less often.
        let refreshing = match self.matching.clone().filter(|_| self.tls.is_some()) {
            Some(matching) => {
                let more = download.candidates();
                let announcement = self.announcement(content, false);
                Some(tokio::spawn(async move {
                    let mut wait = MATCHING_FIRST_REFRESH;
                    loop {
                        tokio::time::sleep(wait).await;
                        let refresh = match matching.peers(&announcement).await {
                            Ok((found, refresh)) => {
                                for candidate in found {
                                    if more.send(candidate).await.is_err() {
                                        return;
                                    }
                                }
                                refresh
                            }
                            Err(e) => {
                                warn!(%content, "peer matching failed: {e}");
                                MATCHING_MAX_REFRESH
                            }
                        };
                        wait = (wait * 2).min(refresh).min(MATCHING_MAX_REFRESH);
                    }
                }))
            }
            None => None,
        };
        let browsing = match (&*lock(&self.lan), self.tls.is_some() && mode.peers()) {
            (Some(lan), true) => match lan.browse() {
                Ok(mut browser) => {
                    let more = download.candidates();
                    let group = self.section.policy.group.clone();
                    Some(tokio::spawn(async move {
                        while let Some(peer) = browser.next().await {
                            let kind = match (&group, &peer.group) {
                                (Some(ours), Some(theirs)) if ours == theirs => PeerKind::Group,
                                _ => PeerKind::Lan,
                            };
                            for mut candidate in peer.candidates() {
                                candidate.kind = kind;
                                if more.send(candidate).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }))
                }
                Err(e) => {
                    warn!("mDNS browsing failed: {e}");
                    None
                }
            },
            _ => None,
        };
        let result = download.run(candidates).await;
        for task in [browsing, refreshing].into_iter().flatten() {
            task.abort();
        }
        let outcome = result.map_err(|e| Error::Download {
            path: job.target.path().to_owned(),
            failures: vec![crate::error_chain(&e)],
        })?;
        for peer in outcome.peers.iter().filter(|peer| peer.banned) {
            warn!(%content, device = %peer.device, addr = %peer.addr, "peer banned for this content: {:?}", peer.closed);
        }
        info!(
            target = %job.target.path(),
            from_http = outcome.stats.from_http,
            from_peers = outcome.stats.from_peers(),
            resumed = outcome.resumed_pieces,
            duplicate_bytes = outcome.counters.duplicate_bytes,
            timed_out_requests = outcome.counters.timed_out_requests,
            corrupt_pieces = outcome.counters.corrupt_pieces,
            banned = outcome.counters.banned_sources,
            "downloaded piece by piece and verified"
        );
        // Tell the matching service this device now has all of it (best effort).
        if let Some(matching) = self.matching.as_ref().filter(|_| self.tls.is_some()) {
            let _ = matching.peers(&self.announcement(content, true)).await;
        }
        Ok(Fetched { artifact: outcome.artifact, delivery: delivery(&outcome.stats) })
    }

    fn announcement(&self, content: ContentId, complete: bool) -> Announcement {
        let port = lock(&self.node).as_ref().map_or(self.section.listen.port(), |node| node.local_addr().port());
        let addresses = match &self.section.advertise {
            Some(addresses) => addresses.clone(),
            None => local_subnets(8).unwrap_or_default(),
        };
        Announcement {
            content,
            mode: self.section.policy.download_mode,
            group: self.section.policy.group.clone(),
            port,
            addresses,
            complete,
            cache_server: self.section.cache_server,
        }
    }

    /// Outgoing peer connections leave from the listener's address when it names one.
    fn bind_address(&self) -> Option<IpAddr> {
        Some(self.section.listen.ip()).filter(|ip| !ip.is_unspecified())
    }
}

/// The URLs of a target's content (`<source><name>` for each base URL) and of its piece layer
/// (`<origin>pieces/sha256/<hex>` for each base URL ending in `targets/`), in the order of `sources`.
pub(crate) fn content_urls(sources: &[String], name: &str, sha256: &str) -> (Vec<String>, Vec<String>) {
    let content = sources.iter().map(|source| format!("{source}{name}")).collect();
    let layer = sources
        .iter()
        .filter_map(|source| source.strip_suffix("targets/"))
        .map(|base| format!("{base}pieces/sha256/{sha256}"))
        .collect();
    (content, layer)
}

/// custody-p2p's counters as the device API reports them.
fn delivery(stats: &TransferStats) -> DeliveryStats {
    DeliveryStats {
        from_http: stats.from_http,
        from_cache_server: stats.from_cache_server,
        from_lan_peers: stats.from_lan_peers,
        from_group_peers: stats.from_group_peers,
        from_internet_peers: stats.from_internet_peers,
        to_peers: stats.to_peers,
    }
}

/// What the device has now: RAM from /proc/meminfo, the cache's file system from statvfs, the battery from
/// /sys/class/power_supply; each replaced by `[p2p.resources]` when configured.
fn measure(section: &P2pSection, cache_root: &std::path::Path) -> DeviceResources {
    let total_ram = section.resources.total_ram.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|line| line.starts_with("MemTotal:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map_or(0, |kib| kib * 1024)
    });
    let (disk_total, free_disk) = statvfs(cache_root).unwrap_or((0, 0));
    let (on_battery, battery_percent) = battery();
    DeviceResources {
        total_ram,
        total_disk: section.resources.total_disk.unwrap_or(disk_total),
        free_disk,
        on_battery: section.resources.on_battery.unwrap_or(on_battery),
        battery_percent,
    }
}

/// Total and available bytes of the file system holding `path` (or its nearest existing parent).
fn statvfs(path: &std::path::Path) -> Option<(u64, u64)> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let c_path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` is a valid out-pointer for one statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    let block = stat.f_frsize;
    Some((stat.f_blocks * block, stat.f_bavail * block))
}

/// Whether the machine runs on battery now, and the charge: from the kernel's power-supply class. No battery, or no
/// sysfs: on mains.
fn battery() -> (bool, Option<u8>) {
    let Ok(supplies) = std::fs::read_dir("/sys/class/power_supply") else { return (false, None) };
    let mut on_battery = false;
    let mut percent = None;
    for supply in supplies.flatten() {
        let read = |name: &str| std::fs::read_to_string(supply.path().join(name)).map(|s| s.trim().to_owned()).ok();
        match read("type").as_deref() {
            Some("Mains") if read("online").as_deref() == Some("1") => return (false, percent),
            Some("Battery") => {
                on_battery |= read("status").as_deref() == Some("Discharging");
                percent = read("capacity").and_then(|c| c.parse().ok());
            }
            _ => {}
        }
    }
    (on_battery, percent)
}

fn peer_error(error: custody_peer::Error) -> Error {
    Error::Refused(format!("peer-to-peer: {}", crate::error_chain(&error)))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; go on with it.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// During a download, the first new question to the matching service comes this soon, then twice as late each time,
/// up to the service's `refresh_after_seconds` and [`MATCHING_MAX_REFRESH`].
const MATCHING_FIRST_REFRESH: Duration = Duration::from_secs(1);
const MATCHING_MAX_REFRESH: Duration = Duration::from_secs(60);

/// How long the daemon waits between two announcements of its cache.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> Result<P2pSection, String> {
        let section: P2pSection = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        section.check().map(|()| section)
    }

    #[test]
    fn cache_products_are_product_names_of_a_cache_server() {
        let cache = section("cache_server = true\ncache_products = [\"acme-os\", \"acme-agent\"]\n").unwrap();
        assert_eq!(cache.cache_products, ["acme-os", "acme-agent"]);
        assert!(section("cache_server = true\n").unwrap().cache_products.is_empty());
        let error = section("cache_server = true\ncache_products = [\"../etc\"]\n").unwrap_err();
        assert!(error.contains("p2p.cache_products"), "{error}");
        let error = section("cache_products = [\"acme-os\"]\n").unwrap_err();
        assert!(error.contains("needs p2p.cache_server = true"), "{error}");
    }

    #[test]
    fn content_and_layer_urls_follow_the_sources() {
        let sources = ["http://cdn.example/targets/".to_owned(), "http://origin.example/content/".to_owned()];
        let (content, layer) = content_urls(&sources, "acme/ab12.img", "ab12");
        assert_eq!(
            content,
            ["http://cdn.example/targets/acme/ab12.img", "http://origin.example/content/acme/ab12.img"]
        );
        // Only a base ending in targets/ has a pieces/ beside it.
        assert_eq!(layer, ["http://cdn.example/pieces/sha256/ab12"]);
    }
}
