use std::fmt;

/// Every way metadata or content can fail to be trusted.
///
/// Each variant names the role (or target) it concerns, so that a message explains itself without context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{role} metadata is not valid JSON: {source}")]
    Json {
        role: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{role} metadata is malformed: {reason}")]
    Malformed { role: String, reason: String },
    #[error("{role} metadata is of type {found:?}, expected {expected:?}")]
    WrongType { role: String, expected: &'static str, found: String },
    #[error("{role} metadata cannot be put in canonical JSON form: {reason}")]
    Canonical { role: String, reason: String },
    #[error("{role} metadata has {valid} valid signature(s) from its keys, {threshold} required")]
    Threshold { role: String, valid: usize, threshold: u32 },
    #[error("{role} metadata has version {found}, expected {expected}")]
    VersionMismatch { role: String, expected: u64, found: u64 },
    #[error("{role} metadata version {found} is lower than the trusted version {trusted} (rollback)")]
    Rollback { role: String, trusted: u64, found: u64 },
    #[error("timestamp version {0} equals the trusted version: nothing changed")]
    EqualTimestampVersion(u64),
    #[error("{role} metadata expired at {expires}")]
    Expired { role: String, expires: Expiry },
    #[error("{what} is {found} bytes, longer than the allowed {limit}")]
    TooLong { what: String, limit: u64, found: u64 },
    #[error("{what} has length {found}, signed length is {expected}")]
    LengthMismatch { what: String, expected: u64, found: u64 },
    #[error("{what} does not match its signed {algorithm} hash")]
    HashMismatch { what: String, algorithm: String },
    #[error("{what} lists the unsupported hash algorithm {algorithm:?}")]
    UnsupportedHash { what: String, algorithm: String },
    #[error("snapshot does not list {0}")]
    NotInSnapshot(String),
    #[error("new snapshot no longer lists {0}, which the trusted snapshot listed")]
    RemovedFromSnapshot(String),
    #[error("role {role:?} is not delegated by {delegator:?}")]
    NotDelegated { role: String, delegator: String },
    #[error("{0} must be loaded first")]
    OutOfOrder(&'static str),
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    #[error("key is malformed: {0}")]
    BadKey(String),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// An expiry time, shown in the metadata's own format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry(pub jiff::Timestamp);

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::format_expires(self.0))
    }
}

impl Error {
    pub(crate) fn malformed(role: &str, reason: impl Into<String>) -> Self {
        Self::Malformed { role: role.to_owned(), reason: reason.into() }
    }
}
