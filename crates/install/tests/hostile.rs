//! Hostile packages, signed as if by a compromised or careless publisher: each is refused with its own error,
//! nothing is written outside the staging directory, and the installed version stays exactly as it was.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use common::{app_tree, expected_tree, package, tree, update, verify};
use custody_catalog::ArchiveFormat;
use custody_install::{Error, Event, Installer, PackageBuilder, PathProblem};
use serde_json::{Value, json};

/// One raw tar entry: a header written byte for byte (no path checks of the tar crate) and its data.
struct Raw {
    name: Vec<u8>,
    kind: tar::EntryType,
    size: u64,
    link: Option<Vec<u8>>,
    data: Box<dyn Read>,
}

fn raw(name: &str, kind: tar::EntryType, data: Vec<u8>) -> Raw {
    Raw { name: name.into(), kind, size: data.len() as u64, link: None, data: Box::new(std::io::Cursor::new(data)) }
}

fn link(name: &str, kind: tar::EntryType, target: &str) -> Raw {
    Raw { name: name.into(), kind, size: 0, link: Some(target.into()), data: Box::new(std::io::empty()) }
}

/// `size` zero bytes, produced while compressing (never held in memory).
fn zeros(name: &str, kind: tar::EntryType, size: u64) -> Raw {
    Raw { name: name.into(), kind, size, link: None, data: Box::new(std::io::repeat(0).take(size)) }
}

fn manifest(entries: Value) -> Raw {
    let total: u64 = entries.as_array().unwrap().iter().filter_map(|e| e["size"].as_u64()).sum();
    let manifest = json!({"schema": 1, "product": "acme", "version": "2.0", "total_size": total, "entries": entries});
    raw(custody_install::MANIFEST_NAME, tar::EntryType::Regular, serde_json::to_vec(&manifest).unwrap())
}

fn sha256(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// A tar-zstd archive of the raw entries.
fn archive(entries: Vec<Raw>) -> Vec<u8> {
    let mut builder = tar::Builder::new(zstd::Encoder::new(Vec::new(), 1).unwrap());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name = [0; 100];
        header.as_old_mut().name[..entry.name.len()].copy_from_slice(&entry.name);
        header.set_entry_type(entry.kind);
        header.set_size(entry.size);
        header.set_mode(0o644);
        header.set_mtime(0);
        if let Some(target) = &entry.link {
            header.set_link_name_literal(target).unwrap();
        }
        if matches!(entry.kind, tar::EntryType::Char | tar::EntryType::Block) {
            header.set_device_major(1).unwrap();
            header.set_device_minor(3).unwrap();
        }
        if entry.kind == tar::EntryType::GNUSparse {
            header.as_gnu_mut().unwrap().realsize = *b"00000000000\0";
        }
        header.set_cksum();
        builder.append(&header, entry.data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    staging: PathBuf,
    destination: PathBuf,
    installer: Installer,
}

/// A state with acme 1.0 installed.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let staging = root.join("downloads");
    std::fs::create_dir(&staging).unwrap();
    let destination = root.join("opt/acme");
    let mut installer = Installer::new(&root.join("state")).unwrap();
    let good = package(&app_tree("acme", "1.0"), ArchiveFormat::TarZstd);
    let installer_args = json!({"handler": "archive", "format": "tar-zstd", "destination": destination});
    installer.install(verify(&staging, &update("app", "acme", "1.0", installer_args, good))).unwrap();
    Setup { _dir: dir, root, staging, destination, installer }
}

impl Setup {
    /// Installs `payload` as acme 2.0 and returns the error, after checking that nothing changed.
    fn refuse(&mut self, payload: Vec<u8>) -> Error {
        let installer_args = json!({"handler": "archive", "format": "tar-zstd", "destination": self.destination});
        let artifact = verify(&self.staging, &update("app", "acme", "2.0", installer_args, payload));
        let error = self.installer.install(artifact).unwrap_err();
        assert_eq!(tree(&self.destination), expected_tree(&app_tree("acme", "1.0")), "{error}");
        let product = "acme".parse().unwrap();
        let versions: Vec<String> = self.installer.versions(&product).unwrap().into_iter().map(|v| v.version).collect();
        assert_eq!(versions, ["1.0"], "{error}");
        let state = self.installer.state_dir().to_owned();
        assert_eq!(std::fs::read_dir(state.join("products/acme/staging")).unwrap().count(), 0, "{error}");
        assert_eq!(std::fs::read_dir(state.join("products/acme/versions")).unwrap().count(), 1, "{error}");
        assert!(!state.join("journal.json").exists());
        let last = self.installer.history(&product).unwrap().pop().unwrap();
        assert_eq!((last.event, last.version.as_str()), (Event::InstallFailed, "2.0"));
        assert_eq!(last.detail.as_deref(), Some(error.to_string().as_str()));
        error
    }

    fn outside(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

fn file_entry(path: &str, data: &[u8]) -> Value {
    json!({"type": "file", "path": path, "mode": "0644", "size": data.len(), "sha256": sha256(data)})
}

#[test]
fn path_traversal_is_refused() {
    let mut setup = setup();
    for name in ["../../../../evil", "a/../../evil", "../evil"] {
        let payload =
            archive(vec![manifest(json!([file_entry("a", b"x")])), raw(name, tar::EntryType::Regular, b"x".to_vec())]);
        let error = setup.refuse(payload);
        assert!(matches!(&error, Error::UnsafePath { problem: PathProblem::ParentDir, .. }), "{name}: {error}");
    }
    assert!(!setup.outside("evil").exists());
    assert!(!setup.installer.state_dir().join("products/acme/evil").exists());
    assert!(!setup.installer.state_dir().join("products/acme/staging/evil").exists());
}

#[test]
fn absolute_paths_are_refused() {
    let mut setup = setup();
    let target = setup.outside("absolute-evil");
    let payload = archive(vec![
        manifest(json!([file_entry("a", b"x")])),
        raw(target.to_str().unwrap(), tar::EntryType::Regular, b"x".to_vec()),
    ]);
    let error = setup.refuse(payload);
    assert!(matches!(error, Error::UnsafePath { problem: PathProblem::Absolute, .. }), "{error}");
    assert!(!target.exists());
}

#[test]
fn symlinks_escaping_the_root_are_refused() {
    let mut setup = setup();
    // In the archive, whatever the manifest says.
    for target in ["../../../../etc", "/etc/passwd", "a/../../x"] {
        let payload = archive(vec![
            manifest(json!([{"type": "symlink", "path": "lib", "target": "x"}])),
            link("lib", tar::EntryType::Symlink, target),
        ]);
        let error = setup.refuse(payload);
        assert!(matches!(&error, Error::LinkEscape { path, .. } if path == "lib"), "{target}: {error}");
    }
    // In the manifest: each link alone stays inside, but `m` goes through `d/up` (the root) and then above it.
    let chain = json!([
        {"type": "dir", "path": "d", "mode": "0755"},
        {"type": "symlink", "path": "d/up", "target": ".."},
        {"type": "symlink", "path": "m", "target": "d/up/.."},
    ]);
    let payload = archive(vec![
        manifest(chain),
        raw("d/", tar::EntryType::Directory, vec![]),
        link("d/up", tar::EntryType::Symlink, ".."),
        link("m", tar::EntryType::Symlink, "d/up/.."),
    ]);
    let error = setup.refuse(payload);
    assert!(matches!(&error, Error::LinkEscape { path, .. } if path == "m"), "{error}");
    // Writing through a link: a file under a symlink is not under a listed directory.
    let through = json!([{"type": "symlink", "path": "l", "target": "."}, file_entry("l/x", b"x")]);
    let payload = archive(vec![
        manifest(through),
        link("l", tar::EntryType::Symlink, "."),
        raw("l/x", tar::EntryType::Regular, b"x".to_vec()),
    ]);
    let error = setup.refuse(payload);
    assert!(matches!(&error, Error::ManifestInvalid(reason) if reason.contains("parent")), "{error}");
}

#[test]
fn hard_links_escaping_the_root_are_refused() {
    let mut setup = setup();
    for target in ["../../../../../../etc/passwd", "/etc/shadow"] {
        let payload =
            archive(vec![manifest(json!([file_entry("a", b"x")])), link("passwd", tar::EntryType::Link, target)]);
        let error = setup.refuse(payload);
        assert!(matches!(&error, Error::LinkEscape { path, .. } if path == "passwd"), "{target}: {error}");
    }
    // Listed in the manifest: refused before the archive is read further.
    let listed = json!([{"type": "hardlink", "path": "passwd", "target": "../../../../etc/passwd"}]);
    let error = setup.refuse(archive(vec![manifest(listed)]));
    assert!(matches!(error, Error::LinkEscape { .. }), "{error}");
    // A hard link to something that is not an earlier file of the package.
    let dangling = json!([{"type": "hardlink", "path": "b", "target": "a"}, file_entry("a", b"x")]);
    let error = setup.refuse(archive(vec![manifest(dangling)]));
    assert!(matches!(error, Error::HardLinkTarget { .. }), "{error}");
}

#[test]
fn device_nodes_fifos_and_sparse_files_are_refused() {
    let mut setup = setup();
    for (kind, name) in [
        (tar::EntryType::Char, "character device"),
        (tar::EntryType::Block, "block device"),
        (tar::EntryType::Fifo, "FIFO"),
        (tar::EntryType::GNUSparse, "sparse file"),
    ] {
        let payload = archive(vec![manifest(json!([file_entry("a", b"x")])), raw("console", kind, vec![])]);
        let error = setup.refuse(payload);
        assert!(matches!(&error, Error::ForbiddenEntryType { kind, .. } if kind == name), "{error}");
    }
}

#[test]
fn entries_larger_than_declared_are_refused() {
    let mut setup = setup();
    let payload = archive(vec![
        manifest(json!([file_entry("a", &[7u8; 10])])),
        raw("a", tar::EntryType::Regular, vec![7u8; 100]),
    ]);
    let error = setup.refuse(payload);
    assert!(matches!(error, Error::EntrySize { declared: 10, found: 100, .. }), "{error}");
}

#[test]
fn archive_bombs_stop_at_the_declared_size() {
    let mut setup = setup();
    // 256 MiB of zeros (a few kilobytes compressed) where the manifest declares 1 KiB: refused from the header,
    // before any of it is decompressed.
    let payload =
        archive(vec![manifest(json!([file_entry("a", &[0u8; 1024])])), zeros("a", tar::EntryType::Regular, 256 << 20)]);
    assert!(payload.len() < 1 << 20, "the bomb is small: {}", payload.len());
    let error = setup.refuse(payload);
    assert!(matches!(error, Error::EntrySize { declared: 1024, found: 268435456, .. }), "{error}");

    // A 256 MiB GNU long name, or PAX extension header: reading stops at the per-entry header budget.
    for kind in [tar::EntryType::GNULongName, tar::EntryType::XHeader] {
        let payload = archive(vec![
            manifest(json!([file_entry("a", b"x")])),
            zeros("././@LongLink", kind, 256 << 20),
            raw("a", tar::EntryType::Regular, b"x".to_vec()),
        ]);
        let error = setup.refuse(payload);
        assert!(
            matches!(error, Error::ArchiveBomb { limit, .. } if limit == custody_install::MAX_HEADER_BYTES),
            "{kind:?}: {error}"
        );
    }

    // A manifest of 256 MiB is not read at all.
    let payload = archive(vec![zeros(custody_install::MANIFEST_NAME, tar::EntryType::Regular, 256 << 20)]);
    let error = setup.refuse(payload);
    assert!(matches!(&error, Error::ArchiveBomb { what, .. } if what == "the manifest"), "{error}");
}

#[test]
fn archive_and_manifest_must_agree() {
    let mut setup = setup();
    let listed = || manifest(json!([file_entry("a", b"real"), file_entry("b", b"b")]));

    // Content that is not what the manifest hashed.
    let payload = archive(vec![listed(), raw("a", tar::EntryType::Regular, b"fake".to_vec())]);
    assert!(matches!(setup.refuse(payload), Error::EntryHash { path } if path == "a"));

    // An entry the manifest does not list.
    let payload = archive(vec![listed(), raw("extra", tar::EntryType::Regular, b"x".to_vec())]);
    assert!(matches!(setup.refuse(payload), Error::NotInManifest { path } if path == "extra"));

    // A listed entry that the archive lacks.
    let payload = archive(vec![listed(), raw("a", tar::EntryType::Regular, b"real".to_vec())]);
    assert!(matches!(setup.refuse(payload), Error::MissingEntries { path, missing: 1 } if path == "b"));

    // Out of the manifest's order.
    let payload = archive(vec![listed(), raw("b", tar::EntryType::Regular, b"b".to_vec())]);
    assert!(matches!(setup.refuse(payload), Error::EntryOrder { path, .. } if path == "b"));

    // An entry appearing twice.
    let payload = archive(vec![
        listed(),
        raw("a", tar::EntryType::Regular, b"real".to_vec()),
        raw("b", tar::EntryType::Regular, b"b".to_vec()),
        raw("a", tar::EntryType::Regular, b"real".to_vec()),
    ]);
    assert!(matches!(setup.refuse(payload), Error::EntryOrder { path, .. } if path == "a"));

    // Another type than the manifest's.
    let payload = archive(vec![listed(), raw("a/", tar::EntryType::Directory, vec![])]);
    assert!(matches!(setup.refuse(payload), Error::EntryMismatch { path, .. } if path == "a"));

    // A symlink whose target differs from the manifest's.
    let payload = archive(vec![
        manifest(json!([{"type": "symlink", "path": "l", "target": "a"}])),
        link("l", tar::EntryType::Symlink, "b"),
    ]);
    assert!(matches!(setup.refuse(payload), Error::EntryMismatch { path, .. } if path == "l"));

    // No manifest first.
    let payload = archive(vec![raw("a", tar::EntryType::Regular, b"real".to_vec()), listed()]);
    assert!(matches!(setup.refuse(payload), Error::ManifestMissing { found } if found == "a"));

    // A manifest for another version than the signed entry.
    let mut builder = PackageBuilder::new("acme", "9.9");
    builder.file("a", 0o644, "x");
    let payload = package(&builder, ArchiveFormat::TarZstd);
    assert!(matches!(setup.refuse(payload), Error::ManifestNotForUpdate { .. }));

    // A manifest whose total is not the sum of its files.
    let wrong_total =
        json!({"schema": 1, "product": "acme", "version": "2.0", "total_size": 1, "entries": [file_entry("a", b"xy")]});
    let payload = archive(vec![
        raw(custody_install::MANIFEST_NAME, tar::EntryType::Regular, serde_json::to_vec(&wrong_total).unwrap()),
        raw("a", tar::EntryType::Regular, b"xy".to_vec()),
    ]);
    assert!(matches!(setup.refuse(payload), Error::ManifestInvalid(reason) if reason.contains("total_size")));

    // Not an archive at all.
    assert!(matches!(setup.refuse(b"not zstd".to_vec()), Error::Archive(_)));
}

#[test]
fn a_good_package_still_installs_afterwards() {
    let mut setup = setup();
    let payload =
        archive(vec![manifest(json!([file_entry("a", b"x")])), raw("../evil", tar::EntryType::Regular, b"x".to_vec())]);
    setup.refuse(payload);
    let installer_args = json!({"handler": "archive", "format": "tar-zstd", "destination": setup.destination});
    let good = package(&app_tree("acme", "2.0"), ArchiveFormat::TarZstd);
    let artifact = verify(&setup.staging, &update("app", "acme", "2.0", installer_args, good));
    setup.installer.install(artifact).unwrap();
    assert_eq!(tree(&setup.destination), expected_tree(&app_tree("acme", "2.0")));
    assert!(!Path::new(&setup.outside("evil")).exists());
}
