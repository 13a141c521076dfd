//! The service's own use of its CA directory (custody-pki's `CaDir`, `DATA/pki/`): device certificates from
//! enrollment CSRs, revoking them, keeping the intermediates' CRLs fresh, and renewing the server certificate, all
//! with keys that live online (the service and device intermediates). The root key is offline: the root CRL must be
//! re-signed on the offline machine (docs/pki.md).
//!
//! Every device certificate the service issues is in the CA directory's index, so revoking a device puts its
//! certificate on the device intermediate's CRL (`pki/ca/device/crl.pem`), which the HTTPS listener reloads (device
//! routes then refuse the certificate at the handshake) and which devices fetch from `GET /pki/device-crl.pem` to
//! check their peers. The index is one file rewritten by every change, so changes are serialized by [`CA_LOCK`]
//! (callers run them on blocking threads).

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use custody_pki::{CaDir, Serial};
use jiff::Timestamp;

use crate::Error;
use crate::datadir::{DEVICE_CA, DataDir, SERVICE_CA, write_file};

/// Serializes the read-modify-write changes of the CA directory's index within this process.
static CA_LOCK: Mutex<()> = Mutex::new(());

/// A certificate issued to a device.
#[derive(Clone, Debug)]
pub struct DeviceCertificate {
    /// PEM: the device certificate, then the device intermediate.
    pub chain: String,
    pub der: Vec<u8>,
    pub serial: String,
    pub not_after: Timestamp,
}

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the certificate request cannot be parsed or its signature is wrong ({0})")]
    Invalid(String),
    #[error("issuing the device certificate failed: {0}")]
    Issue(String),
}

/// What [`revoke_device_certificate`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateRevocation {
    /// Revoked now (or before): it is on the device CRL.
    OnCrl,
    /// The index does not list it (issued before the service recorded its device certificates): nothing to revoke.
    NotIndexed,
}

/// Issues a device client certificate for the key in `csr_pem`, signed by the device intermediate and recorded in
/// the CA directory's index. The CSR's signature is checked; everything else in it (subject, extensions) is ignored:
/// the common name is the device id and the certificate is for client authentication only.
pub fn issue_device_certificate(
    data: &DataDir,
    csr_pem: &str,
    device_id: &str,
    days: u32,
    now: Timestamp,
) -> Result<DeviceCertificate, CsrError> {
    let issue = |err: &dyn std::fmt::Display| CsrError::Issue(err.to_string());
    let _guard = CA_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let mut ca = CaDir::open(&data.pki()).map_err(|e| issue(&e))?;
    let entry = ca.issue_device_csr(DEVICE_CA, device_id, csr_pem, days, now).map_err(|err| match err {
        custody_pki::Error::Csr(reason) => CsrError::Invalid(reason),
        other => issue(&other),
    })?;
    let dir = ca.entry_dir(&entry);
    let chain = std::fs::read_to_string(dir.join("chain.pem")).map_err(|e| issue(&e))?;
    let cert = std::fs::read_to_string(dir.join("cert.pem")).map_err(|e| issue(&e))?;
    let der = custody_pki::build::pem_certificate(&cert).map_err(|e| issue(&e))?;
    tracing::info!(device = device_id, serial = %entry.serial, "device certificate issued");
    Ok(DeviceCertificate { chain, der: der.to_vec(), serial: entry.serial, not_after: entry.not_after })
}

/// Revokes a device certificate the service issued (`reason`: a CRL reason name) and re-signs the device
/// intermediate's CRL. Revoking a revoked certificate changes nothing.
pub fn revoke_device_certificate(
    data: &DataDir,
    serial: &str,
    reason: &str,
    now: Timestamp,
) -> Result<CertificateRevocation, Error> {
    let serial: Serial = serial.parse()?;
    let _guard = CA_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let mut ca = CaDir::open(&data.pki())?;
    match ca.find(&serial) {
        Ok(entry) if entry.purpose != "device" || entry.issuer != DEVICE_CA => {
            Err(Error::Other(format!("certificate {serial} is not a device certificate of the {DEVICE_CA} CA")))
        }
        Ok(entry) if entry.revoked.is_some() => Ok(CertificateRevocation::OnCrl),
        Ok(_) => {
            ca.revoke(&serial, reason, now)?;
            tracing::info!(%serial, reason, "device certificate revoked; device CRL re-signed");
            Ok(CertificateRevocation::OnCrl)
        }
        Err(custody_pki::Error::UnknownSerial(_)) => Ok(CertificateRevocation::NotIndexed),
        Err(err) => Err(err.into()),
    }
}

/// Re-signs the service and device CRLs when less than half of their lifetime is left, and renews the server
/// certificate when less than `renew_before` is left (the HTTPS listener reloads it). Returns what it did.
pub fn maintain(data: &DataDir, renew_before: jiff::SignedDuration, now: Timestamp) -> Result<Vec<String>, Error> {
    let _guard = CA_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let mut ca = CaDir::open(&data.pki())?;
    let mut done = Vec::new();
    for name in [SERVICE_CA, DEVICE_CA] {
        let dir = ca.ca_dir(name);
        if !dir.join("key.pem").exists() {
            continue;
        }
        let pem = std::fs::read_to_string(dir.join("crl.pem")).map_err(Error::io(dir.join("crl.pem")))?;
        let details = custody_pki::CrlDetails::from_pem(&pem)?;
        let stale_soon = details.next_update.is_none_or(|next| {
            let lifetime = next.duration_since(details.this_update);
            now >= next - lifetime / 2
        });
        if stale_soon {
            ca.write_crl(name, None, now)?;
            done.push(format!("re-signed the CRL of the {name} intermediate"));
        }
    }
    let current = ca
        .entries()
        .iter()
        .filter(|e| e.purpose == "server" && e.issuer == SERVICE_CA && e.revoked.is_none())
        .max_by_key(|e| e.not_before)
        .cloned();
    if let Some(server) = current
        && server.not_after - renew_before <= now
        && ca.ca_dir(SERVICE_CA).join("key.pem").exists()
    {
        let serial: Serial = server.serial.parse()?;
        let renewed = ca.renew(&serial, None, now)?;
        let issued = ca.entry_dir(&renewed);
        install(&issued.join("chain.pem"), &data.root().join("tls/chain.pem"), 0o644)?;
        install(&issued.join("key.pem"), &data.root().join("tls/key.pem"), 0o600)?;
        done.push(format!("renewed the server certificate (serial {})", renewed.serial));
    }
    Ok(done)
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<(), Error> {
    let bytes = std::fs::read(from).map_err(Error::io(from))?;
    write_file(to, &bytes, mode)
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair};

    use super::*;
    use crate::config::ServiceConfig;

    #[test]
    fn device_certificates_come_from_the_device_intermediate_with_the_device_id() {
        let base = tempfile::tempdir().unwrap();
        let (data, _) = DataDir::open_or_create(&base.path().join("data"), &ServiceConfig::default()).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut request = CertificateParams::new(vec!["ignored.example".to_owned()]).unwrap();
        request.distinguished_name.push(DnType::CommonName, "someone else");
        let csr = request.serialize_request(&key).unwrap().pem().unwrap();
        let now = Timestamp::now();
        let issued = issue_device_certificate(&data, &csr, "4c1e0d4e-8d7b-4d8f-9a0b-2f6c1e3d5a7b", 30, now).unwrap();
        let details = custody_pki::CertDetails::from_der(&issued.der).unwrap();
        assert!(details.subject.contains("4c1e0d4e-8d7b-4d8f-9a0b-2f6c1e3d5a7b"), "{}", details.subject);
        assert!(details.issuer.contains("device"), "{}", details.issuer);
        assert_eq!(details.extended_key_usage, ["client-auth"]);
        assert!(details.sans.is_empty(), "names in the CSR are ignored");
        assert_eq!(issued.chain.matches("BEGIN CERTIFICATE").count(), 2);

        let tampered = csr.replace(&csr[40..44], "AAAA");
        assert!(matches!(issue_device_certificate(&data, &tampered, "x", 30, now), Err(CsrError::Invalid(_))));

        // The certificate is in the index; revoking it puts it on the device CRL, once.
        let ca = CaDir::open(&data.pki()).unwrap();
        let entry = ca.find(&issued.serial.parse().unwrap()).unwrap();
        assert_eq!((entry.purpose.as_str(), entry.issuer.as_str()), ("device", DEVICE_CA));
        for _ in 0..2 {
            let done = revoke_device_certificate(&data, &issued.serial, "key-compromise", now).unwrap();
            assert_eq!(done, CertificateRevocation::OnCrl);
        }
        let crl = std::fs::read_to_string(data.pki().join("ca/device/crl.pem")).unwrap();
        assert_eq!(custody_pki::CrlDetails::from_pem(&crl).unwrap().revoked, std::slice::from_ref(&issued.serial));
        let unknown = Serial::from_random([7; 16]).to_string();
        let done = revoke_device_certificate(&data, &unknown, "unspecified", now).unwrap();
        assert_eq!(done, CertificateRevocation::NotIndexed);
        let server = ca.entries().iter().find(|e| e.purpose == "server").unwrap();
        assert!(revoke_device_certificate(&data, &server.serial, "unspecified", now).is_err(), "not a device's");

        // Nothing is due right after creation; a month later both CRLs are re-signed.
        assert!(maintain(&data, jiff::SignedDuration::from_hours(24), now).unwrap().is_empty());
        let later = now + jiff::SignedDuration::from_hours(24 * 20);
        let done = maintain(&data, jiff::SignedDuration::from_hours(24), later).unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
    }
}
