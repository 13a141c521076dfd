//! The HTTPS listener: connection reuse, hot reload without dropping connections, client certificates by route.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use custody_pki::CertKind;
use custody_tls::server::ClientAuthFiles;
use custody_tls::{ClientIdentity, HttpsServer, ProxySettings};
use http_body_util::Full;
use hyper::body::Incoming;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::*;

#[tokio::test]
async fn one_connection_per_host_is_reused() {
    let pki = Pki::new();
    let (server, _files) = serve(&pki.server_leaf(&pki.service)).await;
    let client = pki.client();
    for _ in 0..5 {
        assert_eq!(get(&client, &url(&server)).await.unwrap(), "ok");
    }
    assert_eq!(server.stats().accepted(), 1, "five requests, one TCP connection");
    assert_eq!(server.stats().handshakes(), 1, "and one TLS handshake");
}

#[tokio::test]
async fn server_reloads_certificate_without_dropping_connections() {
    let pki = Pki::new();
    let first = pki.server_leaf(&pki.service);
    let files = ServerFiles::new(&first);
    let server = HttpsServer::bind("127.0.0.1:0".parse().unwrap(), files.files.clone())
        .await
        .unwrap()
        .reload_interval(Duration::from_millis(50))
        .spawn(custody_tls::server::static_service("ok"))
        .unwrap();
    let client = pki.client();
    assert_eq!(get(&client, &url(&server)).await.unwrap(), "ok");
    assert_eq!(served_certificate(&pki, &server).await, first.cert.der);

    // Renewal: a new certificate and key, written while the client's connection is open.
    let second = pki.server_leaf(&pki.service);
    files.install(&second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.stats().reloads() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no reload within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted = server.stats().accepted();
    // The established connection still serves...
    assert_eq!(get(&client, &url(&server)).await.unwrap(), "ok");
    assert_eq!(server.stats().accepted(), accepted, "the old connection was reused, not re-opened");
    // ...and a new handshake gets the new certificate.
    assert_eq!(served_certificate(&pki, &server).await, second.cert.der);

    // A broken file (a key that does not match) is not taken: the server keeps serving the last good pair.
    std::fs::write(&files.files.key, first.key_pem.as_bytes()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served_certificate(&pki, &server).await, second.cert.der);
    assert_eq!(server.stats().reloads(), 1);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_with_a_tls_goodbye() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let (server, _files) = serve(&pki.server_leaf(&pki.service)).await;
    // One request served, then the connection idles in keep-alive.
    let config = pki.client_config(&[Pki::pin(&pki.service)], pki.crls());
    let tcp = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    let mut tls = config.connector().connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n0\r\n\r\n") {
        let mut buffer = [0u8; 1024];
        let read = tls.read(&mut buffer).await.unwrap();
        assert!(read > 0, "the server closed before answering: {:?}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buffer[..read]);
    }

    let addr = server.local_addr();
    assert!(server.shutdown(Duration::from_secs(5)).await, "every connection closed in time");
    // close_notify makes the end of the stream clean; a connection merely dropped reads as an unexpected EOF.
    let mut rest = Vec::new();
    assert_eq!(tls.read_to_end(&mut rest).await.unwrap(), 0);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listening socket is closed");
}

/// The leaf certificate a fresh TLS connection to `server` is given.
async fn served_certificate(pki: &Pki, server: &custody_tls::ServerHandle) -> CertificateDer<'static> {
    let config = pki.client_config(&[Pki::pin(&pki.service)], pki.crls());
    let tcp = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    let tls = config.connector().connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn client_certificate_required_on_chosen_routes() {
    let pki = Pki::new();
    let server_leaf = pki.server_leaf(&pki.service);
    let device = pki.leaf(&pki.device, CertKind::Device, pki.now - DAY, 30);
    let revoked_device = pki.leaf(&pki.device, CertKind::Device, pki.now - DAY, 30);
    pki.revoke(&revoked_device);
    let files = ServerFiles::new(&server_leaf);
    std::fs::write(files.path("roots.pem"), &pki.root.cert.pem).unwrap();
    let mut crl_paths = Vec::new();
    for (name, ca) in [("root-crl.pem", &pki.root), ("device-crl.pem", &pki.device)] {
        std::fs::write(files.path(name), pki.crl_pem(ca, pki.now + DAY * 30)).unwrap();
        crl_paths.push(files.path(name));
    }
    let mut tls_files = files.files.clone();
    tls_files.client_auth =
        Some(ClientAuthFiles { roots: files.path("roots.pem"), crls: crl_paths, required_on: vec!["/admin".into()] });
    let who = hyper::service::service_fn(|request: http::Request<Incoming>| async move {
        let who = request
            .extensions()
            .get::<ClientIdentity>()
            .and_then(ClientIdentity::spki_sha256)
            .map_or_else(|| "anonymous".to_owned(), |pin| pin.to_string());
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(who))))
    });
    let server = HttpsServer::bind("127.0.0.1:0".parse().unwrap(), tls_files).await.unwrap().spawn(who).unwrap();
    let base = format!("https://localhost:{}", server.local_addr().port());

    let anonymous = pki.client();
    assert_eq!(get(&anonymous, &format!("{base}/metadata/1.root.json")).await.unwrap(), "anonymous");
    assert_eq!(get(&anonymous, &format!("{base}/administrator")).await.unwrap(), "anonymous");
    let response = anonymous.get(format!("{base}/admin/keys")).send().await.unwrap();
    assert_eq!(response.status(), 403);

    let with_identity = |leaf: &Leaf| {
        let chain = vec![leaf.cert.der.clone(), pki.device.cert.der.clone()];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut builder = custody_tls::TlsClientConfig::builder()
            .root(pki.root.cert.der.clone())
            .pin(Pki::pin(&pki.service))
            .client_identity(chain, key);
        for crl in pki.crls() {
            builder = builder.crl(crl);
        }
        builder.build().unwrap().http_client(&ProxySettings::direct()).unwrap()
    };
    let device_client = with_identity(&device);
    let expected = custody_tls::SpkiPin(device.cert.spki_sha256).to_string();
    let response = device_client.get(format!("{base}/admin/keys")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), expected);

    // A revoked device certificate does not get through the handshake at all.
    assert!(with_identity(&revoked_device).get(format!("{base}/admin/keys")).send().await.is_err());
}

#[tokio::test]
async fn every_connection_is_verified_in_full() {
    let pki = Pki::new();
    let (server, _files) = serve(&pki.server_leaf(&pki.service)).await;
    let config = pki.client_config(&[Pki::pin(&pki.service)], pki.crls()).rustls_config();
    let mut resuming = (*config).clone();
    resuming.resumption = rustls::client::Resumption::default();
    let resuming = std::sync::Arc::new(resuming);
    let mut kinds = Vec::new();
    for config in [&config, &config, &resuming, &resuming] {
        kinds.push(request_and_handshake_kind(config.clone(), server.local_addr()).await);
    }
    use rustls::HandshakeKind::Full;
    // custody's client configuration does not resume sessions, and the listener issues no TLS 1.3 tickets, so even a
    // client that tries to resume gets a full handshake: no connection skips certificate verification (a revoked
    // certificate cannot ride on an old session).
    assert_eq!(kinds, [Full, Full, Full, Full]);
}

/// Opens a TLS connection, makes one HTTP request (reading the reply also reads the session tickets), and returns
/// whether the handshake was full or resumed.
async fn request_and_handshake_kind(
    config: std::sync::Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> rustls::HandshakeKind {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply).await.unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200"));
    kind
}
