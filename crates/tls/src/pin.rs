//! Pins: SHA-256 of a DER SubjectPublicKeyInfo, written as 64 hex digits (`custody pki show` prints them).

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The SHA-256 of an issuer's DER SubjectPublicKeyInfo. Pinning the key rather than the certificate keeps a pin valid
/// when the intermediate is renewed with the same key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct SpkiPin(pub [u8; 32]);

impl SpkiPin {
    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// The pin of a DER certificate's SubjectPublicKeyInfo.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Self, Error> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(cert_der).map_err(|err| Error::InvalidCertificate(err.to_string()))?;
        Ok(Self::of_spki(cert.public_key().raw))
    }
}

impl FromStr for SpkiPin {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let cleaned: String = s.trim().chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&cleaned).map_err(|_| Error::InvalidPin(s.to_owned()))?;
        <[u8; 32]>::try_from(bytes.as_slice()).map(Self).map_err(|_| Error::InvalidPin(s.to_owned()))
    }
}

impl TryFrom<String> for SpkiPin {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpkiPin({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_with_or_without_colons() {
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let pin: SpkiPin = hex.parse().unwrap();
        assert_eq!(pin, SpkiPin::of_spki(b"abc"));
        assert_eq!(pin.to_string(), hex);
        let colons: String =
            hex.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":");
        assert_eq!(colons.to_uppercase().parse::<SpkiPin>().unwrap(), pin);
        assert!(hex[..62].parse::<SpkiPin>().is_err());
        assert!("zz".repeat(32).parse::<SpkiPin>().is_err());
    }
}
