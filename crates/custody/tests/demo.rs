//! `custody demo` as a real process: it creates the service's data directory, publishes an update of every kind,
//! runs two devices (agents as child processes) that enroll, scan, download, verify and install, and reports what
//! each device did and what the admin API says about compliance.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::Value;

const KINDS: [&str; 5] = ["app", "definitions", "driver", "os", "store-app"];

fn demo(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_custody"))
        .args(["demo", "--data"])
        .arg(dir)
        .args(extra)
        .env_remove("CUSTODY_CONFIG")
        .env_remove("CUSTODY_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn demo_installs_every_kind_on_every_device_and_reports_compliance() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let output = demo(&dir, &["--devices", "2", "--exit", "--json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}\n{stderr}", output.status);
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}\n{stderr}"));

    let devices = summary["devices"].as_array().unwrap();
    let names: Vec<&str> = devices.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["device-1", "device-2"], "{summary}");
    for device in devices {
        let mut installed: Vec<&str> = device["installed"].as_array().unwrap().iter().flat_map(Value::as_str).collect();
        installed.sort_unstable();
        assert_eq!(installed, KINDS, "{device}");
        assert_eq!(device["needed"], 5, "{device}");
        assert_eq!(device["failed"].as_array().unwrap().len(), 0, "{device}");
        assert!(device["bytes_downloaded"].as_u64().unwrap() > 1 << 20, "{device}");
        // The app really is where its signed destination says, through the install engine's link.
        let name = device["name"].as_str().unwrap();
        let version = std::fs::read_to_string(dir.join("devices").join(name).join("opt/demo-app/VERSION")).unwrap();
        assert_eq!(version, "1.0\n");
        // `custody agent enroll` gave the device a certificate from the device intermediate; its key is private.
        let device_dir = dir.join("devices").join(name);
        let chain = std::fs::read_to_string(device_dir.join("device-chain.pem")).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "device certificate and device intermediate");
        let mode = std::fs::metadata(device_dir.join("device-key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Enrolling an enrolled device again is refused without --force, and nothing is overwritten.
    let key_before = std::fs::read(dir.join("devices/device-1/device-key.pem")).unwrap();
    let again = Command::new(env!("CARGO_BIN_EXE_custody"))
        .args(["agent", "enroll", "--token-env", "NO_SUCH_TOKEN_NEEDED", "--config"])
        .arg(dir.join("devices/device-1/agent.toml"))
        .env("NO_SUCH_TOKEN_NEEDED", "custody_enroll_unused")
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already enrolled"), "{again:?}");
    assert_eq!(std::fs::read(dir.join("devices/device-1/device-key.pem")).unwrap(), key_before);

    // Compliance from the admin API: every device has every update meant for it; the OS waits for a reboot.
    let mut per_kind: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for update in summary["compliance"]["updates"].as_array().unwrap() {
        let kind = update["update"]["kind"].as_str().unwrap().to_owned();
        let counts = &update["counts"];
        assert_eq!(counts["failed"], 0, "{update}");
        assert_eq!(counts["needed"], 0, "{update}");
        let done = counts["installed"].as_u64().unwrap() + counts["pending_reboot"].as_u64().unwrap();
        let entry = per_kind.entry(kind.clone()).or_default();
        entry.0 += done;
        entry.1 += counts["pending_reboot"].as_u64().unwrap();
        if kind == "os" {
            assert_eq!(counts["pending_reboot"], 2, "{update}");
        }
    }
    let kinds: Vec<&str> = per_kind.keys().map(String::as_str).collect();
    assert_eq!(kinds, KINDS, "{summary}");
    for (kind, (done, _)) in &per_kind {
        assert_eq!(*done, 2, "{kind}: both devices installed it: {summary}");
    }

    // A second run replaces the previous demo: a new service, and devices that install everything again.
    let again = demo(&dir, &["--devices", "1", "--exit", "--json"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["devices"].as_array().unwrap().len(), 1, "{again}");
    assert_eq!(again["devices"][0]["installed"].as_array().unwrap().len(), 5, "{again}");
    assert!(!dir.join("devices/device-2").exists(), "the previous demo's devices are gone");

    // A directory that is not a demo is refused and left alone.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let refused = demo(&other, &["--exit"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not empty and not a previous demo"), "{stderr}");
    assert_eq!(std::fs::read_to_string(other.join("notes.txt")).unwrap(), "mine", "nothing was touched");
}
