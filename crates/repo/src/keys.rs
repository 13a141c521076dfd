//! Private key files: PKCS#8 PEM, mode 0600, written atomically, optionally encrypted with a passphrase.
//!
//! An unencrypted key file is a standard `-----BEGIN PRIVATE KEY-----` PKCS#8 PEM file, readable by OpenSSL.
//!
//! An encrypted key file is PEM with the label `CUSTODY ENCRYPTED PRIVATE KEY` around this binary envelope:
//!
//! | bytes    | content                                                        |
//! |----------|----------------------------------------------------------------|
//! | 0        | envelope version, `1`                                          |
//! | 1..5     | PBKDF2-HMAC-SHA256 iteration count, big-endian (≥ 600,000)     |
//! | 5..21    | salt, 16 random bytes                                          |
//! | 21..33   | AES-256-GCM nonce, 12 random bytes                             |
//! | 33..     | AES-256-GCM ciphertext of the PKCS#8 DER key, then its 16-byte tag |
//!
//! The AES key is PBKDF2-HMAC-SHA256(passphrase, salt, iterations), 32 bytes; bytes 0..33 are the additional
//! authenticated data, so that no header field can be changed without the tag failing.

use std::io::IsTerminal;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Mutex;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use custody_tuf::{PrivateKey, PrivateKeyKind};
use zeroize::Zeroizing;

use crate::Error;

/// PBKDF2 iterations used when encrypting, and the minimum accepted when decrypting.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// The PEM label of an encrypted key file.
pub const ENCRYPTED_LABEL: &str = "CUSTODY ENCRYPTED PRIVATE KEY";
const ENVELOPE_VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 4 + SALT_LEN + NONCE_LEN;

/// What keys a role gets: `count` new keys of `kind`, `threshold` of which must sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    pub count: u32,
    pub threshold: u32,
    pub kind: PrivateKeyKind,
}

impl KeySpec {
    /// One ed25519 key, threshold 1.
    pub fn single(kind: PrivateKeyKind) -> Self {
        Self { count: 1, threshold: 1, kind }
    }

    pub(crate) fn check(&self, role: &str) -> Result<(), Error> {
        if self.threshold == 0 || self.threshold > self.count {
            return Err(Error::Invalid(format!(
                "{role}: threshold {} must be between 1 and the number of keys ({})",
                self.threshold, self.count
            )));
        }
        if self.count > 64 {
            return Err(Error::Invalid(format!("{role}: {} keys is more than the 64 this tool makes", self.count)));
        }
        Ok(())
    }
}

/// Where the passphrase of encrypted key files comes from.
///
/// One passphrase serves every key file of one command; a prompted passphrase is asked once and remembered.
pub struct Passphrase {
    source: Source,
    /// Whether new key files are encrypted with this passphrase.
    encrypt_new: bool,
    cached: Mutex<Option<Zeroizing<String>>>,
}

enum Source {
    None,
    Given(Zeroizing<String>),
    Prompt,
}

impl Passphrase {
    /// No passphrase: encrypted key files cannot be used, and new key files are written unencrypted.
    pub fn none() -> Self {
        Self { source: Source::None, encrypt_new: false, cached: Mutex::new(None) }
    }

    /// A passphrase that also encrypts new key files (see [`Passphrase::encrypt_new_keys`]).
    pub fn given(passphrase: String) -> Self {
        Self { source: Source::Given(Zeroizing::new(passphrase)), encrypt_new: true, cached: Mutex::new(None) }
    }

    /// Reads the passphrase from the environment variable `var`, which must be set and non-empty.
    pub fn from_env(var: &str) -> Result<Self, Error> {
        match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(Self::given(value)),
            _ => Err(Error::Passphrase(format!("environment variable {var} is not set or empty"))),
        }
    }

    /// Asks on the terminal when a passphrase is needed; without a terminal, behaves as [`Passphrase::none`].
    /// New key files are not encrypted unless [`Passphrase::encrypt_new_keys`] says so.
    pub fn prompt() -> Self {
        let source = if std::io::stdin().is_terminal() { Source::Prompt } else { Source::None };
        Self { source, encrypt_new: false, cached: Mutex::new(None) }
    }

    /// Whether new key files are encrypted with this passphrase.
    pub fn encrypt_new_keys(mut self, encrypt: bool) -> Self {
        self.encrypt_new = encrypt;
        self
    }

    /// Whether a passphrase can be had at all (given, or asked on a terminal).
    pub fn is_available(&self) -> bool {
        !matches!(self.source, Source::None)
    }

    /// The passphrase for decrypting `path`, or `None` when there is no source.
    fn for_decrypting(&self, path: &Path) -> Result<Option<Zeroizing<String>>, Error> {
        match &self.source {
            Source::None => Ok(None),
            Source::Given(p) => Ok(Some(p.clone())),
            Source::Prompt => {
                let mut cached = self.cached.lock().map_err(|_| Error::Passphrase("lock poisoned".into()))?;
                if let Some(p) = cached.as_ref() {
                    return Ok(Some(p.clone()));
                }
                let p = Zeroizing::new(
                    rpassword::prompt_password(format!("passphrase for {}: ", path.display()))
                        .map_err(|e| Error::Passphrase(e.to_string()))?,
                );
                *cached = Some(p.clone());
                Ok(Some(p))
            }
        }
    }

    /// The passphrase for encrypting new key files (asked twice when prompting), or `None` for no encryption.
    fn for_encrypting(&self) -> Result<Option<Zeroizing<String>>, Error> {
        if !self.encrypt_new {
            return Ok(None);
        }
        match &self.source {
            Source::None => Err(Error::Passphrase("new keys are to be encrypted, but no passphrase was given".into())),
            Source::Given(p) => Ok(Some(p.clone())),
            Source::Prompt => {
                let mut cached = self.cached.lock().map_err(|_| Error::Passphrase("lock poisoned".into()))?;
                if let Some(p) = cached.as_ref() {
                    return Ok(Some(p.clone()));
                }
                let first = Zeroizing::new(
                    rpassword::prompt_password("passphrase for the new key files: ")
                        .map_err(|e| Error::Passphrase(e.to_string()))?,
                );
                let again = Zeroizing::new(
                    rpassword::prompt_password("passphrase again: ").map_err(|e| Error::Passphrase(e.to_string()))?,
                );
                if first != again {
                    return Err(Error::Passphrase("the two passphrases differ".into()));
                }
                if first.is_empty() {
                    return Err(Error::Passphrase("the passphrase is empty".into()));
                }
                *cached = Some(first.clone());
                Ok(Some(first))
            }
        }
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match self.source {
            Source::None => "none",
            Source::Given(_) => "given",
            Source::Prompt => "prompt",
        };
        f.debug_struct("Passphrase").field("source", &source).finish_non_exhaustive()
    }
}

/// Writes `key` to `path` (mode 0600, atomically), encrypted when `passphrase` has a passphrase to encrypt with.
pub fn write_key_file(path: &Path, key: &PrivateKey, passphrase: &Passphrase) -> Result<(), Error> {
    crate::layout::write_atomic(path, key_file_bytes(key, passphrase)?.as_bytes(), 0o600)
}

/// The contents of a key file for `key`: encrypted PEM when `passphrase` has a passphrase, else PKCS#8 PEM.
pub(crate) fn key_file_bytes(key: &PrivateKey, passphrase: &Passphrase) -> Result<Zeroizing<String>, Error> {
    Ok(match passphrase.for_encrypting()? {
        Some(p) => Zeroizing::new(encrypt(key.pkcs8_der(), &p, PBKDF2_ITERATIONS)?),
        None => Zeroizing::new(pem_encode("PRIVATE KEY", key.pkcs8_der())),
    })
}

/// Reads a key file written by [`write_key_file`] (or any unencrypted PKCS#8 PEM ed25519, P-256 or RSA key).
pub fn read_key_file(path: &Path, passphrase: &Passphrase) -> Result<PrivateKey, Error> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(Error::io(path))?);
    let bad = |reason: String| Error::KeyFile { path: path.to_owned(), reason };
    if is_encrypted(&text) {
        let Some(p) = passphrase.for_decrypting(path)? else {
            return Err(Error::PassphraseNeeded { path: path.to_owned() });
        };
        let der = decrypt(&text, &p).map_err(|e| match e {
            DecryptError::Authentication => Error::WrongPassphrase { path: path.to_owned() },
            DecryptError::Malformed(reason) => bad(reason),
        })?;
        return private_key_from_der(&der).map_err(|e| bad(e.to_string()));
    }
    PrivateKey::from_pkcs8_pem(text.as_bytes()).map_err(|e| bad(e.to_string()))
}

/// Whether a key file's text is an encrypted envelope.
pub fn is_encrypted(text: &str) -> bool {
    text.contains(&format!("-----BEGIN {ENCRYPTED_LABEL}-----"))
}

/// Encrypts PKCS#8 DER bytes into the PEM envelope described in the module documentation.
pub fn encrypt(pkcs8: &[u8], passphrase: &str, iterations: u32) -> Result<String, Error> {
    let failed = |what: &str| Error::Passphrase(format!("{what} failed"));
    let mut header = [0u8; HEADER_LEN];
    header[0] = ENVELOPE_VERSION;
    header[1..5].copy_from_slice(&iterations.to_be_bytes());
    aws_lc_rs::rand::fill(&mut header[5..]).map_err(|_| failed("random salt and nonce"))?;
    let key = derive_key(passphrase, &header)?;
    let nonce = Nonce::try_assume_unique_for_key(&header[5 + SALT_LEN..]).map_err(|_| failed("nonce"))?;
    let mut sealed = Zeroizing::new(pkcs8.to_vec());
    key.seal_in_place_append_tag(nonce, Aad::from(&header[..]), &mut *sealed).map_err(|_| failed("encryption"))?;
    let mut envelope = header.to_vec();
    envelope.extend_from_slice(&sealed);
    Ok(pem_encode(ENCRYPTED_LABEL, &envelope))
}

enum DecryptError {
    Authentication,
    Malformed(String),
}

fn decrypt(text: &str, passphrase: &str) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    let envelope = pem_decode(ENCRYPTED_LABEL, text)
        .ok_or_else(|| DecryptError::Malformed(format!("no valid {ENCRYPTED_LABEL} PEM block")))?;
    if envelope.len() < HEADER_LEN + 16 || envelope[0] != ENVELOPE_VERSION {
        return Err(DecryptError::Malformed("unknown or truncated encrypted key envelope".into()));
    }
    let (header, sealed) = envelope.split_at(HEADER_LEN);
    let iterations = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if !(PBKDF2_ITERATIONS..=100 * PBKDF2_ITERATIONS).contains(&iterations) {
        return Err(DecryptError::Malformed(format!("PBKDF2 iteration count {iterations} is out of range")));
    }
    let key = derive_key(passphrase, header).map_err(|e| DecryptError::Malformed(e.to_string()))?;
    let nonce = Nonce::try_assume_unique_for_key(&header[5 + SALT_LEN..])
        .map_err(|_| DecryptError::Malformed("bad nonce".into()))?;
    let mut buf = Zeroizing::new(sealed.to_vec());
    let plain_len =
        key.open_in_place(nonce, Aad::from(header), &mut buf).map_err(|_| DecryptError::Authentication)?.len();
    buf.truncate(plain_len);
    Ok(buf)
}

/// PBKDF2-HMAC-SHA256 over the passphrase with the header's salt and iteration count, as an AES-256-GCM key.
fn derive_key(passphrase: &str, header: &[u8]) -> Result<LessSafeKey, Error> {
    let iterations = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let iterations = NonZeroU32::new(iterations).ok_or_else(|| Error::Passphrase("zero PBKDF2 iterations".into()))?;
    let mut secret = Zeroizing::new([0u8; 32]);
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &header[5..5 + SALT_LEN],
        passphrase.as_bytes(),
        &mut *secret,
    );
    let unbound =
        UnboundKey::new(&AES_256_GCM, &*secret).map_err(|_| Error::Passphrase("AES key setup failed".into()))?;
    Ok(LessSafeKey::new(unbound))
}

fn private_key_from_der(der: &[u8]) -> Result<PrivateKey, custody_tuf::Error> {
    let mut last = None;
    for kind in [PrivateKeyKind::Ed25519, PrivateKeyKind::EcdsaP256, PrivateKeyKind::RsaPss3072] {
        match PrivateKey::from_pkcs8(kind, der) {
            Ok(key) => return Ok(key),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| custody_tuf::Error::BadKey("no key kind".into())))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut pem = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.extend(chunk.iter().map(|&b| char::from(b)));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn pem_decode(label: &str, text: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: String = text[start..stop].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn plain_key_file_is_0600_pkcs8_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let key = PrivateKey::generate(PrivateKeyKind::EcdsaP256).unwrap();
        write_key_file(&path, &key, &Passphrase::none()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(std::fs::read_to_string(&path).unwrap().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = read_key_file(&path, &Passphrase::none()).unwrap();
        assert_eq!(back.key_id(), key.key_id());
    }

    #[test]
    fn encrypted_key_round_trips_and_refuses_a_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let key = PrivateKey::generate(PrivateKeyKind::Ed25519).unwrap();
        write_key_file(&path, &key, &Passphrase::given("correct horse".into())).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(is_encrypted(&text));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let back = read_key_file(&path, &Passphrase::given("correct horse".into())).unwrap();
        assert_eq!(back.key_id(), key.key_id());
        assert!(matches!(
            read_key_file(&path, &Passphrase::given("wrong horse".into())),
            Err(Error::WrongPassphrase { .. })
        ));
        assert!(matches!(read_key_file(&path, &Passphrase::none()), Err(Error::PassphraseNeeded { .. })));
    }

    #[test]
    fn altered_envelope_header_fails_authentication() {
        let key = PrivateKey::generate(PrivateKeyKind::Ed25519).unwrap();
        let pem = encrypt(key.pkcs8_der(), "pw", PBKDF2_ITERATIONS).unwrap();
        let mut envelope = pem_decode(ENCRYPTED_LABEL, &pem).unwrap();
        envelope[10] ^= 1; // a salt byte
        let altered = pem_encode(ENCRYPTED_LABEL, &envelope);
        assert!(matches!(decrypt(&altered, "pw"), Err(DecryptError::Authentication)));
        envelope[10] ^= 1;
        envelope[2] = 0; // iteration count far below the minimum
        let weak = pem_encode(ENCRYPTED_LABEL, &envelope);
        assert!(matches!(decrypt(&weak, "pw"), Err(DecryptError::Malformed(_))));
    }

    #[test]
    fn key_spec_thresholds_are_checked() {
        let spec = KeySpec { count: 2, threshold: 3, kind: PrivateKeyKind::Ed25519 };
        assert!(spec.check("root").is_err());
        assert!(KeySpec { threshold: 0, ..spec }.check("root").is_err());
        assert!(KeySpec { threshold: 2, ..spec }.check("root").is_ok());
    }
}
