//! Only custody-tls makes TLS client configurations, so every metadata connection goes through the pinned verifier.
//!
//! Scans every `.rs` file under `crates/` except `crates/tls` for the ways of making or weakening a TLS client, and
//! every crate manifest for the crates that load the system trust store. custody-tls itself must not load the system
//! trust store either.

use std::path::{Path, PathBuf};

/// Source patterns that make a TLS client configuration, or a verifier other than ours.
const FORBIDDEN_OUTSIDE_TLS: &[&str] = &[
    "ClientConfig::builder",
    "dangerous()",
    "with_custom_certificate_verifier",
    "use_rustls_tls",
    "tls_backend_preconfigured",
    "danger_accept_invalid",
    "rustls_platform_verifier",
    // A reqwest client made anywhere else would fall back to reqwest's own TLS defaults for https URLs.
    "reqwest::Client::builder",
    "reqwest::Client::new",
    "reqwest::ClientBuilder",
];

/// What custody-tls's own library code must never use: the system trust store or a trust-everything escape hatch.
const FORBIDDEN_IN_TLS: &[&str] =
    &["rustls_native_certs", "load_native_certs", "webpki_roots", "rustls_platform_verifier", "danger_accept_invalid"];

/// Dependencies no custody crate may declare (they load the system's or Mozilla's trust store).
const FORBIDDEN_DEPENDENCIES: &[&str] = &["rustls-native-certs", "webpki-roots", "rustls-platform-verifier"];

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crates/tls lives in crates/").to_owned()
}

fn files_with_extension(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                files_with_extension(&path, extension, out);
            }
        } else if path.extension().is_some_and(|e| e == extension) || name == extension {
            out.push(path);
        }
    }
}

/// `(file, line number, pattern)` for every occurrence of a pattern.
fn find(files: &[PathBuf], patterns: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (number, line) in text.lines().enumerate() {
            for pattern in patterns {
                if line.contains(pattern) {
                    hits.push(format!("{}:{}: {pattern}", file.display(), number + 1));
                }
            }
        }
    }
    hits
}

#[test]
fn no_tls_client_configuration_outside_custody_tls() {
    let tls_dir = crates_dir().join("tls");
    let mut files = Vec::new();
    files_with_extension(&crates_dir(), "rs", &mut files);
    files.retain(|f| !f.starts_with(&tls_dir));
    assert!(
        files.iter().any(|f| f.ends_with("custody/src/main.rs")),
        "the scan must see the other crates (found {} files)",
        files.len()
    );
    let hits = find(&files, FORBIDDEN_OUTSIDE_TLS);
    assert!(
        hits.is_empty(),
        "only custody-tls may build TLS client configurations; use custody_tls::TlsClientConfig instead:\n{}",
        hits.join("\n")
    );
}

#[test]
fn custody_tls_never_loads_the_system_trust_store() {
    let mut files = Vec::new();
    files_with_extension(&crates_dir().join("tls").join("src"), "rs", &mut files);
    assert!(files.iter().any(|f| f.ends_with("verifier.rs")));
    let hits = find(&files, FORBIDDEN_IN_TLS);
    assert!(hits.is_empty(), "{}", hits.join("\n"));
}

#[test]
fn no_crate_depends_on_a_trust_store_loader() {
    let mut manifests = Vec::new();
    files_with_extension(&crates_dir(), "Cargo.toml", &mut manifests);
    manifests.push(crates_dir().parent().expect("workspace root").join("Cargo.toml"));
    assert!(manifests.len() > 2);
    let hits = find(&manifests, FORBIDDEN_DEPENDENCIES);
    assert!(hits.is_empty(), "{}", hits.join("\n"));
}

/// The scanner itself finds what it looks for (so the tests above can fail).
#[test]
fn scanner_finds_a_forbidden_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("other").join("src");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(nested.join("lib.rs"), "fn f() {\n let c = rustls::ClientConfig::builder();\n}\n").unwrap();
    let mut files = Vec::new();
    files_with_extension(dir.path(), "rs", &mut files);
    assert_eq!(find(&files, FORBIDDEN_OUTSIDE_TLS).len(), 1);
    assert!(find(&files, FORBIDDEN_OUTSIDE_TLS)[0].ends_with("lib.rs:2: ClientConfig::builder"));
}
