//! What the fuzz targets and the seed generator share: fixed keys, and validly signed metadata built from them.
//!
//! Everything here is deterministic (ed25519 keys from fixed seeds, ed25519 signatures are deterministic), so a
//! crash found with one build reproduces with the next, and the committed seeds stay valid.

use std::sync::OnceLock;

use custody_tuf::snapshot_merkle::{SnapshotTree, TIMESTAMP_FIELD};
use custody_tuf::{Metadata, PrivateKey, PrivateKeyKind, Root, Signed, Snapshot, Targets, Timestamp, parse_expires};
use serde_json::{Value, json};

/// The reference time of every fuzzed update cycle.
pub const NOW: &str = "2030-01-01T00:00:00Z";
/// Expiry of fresh metadata.
pub const FRESH: &str = "2040-01-01T00:00:00Z";
/// Expiry of stale metadata (before [`NOW`]).
pub const STALE: &str = "2029-01-01T00:00:00Z";

pub fn now() -> jiff::Timestamp {
    // Invariant: NOW is a constant in the metadata format.
    parse_expires(NOW).expect("NOW parses")
}

/// The ed25519 key whose 32-byte seed is `n` repeated, from a hand-made PKCS#8 v1 document.
pub fn key(n: u8) -> PrivateKey {
    let mut pkcs8 =
        vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    pkcs8.extend_from_slice(&[n; 32]);
    // Invariant: the document above is a well-formed ed25519 PKCS#8 v1 key for any seed.
    PrivateKey::from_pkcs8(PrivateKeyKind::Ed25519, &pkcs8).expect("fixed ed25519 key loads")
}

/// `{keyid: public key}` for `keys`, as root and delegations list them.
pub fn key_map(keys: &[&PrivateKey]) -> Value {
    let map: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| {
            // Invariant: a `Key` is plain strings.
            (k.key_id(), serde_json::to_value(k.public()).expect("key serialises"))
        })
        .collect();
    Value::Object(map)
}

/// Signs the `signed` object with each of `keys` and returns the envelope's bytes.
pub fn sign<T: Signed>(signed: Value, keys: &[&PrivateKey]) -> Vec<u8> {
    let role = signed.get("_type").and_then(Value::as_str).unwrap_or("?").to_owned();
    let envelope = json!({"signed": signed, "signatures": []});
    // Invariant: the fixtures build well-formed metadata; a failure here is a bug in the fixture, not a finding.
    let mut metadata = Metadata::<T>::from_bytes(&serde_json::to_vec(&envelope).expect("json"), &role)
        .unwrap_or_else(|e| panic!("fixture {role} does not parse: {e}"));
    for key in keys {
        metadata.sign(key).expect("ed25519 signs");
    }
    metadata.to_bytes()
}

/// SHA-256 in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `{"version", "length", "hashes"}` describing `data`.
pub fn meta_of(version: u64, data: &[u8]) -> Value {
    json!({"version": version, "length": data.len(), "hashes": {"sha256": sha256_hex(data)}})
}

/// The keys of the top-level roles in [`Chain`].
pub struct ChainKeys {
    pub root_a: PrivateKey,
    pub root_b: PrivateKey,
    pub timestamp: PrivateKey,
    pub snapshot: PrivateKey,
    pub targets: PrivateKey,
    pub delegate: PrivateKey,
}

/// A small valid repository history: roots 1 and 2, two timestamp/snapshot/targets generations, a delegated role,
/// and some validly signed metadata that must still be refused (stale, wrong version, bad root rotation).
pub struct Chain {
    /// `(name, bytes)`; names are for the seed files and the README.
    pub files: Vec<(&'static str, Vec<u8>)>,
}

impl Chain {
    pub fn get(&self, name: &str) -> &[u8] {
        // Invariant: callers only ask for names defined in `build`.
        &self.files.iter().find(|(n, _)| *n == name).expect("fixture exists").1
    }

    fn build() -> Self {
        let k = ChainKeys {
            root_a: key(1),
            root_b: key(2),
            timestamp: key(3),
            snapshot: key(4),
            targets: key(5),
            delegate: key(6),
        };
        let id = |key: &PrivateKey| key.key_id();
        let role = |keys: &[&PrivateKey], threshold: u32| json!({"keyids": keys.iter().map(|k| id(k)).collect::<Vec<_>>(), "threshold": threshold});
        let root = |version: u64, root_keys: &[&PrivateKey], threshold: u32| {
            let mut all = root_keys.to_vec();
            all.extend([&k.timestamp, &k.snapshot, &k.targets]);
            json!({
                "_type": "root", "spec_version": "1.0.34", "version": version, "expires": FRESH,
                "consistent_snapshot": false,
                "keys": key_map(&all),
                "roles": {
                    "root": role(root_keys, threshold),
                    "timestamp": role(&[&k.timestamp], 1),
                    "snapshot": role(&[&k.snapshot], 1),
                    "targets": role(&[&k.targets], 1),
                },
            })
        };
        let mut files = vec![
            ("root-1", sign::<Root>(root(1, &[&k.root_a], 1), &[&k.root_a])),
            ("root-2", sign::<Root>(root(2, &[&k.root_a, &k.root_b], 2), &[&k.root_a, &k.root_b])),
            // Signed by the new keys only: the trusted root 2 wants 2 of a, b.
            ("root-3-bad-rotation", sign::<Root>(root(3, &[&k.root_b], 1), &[&k.root_b])),
            // Version 4 after 2: skips a version.
            ("root-3-skips", sign::<Root>(root(4, &[&k.root_a], 1), &[&k.root_a, &k.root_b])),
        ];

        let target_file = |content: &[u8]| json!({"length": content.len(), "hashes": {"sha256": sha256_hex(content)}, "custom": {"note": "x"}});
        let role1 = sign::<Targets>(
            json!({"_type": "targets", "spec_version": "1.0.34", "version": 1, "expires": FRESH,
                   "targets": {"dir/b.bin": target_file(b"b")}}),
            &[&k.delegate],
        );
        let targets = |version: u64, expires: &str| {
            sign::<Targets>(
                json!({"_type": "targets", "spec_version": "1.0.34", "version": version, "expires": expires,
                "targets": {"a.txt": target_file(b"a")},
                "delegations": {"keys": key_map(&[&k.delegate]), "roles": [
                    {"name": "role1", "keyids": [id(&k.delegate)], "threshold": 1, "terminating": false,
                     "paths": ["dir/*"]},
                ]}}),
                &[&k.targets],
            )
        };
        let targets1 = targets(1, FRESH);
        let targets2 = targets(2, FRESH);
        let snapshot = |version: u64, targets_bytes: &[u8], targets_version: u64, expires: &str| {
            sign::<Snapshot>(
                json!({"_type": "snapshot", "spec_version": "1.0.34", "version": version, "expires": expires,
                       "meta": {"targets.json": meta_of(targets_version, targets_bytes),
                                "role1.json": {"version": 1}}}),
                &[&k.snapshot],
            )
        };
        let snapshot1 = snapshot(1, &targets1, 1, FRESH);
        let snapshot2 = snapshot(2, &targets2, 2, FRESH);
        let snapshot3_stale = snapshot(3, &targets2, 2, STALE);
        // Names targets version 1 again after snapshot 2 named version 2.
        let snapshot3_rolled_back = snapshot(3, &targets1, 1, FRESH);
        let timestamp = |version: u64, snapshot_bytes: &[u8], snapshot_version: u64, expires: &str| {
            sign::<Timestamp>(
                json!({"_type": "timestamp", "spec_version": "1.0.34", "version": version, "expires": expires,
                       "meta": {"snapshot.json": meta_of(snapshot_version, snapshot_bytes)}}),
                &[&k.timestamp],
            )
        };
        files.push(("timestamp-1", timestamp(1, &snapshot1, 1, FRESH)));
        files.push(("timestamp-2", timestamp(2, &snapshot2, 2, FRESH)));
        files.push(("timestamp-3-stale", timestamp(3, &snapshot3_stale, 3, STALE)));
        files.push(("timestamp-4", timestamp(4, &snapshot3_stale, 3, FRESH)));
        // Timestamps that also commit to a Merkle tree over a snapshot's entries, and the proofs of those entries.
        for (name, version, snapshot_bytes, proofs) in [
            ("timestamp-5-merkle", 5, &snapshot2, ["proof-2-targets", "proof-2-role1"]),
            ("timestamp-6-merkle-old", 6, &snapshot3_rolled_back, ["proof-3-targets", "proof-3-role1"]),
        ] {
            let snapshot: Value = serde_json::from_slice(snapshot_bytes).expect("json");
            let snapshot_version = snapshot["signed"]["version"].as_u64().expect("version");
            let meta: std::collections::BTreeMap<String, custody_tuf::MetaFile> =
                serde_json::from_value(snapshot["signed"]["meta"].clone()).expect("meta");
            let tree = SnapshotTree::build(snapshot_version, &meta).expect("tree");
            let mut signed: Value = json!({"_type": "timestamp", "spec_version": "1.0.34", "version": version,
                "expires": FRESH, "meta": {"snapshot.json": meta_of(snapshot_version, snapshot_bytes)}});
            signed[TIMESTAMP_FIELD] = serde_json::to_value(tree.commitment()).expect("json");
            files.push((name, sign::<Timestamp>(signed, &[&k.timestamp])));
            // Entries in name order: role1.json, targets.json.
            for (proof, file) in tree.proofs().zip([proofs[1], proofs[0]]) {
                files.push((file, serde_json::to_vec(&proof).expect("json")));
            }
        }
        files.push(("snapshot-1", snapshot1));
        files.push(("snapshot-2", snapshot2));
        files.push(("snapshot-3-stale", snapshot3_stale));
        files.push(("snapshot-3-rolled-back", snapshot3_rolled_back));
        files.push(("targets-1", targets1));
        files.push(("targets-2", targets2));
        files.push(("targets-3-stale", targets(3, STALE)));
        files.push(("role1-1", role1));
        Chain { files }
    }

    /// The chain, built once per process.
    pub fn get_or_build() -> &'static Chain {
        static CHAIN: OnceLock<Chain> = OnceLock::new();
        CHAIN.get_or_init(Chain::build)
    }
}

/// A sample of syntactically valid metadata of every type, for the parse targets' seeds.
pub fn sample_metadata() -> Vec<(&'static str, Vec<u8>)> {
    Chain::get_or_build().files.clone()
}

/// Signs the canonical form of `signed` with each of `keys`, without checking that it is well-formed metadata (so
/// that malformed metadata can be signed too), and returns the envelope's bytes.
pub fn sign_raw(signed: &Value, keys: &[&PrivateKey]) -> Vec<u8> {
    // Invariant: the fuzz targets build signed objects without floats.
    let canonical = custody_tuf::to_canonical_json(signed).expect("no floats");
    let signatures: Vec<Value> =
        keys.iter().map(|k| json!({"keyid": k.key_id(), "sig": k.sign(&canonical).expect("ed25519 signs")})).collect();
    serde_json::to_vec(&json!({"signed": signed, "signatures": signatures})).expect("json")
}
