//! The set of metadata a client trusts, and the rules by which it grows (TUF specification §5).
//!
//! [`TrustedSet`] takes untrusted bytes one role at a time, in the order the workflow requires, and keeps only what
//! passed every check. Checks that protect against rollback use whatever is already trusted, even metadata that has
//! since expired or been superseded: expiry of the *final* metadata is what stops an update cycle.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Deref;

use jiff::Timestamp;

use crate::metadata::verify_length_and_hashes;
use crate::snapshot_merkle::{MerkleCommitment, SnapshotProof, TIMESTAMP_FIELD};
use crate::{Error, MetaFile, Metadata, RoleType, Root, Signed, Snapshot, TargetFile, Targets};

/// Size caps and counts that bound what a client downloads and visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleLimits {
    pub root_max_length: u64,
    pub timestamp_max_length: u64,
    /// Used when timestamp does not list the snapshot's length.
    pub snapshot_max_length: u64,
    /// Used when snapshot does not list a targets file's length.
    pub targets_max_length: u64,
    /// How many new root versions one update cycle may walk through.
    pub max_root_rotations: u64,
    /// How many targets roles one target search may visit.
    pub max_delegations: usize,
    /// How many targets roles listing one catalog directory (a product and its hash bins) may visit.
    pub max_listing_roles: usize,
    /// Cap on one snapshot Merkle proof.
    pub snapshot_proof_max_length: u64,
}

impl Default for RoleLimits {
    fn default() -> Self {
        Self {
            root_max_length: 512_000,
            timestamp_max_length: 16_384,
            snapshot_max_length: 2_000_000,
            targets_max_length: 5_000_000,
            max_root_rotations: 256,
            max_delegations: 32,
            max_listing_roles: 4096,
            snapshot_proof_max_length: 65_536,
        }
    }
}

/// Metadata whose signatures, version and freshness were checked by a [`TrustedSet`].
///
/// Only this crate constructs it, so holding one is proof of those checks.
#[derive(Debug, Clone)]
pub struct Verified<T> {
    metadata: Metadata<T>,
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.metadata.signed()
    }
}

impl<T: Signed> Verified<T> {
    pub fn metadata(&self) -> &Metadata<T> {
        &self.metadata
    }
}

/// A delegated (or the top-level) targets role and the delegators whose keys have verified it.
#[derive(Debug)]
struct TrustedTargets {
    targets: Verified<Targets>,
    verified_by: BTreeSet<String>,
}

/// The trusted metadata of one update cycle.
#[derive(Debug)]
pub struct TrustedSet {
    reference_time: Timestamp,
    root: Verified<Root>,
    timestamp: Option<Verified<crate::Timestamp>>,
    snapshot: Option<Verified<Snapshot>>,
    /// Targets roles by name; `targets` is the top-level one, verified by `root`.
    targets: HashMap<String, TrustedTargets>,
    /// Snapshot entries proven one by one against the timestamp's Merkle commitment (instead of a full snapshot).
    proven: BTreeMap<String, MetaFile>,
    /// Versions proven under earlier timestamps: a new proof may not go below them.
    proven_floor: BTreeMap<String, u64>,
}

impl TrustedSet {
    /// Starts from the locally trusted root, which must be signed by a threshold of its own root keys.
    ///
    /// Its expiry is not checked here: an expired root may still be updated by a newer one. `reference_time` is the
    /// update start time that every later expiry check uses.
    pub fn new(root_bytes: &[u8], reference_time: Timestamp) -> Result<Self, Error> {
        let root = Metadata::<Root>::from_bytes(root_bytes, "root")?;
        root.signed().check_signatures(RoleType::Root, &root)?;
        Ok(Self {
            reference_time,
            root: Verified { metadata: root },
            timestamp: None,
            snapshot: None,
            targets: HashMap::new(),
            proven: BTreeMap::new(),
            proven_floor: BTreeMap::new(),
        })
    }

    pub fn reference_time(&self) -> Timestamp {
        self.reference_time
    }

    pub fn root(&self) -> &Verified<Root> {
        &self.root
    }

    pub fn timestamp(&self) -> Option<&Verified<crate::Timestamp>> {
        self.timestamp.as_ref()
    }

    pub fn snapshot(&self) -> Option<&Verified<Snapshot>> {
        self.snapshot.as_ref()
    }

    /// A loaded targets role (`"targets"` for the top-level one).
    pub fn targets(&self, role: &str) -> Option<&Verified<Targets>> {
        self.targets.get(role).map(|t| &t.targets)
    }

    /// Accepts root version N+1, signed by a threshold of both the trusted root's and its own root keys.
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.timestamp.is_some() {
            return Err(Error::OutOfOrder("root (before timestamp)"));
        }
        let new = Metadata::<Root>::from_bytes(bytes, "root")?;
        self.root.check_signatures(RoleType::Root, &new)?;
        let expected = self.root.version + 1;
        if new.signed().version != expected {
            return Err(Error::VersionMismatch { role: "root".into(), expected, found: new.signed().version });
        }
        new.signed().check_signatures(RoleType::Root, &new)?;
        self.root = Verified { metadata: new };
        Ok(())
    }

    /// Accepts a timestamp.
    ///
    /// Fails with [`Error::EqualTimestampVersion`] when its version equals the trusted one: the caller keeps the
    /// trusted timestamp and the cycle goes on with it (nothing changed). The new timestamp is kept even if expired,
    /// so that it still protects against rollback, but then the error says so and the cycle must stop.
    pub fn update_timestamp(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.snapshot.is_some() {
            return Err(Error::OutOfOrder("timestamp (before snapshot)"));
        }
        self.check_not_expired(&*self.root)?;
        let new = Metadata::<crate::Timestamp>::from_bytes(bytes, "timestamp")?;
        self.root.check_signatures(RoleType::Timestamp, &new)?;
        if let Some(trusted) = &self.timestamp {
            let (old, found) = (trusted.version, new.signed().version);
            if found < old {
                return Err(Error::Rollback { role: "timestamp".into(), trusted: old, found });
            }
            if found == old {
                return Err(Error::EqualTimestampVersion(found));
            }
            let (old_snap, new_snap) = (trusted.snapshot_meta().version, new.signed().snapshot_meta().version);
            if new_snap < old_snap {
                return Err(Error::Rollback {
                    role: "snapshot (in timestamp)".into(),
                    trusted: old_snap,
                    found: new_snap,
                });
            }
        }
        self.timestamp = Some(Verified { metadata: new });
        for (name, meta) in std::mem::take(&mut self.proven) {
            let floor = self.proven_floor.entry(name).or_default();
            *floor = (*floor).max(meta.version);
        }
        self.check_final_timestamp()
    }

    /// The Merkle commitment to the snapshot that the trusted timestamp signs, if the repository publishes one.
    pub fn snapshot_commitment(&self) -> Option<MerkleCommitment> {
        let timestamp = self.timestamp.as_ref()?;
        serde_json::from_value(timestamp.unrecognized.get(TIMESTAMP_FIELD)?.clone()).ok()
    }

    /// Accepts one snapshot entry proven against the timestamp's Merkle commitment, in place of the full snapshot.
    ///
    /// The entry's version may not be lower than one proven under an earlier timestamp (rollback).
    pub fn update_snapshot_proof(&mut self, bytes: &[u8]) -> Result<&MetaFile, Error> {
        if self.snapshot.is_some() {
            return Err(Error::OutOfOrder("snapshot proofs (instead of a full snapshot)"));
        }
        self.check_final_timestamp()?;
        // Invariant: `check_final_timestamp` succeeded, so a timestamp is trusted.
        let snapshot_version = self.timestamp.as_ref().expect("timestamp is loaded").snapshot_meta().version;
        let commitment = self.snapshot_commitment().ok_or_else(|| {
            Error::malformed("timestamp", format!("no {TIMESTAMP_FIELD} commitment to prove snapshot entries against"))
        })?;
        let proof = SnapshotProof::verify(bytes, &commitment, snapshot_version)?;
        if let Some(&floor) = self.proven_floor.get(&proof.name)
            && proof.meta.version < floor
        {
            return Err(Error::Rollback {
                role: format!("{} (in snapshot)", proof.name),
                trusted: floor,
                found: proof.meta.version,
            });
        }
        let slot = self.proven.entry(proof.name).or_insert(proof.meta.clone());
        *slot = proof.meta;
        Ok(slot)
    }

    /// The snapshot entry of `file` (`<role>.json`), from the full snapshot or from a proof.
    pub fn snapshot_entry(&self, file: &str) -> Option<&MetaFile> {
        match &self.snapshot {
            Some(snapshot) => snapshot.meta.get(file),
            None => self.proven.get(file),
        }
    }

    fn check_final_timestamp(&self) -> Result<(), Error> {
        let timestamp = self.timestamp.as_ref().ok_or(Error::OutOfOrder("timestamp"))?;
        self.check_not_expired(&**timestamp)
    }

    /// Accepts a snapshot.
    ///
    /// `from_local_store` skips the length and hash check against timestamp (the bytes were verified when they were
    /// first received); everything else is checked. A snapshot that fails only the final checks (expiry, version
    /// named by timestamp) is still kept, for rollback protection of the next one, and the error is returned.
    pub fn update_snapshot(&mut self, bytes: &[u8], from_local_store: bool) -> Result<(), Error> {
        if !self.targets.is_empty() {
            return Err(Error::OutOfOrder("snapshot (before targets)"));
        }
        self.check_final_timestamp()?;
        let timestamp = self.timestamp.as_ref().ok_or(Error::OutOfOrder("timestamp"))?;
        let meta = timestamp.snapshot_meta();
        if !from_local_store {
            meta.verify("snapshot", bytes)?;
        }
        let new = Metadata::<Snapshot>::from_bytes(bytes, "snapshot")?;
        self.root.check_signatures(RoleType::Snapshot, &new)?;
        if let Some(trusted) = &self.snapshot {
            for (name, old) in &trusted.meta {
                let Some(current) = new.signed().meta.get(name) else {
                    return Err(Error::RemovedFromSnapshot(name.clone()));
                };
                if current.version < old.version {
                    return Err(Error::Rollback {
                        role: format!("{name} (in snapshot)"),
                        trusted: old.version,
                        found: current.version,
                    });
                }
            }
        }
        self.snapshot = Some(Verified { metadata: new });
        self.check_final_snapshot()
    }

    fn check_final_snapshot(&self) -> Result<(), Error> {
        let snapshot = self.snapshot.as_ref().ok_or(Error::OutOfOrder("snapshot"))?;
        self.check_not_expired(&**snapshot)?;
        let timestamp = self.timestamp.as_ref().ok_or(Error::OutOfOrder("timestamp"))?;
        let expected = timestamp.snapshot_meta().version;
        if snapshot.version != expected {
            return Err(Error::VersionMismatch { role: "snapshot".into(), expected, found: snapshot.version });
        }
        Ok(())
    }

    /// Accepts the top-level targets metadata.
    pub fn update_targets(&mut self, bytes: &[u8]) -> Result<&Verified<Targets>, Error> {
        self.update_delegated_targets(bytes, "targets", "root")
    }

    /// Accepts targets metadata for `role`, delegated by the already trusted `delegator` (`"root"` for the
    /// top-level targets role).
    ///
    /// Checks length and hashes against snapshot, the delegator's keys and threshold, the version snapshot names,
    /// and expiry.
    pub fn update_delegated_targets(
        &mut self,
        bytes: &[u8],
        role: &str,
        delegator: &str,
    ) -> Result<&Verified<Targets>, Error> {
        if self.snapshot.is_some() || self.proven.is_empty() {
            self.check_final_snapshot()?;
        } else {
            self.check_final_timestamp()?;
        }
        let file = format!("{role}.json");
        let meta = self.snapshot_entry(&file).ok_or_else(|| Error::NotInSnapshot(file.clone()))?;
        meta.verify(&file, bytes)?;
        let new = Metadata::<Targets>::from_bytes(bytes, role)?;
        self.check_delegation(role, delegator, &new)?;
        if new.signed().version != meta.version {
            return Err(Error::VersionMismatch {
                role: role.into(),
                expected: meta.version,
                found: new.signed().version,
            });
        }
        self.check_not_expired(new.signed())?;
        let entry =
            TrustedTargets { targets: Verified { metadata: new }, verified_by: BTreeSet::from([delegator.to_owned()]) };
        let slot = match self.targets.entry(role.to_owned()) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                o.insert(entry);
                o.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(v) => v.insert(entry),
        };
        Ok(&slot.targets)
    }

    /// Whether `role` is loaded and trusted *as delegated by `delegator`*.
    ///
    /// A role already loaded through another delegator is checked again against this delegator's keys: reaching a
    /// role by one delegation path never lends it the authority of another. `Ok(false)` means it must be loaded.
    pub fn is_trusted_via(&mut self, role: &str, delegator: &str) -> Result<bool, Error> {
        let Some(entry) = self.targets.get(role) else {
            return Ok(false);
        };
        if entry.verified_by.contains(delegator) {
            return Ok(true);
        }
        self.check_delegation(role, delegator, &entry.targets.metadata)?;
        if let Some(entry) = self.targets.get_mut(role) {
            entry.verified_by.insert(delegator.to_owned());
        }
        Ok(true)
    }

    /// Checks `metadata` against the keys and threshold with which `delegator` delegates `role`.
    fn check_delegation(&self, role: &str, delegator: &str, metadata: &Metadata<Targets>) -> Result<(), Error> {
        if delegator == "root" {
            if role != "targets" {
                return Err(Error::NotDelegated { role: role.into(), delegator: delegator.into() });
            }
            return self.root.check_signatures(RoleType::Targets, metadata);
        }
        let parent = self
            .targets
            .get(delegator)
            .ok_or_else(|| Error::NotDelegated { role: role.into(), delegator: delegator.into() })?;
        let delegations = parent
            .targets
            .delegations
            .as_ref()
            .ok_or_else(|| Error::NotDelegated { role: role.into(), delegator: delegator.into() })?;
        let (keyids, threshold) = delegations
            .role_keys(role)
            .ok_or_else(|| Error::NotDelegated { role: role.into(), delegator: delegator.into() })?;
        metadata.check_signatures(role, &delegations.keys, keyids, threshold)
    }

    fn check_not_expired<T: Signed>(&self, signed: &T) -> Result<(), Error> {
        if signed.is_expired(self.reference_time) {
            return Err(Error::Expired { role: T::TYPE.to_owned(), expires: crate::error::Expiry(signed.expires()) });
        }
        Ok(())
    }
}

/// A target path with the length, hashes and custom metadata that a trusted targets role signed for it.
///
/// Only a client's search through verified metadata makes one ([`crate::TargetSearch`], [`crate::TargetListing`]):
/// its fields are private, so what the installer is handed is always what a trusted role signed. Tests of other
/// crates build one with `for_tests`, behind the `test-support` feature that only dev-dependencies enable (a test in
/// crates/custody checks that no crate enables it otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct TrustedTarget {
    path: String,
    /// The targets role that listed it.
    role: String,
    file: TargetFile,
}

impl TrustedTarget {
    /// Made by the search, from a role the trusted set verified.
    pub(crate) fn new(path: String, role: String, file: TargetFile) -> Self {
        Self { path, role, file }
    }

    /// A target that no search found, for other crates' tests only.
    #[cfg(feature = "test-support")]
    pub fn for_tests(path: String, role: String, file: TargetFile) -> Self {
        Self { path, role, file }
    }

    /// The target path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The targets role that listed it.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The signed length, hashes and custom metadata.
    pub fn file(&self) -> &TargetFile {
        &self.file
    }

    /// Checks downloaded bytes against the signed length and every signed hash.
    pub fn verify(&self, data: Vec<u8>) -> Result<VerifiedContent, Error> {
        verify_length_and_hashes(
            &format!("target {}", self.path),
            &data,
            Some(self.file.length),
            Some(&self.file.hashes),
        )?;
        Ok(VerifiedContent { target: self.clone(), data })
    }

    /// Whether stored bytes already are this target (used to skip a download).
    pub fn matches(&self, data: &[u8]) -> bool {
        verify_length_and_hashes("", data, Some(self.file.length), Some(&self.file.hashes)).is_ok()
    }

    /// The name under which consistent snapshots publish this target: `dir/HASH.name` for each listed hash.
    pub fn consistent_paths(&self) -> Vec<String> {
        self.file.consistent_paths(&self.path)
    }
}

/// Target content that matched its signed length and hashes. Only [`TrustedTarget::verify`] makes one.
#[derive(Debug)]
pub struct VerifiedContent {
    target: TrustedTarget,
    data: Vec<u8>,
}

impl VerifiedContent {
    pub fn target(&self) -> &TrustedTarget {
        &self.target
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}
