//! Download verification throughput: `ArtifactWriter::write` (hashing every signed algorithm while writing to a
//! file) in 16 KiB chunks, with SHA-256 only and with SHA-256 + SHA-512, against `openssl speed -evp <alg> -bytes
//! 16384` on the same machine in the same run. Rounds alternate between the two and the best round of each is kept,
//! so that load from other processes affects both alike. `finish` (its fsync) is timed apart: it is I/O, not hashing.
//!
//! The writer hashes on the caller's thread while its I/O thread writes (and computes any second hash), so it needs
//! two free cores to reach the hashing rate; the output shows the load average and how many cores the writer got.
//! On a busy machine, run the built benchmark with `nice -n -20`.
//!
//! Also the whole-file check of an assembled file (`VerifiedFile::from_file`: one read, SHA-256 on the reading thread
//! and SHA-512 on a second), against openssl hashing with both one after the other.
//!
//! Run: `cargo bench -p custody-install --bench hash` (add `-- --mib N --rounds R --seconds S`; defaults 256, 3, 2).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use custody_catalog::{ContentHasher, DeviceInventory, UpdateDescription, UpdateEntry};
use custody_install::ArtifactWriter;
use custody_tuf::{TargetFile, TrustedTarget};

const CHUNK: usize = 16 * 1024;

fn main() {
    let arg = |name: &str, default: u64| -> u64 {
        std::env::args().skip_while(|a| a != name).nth(1).and_then(|s| s.parse().ok()).unwrap_or(default)
    };
    let (mib, rounds, seconds) = (arg("--mib", 256), arg("--rounds", 3), arg("--seconds", 2));
    let total = mib << 20;
    let chunk: Vec<u8> = (0..CHUNK as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    // Written to tmpfs when there is one, so that the figure is the hashing path and not the disk's write-back.
    let shm = std::path::Path::new("/dev/shm");
    let dir = match shm.is_dir() {
        true => tempfile::tempdir_in(shm),
        false => tempfile::tempdir(),
    }
    .expect("temporary directory");

    let targets = [
        ("sha256", targets_for(&chunk, total, &["sha256"])),
        ("sha256+sha512", targets_for(&chunk, total, &["sha256", "sha512"])),
    ];
    let mut best_writer = [0f64; 2];
    let mut best_cores = [0f64; 2];
    let mut best_finish = [Duration::MAX; 2];
    let mut best_memory = 0f64;
    let mut best_write = 0f64;
    let mut best_check = 0f64;
    let mut best_openssl: BTreeMap<&str, f64> = BTreeMap::new();
    for _ in 0..rounds {
        for alg in ["sha256", "sha512"] {
            if let Some(rate) = openssl_rate(alg, seconds) {
                let best = best_openssl.entry(alg).or_default();
                *best = best.max(rate);
            }
        }
        for (index, (_, (target, entry))) in targets.iter().enumerate() {
            let (rate, finish, cores) = writer_rate(dir.path(), target, entry, &chunk, total);
            if rate > best_writer[index] {
                best_writer[index] = rate;
                best_cores[index] = cores;
            }
            best_finish[index] = best_finish[index].min(finish);
        }
        best_memory = best_memory.max(memory_rate(&chunk, total));
        best_check = best_check.max(check_rate(dir.path(), &targets[1].1.0, &chunk, total));
        best_write = best_write.max(write_rate(dir.path(), &chunk, total));
    }

    let mb = |rate: f64| rate / 1e6;
    println!(
        "{mib} MiB in {CHUNK}-byte chunks to {}, best of {rounds} rounds; MB/s = 10^6 bytes/s",
        dir.path().display()
    );
    // The writer needs two cores at once (caller and I/O thread); other load on the machine shows here.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    println!("{:<40} {:>8} {:>10} {:>8}  baseline", "path", "MB/s", "base MB/s", "ratio");
    let row = |name: &str, rate: f64, baseline: Option<(f64, &str)>| match baseline {
        Some((base, what)) => {
            println!("{name:<40} {:>8.0} {:>10.0} {:>7.2}x  {what}", mb(rate), mb(base), rate / base)
        }
        None => println!("{name:<40} {:>8.0} {:>10} {:>8}  no openssl", mb(rate), "n/a", "n/a"),
    };
    let sha256 = best_openssl.get("sha256").copied();
    let sha512 = best_openssl.get("sha512").copied();
    row("SHA-256 as the writer computes it", best_memory, sha256.map(|r| (r, "openssl speed -evp sha256")));
    println!("{:<40} {:>8.0}", "file writes alone (1 MiB, no hashing)", mb(best_write));
    row("ArtifactWriter sha256", best_writer[0], sha256.map(|r| (r, "openssl speed -evp sha256")));
    // openssl hashing both, one after the other, as a single-threaded verifier would.
    let both = sha256.zip(sha512).map(|(a, b)| (1.0 / (1.0 / a + 1.0 / b), "openssl sha256 then sha512"));
    row("ArtifactWriter sha256+sha512", best_writer[1], both);
    row("VerifiedFile::from_file sha256+sha512", best_check, both);
    println!(
        "cores busy while writing (best rounds): {:.2} (sha256), {:.2} (sha256+sha512)",
        best_cores[0], best_cores[1]
    );
    for (index, (name, _)) in targets.iter().enumerate() {
        println!("finish (fsync) after {mib} MiB, {name}: {:.1?}", best_finish[index]);
    }
}

/// Bytes per second through `VerifiedFile::from_file` (the whole-file check of a file assembled from pieces: read
/// once, every signed hash) on a file already written.
fn check_rate(dir: &std::path::Path, target: &TrustedTarget, chunk: &[u8], total: u64) -> f64 {
    let path = dir.join("assembled");
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(total) {
        let mut file = std::fs::File::create(&path).expect("create");
        for _ in 0..total / CHUNK as u64 {
            std::io::Write::write_all(&mut file, chunk).expect("write");
        }
    }
    let start = Instant::now();
    custody_install::VerifiedFile::from_file(&path, target).expect("the file verifies");
    total as f64 / start.elapsed().as_secs_f64()
}

/// A target of `total` bytes (`chunk` repeated) listing `algorithms`, and its catalog entry.
fn targets_for(chunk: &[u8], total: u64, algorithms: &[&str]) -> (TrustedTarget, UpdateEntry) {
    let mut hashes = BTreeMap::new();
    for &name in algorithms {
        let algorithm = if name == "sha256" { &digest::SHA256 } else { &digest::SHA512 };
        let mut context = digest::Context::new(algorithm);
        for _ in 0..total / CHUNK as u64 {
            context.update(chunk);
        }
        hashes.insert(name.to_owned(), hex::encode(context.finish()));
    }
    let mut content = ContentHasher::new(None);
    for _ in 0..total / CHUNK as u64 {
        content.update(chunk);
    }
    let (content, _) = content.finish().expect("content info");
    let description: UpdateDescription = serde_json::from_value(serde_json::json!({
        "id": "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90", "revision": 1, "title": "bench", "description": "",
        "kind": "store-app", "product": "bench", "classification": "update", "version": "1",
        "release_date": "2025-06-10", "reboot": "never", "applicability": {}, "installer": {"handler": "store-app"},
    }))
    .expect("description");
    let entry = UpdateEntry::from_description(&description, content).expect("entry");
    let file =
        TargetFile { length: total, hashes, custom: Some(entry.to_custom_json()), unrecognized: BTreeMap::new() };
    (TrustedTarget::for_tests("bench/payload".into(), "bench".into(), file), entry)
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

/// Bytes per second through `ArtifactWriter::write`, the time `finish` took, and how many cores were busy on
/// average while writing (CPU time of all threads over wall time).
fn writer_rate(
    dir: &std::path::Path,
    target: &TrustedTarget,
    entry: &UpdateEntry,
    chunk: &[u8],
    total: u64,
) -> (f64, Duration, f64) {
    let mut writer = ArtifactWriter::create(dir, target, entry, &device()).expect("writer");
    let cpu_start = cpu_time();
    let start = Instant::now();
    for _ in 0..total / CHUNK as u64 {
        writer.write(std::hint::black_box(chunk)).expect("write");
    }
    let elapsed = start.elapsed();
    let cores = (cpu_time() - cpu_start).as_secs_f64() / elapsed.as_secs_f64();
    let start = Instant::now();
    let artifact = writer.finish().expect("the download verifies");
    let finish = start.elapsed();
    artifact.discard().expect("discard");
    (total as f64 / elapsed.as_secs_f64(), finish, cores)
}

/// Bytes per second of writing the chunks to a file in 1 MiB writes, without hashing: the I/O ceiling.
fn write_rate(dir: &std::path::Path, chunk: &[u8], total: u64) -> f64 {
    use std::io::Write;
    let path = dir.join("write-only");
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).expect("create"));
    let start = Instant::now();
    for _ in 0..total / CHUNK as u64 {
        file.write_all(std::hint::black_box(chunk)).expect("write");
    }
    file.flush().expect("flush");
    let rate = total as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).expect("remove");
    rate
}

/// CPU time (user and system) of all threads of this process.
fn cpu_time() -> Duration {
    // SAFETY: all-zero bytes are a valid `rusage`; `getrusage` writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage`.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Bytes per second of aws-lc-rs SHA-256 over the same chunks in memory (no file).
fn memory_rate(chunk: &[u8], total: u64) -> f64 {
    let start = Instant::now();
    let mut context = digest::Context::new(&digest::SHA256);
    for _ in 0..total / CHUNK as u64 {
        context.update(std::hint::black_box(chunk));
    }
    std::hint::black_box(context.finish());
    total as f64 / start.elapsed().as_secs_f64()
}

/// `openssl speed -evp <alg> -bytes 16384` in bytes per second (one process, one core).
fn openssl_rate(algorithm: &str, seconds: u64) -> Option<f64> {
    let output = Command::new("openssl")
        .args(["speed", "-seconds", &seconds.to_string(), "-bytes", &CHUNK.to_string(), "-evp", algorithm])
        .output();
    let Ok(output) = output else {
        eprintln!("openssl is not installed: no baseline");
        return None;
    };
    // The result line: "sha256          1234567.89k" (thousands of bytes per second for 16384-byte blocks).
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().rev().find(|line| line.trim_start().to_ascii_lowercase().starts_with(algorithm))?;
    let value = line.split_whitespace().last()?.strip_suffix('k')?;
    value.parse::<f64>().ok().map(|thousands| thousands * 1000.0)
}
