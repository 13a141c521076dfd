//! Peer discovery: the matching-service client against a real HTTPS listener (custody-tls, device client
//! certificates), and DNS-SD over multicast DNS inside a private network namespace.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use custody_api::p2p::{PeerEntry, PeerList, PeerQuery};
use custody_p2p::{ContentId, DownloadMode, PeerKind};
use custody_peer::discovery::{Announcement, LanAdvertisement, LanDiscovery, MatchingClient};
use custody_peer::{Error, PeerCandidate};
use custody_pki::CertKind;
use custody_tls::server::{ClientAuthFiles, ClientIdentity};
use custody_tls::{HttpsServer, ProxySettings, ServerTlsFiles, SpkiPin, TlsClientConfigBuilder};
use http_body_util::{BodyExt, Full};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use support::{Pki, device_id};

/// What the test service saw: each query with the device certificate's common name.
type Seen = Arc<Mutex<Vec<(PeerQuery, bool)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matching_client_announces_the_device_and_returns_its_peers() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (server_chain, server_key, _) =
        pki.leaf(&pki.service, CertKind::Server { names: vec!["127.0.0.1".into()] }, "service");
    std::fs::write(dir.path().join("chain.pem"), server_chain).unwrap();
    std::fs::write(dir.path().join("key.pem"), server_key).unwrap();
    std::fs::write(dir.path().join("roots.pem"), &pki.root.cert.pem).unwrap();
    std::fs::write(dir.path().join("crls.pem"), pki.crl_pems().concat()).unwrap();
    let files = ServerTlsFiles {
        cert_chain: dir.path().join("chain.pem"),
        key: dir.path().join("key.pem"),
        client_auth: Some(ClientAuthFiles {
            roots: dir.path().join("roots.pem"),
            crls: vec![dir.path().join("crls.pem")],
            required_on: vec!["/device/v1/peers".into()],
        }),
    };
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let recorded = recorded.clone();
        async move {
            let authenticated = request.extensions().get::<ClientIdentity>().is_some();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let query: PeerQuery = serde_json::from_slice(&body).unwrap();
            recorded.lock().unwrap().push((query.clone(), authenticated));
            let (status, answer) = match query.group.as_deref() {
                Some("unknown-group") => (
                    400,
                    serde_json::json!({"error": "invalid-field", "message": "group: no such group", "field": "group"}),
                ),
                _ => (
                    200,
                    serde_json::to_value(PeerList {
                        peers: vec![
                            PeerEntry {
                                device: device_id(7).parse().unwrap(),
                                address: "192.0.2.7:7680".into(),
                                kind: custody_api::p2p::PeerKind::CacheServer,
                                complete: true,
                            },
                            PeerEntry {
                                device: device_id(8).parse().unwrap(),
                                address: "[2001:db8::8]:7681".into(),
                                kind: custody_api::p2p::PeerKind::Lan,
                                complete: false,
                            },
                            // An address that does not parse is skipped, not an error.
                            PeerEntry {
                                device: device_id(9).parse().unwrap(),
                                address: "nowhere".into(),
                                kind: custody_api::p2p::PeerKind::Lan,
                                complete: false,
                            },
                        ],
                        refresh_after_seconds: 300,
                    })
                    .unwrap(),
                ),
            };
            let mut response = http::Response::new(Full::new(Bytes::from(answer.to_string())));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let server = HttpsServer::bind("127.0.0.1:0".parse().unwrap(), files).await.unwrap().spawn(service).unwrap();
    let base = format!("https://127.0.0.1:{}/", server.local_addr().port());

    // The agent's pinned client, with the device certificate.
    let (device_chain, device_key, _) = pki.leaf(&pki.device, CertKind::Device, &device_id(1));
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(device_chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let mut builder = TlsClientConfigBuilder::default()
        .root(pki.root.cert.der.clone())
        .pin(SpkiPin(pki.service.cert.spki_sha256))
        .client_identity(chain, PrivateKeyDer::from_pem_slice(device_key.as_bytes()).unwrap());
    for crl in pki.crls() {
        builder = builder.crl(crl);
    }
    let client = builder.build().unwrap().http_client(&ProxySettings::direct()).unwrap();
    let matching = MatchingClient::new(client, &base);

    let content = ContentId([0xab; 32]);
    let announcement = Announcement {
        content,
        mode: DownloadMode::Group,
        group: Some("site-a".into()),
        port: 7680,
        addresses: vec!["192.0.2.1/24".into()],
        complete: false,
        cache_server: false,
    };
    let (candidates, refresh) = matching.peers(&announcement).await.unwrap();
    assert_eq!(refresh, Duration::from_secs(300));
    assert_eq!(
        candidates,
        vec![
            PeerCandidate {
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 7680),
                kind: PeerKind::CacheServer,
                device: Some(device_id(7)),
            },
            PeerCandidate {
                addr: "[2001:db8::8]:7681".parse().unwrap(),
                kind: PeerKind::Lan,
                device: Some(device_id(8)),
            },
        ]
    );
    let (query, authenticated) = seen.lock().unwrap()[0].clone();
    assert!(authenticated, "the request carried the device certificate");
    assert_eq!(
        query,
        PeerQuery {
            content: content.to_string(),
            mode: 2,
            group: Some("site-a".into()),
            port: 7680,
            addresses: vec!["192.0.2.1/24".into()],
            complete: false,
            cache_server: false,
        }
    );

    // The service's refusal comes back with its message.
    let refused = Announcement { group: Some("unknown-group".into()), ..announcement.clone() };
    let error = matching.peers(&refused).await.unwrap_err();
    assert!(matches!(&error, Error::Matching { .. }), "{error}");
    assert!(error.to_string().contains("400") && error.to_string().contains("no such group"), "{error}");

    // Modes 0, 99 and 100 never ask.
    for mode in [DownloadMode::HttpOnly, DownloadMode::Simple, DownloadMode::Bypass] {
        let error = matching.peers(&Announcement { mode, ..announcement.clone() }).await.unwrap_err();
        assert!(matches!(error, Error::ModeTakesNoMatching(m) if m == mode), "{error}");
    }
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// Multicast DNS runs in a private network namespace holding only its own loopback interface, so that nothing is
/// sent to any other network. Needs root (CAP_SYS_ADMIN), as CI has.
#[test]
fn lan_discovery_finds_other_devices_by_mdns() {
    std::thread::spawn(|| {
        // SAFETY: `unshare` changes only this thread's network namespace; the threads it starts (the runtime's, the
        // mDNS daemon's) inherit it.
        let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(unshared, 0, "unshare(CLONE_NEWNET) needs root: {}", std::io::Error::last_os_error());
        loopback_up();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut first = LanDiscovery::new(&device_id(1)).unwrap();
            first
                .advertise(&LanAdvertisement {
                    device: device_id(1),
                    group: Some("site-a".into()),
                    port: 7681,
                    addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                })
                .unwrap();
            let mut second = LanDiscovery::new(&device_id(2)).unwrap();
            second
                .advertise(&LanAdvertisement {
                    device: device_id(2),
                    group: None,
                    port: 7682,
                    addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                })
                .unwrap();

            let mut browser = second.browse().unwrap();
            let found = tokio::time::timeout(Duration::from_secs(20), browser.next()).await.unwrap().unwrap();
            assert_eq!(found.device, device_id(1), "a device never finds itself");
            assert_eq!(found.group.as_deref(), Some("site-a"));
            assert_eq!(found.addresses, vec!["127.0.0.1:7681".parse::<SocketAddr>().unwrap()]);
            assert_eq!(
                found.candidates(),
                vec![PeerCandidate { addr: found.addresses[0], kind: PeerKind::Lan, device: Some(device_id(1)) }]
            );

            let mut browser = first.browse().unwrap();
            let found = tokio::time::timeout(Duration::from_secs(20), browser.next()).await.unwrap().unwrap();
            assert_eq!((found.device.as_str(), found.group.as_deref()), (device_id(2).as_str(), None));
        });
    })
    .join()
    .unwrap();
}

/// Sets the loopback interface of the current network namespace up.
fn loopback_up() {
    // SAFETY: a plain socket used for two interface ioctls on a zeroed `ifreq` naming "lo"; closed right after.
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(socket >= 0, "{}", std::io::Error::last_os_error());
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        assert_eq!(libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request), 0, "{}", std::io::Error::last_os_error());
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(socket, libc::SIOCSIFFLAGS, &mut request), 0, "{}", std::io::Error::last_os_error());
        libc::close(socket);
    }
}
