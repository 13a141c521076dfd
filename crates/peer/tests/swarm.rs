//! Downloads over real sockets on loopback: devices on their own 127.0.0.x addresses with real certificates, a real
//! HTTP origin, hostile peers speaking the wire protocol.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use custody_p2p::{Bitfield, DeviceResources, DownloadMode};
use custody_peer::{PeerCache, PeerContext, PeerDownload};
use support::{Content, Device, Hostile, HostilePeer, Origin, Pki, device_id, download_config};

const KIB: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_peers_end_with_the_same_verified_file_mostly_from_each_other() {
    let pki = Pki::new();
    let content = Content::new(4096 * KIB, 64 * 1024, 1);
    // A slow origin (per response), so that what one device fetched travels between the devices.
    let origin = Origin::start(vec![content.clone()], Some(128 * 1024)).await;
    let mut devices = Vec::new();
    for octet in 11..=14 {
        devices.push(Device::start(&pki, octet).await);
    }
    let mut runs = tokio::task::JoinSet::new();
    for (index, device) in devices.iter().enumerate() {
        let candidates = devices.iter().enumerate().filter(|(i, _)| *i != index).map(|(_, d)| d.candidate()).collect();
        let download = device.download(&content, &origin, download_config(DownloadMode::Lan));
        runs.spawn(async move { download.run(candidates).await });
    }
    let mut outcomes = Vec::new();
    while let Some(outcome) = runs.join_next().await {
        outcomes.push(outcome.unwrap().unwrap());
    }
    let len = content.payload.len() as u64;
    let (mut from_peers, mut from_http, mut to_peers) = (0, 0, 0);
    for outcome in &outcomes {
        assert_eq!(std::fs::read(outcome.artifact.path()).unwrap(), content.payload);
        assert_eq!(outcome.stats.total(), len, "{:?}", outcome.stats);
        assert!(outcome.peers.iter().all(|peer| !peer.banned), "{:?}", outcome.peers);
        from_peers += outcome.stats.from_lan_peers;
        from_http += outcome.stats.from_http;
        to_peers += outcome.stats.to_peers;
    }
    assert_eq!(from_peers + from_http, 4 * len);
    let all: Vec<_> = outcomes.iter().map(|outcome| outcome.stats).collect();
    assert!(from_peers > from_http, "most bytes from peers: {from_peers} from peers, {from_http} over HTTP: {all:?}");
    assert!(to_peers > 0);
    assert!(origin.served() < 2 * len, "the origin sent {} bytes for a {len}-byte file", origin.served());
    // Every device keeps the complete content for the next ones.
    for device in &devices {
        assert!(device.cache.get(&content.id).unwrap().is_complete());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_banned_and_nothing_corrupt_is_written() {
    let pki = Pki::new();
    // Small pieces, so that every peer gets requests at once (pipelines of 4 to 5 peers hold 20 of 64 pieces).
    let content = Arc::new(Content::new(1024 * KIB, 16 * 1024, 2));
    let other = Arc::new(Content::new(1024 * KIB, 16 * 1024, 3));
    let fast_origin = Origin::start(vec![(*content).clone()], None).await;
    // The downloader's origin is slow, so that peers (honest or not) are asked for most pieces, and the honest peer
    // uploads slowly, so that the silent peer's requests time out before the download is done.
    let origin = Origin::start(vec![(*content).clone()], Some(64 * 1024)).await;
    let honest = Device::start_with(pki.device_tls(&device_id(21)), 21, 256 * 1024).await;
    honest.seed(&content, &fast_origin).await;
    let hostile = [
        HostilePeer::start(&pki, 22, content.clone(), Hostile::Corrupt).await,
        HostilePeer::start(&pki, 23, content.clone(), Hostile::OtherContent(other.clone())).await,
        HostilePeer::start(&pki, 24, content.clone(), Hostile::WrongLengths).await,
        HostilePeer::start(&pki, 25, content.clone(), Hostile::Silent).await,
    ];
    let mute = HostilePeer::start(&pki, 26, content.clone(), Hostile::Mute).await;
    let downloader = Device::start(&pki, 20).await;
    let mut candidates: Vec<_> = hostile.iter().map(HostilePeer::candidate).collect();
    candidates.push(mute.candidate());
    candidates.push(honest.candidate());

    let config = download_config(DownloadMode::Lan);
    let max_attempts = config.max_attempts as usize;
    let outcome = downloader.download(&content, &origin, config).run(candidates).await.unwrap();

    assert_eq!(std::fs::read(outcome.artifact.path()).unwrap(), content.payload);
    let entry = downloader.cache.get(&content.id).unwrap();
    assert!(entry.is_complete());
    for peer in &hostile {
        let report = outcome.peers.iter().find(|r| r.device == peer.device).expect("hostile peer connected");
        assert!(report.banned, "{report:?}");
        assert_eq!(report.received, 0, "{report:?}");
        assert_eq!(peer.accepted(), 1, "{} was connected again after its ban", peer.device);
    }
    let honest_report = outcome.peers.iter().find(|r| r.device == honest.id).unwrap();
    assert!(!honest_report.banned && honest_report.received > 0, "{honest_report:?}");
    assert!(outcome.counters.corrupt_pieces >= 6, "{:?}", outcome.counters);
    assert!(outcome.counters.unexpected_pieces >= 1, "{:?}", outcome.counters);
    // The mute peer never completes a handshake: tried a bounded number of times, never a peer of the download.
    assert!((1..=max_attempts).contains(&mute.accepted()), "{}", mute.accepted());
    assert!(outcome.peers.iter().all(|r| r.device != mute.device));
    assert!(outcome.connect_failures.iter().any(|f| f.contains("timed out")), "{:?}", outcome.connect_failures);
    assert_eq!(outcome.stats.total(), content.payload.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_another_ca_or_intermediate_are_refused_at_the_handshake() {
    let pki = Pki::new();
    let content = Content::new(1024 * KIB, 64 * 1024, 4);
    let second = Content::new(1024 * KIB, 64 * 1024, 5);
    let fast_origin = Origin::start(vec![content.clone(), second.clone()], None).await;
    // Downloads take a second or so: time for every connection attempt to be refused.
    let origin = Origin::start(vec![content.clone(), second.clone()], Some(256 * 1024)).await;
    // Both have the content and would serve it, but their certificates are not of the pinned device intermediate.
    let stranger = Device::start_with(pki.tls(&pki.foreign_device, &device_id(31)), 31, 0).await;
    let sidestep = Device::start_with(pki.tls(&pki.other_device, &device_id(32)), 32, 0).await;
    stranger.seed(&content, &fast_origin).await;
    sidestep.seed(&content, &fast_origin).await;
    let honest = Device::start(&pki, 30).await;
    honest.seed(&second, &fast_origin).await;

    let outcome = honest
        .download(&content, &origin, download_config(DownloadMode::Lan))
        .run(vec![stranger.candidate(), sidestep.candidate()])
        .await
        .unwrap();
    assert_eq!(std::fs::read(outcome.artifact.path()).unwrap(), content.payload);
    assert!(outcome.peers.is_empty(), "{:?}", outcome.peers);
    assert_eq!(outcome.stats.from_http, content.payload.len() as u64);
    let failures = outcome.connect_failures.join("\n");
    assert!(failures.contains("does not lead to the custody root"), "{failures}");
    assert!(failures.contains("not issued through the pinned device intermediate"), "{failures}");
    for device in [&stranger, &sidestep] {
        let stats = device.node.stats();
        assert_eq!(stats.sessions, 0, "{stats:?}");
    }

    // The other way round: the honest device's listener refuses them too.
    for device in [&stranger, &sidestep] {
        let outcome = device
            .download(&second, &origin, download_config(DownloadMode::Lan))
            .run(vec![honest.candidate()])
            .await
            .unwrap();
        assert_eq!(std::fs::read(outcome.artifact.path()).unwrap(), second.payload);
        assert!(outcome.peers.is_empty());
    }
    let stats = honest.node.stats();
    assert_eq!((stats.sessions, stats.failed_handshakes), (0, 2), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_0_and_99_open_no_peer_connection() {
    let pki = Pki::new();
    let content = Content::new(1024 * KIB, 64 * 1024, 6);
    let origin = Origin::start(vec![content.clone()], Some(1024 * 1024)).await;
    let seeder = Device::start(&pki, 41).await;
    seeder.seed(&content, &origin).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.42:0").await.unwrap();
    let raw = custody_peer::PeerCandidate {
        addr: listener.local_addr().unwrap(),
        kind: custody_p2p::PeerKind::Lan,
        device: None,
    };
    let raw_accepts = Arc::new(AtomicUsize::new(0));
    let counter = raw_accepts.clone();
    let raw_task = tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });

    let http_only = Device::start(&pki, 40).await;
    let outcome = http_only
        .download(&content, &origin, download_config(DownloadMode::HttpOnly))
        .run(vec![seeder.candidate(), raw.clone()])
        .await
        .unwrap();
    assert_eq!(std::fs::read(outcome.artifact.path()).unwrap(), content.payload);
    assert_eq!(outcome.stats.from_http, content.payload.len() as u64);
    assert!(outcome.peers.is_empty() && outcome.connect_failures.is_empty());
    assert!(outcome.peering.as_deref().unwrap_or_default().contains("0 (http-only)"), "{:?}", outcome.peering);
    assert_eq!(seeder.node.stats().accepted, 0);
    assert_eq!(raw_accepts.load(Ordering::Relaxed), 0);

    // Mode 99 (simple): Delivery Optimization's HTTP-only mode without the matching service; peers it is given are
    // not contacted either.
    let simple = Device::start(&pki, 43).await;
    let outcome = simple
        .download(&content, &origin, download_config(DownloadMode::Simple))
        .run(vec![seeder.candidate(), raw.clone()])
        .await
        .unwrap();
    assert_eq!(std::fs::read(outcome.artifact.path()).unwrap(), content.payload);
    assert_eq!(outcome.stats.from_http, content.payload.len() as u64);
    assert!(outcome.peers.is_empty() && outcome.connect_failures.is_empty());
    assert_eq!(seeder.node.stats().accepted, 0);
    assert_eq!(raw_accepts.load(Ordering::Relaxed), 0);
    raw_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_from_verified_pieces() {
    let pki = Pki::new();
    let content = Content::new(2048 * KIB, 64 * 1024, 7);
    let piece_size = 64 * 1024u64;
    let origin = Origin::start(vec![content.clone()], Some(256 * 1024)).await;
    let device = Device::start(&pki, 50).await;
    let mut config = download_config(DownloadMode::HttpOnly);
    config.save_every = 2;
    config.http_parallel = 2;

    let download = device.download(&content, &origin, config.clone());
    let running = tokio::spawn(async move { download.run(vec![]).await });
    let sidecar = device.cache.dir().join(format!("{}.have", content.id));
    let claimed = loop {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let Ok(bytes) = std::fs::read(&sidecar) else { continue };
        let have = Bitfield::from_bytes(content.piece_count(), &bytes).unwrap();
        if have.count() >= 8 {
            running.abort();
            break have;
        }
    };
    assert!(running.await.unwrap_err().is_cancelled());
    // Read the sidecar again: a save may have landed between the read and the abort.
    let claimed = match std::fs::read(&sidecar) {
        Ok(bytes) => Bitfield::from_bytes(content.piece_count(), &bytes).unwrap(),
        Err(_) => claimed,
    };
    assert!(claimed.count() < content.piece_count(), "the download was not interrupted");

    // One piece the sidecar claims is damaged on disk while the agent is down.
    let damaged = claimed.iter_set().next().unwrap();
    let part = device.cache.dir().join(format!("{}.part", content.id));
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[damaged as usize * piece_size as usize + 5] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();

    // The agent restarts: a new cache from the same directory.
    let cache = PeerCache::open(device.cache.dir()).unwrap();
    let context = PeerContext { cache: cache.clone(), ..device.context() };
    let before = origin.served();
    let outcome = PeerDownload::new(device.job(&content, &origin), context, config).run(vec![]).await.unwrap();
    assert_eq!(std::fs::read(outcome.artifact.path()).unwrap(), content.payload);
    assert_eq!(outcome.resumed_pieces, claimed.count() - 1);
    let len = content.payload.len() as u64;
    let fetched = origin.served() - before;
    let expected = len - u64::from(claimed.count() - 1) * piece_size;
    assert_eq!(fetched, expected, "only the missing and the damaged pieces are fetched again");
    assert_eq!(outcome.stats.from_http, expected);
    assert!(cache.get(&content.id).unwrap().is_complete());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_battery_uploads_nothing() {
    let pki = Pki::new();
    let content = Content::new(1024 * KIB, 64 * 1024, 8);
    let fast_origin = Origin::start(vec![content.clone()], None).await;
    let origin = Origin::start(vec![content.clone()], Some(256 * 1024)).await;
    let seeder = Device::start(&pki, 61).await;
    seeder.seed(&content, &fast_origin).await;
    // The default policy uploads nothing on battery.
    seeder.gate.set_resources(DeviceResources { on_battery: true, battery_percent: Some(90), ..Default::default() });
    let downloader = Device::start(&pki, 60).await;
    let outcome = downloader
        .download(&content, &origin, download_config(DownloadMode::Lan))
        .run(vec![seeder.candidate()])
        .await
        .unwrap();
    assert_eq!(std::fs::read(outcome.artifact.path()).unwrap(), content.payload);
    assert_eq!(outcome.stats.from_http, content.payload.len() as u64);
    assert_eq!(seeder.gate.uploaded(), 0);
    let report = outcome.peers.iter().find(|r| r.device == seeder.id).unwrap();
    assert!(report.closed.as_deref().unwrap_or_default().contains("Busy"), "{report:?}");

    // Back on mains power, it serves again.
    seeder.gate.set_resources(DeviceResources::default());
    let other = Device::start(&pki, 62).await;
    let outcome = other
        .download(&content, &origin, download_config(DownloadMode::Lan))
        .run(vec![seeder.candidate()])
        .await
        .unwrap();
    assert!(outcome.stats.from_lan_peers > 0, "{:?}", outcome.stats);
    assert!(seeder.gate.uploaded() > 0);
}
