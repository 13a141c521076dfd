//! The store's operations, written once over sqlx and instantiated for SQLite and PostgreSQL.
//!
//! The SQL is shared: `$N` placeholders, `ON CONFLICT`, `RETURNING` and `CASE` mean the same on
//! both. Only the DDL ([`Backend::MIGRATIONS`]) and how a write transaction starts differ.
//! Columns hold only integers (`i64`) and text, so that both drivers map them the same way.

use core::future::Future;
use core::str::FromStr;
use std::net::IpAddr;
use std::path::Path;

use custody_catalog::UpdateId;
use jiff::{SignedDuration, Timestamp};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Postgres, Row, Sqlite, Transaction, Type,
};

use crate::device::{
    CertSerial, Device, DeviceId, DeviceQuery, Enrollment, GroupName, Identity, IdentityKey, Inventory, Labels,
    NewDevice, Sha256, StoredInventory,
};
use crate::enrollment::{
    CreatedEnrollmentToken, ENROLL_PREFIX, EnrollmentId, EnrollmentImport, EnrollmentToken, EnrollmentTokenId,
    ImportedEnrollment, ImportedEnrollmentToken, NewEnrollmentToken, Redemption,
};
use crate::event::{
    ComplianceQuery, ComplianceRow, ComplianceState, ComplianceSummary, Delivery, Event, EventKind, GroupDelivery,
    KindParts, RecordSummary, StoredEvent, UpdateRef,
};
use crate::publish::{NewPublishRecord, PublishQuery, PublishRecord};
use crate::store::{Health, StoreOptions};
use crate::token::{ADMIN_PREFIX, AdminToken, CreatedAdminToken, Scope, TokenId, TokenSecret};
use crate::{Error, limits};

/// The columns [`event_from_row`] reads.
macro_rules! event_columns {
    () => {
        "seq, device_id, event_id, kind, scan_result, error_code, update_id, revision, at, received_at, detail, \
         product, from_version, to_version, reason, operation, outcome, from_http, from_cache_server, \
         from_lan_peers, from_group_peers, from_internet_peers, to_peers"
    };
}

/// The store on one backend. Cloning is cheap (the pool is shared).
#[derive(Debug)]
pub struct SqlStore<B: Backend> {
    pub(crate) pool: Pool<B>,
}

/// The embedded store: one SQLite file in WAL mode.
pub type SqliteStore = SqlStore<Sqlite>;

/// The shared store: a PostgreSQL database that several service nodes use at once.
pub type PgStore = SqlStore<Postgres>;

/// What differs between the backends. Implemented for [`Sqlite`] and [`Postgres`] only.
pub trait Backend: Database + sealed::Sealed {
    /// `sqlite` or `postgres`.
    const BACKEND_NAME: &'static str;

    /// The versioned migrations, in order: (version, description, SQL).
    const MIGRATIONS: &'static [(i64, &'static str, &'static str)];

    /// Starts a transaction that will write.
    fn begin_write(pool: &Pool<Self>) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send;

    /// Starts the migration transaction: it excludes every other migration of the database
    /// until it ends, so that nodes starting together apply each migration once.
    fn begin_migration(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Sqlite {}
    impl Sealed for sqlx::Postgres {}
}

impl Backend for Sqlite {
    const BACKEND_NAME: &'static str = "sqlite";
    const MIGRATIONS: &'static [(i64, &'static str, &'static str)] = &[
        (1, "initial", include_str!("../migrations/sqlite/0001_initial.sql")),
        (2, "enrollment tokens", include_str!("../migrations/sqlite/0002_enrollment_tokens.sql")),
        (3, "revocation and peers", include_str!("../migrations/sqlite/0003_revocation_and_peers.sql")),
        (4, "device events", include_str!("../migrations/sqlite/0004_device_events.sql")),
    ];

    /// `BEGIN IMMEDIATE` takes the write lock at once (waiting up to the busy timeout). A
    /// deferred transaction that reads first and writes later fails with SQLITE_BUSY, without
    /// waiting, when another connection wrote in between.
    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// The write lock excludes other writers, migrations included.
    async fn begin_migration(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }
}

impl Backend for Postgres {
    const BACKEND_NAME: &'static str = "postgres";
    const MIGRATIONS: &'static [(i64, &'static str, &'static str)] = &[
        (1, "initial", include_str!("../migrations/postgres/0001_initial.sql")),
        (2, "enrollment tokens", include_str!("../migrations/postgres/0002_enrollment_tokens.sql")),
        (3, "revocation and peers", include_str!("../migrations/postgres/0003_revocation_and_peers.sql")),
        (4, "device events", include_str!("../migrations/postgres/0004_device_events.sql")),
    ];

    /// READ COMMITTED. Writers that touch one device serialize on its `devices` row, which
    /// every device write updates first.
    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin().await
    }

    /// A transaction-scoped advisory lock (released at commit or rollback), taken before the
    /// migrations table is even created.
    async fn begin_migration(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        /// "custody\x01" as a big-endian integer: the lock's id in this database.
        const MIGRATION_LOCK: i64 = 0x6375_7374_6f64_7901;
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await?;
        Ok(tx)
    }
}

impl<B: Backend> Clone for SqlStore<B> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone() }
    }
}

impl SqlStore<Sqlite> {
    /// Opens (creating it if missing) the SQLite database at `path` and migrates it.
    pub async fn open(path: &Path, options: &StoreOptions) -> Result<Self, Error> {
        Self::open_with(SqliteConnectOptions::new().filename(path), options).await
    }

    /// Opens a `sqlite:PATH` URL (`sqlite:///var/lib/custody/service.db`) and migrates it.
    pub async fn open_url(url: &str, options: &StoreOptions) -> Result<Self, Error> {
        Self::open_with(SqliteConnectOptions::from_str(url)?, options).await
    }

    /// WAL lets readers proceed while one writer commits; `synchronous = FULL` syncs the WAL
    /// at every commit, so an acknowledged report survives a power loss.
    ///
    /// Several processes may open one new file at once. Switching a fresh database to WAL takes
    /// an exclusive lock for which SQLite does not always call its busy handler, so such an
    /// opener can get `SQLITE_BUSY` at once: the whole open is then tried again until the busy
    /// timeout has passed.
    async fn open_with(connect: SqliteConnectOptions, options: &StoreOptions) -> Result<Self, Error> {
        let connect = connect
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout);
        let deadline = std::time::Instant::now() + options.busy_timeout;
        loop {
            let opened = async {
                let pool = SqlitePoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(options.acquire_timeout)
                    .connect_with(connect.clone())
                    .await?;
                Self::migrate(pool).await
            }
            .await;
            match opened {
                Err(Error::Database(sqlx::Error::Database(error)))
                    if error.code().as_deref() == Some(SQLITE_BUSY) && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }
}

/// SQLite's result code for a database locked by another connection.
const SQLITE_BUSY: &str = "5";

impl SqlStore<Postgres> {
    /// Connects to `postgres://user[:password]@host[:port]/database[?params]` and migrates the
    /// database (the first schema of its `search_path`; `?options[search_path]=NAME` selects
    /// another). Several nodes may do this at once: the migration takes an advisory lock.
    ///
    /// A database on another host needs `sslmode=verify-full` (TLS, certificate and name
    /// checked), or an explicit `sslmode=disable` for a network protected otherwise: sqlx's
    /// default, `prefer`, would accept any certificate or none.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, Error> {
        let connect = PgConnectOptions::from_str(url)?;
        let host = connect.get_host();
        let local = connect.get_socket().is_some()
            || host == "localhost"
            || host.parse::<IpAddr>().is_ok_and(|address| address.is_loopback());
        if !local && !matches!(connect.get_ssl_mode(), PgSslMode::VerifyFull | PgSslMode::Disable) {
            return Err(Error::UnverifiedDatabase { host: host.to_owned() });
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        Self::migrate(pool).await
    }
}

impl<B> SqlStore<B>
where
    B: Backend,
    for<'c> &'c mut B::Connection: Executor<'c, Database = B>,
    for<'c> &'c Pool<B>: Executor<'c, Database = B>,
    B::Arguments: IntoArguments<B>,
    i64: for<'q> Encode<'q, B> + for<'r> Decode<'r, B> + Type<B>,
    String: for<'q> Encode<'q, B> + for<'r> Decode<'r, B> + Type<B>,
    Option<i64>: for<'q> Encode<'q, B>,
    Option<String>: for<'q> Encode<'q, B>,
    &'static str: ColumnIndex<B::Row>,
{
    /// Applies the migrations this build has and the database lacks, all in one transaction
    /// that excludes other migrations ([`Backend::begin_migration`]). Refuses a database with
    /// a version this build does not know, or whose applied migration differs from this
    /// build's (by SHA-256 of the SQL).
    async fn migrate(pool: Pool<B>) -> Result<Self, Error> {
        let mut tx = B::begin_migration(&pool).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version BIGINT PRIMARY KEY, description TEXT NOT NULL, checksum TEXT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let applied =
            sqlx::query("SELECT version, checksum FROM schema_migrations ORDER BY version").fetch_all(&mut *tx).await?;
        let mut applied_versions = Vec::with_capacity(applied.len());
        for row in &applied {
            let version: i64 = row.try_get("version")?;
            let checksum: String = row.try_get("checksum")?;
            let Some(&(_, _, sql)) = B::MIGRATIONS.iter().find(|&&(known, _, _)| known == version) else {
                return Err(Error::SchemaTooNew { database: version, supported: Self::latest_version() });
            };
            if checksum != Sha256::of(sql.as_bytes()).to_string() {
                return Err(Error::MigrationChanged { version });
            }
            applied_versions.push(version);
        }
        for &(version, description, sql) in B::MIGRATIONS {
            if applied_versions.contains(&version) {
                continue;
            }
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(|source| Error::Migration { version, source })?;
            sqlx::query("INSERT INTO schema_migrations (version, description, checksum) VALUES ($1, $2, $3)")
                .bind(version)
                .bind(description.to_owned())
                .bind(Sha256::of(sql.as_bytes()).to_string())
                .execute(&mut *tx)
                .await?;
            tracing::info!(backend = B::BACKEND_NAME, version, description, "migration applied");
        }
        tx.commit().await?;
        let store = Self { pool };
        let health = store.health().await?;
        tracing::info!(backend = B::BACKEND_NAME, schema_version = health.schema_version, "store opened");
        Ok(store)
    }

    fn latest_version() -> i64 {
        B::MIGRATIONS.iter().map(|&(version, _, _)| version).max().unwrap_or(0)
    }

    /// The backend and the schema version; fails if the database cannot be reached.
    pub async fn health(&self) -> Result<Health, Error> {
        let row = sqlx::query("SELECT max(version) AS version FROM schema_migrations").fetch_one(&self.pool).await?;
        let schema_version: Option<i64> = row.try_get("version")?;
        Ok(Health { backend: B::BACKEND_NAME, schema_version: schema_version.unwrap_or(0) })
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await
    }

    // ---- devices --------------------------------------------------------------------------

    /// Enrolls a device; idempotent on its identity (see [`Enrollment::Existing`]).
    pub async fn enroll(&self, device: &NewDevice, now: Timestamp) -> Result<Enrollment, Error> {
        let mut tx = B::begin_write(&self.pool).await?;
        let enrollment = Self::enroll_in(&mut tx, device, now).await?;
        tx.commit().await?;
        if let Enrollment::New(device) = &enrollment {
            tracing::info!(device = %device.id, identity = device.identity.key().kind(), "device enrolled");
        }
        Ok(enrollment)
    }

    async fn enroll_in(
        connection: &mut B::Connection,
        device: &NewDevice,
        now: Timestamp,
    ) -> Result<Enrollment, Error> {
        let key = device.identity.key();
        let inserted = sqlx::query(
            "INSERT INTO devices \
             (id, name, identity_kind, identity, cert_serial, device_group, labels, enrolled_at, last_seen) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(device.id.to_string())
        .bind(device.name.to_string())
        .bind(key.kind().to_owned())
        .bind(key.digest().to_string())
        .bind(cert_serial(&device.identity))
        .bind(device.group.as_ref().map(GroupName::to_string))
        .bind(labels_json(&device.labels))
        .bind(now.as_microsecond())
        .fetch_optional(&mut *connection)
        .await?;
        if inserted.is_some() {
            let enrolled = Self::device_in(connection, &device.id).await?;
            return enrolled
                .map(Enrollment::New)
                .ok_or_else(|| Error::corrupt("device", "the inserted row is missing"));
        }
        // A unique constraint held: the identity (a repeated enrollment) or the id (a clash).
        let existing = Self::device_by_identity_in(connection, &key).await?;
        let id_taken = Self::device_in(connection, &device.id).await?.is_some();
        match (existing, id_taken) {
            (Some(existing), _) => Ok(Enrollment::Existing(existing)),
            (None, true) => Err(Error::DeviceIdTaken(device.id)),
            (None, false) => Err(Error::corrupt("device", "enrollment conflicted with no stored device")),
        }
    }

    /// Gives a device a new identity (a renewed certificate); the old one stops working.
    pub async fn replace_identity(&self, id: &DeviceId, identity: &Identity) -> Result<Device, Error> {
        let mut tx = B::begin_write(&self.pool).await?;
        let device = Self::replace_identity_in(&mut tx, id, identity).await?;
        tx.commit().await?;
        tracing::info!(device = %id, identity = identity.key().kind(), "device identity replaced");
        Ok(device)
    }

    async fn replace_identity_in(
        connection: &mut B::Connection,
        id: &DeviceId,
        identity: &Identity,
    ) -> Result<Device, Error> {
        let key = identity.key();
        if let Some(other) = Self::device_by_identity_in(connection, &key).await?
            && other.id != *id
        {
            return Err(Error::IdentityTaken(other.id));
        }
        sqlx::query("UPDATE devices SET identity_kind = $2, identity = $3, cert_serial = $4 WHERE id = $1")
            .bind(id.to_string())
            .bind(key.kind().to_owned())
            .bind(key.digest().to_string())
            .bind(cert_serial(identity))
            .execute(&mut *connection)
            .await?;
        Self::device_in(connection, id).await?.ok_or(Error::UnknownDevice(*id))
    }

    /// Revokes a device (again: keeps the first revocation time): it authenticates no more, and its peer
    /// announcements are withdrawn.
    pub async fn revoke_device(&self, id: &DeviceId, now: Timestamp) -> Result<Device, Error> {
        let mut tx = B::begin_write(&self.pool).await?;
        sqlx::query("UPDATE devices SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id.to_string())
            .bind(now.as_microsecond())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM peer_announcements WHERE device_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let device = Self::device_in(&mut tx, id).await?.ok_or(Error::UnknownDevice(*id))?;
        tx.commit().await?;
        tracing::info!(device = %id, "device revoked");
        Ok(device)
    }

    pub async fn device(&self, id: &DeviceId) -> Result<Option<Device>, Error> {
        let mut connection = self.pool.acquire().await?;
        Self::device_in(&mut connection, id).await
    }

    /// The device that authenticates with `key`.
    pub async fn device_by_identity(&self, key: &IdentityKey) -> Result<Option<Device>, Error> {
        let mut connection = self.pool.acquire().await?;
        Self::device_by_identity_in(&mut connection, key).await
    }

    /// One page of devices in id order.
    pub async fn list_devices(&self, query: &DeviceQuery) -> Result<Vec<Device>, Error> {
        let rows = sqlx::query(
            "SELECT id, name, identity_kind, identity, cert_serial, device_group, labels, enrolled_at, last_seen, \
             revoked_at FROM devices WHERE ($1 IS NULL OR device_group = $1) AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(query.group.as_ref().map(GroupName::to_string))
        .bind(query.after.map(|id| id.to_string()).unwrap_or_default())
        .bind(page_limit(query.limit)?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_from_row::<B>).collect()
    }

    pub(crate) async fn device_in(connection: &mut B::Connection, id: &DeviceId) -> Result<Option<Device>, Error> {
        let row = sqlx::query(
            "SELECT id, name, identity_kind, identity, cert_serial, device_group, labels, enrolled_at, last_seen, \
             revoked_at FROM devices WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *connection)
        .await?;
        row.as_ref().map(device_from_row::<B>).transpose()
    }

    async fn device_by_identity_in(connection: &mut B::Connection, key: &IdentityKey) -> Result<Option<Device>, Error> {
        let row = sqlx::query(
            "SELECT id, name, identity_kind, identity, cert_serial, device_group, labels, enrolled_at, last_seen, \
             revoked_at FROM devices WHERE identity_kind = $1 AND identity = $2",
        )
        .bind(key.kind().to_owned())
        .bind(key.digest().to_string())
        .fetch_optional(&mut *connection)
        .await?;
        row.as_ref().map(device_from_row::<B>).transpose()
    }

    /// Marks the device seen at `now` (never moving `last_seen` back); false if it is unknown.
    /// Also takes the device's row lock on PostgreSQL, which serializes writers per device.
    pub(crate) async fn touch_in(connection: &mut B::Connection, id: &DeviceId, now: Timestamp) -> Result<bool, Error> {
        let row = sqlx::query(
            "UPDATE devices SET last_seen = CASE WHEN last_seen < $2 THEN $2 ELSE last_seen END \
             WHERE id = $1 RETURNING id",
        )
        .bind(id.to_string())
        .bind(now.as_microsecond())
        .fetch_optional(&mut *connection)
        .await?;
        Ok(row.is_some())
    }

    // ---- inventory ------------------------------------------------------------------------

    /// Replaces the device's inventory.
    pub async fn update_inventory(&self, id: &DeviceId, inventory: &Inventory, now: Timestamp) -> Result<(), Error> {
        inventory.validate()?;
        let mut tx = B::begin_write(&self.pool).await?;
        if !Self::touch_in(&mut tx, id, now).await? {
            return Err(Error::UnknownDevice(*id));
        }
        sqlx::query(
            "INSERT INTO inventories (device_id, reported_at, inventory) VALUES ($1, $2, $3) \
             ON CONFLICT (device_id) DO UPDATE SET reported_at = excluded.reported_at, inventory = excluded.inventory",
        )
        .bind(id.to_string())
        .bind(now.as_microsecond())
        .bind(inventory.to_json())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn inventory(&self, id: &DeviceId) -> Result<Option<StoredInventory>, Error> {
        let row = sqlx::query("SELECT reported_at, inventory FROM inventories WHERE device_id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let json: String = row.try_get("inventory")?;
        Ok(Some(StoredInventory {
            device: *id,
            reported_at: timestamp(row.try_get("reported_at")?)?,
            inventory: Inventory::from_json(&json).map_err(|error| Error::corrupt("inventory", error))?,
        }))
    }

    // ---- events and compliance ------------------------------------------------------------

    /// Records a device's events, all or none. An event id recorded before with the same
    /// content counts as a duplicate; with different content, the whole batch is refused
    /// ([`Error::EventConflict`]).
    pub async fn record_events(
        &self,
        device: &DeviceId,
        events: &[Event],
        now: Timestamp,
    ) -> Result<RecordSummary, Error> {
        if events.len() > limits::MAX_EVENTS_PER_BATCH {
            return Err(Error::invalid(
                "event batch",
                format!("{} events, at most {} allowed", events.len(), limits::MAX_EVENTS_PER_BATCH),
            ));
        }
        for event in events {
            event.validate()?;
        }
        let mut summary = RecordSummary::default();
        let mut tx = B::begin_write(&self.pool).await?;
        if !Self::touch_in(&mut tx, device, now).await? {
            return Err(Error::UnknownDevice(*device));
        }
        for event in events {
            let parts = event.kind.parts();
            let at = event.at.as_microsecond();
            // Compliance orders a device's events by its clock, but never later than their
            // arrival: an event from a clock set in the future must not outrank every later one.
            let order_at = event.at.min(now).as_microsecond();
            // Invariant: `validate()` refused counts above i64::MAX.
            let delivery = event.delivery.map(|d| d.counts().map(|count| count as i64));
            let mut insert = sqlx::query(
                "INSERT INTO events \
                 (device_id, event_id, kind, scan_result, error_code, update_id, revision, at, received_at, detail, \
                 product, from_version, to_version, reason, operation, outcome, \
                 from_http, from_cache_server, from_lan_peers, from_group_peers, from_internet_peers, to_peers) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                 $17, $18, $19, $20, $21, $22) \
                 ON CONFLICT (device_id, event_id) DO NOTHING RETURNING seq",
            )
            .bind(device.to_string())
            .bind(event.id.to_string())
            .bind(event.kind.name().to_owned())
            .bind(parts.result.map(|result| result.as_str().to_owned()))
            .bind(parts.code)
            .bind(event.update.map(|update| update.id.to_string()))
            .bind(event.update.map(|update| i64::from(update.revision)))
            .bind(at)
            .bind(now.as_microsecond())
            .bind(event.detail.clone())
            .bind(event.product.as_ref().map(ToString::to_string))
            .bind(event.from.clone())
            .bind(event.to.clone())
            .bind(parts.reason.map(|reason| reason.as_str().to_owned()))
            .bind(parts.operation.map(|operation| operation.as_str().to_owned()))
            .bind(parts.outcome.map(|outcome| outcome.as_str().to_owned()));
            for index in 0..6 {
                insert = insert.bind(delivery.map(|counts| counts[index]));
            }
            let inserted = insert.fetch_optional(&mut *tx).await?;
            let Some(inserted) = inserted else {
                let stored = Self::event_in(&mut tx, device, event).await?;
                let same = stored.as_ref().is_some_and(|stored| stored.event == normalized(event));
                if !same {
                    return Err(Error::EventConflict { device: *device, event_id: event.id });
                }
                summary.duplicates += 1;
                continue;
            };
            let seq: i64 = inserted.try_get("seq")?;
            if let (Some(update), Some(state)) = (event.update, ComplianceState::after(&event.kind)) {
                sqlx::query(
                    "INSERT INTO update_status (update_id, device_id, revision, state, error_code, at, seq) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (update_id, device_id) DO UPDATE SET revision = excluded.revision, \
                     state = excluded.state, error_code = excluded.error_code, at = excluded.at, seq = excluded.seq \
                     WHERE excluded.at > update_status.at \
                     OR (excluded.at = update_status.at AND excluded.seq > update_status.seq)",
                )
                .bind(update.id.to_string())
                .bind(device.to_string())
                .bind(i64::from(update.revision))
                .bind(state.as_str().to_owned())
                .bind(parts.code)
                .bind(order_at)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(counts) = delivery {
                let mut add = sqlx::query(
                    "INSERT INTO delivery_totals (device_id, downloads, from_http, from_cache_server, \
                     from_lan_peers, from_group_peers, from_internet_peers, to_peers) \
                     VALUES ($1, 1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (device_id) DO UPDATE SET downloads = delivery_totals.downloads + 1, \
                     from_http = delivery_totals.from_http + excluded.from_http, \
                     from_cache_server = delivery_totals.from_cache_server + excluded.from_cache_server, \
                     from_lan_peers = delivery_totals.from_lan_peers + excluded.from_lan_peers, \
                     from_group_peers = delivery_totals.from_group_peers + excluded.from_group_peers, \
                     from_internet_peers = delivery_totals.from_internet_peers + excluded.from_internet_peers, \
                     to_peers = delivery_totals.to_peers + excluded.to_peers",
                )
                .bind(device.to_string());
                for count in counts {
                    add = add.bind(count);
                }
                add.execute(&mut *tx).await?;
            }
            summary.recorded += 1;
        }
        tx.commit().await?;
        tracing::debug!(%device, recorded = summary.recorded, duplicates = summary.duplicates, "events recorded");
        Ok(summary)
    }

    async fn event_in(
        connection: &mut B::Connection,
        device: &DeviceId,
        event: &Event,
    ) -> Result<Option<StoredEvent>, Error> {
        let row =
            sqlx::query(concat!("SELECT ", event_columns!(), " FROM events WHERE device_id = $1 AND event_id = $2"))
                .bind(device.to_string())
                .bind(event.id.to_string())
                .fetch_optional(&mut *connection)
                .await?;
        row.as_ref().map(event_from_row::<B>).transpose()
    }

    /// A device's events, newest first: those with `seq` below `before` (the last `seq` of the
    /// previous page).
    pub async fn device_history(
        &self,
        device: &DeviceId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, Error> {
        let limit = page_limit(limit)?;
        let mut connection = self.pool.acquire().await?;
        if Self::device_in(&mut connection, device).await?.is_none() {
            return Err(Error::UnknownDevice(*device));
        }
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE device_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
        ))
        .bind(device.to_string())
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&mut *connection)
        .await?;
        rows.iter().map(event_from_row::<B>).collect()
    }

    /// Devices' states for one update, in device id order.
    pub async fn compliance(&self, query: &ComplianceQuery) -> Result<Vec<ComplianceRow>, Error> {
        let rows = sqlx::query(
            "SELECT s.device_id, s.revision, s.state, s.error_code, s.at \
             FROM update_status s JOIN devices d ON d.id = s.device_id \
             WHERE s.update_id = $1 AND ($2 IS NULL OR s.state = $2) AND ($3 IS NULL OR d.device_group = $3) \
             AND s.device_id > $4 ORDER BY s.device_id LIMIT $5",
        )
        .bind(query.update.to_string())
        .bind(query.state.map(|state| state.as_str().to_owned()))
        .bind(query.group.as_ref().map(GroupName::to_string))
        .bind(query.after.map(|id| id.to_string()).unwrap_or_default())
        .bind(page_limit(query.limit)?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ComplianceRow {
                    device: parse("device id", row.try_get("device_id")?)?,
                    update: query.update,
                    revision: revision(row.try_get("revision")?)?,
                    state: parse("compliance state", row.try_get("state")?)?,
                    error_code: row.try_get("error_code")?,
                    at: timestamp(row.try_get("at")?)?,
                })
            })
            .collect()
    }

    /// Device counts per state for one update, over all devices or one group's.
    pub async fn compliance_summary(
        &self,
        update: &UpdateId,
        group: Option<&GroupName>,
    ) -> Result<ComplianceSummary, Error> {
        let (devices, mut summaries) = self.summaries(Some(update), group).await?;
        Ok(summaries.pop().unwrap_or_else(|| ComplianceSummary::new(*update, devices, &[])))
    }

    /// [`compliance_summary`](Self::compliance_summary) for every update any device reported
    /// about, in update id order.
    pub async fn compliance_overview(&self, group: Option<&GroupName>) -> Result<Vec<ComplianceSummary>, Error> {
        Ok(self.summaries(None, group).await?.1)
    }

    /// The number of devices in scope and the summaries, read in one transaction.
    async fn summaries(
        &self,
        update: Option<&UpdateId>,
        group: Option<&GroupName>,
    ) -> Result<(u64, Vec<ComplianceSummary>), Error> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT count(*) AS n FROM devices WHERE ($1 IS NULL OR device_group = $1)")
            .bind(group.map(GroupName::to_string))
            .fetch_one(&mut *tx)
            .await?;
        let devices = count(row.try_get("n")?)?;
        let rows = sqlx::query(
            "SELECT s.update_id, s.state, count(*) AS n FROM update_status s JOIN devices d ON d.id = s.device_id \
             WHERE ($1 IS NULL OR s.update_id = $1) AND ($2 IS NULL OR d.device_group = $2) \
             GROUP BY s.update_id, s.state ORDER BY s.update_id",
        )
        .bind(update.map(UpdateId::to_string))
        .bind(group.map(GroupName::to_string))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut grouped: Vec<(UpdateId, Vec<(ComplianceState, u64)>)> = Vec::new();
        for row in &rows {
            let update: UpdateId = parse("update id", row.try_get("update_id")?)?;
            let state: ComplianceState = parse("compliance state", row.try_get("state")?)?;
            let n = count(row.try_get("n")?)?;
            match grouped.last_mut() {
                Some((last, counts)) if *last == update => counts.push((state, n)),
                _ => grouped.push((update, vec![(state, n)])),
            }
        }
        let summaries = grouped.into_iter().map(|(update, counts)| ComplianceSummary::new(update, devices, &counts));
        Ok((devices, summaries.collect()))
    }

    // ---- delivery statistics --------------------------------------------------------------

    /// The delivery statistics of downloads summed per device group (devices without a group as `None`, last),
    /// over the devices that reported any.
    pub async fn delivery_by_group(&self) -> Result<Vec<GroupDelivery>, Error> {
        let rows = sqlx::query(
            "SELECT d.device_group AS device_group, count(*) AS devices, \
             CAST(sum(t.downloads) AS BIGINT) AS downloads, CAST(sum(t.from_http) AS BIGINT) AS from_http, \
             CAST(sum(t.from_cache_server) AS BIGINT) AS from_cache_server, \
             CAST(sum(t.from_lan_peers) AS BIGINT) AS from_lan_peers, \
             CAST(sum(t.from_group_peers) AS BIGINT) AS from_group_peers, \
             CAST(sum(t.from_internet_peers) AS BIGINT) AS from_internet_peers, \
             CAST(sum(t.to_peers) AS BIGINT) AS to_peers \
             FROM delivery_totals t JOIN devices d ON d.id = t.device_id \
             GROUP BY d.device_group ORDER BY d.device_group IS NULL, d.device_group",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let group: Option<String> = row.try_get("device_group")?;
                let mut counts = [0u64; 6];
                for (count, column) in counts.iter_mut().zip(DELIVERY_COLUMNS) {
                    *count = count_of(row.try_get(column)?)?;
                }
                Ok(GroupDelivery {
                    group: group.map(|group| parse("group name", group)).transpose()?,
                    devices: count(row.try_get("devices")?)?,
                    downloads: count(row.try_get("downloads")?)?,
                    bytes: Delivery::from_counts(counts),
                })
            })
            .collect()
    }

    // ---- publish history ------------------------------------------------------------------

    pub async fn append_publish(&self, record: &NewPublishRecord, now: Timestamp) -> Result<PublishRecord, Error> {
        record.validate()?;
        let mut tx = B::begin_write(&self.pool).await?;
        let row = sqlx::query(
            "INSERT INTO publish_history \
             (at, actor, action, update_id, revision, product, snapshot_version, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq",
        )
        .bind(now.as_microsecond())
        .bind(record.actor.clone())
        .bind(record.action.as_str().to_owned())
        .bind(record.update.as_ref().map(UpdateId::to_string))
        .bind(record.revision.map(i64::from))
        .bind(record.product.as_ref().map(ToString::to_string))
        // Invariant: validate() refused versions above i64::MAX.
        .bind(record.snapshot_version.map(|version| version as i64))
        .bind(record.detail.clone())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let at = timestamp(now.as_microsecond())?;
        Ok(PublishRecord { seq: row.try_get("seq")?, at, record: record.clone() })
    }

    /// Publish records, newest first.
    pub async fn publish_history(&self, query: &PublishQuery) -> Result<Vec<PublishRecord>, Error> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, update_id, revision, product, snapshot_version, detail \
             FROM publish_history WHERE ($1 IS NULL OR update_id = $1) AND seq < $2 ORDER BY seq DESC LIMIT $3",
        )
        .bind(query.update.as_ref().map(UpdateId::to_string))
        .bind(query.before.unwrap_or(i64::MAX))
        .bind(page_limit(query.limit)?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let update: Option<String> = row.try_get("update_id")?;
                let revision_column: Option<i64> = row.try_get("revision")?;
                let product: Option<String> = row.try_get("product")?;
                let snapshot_version: Option<i64> = row.try_get("snapshot_version")?;
                Ok(PublishRecord {
                    seq: row.try_get("seq")?,
                    at: timestamp(row.try_get("at")?)?,
                    record: NewPublishRecord {
                        actor: row.try_get("actor")?,
                        action: parse("publish action", row.try_get("action")?)?,
                        update: update.map(|text| parse("update id", text)).transpose()?,
                        revision: revision_column.map(revision).transpose()?,
                        product: product.map(|text| parse("product", text)).transpose()?,
                        snapshot_version: snapshot_version
                            .map(|version| {
                                u64::try_from(version).map_err(|error| Error::corrupt("snapshot version", error))
                            })
                            .transpose()?,
                        detail: row.try_get("detail")?,
                    },
                })
            })
            .collect()
    }

    // ---- admin tokens ---------------------------------------------------------------------

    /// Creates a token; its secret is in the result and nowhere else.
    pub async fn create_admin_token(
        &self,
        name: &str,
        scope: Scope,
        now: Timestamp,
    ) -> Result<CreatedAdminToken, Error> {
        AdminToken::check_name(name)?;
        let id = TokenId::random();
        let (secret, digest) = TokenSecret::generate(ADMIN_PREFIX, id.as_uuid())?;
        let mut tx = B::begin_write(&self.pool).await?;
        sqlx::query("INSERT INTO admin_tokens (id, name, scope, hash, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(id.to_string())
            .bind(name.to_owned())
            .bind(scope.as_str().to_owned())
            .bind(digest.to_string())
            .bind(now.as_microsecond())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(token = %id, name, %scope, "admin token created");
        let token = AdminToken {
            id,
            name: name.to_owned(),
            scope,
            created_at: timestamp(now.as_microsecond())?,
            last_used: None,
            revoked_at: None,
        };
        Ok(CreatedAdminToken { token, secret })
    }

    /// Checks a bearer token for a request that needs `needed`, and notes its use (at most
    /// once a minute, so that reads do not turn into a write each).
    pub async fn verify_admin_token(&self, secret: &str, needed: Scope, now: Timestamp) -> Result<AdminToken, Error> {
        const LAST_USED_GRANULARITY: SignedDuration = SignedDuration::from_secs(60);
        let (id, digest) = TokenSecret::parse(ADMIN_PREFIX, secret).ok_or(Error::TokenInvalid)?;
        let id = TokenId::new(id)?;
        let row = sqlx::query(
            "SELECT id, name, scope, hash, created_at, last_used, revoked_at FROM admin_tokens WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Err(Error::TokenInvalid) };
        let stored: String = row.try_get("hash")?;
        let presented = digest.to_string();
        if aws_lc_rs::constant_time::verify_slices_are_equal(stored.as_bytes(), presented.as_bytes()).is_err() {
            return Err(Error::TokenInvalid);
        }
        let mut token = token_from_row::<B>(&row)?;
        if token.revoked_at.is_some() {
            return Err(Error::TokenRevoked { id, name: token.name });
        }
        if !token.scope.allows(needed) {
            return Err(Error::TokenScope { id, name: token.name, has: token.scope, needs: needed });
        }
        let stale_before = now.checked_sub(LAST_USED_GRANULARITY).unwrap_or(now);
        let noted = sqlx::query(
            "UPDATE admin_tokens SET last_used = $2 WHERE id = $1 AND (last_used IS NULL OR last_used <= $3) \
             RETURNING id",
        )
        .bind(id.to_string())
        .bind(now.as_microsecond())
        .bind(stale_before.as_microsecond())
        .fetch_optional(&self.pool)
        .await?;
        if noted.is_some() {
            token.last_used = Some(timestamp(now.as_microsecond())?);
        }
        Ok(token)
    }

    /// All tokens, revoked ones included, oldest first.
    pub async fn admin_tokens(&self) -> Result<Vec<AdminToken>, Error> {
        let rows = sqlx::query(
            "SELECT id, name, scope, created_at, last_used, revoked_at FROM admin_tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row::<B>).collect()
    }

    /// Revokes a token (again: keeps the first revocation time).
    pub async fn revoke_admin_token(&self, id: &TokenId, now: Timestamp) -> Result<AdminToken, Error> {
        let mut tx = B::begin_write(&self.pool).await?;
        sqlx::query("UPDATE admin_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id.to_string())
            .bind(now.as_microsecond())
            .execute(&mut *tx)
            .await?;
        let row =
            sqlx::query("SELECT id, name, scope, created_at, last_used, revoked_at FROM admin_tokens WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        let token = row.as_ref().map(token_from_row::<B>).transpose()?.ok_or(Error::UnknownToken(*id))?;
        tracing::info!(token = %id, name = token.name, "admin token revoked");
        Ok(token)
    }

    // ---- enrollment tokens ----------------------------------------------------------------

    /// Creates an enrollment token; its secret is in the result and nowhere else.
    pub async fn create_enrollment_token(
        &self,
        request: &NewEnrollmentToken,
        now: Timestamp,
    ) -> Result<CreatedEnrollmentToken, Error> {
        request.validate(now)?;
        let id = EnrollmentTokenId::random();
        let (secret, digest) = TokenSecret::generate(ENROLL_PREFIX, id.as_uuid())?;
        let mut tx = B::begin_write(&self.pool).await?;
        sqlx::query(
            "INSERT INTO enrollment_tokens \
             (id, name, device_group, hash, uses, uses_left, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $5, $6, $7)",
        )
        .bind(id.to_string())
        .bind(request.name.clone())
        .bind(request.group.as_ref().map(GroupName::to_string))
        .bind(digest.to_string())
        .bind(i64::from(request.uses))
        .bind(now.as_microsecond())
        .bind(request.expires_at.as_microsecond())
        .execute(&mut *tx)
        .await?;
        let token = Self::enrollment_token_in(&mut tx, &id).await?;
        tx.commit().await?;
        let token = token.ok_or_else(|| Error::corrupt("enrollment token", "the inserted row is missing"))?;
        tracing::info!(token = %id, name = token.name, uses = token.uses, "enrollment token created");
        Ok(CreatedEnrollmentToken { token, secret })
    }

    /// All enrollment tokens, revoked and expired ones included, oldest first.
    pub async fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>, Error> {
        let rows = sqlx::query(
            "SELECT id, name, device_group, uses, uses_left, created_at, expires_at, revoked_at \
             FROM enrollment_tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(enrollment_token_from_row::<B>).collect()
    }

    /// Revokes an enrollment token (again: keeps the first revocation time). Devices enrolled
    /// with it stay enrolled.
    pub async fn revoke_enrollment_token(
        &self,
        id: &EnrollmentTokenId,
        now: Timestamp,
    ) -> Result<EnrollmentToken, Error> {
        let mut tx = B::begin_write(&self.pool).await?;
        sqlx::query("UPDATE enrollment_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id.to_string())
            .bind(now.as_microsecond())
            .execute(&mut *tx)
            .await?;
        let token = Self::enrollment_token_in(&mut tx, id).await?;
        tx.commit().await?;
        let token = token.ok_or(Error::UnknownEnrollmentToken(*id))?;
        tracing::info!(token = %id, name = token.name, "enrollment token revoked");
        Ok(token)
    }

    /// Checks a presented enrollment token for the enrollment attempt `enrollment` before the
    /// service issues the device its identity; [`enroll_with_token`](Self::enroll_with_token)
    /// checks again and enrolls. Unknown, malformed, wrong, revoked, expired and used-up
    /// tokens all get [`Error::EnrollmentTokenRefused`]; a retry of an enrollment that went
    /// through is accepted even when the token is used up.
    pub async fn redeem_enrollment_token(
        &self,
        secret: &str,
        enrollment: &EnrollmentId,
        now: Timestamp,
    ) -> Result<Redemption, Error> {
        let (id, digest) = TokenSecret::parse(ENROLL_PREFIX, secret).ok_or(Error::EnrollmentTokenRefused)?;
        let id = EnrollmentTokenId::new(id)?;
        let mut connection = self.pool.acquire().await?;
        let row = sqlx::query("SELECT hash, hash_scheme FROM enrollment_tokens WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *connection)
            .await?;
        let Some(row) = row else { return Err(Error::EnrollmentTokenRefused) };
        let stored: String = row.try_get("hash")?;
        let scheme: String = row.try_get("hash_scheme")?;
        let presented = match scheme.as_str() {
            "secret" => digest,
            // Invariant: `TokenSecret::parse` accepted `secret`, so it is the prefix, 32 hex digits, `_` and the
            // secret's text, all ASCII.
            "text" => Sha256::of(secret.get(ENROLL_PREFIX.len() + 33..).unwrap_or_default().as_bytes()),
            other => return Err(Error::corrupt("enrollment token hash scheme", other)),
        }
        .to_string();
        if aws_lc_rs::constant_time::verify_slices_are_equal(stored.as_bytes(), presented.as_bytes()).is_err() {
            return Err(Error::EnrollmentTokenRefused);
        }
        let token = Self::enrollment_token_in(&mut connection, &id).await?.ok_or(Error::EnrollmentTokenRefused)?;
        let previous_device = match Self::enrolled_device_in(&mut connection, enrollment, &id).await? {
            Some(device) => Self::device_in(&mut connection, &device).await?,
            None => None,
        };
        if !token.usable(now, previous_device.is_some()) {
            return Err(Error::EnrollmentTokenRefused);
        }
        Ok(Redemption { token, previous_device })
    }

    /// Enrolls `device` with a token [`redeem_enrollment_token`](Self::redeem_enrollment_token)
    /// accepted, all or nothing: checks the token again, uses it up by one, and remembers
    /// `enrollment`. The device joins the token's group (`device.group` is replaced). A retry of
    /// `enrollment` does not enroll a second device: the device it enrolled gets
    /// `device.identity` and is returned as [`Enrollment::Existing`].
    pub async fn enroll_with_token(
        &self,
        token: &EnrollmentTokenId,
        enrollment: &EnrollmentId,
        device: &NewDevice,
        now: Timestamp,
    ) -> Result<Enrollment, Error> {
        let mut tx = B::begin_write(&self.pool).await?;
        let stored = Self::enrollment_token_in(&mut tx, token).await?.ok_or(Error::EnrollmentTokenRefused)?;
        let previous = Self::enrolled_device_in(&mut tx, enrollment, token).await?;
        if !stored.usable(now, previous.is_some()) {
            return Err(Error::EnrollmentTokenRefused);
        }
        if let Some(previous) = previous {
            let device = Self::replace_identity_in(&mut tx, &previous, &device.identity).await?;
            tx.commit().await?;
            tracing::info!(device = %device.id, %enrollment, "enrollment retried");
            return Ok(Enrollment::Existing(device));
        }
        let device = NewDevice { group: stored.group.clone(), ..device.clone() };
        let enrollment_result = Self::enroll_in(&mut tx, &device, now).await?;
        if let Enrollment::New(_) = &enrollment_result {
            let used = sqlx::query(
                "UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = $1 AND uses_left > 0 RETURNING id",
            )
            .bind(token.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            if used.is_none() {
                return Err(Error::EnrollmentTokenRefused);
            }
        }
        let remembered = sqlx::query(
            "INSERT INTO enrollments (enrollment_id, token_id, device_id, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING RETURNING enrollment_id",
        )
        .bind(enrollment.to_string())
        .bind(token.to_string())
        .bind(enrollment_result.device().id.to_string())
        .bind(now.as_microsecond())
        .fetch_optional(&mut *tx)
        .await?;
        if remembered.is_none() {
            // Another request with this enrollment id committed first (PostgreSQL, several nodes).
            return Err(Error::EnrollmentInProgress(*enrollment));
        }
        tx.commit().await?;
        let enrolled = enrollment_result.device();
        tracing::info!(device = %enrolled.id, %token, %enrollment, "device enrolled with a token");
        Ok(enrollment_result)
    }

    /// Imports enrollment tokens and remembered enrollments from the service's former `enrollment.json`, in one
    /// transaction. A token whose id is stored already is left as it is (so importing twice changes nothing); an
    /// enrollment whose token or device is not stored is skipped.
    pub async fn import_enrollment_tokens(
        &self,
        tokens: &[ImportedEnrollmentToken],
        enrollments: &[ImportedEnrollment],
    ) -> Result<EnrollmentImport, Error> {
        for token in tokens {
            token.validate()?;
        }
        let mut summary = EnrollmentImport::default();
        let mut tx = B::begin_write(&self.pool).await?;
        for token in tokens {
            let inserted = sqlx::query(
                "INSERT INTO enrollment_tokens \
                 (id, name, device_group, hash, hash_scheme, uses, uses_left, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, 'text', $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(token.id.to_string())
            .bind(token.name.clone())
            .bind(token.group.as_ref().map(GroupName::to_string))
            .bind(token.text_sha256.to_string())
            .bind(i64::from(token.uses))
            .bind(i64::from(token.uses_left))
            .bind(token.created_at.as_microsecond())
            .bind(token.expires_at.as_microsecond())
            .fetch_optional(&mut *tx)
            .await?;
            match inserted {
                Some(_) => summary.tokens += 1,
                None => summary.tokens_present += 1,
            }
        }
        for enrollment in enrollments {
            let inserted = sqlx::query(
                "INSERT INTO enrollments (enrollment_id, token_id, device_id, at) \
                 SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM enrollment_tokens WHERE id = $2) \
                 AND EXISTS (SELECT 1 FROM devices WHERE id = $3) ON CONFLICT DO NOTHING RETURNING enrollment_id",
            )
            .bind(enrollment.enrollment.to_string())
            .bind(enrollment.token.to_string())
            .bind(enrollment.device.to_string())
            .bind(enrollment.at.as_microsecond())
            .fetch_optional(&mut *tx)
            .await?;
            match inserted {
                Some(_) => summary.enrollments += 1,
                None => summary.enrollments_skipped += 1,
            }
        }
        tx.commit().await?;
        tracing::info!(
            tokens = summary.tokens,
            enrollments = summary.enrollments,
            skipped = summary.enrollments_skipped,
            "enrollment tokens imported"
        );
        Ok(summary)
    }

    async fn enrollment_token_in(
        connection: &mut B::Connection,
        id: &EnrollmentTokenId,
    ) -> Result<Option<EnrollmentToken>, Error> {
        let row = sqlx::query(
            "SELECT id, name, device_group, uses, uses_left, created_at, expires_at, revoked_at \
             FROM enrollment_tokens WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *connection)
        .await?;
        row.as_ref().map(enrollment_token_from_row::<B>).transpose()
    }

    /// The device that `enrollment` enrolled with `token`, if it went through.
    async fn enrolled_device_in(
        connection: &mut B::Connection,
        enrollment: &EnrollmentId,
        token: &EnrollmentTokenId,
    ) -> Result<Option<DeviceId>, Error> {
        let row = sqlx::query("SELECT device_id FROM enrollments WHERE enrollment_id = $1 AND token_id = $2")
            .bind(enrollment.to_string())
            .bind(token.to_string())
            .fetch_optional(&mut *connection)
            .await?;
        row.map(|row| parse("device id", row.try_get("device_id")?)).transpose()
    }
}

// ---- row mapping ----------------------------------------------------------------------------

fn device_from_row<B>(row: &B::Row) -> Result<Device, Error>
where
    B: Backend,
    i64: for<'r> Decode<'r, B> + Type<B>,
    String: for<'r> Decode<'r, B> + Type<B>,
    &'static str: ColumnIndex<B::Row>,
{
    let kind: String = row.try_get("identity_kind")?;
    let digest: Sha256 = parse("identity", row.try_get("identity")?)?;
    let serial: Option<String> = row.try_get("cert_serial")?;
    let identity = match (kind.as_str(), serial) {
        ("certificate", Some(serial)) => {
            Identity::Certificate { serial: parse::<CertSerial>("certificate serial", serial)?, fingerprint: digest }
        }
        ("token", None) => Identity::Token { hash: digest },
        _ => return Err(Error::corrupt("identity", format!("kind {kind:?} with or without a serial"))),
    };
    let group: Option<String> = row.try_get("device_group")?;
    let labels: String = row.try_get("labels")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    Ok(Device {
        id: parse("device id", row.try_get("id")?)?,
        name: parse("device name", row.try_get("name")?)?,
        identity,
        group: group.map(|group| parse("group name", group)).transpose()?,
        labels: serde_json::from_str::<Labels>(&labels).map_err(|error| Error::corrupt("labels", error))?,
        enrolled_at: timestamp(row.try_get("enrolled_at")?)?,
        last_seen: timestamp(row.try_get("last_seen")?)?,
        revoked_at: revoked_at.map(timestamp).transpose()?,
    })
}

fn event_from_row<B>(row: &B::Row) -> Result<StoredEvent, Error>
where
    B: Backend,
    i64: for<'r> Decode<'r, B> + Type<B>,
    String: for<'r> Decode<'r, B> + Type<B>,
    &'static str: ColumnIndex<B::Row>,
{
    let text = |column: &'static str| -> Result<Option<String>, Error> { Ok(row.try_get(column)?) };
    let parts = KindParts {
        result: parsed(text("scan_result")?, "scan result")?,
        code: row.try_get("error_code")?,
        reason: parsed(text("reason")?, "rollback reason")?,
        operation: parsed(text("operation")?, "operation")?,
        outcome: parsed(text("outcome")?, "recovery outcome")?,
    };
    let kind: String = row.try_get("kind")?;
    let kind = EventKind::from_parts(&kind, parts).map_err(|error| Error::corrupt("event kind", error))?;
    let update = match (parsed(text("update_id")?, "update id")?, row.try_get::<Option<i64>, _>("revision")?) {
        (Some(id), Some(number)) => Some(UpdateRef { id, revision: revision(number)? }),
        (None, None) => None,
        _ => return Err(Error::corrupt("event", "an update id without a revision, or the reverse")),
    };
    let mut counts = [None; 6];
    for (count, column) in counts.iter_mut().zip(DELIVERY_COLUMNS) {
        *count = row.try_get::<Option<i64>, _>(column)?.map(count_of).transpose()?;
    }
    let delivery = match counts {
        [Some(a), Some(b), Some(c), Some(d), Some(e), Some(f)] => Some(Delivery::from_counts([a, b, c, d, e, f])),
        [None, None, None, None, None, None] => None,
        _ => return Err(Error::corrupt("event", "some delivery statistics are missing")),
    };
    Ok(StoredEvent {
        seq: row.try_get("seq")?,
        device: parse("device id", row.try_get("device_id")?)?,
        received_at: timestamp(row.try_get("received_at")?)?,
        event: Event {
            id: parse("event id", row.try_get("event_id")?)?,
            kind,
            update,
            product: parsed(text("product")?, "product")?,
            from: text("from_version")?,
            to: text("to_version")?,
            delivery,
            at: timestamp(row.try_get("at")?)?,
            detail: row.try_get("detail")?,
        },
    })
}

/// The delivery statistics columns of `events` and `delivery_totals`, in [`Delivery::counts`] order.
const DELIVERY_COLUMNS: [&str; 6] =
    ["from_http", "from_cache_server", "from_lan_peers", "from_group_peers", "from_internet_peers", "to_peers"];

fn token_from_row<B>(row: &B::Row) -> Result<AdminToken, Error>
where
    B: Backend,
    i64: for<'r> Decode<'r, B> + Type<B>,
    String: for<'r> Decode<'r, B> + Type<B>,
    &'static str: ColumnIndex<B::Row>,
{
    let last_used: Option<i64> = row.try_get("last_used")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    Ok(AdminToken {
        id: parse("admin token id", row.try_get("id")?)?,
        name: row.try_get("name")?,
        scope: parse("scope", row.try_get("scope")?)?,
        created_at: timestamp(row.try_get("created_at")?)?,
        last_used: last_used.map(timestamp).transpose()?,
        revoked_at: revoked_at.map(timestamp).transpose()?,
    })
}

fn enrollment_token_from_row<B>(row: &B::Row) -> Result<EnrollmentToken, Error>
where
    B: Backend,
    i64: for<'r> Decode<'r, B> + Type<B>,
    String: for<'r> Decode<'r, B> + Type<B>,
    &'static str: ColumnIndex<B::Row>,
{
    let group: Option<String> = row.try_get("device_group")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    let uses = |column: &'static str| -> Result<u32, Error> {
        u32::try_from(row.try_get::<i64, _>(column)?).map_err(|error| Error::corrupt("enrollment token uses", error))
    };
    Ok(EnrollmentToken {
        id: parse("enrollment token id", row.try_get("id")?)?,
        name: row.try_get("name")?,
        group: group.map(|group| parse("group name", group)).transpose()?,
        uses: uses("uses")?,
        uses_left: uses("uses_left")?,
        created_at: timestamp(row.try_get("created_at")?)?,
        expires_at: timestamp(row.try_get("expires_at")?)?,
        revoked_at: revoked_at.map(timestamp).transpose()?,
    })
}

/// The serial column of an identity.
fn cert_serial(identity: &Identity) -> Option<String> {
    match identity {
        Identity::Certificate { serial, .. } => Some(serial.to_string()),
        Identity::Token { .. } => None,
    }
}

/// An event as it reads back: time at microsecond precision.
fn normalized(event: &Event) -> Event {
    let mut event = event.clone();
    // Invariant: a Timestamp truncated to whole microseconds is within jiff's range.
    event.at = Timestamp::from_microsecond(event.at.as_microsecond()).expect("truncated timestamp is in range");
    event
}

fn labels_json(labels: &Labels) -> String {
    // Invariant: a map of strings always serializes.
    serde_json::to_string(labels).expect("labels serialize")
}

pub(crate) fn parse<T: FromStr<Err: ToString>>(what: &'static str, text: String) -> Result<T, Error> {
    text.parse().map_err(|error: T::Err| Error::corrupt(what, error))
}

pub(crate) fn timestamp(microseconds: i64) -> Result<Timestamp, Error> {
    Timestamp::from_microsecond(microseconds).map_err(|error| Error::corrupt("timestamp", error))
}

fn revision(value: i64) -> Result<u32, Error> {
    u32::try_from(value).map_err(|error| Error::corrupt("revision", error))
}

fn count(value: i64) -> Result<u64, Error> {
    u64::try_from(value).map_err(|error| Error::corrupt("count", error))
}

/// An optional text column parsed.
fn parsed<T: FromStr<Err: ToString>>(text: Option<String>, what: &'static str) -> Result<Option<T>, Error> {
    text.map(|text| parse(what, text)).transpose()
}

fn count_of(value: i64) -> Result<u64, Error> {
    u64::try_from(value).map_err(|error| Error::corrupt("delivery statistics", error))
}

fn page_limit(limit: u32) -> Result<i64, Error> {
    match limit {
        1..=limits::MAX_PAGE => Ok(i64::from(limit)),
        _ => Err(Error::invalid("page limit", format!("{limit}; 1 to {} allowed", limits::MAX_PAGE))),
    }
}
