//! The update service against nginx on the same machine, in the same run (issue 4):
//!
//! - **content origin**: `wrk -t2 -c32` (HTTP keep-alive, 32 concurrent clients) fetching one 1 GiB file and one
//!   64 KiB file from the service's plain HTTP listener (`/targets/<sha256>.<name>`) and from nginx (`sendfile on`,
//!   `worker_processes 2`) serving the same bytes from the same tmpfs;
//! - **scan load**: no-change scans, each on a new TLS connection (devices scan hours apart, so no session
//!   resumption): `GET /metadata/2.root.json` (404) and `GET /metadata/timestamp.json` (200), by 32 concurrent clients
//!   with custody-tls's pinned client configuration, against the service's HTTPS listener and against nginx serving
//!   the same metadata files over TLS with the same certificate and key.
//!
//! The service runs in a child process (this binary with `serve DIR`, a 2-worker tokio runtime as `custody server`
//! gets on 2 cores), nginx as a child process with a configuration in a temporary directory; both listen on
//! 127.0.0.1 only and are stopped at the end. The sides alternate for `--rounds` rounds and the best round of each is
//! kept, so that load from other processes affects both alike; the load average is printed. Server and load
//! generator share the machine's cores. For content, the ratio of each round's pair of runs (seconds apart, so the
//! least disturbed by other load) and their median are printed too, and the servers' CPU time per MB sent.
//!
//! Needs `nginx` and `wrk` (Debian: `apt-get install -y nginx wrk`). Run: `cargo bench -p custody-server --bench
//! service` (add `-- --rounds R --seconds S --scans N --clients C`; defaults 3, 8, 10000, 32; `--only
//! big|small|content|scans` runs one comparison, `content` both sizes), or `bench/service.sh` (`bench/service.sh content`:
//! the content rows only).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONCURRENCY: usize = 32;
const BIG: u64 = 1 << 30;
const SMALL: u64 = 64 << 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        serve(Path::new(&args[2]));
        return;
    }
    let arg = |name: &str, default: u64| -> u64 {
        args.iter().skip_while(|a| *a != name).nth(1).and_then(|s| s.parse().ok()).unwrap_or(default)
    };
    let (rounds, seconds, scans) = (arg("--rounds", 3), arg("--seconds", 8), arg("--scans", 10_000));
    let clients = arg("--clients", CONCURRENCY as u64);
    // `--only big|small|content|scans`: one comparison (for profiling the service while it runs); `content` is both
    // sizes.
    let only = args.iter().skip_while(|a| *a != "--only").nth(1).cloned();
    let runs = |what: &str| {
        only.as_deref().is_none_or(|only| only == what || (only == "content" && matches!(what, "big" | "small")))
    };
    for tool in ["nginx", "wrk"] {
        if Command::new(tool).arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            eprintln!("{tool} not found: apt-get install -y nginx wrk");
            std::process::exit(2);
        }
    }
    // tmpfs when there is one: both servers read the same bytes from memory, disk noise stays out.
    let shm = Path::new("/dev/shm");
    let work = match shm.is_dir() {
        true => tempfile::tempdir_in(shm),
        false => tempfile::tempdir(),
    }
    .expect("temporary directory");
    let data = work.path().join("data");
    let service = Service::start(&data);

    let www = work.path().join("www");
    std::fs::create_dir_all(www.join("targets")).expect("www/targets");
    std::fs::create_dir_all(www.join("metadata")).expect("www/metadata");
    let big = add_content(&www, &data, "big.bin", BIG);
    let small = add_content(&www, &data, "small.bin", SMALL);
    // The same metadata files: timestamp.json; 2.root.json is absent on both (a no-change scan's 404).
    let metadata = data.join("repo").join("metadata");
    std::fs::copy(metadata.join("timestamp.json"), www.join("metadata").join("timestamp.json"))
        .expect("timestamp.json");
    let nginx = Nginx::start(work.path(), &www, &data.join("tls/chain.pem"), &data.join("tls/key.pem"));

    let load = || {
        let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    };
    println!("load average before: {}", load());
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let sizes =
        [("big", "content 1 GiB, 32 clients", &big, BIG), ("small", "content 64 KiB, 32 clients", &small, SMALL)];
    for (_, name, file, size) in sizes.into_iter().filter(|(what, ..)| runs(what)) {
        let (mut ours, mut theirs) = (0f64, 0f64);
        // Server CPU per MB sent (utime + stime of the service process, of nginx's workers): less sensitive than
        // throughput to what else runs on the machine.
        let (mut our_cpu, mut their_cpu) = (f64::MAX, f64::MAX);
        let service_pid = [service.child.id()];
        let mut paired = Vec::new();
        for _ in 0..rounds {
            let before = cpu_seconds(&service_pid);
            let our_rate = wrk(&format!("http://{}/targets/{file}", service.http), seconds, size);
            our_cpu = our_cpu.min((cpu_seconds(&service_pid) - before) / (our_rate * seconds as f64 / 1e6));
            ours = ours.max(our_rate);
            let workers = nginx.workers();
            let before = cpu_seconds(&workers);
            let rate = wrk(&format!("http://{}/targets/{file}", nginx.http), seconds, size);
            their_cpu = their_cpu.min((cpu_seconds(&workers) - before) / (rate * seconds as f64 / 1e6));
            theirs = theirs.max(rate);
            paired.push(our_rate / rate);
        }
        // Each round's two runs are seconds apart, so their ratio is the least disturbed by other load.
        paired.sort_by(f64::total_cmp);
        let listed: Vec<String> = paired.iter().map(|ratio| format!("{ratio:.2}")).collect();
        notes.push(format!(
            "{name}: custody/nginx of each round, sorted: {}; median {:.2}x",
            listed.join(" "),
            paired.get(paired.len() / 2).copied().unwrap_or(f64::NAN)
        ));
        rows.push((name.to_owned(), ours / 1e6, theirs / 1e6, "MB/s"));
        rows.push(("  server CPU per MB sent (lower is better)".to_owned(), our_cpu * 1e6, their_cpu * 1e6, "µs/MB"));
    }

    let client = custody_tls::TransportConfig::load(&data.join("client/custody.toml"))
        .and_then(|config| config.tls_client())
        .expect("the service's client configuration");
    let tls = client.connector();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (mut ours, mut theirs) = (0f64, 0f64);
    let (mut our_cpu, mut their_cpu) = (f64::MAX, f64::MAX);
    let (mut our_client_cpu, mut their_client_cpu) = (f64::MAX, f64::MAX);
    let client_pid = [std::process::id()];
    for _ in 0..rounds * u64::from(runs("scans")) {
        let (before, client_before) = (cpu_seconds(&[service.child.id()]), cpu_seconds(&client_pid));
        let rate = runtime.block_on(scan_load(&tls, service.https, clients, scans, seconds * 4));
        our_cpu = our_cpu.min((cpu_seconds(&[service.child.id()]) - before) / rate.1 as f64);
        our_client_cpu = our_client_cpu.min((cpu_seconds(&client_pid) - client_before) / rate.1 as f64);
        ours = ours.max(rate.0);
        let workers = nginx.workers();
        let (before, client_before) = (cpu_seconds(&workers), cpu_seconds(&client_pid));
        let rate = runtime.block_on(scan_load(&tls, nginx.https, clients, scans, seconds * 4));
        their_cpu = their_cpu.min((cpu_seconds(&workers) - before) / rate.1 as f64);
        their_client_cpu = their_client_cpu.min((cpu_seconds(&client_pid) - client_before) / rate.1 as f64);
        theirs = theirs.max(rate.0);
    }
    if runs("scans") {
        rows.push((
            format!("no-change scans, new TLS connection each ({scans}, {clients} clients)"),
            ours,
            theirs,
            "scans/s",
        ));
        rows.push(("server CPU per scan (lower is better)".into(), our_cpu * 1e6, their_cpu * 1e6, "µs"));
        rows.push(("load client CPU per scan".into(), our_client_cpu * 1e6, their_client_cpu * 1e6, "µs"));
    }

    println!("load average after: {}", load());
    println!("best of {rounds} alternating rounds; MB/s = 10^6 bytes/s; service and load generator share 2 cores");
    println!("{:<52} {:>10} {:>10} {:>7}  unit", "comparison", "custody", "nginx", "ratio");
    for (name, ours, theirs, unit) in rows {
        println!("{name:<52} {ours:>10.0} {theirs:>10.0} {:>6.2}x  {unit}", ours / theirs);
    }
    for note in notes {
        println!("{note}");
    }
    drop(nginx);
    service.stop();
}

/// `serve DIR`: the service on loopback, on a 2-worker runtime, until stdin closes.
fn serve(dir: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let config = custody_server::ServiceConfig::from_toml(
            "[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[limits]\nmax_concurrent_requests = 4096\n",
        )
        .expect("configuration");
        let running = custody_server::start(dir, config).await.expect("service start");
        println!("{} {}", running.https_addr, running.http_addr);
        std::io::stdout().flush().expect("stdout");
        tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await.ok();
        running.shutdown().await;
    });
}

/// The service in a child process (this binary, `serve DIR`).
struct Service {
    child: Child,
    https: SocketAddr,
    http: SocketAddr,
}

impl Service {
    fn start(data: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .arg("serve")
            .arg(data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("service process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("service addresses");
        let mut addrs = line.split_whitespace().map(|a| a.parse().expect("socket address"));
        let (https, http) = (addrs.next().expect("https address"), addrs.next().expect("http address"));
        Self { child, https, http }
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        self.child.wait().expect("service exit");
    }
}

/// Writes `size` pseudo-random bytes to `www/targets/<sha256>.<name>`, links them into the service's content store,
/// and returns the file name.
fn add_content(www: &Path, data: &Path, name: &str, size: u64) -> String {
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ size;
    let mut context = digest::Context::new(&digest::SHA256);
    let tmp = www.join("targets").join(name);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("content file"));
    let mut left = size;
    while left > 0 {
        for byte in block.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        let n = left.min(block.len() as u64) as usize;
        context.update(&block[..n]);
        file.write_all(&block[..n]).expect("content write");
        left -= n as u64;
    }
    drop(file);
    let hash = hex::encode(context.finish());
    let named = format!("{hash}.{name}");
    std::fs::rename(&tmp, www.join("targets").join(&named)).expect("rename content");
    let stored = data.join("content").join("sha256").join(&hash[..2]);
    std::fs::create_dir_all(&stored).expect("content store directory");
    std::fs::hard_link(www.join("targets").join(&named), stored.join(&hash)).expect("link into the content store");
    named
}

/// `wrk -t2 -c32` for `seconds`; bytes per second received.
fn wrk(url: &str, seconds: u64, size: u64) -> f64 {
    let output = Command::new("wrk")
        .args(["-t2", &format!("-c{CONCURRENCY}"), &format!("-d{seconds}s"), "--timeout", "60s", url])
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx") || !output.status.success() {
        panic!("wrk {url} failed:\n{text}{}", String::from_utf8_lossy(&output.stderr));
    }
    let field = |label: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(label)).map(str::trim).unwrap_or_else(|| panic!("{text}"))
    };
    let transfer = field("Transfer/sec:");
    let (number, unit) = transfer.split_at(transfer.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(transfer.len()));
    let scale = match unit {
        "GB" => 1u64 << 30,
        "MB" => 1 << 20,
        "KB" => 1 << 10,
        _ => 1,
    };
    let rate = number.parse::<f64>().expect("Transfer/sec") * scale as f64;
    eprintln!("wrk {url}: {:.0} MB/s, {} requests/s (files of {size} bytes)", rate / 1e6, field("Requests/sec:"));
    rate
}

/// Up to `scans` no-change scans by `clients` concurrent clients, each on a new TLS connection, for at most `limit`
/// seconds; returns scans per second and the number of scans.
async fn scan_load(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    clients: u64,
    scans: u64,
    limit: u64,
) -> (f64, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(limit);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (tls, next) = (tls.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while next.fetch_add(1, Ordering::Relaxed) < scans && Instant::now() < deadline {
                scan(&tls, addr).await;
                done += 1;
            }
            done
        }));
    }
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("scan task");
    }
    let rate = done as f64 / started.elapsed().as_secs_f64();
    eprintln!("scans against {addr}: {done} in {:.2?} = {rate:.0}/s", started.elapsed());
    (rate, done)
}

/// One no-change scan: a new TCP and TLS connection, the next root version (404), the timestamp (200).
async fn scan(tls: &tokio_rustls::TlsConnector, addr: SocketAddr) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    let mut stream = tls.connect(name, tcp).await.expect("TLS handshake");
    let mut buffer = Vec::with_capacity(4096);
    for (path, status) in [("/metadata/2.root.json", 404), ("/metadata/timestamp.json", 200)] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: custody-bench\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        let got = read_response(&mut stream, &mut buffer).await;
        assert_eq!(got, status, "{path} on {addr}");
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` body; returns its status.
async fn read_response(stream: &mut (impl AsyncReadExt + Unpin), buffer: &mut Vec<u8>) -> u16 {
    buffer.clear();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.expect("response");
        assert!(n > 0, "connection closed in the response head");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).expect("status line");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("content-length"))
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await.expect("response body");
        assert!(n > 0, "connection closed in the body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    status
}

/// User plus system CPU seconds of these processes (all their threads).
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            let fields: Vec<&str> =
                stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
            (fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0)) / ticks
        })
        .sum()
}

/// nginx as a child process (`daemon off`), configured in a temporary directory.
struct Nginx {
    child: Child,
    http: SocketAddr,
    https: SocketAddr,
}

impl Nginx {
    fn start(work: &Path, www: &Path, chain: &Path, key: &Path) -> Self {
        let prefix: PathBuf = work.join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).expect("nginx prefix");
        let (http, https) = (free_port(), free_port());
        let config = format!(
            "worker_processes 2;\ndaemon off;\nuser root;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
             types {{ application/json json; }}\n  default_type application/octet-stream;\n  root {www};\n\
             server {{ listen {http}; }}\n\
             server {{ listen {https} ssl; ssl_certificate {chain}; ssl_certificate_key {key};\n\
             ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off; }}\n}}\n",
            prefix = prefix.display(),
            www = www.display(),
            chain = chain.display(),
            key = key.display(),
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
        let nginx = Self { child, http, https };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(https).is_err() || nginx.workers().len() < 2 {
            assert!(Instant::now() < deadline, "nginx did not start; see {}", prefix.join("logs/error.log").display());
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }

    /// The worker processes (children of the master).
    fn workers(&self) -> Vec<u32> {
        let master = self.child.id().to_string();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.to_owned();
                (ppid == master).then_some(pid)
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of master and workers (SIGKILL would leave the workers behind).
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local address")
}
