//! The agent against a real service on loopback: pinned HTTPS metadata and device API (custody-tls listener), a
//! signed repository (custody-repo), plain-HTTP content servers, and the real install engine.

mod support;

use std::sync::Arc;

use custody_agent::Agent;
use custody_agent::agent::{AgentEvent, Selection};
use custody_policy::Trigger;
use support::{ContentServer, PRODUCT, World};

const ID_A: &str = "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90";
const ID_B: &str = "9b2d7c1e-0a4f-4f43-8d1a-6c3e5b7a9f12";
const MIB: usize = 1 << 20;

fn open(world: &World) -> Agent {
    Agent::open(world.config()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_the_update_and_an_unchanged_repository_costs_two_small_requests() {
    let mut world = World::new().await;
    world.publish(ID_A, "2.0", 1024);
    let agent = open(&world);
    agent.recover().await.unwrap();
    let scan = agent.scan(None).await.unwrap();
    let needed: Vec<String> = scan.needed.iter().map(|u| u.id.to_string()).collect();
    assert_eq!(needed, [ID_A]);
    assert_eq!(scan.products, [PRODUCT]);
    assert_eq!(scan.needed[0].kind, "app");

    assert_eq!(world.received.lock().unwrap().inventories, 1);
    assert_eq!(world.received.lock().unwrap().events.len(), 1, "scan-finished for the update");

    // Nothing changed: the next scan asks for the next root (404) and the timestamp, and sends nothing.
    let requests_before = agent_metadata_requests(&world);
    let again = agent.scan(None).await.unwrap();
    assert_eq!(again.needed, scan.needed);
    assert_eq!(agent_metadata_requests(&world) - requests_before, 2, "root probe and timestamp only");
    assert_eq!(world.received.lock().unwrap().inventories, 1, "the same inventory is not sent again");
    assert_eq!(world.received.lock().unwrap().events.len(), 1, "an unchanged result is not reported again");
}

/// Requests the service answered under /metadata, counted by the test server.
fn agent_metadata_requests(world: &World) -> usize {
    world.received.lock().unwrap().metadata_requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_resumes_with_range_and_installs() {
    let mut world = World::new().await;
    let update = world.publish(ID_A, "2.0", 3 * MIB);
    world.content.state.lock().unwrap().cut_after = Some(MIB);
    let agent = open(&world);
    agent.recover().await.unwrap();

    let outcomes = agent.install(&Selection::All, Trigger::InstallNow).await.unwrap();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].result, "installed", "{outcomes:?}");
    assert_eq!(world.installed_version().as_deref(), Some("2.0"));

    let requests = world.content.requests();
    let (dir, name) = update.path.rsplit_once('/').unwrap();
    let path = format!("/targets/{dir}/{}.{name}", update.sha256);
    assert_eq!(requests, [(path.clone(), None), (path, Some(format!("bytes={MIB}-")))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_are_tried_in_order_unreachable_then_404_then_the_origin() {
    let mut world = World::new().await;
    world.publish(ID_A, "2.0", 64 * 1024);
    let missing = ContentServer::start(world.path("empty")).await;
    missing.state.lock().unwrap().not_found = true;
    world.write_config(&[world.dead_source.clone(), missing.base()], "");
    let agent = open(&world);

    let outcomes = agent.download(&Selection::Product(PRODUCT.parse().unwrap())).await.unwrap();
    assert_eq!(outcomes[0].result, "downloaded", "{outcomes:?}");
    assert_eq!(missing.requests().len(), 1, "the 404 source is asked once, then the next one");
    assert_eq!(world.content.requests().len(), 1);
    // Downloaded, verified, not installed.
    assert_eq!(world.installed_version(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_failing_is_an_error_naming_each() {
    let mut world = World::new().await;
    world.publish(ID_A, "2.0", 1024);
    world.content.state.lock().unwrap().not_found = true;
    let agent = open(&world);
    let outcomes = agent.download(&Selection::All).await.unwrap();
    assert_eq!(outcomes[0].result, "failed");
    let detail = outcomes[0].detail.clone().unwrap();
    assert!(detail.contains(&world.dead_source) && detail.contains("cannot connect"), "{detail}");
    assert!(detail.contains(&world.content.base()) && detail.contains("HTTP 404"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_changed_on_the_origin_is_refused_and_nothing_installs() {
    let mut world = World::new().await;
    let update = world.publish(ID_A, "2.0", 256 * 1024);
    // The origin now serves other bytes of the same length under the signed name.
    let file = world.repo.published_file(&update);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let agent = open(&world);
    let outcomes = agent.install(&Selection::All, Trigger::InstallNow).await.unwrap();
    assert_eq!(outcomes[0].result, "failed", "{outcomes:?}");
    let detail = outcomes[0].detail.clone().unwrap();
    assert!(detail.contains("does not match the signed hash"), "{detail}");
    assert_eq!(world.installed_version(), None, "nothing is installed");
    let leftovers: Vec<_> = std::fs::read_dir(world.path("state/downloads")).unwrap().collect();
    assert!(leftovers.is_empty(), "the refused bytes are not kept: {leftovers:?}");

    let received = world.received.lock().unwrap();
    let kinds: Vec<&str> = received.events.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"download-failed"), "{kinds:?}");
    assert!(!kinds.contains(&"install-succeeded"), "{kinds:?}");
    let failed = received.events.iter().find(|e| e.kind.as_str() == "download-failed").unwrap();
    assert!(failed.detail.starts_with("download: "), "{}", failed.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_download_whose_source_changed_meanwhile_is_refused() {
    let mut world = World::new().await;
    let update = world.publish(ID_A, "2.0", 2 * MIB);
    world.content.state.lock().unwrap().cut_after = Some(MIB / 2);
    let agent = open(&world);
    let scan = agent.scan(None).await.unwrap();
    assert_eq!(scan.needed.len(), 1);
    // The file changes in its second half: the first (cut) response carries signed bytes, the resumed one does not.
    let file = world.repo.published_file(&update);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let outcomes = agent.install(&Selection::All, Trigger::InstallNow).await.unwrap();
    assert_eq!(outcomes[0].result, "failed", "{outcomes:?}");
    assert_eq!(world.installed_version(), None);
    let ranges: Vec<Option<String>> = world.content.requests().into_iter().map(|(_, range)| range).collect();
    assert_eq!(ranges, [None, Some(format!("bytes={}-", MIB / 2))], "the download was resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_queue_on_disk_while_the_service_is_down_and_are_delivered_once() {
    let mut world = World::new().await;
    world.publish(ID_A, "2.0", 1024);
    world.received.lock().unwrap().fail_with = Some(503);
    {
        let agent = open(&world);
        let outcomes = agent.install(&Selection::All, Trigger::InstallNow).await.unwrap();
        assert_eq!(outcomes[0].result, "installed", "{outcomes:?}");
        let pending = agent.reporter().pending().unwrap();
        let kinds: Vec<&str> = pending.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["scan-finished", "download-started", "download-succeeded", "install-succeeded"]);
        assert!(world.received.lock().unwrap().events.is_empty());
    }
    // The agent stopped (a restart): the queue is on disk.
    let queued = std::fs::read_dir(world.path("state/reports")).unwrap().count();
    assert_eq!(queued, 4);

    world.received.lock().unwrap().fail_with = None;
    let agent = open(&world);
    assert!(agent.flush_reports().await);
    assert!(agent.flush_reports().await);
    assert!(agent.reporter().pending().unwrap().is_empty());
    let received = world.received.lock().unwrap();
    let kinds: Vec<&str> = received.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["scan-finished", "download-started", "download-succeeded", "install-succeeded"], "in order");
    assert_eq!(received.distinct_ids().len(), 4, "each once");
    assert_eq!(received.events[0].result.map(|r| r.as_str()), Some("needed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_stop_downloads_and_installs_until_released() {
    let mut world = World::new().await;
    world.publish(ID_A, "2.0", 1024);
    let agent = open(&world);
    let product: custody_catalog::ProductName = PRODUCT.parse().unwrap();
    agent.hold(custody_agent::local_api::HoldTarget::Product(product.clone()), true).await.unwrap();
    let outcomes = agent.install(&Selection::All, Trigger::InstallNow).await.unwrap();
    assert_eq!(outcomes[0].result, "held");
    assert_eq!(world.content.requests().len(), 0, "nothing downloaded");
    agent.hold(custody_agent::local_api::HoldTarget::Product(product), false).await.unwrap();
    let outcomes = agent.install(&Selection::All, Trigger::InstallNow).await.unwrap();
    assert_eq!(outcomes[0].result, "installed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_and_download_only_policies() {
    let mut world =
        World::with_agent_toml("[policy]\ndefault = \"notify\"\n[policy.kinds]\napp = \"download-only\"\n").await;
    world.publish(ID_A, "2.0", 1024);
    let agent = open(&world);
    let outcomes = agent.install(&Selection::All, Trigger::Scheduled).await.unwrap();
    assert_eq!(outcomes[0].result, "awaiting-approval", "app is download-only: {outcomes:?}");
    assert_eq!(world.installed_version(), None);
    // Asked explicitly, it installs from the verified download without fetching it again.
    let outcomes = agent.install(&Selection::Update(ID_A.parse().unwrap()), Trigger::InstallNow).await.unwrap();
    assert_eq!(outcomes[0].result, "installed", "{outcomes:?}");
    assert_eq!(world.content.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_update_supersedes_and_rollback_goes_back() {
    let mut world = World::new().await;
    world.publish(ID_A, "2.0", 1024);
    let agent = open(&world);
    assert_eq!(agent.install(&Selection::All, Trigger::InstallNow).await.unwrap()[0].result, "installed");
    let destination = world.destination.clone();
    world.repo.publish(ID_B, "3.0", 1024, &destination, serde_json::json!({"supersedes": [ID_A]}));
    let scan = agent.scan(None).await.unwrap();
    let needed: Vec<String> = scan.needed.iter().map(|u| u.id.to_string()).collect();
    assert_eq!(needed, [ID_B]);
    assert_eq!(agent.install(&Selection::All, Trigger::InstallNow).await.unwrap()[0].result, "installed");
    assert_eq!(world.installed_version().as_deref(), Some("3.0"));
    let history = agent.history(None).await.unwrap();
    assert_eq!(history.len(), 2);
    agent.rollback(&PRODUCT.parse().unwrap()).await.unwrap();
    assert_eq!(world.installed_version().as_deref(), Some("2.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_scans_at_start_installs_by_policy_and_stops_gracefully() {
    let mut world = World::new().await;
    world.publish(ID_A, "2.0", 1024);
    let agent = Arc::new(open(&world));
    let mut events = agent.subscribe();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(custody_agent::daemon::run(agent.clone(), async move {
        let _ = stopped.await;
    }));
    loop {
        match events.recv().await.unwrap() {
            AgentEvent::Installed { update, .. } => {
                assert_eq!(update.to_string(), ID_A);
                break;
            }
            AgentEvent::InstallFailed { error, .. } | AgentEvent::DownloadFailed { error, .. } => panic!("{error}"),
            _ => {}
        }
    }
    assert!(world.path("run/agent.sock").exists(), "the local API listens while the daemon runs");
    let _ = stop.send(());
    daemon.await.unwrap().unwrap();
    assert_eq!(world.installed_version().as_deref(), Some("2.0"));
    assert!(!world.path("run/agent.sock").exists(), "the socket is removed at shutdown");
    let status = agent.status();
    assert!(status.last_scan.is_some() && status.next_scan.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_wait_for_the_maintenance_window_downloads_do_not() {
    // A one-hour window three days from now (UTC, the configured zone): closed now, whatever the time of day.
    let day = jiff::Timestamp::now().to_zoned_datetime(jiff::tz::TimeZone::UTC).date() + jiff::Span::new().days(3);
    let name = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][day.weekday().to_monday_zero_offset() as usize];
    let policy = format!("[[policy.maintenance_windows]]\ndays = [\"{name}\"]\nstart = \"00:00\"\nduration = \"1h\"\n");
    let mut world = World::with_agent_toml(&policy).await;
    world.publish(ID_A, "2.0", 1024);
    let agent = open(&world);
    let outcomes = agent.install(&Selection::All, Trigger::Scheduled).await.unwrap();
    assert_eq!(outcomes[0].result, "waiting-for-window", "{outcomes:?}");
    let opens: jiff::Timestamp = outcomes[0].detail.as_deref().unwrap().parse().unwrap();
    assert_eq!(opens, day.to_zoned_datetime(jiff::tz::TimeZone::UTC).unwrap().timestamp());
    assert_eq!(agent.status().next_window, Some(opens));
    assert_eq!(world.content.requests().len(), 1, "downloaded already");
    assert_eq!(world.installed_version(), None);
    // Asked to install now, it does not wait.
    let outcomes = agent.install(&Selection::All, Trigger::InstallNow).await.unwrap();
    assert_eq!(outcomes[0].result, "installed");
}
