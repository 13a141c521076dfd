//! What the payload of an update is: its length, SHA-256 and, for peer-to-peer delivery, the
//! piece size and root of its piece hash tree.

use core::fmt;
use core::num::NonZeroU64;

use aws_lc_rs::digest::{self, SHA256};
use serde_json::{Map, Value};

use crate::Error;
use crate::json::{Field, string_enum};
use crate::pieces::{PieceHashes, PieceLayout, PieceSize, PieceTree, PieceTreeBuilder, Sha256Digest};

/// The payload of an update. `length` and `sha256` repeat the TUF target's length and SHA-256
/// so that the entry is self-describing; the agent checks that they agree with the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentInfo {
    pub length: NonZeroU64,
    pub sha256: Sha256Digest,
    /// Present when the payload may be fetched from peers.
    pub pieces: Option<PieceInfo>,
}

impl ContentInfo {
    /// The signed piece tree that peers' pieces are verified against, if the payload may be
    /// fetched from peers.
    pub fn piece_tree(&self) -> Option<PieceTree> {
        self.pieces.as_ref().map(|pieces| PieceTree::new(PieceLayout::new(self.length, pieces.piece_size), pieces.root))
    }

    pub(crate) fn from_json(field: Field<'_>) -> Result<Self, Error> {
        let object = field.strict_object(&["length", "sha256", "pieces"])?;
        let length_field = object.required("length")?;
        let length = NonZeroU64::new(length_field.u64()?).ok_or_else(|| length_field.invalid("must be at least 1"))?;
        Ok(Self {
            length,
            sha256: object.required("sha256")?.parse()?,
            pieces: object.optional("pieces").map(PieceInfo::from_json).transpose()?,
        })
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("length".into(), self.length.get().into());
        object.insert("sha256".into(), self.sha256.to_string().into());
        if let Some(pieces) = &self.pieces {
            let mut pieces_object = Map::new();
            pieces_object.insert("piece_size".into(), pieces.piece_size.get().into());
            pieces_object.insert("tree".into(), pieces.tree.as_str().into());
            pieces_object.insert("root".into(), pieces.root.to_string().into());
            object.insert("pieces".into(), Value::Object(pieces_object));
        }
        Value::Object(object)
    }
}

/// How the payload is cut into pieces for peer-to-peer delivery, and the root of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceInfo {
    pub piece_size: PieceSize,
    pub tree: HashTreeKind,
    pub root: Sha256Digest,
}

impl PieceInfo {
    fn from_json(field: Field<'_>) -> Result<Self, Error> {
        let object = field.strict_object(&["piece_size", "tree", "root"])?;
        let size_field = object.required("piece_size")?;
        Ok(Self {
            piece_size: PieceSize::new(size_field.u64()?).map_err(|e| size_field.locate(e))?,
            tree: object.required("tree")?.parse()?,
            root: object.required("root")?.parse()?,
        })
    }
}

string_enum! {
    /// The kind of piece hash tree.
    pub enum HashTreeKind ("hash tree") {
        /// BEP 52: SHA-256 binary Merkle tree over 16 KiB blocks (see [`crate::pieces`]).
        Bep52Sha256 => "bep52-sha256",
    }
}

/// Computes a payload's [`ContentInfo`] (and its piece hashes) from its bytes, fed in chunks:
/// for the repository tool, which reads the payload once.
pub struct ContentHasher {
    length: u64,
    sha256: digest::Context,
    pieces: Option<PieceTreeBuilder>,
}

impl ContentHasher {
    /// With a piece size, the payload is prepared for peer-to-peer delivery.
    pub fn new(piece_size: Option<PieceSize>) -> Self {
        Self { length: 0, sha256: digest::Context::new(&SHA256), pieces: piece_size.map(PieceTreeBuilder::new) }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.length += data.len() as u64;
        self.sha256.update(data);
        if let Some(pieces) = &mut self.pieces {
            pieces.update(data);
        }
    }

    /// The content info, and the piece hashes when a piece size was given (to publish the
    /// piece layer and serve proofs). Fails on an empty payload.
    pub fn finish(self) -> Result<(ContentInfo, Option<PieceHashes>), Error> {
        let length = NonZeroU64::new(self.length).ok_or(Error::EmptyContent)?;
        let sha256 = Sha256Digest::from_slice(self.sha256.finish().as_ref());
        let hashes = self.pieces.map(PieceTreeBuilder::finish).transpose()?;
        let info = ContentInfo {
            length,
            sha256,
            pieces: hashes.as_ref().map(|hashes| PieceInfo {
                piece_size: hashes.tree().layout().piece_size(),
                tree: HashTreeKind::Bep52Sha256,
                root: *hashes.root(),
            }),
        };
        Ok((info, hashes))
    }
}

impl fmt::Debug for ContentHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentHasher")
            .field("length", &self.length)
            .field("pieces", &self.pieces)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hasher_computes_length_digest_and_tree() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let piece_size = PieceSize::new(32768).unwrap();
        let mut hasher = ContentHasher::new(Some(piece_size));
        for chunk in data.chunks(7000) {
            hasher.update(chunk);
        }
        let (info, hashes) = hasher.finish().unwrap();
        let hashes = hashes.unwrap();
        assert_eq!(info.length.get(), 100_000);
        assert_eq!(info.sha256, Sha256Digest::of(&data));
        assert_eq!(hashes, PieceHashes::compute(piece_size, &data).unwrap());
        assert_eq!(info.piece_tree().as_ref(), Some(hashes.tree()));
        let back = ContentInfo::from_json(Field::root(&info.to_json())).unwrap();
        assert_eq!(back, info);
    }

    #[test]
    fn hasher_without_pieces_and_empty_content() {
        let mut hasher = ContentHasher::new(None);
        hasher.update(b"abc");
        let (info, hashes) = hasher.finish().unwrap();
        assert!(hashes.is_none() && info.pieces.is_none() && info.piece_tree().is_none());
        assert!(matches!(ContentHasher::new(None).finish(), Err(Error::EmptyContent)));
    }
}
