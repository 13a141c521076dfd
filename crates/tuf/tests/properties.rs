//! Property tests: canonical JSON, signature thresholds, timestamp version rules, delegation path patterns.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use custody_tuf::{
    DelegatedRole, Error, Metadata, PrivateKey, PrivateKeyKind, Root, Signed, Targets, Timestamp, TrustedSet,
    parse_expires, to_canonical_json,
};
use proptest::prelude::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------------------------
// Canonical JSON

/// Arbitrary JSON without floats; strings from `string` (a proptest regex).
fn json_value(string: &'static str) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        string.prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(string, inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An independent encoder of the canonical form: keys sorted by their UTF-8 bytes, no white space, only `"` and
/// `\` escaped, strings as they are.
fn reference_canonical(v: &Value, out: &mut String) {
    fn string(s: &str, out: &mut String) {
        out.push('"');
        out.push_str(&s.replace('\\', "\\\\").replace('"', "\\\""));
        out.push('"');
    }
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(&b.to_string()),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                reference_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(key, out);
                out.push(':');
                reference_canonical(&map[key], out);
            }
            out.push('}');
        }
    }
}

/// Escapes the control characters that canonical JSON leaves raw, so that serde_json parses the bytes.
fn escape_controls(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().flat_map(|&b| if b < 0x20 { format!("\\u{b:04x}").into_bytes() } else { vec![b] }).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Without control characters, canonical bytes are JSON that parses back to the same value, whose canonical
    /// form is the same bytes; and the bytes are exactly the reference encoding (sorted keys, no white space).
    #[test]
    fn canonical_json_round_trips(v in json_value("[^\\x00-\\x1f]{0,6}")) {
        let bytes = to_canonical_json(&v).unwrap();
        let mut reference = String::new();
        reference_canonical(&v, &mut reference);
        prop_assert_eq!(&bytes, reference.as_bytes());
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(to_canonical_json(&back).unwrap(), bytes);
    }

    /// Any string, Unicode forms and control characters included: the encoding stays faithful (it is injective),
    /// the control characters being the only bytes a strict parser needs escaped.
    #[test]
    fn canonical_json_is_faithful_for_any_string(v in json_value("(\\PC|[\\x00-\\x1f\u{212a}\u{301}e\u{e9}K])*")) {
        let bytes = to_canonical_json(&v).unwrap();
        let mut reference = String::new();
        reference_canonical(&v, &mut reference);
        prop_assert_eq!(&bytes, reference.as_bytes());
        let back: Value = serde_json::from_slice(&escape_controls(&bytes)).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(to_canonical_json(&back).unwrap(), bytes);
    }

    /// A float anywhere is refused.
    #[test]
    fn canonical_json_refuses_floats(v in json_value("[a-c]{0,2}"), f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let with_float = json!({"v": v, "f": [f]});
        prop_assert!(to_canonical_json(&with_float).is_err());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Parsing: the same metadata in any text form

/// A `signed` object that is mostly valid targets metadata: a few wrong types, spec versions, versions and hash
/// lists, and `custom` and unknown members of any JSON (sometimes with a float, which canonical JSON refuses).
fn targets_like() -> impl Strategy<Value = Value> {
    let any_string = "(\\PC|[\\x00-\\x1f\"\\\\/\u{7f}\u{212a}])*";
    let extra = prop_oneof![
        4 => json_value(any_string),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!([f])),
    ];
    let target =
        (any::<u64>(), prop::bool::weighted(0.9), prop::option::of(extra.clone()), prop::option::of(extra.clone()))
            .prop_map(|(length, hashed, custom, unknown)| {
                let mut t =
                    json!({"length": length, "hashes": if hashed { json!({"sha256": "ab"}) } else { json!({}) }});
                if let Some(custom) = custom {
                    t["custom"] = custom;
                }
                if let Some(unknown) = unknown {
                    t["x-unknown"] = unknown;
                }
                t
            });
    (
        prop::sample::select(vec!["targets", "targets", "targets", "targets", "targets", "root"]),
        prop::sample::select(vec!["1.0.34", "1.0.34", "1.0.34", "1.0", "2.0.0", "1.0.x"]),
        0u64..4,
        prop::collection::btree_map(any_string, target, 0..4),
        prop::option::of(extra),
    )
        .prop_map(|(type_, spec_version, version, targets, extra)| {
            let mut signed = json!({"_type": type_, "spec_version": spec_version, "version": version,
                                    "expires": "2030-01-01T00:00:00Z", "targets": targets});
            if let Some(extra) = extra {
                signed["x-extra"] = extra;
            }
            signed
        })
}

/// JSON text of `v` with every object's members in reverse order and every string escaped as `\uXXXX`.
fn reversed_and_escaped(v: &Value, out: &mut String) {
    let string = |s: &str, out: &mut String| {
        out.push('"');
        for unit in s.encode_utf16() {
            out.push_str(&format!("\\u{unit:04x}"));
        }
        out.push('"');
    };
    match v {
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i > 0 { "," } else { "" });
                reversed_and_escaped(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().rev().enumerate() {
                out.push_str(if i > 0 { "," } else { "" });
                string(key, out);
                out.push(':');
                reversed_and_escaped(item, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `Metadata::from_bytes` reads canonical text (as custody and other repositories write it) without building a
    /// JSON value, and any other text through one: whatever the form of the `signed` object — custody's own
    /// `to_bytes`, serde_json's, pretty-printed, members reversed with every character escaped — the result is the
    /// same: the same canonical bytes (which the signature covers), the same typed value, or the same error.
    #[test]
    fn every_text_form_parses_to_the_same_metadata(signed in targets_like()) {
        let key = &pool()[0];
        let keys = BTreeMap::from([(key.key_id(), key.public().clone())]);
        let signature = |canonical: &[u8]| json!([{"keyid": key.key_id(), "sig": key.sign(canonical).unwrap()}]);
        let envelope = |signed_text: &str, signatures: &Value| {
            format!("{{\"signatures\":{signatures},\"signed\":{signed_text}}}").into_bytes()
        };
        let signatures = to_canonical_json(&signed).map(|c| signature(&c)).unwrap_or(json!([]));
        let mut reversed = String::new();
        reversed_and_escaped(&signed, &mut reversed);
        // `signed` in serde_json's compact form (canonical, control characters escaped as in custody's stored form),
        // pretty-printed, and with members reversed and every character escaped.
        let mut envelopes: Vec<Vec<u8>> = [
            serde_json::to_string(&signed).unwrap(),
            serde_json::to_string_pretty(&signed).unwrap(),
            reversed,
        ]
        .iter()
        .map(|text| envelope(text, &signatures))
        .collect();
        let first = Metadata::<Targets>::from_bytes(&envelopes[0], "targets");
        if let Ok(metadata) = &first {
            // As custody stores it, and with white space around it (many tools end a file with a newline).
            let stored = metadata.to_bytes();
            envelopes.push([b" ".as_slice(), &stored, b"\r\n\t"].concat());
            envelopes.push(stored);
        }
        let outcome = |parsed: Result<Metadata<Targets>, Error>| match parsed {
            Ok(m) => {
                let verified = m.check_signatures("targets", &keys, &[key.key_id()], 1).is_ok();
                Ok((m.canonical_signed().to_vec(), m.signed().clone(), verified))
            }
            Err(e) => Err(e.to_string()),
        };
        let expected = outcome(first);
        if let Ok((canonical, _, verified)) = &expected {
            prop_assert_eq!(canonical, &to_canonical_json(&signed).unwrap());
            prop_assert!(verified);
        }
        for bytes in &envelopes[1..] {
            let parsed = Metadata::<Targets>::from_bytes(bytes, "targets");
            prop_assert_eq!(&outcome(parsed), &expected, "{}", String::from_utf8_lossy(bytes));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Signature thresholds

/// Eight fixed ed25519 keys: the first six can be listed, the last two never are.
fn pool() -> &'static [PrivateKey] {
    static POOL: OnceLock<Vec<PrivateKey>> = OnceLock::new();
    POOL.get_or_init(|| (0..8).map(|_| PrivateKey::generate(PrivateKeyKind::Ed25519).unwrap()).collect())
}

const SIGNED: &str =
    r#"{"_type":"targets","spec_version":"1.0.34","version":1,"expires":"2040-01-01T00:00:00Z","targets":{}}"#;

#[derive(Debug, Clone, Copy)]
enum Sig {
    Missing,
    Valid,
    /// A signature by this key over other bytes.
    OtherMessage,
    /// A signature by another key, under this key id.
    OtherKey,
    NotHex,
}

fn sig_kind() -> impl Strategy<Value = Sig> {
    prop_oneof![Just(Sig::Missing), Just(Sig::Valid), Just(Sig::OtherMessage), Just(Sig::OtherKey), Just(Sig::NotHex)]
}

#[derive(Debug, Clone)]
struct ThresholdCase {
    n: usize,
    threshold: u32,
    /// Per listed key: its signature, and whether the keys map has it.
    sigs: Vec<(Sig, bool)>,
    /// Valid signatures by the two keys that are never listed.
    unknown: [bool; 2],
    /// Key ids listed twice in the role's key ids.
    listed_twice: Vec<usize>,
    /// Index of a signature entry to repeat in the envelope (if any).
    duplicate_signature: Option<usize>,
}

fn threshold_case() -> impl Strategy<Value = ThresholdCase> {
    (1usize..=6).prop_flat_map(|n| {
        (
            Just(n),
            1..=(n as u32 + 1),
            prop::collection::vec((sig_kind(), prop::bool::weighted(0.85)), n),
            any::<[bool; 2]>(),
            prop::collection::vec(0..n, 0..3),
            prop::option::weighted(0.2, 0..16usize),
        )
            .prop_map(|(n, threshold, sigs, unknown, listed_twice, duplicate_signature)| ThresholdCase {
                n,
                threshold,
                sigs,
                unknown,
                listed_twice,
                duplicate_signature,
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// `check_signatures` succeeds iff the number of distinct listed key ids that have a valid signature by their
    /// key reaches the threshold; an envelope with two signatures under one key id is refused when parsed.
    #[test]
    fn threshold_counts_distinct_valid_listed_keys(case in threshold_case()) {
        let keys = pool();
        let signed: Value = serde_json::from_str(SIGNED).unwrap();
        let message = to_canonical_json(&signed).unwrap();
        let mut signatures = Vec::new();
        let mut key_map = BTreeMap::new();
        let mut expected = 0;
        for (i, &(sig, in_map)) in case.sigs.iter().enumerate() {
            let key = &keys[i];
            if in_map {
                key_map.insert(key.key_id(), key.public().clone());
            }
            let sig_hex = match sig {
                Sig::Missing => continue,
                Sig::Valid => {
                    expected += usize::from(in_map);
                    key.sign(&message).unwrap()
                }
                Sig::OtherMessage => key.sign(b"other").unwrap(),
                Sig::OtherKey => keys[(i + 1) % 8].sign(&message).unwrap(),
                Sig::NotHex => "zz".to_owned(),
            };
            signatures.push(json!({"keyid": key.key_id(), "sig": sig_hex}));
        }
        for (j, &present) in case.unknown.iter().enumerate() {
            if present {
                let key = &keys[6 + j];
                signatures.push(json!({"keyid": key.key_id(), "sig": key.sign(&message).unwrap()}));
            }
        }
        let mut keyids: Vec<String> = keys[..case.n].iter().map(PrivateKey::key_id).collect();
        keyids.extend(case.listed_twice.iter().map(|&i| keys[i].key_id()));
        let duplicated = case.duplicate_signature.filter(|&d| d < signatures.len());
        if let Some(d) = duplicated {
            let mut copy = signatures[d].clone();
            copy["sig"] = json!("00");
            signatures.push(copy);
        }

        let bytes = serde_json::to_vec(&json!({"signed": signed, "signatures": signatures})).unwrap();
        let parsed = Metadata::<Targets>::from_bytes(&bytes, "targets");
        if duplicated.is_some() {
            prop_assert!(matches!(parsed, Err(Error::Malformed { .. })), "{:?}", parsed);
            return Ok(());
        }
        let metadata = parsed.unwrap();
        let result = metadata.check_signatures("targets", &key_map, &keyids, case.threshold);
        if expected >= case.threshold as usize {
            prop_assert!(result.is_ok(), "{} valid, threshold {}: {:?}", expected, case.threshold, result);
        } else {
            let is_threshold_error = matches!(
                result,
                Err(Error::Threshold { valid, threshold, .. }) if valid == expected && threshold == case.threshold
            );
            prop_assert!(is_threshold_error, "{} valid, threshold {}: {:?}", expected, case.threshold, result);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Timestamp versions

struct VersionFixture {
    root: Vec<u8>,
    /// `timestamps[(version, snapshot version)]`.
    timestamps: BTreeMap<(u64, u64), Vec<u8>>,
}

fn sign<T: Signed>(signed: Value, key: &PrivateKey) -> Vec<u8> {
    let envelope = json!({"signed": signed, "signatures": []});
    let mut metadata = Metadata::<T>::from_bytes(&serde_json::to_vec(&envelope).unwrap(), T::TYPE).unwrap();
    metadata.sign(key).unwrap();
    metadata.to_bytes()
}

fn version_fixture() -> &'static VersionFixture {
    static F: OnceLock<VersionFixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = &pool()[0];
        let role = json!({"keyids": [key.key_id()], "threshold": 1});
        let root = sign::<Root>(
            json!({"_type": "root", "spec_version": "1.0.34", "version": 1, "expires": "2040-01-01T00:00:00Z",
                   "keys": {key.key_id(): key.public()},
                   "roles": {"root": role, "timestamp": role, "snapshot": role, "targets": role}}),
            key,
        );
        let mut timestamps = BTreeMap::new();
        for version in 1..=6 {
            for snapshot in 1..=3 {
                let t = sign::<Timestamp>(
                    json!({"_type": "timestamp", "spec_version": "1.0.34", "version": version,
                           "expires": "2040-01-01T00:00:00Z", "meta": {"snapshot.json": {"version": snapshot}}}),
                    key,
                );
                timestamps.insert((version, snapshot), t);
            }
        }
        VersionFixture { root, timestamps }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A timestamp is accepted iff its version is greater than the trusted one (equal: `EqualTimestampVersion`,
    /// lower: rollback) and the snapshot version it names does not go down; a refused one changes nothing.
    #[test]
    fn timestamp_versions_only_go_up(steps in prop::collection::vec((1u64..=6, 1u64..=3), 1..10)) {
        let f = version_fixture();
        let now = parse_expires("2030-01-01T00:00:00Z").unwrap();
        let mut set = TrustedSet::new(&f.root, now).unwrap();
        let mut trusted: Option<(u64, u64)> = None;
        for (version, snapshot) in steps {
            let result = set.update_timestamp(&f.timestamps[&(version, snapshot)]);
            match trusted {
                None => {
                    prop_assert!(result.is_ok(), "{:?}", result);
                    trusted = Some((version, snapshot));
                }
                Some((v, _)) if version < v => {
                    let ok = matches!(result, Err(Error::Rollback { trusted, found, .. }) if trusted == v && found == version);
                    prop_assert!(ok, "{} after {}: {:?}", version, v, result);
                }
                Some((v, _)) if version == v => {
                    prop_assert!(matches!(result, Err(Error::EqualTimestampVersion(found)) if found == v), "{:?}", result);
                }
                Some((_, s)) if snapshot < s => {
                    let ok = matches!(result, Err(Error::Rollback { trusted, found, .. }) if trusted == s && found == snapshot);
                    prop_assert!(ok, "snapshot {} after {}: {:?}", snapshot, s, result);
                }
                Some(_) => {
                    prop_assert!(result.is_ok(), "{:?}", result);
                    trusted = Some((version, snapshot));
                }
            }
            let held = set.timestamp().map(|t| (t.version, t.snapshot_meta().version));
            prop_assert_eq!(held, trusted);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Delegation path patterns

/// A direct recursive reading of the pattern rules (exponential, fine for short inputs): per `/`-separated
/// segment, equal segment counts; `*` any run, `?` one character, `[set]`/`[!set]` with `a-z` ranges and a leading
/// `]` taken literally, an unclosed `[` literal.
fn reference_matches(pattern: &str, path: &str) -> bool {
    /// A closed set at `p[0] == '['`: its length, whether it is negated, its (inclusive) ranges.
    type Set = (usize, bool, Vec<(char, char)>);
    fn set(p: &[char]) -> Option<Set> {
        let negate = p.get(1) == Some(&'!');
        let start = if negate { 2 } else { 1 };
        let mut i = start;
        let mut items = Vec::new();
        loop {
            let c = *p.get(i)?;
            if c == ']' && i > start {
                return Some((i + 1, negate, items));
            }
            match (p.get(i + 1), p.get(i + 2)) {
                (Some('-'), Some(&end)) if end != ']' => {
                    items.push((c, end));
                    i += 3;
                }
                _ => {
                    items.push((c, c));
                    i += 1;
                }
            }
        }
    }
    fn segment(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => (0..=s.len()).any(|k| segment(&p[1..], &s[k..])),
            Some('?') => !s.is_empty() && segment(&p[1..], &s[1..]),
            Some('[') => match set(p) {
                Some((len, negate, items)) => {
                    s.first().is_some_and(|&c| items.iter().any(|&(lo, hi)| lo <= c && c <= hi) != negate)
                        && segment(&p[len..], &s[1..])
                }
                None => s.first() == Some(&'[') && segment(&p[1..], &s[1..]),
            },
            Some(&c) => s.first() == Some(&c) && segment(&p[1..], &s[1..]),
        }
    }
    let (ps, ss): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    ps.len() == ss.len()
        && ps.iter().zip(&ss).all(|(p, s)| {
            let (p, s): (Vec<char>, Vec<char>) = (p.chars().collect(), s.chars().collect());
            segment(&p, &s)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn path_patterns_match_the_reference(pattern in "[ab/*?!\\[\\]-]{0,8}", path in "[ab/!\\[\\]-]{0,8}") {
        let role: DelegatedRole = serde_json::from_value(json!({
            "name": "r", "keyids": [], "threshold": 1, "terminating": false, "paths": [pattern]})).unwrap();
        prop_assert_eq!(role.is_delegated_path(&path), reference_matches(&pattern, &path), "{:?} vs {:?}", pattern, path);
    }
}
