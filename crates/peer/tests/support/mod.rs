//! Test support: a custody PKI made with custody-pki (root, the pinned device intermediate, a second device
//! intermediate under the same root, a foreign root), signed targets with piece trees, a real HTTP origin on loopback
//! (Range requests, the piece layer, optional throttling, byte counters), devices with a peer cache and a running
//! `PeerNode` on their own 127.0.0.x address, and hostile peers speaking the wire protocol with valid device
//! certificates.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use custody_catalog::pieces::{PieceHashes, PieceSize};
use custody_catalog::{ContentHasher, DeviceInventory, UpdateDescription, UpdateEntry};
use custody_p2p::{Bitfield, ContentId, Decoder, DeviceResources, DownloadMode, Message, PeerKind, PeerPolicy};
use custody_peer::{
    PeerCache, PeerCandidate, PeerContext, PeerDownload, PeerDownloadConfig, PeerJob, PeerNode, PeerNodeConfig,
    Timeouts, UploadGate,
};
use custody_pki::{CaSigner, CertKind, CertRequest, IntermediateRole, Issued, Serial, Validity};
use custody_tls::{PeerTlsConfig, ProxySettings};
use custody_tuf::{TargetFile, TrustedTarget};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use jiff::{SignedDuration, Timestamp};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const DAY: SignedDuration = SignedDuration::from_hours(24);

/// A CA with its signer.
pub struct Ca {
    pub cert: Issued,
    pub signer: CaSigner,
}

/// The PKI of the tests.
pub struct Pki {
    pub root: Ca,
    /// The update service's intermediate (server certificates).
    pub service: Ca,
    /// The device intermediate every honest device's certificate comes from (pinned).
    pub device: Ca,
    /// Another device intermediate under the same root, not pinned.
    pub other_device: Ca,
    pub foreign_root: Ca,
    pub foreign_device: Ca,
    serial: AtomicUsize,
}

impl Pki {
    pub fn new() -> Self {
        let serial = AtomicUsize::new(1);
        let root = ca(CertKind::Root, "custody test root", None, &serial);
        let service = ca(CertKind::Intermediate(IntermediateRole::Service), "service CA", Some(&root.signer), &serial);
        let device = ca(CertKind::Intermediate(IntermediateRole::Device), "device CA", Some(&root.signer), &serial);
        let other_device =
            ca(CertKind::Intermediate(IntermediateRole::Device), "second device CA", Some(&root.signer), &serial);
        let foreign_root = ca(CertKind::Root, "foreign root", None, &serial);
        let foreign_device =
            ca(CertKind::Intermediate(IntermediateRole::Device), "device CA", Some(&foreign_root.signer), &serial);
        Self { root, service, device, other_device, foreign_root, foreign_device, serial }
    }

    /// CRLs of the custody root and its intermediates (none revoked).
    pub fn crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.crl_pems()
            .iter()
            .map(|pem| CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap())
            .collect()
    }

    /// The same CRLs in PEM.
    pub fn crl_pems(&self) -> Vec<String> {
        [&self.root, &self.service, &self.device, &self.other_device].iter().map(|ca| crl_pem(ca)).collect()
    }

    /// A leaf of `issuer` (`kind`), with its key in PEM: `(chain PEM (leaf, issuer), key PEM, leaf DER, issuer DER)`.
    pub fn leaf(&self, issuer: &Ca, kind: CertKind, name: &str) -> (String, String, Vec<Vec<u8>>) {
        let key = custody_pki::generate_key().unwrap();
        let cert = CertRequest {
            kind,
            common_name: name.into(),
            serial: next_serial(&self.serial),
            validity: Validity::days_from(Timestamp::now() - DAY, 30).unwrap(),
            key: &key,
        }
        .sign(Some(&issuer.signer))
        .unwrap();
        let chain = format!("{}{}", cert.pem, issuer.cert.pem);
        (chain, key.serialize_pem(), vec![cert.der.to_vec(), issuer.cert.der.to_vec()])
    }

    /// An honest device: a certificate of the pinned device intermediate, trusting the custody root.
    pub fn device_tls(&self, device_id: &str) -> PeerTlsConfig {
        self.tls(&self.device, device_id)
    }

    /// A device whose certificate comes from `issuer` but that trusts the custody root and pins the device
    /// intermediate like everyone else.
    pub fn tls(&self, issuer: &Ca, device_id: &str) -> PeerTlsConfig {
        let key = custody_pki::generate_key().unwrap();
        let cert = CertRequest {
            kind: CertKind::Device,
            common_name: device_id.into(),
            serial: next_serial(&self.serial),
            validity: Validity::days_from(Timestamp::now() - DAY, 30).unwrap(),
            key: &key,
        }
        .sign(Some(&issuer.signer))
        .unwrap();
        let mut builder = PeerTlsConfig::builder()
            .root(self.root.cert.der.clone())
            .pin(custody_tls::SpkiPin(self.device.cert.spki_sha256))
            .identity(
                vec![cert.der, issuer.cert.der.clone()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            );
        for crl in self.crls() {
            builder = builder.crl(crl);
        }
        builder.build().unwrap()
    }
}

fn next_serial(serial: &AtomicUsize) -> Serial {
    let mut bytes = [0x42u8; 16];
    bytes[8..].copy_from_slice(&(serial.fetch_add(1, Ordering::Relaxed) as u64).to_be_bytes());
    Serial::from_random(bytes)
}

fn ca(kind: CertKind, name: &str, issuer: Option<&CaSigner>, serial: &AtomicUsize) -> Ca {
    let key = custody_pki::generate_key().unwrap();
    let cert = CertRequest {
        kind,
        common_name: name.into(),
        serial: next_serial(serial),
        validity: Validity::days_from(Timestamp::now() - DAY, 3650).unwrap(),
        key: &key,
    }
    .sign(issuer)
    .unwrap();
    let signer = CaSigner::from_pem(&cert.pem, &key.serialize_pem()).unwrap();
    Ca { cert, signer }
}

fn crl_pem(ca: &Ca) -> String {
    let now = Timestamp::now();
    ca.signer.crl(&[], 1, now - DAY, now + DAY * 30).unwrap()
}

/// A device id (a UUID, as enrollment makes them) from a number.
pub fn device_id(n: u8) -> String {
    format!("00000000-0000-4000-8000-0000000000{n:02x}")
}

/// A signed target with a piece tree, its catalog entry, and a device it applies to.
#[derive(Clone)]
pub struct Content {
    pub payload: Vec<u8>,
    pub target: TrustedTarget,
    pub entry: UpdateEntry,
    pub device: DeviceInventory,
    pub id: ContentId,
    pub hashes: PieceHashes,
}

impl Content {
    /// `len` bytes of pseudo-random content (from `seed`) cut into pieces of `piece_size`.
    pub fn new(len: usize, piece_size: u64, seed: u64) -> Self {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let payload: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let description: UpdateDescription = serde_json::from_value(serde_json::json!({
            "id": "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90", "revision": 1, "title": "Acme 1.0", "description": "",
            "kind": "store-app", "product": "acme", "classification": "update", "version": "1.0",
            "release_date": "2025-06-10", "reboot": "never", "applicability": {"arch": ["x86_64"]},
            "installer": {"handler": "store-app"},
        }))
        .unwrap();
        let mut hasher = ContentHasher::new(Some(PieceSize::new(piece_size).unwrap()));
        hasher.update(&payload);
        let (info, hashes) = hasher.finish().unwrap();
        let id = ContentId::from(info.sha256);
        let entry = UpdateEntry::from_description(&description, info).unwrap();
        let file = TargetFile::describing(&payload, Some(entry.to_custom_json()));
        let target = TrustedTarget::for_tests("acme/acme-1.0.tar.zst".into(), "acme".into(), file);
        let device = DeviceInventory {
            os_family: "debian".parse().unwrap(),
            os_version: Some("12".parse().unwrap()),
            arch: "x86_64".parse().unwrap(),
            products: BTreeMap::new(),
            hardware_ids: BTreeSet::new(),
            installed_updates: BTreeSet::new(),
        };
        Self { payload, target, entry, device, id, hashes: hashes.unwrap() }
    }

    pub fn piece_count(&self) -> u32 {
        self.hashes.piece_hashes().len() as u32
    }

    pub fn piece(&self, index: u32) -> &[u8] {
        let range = self.hashes.tree().layout().piece_range(u64::from(index)).unwrap();
        &self.payload[range.start as usize..range.end as usize]
    }
}

/// A plain HTTP origin on 127.0.0.1: `/content/<hex>` with `Range`, `/pieces/sha256/<hex>`; counts the body bytes
/// it sends; optionally sends each response at `rate` bytes per second.
pub struct Origin {
    pub addr: SocketAddr,
    pub served: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start(contents: Vec<Content>, rate: Option<u64>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let contents = Arc::new(contents);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (contents, counter) = (contents.clone(), counter.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let response = respond(&contents, &request, rate, counter.clone());
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { addr, served, task }
    }

    pub fn content_url(&self, content: &Content) -> String {
        format!("http://{}/content/{}", self.addr, content.id)
    }

    pub fn layer_url(&self, content: &Content) -> String {
        format!("http://{}/pieces/sha256/{}", self.addr, content.id)
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn respond(
    contents: &[Content],
    request: &http::Request<hyper::body::Incoming>,
    rate: Option<u64>,
    counter: Arc<AtomicU64>,
) -> http::Response<Body> {
    let path = request.uri().path();
    let not_found =
        || http::Response::builder().status(404).body(http_body_util::Full::new(Bytes::new()).boxed()).unwrap();
    if let Some(hex) = path.strip_prefix("/pieces/sha256/") {
        let Some(content) = contents.iter().find(|c| c.id.to_string() == hex) else { return not_found() };
        let layer = Bytes::from(content.hashes.to_layer_bytes());
        counter.fetch_add(layer.len() as u64, Ordering::Relaxed);
        return http::Response::new(http_body_util::Full::new(layer).boxed());
    }
    let Some(hex) = path.strip_prefix("/content/") else { return not_found() };
    let Some(content) = contents.iter().find(|c| c.id.to_string() == hex) else { return not_found() };
    let len = content.payload.len() as u64;
    let range = request
        .headers()
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    let (status, start, end) = match range {
        Some((a, b)) if a <= b && b < len => (206, a, b + 1),
        Some(_) => return http::Response::builder().status(416).body(http_body_util::Empty::new().boxed()).unwrap(),
        None => (200, 0, len),
    };
    let data = Bytes::copy_from_slice(&content.payload[start as usize..end as usize]);
    let chunks: Vec<Bytes> = data.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
    let stream = futures_util::stream::unfold((chunks.into_iter(), counter), move |(mut chunks, counter)| async move {
        let chunk = chunks.next()?;
        if let Some(rate) = rate {
            tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64)).await;
        }
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Some((Ok::<_, Infallible>(Frame::data(chunk)), (chunks, counter)))
    });
    let mut builder = http::Response::builder().status(status).header(http::header::CONTENT_LENGTH, end - start);
    if status == 206 {
        builder = builder.header(http::header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", end - 1));
    }
    builder.body(BodyExt::boxed(StreamBody::new(stream))).unwrap()
}

/// The policy of the tests: peering for any file size on any machine, LAN mode.
pub fn policy(mode: DownloadMode) -> PeerPolicy {
    PeerPolicy { download_mode: mode, min_file_size: 0, min_ram: 0, min_disk: 0, ..PeerPolicy::default() }
}

/// Short timeouts, so that hostile peers are found out within seconds.
pub fn download_config(mode: DownloadMode) -> PeerDownloadConfig {
    let mut config = PeerDownloadConfig::new(policy(mode), DeviceResources::default(), true);
    config.timeouts = Timeouts {
        handshake: Duration::from_secs(2),
        idle: Duration::from_secs(10),
        keepalive: Duration::from_secs(2),
    };
    config.swarm.request_timeout = Duration::from_secs(2);
    config.swarm.request_timeout_per_mib = Duration::from_secs(2);
    config.swarm.max_timeouts = 1;
    // Peers first: HTTP takes only pieces no connected peer has, until peers stall.
    config.swarm.http_delay = Duration::from_secs(120);
    config.swarm.peer_stall_timeout = Duration::from_secs(4);
    config.reconnect_delay = Duration::from_millis(200);
    config
}

/// A device: its certificate, peer cache, upload gate and running listener on 127.0.0.`octet`.
pub struct Device {
    pub id: String,
    pub tls: PeerTlsConfig,
    pub cache: Arc<PeerCache>,
    pub gate: Arc<UploadGate>,
    pub node: PeerNode,
    pub dir: tempfile::TempDir,
}

impl Device {
    pub async fn start(pki: &Pki, octet: u8) -> Self {
        Self::start_with(pki.device_tls(&device_id(octet)), octet, 0).await
    }

    /// A device with this certificate, uploading at most `upload_rate` bytes per second (0: unlimited).
    pub async fn start_with(tls: PeerTlsConfig, octet: u8, upload_rate: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cache = PeerCache::open(&dir.path().join("cache")).unwrap();
        std::fs::create_dir_all(dir.path().join("staging")).unwrap();
        let policy = PeerPolicy { max_upload_rate: upload_rate, ..policy(DownloadMode::Lan) };
        let gate = UploadGate::new(policy, DeviceResources::default(), Some(&dir.path().join("uploads.json"))).unwrap();
        let config = PeerNodeConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)), 0),
            timeouts: Timeouts {
                handshake: Duration::from_secs(2),
                idle: Duration::from_secs(10),
                keepalive: Duration::from_secs(2),
            },
            ..PeerNodeConfig::default()
        };
        let node = PeerNode::start(config, tls.clone(), cache.clone(), gate.clone()).await.unwrap();
        let id = tls.own_identity().device_id.clone();
        Self { id, tls, cache, gate, node, dir }
    }

    pub fn candidate(&self) -> PeerCandidate {
        PeerCandidate { addr: self.node.local_addr(), kind: PeerKind::Lan, device: Some(self.id.clone()) }
    }

    pub fn context(&self) -> PeerContext {
        PeerContext {
            cache: self.cache.clone(),
            gate: self.gate.clone(),
            tls: Some(self.tls.clone()),
            plain: custody_tls::plain_http_client(&ProxySettings::direct()).unwrap(),
            pinned: None,
        }
    }

    pub fn job(&self, content: &Content, origin: &Origin) -> PeerJob {
        PeerJob {
            target: content.target.clone(),
            entry: content.entry.clone(),
            device: content.device.clone(),
            staging_dir: self.dir.path().join("staging"),
            content_urls: vec![origin.content_url(content)],
            layer_urls: vec![origin.layer_url(content)],
        }
    }

    pub fn download(&self, content: &Content, origin: &Origin, config: PeerDownloadConfig) -> PeerDownload {
        PeerDownload::new(self.job(content, origin), self.context(), config)
    }

    /// Gets the whole content into this device's cache over HTTP only, so that it serves as a complete peer.
    pub async fn seed(&self, content: &Content, origin: &Origin) {
        let outcome =
            self.download(content, origin, download_config(DownloadMode::HttpOnly)).run(vec![]).await.unwrap();
        assert_eq!(std::fs::read(outcome.artifact.path()).unwrap(), content.payload);
        outcome.artifact.discard().unwrap();
        assert!(self.cache.get(&content.id).unwrap().is_complete());
    }
}

/// How a hostile peer misbehaves. Each speaks the protocol with a valid device certificate and claims every piece.
#[derive(Clone)]
pub enum Hostile {
    /// Answers requests with the right piece, one byte flipped.
    Corrupt,
    /// Answers with pieces of another content (of the right length).
    OtherContent(Arc<Content>),
    /// Answers with a piece one byte short, then a frame longer than the piece size allows.
    WrongLengths,
    /// Completes the handshake, then never answers.
    Silent,
    /// Accepts TCP connections and never speaks (not even TLS).
    Mute,
}

/// A hostile peer on 127.0.0.`octet`; counts the TCP connections it accepted.
pub struct HostilePeer {
    pub addr: SocketAddr,
    pub device: String,
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HostilePeer {
    pub async fn start(pki: &Pki, octet: u8, content: Arc<Content>, behaviour: Hostile) -> Self {
        let device = device_id(octet);
        let tls = pki.device_tls(&device);
        let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, octet), 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                count.fetch_add(1, Ordering::Relaxed);
                if matches!(behaviour, Hostile::Mute) {
                    held.push(tcp);
                    continue;
                }
                let (tls, content, behaviour) = (tls.clone(), content.clone(), behaviour.clone());
                tokio::spawn(async move {
                    let Ok(stream) = tls.acceptor().accept(tcp).await else { return };
                    let _ = misbehave(stream, &content, behaviour).await;
                });
            }
        });
        Self { addr, device, accepted, task }
    }

    pub fn candidate(&self) -> PeerCandidate {
        PeerCandidate { addr: self.addr, kind: PeerKind::Lan, device: Some(self.device.clone()) }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn misbehave<S>(mut stream: S, content: &Content, behaviour: Hostile) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let decoder = Decoder::for_content(content.hashes.tree().layout()).unwrap();
    let mut buffer = BytesMut::new();
    let mut out = BytesMut::new();
    Message::Handshake { version: 1, content: content.id, piece_count: content.piece_count() }.encode(&mut out);
    Message::Bitfield(Bitfield::full(content.piece_count())).encode(&mut out);
    stream.write_all(&out).await?;
    let mut answered = 0u32;
    loop {
        let message = loop {
            if let Some(message) = decoder.decode(&mut buffer).map_err(std::io::Error::other)? {
                break message;
            }
            buffer.reserve(64 * 1024);
            if stream.read_buf(&mut buffer).await? == 0 {
                return Ok(());
            }
        };
        let Message::Request { piece } = message else { continue };
        let mut out = BytesMut::new();
        match &behaviour {
            Hostile::Silent | Hostile::Mute => continue,
            Hostile::Corrupt => {
                let mut data = content.piece(piece).to_vec();
                let middle = data.len() / 2;
                data[middle] ^= 0x01;
                Message::Piece { piece, data: data.into() }.encode(&mut out);
            }
            Hostile::OtherContent(other) => {
                let index = piece.min(other.piece_count() - 1);
                let mut data = other.piece(index).to_vec();
                data.resize(content.piece(piece).len(), 0);
                Message::Piece { piece, data: data.into() }.encode(&mut out);
            }
            Hostile::WrongLengths => {
                answered += 1;
                if answered == 1 {
                    let data = content.piece(piece)[1..].to_vec();
                    Message::Piece { piece, data: data.into() }.encode(&mut out);
                } else {
                    // A piece frame longer than the piece size: the length field alone is refused.
                    let oversize = content.hashes.tree().layout().piece_size().get() + 64;
                    out.extend_from_slice(&custody_p2p::wire::encode_piece_header(piece, oversize));
                    out.extend_from_slice(&vec![0u8; 1024]);
                }
            }
        }
        stream.write_all(&out).await?;
    }
}
