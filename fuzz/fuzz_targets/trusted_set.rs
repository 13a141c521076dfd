//! The client workflow (`TrustedSet`) fed a sequence of steps, each either a validly signed fixture or arbitrary
//! bytes, so that the checks past parsing (signatures, versions, rollback, expiry, hashes) are all reached.
//!
//! Input: parts separated by 0x00 (which never occurs in JSON). A part is `[op, sel, payload...]`: `op % 8` is the
//! step (new set, root, timestamp, snapshot, snapshot from the local store, targets, delegated targets, snapshot
//! Merkle proof); the payload is the metadata, or when empty the fixture `sel` picks (`sel % fixture count`, in
//! `Chain` order). For delegated targets, `op / 8` picks the (role, delegator) pair.
//!
//! Oracle: the fuzzer cannot make ed25519 signatures, so whatever the set trusts after any step must be one of the
//! fixtures' signed objects, byte for byte, and every snapshot entry it trusts (from a snapshot or a Merkle proof) one
//! that a fixture snapshot lists. A target search over the final set finds only the fixtures' targets.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use custody_fuzz::{Chain, now};
use custody_tuf::{MetaFile, SearchStep, TargetSearch, TrustedSet};
use libfuzzer_sys::fuzz_target;

struct Fixtures {
    chain: &'static Chain,
    /// The canonical `signed` bytes of every fixture: the only signed objects that can be trusted.
    signed: BTreeSet<Vec<u8>>,
    /// Every `(file, entry)` of every fixture snapshot.
    entries: Vec<(String, MetaFile)>,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let chain = Chain::get_or_build();
        let signed = chain
            .files
            .iter()
            .map(|(_, bytes)| {
                let v: serde_json::Value = serde_json::from_slice(bytes).expect("fixture is JSON");
                custody_tuf::to_canonical_json(&v["signed"]).expect("fixture is canonical")
            })
            .collect();
        let mut entries = Vec::new();
        for (name, bytes) in &chain.files {
            if name.starts_with("snapshot-") {
                let v: serde_json::Value = serde_json::from_slice(bytes).expect("fixture is JSON");
                let meta: BTreeMap<String, MetaFile> =
                    serde_json::from_value(v["signed"]["meta"].clone()).expect("meta");
                entries.extend(meta);
            }
        }
        Fixtures { chain, signed, entries }
    })
}

const PAIRS: [(&str, &str); 5] =
    [("role1", "targets"), ("targets", "root"), ("role1", "root"), ("role1", "role1"), ("missing", "targets")];

fn check_trusted(set: &TrustedSet, f: &Fixtures) {
    let trusted = |what: &str, bytes: &[u8]| {
        assert!(
            f.signed.contains(bytes),
            "the set trusts {what} that no fixture signed: {}",
            String::from_utf8_lossy(bytes)
        );
    };
    trusted("root", set.root().metadata().canonical_signed());
    if let Some(t) = set.timestamp() {
        trusted("timestamp", t.metadata().canonical_signed());
    }
    if let Some(s) = set.snapshot() {
        trusted("snapshot", s.metadata().canonical_signed());
    }
    for role in ["targets", "role1", "missing"] {
        if let Some(t) = set.targets(role) {
            trusted(role, t.metadata().canonical_signed());
        }
        let file = format!("{role}.json");
        if let Some(entry) = set.snapshot_entry(&file) {
            assert!(
                f.entries.iter().any(|(n, e)| *n == file && e == entry),
                "the set trusts a snapshot entry for {file} that no fixture signed: {entry:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixtures();
    let files = &f.chain.files;
    let Ok(mut set) = TrustedSet::new(f.chain.get("root-1"), now()) else {
        panic!("the fixture root is refused");
    };
    for part in data.split(|&b| b == 0).take(16) {
        let [op, sel, payload @ ..] = part else {
            continue;
        };
        let bytes = if payload.is_empty() { &files[*sel as usize % files.len()].1[..] } else { payload };
        match op % 8 {
            0 => {
                if let Ok(new) = TrustedSet::new(bytes, now()) {
                    set = new;
                }
            }
            1 => {
                let _ = set.update_root(bytes);
            }
            2 => {
                let before = set.timestamp().map(|t| t.version);
                if set.update_timestamp(bytes).is_ok() {
                    let after = set.timestamp().map(|t| t.version);
                    assert!(after > before, "timestamp went from {before:?} to {after:?}");
                }
            }
            3 | 4 => {
                if set.update_snapshot(bytes, op % 8 == 4).is_ok() {
                    let (Some(s), Some(t)) = (set.snapshot(), set.timestamp()) else {
                        panic!("snapshot accepted without timestamp");
                    };
                    assert_eq!(s.version, t.snapshot_meta().version);
                }
            }
            5 => {
                let _ = set.update_targets(bytes);
            }
            7 => {
                let _ = set.update_snapshot_proof(bytes);
            }
            _ => {
                let (role, delegator) = PAIRS[(op / 8) as usize % PAIRS.len()];
                if set.update_delegated_targets(bytes, role, delegator).is_ok() {
                    assert!(role == "targets" || delegator != "root", "root delegated {role}");
                }
            }
        }
        check_trusted(&set, f);
    }

    // Search with whatever is trusted now, loading roles from the fixtures.
    for path in ["a.txt", "dir/b.bin", "dir/c"] {
        let mut search = TargetSearch::new(path, 8);
        for _ in 0..16 {
            match search.step(&mut set) {
                Ok(SearchStep::Load { role, delegator }) => {
                    let loaded =
                        files.iter().any(|(_, bytes)| set.update_delegated_targets(bytes, &role, &delegator).is_ok());
                    if !loaded {
                        break;
                    }
                }
                Ok(SearchStep::Found(target)) => {
                    let expected = match path {
                        "a.txt" => "targets",
                        "dir/b.bin" => "role1",
                        _ => panic!("found {path}, which no fixture lists"),
                    };
                    assert_eq!(target.role(), expected);
                    break;
                }
                Ok(_) | Err(_) => break,
            }
        }
        check_trusted(&set, f);
    }
});
