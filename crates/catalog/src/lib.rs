//! The custody update catalog: the typed model of one update, carried in the `custom` field of
//! its TUF target, and the piece hash tree that peer-to-peer delivery verifies pieces against.
//!
//! The crate is sans-I/O: values and bytes in, values out. Entry points:
//!
//! - [`UpdateEntry::parse`] / [`UpdateEntry::parse_slice`]: a TUF target's `custom` object
//!   (`{"custody": {"schema": 1, ...}}`) into an [`UpdateEntry`]; every error names the field
//!   path (`custody.applicability.os.version_range.min: ...`). These are the fuzzing entries.
//! - [`UpdateEntry::to_custom_json`]: back to the same JSON.
//! - [`UpdateEntry::from_description`]: an operator-written [`UpdateDescription`] (from TOML or
//!   JSON) plus the [`ContentInfo`] computed by [`ContentHasher`] into an entry.
//! - [`Applicability::evaluate`]: does this entry apply to a [`DeviceInventory`]?
//! - [`pieces`]: the BEP 52 SHA-256 piece tree: build it, verify a piece against the signed
//!   root with the piece layer or with a Merkle proof, produce proofs.
//!
//! The schema is documented in `docs/catalog.md`.

mod applicability;
mod content;
mod entry;
mod installer;
mod json;
pub mod pieces;
mod version;

use core::fmt;

pub use applicability::{
    Applicability, Arch, DeviceInventory, Evaluation, HardwareId, NotApplicable, OsFamily, OsRequirement, ProductName,
    ProductRequirement,
};
pub use content::{ContentHasher, ContentInfo, HashTreeKind, PieceInfo};
pub use entry::{
    Classification, Kind, NAMESPACE, Prerequisite, Reboot, SCHEMA, Severity, UpdateDescription, UpdateEntry, UpdateId,
};
pub use installer::{AbsPath, ArchiveFormat, Argv, Handler, ImageFormat, Installer, SlotLayout};
pub use pieces::Sha256Digest;
pub use version::{Version, VersionRange};

/// The error type of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input bytes are not JSON.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// A field of the catalog JSON is missing, unknown, of the wrong type or invalid.
    ///
    /// `path` is the field's path from the top of the parsed value, such as
    /// `custody.applicability.os.version_range.min` or `custody.installer.reload_command[0]`.
    #[error("{path}: {problem}")]
    Field { path: String, problem: Problem },

    /// The entry is written in a newer schema than this build understands.
    #[error("custody.schema: unsupported catalog schema {found}; this build supports schema {supported}")]
    UnsupportedSchema { found: u64, supported: u64 },

    /// A value built outside JSON (with `FromStr` or a `new` function) is invalid.
    #[error("invalid {what}: {reason}")]
    Value { what: &'static str, reason: String },

    /// A piece tree was requested for empty content.
    #[error("content is empty; a piece tree needs at least one byte")]
    EmptyContent,

    /// A piece index is not below the number of pieces.
    #[error("piece index {index} is out of range; the content has {count} pieces")]
    PieceIndex { index: u64, count: u64 },

    /// A piece's data has the wrong length for its index.
    #[error("piece {index} has {actual} bytes, expected {expected}")]
    PieceLength { index: u64, expected: u64, actual: u64 },

    /// A piece's data does not hash to the expected value (with a proof: the data or the proof
    /// is wrong; both come from the sender).
    #[error("piece {index} does not match the piece tree")]
    PieceHash { index: u64 },

    /// A piece layer has the wrong number of hashes.
    #[error("piece layer has {actual} hashes, expected {expected}")]
    LayerLength { expected: u64, actual: u64 },

    /// A piece layer does not hash up to the signed root.
    #[error("piece layer does not match the piece tree root")]
    LayerRoot,

    /// A Merkle proof has the wrong number of sibling hashes.
    #[error("proof has {actual} hashes, expected {expected}")]
    ProofLength { expected: u64, actual: u64 },
}

/// What is wrong with a field, in [`Error::Field`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A required field is absent.
    Missing,
    /// The field is not part of the schema.
    Unknown,
    /// The field has the wrong JSON type; the value names the expected one.
    Type(&'static str),
    /// The field has the right type but an invalid value.
    Invalid(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("missing"),
            Self::Unknown => f.write_str("unknown field"),
            Self::Type(expected) => write!(f, "expected {expected}"),
            Self::Invalid(reason) => f.write_str(reason),
        }
    }
}
