//! Reading certificates and CRLs back: what `custody pki show` prints.

use jiff::Timestamp;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::Serialize;
use x509_parser::extensions::GeneralName;

use crate::{Error, Result, spki_sha256};

/// The fields of a certificate an operator needs, including the SHA-256 of its SubjectPublicKeyInfo (a pin).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertDetails {
    pub subject: String,
    pub issuer: String,
    /// Hex, as in the index.
    pub serial: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// `DNS:name`, `IP:address`, `URI:..`, `email:..`.
    pub sans: Vec<String>,
    pub is_ca: bool,
    /// `server-auth`, `client-auth`, ...
    pub extended_key_usage: Vec<String>,
    /// Hex SHA-256 of the DER SubjectPublicKeyInfo: the value of a custody pin.
    pub spki_sha256: String,
}

/// The fields of a CRL: who signed it, when it was made and when it goes stale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CrlDetails {
    pub issuer: String,
    pub this_update: Timestamp,
    pub next_update: Option<Timestamp>,
    pub crl_number: Option<String>,
    /// Hex serials of the revoked certificates.
    pub revoked: Vec<String>,
}

impl CertDetails {
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|err| Error::X509(err.to_string()))?;
        let sans = match cert.subject_alternative_name().map_err(|err| Error::X509(err.to_string()))? {
            Some(ext) => ext.value.general_names.iter().map(general_name).collect(),
            None => Vec::new(),
        };
        let mut extended_key_usage = Vec::new();
        if let Some(eku) = cert.extended_key_usage().map_err(|err| Error::X509(err.to_string()))? {
            let eku = eku.value;
            for (present, name) in [
                (eku.any, "any"),
                (eku.server_auth, "server-auth"),
                (eku.client_auth, "client-auth"),
                (eku.code_signing, "code-signing"),
                (eku.ocsp_signing, "ocsp-signing"),
            ] {
                if present {
                    extended_key_usage.push(name.to_owned());
                }
            }
        }
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: hex::encode(cert.raw_serial()),
            not_before: timestamp(cert.validity().not_before.timestamp())?,
            not_after: timestamp(cert.validity().not_after.timestamp())?,
            sans,
            is_ca: cert.is_ca(),
            extended_key_usage,
            spki_sha256: hex::encode(spki_sha256(cert.public_key().raw)),
        })
    }

    /// Every certificate of a PEM text (a chain file gives the leaf first).
    pub fn from_pem_chain(pem: &[u8]) -> Result<Vec<Self>> {
        let ders = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| Error::Pem(err.to_string()))?;
        ders.iter().map(|der| Self::from_der(der)).collect()
    }
}

impl CrlDetails {
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der =
            CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).map_err(|err| Error::Pem(err.to_string()))?;
        Self::from_der(&der)
    }

    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|err| Error::X509(err.to_string()))?;
        Ok(Self {
            issuer: crl.issuer().to_string(),
            this_update: timestamp(crl.last_update().timestamp())?,
            next_update: crl.next_update().map(|t| timestamp(t.timestamp())).transpose()?,
            crl_number: crl.crl_number().map(|n| n.to_string()),
            revoked: crl.iter_revoked_certificates().map(|r| hex::encode(r.raw_serial())).collect(),
        })
    }
}

fn general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(dns) => format!("DNS:{dns}"),
        GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
            Ok(v4) => format!("IP:{}", std::net::Ipv4Addr::from(v4)),
            Err(_) => match <[u8; 16]>::try_from(*bytes) {
                Ok(v6) => format!("IP:{}", std::net::Ipv6Addr::from(v6)),
                Err(_) => format!("IP:{}", hex::encode(bytes)),
            },
        },
        GeneralName::URI(uri) => format!("URI:{uri}"),
        GeneralName::RFC822Name(mail) => format!("email:{mail}"),
        other => format!("{other:?}"),
    }
}

fn timestamp(seconds: i64) -> Result<Timestamp> {
    Timestamp::from_second(seconds).map_err(|err| Error::Time(err.to_string()))
}
