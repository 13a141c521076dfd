//! The store's behaviour, one suite run against both backends: `sqlite::*` on a temporary file,
//! `postgres::*` on the database `CUSTODY_TEST_POSTGRES_URL` names (`.ci/postgres.sh` prints
//! it), each test in a schema of its own. Without that variable the PostgreSQL half fails in CI
//! (`CI=true`) and is skipped with a message elsewhere.

use std::collections::{BTreeMap, BTreeSet};

use custody_catalog::{DeviceInventory, UpdateId};
use custody_store::{
    ComplianceQuery, ComplianceState, Device, DeviceId, DeviceQuery, Enrollment, EnrollmentId, EnrollmentImport,
    EnrollmentTokenId, Error, Event, EventId, EventKind, GroupName, Identity, IdentityKey, ImportedEnrollment,
    ImportedEnrollmentToken, Inventory, Labels, NewDevice, NewEnrollmentToken, NewPublishRecord, PeerAnnouncement,
    PeerReach, PublishAction, PublishQuery, ScanResult, Scope, Sha256, Store, StoreOptions, limits,
};
use custody_store::{Delivery, Operation, RecoveryOutcome, RollbackReason, UpdateRef};
use jiff::Timestamp;
use sqlx::AssertSqlSafe;

// ---- the two backends -------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

/// One test's database: a SQLite file in a temporary directory, or a fresh PostgreSQL schema.
struct TestDb {
    kind: Kind,
    url: String,
    _dir: Option<tempfile::TempDir>,
    schema: Option<(String, sqlx::PgPool)>,
}

impl TestDb {
    /// None: PostgreSQL is not configured outside CI (the test is skipped).
    async fn new(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("store.db").display());
                Some(Self { kind, url, _dir: Some(dir), schema: None })
            }
            Kind::Postgres => {
                let Ok(base) = std::env::var("CUSTODY_TEST_POSTGRES_URL") else {
                    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                        panic!("CUSTODY_TEST_POSTGRES_URL is not set; CI must start PostgreSQL (.ci/postgres.sh)");
                    }
                    eprintln!(
                        "skipped: set CUSTODY_TEST_POSTGRES_URL (see .ci/postgres.sh) to run the PostgreSQL suite"
                    );
                    return None;
                };
                let admin = sqlx::PgPool::connect(&base).await.expect("connect to CUSTODY_TEST_POSTGRES_URL");
                let schema = format!("store_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await.unwrap();
                let separator = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{separator}options[search_path]={schema}");
                Some(Self { kind, url, _dir: None, schema: Some((schema, admin)) })
            }
        }
    }

    /// A new store (with its own pool) on this database.
    async fn open(&self) -> Store {
        Store::open(&self.url, &StoreOptions::default()).await.unwrap()
    }

    /// Runs SQL on the database behind the store's back.
    async fn raw(&self, sql: &str) {
        match self.kind {
            Kind::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.url).await.unwrap();
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(&pool).await.unwrap();
                pool.close().await;
            }
            Kind::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(&pool).await.unwrap();
                pool.close().await;
            }
        }
    }

    async fn finish(self) {
        if let Some((schema, admin)) = self.schema {
            sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&admin).await.unwrap();
            admin.close().await;
        }
    }
}

async fn run(kind: Kind, test: impl AsyncFnOnce(&TestDb)) {
    let Some(db) = TestDb::new(kind).await else { return };
    test(&db).await;
    db.finish().await;
}

/// Each behaviour becomes `sqlite::NAME` and `postgres::NAME`.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::run(crate::Kind::Sqlite, super::$name).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::run(crate::Kind::Postgres, super::$name).await
                }
            )*
        }
    };
}

suite! {
    migrations_apply_once_and_refuse_a_newer_database,
    a_version_1_database_is_upgraded_in_place,
    fresh_database_migrated_by_several_nodes_at_once,
    enrollment_is_idempotent_on_identity,
    devices_list_in_pages_and_by_group,
    renewed_certificate_replaces_identity,
    inventory_is_replaced_and_bounded,
    events_are_stored_once_per_id,
    event_batches_are_validated_and_bounded,
    history_pages_newest_first,
    compliance_follows_each_devices_latest_event,
    publish_history_appends_and_pages,
    admin_tokens_verify_scope_revoke_and_note_use,
    two_stores_record_the_same_events_once,
    two_stores_enroll_the_same_identity_once,
    enrollment_tokens_are_used_up_but_retries_go_through,
    enrollment_tokens_expire_and_are_revoked,
    two_stores_use_the_last_enrollment_once,
    a_version_2_database_keeps_its_enrollment_tokens,
    devices_are_revoked_once_and_keep_their_record,
    enrollment_tokens_of_enrollment_json_are_imported_once,
    peers_are_found_by_reach_never_revoked_or_expired,
    product_and_agent_events_change_compliance_only_where_relevant,
    delivery_statistics_are_summed_per_group_once,
    a_version_3_database_keeps_its_events,
}

// ---- helpers ----------------------------------------------------------------------------------

/// SQL that takes a database back to schema version 3 (SQLite keeps `events.update_id` nullable, which migration
/// 4 accepts when it runs again).
macro_rules! undo_migration_4 {
    () => {
        "DROP TABLE delivery_totals; ALTER TABLE events DROP COLUMN product; \
         ALTER TABLE events DROP COLUMN from_version; ALTER TABLE events DROP COLUMN to_version; \
         ALTER TABLE events DROP COLUMN reason; ALTER TABLE events DROP COLUMN operation; \
         ALTER TABLE events DROP COLUMN outcome; ALTER TABLE events DROP COLUMN from_http; \
         ALTER TABLE events DROP COLUMN from_cache_server; ALTER TABLE events DROP COLUMN from_lan_peers; \
         ALTER TABLE events DROP COLUMN from_group_peers; ALTER TABLE events DROP COLUMN from_internet_peers; \
         ALTER TABLE events DROP COLUMN to_peers; DELETE FROM schema_migrations WHERE version = 4; "
    };
}

/// Takes a database back to schema version 3.
const UNDO_MIGRATION_4: &str = undo_migration_4!();

/// Takes a database back to schema version 2.
const UNDO_MIGRATION_3: &str = concat!(
    undo_migration_4!(),
    "DROP TABLE peer_networks; DROP TABLE peer_announcements; \
    ALTER TABLE devices DROP COLUMN revoked_at; ALTER TABLE enrollment_tokens DROP COLUMN hash_scheme; \
    DELETE FROM schema_migrations WHERE version = 3;"
);

/// The latest migration of this build.
const SCHEMA_VERSION: i64 = 4;

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn update(n: u64) -> UpdateId {
    format!("00000000-0000-4000-8000-{n:012x}").parse().unwrap()
}

fn certificate(n: u32) -> Identity {
    Identity::Certificate {
        serial: format!("{n:x}").parse().unwrap(),
        fingerprint: Sha256::of(format!("cert {n}").as_bytes()),
    }
}

fn new_device(n: u32, group: Option<&str>) -> NewDevice {
    NewDevice {
        id: DeviceId::random(),
        name: format!("device {n}").parse().unwrap(),
        identity: certificate(n),
        group: group.map(|group| group.parse().unwrap()),
        labels: Labels::default(),
    }
}

async fn enrolled(store: &Store, n: u32, group: Option<&str>) -> Device {
    store.enroll(&new_device(n, group), at("2026-01-01T00:00:00Z")).await.unwrap().into_device()
}

fn event(kind: EventKind, update: UpdateId, time: &str) -> Event {
    Event {
        id: EventId::random(),
        kind,
        update: Some(UpdateRef { id: update, revision: 1 }),
        product: None,
        from: None,
        to: None,
        delivery: None,
        at: at(time),
        detail: String::new(),
    }
}

fn inventory() -> Inventory {
    Inventory(DeviceInventory {
        os_family: "debian".parse().unwrap(),
        os_version: Some("12.5".parse().unwrap()),
        arch: "x86_64".parse().unwrap(),
        products: BTreeMap::from([("acme-os".parse().unwrap(), "4.2".parse().unwrap())]),
        hardware_ids: BTreeSet::from(["pci:8086:15f3".parse().unwrap()]),
        installed_updates: BTreeSet::from([update(1)]),
    })
}

// ---- behaviours -------------------------------------------------------------------------------

async fn migrations_apply_once_and_refuse_a_newer_database(db: &TestDb) {
    let store = db.open().await;
    let health = store.health().await.unwrap();
    assert_eq!(health.schema_version, SCHEMA_VERSION);
    assert_eq!(health.backend, if db.kind == Kind::Sqlite { "sqlite" } else { "postgres" });
    enrolled(&store, 1, None).await;
    store.close().await;

    // Opening again applies nothing and keeps the data.
    let store = db.open().await;
    assert_eq!(store.list_devices(&DeviceQuery::default()).await.unwrap().len(), 1);
    store.close().await;

    // A newer build migrated the database: this one must not touch it.
    let newer = SCHEMA_VERSION + 1;
    db.raw(&format!(
        "INSERT INTO schema_migrations (version, description, checksum) VALUES ({newer}, 'from a newer build', 'x')"
    ))
    .await;
    let error = Store::open(&db.url, &StoreOptions::default()).await.unwrap_err();
    assert!(
        matches!(error, Error::SchemaTooNew { database, supported } if database == newer && supported == SCHEMA_VERSION),
        "{error:?}"
    );
    let expected = format!("schema version {newer}, newer than this build supports ({SCHEMA_VERSION})");
    assert!(error.to_string().contains(&expected), "{error}");

    // An applied migration whose SQL changed since is refused too.
    db.raw(&format!(
        "DELETE FROM schema_migrations WHERE version = {newer}; \
         UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1"
    ))
    .await;
    let error = Store::open(&db.url, &StoreOptions::default()).await.unwrap_err();
    assert!(matches!(error, Error::MigrationChanged { version: 1 }), "{error:?}");
}

async fn a_version_1_database_is_upgraded_in_place(db: &TestDb) {
    let store = db.open().await;
    let device = enrolled(&store, 1, None).await;
    store.close().await;
    // Take the database back to what a build with only migration 1 left.
    db.raw(&format!(
        "{UNDO_MIGRATION_3} DROP TABLE enrollments; DROP TABLE enrollment_tokens; \
         DELETE FROM schema_migrations WHERE version = 2"
    ))
    .await;

    let store = db.open().await;
    assert_eq!(store.health().await.unwrap().schema_version, SCHEMA_VERSION);
    assert_eq!(store.device(&device.id).await.unwrap(), Some(device));
    assert!(store.enrollment_tokens().await.unwrap().is_empty());
}

async fn fresh_database_migrated_by_several_nodes_at_once(db: &TestDb) {
    let opening: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { Store::open(&url, &StoreOptions::default()).await })
        })
        .collect();
    for task in opening {
        let store = task.await.unwrap().unwrap();
        assert_eq!(store.health().await.unwrap().schema_version, SCHEMA_VERSION);
        store.close().await;
    }
}

async fn enrollment_is_idempotent_on_identity(db: &TestDb) {
    let store = db.open().await;
    let mut request = new_device(1, Some("lab"));
    request.labels = BTreeMap::from([("site".to_owned(), "berlin".to_owned())]).try_into().unwrap();
    let Enrollment::New(device) = store.enroll(&request, at("2026-01-01T00:00:00Z")).await.unwrap() else {
        panic!("first enrollment must be new");
    };
    assert_eq!(device.id, request.id);
    assert_eq!(device.identity, request.identity);
    assert_eq!(device.labels.get("site"), Some("berlin"));
    assert_eq!(device.group.as_ref().map(GroupName::as_str), Some("lab"));
    assert_eq!((device.enrolled_at, device.last_seen), (at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z")));

    // The same identity again, even with another id and name: the device enrolled before.
    let mut again = new_device(1, None);
    again.name = "renamed".parse().unwrap();
    let Enrollment::Existing(existing) = store.enroll(&again, at("2026-01-02T00:00:00Z")).await.unwrap() else {
        panic!("repeated enrollment must return the existing device");
    };
    assert_eq!(existing, device);

    // Another identity cannot take the id.
    let mut clash = new_device(2, None);
    clash.id = device.id;
    let error = store.enroll(&clash, at("2026-01-02T00:00:00Z")).await.unwrap_err();
    assert!(matches!(error, Error::DeviceIdTaken(id) if id == device.id), "{error:?}");

    // Token identities are separate from certificate identities with the same digest.
    let token_device = NewDevice { identity: Identity::Token { hash: Sha256::of(b"cert 1") }, ..new_device(3, None) };
    assert!(matches!(store.enroll(&token_device, at("2026-01-02T00:00:00Z")).await.unwrap(), Enrollment::New(_)));

    assert_eq!(store.device(&device.id).await.unwrap(), Some(device.clone()));
    assert_eq!(store.device(&DeviceId::random()).await.unwrap(), None);
    assert_eq!(store.device_by_identity(&device.identity.key()).await.unwrap(), Some(device));
    let by_token = store.device_by_identity(&IdentityKey::Token(Sha256::of(b"cert 1"))).await.unwrap().unwrap();
    assert_eq!(by_token.id, token_device.id);
    assert_eq!(store.device_by_identity(&IdentityKey::token(b"unknown")).await.unwrap(), None);
}

async fn devices_list_in_pages_and_by_group(db: &TestDb) {
    let store = db.open().await;
    let mut all = Vec::new();
    for n in 0..7 {
        all.push(enrolled(&store, n, Some(if n % 2 == 0 { "even" } else { "odd" })).await.id);
    }
    all.sort();

    let mut listed = Vec::new();
    let mut query = DeviceQuery { limit: 3, ..DeviceQuery::default() };
    loop {
        let page = store.list_devices(&query).await.unwrap();
        listed.extend(page.iter().map(|device| device.id));
        if page.len() < 3 {
            break;
        }
        query.after = page.last().map(|device| device.id);
    }
    assert_eq!(listed, all);

    let odd = store
        .list_devices(&DeviceQuery { group: Some("odd".parse().unwrap()), ..DeviceQuery::default() })
        .await
        .unwrap();
    assert_eq!(odd.len(), 3);
    assert!(odd.iter().all(|device| device.group.as_ref().unwrap().as_str() == "odd"));

    for limit in [0, limits::MAX_PAGE + 1] {
        let error = store.list_devices(&DeviceQuery { limit, ..DeviceQuery::default() }).await.unwrap_err();
        assert!(error.to_string().starts_with("invalid page limit"), "{error}");
    }
}

async fn renewed_certificate_replaces_identity(db: &TestDb) {
    let store = db.open().await;
    let device = enrolled(&store, 1, None).await;
    let other = enrolled(&store, 2, None).await;

    let renewed = store.replace_identity(&device.id, &certificate(10)).await.unwrap();
    assert_eq!(renewed.identity, certificate(10));
    assert_eq!(store.device_by_identity(&certificate(1).key()).await.unwrap(), None);
    assert_eq!(store.device_by_identity(&certificate(10).key()).await.unwrap().unwrap().id, device.id);
    // Replacing with the identity it already has changes nothing.
    assert_eq!(store.replace_identity(&device.id, &certificate(10)).await.unwrap(), renewed);

    let error = store.replace_identity(&device.id, &other.identity).await.unwrap_err();
    assert!(matches!(error, Error::IdentityTaken(id) if id == other.id), "{error:?}");
    let unknown = DeviceId::random();
    let error = store.replace_identity(&unknown, &certificate(11)).await.unwrap_err();
    assert!(matches!(error, Error::UnknownDevice(id) if id == unknown), "{error:?}");
}

async fn inventory_is_replaced_and_bounded(db: &TestDb) {
    let store = db.open().await;
    let device = enrolled(&store, 1, None).await;
    assert_eq!(store.inventory(&device.id).await.unwrap(), None);

    store.update_inventory(&device.id, &inventory(), at("2026-02-01T00:00:00Z")).await.unwrap();
    let stored = store.inventory(&device.id).await.unwrap().unwrap();
    assert_eq!((stored.device, stored.reported_at), (device.id, at("2026-02-01T00:00:00Z")));
    assert_eq!(stored.inventory, inventory());
    assert_eq!(store.device(&device.id).await.unwrap().unwrap().last_seen, at("2026-02-01T00:00:00Z"));

    let mut newer = inventory();
    newer.0.os_version = Some("13.1".parse().unwrap());
    newer.0.installed_updates.clear();
    store.update_inventory(&device.id, &newer, at("2026-02-02T00:00:00Z")).await.unwrap();
    assert_eq!(store.inventory(&device.id).await.unwrap().unwrap().inventory, newer);

    // A report stamped earlier (another node with a slower clock) does not move last_seen back.
    store.update_inventory(&device.id, &newer, at("2026-02-01T12:00:00Z")).await.unwrap();
    assert_eq!(store.device(&device.id).await.unwrap().unwrap().last_seen, at("2026-02-02T00:00:00Z"));

    let mut huge = inventory();
    huge.0.hardware_ids = (0..=limits::MAX_HARDWARE_IDS).map(|i| format!("usb:{i:08x}").parse().unwrap()).collect();
    let error = store.update_inventory(&device.id, &huge, at("2026-02-03T00:00:00Z")).await.unwrap_err();
    assert!(error.to_string().contains("hardware ids, at most 4096 allowed"), "{error}");
    assert_eq!(store.inventory(&device.id).await.unwrap().unwrap().inventory, newer);

    let unknown = DeviceId::random();
    let error = store.update_inventory(&unknown, &inventory(), at("2026-02-03T00:00:00Z")).await.unwrap_err();
    assert!(matches!(error, Error::UnknownDevice(id) if id == unknown), "{error:?}");
}

async fn events_are_stored_once_per_id(db: &TestDb) {
    let store = db.open().await;
    let device = enrolled(&store, 1, None).await;
    let mut batch = vec![
        event(EventKind::ScanFinished { result: ScanResult::Needed }, update(1), "2026-03-01T10:00:00Z"),
        event(EventKind::DownloadStarted, update(1), "2026-03-01T10:00:01Z"),
        // Sub-microsecond precision is dropped on storage; the retry must still match.
        event(EventKind::DownloadFailed { code: -28 }, update(1), "2026-03-01T10:00:02.000000789Z"),
    ];
    batch[2].detail = "connection reset\nretrying later".into();

    let first = store.record_events(&device.id, &batch, at("2026-03-01T10:01:00Z")).await.unwrap();
    assert_eq!((first.recorded, first.duplicates), (3, 0));
    let retry = store.record_events(&device.id, &batch, at("2026-03-01T10:02:00Z")).await.unwrap();
    assert_eq!((retry.recorded, retry.duplicates), (0, 3));

    let history = store.device_history(&device.id, None, 100).await.unwrap();
    assert_eq!(history.len(), 3);
    assert!(history.iter().all(|stored| stored.received_at == at("2026-03-01T10:01:00Z")));
    assert_eq!(history[0].event.kind, EventKind::DownloadFailed { code: -28 });
    assert_eq!(history[0].event.detail, "connection reset\nretrying later");
    assert_eq!(history[0].event.at, at("2026-03-01T10:00:02Z"));
    assert_eq!(store.device(&device.id).await.unwrap().unwrap().last_seen, at("2026-03-01T10:02:00Z"));

    // The same id with other content refuses the whole batch: the new event in it is not stored.
    let mut changed = batch[1].clone();
    changed.kind = EventKind::DownloadSucceeded;
    let fresh = event(EventKind::InstallSucceeded, update(1), "2026-03-01T10:05:00Z");
    let error =
        store.record_events(&device.id, &[fresh, changed.clone()], at("2026-03-01T10:06:00Z")).await.unwrap_err();
    assert!(matches!(error, Error::EventConflict { event_id, .. } if event_id == changed.id), "{error:?}");
    assert_eq!(store.device_history(&device.id, None, 100).await.unwrap().len(), 3);

    // Within one batch, a repeated id counts once.
    let twice = event(EventKind::InstallSucceeded, update(2), "2026-03-01T11:00:00Z");
    let summary = store.record_events(&device.id, &[twice.clone(), twice], at("2026-03-01T11:00:00Z")).await.unwrap();
    assert_eq!((summary.recorded, summary.duplicates), (1, 1));

    // Event ids are per device: another device may use the same id.
    let other = enrolled(&store, 2, None).await;
    let summary = store.record_events(&other.id, &batch, at("2026-03-01T12:00:00Z")).await.unwrap();
    assert_eq!((summary.recorded, summary.duplicates), (3, 0));
}

async fn event_batches_are_validated_and_bounded(db: &TestDb) {
    let store = db.open().await;
    let device = enrolled(&store, 1, None).await;
    let now = at("2026-03-01T00:00:00Z");

    let too_many: Vec<Event> = (0..=limits::MAX_EVENTS_PER_BATCH)
        .map(|_| event(EventKind::DownloadStarted, update(1), "2026-03-01T00:00:00Z"))
        .collect();
    let error = store.record_events(&device.id, &too_many, now).await.unwrap_err();
    assert_eq!(error.to_string(), "invalid event batch: 501 events, at most 500 allowed");

    let mut long = event(EventKind::InstallFailed { code: 1 }, update(1), "2026-03-01T00:00:00Z");
    long.detail = "x".repeat(limits::MAX_EVENT_DETAIL + 1);
    let fine = event(EventKind::DownloadStarted, update(1), "2026-03-01T00:00:00Z");
    let error = store.record_events(&device.id, &[fine.clone(), long], now).await.unwrap_err();
    assert!(error.to_string().starts_with("invalid event detail: 2049 bytes"), "{error}");

    let mut control = fine.clone();
    control.detail = "\u{0}".into();
    let error = store.record_events(&device.id, &[control], now).await.unwrap_err();
    assert!(error.to_string().contains("control character"), "{error}");
    assert!(store.device_history(&device.id, None, 10).await.unwrap().is_empty());

    let unknown = DeviceId::random();
    let error = store.record_events(&unknown, &[fine], now).await.unwrap_err();
    assert!(matches!(error, Error::UnknownDevice(id) if id == unknown), "{error:?}");
    let error = store.device_history(&unknown, None, 10).await.unwrap_err();
    assert!(matches!(error, Error::UnknownDevice(id) if id == unknown), "{error:?}");
}

async fn history_pages_newest_first(db: &TestDb) {
    let store = db.open().await;
    let device = enrolled(&store, 1, None).await;
    let other = enrolled(&store, 2, None).await;
    let events: Vec<Event> =
        (0..7).map(|i| event(EventKind::DownloadStarted, update(i), &format!("2026-03-01T00:00:0{i}Z"))).collect();
    store.record_events(&device.id, &events[..4], at("2026-03-01T00:01:00Z")).await.unwrap();
    store.record_events(&other.id, &events[..2], at("2026-03-01T00:01:00Z")).await.unwrap();
    store.record_events(&device.id, &events[4..], at("2026-03-01T00:02:00Z")).await.unwrap();

    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store.device_history(&device.id, before, 3).await.unwrap();
        assert!(page.iter().all(|stored| stored.device == device.id));
        seen.extend(page.iter().map(|stored| stored.event.id));
        match page.last() {
            Some(last) if page.len() == 3 => before = Some(last.seq),
            _ => break,
        }
    }
    let expected: Vec<EventId> = events.iter().rev().map(|event| event.id).collect();
    assert_eq!(seen, expected);
}

async fn compliance_follows_each_devices_latest_event(db: &TestDb) {
    let store = db.open().await;
    let now = at("2026-04-01T00:00:00Z");
    let (u1, u2) = (update(1), update(2));
    let mut devices = Vec::new();
    for n in 0..7 {
        devices.push(enrolled(&store, n, Some(if n < 4 { "east" } else { "west" })).await);
    }
    let record = |n: usize, events: Vec<Event>| {
        let store = store.clone();
        let id = devices[n].id;
        async move { store.record_events(&id, &events, now).await.unwrap() }
    };
    use EventKind::*;
    // 0: scanned needed, downloaded, installed, then reboot pending.
    record(
        0,
        vec![
            event(ScanFinished { result: ScanResult::Needed }, u1, "2026-03-01T00:00:00Z"),
            event(DownloadSucceeded, u1, "2026-03-01T00:01:00Z"),
            event(InstallSucceeded, u1, "2026-03-01T00:02:00Z"),
            event(RebootPending, u1, "2026-03-01T00:02:01Z"),
        ],
    )
    .await;
    // 1: installed; an older event about the same update arriving later does not change that.
    record(1, vec![event(InstallSucceeded, u1, "2026-03-02T00:00:00Z")]).await;
    record(1, vec![event(DownloadFailed { code: 7 }, u1, "2026-03-01T00:00:00Z")]).await;
    // 2: install failed with a code.
    record(
        2,
        vec![
            event(DownloadSucceeded, u1, "2026-03-01T00:00:00Z"),
            event(InstallFailed { code: 0x8024_0022 }, u1, "2026-03-01T00:05:00Z"),
        ],
    )
    .await;
    // 3: needed (download started).
    record(3, vec![event(DownloadStarted, u1, "2026-03-01T00:00:00Z")]).await;
    // 4: downloaded only; also not applicable for u2.
    record(
        4,
        vec![
            event(DownloadSucceeded, u1, "2026-03-01T00:00:00Z"),
            event(ScanFinished { result: ScanResult::NotApplicable }, u2, "2026-03-01T00:00:00Z"),
        ],
    )
    .await;
    // 5: a clock set to 2099 reported a failure; the next report, with the clock fixed, still
    // counts (events never rank later than their arrival). 6 reported nothing.
    record(5, vec![event(InstallFailed { code: 1 }, u1, "2099-01-01T00:00:00Z")]).await;
    let fixed = event(ScanFinished { result: ScanResult::NotApplicable }, u1, "2026-04-02T00:00:00Z");
    store.record_events(&devices[5].id, &[fixed], at("2026-04-02T00:00:01Z")).await.unwrap();

    let summary = store.compliance_summary(&u1, None).await.unwrap();
    let counts = (
        summary.devices,
        summary.installed,
        summary.pending_reboot,
        summary.needed,
        summary.downloaded,
        summary.failed,
        summary.not_applicable,
        summary.unknown,
    );
    assert_eq!(counts, (7, 1, 1, 1, 1, 1, 1, 1));

    let east = store.compliance_summary(&u1, Some(&"east".parse().unwrap())).await.unwrap();
    assert_eq!(
        (east.devices, east.installed, east.pending_reboot, east.failed, east.needed, east.unknown),
        (4, 1, 1, 1, 1, 0)
    );

    let nobody = store.compliance_summary(&update(99), None).await.unwrap();
    assert_eq!((nobody.devices, nobody.unknown, nobody.installed), (7, 7, 0));

    let overview = store.compliance_overview(None).await.unwrap();
    assert_eq!(overview.iter().map(|summary| summary.update).collect::<Vec<_>>(), vec![u1, u2]);
    assert_eq!((overview[1].not_applicable, overview[1].unknown), (1, 6));
    assert_eq!(overview[0], summary);

    let failed = store
        .compliance(&ComplianceQuery { state: Some(ComplianceState::Failed), ..ComplianceQuery::new(u1) })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].device, failed[0].error_code), (devices[2].id, Some(0x8024_0022)));
    assert_eq!(failed[0].at, at("2026-03-01T00:05:00Z"));

    let installed = store
        .compliance(&ComplianceQuery { state: Some(ComplianceState::Installed), ..ComplianceQuery::new(u1) })
        .await
        .unwrap();
    assert_eq!(installed.iter().map(|row| row.device).collect::<Vec<_>>(), vec![devices[1].id]);

    // All rows, two per page, in device id order.
    let mut rows = Vec::new();
    let mut query = ComplianceQuery { limit: 2, ..ComplianceQuery::new(u1) };
    loop {
        let page = store.compliance(&query).await.unwrap();
        rows.extend(page.iter().map(|row| (row.device, row.state)));
        match page.last() {
            Some(last) if page.len() == 2 => query.after = Some(last.device),
            _ => break,
        }
    }
    let mut expected: Vec<(DeviceId, ComplianceState)> = [
        (0, ComplianceState::PendingReboot),
        (1, ComplianceState::Installed),
        (2, ComplianceState::Failed),
        (3, ComplianceState::Needed),
        (4, ComplianceState::Downloaded),
        (5, ComplianceState::NotApplicable),
    ]
    .into_iter()
    .map(|(n, state)| (devices[n].id, state))
    .collect();
    expected.sort();
    assert_eq!(rows, expected);
}

async fn publish_history_appends_and_pages(db: &TestDb) {
    let store = db.open().await;
    let record = |action, update: Option<UpdateId>| NewPublishRecord {
        actor: "release-bot".into(),
        action,
        update,
        revision: update.map(|_| 1),
        product: update.map(|_| "acme-os".parse().unwrap()),
        snapshot_version: Some(10),
        detail: String::new(),
    };
    let first = store
        .append_publish(&record(PublishAction::Publish, Some(update(1))), at("2026-05-01T00:00:00Z"))
        .await
        .unwrap();
    let second = store.append_publish(&record(PublishAction::Refresh, None), at("2026-05-02T00:00:00Z")).await.unwrap();
    let third = store
        .append_publish(&record(PublishAction::Remove, Some(update(1))), at("2026-05-03T00:00:00Z"))
        .await
        .unwrap();
    assert!(first.seq < second.seq && second.seq < third.seq);
    assert_eq!(first.record, record(PublishAction::Publish, Some(update(1))));

    let all = store.publish_history(&PublishQuery::default()).await.unwrap();
    assert_eq!(all, vec![third.clone(), second.clone(), first.clone()]);
    let page = store
        .publish_history(&PublishQuery { before: Some(third.seq), limit: 1, ..PublishQuery::default() })
        .await
        .unwrap();
    assert_eq!(page, vec![second]);
    let about =
        store.publish_history(&PublishQuery { update: Some(update(1)), ..PublishQuery::default() }).await.unwrap();
    assert_eq!(about, vec![third, first]);

    let mut bad = record(PublishAction::Publish, None);
    bad.detail = "\u{7}".into();
    assert!(store.append_publish(&bad, at("2026-05-04T00:00:00Z")).await.is_err());
    assert_eq!(store.publish_history(&PublishQuery::default()).await.unwrap().len(), 3);
}

async fn admin_tokens_verify_scope_revoke_and_note_use(db: &TestDb) {
    let store = db.open().await;
    let created_at = at("2026-06-01T00:00:00Z");
    let reader = store.create_admin_token("dashboard", Scope::Read, created_at).await.unwrap();
    let writer = store.create_admin_token("release-bot", Scope::Write, created_at).await.unwrap();
    assert_eq!(reader.token.last_used, None);

    // Verification notes the use, at most once a minute.
    let t0 = at("2026-06-01T10:00:00Z");
    let verified = store.verify_admin_token(reader.secret.expose(), Scope::Read, t0).await.unwrap();
    assert_eq!((verified.id, verified.last_used), (reader.token.id, Some(t0)));
    let soon = store.verify_admin_token(reader.secret.expose(), Scope::Read, at("2026-06-01T10:00:30Z")).await.unwrap();
    assert_eq!(soon.last_used, Some(t0));
    let later =
        store.verify_admin_token(reader.secret.expose(), Scope::Read, at("2026-06-01T10:01:00Z")).await.unwrap();
    assert_eq!(later.last_used, Some(at("2026-06-01T10:01:00Z")));

    let error = store.verify_admin_token(reader.secret.expose(), Scope::Write, t0).await.unwrap_err();
    assert!(matches!(error, Error::TokenScope { has: Scope::Read, needs: Scope::Write, .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("admin token {} (dashboard) has scope read; the request needs write", reader.token.id)
    );
    assert_eq!(store.verify_admin_token(writer.secret.expose(), Scope::Read, t0).await.unwrap().scope, Scope::Write);

    // A wrong secret with a valid id, a made-up token and garbage all get the same answer.
    let secret = writer.secret.expose();
    let flipped_last = if secret.ends_with('A') { 'B' } else { 'A' };
    let wrong = format!("{}{flipped_last}", &secret[..secret.len() - 1]);
    for bad in [wrong.as_str(), "custody_admin_", "Bearer x", ""] {
        let error = store.verify_admin_token(bad, Scope::Read, t0).await.unwrap_err();
        assert!(matches!(error, Error::TokenInvalid), "{bad}: {error:?}");
    }

    let revoked = store.revoke_admin_token(&reader.token.id, at("2026-06-02T00:00:00Z")).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(at("2026-06-02T00:00:00Z")));
    let again = store.revoke_admin_token(&reader.token.id, at("2026-06-03T00:00:00Z")).await.unwrap();
    assert_eq!(again.revoked_at, Some(at("2026-06-02T00:00:00Z")));
    let error = store.verify_admin_token(reader.secret.expose(), Scope::Read, t0).await.unwrap_err();
    assert!(matches!(error, Error::TokenRevoked { .. }), "{error:?}");
    let unknown = custody_store::TokenId::random();
    assert!(
        matches!(store.revoke_admin_token(&unknown, t0).await.unwrap_err(), Error::UnknownToken(id) if id == unknown)
    );

    let listed = store.admin_tokens().await.unwrap();
    assert_eq!(listed.len(), 2);
    let names: BTreeSet<&str> = listed.iter().map(|token| token.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["dashboard", "release-bot"]));
    assert!(listed.iter().any(|token| token.id == reader.token.id && token.revoked_at.is_some()));

    let error = store.create_admin_token(" padded", Scope::Read, t0).await.unwrap_err();
    assert!(error.to_string().starts_with("invalid admin token name"), "{error}");
}

async fn two_stores_record_the_same_events_once(db: &TestDb) {
    let (a, b) = (db.open().await, db.open().await);
    let device = enrolled(&a, 1, None).await;
    let batch: Vec<Event> = (0..20)
        .map(|i| event(EventKind::DownloadStarted, update(i % 3), &format!("2026-07-01T00:00:{i:02}Z")))
        .collect();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let batch = batch.clone();
            tokio::spawn(async move { store.record_events(&device.id, &batch, at("2026-07-01T01:00:00Z")).await })
        })
        .collect();
    let (mut recorded, mut duplicates) = (0, 0);
    for task in tasks {
        let summary = task.await.unwrap().unwrap();
        recorded += summary.recorded;
        duplicates += summary.duplicates;
    }
    assert_eq!((recorded, duplicates), (20, 7 * 20));
    assert_eq!(b.device_history(&device.id, None, 100).await.unwrap().len(), 20);
    let summary = b.compliance_summary(&update(0), None).await.unwrap();
    assert_eq!((summary.needed, summary.unknown), (1, 0));
}

async fn two_stores_enroll_the_same_identity_once(db: &TestDb) {
    let (a, b) = (db.open().await, db.open().await);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { store.enroll(&new_device(1, None), at("2026-07-01T00:00:00Z")).await })
        })
        .collect();
    let mut new = Vec::new();
    let mut ids = BTreeSet::new();
    for task in tasks {
        let enrollment = task.await.unwrap().unwrap();
        ids.insert(enrollment.device().id);
        if let Enrollment::New(device) = enrollment {
            new.push(device.id);
        }
    }
    assert_eq!(new.len(), 1);
    assert_eq!(ids, BTreeSet::from([new[0]]));
    assert_eq!(a.list_devices(&DeviceQuery::default()).await.unwrap().len(), 1);
}

fn enrollment_request(uses: u32, group: Option<&str>) -> NewEnrollmentToken {
    NewEnrollmentToken {
        name: "line 3".into(),
        group: group.map(|group| group.parse().unwrap()),
        uses,
        expires_at: at("2026-08-08T00:00:00Z"),
    }
}

async fn enrollment_tokens_are_used_up_but_retries_go_through(db: &TestDb) {
    let store = db.open().await;
    let now = at("2026-08-01T00:00:00Z");
    let created = store.create_enrollment_token(&enrollment_request(1, Some("line3")), now).await.unwrap();
    let secret = created.secret.expose();
    assert!(secret.starts_with("custody_enroll_"), "{secret}");
    assert_eq!((created.token.uses, created.token.uses_left), (1, 1));

    // First attempt: redeem, then enroll with an identity issued in between.
    let attempt = EnrollmentId::random();
    let redemption = store.redeem_enrollment_token(secret, &attempt, now).await.unwrap();
    assert_eq!(redemption.previous_device, None);
    assert_eq!(redemption.token.id, created.token.id);
    let request = new_device(1, None);
    let Enrollment::New(device) = store.enroll_with_token(&created.token.id, &attempt, &request, now).await.unwrap()
    else {
        panic!("first enrollment must be new");
    };
    assert_eq!(device.group.as_ref().map(GroupName::as_str), Some("line3"), "joins the token's group");
    assert_eq!(store.enrollment_tokens().await.unwrap()[0].uses_left, 0);

    // The device did not get the answer and retries the same attempt: same device, new identity.
    let retry = store.redeem_enrollment_token(secret, &attempt, now).await.unwrap();
    assert_eq!(retry.previous_device.as_ref().map(|device| device.id), Some(device.id));
    let again = NewDevice { id: device.id, ..new_device(2, None) };
    let Enrollment::Existing(retried) =
        store.enroll_with_token(&created.token.id, &attempt, &again, now).await.unwrap()
    else {
        panic!("a retry must return the device enrolled first");
    };
    assert_eq!((retried.id, retried.identity.clone()), (device.id, certificate(2)));
    assert_eq!(store.list_devices(&DeviceQuery::default()).await.unwrap().len(), 1);

    // Another attempt finds the token used up, at either step.
    let other = EnrollmentId::random();
    let error = store.redeem_enrollment_token(secret, &other, now).await.unwrap_err();
    assert!(matches!(error, Error::EnrollmentTokenRefused), "{error:?}");
    let error = store.enroll_with_token(&created.token.id, &other, &new_device(3, None), now).await.unwrap_err();
    assert!(matches!(error, Error::EnrollmentTokenRefused), "{error:?}");
    assert_eq!(store.list_devices(&DeviceQuery::default()).await.unwrap().len(), 1, "nothing half-done");

    // Wrong secrets, made-up tokens and admin tokens are all refused alike.
    let flipped_last = if secret.ends_with('A') { 'B' } else { 'A' };
    let wrong = format!("{}{flipped_last}", &secret[..secret.len() - 1]);
    let admin = store.create_admin_token("ops", Scope::Write, now).await.unwrap();
    for bad in [wrong.as_str(), admin.secret.expose(), "custody_enroll_", ""] {
        let error = store.redeem_enrollment_token(bad, &attempt, now).await.unwrap_err();
        assert!(matches!(error, Error::EnrollmentTokenRefused), "{bad}: {error:?}");
    }
}

async fn enrollment_tokens_expire_and_are_revoked(db: &TestDb) {
    let store = db.open().await;
    let now = at("2026-08-01T00:00:00Z");
    let created = store.create_enrollment_token(&enrollment_request(5, None), now).await.unwrap();
    let secret = created.secret.expose();
    let attempt = EnrollmentId::random();
    assert!(store.redeem_enrollment_token(secret, &attempt, at("2026-08-07T23:59:59Z")).await.is_ok());
    let error = store.redeem_enrollment_token(secret, &attempt, at("2026-08-08T00:00:00Z")).await.unwrap_err();
    assert!(matches!(error, Error::EnrollmentTokenRefused), "expired: {error:?}");

    let revoked = store.revoke_enrollment_token(&created.token.id, now).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(now));
    let error = store.redeem_enrollment_token(secret, &attempt, now).await.unwrap_err();
    assert!(matches!(error, Error::EnrollmentTokenRefused), "revoked: {error:?}");
    let error = store.enroll_with_token(&created.token.id, &attempt, &new_device(1, None), now).await.unwrap_err();
    assert!(matches!(error, Error::EnrollmentTokenRefused), "revoked: {error:?}");
    assert_eq!(store.enrollment_tokens().await.unwrap(), vec![revoked]);

    let unknown = custody_store::EnrollmentTokenId::random();
    let error = store.revoke_enrollment_token(&unknown, now).await.unwrap_err();
    assert!(matches!(error, Error::UnknownEnrollmentToken(id) if id == unknown), "{error:?}");
    let mut bad = enrollment_request(0, None);
    assert!(store.create_enrollment_token(&bad, now).await.is_err());
    bad.uses = 1;
    bad.expires_at = now;
    assert!(store.create_enrollment_token(&bad, now).await.is_err());
    assert_eq!(store.enrollment_tokens().await.unwrap().len(), 1);
}

async fn two_stores_use_the_last_enrollment_once(db: &TestDb) {
    let (a, b) = (db.open().await, db.open().await);
    let now = at("2026-08-01T00:00:00Z");
    let created = a.create_enrollment_token(&enrollment_request(2, None), now).await.unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let token = created.token.id;
            tokio::spawn(async move {
                store.enroll_with_token(&token, &EnrollmentId::random(), &new_device(i, None), now).await
            })
        })
        .collect();
    let mut enrolled = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(Enrollment::New(_)) => enrolled += 1,
            Ok(Enrollment::Existing(device)) => panic!("no identity was enrolled twice: {device:?}"),
            Err(Error::EnrollmentTokenRefused) => {}
            Err(error) => panic!("{error:?}"),
        }
    }
    assert_eq!(enrolled, 2);
    assert_eq!(b.list_devices(&DeviceQuery::default()).await.unwrap().len(), 2);
    assert_eq!(b.enrollment_tokens().await.unwrap()[0].uses_left, 0);
}

async fn a_version_2_database_keeps_its_enrollment_tokens(db: &TestDb) {
    let store = db.open().await;
    let now = at("2026-08-01T00:00:00Z");
    let created = store.create_enrollment_token(&enrollment_request(2, None), now).await.unwrap();
    let device = enrolled(&store, 1, None).await;
    store.close().await;
    db.raw(UNDO_MIGRATION_3).await;

    let store = db.open().await;
    assert_eq!(store.health().await.unwrap().schema_version, SCHEMA_VERSION);
    assert_eq!(store.device(&device.id).await.unwrap().unwrap().revoked_at, None);
    let redeemed = store.redeem_enrollment_token(created.secret.expose(), &EnrollmentId::random(), now).await.unwrap();
    assert_eq!(redeemed.token.id, created.token.id, "a token made before the upgrade still works");
}

async fn devices_are_revoked_once_and_keep_their_record(db: &TestDb) {
    let store = db.open().await;
    let device = enrolled(&store, 1, Some("lab")).await;
    let other = enrolled(&store, 2, Some("lab")).await;
    let now = at("2026-09-01T00:00:00Z");
    let content = Sha256::of(b"content");
    store
        .announce_peer(&announcement(&device, content, "10.0.0.1", &[], now), PeerReach::Anyone, 50, now)
        .await
        .unwrap();

    let revoked = store.revoke_device(&device.id, now).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(now));
    assert_eq!(revoked.identity, device.identity, "the record stays");
    let again = store.revoke_device(&device.id, at("2026-09-02T00:00:00Z")).await.unwrap();
    assert_eq!(again.revoked_at, Some(now), "the first revocation time is kept");
    let found = store.device_by_identity(&device.identity.key()).await.unwrap().unwrap();
    assert_eq!(found.revoked_at, Some(now), "authentication sees the revocation");
    let listed = store.list_devices(&DeviceQuery::default()).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(store.device(&other.id).await.unwrap().unwrap().revoked_at, None);

    // Its announcement is withdrawn and it cannot announce again.
    let found = store
        .announce_peer(&announcement(&other, content, "10.0.0.1", &[], now), PeerReach::Anyone, 50, now)
        .await
        .unwrap();
    assert!(found.is_empty(), "{found:?}");
    let error = store
        .announce_peer(&announcement(&device, content, "10.0.0.1", &[], now), PeerReach::Anyone, 50, now)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::DeviceRevoked(id) if id == device.id), "{error:?}");
    let unknown = DeviceId::random();
    assert!(matches!(store.revoke_device(&unknown, now).await, Err(Error::UnknownDevice(id)) if id == unknown));
}

async fn enrollment_tokens_of_enrollment_json_are_imported_once(db: &TestDb) {
    let store = db.open().await;
    let now = at("2026-08-01T00:00:00Z");
    let device = enrolled(&store, 1, None).await;
    // As the service's enrollment.json kept them: the SHA-256 of the secret's text.
    let id = EnrollmentTokenId::random();
    let text = "uH3iR5kQ0wQm1b3Qm8yI5Zt1yqvV9wz2q8v1x7c3k0A";
    let secret = format!("custody_enroll_{}_{text}", id.as_uuid().simple());
    let token = ImportedEnrollmentToken {
        id,
        name: "line 3".into(),
        group: Some("line3".parse().unwrap()),
        text_sha256: Sha256::of(text.as_bytes()),
        uses: 3,
        uses_left: 2,
        created_at: at("2026-07-30T00:00:00Z"),
        expires_at: at("2026-08-06T00:00:00Z"),
    };
    let remembered = EnrollmentId::random();
    let enrollments = [
        ImportedEnrollment { enrollment: remembered, token: id, device: device.id, at: at("2026-07-31T00:00:00Z") },
        // A device the store does not have: skipped, not an error.
        ImportedEnrollment {
            enrollment: EnrollmentId::random(),
            token: id,
            device: DeviceId::random(),
            at: at("2026-07-31T00:00:00Z"),
        },
    ];
    let summary = store.import_enrollment_tokens(std::slice::from_ref(&token), &enrollments).await.unwrap();
    assert_eq!(summary, EnrollmentImport { tokens: 1, tokens_present: 0, enrollments: 1, enrollments_skipped: 1 });
    let again = store.import_enrollment_tokens(std::slice::from_ref(&token), &enrollments).await.unwrap();
    assert_eq!(again, EnrollmentImport { tokens: 0, tokens_present: 1, enrollments: 0, enrollments_skipped: 2 });
    let listed = store.enrollment_tokens().await.unwrap();
    assert_eq!((listed.len(), listed[0].uses, listed[0].uses_left), (1, 3, 2));
    assert_eq!(listed[0].group.as_ref().map(GroupName::as_str), Some("line3"));

    // The remembered enrollment is a retry; a new one uses the token up by one.
    let retry = store.redeem_enrollment_token(&secret, &remembered, now).await.unwrap();
    assert_eq!(retry.previous_device.map(|d| d.id), Some(device.id));
    let attempt = EnrollmentId::random();
    assert_eq!(store.redeem_enrollment_token(&secret, &attempt, now).await.unwrap().previous_device, None);
    store.enroll_with_token(&id, &attempt, &new_device(2, None), now).await.unwrap();
    assert_eq!(store.enrollment_tokens().await.unwrap()[0].uses_left, 1);
    let wrong = format!("custody_enroll_{}_{}", id.as_uuid().simple(), "A".repeat(43));
    assert!(matches!(store.redeem_enrollment_token(&wrong, &attempt, now).await, Err(Error::EnrollmentTokenRefused)));
    assert!(matches!(
        store.redeem_enrollment_token(&secret, &attempt, token.expires_at).await,
        Err(Error::EnrollmentTokenRefused)
    ));

    let bad = ImportedEnrollmentToken { uses_left: 4, ..token };
    let error = store.import_enrollment_tokens(&[bad], &[]).await.unwrap_err();
    assert!(error.to_string().contains("4 left of 3"), "{error}");
}

fn announcement(device: &Device, content: Sha256, public: &str, networks: &[&str], now: Timestamp) -> PeerAnnouncement {
    PeerAnnouncement {
        device: device.id,
        content,
        mode: 3,
        public_addr: public.parse().unwrap(),
        addresses: networks.iter().map(|n| n.parse().unwrap()).collect(),
        port: 7680,
        complete: false,
        cache_server: false,
        expires_at: now + jiff::SignedDuration::from_mins(15),
    }
}

async fn peers_are_found_by_reach_never_revoked_or_expired(db: &TestDb) {
    let store = db.open().await;
    let now = at("2026-09-01T12:00:00Z");
    let content = Sha256::of(b"the update");
    let asker = enrolled(&store, 0, Some("plant-7")).await;
    let nat = enrolled(&store, 1, Some("plant-9")).await; // behind the asker's public address
    let subnet = enrolled(&store, 2, None).await; // same LAN, another uplink
    let cache = enrolled(&store, 3, Some("plant-7")).await; // the group's cache server, elsewhere
    let colleague = enrolled(&store, 4, Some("plant-7")).await; // same group, elsewhere
    let stranger = enrolled(&store, 5, Some("plant-9")).await;
    let revoked = enrolled(&store, 6, None).await;
    let expired = enrolled(&store, 7, None).await;
    let other_content = enrolled(&store, 8, None).await;
    let others = [
        (&nat, "203.0.113.7", vec!["192.168.7.20/24"], true, false),
        (&subnet, "198.51.100.1", vec!["192.168.7.30/24", "fd00::30/64"], false, false),
        (&cache, "198.51.100.9", vec!["10.9.0.2/16"], true, true),
        (&colleague, "198.51.100.10", vec!["10.10.0.2/16"], false, false),
        (&stranger, "198.51.100.11", vec!["192.168.8.20/24"], true, false),
        (&revoked, "203.0.113.7", vec![], true, false),
    ];
    for (device, public, networks, complete, cache_server) in others {
        let mut entry = announcement(device, content, public, &networks, now);
        (entry.complete, entry.cache_server) = (complete, cache_server);
        store.announce_peer(&entry, PeerReach::Anyone, 50, now).await.unwrap();
    }
    let mut stale = announcement(&expired, content, "203.0.113.7", &[], at("2026-09-01T11:00:00Z"));
    stale.expires_at = at("2026-09-01T11:30:00Z");
    store.announce_peer(&stale, PeerReach::Anyone, 50, at("2026-09-01T11:00:00Z")).await.unwrap();
    store
        .announce_peer(
            &announcement(&other_content, Sha256::of(b"x"), "203.0.113.7", &[], now),
            PeerReach::Lan,
            50,
            now,
        )
        .await
        .unwrap();
    store.revoke_device(&revoked.id, now).await.unwrap();

    let mine = announcement(&asker, content, "203.0.113.7", &["192.168.7.10/24"], now);
    let found = |reach, limit| {
        let (store, mine) = (store.clone(), mine.clone());
        async move {
            let candidates = store.announce_peer(&mine, reach, limit, now).await.unwrap();
            candidates.iter().map(|c| c.announcement.device).collect::<Vec<_>>()
        }
    };
    // Cache servers first, then complete peers, then behind the same public address, then the group.
    assert_eq!(found(PeerReach::Lan, 50).await, [cache.id, nat.id, subnet.id]);
    assert_eq!(found(PeerReach::Group, 50).await, [cache.id, nat.id, colleague.id, subnet.id]);
    assert_eq!(found(PeerReach::Anyone, 50).await, [cache.id, nat.id, stranger.id, colleague.id, subnet.id]);
    assert_eq!(found(PeerReach::Anyone, 2).await, [cache.id, nat.id]);

    // What a candidate says, with its device's group; renewing replaces the announcement.
    let candidates = store.announce_peer(&mine, PeerReach::Lan, 50, now).await.unwrap();
    let subnet_entry = candidates.iter().find(|c| c.announcement.device == subnet.id).unwrap();
    assert_eq!(subnet_entry.group, None);
    assert_eq!(subnet_entry.announcement.addresses.len(), 2);
    assert_eq!(subnet_entry.announcement.addresses[1].to_string(), "fd00::30/64");
    assert_eq!(candidates[0].group.as_ref().map(GroupName::as_str), Some("plant-7"));
    let mut moved = announcement(&subnet, content, "198.51.100.1", &["172.16.0.3/12"], now);
    moved.complete = true;
    store.announce_peer(&moved, PeerReach::Lan, 50, now).await.unwrap();
    assert_eq!(found(PeerReach::Lan, 50).await, [cache.id, nat.id], "left the asker's LAN");

    // Announcements expire unless renewed.
    let later = now + jiff::SignedDuration::from_mins(16);
    let mut fresh = mine.clone();
    fresh.expires_at = later + jiff::SignedDuration::from_mins(15);
    assert!(store.announce_peer(&fresh, PeerReach::Anyone, 50, later).await.unwrap().is_empty());

    // Bounds.
    let mut bad = mine.clone();
    bad.port = 0;
    assert!(store.announce_peer(&bad, PeerReach::Lan, 50, now).await.unwrap_err().to_string().contains("port"));
    bad = mine.clone();
    bad.addresses = vec!["10.0.0.1/8".parse().unwrap(); limits::MAX_PEER_ADDRESSES + 1];
    assert!(store.announce_peer(&bad, PeerReach::Lan, 50, now).await.is_err());
    assert!(store.announce_peer(&mine, PeerReach::Lan, 0, now).await.is_err());
    bad = mine.clone();
    bad.device = DeviceId::random();
    assert!(matches!(store.announce_peer(&bad, PeerReach::Lan, 50, now).await, Err(Error::UnknownDevice(_))));
}

#[tokio::test]
async fn unsupported_urls_are_refused_without_echoing_them() {
    let error = Store::open("mysql://root:hunter2@db/custody", &StoreOptions::default()).await.unwrap_err();
    assert!(matches!(&error, Error::UnsupportedUrl { scheme } if scheme == "mysql"), "{error:?}");
    assert!(!error.to_string().contains("hunter2"));
}

#[tokio::test]
async fn a_remote_database_needs_verified_tls_or_an_explicit_opt_out() {
    for url in
        ["postgres://custody@db.example.com/custody", "postgres://custody@db.example.com/custody?sslmode=require"]
    {
        let error = Store::open(url, &StoreOptions::default()).await.unwrap_err();
        assert!(matches!(&error, Error::UnverifiedDatabase { host } if host == "db.example.com"), "{url}: {error:?}");
        assert!(error.to_string().contains("sslmode=verify-full"), "{error}");
    }
}

// ---- product and agent events, delivery statistics (migration 4) -------------------------------

async fn product_and_agent_events_change_compliance_only_where_relevant(db: &TestDb) {
    let store = db.open().await;
    let device = enrolled(&store, 1, None).await;
    let (u1, u2, u3) = (update(1), update(2), update(3));
    let product = || Some("acme-agent".parse().unwrap());
    let installed = [u1, u2, u3].map(|u| event(EventKind::InstallSucceeded, u, "2026-04-01T10:00:00Z"));
    store.record_events(&device.id, &installed, at("2026-04-01T10:00:00Z")).await.unwrap();
    let mut held = event(EventKind::Held, u1, "2026-04-01T11:00:00Z");
    held.update = None;
    held.product = product();
    let mut unheld = event(EventKind::Unheld, u1, "2026-04-01T11:00:01Z");
    unheld.update = Some(UpdateRef { id: u1, revision: 0 });
    let mut scan_failed = event(EventKind::ScanFailed { code: 110 }, u1, "2026-04-01T11:00:02Z");
    scan_failed.update = None;
    scan_failed.detail = "service-unreachable: connection timed out".into();
    let recovered_kind = EventKind::Recovered { operation: Operation::Install, outcome: RecoveryOutcome::Undone };
    let mut recovered = event(recovered_kind, u1, "2026-04-01T11:00:03Z");
    recovered.product = product();
    recovered.from = Some("2.4.0".into());
    recovered.to = Some("2.3.1".into());
    let mut manual = event(EventKind::RolledBack { reason: RollbackReason::Manual }, u1, "2026-04-01T11:00:04Z");
    manual.product = product();
    (manual.from, manual.to) = (Some("2.4.0".into()), Some("2.3.1".into()));
    let mut boot = event(EventKind::RolledBack { reason: RollbackReason::BootFailed }, u2, "2026-04-01T11:00:05Z");
    boot.product = Some("acme-os".parse().unwrap());
    (boot.from, boot.to) = (Some("7.1".into()), Some("7.0".into()));
    let mut uninstalled = event(EventKind::Uninstalled, u3, "2026-04-01T11:00:06Z");
    uninstalled.product = Some("acme-tools".parse().unwrap());
    uninstalled.from = Some("1.0".into());
    let batch = [held, unheld, scan_failed, recovered, manual, boot, uninstalled];
    let summary = store.record_events(&device.id, &batch, at("2026-04-01T12:00:00Z")).await.unwrap();
    assert_eq!((summary.recorded, summary.duplicates), (7, 0));
    let retry = store.record_events(&device.id, &batch, at("2026-04-01T12:01:00Z")).await.unwrap();
    assert_eq!((retry.recorded, retry.duplicates), (0, 7), "stored exactly as sent, so a retry matches");

    let history = store.device_history(&device.id, None, 100).await.unwrap();
    let stored: Vec<Event> = history.iter().rev().skip(3).map(|stored| stored.event.clone()).collect();
    assert_eq!(stored, batch.to_vec());

    let state = |u: UpdateId| {
        let store = store.clone();
        async move {
            let rows = store.compliance(&ComplianceQuery::new(u)).await.unwrap();
            rows.first().map(|row| row.state)
        }
    };
    // Holds, a failed scan and a recovery leave u1 as the rollback left it: needed again.
    assert_eq!(state(u1).await, Some(ComplianceState::Needed));
    assert_eq!(state(u2).await, Some(ComplianceState::Failed), "an OS image that failed its boot");
    assert_eq!(state(u3).await, Some(ComplianceState::NotApplicable), "the product was removed");

    // A rollback without the update it left (not known to the device) changes nothing.
    let mut anonymous = event(EventKind::RolledBack { reason: RollbackReason::Manual }, u3, "2026-04-01T13:00:00Z");
    anonymous.update = None;
    anonymous.product = product();
    (anonymous.from, anonymous.to) = (Some("2.3.1".into()), Some("2.2".into()));
    store.record_events(&device.id, &[anonymous], at("2026-04-01T13:00:00Z")).await.unwrap();
    assert_eq!(state(u3).await, Some(ComplianceState::NotApplicable));

    // The store refuses an event that lacks what its kind needs.
    let mut incomplete = event(EventKind::Uninstalled, u3, "2026-04-01T14:00:00Z");
    incomplete.product = product();
    let error = store.record_events(&device.id, &[incomplete], at("2026-04-01T14:00:00Z")).await.unwrap_err();
    assert_eq!(error.to_string(), "invalid event: uninstalled needs a from version");
}

async fn delivery_statistics_are_summed_per_group_once(db: &TestDb) {
    let store = db.open().await;
    let lab1 = enrolled(&store, 1, Some("lab")).await;
    let lab2 = enrolled(&store, 2, Some("lab")).await;
    let field = enrolled(&store, 3, Some("field")).await;
    let loose = enrolled(&store, 4, None).await;
    let _silent = enrolled(&store, 5, Some("lab")).await;
    let downloaded = |counts: [u64; 6], time: &str| {
        let mut event = event(EventKind::DownloadSucceeded, update(1), time);
        event.delivery = Some(Delivery::from_counts(counts));
        event
    };
    let now = at("2026-05-01T00:00:00Z");
    let first = downloaded([100, 0, 300, 0, 0, 50], "2026-05-01T00:00:00Z");
    store
        .record_events(&lab1.id, &[first.clone(), downloaded([10, 20, 0, 30, 40, 0], "2026-05-01T00:01:00Z")], now)
        .await
        .unwrap();
    store.record_events(&lab1.id, &[first], now).await.unwrap();
    let without = event(EventKind::DownloadSucceeded, update(2), "2026-05-01T00:02:00Z");
    store
        .record_events(&lab2.id, &[downloaded([5, 0, 0, 0, 0, 0], "2026-05-01T00:00:00Z"), without], now)
        .await
        .unwrap();
    store.record_events(&field.id, &[downloaded([0, 1000, 0, 0, 0, 0], "2026-05-01T00:00:00Z")], now).await.unwrap();
    store.record_events(&loose.id, &[downloaded([7, 0, 0, 0, 0, 1], "2026-05-01T00:00:00Z")], now).await.unwrap();

    let groups = store.delivery_by_group().await.unwrap();
    let summary: Vec<(Option<String>, u64, u64, [u64; 6])> = groups
        .iter()
        .map(|g| (g.group.as_ref().map(ToString::to_string), g.devices, g.downloads, g.bytes.counts()))
        .collect();
    assert_eq!(
        summary,
        [
            (Some("field".into()), 1, 1, [0, 1000, 0, 0, 0, 0]),
            (Some("lab".into()), 2, 3, [115, 20, 300, 30, 40, 50]),
            (None, 1, 1, [7, 0, 0, 0, 0, 1]),
        ],
        "the retried event counts once; a download without statistics not at all"
    );
    let history = store.device_history(&lab1.id, None, 10).await.unwrap();
    assert_eq!(history.last().unwrap().event.delivery, Some(Delivery::from_counts([100, 0, 300, 0, 0, 50])));
}

async fn a_version_3_database_keeps_its_events(db: &TestDb) {
    let store = db.open().await;
    let device = enrolled(&store, 1, None).await;
    let events: Vec<Event> = (0..3)
        .map(|i| event(EventKind::InstallFailed { code: i }, update(1), &format!("2026-06-01T00:00:0{i}Z")))
        .collect();
    store.record_events(&device.id, &events, at("2026-06-01T00:01:00Z")).await.unwrap();
    let before = store.device_history(&device.id, None, 10).await.unwrap();
    store.close().await;
    db.raw(UNDO_MIGRATION_4).await;

    let store = db.open().await;
    assert_eq!(store.health().await.unwrap().schema_version, SCHEMA_VERSION);
    assert_eq!(store.device_history(&device.id, None, 10).await.unwrap(), before, "every event and its seq kept");
    let rows = store.compliance(&ComplianceQuery::new(update(1))).await.unwrap();
    assert_eq!((rows[0].state, rows[0].error_code), (ComplianceState::Failed, Some(2)));
    let mut later = event(EventKind::Held, update(1), "2026-06-01T00:02:00Z");
    later.update = None;
    later.product = Some("acme-agent".parse().unwrap());
    store.record_events(&device.id, &[later], at("2026-06-01T00:02:00Z")).await.unwrap();
    let history = store.device_history(&device.id, None, 10).await.unwrap();
    assert!(history[0].seq > before[0].seq, "sequence numbers keep growing after the table was rebuilt");
}
