//! The data directory: its layout, and its creation on first start.
//!
//! ```text
//! DATA/custody-data.toml      marker: layout format (written last at creation)
//! DATA/server.toml            the configuration, if present (or --config FILE)
//! DATA/pki/                   the CA directory (custody-pki); the root key is NOT here (offline-keys/)
//! DATA/tls/{chain,key}.pem    the server certificate the HTTPS listener presents (hot-reloaded)
//! DATA/repo/                  the TUF repository (custody-repo): only the snapshot and timestamp keys
//! DATA/content/               the content store
//! DATA/pending/               signed role metadata waiting for more signatures
//! DATA/custody.db             the SQLite database (custody-store)
//! DATA/admin-token            the first admin token (mode 0600), written once
//! DATA/client/                what devices and admin CLIs need: root.json (TUF), custody.toml (rewritten at start)
//! DATA/offline-keys/          root and targets keys, the PKI root key: MOVE OFF THIS MACHINE (README.txt)
//! ```

use std::path::{Path, PathBuf};

use custody_pki::{CaDir, IntermediateRole};
use custody_repo::{ExpiryConfig, InitOptions, KeySpec, Passphrase, Repository};
use custody_tuf::PrivateKeyKind;

use crate::Error;
use crate::config::ServiceConfig;

const MARKER: &str = "custody-data.toml";
const FORMAT: u32 = 1;

/// The CA names of the service's intermediates in `pki/`.
pub const SERVICE_CA: &str = "service";
pub const DEVICE_CA: &str = "device";

/// An opened (or freshly created) data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

/// What creating a data directory made, for the startup message.
#[derive(Clone, Debug)]
pub struct Created {
    /// The SPKI SHA-256 of the service intermediate: the pin devices configure.
    pub service_pin: String,
    pub server_names: Vec<String>,
}

const OFFLINE_README: &str = "\
THESE KEYS BELONG OFFLINE. MOVE THIS DIRECTORY OFF THE SERVER NOW.

custody server created this data directory and, with it, the keys that must never stay on an online machine:

  repo-keys/root.*.pem      TUF root key: signs new roots (key rotation). Whoever holds it controls the repository.
  repo-keys/targets.*.pem   TUF targets key: signs which updates exist. Whoever holds it can publish updates.
  pki-root-key.pem          the custody root CA key: signs intermediates and the root CRL.
  root.json                 the first TUF root (not secret): the trust anchor of publishers and devices.

The update service never reads this directory: it signs only snapshot and timestamp (keys in repo/keys/), so a
compromised service can withhold updates but cannot create or change one.

Publishing from another machine (docs/api.md, \"Publishing an update\"):
  custody publish PACKAGE --description update.toml --config client/custody.toml --token-file admin-token \\
      --repo <this directory> --key <this directory>/repo-keys/targets.<id>.pem

Keep at least two copies (for example two encrypted USB sticks in different places). To encrypt the TUF keys, use
custody repo's key encryption (docs/repository.md, \"Keys\").
";

impl DataDir {
    /// Opens `dir`, creating it first when it does not exist or is empty.
    pub fn open_or_create(dir: &Path, config: &ServiceConfig) -> Result<(Self, Option<Created>), Error> {
        let empty = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
            Err(err) => return Err(Error::io(dir)(err)),
        };
        if empty {
            let created = Self::create(dir, config)?;
            return Ok((Self { root: dir.to_owned() }, Some(created)));
        }
        let marker = dir.join(MARKER);
        let text = std::fs::read_to_string(&marker).map_err(|_| Error::DataDir {
            path: dir.to_owned(),
            detail: format!(
                "not a custody data directory ({MARKER} is missing) and not empty; give an empty or new directory"
            ),
        })?;
        let format = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("format = ")?.parse::<u32>().ok())
            .ok_or_else(|| Error::DataDir { path: marker.clone(), detail: "no `format = N` line".into() })?;
        if format != FORMAT {
            return Err(Error::DataDir {
                path: marker,
                detail: format!("layout format {format} is not supported (this build reads format {FORMAT})"),
            });
        }
        Ok((Self { root: dir.to_owned() }, None))
    }

    /// Creates everything in a sibling directory and renames it into place, so a failure leaves nothing behind.
    fn create(dir: &Path, config: &ServiceConfig) -> Result<Created, Error> {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
        let tmp = parent.join(format!(".{name}.creating.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = Self::populate(&tmp, config).and_then(|created| {
            if dir.exists() {
                std::fs::remove_dir(dir).map_err(Error::io(dir))?;
            }
            std::fs::rename(&tmp, dir).map_err(Error::io(dir))?;
            Ok(created)
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    fn populate(tmp: &Path, config: &ServiceConfig) -> Result<Created, Error> {
        let data = Self { root: tmp.to_owned() };
        let now = jiff::Timestamp::now();
        std::fs::create_dir_all(data.offline_keys().join("repo-keys")).map_err(Error::io(tmp))?;

        // The PKI: root, service and device intermediates, the server certificate.
        let mut ca = CaDir::init(
            &data.pki(),
            "custody root CA",
            custody_pki::layout::ROOT_DAYS,
            custody_pki::layout::ROOT_CRL_DAYS,
            now,
        )?;
        let days = custody_pki::layout::INTERMEDIATE_DAYS;
        let crl_days = custody_pki::layout::INTERMEDIATE_CRL_DAYS;
        let service = ca.issue_intermediate(&IntermediateRole::Service, None, None, days, crl_days, now)?;
        ca.issue_intermediate(&IntermediateRole::Device, None, None, days, crl_days, now)?;
        let server_names = server_names(config);
        let server = ca.issue_server(SERVICE_CA, &server_names, None, custody_pki::layout::SERVER_DAYS, now)?;
        let issued = ca.entry_dir(&server);
        install_file(&issued.join("chain.pem"), &data.root.join("tls/chain.pem"), 0o644)?;
        install_file(&issued.join("key.pem"), &data.root.join("tls/key.pem"), 0o600)?;
        move_file(&data.pki().join("root/key.pem"), &data.offline_keys().join("pki-root-key.pem"))?;

        // The repository; root and targets keys go to offline-keys/.
        let mut expiry = ExpiryConfig::default();
        let wanted = &config.init.expiry;
        expiry.root = wanted.root.unwrap_or(expiry.root);
        expiry.targets = wanted.targets.unwrap_or(expiry.targets);
        expiry.delegated = wanted.delegated.unwrap_or(expiry.delegated);
        expiry.snapshot = wanted.snapshot.unwrap_or(expiry.snapshot);
        expiry.timestamp = wanted.timestamp.unwrap_or(expiry.timestamp);
        let key = KeySpec::single(PrivateKeyKind::Ed25519);
        let options = InitOptions { root: key, targets: key, snapshot: key, timestamp: key, expiry };
        Repository::init(&data.repo(), &options, Passphrase::none())?;
        let keys_dir = data.repo().join("keys");
        for entry in std::fs::read_dir(&keys_dir).map_err(Error::io(&keys_dir))? {
            let path = entry.map_err(Error::io(&keys_dir))?.path();
            let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if file_name.starts_with("root.") || file_name.starts_with("targets.") {
                move_file(&path, &data.offline_keys().join("repo-keys").join(&file_name))?;
            }
        }
        let root_json = data.repo().join("metadata/root.json");
        install_file(&root_json, &data.offline_keys().join("root.json"), 0o644)?;
        install_file(&root_json, &data.client_dir().join("root.json"), 0o644)?;
        write_file(&data.offline_keys().join("README.txt"), OFFLINE_README.as_bytes(), 0o644)?;
        for dir in [data.content(), data.pending()] {
            std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        }
        write_file(
            &tmp.join(MARKER),
            format!("# custody update service data directory\nformat = {FORMAT}\n").as_bytes(),
            0o644,
        )?;
        Ok(Created { service_pin: service.spki_sha256, server_names })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A configured path: relative ones are relative to the data directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }

    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }

    pub fn repo(&self) -> PathBuf {
        self.root.join("repo")
    }

    pub fn content(&self) -> PathBuf {
        self.root.join("content")
    }

    pub fn pending(&self) -> PathBuf {
        self.root.join("pending")
    }

    pub fn client_dir(&self) -> PathBuf {
        self.root.join("client")
    }

    pub fn offline_keys(&self) -> PathBuf {
        self.root.join("offline-keys")
    }

    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin-token")
    }

    /// The default configuration file.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("server.toml")
    }

    pub fn database_url(&self, config: &ServiceConfig) -> String {
        config
            .database
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.root.join("custody.db").display()))
    }

    /// Writes `client/custody.toml`: a transport configuration (docs/configuration.md) for devices and admin CLIs
    /// on this machine, with the service's URLs and pin and the CA files the service keeps current.
    pub fn write_client_config(&self, https_url: &str, http_url: &str) -> Result<PathBuf, Error> {
        let ca = CaDir::open(&self.pki())?;
        let pin = ca
            .cas()
            .get(SERVICE_CA)
            .and_then(|record| ca.entries().iter().find(|e| e.serial == record.serial))
            .map(|entry| entry.spki_sha256.clone())
            .ok_or_else(|| Error::DataDir { path: self.pki(), detail: "no service intermediate".into() })?;
        let text = format!(
            "# Written by custody server at each start: the transport configuration of a device or admin CLI\n\
             # on this machine (docs/configuration.md). Copy it with the PEM files for other machines.\n\
             [service]\nurl = \"{https_url}\"\n\n[admin]\nurl = \"{https_url}\"\n\n[tls]\n\
             roots = [\"../pki/root/cert.pem\"]\npins = [\"{pin}\"]\n\
             crls = [\"../pki/root/crl.pem\", \"../pki/ca/{SERVICE_CA}/crl.pem\"]\n\n\
             [content]\nsources = [\"{http_url}/targets/\"]\n",
            http_url = http_url.trim_end_matches('/'),
        );
        let path = self.client_dir().join("custody.toml");
        write_file(&path, text.as_bytes(), 0o644)?;
        Ok(path)
    }
}

/// The server certificate's names: localhost, the loopback addresses, this host's name, and the configured ones.
fn server_names(config: &ServiceConfig) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        let valid = !host.is_empty()
            && host
                .split('.')
                .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if valid {
            names.push(host.to_ascii_lowercase());
        }
    }
    names.extend(config.init.server_names.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|name| seen.insert(name.clone()));
    names
}

fn install_file(from: &Path, to: &Path, mode: u32) -> Result<(), Error> {
    let bytes = std::fs::read(from).map_err(Error::io(from))?;
    write_file(to, &bytes, mode)
}

fn move_file(from: &Path, to: &Path) -> Result<(), Error> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    std::fs::rename(from, to).map_err(Error::io(from))
}

/// Writes a file atomically with `mode` (custody-pki's writer: temporary file, fsync, rename, fsync of the directory).
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    custody_pki::layout::write_atomic(path, bytes, mode).map_err(Error::Pki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_complete_directory_and_keeps_offline_keys_out_of_the_service_paths() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        let config = ServiceConfig::default();
        let (data, created) = DataDir::open_or_create(&dir, &config).unwrap();
        let created = created.expect("a new directory");
        assert_eq!(created.service_pin.len(), 64);
        assert!(created.server_names.contains(&"127.0.0.1".to_owned()));
        for file in ["tls/chain.pem", "tls/key.pem", "repo/repo.toml", "repo/metadata/timestamp.json", MARKER] {
            assert!(data.root().join(file).exists(), "{file}");
        }
        let repo_keys: Vec<String> = std::fs::read_dir(data.repo().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(repo_keys.iter().all(|k| k.starts_with("snapshot.") || k.starts_with("timestamp.")), "{repo_keys:?}");
        assert!(!data.pki().join("root/key.pem").exists());
        assert!(data.offline_keys().join("pki-root-key.pem").exists());
        assert_eq!(std::fs::read_dir(data.offline_keys().join("repo-keys")).unwrap().count(), 2);
        assert!(std::fs::read_to_string(data.offline_keys().join("README.txt")).unwrap().contains("OFFLINE"));
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 1, "no temporary directory is left");

        // Opening again finds it; a foreign non-empty directory is refused.
        let (_, again) = DataDir::open_or_create(&dir, &config).unwrap();
        assert!(again.is_none());
        let foreign = base.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("x"), "x").unwrap();
        let err = DataDir::open_or_create(&foreign, &config).unwrap_err().to_string();
        assert!(err.contains("not a custody data directory"), "{err}");

        let client = data.write_client_config("https://127.0.0.1:1", "http://127.0.0.1:2").unwrap();
        let transport = custody_tls::TransportConfig::load(&client).unwrap();
        transport.tls_client().expect("the client configuration loads its CA files");
    }
}
