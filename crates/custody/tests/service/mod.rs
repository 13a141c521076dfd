//! Real processes for this crate's end-to-end tests: `custody server`, and the devices, admin commands and
//! publishing the peer-to-peer tests share.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// Starts `custody --log info server --data DIR/data --config DIR/server.toml` with `config` written to that file, and
/// waits until it printed its addresses. Returns the process and its HTTPS and plain HTTP base URLs. Its log goes to
/// `DIR/server.log`, which a failure to start quotes.
pub fn spawn(dir: &Path, config: &str) -> (Child, String, String) {
    let config_file = dir.join("server.toml");
    std::fs::write(&config_file, config).unwrap();
    let log = dir.join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_custody"))
        .args(["--log", "info", "server", "--data"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&config_file)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut https, mut http) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        let url = line.split_whitespace().next().unwrap_or_default().to_owned();
        if url.starts_with("https://") {
            https = Some(url);
        } else if url.starts_with("http://") {
            http = Some(url);
        }
        if line.contains("client configuration") {
            break;
        }
    }
    // Keep draining stdout so that the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let (Some(https), Some(http)) = (https, http) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    };
    (child, https, http)
}

// Below: what the peer-to-peer tests (swarm.rs, cache_server.rs) share. Each test binary includes this module and
// uses a part of it.

/// A child process killed when dropped (a failing test leaves nothing running).
#[allow(dead_code)]
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The JSON a successful `--json` command printed; a failure panics with its output.
#[allow(dead_code)]
pub fn succeeded(output: &Output, what: &str) -> Value {
    assert!(
        output.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"))
}

/// `custody ARGS --config DATA/client/custody.toml` with the admin token.
#[allow(dead_code)]
pub fn admin(data: &Path, args: &[&str]) -> Value {
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_custody"))
        .args(args)
        .arg("--config")
        .arg(data.join("client/custody.toml"))
        .env("CUSTODY_TOKEN", token.trim())
        .output()
        .unwrap();
    succeeded(&output, &args.join(" "))
}

/// An OS image update of `product` 2.0 for OS family `os_family` 1.0 and later, made of `payload`, published with
/// pieces of `piece` bytes by the service's offline targets key (`custody publish`).
#[allow(dead_code)]
pub fn publish_os_image(data: &Path, dir: &Path, product: &str, os_family: &str, payload: &[u8], piece: usize) {
    let publisher = dir.join("publisher");
    std::fs::create_dir_all(&publisher).unwrap();
    std::fs::copy(data.join("offline-keys/root.json"), publisher.join("root.json")).unwrap();
    let key = std::fs::read_dir(data.join("offline-keys/repo-keys"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.file_name().unwrap().to_string_lossy().starts_with("targets."))
        .unwrap();
    let package = dir.join(format!("{product}-2.0.img"));
    std::fs::write(&package, payload).unwrap();
    let description = dir.join(format!("{product}.toml"));
    // An id of its own per product.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, product.as_bytes());
    let id = uuid::Uuid::from_slice(&digest.as_ref()[..16]).unwrap();
    std::fs::write(
        &description,
        format!(
            "id = \"{id}\"\nrevision = 1\ntitle = \"{product} 2.0\"\ndescription = \"An OS image.\"\nkind = \"os\"\n\
             product = \"{product}\"\nversion = \"2.0\"\nrelease_date = \"2026-11-01\"\n\
             classification = \"security\"\nseverity = \"critical\"\nreboot = \"required\"\n\n[applicability]\n\
             os = {{ family = \"{os_family}\", version_range = {{ min = \"1.0\" }} }}\n\n\
             [installer]\nhandler = \"os-image\"\nslot_layout = \"a-b\"\nformat = \"raw\"\n"
        ),
    )
    .unwrap();
    let piece = piece.to_string();
    admin(
        data,
        &[
            "publish",
            package.to_str().unwrap(),
            "--description",
            description.to_str().unwrap(),
            "--repo",
            publisher.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--piece-size",
            &piece,
            "--json",
        ],
    );
}

/// A device directory `dir/name` with `os-release` (`os_family` 1.0) and `agent.toml`: the service's client
/// configuration with the device's certificate files, then `agent` (the rest of the file: `[agent]`, `[p2p]`...),
/// in which `{root}` is replaced by the service's trusted root.
#[allow(dead_code)]
pub fn write_device(data: &Path, dir: &Path, name: &str, os_family: &str, agent: &str) -> PathBuf {
    let device = dir.join(name);
    std::fs::create_dir_all(&device).unwrap();
    let client = std::fs::read_to_string(data.join("client/custody.toml")).unwrap();
    let transport = client.replace("\"../pki/", &format!("\"{}/pki/", data.display())).replacen(
        "[tls]\n",
        "[tls]\nclient_cert = \"device-chain.pem\"\nclient_key = \"device-key.pem\"\n",
        1,
    );
    std::fs::write(device.join("os-release"), format!("ID={os_family}\nVERSION_ID=\"1.0\"\n")).unwrap();
    let root = data.join("client/root.json");
    let agent = agent.replace("{root}", &root.display().to_string());
    std::fs::write(device.join("agent.toml"), format!("{transport}\n{agent}")).unwrap();
    device
}

/// `custody agent download` on every device at once; each must download the one update it needs.
#[allow(dead_code)]
pub fn download_all(devices: &[PathBuf]) {
    let downloads: Vec<_> = devices
        .iter()
        .cloned()
        .map(|device| std::thread::spawn(move || agent(&device, &["download", "--json"])))
        .collect();
    for download in downloads {
        let output = download.join().unwrap();
        let result = succeeded(&output, "download");
        assert_eq!(result["result"][0]["result"], "downloaded", "{result}");
    }
}

/// `custody agent ARGS --config DEVICE/agent.toml`.
#[allow(dead_code)]
pub fn agent(device: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_custody"))
        .arg("agent")
        .args(args)
        .arg("--config")
        .arg(device.join("agent.toml"))
        .env_remove("CUSTODY_CONFIG")
        .output()
        .unwrap()
}

/// Enrolls `device` with `token` (`custody agent enroll`) and starts its daemon, logging to `DEVICE/daemon.log`.
#[allow(dead_code)]
pub fn enroll_and_run(device: &Path, token: &str) -> Running {
    let output = Command::new(env!("CARGO_BIN_EXE_custody"))
        .args(["agent", "enroll", "--json", "--token-env", "ENROLLMENT_TOKEN", "--hostname"])
        .arg(device.file_name().unwrap())
        .arg("--config")
        .arg(device.join("agent.toml"))
        .env("ENROLLMENT_TOKEN", token)
        .output()
        .unwrap();
    succeeded(&output, "custody agent enroll");
    let log = std::fs::File::create(device.join("daemon.log")).unwrap();
    let daemon = Command::new(env!("CARGO_BIN_EXE_custody"))
        .args(["--log", "info", "agent", "run", "--config"])
        .arg(device.join("agent.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Running(daemon)
}

#[allow(dead_code)]
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}
