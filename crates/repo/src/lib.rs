//! The publisher's side of custody: a TUF repository on disk, and the operations that change it.
//!
//! A [`Repository`] is a directory (layout in `docs/repository.md`):
//! - `repo.toml`: expiry periods, which private key file holds which key id, and the delegations this tool made;
//! - `keys/`: private keys, PKCS#8 PEM, mode 0600, optionally encrypted with a passphrase ([`keys`]);
//! - `metadata/`: what clients download: consistent snapshots (`N.root.json`, `N.targets.json`, `N.<role>.json`,
//!   `N.snapshot.json`), `timestamp.json`, a copy of the newest root as `root.json`, and snapshot Merkle proofs;
//! - `targets/`: target files under their consistent names, `dir/HASH.name` for every listed hash;
//! - `staged/`: metadata that changed but lacks signatures (a threshold of its keys has not signed yet).
//!
//! Every operation ([`Repository::init`], [`Repository::add_targets`], [`Repository::remove_targets`],
//! [`Repository::delegate`], [`Repository::rotate`], [`Repository::sign`], [`Repository::refresh`]) works on a
//! draft in memory, signs it with the keys it can reach, and then either publishes every changed role together with a
//! new snapshot and timestamp, or — when some role still lacks signatures — stores the draft in `staged/` and
//! publishes nothing, reporting which keys must still sign ([`Outcome`]). Files are written first and
//! `timestamp.json` last, so a client sees either the old or the new repository; a failed operation undoes what it
//! wrote. [`Repository::verify`] loads the published repository as a client would and reports every problem.

mod config;
pub mod keys;
mod layout;
mod repository;
mod verify;

use std::path::PathBuf;

pub use config::{Config, DelegationConfig, Expiry, ExpiryConfig};
pub use keys::{KeySpec, Passphrase};
pub use layout::encode_role_name;
pub use repository::{
    AddTarget, DelegateOptions, DelegationKind, InitOptions, MissingSignatures, Outcome, Repository, RoleStatus,
    SignatureKey, Status,
};
pub use verify::{Problem, Report, Severity};

/// Every way a repository operation can fail. Each names the file, role or target it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Metadata {
        path: PathBuf,
        #[source]
        source: custody_tuf::Error,
    },
    #[error("{0}")]
    Tuf(#[from] custody_tuf::Error),
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("key file {path} is encrypted and no passphrase was given")]
    PassphraseNeeded { path: PathBuf },
    #[error("key file {path}: wrong passphrase, or the file was altered")]
    WrongPassphrase { path: PathBuf },
    #[error("passphrase: {0}")]
    Passphrase(String),
    #[error("{0} already holds a repository (repo.toml exists)")]
    AlreadyExists(PathBuf),
    #[error("{0} is not a repository: repo.toml is missing")]
    NotARepository(PathBuf),
    #[error("no role {0:?} in this repository")]
    UnknownRole(String),
    #[error("target {0:?} is not listed by any role")]
    UnknownTarget(String),
    #[error("target path {path:?} is not allowed: {reason}")]
    TargetPath { path: String, reason: &'static str },
    #[error("target {path:?}: custom metadata is not a custody catalog entry: {source}")]
    Catalog {
        path: String,
        #[source]
        source: custody_catalog::Error,
    },
    #[error("role {role:?} does not cover target {path:?}: a client would never look for it there")]
    NotDelegatedPath { role: String, path: String },
    #[error("{role} cannot be signed: {reason}")]
    OnlineKeys { role: String, reason: String },
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn metadata(path: impl Into<PathBuf>) -> impl FnOnce(custody_tuf::Error) -> Self {
        let path = path.into();
        move |source| Self::Metadata { path, source }
    }
}
