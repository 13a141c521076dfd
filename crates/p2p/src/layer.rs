//! The piece layer: one SHA-256 per piece, in order, 32 bytes each. It comes from the origin
//! (`GET /pieces/sha256/<content>`) or from a peer ([`Message::Layer`](crate::wire::Message::Layer)); either way it is
//! data, checked against the root in the signed catalog entry before the scheduler verifies a single piece with it.

use custody_catalog::pieces::{PieceHashes, PieceTree};

use crate::Error;

/// Checks a received piece layer against the signed tree: its length first (exactly 32 bytes per piece, without
/// hashing anything), then that it hashes up to the signed root. The result verifies pieces
/// ([`PieceHashes::verify_piece`]) and is what [`Swarm::new`](crate::swarm::Swarm::new) takes.
pub fn verify_layer(tree: &PieceTree, bytes: &[u8]) -> Result<PieceHashes, Error> {
    let expected = tree.layout().piece_count().saturating_mul(32);
    if bytes.len() as u64 != expected {
        return Err(Error::LayerLength { expected, actual: bytes.len() as u64 });
    }
    // The length is right, so the only way left for the catalog's check to fail is a root mismatch.
    tree.verify_layer_bytes(bytes).map_err(|_| Error::LayerRoot)
}

#[cfg(test)]
mod tests {
    use custody_catalog::pieces::PieceSize;
    use proptest::prelude::*;

    use super::*;

    fn content() -> impl Strategy<Value = (PieceSize, Vec<u8>)> {
        prop::sample::select(vec![16384u64, 32768]).prop_flat_map(|size| {
            (Just(PieceSize::new(size).unwrap()), prop::collection::vec(any::<u8>(), 1..size as usize * 7))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn only_the_true_layer_verifies(
            (size, data) in content(),
            junk in prop::collection::vec(any::<u8>(), 0..300),
            at in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let hashes = PieceHashes::compute(size, &data).unwrap();
            let tree = hashes.tree();
            let layer = hashes.to_layer_bytes();
            prop_assert_eq!(&verify_layer(tree, &layer).unwrap(), &hashes);

            let mut corrupted = layer.clone();
            corrupted[at.index(layer.len())] ^= flip;
            prop_assert_eq!(verify_layer(tree, &corrupted), Err(Error::LayerRoot));

            match verify_layer(tree, &junk) {
                Ok(verified) => prop_assert_eq!(&junk, &layer, "{:?}", verified),
                Err(Error::LayerLength { expected, actual }) => {
                    prop_assert_eq!(expected, layer.len() as u64);
                    prop_assert_eq!(actual, junk.len() as u64);
                    prop_assert_ne!(junk.len(), layer.len());
                }
                Err(e) => prop_assert_eq!(e, Error::LayerRoot),
            }
            let mut longer = layer.clone();
            longer.extend_from_slice(&layer[..32]);
            let is_length_error = matches!(verify_layer(tree, &longer), Err(Error::LayerLength { .. }));
            prop_assert!(is_length_error);
        }
    }
}
