//! The sans-I/O core of custody's signed metadata: The Update Framework (TUF) 1.0.
//!
//! Bytes and a reference time go in, verified values come out; this crate opens no socket, touches no file and reads
//! no clock. The I/O edges (the client in `custody-client`, the repository tool in `custody-repo`) drive it.
//!
//! The flow of trust:
//! - [`Metadata`] is what a parser made of untrusted bytes: its signatures have not been checked.
//! - [`TrustedSet`] runs the TUF client workflow (specification §5) over such bytes and only keeps metadata that
//!   passed every check; it hands out [`Verified`] references, which nothing outside this crate can construct.
//! - [`TargetSearch`] walks the delegation graph in the specification's pre-order depth-first order, asking its driver
//!   to load one delegated role at a time, and ends with a [`TrustedTarget`]: the signed length, hashes and custom
//!   metadata of one target path.
//! - [`TrustedTarget::verify`] turns downloaded bytes into a [`VerifiedContent`] only when length and every hash
//!   match.

mod canonical;
mod error;
mod keys;
mod metadata;
mod search;
pub mod snapshot_merkle;
mod trusted;

pub use canonical::to_canonical_json;
pub use error::Error;
pub use keys::{Key, KeyVal, PrivateKey, PrivateKeyKind};
pub use metadata::{
    DelegatedRole, Delegations, Hashes, MetaFile, Metadata, Role, RoleType, Root, Signature, Signed, Snapshot,
    SuccinctRoles, TargetFile, Targets, Timestamp, format_expires, parse_expires,
};
pub use search::{ListingStep, SearchStep, TargetListing, TargetSearch};
pub use trusted::{RoleLimits, TrustedSet, TrustedTarget, Verified, VerifiedContent};

/// Percent-encodes a role name (or file name) for use as one URL path segment or one local file name: everything but
/// ASCII letters, digits and `-._~` is escaped, so `/` and `?` can neither leave a directory nor end a path.
pub fn encode_path_segment(name: &str) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(name, SET).to_string()
}

/// The TUF specification version this crate writes, and whose major version it accepts.
pub const SPEC_VERSION: &str = "1.0.34";
