//! [`Store`]: the one interface over both backends.

use std::path::Path;
use std::time::Duration;

use custody_catalog::UpdateId;
use jiff::Timestamp;
use serde::Serialize;

use crate::Error;
use crate::device::{
    Device, DeviceId, DeviceQuery, Enrollment, GroupName, Identity, IdentityKey, Inventory, NewDevice, StoredInventory,
};
use crate::enrollment::{
    CreatedEnrollmentToken, EnrollmentId, EnrollmentImport, EnrollmentToken, EnrollmentTokenId, ImportedEnrollment,
    ImportedEnrollmentToken, NewEnrollmentToken, Redemption,
};
use crate::event::{
    ComplianceQuery, ComplianceRow, ComplianceSummary, Event, GroupDelivery, RecordSummary, StoredEvent,
};
use crate::peer::{PeerAnnouncement, PeerCandidate, PeerReach};
use crate::publish::{NewPublishRecord, PublishQuery, PublishRecord};
use crate::sql::{PgStore, SqliteStore};
use crate::token::{AdminToken, CreatedAdminToken, Scope, TokenId};

/// The service's storage, on SQLite or PostgreSQL. Cloning is cheap (the pool is shared); every
/// future is `Send`.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Connection settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long an operation waits for a free connection.
    pub acquire_timeout: Duration,
    /// SQLite: how long a writer waits for another's transaction to finish.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { max_connections: 8, acquire_timeout: Duration::from_secs(30), busy_timeout: Duration::from_secs(5) }
    }
}

/// What [`Store::health`] reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// The latest migration applied.
    pub schema_version: i64,
}

/// Calls the same method on whichever backend `$store` is.
macro_rules! dispatch {
    ($store:expr, $inner:ident => $call:expr) => {
        match $store {
            Store::Sqlite($inner) => $call.await,
            Store::Postgres($inner) => $call.await,
        }
    };
}

impl Store {
    /// Opens the store a URL names: `sqlite:PATH` (`sqlite:///var/lib/custody/service.db`,
    /// created if missing) or `postgres://` / `postgresql://`. Applies pending migrations.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, Error> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            "sqlite" => Ok(Self::Sqlite(SqliteStore::open_url(url, options).await?)),
            "postgres" | "postgresql" => Ok(Self::Postgres(PgStore::connect(url, options).await?)),
            _ => Err(Error::UnsupportedUrl { scheme: scheme.to_owned() }),
        }
    }

    /// Opens (creating it if missing) a SQLite database file.
    pub async fn open_sqlite(path: &Path, options: &StoreOptions) -> Result<Self, Error> {
        Ok(Self::Sqlite(SqliteStore::open(path, options).await?))
    }

    /// The backend and schema version; fails if the database cannot be reached.
    pub async fn health(&self) -> Result<Health, Error> {
        dispatch!(self, s => s.health())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        dispatch!(self, s => s.close())
    }

    /// Enrolls a device; idempotent on its identity: enrolling an identity again returns the
    /// device it was enrolled as ([`Enrollment::Existing`]). A new identity with an id already
    /// in use fails with [`Error::DeviceIdTaken`].
    pub async fn enroll(&self, device: &NewDevice, now: Timestamp) -> Result<Enrollment, Error> {
        dispatch!(self, s => s.enroll(device, now))
    }

    /// Gives a device a new identity (a renewed certificate); the old one stops working.
    pub async fn replace_identity(&self, id: &DeviceId, identity: &Identity) -> Result<Device, Error> {
        dispatch!(self, s => s.replace_identity(id, identity))
    }

    /// Revokes a device (idempotent: keeps the first revocation time): it authenticates no more, and its peer
    /// announcements are withdrawn.
    pub async fn revoke_device(&self, id: &DeviceId, now: Timestamp) -> Result<Device, Error> {
        dispatch!(self, s => s.revoke_device(id, now))
    }

    pub async fn device(&self, id: &DeviceId) -> Result<Option<Device>, Error> {
        dispatch!(self, s => s.device(id))
    }

    /// The device that authenticates with `key`.
    pub async fn device_by_identity(&self, key: &IdentityKey) -> Result<Option<Device>, Error> {
        dispatch!(self, s => s.device_by_identity(key))
    }

    /// One page of devices in id order.
    pub async fn list_devices(&self, query: &DeviceQuery) -> Result<Vec<Device>, Error> {
        dispatch!(self, s => s.list_devices(query))
    }

    /// Replaces a device's inventory and marks it seen.
    pub async fn update_inventory(&self, id: &DeviceId, inventory: &Inventory, now: Timestamp) -> Result<(), Error> {
        dispatch!(self, s => s.update_inventory(id, inventory, now))
    }

    pub async fn inventory(&self, id: &DeviceId) -> Result<Option<StoredInventory>, Error> {
        dispatch!(self, s => s.inventory(id))
    }

    /// Records a device's events, all or none, and marks it seen. Idempotent on each event's
    /// id: an id stored before with the same content counts as a duplicate; with different
    /// content the batch is refused ([`Error::EventConflict`]).
    pub async fn record_events(
        &self,
        device: &DeviceId,
        events: &[Event],
        now: Timestamp,
    ) -> Result<RecordSummary, Error> {
        dispatch!(self, s => s.record_events(device, events, now))
    }

    /// A device's events, newest first, below `before` (the last `seq` of the previous page).
    pub async fn device_history(
        &self,
        device: &DeviceId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, Error> {
        dispatch!(self, s => s.device_history(device, before, limit))
    }

    /// Devices' states for one update, from each device's latest event about it.
    pub async fn compliance(&self, query: &ComplianceQuery) -> Result<Vec<ComplianceRow>, Error> {
        dispatch!(self, s => s.compliance(query))
    }

    /// Device counts per state for one update, over all devices or one group's.
    pub async fn compliance_summary(
        &self,
        update: &UpdateId,
        group: Option<&GroupName>,
    ) -> Result<ComplianceSummary, Error> {
        dispatch!(self, s => s.compliance_summary(update, group))
    }

    /// Summaries of every update any device reported about, in update id order.
    pub async fn compliance_overview(&self, group: Option<&GroupName>) -> Result<Vec<ComplianceSummary>, Error> {
        dispatch!(self, s => s.compliance_overview(group))
    }

    /// See [`SqlStore::delivery_by_group`].
    pub async fn delivery_by_group(&self) -> Result<Vec<GroupDelivery>, Error> {
        dispatch!(self, s => s.delivery_by_group())
    }

    pub async fn append_publish(&self, record: &NewPublishRecord, now: Timestamp) -> Result<PublishRecord, Error> {
        dispatch!(self, s => s.append_publish(record, now))
    }

    /// Publish records, newest first.
    pub async fn publish_history(&self, query: &PublishQuery) -> Result<Vec<PublishRecord>, Error> {
        dispatch!(self, s => s.publish_history(query))
    }

    /// Creates an admin token; its secret is in the result and nowhere else.
    pub async fn create_admin_token(
        &self,
        name: &str,
        scope: Scope,
        now: Timestamp,
    ) -> Result<CreatedAdminToken, Error> {
        dispatch!(self, s => s.create_admin_token(name, scope, now))
    }

    /// Checks a bearer token for a request that needs `needed` and notes its use.
    pub async fn verify_admin_token(&self, secret: &str, needed: Scope, now: Timestamp) -> Result<AdminToken, Error> {
        dispatch!(self, s => s.verify_admin_token(secret, needed, now))
    }

    /// All admin tokens, revoked ones included, oldest first.
    pub async fn admin_tokens(&self) -> Result<Vec<AdminToken>, Error> {
        dispatch!(self, s => s.admin_tokens())
    }

    /// Revokes an admin token (idempotent: keeps the first revocation time).
    pub async fn revoke_admin_token(&self, id: &TokenId, now: Timestamp) -> Result<AdminToken, Error> {
        dispatch!(self, s => s.revoke_admin_token(id, now))
    }

    /// Creates an enrollment token; its secret is in the result and nowhere else.
    pub async fn create_enrollment_token(
        &self,
        request: &NewEnrollmentToken,
        now: Timestamp,
    ) -> Result<CreatedEnrollmentToken, Error> {
        dispatch!(self, s => s.create_enrollment_token(request, now))
    }

    /// All enrollment tokens, revoked and expired ones included, oldest first.
    pub async fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>, Error> {
        dispatch!(self, s => s.enrollment_tokens())
    }

    /// Revokes an enrollment token (idempotent); devices enrolled with it stay enrolled.
    pub async fn revoke_enrollment_token(
        &self,
        id: &EnrollmentTokenId,
        now: Timestamp,
    ) -> Result<EnrollmentToken, Error> {
        dispatch!(self, s => s.revoke_enrollment_token(id, now))
    }

    /// Checks a presented enrollment token before the service issues the device an identity;
    /// tells whether this enrollment attempt went through before (a retry).
    pub async fn redeem_enrollment_token(
        &self,
        secret: &str,
        enrollment: &EnrollmentId,
        now: Timestamp,
    ) -> Result<Redemption, Error> {
        dispatch!(self, s => s.redeem_enrollment_token(secret, enrollment, now))
    }

    /// Enrolls a device with a redeemed token, all or nothing: checks the token again, uses it
    /// up by one and remembers the attempt, so that a retry returns the same device.
    pub async fn enroll_with_token(
        &self,
        token: &EnrollmentTokenId,
        enrollment: &EnrollmentId,
        device: &NewDevice,
        now: Timestamp,
    ) -> Result<Enrollment, Error> {
        dispatch!(self, s => s.enroll_with_token(token, enrollment, device, now))
    }

    /// Imports enrollment tokens and remembered enrollments from the service's former `enrollment.json`, all or
    /// nothing; importing again changes nothing.
    pub async fn import_enrollment_tokens(
        &self,
        tokens: &[ImportedEnrollmentToken],
        enrollments: &[ImportedEnrollment],
    ) -> Result<EnrollmentImport, Error> {
        dispatch!(self, s => s.import_enrollment_tokens(tokens, enrollments))
    }

    /// Records (or renews) a device's announcement for a content and returns up to `limit` live announcements of
    /// other, unrevoked devices for it within `reach` (cache servers and complete peers first).
    pub async fn announce_peer(
        &self,
        announcement: &PeerAnnouncement,
        reach: PeerReach,
        limit: u32,
        now: Timestamp,
    ) -> Result<Vec<PeerCandidate>, Error> {
        dispatch!(self, s => s.announce_peer(announcement, reach, limit, now))
    }
}
