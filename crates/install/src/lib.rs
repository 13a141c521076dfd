//! custody's install side: verified artifacts and the install engine.
//!
//! - [`ArtifactWriter`] turns downloaded bytes into a [`VerifiedArtifact`]: intention is checked before the first
//!   byte (the catalog entry is the one signed for this target, its content matches the signed length and SHA-256,
//!   it applies to this device, the download fits on disk), every signed hash is computed while writing, and only a
//!   complete, matching download becomes a `VerifiedArtifact`. Nothing else constructs one.
//!   [`VerifiedFile`] is a file checked against the signed length and every signed hash without the intention
//!   check (content a peer cache server keeps for other devices): it cannot be installed.
//! - [`Installer`] takes only `VerifiedArtifact`s. It installs each product into its own root with a journal and an
//!   atomic switch, so that a crash at any point leaves the old or the new version complete and
//!   [`Installer::recover`] finishes or undoes the operation; it runs the signed health check, rolls back, keeps
//!   previous versions, writes OS images to the inactive of two slots.
//! - [`PackageBuilder`], [`Manifest`]: the package format (tar, optionally zstd-compressed, with a manifest), whose
//!   extraction refuses traversal, link escapes, device nodes and archive bombs.
//!
//! Formats, layout, journal phases and recovery are documented in docs/packages.md.

mod artifact;
mod engine;
mod error;
mod fs;
mod package;

pub use artifact::{ArtifactWriter, VerifiedArtifact, VerifiedFile};
pub use engine::{
    Event, HistoryEvent, InstallOutcome, InstalledVersion, Installer, Operation, Options, OsBoot, OsPending, OsSlot,
    OsStatus, Recovered, RecoveryOutcome, RollbackOutcome, Slot, UninstallOutcome, UpdateKey,
};
pub use error::{Error, PathProblem};
pub use package::{
    MANIFEST_NAME, MANIFEST_SCHEMA, MAX_ENTRIES, MAX_HEADER_BYTES, MAX_MANIFEST_BYTES, Manifest, ManifestEntry, Mode,
    PackageBuilder,
};

#[cfg(test)]
mod tests {
    /// The agent drives downloads and installs from async tasks (`spawn_blocking`): the types must be `Send`.
    #[test]
    fn types_are_send() {
        fn send<T: Send>() {}
        send::<crate::ArtifactWriter>();
        send::<crate::VerifiedArtifact>();
        send::<crate::VerifiedFile>();
        send::<crate::Installer>();
        send::<crate::Error>();
    }
}
