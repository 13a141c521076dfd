//! The storage of the custody update service: enrolled devices and enrollment tokens, device
//! inventory and reports, per-update compliance, publish history, admin tokens, and the peer
//! announcements of peer-to-peer delivery.
//!
//! [`Store`] is the one interface. It is an enum over the two backends, [`SqliteStore`] (the
//! embedded default, WAL) and [`PgStore`] (several service nodes sharing one database); both are
//! the same code, [`SqlStore`], instantiated for each sqlx driver. Opening a store applies the
//! versioned migrations of `migrations/<backend>/` and refuses a database whose schema is newer
//! than this build ([`Error::SchemaTooNew`]).
//!
//! Every operation that stamps a time takes `now` from the caller; the store reads no clock.
//! Input is validated here too (lengths, counts, character sets), so that a caller that forgets
//! a check cannot store an unbounded value. The schema and the backends are described in
//! `docs/store.md`.
//!
//! Why an enum and not a trait: the set of backends is closed and known at compile time, so an
//! enum gives the service one concrete, `Clone`, `Send` type with static dispatch and no boxed
//! futures; `async fn` in a trait would not be object-safe (`dyn Store` impossible) and a
//! generic service would gain nothing over the enum.

mod device;
mod enrollment;
mod event;
mod peer;
mod publish;
mod sql;
mod store;
mod text;
mod token;

pub use device::{
    CertSerial, Device, DeviceId, DeviceName, DeviceQuery, Enrollment, GroupName, Identity, IdentityKey, Inventory,
    Labels, NewDevice, Sha256, StoredInventory,
};
pub use enrollment::{
    CreatedEnrollmentToken, EnrollmentId, EnrollmentImport, EnrollmentToken, EnrollmentTokenId, ImportedEnrollment,
    ImportedEnrollmentToken, MAX_ENROLLMENT_USES, NewEnrollmentToken, Redemption,
};
pub use event::{
    ComplianceQuery, ComplianceRow, ComplianceState, ComplianceSummary, Delivery, Event, EventId, EventKind,
    GroupDelivery, KindParts, Operation, RecordSummary, RecoveryOutcome, RollbackReason, ScanResult, StoredEvent,
    UpdateRef,
};
pub use peer::{PeerAnnouncement, PeerCandidate, PeerNetwork, PeerReach};
pub use publish::{NewPublishRecord, PublishAction, PublishQuery, PublishRecord};
pub use sql::{Backend, PgStore, SqlStore, SqliteStore};
pub use store::{Health, Store, StoreOptions};
pub use token::{AdminToken, CreatedAdminToken, Scope, TokenId, TokenSecret};

/// Size bounds enforced on everything a device or an admin sends.
pub mod limits {
    /// Events accepted in one [`Store::record_events`](crate::Store::record_events) call.
    pub const MAX_EVENTS_PER_BATCH: usize = 500;
    /// Bytes of an event's free-text detail.
    pub const MAX_EVENT_DETAIL: usize = 2048;
    /// Installed products in one inventory.
    pub const MAX_PRODUCTS: usize = 1024;
    /// Hardware ids in one inventory.
    pub const MAX_HARDWARE_IDS: usize = 4096;
    /// Installed update ids in one inventory.
    pub const MAX_INSTALLED_UPDATES: usize = 16384;
    /// Labels on one device.
    pub const MAX_LABELS: usize = 64;
    /// Bytes of a publish record's detail.
    pub const MAX_PUBLISH_DETAIL: usize = 4096;
    /// Rows returned by one page of a listing.
    pub const MAX_PAGE: u32 = 1000;
    /// Interface addresses in one peer announcement.
    pub const MAX_PEER_ADDRESSES: usize = 16;
    /// Announcements one [`Store::announce_peer`](crate::Store::announce_peer) call returns.
    pub const MAX_PEER_CANDIDATES: u32 = 1000;
}

/// The error type of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value given to the store is invalid: too long, too many, or with characters that are
    /// not allowed.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },

    /// The store URL names no supported backend. Only the scheme is kept: the URL may hold a
    /// password.
    #[error("unsupported store URL scheme {scheme:?}: expected sqlite:PATH, postgres://... or postgresql://...")]
    UnsupportedUrl { scheme: String },

    /// A PostgreSQL URL names a database on another host without `sslmode=verify-full` (or an
    /// explicit `sslmode=disable`).
    #[error(
        "the database host {host} is not local: add sslmode=verify-full&sslrootcert=CA.pem to the URL \
         (or sslmode=disable if the network is protected otherwise)"
    )]
    UnverifiedDatabase { host: String },

    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,

    /// No device has this id.
    #[error("unknown device {0}")]
    UnknownDevice(DeviceId),

    /// Enrollment asked for a device id that is already enrolled with another identity.
    #[error("device id {0} is already enrolled with another identity")]
    DeviceIdTaken(DeviceId),

    /// A new identity for a device is already the identity of another device.
    #[error("the identity is already enrolled as device {0}")]
    IdentityTaken(DeviceId),

    /// An event id was recorded before with different content. The whole batch was refused.
    #[error("event {event_id} of device {device} was already recorded with different content")]
    EventConflict { device: DeviceId, event_id: EventId },

    /// An admin token is malformed, unknown, or its secret does not match. Deliberately says
    /// nothing more.
    #[error("the admin token is not valid")]
    TokenInvalid,

    /// The admin token was revoked.
    #[error("admin token {id} ({name}) was revoked")]
    TokenRevoked { id: TokenId, name: String },

    /// The admin token's scope does not allow the request.
    #[error("admin token {id} ({name}) has scope {has}; the request needs {needs}")]
    TokenScope { id: TokenId, name: String, has: Scope, needs: Scope },

    /// An enrollment token is malformed, unknown, wrong, revoked, expired or used up.
    /// Deliberately says nothing more.
    #[error("the enrollment token is unknown, expired, revoked or used up")]
    EnrollmentTokenRefused,

    /// No enrollment token has this id.
    #[error("unknown enrollment token {0}")]
    UnknownEnrollmentToken(EnrollmentTokenId),

    /// Another request for the same enrollment attempt finished first; retrying returns its
    /// device.
    #[error("enrollment {0} is being completed by another request; retry it")]
    EnrollmentInProgress(EnrollmentId),

    /// The device was revoked: it authenticates no more and takes no part in peer-to-peer delivery.
    #[error("device {0} was revoked")]
    DeviceRevoked(DeviceId),

    /// No admin token has this id.
    #[error("unknown admin token {0}")]
    UnknownToken(TokenId),

    /// The database was migrated by a newer build of custody.
    #[error(
        "the database has schema version {database}, newer than this build supports ({supported}); \
         run a custody release that supports it"
    )]
    SchemaTooNew { database: i64, supported: i64 },

    /// A migration this build applied before has different SQL now: the database may not
    /// have the schema this build expects.
    #[error("migration {version} was changed after it was applied to this database; restore its SQL")]
    MigrationChanged { version: i64 },

    /// Applying a migration failed; it was rolled back.
    #[error("applying migration {version} failed")]
    Migration {
        version: i64,
        #[source]
        source: sqlx::Error,
    },

    /// The database refused or failed an operation.
    #[error("database error")]
    Database(#[from] sqlx::Error),

    /// A stored row cannot be read back as the type it should be (edited by hand, or written by
    /// an incompatible build).
    #[error("corrupt stored {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
}

impl Error {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid { what, reason: reason.into() }
    }

    pub(crate) fn corrupt(what: &'static str, reason: impl ToString) -> Self {
        Self::Corrupt { what, reason: reason.to_string() }
    }
}
