//! The cache-server role end to end (issue 5, point 7; Delivery Optimization's Connected Cache): a real
//! `custody server` whose content origin is bandwidth-limited, an update published with a piece tree, a cache server
//! (`custody agent run` with `[p2p] cache_server = true`) that holds nothing, and three devices of its group (download
//! mode 2), each a `custody agent run` daemon with its own certificate on its own loopback address. The three
//! download the update at once: the cache server resolves the content id they name to the signed target through its
//! own TUF client, fetches it over HTTP once and serves the pieces while they arrive. Every device ends with the
//! verified file, most of its bytes from the cache server, and the origin serves the content about once. A device
//! naming content that is no signed target is refused.

mod service;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use service::{Running, admin, agent, download_all, enroll_and_run, publish_os_image, sha256_hex, succeeded};

const DEVICES: usize = 3;
const SIZE: usize = 16 << 20;
const PIECE: usize = 256 << 10;
/// The origin serves at most this many bytes per second in all: three HTTP-only downloads would take 12 s.
const ORIGIN_RATE: usize = 4 << 20;
const PRODUCT: &str = "cache-os";
const OS_FAMILY: &str = "custody-cache";
const GROUP: &str = "site-a";
/// The cache server listens on 127.0.0.40, the devices on 127.0.0.41 to .43.
const CACHE_OCTET: usize = 40;

/// A device directory with `agent.toml`: `[agent]` (its `products`), `[policy]` notify (the daemon's own scans
/// download nothing), `[p2p]` in group mode on 127.0.0.`octet`, and `extra_p2p` (the cache server's keys).
fn write_device(
    data: &Path,
    dir: &Path,
    name: &str,
    octet: usize,
    http: &str,
    products: &str,
    extra_p2p: &str,
) -> PathBuf {
    let ip = format!("127.0.0.{octet}");
    let agent = format!(
        "[proxy]\nfrom_environment = false\n\n\
         [agent]\nstate_dir = \"state\"\ntrusted_root = \"{{root}}\"\norigin_url = \"{http}/targets/\"\n\
         products = [{products}]\nos_release = \"os-release\"\ntime_zone = \"UTC\"\n\n\
         [agent.local_api]\nsocket = \"agent.sock\"\n\n[policy]\ndefault = \"notify\"\n\n\
         [p2p]\nlisten = \"{ip}:7680\"\nadvertise = [\"{ip}/8\"]\nmdns = false\n{extra_p2p}\n\
         [p2p.policy]\ndownload_mode = 2\ngroup = \"{GROUP}\"\nmin_file_size = 0\nmin_ram = 0\nmin_disk = 0\n"
    );
    service::write_device(data, dir, name, OS_FAMILY, &agent)
}

fn status(device: &Path) -> Value {
    succeeded(&agent(device, &["status", "--json"]), "status")["result"].clone()
}

/// The service's `custody_content_bytes_served_total` (bytes of content its origin sent), from `/metrics`.
fn origin_bytes_served(data: &Path, https: &str) -> f64 {
    let transport = custody_tls::TransportConfig::load(&data.join("client/custody.toml")).unwrap();
    let client = transport.tls_client().unwrap().http_client(&custody_tls::ProxySettings::direct()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let metrics = runtime.block_on(async {
        client.get(format!("{}/metrics", https.trim_end_matches('/'))).send().await.unwrap().text().await.unwrap()
    });
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("custody_content_bytes_served_total "))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Connects to the cache server with `device`'s certificate (a device of its group), names `content` in a version-1
/// handshake written by hand from docs/p2p-protocol.md, and returns the frame the cache server answers with.
fn ask_for_content(device: &Path, cache: SocketAddr, content: [u8; 32]) -> Vec<u8> {
    let config = custody_agent::AgentConfig::load(&device.join("agent.toml")).unwrap();
    let tls = config.peer_tls().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(cache).await.unwrap();
        let mut stream =
            tls.connector().connect(custody_tls::PeerTlsConfig::server_name(cache.ip()), tcp).await.unwrap();
        // Frame: length (type + payload, u32 BE), type 0 (Handshake), version 1 (u16), content, piece count 1 (u32).
        let mut frame = vec![0, 0, 0, 39, 0, 0, 1];
        frame.extend_from_slice(&content);
        frame.extend_from_slice(&1u32.to_be_bytes());
        // Bitfield (type 2) of one piece, none held.
        frame.extend_from_slice(&[0, 0, 0, 2, 2, 0]);
        stream.write_all(&frame).await.unwrap();
        stream.flush().await.unwrap();
        let mut answer = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut answer)).await.unwrap().unwrap();
        answer.to_vec()
    })
}

#[test]
fn a_cache_server_fetches_once_for_its_group_and_refuses_unsigned_content() {
    let tmp = tempfile::tempdir().unwrap();
    let kept = std::env::var("CACHE_SERVER_KEEP").ok().map(PathBuf::from);
    if let Some(keep) = &kept {
        std::fs::create_dir_all(keep).unwrap();
    }
    let dir = kept.as_deref().unwrap_or(tmp.path());
    let config = format!(
        "[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n\n[content.rate_limit]\ntotal = {ORIGIN_RATE}\n"
    );
    let (server, https, http) = service::spawn(dir, &config);
    let _server = Running(server);
    let http = http.trim_end_matches('/').to_owned();
    let data = dir.join("data");
    let payload: Vec<u8> = (0..SIZE as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    publish_os_image(&data, dir, PRODUCT, OS_FAMILY, &payload, PIECE);
    let uses = (DEVICES + 1).to_string();
    let token =
        admin(&data, &["admin", "enrollment-tokens", "create", "cache", "--uses", &uses, "--group", GROUP, "--json"]);
    let token = token["token"].as_str().unwrap().to_owned();

    // The cache server: no product of its own, it caches PRODUCT for its group; it holds nothing.
    let product = format!("\"{PRODUCT}\"");
    let cache_extra = format!("cache_server = true\ncache_products = [{product}]\n");
    let cache = write_device(&data, dir, "cache-server", CACHE_OCTET, &http, "", &cache_extra);
    let mut daemons = vec![enroll_and_run(&cache, &token)];
    let mut devices = Vec::new();
    for index in 1..=DEVICES {
        let device = write_device(&data, dir, &format!("device-{index}"), CACHE_OCTET + index, &http, &product, "");
        daemons.push(enroll_and_run(&device, &token));
        devices.push(device);
    }
    // Wait (not a timing assertion) until every daemon listens and the cache server indexed the signed catalog
    // (which also announced it to the service's peer matching as its group's cache server).
    let deadline = Instant::now() + Duration::from_secs(120);
    while !devices.iter().chain([&cache]).all(|device| device.join("agent.sock").exists())
        || status(&cache)["cache_server"]["indexed"].as_u64() != Some(1)
    {
        assert!(Instant::now() < deadline, "the daemons did not all start: {}", status(&cache));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !cache.join("state/peer-cache").read_dir().unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "data"))
    );
    for device in &devices {
        let scan = agent(device, &["scan", "--json"]);
        assert_eq!(succeeded(&scan, "scan")["result"]["needed"][0]["product"], PRODUCT);
    }
    let origin_before = origin_bytes_served(&data, &https);

    download_all(&devices);

    let expected = sha256_hex(&payload);
    let total = (DEVICES * SIZE) as u64;
    let (mut from_cache_server, mut from_http) = (0u64, 0u64);
    for device in &devices {
        let cached = device.join(format!("state/peer-cache/{expected}.data"));
        let bytes = std::fs::read(&cached).unwrap_or_else(|e| panic!("{}: {e}", cached.display()));
        assert_eq!(sha256_hex(&bytes), expected, "{}", device.display());
        let bytes = &status(device)["delivery"]["bytes"];
        assert!(bytes["from_cache_server"].as_u64().unwrap() > 0, "{}: {bytes}", device.display());
        from_cache_server += bytes["from_cache_server"].as_u64().unwrap();
        from_http += bytes["from_http"].as_u64().unwrap();
    }
    assert!(
        from_cache_server > total / 2,
        "most bytes came from the cache server: {from_cache_server} of {total} (HTTP {from_http})"
    );

    // One fetch for the three devices, verified whole and kept; the origin sent the content about once.
    let cache_status = status(&cache)["cache_server"].clone();
    assert_eq!(cache_status["fetches_started"], 1, "{cache_status}");
    assert_eq!(cache_status["fetches_completed"], 1, "{cache_status}");
    assert!(cache_status["bytes_from_http"].as_u64().unwrap() >= SIZE as u64, "{cache_status}");
    assert!(cache_status["bytes_served"].as_u64().unwrap() >= from_cache_server, "{cache_status}");
    let text = agent(&cache, &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("Cache server for {PRODUCT}")) && text.contains("1 completed"), "{text}");
    let kept = std::fs::read(cache.join(format!("state/peer-cache/{expected}.data"))).unwrap();
    assert_eq!(sha256_hex(&kept), expected);
    let origin = origin_bytes_served(&data, &https) - origin_before;
    assert!(
        origin < 1.5 * SIZE as f64,
        "the origin served {origin} bytes for {DEVICES} devices of a {SIZE}-byte update (HTTP-only: {total})"
    );

    // A device of the group naming content that is no signed target: Goodbye(UnknownContent), and a log line.
    let cache_addr = SocketAddr::new(IpAddr::from([127, 0, 0, CACHE_OCTET as u8]), 7680);
    let answer = ask_for_content(&devices[0], cache_addr, [0x5a; 32]);
    assert_eq!(answer, [0, 0, 0, 2, 10, 4], "Goodbye(UnknownContent)");
    let cache_status = status(&cache)["cache_server"].clone();
    assert_eq!(cache_status["refused"], 1, "{cache_status}");
    assert_eq!(cache_status["fetches_started"], 1, "nothing is fetched for it: {cache_status}");
    assert_eq!(cache_status["fetches_failed"], 0, "{cache_status}");
    let log = std::fs::read_to_string(cache.join("daemon.log")).unwrap();
    assert!(
        log.contains("cache server: connection refused") && log.contains(&hex::encode([0x5a; 32])),
        "the cache server logs the refusal:\n{log}"
    );
    drop(daemons);
}
