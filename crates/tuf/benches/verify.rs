//! Signature verification per core: `custody_tuf::Key::verify` (the path every metadata check takes) for ed25519 and
//! ECDSA P-256, against `openssl speed` on the same machine in the same run. Both are measured in alternating rounds
//! and the best round of each is kept, so that load from other processes affects both alike. Prints one line per
//! algorithm with both rates and their ratio.
//!
//! Run: `cargo bench -p custody-tuf --bench verify` (add `-- --seconds N --rounds R`; defaults 2 and 3).

use std::process::Command;
use std::time::{Duration, Instant};

use custody_tuf::{PrivateKey, PrivateKeyKind};

fn main() {
    let arg = |name: &str, default: u64| -> u64 {
        std::env::args().skip_while(|a| a != name).nth(1).and_then(|s| s.parse().ok()).unwrap_or(default)
    };
    let (seconds, rounds) = (arg("--seconds", 2), arg("--rounds", 3));
    let mut best_openssl: Vec<(String, f64)> = Vec::new();
    let mut best_custody = [0f64; 2];
    for _ in 0..rounds {
        for (name, rate) in openssl_verify_rates(seconds) {
            match best_openssl.iter_mut().find(|(n, _)| *n == name) {
                Some((_, best)) => *best = best.max(rate),
                None => best_openssl.push((name, rate)),
            }
        }
        for (i, kind) in [PrivateKeyKind::Ed25519, PrivateKeyKind::EcdsaP256].into_iter().enumerate() {
            best_custody[i] = best_custody[i].max(custody_verify_rate(kind, seconds));
        }
    }
    println!("{:<12} {:>14} {:>14} {:>8}", "algorithm", "custody/s", "openssl/s", "ratio");
    for (i, (name, openssl_name)) in [("ed25519", "Ed25519"), ("ecdsa-p256", "nistp256")].into_iter().enumerate() {
        let rate = best_custody[i];
        let theirs = best_openssl.iter().find(|(n, _)| n == openssl_name).map(|(_, r)| *r);
        match theirs {
            Some(theirs) => println!("{name:<12} {rate:>14.0} {theirs:>14.0} {:>7.2}x", rate / theirs),
            None => println!("{name:<12} {rate:>14.0} {:>14} {:>8}", "n/a", "n/a"),
        }
    }
}

/// Verifications per second of one key on this thread for `seconds`.
fn custody_verify_rate(kind: PrivateKeyKind, seconds: u64) -> f64 {
    let key = PrivateKey::generate(kind).expect("key generation");
    // A message the size of a typical `signed` object's digest input is irrelevant for ECDSA (hashed first) and
    // small for Ed25519; openssl speed signs a short fixed message too.
    let message = [0x5au8; 64];
    let signature = key.sign(&message).expect("signing");
    let public = key.public().clone();
    assert!(public.verify(&message, &signature).expect("verify"));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut count = 0u64;
    while Instant::now() < deadline {
        for _ in 0..64 {
            assert!(public.verify(std::hint::black_box(&message), &signature).unwrap_or(false));
        }
        count += 64;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// Runs `openssl speed` (one process, one core) and returns (curve name, verifications per second).
fn openssl_verify_rates(seconds: u64) -> Vec<(String, f64)> {
    let output =
        Command::new("openssl").args(["speed", "-seconds", &seconds.to_string(), "ed25519", "ecdsap256"]).output();
    let Ok(output) = output else {
        eprintln!("openssl is not installed: no baseline");
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&output.stdout);
    // Lines like " 256 bits ecdsa (nistp256)   0.0000s   0.0000s  68164.9  23110.2" and
    // " 253 bits EdDSA (Ed25519)   0.0000s   0.0001s  42291.4  15703.2": the last column is verify/s.
    text.lines()
        .filter_map(|line| {
            let name = line.split('(').nth(1)?.split(')').next()?.to_owned();
            let rate = line.split_whitespace().last()?.parse().ok()?;
            Some((name, rate))
        })
        .collect()
}
