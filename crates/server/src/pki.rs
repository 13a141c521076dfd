//! The service's own use of its CA directory: device certificates from enrollment CSRs, keeping the intermediates'
//! CRLs fresh, and renewing the server certificate, all with keys that live online (the service and device
//! intermediates). The root key is offline: the root CRL must be re-signed on the offline machine (docs/pki.md).

use std::path::Path;

use custody_pki::{CaDir, Serial};
use jiff::Timestamp;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
};

use crate::Error;
use crate::datadir::{DEVICE_CA, DataDir, SERVICE_CA, write_file};

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

/// Issues a device client certificate for the key in `csr_pem`, signed by the device intermediate. The CSR's
/// signature is checked (rcgen); everything else in it (subject, extensions) is ignored: the common name is the
/// device id and the certificate is for client authentication only.
pub fn issue_device_certificate(
    data: &DataDir,
    csr_pem: &str,
    device_id: &str,
    days: u32,
    now: Timestamp,
) -> Result<DeviceCertificate, CsrError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|err| CsrError::Invalid(err.to_string()))?;
    let ca_dir = data.pki().join("ca").join(DEVICE_CA);
    let issue = |err: &dyn std::fmt::Display| CsrError::Issue(err.to_string());
    let ca_cert = std::fs::read_to_string(ca_dir.join("cert.pem")).map_err(|e| issue(&e))?;
    let ca_key = std::fs::read_to_string(ca_dir.join("key.pem")).map_err(|e| issue(&e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, KeyPair::from_pem(&ca_key).map_err(|e| issue(&e))?)
        .map_err(|e| issue(&e))?;

    let mut random = [0u8; 16];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| issue(&"the random number generator failed"))?;
    let serial = Serial::from_random(random);
    let not_before = now - jiff::SignedDuration::from_hours(1);
    let not_after = now + jiff::SignedDuration::from_hours(i64::from(days) * 24);
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| issue(&e))?;
    params.not_before = offset(not_before).map_err(|e| issue(&e))?;
    params.not_after = offset(not_after).map_err(|e| issue(&e))?;
    params.serial_number = Some(SerialNumber::from_slice(&serial.0));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "custody");
    dn.push(DnType::CommonName, device_id);
    params.distinguished_name = dn;
    params.key_identifier_method = KeyIdMethod::Sha256;
    params.use_authority_key_identifier_extension = true;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&csr.public_key, &issuer).map_err(|e| issue(&e))?;
    Ok(DeviceCertificate {
        chain: format!("{}{}", cert.pem(), ca_cert),
        der: cert.der().to_vec(),
        serial: serial.to_string(),
        not_after: Timestamp::from_second(not_after.as_second()).unwrap_or(not_after),
    })
}

fn offset(t: Timestamp) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(|e| e.to_string())
}

/// Re-signs the service and device CRLs when less than half of their lifetime is left, and renews the server
/// certificate when less than `renew_before` is left (the HTTPS listener reloads it). Returns what it did.
pub fn maintain(data: &DataDir, renew_before: jiff::SignedDuration, now: Timestamp) -> Result<Vec<String>, Error> {
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
        assert!(issue_device_certificate(&data, &tampered, "x", 30, now).is_err());

        // Nothing is due right after creation; a month later both CRLs are re-signed.
        assert!(maintain(&data, jiff::SignedDuration::from_hours(24), now).unwrap().is_empty());
        let later = now + jiff::SignedDuration::from_hours(24 * 20);
        let done = maintain(&data, jiff::SignedDuration::from_hours(24), later).unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
    }
}
