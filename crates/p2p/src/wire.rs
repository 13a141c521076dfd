//! The peer protocol's wire format, version 1 (docs/p2p-protocol.md): frames of a 4-byte big-endian length, a
//! 1-byte message type and a payload, inside mutually authenticated TLS 1.3 on TCP 7680.
//!
//! [`Decoder`] is incremental: it takes bytes as they arrive in a [`BytesMut`] and returns whole messages. It refuses
//! a frame as soon as its header shows it cannot be valid (a length past the limit, an unknown type, a payload length
//! the type does not allow), before any of the payload is buffered, so a peer can never make the reader hold more than
//! [`Decoder::max_frame`] bytes plus the 4-byte length. Every error names the problem; after an error the stream is
//! out of step and the connection is closed (with [`Message::Goodbye`] and [`GoodbyeReason::ProtocolError`]).
//!
//! Limits come from the signed metadata of the content the handshake names: a piece is at most the piece size, a
//! bitfield is exactly `ceil(pieces / 8)` bytes, the layer exactly 32 bytes per piece ([`frame_limit`]).

use core::fmt;
use core::str::FromStr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use custody_catalog::Sha256Digest;
use custody_catalog::pieces::PieceLayout;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::bitfield::Bitfield;

/// The version this build speaks, sent in [`Message::Handshake`].
pub const PROTOCOL_VERSION: u16 = 1;

/// The TCP port peers listen on by default (Delivery Optimization's).
pub const DEFAULT_PORT: u16 = 7680;

/// Bytes of the length field in front of every frame.
pub const LENGTH_LEN: usize = 4;

/// Bytes of a frame's header: the length field and the type byte.
pub const HEADER_LEN: usize = LENGTH_LEN + 1;

/// Bytes in front of a piece's data: the header and the 4-byte piece index ([`encode_piece_header`]).
pub const PIECE_HEADER_LEN: usize = HEADER_LEN + 4;

/// The payload of a version-1 handshake: version (2), content id (32), piece count (4).
pub const HANDSHAKE_LEN: usize = 2 + 32 + 4;

/// The largest handshake payload accepted, so that a handshake of a later version (which may be longer) can still
/// be read and answered with [`GoodbyeReason::UnsupportedVersion`].
pub const HANDSHAKE_MAX_LEN: usize = 1024;

/// The frame limit before the content is known: a handshake of any version, a goodbye or a keep-alive.
pub const HANDSHAKE_MAX_FRAME: usize = 1 + HANDSHAKE_MAX_LEN;

/// The largest piece count the protocol carries (a layer frame is 32 bytes per piece: 128 MiB at this count).
pub const MAX_PIECE_COUNT: u32 = 1 << 22;

/// Requests a side keeps queued per connection; further requests are answered with [`Message::Reject`].
pub const MAX_QUEUED_REQUESTS: usize = 16;

/// From opening the TCP connection to having received the other side's handshake and bitfield.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A side that has sent nothing for this long sends [`Message::KeepAlive`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// A connection on which nothing has been received for this long is closed ([`GoodbyeReason::Timeout`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The content a connection is about: the SHA-256 of the whole target, as in the origin's
/// `/content/sha256/<hex>` and the peer-matching API. Written as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentId(pub [u8; 32]);

impl ContentId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<Sha256Digest> for ContentId {
    fn from(digest: Sha256Digest) -> Self {
        Self(digest.0)
    }
}

impl From<ContentId> for Sha256Digest {
    fn from(id: ContentId) -> Self {
        Sha256Digest(id.0)
    }
}

impl FromStr for ContentId {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::Parse { what: "content id", text: text.into(), reason: reason.into() };
        let is_lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if text.len() != 64 || !text.bytes().all(is_lower_hex) {
            return Err(invalid("expected 64 lower-case hex digits (a SHA-256)"));
        }
        let mut out = [0; 32];
        hex::decode_to_slice(text, &mut out).map_err(|e| invalid(&e.to_string()))?;
        Ok(Self(out))
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

impl Serialize for ContentId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ContentId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One message of the protocol. Pieces are requested and sent whole; their indexes are below the piece count of the
/// content named in the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The first message of each side: the version it speaks, the content, and the content's piece count (from the
    /// signed metadata; both sides must agree).
    Handshake { version: u16, content: ContentId, piece_count: u32 },
    /// Sent when nothing else was sent for [`KEEPALIVE_INTERVAL`].
    KeepAlive,
    /// The pieces the sender has verified; sent once, right after the handshake.
    Bitfield(Bitfield),
    /// The sender has verified one more piece.
    Have { piece: u32 },
    /// Asks for one whole piece; answered with [`Message::Piece`] or [`Message::Reject`].
    Request { piece: u32 },
    /// One whole piece, which the receiver verifies before it uses, stores, counts or offers it.
    Piece { piece: u32, data: Bytes },
    /// The sender does not have the piece or will not send it now (busy, upload policy).
    Reject { piece: u32 },
    /// The receiver drops its queued request for the piece, if it has not started sending it.
    Cancel { piece: u32 },
    /// Asks for the piece layer; answered with [`Message::Layer`].
    LayerRequest,
    /// The piece layer: 32 bytes per piece, checked against the signed root before use.
    Layer(Bytes),
    /// The sender closes the connection, and why.
    Goodbye { reason: GoodbyeReason },
}

impl Message {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Appends the frame of this message to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let payload_len = match self {
            Self::Handshake { .. } => HANDSHAKE_LEN,
            Self::KeepAlive | Self::LayerRequest => 0,
            Self::Bitfield(bits) => bits.as_bytes().len(),
            Self::Have { .. } | Self::Request { .. } | Self::Reject { .. } | Self::Cancel { .. } => 4,
            Self::Piece { data, .. } => 4 + data.len(),
            Self::Layer(layer) => layer.len(),
            Self::Goodbye { .. } => 1,
        };
        dst.reserve(HEADER_LEN + payload_len);
        // Frames built here come from values within the protocol's limits (piece data up to 16 MiB, layers up to
        // 128 MiB); a larger value would be refused by the receiver, never silently cut.
        dst.put_u32(u32::try_from(1 + payload_len).unwrap_or(u32::MAX));
        dst.put_u8(self.kind() as u8);
        match self {
            Self::Handshake { version, content, piece_count } => {
                dst.put_u16(*version);
                dst.put_slice(&content.0);
                dst.put_u32(*piece_count);
            }
            Self::KeepAlive | Self::LayerRequest => {}
            Self::Bitfield(bits) => dst.put_slice(bits.as_bytes()),
            Self::Have { piece } | Self::Request { piece } | Self::Reject { piece } | Self::Cancel { piece } => {
                dst.put_u32(*piece)
            }
            Self::Piece { piece, data } => {
                dst.put_u32(*piece);
                dst.put_slice(data);
            }
            Self::Layer(layer) => dst.put_slice(layer),
            Self::Goodbye { reason } => dst.put_u8(reason.code()),
        }
    }

    /// For the other side's first message: `Ok` when it is a handshake of [`PROTOCOL_VERSION`] for `content` with
    /// `piece_count` pieces; otherwise the reason to send in [`Message::Goodbye`] before closing.
    pub fn check_handshake(&self, content: &ContentId, piece_count: u32) -> Result<(), GoodbyeReason> {
        match self {
            Self::Handshake { version, .. } if *version != PROTOCOL_VERSION => Err(GoodbyeReason::UnsupportedVersion),
            Self::Handshake { content: theirs, piece_count: count, .. }
                if theirs == content && *count == piece_count =>
            {
                Ok(())
            }
            Self::Handshake { .. } => Err(GoodbyeReason::HandshakeMismatch),
            _ => Err(GoodbyeReason::ProtocolError),
        }
    }

    fn kind(&self) -> MessageType {
        match self {
            Self::Handshake { .. } => MessageType::Handshake,
            Self::KeepAlive => MessageType::KeepAlive,
            Self::Bitfield(_) => MessageType::Bitfield,
            Self::Have { .. } => MessageType::Have,
            Self::Request { .. } => MessageType::Request,
            Self::Piece { .. } => MessageType::Piece,
            Self::Reject { .. } => MessageType::Reject,
            Self::Cancel { .. } => MessageType::Cancel,
            Self::LayerRequest => MessageType::LayerRequest,
            Self::Layer(_) => MessageType::Layer,
            Self::Goodbye { .. } => MessageType::Goodbye,
        }
    }
}

/// The header of a [`Message::Piece`] frame carrying `len` bytes of piece `piece`, so that a large piece can be
/// written from its own buffer (or the file) after the header without copying it into a frame.
pub fn encode_piece_header(piece: u32, len: u32) -> [u8; PIECE_HEADER_LEN] {
    let mut header = [0; PIECE_HEADER_LEN];
    // `len` is a piece length, at most 16 MiB; a saturated length is refused by the receiver.
    header[..4].copy_from_slice(&len.saturating_add(5).to_be_bytes());
    header[4] = MessageType::Piece as u8;
    header[5..].copy_from_slice(&piece.to_be_bytes());
    header
}

/// The frame limit (largest length field) for content of this layout: the largest of a piece frame, the layer, the
/// bitfield and a handshake. Fails for content with more than [`MAX_PIECE_COUNT`] pieces, which is not peered.
pub fn frame_limit(layout: &PieceLayout) -> Result<usize, Error> {
    let count = piece_count(layout)?;
    let piece = 4 + layout.piece_size().get() as usize;
    let layer = 32 * count as usize;
    Ok(1 + piece.max(layer).max(Bitfield::byte_len(count)).max(HANDSHAKE_MAX_LEN))
}

/// The layout's piece count as the protocol carries it: 1 to [`MAX_PIECE_COUNT`].
pub fn piece_count(layout: &PieceLayout) -> Result<u32, Error> {
    let count = layout.piece_count();
    match u32::try_from(count) {
        Ok(count) if (1..=MAX_PIECE_COUNT).contains(&count) => Ok(count),
        _ => Err(Error::PieceCount { count, max: MAX_PIECE_COUNT.into() }),
    }
}

/// Why a side closes the connection, in [`Message::Goodbye`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GoodbyeReason {
    /// 0: the sender has what it needs from this connection (download complete, or nothing left to exchange).
    Done,
    /// 1: the sender is shutting down.
    Shutdown,
    /// 2: the receiver broke the protocol (a malformed frame, a message out of order, too many requests).
    ProtocolError,
    /// 3: the sender does not speak the receiver's protocol version.
    UnsupportedVersion,
    /// 4: the sender does not serve the content named in the handshake.
    UnknownContent,
    /// 5: the handshakes disagree (other content, or another piece count for it).
    HandshakeMismatch,
    /// 6: the receiver sent bad pieces and is banned for this content.
    Banned,
    /// 7: the sender will not serve now (connection limit, upload policy: battery, monthly cap).
    Busy,
    /// 8: nothing arrived within a timeout (handshake, idle, requests).
    Timeout,
    /// 9: the two devices already have a connection for this content.
    Duplicate,
    /// A code this version does not know (from a later version); treated as a plain close.
    Other(u8),
}

impl GoodbyeReason {
    pub fn code(self) -> u8 {
        match self {
            Self::Done => 0,
            Self::Shutdown => 1,
            Self::ProtocolError => 2,
            Self::UnsupportedVersion => 3,
            Self::UnknownContent => 4,
            Self::HandshakeMismatch => 5,
            Self::Banned => 6,
            Self::Busy => 7,
            Self::Timeout => 8,
            Self::Duplicate => 9,
            Self::Other(code) => code,
        }
    }

    pub fn from_code(code: u8) -> Self {
        match code {
            0 => Self::Done,
            1 => Self::Shutdown,
            2 => Self::ProtocolError,
            3 => Self::UnsupportedVersion,
            4 => Self::UnknownContent,
            5 => Self::HandshakeMismatch,
            6 => Self::Banned,
            7 => Self::Busy,
            8 => Self::Timeout,
            9 => Self::Duplicate,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for GoodbyeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Done => f.write_str("done"),
            Self::Shutdown => f.write_str("shutting down"),
            Self::ProtocolError => f.write_str("protocol error"),
            Self::UnsupportedVersion => f.write_str("unsupported protocol version"),
            Self::UnknownContent => f.write_str("content not served"),
            Self::HandshakeMismatch => f.write_str("handshake mismatch"),
            Self::Banned => f.write_str("banned for bad pieces"),
            Self::Busy => f.write_str("busy"),
            Self::Timeout => f.write_str("timed out"),
            Self::Duplicate => f.write_str("duplicate connection"),
            Self::Other(code) => write!(f, "reason {code}"),
        }
    }
}

/// Reads messages from a byte stream, bounded by the content's limits.
#[derive(Clone, Debug)]
pub struct Decoder {
    /// The largest length field accepted (type byte + payload).
    max_frame: usize,
    /// Known once the handshake named the content; messages naming pieces are refused before.
    piece_count: Option<u32>,
    /// The largest piece data accepted.
    max_piece: usize,
}

impl Decoder {
    /// A decoder accepting frames up to `max_frame` bytes (type byte and payload), without a piece count yet: only
    /// handshake, keep-alive, layer request and goodbye are accepted until [`Decoder::set_piece_count`].
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame, piece_count: None, max_piece: max_frame.saturating_sub(5) }
    }

    /// The decoder for the start of an incoming connection, before the handshake names the content.
    pub fn before_handshake() -> Self {
        Self::new(HANDSHAKE_MAX_FRAME)
    }

    /// The decoder for a connection about content of this layout (from its signed metadata): frames up to
    /// [`frame_limit`], pieces up to the piece size, indexes below the piece count.
    pub fn for_content(layout: &PieceLayout) -> Result<Self, Error> {
        let mut decoder = Self::new(0);
        decoder.set_content(layout)?;
        Ok(decoder)
    }

    /// Switches to the limits of the content the handshake named (bytes already buffered are kept by the caller).
    pub fn set_content(&mut self, layout: &PieceLayout) -> Result<(), Error> {
        self.max_frame = frame_limit(layout)?;
        self.piece_count = Some(piece_count(layout)?);
        self.max_piece = layout.piece_size().get() as usize;
        Ok(())
    }

    /// Sets the piece count without changing the frame limit (for a decoder made with [`Decoder::new`]).
    pub fn set_piece_count(&mut self, count: u32) -> Result<(), Error> {
        if !(1..=MAX_PIECE_COUNT).contains(&count) {
            return Err(Error::PieceCount { count: count.into(), max: MAX_PIECE_COUNT.into() });
        }
        self.piece_count = Some(count);
        Ok(())
    }

    /// The largest length field accepted: the reader never needs more than this plus [`LENGTH_LEN`] bytes buffered.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The next message in `buf`, consuming its frame; `Ok(None)` when more bytes are needed (capacity for the rest
    /// of the frame is reserved in `buf`). After an error the stream is out of step: close the connection.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Message>, Error> {
        let Some(length) = buf.get(..LENGTH_LEN) else {
            buf.reserve(HEADER_LEN - buf.len());
            return Ok(None);
        };
        let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
        if length == 0 {
            return Err(Error::EmptyFrame);
        }
        if length > self.max_frame {
            return Err(Error::FrameTooLarge { length: length as u64, max: self.max_frame });
        }
        let Some(&type_byte) = buf.get(LENGTH_LEN) else {
            buf.reserve(HEADER_LEN - buf.len());
            return Ok(None);
        };
        let kind = MessageType::from_byte(type_byte)?;
        let payload_len = length - 1;
        let (min, max) = self.payload_bounds(kind)?;
        if !(min..=max).contains(&payload_len) {
            let expected = match min == max {
                true => min.to_string(),
                false => format!("{min} to {max}"),
            };
            return Err(Error::PayloadLength { message: kind.name(), expected, actual: payload_len as u64 });
        }
        let total = LENGTH_LEN + length;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut payload = buf.split_to(total).freeze();
        payload.advance(HEADER_LEN);
        self.parse(kind, payload).map(Some)
    }

    /// The payload lengths `kind` may have under the current limits.
    fn payload_bounds(&self, kind: MessageType) -> Result<(usize, usize), Error> {
        let count = || self.piece_count.ok_or(Error::BeforeHandshake { message: kind.name() });
        Ok(match kind {
            MessageType::Handshake => (HANDSHAKE_LEN, HANDSHAKE_MAX_LEN),
            MessageType::KeepAlive | MessageType::LayerRequest => (0, 0),
            MessageType::Bitfield => {
                let len = Bitfield::byte_len(count()?);
                (len, len)
            }
            MessageType::Have | MessageType::Request | MessageType::Reject | MessageType::Cancel => {
                count()?;
                (4, 4)
            }
            MessageType::Piece => {
                count()?;
                (5, 4 + self.max_piece)
            }
            MessageType::Layer => {
                let len = 32 * count()? as usize;
                (len, len)
            }
            MessageType::Goodbye => (1, 1),
        })
    }

    /// Parses a payload whose length [`Decoder::payload_bounds`] accepted.
    fn parse(&self, kind: MessageType, mut payload: Bytes) -> Result<Message, Error> {
        // `payload_bounds` checked the payload's length against every read below, and refused the piece-naming
        // types without a piece count.
        let count = self.piece_count.unwrap_or(0);
        let index = |payload: &mut Bytes| {
            let piece = payload.get_u32();
            match piece < count {
                true => Ok(piece),
                false => Err(Error::PieceIndex { message: kind.name(), piece: piece.into(), count: count.into() }),
            }
        };
        Ok(match kind {
            MessageType::Handshake => {
                let version = payload.get_u16();
                let mut content = [0; 32];
                payload.copy_to_slice(&mut content);
                let piece_count = payload.get_u32();
                // Later versions may append fields; this version's handshake is exactly its length.
                if version == PROTOCOL_VERSION {
                    if !payload.is_empty() {
                        return Err(Error::PayloadLength {
                            message: kind.name(),
                            expected: HANDSHAKE_LEN.to_string(),
                            actual: (HANDSHAKE_LEN + payload.len()) as u64,
                        });
                    }
                    if !(1..=MAX_PIECE_COUNT).contains(&piece_count) {
                        return Err(Error::PieceCount { count: piece_count.into(), max: MAX_PIECE_COUNT.into() });
                    }
                }
                Message::Handshake { version, content: ContentId(content), piece_count }
            }
            MessageType::KeepAlive => Message::KeepAlive,
            MessageType::Bitfield => Message::Bitfield(Bitfield::from_bytes(count, &payload)?),
            MessageType::Have => Message::Have { piece: index(&mut payload)? },
            MessageType::Request => Message::Request { piece: index(&mut payload)? },
            MessageType::Reject => Message::Reject { piece: index(&mut payload)? },
            MessageType::Cancel => Message::Cancel { piece: index(&mut payload)? },
            MessageType::Piece => {
                let piece = index(&mut payload)?;
                Message::Piece { piece, data: payload }
            }
            MessageType::LayerRequest => Message::LayerRequest,
            MessageType::Layer => Message::Layer(payload),
            MessageType::Goodbye => Message::Goodbye { reason: GoodbyeReason::from_code(payload.get_u8()) },
        })
    }
}

/// The type byte of each message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum MessageType {
    Handshake = 0,
    KeepAlive = 1,
    Bitfield = 2,
    Have = 3,
    Request = 4,
    Piece = 5,
    Reject = 6,
    Cancel = 7,
    LayerRequest = 8,
    Layer = 9,
    Goodbye = 10,
}

impl MessageType {
    fn from_byte(byte: u8) -> Result<Self, Error> {
        Ok(match byte {
            0 => Self::Handshake,
            1 => Self::KeepAlive,
            2 => Self::Bitfield,
            3 => Self::Have,
            4 => Self::Request,
            5 => Self::Piece,
            6 => Self::Reject,
            7 => Self::Cancel,
            8 => Self::LayerRequest,
            9 => Self::Layer,
            10 => Self::Goodbye,
            other => return Err(Error::UnknownMessageType(other)),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Handshake => "Handshake",
            Self::KeepAlive => "KeepAlive",
            Self::Bitfield => "Bitfield",
            Self::Have => "Have",
            Self::Request => "Request",
            Self::Piece => "Piece",
            Self::Reject => "Reject",
            Self::Cancel => "Cancel",
            Self::LayerRequest => "LayerRequest",
            Self::Layer => "Layer",
            Self::Goodbye => "Goodbye",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use custody_catalog::pieces::PieceSize;
    use proptest::prelude::*;

    use super::*;

    fn encode_all(messages: &[Message]) -> BytesMut {
        let mut buf = BytesMut::new();
        for message in messages {
            message.encode(&mut buf);
        }
        buf
    }

    /// Decodes everything in `buf`; panics on an error.
    fn decode_all(decoder: &Decoder, buf: &mut BytesMut) -> Vec<Message> {
        std::iter::from_fn(|| decoder.decode(buf).unwrap()).collect()
    }

    fn decoder(piece_count: u32) -> Decoder {
        let mut decoder = Decoder::new(1 + (4 + 64usize).max(32 * piece_count as usize));
        decoder.set_piece_count(piece_count).unwrap();
        decoder
    }

    fn message(piece_count: u32, max_piece: usize) -> impl Strategy<Value = Message> {
        let piece = 0..piece_count;
        prop_oneof![
            (any::<[u8; 32]>(), 1..=MAX_PIECE_COUNT).prop_map(|(content, piece_count)| Message::Handshake {
                version: PROTOCOL_VERSION,
                content: ContentId(content),
                piece_count
            }),
            (2..=u16::MAX, any::<[u8; 32]>(), any::<u32>()).prop_map(|(version, content, piece_count)| {
                Message::Handshake { version, content: ContentId(content), piece_count }
            }),
            Just(Message::KeepAlive),
            prop::collection::vec(any::<bool>(), piece_count as usize).prop_map(move |bits| {
                let mut bitfield = Bitfield::new(piece_count);
                for (piece, _) in bits.iter().enumerate().filter(|(_, set)| **set) {
                    bitfield.set(piece as u32).unwrap();
                }
                Message::Bitfield(bitfield)
            }),
            piece.clone().prop_map(|piece| Message::Have { piece }),
            piece.clone().prop_map(|piece| Message::Request { piece }),
            (piece.clone(), prop::collection::vec(any::<u8>(), 1..=max_piece))
                .prop_map(|(piece, data)| Message::Piece { piece, data: data.into() }),
            piece.clone().prop_map(|piece| Message::Reject { piece }),
            piece.prop_map(|piece| Message::Cancel { piece }),
            Just(Message::LayerRequest),
            prop::collection::vec(any::<u8>(), 32 * piece_count as usize)
                .prop_map(|layer| Message::Layer(layer.into())),
            prop::sample::select(vec![
                GoodbyeReason::Done,
                GoodbyeReason::Shutdown,
                GoodbyeReason::ProtocolError,
                GoodbyeReason::UnsupportedVersion,
                GoodbyeReason::UnknownContent,
                GoodbyeReason::HandshakeMismatch,
                GoodbyeReason::Banned,
                GoodbyeReason::Busy,
                GoodbyeReason::Timeout,
                GoodbyeReason::Duplicate,
            ])
            .prop_map(|reason| Message::Goodbye { reason }),
            (10u8..).prop_map(|code| Message::Goodbye { reason: GoodbyeReason::Other(code) }),
        ]
    }

    fn messages() -> impl Strategy<Value = (u32, Vec<Message>)> {
        (1u32..40).prop_flat_map(|count| {
            let max_piece = decoder(count).max_frame() - 5;
            (Just(count), prop::collection::vec(message(count, max_piece), 0..12))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn encode_decode_round_trip((count, messages) in messages()) {
            let decoder = decoder(count);
            let mut buf = encode_all(&messages);
            prop_assert_eq!(decode_all(&decoder, &mut buf), messages);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn split_feeding_gives_the_same_messages(
            (count, messages) in messages(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let decoder = decoder(count);
            let bytes = encode_all(&messages).freeze();
            let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(bytes.len() + 1)).collect();
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            let mut start = 0;
            for cut in cuts {
                buf.extend_from_slice(&bytes[start..cut]);
                start = cut;
                decoded.extend(decode_all(&decoder, &mut buf));
                prop_assert!(buf.len() < LENGTH_LEN + decoder.max_frame());
            }
            prop_assert_eq!(decoded, messages);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_buffer_past_the_limit(
            count in prop::option::of(1u32..40),
            max_frame in 0usize..200,
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            chunk in 1usize..64,
        ) {
            let mut decoder = Decoder::new(max_frame);
            if let Some(count) = count {
                decoder.set_piece_count(count).unwrap();
            }
            let mut buf = BytesMut::new();
            'feed: for piece in bytes.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(message)) => {
                            // What decodes encodes back to a frame that decodes to the same message.
                            let mut again = BytesMut::new();
                            message.encode(&mut again);
                            prop_assert_eq!(decoder.decode(&mut again), Ok(Some(message)));
                        }
                        Ok(None) => {
                            prop_assert!(buf.len() < LENGTH_LEN + max_frame.max(1));
                            break;
                        }
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }

    #[test]
    fn oversize_frames_are_refused_from_their_length_alone() {
        let decoder = Decoder::new(1000);
        let mut buf = BytesMut::from(&1001u32.to_be_bytes()[..]);
        assert_eq!(decoder.decode(&mut buf), Err(Error::FrameTooLarge { length: 1001, max: 1000 }));
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let error = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(error.to_string(), "frame of 4294967295 bytes exceeds the limit of 1000 bytes");
        // A header that is too short for the type's payload is refused before the payload arrives.
        let mut buf = BytesMut::from(&[0, 0, 0, 200, 3][..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(Error::BeforeHandshake { message: "Have" }),
            "Have needs the piece count"
        );
        let mut counted = Decoder::new(1000);
        counted.set_piece_count(10).unwrap();
        assert_eq!(
            counted.decode(&mut buf),
            Err(Error::PayloadLength { message: "Have", expected: "4".into(), actual: 199 })
        );
        let mut buf = BytesMut::from(&[0, 0, 0, 200, 5][..]);
        assert_eq!(counted.decode(&mut buf), Ok(None), "a piece of 195 bytes is within the limit");
        assert!(buf.capacity() >= 204, "room for the whole frame is reserved");
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert_eq!(decoder.decode(&mut buf), Err(Error::EmptyFrame));
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 11][..]);
        assert_eq!(decoder.decode(&mut buf), Err(Error::UnknownMessageType(11)));
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 1, 0][..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(Error::PayloadLength { message: "KeepAlive", expected: "0".into(), actual: 1 })
        );
        let mut buf = BytesMut::from(&[0, 0, 0, 5, 5, 0, 0, 0, 1][..]);
        assert_eq!(
            counted.decode(&mut buf),
            Err(Error::PayloadLength { message: "Piece", expected: "5 to 999".into(), actual: 4 }),
            "a piece without data"
        );
    }

    #[test]
    fn indexes_bitfields_and_handshakes_are_checked() {
        let decoder = decoder(10);
        let frame = |message: Message| {
            let mut buf = BytesMut::new();
            message.encode(&mut buf);
            buf
        };
        assert_eq!(
            decoder.decode(&mut frame(Message::Request { piece: 10 })),
            Err(Error::PieceIndex { message: "Request", piece: 10, count: 10 })
        );
        assert_eq!(
            decoder.decode(&mut frame(Message::Piece { piece: 11, data: Bytes::from_static(b"x") })),
            Err(Error::PieceIndex { message: "Piece", piece: 11, count: 10 })
        );
        let mut spare = BytesMut::from(&[0, 0, 0, 3, 2, 0xff, 0xe0][..]);
        assert_eq!(decoder.decode(&mut spare), Err(Error::BitfieldSpareBits { count: 10 }));
        let mut short = BytesMut::from(&[0, 0, 0, 2, 2, 0xff][..]);
        assert!(matches!(decoder.decode(&mut short), Err(Error::PayloadLength { message: "Bitfield", .. })));
        let mut layer = BytesMut::from(&[0, 0, 0, 33, 9][..]);
        assert_eq!(
            decoder.decode(&mut layer),
            Err(Error::PayloadLength { message: "Layer", expected: "320".into(), actual: 32 })
        );

        let content = ContentId([9; 32]);
        let handshake = Message::Handshake { version: PROTOCOL_VERSION, content, piece_count: 10 };
        assert_eq!(handshake.check_handshake(&content, 10), Ok(()));
        assert_eq!(handshake.check_handshake(&content, 11), Err(GoodbyeReason::HandshakeMismatch));
        assert_eq!(handshake.check_handshake(&ContentId([8; 32]), 10), Err(GoodbyeReason::HandshakeMismatch));
        let v2 = Message::Handshake { version: 2, content, piece_count: 10 };
        assert_eq!(v2.check_handshake(&content, 10), Err(GoodbyeReason::UnsupportedVersion));
        assert_eq!(Message::KeepAlive.check_handshake(&content, 10), Err(GoodbyeReason::ProtocolError));

        // Version 1 is exactly 38 bytes with a piece count of at least 1; a later version may be longer, and is read
        // so that it can be answered.
        let before = Decoder::before_handshake();
        let mut buf = frame(handshake.clone());
        assert_eq!(before.decode(&mut buf), Ok(Some(handshake)));
        let mut long_v1 = frame(Message::Handshake { version: 1, content, piece_count: 10 });
        long_v1[3] += 2;
        long_v1.extend_from_slice(&[0, 0]);
        assert!(matches!(before.decode(&mut long_v1), Err(Error::PayloadLength { message: "Handshake", .. })));
        let mut long_v2 = frame(v2.clone());
        long_v2[3] += 100;
        long_v2.extend_from_slice(&[7; 100]);
        assert_eq!(before.decode(&mut long_v2), Ok(Some(v2)));
        let mut empty = frame(Message::Handshake { version: 1, content, piece_count: 0 });
        assert_eq!(before.decode(&mut empty), Err(Error::PieceCount { count: 0, max: MAX_PIECE_COUNT.into() }));
        let mut too_long = BytesMut::from(&(HANDSHAKE_MAX_FRAME as u32 + 1).to_be_bytes()[..]);
        assert!(matches!(before.decode(&mut too_long), Err(Error::FrameTooLarge { .. })));
        assert_eq!(
            before.decode(&mut frame(Message::Have { piece: 0 })),
            Err(Error::BeforeHandshake { message: "Have" })
        );
        assert_eq!(
            before.decode(&mut frame(Message::Goodbye { reason: GoodbyeReason::Busy })),
            Ok(Some(Message::Goodbye { reason: GoodbyeReason::Busy }))
        );
    }

    #[test]
    fn content_limits_and_piece_headers() {
        let layout = PieceLayout::new(NonZeroU64::new(10 << 20).unwrap(), PieceSize::new(1 << 20).unwrap());
        assert_eq!(frame_limit(&layout), Ok(1 + 4 + (1 << 20)));
        let decoder = Decoder::for_content(&layout).unwrap();
        assert_eq!(decoder.max_frame(), 1 + 4 + (1 << 20));
        // Many small pieces: the layer is the largest frame.
        let many = PieceLayout::new(NonZeroU64::new(1 << 30).unwrap(), PieceSize::MIN);
        assert_eq!(frame_limit(&many), Ok(1 + 32 * 65536));
        let too_many = PieceLayout::new(NonZeroU64::new(1 << 40).unwrap(), PieceSize::MIN);
        assert_eq!(frame_limit(&too_many), Err(Error::PieceCount { count: 1 << 26, max: MAX_PIECE_COUNT.into() }));

        let data = Bytes::from(vec![5u8; 1000]);
        let mut framed = BytesMut::new();
        Message::Piece { piece: 3, data: data.clone() }.encode(&mut framed);
        let mut zero_copy = BytesMut::from(&encode_piece_header(3, 1000)[..]);
        zero_copy.extend_from_slice(&data);
        assert_eq!(framed, zero_copy);
        assert_eq!(decoder.decode(&mut zero_copy), Ok(Some(Message::Piece { piece: 3, data })));
        // A piece longer than the piece size is refused from its header.
        let mut big = BytesMut::from(&encode_piece_header(0, (1 << 20) + 1)[..]);
        assert!(matches!(decoder.decode(&mut big), Err(Error::FrameTooLarge { .. })));
    }

    #[test]
    fn content_ids() {
        let text = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let id: ContentId = text.parse().unwrap();
        assert_eq!(id.to_string(), text);
        assert_eq!(Sha256Digest::from(id), Sha256Digest::of(b"abc"));
        assert_eq!(ContentId::from(Sha256Digest::of(b"abc")), id);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<ContentId>(&format!("\"{text}\"")).unwrap(), id);
        for bad in [&text[1..], &text.to_uppercase(), "", &format!("{text}00")] {
            let error = bad.parse::<ContentId>().unwrap_err().to_string();
            assert!(error.contains("64 lower-case hex digits"), "{error}");
        }
    }
}
