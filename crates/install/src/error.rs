//! The one error type of this crate. Every variant names the problem and what it concerns: the target, the
//! package entry, the product, the file.

use std::path::PathBuf;

use custody_catalog::NotApplicable;

/// What is wrong with a path inside a package (an entry's path or a hard link's target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathProblem {
    /// Starts with `/`.
    Absolute,
    /// Has a `..` component.
    ParentDir,
    /// Empty, or has an empty or `.` component (including a trailing `/` on a non-directory).
    NotNormalized,
    /// Not UTF-8, or has a NUL or another control character.
    BadCharacters,
    /// Longer than 4096 bytes, or a component longer than 255 bytes.
    TooLong,
    /// The manifest's own name, `custody-manifest.json`, used for a second entry.
    Reserved,
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Absolute => "is absolute",
            Self::ParentDir => "has a \"..\" component",
            Self::NotNormalized => "is not normalized (empty, \".\" or empty components)",
            Self::BadCharacters => "is not UTF-8 or has control characters",
            Self::TooLong => "is longer than 4096 bytes or has a component longer than 255 bytes",
            Self::Reserved => "is the manifest's reserved name",
        })
    }
}

/// The error type of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- Intention: is this the update the signed metadata names, for this device? ---
    /// The target's signed `custom` holds no (valid) catalog entry.
    #[error("target {path}: its signed custom metadata holds no valid custody catalog entry: {reason}")]
    NoCatalogEntry { path: String, reason: String },

    /// The catalog entry handed in is not the one signed in the target's `custom`.
    #[error("target {path}: the catalog entry given is not the one signed in this target's custom metadata")]
    EntryNotSigned { path: String },

    /// The target path's first segment is not the entry's product.
    #[error("target {path}: the path is not under the entry's product {product:?} (expected \"{product}/...\")")]
    ProductPath { path: String, product: String },

    /// The entry's `content` disagrees with the target's signed length or SHA-256.
    #[error("target {path}: the entry's content {field} {entry} differs from the signed target's {target}")]
    ContentMismatch { path: String, field: &'static str, entry: String, target: String },

    /// The target lists no SHA-256, or a listed hash is not hex of the algorithm's length.
    #[error("target {path}: signed hash {algorithm}: {problem}")]
    BadSignedHash { path: String, algorithm: String, problem: &'static str },

    /// The target lists a hash algorithm this build cannot check; the artifact is refused rather than checked
    /// partially.
    #[error("target {path}: hash algorithm {algorithm:?} is not supported (sha256, sha512); refusing the artifact")]
    UnsupportedHash { path: String, algorithm: String },

    /// The entry's applicability rules exclude this device.
    #[error("update {product} {version} does not apply to this device: {reason}")]
    NotApplicable { product: String, version: String, reason: Box<NotApplicable> },

    /// Prerequisites of the entry are not installed.
    #[error("update {product} {version}: prerequisites not installed: {missing}")]
    PrerequisitesMissing { product: String, version: String, missing: String },

    /// The file system lacks room for what is about to be written.
    #[error("not enough free space under {}: {needed} bytes needed, {available} available", path.display())]
    InsufficientSpace { path: PathBuf, needed: u64, available: u64 },

    // --- Download: bytes against the signed length and hashes. ---
    /// More bytes arrived than the signed length; the partial file was removed.
    #[error("target {path}: more than the signed length of {length} bytes received; download discarded")]
    TooLong { path: String, length: u64 },

    /// The download ended before the signed length; the partial file was removed.
    #[error("target {path}: {received} bytes received, the signed length is {length}; download discarded")]
    LengthMismatch { path: String, length: u64, received: u64 },

    /// A hash of the complete download differs from the signed one; the partial file was removed.
    #[error("target {path}: the {algorithm} of the download does not match the signed hash; download discarded")]
    HashMismatch { path: String, algorithm: String },

    /// A partial download on disk is longer than the signed length; it was removed.
    #[error("target {path}: the partial download has {found} bytes, more than the signed {length}; removed")]
    PartialTooLong { path: String, length: u64, found: u64 },

    /// The writer failed before (see the earlier error) and can no longer be used.
    #[error("target {path}: the download failed earlier; start again with ArtifactWriter::resume")]
    WriterFailed { path: String },

    // --- Packages: the archive against its manifest. ---
    /// The first entry of the archive is not `custody-manifest.json`.
    #[error("package: the first entry is {found:?}, expected the manifest custody-manifest.json")]
    ManifestMissing { found: String },

    /// The manifest is not valid.
    #[error("package manifest: {0}")]
    ManifestInvalid(String),

    /// The manifest names another product or version than the signed entry.
    #[error("package manifest is for {found}, the signed update is {expected}")]
    ManifestNotForUpdate { expected: String, found: String },

    /// An entry path (or hard link target) is unsafe.
    #[error("package entry {path:?}: the path {problem}")]
    UnsafePath { path: String, problem: PathProblem },

    /// An entry is a device node, FIFO, socket, sparse file or another type packages may not contain.
    #[error("package entry {path:?}: entry type {kind} is not allowed (only files, directories and links)")]
    ForbiddenEntryType { path: String, kind: String },

    /// A symbolic or hard link points outside the package root (or not at a regular file of the package).
    #[error("package entry {path:?}: link target {target:?} escapes the package root")]
    LinkEscape { path: String, target: String },

    /// A hard link's target is not a regular file of the package listed before it.
    #[error("package entry {path:?}: hard link target {target:?} is not an earlier regular file of the package")]
    HardLinkTarget { path: String, target: String },

    /// An archive entry is not in the manifest.
    #[error("package entry {path:?} is not in the manifest")]
    NotInManifest { path: String },

    /// An archive entry is in the manifest but not at this position.
    #[error("package entry {path:?} is out of order: the manifest lists {expected:?} next")]
    EntryOrder { path: String, expected: String },

    /// An archive entry differs from its manifest entry (type, link target, parent).
    #[error("package entry {path:?}: {problem}")]
    EntryMismatch { path: String, problem: String },

    /// An entry's size in the archive differs from the manifest's.
    #[error("package entry {path:?}: the archive holds {found} bytes, the manifest declares {declared}")]
    EntrySize { path: String, declared: u64, found: u64 },

    /// An entry's content does not have the manifest's SHA-256.
    #[error("package entry {path:?}: content does not match the manifest's sha256")]
    EntryHash { path: String },

    /// Reading the archive went past what the manifest allows (headers, extensions, content): an archive bomb.
    #[error("package: {what} exceeds its limit of {limit} bytes; reading stopped (archive bomb?)")]
    ArchiveBomb { what: String, limit: u64 },

    /// The archive ended before every manifest entry appeared.
    #[error("package: the archive ends before manifest entry {path:?} ({missing} entries missing)")]
    MissingEntries { path: String, missing: usize },

    /// The archive itself is malformed (tar or zstd).
    #[error("package: malformed archive: {0}")]
    Archive(String),

    // --- The install engine. ---
    /// Another installer holds the state directory's lock.
    #[error("{} is locked by another installer", path.display())]
    Locked { path: PathBuf },

    /// The active OS image waits for its boot to be confirmed; writing another would overwrite the only known-good
    /// slot.
    #[error(
        "OS image {product} {version} waits for confirmation after a reboot; reboot (or roll it back) before \
         installing another"
    )]
    OsUnconfirmed { product: String, version: String },

    /// An interrupted operation is journalled; [`crate::Installer::recover`] must run first.
    #[error("an interrupted {operation} of {product} is journalled; run recovery first")]
    RecoveryNeeded { operation: String, product: String },

    /// The journal or a state record cannot be read.
    #[error("{}: corrupt installer state: {reason}", path.display())]
    CorruptState { path: PathBuf, reason: String },

    /// The version is already the current one.
    #[error("{product} {version} is already installed and current")]
    AlreadyCurrent { product: String, version: String },

    /// The signed destination exists and is not this product's link.
    #[error("destination {destination} exists and is not the link to {product}'s installed version")]
    DestinationInUse { destination: String, product: String },

    /// The product is not installed.
    #[error("{product} is not installed")]
    NotInstalled { product: String },

    /// There is no earlier version to go back to.
    #[error("{product}: no previous version is kept to roll back to")]
    NothingToRollBack { product: String },

    /// The health check (post-install or reload command from signed metadata) failed; the previous version was
    /// restored.
    #[error("{product} {version}: health check failed ({reason}); {}", match restored {
        Some(previous) => format!("rolled back to {previous}"),
        None => "removed (no previous version)".to_owned(),
    })]
    HealthCheckFailed { product: String, version: String, reason: String, restored: Option<String> },

    /// A command from signed metadata failed outside an install (a driver reload after a rollback).
    #[error("{product}: command {program} failed: {reason}")]
    CommandFailed { product: String, program: String, reason: String },

    /// A decompressed OS image is larger than the configured slot size.
    #[error("OS image for {product} {version} exceeds the slot size of {limit} bytes")]
    ImageTooLarge { product: String, version: String, limit: u64 },

    /// The signed installer asks for something this engine does not do.
    #[error("{product} {version}: {what} is not supported by this install engine")]
    Unsupported { product: String, version: String, what: String },

    /// A file system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A closure mapping an `io::Error` to [`Error::Io`] for `action` on `path`.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { action, path, source }
    }
}
