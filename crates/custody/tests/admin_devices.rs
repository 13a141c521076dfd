//! `custody admin devices revoke` against a `custody server` process on loopback: the device enrolled with a CSR is
//! refused by the device API afterwards, its certificate is on the device CRL the service serves, and the listing
//! shows when it was revoked.

mod service;

use std::path::PathBuf;
use std::process::{Child, Command, Output};

use custody_tls::{ProxySettings, TransportConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A `custody server` process on a fresh data directory.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    https: String,
    http: String,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (child, https, http) =
            service::spawn(dir.path(), "[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n");
        Self { child, dir, https, http }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn custody(&self, args: &[&str]) -> Output {
        let token = std::fs::read_to_string(self.data().join("admin-token")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_custody"))
            .args(args)
            .arg("--config")
            .arg(self.data().join("client/custody.toml"))
            .env("CUSTODY_TOKEN", token.trim())
            .output()
            .unwrap()
    }

    /// The pinned client of the transport configuration `file`.
    fn pinned(&self, file: &std::path::Path) -> reqwest::Client {
        TransportConfig::load(file).unwrap().tls_client().unwrap().http_client(&ProxySettings::direct()).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_device_from_the_command_line() {
    let server = Server::start();
    let created: Value =
        serde_json::from_str(&stdout(&server.custody(&["admin", "enrollment-tokens", "create", "lab", "--json"])))
            .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap();
    let body = json!({"enrollment_id": "5b0c6a6e-1f3d-4c6b-8e2f-1a2b3c4d5e6f", "hostname": "kiosk-1",
        "csr": csr.pem().unwrap()});
    let client_config = server.data().join("client/custody.toml");
    let enrolled: Value = server
        .pinned(&client_config)
        .post(format!("{}/device/v1/enroll", server.https))
        .bearer_auth(created["token"].as_str().unwrap())
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = enrolled["device_id"].as_str().unwrap().to_owned();
    let (chain, key_file) =
        (server.data().join("client/device-chain.pem"), server.data().join("client/device-key.pem"));
    std::fs::write(&chain, enrolled["identity"]["chain"].as_str().unwrap()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let device_config = server.data().join("client/device.toml");
    let text = std::fs::read_to_string(&client_config)
        .unwrap()
        .replace("[tls]\n", "[tls]\nclient_cert = \"device-chain.pem\"\nclient_key = \"device-key.pem\"\n");
    std::fs::write(&device_config, text).unwrap();
    let inventory = json!({"os_family": "debian", "arch": "aarch64"});
    let inventory_url = format!("{}/device/v1/inventory", server.https);
    let before = server.pinned(&device_config).put(&inventory_url).json(&inventory).send().await.unwrap();
    assert_eq!(before.status(), StatusCode::NO_CONTENT);

    let printed = stdout(&server.custody(&["admin", "devices", "revoke", &id, "--reason", "key-compromise"]));
    assert!(printed.contains(&format!("revoked device {id} (kiosk-1)")), "{printed}");
    assert!(printed.contains("is on the device CRL"), "{printed}");
    let again: Value =
        serde_json::from_str(&stdout(&server.custody(&["admin", "devices", "revoke", &id, "--json"]))).unwrap();
    let serial = again["certificate"]["serial"].as_str().unwrap().to_owned();
    assert_eq!(again["certificate"]["on_crl"], true, "{again}");
    let refused = server.custody(&["admin", "devices", "revoke", &id, "--reason", "boredom"]);
    assert!(!refused.status.success(), "an unknown reason is refused before anything is sent");

    let listed: Value = serde_json::from_str(&stdout(&server.custody(&["admin", "devices", "--json"]))).unwrap();
    assert_eq!(listed["devices"][0]["revoked_at"], again["device"]["revoked_at"], "{listed}");
    let crl = custody_tls::plain_http_client(&ProxySettings::direct())
        .unwrap()
        .get(format!("{}/pki/device-crl.pem", server.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(custody_pki::CrlDetails::from_pem(&crl).unwrap().revoked.contains(&serial));

    // Refused by the service at once (403 naming the revocation), or, once the listener reloaded the CRL, at the
    // handshake: either way the device gets nothing.
    match server.pinned(&device_config).put(&inventory_url).json(&inventory).send().await {
        Ok(response) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
            assert!(response.text().await.unwrap().contains("was revoked"));
        }
        Err(error) => assert!(format!("{error:?}").contains("CertificateRevoked"), "{error:?}"),
    }
}
