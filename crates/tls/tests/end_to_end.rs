//! From `custody pki`'s CA directory to a pinned connection: the server serves the files the CA directory holds, the
//! device reads its configuration file (roots, pins, CRLs by path), and a revocation in the CA directory reaches it
//! through the re-signed CRL file.

mod support;

use custody_pki::{CaDir, IntermediateRole, layout};
use custody_tls::{Error, HttpsServer, ProxySettings, ServerTlsFiles, TransportConfig};

#[tokio::test]
async fn ca_directory_and_config_file_drive_a_pinned_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let now = jiff::Timestamp::now();
    let mut ca = CaDir::init(&tmp.path().join("ca"), "custody root CA", 3650, 365, now).unwrap();
    let service = ca.issue_intermediate(&IntermediateRole::Service, None, None, 1825, 30, now).unwrap();
    let names = ["localhost".to_string(), "127.0.0.1".to_string()];
    let leaf = ca.issue_server("service", &names, None, layout::SERVER_DAYS, now).unwrap();
    let leaf_dir = ca.entry_dir(&leaf);
    let files =
        ServerTlsFiles { cert_chain: leaf_dir.join("chain.pem"), key: leaf_dir.join("key.pem"), client_auth: None };
    let server = HttpsServer::bind("127.0.0.1:0".parse().unwrap(), files)
        .await
        .unwrap()
        .spawn(custody_tls::server::static_service("ok"))
        .unwrap();

    let config_path = tmp.path().join("device.toml");
    let config = format!(
        r#"
        [service]
        url = "https://localhost:{port}"
        [tls]
        roots = ["ca/root/cert.pem"]
        pins = ["{pin}"]
        crls = ["ca/root/crl.pem", "ca/ca/service/crl.pem"]
        [proxy]
        from_environment = false
        "#,
        port = server.local_addr().port(),
        pin = service.spki_sha256,
    );
    std::fs::write(&config_path, config).unwrap();
    let client = || {
        let config = TransportConfig::load(&config_path).unwrap();
        let proxy = config.proxy_settings(|| panic!("from_environment = false")).unwrap();
        assert_eq!(proxy, ProxySettings::direct());
        config.tls_client().unwrap().http_client(&proxy).unwrap()
    };
    let url = format!("https://localhost:{}/", server.local_addr().port());
    assert_eq!(support::get(&client(), &url).await.unwrap(), "ok");

    ca.revoke(&leaf.serial.parse().unwrap(), "key-compromise", now).unwrap();
    let err = support::get(&client(), &url).await.unwrap_err();
    assert!(matches!(err, Error::Revoked { .. }), "{err}");
    assert!(err.to_string().contains(&leaf.serial), "{err}");
}
