//! A service on loopback for the origin, limits and cache tests: started on a new data directory with extra
//! configuration, with the pinned admin client, a plain HTTP client for content, uploads and publishes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use custody_server::ServiceConfig;
use custody_tls::{ProxySettings, TransportConfig};
use custody_tuf::{Metadata, PrivateKey, TargetFile, Targets};
use jiff::Timestamp;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub struct Service {
    _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub running: Option<custody_server::Running>,
    /// Pinned HTTPS client for the admin API.
    pub client: reqwest::Client,
    /// Plain HTTP client for content.
    pub plain: reqwest::Client,
    pub token: String,
}

impl Service {
    /// A service on a new data directory; `extra` is appended to its configuration (loopback listeners on free
    /// ports are set here).
    pub async fn start(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config =
            ServiceConfig::from_toml(&format!("[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n{extra}"))
                .unwrap();
        let running = custody_server::start(&data, config).await.unwrap();
        let transport = TransportConfig::load(&data.join("client/custody.toml")).unwrap();
        let client = transport.tls_client().unwrap().http_client(&ProxySettings::direct()).unwrap();
        let plain = custody_tls::plain_http_client(&ProxySettings::direct()).unwrap();
        let token = std::fs::read_to_string(data.join("admin-token")).unwrap().trim().to_owned();
        Self { _dir: dir, data, running: Some(running), client, plain, token }
    }

    pub fn running(&self) -> &custody_server::Running {
        self.running.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running().https_url)
    }

    pub fn content_url(&self, path: &str) -> String {
        format!("{}{path}", self.running().http_url)
    }

    /// A TLS connector with the service's pinned client configuration (for raw-socket tests).
    pub fn tls_connector(&self) -> tokio_rustls::TlsConnector {
        TransportConfig::load(&self.data.join("client/custody.toml")).unwrap().tls_client().unwrap().connector()
    }

    /// Uploads `bytes`; returns their SHA-256 in hex.
    pub async fn upload(&self, bytes: &[u8]) -> String {
        let hex = sha256_hex(bytes);
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
        hex
    }

    /// Publishes the next version of the top-level targets role with `path` → `content` described by `custom`,
    /// signed with the offline targets key.
    pub async fn publish(&self, path: &str, content: &[u8], custom: Option<Value>) -> (StatusCode, Value) {
        let mut next = self.published_targets().signed().clone();
        next.version += 1;
        next.expires = Timestamp::from_second(Timestamp::now().as_second() + 86_400).unwrap();
        next.targets.insert(path.to_owned(), TargetFile::describing(content, custom));
        let key = targets_key(&self.data);
        let mut metadata = Metadata::new(next).unwrap();
        metadata.sign(&key).unwrap();
        let body =
            json!({"role": "targets", "metadata": serde_json::from_slice::<Value>(&metadata.to_bytes()).unwrap()});
        let response =
            self.client.post(self.url("/admin/v1/publish")).bearer_auth(&self.token).json(&body).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// The published top-level targets metadata.
    pub fn published_targets(&self) -> Metadata<Targets> {
        let dir = self.data.join("repo/metadata");
        let read = |name: String| -> Value { serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap() };
        let timestamp = read("timestamp.json".into());
        let snapshot_version = timestamp["signed"]["meta"]["snapshot.json"]["version"].as_u64().unwrap();
        let snapshot = read(format!("{snapshot_version}.snapshot.json"));
        let version = snapshot["signed"]["meta"]["targets.json"]["version"].as_u64().unwrap();
        let bytes = std::fs::read(dir.join(format!("{version}.targets.json"))).unwrap();
        Metadata::from_bytes(&bytes, "targets").unwrap()
    }

    /// The value of a metric line on `/metrics` (its name with labels, as rendered), or 0 if absent.
    pub async fn metric(&self, line_start: &str) -> f64 {
        let text = self.client.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| line.strip_prefix(line_start).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub async fn stop(mut self) {
        self.running.take().unwrap().shutdown().await;
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// Pseudo-random bytes (xorshift), different for each seed.
pub fn pseudo_random(length: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn targets_key(data: &Path) -> PrivateKey {
    let dir = data.join("offline-keys/repo-keys");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("targets."))
        .collect();
    files.sort();
    custody_repo::keys::read_key_file(&files[0], &custody_repo::Passphrase::none()).unwrap()
}
