//! Every state change the agent makes is reported to the service (the test service of tests/support checks each
//! batch with custody-api's `EventBatch::validate`, as the real one does): holds, failed scans, rollbacks on request
//! and after a failed health check, uninstalls, recovery after a crash, OS images confirmed or given up after the
//! reboot, and where downloads came from. Local subscribers see the same changes.

mod support;

use custody_agent::Agent;
use custody_agent::agent::{AgentEvent, Selection};
use custody_agent::local_api::HoldTarget;
use custody_api::device::{DeliveryStats, Event, EventType, Operation, RecoveryOutcome, RollbackReason};
use custody_catalog::ProductName;
use custody_policy::Trigger;
use serde_json::json;
use support::{PRODUCT, World};

const ID_A: &str = "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90";
const ID_B: &str = "9b2d7c1e-0a4f-4f43-8d1a-6c3e5b7a9f12";

fn open(world: &World) -> Agent {
    Agent::open(world.config()).unwrap()
}

fn product() -> ProductName {
    PRODUCT.parse().unwrap()
}

/// The events the service received so far, and forgets them.
fn take_events(world: &World) -> Vec<Event> {
    std::mem::take(&mut world.received.lock().unwrap().events)
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

/// Adds `lines` to the `[agent]` section of the world's configuration.
fn agent_settings(world: &World, lines: &str) {
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(&world.config, text.replacen("[agent]\n", &format!("[agent]\n{lines}\n"), 1)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_failed_scans_rollbacks_and_uninstalls_are_reported() {
    let mut world = World::new().await;
    let first = world.publish(ID_A, "2.0", 64 * 1024);
    let agent = open(&world);
    agent.recover().await.unwrap();
    let mut local = agent.subscribe();

    // A hold is reported once: holding what is held changes nothing.
    agent.hold(HoldTarget::Product(product()), true).await.unwrap();
    agent.hold(HoldTarget::Product(product()), true).await.unwrap();
    agent.hold(HoldTarget::Product(product()), false).await.unwrap();
    agent.hold(HoldTarget::Update(ID_B.parse().unwrap()), true).await.unwrap();
    let events = take_events(&world);
    assert_eq!(kinds(&events), ["held", "unheld", "held"]);
    assert_eq!(events[0].product.as_deref(), Some(PRODUCT));
    let held = events[2].update.unwrap();
    assert_eq!((held.id.to_string(), held.revision), (ID_B.to_owned(), 0), "a hold covers every revision");
    assert_eq!(local.recv().await.unwrap(), AgentEvent::Held { update: None, product: Some(PRODUCT.into()) });

    // A scan that cannot refresh the metadata is reported with its error code.
    let timestamp = world.repo.metadata_dir().join("timestamp.json");
    std::fs::rename(&timestamp, timestamp.with_extension("away")).unwrap();
    assert!(agent.scan(None).await.is_err());
    std::fs::rename(timestamp.with_extension("away"), &timestamp).unwrap();
    agent.flush_reports().await;
    let events = take_events(&world);
    assert_eq!(kinds(&events), ["scan-failed"]);
    assert_eq!((events[0].code, events[0].product.as_deref()), (Some(1), None));
    assert!(events[0].detail.starts_with("metadata: "), "{}", events[0].detail);

    // Two installs, each download reported with where its bytes came from.
    let outcomes = agent.install(&Selection::All, Trigger::InstallNow).await.unwrap();
    assert_eq!(outcomes[0].result, "installed");
    let destination = world.destination.clone();
    let second = world.repo.publish(ID_B, "3.0", 96 * 1024, &destination, json!({}));
    agent.hold(HoldTarget::Update(ID_B.parse().unwrap()), false).await.unwrap();
    agent.scan(None).await.unwrap();
    assert_eq!(agent.install(&Selection::All, Trigger::InstallNow).await.unwrap()[0].result, "installed");
    let events = take_events(&world);
    let downloads: Vec<(String, Option<DeliveryStats>)> = events
        .iter()
        .filter(|e| e.kind == EventType::DownloadSucceeded)
        .map(|e| (e.update.unwrap().id.to_string(), e.delivery))
        .collect();
    assert_eq!(
        downloads,
        [
            (ID_A.to_owned(), Some(DeliveryStats::http(first.package.len() as u64))),
            (ID_B.to_owned(), Some(DeliveryStats::http(second.package.len() as u64))),
        ]
    );
    let status = agent.status();
    assert_eq!(status.delivery.downloads, 2);
    assert_eq!(status.delivery.bytes.from_http, (first.package.len() + second.package.len()) as u64);
    assert_eq!(status.delivery.percent_peer_caching, 0.0);
    let latest: Vec<&str> = status.last_downloads.iter().map(|d| d.version.as_str()).collect();
    assert_eq!(latest, ["3.0", "2.0"], "newest first");

    // A rollback on request names the update it left; so does an uninstall.
    agent.rollback(&product()).await.unwrap();
    agent.uninstall(&product()).await.unwrap();
    assert_eq!(world.installed_version(), None);
    let events = take_events(&world);
    assert_eq!(kinds(&events), ["rolled-back", "uninstalled"]);
    let (rolled, removed) = (&events[0], &events[1]);
    assert_eq!((rolled.from.as_deref(), rolled.to.as_deref()), (Some("3.0"), Some("2.0")));
    assert_eq!(
        (rolled.reason, rolled.update.map(|u| u.id.to_string())),
        (Some(RollbackReason::Manual), Some(ID_B.into()))
    );
    assert_eq!((removed.from.as_deref(), removed.update.map(|u| u.id.to_string())), (Some("2.0"), Some(ID_A.into())));
    let mut seen = Vec::new();
    while let Ok(event) = local.try_recv() {
        seen.push(event);
    }
    assert!(seen.contains(&AgentEvent::Uninstalled { product: PRODUCT.into(), version: "2.0".into() }), "{seen:?}");
    assert!(seen.iter().any(|e| matches!(e, AgentEvent::RolledBack { reason: RollbackReason::Manual, .. })));

    // Uninstalled, the updates are reported again by the next scan: they are needed once more.
    agent.scan(None).await.unwrap();
    let events = take_events(&world);
    assert!(events.iter().all(|e| e.kind == EventType::ScanFinished), "{events:?}");
    assert!(events.iter().any(|e| e.update.unwrap().id.to_string() == ID_A), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_health_check_is_reported_as_a_failed_install_and_a_rollback() {
    let mut world = World::new().await;
    world.publish(ID_A, "2.0", 1024);
    let agent = open(&world);
    assert_eq!(agent.install(&Selection::All, Trigger::InstallNow).await.unwrap()[0].result, "installed");
    let destination = world.destination.clone();
    let failing = json!({"installer": {"handler": "archive", "format": "tar", "destination": destination,
        "post_install": ["/bin/sh", "-c", "echo broken; exit 3"]}});
    world.repo.publish(ID_B, "3.0", 1024, &destination, failing);
    agent.scan(None).await.unwrap();
    take_events(&world);
    let outcomes = agent.install(&Selection::All, Trigger::InstallNow).await.unwrap();
    assert_eq!(outcomes[0].result, "failed", "{outcomes:?}");
    assert_eq!(world.installed_version().as_deref(), Some("2.0"));
    let events = take_events(&world);
    assert_eq!(kinds(&events), ["download-started", "download-succeeded", "install-failed", "rolled-back"]);
    let rolled = &events[3];
    assert_eq!(rolled.reason, Some(RollbackReason::HealthCheckFailed));
    assert_eq!((rolled.from.as_deref(), rolled.to.as_deref()), (Some("3.0"), Some("2.0")));
    assert_eq!(rolled.update.map(|u| u.id.to_string()).as_deref(), Some(ID_B));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_a_crash_interrupted_is_recovered_and_reported_at_start() {
    let mut world = World::new().await;
    world.publish(ID_A, "2.0", 1024);
    {
        let agent = open(&world);
        assert_eq!(agent.install(&Selection::All, Trigger::InstallNow).await.unwrap()[0].result, "installed");
    }
    take_events(&world);
    // The agent died while it uninstalled the product: the journal names the operation.
    let journal = json!({"operation": "uninstall", "product": PRODUCT, "version": "2.0",
        "destination": world.destination, "update": {"id": ID_A, "revision": 1}});
    std::fs::write(world.path("state/install/journal.json"), journal.to_string()).unwrap();

    let agent = open(&world);
    agent.recover().await.unwrap();
    assert_eq!(world.installed_version(), None, "recovery finished the uninstall");
    let events = take_events(&world);
    assert_eq!(kinds(&events), ["recovered", "uninstalled"], "reported at once");
    let recovered = &events[0];
    assert_eq!(
        (recovered.operation, recovered.outcome),
        (Some(Operation::Uninstall), Some(RecoveryOutcome::Completed))
    );
    assert_eq!(
        (recovered.product.as_deref(), recovered.from.as_deref(), recovered.to.as_deref()),
        (Some(PRODUCT), Some("2.0"), None)
    );
    assert_eq!(recovered.update.map(|u| u.id.to_string()).as_deref(), Some(ID_A));
    let status = agent.status();
    let last = status.last_recovery.expect("the status shows the recovery");
    assert_eq!((last.product.as_str(), last.version.as_str()), (PRODUCT, "2.0"));

    // Nothing left to recover: the next start reports nothing.
    drop(agent);
    open(&world).recover().await.unwrap();
    assert!(take_events(&world).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_images_are_confirmed_or_given_up_after_the_reboot() {
    let mut world = World::new().await;
    let boot = world.path("boot_id");
    let cmdline = world.path("cmdline");
    agent_settings(
        &world,
        &format!("boot_id_file = {:?}\nkernel_cmdline = {:?}\nos_boot_attempts = 2", boot.display(), cmdline.display()),
    );
    std::fs::write(&cmdline, "root=/dev/sda2 quiet\n").unwrap();
    let os = |version: &str| {
        json!({"kind": "os", "reboot": "required",
        "installer": {"handler": "os-image", "slot_layout": "a-b", "format": "raw"}, "version": version})
    };
    let destination = world.destination.clone();
    let reboot = |id: &str| std::fs::write(&boot, format!("{id}\n")).unwrap();

    reboot("boot-1");
    world.repo.publish(ID_A, "1.0", 4096, &destination, os("1.0"));
    let agent = open(&world);
    let outcomes = agent.install(&Selection::All, Trigger::InstallNow).await.unwrap();
    assert_eq!((outcomes[0].result.as_str(), outcomes[0].reboot_required), ("installed", true));
    drop(agent);
    // Restarted before the reboot: nothing to confirm yet.
    open(&world).recover().await.unwrap();
    let events = take_events(&world);
    assert_eq!(kinds(&events).last(), Some(&"reboot-pending"));

    // After the reboot the agent starts on the new image: confirmed, reported as installed.
    reboot("boot-2");
    let agent = open(&world);
    let mut local = agent.subscribe();
    agent.recover().await.unwrap();
    assert_eq!(local.recv().await.unwrap(), AgentEvent::OsConfirmed { product: PRODUCT.into(), version: "1.0".into() });
    let events = take_events(&world);
    assert_eq!(kinds(&events), ["install-succeeded"]);
    assert_eq!(events[0].update.unwrap().id.to_string(), ID_A);

    // The next image fails the device's check after its reboot: the previous slot is active again.
    world.repo.publish(ID_B, "2.0", 4096, &destination, os("2.0"));
    assert_eq!(agent.install(&Selection::All, Trigger::InstallNow).await.unwrap()[0].result, "installed");
    drop(agent);
    take_events(&world);
    agent_settings(&world, "os_health_check = [\"/bin/sh\", \"-c\", \"echo no network; exit 1\"]");
    reboot("boot-3");
    let agent = open(&world);
    agent.recover().await.unwrap();
    let events = take_events(&world);
    assert_eq!(kinds(&events), ["rolled-back"]);
    let rolled = &events[0];
    assert_eq!(rolled.reason, Some(RollbackReason::BootFailed));
    assert_eq!((rolled.from.as_deref(), rolled.to.as_deref()), (Some("2.0"), Some("1.0")));
    assert_eq!(rolled.update.map(|u| u.id.to_string()).as_deref(), Some(ID_B));
    assert!(rolled.detail.contains("no network"), "{}", rolled.detail);
    let history = agent.history(Some(&product())).await.unwrap();
    let last = history.last().unwrap();
    assert_eq!((last.event.event, last.event.version.as_str()), (custody_install::Event::BootFailed, "2.0"));
}
