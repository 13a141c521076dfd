//! Public keys as TUF metadata lists them, signature checks, and the private keys that the repository tool signs with.
//!
//! Supported (keytype / scheme):
//! - `ed25519` / `ed25519`: public key is 32 bytes in hex;
//! - `ecdsa` or `ecdsa-sha2-nistp256` / `ecdsa-sha2-nistp256` (and the P-384 analogue): SubjectPublicKeyInfo PEM,
//!   DER (ASN.1) signatures;
//! - `rsa` / `rsassa-pss-sha256` and `rsa-pkcs1v15-sha256`: SubjectPublicKeyInfo PEM, 2048 to 8192 bits.
//!
//! Key ids are taken as the metadata declares them and never recomputed: the delegating metadata is signed, so the
//! id it binds to a key is authoritative (recomputing breaks real repositories whose ids were made differently).

use std::collections::BTreeMap;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair, ParsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// A public key entry of root or delegations metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Key {
    pub keytype: String,
    pub scheme: String,
    pub keyval: KeyVal,
    /// Fields this version does not know, kept so that re-signing preserves them.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
    /// The key parsed for verification on first use (a key usually checks many signatures: every hash bin's).
    #[serde(skip)]
    parsed: ParsedCache,
}

/// A lazily filled cache of the parsed key; it is not part of the key's value (equality, serialisation).
#[derive(Clone, Default)]
struct ParsedCache(std::sync::OnceLock<Result<ParsedPublicKey, KeyProblem>>);

/// Why a key cannot verify anything (kept in the cache, so it must be cloneable, unlike [`Error`]).
#[derive(Clone)]
enum KeyProblem {
    Unsupported(String),
    Malformed(String),
}

impl PartialEq for ParsedCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for ParsedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

/// The `keyval` object of a [`Key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyVal {
    pub public: String,
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, Value>,
}

impl Key {
    /// Checks `signature` (as found in metadata: hex) over `message`.
    ///
    /// An unsupported key type or a malformed key is an error; a signature that does not verify is `Ok(false)`.
    pub fn verify(&self, message: &[u8], signature_hex: &str) -> Result<bool, Error> {
        let Ok(signature) = hex::decode(signature_hex) else {
            return Ok(false);
        };
        let parsed = self.parsed.0.get_or_init(|| {
            let (algorithm, public) = self.verification_key()?;
            ParsedPublicKey::new(algorithm, public)
                .map_err(|e| KeyProblem::Malformed(format!("{} public key rejected: {e}", self.keytype)))
        });
        match parsed {
            Ok(key) => Ok(key.verify_sig(message, &signature).is_ok()),
            Err(KeyProblem::Unsupported(reason)) => Err(Error::UnsupportedKey(reason.clone())),
            Err(KeyProblem::Malformed(reason)) => Err(Error::BadKey(reason.clone())),
        }
    }

    /// The verification algorithm and the public key bytes in the form aws-lc-rs expects.
    fn verification_key(&self) -> Result<(&'static dyn VerificationAlgorithm, Vec<u8>), KeyProblem> {
        let algorithm: &'static dyn VerificationAlgorithm = match (self.keytype.as_str(), self.scheme.as_str()) {
            ("ed25519", "ed25519") => {
                let public = hex::decode(&self.keyval.public)
                    .map_err(|e| KeyProblem::Malformed(format!("ed25519 public key is not hex: {e}")))?;
                if public.len() != 32 {
                    return Err(KeyProblem::Malformed(format!(
                        "ed25519 public key has {} bytes, not 32",
                        public.len()
                    )));
                }
                return Ok((&signature::ED25519, public));
            }
            ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => &signature::ECDSA_P256_SHA256_ASN1,
            ("ecdsa" | "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384") => &signature::ECDSA_P384_SHA384_ASN1,
            ("rsa", "rsassa-pss-sha256") => &signature::RSA_PSS_2048_8192_SHA256,
            ("rsa", "rsa-pkcs1v15-sha256") => &signature::RSA_PKCS1_2048_8192_SHA256,
            (keytype, scheme) => {
                return Err(KeyProblem::Unsupported(format!("keytype {keytype:?} with scheme {scheme:?}")));
            }
        };
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(self.keyval.public.as_bytes()).map_err(|e| {
            KeyProblem::Malformed(format!("{} public key is not a PEM SubjectPublicKeyInfo: {e}", self.keytype))
        })?;
        Ok((algorithm, spki.as_ref().to_vec()))
    }
}

/// The kinds of private key the repository tool can generate and sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrivateKeyKind {
    Ed25519,
    EcdsaP256,
    RsaPss3072,
}

/// A private signing key (PKCS#8), with the TUF public [`Key`] that it corresponds to.
pub struct PrivateKey {
    kind: PrivateKeyKind,
    pkcs8: Vec<u8>,
    signer: Signer,
    public: Key,
}

enum Signer {
    Ed25519(signature::Ed25519KeyPair),
    Ecdsa(signature::EcdsaKeyPair),
    Rsa(signature::RsaKeyPair),
}

impl PrivateKey {
    /// Generates a new key of `kind` from the operating system's random source.
    pub fn generate(kind: PrivateKeyKind) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let pkcs8 = match kind {
            PrivateKeyKind::Ed25519 => signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| Error::Signing("ed25519 key generation failed".into()))?
                .as_ref()
                .to_vec(),
            PrivateKeyKind::EcdsaP256 => {
                signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                    .map_err(|_| Error::Signing("ecdsa key generation failed".into()))?
                    .as_ref()
                    .to_vec()
            }
            PrivateKeyKind::RsaPss3072 => {
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa3072)
                    .map_err(|_| Error::Signing("rsa key generation failed".into()))?;
                AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
                    .map_err(|_| Error::Signing("rsa key encoding failed".into()))?
                    .as_ref()
                    .to_vec()
            }
        };
        Self::from_pkcs8(kind, &pkcs8)
    }

    /// Loads a key from PKCS#8 DER bytes.
    pub fn from_pkcs8(kind: PrivateKeyKind, pkcs8: &[u8]) -> Result<Self, Error> {
        let bad = |what: &str| Error::BadKey(format!("{what} private key is not valid PKCS#8"));
        let (signer, public) = match kind {
            PrivateKeyKind::Ed25519 => {
                let pair = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|_| bad("ed25519"))?;
                let public = Key::new("ed25519", "ed25519", hex::encode(pair.public_key().as_ref()));
                (Signer::Ed25519(pair), public)
            }
            PrivateKeyKind::EcdsaP256 => {
                let pair = signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
                    .map_err(|_| bad("ecdsa"))?;
                let spki = pair.public_key().as_der().map_err(|_| bad("ecdsa"))?;
                let public = Key::new("ecdsa", "ecdsa-sha2-nistp256", spki_pem(spki.as_ref()));
                (Signer::Ecdsa(pair), public)
            }
            PrivateKeyKind::RsaPss3072 => {
                let pair = signature::RsaKeyPair::from_pkcs8(pkcs8).map_err(|_| bad("rsa"))?;
                let spki = pair.public_key().as_der().map_err(|_| bad("rsa"))?;
                let public = Key::new("rsa", "rsassa-pss-sha256", spki_pem(spki.as_ref()));
                (Signer::Rsa(pair), public)
            }
        };
        Ok(Self { kind, pkcs8: pkcs8.to_vec(), signer, public })
    }

    /// Loads a key from an unencrypted PKCS#8 PEM file's contents, guessing its kind from the key itself.
    pub fn from_pkcs8_pem(pem: &[u8]) -> Result<Self, Error> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| Error::BadKey(format!("not a PKCS#8 PEM private key: {e}")))?;
        [PrivateKeyKind::Ed25519, PrivateKeyKind::EcdsaP256, PrivateKeyKind::RsaPss3072]
            .into_iter()
            .find_map(|kind| Self::from_pkcs8(kind, der.secret_pkcs8_der()).ok())
            .ok_or_else(|| Error::BadKey("PKCS#8 key is not ed25519, ECDSA P-256 or RSA".into()))
    }

    pub fn kind(&self) -> PrivateKeyKind {
        self.kind
    }

    /// The PKCS#8 DER encoding of this key (secret material).
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key, as it is written into metadata.
    pub fn public(&self) -> &Key {
        &self.public
    }

    /// The key id: SHA-256 over the canonical JSON of the public key, in hex (the usual TUF convention).
    pub fn key_id(&self) -> String {
        // Invariant: a `Key` holds only strings, which canonical JSON always encodes.
        let canonical = crate::to_canonical_json(&self.public).expect("a key serialises to canonical JSON");
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical))
    }

    /// Signs `message`, returning the signature in hex as metadata stores it.
    pub fn sign(&self, message: &[u8]) -> Result<String, Error> {
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
            Signer::Ecdsa(pair) => {
                pair.sign(&rng, message).map_err(|_| Error::Signing("ecdsa signing failed".into()))?.as_ref().to_vec()
            }
            Signer::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PSS_SHA256, &rng, message, &mut sig)
                    .map_err(|_| Error::Signing("rsa signing failed".into()))?;
                sig
            }
        };
        Ok(hex::encode(sig))
    }
}

impl Key {
    fn new(keytype: &str, scheme: &str, public: String) -> Self {
        Self {
            keytype: keytype.into(),
            scheme: scheme.into(),
            keyval: KeyVal { public, unrecognized: BTreeMap::new() },
            unrecognized: BTreeMap::new(),
            parsed: ParsedCache::default(),
        }
    }
}

fn spki_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Invariant: base64 output is ASCII, so every chunk is valid UTF-8.
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey").field("kind", &self.kind).field("public", &self.public).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_signs_and_verifies() {
        for kind in [PrivateKeyKind::Ed25519, PrivateKeyKind::EcdsaP256, PrivateKeyKind::RsaPss3072] {
            let key = PrivateKey::generate(kind).unwrap();
            let sig = key.sign(b"message").unwrap();
            assert!(key.public().verify(b"message", &sig).unwrap(), "{kind:?}");
            assert!(!key.public().verify(b"messagf", &sig).unwrap(), "{kind:?}");
            let again = PrivateKey::from_pkcs8(kind, key.pkcs8_der()).unwrap();
            assert_eq!(again.public(), key.public());
        }
    }

    #[test]
    fn unknown_scheme_is_an_error() {
        let mut key = PrivateKey::generate(PrivateKeyKind::Ed25519).unwrap().public().clone();
        key.scheme = "ed448".into();
        assert!(matches!(key.verify(b"m", "00"), Err(Error::UnsupportedKey(_))));
    }

    #[test]
    fn non_hex_signature_does_not_verify() {
        let key = PrivateKey::generate(PrivateKeyKind::Ed25519).unwrap();
        assert!(!key.public().verify(b"m", "zz").unwrap());
    }
}
