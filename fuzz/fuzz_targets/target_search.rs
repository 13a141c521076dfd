//! Target search over random delegation graphs, built as signed metadata.
//!
//! The input describes up to nine targets roles ("targets" and the delegated "r-0" to "r-7"): which of four paths
//! each lists, whom it delegates which paths to (shell patterns, hash prefixes or succinct hash bins), with which
//! keys and threshold, and what is wrong with its file (signed by the wrong key, version or hash not what snapshot
//! says, missing from snapshot, expired). Everything is signed with one fixed key (or a second one that delegations
//! may or may not list), so the signature checks are real.
//!
//! The search is driven like the client does (`TargetSearch::step`, `update_delegated_targets` on each `Load`, any
//! error ends it). Oracle, from a model of the graph: a found target comes from a role that is reachable from the
//! top-level targets through delegations that cover the path, are satisfied by the role's signature, and whose
//! files are all valid; the role lists the path with exactly that file. A path listed by a valid top-level targets
//! is always found there.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use custody_fuzz::{FRESH, STALE, key, key_map, now, sha256_hex, sign_raw};
use custody_tuf::{ListingStep, PrivateKey, SearchStep, TargetListing, TargetSearch, TrustedSet};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const PATHS: [&str; 4] = ["a.txt", "dir/b.bin", "dir/sub/c.tgz", "K"];
const PATTERNS: [&str; 9] = ["*", "dir/*", "*/*/*", "*.txt", "dir/sub/c.tgz", "?", "[a-c].*", "*/b.bin", "nothing"];
/// Which of `PATHS` each pattern matches (bit i for `PATHS[i]`), worked out by hand.
const MATCHES: [u8; 9] = [0b1001, 0b0010, 0b0100, 0b0001, 0b0100, 0b1000, 0b0001, 0b0010, 0];
/// Patterns, then hash prefixes: "" (all), "zz" (none), and the first two hex digits of each path's hash.
const SELECTORS: usize = PATTERNS.len() + 2 + PATHS.len();

#[derive(Arbitrary, Debug)]
struct Graph {
    path: u8,
    roles: Vec<RoleSpec>,
}

#[derive(Arbitrary, Debug, Default, Clone)]
struct RoleSpec {
    /// Bit i: lists `PATHS[i]`.
    lists: u8,
    delegations: Vec<Delegation>,
    /// Succinct hash bins instead of the list: (bit length selector, key variant).
    succinct: Option<(u8, u8)>,
    corrupt: u8,
}

#[derive(Arbitrary, Debug, Clone)]
struct Delegation {
    /// 0..8: "r-{child}"; 8: "targets" (a top-level name, which makes the delegating file malformed).
    child: u8,
    selector: u8,
    terminating: bool,
    keys: u8,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Corruption {
    None,
    WrongSigner,
    WrongVersion,
    NotInSnapshot,
    Expired,
    WrongHash,
}

impl RoleSpec {
    fn corruption(&self) -> Corruption {
        match self.corrupt % 8 {
            1 => Corruption::WrongSigner,
            2 => Corruption::WrongVersion,
            3 => Corruption::NotInSnapshot,
            4 => Corruption::Expired,
            5 => Corruption::WrongHash,
            _ => Corruption::None,
        }
    }
}

struct Keys {
    good: PrivateKey,
    other: PrivateKey,
    root: Vec<u8>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let good = key(10);
        let other = key(11);
        let role = json!({"keyids": [good.key_id()], "threshold": 1});
        let root = sign_raw(
            &json!({"_type": "root", "spec_version": "1.0.34", "version": 1, "expires": FRESH,
                    "keys": key_map(&[&good]),
                    "roles": {"root": role, "timestamp": role, "snapshot": role, "targets": role}}),
            &[&good],
        );
        // The hand-made table must agree with the matcher on these simple patterns, else the model is wrong.
        for (pattern, mask) in PATTERNS.iter().zip(MATCHES) {
            for (i, path) in PATHS.iter().enumerate() {
                let delegation: custody_tuf::DelegatedRole = serde_json::from_value(json!({
                    "name": "x", "keyids": [], "threshold": 1, "terminating": false, "paths": [pattern]}))
                .expect("delegation");
                assert_eq!(delegation.is_delegated_path(path), mask & (1 << i) != 0, "{pattern} vs {path}");
            }
        }
        Keys { good, other, root }
    })
}

fn role_name(index: usize) -> String {
    if index == 0 { "targets".to_owned() } else { format!("r-{}", index - 1) }
}

/// (key ids, threshold) of a key variant, and whether a file signed by `good` (else by `other`) satisfies it.
fn key_variant(k: &Keys, variant: u8, signed_by_good: bool) -> (Vec<String>, u32, bool) {
    let (g, o) = (k.good.key_id(), k.other.key_id());
    match variant % 4 {
        0 => (vec![g], 1, signed_by_good),
        1 => (vec![o], 1, !signed_by_good),
        2 => (vec![g, o], 2, false),
        _ => (vec![g, o], 1, true),
    }
}

fn selector_matches(selector: usize, path: &str) -> bool {
    let path_index = PATHS.iter().position(|p| *p == path).expect("known path");
    match selector {
        s if s < PATTERNS.len() => MATCHES[s] & (1 << path_index) != 0,
        s if s == PATTERNS.len() => true,
        s if s == PATTERNS.len() + 1 => false,
        s => sha256_hex(path.as_bytes())[..2] == sha256_hex(PATHS[s - PATTERNS.len() - 2].as_bytes())[..2],
    }
}

fn selector_json(selector: usize) -> (&'static str, Value) {
    match selector {
        s if s < PATTERNS.len() => ("paths", json!([PATTERNS[s]])),
        s if s == PATTERNS.len() => ("path_hash_prefixes", json!([""])),
        s if s == PATTERNS.len() + 1 => ("path_hash_prefixes", json!(["zz"])),
        s => ("path_hash_prefixes", json!([&sha256_hex(PATHS[s - PATTERNS.len() - 2].as_bytes())[..2]])),
    }
}

fn bin_of(path: &str, bit_length: u32) -> usize {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, path.as_bytes());
    let h = d.as_ref();
    (u32::from_be_bytes([h[0], h[1], h[2], h[3]]) >> (32 - bit_length)) as usize
}

fn file_length(role: usize, path: usize) -> u64 {
    (role * 16 + path) as u64
}

fuzz_target!(|graph: Graph| {
    let k = keys();
    let path_index = graph.path as usize % PATHS.len();
    let path = PATHS[path_index];
    let mut roles = graph.roles;
    roles.resize(9, RoleSpec::default());
    for r in &mut roles {
        r.delegations.truncate(4);
    }
    let signed_by_good = |i: usize| roles[i].corruption() != Corruption::WrongSigner;

    // Build and sign every role; note which files are well-formed.
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut well_formed = [true; 9];
    for (i, spec) in roles.iter().enumerate() {
        let targets: serde_json::Map<String, Value> = (0..PATHS.len())
            .filter(|j| spec.lists & (1 << j) != 0)
            .map(|j| {
                let hash = sha256_hex(format!("{i}/{j}").as_bytes());
                (PATHS[j].to_owned(), json!({"length": file_length(i, j), "hashes": {"sha256": hash}}))
            })
            .collect();
        let mut signed = json!({"_type": "targets", "spec_version": "1.0.34", "version": 1,
            "expires": if spec.corruption() == Corruption::Expired { STALE } else { FRESH }, "targets": targets});
        if let Some((bits, variant)) = spec.succinct {
            let (keyids, threshold, _) = key_variant(k, variant, true);
            signed["delegations"] = json!({"keys": key_map(&[&k.good, &k.other]), "succinct_roles": {
                "keyids": keyids, "threshold": threshold, "bit_length": 1 + u32::from(bits % 3), "name_prefix": "r"}});
        } else if !spec.delegations.is_empty() {
            let mut names = BTreeSet::new();
            let list: Vec<Value> = spec
                .delegations
                .iter()
                .map(|d| {
                    let child = d.child % 9;
                    let name = if child < 8 { role_name(child as usize + 1) } else { "targets".to_owned() };
                    if child == 8 || !names.insert(name.clone()) {
                        well_formed[i] = false;
                    }
                    let (keyids, threshold, _) = key_variant(k, d.keys, true);
                    let (field, value) = selector_json(d.selector as usize % SELECTORS);
                    let mut entry = json!({"name": name, "keyids": keyids, "threshold": threshold,
                                           "terminating": d.terminating});
                    entry[field] = value;
                    entry
                })
                .collect();
            signed["delegations"] = json!({"keys": key_map(&[&k.good, &k.other]), "roles": list});
        }
        let signer = if signed_by_good(i) { &k.good } else { &k.other };
        files.insert(role_name(i), sign_raw(&signed, &[signer]));
    }

    // Snapshot and timestamp over those files.
    let mut meta = serde_json::Map::new();
    for (i, spec) in roles.iter().enumerate() {
        let bytes = &files[&role_name(i)];
        let version = if spec.corruption() == Corruption::WrongVersion { 2 } else { 1 };
        let hash = if spec.corruption() == Corruption::WrongHash { "00".repeat(32) } else { sha256_hex(bytes) };
        if spec.corruption() != Corruption::NotInSnapshot {
            meta.insert(
                format!("{}.json", role_name(i)),
                json!({"version": version, "length": bytes.len(), "hashes": {"sha256": hash}}),
            );
        }
    }
    let snapshot = sign_raw(
        &json!({"_type": "snapshot", "spec_version": "1.0.34", "version": 1, "expires": FRESH, "meta": meta}),
        &[&k.good],
    );
    let timestamp = sign_raw(
        &json!({"_type": "timestamp", "spec_version": "1.0.34", "version": 1, "expires": FRESH,
                "meta": {"snapshot.json": {"version": 1, "length": snapshot.len(),
                                           "hashes": {"sha256": sha256_hex(&snapshot)}}}}),
        &[&k.good],
    );
    let mut set = TrustedSet::new(&k.root, now()).expect("fixed root");
    set.update_timestamp(&timestamp).expect("generated timestamp");
    set.update_snapshot(&snapshot, false).expect("generated snapshot");

    // The model: roles trusted for this path.
    let valid_file =
        |i: usize| well_formed[i] && matches!(roles[i].corruption(), Corruption::None | Corruption::WrongSigner);
    let reachable_for = |path: &str| {
        let mut reachable = BTreeSet::new();
        let mut queue = Vec::new();
        if valid_file(0) && signed_by_good(0) {
            reachable.insert(0);
            queue.push(0);
        }
        while let Some(parent) = queue.pop() {
            let spec = &roles[parent];
            let mut edges: Vec<(usize, u8)> = Vec::new();
            if let Some((bits, variant)) = spec.succinct {
                edges.push((1 + bin_of(path, 1 + u32::from(bits % 3)), variant));
            } else {
                for d in &spec.delegations {
                    let child = (d.child % 9) as usize;
                    if child < 8 && selector_matches(d.selector as usize % SELECTORS, path) {
                        edges.push((child + 1, d.keys));
                    }
                }
            }
            for (child, variant) in edges {
                let (_, _, satisfied) = key_variant(k, variant, signed_by_good(child));
                if satisfied && valid_file(child) && reachable.insert(child) {
                    queue.push(child);
                }
            }
        }
        reachable
    };
    let reachable = reachable_for(path);
    let role_index = |name: &str| (0..9).find(|&i| role_name(i) == name).expect("a known role");

    let mut search = TargetSearch::new(path, 16);
    let mut outcome = None;
    for _ in 0..64 {
        match search.step(&mut set) {
            Ok(SearchStep::Load { role, delegator }) => {
                let Some(bytes) = files.get(&role) else {
                    panic!("search asked for {role:?}, which no role delegates");
                };
                if set.update_delegated_targets(bytes, &role, &delegator).is_err() {
                    outcome = Some(Err(()));
                    break;
                }
            }
            Ok(step) => {
                outcome = Some(Ok(step));
                break;
            }
            Err(_) => {
                outcome = Some(Err(()));
                break;
            }
        }
    }
    let Some(outcome) = outcome else {
        panic!("the search did not end after 64 steps");
    };
    if let Ok(SearchStep::Found(target)) = &outcome {
        let role = role_index(&target.role());
        assert!(
            reachable.contains(&role),
            "found {path} in {} which is not trusted for it: {reachable:?}",
            target.role()
        );
        assert!(roles[role].lists & (1 << path_index) != 0, "{} does not list {path}", target.role());
        assert_eq!(target.file().length, file_length(role, path_index));
        assert_eq!(target.path(), path);
    }
    if reachable.contains(&0) && roles[0].lists & (1 << path_index) != 0 {
        assert!(
            matches!(&outcome, Ok(SearchStep::Found(t)) if t.role() == "targets"),
            "top-level targets lists {path} but the search gave {outcome:?}"
        );
    }

    // Listing the "dir" directory over the same set: each listed target as a search for its path would find it.
    if graph.path & 0x80 != 0 {
        let mut listing = TargetListing::new("dir", 16);
        for _ in 0..64 {
            match listing.step(&mut set) {
                Ok(ListingStep::Load { role, delegator }) => {
                    let Some(bytes) = files.get(&role) else {
                        panic!("listing asked for {role:?}, which no role delegates");
                    };
                    if set.update_delegated_targets(bytes, &role, &delegator).is_err() {
                        break;
                    }
                }
                Ok(ListingStep::Done(found)) => {
                    for target in found {
                        assert!(target.path().starts_with("dir/"), "listed {}", target.path());
                        let role = role_index(&target.role());
                        let path_index = PATHS.iter().position(|p| *p == target.path()).expect("a known path");
                        assert!(
                            reachable_for(&target.path()).contains(&role),
                            "listed {} from {}, which is not trusted for it",
                            target.path(),
                            target.role()
                        );
                        assert_eq!(target.file().length, file_length(role, path_index));
                    }
                    break;
                }
                Ok(ListingStep::TooManyRoles(_)) | Err(_) => break,
            }
        }
    }
});
