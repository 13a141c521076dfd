//! Shared by the integration tests: signed-looking updates (a catalog entry in a TUF target's `custom`), their
//! verification into `VerifiedArtifact`s, packages, and file-tree snapshots.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use custody_catalog::{ArchiveFormat, ContentHasher, DeviceInventory, UpdateDescription, UpdateEntry};
use custody_install::{ArtifactWriter, PackageBuilder, VerifiedArtifact};
use custody_tuf::{TargetFile, TrustedTarget};
use serde_json::{Value, json};

pub fn device() -> DeviceInventory {
    DeviceInventory {
        os_family: "debian".parse().unwrap(),
        os_version: Some("12".parse().unwrap()),
        arch: "x86_64".parse().unwrap(),
        products: BTreeMap::new(),
        hardware_ids: BTreeSet::new(),
        installed_updates: BTreeSet::new(),
    }
}

/// A target as a targets role would sign it: the payload's length and hashes, and the catalog entry in `custom`.
pub struct Update {
    pub target: TrustedTarget,
    pub entry: UpdateEntry,
    pub payload: Vec<u8>,
}

/// An update of `kind` for `product` `version` with the given `installer` object and payload.
pub fn update(kind: &str, product: &str, version: &str, installer: Value, payload: Vec<u8>) -> Update {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, format!("{product} {version}").as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.as_ref()[..16]);
    let classification = match kind {
        "definitions" => "definitions",
        "driver" => "driver",
        _ => "update",
    };
    let description: UpdateDescription = serde_json::from_value(json!({
        "id": uuid::Uuid::from_bytes(id).to_string(), "revision": 1, "title": format!("{product} {version}"),
        "description": "", "kind": kind, "product": product, "classification": classification, "version": version,
        "release_date": "2025-06-10", "reboot": if kind == "os" { "required" } else { "never" },
        "applicability": {}, "installer": installer,
    }))
    .unwrap();
    let mut hasher = ContentHasher::new(None);
    hasher.update(&payload);
    let (content, _) = hasher.finish().unwrap();
    let entry = UpdateEntry::from_description(&description, content).unwrap();
    let file = TargetFile::describing(&payload, Some(entry.to_custom_json()));
    let target = TrustedTarget::for_tests(format!("{product}/{product}-{version}.pkg"), product.into(), file);
    Update { target, entry, payload }
}

/// Downloads `update` through an `ArtifactWriter` in 64 KiB chunks.
pub fn verify(staging: &Path, update: &Update) -> VerifiedArtifact {
    let mut writer = ArtifactWriter::create(staging, &update.target, &update.entry, &device()).unwrap();
    for chunk in update.payload.chunks(64 * 1024) {
        writer.write(chunk).unwrap();
    }
    writer.finish().unwrap()
}

/// A package built from `builder` in `format`.
pub fn package(builder: &PackageBuilder, format: ArchiveFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    builder.write(&mut bytes, format, 3).unwrap();
    bytes
}

/// A small app tree whose content depends on `version`: a VERSION file, a binary, a config, a symlink and a file
/// only some versions have, so that a mix of two versions is visible.
pub fn app_tree(product: &str, version: &str) -> PackageBuilder {
    let mut builder = PackageBuilder::new(product, version);
    builder
        .dir("bin", 0o755)
        .file("bin/tool", 0o755, format!("#!/bin/sh\necho {product} {version}\n"))
        .file("VERSION", 0o644, format!("{version}\n"))
        .dir("etc", 0o755)
        .file("etc/config", 0o600, "shared = true\n")
        .symlink("tool", "bin/tool");
    if version.ends_with('0') {
        builder.file("etc/only-in-round-versions", 0o644, version.to_owned());
    }
    builder
}

/// The file tree under `root` (following `root` itself if it is a link): path → type, mode, content or target.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let root = std::fs::canonicalize(root).unwrap();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let relative = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let mode = metadata.permissions().mode() & 0o7777;
            let description = if metadata.is_symlink() {
                format!("symlink {}", std::fs::read_link(&path).unwrap().display())
            } else if metadata.is_dir() {
                pending.push(path.clone());
                format!("dir {mode:o}")
            } else {
                let content = std::fs::read(&path).unwrap();
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &content);
                format!("file {mode:o} {}", hex::encode(digest))
            };
            out.insert(relative, description);
        }
    }
    out
}

/// The tree a package builder's entries describe, in the form of [`tree`].
pub fn expected_tree(builder: &PackageBuilder) -> BTreeMap<String, String> {
    let manifest = builder.manifest().unwrap();
    let mut out = BTreeMap::new();
    let files: BTreeMap<String, (u32, String)> = manifest
        .entries
        .iter()
        .filter_map(|entry| match entry {
            custody_install::ManifestEntry::File { path, mode, sha256, .. } => {
                Some((path.clone(), (mode.0, sha256.clone())))
            }
            _ => None,
        })
        .collect();
    for entry in &manifest.entries {
        let description = match entry {
            custody_install::ManifestEntry::Dir { mode, .. } => format!("dir {:o}", mode.0),
            custody_install::ManifestEntry::File { mode, sha256, .. } => format!("file {:o} {sha256}", mode.0),
            custody_install::ManifestEntry::Symlink { target, .. } => format!("symlink {target}"),
            custody_install::ManifestEntry::Hardlink { target, .. } => {
                let (mode, sha256) = &files[target];
                format!("file {mode:o} {sha256}")
            }
        };
        out.insert(entry.path().to_owned(), description);
    }
    out
}
