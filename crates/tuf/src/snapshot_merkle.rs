//! Snapshot Merkle trees (after TAP 16): a device proves the version of the few targets roles it needs without
//! downloading the whole snapshot, which grows with the catalog and changes on every publish.
//!
//! The repository builds a binary SHA-256 tree over the entries of `snapshot.meta` (sorted by file name; leaf
//! `H(0x00 ‖ canonical JSON of {"name", "meta"})`, node `H(0x01 ‖ left ‖ right)`, an odd node at the end of a level
//! moves up unchanged). Timestamp signs the tree's root in an extra field of its `signed` object,
//! [`TIMESTAMP_FIELD`]`: {"root": hex, "leaves": count}`, which standard TUF clients ignore (unknown fields survive
//! and are signed). For each entry the repository publishes a [`SnapshotProof`] at
//! `merkle/<snapshot version>/<role>.json`. Standard clients keep reading the full snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, MetaFile, to_canonical_json};

/// The name of the field in timestamp's `signed` object that carries the tree root.
pub const TIMESTAMP_FIELD: &str = "custody_snapshot_merkle";

/// What timestamp signs about the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleCommitment {
    /// Hex SHA-256 root.
    pub root: String,
    /// Number of leaves (entries of `snapshot.meta`).
    pub leaves: u64,
}

/// Which side of the running hash a sibling is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Left,
    Right,
}

/// One step of an inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofStep {
    pub side: Side,
    /// Hex SHA-256 of the sibling node.
    pub hash: String,
}

/// A snapshot entry with the path that proves it is in the tree timestamp signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotProof {
    /// The snapshot version this tree was built for.
    pub snapshot_version: u64,
    /// The file name in `snapshot.meta`, e.g. `targets.json`.
    pub name: String,
    pub meta: MetaFile,
    pub path: Vec<ProofStep>,
}

impl SnapshotProof {
    /// Parses untrusted proof bytes and checks them against `commitment` (from a verified timestamp) for the snapshot
    /// version that timestamp names; returns the proven entry.
    pub fn verify(bytes: &[u8], commitment: &MerkleCommitment, snapshot_version: u64) -> Result<Self, Error> {
        let what = "snapshot merkle proof";
        let proof: SnapshotProof =
            serde_json::from_slice(bytes).map_err(|source| Error::Json { role: what.into(), source })?;
        if proof.snapshot_version != snapshot_version {
            return Err(Error::VersionMismatch {
                role: format!("{what} for {}", proof.name),
                expected: snapshot_version,
                found: proof.snapshot_version,
            });
        }
        if proof.path.len() > 64 {
            return Err(Error::malformed(what, "path is longer than any tree of 2^64 leaves"));
        }
        let mut hash = leaf_hash(&proof.name, &proof.meta)?;
        for step in &proof.path {
            let sibling: [u8; 32] = hex::decode(&step.hash)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| Error::malformed(what, "a path hash is not 32 bytes of hex"))?;
            hash = match step.side {
                Side::Left => node_hash(&sibling, &hash),
                Side::Right => node_hash(&hash, &sibling),
            };
        }
        if hex::encode(hash) != commitment.root {
            return Err(Error::HashMismatch { what: format!("{what} for {}", proof.name), algorithm: "sha256".into() });
        }
        Ok(proof)
    }
}

/// The tree over one snapshot's entries, as the repository builds it.
#[derive(Debug, Clone)]
pub struct SnapshotTree {
    snapshot_version: u64,
    names: Vec<String>,
    metas: Vec<MetaFile>,
    /// `levels[0]` are the leaf hashes, the last level is the root alone.
    levels: Vec<Vec<[u8; 32]>>,
}

impl SnapshotTree {
    pub fn build(snapshot_version: u64, meta: &BTreeMap<String, MetaFile>) -> Result<Self, Error> {
        let mut leaves = Vec::with_capacity(meta.len());
        for (name, m) in meta {
            leaves.push(leaf_hash(name, m)?);
        }
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = &levels[levels.len() - 1];
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node_hash(l, r),
                    [single] => *single,
                    _ => unreachable!("chunks(2) yields one or two items"),
                })
                .collect();
            levels.push(above);
        }
        Ok(Self {
            snapshot_version,
            names: meta.keys().cloned().collect(),
            metas: meta.values().cloned().collect(),
            levels,
        })
    }

    /// What timestamp must sign. An empty snapshot has the root of no leaves: SHA-256 of the empty string.
    pub fn commitment(&self) -> MerkleCommitment {
        let root = match self.levels.last().and_then(|l| l.first()) {
            Some(root) => *root,
            None => digest(&[]),
        };
        MerkleCommitment { root: hex::encode(root), leaves: self.names.len() as u64 }
    }

    /// The proof for every entry, in name order.
    pub fn proofs(&self) -> impl Iterator<Item = SnapshotProof> + '_ {
        (0..self.names.len()).map(move |index| {
            let mut path = Vec::new();
            let mut i = index;
            for level in &self.levels[..self.levels.len() - 1] {
                let sibling = i ^ 1;
                if let Some(hash) = level.get(sibling) {
                    let side = if sibling < i { Side::Left } else { Side::Right };
                    path.push(ProofStep { side, hash: hex::encode(hash) });
                }
                i /= 2;
            }
            SnapshotProof {
                snapshot_version: self.snapshot_version,
                name: self.names[index].clone(),
                meta: self.metas[index].clone(),
                path,
            }
        })
    }
}

/// Where a proof is published, relative to the metadata directory, as a file path (the file name as is).
///
/// The repository must refuse role names that are not plain file names (`/`, `..`) before writing here.
pub fn proof_path(snapshot_version: u64, file_name: &str) -> String {
    format!("merkle/{snapshot_version}/{file_name}")
}

/// The same place as a URL path relative to the metadata URL (the file name percent-encoded).
pub fn proof_url_path(snapshot_version: u64, file_name: &str) -> String {
    format!("merkle/{snapshot_version}/{}", crate::encode_path_segment(file_name))
}

fn leaf_hash(name: &str, meta: &MetaFile) -> Result<[u8; 32], Error> {
    #[derive(Serialize)]
    struct Leaf<'a> {
        name: &'a str,
        meta: &'a MetaFile,
    }
    let bytes = to_canonical_json(&Leaf { name, meta })
        .map_err(|e| Error::Canonical { role: format!("snapshot entry {name}"), reason: e.to_string() })?;
    let mut buf = Vec::with_capacity(bytes.len() + 1);
    buf.push(0);
    buf.extend_from_slice(&bytes);
    Ok(digest(&buf))
}

fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut buf = [0u8; 65];
    buf[0] = 1;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    digest(&buf)
}

fn digest(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(n: usize) -> BTreeMap<String, MetaFile> {
        (0..n).map(|i| (format!("role{i}.json"), MetaFile::new(i as u64 + 1))).collect()
    }

    #[test]
    fn every_proof_verifies_for_every_size() {
        for n in 1..=17 {
            let tree = SnapshotTree::build(7, &meta(n)).unwrap();
            let c = tree.commitment();
            for proof in tree.proofs() {
                let bytes = serde_json::to_vec(&proof).unwrap();
                let back = SnapshotProof::verify(&bytes, &c, 7).unwrap();
                assert_eq!(back.meta, proof.meta);
            }
        }
    }

    #[test]
    fn altered_version_or_wrong_snapshot_fails() {
        let tree = SnapshotTree::build(3, &meta(5)).unwrap();
        let c = tree.commitment();
        let mut proof = tree.proofs().nth(2).unwrap();
        assert!(SnapshotProof::verify(&serde_json::to_vec(&proof).unwrap(), &c, 4).is_err());
        proof.meta.version += 1;
        assert!(SnapshotProof::verify(&serde_json::to_vec(&proof).unwrap(), &c, 3).is_err());
    }

    #[test]
    fn proof_of_one_entry_cannot_be_renamed() {
        let tree = SnapshotTree::build(1, &meta(4)).unwrap();
        let mut proof = tree.proofs().next().unwrap();
        proof.name = "role1.json".into();
        assert!(SnapshotProof::verify(&serde_json::to_vec(&proof).unwrap(), &tree.commitment(), 1).is_err());
    }
}
