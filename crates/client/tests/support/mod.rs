//! Test support: a small signed repository written with `custody-tuf`, and a real HTTP server on loopback that
//! serves it and can misbehave on chosen paths.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custody_tuf::snapshot_merkle::{SnapshotTree, TIMESTAMP_FIELD, proof_path};
use custody_tuf::{
    DelegatedRole, Delegations, MetaFile, Metadata, PrivateKey, PrivateKeyKind, Role, Root, Signed, Snapshot,
    TargetFile, Targets, Timestamp,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub fn expiry(days: i64) -> jiff::Timestamp {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * days);
    custody_tuf::parse_expires(&custody_tuf::format_expires(t)).unwrap()
}

/// A repository with one key per role, consistent snapshots, written to `dir/metadata` and `dir/targets`.
pub struct TestRepo {
    pub dir: PathBuf,
    pub keys: HashMap<String, PrivateKey>,
    pub root: Root,
    pub timestamp: Timestamp,
    pub snapshot: Snapshot,
    /// Targets roles by name (`targets` plus delegated ones).
    pub targets: BTreeMap<String, Targets>,
    /// Delegator of each delegated role.
    pub delegators: BTreeMap<String, String>,
    /// Publish a snapshot Merkle tree and per-role proofs with each snapshot.
    pub merkle: bool,
}

impl TestRepo {
    pub fn new(dir: &Path) -> Self {
        let mut keys = HashMap::new();
        let mut root_keys = BTreeMap::new();
        let mut roles = BTreeMap::new();
        for role in ["root", "timestamp", "snapshot", "targets"] {
            let key = PrivateKey::generate(PrivateKeyKind::Ed25519).unwrap();
            root_keys.insert(key.key_id(), key.public().clone());
            roles.insert(
                role.to_owned(),
                Role { keyids: vec![key.key_id()], threshold: 1, unrecognized: BTreeMap::new() },
            );
            keys.insert(role.to_owned(), key);
        }
        let header = |t: &str| (t.to_owned(), custody_tuf::SPEC_VERSION.to_owned());
        let root = Root {
            type_: header("root").0,
            spec_version: header("root").1,
            version: 1,
            expires: expiry(365),
            consistent_snapshot: Some(true),
            keys: root_keys,
            roles,
            unrecognized: BTreeMap::new(),
        };
        let targets = Targets {
            type_: "targets".into(),
            spec_version: custody_tuf::SPEC_VERSION.into(),
            version: 0,
            expires: expiry(90),
            targets: BTreeMap::new(),
            delegations: None,
            unrecognized: BTreeMap::new(),
        };
        let snapshot = Snapshot {
            type_: "snapshot".into(),
            spec_version: custody_tuf::SPEC_VERSION.into(),
            version: 0,
            expires: expiry(7),
            meta: BTreeMap::new(),
            unrecognized: BTreeMap::new(),
        };
        let timestamp = Timestamp {
            type_: "timestamp".into(),
            spec_version: custody_tuf::SPEC_VERSION.into(),
            version: 0,
            expires: expiry(1),
            meta: BTreeMap::from([("snapshot.json".to_owned(), MetaFile::new(1))]),
            unrecognized: BTreeMap::new(),
        };
        std::fs::create_dir_all(dir.join("metadata")).unwrap();
        std::fs::create_dir_all(dir.join("targets")).unwrap();
        let mut repo = Self {
            dir: dir.to_owned(),
            keys,
            root,
            timestamp,
            snapshot,
            targets: BTreeMap::from([("targets".to_owned(), targets)]),
            delegators: BTreeMap::new(),
            merkle: false,
        };
        repo.write_root();
        repo.publish(&["targets"]);
        repo
    }

    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    fn sign<T: Signed>(&self, signed: T, role: &str) -> Vec<u8> {
        let mut md = Metadata::new(signed).unwrap();
        md.sign(&self.keys[role]).unwrap();
        md.to_bytes()
    }

    pub fn write_root(&self) {
        let bytes = self.sign(self.root.clone(), "root");
        std::fs::write(self.metadata_dir().join(format!("{}.root.json", self.root.version)), &bytes).unwrap();
    }

    /// Adds a target file to `role`; call [`TestRepo::publish`] afterwards.
    pub fn add_target(&mut self, role: &str, path: &str, content: &[u8]) {
        let file = TargetFile::describing(content, None);
        for hash in file.hashes.values() {
            let (dir, name) = path.rsplit_once('/').map(|(d, n)| (format!("{d}/"), n)).unwrap_or((String::new(), path));
            let p = self.dir.join("targets").join(format!("{dir}{hash}.{name}"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        self.targets.get_mut(role).unwrap().targets.insert(path.to_owned(), file);
    }

    /// Delegates `paths` from `delegator` to a new role `name` with its own key.
    pub fn delegate(&mut self, delegator: &str, name: &str, paths: &[&str], terminating: bool) {
        let key = PrivateKey::generate(PrivateKeyKind::Ed25519).unwrap();
        let parent = self.targets.get_mut(delegator).unwrap();
        let delegations = parent.delegations.get_or_insert_with(|| Delegations {
            keys: BTreeMap::new(),
            roles: Some(Vec::new()),
            succinct_roles: None,
            unrecognized: BTreeMap::new(),
        });
        delegations.keys.insert(key.key_id(), key.public().clone());
        delegations.roles.as_mut().unwrap().push(DelegatedRole {
            name: name.to_owned(),
            keyids: vec![key.key_id()],
            threshold: 1,
            terminating,
            paths: Some(paths.iter().map(|p| p.to_string()).collect()),
            path_hash_prefixes: None,
            unrecognized: BTreeMap::new(),
        });
        let mut child = self.targets["targets"].clone();
        child.version = 0;
        child.targets.clear();
        child.delegations = None;
        self.targets.insert(name.to_owned(), child);
        self.keys.insert(name.to_owned(), key);
        self.delegators.insert(name.to_owned(), delegator.to_owned());
    }

    /// Publishes new versions of the named targets roles, then snapshot and timestamp.
    pub fn publish(&mut self, roles: &[&str]) {
        for role in roles {
            let signed = {
                let t = self.targets.get_mut(*role).unwrap();
                t.version += 1;
                t.clone()
            };
            let bytes = self.sign(signed.clone(), role);
            let file = format!("{}.{}.json", signed.version, custody_client::encode_role(role));
            std::fs::write(self.metadata_dir().join(file), &bytes).unwrap();
            self.snapshot.meta.insert(format!("{role}.json"), MetaFile::new(signed.version));
        }
        self.snapshot.version += 1;
        let bytes = self.sign(self.snapshot.clone(), "snapshot");
        std::fs::write(self.metadata_dir().join(format!("{}.snapshot.json", self.snapshot.version)), &bytes).unwrap();
        self.timestamp.meta.insert("snapshot.json".into(), MetaFile::describing(self.snapshot.version, &bytes));
        if self.merkle {
            let tree = SnapshotTree::build(self.snapshot.version, &self.snapshot.meta).unwrap();
            for proof in tree.proofs() {
                let path = self.metadata_dir().join(proof_path(self.snapshot.version, &proof.name));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, serde_json::to_vec(&proof).unwrap()).unwrap();
            }
            let commitment = serde_json::to_value(tree.commitment()).unwrap();
            self.timestamp.unrecognized.insert(TIMESTAMP_FIELD.into(), commitment);
        }
        self.publish_timestamp();
    }

    pub fn publish_timestamp(&mut self) {
        self.timestamp.version += 1;
        let bytes = self.sign(self.timestamp.clone(), "timestamp");
        std::fs::write(self.metadata_dir().join("timestamp.json"), bytes).unwrap();
    }

    pub fn root_bytes(&self) -> Vec<u8> {
        std::fs::read(self.metadata_dir().join("1.root.json")).unwrap()
    }
}

/// How the server answers one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Sends bytes forever without a Content-Length.
    Endless,
    /// Sends one byte every 200 ms.
    Drip,
}

/// A real HTTP/1.1 server on 127.0.0.1 serving a directory, recording every request path.
pub struct TestServer {
    pub base: String,
    pub requests: Arc<Mutex<Vec<String>>>,
    pub misbehave: Arc<Mutex<HashMap<String, Misbehaviour>>>,
}

impl TestServer {
    pub async fn start(root: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let misbehave: Arc<Mutex<HashMap<String, Misbehaviour>>> = Arc::default();
        let (log, bad) = (requests.clone(), misbehave.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let (root, log, bad) = (root.clone(), log.clone(), bad.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut have = 0;
                    loop {
                        let n = match stream.read(&mut buf[have..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        have += n;
                        let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                        log.lock().unwrap().push(path.clone());
                        let behaviour = bad.lock().unwrap().get(&path).copied();
                        match behaviour {
                            Some(Misbehaviour::Endless) => {
                                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").await;
                                let chunk = vec![b' '; 65536];
                                while stream.write_all(&chunk).await.is_ok() {}
                                return;
                            }
                            Some(Misbehaviour::Drip) => {
                                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n").await;
                                for _ in 0..1000 {
                                    if stream.write_all(b" ").await.is_err() {
                                        return;
                                    }
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                                return;
                            }
                            None => {}
                        }
                        let decoded = percent_encoding::percent_decode_str(&path).decode_utf8_lossy().to_string();
                        let file = root.join(decoded.trim_start_matches('/'));
                        let response = match std::fs::read(&file) {
                            Ok(body) if !decoded.contains("..") => {
                                let mut r =
                                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                                r.extend_from_slice(&body);
                                r
                            }
                            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                        };
                        if stream.write_all(&response).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { base, requests, misbehave }
    }

    pub fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}
