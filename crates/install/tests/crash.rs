//! Crash safety with real processes: a child process installs a new version (or confirms a new OS image after a
//! reboot) while the parent kills it with SIGKILL after a random delay, many times over. After `recover()` the
//! product must be exactly the old version or exactly the new one (file trees compared), every kept version complete,
//! and nothing left over; an OS image is confirmed or given up exactly as an uninterrupted check would have.
//!
//! The child is this test binary started again with `CRASH_CHILD` set, running only `crash_child_process`. Reboots
//! are simulated by the boot id the engine is opened with.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{app_tree, expected_tree, package, tree, update, verify};
use custody_catalog::Argv;
use custody_catalog::{ArchiveFormat, ProductName};
use custody_install::{Installer, Operation, Options, OsBoot, PackageBuilder, RecoveryOutcome, Slot};
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

/// The engine's options as after the boot `boot`, with the OS check `check` and `attempts` boots to confirm.
fn options(boot: &str, check: Option<&[&str]>, attempts: u32) -> Options {
    Options {
        boot_id: Some(boot.to_owned()),
        os_health_check: check.map(|argv| Argv::new(argv.iter().map(|a| a.to_string()).collect()).unwrap()),
        os_boot_attempts: attempts,
        ..Options::default()
    }
}

/// Not a test of its own: the body of the child process that the crash tests start and kill. Without `CRASH_CHILD`
/// it returns at once. It installs `version` (`"action": "install"`), or checks the OS image waiting for its boot
/// (`"check"`), on the boot `boot`.
#[test]
fn crash_child_process() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let path = |key: &str| PathBuf::from(spec[key].as_str().unwrap());
    let version = spec["version"].as_str().unwrap();
    let check: Option<Vec<&str>> = spec["check"].as_array().map(|a| a.iter().map(|v| v.as_str().unwrap()).collect());
    let attempts = spec["attempts"].as_u64().map_or(3, |n| n as u32);
    let options = options(spec["boot"].as_str().unwrap(), check.as_deref(), attempts);
    let mut installer = open_state(&path("state"), options);
    if spec["action"] == "check" {
        println!("crash-child-ready");
        std::io::stdout().flush().unwrap();
        let outcome = installer.check_os_boot(None).unwrap();
        println!("checked: {outcome:?}");
        return;
    }
    let update = match spec["kind"].as_str().unwrap() {
        "app" => app_update(version, &path("destination")),
        _ => os_update(version),
    };
    let artifact = verify(&path("staging"), &update);
    // The test harness may have printed the test name without a newline: the marker ends the line.
    println!("crash-child-ready");
    std::io::stdout().flush().unwrap();
    installer.install(artifact).unwrap();
    println!("installed");
}

/// Starts the child installing `version` on the boot `boot`, returns it once it is about to install (lock held,
/// artifact verified).
fn start_child(kind: &str, version: &str, root: &Path) -> (Child, Instant) {
    spawn_child(json!({
        "action": "install", "kind": kind, "version": version, "boot": format!("boot-{version}"),
        "state": root.join("state"), "staging": root.join("downloads"), "destination": root.join("opt/acme"),
    }))
}

/// Starts the child with `spec`, returns it once it is ready.
fn spawn_child(spec: serde_json::Value) -> (Child, Instant) {
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
/// ends, measured from "ready" by watching the journal (the median, and the slowest end, of a few runs). Kill delays are drawn from both
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
                        "none" | "install staging" | "os-install staging"
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
            if kind == "os" {
                confirm_os(&root.join("state"), &format!("boot-{version}-confirmed"));
            }
        }
        staged.sort();
        end.sort();
        // The slowest end: on a loaded machine a run can take several times the median.
        Self { staged: staged[staged.len() / 2], end: end[end.len() - 1] }
    }

    /// Half of the kills during extraction, half from just before `staged` to a quarter past the end.
    fn kill_delay(&self) -> Duration {
        let mut rng = rand::rng();
        match rng.random_bool(0.5) {
            true => self.staged.mul_f64(rng.random_range(0.0..1.0)),
            false => {
                let from = self.staged.saturating_sub(Duration::from_millis(2));
                let to = self.end.mul_f64(1.25) + Duration::from_millis(2);
                from + (to - from).mul_f64(rng.random_range(0.0..1.0))
            }
        }
    }
}

/// Reboots into the OS image waiting for confirmation (boot id `boot`) and confirms it.
fn confirm_os(state: &Path, boot: &str) {
    let mut installer = open_state(state, options(boot, None, 3));
    installer.recover().unwrap();
    let confirmed = installer.check_os_boot(None).unwrap();
    assert!(matches!(confirmed, Some(OsBoot::Confirmed { .. })), "{confirmed:?}");
}

/// Opens the state, waiting while another process holds its lock for a moment: a health-check process the killed child
/// was starting, or any process forked at that moment by another test's thread (between its fork and exec it holds
/// copies of this process's descriptors, the lock's included).
fn open_state(state: &Path, options: Options) -> Installer {
    for _ in 0..1000 {
        match Installer::with_options(state, options.clone()) {
            Err(custody_install::Error::Locked { .. }) => std::thread::sleep(Duration::from_millis(10)),
            other => return other.unwrap(),
        }
    }
    panic!("the state stayed locked");
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

    let mut installer = open_state(&root.join("state"), Options::default());
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
        let mut installer = open_state(&root.join("state"), Options::default());
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
        if let Some(recovered) = &recovered {
            // What the journal recovered: the interrupted install of `new`, its update, and what is current now.
            assert_eq!((recovered.operation, recovered.version.as_str()), (Operation::Install, new.as_str()));
            assert_eq!(recovered.update.map(|u| u.id), Some(app_update(&new, &destination).entry.id()));
            assert_eq!(recovered.current.as_deref(), Some(current.as_str()));
            if let RecoveryOutcome::Undone { restored } = &recovered.outcome {
                assert_eq!(restored.as_deref(), Some(old.as_str()));
            }
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
    let state = root.join("state");
    std::fs::create_dir(root.join("downloads")).unwrap();
    let mut installer = open_state(&state, options("boot-0", None, 3));
    installer.install(verify(&root.join("downloads"), &os_update("1.0"))).unwrap();
    drop(installer);
    confirm_os(&state, "boot-1");
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

        let mut installer = open_state(&state, options(&format!("boot-{new}"), None, 3));
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
        let pending = status.pending.map(|p| p.version);
        assert_eq!(pending.as_deref(), (current == new).then_some(new.as_str()), "iteration {iteration}: pending");
        drop(installer);
        if current == new {
            confirm_os(&state, &format!("boot-{new}-confirmed"));
            got_new += 1;
        } else {
            kept_old += 1;
        }
        old = current;
    }
    assert!(kept_old > 0 && got_new > 0, "old {kept_old}, new {got_new}");
}

/// The version in the active slot and whether an image waits for confirmation.
fn os_state(state: &Path, boot: &str) -> (String, Option<String>) {
    let installer = open_state(state, options(boot, None, 3));
    let status = installer.os_status().unwrap();
    let active = status.active.expect("a slot is active");
    let slot = status.slots.iter().find(|s| s.slot == active).unwrap();
    let version = slot.installed.as_ref().expect("the active slot holds an image").version.clone();
    assert!(std::fs::read(&slot.image).unwrap() == os_image(&version), "the active slot holds {version} complete");
    (version, status.pending.map(|p| p.version))
}

#[test]
fn killed_boot_checks_confirm_or_give_up_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let state = root.join("state");
    std::fs::create_dir(root.join("downloads")).unwrap();
    let mut installer = open_state(&state, options("boot-0", None, 3));
    installer.install(verify(&root.join("downloads"), &os_update("1.0"))).unwrap();
    drop(installer);
    confirm_os(&state, "boot-1");
    let check = |passes: bool| {
        let script = if passes { "sleep 0.02" } else { "sleep 0.02; exit 1" };
        ["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()]
    };
    let spec = |boot: &str, passes: bool| json!({"action": "check", "version": "", "boot": boot, "state": &state, "check": check(passes)});
    // How long an uninterrupted check takes, from "ready".
    let mut installer = open_state(&state, options("boot-m", None, 3));
    installer.install(verify(&root.join("downloads"), &os_update("1.1"))).unwrap();
    drop(installer);
    let (mut child, ready) = spawn_child(spec("boot-m2", true));
    assert!(child.wait().unwrap().success());
    let whole = ready.elapsed() + Duration::from_millis(5);
    let mut old = "1.1".to_owned();

    let mut outcomes = std::collections::BTreeMap::<&str, u32>::new();
    for iteration in 0..30 {
        let new = format!("3.{iteration}");
        let passes = iteration % 2 == 0;
        let mut installer = open_state(&state, options(&format!("boot-{new}"), None, 3));
        installer.install(verify(&root.join("downloads"), &os_update(&new))).unwrap();
        drop(installer);
        let boot = format!("boot-{new}-rebooted");
        let (mut child, ready) = spawn_child(spec(&boot, passes));
        std::thread::sleep(whole.mul_f64(rand::rng().random_range(0.0..1.0)).saturating_sub(ready.elapsed()));
        child.kill().unwrap();
        let finished = child.wait().unwrap().success();

        // The agent starts again on the same boot: recovery, then the check once more.
        let check = check(passes);
        let argv: Vec<&str> = check.iter().map(String::as_str).collect();
        let mut installer = open_state(&state, options(&boot, Some(&argv), 3));
        installer.recover().unwrap();
        let again = installer.check_os_boot(None).unwrap();
        let left = installer.os_status().unwrap().pending;
        drop(installer);
        let (current, pending) = os_state(&state, &boot);
        assert_eq!(pending, None, "iteration {iteration}: decided ({again:?}, {left:?})");
        let expected = if passes { &new } else { &old };
        assert_eq!(&current, expected, "iteration {iteration}: the check {}", if passes { "passes" } else { "fails" });
        match (&again, finished) {
            (None, _) => *outcomes.entry("decided before the kill").or_default() += 1,
            (Some(OsBoot::Confirmed { .. }), false) => *outcomes.entry("confirmed after the kill").or_default() += 1,
            (Some(OsBoot::Failed { restored, .. }), false) => {
                assert_eq!(restored.as_deref(), Some(old.as_str()));
                *outcomes.entry("given up after the kill").or_default() += 1;
            }
            other => panic!("iteration {iteration}: {other:?}"),
        }
        old = current;
    }
    println!("{outcomes:?}");
    assert!(outcomes.len() >= 2, "the kills landed before and after the decision: {outcomes:?}");
}

#[test]
fn the_boot_counter_gives_up_an_image_whose_check_never_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let state = root.join("state");
    std::fs::create_dir(root.join("downloads")).unwrap();
    let mut installer = open_state(&state, options("boot-0", None, 2));
    installer.install(verify(&root.join("downloads"), &os_update("1.0"))).unwrap();
    drop(installer);
    confirm_os(&state, "boot-1");
    let mut installer = open_state(&state, options("boot-1", None, 2));
    installer.install(verify(&root.join("downloads"), &os_update("2.0"))).unwrap();
    drop(installer);

    // The check takes the whole machine down (here: kills the process running it) on every boot.
    let crash = json!(["/bin/sh", "-c", "kill -9 $PPID"]);
    let boots_left = || {
        let installer = open_state(&state, Options::default());
        installer.os_status().unwrap().pending.map(|p| p.boots_left)
    };
    for (boot, left) in [("boot-2", 1), ("boot-3", 0), ("boot-3", 0)] {
        let spec = json!({"action": "check", "version": "", "boot": boot, "state": &state, "check": crash,
            "attempts": 2});
        let (mut child, _) = spawn_child(spec);
        assert!(!child.wait().unwrap().success(), "{boot}: the check killed it");
        assert_eq!(boots_left(), Some(left), "{boot}: each boot counts once");
    }
    let mut installer = open_state(&state, options("boot-4", Some(&["/bin/sh", "-c", "kill -9 $PPID"]), 2));
    installer.recover().unwrap();
    let outcome = installer.check_os_boot(None).unwrap().unwrap();
    let OsBoot::Failed { restored, reason, .. } = outcome else { panic!("{outcome:?}") };
    assert_eq!(restored.as_deref(), Some("1.0"));
    assert!(reason.contains("2 boots without confirmation"), "{reason}");
    let status = installer.os_status().unwrap();
    assert_eq!((status.active, status.pending), (Some(Slot::A), None));
}
