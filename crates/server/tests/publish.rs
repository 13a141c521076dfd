//! What the service accepts as a publish, over its real HTTPS listener on loopback: only targets metadata signed by
//! a threshold of the role's keys, for the next version, with its content stored. The service's own (online) keys
//! cannot publish anything, so a compromised service cannot create or change an update (WSUSpendu).

use std::path::{Path, PathBuf};

use custody_repo::{KeySpec, Passphrase, Repository};
use custody_server::{DataDir, ServiceConfig};
use custody_tls::{ProxySettings, TransportConfig};
use custody_tuf::{Metadata, PrivateKey, PrivateKeyKind, TargetFile, Targets};
use jiff::Timestamp;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Service {
    _dir: tempfile::TempDir,
    data: PathBuf,
    running: Option<custody_server::Running>,
    client: reqwest::Client,
    token: String,
}

impl Service {
    /// A service on a new data directory; `prepare` may change the repository before it starts.
    async fn start(prepare: impl FnOnce(&DataDir)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = ServiceConfig::from_toml("[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n").unwrap();
        let (created, _) = DataDir::open_or_create(&data, &config).unwrap();
        prepare(&created);
        let running = custody_server::start(&data, config).await.unwrap();
        let transport = TransportConfig::load(&data.join("client/custody.toml")).unwrap();
        let client = transport.tls_client().unwrap().http_client(&ProxySettings::direct()).unwrap();
        let token = std::fs::read_to_string(data.join("admin-token")).unwrap().trim().to_owned();
        Self { _dir: dir, data, running: Some(running), client, token }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.as_ref().unwrap().https_url)
    }

    async fn upload(&self, bytes: &[u8]) {
        let hex = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes));
        let response = self
            .client
            .put(self.url(&format!("/admin/v1/content/sha256/{hex}")))
            .bearer_auth(&self.token)
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    }

    async fn publish(&self, metadata: &Metadata<Targets>) -> (StatusCode, Value) {
        let body =
            json!({"role": "targets", "metadata": serde_json::from_slice::<Value>(&metadata.to_bytes()).unwrap()});
        let response =
            self.client.post(self.url("/admin/v1/publish")).bearer_auth(&self.token).json(&body).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// The published top-level targets metadata.
    fn published_targets(&self) -> Metadata<Targets> {
        let dir = self.data.join("repo/metadata");
        let timestamp: Value = serde_json::from_slice(&std::fs::read(dir.join("timestamp.json")).unwrap()).unwrap();
        let snapshot_version = timestamp["signed"]["meta"]["snapshot.json"]["version"].as_u64().unwrap();
        let snapshot: Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{snapshot_version}.snapshot.json"))).unwrap())
                .unwrap();
        let version = snapshot["signed"]["meta"]["targets.json"]["version"].as_u64().unwrap();
        let bytes = std::fs::read(dir.join(format!("{version}.targets.json"))).unwrap();
        Metadata::from_bytes(&bytes, "targets").unwrap()
    }

    /// The next targets version listing `content` as `path`, unsigned.
    fn next_targets(&self, path: &str, content: &[u8]) -> Targets {
        let mut next = self.published_targets().signed().clone();
        next.version += 1;
        next.expires = Timestamp::from_second(Timestamp::now().as_second() + 86_400).unwrap();
        next.targets.insert(path.to_owned(), TargetFile::describing(content, None));
        next
    }

    async fn stop(mut self) {
        self.running.take().unwrap().shutdown().await;
    }
}

fn key_files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    files.sort();
    files
}

fn read_key(path: &Path) -> PrivateKey {
    custody_repo::keys::read_key_file(path, &Passphrase::none()).unwrap()
}

fn signed(targets: Targets, keys: &[&PrivateKey]) -> Metadata<Targets> {
    let mut metadata = Metadata::new(targets).unwrap();
    for key in keys {
        metadata.sign(key).unwrap();
    }
    metadata
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_cannot_publish_with_its_own_keys() {
    let service = Service::start(|_| {}).await;
    let content = b"an update the service would like to slip in";
    service.upload(content).await;
    let before = service.published_targets().signed().version;
    for online in ["snapshot.", "timestamp."] {
        let key = read_key(&key_files(&service.data.join("repo/keys"), online)[0]);
        let forged = signed(service.next_targets("acme/evil.bin", content), &[&key]);
        let (status, body) = service.publish(&forged).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body["message"].as_str().unwrap().contains("not a valid signature of a key of role targets"), "{body}");
    }
    let unsigned = signed(service.next_targets("acme/evil.bin", content), &[]);
    let (status, body) = service.publish(&unsigned).await;
    assert_eq!((status, body["result"].as_str()), (StatusCode::ACCEPTED, Some("pending")), "{body}");
    assert_eq!(body["signatures"], 0, "an unsigned role only waits; it is never published");
    assert_eq!(service.published_targets().signed().version, before);
    let repo_keys: Vec<PathBuf> = key_files(&service.data.join("repo/keys"), "");
    assert!(
        repo_keys.iter().all(|k| !k.to_string_lossy().contains("targets.") && !k.to_string_lossy().contains("root."))
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_checks_version_content_signatures_and_delegations() {
    let service = Service::start(|_| {}).await;
    let key = read_key(&key_files(&service.data.join("offline-keys/repo-keys"), "targets.")[0]);
    let content = b"acme agent 2.4.0";

    let missing = signed(service.next_targets("acme/agent.bin", content), &[&key]);
    let (status, body) = service.publish(&missing).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["message"].as_str().unwrap().contains("upload it first"), "{body}");

    service.upload(content).await;
    let mut skipped = service.next_targets("acme/agent.bin", content);
    skipped.version += 1;
    let (status, body) = service.publish(&signed(skipped, &[&key])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let mut delegating = service.next_targets("acme/agent.bin", content);
    delegating.delegations = Some(custody_tuf::Delegations {
        keys: Default::default(),
        roles: Some(Vec::new()),
        succinct_roles: None,
        unrecognized: Default::default(),
    });
    let (status, body) = service.publish(&signed(delegating, &[&key])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["message"].as_str().unwrap().contains("delegations"), "{body}");

    let mut expired = service.next_targets("acme/agent.bin", content);
    expired.expires = Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let (status, _) = service.publish(&signed(expired, &[&key])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let mut lying = service.next_targets("acme/agent.bin", content);
    lying.targets.get_mut("acme/agent.bin").unwrap().custom = Some(json!({"custody": {"schema": 1}}));
    let (status, body) = service.publish(&signed(lying, &[&key])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["message"].as_str().unwrap().contains("custody"), "{body}");

    let good = signed(service.next_targets("acme/agent.bin", content), &[&key]);
    let (status, body) = service.publish(&good).await;
    assert_eq!((status, body["result"].as_str()), (StatusCode::OK, Some("published")), "{body}");
    assert_eq!(service.published_targets().signed().version, good.signed().version);
    let (status, _) = service.publish(&good).await;
    assert_eq!(status, StatusCode::CONFLICT, "the same version twice");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_signatures_are_collected_from_several_publishers() {
    let offline = tempfile::tempdir().unwrap();
    let kept = offline.path().to_owned();
    let service = Service::start(move |data| {
        // The offline root and targets keys make targets a 2-of-2 role; its new keys then leave the server too.
        let mut repo = Repository::open(&data.repo(), Passphrase::none()).unwrap();
        let repo_keys = data.offline_keys().join("repo-keys");
        repo.add_signing_keys(key_files(&repo_keys, "").iter().map(|p| read_key(p)));
        let spec = KeySpec { count: 2, threshold: 2, kind: PrivateKeyKind::Ed25519 };
        repo.rotate("targets", &spec).unwrap();
        for file in key_files(&data.repo().join("keys"), "targets.") {
            std::fs::rename(&file, kept.join(file.file_name().unwrap())).unwrap();
        }
    })
    .await;
    let keys: Vec<PrivateKey> = key_files(offline.path(), "targets.").iter().map(|p| read_key(p)).collect();
    assert_eq!(keys.len(), 2);
    let content = b"needs two signatures";
    service.upload(content).await;
    let next = service.next_targets("acme/two.bin", content);

    let (status, body) = service.publish(&signed(next.clone(), &[&keys[0]])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!((body["signatures"].as_u64(), body["threshold"].as_u64()), (Some(1), Some(2)));
    let staged: Value = service
        .client
        .get(service.url("/admin/v1/staged"))
        .bearer_auth(&service.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(staged["staged"][0]["role"], "targets", "{staged}");

    // The second key holder fetches what waits, signs the same `signed` object, and sends it.
    let waiting = service
        .client
        .get(service.url("/admin/v1/staged/targets"))
        .bearer_auth(&service.token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut cosigned = Metadata::<Targets>::from_bytes(&waiting, "targets").unwrap();
    assert_eq!(cosigned.signed(), &next);
    let mut second_only = Metadata::new(cosigned.signed().clone()).unwrap();
    second_only.sign(&keys[1]).unwrap();
    cosigned.sign(&keys[1]).unwrap();
    let (status, body) = service.publish(&second_only).await;
    assert_eq!((status, body["result"].as_str()), (StatusCode::OK, Some("published")), "{body}");
    assert_eq!(service.published_targets().signatures().len(), 2, "both signatures are published");
    let gone =
        service.client.get(service.url("/admin/v1/staged/targets")).bearer_auth(&service.token).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    service.stop().await;
}
