//! Certificates and CRLs as pure functions of their inputs: the key, serial number and times are passed in, nothing is
//! read from the clock, the disk or a random source here. [`crate::layout`] supplies those.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertificateSigningRequestParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::{Error, IntermediateRole, Result, spki_sha256};

/// The organisation name written into every subject.
const ORGANIZATION: &str = "custody";

/// What to issue, and for whom.
pub struct CertRequest<'a> {
    pub kind: CertKind,
    pub common_name: String,
    pub serial: Serial,
    pub validity: Validity,
    /// The subject's key pair (only its public half goes into the certificate).
    pub key: &'a KeyPair,
}

/// The kinds of certificate custody issues. The kind fixes basic constraints, key usage and extended key usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// The self-signed offline root CA.
    Root,
    /// An issuing intermediate directly under the root (path length 0: it cannot issue further CAs).
    Intermediate(IntermediateRole),
    /// A TLS server (the update service, a relay): DNS names and IP addresses as subject alternative names.
    Server { names: Vec<String> },
    /// A device client certificate (enrollment, mutual TLS); the common name is the device id.
    Device,
}

/// A certificate serial number: 16 random bytes, the first in 0x01..=0x7f so that the DER integer is positive and
/// always 16 bytes long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(pub [u8; 16]);

/// The validity period of a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

/// An issued certificate.
#[derive(Clone, Debug)]
pub struct Issued {
    pub der: CertificateDer<'static>,
    pub pem: String,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo: the pin value when this is an issuer.
    pub spki_sha256: [u8; 32],
}

/// A CA able to sign: its certificate and private key.
pub struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
}

/// One entry of a CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedEntry {
    pub serial: Serial,
    pub revoked_at: Timestamp,
    pub reason: Option<RevocationReason>,
}

impl CertRequest<'_> {
    /// Signs the certificate: with `issuer`, or self-signed for [`CertKind::Root`] (which must have no issuer).
    pub fn sign(&self, issuer: Option<&CaSigner>) -> Result<Issued> {
        let params = self.params()?;
        let cert = match (&self.kind, issuer) {
            (CertKind::Root, None) => params.self_signed(self.key)?,
            (CertKind::Root, Some(_)) => return Err(Error::Refused("a root CA is self-signed".into())),
            (_, Some(issuer)) => params.signed_by(self.key, &issuer.issuer)?,
            (_, None) => return Err(Error::Refused("only a root CA can be self-signed".into())),
        };
        Ok(Issued {
            pem: cert.pem(),
            der: cert.der().clone(),
            spki_sha256: spki_sha256(&self.key.subject_public_key_info()),
        })
    }

    fn params(&self) -> Result<CertificateParams> {
        certificate_params(&self.kind, &self.common_name, self.serial, self.validity)
    }
}

/// Signs a device client certificate ([`CertKind::Device`], common name `common_name`: the device id) for the key of
/// the PKCS#10 certificate signing request `csr_pem`, a key the device generated and keeps. The request's signature is
/// checked (it proves the device holds the key); its subject and extensions are ignored, so the certificate says only
/// what a device certificate says.
pub fn sign_device_csr(
    csr_pem: &str,
    common_name: &str,
    serial: Serial,
    validity: Validity,
    issuer: &CaSigner,
) -> Result<Issued> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|err| Error::Csr(err.to_string()))?;
    let params = certificate_params(&CertKind::Device, common_name, serial, validity)?;
    let cert = params.signed_by(&csr.public_key, &issuer.issuer)?;
    Ok(Issued {
        pem: cert.pem(),
        der: cert.der().clone(),
        spki_sha256: spki_sha256(&csr.public_key.subject_public_key_info()),
    })
}

/// The parameters of a certificate of `kind`: the kind fixes basic constraints, key usage and extended key usage.
fn certificate_params(
    kind: &CertKind,
    common_name: &str,
    serial: Serial,
    validity: Validity,
) -> Result<CertificateParams> {
    let names = match kind {
        CertKind::Server { names } => {
            if names.is_empty() {
                return Err(Error::InvalidSan("a server certificate needs at least one DNS name or IP".into()));
            }
            for name in names {
                rustls_pki_types::ServerName::try_from(name.as_str()).map_err(|_| Error::InvalidSan(name.clone()))?;
            }
            names.clone()
        }
        _ => Vec::new(),
    };
    let mut params = CertificateParams::new(names).map_err(|err| Error::InvalidSan(err.to_string()))?;
    params.not_before = to_offset(validity.not_before)?;
    params.not_after = to_offset(validity.not_after)?;
    if params.not_after <= params.not_before {
        return Err(Error::Time("not_after must be later than not_before".into()));
    }
    params.serial_number = Some(SerialNumber::from_slice(&serial.0));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_identifier_method = KeyIdMethod::Sha256;
    params.use_authority_key_identifier_extension = *kind != CertKind::Root;
    let ca_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    match kind {
        CertKind::Root => {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = ca_usages;
        }
        CertKind::Intermediate(role) => {
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = ca_usages;
            // Verifiers enforce an intermediate's EKU on its leaves: a device CA cannot mint a server
            // certificate the pinned verifier accepts, and a service or relay CA cannot mint device identities.
            params.extended_key_usages = vec![if role.issues_servers() {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }];
        }
        CertKind::Server { .. } => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        CertKind::Device => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    Ok(params)
}

impl CaSigner {
    /// A signer from a CA certificate and its private key, both PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = pem_certificate(cert_pem)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self { issuer, cert_der })
    }

    /// The CA's own certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A CRL signed by this CA, listing `revoked`, valid from `this_update` until `next_update`.
    pub fn crl(
        &self,
        revoked: &[RevokedEntry],
        crl_number: u64,
        this_update: Timestamp,
        next_update: Timestamp,
    ) -> Result<String> {
        let number = crl_number.to_be_bytes();
        let first = number.iter().position(|b| *b != 0).unwrap_or(number.len() - 1);
        let params = CertificateRevocationListParams {
            this_update: to_offset(this_update)?,
            next_update: to_offset(next_update)?,
            crl_number: SerialNumber::from_slice(&number[first..]),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|entry| {
                    Ok(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(&entry.serial.0),
                        revocation_time: to_offset(entry.revoked_at)?,
                        reason_code: entry.reason,
                        invalidity_date: None,
                    })
                })
                .collect::<Result<_>>()?,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

impl Serial {
    /// A serial number from 16 bytes of randomness.
    pub fn from_random(mut bytes: [u8; 16]) -> Self {
        bytes[0] = (bytes[0] & 0x7f).max(1);
        Self(bytes)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for Serial {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let cleaned: String = s.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&cleaned).map_err(|_| Error::InvalidSerial(s.to_owned()))?;
        <[u8; 16]>::try_from(bytes.as_slice()).map(Self).map_err(|_| Error::InvalidSerial(s.to_owned()))
    }
}

impl Validity {
    /// From `not_before` for `days` days.
    pub fn days_from(not_before: Timestamp, days: u32) -> Result<Self> {
        let span = jiff::SignedDuration::from_hours(i64::from(days) * 24);
        let not_after = not_before.checked_add(span).map_err(|err| Error::Time(err.to_string()))?;
        Ok(Self { not_before, not_after })
    }
}

/// The reason names accepted by `custody pki revoke --reason`.
pub fn parse_reason(s: &str) -> Option<RevocationReason> {
    Some(match s {
        "unspecified" => RevocationReason::Unspecified,
        "key-compromise" => RevocationReason::KeyCompromise,
        "ca-compromise" => RevocationReason::CaCompromise,
        "affiliation-changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation-of-operation" => RevocationReason::CessationOfOperation,
        "privilege-withdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

/// The name [`parse_reason`] accepts for `reason`.
pub fn reason_name(reason: RevocationReason) -> &'static str {
    match reason {
        RevocationReason::Unspecified => "unspecified",
        RevocationReason::KeyCompromise => "key-compromise",
        RevocationReason::CaCompromise => "ca-compromise",
        RevocationReason::AffiliationChanged => "affiliation-changed",
        RevocationReason::Superseded => "superseded",
        RevocationReason::CessationOfOperation => "cessation-of-operation",
        RevocationReason::CertificateHold => "certificate-hold",
        RevocationReason::RemoveFromCrl => "remove-from-crl",
        RevocationReason::PrivilegeWithdrawn => "privilege-withdrawn",
        RevocationReason::AaCompromise => "aa-compromise",
    }
}

/// The first certificate of a PEM text, as DER.
pub fn pem_certificate(pem: &str) -> Result<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|err| Error::Pem(err.to_string()))
}

fn to_offset(ts: Timestamp) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(ts.as_second()).map_err(|err| Error::Time(err.to_string()))
}

#[cfg(test)]
mod tests {
    use rcgen::PKCS_ECDSA_P256_SHA256;
    use rustls_pki_types::{CertificateRevocationListDer, ServerName, UnixTime};

    use super::*;
    use crate::inspect::{CertDetails, CrlDetails};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn key() -> KeyPair {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
    }

    fn request<'a>(kind: CertKind, cn: &str, serial: u8, key: &'a KeyPair) -> CertRequest<'a> {
        CertRequest {
            kind,
            common_name: cn.into(),
            serial: Serial::from_random([serial; 16]),
            validity: Validity::days_from(ts("2025-01-01T00:00:00Z"), 365).unwrap(),
            key,
        }
    }

    /// A root, the service intermediate and a server leaf; the chain verifies with webpki, including CRLs.
    #[test]
    fn chain_verifies_with_webpki_and_crls() {
        let (root_key, int_key, leaf_key) = (key(), key(), key());
        let root = request(CertKind::Root, "Test Root", 1, &root_key).sign(None).unwrap();
        let root_signer = CaSigner::from_pem(&root.pem, &root_key.serialize_pem()).unwrap();
        let int = request(CertKind::Intermediate(IntermediateRole::Service), "Test Service CA", 2, &int_key)
            .sign(Some(&root_signer))
            .unwrap();
        let int_signer = CaSigner::from_pem(&int.pem, &int_key.serialize_pem()).unwrap();
        let names = vec!["updates.example".to_string(), "127.0.0.1".to_string()];
        let leaf =
            request(CertKind::Server { names }, "updates.example", 3, &leaf_key).sign(Some(&int_signer)).unwrap();

        let now = ts("2025-02-01T00:00:00Z");
        let next = ts("2025-03-01T00:00:00Z");
        let root_crl = root_signer.crl(&[], 1, now, next).unwrap();
        let revoked = [RevokedEntry { serial: Serial::from_random([9; 16]), revoked_at: now, reason: None }];
        let int_crl = int_signer.crl(&revoked, 1, now, next).unwrap();

        let verify = |leaf: &Issued, at: &str| {
            use rustls_pki_types::pem::PemObject;
            let crls: Vec<webpki::OwnedCertRevocationList> = [&root_crl, &int_crl]
                .iter()
                .map(|pem| {
                    let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
                    webpki::OwnedCertRevocationList::from_der(der.as_ref()).unwrap()
                })
                .collect();
            let crls: Vec<webpki::CertRevocationList<'_>> = crls.into_iter().map(Into::into).collect();
            let crl_refs: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
            let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs)
                .unwrap()
                .with_depth(webpki::RevocationCheckDepth::Chain)
                .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                .build();
            let anchors = [webpki::anchor_from_trusted_cert(&root.der).unwrap().to_owned()];
            let ee = webpki::EndEntityCert::try_from(&leaf.der).unwrap();
            let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(ts(at).as_second() as u64));
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                std::slice::from_ref(&int.der),
                time,
                webpki::KeyUsage::server_auth(),
                Some(revocation),
                None,
            )
            .map(|_| ())?;
            ee.verify_is_valid_for_subject_name(&ServerName::try_from("updates.example").unwrap())
        };
        verify(&leaf, "2025-02-02T00:00:00Z").unwrap();
        assert!(matches!(verify(&leaf, "2025-03-02T00:00:00Z"), Err(webpki::Error::CrlExpired { .. })));

        let details = CertDetails::from_der(&leaf.der).unwrap();
        assert_eq!(details.subject, "O=custody, CN=updates.example");
        assert_eq!(details.issuer, "O=custody, CN=Test Service CA");
        assert_eq!(details.sans, ["DNS:updates.example", "IP:127.0.0.1"]);
        assert_eq!(details.spki_sha256, hex::encode(leaf.spki_sha256));
        assert_eq!(details.serial, Serial::from_random([3; 16]).to_string());
        assert_eq!(details.not_after, ts("2026-01-01T00:00:00Z"));
        assert!(!details.is_ca);

        let crl = CrlDetails::from_pem(&int_crl).unwrap();
        assert_eq!(crl.next_update, Some(next));
        assert_eq!(crl.revoked, [Serial::from_random([9; 16]).to_string()]);
    }

    #[test]
    fn device_ca_cannot_issue_a_server_certificate_that_verifies() {
        let (root_key, int_key, leaf_key) = (key(), key(), key());
        let root = request(CertKind::Root, "Root", 1, &root_key).sign(None).unwrap();
        let root_signer = CaSigner::from_pem(&root.pem, &root_key.serialize_pem()).unwrap();
        let int = request(CertKind::Intermediate(IntermediateRole::Device), "Device CA", 2, &int_key)
            .sign(Some(&root_signer))
            .unwrap();
        let int_signer = CaSigner::from_pem(&int.pem, &int_key.serialize_pem()).unwrap();
        let leaf = request(CertKind::Server { names: vec!["x.example".into()] }, "x", 3, &leaf_key)
            .sign(Some(&int_signer))
            .unwrap();
        let anchors = [webpki::anchor_from_trusted_cert(&root.der).unwrap().to_owned()];
        let ee = webpki::EndEntityCert::try_from(&leaf.der).unwrap();
        let time =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(ts("2025-02-01T00:00:00Z").as_second() as u64));
        let result = ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            std::slice::from_ref(&int.der),
            time,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        );
        assert!(result.is_err());
    }

    #[test]
    fn refuses_inconsistent_requests() {
        let k = key();
        assert!(request(CertKind::Server { names: vec![] }, "x", 1, &k).sign(None).is_err());
        assert!(request(CertKind::Server { names: vec!["bad name!".into()] }, "x", 1, &k).params().is_err());
        assert!(request(CertKind::Device, "d", 1, &k).sign(None).is_err());
        let mut backwards = request(CertKind::Root, "r", 1, &k);
        backwards.validity.not_after = backwards.validity.not_before;
        assert!(backwards.sign(None).is_err());
    }

    #[test]
    fn serials_parse_and_print() {
        let s = Serial::from_random([0xff; 16]);
        assert_eq!(s.0[0], 0x7f);
        assert_eq!(Serial::from_random([0; 16]).0[0], 1);
        assert_eq!(s.to_string().parse::<Serial>().unwrap(), s);
        assert!("zz".parse::<Serial>().is_err());
    }
}
