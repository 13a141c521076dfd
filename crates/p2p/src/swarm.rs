//! The scheduler of one download: which piece to ask whom for, and what to make of what arrives.
//!
//! The caller (the I/O layer) owns the connections and HTTP clients, assigns each peer connection a [`PeerId`]
//! (stable per device for this content, so that a ban outlives the connection), and tells the [`Swarm`] what
//! happens; the swarm answers with piece indexes to request and [`Action`]s to carry out. Rules:
//!
//! - **Every piece is verified** against the piece layer, itself checked against the signed root
//!   ([`crate::layer::verify_layer`]), before it counts: [`Swarm::piece_received`] returns [`Received::Verified`]
//!   only then, and only then does the caller write it, announce it with `Have` and count it.
//! - **Rarest first**: peers are asked for the missing pieces fewest connected peers have, ties broken by a random
//!   order fixed per download (seeded by [`SwarmConfig::seed`]), up to [`SwarmConfig::pipeline_depth`] requests
//!   and [`SwarmConfig::pipeline_bytes`] in flight per peer.
//! - **HTTP in parallel from the start, each piece from the origin about once**: every device of a swarm takes from
//!   HTTP only its *share* of the pieces no connected peer has, so that the devices starting together fetch disjoint
//!   pieces from the origin and exchange them ([`Swarm::next_http_request`]). Shares are rendezvous hashing over the
//!   device keys of the connected peers that are still downloading ([`share_key`], [`Swarm::set_share_key`]): a piece
//!   belongs to the device whose key, mixed with the piece's hash, weighs most, so every device computes the same
//!   owner from the same peers, and a peer joining or leaving moves only its own share. A device fetches its share
//!   heaviest first (the pieces that stay its own whatever other devices it has yet to meet) and, once the
//!   [`SwarmConfig::http_delay`] has passed, nothing else is left for HTTP, and its peers have had nothing it lacks for
//!   [`SwarmConfig::peer_rate_window`] (the owners left, or a peer list did not show them), the
//!   shares of others no peer has, the pieces it is next in line for first and each owner's last pieces first. A
//!   connected cache server owns every piece: its group's devices leave the origin to it. HTTP takes pieces peers
//!   have only when the peers are slow: they delivered less than [`SwarmConfig::min_peer_rate`] over
//!   [`SwarmConfig::peer_rate_window`] (after the delay) while HTTP's last piece came faster, or nothing for
//!   [`SwarmConfig::peer_stall_timeout`].
//! - **Late requests and the endgame**: a peer that has nothing else this device lacks is asked for a piece
//!   already requested elsewhere (one such copy at a time per peer), and once every missing piece is in flight
//!   (the endgame) HTTP too (under the rules above): up to [`SwarmConfig::endgame_max_requests`] sources per piece,
//!   those with the fewest requests and the oldest first, and only pieces whose request is late: older than
//!   [`SwarmConfig::endgame_patience`] times the usual time from request to verified piece in this download (at
//!   once before any piece came). In a swarm whose uplinks are all busy, a copy of a piece that is on time would
//!   only take a piece's worth of someone's upload from a device that needs it; at the start, when the first pieces
//!   wait in the queues of the few devices that had them first, the devices that got them next pass them on. The
//!   first copy that verifies wins and the others are cancelled ([`Action::Cancel`], [`Action::CancelHttp`]; a
//!   cancelled request still queued at a peer is never sent).
//! - **Slow or silent peers never stall the download**: a peer that delivers nothing within the request timeout
//!   ([`SwarmConfig::request_timeout`]) loses its requests to the pool (and to HTTP); after
//!   [`SwarmConfig::max_timeouts`] such timeouts in a row it is dropped ([`DropReason::TimedOut`]).
//! - **Bans**: a corrupt piece ([`Received::Corrupt`]), a piece of the wrong length or one never requested
//!   ([`Received::Unexpected`]) count against the source; at [`SwarmConfig::ban_after`] the peer is banned for this
//!   content ([`DropReason::Banned`]): its requests go back to the pool, its pieces no longer count, and
//!   [`Swarm::add_peer`] refuses it again. An HTTP source is banned the same way and gets no more requests.
//! - **Resume**: [`Swarm::new`] takes the pieces already verified on disk.
//!
//! Nothing here reads a clock: every call that depends on time takes `now`, and [`Swarm::next_wakeup`] says when
//! [`Swarm::poll`] has timeouts to apply.

use core::fmt;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use custody_catalog::pieces::PieceHashes;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::bitfield::Bitfield;
use crate::stats::TransferStats;
use crate::wire::{self, GoodbyeReason};

/// A peer connection's id, assigned by the I/O layer: the same for the same device within one download.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// How a peer was found, which decides the statistics it counts in and the download modes that allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    /// On the same LAN (same public address, or a shared subnet, or found by mDNS).
    Lan,
    /// In the same group, not on the LAN.
    Group,
    /// Anyone else on the internet.
    Internet,
    /// A cache server of the device's group.
    CacheServer,
}

impl fmt::Display for PeerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lan => "lan",
            Self::Group => "group",
            Self::Internet => "internet",
            Self::CacheServer => "cache-server",
        })
    }
}

/// Where a piece comes from: a peer connection, or one of the caller's HTTP sources (CDN bases, the origin), by its
/// index in the caller's list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Peer(PeerId),
    Http(usize),
}

/// The scheduler's settings. The defaults suit pieces of 256 KiB to 4 MiB on a LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmConfig {
    /// Requests in flight per peer: at most this many, and no more than `pipeline_bytes` of pieces (but at least
    /// two pieces). A deep queue at a busy peer only makes its requests wait, time out and come twice.
    pub pipeline_depth: usize,
    pub pipeline_bytes: u64,
    /// Requests in flight per cache server.
    pub cache_server_pipeline_depth: usize,
    /// A peer with requests in flight must deliver a piece within `max(request_timeout, request_timeout_per_mib ×
    /// piece MiB)` of its previous delivery (or of the request that found it idle).
    pub request_timeout: Duration,
    pub request_timeout_per_mib: Duration,
    /// Timeouts in a row after which a peer is dropped.
    pub max_timeouts: u32,
    /// Before this long since the start, HTTP takes only this device's share of the pieces no peer has; after it,
    /// also other devices' shares, and pieces peers have when the peers are slow (module documentation).
    pub http_delay: Duration,
    /// Peers that delivered less than this many bytes per second over `peer_rate_window` are slow: after the HTTP
    /// delay, HTTP also takes pieces they have, unless its own last piece came slower still.
    pub min_peer_rate: u64,
    pub peer_rate_window: Duration,
    /// When no peer has delivered a verified piece for this long, HTTP takes any missing piece, delay or not.
    pub peer_stall_timeout: Duration,
    /// A piece a peer rejected is not asked of that peer again for this long (unless it announces it again).
    pub reject_backoff: Duration,
    /// In the endgame, at most this many sources are asked for the same piece at once, and a second source only
    /// when the piece's request is older than this many times the usual time from request to verified piece (an
    /// average over the download; before any piece came, at once).
    pub endgame_max_requests: usize,
    pub endgame_patience: u32,
    /// Bad pieces (corrupt, wrong length, never requested) after which a source is banned for this content.
    pub ban_after: u32,
    /// Seeds the random order among equally rare pieces; the caller passes a random value, so that devices
    /// starting together ask their peers for different pieces.
    pub seed: u64,
    /// This device's key in the HTTP shares ([`share_key`] of its device id); `None` for a device without a peer
    /// identity, whose HTTP order then follows `seed`.
    pub share_key: Option<u64>,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        Self {
            pipeline_depth: 4,
            pipeline_bytes: 2 << 20,
            cache_server_pipeline_depth: 8,
            request_timeout: Duration::from_secs(10),
            request_timeout_per_mib: Duration::from_secs(4),
            max_timeouts: 2,
            http_delay: Duration::ZERO,
            min_peer_rate: 500 * 1024,
            peer_rate_window: Duration::from_secs(5),
            peer_stall_timeout: Duration::from_secs(15),
            reject_backoff: Duration::from_secs(5),
            endgame_max_requests: 2,
            endgame_patience: 2,
            ban_after: 3,
            seed: 0,
            share_key: None,
        }
    }
}

impl SwarmConfig {
    /// The time a source has to deliver a piece of `len` bytes.
    pub fn request_timeout(&self, len: u64) -> Duration {
        let mib = u32::try_from(len.div_ceil(1 << 20)).unwrap_or(u32::MAX);
        self.request_timeout.max(self.request_timeout_per_mib.saturating_mul(mib)).min(MAX_WAIT)
    }

    /// Every duration capped at [`MAX_WAIT`], so that adding one to an `Instant` cannot overflow.
    fn capped(mut self) -> Self {
        for duration in [
            &mut self.request_timeout,
            &mut self.request_timeout_per_mib,
            &mut self.http_delay,
            &mut self.peer_rate_window,
            &mut self.peer_stall_timeout,
            &mut self.reject_backoff,
        ] {
            *duration = (*duration).min(MAX_WAIT);
        }
        self
    }
}

/// The longest wait the scheduler counts with (longer settings mean "practically never"): ten years.
const MAX_WAIT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What became of a piece handed to [`Swarm::piece_received`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// It verified: write it at its offset, then send `Have` to the peers. Counted in the statistics.
    Verified,
    /// It failed verification; it was counted against the source and the piece is back in the pool. `banned`: this
    /// was the source's last chance ([`Action::Drop`] follows for a peer).
    Corrupt { banned: bool },
    /// Never requested from this source, or of the wrong length; counted against the source like a corrupt piece.
    Unexpected { banned: bool },
    /// Requested from this source and correct, but the piece was already verified from another (an endgame race, a
    /// late arrival after a timeout or cancel): dropped, not held against the source.
    Duplicate,
}

/// Something the caller must do, from [`Swarm::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `Cancel { piece }` to the peer: another source delivered the piece first.
    Cancel { peer: PeerId, piece: u32 },
    /// Abort the HTTP request of this source for the piece (another source delivered it, or it timed out).
    CancelHttp { source: usize, piece: u32 },
    /// Close the connection (sending `Goodbye` with [`DropReason::goodbye`]) and call [`Swarm::remove_peer`]. A
    /// banned peer must not be connected again for this content.
    Drop { peer: PeerId, reason: DropReason },
}

/// Why the swarm drops a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// It sent [`SwarmConfig::ban_after`] bad pieces, or the caller banned it ([`Swarm::ban`]).
    Banned,
    /// Its requests timed out [`SwarmConfig::max_timeouts`] times in a row.
    TimedOut,
}

impl DropReason {
    /// The reason to send in `Goodbye`.
    pub fn goodbye(self) -> GoodbyeReason {
        match self {
            Self::Banned => GoodbyeReason::Banned,
            Self::TimedOut => GoodbyeReason::Timeout,
        }
    }
}

/// Counts of what went wrong during a download, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmCounters {
    /// Pieces that failed verification.
    pub corrupt_pieces: u64,
    /// Pieces never requested from their source, or of the wrong length.
    pub unexpected_pieces: u64,
    /// Bytes of pieces that arrived after the piece was verified from another source.
    pub duplicate_bytes: u64,
    /// Requests that timed out.
    pub timed_out_requests: u64,
    /// Peers and HTTP sources banned.
    pub banned_sources: u64,
}

/// The scheduler of one download (module documentation).
#[derive(Debug)]
pub struct Swarm {
    hashes: PieceHashes,
    config: SwarmConfig,
    have: Bitfield,
    pieces: Vec<Piece>,
    /// The random order among equally rare pieces: `rank[piece]`.
    rank: Vec<u32>,
    /// Missing pieces with no request in flight, by (availability, rank, piece): rarest first.
    pool: BTreeSet<(u32, u32, u32)>,
    /// Missing pieces with at least one request in flight.
    in_flight: BTreeSet<u32>,
    peers: BTreeMap<PeerId, Peer>,
    banned: HashSet<PeerId>,
    http: Vec<Http>,
    actions: Vec<Action>,
    stats: TransferStats,
    counters: SwarmCounters,
    start: Instant,
    last_peer_progress: Instant,
    /// Verified pieces from peers within the last `peer_rate_window`: (when, bytes).
    peer_deliveries: VecDeque<(Instant, u64)>,
    /// Bytes per second of the last piece verified from HTTP, from its request to its arrival.
    http_rate: Option<u64>,
    /// The usual time from a piece's request to its verification: a moving average over the download.
    piece_latency: Option<Duration>,
    /// Who fetches which piece from HTTP; recomputed when the peers change.
    shares: Shares,
}

#[derive(Debug, Default)]
struct Piece {
    /// Connected peers that have the piece.
    availability: u32,
    /// Sources it is requested from now.
    requests: Vec<Source>,
    /// When the oldest of them was made.
    since: Option<Instant>,
    /// Its request was taken over from another peer (it moves once, so that two idle peers do not pass it back and
    /// forth).
    moved: bool,
}

#[derive(Debug)]
struct Peer {
    kind: PeerKind,
    bitfield: Bitfield,
    got_bitfield: bool,
    /// Requests in flight, oldest first.
    requests: Vec<u32>,
    /// The last delivery, or the request that found the peer idle: the request timeout runs from here.
    clock: Instant,
    /// Pieces requested before and no longer (timed out, cancelled, moved), with the number of such requests: a late
    /// copy of each is not unsolicited, even after the piece was asked of the peer again.
    past: HashMap<u32, u32>,
    /// Pieces the peer rejected, not asked again before the instant.
    rejected: HashMap<u32, Instant>,
    bad: u32,
    timeouts: u32,
    /// Banned or timed out: it gets no more requests and counts for nothing; waits for `remove_peer`.
    dropping: bool,
    /// Its key in the HTTP shares, once the I/O layer knows its device id.
    share_key: Option<u64>,
}

/// The HTTP shares of the pieces (module documentation), per piece.
#[derive(Debug, Default)]
struct Shares {
    /// The peers changed since the last computation.
    stale: bool,
    /// Devices of the swarm counted, this one included.
    members: usize,
    /// How many members weigh more than this device for the piece: 0 is this device's share.
    rank: Vec<u32>,
    /// This device's weight for the piece, and the owner's.
    own: Vec<u64>,
    owner: Vec<u64>,
    /// The owner is a cache server.
    cached: Vec<bool>,
}

#[derive(Debug, Default)]
struct Http {
    /// Requests in flight and their deadlines.
    requests: BTreeMap<u32, Instant>,
    /// When each request in flight was made.
    started: HashMap<u32, Instant>,
    past: HashSet<u32>,
    bad: u32,
    banned: bool,
}

impl Swarm {
    /// The scheduler for content whose piece layer was verified against the signed root (`hashes`), with the pieces
    /// already verified on disk (`have`, one bit per piece), started at `now`.
    pub fn new(hashes: PieceHashes, have: Bitfield, config: SwarmConfig, now: Instant) -> Result<Self, Error> {
        let count = wire::piece_count(hashes.tree().layout())?;
        if have.len() != count {
            return Err(Error::BitfieldCount { expected: count.into(), actual: have.len().into() });
        }
        let mut rank: Vec<u32> = (0..count).collect();
        let mut random = SplitMix64(config.seed);
        for i in (1..rank.len()).rev() {
            let j = (random.next() % (i as u64 + 1)) as usize;
            rank.swap(i, j);
        }
        let pool = have.iter_missing().map(|piece| (0, rank[piece as usize], piece)).collect();
        Ok(Self {
            hashes,
            config: config.capped(),
            have,
            pieces: (0..count).map(|_| Piece::default()).collect(),
            rank,
            pool,
            in_flight: BTreeSet::new(),
            peers: BTreeMap::new(),
            banned: HashSet::new(),
            http: Vec::new(),
            actions: Vec::new(),
            stats: TransferStats::default(),
            counters: SwarmCounters::default(),
            start: now,
            last_peer_progress: now,
            peer_deliveries: VecDeque::new(),
            http_rate: None,
            piece_latency: None,
            shares: Shares { stale: true, ..Shares::default() },
        })
    }

    /// A new peer connection (after the handshakes). Refused for a banned peer or an id already in use.
    pub fn add_peer(&mut self, peer: PeerId, kind: PeerKind, now: Instant) -> Result<(), Error> {
        if self.banned.contains(&peer) {
            return Err(Error::BannedPeer(peer));
        }
        if self.peers.contains_key(&peer) {
            return Err(Error::DuplicatePeer(peer));
        }
        let peer_state = Peer {
            kind,
            bitfield: Bitfield::new(self.have.len()),
            got_bitfield: false,
            requests: Vec::new(),
            clock: now,
            past: HashMap::new(),
            rejected: HashMap::new(),
            bad: 0,
            timeouts: 0,
            dropping: false,
            share_key: None,
        };
        self.peers.insert(peer, peer_state);
        self.shares.stale |= kind == PeerKind::CacheServer;
        Ok(())
    }

    /// The peer's key in the HTTP shares ([`share_key`] of the device id its certificate names): from now on it
    /// counts among the devices that share the origin's pieces, until it has every piece or leaves.
    pub fn set_share_key(&mut self, peer: PeerId, key: u64) -> Result<(), Error> {
        self.peer_mut(peer)?.share_key = Some(key);
        self.shares.stale = true;
        Ok(())
    }

    /// The connection is gone: its requests go back to the pool and its pieces no longer count. A ban stays.
    pub fn remove_peer(&mut self, peer: PeerId) {
        self.release_peer(peer);
        self.peers.remove(&peer);
    }

    /// The peer's bitfield (once, right after the handshake).
    pub fn peer_bitfield(&mut self, peer: PeerId, bitfield: Bitfield) -> Result<(), Error> {
        if bitfield.len() != self.have.len() {
            return Err(Error::BitfieldCount { expected: self.have.len().into(), actual: bitfield.len().into() });
        }
        let state = self.peer_mut(peer)?;
        if state.got_bitfield {
            return Err(Error::BitfieldTwice(peer));
        }
        state.got_bitfield = true;
        if state.dropping {
            return Ok(());
        }
        let mut added = Vec::new();
        for piece in bitfield.iter_set() {
            // `piece` comes from a bitfield of the same length.
            if state.bitfield.set(piece).unwrap_or(false) {
                added.push(piece);
            }
        }
        for piece in added {
            self.change_availability(piece, true);
        }
        self.shares.stale = true;
        Ok(())
    }

    /// The peer verified one more piece.
    pub fn peer_have(&mut self, peer: PeerId, piece: u32) -> Result<(), Error> {
        let count = self.have.len();
        if piece >= count {
            return Err(Error::PieceIndex { message: "Have", piece: piece.into(), count: count.into() });
        }
        let state = self.peer_mut(peer)?;
        if state.dropping {
            return Ok(());
        }
        state.rejected.remove(&piece);
        if state.bitfield.set(piece)? {
            self.shares.stale |= state.bitfield.is_complete();
            self.change_availability(piece, true);
        }
        Ok(())
    }

    /// The pieces to request from `peer` now: the rarest missing pieces it has that nobody is fetching, up to its
    /// pipeline depth; when it has none of those, one late request in flight elsewhere. They are marked in flight for
    /// this peer.
    pub fn next_peer_requests(&mut self, peer: PeerId, now: Instant) -> Vec<u32> {
        let Some(state) = self.peers.get(&peer) else {
            return Vec::new();
        };
        let piece_size = u64::from(self.hashes.tree().layout().piece_size().get());
        let depth = match state.kind {
            PeerKind::CacheServer => self.config.cache_server_pipeline_depth,
            _ => self
                .config
                .pipeline_depth
                .min(usize::try_from(self.config.pipeline_bytes / piece_size).unwrap_or(usize::MAX).max(2)),
        };
        let room = depth.saturating_sub(state.requests.len());
        if state.dropping || room == 0 {
            return Vec::new();
        }
        let may_ask =
            |piece: u32| state.bitfield.get(piece) && state.rejected.get(&piece).is_none_or(|until| *until <= now);
        // Pieces some peer has start at availability 1; this peer has them only there.
        let mut picked: Vec<u32> = self
            .pool
            .range((1, 0, 0)..)
            .map(|&(_, _, piece)| piece)
            .filter(|&piece| may_ask(piece))
            .take(room)
            .collect();
        // A peer with nothing else to give takes over late requests that another peer has not started to serve: it
        // serves a connection's requests in order, so every one but the oldest waits there (unless the oldest is
        // written out and still on its way), and the cancel keeps it from being sent. At the start of a swarm,
        // everyone waits for the first pieces at the few devices that had them first; the devices that got them
        // next pass them on. Only late requests move: a move of a piece already on its way costs a piece of upload.
        let source = Source::Peer(peer);
        let mut moves: Vec<(Option<Instant>, u32, u32, PeerId)> = Vec::new();
        if picked.len() < room {
            moves = (self.in_flight.iter())
                .filter_map(|&piece| match self.pieces[piece as usize].requests.as_slice() {
                    [Source::Peer(other)]
                        if *other != peer
                            && !self.pieces[piece as usize].moved
                            && may_ask(piece)
                            && self.is_late(piece, now) =>
                    {
                        let waiting = self.peers.get(other).is_some_and(|s| s.requests.first() != Some(&piece));
                        waiting.then(|| (self.pieces[piece as usize].since, self.rank[piece as usize], piece, *other))
                    }
                    _ => None,
                })
                .collect();
            moves.sort_unstable();
            moves.truncate(room - picked.len());
        }
        // In the endgame, an idle peer gets a copy of a late request, one at a time: each copy costs a piece of
        // someone's upload.
        let duplicates = state.requests.iter().filter(|&&piece| self.pieces[piece as usize].requests.len() > 1).count();
        if picked.len() < room && moves.is_empty() && self.pool.is_empty() && duplicates == 0 {
            let mut late: Vec<(usize, Option<Instant>, u32, u32)> = self
                .in_flight
                .iter()
                .map(|&piece| (&self.pieces[piece as usize], piece))
                .filter(|(state, piece)| {
                    may_ask(*piece)
                        && state.requests.len() < self.config.endgame_max_requests
                        && !state.requests.contains(&source)
                        && self.is_late(*piece, now)
                })
                .map(|(state, piece)| (state.requests.len(), state.since, self.rank[piece as usize], piece))
                .collect();
            late.sort_unstable();
            picked.extend(late.into_iter().take(1).map(|(_, _, _, piece)| piece));
        }
        let mut moved = Vec::with_capacity(moves.len());
        for (_, _, piece, other) in moves {
            self.remove_request(piece, Source::Peer(other));
            if let Some(other) = self.peers.get_mut(&other) {
                *other.past.entry(piece).or_default() += 1;
            }
            self.actions.push(Action::Cancel { peer: other, piece });
            moved.push(piece);
        }
        for &piece in &picked {
            self.add_request(piece, Source::Peer(peer), now);
        }
        for &piece in &moved {
            self.add_request(piece, Source::Peer(peer), now);
            self.pieces[piece as usize].moved = true;
        }
        picked.extend(moved);
        if let Some(state) = self.peers.get_mut(&peer) {
            if state.requests.is_empty() {
                state.clock = now;
            }
            state.requests.extend(&picked);
        }
        picked
    }

    /// The next piece for HTTP source `source` (the caller's index), marked in flight for it, under the rules of the
    /// module documentation: this device's share of the pieces no peer has; after the HTTP delay, when peers have
    /// nothing this device lacks, other devices' shares; when peers are slow or stalled, any missing piece. In the
    /// endgame, a piece in flight elsewhere under the same rules. `None` when there is nothing for HTTP now (call
    /// again after the next event or [`Swarm::next_wakeup`]) or the source is banned.
    pub fn next_http_request(&mut self, source: usize, now: Instant) -> Option<u32> {
        if self.http.len() <= source {
            self.http.resize_with(source + 1, Http::default);
        }
        if self.http[source].banned {
            return None;
        }
        self.update_shares();
        let after_delay = now >= self.start + self.config.http_delay;
        let any = now >= self.last_peer_progress + self.config.peer_stall_timeout
            || (after_delay && self.http_beats_slow_peers(now));
        // Peers have had nothing this device lacks that is not already asked for, for a while: the owners of the
        // other pieces are gone, or were not in a peer list.
        let starving = self.pool.range((1, 0, 0)..).next().is_none()
            && now >= self.last_peer_progress + self.config.peer_rate_window;
        let (shares, rank) = (&self.shares, &self.rank);
        let own = |piece: u32| shares.rank[piece as usize] == 0;
        let others = |piece: u32| after_delay && starving && !shares.cached[piece as usize];
        let pick = |candidates: &mut dyn Iterator<Item = (u32, u32)>| -> Option<u32> {
            // (availability, piece) → the best piece by the rules, as (level, order) with the smallest first.
            candidates
                .filter_map(|(availability, piece)| {
                    let index = piece as usize;
                    match () {
                        _ if availability == 0 && own(piece) => Some(((0, u64::MAX - shares.own[index]), piece)),
                        _ if availability == 0 && others(piece) => {
                            Some(((1 + u64::from(shares.rank[index]), shares.owner[index]), piece))
                        }
                        _ if any => Some(((u64::MAX, u64::from(availability) << 32 | u64::from(rank[index])), piece)),
                        _ => None,
                    }
                })
                .min()
                .map(|(_, piece)| piece)
        };
        let piece = match self.pool.is_empty() {
            false => pick(&mut self.pool.iter().map(|&(availability, _, piece)| (availability, piece))),
            true => pick(
                &mut self
                    .in_flight
                    .iter()
                    .map(|&piece| (&self.pieces[piece as usize], piece))
                    .filter(|(state, piece)| {
                        state.requests.len() < self.config.endgame_max_requests
                            && !state.requests.contains(&Source::Http(source))
                            && self.is_late(*piece, now)
                    })
                    .map(|(state, piece)| (state.availability, piece)),
            ),
        }?;
        self.add_request(piece, Source::Http(source), now);
        let deadline = now + self.config.request_timeout(self.piece_len(piece));
        self.http[source].requests.insert(piece, deadline);
        self.http[source].started.insert(piece, now);
        Some(piece)
    }

    /// How many devices share the origin's pieces now, this one included (1: it takes every piece no peer has).
    pub fn share_members(&mut self) -> usize {
        self.update_shares();
        self.shares.members
    }

    /// A piece arrived from `from`: verified against the piece layer, then counted (module documentation).
    pub fn piece_received(&mut self, from: Source, piece: u32, data: &[u8], now: Instant) -> Received {
        let http_started = match from {
            Source::Http(source) => self.http.get_mut(source).and_then(|state| state.started.remove(&piece)),
            Source::Peer(_) => None,
        };
        let requested_now = self.pieces.get(piece as usize).is_some_and(|state| state.requests.contains(&from));
        let requested_at = self.pieces.get(piece as usize).and_then(|state| state.since);
        let requested_before = match from {
            Source::Peer(peer) => match self.peers.get_mut(&peer) {
                Some(state) => {
                    state.clock = now;
                    // The copy of the request in flight comes first; a later one is the copy of a past request.
                    match state.past.get_mut(&piece) {
                        _ if requested_now => false,
                        Some(count) if *count > 1 => {
                            *count -= 1;
                            true
                        }
                        Some(_) => state.past.remove(&piece).is_some(),
                        None => false,
                    }
                }
                // Data from a connection already removed: nothing to count it against.
                None => return Received::Unexpected { banned: self.banned.contains(&peer) },
            },
            Source::Http(source) => {
                !requested_now && self.http.get_mut(source).is_some_and(|state| state.past.remove(&piece))
            }
        };
        if !requested_now && !requested_before {
            self.counters.unexpected_pieces += 1;
            return Received::Unexpected { banned: self.strike(from) };
        }
        if requested_now {
            self.remove_request(piece, from);
        }
        // A copy of a piece already verified is checked too, so that a bad one still counts against its sender.
        match self.hashes.verify_piece(piece.into(), data) {
            Ok(()) if self.have.get(piece) => {
                self.counters.duplicate_bytes += data.len() as u64;
                Received::Duplicate
            }
            Ok(()) => {
                if let Some(started) = http_started {
                    let millis = now.saturating_duration_since(started).as_millis().max(1);
                    self.http_rate = u64::try_from(data.len() as u128 * 1000 / millis).ok();
                }
                if let Some(at) = requested_at {
                    let took = now.saturating_duration_since(at);
                    self.piece_latency = Some(self.piece_latency.map_or(took, |usual| (usual * 7 + took) / 8));
                }
                self.piece_verified(piece, from, data.len() as u64, now);
                Received::Verified
            }
            Err(custody_catalog::Error::PieceLength { .. }) => {
                self.counters.unexpected_pieces += 1;
                Received::Unexpected { banned: self.strike(from) }
            }
            Err(_) => {
                self.counters.corrupt_pieces += 1;
                Received::Corrupt { banned: self.strike(from) }
            }
        }
    }

    /// A request failed: the peer rejected it (it is not asked for that piece again for
    /// [`SwarmConfig::reject_backoff`]) or the HTTP request failed. The piece goes back to the pool.
    pub fn request_failed(&mut self, from: Source, piece: u32, now: Instant) {
        if !self.pieces.get(piece as usize).is_some_and(|state| state.requests.contains(&from)) {
            return;
        }
        self.remove_request(piece, from);
        if let Source::Peer(peer) = from
            && let Some(state) = self.peers.get_mut(&peer)
        {
            state.rejected.insert(piece, now + self.config.reject_backoff);
        }
    }

    /// Applies timeouts due at `now` and returns what the caller must do: cancels of endgame duplicates, aborted or
    /// timed-out HTTP requests, peers to drop. Timed-out requests are back in the pool: ask the sources again
    /// ([`Swarm::next_peer_requests`], [`Swarm::next_http_request`]) after carrying out the actions.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let timeout = self.config.request_timeout(u64::from(self.hashes.tree().layout().piece_size().get()));
        let late: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, state)| !state.dropping && !state.requests.is_empty() && now >= state.clock + timeout)
            .map(|(&peer, _)| peer)
            .collect();
        for peer in late {
            let Some(state) = self.peers.get_mut(&peer) else { continue };
            let requests = std::mem::take(&mut state.requests);
            state.timeouts += 1;
            state.clock = now;
            let until = now + self.config.reject_backoff;
            for &piece in &requests {
                *state.past.entry(piece).or_default() += 1;
                state.rejected.insert(piece, until);
            }
            let drop = state.timeouts >= self.config.max_timeouts;
            self.counters.timed_out_requests += requests.len() as u64;
            for piece in requests {
                self.remove_request(piece, Source::Peer(peer));
            }
            if drop {
                self.release_peer(peer);
                self.actions.push(Action::Drop { peer, reason: DropReason::TimedOut });
            }
        }
        for source in 0..self.http.len() {
            let expired: Vec<u32> =
                self.http[source].requests.iter().filter(|(_, deadline)| now >= **deadline).map(|(&p, _)| p).collect();
            for piece in expired {
                self.counters.timed_out_requests += 1;
                self.http[source].past.insert(piece);
                self.remove_request(piece, Source::Http(source));
                self.actions.push(Action::CancelHttp { source, piece });
            }
        }
        std::mem::take(&mut self.actions)
    }

    /// When, after `now`, [`Swarm::poll`] next has a timeout to apply, or [`Swarm::next_http_request`] may find
    /// pieces it did not before (the HTTP delay ends, peers stall, the peers' rate is measured again); `None` when
    /// nothing is pending.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        let timeout = self.config.request_timeout(u64::from(self.hashes.tree().layout().piece_size().get()));
        let peers = self.peers.values().filter(|state| !state.dropping && !state.requests.is_empty());
        let http = self.http.iter().flat_map(|state| state.requests.values().copied());
        let mut rules = Vec::new();
        if !self.is_complete() {
            let delay = self.start + self.config.http_delay;
            let stalled = self.last_peer_progress + self.config.peer_stall_timeout;
            rules.extend([delay, stalled].into_iter().filter(|&at| at > now));
            let starving = self.last_peer_progress + self.config.peer_rate_window;
            if starving > now && self.pool.range((1, 0, 0)..).next().is_none() {
                rules.push(starving);
            }
            // Requests become late: idle peers may take copies of them.
            let patience = self.endgame_patience();
            let late = self.in_flight.iter().filter_map(|&piece| self.pieces[piece as usize].since);
            rules.extend(late.map(|since| since + patience).filter(|&at| at > now).min());
            // The peers' rate drops as deliveries leave the window: look again at most once a second.
            if let Some(&(oldest, _)) = self.peer_deliveries.front() {
                rules.push((oldest + self.config.peer_rate_window).max(now + Duration::from_secs(1)).max(delay));
            }
        }
        peers.map(|state| state.clock + timeout).chain(http).chain(rules).min()
    }

    /// Bans a peer for this content at once (for a protocol violation seen by the I/O layer: a wire error, a
    /// message out of order). Its requests go back to the pool; [`Action::Drop`] follows from [`Swarm::poll`].
    pub fn ban(&mut self, peer: PeerId) {
        if self.banned.insert(peer) {
            self.counters.banned_sources += 1;
            if self.peers.contains_key(&peer) {
                self.release_peer(peer);
                self.actions.push(Action::Drop { peer, reason: DropReason::Banned });
            }
        }
    }

    /// Counts `bytes` sent to peers for this content.
    pub fn uploaded(&mut self, bytes: u64) {
        self.stats.record_upload(bytes);
    }

    /// Every piece is verified; the caller now checks the whole file's SHA-256 before installing.
    pub fn is_complete(&self) -> bool {
        self.have.is_complete()
    }

    /// The pieces verified so far (persist it as the resume sidecar; offer it to peers as the bitfield).
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// The verified piece layer (to answer `LayerRequest` and to serve pieces).
    pub fn hashes(&self) -> &PieceHashes {
        &self.hashes
    }

    pub fn stats(&self) -> &TransferStats {
        &self.stats
    }

    pub fn counters(&self) -> &SwarmCounters {
        &self.counters
    }

    pub fn is_banned(&self, peer: PeerId) -> bool {
        self.banned.contains(&peer)
    }

    /// Whether every missing piece is in flight, so that idle sources duplicate requests.
    pub fn is_endgame(&self) -> bool {
        self.pool.is_empty() && !self.in_flight.is_empty()
    }

    /// The requests in flight to `peer`.
    pub fn peer_requests(&self, peer: PeerId) -> &[u32] {
        self.peers.get(&peer).map_or(&[], |state| &state.requests)
    }

    /// Whether `peer` has any piece this download lacks (else the connection only serves the other side).
    pub fn wants_from(&self, peer: PeerId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|state| !state.dropping && state.bitfield.iter_set().any(|piece| !self.have.get(piece)))
    }

    /// The length of piece `piece` (the last one may be short).
    pub fn piece_len(&self, piece: u32) -> u64 {
        self.hashes.tree().layout().piece_range(piece.into()).map_or(0, |range| range.end - range.start)
    }

    /// How long a piece's request may take before the endgame asks another source: [`SwarmConfig::endgame_patience`]
    /// times the usual time a piece takes; nothing before any piece came.
    fn endgame_patience(&self) -> Duration {
        let usual = self.piece_latency.unwrap_or(Duration::ZERO);
        usual.saturating_mul(self.config.endgame_patience).min(MAX_WAIT)
    }

    /// Whether `piece`, in flight, has waited longer than the endgame's patience.
    fn is_late(&self, piece: u32, now: Instant) -> bool {
        let since = self.pieces[piece as usize].since;
        since.is_none_or(|since| now.saturating_duration_since(since) >= self.endgame_patience())
    }

    /// Whether the peers delivered less than [`SwarmConfig::min_peer_rate`] over the last
    /// [`SwarmConfig::peer_rate_window`] (never within the first window of the download), and HTTP, as its last
    /// piece came, is faster than they are. When the origin is what is slow (a swarm behind a thin link, whose peers
    /// can pass on only what enters it), taking pieces peers have from HTTP would only share it out more thinly.
    fn http_beats_slow_peers(&mut self, now: Instant) -> bool {
        let window = self.config.peer_rate_window;
        while self.peer_deliveries.front().is_some_and(|&(at, _)| at + window <= now) {
            self.peer_deliveries.pop_front();
        }
        if now < self.start + window {
            return false;
        }
        let bytes: u64 = self.peer_deliveries.iter().map(|&(_, bytes)| bytes).sum();
        let peer_rate = u64::try_from(u128::from(bytes) * 1000 / window.as_millis().max(1)).unwrap_or(u64::MAX);
        peer_rate < self.config.min_peer_rate && self.http_rate.is_none_or(|http| http > peer_rate)
    }

    /// Recomputes the HTTP shares if the peers changed: rendezvous hashing of every piece over this device and the
    /// connected peers with a share key that are still downloading; a cache server weighs most for every piece.
    fn update_shares(&mut self) {
        if !self.shares.stale {
            return;
        }
        let own_key = self.config.share_key.unwrap_or(self.config.seed);
        let mut members: Vec<Option<u64>> = self
            .peers
            .values()
            .filter(|state| !state.dropping)
            .filter_map(|state| match (state.kind, state.share_key) {
                (PeerKind::CacheServer, _) => Some(None),
                (_, Some(key)) if !state.bitfield.is_complete() => Some(Some(key)),
                _ => None,
            })
            .collect();
        members.sort_unstable();
        members.dedup();
        let count = self.pieces.len();
        let shares = &mut self.shares;
        shares.members = members.len() + 1;
        shares.rank = vec![0; count];
        shares.own = vec![0; count];
        shares.owner = vec![0; count];
        shares.cached = vec![false; count];
        for (index, hash) in self.hashes.piece_hashes().iter().enumerate() {
            let piece = u64::from_be_bytes(hash.as_bytes()[..8].try_into().unwrap_or_default());
            let own = (share_weight(piece, own_key), own_key);
            let mut owner = (own, false);
            for member in &members {
                let weight = match member {
                    None => (u64::MAX, u64::MAX),
                    Some(key) => (share_weight(piece, *key), *key),
                };
                if weight > own {
                    shares.rank[index] += 1;
                }
                if weight > owner.0 {
                    owner = (weight, member.is_none());
                }
            }
            shares.own[index] = own.0;
            shares.owner[index] = owner.0.0;
            shares.cached[index] = owner.1;
        }
        shares.stale = false;
    }

    fn piece_verified(&mut self, piece: u32, from: Source, len: u64, now: Instant) {
        // `piece` is below the piece count: `verify_piece` checked it.
        let _ = self.have.set(piece);
        self.pool.remove(&(self.pieces[piece as usize].availability, self.rank[piece as usize], piece));
        self.in_flight.remove(&piece);
        for other in std::mem::take(&mut self.pieces[piece as usize].requests) {
            match other {
                Source::Peer(peer) => {
                    if let Some(state) = self.peers.get_mut(&peer) {
                        state.requests.retain(|&p| p != piece);
                        *state.past.entry(piece).or_default() += 1;
                    }
                    self.actions.push(Action::Cancel { peer, piece });
                }
                Source::Http(source) => {
                    self.http[source].requests.remove(&piece);
                    self.http[source].started.remove(&piece);
                    self.http[source].past.insert(piece);
                    self.actions.push(Action::CancelHttp { source, piece });
                }
            }
        }
        match from {
            Source::Peer(peer) => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.timeouts = 0;
                    self.stats.record_peer(state.kind, len);
                }
                self.last_peer_progress = now;
                self.peer_deliveries.push_back((now, len));
            }
            Source::Http(_) => self.stats.record_http(len),
        }
    }

    /// Counts a bad piece against `from`; bans it at `ban_after`. Returns whether it is banned now.
    fn strike(&mut self, from: Source) -> bool {
        match from {
            Source::Peer(peer) => {
                let Some(state) = self.peers.get_mut(&peer) else { return self.banned.contains(&peer) };
                state.bad += 1;
                if state.bad >= self.config.ban_after {
                    self.ban(peer);
                }
                self.banned.contains(&peer)
            }
            Source::Http(source) => {
                let Some(state) = self.http.get_mut(source) else { return false };
                state.bad += 1;
                if state.bad >= self.config.ban_after && !state.banned {
                    state.banned = true;
                    self.counters.banned_sources += 1;
                    let requests: Vec<u32> = std::mem::take(&mut state.requests).into_keys().collect();
                    for piece in requests {
                        self.remove_request(piece, from);
                        self.actions.push(Action::CancelHttp { source, piece });
                    }
                }
                self.http[source].banned
            }
        }
    }

    /// Takes a peer out of the schedule (banned, timed out or removed): its requests back to the pool, its pieces
    /// no longer available.
    fn release_peer(&mut self, peer: PeerId) {
        let Some(state) = self.peers.get_mut(&peer) else { return };
        state.dropping = true;
        self.shares.stale = true;
        let requests = std::mem::take(&mut state.requests);
        let pieces = std::mem::replace(&mut state.bitfield, Bitfield::new(self.have.len()));
        for piece in requests {
            self.remove_request(piece, Source::Peer(peer));
        }
        for piece in pieces.iter_set() {
            self.change_availability(piece, false);
        }
    }

    fn peer_mut(&mut self, peer: PeerId) -> Result<&mut Peer, Error> {
        match self.peers.get_mut(&peer) {
            Some(state) => Ok(state),
            None if self.banned.contains(&peer) => Err(Error::BannedPeer(peer)),
            None => Err(Error::UnknownPeer(peer)),
        }
    }

    /// One more (or one fewer) connected peer has `piece`; keeps the pool in rarest-first order.
    fn change_availability(&mut self, piece: u32, up: bool) {
        let rank = self.rank[piece as usize];
        let state = &mut self.pieces[piece as usize];
        let in_pool = self.pool.remove(&(state.availability, rank, piece));
        state.availability = match up {
            true => state.availability + 1,
            false => state.availability.saturating_sub(1),
        };
        if in_pool {
            self.pool.insert((state.availability, rank, piece));
        }
    }

    /// Marks `piece` requested from `source` at `now` (the caller updates the source's own list).
    fn add_request(&mut self, piece: u32, source: Source, now: Instant) {
        let state = &mut self.pieces[piece as usize];
        self.pool.remove(&(state.availability, self.rank[piece as usize], piece));
        state.since = state.since.or(Some(now));
        state.requests.push(source);
        self.in_flight.insert(piece);
    }

    /// Forgets the request of `piece` from `source` (in the piece's and the source's lists); a missing piece with no
    /// request left goes back to the pool.
    fn remove_request(&mut self, piece: u32, source: Source) {
        match source {
            Source::Peer(peer) => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.requests.retain(|&p| p != piece);
                }
            }
            Source::Http(index) => {
                if let Some(state) = self.http.get_mut(index) {
                    state.requests.remove(&piece);
                    state.started.remove(&piece);
                }
            }
        }
        let state = &mut self.pieces[piece as usize];
        state.requests.retain(|&s| s != source);
        if state.requests.is_empty() {
            state.since = None;
            state.moved = false;
        }
        if state.requests.is_empty() && !self.have.get(piece) {
            self.in_flight.remove(&piece);
            self.pool.insert((state.availability, self.rank[piece as usize], piece));
        }
    }
}

/// A device's key in the HTTP shares: FNV-1a of its device id (the common name of its certificate), mixed. Every
/// device computes the same key for the same id, so the devices of a swarm agree on who owns which piece.
pub fn share_key(device: &str) -> u64 {
    let fnv = device
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    SplitMix64(fnv).next()
}

/// A device's weight for a piece in the rendezvous hashing of the HTTP shares: the piece's key (the first eight
/// bytes of its hash) and the device's key, mixed.
fn share_weight(piece: u64, device: u64) -> u64 {
    SplitMix64(piece ^ device).next()
}

/// A small deterministic generator for the piece order (Steele, Lea and Flood's SplitMix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use custody_catalog::pieces::PieceSize;

    use super::*;

    const PIECE: usize = 16 * 1024;

    /// Content of `count` pieces (the last one short), its verified hashes, and a start time.
    fn content(count: usize) -> (Vec<u8>, PieceHashes, Instant) {
        let data: Vec<u8> = (0..count * PIECE - 100).map(|i| (i * 7 + i / PIECE) as u8).collect();
        let hashes = PieceHashes::compute(PieceSize::MIN, &data).unwrap();
        (data, hashes, Instant::now())
    }

    fn piece(data: &[u8], index: u32) -> &[u8] {
        let start = index as usize * PIECE;
        &data[start..(start + PIECE).min(data.len())]
    }

    fn swarm(count: usize, config: SwarmConfig) -> (Vec<u8>, Swarm, Instant) {
        let (data, hashes, now) = content(count);
        let swarm = Swarm::new(hashes, Bitfield::new(count as u32), config, now).unwrap();
        (data, swarm, now)
    }

    fn bits(count: u32, pieces: impl IntoIterator<Item = u32>) -> Bitfield {
        let mut bits = Bitfield::new(count);
        for piece in pieces {
            bits.set(piece).unwrap();
        }
        bits
    }

    fn peer_with(swarm: &mut Swarm, id: u64, kind: PeerKind, pieces: impl IntoIterator<Item = u32>, now: Instant) {
        let count = swarm.have().len();
        swarm.add_peer(PeerId(id), kind, now).unwrap();
        swarm.peer_bitfield(PeerId(id), bits(count, pieces)).unwrap();
    }

    fn sorted(mut pieces: Vec<u32>) -> Vec<u32> {
        pieces.sort_unstable();
        pieces
    }

    const A: PeerId = PeerId(1);
    const B: PeerId = PeerId(2);
    const C: PeerId = PeerId(3);

    #[test]
    fn rarest_pieces_are_requested_first() {
        let (_, mut swarm, now) = swarm(8, SwarmConfig::default());
        peer_with(&mut swarm, 1, PeerKind::Lan, 0..8, now);
        peer_with(&mut swarm, 2, PeerKind::Lan, 0..4, now);
        peer_with(&mut swarm, 3, PeerKind::Lan, 0..2, now);
        // Availability: pieces 0-1: 3 peers, 2-3: 2, 4-7: 1 (only A).
        assert_eq!(sorted(swarm.next_peer_requests(A, now)), vec![4, 5, 6, 7]);
        let for_b = swarm.next_peer_requests(B, now);
        assert_eq!(sorted(for_b[..2].to_vec()), vec![2, 3], "rarest first: {for_b:?}");
        assert_eq!(sorted(for_b[2..].to_vec()), vec![0, 1]);
        // Every piece is in flight now. C has nothing else to give: it takes over B's requests of its pieces, which
        // wait behind B's first.
        assert!(swarm.is_endgame());
        assert_eq!(sorted(swarm.next_peer_requests(C, now)), vec![0, 1]);
        let mut cancels = swarm.poll(now);
        cancels.sort_by_key(|action| format!("{action:?}"));
        assert_eq!(cancels, vec![Action::Cancel { peer: B, piece: 0 }, Action::Cancel { peer: B, piece: 1 }]);

        // Availability follows Have and departures: after B leaves, its pieces are rarer again.
        swarm.peer_have(C, 7).unwrap();
        assert_eq!(swarm.pieces[7].availability, 2);
        swarm.remove_peer(B);
        assert_eq!(swarm.peer_requests(B), &[] as &[u32]);
        assert_eq!(swarm.pieces[2].availability, 1);
        assert!(swarm.pool.contains(&(1, swarm.rank[2], 2)) && swarm.pool.contains(&(1, swarm.rank[3], 3)));
        assert!(!swarm.pool.iter().any(|&(_, _, piece)| piece < 2), "still asked of C");
    }

    #[test]
    fn equally_rare_pieces_come_in_an_order_set_by_the_seed() {
        let order = |seed: u64| {
            let (_, mut swarm, now) = swarm(64, SwarmConfig { pipeline_depth: 64, seed, ..SwarmConfig::default() });
            peer_with(&mut swarm, 1, PeerKind::Lan, 0..64, now);
            swarm.next_peer_requests(A, now)
        };
        assert_eq!(order(1), order(1));
        assert_ne!(order(1), order(2));
        assert_eq!(sorted(order(3)), (0..64).collect::<Vec<_>>());
    }

    #[test]
    fn pipeline_depth_is_kept_per_peer() {
        let (data, mut swarm, now) = swarm(20, SwarmConfig::default());
        peer_with(&mut swarm, 1, PeerKind::Lan, 0..20, now);
        peer_with(&mut swarm, 2, PeerKind::CacheServer, 0..20, now);
        let first = swarm.next_peer_requests(A, now);
        assert_eq!(first.len(), 4);
        assert!(swarm.next_peer_requests(A, now).is_empty(), "the pipeline is full");
        assert_eq!(swarm.next_peer_requests(B, now).len(), 8, "cache servers get a deeper pipeline");
        assert_eq!(swarm.piece_received(Source::Peer(A), first[0], piece(&data, first[0]), now), Received::Verified);
        let next = swarm.next_peer_requests(A, now);
        assert_eq!(next.len(), 1);
        assert!(!first.contains(&next[0]));
        assert_eq!(swarm.peer_requests(A).len(), 4);

        // Big pieces: no more than `pipeline_bytes` in flight, but at least two pieces.
        for (bytes, depth) in [(3 * PIECE as u64, 3), (PIECE as u64, 2)] {
            let (_, mut big, now) = self::swarm(20, SwarmConfig { pipeline_bytes: bytes, ..SwarmConfig::default() });
            peer_with(&mut big, 1, PeerKind::Lan, 0..20, now);
            assert_eq!(big.next_peer_requests(A, now).len(), depth);
        }
    }

    #[test]
    fn idle_peers_take_over_waiting_requests_then_copy_late_ones() {
        let (data, mut swarm, now) = swarm(4, SwarmConfig::default());
        for id in 1..=3 {
            peer_with(&mut swarm, id, PeerKind::Lan, 0..4, now);
        }
        let a = swarm.next_peer_requests(A, now);
        assert_eq!(sorted(a.clone()), vec![0, 1, 2, 3]);
        assert!(swarm.is_endgame());
        // B has nothing new: it takes over the three requests that wait behind A's first, and A is told to drop them.
        let b = swarm.next_peer_requests(B, now);
        assert_eq!(sorted(b), sorted(a[1..].to_vec()));
        let mut cancels = swarm.poll(now);
        cancels.sort_by_key(|action| format!("{action:?}"));
        let expected: Vec<Action> =
            sorted(a[1..].to_vec()).into_iter().map(|piece| Action::Cancel { peer: A, piece }).collect();
        assert_eq!(cancels, expected);
        // A request moves once, and A's first is being served: C gets a copy instead, one at a time.
        let c = swarm.next_peer_requests(C, now);
        assert_eq!(c.len(), 1);
        assert!(swarm.next_peer_requests(C, now).is_empty(), "one copy at a time per peer");
        assert!(swarm.next_peer_requests(B, now).is_empty(), "B has no room left for copies");

        // The first copy that verifies wins; the other request is cancelled, and its copy, already on its way, is a
        // duplicate that is not held against its sender.
        let copied = c[0];
        let holder = if copied == a[0] { A } else { B };
        assert_eq!(swarm.piece_received(Source::Peer(C), copied, piece(&data, copied), now), Received::Verified);
        assert_eq!(swarm.poll(now), vec![Action::Cancel { peer: holder, piece: copied }]);
        assert_eq!(swarm.piece_received(Source::Peer(holder), copied, piece(&data, copied), now), Received::Duplicate);
        assert_eq!(swarm.counters().duplicate_bytes, PIECE as u64);
        assert_eq!(swarm.peers[&holder].bad, 0);
        for index in (0..4).filter(|&index| index != copied) {
            let from = if index == a[0] { A } else { B };
            assert_eq!(swarm.piece_received(Source::Peer(from), index, piece(&data, index), now), Received::Verified);
        }
        assert!(swarm.is_complete());
        assert!(swarm.poll(now).is_empty());
        assert_eq!(swarm.stats().from_lan_peers, data.len() as u64);
    }

    #[test]
    fn requests_move_or_get_copies_only_when_late() {
        let (data, mut swarm, start) = swarm(4, SwarmConfig::default());
        for id in 1..=3 {
            peer_with(&mut swarm, id, PeerKind::Lan, 0..4, start);
        }
        assert_eq!(sorted(swarm.next_peer_requests(A, start)), vec![0, 1, 2, 3]);
        let arrived = start + Duration::from_millis(100);
        assert_eq!(swarm.piece_received(Source::Peer(A), 0, piece(&data, 0), arrived), Received::Verified);
        assert!(swarm.is_endgame());
        // Pieces take 100 ms here; those still on their way at 100 ms are on time, at 200 ms (2x) late.
        assert!(swarm.next_peer_requests(B, arrived).is_empty(), "no move or copy of a request that is on time");
        let wakeup = swarm.next_wakeup(arrived).unwrap();
        assert_eq!(wakeup, start + Duration::from_millis(200));
        let waiting = swarm.peer_requests(A)[1..].to_vec();
        assert_eq!(swarm.next_peer_requests(B, wakeup), waiting, "late requests waiting at A move to B");
        let copy = swarm.next_peer_requests(C, wakeup);
        assert_eq!(copy, swarm.peer_requests(A), "and A's first, late too, gets a copy");
    }

    #[test]
    fn a_peer_with_nothing_else_passes_on_a_late_piece_before_the_endgame() {
        // The start of a swarm: A got pieces 0 and 1 first and everyone asked A; B has since got piece 0 too.
        let (data, mut swarm, start) = swarm(4, SwarmConfig::default());
        peer_with(&mut swarm, 1, PeerKind::Lan, [0, 1], start);
        peer_with(&mut swarm, 2, PeerKind::Lan, [0], start);
        assert_eq!(sorted(swarm.next_peer_requests(A, start)), vec![0, 1]);
        assert!(!swarm.is_endgame(), "pieces 2 and 3 are nobody's yet");
        // Nothing has arrived, so nothing is on time yet: B gets a copy of 0, the first copy wins.
        assert_eq!(swarm.next_peer_requests(B, start), vec![0]);
        let later = start + Duration::from_millis(50);
        assert_eq!(swarm.piece_received(Source::Peer(B), 0, piece(&data, 0), later), Received::Verified);
        assert_eq!(swarm.poll(later), vec![Action::Cancel { peer: A, piece: 0 }]);
    }

    #[test]
    fn a_corrupt_piece_is_requeued_and_counted() {
        let (data, mut swarm, now) = swarm(4, SwarmConfig::default());
        peer_with(&mut swarm, 1, PeerKind::Lan, [1], now);
        peer_with(&mut swarm, 2, PeerKind::Lan, [1], now);
        assert_eq!(swarm.next_peer_requests(A, now), vec![1]);
        let mut bad = piece(&data, 1).to_vec();
        bad[100] ^= 1;
        assert_eq!(swarm.piece_received(Source::Peer(A), 1, &bad, now), Received::Corrupt { banned: false });
        assert_eq!(swarm.counters().corrupt_pieces, 1);
        assert_eq!(swarm.peers[&A].bad, 1);
        assert!(!swarm.have().get(1) && swarm.stats().total() == 0, "nothing counted");
        assert_eq!(swarm.next_peer_requests(B, now), vec![1], "fetched again elsewhere");
        assert_eq!(swarm.piece_received(Source::Peer(B), 1, piece(&data, 1), now), Received::Verified);
    }

    #[test]
    fn a_peer_is_banned_after_ban_after_bad_pieces() {
        let (data, mut swarm, now) = swarm(8, SwarmConfig::default());
        peer_with(&mut swarm, 1, PeerKind::Lan, 0..8, now);
        let asked = swarm.next_peer_requests(A, now);
        let mut bad = piece(&data, asked[0]).to_vec();
        bad[0] ^= 0xff;
        assert_eq!(swarm.piece_received(Source::Peer(A), asked[0], &bad, now), Received::Corrupt { banned: false });
        // A wrong length and an unsolicited piece count the same.
        let short = &piece(&data, asked[1])[..100];
        assert_eq!(swarm.piece_received(Source::Peer(A), asked[1], short, now), Received::Unexpected { banned: false });
        let unasked = (0..8).find(|p| !asked.contains(p)).unwrap();
        assert_eq!(
            swarm.piece_received(Source::Peer(A), unasked, piece(&data, unasked), now),
            Received::Unexpected { banned: true }
        );
        assert!(swarm.is_banned(A));
        assert_eq!(swarm.poll(now), vec![Action::Drop { peer: A, reason: DropReason::Banned }]);
        assert_eq!(DropReason::Banned.goodbye(), GoodbyeReason::Banned);
        assert_eq!(swarm.counters().banned_sources, 1);
        assert!(!swarm.have().get(unasked), "an unsolicited piece is not taken even when it is good");
        // Its requests are back in the pool and its pieces no longer count: HTTP takes them at once.
        assert!(swarm.next_peer_requests(A, now).is_empty());
        let http: Vec<u32> = std::iter::from_fn(|| swarm.next_http_request(0, now)).collect();
        assert_eq!(sorted(http), (0..8).collect::<Vec<_>>());
        swarm.remove_peer(A);
        assert_eq!(swarm.add_peer(A, PeerKind::Lan, now), Err(Error::BannedPeer(A)));
        assert_eq!(swarm.peer_have(A, 0), Err(Error::BannedPeer(A)));
        assert!(swarm.is_banned(A));

        // The caller bans at once for protocol violations.
        peer_with(&mut swarm, 2, PeerKind::Lan, 0..8, now);
        swarm.ban(B);
        assert_eq!(swarm.poll(now), vec![Action::Drop { peer: B, reason: DropReason::Banned }]);
        assert!(swarm.next_peer_requests(B, now).is_empty());
    }

    #[test]
    fn a_silent_peer_times_out_and_its_pieces_go_back_to_the_pool() {
        let config = SwarmConfig::default();
        let timeout = config.request_timeout(PIECE as u64);
        assert_eq!(timeout, Duration::from_secs(10));
        let (data, mut swarm, now) = swarm(8, config);
        peer_with(&mut swarm, 1, PeerKind::Lan, 0..8, now);
        peer_with(&mut swarm, 2, PeerKind::Lan, 0..8, now);
        let silent = swarm.next_peer_requests(A, now);
        assert_eq!(swarm.next_wakeup(now), Some(now + timeout));
        assert!(swarm.poll(now + timeout - Duration::from_millis(1)).is_empty());
        assert_eq!(swarm.peer_requests(A).len(), 4);

        let later = now + timeout;
        assert!(swarm.poll(later).is_empty(), "first timeout: requests released, peer kept");
        assert_eq!(swarm.counters().timed_out_requests, 4);
        assert!(swarm.peer_requests(A).is_empty());
        let to_b = swarm.next_peer_requests(B, later);
        assert_eq!(sorted(to_b.clone()), sorted(silent.clone()), "the same (rarest) pieces, now from B");
        // A's late copy still counts when it arrives first: it was requested.
        assert_eq!(
            swarm.piece_received(Source::Peer(A), silent[0], piece(&data, silent[0]), later),
            Received::Verified
        );
        assert_eq!(swarm.poll(later), vec![Action::Cancel { peer: B, piece: silent[0] }]);

        for &index in &to_b[..] {
            if index != silent[0] {
                assert_eq!(
                    swarm.piece_received(Source::Peer(B), index, piece(&data, index), later),
                    Received::Verified
                );
            }
        }
        // The delivery reset A's count; two timeouts in a row drop it.
        let asked = swarm.next_peer_requests(A, later);
        assert!(!asked.is_empty() && asked.iter().all(|p| !silent.contains(p)), "timed-out pieces are backed off");
        let t1 = later + timeout;
        assert!(swarm.poll(t1).is_empty());
        assert!(swarm.next_peer_requests(A, t1).is_empty(), "everything left is backed off for A");
        let t2 = t1 + SwarmConfig::default().reject_backoff;
        assert_eq!(sorted(swarm.next_peer_requests(A, t2)), sorted(asked));
        assert_eq!(swarm.poll(t2 + timeout), vec![Action::Drop { peer: A, reason: DropReason::TimedOut }]);
        assert!(swarm.next_peer_requests(A, t2 + timeout).is_empty());
        assert!(!swarm.is_banned(A), "a slow peer is dropped, not banned");
        swarm.remove_peer(A);
        swarm.add_peer(A, PeerKind::Lan, t2 + timeout).unwrap();
    }

    #[test]
    fn http_takes_what_no_peer_has_at_once_and_what_slow_peers_have_after_the_delay() {
        let config = SwarmConfig {
            http_delay: Duration::from_secs(60),
            peer_stall_timeout: Duration::from_secs(30),
            ..SwarmConfig::default()
        };
        let (data, mut swarm, now) = swarm(8, config);
        peer_with(&mut swarm, 1, PeerKind::Lan, 0..4, now);
        let http: Vec<u32> = std::iter::from_fn(|| swarm.next_http_request(0, now)).collect();
        assert_eq!(sorted(http.clone()), vec![4, 5, 6, 7], "only pieces no peer has");
        assert_eq!(swarm.next_http_request(1, now), None);
        for &index in &http {
            assert_eq!(swarm.piece_received(Source::Http(0), index, piece(&data, index), now), Received::Verified);
        }
        assert_eq!(swarm.stats().from_http, 4 * PIECE as u64 - 100);
        // A peer delivering keeps HTTP off its pieces until the delay.
        let t = now + Duration::from_secs(25);
        let asked = swarm.next_peer_requests(A, t);
        assert_eq!(swarm.piece_received(Source::Peer(A), asked[0], piece(&data, asked[0]), t), Received::Verified);
        assert_eq!(swarm.next_http_request(0, now + Duration::from_secs(50)), None, "peers made progress at 25 s");
        swarm.request_failed(Source::Peer(A), asked[1], t);
        // After the delay the peer is slow (nothing within the rate window): HTTP takes what it has too.
        let after_delay = now + Duration::from_secs(60);
        assert_eq!(swarm.next_http_request(0, after_delay), Some(asked[1]), "slow peers, after the delay");
        // In the endgame HTTP doubles what peers have in flight.
        let endgame: Vec<u32> = std::iter::from_fn(|| swarm.next_http_request(0, after_delay)).collect();
        assert_eq!(sorted(endgame), sorted(asked[2..].to_vec()));
    }

    #[test]
    fn peers_at_the_minimum_rate_keep_http_off_their_pieces() {
        const COUNT: u32 = 64;
        let config = SwarmConfig {
            pipeline_depth: COUNT as usize,
            min_peer_rate: 3 * PIECE as u64,
            peer_rate_window: Duration::from_secs(5),
            ..SwarmConfig::default()
        };
        let (data, mut swarm, now) = swarm(COUNT as usize, config);
        peer_with(&mut swarm, 1, PeerKind::Lan, 0..COUNT, now);
        let asked = swarm.next_peer_requests(A, now);
        assert_eq!(swarm.next_http_request(0, now), None, "the first window is not measured");
        // Four pieces a second for fifteen seconds: above the minimum.
        let mut delivered = asked.iter();
        for tick in 0..30 {
            let t = now + Duration::from_millis(500 * tick);
            for _ in 0..2 {
                let index = *delivered.next().unwrap();
                assert_eq!(swarm.piece_received(Source::Peer(A), index, piece(&data, index), t), Received::Verified);
            }
            assert_eq!(swarm.next_http_request(0, t), None, "at {tick}");
        }
        // The peer stops delivering: below the minimum once the window has moved past its last pieces.
        let last = now + Duration::from_millis(500 * 29);
        assert!(swarm.next_wakeup(last).is_some_and(|at| at <= last + Duration::from_secs(5)));
        swarm.request_failed(Source::Peer(A), asked[62], last);
        assert_eq!(swarm.next_http_request(0, last + Duration::from_secs(1)), None, "still 3.6 pieces a second");
        assert_eq!(swarm.next_http_request(0, last + Duration::from_secs(4)), Some(asked[62]), "slow now");
    }

    #[test]
    fn slow_peers_keep_their_pieces_when_http_is_slower_still() {
        // A swarm behind a thin link: the peers deliver 2 pieces a second, below the minimum of 3, but the last
        // piece from HTTP took 2 s: HTTP would not be faster, so it leaves the peers' pieces to them.
        let config = SwarmConfig {
            min_peer_rate: 3 * PIECE as u64,
            peer_rate_window: Duration::from_secs(5),
            ..SwarmConfig::default()
        };
        let (data, mut swarm, now) = swarm(64, config);
        peer_with(&mut swarm, 1, PeerKind::Lan, 0..60, now);
        let from_http = swarm.next_http_request(0, now).unwrap();
        assert!(from_http >= 60, "only what no peer has");
        let arrived = now + Duration::from_secs(2);
        assert_eq!(
            swarm.piece_received(Source::Http(0), from_http, piece(&data, from_http), arrived),
            Received::Verified
        );
        let mut t = arrived;
        for _ in 0..12 {
            let asked = swarm.next_peer_requests(A, t);
            t += Duration::from_millis(500);
            assert_eq!(swarm.piece_received(Source::Peer(A), asked[0], piece(&data, asked[0]), t), Received::Verified);
            for &other in &asked[1..] {
                swarm.request_failed(Source::Peer(A), other, t);
            }
            // No HTTP piece no peer has is left to ask for, and HTTP (8 KiB/s) is slower than the peers (32 KiB/s).
            while let Some(piece) = swarm.next_http_request(0, t) {
                assert!(piece >= 60, "piece {piece} a peer has went to HTTP at {:?}", t - now);
            }
        }
        // Had the HTTP piece come in 100 ms, the same peers would be slow enough for HTTP to help.
        let (data, mut fast, now) =
            self::swarm(64, SwarmConfig { min_peer_rate: 3 * PIECE as u64, ..SwarmConfig::default() });
        peer_with(&mut fast, 1, PeerKind::Lan, 0..60, now);
        let from_http = fast.next_http_request(0, now).unwrap();
        let arrived = now + Duration::from_millis(100);
        assert_eq!(
            fast.piece_received(Source::Http(0), from_http, piece(&data, from_http), arrived),
            Received::Verified
        );
        let asked = fast.next_peer_requests(A, arrived);
        let t = now + Duration::from_secs(6);
        assert_eq!(fast.piece_received(Source::Peer(A), asked[0], piece(&data, asked[0]), t), Received::Verified);
        let taken: Vec<u32> = std::iter::from_fn(|| fast.next_http_request(0, t)).collect();
        assert!(taken.iter().any(|&piece| piece < 60), "HTTP helps the slow peers: {taken:?}");
    }

    /// Two swarms, one per device, each connected to the other device's peer id with its key.
    fn two_devices(count: usize, config: SwarmConfig) -> [(Swarm, Instant); 2] {
        let keys = [share_key("device-a"), share_key("device-b")];
        let (_, hashes, now) = content(count);
        [0, 1].map(|me| {
            let config = SwarmConfig { share_key: Some(keys[me]), ..config.clone() };
            let mut swarm = Swarm::new(hashes.clone(), Bitfield::new(count as u32), config, now).unwrap();
            peer_with(&mut swarm, 1, PeerKind::Lan, [], now);
            swarm.set_share_key(A, keys[1 - me]).unwrap();
            (swarm, now)
        })
    }

    #[test]
    fn devices_take_disjoint_shares_of_the_origin_that_cover_every_piece() {
        // Before the HTTP delay, each takes its own share only.
        let config = SwarmConfig { http_delay: Duration::from_secs(60), ..SwarmConfig::default() };
        let [(mut a, now), (mut b, _)] = two_devices(64, config);
        assert_eq!((a.share_members(), b.share_members()), (2, 2));
        let from_a: Vec<u32> = std::iter::from_fn(|| a.next_http_request(0, now)).collect();
        let from_b: Vec<u32> = std::iter::from_fn(|| b.next_http_request(0, now)).collect();
        assert!(!from_a.is_empty() && !from_b.is_empty());
        let mut all = [from_a.clone(), from_b.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..64).collect::<Vec<_>>(), "disjoint, and every piece in one share");
        // A device alone (its peer left) takes every piece no peer has.
        a.remove_peer(A);
        assert_eq!(a.share_members(), 1);
        let rest: Vec<u32> = std::iter::from_fn(|| a.next_http_request(0, now)).collect();
        assert_eq!(sorted(rest), sorted(from_b));
    }

    #[test]
    fn a_device_takes_its_heaviest_pieces_first() {
        // Alone (no peer known yet), a device starts with the pieces most likely to stay its own in a swarm.
        let (_, hashes, now) = content(64);
        let key = share_key("device-a");
        let mut heaviest: Vec<(u64, u32)> = (hashes.piece_hashes().iter().enumerate())
            .map(|(piece, hash)| {
                let piece_key = u64::from_be_bytes(hash.as_bytes()[..8].try_into().unwrap());
                (share_weight(piece_key, key), piece as u32)
            })
            .collect();
        heaviest.sort_unstable_by(|a, b| b.cmp(a));
        let config = SwarmConfig { share_key: Some(key), ..SwarmConfig::default() };
        let mut alone = Swarm::new(hashes, Bitfield::new(64), config, now).unwrap();
        let order: Vec<u32> = std::iter::from_fn(|| alone.next_http_request(0, now)).collect();
        assert_eq!(order, heaviest.into_iter().map(|(_, piece)| piece).collect::<Vec<_>>());
    }

    #[test]
    fn other_shares_go_to_http_after_the_delay_when_peers_have_had_nothing_else() {
        let config = SwarmConfig { http_delay: Duration::from_secs(10), ..SwarmConfig::default() };
        let [(mut a, now), _] = two_devices(64, config);
        let own: Vec<u32> = std::iter::from_fn(|| a.next_http_request(0, now)).collect();
        assert_eq!(a.next_http_request(0, now + Duration::from_secs(9)), None, "the other's share waits");
        let later = now + Duration::from_secs(10);
        let others: Vec<u32> = std::iter::from_fn(|| a.next_http_request(0, later)).collect();
        assert_eq!(sorted([own, others.clone()].concat()), (0..64).collect::<Vec<_>>());
        // The owner's last pieces first: the owner fetches its heaviest first.
        let [_, (mut b, _)] = two_devices(64, SwarmConfig::default());
        let owners_order: Vec<u32> = std::iter::from_fn(|| b.next_http_request(0, now)).collect();
        assert_eq!(others.first(), owners_order.last());

        // While a peer has something this device lacks, the others' shares wait for their owners.
        let [(mut a, now), _] = two_devices(64, SwarmConfig::default());
        a.update_shares();
        let theirs = a.shares.rank.iter().position(|&rank| rank > 0).unwrap() as u32;
        peer_with(&mut a, 2, PeerKind::Lan, [theirs], now);
        let own: Vec<u32> = std::iter::from_fn(|| a.next_http_request(0, now)).collect();
        assert!(!own.contains(&theirs));
        assert_eq!(a.next_http_request(0, now + Duration::from_secs(1)), None);
        assert_eq!(a.next_peer_requests(B, now), vec![theirs]);
        assert_eq!(a.next_http_request(0, now + Duration::from_secs(4)), None, "not for long enough");
        let starving = now + Duration::from_secs(5);
        assert!(a.next_http_request(0, starving).is_some(), "every piece a peer has was asked for, for 5 s");
    }

    #[test]
    fn a_cache_server_owns_every_piece_and_a_complete_peer_none() {
        let [(mut a, now), _] = two_devices(16, SwarmConfig::default());
        peer_with(&mut a, 2, PeerKind::CacheServer, [], now);
        assert_eq!(a.next_http_request(0, now + Duration::from_secs(4)), None, "the cache server fetches");
        assert!(a.next_http_request(0, now + Duration::from_secs(5)).is_some(), "until it is slow");

        // A peer with every piece takes no share: the device takes every piece nobody has.
        let [(mut a, now), _] = two_devices(16, SwarmConfig::default());
        a.remove_peer(A);
        peer_with(&mut a, 2, PeerKind::Lan, 0..16, now);
        a.set_share_key(B, share_key("device-b")).unwrap();
        assert_eq!(a.share_members(), 1);
    }

    #[test]
    fn share_keys_are_fixed_across_builds() {
        // Devices of one fleet run different builds: the key of an id must never change.
        assert_eq!(share_key(""), SplitMix64(0xcbf2_9ce4_8422_2325).next());
        assert_eq!(share_key("3f0c5b8e-1d7a-4c2e-9b51-6a0d2e8f4c71"), 0x334efa83d3033cf2);
    }

    #[test]
    fn http_takes_everything_when_peers_stall() {
        let config = SwarmConfig {
            http_delay: Duration::from_secs(600),
            peer_stall_timeout: Duration::from_secs(30),
            ..SwarmConfig::default()
        };
        let (_, mut swarm, now) = swarm(4, config);
        peer_with(&mut swarm, 1, PeerKind::Lan, 0..4, now);
        assert_eq!(swarm.next_http_request(0, now + Duration::from_secs(29)), None);
        assert_eq!(swarm.next_wakeup(now), Some(now + Duration::from_secs(30)));
        assert!(swarm.next_http_request(0, now + Duration::from_secs(30)).is_some(), "no peer progress for 30 s");
    }

    #[test]
    fn a_download_resumes_from_a_partial_have_bitfield() {
        let (data, hashes, now) = content(6);
        let have = bits(6, [0, 2, 5]);
        let config = SwarmConfig { http_delay: Duration::from_secs(60), ..SwarmConfig::default() };
        assert_eq!(
            Swarm::new(hashes.clone(), Bitfield::new(7), SwarmConfig::default(), now).unwrap_err(),
            Error::BitfieldCount { expected: 6, actual: 7 }
        );
        let mut swarm = Swarm::new(hashes, have, config, now).unwrap();
        assert_eq!(swarm.have().count(), 3);
        peer_with(&mut swarm, 1, PeerKind::Group, 0..6, now);
        assert!(swarm.wants_from(A));
        assert_eq!(sorted(swarm.next_peer_requests(A, now)), vec![1, 3, 4]);
        assert_eq!(swarm.next_http_request(0, now), None);
        for index in [1, 3, 4] {
            assert_eq!(swarm.piece_received(Source::Peer(A), index, piece(&data, index), now), Received::Verified);
        }
        assert!(swarm.is_complete() && !swarm.wants_from(A));
        assert_eq!(swarm.stats().from_group_peers, 3 * PIECE as u64, "only what was fetched now counts");
        assert_eq!(swarm.next_wakeup(now), None);
    }

    #[test]
    fn statistics_count_each_source_kind() {
        let (data, mut swarm, now) = swarm(5, SwarmConfig::default());
        let kinds = [PeerKind::Lan, PeerKind::Group, PeerKind::Internet, PeerKind::CacheServer];
        for (i, kind) in kinds.into_iter().enumerate() {
            peer_with(&mut swarm, i as u64 + 1, kind, [i as u32], now);
            assert_eq!(swarm.next_peer_requests(PeerId(i as u64 + 1), now), vec![i as u32]);
            let index = i as u32;
            assert_eq!(
                swarm.piece_received(Source::Peer(PeerId(i as u64 + 1)), index, piece(&data, index), now),
                Received::Verified
            );
        }
        // A connected cache server owns every piece: HTTP waits for it (see `a_cache_server_owns_every_piece`).
        assert_eq!(swarm.next_http_request(3, now), None);
        swarm.remove_peer(PeerId(4));
        assert_eq!(swarm.next_http_request(3, now), Some(4));
        assert_eq!(swarm.piece_received(Source::Http(3), 4, piece(&data, 4), now), Received::Verified);
        swarm.uploaded(1234);
        let stats = swarm.stats();
        let full = PIECE as u64;
        assert_eq!(
            *stats,
            TransferStats {
                from_http: full - 100,
                from_cache_server: full,
                from_lan_peers: full,
                from_group_peers: full,
                from_internet_peers: full,
                to_peers: 1234,
            }
        );
        assert_eq!(stats.total(), data.len() as u64);
        assert!(swarm.is_complete());
    }

    #[test]
    fn rejected_pieces_are_backed_off_per_peer() {
        let config = SwarmConfig::default();
        let backoff = config.reject_backoff;
        let (_, mut swarm, now) = swarm(2, config);
        peer_with(&mut swarm, 1, PeerKind::Lan, [0], now);
        peer_with(&mut swarm, 2, PeerKind::Lan, [0], now);
        assert_eq!(swarm.next_peer_requests(A, now), vec![0]);
        swarm.request_failed(Source::Peer(A), 0, now);
        swarm.request_failed(Source::Peer(A), 0, now); // a second reject of the same piece changes nothing
        assert!(swarm.next_peer_requests(A, now).is_empty());
        assert_eq!(swarm.next_peer_requests(A, now + backoff), vec![0], "asked again after the backoff");
        swarm.request_failed(Source::Peer(A), 0, now + backoff);
        swarm.peer_have(A, 0).unwrap();
        assert_eq!(swarm.next_peer_requests(A, now + backoff), vec![0], "a new Have lifts the backoff");
        swarm.request_failed(Source::Peer(A), 0, now + backoff);
        assert_eq!(swarm.next_peer_requests(B, now + backoff), vec![0], "other peers are asked meanwhile");
    }

    #[test]
    fn http_sources_fail_and_get_banned_too() {
        let (data, mut swarm, now) = swarm(6, SwarmConfig::default());
        let first = swarm.next_http_request(0, now).unwrap();
        swarm.request_failed(Source::Http(0), first, now);
        assert_eq!(swarm.next_http_request(1, now), Some(first), "a failed request goes back to the pool");
        for _ in 0..3 {
            let index = swarm.next_http_request(0, now).unwrap();
            let mut bad = piece(&data, index).to_vec();
            bad[1] ^= 1;
            swarm.piece_received(Source::Http(0), index, &bad, now);
        }
        assert_eq!(swarm.next_http_request(0, now), None, "source 0 is banned");
        assert_eq!(swarm.counters().banned_sources, 1);
        // HTTP requests time out like peer requests.
        let timeout = SwarmConfig::default().request_timeout(PIECE as u64);
        let actions = swarm.poll(now + timeout);
        assert_eq!(actions, vec![Action::CancelHttp { source: 1, piece: first }]);
        assert_eq!(
            swarm.piece_received(Source::Http(1), first, piece(&data, first), now + timeout),
            Received::Verified
        );
    }

    #[test]
    fn extreme_settings_and_sources_do_not_panic() {
        let config = SwarmConfig {
            http_delay: Duration::MAX,
            peer_stall_timeout: Duration::MAX,
            request_timeout: Duration::MAX,
            request_timeout_per_mib: Duration::MAX,
            reject_backoff: Duration::MAX,
            ..SwarmConfig::default()
        };
        let (data, mut swarm, now) = swarm(2, config);
        peer_with(&mut swarm, 1, PeerKind::Lan, [0, 1], now);
        assert_eq!(swarm.next_http_request(0, now), None, "HTTP waits (practically) forever");
        assert!(swarm.next_wakeup(now).is_some_and(|at| at > now));
        let asked = swarm.next_peer_requests(A, now);
        swarm.request_failed(Source::Peer(A), asked[0], now);
        assert!(swarm.poll(now + Duration::from_secs(3600)).is_empty());
        assert_eq!(
            swarm.piece_received(Source::Http(99), 0, piece(&data, 0), now),
            Received::Unexpected { banned: false }
        );
    }

    #[test]
    fn peer_messages_are_checked() {
        let (_, mut swarm, now) = swarm(10, SwarmConfig::default());
        assert_eq!(swarm.peer_bitfield(A, Bitfield::new(10)), Err(Error::UnknownPeer(A)));
        swarm.add_peer(A, PeerKind::Lan, now).unwrap();
        assert_eq!(swarm.add_peer(A, PeerKind::Lan, now), Err(Error::DuplicatePeer(A)));
        assert_eq!(swarm.peer_bitfield(A, Bitfield::new(9)), Err(Error::BitfieldCount { expected: 10, actual: 9 }));
        swarm.peer_have(A, 3).unwrap();
        swarm.peer_bitfield(A, bits(10, [1, 3])).unwrap();
        assert_eq!(swarm.peer_bitfield(A, Bitfield::new(10)), Err(Error::BitfieldTwice(A)));
        assert_eq!(swarm.peer_have(A, 10), Err(Error::PieceIndex { message: "Have", piece: 10, count: 10 }));
        assert_eq!(swarm.pieces[3].availability, 1, "a Have before the bitfield is not counted twice");
        assert_eq!(
            swarm.piece_received(Source::Peer(A), 10, b"x", now),
            Received::Unexpected { banned: false },
            "an index past the end is unexpected"
        );
        assert_eq!(swarm.piece_received(Source::Peer(C), 0, b"x", now), Received::Unexpected { banned: false });
    }
}
