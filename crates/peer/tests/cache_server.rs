//! The cache-server role over real sockets on loopback: a `PeerNode` with a `CacheServer` whose resolver knows one
//! signed target, devices with real certificates downloading through it, a real HTTP origin; and hostile cache
//! servers, which cannot make a device accept anything that is not signed.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use custody_p2p::{ContentId, DeviceResources, DownloadMode, PeerKind};
use custody_peer::{
    CacheJob, CacheServer, ContentResolver, PeerCache, PeerCandidate, PeerContext, PeerNode, PeerNodeConfig,
    ResolveFuture, UploadGate,
};
use custody_tls::ProxySettings;
use custody_tuf::TrustedTarget;
use support::{Content, Device, Hostile, HostilePeer, Origin, Pki, device_id, download_config, policy};

const KIB: usize = 1024;

/// The signed targets the cache server may fetch, by content id; counts the lookups.
struct Catalog {
    jobs: HashMap<ContentId, CacheJob>,
    lookups: AtomicUsize,
}

impl ContentResolver for Catalog {
    fn resolve(&self, content: ContentId) -> ResolveFuture<'_> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let found = self.jobs.get(&content).cloned().ok_or_else(|| format!("{content} is not a signed target"));
        Box::pin(async move { found })
    }
}

/// A cache server on 127.0.0.`octet` holding nothing, fetching `jobs` from the origin on demand.
struct Cache {
    server: Arc<CacheServer>,
    cache: Arc<PeerCache>,
    node: PeerNode,
    id: String,
    _dir: tempfile::TempDir,
}

impl Cache {
    async fn start(pki: &Pki, octet: u8, jobs: Vec<(ContentId, CacheJob)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cache = PeerCache::open(&dir.path().join("cache")).unwrap();
        // The cache's size limit is a share of the free disk.
        let resources = DeviceResources { free_disk: 1 << 40, ..DeviceResources::default() };
        let gate = UploadGate::new(policy(DownloadMode::Lan), resources, None).unwrap();
        let context = PeerContext {
            cache: cache.clone(),
            gate: gate.clone(),
            tls: None,
            plain: custody_tls::plain_http_client(&ProxySettings::direct()).unwrap(),
            pinned: None,
        };
        let catalog = Arc::new(Catalog { jobs: jobs.into_iter().collect(), lookups: AtomicUsize::new(0) });
        let server = CacheServer::new(catalog, context, download_config(DownloadMode::Lan));
        let id = device_id(octet);
        let config = PeerNodeConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)), 0),
            cache_server: Some(server.clone()),
            ..PeerNodeConfig::default()
        };
        let node = PeerNode::start(config, pki.device_tls(&id), cache.clone(), gate).await.unwrap();
        Self { server, cache, node, id, _dir: dir }
    }

    fn candidate(&self) -> PeerCandidate {
        PeerCandidate { addr: self.node.local_addr(), kind: PeerKind::CacheServer, device: Some(self.id.clone()) }
    }
}

fn job(content: &Content, origin: &Origin) -> (ContentId, CacheJob) {
    let job = CacheJob {
        target: content.target.clone(),
        entry: content.entry.clone(),
        content_urls: vec![origin.content_url(content)],
        layer_urls: vec![origin.layer_url(content)],
    };
    (content.id, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_share_one_fetch_of_the_cache_server_and_unknown_content_is_refused() {
    let pki = Pki::new();
    let content = Content::new(2048 * KIB, 64 * 1024, 11);
    let unknown = Content::new(256 * KIB, 64 * 1024, 12);
    // A slow origin, so that the devices connect while the cache server is still fetching.
    let origin = Origin::start(vec![content.clone(), unknown.clone()], Some(1024 * 1024)).await;
    let cache = Cache::start(&pki, 60, vec![job(&content, &origin)]).await;
    let mut devices = Vec::new();
    for octet in 61..=63 {
        devices.push(Device::start(&pki, octet).await);
    }
    let mut runs = tokio::task::JoinSet::new();
    for device in &devices {
        let download = device.download(&content, &origin, download_config(DownloadMode::Lan));
        runs.spawn(download.run(vec![cache.candidate()]));
    }
    let len = content.payload.len() as u64;
    while let Some(outcome) = runs.join_next().await {
        let outcome = outcome.unwrap().unwrap();
        assert_eq!(std::fs::read(outcome.artifact.path()).unwrap(), content.payload);
        assert!(
            outcome.stats.from_cache_server > len / 2,
            "{:?} {:?} {:?}",
            outcome.stats,
            outcome.peers,
            outcome.connect_failures
        );
    }
    let stats = cache.server.stats();
    assert_eq!((stats.fetches_started, stats.fetches_completed, stats.fetches_failed), (1, 1, 0), "{stats:?}");
    assert_eq!(stats.bytes_from_http, len, "{stats:?}");
    assert!(stats.bytes_served > len, "{stats:?}");
    assert!(cache.cache.get(&content.id).unwrap().is_complete(), "the cache keeps what it fetched, verified whole");
    // About once: three HTTP-only downloads would take 3 × len.
    assert!(origin.served() < 2 * len, "the origin sent {} bytes for a {len}-byte file", origin.served());

    // Content the resolver does not name: the device is told goodbye (and downloads over HTTP instead).
    let outcome = devices[0]
        .download(&unknown, &origin, download_config(DownloadMode::Lan))
        .run(vec![cache.candidate()])
        .await
        .unwrap();
    assert_eq!(std::fs::read(outcome.artifact.path()).unwrap(), unknown.payload);
    assert!(
        outcome.connect_failures.iter().any(|failure| failure.contains("content not served")),
        "{:?}",
        outcome.connect_failures
    );
    let stats = cache.server.stats();
    assert_eq!((stats.refused, stats.fetches_started), (1, 1), "{stats:?}");
    assert!(cache.cache.get(&unknown.id).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_servers_own_download_waits_for_its_fetch_of_the_same_content() {
    let pki = Pki::new();
    let content = Content::new(2048 * KIB, 64 * 1024, 14);
    let len = content.payload.len() as u64;
    // A slow origin: the fetch for the group takes about 2 s.
    let origin = Origin::start(vec![content.clone()], Some(1024 * 1024)).await;
    let cache = Cache::start(&pki, 64, vec![job(&content, &origin)]).await;
    let device = Device::start(&pki, 65).await;
    // A device of the group makes the cache server fetch the content...
    let group = tokio::spawn(
        device.download(&content, &origin, download_config(DownloadMode::Lan)).run(vec![cache.candidate()]),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while cache.server.fetching().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the cache server never started fetching");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // ... while it downloads the same update for itself (its agent's products), into the same peer cache.
    let staging = tempfile::tempdir().unwrap();
    let job = custody_peer::PeerJob {
        target: content.target.clone(),
        entry: content.entry.clone(),
        device: content.device.clone(),
        staging_dir: staging.path().to_owned(),
        content_urls: vec![origin.content_url(&content)],
        layer_urls: vec![origin.layer_url(&content)],
    };
    let context = PeerContext {
        cache: cache.cache.clone(),
        gate: UploadGate::new(policy(DownloadMode::Lan), DeviceResources::default(), None).unwrap(),
        tls: None,
        plain: custody_tls::plain_http_client(&ProxySettings::direct()).unwrap(),
        pinned: None,
    };
    let own = custody_peer::PeerDownload::new(job, context, download_config(DownloadMode::Lan)).run(vec![]).await;
    let own = own.expect("the cache server's own download completes");
    assert_eq!(std::fs::read(own.artifact.path()).unwrap(), content.payload);
    assert_eq!(own.stats.from_http, 0, "it waited for the fetch and found every piece verified: {:?}", own.stats);
    let group = group.await.unwrap().unwrap();
    assert_eq!(std::fs::read(group.artifact.path()).unwrap(), content.payload);
    let stats = cache.server.stats();
    assert_eq!((stats.fetches_started, stats.fetches_completed, stats.fetches_failed), (1, 1, 0), "{stats:?}");
    assert!(cache.cache.get(&content.id).unwrap().is_complete());
    assert!(origin.served() < 2 * len, "the origin sent {} bytes for a {len}-byte file", origin.served());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_content_that_fails_the_whole_file_check_is_discarded() {
    let pki = Pki::new();
    let content = Content::new(512 * KIB, 64 * 1024, 13);
    let origin = Origin::start(vec![content.clone()], None).await;
    // The signed target also lists a SHA-512 the bytes do not have: every piece matches the signed root, the whole
    // file does not.
    let mut file = content.target.file().clone();
    file.hashes.insert("sha512".into(), "00".repeat(64));
    let (id, mut cache_job) = job(&content, &origin);
    cache_job.target = TrustedTarget::for_tests(content.target.path().into(), "acme".into(), file);
    let cache = Cache::start(&pki, 64, vec![(id, cache_job)]).await;
    let device = Device::start(&pki, 65).await;
    let outcome = device
        .download(&content, &origin, download_config(DownloadMode::Lan))
        .run(vec![cache.candidate()])
        .await
        .unwrap();
    assert_eq!(std::fs::read(outcome.artifact.path()).unwrap(), content.payload);
    // The fetch runs on after the device finished (pieces it served were verified against the signed root).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while cache.server.stats().fetches_failed == 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", cache.server.stats());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let stats = cache.server.stats();
    assert_eq!((stats.fetches_started, stats.fetches_completed, stats.fetches_failed), (1, 0, 1), "{stats:?}");
    assert_eq!(stats.bytes_from_http, content.payload.len() as u64, "every piece verified, the file did not");
    assert!(cache.cache.get(&content.id).is_none(), "nothing of it is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_cache_server_cannot_make_a_device_accept_anything() {
    let pki = Pki::new();
    let content = Arc::new(Content::new(1024 * KIB, 16 * 1024, 14));
    let other = Arc::new(Content::new(1024 * KIB, 16 * 1024, 15));
    let origin = Origin::start(vec![(*content).clone()], None).await;
    for (octet, behaviour) in [(66, Hostile::Corrupt), (67, Hostile::OtherContent(other))] {
        // A compromised device configured as its group's cache server: preferred, and lying.
        let hostile = HostilePeer::start(&pki, octet, content.clone(), behaviour).await;
        let candidate = PeerCandidate { kind: PeerKind::CacheServer, ..hostile.candidate() };
        let device = Device::start(&pki, octet + 10).await;
        let outcome =
            device.download(&content, &origin, download_config(DownloadMode::Lan)).run(vec![candidate]).await.unwrap();
        assert_eq!(std::fs::read(outcome.artifact.path()).unwrap(), content.payload);
        assert_eq!(outcome.stats.from_cache_server, 0, "{:?}", outcome.stats);
        let report = outcome.peers.iter().find(|peer| peer.device == hostile.device).unwrap();
        assert!(report.banned, "{report:?}");
    }
}
