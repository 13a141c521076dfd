//! Writes the seed corpora under fuzz/seeds/<target>/ (deterministic: same keys, same bytes every run).
//!
//! cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds

use std::collections::BTreeMap;
use std::path::Path;

use bytes::BytesMut;
use custody_fuzz::{Chain, FRESH, key, key_map, now, sign_raw};
use custody_p2p::Bitfield;
use custody_p2p::wire::{ContentId, GoodbyeReason, Message, PROTOCOL_VERSION};
use custody_tuf::snapshot_merkle::SnapshotTree;
use custody_tuf::{MetaFile, TrustedSet};
use serde_json::json;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create seed dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

/// The fixtures' valid walks must be accepted, else the `trusted_set` seeds would not reach past the first refusal.
fn check_walks(chain: &Chain) {
    let mut set = TrustedSet::new(chain.get("root-1"), now()).expect("root-1");
    set.update_timestamp(chain.get("timestamp-1")).expect("timestamp-1");
    set.update_snapshot(chain.get("snapshot-1"), false).expect("snapshot-1");
    set.update_targets(chain.get("targets-1")).expect("targets-1");
    set.update_delegated_targets(chain.get("role1-1"), "role1", "targets").expect("role1-1");

    let mut set = TrustedSet::new(chain.get("root-1"), now()).expect("root-1");
    set.update_root(chain.get("root-2")).expect("root-2");
    assert!(set.update_root(chain.get("root-3-bad-rotation")).is_err());
    set.update_timestamp(chain.get("timestamp-5-merkle")).expect("timestamp-5-merkle");
    set.update_snapshot_proof(chain.get("proof-2-targets")).expect("proof-2-targets");
    set.update_snapshot_proof(chain.get("proof-2-role1")).expect("proof-2-role1");
    set.update_targets(chain.get("targets-2")).expect("targets-2");
    set.update_delegated_targets(chain.get("role1-1"), "role1", "targets").expect("role1-1");
    set.update_timestamp(chain.get("timestamp-6-merkle-old")).expect("timestamp-6");
    assert!(
        matches!(set.update_snapshot_proof(chain.get("proof-3-targets")), Err(custody_tuf::Error::Rollback { .. })),
        "proven version went down"
    );
    set.update_snapshot_proof(chain.get("proof-3-role1")).expect("proof-3-role1");
}

fn main() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let chain = Chain::get_or_build();
    check_walks(chain);
    let index = |name: &str| chain.files.iter().position(|(n, _)| *n == name).expect("fixture") as u8;

    // metadata_parse: every fixture, plus delegations in the other forms.
    let dir = seeds.join("metadata_parse");
    for (name, bytes) in chain.files.iter().filter(|(name, _)| !name.starts_with("proof-")) {
        write(&dir, name, bytes);
    }
    let k = key(10);
    write(
        &dir,
        "targets-succinct",
        &sign_raw(
            &json!({"_type": "targets", "spec_version": "1.0", "version": 3, "expires": FRESH, "targets": {},
                    "delegations": {"keys": key_map(&[&k]), "succinct_roles": {
                        "keyids": [k.key_id()], "threshold": 1, "bit_length": 5, "name_prefix": "bin"}}}),
            &[&k],
        ),
    );
    write(
        &dir,
        "targets-hash-prefixes",
        &sign_raw(
            &json!({"_type": "targets", "spec_version": "1.0.0", "version": 3, "expires": FRESH,
                    "targets": {"f[0-9]/*.bin": {"length": 0, "hashes": {"sha512": "00"}, "custom": {"a": [1, -2, null]}}},
                    "delegations": {"keys": {}, "roles": [
                        {"name": "a", "keyids": [], "threshold": 1, "terminating": true, "path_hash_prefixes": ["ab", ""]},
                        {"name": "b", "keyids": [], "threshold": 2, "terminating": false, "paths": ["*/[!x]?", "a*b*c"]}]}}),
            &[&k],
        ),
    );

    // trusted_set: the valid walk through fixtures, the same with the bytes inline, and a few refusals.
    let dir = seeds.join("trusted_set");
    let step = |op: u8, fixture: &str| vec![op, index(fixture)];
    let join = |parts: Vec<Vec<u8>>| parts.join(&0u8);
    let inline = |op: u8, fixture: &str| {
        let mut part = vec![op, 0];
        part.extend_from_slice(chain.get(fixture));
        part
    };
    write(
        &dir,
        "walk-1",
        &join(vec![step(2, "timestamp-1"), step(3, "snapshot-1"), step(5, "targets-1"), step(6, "role1-1")]),
    );
    write(
        &dir,
        "walk-2-rotated",
        &join(vec![
            step(1, "root-2"),
            step(2, "timestamp-2"),
            step(3, "snapshot-2"),
            step(5, "targets-2"),
            step(6, "role1-1"),
        ]),
    );
    write(&dir, "walk-inline", &join(vec![inline(2, "timestamp-1"), inline(3, "snapshot-1"), inline(5, "targets-1")]));
    write(
        &dir,
        "rollback",
        &join(vec![
            step(2, "timestamp-2"),
            step(2, "timestamp-1"),
            step(2, "timestamp-2"),
            step(4, "snapshot-1"),
            step(2, "timestamp-4"),
        ]),
    );
    write(
        &dir,
        "stale",
        &join(vec![
            step(2, "timestamp-3-stale"),
            step(2, "timestamp-4"),
            step(3, "snapshot-3-stale"),
            step(5, "targets-3-stale"),
        ]),
    );
    write(
        &dir,
        "bad-rotation",
        &join(vec![step(1, "root-2"), step(1, "root-3-bad-rotation"), step(1, "root-3-skips"), inline(1, "root-2")]),
    );
    write(
        &dir,
        "delegator-pairs",
        &join(vec![
            step(2, "timestamp-1"),
            step(3, "snapshot-1"),
            step(14, "role1-1"),
            step(22, "targets-1"),
            step(6, "role1-1"),
            step(30, "role1-1"),
        ]),
    );

    write(
        &dir,
        "merkle-walk",
        &join(vec![
            step(2, "timestamp-5-merkle"),
            step(7, "proof-2-targets"),
            step(7, "proof-2-role1"),
            step(5, "targets-2"),
            step(6, "role1-1"),
        ]),
    );
    write(
        &dir,
        "merkle-rollback",
        &join(vec![
            step(2, "timestamp-5-merkle"),
            step(7, "proof-2-targets"),
            step(2, "timestamp-6-merkle-old"),
            step(7, "proof-3-targets"),
            inline(7, "proof-3-role1"),
        ]),
    );

    // snapshot_proof: every proof of every fixed tree, and a meta map to build a tree from.
    let dir = seeds.join("snapshot_proof");
    for (t, n) in [1usize, 2, 3, 5, 8, 13].into_iter().enumerate() {
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
        let tree = SnapshotTree::build(n as u64 + 6, &entries).expect("tree");
        for (i, proof) in tree.proofs().enumerate().filter(|(i, _)| *i < 3 || n == 5) {
            let mut bytes = vec![t as u8];
            bytes.extend(serde_json::to_vec(&proof).expect("json"));
            write(&dir, &format!("tree{n}-proof{i}"), &bytes);
        }
    }
    let mut map = vec![0x80];
    map.extend(br#"{"targets.json":{"version":3,"length":10,"hashes":{"sha256":"00"}},"a.json":{"version":1},"b":{"version":2,"x":[]}}"#);
    write(&dir, "build-map", &map);

    // target_search: structured input (arbitrary); a few byte patterns to start from.
    let dir = seeds.join("target_search");
    write(&dir, "chain", &[0, 3, 0b0001, 1, 0, 1, 0, 0, 0, 0, 0b0010, 0, 0, 0, 0, 0, 0, 0]);
    write(&dir, "wide", &(0u8..=200).collect::<Vec<_>>());
    write(&dir, "bins", &[1, 2, 0, 0, 1, 2, 3, 0, 1, 0b1111, 0, 0, 0, 0, 0b0100, 0, 1, 1, 3]);

    // canonical_json: shapes, escapes, Unicode forms, numbers at the edges.
    let dir = seeds.join("canonical_json");
    let samples: [&str; 8] = [
        r#"{"b":1,"a":[true,null,"x\"y\\z"],"é":"\n"}"#,
        r#"{"\u212aelvin":1,"Kelvin":2,"e\u0301":3,"é":4}"#,
        r#"[-9223372036854775808,18446744073709551615,0,-1,"\u0000\u001f\u007f"]"#,
        r#"{"a":{"b":{"c":[[],{},""]}}, "":"\ud83d\ude00"}"#,
        r#"  { "z" : 1 , "y" : [ 1 , 2 ] }  "#,
        r#"{"f":1.5,"g":1e3}"#,
        r#""\/\b\f\r\t""#,
        r#"{"snapshot.json":{"version":1,"hashes":{"sha256":"ab"}}}"#,
    ];
    for (i, s) in samples.iter().enumerate() {
        write(&dir, &format!("sample{i}"), s.as_bytes());
    }

    // catalog_custom: the example of docs/catalog.md.
    let dir = seeds.join("catalog_custom");
    let example = json!({"custody": {
        "schema": 1, "id": "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90", "revision": 2, "title": "Acme agent 2.4.0",
        "description": "Fixes CVE-2025-0001 in the agent's parser.\nRestarts the agent.", "kind": "app",
        "product": "acme-agent", "classification": "security", "severity": "important", "version": "2.4.0",
        "release_date": "2025-06-10",
        "applicability": {"os": {"family": "debian", "version_range": {"min": "12", "below": "14"}},
                          "arch": ["x86_64", "aarch64"],
                          "installed": {"product": "acme-agent", "version_range": {"min": "2.0", "below": "2.4.0"}}},
        "prerequisites": [{"update": "9b2d7c1e-0a4f-4f43-8d1a-6c3e5b7a9f12"},
                          {"any_of": ["5e8a0d3b-7c21-4b9e-8f6a-1d2c3b4a5e6f", "c47e2a19-3b5d-4e8f-a1c2-9d8e7f6a5b4c"]}],
        "supersedes": ["5e8a0d3b-7c21-4b9e-8f6a-1d2c3b4a5e6f"], "reboot": "never",
        "installer": {"handler": "archive", "format": "tar-zstd", "destination": "/opt/acme-agent",
                      "post_install": ["/opt/acme-agent/bin/acme-agent", "--migrate-config"]},
        "content": {"length": 7340032, "sha256": "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4",
                    "pieces": {"piece_size": 1048576, "tree": "bep52-sha256",
                               "root": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}}}});
    write(&dir, "docs-example", &serde_json::to_vec_pretty(&example).expect("json"));

    // p2p_wire: `[config, chunk, stream]`; a session as each side sends it, for 10 pieces (config 0x89) and for a
    // content-sized limit (0xc9), a later version's handshake before the content is known (0x09), and refusals.
    let dir = seeds.join("p2p_wire");
    let content = ContentId([0xab; 32]);
    let frames = |messages: &[Message]| {
        let mut buf = BytesMut::new();
        for message in messages {
            message.encode(&mut buf);
        }
        buf.to_vec()
    };
    let mut bits = Bitfield::new(10);
    for piece in [0, 3, 9] {
        bits.set(piece).expect("piece below 10");
    }
    let session = frames(&[
        Message::Handshake { version: PROTOCOL_VERSION, content, piece_count: 10 },
        Message::Bitfield(bits),
        Message::LayerRequest,
        Message::Layer(vec![0x11; 320].into()),
        Message::Request { piece: 3 },
        Message::Piece { piece: 3, data: vec![0x42; 200].into() },
        Message::Have { piece: 4 },
        Message::Reject { piece: 5 },
        Message::Cancel { piece: 9 },
        Message::KeepAlive,
        Message::Goodbye { reason: GoodbyeReason::Done },
    ]);
    write(&dir, "session", &[[0x89, 7].as_slice(), &session].concat());
    write(&dir, "session-content-limit", &[[0xc9, 63].as_slice(), &session].concat());
    let mut later = frames(&[Message::Handshake { version: 2, content, piece_count: 10 }]);
    later[3] += 8;
    later.extend_from_slice(&[0; 8]);
    write(&dir, "later-version", &[[0x09, 1].as_slice(), &later].concat());
    let oversize = [[0x89, 0].as_slice(), &u32::MAX.to_be_bytes(), &[5]].concat();
    write(&dir, "oversize", &oversize);
    write(&dir, "spare-bits", &[0x89, 2, 0, 0, 0, 3, 2, 0xff, 0xff]);
}
