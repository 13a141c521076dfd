//! Peer-to-peer delivery for custody, sans I/O: the wire format of the peer protocol, the per-download piece
//! scheduler, the Delivery Optimization policies and the peer-matching rules. No sockets, files or clocks: callers
//! pass bytes and `std::time::Instant` values in and carry out the values that come back.
//!
//! - [`wire`]: frames and messages of the protocol on TCP 7680 (docs/p2p-protocol.md), an incremental
//!   [`Decoder`] bounded by the content's piece size and count.
//! - [`bitfield`]: which pieces a side has, in BitTorrent's wire form.
//! - [`layer`]: the piece layer (32 bytes per piece) checked against the signed root before use.
//! - [`swarm`]: [`Swarm`], the scheduler of one download: rarest first from peers, HTTP in parallel,
//!   endgame, timeouts, every piece verified against the signed piece tree before it counts, bans.
//! - [`stats`]: bytes per source kind and Delivery Optimization's `PercentPeerCaching`.
//! - [`policy`]: download modes, Delivery Optimization's defaults and the decisions taken from them, a token bucket.
//! - [`matching`]: which devices may peer with which, by download mode, address and group.
//!
//! Trust: the only hashes a piece is checked against come from the signed catalog entry
//! (`custody_catalog::ContentInfo::piece_tree`); a piece layer received from anyone is data, checked up to that root
//! ([`layer::verify_layer`]) before the scheduler takes it.

pub mod bitfield;
pub mod layer;
pub mod matching;
pub mod policy;
pub mod stats;
pub mod swarm;
pub mod wire;

pub use bitfield::Bitfield;
pub use matching::{Announce, Subnet, matches};
pub use policy::{CacheEntry, DeviceResources, DownloadMode, PeerPolicy, RateLimiter, Refusal};
pub use stats::TransferStats;
pub use swarm::{Action, DropReason, PeerId, PeerKind, Received, Source, Swarm, SwarmConfig, SwarmCounters};
pub use wire::{ContentId, Decoder, GoodbyeReason, Message};

/// The error type of this crate: malformed or out-of-bounds input from a peer (the wire decoder, bitfields, the
/// piece layer), protocol violations seen by the scheduler, and invalid values parsed from text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A frame's length field is 0; every frame has at least its type byte.
    #[error("frame length 0: a frame holds at least its type byte")]
    EmptyFrame,

    /// A frame's length field is larger than the decoder's limit (the content's piece size plus headers, or the
    /// handshake's size before the content is known). Refused before any of it is buffered.
    #[error("frame of {length} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { length: u64, max: usize },

    /// A frame's type byte names no message of this protocol version.
    #[error("unknown message type {0}")]
    UnknownMessageType(u8),

    /// A message's payload is not of the length its type requires.
    #[error("{message} payload of {actual} bytes, expected {expected}")]
    PayloadLength { message: &'static str, expected: String, actual: u64 },

    /// A message that names pieces arrived before the piece count was known (before the handshake).
    #[error("{message} before the handshake: the piece count is not known yet")]
    BeforeHandshake { message: &'static str },

    /// A piece index at or past the piece count.
    #[error("{message} for piece {piece}, but the content has {count} pieces")]
    PieceIndex { message: &'static str, piece: u64, count: u64 },

    /// A handshake names a piece count of 0 or more than the protocol carries.
    #[error("piece count {count} is out of range (1 to {max})")]
    PieceCount { count: u64, max: u64 },

    /// A bitfield's spare bits (past the last piece, in its last byte) are not zero.
    #[error("bitfield has spare bits set past piece {count}")]
    BitfieldSpareBits { count: u32 },

    /// A piece layer whose length is not 32 bytes per piece.
    #[error("piece layer of {actual} bytes, expected {expected} (32 per piece)")]
    LayerLength { expected: u64, actual: u64 },

    /// A piece layer that does not hash up to the signed root.
    #[error("piece layer does not match the signed root")]
    LayerRoot,

    /// The scheduler was handed a peer it does not know (never added, or removed).
    #[error("unknown peer {0}")]
    UnknownPeer(swarm::PeerId),

    /// A peer already known to the scheduler was added again.
    #[error("peer {0} was already added")]
    DuplicatePeer(swarm::PeerId),

    /// A banned peer tried to take part again.
    #[error("peer {0} is banned for this content")]
    BannedPeer(swarm::PeerId),

    /// A peer sent its bitfield twice (it is sent once, right after the handshake).
    #[error("peer {0} sent a second bitfield")]
    BitfieldTwice(swarm::PeerId),

    /// The have-bitfield given to the scheduler does not have one bit per piece.
    #[error("bitfield of {actual} pieces for content of {expected} pieces")]
    BitfieldCount { expected: u64, actual: u64 },

    /// A value parsed from text (a content id, an address with prefix, a download mode) is invalid.
    #[error("invalid {what} {text:?}: {reason}")]
    Parse { what: &'static str, text: String, reason: String },
}
