//! The piece hash tree that peer-to-peer delivery verifies every piece against: BitTorrent v2's
//! (BEP 52) SHA-256 binary Merkle tree.
//!
//! - Content is cut into 16 KiB blocks; each leaf is the SHA-256 of one block (the last block
//!   may be shorter and is hashed as it is).
//! - The number of leaves is padded to a power of two with all-zero 32-byte hashes, and each
//!   inner node is `SHA-256(left || right)`. The top is the root, BEP 52's `pieces root`.
//! - The *piece layer* is the layer in which one node covers one piece (`piece_size / 16 KiB`
//!   leaves). When the content fits in one piece, the tree has only as many leaves as the next
//!   power of two above its block count, and the piece layer is the root alone (BEP 52 stores
//!   no layer for such files).
//!
//! The root is carried in signed metadata ([`PieceInfo`](crate::PieceInfo)). A peer checks a
//! received piece either against the full piece layer, which it checks once against the root
//! ([`PieceTree::verify_layer`], then [`PieceHashes::verify_piece`]), or against a Merkle proof
//! of sibling hashes sent along with the piece ([`PieceTree::verify_proof`]). Because the layout
//! (length, piece size, hence every piece's length and the proof length) is fixed by the signed
//! metadata, a verifier never needs to tell leaves from inner nodes.

use core::fmt;
use core::num::NonZeroU64;
use core::ops::Range;
use core::str::FromStr;

use aws_lc_rs::digest::{self, SHA256};

use crate::Error;

/// The leaf size of the tree: 16 KiB.
pub const BLOCK_SIZE: usize = 16 * 1024;

/// The layout of a piece tree (content length and piece size) and its root, from signed
/// metadata: the anchor every piece is verified against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PieceTree {
    layout: PieceLayout,
    root: Sha256Digest,
}

impl PieceTree {
    pub fn new(layout: PieceLayout, root: Sha256Digest) -> Self {
        Self { layout, root }
    }

    pub fn layout(&self) -> &PieceLayout {
        &self.layout
    }

    pub fn root(&self) -> &Sha256Digest {
        &self.root
    }

    /// Verifies piece `index` (its complete data) with a Merkle proof: the sibling hashes from
    /// the piece layer up to the root, as produced by [`PieceHashes::proof`].
    pub fn verify_proof(&self, index: u64, data: &[u8], proof: &PieceProof) -> Result<(), Error> {
        let expected = self.layout.proof_len();
        if proof.0.len() != expected {
            return Err(Error::ProofLength { expected: expected as u64, actual: proof.0.len() as u64 });
        }
        let mut hash = self.layout.piece_hash(index, data)?;
        let mut position = index;
        for sibling in &proof.0 {
            hash = match position % 2 {
                0 => Sha256Digest::node(&hash, sibling),
                _ => Sha256Digest::node(sibling, &hash),
            };
            position /= 2;
        }
        match hash == self.root {
            true => Ok(()),
            false => Err(Error::PieceHash { index }),
        }
    }

    /// Checks a full piece layer (one hash per piece, in order) against the root. The result
    /// verifies single pieces without further hashing of the tree.
    pub fn verify_layer(&self, hashes: Vec<Sha256Digest>) -> Result<PieceHashes, Error> {
        let expected = self.layout.piece_count();
        if hashes.len() as u64 != expected {
            return Err(Error::LayerLength { expected, actual: hashes.len() as u64 });
        }
        let verified = PieceHashes::from_piece_hashes(self.layout, hashes);
        match verified.tree.root == self.root {
            true => Ok(verified),
            false => Err(Error::LayerRoot),
        }
    }

    /// [`PieceTree::verify_layer`] for the wire form: the piece hashes concatenated, 32 bytes
    /// each (as BEP 52 `piece layers`, except that one-piece content has a layer too: the root).
    pub fn verify_layer_bytes(&self, bytes: &[u8]) -> Result<PieceHashes, Error> {
        if !bytes.len().is_multiple_of(Sha256Digest::LEN) {
            return Err(Error::Value {
                what: "piece layer",
                reason: format!("{} bytes is not a multiple of 32", bytes.len()),
            });
        }
        let hashes = bytes.chunks_exact(Sha256Digest::LEN).map(Sha256Digest::from_slice).collect();
        self.verify_layer(hashes)
    }
}

/// The hashes of all pieces of some content, checked against the root: built from the content
/// ([`PieceTreeBuilder`], [`PieceHashes::compute`]) or from a piece layer received from a peer
/// or a server ([`PieceTree::verify_layer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceHashes {
    tree: PieceTree,
    /// `levels[0]` is the piece layer, the last level is `[root]`. Every level below the root
    /// is padded to an even length with the hash of an all-zero subtree of its height.
    levels: Vec<Vec<Sha256Digest>>,
}

impl PieceHashes {
    /// The piece tree of `data` in one call; the same as feeding it to a [`PieceTreeBuilder`].
    pub fn compute(piece_size: PieceSize, data: &[u8]) -> Result<Self, Error> {
        let mut builder = PieceTreeBuilder::new(piece_size);
        builder.update(data);
        builder.finish()
    }

    /// The layout and root.
    pub fn tree(&self) -> &PieceTree {
        &self.tree
    }

    pub fn root(&self) -> &Sha256Digest {
        &self.tree.root
    }

    /// One hash per piece, in order.
    pub fn piece_hashes(&self) -> &[Sha256Digest] {
        // `piece_count` is the length of the unpadded piece layer, which fits in memory.
        &self.levels[0][..self.tree.layout.piece_count() as usize]
    }

    /// The piece layer in its wire form, for [`PieceTree::verify_layer_bytes`].
    pub fn to_layer_bytes(&self) -> Vec<u8> {
        self.piece_hashes().iter().flat_map(|hash| hash.0).collect()
    }

    /// Verifies piece `index` (its complete data) against the piece layer.
    pub fn verify_piece(&self, index: u64, data: &[u8]) -> Result<(), Error> {
        let hash = self.tree.layout.piece_hash(index, data)?;
        // `piece_hash` checked `index < piece_count`, the length of the piece layer.
        match hash == self.levels[0][index as usize] {
            true => Ok(()),
            false => Err(Error::PieceHash { index }),
        }
    }

    /// The Merkle proof for piece `index`: its sibling hashes from the piece layer up to the
    /// root, for [`PieceTree::verify_proof`].
    pub fn proof(&self, index: u64) -> Result<PieceProof, Error> {
        self.tree.layout.piece_range(index)?;
        // Checked above: `index < piece_count`, the length of the piece layer.
        let mut position = index as usize;
        let mut siblings = Vec::with_capacity(self.levels.len() - 1);
        for level in &self.levels[..self.levels.len() - 1] {
            // Levels below the root have even lengths, so the sibling exists.
            siblings.push(level[position ^ 1]);
            position /= 2;
        }
        Ok(PieceProof(siblings))
    }

    /// Builds the tree above a piece layer of `layout.piece_count()` hashes.
    fn from_piece_hashes(layout: PieceLayout, piece_hashes: Vec<Sha256Digest>) -> Self {
        let mut pad = Sha256Digest::zero_subtree(layout.leaves_per_piece().trailing_zeros());
        let mut levels = vec![piece_hashes];
        while let Some(level) = levels.last_mut().filter(|level| level.len() > 1) {
            if level.len() % 2 == 1 {
                level.push(pad);
            }
            let above = level.chunks_exact(2).map(|pair| Sha256Digest::node(&pair[0], &pair[1])).collect();
            levels.push(above);
            pad = Sha256Digest::node(&pad, &pad);
        }
        // The loop ends on a level of one hash: the root.
        let root = levels[levels.len() - 1][0];
        Self { tree: PieceTree { layout, root }, levels }
    }
}

/// Computes the piece tree of content fed in chunks of any size.
#[derive(Clone)]
pub struct PieceTreeBuilder {
    piece_size: PieceSize,
    length: u64,
    /// The current partial block, shorter than [`BLOCK_SIZE`].
    block: Vec<u8>,
    /// The leaf hashes of the current piece, fewer than a piece holds.
    leaves: Vec<Sha256Digest>,
    pieces: Vec<Sha256Digest>,
}

impl PieceTreeBuilder {
    pub fn new(piece_size: PieceSize) -> Self {
        Self {
            piece_size,
            length: 0,
            block: Vec::with_capacity(BLOCK_SIZE),
            leaves: Vec::with_capacity(piece_size.blocks()),
            pieces: Vec::new(),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.length += data.len() as u64;
        while !data.is_empty() {
            if self.block.is_empty() && data.len() >= BLOCK_SIZE {
                let (block, rest) = data.split_at(BLOCK_SIZE);
                self.push_leaf(Sha256Digest::of(block));
                data = rest;
                continue;
            }
            let take = (BLOCK_SIZE - self.block.len()).min(data.len());
            let (head, rest) = data.split_at(take);
            self.block.extend_from_slice(head);
            data = rest;
            if self.block.len() == BLOCK_SIZE {
                let leaf = Sha256Digest::of(&self.block);
                self.block.clear();
                self.push_leaf(leaf);
            }
        }
    }

    /// The piece hashes and root; fails on empty content, which has no tree.
    pub fn finish(mut self) -> Result<PieceHashes, Error> {
        let length = NonZeroU64::new(self.length).ok_or(Error::EmptyContent)?;
        if !self.block.is_empty() {
            let leaf = Sha256Digest::of(&self.block);
            self.push_leaf(leaf);
        }
        if !self.leaves.is_empty() {
            let width = match self.pieces.is_empty() {
                // One-piece content: the tree is only as wide as its blocks need.
                true => self.leaves.len().next_power_of_two(),
                false => self.piece_size.blocks(),
            };
            let piece = merkle_root(&mut self.leaves, width, Sha256Digest::ZERO);
            self.pieces.push(piece);
        }
        let layout = PieceLayout::new(length, self.piece_size);
        Ok(PieceHashes::from_piece_hashes(layout, self.pieces))
    }

    fn push_leaf(&mut self, leaf: Sha256Digest) {
        self.leaves.push(leaf);
        let width = self.piece_size.blocks();
        if self.leaves.len() == width {
            let piece = merkle_root(&mut self.leaves, width, Sha256Digest::ZERO);
            self.pieces.push(piece);
        }
    }
}

impl fmt::Debug for PieceTreeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PieceTreeBuilder")
            .field("piece_size", &self.piece_size)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// A Merkle proof for one piece: the sibling hashes from the piece layer up to the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceProof(Vec<Sha256Digest>);

impl PieceProof {
    pub fn new(siblings: Vec<Sha256Digest>) -> Self {
        Self(siblings)
    }

    /// Parses the wire form: the sibling hashes concatenated, 32 bytes each, lowest first.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if !bytes.len().is_multiple_of(Sha256Digest::LEN) {
            return Err(Error::Value {
                what: "piece proof",
                reason: format!("{} bytes is not a multiple of 32", bytes.len()),
            });
        }
        Ok(Self(bytes.chunks_exact(Sha256Digest::LEN).map(Sha256Digest::from_slice).collect()))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|hash| hash.0).collect()
    }

    pub fn siblings(&self) -> &[Sha256Digest] {
        &self.0
    }
}

/// The content length and piece size: how content is cut into pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PieceLayout {
    length: NonZeroU64,
    piece_size: PieceSize,
}

impl PieceLayout {
    pub fn new(length: NonZeroU64, piece_size: PieceSize) -> Self {
        Self { length, piece_size }
    }

    pub fn length(&self) -> NonZeroU64 {
        self.length
    }

    pub fn piece_size(&self) -> PieceSize {
        self.piece_size
    }

    /// The number of pieces; every piece but the last is `piece_size` long.
    pub fn piece_count(&self) -> u64 {
        self.length.get().div_ceil(u64::from(self.piece_size.get()))
    }

    /// The byte range of piece `index` in the content.
    pub fn piece_range(&self, index: u64) -> Result<Range<u64>, Error> {
        let count = self.piece_count();
        if index >= count {
            return Err(Error::PieceIndex { index, count });
        }
        let start = index * u64::from(self.piece_size.get());
        let end = start.saturating_add(u64::from(self.piece_size.get())).min(self.length.get());
        Ok(start..end)
    }

    /// The number of sibling hashes in a [`PieceProof`]: the height of the tree above the piece
    /// layer.
    pub fn proof_len(&self) -> usize {
        self.piece_count().next_power_of_two().trailing_zeros() as usize
    }

    /// The number of leaves under one node of the piece layer.
    fn leaves_per_piece(&self) -> usize {
        match self.piece_count() {
            // At most `piece_size.blocks()`, so it fits in a `usize`.
            1 => self.length.get().div_ceil(BLOCK_SIZE as u64).next_power_of_two() as usize,
            _ => self.piece_size.blocks(),
        }
    }

    /// The hash of piece `index`, after checking the index and the data's length.
    fn piece_hash(&self, index: u64, data: &[u8]) -> Result<Sha256Digest, Error> {
        let range = self.piece_range(index)?;
        let expected = range.end - range.start;
        if data.len() as u64 != expected {
            return Err(Error::PieceLength { index, expected, actual: data.len() as u64 });
        }
        let mut leaves = data.chunks(BLOCK_SIZE).map(Sha256Digest::of).collect();
        Ok(merkle_root(&mut leaves, self.leaves_per_piece(), Sha256Digest::ZERO))
    }
}

/// The piece size: a power of two from 16 KiB ([`PieceSize::MIN`]) to 16 MiB
/// ([`PieceSize::MAX`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PieceSize(u32);

impl PieceSize {
    pub const MIN: Self = Self(BLOCK_SIZE as u32);
    pub const MAX: Self = Self(16 * 1024 * 1024);

    pub fn new(bytes: u64) -> Result<Self, Error> {
        match u32::try_from(bytes) {
            Ok(size) if size.is_power_of_two() && (Self::MIN.0..=Self::MAX.0).contains(&size) => Ok(Self(size)),
            _ => Err(Error::Value {
                what: "piece size",
                reason: format!("{bytes} is not a power of two from 16384 to 16777216"),
            }),
        }
    }

    /// The size in bytes.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The number of 16 KiB blocks in a piece.
    fn blocks(self) -> usize {
        self.0 as usize / BLOCK_SIZE
    }
}

/// A SHA-256 digest, written as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    pub const LEN: usize = 32;

    /// The padding leaf of BEP 52.
    const ZERO: Self = Self([0; 32]);

    /// The SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_slice(digest::digest(&SHA256, data).as_ref())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn node(left: &Self, right: &Self) -> Self {
        let mut context = digest::Context::new(&SHA256);
        context.update(&left.0);
        context.update(&right.0);
        Self::from_slice(context.finish().as_ref())
    }

    /// The root of a subtree of `2^height` zero leaves.
    fn zero_subtree(height: u32) -> Self {
        (0..height).fold(Self::ZERO, |hash, _| Self::node(&hash, &hash))
    }

    /// Callers pass exactly 32 bytes (a SHA-256 output or a 32-byte chunk).
    pub(crate) fn from_slice(bytes: &[u8]) -> Self {
        let mut out = [0; 32];
        out.copy_from_slice(bytes);
        Self(out)
    }
}

impl FromStr for Sha256Digest {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let is_lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        let mut out = [0; 32];
        match text.len() == 64 && text.bytes().all(is_lower_hex) {
            true => {
                hex::decode_to_slice(text, &mut out)
                    .map_err(|e| Error::Value { what: "SHA-256 digest", reason: e.to_string() })?;
                Ok(Self(out))
            }
            false => Err(Error::Value { what: "SHA-256 digest", reason: "expected 64 lower-case hex digits".into() }),
        }
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

/// Reduces `level` (1 to `width` hashes, `width` a power of two) to the root of a tree `width`
/// wide whose missing nodes at the bottom are `pad`. Empties `level`, keeping its capacity.
fn merkle_root(level: &mut Vec<Sha256Digest>, mut width: usize, mut pad: Sha256Digest) -> Sha256Digest {
    while width > 1 {
        if level.len() % 2 == 1 {
            level.push(pad);
        }
        for i in 0..level.len() / 2 {
            level[i] = Sha256Digest::node(&level[2 * i], &level[2 * i + 1]);
        }
        level.truncate(level.len() / 2);
        pad = Sha256Digest::node(&pad, &pad);
        width /= 2;
    }
    // Callers pass at least one hash, and the loop keeps at least one.
    let root = level[0];
    level.clear();
    root
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The pattern the reference vectors were generated from.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 31 + 7) % 251) as u8).collect()
    }

    fn size(bytes: u64) -> PieceSize {
        PieceSize::new(bytes).unwrap()
    }

    /// Vectors from libtorrent 2.0.8 (Debian `python3-libtorrent`): a v2-only torrent of
    /// `pattern(length)` with `piece_size`; its `pieces root`, the number of piece-layer hashes
    /// (0: libtorrent stores no layer for one-piece files) and the SHA-256 of the layer.
    const LIBTORRENT: &[(usize, u64, &str, usize, &str)] = &[
        (1, 16384, "ca358758f6d27e6cf45272937977a748fd88391db679ceda7dc7bf1f005ee879", 0, ""),
        (16384, 16384, "e6494c86814963a758f59bf832e78df26f8415657cdf64bd2eb1a3e18721bcc9", 0, ""),
        (
            16385,
            16384,
            "4cfab4c81a38928437280fa27f6956592e9d5ecac29e7d318434d70e5a64b1c0",
            2,
            "4cfab4c81a38928437280fa27f6956592e9d5ecac29e7d318434d70e5a64b1c0",
        ),
        (49252, 65536, "819bb61a69cede713dc724c5af2d4cf927d359752f3373692c7dc152bbcc4e1f", 0, ""),
        (
            327681,
            65536,
            "6f8dbad06573dc30fae5159b1ce57f590a499e246f557ba1b4a07e255ab25820",
            6,
            "0d0769f85116c77dec2cb32218856ad327e60e9b6d5f592ffee06e3994c157d2",
        ),
        (
            300000,
            32768,
            "f4a5a42762042bc20fbf2b8a9359d82c5bff6fa5a502e9c078e4dbeee57b34e1",
            10,
            "b57d189627ef80b8cfcd8e45e3980ec557b6b2c54f544057acae4c05e9e7a273",
        ),
        (40000, 262144, "f3af73764d3555bfc827399e9bfa56bb753d91382f4d34b48c91974ce3a727c0", 0, ""),
        (
            147456,
            16384,
            "225fe744f801fc950710409d08e2b78690b87764c4137431a95d9e038e31a398",
            9,
            "3250582d074f98afb80fa9c2d9583061066d61c68e7b6cb71c12fdc9dc8ddb11",
        ),
    ];

    #[test]
    fn matches_libtorrent() {
        for &(length, piece_size, root, layer_count, layer_sha256) in LIBTORRENT {
            let hashes = PieceHashes::compute(size(piece_size), &pattern(length)).unwrap();
            assert_eq!(hashes.root().to_string(), root, "root of {length}/{piece_size}");
            if layer_count == 0 {
                assert_eq!(hashes.piece_hashes(), &[*hashes.root()]);
            } else {
                assert_eq!(hashes.piece_hashes().len(), layer_count);
                let layer = Sha256Digest::of(&hashes.to_layer_bytes());
                assert_eq!(layer.to_string(), layer_sha256, "layer of {length}/{piece_size}");
            }
        }
    }

    /// BEP 52 written out directly: every leaf, padded to a power of two with zero hashes, the
    /// whole tree; the piece layer is the level `log2(blocks per piece)` above the leaves.
    fn reference(piece_size: u64, data: &[u8]) -> (Sha256Digest, Vec<Sha256Digest>) {
        let mut level: Vec<Sha256Digest> = data.chunks(BLOCK_SIZE).map(Sha256Digest::of).collect();
        level.resize(level.len().next_power_of_two(), Sha256Digest::ZERO);
        let mut levels = vec![level];
        while levels.last().unwrap().len() > 1 {
            let above = levels.last().unwrap().chunks(2).map(|pair| Sha256Digest::node(&pair[0], &pair[1])).collect();
            levels.push(above);
        }
        let root = levels.last().unwrap()[0];
        let pieces = data.len().div_ceil(piece_size as usize);
        let layer = match pieces {
            1 => vec![root],
            _ => levels[(piece_size as usize / BLOCK_SIZE).trailing_zeros() as usize][..pieces].to_vec(),
        };
        (root, layer)
    }

    fn piece_size_strategy() -> impl Strategy<Value = PieceSize> {
        prop::sample::select(vec![16384u64, 32768, 65536]).prop_map(size)
    }

    /// Content and a piece size, with the content from a few bytes to 9 pieces.
    fn content() -> impl Strategy<Value = (PieceSize, Vec<u8>)> {
        piece_size_strategy().prop_flat_map(|piece_size| {
            let max = piece_size.get() as usize * 9;
            (Just(piece_size), prop::collection::vec(any::<u8>(), 1..max))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn builder_matches_reference_for_any_chunking(
            (piece_size, data) in content(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(data.len() + 1)).collect();
            cuts.sort_unstable();
            let mut builder = PieceTreeBuilder::new(piece_size);
            let mut start = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                builder.update(&data[start..cut]);
                start = cut;
            }
            let chunked = builder.finish().unwrap();
            let one_shot = PieceHashes::compute(piece_size, &data).unwrap();
            prop_assert_eq!(&chunked, &one_shot);

            let (root, layer) = reference(u64::from(piece_size.get()), &data);
            prop_assert_eq!(one_shot.root(), &root);
            prop_assert_eq!(one_shot.piece_hashes(), &layer[..]);
        }

        #[test]
        fn every_piece_verifies_and_any_corruption_fails(
            (piece_size, data) in content(),
            pick in any::<prop::sample::Index>(),
            offset in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let hashes = PieceHashes::compute(piece_size, &data).unwrap();
            let tree = *hashes.tree();
            let layout = tree.layout();
            let count = layout.piece_count();
            let piece = |index: u64| {
                let range = layout.piece_range(index).unwrap();
                &data[range.start as usize..range.end as usize]
            };
            for index in 0..count {
                let proof = hashes.proof(index).unwrap();
                prop_assert_eq!(proof.siblings().len(), layout.proof_len());
                prop_assert!(hashes.verify_piece(index, piece(index)).is_ok());
                prop_assert!(tree.verify_proof(index, piece(index), &proof).is_ok());
            }

            let index = pick.index(count as usize) as u64;
            let proof = hashes.proof(index).unwrap();
            let mut corrupted = piece(index).to_vec();
            let at = offset.index(corrupted.len());
            corrupted[at] ^= flip;
            prop_assert!(
                matches!(hashes.verify_piece(index, &corrupted), Err(Error::PieceHash { .. })),
                "corrupted piece accepted by the layer"
            );
            prop_assert!(
                matches!(tree.verify_proof(index, &corrupted, &proof), Err(Error::PieceHash { .. })),
                "corrupted piece accepted by the proof"
            );

            // The right data under any other index fails, unless that piece is byte-identical.
            for other in (0..count).filter(|other| *other != index) {
                if piece(other) == piece(index) {
                    continue;
                }
                prop_assert!(hashes.verify_piece(other, piece(index)).is_err());
                prop_assert!(tree.verify_proof(other, piece(index), &proof).is_err());
                prop_assert!(tree.verify_proof(other, piece(index), &hashes.proof(other).unwrap()).is_err());
            }
            prop_assert!(
                matches!(hashes.verify_piece(count, piece(index)), Err(Error::PieceIndex { .. })),
                "index past the end accepted"
            );

            // A corrupted proof fails.
            for at in 0..proof.siblings().len() {
                let mut bytes = proof.to_bytes();
                bytes[at * Sha256Digest::LEN] ^= flip;
                let bad = PieceProof::from_bytes(&bytes).unwrap();
                prop_assert!(tree.verify_proof(index, piece(index), &bad).is_err());
            }
        }

        #[test]
        fn layer_round_trips_and_corrupted_layers_fail(
            (piece_size, data) in content(),
            offset in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let hashes = PieceHashes::compute(piece_size, &data).unwrap();
            let tree = hashes.tree();
            let mut bytes = hashes.to_layer_bytes();
            prop_assert_eq!(&tree.verify_layer_bytes(&bytes).unwrap(), &hashes);
            let at = offset.index(bytes.len());
            bytes[at] ^= flip;
            prop_assert!(matches!(tree.verify_layer_bytes(&bytes), Err(Error::LayerRoot)));
        }
    }

    #[test]
    fn wrong_lengths_are_rejected() {
        let data = pattern(100_000);
        let hashes = PieceHashes::compute(size(32768), &data).unwrap();
        let tree = hashes.tree();
        assert_eq!(tree.layout().piece_count(), 4);
        assert_eq!(tree.layout().proof_len(), 2);
        assert!(matches!(
            hashes.verify_piece(0, &data[..32767]),
            Err(Error::PieceLength { index: 0, expected: 32768, actual: 32767 })
        ));
        assert!(matches!(hashes.verify_piece(3, &data[98304..99999]), Err(Error::PieceLength { .. })));
        assert!(hashes.verify_piece(3, &data[98304..]).is_ok());
        let proof = hashes.proof(1).unwrap();
        let short = PieceProof::new(proof.siblings()[..1].to_vec());
        assert!(matches!(
            tree.verify_proof(1, &data[32768..65536], &short),
            Err(Error::ProofLength { expected: 2, actual: 1 })
        ));
        assert!(matches!(
            tree.verify_layer(hashes.piece_hashes()[..3].to_vec()),
            Err(Error::LayerLength { expected: 4, actual: 3 })
        ));
        assert!(tree.verify_layer_bytes(&[0; 33]).is_err());
        assert!(PieceProof::from_bytes(&[0; 31]).is_err());
        assert!(matches!(hashes.proof(4), Err(Error::PieceIndex { index: 4, count: 4 })));
    }

    #[test]
    fn one_piece_content_verifies_against_the_root() {
        let data = pattern(40_000);
        let hashes = PieceHashes::compute(size(262144), &data).unwrap();
        let proof = hashes.proof(0).unwrap();
        assert!(proof.siblings().is_empty());
        assert!(hashes.tree().verify_proof(0, &data, &proof).is_ok());
    }

    #[test]
    fn empty_content_has_no_tree() {
        assert!(matches!(PieceHashes::compute(PieceSize::MIN, &[]), Err(Error::EmptyContent)));
    }

    #[test]
    fn piece_sizes() {
        assert!(PieceSize::new(16384).is_ok());
        assert!(PieceSize::new(1 << 24).is_ok());
        for bad in [0, 8192, 16383, 16385, 3 << 14, 1 << 25, 1 << 40] {
            assert!(PieceSize::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digest_text() {
        let digest = Sha256Digest::of(b"abc");
        let text = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(digest.to_string(), text);
        assert_eq!(text.parse::<Sha256Digest>().unwrap(), digest);
        assert!(text.to_uppercase().parse::<Sha256Digest>().is_err());
        assert!(text[1..].parse::<Sha256Digest>().is_err());
    }
}
