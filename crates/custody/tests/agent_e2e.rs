//! The device agent against the real service, all as separate processes over real sockets on loopback: `custody
//! server` on an empty data directory, `custody publish`, a device enrolled with a group's enrollment token, and the
//! real `custody agent` binary, killed with SIGKILL at random points while it downloads and installs. After every
//! kill the product root must hold the old or the new version complete, and the next start of the agent must recover
//! and report the recovery to the service. The delivery statistics the device reports are summed per group by the
//! service (`custody admin delivery`) and shown by `custody agent status`.

mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use custody_catalog::ArchiveFormat;
use custody_install::PackageBuilder;
use custody_tls::{ProxySettings, TransportConfig};
use serde_json::{Value, json};

const PRODUCT: &str = "acme-app";
const OLD: &str = "1.0";
const NEW: &str = "2.0";
/// Kills of an agent installing NEW over OLD.
const KILLS: usize = 24;

/// A `custody server` process on a fresh data directory, devices identified by token.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    https: String,
    http: String,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (child, https, http) = service::spawn(
            dir.path(),
            "[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n\
             [devices]\nidentity = \"certificate-or-token\"\n",
        );
        Self { child, dir, https, http }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn client_config(&self) -> PathBuf {
        self.data().join("client/custody.toml")
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data().join("admin-token")).unwrap().trim().to_owned()
    }

    /// Runs `custody ARGS --config <client configuration>` with the admin token.
    fn custody(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_custody"))
            .args(args)
            .arg("--config")
            .arg(self.client_config())
            .env("CUSTODY_TOKEN", self.admin_token())
            .output()
            .unwrap()
    }

    /// The pinned client of an admin (or a device enrolling).
    fn pinned(&self) -> reqwest::Client {
        let config = TransportConfig::load(&self.client_config()).unwrap();
        config.tls_client().unwrap().http_client(&ProxySettings::direct()).unwrap()
    }

    /// Publishes `version` of the product, signed with the offline targets key of the data directory.
    fn publish(&self, version: &str, destination: &Path) {
        let work = self.dir.path().join(format!("publish-{version}"));
        std::fs::create_dir_all(work.join("publisher")).unwrap();
        std::fs::copy(self.data().join("offline-keys/root.json"), work.join("publisher/root.json")).unwrap();
        let package = work.join(format!("{PRODUCT}-{version}.tar.zst"));
        let file = std::fs::File::create(&package).unwrap();
        app_package(version).write(std::io::BufWriter::new(file), ArchiveFormat::TarZstd, 1).unwrap();
        let id = format!("3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a{:02}", version.replace('.', ""));
        let check = format!("test -f {}/VERSION", destination.display());
        let description = format!(
            "id = \"{id}\"\nrevision = 1\ntitle = \"Acme app {version}\"\ndescription = \"test\"\nkind = \"app\"\n\
             product = \"{PRODUCT}\"\nclassification = \"security\"\nversion = \"{version}\"\n\
             release_date = \"2026-01-15\"\nreboot = \"never\"\n[applicability]\n[installer]\nhandler = \"archive\"\n\
             format = \"tar-zstd\"\ndestination = \"{}\"\npost_install = [\"/bin/sh\", \"-c\", \"{check}\"]\n",
            destination.display()
        );
        std::fs::write(work.join("update.toml"), description).unwrap();
        let key = std::fs::read_dir(self.data().join("offline-keys/repo-keys"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("targets."))
            .unwrap();
        let output = self.custody(&[
            "publish",
            package.to_str().unwrap(),
            "--description",
            work.join("update.toml").to_str().unwrap(),
            "--repo",
            work.join("publisher").to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--json",
        ]);
        assert!(output.status.success(), "publish {version}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The app: a few hundred files whose content depends on the version, so that extracting it takes a while and a
/// tree mixing two versions, or a partial one, differs from both.
fn app_package(version: &str) -> PackageBuilder {
    let mut builder = PackageBuilder::new(PRODUCT, version);
    builder.file("VERSION", 0o644, format!("{version}\n")).dir("bin", 0o755).file(
        "bin/acme",
        0o755,
        format!("#!/bin/sh\necho {version}\n"),
    );
    for d in 0..12 {
        builder.dir(&format!("data{d}"), 0o755);
        for f in 0..25 {
            builder.file(&format!("data{d}/file{f}"), 0o644, noise(6 * 1024, &format!("{version} {d} {f}")));
        }
    }
    builder
}

/// Deterministic incompressible bytes.
fn noise(size: usize, seed: &str) -> Vec<u8> {
    let mut state = seed.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |s, b| s.rotate_left(5) ^ u64::from(b));
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A device: its directory, configuration and enrolled identity.
struct Device {
    dir: PathBuf,
    config: PathBuf,
    id: String,
}

impl Device {
    /// Enrolls over the pinned device API with `token` and writes the agent's configuration.
    async fn enroll(server: &Server, dir: &Path, token: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut random = [0u8; 16];
        aws_lc_rs::rand::fill(&mut random).unwrap();
        let body =
            json!({"enrollment_id": uuid::Builder::from_random_bytes(random).into_uuid(), "hostname": "kiosk-1"});
        let url = format!("{}/device/v1/enroll", server.https);
        let enrolled: Value =
            server.pinned().post(&url).bearer_auth(token).json(&body).send().await.unwrap().json().await.unwrap();
        std::fs::write(dir.join("device-token"), enrolled["identity"]["token"].as_str().unwrap()).unwrap();
        let transport = std::fs::read_to_string(server.client_config())
            .unwrap()
            .replace("\"../pki/", &format!("\"{}/pki/", server.data().display()));
        std::fs::write(dir.join("os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
        let config = format!(
            "{transport}\n[proxy]\nfrom_environment = false\n\n[agent]\nstate_dir = \"state\"\n\
             trusted_root = \"{root}\"\norigin_url = \"{http}/targets/\"\ndevice_token_file = \"device-token\"\n\
             products = [\"{PRODUCT}\"]\nos_release = \"os-release\"\nhardware_ids = []\ntime_zone = \"UTC\"\n\
             request_timeout = \"10s\"\nidle_timeout = \"10s\"\n\n[agent.local_api]\nsocket = \"agent.sock\"\n\n\
             [policy]\ndefault = \"auto\"\n",
            root = server.data().join("client/root.json").display(),
            http = server.http,
        );
        std::fs::write(dir.join("agent.toml"), config).unwrap();
        Self { dir: dir.to_owned(), config: dir.join("agent.toml"), id: enrolled["device_id"].as_str().unwrap().into() }
    }

    fn agent(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_custody"));
        command
            .arg("agent")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove("CUSTODY_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs `custody agent ARGS --json`; a start refused because the state is still locked (a health-check
    /// process of the killed agent may hold the lock's descriptor between its fork and exec) is tried again.
    fn run(&self, args: &[&str]) -> Value {
        for _ in 0..200 {
            let output = self.agent(&[args, &["--json"]].concat()).output().unwrap();
            let answer: Value = serde_json::from_slice(&output.stdout)
                .unwrap_or_else(|e| panic!("custody agent {args:?}: {e}: {}", String::from_utf8_lossy(&output.stderr)));
            let locked = answer["error"]["message"].as_str().is_some_and(|m| m.contains("is locked by another"));
            if answer["error"]["code"] == "busy" || locked {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            assert!(answer.get("error").is_none(), "custody agent {args:?}: {answer}");
            return answer["result"].clone();
        }
        panic!("the state stayed locked");
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn product_root(&self) -> PathBuf {
        self.state().join("install/products").join(PRODUCT).join("current")
    }

    fn journal(&self) -> PathBuf {
        self.state().join("install/journal.json")
    }

    /// Waits until the install journal's phase (`None`: no journal) satisfies `until`, or `child` ends.
    fn wait(&self, child: &mut Child, until: impl Fn(Option<&str>) -> bool) {
        loop {
            let journal: Option<Value> =
                std::fs::read(self.journal()).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
            let phase = journal.as_ref().map(|j| j["phase"].as_str().unwrap_or_default());
            if until(phase) || child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A uniform draw from [0, `max`).
fn fraction(max: f64) -> f64 {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64 * max
}

/// The file tree under `root` (following `root` itself): path → type, mode, content hash or link target.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let root = std::fs::canonicalize(root).unwrap();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let mode = metadata.permissions().mode() & 0o7777;
            let description = if metadata.is_symlink() {
                format!("symlink {}", std::fs::read_link(&path).unwrap().display())
            } else if metadata.is_dir() {
                pending.push(path.clone());
                format!("dir {mode:o}")
            } else {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &std::fs::read(&path).unwrap());
                format!("file {mode:o} {}", hex::encode(digest))
            };
            out.insert(path.strip_prefix(&root).unwrap().to_string_lossy().into_owned(), description);
        }
    }
    out
}

/// The ids of the `recovered` events the service holds for the device (among its latest 100 events).
async fn recovered_events(server: &Server, device: &Device) -> BTreeMap<String, Value> {
    let url = format!("{}/admin/v1/devices/{}", server.https, device.id);
    let detail: Value =
        server.pinned().get(&url).bearer_auth(server.admin_token()).send().await.unwrap().json().await.unwrap();
    let events = detail["events"].as_array().unwrap_or_else(|| panic!("{detail}"));
    events
        .iter()
        .map(|stored| &stored["event"])
        .filter(|event| event["type"] == "recovered")
        .map(|event| (event["id"].as_str().unwrap().to_owned(), event.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agents_leave_a_complete_version_and_report_their_recovery() {
    let server = Server::start();
    let devices = server.dir.path().join("devices");
    let destination = devices.join("opt").join(PRODUCT);
    server.publish(OLD, &destination);
    server.publish(NEW, &destination);
    let created = server.custody(&["admin", "enrollment-tokens", "create", "lab", "--group", "lab", "--json"]);
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    let device = Device::enroll(&server, &devices.join("kiosk-1"), created["token"].as_str().unwrap()).await;

    // The old version, then the new one uninterrupted: their trees, and how long an install of the new one takes
    // from the start of the process and from the moment its journal appears.
    device.run(&["install", "--update", "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a10"]);
    let old_tree = tree(&device.product_root());
    let started = Instant::now();
    let mut child = device.agent(&["install", "--json"]).spawn().unwrap();
    let mut journal_at = None;
    while child.try_wait().unwrap().is_none() {
        if journal_at.is_none() && device.journal().exists() {
            journal_at = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    let whole = started.elapsed();
    let journal_at = journal_at.expect("the install was journalled");
    let new_tree = tree(&device.product_root());
    assert_ne!(old_tree, new_tree);
    assert_eq!(std::fs::read_to_string(destination.join("VERSION")).unwrap(), format!("{NEW}\n"));
    device.run(&["rollback", PRODUCT]);
    assert_eq!(tree(&device.product_root()), old_tree);

    let mut seen = recovered_events(&server, &device).await;
    let mut outcomes = BTreeMap::<String, u32>::new();
    for iteration in 0..KILLS {
        let mut child = device.agent(&["install", "--json"]).spawn().unwrap();
        // The kills cycle through the points of a run: anywhere (scan, download, ...), during the extraction, during
        // the health check after the switch, while the finished install is recorded, after it (reports).
        match iteration % 5 {
            0 => std::thread::sleep(whole.mul_f64(fraction(1.0))),
            1 => {
                device.wait(&mut child, |phase| phase.is_some());
                std::thread::sleep((whole - journal_at).mul_f64(fraction(0.5)));
            }
            2 => device.wait(&mut child, |phase| phase == Some("switched")),
            3 => device.wait(&mut child, |phase| phase == Some("done")),
            _ => {
                device.wait(&mut child, |phase| phase.is_some());
                device.wait(&mut child, |phase| phase.is_none());
            }
        }
        let _ = child.kill();
        child.wait().unwrap();

        // Killed: the product root holds one version, complete.
        let journalled = device.journal().exists();
        let before = tree(&device.product_root());
        assert!(before == old_tree || before == new_tree, "iteration {iteration}: a mixed or partial tree");

        // The next start recovers, reports it, and leaves one version complete.
        let status = device.run(&["status"]);
        assert!(!device.journal().exists(), "iteration {iteration}: recovered");
        let after = tree(&device.product_root());
        assert!(after == old_tree || after == new_tree, "iteration {iteration}: a mixed or partial tree");
        let current = if after == new_tree { NEW } else { OLD };
        let recovered = recovered_events(&server, &device).await;
        let new_ids: BTreeSet<&String> = recovered.keys().filter(|id| !seen.contains_key(*id)).collect();
        match journalled {
            true => {
                assert_eq!(new_ids.len(), 1, "iteration {iteration}: one recovery reported at once");
                let event = &recovered[*new_ids.iter().next().unwrap()];
                assert_eq!((event["product"].as_str(), event["from"].as_str()), (Some(PRODUCT), Some(NEW)));
                assert_eq!(event["to"].as_str(), Some(current), "iteration {iteration}: {event}");
                assert_eq!(status["last_recovery"]["current"].as_str(), Some(current));
                let outcome = event["outcome"].as_str().unwrap();
                *outcomes.entry(format!("journalled, {outcome}, {current}")).or_default() += 1;
            }
            false => {
                assert!(new_ids.is_empty(), "iteration {iteration}: nothing to recover, nothing reported");
                *outcomes.entry(format!("not journalled, {current}")).or_default() += 1;
            }
        }
        seen = recovered;
        if current == NEW {
            device.run(&["rollback", PRODUCT]);
        }
    }
    println!("{KILLS} kills (install {whole:.1?}, journal after {journal_at:.1?}): {outcomes:#?}");
    assert!(outcomes.keys().any(|k| k.contains("undone")), "no kill interrupted an install: {outcomes:?}");
    assert!(outcomes.keys().any(|k| k.ends_with(NEW)), "no kill came after the switch: {outcomes:?}");

    // The daemon too: killed while it installs (asked through its socket), recovered and reported by the next one.
    let socket = device.dir.join("agent.sock");
    let mut daemon = device.agent(&["run"]).spawn().unwrap();
    while !socket.exists() {
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut client = device.agent(&["install", "--json"]).spawn().unwrap();
    device.wait(&mut client, |phase| phase.is_some());
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert!(device.journal().exists(), "the daemon was killed while it installed");
    assert!(!client.wait().unwrap().success(), "the client lost its daemon");
    let before = recovered_events(&server, &device).await.len();
    let mut daemon = device.agent(&["run"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while recovered_events(&server, &device).await.len() == before {
        assert!(Instant::now() < deadline, "the restarted daemon did not report its recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) }, 0);
    assert!(daemon.wait().unwrap().success());
    assert!(!device.journal().exists());
    assert_eq!(tree(&device.product_root()), old_tree, "the interrupted install was undone");

    // Delivery statistics: the device's totals, and the service's per group.
    let status = device.run(&["status"]);
    let downloads = status["delivery"]["downloads"].as_u64().unwrap();
    assert!(downloads >= 2, "{status}");
    assert!(status["delivery"]["bytes"]["from_http"].as_u64().unwrap() > 0);
    assert_eq!(status["delivery"]["percent_peer_caching"], 0.0);
    assert_eq!(status["last_downloads"][0]["product"], PRODUCT);
    let text = device.agent(&["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("bytes over HTTP") && text.contains("(peering 0.0 %)"), "{text}");
    let report = server.custody(&["admin", "delivery", "--json"]);
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let lab = &report["groups"][0];
    assert_eq!((lab["group"].as_str(), lab["devices"].as_u64()), (Some("lab"), Some(1)), "{report}");
    assert!(lab["downloads"].as_u64().unwrap() >= 2, "{report}");
    assert!(lab["bytes"]["from_http"].as_u64().unwrap() > 0);
    assert_eq!(lab["bytes"]["from_lan_peers"], 0);
    assert_eq!(lab["percent_peer_caching"], 0.0);
    let table = server.custody(&["admin", "delivery"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("lab"), "{table:?}");
}
