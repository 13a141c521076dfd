//! The update cycle: root chain, timestamp, snapshot, top-level targets, then delegated roles on demand.

use std::path::{Path, PathBuf};

use custody_tuf::snapshot_merkle::proof_url_path;
use custody_tuf::{
    ListingStep, RoleLimits, SearchStep, TargetListing, TargetSearch, TrustedSet, TrustedTarget, VerifiedContent,
};
use tracing::{debug, info};

use crate::store::write_atomic;
use crate::{Error, Fetcher, MetadataDir, encode_role};

/// Where an [`Updater`] reads and writes.
#[derive(Debug, Clone)]
pub struct UpdaterConfig {
    /// The local metadata directory (must hold a trusted `root.json`).
    pub metadata_dir: PathBuf,
    /// Base URL of the repository's metadata; a trailing `/` is added if missing.
    pub metadata_url: String,
    pub limits: RoleLimits,
    /// When the timestamp commits to a snapshot Merkle tree, prove the version of each targets role needed instead of
    /// downloading the whole snapshot (see `custody_tuf::snapshot_merkle`). Falls back to the full snapshot for
    /// repositories that publish no tree.
    pub snapshot_proofs: bool,
}

/// A TUF client for one repository.
#[derive(Debug)]
pub struct Updater<F> {
    fetcher: F,
    store: MetadataDir,
    metadata_url: String,
    limits: RoleLimits,
    snapshot_proofs: bool,
    trusted: TrustedSet,
    refreshed: bool,
}

impl<F: Fetcher> Updater<F> {
    /// Loads the trusted root from the metadata directory. `now` is the update start time for every expiry check.
    pub fn new(config: UpdaterConfig, fetcher: F, now: jiff::Timestamp) -> Result<Self, Error> {
        let store = MetadataDir::new(&config.metadata_dir);
        let root = store.load("root")?.ok_or_else(|| Error::NoTrustedRoot(config.metadata_dir.clone()))?;
        let trusted = TrustedSet::new(&root, now)?;
        let mut metadata_url = config.metadata_url;
        if !metadata_url.ends_with('/') {
            metadata_url.push('/');
        }
        Ok(Self {
            fetcher,
            store,
            metadata_url,
            limits: config.limits,
            snapshot_proofs: config.snapshot_proofs,
            trusted,
            refreshed: false,
        })
    }

    pub fn trusted(&self) -> &TrustedSet {
        &self.trusted
    }

    /// Runs the top-level update cycle once. A failure leaves what was already persisted valid for the next cycle.
    ///
    /// What the cycle persisted is durable when it returns, whether it succeeded or not (see [`MetadataDir`]).
    pub async fn refresh(&mut self) -> Result<(), Error> {
        let cycle = async {
            self.load_root().await?;
            self.load_timestamp().await?;
            self.load_snapshot().await?;
            self.load_targets("targets", "root").await?;
            self.refreshed = true;
            Ok(())
        }
        .await;
        self.store.sync();
        cycle
    }

    /// Follows the chain of new root versions, each signed by the previous root and by itself.
    async fn load_root(&mut self) -> Result<(), Error> {
        let first = self.trusted.root().version + 1;
        for version in first..first + self.limits.max_root_rotations {
            let url = format!("{}{version}.root.json", self.metadata_url);
            let Some(bytes) = self.fetcher.fetch(&url, self.limits.root_max_length).await? else {
                break;
            };
            self.trusted.update_root(&bytes)?;
            self.store.persist("root", &bytes)?;
            // Durable before anything signed with the new root's keys can be: files from one cycle may reach the disk
            // in any order until the cycle's sync, and a timestamp or snapshot without the root that signed it would
            // be no rollback floor at all after a power cut.
            self.store.sync();
            info!(version, "trusted a new root");
        }
        Ok(())
    }

    async fn load_timestamp(&mut self) -> Result<(), Error> {
        if let Some(local) = self.store.load("timestamp")? {
            // A local timestamp that no longer verifies (keys rotated, expired) is only not used as final.
            match self.trusted.update_timestamp(&local) {
                Ok(()) if self.snapshot_proofs => self.load_local_proofs()?,
                Ok(()) => {}
                Err(e) => debug!("local timestamp is not valid as final: {e}"),
            }
        }
        let url = format!("{}timestamp.json", self.metadata_url);
        let bytes = self
            .fetcher
            .fetch(&url, self.limits.timestamp_max_length)
            .await?
            .ok_or_else(|| Error::Missing("timestamp.json".into()))?;
        match self.trusted.update_timestamp(&bytes) {
            Ok(()) => self.store.persist("timestamp", &bytes),
            Err(custody_tuf::Error::EqualTimestampVersion(version)) => {
                debug!(version, "timestamp unchanged");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Proofs stored by earlier cycles: those made for the local timestamp are current for it, and set the floor
    /// below which no newer proof may go.
    fn load_local_proofs(&mut self) -> Result<(), Error> {
        for (name, bytes) in self.store.load_proofs()? {
            if let Err(e) = self.trusted.update_snapshot_proof(&bytes) {
                debug!(name, "stored snapshot proof is not current: {e}");
            }
        }
        Ok(())
    }

    fn uses_proofs(&self) -> bool {
        self.snapshot_proofs && self.trusted.snapshot_commitment().is_some()
    }

    async fn load_snapshot(&mut self) -> Result<(), Error> {
        if self.uses_proofs() {
            debug!("timestamp commits to a snapshot tree: proving targets roles one by one");
            return Ok(());
        }
        if let Some(local) = self.store.load("snapshot")? {
            match self.trusted.update_snapshot(&local, true) {
                Ok(()) => {
                    debug!("local snapshot is current");
                    return Ok(());
                }
                Err(e) => debug!("local snapshot is not valid as final: {e}"),
            }
        }
        // Invariant: `load_timestamp` succeeded, so a timestamp is trusted.
        let meta = self.trusted.timestamp().expect("timestamp is loaded").snapshot_meta().clone();
        let length = meta.length.unwrap_or(self.limits.snapshot_max_length);
        let url = self.role_url("snapshot", meta.version);
        let bytes = self.fetcher.fetch(&url, length).await?.ok_or_else(|| Error::Missing(url.clone()))?;
        self.trusted.update_snapshot(&bytes, false)?;
        self.store.persist("snapshot", &bytes)
    }

    /// Loads `role` as delegated by `delegator`: the local copy if it is still the one snapshot names, else a
    /// download.
    async fn load_targets(&mut self, role: &str, delegator: &str) -> Result<(), Error> {
        if self.trusted.is_trusted_via(role, delegator)? {
            return Ok(());
        }
        let file = format!("{role}.json");
        if self.trusted.snapshot_entry(&file).is_none() && self.uses_proofs() {
            self.load_proof(&file).await?;
        }
        if let Some(local) = self.store.load(role)? {
            match self.trusted.update_delegated_targets(&local, role, delegator) {
                Ok(_) => return Ok(()),
                Err(e) => debug!(role, "local copy is not valid: {e}"),
            }
        }
        let meta = self.trusted.snapshot_entry(&file).ok_or_else(|| custody_tuf::Error::NotInSnapshot(file.clone()))?;
        let length = meta.length.unwrap_or(self.limits.targets_max_length);
        let url = self.role_url(role, meta.version);
        let bytes = self.fetcher.fetch(&url, length).await?.ok_or_else(|| Error::Missing(url.clone()))?;
        self.trusted.update_delegated_targets(&bytes, role, delegator)?;
        self.store.persist(role, &bytes)
    }

    /// Downloads, checks and stores the snapshot proof of `file`.
    async fn load_proof(&mut self, file: &str) -> Result<(), Error> {
        // Invariant: `uses_proofs` held, which needs a trusted timestamp.
        let version = self.trusted.timestamp().expect("timestamp is loaded").snapshot_meta().version;
        let url = format!("{}{}", self.metadata_url, proof_url_path(version, file));
        let bytes = self
            .fetcher
            .fetch(&url, self.limits.snapshot_proof_max_length)
            .await?
            .ok_or_else(|| Error::Missing(url.clone()))?;
        self.trusted.update_snapshot_proof(&bytes)?;
        self.store.persist_proof(file, &bytes)
    }

    fn role_url(&self, role: &str, version: u64) -> String {
        if self.trusted.root().consistent_snapshot() {
            format!("{}{version}.{}.json", self.metadata_url, encode_role(role))
        } else {
            format!("{}{}.json", self.metadata_url, encode_role(role))
        }
    }

    /// Finds the signed description of `path`, refreshing first if this updater has not yet.
    pub async fn target_info(&mut self, path: &str) -> Result<TrustedTarget, Error> {
        if !self.refreshed {
            self.refresh().await?;
        }
        let mut search = TargetSearch::new(path, self.limits.max_delegations);
        let found = async {
            loop {
                match search.step(&mut self.trusted)? {
                    SearchStep::Load { role, delegator } => self.load_targets(&role, &delegator).await?,
                    SearchStep::Found(target) => return Ok(target),
                    SearchStep::NotFound => return Err(Error::TargetNotFound(path.to_owned())),
                    SearchStep::TooManyRoles(limit) => {
                        return Err(Error::TooManyRoles { path: path.to_owned(), limit });
                    }
                }
            }
        }
        .await;
        // The roles the search loaded, durable (see `MetadataDir`).
        self.store.sync();
        found
    }

    /// Every target under the catalog directory `dir` (a product), loading only the roles that can hold it.
    pub async fn list_targets(&mut self, dir: &str) -> Result<Vec<TrustedTarget>, Error> {
        if !self.refreshed {
            self.refresh().await?;
        }
        let mut listing = TargetListing::new(dir, self.limits.max_listing_roles);
        let listed = async {
            loop {
                match listing.step(&mut self.trusted)? {
                    ListingStep::Load { role, delegator } => self.load_targets(&role, &delegator).await?,
                    ListingStep::Done(targets) => return Ok(targets),
                    ListingStep::TooManyRoles(limit) => {
                        return Err(Error::TooManyRoles { path: format!("{dir}/"), limit });
                    }
                }
            }
        }
        .await;
        // The roles the listing loaded, durable (see `MetadataDir`).
        self.store.sync();
        listed
    }

    /// Downloads `target` from `base_url` (consistent-snapshot name `dir/HASH.name` when the root asks for it), at
    /// most its signed length, and verifies it.
    pub async fn download_target(&self, target: &TrustedTarget, base_url: &str) -> Result<VerifiedContent, Error> {
        let base = base_url.trim_end_matches('/');
        let name = match (self.trusted.root().consistent_snapshot(), target.consistent_paths().first()) {
            (true, Some(hashed)) => hashed.clone(),
            _ => target.path().to_owned(),
        };
        let url = format!("{base}/{name}");
        let bytes = self.fetcher.fetch(&url, target.file().length).await?.ok_or_else(|| Error::Missing(url.clone()))?;
        Ok(target.verify(bytes)?)
    }

    /// Returns the target from `dir` if it is already there and matches, else downloads it and stores it there
    /// (under its percent-encoded path).
    pub async fn fetch_target_into(
        &self,
        target: &TrustedTarget,
        base_url: &str,
        dir: &Path,
    ) -> Result<PathBuf, Error> {
        let path = dir.join(encode_role(target.path()));
        match std::fs::read(&path) {
            Ok(existing) if target.matches(&existing) => {
                debug!(target = target.path(), "already downloaded");
                return Ok(path);
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Io { action: "read", path, source }),
        }
        let content = self.download_target(target, base_url).await?;
        write_atomic(&path, content.data())?;
        Ok(path)
    }
}
