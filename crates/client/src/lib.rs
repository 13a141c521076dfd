//! The TUF client's I/O edge: drives the sans-I/O [`custody_tuf::TrustedSet`] with bytes from a [`Fetcher`] and a
//! local metadata directory, following the client workflow of the TUF specification (§5).
//!
//! - Trusted metadata is persisted exactly as received, under unversioned names (`root.json`, `timestamp.json`,
//!   `snapshot.json`, `targets.json`, `<percent-encoded role>.json`), written atomically.
//! - Every download is capped: by the length that signed metadata gives, else by [`RoleLimits`].
//! - Delegated roles are loaded lazily, in the order a target search needs them.

mod error;
mod fetch;
mod store;
mod updater;

pub use custody_tuf::RoleLimits;
pub use error::Error;
pub use fetch::{FetchError, Fetcher, FileFetcher, HttpFetcher};
pub use store::MetadataDir;
pub use updater::{Updater, UpdaterConfig};

pub use custody_tuf::encode_path_segment as encode_role;
