//! The repository and its operations. Each operation builds a [`Draft`], changes it, and ends with
//! [`Draft::finish`], which signs, then publishes or stages.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use custody_catalog::UpdateEntry;
use custody_tuf::snapshot_merkle::{SnapshotTree, TIMESTAMP_FIELD, proof_path};
use custody_tuf::{
    DelegatedRole, Delegations, Key, MetaFile, Metadata, PrivateKey, Role, RoleType, Root, SPEC_VERSION, Signed,
    Snapshot, TargetFile, Targets, Timestamp,
};
use serde::Serialize;
use serde_json::Value;

use crate::Error;
use crate::config::{Config, DelegationConfig, Expiry, ExpiryConfig};
use crate::keys::{KeySpec, Passphrase, is_encrypted, key_file_bytes, read_key_file};
use crate::layout::{Layout, Transaction};

/// A TUF repository directory (see the crate documentation for its layout).
pub struct Repository {
    layout: Layout,
    config: Config,
    passphrase: Passphrase,
    /// Keys given for this session (`--key`), by key id; they sign in addition to the key files of `repo.toml`.
    given_keys: BTreeMap<String, PrivateKey>,
    /// The time at which new expiry dates start, and against which verification checks expiry.
    now: jiff::Timestamp,
}

/// The keys and validity periods of a new repository.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub root: KeySpec,
    pub targets: KeySpec,
    pub snapshot: KeySpec,
    pub timestamp: KeySpec,
    pub expiry: ExpiryConfig,
}

/// A target to add: its path in the repository, its bytes, and its `custom` metadata.
#[derive(Debug, Clone)]
pub struct AddTarget {
    pub path: String,
    pub content: Vec<u8>,
    /// A JSON object; when it has a `custody` key, that must be a valid catalog entry describing `content`.
    pub custom: Option<Value>,
}

/// A new delegation.
#[derive(Debug, Clone)]
pub struct DelegateOptions {
    /// The role's name, or the prefix of the bin names for hashed bins.
    pub name: String,
    /// The role that delegates: `targets` or a delegated role.
    pub delegator: String,
    pub kind: DelegationKind,
    pub terminating: bool,
    pub keys: KeySpec,
    pub expiry: Option<Expiry>,
    /// Move the delegator's targets that the new role(s) cover into them.
    pub move_targets: bool,
}

/// What a delegation covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelegationKind {
    /// Path patterns (`*` and `?` never cross a `/`).
    Paths(Vec<String>),
    /// This many hashed bins (a power of two from 2 to 65,536) by `path_hash_prefixes`, covering every path.
    Bins(u32),
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// The changed roles were published with a new snapshot and timestamp.
    Published { roles: BTreeMap<String, u64>, snapshot_version: u64, timestamp_version: u64 },
    /// Some role lacks signatures: nothing was published, the changes wait in `staged/`.
    Pending { waiting: Vec<MissingSignatures> },
}

/// A role whose pending metadata lacks signatures from one of the key sets that must sign it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MissingSignatures {
    pub role: String,
    pub version: u64,
    /// Whose keys: the role's own (`"root"` for a new root's keys), or `"root version N"` for a root rotation's
    /// previous keys.
    pub signers: String,
    pub signed: usize,
    pub threshold: u32,
    /// The keys that have not signed, any `threshold - signed` of which would do.
    pub missing: Vec<SignatureKey>,
}

/// A key id with its key file (if `repo.toml` records one) and what this session knows about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignatureKey {
    pub keyid: String,
    pub file: Option<PathBuf>,
    pub state: String,
}

/// An overview of the repository, for `custody repo status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub roles: Vec<RoleStatus>,
    /// Roles waiting in `staged/` for signatures.
    pub pending: Vec<MissingSignatures>,
}

/// One role in a [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoleStatus {
    pub role: String,
    /// `root` for the top-level roles.
    pub delegator: String,
    /// The published version; 0 if never published.
    pub version: u64,
    pub expires: Option<String>,
    /// A version waiting in `staged/`.
    pub staged_version: Option<u64>,
    pub threshold: u32,
    pub keys: Vec<SignatureKey>,
    /// For targets roles: how many targets it lists.
    pub targets: Option<usize>,
}

impl AddTarget {
    /// Reads a JSON-lines manifest: one `{"path": ..., "file": ..., "custom": {...}}` per line (`custom` optional),
    /// with `file` relative to the manifest's directory. Every file is read before this returns.
    pub fn read_manifest(manifest: &Path) -> Result<Vec<Self>, Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Line {
            path: String,
            file: PathBuf,
            #[serde(default)]
            custom: Option<Value>,
        }
        let text = std::fs::read_to_string(manifest).map_err(Error::io(manifest))?;
        let base = manifest.parent().unwrap_or(Path::new("."));
        let mut targets = Vec::new();
        for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let entry: Line = serde_json::from_str(line).map_err(|e| Error::Config {
                path: manifest.to_owned(),
                reason: format!("line {}: {e}", number + 1),
            })?;
            let file = base.join(&entry.file);
            let content = std::fs::read(&file).map_err(Error::io(&file))?;
            targets.push(Self { path: entry.path, content, custom: entry.custom });
        }
        Ok(targets)
    }
}

impl Repository {
    /// Creates a repository in `dir` (created if needed; it must not hold a `repo.toml`): keys for the four
    /// top-level roles, and version 1 of every top-level role, published.
    pub fn init(dir: &Path, options: &InitOptions, passphrase: Passphrase) -> Result<(Self, Outcome), Error> {
        for (role, spec) in [
            (RoleType::Root, options.root),
            (RoleType::Targets, options.targets),
            (RoleType::Snapshot, options.snapshot),
            (RoleType::Timestamp, options.timestamp),
        ] {
            spec.check(role.as_str())?;
        }
        let layout = Layout::new(dir);
        if layout.config().exists() {
            return Err(Error::AlreadyExists(dir.to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let config = Config {
            format: Config::FORMAT,
            expiry: options.expiry.clone(),
            keys: BTreeMap::new(),
            delegations: vec![],
        };
        let mut repo = Self { layout, config, passphrase, given_keys: BTreeMap::new(), now: jiff::Timestamp::now() };
        let mut draft = Draft::new(&repo, Published::default());
        let mut root = Root {
            type_: "root".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires: repo.now,
            consistent_snapshot: Some(true),
            keys: BTreeMap::new(),
            roles: BTreeMap::new(),
            unrecognized: BTreeMap::new(),
        };
        for (role, spec) in [
            (RoleType::Root, options.root),
            (RoleType::Targets, options.targets),
            (RoleType::Snapshot, options.snapshot),
            (RoleType::Timestamp, options.timestamp),
        ] {
            let keys = draft.new_keys(role.as_str(), &spec)?;
            let keyids = keys.iter().map(|(id, _)| id.clone()).collect();
            root.keys.extend(keys);
            root.roles.insert(
                role.as_str().into(),
                Role { keyids, threshold: spec.threshold, unrecognized: BTreeMap::new() },
            );
        }
        draft.root = Some(Entry::created(root));
        draft.targets.insert("targets".into(), Entry::created(empty_targets(repo.now)));
        let (outcome, config) = draft.finish()?;
        repo.config = config;
        tracing::info!(dir = %dir.display(), "repository created");
        Ok((repo, outcome))
    }

    /// Opens the repository in `dir`.
    pub fn open(dir: &Path, passphrase: Passphrase) -> Result<Self, Error> {
        let layout = Layout::new(dir);
        if !layout.config().exists() {
            return Err(Error::NotARepository(dir.to_owned()));
        }
        let config = Config::load(&layout.config())?;
        Ok(Self { layout, config, passphrase, given_keys: BTreeMap::new(), now: jiff::Timestamp::now() })
    }

    /// Adds keys that sign in this session, for example offline keys brought in for one operation.
    pub fn add_signing_keys(&mut self, keys: impl IntoIterator<Item = PrivateKey>) {
        for key in keys {
            self.given_keys.insert(key.key_id(), key);
        }
    }

    /// Sets the time that new expiry dates count from and that verification checks against.
    pub fn set_time(&mut self, now: jiff::Timestamp) {
        self.now = now;
    }

    pub fn dir(&self) -> &Path {
        self.layout.dir()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds (or replaces) targets.
    ///
    /// Without `role`, a target already listed stays in its role, and a new one goes where a client's search for
    /// its path ends: following the first matching delegation down to a role that delegates the path no further
    /// (so hashed bins are chosen automatically). With `role` (a role name, or the name of a group of hashed
    /// bins), the target goes there, which a client's search for its path must visit; a listing elsewhere is
    /// removed. Every touched role is signed once, however many targets it got.
    pub fn add_targets(
        &mut self,
        targets: impl IntoIterator<Item = AddTarget>,
        role: Option<&str>,
    ) -> Result<Outcome, Error> {
        let mut draft = Draft::open(self, true)?;
        let mut count = 0usize;
        for target in targets {
            check_target_path(&target.path)?;
            let file = TargetFile::describing(&target.content, target.custom);
            check_custom(&target.path, &file)?;
            let names = self.layout.target_files(&target.path, file.hashes.values());
            draft.tx.write_target(&names, &target.content)?;
            let search = draft.search(&target.path)?;
            let destination = match role {
                None => search.found.clone().unwrap_or(search.leaf.clone()),
                Some(wanted) => search.resolve(wanted, &draft.config, &target.path)?,
            };
            if let Some(found) = search.found.filter(|found| *found != destination) {
                draft.role(&found)?.edit().targets.remove(&target.path);
            }
            draft.role(&destination)?.edit().targets.insert(target.path, file);
            count += 1;
        }
        if count == 0 {
            return Err(Error::Invalid("no targets to add".into()));
        }
        tracing::info!(count, "targets added");
        let (outcome, config) = draft.finish()?;
        self.config = config;
        Ok(outcome)
    }

    /// Removes targets from the roles that list them (their files stay in `targets/`: older snapshots may name them).
    pub fn remove_targets(&mut self, paths: &[String]) -> Result<Outcome, Error> {
        if paths.is_empty() {
            return Err(Error::Invalid("no targets to remove".into()));
        }
        let mut draft = Draft::open(self, true)?;
        for path in paths {
            let role = draft.search(path)?.found.ok_or_else(|| Error::UnknownTarget(path.clone()))?;
            draft.role(&role)?.edit().targets.remove(path);
        }
        let (outcome, config) = draft.finish()?;
        self.config = config;
        Ok(outcome)
    }

    /// Delegates part of a role's path space to a new role, or to a group of hashed bins, with new keys.
    pub fn delegate(&mut self, options: &DelegateOptions) -> Result<Outcome, Error> {
        let mut draft = Draft::open(self, true)?;
        draft.delegate(options)?;
        let (outcome, config) = draft.finish()?;
        self.config = config;
        Ok(outcome)
    }

    /// Gives a product its own delegated role, `product` for the paths `product/*`, taking over the top-level
    /// targets of those paths; with `bins`, the product role delegates all its paths on to that many hashed bins
    /// named `{product}-bins-…` (which take over its targets). When the product role exists, only the bins are
    /// added. One publication covers it all.
    pub fn delegate_product(&mut self, product: &str, bins: Option<u32>, keys: &KeySpec) -> Result<Outcome, Error> {
        if product.is_empty() || product.contains(['/', '*', '?', '[']) {
            return Err(Error::Invalid(format!("{product:?} cannot name a product (no '/', '*', '?' or '[')")));
        }
        let mut draft = Draft::open(self, true)?;
        let exists = draft.config.delegations.iter().any(|d| d.name == product);
        if exists && bins.is_none() {
            return Err(Error::Invalid(format!("product {product:?} already has its role; add --bins to split it")));
        }
        if !exists {
            draft.delegate(&DelegateOptions {
                name: product.into(),
                delegator: "targets".into(),
                kind: DelegationKind::Paths(vec![format!("{product}/*")]),
                terminating: true,
                keys: *keys,
                expiry: None,
                move_targets: true,
            })?;
        }
        if let Some(count) = bins {
            draft.delegate(&DelegateOptions {
                name: format!("{product}-bins"),
                delegator: product.into(),
                kind: DelegationKind::Bins(count),
                terminating: true,
                keys: *keys,
                expiry: None,
                move_targets: true,
            })?;
        }
        let (outcome, config) = draft.finish()?;
        self.config = config;
        Ok(outcome)
    }

    /// Replaces the keys of `role` (a top-level role, a delegated role, or a group of hashed bins) with new ones.
    ///
    /// A top-level role's keys are in root, so root gets a new version, which a threshold of both the previous and
    /// the new root keys must sign. A delegated role's keys are in its delegator, which gets a new version. The
    /// role itself (targets, or the delegated role or bins) is signed again with its new keys.
    pub fn rotate(&mut self, role: &str, spec: &KeySpec) -> Result<Outcome, Error> {
        spec.check(role)?;
        let mut draft = Draft::open(self, true)?;
        let keys = draft.new_keys(role, spec)?;
        let new_ids: Vec<String> = keys.iter().map(|(id, _)| id.clone()).collect();
        if RoleType::is_top_level_name(role) {
            let root = draft.root_entry()?.edit();
            let entry = root.roles.get_mut(role).ok_or_else(|| Error::UnknownRole(role.into()))?;
            entry.keyids = new_ids;
            entry.threshold = spec.threshold;
            root.keys.extend(keys);
            let used: BTreeSet<&String> = root.roles.values().flat_map(|r| &r.keyids).collect();
            let unused: Vec<String> = root.keys.keys().filter(|id| !used.contains(id)).cloned().collect();
            for id in unused {
                root.keys.remove(&id);
            }
            if role == "targets" {
                draft.role("targets")?.edit();
            }
        } else {
            let (delegator, members) = match draft.config.bin_group(role) {
                Some(group) => (group.delegator.clone(), None),
                None => {
                    let delegator = draft.delegator_of(role)?;
                    (delegator, Some(role.to_owned()))
                }
            };
            let edited = draft.role(&delegator)?.edit();
            let delegations = edited.delegations.as_mut().ok_or_else(|| Error::UnknownRole(role.into()))?;
            let mut rotated = Vec::new();
            for delegated in delegations.roles.iter_mut().flatten() {
                let member = match &members {
                    Some(name) => delegated.name == *name,
                    None => delegated.name.strip_prefix(role).is_some_and(|rest| rest.starts_with('-')),
                };
                if member {
                    delegated.keyids = new_ids.clone();
                    delegated.threshold = spec.threshold;
                    rotated.push(delegated.name.clone());
                }
            }
            if rotated.is_empty() {
                return Err(Error::UnknownRole(role.into()));
            }
            delegations.keys.extend(keys);
            let used: BTreeSet<String> = delegations.roles.iter().flatten().flat_map(|r| r.keyids.clone()).collect();
            delegations.keys.retain(|id, _| used.contains(id));
            for name in rotated {
                draft.role(&name)?.edit();
            }
        }
        tracing::info!(role, "keys rotated");
        let (outcome, config) = draft.finish()?;
        self.config = config;
        Ok(outcome)
    }

    /// Signs pending metadata with the keys given by [`Repository::add_signing_keys`] (and any key file in reach),
    /// and publishes once every pending role meets its thresholds.
    pub fn sign(&mut self) -> Result<Outcome, Error> {
        let mut draft = Draft::open(self, true)?;
        let pending = draft.pending_roles();
        if pending.is_empty() {
            return Err(Error::Invalid("no metadata is waiting for signatures (staged/ is empty)".into()));
        }
        let mut needed = BTreeSet::new();
        for role in &pending {
            for set in draft.keysets(role)? {
                needed.extend(set.keyids);
            }
        }
        if let Some(unneeded) = self.given_keys.keys().find(|id| !needed.contains(*id)) {
            return Err(Error::Invalid(format!(
                "key {unneeded} is not a key of any role waiting for signatures ({})",
                pending.join(", ")
            )));
        }
        let (outcome, config) = draft.finish()?;
        self.config = config;
        Ok(outcome)
    }

    /// Publishes a new timestamp (and, unless `timestamp_only`, a new snapshot) with fresh expiry dates, signed with
    /// the online keys only. Metadata waiting in `staged/` stays there.
    pub fn refresh(&mut self, timestamp_only: bool) -> Result<Outcome, Error> {
        let mut draft = Draft::open(self, false)?;
        let snapshot_meta = match (&draft.published.snapshot, timestamp_only) {
            (Some(_), true) => None,
            (Some(snapshot), false) => Some(snapshot.signed().meta.clone()),
            (None, _) => return Err(Error::Invalid("the repository has no published snapshot".into())),
        };
        let (snapshot_version, timestamp_version) = draft.publish_online(snapshot_meta)?;
        draft.tx.commit()?;
        Ok(Outcome::Published { roles: BTreeMap::new(), snapshot_version, timestamp_version })
    }

    /// Every role: versions, expiry, keys and their availability, and what waits for signatures.
    pub fn status(&self) -> Result<Status, Error> {
        let mut draft = Draft::open(self, true)?;
        let mut names: Vec<String> = vec!["root".into(), "timestamp".into(), "snapshot".into()];
        let mut targets_roles: BTreeSet<String> = draft
            .published
            .snapshot
            .as_ref()
            .map(|s| s.signed().meta.keys().filter_map(|k| k.strip_suffix(".json")).map(str::to_owned).collect())
            .unwrap_or_default();
        targets_roles.extend(draft.targets.keys().cloned());
        targets_roles.remove("targets");
        names.push("targets".into());
        names.extend(targets_roles);
        let mut roles = Vec::new();
        for name in names {
            let sets = draft.keysets(&name)?;
            let Some(own) = sets.into_iter().next() else { continue };
            let keys = own.keyids.iter().map(|id| draft.keyring.describe(id, &draft.config.keys)).collect();
            let (version, expires, staged_version, targets) = match name.as_str() {
                "root" => {
                    let entry = draft.root_entry()?;
                    let staged = entry.pending.then(|| entry.signed().version);
                    (entry.published_version, Some(entry.signed().expires), staged, None)
                }
                "timestamp" | "snapshot" => {
                    let published = &draft.published;
                    let (version, expires) = if name == "timestamp" {
                        published.timestamp.as_ref().map(|m| (m.signed().version, m.signed().expires)).unzip()
                    } else {
                        published.snapshot.as_ref().map(|m| (m.signed().version, m.signed().expires)).unzip()
                    };
                    (version.unwrap_or(0), expires, None, None)
                }
                _ => {
                    let entry = draft.role(&name)?;
                    let staged = entry.pending.then(|| entry.signed().version);
                    let published_expiry = (!entry.pending).then(|| entry.signed().expires);
                    (entry.published_version, published_expiry, staged, Some(entry.signed().targets.len()))
                }
            };
            roles.push(RoleStatus {
                delegator: draft.delegator_of(&name)?,
                role: name,
                version,
                expires: expires.map(custody_tuf::format_expires),
                staged_version,
                threshold: own.threshold,
                keys,
                targets,
            });
        }
        let mut pending = Vec::new();
        for role in draft.pending_roles() {
            pending.extend(draft.tally(&role)?);
        }
        Ok(Status { roles, pending })
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn now(&self) -> jiff::Timestamp {
        self.now
    }
}

/// The published state a draft starts from.
#[derive(Debug, Default)]
struct Published {
    root: Option<Metadata<Root>>,
    timestamp: Option<Metadata<Timestamp>>,
    snapshot: Option<Metadata<Snapshot>>,
}

impl Published {
    fn load(layout: &Layout) -> Result<Self, Error> {
        let root_path = layout.root_copy();
        let root = read_metadata::<Root>(&root_path, "root")?;
        let timestamp_path = layout.timestamp();
        let timestamp = read_metadata::<Timestamp>(&timestamp_path, "timestamp")?;
        let version = timestamp.signed().snapshot_meta().version;
        let snapshot = read_metadata::<Snapshot>(&layout.versioned("snapshot", version), "snapshot")?;
        Ok(Self { root: Some(root), timestamp: Some(timestamp), snapshot: Some(snapshot) })
    }

    /// The published version of a targets role, 0 if snapshot does not list it.
    fn targets_version(&self, role: &str) -> u64 {
        self.snapshot.as_ref().and_then(|s| s.signed().meta.get(&format!("{role}.json"))).map_or(0, |m| m.version)
    }
}

/// One role's metadata in a draft.
#[derive(Debug)]
struct Entry<T> {
    /// The newest metadata: staged if some is waiting, else published. `None` only for a role created by this
    /// operation, before [`Draft::finish`] seals it.
    metadata: Option<Metadata<T>>,
    /// The published version, 0 if never published.
    published_version: u64,
    /// The `signed` object as this operation changed it.
    edited: Option<T>,
    /// Whether this entry is newer than what is published (changed, or staged by an earlier operation).
    pending: bool,
    /// Whether `staged/` must get this entry's metadata (changed or newly signed).
    dirty: bool,
}

impl<T: Signed + Clone> Entry<T> {
    fn published(metadata: Metadata<T>) -> Self {
        let published_version = metadata.signed().version();
        Self { metadata: Some(metadata), published_version, edited: None, pending: false, dirty: false }
    }

    fn staged(metadata: Metadata<T>, published_version: u64) -> Self {
        Self { metadata: Some(metadata), published_version, edited: None, pending: true, dirty: false }
    }

    fn created(signed: T) -> Self {
        Self { metadata: None, published_version: 0, edited: Some(signed), pending: true, dirty: true }
    }

    fn signed(&self) -> &T {
        match (&self.edited, &self.metadata) {
            (Some(edited), _) => edited,
            (None, Some(metadata)) => metadata.signed(),
            // Invariant: `created` is the only constructor without metadata, and it sets `edited`.
            (None, None) => unreachable!("an entry has metadata or an edited value"),
        }
    }

    /// The `signed` object to change; the entry gets a new version when the draft is finished.
    fn edit(&mut self) -> &mut T {
        self.pending = true;
        self.dirty = true;
        let current = &self.metadata;
        self.edited.get_or_insert_with(|| match current {
            Some(metadata) => metadata.signed().clone(),
            // Invariant: `created` is the only constructor without metadata, and it sets `edited`.
            None => unreachable!("an entry has metadata or an edited value"),
        })
    }
}

/// Sets the version and expiry of a `signed` object that is about to be signed.
trait Versioned {
    fn set_version(&mut self, version: u64, expires: jiff::Timestamp);
}

impl Versioned for Root {
    fn set_version(&mut self, version: u64, expires: jiff::Timestamp) {
        self.version = version;
        self.expires = expires;
    }
}

impl Versioned for Targets {
    fn set_version(&mut self, version: u64, expires: jiff::Timestamp) {
        self.version = version;
        self.expires = expires;
    }
}

/// The keys that must sign one role's metadata, and how many of them.
#[derive(Debug, Clone)]
struct KeySet {
    label: String,
    keys: BTreeMap<String, Key>,
    keyids: Vec<String>,
    threshold: u32,
}

impl KeySet {
    /// The key ids with a valid signature on `metadata`, and those without.
    fn tally<T>(&self, metadata: &Metadata<T>) -> (usize, Vec<String>) {
        let mut signed = 0;
        let mut missing = Vec::new();
        for keyid in &self.keyids {
            let valid = self.keys.get(keyid).is_some_and(|key| {
                metadata
                    .signatures()
                    .iter()
                    .find(|s| &s.keyid == keyid)
                    .is_some_and(|s| key.verify(metadata.canonical_signed(), &s.sig).unwrap_or(false))
            });
            if valid {
                signed += 1;
            } else {
                missing.push(keyid.clone());
            }
        }
        (signed, missing)
    }
}

/// The private keys of one operation: those given for the session, then the key files of `repo.toml`, read (and
/// decrypted) once each.
struct KeyRing<'r> {
    layout: &'r Layout,
    passphrase: &'r Passphrase,
    given: &'r BTreeMap<String, PrivateKey>,
    loaded: HashMap<String, Option<PrivateKey>>,
    /// Why a key in `loaded` is `None`.
    unavailable: HashMap<String, String>,
}

impl KeyRing<'_> {
    /// The private key of `keyid`, or `None` when it is out of reach (no file recorded, file absent, encrypted
    /// without a passphrase). A wrong passphrase, or a file that holds another key, is an error.
    fn key(&mut self, keyid: &str, files: &BTreeMap<String, PathBuf>) -> Result<Option<&PrivateKey>, Error> {
        if let Some(key) = self.given.get(keyid) {
            return Ok(Some(key));
        }
        if !self.loaded.contains_key(keyid) {
            let key = match files.get(keyid).map(|file| self.layout.resolve(file)) {
                None => {
                    self.unavailable.insert(keyid.into(), "no key file recorded in repo.toml".into());
                    None
                }
                Some(path) => match read_key_file(&path, self.passphrase) {
                    Ok(key) if key.key_id() == keyid => Some(key),
                    Ok(key) => {
                        return Err(Error::KeyFile {
                            path,
                            reason: format!("holds key {}, but repo.toml records it for key {keyid}", key.key_id()),
                        });
                    }
                    Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                        self.unavailable.insert(keyid.into(), format!("offline: {} is absent", path.display()));
                        None
                    }
                    Err(Error::PassphraseNeeded { .. }) => {
                        self.unavailable.insert(keyid.into(), "encrypted, and no passphrase was given".into());
                        None
                    }
                    Err(e) => return Err(e),
                },
            };
            self.loaded.insert(keyid.into(), key);
        }
        Ok(self.loaded.get(keyid).and_then(Option::as_ref))
    }

    /// Signs a sealed entry's metadata (see [`KeyRing::sign`]), marking it for `staged/` if it got a signature.
    fn sign_entry<T: Signed>(
        &mut self,
        role: &str,
        entry: &mut Entry<T>,
        sets: &[KeySet],
        files: &BTreeMap<String, PathBuf>,
    ) -> Result<Vec<MissingSignatures>, Error> {
        let metadata = entry.metadata.as_mut().ok_or_else(|| Error::Invalid(format!("{role} was not sealed")))?;
        let (changed, waiting) = self.sign(role, metadata, sets, files)?;
        entry.dirty |= changed;
        Ok(waiting)
    }

    /// Signs `metadata` with every key of `sets` that has not signed and is in reach; returns whether it signed,
    /// and the sets still below their threshold.
    fn sign<T: Signed>(
        &mut self,
        role: &str,
        metadata: &mut Metadata<T>,
        sets: &[KeySet],
        files: &BTreeMap<String, PathBuf>,
    ) -> Result<(bool, Vec<MissingSignatures>), Error> {
        let mut changed = false;
        for set in sets {
            let (_, missing) = set.tally(metadata);
            for keyid in missing {
                if !set.keys.contains_key(&keyid) {
                    continue;
                }
                if let Some(key) = self.key(&keyid, files)? {
                    metadata.sign(key)?;
                    changed = true;
                }
            }
        }
        let waiting = sets.iter().filter_map(|set| self.shortfall(role, metadata, set, files)).collect();
        Ok((changed, waiting))
    }

    /// The signatures `set` still lacks on `metadata`, if it is below its threshold.
    fn shortfall<T: Signed>(
        &self,
        role: &str,
        metadata: &Metadata<T>,
        set: &KeySet,
        files: &BTreeMap<String, PathBuf>,
    ) -> Option<MissingSignatures> {
        let (signed, missing) = set.tally(metadata);
        (signed < set.threshold as usize).then(|| MissingSignatures {
            role: role.into(),
            version: metadata.signed().version(),
            signers: set.label.clone(),
            signed,
            threshold: set.threshold,
            missing: missing.iter().map(|id| self.describe(id, files)).collect(),
        })
    }

    /// A key id with its file and what is known about its availability, without reading or decrypting it.
    fn describe(&self, keyid: &str, files: &BTreeMap<String, PathBuf>) -> SignatureKey {
        let file = files.get(keyid).cloned();
        let state = if self.given.contains_key(keyid) {
            "given".to_owned()
        } else if let Some(reason) = self.unavailable.get(keyid) {
            reason.clone()
        } else {
            match &file {
                None => "no key file recorded in repo.toml".to_owned(),
                Some(file) => match std::fs::read_to_string(self.layout.resolve(file)) {
                    Ok(text) if is_encrypted(&text) => "present, encrypted".to_owned(),
                    Ok(_) => "present".to_owned(),
                    Err(_) => format!("offline: {} is absent", file.display()),
                },
            }
        };
        SignatureKey { keyid: keyid.into(), file, state }
    }
}

/// An operation in progress: the roles it loaded and changed, new key files and target files already written (in
/// `tx`, undone if the operation fails), and the configuration it changed.
struct Draft<'r> {
    repo: &'r Repository,
    config: Config,
    config_changed: bool,
    keyring: KeyRing<'r>,
    published: Published,
    /// `None` only while `init` builds the first root.
    root: Option<Entry<Root>>,
    targets: HashMap<String, Entry<Targets>>,
    tx: Transaction,
    /// Staged files of versions that were published since; removed when this draft is finished.
    stale: Vec<PathBuf>,
}

/// Where a client's search for one target path goes.
#[derive(Debug)]
struct PathSearch {
    /// Every role the search visits, in order.
    visited: Vec<String>,
    /// The first visited role that lists the path.
    found: Option<String>,
    /// The first visited role that delegates the path no further: where a new target goes.
    leaf: String,
}

impl PathSearch {
    /// The role named `wanted` (or the bin of the group `wanted`) among the visited ones.
    fn resolve(&self, wanted: &str, config: &Config, path: &str) -> Result<String, Error> {
        let found = match config.bin_group(wanted) {
            Some(group) => self
                .visited
                .iter()
                .find(|v| config.delegation_of(v).is_some_and(|d| d.name == group.name && **v != group.name)),
            None => self.visited.iter().find(|v| *v == wanted),
        };
        found.cloned().ok_or_else(|| Error::NotDelegatedPath { role: wanted.into(), path: path.into() })
    }
}

impl<'r> Draft<'r> {
    fn new(repo: &'r Repository, published: Published) -> Self {
        Self {
            repo,
            config: repo.config.clone(),
            config_changed: false,
            keyring: KeyRing {
                layout: &repo.layout,
                passphrase: &repo.passphrase,
                given: &repo.given_keys,
                loaded: HashMap::new(),
                unavailable: HashMap::new(),
            },
            published,
            root: None,
            targets: HashMap::new(),
            tx: Transaction::new(),
            stale: Vec::new(),
        }
    }

    /// Starts from the published repository and, with `with_staged`, what waits in `staged/`.
    fn open(repo: &'r Repository, with_staged: bool) -> Result<Self, Error> {
        let published = Published::load(&repo.layout)?;
        let mut draft = Self::new(repo, published);
        let root = draft.published.root.clone().ok_or(Error::Invalid("no published root".into()))?;
        draft.root = Some(Entry::published(root));
        if !with_staged {
            return Ok(draft);
        }
        let staged_dir = repo.layout.staged_dir();
        let entries = match std::fs::read_dir(&staged_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(draft),
            Err(e) => return Err(Error::io(&staged_dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(Error::io(&staged_dir))?.path();
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let Some(encoded) = file_name.strip_suffix(".json").filter(|_| !file_name.starts_with('.')) else {
                continue;
            };
            let role = percent_encoding::percent_decode_str(encoded).decode_utf8_lossy().into_owned();
            if role == "root" {
                let metadata = read_metadata::<Root>(&path, "root")?;
                let published = draft.root_entry()?.published_version;
                if metadata.signed().version > published {
                    draft.root = Some(Entry::staged(metadata, published));
                } else {
                    draft.stale.push(path);
                }
            } else {
                let metadata = read_metadata::<Targets>(&path, &role)?;
                let published = draft.published.targets_version(&role);
                if metadata.signed().version > published {
                    draft.targets.insert(role, Entry::staged(metadata, published));
                } else {
                    draft.stale.push(path);
                }
            }
        }
        Ok(draft)
    }

    fn root_entry(&mut self) -> Result<&mut Entry<Root>, Error> {
        self.root.as_mut().ok_or(Error::Invalid("no root".into()))
    }

    /// A targets role: as this draft has it, else staged, else published.
    fn role(&mut self, name: &str) -> Result<&mut Entry<Targets>, Error> {
        if !self.targets.contains_key(name) {
            let version = self.published.targets_version(name);
            if version == 0 {
                return Err(Error::UnknownRole(name.into()));
            }
            let path = self.repo.layout.versioned(name, version);
            let entry = Entry::published(read_metadata::<Targets>(&path, name)?);
            self.targets.insert(name.to_owned(), entry);
        }
        self.targets.get_mut(name).ok_or_else(|| Error::UnknownRole(name.into()))
    }

    /// The role that delegates `role`: `root` for top-level roles.
    fn delegator_of(&self, role: &str) -> Result<String, Error> {
        if RoleType::is_top_level_name(role) {
            return Ok("root".into());
        }
        self.config.delegation_of(role).map(|d| d.delegator.clone()).ok_or_else(|| Error::UnknownRole(role.into()))
    }

    fn check_new_role_name(&mut self, name: &str) -> Result<(), Error> {
        if name.is_empty() || name.chars().any(char::is_control) || RoleType::is_top_level_name(name) {
            return Err(Error::Invalid(format!("{name:?} cannot name a delegated role")));
        }
        let exists = self.targets.contains_key(name)
            || self.published.targets_version(name) > 0
            || self.config.delegations.iter().any(|d| d.name == name)
            || self.config.delegation_of(name).is_some();
        if exists {
            return Err(Error::Invalid(format!("role {name:?} already exists")));
        }
        Ok(())
    }

    /// Adds a delegation (see [`Repository::delegate`]) to this draft.
    fn delegate(&mut self, options: &DelegateOptions) -> Result<(), Error> {
        options.keys.check(&options.name)?;
        let new_roles = match &options.kind {
            DelegationKind::Paths(paths) => {
                if paths.is_empty() {
                    return Err(Error::Invalid(format!("delegation {:?} has no path patterns", options.name)));
                }
                vec![(options.name.clone(), Some(paths.clone()), None)]
            }
            DelegationKind::Bins(count) => hash_bins(&options.name, *count)?
                .into_iter()
                .map(|(name, prefixes)| (name, None, Some(prefixes)))
                .collect(),
        };
        for (name, _, _) in &new_roles {
            self.check_new_role_name(name)?;
        }
        let delegator = self.role(&options.delegator)?.signed().clone();
        if delegator.delegations.as_ref().is_some_and(|d| d.succinct_roles.is_some()) {
            return Err(Error::Invalid(format!(
                "{} delegates with succinct_roles; it cannot list roles",
                options.delegator
            )));
        }
        let keys = self.new_keys(&options.name, &options.keys)?;
        let keyids: Vec<String> = keys.iter().map(|(id, _)| id.clone()).collect();
        let mut moved: BTreeMap<String, BTreeMap<String, TargetFile>> = BTreeMap::new();
        let mut delegated = Vec::new();
        for (name, paths, path_hash_prefixes) in new_roles {
            let role = DelegatedRole {
                name: name.clone(),
                keyids: keyids.clone(),
                threshold: options.keys.threshold,
                terminating: options.terminating,
                paths,
                path_hash_prefixes,
                unrecognized: BTreeMap::new(),
            };
            if options.move_targets {
                let covered = delegator.targets.iter().filter(|(path, _)| role_covers(&role, path, &path_sha256(path)));
                moved.insert(name.clone(), covered.map(|(p, f)| (p.clone(), f.clone())).collect());
            }
            delegated.push(role);
        }
        let edited = self.role(&options.delegator)?.edit();
        let delegations = edited.delegations.get_or_insert_with(|| Delegations {
            keys: BTreeMap::new(),
            roles: Some(Vec::new()),
            succinct_roles: None,
            unrecognized: BTreeMap::new(),
        });
        delegations.keys.extend(keys);
        delegations.roles.get_or_insert_with(Vec::new).extend(delegated.iter().cloned());
        for targets in moved.values() {
            for path in targets.keys() {
                edited.targets.remove(path);
            }
        }
        for role in &delegated {
            let mut targets = empty_targets(self.repo.now);
            targets.targets = moved.remove(&role.name).unwrap_or_default();
            self.targets.insert(role.name.clone(), Entry::created(targets));
        }
        let (paths, bins) = match &options.kind {
            DelegationKind::Paths(paths) => (Some(paths.clone()), None),
            DelegationKind::Bins(count) => (None, Some(*count)),
        };
        self.config.delegations.push(DelegationConfig {
            name: options.name.clone(),
            delegator: options.delegator.clone(),
            paths,
            bins,
            expiry: options.expiry,
        });
        self.config_changed = true;
        tracing::info!(name = %options.name, delegator = %options.delegator, roles = delegated.len(), "delegated");
        Ok(())
    }

    /// Generates the keys of `spec`, writes their files (recorded in `repo.toml` as belonging to `role`), and keeps
    /// them in reach for signing. Returns them as (key id, public key).
    fn new_keys(&mut self, role: &str, spec: &KeySpec) -> Result<Vec<(String, Key)>, Error> {
        let mut out = Vec::new();
        for _ in 0..spec.count {
            let key = PrivateKey::generate(spec.kind)?;
            let keyid = key.key_id();
            let file = Layout::new_key_file(role, &keyid);
            let bytes = key_file_bytes(&key, &self.repo.passphrase)?;
            self.tx.write(&self.repo.layout.resolve(&file), bytes.as_bytes(), 0o600)?;
            self.config.keys.insert(keyid.clone(), file);
            out.push((keyid.clone(), key.public().clone()));
            self.keyring.loaded.insert(keyid, Some(key));
        }
        self.config_changed = true;
        Ok(out)
    }

    /// Follows a client's search for `path` (pre-order, depth first, in listed order, stopping at a terminating
    /// delegation), loading roles as it goes.
    fn search(&mut self, path: &str) -> Result<PathSearch, Error> {
        let hash = path_sha256(path);
        let mut stack = vec!["targets".to_owned()];
        let mut seen = HashSet::new();
        let mut visited = Vec::new();
        let (mut found, mut leaf) = (None, None);
        while let Some(role) = stack.pop() {
            if !seen.insert(role.clone()) {
                continue;
            }
            let targets = self.role(&role)?.signed();
            if found.is_none() && targets.targets.contains_key(path) {
                found = Some(role.clone());
            }
            let mut children = Vec::new();
            if let Some(delegations) = &targets.delegations {
                if let Some(roles) = &delegations.roles {
                    for r in roles.iter().filter(|r| role_covers(r, path, &hash)) {
                        children.push(r.name.clone());
                        if r.terminating {
                            stack.clear();
                            break;
                        }
                    }
                } else {
                    children.extend(delegations.roles_for_target(path).into_iter().map(|(name, _)| name));
                }
            }
            if children.is_empty() && leaf.is_none() {
                leaf = Some(role.clone());
            }
            visited.push(role);
            stack.extend(children.into_iter().rev());
        }
        Ok(PathSearch { visited, found, leaf: leaf.unwrap_or_else(|| "targets".into()) })
    }

    /// Roles with metadata newer than published: changed now, or staged earlier.
    fn pending_roles(&self) -> Vec<String> {
        let mut roles: Vec<String> = self.root.iter().filter(|r| r.pending).map(|_| "root".to_owned()).collect();
        let mut targets: Vec<String> = self.targets.iter().filter(|(_, e)| e.pending).map(|(n, _)| n.clone()).collect();
        targets.sort();
        roles.extend(targets);
        roles
    }

    /// The key sets that must sign `role`: for root, its own keys and (for a new version) the published root's;
    /// for other top-level roles, root's; for a delegated role, its delegator's.
    fn keysets(&mut self, role: &str) -> Result<Vec<KeySet>, Error> {
        let root = self.root_entry()?.signed().clone();
        if RoleType::is_top_level_name(role) {
            let r = root.roles.get(role).ok_or_else(|| Error::UnknownRole(role.into()))?;
            let mut sets = vec![KeySet {
                label: role.into(),
                keys: root.keys.clone(),
                keyids: r.keyids.clone(),
                threshold: r.threshold,
            }];
            if let Some(previous) = self.published.root.as_ref().map(Metadata::signed)
                && role == "root"
                && previous.version < root.version
            {
                let old = previous.role(RoleType::Root);
                sets.push(KeySet {
                    label: format!("root version {}", previous.version),
                    keys: previous.keys.clone(),
                    keyids: old.keyids.clone(),
                    threshold: old.threshold,
                });
            }
            return Ok(sets);
        }
        let delegator = self.delegator_of(role)?;
        let parent = self.role(&delegator)?.signed();
        let delegations = parent.delegations.as_ref().ok_or_else(|| Error::UnknownRole(role.into()))?;
        let (keyids, threshold) = delegations.role_keys(role).ok_or_else(|| Error::UnknownRole(role.into()))?;
        let keys = keyids.iter().filter_map(|id| delegations.keys.get(id).map(|k| (id.clone(), k.clone()))).collect();
        Ok(vec![KeySet { label: role.into(), keys, keyids: keyids.to_vec(), threshold }])
    }

    /// What `role`'s pending metadata still lacks, without signing.
    fn tally(&mut self, role: &str) -> Result<Vec<MissingSignatures>, Error> {
        let sets = self.keysets(role)?;
        let files = &self.config.keys;
        let metadata_root;
        let waiting = if role == "root" {
            metadata_root = self.root.as_ref().and_then(|e| e.metadata.as_ref());
            metadata_root.map(|m| sets.iter().filter_map(|s| self.keyring.shortfall(role, m, s, files)).collect())
        } else {
            self.targets
                .get(role)
                .and_then(|e| e.metadata.as_ref())
                .map(|m| sets.iter().filter_map(|s| self.keyring.shortfall(role, m, s, files)).collect())
        };
        Ok(waiting.unwrap_or_default())
    }

    /// Gives every changed role its new version and expiry, signs every pending role with the keys in reach, and
    /// then publishes them all (with a new snapshot and timestamp) if every one meets its thresholds, or else
    /// stages them. Either way, `repo.toml` and the files written so far are kept; on error, everything is undone.
    fn finish(mut self) -> Result<(Outcome, Config), Error> {
        let now = self.repo.now;
        if let Some(entry) = self.root.as_mut()
            && let Some(mut root) = entry.edited.take()
        {
            root.set_version(entry.published_version + 1, self.config.expiry.root.after(now));
            entry.metadata = Some(Metadata::new(root)?);
        }
        for (name, entry) in &mut self.targets {
            if let Some(mut targets) = entry.edited.take() {
                targets.set_version(entry.published_version + 1, self.config.expiry_of(name).after(now));
                entry.metadata = Some(Metadata::new(targets)?);
            }
        }

        let pending = self.pending_roles();
        let mut waiting = Vec::new();
        for role in &pending {
            let sets = self.keysets(role)?;
            let files = &self.config.keys;
            let missing = if role == "root" {
                let entry = self.root.as_mut().ok_or(Error::Invalid("no root".into()))?;
                self.keyring.sign_entry(role, entry, &sets, files)?
            } else {
                let entry = self.targets.get_mut(role).ok_or_else(|| Error::UnknownRole(role.clone()))?;
                self.keyring.sign_entry(role, entry, &sets, files)?
            };
            waiting.extend(missing);
        }

        if !waiting.is_empty() {
            self.stage()?;
            for w in &waiting {
                tracing::info!(role = %w.role, signers = %w.signers, signed = w.signed, threshold = w.threshold,
                    "not published: below threshold");
            }
            self.tx.commit()?;
            return Ok((Outcome::Pending { waiting }, self.config));
        }

        let mut roles = BTreeMap::new();
        let mut snapshot_meta = self.published.snapshot.as_ref().map(|s| s.signed().meta.clone()).unwrap_or_default();
        if let Some(entry) = self.root.as_ref().filter(|e| e.pending) {
            let metadata = entry.metadata.as_ref().ok_or(Error::Invalid("unsealed root".into()))?;
            let version = metadata.signed().version;
            let bytes = metadata.to_bytes();
            self.tx.write(&self.repo.layout.versioned("root", version), &bytes, 0o644)?;
            self.tx.write(&self.repo.layout.root_copy(), &bytes, 0o644)?;
            roles.insert("root".to_owned(), version);
        }
        let mut names: Vec<&String> = self.targets.iter().filter(|(_, e)| e.pending).map(|(n, _)| n).collect();
        names.sort();
        for name in names {
            let entry = &self.targets[name];
            let metadata = entry.metadata.as_ref().ok_or(Error::Invalid("unsealed role".into()))?;
            let version = metadata.signed().version;
            let bytes = metadata.to_bytes();
            self.tx.write(&self.repo.layout.versioned(name, version), &bytes, 0o644)?;
            snapshot_meta.insert(format!("{name}.json"), MetaFile::describing(version, &bytes));
            roles.insert(name.clone(), version);
        }
        for role in &pending {
            let path = self.repo.layout.staged(role);
            self.tx.remove(&path)?;
        }
        let (snapshot_version, timestamp_version) = self.publish_online(Some(snapshot_meta))?;
        self.tx.commit()?;
        tracing::info!(?roles, snapshot_version, timestamp_version, "published");
        Ok((Outcome::Published { roles, snapshot_version, timestamp_version }, self.config))
    }

    /// Writes every changed pending role to `staged/`, and `repo.toml` if it changed.
    fn stage(&mut self) -> Result<(), Error> {
        let layout = &self.repo.layout;
        if let Some(entry) = self.root.as_ref().filter(|e| e.pending && e.dirty)
            && let Some(metadata) = &entry.metadata
        {
            self.tx.write(&layout.staged("root"), &metadata.to_bytes(), 0o644)?;
        }
        let mut dirty: Vec<(&String, &Entry<Targets>)> =
            self.targets.iter().filter(|(_, e)| e.pending && e.dirty).collect();
        dirty.sort_by_key(|(name, _)| *name);
        for (name, entry) in dirty {
            if let Some(metadata) = &entry.metadata {
                self.tx.write(&layout.staged(name), &metadata.to_bytes(), 0o644)?;
            }
        }
        if self.config_changed {
            self.tx.write(&layout.config(), self.config.to_toml()?.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    /// Writes a new snapshot over `snapshot_meta` (unless `None`: the published snapshot stays), its Merkle proofs,
    /// `repo.toml` if changed, removes stale staged files, and finally the new `timestamp.json`. Both are signed
    /// with the online keys, which must reach their thresholds. Returns the snapshot and timestamp versions.
    fn publish_online(&mut self, snapshot_meta: Option<BTreeMap<String, MetaFile>>) -> Result<(u64, u64), Error> {
        let now = self.repo.now;
        let layout = &self.repo.layout;
        let (snapshot_version, snapshot_bytes, meta) = match snapshot_meta {
            Some(meta) => {
                let version = self.published.snapshot.as_ref().map_or(0, |s| s.signed().version) + 1;
                let snapshot = Snapshot {
                    type_: "snapshot".into(),
                    spec_version: SPEC_VERSION.into(),
                    version,
                    expires: self.config.expiry.snapshot.after(now),
                    meta: meta.clone(),
                    unrecognized: BTreeMap::new(),
                };
                let metadata = self.sign_online(RoleType::Snapshot, snapshot)?;
                let bytes = metadata.to_bytes();
                self.tx.write(&layout.versioned("snapshot", version), &bytes, 0o644)?;
                let tree = SnapshotTree::build(version, &meta)?;
                for proof in tree.proofs() {
                    let path = layout.metadata_dir().join(proof_path(version, &proof.name));
                    let json = serde_json::to_vec(&proof).map_err(|e| Error::Invalid(format!("merkle proof: {e}")))?;
                    self.tx.write(&path, &json, 0o644)?;
                }
                (version, bytes, meta)
            }
            None => {
                let snapshot = self.published.snapshot.as_ref().ok_or(Error::Invalid("no snapshot".into()))?;
                let version = snapshot.signed().version;
                let path = layout.versioned("snapshot", version);
                (version, std::fs::read(&path).map_err(Error::io(&path))?, snapshot.signed().meta.clone())
            }
        };
        let commitment = SnapshotTree::build(snapshot_version, &meta)?.commitment();
        let timestamp = Timestamp {
            type_: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version: self.published.timestamp.as_ref().map_or(0, |t| t.signed().version) + 1,
            expires: self.config.expiry.timestamp.after(now),
            meta: BTreeMap::from([(
                "snapshot.json".to_owned(),
                MetaFile::describing(snapshot_version, &snapshot_bytes),
            )]),
            unrecognized: BTreeMap::from([(
                TIMESTAMP_FIELD.to_owned(),
                serde_json::to_value(&commitment).map_err(|e| Error::Invalid(format!("merkle commitment: {e}")))?,
            )]),
        };
        let timestamp_version = timestamp.version;
        let metadata = self.sign_online(RoleType::Timestamp, timestamp)?;
        if self.config_changed {
            self.tx.write(&layout.config(), self.config.to_toml()?.as_bytes(), 0o644)?;
        }
        for path in std::mem::take(&mut self.stale) {
            self.tx.remove(&path)?;
        }
        self.tx.write_last(&layout.timestamp(), &metadata.to_bytes(), 0o644)?;
        Ok((snapshot_version, timestamp_version))
    }

    /// Signs snapshot or timestamp metadata with the online keys that the draft's root names.
    fn sign_online<T: Signed>(&mut self, role: RoleType, signed: T) -> Result<Metadata<T>, Error> {
        let mut metadata = Metadata::new(signed)?;
        let sets = self.keysets(role.as_str())?;
        let (_, waiting) = self.keyring.sign(role.as_str(), &mut metadata, &sets, &self.config.keys)?;
        if let Some(w) = waiting.first() {
            let keys: Vec<String> =
                w.missing.iter().map(|k| format!("{} ({})", &k.keyid[..k.keyid.len().min(16)], k.state)).collect();
            return Err(Error::OnlineKeys {
                role: role.as_str().into(),
                reason: format!("{} of {} signatures; unavailable keys: {}", w.signed, w.threshold, keys.join(", ")),
            });
        }
        Ok(metadata)
    }
}

/// An empty targets role (version and expiry are set when the draft is finished).
fn empty_targets(now: jiff::Timestamp) -> Targets {
    Targets {
        type_: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version: 1,
        expires: now,
        targets: BTreeMap::new(),
        delegations: None,
        unrecognized: BTreeMap::new(),
    }
}

/// Reads and parses one metadata file (signatures unchecked: the repository's own files).
fn read_metadata<T: Signed>(path: &Path, role: &str) -> Result<Metadata<T>, Error> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    Metadata::from_bytes(&bytes, role).map_err(Error::metadata(path))
}

/// The hex SHA-256 of a target path, which `path_hash_prefixes` match.
fn path_sha256(path: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, path.as_bytes()))
}

/// Whether `role` covers `path` (whose hex SHA-256 is `hash`, computed once for all of a delegator's bins).
fn role_covers(role: &DelegatedRole, path: &str, hash: &str) -> bool {
    match &role.path_hash_prefixes {
        Some(prefixes) => prefixes.iter().any(|p| hash.starts_with(p.as_str())),
        None => role.is_delegated_path(path),
    }
}

/// The names and `path_hash_prefixes` of `count` hashed bins named `{name}-{first prefix}[-{last prefix}]`.
///
/// Prefixes have as many hex digits as `count - 1`; each bin takes an equal, contiguous range of them.
pub(crate) fn hash_bins(name: &str, count: u32) -> Result<Vec<(String, Vec<String>)>, Error> {
    if !(2..=65_536).contains(&count) || !count.is_power_of_two() {
        return Err(Error::Invalid(format!("{count} bins: the number of bins must be a power of two from 2 to 65536")));
    }
    let width = format!("{:x}", count - 1).len();
    let prefixes = 16u32.pow(width as u32);
    let per_bin = prefixes / count;
    Ok((0..count)
        .map(|bin| {
            let (first, last) = (bin * per_bin, bin * per_bin + per_bin - 1);
            let role = if per_bin == 1 {
                format!("{name}-{first:0width$x}")
            } else {
                format!("{name}-{first:0width$x}-{last:0width$x}")
            };
            (role, (first..=last).map(|p| format!("{p:0width$x}")).collect())
        })
        .collect())
}

/// Refuses target paths that could escape `targets/` or that clients treat inconsistently.
fn check_target_path(path: &str) -> Result<(), Error> {
    let reason = if path.is_empty() {
        Some("it is empty")
    } else if path.len() > 1024 {
        Some("it is longer than 1024 bytes")
    } else if path.starts_with('/') || path.ends_with('/') {
        Some("it starts or ends with '/'")
    } else if path.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        Some("it has an empty, '.' or '..' segment")
    } else if path.chars().any(|c| c.is_control() || c == '\\') {
        Some("it has a control character or a backslash")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::TargetPath { path: path.into(), reason }),
        None => Ok(()),
    }
}

/// A target's `custom` must be a JSON object; its `custody` key, if any, a catalog entry describing this file.
fn check_custom(path: &str, file: &TargetFile) -> Result<(), Error> {
    let Some(custom) = &file.custom else { return Ok(()) };
    if !custom.is_object() {
        return Err(Error::Invalid(format!("target {path:?}: custom metadata must be a JSON object")));
    }
    if custom.get(custody_catalog::NAMESPACE).is_none() {
        return Ok(());
    }
    let entry = UpdateEntry::parse(custom).map_err(|source| Error::Catalog { path: path.into(), source })?;
    let content = entry.content();
    if content.length.get() != file.length || Some(content.sha256.to_string().as_str()) != file.sha256() {
        return Err(Error::Invalid(format!(
            "target {path:?}: custom.custody.content (length {}, sha256 {}) does not describe this file (length {}, \
             sha256 {})",
            content.length,
            content.sha256,
            file.length,
            file.sha256().unwrap_or_default()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use custody_tuf::PrivateKeyKind;

    use super::*;
    use crate::Severity;

    fn options() -> InitOptions {
        let one = KeySpec::single(PrivateKeyKind::Ed25519);
        InitOptions { root: one, targets: one, snapshot: one, timestamp: one, expiry: ExpiryConfig::default() }
    }

    fn target(path: &str, content: &str) -> AddTarget {
        AddTarget { path: path.into(), content: content.as_bytes().to_vec(), custom: None }
    }

    /// Every file under `dir` with its contents.
    fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    out.insert(path.clone(), std::fs::read(&path).unwrap());
                }
            }
        }
        out
    }

    fn assert_verifies(repo: &Repository) -> crate::Report {
        let report = repo.verify();
        assert_eq!(report.errors(), 0, "{:#?}", report.problems);
        report
    }

    fn published(outcome: &Outcome) -> &BTreeMap<String, u64> {
        match outcome {
            Outcome::Published { roles, .. } => roles,
            Outcome::Pending { waiting } => panic!("not published: {waiting:#?}"),
        }
    }

    #[test]
    fn init_publishes_version_one_and_writes_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, outcome) = Repository::init(dir.path(), &options(), Passphrase::none()).unwrap();
        assert_eq!(published(&outcome), &BTreeMap::from([("root".into(), 1), ("targets".into(), 1)]));
        for name in ["1.root.json", "root.json", "1.targets.json", "1.snapshot.json", "timestamp.json"] {
            assert!(dir.path().join("metadata").join(name).exists(), "{name}");
        }
        assert_eq!(repo.config().keys.len(), 4);
        for file in repo.config().keys.values() {
            let mode = std::fs::metadata(dir.path().join(file)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
        let report = assert_verifies(&repo);
        assert_eq!(report.warnings(), 0, "{:#?}", report.problems);
        assert!(matches!(Repository::init(dir.path(), &options(), Passphrase::none()), Err(Error::AlreadyExists(_))));
    }

    #[test]
    fn add_publishes_targets_under_consistent_names_and_remove_delists() {
        let dir = tempfile::tempdir().unwrap();
        let (mut repo, _) = Repository::init(dir.path(), &options(), Passphrase::none()).unwrap();
        let outcome = repo.add_targets([target("fw/a.bin", "aaa"), target("b.txt", "bbb")], None).unwrap();
        assert_eq!(published(&outcome), &BTreeMap::from([("targets".into(), 2)]));
        let sha256 = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"aaa"));
        assert_eq!(std::fs::read(dir.path().join(format!("targets/fw/{sha256}.a.bin"))).unwrap(), b"aaa");
        assert_eq!(assert_verifies(&repo).targets_checked, 2);

        repo.remove_targets(&["fw/a.bin".into()]).unwrap();
        assert_eq!(assert_verifies(&repo).targets_checked, 1);
        assert!(matches!(repo.remove_targets(&["fw/a.bin".into()]), Err(Error::UnknownTarget(_))));
        assert!(matches!(repo.add_targets([target("../x", "x")], None), Err(Error::TargetPath { .. })));
    }

    #[test]
    fn custom_must_be_a_catalog_entry_for_this_file_when_it_claims_to_be_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut repo, _) = Repository::init(dir.path(), &options(), Passphrase::none()).unwrap();
        let mut t = target("a", "aaa");
        t.custom = Some(serde_json::json!({"vendor": {"anything": 1}}));
        repo.add_targets([t.clone()], None).unwrap();
        t.custom = Some(serde_json::json!({"custody": {"schema": 1}}));
        assert!(matches!(repo.add_targets([t.clone()], None), Err(Error::Catalog { .. })));
        t.custom = Some(serde_json::json!([1]));
        assert!(matches!(repo.add_targets([t], None), Err(Error::Invalid(_))));
    }

    #[test]
    fn hashed_bins_are_chosen_automatically_and_only_touched_bins_change() {
        let dir = tempfile::tempdir().unwrap();
        let (mut repo, _) = Repository::init(dir.path(), &options(), Passphrase::none()).unwrap();
        let bins = DelegateOptions {
            name: "bins".into(),
            delegator: "targets".into(),
            kind: DelegationKind::Bins(16),
            terminating: true,
            keys: KeySpec::single(PrivateKeyKind::Ed25519),
            expiry: None,
            move_targets: false,
        };
        let outcome = repo.delegate(&bins).unwrap();
        assert_eq!(published(&outcome).len(), 17);
        let outcome = repo.add_targets((0..40).map(|i| target(&format!("pkg/{i}"), &format!("{i}"))), None).unwrap();
        let touched = published(&outcome);
        assert!(touched.keys().all(|r| r.starts_with("bins-")), "{touched:?}");
        assert!(touched.len() < 17 && touched.values().all(|v| *v == 2));
        let one = repo.add_targets([target("pkg/0", "changed")], Some("bins")).unwrap();
        assert_eq!(published(&one).len(), 1);
        let report = assert_verifies(&repo);
        assert_eq!((report.targets_checked, report.roles_verified), (40, 17));
        assert!(matches!(repo.add_targets([target("x", "x")], Some("nope")), Err(Error::NotDelegatedPath { .. })));
    }

    #[test]
    fn delegation_by_paths_can_take_over_existing_targets() {
        let dir = tempfile::tempdir().unwrap();
        let (mut repo, _) = Repository::init(dir.path(), &options(), Passphrase::none()).unwrap();
        repo.add_targets([target("acme/fw.bin", "fw"), target("other.bin", "o")], None).unwrap();
        let acme = DelegateOptions {
            name: "acme".into(),
            delegator: "targets".into(),
            kind: DelegationKind::Paths(vec!["acme/*".into()]),
            terminating: true,
            keys: KeySpec { count: 3, threshold: 2, kind: PrivateKeyKind::EcdsaP256 },
            expiry: None,
            move_targets: true,
        };
        repo.delegate(&acme).unwrap();
        let status = repo.status().unwrap();
        let role = status.roles.iter().find(|r| r.role == "acme").unwrap();
        assert_eq!((role.targets, role.threshold, role.keys.len()), (Some(1), 2, 3));
        assert_eq!(status.roles.iter().find(|r| r.role == "targets").unwrap().targets, Some(1));
        repo.add_targets([target("acme/new.bin", "n")], None).unwrap();
        assert_eq!(repo.status().unwrap().roles.iter().find(|r| r.role == "acme").unwrap().targets, Some(2));
        assert!(matches!(repo.delegate(&acme), Err(Error::Invalid(_))));
        assert_verifies(&repo);
    }

    #[test]
    fn product_delegation_takes_over_its_targets_and_splits_into_bins() {
        let dir = tempfile::tempdir().unwrap();
        let (mut repo, _) = Repository::init(dir.path(), &options(), Passphrase::none()).unwrap();
        let files = (0..6).map(|i| target(&format!("acme/{i}.bin"), &format!("{i}")));
        repo.add_targets(files.chain([target("other/x.bin", "x")]), None).unwrap();
        let one = KeySpec::single(PrivateKeyKind::Ed25519);
        published(&repo.delegate_product("acme", None, &one).unwrap());
        let count = |repo: &Repository, role: &str| {
            repo.status().unwrap().roles.iter().find(|r| r.role == role).and_then(|r| r.targets).unwrap()
        };
        assert_eq!((count(&repo, "acme"), count(&repo, "targets")), (6, 1));
        assert!(matches!(repo.delegate_product("acme", None, &one), Err(Error::Invalid(_))));

        let outcome = repo.delegate_product("acme", Some(4), &one).unwrap();
        assert_eq!(published(&outcome).len(), 5, "acme and its four bins");
        assert_eq!(count(&repo, "acme"), 0);
        repo.add_targets([target("acme/new.bin", "new")], None).unwrap();
        let in_bins: usize = repo
            .status()
            .unwrap()
            .roles
            .iter()
            .filter(|r| r.role.starts_with("acme-bins-"))
            .map(|r| r.targets.unwrap())
            .sum();
        assert_eq!(in_bins, 7);
        assert_eq!(assert_verifies(&repo).targets_checked, 8);
        assert!(matches!(repo.delegate_product("a/b", None, &one), Err(Error::Invalid(_))));
    }

    #[test]
    fn below_threshold_is_staged_not_published_until_signed() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options();
        opts.targets = KeySpec { count: 2, threshold: 2, kind: PrivateKeyKind::Ed25519 };
        let (mut repo, _) = Repository::init(dir.path(), &opts, Passphrase::none()).unwrap();
        // Take one targets key offline.
        let root = read_metadata::<Root>(&dir.path().join("metadata/root.json"), "root").unwrap();
        let offline_id = root.signed().roles["targets"].keyids[1].clone();
        let key_file = dir.path().join(&repo.config().keys[&offline_id]);
        let offline = dir.path().join("offline.pem");
        std::fs::rename(&key_file, &offline).unwrap();
        let before = std::fs::read(dir.path().join("metadata/timestamp.json")).unwrap();

        let outcome = repo.add_targets([target("a", "a")], None).unwrap();
        let Outcome::Pending { waiting } = outcome else { panic!("published below threshold") };
        assert_eq!(waiting.len(), 1);
        assert_eq!((waiting[0].role.as_str(), waiting[0].signed, waiting[0].threshold), ("targets", 1, 2));
        assert_eq!(waiting[0].missing[0].keyid, offline_id);
        assert!(waiting[0].missing[0].state.starts_with("offline"), "{:?}", waiting[0].missing[0]);
        assert_eq!(std::fs::read(dir.path().join("metadata/timestamp.json")).unwrap(), before);
        assert!(!dir.path().join("metadata/2.targets.json").exists());
        assert!(dir.path().join("staged/targets.json").exists());
        let report = assert_verifies(&repo);
        assert!(report.problems.iter().any(|p| p.severity == Severity::Warning && p.subject == "targets"));

        // A second change joins the staged version; then the offline key signs and everything is published.
        assert!(matches!(repo.add_targets([target("b", "b")], None).unwrap(), Outcome::Pending { .. }));
        let mut repo = Repository::open(dir.path(), Passphrase::none()).unwrap();
        let wrong = PrivateKey::generate(PrivateKeyKind::Ed25519).unwrap();
        repo.add_signing_keys([wrong]);
        assert!(matches!(repo.sign(), Err(Error::Invalid(_))));
        let mut repo = Repository::open(dir.path(), Passphrase::none()).unwrap();
        repo.add_signing_keys([read_key_file(&offline, &Passphrase::none()).unwrap()]);
        let outcome = repo.sign().unwrap();
        assert_eq!(published(&outcome), &BTreeMap::from([("targets".into(), 2)]));
        assert!(!dir.path().join("staged/targets.json").exists());
        assert_eq!(assert_verifies(&repo).targets_checked, 2);
        assert!(matches!(repo.sign(), Err(Error::Invalid(_))));
    }

    #[test]
    fn root_rotation_is_signed_by_old_and_new_keys_and_verifies_through_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (mut repo, _) = Repository::init(dir.path(), &options(), Passphrase::none()).unwrap();
        let old_root = std::fs::read(dir.path().join("metadata/1.root.json")).unwrap();
        let old_ids =
            read_metadata::<Root>(&dir.path().join("metadata/1.root.json"), "root").unwrap().signed().roles["root"]
                .keyids
                .clone();
        let spec = KeySpec { count: 3, threshold: 2, kind: PrivateKeyKind::EcdsaP256 };
        let outcome = repo.rotate("root", &spec).unwrap();
        assert_eq!(published(&outcome), &BTreeMap::from([("root".into(), 2)]));
        let new_root_bytes = std::fs::read(dir.path().join("metadata/2.root.json")).unwrap();
        let new_root = Metadata::<Root>::from_bytes(&new_root_bytes, "root").unwrap();
        assert_eq!(new_root.signed().roles["root"].keyids.len(), 3);
        assert!(new_root.signatures().iter().any(|s| s.keyid == old_ids[0]));
        let mut trusted = custody_tuf::TrustedSet::new(&old_root, repo.now()).unwrap();
        trusted.update_root(&new_root_bytes).unwrap();
        assert_eq!(assert_verifies(&repo).root_version, 2);

        // Rotating again with the version-2 root keys offline: the new root waits for them.
        for id in &new_root.signed().roles["root"].keyids {
            std::fs::remove_file(dir.path().join(&repo.config().keys[id])).unwrap();
        }
        let outcome = repo.rotate("root", &KeySpec::single(PrivateKeyKind::Ed25519)).unwrap();
        let Outcome::Pending { waiting } = outcome else { panic!("published without the old root keys") };
        assert_eq!(waiting.len(), 1);
        assert_eq!((waiting[0].signers.as_str(), waiting[0].signed, waiting[0].threshold), ("root version 2", 0, 2));
        assert!(!dir.path().join("metadata/3.root.json").exists());
    }

    #[test]
    fn rotating_online_targets_and_bin_keys_publishes_with_the_new_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (mut repo, _) = Repository::init(dir.path(), &options(), Passphrase::none()).unwrap();
        repo.delegate(&DelegateOptions {
            name: "bins".into(),
            delegator: "targets".into(),
            kind: DelegationKind::Bins(4),
            terminating: false,
            keys: KeySpec::single(PrivateKeyKind::Ed25519),
            expiry: None,
            move_targets: false,
        })
        .unwrap();
        repo.add_targets([target("a", "a")], None).unwrap();
        for role in ["timestamp", "snapshot", "targets", "bins"] {
            let outcome = repo.rotate(role, &KeySpec::single(PrivateKeyKind::EcdsaP256)).unwrap();
            assert!(!published(&outcome).is_empty(), "{role}");
            assert_verifies(&repo);
        }
        let root = read_metadata::<Root>(&dir.path().join("metadata/root.json"), "root").unwrap();
        assert_eq!(root.signed().version, 4);
        assert_eq!(root.signed().keys.len(), 4, "keys no role uses any more are dropped");
        assert!(matches!(repo.rotate("nope", &KeySpec::single(PrivateKeyKind::Ed25519)), Err(Error::UnknownRole(_))));
    }

    #[test]
    fn failed_operation_leaves_the_repository_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut repo, _) = Repository::init(dir.path(), &options(), Passphrase::none()).unwrap();
        repo.add_targets([target("a", "a")], None).unwrap();
        let root = read_metadata::<Root>(&dir.path().join("metadata/root.json"), "root").unwrap();
        let snapshot_id = &root.signed().roles["snapshot"].keyids[0];
        std::fs::remove_file(dir.path().join(&repo.config().keys[snapshot_id])).unwrap();
        let before = tree(dir.path());

        let err = repo.add_targets([target("b", "new content"), target("c/d", "more")], None).unwrap_err();
        assert!(matches!(err, Error::OnlineKeys { .. }), "{err}");
        let err = repo
            .delegate(&DelegateOptions {
                name: "bins".into(),
                delegator: "targets".into(),
                kind: DelegationKind::Bins(4),
                terminating: false,
                keys: KeySpec::single(PrivateKeyKind::Ed25519),
                expiry: None,
                move_targets: false,
            })
            .unwrap_err();
        assert!(matches!(err, Error::OnlineKeys { .. }), "{err}");
        assert!(repo.refresh(false).is_err());
        assert_eq!(tree(dir.path()), before);
    }

    #[test]
    fn encrypted_keys_sign_only_with_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let (_, outcome) = Repository::init(dir.path(), &options(), Passphrase::given("s3cret".into())).unwrap();
        published(&outcome);
        let mut locked = Repository::open(dir.path(), Passphrase::none()).unwrap();
        // Without the passphrase no key signs: targets waits, and the online roles cannot be signed at all.
        assert!(matches!(locked.add_targets([target("a", "a")], None), Ok(Outcome::Pending { .. })));
        assert!(matches!(locked.refresh(false), Err(Error::OnlineKeys { .. })));
        let mut wrong = Repository::open(dir.path(), Passphrase::given("guess".into())).unwrap();
        assert!(matches!(wrong.refresh(false), Err(Error::WrongPassphrase { .. })));
        let mut repo = Repository::open(dir.path(), Passphrase::given("s3cret".into())).unwrap();
        published(&repo.add_targets([target("a", "a")], None).unwrap());
        assert_verifies(&repo);
    }

    #[test]
    fn refresh_bumps_only_snapshot_and_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let (mut repo, _) = Repository::init(dir.path(), &options(), Passphrase::none()).unwrap();
        let outcome = repo.refresh(false).unwrap();
        assert_eq!(outcome, Outcome::Published { roles: BTreeMap::new(), snapshot_version: 2, timestamp_version: 2 });
        let outcome = repo.refresh(true).unwrap();
        assert_eq!(outcome, Outcome::Published { roles: BTreeMap::new(), snapshot_version: 2, timestamp_version: 3 });
        assert_verifies(&repo);
    }

    #[test]
    fn hash_bins_cover_every_prefix_once() {
        for count in [2, 16, 32, 256, 4096] {
            let bins = hash_bins("b", count).unwrap();
            assert_eq!(bins.len(), count as usize);
            let all: Vec<&String> = bins.iter().flat_map(|(_, p)| p).collect();
            let width = all[0].len();
            assert_eq!(all.len(), 16usize.pow(width as u32));
            assert!(all.windows(2).all(|w| w[0] < w[1]));
        }
        assert_eq!(hash_bins("b", 32).unwrap()[1].0, "b-08-0f");
        assert_eq!(hash_bins("b", 256).unwrap()[255].0, "b-ff");
        assert!(hash_bins("b", 3).is_err() && hash_bins("b", 1).is_err());
    }
}

#[cfg(test)]
mod bulk_tests {
    use custody_tuf::PrivateKeyKind;

    use super::*;

    /// A catalog of `CUSTODY_BULK_TARGETS` targets (default 5,000; `CUSTODY_BULK_TARGETS=100000` for the benchmark size) in 256 hashed bins
    /// is built with one bulk add, which signs each bin once; then one more target changes one bin only.
    #[test]
    fn bulk_catalog_in_256_bins() {
        let count: usize = std::env::var("CUSTODY_BULK_TARGETS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
        let dir = tempfile::tempdir().unwrap();
        let one = KeySpec::single(PrivateKeyKind::Ed25519);
        let options =
            InitOptions { root: one, targets: one, snapshot: one, timestamp: one, expiry: ExpiryConfig::default() };
        let started = std::time::Instant::now();
        let (mut repo, _) = Repository::init(dir.path(), &options, Passphrase::none()).unwrap();
        let initialised = started.elapsed();
        repo.delegate(&DelegateOptions {
            name: "bins".into(),
            delegator: "targets".into(),
            kind: DelegationKind::Bins(256),
            terminating: true,
            keys: one,
            expiry: None,
            move_targets: false,
        })
        .unwrap();
        let delegated = started.elapsed() - initialised;
        let started = std::time::Instant::now();
        let targets = (0..count).map(|i| AddTarget {
            path: format!("product-{}/update-{i}.bin", i % 50),
            content: format!("update {i}").into_bytes(),
            custom: None,
        });
        let Outcome::Published { roles, .. } = repo.add_targets(targets, None).unwrap() else { panic!("pending") };
        let added = started.elapsed();
        assert_eq!(roles.len(), 256);
        assert!(roles.values().all(|v| *v == 2));
        let started = std::time::Instant::now();
        let Outcome::Published { roles, .. } = repo
            .add_targets([AddTarget { path: "one/more.bin".into(), content: b"x".to_vec(), custom: None }], None)
            .unwrap()
        else {
            panic!("pending")
        };
        let one_more = started.elapsed();
        assert_eq!(roles.len(), 1);
        let started = std::time::Instant::now();
        let report = repo.verify();
        let verified = started.elapsed();
        assert_eq!(report.errors(), 0, "{:?}", &report.problems[..report.problems.len().min(5)]);
        assert_eq!(report.targets_checked, count + 1);
        eprintln!(
            "init {initialised:?}, 256 bins {delegated:?}; {count} targets: bulk add {added:?}, one more {one_more:?}, verify {verified:?}"
        );
        let started = std::time::Instant::now();
        drop(repo);
        drop(dir);
        eprintln!("cleanup {:?}", started.elapsed());
    }
}
