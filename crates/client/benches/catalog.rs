//! Signed metadata at catalog scale: custody's client against python-tuf 7.0.0's ngclient on the same repositories,
//! in the same run, and the bytes a device with a few products fetches from a large catalog.
//!
//! Run: `cargo bench -p custody-client --bench catalog` (options after `--`: `--reps N` timing repetitions, default 7;
//! `--whole-reps N` for the whole-catalog row, default 3; `--updates N`, `--bins N`, `--products N` repository
//! parameters; `--only timing|scan`; `--skip-whole`).
//!
//! 1. Repositories are generated once with custody-repo into `bench/out/<parameters>/` and reused by later runs
//!    (generation time is printed, not compared). Every target carries a realistic custody catalog entry (unique
//!    UUIDs, title, product, version, applicability, installer, content with length, SHA-256 and piece tree).
//!    - `bins-…`: N updates in 256 hashed bins delegated by the top-level targets role.
//!    - `products-…`: the same updates in 500 products, each its own delegated role (`delegate_product`).
//! 2. Timing: each phase runs in a fresh child process — this binary with `--phase` for custody, and
//!    `bench/python_tuf_catalog.py` for python-tuf — which times only its in-process operation (wall clock and
//!    process CPU time) and reports the requests it made through its fetcher and its peak RSS (`VmHWM` of the whole
//!    process, runtime or interpreter included; the first row is that baseline). Both clients read the repository
//!    from local files (custody: `FileFetcher` on `file://` URLs; python-tuf: a `FetcherInterface` that reads the
//!    same files) and persist what they trust into their own metadata directory (custody with fsync, python-tuf
//!    without). custody runs with `snapshot_proofs: false` here: both do the standard workflow with the full
//!    snapshot. Phases (see `child`): (a) `Updater` construction + `refresh()` from a directory holding only the
//!    trusted root; (b) the same over the metadata of an earlier refresh, nothing changed; (c) after an untimed
//!    construction + refresh as in (b), `target_info` / `get_targetinfo` of one path, whose bin is not stored
//!    locally (read, verified, stored); and the same for one path in every bin (the whole catalog). Sides
//!    alternate, and the median and best of each side's runs are printed.
//! 3. Scan bytes: a device with 5 of the 500 products scans (custody `Updater` with a byte-counting fetcher over
//!    `FileFetcher`), with snapshot proofs and, for contrast, without.
//!
//! python-tuf comes from `$CUSTODY_BENCH_PYTHON` if set, else from a virtual environment that this bench creates in
//! `bench/out/venv` (`pip install tuf==7.0.0 securesystemslib[crypto]`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use custody_catalog::pieces::PieceSize;
use custody_catalog::{ContentHasher, UpdateDescription, UpdateEntry};
use custody_client::{FetchError, Fetcher, FileFetcher, RoleLimits, Updater, UpdaterConfig};
use custody_repo::{
    AddTarget, DelegateOptions, DelegationKind, Expiry, ExpiryConfig, InitOptions, KeySpec, Outcome, Passphrase,
    Repository,
};
use custody_tuf::{Metadata, PrivateKeyKind, Snapshot, Targets, Timestamp};
use serde_json::{Value, json};

/// Bump to regenerate cached repositories after a change to the generator.
const GENERATOR_VERSION: u32 = 1;
/// How many of the catalog's products the scanning device has.
const DEVICE_PRODUCTS: usize = 5;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if let Some(phase) = value(&args, "--phase") {
        child(&phase, &args);
        return;
    }
    let number = |name: &str, default: usize| value(&args, name).map_or(default, |v| v.parse().expect(name));
    let params = Params {
        updates: number("--updates", 100_000),
        bins: number("--bins", 256) as u32,
        products: number("--products", 500),
    };
    let reps = number("--reps", 7);
    let whole_reps = if args.iter().any(|a| a == "--skip-whole") { 0 } else { number("--whole-reps", 3) };
    let only = value(&args, "--only");

    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/out");
    std::fs::create_dir_all(&out).expect("create bench/out");
    let out = out.canonicalize().expect("bench/out");
    println!(
        "catalog: {} updates; {} hashed bins (timing); {} products, a device with {DEVICE_PRODUCTS} (scan bytes)",
        params.updates, params.bins, params.products
    );
    if only.as_deref() != Some("scan") {
        let repo =
            ensure_repo(&out, &format!("bins-v{GENERATOR_VERSION}-u{}-b{}", params.updates, params.bins), |dir| {
                generate_bins_repo(dir, &params)
            });
        let python = python(&out);
        timing(&out, &repo, &python, reps, whole_reps);
    }
    if only.as_deref() != Some("timing") {
        let repo = ensure_repo(
            &out,
            &format!("products-v{GENERATOR_VERSION}-u{}-p{}", params.updates, params.products),
            |dir| generate_products_repo(dir, &params),
        );
        scan_bytes(&out, &repo, &params);
    }
}

fn value(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn values(args: &[String], name: &str) -> Vec<String> {
    args.windows(2).filter(|w| w[0] == name).map(|w| w[1].clone()).collect()
}

struct Params {
    updates: usize,
    bins: u32,
    products: usize,
}

// ---------------------------------------------------------------------------------------------------------------
// Repository generation
// ---------------------------------------------------------------------------------------------------------------

/// Returns `out/key`, generating it with `generate` unless a finished copy is there.
fn ensure_repo(out: &Path, key: &str, generate: impl FnOnce(&Path)) -> PathBuf {
    let dir = out.join(key);
    let ready = dir.join("ready.json");
    if let Ok(text) = std::fs::read_to_string(&ready) {
        let seconds = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["generation_seconds"].as_f64());
        println!("repository {key}: cached (generated in {:.1} s)", seconds.unwrap_or(f64::NAN));
        return dir;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("remove an unfinished repository");
    }
    println!("repository {key}: generating…");
    let started = Instant::now();
    generate(&dir);
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(&ready, json!({ "generation_seconds": seconds }).to_string()).expect("write ready.json");
    println!("repository {key}: generated in {seconds:.1} s");
    dir
}

fn init_options() -> InitOptions {
    let one = KeySpec::single(PrivateKeyKind::Ed25519);
    // Long validity, so that a cached repository stays usable; the length of the dates is the same.
    let days = |d: u64| Expiry(d * 86_400);
    let expiry = ExpiryConfig {
        root: days(3650),
        targets: days(3650),
        delegated: days(3650),
        snapshot: days(3650),
        timestamp: days(3650),
    };
    InitOptions { root: one, targets: one, snapshot: one, timestamp: one, expiry }
}

fn published(outcome: Outcome) {
    assert!(matches!(outcome, Outcome::Published { .. }), "not published: {outcome:?}");
}

/// 100,000 updates in 256 hashed bins under the top-level targets role.
fn generate_bins_repo(dir: &Path, params: &Params) {
    let (mut repo, _) = Repository::init(dir, &init_options(), Passphrase::none()).expect("init");
    published(
        repo.delegate(&DelegateOptions {
            name: "bins".into(),
            delegator: "targets".into(),
            kind: DelegationKind::Bins(params.bins),
            terminating: true,
            keys: KeySpec::single(PrivateKeyKind::Ed25519),
            expiry: None,
            move_targets: false,
        })
        .expect("delegate bins"),
    );
    let names = product_names(params.products);
    published(repo.add_targets((0..params.updates).map(|i| update(i, &names)), None).expect("add targets"));
    // One target path per bin, for the lookups.
    let metadata = dir.join("metadata");
    let (_, snapshot) = current_snapshot(&metadata);
    let targets = load_targets(&metadata, &snapshot, "targets");
    let roles = targets.delegations.as_ref().and_then(|d| d.roles.clone()).expect("bins");
    let mut per_bin: Vec<Option<String>> = vec![None; roles.len()];
    for i in 0..params.updates {
        let path = update_path(i, &names);
        for (slot, role) in per_bin.iter_mut().zip(&roles) {
            if slot.is_none() && role.is_delegated_path(&path) {
                *slot = Some(path.clone());
            }
        }
        if per_bin.iter().all(Option::is_some) {
            break;
        }
    }
    let per_bin: Vec<String> = per_bin.into_iter().map(|p| p.expect("every bin holds a target")).collect();
    std::fs::write(dir.join("paths.json"), serde_json::to_vec(&per_bin).expect("json")).expect("paths.json");
}

/// The same updates, 500 products each its own delegated role.
fn generate_products_repo(dir: &Path, params: &Params) {
    let (mut repo, _) = Repository::init(dir, &init_options(), Passphrase::none()).expect("init");
    let names = product_names(params.products);
    for name in &names {
        published(repo.delegate_product(name, None, &KeySpec::single(PrivateKeyKind::Ed25519)).expect("product"));
    }
    published(repo.add_targets((0..params.updates).map(|i| update(i, &names)), None).expect("add targets"));
    // Keep only the proofs of the current snapshot: every delegation published one set, and clients read the
    // current one only (this keeps the per-run working copies small).
    let metadata = dir.join("metadata");
    let (version, _) = current_snapshot(&metadata);
    for entry in std::fs::read_dir(metadata.join("merkle")).expect("merkle") {
        let path = entry.expect("merkle entry").path();
        if path.file_name().and_then(|n| n.to_str()) != Some(version.to_string().as_str()) {
            std::fs::remove_dir_all(&path).expect("remove old proofs");
        }
    }
}

/// 500 product names like `acme-agent`, `globex-firmware`.
fn product_names(count: usize) -> Vec<String> {
    const VENDORS: [&str; 20] = [
        "acme",
        "globex",
        "initech",
        "umbrella",
        "hooli",
        "vandelay",
        "stark",
        "wayne",
        "tyrell",
        "cyberdyne",
        "soylent",
        "wonka",
        "gringotts",
        "oscorp",
        "aperture",
        "blackmesa",
        "massive",
        "nakatomi",
        "monarch",
        "virtucon",
    ];
    const PARTS: [&str; 25] = [
        "agent",
        "firmware",
        "kernel",
        "bootloader",
        "modem",
        "gpu-driver",
        "wifi-driver",
        "camera",
        "display",
        "audio",
        "sensor-hub",
        "telemetry",
        "vpn",
        "browser",
        "office",
        "antivirus",
        "backup",
        "database",
        "runtime",
        "shell",
        "updater",
        "scanner",
        "printer",
        "storage",
        "bluetooth",
    ];
    (0..count)
        .map(|i| {
            let base = format!("{}-{}", VENDORS[i % VENDORS.len()], PARTS[(i / VENDORS.len()) % PARTS.len()]);
            match i / (VENDORS.len() * PARTS.len()) {
                0 => base,
                n => format!("{base}-{n}"),
            }
        })
        .collect()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().try_into().expect("32 bytes")
}

/// The deterministic UUID (version 4 layout) of update `i`.
fn update_id(i: usize) -> String {
    let hash = sha256(format!("custody bench update id {i}").as_bytes());
    let bytes: [u8; 16] = hash[..16].try_into().expect("16 bytes");
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

/// Update `i` belongs to product `i % products` and is that product's update number `i / products`.
fn update_version(n: usize) -> String {
    format!("{}.{}.{}", 2 + n / 100, (n / 10) % 10, n % 10)
}

fn update_path(i: usize, names: &[String]) -> String {
    let product = &names[i % names.len()];
    let n = i / names.len();
    let extension = ["tar.zst", "img.zst", "tar", "defs", "pkg"][(i % names.len()) % 5];
    format!("{product}/{product}-{}.{extension}", update_version(n))
}

/// Update `i`: a small payload, and a full catalog entry describing it.
fn update(i: usize, names: &[String]) -> AddTarget {
    let product_index = i % names.len();
    let product = &names[product_index];
    let n = i / names.len();
    let version = update_version(n);
    let seed = sha256(format!("custody bench payload {i}").as_bytes());
    let length = 512 + (i % 7) * 97;
    let content: Vec<u8> = seed.iter().cycle().take(length).copied().collect();
    let mut hasher = ContentHasher::new(Some(PieceSize::new(1 << 20).expect("1 MiB pieces")));
    hasher.update(&content);
    let (info, _) = hasher.finish().expect("content");

    let (classification, severity) = match i % 6 {
        0 => ("security", Some("critical")),
        1 => ("security", Some("important")),
        2 => ("critical", Some("moderate")),
        3 => ("update", None),
        4 => ("feature", None),
        _ => ("update", None),
    };
    let mut description = serde_json::Map::new();
    description.insert("id".into(), update_id(i).into());
    description.insert("revision".into(), (1 + (i % 3) as u64).into());
    let kind = ["app", "os", "driver", "definitions", "store-app"][product_index % 5];
    let installer = match kind {
        "app" => json!({
            "handler": "archive",
            "format": "tar-zstd",
            "destination": format!("/opt/{product}"),
            "post_install": [format!("/opt/{product}/bin/{product}"), "--migrate-config"],
        }),
        "os" => json!({ "handler": "os-image", "slot_layout": "a-b", "format": "raw-zstd" }),
        "driver" => json!({
            "handler": "driver",
            "format": "tar",
            "destination": format!("/lib/modules/extra/{product}"),
            "reload_command": ["/usr/sbin/modprobe", "--first-time", product],
        }),
        "definitions" => json!({ "handler": "definitions", "keep": 3 }),
        _ => json!({ "handler": "store-app" }),
    };
    let (classification, severity) =
        if kind == "definitions" { ("definitions", None) } else { (classification, severity) };
    description.insert("title".into(), format!("{product} {version}").into());
    description.insert(
        "description".into(),
        format!(
            "{product} {version}: {} release. Fixes defects reported against {} and updates bundled \
             dependencies.\nSee the release notes of {product} for details.",
            classification,
            if n == 0 { "the initial release".to_owned() } else { update_version(n - 1) }
        )
        .into(),
    );
    description.insert("kind".into(), kind.into());
    description.insert("product".into(), product.clone().into());
    description.insert("classification".into(), classification.into());
    if let Some(severity) = severity {
        description.insert("severity".into(), severity.into());
    }
    description.insert("version".into(), version.clone().into());
    description
        .insert("release_date".into(), format!("20{}-{:02}-{:02}", 24 + n / 120, 1 + (n / 10) % 12, 1 + n % 28).into());
    let mut applicability = json!({
        "os": { "family": "debian", "version_range": { "min": "12", "below": "14" } },
        "arch": ["x86_64", "aarch64"],
    });
    if kind != "os" {
        applicability["installed"] = json!({ "product": product, "version_range": { "min": "1.0", "below": version } });
    }
    if kind == "driver" {
        applicability["hardware_ids"] =
            json!([format!("pci:8086:{:04x}", 0x1500 + product_index), format!("usb:0bda:{:04x}", 0x8150 + n % 64)]);
    }
    description.insert("applicability".into(), applicability);
    if n > 0 {
        let previous = update_id(i - names.len());
        if n.is_multiple_of(4) {
            description.insert("prerequisites".into(), json!([{ "update": previous }]));
        }
        description.insert("supersedes".into(), json!([previous]));
    }
    description.insert("reboot".into(), (if kind == "os" || kind == "driver" { "required" } else { "never" }).into());
    description.insert("installer".into(), installer);
    let entry = UpdateEntry::from_description(&UpdateDescription(description), info).expect("valid catalog entry");
    AddTarget { path: update_path(i, names), content, custom: Some(entry.to_custom_json()) }
}

fn current_snapshot(metadata: &Path) -> (u64, Snapshot) {
    let timestamp = std::fs::read(metadata.join("timestamp.json")).expect("timestamp.json");
    let timestamp = Metadata::<Timestamp>::from_bytes(&timestamp, "timestamp").expect("timestamp");
    let version = timestamp.signed().snapshot_meta().version;
    let bytes = std::fs::read(metadata.join(format!("{version}.snapshot.json"))).expect("snapshot");
    (version, Metadata::<Snapshot>::from_bytes(&bytes, "snapshot").expect("snapshot").signed().clone())
}

fn load_targets(metadata: &Path, snapshot: &Snapshot, role: &str) -> Targets {
    let version = snapshot.meta[&format!("{role}.json")].version;
    let file = metadata.join(format!("{version}.{}.json", custody_client::encode_role(role)));
    let bytes = std::fs::read(&file).expect("targets metadata");
    Metadata::<Targets>::from_bytes(&bytes, role).expect("targets").signed().clone()
}

/// Size of the current version of every metadata file a standard client could read: root, timestamp, snapshot, and
/// every targets role in snapshot.
fn catalog_sizes(metadata: &Path) -> BTreeMap<String, u64> {
    let size = |name: &str| std::fs::metadata(metadata.join(name)).expect("metadata file").len();
    let (version, snapshot) = current_snapshot(metadata);
    let mut sizes = BTreeMap::new();
    sizes.insert("root.json".to_owned(), size("root.json"));
    sizes.insert("timestamp.json".to_owned(), size("timestamp.json"));
    sizes.insert("snapshot.json".to_owned(), size(&format!("{version}.snapshot.json")));
    for (file, meta) in &snapshot.meta {
        let role = file.strip_suffix(".json").expect("role file");
        sizes.insert(file.clone(), size(&format!("{}.{}.json", meta.version, custody_client::encode_role(role))));
    }
    sizes
}

// ---------------------------------------------------------------------------------------------------------------
// A fetcher that records what it was asked for
// ---------------------------------------------------------------------------------------------------------------

/// Wraps a fetcher and records each request: the URL and the bytes returned (`None`: not found).
struct Counting<F> {
    inner: F,
    log: Mutex<Vec<(String, Option<u64>)>>,
}

impl<F> Counting<F> {
    fn new(inner: F) -> Self {
        Self { inner, log: Mutex::new(Vec::new()) }
    }

    fn take(&self) -> Vec<(String, Option<u64>)> {
        std::mem::take(&mut *self.log.lock().expect("log"))
    }
}

impl<F: Fetcher + Sync> Fetcher for Counting<F> {
    async fn fetch(&self, url: &str, max_length: u64) -> Result<Option<Vec<u8>>, FetchError> {
        let result = self.inner.fetch(url, max_length).await;
        if let Ok(body) = &result {
            self.log.lock().expect("log").push((url.to_owned(), body.as_ref().map(|b| b.len() as u64)));
        }
        result
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn updater<'a>(
    device: &Path,
    metadata: &Path,
    fetcher: &'a Counting<FileFetcher>,
    snapshot_proofs: bool,
) -> Updater<&'a Counting<FileFetcher>> {
    let config = UpdaterConfig {
        metadata_dir: device.to_owned(),
        metadata_url: format!("file://{}", metadata.display()),
        limits: RoleLimits::default(),
        snapshot_proofs,
    };
    Updater::new(config, fetcher, jiff::Timestamp::now()).expect("updater")
}

impl<F: Fetcher + Sync> Fetcher for &Counting<F> {
    fn fetch(
        &self,
        url: &str,
        max_length: u64,
    ) -> impl std::future::Future<Output = Result<Option<Vec<u8>>, FetchError>> + Send {
        (**self).fetch(url, max_length)
    }
}

/// Wall-clock and process CPU time (all threads: `CLOCK_PROCESS_CPUTIME_ID`, as Python's `time.process_time`).
struct Clock {
    wall: Instant,
    cpu: f64,
}

impl Clock {
    fn start() -> Self {
        Self { wall: Instant::now(), cpu: process_cpu_seconds() }
    }

    /// (wall seconds, CPU seconds) since `start`.
    fn elapsed(&self) -> (f64, f64) {
        (self.wall.elapsed().as_secs_f64(), process_cpu_seconds() - self.cpu)
    }
}

fn process_cpu_seconds() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `clock_gettime` writes one `timespec`, which `now` is.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(result, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

// ---------------------------------------------------------------------------------------------------------------
// Child process: one phase of custody's client
// ---------------------------------------------------------------------------------------------------------------

/// Runs one phase and prints `{"seconds", "requests", "found"}` as one JSON line.
///
/// - `idle`: nothing (the process's own footprint).
/// - `first`: `Updater::new` + `refresh()` with a metadata directory holding only the trusted root.
/// - `unchanged`: `Updater::new` + `refresh()` with the metadata of an earlier refresh, the repository unchanged.
/// - `resolve`: after an (untimed) `Updater::new` + `refresh()` as in `unchanged`, `target_info(path)` for each
///   `--path`; the bins are not stored locally, so each is read, verified and stored.
fn child(phase: &str, args: &[String]) {
    let metadata = PathBuf::from(value(args, "--metadata").unwrap_or_default());
    let work = PathBuf::from(value(args, "--work").unwrap_or_default());
    let device = work.join("metadata");
    let paths = values(args, "--path");
    let rt = runtime();
    let fetcher = Counting::new(FileFetcher);
    let mut found = Vec::new();
    // `--repeat N` (a profiling aid, e.g. under `perf record`): the operation N times, the mean reported.
    let repeat: u32 = value(args, "--repeat").map_or(1, |n| n.parse().expect("--repeat"));
    let (mut seconds, mut cpu_seconds) = (0.0, 0.0);
    for k in 0..repeat {
        let device =
            if repeat == 1 || phase == "unchanged" { device.clone() } else { work.join(format!("metadata-{k}")) };
        if repeat > 1 && phase == "resolve" {
            copy_dir(&work.join("metadata"), &device);
        }
        fetcher.take();
        found.clear();
        let (wall, cpu) = match phase {
            "idle" => (0.0, 0.0),
            "first" => {
                std::fs::create_dir_all(&device).expect("device dir");
                std::fs::copy(value(args, "--root").expect("--root"), device.join("root.json")).expect("root");
                let started = Clock::start();
                let mut client = updater(&device, &metadata, &fetcher, false);
                rt.block_on(client.refresh()).expect("refresh");
                started.elapsed()
            }
            "unchanged" => {
                let started = Clock::start();
                let mut client = updater(&device, &metadata, &fetcher, false);
                rt.block_on(client.refresh()).expect("refresh");
                started.elapsed()
            }
            "resolve" => {
                let mut client = updater(&device, &metadata, &fetcher, false);
                rt.block_on(client.refresh()).expect("refresh");
                fetcher.take();
                let started = Clock::start();
                for path in &paths {
                    let target = rt.block_on(client.target_info(path)).expect("target");
                    found.push(target.file().sha256().unwrap_or_default().to_owned());
                }
                started.elapsed()
            }
            other => panic!("unknown phase {other}"),
        };
        seconds += wall;
        cpu_seconds += cpu;
    }
    let seconds = seconds / f64::from(repeat);
    let cpu_seconds = cpu_seconds / f64::from(repeat);
    let requests: Vec<Value> =
        fetcher.take().into_iter().map(|(url, bytes)| json!({"url": url, "bytes": bytes})).collect();
    let peak = peak_rss_kib();
    println!(
        "{}",
        json!({
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "requests": requests,
            "found": found,
            "peak_rss_kib": peak,
        })
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Parent: timing table
// ---------------------------------------------------------------------------------------------------------------

/// What one child process reported.
struct Sample {
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_kib: u64,
    requests: Vec<(String, Option<u64>)>,
    found: Vec<String>,
}

/// Runs `command` to completion and returns what it reported.
fn run_child(mut command: Command) -> Sample {
    let output = command.stderr(Stdio::inherit()).output().expect("spawn child");
    assert!(output.status.success(), "child failed: {command:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("child JSON");
    let requests = line["requests"]
        .as_array()
        .map(|r| r.iter().map(|r| (r["url"].as_str().unwrap_or_default().to_owned(), r["bytes"].as_u64())).collect())
        .unwrap_or_default();
    let found = line["found"]
        .as_array()
        .map(|f| f.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    Sample {
        seconds: line["seconds"].as_f64().expect("seconds"),
        cpu_seconds: line["cpu_seconds"].as_f64().expect("cpu_seconds"),
        peak_rss_kib: line["peak_rss_kib"].as_u64().expect("peak_rss_kib"),
        requests,
        found,
    }
}

/// This process's peak resident set (`VmHWM` of /proc/self/status), in KiB.
///
/// Read by each child at its end, rather than `ru_maxrss` from `wait4`: Linux carries the parent's high-water mark
/// into a child spawned with a shared address space (vfork/posix_spawn) across `exec`, so `ru_maxrss` of a child
/// is never below the parent's resident set at spawn time.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Custody,
    Python,
}

struct Python {
    exe: PathBuf,
    script: PathBuf,
    versions: String,
}

fn phase_command(
    side: Side,
    python: &Python,
    phase: &str,
    metadata: &Path,
    work: &Path,
    root: &Path,
    paths: &[String],
) -> Command {
    let mut command = match side {
        Side::Custody => {
            let mut c = Command::new(std::env::current_exe().expect("current exe"));
            c.arg("--phase").arg(phase);
            c
        }
        Side::Python => {
            let mut c = Command::new(&python.exe);
            c.arg(&python.script).arg("--phase").arg(phase);
            c
        }
    };
    command.arg("--metadata").arg(metadata).arg("--work").arg(work).arg("--root").arg(root);
    for path in paths {
        command.arg("--path").arg(path);
    }
    command
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp");
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

fn describe_requests(requests: &[(String, Option<u64>)], base: &str) -> String {
    let names: Vec<String> = requests
        .iter()
        .map(|(url, bytes)| {
            let name = url.strip_prefix(base).unwrap_or(url).trim_start_matches('/');
            match bytes {
                Some(b) => format!("{name} ({b} B)"),
                None => format!("{name} (absent)"),
            }
        })
        .collect();
    if names.len() > 6 {
        let total: u64 = requests.iter().filter_map(|r| r.1).sum();
        format!("{} files, {} B: {}, … {}", names.len(), total, names[..3].join(", "), names[names.len() - 1])
    } else {
        names.join(", ")
    }
}

fn timing(out: &Path, repo: &Path, python: &Python, reps: usize, whole_reps: usize) {
    let metadata = repo.join("metadata");
    let root = metadata.join("root.json");
    let per_bin: Vec<String> =
        serde_json::from_slice(&std::fs::read(repo.join("paths.json")).expect("paths.json")).expect("paths");
    let run = out.join("run-timing");
    if run.exists() {
        std::fs::remove_dir_all(&run).expect("clean run-timing");
    }
    let sizes = catalog_sizes(&metadata);
    let bins: Vec<u64> = sizes.iter().filter(|(k, _)| k.starts_with("bins-")).map(|(_, v)| *v).collect();
    let total: u64 = sizes.values().sum();
    println!(
        "\nmetadata: root {} B, timestamp {} B, snapshot {} B ({} entries), targets {} B; {} bins of {}–{} B \
         (mean {:.0} B); whole catalog {:.1} MB",
        sizes["root.json"],
        sizes["timestamp.json"],
        sizes["snapshot.json"],
        sizes.len() - 3,
        sizes["targets.json"],
        bins.len(),
        bins.iter().min().unwrap_or(&0),
        bins.iter().max().unwrap_or(&0),
        bins.iter().sum::<u64>() as f64 / bins.len().max(1) as f64,
        total as f64 / 1e6
    );
    println!("python: {}", python.versions);

    let sides = [Side::Custody, Side::Python];
    let dir = |side: Side, name: &str| run.join(if side == Side::Custody { "custody" } else { "python" }).join(name);
    for side in sides {
        std::fs::create_dir_all(dir(side, "")).expect("run dir");
    }
    // (phase, label, paths, repetitions)
    let one = vec![per_bin[0].clone()];
    let mut phases: Vec<(&str, String, Vec<String>, usize)> = vec![
        ("idle", "process footprint only (no operation)".into(), vec![], 1),
        ("first", "(a) first full refresh".into(), vec![], reps),
        ("unchanged", "(b) refresh, nothing changed".into(), vec![], reps),
        ("resolve", "(c) resolve one target (load 1 bin)".into(), one, reps),
    ];
    if whole_reps > 0 {
        phases.push((
            "resolve",
            format!("whole catalog: 1 target in each of {} bins", per_bin.len()),
            per_bin.clone(),
            whole_reps,
        ));
    }
    let mut rows = Vec::new();
    for (index, (phase, label, paths, count)) in phases.iter().enumerate() {
        let mut samples: [Vec<Sample>; 2] = Default::default();
        for rep in 0..*count {
            let order = if rep % 2 == 0 { sides } else { [Side::Python, Side::Custody] };
            for side in order {
                let work = dir(side, &format!("{index}-{phase}-{rep}"));
                if *phase == "unchanged" || *phase == "resolve" {
                    copy_dir(&dir(side, "refreshed"), &work);
                }
                let sample = run_child(phase_command(side, python, phase, &metadata, &work, &root, paths));
                if *phase == "first" && rep == 0 {
                    copy_dir(&work, &dir(side, "refreshed"));
                }
                samples[side as usize].push(sample);
            }
        }
        // Both clients must have found the same targets.
        let [custody, theirs] = &samples;
        assert_eq!(custody[0].found, theirs[0].found, "{label}: custody and python-tuf disagree");
        assert_eq!(custody[0].found.len(), paths.len());
        rows.push((label.clone(), samples));
    }

    let base = format!("file://{}", metadata.display());
    let stat = |s: &[Sample], f: fn(&Sample) -> f64, best: bool| {
        let mut v: Vec<f64> = s.iter().map(f).collect();
        if best { v.iter().copied().fold(f64::MAX, f64::min) } else { median(&mut v) }
    };
    let rss = |s: &[Sample]| s.iter().map(|s| s.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    for best in [false, true] {
        let what = if best { "best" } else { "median" };
        println!(
            "\n{what} of each side's runs; wall time of the operation, and process CPU time (all threads) in it\n\n\
             | phase | custody | python-tuf | python-tuf / custody | custody CPU | python-tuf CPU | CPU ratio | custody \
             peak RSS | python-tuf peak RSS |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for (label, samples) in &rows {
            let [custody, theirs] = samples;
            let (cw, pw) = (stat(custody, |s| s.seconds, best), stat(theirs, |s| s.seconds, best));
            let (cc, pc) = (stat(custody, |s| s.cpu_seconds, best), stat(theirs, |s| s.cpu_seconds, best));
            if cw == 0.0 {
                println!("| {label} | – | – | – | – | – | – | {:.1} MiB | {:.1} MiB |", rss(custody), rss(theirs));
            } else {
                println!(
                    "| {label} | {} | {} | {:.1}x | {} | {} | {:.1}x | {:.1} MiB | {:.1} MiB |",
                    time(cw),
                    time(pw),
                    pw / cw,
                    time(cc),
                    time(pc),
                    pc / cc,
                    rss(custody),
                    rss(theirs)
                );
            }
        }
    }
    println!("\nfiles read during the operation (through each client's fetcher):");
    for (label, samples) in rows.iter().skip(1) {
        let reqs = |s: &[Sample]| describe_requests(&s[0].requests, &base);
        let (custody_reqs, python_reqs) = (reqs(&samples[0]), reqs(&samples[1]));
        if custody_reqs == python_reqs {
            println!("  {label}: both: {custody_reqs}");
        } else {
            println!("  {label}: custody: {custody_reqs}; python-tuf: {python_reqs}");
        }
    }
    println!("\nall samples (wall / CPU seconds):");
    for (label, samples) in rows.iter().skip(1) {
        let fmt = |s: &[Sample]| {
            s.iter().map(|s| format!("{:.4}/{:.4}", s.seconds, s.cpu_seconds)).collect::<Vec<_>>().join(" ")
        };
        println!("  {label}: custody [{}]  python-tuf [{}]", fmt(&samples[0]), fmt(&samples[1]));
    }
    // The whole-catalog runs leave 133 MB of metadata per run and side.
    std::fs::remove_dir_all(&run).expect("clean run-timing");
}

fn time(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2} s")
    } else if seconds >= 0.01 {
        format!("{:.1} ms", seconds * 1e3)
    } else {
        format!("{:.2} ms", seconds * 1e3)
    }
}

/// python-tuf's interpreter: `$CUSTODY_BENCH_PYTHON`, or a virtual environment in `bench/out/venv` (created here).
fn python(out: &Path) -> Python {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/python_tuf_catalog.py");
    let script = script.canonicalize().expect("bench/python_tuf_catalog.py");
    let exe = match std::env::var_os("CUSTODY_BENCH_PYTHON") {
        Some(exe) => PathBuf::from(exe),
        None => {
            let venv = out.join("venv");
            let exe = venv.join("bin/python");
            if !exe.exists() {
                println!("creating {} with python-tuf 7.0.0…", venv.display());
                let ok = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().is_ok_and(|s| s.success())
                    && Command::new(venv.join("bin/pip"))
                        .args(["install", "--quiet", "tuf==7.0.0", "securesystemslib[crypto]"])
                        .status()
                        .is_ok_and(|s| s.success());
                if !ok {
                    let _ = std::fs::remove_dir_all(&venv);
                    panic!("cannot create the python-tuf virtual environment in {}", venv.display());
                }
            }
            exe
        }
    };
    let versions = Command::new(&exe)
        .args([
            "-c",
            "import sys, tuf, securesystemslib, cryptography; \
             print(f'Python {sys.version.split()[0]}, tuf {tuf.__version__}, securesystemslib \
             {securesystemslib.__version__}, cryptography {cryptography.__version__}')",
        ])
        .output()
        .expect("python");
    assert!(versions.status.success(), "python-tuf is not importable with {}", exe.display());
    Python { exe, script, versions: String::from_utf8_lossy(&versions.stdout).trim().to_owned() }
}

// ---------------------------------------------------------------------------------------------------------------
// Scan bytes
// ---------------------------------------------------------------------------------------------------------------

/// A working copy of a generated repository that may be published to: hard links for the published metadata
/// (which publications replace by renaming, never rewrite), copies of the keys and configuration, no target files.
fn working_copy(repo: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("targets")).expect("working copy");
    let status =
        Command::new("cp").arg("-al").arg(repo.join("metadata")).arg(to.join("metadata")).status().expect("cp -al");
    assert!(status.success());
    copy_dir(&repo.join("keys"), &to.join("keys"));
    std::fs::copy(repo.join("repo.toml"), to.join("repo.toml")).expect("repo.toml");
}

struct Scan {
    bytes: u64,
    requests: Vec<(String, Option<u64>)>,
    listed: usize,
}

/// One scan: a new `Updater` (a new update cycle) lists each of the device's products.
fn scan(rt: &tokio::runtime::Runtime, device: &Path, metadata: &Path, products: &[String], proofs: bool) -> Scan {
    let fetcher = Counting::new(FileFetcher);
    let mut client = updater(device, metadata, &fetcher, proofs);
    let mut listed = 0;
    for product in products {
        listed += rt.block_on(client.list_targets(product)).expect("list").len();
    }
    let requests = fetcher.take();
    Scan { bytes: requests.iter().filter_map(|r| r.1).sum(), requests, listed }
}

fn scan_bytes(out: &Path, repo: &Path, params: &Params) {
    let names = product_names(params.products);
    let step = params.products / DEVICE_PRODUCTS;
    let device_products: Vec<String> = (0..DEVICE_PRODUCTS).map(|k| names[k * step].clone()).collect();
    // The new update goes to a product the device does not have.
    let other = params.products / 2 + 1;
    assert!(!device_products.contains(&names[other]));
    let sizes = catalog_sizes(&repo.join("metadata"));
    let whole: u64 = sizes.values().sum();
    let products: Vec<u64> =
        sizes.iter().filter(|(k, _)| names.iter().any(|n| **k == format!("{n}.json"))).map(|(_, v)| *v).collect();
    println!(
        "\nscan bytes: {} products ({} B–{} B of metadata each), device products {}; new update for {}",
        products.len(),
        products.iter().min().unwrap_or(&0),
        products.iter().max().unwrap_or(&0),
        device_products.join(", "),
        names[other]
    );
    println!(
        "whole catalog metadata: {} B ({:.1} MB): root {} B, timestamp {} B, snapshot {} B, targets {} B, {} product \
         roles {} B",
        whole,
        whole as f64 / 1e6,
        sizes["root.json"],
        sizes["timestamp.json"],
        sizes["snapshot.json"],
        sizes["targets.json"],
        products.len(),
        products.iter().sum::<u64>()
    );
    let run = out.join("run-scan");
    if run.exists() {
        std::fs::remove_dir_all(&run).expect("clean run-scan");
    }
    let rt = runtime();
    let mut results = Vec::new();
    for proofs in [true, false] {
        let base = run.join(if proofs { "proofs" } else { "standard" });
        let work = base.join("repo");
        working_copy(repo, &work);
        let metadata = work.join("metadata");
        let device = base.join("device");
        std::fs::create_dir_all(&device).expect("device dir");
        std::fs::copy(metadata.join("root.json"), device.join("root.json")).expect("root");
        let first = scan(&rt, &device, &metadata, &device_products, proofs);
        assert_eq!(first.listed, DEVICE_PRODUCTS * (params.updates / params.products));
        let unchanged = scan(&rt, &device, &metadata, &device_products, proofs);
        let mut publisher = Repository::open(&work, Passphrase::none()).expect("open working copy");
        published(publisher.add_targets([update(params.updates + other, &names)], None).expect("publish one"));
        let after = scan(&rt, &device, &metadata, &device_products, proofs);
        assert_eq!(after.listed, first.listed);
        results.push((proofs, [first, unchanged, after], format!("file://{}", metadata.display())));
    }

    println!(
        "\n| scan (device with {DEVICE_PRODUCTS} of {} products) | custody, snapshot proofs: bytes (requests) | \
         standard TUF (`snapshot_proofs: false`): bytes (requests) | goal |",
        params.products
    );
    println!("|---|---|---|---|");
    let labels = [
        ("first scan (empty metadata dir)", format!("≤ 2% of {whole} B = {} B", whole / 50)),
        ("scan, nothing changed", format!("one timestamp ({} B)", sizes["timestamp.json"])),
        ("scan after 1 update published to another product", "≤ 10 KiB = 10240 B".to_owned()),
    ];
    for (i, (label, goal)) in labels.iter().enumerate() {
        let cell = |scans: &[Scan; 3]| {
            let s = &scans[i];
            format!("{} B = {:.3}% ({} requests)", s.bytes, s.bytes as f64 * 100.0 / whole as f64, s.requests.len())
        };
        println!("| {label} | {} | {} | {goal} |", cell(&results[0].1), cell(&results[1].1));
    }
    for (proofs, scans, base) in &results {
        println!("\nrequests, {}:", if *proofs { "snapshot proofs" } else { "standard TUF" });
        for (label, s) in labels.iter().map(|l| l.0).zip(scans) {
            println!("  {label}:");
            for (url, bytes) in &s.requests {
                let name = url.strip_prefix(base.as_str()).unwrap_or(url).trim_start_matches('/');
                match bytes {
                    Some(bytes) => println!("    {name} {bytes} B"),
                    None => println!("    {name} (absent)"),
                }
            }
        }
    }
    let [first, unchanged, after] = &results[0].1;
    let timestamp_only = unchanged.requests.iter().filter(|r| r.1.is_some()).count() == 1
        && unchanged.requests.iter().any(|r| r.0.ends_with("/timestamp.json"));
    println!(
        "\ngoals (snapshot proofs): first scan {:.2}% {} 2%; unchanged {}; after a publish elsewhere {} B {} 10240 B",
        first.bytes as f64 * 100.0 / whole as f64,
        if first.bytes * 50 <= whole { "≤" } else { "> (MISSED)" },
        if timestamp_only { "reads timestamp.json only" } else { "reads more than timestamp.json (MISSED)" },
        after.bytes,
        if after.bytes <= 10_240 { "≤" } else { "> (MISSED)" },
    );
}
