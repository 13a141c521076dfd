//! The write-ahead journal: one operation at a time, its intent written (and fsynced) before each step that changes
//! what is installed, so that [`crate::Installer::recover`] can finish or undo it after a crash.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Operation, Slot, UpdateKey, fs};

/// How far an install got. Ordered: each phase is written before the step it names starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Phase {
    /// The package is being extracted (or the image written) into a place nothing uses.
    Staging,
    /// The new version is complete and durable, and not in use.
    Staged,
    /// The switch to the new version is under way: the link (or slot marker) may point at either version.
    Switching,
    /// The link points at the new version; the health check has not passed yet.
    Switched,
    /// The health check passed: the install stands. Left: pruning old versions, removing the download.
    Done,
}

/// The operation in progress. `update` names the update of the version the operation concerns (the signed
/// catalog entry's id and revision), so that recovery can say which update it finished or undid; journals written
/// before it existed have none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "kebab-case")]
pub(crate) enum Journal {
    /// Installing `version` of a product whose files live in a versioned tree (`app`, `store-app`, `driver`,
    /// `definitions`). Undone unless `Done`.
    Install {
        product: String,
        version: String,
        previous: Option<String>,
        /// The signed destination link, if the kind has one.
        destination: Option<String>,
        /// How many previous versions to keep once done.
        keep: u32,
        artifact: PathBuf,
        phase: Phase,
        #[serde(default)]
        update: Option<UpdateKey>,
    },
    /// Writing an OS image to `slot` and making it the active slot. Undone unless `Done`.
    OsInstall {
        product: String,
        version: String,
        slot: Slot,
        previous: Option<Slot>,
        artifact: PathBuf,
        phase: Phase,
        #[serde(default)]
        update: Option<UpdateKey>,
    },
    /// Going back from version `from` to `to`. Completed by recovery.
    Rollback {
        product: String,
        from: String,
        to: String,
        #[serde(default)]
        update: Option<UpdateKey>,
    },
    /// Switching the active OS slot back. Completed by recovery. `boot_failure` says why the image of `from` was
    /// given up after a reboot (absent: a rollback on request).
    OsRollback {
        product: String,
        from: Slot,
        to: Slot,
        #[serde(default)]
        update: Option<UpdateKey>,
        #[serde(default)]
        boot_failure: Option<String>,
    },
    /// Removing `version` (the current one) of a product, and its destination link. Completed by recovery.
    Uninstall {
        product: String,
        version: String,
        destination: Option<String>,
        #[serde(default)]
        update: Option<UpdateKey>,
    },
    /// Confirming the OS image `version` in `slot` after it booted and passed its check: it stands. Completed by
    /// recovery.
    OsConfirm {
        product: String,
        version: String,
        slot: Slot,
        #[serde(default)]
        update: Option<UpdateKey>,
    },
}

impl Journal {
    pub(crate) fn product(&self) -> &str {
        match self {
            Self::Install { product, .. }
            | Self::OsInstall { product, .. }
            | Self::Rollback { product, .. }
            | Self::OsRollback { product, .. }
            | Self::Uninstall { product, .. }
            | Self::OsConfirm { product, .. } => product,
        }
    }

    pub(crate) fn operation(&self) -> Operation {
        match self {
            Self::Install { .. } => Operation::Install,
            Self::OsInstall { .. } => Operation::OsInstall,
            Self::Rollback { .. } => Operation::Rollback,
            Self::OsRollback { .. } => Operation::OsRollback,
            Self::Uninstall { .. } => Operation::Uninstall,
            Self::OsConfirm { .. } => Operation::OsConfirm,
        }
    }

    /// The update of the version the operation concerns, if the journal names it.
    pub(crate) fn update(&self) -> Option<UpdateKey> {
        match self {
            Self::Install { update, .. }
            | Self::OsInstall { update, .. }
            | Self::Rollback { update, .. }
            | Self::OsRollback { update, .. }
            | Self::Uninstall { update, .. }
            | Self::OsConfirm { update, .. } => *update,
        }
    }

    /// The same operation at `phase` (for the operations that have phases).
    pub(crate) fn at(&self, next: Phase) -> Self {
        let mut journal = self.clone();
        if let Self::Install { phase, .. } | Self::OsInstall { phase, .. } = &mut journal {
            *phase = next;
        }
        journal
    }

    /// Reads the journal; `None` when no operation is in progress.
    pub(crate) fn read(path: &Path) -> Result<Option<Self>, Error> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::io("read", path)(error)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::CorruptState { path: path.to_owned(), reason: e.to_string() })
    }

    /// Replaces the journal durably (write, fsync, rename, fsync the directory).
    pub(crate) fn write(&self, path: &Path) -> Result<(), Error> {
        // Invariant: the journal holds only strings, integers and enums; it always serializes.
        let bytes = serde_json::to_vec(self).expect("journal serializes");
        fs::write_atomic(path, &bytes)
    }

    /// Ends the operation: removes the journal durably.
    pub(crate) fn clear(path: &Path) -> Result<(), Error> {
        fs::remove_file(path)?;
        fs::sync_dir(fs::parent(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_phases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.json");
        assert_eq!(Journal::read(&path).unwrap(), None);
        let journal = Journal::Install {
            product: "acme".into(),
            version: "2.0".into(),
            previous: Some("1.0".into()),
            destination: None,
            keep: 2,
            artifact: "/var/lib/x.download".into(),
            phase: Phase::Staging,
            update: None,
        };
        journal.write(&path).unwrap();
        assert_eq!(Journal::read(&path).unwrap(), Some(journal.clone()));
        journal.at(Phase::Switched).write(&path).unwrap();
        assert!(matches!(Journal::read(&path).unwrap(), Some(Journal::Install { phase: Phase::Switched, .. })));
        assert!(Phase::Staged < Phase::Switching && Phase::Switched < Phase::Done);
        Journal::clear(&path).unwrap();
        assert_eq!(Journal::read(&path).unwrap(), None);

        // A journal written before `update` existed still reads.
        let older = br#"{"operation":"rollback","product":"acme","from":"2.0","to":"1.0"}"#;
        std::fs::write(&path, older).unwrap();
        assert!(matches!(Journal::read(&path).unwrap(), Some(Journal::Rollback { update: None, .. })));

        std::fs::write(&path, b"{\"operation\":\"format-disk\"}").unwrap();
        assert!(matches!(Journal::read(&path), Err(Error::CorruptState { .. })));
    }
}
