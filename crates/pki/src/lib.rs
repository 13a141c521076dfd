//! custody's certificate authority: an offline root, issuing intermediates by purpose (the update service's own, one per
//! enterprise relay, one for devices), server certificates with DNS and IP names, device client certificates, and
//! certificate revocation lists with a next-update time.
//!
//! [`build`] makes certificates and CRLs as pure functions of their inputs (keys, serial numbers and times are passed
//! in); [`layout`] keeps a CA directory on disk (PEM files, keys with mode 0600 written atomically, and `index.json`,
//! the list of everything issued); [`inspect`] reads a certificate or CRL back for `custody pki show`.
//!
//! A pin (see custody-tls) is the SHA-256 of an issuer's DER SubjectPublicKeyInfo: [`spki_sha256`].

pub mod build;
pub mod inspect;
pub mod layout;

use std::fmt;
use std::str::FromStr;

pub use build::{CaSigner, CertKind, CertRequest, Issued, RevokedEntry, Serial, Validity, sign_device_csr};
pub use inspect::{CertDetails, CrlDetails};
pub use layout::{CaDir, IndexEntry, Revocation};
pub use rcgen::{KeyPair, RevocationReason};

/// A new ECDSA P-256 key pair, the key type of every custody certificate.
pub fn generate_key() -> Result<KeyPair> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// Everything that can go wrong in custody-pki.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("{path}: invalid index: {source}")]
    Index { path: std::path::PathBuf, source: serde_json::Error },
    #[error("{0}: not a PEM certificate or CRL")]
    Pem(String),
    #[error("cannot parse X.509 data: {0}")]
    X509(String),
    #[error("invalid purpose {0:?}: expected `service`, `relay:<name>` or `device`")]
    InvalidRole(String),
    #[error("invalid name {0:?}: use letters, digits, `-` and `_` only")]
    InvalidName(String),
    #[error("the certificate signing request cannot be parsed or its signature is wrong ({0})")]
    Csr(String),
    #[error("invalid subject alternative name {0:?}")]
    InvalidSan(String),
    #[error("{0} already exists")]
    Exists(std::path::PathBuf),
    #[error("{0} is not a custody CA directory (no index.json); create one with `custody pki init-root`")]
    NotACaDir(std::path::PathBuf),
    #[error("no issuing CA named {0:?} in this CA directory")]
    UnknownCa(String),
    #[error("invalid serial {0:?}: expected 32 hex digits (`custody pki list`)")]
    InvalidSerial(String),
    #[error("no certificate with serial {0} in the index")]
    UnknownSerial(String),
    #[error("certificate {serial} was not issued by CA {ca:?}, which is a {role} CA: {hint}")]
    WrongCa { serial: String, ca: String, role: String, hint: &'static str },
    #[error("certificate {0} is already revoked")]
    AlreadyRevoked(String),
    #[error("{0}")]
    Refused(String),
    #[error("invalid time: {0}")]
    Time(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// SHA-256 over a DER SubjectPublicKeyInfo: the value a custody pin holds.
pub fn spki_sha256(spki_der: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What an issuing intermediate is for. It decides the extended key usage the intermediate carries (and so which
/// leaves a verifier accepts under it) and the name of its directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntermediateRole {
    /// The update service's own issuing intermediate: server certificates of the service.
    Service,
    /// One per enterprise relay: server certificates of that relay.
    Relay(String),
    /// Device client certificates (enrollment, mutual TLS).
    Device,
}

impl IntermediateRole {
    /// The default CA name (directory under `ca/`) of an intermediate with this role.
    pub fn default_ca_name(&self) -> String {
        match self {
            Self::Service => "service".to_owned(),
            Self::Relay(name) => format!("relay-{name}"),
            Self::Device => "device".to_owned(),
        }
    }

    /// Whether leaves issued under this role are TLS servers (else device clients).
    pub fn issues_servers(&self) -> bool {
        !matches!(self, Self::Device)
    }
}

impl fmt::Display for IntermediateRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service => f.write_str("service"),
            Self::Relay(name) => write!(f, "relay:{name}"),
            Self::Device => f.write_str("device"),
        }
    }
}

impl FromStr for IntermediateRole {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "service" => Ok(Self::Service),
            "device" => Ok(Self::Device),
            _ => match s.strip_prefix("relay:") {
                Some(name) => {
                    validate_name(name)?;
                    Ok(Self::Relay(name.to_owned()))
                }
                None => Err(Error::InvalidRole(s.to_owned())),
            },
        }
    }
}

/// Checks a name that becomes a directory name: non-empty, ASCII letters, digits, `-` and `_`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(Error::InvalidName(name.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip() {
        for s in ["service", "device", "relay:plant-7"] {
            assert_eq!(s.parse::<IntermediateRole>().unwrap().to_string(), s);
        }
        assert!("relay:".parse::<IntermediateRole>().is_err());
        assert!("relay:../x".parse::<IntermediateRole>().is_err());
        assert!("root".parse::<IntermediateRole>().is_err());
        assert_eq!(IntermediateRole::Relay("a".into()).default_ca_name(), "relay-a");
    }

    #[test]
    fn spki_hash_is_sha256() {
        assert_eq!(
            hex::encode(spki_sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
