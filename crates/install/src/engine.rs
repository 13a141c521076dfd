//! The install engine: takes [`VerifiedArtifact`]s and nothing else, and installs them so that a crash or power
//! cut at any point leaves either the old or the new version complete (docs/packages.md).
//!
//! Every product lives in its own root under the state directory:
//!
//! ```text
//! <state>/lock                              flock(2): one installer at a time
//! <state>/journal.json                      the operation in progress (write-ahead, fsynced)
//! <state>/products/<product>/current        -> versions/<version>   (swapped atomically)
//! <state>/products/<product>/versions/<version>/...
//! <state>/products/<product>/records/<version>.json   what was installed: the signed target and entry
//! <state>/products/<product>/staging/<version>/       extraction in progress
//! <state>/products/<product>/history.jsonl            installs, failed health checks, rollbacks, removals
//! <state>/os/slot-a, slot-b                 OS images; slot-a.json, slot-b.json describe them
//! <state>/os/active                         -> slot-a | slot-b      (swapped atomically)
//! <state>/os/pending.json                   the new image waiting for its boot to be confirmed
//! ```
//!
//! What runs, and with which arguments, comes only from the signed catalog entry inside the artifact: the handler,
//! the destination, the post-install and reload commands, the number of definition sets to keep.

mod command;
mod journal;

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use custody_catalog::{
    AbsPath, ArchiveFormat, Argv, ImageFormat, Kind, ProductName, Reboot, SlotLayout, UpdateEntry, UpdateId,
};
use serde::{Deserialize, Serialize};

use crate::{Error, VerifiedArtifact, fs, package};
use journal::{Journal, Phase};

/// Settings of the engine that are the device's, not the publisher's.
#[derive(Clone, Debug)]
pub struct Options {
    /// Previous versions kept for rollback (`app`, `store-app`, `driver`); `definitions` use the signed `keep`.
    pub keep_versions: u32,
    /// How long a health check (post-install or reload command) may run before it is killed and counted failed.
    pub health_check_timeout: Duration,
    /// The size of an OS slot: a (decompressed) image larger than this is refused.
    pub os_slot_size: u64,
    /// Boots of a new OS image without confirmation before it is given up and the previous slot is made active
    /// again (the boot counter).
    pub os_boot_attempts: u32,
    /// The device's own check of a new OS after it booted (catalog schema 1 signs none for OS images), run like a
    /// signed health check; without it, the agent starting on the new OS is the check.
    pub os_health_check: Option<Argv>,
    /// The running kernel's boot id (`/proc/sys/kernel/random/boot_id`): a new one means the device rebooted since
    /// an OS image was written. `None` when unknown: no reboot is ever seen, so nothing is confirmed.
    pub boot_id: Option<String>,
}

impl Default for Options {
    /// Two kept versions, 300 s health checks, 64 GiB slots, three boots to confirm an OS image, and the running
    /// kernel's boot id.
    fn default() -> Self {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|id| id.trim().to_owned());
        Self {
            keep_versions: 2,
            health_check_timeout: Duration::from_secs(300),
            os_slot_size: 64 << 30,
            os_boot_attempts: 3,
            os_health_check: None,
            boot_id,
        }
    }
}

/// The install engine over one state directory, which it holds locked while it exists.
#[derive(Debug)]
pub struct Installer {
    state: PathBuf,
    options: Options,
    _lock: File,
}

/// One of the two OS slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
        }
    }
}

/// The update a version came from, as its signed catalog entry names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UpdateKey {
    pub id: UpdateId,
    pub revision: u32,
}

/// An operation of the engine that a crash can interrupt (and [`Installer::recover`] finishes or undoes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Install,
    OsInstall,
    Rollback,
    OsRollback,
    Uninstall,
    /// Confirming a new OS image after it booted.
    OsConfirm,
}

impl Operation {
    /// The machine name (`os-install`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Install => "install",
            Self::OsInstall => "os-install",
            Self::Rollback => "rollback",
            Self::OsRollback => "os-rollback",
            Self::Uninstall => "uninstall",
            Self::OsConfirm => "os-confirm",
        }
    }
}

impl std::fmt::Display for Operation {
    /// For people: `OS install`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Install => "install",
            Self::OsInstall => "OS install",
            Self::Rollback => "rollback",
            Self::OsRollback => "OS rollback",
            Self::Uninstall => "uninstall",
            Self::OsConfirm => "OS confirmation",
        })
    }
}

/// What an install did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallOutcome {
    pub product: String,
    pub version: String,
    /// The version that was current before, if any.
    pub previous: Option<String>,
    pub kind: Kind,
    /// From the signed entry: whether the device must reboot for the update to take effect. For `os`, the new slot
    /// is active from the next boot; the agent confirms it after the boot or calls [`Installer::rollback`].
    pub reboot: Reboot,
}

/// What a rollback did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollbackOutcome {
    pub product: String,
    pub from: String,
    pub to: String,
    /// The update of the version left, if its record names it.
    pub update: Option<UpdateKey>,
}

/// What an uninstall removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UninstallOutcome {
    pub product: String,
    /// The version that was current.
    pub version: String,
    /// Its update, if its record names it.
    pub update: Option<UpdateKey>,
}

/// What [`Installer::recover`] found and did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovered {
    pub operation: Operation,
    pub product: String,
    /// The version the operation concerned: the one being installed or confirmed, rolled back from, or removed.
    pub version: String,
    /// Its update, if the journal names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateKey>,
    /// An OS rollback after a failed boot: why the image was given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_failure: Option<String>,
    pub outcome: RecoveryOutcome,
    /// The version in use afterwards (for the OS: the active slot's), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
}

/// What [`Installer::check_os_boot`] found about the OS image waiting for confirmation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum OsBoot {
    /// The device has not rebooted since the image was written (or its boot id is unknown).
    RebootPending { product: String, version: String },
    /// The new image booted and passed its check: it stands.
    Confirmed { product: String, version: String, update: Option<UpdateKey> },
    /// The new image was given up (`reason`); the previous slot is active again (`restored`), or there was none.
    Failed { product: String, version: String, update: Option<UpdateKey>, restored: Option<String>, reason: String },
}

/// An OS image waiting for its boot to be confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OsPending {
    pub product: String,
    pub version: String,
    pub slot: Slot,
    /// Boots of the new image left before it is given up.
    pub boots_left: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum RecoveryOutcome {
    /// The operation had reached the point where it stands (an install whose health check passed, a rollback, an
    /// uninstall); recovery finished it.
    Completed,
    /// The install had not finished; recovery put the previous version back (`restored`, or nothing if there was
    /// none).
    Undone { restored: Option<String> },
}

/// An installed version of a product, from its record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledVersion {
    pub product: String,
    pub version: String,
    /// The catalog kind (`app`, `os`, ...).
    pub kind: String,
    /// Install order: higher is later.
    pub sequence: u64,
    /// Seconds since the Unix epoch.
    pub installed_at: u64,
    /// The TUF target path it came from.
    pub target: String,
    pub update_id: String,
    pub revision: u32,
    /// Whether this is the version in use (for `os`: the active slot).
    pub current: bool,
}

/// One entry of a product's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub event: Event,
    /// The version the event is about.
    pub version: String,
    /// The version in use after the event, when it is another one (the previous version after an install, the
    /// version restored after a failed health check or a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    Installed,
    /// The health check failed; the previous version was restored.
    HealthCheckFailed,
    /// The install failed (bad package, disk full, ...) and was undone.
    InstallFailed,
    /// An install was interrupted (crash, power cut) and undone by recovery.
    InstallInterrupted,
    RolledBack,
    Uninstalled,
    /// A driver's reload command failed after its version was restored.
    ReloadFailed,
    /// A new OS image booted and passed its check.
    Confirmed,
    /// A new OS image failed after the reboot (its check, the boot counter, or the bootloader fell back); `other`
    /// is the version made active again.
    BootFailed,
}

/// The OS slots and which one is active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OsStatus {
    pub active: Option<Slot>,
    pub slots: Vec<OsSlot>,
    /// The active image, if it waits for its boot to be confirmed.
    pub pending: Option<OsPending>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OsSlot {
    pub slot: Slot,
    pub image: PathBuf,
    /// What the slot holds; `None` when it holds no complete image.
    pub installed: Option<InstalledVersion>,
}

/// What the engine stores about an installed version (and an OS slot's image): the signed target's path and
/// SHA-256, and the signed `custom` metadata, from which the catalog entry (and so every command) is parsed again
/// when the version is restored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    product: String,
    version: String,
    sequence: u64,
    installed_at: u64,
    target: String,
    sha256: String,
    custom: serde_json::Value,
}

impl Record {
    fn read(path: &Path) -> Result<Option<Self>, Error> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::io("read", path)(error)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::CorruptState { path: path.to_owned(), reason: e.to_string() })
    }

    fn write(&self, path: &Path) -> Result<(), Error> {
        // Invariant: a record of strings, integers and a JSON value always serializes.
        fs::write_atomic(path, &serde_json::to_vec(self).expect("record serializes"))
    }

    /// The catalog entry, parsed again from the signed `custom` metadata stored with the version.
    fn entry(&self) -> Option<UpdateEntry> {
        UpdateEntry::parse(&self.custom).ok()
    }

    fn update(&self) -> Option<UpdateKey> {
        self.entry().map(|entry| UpdateKey { id: entry.id(), revision: entry.revision() })
    }

    fn view(&self, current: bool) -> InstalledVersion {
        let entry = self.entry();
        InstalledVersion {
            product: self.product.clone(),
            version: self.version.clone(),
            kind: entry.as_ref().map(|e| e.kind().as_str().to_owned()).unwrap_or_default(),
            sequence: self.sequence,
            installed_at: self.installed_at,
            target: self.target.clone(),
            update_id: entry.as_ref().map(|e| e.id().as_uuid().to_string()).unwrap_or_default(),
            revision: entry.as_ref().map_or(0, UpdateEntry::revision),
            current,
        }
    }
}

/// `os/pending.json`: the new OS image waiting for its boot to be confirmed. Written before the switch to its slot,
/// removed when it is confirmed, given up or rolled back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PendingBoot {
    product: String,
    version: String,
    slot: Slot,
    previous: Option<Slot>,
    update: Option<UpdateKey>,
    /// The boot during which the image was written.
    installed_boot: Option<String>,
    /// The last boot counted against `boots_left`.
    counted_boot: Option<String>,
    boots_left: u32,
}

impl PendingBoot {
    fn read(path: &Path) -> Result<Option<Self>, Error> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::io("read", path)(error)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::CorruptState { path: path.to_owned(), reason: e.to_string() })
    }

    fn write(&self, path: &Path) -> Result<(), Error> {
        // Invariant: strings, integers and enums always serialize.
        fs::write_atomic(path, &serde_json::to_vec(self).expect("pending boot serializes"))
    }
}

impl Installer {
    /// Opens (creating if needed) the state directory with default [`Options`] and locks it.
    pub fn new(state_dir: &Path) -> Result<Self, Error> {
        Self::with_options(state_dir, Options::default())
    }

    /// Opens (creating if needed) the state directory and locks it; fails with [`Error::Locked`] while another
    /// installer holds it. Run [`Installer::recover`] next: installs are refused while a journal is present.
    pub fn with_options(state_dir: &Path, options: Options) -> Result<Self, Error> {
        for dir in [state_dir.to_owned(), state_dir.join("products"), state_dir.join("os")] {
            DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(Error::io("create", &dir))?;
        }
        let state = state_dir.canonicalize().map_err(Error::io("resolve", state_dir))?;
        let lock_path = state.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(Error::io("open", &lock_path))?;
        // SAFETY: `flock` only takes a lock on the open descriptor, which `lock` keeps open.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            return Err(match error.kind() {
                std::io::ErrorKind::WouldBlock => Error::Locked { path: state },
                _ => Error::io("lock", &lock_path)(error),
            });
        }
        Ok(Self { state, options, _lock: lock })
    }

    /// The state directory (absolute).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Where the product's current version is visible: `<state>/products/<product>/current`.
    pub fn product_root(&self, product: &ProductName) -> PathBuf {
        self.current_link(product.as_str())
    }

    /// The image file of an OS slot.
    pub fn os_slot_image(&self, slot: Slot) -> PathBuf {
        self.state.join("os").join(format!("slot-{}", slot.as_str()))
    }

    /// Installs a verified artifact with the handler and arguments of its signed catalog entry.
    ///
    /// On success the new version is current and the oldest versions beyond the number to keep are removed, as is
    /// the download. On failure the previous version is current again (a failed health check is
    /// [`Error::HealthCheckFailed`]) and the download stays where it was, so that [`crate::ArtifactWriter::resume`]
    /// can verify it again without downloading it.
    pub fn install(&mut self, artifact: VerifiedArtifact) -> Result<InstallOutcome, Error> {
        self.ensure_no_journal()?;
        let entry = artifact.entry().clone();
        let keep = self.options.keep_versions;
        match entry.installer() {
            custody_catalog::Installer::OsImage { slot_layout, format } => {
                self.install_os(&artifact, *slot_layout, *format)
            }
            custody_catalog::Installer::Archive { format, destination, post_install } => {
                self.install_tree(&artifact, *format, Some(destination), post_install.as_ref(), keep)
            }
            custody_catalog::Installer::Driver { format, destination, reload_command } => {
                self.install_tree(&artifact, *format, Some(destination), Some(reload_command), keep)
            }
            custody_catalog::Installer::Definitions { keep } => {
                self.install_tree(&artifact, ArchiveFormat::TarZstd, None, None, *keep)
            }
            custody_catalog::Installer::StoreApp => {
                self.install_tree(&artifact, ArchiveFormat::TarZstd, None, None, keep)
            }
        }
    }

    /// Switches the product back to its previous kept version and removes the version it leaves (so that a second
    /// rollback goes one further back). For a driver, the restored version's signed reload command runs. For the
    /// OS, the other slot becomes active again (what the agent calls when the new OS fails its check after boot).
    pub fn rollback(&mut self, product: &ProductName) -> Result<RollbackOutcome, Error> {
        self.ensure_no_journal()?;
        let product = product.as_str();
        if let Some(active) = self.os_active()?
            && self.slot_record(active)?.is_some_and(|record| record.product == product)
        {
            let from = active;
            let to = active.other();
            let (Some(from_record), Some(to_record)) = (self.slot_record(from)?, self.slot_record(to)?) else {
                return Err(Error::NothingToRollBack { product: product.to_owned() });
            };
            let update = from_record.update();
            let journal = Journal::OsRollback { product: product.to_owned(), from, to, update, boot_failure: None };
            journal.write(&self.journal_path())?;
            self.complete(&journal)?;
            Journal::clear(&self.journal_path())?;
            return Ok(RollbackOutcome {
                product: product.to_owned(),
                from: from_record.version,
                to: to_record.version,
                update,
            });
        }

        let current =
            self.current_version(product)?.ok_or_else(|| Error::NotInstalled { product: product.to_owned() })?;
        let records = self.records(product)?;
        let current_sequence = records.iter().find(|r| r.version == current).map_or(u64::MAX, |r| r.sequence);
        let to = records
            .iter()
            .filter(|r| r.sequence < current_sequence && self.version_dir(product, &r.version).is_dir())
            .max_by_key(|r| r.sequence)
            .ok_or_else(|| Error::NothingToRollBack { product: product.to_owned() })?
            .version
            .clone();
        let update = records.iter().find(|r| r.version == current).and_then(Record::update);
        let journal = Journal::Rollback { product: product.to_owned(), from: current.clone(), to: to.clone(), update };
        journal.write(&self.journal_path())?;
        let reload_failure = self.complete(&journal)?;
        Journal::clear(&self.journal_path())?;
        if let Some((program, reason)) = reload_failure {
            return Err(Error::CommandFailed { product: product.to_owned(), program, reason });
        }
        Ok(RollbackOutcome { product: product.to_owned(), from: current, to, update })
    }

    /// Removes the product: its destination link, its current link, every kept version. Its history stays.
    pub fn uninstall(&mut self, product: &ProductName) -> Result<UninstallOutcome, Error> {
        self.ensure_no_journal()?;
        let product = product.as_str();
        if self.os_product()?.as_deref() == Some(product) {
            return Err(Error::Unsupported {
                product: product.to_owned(),
                version: String::new(),
                what: "uninstalling the operating system".into(),
            });
        }
        let version =
            self.current_version(product)?.ok_or_else(|| Error::NotInstalled { product: product.to_owned() })?;
        let entry = Record::read(&self.record_path(product, &version))?.and_then(|record| record.entry());
        let update = entry.as_ref().map(|entry| UpdateKey { id: entry.id(), revision: entry.revision() });
        let destination = entry.and_then(|entry| match entry.installer() {
            custody_catalog::Installer::Archive { destination, .. }
            | custody_catalog::Installer::Driver { destination, .. } => Some(destination.as_str().to_owned()),
            _ => None,
        });
        let journal = Journal::Uninstall { product: product.to_owned(), version: version.clone(), destination, update };
        journal.write(&self.journal_path())?;
        self.complete(&journal)?;
        Journal::clear(&self.journal_path())?;
        Ok(UninstallOutcome { product: product.to_owned(), version, update })
    }

    /// Finishes or undoes the operation a crash interrupted (see docs/packages.md for each phase), then removes
    /// leftovers: staging directories, temporary names, versions without records and records without versions.
    /// Call it when the agent starts; it is idempotent, and a crash during recovery is recovered the same way.
    pub fn recover(&mut self) -> Result<Option<Recovered>, Error> {
        let recovered = match Journal::read(&self.journal_path())? {
            None => None,
            Some(journal) => {
                // The version the operation concerns, read before finishing it removes its record.
                let (version, boot_failure) = match &journal {
                    Journal::Install { version, .. }
                    | Journal::OsInstall { version, .. }
                    | Journal::Uninstall { version, .. }
                    | Journal::OsConfirm { version, .. } => (version.clone(), None),
                    Journal::Rollback { from, .. } => (from.clone(), None),
                    Journal::OsRollback { from, boot_failure, .. } => {
                        let version = self.slot_record(*from)?.map(|r| r.version).unwrap_or_default();
                        (version, boot_failure.clone())
                    }
                };
                let outcome = match &journal {
                    Journal::Install { phase: Phase::Done, .. } | Journal::OsInstall { phase: Phase::Done, .. } => {
                        self.complete(&journal)?;
                        RecoveryOutcome::Completed
                    }
                    Journal::Install { product, version, .. } | Journal::OsInstall { product, version, .. } => {
                        let restored = self.undo(&journal)?;
                        self.append_history(product, Event::InstallInterrupted, version, restored.clone(), None)?;
                        RecoveryOutcome::Undone { restored }
                    }
                    Journal::Rollback { .. }
                    | Journal::OsRollback { .. }
                    | Journal::Uninstall { .. }
                    | Journal::OsConfirm { .. } => {
                        self.complete(&journal)?;
                        RecoveryOutcome::Completed
                    }
                };
                let current = match &journal {
                    Journal::OsInstall { .. } | Journal::OsRollback { .. } | Journal::OsConfirm { .. } => {
                        match self.os_active()? {
                            Some(slot) => self.slot_record(slot)?.map(|r| r.version),
                            None => None,
                        }
                    }
                    _ => self.current_version(journal.product())?,
                };
                tracing::warn!(
                    operation = %journal.operation(),
                    product = journal.product(),
                    version,
                    ?outcome,
                    ?current,
                    "recovered an interrupted operation"
                );
                Some(Recovered {
                    operation: journal.operation(),
                    product: journal.product().to_owned(),
                    version,
                    update: journal.update(),
                    boot_failure,
                    outcome,
                    current,
                })
            }
        };
        self.sweep()?;
        Journal::clear(&self.journal_path())?;
        Ok(recovered)
    }

    /// Confirms or gives up the OS image waiting for its boot (call it when the agent starts, after
    /// [`Installer::recover`]). `booted` is the slot the bootloader started, when the caller knows it (the kernel
    /// command line).
    ///
    /// - Not rebooted since the image was written (same boot id): [`OsBoot::RebootPending`].
    /// - The bootloader started the other slot: the new image did not boot; it is given up.
    /// - Each new boot counts against [`Options::os_boot_attempts`] (durably, before the check runs, so that a
    ///   check that hangs or crashes the machine still uses up attempts); a boot after the last attempt gives the
    ///   image up without checking again.
    /// - Otherwise [`Options::os_health_check`] runs, if set: it passes (or there is none) → [`OsBoot::Confirmed`];
    ///   it fails → given up.
    ///
    /// Giving up is an OS rollback (journalled, completed by recovery): the previous slot becomes active again and
    /// the failed one not bootable; [`OsBoot::Failed`] says why. `Ok(None)`: no image waits.
    pub fn check_os_boot(&mut self, booted: Option<Slot>) -> Result<Option<OsBoot>, Error> {
        self.ensure_no_journal()?;
        let path = self.pending_path();
        let Some(mut pending) = PendingBoot::read(&path)? else {
            return Ok(None);
        };
        if self.os_active()? != Some(pending.slot) {
            // Left by an operation that switched away from the image (it removes the file as its last step).
            fs::remove_file(&path)?;
            fs::sync_dir(&self.state.join("os"))?;
            return Ok(None);
        }
        let (product, version, update) = (pending.product.clone(), pending.version.clone(), pending.update);
        let boot = self.options.boot_id.clone();
        if boot.is_none() || boot == pending.installed_boot {
            return Ok(Some(OsBoot::RebootPending { product, version }));
        }
        if let Some(booted) = booted.filter(|&booted| booted != pending.slot) {
            let reason = format!(
                "the bootloader started slot {} instead of the new image's slot {}: the image did not boot",
                booted.as_str(),
                pending.slot.as_str()
            );
            return self.give_up_os(&pending, reason).map(Some);
        }
        if pending.counted_boot != boot {
            if pending.boots_left == 0 {
                let reason =
                    format!("{} boots without confirmation: the boot counter ran out", self.options.os_boot_attempts);
                return self.give_up_os(&pending, reason).map(Some);
            }
            pending.boots_left -= 1;
            pending.counted_boot = boot;
            pending.write(&path)?;
        }
        if let Some(check) = &self.options.os_health_check {
            let log = self.state.join("command.log");
            if let Err(reason) = command::run(check, self.options.health_check_timeout, &log) {
                return self.give_up_os(&pending, format!("the OS health check failed: {reason}")).map(Some);
            }
        }
        let journal =
            Journal::OsConfirm { product: product.clone(), version: version.clone(), slot: pending.slot, update };
        journal.write(&self.journal_path())?;
        self.complete(&journal)?;
        Journal::clear(&self.journal_path())?;
        tracing::info!(%product, %version, slot = pending.slot.as_str(), "OS image confirmed after boot");
        Ok(Some(OsBoot::Confirmed { product, version, update }))
    }

    /// Gives up the pending OS image: an OS rollback to the previous slot, or, with none to go back to, the image
    /// stays active and only the failure is recorded.
    fn give_up_os(&mut self, pending: &PendingBoot, reason: String) -> Result<OsBoot, Error> {
        let (product, version) = (pending.product.clone(), pending.version.clone());
        tracing::warn!(%product, %version, %reason, "giving up the new OS image");
        let previous = match pending.previous {
            Some(slot) => self.slot_record(slot)?.map(|record| (slot, record.version)),
            None => None,
        };
        let restored = match previous {
            Some((to, restored)) => {
                let journal = Journal::OsRollback {
                    product: product.clone(),
                    from: pending.slot,
                    to,
                    update: pending.update,
                    boot_failure: Some(reason.clone()),
                };
                journal.write(&self.journal_path())?;
                self.complete(&journal)?;
                Journal::clear(&self.journal_path())?;
                Some(restored)
            }
            None => {
                self.append_history(&product, Event::BootFailed, &version, None, Some(reason.clone()))?;
                fs::remove_file(&self.pending_path())?;
                fs::sync_dir(&self.state.join("os"))?;
                None
            }
        };
        Ok(OsBoot::Failed { product, version, update: pending.update, restored, reason })
    }

    /// The kept versions of a product (for the OS: what each slot holds), oldest first.
    pub fn versions(&self, product: &ProductName) -> Result<Vec<InstalledVersion>, Error> {
        let product = product.as_str();
        if self.os_product()?.as_deref() == Some(product) {
            let active = self.os_active()?;
            let mut versions = Vec::new();
            for slot in [Slot::A, Slot::B] {
                if let Some(record) = self.slot_record(slot)?.filter(|r| r.product == product) {
                    versions.push(record.view(active == Some(slot)));
                }
            }
            versions.sort_by_key(|v| v.sequence);
            return Ok(versions);
        }
        let current = self.current_version(product)?;
        let mut versions: Vec<InstalledVersion> = self
            .records(product)?
            .into_iter()
            .filter(|record| self.version_dir(product, &record.version).is_dir())
            .map(|record| {
                let is_current = current.as_deref() == Some(record.version.as_str());
                record.view(is_current)
            })
            .collect();
        versions.sort_by_key(|v| v.sequence);
        Ok(versions)
    }

    /// The version in use, if the product is installed.
    pub fn current(&self, product: &ProductName) -> Result<Option<InstalledVersion>, Error> {
        Ok(self.versions(product)?.into_iter().find(|v| v.current))
    }

    /// The product's history, oldest first. A line torn by a crash while it was appended is skipped.
    pub fn history(&self, product: &ProductName) -> Result<Vec<HistoryEvent>, Error> {
        let path = self.history_path(product.as_str());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(Error::io("read", &path)(error)),
        };
        Ok(text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect())
    }

    /// The OS slots: which is active and what each holds.
    pub fn os_status(&self) -> Result<OsStatus, Error> {
        let active = self.os_active()?;
        let mut slots = Vec::new();
        for slot in [Slot::A, Slot::B] {
            let installed = self.slot_record(slot)?.map(|record| record.view(active == Some(slot)));
            slots.push(OsSlot { slot, image: self.os_slot_image(slot), installed });
        }
        let pending = PendingBoot::read(&self.pending_path())?
            .filter(|pending| active == Some(pending.slot))
            .map(|p| OsPending { product: p.product, version: p.version, slot: p.slot, boots_left: p.boots_left });
        Ok(OsStatus { active, slots, pending })
    }

    // --- Installing a product tree (app, store-app, driver, definitions). ---

    fn install_tree(
        &mut self,
        artifact: &VerifiedArtifact,
        format: ArchiveFormat,
        destination: Option<&AbsPath>,
        health_check: Option<&Argv>,
        keep: u32,
    ) -> Result<InstallOutcome, Error> {
        let entry = artifact.entry();
        let product = entry.product().as_str().to_owned();
        let version = entry.version().as_str().to_owned();
        let previous = self.current_version(&product)?;
        if previous.as_deref() == Some(version.as_str()) {
            return Err(Error::AlreadyCurrent { product, version });
        }
        if let Some(destination) = destination {
            self.check_destination(destination.as_str(), &product)?;
        }
        for dir in ["versions", "records", "staging"] {
            let path = self.product_dir(&product).join(dir);
            DirBuilder::new().recursive(true).mode(0o755).create(&path).map_err(Error::io("create", &path))?;
        }
        let journal = Journal::Install {
            product: product.clone(),
            version: version.clone(),
            previous: previous.clone(),
            destination: destination.map(|d| d.as_str().to_owned()),
            keep,
            artifact: artifact.path().to_owned(),
            phase: Phase::Staging,
            update: Some(UpdateKey { id: entry.id(), revision: entry.revision() }),
        };
        journal.write(&self.journal_path())?;
        tracing::info!(%product, %version, ?previous, "installing");

        if let Err(error) = self.stage_and_switch(artifact, &journal, format) {
            tracing::warn!(%product, %version, %error, "install failed; undoing");
            let written = Journal::read(&self.journal_path())?.unwrap_or(journal);
            let restored = self.undo(&written)?;
            self.append_history(&product, Event::InstallFailed, &version, restored, Some(error.to_string()))?;
            Journal::clear(&self.journal_path())?;
            return Err(error);
        }
        if let Some(check) = health_check {
            let log = self.state.join("command.log");
            if let Err(reason) = command::run(check, self.options.health_check_timeout, &log) {
                tracing::warn!(%product, %version, %reason, "health check failed; rolling back");
                let restored = self.undo(&journal.at(Phase::Switched))?;
                self.append_history(
                    &product,
                    Event::HealthCheckFailed,
                    &version,
                    restored.clone(),
                    Some(reason.clone()),
                )?;
                Journal::clear(&self.journal_path())?;
                return Err(Error::HealthCheckFailed { product, version, reason, restored });
            }
        }
        let done = journal.at(Phase::Done);
        done.write(&self.journal_path())?;
        self.complete(&done)?;
        Journal::clear(&self.journal_path())?;
        tracing::info!(%product, %version, "installed");
        Ok(InstallOutcome { product, version, previous, kind: entry.kind(), reboot: entry.reboot() })
    }

    /// Phases `staging` to `switched`: extract into the staging directory, make it durable, move it into
    /// `versions/`, then swap the `current` link (and create the destination link).
    fn stage_and_switch(
        &self,
        artifact: &VerifiedArtifact,
        journal: &Journal,
        format: ArchiveFormat,
    ) -> Result<(), Error> {
        let Journal::Install { product, version, destination, .. } = journal else {
            return Ok(());
        };
        let staging = self.staging_dir(product, version);
        fs::remove_tree(&staging)?;
        DirBuilder::new().mode(0o755).create(&staging).map_err(Error::io("create", &staging))?;
        package::extract(artifact.reader()?, format, &staging, product, version)?;

        // A kept copy of the same version (installed before, then superseded) is replaced.
        let version_dir = self.version_dir(product, version);
        fs::remove_tree(&version_dir)?;
        let record = Record {
            product: product.clone(),
            version: version.clone(),
            sequence: self.next_sequence(product)?,
            installed_at: now(),
            target: artifact.target().path().to_owned(),
            sha256: artifact.target().file().sha256().unwrap_or_default().to_owned(),
            custom: artifact.target().file().custom.clone().unwrap_or_default(),
        };
        record.write(&self.record_path(product, version))?;
        fs::sync_file_system(&staging)?;
        std::fs::rename(&staging, &version_dir).map_err(Error::io("move into place", &version_dir))?;
        fs::sync_dir(fs::parent(&version_dir))?;
        journal.at(Phase::Staged).write(&self.journal_path())?;

        journal.at(Phase::Switching).write(&self.journal_path())?;
        if let Some(destination) = destination {
            self.link_destination(destination, product)?;
        }
        fs::swap_symlink(&self.current_link(product), &Path::new("versions").join(version))?;
        journal.at(Phase::Switched).write(&self.journal_path())
    }

    // --- Installing an OS image (A/B slots). ---

    fn install_os(
        &mut self,
        artifact: &VerifiedArtifact,
        slot_layout: SlotLayout,
        format: ImageFormat,
    ) -> Result<InstallOutcome, Error> {
        let entry = artifact.entry();
        let product = entry.product().as_str().to_owned();
        let version = entry.version().as_str().to_owned();
        if slot_layout != SlotLayout::Dual {
            return Err(Error::Unsupported {
                product,
                version,
                what: "a single-slot OS image (applied from a recovery system)".into(),
            });
        }
        if let Some(pending) = PendingBoot::read(&self.pending_path())?
            && self.os_active()? == Some(pending.slot)
        {
            return Err(Error::OsUnconfirmed { product: pending.product, version: pending.version });
        }
        let previous = self.os_active()?;
        let previous_record = match previous {
            Some(slot) => self.slot_record(slot)?,
            None => None,
        };
        if let Some(record) = &previous_record
            && record.product == product
            && record.version == version
        {
            return Err(Error::AlreadyCurrent { product, version });
        }
        let slot = previous.map_or(Slot::A, Slot::other);
        let journal = Journal::OsInstall {
            product: product.clone(),
            version: version.clone(),
            slot,
            previous,
            artifact: artifact.path().to_owned(),
            phase: Phase::Staging,
            update: Some(UpdateKey { id: entry.id(), revision: entry.revision() }),
        };
        journal.write(&self.journal_path())?;
        tracing::info!(%product, %version, slot = slot.as_str(), "writing OS image to the inactive slot");
        if let Err(error) = self.write_slot(artifact, &journal, format) {
            tracing::warn!(%product, %version, %error, "OS install failed; undoing");
            let written = Journal::read(&self.journal_path())?.unwrap_or(journal);
            let restored = self.undo(&written)?;
            self.append_history(&product, Event::InstallFailed, &version, restored, Some(error.to_string()))?;
            Journal::clear(&self.journal_path())?;
            return Err(error);
        }
        // Schema 1 signs no health-check command for OS images: the check is the boot of the new slot, which
        // `check_os_boot` confirms or gives up after the reboot (os/pending.json, written before the switch).
        let done = journal.at(Phase::Done);
        done.write(&self.journal_path())?;
        self.complete(&done)?;
        Journal::clear(&self.journal_path())?;
        Ok(InstallOutcome {
            product,
            version,
            previous: previous_record.map(|r| r.version),
            kind: entry.kind(),
            reboot: entry.reboot(),
        })
    }

    /// Phases `staging` to `switched` of an OS install: invalidate the inactive slot, write the image, fsync,
    /// record it, then swap the active-slot link.
    fn write_slot(&self, artifact: &VerifiedArtifact, journal: &Journal, format: ImageFormat) -> Result<(), Error> {
        let Journal::OsInstall { product, version, slot, previous, update, .. } = journal else {
            return Ok(());
        };
        let os_dir = self.state.join("os");
        let record_path = self.slot_record_path(*slot);
        fs::remove_file(&record_path)?;
        fs::sync_dir(&os_dir)?;
        let image = self.os_slot_image(*slot);
        let limit = self.options.os_slot_size;
        let too_large = || Error::ImageTooLarge { product: product.clone(), version: version.clone(), limit };
        if format == ImageFormat::Raw {
            let length = artifact.target().file().length;
            if length > limit {
                return Err(too_large());
            }
            let existing = std::fs::metadata(&image).map_or(0, |m| m.len());
            fs::ensure_space(&os_dir, length.saturating_sub(existing))?;
        }
        let mut source: Box<dyn Read + '_> = match format {
            ImageFormat::Raw => Box::new(artifact.reader()?),
            ImageFormat::RawZstd => {
                let mut decoder =
                    zstd::Decoder::new(artifact.reader()?).map_err(|e| Error::Archive(format!("zstd: {e}")))?;
                decoder.window_log_max(27).map_err(|e| Error::Archive(format!("zstd: {e}")))?;
                Box::new(decoder)
            }
        };
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&image)
            .map_err(Error::io("open", &image))?;
        let mut buffer = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            let count = source.read(&mut buffer).map_err(|e| Error::Archive(format!("OS image: {e}")))?;
            if count == 0 {
                break;
            }
            written += count as u64;
            if written > limit {
                return Err(too_large());
            }
            out.write_all(&buffer[..count]).map_err(Error::io("write", &image))?;
        }
        out.sync_all().map_err(Error::io("sync", &image))?;
        let record = Record {
            product: product.clone(),
            version: version.clone(),
            sequence: self.next_slot_sequence()?,
            installed_at: now(),
            target: artifact.target().path().to_owned(),
            sha256: artifact.target().file().sha256().unwrap_or_default().to_owned(),
            custom: artifact.target().file().custom.clone().unwrap_or_default(),
        };
        record.write(&record_path)?;
        journal.at(Phase::Staged).write(&self.journal_path())?;
        let pending = PendingBoot {
            product: product.clone(),
            version: version.clone(),
            slot: *slot,
            previous: *previous,
            update: *update,
            installed_boot: self.options.boot_id.clone(),
            counted_boot: None,
            boots_left: self.options.os_boot_attempts,
        };
        pending.write(&self.pending_path())?;
        journal.at(Phase::Switching).write(&self.journal_path())?;
        fs::swap_symlink(&self.os_active_link(), Path::new(&format!("slot-{}", slot.as_str())))?;
        journal.at(Phase::Switched).write(&self.journal_path())
    }

    // --- Finishing and undoing journalled operations (shared by the normal path and recovery). ---

    /// Undoes an install that has not reached `done`: the previous version becomes current again (for a driver
    /// whose new reload command may have run: with the previous version's own signed reload command), and the new
    /// version is removed. Returns the version current afterwards. Idempotent.
    fn undo(&self, journal: &Journal) -> Result<Option<String>, Error> {
        match journal {
            Journal::Install { product, version, previous, destination, phase, .. } => {
                fs::remove_tree(&self.staging_dir(product, version))?;
                // Decided by the link itself, not the phase: the phase written last may lag the link by one step.
                if self.current_version(product)?.as_deref() == Some(version.as_str()) {
                    match previous {
                        Some(previous) => {
                            fs::swap_symlink(&self.current_link(product), &Path::new("versions").join(previous))?
                        }
                        None => {
                            fs::remove_file(&self.current_link(product))?;
                            fs::sync_dir(&self.product_dir(product))?;
                        }
                    }
                }
                if let (None, Some(destination)) = (previous, destination) {
                    self.unlink_destination(destination, product)?;
                }
                if *phase == Phase::Switched
                    && let Some(previous) = previous
                    && let Some((program, reason)) = self.reload_driver(product, previous)
                {
                    let detail = format!("{program}: {reason}");
                    self.append_history(product, Event::ReloadFailed, previous, None, Some(detail))?;
                }
                fs::remove_tree(&self.version_dir(product, version))?;
                fs::remove_file(&self.record_path(product, version))?;
                self.current_version(product)
            }
            Journal::OsInstall { slot, previous, .. } => {
                // The new slot is active only once the switch began; then the previous one is made active again.
                if self.os_active()? == Some(*slot) {
                    match previous {
                        Some(previous) => {
                            fs::swap_symlink(&self.os_active_link(), Path::new(&format!("slot-{}", previous.as_str())))?
                        }
                        None => {
                            fs::remove_file(&self.os_active_link())?;
                            fs::sync_dir(&self.state.join("os"))?;
                        }
                    }
                }
                fs::remove_file(&self.slot_record_path(*slot))?;
                if PendingBoot::read(&self.pending_path())?.is_some_and(|pending| pending.slot == *slot) {
                    fs::remove_file(&self.pending_path())?;
                }
                fs::sync_dir(&self.state.join("os"))?;
                match previous {
                    Some(previous) => Ok(self.slot_record(*previous)?.map(|r| r.version)),
                    None => Ok(None),
                }
            }
            Journal::Rollback { .. }
            | Journal::OsRollback { .. }
            | Journal::Uninstall { .. }
            | Journal::OsConfirm { .. } => Ok(None),
        }
    }

    /// Finishes an operation that stands: a `done` install (prune, remove the download, record it), a rollback, an
    /// uninstall. Idempotent. Returns a driver reload command's failure (program, reason), which leaves the state
    /// consistent and is recorded in the history.
    fn complete(&self, journal: &Journal) -> Result<Option<(String, String)>, Error> {
        match journal {
            Journal::Install { product, version, previous, keep, artifact, .. } => {
                self.prune(product, *keep)?;
                fs::remove_file(artifact)?;
                self.append_history(product, Event::Installed, version, previous.clone(), None)?;
                Ok(None)
            }
            Journal::OsInstall { product, version, previous, artifact, .. } => {
                fs::remove_file(artifact)?;
                let previous = match previous {
                    Some(slot) => self.slot_record(*slot)?.map(|r| r.version),
                    None => None,
                };
                self.append_history(product, Event::Installed, version, previous, None)?;
                Ok(None)
            }
            Journal::Rollback { product, from, to, .. } => {
                if self.current_version(product)?.as_deref() != Some(to.as_str()) {
                    fs::swap_symlink(&self.current_link(product), &Path::new("versions").join(to))?;
                }
                let failure = self.reload_driver(product, to);
                fs::remove_tree(&self.version_dir(product, from))?;
                fs::remove_file(&self.record_path(product, from))?;
                self.append_history(product, Event::RolledBack, from, Some(to.clone()), None)?;
                if let Some((program, reason)) = &failure {
                    self.append_history(product, Event::ReloadFailed, to, None, Some(format!("{program}: {reason}")))?;
                }
                Ok(failure)
            }
            Journal::OsRollback { product, from, to, boot_failure, .. } => {
                let from_version = self.slot_record(*from)?.map(|r| r.version).unwrap_or_default();
                let to_version = self.slot_record(*to)?.map(|r| r.version);
                if self.os_active()? != Some(*to) {
                    fs::swap_symlink(&self.os_active_link(), Path::new(&format!("slot-{}", to.as_str())))?;
                }
                fs::remove_file(&self.slot_record_path(*from))?;
                fs::remove_file(&self.pending_path())?;
                fs::sync_dir(&self.state.join("os"))?;
                if !from_version.is_empty() {
                    let event = if boot_failure.is_some() { Event::BootFailed } else { Event::RolledBack };
                    self.append_history(product, event, &from_version, to_version, boot_failure.clone())?;
                }
                Ok(None)
            }
            Journal::OsConfirm { product, version, slot, .. } => {
                // Recorded before the file goes: a crash in between records it twice rather than never.
                if PendingBoot::read(&self.pending_path())?.is_some_and(|pending| pending.slot == *slot) {
                    self.append_history(product, Event::Confirmed, version, None, None)?;
                    fs::remove_file(&self.pending_path())?;
                    fs::sync_dir(&self.state.join("os"))?;
                }
                Ok(None)
            }
            Journal::Uninstall { product, version, destination, .. } => {
                if let Some(destination) = destination {
                    self.unlink_destination(destination, product)?;
                }
                fs::remove_file(&self.current_link(product))?;
                fs::sync_dir(&self.product_dir(product))?;
                for dir in ["versions", "staging", "records"] {
                    fs::remove_tree(&self.product_dir(product).join(dir))?;
                }
                self.append_history(product, Event::Uninstalled, version, None, None)?;
                Ok(None)
            }
        }
    }

    /// Removes the oldest kept versions beyond `keep` (never the current one).
    fn prune(&self, product: &str, keep: u32) -> Result<(), Error> {
        let current = self.current_version(product)?;
        let mut records: Vec<Record> =
            self.records(product)?.into_iter().filter(|r| Some(&r.version) != current.as_ref()).collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.sequence));
        for record in records.iter().skip(keep as usize) {
            tracing::debug!(product, version = %record.version, "removing an old version");
            fs::remove_tree(&self.version_dir(product, &record.version))?;
            fs::remove_file(&self.record_path(product, &record.version))?;
        }
        Ok(())
    }

    /// Runs the signed reload command of `version` if it is a driver; returns its failure (program, reason).
    fn reload_driver(&self, product: &str, version: &str) -> Option<(String, String)> {
        let record = Record::read(&self.record_path(product, version)).ok()??;
        let entry = record.entry()?;
        let custody_catalog::Installer::Driver { reload_command, .. } = entry.installer() else {
            return None;
        };
        let log = self.state.join("command.log");
        command::run(reload_command, self.options.health_check_timeout, &log)
            .err()
            .map(|reason| (reload_command.program().to_owned(), reason))
    }

    /// Removes leftovers of interrupted operations. Runs only with no operation in progress.
    fn sweep(&self) -> Result<(), Error> {
        let products = self.state.join("products");
        let names = std::fs::read_dir(&products).map_err(Error::io("read", &products))?;
        for name in names {
            let name = name.map_err(Error::io("read", &products))?.file_name();
            let Some(product) = name.to_str() else { continue };
            let product_dir = self.product_dir(product);
            remove_temporaries(&product_dir)?;
            remove_temporaries(&product_dir.join("records"))?;
            let staging = product_dir.join("staging");
            if staging.is_dir() {
                fs::remove_tree(&staging)?;
                DirBuilder::new().mode(0o755).create(&staging).map_err(Error::io("create", &staging))?;
            }
            let current = self.current_version(product)?;
            let records = self.records(product)?;
            for record in &records {
                if !self.version_dir(product, &record.version).is_dir() {
                    fs::remove_file(&self.record_path(product, &record.version))?;
                }
            }
            let versions = product_dir.join("versions");
            if let Ok(entries) = std::fs::read_dir(&versions) {
                for entry in entries {
                    let entry = entry.map_err(Error::io("read", &versions))?;
                    let version = entry.file_name().to_string_lossy().into_owned();
                    let recorded = records.iter().any(|r| r.version == version);
                    if !recorded && current.as_deref() != Some(version.as_str()) {
                        tracing::warn!(product, %version, "removing a version without a record");
                        fs::remove_tree(&entry.path())?;
                    }
                }
            }
        }
        remove_temporaries(&self.state.join("os"))?;
        remove_temporaries(&self.state)
    }

    // --- Destination links. ---

    /// Fails unless `destination` is absent or already this product's link.
    fn check_destination(&self, destination: &str, product: &str) -> Result<(), Error> {
        let path = Path::new(destination);
        match std::fs::symlink_metadata(path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(Error::io("inspect", path)(error)),
            Ok(_) if fs::read_link(path).ok().flatten() == Some(self.current_link(product)) => Ok(()),
            Ok(_) => Err(Error::DestinationInUse { destination: destination.to_owned(), product: product.to_owned() }),
        }
    }

    /// Makes `destination` a link to the product's `current` link.
    fn link_destination(&self, destination: &str, product: &str) -> Result<(), Error> {
        self.check_destination(destination, product)?;
        let path = Path::new(destination);
        if fs::read_link(path)?.is_some() {
            return Ok(());
        }
        let parent = fs::parent(path);
        DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(Error::io("create", parent))?;
        fs::swap_symlink(path, &self.current_link(product))
    }

    /// Removes `destination` if it is this product's link.
    fn unlink_destination(&self, destination: &str, product: &str) -> Result<(), Error> {
        let path = Path::new(destination);
        if fs::read_link(path)? == Some(self.current_link(product)) {
            fs::remove_file(path)?;
            fs::sync_dir(fs::parent(path))?;
        }
        Ok(())
    }

    // --- State. ---

    fn ensure_no_journal(&self) -> Result<(), Error> {
        match Journal::read(&self.journal_path())? {
            Some(journal) => Err(Error::RecoveryNeeded {
                operation: journal.operation().to_string(),
                product: journal.product().to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// The version the `current` link points at.
    fn current_version(&self, product: &str) -> Result<Option<String>, Error> {
        let link = self.current_link(product);
        Ok(fs::read_link(&link)?.and_then(|target| {
            let mut components = target.components();
            match (components.next(), components.next(), components.next()) {
                (Some(versions), Some(version), None) if versions.as_os_str() == "versions" => {
                    version.as_os_str().to_str().map(str::to_owned)
                }
                _ => None,
            }
        }))
    }

    /// Every record of the product (also those whose version directory is gone).
    fn records(&self, product: &str) -> Result<Vec<Record>, Error> {
        let dir = self.product_dir(product).join("records");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(Error::io("read", &dir)(error)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry.map_err(Error::io("read", &dir))?.path();
            if path.extension().is_some_and(|e| e == "json")
                && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
                && let Some(record) = Record::read(&path)?
            {
                records.push(record);
            }
        }
        Ok(records)
    }

    fn next_sequence(&self, product: &str) -> Result<u64, Error> {
        Ok(self.records(product)?.iter().map(|r| r.sequence).max().map_or(1, |s| s + 1))
    }

    fn next_slot_sequence(&self) -> Result<u64, Error> {
        let a = self.slot_record(Slot::A)?.map_or(0, |r| r.sequence);
        let b = self.slot_record(Slot::B)?.map_or(0, |r| r.sequence);
        Ok(a.max(b) + 1)
    }

    fn os_active(&self) -> Result<Option<Slot>, Error> {
        Ok(match fs::read_link(&self.os_active_link())? {
            Some(target) if target == Path::new("slot-a") => Some(Slot::A),
            Some(target) if target == Path::new("slot-b") => Some(Slot::B),
            _ => None,
        })
    }

    /// The product of the active OS slot.
    fn os_product(&self) -> Result<Option<String>, Error> {
        Ok(match self.os_active()? {
            Some(slot) => self.slot_record(slot)?.map(|r| r.product),
            None => None,
        })
    }

    fn slot_record(&self, slot: Slot) -> Result<Option<Record>, Error> {
        Record::read(&self.slot_record_path(slot))
    }

    fn append_history(
        &self,
        product: &str,
        event: Event,
        version: &str,
        other: Option<String>,
        detail: Option<String>,
    ) -> Result<(), Error> {
        let path = self.history_path(product);
        let dir = fs::parent(&path);
        DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(Error::io("create", dir))?;
        let event = HistoryEvent { time: now(), event, version: version.to_owned(), other, detail };
        // Invariant: a history event of strings and integers always serializes.
        let mut line = serde_json::to_vec(&event).expect("history event serializes");
        line.push(b'\n');
        let mut file =
            OpenOptions::new().create(true).append(true).mode(0o644).open(&path).map_err(Error::io("open", &path))?;
        file.write_all(&line).and_then(|()| file.sync_data()).map_err(Error::io("append to", &path))
    }

    fn journal_path(&self) -> PathBuf {
        self.state.join("journal.json")
    }

    fn product_dir(&self, product: &str) -> PathBuf {
        self.state.join("products").join(product)
    }

    fn current_link(&self, product: &str) -> PathBuf {
        self.product_dir(product).join("current")
    }

    fn version_dir(&self, product: &str, version: &str) -> PathBuf {
        self.product_dir(product).join("versions").join(version)
    }

    fn record_path(&self, product: &str, version: &str) -> PathBuf {
        self.product_dir(product).join("records").join(format!("{version}.json"))
    }

    fn staging_dir(&self, product: &str, version: &str) -> PathBuf {
        self.product_dir(product).join("staging").join(version)
    }

    fn history_path(&self, product: &str) -> PathBuf {
        self.product_dir(product).join("history.jsonl")
    }

    fn os_active_link(&self) -> PathBuf {
        self.state.join("os").join("active")
    }

    fn pending_path(&self) -> PathBuf {
        self.state.join("os").join("pending.json")
    }

    fn slot_record_path(&self, slot: Slot) -> PathBuf {
        self.state.join("os").join(format!("slot-{}.json", slot.as_str()))
    }
}

/// Removes the temporary names [`fs::write_atomic`] and [`fs::swap_symlink`] leave when interrupted
/// (`.<name>.tmp.<pid>.<n>`).
fn remove_temporaries(dir: &Path) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry.map_err(Error::io("read", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp.") {
            fs::remove_file(&entry.path())?;
        }
    }
    Ok(())
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
