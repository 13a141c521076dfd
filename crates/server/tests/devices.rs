//! Device identities and peer matching over the service's real HTTPS listener on loopback: certificates issued from
//! enrollment CSRs are in the CA index, revoking a device refuses it at once (by the store) and then at the TLS
//! handshake (by the reloaded device CRL), and `POST /device/v1/peers` matches devices by download mode, address
//! and group, never the asker and never a revoked device. Device requests go over raw TLS connections from chosen
//! loopback addresses (127.0.0.x), so that devices have the public addresses the matching sees.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use custody_pki::CaDir;
use custody_server::ServiceConfig;
use custody_tls::{ProxySettings, TransportConfig};
use reqwest::StatusCode;
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Service {
    _dir: tempfile::TempDir,
    data: PathBuf,
    running: Option<custody_server::Running>,
    admin: reqwest::Client,
    token: String,
}

/// An enrolled device: its id, and the files of its identity.
struct Device {
    id: String,
    config: PathBuf,
    chain: PathBuf,
    /// Where its requests come from.
    source: IpAddr,
}

impl Service {
    /// A service on a new data directory; `prepare` may add files to the data directory before it starts.
    async fn start(prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = ServiceConfig::from_toml(
            "[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[tls]\nreload_interval = \"1s\"\n\
             [devices]\nidentity = \"certificate-or-token\"\n",
        )
        .unwrap();
        custody_server::DataDir::open_or_create(&data, &config).unwrap();
        prepare(&data);
        let running = custody_server::start(&data, config).await.unwrap();
        let transport = TransportConfig::load(&data.join("client/custody.toml")).unwrap();
        let admin = transport.tls_client().unwrap().http_client(&ProxySettings::direct()).unwrap();
        let token = std::fs::read_to_string(data.join("admin-token")).unwrap().trim().to_owned();
        Self { _dir: dir, data, running: Some(running), admin, token }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.as_ref().unwrap().https_url)
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.admin.request(method, self.url(path)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
    }

    async fn enrollment_token(&self, group: Option<&str>, uses: u32) -> String {
        let body = json!({"name": "test", "uses": uses, "group": group});
        let (status, created) = self.admin(reqwest::Method::POST, "/admin/v1/enrollment-tokens", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["token"].as_str().unwrap().to_owned()
    }

    /// Enrolls with a new key and CSR from `source`; `enrollment_id` makes a retry.
    async fn enroll(&self, token: &str, enrollment_id: &str, source: &str) -> Device {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap();
        let body = json!({"enrollment_id": enrollment_id, "hostname": "edge", "csr": csr.pem().unwrap()});
        let unauthenticated = self.data.join("client/custody.toml");
        let (status, answer) = self
            .device_request(&unauthenticated, source.parse().unwrap(), "/device/v1/enroll", Some(token), &body)
            .await
            .unwrap();
        assert_eq!(status, 200, "{answer}");
        let id = answer["device_id"].as_str().unwrap().to_owned();
        let dir = self.data.join("devices").join(format!("{id}-{}", enrollment_id));
        std::fs::create_dir_all(&dir).unwrap();
        let (chain, key_file) = (dir.join("chain.pem"), dir.join("key.pem"));
        std::fs::write(&chain, answer["identity"]["chain"].as_str().unwrap()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let text = std::fs::read_to_string(&unauthenticated).unwrap().replace(
            "[tls]\n",
            &format!("[tls]\nclient_cert = {:?}\nclient_key = {:?}\n", chain.display(), key_file.display()),
        );
        // Beside the service's client configuration, whose relative paths are relative to its directory.
        let config = self.data.join("client").join(format!("device-{id}-{enrollment_id}.toml"));
        std::fs::write(&config, text).unwrap();
        Device { id, config, chain, source: source.parse().unwrap() }
    }

    /// One HTTP/1.1 request over a new TLS connection from `source` with the transport configuration `config`:
    /// the status and JSON answer, or the connection's error.
    async fn device_request(
        &self,
        config: &Path,
        source: IpAddr,
        path: &str,
        bearer: Option<&str>,
        body: &Value,
    ) -> Result<(u16, Value), String> {
        let connector = TransportConfig::load(config).unwrap().tls_client().unwrap().connector();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let tcp = socket.connect(self.running.as_ref().unwrap().https_addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
        let body = serde_json::to_vec(body).unwrap();
        let auth = bearer.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             {auth}Connection: close\r\n\r\n",
            body.len()
        );
        let written = async {
            tls.write_all(head.as_bytes()).await?;
            tls.write_all(&body).await
        }
        .await;
        let mut response = Vec::new();
        let read = tls.read_to_end(&mut response).await;
        if let Err(err) = written {
            return Err(format!("writing: {err:?}; reading: {read:?}"));
        }
        let text = String::from_utf8_lossy(&response).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return Err(read.err().map_or_else(|| format!("no HTTP response: {text:?}"), |e| format!("{e:?}")));
        };
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("status of {head}"))?;
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(body.len());
        let json = if length == 0 { Value::Null } else { serde_json::from_str(&body[..length]).unwrap() };
        Ok((status, json))
    }

    /// `PUT /device/v1/inventory` with the device's certificate, through the pinned reqwest client.
    async fn inventory(&self, device: &Device) -> reqwest::Result<reqwest::Response> {
        let tls = TransportConfig::load(&device.config).unwrap().tls_client().unwrap();
        let client = tls.http_client(&ProxySettings::direct()).unwrap();
        let inventory = json!({"os_family": "debian", "arch": "x86_64"});
        client.put(self.url("/device/v1/inventory")).json(&inventory).send().await
    }

    /// The device's request with its certificate.
    async fn as_device(&self, device: &Device, path: &str, body: &Value) -> Result<(u16, Value), String> {
        self.device_request(&device.config, device.source, path, None, body).await
    }

    async fn peers(&self, device: &Device, query: Value) -> (u16, Value) {
        self.as_device(device, "/device/v1/peers", &query).await.unwrap()
    }

    async fn stop(mut self) {
        self.running.take().unwrap().shutdown().await;
    }
}

const CONTENT: &str = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

fn query(mode: u8, addresses: &[&str], complete: bool, cache_server: bool) -> Value {
    json!({"content": CONTENT, "mode": mode, "port": 7680, "addresses": addresses, "complete": complete,
           "cache_server": cache_server})
}

fn serial_of(chain: &Path) -> String {
    let pem = std::fs::read(chain).unwrap();
    custody_pki::CertDetails::from_pem_chain(&pem).unwrap()[0].serial.clone()
}

/// The enrollment id of the `n`th enrollment.
fn attempt(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// `(device, kind, address)` of each peer in a list.
fn listed(list: &Value) -> Vec<(String, String, String)> {
    list["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let text = |key: &str| p[key].as_str().unwrap().to_owned();
            (text("device"), text("kind"), text("address"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_certificates_are_indexed_and_revocation_is_enforced() {
    let service = Service::start(|_| {}).await;
    let token = service.enrollment_token(None, 2).await;
    let attempt = "9b0c6a6e-1f3d-4c6b-8e2f-1a2b3c4d5e6f";
    let first = service.enroll(&token, attempt, "127.0.0.1").await;

    // The certificate is in the CA index, issued by the device intermediate to the device id; its key stayed home.
    let ca = CaDir::open(&service.data.join("pki")).unwrap();
    let entry = ca.find(&serial_of(&first.chain).parse().unwrap()).unwrap().clone();
    assert_eq!((entry.purpose.as_str(), entry.issuer.as_str()), ("device", "device"));
    assert_eq!(entry.common_name, first.id);
    assert!(!ca.entry_dir(&entry).join("key.pem").exists());
    assert_eq!(service.inventory(&first).await.unwrap().status(), StatusCode::NO_CONTENT);

    // A retry of the same enrollment (the answer was lost) is the same device with a new certificate; the
    // certificate it replaces is revoked as superseded and no longer an identity.
    let retried = service.enroll(&token, attempt, "127.0.0.1").await;
    assert_eq!(retried.id, first.id);
    let ca = CaDir::open(&service.data.join("pki")).unwrap();
    let old = ca.find(&entry.serial.parse().unwrap()).unwrap();
    assert_eq!(old.revoked.as_ref().map(|r| r.reason.as_str()), Some("superseded"));
    assert_eq!(service.inventory(&retried).await.unwrap().status(), StatusCode::NO_CONTENT);

    // Revocation: write scope, idempotent, 404 for an unknown device.
    let path = format!("/admin/v1/devices/{}/revoke", retried.id);
    let (status, revoked) =
        service.admin(reqwest::Method::POST, &path, Some(json!({"reason": "key-compromise"}))).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    let serial = serial_of(&retried.chain);
    assert_eq!(revoked["certificate"], json!({"serial": serial, "on_crl": true}));
    let revoked_at = revoked["device"]["revoked_at"].clone();
    assert!(revoked_at.is_string(), "{revoked}");
    let (status, again) = service.admin(reqwest::Method::POST, &path, Some(json!({}))).await;
    assert_eq!((status, &again["device"]["revoked_at"]), (StatusCode::OK, &revoked_at), "{again}");
    let unknown = "/admin/v1/devices/0b5e4b1e-6c8d-4c44-9d5c-9a1f7e1f2a10/revoke";
    assert_eq!(service.admin(reqwest::Method::POST, unknown, Some(json!({}))).await.0, StatusCode::NOT_FOUND);
    let (status, bad) = service.admin(reqwest::Method::POST, &path, Some(json!({"reason": "boredom"}))).await;
    assert_eq!((status, bad["field"].as_str()), (StatusCode::BAD_REQUEST, Some("reason")), "{bad}");
    let (_, read_token) =
        service.admin(reqwest::Method::POST, "/admin/v1/tokens", Some(json!({"name": "ro", "scope": "read"}))).await;
    let refused = service
        .admin
        .post(service.url(&path))
        .bearer_auth(read_token["token"].as_str().unwrap())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let (_, devices) = service.admin(reqwest::Method::GET, "/admin/v1/devices", None).await;
    assert_eq!(devices["devices"][0]["revoked_at"], revoked_at, "{devices}");

    // The device CRL lists the certificate, and devices get it over plain HTTP.
    let plain = custody_tls::plain_http_client(&ProxySettings::direct()).unwrap();
    let crl_url = format!("{}/pki/device-crl.pem", service.running.as_ref().unwrap().http_url);
    let crl = plain.get(crl_url).send().await.unwrap().text().await.unwrap();
    let details = custody_pki::CrlDetails::from_pem(&crl).unwrap();
    assert!(details.revoked.contains(&serial) && details.revoked.contains(&entry.serial), "{details:?}");

    // The device API refuses the certificate at once, with a clear answer, then (once the listener reloaded the
    // CRL) at the TLS handshake. Every attempt in between is one of the two.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match service.as_device(&retried, "/device/v1/peers", &query(1, &[], false, false)).await {
            Ok((403, body)) => {
                let message = body["message"].as_str().unwrap();
                assert!(message.contains("was revoked"), "{body}");
            }
            Err(error) if error.contains("CertificateRevoked") => break,
            other => panic!("a revoked certificate got {other:?}"),
        }
        assert!(Instant::now() < deadline, "the listener never refused the revoked certificate");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let response = service.inventory(&retried).await;
    assert!(response.is_err(), "{response:?}");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_valid_certificate_is_left_without_a_device() {
    let service = Service::start(|_| {}).await;
    let token = service.enrollment_token(None, 1).await;
    // Enrollments racing for the token's only use: the losers may get certificates issued before the store says no.
    let config = service.data.join("client/custody.toml");
    let attempts = (1..=4).map(|n| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap();
        json!({"enrollment_id": attempt(n), "hostname": "edge", "csr": csr.pem().unwrap()})
    });
    let requests = attempts.map(|body| {
        let (service, config, token) = (&service, &config, &token);
        async move {
            let source = "127.0.0.1".parse().unwrap();
            service.device_request(config, source, "/device/v1/enroll", Some(token), &body).await.unwrap()
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let enrolled: Vec<&Value> = answers.iter().filter(|(status, _)| *status == 200).map(|(_, body)| body).collect();
    assert_eq!(enrolled.len(), 1, "{answers:?}");
    assert!(answers.iter().all(|(status, _)| [200, 401].contains(status)), "{answers:?}");
    let ca = CaDir::open(&service.data.join("pki")).unwrap();
    let valid: Vec<&str> = ca
        .entries()
        .iter()
        .filter(|entry| entry.purpose == "device" && entry.revoked.is_none())
        .map(|entry| entry.common_name.as_str())
        .collect();
    assert_eq!(valid, [enrolled[0]["device_id"].as_str().unwrap()]);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_matched_by_mode_and_group_never_the_asker_or_a_revoked_device() {
    let service = Service::start(|_| {}).await;
    let plant7 = service.enrollment_token(Some("plant-7"), 5).await;
    let nogroup = service.enrollment_token(None, 4).await;
    let plant9 = service.enrollment_token(Some("plant-9"), 1).await;
    let asker = service.enroll(&plant7, &attempt(1), "127.0.0.2").await;
    let cache = service.enroll(&plant7, &attempt(2), "127.0.0.3").await; // the group's cache server
    let colleague = service.enroll(&plant7, &attempt(3), "127.0.0.4").await; // same group, elsewhere
    let nat = service.enroll(&nogroup, &attempt(4), "127.0.0.2").await; // behind the asker's address
    let subnet = service.enroll(&nogroup, &attempt(5), "127.0.0.5").await; // on a network the asker is on
    let stranger = service.enroll(&plant9, &attempt(6), "127.0.0.6").await; // another group, anywhere
    let revoked = service.enroll(&plant7, &attempt(7), "127.0.0.7").await;
    let lan_only = service.enroll(&nogroup, &attempt(8), "127.0.0.8").await; // mode 1, elsewhere: never an internet peer

    for (device, query) in [
        (&cache, query(3, &[], true, true)),
        (&colleague, query(2, &["10.9.0.4/24"], false, false)),
        (&nat, query(1, &[], false, false)),
        (&subnet, query(1, &["10.7.0.5/24"], false, false)),
        (&stranger, query(3, &[], true, false)),
        (&revoked, query(3, &["10.7.0.7/24"], true, false)),
        (&lan_only, query(1, &[], true, false)),
    ] {
        let (status, answer) = service.peers(device, query).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["refresh_after_seconds"], 300);
    }
    let path = format!("/admin/v1/devices/{}/revoke", revoked.id);
    assert_eq!(service.admin(reqwest::Method::POST, &path, Some(json!({}))).await.0, StatusCode::OK);

    let mine = &["10.7.0.2/24"];
    let lan = |id: &str, address: &str| (id.to_owned(), "lan".to_owned(), format!("{address}:7680"));
    let cache_entry = (cache.id.clone(), "cache-server".to_owned(), "127.0.0.3:7680".to_owned());
    let (_, mode1) = service.peers(&asker, query(1, mine, false, false)).await;
    assert_eq!(listed(&mode1), [cache_entry.clone(), lan(&nat.id, "127.0.0.2"), lan(&subnet.id, "10.7.0.5")]);
    assert_eq!(mode1["peers"][0]["complete"], true);
    let (_, mode2) = service.peers(&asker, query(2, mine, false, false)).await;
    let group = (colleague.id.clone(), "group".to_owned(), "127.0.0.4:7680".to_owned());
    assert_eq!(
        listed(&mode2),
        [cache_entry.clone(), lan(&nat.id, "127.0.0.2"), lan(&subnet.id, "10.7.0.5"), group.clone()]
    );
    let (_, mode3) = service.peers(&asker, query(3, mine, false, false)).await;
    let internet = (stranger.id.clone(), "internet".to_owned(), "127.0.0.6:7680".to_owned());
    assert_eq!(
        listed(&mode3),
        [cache_entry, internet, lan(&nat.id, "127.0.0.2"), lan(&subnet.id, "10.7.0.5"), group],
        "cache servers, then complete peers, then LAN, group and internet"
    );
    for list in [&mode1, &mode2, &mode3] {
        let ids: Vec<String> = listed(list).into_iter().map(|(id, ..)| id).collect();
        assert!(!ids.contains(&asker.id), "never the asker");
        assert!(!ids.contains(&revoked.id), "never a revoked device");
        assert!(!ids.contains(&lan_only.id), "a LAN-mode device is nobody's internet peer");
    }

    // The group of the other side: the stranger (plant-9) gets no plant-7 group peer, the colleague sees the asker.
    let (_, theirs) = service.peers(&stranger, query(2, &[], true, false)).await;
    assert!(listed(&theirs).is_empty(), "{theirs}");
    let (_, colleague_view) = service.peers(&colleague, query(2, &["10.9.0.4/24"], false, false)).await;
    let ids: Vec<String> = listed(&colleague_view).into_iter().map(|(id, ..)| id).collect();
    assert_eq!(ids, [cache.id.clone(), asker.id.clone()], "{colleague_view}");

    // Refused: modes that never ask, another group than the enrolled one, bad fields, a revoked device.
    for (mode, says) in [(0, "mode 0"), (99, "mode 99"), (100, "mode 100")] {
        let (status, answer) = service.peers(&asker, query(mode, &[], false, false)).await;
        assert_eq!((status, answer["field"].as_str()), (400, Some("mode")), "{answer}");
        assert!(answer["message"].as_str().unwrap().contains(says), "{answer}");
    }
    let mut other_group = query(2, &[], false, false);
    other_group["group"] = json!("plant-9");
    let (status, answer) = service.peers(&asker, other_group).await;
    assert_eq!((status, answer["field"].as_str()), (400, Some("group")), "{answer}");
    let mut unknown_field = query(1, &[], false, false);
    unknown_field["ttl"] = json!(5);
    let (status, answer) = service.peers(&asker, unknown_field).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("bad-request")), "{answer}");
    let (status, answer) = service.peers(&asker, query(1, &["10.7.0.2"], false, false)).await;
    assert_eq!((status, answer["field"].as_str()), (400, Some("addresses[0]")), "{answer}");
    // The revoked device: refused by the service, or at the handshake once the listener reloaded the CRL.
    match service.as_device(&revoked, "/device/v1/peers", &query(1, &[], false, false)).await {
        Ok((status, answer)) => assert_eq!(status, 403, "{answer}"),
        Err(error) => assert!(error.contains("CertificateRevoked"), "{error}"),
    }

    // A device with a token identity takes no part.
    let body = json!({"enrollment_id": "00000000-0000-4000-8000-000000000009", "hostname": "kiosk"});
    let config = service.data.join("client/custody.toml");
    let source = "127.0.0.9".parse().unwrap();
    let (status, enrolled) =
        service.device_request(&config, source, "/device/v1/enroll", Some(&nogroup), &body).await.unwrap();
    assert_eq!(status, 200, "{enrolled}");
    let device_token = enrolled["identity"]["token"].as_str().unwrap();
    let (status, answer) = service
        .device_request(&config, source, "/device/v1/peers", Some(device_token), &query(1, &[], false, false))
        .await
        .unwrap();
    assert_eq!(status, 403, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("certificate"), "{answer}");

    // Metrics count the queries by mode.
    let response = service.admin.get(service.url("/metrics")).send().await.unwrap();
    let metrics = response.text().await.unwrap();
    for mode in ["1", "2", "3"] {
        assert!(metrics.contains(&format!("custody_peer_queries_total{{mode=\"{mode}\"}}")), "{metrics}");
    }
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_json_of_an_earlier_version_is_imported_and_keeps_working() {
    let token_id = uuid::Uuid::new_v4();
    let text = "uH3iR5kQ0wQm1b3Qm8yI5Zt1yqvV9wz2q8v1x7c3k0A";
    let hash = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()));
    let file = json!({"tokens": [{"id": token_id, "name": "line 3", "group": "line3", "hash": hash, "uses": 2,
        "uses_left": 2, "created_at": "2026-01-01T00:00:00Z", "expires_at": "2099-01-01T00:00:00Z"}],
        "enrollments": {}});
    let service = Service::start(|data| std::fs::write(data.join("enrollment.json"), file.to_string()).unwrap()).await;
    let (status, listed) = service.admin(reqwest::Method::GET, "/admin/v1/enrollment-tokens", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["enrollment_tokens"][0]["id"], json!(token_id), "{listed}");
    assert!(!service.data.join("enrollment.json").exists());
    assert!(service.data.join("enrollment.json.imported").exists());

    let secret = format!("custody_enroll_{}_{text}", token_id.simple());
    let device = service.enroll(&secret, "00000000-0000-4000-8000-000000000001", "127.0.0.1").await;
    let (_, detail) = service.admin(reqwest::Method::GET, &format!("/admin/v1/devices/{}", device.id), None).await;
    assert_eq!(detail["device"]["group"], "line3", "{detail}");
    let (_, listed) = service.admin(reqwest::Method::GET, "/admin/v1/enrollment-tokens", None).await;
    assert_eq!(listed["enrollment_tokens"][0]["uses_left"], 1);
    service.stop().await;
}
