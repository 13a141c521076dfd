//! The updater against real repositories served over HTTP on loopback.

mod support;

use std::time::Duration;

use custody_client::{Error, FetchError, HttpFetcher, RoleLimits, Updater, UpdaterConfig};
use support::{Misbehaviour, TestRepo, TestServer};

struct Client {
    dir: tempfile::TempDir,
}

impl Client {
    fn new(repo: &TestRepo) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root.json"), repo.root_bytes()).unwrap();
        Self { dir }
    }

    fn updater(&self, server: &TestServer, limits: RoleLimits, timeout: Duration) -> Updater<HttpFetcher> {
        let fetcher =
            HttpFetcher::new(custody_tls::plain_http_client(&custody_tls::ProxySettings::direct()).unwrap(), timeout);
        let config = UpdaterConfig {
            metadata_dir: self.dir.path().to_owned(),
            metadata_url: format!("{}/metadata", server.base),
            limits,
            snapshot_proofs: false,
        };
        Updater::new(config, fetcher, jiff::Timestamp::now()).unwrap()
    }

    fn default_updater(&self, server: &TestServer) -> Updater<HttpFetcher> {
        self.updater(server, RoleLimits::default(), Duration::from_secs(10))
    }

    fn stored(&self, role: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.path().join(format!("{role}.json"))).ok()
    }
}

async fn setup() -> (tempfile::TempDir, TestRepo, TestServer) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(tmp.path());
    let server = TestServer::start(tmp.path().to_owned()).await;
    (tmp, repo, server)
}

#[tokio::test]
async fn first_refresh_asks_in_workflow_order_and_stores_bytes_as_received() {
    let (_tmp, repo, server) = setup().await;
    let client = Client::new(&repo);
    client.default_updater(&server).refresh().await.unwrap();
    assert_eq!(
        server.take_requests(),
        ["/metadata/2.root.json", "/metadata/timestamp.json", "/metadata/1.snapshot.json", "/metadata/1.targets.json"]
    );
    for (role, file) in
        [("timestamp", "timestamp.json"), ("snapshot", "1.snapshot.json"), ("targets", "1.targets.json")]
    {
        assert_eq!(client.stored(role).unwrap(), std::fs::read(repo.metadata_dir().join(file)).unwrap(), "{role}");
    }
}

#[tokio::test]
async fn refresh_when_nothing_changed_reads_only_timestamp_after_the_root_probe() {
    let (_tmp, repo, server) = setup().await;
    let client = Client::new(&repo);
    client.default_updater(&server).refresh().await.unwrap();
    server.take_requests();
    client.default_updater(&server).refresh().await.unwrap();
    assert_eq!(server.take_requests(), ["/metadata/2.root.json", "/metadata/timestamp.json"]);
}

#[tokio::test]
async fn target_is_downloaded_verified_cached_and_refused_when_changed() {
    let (tmp, mut repo, server) = setup().await;
    repo.add_target("targets", "apps/editor.tar.zst", b"editor v1");
    repo.publish(&["targets"]);
    let client = Client::new(&repo);
    let out = tempfile::tempdir().unwrap();
    let base = format!("{}/targets", server.base);

    let mut updater = client.default_updater(&server);
    let target = updater.target_info("apps/editor.tar.zst").await.unwrap();
    let path = updater.fetch_target_into(&target, &base, out.path()).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"editor v1");
    server.take_requests();
    updater.fetch_target_into(&target, &base, out.path()).await.unwrap();
    assert!(server.take_requests().is_empty(), "a stored, matching target is not downloaded again");

    // The origin (or a cache in front of it) now serves other bytes of the same length under the signed name.
    std::fs::remove_file(&path).unwrap();
    for hashed in target.consistent_paths() {
        std::fs::write(tmp.path().join("targets").join(hashed), b"editor v2").unwrap();
    }
    let err = updater.fetch_target_into(&target, &base, out.path()).await.unwrap_err();
    assert!(matches!(err, Error::Metadata(custody_tuf::Error::HashMismatch { .. })), "{err:?}");
    assert!(!path.exists(), "nothing unverified is stored");
}

#[tokio::test]
async fn delegated_roles_are_loaded_lazily_in_search_order() {
    let (_tmp, mut repo, server) = setup().await;
    repo.delegate("targets", "apps", &["apps/*"], false);
    repo.delegate("targets", "drivers", &["drivers/*"], false);
    repo.delegate("apps", "apps-beta", &["apps/*"], true);
    repo.add_target("apps-beta", "apps/x", b"x");
    repo.publish(&["apps-beta", "apps", "drivers", "targets"]);
    let client = Client::new(&repo);
    let mut updater = client.default_updater(&server);
    updater.refresh().await.unwrap();
    server.take_requests();
    let target = updater.target_info("apps/x").await.unwrap();
    assert_eq!(target.role(), "apps-beta");
    assert_eq!(server.take_requests(), ["/metadata/1.apps.json", "/metadata/1.apps-beta.json"]);
    assert!(matches!(updater.target_info("apps/none").await, Err(Error::TargetNotFound(_))));
}

#[tokio::test]
async fn delegation_search_is_bounded() {
    let (_tmp, mut repo, server) = setup().await;
    let names: Vec<String> = (0..6).map(|i| format!("level{i}")).collect();
    let mut parent = "targets".to_owned();
    for name in &names {
        repo.delegate(&parent, name, &["*"], false);
        parent = name.clone();
    }
    repo.add_target(&parent, "deep", b"deep");
    let all: Vec<&str> = names.iter().map(String::as_str).chain(["targets"]).collect();
    repo.publish(&all);
    let client = Client::new(&repo);
    let limits = RoleLimits { max_delegations: 4, ..RoleLimits::default() };
    let mut updater = client.updater(&server, limits, Duration::from_secs(10));
    assert!(matches!(updater.target_info("deep").await, Err(Error::TooManyRoles { limit: 4, .. })));
    let mut unbounded = client.default_updater(&server);
    assert_eq!(unbounded.target_info("deep").await.unwrap().role(), "level5");
}

#[tokio::test]
async fn endless_metadata_is_cut_off_at_the_size_cap() {
    let (_tmp, repo, server) = setup().await;
    server.misbehave.lock().unwrap().insert("/metadata/timestamp.json".into(), Misbehaviour::Endless);
    let client = Client::new(&repo);
    let err = client.default_updater(&server).refresh().await.unwrap_err();
    assert!(matches!(err, Error::Fetch(FetchError::TooLong { limit: 16_384, .. })), "{err:?}");
    assert!(client.stored("timestamp").is_none());

    server.misbehave.lock().unwrap().insert("/metadata/2.root.json".into(), Misbehaviour::Endless);
    let err = client.default_updater(&server).refresh().await.unwrap_err();
    assert!(matches!(err, Error::Fetch(FetchError::TooLong { limit: 512_000, .. })), "{err:?}");
}

#[tokio::test]
async fn drip_fed_metadata_times_out() {
    let (_tmp, repo, server) = setup().await;
    server.misbehave.lock().unwrap().insert("/metadata/timestamp.json".into(), Misbehaviour::Drip);
    let client = Client::new(&repo);
    let err = client.updater(&server, RoleLimits::default(), Duration::from_millis(800)).refresh().await.unwrap_err();
    assert!(matches!(err, Error::Fetch(FetchError::Timeout { .. })), "{err:?}");
}

#[tokio::test]
async fn rollback_of_timestamp_is_refused_and_trusted_metadata_is_kept() {
    let (_tmp, mut repo, server) = setup().await;
    let client = Client::new(&repo);
    let old = std::fs::read(repo.metadata_dir().join("timestamp.json")).unwrap();
    repo.publish(&["targets"]);
    client.default_updater(&server).refresh().await.unwrap();
    let trusted = client.stored("timestamp").unwrap();
    std::fs::write(repo.metadata_dir().join("timestamp.json"), &old).unwrap();
    let err = client.default_updater(&server).refresh().await.unwrap_err();
    assert!(matches!(err, Error::Metadata(custody_tuf::Error::Rollback { .. })), "{err:?}");
    assert_eq!(client.stored("timestamp").unwrap(), trusted);
}

#[tokio::test]
async fn expired_timestamp_is_refused() {
    let (_tmp, mut repo, server) = setup().await;
    repo.timestamp.expires = custody_tuf::parse_expires("2020-01-01T00:00:00Z").unwrap();
    repo.publish_timestamp();
    let client = Client::new(&repo);
    let err = client.default_updater(&server).refresh().await.unwrap_err();
    assert!(matches!(err, Error::Metadata(custody_tuf::Error::Expired { .. })), "{err:?}");
    assert!(client.stored("timestamp").is_none());
}

#[tokio::test]
async fn root_rotation_needs_old_and_new_keys() {
    let (_tmp, mut repo, server) = setup().await;
    let client = Client::new(&repo);
    let new_key = custody_tuf::PrivateKey::generate(custody_tuf::PrivateKeyKind::EcdsaP256).unwrap();
    let old_key = repo.keys.remove("root").unwrap();
    repo.root.version = 2;
    repo.root.keys.insert(new_key.key_id(), new_key.public().clone());
    repo.root.roles.get_mut("root").unwrap().keyids = vec![new_key.key_id()];

    // Signed by the new key alone: refused.
    repo.keys.insert("root".into(), new_key);
    repo.write_root();
    let err = client.default_updater(&server).refresh().await.unwrap_err();
    assert!(matches!(err, Error::Metadata(custody_tuf::Error::Threshold { .. })), "{err:?}");

    // Signed by old and new: trusted, and persisted as root.json.
    let mut md = custody_tuf::Metadata::new(repo.root.clone()).unwrap();
    md.sign(&old_key).unwrap();
    md.sign(&repo.keys["root"]).unwrap();
    std::fs::write(repo.metadata_dir().join("2.root.json"), md.to_bytes()).unwrap();
    let mut updater = client.default_updater(&server);
    updater.refresh().await.unwrap();
    assert_eq!(updater.trusted().root().version, 2);
    assert_eq!(client.stored("root").unwrap(), md.to_bytes());
}

#[tokio::test]
async fn root_rotations_per_cycle_are_bounded() {
    let (_tmp, mut repo, server) = setup().await;
    for _ in 0..3 {
        repo.root.version += 1;
        repo.write_root();
    }
    let client = Client::new(&repo);
    let limits = RoleLimits { max_root_rotations: 2, ..RoleLimits::default() };
    let mut updater = client.updater(&server, limits, Duration::from_secs(10));
    updater.refresh().await.unwrap();
    assert_eq!(updater.trusted().root().version, 3);
    let mut updater = client.default_updater(&server);
    updater.refresh().await.unwrap();
    assert_eq!(updater.trusted().root().version, 4);
}

#[tokio::test]
async fn a_repository_on_a_local_file_system_is_read_with_the_same_checks() {
    let (tmp, mut repo, _server) = setup().await;
    repo.add_target("targets", "defs/av-1.bin", b"definitions 1");
    repo.publish(&["targets"]);
    let client = Client::new(&repo);
    let config = UpdaterConfig {
        metadata_dir: client.dir.path().to_owned(),
        metadata_url: format!("file://{}/metadata", tmp.path().display()),
        limits: RoleLimits { timestamp_max_length: 100, ..RoleLimits::default() },
        snapshot_proofs: false,
    };
    let mut updater = Updater::new(config.clone(), custody_client::FileFetcher, jiff::Timestamp::now()).unwrap();
    let err = updater.refresh().await.unwrap_err();
    assert!(matches!(err, Error::Fetch(FetchError::TooLong { limit: 100, .. })), "{err:?}");

    let config = UpdaterConfig { limits: RoleLimits::default(), ..config };
    let mut updater = Updater::new(config, custody_client::FileFetcher, jiff::Timestamp::now()).unwrap();
    let target = updater.target_info("defs/av-1.bin").await.unwrap();
    let base = format!("file://{}/targets", tmp.path().display());
    let content = updater.download_target(&target, &base).await.unwrap();
    assert_eq!(content.data(), b"definitions 1");
}
