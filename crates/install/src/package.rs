//! Packages: a tar archive, optionally zstd-compressed, whose first entry is a manifest listing every other entry
//! with its type, mode, size and SHA-256 (docs/packages.md).
//!
//! Extraction trusts nothing in the archive that the manifest does not also say, and the manifest itself is
//! checked before anything is written: paths must be relative and normalized, links must stay inside the package
//! root, the sizes are summed and bounded. Every read from the archive has a budget (an entry's header and
//! extensions, then exactly its declared content), so a hostile archive stops being read at the limit instead of
//! being decompressed in full.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use aws_lc_rs::digest;
use custody_catalog::ArchiveFormat;
use serde::{Deserialize, Serialize};

use crate::{Error, PathProblem, fs};

/// The name of the first entry of every package.
pub const MANIFEST_NAME: &str = "custody-manifest.json";
/// The manifest schema this build writes and reads.
pub const MANIFEST_SCHEMA: u64 = 1;
/// The largest manifest accepted.
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;
/// The most entries a manifest may list.
pub const MAX_ENTRIES: usize = 1_000_000;
/// What may be read for one entry besides its content: its header, extension headers (long names, PAX) and the
/// padding of the entry before it.
pub const MAX_HEADER_BYTES: u64 = 64 * 1024;
/// The largest zstd window accepted (2^27 = 128 MiB, zstd's own default limit).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
const MAX_PATH: usize = 4096;
const MAX_COMPONENT: usize = 255;
/// How many symbolic links resolving one link may pass through (the kernel's limit is 40).
const MAX_LINK_HOPS: usize = 40;

/// The manifest: what the package holds, entry by entry, in archive order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_SCHEMA`].
    pub schema: u64,
    /// The product the package is for; must be the signed entry's.
    pub product: String,
    /// The version the package installs; must be the signed entry's, as written there.
    pub version: String,
    /// The sum of the sizes of the `file` entries.
    pub total_size: u64,
    /// Every entry except the manifest itself, in the order the archive holds them.
    pub entries: Vec<ManifestEntry>,
}

/// One entry of the package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ManifestEntry {
    Dir {
        path: String,
        mode: Mode,
    },
    File {
        path: String,
        mode: Mode,
        size: u64,
        /// 64 lower-case hex digits.
        sha256: String,
    },
    /// A symbolic link; `target` is relative and resolves inside the package.
    Symlink {
        path: String,
        target: String,
    },
    /// A hard link to a `file` entry listed before it.
    Hardlink {
        path: String,
        target: String,
    },
}

impl ManifestEntry {
    pub fn path(&self) -> &str {
        match self {
            Self::Dir { path, .. }
            | Self::File { path, .. }
            | Self::Symlink { path, .. }
            | Self::Hardlink { path, .. } => path,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Self::Dir { .. } => "dir",
            Self::File { .. } => "file",
            Self::Symlink { .. } => "symlink",
            Self::Hardlink { .. } => "hardlink",
        }
    }
}

/// Permission bits, written in the manifest as an octal string (`"0755"`). Only `0` to `0777`: set-user-id,
/// set-group-id and sticky bits are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let valid = (3..=4).contains(&text.len()) && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
        match u32::from_str_radix(&text, 8) {
            Ok(mode) if valid && mode <= 0o777 => Ok(Self(mode)),
            _ => Err(serde::de::Error::custom(format!(
                "mode {text:?}: expected octal permission bits \"0000\" to \"0777\" (no setuid, setgid or sticky bits)"
            ))),
        }
    }
}

impl Manifest {
    /// Parses and validates manifest bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let manifest: Self = serde_json::from_slice(bytes).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every rule of the format (docs/packages.md) that does not need the archive.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| Error::ManifestInvalid(reason);
        if self.schema != MANIFEST_SCHEMA {
            return Err(invalid(format!(
                "schema {} is not supported; this build reads schema {MANIFEST_SCHEMA}",
                self.schema
            )));
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(invalid(format!("{} entries, at most {MAX_ENTRIES} are allowed", self.entries.len())));
        }
        let mut by_path: HashMap<&str, (usize, &ManifestEntry)> = HashMap::with_capacity(self.entries.len());
        let mut sum = 0u64;
        for (index, entry) in self.entries.iter().enumerate() {
            let path = entry.path();
            check_path(path).map_err(|problem| Error::UnsafePath { path: path.to_owned(), problem })?;
            if let Some((parent, _)) = path.rsplit_once('/')
                && !matches!(by_path.get(parent), Some((_, ManifestEntry::Dir { .. })))
            {
                return Err(invalid(format!("{path:?}: its parent {parent:?} is not listed before it as a dir")));
            }
            match entry {
                ManifestEntry::Dir { .. } => {}
                ManifestEntry::File { size, sha256, .. } => {
                    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                        return Err(invalid(format!("{path:?}: sha256 must be 64 lower-case hex digits")));
                    }
                    sum = sum.checked_add(*size).ok_or_else(|| invalid("sizes overflow 64 bits".into()))?;
                }
                ManifestEntry::Symlink { target, .. } => {
                    if target.is_empty() || target.len() > MAX_PATH || target.chars().any(char::is_control) {
                        return Err(invalid(format!(
                            "{path:?}: symlink target must be 1 to 4096 bytes, no control characters"
                        )));
                    }
                }
                ManifestEntry::Hardlink { target, .. } => {
                    check_link_target_path(path, target)?;
                    if !matches!(by_path.get(target.as_str()), Some((_, ManifestEntry::File { .. }))) {
                        return Err(Error::HardLinkTarget { path: path.to_owned(), target: target.clone() });
                    }
                }
            }
            if by_path.insert(path, (index, entry)).is_some() {
                return Err(invalid(format!("{path:?} is listed twice")));
            }
        }
        if sum != self.total_size {
            return Err(invalid(format!("total_size is {}, the file sizes add up to {sum}", self.total_size)));
        }
        // Symbolic links are resolved once every link is known: a link may point through one listed after it.
        let links: HashMap<&str, &str> = self
            .entries
            .iter()
            .filter_map(|entry| match entry {
                ManifestEntry::Symlink { path, target } => Some((path.as_str(), target.as_str())),
                _ => None,
            })
            .collect();
        for (path, target) in &links {
            if !link_stays_inside(path, target, &links) {
                return Err(Error::LinkEscape { path: (*path).to_owned(), target: (*target).to_owned() });
            }
        }
        Ok(())
    }
}

/// Checks a relative package path: normalized, no `..`, no control characters, bounded lengths.
fn check_path(path: &str) -> Result<(), PathProblem> {
    if path.chars().any(char::is_control) {
        return Err(PathProblem::BadCharacters);
    }
    if path.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    if path.split('/').any(|component| component == "..") {
        return Err(PathProblem::ParentDir);
    }
    if path.split('/').any(|component| matches!(component, "" | ".")) {
        return Err(PathProblem::NotNormalized);
    }
    if path.len() > MAX_PATH || path.split('/').any(|component| component.len() > MAX_COMPONENT) {
        return Err(PathProblem::TooLong);
    }
    if path == MANIFEST_NAME {
        return Err(PathProblem::Reserved);
    }
    Ok(())
}

/// A hard link's target is a package path; an absolute one or one with `..` escapes the root.
fn check_link_target_path(path: &str, target: &str) -> Result<(), Error> {
    match check_path(target) {
        Ok(()) => Ok(()),
        Err(PathProblem::Absolute | PathProblem::ParentDir) => {
            Err(Error::LinkEscape { path: path.to_owned(), target: target.to_owned() })
        }
        Err(problem) => Err(Error::UnsafePath { path: target.to_owned(), problem }),
    }
}

/// Whether the symbolic link at `path` with `target` resolves inside the package root, following the package's
/// other links (`links`: path → target) the way the kernel would, with its hop limit. A target that does not exist
/// is fine as long as the path to it never leaves the root.
fn link_stays_inside(path: &str, target: &str, links: &HashMap<&str, &str>) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut resolved: Vec<&str> = path.split('/').collect();
    resolved.pop();
    let mut pending: Vec<&str> = target.split('/').rev().collect();
    let mut hops = 0;
    while let Some(component) = pending.pop() {
        match component {
            "" | "." => {}
            ".." => {
                if resolved.pop().is_none() {
                    return false;
                }
            }
            name => {
                resolved.push(name);
                if let Some(next) = links.get(resolved.join("/").as_str()) {
                    hops += 1;
                    if hops > MAX_LINK_HOPS || next.starts_with('/') {
                        return false;
                    }
                    resolved.pop();
                    pending.extend(next.split('/').rev());
                }
            }
        }
    }
    true
}

/// Limits what the tar reader may pull from the decompressed stream; the extraction sets the budget before each
/// step. Running out is an error (not an end of file), so a truncated read can never pass for a complete archive.
struct Budget<R> {
    inner: R,
    state: Rc<BudgetState>,
}

struct BudgetState {
    remaining: Cell<u64>,
    limit: Cell<u64>,
    exceeded: Cell<bool>,
}

impl BudgetState {
    fn set(&self, limit: u64) {
        self.remaining.set(limit);
        self.limit.set(limit);
    }
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let remaining = self.state.remaining.get();
        if remaining == 0 {
            self.state.exceeded.set(true);
            return Err(io::Error::other("read budget exceeded"));
        }
        let allowed = buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let count = self.inner.read(&mut buf[..allowed])?;
        self.state.remaining.set(remaining - count as u64);
        Ok(count)
    }
}

/// Extracts a package from `reader` into the empty directory `root`, checking it against its manifest (which must
/// name `product` and `version`) and checking free space once the manifest's total size is known. On error, `root`
/// may hold part of the package; the caller removes it.
pub(crate) fn extract(
    reader: impl Read,
    format: ArchiveFormat,
    root: &Path,
    product: &str,
    version: &str,
) -> Result<Manifest, Error> {
    let state = Rc::new(BudgetState { remaining: Cell::new(0), limit: Cell::new(0), exceeded: Cell::new(false) });
    let stream: Box<dyn Read> = match format {
        ArchiveFormat::Tar => Box::new(io::BufReader::new(reader)),
        ArchiveFormat::TarZstd => {
            let mut decoder = zstd::Decoder::new(reader).map_err(|e| Error::Archive(format!("zstd: {e}")))?;
            decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|e| Error::Archive(format!("zstd: {e}")))?;
            Box::new(decoder)
        }
    };
    let mut archive = tar::Archive::new(Budget { inner: stream, state: state.clone() });
    // Maps a read error: the budget running out is an archive bomb, anything else a malformed archive.
    let read_error = |what: &str| {
        let state = state.clone();
        let what = what.to_owned();
        move |error: io::Error| match state.exceeded.get() {
            true => Error::ArchiveBomb { what, limit: state.limit.get() },
            false => Error::Archive(format!("{what}: {error}")),
        }
    };

    state.set(MAX_HEADER_BYTES);
    let mut entries = archive.entries().map_err(read_error("the archive header"))?;
    let mut first = match entries.next() {
        Some(entry) => entry.map_err(read_error("the manifest's header"))?,
        None => return Err(Error::ManifestMissing { found: "(empty archive)".into() }),
    };
    let first_path = String::from_utf8_lossy(&first.path_bytes()).into_owned();
    if first_path != MANIFEST_NAME || first.header().entry_type() != tar::EntryType::Regular {
        return Err(Error::ManifestMissing { found: first_path });
    }
    if first.size() > MAX_MANIFEST_BYTES {
        return Err(Error::ArchiveBomb { what: "the manifest".into(), limit: MAX_MANIFEST_BYTES });
    }
    state.set(first.size());
    let mut manifest_bytes = Vec::new();
    first.read_to_end(&mut manifest_bytes).map_err(read_error("the manifest"))?;
    drop(first);
    let manifest = Manifest::parse(&manifest_bytes)?;
    if manifest.product != product || manifest.version != version {
        return Err(Error::ManifestNotForUpdate {
            expected: format!("{product} {version}"),
            found: format!("{} {}", manifest.product, manifest.version),
        });
    }
    // Content plus a block per entry for metadata and rounding.
    let needed = manifest.total_size.saturating_add(4096 * manifest.entries.len() as u64);
    fs::ensure_space(root, needed)?;

    let positions: HashMap<&str, usize> =
        manifest.entries.iter().enumerate().map(|(index, entry)| (entry.path(), index)).collect();
    let links: HashMap<&str, &str> = manifest
        .entries
        .iter()
        .filter_map(|entry| match entry {
            ManifestEntry::Symlink { path, target } => Some((path.as_str(), target.as_str())),
            _ => None,
        })
        .collect();
    let mut directories: Vec<(PathBuf, u32)> = Vec::new();
    let mut index = 0usize;
    loop {
        state.set(MAX_HEADER_BYTES);
        let what = match manifest.entries.get(index) {
            Some(expected) => format!("the header of entry {:?}", expected.path()),
            None => "the end of the archive".to_owned(),
        };
        let mut entry = match entries.next() {
            Some(entry) => entry.map_err(read_error(&what))?,
            None => break,
        };
        let raw_path = entry.path_bytes().into_owned();
        let entry_type = entry.header().entry_type();
        let mut path = String::from_utf8(raw_path).map_err(|e| Error::UnsafePath {
            path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            problem: PathProblem::BadCharacters,
        })?;
        if entry_type == tar::EntryType::Directory && path.len() > 1 && path.ends_with('/') {
            path.pop();
        }
        check_path(&path).map_err(|problem| Error::UnsafePath { path: path.clone(), problem })?;
        let link_name = entry.link_name_bytes().map(|name| String::from_utf8_lossy(&name).into_owned());
        match entry_type {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = link_name.clone().unwrap_or_default();
                if !link_stays_inside(&path, &target, &links) {
                    return Err(Error::LinkEscape { path, target });
                }
            }
            tar::EntryType::Link => check_link_target_path(&path, &link_name.clone().unwrap_or_default())?,
            other => return Err(Error::ForbiddenEntryType { path, kind: entry_type_name(other) }),
        }
        let Some(expected) = manifest.entries.get(index) else {
            return Err(match positions.contains_key(path.as_str()) {
                true => Error::EntryOrder { path, expected: "(end of archive)".into() },
                false => Error::NotInManifest { path },
            });
        };
        if expected.path() != path {
            return Err(match positions.contains_key(path.as_str()) {
                true => Error::EntryOrder { path, expected: expected.path().to_owned() },
                false => Error::NotInManifest { path },
            });
        }
        let mismatch = |problem: String| Error::EntryMismatch { path: path.clone(), problem };
        let found_size = entry.size();
        let declared = match expected {
            ManifestEntry::File { size, .. } => *size,
            _ => 0,
        };
        let destination = root.join(&path);
        match (expected, entry_type) {
            (ManifestEntry::Dir { mode, .. }, tar::EntryType::Directory) => {
                if found_size != 0 {
                    return Err(Error::EntrySize { path, declared, found: found_size });
                }
                DirBuilder::new().mode(0o700).create(&destination).map_err(Error::io("create", &destination))?;
                directories.push((destination, mode.0));
            }
            (ManifestEntry::File { mode, size, sha256, .. }, tar::EntryType::Regular) => {
                if found_size != *size {
                    return Err(Error::EntrySize { path, declared, found: found_size });
                }
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&destination)
                    .map_err(Error::io("create", &destination))?;
                state.set(*size);
                let mut context = digest::Context::new(&digest::SHA256);
                let mut buffer = vec![0u8; 64 * 1024];
                let mut copied = 0u64;
                while copied < *size {
                    let count = entry.read(&mut buffer).map_err(read_error(&format!("the content of {path:?}")))?;
                    if count == 0 {
                        return Err(Error::Archive(format!("{path:?}: the archive ends inside its content")));
                    }
                    context.update(&buffer[..count]);
                    file.write_all(&buffer[..count]).map_err(Error::io("write", &destination))?;
                    copied += count as u64;
                }
                if hex::encode(context.finish()) != *sha256 {
                    return Err(Error::EntryHash { path });
                }
                file.set_permissions(std::fs::Permissions::from_mode(mode.0))
                    .map_err(Error::io("set mode of", &destination))?;
            }
            (ManifestEntry::Symlink { target, .. }, tar::EntryType::Symlink) => {
                if found_size != 0 {
                    return Err(Error::EntrySize { path, declared, found: found_size });
                }
                if link_name.as_deref() != Some(target.as_str()) {
                    return Err(mismatch(format!("link target {link_name:?} differs from the manifest's {target:?}")));
                }
                std::os::unix::fs::symlink(target, &destination).map_err(Error::io("create link", &destination))?;
            }
            (ManifestEntry::Hardlink { target, .. }, tar::EntryType::Link) => {
                if found_size != 0 {
                    return Err(Error::EntrySize { path, declared, found: found_size });
                }
                if link_name.as_deref() != Some(target.as_str()) {
                    return Err(mismatch(format!("link target {link_name:?} differs from the manifest's {target:?}")));
                }
                std::fs::hard_link(root.join(target), &destination).map_err(Error::io("create link", &destination))?;
            }
            (expected, found) => {
                return Err(mismatch(format!(
                    "the archive holds a {}, the manifest a {}",
                    entry_type_name(found),
                    expected.type_name()
                )));
            }
        }
        index += 1;
    }
    if let Some(missing) = manifest.entries.get(index) {
        return Err(Error::MissingEntries { path: missing.path().to_owned(), missing: manifest.entries.len() - index });
    }
    // Directory modes last, deepest first, so that a read-only directory does not stop its own extraction.
    for (directory, mode) in directories.iter().rev() {
        std::fs::set_permissions(directory, std::fs::Permissions::from_mode(*mode))
            .map_err(Error::io("set mode of", directory))?;
    }
    Ok(manifest)
}

fn entry_type_name(entry_type: tar::EntryType) -> String {
    match entry_type {
        tar::EntryType::Regular => "regular file".into(),
        tar::EntryType::Directory => "directory".into(),
        tar::EntryType::Symlink => "symbolic link".into(),
        tar::EntryType::Link => "hard link".into(),
        tar::EntryType::Char => "character device".into(),
        tar::EntryType::Block => "block device".into(),
        tar::EntryType::Fifo => "FIFO".into(),
        tar::EntryType::Continuous => "contiguous file".into(),
        tar::EntryType::GNUSparse => "sparse file".into(),
        tar::EntryType::XGlobalHeader => "PAX global header".into(),
        other => format!("type {:?}", other.as_byte() as char),
    }
}

/// Builds packages: the publisher's side of the format. Validates the manifest before writing anything, so it never
/// writes a package that extraction would refuse.
#[derive(Debug, Clone)]
pub struct PackageBuilder {
    product: String,
    version: String,
    entries: Vec<(ManifestEntry, Option<Source>)>,
}

#[derive(Debug, Clone)]
enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl PackageBuilder {
    pub fn new(product: &str, version: &str) -> Self {
        Self { product: product.to_owned(), version: version.to_owned(), entries: Vec::new() }
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.entries.push((ManifestEntry::Dir { path: path.to_owned(), mode: Mode(mode) }, None));
        self
    }

    pub fn file(&mut self, path: &str, mode: u32, content: impl Into<Vec<u8>>) -> &mut Self {
        let content = content.into();
        let entry = ManifestEntry::File {
            path: path.to_owned(),
            mode: Mode(mode),
            size: content.len() as u64,
            sha256: hex::encode(digest::digest(&digest::SHA256, &content)),
        };
        self.entries.push((entry, Some(Source::Bytes(content))));
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entries.push((ManifestEntry::Symlink { path: path.to_owned(), target: target.to_owned() }, None));
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entries.push((ManifestEntry::Hardlink { path: path.to_owned(), target: target.to_owned() }, None));
        self
    }

    /// Adds the contents of directory `source` (not the directory itself) in sorted order: directories, regular
    /// files (hashed now, read again when writing) and symbolic links. Anything else is refused.
    pub fn add_tree(&mut self, source: &Path) -> Result<&mut Self, Error> {
        let mut pending = vec![(source.to_owned(), String::new())];
        while let Some((directory, prefix)) = pending.pop() {
            let mut names: Vec<_> = std::fs::read_dir(&directory)
                .map_err(Error::io("read", &directory))?
                .map(|entry| entry.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(Error::io("read", &directory))?;
            names.sort();
            let mut subdirectories = Vec::new();
            for name in names {
                let full = directory.join(&name);
                let name = name.into_string().map_err(|name| Error::UnsafePath {
                    path: name.to_string_lossy().into_owned(),
                    problem: PathProblem::BadCharacters,
                })?;
                let path = format!("{prefix}{name}");
                let metadata = std::fs::symlink_metadata(&full).map_err(Error::io("stat", &full))?;
                let mode = metadata.permissions().mode() & 0o777;
                if metadata.is_dir() {
                    self.dir(&path, mode);
                    subdirectories.push((full, format!("{path}/")));
                } else if metadata.is_file() {
                    let mut file = File::open(&full).map_err(Error::io("open", &full))?;
                    let mut context = digest::Context::new(&digest::SHA256);
                    let size = io::copy(&mut file, &mut HashWriter(&mut context)).map_err(Error::io("read", &full))?;
                    let sha256 = hex::encode(context.finish());
                    let entry = ManifestEntry::File { path, mode: Mode(mode), size, sha256 };
                    self.entries.push((entry, Some(Source::File(full))));
                } else if metadata.is_symlink() {
                    let target = std::fs::read_link(&full).map_err(Error::io("read link", &full))?;
                    self.symlink(&path, &target.to_string_lossy());
                } else {
                    let kind = format!("{:?}", metadata.file_type());
                    return Err(Error::ForbiddenEntryType { path, kind });
                }
            }
            // Depth-first in sorted order: the stack pops the first subdirectory first.
            pending.extend(subdirectories.into_iter().rev());
        }
        Ok(self)
    }

    /// The validated manifest.
    pub fn manifest(&self) -> Result<Manifest, Error> {
        let entries: Vec<ManifestEntry> = self.entries.iter().map(|(entry, _)| entry.clone()).collect();
        let total_size = entries
            .iter()
            .map(|entry| match entry {
                ManifestEntry::File { size, .. } => *size,
                _ => 0,
            })
            .fold(0u64, u64::saturating_add);
        let manifest = Manifest {
            schema: MANIFEST_SCHEMA,
            product: self.product.clone(),
            version: self.version.clone(),
            total_size,
            entries,
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// Writes the package (`tar`, or `tar-zstd` at compression level `level`) to `out` and returns its manifest.
    /// Headers are normalized (owner 0, time 0) so that the same input gives the same bytes.
    pub fn write(&self, out: impl Write, format: ArchiveFormat, level: i32) -> Result<Manifest, Error> {
        let manifest = self.manifest()?;
        let write_error = |e: io::Error| Error::Io { action: "write package", path: PathBuf::new(), source: e };
        match format {
            ArchiveFormat::Tar => self.write_tar(out, &manifest)?,
            ArchiveFormat::TarZstd => {
                let mut encoder = zstd::Encoder::new(out, level).map_err(write_error)?;
                self.write_tar(&mut encoder, &manifest)?;
                encoder.finish().map_err(write_error)?;
            }
        }
        Ok(manifest)
    }

    fn write_tar(&self, out: impl Write, manifest: &Manifest) -> Result<(), Error> {
        let write_error = |e: io::Error| Error::Io { action: "write package", path: PathBuf::new(), source: e };
        let header = |entry_type: tar::EntryType, size: u64, mode: u32| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(entry_type);
            header.set_size(size);
            header.set_mode(mode);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header
        };
        let mut builder = tar::Builder::new(out);
        // Invariant: a manifest of strings and integers always serializes.
        let manifest_bytes = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
        let mut manifest_header = header(tar::EntryType::Regular, manifest_bytes.len() as u64, 0o644);
        builder.append_data(&mut manifest_header, MANIFEST_NAME, manifest_bytes.as_slice()).map_err(write_error)?;
        for (entry, source) in &self.entries {
            match (entry, source) {
                (ManifestEntry::Dir { path, mode }, _) => {
                    let mut header = header(tar::EntryType::Directory, 0, mode.0);
                    builder.append_data(&mut header, path, io::empty()).map_err(write_error)?;
                }
                (ManifestEntry::File { path, mode, size, sha256 }, Some(source)) => {
                    let mut header = header(tar::EntryType::Regular, *size, mode.0);
                    let mut context = digest::Context::new(&digest::SHA256);
                    let result = match source {
                        Source::Bytes(bytes) => {
                            context.update(bytes);
                            builder.append_data(&mut header, path, bytes.as_slice())
                        }
                        Source::File(file) => {
                            let reader = File::open(file).map_err(Error::io("open", file))?;
                            builder.append_data(
                                &mut header,
                                path,
                                HashReader { inner: reader.take(*size), context: &mut context },
                            )
                        }
                    };
                    result.map_err(write_error)?;
                    if hex::encode(context.finish()) != *sha256 {
                        return Err(Error::EntryMismatch {
                            path: path.clone(),
                            problem: "the file changed while the package was built".into(),
                        });
                    }
                }
                (ManifestEntry::Symlink { path, target }, _) => {
                    let mut header = header(tar::EntryType::Symlink, 0, 0o777);
                    builder.append_link(&mut header, path, target).map_err(write_error)?;
                }
                (ManifestEntry::Hardlink { path, target }, _) => {
                    let mut header = header(tar::EntryType::Link, 0, 0o644);
                    builder.append_link(&mut header, path, target).map_err(write_error)?;
                }
                (ManifestEntry::File { path, .. }, None) => {
                    // Invariant: `file` and `add_tree` always attach a source to a file entry.
                    unreachable!("file entry {path:?} without content");
                }
            }
        }
        builder.into_inner().map_err(write_error)?.flush().map_err(write_error)?;
        Ok(())
    }
}

/// Feeds everything written into a digest (for hashing with `io::copy`).
struct HashWriter<'a>(&'a mut digest::Context);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hashes what is read through it.
struct HashReader<'a, R> {
    inner: R,
    context: &'a mut digest::Context,
}

impl<R: Read> Read for HashReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buf)?;
        self.context.update(&buf[..count]);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for good in ["a", "bin/acme", "a b/c.d", "..a", "a..", ".hidden"] {
            assert_eq!(check_path(good), Ok(()), "{good:?}");
        }
        for (bad, problem) in [
            ("/etc/passwd", PathProblem::Absolute),
            ("../x", PathProblem::ParentDir),
            ("a/../../x", PathProblem::ParentDir),
            ("", PathProblem::NotNormalized),
            ("./a", PathProblem::NotNormalized),
            ("a//b", PathProblem::NotNormalized),
            ("a/", PathProblem::NotNormalized),
            ("a\nb", PathProblem::BadCharacters),
            ("a\0b", PathProblem::BadCharacters),
            (MANIFEST_NAME, PathProblem::Reserved),
        ] {
            assert_eq!(check_path(bad), Err(problem), "{bad:?}");
        }
        assert_eq!(check_path(&"a".repeat(256)), Err(PathProblem::TooLong));
    }

    #[test]
    fn links_resolve_through_other_links() {
        let links: HashMap<&str, &str> =
            [("d/up", ".."), ("d/loop", "loop"), ("lib", "d"), ("d/twice", "../..")].into_iter().collect();
        assert!(link_stays_inside("d/x", "../a", &links));
        assert!(link_stays_inside("x", "lib/up/a", &links)); // lib -> d, d/up -> root: inside
        assert!(!link_stays_inside("x", "lib/up/..", &links)); // ... then above the root
        assert!(!link_stays_inside("m", "d/up/..", &links));
        assert!(!link_stays_inside("x", "/etc", &links));
        assert!(!link_stays_inside("d/loop", "loop", &links));
        assert!(!link_stays_inside("a/b", "../../x", &links));
        assert!(link_stays_inside("a/b", "../x", &links));
    }

    #[test]
    fn manifest_rules() {
        let mut builder = PackageBuilder::new("acme", "1.0");
        builder.dir("bin", 0o755).file("bin/acme", 0o755, b"#!/bin/true\n".to_vec()).symlink("acme", "bin/acme");
        builder.hardlink("acme2", "bin/acme");
        let manifest = builder.manifest().unwrap();
        assert_eq!(manifest.total_size, 12);
        let json = serde_json::to_vec(&manifest).unwrap();
        assert_eq!(Manifest::parse(&json).unwrap(), manifest);
        assert!(String::from_utf8(json).unwrap().contains(r#""mode":"0755""#));

        let fails = |build: &dyn Fn(&mut PackageBuilder)| {
            let mut builder = PackageBuilder::new("acme", "1.0");
            build(&mut builder);
            builder.manifest().unwrap_err()
        };
        assert!(matches!(
            fails(&|b| {
                b.file("a/b", 0o644, vec![]);
            }),
            Error::ManifestInvalid(_)
        ));
        assert!(matches!(
            fails(&|b| {
                b.file("a", 0o644, vec![]).file("a", 0o644, vec![]);
            }),
            Error::ManifestInvalid(_)
        ));
        assert!(matches!(
            fails(&|b| {
                b.symlink("a", "../x");
            }),
            Error::LinkEscape { .. }
        ));
        assert!(matches!(
            fails(&|b| {
                b.symlink("a", "/etc");
            }),
            Error::LinkEscape { .. }
        ));
        assert!(matches!(
            fails(&|b| {
                b.hardlink("a", "../x");
            }),
            Error::LinkEscape { .. }
        ));
        assert!(matches!(
            fails(&|b| {
                b.hardlink("a", "b");
            }),
            Error::HardLinkTarget { .. }
        ));
        assert!(matches!(
            fails(&|b| {
                b.file("../a", 0o644, vec![]);
            }),
            Error::UnsafePath { problem: PathProblem::ParentDir, .. }
        ));

        let bad_mode = br#"{"schema":1,"product":"p","version":"1","total_size":0,"entries":[{"type":"dir","path":"a","mode":"4755"}]}"#;
        assert!(matches!(Manifest::parse(bad_mode), Err(Error::ManifestInvalid(_))));
        let unknown = br#"{"schema":1,"product":"p","version":"1","total_size":0,"entries":[],"run":"x"}"#;
        assert!(matches!(Manifest::parse(unknown), Err(Error::ManifestInvalid(_))));
        let wrong_total = br#"{"schema":1,"product":"p","version":"1","total_size":5,"entries":[]}"#;
        assert!(matches!(Manifest::parse(wrong_total), Err(Error::ManifestInvalid(_))));
        let schema2 = br#"{"schema":2,"product":"p","version":"1","total_size":0,"entries":[]}"#;
        assert!(matches!(Manifest::parse(schema2), Err(Error::ManifestInvalid(_))));
    }

    #[test]
    fn round_trip_both_formats() {
        let source = tempfile::tempdir().unwrap();
        std::fs::create_dir(source.path().join("bin")).unwrap();
        std::fs::write(source.path().join("bin/tool"), b"tool").unwrap();
        std::fs::set_permissions(source.path().join("bin/tool"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::write(source.path().join("README"), vec![b'x'; 200_000]).unwrap();
        std::os::unix::fs::symlink("bin/tool", source.path().join("tool")).unwrap();
        let mut builder = PackageBuilder::new("acme", "2.0");
        builder.add_tree(source.path()).unwrap();
        for format in [ArchiveFormat::Tar, ArchiveFormat::TarZstd] {
            let mut bytes = Vec::new();
            let manifest = builder.write(&mut bytes, format, 3).unwrap();
            let out = tempfile::tempdir().unwrap();
            let root = out.path().join("root");
            std::fs::create_dir(&root).unwrap();
            assert_eq!(extract(bytes.as_slice(), format, &root, "acme", "2.0").unwrap(), manifest);
            assert_eq!(std::fs::read(root.join("bin/tool")).unwrap(), b"tool");
            assert_eq!(std::fs::metadata(root.join("bin/tool")).unwrap().permissions().mode() & 0o7777, 0o750);
            assert_eq!(std::fs::read_link(root.join("tool")).unwrap(), Path::new("bin/tool"));
            assert_eq!(std::fs::read(root.join("README")).unwrap().len(), 200_000);

            let other = out.path().join("other");
            std::fs::create_dir(&other).unwrap();
            let error = extract(bytes.as_slice(), format, &other, "acme", "3.0").unwrap_err();
            assert!(matches!(error, Error::ManifestNotForUpdate { .. }), "{error}");
        }
    }
}
