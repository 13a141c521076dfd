//! [`PeerDownload`]: one signed target fetched piece by piece from peers and HTTP sources at once.
//!
//! 1. **Layer.** The piece layer comes from the cache (a download of the same content that ran before), the
//!    origin (`GET /pieces/sha256/<content>`), or a peer (`LayerRequest`), and is checked against the root in the
//!    signed catalog entry before anything else. A peer whose layer does not check out is banned for this content.
//! 2. **Resume.** The cache entry of the content is opened or created; every piece an earlier run recorded in the
//!    `.have` sidecar is read back and verified, and only those that verify are kept.
//! 3. **Swarm.** Connections to the candidates (at most `max_peers` at once; incoming connections for this content
//!    join too), HTTP `Range` requests to every source in parallel (one each while other devices share the
//!    origin's pieces, `http_parallel` each once alone for `http_alone_after`), all scheduled by custody-p2p's `Swarm`:
//!    every piece is verified before it is written at its offset (off the event loop), announced with `Have` once
//!    written, and counted; the swarm's bans close the connection and the device is never connected again for this
//!    content; protocol violations (a frame the decoder refuses, a message out of order, a bad layer) ban at once.
//! 4. **Whole file.** The assembled file is handed to custody-install ([`VerifiedArtifact::from_assembled`]), which
//!    checks intention, the length and every signed hash, and alone makes the `VerifiedArtifact`.
//!
//! Download modes: 0 (HTTP only) and 100 (bypass) open no peer connection; 99 (simple) uses only the candidates the
//! caller passes (mDNS, static configuration), never the matching service; 1 to 3 take candidates of the kinds the
//! mode allows. Without a device certificate ([`PeerContext::tls`] `None`), or when the policy refuses peering (file
//! below the minimum size, too little RAM or disk), the download runs over HTTP only and says why in
//! [`DownloadOutcome::peering`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use custody_catalog::pieces::{PieceHashes, PieceTree};
use custody_catalog::{DeviceInventory, UpdateEntry};
use custody_install::VerifiedArtifact;
use custody_p2p::swarm::SwarmCounters;
use custody_p2p::{
    Action, ContentId, DeviceResources, DownloadMode, DropReason, GoodbyeReason, PeerId, PeerKind, PeerPolicy,
    RateLimiter, Received, Source, Swarm, SwarmConfig, TransferStats,
};
use custody_tls::PeerTlsConfig;
use custody_tuf::TrustedTarget;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use crate::cache::{CacheEntry, PeerCache};
use crate::node::UploadGate;
use crate::session::{self, Closed, Command, ConnectError, Established, Event, Hello, Incoming, Peer, Timeouts};
use crate::{Error, PeerCandidate};

/// What to download: the signed target and its catalog entry, the device (for custody-install's intention check),
/// where the verified artifact goes, and the HTTP sources.
#[derive(Clone, Debug)]
pub struct PeerJob {
    pub target: TrustedTarget,
    pub entry: UpdateEntry,
    pub device: DeviceInventory,
    /// The verified artifact is made here, as `<sha256>.assembled` (a hard link to the cache's file when both are
    /// on one file system, else a copy); the install engine removes it after installing.
    pub staging_dir: PathBuf,
    /// Full URLs of the content, fetched piece by piece with `Range` requests (CDN bases, then the origin). An
    /// `https://` URL needs [`PeerContext::pinned`].
    pub content_urls: Vec<String>,
    /// Full URLs of the piece layer (`<origin>/pieces/sha256/<content>`), tried in order.
    pub layer_urls: Vec<String>,
}

/// What downloads share with the rest of the agent.
#[derive(Clone, Debug)]
pub struct PeerContext {
    pub cache: Arc<PeerCache>,
    pub gate: Arc<UploadGate>,
    /// The device's peer TLS configuration; `None` (a device without a certificate): HTTP only.
    pub tls: Option<PeerTlsConfig>,
    /// `custody_tls::plain_http_client`, for `http://` sources.
    pub plain: reqwest::Client,
    /// The pinned client, for `https://` sources.
    pub pinned: Option<reqwest::Client>,
}

/// How a download runs. [`PeerDownloadConfig::new`] takes the mode, HTTP delay and rate limits from the policy.
#[derive(Clone, Debug)]
pub struct PeerDownloadConfig {
    pub mode: DownloadMode,
    pub policy: PeerPolicy,
    /// The device's RAM, disk and battery now (the policy's minimums for peering).
    pub resources: DeviceResources,
    /// A download the user waits for (the foreground rate limit and HTTP delay apply) or a background one.
    pub foreground: bool,
    pub swarm: SwarmConfig,
    /// HTTP requests in flight per source for a device alone for `http_alone_after`; one while other devices
    /// share the origin's pieces. Devices that start together find each other within a second: one that opened
    /// several requests meanwhile would hold a bigger part of the origin's bandwidth until they end, and the
    /// others' first pieces, which the swarm waits for, would come later.
    pub http_parallel: usize,
    pub http_alone_after: Duration,
    /// Outgoing peer connections at once (incoming ones are bounded by the node).
    pub max_peers: usize,
    pub timeouts: Timeouts,
    /// HTTP: time to the response headers, and the longest pause inside a body.
    pub http_request_timeout: Duration,
    pub http_idle_timeout: Duration,
    /// Failed requests in a row after which an HTTP source is given up for this download.
    pub http_max_failures: u32,
    /// Verified pieces written between two saves of the `.have` sidecar (the `.part` file is synced first).
    pub save_every: u32,
    /// Wait before connecting again to a peer whose connection ended (not for bad behaviour), and the most
    /// connection attempts per address.
    pub reconnect_delay: Duration,
    pub max_attempts: u32,
    /// The download fails when no piece was verified for this long and no HTTP source is left.
    pub no_progress_timeout: Duration,
    /// The local address outgoing peer connections are made from (default: the system's choice).
    pub bind: Option<std::net::IpAddr>,
}

impl PeerDownloadConfig {
    /// The configuration of `policy` (its mode, HTTP delay) for a foreground or background download, with a random
    /// scheduler seed so that devices starting together fetch different pieces first.
    pub fn new(policy: PeerPolicy, resources: DeviceResources, foreground: bool) -> Self {
        let swarm = SwarmConfig {
            http_delay: policy.http_delay(foreground),
            min_peer_rate: policy.min_background_qos,
            seed: rand::random(),
            ..SwarmConfig::default()
        };
        Self {
            mode: policy.download_mode,
            policy,
            resources,
            foreground,
            swarm,
            http_parallel: 4,
            http_alone_after: Duration::from_secs(1),
            max_peers: 16,
            timeouts: Timeouts::default(),
            http_request_timeout: Duration::from_secs(60),
            http_idle_timeout: Duration::from_secs(60),
            http_max_failures: 5,
            save_every: 16,
            reconnect_delay: Duration::from_secs(2),
            max_attempts: 3,
            no_progress_timeout: Duration::from_secs(600),
            bind: None,
        }
    }
}

/// One download (module documentation). Build it, optionally keep [`PeerDownload::candidates`] to add peers found
/// later (a matching refresh, mDNS), then [`PeerDownload::run`].
pub struct PeerDownload {
    fetcher: Fetcher,
    /// For custody-install's intention check.
    device: DeviceInventory,
    /// Where the verified artifact is made ([`PeerJob::staging_dir`]).
    staging_dir: PathBuf,
}

/// Fetching the pieces of one signed target into the peer cache, each verified against the signed root: steps 1 to
/// 3 of the module documentation. It knows nothing of a device: [`PeerDownload`] adds the device and the staging
/// directory for custody-install's whole-file check, and the cache server fetches for other devices with it alone.
pub(crate) struct Fetcher {
    target: TrustedTarget,
    entry: UpdateEntry,
    content_urls: Vec<String>,
    layer_urls: Vec<String>,
    context: PeerContext,
    config: PeerDownloadConfig,
    more: mpsc::Receiver<PeerCandidate>,
    more_sender: mpsc::Sender<PeerCandidate>,
}

/// A finished download.
#[derive(Debug)]
pub struct DownloadOutcome {
    /// The file, verified whole by custody-install.
    pub artifact: VerifiedArtifact,
    /// Bytes per source kind (verified pieces only) and bytes sent to peers during the download.
    pub stats: TransferStats,
    /// What went wrong along the way (corrupt pieces, timeouts, bans).
    pub counters: SwarmCounters,
    /// Every peer that completed a handshake.
    pub peers: Vec<PeerReport>,
    /// Connections that failed before their handshake completed (unreachable, certificate refused, timed out).
    pub connect_failures: Vec<String>,
    /// Pieces found verified on disk at the start (resume).
    pub resumed_pieces: u32,
    /// Why no peer was used, when peering was off for this download.
    pub peering: Option<String>,
}

/// One peer of a download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerReport {
    /// The device id in its certificate.
    pub device: String,
    pub addr: SocketAddr,
    pub kind: PeerKind,
    /// Bytes of verified pieces received from it.
    pub received: u64,
    /// Banned for this content (bad pieces, protocol violation, a bad layer, or silent).
    pub banned: bool,
    /// Why its last connection ended, if it did.
    pub closed: Option<String>,
}

impl PeerDownload {
    pub fn new(job: PeerJob, context: PeerContext, config: PeerDownloadConfig) -> Self {
        let PeerJob { target, entry, device, staging_dir, content_urls, layer_urls } = job;
        let fetcher = Fetcher::new(target, entry, content_urls, layer_urls, context, config);
        Self { fetcher, device, staging_dir }
    }

    /// A channel for candidates found while the download runs.
    pub fn candidates(&self) -> mpsc::Sender<PeerCandidate> {
        self.fetcher.more_sender.clone()
    }

    /// Runs the download to the end: a [`DownloadOutcome`] with the verified artifact, or an error naming what
    /// failed (every source, the layer, the whole-file check, the disk). Pieces verified so far stay in the cache
    /// for the next attempt.
    pub async fn run(mut self, candidates: Vec<PeerCandidate>) -> Result<DownloadOutcome, Error> {
        let fetched = self.fetcher.fetch_pieces(candidates).await?;
        let artifact = self.finish(&fetched.entry).await;
        // The whole-file check is done: another fetch of this content may fill the entry now.
        drop(fetched.fill);
        let artifact = artifact?;
        Ok(DownloadOutcome {
            artifact,
            stats: fetched.stats,
            counters: fetched.counters,
            peers: fetched.peers,
            connect_failures: fetched.connect_failures,
            resumed_pieces: fetched.resumed_pieces,
            peering: fetched.peering,
        })
    }

    /// Hands the assembled file to custody-install; on success the cache keeps it as complete content.
    async fn finish(&self, entry: &Arc<CacheEntry>) -> Result<VerifiedArtifact, Error> {
        let saving = entry.clone();
        tokio::task::spawn_blocking(move || saving.save()).await.map_err(join_error)??;
        let sha256 = self.fetcher.target.file().sha256().unwrap_or_default().to_ascii_lowercase();
        let artifact_path = self.staging_dir.join(format!("{sha256}.assembled"));
        let source = entry.file_path();
        let (target, catalog_entry, device) =
            (self.fetcher.target.clone(), self.fetcher.entry.clone(), self.device.clone());
        let entry = entry.clone();
        tokio::task::spawn_blocking(move || {
            link_or_copy(&source, &artifact_path)?;
            match VerifiedArtifact::from_assembled(&artifact_path, &target, &catalog_entry, &device) {
                Ok(artifact) => {
                    if !entry.is_complete() {
                        entry.mark_complete()?;
                    }
                    Ok(artifact)
                }
                Err(err) => {
                    let _ = std::fs::remove_file(&artifact_path);
                    if matches!(
                        err,
                        custody_install::Error::HashMismatch { .. } | custody_install::Error::LengthMismatch { .. }
                    ) {
                        // Every piece matched the signed root but not the whole file: nothing of it can be kept.
                        tracing::error!(target = %target.path(), error = %err, "assembled file refused");
                        entry.reset()?;
                    }
                    Err(Error::Install(err))
                }
            }
        })
        .await
        .map_err(join_error)?
    }
}

impl Fetcher {
    pub(crate) fn new(
        target: TrustedTarget,
        entry: UpdateEntry,
        content_urls: Vec<String>,
        layer_urls: Vec<String>,
        context: PeerContext,
        config: PeerDownloadConfig,
    ) -> Self {
        let (more_sender, more) = mpsc::channel(256);
        Self { target, entry, content_urls, layer_urls, context, config, more, more_sender }
    }

    /// Every piece into the cache entry, each verified against the signed root: what [`PeerDownload::run`] does
    /// before custody-install's whole-file check (the cache server's path checks the whole file for caching,
    /// `crate::cache_server`).
    pub(crate) async fn fetch_pieces(&mut self, candidates: Vec<PeerCandidate>) -> Result<FetchedPieces, Error> {
        // The channel of candidates found later closes when the caller's senders are gone: drop ours.
        let more = std::mem::replace(&mut self.more, mpsc::channel(1).1);
        self.more_sender = mpsc::channel(1).0;
        let (fetcher, context, config) = (&*self, &self.context, &self.config);
        let path = fetcher.target.path().to_owned();
        let content_info = fetcher.entry.content();
        let Some(tree) = content_info.piece_tree() else { return Err(Error::NoPieces { path }) };
        let Some(sha256) = fetcher.target.file().sha256().map(str::to_ascii_lowercase) else {
            return Err(Error::ContentMismatch { path, field: "sha256" });
        };
        if sha256 != content_info.sha256.to_string() {
            return Err(Error::ContentMismatch { path, field: "sha256" });
        }
        if fetcher.target.file().length != content_info.length.get() {
            return Err(Error::ContentMismatch { path, field: "length" });
        }
        let content = ContentId::from(content_info.sha256);

        let peering = match (&context.tls, config.mode) {
            (_, DownloadMode::HttpOnly | DownloadMode::Bypass) => Err(format!("download mode {}", config.mode)),
            (None, _) => Err("the device has no certificate for peer connections".to_owned()),
            (Some(_), mode) => {
                let policy = PeerPolicy { download_mode: mode, ..config.policy.clone() };
                policy
                    .may_download_from_peers(tree.layout().length().get(), &config.resources)
                    .map_err(|r| r.to_string())
            }
        };
        let tls = match &peering {
            Ok(()) => context.tls.clone(),
            Err(why) => {
                tracing::info!(target = %path, why = %why, "downloading over HTTP only");
                None
            }
        };
        let own_device = context.tls.as_ref().map(|tls| tls.own_identity().device_id.clone());
        let allowed_kind = |kind: PeerKind| config.mode.allows(kind);
        let candidates: Vec<PeerCandidate> = match tls {
            Some(_) => candidates
                .into_iter()
                .filter(|c| allowed_kind(c.kind) && (c.device.is_none() || c.device != own_device))
                .collect(),
            None => Vec::new(),
        };
        context.gate.learn(&candidates);

        let mut banned_devices = HashSet::new();
        let hashes = fetcher.layer(&tree, content, tls.as_ref(), &candidates, &mut banned_devices).await?;
        let entry = context.cache.begin(content, hashes.clone())?;
        let fill = entry.fill().await;
        let verifying = entry.clone();
        let have = tokio::task::spawn_blocking(move || verifying.reverify()).await.map_err(join_error)??;
        let resumed_pieces = have.count();
        if resumed_pieces > 0 {
            tracing::info!(target = %path, pieces = resumed_pieces, of = have.len(), "resuming from verified pieces");
        }

        let (events_sender, events) = mpsc::channel(1024);
        if tls.is_some() {
            entry.set_download(Some(events_sender.clone()));
        }
        let _unregister = Unregister(entry.clone());
        let now = Instant::now();
        let rate = config.policy.download_rate(config.foreground);
        let mut state = State {
            fetcher,
            context,
            config,
            entry: entry.clone(),
            swarm: Swarm::new(
                hashes,
                have,
                SwarmConfig {
                    share_key: own_device.as_deref().map(custody_p2p::swarm::share_key),
                    ..config.swarm.clone()
                },
                now,
            )?,
            tls,
            own_device,
            events_sender,
            pids: HashMap::new(),
            sessions: HashMap::new(),
            active: HashMap::new(),
            reports: HashMap::new(),
            banned_devices,
            pending: candidates.into_iter().map(|c| (c, now)).collect(),
            attempts: HashMap::new(),
            kinds: HashMap::new(),
            connecting: HashSet::new(),
            connects: JoinSet::new(),
            http: JoinSet::new(),
            http_tasks: HashMap::new(),
            writes: JoinSet::new(),
            http_sources: fetcher.content_urls.iter().map(|url| HttpSource::new(url)).collect(),
            limiter: RateLimiter::new(rate, crate::node::BURST, now),
            throttle_until: None,
            last_progress: now,
            alone_since: None,
            connect_failures: Vec::new(),
        };
        if !entry.is_complete() {
            state.run(events, more).await?;
        }
        let stats = *state.swarm.stats();
        let counters = *state.swarm.counters();
        let peers = state.reports.into_values().collect();
        let connect_failures = state.connect_failures;
        Ok(FetchedPieces {
            entry,
            fill,
            stats,
            counters,
            peers,
            connect_failures,
            resumed_pieces,
            peering: peering.err(),
        })
    }

    /// The piece layer, checked against the signed root: from the cache, the layer URLs, else a peer.
    pub(crate) async fn layer(
        &self,
        tree: &PieceTree,
        content: ContentId,
        tls: Option<&PeerTlsConfig>,
        candidates: &[PeerCandidate],
        banned: &mut HashSet<String>,
    ) -> Result<PieceHashes, Error> {
        let (context, config) = (&self.context, &self.config);
        if let Some(entry) = context.cache.get(&content)
            && entry.tree() == tree
        {
            return Ok(entry.hashes().clone());
        }
        let mut failures = Vec::new();
        let limit = tree.layout().piece_count().saturating_mul(32);
        for url in &self.layer_urls {
            let client = match (url.starts_with("https://"), &context.pinned) {
                (true, Some(pinned)) => pinned,
                (true, None) => {
                    failures.push(format!("{url}: https needs the pinned client"));
                    continue;
                }
                (false, _) => &context.plain,
            };
            let fetched = fetch(client, url, None, limit, config.http_request_timeout, config.http_idle_timeout).await;
            match fetched.and_then(|bytes| custody_p2p::layer::verify_layer(tree, &bytes).map_err(|e| e.to_string())) {
                Ok(hashes) => {
                    tracing::debug!(%url, "piece layer over HTTP");
                    return Ok(hashes);
                }
                Err(why) => failures.push(format!("{url}: {why}")),
            }
        }
        if let Some(tls) = tls {
            for candidate in candidates {
                match session::fetch_layer(candidate.addr, tls, content, *tree.layout(), config.timeouts).await {
                    Ok((identity, bytes)) => match custody_p2p::layer::verify_layer(tree, &bytes) {
                        Ok(hashes) => {
                            tracing::info!(peer = %identity, addr = %candidate.addr, "piece layer from a peer");
                            return Ok(hashes);
                        }
                        Err(err) => {
                            tracing::warn!(peer = %identity, addr = %candidate.addr, error = %err, "bad piece layer; banned");
                            failures.push(format!("peer {} at {}: {err}", identity.device_id, candidate.addr));
                            banned.insert(identity.device_id);
                        }
                    },
                    Err(err) => failures.push(format!("peer at {}: {err}", candidate.addr)),
                }
            }
        }
        Err(Error::NoLayer { path: self.target.path().to_owned(), failures })
    }
}

/// What [`Fetcher::fetch_pieces`] leaves: the cache entry holding every piece, verified piece by piece, and the
/// download's figures ([`DownloadOutcome`] without the artifact).
pub(crate) struct FetchedPieces {
    pub entry: Arc<CacheEntry>,
    /// The entry's fill right ([`CacheEntry::fill`]): keep it until the whole-file check is done.
    pub fill: tokio::sync::OwnedMutexGuard<()>,
    pub stats: TransferStats,
    pub counters: SwarmCounters,
    pub peers: Vec<PeerReport>,
    pub connect_failures: Vec<String>,
    pub resumed_pieces: u32,
    pub peering: Option<String>,
}

/// Clears the entry's download registration when the download ends, however it ends.
struct Unregister(Arc<CacheEntry>);

impl Drop for Unregister {
    fn drop(&mut self) {
        self.0.set_download(None);
    }
}

/// Piece writes in flight at once ([`State::writes`]).
const MAX_WRITES: usize = 16;

/// The running download.
struct State<'a> {
    fetcher: &'a Fetcher,
    context: &'a PeerContext,
    config: &'a PeerDownloadConfig,
    entry: Arc<CacheEntry>,
    swarm: Swarm,
    /// `None`: HTTP only.
    tls: Option<PeerTlsConfig>,
    own_device: Option<String>,
    events_sender: mpsc::Sender<Event>,
    /// One id per device for this content, so that a ban outlives its connection.
    pids: HashMap<String, PeerId>,
    /// Every session that opened, by session id.
    sessions: HashMap<u64, SessionInfo>,
    /// The session each connected peer uses.
    active: HashMap<PeerId, u64>,
    reports: HashMap<PeerId, PeerReport>,
    banned_devices: HashSet<String>,
    /// Candidates to connect to, each not before its instant.
    pending: VecDeque<(PeerCandidate, Instant)>,
    attempts: HashMap<SocketAddr, u32>,
    /// The kind of each address connected to, as its candidate said.
    kinds: HashMap<SocketAddr, PeerKind>,
    connecting: HashSet<SocketAddr>,
    connects: JoinSet<(PeerCandidate, Result<Established, ConnectError>)>,
    http: JoinSet<HttpDone>,
    /// Verified pieces being written (and the sidecar saved) off the event loop, so that a slow disk or a sync
    /// does not hold up the peers; each piece is announced once it is written.
    writes: JoinSet<Result<(), Error>>,
    http_tasks: HashMap<(usize, u32), AbortHandle>,
    http_sources: Vec<HttpSource>,
    limiter: RateLimiter,
    throttle_until: Option<Instant>,
    last_progress: Instant,
    /// Since when no peer is connected, being connected to or waiting to be (HTTP opens more requests after a while).
    alone_since: Option<Instant>,
    connect_failures: Vec<String>,
}

struct SessionInfo {
    pid: PeerId,
    device: String,
    addr: SocketAddr,
    inbound: bool,
    commands: mpsc::Sender<Command>,
}

struct HttpSource {
    url: String,
    in_flight: usize,
    failures: u32,
    retry_at: Option<Instant>,
    /// Why it was given up.
    dead: Option<String>,
}

struct HttpDone {
    source: usize,
    piece: u32,
    result: Result<Bytes, String>,
}

impl HttpSource {
    fn new(url: &str) -> Self {
        Self { url: url.to_owned(), in_flight: 0, failures: 0, retry_at: None, dead: None }
    }
}

impl State<'_> {
    async fn run(
        &mut self,
        mut events: mpsc::Receiver<Event>,
        mut more: mpsc::Receiver<PeerCandidate>,
    ) -> Result<(), Error> {
        let mut more_open = true;
        loop {
            self.schedule(Instant::now()).await?;
            if self.swarm.is_complete() {
                break;
            }
            self.check_stuck(Instant::now())?;
            let wakeup = self.next_wakeup(Instant::now());
            tokio::select! {
                Some(event) = events.recv() => self.event(event).await?,
                Some(done) = self.http.join_next(), if !self.http.is_empty() => {
                    // An error is an abort (a cancel from the swarm), whose bookkeeping was done then.
                    if let Ok(done) = done {
                        self.http_done(done).await?;
                    }
                }
                Some(written) = self.writes.join_next(), if !self.writes.is_empty() => written.map_err(join_error)??,
                Some(connected) = self.connects.join_next(), if !self.connects.is_empty() => {
                    if let Ok((candidate, result)) = connected {
                        self.connected(candidate, result);
                    }
                }
                candidate = more.recv(), if more_open => match candidate {
                    Some(candidate) => self.add_candidate(candidate),
                    None => more_open = false,
                },
                () = tokio::time::sleep_until(wakeup.into()) => {}
            }
        }
        // Every piece written: the last Have goes out with the last write and announces completion. Then stop what
        // is still in flight.
        while let Some(written) = self.writes.join_next().await {
            written.map_err(join_error)??;
        }
        self.http.abort_all();
        for info in self.active.values().filter_map(|id| self.sessions.get(id)) {
            for piece in self.swarm.peer_requests(info.pid) {
                let _ = info.commands.try_send(Command::Cancel(*piece));
            }
        }
        Ok(())
    }

    /// Applies the swarm's timeouts, then hands out requests to peers and HTTP sources and opens connections.
    async fn schedule(&mut self, now: Instant) -> Result<(), Error> {
        for action in self.swarm.poll(now) {
            self.apply(action);
        }
        if self.swarm.is_complete() {
            return Ok(());
        }
        let throttled = self.throttle_until.is_some_and(|until| now < until);
        if !throttled {
            let peers: Vec<(PeerId, u64)> = self.active.iter().map(|(pid, id)| (*pid, *id)).collect();
            for (pid, id) in peers {
                let Some(info) = self.sessions.get(&id) else { continue };
                for piece in self.swarm.next_peer_requests(pid, now) {
                    let _ = info.commands.try_send(Command::Request(piece));
                }
            }
            // Requests another peer took over are cancelled where they wait, before they are served.
            for action in self.swarm.poll(now) {
                self.apply(action);
            }
            for source in 0..self.http_sources.len() {
                self.start_http(source, now);
            }
        }
        self.connect_more(now);
        Ok(())
    }

    fn start_http(&mut self, source: usize, now: Instant) {
        loop {
            // In a swarm the origin's bandwidth is shared by its devices anyway: one request at a time per source
            // brings each piece in sooner for the peers, and the first ones at all. Alone means no peer connected,
            // being connected to or waiting to be.
            let alone = self.swarm.share_members() == 1 && self.connecting.is_empty() && self.pending.is_empty();
            self.alone_since = match alone {
                true => Some(self.alone_since.unwrap_or(now)),
                false => None,
            };
            let parallel = match self.alone_since {
                Some(since) if now >= since + self.config.http_alone_after => self.config.http_parallel,
                _ => 1,
            };
            let state = &self.http_sources[source];
            if state.dead.is_some() || state.in_flight >= parallel || state.retry_at.is_some_and(|at| now < at) {
                return;
            }
            let Some(piece) = self.swarm.next_http_request(source, now) else { return };
            let url = state.url.clone();
            let client = match (url.starts_with("https://"), &self.context.pinned) {
                (true, Some(pinned)) => pinned.clone(),
                (true, None) => {
                    self.swarm.request_failed(Source::Http(source), piece, now);
                    self.http_sources[source].dead = Some(format!("{url}: https needs the pinned client"));
                    return;
                }
                (false, _) => self.context.plain.clone(),
            };
            // The swarm only hands out indexes below the piece count.
            let range = self.entry.tree().layout().piece_range(u64::from(piece)).unwrap_or(0..0);
            let (request_timeout, idle_timeout) = (self.config.http_request_timeout, self.config.http_idle_timeout);
            let handle = self.http.spawn(async move {
                let result = fetch_range(&client, &url, range, request_timeout, idle_timeout).await;
                HttpDone { source, piece, result }
            });
            tracing::trace!(source, piece, "piece requested over HTTP");
            self.http_tasks.insert((source, piece), handle);
            self.http_sources[source].in_flight += 1;
        }
    }

    fn connect_more(&mut self, now: Instant) {
        let Some(tls) = &self.tls else { return };
        let mut deferred = Vec::new();
        while self.connecting.len() + self.active.len() < self.config.max_peers {
            let Some((candidate, not_before)) = self.pending.pop_front() else { break };
            if not_before > now {
                deferred.push((candidate, not_before));
                continue;
            }
            let banned = candidate.device.as_ref().is_some_and(|device| self.banned_devices.contains(device));
            // Connected already: to this address, or to this device (it connected to us).
            let device = candidate.device.as_ref().and_then(|device| self.pids.get(device));
            let connected = device.is_some_and(|pid| self.active.contains_key(pid))
                || self.active.values().filter_map(|id| self.sessions.get(id)).any(|s| s.addr == candidate.addr);
            let attempts = self.attempts.entry(candidate.addr).or_insert(0);
            if banned || connected || self.connecting.contains(&candidate.addr) || *attempts >= self.config.max_attempts
            {
                continue;
            }
            *attempts += 1;
            self.connecting.insert(candidate.addr);
            self.kinds.insert(candidate.addr, candidate.kind);
            let (tls, hello, timeouts) = (tls.clone(), Hello::of(&self.entry), self.config.timeouts);
            let bind = self.config.bind;
            self.connects.spawn(async move {
                let result = session::connect(candidate.addr, bind, &tls, hello, timeouts).await;
                (candidate, result)
            });
        }
        self.pending.extend(deferred);
    }

    fn add_candidate(&mut self, candidate: PeerCandidate) {
        let allowed = self.config.mode.allows(candidate.kind);
        let own = candidate.device.is_some() && candidate.device == self.own_device;
        if self.tls.is_none() || !allowed || own {
            return;
        }
        self.context.gate.learn(std::slice::from_ref(&candidate));
        // A fresh offer (a matching refresh) earns fresh attempts.
        self.attempts.remove(&candidate.addr);
        self.pending.push_back((candidate, Instant::now()));
    }

    /// An outgoing connection finished its handshake (or failed).
    fn connected(&mut self, candidate: PeerCandidate, result: Result<Established, ConnectError>) {
        self.connecting.remove(&candidate.addr);
        match result {
            Ok(established) => {
                if let Some(expected) = &candidate.device
                    && *expected != established.identity.device_id
                {
                    tracing::warn!(
                        addr = %candidate.addr,
                        expected = %expected,
                        found = %established.identity.device_id,
                        "peer presented another device's certificate than the matching service named"
                    );
                }
                let (entry, events, gate) = (self.entry.clone(), self.events_sender.clone(), self.context.gate.clone());
                let timeouts = self.config.timeouts;
                // The session outlives the download when the other side still needs pieces (it serves them).
                tokio::spawn(session::run(established, entry, Some(events), gate, timeouts));
            }
            Err(err) => {
                tracing::info!(addr = %candidate.addr, error = %err, "cannot connect to peer");
                self.connect_failures.push(format!("peer at {}: {err}", candidate.addr));
                if let Some(device) = &candidate.device
                    && let Some(pid) = self.pids.get(device)
                    && let Some(report) = self.reports.get_mut(pid)
                {
                    report.closed = Some(err.to_string());
                }
                if matches!(err, ConnectError::Io(_) | ConnectError::Timeout) {
                    self.pending.push_back((candidate, Instant::now() + self.config.reconnect_delay));
                }
            }
        }
    }

    async fn event(&mut self, event: Event) -> Result<(), Error> {
        let now = Instant::now();
        match event {
            Event::Opened(peer) => self.opened(peer, now),
            Event::Received(id, incoming) => {
                let Some(pid) = self.current(id) else {
                    // A connection replaced or dropped; what it still sends is ignored.
                    return Ok(());
                };
                match incoming {
                    Incoming::Have(piece) => {
                        if let Err(err) = self.swarm.peer_have(pid, piece) {
                            self.violation(pid, &err.to_string());
                        }
                    }
                    Incoming::Piece(piece, data) => {
                        let received = self.swarm.piece_received(Source::Peer(pid), piece, &data, now);
                        if received == Received::Verified {
                            if let Some(report) = self.reports.get_mut(&pid) {
                                report.received += data.len() as u64;
                            }
                            tracing::trace!(peer = %pid, piece, "piece verified");
                            self.verified(piece, data, now).await?;
                        } else {
                            tracing::debug!(peer = %pid, piece, ?received, "piece from peer not taken");
                        }
                    }
                    Incoming::Reject(piece) => self.swarm.request_failed(Source::Peer(pid), piece, now),
                }
            }
            Event::Sent(bytes) => self.swarm.uploaded(bytes),
            Event::Closed(id, closed) => self.closed(id, closed, now),
        }
        Ok(())
    }

    /// A connection finished its handshake: it becomes the peer's connection, unless the device is banned, is this
    /// device, or already has one (then the connection opened by the device with the smaller id stays, on both
    /// sides alike).
    fn opened(&mut self, peer: Peer, now: Instant) {
        let device = peer.identity.device_id.clone();
        let close = |peer: &Peer, reason: GoodbyeReason| {
            let _ = peer.commands.try_send(Command::Close(reason));
        };
        if Some(&device) == self.own_device.as_ref() {
            return close(&peer, GoodbyeReason::Duplicate);
        }
        if self.banned_devices.contains(&device) {
            return close(&peer, GoodbyeReason::Banned);
        }
        let kind = match self.kinds.get(&peer.addr) {
            Some(kind) if !peer.inbound => *kind,
            _ => self.context.gate.kind_of(&peer.identity, peer.addr),
        };
        if !self.config.mode.allows(kind) {
            return close(&peer, GoodbyeReason::Busy);
        }
        let next = PeerId(self.pids.len() as u64 + 1);
        let pid = *self.pids.entry(device.clone()).or_insert(next);
        if self.swarm.is_banned(pid) {
            return close(&peer, GoodbyeReason::Banned);
        }
        if let Some(&existing) = self.active.get(&pid) {
            let existing_inbound = self.sessions.get(&existing).is_some_and(|s| s.inbound);
            let own = self.own_device.clone().unwrap_or_default();
            // The connection to keep is the one the smaller device id opened.
            let keep_inbound = device < own;
            if existing_inbound == peer.inbound || existing_inbound == keep_inbound {
                return close(&peer, GoodbyeReason::Duplicate);
            }
            if let Some(old) = self.sessions.get(&existing) {
                let _ = old.commands.try_send(Command::Close(GoodbyeReason::Duplicate));
            }
            self.swarm.remove_peer(pid);
            self.active.remove(&pid);
        }
        if let Err(err) = self.swarm.add_peer(pid, kind, now) {
            tracing::debug!(peer = %device, error = %err, "peer not added");
            return close(&peer, GoodbyeReason::Banned);
        }
        // `pid` was added just above.
        let _ = self.swarm.set_share_key(pid, custody_p2p::swarm::share_key(&device));
        tracing::debug!(peer = %device, addr = %peer.addr, %kind, inbound = peer.inbound, "peer joined the download");
        self.active.insert(pid, peer.id);
        self.reports.entry(pid).and_modify(|report| report.closed = None).or_insert(PeerReport {
            device: device.clone(),
            addr: peer.addr,
            kind,
            received: 0,
            banned: false,
            closed: None,
        });
        let bitfield_result = self.swarm.peer_bitfield(pid, peer.bitfield);
        self.sessions.insert(
            peer.id,
            SessionInfo { pid, device, addr: peer.addr, inbound: peer.inbound, commands: peer.commands },
        );
        if let Err(err) = bitfield_result {
            self.violation(pid, &err.to_string());
        }
    }

    /// The peer whose current connection is session `id`.
    fn current(&self, id: u64) -> Option<PeerId> {
        let info = self.sessions.get(&id)?;
        (self.active.get(&info.pid) == Some(&id)).then_some(info.pid)
    }

    fn closed(&mut self, id: u64, closed: Closed, now: Instant) {
        let Some(info) = self.sessions.remove(&id) else { return };
        let current = self.active.get(&info.pid) == Some(&id);
        if let Some(report) = self.reports.get_mut(&info.pid) {
            report.closed = Some(format!("{closed:?}"));
        }
        if !current {
            return;
        }
        if let Closed::Violation(why) = &closed {
            self.violation(info.pid, why);
        }
        self.swarm.remove_peer(info.pid);
        self.active.remove(&info.pid);
        let bad = self.banned_devices.contains(&info.device) || self.swarm.is_banned(info.pid);
        // Worth another try later: a connection that broke, or a peer that was busy or going away. Not one that
        // was done, a duplicate, or refused us.
        let retry = matches!(
            closed,
            Closed::Io(_)
                | Closed::Timeout
                | Closed::Goodbye(GoodbyeReason::Busy | GoodbyeReason::Shutdown | GoodbyeReason::Timeout)
        );
        if !info.inbound && !bad && retry && !self.swarm.is_complete() {
            let kind = self.reports.get(&info.pid).map_or(PeerKind::Lan, |r| r.kind);
            let candidate = PeerCandidate { addr: info.addr, kind, device: Some(info.device) };
            self.pending.push_back((candidate, now + self.config.reconnect_delay));
        }
    }

    /// A protocol violation by a peer: banned at once.
    fn violation(&mut self, pid: PeerId, why: &str) {
        let Some(report) = self.reports.get_mut(&pid) else { return };
        tracing::warn!(peer = %report.device, addr = %report.addr, why, "peer broke the protocol; banned");
        self.banned_devices.insert(report.device.clone());
        report.banned = true;
        self.swarm.ban(pid);
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Cancel { peer, piece } => {
                if let Some(info) = self.active.get(&peer).and_then(|id| self.sessions.get(id)) {
                    let _ = info.commands.try_send(Command::Cancel(piece));
                }
            }
            Action::CancelHttp { source, piece } => {
                if let Some(handle) = self.http_tasks.remove(&(source, piece)) {
                    handle.abort();
                    self.http_sources[source].in_flight -= 1;
                }
            }
            Action::Drop { peer, reason } => {
                if let Some(id) = self.active.remove(&peer)
                    && let Some(info) = self.sessions.get(&id)
                {
                    let _ = info.commands.try_send(Command::Close(reason.goodbye()));
                }
                self.swarm.remove_peer(peer);
                if let Some(report) = self.reports.get_mut(&peer) {
                    // A peer that timed out without ever delivering is silent: not tried again for this content. One
                    // that delivered before is only slow (its upload shared by many): dropped, and welcome again
                    // when it reconnects or is offered again.
                    let silent = report.received == 0;
                    match (reason, silent) {
                        (DropReason::Banned, _) | (DropReason::TimedOut, true) => {
                            tracing::warn!(peer = %report.device, addr = %report.addr, ?reason, "peer dropped and banned");
                            report.banned = true;
                            report.closed = Some(match reason {
                                DropReason::Banned => "banned for bad pieces".to_owned(),
                                DropReason::TimedOut => {
                                    "banned: its requests timed out and it never delivered".to_owned()
                                }
                            });
                            self.banned_devices.insert(report.device.clone());
                        }
                        (DropReason::TimedOut, false) => {
                            tracing::info!(peer = %report.device, addr = %report.addr, "slow peer dropped");
                            report.closed = Some("dropped: its requests timed out".to_owned());
                        }
                    }
                }
            }
        }
    }

    async fn http_done(&mut self, done: HttpDone) -> Result<(), Error> {
        let HttpDone { source, piece, result } = done;
        if self.http_tasks.remove(&(source, piece)).is_none() {
            return Ok(());
        }
        let now = Instant::now();
        let state = &mut self.http_sources[source];
        state.in_flight -= 1;
        match result {
            Ok(data) => match self.swarm.piece_received(Source::Http(source), piece, &data, now) {
                Received::Verified => {
                    let state = &mut self.http_sources[source];
                    state.failures = 0;
                    state.retry_at = None;
                    tracing::trace!(source, piece, "piece verified from HTTP");
                    self.verified(piece, data, now).await?;
                }
                Received::Corrupt { banned } | Received::Unexpected { banned } => {
                    let url = self.http_sources[source].url.clone();
                    tracing::warn!(%url, piece, banned, "HTTP source sent a piece that does not verify");
                    if banned {
                        self.http_sources[source].dead = Some(format!("{url}: sent pieces that do not verify"));
                    }
                }
                Received::Duplicate => {}
            },
            Err(why) => {
                self.swarm.request_failed(Source::Http(source), piece, now);
                state.failures += 1;
                state.retry_at = Some(now + Duration::from_millis(250) * state.failures);
                tracing::debug!(url = %state.url, piece, failures = state.failures, "HTTP piece request failed: {why}");
                if state.failures >= self.config.http_max_failures {
                    state.dead = Some(format!("{}: {why} ({} failures in a row)", state.url, state.failures));
                }
            }
        }
        Ok(())
    }

    /// A piece verified: written at its offset (which announces it to every connection of this content), counted
    /// against the download rate limit, and the sidecar saved every `save_every` pieces.
    async fn verified(&mut self, piece: u32, data: Bytes, now: Instant) -> Result<(), Error> {
        self.last_progress = now;
        let len = data.len() as u64;
        let entry = self.entry.clone();
        let save = entry.unsaved() + 1 >= self.config.save_every;
        // Writes in flight are bounded: a disk slower than the network holds the download back here.
        while self.writes.len() >= MAX_WRITES
            && let Some(written) = self.writes.join_next().await
        {
            written.map_err(join_error)??;
        }
        self.writes.spawn_blocking(move || {
            entry.write_piece(piece, &data)?;
            if save { entry.save() } else { Ok(()) }
        });
        let wait = self.limiter.take(len, now);
        if !wait.is_zero() {
            self.throttle_until = Some(now + wait);
        }
        Ok(())
    }

    /// Fails the download when it cannot make progress: no HTTP source left and no peer connected, connecting or
    /// to come; or no piece for `no_progress_timeout` without an HTTP source.
    fn check_stuck(&self, now: Instant) -> Result<(), Error> {
        let http_alive = self.http_sources.iter().any(|s| s.dead.is_none());
        if http_alive {
            return Ok(());
        }
        let peers_possible = !self.active.is_empty()
            || !self.connecting.is_empty()
            || self.pending.iter().any(|(c, _)| {
                self.attempts.get(&c.addr).is_none_or(|n| *n < self.config.max_attempts)
                    && !c.device.as_ref().is_some_and(|d| self.banned_devices.contains(d))
            });
        let stalled = now >= self.last_progress + self.config.no_progress_timeout;
        if peers_possible && !stalled {
            return Ok(());
        }
        let mut failures: Vec<String> = self.http_sources.iter().filter_map(|s| s.dead.clone()).collect();
        if self.fetcher.content_urls.is_empty() {
            failures.push("no HTTP source configured".to_owned());
        }
        for report in self.reports.values() {
            if report.banned || report.closed.is_some() {
                failures.push(format!(
                    "peer {} at {}: {}",
                    report.device,
                    report.addr,
                    report.closed.as_deref().unwrap_or("banned")
                ));
            }
        }
        failures.extend(self.connect_failures.iter().cloned());
        if self.reports.is_empty() {
            failures.push(match &self.tls {
                Some(_) => "no peer could be reached".to_owned(),
                None => "peers are not used for this download".to_owned(),
            });
        }
        if stalled {
            failures.push(format!("no piece arrived for {:?}", self.config.no_progress_timeout));
        }
        let have = self.swarm.have();
        Err(Error::Incomplete {
            path: self.fetcher.target.path().to_owned(),
            have: have.count(),
            count: have.len(),
            failures,
        })
    }

    /// When to look again without an event: the swarm's next timeout, the end of throttling, an HTTP retry or a
    /// deferred connection, at most a second from now.
    fn next_wakeup(&self, now: Instant) -> Instant {
        let retries = self.http_sources.iter().filter(|s| s.dead.is_none()).filter_map(|s| s.retry_at);
        let pending = self.pending.iter().map(|(_, at)| *at).filter(|at| *at > now);
        [self.swarm.next_wakeup(now), self.throttle_until]
            .into_iter()
            .flatten()
            .chain(retries)
            .chain(pending)
            .filter(|at| *at > now)
            .min()
            .unwrap_or(now + Duration::from_secs(1))
            .min(now + Duration::from_secs(1))
    }
}

/// One piece over HTTP: `Range: bytes=start-end` on `url`; the answer must be `206` for exactly that range (or `200`
/// when the range is the whole content), at most the piece's length.
async fn fetch_range(
    client: &reqwest::Client,
    url: &str,
    range: Range<u64>,
    request_timeout: Duration,
    idle_timeout: Duration,
) -> Result<Bytes, String> {
    let expected = range.end - range.start;
    let data = fetch(client, url, Some(range), expected, request_timeout, idle_timeout).await?;
    if (data.len() as u64) < expected {
        return Err(format!("the body ended after {} of {expected} bytes", data.len()));
    }
    Ok(data)
}

/// GET `url` (a `range` of it), reading at most `limit` bytes; the status must be 200, or 206 for exactly the range.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    range: Option<Range<u64>>,
    limit: u64,
    request_timeout: Duration,
    idle_timeout: Duration,
) -> Result<Bytes, String> {
    let mut request = client.get(url);
    if let Some(range) = &range {
        request = request.header(reqwest::header::RANGE, format!("bytes={}-{}", range.start, range.end - 1));
    }
    let mut response = match tokio::time::timeout(request_timeout, request.send()).await {
        Err(_) => return Err(format!("no response within {request_timeout:?}")),
        Ok(Err(err)) => return Err(crate::error_chain(&err)),
        Ok(Ok(response)) => response,
    };
    let status = response.status().as_u16();
    match (status, &range) {
        (200, None) => {}
        (200, Some(range)) if range.start == 0 && response.content_length() == Some(range.end) => {}
        (206, Some(range)) => {
            let expected = format!("bytes {}-{}/", range.start, range.end - 1);
            let found = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !found.starts_with(&expected) {
                return Err(format!("asked for {expected}, got Content-Range {found:?}"));
            }
        }
        (200, Some(_)) => return Err("the server ignored the Range request".to_owned()),
        _ => return Err(format!("HTTP {status}")),
    }
    let mut body = Vec::with_capacity(usize::try_from(limit.min(16 << 20)).unwrap_or(0));
    loop {
        let chunk = match tokio::time::timeout(idle_timeout, response.chunk()).await {
            Err(_) => return Err(format!("no data for {idle_timeout:?}")),
            Ok(Err(err)) => return Err(crate::error_chain(&err)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(format!("more than the expected {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// Makes `link` name the same file as `source` (a hard link), or a copy of it on another file system.
fn link_or_copy(source: &Path, link: &Path) -> Result<(), Error> {
    match std::fs::remove_file(link) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(Error::io("remove", link)(err)),
        _ => {}
    }
    match std::fs::hard_link(source, link) {
        Ok(()) => Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(source, link).map(|_| ()).map_err(Error::io("copy to", link))
        }
        Err(err) => Err(Error::io("link", link)(err)),
    }
}

fn join_error(err: tokio::task::JoinError) -> Error {
    Error::Io {
        action: "run a blocking task for",
        path: PathBuf::from("the download"),
        source: std::io::Error::other(err),
    }
}
