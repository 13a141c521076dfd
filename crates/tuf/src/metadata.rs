//! TUF metadata as data: the signed envelope and the four top-level roles plus delegated targets.
//!
//! Parsing keeps two things from the received bytes: the typed `signed` value, and the canonical JSON of the `signed`
//! object exactly as received (unknown fields included), which is what signatures are checked against. Fields this
//! version does not know are kept in `unrecognized` maps, so that the repository tool re-signs them unchanged.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Key, PrivateKey, to_canonical_json};

/// The names of the four top-level roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoleType {
    Root,
    Timestamp,
    Snapshot,
    Targets,
}

impl RoleType {
    pub const ALL: [RoleType; 4] = [RoleType::Root, RoleType::Timestamp, RoleType::Snapshot, RoleType::Targets];

    pub fn as_str(self) -> &'static str {
        match self {
            RoleType::Root => "root",
            RoleType::Timestamp => "timestamp",
            RoleType::Snapshot => "snapshot",
            RoleType::Targets => "targets",
        }
    }

    /// Whether `name` is one of the top-level role names, which a delegated role may not take.
    pub fn is_top_level_name(name: &str) -> bool {
        Self::ALL.iter().any(|r| r.as_str() == name)
    }
}

/// What every kind of `signed` object provides.
pub trait Signed: Serialize + DeserializeOwned {
    /// The `_type` value.
    const TYPE: &'static str;
    /// The `_type` member (`TYPE` in any [`Metadata`] that was parsed).
    fn type_field(&self) -> &str;
    /// The `spec_version` member.
    fn spec_version(&self) -> &str;
    fn version(&self) -> u64;
    fn expires(&self) -> jiff::Timestamp;
    /// Structural checks beyond what the type system already enforced while parsing.
    fn validate(&self, role: &str) -> Result<(), Error>;

    fn is_expired(&self, reference_time: jiff::Timestamp) -> bool {
        reference_time >= self.expires()
    }
}

/// A signature of a [`Metadata`] envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub keyid: String,
    pub sig: String,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

/// A parsed, **unverified** metadata envelope: `{"signed": ..., "signatures": [...]}`.
#[derive(Debug, Clone)]
pub struct Metadata<T> {
    signed: T,
    signatures: Vec<Signature>,
    /// Canonical JSON of the `signed` object as it was received (or as it was built, for new metadata).
    canonical_signed: Vec<u8>,
}

impl<T> Metadata<T> {
    pub fn signed(&self) -> &T {
        &self.signed
    }

    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// The bytes that signatures cover.
    pub fn canonical_signed(&self) -> &[u8] {
        &self.canonical_signed
    }
}

impl<T: Signed> Metadata<T> {
    /// Parses an envelope; `role` names it in errors (a delegated role's name, or the top-level role).
    ///
    /// Refuses: invalid JSON, a `_type` other than `T::TYPE`, a malformed `signed` object, duplicate signature key
    /// ids, and `signed` objects that canonical JSON cannot represent.
    pub fn from_bytes(bytes: &[u8], role: &str) -> Result<Self, Error> {
        let (signed, signatures, canonical_signed) = match Self::parse_canonical(bytes) {
            Some(parsed) => parsed,
            None => Self::parse_any(bytes, role)?,
        };
        signed.validate(role)?;
        let mut keyids = BTreeSet::new();
        for signature in &signatures {
            if !keyids.insert(signature.keyid.as_str()) {
                return Err(Error::malformed(role, format!("two signatures with key id {}", signature.keyid)));
            }
        }
        Ok(Self { signed, signatures, canonical_signed })
    }

    /// The fast path of [`Metadata::from_bytes`], for an envelope in canonical form (as custody's repository tool
    /// and [`Metadata::to_bytes`] write it): one pass over the bytes checks the form and yields the canonical bytes of `signed`
    /// as they are in the text; the typed value is read from the text, with no JSON value in between. `None` if the
    /// envelope is not canonical or fails any check: [`Metadata::parse_any`] then decides, so that errors are the
    /// same whichever path a text takes.
    fn parse_canonical(bytes: &[u8]) -> Option<(T, Vec<Signature>, Vec<u8>)> {
        // White space around the envelope is no part of `signed` (many tools end a file with a newline).
        let text = std::str::from_utf8(bytes).ok()?.trim_matches([' ', '\t', '\n', '\r']);
        let read = crate::canonical::canonical_from_text(text)?;
        let member = |name: &str| read.members.iter().find(|m| m.key == name);
        let (signed_member, signatures_member) = (member("signed")?, member("signatures")?);
        let signed: T = serde_json::from_str(signed_member.text).ok()?;
        if signed.type_field() != T::TYPE || spec_version_problem(signed.spec_version()).is_some() {
            return None;
        }
        let signatures: Vec<Signature> = serde_json::from_str(signatures_member.text).ok()?;
        let range = signed_member.canonical.clone();
        let mut canonical_signed = read.bytes;
        canonical_signed.copy_within(range.clone(), 0);
        canonical_signed.truncate(range.len());
        Some((signed, signatures, canonical_signed))
    }

    /// The general path of [`Metadata::from_bytes`]: the `signed` object parsed to a JSON value, checked and
    /// encoded in canonical form from it, then moved into the typed value.
    fn parse_any(bytes: &[u8], role: &str) -> Result<(T, Vec<Signature>, Vec<u8>), Error> {
        #[derive(Deserialize)]
        struct Envelope {
            signed: Value,
            signatures: Vec<Signature>,
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|source| Error::Json { role: role.to_owned(), source })?;
        let found_type = envelope.signed.get("_type").and_then(Value::as_str).unwrap_or_default();
        if found_type != T::TYPE {
            return Err(Error::WrongType { role: role.to_owned(), expected: T::TYPE, found: found_type.to_owned() });
        }
        let canonical_signed = crate::canonical::canonical_value(&envelope.signed)
            .map_err(|e| Error::Canonical { role: role.to_owned(), reason: e.to_string() })?;
        // The JSON value is moved into the typed one rather than copied (most of a catalog's bytes are `custom`
        // objects); `spec_version` is read before the move and its error still comes after the typed value's.
        let spec_version =
            spec_version_problem(envelope.signed.get("spec_version").and_then(Value::as_str).unwrap_or_default());
        let signed = T::deserialize(envelope.signed).map_err(|e| Error::malformed(role, e.to_string()))?;
        if let Some(problem) = spec_version {
            return Err(Error::malformed(role, problem));
        }
        Ok((signed, envelope.signatures, canonical_signed))
    }

    /// Wraps a freshly built `signed` value, without signatures.
    pub fn new(signed: T) -> Result<Self, Error> {
        let canonical_signed =
            to_canonical_json(&signed).map_err(|e| Error::Canonical { role: T::TYPE.into(), reason: e.to_string() })?;
        Ok(Self { signed, signatures: Vec::new(), canonical_signed })
    }

    /// Adds (or replaces) the signature of `key`.
    pub fn sign(&mut self, key: &PrivateKey) -> Result<(), Error> {
        let keyid = key.key_id();
        let sig = key.sign(&self.canonical_signed)?;
        self.signatures.retain(|s| s.keyid != keyid);
        self.signatures.push(Signature { keyid, sig, unrecognized: BTreeMap::new() });
        Ok(())
    }

    /// Adds a signature made elsewhere (for example by another key holder), replacing one with the same key id.
    pub fn add_signature(&mut self, signature: Signature) {
        self.signatures.retain(|s| s.keyid != signature.keyid);
        self.signatures.push(signature);
    }

    /// The envelope as JSON bytes (compact, keys sorted).
    ///
    /// `signed` is written as the very canonical bytes that the signatures cover, with only the control characters
    /// that canonical JSON leaves raw (such as the newlines of a PEM key) escaped, since JSON parsers refuse them.
    /// So a parser reads back exactly the signed value, even when the typed value would re-serialise differently
    /// (metadata from other tools: `"expires"` seconds written `" 0"`, `null` for an absent optional field).
    pub fn to_bytes(&self) -> Vec<u8> {
        let signed = crate::canonical::canonical_to_strict_json(&self.canonical_signed);
        let mut out = Vec::with_capacity(signed.len() + 200 * self.signatures.len() + 32);
        out.extend_from_slice(b"{\"signatures\":");
        // Invariant: signatures hold only strings and JSON values that were parsed or built without floats.
        out.extend_from_slice(&serde_json::to_vec(&self.signatures).expect("signatures serialise"));
        out.extend_from_slice(b",\"signed\":");
        out.extend_from_slice(&signed);
        out.push(b'}');
        out
    }

    /// Checks that at least `threshold` of `keyids` have a valid signature; each key id counts once.
    ///
    /// Signatures by keys that are not listed, unknown key types and bad signatures count as missing.
    pub fn check_signatures(
        &self,
        role: &str,
        keys: &BTreeMap<String, Key>,
        keyids: &[String],
        threshold: u32,
    ) -> Result<(), Error> {
        // Distinct key ids: parsed roles cannot list one twice, but a caller's list is not trusted to be clean.
        let distinct: BTreeSet<&String> = keyids.iter().collect();
        let valid = distinct
            .into_iter()
            .filter(|keyid| {
                let (Some(key), Some(signature)) =
                    (keys.get(*keyid), self.signatures.iter().find(|s| &s.keyid == *keyid))
                else {
                    return false;
                };
                key.verify(&self.canonical_signed, &signature.sig).unwrap_or(false)
            })
            .count();
        if valid >= threshold as usize {
            Ok(())
        } else {
            Err(Error::Threshold { role: role.to_owned(), valid, threshold })
        }
    }
}

/// Why `spec` is not a `spec_version` this crate accepts (same major version), if it is not.
fn spec_version_problem(spec: &str) -> Option<String> {
    let parts: Vec<&str> = spec.split('.').collect();
    let numeric = parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !(2..=3).contains(&parts.len()) || !numeric || parts[0] != crate::SPEC_VERSION.split('.').next().unwrap_or("1") {
        return Some(format!("unsupported spec_version {spec:?}"));
    }
    None
}

/// Parses an `expires` value: `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_expires(s: &str) -> Result<jiff::Timestamp, String> {
    jiff::fmt::strtime::parse("%Y-%m-%dT%H:%M:%SZ", s)
        .and_then(|t| t.to_datetime())
        .and_then(|dt| jiff::tz::TimeZone::UTC.to_timestamp(dt))
        .map_err(|e| format!("expires {s:?} is not of the form YYYY-MM-DDTHH:MM:SSZ: {e}"))
}

/// Formats an `expires` value: `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_expires(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

mod expires_serde {
    use super::*;

    pub fn serialize<S: serde::Serializer>(t: &jiff::Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_expires(*t))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<jiff::Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        parse_expires(&s).map_err(serde::de::Error::custom)
    }
}

/// A role's key ids and signature threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Role {
    pub keyids: Vec<String>,
    pub threshold: u32,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

fn validate_keyids_threshold(role: &str, what: &str, keyids: &[String], threshold: u32) -> Result<(), Error> {
    if threshold < 1 {
        return Err(Error::malformed(role, format!("{what}: threshold must be at least 1")));
    }
    let unique: BTreeSet<&String> = keyids.iter().collect();
    if unique.len() != keyids.len() {
        return Err(Error::malformed(role, format!("{what}: key ids are not unique")));
    }
    Ok(())
}

/// Root metadata: the keys and thresholds of the top-level roles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Root {
    #[serde(rename = "_type")]
    pub type_: String,
    pub spec_version: String,
    pub version: u64,
    #[serde(with = "expires_serde")]
    pub expires: jiff::Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_snapshot: Option<bool>,
    pub keys: BTreeMap<String, Key>,
    pub roles: BTreeMap<String, Role>,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl Root {
    /// The key ids and threshold of a top-level role.
    pub fn role(&self, role: RoleType) -> &Role {
        // Invariant: `validate` refused a root whose roles are not exactly the four top-level roles.
        &self.roles[role.as_str()]
    }

    pub fn consistent_snapshot(&self) -> bool {
        self.consistent_snapshot.unwrap_or(false)
    }

    /// Checks that `metadata` is signed by a threshold of `role`'s keys listed here.
    pub fn check_signatures<T: Signed>(&self, role: RoleType, metadata: &Metadata<T>) -> Result<(), Error> {
        let r = self.role(role);
        metadata.check_signatures(role.as_str(), &self.keys, &r.keyids, r.threshold)
    }
}

impl Signed for Root {
    const TYPE: &'static str = "root";
    fn type_field(&self) -> &str {
        &self.type_
    }
    fn spec_version(&self) -> &str {
        &self.spec_version
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn expires(&self) -> jiff::Timestamp {
        self.expires
    }
    fn validate(&self, role: &str) -> Result<(), Error> {
        validate_version(role, self.version)?;
        let names: BTreeSet<&str> = self.roles.keys().map(String::as_str).collect();
        let expected: BTreeSet<&str> = RoleType::ALL.iter().map(|r| r.as_str()).collect();
        if names != expected {
            return Err(Error::malformed(role, "roles must be exactly root, timestamp, snapshot and targets"));
        }
        for (name, r) in &self.roles {
            validate_keyids_threshold(role, name, &r.keyids, r.threshold)?;
        }
        Ok(())
    }
}

fn validate_version(role: &str, version: u64) -> Result<(), Error> {
    if version < 1 {
        return Err(Error::malformed(role, "version must be at least 1"));
    }
    Ok(())
}

/// Hash algorithm name → hex digest.
pub type Hashes = BTreeMap<String, String>;

/// Checks `data` against a length and hashes; `what` names it in errors.
///
/// Every listed hash must match, and an algorithm other than sha256 and sha512 is refused (never skipped).
pub(crate) fn verify_length_and_hashes(
    what: &str,
    data: &[u8],
    length: Option<u64>,
    hashes: Option<&Hashes>,
) -> Result<(), Error> {
    if let Some(expected) = length
        && data.len() as u64 != expected
    {
        return Err(Error::LengthMismatch { what: what.to_owned(), expected, found: data.len() as u64 });
    }
    for (algorithm, expected) in hashes.into_iter().flatten() {
        let alg = match algorithm.as_str() {
            "sha256" => &aws_lc_rs::digest::SHA256,
            "sha512" => &aws_lc_rs::digest::SHA512,
            _ => return Err(Error::UnsupportedHash { what: what.to_owned(), algorithm: algorithm.clone() }),
        };
        let digest = aws_lc_rs::digest::digest(alg, data);
        if !hex::decode(expected).is_ok_and(|e| e == digest.as_ref()) {
            return Err(Error::HashMismatch { what: what.to_owned(), algorithm: algorithm.clone() });
        }
    }
    Ok(())
}

fn validate_hashes(role: &str, what: &str, hashes: &Hashes) -> Result<(), Error> {
    if hashes.is_empty() {
        return Err(Error::malformed(role, format!("{what}: hashes must not be empty")));
    }
    Ok(())
}

/// The version (and optionally length and hashes) of a metadata file, as timestamp and snapshot list them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaFile {
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<Hashes>,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl MetaFile {
    pub fn new(version: u64) -> Self {
        Self { version, length: None, hashes: None, unrecognized: BTreeMap::new() }
    }

    /// Describes `data` with its length and SHA-256.
    pub fn describing(version: u64, data: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
        Self {
            version,
            length: Some(data.len() as u64),
            hashes: Some(BTreeMap::from([("sha256".to_owned(), hex::encode(digest))])),
            unrecognized: BTreeMap::new(),
        }
    }

    pub fn verify(&self, what: &str, data: &[u8]) -> Result<(), Error> {
        verify_length_and_hashes(what, data, self.length, self.hashes.as_ref())
    }

    fn validate(&self, role: &str, what: &str) -> Result<(), Error> {
        validate_version(role, self.version)?;
        if let Some(hashes) = &self.hashes {
            validate_hashes(role, what, hashes)?;
        }
        Ok(())
    }
}

/// Timestamp metadata: the current snapshot's version (and optionally its length and hashes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timestamp {
    #[serde(rename = "_type")]
    pub type_: String,
    pub spec_version: String,
    pub version: u64,
    #[serde(with = "expires_serde")]
    pub expires: jiff::Timestamp,
    pub meta: BTreeMap<String, MetaFile>,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl Timestamp {
    pub fn snapshot_meta(&self) -> &MetaFile {
        // Invariant: `validate` refused a timestamp without "snapshot.json" in its meta.
        &self.meta["snapshot.json"]
    }
}

impl Signed for Timestamp {
    const TYPE: &'static str = "timestamp";
    fn type_field(&self) -> &str {
        &self.type_
    }
    fn spec_version(&self) -> &str {
        &self.spec_version
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn expires(&self) -> jiff::Timestamp {
        self.expires
    }
    fn validate(&self, role: &str) -> Result<(), Error> {
        validate_version(role, self.version)?;
        let Some(meta) = self.meta.get("snapshot.json") else {
            return Err(Error::malformed(role, "meta must describe snapshot.json"));
        };
        meta.validate(role, "snapshot.json")
    }
}

/// Snapshot metadata: the version of every targets metadata file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(rename = "_type")]
    pub type_: String,
    pub spec_version: String,
    pub version: u64,
    #[serde(with = "expires_serde")]
    pub expires: jiff::Timestamp,
    pub meta: BTreeMap<String, MetaFile>,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl Signed for Snapshot {
    const TYPE: &'static str = "snapshot";
    fn type_field(&self) -> &str {
        &self.type_
    }
    fn spec_version(&self) -> &str {
        &self.spec_version
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn expires(&self) -> jiff::Timestamp {
        self.expires
    }
    fn validate(&self, role: &str) -> Result<(), Error> {
        validate_version(role, self.version)?;
        for (name, meta) in &self.meta {
            meta.validate(role, name)?;
        }
        Ok(())
    }
}

/// One target file: its length, hashes and custom metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetFile {
    pub length: u64,
    pub hashes: Hashes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Value>,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl TargetFile {
    /// Describes `data` with its length and SHA-256 (python-tuf's default). Every listed hash costs each client a
    /// pass over the whole file before install, and the pieces of peer-to-peer delivery rest on SHA-256 anyway; a
    /// SHA-512 that a repository lists is still checked.
    pub fn describing(data: &[u8], custom: Option<Value>) -> Self {
        let mut hashes = Hashes::new();
        hashes.insert("sha256".to_owned(), hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)));
        Self { length: data.len() as u64, hashes, custom, unrecognized: BTreeMap::new() }
    }

    /// The hex SHA-256 if listed.
    pub fn sha256(&self) -> Option<&str> {
        self.hashes.get("sha256").map(String::as_str)
    }

    /// Checks `data`, the bytes of target `path`, against this length and every hash. It says nothing of whether
    /// this entry is trusted: clients verify through [`crate::TrustedTarget::verify`]; the repository tool checks
    /// its own files with this.
    pub fn check(&self, path: &str, data: &[u8]) -> Result<(), Error> {
        verify_length_and_hashes(&format!("target {path}"), data, Some(self.length), Some(&self.hashes))
    }

    /// The names under which consistent snapshots publish target `path`: `dir/HASH.name` for each listed hash.
    pub fn consistent_paths(&self, path: &str) -> Vec<String> {
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), path),
        };
        self.hashes.values().map(|hash| format!("{dir}{hash}.{name}")).collect()
    }
}

/// Targets metadata (top-level or delegated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    #[serde(rename = "_type")]
    pub type_: String,
    pub spec_version: String,
    pub version: u64,
    #[serde(with = "expires_serde")]
    pub expires: jiff::Timestamp,
    pub targets: BTreeMap<String, TargetFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl Signed for Targets {
    const TYPE: &'static str = "targets";
    fn type_field(&self) -> &str {
        &self.type_
    }
    fn spec_version(&self) -> &str {
        &self.spec_version
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn expires(&self) -> jiff::Timestamp {
        self.expires
    }
    fn validate(&self, role: &str) -> Result<(), Error> {
        validate_version(role, self.version)?;
        for (path, target) in &self.targets {
            validate_hashes(role, path, &target.hashes)?;
        }
        if let Some(delegations) = &self.delegations {
            delegations.validate(role)?;
        }
        Ok(())
    }
}

/// The delegations of a targets role: keys, and either an ordered list of roles or succinct hash bins (TAP 15).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delegations {
    pub keys: BTreeMap<String, Key>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<DelegatedRole>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succinct_roles: Option<SuccinctRoles>,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl Delegations {
    fn validate(&self, role: &str) -> Result<(), Error> {
        match (&self.roles, &self.succinct_roles) {
            (Some(roles), None) => {
                let mut names = BTreeSet::new();
                for r in roles {
                    if !names.insert(r.name.as_str()) {
                        return Err(Error::malformed(role, format!("delegated role {:?} is listed twice", r.name)));
                    }
                    r.validate(role)?;
                }
                Ok(())
            }
            (None, Some(succinct)) => succinct.validate(role),
            _ => Err(Error::malformed(role, "delegations must have exactly one of roles and succinct_roles")),
        }
    }

    /// The roles delegated `target_path`, in listed order, each with its `terminating` flag.
    pub fn roles_for_target(&self, target_path: &str) -> Vec<(String, bool)> {
        if let Some(roles) = &self.roles {
            // The path's hash is computed once, not once per hash-prefix role (a catalog has hundreds of bins).
            let hash = TargetPathHash::new(target_path);
            roles.iter().filter(|r| r.covers(target_path, &hash)).map(|r| (r.name.clone(), r.terminating)).collect()
        } else if let Some(succinct) = &self.succinct_roles {
            vec![(succinct.role_for_target(target_path), true)]
        } else {
            Vec::new()
        }
    }

    /// The roles that may hold targets under the top-level directory `dir`, in listed order: those with a path
    /// pattern whose first segment matches `dir` (and more than one segment), all hash-prefix roles, all bins.
    ///
    /// `None` when there are more than `max` (succinct delegations name up to 2^32 bins: they are only counted).
    pub fn roles_for_dir(&self, dir: &str, max: usize) -> Option<Vec<String>> {
        if let Some(roles) = &self.roles {
            let names: Vec<String> = roles
                .iter()
                .filter(|r| match (&r.paths, &r.path_hash_prefixes) {
                    (Some(patterns), _) => patterns.iter().any(|p| {
                        p.split_once('/').is_some_and(|(first, _)| {
                            let first: Vec<char> = first.chars().collect();
                            let dir: Vec<char> = dir.chars().collect();
                            fnmatch(&first, &dir)
                        })
                    }),
                    (None, Some(_)) => true,
                    (None, None) => false,
                })
                .map(|r| r.name.clone())
                .collect();
            (names.len() <= max).then_some(names)
        } else if let Some(succinct) = &self.succinct_roles {
            let count = 1u64 << succinct.bit_length;
            if count > max as u64 {
                return None;
            }
            let width = succinct.suffix_len();
            Some((0..count).map(|bin| format!("{}-{:0width$x}", succinct.name_prefix, bin)).collect())
        } else {
            Some(Vec::new())
        }
    }

    /// The key ids and threshold that `role_name` must be signed with, if this delegates it.
    pub fn role_keys(&self, role_name: &str) -> Option<(&[String], u32)> {
        if let Some(roles) = &self.roles {
            roles.iter().find(|r| r.name == role_name).map(|r| (r.keyids.as_slice(), r.threshold))
        } else if let Some(succinct) = &self.succinct_roles {
            succinct.is_role(role_name).then_some((succinct.keyids.as_slice(), succinct.threshold))
        } else {
            None
        }
    }
}

/// One entry of a delegation list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelegatedRole {
    pub name: String,
    pub keyids: Vec<String>,
    pub threshold: u32,
    pub terminating: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hash_prefixes: Option<Vec<String>>,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl DelegatedRole {
    fn validate(&self, role: &str) -> Result<(), Error> {
        if RoleType::is_top_level_name(&self.name) {
            return Err(Error::malformed(role, format!("delegated role may not be named {:?}", self.name)));
        }
        validate_keyids_threshold(role, &self.name, &self.keyids, self.threshold)?;
        if self.paths.is_some() == self.path_hash_prefixes.is_some() {
            return Err(Error::malformed(
                role,
                format!("delegated role {:?} must have exactly one of paths and path_hash_prefixes", self.name),
            ));
        }
        Ok(())
    }

    /// Whether this delegation covers `target_path`.
    ///
    /// `paths` are shell-style patterns matched per `/`-separated segment (a `*` never crosses a `/`, and the
    /// number of segments must be equal); `path_hash_prefixes` match the hex SHA-256 of the path.
    pub fn is_delegated_path(&self, target_path: &str) -> bool {
        self.covers(target_path, &TargetPathHash::new(target_path))
    }

    fn covers(&self, target_path: &str, hash: &TargetPathHash) -> bool {
        if let Some(patterns) = &self.paths {
            return patterns.iter().any(|p| path_matches(p, target_path));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            let hash = hash.hex();
            return prefixes.iter().any(|p| hash.starts_with(p.as_str()));
        }
        false
    }
}

/// The hex SHA-256 of a target path, computed on first use (pattern delegations never need it).
struct TargetPathHash<'a> {
    path: &'a str,
    hex: std::cell::OnceCell<String>,
}

impl<'a> TargetPathHash<'a> {
    fn new(path: &'a str) -> Self {
        Self { path, hex: std::cell::OnceCell::new() }
    }

    fn hex(&self) -> &str {
        self.hex
            .get_or_init(|| hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.path.as_bytes())))
    }
}

/// Whether `path` matches `pattern` segment by segment with `fnmatch` rules (`*`, `?`, `[set]`, `[!set]`).
pub(crate) fn path_matches(pattern: &str, path: &str) -> bool {
    let pattern_parts: Vec<&str> = pattern.split('/').collect();
    let path_parts: Vec<&str> = path.split('/').collect();
    pattern_parts.len() == path_parts.len()
        && pattern_parts.iter().zip(&path_parts).all(|(p, s)| {
            let p: Vec<char> = p.chars().collect();
            let s: Vec<char> = s.chars().collect();
            fnmatch(&p, &s)
        })
}

/// Matches one segment; iterative with backtracking to the last `*`, so it is linear-ish and never recurses.
fn fnmatch(pattern: &[char], s: &[char]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                '*' => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                '?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = match_set(&pattern[p..], s[i]) {
                        if matched {
                            p += next;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == '[' {
                        // An unclosed `[` is a literal, as in Python's fnmatch.
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Matches `c` against the set starting at `pattern[0] == '['`; returns whether it matched and the set's length,
/// or `None` if the set is not closed.
fn match_set(pattern: &[char], c: char) -> Option<(bool, usize)> {
    let mut j = 1;
    let negate = matches!(pattern.get(j), Some('!'));
    if negate {
        j += 1;
    }
    let start = j;
    let mut matched = false;
    while j < pattern.len() {
        if pattern[j] == ']' && j > start {
            return Some((matched != negate, j + 1));
        }
        if pattern.get(j + 1) == Some(&'-') && pattern.get(j + 2).is_some_and(|&e| e != ']') {
            if pattern[j] <= c && c <= pattern[j + 2] {
                matched = true;
            }
            j += 3;
        } else {
            if pattern[j] == c {
                matched = true;
            }
            j += 1;
        }
    }
    None
}

/// Succinct hash-bin delegations (TAP 15): `2^bit_length` roles named `{name_prefix}-{bin in hex}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuccinctRoles {
    pub keyids: Vec<String>,
    pub threshold: u32,
    pub bit_length: u32,
    pub name_prefix: String,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl SuccinctRoles {
    fn validate(&self, role: &str) -> Result<(), Error> {
        validate_keyids_threshold(role, "succinct_roles", &self.keyids, self.threshold)?;
        if !(1..=32).contains(&self.bit_length) {
            return Err(Error::malformed(role, "succinct_roles.bit_length must be between 1 and 32"));
        }
        Ok(())
    }

    fn suffix_len(&self) -> usize {
        self.bit_length.div_ceil(4) as usize
    }

    /// The bin role that `target_path` belongs to.
    pub fn role_for_target(&self, target_path: &str) -> String {
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, target_path.as_bytes());
        let h = hash.as_ref();
        let first = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let bin = first >> (32 - self.bit_length);
        format!("{}-{:0width$x}", self.name_prefix, bin, width = self.suffix_len())
    }

    /// Whether `name` is one of the bins.
    pub fn is_role(&self, name: &str) -> bool {
        let Some(suffix) = name.strip_prefix(&self.name_prefix).and_then(|s| s.strip_prefix('-')) else {
            return false;
        };
        suffix.len() == self.suffix_len()
            && suffix.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && u64::from_str_radix(suffix, 16).is_ok_and(|bin| bin < (1u64 << self.bit_length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_targets(key: &PrivateKey, signed: serde_json::Value) -> Metadata<Targets> {
        let envelope = serde_json::json!({"signatures": [], "signed": signed});
        let mut metadata = Metadata::<Targets>::from_bytes(&serde_json::to_vec(&envelope).unwrap(), "targets").unwrap();
        metadata.sign(key).unwrap();
        metadata
    }

    /// Found by the `metadata_parse` fuzz target: `to_bytes` wrote the typed value, which for metadata written by
    /// other tools is not always what was signed (`" 0"` seconds, `null` optional fields), so the stored file's
    /// signatures no longer verified.
    #[test]
    fn to_bytes_keeps_the_signed_bytes_of_foreign_metadata() {
        let key = PrivateKey::generate(crate::PrivateKeyKind::Ed25519).unwrap();
        let keyid = key.key_id();
        let keys = BTreeMap::from([(keyid.clone(), key.public().clone())]);
        let metadata = signed_targets(
            &key,
            serde_json::json!({"_type": "targets", "spec_version": "1.0.34", "version": 1,
                               "expires": "2030-01-01T00:00: 0Z", "targets": {}, "delegations": null,
                               "x-text": "line\nnext\u{0}"}),
        );
        let stored = metadata.to_bytes();
        let again = Metadata::<Targets>::from_bytes(&stored, "targets").unwrap();
        assert_eq!(again.canonical_signed(), metadata.canonical_signed());
        assert!(again.check_signatures("targets", &keys, std::slice::from_ref(&keyid), 1).is_ok());
    }

    /// Metadata as custody stores it (and its repository tool writes it) takes the path that builds no JSON value;
    /// the same metadata pretty-printed takes the general one, to the same result.
    #[test]
    fn stored_metadata_is_read_from_its_canonical_text() {
        let key = PrivateKey::generate(crate::PrivateKeyKind::Ed25519).unwrap();
        let metadata = signed_targets(
            &key,
            serde_json::json!({"_type": "targets", "spec_version": "1.0.34", "version": 1,
                               "expires": "2030-01-01T00:00:00Z", "x-text": "line\nnext\u{0}",
                               "targets": {"a": {"length": 1, "hashes": {"sha256": "ab"}, "custom": {"k": [1, -2]}}}}),
        );
        let stored = metadata.to_bytes();
        let (signed, signatures, canonical) = Metadata::<Targets>::parse_canonical(&stored).expect("canonical text");
        assert_eq!(
            (&signed, &signatures[..], &canonical[..]),
            (metadata.signed(), metadata.signatures(), metadata.canonical_signed())
        );
        let pretty = serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&stored).unwrap()).unwrap();
        assert!(Metadata::<Targets>::parse_canonical(&pretty).is_none());
        let again = Metadata::<Targets>::from_bytes(&pretty, "targets").unwrap();
        assert_eq!((again.signed(), again.canonical_signed()), (metadata.signed(), metadata.canonical_signed()));
    }

    /// Found by the `canonical_json` fuzz target: with NFC-normalising canonical JSON, `"\u212aernel.img"` (KELVIN
    /// SIGN) and `"Kernel.img"` collapsed into one member, so an attacker could add an unsigned `Kernel.img` entry
    /// beside the signed one (renamed with the Kelvin sign) and the signature still verified.
    #[test]
    fn unicode_equivalent_keys_cannot_smuggle_an_unsigned_target() {
        let key = PrivateKey::generate(crate::PrivateKeyKind::Ed25519).unwrap();
        let keyid = key.key_id();
        let keys = BTreeMap::from([(keyid.clone(), key.public().clone())]);
        let good = serde_json::json!({"length": 1, "hashes": {"sha256": "aa"}});
        let evil = serde_json::json!({"length": 666, "hashes": {"sha256": "bb"}});
        let signed = serde_json::json!({"_type": "targets", "spec_version": "1.0.34", "version": 1,
                                        "expires": "2030-01-01T00:00:00Z", "targets": {"Kernel.img": good}});
        let genuine = signed_targets(&key, signed.clone());
        assert!(genuine.check_signatures("targets", &keys, std::slice::from_ref(&keyid), 1).is_ok());

        let mut forged = signed;
        forged["targets"] = serde_json::json!({"\u{212a}ernel.img": good, "Kernel.img": evil});
        let envelope = serde_json::json!({"signatures": genuine.signatures(), "signed": forged});
        let forged = Metadata::<Targets>::from_bytes(&serde_json::to_vec(&envelope).unwrap(), "targets").unwrap();
        assert_eq!(forged.signed().targets["Kernel.img"].length, 666);
        assert!(forged.check_signatures("targets", &keys, &[keyid], 1).is_err());
    }

    /// A key id listed twice counted twice towards the threshold (the property test
    /// `threshold_counts_distinct_valid_listed_keys` lists some key ids twice).
    #[test]
    fn a_key_id_listed_twice_counts_once() {
        let key = PrivateKey::generate(crate::PrivateKeyKind::Ed25519).unwrap();
        let keyid = key.key_id();
        let keys = BTreeMap::from([(keyid.clone(), key.public().clone())]);
        let metadata = signed_targets(
            &key,
            serde_json::json!({"_type": "targets", "spec_version": "1.0.34", "version": 1,
                               "expires": "2030-01-01T00:00:00Z", "targets": {}}),
        );
        assert!(metadata.check_signatures("targets", &keys, std::slice::from_ref(&keyid), 1).is_ok());
        let twice = [keyid.clone(), keyid];
        assert!(matches!(
            metadata.check_signatures("targets", &keys, &twice, 2),
            Err(Error::Threshold { valid: 1, threshold: 2, .. })
        ));
    }

    /// Listing a directory made one string per bin of a succinct delegation, up to 2^32 of them (memory
    /// exhaustion by whoever signs a delegating role), before any limit on visited roles applied.
    #[test]
    fn roles_for_dir_counts_bins_before_naming_them() {
        let delegations = |bit_length: u32| Delegations {
            keys: BTreeMap::new(),
            roles: None,
            succinct_roles: Some(SuccinctRoles {
                keyids: vec!["k".into()],
                threshold: 1,
                bit_length,
                name_prefix: "bin".into(),
                unrecognized: BTreeMap::new(),
            }),
            unrecognized: BTreeMap::new(),
        };
        assert_eq!(delegations(32).roles_for_dir("dir", 4096), None);
        assert_eq!(delegations(13).roles_for_dir("dir", 4096), None);
        let bins = delegations(12).roles_for_dir("dir", 4096).unwrap();
        assert_eq!((bins.len(), bins[0].as_str(), bins[4095].as_str()), (4096, "bin-000", "bin-fff"));
    }

    #[test]
    fn unknown_fields_and_pem_keys_survive_a_round_trip() {
        let key = PrivateKey::generate(crate::PrivateKeyKind::EcdsaP256).unwrap();
        let json = serde_json::json!({
            "signatures": [],
            "signed": {
                "_type": "root", "spec_version": "1.0.31", "version": 1, "expires": "2030-01-01T00:00:00Z",
                "consistent_snapshot": true, "x-custom": {"nested": [1, "two"]},
                "keys": {"k": key.public()},
                "roles": {
                    "root": {"keyids": ["k"], "threshold": 1, "x-role": true},
                    "timestamp": {"keyids": ["k"], "threshold": 1},
                    "snapshot": {"keyids": ["k"], "threshold": 1},
                    "targets": {"keyids": ["k"], "threshold": 1}
                }
            }
        });
        let first = Metadata::<Root>::from_bytes(&serde_json::to_vec(&json).unwrap(), "root").unwrap();
        let mut signed = first.clone();
        signed.sign(&key).unwrap();
        let second = Metadata::<Root>::from_bytes(&signed.to_bytes(), "root").unwrap();
        assert_eq!(first.canonical_signed(), second.canonical_signed());
        assert!(second.check_signatures("root", &second.signed().keys, &["k".into()], 1).is_err(), "keyid differs");
        let keyid = key.key_id();
        assert!(
            second
                .check_signatures("root", &BTreeMap::from([(keyid.clone(), key.public().clone())]), &[keyid], 1)
                .is_ok()
        );
    }

    #[test]
    fn fnmatch_segments() {
        assert!(path_matches("*", "a.txt"));
        assert!(!path_matches("*", "dir/a.txt"));
        assert!(path_matches("dir/*", "dir/a.txt"));
        assert!(path_matches("*/*.txt", "dir/a.txt"));
        assert!(!path_matches("dir/*", "dir/sub/a.txt"));
        assert!(path_matches("file?.tgz", "file1.tgz"));
        assert!(!path_matches("file?.tgz", "file12.tgz"));
        assert!(path_matches("f[0-9].*", "f7.bin"));
        assert!(!path_matches("f[!0-9].*", "f7.bin"));
        assert!(path_matches("a*b*c", "aXXbYYc"));
        assert!(!path_matches("a*b*c", "aXXbYY"));
        assert!(path_matches("[abc", "[abc"));
        assert!(path_matches("", ""));
    }

    #[test]
    fn expires_round_trip() {
        let t = parse_expires("2030-01-02T03:04:05Z").unwrap();
        assert_eq!(format_expires(t), "2030-01-02T03:04:05Z");
        assert!(parse_expires("2030-01-02 03:04:05").is_err());
        assert!(parse_expires("2030-01-02T03:04:05+01:00").is_err());
    }

    #[test]
    fn succinct_bins() {
        let s = SuccinctRoles {
            keyids: vec![],
            threshold: 1,
            bit_length: 8,
            name_prefix: "bin".into(),
            unrecognized: BTreeMap::new(),
        };
        let role = s.role_for_target("some/file");
        assert!(s.is_role(&role), "{role}");
        assert_eq!(role.len(), "bin-00".len());
        assert!(!s.is_role("bin-100"));
        assert!(!s.is_role("bin-0g"));
    }
}
