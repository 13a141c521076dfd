//! [`PeerNode`]: the listener other devices download from, and [`UploadGate`]: the upload policy every connection
//! serves through (the listener's and the downloads' own).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use custody_p2p::{DeviceResources, GoodbyeReason, PeerKind, PeerPolicy, RateLimiter, Refusal};
use custody_tls::{PeerIdentity, PeerTlsConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cache::PeerCache;
use crate::cache_server::CacheServer;
use crate::session::{self, Timeouts};
use crate::{Error, PeerCandidate};

/// Where and how the listener runs.
#[derive(Clone, Debug)]
pub struct PeerNodeConfig {
    /// Default `0.0.0.0:7680` (Delivery Optimization's port).
    pub listen: SocketAddr,
    /// Connections served at once; further connections are closed right after they are accepted. Default 64.
    pub max_connections: usize,
    pub timeouts: Timeouts,
    /// The cache-server role: content a connecting device names and the cache lacks is fetched for it (a signed
    /// target the [`CacheServer`]'s resolver names) instead of being refused. Default `None`.
    pub cache_server: Option<Arc<CacheServer>>,
}

impl Default for PeerNodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], custody_p2p::wire::DEFAULT_PORT)),
            max_connections: 64,
            timeouts: Timeouts::default(),
            cache_server: None,
        }
    }
}

/// The peer listener (TCP 7680 by default, mutual TLS with device certificates). It serves the pieces the
/// [`PeerCache`] holds (complete and partial downloads) through the [`UploadGate`], and hands incoming connections
/// for content being downloaded to that download, which then also takes pieces from them.
///
/// Every connection is bounded: at most `max_connections` at once, a handshake timeout (TLS and protocol), an idle
/// timeout, a write timeout, frames bounded by the content's piece size (the wire decoder), at most
/// `MAX_QUEUED_REQUESTS` requests queued. Dropping the node stops the listener and every connection it accepted.
pub struct PeerNode {
    local_addr: SocketAddr,
    shared: Arc<NodeShared>,
    task: tokio::task::JoinHandle<()>,
}

/// Counters of a running node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeStats {
    /// TCP connections accepted.
    pub accepted: u64,
    /// Connections closed at once for lack of a free slot.
    pub refused_busy: u64,
    /// Connections that failed their TLS or protocol handshake (certificate refused, unknown content, timeout).
    pub failed_handshakes: u64,
    /// Connections that completed the handshake.
    pub sessions: u64,
}

struct NodeShared {
    tls: RwLock<PeerTlsConfig>,
    cache: Arc<PeerCache>,
    gate: Arc<UploadGate>,
    timeouts: Timeouts,
    cache_server: Option<Arc<CacheServer>>,
    accepted: AtomicU64,
    refused_busy: AtomicU64,
    failed_handshakes: AtomicU64,
    sessions: AtomicU64,
}

impl PeerNode {
    /// Binds the listener and starts serving on the current tokio runtime.
    pub async fn start(
        config: PeerNodeConfig,
        tls: PeerTlsConfig,
        cache: Arc<PeerCache>,
        gate: Arc<UploadGate>,
    ) -> Result<Self, Error> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(Error::io("listen on", PathBuf::from(config.listen.to_string())))?;
        let local_addr = listener.local_addr().map_err(Error::io("listen on", PathBuf::from("listener")))?;
        let shared = Arc::new(NodeShared {
            tls: RwLock::new(tls),
            cache,
            gate,
            timeouts: config.timeouts,
            cache_server: config.cache_server,
            accepted: AtomicU64::new(0),
            refused_busy: AtomicU64::new(0),
            failed_handshakes: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
        });
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let task = tokio::spawn(Self::accept_loop(listener, shared.clone(), permits));
        tracing::info!(%local_addr, "peer listener started");
        Ok(Self { local_addr, shared, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the TLS configuration for new connections (a renewed device certificate, fresh CRLs).
    pub fn set_tls(&self, tls: PeerTlsConfig) {
        *self.shared.tls.write().unwrap_or_else(PoisonError::into_inner) = tls;
    }

    pub fn stats(&self) -> NodeStats {
        let shared = &self.shared;
        NodeStats {
            accepted: shared.accepted.load(Ordering::Relaxed),
            refused_busy: shared.refused_busy.load(Ordering::Relaxed),
            failed_handshakes: shared.failed_handshakes.load(Ordering::Relaxed),
            sessions: shared.sessions.load(Ordering::Relaxed),
        }
    }

    async fn accept_loop(listener: TcpListener, shared: Arc<NodeShared>, permits: Arc<Semaphore>) {
        // Owning the sessions here means dropping the node (aborting this task) ends them all.
        let mut sessions = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            };
            let (tcp, addr) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "peer listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            shared.accepted.fetch_add(1, Ordering::Relaxed);
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                shared.refused_busy.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%addr, "peer listener: connection limit reached; closed");
                continue;
            };
            let shared = shared.clone();
            sessions.spawn(async move {
                let _permit = permit;
                let tls = shared.tls.read().unwrap_or_else(PoisonError::into_inner).clone();
                let cache_server = shared.cache_server.as_ref();
                match session::accept(tcp, addr, &tls, &shared.cache, cache_server, shared.timeouts).await {
                    Ok((established, entry)) => {
                        shared.sessions.fetch_add(1, Ordering::Relaxed);
                        let peer = established.identity.clone();
                        tracing::debug!(%addr, %peer, content = %entry.content(), "peer connected");
                        let events = entry.download();
                        let kind = shared.gate.kind_of(&peer, addr);
                        if events.is_none()
                            && let Err(refusal) = shared.gate.check(kind)
                        {
                            // Nothing to take from this peer and nothing to give it now: say so at once.
                            tracing::debug!(%addr, %peer, %refusal, "no uploads now; connection refused");
                            session::refuse(established, GoodbyeReason::Busy, shared.timeouts).await;
                            return;
                        }
                        session::run(established, entry, events, shared.gate.clone(), shared.timeouts).await;
                    }
                    Err(err) => {
                        shared.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%addr, error = %err, "peer connection refused");
                    }
                }
            });
        }
    }
}

impl Drop for PeerNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The upload policy of the device, shared by every connection that serves pieces: Delivery Optimization's
/// decisions ([`PeerPolicy::may_upload`]: the mode allows the peer's kind, RAM and disk minimums, no uploads on
/// battery below the set charge, the monthly cap to internet peers), the upload rate limit (a token bucket), and the
/// bytes uploaded this calendar month (UTC), kept in a small state file so the cap survives restarts.
#[derive(Debug)]
pub struct UploadGate {
    policy: PeerPolicy,
    resources: Mutex<DeviceResources>,
    limiter: tokio::sync::Mutex<RateLimiter>,
    month: Mutex<MonthCounter>,
    state_file: Option<PathBuf>,
    /// Device ids and the kind the matching service (or discovery) reported them as.
    kinds: Mutex<HashMap<String, PeerKind>>,
    uploaded: AtomicU64,
    /// Pieces being sent at once, over every connection ([`UPLOAD_SLOTS`]).
    slots: Arc<Semaphore>,
}

/// Bytes uploaded in one calendar month.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MonthCounter {
    /// `YYYY-MM`, UTC.
    month: String,
    /// To internet peers (the cap counts these).
    internet: u64,
    /// To any peer.
    total: u64,
    /// Bytes counted since the file was last written.
    #[serde(skip)]
    unsaved: u64,
}

/// The burst of the rate limiters (upload, and download in custody-peer's downloads): a piece larger than this is
/// sent at once and paid for by waiting afterwards, so the average rate holds.
pub(crate) const BURST: u64 = 64 << 10;

/// Pieces a device sends at once, whatever the number of connections (BitTorrent's unchoke slots): the upload link
/// is shared by a few fast transfers instead of one slow one per peer, which a shared queue treats unevenly (stalled
/// connections, retransmissions, peers timing out). Each connection waits for a slot, first come first served, and
/// holds it until its piece is written out.
pub(crate) const UPLOAD_SLOTS: usize = 4;

/// How many uploaded bytes may go uncounted on disk (a crash loses at most this much of the monthly count).
const SAVE_EVERY: u64 = 64 << 20;

impl UploadGate {
    /// A gate for `policy`, with the device's current `resources`; the monthly count is kept in `state_file` (read
    /// now if it exists).
    pub fn new(policy: PeerPolicy, resources: DeviceResources, state_file: Option<&Path>) -> Result<Arc<Self>, Error> {
        let month = match state_file {
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                    tracing::warn!(path = %path.display(), error = %err, "unreadable upload counter; starting at 0");
                    MonthCounter::default()
                }),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => MonthCounter::default(),
                Err(err) => return Err(Error::io("read", path)(err)),
            },
            None => MonthCounter::default(),
        };
        let limiter = RateLimiter::new(policy.max_upload_rate, BURST, Instant::now());
        Ok(Arc::new(Self {
            policy,
            resources: Mutex::new(resources),
            limiter: tokio::sync::Mutex::new(limiter),
            month: Mutex::new(month),
            state_file: state_file.map(Path::to_owned),
            kinds: Mutex::new(HashMap::new()),
            uploaded: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
        }))
    }

    /// Updates what the device is and has now (battery, free disk), measured by the caller.
    pub fn set_resources(&self, resources: DeviceResources) {
        *lock(&self.resources) = resources;
    }

    /// What the device is and has, as last measured.
    pub(crate) fn resources(&self) -> DeviceResources {
        *lock(&self.resources)
    }

    /// Remembers the kind of peers the matching service or discovery reported, so that their incoming connections
    /// are judged as that kind.
    pub fn learn(&self, candidates: &[PeerCandidate]) {
        let mut kinds = lock(&self.kinds);
        for candidate in candidates {
            if let Some(device) = &candidate.device {
                kinds.insert(device.clone(), candidate.kind);
            }
        }
    }

    /// Bytes uploaded to internet peers and to all peers this calendar month.
    pub fn uploaded_this_month(&self) -> (u64, u64) {
        let mut month = lock(&self.month);
        month.roll(&current_month());
        (month.internet, month.total)
    }

    /// Bytes uploaded since the gate was made.
    pub fn uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// Writes the monthly counter to its state file.
    pub fn save(&self) -> Result<(), Error> {
        let Some(path) = &self.state_file else { return Ok(()) };
        let json = {
            let mut month = lock(&self.month);
            month.unsaved = 0;
            // Invariant: a struct of strings and integers always serialises.
            serde_json::to_vec(&*month).unwrap_or_default()
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path)).map_err(Error::io("write", path))
    }

    /// The kind a connected peer is judged as: what the matching service said of its device, else by its address
    /// (loopback, private, link-local and unique-local addresses are the LAN, anything else the internet).
    pub(crate) fn kind_of(&self, identity: &PeerIdentity, addr: SocketAddr) -> PeerKind {
        if let Some(kind) = lock(&self.kinds).get(&identity.device_id) {
            return *kind;
        }
        let local = match addr.ip() {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
            IpAddr::V6(v6) => {
                v6.is_loopback() || (v6.segments()[0] & 0xffc0) == 0xfe80 || (v6.segments()[0] & 0xfe00) == 0xfc00
            }
        };
        if local { PeerKind::Lan } else { PeerKind::Internet }
    }

    /// Whether uploads to a peer of `kind` are allowed now ([`PeerPolicy::may_upload`]): never in modes 0, 99 and
    /// 100, which do not peer.
    pub(crate) fn check(&self, kind: PeerKind) -> Result<(), Refusal> {
        let resources = *lock(&self.resources);
        let (internet, _) = self.uploaded_this_month();
        self.policy.may_upload(&resources, kind, internet)
    }

    /// Waits until `bytes` may be sent to a peer of `kind` (the upload rate limit), or refuses ([`UploadGate::check`]).
    /// One of the [`UPLOAD_SLOTS`], held while a piece is sent.
    pub(crate) async fn slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        // The semaphore is never closed.
        self.slots.clone().acquire_owned().await.ok()
    }

    pub(crate) async fn permit(&self, kind: PeerKind, bytes: u64) -> Result<(), Refusal> {
        self.check(kind)?;
        let wait = self.limiter.lock().await.take(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Counts `bytes` sent to a peer of `kind`.
    pub(crate) fn record(&self, kind: PeerKind, bytes: u64) {
        self.uploaded.fetch_add(bytes, Ordering::Relaxed);
        let save = {
            let mut month = lock(&self.month);
            month.roll(&current_month());
            month.total += bytes;
            if kind == PeerKind::Internet {
                month.internet += bytes;
            }
            month.unsaved += bytes;
            month.unsaved >= SAVE_EVERY
        };
        if save && let Err(err) = self.save() {
            tracing::warn!(error = %err, "cannot save the monthly upload counter");
        }
    }
}

impl Drop for UploadGate {
    /// Saves the monthly count one last time.
    fn drop(&mut self) {
        if lock(&self.month).unsaved > 0
            && let Err(err) = self.save()
        {
            tracing::warn!(error = %err, "cannot save the monthly upload counter");
        }
    }
}

impl MonthCounter {
    /// Starts counting from zero when the month changed.
    fn roll(&mut self, current: &str) {
        if self.month != current {
            *self = Self { month: current.to_owned(), ..Self::default() };
        }
    }
}

/// The calendar month now, UTC, as `YYYY-MM`.
fn current_month() -> String {
    jiff::Timestamp::now().strftime("%Y-%m").to_string()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
