//! Test support: a PKI made with custody-pki, real HTTPS servers on 127.0.0.1 (custody-tls's listener), a real HTTP
//! CONNECT proxy and a real TLS-intercepting proxy, and "naive" clients with rustls' standard verifier as controls.
#![allow(dead_code)] // each test binary uses part of it

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use custody_pki::{CaSigner, CertKind, CertRequest, IntermediateRole, Issued, RevokedEntry, Serial, Validity};
use custody_tls::server::static_service;
use custody_tls::{HttpsServer, ProxySettings, ServerHandle, ServerTlsFiles, SpkiPin, TlsClientConfig};
use jiff::{SignedDuration, Timestamp};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const DAY: SignedDuration = SignedDuration::from_hours(24);

/// A CA with its signer, certificate and key.
pub struct Ca {
    pub cert: Issued,
    pub key_pem: String,
    pub signer: CaSigner,
}

/// A leaf: certificate, key, and its issuing CA's certificate (the chain a server presents).
#[derive(Clone)]
pub struct Leaf {
    pub cert: Issued,
    pub key_pem: String,
    pub chain: Vec<Issued>,
}

/// The custody PKI of the tests: one root; the service's intermediate (pinned) and a second intermediate under the same
/// root (not pinned); the device intermediate. Plus a foreign root and intermediate: the CA a machine's trust store
/// (or a TLS-inspecting proxy) has.
pub struct Pki {
    pub root: Ca,
    pub service: Ca,
    pub other: Ca,
    pub device: Ca,
    pub foreign_root: Ca,
    pub foreign_int: Ca,
    pub now: Timestamp,
    serial: AtomicUsize,
    revoked: Mutex<Vec<RevokedEntry>>,
}

impl Pki {
    pub fn new() -> Self {
        let now = Timestamp::now();
        let serial = AtomicUsize::new(1);
        let next = |serial: &AtomicUsize| serial_from(serial.fetch_add(1, Ordering::Relaxed));
        let ca = |kind: CertKind, name: &str, issuer: Option<&CaSigner>, serial: &AtomicUsize| {
            let key = custody_pki::generate_key().unwrap();
            let cert = CertRequest {
                kind,
                common_name: name.into(),
                serial: next(serial),
                validity: Validity::days_from(now - DAY, 3650).unwrap(),
                key: &key,
            }
            .sign(issuer)
            .unwrap();
            let key_pem = key.serialize_pem();
            let signer = CaSigner::from_pem(&cert.pem, &key_pem).unwrap();
            Ca { cert, key_pem, signer }
        };
        let root = ca(CertKind::Root, "custody test root", None, &serial);
        let service = ca(CertKind::Intermediate(IntermediateRole::Service), "service CA", Some(&root.signer), &serial);
        let other =
            ca(CertKind::Intermediate(IntermediateRole::Relay("x".into())), "other CA", Some(&root.signer), &serial);
        let device = ca(CertKind::Intermediate(IntermediateRole::Device), "device CA", Some(&root.signer), &serial);
        let foreign_root = ca(CertKind::Root, "Corp TLS Inspection Root", None, &serial);
        let foreign_int = ca(
            CertKind::Intermediate(IntermediateRole::Service),
            "Corp TLS Inspection Issuing CA",
            Some(&foreign_root.signer),
            &serial,
        );
        Self { root, service, other, device, foreign_root, foreign_int, now, serial, revoked: Mutex::new(Vec::new()) }
    }

    /// A server leaf for `localhost` and 127.0.0.1 from `ca`, valid from `now - 1 day` for a year.
    pub fn server_leaf(&self, ca: &Ca) -> Leaf {
        self.leaf(ca, CertKind::Server { names: vec!["localhost".into(), "127.0.0.1".into()] }, self.now - DAY, 365)
    }

    pub fn leaf(&self, ca: &Ca, kind: CertKind, not_before: Timestamp, days: u32) -> Leaf {
        let key = custody_pki::generate_key().unwrap();
        let cert = CertRequest {
            kind,
            common_name: "leaf".into(),
            serial: serial_from(self.serial.fetch_add(1, Ordering::Relaxed)),
            validity: Validity::days_from(not_before, days).unwrap(),
            key: &key,
        }
        .sign(Some(&ca.signer))
        .unwrap();
        Leaf { cert, key_pem: key.serialize_pem(), chain: vec![ca.cert.clone()] }
    }

    /// Marks a leaf revoked in the CRLs made from now on.
    pub fn revoke(&self, leaf: &Leaf) {
        let serial = Serial(<[u8; 16]>::try_from(hex::decode(serial_hex(&leaf.cert)).unwrap().as_slice()).unwrap());
        self.revoked.lock().unwrap().push(RevokedEntry { serial, revoked_at: self.now, reason: None });
    }

    /// A CRL of `ca` (with the revoked leaves), next update in 30 days.
    pub fn crl(&self, ca: &Ca) -> CertificateRevocationListDer<'static> {
        self.crl_until(ca, self.now + DAY * 30)
    }

    pub fn crl_until(&self, ca: &Ca, next_update: Timestamp) -> CertificateRevocationListDer<'static> {
        CertificateRevocationListDer::from_pem_slice(self.crl_pem(ca, next_update).as_bytes()).unwrap()
    }

    pub fn crl_pem(&self, ca: &Ca, next_update: Timestamp) -> String {
        let revoked = self.revoked.lock().unwrap().clone();
        ca.signer.crl(&revoked, 1, next_update - DAY * 60, next_update).unwrap()
    }

    /// The CRLs a client needs for chains of the custody root: the root's and every intermediate's.
    pub fn crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        vec![self.crl(&self.root), self.crl(&self.service), self.crl(&self.other), self.crl(&self.device)]
    }

    pub fn pin(ca: &Ca) -> SpkiPin {
        SpkiPin(ca.cert.spki_sha256)
    }

    /// custody's client configuration: the custody root, `pins`, `crls`.
    pub fn client_config(&self, pins: &[SpkiPin], crls: Vec<CertificateRevocationListDer<'static>>) -> TlsClientConfig {
        let mut builder = TlsClientConfig::builder().root(self.root.cert.der.clone());
        for crl in crls {
            builder = builder.crl(crl);
        }
        for pin in pins {
            builder = builder.pin(*pin);
        }
        builder.build().unwrap()
    }

    /// The usual client: pinned to the service intermediate, all CRLs current, no proxy.
    pub fn client(&self) -> reqwest::Client {
        self.client_config(&[Self::pin(&self.service)], self.crls()).http_client(&ProxySettings::direct()).unwrap()
    }
}

pub fn serial_from(n: usize) -> Serial {
    let mut bytes = [0x42u8; 16];
    bytes[8..].copy_from_slice(&(n as u64).to_be_bytes());
    Serial::from_random(bytes)
}

pub fn serial_hex(cert: &Issued) -> String {
    custody_pki::CertDetails::from_der(&cert.der).unwrap().serial
}

/// Files of a running server, in a temporary directory.
pub struct ServerFiles {
    pub dir: tempfile::TempDir,
    pub files: ServerTlsFiles,
}

impl ServerFiles {
    pub fn new(leaf: &Leaf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = ServerTlsFiles {
            cert_chain: dir.path().join("chain.pem"),
            key: dir.path().join("key.pem"),
            client_auth: None,
        };
        let this = Self { dir, files };
        this.install(leaf);
        this
    }

    /// Writes the leaf's chain and key atomically (write elsewhere, rename).
    pub fn install(&self, leaf: &Leaf) {
        let chain: String = std::iter::once(&leaf.cert).chain(&leaf.chain).map(|c| c.pem.as_str()).collect();
        write_atomic(&self.files.cert_chain, chain.as_bytes());
        write_atomic(&self.files.key, leaf.key_pem.as_bytes());
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An HTTPS server on 127.0.0.1 presenting `leaf` (and its chain), answering "ok".
pub async fn serve(leaf: &Leaf) -> (ServerHandle, ServerFiles) {
    let files = ServerFiles::new(leaf);
    let server = HttpsServer::bind("127.0.0.1:0".parse().unwrap(), files.files.clone()).await.unwrap();
    (server.spawn(static_service("ok")).unwrap(), files)
}

/// An HTTPS server presenting exactly `chain` (leaf first) with `key_pem`.
pub async fn serve_chain(chain: &[&Issued], key_pem: &str) -> (ServerHandle, ServerFiles) {
    let leaf = Leaf {
        cert: chain[0].clone(),
        key_pem: key_pem.to_owned(),
        chain: chain[1..].iter().map(|c| (*c).clone()).collect(),
    };
    serve(&leaf).await
}

pub fn url(server: &ServerHandle) -> String {
    format!("https://localhost:{}/metadata/root.json", server.local_addr().port())
}

/// GETs `url`; the body on 200, else the custody-tls refusal.
pub async fn get(client: &reqwest::Client, url: &str) -> Result<String, custody_tls::Error> {
    match client.get(url).send().await {
        Ok(response) => {
            assert_eq!(response.status(), 200);
            Ok(response.text().await.unwrap())
        }
        Err(err) => match custody_tls::Error::from_reqwest(&err) {
            Some(refusal) => Err(clone_refusal(refusal)),
            None => panic!("connection failed, but not by a certificate refusal: {err:?}"),
        },
    }
}

/// The refusal re-made as an owned value (the error is inside reqwest's error).
fn clone_refusal(err: &custody_tls::Error) -> custody_tls::Error {
    use custody_tls::Error::*;
    match err {
        Expired { host, cert, not_after, now } => {
            Expired { host: host.clone(), cert: cert.clone(), not_after: not_after.clone(), now: now.clone() }
        }
        NotYetValid { host, cert, not_before, now } => {
            NotYetValid { host: host.clone(), cert: cert.clone(), not_before: not_before.clone(), now: now.clone() }
        }
        Revoked { host, cert } => Revoked { host: host.clone(), cert: cert.clone() },
        NameMismatch { host, names, cert } => {
            NameMismatch { host: host.clone(), names: names.clone(), cert: cert.clone() }
        }
        UnknownIssuer { host, cert } => UnknownIssuer { host: host.clone(), cert: cert.clone() },
        PinMismatch { host, cert, issuer_spki, pins } => {
            PinMismatch { host: host.clone(), cert: cert.clone(), issuer_spki: issuer_spki.clone(), pins: pins.clone() }
        }
        StaleCrl { host, cert, crl_issuer, next_update, now } => StaleCrl {
            host: host.clone(),
            cert: cert.clone(),
            crl_issuer: crl_issuer.clone(),
            next_update: next_update.clone(),
            now: now.clone(),
        },
        RevocationUnknown { host, cert } => RevocationUnknown { host: host.clone(), cert: cert.clone() },
        WrongUsage { host, cert } => WrongUsage { host: host.clone(), cert: cert.clone() },
        Rejected { host, cert, reason } => Rejected { host: host.clone(), cert: cert.clone(), reason: reason.clone() },
        other => panic!("not a refusal: {other}"),
    }
}

/// Checks that a refusal's message names the certificate's subject, issuer and SPKI SHA-256.
pub fn assert_names(err: &custody_tls::Error, cert: &Issued) {
    let details = custody_pki::CertDetails::from_der(&cert.der).unwrap();
    let message = err.to_string();
    assert!(message.contains(&details.subject), "{message}");
    assert!(message.contains(&details.issuer), "{message}");
    assert!(message.contains(&details.spki_sha256), "{message}");
}

/// A client with rustls' standard verifier trusting `roots` (as a machine's trust store would), no pins, no CRLs:
/// the control that shows a chain would be accepted by a naive client.
pub fn naive_client(roots: &[&Issued], proxy: Option<SocketAddr>) -> reqwest::Client {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.der.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let builder = reqwest::Client::builder().tls_backend_preconfigured(config).no_proxy();
    let builder = match proxy {
        Some(addr) => builder.proxy(reqwest::Proxy::https(format!("http://{addr}")).unwrap()),
        None => builder,
    };
    builder.build().unwrap()
}

/// A real HTTP CONNECT proxy on 127.0.0.1: relays bytes, records the CONNECT targets.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    pub targets: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What an intercepting proxy does with a tunnelled connection.
#[derive(Clone)]
pub struct Interception {
    /// The certificate chain and key it presents to the client (minted by its own CA).
    pub chain: Vec<CertificateDer<'static>>,
    pub key_pem: String,
    /// Whom it trusts upstream (it re-originates TLS to the real server).
    pub upstream_roots: Vec<CertificateDer<'static>>,
}

impl ConnectProxy {
    /// A pass-through proxy.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A TLS-intercepting proxy: it terminates the client's TLS with its own certificate and opens its own TLS
    /// connection to the server, relaying the plaintext in between.
    pub async fn start_intercepting(interception: Interception) -> Self {
        Self::start_with(Some(interception)).await
    }

    async fn start_with(interception: Option<Interception>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = targets.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (seen, interception) = (seen.clone(), interception.clone());
                tokio::spawn(async move {
                    let Some(target) = read_connect(&mut client).await else { return };
                    seen.lock().unwrap().push(target.clone());
                    let Ok(upstream) = connect_any(&target).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
                        return;
                    }
                    match interception {
                        None => {
                            let (mut client, mut upstream) = (client, upstream);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                        Some(interception) => intercept(client, upstream, &target, interception).await,
                    }
                });
            }
        });
        Self { addr, targets, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a `CONNECT host:port HTTP/1.1` request head; returns `host:port`.
async fn read_connect(client: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || client.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).ok()?;
    let mut words = head.lines().next()?.split_whitespace();
    (words.next()? == "CONNECT").then_some(())?;
    words.next().map(str::to_owned)
}

async fn connect_any(target: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(target).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
}

async fn intercept(client: TcpStream, upstream: TcpStream, target: &str, interception: Interception) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = PrivateKeyDer::from_pem_slice(interception.key_pem.as_bytes()).unwrap();
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(interception.chain.clone(), key)
        .unwrap();
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let Ok(mut client) = tokio_rustls::TlsAcceptor::from(Arc::new(server_config)).accept(client).await else {
        return; // the client refused our certificate: what a pinned client does
    };
    let mut roots = rustls::RootCertStore::empty();
    for root in interception.upstream_roots {
        roots.add(root).unwrap();
    }
    let mut client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let host = target.rsplit_once(':').map_or(target, |(host, _)| host).to_owned();
    let name = ServerName::try_from(host).unwrap();
    let Ok(mut upstream) = tokio_rustls::TlsConnector::from(Arc::new(client_config)).connect(name, upstream).await
    else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
