//! Peer-to-peer delivery at the I/O edge (docs/p2p-protocol.md): the decisions are custody-p2p's (wire codec,
//! `Swarm` scheduler, policies); this crate owns the sockets, files and clocks.
//!
//! - [`PeerNode`]: the listener on TCP 7680 (mutual TLS with device certificates, custody-tls's
//!   [`PeerTlsConfig`](custody_tls::PeerTlsConfig)) serving the pieces of complete and partial downloads from the
//!   [`PeerCache`], through the [`UploadGate`] (upload rate limit, monthly cap, battery, RAM and disk minimums).
//! - [`PeerDownload`]: one signed target with a piece tree: gets the piece layer (origin, else a peer) and checks it
//!   against the signed root, resumes from the pieces already verified, connects to peers, runs the `Swarm`, fetches
//!   pieces over HTTP `Range` in parallel, writes verified pieces at their offsets and announces them, bans peers the
//!   swarm bans, and ends with custody-install's whole-file check, which makes the
//!   [`VerifiedArtifact`](custody_install::VerifiedArtifact).
//! - [`CacheServer`]: the cache-server role (Delivery Optimization's Connected Cache): content a device of the group
//!   asks for and the cache lacks is resolved to a signed target through a [`ContentResolver`] (the agent's TUF
//!   client), fetched over HTTP piece by piece, verified, served while it arrives, and checked whole
//!   ([`CachedContent`], never a `VerifiedArtifact`).
//! - [`discovery`]: the service's peer matching (`POST /device/v1/peers`) and DNS-SD/mDNS on the LAN.
//!
//! Trust: a peer is authenticated by its device certificate, but nothing it sends is trusted. The piece layer is
//! checked against the root in the signed catalog entry, every piece against the layer before it is written,
//! counted or offered, and the whole file against the signed SHA-256 (and every other signed hash) before it becomes
//! a `VerifiedArtifact`. A piece is served only after it is read back and verified again.
//!
//! A device enrolled with a token instead of a client certificate has no peer identity: its downloads run with
//! [`PeerContext::tls`] `None`, which is HTTP only (still piece by piece, resumable, verified).

mod cache;
mod cache_server;
pub mod discovery;
mod download;
mod node;
mod session;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use cache::{CacheEntry, CacheEntryInfo, PeerCache};
pub use cache_server::{CacheJob, CacheServer, CacheServerStats, CachedContent, ContentResolver, ResolveFuture};
pub use discovery::{Announcement, LanAdvertisement, LanBrowser, LanDiscovery, LanPeer, MatchingClient};
pub use download::{DownloadOutcome, PeerContext, PeerDownload, PeerDownloadConfig, PeerJob, PeerReport};
pub use node::{NodeStats, PeerNode, PeerNodeConfig, UploadGate};
pub use session::Timeouts;

/// A peer to try: where it listens, how it was found (which decides the statistics and which modes allow it), and
/// the device id the matching service or mDNS named (its certificate must carry it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerCandidate {
    pub addr: SocketAddr,
    pub kind: custody_p2p::PeerKind,
    pub device: Option<String>,
}

/// Everything that can go wrong in custody-peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },

    #[error("target {path}: its signed catalog entry has no piece tree, so it cannot be fetched piece by piece")]
    NoPieces { path: String },

    #[error("target {path}: the catalog entry's content {field} differs from the signed target's")]
    ContentMismatch { path: String, field: &'static str },

    #[error("target {path}: no source supplied a piece layer matching the signed root: {}", failures.join("; "))]
    NoLayer { path: String, failures: Vec<String> },

    #[error(
        "target {path}: the download cannot complete ({have} of {count} pieces verified): every source failed: {}",
        failures.join("; ")
    )]
    Incomplete { path: String, have: u32, count: u32, failures: Vec<String> },

    #[error("peer cache entry {content}: {reason}")]
    Cache { content: custody_p2p::ContentId, reason: String },

    #[error("peer matching at {url}: {reason}")]
    Matching { url: String, reason: String },

    #[error("download mode {0} does not ask the matching service for peers")]
    ModeTakesNoMatching(custody_p2p::DownloadMode),

    #[error("mDNS: {0}")]
    Mdns(String),

    #[error(transparent)]
    P2p(#[from] custody_p2p::Error),

    #[error(transparent)]
    Install(#[from] custody_install::Error),

    #[error(transparent)]
    Tls(#[from] custody_tls::Error),
}

impl Error {
    /// A closure mapping an `io::Error` to [`Error::Io`] for `action` on `path`.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { action, path, source }
    }
}

/// An error and its causes on one line (reqwest hides the interesting part in its sources).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

/// Makes the names in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("sync directory", dir))
}
