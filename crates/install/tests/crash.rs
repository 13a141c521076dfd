//! Crash safety with real processes: a child process installs a new version while the parent kills it with SIGKILL
//! after a random delay, many times over. After `recover()` the product must be exactly the old version or exactly
//! the new one (file trees compared), every kept version complete, and nothing left over.
//!
//! The child is this test binary started again with `CRASH_CHILD` set, running only `crash_child_process`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{app_tree, expected_tree, package, tree, update, verify};
use custody_catalog::{ArchiveFormat, ProductName};
use custody_install::{Installer, PackageBuilder, RecoveryOutcome};
use rand::Rng;
use serde_json::json;

const CHILD: &str = "CRASH_CHILD";

/// The app: a few dozen directories and a few hundred files whose content depends on the version, so that a tree
/// mixing two versions, or a partial one, differs from both.
fn app_package(version: &str) -> PackageBuilder {
    let mut builder = app_tree("acme", version);
    for d in 0..10 {
        builder.dir(&format!("data{d}"), 0o755);
        for f in 0..6 {
            let content = format!("{version} {d} {f} ").repeat(200);
            builder.file(&format!("data{d}/file{f}"), 0o644, content);
        }
    }
    builder
}

fn app_update(version: &str, destination: &Path) -> common::Update {
    let check = format!("test -f {}/VERSION", destination.display());
    let installer = json!({"handler": "archive", "format": "tar-zstd", "destination": destination,
        "post_install": ["/bin/sh", "-c", check]});
    update("app", "acme", version, installer, package(&app_package(version), ArchiveFormat::TarZstd))
}

fn os_image(version: &str) -> Vec<u8> {
    format!("acme-os {version} block ").repeat(200_000).into_bytes()
}

fn os_update(version: &str) -> common::Update {
    let installer = json!({"handler": "os-image", "slot_layout": "a-b", "format": "raw"});
    update("os", "acme-os", version, installer, os_image(version))
}

/// Not a test of its own: the body of the child process that the crash tests start and kill. Without `CRASH_CHILD`
/// it returns at once.
#[test]
fn crash_child_process() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let path = |key: &str| PathBuf::from(spec[key].as_str().unwrap());
    let version = spec["version"].as_str().unwrap();
    let update = match spec["kind"].as_str().unwrap() {
        "app" => app_update(version, &path("destination")),
        _ => os_update(version),
    };
    let artifact = verify(&path("staging"), &update);
    let mut installer = Installer::new(&path("state")).unwrap();
    // The test harness may have printed the test name without a newline: the marker ends the line.
    println!("crash-child-ready");
    std::io::stdout().flush().unwrap();
    installer.install(artifact).unwrap();
    println!("installed");
}

/// Starts the child installing `version`, returns it once it is about to install (lock held, artifact verified).
fn start_child(kind: &str, version: &str, root: &Path) -> (Child, Instant) {
    let spec = json!({
        "kind": kind, "version": version,
        "state": root.join("state"), "staging": root.join("downloads"), "destination": root.join("opt/acme"),
    });
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_process", "--nocapture", "--test-threads=1"])
        .env(CHILD, spec.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.ends_with("crash-child-ready") => break,
            Some(Ok(_)) => {}
            other => panic!("the child ended before it was ready: {other:?}"),
        }
    }
    // Keep the pipe open (the child prints once more), drained by a thread so that it never blocks.
    std::thread::spawn(move || lines.for_each(drop));
    (child, Instant::now())
}

/// When an uninterrupted install in the child reaches `staged` (the package is extracted and durable) and when it
/// ends, measured from "ready" by watching the journal (median of a few runs). Kill delays are drawn from both
/// windows, so that kills land in the long extraction and in the short phases after it alike.
struct Timing {
    staged: Duration,
    end: Duration,
}

impl Timing {
    fn measure(kind: &str, versions: &[&str], root: &Path) -> Self {
        let mut staged = Vec::new();
        let mut end = Vec::new();
        for version in versions {
            let (mut child, ready) = start_child(kind, version, root);
            let mut staged_at = None;
            loop {
                if staged_at.is_none()
                    && !matches!(
                        journal_state(&root.join("state")).as_str(),
                        "none" | "install staging" | "OS install staging"
                    )
                {
                    staged_at = Some(ready.elapsed());
                }
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "the child install of {version} failed");
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            let finished = ready.elapsed();
            end.push(finished);
            staged.push(staged_at.unwrap_or(finished));
        }
        staged.sort();
        end.sort();
        Self { staged: staged[staged.len() / 2], end: end[end.len() / 2] }
    }

    /// Half of the kills during extraction, half from just before `staged` to just after the end.
    fn kill_delay(&self) -> Duration {
        let mut rng = rand::rng();
        match rng.random_bool(0.5) {
            true => self.staged.mul_f64(rng.random_range(0.0..1.0)),
            false => {
                let from = self.staged.saturating_sub(Duration::from_millis(2));
                let to = self.end + Duration::from_millis(2);
                from + (to - from).mul_f64(rng.random_range(0.0..1.0))
            }
        }
    }
}

/// Opens the state after the child was killed. A health-check process the child was starting may hold a copy of the
/// lock's descriptor for a moment (between its fork and the exec that closes it): wait for it.
fn open_after_kill(state: &Path) -> Installer {
    for _ in 0..1000 {
        match Installer::new(state) {
            Err(custody_install::Error::Locked { .. }) => std::thread::sleep(Duration::from_millis(10)),
            other => return other.unwrap(),
        }
    }
    panic!("the state stayed locked after the installer was killed");
}

/// What the journal says before recovery: the operation and phase, or "none".
fn journal_state(state: &Path) -> String {
    match std::fs::read(state.join("journal.json")) {
        Ok(bytes) => {
            let journal: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            format!("{} {}", journal["operation"].as_str().unwrap(), journal["phase"].as_str().unwrap_or(""))
        }
        Err(_) => "none".into(),
    }
}

#[test]
fn killed_app_installs_leave_the_old_or_the_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("downloads")).unwrap();
    let destination = root.join("opt/acme");
    let acme: ProductName = "acme".parse().unwrap();
    let all_versions: Vec<String> = (0..7).map(|i| format!("1.{i}")).collect();
    let expected: Vec<_> = all_versions.iter().map(|v| (v.clone(), expected_tree(&app_package(v)))).collect();
    let expected_for = |version: &str| &expected.iter().find(|(v, _)| v == version).unwrap().1;

    let mut installer = Installer::new(&root.join("state")).unwrap();
    installer.install(verify(&root.join("downloads"), &app_update("1.0", &destination))).unwrap();
    drop(installer);
    let timing = Timing::measure("app", &["1.1", "1.2", "1.3"], root);
    let mut old = "1.3".to_owned();

    let iterations = 200;
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    let (mut kept_old, mut got_new) = (0, 0);
    let started = Instant::now();
    for iteration in 0..iterations {
        let new = all_versions.iter().cycle().skip(iteration).find(|v| **v != old).unwrap().clone();
        let (mut child, ready) = start_child("app", &new, root);
        let delay = timing.kill_delay();
        std::thread::sleep(delay.saturating_sub(ready.elapsed()));
        child.kill().unwrap();
        child.wait().unwrap();

        let before = journal_state(&root.join("state"));
        let mut installer = open_after_kill(&root.join("state"));
        let recovered = installer.recover().unwrap();
        let current = installer.current(&acme).unwrap().expect("a version is installed").version;
        assert!(current == old || current == new, "iteration {iteration}: {current} is neither {old} nor {new}");
        assert_eq!(
            tree(&destination),
            *expected_for(&current),
            "iteration {iteration}: {before}: {current} is not complete"
        );
        for kept in installer.versions(&acme).unwrap() {
            let kept_root = installer.state_dir().join("products/acme/versions").join(&kept.version);
            assert_eq!(tree(&kept_root), *expected_for(&kept.version), "iteration {iteration}: kept {}", kept.version);
        }
        let state = installer.state_dir().to_owned();
        assert!(!state.join("journal.json").exists());
        assert_eq!(std::fs::read_dir(state.join("products/acme/staging")).unwrap().count(), 0);
        if let Some(recovered) = &recovered
            && let RecoveryOutcome::Undone { restored } = &recovered.outcome
        {
            assert_eq!(restored.as_deref(), Some(old.as_str()));
        }
        *outcomes.entry(format!("{before} -> {}", if current == new { "new" } else { "old" })).or_default() += 1;
        if current == new {
            got_new += 1;
        } else {
            kept_old += 1;
        }
        old = current;
    }
    println!(
        "{iterations} kills in {:.1?} (staged after {:.1?}, done after {:.1?}):",
        started.elapsed(),
        timing.staged,
        timing.end
    );
    for (outcome, count) in &outcomes {
        println!("  {count:4}  {outcome}");
    }
    // The kills must have landed both before and after the switch, and some mid-operation.
    assert!(kept_old > 0 && got_new > 0, "{outcomes:?}");
    assert!(outcomes.keys().any(|k| !k.starts_with("none")), "no kill interrupted an install: {outcomes:?}");
}

#[test]
fn killed_os_installs_leave_a_bootable_slot() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("downloads")).unwrap();
    let mut installer = Installer::new(&root.join("state")).unwrap();
    installer.install(verify(&root.join("downloads"), &os_update("1.0"))).unwrap();
    drop(installer);
    let timing = Timing::measure("os", &["1.1", "1.2", "1.3"], root);
    let mut old = "1.3".to_owned();

    let (mut kept_old, mut got_new) = (0, 0);
    for iteration in 0..40 {
        let new = format!("2.{iteration}");
        let (mut child, ready) = start_child("os", &new, root);
        let delay = timing.kill_delay();
        std::thread::sleep(delay.saturating_sub(ready.elapsed()));
        child.kill().unwrap();
        child.wait().unwrap();

        let mut installer = open_after_kill(&root.join("state"));
        installer.recover().unwrap();
        let status = installer.os_status().unwrap();
        let active = status.active.expect("a slot is active");
        let slot = status.slots.iter().find(|s| s.slot == active).unwrap();
        let current = slot.installed.as_ref().expect("the active slot holds an image").version.clone();
        assert!(current == old || current == new, "iteration {iteration}: {current} is neither {old} nor {new}");
        assert!(std::fs::read(&slot.image).unwrap() == os_image(&current), "iteration {iteration}: slot image");
        for other in status.slots.iter().filter(|s| s.slot != active) {
            if let Some(installed) = &other.installed {
                assert!(std::fs::read(&other.image).unwrap() == os_image(&installed.version), "{:?}", other.slot);
            }
        }
        if current == new {
            got_new += 1;
        } else {
            kept_old += 1;
        }
        old = current;
    }
    assert!(kept_old > 0 && got_new > 0, "old {kept_old}, new {got_new}");
}
