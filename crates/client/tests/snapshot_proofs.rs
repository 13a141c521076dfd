//! Scans that prove single snapshot entries against the timestamp's Merkle commitment instead of downloading the
//! whole snapshot: what a device with a few products of a large catalog fetches.

mod support;

use std::time::Duration;

use custody_client::{Error, HttpFetcher, RoleLimits, Updater, UpdaterConfig};
use support::{TestRepo, TestServer};

fn updater(dir: &std::path::Path, server: &TestServer, snapshot_proofs: bool) -> Updater<HttpFetcher> {
    let fetcher = HttpFetcher::new(
        custody_tls::plain_http_client(&custody_tls::ProxySettings::direct()).unwrap(),
        Duration::from_secs(10),
    );
    let config = UpdaterConfig {
        metadata_dir: dir.to_owned(),
        metadata_url: format!("{}/metadata", server.base),
        limits: RoleLimits::default(),
        snapshot_proofs,
    };
    Updater::new(config, fetcher, jiff::Timestamp::now()).unwrap()
}

/// A catalog of three products, each delegated from top-level targets; the device has product "alpha".
async fn catalog() -> (tempfile::TempDir, TestRepo, TestServer, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = TestRepo::new(tmp.path());
    repo.merkle = true;
    for product in ["alpha", "beta", "gamma"] {
        repo.delegate("targets", product, &[&format!("{product}/*")], true);
        for i in 0..3 {
            repo.add_target(product, &format!("{product}/{product}-{i}.tar.zst"), format!("{product} {i}").as_bytes());
        }
    }
    repo.publish(&["alpha", "beta", "gamma", "targets"]);
    let server = TestServer::start(tmp.path().to_owned()).await;
    let device = tempfile::tempdir().unwrap();
    std::fs::write(device.path().join("root.json"), repo.root_bytes()).unwrap();
    (tmp, repo, server, device)
}

#[tokio::test]
async fn first_scan_fetches_only_the_products_the_device_has() {
    let (_tmp, repo, server, device) = catalog().await;
    let v = repo.snapshot.version;
    let mut client = updater(device.path(), &server, true);
    let alpha = client.list_targets("alpha").await.unwrap();
    assert_eq!(alpha.len(), 3);
    assert!(alpha.iter().all(|t| t.role() == "alpha" && t.path().starts_with("alpha/")));
    assert_eq!(
        server.take_requests(),
        [
            "/metadata/2.root.json".to_owned(),
            "/metadata/timestamp.json".to_owned(),
            format!("/metadata/merkle/{v}/targets.json"),
            "/metadata/2.targets.json".to_owned(),
            format!("/metadata/merkle/{v}/alpha.json"),
            "/metadata/1.alpha.json".to_owned(),
        ]
    );
}

#[tokio::test]
async fn publish_to_another_product_costs_the_timestamp_and_two_proofs() {
    let (_tmp, mut repo, server, device) = catalog().await;
    updater(device.path(), &server, true).list_targets("alpha").await.unwrap();
    server.take_requests();

    repo.add_target("beta", "beta/beta-9.tar.zst", b"beta 9");
    repo.publish(&["beta"]);
    let v = repo.snapshot.version;
    let alpha = updater(device.path(), &server, true).list_targets("alpha").await.unwrap();
    assert_eq!(alpha.len(), 3);
    assert_eq!(
        server.take_requests(),
        [
            "/metadata/2.root.json".to_owned(),
            "/metadata/timestamp.json".to_owned(),
            format!("/metadata/merkle/{v}/targets.json"),
            format!("/metadata/merkle/{v}/alpha.json"),
        ]
    );

    // Nothing changed since: the timestamp alone (after the root probe), and the stored proofs stay current.
    updater(device.path(), &server, true).list_targets("alpha").await.unwrap();
    assert_eq!(server.take_requests(), ["/metadata/2.root.json", "/metadata/timestamp.json"]);
}

#[tokio::test]
async fn a_product_update_is_seen() {
    let (_tmp, mut repo, server, device) = catalog().await;
    updater(device.path(), &server, true).list_targets("alpha").await.unwrap();
    repo.add_target("alpha", "alpha/alpha-new.tar.zst", b"alpha new");
    repo.publish(&["alpha"]);
    let alpha = updater(device.path(), &server, true).list_targets("alpha").await.unwrap();
    assert_eq!(alpha.len(), 4);
}

#[tokio::test]
async fn proofs_of_an_older_tree_or_an_altered_version_are_refused() {
    let (tmp, mut repo, server, device) = catalog().await;
    updater(device.path(), &server, true).list_targets("alpha").await.unwrap();
    let old_v = repo.snapshot.version;
    repo.add_target("alpha", "alpha/alpha-new.tar.zst", b"alpha new");
    repo.publish(&["alpha"]);
    let v = repo.snapshot.version;
    let proof_file =
        |v: u64| tmp.path().join("metadata").join(custody_tuf::snapshot_merkle::proof_path(v, "alpha.json"));

    // A mirror replays the proof of the previous tree.
    let current = std::fs::read(proof_file(v)).unwrap();
    std::fs::write(proof_file(v), std::fs::read(proof_file(old_v)).unwrap()).unwrap();
    let err = updater(device.path(), &server, true).list_targets("alpha").await.unwrap_err();
    assert!(matches!(err, Error::Metadata(custody_tuf::Error::VersionMismatch { .. })), "{err:?}");

    // A mirror edits the version inside the current proof.
    let mut forged: serde_json::Value = serde_json::from_slice(&current).unwrap();
    forged["meta"]["version"] = serde_json::json!(1);
    std::fs::write(proof_file(v), serde_json::to_vec(&forged).unwrap()).unwrap();
    let err = updater(device.path(), &server, true).list_targets("alpha").await.unwrap_err();
    assert!(matches!(err, Error::Metadata(custody_tuf::Error::HashMismatch { .. })), "{err:?}");

    std::fs::write(proof_file(v), current).unwrap();
    assert_eq!(updater(device.path(), &server, true).list_targets("alpha").await.unwrap().len(), 4);
}

#[tokio::test]
async fn standard_clients_still_read_the_full_snapshot() {
    let (_tmp, repo, server, device) = catalog().await;
    let v = repo.snapshot.version;
    let mut client = updater(device.path(), &server, false);
    assert_eq!(client.list_targets("gamma").await.unwrap().len(), 3);
    let requests = server.take_requests();
    assert!(requests.contains(&format!("/metadata/{v}.snapshot.json")), "{requests:?}");
    assert!(!requests.iter().any(|r| r.contains("merkle")), "{requests:?}");
}

#[tokio::test]
async fn a_role_version_below_one_proven_before_is_a_rollback() {
    let (_tmp, mut repo, server, device) = catalog().await;
    repo.add_target("alpha", "alpha/alpha-new.tar.zst", b"alpha new");
    repo.publish(&["alpha"]);
    assert_eq!(updater(device.path(), &server, true).list_targets("alpha").await.unwrap().len(), 4);

    // Holders of the online keys publish a snapshot (and tree) naming the previous alpha version.
    repo.snapshot.meta.get_mut("alpha.json").unwrap().version -= 1;
    repo.publish(&[]);
    let err = updater(device.path(), &server, true).list_targets("alpha").await.unwrap_err();
    assert!(matches!(err, Error::Metadata(custody_tuf::Error::Rollback { .. })), "{err:?}");
}
