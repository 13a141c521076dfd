//! The content origin over its real plain HTTP listener: piece layers of content published with pieces (computed
//! by the service and checked against the signed root, or the publish refused), and the bandwidth limit.

mod support;

use std::time::{Duration, Instant};

use custody_catalog::pieces::PieceSize;
use custody_catalog::{ContentHasher, ContentInfo, UpdateDescription, UpdateEntry};
use reqwest::StatusCode;
use serde_json::Value;
use support::{Service, pseudo_random};

/// A catalog entry (`custom`) for `content`, prepared for peers with `piece_size`.
fn catalog_entry(content: &[u8], piece_size: u64) -> (UpdateEntry, Value) {
    let mut hasher = ContentHasher::new(Some(PieceSize::new(piece_size).unwrap()));
    hasher.update(content);
    let (info, _) = hasher.finish().unwrap();
    with_content(info)
}

fn with_content(info: ContentInfo) -> (UpdateEntry, Value) {
    let description: UpdateDescription = serde_json::from_value(serde_json::json!({
        "id": "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90", "revision": 1, "title": "peered", "description": "",
        "kind": "store-app", "product": "acme", "classification": "update", "version": "1",
        "release_date": "2025-06-10", "reboot": "never", "applicability": {}, "installer": {"handler": "store-app"},
    }))
    .unwrap();
    let entry = UpdateEntry::from_description(&description, info).unwrap();
    let custom = entry.to_custom_json();
    (entry, custom)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piece_layers_are_computed_checked_and_served() {
    let service = Service::start("").await;
    let content = pseudo_random(300_000, 1);
    let hex = service.upload(&content).await;
    let layer_url = service.content_url(&format!("/pieces/sha256/{hex}"));

    // A signed root that is not the tree of these bytes (here: of other bytes of the same length): refused, and
    // nothing is published or stored.
    let (_, other) = catalog_entry(&pseudo_random(300_000, 2), 32 * 1024);
    let (entry_ok, _) = catalog_entry(&content, 32 * 1024);
    let mut lying = entry_ok.content().clone();
    lying.pieces.as_mut().unwrap().root = UpdateEntry::parse(&other).unwrap().content().pieces.unwrap().root;
    let (_, lying) = with_content(lying);
    let before = service.published_targets().signed().version;
    let (status, body) = service.publish("acme/peered.bin", &content, Some(lying)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("acme/peered.bin") && message.contains("piece tree"), "{message}");
    assert_eq!(service.published_targets().signed().version, before, "nothing published");
    assert_eq!(service.plain.get(&layer_url).send().await.unwrap().status(), StatusCode::NOT_FOUND);

    // The right root: published, and the layer is served and verifies against the signed root.
    let (entry, custom) = catalog_entry(&content, 32 * 1024);
    let (status, body) = service.publish("acme/peered.bin", &content, Some(custom)).await;
    assert_eq!((status, body["result"].as_str()), (StatusCode::OK, Some("published")), "{body}");
    let response = service.plain.get(&layer_url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(response.headers()["cache-control"], "public, max-age=31536000, immutable");
    let layer = response.bytes().await.unwrap();
    let tree = entry.content().piece_tree().unwrap();
    let hashes = tree.verify_layer_bytes(&layer).unwrap();
    assert_eq!(hashes.piece_hashes().len(), 10, "300,000 bytes in 32 KiB pieces");
    hashes.verify_piece(3, &content[3 * 32768..4 * 32768]).unwrap();

    let head = service.plain.head(&layer_url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], layer.len().to_string().as_str());
    assert_eq!(head.headers()["etag"], etag.as_str());
    let cached = service.plain.get(&layer_url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    let unknown = service.content_url(&format!("/pieces/sha256/{}", "ab".repeat(32)));
    assert_eq!(service.plain.get(&unknown).send().await.unwrap().status(), StatusCode::NOT_FOUND);

    // One layer per content: the same bytes with another piece size are refused, the layer stays.
    let (_, bigger) = catalog_entry(&content, 64 * 1024);
    let (status, body) = service.publish("acme/peered-again.bin", &content, Some(bigger)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["message"].as_str().unwrap().contains("another piece size"), "{body}");
    assert_eq!(service.plain.get(&layer_url).send().await.unwrap().bytes().await.unwrap(), layer);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bandwidth_limited_origin_still_delivers_the_right_bytes() {
    // 256 KiB/s per connection, 384 KiB/s in total.
    let service = Service::start("[content.rate_limit]\nper_connection = 262144\ntotal = 393216\n").await;
    let content = pseudo_random(512 * 1024, 3);
    let hex = service.upload(&content).await;
    let url = service.content_url(&format!("/content/sha256/{hex}"));

    let started = Instant::now();
    let (whole, part) =
        tokio::join!(async { service.plain.get(&url).send().await.unwrap().bytes().await.unwrap() }, async {
            let response = service.plain.get(&url).header("range", "bytes=1000-99999").send().await.unwrap();
            assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
            response.bytes().await.unwrap()
        },);
    let elapsed = started.elapsed();
    assert_eq!(&whole[..], &content[..]);
    assert_eq!(&part[..], &content[1000..100_000]);
    // Sanity only: 611,000 bytes at 384 KiB/s in total take about 1.5 s; unlimited, a few milliseconds.
    assert!(elapsed > Duration::from_millis(500), "the limit was not applied: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
    service.stop().await;
}
