//! The agent's download path against the shell baseline (issue 4): a 1 GiB update from nginx over loopback,
//! downloaded and verified by `download::Downloader` (custody-tls's `plain_http_client`, custody-install's
//! `ArtifactWriter`, which hashes while writing and fsyncs at the end), against `curl -o FILE` followed by
//! `openssl dgst -sha256 FILE`. The agent side's peak memory (VmHWM of this process, reset just before) is printed
//! too; this process holds nothing else big.
//!
//! nginx runs as a child process (`daemon off`, `sendfile on`, `worker_processes 2`, 127.0.0.1) with a configuration
//! in a temporary directory and is stopped at the end. Files live on tmpfs (/dev/shm) when there is one, for both
//! sides. The two sides alternate for `--rounds` rounds and the best of each is kept; the load average is printed.
//!
//! Needs `nginx`, `curl`, `openssl` (Debian: `apt-get install -y nginx curl openssl`). Run: `cargo bench -p
//! custody-agent --bench download` (add `-- --mib N --rounds R`; defaults 1024, 3), or `bench/service.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use custody_agent::download::{Downloader, Job};
use custody_catalog::{ContentHasher, DeviceInventory, UpdateDescription, UpdateEntry};
use custody_tuf::{TargetFile, TrustedTarget};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| -> u64 {
        args.iter().skip_while(|a| *a != name).nth(1).and_then(|s| s.parse().ok()).unwrap_or(default)
    };
    let (mib, rounds) = (arg("--mib", 1024), arg("--rounds", 3));
    for (tool, flag) in [("nginx", "-v"), ("curl", "--version"), ("openssl", "version")] {
        if Command::new(tool).arg(flag).stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            eprintln!("{tool} not found: apt-get install -y nginx curl openssl");
            std::process::exit(2);
        }
    }
    let shm = Path::new("/dev/shm");
    let work = match shm.is_dir() {
        true => tempfile::tempdir_in(shm),
        false => tempfile::tempdir(),
    }
    .expect("temporary directory");
    let www = work.path().join("www");
    let staging = work.path().join("staging");
    std::fs::create_dir_all(www.join("bench")).expect("www");
    std::fs::create_dir_all(&staging).expect("staging");
    let (target, entry) = write_payload(&www, mib << 20);
    let sha256 = target.file().sha256().expect("sha256").to_owned();
    let nginx = Nginx::start(work.path(), &www);
    let base = format!("http://{}/", nginx.addr);
    let url = format!("{base}bench/{sha256}.payload");

    let downloader = Downloader::new(
        custody_tls::plain_http_client(&custody_tls::ProxySettings::default()).expect("plain HTTP client"),
        None,
        vec![base],
        Duration::from_secs(30),
        Duration::from_secs(30),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let device = device();
    let load = || {
        let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    };
    println!("load average before: {}", load());
    // Peak memory from here on: everything above (the payload was written in 1 MiB blocks) is not the agent's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (mut agent, mut shell) = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds {
        let out = work.path().join("curl.out");
        let started = Instant::now();
        let curl = Command::new("curl").args(["-sS", "--fail", "-o"]).arg(&out).arg(&url).status().expect("curl");
        let dgst = Command::new("openssl").args(["dgst", "-sha256"]).arg(&out).output().expect("openssl");
        let took = started.elapsed();
        assert!(curl.success() && String::from_utf8_lossy(&dgst.stdout).contains(&sha256), "curl + openssl failed");
        shell = shell.min(took);
        std::fs::remove_file(&out).expect("remove curl output");

        let job =
            Job { target: &target, entry: &entry, device: &device, staging_dir: &staging, consistent_snapshot: true };
        let started = Instant::now();
        let artifact = runtime.block_on(downloader.fetch(job, &mut |_| {})).expect("agent download");
        let took = started.elapsed();
        agent = agent.min(took);
        eprintln!("round: curl + openssl {shell:.2?} (best), agent {took:.2?}");
        drop(artifact);
        for file in std::fs::read_dir(&staging).expect("staging").flatten() {
            std::fs::remove_file(file.path()).expect("remove download");
        }
    }
    let peak = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into());
    println!("load average after: {}", load());
    let rate = |d: Duration| (mib << 20) as f64 / d.as_secs_f64() / 1e6;
    println!("{mib} MiB over loopback from nginx, best of {rounds} alternating rounds; MB/s = 10^6 bytes/s");
    println!("{:<44} {:>9} {:>8}", "path", "seconds", "MB/s");
    println!("{:<44} {:>9.2} {:>8.0}", "curl -o FILE; openssl dgst -sha256 FILE", shell.as_secs_f64(), rate(shell));
    println!("{:<44} {:>9.2} {:>8.0}", "agent Downloader::fetch (verified)", agent.as_secs_f64(), rate(agent));
    println!("agent time / (curl + openssl) time: {:.2}x (goal <= 0.60x)", agent.as_secs_f64() / shell.as_secs_f64());
    println!("agent peak memory (VmHWM of this process during the agent rounds): {peak} (goal <= 50 MiB)");
    drop(nginx);
}

/// Writes `size` pseudo-random bytes to `www/bench/<sha256>.payload` in 1 MiB blocks; returns the signed target and
/// its catalog entry.
fn write_payload(www: &Path, size: u64) -> (TrustedTarget, UpdateEntry) {
    let tmp = www.join("bench").join("payload");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("payload"));
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = size;
    while left > 0 {
        for byte in block.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n]).expect("payload write");
        left -= n as u64;
    }
    drop(file);
    let mut context = digest::Context::new(&digest::SHA256);
    let mut content = ContentHasher::new(None);
    let mut reader = std::fs::File::open(&tmp).expect("payload");
    loop {
        let n = reader.read(&mut block).expect("payload read");
        if n == 0 {
            break;
        }
        context.update(&block[..n]);
        content.update(&block[..n]);
    }
    let sha256 = hex::encode(context.finish());
    std::fs::rename(&tmp, www.join("bench").join(format!("{sha256}.payload"))).expect("rename payload");
    let (content, _) = content.finish().expect("content info");
    let description: UpdateDescription = serde_json::from_value(serde_json::json!({
        "id": "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90", "revision": 1, "title": "bench", "description": "",
        "kind": "store-app", "product": "bench", "classification": "update", "version": "1",
        "release_date": "2025-06-10", "reboot": "never", "applicability": {}, "installer": {"handler": "store-app"},
    }))
    .expect("description");
    let entry = UpdateEntry::from_description(&description, content).expect("entry");
    let hashes = BTreeMap::from([("sha256".to_owned(), sha256)]);
    let file = TargetFile { length: size, hashes, custom: Some(entry.to_custom_json()), unrecognized: BTreeMap::new() };
    (TrustedTarget::for_tests("bench/payload".into(), "targets".into(), file), entry)
}

fn device() -> DeviceInventory {
    DeviceInventory {
        os_family: "debian".parse().expect("family"),
        os_version: None,
        arch: "x86_64".parse().expect("arch"),
        products: BTreeMap::new(),
        hardware_ids: BTreeSet::new(),
        installed_updates: BTreeSet::new(),
    }
}

/// nginx as a child process (`daemon off`) serving `www` over plain HTTP on loopback.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    fn start(work: &Path, www: &Path) -> Self {
        let prefix = work.join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).expect("nginx prefix");
        let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
        let config = format!(
            "worker_processes 2;\ndaemon off;\nuser root;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  default_type application/octet-stream;\n\
             root {www};\n  server {{ listen {addr}; }}\n}}\n",
            prefix = prefix.display(),
            www = www.display(),
        );
        let file = prefix.join("nginx.conf");
        std::fs::write(&file, config).expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&file)
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start; see {}", prefix.join("logs/error.log").display());
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of master and workers (SIGKILL would leave the workers behind).
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}
