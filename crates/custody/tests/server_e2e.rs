//! The update service end to end, with the real `custody` binary as separate processes on loopback: `custody server`
//! on an empty data directory, `custody publish`, `custody admin`, a TUF client over pinned HTTPS, content over plain
//! HTTP, devices enrolling and reporting, metrics, re-signing of the timestamp, and a graceful stop on SIGTERM.

mod service;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use custody_client::{HttpFetcher, RoleLimits, Updater, UpdaterConfig};
use custody_tls::{ProxySettings, TransportConfig};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};
use serde_json::{Value, json};

const UPDATE_ID: &str = "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90";
const DESCRIPTION: &str = r#"
id = "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90"
revision = 1
title = "Acme agent 2.4.0"
description = "Fixes CVE-2025-0001 in the agent's parser."
kind = "app"
product = "acme-agent"
classification = "security"
severity = "important"
version = "2.4.0"
release_date = "2025-06-10"
reboot = "never"

[applicability]
arch = ["x86_64", "aarch64"]

[installer]
handler = "archive"
format = "tar-zstd"
destination = "/opt/acme-agent"
"#;

/// A `custody server` process on a fresh data directory.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    https: String,
    http: String,
}

impl Server {
    fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (child, https, http) = service::spawn(dir.path(), config);
        Self { child, dir, https, http }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn client_config(&self) -> PathBuf {
        self.data().join("client/custody.toml")
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data().join("admin-token")).unwrap().trim().to_owned()
    }

    /// The pinned HTTPS client a device or admin uses, with an optional client identity (the device's
    /// configuration: the service's client configuration plus `client_cert` and `client_key`).
    fn pinned(&self, identity: Option<(&Path, &Path)>) -> reqwest::Client {
        let mut file = self.client_config();
        if let Some((chain, key)) = identity {
            let text = std::fs::read_to_string(&file).unwrap().replace(
                "[tls]\n",
                &format!("[tls]\nclient_cert = {:?}\nclient_key = {:?}\n", chain.display(), key.display()),
            );
            file = self.data().join("client/device.toml");
            std::fs::write(&file, text).unwrap();
        }
        let config = TransportConfig::load(&file).unwrap();
        config.tls_client().unwrap().http_client(&ProxySettings::direct()).unwrap()
    }

    /// Runs `custody` with the admin connection options of this server.
    fn custody(&self, token: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_custody"))
            .args(args)
            .arg("--config")
            .arg(self.client_config())
            .env("CUSTODY_TOKEN", token)
            .output()
            .unwrap()
    }

    /// Sends SIGTERM and returns the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let kill = format!("kill -TERM {}", self.child.id());
        let status = Command::new("sh").args(["-c", &kill]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// Publishes `package` with the service's offline targets key, as a publisher would.
fn publish(server: &Server, token: &str, package: &Path, publisher: &Path) -> Output {
    let description = server.dir.path().join("update.toml");
    std::fs::write(&description, DESCRIPTION).unwrap();
    let key = std::fs::read_dir(server.data().join("offline-keys/repo-keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("targets."))
        .unwrap();
    server.custody(
        token,
        &[
            "publish",
            package.to_str().unwrap(),
            "--description",
            description.to_str().unwrap(),
            "--repo",
            publisher.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--json",
        ],
    )
}

fn package_bytes() -> Vec<u8> {
    (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fetch_enroll_report_and_comply() {
    let server = Server::start(
        "[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n\
         [devices]\nidentity = \"certificate-or-token\"\n\
         [init.expiry]\ntimestamp = \"6s\"\n",
    );
    let admin = server.admin_token();
    let https = server.pinned(None);
    let plain = custody_tls::plain_http_client(&ProxySettings::direct()).unwrap();

    // Publish with the offline targets key, from a publisher directory that holds only the trusted root.
    let publisher = server.dir.path().join("publisher");
    std::fs::create_dir(&publisher).unwrap();
    std::fs::copy(server.data().join("offline-keys/root.json"), publisher.join("root.json")).unwrap();
    let package = server.dir.path().join("acme-agent-2.4.0.tar.zst");
    let bytes = package_bytes();
    std::fs::write(&package, &bytes).unwrap();
    let published = stdout_json(&publish(&server, &admin, &package, &publisher));
    assert_eq!(published["result"], "published", "{published}");
    assert_eq!(published["role"], "targets");
    assert_eq!(published["added"], json!(["acme-agent/acme-agent-2.4.0.tar.zst"]));

    // A device's TUF client over pinned HTTPS finds and verifies it; content comes over plain HTTP.
    let device_metadata = server.dir.path().join("device-metadata");
    std::fs::create_dir(&device_metadata).unwrap();
    std::fs::copy(server.data().join("client/root.json"), device_metadata.join("root.json")).unwrap();
    let config = UpdaterConfig {
        metadata_dir: device_metadata.clone(),
        metadata_url: format!("{}/metadata/", server.https),
        limits: RoleLimits::default(),
        snapshot_proofs: true,
    };
    let fetcher = HttpFetcher::new(https.clone(), Duration::from_secs(30));
    let mut updater = Updater::new(config, fetcher, jiff::Timestamp::now()).unwrap();
    let target = updater.target_info("acme-agent/acme-agent-2.4.0.tar.zst").await.unwrap();
    assert_eq!(target.file().custom.as_ref().unwrap()["custody"]["id"], UPDATE_ID);
    let name = target.consistent_paths().into_iter().next().unwrap();
    let downloaded = plain.get(format!("{}/targets/{name}", server.http)).send().await.unwrap().bytes().await.unwrap();
    let content = target.verify(downloaded.to_vec()).expect("the content matches the signed hashes");
    assert_eq!(content.data(), bytes.as_slice());

    content_origin_answers_ranges_heads_and_tags(&server, &plain, &https, &bytes).await;
    token_scopes_are_enforced(&server, &admin, &package, &publisher);
    let device_token = enrollment_is_idempotent(&server, &https).await;
    reports_are_validated_bounded_and_idempotent(&server, &https, &device_token).await;

    // Admin listings and compliance through the CLI.
    let devices = stdout_json(&server.custody(&admin, &["admin", "devices", "--json"]));
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1, "{devices}");
    assert_eq!(devices["devices"][0]["hostname"], "edge-7");
    let updates = stdout_json(&server.custody(&admin, &["admin", "updates", "--json"]));
    assert_eq!(updates["updates"][0]["id"], UPDATE_ID);
    let report = stdout_json(&server.custody(&admin, &["admin", "compliance", "--json"]));
    let counts = &report["updates"][0]["counts"];
    assert_eq!((counts["devices"].as_u64(), counts["failed"].as_u64()), (Some(1), Some(1)), "{report}");
    let detail = stdout_json(&server.custody(&admin, &["admin", "compliance", UPDATE_ID, "--json"]));
    assert_eq!(detail["devices"][0]["state"], "failed", "{detail}");
    assert_eq!(detail["devices"][0]["code"], 2);
    let table = server.custody(&admin, &["admin", "compliance"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("Acme agent 2.4.0"));

    // Metrics count requests by route and status, bytes served, scans and enrollments.
    let metrics = https.get(format!("{}/metrics", server.https)).send().await.unwrap().text().await.unwrap();
    for expected in [
        "custody_http_requests_total{listener=\"https\",route=\"/admin/v1/publish\",method=\"POST\",status=\"200\"}",
        "custody_http_requests_total{listener=\"https\",route=\"/device/v1/events\",method=\"POST\",status=\"409\"}",
        "custody_content_bytes_served_total",
        "custody_scans_total",
        "custody_enrollments_total{identity=\"token\"}",
        "custody_errors_total{kind=\"too-large\"}",
        "custody_timestamp_expires_seconds",
    ] {
        assert!(metrics.contains(expected), "{expected} missing from\n{metrics}");
    }

    // The timestamp (6 s validity) is re-signed by the service with its online key, and clients accept it.
    let version = |body: Value| body["signed"]["version"].as_u64().unwrap();
    let timestamp_url = format!("{}/metadata/timestamp.json", server.https);
    let first = version(https.get(&timestamp_url).send().await.unwrap().json().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = version(https.get(&timestamp_url).send().await.unwrap().json().await.unwrap());
        if current > first {
            break;
        }
        assert!(Instant::now() < deadline, "the timestamp was not re-signed (version {current})");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let fetcher = HttpFetcher::new(https.clone(), Duration::from_secs(30));
    let mut config = UpdaterConfig {
        metadata_dir: device_metadata,
        metadata_url: format!("{}/metadata/", server.https),
        limits: RoleLimits::default(),
        snapshot_proofs: true,
    };
    config.snapshot_proofs = false;
    let mut again = Updater::new(config, fetcher, jiff::Timestamp::now()).unwrap();
    again.refresh().await.expect("the re-signed timestamp verifies");

    assert!(server.terminate().success());
}

async fn content_origin_answers_ranges_heads_and_tags(
    server: &Server,
    plain: &reqwest::Client,
    https: &reqwest::Client,
    bytes: &[u8],
) {
    let hex = sha256_hex(bytes);
    let url = format!("{}/content/sha256/{hex}", server.http);
    let etag = format!("\"{hex}\"");
    let full = plain.get(&url).send().await.unwrap();
    assert_eq!(full.status(), StatusCode::OK);
    let headers = full.headers().clone();
    assert_eq!(headers[header::ETAG], etag.as_str());
    assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
    assert_eq!(headers[header::ACCEPT_RANGES], "bytes");
    assert_eq!(headers[header::CONTENT_LENGTH], bytes.len().to_string().as_str());
    assert_eq!(full.bytes().await.unwrap().as_ref(), bytes);

    let head = plain.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[header::CONTENT_LENGTH], bytes.len().to_string().as_str());
    assert!(head.bytes().await.unwrap().is_empty());

    let partial = plain.get(&url).header(header::RANGE, "bytes=10-19").send().await.unwrap();
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(partial.headers()[header::CONTENT_RANGE], format!("bytes 10-19/{}", bytes.len()).as_str());
    assert_eq!(partial.bytes().await.unwrap().as_ref(), &bytes[10..20]);

    let suffix = plain.get(&url).header(header::RANGE, "bytes=-5").send().await.unwrap();
    assert_eq!(suffix.bytes().await.unwrap().as_ref(), &bytes[bytes.len() - 5..]);

    let past = plain.get(&url).header(header::RANGE, format!("bytes={}-", bytes.len())).send().await.unwrap();
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.headers()[header::CONTENT_RANGE], format!("bytes */{}", bytes.len()).as_str());

    let stale =
        plain.get(&url).header(header::RANGE, "bytes=0-9").header(header::IF_RANGE, "\"0000\"").send().await.unwrap();
    assert_eq!(stale.status(), StatusCode::OK, "a changed tag gets the whole content");
    let current = plain.get(&url).header(header::RANGE, "bytes=0-9").header(header::IF_RANGE, &etag).send().await;
    assert_eq!(current.unwrap().status(), StatusCode::PARTIAL_CONTENT);
    let several = plain.get(&url).header(header::RANGE, "bytes=0-1,5-6").send().await.unwrap();
    assert_eq!(several.status(), StatusCode::OK);
    let cached = plain.get(&url).header(header::IF_NONE_MATCH, &etag).send().await.unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    let missing = plain.get(format!("{}/content/sha256/{}", server.http, "0".repeat(64))).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // The consistent target name serves the same bytes.
    let name = format!("{}/targets/acme-agent/{hex}.acme-agent-2.4.0.tar.zst", server.http);
    assert_eq!(plain.get(&name).send().await.unwrap().bytes().await.unwrap().as_ref(), bytes);

    // Metadata only over pinned HTTPS: not on the plain listener; timestamp never cached; versioned files immutable.
    let not_here = plain.get(format!("{}/metadata/timestamp.json", server.http)).send().await.unwrap();
    assert_eq!(not_here.status(), StatusCode::NOT_FOUND);
    let timestamp = https.get(format!("{}/metadata/timestamp.json", server.https)).send().await.unwrap();
    assert_eq!(timestamp.headers()[header::CACHE_CONTROL], "no-store");
    let root = https.get(format!("{}/metadata/1.root.json", server.https)).send().await.unwrap();
    assert_eq!(root.headers()[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
    assert_eq!(root.headers()[header::CONTENT_TYPE], "application/json");
    let escape = https.get(format!("{}/metadata/..%2Frepo.toml", server.https)).send().await.unwrap();
    assert_eq!(escape.status(), StatusCode::NOT_FOUND);
}

fn token_scopes_are_enforced(server: &Server, admin: &str, package: &Path, publisher: &Path) {
    let created =
        stdout_json(&server.custody(admin, &["admin", "tokens", "create", "auditor", "--scope", "read", "--json"]));
    let read = created["token"].as_str().unwrap().to_owned();
    let listing = stdout_json(&server.custody(&read, &["admin", "updates", "--json"]));
    assert_eq!(listing["updates"].as_array().unwrap().len(), 1);
    let refused = publish(server, &read, package, publisher);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("HTTP 403 forbidden") && stderr.contains("scope write"), "{stderr}");
    let anonymous = server.custody("custody_admin_00000000000000000000000000000000_x", &["admin", "updates"]);
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("HTTP 401"), "{anonymous:?}");
    let tokens = stdout_json(&server.custody(admin, &["admin", "tokens", "list", "--json"]));
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 2);
    assert!(!tokens.to_string().contains(&read[20..]), "secrets are never listed");
}

/// Enrolls with a token identity; a retry with the same enrollment id is the same device.
async fn enrollment_is_idempotent(server: &Server, https: &reqwest::Client) -> String {
    let admin = server.admin_token();
    let created = stdout_json(&server.custody(&admin, &["admin", "enrollment-tokens", "create", "line 3", "--json"]));
    let enrollment_token = created["token"].as_str().unwrap().to_owned();
    let url = format!("{}/device/v1/enroll", server.https);
    let body = json!({"enrollment_id": "9b0c6a6e-1f3d-4c6b-8e2f-1a2b3c4d5e6f", "hostname": "edge-7"});
    let enroll = |token: String, body: Value| {
        let request = https.post(&url).bearer_auth(token).json(&body);
        async move { request.send().await.unwrap() }
    };
    let first = enroll(enrollment_token.clone(), body.clone()).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["identity"]["type"], "token");
    let retry: Value = enroll(enrollment_token.clone(), body).await.json().await.unwrap();
    assert_eq!(retry["device_id"], first["device_id"], "a retry is the same device");
    let other = json!({"enrollment_id": "1b0c6a6e-1f3d-4c6b-8e2f-1a2b3c4d5e6f", "hostname": "edge-8"});
    assert_eq!(enroll(enrollment_token.clone(), other).await.status(), StatusCode::UNAUTHORIZED, "used up");
    let bad = json!({"enrollment_id": "2b0c6a6e-1f3d-4c6b-8e2f-1a2b3c4d5e6f", "hostname": "edge 9"});
    let bad: Value = enroll(enrollment_token, bad).await.json().await.unwrap();
    assert_eq!(bad["field"], "hostname", "{bad}");
    // The old device token was replaced by the retry.
    let stale = https
        .put(format!("{}/device/v1/inventory", server.https))
        .bearer_auth(first["identity"]["token"].as_str().unwrap())
        .json(&json!({"os_family": "debian", "arch": "x86_64"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
    retry["identity"]["token"].as_str().unwrap().to_owned()
}

async fn reports_are_validated_bounded_and_idempotent(server: &Server, https: &reqwest::Client, token: &str) {
    let inventory_url = format!("{}/device/v1/inventory", server.https);
    let put = |body: Vec<u8>, media: &'static str| {
        let request = https
            .put(&inventory_url)
            .bearer_auth(token)
            .header(header::CONTENT_TYPE, HeaderValue::from_static(media))
            .body(body);
        async move { request.send().await.unwrap() }
    };
    let inventory = json!({"os_family": "debian", "os_version": "12", "arch": "x86_64",
        "products": {"acme-agent": "2.3.1"}, "hardware_ids": ["pci:8086:15f3"]});
    let ok = put(serde_json::to_vec(&inventory).unwrap(), "application/json").await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);

    let mut amd64 = inventory.clone();
    amd64["arch"] = json!("amd64");
    let refused = put(serde_json::to_vec(&amd64).unwrap(), "application/json").await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["field"], "arch", "{body}");
    assert!(body["message"].as_str().unwrap().contains("x86_64"));

    let typed = put(br#"{"os_family": "debian", "arch": 64}"#.to_vec(), "application/json").await;
    let body: Value = typed.json().await.unwrap();
    assert_eq!((body["error"].as_str(), body["field"].as_str()), (Some("bad-request"), Some("arch")), "{body}");
    let not_json = put(b"{".to_vec(), "application/json").await;
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    let text = put(serde_json::to_vec(&inventory).unwrap(), "text/plain").await;
    assert_eq!(text.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = put(vec![b' '; 3 << 20], "application/json").await;
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = huge.json().await.unwrap();
    assert_eq!(body["error"], "payload-too-large");

    let events_url = format!("{}/device/v1/events", server.https);
    let update = json!({"id": UPDATE_ID, "revision": 1});
    let batch = json!({"events": [
        {"id": "6a1f9b3e-5c2d-4e8f-9a7b-1c2d3e4f5a60", "time": "2025-06-10T12:00:00Z", "type": "scan-finished",
         "update": update, "result": "needed"},
        {"id": "6a1f9b3e-5c2d-4e8f-9a7b-1c2d3e4f5a61", "time": "2025-06-10T12:01:00Z", "type": "download-succeeded",
         "update": update},
        {"id": "6a1f9b3e-5c2d-4e8f-9a7b-1c2d3e4f5a62", "time": "2025-06-10T12:02:00Z", "type": "install-failed",
         "update": update, "code": 2, "detail": "post_install exited with status 2"},
    ]});
    let post = |body: Value| {
        let request = https.post(&events_url).bearer_auth(token).json(&body);
        async move { request.send().await.unwrap() }
    };
    let first: Value = post(batch.clone()).await.json().await.unwrap();
    assert_eq!(first, json!({"accepted": 3, "duplicates": 0}));
    let again: Value = post(batch.clone()).await.json().await.unwrap();
    assert_eq!(again, json!({"accepted": 0, "duplicates": 3}), "a resent batch is acknowledged, not stored twice");

    let mut changed = batch.clone();
    changed["events"][2]["code"] = json!(3);
    assert_eq!(post(changed).await.status(), StatusCode::CONFLICT);
    let mut incomplete = batch.clone();
    incomplete["events"][2].as_object_mut().unwrap().remove("code");
    let response = post(incomplete).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["field"], "events[2].code", "{body}");
    let mut future = batch;
    future["events"][0]["time"] = json!("2099-01-01T00:00:00Z");
    let body: Value = post(future).await.json().await.unwrap();
    assert_eq!(body["field"], "events[0].time", "{body}");
    let anonymous = https.post(&events_url).json(&json!({"events": []})).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_certificates_and_graceful_stop() {
    let server = Server::start("[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n");
    let admin = server.admin_token();
    let https = server.pinned(None);

    // Enroll with a CSR: the certificate comes from the device intermediate; device routes need it.
    let created = stdout_json(&server.custody(&admin, &["admin", "enrollment-tokens", "create", "lab", "--json"]));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap();
    let body = json!({"enrollment_id": "5b0c6a6e-1f3d-4c6b-8e2f-1a2b3c4d5e6f", "hostname": "kiosk-1",
        "csr": csr.pem().unwrap()});
    let no_csr = json!({"enrollment_id": "5b0c6a6e-1f3d-4c6b-8e2f-1a2b3c4d5e6f", "hostname": "kiosk-1"});
    let enroll_url = format!("{}/device/v1/enroll", server.https);
    let token = created["token"].as_str().unwrap();
    let refused = https.post(&enroll_url).bearer_auth(token).json(&no_csr).send().await.unwrap();
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["field"], "csr", "{refused}");
    let enrolled: Value =
        https.post(&enroll_url).bearer_auth(token).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(enrolled["identity"]["type"], "certificate", "{enrolled}");
    let chain = server.dir.path().join("device-chain.pem");
    let key_file = server.dir.path().join("device-key.pem");
    std::fs::write(&chain, enrolled["identity"]["chain"].as_str().unwrap()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let inventory = json!({"os_family": "debian", "arch": "aarch64"});
    let inventory_url = format!("{}/device/v1/inventory", server.https);
    let without = https.put(&inventory_url).json(&inventory).send().await.unwrap();
    assert_eq!(without.status(), StatusCode::FORBIDDEN, "the listener requires the client certificate");
    let device = server.pinned(Some((&chain, &key_file)));
    let with = device.put(&inventory_url).json(&inventory).send().await.unwrap();
    assert_eq!(with.status(), StatusCode::NO_CONTENT);
    let listed = stdout_json(&server.custody(&admin, &["admin", "devices", "--json"]));
    assert_eq!(listed["devices"][0]["identity"], "certificate");
    assert_eq!(listed["devices"][0]["id"], enrolled["device_id"]);

    // A download in progress when SIGTERM arrives completes; then the process exits 0.
    let big: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8).collect();
    let hex = sha256_hex(&big);
    let upload = https
        .put(format!("{}/admin/v1/content/sha256/{hex}", server.https))
        .bearer_auth(&admin)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::CREATED);
    let wrong = https
        .put(format!("{}/admin/v1/content/sha256/{}", server.https, "ab".repeat(32)))
        .bearer_auth(&admin)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(b"not it".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let plain = custody_tls::plain_http_client(&ProxySettings::direct()).unwrap();
    let mut download = plain.get(format!("{}/content/sha256/{hex}", server.http)).send().await.unwrap();
    let mut received = download.chunk().await.unwrap().unwrap().to_vec();
    let address = server.http.trim_start_matches("http://").to_owned();
    let stopping = std::thread::spawn(move || server.terminate());
    // Shutdown has begun once the listener refuses connections; the download is still open then.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&address).await.is_ok() {
        assert!(Instant::now() < deadline, "the content listener still accepts connections after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while let Some(chunk) = download.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(sha256_hex(&received), hex, "the download in progress completed");
    assert!(stopping.join().unwrap().success(), "exit status after SIGTERM");
}
