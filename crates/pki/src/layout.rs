//! The CA directory on disk.
//!
//! ```text
//! <dir>/index.json                   everything issued: serial, subject, purpose, validity, SPKI SHA-256, revocation
//! <dir>/root/{cert,key,crl}.pem      the offline root (keep this directory offline)
//! <dir>/ca/<name>/{cert,key,crl}.pem an issuing intermediate; chain.pem = its certificate and the root's
//! <dir>/issued/<serial>/cert.pem     every certificate ever issued, CAs included
//! <dir>/issued/<serial>/{key,chain}.pem  for leaves: their key and the chain a server or device presents
//! ```
//!
//! Private keys are written with mode 0600 and every file atomically (temporary file, fsync, rename, fsync of the
//! directory), so a crash leaves either the old or the new file. Randomness (keys, serials) and the layout live here;
//! the certificates themselves are made by [`crate::build`].

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rcgen::KeyPair;
use serde::{Deserialize, Serialize};

use crate::build::{CaSigner, CertKind, CertRequest, RevokedEntry, Serial, Validity, parse_reason, reason_name};
use crate::inspect::CertDetails;
use crate::{Error, IntermediateRole, Result, validate_name};

const INDEX_FILE: &str = "index.json";
const INDEX_VERSION: u32 = 1;
/// The CA name of the root.
pub const ROOT: &str = "root";
/// A new certificate's not_before lies this far in the past, so that devices whose clock is slightly behind accept it.
const BACKDATE: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// Default lifetimes, in days.
pub const ROOT_DAYS: u32 = 20 * 365;
pub const INTERMEDIATE_DAYS: u32 = 5 * 365;
pub const SERVER_DAYS: u32 = 90;
pub const DEVICE_DAYS: u32 = 3 * 365;
/// Default CRL lifetimes (next update), in days. The root is offline, so its CRL is re-signed rarely.
pub const ROOT_CRL_DAYS: u32 = 365;
pub const INTERMEDIATE_CRL_DAYS: u32 = 30;

/// An open CA directory.
pub struct CaDir {
    dir: PathBuf,
    index: Index,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    version: u32,
    /// Issuing CAs by name (`root`, `service`, `relay-<name>`, `device`, or a name given at issue).
    cas: BTreeMap<String, CaRecord>,
    certificates: Vec<IndexEntry>,
}

/// The state of one CA in the index.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaRecord {
    /// `root`, or the intermediate role (`service`, `relay:<name>`, `device`).
    pub role: String,
    /// Serial of the CA's current certificate.
    pub serial: String,
    /// Number of the last CRL issued (CRL numbers only grow).
    pub crl_number: u64,
    pub crl_days: u32,
}

/// One issued certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub serial: String,
    pub subject: String,
    pub common_name: String,
    /// `root`, `intermediate:<role>`, `server` or `device`.
    pub purpose: String,
    /// Name of the issuing CA (`root` for the root itself).
    pub issuer: String,
    /// For a CA certificate: its CA name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_name: Option<String>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sans: Vec<String>,
    pub spki_sha256: String,
    /// Directory of `cert.pem` (and for leaves `key.pem`, `chain.pem`), relative to the CA directory.
    pub path: String,
    pub revoked: Option<Revocation>,
    /// Serial of the certificate this one renews.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_of: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub at: Timestamp,
    pub reason: String,
}

impl CaDir {
    /// Creates a CA directory with a new root CA and its (empty) CRL. `dir` may exist but must not hold an index.
    pub fn init(dir: &Path, common_name: &str, days: u32, crl_days: u32, now: Timestamp) -> Result<Self> {
        if dir.join(INDEX_FILE).exists() {
            return Err(Error::Exists(dir.join(INDEX_FILE)));
        }
        create_dir(dir)?;
        let mut ca = Self { dir: dir.to_owned(), index: Index { version: INDEX_VERSION, ..Index::default() } };
        let key = crate::generate_key()?;
        let request = CertRequest {
            kind: CertKind::Root,
            common_name: common_name.to_owned(),
            serial: new_serial()?,
            validity: validity(now, days)?,
            key: &key,
        };
        let issued = request.sign(None)?;
        let root_dir = dir.join(ROOT);
        create_dir(&root_dir)?;
        write_atomic(&root_dir.join("key.pem"), key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&root_dir.join("cert.pem"), issued.pem.as_bytes(), 0o644)?;
        let entry = ca.record(&request.kind, &request.common_name, &issued.pem, ROOT, Some(ROOT), None)?;
        ca.index.cas.insert(
            ROOT.to_owned(),
            CaRecord { role: ROOT.to_owned(), serial: entry.serial.clone(), crl_number: 0, crl_days },
        );
        ca.write_crl(ROOT, None, now)?;
        tracing::info!(dir = %dir.display(), serial = %entry.serial, "created root CA");
        Ok(ca)
    }

    /// Opens an existing CA directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(INDEX_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotACaDir(dir.to_owned())),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let index: Index =
            serde_json::from_slice(&text).map_err(|source| Error::Index { path: path.clone(), source })?;
        if index.version != INDEX_VERSION {
            return Err(Error::Refused(format!("{}: unsupported index version {}", path.display(), index.version)));
        }
        Ok(Self { dir: dir.to_owned(), index })
    }

    /// Issues an intermediate under the root. `name` defaults to the role's name (`service`, `relay-<name>`,
    /// `device`); give another name to run a second intermediate of the same role, as a pin rotation does.
    pub fn issue_intermediate(
        &mut self,
        role: &IntermediateRole,
        name: Option<&str>,
        common_name: Option<&str>,
        days: u32,
        crl_days: u32,
        now: Timestamp,
    ) -> Result<IndexEntry> {
        let name = name.map_or_else(|| role.default_ca_name(), str::to_owned);
        validate_name(&name)?;
        if name == ROOT || self.index.cas.contains_key(&name) {
            return Err(Error::Exists(self.dir.join("ca").join(&name)));
        }
        let root = self.signer(ROOT)?;
        let key = crate::generate_key()?;
        let default_name = if name == role.default_ca_name() {
            format!("custody {role} issuing CA")
        } else {
            format!("custody {role} issuing CA ({name})")
        };
        let common_name = common_name.map_or(default_name, str::to_owned);
        let request = CertRequest {
            kind: CertKind::Intermediate(role.clone()),
            common_name,
            serial: new_serial()?,
            validity: validity(now, days)?,
            key: &key,
        };
        let issued = request.sign(Some(&root))?;
        let ca_dir = self.dir.join("ca").join(&name);
        create_dir(&ca_dir)?;
        write_atomic(&ca_dir.join("key.pem"), key.serialize_pem().as_bytes(), 0o600)?;
        self.install_ca_cert(&ca_dir, &issued.pem)?;
        let entry = self.record(&request.kind, &request.common_name, &issued.pem, ROOT, Some(&name), None)?;
        self.index.cas.insert(
            name.clone(),
            CaRecord { role: role.to_string(), serial: entry.serial.clone(), crl_number: 0, crl_days },
        );
        self.write_crl(&name, None, now)?;
        tracing::info!(ca = %name, serial = %entry.serial, "issued intermediate CA");
        Ok(entry)
    }

    /// Issues a server certificate with DNS and IP subject alternative names from a service or relay CA.
    pub fn issue_server(
        &mut self,
        ca: &str,
        names: &[String],
        common_name: Option<&str>,
        days: u32,
        now: Timestamp,
    ) -> Result<IndexEntry> {
        self.require_role(ca, true)?;
        let common_name = common_name.or(names.first().map(String::as_str)).unwrap_or("custody server");
        let kind = CertKind::Server { names: names.to_vec() };
        self.issue_leaf(ca, kind, common_name, days, now, None)
    }

    /// Issues a device client certificate from a device CA; the common name is the device id.
    pub fn issue_device(&mut self, ca: &str, device_id: &str, days: u32, now: Timestamp) -> Result<IndexEntry> {
        validate_name(device_id)?;
        self.require_role(ca, false)?;
        self.issue_leaf(ca, CertKind::Device, device_id, days, now, None)
    }

    /// Issues a device client certificate from a device CA for the key of a PKCS#10 certificate signing request (the
    /// update service's enrollment): the device keeps its key, so `issued/<serial>/` holds `cert.pem` and
    /// `chain.pem` (certificate, then the CA's) but no `key.pem`. The certificate is in the index like any other, so
    /// `revoke` puts it on the CA's CRL.
    pub fn issue_device_csr(
        &mut self,
        ca: &str,
        device_id: &str,
        csr_pem: &str,
        days: u32,
        now: Timestamp,
    ) -> Result<IndexEntry> {
        validate_name(device_id)?;
        self.require_role(ca, false)?;
        let signer = self.signer(ca)?;
        let serial = new_serial()?;
        let issued = crate::build::sign_device_csr(csr_pem, device_id, serial, validity(now, days)?, &signer)?;
        let ca_pem = read_string(&self.ca_dir(ca).join("cert.pem"))?;
        let out = self.dir.join("issued").join(serial.to_string());
        create_dir(&out)?;
        write_atomic(&out.join("chain.pem"), format!("{}{}", issued.pem, ca_pem).as_bytes(), 0o644)?;
        self.record(&CertKind::Device, device_id, &issued.pem, ca, None, None)
    }

    /// Issues a new certificate with the same subject, names and purpose as `serial`, and a new serial number.
    /// A CA keeps its key, so that pins on it stay valid (to change a CA's key, issue a new intermediate: see
    /// docs/pki.md, "Rotating a pinned intermediate"); a leaf gets a new key. `days` defaults to the old lifetime.
    pub fn renew(&mut self, serial: &Serial, days: Option<u32>, now: Timestamp) -> Result<IndexEntry> {
        let old = self.find(serial)?.clone();
        let days = days.unwrap_or_else(|| {
            let lifetime = old.not_after.duration_since(old.not_before).as_hours() / 24;
            u32::try_from(lifetime).unwrap_or(SERVER_DAYS)
        });
        let entry = match old.purpose.as_str() {
            "server" => {
                let names = old.sans.iter().map(|san| san.split_once(':').map_or(san.as_str(), |(_, v)| v).to_owned());
                let kind = CertKind::Server { names: names.collect() };
                self.issue_leaf(&old.issuer, kind, &old.common_name, days, now, Some(&old.serial))?
            }
            "device" => {
                self.issue_leaf(&old.issuer, CertKind::Device, &old.common_name, days, now, Some(&old.serial))?
            }
            _ => self.renew_ca(&old, days, now)?,
        };
        tracing::info!(old = %old.serial, new = %entry.serial, "renewed certificate");
        Ok(entry)
    }

    /// Marks `serial` revoked and re-issues its issuer's CRL. The root cannot be revoked.
    pub fn revoke(&mut self, serial: &Serial, reason: &str, now: Timestamp) -> Result<IndexEntry> {
        if parse_reason(reason).is_none() {
            return Err(Error::Refused(format!("unknown revocation reason {reason:?}")));
        }
        let serial_hex = serial.to_string();
        let entry = self.find(serial)?;
        if entry.purpose == ROOT {
            return Err(Error::Refused("the root CA cannot be revoked: replace it and re-enroll devices".into()));
        }
        if entry.revoked.is_some() {
            return Err(Error::AlreadyRevoked(serial_hex));
        }
        let issuer = entry.issuer.clone();
        let revocation = Revocation { at: now, reason: reason.to_owned() };
        let entry = self.entry_mut(&serial_hex)?;
        entry.revoked = Some(revocation);
        let entry = entry.clone();
        self.write_crl(&issuer, None, now)?;
        tracing::info!(serial = %serial_hex, ca = %issuer, "revoked certificate");
        Ok(entry)
    }

    /// Signs a new CRL of CA `ca` (all certificates it issued that are revoked), valid `next_update_days` (default:
    /// the CA's CRL lifetime), writes it to the CA's `crl.pem` and returns the path.
    pub fn write_crl(&mut self, ca: &str, next_update_days: Option<u32>, now: Timestamp) -> Result<PathBuf> {
        let signer = self.signer(ca)?;
        let record = self.index.cas.get(ca).ok_or_else(|| Error::UnknownCa(ca.to_owned()))?;
        let days = next_update_days.unwrap_or(record.crl_days);
        let number = record.crl_number + 1;
        let revoked = self
            .index
            .certificates
            .iter()
            .filter(|entry| entry.issuer == ca && entry.purpose != ROOT)
            .filter_map(|entry| {
                let revocation = entry.revoked.as_ref()?;
                Some(entry.serial.parse::<Serial>().map(|serial| RevokedEntry {
                    serial,
                    revoked_at: revocation.at,
                    reason: parse_reason(&revocation.reason),
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let this_update = now.checked_sub(BACKDATE).map_err(|err| Error::Time(err.to_string()))?;
        let next_update = validity(now, days)?.not_after;
        let pem = signer.crl(&revoked, number, this_update, next_update)?;
        let path = self.ca_dir(ca).join("crl.pem");
        write_atomic(&path, pem.as_bytes(), 0o644)?;
        if let Some(record) = self.index.cas.get_mut(ca) {
            record.crl_number = number;
        }
        self.save()?;
        Ok(path)
    }

    /// Every certificate issued, oldest first.
    pub fn entries(&self) -> &[IndexEntry] {
        &self.index.certificates
    }

    /// The issuing CAs by name.
    pub fn cas(&self) -> &BTreeMap<String, CaRecord> {
        &self.index.cas
    }

    pub fn find(&self, serial: &Serial) -> Result<&IndexEntry> {
        let serial = serial.to_string();
        self.index.certificates.iter().find(|e| e.serial == serial).ok_or(Error::UnknownSerial(serial))
    }

    /// The directory holding the files of `entry`.
    pub fn entry_dir(&self, entry: &IndexEntry) -> PathBuf {
        self.dir.join(&entry.path)
    }

    /// The directory of CA `ca` (`root/` or `ca/<name>/`): `cert.pem`, `key.pem`, `crl.pem`.
    pub fn ca_dir(&self, ca: &str) -> PathBuf {
        if ca == ROOT { self.dir.join(ROOT) } else { self.dir.join("ca").join(ca) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn issue_leaf(
        &mut self,
        ca: &str,
        kind: CertKind,
        common_name: &str,
        days: u32,
        now: Timestamp,
        renewal_of: Option<&str>,
    ) -> Result<IndexEntry> {
        let signer = self.signer(ca)?;
        let key = crate::generate_key()?;
        let request = CertRequest {
            kind,
            common_name: common_name.to_owned(),
            serial: new_serial()?,
            validity: validity(now, days)?,
            key: &key,
        };
        let issued = request.sign(Some(&signer))?;
        let ca_pem = read_string(&self.ca_dir(ca).join("cert.pem"))?;
        let out = self.dir.join("issued").join(request.serial.to_string());
        create_dir(&out)?;
        write_atomic(&out.join("key.pem"), key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&out.join("chain.pem"), format!("{}{}", issued.pem, ca_pem).as_bytes(), 0o644)?;
        self.record(&request.kind, &request.common_name, &issued.pem, ca, None, renewal_of)
    }

    fn renew_ca(&mut self, old: &IndexEntry, days: u32, now: Timestamp) -> Result<IndexEntry> {
        let name = old.ca_name.clone().ok_or_else(|| Error::Refused(format!("{} is not a CA", old.serial)))?;
        let record = self.index.cas.get(&name).ok_or_else(|| Error::UnknownCa(name.clone()))?.clone();
        if record.serial != old.serial {
            return Err(Error::Refused(format!("{} is not the current certificate of CA {name}", old.serial)));
        }
        let ca_dir = self.ca_dir(&name);
        let key = KeyPair::from_pem(&read_string(&ca_dir.join("key.pem"))?)?;
        let (kind, issuer) = if name == ROOT {
            (CertKind::Root, None)
        } else {
            (CertKind::Intermediate(record.role.parse()?), Some(self.signer(ROOT)?))
        };
        let request = CertRequest {
            kind,
            common_name: old.common_name.clone(),
            serial: new_serial()?,
            validity: validity(now, days)?,
            key: &key,
        };
        let issued = request.sign(issuer.as_ref())?;
        let issuer_name = if name == ROOT { ROOT } else { old.issuer.as_str() };
        if name == ROOT {
            write_atomic(&ca_dir.join("cert.pem"), issued.pem.as_bytes(), 0o644)?;
        } else {
            self.install_ca_cert(&ca_dir, &issued.pem)?;
        }
        let entry =
            self.record(&request.kind, &request.common_name, &issued.pem, issuer_name, Some(&name), Some(&old.serial))?;
        if let Some(record) = self.index.cas.get_mut(&name) {
            record.serial = entry.serial.clone();
        }
        self.save()?;
        Ok(entry)
    }

    /// Writes an intermediate's `cert.pem` and `chain.pem` (intermediate, then root).
    fn install_ca_cert(&self, ca_dir: &Path, pem: &str) -> Result<()> {
        let root_pem = read_string(&self.ca_dir(ROOT).join("cert.pem"))?;
        write_atomic(&ca_dir.join("cert.pem"), pem.as_bytes(), 0o644)?;
        write_atomic(&ca_dir.join("chain.pem"), format!("{pem}{root_pem}").as_bytes(), 0o644)
    }

    /// Adds an issued certificate to the index and to `issued/<serial>/cert.pem`, and saves the index.
    fn record(
        &mut self,
        kind: &CertKind,
        common_name: &str,
        pem: &str,
        issuer: &str,
        ca_name: Option<&str>,
        renewal_of: Option<&str>,
    ) -> Result<IndexEntry> {
        let der = crate::build::pem_certificate(pem)?;
        let details = CertDetails::from_der(&der)?;
        let path = format!("issued/{}", details.serial);
        let dir = self.dir.join(&path);
        create_dir(&dir)?;
        write_atomic(&dir.join("cert.pem"), pem.as_bytes(), 0o644)?;
        let purpose = match kind {
            CertKind::Root => ROOT.to_owned(),
            CertKind::Intermediate(role) => format!("intermediate:{role}"),
            CertKind::Server { .. } => "server".to_owned(),
            CertKind::Device => "device".to_owned(),
        };
        let entry = IndexEntry {
            serial: details.serial,
            subject: details.subject,
            common_name: common_name.to_owned(),
            purpose,
            issuer: issuer.to_owned(),
            ca_name: ca_name.map(str::to_owned),
            not_before: details.not_before,
            not_after: details.not_after,
            sans: details.sans,
            spki_sha256: details.spki_sha256,
            path,
            revoked: None,
            renewal_of: renewal_of.map(str::to_owned),
        };
        self.index.certificates.push(entry.clone());
        self.save()?;
        Ok(entry)
    }

    fn signer(&self, ca: &str) -> Result<CaSigner> {
        if !self.index.cas.contains_key(ca) {
            return Err(Error::UnknownCa(ca.to_owned()));
        }
        let dir = self.ca_dir(ca);
        CaSigner::from_pem(&read_string(&dir.join("cert.pem"))?, &read_string(&dir.join("key.pem"))?)
    }

    /// Checks that `ca` is an intermediate issuing servers (`servers`) or devices (`!servers`).
    fn require_role(&self, ca: &str, servers: bool) -> Result<()> {
        let record = self.index.cas.get(ca).ok_or_else(|| Error::UnknownCa(ca.to_owned()))?;
        let role: Option<IntermediateRole> = record.role.parse().ok();
        match role {
            Some(role) if role.issues_servers() == servers => Ok(()),
            _ => Err(Error::WrongCa {
                serial: "(new)".into(),
                ca: ca.to_owned(),
                role: record.role.clone(),
                hint: if servers {
                    "server certificates come from a `service` or `relay:<name>` intermediate"
                } else {
                    "device certificates come from a `device` intermediate"
                },
            }),
        }
    }

    fn entry_mut(&mut self, serial: &str) -> Result<&mut IndexEntry> {
        self.index
            .certificates
            .iter_mut()
            .find(|e| e.serial == serial)
            .ok_or_else(|| Error::UnknownSerial(serial.to_owned()))
    }

    fn save(&self) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(&self.index)
            .map_err(|source| Error::Index { path: self.dir.join(INDEX_FILE), source })?;
        text.push(b'\n');
        write_atomic(&self.dir.join(INDEX_FILE), &text, 0o644)
    }
}

impl IndexEntry {
    /// The revocation reason names `custody pki revoke` accepts.
    pub fn reasons() -> [&'static str; 7] {
        [
            reason_name(rcgen::RevocationReason::Unspecified),
            reason_name(rcgen::RevocationReason::KeyCompromise),
            reason_name(rcgen::RevocationReason::CaCompromise),
            reason_name(rcgen::RevocationReason::AffiliationChanged),
            reason_name(rcgen::RevocationReason::Superseded),
            reason_name(rcgen::RevocationReason::CessationOfOperation),
            reason_name(rcgen::RevocationReason::PrivilegeWithdrawn),
        ]
    }
}

/// Writes `bytes` to `path` atomically with file mode `mode`: a temporary file in the same directory (created 0600 and
/// then set to `mode` before any byte is written), fsync, rename over `path`, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let io = |source| Error::Io { path: path.to_owned(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|err| io(err.error))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_owned(), source })
}

fn read_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })
}

fn new_serial() -> Result<Serial> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Refused("the system random source failed".into()))?;
    Ok(Serial::from_random(bytes))
}

fn validity(now: Timestamp, days: u32) -> Result<Validity> {
    let not_before = now.checked_sub(BACKDATE).map_err(|err| Error::Time(err.to_string()))?;
    let not_after = now
        .checked_add(jiff::SignedDuration::from_hours(i64::from(days) * 24))
        .map_err(|err| Error::Time(err.to_string()))?;
    Ok(Validity { not_before, not_after })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::inspect::CrlDetails;

    fn now() -> Timestamp {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn full_lifecycle_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let mut ca = CaDir::init(&dir, "Test Root", ROOT_DAYS, ROOT_CRL_DAYS, now()).unwrap();
        assert!(CaDir::init(&dir, "again", 1, 1, now()).is_err());
        assert_eq!(mode(&dir.join("root/key.pem")), 0o600);
        assert_eq!(mode(&dir.join("root/cert.pem")), 0o644);

        let service = ca
            .issue_intermediate(&IntermediateRole::Service, None, None, INTERMEDIATE_DAYS, INTERMEDIATE_CRL_DAYS, now())
            .unwrap();
        assert_eq!(service.purpose, "intermediate:service");
        assert_eq!(service.ca_name.as_deref(), Some("service"));
        assert_eq!(mode(&dir.join("ca/service/key.pem")), 0o600);
        let relay = IntermediateRole::Relay("plant-7".into());
        ca.issue_intermediate(&relay, None, None, INTERMEDIATE_DAYS, INTERMEDIATE_CRL_DAYS, now()).unwrap();
        ca.issue_intermediate(&IntermediateRole::Device, None, None, INTERMEDIATE_DAYS, INTERMEDIATE_CRL_DAYS, now())
            .unwrap();
        assert!(ca.issue_intermediate(&IntermediateRole::Service, None, None, 1, 1, now()).is_err());

        let names = vec!["updates.example".to_string(), "10.1.2.3".to_string()];
        let server = ca.issue_server("service", &names, None, SERVER_DAYS, now()).unwrap();
        assert_eq!(server.sans, ["DNS:updates.example", "IP:10.1.2.3"]);
        assert_eq!(server.issuer, "service");
        let server_dir = ca.entry_dir(&server);
        assert_eq!(mode(&server_dir.join("key.pem")), 0o600);
        let chain = CertDetails::from_pem_chain(&std::fs::read(server_dir.join("chain.pem")).unwrap()).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1].spki_sha256, service.spki_sha256);
        assert!(matches!(ca.issue_server("device", &names, None, 1, now()), Err(Error::WrongCa { .. })));
        assert!(matches!(ca.issue_device("service", "dev-1", 1, now()), Err(Error::WrongCa { .. })));
        let device = ca.issue_device("device", "dev-1", DEVICE_DAYS, now()).unwrap();
        assert_eq!(device.common_name, "dev-1");

        // Renewing a leaf: new serial, new key, same names.
        let later = now().checked_add(jiff::SignedDuration::from_hours(24 * 80)).unwrap();
        let serial: Serial = server.serial.parse().unwrap();
        let renewed = ca.renew(&serial, None, later).unwrap();
        assert_ne!(renewed.serial, server.serial);
        assert_ne!(renewed.spki_sha256, server.spki_sha256);
        assert_eq!(renewed.sans, server.sans);
        assert_eq!(renewed.renewal_of.as_deref(), Some(server.serial.as_str()));
        assert_eq!(
            renewed.not_after.duration_since(renewed.not_before),
            server.not_after.duration_since(server.not_before)
        );

        // Renewing a CA keeps its key, so pins stay valid.
        let renewed_ca = ca.renew(&service.serial.parse().unwrap(), None, later).unwrap();
        assert_eq!(renewed_ca.spki_sha256, service.spki_sha256);
        assert_eq!(ca.cas()["service"].serial, renewed_ca.serial);
        assert!(ca.renew(&service.serial.parse().unwrap(), None, later).is_err(), "superseded CA cert");

        // Revoking puts the serial into the issuer's CRL, with a higher CRL number.
        ca.revoke(&serial, "key-compromise", later).unwrap();
        assert!(matches!(ca.revoke(&serial, "key-compromise", later), Err(Error::AlreadyRevoked(_))));
        assert!(ca.revoke(&serial, "bogus", later).is_err());
        let crl = CrlDetails::from_pem(&std::fs::read_to_string(dir.join("ca/service/crl.pem")).unwrap()).unwrap();
        assert_eq!(crl.revoked, std::slice::from_ref(&server.serial));
        assert_eq!(crl.crl_number.as_deref(), Some("2"));
        assert_eq!(crl.next_update, Some(later.checked_add(jiff::SignedDuration::from_hours(24 * 30)).unwrap()));
        let root_serial: Serial = ca.cas()[ROOT].serial.parse().unwrap();
        assert!(ca.revoke(&root_serial, "unspecified", later).is_err());

        // Revoking an intermediate goes into the root's CRL; a CRL with another lifetime on demand.
        ca.revoke(&renewed_ca.serial.parse().unwrap(), "superseded", later).unwrap();
        let root_crl = ca.write_crl(ROOT, Some(7), later).unwrap();
        let crl = CrlDetails::from_pem(&std::fs::read_to_string(root_crl).unwrap()).unwrap();
        assert_eq!(crl.revoked, std::slice::from_ref(&renewed_ca.serial));
        assert_eq!(crl.next_update, Some(later.checked_add(jiff::SignedDuration::from_hours(24 * 7)).unwrap()));

        // The index survives a reopen.
        let reopened = CaDir::open(&dir).unwrap();
        assert_eq!(reopened.entries(), ca.entries());
        assert!(reopened.find(&serial).unwrap().revoked.is_some());
        assert!(matches!(CaDir::open(tmp.path()), Err(Error::NotACaDir(_))));
    }

    #[test]
    fn device_certificates_from_csrs_are_indexed_and_revocable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let mut ca = CaDir::init(&dir, "Test Root", ROOT_DAYS, ROOT_CRL_DAYS, now()).unwrap();
        ca.issue_intermediate(&IntermediateRole::Device, None, None, INTERMEDIATE_DAYS, INTERMEDIATE_CRL_DAYS, now())
            .unwrap();
        ca.issue_intermediate(&IntermediateRole::Service, None, None, INTERMEDIATE_DAYS, INTERMEDIATE_CRL_DAYS, now())
            .unwrap();
        let key = crate::generate_key().unwrap();
        let mut request = rcgen::CertificateParams::new(vec!["ignored.example".to_owned()]).unwrap();
        request.distinguished_name.push(rcgen::DnType::CommonName, "someone else");
        let csr = request.serialize_request(&key).unwrap().pem().unwrap();
        let device = "4c1e0d4e-8d7b-4d8f-9a0b-2f6c1e3d5a7b";

        let entry = ca.issue_device_csr("device", device, &csr, DEVICE_DAYS, now()).unwrap();
        assert_eq!(
            (entry.purpose.as_str(), entry.issuer.as_str(), entry.common_name.as_str()),
            ("device", "device", device)
        );
        assert!(entry.sans.is_empty(), "names in the request are ignored");
        assert_eq!(
            entry.spki_sha256,
            hex::encode(crate::spki_sha256(&rcgen::PublicKeyData::subject_public_key_info(&key)))
        );
        let files = ca.entry_dir(&entry);
        assert!(!files.join("key.pem").exists(), "the device keeps its key");
        let chain = CertDetails::from_pem_chain(&std::fs::read(files.join("chain.pem")).unwrap()).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].extended_key_usage, ["client-auth"]);
        assert!(chain[0].subject.contains(device), "{}", chain[0].subject);
        assert_eq!(CaDir::open(&dir).unwrap().find(&entry.serial.parse().unwrap()).unwrap(), &entry);

        let tampered = csr.replace(&csr[40..44], "AAAA");
        assert!(matches!(ca.issue_device_csr("device", device, &tampered, 1, now()), Err(Error::Csr(_))));
        assert!(matches!(ca.issue_device_csr("service", device, &csr, 1, now()), Err(Error::WrongCa { .. })));
        assert!(matches!(ca.issue_device_csr("device", "../x", &csr, 1, now()), Err(Error::InvalidName(_))));

        ca.revoke(&entry.serial.parse().unwrap(), "key-compromise", now()).unwrap();
        let crl = CrlDetails::from_pem(&std::fs::read_to_string(dir.join("ca/device/crl.pem")).unwrap()).unwrap();
        assert_eq!(crl.revoked, std::slice::from_ref(&entry.serial));
    }

    #[test]
    fn atomic_write_sets_mode_before_content() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k.pem");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "no temporary file left behind");
    }
}
