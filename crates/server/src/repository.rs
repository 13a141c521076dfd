//! The service's side of the repository: checking and publishing targets-role metadata signed by publishers,
//! re-signing snapshot and timestamp before they expire, and the catalog of published updates.
//!
//! The service holds only the online keys (snapshot, timestamp). Publishers send a targets role's next version
//! signed with the role's keys; [`RepoService::publish`] checks it against the delegation tree of the published
//! repository with custody-tuf, checks that the content of every new or changed target is stored, and then either
//! hands it to custody-repo's staged workflow (which publishes the role, a new snapshot and a new timestamp), or, when
//! it is below the role's threshold, keeps it in `pending/` until more signatures arrive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use custody_api::admin::{PublishResponse, RoleState, StagedRole, UpdateSummary};
use custody_catalog::UpdateEntry;
use custody_repo::{Outcome, Passphrase, Repository, encode_role_name};
use custody_tuf::{Key, Metadata, Snapshot, TargetFile, Targets, Timestamp as TufTimestamp, TrustedSet};
use jiff::Timestamp;
use serde_json::Value;

use crate::content::ContentStore;
use crate::error::ApiError;

/// The repository as the service runs it.
pub struct RepoService {
    dir: PathBuf,
    pending: PathBuf,
    content: Arc<dyn ContentStore>,
    /// Serialises every change: publishes and refreshes.
    lock: tokio::sync::Mutex<()>,
    refresh_at: f64,
    check_interval: Duration,
    catalog: RwLock<Option<Arc<Catalog>>>,
    next_refresh: RwLock<Option<Timestamp>>,
}

/// The published updates: every target whose `custom` holds a valid catalog entry (the highest revision of each id).
#[derive(Debug)]
pub struct Catalog {
    pub snapshot_version: u64,
    pub updates: Vec<CatalogUpdate>,
}

#[derive(Debug)]
pub struct CatalogUpdate {
    pub summary: UpdateSummary,
    pub entry: UpdateEntry,
    /// `custom.custody` as published.
    pub json: Value,
}

/// The keys that sign a role, as its delegator lists them.
struct RoleKeys {
    keys: BTreeMap<String, Key>,
    keyids: Vec<String>,
    threshold: u32,
}

/// A role's metadata that passed every check but the threshold.
struct Checked {
    role: String,
    metadata: Metadata<Targets>,
    signers: RoleKeys,
    added: Vec<String>,
    changed: Vec<String>,
    removed: Vec<String>,
    /// Targets whose content must be in the store.
    to_store: Vec<(String, TargetFile)>,
}

impl RepoService {
    pub fn new(
        dir: PathBuf,
        pending: PathBuf,
        content: Arc<dyn ContentStore>,
        refresh_at: f64,
        check_interval: Duration,
    ) -> Self {
        Self {
            dir,
            pending,
            content,
            lock: tokio::sync::Mutex::new(()),
            refresh_at,
            check_interval,
            catalog: RwLock::new(None),
            next_refresh: RwLock::new(None),
        }
    }

    fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// Checks `bytes` (a targets-role envelope) and publishes it, or keeps it waiting for signatures.
    pub async fn publish(self: &Arc<Self>, role: &str, bytes: Vec<u8>) -> Result<PublishResponse, ApiError> {
        let _guard = self.lock.lock().await;
        let this = self.clone();
        let role_name = role.to_owned();
        let checked = blocking(move || this.check(&role_name, &bytes, Timestamp::now())).await??;
        for (path, file) in &checked.to_store {
            self.check_content(path, file).await?;
        }
        let this = self.clone();
        let response = blocking(move || this.sign_or_wait(checked)).await??;
        let result = match &response {
            PublishResponse::Published { .. } => "published",
            PublishResponse::Pending(_) => "pending",
        };
        metrics::counter!("custody_publishes_total", "result" => result).increment(1);
        Ok(response)
    }

    /// Every check of a publish that needs no content store: see docs/api.md, "Publishing an update".
    fn check(&self, role: &str, bytes: &[u8], now: Timestamp) -> Result<Checked, ApiError> {
        let trusted = self.load_role(role, now)?;
        let current = trusted
            .targets(role)
            .ok_or_else(|| ApiError::internal(format!("role {role} was loaded but is not trusted")))?;
        let metadata = Metadata::<Targets>::from_bytes(bytes, role)
            .map_err(|err| ApiError::rejected(format!("metadata of {role}: {err}")))?;
        let new = metadata.signed();
        let expected = current.version + 1;
        if new.version != expected {
            metrics::counter!("custody_publishes_total", "result" => "conflict").increment(1);
            return Err(ApiError::conflict(format!(
                "{role} is at version {} now, so the next version is {expected}, not {}; fetch the current \
                 metadata and sign again (custody publish does)",
                current.version, new.version
            )));
        }
        if new.expires <= now {
            return Err(reject(format!("{role} version {} expired at {}", new.version, new.expires)));
        }
        if new.delegations != current.delegations {
            return Err(reject(format!(
                "{role} version {} changes the role's delegations; delegations are not changed by publishing",
                new.version
            )));
        }
        let signers = role_keys(&trusted, role)?;
        for signature in metadata.signatures() {
            let valid = signers.keyids.contains(&signature.keyid)
                && signers
                    .keys
                    .get(&signature.keyid)
                    .is_some_and(|key| key.verify(metadata.canonical_signed(), &signature.sig).unwrap_or(false));
            if !valid {
                return Err(reject(format!(
                    "the signature by key {} is not a valid signature of a key of role {role}",
                    signature.keyid
                )));
            }
        }
        let delegator_roles = delegator_of(&trusted, role);
        let (mut added, mut changed, mut to_store) = (Vec::new(), Vec::new(), Vec::new());
        for (path, file) in &new.targets {
            match current.targets.get(path) {
                Some(old) if old == file => continue,
                Some(_) => changed.push(path.clone()),
                None => added.push(path.clone()),
            }
            if let Some(delegations) = &delegator_roles
                && !delegations.roles_for_target(path).iter().any(|(name, _)| name == role)
            {
                return Err(reject(format!("target {path:?} is not delegated to role {role}")));
            }
            if file.sha256().is_none() {
                return Err(reject(format!("target {path:?} lists no sha256 hash")));
            }
            check_catalog_entry(path, file)?;
            to_store.push((path.clone(), file.clone()));
        }
        let removed = current.targets.keys().filter(|p| !new.targets.contains_key(*p)).cloned().collect();
        Ok(Checked { role: role.to_owned(), metadata, signers, added, changed, removed, to_store })
    }

    /// The content of a new or changed target must be stored with the signed length and hashes.
    async fn check_content(&self, path: &str, file: &TargetFile) -> Result<(), ApiError> {
        let sha256_hex = file.sha256().unwrap_or_default();
        let Some(crate::content::ContentId::Sha256(sha256)) = crate::content::ContentId::from_hex(sha256_hex) else {
            return Err(reject(format!("target {path:?}: sha256 {sha256_hex:?} is not 64 lower-case hex digits")));
        };
        let stored = self
            .content
            .hashes(sha256)
            .await
            .map_err(|err| ApiError::internal(format!("content store: {err}")))?
            .ok_or_else(|| {
                reject(format!(
                    "target {path:?}: no content with sha256 {sha256_hex} is stored; upload it first \
                     (PUT /admin/v1/content/sha256/{sha256_hex})"
                ))
            })?;
        if stored.length != file.length {
            return Err(reject(format!(
                "target {path:?}: the stored content is {} bytes, the metadata says {}",
                stored.length, file.length
            )));
        }
        if let Some(sha512) = file.hashes.get("sha512")
            && *sha512 != hex::encode(stored.sha512)
        {
            return Err(reject(format!("target {path:?}: the stored content has another sha512 than the metadata")));
        }
        crate::pieces::publish_layer(self.content.as_ref(), path, file).await
    }

    /// Publishes when the threshold is met (merging the signatures of a waiting copy of the same `signed` object),
    /// else keeps the metadata waiting.
    fn sign_or_wait(&self, mut checked: Checked) -> Result<PublishResponse, ApiError> {
        let pending_path = self.pending.join(format!("{}.json", encode_role_name(&checked.role)));
        let mut valid = count_valid(&checked);
        if valid < checked.signers.threshold
            && let Ok(bytes) = std::fs::read(&pending_path)
            && let Ok(waiting) = Metadata::<Targets>::from_bytes(&bytes, &checked.role)
            && waiting.canonical_signed() == checked.metadata.canonical_signed()
        {
            for signature in waiting.signatures() {
                if !checked.metadata.signatures().iter().any(|s| s.keyid == signature.keyid) {
                    checked.metadata.add_signature(signature.clone());
                }
            }
            valid = count_valid(&checked);
        }
        let version = checked.metadata.signed().version;
        if valid < checked.signers.threshold {
            crate::datadir::write_file(&pending_path, &checked.metadata.to_bytes(), 0o644)
                .map_err(|err| ApiError::internal(err.to_string()))?;
            tracing::info!(role = %checked.role, version, valid, threshold = checked.signers.threshold, "waiting for signatures");
            return Ok(PublishResponse::Pending(staged_role(&checked, valid)));
        }
        let staged = self.dir.join("staged").join(format!("{}.json", encode_role_name(&checked.role)));
        crate::datadir::write_file(&staged, &checked.metadata.to_bytes(), 0o644)
            .map_err(|err| ApiError::internal(err.to_string()))?;
        let outcome = Repository::open(&self.dir, Passphrase::none()).and_then(|mut repo| repo.sign());
        let (snapshot_version, timestamp_version) = match outcome {
            Ok(Outcome::Published { snapshot_version, timestamp_version, .. }) => (snapshot_version, timestamp_version),
            Ok(Outcome::Pending { waiting }) => {
                let _ = std::fs::remove_file(&staged);
                return Err(ApiError::internal(format!("the repository still waits for signatures: {waiting:?}")));
            }
            Err(err) => {
                let _ = std::fs::remove_file(&staged);
                return Err(ApiError::internal(format!("publishing {}: {err}", checked.role)));
            }
        };
        let _ = std::fs::remove_file(&pending_path);
        *self.catalog.write().unwrap_or_else(PoisonError::into_inner) = None;
        self.record_timestamp_expiry();
        tracing::info!(role = %checked.role, version, snapshot_version, timestamp_version,
            added = checked.added.len(), changed = checked.changed.len(), removed = checked.removed.len(), "published");
        Ok(PublishResponse::Published {
            role: checked.role,
            version,
            snapshot_version,
            timestamp_version,
            added: checked.added,
            changed: checked.changed,
            removed: checked.removed,
        })
    }

    /// Loads the published repository as a client would, down to `role` (through the delegators `repo.toml`
    /// records), checking signatures, versions, hashes and expiry.
    fn load_role(&self, role: &str, now: Timestamp) -> Result<TrustedSet, ApiError> {
        let repo = Repository::open(&self.dir, Passphrase::none()).map_err(|e| ApiError::internal(e.to_string()))?;
        let mut chain = vec![role.to_owned()];
        while let Some(last) = chain.last()
            && last != "targets"
        {
            let delegator = repo
                .config()
                .delegation_of(last)
                .map(|d| d.delegator.clone())
                .ok_or_else(|| ApiError::not_found(format!("the repository has no targets role {role:?}")))?;
            if chain.len() > 64 || chain.contains(&delegator) {
                return Err(ApiError::internal(format!("the delegation chain of {role} does not end at targets")));
            }
            chain.push(delegator);
        }
        let trusted = self.load_top_level(now)?;
        let mut trusted = trusted;
        let mut delegator = "root".to_owned();
        for name in chain.iter().rev() {
            let bytes = self.read_role(&trusted, name)?;
            trusted
                .update_delegated_targets(&bytes, name, &delegator)
                .map_err(|err| ApiError::internal(format!("published metadata of {name} does not verify: {err}")))?;
            delegator = name.clone();
        }
        Ok(trusted)
    }

    /// Root, timestamp and snapshot as published, verified.
    fn load_top_level(&self, now: Timestamp) -> Result<TrustedSet, ApiError> {
        let dir = self.metadata_dir();
        let read =
            |name: &str| std::fs::read(dir.join(name)).map_err(|err| ApiError::internal(format!("{name}: {err}")));
        let broken = |what: &str, err: custody_tuf::Error| {
            ApiError::internal(format!("the published {what} does not verify: {err}"))
        };
        let mut trusted = TrustedSet::new(&read("root.json")?, now).map_err(|e| broken("root", e))?;
        trusted.update_timestamp(&read("timestamp.json")?).map_err(|e| broken("timestamp", e))?;
        let version = trusted.timestamp().map(|t| t.snapshot_meta().version).unwrap_or_default();
        trusted
            .update_snapshot(&read(&format!("{version}.snapshot.json"))?, false)
            .map_err(|e| broken("snapshot", e))?;
        Ok(trusted)
    }

    fn read_role(&self, trusted: &TrustedSet, role: &str) -> Result<Vec<u8>, ApiError> {
        let version = trusted
            .snapshot_entry(&format!("{role}.json"))
            .map(|meta| meta.version)
            .ok_or_else(|| ApiError::not_found(format!("the published snapshot lists no role {role:?}")))?;
        let path = self.metadata_dir().join(format!("{version}.{}.json", encode_role_name(role)));
        std::fs::read(&path).map_err(|err| ApiError::internal(format!("{}: {err}", path.display())))
    }

    /// Roles waiting for signatures.
    pub async fn staged(self: &Arc<Self>) -> Result<Vec<StagedRole>, ApiError> {
        let this = self.clone();
        blocking(move || {
            let mut staged = Vec::new();
            for (role, bytes) in this.pending_files()? {
                match this.check(&role, &bytes, Timestamp::now()) {
                    Ok(checked) => {
                        let valid = count_valid(&checked);
                        staged.push(staged_role(&checked, valid));
                    }
                    Err(err) => tracing::debug!(role, "pending metadata no longer applies: {}", err.body().message),
                }
            }
            Ok(staged)
        })
        .await?
    }

    /// The waiting metadata of `role`, to co-sign.
    pub async fn staged_role(&self, role: &str) -> Result<Vec<u8>, ApiError> {
        let path = self.pending.join(format!("{}.json", encode_role_name(role)));
        tokio::fs::read(&path).await.map_err(|_| ApiError::not_found(format!("no metadata of {role:?} is waiting")))
    }

    fn pending_files(&self) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
        let entries = match std::fs::read_dir(&self.pending) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(ApiError::internal(format!("{}: {err}", self.pending.display()))),
        };
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(encoded) = name.strip_suffix(".json").filter(|_| !name.starts_with('.')) else { continue };
            let role = percent_encoding::percent_decode_str(encoded).decode_utf8_lossy().into_owned();
            if let Ok(bytes) = std::fs::read(entry.path()) {
                files.push((role, bytes));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Re-signs snapshot and timestamp if one is due, and returns when to check next.
    pub async fn refresh_if_due(self: &Arc<Self>) -> Result<Timestamp, crate::Error> {
        let _guard = self.lock.lock().await;
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || this.refresh_blocking(Timestamp::now()))
            .await
            .map_err(|err| crate::Error::Other(format!("refresh task: {err}")))?;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        match &result {
            Ok((true, _)) | Err(_) => {
                metrics::counter!("custody_metadata_refreshes_total", "result" => outcome).increment(1)
            }
            Ok((false, _)) => {}
        }
        let next = result?.1;
        *self.next_refresh.write().unwrap_or_else(PoisonError::into_inner) = Some(next);
        Ok(next)
    }

    /// Returns whether it re-signed, and the time of the next check.
    fn refresh_blocking(&self, now: Timestamp) -> Result<(bool, Timestamp), crate::Error> {
        let mut repo = Repository::open(&self.dir, Passphrase::none())?;
        let periods = repo.config().expiry.clone();
        let (timestamp_due, snapshot_due) = self.due_times(&periods)?;
        let refreshed = if now >= snapshot_due {
            repo.refresh(false)?;
            true
        } else if now >= timestamp_due {
            repo.refresh(true)?;
            true
        } else {
            false
        };
        if refreshed {
            tracing::info!(snapshot = now >= snapshot_due, "re-signed timestamp with the online keys");
            *self.catalog.write().unwrap_or_else(PoisonError::into_inner) = None;
        }
        self.record_timestamp_expiry();
        let (timestamp_due, snapshot_due) = self.due_times(&periods)?;
        let latest = now + jiff::SignedDuration::try_from(self.check_interval).unwrap_or(jiff::SignedDuration::ZERO);
        let earliest = now + jiff::SignedDuration::from_secs(1);
        Ok((refreshed, timestamp_due.min(snapshot_due).min(latest).max(earliest)))
    }

    /// When timestamp and snapshot are due for re-signing: after `refresh_at` of their validity period.
    fn due_times(&self, periods: &custody_repo::ExpiryConfig) -> Result<(Timestamp, Timestamp), crate::Error> {
        let (timestamp, snapshot) = self.read_published()?;
        let due = |expires: Timestamp, period: custody_repo::Expiry| {
            let early = (period.seconds() as f64 * (1.0 - self.refresh_at)) as i64;
            expires - jiff::SignedDuration::from_secs(early)
        };
        Ok((due(timestamp.signed().expires, periods.timestamp), due(snapshot.signed().expires, periods.snapshot)))
    }

    fn read_published(&self) -> Result<(Metadata<TufTimestamp>, Metadata<Snapshot>), crate::Error> {
        let dir = self.metadata_dir();
        let path = dir.join("timestamp.json");
        let bytes = std::fs::read(&path).map_err(crate::Error::io(&path))?;
        let timestamp = Metadata::<TufTimestamp>::from_bytes(&bytes, "timestamp")?;
        let path = dir.join(format!("{}.snapshot.json", timestamp.signed().snapshot_meta().version));
        let bytes = std::fs::read(&path).map_err(crate::Error::io(&path))?;
        Ok((timestamp, Metadata::<Snapshot>::from_bytes(&bytes, "snapshot")?))
    }

    fn record_timestamp_expiry(&self) {
        if let Ok((timestamp, _)) = self.read_published() {
            metrics::gauge!("custody_timestamp_expires_seconds").set(timestamp.signed().expires.as_second() as f64);
        }
    }

    /// Versions and expiry of every published role.
    pub async fn status(self: &Arc<Self>) -> Result<(Vec<RoleState>, Option<Timestamp>), ApiError> {
        let this = self.clone();
        let roles = blocking(move || {
            let (timestamp, snapshot) = this.read_published().map_err(|e| ApiError::internal(e.to_string()))?;
            let dir = this.metadata_dir();
            let root_bytes = std::fs::read(dir.join("root.json")).map_err(|e| ApiError::internal(e.to_string()))?;
            let root = Metadata::<custody_tuf::Root>::from_bytes(&root_bytes, "root")
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let mut roles = vec![
                RoleState { role: "root".into(), version: root.signed().version, expires: root.signed().expires },
                RoleState {
                    role: "timestamp".into(),
                    version: timestamp.signed().version,
                    expires: timestamp.signed().expires,
                },
                RoleState {
                    role: "snapshot".into(),
                    version: snapshot.signed().version,
                    expires: snapshot.signed().expires,
                },
            ];
            for (file, meta) in &snapshot.signed().meta {
                let Some(role) = file.strip_suffix(".json") else { continue };
                let path = dir.join(format!("{}.{}.json", meta.version, encode_role_name(role)));
                let expires = std::fs::read(&path)
                    .ok()
                    .and_then(|bytes| Metadata::<Targets>::from_bytes(&bytes, role).ok())
                    .map(|m| m.signed().expires);
                if let Some(expires) = expires {
                    roles.push(RoleState { role: role.to_owned(), version: meta.version, expires });
                }
            }
            Ok::<_, ApiError>(roles)
        })
        .await??;
        Ok((roles, *self.next_refresh.read().unwrap_or_else(PoisonError::into_inner)))
    }

    /// The published catalog, cached until the snapshot changes.
    pub async fn catalog(self: &Arc<Self>) -> Result<Arc<Catalog>, ApiError> {
        let this = self.clone();
        blocking(move || {
            let (timestamp, snapshot) = this.read_published().map_err(|e| ApiError::internal(e.to_string()))?;
            let version = timestamp.signed().snapshot_meta().version;
            if let Some(cached) = this.catalog.read().unwrap_or_else(PoisonError::into_inner).as_ref()
                && cached.snapshot_version == version
            {
                return Ok(cached.clone());
            }
            let catalog = Arc::new(load_catalog(&this.metadata_dir(), version, &snapshot));
            *this.catalog.write().unwrap_or_else(PoisonError::into_inner) = Some(catalog.clone());
            Ok(catalog)
        })
        .await?
    }
}

/// Reads every targets role the snapshot lists and collects the catalog entries.
fn load_catalog(dir: &Path, snapshot_version: u64, snapshot: &Metadata<Snapshot>) -> Catalog {
    let mut by_id: BTreeMap<custody_catalog::UpdateId, CatalogUpdate> = BTreeMap::new();
    for (file, meta) in &snapshot.signed().meta {
        let Some(role) = file.strip_suffix(".json") else { continue };
        let path = dir.join(format!("{}.{}.json", meta.version, encode_role_name(role)));
        let Ok(metadata) = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| Metadata::<Targets>::from_bytes(&bytes, role).map_err(|e| e.to_string()))
        else {
            tracing::warn!(path = %path.display(), "cannot read a published role for the catalog");
            continue;
        };
        for (target, file) in &metadata.signed().targets {
            let Some(custom) = file.custom.as_ref().filter(|c| c.get(custody_catalog::NAMESPACE).is_some()) else {
                continue;
            };
            let entry = match UpdateEntry::parse(custom) {
                Ok(entry) => entry,
                Err(err) => {
                    tracing::warn!(target, "published catalog entry does not parse: {err}");
                    continue;
                }
            };
            let summary = UpdateSummary {
                id: entry.id(),
                revision: entry.revision(),
                title: entry.title().to_owned(),
                product: entry.product().to_string(),
                version: entry.version().to_string(),
                kind: entry.kind().as_str().to_owned(),
                classification: entry.classification().as_str().to_owned(),
                severity: entry.severity().map(|s| s.as_str().to_owned()),
                release_date: entry.release_date().to_string(),
                path: target.clone(),
                role: role.to_owned(),
                length: file.length,
                sha256: file.sha256().unwrap_or_default().to_owned(),
            };
            let json = custom.get(custody_catalog::NAMESPACE).cloned().unwrap_or_default();
            let update = CatalogUpdate { summary, entry, json };
            match by_id.get(&update.entry.id()) {
                Some(existing) if existing.entry.revision() >= update.entry.revision() => {}
                _ => {
                    by_id.insert(update.entry.id(), update);
                }
            }
        }
    }
    let mut updates: Vec<CatalogUpdate> = by_id.into_values().collect();
    updates.sort_by(|a, b| {
        (&a.summary.product, &a.summary.release_date, &a.summary.title).cmp(&(
            &b.summary.product,
            &b.summary.release_date,
            &b.summary.title,
        ))
    });
    Catalog { snapshot_version, updates }
}

/// The keys, key ids and threshold that must sign `role`, as its (trusted) delegator lists them.
fn role_keys(trusted: &TrustedSet, role: &str) -> Result<RoleKeys, ApiError> {
    if role == "targets" {
        let root = trusted.root();
        let entry = root.role(custody_tuf::RoleType::Targets);
        return Ok(RoleKeys { keys: root.keys.clone(), keyids: entry.keyids.clone(), threshold: entry.threshold });
    }
    let delegations =
        delegator_of(trusted, role).ok_or_else(|| ApiError::internal(format!("no loaded role delegates {role}")))?;
    let (keyids, threshold) =
        delegations.role_keys(role).ok_or_else(|| ApiError::internal(format!("no loaded role delegates {role}")))?;
    Ok(RoleKeys { keys: delegations.keys.clone(), keyids: keyids.to_vec(), threshold })
}

/// The delegations (of a loaded role) that name `role`; `None` for the top-level targets role.
fn delegator_of<'a>(trusted: &'a TrustedSet, role: &str) -> Option<&'a custody_tuf::Delegations> {
    if role == "targets" {
        return None;
    }
    let mut names: Vec<&str> = vec!["targets"];
    let mut seen = std::collections::HashSet::new();
    while let Some(name) = names.pop() {
        if !seen.insert(name.to_owned()) {
            continue;
        }
        let Some(targets) = trusted.targets(name) else { continue };
        let Some(delegations) = &targets.delegations else { continue };
        if delegations.role_keys(role).is_some() {
            return Some(delegations);
        }
        names.extend(delegations.roles.iter().flatten().map(|r| r.name.as_str()));
    }
    None
}

/// A `custom.custody` entry must be valid and describe the target's length and SHA-256.
fn check_catalog_entry(path: &str, file: &TargetFile) -> Result<(), ApiError> {
    let Some(custom) = &file.custom else { return Ok(()) };
    if custom.get(custody_catalog::NAMESPACE).is_none() {
        return Ok(());
    }
    let entry = UpdateEntry::parse(custom).map_err(|err| reject(format!("target {path:?}: {err}")))?;
    let content = entry.content();
    if content.length.get() != file.length || Some(content.sha256.to_string().as_str()) != file.sha256() {
        return Err(reject(format!("target {path:?}: custom.custody.content does not describe the target's bytes")));
    }
    Ok(())
}

fn count_valid(checked: &Checked) -> u32 {
    let metadata = &checked.metadata;
    let mut valid = 0;
    for keyid in &checked.signers.keyids {
        let signed = metadata.signatures().iter().find(|s| &s.keyid == keyid).is_some_and(|s| {
            checked
                .signers
                .keys
                .get(keyid)
                .is_some_and(|key| key.verify(metadata.canonical_signed(), &s.sig).unwrap_or(false))
        });
        valid += u32::from(signed);
    }
    valid
}

fn staged_role(checked: &Checked, valid: u32) -> StagedRole {
    let signed: Vec<&String> = checked.metadata.signatures().iter().map(|s| &s.keyid).collect();
    StagedRole {
        role: checked.role.clone(),
        version: checked.metadata.signed().version,
        signatures: valid,
        threshold: checked.signers.threshold,
        missing_keyids: checked.signers.keyids.iter().filter(|id| !signed.contains(id)).cloned().collect(),
    }
}

fn reject(message: String) -> ApiError {
    metrics::counter!("custody_publishes_total", "result" => "rejected").increment(1);
    tracing::warn!(%message, "publish rejected");
    ApiError::rejected(message)
}

/// Runs file-bound work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|err| ApiError::internal(format!("worker: {err}")))
}
