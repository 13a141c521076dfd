//! Snapshot Merkle proofs from untrusted bytes, checked against fixed trees.
//!
//! Input: the first byte chooses the mode. Below 0x80 it picks one of the fixed trees and the rest is a proof: a
//! proof that verifies must prove one of that tree's entries exactly (the fuzzer cannot find SHA-256 collisions,
//! so anything else is a forgery the verifier let through). From 0x80 the rest is a `snapshot.meta` map: the tree
//! built over it must verify every proof it hands out.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use custody_tuf::MetaFile;
use custody_tuf::snapshot_merkle::{MerkleCommitment, SnapshotProof, SnapshotTree};
use libfuzzer_sys::fuzz_target;

struct Fixed {
    version: u64,
    entries: BTreeMap<String, MetaFile>,
    commitment: MerkleCommitment,
}

fn trees() -> &'static [Fixed] {
    static TREES: OnceLock<Vec<Fixed>> = OnceLock::new();
    TREES.get_or_init(|| {
        [1usize, 2, 3, 5, 8, 13]
            .into_iter()
            .map(|n| {
                let entries: BTreeMap<String, MetaFile> = (0..n)
                    .map(|i| {
                        let meta = if i % 2 == 0 {
                            MetaFile::new(i as u64 + 1)
                        } else {
                            MetaFile::describing(i as u64 + 1, format!("role{i}").as_bytes())
                        };
                        (format!("role{i}.json"), meta)
                    })
                    .collect();
                let version = n as u64 + 6;
                let commitment = SnapshotTree::build(version, &entries).expect("fixed tree builds").commitment();
                Fixed { version, entries, commitment }
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode < 0x80 {
        let trees = trees();
        let tree = &trees[mode as usize % trees.len()];
        if let Ok(proof) = SnapshotProof::verify(rest, &tree.commitment, tree.version) {
            assert_eq!(proof.snapshot_version, tree.version);
            assert_eq!(
                tree.entries.get(&proof.name),
                Some(&proof.meta),
                "a proof of an entry that is not in the tree verified: {proof:?}"
            );
        }
        return;
    }
    let Ok(entries) = serde_json::from_slice::<BTreeMap<String, MetaFile>>(rest) else {
        return;
    };
    let version = u64::from(mode);
    let Ok(tree) = SnapshotTree::build(version, &entries) else {
        return;
    };
    let commitment = tree.commitment();
    assert_eq!(commitment.leaves, entries.len() as u64);
    let mut proven = 0;
    for proof in tree.proofs() {
        let bytes = serde_json::to_vec(&proof).expect("a proof serialises");
        match SnapshotProof::verify(&bytes, &commitment, version) {
            Ok(back) => assert_eq!(entries.get(&back.name), Some(&back.meta)),
            Err(e) => panic!("the tree's own proof for {} does not verify: {e}", proof.name),
        }
        proven += 1;
    }
    assert_eq!(proven, entries.len());
});
