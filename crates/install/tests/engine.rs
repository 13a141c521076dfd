//! The install engine with real files, links and processes: kinds, health checks and automatic rollback,
//! `rollback`, kept versions, definitions, OS slots, uninstall.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{app_tree, expected_tree, package, tree, update, verify};
use custody_catalog::{ArchiveFormat, ProductName};
use custody_install::{Error, Event, Installer, Options, OsBoot, Slot};
use serde_json::json;

fn product(name: &str) -> ProductName {
    name.parse().unwrap()
}

fn versions(installer: &Installer, name: &str) -> Vec<String> {
    installer.versions(&product(name)).unwrap().into_iter().map(|v| v.version).collect()
}

fn current(installer: &Installer, name: &str) -> Option<String> {
    installer.current(&product(name)).unwrap().map(|v| v.version)
}

/// An `app` update of `product` `version` (tar-zstd), installed under `destination`, with an optional post-install
/// command.
fn app(product: &str, version: &str, destination: &Path, post_install: Option<Vec<String>>) -> common::Update {
    let mut installer = json!({"handler": "archive", "format": "tar-zstd", "destination": destination});
    if let Some(argv) = post_install {
        installer["post_install"] = json!(argv);
    }
    update("app", product, version, installer, package(&app_tree(product, version), ArchiveFormat::TarZstd))
}

fn sh(script: &str) -> Option<Vec<String>> {
    Some(vec!["/bin/sh".into(), "-c".into(), script.into()])
}

/// An `os` update of `acme-os` (`format` raw or raw-zstd).
fn os(version: &str, format: &str, payload: Vec<u8>) -> common::Update {
    update("os", "acme-os", version, json!({"handler": "os-image", "slot_layout": "a-b", "format": format}), payload)
}

fn image(version: &str) -> Vec<u8> {
    format!("acme-os {version} ").repeat(50_000).into_bytes()
}

/// The engine on `state` as after a boot whose id is `boot`, with `options` otherwise. Reopening may find the lock
/// held for a moment by a process another test's thread is starting (between its fork and exec it holds copies of
/// this process's descriptors): wait for it.
fn booted(state: &Path, boot: &str, options: Options) -> Installer {
    for _ in 0..1000 {
        match Installer::with_options(state, Options { boot_id: Some(boot.into()), ..options.clone() }) {
            Err(Error::Locked { .. }) => std::thread::sleep(Duration::from_millis(5)),
            other => return other.unwrap(),
        }
    }
    panic!("the state stayed locked");
}

/// The device reboots into the new image, which passes: the state reopened with boot id `boot`, confirmed.
fn reboot_and_confirm(state: &Path, boot: &str) -> Installer {
    let mut installer = booted(state, boot, Options::default());
    assert!(matches!(installer.check_os_boot(None).unwrap(), Some(OsBoot::Confirmed { .. })));
    installer
}

#[test]
fn app_install_switches_destination_and_keeps_previous_versions() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let destination = dir.path().join("opt/acme");
    let options = Options { keep_versions: 1, ..Options::default() };
    let mut installer = Installer::with_options(&dir.path().join("state"), options).unwrap();
    assert_eq!(installer.recover().unwrap(), None);

    for (index, version) in ["1.0", "1.1", "2.0", "2.1"].into_iter().enumerate() {
        // The post-install command runs after the switch: it sees the new version through the destination.
        let check = sh(&format!("grep -qx {version} {}/VERSION", destination.display()));
        let update = app("acme", version, &destination, check);
        let artifact = verify(&staging, &update);
        let download = artifact.path().to_owned();
        let outcome = installer.install(artifact).unwrap();
        assert_eq!(outcome.version, version);
        assert_eq!(outcome.previous.as_deref(), if index == 0 { None } else { Some(["1.0", "1.1", "2.0"][index - 1]) });
        assert!(!download.exists(), "the download is removed after the install");
        assert_eq!(tree(&destination), expected_tree(&app_tree("acme", version)));
        assert_eq!(tree(&installer.product_root(&product("acme"))), expected_tree(&app_tree("acme", version)));
    }
    // keep_versions = 1: the current version and one previous.
    assert_eq!(versions(&installer, "acme"), ["2.0", "2.1"]);
    assert_eq!(current(&installer, "acme").as_deref(), Some("2.1"));

    // Installing the current version again is refused.
    let again = verify(&staging, &app("acme", "2.1", &destination, None));
    assert!(matches!(installer.install(again), Err(Error::AlreadyCurrent { .. })));

    let events: Vec<Event> = installer.history(&product("acme")).unwrap().into_iter().map(|e| e.event).collect();
    assert_eq!(events, [Event::Installed; 4]);
}

#[test]
fn failed_health_check_rolls_back_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let destination = dir.path().join("opt/acme");
    let options = Options { health_check_timeout: Duration::from_millis(500), ..Options::default() };
    let mut installer = Installer::with_options(&dir.path().join("state"), options).unwrap();

    installer.install(verify(&staging, &app("acme", "1.0", &destination, sh("exit 0")))).unwrap();

    let broken = app("acme", "2.0", &destination, sh("echo cannot start >&2; exit 4"));
    let artifact = verify(&staging, &broken);
    let download = artifact.path().to_owned();
    let error = installer.install(artifact).unwrap_err();
    match &error {
        Error::HealthCheckFailed { version, reason, restored, .. } => {
            assert_eq!(version, "2.0");
            assert!(reason.contains("exit status: 4") && reason.contains("cannot start"), "{reason}");
            assert_eq!(restored.as_deref(), Some("1.0"));
        }
        other => panic!("expected HealthCheckFailed, got {other}"),
    }
    assert_eq!(tree(&destination), expected_tree(&app_tree("acme", "1.0")));
    assert_eq!(versions(&installer, "acme"), ["1.0"]);
    assert!(download.exists(), "a failed install keeps the verified download");

    // A health check that hangs is killed at the deadline and counts as failed.
    let hanging = app("acme", "3.0", &destination, sh("sleep 30"));
    let error = installer.install(verify(&staging, &hanging)).unwrap_err();
    assert!(matches!(&error, Error::HealthCheckFailed { reason, .. } if reason.contains("did not finish")), "{error}");
    assert_eq!(tree(&destination), expected_tree(&app_tree("acme", "1.0")));

    let history = installer.history(&product("acme")).unwrap();
    let failed: Vec<_> = history.iter().filter(|e| e.event == Event::HealthCheckFailed).collect();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0].other.as_deref(), Some("1.0"));
    assert!(failed[0].detail.as_deref().unwrap().contains("cannot start"));
}

#[test]
fn first_install_failing_its_health_check_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let destination = dir.path().join("opt/acme");
    let mut installer = Installer::new(&dir.path().join("state")).unwrap();
    let error = installer.install(verify(&staging, &app("acme", "1.0", &destination, sh("exit 1")))).unwrap_err();
    assert!(matches!(error, Error::HealthCheckFailed { restored: None, .. }), "{error}");
    assert!(std::fs::symlink_metadata(&destination).is_err(), "the destination link is removed");
    assert!(!installer.product_root(&product("acme")).exists());
    assert!(versions(&installer, "acme").is_empty());
}

#[test]
fn rollback_walks_back_through_kept_versions() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let destination = dir.path().join("opt/acme");
    let mut installer = Installer::new(&dir.path().join("state")).unwrap();
    let acme = product("acme");
    assert!(matches!(installer.rollback(&acme), Err(Error::NotInstalled { .. })));
    for version in ["1.0", "2.0", "3.0"] {
        installer.install(verify(&staging, &app("acme", version, &destination, None))).unwrap();
    }
    assert_eq!(versions(&installer, "acme"), ["1.0", "2.0", "3.0"]);

    let outcome = installer.rollback(&acme).unwrap();
    assert_eq!((outcome.from.as_str(), outcome.to.as_str()), ("3.0", "2.0"));
    assert_eq!(tree(&destination), expected_tree(&app_tree("acme", "2.0")));
    assert_eq!(versions(&installer, "acme"), ["1.0", "2.0"]);

    installer.rollback(&acme).unwrap();
    assert_eq!(tree(&destination), expected_tree(&app_tree("acme", "1.0")));
    assert!(matches!(installer.rollback(&acme), Err(Error::NothingToRollBack { .. })));

    // Installing after a rollback continues from the restored version.
    installer.install(verify(&staging, &app("acme", "3.0", &destination, None))).unwrap();
    assert_eq!(versions(&installer, "acme"), ["1.0", "3.0"]);
    installer.rollback(&acme).unwrap();
    assert_eq!(current(&installer, "acme").as_deref(), Some("1.0"));

    let rolled: Vec<_> = installer
        .history(&acme)
        .unwrap()
        .into_iter()
        .filter(|e| e.event == Event::RolledBack)
        .map(|e| (e.version, e.other.unwrap()))
        .collect();
    assert_eq!(rolled, [("3.0".into(), "2.0".into()), ("2.0".into(), "1.0".into()), ("3.0".into(), "1.0".into())]);
}

#[test]
fn uninstall_removes_the_product_and_its_link() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let destination = dir.path().join("opt/acme");
    let mut installer = Installer::new(&dir.path().join("state")).unwrap();
    installer.install(verify(&staging, &app("acme", "1.0", &destination, None))).unwrap();
    let second = app("acme", "2.0", &destination, None);
    installer.install(verify(&staging, &second)).unwrap();
    let removed = installer.uninstall(&product("acme")).unwrap();
    assert_eq!(removed.version, "2.0");
    assert_eq!(removed.update.map(|u| (u.id, u.revision)), Some((second.entry.id(), 1)));
    assert!(std::fs::symlink_metadata(&destination).is_err());
    assert!(versions(&installer, "acme").is_empty());
    assert!(matches!(installer.uninstall(&product("acme")), Err(Error::NotInstalled { .. })));
    let last = installer.history(&product("acme")).unwrap().pop().unwrap();
    assert_eq!((last.event, last.version.as_str()), (Event::Uninstalled, "2.0"));
    // And it can be installed again.
    installer.install(verify(&staging, &app("acme", "1.0", &destination, None))).unwrap();
    assert_eq!(tree(&destination), expected_tree(&app_tree("acme", "1.0")));
}

#[test]
fn an_occupied_destination_is_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let destination = dir.path().join("opt/acme");
    std::fs::create_dir_all(destination.join("data")).unwrap();
    let mut installer = Installer::new(&dir.path().join("state")).unwrap();
    let error = installer.install(verify(&staging, &app("acme", "1.0", &destination, None))).unwrap_err();
    assert!(matches!(error, Error::DestinationInUse { .. }), "{error}");
    assert!(destination.join("data").is_dir());
    assert!(versions(&installer, "acme").is_empty());
}

#[test]
fn driver_reload_runs_for_the_new_version_and_again_for_the_restored_one() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let destination = dir.path().join("lib/modules/acme");
    let loaded = dir.path().join("loaded");
    let mut installer = Installer::new(&dir.path().join("state")).unwrap();
    let driver = |version: &str, fail: bool| {
        // The reload command records which driver version it loaded (read through the destination link).
        let script =
            format!("cat {}/VERSION >> {}; exit {}", destination.display(), loaded.display(), if fail { 1 } else { 0 });
        let installer = json!({"handler": "driver", "format": "tar", "destination": destination,
            "reload_command": ["/bin/sh", "-c", script]});
        update("driver", "acme-nic", version, installer, package(&app_tree("acme-nic", version), ArchiveFormat::Tar))
    };
    installer.install(verify(&staging, &driver("1.0", false))).unwrap();
    installer.install(verify(&staging, &driver("2.0", false))).unwrap();
    assert_eq!(std::fs::read_to_string(&loaded).unwrap(), "1.0\n2.0\n");

    installer.rollback(&product("acme-nic")).unwrap();
    assert_eq!(std::fs::read_to_string(&loaded).unwrap(), "1.0\n2.0\n1.0\n");

    // A reload that fails rolls back, and the previous version's own reload command loads it again.
    let error = installer.install(verify(&staging, &driver("3.0", true))).unwrap_err();
    assert!(matches!(error, Error::HealthCheckFailed { restored: Some(_), .. }), "{error}");
    assert_eq!(std::fs::read_to_string(&loaded).unwrap(), "1.0\n2.0\n1.0\n3.0\n1.0\n");
    assert_eq!(tree(&destination), expected_tree(&app_tree("acme-nic", "1.0")));
}

#[test]
fn definitions_keep_the_newest_sets() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let mut installer = Installer::new(&dir.path().join("state")).unwrap();
    let definitions = |version: &str, keep: u32| {
        let mut builder = custody_install::PackageBuilder::new("acme-av-defs", version);
        builder.file("signatures.db", 0o644, format!("definitions {version}"));
        let installer = json!({"handler": "definitions", "keep": keep});
        update("definitions", "acme-av-defs", version, installer, package(&builder, ArchiveFormat::TarZstd))
    };
    for build in 1..=6 {
        installer.install(verify(&staging, &definitions(&format!("2025.6.{build}"), 2))).unwrap();
    }
    assert_eq!(versions(&installer, "acme-av-defs"), ["2025.6.4", "2025.6.5", "2025.6.6"]);
    let root = installer.product_root(&product("acme-av-defs"));
    assert_eq!(std::fs::read_to_string(root.join("signatures.db")).unwrap(), "definitions 2025.6.6");
    // The signed `keep` decides, also when it shrinks.
    installer.install(verify(&staging, &definitions("2025.6.7", 0))).unwrap();
    assert_eq!(versions(&installer, "acme-av-defs"), ["2025.6.7"]);
}

#[test]
fn store_apps_switch_their_product_root() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let mut installer = Installer::new(&dir.path().join("state")).unwrap();
    for version in ["1.0", "2.0"] {
        let payload = package(&app_tree("acme-notes", version), ArchiveFormat::TarZstd);
        let update = update("store-app", "acme-notes", version, json!({"handler": "store-app"}), payload);
        installer.install(verify(&staging, &update)).unwrap();
        let root = installer.product_root(&product("acme-notes"));
        assert_eq!(tree(&root), expected_tree(&app_tree("acme-notes", version)));
    }
}

#[test]
fn os_images_go_to_the_inactive_slot_and_switch_back() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let state = dir.path().join("state");
    let mut installer = booted(&state, "boot-1", Options::default());

    let outcome = installer.install(verify(&staging, &os("1.0", "raw", image("1.0")))).unwrap();
    assert_eq!(outcome.reboot, custody_catalog::Reboot::Required);
    let status = installer.os_status().unwrap();
    assert_eq!(status.active, Some(Slot::A));
    assert_eq!(status.pending.map(|p| (p.version, p.boots_left)), Some(("1.0".into(), 3)));
    assert_eq!(std::fs::read(installer.os_slot_image(Slot::A)).unwrap(), image("1.0"));
    let pending = installer.check_os_boot(None).unwrap();
    assert!(matches!(pending, Some(OsBoot::RebootPending { ref version, .. }) if version == "1.0"), "{pending:?}");
    drop(installer);
    let mut installer = reboot_and_confirm(&state, "boot-2");
    assert_eq!(installer.os_status().unwrap().pending, None);
    assert_eq!(installer.check_os_boot(None).unwrap(), None, "nothing waits any more");

    let compressed = zstd::encode_all(image("2.0").as_slice(), 3).unwrap();
    installer.install(verify(&staging, &os("2.0", "raw-zstd", compressed))).unwrap();
    let status = installer.os_status().unwrap();
    assert_eq!(status.active, Some(Slot::B));
    assert_eq!(std::fs::read(installer.os_slot_image(Slot::B)).unwrap(), image("2.0"));
    assert_eq!(std::fs::read(installer.os_slot_image(Slot::A)).unwrap(), image("1.0"), "the old slot is untouched");
    assert_eq!(versions(&installer, "acme-os"), ["1.0", "2.0"]);
    // Before the reboot, another image would overwrite the only known-good slot: refused.
    let error = installer.install(verify(&staging, &os("2.1", "raw", image("2.1")))).unwrap_err();
    assert!(matches!(error, Error::OsUnconfirmed { ref version, .. } if version == "2.0"), "{error}");

    // Rolled back on request before the reboot: slot A again, and nothing waits for confirmation.
    let outcome = installer.rollback(&product("acme-os")).unwrap();
    assert_eq!((outcome.from.as_str(), outcome.to.as_str()), ("2.0", "1.0"));
    let status = installer.os_status().unwrap();
    assert_eq!(status.active, Some(Slot::A));
    assert_eq!(status.pending, None);
    assert!(status.slots[1].installed.is_none(), "slot B no longer holds a bootable image");
    assert!(matches!(installer.rollback(&product("acme-os")), Err(Error::NothingToRollBack { .. })));

    // The next update goes to slot B again.
    installer.install(verify(&staging, &os("3.0", "raw", image("3.0")))).unwrap();
    assert_eq!(installer.os_status().unwrap().active, Some(Slot::B));
    assert!(matches!(installer.uninstall(&product("acme-os")), Err(Error::Unsupported { .. })));
    let events: Vec<Event> = installer.history(&product("acme-os")).unwrap().into_iter().map(|e| e.event).collect();
    assert_eq!(events, [Event::Installed, Event::Confirmed, Event::Installed, Event::RolledBack, Event::Installed]);
}

#[test]
fn a_new_os_failing_its_check_after_the_reboot_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let state = dir.path().join("state");
    let mut installer = booted(&state, "boot-1", Options::default());
    installer.install(verify(&staging, &os("1.0", "raw", image("1.0")))).unwrap();
    drop(installer);
    let mut installer = reboot_and_confirm(&state, "boot-2");
    let second = os("2.0", "raw", image("2.0"));
    installer.install(verify(&staging, &second)).unwrap();
    drop(installer);

    let failing = Options {
        os_health_check: sh("echo degraded; exit 3").map(|argv| custody_catalog::Argv::new(argv).unwrap()),
        ..Options::default()
    };
    let mut installer = booted(&state, "boot-3", failing);
    let outcome = installer.check_os_boot(None).unwrap().unwrap();
    let OsBoot::Failed { version, update, restored, reason, .. } = outcome else { panic!("{outcome:?}") };
    assert_eq!((version.as_str(), restored.as_deref()), ("2.0", Some("1.0")));
    assert_eq!(update.map(|u| u.id), Some(second.entry.id()));
    assert!(reason.contains("the OS health check failed") && reason.contains("degraded"), "{reason}");
    let status = installer.os_status().unwrap();
    assert_eq!((status.active, status.pending), (Some(Slot::A), None));
    assert!(status.slots[1].installed.is_none(), "the failed image is not bootable");
    let last = installer.history(&product("acme-os")).unwrap().pop().unwrap();
    assert_eq!((last.event, last.version.as_str(), last.other.as_deref()), (Event::BootFailed, "2.0", Some("1.0")));
    assert!(last.detail.unwrap().contains("exit"));
    // Installs go on: the next image goes to slot B again.
    installer.install(verify(&staging, &os("2.1", "raw", image("2.1")))).unwrap();
    assert_eq!(installer.os_status().unwrap().active, Some(Slot::B));
}

#[test]
fn the_bootloader_falling_back_gives_the_new_os_up() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let state = dir.path().join("state");
    let mut installer = booted(&state, "boot-1", Options::default());
    installer.install(verify(&staging, &os("1.0", "raw", image("1.0")))).unwrap();
    drop(installer);
    let mut installer = reboot_and_confirm(&state, "boot-2");
    installer.install(verify(&staging, &os("2.0", "raw", image("2.0")))).unwrap();
    drop(installer);

    // The device came up on slot A, not the new image's slot B.
    let mut installer = booted(&state, "boot-3", Options::default());
    let outcome = installer.check_os_boot(Some(Slot::A)).unwrap().unwrap();
    let OsBoot::Failed { restored, reason, .. } = outcome else { panic!("{outcome:?}") };
    assert_eq!(restored.as_deref(), Some("1.0"));
    assert!(reason.contains("started slot a instead of the new image's slot b"), "{reason}");
    assert_eq!(installer.os_status().unwrap().active, Some(Slot::A));
    // Booting the slot the image is in confirms it.
    installer.install(verify(&staging, &os("3.0", "raw", image("3.0")))).unwrap();
    drop(installer);
    let mut installer = booted(&state, "boot-4", Options::default());
    assert!(matches!(installer.check_os_boot(Some(Slot::B)).unwrap(), Some(OsBoot::Confirmed { .. })));
}

#[test]
fn a_first_os_image_without_a_fallback_stays_when_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let state = dir.path().join("state");
    let mut installer = booted(&state, "boot-1", Options::default());
    installer.install(verify(&staging, &os("1.0", "raw", image("1.0")))).unwrap();
    drop(installer);
    let failing = Options {
        os_health_check: Some(custody_catalog::Argv::new(vec!["/bin/false".into()]).unwrap()),
        ..Options::default()
    };
    let mut installer = booted(&state, "boot-2", failing);
    let outcome = installer.check_os_boot(None).unwrap().unwrap();
    assert!(matches!(outcome, OsBoot::Failed { restored: None, .. }), "{outcome:?}");
    let status = installer.os_status().unwrap();
    assert_eq!((status.active, status.pending), (Some(Slot::A), None), "nothing else to boot: the image stays");
    assert_eq!(installer.history(&product("acme-os")).unwrap().last().unwrap().event, Event::BootFailed);
}

#[test]
fn os_image_larger_than_the_slot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let state = dir.path().join("state");
    let options = Options { os_slot_size: 1 << 20, ..Options::default() };
    let mut installer = booted(&state, "boot-1", options.clone());
    installer.install(verify(&staging, &os("1.0", "raw", vec![1u8; 1000]))).unwrap();
    drop(installer);
    let mut installer = booted(&state, "boot-2", options);
    assert!(matches!(installer.check_os_boot(None).unwrap(), Some(OsBoot::Confirmed { .. })));
    // 64 MiB of zeros compress to a few kilobytes: decompression stops at the slot size.
    let bomb = zstd::encode_all(std::io::Read::take(std::io::repeat(0), 64 << 20), 1).unwrap();
    let error = installer.install(verify(&staging, &os("2.0", "raw-zstd", bomb))).unwrap_err();
    assert!(matches!(error, Error::ImageTooLarge { limit: 1048576, .. }), "{error}");
    let status = installer.os_status().unwrap();
    assert_eq!((status.active, status.pending), (Some(Slot::A), None), "a failed write leaves nothing pending");
    assert!(status.slots[1].installed.is_none());
    assert_eq!(installer.history(&product("acme-os")).unwrap().last().unwrap().event, Event::InstallFailed);

    let single = update(
        "os",
        "acme-os",
        "3.0",
        json!({"handler": "os-image", "slot_layout": "single", "format": "raw"}),
        vec![2u8; 10],
    );
    assert!(matches!(installer.install(verify(&staging, &single)), Err(Error::Unsupported { .. })));
}

#[test]
fn one_installer_per_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = Installer::new(dir.path()).unwrap();
    assert!(matches!(Installer::new(dir.path()), Err(Error::Locked { .. })));
    drop(first);
    Installer::new(dir.path()).unwrap();
}

#[test]
fn recovery_on_a_clean_state_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let destination = dir.path().join("opt/acme");
    let mut installer = Installer::new(&dir.path().join("state")).unwrap();
    installer.install(verify(&staging, &app("acme", "1.0", &destination, None))).unwrap();
    assert_eq!(installer.recover().unwrap(), None);
    assert_eq!(tree(&destination), expected_tree(&app_tree("acme", "1.0")));
}
